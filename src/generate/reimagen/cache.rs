//! The neighbour-feature cache (issue 9 point 3): a neighbour's DStack feature maps depend only
//! on its pixels, its caption, the stage's weights (and text encoder) and the device, never on
//! t or x_t, so they are computed once and kept per (item, model, stage, device). The item key
//! is a blake3 of the neighbour's id, caption and pixels; the model key a blake3 of the stage's
//! config and weight files and its text encoder's files, so changed weights never hit old
//! entries. Shared (`Arc`) between cascades, bounded (oldest entries leave first), and it
//! counts its encodes and hits.
//!
//! Not here: computing the features (`UNet::encode_neighbours`), using them (`cascade.rs`).

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::generate::{Neighbour, Result};

use super::config::model_error;
use super::unet::NeighbourFeatures;

/// A blake3 digest.
pub type Digest = [u8; 32];

/// Where a cached entry belongs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// [`item_key`] of the neighbour.
    pub item: Digest,
    /// [`model_key`] of the stage.
    pub model: Digest,
    /// The stage's name.
    pub stage: String,
    /// The device the features live on (`Device::name`).
    pub device: String,
}

/// The key of a neighbour: blake3 of its id, caption and pixels (with their sizes, so no two
/// different neighbours share a byte stream).
pub fn item_key(neighbour: &Neighbour) -> Digest {
    let mut h = blake3::Hasher::new();
    for part in [neighbour.id.as_bytes(), neighbour.caption.as_bytes()] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.update(&neighbour.image.width().to_le_bytes());
    h.update(&neighbour.image.height().to_le_bytes());
    h.update(neighbour.image.as_raw());
    *h.finalize().as_bytes()
}

/// The key of a stage's model: blake3 over the regular files of `folders` (the stage folder
/// and its text encoder's), by sorted name and content. Any changed weight, config or tokenizer
/// gives another key.
///
/// # Errors
/// [`crate::generate::GenerateError::Model`] when a folder or file cannot be read.
pub fn model_key(folders: &[&Path]) -> Result<Digest> {
    let mut h = blake3::Hasher::new();
    for folder in folders {
        let mut files: Vec<_> = std::fs::read_dir(folder)
            .map_err(|e| model_error(folder, e.to_string()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for file in files {
            let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
            let name = name.unwrap_or_default();
            h.update(&(name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
            let mut f =
                std::fs::File::open(&file).map_err(|e| model_error(&file, e.to_string()))?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f
                    .read(&mut buf)
                    .map_err(|e| model_error(&file, e.to_string()))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
        }
    }
    Ok(*h.finalize().as_bytes())
}

/// Counters of a [`FeatureCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Neighbours whose features were computed (cache misses).
    pub encodes: usize,
    /// Neighbours served from the cache.
    pub hits: usize,
    /// Entries held now.
    pub entries: usize,
}

/// Neighbour features per (item, model, stage, device), bounded by an entry count.
#[derive(Debug)]
pub struct FeatureCache {
    inner: Mutex<Inner>,
    capacity: usize,
    encodes: AtomicUsize,
    hits: AtomicUsize,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<CacheKey, NeighbourFeatures>,
    order: VecDeque<CacheKey>,
}

impl Default for FeatureCache {
    /// Room for 1,024 entries (a neighbour at one stage is one entry).
    fn default() -> Self {
        FeatureCache::new(1024)
    }
}

impl FeatureCache {
    /// A cache of at most `capacity` entries (0 keeps nothing).
    pub fn new(capacity: usize) -> Self {
        FeatureCache {
            inner: Mutex::new(Inner::default()),
            capacity,
            encodes: AtomicUsize::new(0),
            hits: AtomicUsize::new(0),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            encodes: self.encodes.load(Ordering::Relaxed),
            hits: self.hits.load(Ordering::Relaxed),
            entries: self.lock().map.len(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves only a map of immutable tensors: still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The features of `key`, computing them with `encode` on a miss.
    ///
    /// # Errors
    /// Whatever `encode` fails with (nothing is stored then).
    pub fn get_or_encode(
        &self,
        key: CacheKey,
        encode: impl FnOnce() -> Result<NeighbourFeatures>,
    ) -> Result<NeighbourFeatures> {
        if let Some(found) = self.lock().map.get(&key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(found.clone());
        }
        // Encoded outside the lock: another generation may use the cache meanwhile.
        let features = encode()?;
        self.encodes.fetch_add(1, Ordering::Relaxed);
        if self.capacity > 0 {
            let mut inner = self.lock();
            if inner.map.insert(key.clone(), features.clone()).is_none() {
                inner.order.push_back(key);
            }
            while inner.map.len() > self.capacity {
                match inner.order.pop_front() {
                    Some(old) => {
                        inner.map.remove(&old);
                    }
                    None => break,
                }
            }
        }
        Ok(features)
    }
}
