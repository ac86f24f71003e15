//! Preparation of pairs for the writer: a [`NewPair`] becomes a record with its text normalised,
//! its image decoded under the limits, hashed and thumbnailed, and (with an embedder) its
//! embeddings; plus the path records the store keeps for files (absolute path, size, mtime).
//!
//! Everything here runs on rayon's threads before the writer is involved: the writer's
//! transaction holds nothing but finished records (invariant 2 of ARCHITECTURE.md).
//!
//! Not here: decoding itself (`ingest/mod.rs`), caption rules (`caption.rs`), the write
//! (`store::writer`).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rayon::prelude::*;

use super::{CaptionRules, DecodeLimits, DecodedImage, PairText};
use crate::embed::Embedder;
use crate::error::{Error, IngestError, Result, io_err};
use crate::store::records::{EmbeddingKind, ImageId, PairRecord, PathRecord, QuarantineRecord};
use crate::store::writer::NewRecord;

/// A pair to add.
#[derive(Clone, Debug, PartialEq)]
pub struct NewPair {
    /// Where the image comes from.
    pub image: ImageSource,
    /// Caption, entity and tags.
    pub text: PairText,
}

/// The image of a [`NewPair`].
#[derive(Clone, Debug, PartialEq)]
pub enum ImageSource {
    /// A file; its absolute path is recorded as one of the pair's paths.
    File(PathBuf),
    /// Bytes in memory; `name` is used in errors only.
    Bytes {
        /// A name for errors.
        name: String,
        /// The encoded image.
        bytes: Vec<u8>,
    },
    /// A file its caller has read and hashed already (the daemon does, to know a file's
    /// identity before it asks the KB): decoded from these bytes, not read a second time, and
    /// recorded under its path with the size and mtime seen before the read.
    Read(ReadFile),
}

/// The bytes of a file as the daemon read them, with their hash and the file's size and mtime
/// from before the read. Made only inside the crate, so that the id is the hash of the bytes
/// (invariant 4 of ARCHITECTURE.md: identity is content).
#[derive(Clone, Debug, PartialEq)]
pub struct ReadFile {
    pub(crate) path: PathBuf,
    pub(crate) bytes: Vec<u8>,
    pub(crate) id: ImageId,
    pub(crate) size: u64,
    pub(crate) mtime_ns: u128,
}

