//! Generation from a knowledge base, for library users and the CLI: [`KnowledgeBase`] methods that
//! choose the neighbours of a prompt ([`NeighbourChoice`]: retrieved by BM25, CLIP or hybrid
//! search with an optional entity filter, or given by id), load their images and captions into a
//! [`GenerationRequest`], run any [`Generator`], and return the output with a
//! [`GenerationRecord`]: the prompt, the settings, the generator and the KB items used with their
//! retrieval scores (what `reimagen generate` writes next to its PNGs).
//!
//! Not here: the generator itself (any [`Generator`]; the model folder is opened by
//! [`super::open::open_generator`]), the search (the KB's [`KnowledgeBase::search`]).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{
    CancelToken, GenerateError, GenerationObserver, GenerationOutput, GenerationRequest, Generator,
    Guidance, Neighbour, SamplerKind,
};
use crate::error::{Error, Result, StoreError};
use crate::ingest::{DecodeLimits, decode_image};
use crate::kb::KnowledgeBase;
use crate::search::{self, Query, SearchMode};
use crate::store::records::ImageId;

/// Where the neighbours of a generation come from.
#[derive(Debug, Clone, PartialEq)]
pub enum NeighbourSource {
    /// The `k` best pairs a search for the prompt finds.
    Retrieve {
        /// How many neighbours at most (≥ 1).
        k: usize,
        /// The retriever: BM25, CLIP or hybrid (image search needs an image, not a prompt).
        mode: SearchMode,
        /// Only pairs of this entity.
        entity: Option<String>,
    },
    /// These pairs (full ids or unique prefixes of at least 4 hex digits), in this order.
    Ids(Vec<String>),
}

/// How to pick the neighbours of a generation, and what to do when there are none.
#[derive(Debug, Clone, PartialEq)]
pub struct NeighbourChoice {
    /// Where they come from.
    pub source: NeighbourSource,
    /// When retrieval finds nothing: generate from the prompt alone (with a warning in the
    /// record) instead of failing. False by default: a retrieval-augmented generator without
    /// neighbours is rarely what was meant.
    pub allow_none: bool,
    /// The weight of every neighbour in the neighbour attention (1 neutral).
    pub weight: f32,
    /// BM25 hits scoring below this share of the best hit's score are not used (0 keeps all
    /// `k`). A prompt that names an entity with few pairs would otherwise fill its last places
    /// with other entities that only share a word with it, and neighbours of the wrong entity
    /// make worse images than fewer neighbours (docs/entities.md). Only BM25: CLIP's cosines
    /// and hybrid's fused ranks are not on a scale where a share means the same.
    pub min_score_ratio: f32,
}

/// The default [`NeighbourChoice::min_score_ratio`]: on the emoji dataset's held-out prompts every
/// pair of the prompt's own entity scores at least 0.85 of the best hit (99% above 0.94), other
/// entities' pairs a median of 0.54 (docs/entities.md).
pub const DEFAULT_MIN_SCORE_RATIO: f32 = 0.75;

impl NeighbourChoice {
    /// The `k` best BM25 hits for the prompt, weight 1.
    pub fn retrieve(k: usize) -> Self {
        Self {
            source: NeighbourSource::Retrieve {
                k,
                mode: SearchMode::Bm25,
                entity: None,
            },
            allow_none: false,
            weight: 1.0,
            min_score_ratio: DEFAULT_MIN_SCORE_RATIO,
        }
    }

    /// These pairs (full ids or unique prefixes), in this order, weight 1.
    pub fn ids<S: Into<String>>(ids: impl IntoIterator<Item = S>) -> Self {
        Self {
            source: NeighbourSource::Ids(ids.into_iter().map(Into::into).collect()),
            allow_none: false,
            weight: 1.0,
            min_score_ratio: DEFAULT_MIN_SCORE_RATIO,
        }
    }

    /// Sets the retriever (ignored for [`NeighbourSource::Ids`]).
    #[must_use]
    pub fn mode(mut self, mode: SearchMode) -> Self {
        if let NeighbourSource::Retrieve { mode: m, .. } = &mut self.source {
            *m = mode;
        }
        self
    }

