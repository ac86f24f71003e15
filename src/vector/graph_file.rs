//! The graph file: its layout, its checks, and a graph walked in place from a memory map.
//!
//! Format 2 (`RIHNSW02`): the magic, a `u32` header length, a bincode [`Header`], then the
//! arrays, each starting on a 64-byte boundary (zero padding between them), little-endian:
//! the f16 rows the walk reads, the f32 rows the final ranking reads, the doc numbers (`u64`),
//! the levels (`u8`), the layer-0 link slots (`u32`, `1 + 2m` per node: the count, then the
//! neighbours), where each node's upper slots start (`u32`, `u32::MAX` for level-0 nodes) and the
//! upper slots (`u32`, `1 + m` per node and layer). The size of every array follows from the
//! header, so the file's length is checked once, at open. Format 1 (`RIHNSW01`, before
//! 2026-12-02) had no f16 rows and no padding; [`super::Graph::read`] still reads it.
//!
//! A mapped graph ([`MappedGraph`]) checks its header, its length and its entry point when it is
//! opened, and every link list as a walk reads it: a damaged file is an error at the step that
//! meets the damage, never a read out of bounds. [`View::validate`] checks every list at once
//! (the writer's open, `check`).
//!
//! Not here: building and searching a graph (`hnsw.rs`), checksums and manifests (`mod.rs`).

use std::fs::File;
use std::path::{Path, PathBuf};

use half::f16;

use super::hnsw::{FormatError, MAX_LEVEL, NONE, Walk};
use super::{dot, dot_f16};

pub(super) const MAGIC_V1: &[u8; 8] = b"RIHNSW01";
pub(super) const MAGIC: &[u8; 8] = b"RIHNSW02";
/// Every array of a format-2 file starts on a multiple of this (a cache line; more than any
/// element's alignment).
const ALIGN: usize = 64;

/// Sizes and settings written at the head of a graph file.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Header {
    pub dim: u32,
    pub m: u32,
    pub ef_construction: u32,
    pub nodes: u64,
    pub upper_len: u64,
    pub entry: Option<(u32, u8)>,
}

/// Where each array of a format-2 file starts, and where the file ends, in bytes.
#[derive(Clone, Copy, Debug)]
pub(super) struct Layout {
    pub coarse: usize,
    pub vectors: usize,
    pub docs: usize,
    pub levels: usize,
    pub links0: usize,
    pub upper_at: usize,
    pub upper: usize,
    pub end: usize,
}

fn align_up(at: usize) -> Option<usize> {
    Some(at.checked_add(ALIGN - 1)? / ALIGN * ALIGN)
}

impl Layout {
    /// The layout of a file whose header ends at `header_end`; `None` when the sizes overflow.
    pub fn new(header_end: usize, h: &Header) -> Option<Layout> {
        let nodes = usize::try_from(h.nodes).ok()?;
        let dim = h.dim as usize;
        let m0 = 2 * h.m as usize;
        let rows = nodes.checked_mul(dim)?;
        let mut at = align_up(header_end)?;
        let mut next = |bytes: usize| -> Option<usize> {
            let start = at;
            at = align_up(start.checked_add(bytes)?)?;
            Some(start)
        };
        let coarse = next(rows.checked_mul(2)?)?;
        let vectors = next(rows.checked_mul(4)?)?;
        let docs = next(nodes.checked_mul(8)?)?;
        let levels = next(nodes)?;
        let links0 = next(nodes.checked_mul(1 + m0)?.checked_mul(4)?)?;
        let upper_at = next(nodes.checked_mul(4)?)?;
        let upper = at;
        let end = upper.checked_add(usize::try_from(h.upper_len).ok()?.checked_mul(4)?)?;
        Some(Layout {
            coarse,
            vectors,
            docs,
            levels,
            links0,
            upper_at,
            upper,
            end,
        })
    }
}

/// Reads the magic, the header and its end offset from the start of a graph file.
pub(super) fn read_header(bytes: &[u8]) -> Result<(&'static [u8; 8], Header, usize), FormatError> {
    let magic = match bytes.get(..8) {
        Some(m) if m == MAGIC => MAGIC,
        Some(m) if m == MAGIC_V1 => MAGIC_V1,
        Some(_) => return Err(FormatError::new("not a reimagen graph (bad magic)")),
        None => return Err(FormatError::new("truncated")),
    };
    let len = bytes
        .get(8..12)
        .ok_or_else(|| FormatError::new("truncated"))?;
    let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
    let end = 12usize
        .checked_add(len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| FormatError::new("truncated"))?;
    let (header, _): (Header, usize) =
        bincode::serde::decode_from_slice(&bytes[12..end], bincode::config::standard())
            .map_err(|e| FormatError::new(format!("header: {e}")))?;
    if header.dim == 0 || header.m < 2 || header.nodes >= NONE as u64 {
        return Err(FormatError::new("impossible sizes in the header"));
    }
    Ok((magic, header, end))
}

