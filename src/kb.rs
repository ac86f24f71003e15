//! [`KnowledgeBase`]: the one entry point that ties store, indices, ingest and search together.
//!
//! A KB directory holds `store/` (LMDB, the truth), `text-index/` and `vector-index/` (derived,
//! rebuilt when damaged) and `kb.toml`. Opening takes an exclusive lock file, so one process
//! owns a KB at a time.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::embed::clip::WeightPrecision;
use crate::embed::{ClipEmbedder, Embedder};
use crate::error::{Error, IngestError, ModelError, Result, StoreError, io_err};
use crate::ingest::{self, CaptionRules, DecodeLimits, DecodedImage, PairText};
use crate::search::{self, Hit, Query, QueryImage, Ranked, Retriever, SearchMode};
use crate::store::Store;
use crate::store::records::{
    Change, EmbeddingKind, ImageId, PairRecord, PathRecord, QuarantineRecord,
};
use crate::store::writer::{ChangeSink, NewRecord, WriteOp, WriteOutcome, Writer};
use crate::text::{TextIndex, TextLanguage};
use crate::vector::{HnswParams, VectorCounts, VectorIndex};

const CONFIG_FILE: &str = "kb.toml";
const LOCK_FILE: &str = "kb.lock";

/// The contents of `kb.toml`, written by `init`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KbConfig {
    /// Format version of this file.
    #[serde(default = "one")]
    pub format: u32,
    /// Folder of the embedder model (CLIP), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedder_model: Option<PathBuf>,
    /// Folder of the generator model, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generator_model: Option<PathBuf>,
    /// The language whose stemmer the BM25 index applies (English by default; `none` for no
    /// stemming). Changing it rebuilds the text index on next open.
    #[serde(default)]
    pub language: TextLanguage,
}

fn one() -> u32 {
    1
}

impl KbConfig {
    /// Reads `dir/kb.toml` without opening (or locking) the KB; `None` when there is none.
    ///
    /// # Errors
    /// An unreadable or malformed file.
    pub fn read(dir: &Path) -> Result<Option<KbConfig>> {
        let path = dir.join(CONFIG_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let raw = fs::read_to_string(&path).map_err(io_err(&path))?;
        toml::from_str(&raw).map(Some).map_err(|e| Error::Config {
            path,
            reason: e.to_string(),
        })
    }

    /// The embedder model folder, a relative path taken from the KB directory `dir`.
    pub fn embedder_folder(&self, dir: &Path) -> Option<PathBuf> {
        self.embedder_model.as_ref().map(|m| dir.join(m))
    }
}

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

    fn name(&self) -> PathBuf {
        match &self.image {
            ImageSource::File(p) => p.clone(),
            ImageSource::Bytes { name, .. } => PathBuf::from(name),
        }
    }
}

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

/// Filtered vector searches whose filter passes at most this many pairs are exact (embeddings
/// read from the store) rather than a graph walk.
const EXACT_SEARCH_LIMIT: usize = 2_000;

/// The derived indices, fed by the writer after every commit.
pub(crate) struct Indices {
    pub text: TextIndex,
    pub image: VectorIndex,
    pub text_vectors: VectorIndex,
}

impl Indices {
    fn dump(&self, store: &Store, force: bool) -> Result<()> {
        self.image.dump(store, force)?;
        self.text_vectors.dump(store, force)
    }

    fn rebuild(&self, store: &Store) -> Result<()> {
        self.text.rebuild(store)?;
        self.image.rebuild(store)?;
        self.text_vectors.rebuild(store)?;
        self.dump(store, true)
    }
}

struct Sink(Arc<Indices>);

impl ChangeSink for Sink {
    fn apply(&mut self, store: &Store, changes: &[Change]) {
        // The store has committed; an index that fails here is behind and replays on next open.
        // BM25 indexing (one thread, and a commit that waits on the disk) runs beside the
        // graph inserts (which use every core).
        std::thread::scope(|scope| {
            scope.spawn(|| {
                if let Err(e) = self.0.text.apply(store, changes) {
                    tracing::error!(
                        "text index update failed (it will catch up on next open): {e}"
                    );
                }
            });
            self.apply_vectors(store, changes);
        });
    }
}

impl Sink {
    /// Both graphs at once: each reads its embeddings on one thread before its parallel insert,
    /// and the other fills that gap.
    fn apply_vectors(&self, store: &Store, changes: &[Change]) {
        let indices = [&self.0.image, &self.0.text_vectors];
        indices.into_par_iter().for_each(|index| {
            if let Err(e) = index.apply(store, changes) {
                tracing::error!("vector index update failed (it will catch up on next open): {e}");
            }
            if index.wants_dump()
                && let Err(e) = index.dump(store, false)
            {
                tracing::error!("vector index dump failed: {e}");
            }
        });
    }
}

/// A callback following long work, with a word on what is being done.
pub type ProgressFn = Arc<dyn Fn(&str, Progress) + Send + Sync>;

/// Options for opening a knowledge base. Get one from [`KnowledgeBase::builder`].
///
/// By default: no embedder (BM25 only), [`DecodeLimits::default`], [`CaptionRules::default`],
/// [`HnswParams::default`], a 64 MiB initial LMDB map, and the KB must already exist (see [`Builder::create`]).
#[must_use]
pub struct Builder {
    dir: PathBuf,
    create: bool,
    embedder: Option<Arc<dyn Embedder>>,
    embedder_model: Option<PathBuf>,
    generator_model: Option<PathBuf>,
    load_configured_embedder: bool,
    limits: DecodeLimits,
    captions: CaptionRules,
    hnsw: HnswParams,
    map_size: usize,
    language: Option<TextLanguage>,
    progress: Option<ProgressFn>,
}

impl Builder {
    /// Sets the language of the BM25 analyzers: written to `kb.toml` when it differs from the
    /// one there (the text index is then rebuilt). By default the one in `kb.toml`.
    pub fn language(mut self, language: TextLanguage) -> Builder {
        self.language = Some(language);
        self
    }

    /// Follows long work done while opening (an index rebuilt), with what is being done.
    pub fn progress(mut self, progress: ProgressFn) -> Builder {
        self.progress = Some(progress);
        self
    }

    /// Sets the LMDB map size the store starts with; it doubles by itself whenever LMDB reports
    /// it full, so this only matters for tuning (by default 64 MiB).
    pub fn initial_map_size(mut self, bytes: usize) -> Builder {
        self.map_size = bytes;
        self
    }

    /// Creates the KB when the directory holds none.
    pub fn create(mut self, create: bool) -> Builder {
        self.create = create;
        self
    }

    /// Uses this embedder for images and query texts (instead of the model `kb.toml` names).
    pub fn embedder(mut self, embedder: Arc<dyn Embedder>) -> Builder {
        self.embedder = Some(embedder);
        self
    }