    /// Keeps only pairs of this entity (ignored for [`NeighbourSource::Ids`]).
    #[must_use]
    pub fn entity(mut self, entity: impl Into<String>) -> Self {
        if let NeighbourSource::Retrieve { entity: e, .. } = &mut self.source {
            *e = Some(entity.into());
        }
        self
    }

    /// Allows an empty retrieval (see [`NeighbourChoice::allow_none`]).
    #[must_use]
    pub fn allow_none(mut self, allow: bool) -> Self {
        self.allow_none = allow;
        self
    }

    /// Sets [`NeighbourChoice::min_score_ratio`].
    #[must_use]
    pub fn min_score_ratio(mut self, ratio: f32) -> Self {
        self.min_score_ratio = ratio;
        self
    }

    /// Sets every neighbour's weight.
    #[must_use]
    pub fn weight(mut self, weight: f32) -> Self {
        self.weight = weight;
        self
    }
}

/// A KB pair chosen as a neighbour (no image yet: what `--dry-run` shows).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChosenNeighbour {
    /// The pair's id (64 hex digits in JSON).
    #[serde(serialize_with = "search::hex_id")]
    pub id: ImageId,
    /// Its caption (the neighbour's text condition).
    pub caption: String,
    /// Its entity.
    pub entity: Option<String>,
    /// Its weight in the neighbour attention.
    pub weight: f32,
    /// The retrieval score (the fused score in hybrid mode); none for a pair given by id.
    pub score: Option<f32>,
    /// Every retriever that found it, with rank and score; empty for a pair given by id.
    pub retrievers: Vec<search::Provenance>,
}

/// The neighbours chosen for a prompt, and what the caller should know about them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NeighbourSelection {
    /// Best first (retrieval) or in the order given (ids).
    pub neighbours: Vec<ChosenNeighbour>,
    /// E.g. that retrieval found nothing and the generation runs on the prompt alone.
    pub warnings: Vec<String>,
}

/// A stage of the cascade, as the record names it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageRecord {
    /// The stage's name (from cascade.json).
    pub name: String,
    /// Its resolution.
    pub resolution: u32,
}

/// Everything needed to tell where a generated image came from: serialized, it is the
/// provenance JSON `reimagen generate` writes next to the image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationRecord {
    /// The prompt.
    pub prompt: String,
    /// The negative prompt, if any.
    pub negative_prompt: Option<String>,
    /// The generator ([`Generator::name`], e.g. its model folder).
    pub generator: String,
    /// The guidance mode and weights.
    pub guidance: Guidance,
    /// The sampler.
    pub sampler: SamplerKind,
    /// Steps per stage (one entry: every stage).
    pub steps: Vec<usize>,
    /// The seed of all noise.
    pub seed: u64,
    /// Images generated at once.
    pub batch_size: usize,
    /// The search that found the neighbours; none when they were given by id.
    pub retrieval: Option<RetrievalRecord>,
    /// The KB pairs the generation was conditioned on, with captions, weights and scores.
    pub neighbours: Vec<ChosenNeighbour>,
    /// The stages that ran, lowest resolution first.
    pub stages: Vec<StageRecord>,
    /// What the caller should know (e.g. no neighbours were found).
    pub warnings: Vec<String>,
}

/// The search that found a generation's neighbours.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetrievalRecord {
    /// The retriever.
    pub mode: SearchMode,
    /// How many were asked for.
    pub k: usize,
    /// The entity filter, if any.
    pub entity: Option<String>,
    /// BM25 hits below this share of the best one's score were not used.
    pub min_score_ratio: f32,
}

/// The leading `items` whose score is at least `ratio` times the first one's (all of them for a
/// ratio of 0, none for no items); `score` reads an item's score. Items come best first.
pub fn near_best<T>(items: &[T], ratio: f32, score: impl Fn(&T) -> f32) -> usize {
    let Some(best) = items.first().map(&score) else {
        return 0;
    };
    items
        .iter()
        .take_while(|i| score(i) >= ratio * best)
        .count()
}