/// A graph's arrays, borrowed: from a mapped file or from an owned graph's vectors. A walk over
/// it checks every link list it reads.
pub(super) struct View<'a> {
    pub dim: usize,
    pub m: usize,
    pub m0: usize,
    pub coarse: &'a [f16],
    pub vectors: &'a [f32],
    pub docs: &'a [u64],
    pub levels: &'a [u8],
    pub links0: &'a [u32],
    pub upper_at: &'a [u32],
    pub upper: &'a [u32],
}

impl View<'_> {
    fn nodes(&self) -> usize {
        self.docs.len()
    }

    /// Node `node`'s list on `layer`, with its count and every link checked.
    fn list(&self, node: u32, layer: u8) -> Result<&[u32], FormatError> {
        let n = node as usize;
        let damaged = || FormatError::new(format!("node {node}'s layer-{layer} links are damaged"));
        let (slot, cap) = if layer == 0 {
            let at = n * (1 + self.m0);
            (self.links0.get(at..at + 1 + self.m0), self.m0)
        } else {
            let level = *self.levels.get(n).ok_or_else(damaged)?;
            let at = *self.upper_at.get(n).ok_or_else(damaged)?;
            if layer > level || at == NONE {
                return Err(damaged());
            }
            let start = (at as usize).checked_add((layer as usize - 1) * (1 + self.m));
            let slot = start.and_then(|s| self.upper.get(s..s.checked_add(1 + self.m)?));
            (slot, self.m)
        };
        let slot = slot.ok_or_else(damaged)?;
        let count = slot[0] as usize;
        if count > cap {
            return Err(damaged());
        }
        let links = &slot[1..1 + count];
        if links.iter().any(|&l| l as usize >= self.nodes()) {
            return Err(damaged());
        }
        Ok(links)
    }

    /// Checks every size, level and link list, and the entry point: what a walk may meet.
    pub fn validate(&self, entry: Option<(u32, u8)>) -> Result<(), FormatError> {
        let nodes = self.nodes();
        let rows = nodes * self.dim;
        if self.coarse.len() != rows
            || self.vectors.len() != rows
            || self.levels.len() != nodes
            || self.upper_at.len() != nodes
            || self.links0.len() != nodes * (1 + self.m0)
        {
            return Err(FormatError::new("array sizes disagree with the header"));
        }
        check_entry(entry, self.levels)?;
        for node in 0..nodes as u32 {
            let level = self.levels[node as usize];
            if level > MAX_LEVEL {
                return Err(FormatError::new(format!(
                    "node {node}'s level is out of range"
                )));
            }
            if level == 0 && self.upper_at[node as usize] != NONE {
                return Err(FormatError::new(format!(
                    "node {node} has upper links but level 0"
                )));
            }
            for layer in 0..=level {
                self.list(node, layer)?;
            }
        }
        Ok(())
    }
}

fn check_entry(entry: Option<(u32, u8)>, levels: &[u8]) -> Result<(), FormatError> {
    match entry {
        None if !levels.is_empty() => Err(FormatError::new("no entry point")),
        Some((e, l)) if levels.get(e as usize) != Some(&l) || l > MAX_LEVEL => {
            Err(FormatError::new("the entry point is out of range"))
        }
        _ => Ok(()),
    }
}

impl Walk for View<'_> {
    type Error = FormatError;

    fn nodes(&self) -> usize {
        self.docs.len()
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn coarse_distance(&self, query: &[f32], node: u32) -> f32 {
        let at = node as usize * self.dim;
        1.0 - dot_f16(query, self.coarse.get(at..at + self.dim).unwrap_or(&[]))
    }

    fn exact_distance(&self, query: &[f32], node: u32) -> f32 {
        let at = node as usize * self.dim;
        1.0 - dot(query, self.vectors.get(at..at + self.dim).unwrap_or(&[]))
    }

    fn doc(&self, node: u32) -> u64 {
        self.docs.get(node as usize).copied().unwrap_or(u64::MAX)
    }

    fn prefetch_node(&self, node: u32) {
        let at = node as usize * self.dim;
        if let Some(row) = self.coarse.get(at..at + self.dim) {
            super::hnsw::prefetch(row);
        }
    }

    fn links(&self, node: u32, layer: u8, out: &mut Vec<u32>) -> Result<(), FormatError> {
        out.clear();
        out.extend_from_slice(self.list(node, layer)?);
        Ok(())
    }
}

