//! HNSW indices over image and text embeddings. Derived from the store (invariant 1 of ARCHITECTURE.md).
//!
//! The graph ([`hnsw::Graph`]) is kept in flat arrays. It has no delete: a removed or updated
//! pair's old point stays in the graph (it still helps the walk) and its doc number goes into a
//! tombstone set that every search filters out during the walk; when tombstones pass a fifth of
//! the points, the graph is rebuilt from the store at the next dump. A dump goes to a fresh
//! directory, is fsynced and checksummed, and only then is the manifest that names it replaced
//! (atomically); the manifest also carries the point and tombstone counts, so `stats` reads no
//! graph. The writer's open verifies the checksums and checks the graph file link by link
//! (invariant 6 of ARCHITECTURE.md) before it loads it, then replays the change log from the
//! manifest's sequence.
//!
//! A read-only index (another process writes) maps the dump's graph file instead
//! ([`graph_file::MappedGraph`]): opening it costs the header, a search touches the pages its
//! walk reads and checks each link list it meets, and `check` verifies the whole file. The
//! changes it replays after the dump go to a short list searched exactly beside the walk; once
//! that list is long, the next catch-up maps the writer's newer dump.
//!
//! The graphs are the project's own by default; `graph = "hnsw_rs"` in `kb.toml` puts hnsw_rs
//! behind the same contract ([`GraphEngine`]; its dumps are checked against their checksums
//! before hnsw_rs reads them, and readers load them whole).
//!
//! Not here: the graph itself (`hnsw.rs`), its file format (`graph_file.rs`), the hnsw_rs
//! wrapper (`hnsw_rs_graph.rs`).

mod graph_file;
mod hnsw;
mod hnsw_rs_graph;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

pub use graph_file::MappedGraph;
pub use hnsw::Graph;

use crate::error::IndexError;
use crate::store::Store;
use crate::store::records::{Change, ChangeKind, EmbeddingKind};
use hnsw_rs_graph::HnswRsGraph;

/// Dot product. On x86-64 with AVX2 and FMA (checked once, at run time) it runs 16 lanes of
/// fused multiply-adds; elsewhere eight independent accumulators let the compiler vectorise.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { dot_avx2(a, b) };
    }
    dot_portable(a, b)
}

/// The dot product without SIMD intrinsics, for f32 or f16 `b`.
fn dot_portable<T: Copy + Into<f32>>(a: &[f32], b: &[T]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * (*y).into())
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i].into();
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::{
        _mm256_add_ps, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_setzero_ps, _mm256_storeu_ps,
    };
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    // SAFETY: every load reads 8 floats starting at i, and i + 8 <= n on each of them.
    unsafe {
        while i + 16 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
                acc1,
            );
            i += 16;
        }
        if i + 8 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            i += 8;
        }
    }
    let mut lanes = [0.0f32; 8];
    // SAFETY: `lanes` holds 8 floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(acc0, acc1)) };
    lanes.iter().sum::<f32>()
        + a[i..n]
            .iter()
            .zip(&b[i..n])
            .map(|(x, y)| x * y)
            .sum::<f32>()
}

/// Dot product of an f32 vector with an f16 one (the graph keeps its vectors in f16: half the
/// memory traffic of a walk that is bound by it). AVX2 + F16C when the CPU has them.
pub fn dot_f16(a: &[f32], b: &[half::f16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
    {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { dot_f16_avx2(a, b) };
    }
    dot_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16_avx2(a: &[f32], b: &[half::f16]) -> f32 {
    use std::arch::x86_64::{
        __m128i, _mm_loadu_si128, _mm256_add_ps, _mm256_cvtph_ps, _mm256_fmadd_ps, _mm256_loadu_ps,
        _mm256_setzero_ps, _mm256_storeu_ps,
    };
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: every load reads 8 items starting at i, and i + 8 <= n on each of them; an
    // unaligned 128-bit load holds 8 f16s.
    unsafe {
        let half8 = |at: usize| _mm256_cvtph_ps(_mm_loadu_si128(pb.add(at) as *const __m128i));
        while i + 32 <= n {
            for (j, acc) in acc.iter_mut().enumerate() {
                let at = i + 8 * j;
                *acc = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(at)), half8(at), *acc);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), half8(i), acc[0]);
            i += 8;
        }
    }
    let mut lanes = [0.0f32; 8];
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    // SAFETY: `lanes` holds 8 floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
    lanes.iter().sum::<f32>()
        + a[i..n]
            .iter()
            .zip(&b[i..n])
            .map(|(x, y)| x * y.to_f32())
            .sum::<f32>()
}

