//! `reimagen bench entities` — EntityDrawBench-mini (design.md §7, issue 11): does retrieval let
//! the generator draw entities it never saw?
//!
//! For each sampled held-out entity e and each style s with a rendition of e: the KB holds the
//! training renditions and e's renditions in the other styles; the prompt is `"e in s style"`;
//! every arm generates (the same seeds in every arm, so the arms are paired) and is scored
//! against the held-out rendition (e, s). The arms: retrieval by BM25 at each k, by CLIP, no
//! retrieval (neighbours dropped), and copy-the-neighbour (the top retrieved image, resized).
//! The measures: CLIP-I (generated vs target image embeddings), CLIP-T (generated image vs the
//! prompt), 8×8 colour-layout similarity and foreground-silhouette IoU ([`metrics`]); each a mean
//! over entities with a 95% bootstrap interval. Before the arms, a calibration on the held-out
//! renditions themselves checks that each measure scores "same entity, other style" above
//! "other entity, same style" and above a flat grey image, and flags any that does not.
//!
//! The KB is made once per output folder with the product's own `import` (of the dataset's
//! `64/train` and `64/heldout`, embedded by the CLIP given) and reused while the dataset and the
//! CLIP are unchanged. Holding all held-out renditions in one KB, each case keeps only the hits
//! its protocol allows (train renditions, and e's own in other styles); a pair whose image is the
//! target's own bytes is never used.
//!
//! Not here: the metrics' arithmetic ([`metrics`]), the η plot ([`plot`]), the contact sheet
//! (`crate::demo::sheet`), the generator (`crate::generate`).

pub mod metrics;
pub mod plot;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use image::{DynamicImage, Rgb, RgbImage};
use rand::SeedableRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::dataset::{ManifestEntry, Split, read_manifest};
use crate::demo::sheet::{SheetRow, contact_sheet};
use crate::embed::Embedder;
use crate::error::{Error, Result, io_err};
use crate::generate::{
    CancelToken, ChosenNeighbour, GenerateError, GenerationRequest, Generator, Guidance, near_best,
};
use crate::kb::KnowledgeBase;
use crate::search::{Query, SearchMode};
use metrics::{Interval, bootstrap, cosine, layout_similarity, silhouette_iou};

/// The image size of the dataset the benchmark reads (targets, KB, calibration).
pub const DATASET_SIZE: &str = "64";
/// Held-out entities sampled by default: sized so that the default run of the CPU cascade
/// (32×32 base + 64×64 SR, 20 steps; 4 generating arms × 2 seeds ≈ 8 generations per case,
/// about 6.4 cases per entity, about 2.8 s of CPU per generation measured on a random-weight
/// cascade of those configs) plus the KB (about 90 s of CPU) stays under about 30 minutes on 2
/// cores.
pub const DEFAULT_ENTITIES: usize = 10;
/// The η values of the sweep.
pub const ETA_SWEEP: [f32; 5] = [0.0, 0.25, 0.5, 0.75, 1.0];
/// Other-entity renditions each calibration target is compared with.
const OTHER_ENTITIES: usize = 3;
/// Rows of the contact sheet: this many best and this many worst cases.
const SHEET_CASES: usize = 4;

/// How many held-out entities to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntitySample {
    /// A seeded sample of this many.
    Count(usize),
    /// Every held-out entity.
    All,
}

impl FromStr for EntitySample {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "all" => Ok(EntitySample::All),
            n => match n.parse::<usize>() {
                Ok(0) | Err(_) => Err(format!("`{s}` is not a number of entities ≥ 1 or `all`")),
                Ok(n) => Ok(EntitySample::Count(n)),
            },
        }
    }
}

/// A share of the entities one process runs, so that several processes can split a run that
/// shares one `--out` folder (the case cache): shard `index` of `count` takes every `count`-th
/// entity of the sample, from the `index`-th. A run of the whole sample afterwards reads every
/// case back and writes the report of all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// Which share (from 0).
    pub index: usize,
    /// Of how many.
    pub count: usize,
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("`{s}` is not a shard I/N with 0 ≤ I < N (e.g. 0/2 and 1/2)");
        let (i, n) = s.trim().split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

/// The held-out entities a run takes: all, or a sample of `n` seeded by `seed`, in name order;
/// of those only `shard`'s share.
pub fn sample_entities(
    held_out: &[String],
    sample: &EntitySample,
    seed: u64,
    shard: Option<Shard>,
) -> Vec<String> {
    let mut out = held_out.to_vec();
    if let EntitySample::Count(n) = *sample {
        out.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        out.truncate(n);
    }
    out.sort();
    if let Some(shard) = shard {
        out = out
            .into_iter()
            .skip(shard.index)
            .step_by(shard.count)
            .collect();
    }
    out
}

/// What an arm does with the neighbours.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ArmKind {
    /// Generate with the top `k` neighbours the retriever finds.
    Retrieval {
        /// BM25 or CLIP.
        mode: SearchMode,
        /// Neighbours.
        k: usize,
    },
    /// Generate with no neighbours (all dropped).
    NoRetrieval,
    /// No generation: the top neighbour the retriever finds, resized, is the answer.
    Copy {
        /// The retriever.
        mode: SearchMode,
    },
}

/// One arm of the benchmark.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Arm {
    /// Its name in the tables (`bm25-k2`, `clip-k2`, `none`, `copy`, `eta-0.25`).
    pub name: String,
    /// What it does.
    #[serde(flatten)]
    pub kind: ArmKind,
    /// The interleaved guidance's η it generates with.
    pub eta: f32,
}

impl Arm {
    fn generates(&self) -> bool {
        !matches!(self.kind, ArmKind::Copy { .. })
    }
}

