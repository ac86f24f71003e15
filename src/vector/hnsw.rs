//! A hierarchical navigable small-world graph (Malkov & Yashunin, 2018) kept in flat arrays.
//!
//! Node `i` is the `i`-th point inserted: its vector is row `i` of one contiguous `Vec<f32>` (and,
//! for the walk, of a `Vec<f16>`; the final candidates are ranked with the f32 rows), its
//! doc number is `docs[i]`, and its layer-0 links are the `i`-th fixed-size slot of one array of
//! `u32`s (a count, then the neighbours). Nodes above layer 0 (one in `m`) have their upper-layer
//! slots in a second array. A search keeps a reusable visited array of generation marks instead of
//! a hash set, and reads a neighbour's id without touching the neighbour's memory; the graph walk
//! is then bound by the distance computations themselves.
//!
//! Inserts of a batch run in parallel (rayon). Links are `AtomicU32`s: a writer changes a node's
//! list under that node's (striped) lock and publishes the count last, so a concurrent reader sees
//! a list of valid node ids, if perhaps a moment old. Searches and inserts never overlap: the
//! owner (`VectorIndex`) holds the graph behind a read-write lock.

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering as AtomicOrdering};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::graph_file::{Header, Layout, MAGIC, MAGIC_V1, View, read_header};
use super::{dot, dot_f16};

/// Highest layer a node may get (with 16 links per node, layer 8 needs ~4·10⁹ points).
pub(super) const MAX_LEVEL: u8 = 15;
/// Stripes of the link locks.
const LOCKS: usize = 4096;
/// No node: a level-0 node's upper slot.
pub(super) const NONE: u32 = u32::MAX;

/// A distance with a total order (NaN sorts last), paired with a node.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Scored(f32, u32);

impl Eq for Scored {}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

/// Visited marks of one search: `marks[i] == generation` means node `i` was seen.
#[derive(Default)]
struct Visited {
    marks: Vec<u16>,
    generation: u16,
}

impl Visited {
    fn reset(&mut self, nodes: usize) {
        if self.marks.len() < nodes {
            self.marks.resize(nodes, 0);
        }
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.marks.fill(0);
            self.generation = 1;
        }
    }

    /// Marks `node`; true when it was not marked yet.
    fn insert(&mut self, node: u32) -> bool {
        let mark = &mut self.marks[node as usize];
        let fresh = *mark != self.generation;
        *mark = self.generation;
        fresh
    }
}

thread_local! {
    static VISITED: RefCell<Visited> = RefCell::new(Visited::default());
}

/// Why a graph file could not be read, or a walk of a mapped one could not go on.
#[derive(Debug, thiserror::Error)]
#[error("graph file: {0}")]
pub struct FormatError(String);

impl FormatError {
    pub(super) fn new(reason: impl Into<String>) -> FormatError {
        FormatError(reason.into())
    }
}

/// What a walk reads of a graph: the owned one being built ([`Graph`]) or a file's arrays
/// ([`View`], bounds-checked). Node ids come from the entry point and from `links`, so an
/// implementation that checks its links may trust them elsewhere.
pub(super) trait Walk {
    /// Why a walk stopped: never, for the owned graph.
    type Error;
    fn nodes(&self) -> usize;
    fn dim(&self) -> usize;
    /// The walk's distance (f16 rows).
    fn coarse_distance(&self, query: &[f32], node: u32) -> f32;
    /// The distance the final candidates are ranked by (f32 rows).
    fn exact_distance(&self, query: &[f32], node: u32) -> f32;
    fn doc(&self, node: u32) -> u64;
    fn prefetch_node(&self, node: u32);
    /// `node`'s neighbours on `layer`, into `out`.
    fn links(&self, node: u32, layer: u8, out: &mut Vec<u32>) -> Result<(), Self::Error>;
}

/// The graph. Distances are `1 − a·b` over unit vectors.
pub struct Graph {
    dim: usize,
    /// Links per node on layers above 0.
    m: usize,
    /// Links per node on layer 0 (`2m`).
    m0: usize,
    ef_construction: usize,
    /// Row `i` is node `i`'s vector. Searches rank their final candidates with it.
    vectors: Vec<f32>,
    /// The same rows in f16: the walk reads these (half the memory traffic). Their distances are
    /// within ~10⁻⁴ of exact, which decides the order among near-duplicates (photos of one
    /// entity), hence the exact re-rank.
    coarse: Vec<f16>,
    docs: Vec<u64>,
    levels: Vec<u8>,
    /// Per node, `1 + m0` slots: the count, then the neighbours.
    links0: Vec<AtomicU32>,
    /// Per node, how many layer-0 lists link to it (kept so that pruning never cuts a node's
    /// last way in).
    indegree: Vec<AtomicU32>,
    /// Per node, where its layer-1 slot starts in `upper` (`NONE` for level-0 nodes); layer `l`
    /// of the node starts `(l − 1)·(1 + m)` further on.
    upper_at: Vec<u32>,
    upper: Vec<AtomicU32>,
    locks: Box<[Mutex<()>]>,
    /// The entry point and its level; `None` while the graph is empty.
    entry: Mutex<Option<(u32, u8)>>,
    rng: ChaCha8Rng,
}

impl Graph {
    /// An empty graph of `dim`-dimensional points, `m` links per node (`2m` on layer 0), building
    /// with candidate lists of `ef_construction`.
    pub fn new(dim: usize, m: usize, ef_construction: usize) -> Graph {
        let m = m.max(2);
        Graph {
            dim,
            m,
            m0: 2 * m,
            ef_construction: ef_construction.max(1),
            vectors: Vec::new(),
            coarse: Vec::new(),
            docs: Vec::new(),
            levels: Vec::new(),
            links0: Vec::new(),
            indegree: Vec::new(),
            upper_at: Vec::new(),
            upper: Vec::new(),
            locks: (0..LOCKS).map(|_| Mutex::new(())).collect(),
            entry: Mutex::new(None),
            rng: ChaCha8Rng::seed_from_u64(0x5eed),
        }
    }