/// Which HNSW implementation a KB's graphs use: `graph` in `kb.toml`.
///
/// By default the project's own ([`GraphEngine::Own`]); hnsw_rs stays selectable, and is the
/// in-run baseline of `reimagen bench kb --graph own,hnsw_rs` (ARCHITECTURE.md, decision 7).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GraphEngine {
    /// The flat-array graph (`src/vector/hnsw.rs`): f16 walk, exact re-rank, mapped by readers.
    #[default]
    #[serde(rename = "own")]
    Own,
    /// hnsw_rs 0.3: its dumps checked against their checksums before it loads them; a reader
    /// loads the whole graph.
    #[serde(rename = "hnsw_rs")]
    HnswRs,
}

impl GraphEngine {
    /// The name `kb.toml` and the command line use.
    pub fn name(self) -> &'static str {
        match self {
            GraphEngine::Own => "own",
            GraphEngine::HnswRs => "hnsw_rs",
        }
    }

    /// Whether this is the default engine (left out of `kb.toml`).
    pub fn is_own(&self) -> bool {
        *self == GraphEngine::Own
    }
}

impl std::fmt::Display for GraphEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for GraphEngine {
    type Err = String;

    /// `own` or `hnsw_rs`.
    ///
    /// ```
    /// assert_eq!("hnsw_rs".parse(), Ok(reimagen::GraphEngine::HnswRs));
    /// assert!("faiss".parse::<reimagen::GraphEngine>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "own" => Ok(GraphEngine::Own),
            "hnsw_rs" => Ok(GraphEngine::HnswRs),
            other => Err(format!("unknown graph engine `{other}` (own, hnsw_rs)")),
        }
    }
}

/// A graph held in memory: the writer's, or a reader's that could not map its dump.
// One per index: the size of the value does not matter, and a box would be one more hop per call.
#[allow(clippy::large_enum_variant)]
enum Resident {
    Own(Graph),
    HnswRs(HnswRsGraph),
}

impl Resident {
    fn insert(&mut self, points: &[(&[f32], u64)]) {
        match self {
            Resident::Own(g) => g.insert(points),
            Resident::HnswRs(g) => g.insert(points),
        }
    }

    fn search(
        &self,
        q: &[f32],
        k: usize,
        ef: usize,
        keep: &dyn Fn(u64) -> bool,
    ) -> Vec<(u64, f32)> {
        match self {
            Resident::Own(g) => g.search(q, k, ef, keep),
            Resident::HnswRs(g) => g.search(q, k, ef, keep),
        }
    }
}

/// Graph parameters.
///
/// By default: 16 links per node, `ef_construction` 48, and search widths of 32 for
/// image → image and 48 for text → image queries (text queries land farther from the images
/// they match, so they get a wider search). These keep recall@10 above 0.98 on the clustered
/// benchmark workload (docs/kb.md); raise them for data whose neighbourhoods are less clear-cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HnswParams {
    /// Links per node and layer.
    pub max_connections: usize,
    /// Candidate list size while building.
    pub ef_construction: usize,
    /// Candidate list size for queries of the same modality.
    pub ef_search: usize,
    /// Candidate list size for cross-modal (text → image) queries.
    pub ef_search_cross: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            max_connections: 16,
            ef_construction: 48,
            ef_search: 32,
            ef_search_cross: 48,
        }
    }
}

