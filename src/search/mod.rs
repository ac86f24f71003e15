//! Query types, hits with provenance, reciprocal-rank fusion, and (`retrieve.rs`) the
//! retrievers that run a query over the store and the indices.
//!
//! Not here: the indices themselves (`text/`, `vector/`), keeping them current (`kb.rs`).

mod retrieve;

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::store::records::ImageId;
use crate::text::Filters;

pub(crate) use retrieve::Retrievers;

/// How a query retrieves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    /// BM25 over caption, entity and tags.
    #[default]
    Bm25,
    /// CLIP: the text's embedding against image embeddings.
    Clip,
    /// CLIP: an image's embedding against image embeddings.
    Image,
    /// Reciprocal-rank fusion of BM25 and CLIP.
    Hybrid,
}

impl SearchMode {
    /// Every mode, in the order of the command line's help (whose parser names them as
    /// [`Display`](std::fmt::Display) writes them: `bm25`, `clip`, `image`, `hybrid`).
    pub const ALL: [SearchMode; 4] = [
        SearchMode::Bm25,
        SearchMode::Clip,
        SearchMode::Image,
        SearchMode::Hybrid,
    ];
}

impl std::str::FromStr for SearchMode {
    type Err = String;

    /// A mode by its name (`bm25`, `clip`, `image`, `hybrid`), as [`Display`](std::fmt::Display) writes it.
    fn from_str(s: &str) -> Result<SearchMode, String> {
        SearchMode::ALL
            .into_iter()
            .find(|m| m.to_string() == s)
            .ok_or_else(|| format!("unknown search mode `{s}` (bm25, clip, image or hybrid)"))
    }
}

impl std::fmt::Display for SearchMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SearchMode::Bm25 => "bm25",
            SearchMode::Clip => "clip",
            SearchMode::Image => "image",
            SearchMode::Hybrid => "hybrid",
        })
    }
}

/// One retriever that contributed to a hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Retriever {
    /// tantivy BM25.
    Bm25,
    /// Text → image embeddings.
    Clip,
    /// Image → image embeddings.
    Image,
}

/// Weights of the retrievers in hybrid fusion.
///
/// By default both weigh 1.0 and the RRF constant is 60 (the value of the original RRF paper).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FusionWeights {
    /// Weight of the BM25 list.
    pub bm25: f32,
    /// Weight of the CLIP list.
    pub clip: f32,
    /// The `k` of RRF: `score = Σ weight / (k + rank)`.
    pub rrf_k: f32,
}

impl Default for FusionWeights {
    fn default() -> Self {
        FusionWeights {
            bm25: 1.0,
            clip: 1.0,
            rrf_k: 60.0,
        }
    }
}

/// What the image of an image query is.
#[derive(Clone, Debug, PartialEq)]
pub enum QueryImage {
    /// A file on disk.
    File(PathBuf),
    /// A pair already in the KB.
    Pair(ImageId),
}

/// A search request. Build one with [`Query::text`] or [`Query::image`].
///
/// By default: BM25 mode for text queries, `k` = 10, no filters, no per-entity de-duplication,
/// no similarity floor, and equal fusion weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    /// The query text (BM25, CLIP and hybrid modes).
    pub text: Option<String>,
    /// The query image (image mode).
    pub image: Option<QueryImage>,
    /// The retrieval mode.
    pub mode: SearchMode,
    /// How many hits to return.
    pub k: usize,
    /// Entity and tag filters.
    pub filters: Filters,
    /// Keep only the best hit of each entity.
    pub dedup_entity: bool,
    /// Drop CLIP hits whose cosine similarity is below this (CLIP search always finds something).
    pub min_similarity: Option<f32>,
    /// Hybrid fusion weights.
    pub weights: FusionWeights,
}

impl Query {
    /// A text query in BM25 mode.
    #[must_use]
    pub fn text(text: impl Into<String>) -> Query {
        Query {
            text: Some(text.into()),
            image: None,
            mode: SearchMode::Bm25,
            k: 10,
            filters: Filters::default(),
            dedup_entity: false,
            min_similarity: None,
            weights: FusionWeights::default(),
        }
    }

    /// An image query (image → image).
    #[must_use]
    pub fn image(image: QueryImage) -> Query {
        Query {
            text: None,
            image: Some(image),
            mode: SearchMode::Image,
            ..Query::text("")
        }
    }

    /// Sets the mode.
    #[must_use]
    pub fn mode(mut self, mode: SearchMode) -> Query {
        self.mode = mode;
        self
    }

    /// Sets how many hits to return.
    #[must_use]
    pub fn k(mut self, k: usize) -> Query {
        self.k = k;
        self
    }