    /// Records `folder` (a CLIP model in transformers' layout) as the KB's embedder in
    /// `kb.toml`, which every later open then loads: what `reimagen init --embedder` does.
    pub fn embedder_model(mut self, folder: impl Into<PathBuf>) -> Builder {
        self.embedder_model = Some(folder.into());
        self
    }

    /// Records `folder` (a generator model: cascade.json and its stages) as the KB's generator
    /// in `kb.toml`: what `reimagen init --generator` does. It is not loaded on open; the caller
    /// checks it ([`crate::generate::open::check_model_folder`]).
    pub fn generator_model(mut self, folder: impl Into<PathBuf>) -> Builder {
        self.generator_model = Some(folder.into());
        self
    }

    /// Whether, when no embedder is given, the model `kb.toml` names is used ([`ClipEmbedder::lazy`]:
    /// its weights load on the first embedding). By default, true.
    pub fn load_configured_embedder(mut self, load: bool) -> Builder {
        self.load_configured_embedder = load;
        self
    }

    /// Sets the decode limits for images.
    pub fn decode_limits(mut self, limits: DecodeLimits) -> Builder {
        self.limits = limits;
        self
    }

    /// Sets the caption rules.
    pub fn caption_rules(mut self, rules: CaptionRules) -> Builder {
        self.captions = rules;
        self
    }

    /// Sets the HNSW parameters.
    pub fn hnsw(mut self, params: HnswParams) -> Builder {
        self.hnsw = params;
        self
    }

    /// Opens the KB: locks it, migrates the store, and brings every index up to the store.
    pub fn open(self) -> Result<KnowledgeBase> {
        let dir = self.dir;
        let config_path = dir.join(CONFIG_FILE);
        let config = if config_path.exists() {
            let raw = fs::read_to_string(&config_path).map_err(io_err(&config_path))?;
            let mut config: KbConfig = toml::from_str(&raw).map_err(|e| Error::Config {
                path: config_path.clone(),
                reason: e.to_string(),
            })?;
            if let Some(language) = self.language
                && language != config.language
            {
                config.language = language;
                fs::write(
                    &config_path,
                    toml::to_string(&config).expect("config serializes"),
                )
                .map_err(io_err(&config_path))?;
            }
            config
        } else if self.create {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            let config = KbConfig {
                format: 1,
                language: self.language.unwrap_or_default(),
                ..KbConfig::default()
            };
            fs::write(
                &config_path,
                toml::to_string(&config).expect("config serializes"),
            )
            .map_err(io_err(&config_path))?;
            config
        } else {
            return Err(Error::Config {
                path: dir.clone(),
                reason: "no knowledge base here (no kb.toml); run `reimagen init` first".into(),
            });
        };
        let lock_path = dir.join(LOCK_FILE);
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        if lock.try_lock().is_err() {
            return Err(StoreError::Locked {
                path: dir.clone(),
                lock: lock_path,
            }
            .into());
        }
        let mut config = config;
        let record_model = self
            .embedder_model
            .filter(|m| config.embedder_model.as_ref() != Some(m));
        if let Some(model) = &record_model {
            config.embedder_model = Some(model.clone());
        }
        let record_generator = self
            .generator_model
            .filter(|m| config.generator_model.as_ref() != Some(m));
        if let Some(model) = &record_generator {
            config.generator_model = Some(model.clone());
        }
        let store = Arc::new(Store::open(&dir.join("store"), self.map_size)?);
        let (stored, pair_count) = {
            let rtxn = store.read()?;
            (store.embedder_id(&rtxn)?, store.pair_count(&rtxn)?)
        };
        let mut stale = None;
        let embedder = match (self.embedder, &config.embedder_model) {
            (Some(embedder), _) => {
                if let Some(stored) = stored
                    && stored != embedder.id()
                {
                    return Err(ModelError::EmbedderMismatch {
                        stored,
                        given: embedder.id(),
                    }
                    .into());
                }
                Some(embedder)
            }
            (None, Some(model)) if self.load_configured_embedder => {
                let (embedder, why) = configured_embedder(&dir.join(model), stored, pair_count)?;
                stale = why;
                Some(embedder)
            }
            (None, _) => None,
        };
        // Recorded only once the model has loaded, so a bad folder leaves kb.toml as it was.
        if record_model.is_some() || record_generator.is_some() {
            let text = toml::to_string(&config).expect("config serializes");
            fs::write(&config_path, text).map_err(io_err(&config_path))?;
        }
        let vectors = dir.join("vector-index");
        fs::create_dir_all(&vectors).map_err(io_err(&vectors))?;
        let indices = Arc::new(Indices {
            text: TextIndex::open(&dir.join("text-index"), &store, config.language, &|p| {
                if let Some(progress) = &self.progress {
                    progress("rebuilding the text index", p);
                }
            })?,
            image: VectorIndex::open(&vectors, EmbeddingKind::Image, self.hnsw, &store)?,
            text_vectors: VectorIndex::open(&vectors, EmbeddingKind::Text, self.hnsw, &store)?,
        });
        let writer = Writer::spawn(store.clone(), Box::new(Sink(indices.clone())));
        Ok(KnowledgeBase {
            dir,
            config,
            store,
            indices,
            writer: Some(writer),
            embedder,
            stale_embeddings: std::sync::Mutex::new(stale),
            limits: self.limits,
            captions: self.captions,
            _lock: Some(lock),
        })
    }
}

impl Builder {
    /// Opens the KB for reading only, beside the process that writes it (the daemon, another
    /// program): takes no lock, migrates and rebuilds nothing, starts no writer. Searches see
    /// each acknowledged write of the other process (its BM25 commits, and the change log
    /// replayed into this process's copy of the graphs); writes fail with
    /// [`StoreError::ReadOnly`]. An index the writer has not made usable yet (an older analyzer,
    /// a store to migrate) is an error saying so. `create`, `language` and `embedder_model` are
    /// ignored: they write `kb.toml`.
    pub fn open_read_only(self) -> Result<KnowledgeBase> {
        let dir = self.dir;
        let config = KbConfig::read(&dir)?.ok_or_else(|| Error::Config {
            path: dir.clone(),
            reason: "no knowledge base here (no kb.toml); run `reimagen init` first".into(),
        })?;
        let store = Arc::new(Store::open_read_only(&dir.join("store"))?);
        let (stored, pair_count) = {
            let rtxn = store.read()?;
            (store.embedder_id(&rtxn)?, store.pair_count(&rtxn)?)
        };
        let mut stale = None;
        let embedder = match (self.embedder, &config.embedder_model) {
            (Some(embedder), _) => {
                stale = stored.filter(|s| *s != embedder.id());
                Some(embedder)
            }
            (None, Some(model)) if self.load_configured_embedder => {
                let (embedder, why) = configured_embedder(&dir.join(model), stored, pair_count)?;
                stale = why;
                Some(embedder)
            }
            (None, _) => None,
        };
        let vectors = dir.join("vector-index");
        let indices = Arc::new(Indices {
            text: TextIndex::open_read_only(&dir.join("text-index"), config.language)?,
            // Loaded by the first query that walks them (`refresh`): a BM25 query never does.
            image: VectorIndex::open_deferred(&vectors, EmbeddingKind::Image, self.hnsw),
            text_vectors: VectorIndex::open_deferred(&vectors, EmbeddingKind::Text, self.hnsw),
        });
        Ok(KnowledgeBase {
            dir,
            config,
            store,
            indices,
            writer: None,
            embedder,
            stale_embeddings: std::sync::Mutex::new(stale),
            limits: self.limits,
            captions: self.captions,
            _lock: None,
        })
    }
}