/// The arms `names` asks for (comma-separated in the CLI): `bm25` expands to one arm per k,
/// `clip` to the first k only (the retrievers are compared at one k), `bm25-kN` / `clip-kN` name
/// one k, `none` drops the neighbours, `copy` returns the top BM25 neighbour. Duplicates are
/// dropped, the order kept.
///
/// # Errors
/// [`GenerateError::InvalidRequest`] for an unknown name, an empty list, or k = 0.
pub fn parse_arms(names: &[String], ks: &[usize], eta: f32) -> Result<Vec<Arm>> {
    let invalid =
        |what, reason: String| -> Error { GenerateError::InvalidRequest { what, reason }.into() };
    if ks.is_empty() || ks.contains(&0) {
        return Err(invalid("k", "give one or more neighbour counts ≥ 1".into()));
    }
    let retrieval = |mode: SearchMode, k: usize| Arm {
        name: format!("{mode}-k{k}"),
        kind: ArmKind::Retrieval { mode, k },
        eta,
    };
    let mut arms: Vec<Arm> = Vec::new();
    for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let mut add: Vec<Arm> = match name {
            "bm25" => ks.iter().map(|&k| retrieval(SearchMode::Bm25, k)).collect(),
            "clip" => vec![retrieval(SearchMode::Clip, ks[0])],
            "none" => vec![Arm {
                name: "none".into(),
                kind: ArmKind::NoRetrieval,
                eta,
            }],
            "copy" => vec![Arm {
                name: "copy".into(),
                kind: ArmKind::Copy {
                    mode: SearchMode::Bm25,
                },
                eta,
            }],
            other => {
                let parsed = other.split_once("-k").and_then(|(mode, k)| {
                    let mode = match mode {
                        "bm25" => SearchMode::Bm25,
                        "clip" => SearchMode::Clip,
                        _ => return None,
                    };
                    k.parse::<usize>()
                        .ok()
                        .filter(|&k| k > 0)
                        .map(|k| (mode, k))
                });
                match parsed {
                    Some((mode, k)) => vec![retrieval(mode, k)],
                    None => {
                        return Err(invalid(
                            "arms",
                            format!(
                                "unknown arm `{other}`; arms are bm25, clip, bm25-kN, clip-kN, none, copy"
                            ),
                        ));
                    }
                }
            }
        };
        add.retain(|a| !arms.iter().any(|b| b.name == a.name));
        arms.extend(add);
    }
    if arms.is_empty() {
        return Err(invalid("arms", "no arm given".into()));
    }
    Ok(arms)
}

/// Settings of an entity benchmark run.
#[derive(Clone)]
pub struct EntitiesOptions {
    /// The generator model folder; `None` runs the calibration alone.
    pub model: Option<PathBuf>,
    /// The CLIP that retrieves (the KB's embedder) and scores.
    pub clip: Arc<dyn Embedder>,
    /// The CLIP's folder, for the report.
    pub clip_folder: PathBuf,
    /// The emoji dataset (`reimagen dataset build`).
    pub dataset: PathBuf,
    /// Neighbour counts of the `bm25` arms (the first is the primary arm's).
    pub ks: Vec<usize>,
    /// Seeds per case (the same in every arm).
    pub seeds: usize,
    /// Held-out entities to run.
    pub entities: EntitySample,
    /// Only this share of them (see [`Shard`]).
    pub shard: Option<Shard>,
    /// The arms (see [`parse_arms`]).
    pub arms: Vec<Arm>,
    /// Also sweep η of the interleaved guidance on the primary arm.
    pub eta_sweep: bool,
    /// Sampler steps per stage.
    pub steps: usize,
    /// The cascade's stages above this resolution are not run (the measures are taken at
    /// [`DATASET_SIZE`] pixels).
    pub max_resolution: usize,
    /// The guidance of every generation (its η is the arms' unless swept).
    pub guidance: Guidance,
    /// BM25 arms leave out neighbours scoring below this share of the best allowed hit
    /// ([`crate::generate::NeighbourChoice::min_score_ratio`], whose default it takes).
    pub min_score_ratio: f32,
    /// The tensor device of the generator.
    pub device: crate::tensor::Device,
    /// Where the KB is cached (and, with `write_report`, the report written).
    pub work: PathBuf,
    /// Write report.md, report.json, the plot and the contact sheet into `work`.
    pub write_report: bool,
    /// Seed of the entity sample, the calibration's other entities and the bootstrap.
    pub seed: u64,
    /// The command line, for the report.
    pub command: String,
}

/// The four measures of one comparison (or their means).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// CLIP image–image cosine with the target.
    pub clip_i: f64,
    /// CLIP text–image cosine with the prompt.
    pub clip_t: f64,
    /// 8×8 colour-layout similarity with the target.
    pub layout: f64,
    /// Foreground-silhouette IoU with the target.
    pub iou: f64,
}

/// The measures' names, in the tables' order.
pub const METRICS: [&str; 4] = ["CLIP-I", "CLIP-T", "layout", "IoU"];

impl Scores {
    fn get(&self, i: usize) -> f64 {
        [self.clip_i, self.clip_t, self.layout, self.iou][i]
    }

    fn mean(all: &[Scores]) -> Scores {
        let n = all.len().max(1) as f64;
        let sum = |f: fn(&Scores) -> f64| all.iter().map(f).sum::<f64>() / n;
        Scores {
            clip_i: sum(|s| s.clip_i),
            clip_t: sum(|s| s.clip_t),
            layout: sum(|s| s.layout),
            iou: sum(|s| s.iou),
        }
    }
}

/// The four measures' means with their intervals.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Intervals {
    /// CLIP-I.
    pub clip_i: Interval,
    /// CLIP-T.
    pub clip_t: Interval,
    /// Colour layout.
    pub layout: Interval,
    /// Silhouette IoU.
    pub iou: Interval,
}

impl Intervals {
    /// Intervals over entities: `per_entity` holds one [`Scores`] per entity.
    fn over(per_entity: &[Scores], seed: u64) -> Intervals {
        let of =
            |f: fn(&Scores) -> f64| bootstrap(&per_entity.iter().map(f).collect::<Vec<_>>(), seed);
        Intervals {
            clip_i: of(|s| s.clip_i),
            clip_t: of(|s| s.clip_t),
            layout: of(|s| s.layout),
            iou: of(|s| s.iou),
        }
    }

    /// The interval of measure `i` ([`METRICS`] order).
    pub fn get(&self, i: usize) -> &Interval {
        [&self.clip_i, &self.clip_t, &self.layout, &self.iou][i]
    }
}

/// How a measure fared in the calibration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Same entity above other entities and above grey, the intervals apart.
    Pass,
    /// In the right order, but an interval overlaps.
    Weak,
    /// Same entity not above other entities or not above grey: do not trust this measure.
    Fail,
}

/// One measure's calibration on the held-out renditions.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CalibrationRow {
    /// The measure.
    pub metric: String,
    /// The target against itself (CLIP-T: the prompt against its own rendition).
    pub identical: Interval,
    /// The same entity in the other styles.
    pub same_entity: Interval,
    /// Other entities in the same style.
    pub other_entity: Interval,
    /// A flat grey image.
    pub grey: Interval,
    /// Whether it separates them.
    pub verdict: Verdict,
}

/// One arm's results.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ArmRow {
    /// The arm.
    pub arm: Arm,
    /// The measures over entities.
    pub scores: Intervals,
    /// Of the neighbours retrieved, the share that show the case's own entity (none for `none`).
    pub own_entity_neighbours: Option<f64>,
}

/// A paired difference between two arms on one measure, over entities.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    /// What it checks, e.g. `bm25-k2 − none`.
    pub name: String,
    /// The measure.
    pub metric: String,
    /// The mean per-entity difference with its interval.
    pub difference: Interval,
}

/// One case's scores, seed-averaged, per arm.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CaseRow {
    /// The entity.
    pub entity: String,
    /// The style.
    pub style: String,
    /// Its scores per arm.
    pub arms: BTreeMap<String, Scores>,
    /// The renditions each arm was given as neighbours (`slug/style`).
    pub neighbours: BTreeMap<String, Vec<String>>,
}