impl ReadFile {
    /// `id` must be `ImageId::of_bytes(&bytes)`; the daemon computed it from these very bytes.
    pub(crate) fn new(
        path: PathBuf,
        bytes: Vec<u8>,
        id: ImageId,
        size: u64,
        mtime_ns: u128,
    ) -> ReadFile {
        debug_assert_eq!(id, ImageId::of_bytes(&bytes));
        ReadFile {
            path,
            bytes,
            id,
            size,
            mtime_ns,
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl NewPair {
    /// A pair from an image file.
    #[must_use]
    pub fn file(path: impl Into<PathBuf>, caption: impl Into<String>) -> NewPair {
        NewPair {
            image: ImageSource::File(path.into()),
            text: PairText {
                caption: caption.into(),
                ..PairText::default()
            },
        }
    }

    /// A pair from encoded image bytes.
    #[must_use]
    pub fn bytes(name: impl Into<String>, bytes: Vec<u8>, caption: impl Into<String>) -> NewPair {
        NewPair {
            image: ImageSource::Bytes {
                name: name.into(),
                bytes,
            },
            text: PairText {
                caption: caption.into(),
                ..PairText::default()
            },
        }
    }

    /// Sets the entity.
    #[must_use]
    pub fn entity(mut self, entity: impl Into<String>) -> NewPair {
        self.text.entity = Some(entity.into());
        self
    }

    /// Adds a tag.
    #[must_use]
    pub fn tag(mut self, tag: impl Into<String>) -> NewPair {
        self.text.tags.push(tag.into());
        self
    }

    /// The name errors give the pair: its file, or the name given with its bytes.
    pub(crate) fn name(&self) -> PathBuf {
        match &self.image {
            ImageSource::File(p) => p.clone(),
            ImageSource::Read(read) => read.path.clone(),
            ImageSource::Bytes { name, .. } => PathBuf::from(name),
        }
    }
}

/// What preparation needs to know of the KB.
#[derive(Clone, Copy)]
pub(crate) struct Preparation<'a> {
    pub rules: &'a CaptionRules,
    pub limits: &'a DecodeLimits,
    pub embedder: Option<&'a dyn Embedder>,
}

impl Preparation<'_> {
    /// Prepares many pairs: decoding and hashing in parallel and, with an embedder, one forward
    /// per batch of images and of captions (its ops are parallel inside) rather than one per
    /// pair from many threads. Results come back in input order; a bad pair does not stop the
    /// others.
    pub fn prepare_many(&self, pairs: Vec<NewPair>) -> Vec<Result<NewRecord>> {
        match self.embedder {
            None => pairs
                .into_par_iter()
                .map(|p| Ok(self.prepare(p)?.0))
                .collect(),
            Some(embedder) => {
                let mut prepared = Vec::with_capacity(pairs.len());
                let mut pairs = pairs.into_iter().peekable();
                while pairs.peek().is_some() {
                    let chunk: Vec<NewPair> =
                        pairs.by_ref().take(embedder.batch_size().max(1)).collect();
                    let decoded: Vec<_> = chunk
                        .into_par_iter()
                        .map(|p| self.prepare(p).map_err(Error::from))
                        .collect();
                    prepared.extend(embed_batch(embedder, decoded));
                }
                prepared
            }
        }
    }

    /// Normalises the text and decodes the image of a pair into its record, without
    /// embeddings; the decoded image comes along for the embedder.
    fn prepare(
        &self,
        pair: NewPair,
    ) -> std::result::Result<(NewRecord, image::DynamicImage), IngestError> {
        let name = pair.name();
        let PairText {
            caption,
            entity,
            tags,
        } = pair.text.normalised(self.rules, &name)?;
        let (decoded, path) = match pair.image {
            ImageSource::File(path) => {
                // Size and mtime from before the read: if the file changes while it is read, the
                // record no longer matches the file and the next scan looks at it again.
                let before = path_record(&path, ImageId([0; 32]))?;
                let decoded = super::read_image_file(&path, self.limits)?;
                let record = PathRecord {
                    id: decoded.id,
                    ..before
                };
                (decoded, Some(record))
            }
            ImageSource::Read(read) => {
                let record = PathRecord {
                    path: absolute_text(&read.path)?,
                    id: read.id,
                    size: read.size,
                    mtime_ns: read.mtime_ns,
                };
                let decoded =
                    super::decode_hashed_image(&read.path, read.bytes, read.id, self.limits)?;
                (decoded, Some(record))
            }
            ImageSource::Bytes { bytes, .. } => {
                (super::decode_image(&name, bytes, self.limits)?, None)
            }
        };
        let DecodedImage {
            id,
            bytes,
            image,
            format,
        } = decoded;
        let record = NewRecord {
            pair: PairRecord {
                id,
                doc: 0,
                caption,
                entity,
                tags,
                width: image.width(),
                height: image.height(),
                format,
                byte_len: bytes.len() as u64,
                added_at: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            },
            thumbnail: super::thumbnail(&image),
            image: bytes,
            embeddings: Vec::new(),
            path,
            embedder: self.embedder.map(|e| e.id()),
        };
        Ok((record, image))
    }
}

/// Embeds the images and captions of a batch of prepared pairs in one call each. When the batch
/// call fails, each pair is embedded alone, so the error lands on the pair that caused it.
fn embed_batch(
    embedder: &dyn Embedder,
    prepared: Vec<Result<(NewRecord, image::DynamicImage)>>,
) -> Vec<Result<NewRecord>> {
    let (mut records, mut images) = (Vec::new(), Vec::new());
    let mut slots = Vec::with_capacity(prepared.len());
    for p in prepared {
        match p {
            Ok((record, image)) => {
                records.push(record);
                images.push(image);
                slots.push(None);
            }
            Err(e) => slots.push(Some(Err(e))),
        }
    }
    let captions: Vec<&str> = records.iter().map(|r| r.pair.caption.as_str()).collect();
    let vectors = embedder.embed_images(&images).and_then(|i| {
        let t = embedder.embed_texts(&captions)?;
        Ok((i, t))
    });
    let mut embedded: Vec<Result<NewRecord>> = match vectors {
        Ok((image_vectors, text_vectors))
            if image_vectors.len() == records.len() && text_vectors.len() == records.len() =>
        {
            records
                .into_iter()
                .zip(image_vectors.into_iter().zip(text_vectors))
                .map(|(mut r, (i, t))| {
                    r.embeddings = vec![(EmbeddingKind::Image, i), (EmbeddingKind::Text, t)];
                    Ok(r)
                })
                .collect()
        }
        _ => records
            .into_iter()
            .zip(&images)
            .map(|(mut r, image)| {
                let i = embedder.embed_image(image)?;
                let t = embedder.embed_text(&r.pair.caption)?;
                r.embeddings = vec![(EmbeddingKind::Image, i), (EmbeddingKind::Text, t)];
                Ok(r)
            })
            .collect(),
    };
    embedded.reverse();
    slots
        .into_iter()
        .map(|slot| slot.unwrap_or_else(|| embedded.pop().expect("one record per slot")))
        .collect()
}

/// The absolute path of a file as the store keys it (UTF-8 only).
fn absolute_text(path: &Path) -> std::result::Result<String, IngestError> {
    let absolute = std::path::absolute(path).map_err(|source| IngestError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    absolute
        .to_str()
        .map(str::to_string)
        .ok_or_else(|| IngestError::NonUtf8Name {
            path: path.to_path_buf(),
        })
}

/// The path record of a file: its absolute path (UTF-8 only), size and mtime.
pub(crate) fn path_record(
    path: &Path,
    id: ImageId,
) -> std::result::Result<PathRecord, IngestError> {
    let text = absolute_text(path)?;
    let meta = fs::metadata(path).map_err(|source| IngestError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok(PathRecord {
        path: text,
        id,
        size: meta.len(),
        mtime_ns,
    })
}

/// The absolute path of a file, refused when it is not UTF-8 (the store's path keys are text).
pub(crate) fn absolute_utf8(path: &Path) -> Result<String> {
    let text = std::path::absolute(path).map_err(io_err(path))?;
    Ok(text
        .to_str()
        .ok_or_else(|| IngestError::NonUtf8Name {
            path: path.to_path_buf(),
        })?
        .to_string())
}

/// The absolute path of a file, any bytes that are not UTF-8 replaced (quarantine keys: a file
/// with such a name is refused, and the refusal must still be recorded).
pub(crate) fn absolute_lossy(path: &Path) -> Result<String> {
    Ok(std::path::absolute(path)
        .map_err(io_err(path))?
        .to_string_lossy()
        .into_owned())
}

/// The quarantine record of a refused file. Size and mtime are those of the path itself: a
/// symbolic link is not followed.
pub(crate) fn quarantine_record(path: &Path, reason: &str) -> Result<QuarantineRecord> {
    let meta = fs::symlink_metadata(path).ok();
    Ok(QuarantineRecord {
        path: absolute_lossy(path)?,
        reason: reason.to_string(),
        size: meta.as_ref().map_or(0, |m| m.len()),
        mtime_ns: meta
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos()),
        at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    })
}

/// Image files under `dir`, recursively; symlinks are not followed.
pub(crate) fn collect_images(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let kind = entry.file_type().map_err(io_err(entry.path()))?;
        let path = entry.path();
        if kind.is_dir() {
            collect_images(&path, out)?;
        } else if kind.is_file() && super::is_image_path(&path) {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png() -> Vec<u8> {
        let mut out = Vec::new();
        image::RgbImage::from_pixel(3, 2, image::Rgb([9, 8, 7]))
            .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn a_file_read_already_is_not_read_again() {
        let dir = tempfile::tempdir().unwrap();
        // No file at this path: only the bytes handed over can make the record.
        let path = dir.path().join("gone.png");
        let bytes = png();
        let id = ImageId::of_bytes(&bytes);
        let (rules, limits) = (CaptionRules::default(), DecodeLimits::default());
        let preparation = Preparation {
            rules: &rules,
            limits: &limits,
            embedder: None,
        };
        let read = ReadFile::new(path.clone(), bytes.clone(), id, 7, 42);
        let pair = NewPair {
            image: ImageSource::Read(read),
            text: PairText {
                caption: " a  caption ".into(),
                ..PairText::default()
            },
        };
        let record = preparation.prepare_many(vec![pair]).pop().unwrap().unwrap();
        assert_eq!(record.pair.id, id);
        assert_eq!(record.pair.caption, "a caption");
        assert_eq!(record.image, bytes);
        let seen = record.path.expect("a read file records its path");
        assert_eq!((seen.id, seen.size, seen.mtime_ns), (id, 7, 42));
        assert!(seen.path.ends_with("gone.png"), "{}", seen.path);
        // The same pair named by its path alone needs the file, which is not there.
        let by_path = preparation.prepare_many(vec![NewPair::file(&path, "a caption")]);
        assert!(matches!(
            by_path[0],
            Err(Error::Ingest(IngestError::Read { .. }))
        ));
    }
}