/// An embedded knowledge base of image-text pairs.
///
/// Cheap to share across threads by reference (`&KnowledgeBase` is `Sync`); all writes funnel
/// into one writer thread. Dropping it stops the writer and saves the vector indices.
pub struct KnowledgeBase {
    dir: PathBuf,
    config: KbConfig,
    store: Arc<Store>,
    indices: Arc<Indices>,
    writer: Option<Writer>,
    embedder: Option<Arc<dyn Embedder>>,
    /// The embedder id the store's vectors come from, when it is not `embedder`'s.
    stale_embeddings: std::sync::Mutex<Option<String>>,
    limits: DecodeLimits,
    captions: CaptionRules,
    /// The exclusive `kb.lock` of the writer; `None` when opened read-only.
    _lock: Option<fs::File>,
}

impl Drop for KnowledgeBase {
    fn drop(&mut self) {
        drop(self.writer.take());
        if let Err(e) = self.indices.dump(&self.store, false) {
            tracing::error!("saving the vector indices failed (they will be rebuilt on open): {e}");
        }
    }
}

impl KnowledgeBase {
    /// Options for opening or creating the KB in `dir`.
    pub fn builder(dir: impl Into<PathBuf>) -> Builder {
        Builder {
            dir: dir.into(),
            create: false,
            embedder: None,
            embedder_model: None,
            generator_model: None,
            load_configured_embedder: true,
            limits: DecodeLimits::default(),
            captions: CaptionRules::default(),
            hnsw: HnswParams::default(),
            map_size: crate::store::INITIAL_MAP_SIZE,
            language: None,
            progress: None,
        }
    }

    /// Opens an existing KB with the default options.
    pub fn open(dir: impl Into<PathBuf>) -> Result<KnowledgeBase> {
        Self::builder(dir).open()
    }

    /// Opens an existing KB for reading only, beside a daemon or another process that writes
    /// it; see [`Builder::open_read_only`].
    ///
    /// ```no_run
    /// # fn main() -> reimagen::Result<()> {
    /// let kb = reimagen::KnowledgeBase::open_read_only("/data/kb")?;
    /// let hits = kb.search(&reimagen::Query::text("corgi on a beach").k(5))?;
    /// # let _ = hits; Ok(()) }
    /// ```
    pub fn open_read_only(dir: impl Into<PathBuf>) -> Result<KnowledgeBase> {
        Self::builder(dir).open_read_only()
    }