/// Changes after which the writer dumps the graph even without a close.
pub const DUMP_EVERY: usize = 20_000;
/// Points a read-only index holds beside its mapped dump before it maps a newer one.
const REMAP_AFTER: usize = 2_000;
/// The manifest format this code writes; any other means a rebuild.
const MANIFEST_FORMAT: u32 = 2;
const GRAPH_FILE: &str = "graph.bin";

#[derive(Serialize, Deserialize)]
struct Manifest {
    format: u32,
    seq: u64,
    dir: String,
    dim: usize,
    embedder: Option<String>,
    /// blake3 of every file in `dir`.
    files: BTreeMap<String, String>,
    /// Points in the dump, live or not (absent in manifests written before 2026-12-02).
    #[serde(default)]
    points: Option<usize>,
    /// Tombstoned points in the dump (absent in manifests written before 2026-12-02).
    #[serde(default)]
    tombstones: Option<usize>,
    /// The engine that wrote the graph files (`own` in manifests written before 2026-12-02).
    #[serde(default)]
    engine: GraphEngine,
}

#[derive(Serialize, Deserialize, Default)]
struct Points {
    indexed: Vec<u64>,
    tombstones: Vec<u64>,
}

struct State {
    /// The writer's graph (or a reader's: hnsw_rs, or rebuilt from the store when no dump was
    /// usable).
    graph: Option<Resident>,
    /// A reader's graph: the last dump, walked in place, with its file's blake3 for `check`.
    mapped: Option<(MappedGraph, String)>,
    /// Points a reader replayed after its mapped dump, scored exactly at each search.
    recent: Vec<(u64, Vec<f32>)>,
    dim: usize,
    seq: u64,
    indexed: HashSet<u64>,
    tombstones: HashSet<u64>,
    changes_since_dump: usize,
}

/// One HNSW index over one kind of embedding.
pub struct VectorIndex {
    kind: EmbeddingKind,
    root: PathBuf,
    params: HnswParams,
    engine: GraphEngine,
    /// Map the dump's graph rather than read it whole (a read-only index).
    map_dumps: bool,
    state: RwLock<State>,
    /// True until the dump is loaded, for an index opened with [`VectorIndex::open_deferred`]:
    /// the first [`VectorIndex::catch_up`] loads it (a BM25 query never does).
    deferred: std::sync::Mutex<bool>,
}

/// Counts for `stats` and `check`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VectorCounts {
    /// Points in the graph, live or not.
    pub points: usize,
    /// Points of removed or updated pairs.
    pub tombstones: usize,
    /// Last change-log sequence applied.
    pub seq: u64,
}

impl VectorIndex {
    /// Opens the index of `kind` under `root` (`vector-index/`), verifying and loading the last
    /// dump and replaying the change log; anything wrong with the dump means a rebuild.
    pub fn open(
        root: &Path,
        kind: EmbeddingKind,
        params: HnswParams,
        engine: GraphEngine,
        store: &Store,
    ) -> Result<VectorIndex, crate::Error> {
        let mut index = Self::open_deferred(root, kind, params, engine);
        index.map_dumps = false;
        index.load_or_rebuild(store)?;
        *index.deferred.lock().unwrap_or_else(|e| e.into_inner()) = false;
        Ok(index)
    }

    /// The index of `kind` under `root` for a reader beside another process's writer, loaded
    /// by the first [`VectorIndex::catch_up`] rather than now: a read-only KB opens its graphs
    /// only for the queries that walk them, and then maps the dump's graph file rather than
    /// reading it. Until then it is empty.
    pub fn open_deferred(
        root: &Path,
        kind: EmbeddingKind,
        params: HnswParams,
        engine: GraphEngine,
    ) -> VectorIndex {
        VectorIndex {
            kind,
            root: root.to_path_buf(),
            params,
            engine,
            map_dumps: true,
            state: RwLock::new(State {
                graph: None,
                mapped: None,
                recent: Vec::new(),
                dim: 0,
                seq: 0,
                indexed: HashSet::new(),
                tombstones: HashSet::new(),
                changes_since_dump: 0,
            }),
            deferred: std::sync::Mutex::new(true),
        }
    }