/// What the KB step did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KbSummary {
    /// The KB folder.
    pub path: PathBuf,
    /// Pairs in it.
    pub pairs: u64,
    /// Whether this run built it (false: reused from an earlier run).
    pub built: bool,
    /// Seconds spent making or opening it.
    pub seconds: f64,
}

/// What a run measured.
#[derive(Clone, Debug, Serialize)]
pub struct EntitiesReport {
    /// The command that produced it.
    pub command: String,
    /// The dataset.
    pub dataset: PathBuf,
    /// The generator model, if the arms ran.
    pub model: Option<PathBuf>,
    /// The CLIP folder and its id.
    pub clip: PathBuf,
    /// The CLIP's embedder id.
    pub clip_id: String,
    /// The generator's device.
    pub device: String,
    /// Neighbour counts.
    pub ks: Vec<usize>,
    /// Seeds per case.
    pub seeds: usize,
    /// Sampler steps per stage.
    pub steps: usize,
    /// The guidance.
    pub guidance: Guidance,
    /// BM25 neighbours below this share of the best allowed hit were left out.
    pub min_score_ratio: f32,
    /// Held-out entities in the dataset.
    pub held_out_entities: usize,
    /// Entities run.
    pub entities: Vec<String>,
    /// Cases run (entity × style).
    pub cases: usize,
    /// Images generated.
    pub generations: usize,
    /// Arm results read back from the case cache (`DIR/cases`) instead of generated again.
    pub reused: usize,
    /// The stages run, `name (resolution px)`.
    pub stages: Vec<String>,
    /// The KB.
    pub kb: Option<KbSummary>,
    /// The calibration of the measures.
    pub calibration: Vec<CalibrationRow>,
    /// Renditions the calibration scored.
    pub calibration_targets: usize,
    /// One row per arm.
    pub arms: Vec<ArmRow>,
    /// The paired differences the paper's claims are about.
    pub comparisons: Vec<Comparison>,
    /// The η sweep of the primary arm (empty without `--eta-sweep`).
    pub eta: Vec<ArmRow>,
    /// Per case, per arm.
    pub per_case: Vec<CaseRow>,
    /// Files written.
    pub files: Vec<PathBuf>,
    /// What the reader should know.
    pub notes: Vec<String>,
    /// Wall time of the arms (retrieval, generation, scoring), KB excluded.
    pub arms_seconds: f64,
    /// Wall time of the run.
    pub seconds: f64,
}

/// A rendition of the dataset, as the benchmark knows it.
#[derive(Clone, Debug)]
struct Rendition {
    entity: String,
    style: String,
    split: Split,
}

/// A held-out rendition loaded for scoring.
struct Target {
    id: String,
    entity: String,
    style: String,
    image: RgbImage,
    embedding: Vec<f32>,
}

fn prompt(entity: &str, style: &str) -> String {
    format!("{entity} in {style} style")
}

fn embed_images(clip: &dyn Embedder, images: &[RgbImage]) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(images.len());
    for chunk in images.chunks(clip.batch_size().max(1)) {
        let dynamic: Vec<DynamicImage> = chunk
            .iter()
            .map(|i| DynamicImage::ImageRgb8(i.clone()))
            .collect();
        out.extend(clip.embed_images(&dynamic)?);
    }
    Ok(out)
}

fn embed_texts(clip: &dyn Embedder, texts: &[String]) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(clip.batch_size().max(1)) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        out.extend(clip.embed_texts(&refs)?);
    }
    Ok(out)
}

fn load_rgb(path: &Path) -> Result<RgbImage> {
    let image = image::open(path).map_err(|e| Error::Config {
        path: path.to_path_buf(),
        reason: format!("not a readable dataset image: {e}"),
    })?;
    Ok(image.to_rgb8())
}

/// The flat grey image of the calibration.
pub fn flat_grey() -> RgbImage {
    RgbImage::from_pixel(metrics::SIZE, metrics::SIZE, Rgb([128, 128, 128]))
}

/// The `slug/style` id of a file `…/<slug>/<style>.png`.
fn rendition_of_path(path: &str) -> Option<String> {
    let path = Path::new(path);
    let style = path.file_stem()?.to_str()?;
    let slug = path.parent()?.file_name()?.to_str()?;
    Some(format!("{slug}/{style}"))
}

/// Pixel and CLIP measures of `image` (embedded as `embedding`) against `target`, with the
/// prompt's text embedding `text`.
fn score(image: &RgbImage, embedding: &[f32], target: &Target, text: &[f32]) -> Scores {
    Scores {
        clip_i: cosine(embedding, &target.embedding),
        clip_t: cosine(embedding, text),
        layout: layout_similarity(image, &target.image),
        iou: silhouette_iou(image, &target.image),
    }
}

/// Per-entity means of per-target scores, entities in name order.
fn per_entity(rows: &[(String, Scores)]) -> Vec<Scores> {
    let mut by: BTreeMap<&str, Vec<Scores>> = BTreeMap::new();
    for (entity, s) in rows {
        by.entry(entity).or_default().push(*s);
    }
    by.values().map(|v| Scores::mean(v)).collect()
}

/// The calibration of the four measures on the held-out renditions `targets` (with the prompt
/// embeddings `texts`, one per target): for each target, the same entity's renditions in other
/// styles, [`OTHER_ENTITIES`] seeded other entities in its style, and a flat grey image.
///
/// # Errors
/// The embedder's.
fn calibrate(
    targets: &[Target],
    texts: &[Vec<f32>],
    clip: &dyn Embedder,
    seed: u64,
) -> Result<(Vec<CalibrationRow>, usize)> {
    let grey = flat_grey();
    let grey_embedding = embed_images(clip, std::slice::from_ref(&grey))?.remove(0);
    let mut by_entity: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut by_style: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, t) in targets.iter().enumerate() {
        by_entity.entry(&t.entity).or_default().push(i);
        by_style.entry(&t.style).or_default().push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut identical, mut same, mut other, mut flat) = (vec![], vec![], vec![], vec![]);
    let mut scored = 0;
    for (i, t) in targets.iter().enumerate() {
        let text = &texts[i];
        let versus = |j: usize| score(&targets[j].image, &targets[j].embedding, t, text);
        let same_entity: Vec<Scores> = by_entity[t.entity.as_str()]
            .iter()
            .filter(|&&j| j != i)
            .map(|&j| versus(j))
            .collect();
        let candidates: Vec<usize> = by_style[t.style.as_str()]
            .iter()
            .copied()
            .filter(|&j| targets[j].entity != t.entity)
            .collect();
        let others: Vec<Scores> = candidates
            .choose_multiple(&mut rng, OTHER_ENTITIES)
            .map(|&j| versus(j))
            .collect();
        // A target needs both comparisons to take part.
        if same_entity.is_empty() || others.is_empty() {
            continue;
        }
        scored += 1;
        identical.push((t.entity.clone(), versus(i)));
        same.push((t.entity.clone(), Scores::mean(&same_entity)));
        other.push((t.entity.clone(), Scores::mean(&others)));
        flat.push((t.entity.clone(), score(&grey, &grey_embedding, t, text)));
    }
    let [identical, same, other, flat] =
        [identical, same, other, flat].map(|rows| Intervals::over(&per_entity(&rows), seed));
    let rows = (0..METRICS.len())
        .map(|m| {
            let (s, o, g) = (same.get(m), other.get(m), flat.get(m));
            let ordered = s.mean > o.mean && s.mean > g.mean;
            let verdict = if !ordered || s.n == 0 {
                Verdict::Fail
            } else if s.disjoint(o) && s.disjoint(g) {
                Verdict::Pass
            } else {
                Verdict::Weak
            };
            CalibrationRow {
                metric: METRICS[m].to_string(),
                identical: *identical.get(m),
                same_entity: *s,
                other_entity: *o,
                grey: *g,
                verdict,
            }
        })
        .collect();
    Ok((rows, scored))
}

