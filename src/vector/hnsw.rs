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

use super::{dot, dot_f16};

/// Highest layer a node may get (with 16 links per node, layer 8 needs ~4·10⁹ points).
const MAX_LEVEL: u8 = 15;
/// Stripes of the link locks.
const LOCKS: usize = 4096;
const MAGIC: &[u8; 8] = b"RIHNSW01";
const NONE: u32 = u32::MAX;

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

/// Why a graph file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("graph file: {0}")]
pub struct FormatError(String);

/// Sizes and settings written at the head of a graph file.
#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    dim: u32,
    m: u32,
    ef_construction: u32,
    nodes: u64,
    upper_len: u64,
    entry: Option<(u32, u8)>,
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

    /// Greedy descent on one layer: move to a nearer neighbour until none is nearer.
    fn greedy(
        &self,
        query: &[f32],
        mut ep: u32,
        mut ep_dist: f32,
        layer: u8,
        scratch: &mut Vec<u32>,
    ) -> (u32, f32) {
        loop {
            let mut moved = false;
            self.neighbours(ep, layer, scratch);
            for &n in scratch.iter() {
                let d = self.distance(query, n);
                if d < ep_dist {
                    (ep, ep_dist, moved) = (n, d, true);
                }
            }
            if !moved {
                return (ep, ep_dist);
            }
        }
    }

    /// Best-first search of one layer from `entry`, keeping the `ef` nearest nodes that `keep`
    /// accepts (rejected nodes are still walked through). Nearest first.
    fn search_layer(
        &self,
        query: &[f32],
        entry: &[Scored],
        ef: usize,
        layer: u8,
        visited: &mut Visited,
        keep: &dyn Fn(u32) -> bool,
    ) -> Vec<Scored> {
        visited.reset(self.len());
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
        let mut links = Vec::with_capacity(self.m0);
        while let Some(Reverse(c)) = candidates.pop() {
            let worst = results.peek().map_or(f32::INFINITY, |w| w.0);
            if results.len() >= ef && c.0 > worst {
                break;
            }
            self.neighbours(c.1, layer, &mut links);
            // Mark the unseen neighbours first and start loading all their vectors, so that the
            // loads overlap instead of each distance waiting for its own.
            links.retain(|&n| visited.insert(n));
            for &n in &links {
                prefetch(self.coarse(n));
            }
            for &n in &links {
                let d = self.distance(query, n);
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
        results.into_sorted_vec()
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
        let Some((mut ep, top)) = *self.entry.lock().unwrap_or_else(|e| e.into_inner()) else {
            return Vec::new();
        };
        if query.len() != self.dim || k == 0 {
            return Vec::new();
        }
        let mut ep_dist = self.distance(query, ep);
        let mut scratch = Vec::new();
        for layer in (1..=top).rev() {
            (ep, ep_dist) = self.greedy(query, ep, ep_dist, layer, &mut scratch);
        }
        let keep_node = |n: u32| keep(self.docs[n as usize]);
        let found = VISITED.with_borrow_mut(|visited| {
            self.search_layer(
                query,
                &[Scored(ep_dist, ep)],
                ef.max(k),
                0,
                visited,
                &keep_node,
            )
        });
        // The exact order of the candidates the walk found.
        let mut ranked: Vec<Scored> = found
            .into_iter()
            .map(|s| Scored(1.0 - dot(query, self.vector(s.1)), s.1))
            .collect();
        ranked.sort_unstable();
        ranked
            .into_iter()
            .take(k)
            .map(|s| (self.docs[s.1 as usize], 1.0 - s.0))
            .collect()
    }

    /// Writes the graph to `out` (little-endian arrays after a bincode header).
    pub fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        let header = Header {
            dim: self.dim as u32,
            m: self.m as u32,
            ef_construction: self.ef_construction as u32,
            nodes: self.len() as u64,
            upper_len: self.upper.len() as u64,
            entry: *self.entry.lock().unwrap_or_else(|e| e.into_inner()),
        };
        let header = bincode::serde::encode_to_vec(&header, bincode::config::standard())
            .map_err(std::io::Error::other)?;
        out.write_all(MAGIC)?;
        out.write_all(&(header.len() as u32).to_le_bytes())?;
        out.write_all(&header)?;
        write_le(out, self.vectors.iter().map(|x| x.to_le_bytes()))?;
        write_le(out, self.docs.iter().map(|x| x.to_le_bytes()))?;
        out.write_all(&self.levels)?;
        let load = |a: &AtomicU32| a.load(AtomicOrdering::Relaxed).to_le_bytes();
        write_le(out, self.links0.iter().map(load))?;
        write_le(out, self.upper_at.iter().map(|x| x.to_le_bytes()))?;
        write_le(out, self.upper.iter().map(load))
    }

    /// Reads a graph written by [`Graph::write`], checking every size and link, so that a
    /// damaged file is an error and never a panic later.
    pub fn read(bytes: &[u8]) -> Result<Graph, FormatError> {
        let bad = |what: &str| FormatError(what.to_string());
        let mut r = Reader { bytes, at: 0 };
        if r.take(8)? != MAGIC {
            return Err(bad("not a reimagen graph (bad magic)"));
        }
        let header_len = u32::from_le_bytes(r.array()?) as usize;
        let (header, _): (Header, usize) =
            bincode::serde::decode_from_slice(r.take(header_len)?, bincode::config::standard())
                .map_err(|e| FormatError(format!("header: {e}")))?;
        let (dim, m) = (header.dim as usize, header.m as usize);
        let nodes = usize::try_from(header.nodes).map_err(|_| bad("too many nodes"))?;
        let upper_len = usize::try_from(header.upper_len).map_err(|_| bad("too many links"))?;
        if dim == 0 || m < 2 || nodes >= NONE as usize {
            return Err(bad("impossible sizes in the header"));
        }
        let mut graph = Graph::new(dim, m, header.ef_construction as usize);
        let m0 = graph.m0;
        let count = |n: usize, per: usize| n.checked_mul(per).ok_or_else(|| bad("size overflow"));
        graph.vectors = r
            .take(count(nodes, dim * 4)?)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        graph.coarse = vec![f16::ZERO; graph.vectors.len()];
        graph.coarse.convert_from_f32_slice(&graph.vectors);
        graph.docs = r
            .take(count(nodes, 8)?)?
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        graph.levels = r.take(nodes)?.to_vec();
        let words = |b: &[u8]| -> Vec<u32> {
            b.chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect()
        };
        let links0 = words(r.take(count(nodes, 4 * (1 + m0))?)?);
        graph.upper_at = words(r.take(count(nodes, 4)?)?);
        let upper = words(r.take(count(upper_len, 4)?)?);
        if r.at != bytes.len() {
            return Err(bad("trailing bytes"));
        }
        // Every list must fit its slot and name existing nodes; every upper slot must lie inside
        // the upper array.
        let check_slot = |slot: &[u32], cap: usize| {
            (slot[0] as usize) <= cap
                && slot[1..=slot[0] as usize]
                    .iter()
                    .all(|&l| (l as usize) < nodes)
        };
        if !links0.chunks_exact(1 + m0).all(|s| check_slot(s, m0)) {
            return Err(bad("a layer-0 link list is damaged"));
        }
        for (node, (&level, &at)) in graph.levels.iter().zip(&graph.upper_at).enumerate() {
            if level > MAX_LEVEL {
                return Err(bad("a node's level is out of range"));
            }
            if level == 0 {
                if at != NONE {
                    return Err(FormatError(format!(
                        "node {node} has upper links but level 0"
                    )));
                }
                continue;
            }
            let end = (at as usize).checked_add(level as usize * (1 + m));
            if at == NONE || end.is_none_or(|e| e > upper.len()) {
                return Err(FormatError(format!(
                    "node {node}'s upper links are out of range"
                )));
            }
            let slots = &upper[at as usize..end.expect("checked")];
            if !slots.chunks_exact(1 + m).all(|s| check_slot(s, m)) {
                return Err(FormatError(format!(
                    "node {node}'s upper links are damaged"
                )));
            }
        }
        match header.entry {
            None if nodes > 0 => return Err(bad("no entry point")),
            Some((e, l)) if e as usize >= nodes || graph.levels[e as usize] != l => {
                return Err(bad("the entry point is out of range"));
            }
            _ => {}
        }
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
            .ok_or_else(|| FormatError("truncated".into()))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
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
fn prefetch<T>(v: &[T]) {
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
        let links_at = bytes.len() - 4 * (g.upper.len() + g.len() + g.len() * (1 + g.m0));
        let mut bad = bytes.clone();
        bad[links_at..links_at + 4].copy_from_slice(&1u32.to_le_bytes());
        bad[links_at + 4..links_at + 8].copy_from_slice(&9_999u32.to_le_bytes());
        assert!(Graph::read(&bad).is_err(), "dangling link");
    }
}
