//! HNSW indices (hnsw_rs) over image and text embeddings. Derived from the store (invariant 2).
//!
//! hnsw_rs has no delete, so a removed or updated pair's old point stays in the graph and its doc
//! number goes into a tombstone set that every search filters out; when tombstones pass a fifth
//! of the points, the graph is rebuilt from the store at the next dump. A dump goes to a fresh
//! directory, is fsynced and checksummed, and only then is the manifest that names it replaced
//! (atomically). On open the checksums are verified before hnsw_rs reads a byte (it exits the
//! process on a truncated file), and the change log is replayed from the manifest's sequence.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use hnsw_rs::api::AnnT;
use hnsw_rs::hnswio::HnswIo;
use hnsw_rs::prelude::{Distance, Hnsw};
use serde::{Deserialize, Serialize};

use crate::error::IndexError;
use crate::store::Store;
use crate::store::records::{Change, ChangeKind, EmbeddingKind};

/// `1 − a·b` for unit vectors, clamped at zero (rounding can push a dot product past one).
#[derive(Clone, Copy, Debug, Default)]
pub struct UnitDot;

impl Distance<f32> for UnitDot {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - dot(a, b)).max(0.0)
    }
}

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

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
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

const MAX_LAYERS: usize = 16;
/// Changes after which the writer dumps the graph even without a close.
pub const DUMP_EVERY: usize = 20_000;

type Graph = Hnsw<'static, f32, UnitDot>;

#[derive(Serialize, Deserialize)]
struct Manifest {
    format: u32,
    seq: u64,
    dir: String,
    dim: usize,
    embedder: Option<String>,
    /// The hnsw_rs dump's basename inside `dir` (absent when the graph is empty).
    basename: Option<String>,
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
        let index = VectorIndex {
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
        };
        let rtxn = store.read()?;
        let (last_seq, embedder) = (store.last_seq(&rtxn)?, store.embedder_id(&rtxn)?);
        drop(rtxn);
        match index.load(last_seq, embedder.as_deref()) {
            Ok(()) => {
                index.catch_up(store)?;
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
        Ok(index)
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
        for (file, expected) in &manifest.files {
            let bytes = fs::read(dir.join(file)).map_err(|e| format!("{file}: {e}"))?;
            if blake3::hash(&bytes).to_hex().as_str() != expected {
                return Err(format!("{file}: checksum mismatch"));
            }
        }
        let points: Points = {
            let bytes = fs::read(dir.join("points.bin")).map_err(|e| format!("points.bin: {e}"))?;
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard())
                .map_err(|e| format!("points.bin: {e}"))?
                .0
        };
        let graph = if points.indexed.is_empty() {
            None
        } else {
            // hnsw_rs ties the loaded graph's lifetime to its loader; the loader is small (paths and
            // options), so it is leaked once per load to give the graph a 'static lifetime.
            let basename = manifest
                .basename
                .as_deref()
                .ok_or("manifest names no graph")?;
            let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(&dir, basename)));
            let graph: Graph = io
                .load_hnsw::<f32, UnitDot>()
                .map_err(|e| format!("hnsw load: {e}"))?;
            if graph.get_nb_point() != points.indexed.len() {
                return Err(format!(
                    "graph has {} points, manifest {}",
                    graph.get_nb_point(),
                    points.indexed.len()
                ));
            }
            Some(graph)
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

    fn new_graph(&self, expected: usize) -> Graph {
        let mut graph = Hnsw::new(
            self.params.max_connections,
            expected.max(1024),
            MAX_LAYERS,
            self.params.ef_construction,
            UnitDot,
        );
        graph.set_extend_candidates(false);
        graph
    }

    /// Replays the change log from the last applied sequence.
    pub fn catch_up(&self, store: &Store) -> Result<usize, crate::Error> {
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
        let graph = match &mut state.graph {
            Some(g) => g,
            slot @ None => slot.insert(self.new_graph(inserts.len())),
        };
        if inserts.len() >= 64 {
            let refs: Vec<(&[f32], usize)> = inserts
                .iter()
                .map(|(v, d)| (v.as_slice(), *d as usize))
                .collect();
            graph.parallel_insert_slice(&refs);
        } else {
            for (v, d) in &inserts {
                graph.insert_slice((v, *d as usize));
            }
        }
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
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let dir_name = format!("{}-{}", self.name(), state.seq);
        let dir = self.root.join(&dir_name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| self.err(&dir, e))?;
        let basename = match &state.graph {
            Some(graph) => Some(
                graph
                    .file_dump(&dir, "graph")
                    .map_err(|e| self.err(&dir, e))?,
            ),
            None => None,
        };
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
        write_synced(&dir.join("points.bin"), &points).map_err(|e| self.err(&dir, e))?;
        let mut files = BTreeMap::new();
        for entry in fs::read_dir(&dir).map_err(|e| self.err(&dir, e))? {
            let path = entry.map_err(|e| self.err(&dir, e))?.path();
            let bytes = fs::read(&path).map_err(|e| self.err(&path, e))?;
            fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| self.err(&path, e))?;
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            files.insert(name, blake3::hash(&bytes).to_hex().to_string());
        }
        let manifest = Manifest {
            format: 1,
            seq: state.seq,
            dir: dir_name.clone(),
            dim: state.dim,
            embedder,
            basename,
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
        state.changes_since_dump = 0;
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
        if query.len() != state.dim || k == 0 {
            return Vec::new();
        }
        let mut q = query.to_vec();
        crate::embed::normalize(&mut q);
        let base = if cross_modal {
            self.params.ef_search_cross
        } else {
            self.params.ef_search
        };
        let tombstones = &state.tombstones;
        let keep = |d: usize| !tombstones.contains(&(d as u64)) && accept(d as u64);
        // hnsw_rs gives up its early exit when handed a filter (it then walks most of the graph),
        // so search unfiltered, over-fetching, and filter afterwards; only a very selective filter
        // falls back to the filtered walk.
        let points = graph.get_nb_point();
        let mut want = k;
        loop {
            let found = graph.search(&q, want, base.max(want));
            let kept: Vec<(u64, f32)> = found
                .iter()
                .filter(|n| keep(n.d_id))
                .take(k)
                .map(|n| (n.d_id as u64, 1.0 - n.distance))
                .collect();
            if kept.len() == k || found.len() < want || want >= points {
                return kept;
            }
            if want >= 16 * k.max(64) {
                let filter = |d: &usize| keep(*d);
                let found = graph.search_filter(&q, k, base.max(k), Some(&filter));
                return found
                    .into_iter()
                    .map(|n| (n.d_id as u64, 1.0 - n.distance))
                    .collect();
            }
            want = (want * 4).min(points);
        }
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
        }
    }
}