/// A format-2 graph file walked in place. Opening it reads the header and the entry point's
/// level (the pages a walk needs come in as it touches them); a search checks each link list it
/// reads. The map stays valid while the writer replaces the file: a dump writes new files in a
/// new directory and unlinks the old ones, which keeps the mapped inode alive until the map goes.
pub struct MappedGraph {
    map: memmap2::Mmap,
    path: PathBuf,
    header: Header,
    layout: Layout,
}

impl MappedGraph {
    /// Maps `path`; `None` for a format-1 file, which cannot be walked in place (read it whole
    /// with [`super::Graph::read`]).
    pub fn open(path: &Path) -> Result<Option<MappedGraph>, FormatError> {
        if cfg!(target_endian = "big") {
            return Err(FormatError::new("mapped graphs need a little-endian CPU"));
        }
        let file = File::open(path).map_err(|e| FormatError::new(e.to_string()))?;
        // SAFETY: the map is only read, and this crate never writes a graph file in place: a
        // dump writes a new file in a new directory and unlinks the old directory, so the mapped
        // inode stays as it was. A file truncated in place by something else could fault on its
        // missing pages; every length and offset is checked here against the file's size.
        let map =
            unsafe { memmap2::Mmap::map(&file) }.map_err(|e| FormatError::new(e.to_string()))?;
        let (magic, header, header_end) = read_header(&map)?;
        if magic != MAGIC {
            return Ok(None);
        }
        let layout =
            Layout::new(header_end, &header).ok_or_else(|| FormatError::new("size overflow"))?;
        match map.len().cmp(&layout.end) {
            std::cmp::Ordering::Less => return Err(FormatError::new("truncated")),
            std::cmp::Ordering::Greater => return Err(FormatError::new("trailing bytes")),
            std::cmp::Ordering::Equal => {}
        }
        let graph = MappedGraph {
            map,
            path: path.to_path_buf(),
            header,
            layout,
        };
        let view = graph.view()?;
        check_entry(graph.header.entry, view.levels)?;
        Ok(Some(graph))
    }

    /// The whole file, for its checksum.
    pub(super) fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The file this graph was mapped from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Points in the graph.
    pub fn len(&self) -> usize {
        self.header.nodes as usize
    }

    /// The dimension of every point.
    pub fn dim(&self) -> usize {
        self.header.dim as usize
    }

    pub(super) fn entry(&self) -> Option<(u32, u8)> {
        self.header.entry
    }

    /// The arrays, cast in place (each section's alignment is checked, never assumed).
    pub(super) fn view(&self) -> Result<View<'_>, FormatError> {
        let l = &self.layout;
        let nodes = self.len();
        let rows = nodes * self.dim();
        let m = self.header.m as usize;
        let bytes = |at: usize, len: usize| &self.map[at..at + len];
        let cast = |what: &str, e: bytemuck::PodCastError| {
            FormatError::new(format!("{what} cannot be read in place: {e:?}"))
        };
        Ok(View {
            dim: self.dim(),
            m,
            m0: 2 * m,
            coarse: bytemuck::try_cast_slice(bytes(l.coarse, rows * 2))
                .map_err(|e| cast("f16 rows", e))?,
            vectors: bytemuck::try_cast_slice(bytes(l.vectors, rows * 4))
                .map_err(|e| cast("f32 rows", e))?,
            docs: bytemuck::try_cast_slice(bytes(l.docs, nodes * 8))
                .map_err(|e| cast("doc numbers", e))?,
            levels: bytes(l.levels, nodes),
            links0: bytemuck::try_cast_slice(bytes(l.links0, nodes * (1 + 2 * m) * 4))
                .map_err(|e| cast("links", e))?,
            upper_at: bytemuck::try_cast_slice(bytes(l.upper_at, nodes * 4))
                .map_err(|e| cast("links", e))?,
            upper: bytemuck::try_cast_slice(bytes(l.upper, l.end - l.upper))
                .map_err(|e| cast("links", e))?,
        })
    }

    /// The `k` nearest points to the unit vector `query` whose doc numbers `keep` accepts, as
    /// (doc, cosine similarity), nearest first; a damaged link list met on the way is an error.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        keep: &dyn Fn(u64) -> bool,
    ) -> Result<Vec<(u64, f32)>, FormatError> {
        let view = self.view()?;
        super::hnsw::search_graph(&view, self.entry(), query, k, ef, keep)
    }

    /// Checks every link list of the file (what the writer's open does with a file it loads).
    pub fn validate(&self) -> Result<(), FormatError> {
        self.view()?.validate(self.entry())
    }
}
