//! The crate's error type and the per-area error enums that convert into it.
//!
//! What the user did wrong (a bad file, a bad caption, a query the KB cannot answer) is kept apart
//! from what broke inside (LMDB, an index, I/O): see [`Error::is_user_error`]. Every message names
//! the file, key or id it is about. The generator's ([`crate::generate::GenerateError`]) and the
//! dataset builder's ([`crate::dataset::DatasetError`]) errors convert into [`Error`] too.
//!
//! Not here: the errors of the tensor runtime and CLIP (in their modules).

use std::path::PathBuf;

/// Errors of the LMDB store: opening, migrating, reading and writing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// LMDB itself failed.
    #[error("LMDB error in {path}: {source}")]
    Lmdb {
        /// The store directory.
        path: PathBuf,
        /// What LMDB said.
        source: heed::Error,
    },
    /// The store was written by a newer version of reimagen.
    #[error(
        "store {path} has schema version {found}, newer than this build understands ({supported}); upgrade reimagen"
    )]
    TooNew {
        /// The store directory.
        path: PathBuf,
        /// Version found on disk.
        found: u32,
        /// Newest version this build knows.
        supported: u32,
    },
    /// A record could not be decoded.
    #[error("corrupt record in table `{table}` at key {key}: {reason}")]
    Corrupt {
        /// The named LMDB database.
        table: &'static str,
        /// The key, printed.
        key: String,
        /// Why decoding failed.
        reason: String,
    },
    /// The writer thread is gone (it panicked or the store was closed).
    #[error("the store's writer thread has stopped")]
    WriterGone,
    /// Another process holds the knowledge base open.
    #[error("knowledge base {path} is in use by another process (lock file {lock})")]
    Locked {
        /// The KB directory.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// The KB was opened read-only ([`KnowledgeBase::open_read_only`](crate::KnowledgeBase::open_read_only))
    /// and what was asked needs the writer: a write, a migration, an index rebuild.
    #[error("knowledge base {path} is open read-only: {reason}")]
    ReadOnly {
        /// The KB directory.
        path: PathBuf,
        /// What needed the writer, and what to do instead.
        reason: String,
    },
    /// A file-system operation on the store failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Errors of the folder-watching daemon.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WatchError {
    /// A folder given to watch cannot be watched.
    #[error("{path}: cannot watch this folder: {reason}")]
    BadRoot {
        /// The folder as given.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The OS file watcher could not be started.
    #[error("{path}: cannot start the file watcher: {reason}")]
    Notify {
        /// The folder.
        path: PathBuf,
        /// What the OS said.
        reason: String,
    },
    /// The daemon's thread or runtime failed.
    #[error("the watch daemon failed: {reason}")]
    Daemon {
        /// What went wrong.
        reason: String,
    },
    /// The status file cannot be read.
    #[error("{path}: unreadable daemon status file: {reason}")]
    StatusFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The KB is locked by a process that is not a watch daemon (or one that left no status).
    #[error(
        "knowledge base {path} is in use by another process that is not a running watch daemon"
    )]
    LockedByOther {
        /// The KB directory.
        path: PathBuf,
    },
}

/// Errors of the derived indices (tantivy BM25 and HNSW). A damaged index is rebuilt, so these
/// surface only when rebuilding fails too.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// tantivy failed.
    #[error("text index {path}: {source}")]
    Text {
        /// The index directory.
        path: PathBuf,
        /// What tantivy said.
        source: tantivy::TantivyError,
    },
    /// The HNSW index could not be written or read.
    #[error("vector index {path}: {reason}")]
    Vector {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// Errors about an input the user gave: an image, a caption, a file name.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bytes are not an image in a supported format, or the image is truncated or corrupt.
    #[error("{path}: not a readable image: {reason}")]
    BadImage {
        /// The file (or the name given to in-memory bytes).
        path: PathBuf,
        /// What the decoder said.
        reason: String,
    },
    /// The file ends before the image does (a copy or download still under way, or cut short):
    /// the format's end marker is missing or the decoder ran out of bytes.
    #[error("{path}: image is truncated: {reason}")]
    Truncated {
        /// The file (or the name given to in-memory bytes).
        path: PathBuf,
        /// Which marker is missing, or what the decoder said.
        reason: String,
    },
    /// The image is larger than the decode limits allow.
    #[error("{path}: image too large: {reason}")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Which limit, and the size found.
        reason: String,
    },
    /// The caption is empty, too long or not UTF-8.
    #[error("{path}: bad caption: {reason}")]
    BadCaption {
        /// The image (or sidecar) the caption belongs to.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },
    /// The file name is not valid UTF-8.
    #[error("{}: file name is not valid UTF-8", path.display())]
    NonUtf8Name {
        /// The path, as the OS gave it.
        path: PathBuf,
    },
}