    /// Loads the last dump and replays the change log after it, or rebuilds from the store.
    fn load_or_rebuild(&self, store: &Store) -> Result<(), crate::Error> {
        let index = self;
        let rtxn = store.read()?;
        let (last_seq, embedder) = (store.last_seq(&rtxn)?, store.embedder_id(&rtxn)?);
        drop(rtxn);
        let mut loaded = index.load(last_seq, embedder.as_deref());
        // A reader can read a manifest just before the writer replaces it and removes the dump
        // it names: the next manifest names a complete one.
        for _ in 0..2 {
            if loaded.is_ok() || !index.map_dumps {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            loaded = index.load(last_seq, embedder.as_deref());
        }
        match loaded {
            Ok(()) => {
                index.replay(store)?;
            }
            Err(reason) => {
                if index.manifest_path().exists() {
                    tracing::warn!(
                        "{} vector index is unusable ({reason}); rebuilding it",
                        index.name()
                    );
                }
                index.rebuild(store)?;
            }
        }
        Ok(())
    }

    /// The kind of embedding this index holds.
    pub fn kind(&self) -> EmbeddingKind {
        self.kind
    }

    fn name(&self) -> &'static str {
        match self.kind {
            EmbeddingKind::Image => "image",
            EmbeddingKind::Text => "text",
        }
    }

    fn manifest_path(&self) -> PathBuf {
        self.root.join(format!("{}.manifest.json", self.name()))
    }

    fn err(&self, path: &Path, reason: impl std::fmt::Display) -> IndexError {
        IndexError::Vector {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }

    fn read_manifest(&self) -> Result<Manifest, String> {
        let raw = fs::read(self.manifest_path()).map_err(|e| format!("manifest: {e}"))?;
        let manifest: Manifest =
            serde_json::from_slice(&raw).map_err(|e| format!("manifest: {e}"))?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(format!(
                "manifest format {} (this build reads {MANIFEST_FORMAT})",
                manifest.format
            ));
        }
        Ok(manifest)
    }