    /// Whether another process holds the KB in `dir` open for writing (its `kb.lock`).
    pub fn is_locked(dir: &Path) -> Result<bool> {
        let lock_path = dir.join(LOCK_FILE);
        let lock = match fs::OpenOptions::new().write(true).open(&lock_path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err(&lock_path)(e)),
        };
        // Released at once (dropping the file): this only looks.
        Ok(lock.try_lock().is_err())
    }

    /// Opens the KB in `dir`, creating it if it does not exist.
    pub fn create(dir: impl Into<PathBuf>) -> Result<KnowledgeBase> {
        Self::builder(dir).create(true).open()
    }

    /// The KB directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The KB's `kb.toml`.
    pub fn config(&self) -> &KbConfig {
        &self.config
    }

    /// The writer thread; an error naming the KB when it was opened read-only.
    fn writer(&self) -> Result<&Writer> {
        self.writer.as_ref().ok_or_else(|| self.read_only_error())
    }

    fn read_only_error(&self) -> Error {
        StoreError::ReadOnly {
            path: self.dir.clone(),
            reason: "writes need the knowledge base opened for writing (`KnowledgeBase::open`), \
                     which only one process may hold"
                .into(),
        }
        .into()
    }

    /// Whether the KB was opened with [`KnowledgeBase::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.writer.is_none()
    }

    /// Whether the BM25 index lags the store: its writer was killed between the store's commit
    /// and the index's. A read-only KB searches what the index holds; the next open for writing
    /// replays the rest.
    pub fn is_behind(&self) -> Result<bool> {
        let rtxn = self.store.read()?;
        let last_seq = self.store.last_seq(&rtxn)?;
        drop(rtxn);
        Ok(self.indices.text.applied_seq()? < last_seq)
    }

    /// Brings a read-only KB's indices up to what the writer has committed: the writer's last
    /// BM25 commit, and the change log replayed into the in-memory graphs. A no-op where this
    /// process writes (its indexer thread keeps them current).
    fn refresh(&self) -> Result<()> {
        self.refresh_for(true)
    }

    /// [`KnowledgeBase::refresh`], the graphs only when `vectors` (loading them on first use).
    fn refresh_for(&self, vectors: bool) -> Result<()> {
        if self.writer.is_some() {
            return Ok(());
        }
        self.indices.text.refresh()?;
        if vectors {
            self.indices.image.catch_up(&self.store)?;
            self.indices.text_vectors.catch_up(&self.store)?;
        }
        Ok(())
    }

    /// Adds one pair. A caption is cleaned (whitespace collapsed) and checked; the image is
    /// decoded under the limits; a duplicate image returns the existing id.
    pub fn add(&self, pair: NewPair) -> Result<AddOutcome> {
        self.add_many(vec![pair])
            .pop()
            .expect("one result per pair")
    }

    /// Adds many pairs: decoding, hashing and embedding run in parallel, and the writes share
    /// transactions. Results come back in input order; a bad pair does not stop the others.
    pub fn add_many(&self, pairs: Vec<NewPair>) -> Vec<Result<AddOutcome>> {
        let prepared: Vec<Result<NewRecord>> = match &self.embedder {
            None => pairs
                .into_par_iter()
                .map(|p| Ok(self.prepare(p)?.0))
                .collect(),
            // Decoding runs in parallel a batch at a time; the embedder then runs one forward
            // per batch (its ops are parallel inside) instead of one per pair from many threads.
            Some(embedder) => {
                let mut prepared = Vec::with_capacity(pairs.len());
                let mut pairs = pairs.into_iter().peekable();
                while pairs.peek().is_some() {
                    let chunk: Vec<NewPair> =
                        pairs.by_ref().take(embedder.batch_size().max(1)).collect();
                    let decoded: Vec<_> = chunk.into_par_iter().map(|p| self.prepare(p)).collect();
                    prepared.extend(embed_batch(embedder.as_ref(), decoded));
                }
                prepared
            }
        };
        let mut slots: Vec<Option<Result<AddOutcome>>> = Vec::with_capacity(prepared.len());
        let mut ops = Vec::new();
        for p in prepared {
            match p {
                Ok(record) => {
                    ops.push(WriteOp::Add(Box::new(record)));
                    slots.push(None);
                }
                Err(e) => slots.push(Some(Err(e))),
            }
        }
        let Ok(writer) = self.writer() else {
            return slots
                .into_iter()
                .map(|slot| slot.unwrap_or_else(|| Err(self.read_only_error())))
                .collect();
        };
        let mut outcomes = writer.submit_many(ops).into_iter();
        slots
            .into_iter()
            .map(|slot| {
                slot.unwrap_or_else(|| match outcomes.next().expect("one outcome per op") {
                    Ok(WriteOutcome::Added { id, .. }) => Ok(AddOutcome::Added(id)),
                    Ok(WriteOutcome::Duplicate { id }) => Ok(AddOutcome::Duplicate(id)),
                    Ok(other) => unreachable!("add answered {other:?}"),
                    Err(e) => Err(e.into()),
                })
            })
            .collect()
    }

    /// Cleans the text and decodes the image of a pair into its record, without embeddings;
    /// the decoded image comes along for the embedder.
    fn prepare(&self, pair: NewPair) -> Result<(NewRecord, image::DynamicImage)> {
        let name = pair.name();
        let caption = self.captions.clean(&pair.text.caption, &name)?;
        let entity = match &pair.text.entity {
            Some(e) => {
                Some(
                    self.captions
                        .clean(e, &name)
                        .map_err(|_| IngestError::BadCaption {
                            path: name.clone(),
                            reason: "the entity name is empty or invalid".into(),
                        })?,
                )
            }
            None => None,
        };
        let tags: Vec<String> = pair
            .text
            .tags
            .iter()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect();
        let (decoded, path) = match pair.image {
            ImageSource::File(path) => {
                // Size and mtime from before the read: if the file changes while it is read, the
                // record no longer matches the file and the next scan looks at it again.
                let before = path_record(&path, ImageId([0; 32]))?;
                let decoded = ingest::read_image_file(&path, &self.limits)?;
                let record = PathRecord {
                    id: decoded.id,
                    ..before
                };
                (decoded, Some(record))
            }
            ImageSource::Bytes { bytes, .. } => {
                (ingest::decode_image(&name, bytes, &self.limits)?, None)
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
            thumbnail: ingest::thumbnail(&image),
            image: bytes,
            embeddings: Vec::new(),
            path,
            embedder: self.embedder.as_ref().map(|e| e.id()),
        };
        Ok((record, image))
    }

    /// Imports every image under `dir` (recursively, not following links) with the caption
    /// rules: a sidecar `NAME.txt`, else the file stem; the parent folder is the entity.
    /// `progress` is called after each batch.
    pub fn import_dir(&self, dir: &Path, progress: &dyn Fn(Progress)) -> Result<ImportReport> {
        let mut files = Vec::new();
        collect_images(dir, &mut files)?;
        files.sort();
        let total = files.len() as u64;
        let mut report = ImportReport::default();
        let mut done = 0;
        progress(Progress { done, total });
        for chunk in files.chunks(256) {
            let mut pairs = Vec::new();
            for path in chunk {
                match ingest::caption_for_file(path, &self.captions) {
                    Ok(text) => pairs.push(NewPair {
                        image: ImageSource::File(path.clone()),
                        text,
                    }),
                    Err(e) => report.failed.push((path.clone(), e.to_string())),
                }
            }
            let names: Vec<PathBuf> = pairs.iter().map(NewPair::name).collect();
            for (name, result) in names.into_iter().zip(self.add_many(pairs)) {
                match result {
                    Ok(AddOutcome::Added(_)) => report.added += 1,
                    Ok(AddOutcome::Duplicate(_)) => report.duplicates += 1,
                    Err(e) => report.failed.push((name, e.to_string())),
                }
            }
            done += chunk.len() as u64;
            progress(Progress { done, total });
        }
        Ok(report)
    }

    /// Finds the id a full id or a unique prefix (at least 4 hex digits) names.
    pub fn resolve(&self, id_or_prefix: &str) -> Result<ImageId> {
        let s = id_or_prefix.trim().to_ascii_lowercase();
        if s.len() < 4 || !s.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::NotFound(id_or_prefix.to_string()));
        }
        let rtxn = self.store.read()?;
        let ids = self.store.ids_with_prefix(&rtxn, &s, 2)?;
        match ids.as_slice() {
            [id] => Ok(*id),
            [] => Err(Error::NotFound(id_or_prefix.to_string())),
            _ => Err(Error::Ambiguous(id_or_prefix.to_string())),
        }
    }

    /// A pair by id.
    pub fn get(&self, id: &ImageId) -> Result<Option<Pair>> {
        let rtxn = self.store.read()?;
        let Some(record) = self.store.pair(&rtxn, id)? else {
            return Ok(None);
        };
        let paths = self.store.paths_of(&rtxn, id)?;
        Ok(Some(pair_of(record, paths)))
    }

    /// The image bytes of a pair, as they were added.
    pub fn image_bytes(&self, id: &ImageId) -> Result<Option<Vec<u8>>> {
        let rtxn = self.store.read()?;
        Ok(self.store.image_bytes(&rtxn, id)?)
    }

    /// The PNG thumbnail of a pair (at most 128 pixels a side).
    pub fn thumbnail(&self, id: &ImageId) -> Result<Option<Vec<u8>>> {
        let rtxn = self.store.read()?;
        Ok(self.store.thumbnail(&rtxn, id)?)
    }

    /// Records that a file was refused (it is retried only when its size or mtime change).
    /// Size and mtime are those of the path itself: a symbolic link is not followed.
    pub fn quarantine(&self, path: &Path, reason: &str) -> Result<()> {
        let record = quarantine_record(path, reason)?;
        self.writer()?.submit(WriteOp::Quarantine { record })?;
        Ok(())
    }

    /// Lifts the quarantine of a file.
    pub fn unquarantine(&self, path: &Path) -> Result<()> {
        let path = absolute_lossy(path)?;
        self.writer()?.submit(WriteOp::Unquarantine { path })?;
        Ok(())
    }

    /// Every quarantined file with its reason.
    pub fn quarantined(&self) -> Result<Vec<QuarantineRecord>> {
        let rtxn = self.store.read()?;
        Ok(self.store.quarantined(&rtxn)?)
    }

    /// What the store knows of a file: the pair it holds, with size and mtime at ingest.
    pub fn path_info(&self, path: &Path) -> Result<Option<PathRecord>> {
        let text = std::path::absolute(path).map_err(io_err(path))?;
        let Some(text) = text.to_str() else {
            return Ok(None);
        };
        let rtxn = self.store.read()?;
        Ok(self.store.path_record(&rtxn, text)?)
    }

    /// Every file path the store knows, with the pair each holds.
    pub fn paths(&self) -> Result<Vec<PathRecord>> {
        let rtxn = self.store.read()?;
        Ok(self.store.all_paths(&rtxn)?)
    }

    /// Every pair, in id order.
    pub fn list(&self) -> Result<Vec<Pair>> {
        let rtxn = self.store.read()?;
        let records = self.store.all_pairs(&rtxn)?;
        records
            .into_iter()
            .map(|r| {
                let paths = self.store.paths_of(&rtxn, &r.id)?;
                Ok(pair_of(r, paths))
            })
            .collect()
    }

    /// Every entity with its pair count and one example pair, most pairs first (then by name).
    /// Spellings that differ in case or accents only count as one entity, under the spelling
    /// most of its pairs use.
    pub fn entities(&self) -> Result<Vec<EntitySummary>> {
        let rtxn = self.store.read()?;
        let mut by_key: std::collections::HashMap<String, (EntitySummary, Vec<(String, usize)>)> =
            std::collections::HashMap::new();
        for pair in self.store.all_pairs(&rtxn)? {
            let Some(name) = pair.entity else { continue };
            let (summary, spellings) =
                by_key
                    .entry(crate::text::name_key(&name))
                    .or_insert_with(|| {
                        (
                            EntitySummary {
                                name: name.clone(),
                                pairs: 0,
                                example: pair.id,
                            },
                            Vec::new(),
                        )
                    });
            summary.pairs += 1;
            match spellings.iter_mut().find(|(s, _)| *s == name) {
                Some((_, n)) => *n += 1,
                None => spellings.push((name, 1)),
            }
        }
        let mut out: Vec<EntitySummary> = by_key
            .into_values()
            .map(|(mut summary, spellings)| {
                if let Some((name, _)) = spellings.into_iter().max_by_key(|(_, n)| *n) {
                    summary.name = name;
                }
                summary
            })
            .collect();
        out.sort_by(|a, b| b.pairs.cmp(&a.pairs).then_with(|| a.name.cmp(&b.name)));
        Ok(out)
    }

    /// The embeddings stored for a pair (image, text), those it has.
    pub fn embeddings_of(&self, id: &ImageId) -> Result<Vec<(EmbeddingKind, Vec<f32>)>> {
        let rtxn = self.store.read()?;
        let mut out = Vec::new();
        for kind in [EmbeddingKind::Image, EmbeddingKind::Text] {
            if let Some(v) = self.store.embedding(&rtxn, id, kind)? {
                out.push((kind, v));
            }
        }
        Ok(out)
    }

    /// Removes a pair; false when there was none.
    pub fn remove(&self, id: &ImageId) -> Result<bool> {
        match self.writer()?.submit(WriteOp::Remove { id: *id })? {
            WriteOutcome::Removed { .. } => Ok(true),
            _ => Ok(false),
        }
    }

    /// Replaces a pair's caption, entity and tags; false when there is no such pair.
    pub fn update(&self, id: &ImageId, text: PairText) -> Result<bool> {
        let op = self.update_op(id, text)?;
        Ok(matches!(
            self.writer()?.submit(op)?,
            WriteOutcome::Updated { .. }
        ))
    }

    fn update_op(&self, id: &ImageId, text: PairText) -> Result<WriteOp> {
        let name = PathBuf::from(id.to_hex());
        let caption = self.captions.clean(&text.caption, &name)?;
        let text_embedding = match &self.embedder {
            Some(e) => Some(e.embed_text(&caption)?),
            None => None,
        };
        Ok(WriteOp::Update {
            id: *id,
            caption,
            entity: text.entity,
            tags: text.tags,
            text_embedding,
            image_embedding: None,
        })
    }

    /// Applies many path, caption and quarantine changes at once: they share write transactions
    /// (one commit for a whole folder moved, not one per file). Results come back in input order;
    /// a bad op does not stop the others.
    pub fn apply_path_ops(&self, ops: Vec<PathOp>) -> Vec<Result<PathOpOutcome>> {
        let mut slots: Vec<Option<Result<PathOpOutcome>>> = Vec::with_capacity(ops.len());
        let mut writes = Vec::new();
        for op in ops {
            let write = match op {
                PathOp::Set { path, id, seen } => path_record(&path, id)
                    .map(|record| match seen {
                        Some((size, mtime_ns)) => PathRecord {
                            size,
                            mtime_ns,
                            ..record
                        },
                        None => record,
                    })
                    .map(WriteOp::SetPath)
                    .map_err(Error::from),
                PathOp::Remove {
                    path,
                    remove_orphan,
                } => absolute_utf8(&path).map(|path| WriteOp::RemovePath {
                    path,
                    remove_orphan,
                }),
                PathOp::RemoveOrphan { id } => Ok(WriteOp::RemoveOrphan { id }),
                PathOp::Update { id, text } => self.update_op(&id, text),
                PathOp::Quarantine { path, reason, seen } => quarantine_record(&path, &reason)
                    .map(|record| match seen {
                        Some((size, mtime_ns)) => QuarantineRecord {
                            size,
                            mtime_ns,
                            ..record
                        },
                        None => record,
                    })
                    .map(|record| WriteOp::Quarantine { record }),
                PathOp::Unquarantine { path } => {
                    absolute_lossy(&path).map(|path| WriteOp::Unquarantine { path })
                }
            };
            match write {
                Ok(w) => {
                    writes.push(w);
                    slots.push(None);
                }
                Err(e) => slots.push(Some(Err(e))),
            }
        }
        let Ok(writer) = self.writer() else {
            return slots
                .into_iter()
                .map(|slot| slot.unwrap_or_else(|| Err(self.read_only_error())))
                .collect();
        };
        let mut outcomes = writer.submit_many(writes).into_iter();
        slots
            .into_iter()
            .map(|slot| {
                slot.unwrap_or_else(|| match outcomes.next().expect("one outcome per op") {
                    Ok(
                        WriteOutcome::NotFound | WriteOutcome::PathRemoved { removed_pair: None },
                    ) => Ok(PathOpOutcome::Unchanged),
                    Ok(
                        WriteOutcome::Removed { id, .. }
                        | WriteOutcome::PathRemoved {
                            removed_pair: Some(id),
                        },
                    ) => Ok(PathOpOutcome::PairRemoved(id)),
                    Ok(_) => Ok(PathOpOutcome::Applied),
                    Err(e) => Err(e.into()),
                })
            })
            .collect()
    }

    /// The decode limits this KB applies to images.
    pub fn decode_limits(&self) -> &DecodeLimits {
        &self.limits
    }

    /// The caption rules this KB applies.
    pub fn caption_rules(&self) -> &CaptionRules {
        &self.captions
    }

    /// Records that the file at `path` holds the pair `id` (a second copy, or a file renamed
    /// without its content changing): the pair itself is untouched.
    pub fn set_path(&self, path: &Path, id: &ImageId) -> Result<()> {
        let record = path_record(path, *id)?;
        self.writer()?.submit(WriteOp::SetPath(record))?;
        Ok(())
    }

    /// Forgets the file at `path`. With `remove_orphan`, a pair that no other known file holds is
    /// removed too; its id is returned.
    pub fn remove_path(&self, path: &Path, remove_orphan: bool) -> Result<Option<ImageId>> {
        let text = absolute_utf8(path)?;
        match self.writer()?.submit(WriteOp::RemovePath {
            path: text,
            remove_orphan,
        })? {
            WriteOutcome::PathRemoved { removed_pair } => Ok(removed_pair),
            _ => Ok(None),
        }
    }

    /// Searches; see [`Query`] for the modes and options.
    pub fn search(&self, query: &Query) -> Result<Vec<Hit>> {
        if query.k == 0 {
            return Ok(Vec::new());
        }
        self.refresh_for(query.mode != SearchMode::Bm25)?;
        // Fetch more than k when hits will be dropped after ranking (de-duplication, fusion).
        let fetch = if query.dedup_entity || query.mode == SearchMode::Hybrid {
            (query.k * 4).max(40)
        } else {
            query.k
        };
        let text = || {
            query
                .text
                .as_deref()
                .filter(|t| !t.trim().is_empty())
                .ok_or_else(|| Error::Query(format!("`{}` search needs a query text", query.mode)))
        };
        let lists: Vec<(Retriever, f32, Ranked)> = match query.mode {
            SearchMode::Bm25 => vec![(
                Retriever::Bm25,
                1.0,
                self.bm25_search(text()?, query, fetch)?,
            )],
            SearchMode::Clip => vec![(
                Retriever::Clip,
                1.0,
                self.clip_search(text()?, query, fetch)?,
            )],
            SearchMode::Image => {
                let image = query
                    .image
                    .as_ref()
                    .ok_or_else(|| Error::Query("`image` search needs a query image".into()))?;
                vec![(
                    Retriever::Image,
                    1.0,
                    self.image_search(image, query, fetch)?,
                )]
            }
            SearchMode::Hybrid => vec![
                (
                    Retriever::Bm25,
                    query.weights.bm25,
                    self.bm25_search(text()?, query, fetch)?,
                ),
                (
                    Retriever::Clip,
                    query.weights.clip,
                    self.clip_search(text()?, query, fetch)?,
                ),
            ],
        };
        let ranked: Vec<(ImageId, f32, Vec<search::Provenance>)> = if lists.len() == 1 {
            let (retriever, _, list) = &lists[0];
            list.iter()
                .enumerate()
                .map(|(i, (id, s))| {
                    (
                        *id,
                        *s,
                        vec![search::Provenance {
                            retriever: *retriever,
                            rank: i + 1,
                            score: *s,
                        }],
                    )
                })
                .collect()
        } else {
            search::fuse(&lists, query.weights.rrf_k)
        };
        let rtxn = self.store.read()?;
        let mut seen_entities = HashSet::new();
        let mut hits = Vec::with_capacity(query.k);
        for (id, score, provenance) in ranked {
            let Some(record) = self.store.pair(&rtxn, &id)? else {
                continue;
            };
            if query.dedup_entity
                && let Some(entity) = &record.entity
                && !seen_entities.insert(entity.to_lowercase())
            {
                continue;
            }
            let paths = self.store.paths_of(&rtxn, &id)?;
            hits.push(Hit {
                id,
                caption: record.caption,
                entity: record.entity,
                tags: record.tags,
                paths,
                score,
                provenance,
            });
            if hits.len() == query.k {
                break;
            }
        }
        Ok(hits)
    }

    fn embedder_for(&self, mode: SearchMode) -> Result<&Arc<dyn Embedder>> {
        let embedder = self
            .embedder
            .as_ref()
            .ok_or_else(|| ModelError::NoEmbedder {
                mode: mode.to_string(),
            })?;
        if let Some(stored) = self.stale_embeddings() {
            return Err(ModelError::StaleEmbeddings {
                stored,
                configured: embedder.id(),
            }
            .into());
        }
        Ok(embedder)
    }

    /// The embedder id the stored vectors come from, when the configured model is another one
    /// (the KB then needs [`KnowledgeBase::reembed`] before CLIP search works again).
    pub fn stale_embeddings(&self) -> Option<String> {
        self.stale_embeddings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Embeds every pair again with the KB's embedder, a batch at a time, then records that
    /// embedder as the store's: what a KB whose model changed needs. BM25 search keeps working
    /// throughout; CLIP search is refused until every pair is done. `progress` is called after
    /// each batch.
    ///
    /// # Errors
    /// No embedder, or a store failure. A pair whose image no longer decodes or embeds is listed
    /// in the report instead.
    pub fn reembed(&self, progress: &dyn Fn(Progress)) -> Result<ReembedReport> {
        let embedder = self
            .embedder
            .clone()
            .ok_or_else(|| ModelError::NoEmbedder {
                mode: "reembed".into(),
            })?;
        let pairs = self.list()?;
        let total = pairs.len() as u64;
        let mut report = ReembedReport {
            embedder: embedder.id(),
            ..ReembedReport::default()
        };
        progress(Progress { done: 0, total });
        let mut done = 0;
        for chunk in pairs.chunks(embedder.batch_size().max(1)) {
            let decoded: Vec<Result<image::DynamicImage>> = chunk
                .par_iter()
                .map(|p| {
                    let bytes = self
                        .image_bytes(&p.id)?
                        .ok_or_else(|| Error::NotFound(p.id.to_hex()))?;
                    Ok(
                        ingest::decode_image(&PathBuf::from(p.id.to_hex()), bytes, &self.limits)?
                            .image,
                    )
                })
                .collect();
            let mut ops = Vec::new();
            let mut ready = Vec::new();
            let mut images = Vec::new();
            for (pair, image) in chunk.iter().zip(decoded) {
                match image {
                    Ok(image) => {
                        ready.push(pair);
                        images.push(image);
                    }
                    Err(e) => report.failed.push((pair.id.to_hex(), e.to_string())),
                }
            }
            let captions: Vec<&str> = ready.iter().map(|p| p.caption.as_str()).collect();
            match embedder
                .embed_images(&images)
                .and_then(|i| Ok((i, embedder.embed_texts(&captions)?)))
            {
                Ok((image_vectors, text_vectors)) => {
                    for ((pair, i), t) in ready.iter().zip(image_vectors).zip(text_vectors) {
                        ops.push(WriteOp::Update {
                            id: pair.id,
                            caption: pair.caption.clone(),
                            entity: pair.entity.clone(),
                            tags: pair.tags.clone(),
                            text_embedding: Some(t),
                            image_embedding: Some(i),
                        });
                    }
                }
                Err(e) => {
                    let reason = e.to_string();
                    report
                        .failed
                        .extend(ready.iter().map(|p| (p.id.to_hex(), reason.clone())));
                }
            }
            for outcome in self.writer()?.submit_many(ops) {
                match outcome {
                    Ok(_) => report.embedded += 1,
                    Err(e) => return Err(e.into()),
                }
            }
            done += chunk.len() as u64;
            progress(Progress { done, total });
        }
        if report.failed.is_empty() {
            self.writer()?.submit(WriteOp::SetEmbedder(embedder.id()))?;
            *self
                .stale_embeddings
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = None;
        }
        Ok(report)
    }

    fn bm25_search(&self, text: &str, query: &Query, fetch: usize) -> Result<Ranked> {
        let found = self.indices.text.search(text, &query.filters, fetch)?;
        let rtxn = self.store.read()?;
        let mut out = Vec::with_capacity(found.len());
        for (doc, score) in found {
            if let Some(id) = self.store.id_of_doc(&rtxn, doc)? {
                out.push((id, score));
            }
        }
        Ok(out)
    }

    fn clip_search(&self, text: &str, query: &Query, fetch: usize) -> Result<Ranked> {
        let vector = self.embedder_for(query.mode)?.embed_text(text)?;
        self.vector_search(&self.indices.image, &vector, true, query, fetch)
    }

    fn image_search(&self, image: &QueryImage, query: &Query, fetch: usize) -> Result<Ranked> {
        let embedder = self.embedder_for(query.mode)?;
        let vector = match image {
            QueryImage::File(path) => {
                embedder.embed_image(&ingest::read_image_file(path, &self.limits)?.image)?
            }
            QueryImage::Pair(id) => {
                let rtxn = self.store.read()?;
                match self.store.embedding(&rtxn, id, EmbeddingKind::Image)? {
                    Some(v) => v,
                    None => return Err(Error::NotFound(id.to_hex())),
                }
            }
        };
        self.vector_search(&self.indices.image, &vector, false, query, fetch)
    }

    fn vector_search(
        &self,
        index: &VectorIndex,
        vector: &[f32],
        cross: bool,
        query: &Query,
        fetch: usize,
    ) -> Result<Ranked> {
        let rtxn = self.store.read()?;
        let found = if query.filters.is_empty() {
            index.search(vector, fetch, cross, &|_| true)
        } else {
            // The filter's pairs come from the BM25 index's exact fields. A few of them are
            // scored exactly; the graph walk would pass through most of the graph to find them.
            let allowed = self.indices.text.filtered_docs(&query.filters)?;
            if allowed.len() <= EXACT_SEARCH_LIMIT {
                self.exact_search(&rtxn, index.kind(), vector, &allowed, fetch)?
            } else {
                let allowed: HashSet<u64> = allowed.into_iter().collect();
                index.search(vector, fetch, cross, &|doc| allowed.contains(&doc))
            }
        };
        let floor = query.min_similarity.unwrap_or(f32::NEG_INFINITY);
        let mut out = Vec::with_capacity(found.len());
        for (doc, similarity) in found {
            if similarity < floor {
                continue;
            }
            if let Some(id) = self.store.id_of_doc(&rtxn, doc)? {
                out.push((id, similarity));
            }
        }
        Ok(out)
    }

    /// The `k` best of `docs` by cosine similarity to `vector`, computed from the embeddings in
    /// the store, as (doc, similarity), best first.
    fn exact_search(
        &self,
        rtxn: &heed::RoTxn,
        kind: EmbeddingKind,
        vector: &[f32],
        docs: &[u64],
        k: usize,
    ) -> Result<Vec<(u64, f32)>> {
        let mut q = vector.to_vec();
        crate::embed::normalize(&mut q);
        let mut scored = Vec::with_capacity(docs.len());
        for &doc in docs {
            let Some(id) = self.store.id_of_doc(rtxn, doc)? else {
                continue;
            };
            if let Some(mut v) = self.store.embedding(rtxn, &id, kind)?
                && v.len() == q.len()
            {
                crate::embed::normalize(&mut v);
                scored.push((doc, crate::vector::dot(&q, &v)));
            }
        }
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored.truncate(k);
        Ok(scored)
    }

    /// Counts and sizes.
    pub fn stats(&self) -> Result<Stats> {
        self.refresh()?;
        let rtxn = self.store.read()?;
        let pairs = self.store.all_pairs(&rtxn)?;
        let entities: HashSet<String> = pairs
            .iter()
            .filter_map(|p| p.entity.as_ref().map(|e| e.to_lowercase()))
            .collect();
        let (map_size, disk_size) = self.store.sizes();
        Ok(Stats {
            path: self.dir.clone(),
            pairs: pairs.len() as u64,
            entities: entities.len() as u64,
            last_seq: self.store.last_seq(&rtxn)?,
            schema_version: self.store.schema_version(&rtxn)?,
            embedder: self.store.embedder_id(&rtxn)?,
            map_size,
            disk_size,
            text_index_docs: self.indices.text.all_ids()?.len(),
            image_index: self.indices.image.counts(),
            text_vector_index: self.indices.text_vectors.counts(),
        })
    }

    /// Verifies that the indices hold exactly what the store holds.
    pub fn check(&self) -> Result<CheckReport> {
        // Let queued writes land first, so the check sees one state.
        match &self.writer {
            Some(writer) => writer.with_sink(|_, _| ())?,
            None => self.refresh()?,
        }
        let rtxn = self.store.read()?;
        let last_seq = self.store.last_seq(&rtxn)?;
        let pairs = self.store.all_pairs(&rtxn)?;
        let mut report = CheckReport {
            pairs: pairs.len() as u64,
            problems: Vec::new(),
        };
        let store_ids: Vec<ImageId> = pairs.iter().map(|p| p.id).collect();
        for pair in &pairs {
            if self.store.id_of_doc(&rtxn, pair.doc)? != Some(pair.id) {
                report.problems.push(format!(
                    "pair {} has doc {} but the docs table disagrees",
                    pair.id.short(),
                    pair.doc
                ));
            }
            if self.store.image_bytes(&rtxn, &pair.id)?.is_none() {
                report
                    .problems
                    .push(format!("pair {} has no image bytes", pair.id.short()));
            }
        }
        let text_ids = self.indices.text.all_ids()?;
        if text_ids != store_ids {
            let missing = store_ids
                .iter()
                .filter(|id| text_ids.binary_search(id).is_err())
                .count();
            let extra = text_ids
                .iter()
                .filter(|id| store_ids.binary_search(id).is_err())
                .count();
            report.problems.push(format!(
                "text index holds {} documents for {} pairs ({missing} missing, {extra} extra or duplicated)",
                text_ids.len(),
                store_ids.len()
            ));
        }
        let text_seq = self.indices.text.applied_seq()?;
        if text_seq != last_seq {
            report.problems.push(format!(
                "text index is at sequence {text_seq}, store at {last_seq}"
            ));
        }
        for (name, index, kind) in [
            ("image", &self.indices.image, EmbeddingKind::Image),
            (
                "text-vector",
                &self.indices.text_vectors,
                EmbeddingKind::Text,
            ),
        ] {
            let mut expected = Vec::new();
            for pair in &pairs {
                if self.store.embedding(&rtxn, &pair.id, kind)?.is_some() {
                    expected.push(pair.doc);
                }
            }
            expected.sort_unstable();
            let live = index.live_docs();
            if live != expected {
                report.problems.push(format!(
                    "{name} index has {} live points, store has {} embeddings",
                    live.len(),
                    expected.len()
                ));
            }
            let seq = index.counts().seq;
            if seq != last_seq {
                report.problems.push(format!(
                    "{name} index is at sequence {seq}, store at {last_seq}"
                ));
            }
        }
        Ok(report)
    }

    /// Rebuilds every index from the store.
    pub fn rebuild_indices(&self) -> Result<()> {
        self.writer()?.with_sink({
            let indices = self.indices.clone();
            move |store, _| indices.rebuild(store)
        })?
    }

    /// Saves the vector indices now (they are also saved on drop and every few thousand changes).
    pub fn flush(&self) -> Result<()> {
        self.writer()?.with_sink({
            let indices = self.indices.clone();
            move |store, _| indices.dump(store, false)
        })?
    }

    /// Writes a compacted copy of the store and the KB's `kb.toml` into `dest`, which must not
    /// exist or be empty. The copy opens as a KB; its indices are rebuilt on first open.
    pub fn backup(&self, dest: &Path) -> Result<()> {
        if dest.exists() && fs::read_dir(dest).map_err(io_err(dest))?.next().is_some() {
            return Err(Error::Config {
                path: dest.to_path_buf(),
                reason: "backup destination exists and is not empty".into(),
            });
        }
        self.store.backup_to(&dest.join("store"))?;
        let src = self.dir.join(CONFIG_FILE);
        fs::copy(&src, dest.join(CONFIG_FILE)).map_err(io_err(&src))?;
        Ok(())
    }
}

