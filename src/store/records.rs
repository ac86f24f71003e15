//! The records kept in LMDB and their bincode 2 codecs.
//!
//! Only plain data lives here; how records are read and written is in `store/mod.rs` and
//! `store/writer.rs`.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use heed::{BoxedError, BytesDecode, BytesEncode};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// A pair's identity: the blake3 hash of its image bytes (invariant 4 of ARCHITECTURE.md).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ImageId(pub [u8; 32]);

impl ImageId {
    /// The id of an image with these bytes.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        ImageId(*blake3::hash(bytes).as_bytes())
    }

    /// The id as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// The first 12 hex digits, for display.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_string()
    }
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImageId({})", self.short())
    }
}

impl FromStr for ImageId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 64 {
            return Err(format!("`{s}` is not a 64-digit hex id"));
        }
        let mut out = [0u8; 32];
        for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
            let hex = std::str::from_utf8(chunk).map_err(|_| format!("`{s}` is not hex"))?;
            out[i] = u8::from_str_radix(hex, 16).map_err(|_| format!("`{s}` is not hex"))?;
        }
        Ok(ImageId(out))
    }
}

/// One image-text pair as stored in the `pairs` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairRecord {
    /// Content hash of the image.
    pub id: ImageId,
    /// The pair's current document number in the derived indices. A new number is given on every
    /// add or update, so an index never has to delete a point in place.
    pub doc: u64,
    /// The caption.
    pub caption: String,
    /// The entity the pair shows (by default, the parent folder's name).
    pub entity: Option<String>,
    /// Free tags.
    pub tags: Vec<String>,
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Image format (`png`, `jpeg`, …).
    pub format: String,
    /// Size of the image file in bytes.
    pub byte_len: u64,
    /// Seconds since the Unix epoch when the pair was added.
    pub added_at: u64,
}

/// What a change-log entry did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    /// A new pair.
    Add,
    /// A pair's caption, entity or tags changed; it got a new doc number.
    Update,
    /// A pair was removed.
    Remove,
}

/// One entry of the change log. The log is what the derived indices replay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// Monotonically increasing sequence number, never reused.
    pub seq: u64,
    /// What happened.
    pub kind: ChangeKind,
    /// The pair.
    pub id: ImageId,
    /// The doc number the pair has after the change (for `Remove`, the one it had).
    pub doc: u64,
    /// For `Update`, the doc number the pair had before.
    pub old_doc: Option<u64>,
}

/// A path known to the store, and the pair it holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PathRecord {
    /// The path as given (absolute for imports and the daemon).
    pub path: String,
    /// The pair whose image the file holds.
    pub id: ImageId,
    /// File size at ingest.
    pub size: u64,
    /// File modification time at ingest, nanoseconds since the epoch.
    pub mtime_ns: u128,
}

/// A file the daemon refused, kept so it is retried only when it changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuarantineRecord {
    /// The path.
    pub path: String,
    /// Why it was refused.
    pub reason: String,
    /// File size when refused.
    pub size: u64,
    /// File modification time when refused, nanoseconds since the epoch.
    pub mtime_ns: u128,
    /// Seconds since the epoch when refused.
    pub at: u64,
}

/// bincode 2 codec for any serde type, used as a heed key or value codec.
pub struct Bincode<T>(std::marker::PhantomData<T>);

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard()
}

impl<'a, T: Serialize + 'a> BytesEncode<'a> for Bincode<T> {
    type EItem = T;

    fn bytes_encode(item: &'a T) -> Result<Cow<'a, [u8]>, BoxedError> {
        Ok(Cow::Owned(bincode::serde::encode_to_vec(
            item,
            bincode_config(),
        )?))
    }
}

impl<'a, T: DeserializeOwned + 'a> BytesDecode<'a> for Bincode<T> {
    type DItem = T;

    fn bytes_decode(bytes: &'a [u8]) -> Result<T, BoxedError> {
        let (value, _) = bincode::serde::decode_from_slice(bytes, bincode_config())?;
        Ok(value)
    }
}

/// Codec for an [`ImageId`] key: its 32 raw bytes.
pub struct IdKey;

impl<'a> BytesEncode<'a> for IdKey {
    type EItem = ImageId;

    fn bytes_encode(item: &'a ImageId) -> Result<Cow<'a, [u8]>, BoxedError> {
        Ok(Cow::Borrowed(&item.0))
    }
}

impl<'a> BytesDecode<'a> for IdKey {
    type DItem = ImageId;

    fn bytes_decode(bytes: &'a [u8]) -> Result<ImageId, BoxedError> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "image id key is not 32 bytes")?;
        Ok(ImageId(arr))
    }
}

/// Codec for a vector of f32 values, stored little-endian.
pub struct F32Vec;

impl<'a> BytesEncode<'a> for F32Vec {
    type EItem = [f32];

    fn bytes_encode(item: &'a [f32]) -> Result<Cow<'a, [u8]>, BoxedError> {
        Ok(Cow::Owned(
            item.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ))
    }
}

impl<'a> BytesDecode<'a> for F32Vec {
    type DItem = Vec<f32>;

    fn bytes_decode(bytes: &'a [u8]) -> Result<Vec<f32>, BoxedError> {
        if !bytes.len().is_multiple_of(4) {
            return Err("embedding length is not a multiple of 4 bytes".into());
        }
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

/// Which embedding of a pair a key refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EmbeddingKind {
    /// The image's embedding.
    Image = 0,
    /// The caption's embedding.
    Text = 1,
}

/// The key of an embedding: the pair's id followed by one byte for the kind.
pub fn embedding_key(id: &ImageId, kind: EmbeddingKind) -> [u8; 33] {
    let mut key = [0u8; 33];
    key[..32].copy_from_slice(&id.0);
    key[32] = kind as u8;
    key
}

/// The key of a path: blake3 of the path, since LMDB keys are limited to 511 bytes.
pub fn path_key(path: &str) -> [u8; 32] {
    *blake3::hash(path.as_bytes()).as_bytes()
}

/// The key of a reverse path entry: the pair's id followed by the path key.
pub fn id_path_key(id: &ImageId, path: &str) -> [u8; 64] {
    let mut key = [0u8; 64];
    key[..32].copy_from_slice(&id.0);
    key[32..].copy_from_slice(&path_key(path));
    key
}