    /// Loads the dump the manifest names: its points list (small, always verified), and its
    /// graph mapped (a reader) or read whole and verified (the writer).
    fn load(&self, store_seq: u64, embedder: Option<&str>) -> Result<(), String> {
        let manifest = self.read_manifest()?;
        if manifest.engine != self.engine {
            return Err(format!(
                "dump written by the {} graph engine, kb.toml asks for {}",
                manifest.engine, self.engine
            ));
        }
        if manifest.seq > store_seq {
            return Err("index is ahead of the store (restored backup?)".into());
        }
        if manifest.embedder.as_deref() != embedder && manifest.seq > 0 {
            return Err(format!(
                "index built with embedder {:?}, store has {:?}",
                manifest.embedder, embedder
            ));
        }
        let dir = self.root.join(&manifest.dir);
        let verified = |file: &str| verified_read(&dir, file, &manifest.files);
        let points: Points = bincode::serde::decode_from_slice(
            &verified("points.bin")?,
            bincode::config::standard(),
        )
        .map_err(|e| format!("points.bin: {e}"))?
        .0;
        // A dump of an older format is rewritten by the writer's next dump.
        let mut outdated = manifest.points.is_none();
        let (mut graph, mut mapped) = (None, None);
        let path = dir.join(GRAPH_FILE);
        let (len, dim) = match manifest.files.get(GRAPH_FILE) {
            _ if self.engine == GraphEngine::HnswRs && points.indexed.is_empty() => {
                (0, manifest.dim)
            }
            _ if self.engine == GraphEngine::HnswRs => {
                // hnsw_rs trusts its files (lengths it reads size allocations; a short read
                // ends the process): they must be the bytes this crate saw it write.
                for file in hnsw_rs_graph::FILES {
                    verified(file)?;
                }
                let g = HnswRsGraph::load(&dir, manifest.dim)?;
                let shape = (g.len(), manifest.dim);
                graph = Some(Resident::HnswRs(g));
                shape
            }
            None if points.indexed.is_empty() => (0, manifest.dim),
            None => return Err(format!("{GRAPH_FILE} is missing")),
            Some(hash) => {
                let map = if self.map_dumps {
                    MappedGraph::open(&path).map_err(|e| format!("{}: {e}", path.display()))?
                } else {
                    None
                };
                match map {
                    Some(map) => {
                        let shape = (map.len(), map.dim());
                        mapped = Some((map, hash.clone()));
                        shape
                    }
                    None => {
                        let bytes = verified(GRAPH_FILE)?;
                        outdated |= bytes.starts_with(graph_file::MAGIC_V1);
                        let g =
                            Graph::read(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
                        let shape = (g.len(), g.dim());
                        graph = Some(Resident::Own(g));
                        shape
                    }
                }
            }
        };
        if len != points.indexed.len() || dim != manifest.dim {
            return Err(format!(
                "graph has {len} points of {dim} dimensions, manifest {} of {}",
                points.indexed.len(),
                manifest.dim
            ));
        }
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        *state = State {
            graph,
            mapped,
            recent: Vec::new(),
            dim: manifest.dim,
            seq: manifest.seq,
            indexed: points.indexed.into_iter().collect(),
            tombstones: points.tombstones.into_iter().collect(),
            changes_since_dump: usize::from(outdated && !self.map_dumps),
        };
        Ok(())
    }

    /// Replays the change log from the last applied sequence (loading a deferred index first).
    pub fn catch_up(&self, store: &Store) -> Result<usize, crate::Error> {
        {
            // Held while loading: concurrent first users wait for the one load.
            let mut deferred = self.deferred.lock().unwrap_or_else(|e| e.into_inner());
            let remap = self
                .state
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .recent
                .len()
                >= REMAP_AFTER;
            if *deferred || remap {
                self.load_or_rebuild(store)?;
                *deferred = false;
                return Ok(0);
            }
        }
        self.replay(store)
    }

    fn replay(&self, store: &Store) -> Result<usize, crate::Error> {
        let seq = self.state.read().unwrap_or_else(|e| e.into_inner()).seq;
        let rtxn = store.read()?;
        let changes = store.changes_after(&rtxn, seq)?;
        drop(rtxn);
        if !changes.is_empty() {
            tracing::info!(
                count = changes.len(),
                index = self.name(),
                "replaying change log into the vector index"
            );
            self.apply(store, &changes)?;
        }
        Ok(changes.len())
    }

    /// Applies committed changes: new points for added and updated pairs, tombstones for the old
    /// ones. Idempotent: a doc number already in the graph is never inserted again.
    pub fn apply(&self, store: &Store, changes: &[Change]) -> Result<(), crate::Error> {
        let Some(last) = changes.last() else {
            return Ok(());
        };
        let rtxn = store.read()?;
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let mut inserts: Vec<(Vec<f32>, u64)> = Vec::new();
        for change in changes {
            let dead = match change.kind {
                ChangeKind::Remove => Some(change.doc),
                ChangeKind::Update => change.old_doc,
                ChangeKind::Add => None,
            };
            if let Some(doc) = dead
                && state.indexed.contains(&doc)
            {
                state.tombstones.insert(doc);
            }
            if change.kind == ChangeKind::Remove || state.indexed.contains(&change.doc) {
                continue;
            }
            let current = store.pair(&rtxn, &change.id)?;
            if current.is_none_or(|p| p.doc != change.doc) {
                continue; // a later change replaced it; that change will insert the current doc
            }
            if let Some(mut vector) = store.embedding(&rtxn, &change.id, self.kind)? {
                crate::embed::normalize(&mut vector);
                inserts.push((vector, change.doc));
            }
        }
        drop(rtxn);
        self.insert(&mut state, inserts)?;
        state.seq = last.seq;
        state.changes_since_dump += changes.len();
        Ok(())
    }

    fn insert(&self, state: &mut State, inserts: Vec<(Vec<f32>, u64)>) -> Result<(), IndexError> {
        if inserts.is_empty() {
            return Ok(());
        }
        if state.dim == 0 {
            state.dim = inserts[0].0.len();
        }
        if let Some((v, doc)) = inserts.iter().find(|(v, _)| v.len() != state.dim) {
            return Err(self.err(
                &self.root,
                format!(
                    "doc {doc} has a {}-d embedding, index is {}-d",
                    v.len(),
                    state.dim
                ),
            ));
        }
        if state.mapped.is_some() {
            state.indexed.extend(inserts.iter().map(|(_, d)| *d));
            state
                .recent
                .extend(inserts.into_iter().map(|(v, d)| (d, v)));
            return Ok(());
        }
        let dim = state.dim;
        let capacity = inserts.len();
        let graph = state.graph.get_or_insert_with(|| match self.engine {
            GraphEngine::Own => Resident::Own(Graph::new(
                dim,
                self.params.max_connections,
                self.params.ef_construction,
            )),
            GraphEngine::HnswRs => Resident::HnswRs(HnswRsGraph::new(
                dim,
                self.params.max_connections,
                self.params.ef_construction,
                capacity,
            )),
        });
        let refs: Vec<(&[f32], u64)> = inserts.iter().map(|(v, d)| (v.as_slice(), *d)).collect();
        graph.insert(&refs);
        state.indexed.extend(inserts.iter().map(|(_, d)| *d));
        Ok(())
    }

    /// Builds the graph again from every embedding in the store.
    pub fn rebuild(&self, store: &Store) -> Result<usize, crate::Error> {
        let rtxn = store.read()?;
        let seq = store.last_seq(&rtxn)?;
        let mut inserts = Vec::new();
        for pair in store.all_pairs(&rtxn)? {
            if let Some(mut v) = store.embedding(&rtxn, &pair.id, self.kind)? {
                crate::embed::normalize(&mut v);
                inserts.push((v, pair.doc));
            }
        }
        drop(rtxn);
        let count = inserts.len();
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        *state = State {
            graph: None,
            mapped: None,
            recent: Vec::new(),
            dim: 0,
            seq,
            indexed: HashSet::new(),
            tombstones: HashSet::new(),
            changes_since_dump: usize::MAX / 2,
        };
        self.insert(&mut state, inserts)?;
        Ok(count)
    }

    /// Writes the graph if it changed since the last dump (compacting first when tombstones pass
    /// a fifth of the points). `force` dumps even when nothing changed.
    pub fn dump(&self, store: &Store, force: bool) -> Result<(), crate::Error> {
        // A reader beside another process's writer keeps its graph in memory: the files are the
        // writer's.
        if store.is_read_only() {
            return Ok(());
        }
        {
            let state = self.state.read().unwrap_or_else(|e| e.into_inner());
            if state.changes_since_dump == 0 && !force && self.manifest_path().exists() {
                return Ok(());
            }
            if state.tombstones.len() * 5 > state.indexed.len() && !state.tombstones.is_empty() {
                drop(state);
                self.rebuild(store)?;
            }
        }
        let rtxn = store.read()?;
        let embedder = store.embedder_id(&rtxn)?;
        drop(rtxn);
        // Searches go on while the files are written (a read lock); only the writer thread
        // applies changes, so the graph does not move under the dump.
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let pending = state.changes_since_dump;
        // A new directory each time, never the one the manifest names: a reader may have
        // mapped its graph, and its files are never written again.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir_name = format!("{}-{}-{nanos:x}", self.name(), state.seq);
        let dir = self.root.join(&dir_name);
        fs::create_dir_all(&dir).map_err(|e| self.err(&dir, e))?;
        let mut files = BTreeMap::new();
        match &state.graph {
            Some(Resident::Own(graph)) => {
                let cut_off = graph.repair();
                if cut_off > 0 {
                    tracing::debug!(cut_off, index = self.name(), "relinked cut-off graph nodes");
                }
                let path = dir.join(GRAPH_FILE);
                let hash =
                    write_hashed(&path, |out| graph.write(out)).map_err(|e| self.err(&path, e))?;
                files.insert(GRAPH_FILE.to_string(), hash);
            }
            Some(Resident::HnswRs(graph)) => {
                for file in graph.dump(&dir).map_err(|e| self.err(&dir, e))? {
                    let path = dir.join(file);
                    let file_handle = fs::File::open(&path).map_err(|e| self.err(&path, e))?;
                    file_handle.sync_all().map_err(|e| self.err(&path, e))?;
                    let bytes = fs::read(&path).map_err(|e| self.err(&path, e))?;
                    files.insert(file.to_string(), blake3::hash(&bytes).to_hex().to_string());
                }
            }
            None => {}
        }
        let mut indexed: Vec<u64> = state.indexed.iter().copied().collect();
        let mut tombstones: Vec<u64> = state.tombstones.iter().copied().collect();
        indexed.sort_unstable();
        tombstones.sort_unstable();
        let points = bincode::serde::encode_to_vec(
            Points {
                indexed,
                tombstones,
            },
            bincode::config::standard(),
        )
        .map_err(|e| self.err(&dir, e))?;
        let path = dir.join("points.bin");
        let hash =
            write_hashed(&path, |out| out.write_all(&points)).map_err(|e| self.err(&path, e))?;
        files.insert("points.bin".to_string(), hash);
        sync_dir(&dir);
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            seq: state.seq,
            dir: dir_name.clone(),
            dim: state.dim,
            embedder,
            files,
            points: Some(state.indexed.len()),
            tombstones: Some(state.tombstones.len()),
            engine: self.engine,
        };
        let tmp = self.root.join(format!("{}.manifest.json.tmp", self.name()));
        write_synced(
            &tmp,
            &serde_json::to_vec_pretty(&manifest).expect("manifest serializes"),
        )
        .map_err(|e| self.err(&tmp, e))?;
        fs::rename(&tmp, self.manifest_path()).map_err(|e| self.err(&tmp, e))?;
        sync_dir(&self.root);
        drop(state);
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.changes_since_dump = state.changes_since_dump.saturating_sub(pending);
        drop(state);
        // Older dumps are garbage once the manifest names the new one.
        let prefix = format!("{}-", self.name());
        for entry in fs::read_dir(&self.root).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) && name != dir_name {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        Ok(())
    }

