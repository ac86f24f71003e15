//! HNSW indices over image and text embeddings. Derived from the store (invariant 1 of ARCHITECTURE.md).
//!
//! The graph ([`hnsw::Graph`]) is kept in flat arrays. It has no delete: a removed or updated
//! pair's old point stays in the graph (it still helps the walk) and its doc number goes into a
//! tombstone set that every search filters out during the walk; when tombstones pass a fifth of
//! the points, the graph is rebuilt from the store at the next dump. A dump goes to a fresh
//! directory, is fsynced and checksummed, and only then is the manifest that names it replaced
//! (atomically). On open the checksums are verified and the graph file is checked link by link
//! (invariant 6 of ARCHITECTURE.md)
//! before it is used, and the change log is replayed from the manifest's sequence.

mod hnsw;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

pub use hnsw::Graph;

use crate::error::IndexError;
use crate::store::Store;
use crate::store::records::{Change, ChangeKind, EmbeddingKind};

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
}

#[derive(Serialize, Deserialize, Default)]
struct Points {
    indexed: Vec<u64>,
    tombstones: Vec<u64>,
}

struct State {
    graph: Option<Graph>,
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
        store: &Store,
    ) -> Result<VectorIndex, crate::Error> {
        let index = Self::open_deferred(root, kind, params);
        index.load_or_rebuild(store)?;
        *index.deferred.lock().unwrap_or_else(|e| e.into_inner()) = false;
        Ok(index)
    }

    /// The index of `kind` under `root`, loaded by the first [`VectorIndex::catch_up`] rather
    /// than now: a read-only KB opens its graphs only for the queries that walk them. Until
    /// then it is empty.
    pub fn open_deferred(root: &Path, kind: EmbeddingKind, params: HnswParams) -> VectorIndex {
        VectorIndex {
            kind,
            root: root.to_path_buf(),
            params,
            state: RwLock::new(State {
                graph: None,
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
        match index.load(last_seq, embedder.as_deref()) {
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

    fn load(&self, store_seq: u64, embedder: Option<&str>) -> Result<(), String> {
        let raw = fs::read(self.manifest_path()).map_err(|e| format!("manifest: {e}"))?;
        let manifest: Manifest =
            serde_json::from_slice(&raw).map_err(|e| format!("manifest: {e}"))?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(format!(
                "manifest format {} (this build reads {MANIFEST_FORMAT})",
                manifest.format
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
        let mut contents = BTreeMap::new();
        for (file, expected) in &manifest.files {
            let bytes = fs::read(dir.join(file)).map_err(|e| format!("{file}: {e}"))?;
            if blake3::hash(&bytes).to_hex().as_str() != expected {
                return Err(format!("{file}: checksum mismatch"));
            }
            contents.insert(file.as_str(), bytes);
        }
        let points: Points = {
            let bytes = contents.get("points.bin").ok_or("points.bin is missing")?;
            bincode::serde::decode_from_slice(bytes, bincode::config::standard())
                .map_err(|e| format!("points.bin: {e}"))?
                .0
        };
        let graph = match contents.get(GRAPH_FILE) {
            None if points.indexed.is_empty() => None,
            None => return Err(format!("{GRAPH_FILE} is missing")),
            Some(bytes) => {
                let graph = Graph::read(bytes).map_err(|e| e.to_string())?;
                if graph.len() != points.indexed.len() || graph.dim() != manifest.dim {
                    return Err(format!(
                        "graph has {} points of {} dimensions, manifest {} of {}",
                        graph.len(),
                        graph.dim(),
                        points.indexed.len(),
                        manifest.dim
                    ));
                }
                Some(graph)
            }
        };
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        *state = State {
            graph,
            dim: manifest.dim,
            seq: manifest.seq,
            indexed: points.indexed.into_iter().collect(),
            tombstones: points.tombstones.into_iter().collect(),
            changes_since_dump: 0,
        };
        Ok(())
    }

    /// Replays the change log from the last applied sequence (loading a deferred index first).
    pub fn catch_up(&self, store: &Store) -> Result<usize, crate::Error> {
        {
            // Held while loading: concurrent first users wait for the one load.
            let mut deferred = self.deferred.lock().unwrap_or_else(|e| e.into_inner());
            if *deferred {
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
        let dim = state.dim;
        let graph = state.graph.get_or_insert_with(|| {
            Graph::new(
                dim,
                self.params.max_connections,
                self.params.ef_construction,
            )
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
        let dir_name = format!("{}-{}", self.name(), state.seq);
        let dir = self.root.join(&dir_name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| self.err(&dir, e))?;
        let mut files = BTreeMap::new();
        if let Some(graph) = &state.graph {
            let cut_off = graph.repair();
            if cut_off > 0 {
                tracing::debug!(cut_off, index = self.name(), "relinked cut-off graph nodes");
            }
            let path = dir.join(GRAPH_FILE);
            let hash =
                write_hashed(&path, |out| graph.write(out)).map_err(|e| self.err(&path, e))?;
            files.insert(GRAPH_FILE.to_string(), hash);
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
    /// (doc, cosine similarity), best first. `cross_modal` picks the wider search width.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        cross_modal: bool,
        accept: &dyn Fn(u64) -> bool,
    ) -> Vec<(u64, f32)> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let Some(graph) = &state.graph else {
            return Vec::new();
        };
        let mut q = query.to_vec();
        crate::embed::normalize(&mut q);
        let base = if cross_modal {
            self.params.ef_search_cross
        } else {
            self.params.ef_search
        };
        let tombstones = &state.tombstones;
        let keep = |d: u64| !tombstones.contains(&d) && accept(d);
        graph.search(&q, k, base, &keep)
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