/// Errors about models: a missing embedder, a mismatched embedder, a bad model file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The query needs an embedder and the KB has none.
    #[error(
        "no embedder is configured for this knowledge base, so `{mode}` search is unavailable; use --mode bm25, or configure an embedder"
    )]
    NoEmbedder {
        /// The search mode that needed it.
        mode: String,
    },
    /// The KB holds embeddings of another model.
    #[error(
        "knowledge base embeddings are from `{stored}`, but the embedder given is `{given}`; run rebuild-index with the new embedder or use the same model"
    )]
    EmbedderMismatch {
        /// The embedder id recorded in the store.
        stored: String,
        /// The embedder id offered now.
        given: String,
    },
    /// An embedder failed on an input.
    #[error("embedder `{model}` failed: {reason}")]
    Embed {
        /// The embedder id.
        model: String,
        /// What went wrong.
        reason: String,
    },
    /// The KB's configured model is not the one its vectors come from.
    #[error(
        "the knowledge base's vectors come from `{stored}`, but kb.toml names the model `{configured}`; run `reimagen reembed` (BM25 search works meanwhile)"
    )]
    StaleEmbeddings {
        /// The embedder id recorded in the store.
        stored: String,
        /// The id of the model kb.toml names.
        configured: String,
    },
    /// The CLIP model could not be loaded or run.
    #[error("CLIP model `{model}`: {source}")]
    Clip {
        /// The embedder id, or the model folder when it did not load.
        model: String,
        /// What went wrong.
        source: crate::embed::clip::ClipError,
    },
}

/// The crate's error: every public function returns it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// A user input was refused.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// A model problem.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The folder-watching daemon failed or was given a bad folder.
    #[error(transparent)]
    Watch(#[from] WatchError),
    /// A generation was refused (impossible settings, a bad model folder), cancelled, or failed.
    #[error(transparent)]
    Generate(#[from] crate::generate::GenerateError),
    /// The training-dataset builder failed (boxed: it can itself hold a KB error).
    #[error(transparent)]
    Dataset(Box<crate::dataset::DatasetError>),
    /// The query is not valid.
    #[error("invalid query: {0}")]
    Query(String),
    /// No pair with that id (or id prefix).
    #[error("no pair with id `{0}` in the knowledge base")]
    NotFound(String),
    /// An id prefix matches more than one pair.
    #[error("id prefix `{0}` is ambiguous: it matches several pairs; give more characters")]
    Ambiguous(String),
    /// The knowledge-base configuration file is bad.
    #[error("{path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file-system operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl From<crate::dataset::DatasetError> for Error {
    /// A KB error the dataset builder passed on comes back as itself, not wrapped twice.
    fn from(e: crate::dataset::DatasetError) -> Self {
        match e {
            crate::dataset::DatasetError::Kb(inner) => inner,
            other => Error::Dataset(Box::new(other)),
        }
    }
}

impl Error {
    /// True when the error is about something the user gave (a file, a caption, a query, an id,
    /// a generation setting, a model folder), false when something broke inside.
    pub fn is_user_error(&self) -> bool {
        use crate::generate::GenerateError;
        match self {
            Error::Model(ModelError::Clip { source, .. }) => return source.is_user_error(),
            Error::Dataset(e) => return e.is_user_error(),
            // A cancelled generation is what the user asked for, not a failure inside.
            Error::Generate(
                GenerateError::InvalidRequest { .. }
                | GenerateError::InvalidConfig { .. }
                | GenerateError::Model { .. }
                | GenerateError::Cancelled { .. },
            ) => return true,
            _ => {}
        }
        matches!(
            self,
            Error::Ingest(_)
                | Error::Query(_)
                | Error::NotFound(_)
                | Error::Ambiguous(_)
                | Error::Config { .. }
                | Error::Model(
                    ModelError::NoEmbedder { .. }
                        | ModelError::EmbedderMismatch { .. }
                        | ModelError::StaleEmbeddings { .. }
                )
                | Error::Store(
                    StoreError::TooNew { .. }
                        | StoreError::Locked { .. }
                        | StoreError::ReadOnly { .. }
                )
                | Error::Watch(WatchError::BadRoot { .. } | WatchError::LockedByOther { .. })
        )
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