/// Checks that `ratio` is a share of the best score, 0 ≤ ratio ≤ 1 (what [`near_best`] and
/// [`NeighbourChoice::min_score_ratio`] take).
///
/// # Errors
/// [`GenerateError::InvalidRequest`] naming `min_score_ratio`.
pub fn check_min_score_ratio(ratio: f32) -> std::result::Result<(), GenerateError> {
    if (0.0..=1.0).contains(&ratio) {
        Ok(())
    } else {
        Err(GenerateError::InvalidRequest {
            what: "min_score_ratio",
            reason: format!("{ratio} is not a share of the best score between 0 and 1"),
        })
    }
}

/// What [`KnowledgeBase::generate`] returns.
#[derive(Debug, Clone)]
pub struct KbGeneration {
    /// The images per stage and the generator's own provenance.
    pub output: GenerationOutput,
    /// The record of the generation, naming the KB pairs used.
    pub record: GenerationRecord,
}

/// A PNG written by [`KbGeneration::write_images`], as the provenance JSON lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WrittenImage {
    /// Where it was written.
    pub path: PathBuf,
    /// The stage it comes from.
    pub stage: String,
    /// Its resolution.
    pub resolution: u32,
    /// The batch row (0-based).
    pub row: usize,
    /// Whether it is the cascade's result (the last stage).
    #[serde(rename = "final")]
    pub final_stage: bool,
}

/// The provenance file [`KbGeneration::write`] puts next to the images: the record, the model
/// folder, the device and the files written.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProvenanceFile {
    /// Where it was written (`NAME.json`; not part of the JSON).
    #[serde(skip)]
    pub path: PathBuf,
    /// Prompt, settings, generator, neighbours, stages, warnings.
    #[serde(flatten)]
    pub record: GenerationRecord,
    /// The generator model folder.
    pub model: PathBuf,
    /// The device it ran on.
    pub device: String,
    /// The PNGs written.
    pub files: Vec<WrittenImage>,
}

impl KbGeneration {
    /// Writes the images ([`KbGeneration::write_images`]) and, as `out` with the extension
    /// `.json`, the provenance: the record plus `model`, `device` and `files`.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file that could not be written.
    pub fn write(
        &self,
        out: &Path,
        all_stages: bool,
        model: &Path,
        device: &str,
    ) -> Result<ProvenanceFile> {
        let files = self.write_images(out, all_stages)?;
        let provenance = ProvenanceFile {
            path: out.with_extension("json"),
            record: self.record.clone(),
            model: model.to_path_buf(),
            device: device.to_string(),
            files,
        };
        let text = serde_json::to_string_pretty(&provenance).map_err(std::io::Error::other);
        text.and_then(|t| std::fs::write(&provenance.path, t + "\n"))
            .map_err(|source| Error::Io {
                path: provenance.path.clone(),
                source,
            })?;
        Ok(provenance)
    }

    /// Writes the last stage's images as PNG to `out` (`NAME-1.png`, `NAME-2.png`, … beside
    /// it when the batch holds several) and, with `all_stages`, every lower stage's images as
    /// `NAME.STAGE.png` (`NAME-1.STAGE.png`, …). Returns what was written, in that order.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file that could not be written.
    pub fn write_images(&self, out: &Path, all_stages: bool) -> Result<Vec<WrittenImage>> {
        let stem = out
            .file_stem()
            .map_or_else(|| "generated".into(), |s| s.to_string_lossy().into_owned());
        let parent = out.parent().unwrap_or(Path::new(""));
        let last = self.output.stages.len().saturating_sub(1);
        let mut written = Vec::new();
        for (index, stage) in self.output.stages.iter().enumerate() {
            let final_stage = index == last;
            if !final_stage && !all_stages {
                continue;
            }
            for (row, image) in stage.images.iter().enumerate() {
                let numbered = if stage.images.len() > 1 {
                    format!("{stem}-{}", row + 1)
                } else {
                    stem.clone()
                };
                let name = if final_stage {
                    format!("{numbered}.png")
                } else {
                    format!("{numbered}.{}.png", stage.name)
                };
                let path = parent.join(name);
                image
                    .save_with_format(&path, image::ImageFormat::Png)
                    .map_err(|e| Error::Io {
                        path: path.clone(),
                        source: match e {
                            image::ImageError::IoError(io) => io,
                            other => std::io::Error::other(other),
                        },
                    })?;
                written.push(WrittenImage {
                    path,
                    stage: stage.name.clone(),
                    resolution: stage.resolution,
                    row,
                    final_stage,
                });
            }
        }
        Ok(written)
    }
}