/// The KB of the run: `work/kb-64`, made with [`KnowledgeBase::import_dir`] from the dataset's
/// `64/train` and `64/heldout` with `clip` as embedder, reused (opened read-only, so several runs
/// can use it at once) when `work/kb-64.json` records the same dataset manifest and CLIP.
fn open_kb(opts: &EntitiesOptions, progress: &dyn Fn(&str)) -> Result<(KnowledgeBase, KbSummary)> {
    let started = Instant::now();
    let dir = opts.work.join(format!("kb-{DATASET_SIZE}"));
    let marker = opts.work.join(format!("kb-{DATASET_SIZE}.json"));
    let manifest = opts.dataset.join("manifest.jsonl");
    let manifest_hash = blake3::hash(&std::fs::read(&manifest).map_err(io_err(&manifest))?);
    let stamp = serde_json::json!({
        "dataset": opts.dataset.canonicalize().unwrap_or_else(|_| opts.dataset.clone()),
        "manifest_blake3": manifest_hash.to_hex().to_string(),
        "clip": opts.clip.id(),
    });
    let cached = std::fs::read_to_string(&marker)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v == stamp)
        && dir.is_dir();
    let open = |dir: &Path| {
        KnowledgeBase::builder(dir)
            .create(true)
            .embedder(opts.clip.clone())
            .open()
    };
    if cached {
        // Read-only first: it takes no lock, so runs of the benchmark can share the folder.
        let kb = KnowledgeBase::builder(&dir)
            .embedder(opts.clip.clone())
            .open_read_only()
            .or_else(|_| open(&dir))?;
        let pairs = kb.stats()?.pairs;
        return Ok((
            kb,
            KbSummary {
                path: dir,
                pairs,
                built: false,
                seconds: started.elapsed().as_secs_f64(),
            },
        ));
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
    }
    let _ = std::fs::remove_file(&marker);
    std::fs::create_dir_all(&opts.work).map_err(io_err(&opts.work))?;
    let kb = open(&dir)?;
    for split in [Split::Train, Split::Heldout] {
        let folder = opts.dataset.join(DATASET_SIZE).join(split.as_str());
        if !folder.is_dir() {
            continue;
        }
        let report = kb.import_dir(&folder, &|p| {
            progress(&format!(
                "importing {} into the KB: {}/{}",
                split.as_str(),
                p.done,
                p.total
            ))
        })?;
        if let Some((path, reason)) = report.failed.first() {
            return Err(Error::Config {
                path: path.clone(),
                reason: format!(
                    "import into the benchmark KB refused it ({} files refused in all): {reason}",
                    report.failed.len()
                ),
            });
        }
    }
    kb.flush()?;
    std::fs::write(&marker, stamp.to_string()).map_err(io_err(&marker))?;
    let pairs = kb.stats()?.pairs;
    Ok((
        kb,
        KbSummary {
            path: dir,
            pairs,
            built: true,
            seconds: started.elapsed().as_secs_f64(),
        },
    ))
}

/// One case of the benchmark: a held-out rendition to draw.
struct Case<'a> {
    target: &'a Target,
    text: &'a [f32],
    prompt: String,
}

/// The top `k` hits the protocol allows for `case`: train renditions, and the case's entity in
/// other styles; never a pair holding the target's own image. Widens the search when the first
/// hits are not enough.
fn retrieve(
    kb: &KnowledgeBase,
    renditions: &HashMap<String, Rendition>,
    case: &Case<'_>,
    mode: SearchMode,
    k: usize,
) -> Result<Vec<(ChosenNeighbour, String)>> {
    let mut found: Vec<(ChosenNeighbour, String)> = Vec::new();
    for depth in [32, 1024] {
        found.clear();
        let hits = kb.search(&Query::text(&case.prompt).mode(mode).k(depth))?;
        let exhausted = hits.len() < depth;
        for hit in hits {
            let ids: Vec<String> = hit
                .paths
                .iter()
                .filter_map(|p| rendition_of_path(p))
                .collect();
            if ids.contains(&case.target.id) {
                continue;
            }
            let allowed = ids.into_iter().find(|id| {
                renditions.get(id).is_some_and(|r| {
                    r.split == Split::Train
                        || (r.entity == case.target.entity && r.style != case.target.style)
                })
            });
            if let Some(id) = allowed {
                found.push((
                    ChosenNeighbour {
                        id: hit.id,
                        caption: hit.caption,
                        entity: hit.entity,
                        weight: 1.0,
                        score: Some(hit.score),
                        retrievers: hit.provenance,
                    },
                    id,
                ));
                if found.len() == k {
                    return Ok(found);
                }
            }
        }
        if exhausted {
            break;
        }
    }
    Ok(found)
}

/// What one arm produced for one case.
struct ArmOutcome {
    scores: Scores,
    neighbours: Vec<(ChosenNeighbour, String)>,
    first_image: RgbImage,
}

