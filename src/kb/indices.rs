//! The derived indices of a KB (BM25 and the two graphs) as one unit: fed by the writer's
//! indexer thread after every commit, dumped, rebuilt, and checked against the store.
//!
//! Not here: the indices themselves (`text/`, `vector/`), the writer that feeds them
//! (`store::writer`), searching them (`search/retrieve.rs`).

use std::sync::Arc;

use rayon::prelude::*;

use super::CheckReport;
use crate::error::Result;
use crate::store::Store;
use crate::store::records::{Change, EmbeddingKind, ImageId};
use crate::store::writer::ChangeSink;
use crate::text::TextIndex;
use crate::vector::VectorIndex;

/// The derived indices, fed by the writer after every commit.
pub(crate) struct Indices {
    pub text: TextIndex,
    pub image: VectorIndex,
    pub text_vectors: VectorIndex,
}

impl Indices {
    pub(super) fn dump(&self, store: &Store, force: bool) -> Result<()> {
        self.image.dump(store, force)?;
        self.text_vectors.dump(store, force)
    }

    pub(super) fn rebuild(&self, store: &Store) -> Result<()> {
        self.text.rebuild(store)?;
        self.image.rebuild(store)?;
        self.text_vectors.rebuild(store)?;
        self.dump(store, true)
    }

    /// Compares every index with the store (invariant 1 of ARCHITECTURE.md: the store is the
    /// truth): the docs table, the image bytes, the BM25 documents and sequence, each graph's
    /// live points and sequence; a mapped graph file is verified in full (invariant 6).
    pub(super) fn check(&self, store: &Store) -> Result<CheckReport> {
        let rtxn = store.read()?;
        let last_seq = store.last_seq(&rtxn)?;
        let pairs = store.all_pairs(&rtxn)?;
        let mut report = CheckReport {
            pairs: pairs.len() as u64,
            problems: Vec::new(),
        };
        let store_ids: Vec<ImageId> = pairs.iter().map(|p| p.id).collect();
        for pair in &pairs {
            if store.id_of_doc(&rtxn, pair.doc)? != Some(pair.id) {
                report.problems.push(format!(
                    "pair {} has doc {} but the docs table disagrees",
                    pair.id.short(),
                    pair.doc
                ));
            }
            if store.image_bytes(&rtxn, &pair.id)?.is_none() {
                report
                    .problems
                    .push(format!("pair {} has no image bytes", pair.id.short()));
            }
        }
        let text_ids = self.text.all_ids()?;
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
        let text_seq = self.text.applied_seq()?;
        if text_seq != last_seq {
            report.problems.push(format!(
                "text index is at sequence {text_seq}, store at {last_seq}"
            ));
        }
        for (name, index, kind) in [
            ("image", &self.image, EmbeddingKind::Image),
            ("text-vector", &self.text_vectors, EmbeddingKind::Text),
        ] {
            let mut expected = Vec::new();
            for pair in &pairs {
                if store.embedding(&rtxn, &pair.id, kind)?.is_some() {
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
            if let Err(e) = index.verify() {
                report.problems.push(format!("{name} index: {e}"));
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
}

pub(super) struct Sink(pub(super) Arc<Indices>);

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