fn invalid(what: &'static str, reason: String) -> Error {
    GenerateError::InvalidRequest { what, reason }.into()
}

impl KnowledgeBase {
    /// Chooses the neighbours of a generation for `prompt`, without loading any image: what
    /// `reimagen generate --dry-run` prints.
    ///
    /// # Errors
    /// - [`GenerateError::InvalidRequest`] for impossible choices (k = 0, the image search
    ///   mode, no ids, an id given twice, a weight that is negative or not finite) and for an
    ///   empty retrieval unless [`NeighbourChoice::allow_none`];
    /// - [`Error::NotFound`] / [`Error::Ambiguous`] for an id that names no pair or several;
    /// - the search's errors (e.g. CLIP mode without an embedder).
    pub fn choose_neighbours(
        &self,
        prompt: &str,
        choice: &NeighbourChoice,
    ) -> Result<NeighbourSelection> {
        if !(choice.weight.is_finite() && choice.weight >= 0.0) {
            return Err(invalid(
                "neighbours.weight",
                format!("{} is not a finite weight ≥ 0", choice.weight),
            ));
        }
        check_min_score_ratio(choice.min_score_ratio)?;
        let mut warnings = Vec::new();
        let neighbours = match &choice.source {
            NeighbourSource::Retrieve { k, mode, entity } => {
                if *k == 0 {
                    return Err(invalid(
                        "k",
                        "must be ≥ 1 (the number of neighbours to retrieve)".into(),
                    ));
                }
                if *mode == SearchMode::Image {
                    return Err(invalid(
                        "mode",
                        "`image` search needs a query image; neighbours are retrieved for the prompt with bm25, clip or hybrid".into(),
                    ));
                }
                if prompt.trim().is_empty() {
                    return Err(invalid("prompt", "is empty".into()));
                }
                let mut query = Query::text(prompt).mode(*mode).k(*k);
                if let Some(entity) = entity {
                    query = query.entity(entity.clone());
                }
                let mut hits = self.search(&query)?;
                if *mode == SearchMode::Bm25 {
                    let kept = near_best(&hits, choice.min_score_ratio, |h| h.score);
                    if kept < hits.len() {
                        warnings.push(format!(
                            "{} of {} retrieved pairs scored below {} of the best hit and were left out",
                            hits.len() - kept,
                            hits.len(),
                            choice.min_score_ratio
                        ));
                        hits.truncate(kept);
                    }
                }
                if hits.is_empty() {
                    let filter = entity
                        .as_ref()
                        .map(|e| format!(" among the pairs of entity `{e}`"))
                        .unwrap_or_default();
                    let what = format!("{mode} search for {prompt:?} found no pairs{filter}");
                    if !choice.allow_none {
                        return Err(invalid(
                            "neighbours",
                            format!(
                                "{what}; give neighbours by id, change the prompt or the filter, or allow generating without neighbours"
                            ),
                        ));
                    }
                    warnings.push(format!("{what}: generating from the prompt alone"));
                }
                hits.into_iter()
                    .map(|h| ChosenNeighbour {
                        id: h.id,
                        caption: h.caption,
                        entity: h.entity,
                        weight: choice.weight,
                        score: Some(h.score),
                        retrievers: h.provenance,
                    })
                    .collect()
            }
            NeighbourSource::Ids(ids) => {
                if ids.is_empty() {
                    return Err(invalid(
                        "neighbours",
                        "no ids given; give at least one, or retrieve them".into(),
                    ));
                }
                let mut seen = HashSet::new();
                let mut chosen = Vec::with_capacity(ids.len());
                for given in ids {
                    let id = self.resolve(given)?;
                    if !seen.insert(id) {
                        return Err(invalid(
                            "neighbours",
                            format!("pair {} is given twice", id.short()),
                        ));
                    }
                    let pair = self
                        .get(&id)?
                        .ok_or_else(|| Error::NotFound(given.clone()))?;
                    chosen.push(ChosenNeighbour {
                        id,
                        caption: pair.caption,
                        entity: pair.entity,
                        weight: choice.weight,
                        score: None,
                        retrievers: Vec::new(),
                    });
                }
                chosen
            }
        };
        Ok(NeighbourSelection {
            neighbours,
            warnings,
        })
    }