fn pair_of(r: PairRecord, paths: Vec<String>) -> Pair {
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

/// The path record of a file: its absolute path (UTF-8 only), size and mtime.
pub(crate) fn path_record(path: &Path, id: ImageId) -> Result<PathRecord, IngestError> {
    let read_err = |source| IngestError::Read {
        path: path.to_path_buf(),
        source,
    };
    let absolute = std::path::absolute(path).map_err(read_err)?;
    let text = absolute.to_str().ok_or_else(|| IngestError::NonUtf8Name {
        path: path.to_path_buf(),
    })?;
    let meta = fs::metadata(path).map_err(read_err)?;
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok(PathRecord {
        path: text.to_string(),
        id,
        size: meta.len(),
        mtime_ns,
    })
}

fn absolute_utf8(path: &Path) -> Result<String> {
    let text = std::path::absolute(path).map_err(io_err(path))?;
    Ok(text
        .to_str()
        .ok_or_else(|| IngestError::NonUtf8Name {
            path: path.to_path_buf(),
        })?
        .to_string())
}

fn absolute_lossy(path: &Path) -> Result<String> {
    Ok(std::path::absolute(path)
        .map_err(io_err(path))?
        .to_string_lossy()
        .into_owned())
}

fn quarantine_record(path: &Path, reason: &str) -> Result<QuarantineRecord> {
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
fn collect_images(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let kind = entry.file_type().map_err(io_err(entry.path()))?;
        let path = entry.path();
        if kind.is_dir() {
            collect_images(&path, out)?;
        } else if kind.is_file() && ingest::is_image_path(&path) {
            out.push(path);
        }
    }
    Ok(())
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

/// The KB's configured CLIP model (`embedder_model` in kb.toml), loaded lazily, and why the
/// stored vectors are stale, if they are: a model changed under a KB leaves it searchable by
/// BM25, while CLIP search waits for `reembed`, so two models' vectors are never ranked together.
fn configured_embedder(
    folder: &Path,
    stored: Option<String>,
    pair_count: u64,
) -> Result<(Arc<dyn Embedder>, Option<String>)> {
    let embedder =
        ClipEmbedder::lazy(folder, WeightPrecision::F32).map_err(|source| ModelError::Clip {
            model: folder.display().to_string(),
            source,
        })?;
    let stale = match stored {
        Some(s) if s != embedder.id() => Some(s),
        // Pairs added before any embedder have no vectors at all.
        None if pair_count > 0 => Some("no embedder".to_string()),
        _ => None,
    };
    Ok((Arc::new(embedder), stale))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records::ChangeKind;

    fn png(seed: u8) -> Vec<u8> {
        let img = image::RgbImage::from_fn(5, 4, |x, y| image::Rgb([seed, x as u8, y as u8]));
        let mut out = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn check_reports_an_index_that_disagrees_with_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let kb = KnowledgeBase::create(dir.path()).unwrap();
        for seed in 0..5 {
            kb.add(NewPair::bytes("p.png", png(seed), format!("pair {seed}")))
                .unwrap();
        }
        assert!(kb.check().unwrap().is_consistent());
        // Drop one pair's document behind the store's back.
        let victim = kb.list().unwrap()[2].id;
        {
            let mut writer = kb.indices.text.writer_for_tests();
            writer.delete_term(kb.indices.text.id_term(&victim));
            writer.commit().unwrap();
        }
        kb.indices.text.reload_for_tests();
        let report = kb.check().unwrap();
        assert!(!report.is_consistent());
        assert!(report.problems[0].contains("1 missing"), "{report:?}");
        kb.rebuild_indices().unwrap();
        assert!(kb.check().unwrap().is_consistent());
    }

    #[test]
    fn the_change_log_records_every_change_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let kb = KnowledgeBase::create(dir.path()).unwrap();
        let id = kb.add(NewPair::bytes("p.png", png(1), "one")).unwrap().id();
        kb.update(
            &id,
            PairText {
                caption: "two".into(),
                ..PairText::default()
            },
        )
        .unwrap();
        kb.remove(&id).unwrap();
        let rtxn = kb.store.read().unwrap();
        let log = kb.store.changes_after(&rtxn, 0).unwrap();
        let kinds: Vec<ChangeKind> = log.iter().map(|c| c.kind).collect();
        assert_eq!(
            kinds,
            [ChangeKind::Add, ChangeKind::Update, ChangeKind::Remove]
        );
        assert_eq!(log.iter().map(|c| c.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(log[1].old_doc, Some(log[0].doc));
    }
}