/// Runs `arm` on `case`: retrieves, generates `seeds` images (or copies the top neighbour),
/// scores them and averages over the seeds.
#[allow(clippy::too_many_arguments)]
fn run_arm(
    arm: &Arm,
    case: &Case<'_>,
    kb: &KnowledgeBase,
    renditions: &HashMap<String, Rendition>,
    generator: &dyn Generator,
    opts: &EntitiesOptions,
    case_seed: u64,
    cache: &CaseCache,
    counts: &mut (usize, usize),
) -> Result<ArmOutcome> {
    let neighbours = match &arm.kind {
        ArmKind::Retrieval { mode, k } => {
            let mut found = retrieve(kb, renditions, case, *mode, *k)?;
            if *mode == SearchMode::Bm25 {
                let kept = near_best(&found, opts.min_score_ratio, |(n, _)| {
                    n.score.unwrap_or(0.0)
                });
                found.truncate(kept);
            }
            found
        }
        ArmKind::Copy { mode } => retrieve(kb, renditions, case, *mode, 1)?,
        ArmKind::NoRetrieval => Vec::new(),
    };
    let settings = cache.settings(arm, case, &neighbours, case_seed, opts);
    if let Some((scores, first_image)) = cache.load(&case.target.id, &arm.name, &settings) {
        counts.1 += 1;
        return Ok(ArmOutcome {
            scores,
            neighbours,
            first_image,
        });
    }
    let chosen: Vec<ChosenNeighbour> = neighbours.iter().map(|(c, _)| c.clone()).collect();
    let loaded = kb.neighbour_images(&chosen)?;
    let images: Vec<RgbImage> =
        if arm.generates() {
            let mut images = Vec::with_capacity(opts.seeds);
            for s in 0..opts.seeds {
                let mut request = GenerationRequest::new(case.prompt.clone());
                request.neighbours = loaded.clone();
                request.guidance = Guidance {
                    eta: arm.eta,
                    ..opts.guidance
                };
                request.steps = vec![opts.steps];
                request.seed = case_seed.wrapping_add(s as u64);
                let output = generator.generate(
                    &request,
                    &mut crate::generate::NoObserver,
                    &CancelToken::new(),
                )?;
                counts.0 += 1;
                let image = output.images().first().cloned().ok_or_else(|| {
                    GenerateError::InvalidRequest {
                        what: "model",
                        reason: "the generator returned no image".into(),
                    }
                })?;
                images.push(image);
            }
            images
        } else {
            // Copying is deterministic: one image stands for every seed. With nothing retrieved,
            // the copy is a blank white image.
            let copy = loaded.first().map_or_else(
                || RgbImage::from_pixel(metrics::SIZE, metrics::SIZE, Rgb([255, 255, 255])),
                |n| {
                    image::imageops::resize(
                        &n.image,
                        case.target.image.width(),
                        case.target.image.height(),
                        image::imageops::FilterType::Triangle,
                    )
                },
            );
            vec![copy]
        };
    let embeddings = embed_images(opts.clip.as_ref(), &images)?;
    let per_seed: Vec<Scores> = images
        .iter()
        .zip(&embeddings)
        .map(|(img, emb)| score(img, emb, case.target, case.text))
        .collect();
    let outcome = ArmOutcome {
        scores: Scores::mean(&per_seed),
        neighbours,
        first_image: images.into_iter().next().unwrap_or_else(flat_grey),
    };
    cache.store(&case.target.id, &arm.name, &settings, &outcome)?;
    Ok(outcome)
}

/// The arms' results already computed, per case and arm, in `DIR/cases/<entity>/<style>/`:
/// `<arm>.json` (the settings that made it and the scores) and `<arm>.png` (the first seed's
/// image). A run that stops (Ctrl-C, a crash, the end of a session) is resumed by running the
/// same command again: every arm whose settings — model weights, CLIP, steps, seeds, guidance,
/// retrieved neighbours, seed, device, stages — are unchanged is read back, not generated again.
struct CaseCache {
    dir: PathBuf,
    run: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
struct CachedArm {
    settings: serde_json::Value,
    scores: Scores,
}

impl CaseCache {
    fn settings(
        &self,
        arm: &Arm,
        case: &Case<'_>,
        neighbours: &[(ChosenNeighbour, String)],
        case_seed: u64,
        opts: &EntitiesOptions,
    ) -> serde_json::Value {
        serde_json::json!({
            "run": self.run,
            "arm": arm,
            "guidance": Guidance { eta: arm.eta, ..opts.guidance },
            "prompt": case.prompt,
            "neighbours": neighbours.iter().map(|(_, id)| id).collect::<Vec<_>>(),
            "case_seed": case_seed,
        })
    }

    fn paths(&self, case_id: &str, arm: &str) -> (PathBuf, PathBuf) {
        let safe = |s: &str| -> String {
            s.chars()
                .map(|c| match c {
                    'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '.' => c,
                    _ => '_',
                })
                .collect::<String>()
                .trim_start_matches('.')
                .to_string()
        };
        let mut folder = self.dir.clone();
        for part in case_id.split('/') {
            folder.push(safe(part));
        }
        let arm = safe(arm);
        (
            folder.join(format!("{arm}.json")),
            folder.join(format!("{arm}.png")),
        )
    }

    fn load(
        &self,
        case_id: &str,
        arm: &str,
        settings: &serde_json::Value,
    ) -> Option<(Scores, RgbImage)> {
        let (json, png) = self.paths(case_id, arm);
        let cached: CachedArm = serde_json::from_slice(&std::fs::read(json).ok()?).ok()?;
        if &cached.settings != settings {
            return None;
        }
        let image = image::open(png).ok()?.into_rgb8();
        Some((cached.scores, image))
    }

    /// Writes the image, then the JSON (each through a temporary file and a rename), so a JSON
    /// on disk always has its image.
    fn store(
        &self,
        case_id: &str,
        arm: &str,
        settings: &serde_json::Value,
        outcome: &ArmOutcome,
    ) -> Result<()> {
        let (json, png) = self.paths(case_id, arm);
        let folder = json.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(folder).map_err(io_err(folder))?;
        // Temporary names of this process's own, so that two runs sharing the folder (e.g.
        // two halves of the entities run side by side) never write into each other's files.
        let tmp_ext = |ext: &str| format!("{ext}.{}.tmp", std::process::id());
        let tmp = png.with_extension(tmp_ext("png"));
        outcome
            .first_image
            .save_with_format(&tmp, image::ImageFormat::Png)
            .map_err(|e| Error::Config {
                path: tmp.clone(),
                reason: format!("writing the case image: {e}"),
            })?;
        std::fs::rename(&tmp, &png).map_err(io_err(&png))?;
        let text = serde_json::to_vec_pretty(&CachedArm {
            settings: settings.clone(),
            scores: outcome.scores,
        })
        .map_err(|e| Error::Config {
            path: json.clone(),
            reason: e.to_string(),
        })?;
        let tmp = json.with_extension(tmp_ext("json"));
        std::fs::write(&tmp, text).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &json).map_err(io_err(&json))?;
        Ok(())
    }
}

/// Loads the held-out renditions of the dataset at [`DATASET_SIZE`] with their CLIP embeddings.
fn load_targets(
    dataset: &Path,
    manifest: &[ManifestEntry],
    clip: &dyn Embedder,
) -> Result<Vec<Target>> {
    let mut targets = Vec::new();
    for m in manifest.iter().filter(|m| m.split == Split::Heldout) {
        let Some(file) = m.files.get(DATASET_SIZE) else {
            continue;
        };
        targets.push(Target {
            id: m.id.clone(),
            entity: m.entity.clone(),
            style: m.style.clone(),
            image: load_rgb(&dataset.join(file))?,
            embedding: Vec::new(),
        });
    }
    let images: Vec<RgbImage> = targets.iter().map(|t| t.image.clone()).collect();
    for (t, e) in targets.iter_mut().zip(embed_images(clip, &images)?) {
        t.embedding = e;
    }
    Ok(targets)
}

