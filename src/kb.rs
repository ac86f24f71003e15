//! [`KnowledgeBase`]: the one entry point that ties store, indices, ingest and search together.
//!
//! A KB directory holds `store/` (LMDB, the truth), `text-index/` and `vector-index/` (derived,
//! rebuilt when damaged) and `kb.toml`. Opening for writing takes an exclusive lock file, so one
//! process writes a KB at a time; any number read it beside that one (invariant 10 of
//! ARCHITECTURE.md). This file is the facade: config, locking, open order, and the public
//! methods, each a thin call into the module that does the work.
//!
//! Not here: retrieval (`search/retrieve.rs`), preparing pairs and path records
//! (`ingest/prepare.rs`), the store and its writer (`store/`), the indices (`text/`, `vector/`).

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::embed::clip::WeightPrecision;
use crate::embed::{ClipEmbedder, Embedder};
use crate::error::{Error, ModelError, Result, StoreError, io_err};
use crate::ingest::{
    self, CaptionRules, DecodeLimits, PairText, Preparation, absolute_lossy, absolute_utf8,
    collect_images, path_record, quarantine_record,
};
pub use crate::ingest::{ImageSource, NewPair};
use crate::search::{Hit, Query, Retrievers, SearchMode};
use crate::store::Store;
use crate::store::records::{EmbeddingKind, ImageId, PathRecord, QuarantineRecord};
use crate::store::writer::{WriteOp, WriteOutcome, Writer};
use crate::text::{TextIndex, TextLanguage};
use crate::vector::{GraphEngine, HnswParams, VectorIndex};

mod indices;
mod types;

use indices::{Indices, Sink};
use types::pair_of;
pub use types::{
    AddOutcome, CheckReport, EntitySummary, ImportReport, Pair, PathOp, PathOpOutcome, Progress,
    ReembedReport, Stats,
};

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
    /// The HNSW implementation of the two graphs: `own` (the default, left out of the file) or
    /// `hnsw_rs`. Changing it rebuilds the graphs on the next open for writing.
    #[serde(default, skip_serializing_if = "GraphEngine::is_own")]
    pub graph: GraphEngine,
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
    graph: Option<GraphEngine>,
    progress: Option<ProgressFn>,
}

impl Builder {
    /// Sets the language of the BM25 analyzers: written to `kb.toml` when it differs from the
    /// one there (the text index is then rebuilt). By default the one in `kb.toml`.
    pub fn language(mut self, language: TextLanguage) -> Builder {
        self.language = Some(language);
        self
    }

    /// Sets the graph engine: written to `kb.toml` when it differs from the one there (the
    /// graphs are then rebuilt). By default the one in `kb.toml`, and [`GraphEngine::Own`] for
    /// a new KB.
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// use reimagen::{GraphEngine, KnowledgeBase};
    /// let kb = KnowledgeBase::builder(dir.path()).create(true).graph(GraphEngine::HnswRs).open()?;
    /// assert_eq!(kb.config().graph, GraphEngine::HnswRs);
    /// # Ok(()) }
    /// ```
    pub fn graph(mut self, engine: GraphEngine) -> Builder {
        self.graph = Some(engine);
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
            let mut changed = false;
            if let Some(language) = self.language
                && language != config.language
            {
                config.language = language;
                changed = true;
            }
            if let Some(graph) = self.graph
                && graph != config.graph
            {
                config.graph = graph;
                changed = true;
            }
            if changed {
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
                graph: self.graph.unwrap_or_default(),
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
            image: VectorIndex::open(
                &vectors,
                EmbeddingKind::Image,
                self.hnsw,
                config.graph,
                &store,
            )?,
            text_vectors: VectorIndex::open(
                &vectors,
                EmbeddingKind::Text,
                self.hnsw,
                config.graph,
                &store,
            )?,
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
            image: VectorIndex::open_deferred(
                &vectors,
                EmbeddingKind::Image,
                self.hnsw,
                config.graph,
            ),
            text_vectors: VectorIndex::open_deferred(
                &vectors,
                EmbeddingKind::Text,
                self.hnsw,
                config.graph,
            ),
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
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// use reimagen::{KnowledgeBase, TextLanguage};
    /// let kb = KnowledgeBase::builder(dir.path().join("kb"))
    ///     .create(true)
    ///     .language(TextLanguage::English)
    ///     .open()?;
    /// assert!(!kb.is_read_only());
    /// # Ok(()) }
    /// ```
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
            graph: None,
            progress: None,
        }
    }