    /// Points in the graph.
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    /// The dimension of every point.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Node `node`'s vector.
    fn vector(&self, node: u32) -> &[f32] {
        let at = node as usize * self.dim;
        &self.vectors[at..at + self.dim]
    }

    fn coarse(&self, node: u32) -> &[f16] {
        let at = node as usize * self.dim;
        &self.coarse[at..at + self.dim]
    }

    /// Node `node`'s f16 row widened to f32, in `out`. Building reads only the f16 rows (the ones
    /// the walk has just brought into cache); the f32 rows serve the final ranking of a search.
    fn decode<'o>(&self, node: u32, out: &'o mut Vec<f32>) -> &'o [f32] {
        out.resize(self.dim, 0.0);
        self.coarse(node).convert_to_f32_slice(out);
        out
    }

    /// The walk's distance (f16 vectors).
    fn distance(&self, query: &[f32], node: u32) -> f32 {
        1.0 - dot_f16(query, self.coarse(node))
    }

    /// The link slot of `node` on `layer`: the count, then up to `cap` neighbours.
    fn slot(&self, node: u32, layer: u8) -> &[AtomicU32] {
        if layer == 0 {
            let at = node as usize * (1 + self.m0);
            &self.links0[at..at + 1 + self.m0]
        } else {
            let at = self.upper_at[node as usize] as usize + (layer as usize - 1) * (1 + self.m);
            &self.upper[at..at + 1 + self.m]
        }
    }

    fn neighbours(&self, node: u32, layer: u8, out: &mut Vec<u32>) {
        let slot = self.slot(node, layer);
        let count = (slot[0].load(AtomicOrdering::Acquire) as usize).min(slot.len() - 1);
        out.clear();
        out.extend(
            slot[1..1 + count]
                .iter()
                .map(|l| l.load(AtomicOrdering::Relaxed)),
        );
    }

    fn write_links(&self, node: u32, layer: u8, links: &[Scored]) {
        let slot = self.slot(node, layer);
        for (cell, s) in slot[1..].iter().zip(links) {
            cell.store(s.1, AtomicOrdering::Relaxed);
        }
        slot[0].store(links.len() as u32, AtomicOrdering::Release);
    }

    fn lock(&self, node: u32) -> std::sync::MutexGuard<'_, ()> {
        self.locks[node as usize % LOCKS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn random_level(&mut self) -> u8 {
        let mult = 1.0 / (self.m as f64).ln();
        let u: f64 = self.rng.random::<f64>().max(f64::MIN_POSITIVE);
        ((-u.ln() * mult) as u64).min(MAX_LEVEL as u64) as u8
    }

    /// Inserts points (vector, doc number); vectors must be unit length and `dim` long. A batch of
    /// more than a few points is linked in parallel.
    pub fn insert(&mut self, points: &[(&[f32], u64)]) {
        let start = self.len();
        self.vectors.reserve(points.len() * self.dim);
        assert!(
            start + points.len() < NONE as usize,
            "an HNSW graph holds fewer than 2³² points"
        );
        for (v, doc) in points {
            assert_eq!(v.len(), self.dim, "point of the wrong dimension");
            self.vectors.extend_from_slice(v);
            let at = self.coarse.len();
            self.coarse.resize(at + self.dim, f16::ZERO);
            self.coarse[at..].convert_from_f32_slice(v);
            self.docs.push(*doc);
            let level = self.random_level();
            self.levels.push(level);
            self.links0
                .extend((0..1 + self.m0).map(|_| AtomicU32::new(0)));
            self.indegree.push(AtomicU32::new(0));
            if level == 0 {
                self.upper_at.push(NONE);
            } else {
                let at = u32::try_from(self.upper.len()).expect("fewer than 2³² upper links");
                self.upper_at.push(at);
                self.upper
                    .extend((0..level as usize * (1 + self.m)).map(|_| AtomicU32::new(0)));
            }
        }
        let end = self.len() as u32;
        let mut first = start as u32;
        {
            let entry = self.entry.get_mut().unwrap_or_else(|e| e.into_inner());
            if entry.is_none() && first < end {
                *entry = Some((first, self.levels[first as usize]));
                first += 1;
            }
        }
        let this = &*self;
        if end - first < 32 {
            VISITED.with_borrow_mut(|visited| {
                for node in first..end {
                    this.link(node, visited);
                }
            });
        } else {
            (first..end)
                .into_par_iter()
                .for_each(|node| VISITED.with_borrow_mut(|visited| this.link(node, visited)));
        }
    }

    /// Connects `node` (already stored, with no links yet) into the graph.
    fn link(&self, node: u32, visited: &mut Visited) {
        let query = self.vector(node);
        let level = self.levels[node as usize];
        let Some((mut ep, top)) = *self.entry.lock().unwrap_or_else(|e| e.into_inner()) else {
            return;
        };
        let mut ep_dist = self.distance(query, ep);
        let mut scratch = Vec::new();
        for layer in (level + 1..=top).rev() {
            (ep, ep_dist) = self.greedy(query, ep, ep_dist, layer, &mut scratch);
        }
        let mut entry_points = vec![Scored(ep_dist, ep)];
        for layer in (0..=level.min(top)).rev() {
            let mut found = self.search_layer(
                query,
                &entry_points,
                self.ef_construction,
                layer,
                visited,
                &|_| true,
            );
            found.retain(|s| s.1 != node);
            let chosen = self.select(&found, self.m);
            let cap = if layer == 0 { self.m0 } else { self.m };
            // Other inserts may already have linked to `node`: merge, never overwrite.
            self.add_links(node, &chosen, layer, cap);
            for s in &chosen {
                self.add_links(s.1, &[Scored(s.0, node)], layer, cap);
            }
            if !found.is_empty() {
                entry_points = found;
            }
        }
        if level > top {
            let mut entry = self.entry.lock().unwrap_or_else(|e| e.into_inner());
            if entry.is_none_or(|(_, l)| level > l) {
                *entry = Some((node, level));
            }
        }
    }

    /// Adds `new` links to those of `node` on `layer`. A list that would pass `cap` keeps the
    /// links the selection heuristic picks (often well under `cap`, so that the next few adds
    /// are plain appends).
    fn add_links(&self, node: u32, new: &[Scored], layer: u8, cap: usize) {
        let _guard = self.lock(node);
        let slot = self.slot(node, layer);
        let count = (slot[0].load(AtomicOrdering::Acquire) as usize).min(cap);
        let current: Vec<u32> = slot[1..1 + count]
            .iter()
            .map(|l| l.load(AtomicOrdering::Relaxed))
            .collect();
        let fresh: Vec<Scored> = new
            .iter()
            .filter(|s| s.1 != node && !current.contains(&s.1))
            .copied()
            .collect();
        if count + fresh.len() <= cap {
            for (cell, s) in slot[1 + count..].iter().zip(&fresh) {
                cell.store(s.1, AtomicOrdering::Relaxed);
                if layer == 0 {
                    self.indegree[s.1 as usize].fetch_add(1, AtomicOrdering::Relaxed);
                }
            }
            slot[0].store((count + fresh.len()) as u32, AtomicOrdering::Release);
            return;
        }
        let mut buf = Vec::new();
        let base = self.decode(node, &mut buf);
        let mut candidates: Vec<Scored> = current
            .iter()
            .map(|&l| Scored(self.distance(base, l), l))
            .chain(fresh)
            .collect();
        candidates.sort_unstable();
        let mut kept = self.select(&candidates, cap);
        if layer == 0 {
            self.keep_last_ways_in(&candidates, &mut kept, &current);
        }
        self.write_links(node, layer, &kept);
    }

    /// Layer-0 pruning must not cut a node's only way in: a dropped candidate that no other list
    /// links to takes the place of the farthest kept one that other lists do link to. Then the
    /// in-degrees are brought up to date for the new list (`current` is the old one).
    fn keep_last_ways_in(&self, candidates: &[Scored], kept: &mut [Scored], current: &[u32]) {
        let indegree = |n: u32| self.indegree[n as usize].load(AtomicOrdering::Relaxed);
        // A node's in-degree counts this list too when it is on it now.
        let others = |n: u32| indegree(n).saturating_sub(current.contains(&n) as u32);
        for c in candidates {
            if kept.contains(c) || others(c.1) > 0 {
                continue;
            }
            let spare = kept.iter().rposition(|k| others(k.1) > 0);
            match spare {
                Some(i) => kept[i] = *c,
                None => break,
            }
        }
        for &n in current {
            if !kept.iter().any(|k| k.1 == n) {
                self.indegree[n as usize].fetch_sub(1, AtomicOrdering::Relaxed);
            }
        }
        for k in kept.iter() {
            if !current.contains(&k.1) {
                self.indegree[k.1 as usize].fetch_add(1, AtomicOrdering::Relaxed);
            }
        }
    }

    /// Makes every node reachable on layer 0 from the entry point, and returns how many nodes
    /// were cut off. HNSW promises no connectivity: pruning can leave a node (or a small group)
    /// with no way in, most of all when parallel inserts prune the same lists at once. Each
    /// cut-off node is linked from the nearest reachable node (found by a search that accepts
    /// only reachable nodes), and what it reaches is then reachable too. Costs one pass over the
    /// links when nothing is cut off.
    pub fn repair(&self) -> usize {
        let Some((entry, _)) = *self.entry.lock().unwrap_or_else(|e| e.into_inner()) else {
            return 0;
        };
        let mut reachable = vec![false; self.len()];
        let mut links = Vec::new();
        self.mark_reachable(entry, &mut reachable, &mut links);
        let mut cut_off = 0;
        for node in 0..self.len() as u32 {
            if reachable[node as usize] {
                continue;
            }
            cut_off += 1;
            let query = self.vector(node);
            let found = VISITED.with_borrow_mut(|visited| {
                self.search_layer(
                    query,
                    &[Scored(self.distance(query, entry), entry)],
                    self.ef_construction,
                    0,
                    visited,
                    &|n| reachable[n as usize],
                )
            });
            if let Some(from) = found.iter().find(|f| self.force_link(f.1, node, f.0)) {
                tracing::debug!(node, from = from.1, "relinked a cut-off node");
            }
            self.mark_reachable(node, &mut reachable, &mut links);
        }
        cut_off
    }

    /// Marks what `start` reaches on layer 0.
    fn mark_reachable(&self, start: u32, reachable: &mut [bool], links: &mut Vec<u32>) {
        let mut stack = vec![start];
        while let Some(n) = stack.pop() {
            if std::mem::replace(&mut reachable[n as usize], true) {
                continue;
            }
            self.neighbours(n, 0, links);
            stack.extend(links.iter().filter(|&&l| !reachable[l as usize]));
        }
    }

    /// Puts `to` on `from`'s layer-0 list: appended when there is room, else in place of the
    /// farthest link whose node has other ways in. False when every link is some node's only way.
    fn force_link(&self, from: u32, to: u32, distance: f32) -> bool {
        let _guard = self.lock(from);
        let slot = self.slot(from, 0);
        let count = (slot[0].load(AtomicOrdering::Acquire) as usize).min(self.m0);
        let current: Vec<u32> = slot[1..1 + count]
            .iter()
            .map(|l| l.load(AtomicOrdering::Relaxed))
            .collect();
        if current.contains(&to) {
            return true;
        }
        let mut buf = Vec::new();
        let base = self.decode(from, &mut buf);
        let mut list: Vec<Scored> = current
            .iter()
            .map(|&l| Scored(self.distance(base, l), l))
            .collect();
        list.sort_unstable();
        if count < self.m0 {
            list.push(Scored(distance, to));
        } else {
            let indegree = |n: u32| self.indegree[n as usize].load(AtomicOrdering::Relaxed);
            let Some(i) = list.iter().rposition(|l| indegree(l.1) > 1) else {
                return false;
            };
            self.indegree[list[i].1 as usize].fetch_sub(1, AtomicOrdering::Relaxed);
            list[i] = Scored(distance, to);
        }
        self.indegree[to as usize].fetch_add(1, AtomicOrdering::Relaxed);
        self.write_links(from, 0, &list);
        true
    }

    /// The neighbour-selection heuristic: walking the candidates nearest first, keep one only if
    /// it is nearer to the base point than to every candidate kept so far (so links spread out
    /// in different directions), up to `m`. `candidates` must be sorted nearest first.
    fn select(&self, candidates: &[Scored], m: usize) -> Vec<Scored> {
        let mut kept: Vec<Scored> = Vec::with_capacity(m);
        let mut buf = Vec::with_capacity(self.dim);
        for c in candidates {
            if kept.len() >= m {
                break;
            }
            let v = self.decode(c.1, &mut buf);
            if kept.iter().all(|k| self.distance(v, k.1) > c.0) {
                kept.push(*c);
            }
        }
        kept
    }

    /// Greedy descent on one layer (see [`greedy`]).
    fn greedy(
        &self,
        query: &[f32],
        ep: u32,
        ep_dist: f32,
        layer: u8,
        scratch: &mut Vec<u32>,
    ) -> (u32, f32) {
        let Ok(found) = greedy(self, query, ep, ep_dist, layer, scratch);
        found
    }

    /// Best-first search of one layer (see [`search_layer`]).
    fn search_layer(
        &self,
        query: &[f32],
        entry: &[Scored],
        ef: usize,
        layer: u8,
        visited: &mut Visited,
        keep: &dyn Fn(u32) -> bool,
    ) -> Vec<Scored> {
        let Ok(found) = search_layer(self, query, entry, ef, layer, visited, keep);
        found
    }

    /// The `k` nearest points to the unit vector `query` whose doc numbers `keep` accepts, as
    /// (doc, cosine similarity), nearest first; `ef` is the candidate list size (at least `k`).
    /// The walk compares f16 vectors; its `ef` candidates are then ranked by exact similarity.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        keep: &dyn Fn(u64) -> bool,
    ) -> Vec<(u64, f32)> {
        let entry = *self.entry.lock().unwrap_or_else(|e| e.into_inner());
        let Ok(found) = search_graph(self, entry, query, k, ef, keep);
        found
    }

    fn header(&self) -> Header {
        Header {
            dim: self.dim as u32,
            m: self.m as u32,
            ef_construction: self.ef_construction as u32,
            nodes: self.len() as u64,
            upper_len: self.upper.len() as u64,
            entry: *self.entry.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// Writes the graph to `out` in format 2 (`graph_file.rs`): arrays a reader can walk in place.
    pub fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        let header = self.header();
        let encoded = bincode::serde::encode_to_vec(&header, bincode::config::standard())
            .map_err(std::io::Error::other)?;
        out.write_all(MAGIC)?;
        out.write_all(&(encoded.len() as u32).to_le_bytes())?;
        out.write_all(&encoded)?;
        let layout = Layout::new(12 + encoded.len(), &header)
            .ok_or_else(|| std::io::Error::other("graph too large for this platform"))?;
        let mut at = 12 + encoded.len();
        let pad_to = |out: &mut dyn Write, at: &mut usize, to: usize| {
            let gap = to - *at;
            *at = to;
            out.write_all(&[0u8; 64][..gap])
        };
        let load = |a: &AtomicU32| a.load(AtomicOrdering::Relaxed).to_le_bytes();
        pad_to(out, &mut at, layout.coarse)?;
        write_le(out, self.coarse.iter().map(|x| x.to_le_bytes()))?;
        at += self.coarse.len() * 2;
        pad_to(out, &mut at, layout.vectors)?;
        write_le(out, self.vectors.iter().map(|x| x.to_le_bytes()))?;
        at += self.vectors.len() * 4;
        pad_to(out, &mut at, layout.docs)?;
        write_le(out, self.docs.iter().map(|x| x.to_le_bytes()))?;
        at += self.docs.len() * 8;
        pad_to(out, &mut at, layout.levels)?;
        out.write_all(&self.levels)?;
        at += self.levels.len();
        pad_to(out, &mut at, layout.links0)?;
        write_le(out, self.links0.iter().map(load))?;
        at += self.links0.len() * 4;
        pad_to(out, &mut at, layout.upper_at)?;
        write_le(out, self.upper_at.iter().map(|x| x.to_le_bytes()))?;
        at += self.upper_at.len() * 4;
        pad_to(out, &mut at, layout.upper)?;
        write_le(out, self.upper.iter().map(load))
    }

    /// Reads a graph written by [`Graph::write`] (format 2, or format 1 of older dumps),
    /// checking every size and link, so that a damaged file is an error and never a panic later.
    pub fn read(bytes: &[u8]) -> Result<Graph, FormatError> {
        let (magic, header, header_end) = read_header(bytes)?;
        let nodes = header.nodes as usize;
        let mut graph = Graph::new(
            header.dim as usize,
            header.m as usize,
            header.ef_construction as usize,
        );
        let (dim, m0) = (graph.dim, graph.m0);
        let words = |b: &[u8]| -> Vec<u32> {
            b.chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect()
        };
        let floats = |b: &[u8]| -> Vec<f32> {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect()
        };
        let longs = |b: &[u8]| -> Vec<u64> {
            b.chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect()
        };
        let (links0, upper);
        if magic == MAGIC_V1 {
            let bad = |what: &str| FormatError::new(what);
            let mut r = Reader {
                bytes,
                at: header_end,
            };
            let count =
                |n: usize, per: usize| n.checked_mul(per).ok_or_else(|| bad("size overflow"));
            let upper_len = usize::try_from(header.upper_len).map_err(|_| bad("too many links"))?;
            graph.vectors = floats(r.take(count(nodes, dim * 4)?)?);
            graph.coarse = vec![f16::ZERO; graph.vectors.len()];
            graph.coarse.convert_from_f32_slice(&graph.vectors);
            graph.docs = longs(r.take(count(nodes, 8)?)?);
            graph.levels = r.take(nodes)?.to_vec();
            links0 = words(r.take(count(nodes, 4 * (1 + m0))?)?);
            graph.upper_at = words(r.take(count(nodes, 4)?)?);
            upper = words(r.take(count(upper_len, 4)?)?);
            if r.at != bytes.len() {
                return Err(bad("trailing bytes"));
            }
        } else {
            let l = Layout::new(header_end, &header)
                .ok_or_else(|| FormatError::new("size overflow"))?;
            match bytes.len().cmp(&l.end) {
                Ordering::Less => return Err(FormatError::new("truncated")),
                Ordering::Greater => return Err(FormatError::new("trailing bytes")),
                Ordering::Equal => {}
            }
            let rows = nodes * dim;
            graph.coarse = bytes[l.coarse..l.coarse + rows * 2]
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes(c.try_into().expect("2 bytes")))
                .collect();
            graph.vectors = floats(&bytes[l.vectors..l.vectors + rows * 4]);
            graph.docs = longs(&bytes[l.docs..l.docs + nodes * 8]);
            graph.levels = bytes[l.levels..l.levels + nodes].to_vec();
            links0 = words(&bytes[l.links0..l.links0 + nodes * (1 + m0) * 4]);
            graph.upper_at = words(&bytes[l.upper_at..l.upper_at + nodes * 4]);
            upper = words(&bytes[l.upper..l.end]);
        }
        View {
            dim,
            m: graph.m,
            m0,
            coarse: &graph.coarse,
            vectors: &graph.vectors,
            docs: &graph.docs,
            levels: &graph.levels,
            links0: &links0,
            upper_at: &graph.upper_at,
            upper: &upper,
        }
        .validate(header.entry)?;
        let mut indegree = vec![0u32; nodes];
        for s in links0.chunks_exact(1 + m0) {
            for &l in &s[1..=s[0] as usize] {
                indegree[l as usize] += 1;
            }
        }
        graph.indegree = indegree.into_iter().map(AtomicU32::new).collect();
        graph.links0 = links0.into_iter().map(AtomicU32::new).collect();
        graph.upper = upper.into_iter().map(AtomicU32::new).collect();
        *graph.entry.get_mut().unwrap_or_else(|e| e.into_inner()) = header.entry;
        graph.rng = ChaCha8Rng::seed_from_u64(0x5eed ^ nodes as u64);
        Ok(graph)
    }
}