fn case_seed(target_id: &str) -> u64 {
    let hash = blake3::hash(target_id.as_bytes());
    u64::from_le_bytes(hash.as_bytes()[..8].try_into().unwrap_or([0; 8]))
}

/// Runs the benchmark (the calibration alone when `opts.model` is `None`), reporting what it
/// does to `progress`.
///
/// # Errors
/// A dataset that is missing or has no held-out renditions at 64 pixels, a model folder that
/// does not open, or a failure of the KB, the embedder or the generator.
pub fn run_entities(opts: &EntitiesOptions, progress: &dyn Fn(&str)) -> Result<EntitiesReport> {
    let start = Instant::now();
    if opts.seeds == 0 {
        return Err(GenerateError::InvalidRequest {
            what: "seeds",
            reason: "must be ≥ 1".into(),
        }
        .into());
    }
    crate::generate::check_min_score_ratio(opts.min_score_ratio)?;
    let manifest = read_manifest(&opts.dataset)?;
    let renditions: HashMap<String, Rendition> = manifest
        .iter()
        .map(|m| {
            (
                m.id.clone(),
                Rendition {
                    entity: m.entity.clone(),
                    style: m.style.clone(),
                    split: m.split,
                },
            )
        })
        .collect();
    progress("embedding the held-out renditions");
    let targets = load_targets(&opts.dataset, &manifest, opts.clip.as_ref())?;
    if targets.is_empty() {
        return Err(Error::Config {
            path: opts.dataset.join("manifest.jsonl"),
            reason: format!("no held-out renditions with a {DATASET_SIZE}-pixel file"),
        });
    }
    let prompts: Vec<String> = targets
        .iter()
        .map(|t| prompt(&t.entity, &t.style))
        .collect();
    let texts = embed_texts(opts.clip.as_ref(), &prompts)?;
    progress("calibrating the measures");
    let (calibration, calibration_targets) =
        calibrate(&targets, &texts, opts.clip.as_ref(), opts.seed)?;

    let mut held_out: Vec<String> = targets.iter().map(|t| t.entity.clone()).collect();
    held_out.sort();
    held_out.dedup();
    let mut report = EntitiesReport {
        command: opts.command.clone(),
        dataset: opts.dataset.clone(),
        model: opts.model.clone(),
        clip: opts.clip_folder.clone(),
        clip_id: opts.clip.id(),
        device: opts.device.name(),
        ks: opts.ks.clone(),
        seeds: opts.seeds,
        steps: opts.steps,
        guidance: opts.guidance,
        min_score_ratio: opts.min_score_ratio,
        held_out_entities: held_out.len(),
        entities: Vec::new(),
        cases: 0,
        generations: 0,
        reused: 0,
        stages: Vec::new(),
        kb: None,
        calibration,
        calibration_targets,
        arms: Vec::new(),
        comparisons: Vec::new(),
        eta: Vec::new(),
        per_case: Vec::new(),
        files: Vec::new(),
        notes: Vec::new(),
        arms_seconds: 0.0,
        seconds: 0.0,
    };
    for row in &report.calibration {
        if row.verdict == Verdict::Fail {
            report.notes.push(format!(
                "calibration: {} does not score the same entity in another style above other entities and above flat grey; its rows below are not evidence of faithfulness",
                row.metric
            ));
        }
    }

    let mut sheet = None;
    if let Some(model) = &opts.model {
        progress("opening the generator");
        crate::generate::open::check_model_folder(model)?;
        let mut generator = crate::generate::ReImagen::open(model, &opts.device)?;
        let dropped = generator.keep_up_to(opts.max_resolution);
        report.stages = generator
            .stages()
            .iter()
            .map(|s| format!("{} ({} px)", s.name, s.resolution))
            .collect();
        if !dropped.is_empty() {
            report.notes.push(format!(
                "stages above {} px not run: {} (the measures are taken at {DATASET_SIZE} px; `--max-resolution` runs them)",
                opts.max_resolution,
                dropped.join(", ")
            ));
        }
        let mut digest = blake3::Hasher::new();
        for stage in generator.stage_list() {
            digest.update(stage.model_key());
        }
        let cache = CaseCache {
            dir: opts.work.join("cases"),
            run: serde_json::json!({
                "model": digest.finalize().to_hex().to_string(),
                "clip": opts.clip.id(),
                "steps": opts.steps,
                "seeds": opts.seeds,
                "device": opts.device.name(),
                "stages": report.stages,
            }),
        };
        progress("making the benchmark KB");
        let (kb, summary) = open_kb(opts, progress)?;
        report.kb = Some(summary);

        let sample = sample_entities(&held_out, &opts.entities, opts.seed, opts.shard);
        if let Some(shard) = opts.shard {
            report.notes.push(format!(
                "shard {} of {}: {} of the sample's entities; the same command without --shard reads the cases back and reports them all",
                shard.index, shard.count, sample.len()
            ));
        }
        report.entities = sample.clone();

        let mut arms = opts.arms.clone();
        let primary = arms
            .iter()
            .find(|a| matches!(a.kind, ArmKind::Retrieval { .. }))
            .cloned()
            .unwrap_or(Arm {
                name: format!("bm25-k{}", opts.ks[0]),
                kind: ArmKind::Retrieval {
                    mode: SearchMode::Bm25,
                    k: opts.ks[0],
                },
                eta: opts.guidance.eta,
            });
        let mut sweep: Vec<(f32, String)> = Vec::new();
        if opts.eta_sweep {
            for eta in ETA_SWEEP {
                let same = arms
                    .iter()
                    .find(|a| a.kind == primary.kind && a.eta == eta)
                    .map(|a| a.name.clone());
                let name = same.unwrap_or_else(|| {
                    let name = format!("{}-eta{eta}", primary.name);
                    arms.push(Arm {
                        name: name.clone(),
                        eta,
                        ..primary.clone()
                    });
                    name
                });
                sweep.push((eta, name));
            }
        }

        let cases: Vec<Case<'_>> = targets
            .iter()
            .zip(&texts)
            .filter(|(t, _)| sample.binary_search(&t.entity).is_ok())
            .map(|(t, text)| Case {
                target: t,
                text,
                prompt: prompt(&t.entity, &t.style),
            })
            .collect();
        report.cases = cases.len();
        let arms_started = Instant::now();
        let mut results: Vec<BTreeMap<String, ArmOutcome>> = Vec::with_capacity(cases.len());
        for (i, case) in cases.iter().enumerate() {
            progress(&format!(
                "case {}/{}: {} ({} generated, {} read back from the case cache, {:.0} s)",
                i + 1,
                cases.len(),
                case.prompt,
                report.generations,
                report.reused,
                start.elapsed().as_secs_f64()
            ));
            let seed = case_seed(&case.target.id);
            let mut by_arm = BTreeMap::new();
            for arm in &arms {
                let mut counts = (0, 0);
                let outcome = run_arm(
                    arm,
                    case,
                    &kb,
                    &renditions,
                    &generator,
                    opts,
                    seed,
                    &cache,
                    &mut counts,
                )?;
                report.generations += counts.0;
                report.reused += counts.1;
                by_arm.insert(arm.name.clone(), outcome);
            }
            results.push(by_arm);
        }

        report.arms_seconds = arms_started.elapsed().as_secs_f64();
        let arm_row = |arm: &Arm| -> ArmRow {
            let rows: Vec<(String, Scores)> = cases
                .iter()
                .zip(&results)
                .map(|(c, r)| (c.target.entity.clone(), r[&arm.name].scores))
                .collect();
            let (mut own, mut all) = (0usize, 0usize);
            for (c, r) in cases.iter().zip(&results) {
                for (_, id) in &r[&arm.name].neighbours {
                    all += 1;
                    own += usize::from(
                        renditions
                            .get(id)
                            .is_some_and(|x| x.entity == c.target.entity),
                    );
                }
            }
            ArmRow {
                arm: arm.clone(),
                scores: Intervals::over(&per_entity(&rows), opts.seed),
                own_entity_neighbours: (arm.kind != ArmKind::NoRetrieval && all > 0)
                    .then(|| own as f64 / all as f64),
            }
        };
        report.arms = opts.arms.iter().map(arm_row).collect();
        report.eta = sweep
            .iter()
            .filter_map(|(_, name)| arms.iter().find(|a| &a.name == name))
            .map(arm_row)
            .collect();

        let difference = |a: &str, b: &str, m: usize| -> Option<Comparison> {
            if !results
                .first()
                .is_some_and(|r| r.contains_key(a) && r.contains_key(b))
            {
                return None;
            }
            let rows: Vec<(String, Scores)> = cases
                .iter()
                .zip(&results)
                .map(|(c, r)| {
                    let d = r[a].scores.get(m) - r[b].scores.get(m);
                    (
                        c.target.entity.clone(),
                        Scores {
                            clip_i: d,
                            ..Scores::default()
                        },
                    )
                })
                .collect();
            let diffs: Vec<f64> = per_entity(&rows).iter().map(|s| s.clip_i).collect();
            Some(Comparison {
                name: format!("{a} − {b}"),
                metric: METRICS[m].to_string(),
                difference: bootstrap(&diffs, opts.seed),
            })
        };
        let first = format!("bm25-k{}", opts.ks[0]);
        let mut wanted: Vec<(String, String, usize)> = Vec::new();
        for m in [0, 2, 3] {
            wanted.push((first.clone(), "none".into(), m));
        }
        for &k in &opts.ks[1..] {
            wanted.push((format!("bm25-k{k}"), first.clone(), 0));
        }
        // Against the copy every measure: the model must beat pasting its top neighbour on the
        // target's likeness (CLIP-I, layout, IoU) as well as on the prompt (CLIP-T).
        for m in 0..METRICS.len() {
            wanted.push((first.clone(), "copy".into(), m));
        }
        wanted.push((first.clone(), format!("clip-k{}", opts.ks[0]), 0));
        report.comparisons = wanted
            .iter()
            .filter_map(|(a, b, m)| difference(a, b, *m))
            .collect();

        report.per_case = cases
            .iter()
            .zip(&results)
            .map(|(c, r)| CaseRow {
                entity: c.target.entity.clone(),
                style: c.target.style.clone(),
                arms: r.iter().map(|(k, v)| (k.clone(), v.scores)).collect(),
                neighbours: r
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.neighbours.iter().map(|(_, id)| id.clone()).collect(),
                        )
                    })
                    .collect(),
            })
            .collect();
        if opts.write_report && !cases.is_empty() {
            sheet = Some(case_sheet(&cases, &results, &opts.arms, &primary, &kb)?);
        }
        report.notes.push(format!(
            "the KB holds all {} held-out entities' renditions; each case keeps only train renditions and its own entity in other styles, so BM25's term statistics include the other held-out captions",
            report.held_out_entities
        ));
    }
    report.seconds = start.elapsed().as_secs_f64();
    if opts.write_report {
        write_report(opts, &mut report, sheet)?;
    }
    Ok(report)
}