    /// Keeps only pairs of this entity.
    #[must_use]
    pub fn entity(mut self, entity: impl Into<String>) -> Query {
        self.filters.entity = Some(entity.into());
        self
    }

    /// Keeps only pairs with this tag (call again for more tags: all must match).
    #[must_use]
    pub fn tag(mut self, tag: impl Into<String>) -> Query {
        self.filters.tags.push(tag.into());
        self
    }

    /// Keeps only the best hit per entity.
    #[must_use]
    pub fn dedup_entity(mut self, on: bool) -> Query {
        self.dedup_entity = on;
        self
    }

    /// Sets the CLIP similarity floor.
    #[must_use]
    pub fn min_similarity(mut self, floor: f32) -> Query {
        self.min_similarity = Some(floor);
        self
    }

    /// Sets the hybrid fusion weights.
    #[must_use]
    pub fn weights(mut self, weights: FusionWeights) -> Query {
        self.weights = weights;
        self
    }
}

/// How one retriever ranked a hit.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Provenance {
    /// The retriever.
    pub retriever: Retriever,
    /// 1-based rank in that retriever's list.
    pub rank: usize,
    /// That retriever's own score (BM25 score, or cosine similarity).
    pub score: f32,
}

/// One search result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Hit {
    /// The pair's id (64 hex digits in JSON).
    #[serde(serialize_with = "crate::search::hex_id")]
    pub id: ImageId,
    /// Its caption.
    pub caption: String,
    /// Its entity.
    pub entity: Option<String>,
    /// Its tags.
    pub tags: Vec<String>,
    /// Files known to hold its image.
    pub paths: Vec<String>,
    /// The fused score (for a single retriever, its own score).
    pub score: f32,
    /// Every retriever that found it, with rank and score.
    pub provenance: Vec<Provenance>,
}

pub(crate) fn hex_id<S: serde::Serializer>(id: &ImageId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&id.to_hex())
}

/// A retriever's ranked list: ids with that retriever's scores, best first.
pub type Ranked = Vec<(ImageId, f32)>;

/// Reciprocal-rank fusion of ranked lists: each list adds `weight / (rrf_k + rank)` to the ids it
/// holds. Returns ids with fused score and provenance, best first; ties keep the earlier list's order.
pub fn fuse(
    lists: &[(Retriever, f32, Ranked)],
    rrf_k: f32,
) -> Vec<(ImageId, f32, Vec<Provenance>)> {
    let mut acc: HashMap<ImageId, (f32, Vec<Provenance>, usize)> = HashMap::new();
    let mut order = 0;
    for (retriever, weight, list) in lists {
        for (i, (id, score)) in list.iter().enumerate() {
            let rank = i + 1;
            let entry = acc.entry(*id).or_insert_with(|| {
                order += 1;
                (0.0, Vec::new(), order)
            });
            entry.0 += weight / (rrf_k + rank as f32);
            entry.1.push(Provenance {
                retriever: *retriever,
                rank,
                score: *score,
            });
        }
    }
    let mut out: Vec<_> = acc.into_iter().collect();
    out.sort_by(|a, b| b.1.0.total_cmp(&a.1.0).then(a.1.2.cmp(&b.1.2)));
    out.into_iter()
        .map(|(id, (score, prov, _))| (id, score, prov))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ImageId {
        ImageId([n; 32])
    }

    #[test]
    fn fusion_rewards_agreement_and_keeps_provenance() {
        let bm25 = vec![(id(1), 9.0), (id(2), 5.0)];
        let clip = vec![(id(2), 0.9), (id(3), 0.8)];
        let fused = fuse(
            &[(Retriever::Bm25, 1.0, bm25), (Retriever::Clip, 1.0, clip)],
            60.0,
        );
        assert_eq!(fused[0].0, id(2), "found by both lists, so first");
        assert_eq!(fused[0].2.len(), 2);
        assert_eq!(fused.len(), 3);
        assert!((fused[0].1 - (1.0 / 62.0 + 1.0 / 61.0)).abs() < 1e-6);
    }

    #[test]
    fn every_mode_parses_from_its_name() {
        for mode in SearchMode::ALL {
            assert_eq!(mode.to_string().parse::<SearchMode>(), Ok(mode));
        }
        assert!("bm-25".parse::<SearchMode>().unwrap_err().contains("bm-25"));
    }

    #[test]
    fn fusion_weights_shift_the_order() {
        let bm25 = vec![(id(1), 9.0)];
        let clip = vec![(id(2), 0.9)];
        let fused = fuse(
            &[(Retriever::Bm25, 0.5, bm25), (Retriever::Clip, 2.0, clip)],
            60.0,
        );
        assert_eq!(fused[0].0, id(2));
    }
}