    /// Whether enough changed since the last dump that the writer should dump now.
    pub fn wants_dump(&self) -> bool {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .changes_since_dump
            >= DUMP_EVERY
    }

    /// The `k` nearest live points to `query` (normalised here) that `accept` lets through, as
    /// (doc, cosine similarity), best first. `cross_modal` picks the wider search width. A
    /// mapped graph whose walk meets a damaged link list is an error naming the file.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        cross_modal: bool,
        accept: &dyn Fn(u64) -> bool,
    ) -> Result<Vec<(u64, f32)>, crate::Error> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let mut q = query.to_vec();
        crate::embed::normalize(&mut q);
        let base = if cross_modal {
            self.params.ef_search_cross
        } else {
            self.params.ef_search
        };
        let tombstones = &state.tombstones;
        let keep = |d: u64| !tombstones.contains(&d) && accept(d);
        if let Some((mapped, _)) = &state.mapped {
            let mut found = mapped
                .search(&q, k, base, &keep)
                .map_err(|e| self.err(mapped.path(), e))?;
            if !state.recent.is_empty() && q.len() == state.dim {
                found.extend(
                    state
                        .recent
                        .iter()
                        .filter(|(d, _)| keep(*d))
                        .map(|(d, v)| (*d, dot(&q, v))),
                );
                found.sort_by(|a, b| b.1.total_cmp(&a.1));
                found.truncate(k);
            }
            return Ok(found);
        }
        Ok(match &state.graph {
            Some(graph) => graph.search(&q, k, base, &keep),
            None => Vec::new(),
        })
    }

    /// Live doc numbers (indexed and not tombstoned), sorted.
    pub fn live_docs(&self) -> Vec<u64> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let mut docs: Vec<u64> = state
            .indexed
            .difference(&state.tombstones)
            .copied()
            .collect();
        docs.sort_unstable();
        docs
    }

    /// The counts of [`VectorIndex::counts`] without loading a deferred index when its dump's
    /// manifest is as recent as the store (the usual case once the writer has closed): `stats`
    /// then reads no graph.
    pub fn counts_from_dump(&self, store: &Store) -> Result<VectorCounts, crate::Error> {
        let deferred = *self.deferred.lock().unwrap_or_else(|e| e.into_inner());
        if deferred
            && let Ok(manifest) = self.read_manifest()
            && let (Some(points), Some(tombstones)) = (manifest.points, manifest.tombstones)
        {
            let rtxn = store.read()?;
            if store.last_seq(&rtxn)? == manifest.seq {
                return Ok(VectorCounts {
                    points,
                    tombstones,
                    seq: manifest.seq,
                });
            }
        }
        self.catch_up(store)?;
        Ok(self.counts())
    }

    /// Verifies a mapped graph in full (its checksum, then every link list): what the writer's
    /// open does before it loads a dump. Nothing to do for an index in memory.
    pub fn verify(&self) -> Result<(), IndexError> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let Some((mapped, expected)) = &state.mapped else {
            return Ok(());
        };
        if blake3::hash(mapped.bytes()).to_hex().as_str() != expected {
            return Err(self.err(mapped.path(), "checksum mismatch"));
        }
        mapped.validate().map_err(|e| self.err(mapped.path(), e))
    }

    /// Point, tombstone and sequence counts.
    pub fn counts(&self) -> VectorCounts {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        VectorCounts {
            points: state.indexed.len(),
            tombstones: state.tombstones.len(),
            seq: state.seq,
        }
    }
}