/// The contact sheet of the [`SHEET_CASES`] best and worst cases by the primary arm's CLIP-I:
/// target, the primary arm's neighbours, then each arm's first image.
fn case_sheet(
    cases: &[Case<'_>],
    results: &[BTreeMap<String, ArmOutcome>],
    arms: &[Arm],
    primary: &Arm,
    kb: &KnowledgeBase,
) -> Result<RgbImage> {
    let mut order: Vec<usize> = (0..cases.len()).collect();
    let key = |i: &usize| {
        results[*i]
            .get(&primary.name)
            .map_or(f64::NAN, |o| o.scores.clip_i)
    };
    order.sort_by(|a, b| key(b).total_cmp(&key(a)));
    let mut picked: Vec<(usize, &str)> = order
        .iter()
        .take(SHEET_CASES)
        .map(|&i| (i, "best"))
        .collect();
    let worst: Vec<usize> = order
        .iter()
        .rev()
        .take(SHEET_CASES)
        .copied()
        .filter(|i| !picked.iter().any(|(p, _)| p == i))
        .collect();
    picked.extend(worst.into_iter().rev().map(|i| (i, "worst")));
    let k = match primary.kind {
        ArmKind::Retrieval { k, .. } => k,
        _ => 0,
    };
    let mut columns: Vec<String> = vec!["target".into()];
    columns.extend((1..=k).map(|j| format!("nb {j}")));
    columns.extend(arms.iter().map(|a| a.name.clone()));
    let mut rows = Vec::new();
    for (i, which) in picked {
        let outcome = results[i].get(&primary.name);
        let mut cells = vec![Some(cases[i].target.image.clone())];
        let neighbours = match outcome {
            Some(o) => {
                let chosen: Vec<ChosenNeighbour> =
                    o.neighbours.iter().map(|(c, _)| c.clone()).collect();
                kb.neighbour_images(&chosen)?
            }
            None => Vec::new(),
        };
        cells.extend((0..k).map(|j| neighbours.get(j).map(|n| n.image.clone())));
        cells.extend(
            arms.iter()
                .map(|a| results[i].get(&a.name).map(|o| o.first_image.clone())),
        );
        rows.push(SheetRow {
            label: format!("{which}: {} (CLIP-I {:.3})", cases[i].prompt, key(&i)),
            cells,
        });
    }
    let titles: Vec<&str> = columns.iter().map(String::as_str).collect();
    Ok(contact_sheet(&titles, &rows, 64))
}

fn write_png(path: &Path, image: &RgbImage) -> Result<()> {
    image
        .save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| Error::Io {
            path: path.to_path_buf(),
            source: match e {
                image::ImageError::IoError(io) => io,
                other => std::io::Error::other(other),
            },
        })
}