    /// The chosen neighbours as the generator takes them: each pair's image decoded from the
    /// store, with its caption, weight and score; ids are the pairs' full hex ids.
    ///
    /// # Errors
    /// [`Error::NotFound`] when a pair was removed meanwhile; [`StoreError::Corrupt`] when a
    /// stored image does not decode.
    pub fn neighbour_images(&self, chosen: &[ChosenNeighbour]) -> Result<Vec<Neighbour>> {
        chosen
            .iter()
            .map(|c| {
                let bytes = self
                    .image_bytes(&c.id)?
                    .ok_or_else(|| Error::NotFound(c.id.to_hex()))?;
                // Stored images passed the decode limits when added; a generous limit here only
                // guards against a damaged store.
                let decoded =
                    decode_image(Path::new(&c.id.to_hex()), bytes, &DecodeLimits::default())
                        .map_err(|e| StoreError::Corrupt {
                            table: "images",
                            key: c.id.to_hex(),
                            reason: e.to_string(),
                        })?;
                Ok(Neighbour {
                    id: c.id.to_hex(),
                    image: decoded.image.to_rgb8(),
                    caption: c.caption.clone(),
                    weight: c.weight,
                    score: c.score,
                })
            })
            .collect()
    }

    /// `request` with its neighbours chosen from this KB (any neighbours it held are replaced),
    /// and the selection they came from.
    ///
    /// # Errors
    /// Those of [`GenerationRequest::validate`] (checked first, before any search), of
    /// [`KnowledgeBase::choose_neighbours`] and of [`KnowledgeBase::neighbour_images`].
    pub fn generation_request(
        &self,
        mut request: GenerationRequest,
        choice: &NeighbourChoice,
    ) -> Result<(GenerationRequest, NeighbourSelection)> {
        request.neighbours.clear();
        request.validate()?;
        let selection = self.choose_neighbours(&request.prompt, choice)?;
        request.neighbours = self.neighbour_images(&selection.neighbours)?;
        Ok((request, selection))
    }

    /// Generates with `generator` for `request` (prompt and settings; its neighbours are
    /// replaced by those `choice` picks from this KB), reporting progress to `observer` and
    /// stopping once `cancel` is set. The record names the generator, the settings and the KB
    /// pairs used with their scores.
    ///
    /// # Errors
    /// Those of [`KnowledgeBase::generation_request`]; the generator's errors as
    /// [`Error::Generate`] (among them [`GenerateError::Cancelled`]).
    pub fn generate(
        &self,
        generator: &dyn Generator,
        request: GenerationRequest,
        choice: &NeighbourChoice,
        observer: &mut dyn GenerationObserver,
        cancel: &CancelToken,
    ) -> Result<KbGeneration> {
        let (request, selection) = self.generation_request(request, choice)?;
        let output = generator.generate(&request, observer, cancel)?;
        let record = GenerationRecord {
            prompt: request.prompt.clone(),
            negative_prompt: request.negative_prompt.clone(),
            generator: generator.name().to_string(),
            guidance: request.guidance,
            sampler: request.sampler,
            steps: request.steps.clone(),
            seed: request.seed,
            batch_size: request.batch_size,
            retrieval: retrieval_record(choice),
            neighbours: selection.neighbours,
            stages: output
                .stages
                .iter()
                .map(|s| StageRecord {
                    name: s.name.clone(),
                    resolution: s.resolution,
                })
                .collect(),
            warnings: selection.warnings,
        };
        Ok(KbGeneration { output, record })
    }
}

/// The search settings of `choice`, for the record; none for ids.
fn retrieval_record(choice: &NeighbourChoice) -> Option<RetrievalRecord> {
    match &choice.source {
        NeighbourSource::Retrieve { k, mode, entity } => Some(RetrievalRecord {
            mode: *mode,
            k: *k,
            entity: entity.clone(),
            min_score_ratio: choice.min_score_ratio,
        }),
        NeighbourSource::Ids(_) => None,
    }
}