/// Reads `file` of the dump in `dir` and checks it against the blake3 in `files`; the error names
/// the file and says what is wrong with it.
fn verified_read(
    dir: &Path,
    file: &str,
    files: &BTreeMap<String, String>,
) -> Result<Vec<u8>, String> {
    let path = dir.join(file);
    let expected = files
        .get(file)
        .ok_or_else(|| format!("{}: not in the manifest", path.display()))?;
    let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if blake3::hash(&bytes).to_hex().as_str() != expected {
        return Err(format!(
            "{}: checksum mismatch (the file changed after it was written)",
            path.display()
        ));
    }
    Ok(bytes)
}

/// Writes a file through `write`, fsyncs it, and returns the blake3 of what was written.
fn write_hashed(
    path: &Path,
    write: impl FnOnce(&mut HashingWriter) -> std::io::Result<()>,
) -> std::io::Result<String> {
    let mut out = HashingWriter {
        file: std::io::BufWriter::with_capacity(1 << 20, fs::File::create(path)?),
        hasher: blake3::Hasher::new(),
    };
    write(&mut out)?;
    let file = out.file.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(out.hasher.finalize().to_hex().to_string())
}

/// A buffered file writer that hashes what passes through it.
struct HashingWriter {
    file: std::io::BufWriter<fs::File>,
    hasher: blake3::Hasher,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_the_plain_sum_at_awkward_lengths() {
        for n in [0, 1, 7, 8, 9, 15, 16, 17, 31, 512, 515] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let plain: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) as f64 - plain).abs() < 1e-4, "n = {n}");
            assert!(
                (dot_portable(&a, &b) as f64 - plain).abs() < 1e-4,
                "n = {n}"
            );
            // f16 keeps 11 significant bits: the products of these O(1) values stay within
            // 1e-3 of the sum per element.
            let h: Vec<half::f16> = b.iter().map(|x| half::f16::from_f32(*x)).collect();
            let tolerance = 1e-3 * (n as f64).max(1.0);
            assert!(
                (dot_f16(&a, &h) as f64 - plain).abs() < tolerance,
                "n = {n}"
            );
            assert!(
                (dot_portable(&a, &h) - dot_f16(&a, &h)).abs() < 1e-3,
                "n = {n}"
            );
        }
    }
}