/// Writes report.md, report.json, eta.png (with a sweep) and cases.png (with arms) into
/// `opts.work`.
fn write_report(
    opts: &EntitiesOptions,
    report: &mut EntitiesReport,
    sheet: Option<RgbImage>,
) -> Result<()> {
    let dir = &opts.work;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut files = Vec::new();
    if !report.eta.is_empty() {
        let points: Vec<plot::PlotPoint> = report
            .eta
            .iter()
            .map(|r| plot::PlotPoint {
                label: format!("eta={}", r.arm.eta),
                x: r.scores.clip_i.mean,
                y: r.scores.clip_t.mean,
            })
            .collect();
        let path = dir.join("eta.png");
        write_png(
            &path,
            &plot::eta_plot("interleaved guidance: CLIP-T vs CLIP-I per eta", &points),
        )?;
        files.push(path);
    }
    if let Some(sheet) = sheet {
        let path = dir.join("cases.png");
        write_png(&path, &sheet)?;
        files.push(path);
    }
    let md = dir.join("report.md");
    let json = dir.join("report.json");
    files.push(md.clone());
    files.push(json.clone());
    report.files = files;
    std::fs::write(&md, report.markdown()).map_err(io_err(&md))?;
    let text = serde_json::to_string_pretty(&*report).map_err(std::io::Error::other);
    text.and_then(|t| std::fs::write(&json, t + "\n"))
        .map_err(io_err(&json))?;
    Ok(())
}

impl EntitiesReport {
    fn calibration_table(&self) -> String {
        let mut s = String::from(
            "| measure | identical | same entity, other style | other entity, same style | flat grey | verdict |\n|---|---|---|---|---|---|\n",
        );
        for r in &self.calibration {
            let verdict = match r.verdict {
                Verdict::Pass => "pass",
                Verdict::Weak => "weak (intervals overlap)",
                Verdict::Fail => "**FAIL**",
            };
            s += &format!(
                "| {} | {} | {} | {} | {} | {verdict} |\n",
                r.metric, r.identical, r.same_entity, r.other_entity, r.grey
            );
        }
        s
    }

    fn arm_table(rows: &[ArmRow]) -> String {
        let mut s = String::from(
            "| arm | η | CLIP-I | CLIP-T | layout | IoU | own-entity neighbours |\n|---|---|---|---|---|---|---|\n",
        );
        for r in rows {
            s += &format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                r.arm.name,
                r.arm.eta,
                r.scores.clip_i,
                r.scores.clip_t,
                r.scores.layout,
                r.scores.iou,
                r.own_entity_neighbours
                    .map_or_else(|| "—".to_string(), |x| format!("{:.0}%", 100.0 * x))
            );
        }
        s
    }

    /// The report as Markdown: the command, the calibration, the arms, the paired differences,
    /// the η sweep and the files.
    pub fn markdown(&self) -> String {
        let mut s = format!("# EntityDrawBench-mini\n\n```sh\n{}\n```\n\n", self.command);
        s += &format!(
            "dataset `{}` ({} held-out entities); CLIP `{}` (`{}`)",
            self.dataset.display(),
            self.held_out_entities,
            self.clip.display(),
            self.clip_id
        );
        if let Some(model) = &self.model {
            s += &format!(
                "; generator `{}` (stages {}) on {}, {} steps, {} seed(s) per case, guidance {:?} (w_p {}, w_n {}, η {}); BM25 neighbours below {} of the best hit left out",
                model.display(),
                self.stages.join(", "),
                self.device,
                self.steps,
                self.seeds,
                self.guidance.mode,
                self.guidance.w_p,
                self.guidance.w_n,
                self.guidance.eta,
                self.min_score_ratio
            );
        }
        s += &format!(". {:.0} s in all", self.seconds);
        if let Some(kb) = &self.kb {
            s += &format!(
                " ({:.0} s for the KB, {}; {:.0} s for the arms)",
                kb.seconds,
                if kb.built { "built" } else { "reused" },
                self.arms_seconds
            );
        }
        s += ".\n\n";
        s += &format!(
            "## Calibration\n\nOn the {} held-out renditions (at 64 px) that have both another style and another entity in their style; means over entities with 95% bootstrap intervals. A measure must score the same entity in another style above other entities in the same style and above flat grey.\n\n",
            self.calibration_targets
        );
        s += &self.calibration_table();
        if self.model.is_some() {
            s += &format!(
                "\n## Arms\n\n{} entities, {} cases, {} generations ({} arm results read back from the case cache); means over entities with 95% bootstrap intervals (the same resamples for every arm).\n\n",
                self.entities.len(),
                self.cases,
                self.generations,
                self.reused
            );
            s += &Self::arm_table(&self.arms);
            if !self.comparisons.is_empty() {
                s += "\n## Paired differences\n\nPer-entity differences between arms (same seeds), mean and 95% bootstrap interval; an interval above 0 means the first arm is better.\n\n| arms | measure | difference |\n|---|---|---|\n";
                for c in &self.comparisons {
                    s += &format!("| {} | {} | {} |\n", c.name, c.metric, c.difference);
                }
            }
            if !self.eta.is_empty() {
                s += "\n## η sweep of the interleaved guidance\n\n";
                s += &Self::arm_table(&self.eta);
                s += "\n![CLIP-T against CLIP-I per η](eta.png)\n";
            }
            s += "\n## Best and worst cases\n\n![target, neighbours, one image per arm](cases.png)\n";
        }
        if !self.notes.is_empty() {
            s += "\n## Notes\n\n";
            for n in &self.notes {
                s += &format!("- {n}\n");
            }
        }
        s
    }
}

impl std::fmt::Display for EntitiesReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.markdown())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_the_sample_without_overlap_and_bad_ones_are_refused() {
        let held_out: Vec<String> = (0..10).map(|i| format!("e{i}")).collect();
        let sample = sample_entities(&held_out, &EntitySample::Count(7), 3, None);
        assert_eq!(sample.len(), 7);
        assert!(sample.is_sorted());
        let mut joined: Vec<String> = (0..3)
            .flat_map(|index| {
                sample_entities(
                    &held_out,
                    &EntitySample::Count(7),
                    3,
                    Some(Shard { index, count: 3 }),
                )
            })
            .collect();
        assert_eq!(joined.len(), 7, "no entity in two shards");
        joined.sort();
        assert_eq!(joined, sample);
        assert_eq!(
            "1/2".parse::<Shard>().unwrap(),
            Shard { index: 1, count: 2 }
        );
        for bad in ["2/2", "1", "a/2", "0/0", "-1/2"] {
            let err = bad.parse::<Shard>().unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }
}
