//! hnsw_rs as the other graph engine (`graph = "hnsw_rs"` in `kb.toml`): the design card's first
//! choice, kept selectable behind the same [`super::VectorIndex`] contract (tombstones, dumps
//! named by a checksummed manifest, change-log replay) so that `bench kb --graph own,hnsw_rs`
//! measures the reason for the default in every run (ARCHITECTURE.md, decision 7).
//!
//! Its dump files are its own format (`graph.hnsw.graph`, `graph.hnsw.data`). Its reload trusts
//! them: a length read from the file sizes an allocation and a raw slice, and a short read ends
//! the process (`process::exit`). So they are loaded only after both files match the blake3
//! the manifest recorded when this process wrote them (`mod.rs`), and the load runs under
//! `catch_unwind` for its assertions. A reader loads the whole graph (no in-place walk).
//!
//! Not here: the project's own graph (`hnsw.rs`), checksums and manifests (`mod.rs`).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use hnsw_rs::anndists::dist::distances::Distance;
use hnsw_rs::api::AnnT;
use hnsw_rs::hnsw::Hnsw;
use hnsw_rs::hnswio::HnswIo;

/// The base name of the dump files in a dump directory.
pub(super) const BASENAME: &str = "graph";
/// The dump files, in the manifest.
pub(super) const FILES: [&str; 2] = ["graph.hnsw.graph", "graph.hnsw.data"];
/// Layers hnsw_rs keeps (its maximum).
const MAX_LAYER: usize = 16;

/// `1 − a·b` over unit vectors, with this crate's dot product. (anndists' `DistDot` asserts
/// that the distance is not negative, which rounding breaks for a point and its duplicate.)
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct UnitCosine;

impl Distance<f32> for UnitCosine {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - super::dot(a, b)).max(0.0)
    }
}

/// An hnsw_rs graph of doc numbers (its data ids).
pub(super) struct HnswRsGraph {
    hnsw: Hnsw<'static, f32, UnitCosine>,
    dim: usize,
}

impl HnswRsGraph {
    /// An empty graph of `dim`-dimensional unit vectors: `m` links per node, candidate lists of
    /// `ef_construction` while building, room made for `capacity` points.
    pub fn new(dim: usize, m: usize, ef_construction: usize, capacity: usize) -> HnswRsGraph {
        HnswRsGraph {
            hnsw: Hnsw::new(
                m.clamp(2, 255),
                capacity.max(1_000),
                MAX_LAYER,
                ef_construction.max(1),
                UnitCosine,
            ),
            dim,
        }
    }

    pub fn len(&self) -> usize {
        self.hnsw.get_nb_point()
    }

    /// Inserts unit vectors with their doc numbers, in parallel.
    pub fn insert(&self, points: &[(&[f32], u64)]) {
        let points: Vec<(&[f32], usize)> = points.iter().map(|(v, d)| (*v, *d as usize)).collect();
        self.hnsw.parallel_insert_slice(&points);
    }

    /// The `k` nearest points whose doc numbers `keep` accepts, as (doc, cosine similarity).
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        keep: &dyn Fn(u64) -> bool,
    ) -> Vec<(u64, f32)> {
        if query.len() != self.dim || k == 0 {
            return Vec::new();
        }
        let filter = |id: &usize| keep(*id as u64);
        self.hnsw
            .search_filter(query, k, ef.max(k), Some(&filter))
            .into_iter()
            .map(|n| (n.d_id as u64, 1.0 - n.distance))
            .collect()
    }

    /// Writes the dump files into `dir` (an empty directory); returns their names.
    pub fn dump(&self, dir: &Path) -> Result<[&'static str; 2], String> {
        let name = self
            .hnsw
            .file_dump(dir, BASENAME)
            .map_err(|e| format!("hnsw_rs dump: {e}"))?;
        if name != BASENAME {
            return Err(format!(
                "hnsw_rs wrote its dump as {name}, not {BASENAME} (the directory was not empty)"
            ));
        }
        Ok(FILES)
    }

    /// Loads a dump from `dir` whose files the caller has checked against their checksums.
    pub fn load(dir: &Path, dim: usize) -> Result<HnswRsGraph, String> {
        // The loaded graph borrows its loader (hnsw_rs can map the data file and point into it);
        // one small loader per load lives for the rest of the process.
        let loaded = catch_unwind(AssertUnwindSafe(|| {
            let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(dir, BASENAME)));
            io.load_hnsw::<f32, UnitCosine>()
        }))
        .map_err(|_| format!("hnsw_rs panicked loading {}", dir.display()))?
        .map_err(|e| format!("hnsw_rs could not load {}: {e}", dir.display()))?;
        let graph = HnswRsGraph { hnsw: loaded, dim };
        if graph.len() > 0 && graph.hnsw.get_point_indexation().get_data_dimension() != dim {
            return Err(format!(
                "hnsw_rs dump of {}-d points, manifest {dim}-d",
                graph.hnsw.get_point_indexation().get_data_dimension()
            ));
        }
        Ok(graph)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn unit(i: usize, dim: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..dim)
            .map(|j| ((i * 31 + j * 17) % 23) as f32 - 11.0 + (i % 5) as f32)
            .collect();
        crate::embed::normalize(&mut v);
        v
    }

    #[test]
    fn a_dump_reloads_after_its_checksums_and_a_changed_file_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let points: Vec<Vec<f32>> = (0..300).map(|i| unit(i, 8)).collect();
        let refs: Vec<(&[f32], u64)> = points
            .iter()
            .enumerate()
            .map(|(i, p)| (p.as_slice(), 1_000 + i as u64))
            .collect();
        let graph = HnswRsGraph::new(8, 16, 48, 300);
        graph.insert(&refs);
        assert_eq!(graph.len(), 300);
        // A point finds itself (or its duplicate: a distance that may round below 0).
        let found = graph.search(&points[7], 3, 32, &|_| true);
        assert!(found[0].1 > 0.999, "{found:?}");
        assert!(
            graph
                .search(&points[7], 3, 32, &|d| d.is_multiple_of(2))
                .iter()
                .all(|(d, _)| d.is_multiple_of(2))
        );

        let mut files = BTreeMap::new();
        for file in graph.dump(dir.path()).unwrap() {
            let bytes = std::fs::read(dir.path().join(file)).unwrap();
            files.insert(file.to_string(), blake3::hash(&bytes).to_hex().to_string());
            super::super::verified_read(dir.path(), file, &files).unwrap();
        }
        let back = HnswRsGraph::load(dir.path(), 8).unwrap();
        assert_eq!(back.len(), 300);
        for q in points.iter().step_by(37) {
            assert_eq!(
                back.search(q, 5, 32, &|_| true)[0],
                graph.search(q, 5, 32, &|_| true)[0]
            );
        }

        for file in FILES {
            let path = dir.path().join(file);
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
            let err = super::super::verified_read(dir.path(), file, &files).unwrap_err();
            assert!(
                err.contains(&path.display().to_string()) && err.contains("checksum mismatch"),
                "{err}"
            );
            std::fs::write(&path, &bytes).unwrap();
        }
    }
}