    /// Opens an existing KB with the default options.
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// use reimagen::KnowledgeBase;
    /// let path = dir.path().join("kb");
    /// drop(KnowledgeBase::create(&path)?);
    /// let kb = KnowledgeBase::open(&path)?;
    /// assert_eq!(kb.stats()?.pairs, 0);
    /// # Ok(()) }
    /// ```
    pub fn open(dir: impl Into<PathBuf>) -> Result<KnowledgeBase> {
        Self::builder(dir).open()
    }

    /// Opens an existing KB for reading only, beside a daemon or another process that writes
    /// it; see [`Builder::open_read_only`].
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let png = |seed: u8| { let mut out = Vec::new(); image::RgbImage::from_pixel(2, 2, image::Rgb([seed, 0, 0])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap(); out };
    /// use reimagen::{KnowledgeBase, NewPair, Query};
    /// let path = dir.path().join("kb");
    /// // Here the writer is gone; a daemon in another process could as well still be running.
    /// let writer = KnowledgeBase::create(&path)?;
    /// writer.add(NewPair::bytes("a.png", png(28), "a corgi on the beach"))?;
    /// drop(writer);
    /// let kb = KnowledgeBase::open_read_only(&path)?;
    /// assert_eq!(kb.search(&Query::text("corgi").k(5))?.len(), 1);
    /// assert!(kb.add(NewPair::bytes("b.png", png(29), "refused")).is_err());
    /// # Ok(()) }
    /// ```
    pub fn open_read_only(dir: impl Into<PathBuf>) -> Result<KnowledgeBase> {
        Self::builder(dir).open_read_only()
    }

    /// Whether another process holds the KB in `dir` open for writing (its `kb.lock`).
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// use reimagen::KnowledgeBase;
    /// let path = dir.path().join("kb");
    /// let kb = KnowledgeBase::create(&path)?;
    /// assert!(KnowledgeBase::is_locked(&path)?);
    /// drop(kb);
    /// assert!(!KnowledgeBase::is_locked(&path)?);
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let kb = reimagen::KnowledgeBase::create(dir.path().join("kb"))?;
    /// assert!(kb.path().join("kb.toml").exists());
    /// # Ok(()) }
    /// ```
    pub fn create(dir: impl Into<PathBuf>) -> Result<KnowledgeBase> {
        Self::builder(dir).create(true).open()
    }

    /// The KB directory.
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let kb = reimagen::KnowledgeBase::create(dir.path().join("kb"))?;
    /// # let png = |seed: u8| { let mut out = Vec::new(); image::RgbImage::from_pixel(2, 2, image::Rgb([seed, 0, 0])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap(); out };
    /// assert_eq!(kb.path(), dir.path().join("kb"));
    /// # Ok(()) }
    /// ```
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The KB's `kb.toml`.
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let kb = reimagen::KnowledgeBase::create(dir.path().join("kb"))?;
    /// # let png = |seed: u8| { let mut out = Vec::new(); image::RgbImage::from_pixel(2, 2, image::Rgb([seed, 0, 0])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap(); out };
    /// assert_eq!(kb.config().embedder_model, None);
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let kb = reimagen::KnowledgeBase::create(dir.path().join("kb"))?;
    /// # let png = |seed: u8| { let mut out = Vec::new(); image::RgbImage::from_pixel(2, 2, image::Rgb([seed, 0, 0])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap(); out };
    /// assert!(!kb.is_read_only());
    /// # Ok(()) }
    /// ```
    pub fn is_read_only(&self) -> bool {
        self.writer.is_none()
    }

    /// Whether the BM25 index lags the store: its writer was killed between the store's commit
    /// and the index's. A read-only KB searches what the index holds; the next open for writing
    /// replays the rest.
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let kb = reimagen::KnowledgeBase::create(dir.path().join("kb"))?;
    /// # let png = |seed: u8| { let mut out = Vec::new(); image::RgbImage::from_pixel(2, 2, image::Rgb([seed, 0, 0])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap(); out };
    /// assert!(!kb.is_behind()?);
    /// # Ok(()) }
    /// ```
    pub fn is_behind(&self) -> Result<bool> {
        let rtxn = self.store.read()?;
        let last_seq = self.store.last_seq(&rtxn)?;
        drop(rtxn);
        Ok(self.indices.text.applied_seq()? < last_seq)
    }

    /// Brings a read-only KB's indices up to what the writer has committed: the writer's last
    /// BM25 commit, and the change log replayed into both graphs (mapped on first use). A
    /// no-op where this process writes (its indexer thread keeps them current).
    fn refresh(&self) -> Result<()> {
        self.refresh_for(true)?;
        if self.writer.is_none() {
            self.indices.text_vectors.catch_up(&self.store)?;
        }
        Ok(())
    }

    /// [`KnowledgeBase::refresh`] of the BM25 index, and of the image graph (the one searches
    /// walk) only when `image`.
    fn refresh_for(&self, image: bool) -> Result<()> {
        if self.writer.is_some() {
            return Ok(());
        }
        self.indices.text.refresh()?;
        if image {
            self.indices.image.catch_up(&self.store)?;
        }
        Ok(())
    }

    /// Adds one pair. A caption is cleaned (whitespace collapsed) and checked; the image is
    /// decoded under the limits; a duplicate image returns the existing id.
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let kb = reimagen::KnowledgeBase::create(dir.path().join("kb"))?;
    /// # let png = |seed: u8| { let mut out = Vec::new(); image::RgbImage::from_pixel(2, 2, image::Rgb([seed, 0, 0])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap(); out };
    /// use reimagen::{AddOutcome, NewPair};
    /// let added = kb.add(NewPair::bytes("red.png", png(255), "a red square").tag("square"))?;
    /// assert!(matches!(added, AddOutcome::Added(_)));
    /// // The same image again is a duplicate of the first.
    /// assert_eq!(kb.add(NewPair::bytes("copy.png", png(255), "again"))?, AddOutcome::Duplicate(added.id()));
    /// # Ok(()) }
    /// ```
    pub fn add(&self, pair: NewPair) -> Result<AddOutcome> {
        self.add_many(vec![pair])
            .pop()
            .expect("one result per pair")
    }

    /// Adds many pairs: decoding, hashing and embedding run in parallel, and the writes share
    /// transactions. Results come back in input order; a bad pair does not stop the others.
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let kb = reimagen::KnowledgeBase::create(dir.path().join("kb"))?;
    /// # let png = |seed: u8| { let mut out = Vec::new(); image::RgbImage::from_pixel(2, 2, image::Rgb([seed, 0, 0])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap(); out };
    /// use reimagen::NewPair;
    /// let results = kb.add_many(vec![
    ///     NewPair::bytes("a.png", png(1), "first"),
    ///     NewPair::bytes("b.png", png(2), "   "), // an empty caption is refused
    /// ]);
    /// assert!(results[0].is_ok());
    /// assert!(results[1].is_err());
    /// # Ok(()) }
    /// ```
    pub fn add_many(&self, pairs: Vec<NewPair>) -> Vec<Result<AddOutcome>> {
        let prepared = self.preparation().prepare_many(pairs);
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

    /// Imports every image under `dir` (recursively, not following links) with the caption
    /// rules: a sidecar `NAME.txt`, else the file stem; the parent folder is the entity.
    /// `progress` is called after each batch.
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let kb = reimagen::KnowledgeBase::create(dir.path().join("kb"))?;
    /// # let png = |seed: u8| { let mut out = Vec::new(); image::RgbImage::from_pixel(2, 2, image::Rgb([seed, 0, 0])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap(); out };
    /// let photos = dir.path().join("photos");
    /// std::fs::create_dir_all(photos.join("corgi")).unwrap();
    /// std::fs::write(photos.join("corgi/on_the_beach.png"), png(3)).unwrap();
    /// let report = kb.import_dir(&photos, &|_progress| {})?;
    /// assert_eq!(report.added, 1);
    /// let pair = &kb.list()?[0];
    /// assert_eq!((pair.caption.as_str(), pair.entity.as_deref()), ("on the beach", Some("corgi")));
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let kb = reimagen::KnowledgeBase::create(dir.path().join("kb"))?;
    /// # let png = |seed: u8| { let mut out = Vec::new(); image::RgbImage::from_pixel(2, 2, image::Rgb([seed, 0, 0])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap(); out };
    /// let id = kb.add(reimagen::NewPair::bytes("a.png", png(4), "a pair"))?.id();
    /// assert_eq!(kb.resolve(&id.to_hex()[..8])?, id);
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let kb = reimagen::KnowledgeBase::create(dir.path().join("kb"))?;
    /// # let png = |seed: u8| { let mut out = Vec::new(); image::RgbImage::from_pixel(2, 2, image::Rgb([seed, 0, 0])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap(); out };
    /// let id = kb.add(reimagen::NewPair::bytes("a.png", png(5), "a pair").entity("squares"))?.id();
    /// let pair = kb.get(&id)?.expect("just added");
    /// assert_eq!(pair.entity.as_deref(), Some("squares"));
    /// # Ok(()) }
    /// ```
    pub fn get(&self, id: &ImageId) -> Result<Option<Pair>> {
        let rtxn = self.store.read()?;
        let Some(record) = self.store.pair(&rtxn, id)? else {
            return Ok(None);
        };
        let paths = self.store.paths_of(&rtxn, id)?;
        Ok(Some(pair_of(record, paths)))
    }

    /// The image bytes of a pair, as they were added.
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let kb = reimagen::KnowledgeBase::create(dir.path().join("kb"))?;
    /// # let png = |seed: u8| { let mut out = Vec::new(); image::RgbImage::from_pixel(2, 2, image::Rgb([seed, 0, 0])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap(); out };
    /// let id = kb.add(reimagen::NewPair::bytes("a.png", png(6), "a pair"))?.id();
    /// assert_eq!(kb.image_bytes(&id)?, Some(png(6)));
    /// # Ok(()) }
    /// ```
    pub fn image_bytes(&self, id: &ImageId) -> Result<Option<Vec<u8>>> {
        let rtxn = self.store.read()?;
        Ok(self.store.image_bytes(&rtxn, id)?)
    }

    /// The PNG thumbnail of a pair (at most 128 pixels a side).
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let kb = reimagen::KnowledgeBase::create(dir.path().join("kb"))?;
    /// # let png = |seed: u8| { let mut out = Vec::new(); image::RgbImage::from_pixel(2, 2, image::Rgb([seed, 0, 0])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap(); out };
    /// let id = kb.add(reimagen::NewPair::bytes("a.png", png(7), "a pair"))?.id();
    /// let thumbnail = kb.thumbnail(&id)?.expect("every pair has one");
    /// assert!(thumbnail.starts_with(b"\x89PNG"));
    /// # Ok(()) }
    /// ```
    pub fn thumbnail(&self, id: &ImageId) -> Result<Option<Vec<u8>>> {
        let rtxn = self.store.read()?;
        Ok(self.store.thumbnail(&rtxn, id)?)
    }

    /// Records that a file was refused (it is retried only when its size or mtime change).
    /// Size and mtime are those of the path itself: a symbolic link is not followed.
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let kb = reimagen::KnowledgeBase::create(dir.path().join("kb"))?;
    /// # let png = |seed: u8| { let mut out = Vec::new(); image::RgbImage::from_pixel(2, 2, image::Rgb([seed, 0, 0])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap(); out };
    /// let bad = dir.path().join("bad.png");
    /// std::fs::write(&bad, b"not an image").unwrap();
    /// kb.quarantine(&bad, "not an image")?;
    /// assert_eq!(kb.quarantined()?[0].reason, "not an image");
    /// # Ok(()) }
    /// ```
    pub fn quarantine(&self, path: &Path, reason: &str) -> Result<()> {
        let record = quarantine_record(path, reason)?;
        self.writer()?.submit(WriteOp::Quarantine { record })?;
        Ok(())
    }

    /// Lifts the quarantine of a file.
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let kb = reimagen::KnowledgeBase::create(dir.path().join("kb"))?;
    /// # let png = |seed: u8| { let mut out = Vec::new(); image::RgbImage::from_pixel(2, 2, image::Rgb([seed, 0, 0])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap(); out };
    /// let bad = dir.path().join("bad.png");
    /// std::fs::write(&bad, b"not an image").unwrap();
    /// kb.quarantine(&bad, "not an image")?;
    /// kb.unquarantine(&bad)?;
    /// assert!(kb.quarantined()?.is_empty());
    /// # Ok(()) }
    /// ```
    pub fn unquarantine(&self, path: &Path) -> Result<()> {
        let path = absolute_lossy(path)?;
        self.writer()?.submit(WriteOp::Unquarantine { path })?;
        Ok(())
    }

    /// Every quarantined file with its reason.
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let kb = reimagen::KnowledgeBase::create(dir.path().join("kb"))?;
    /// # let png = |seed: u8| { let mut out = Vec::new(); image::RgbImage::from_pixel(2, 2, image::Rgb([seed, 0, 0])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap(); out };
    /// assert!(kb.quarantined()?.is_empty());
    /// # Ok(()) }
    /// ```
    pub fn quarantined(&self) -> Result<Vec<QuarantineRecord>> {
        let rtxn = self.store.read()?;
        Ok(self.store.quarantined(&rtxn)?)
    }

    /// What the store knows of a file: the pair it holds, with size and mtime at ingest.
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let kb = reimagen::KnowledgeBase::create(dir.path().join("kb"))?;
    /// # let png = |seed: u8| { let mut out = Vec::new(); image::RgbImage::from_pixel(2, 2, image::Rgb([seed, 0, 0])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap(); out };
    /// let file = dir.path().join("a.png");
    /// std::fs::write(&file, png(8)).unwrap();
    /// let id = kb.add(reimagen::NewPair::file(&file, "a pair"))?.id();
    /// assert_eq!(kb.path_info(&file)?.map(|r| r.id), Some(id));
    /// # Ok(()) }
    /// ```
    pub fn path_info(&self, path: &Path) -> Result<Option<PathRecord>> {
        let text = std::path::absolute(path).map_err(io_err(path))?;
        let Some(text) = text.to_str() else {
            return Ok(None);
        };
        let rtxn = self.store.read()?;
        Ok(self.store.path_record(&rtxn, text)?)
    }

    /// Every file path the store knows, with the pair each holds.
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let kb = reimagen::KnowledgeBase::create(dir.path().join("kb"))?;
    /// # let png = |seed: u8| { let mut out = Vec::new(); image::RgbImage::from_pixel(2, 2, image::Rgb([seed, 0, 0])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap(); out };
    /// let file = dir.path().join("a.png");
    /// std::fs::write(&file, png(9)).unwrap();
    /// kb.add(reimagen::NewPair::file(&file, "a pair"))?;
    /// assert!(kb.paths()?[0].path.ends_with("a.png"));
    /// # Ok(()) }
    /// ```
    pub fn paths(&self) -> Result<Vec<PathRecord>> {
        let rtxn = self.store.read()?;
        Ok(self.store.all_paths(&rtxn)?)
    }

    /// Every pair, in id order.
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let kb = reimagen::KnowledgeBase::create(dir.path().join("kb"))?;
    /// # let png = |seed: u8| { let mut out = Vec::new(); image::RgbImage::from_pixel(2, 2, image::Rgb([seed, 0, 0])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap(); out };
    /// kb.add(reimagen::NewPair::bytes("a.png", png(10), "one"))?;
    /// kb.add(reimagen::NewPair::bytes("b.png", png(11), "two"))?;
    /// assert_eq!(kb.list()?.len(), 2);
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let kb = reimagen::KnowledgeBase::create(dir.path().join("kb"))?;
    /// # let png = |seed: u8| { let mut out = Vec::new(); image::RgbImage::from_pixel(2, 2, image::Rgb([seed, 0, 0])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap(); out };
    /// use reimagen::NewPair;
    /// kb.add(NewPair::bytes("a.png", png(12), "one").entity("Corgi"))?;
    /// kb.add(NewPair::bytes("b.png", png(13), "two").entity("Corgi"))?;
    /// kb.add(NewPair::bytes("c.png", png(14), "three").entity("corgi"))?;
    /// let entities = kb.entities()?;
    /// assert_eq!((entities[0].name.as_str(), entities[0].pairs), ("Corgi", 3));
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let kb = reimagen::KnowledgeBase::create(dir.path().join("kb"))?;
    /// # let png = |seed: u8| { let mut out = Vec::new(); image::RgbImage::from_pixel(2, 2, image::Rgb([seed, 0, 0])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap(); out };
    /// // A KB without an embedder stores no embeddings.
    /// let id = kb.add(reimagen::NewPair::bytes("a.png", png(15), "a pair"))?.id();
    /// assert!(kb.embeddings_of(&id)?.is_empty());
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let kb = reimagen::KnowledgeBase::create(dir.path().join("kb"))?;
    /// # let png = |seed: u8| { let mut out = Vec::new(); image::RgbImage::from_pixel(2, 2, image::Rgb([seed, 0, 0])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap(); out };
    /// let id = kb.add(reimagen::NewPair::bytes("a.png", png(16), "a pair"))?.id();
    /// assert!(kb.remove(&id)?);
    /// assert!(!kb.remove(&id)?);
    /// # Ok(()) }
    /// ```
    pub fn remove(&self, id: &ImageId) -> Result<bool> {
        match self.writer()?.submit(WriteOp::Remove { id: *id })? {
            WriteOutcome::Removed { .. } => Ok(true),
            _ => Ok(false),
        }
    }

    /// Replaces a pair's caption, entity and tags; false when there is no such pair.
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let kb = reimagen::KnowledgeBase::create(dir.path().join("kb"))?;
    /// # let png = |seed: u8| { let mut out = Vec::new(); image::RgbImage::from_pixel(2, 2, image::Rgb([seed, 0, 0])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap(); out };
    /// use reimagen::PairText;
    /// let id = kb.add(reimagen::NewPair::bytes("a.png", png(17), "a pair"))?.id();
    /// let text = PairText { caption: "  a  red pair ".into(), ..PairText::default() };
    /// assert!(kb.update(&id, text)?);
    /// assert_eq!(kb.get(&id)?.unwrap().caption, "a red pair");
    /// # Ok(()) }
    /// ```
    pub fn update(&self, id: &ImageId, text: PairText) -> Result<bool> {
        let op = self.update_op(id, text)?;
        Ok(matches!(
            self.writer()?.submit(op)?,
            WriteOutcome::Updated { .. }
        ))
    }

    /// The write of an update: the text normalised as `add` does, the caption embedded anew.
    fn update_op(&self, id: &ImageId, text: PairText) -> Result<WriteOp> {
        let PairText {
            caption,
            entity,
            tags,
        } = text.normalised(&self.captions, &PathBuf::from(id.to_hex()))?;
        let text_embedding = match &self.embedder {
            Some(e) => Some(e.embed_text(&caption)?),
            None => None,
        };
        Ok(WriteOp::Update {
            id: *id,
            caption,
            entity,
            tags,
            text_embedding,
            image_embedding: None,
        })
    }

    /// Applies many path, caption and quarantine changes at once: they share write transactions
    /// (one commit for a whole folder moved, not one per file). Results come back in input order;
    /// a bad op does not stop the others.
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let kb = reimagen::KnowledgeBase::create(dir.path().join("kb"))?;
    /// # let png = |seed: u8| { let mut out = Vec::new(); image::RgbImage::from_pixel(2, 2, image::Rgb([seed, 0, 0])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap(); out };
    /// use reimagen::{PathOp, PathOpOutcome};
    /// let (a, b) = (dir.path().join("a.png"), dir.path().join("b.png"));
    /// std::fs::write(&a, png(18)).unwrap();
    /// let id = kb.add(reimagen::NewPair::file(&a, "a pair"))?.id();
    /// std::fs::rename(&a, &b).unwrap();
    /// let outcomes = kb.apply_path_ops(vec![
    ///     PathOp::Set { path: b.clone(), id, seen: None },
    ///     PathOp::Remove { path: a.clone(), remove_orphan: true },
    /// ]);
    /// assert!(matches!(outcomes[0], Ok(PathOpOutcome::Applied)));
    /// // `a.png` is forgotten; its pair stays, held by `b.png`.
    /// assert!(matches!(outcomes[1], Ok(PathOpOutcome::Unchanged)));
    /// assert_eq!(kb.get(&id)?.unwrap().paths.len(), 1);
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let kb = reimagen::KnowledgeBase::create(dir.path().join("kb"))?;
    /// # let png = |seed: u8| { let mut out = Vec::new(); image::RgbImage::from_pixel(2, 2, image::Rgb([seed, 0, 0])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap(); out };
    /// assert_eq!(*kb.decode_limits(), reimagen::DecodeLimits::default());
    /// # Ok(()) }
    /// ```
    pub fn decode_limits(&self) -> &DecodeLimits {
        &self.limits
    }

    /// The caption rules this KB applies.
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let kb = reimagen::KnowledgeBase::create(dir.path().join("kb"))?;
    /// # let png = |seed: u8| { let mut out = Vec::new(); image::RgbImage::from_pixel(2, 2, image::Rgb([seed, 0, 0])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap(); out };
    /// assert_eq!(kb.caption_rules().max_chars, 2000);
    /// # Ok(()) }
    /// ```
    pub fn caption_rules(&self) -> &CaptionRules {
        &self.captions
    }

    /// Records that the file at `path` holds the pair `id` (a second copy, or a file renamed
    /// without its content changing): the pair itself is untouched.
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let kb = reimagen::KnowledgeBase::create(dir.path().join("kb"))?;
    /// # let png = |seed: u8| { let mut out = Vec::new(); image::RgbImage::from_pixel(2, 2, image::Rgb([seed, 0, 0])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap(); out };
    /// let (a, copy) = (dir.path().join("a.png"), dir.path().join("copy.png"));
    /// std::fs::write(&a, png(19)).unwrap();
    /// std::fs::write(&copy, png(19)).unwrap();
    /// let id = kb.add(reimagen::NewPair::file(&a, "a pair"))?.id();
    /// kb.set_path(&copy, &id)?;
    /// assert_eq!(kb.get(&id)?.unwrap().paths.len(), 2);
    /// # Ok(()) }
    /// ```
    pub fn set_path(&self, path: &Path, id: &ImageId) -> Result<()> {
        let record = path_record(path, *id)?;
        self.writer()?.submit(WriteOp::SetPath(record))?;
        Ok(())
    }

    /// Forgets the file at `path`. With `remove_orphan`, a pair that no other known file holds is
    /// removed too; its id is returned.
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let kb = reimagen::KnowledgeBase::create(dir.path().join("kb"))?;
    /// # let png = |seed: u8| { let mut out = Vec::new(); image::RgbImage::from_pixel(2, 2, image::Rgb([seed, 0, 0])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap(); out };
    /// let file = dir.path().join("a.png");
    /// std::fs::write(&file, png(20)).unwrap();
    /// let id = kb.add(reimagen::NewPair::file(&file, "a pair"))?.id();
    /// // The last file of a pair gone, the pair goes with it.
    /// assert_eq!(kb.remove_path(&file, true)?, Some(id));
    /// assert!(kb.get(&id)?.is_none());
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let kb = reimagen::KnowledgeBase::create(dir.path().join("kb"))?;
    /// # let png = |seed: u8| { let mut out = Vec::new(); image::RgbImage::from_pixel(2, 2, image::Rgb([seed, 0, 0])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap(); out };
    /// use reimagen::{NewPair, Query};
    /// let id = kb.add(NewPair::bytes("a.png", png(21), "a corgi on the beach"))?.id();
    /// kb.add(NewPair::bytes("b.png", png(22), "a lighthouse at night"))?;
    /// let hits = kb.search(&Query::text("corgi").k(5))?;
    /// assert_eq!(hits.len(), 1);
    /// assert_eq!(hits[0].id, id);
    /// # Ok(()) }
    /// ```
    pub fn search(&self, query: &Query) -> Result<Vec<Hit>> {
        if query.k == 0 {
            return Ok(Vec::new());
        }
        self.refresh_for(query.mode != SearchMode::Bm25)?;
        let embedder = |mode: SearchMode| self.embedder_for(mode).cloned();
        Retrievers {
            store: &self.store,
            text: &self.indices.text,
            image: &self.indices.image,
            limits: &self.limits,
            embedder: &embedder,
        }
        .search(query)
    }

    /// The BM25 index and the image graph themselves, for `bench kb`'s bare index timings.
    pub(crate) fn bare_indices(&self) -> (&crate::text::TextIndex, &VectorIndex) {
        (&self.indices.text, &self.indices.image)
    }

    /// What preparing pairs for the writer needs of this KB.
    fn preparation(&self) -> Preparation<'_> {
        Preparation {
            rules: &self.captions,
            limits: &self.limits,
            embedder: self.embedder.as_deref(),
        }
    }

    /// The embedder a query of `mode` uses; refused while the stored vectors come from another
    /// model (invariant 14 of ARCHITECTURE.md: one model's vectors at a time).
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
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let kb = reimagen::KnowledgeBase::create(dir.path().join("kb"))?;
    /// # let png = |seed: u8| { let mut out = Vec::new(); image::RgbImage::from_pixel(2, 2, image::Rgb([seed, 0, 0])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap(); out };
    /// assert_eq!(kb.stale_embeddings(), None);
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let kb = reimagen::KnowledgeBase::create(dir.path().join("kb"))?;
    /// # let png = |seed: u8| { let mut out = Vec::new(); image::RgbImage::from_pixel(2, 2, image::Rgb([seed, 0, 0])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap(); out };
    /// // Re-embedding needs an embedder (`Builder::embedder` or `embedder_model` in kb.toml).
    /// assert!(kb.reembed(&|_progress| {}).is_err());
    /// # Ok(()) }
    /// ```
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

    /// Counts and sizes.
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let kb = reimagen::KnowledgeBase::create(dir.path().join("kb"))?;
    /// # let png = |seed: u8| { let mut out = Vec::new(); image::RgbImage::from_pixel(2, 2, image::Rgb([seed, 0, 0])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap(); out };
    /// kb.add(reimagen::NewPair::bytes("a.png", png(23), "a pair").entity("squares"))?;
    /// let stats = kb.stats()?;
    /// assert_eq!((stats.pairs, stats.entities), (1, 1));
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> Result<Stats> {
        // The graphs' counts come from their dumps' manifests when those are current.
        self.refresh_for(false)?;
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
            image_index: self.indices.image.counts_from_dump(&self.store)?,
            text_vector_index: self.indices.text_vectors.counts_from_dump(&self.store)?,
        })
    }

    /// Verifies that the indices hold exactly what the store holds (invariant 1 of
    /// ARCHITECTURE.md: the store is the truth, the indices are compared to it).
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let kb = reimagen::KnowledgeBase::create(dir.path().join("kb"))?;
    /// # let png = |seed: u8| { let mut out = Vec::new(); image::RgbImage::from_pixel(2, 2, image::Rgb([seed, 0, 0])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap(); out };
    /// kb.add(reimagen::NewPair::bytes("a.png", png(24), "a pair"))?;
    /// let report = kb.check()?;
    /// assert!(report.is_consistent(), "{:?}", report.problems);
    /// # Ok(()) }
    /// ```
    pub fn check(&self) -> Result<CheckReport> {
        // Let queued writes land first, so the check sees one state.
        match &self.writer {
            Some(writer) => writer.with_sink(|_, _| ())?,
            None => self.refresh()?,
        }
        self.indices.check(&self.store)
    }

    /// Rebuilds every index from the store.
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let kb = reimagen::KnowledgeBase::create(dir.path().join("kb"))?;
    /// # let png = |seed: u8| { let mut out = Vec::new(); image::RgbImage::from_pixel(2, 2, image::Rgb([seed, 0, 0])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap(); out };
    /// kb.add(reimagen::NewPair::bytes("a.png", png(25), "a pair"))?;
    /// kb.rebuild_indices()?;
    /// assert_eq!(kb.search(&reimagen::Query::text("pair"))?.len(), 1);
    /// # Ok(()) }
    /// ```
    pub fn rebuild_indices(&self) -> Result<()> {
        self.writer()?.with_sink({
            let indices = self.indices.clone();
            move |store, _| indices.rebuild(store)
        })?
    }

    /// Saves the vector indices now (they are also saved on drop and every few thousand changes).
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let kb = reimagen::KnowledgeBase::create(dir.path().join("kb"))?;
    /// # let png = |seed: u8| { let mut out = Vec::new(); image::RgbImage::from_pixel(2, 2, image::Rgb([seed, 0, 0])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap(); out };
    /// kb.add(reimagen::NewPair::bytes("a.png", png(26), "a pair"))?;
    /// kb.flush()?;
    /// # Ok(()) }
    /// ```
    pub fn flush(&self) -> Result<()> {
        self.writer()?.with_sink({
            let indices = self.indices.clone();
            move |store, _| indices.dump(store, false)
        })?
    }

    /// Writes a compacted copy of the store and the KB's `kb.toml` into `dest`, which must not
    /// exist or be empty. The copy opens as a KB; its indices are rebuilt on first open.
    ///
    /// ```
    /// # fn main() -> reimagen::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let kb = reimagen::KnowledgeBase::create(dir.path().join("kb"))?;
    /// # let png = |seed: u8| { let mut out = Vec::new(); image::RgbImage::from_pixel(2, 2, image::Rgb([seed, 0, 0])).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap(); out };
    /// kb.add(reimagen::NewPair::bytes("a.png", png(27), "a pair"))?;
    /// let copy = dir.path().join("copy");
    /// kb.backup(&copy)?;
    /// assert_eq!(reimagen::KnowledgeBase::open(&copy)?.stats()?.pairs, 1);
    /// # Ok(()) }
    /// ```
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
