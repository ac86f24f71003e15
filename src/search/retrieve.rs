//! The retrievers over the store and the indices: BM25 through the text index, CLIP and image
//! queries through the image graph (or, under a narrow filter, exactly from the stored
//! embeddings), their lists fused and turned into [`Hit`]s read from the store.
//!
//! The caller (the knowledge base) brings the indices up to date first; a retriever only reads.
//! Hits come from the store, never from an index (invariant 1 of ARCHITECTURE.md: the indices
//! hold nothing the store lacks).
//!
//! Not here: the query types and fusion (`search/mod.rs`), the indices themselves (`text/`,
//! `vector/`), which embedder a KB has and whether its vectors are current (`kb.rs`).

use std::collections::HashSet;
use std::sync::Arc;

use super::{Hit, Provenance, Query, QueryImage, Ranked, Retriever, SearchMode, fuse};
use crate::embed::Embedder;
use crate::error::{Error, Result};
use crate::ingest::DecodeLimits;
use crate::store::Store;
use crate::store::records::{EmbeddingKind, ImageId};
use crate::text::TextIndex;
use crate::vector::VectorIndex;

/// Filtered vector searches whose filter passes at most this many pairs are exact (embeddings
/// read from the store) rather than a graph walk.
const EXACT_SEARCH_LIMIT: usize = 2_000;

/// What a search reads: the store, the BM25 index, the image graph, and the embedder for
/// queries that need one.
pub(crate) struct Retrievers<'a> {
    pub store: &'a Store,
    pub text: &'a TextIndex,
    pub image: &'a VectorIndex,
    pub limits: &'a DecodeLimits,
    /// The embedder CLIP and image queries use, or why there is none to use (no model, or
    /// vectors from another model); asked only by the modes that need it.
    pub embedder: &'a dyn Fn(SearchMode) -> Result<Arc<dyn Embedder>>,
}

impl Retrievers<'_> {
    /// Runs `query`: each retriever its mode names, fused when there are two, then the hits
    /// read from the store (dropping pairs removed meanwhile and, when asked, all but the best
    /// hit of each entity).
    pub fn search(&self, query: &Query) -> Result<Vec<Hit>> {
        if query.k == 0 {
            return Ok(Vec::new());
        }
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
            SearchMode::Bm25 => vec![(Retriever::Bm25, 1.0, self.bm25(text()?, query, fetch)?)],
            SearchMode::Clip => vec![(Retriever::Clip, 1.0, self.clip(text()?, query, fetch)?)],
            SearchMode::Image => {
                let image = query
                    .image
                    .as_ref()
                    .ok_or_else(|| Error::Query("`image` search needs a query image".into()))?;
                vec![(Retriever::Image, 1.0, self.image(image, query, fetch)?)]
            }
            SearchMode::Hybrid => vec![
                (
                    Retriever::Bm25,
                    query.weights.bm25,
                    self.bm25(text()?, query, fetch)?,
                ),
                (
                    Retriever::Clip,
                    query.weights.clip,
                    self.clip(text()?, query, fetch)?,
                ),
            ],
        };
        let ranked: Vec<(ImageId, f32, Vec<Provenance>)> = if lists.len() == 1 {
            let (retriever, _, list) = &lists[0];
            list.iter()
                .enumerate()
                .map(|(i, (id, s))| {
                    (
                        *id,
                        *s,
                        vec![Provenance {
                            retriever: *retriever,
                            rank: i + 1,
                            score: *s,
                        }],
                    )
                })
                .collect()
        } else {
            fuse(&lists, query.weights.rrf_k)
        };
        self.hits(ranked, query)
    }

    /// The hits of a ranked list, read from the store, at most `query.k`.
    fn hits(
        &self,
        ranked: Vec<(ImageId, f32, Vec<Provenance>)>,
        query: &Query,
    ) -> Result<Vec<Hit>> {
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

    /// BM25 over caption, entity and tags, with the query's filters.
    fn bm25(&self, text: &str, query: &Query, fetch: usize) -> Result<Ranked> {
        let found = self.text.search(text, &query.filters, fetch)?;
        let rtxn = self.store.read()?;
        let mut out = Vec::with_capacity(found.len());
        for (doc, score) in found {
            if let Some(id) = self.store.id_of_doc(&rtxn, doc)? {
                out.push((id, score));
            }
        }
        Ok(out)
    }

    /// The text's CLIP embedding against the image embeddings.
    fn clip(&self, text: &str, query: &Query, fetch: usize) -> Result<Ranked> {
        let vector = (self.embedder)(query.mode)?.embed_text(text)?;
        self.vectors(self.image, &vector, true, query, fetch)
    }

    /// An image's embedding (a file's, or a stored pair's) against the image embeddings.
    fn image(&self, image: &QueryImage, query: &Query, fetch: usize) -> Result<Ranked> {
        let vector = match image {
            QueryImage::File(path) => (self.embedder)(query.mode)?
                .embed_image(&crate::ingest::read_image_file(path, self.limits)?.image)?,
            // A stored pair's vector is compared with the other stored vectors, all from one
            // model: no embedder needed (and none loaded).
            QueryImage::Pair(id) => {
                let rtxn = self.store.read()?;
                match self.store.embedding(&rtxn, id, EmbeddingKind::Image)? {
                    Some(v) => v,
                    None => {
                        (self.embedder)(query.mode)?;
                        return Err(Error::NotFound(id.to_hex()));
                    }
                }
            }
        };
        self.vectors(self.image, &vector, false, query, fetch)
    }

    /// A walk of `index`'s graph, or under a narrow filter an exact scan of the filter's pairs.
    fn vectors(
        &self,
        index: &VectorIndex,
        vector: &[f32],
        cross: bool,
        query: &Query,
        fetch: usize,
    ) -> Result<Ranked> {
        let rtxn = self.store.read()?;
        let found = if query.filters.is_empty() {
            index.search(vector, fetch, cross, &|_| true)?
        } else {
            // The filter's pairs come from the BM25 index's exact fields. A few of them are
            // scored exactly; the graph walk would pass through most of the graph to find them.
            let allowed = self.text.filtered_docs(&query.filters)?;
            if allowed.len() <= EXACT_SEARCH_LIMIT {
                self.exact(&rtxn, index.kind(), vector, &allowed, fetch)?
            } else {
                let allowed: HashSet<u64> = allowed.into_iter().collect();
                index.search(vector, fetch, cross, &|doc| allowed.contains(&doc))?
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
    fn exact(
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
}
