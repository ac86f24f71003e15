//! The data types of the KB's public methods: what `add` did, a pair read back, counts,
//! reports of `check`, `import` and `reembed`, progress, and the path ops the daemon writes.
//!
//! Not here: the methods (`kb.rs`), the stored records they are read from (`store/records.rs`).

use std::path::PathBuf;

use serde::Serialize;

#[cfg(doc)]
use super::KnowledgeBase;
use crate::ingest::PairText;
use crate::search;
use crate::store::records::{ImageId, PairRecord};
use crate::vector::VectorCounts;

/// What [`KnowledgeBase::add`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddOutcome {
    /// A new pair.
    Added(ImageId),
    /// The image was already in the KB, under this id; nothing changed but the path record.
    Duplicate(ImageId),
}

impl AddOutcome {
    /// The pair's id either way.
    pub fn id(&self) -> ImageId {
        match self {
            AddOutcome::Added(id) | AddOutcome::Duplicate(id) => *id,
        }
    }
}

/// A pair as read back.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Pair {
    /// The pair's id.
    #[serde(serialize_with = "search::hex_id")]
    pub id: ImageId,
    /// Caption.
    pub caption: String,
    /// Entity.
    pub entity: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Width in pixels (`width_px` in JSON).
    #[serde(rename = "width_px")]
    pub width: u32,
    /// Height in pixels (`height_px` in JSON).
    #[serde(rename = "height_px")]
    pub height: u32,
    /// Image format.
    pub format: String,
    /// Image size in bytes (`size_bytes` in JSON).
    #[serde(rename = "size_bytes")]
    pub byte_len: u64,
    /// Seconds since the epoch when added (`added_at_unix_s` in JSON).
    #[serde(rename = "added_at_unix_s")]
    pub added_at: u64,
    /// Files known to hold the image.
    pub paths: Vec<String>,
}

/// Counts and sizes of a KB.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stats {
    /// KB directory.
    pub path: PathBuf,
    /// Number of pairs.
    pub pairs: u64,
    /// Number of distinct entities.
    pub entities: u64,
    /// Last change-log sequence.
    pub last_seq: u64,
    /// Store schema version.
    pub schema_version: u32,
    /// Embedder id recorded in the store.
    pub embedder: Option<String>,
    /// LMDB map size in bytes (`map_size_bytes` in JSON).
    #[serde(rename = "map_size_bytes")]
    pub map_size: usize,
    /// LMDB file size in bytes (`disk_size_bytes` in JSON).
    #[serde(rename = "disk_size_bytes")]
    pub disk_size: u64,
    /// Documents in the BM25 index.
    pub text_index_docs: usize,
    /// Image-embedding index counts.
    pub image_index: VectorCounts,
    /// Text-embedding index counts.
    pub text_vector_index: VectorCounts,
}

/// One entity of the KB, for [`KnowledgeBase::entities`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EntitySummary {
    /// Its name.
    pub name: String,
    /// How many pairs show it.
    pub pairs: u64,
    /// One of them (the first in id order).
    #[serde(serialize_with = "search::hex_id")]
    pub example: ImageId,
}

/// The result of a store ↔ index consistency check.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CheckReport {
    /// Pairs in the store.
    pub pairs: u64,
    /// What does not match; empty when consistent.
    pub problems: Vec<String>,
}

impl CheckReport {
    /// True when store and indices agree.
    pub fn is_consistent(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Progress of a long operation, for a progress bar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Items done.
    pub done: u64,
    /// Items in all.
    pub total: u64,
}

/// What a re-embedding did ([`KnowledgeBase::reembed`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ReembedReport {
    /// The embedder whose vectors the KB now holds.
    pub embedder: String,
    /// Pairs re-embedded.
    pub embedded: usize,
    /// Pairs that could not be (hex id, reason); while any remain the KB keeps refusing CLIP
    /// search, and a second run retries them.
    pub failed: Vec<(String, String)>,
}

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ImportReport {
    /// New pairs.
    pub added: usize,
    /// Images already present.
    pub duplicates: usize,
    /// Files refused, each with the reason.
    pub failed: Vec<(PathBuf, String)>,
}

/// One change to what the KB knows of files, for [`KnowledgeBase::apply_path_ops`]: none of them
/// decodes or embeds an image.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum PathOp {
    /// The file at `path` holds the pair `id` (see [`KnowledgeBase::set_path`]).
    Set {
        /// The file.
        path: PathBuf,
        /// The pair it holds.
        id: ImageId,
        /// The size and mtime (nanoseconds since the epoch) the file had when its content was
        /// hashed, to record instead of its current ones: a file that changed since then no
        /// longer matches its record, so a later scan looks at it again.
        seen: Option<(u64, u128)>,
    },
    /// Forget the file (see [`KnowledgeBase::remove_path`]).
    Remove {
        /// The file.
        path: PathBuf,
        /// Also remove the pair when no other file holds it.
        remove_orphan: bool,
    },
    /// Remove the pair `id` if, and only if, no file holds it any more.
    RemoveOrphan {
        /// The pair.
        id: ImageId,
    },
    /// Replace a pair's caption, entity and tags (see [`KnowledgeBase::update`]).
    Update {
        /// The pair.
        id: ImageId,
        /// The new text.
        text: PairText,
    },
    /// Record that the file was refused (see [`KnowledgeBase::quarantine`]).
    Quarantine {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
        /// The size and mtime the file had when it was examined, to record instead of its
        /// current ones (as for [`PathOp::Set`]).
        seen: Option<(u64, u128)>,
    },
    /// Lift the quarantine of a file.
    Unquarantine {
        /// The file.
        path: PathBuf,
    },
}

/// What one [`PathOp`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathOpOutcome {
    /// The op took effect.
    Applied,
    /// The op removed this pair (a `Remove` with `remove_orphan`, or a `RemoveOrphan`).
    PairRemoved(ImageId),
    /// Nothing to do: no such path or pair, or the pair is still held by a file.
    Unchanged,
}

pub(super) fn pair_of(r: PairRecord, paths: Vec<String>) -> Pair {
    Pair {
        id: r.id,
        caption: r.caption,
        entity: r.entity,
        tags: r.tags,
        width: r.width,
        height: r.height,
        format: r.format,
        byte_len: r.byte_len,
        added_at: r.added_at,
        paths,
    }
}