impl Walk for Graph {
    type Error = std::convert::Infallible;

    fn nodes(&self) -> usize {
        self.len()
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn coarse_distance(&self, query: &[f32], node: u32) -> f32 {
        self.distance(query, node)
    }

    fn exact_distance(&self, query: &[f32], node: u32) -> f32 {
        1.0 - dot(query, self.vector(node))
    }

    fn doc(&self, node: u32) -> u64 {
        self.docs[node as usize]
    }

    fn prefetch_node(&self, node: u32) {
        prefetch(self.coarse(node));
    }

    fn links(&self, node: u32, layer: u8, out: &mut Vec<u32>) -> Result<(), Self::Error> {
        self.neighbours(node, layer, out);
        Ok(())
    }
}

/// Greedy descent on one layer: move to a nearer neighbour until none is nearer.
fn greedy<W: Walk>(
    graph: &W,
    query: &[f32],
    mut ep: u32,
    mut ep_dist: f32,
    layer: u8,
    scratch: &mut Vec<u32>,
) -> Result<(u32, f32), W::Error> {
    loop {
        let mut moved = false;
        graph.links(ep, layer, scratch)?;
        for &n in scratch.iter() {
            let d = graph.coarse_distance(query, n);
            if d < ep_dist {
                (ep, ep_dist, moved) = (n, d, true);
            }
        }
        if !moved {
            return Ok((ep, ep_dist));
        }
    }
}

/// Best-first search of one layer from `entry`, keeping the `ef` nearest nodes that `keep`
/// accepts (rejected nodes are still walked through). Nearest first.
fn search_layer<W: Walk>(
    graph: &W,
    query: &[f32],
    entry: &[Scored],
    ef: usize,
    layer: u8,
    visited: &mut Visited,
    keep: &dyn Fn(u32) -> bool,
) -> Result<Vec<Scored>, W::Error> {
    visited.reset(graph.nodes());
    let mut candidates: BinaryHeap<Reverse<Scored>> = BinaryHeap::with_capacity(ef * 2);
    let mut results: BinaryHeap<Scored> = BinaryHeap::with_capacity(ef + 1);
    for &e in entry {
        if visited.insert(e.1) {
            candidates.push(Reverse(e));
            if keep(e.1) {
                results.push(e);
            }
        }
    }
    while results.len() > ef {
        results.pop();
    }
    let mut links = Vec::with_capacity(64);
    while let Some(Reverse(c)) = candidates.pop() {
        let worst = results.peek().map_or(f32::INFINITY, |w| w.0);
        if results.len() >= ef && c.0 > worst {
            break;
        }
        graph.links(c.1, layer, &mut links)?;
        // Mark the unseen neighbours first and start loading all their vectors, so that the
        // loads overlap instead of each distance waiting for its own.
        links.retain(|&n| visited.insert(n));
        for &n in &links {
            graph.prefetch_node(n);
        }
        for &n in &links {
            let d = graph.coarse_distance(query, n);
            let worst = results.peek().map_or(f32::INFINITY, |w| w.0);
            if results.len() < ef || d < worst {
                candidates.push(Reverse(Scored(d, n)));
                if keep(n) {
                    results.push(Scored(d, n));
                    if results.len() > ef {
                        results.pop();
                    }
                }
            }
        }
    }
    Ok(results.into_sorted_vec())
}

/// The `k` nearest points to the unit vector `query` whose doc numbers `keep` accepts, as
/// (doc, cosine similarity), nearest first: a greedy descent from `entry` (node, level) through
/// the upper layers, a best-first search of layer 0 with `ef` candidates on the f16 rows, and
/// those candidates ranked by the f32 rows.
pub(super) fn search_graph<W: Walk>(
    graph: &W,
    entry: Option<(u32, u8)>,
    query: &[f32],
    k: usize,
    ef: usize,
    keep: &dyn Fn(u64) -> bool,
) -> Result<Vec<(u64, f32)>, W::Error> {
    let Some((mut ep, top)) = entry else {
        return Ok(Vec::new());
    };
    if query.len() != graph.dim() || k == 0 {
        return Ok(Vec::new());
    }
    let mut ep_dist = graph.coarse_distance(query, ep);
    let mut scratch = Vec::new();
    for layer in (1..=top).rev() {
        (ep, ep_dist) = greedy(graph, query, ep, ep_dist, layer, &mut scratch)?;
    }
    let keep_node = |n: u32| keep(graph.doc(n));
    let found = VISITED.with_borrow_mut(|visited| {
        search_layer(
            graph,
            query,
            &[Scored(ep_dist, ep)],
            ef.max(k),
            0,
            visited,
            &keep_node,
        )
    })?;
    // The exact order of the candidates the walk found.
    let mut ranked: Vec<Scored> = found
        .into_iter()
        .map(|s| Scored(graph.exact_distance(query, s.1), s.1))
        .collect();
    ranked.sort_unstable();
    Ok(ranked
        .into_iter()
        .take(k)
        .map(|s| (graph.doc(s.1), 1.0 - s.0))
        .collect())
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| FormatError::new("truncated"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
}

/// Writes fixed-size little-endian items through a buffer of whole items.
fn write_le<const N: usize>(
    out: &mut impl Write,
    items: impl Iterator<Item = [u8; N]>,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1 << 16);
    for item in items {
        buf.extend_from_slice(&item);
        if buf.len() >= (1 << 16) - N {
            out.write_all(&buf)?;
            buf.clear();
        }
    }
    out.write_all(&buf)
}

/// Asks the CPU to start loading `v` into cache (a hint; no effect elsewhere than x86-64).
#[inline]
pub(super) fn prefetch<T>(v: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let p = v.as_ptr() as *const i8;
        // Every cache line of the vector.
        for line in (0..std::mem::size_of_val(v)).step_by(64) {
            // SAFETY: SSE is part of the x86-64 baseline, and a prefetch never faults, whatever
            // the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(line)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit_vectors(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // Clustered, like embeddings: 20 centres plus noise.
        let centres: Vec<Vec<f32>> = (0..20)
            .map(|_| (0..dim).map(|_| rng.random::<f32>() - 0.5).collect())
            .collect();
        (0..n)
            .map(|i| {
                let mut v: Vec<f32> = centres[i % 20]
                    .iter()
                    .map(|c| c + 0.15 * (rng.random::<f32>() - 0.5))
                    .collect();
                crate::embed::normalize(&mut v);
                v
            })
            .collect()
    }

    fn exact(points: &[Vec<f32>], q: &[f32], k: usize) -> Vec<u64> {
        let mut all: Vec<(f32, u64)> = points
            .iter()
            .enumerate()
            .map(|(i, p)| (super::super::dot(q, p), i as u64))
            .collect();
        all.sort_by(|a, b| b.0.total_cmp(&a.0));
        all.into_iter().take(k).map(|(_, i)| i).collect()
    }

    fn build(points: &[Vec<f32>], batch: usize) -> Graph {
        build_with(points, batch, 8, 64)
    }

    fn build_with(points: &[Vec<f32>], batch: usize, m: usize, ef: usize) -> Graph {
        let mut g = Graph::new(points[0].len(), m, ef);
        let refs: Vec<(&[f32], u64)> = points
            .iter()
            .enumerate()
            .map(|(i, p)| (p.as_slice(), i as u64))
            .collect();
        for chunk in refs.chunks(batch) {
            g.insert(chunk);
        }
        g
    }

    fn recall(g: &Graph, points: &[Vec<f32>], queries: &[Vec<f32>]) -> f64 {
        let mut hits = 0;
        for q in queries {
            let truth = exact(points, q, 10);
            let found = g.search(q, 10, 64, &|_| true);
            assert_eq!(found.len(), 10);
            assert!(
                found.windows(2).all(|w| w[0].1 >= w[1].1),
                "not nearest first"
            );
            hits += found.iter().filter(|(d, _)| truth.contains(d)).count();
        }
        hits as f64 / (10 * queries.len()) as f64
    }

    #[test]
    fn finds_the_exact_neighbours_of_clustered_points() {
        // Queries come from the same clusters as the points, but are not in the graph.
        let mut points = unit_vectors(3050, 32, 1);
        let queries = points.split_off(3000);
        // One by one (sequential links) and in big batches (parallel links).
        for batch in [1, 1000] {
            let g = build(&points, batch);
            assert_eq!(g.len(), 3000);
            let r = recall(&g, &points, &queries);
            assert!(r >= 0.95, "recall@10 {r} with batches of {batch}");
        }
    }

    #[test]
    fn a_filter_is_applied_during_the_walk() {
        let points = unit_vectors(2000, 16, 3);
        let g = build(&points, 500);
        let q = &points[7];
        let found = g.search(q, 5, 32, &|d| d % 7 == 3);
        assert_eq!(found.len(), 5);
        assert!(found.iter().all(|(d, _)| d % 7 == 3));
        let truth: Vec<u64> = exact(&points, q, 2000)
            .into_iter()
            .filter(|d| d % 7 == 3)
            .take(5)
            .collect();
        let got: Vec<u64> = found.iter().map(|(d, _)| *d).collect();
        assert_eq!(got, truth);
        // A filter that accepts nothing walks everything and finds nothing.
        assert!(g.search(q, 5, 32, &|_| false).is_empty());
    }

    #[test]
    fn after_a_repair_every_point_is_reachable_and_lists_respect_their_caps() {
        // Tight clusters make pruning cut the most links; with 3 links per node, hundreds of
        // points of this data are cut off before the repair.
        let points = unit_vectors(4000, 16, 4);
        for (batch, m) in [(1, 8), (300, 8), (1000, 3)] {
            let g = build_with(&points, batch, m, 32);
            g.repair();
            assert_reachable(&g);
            assert_eq!(g.repair(), 0, "a second repair finds nothing cut off");
        }
    }

    fn assert_reachable(g: &Graph) {
        let mut seen = vec![false; g.len()];
        let mut stack = vec![g.entry.lock().unwrap().unwrap().0];
        let mut links = Vec::new();
        while let Some(n) = stack.pop() {
            if std::mem::replace(&mut seen[n as usize], true) {
                continue;
            }
            g.neighbours(n, 0, &mut links);
            assert!(links.len() <= g.m0);
            assert!(!links.contains(&n), "node {n} links to itself");
            stack.extend(&links);
        }
        let mut indegree = vec![0u32; g.len()];
        for n in 0..g.len() as u32 {
            g.neighbours(n, 0, &mut links);
            links.iter().for_each(|&l| indegree[l as usize] += 1);
        }
        let kept: Vec<u32> = g
            .indegree
            .iter()
            .map(|d| d.load(AtomicOrdering::Relaxed))
            .collect();
        assert_eq!(kept, indegree, "in-degrees out of step with the links");
        let unreachable = seen.iter().filter(|s| !**s).count();
        assert_eq!(unreachable, 0, "unreachable nodes on layer 0 (m {})", g.m);
    }

    /// Photos of one entity have near-identical embeddings: their order is decided by differences
    /// of ~10⁻⁴ in cosine, which f16 vectors alone cannot hold (they gave recall 0.65 here before the exact
    /// re-rank).
    #[test]
    fn near_duplicates_are_ranked_exactly() {
        let (n, dim, centres) = (4_000, 256, 80);
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let mut gauss = move || {
            let u1: f32 = rng.random::<f32>().max(1e-12);
            let u2: f32 = rng.random();
            (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        };
        let centres: Vec<Vec<f32>> = (0..centres)
            .map(|_| (0..dim).map(|_| gauss()).collect())
            .collect();
        let mut make = |i: usize| {
            let mut v: Vec<f32> = centres[i % centres.len()]
                .iter()
                .map(|c| c + 0.02 * gauss())
                .collect();
            crate::embed::normalize(&mut v);
            v
        };
        let points: Vec<Vec<f32>> = (0..n).map(&mut make).collect();
        let queries: Vec<Vec<f32>> = (n..n + 50).map(&mut make).collect();
        let g = build_with(&points, 500, 16, 48);
        let mut hits = 0;
        for q in &queries {
            let truth = exact(&points, q, 10);
            hits += g
                .search(q, 10, 48, &|_| true)
                .iter()
                .filter(|(d, _)| truth.contains(d))
                .count();
        }
        let recall = hits as f64 / (10 * queries.len()) as f64;
        assert!(recall >= 0.95, "recall@10 {recall} among near-duplicates");
    }

    #[test]
    fn write_then_read_gives_the_same_answers_and_damage_is_an_error() {
        let points = unit_vectors(800, 16, 5);
        let g = build(&points, 200);
        let mut bytes = Vec::new();
        g.write(&mut bytes).unwrap();
        let back = Graph::read(&bytes).unwrap();
        assert_eq!(back.len(), g.len());
        for q in points.iter().step_by(97) {
            assert_eq!(
                back.search(q, 10, 32, &|_| true),
                g.search(q, 10, 32, &|_| true)
            );
        }
        // Inserting after a read keeps working.
        let mut back = back;
        back.insert(&[(points[0].as_slice(), 10_000)]);
        assert_eq!(back.search(&points[0], 2, 32, &|_| true).len(), 2);

        assert!(Graph::read(&bytes[..bytes.len() - 3]).is_err(), "truncated");
        assert!(Graph::read(b"RIHNSW00").is_err(), "bad magic");
        // A link pointing past the last node.
        let mut bad = bytes.clone();
        set_link(&mut bad, 0, 1, 9_999);
        assert!(Graph::read(&bad).is_err(), "dangling link");
    }

    /// The byte offset of node `node`'s layer-0 slot in a format-2 file.
    fn links0_at(bytes: &[u8], node: usize) -> usize {
        let (_, header, end) = read_header(bytes).unwrap();
        let m0 = 2 * header.m as usize;
        Layout::new(end, &header).unwrap().links0 + node * 4 * (1 + m0)
    }

    /// Sets word `word` of node `node`'s layer-0 slot (0: the count; then the links).
    fn set_link(bytes: &mut [u8], node: usize, word: usize, value: u32) {
        let at = links0_at(bytes, node) + 4 * word;
        bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
    }

    #[test]
    fn a_mapped_graph_answers_like_the_owned_one_and_damage_is_an_error_not_a_panic() {
        use super::super::graph_file::MappedGraph;
        let points = unit_vectors(1500, 16, 6);
        let g = build(&points, 300);
        let mut bytes = Vec::new();
        g.write(&mut bytes).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let mapped = MappedGraph::open(&write("good.bin", &bytes))
            .unwrap()
            .unwrap();
        assert_eq!((mapped.len(), mapped.dim()), (1500, 16));
        mapped.validate().unwrap();
        for q in points.iter().step_by(61) {
            let keep = |d: u64| !d.is_multiple_of(3);
            assert_eq!(
                mapped.search(q, 10, 32, &keep).unwrap(),
                g.search(q, 10, 32, &keep)
            );
        }

        // Cut short anywhere: refused at open, before any walk.
        for cut in [0, 7, 13, bytes.len() / 3, bytes.len() - 1] {
            let path = write("short.bin", &bytes[..cut]);
            assert!(MappedGraph::open(&path).is_err(), "cut at {cut}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(MappedGraph::open(&write("long.bin", &long)).is_err());

        // Damaged lists open (only the header is read) but every walk that meets one stops
        // with an error, and a full validation finds them.
        let (nodes, m0) = (g.len(), g.m0);
        for (what, word, value) in [
            ("a count past the slot", 0, (m0 + 1) as u32),
            ("a count of u32::MAX", 0, u32::MAX),
            ("a link past the last node", 1, nodes as u32),
            ("a link of u32::MAX", 1, u32::MAX),
        ] {
            let mut bad = bytes.clone();
            for node in 0..nodes {
                if word == 1 {
                    set_link(&mut bad, node, 0, 1);
                }
                set_link(&mut bad, node, word, value);
            }
            let mapped = MappedGraph::open(&write("bad.bin", &bad)).unwrap().unwrap();
            assert!(mapped.validate().is_err(), "{what}: validate");
            for q in points.iter().step_by(97) {
                let err = mapped.search(q, 10, 32, &|_| true).unwrap_err();
                assert!(
                    err.to_string().contains("links are damaged"),
                    "{what}: {err}"
                );
            }
            assert!(Graph::read(&bad).is_err(), "{what}: full read");
        }

        // The entry point out of range is refused at open.
        let mut bad = bytes.clone();
        let (_, mut header, end) = read_header(&bad).unwrap();
        header.entry = Some((nodes as u32 + 5, 0));
        let encoded = bincode::serde::encode_to_vec(&header, bincode::config::standard()).unwrap();
        if encoded.len() == end - 12 {
            bad[12..end].copy_from_slice(&encoded);
            assert!(MappedGraph::open(&write("entry.bin", &bad)).is_err());
        }
    }

    #[test]
    fn format_1_files_still_read() {
        let points = unit_vectors(300, 8, 7);
        let g = build(&points, 100);
        // Format 1: no f16 rows, no padding.
        let header =
            bincode::serde::encode_to_vec(g.header(), bincode::config::standard()).unwrap();
        let mut v1 = Vec::new();
        v1.extend_from_slice(MAGIC_V1);
        v1.extend_from_slice(&(header.len() as u32).to_le_bytes());
        v1.extend_from_slice(&header);
        v1.extend(g.vectors.iter().flat_map(|x| x.to_le_bytes()));
        v1.extend(g.docs.iter().flat_map(|x| x.to_le_bytes()));
        v1.extend_from_slice(&g.levels);
        let load = |a: &AtomicU32| a.load(AtomicOrdering::Relaxed).to_le_bytes();
        v1.extend(g.links0.iter().flat_map(load));
        v1.extend(g.upper_at.iter().flat_map(|x| x.to_le_bytes()));
        v1.extend(g.upper.iter().flat_map(load));
        let back = Graph::read(&v1).unwrap();
        for q in points.iter().step_by(29) {
            assert_eq!(
                back.search(q, 5, 32, &|_| true),
                g.search(q, 5, 32, &|_| true)
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.bin");
        std::fs::write(&path, &v1).unwrap();
        assert!(matches!(
            super::super::graph_file::MappedGraph::open(&path),
            Ok(None)
        ));
    }
}
