//! `reimagen bench kb`: a seeded synthetic workload and the measurements of issue-level targets
//! (ingest rate, BM25 / CLIP / hybrid latency, HNSW recall@10 against exact search).
//!
//! The workload: captions of 8 words drawn Zipf-like from a 20,000-word list, and 512-d unit
//! embeddings with the low intrinsic dimension of real CLIP ones (2,000 cluster centres in a 32-d
//! subspace, randomly projected to 512-d, plus small noise). Embedding cost is excluded: a table
//! embedder hands back the precomputed vectors. `export` writes the same data for the peer
//! script (`training/bench_peers.py`), so peers run on identical input.
//!
//! Not here: search quality (`bench/relevance.rs`, `reimagen bench relevance`); CLIP speed
//! (`bench/clip.rs`, `reimagen bench clip`); generation faithfulness (`bench/entities.rs`,
//! `reimagen bench entities`).

pub mod clip;
pub mod entities;
pub mod generate;
pub mod relevance;

use std::collections::HashMap;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::embed::{Embedder, normalize};
use crate::error::{ModelError, Result, io_err};
use crate::kb::{KnowledgeBase, NewPair};
use crate::search::{Query, SearchMode};

/// Settings of a KB benchmark run.
///
/// By default: 100,000 pairs, 1,000 queries per retriever, seed 42, default HNSW parameters,
/// spread 0.3 and noise 0.02.
#[derive(Clone, Debug)]
pub struct KbBenchOptions {
    /// Pairs to ingest.
    pub pairs: usize,
    /// Queries per retriever.
    pub queries: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Where to write the workload for the peer script, if anywhere.
    pub export: Option<PathBuf>,
    /// HNSW parameters of the KB under test.
    pub hnsw: crate::vector::HnswParams,
    /// Spread of a pair around its cluster centre, per dimension of the 32-d subspace (0.3).
    /// Larger means fuzzier neighbourhoods; 0 leaves only `noise`, so that a cluster's members
    /// are near-duplicates whose order the noise decides.
    pub spread: f32,
    /// Noise added to each of the 512 dimensions after the projection (0.02).
    pub noise: f32,
    /// The `reimagen` binary, to time cold one-shot commands against the finished KB as child
    /// processes; none by default (no cold figures).
    pub cold_exe: Option<PathBuf>,
    /// Runs of each cold command (7).
    pub cold_runs: usize,
    /// The graph engine of the KB under test (the default: the project's own).
    pub graph: crate::vector::GraphEngine,
}

impl Default for KbBenchOptions {
    fn default() -> Self {
        KbBenchOptions {
            pairs: 100_000,
            queries: 1_000,
            seed: 42,
            export: None,
            hnsw: crate::vector::HnswParams::default(),
            spread: 0.3,
            noise: 0.02,
            cold_exe: None,
            cold_runs: 7,
            graph: crate::vector::GraphEngine::Own,
        }
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
}

/// What a KB benchmark measured.
#[derive(Clone, Debug, Serialize)]
pub struct KbBenchReport {
    /// The graph engine measured.
    pub graph: crate::vector::GraphEngine,
    /// Pairs ingested.
    pub pairs: usize,
    /// Wall time of the ingest (LMDB + BM25 + two HNSW indices; no embedding).
    pub ingest_secs: f64,
    /// Pairs per second.
    pub ingest_pairs_per_sec: f64,
    /// BM25 query latency at k = 10.
    pub bm25: Latency,
    /// CLIP (text → image) query latency at k = 10.
    pub clip: Latency,
    /// Hybrid (RRF of both) query latency at k = 10.
    pub hybrid: Latency,
    /// CLIP query latency at k = 10 with an entity filter (each entity has 5 pairs).
    pub clip_entity: Latency,
    /// The BM25 index's own search at k = 10 (query parsing, tantivy's collector, doc numbers;
    /// no store reads): the figure to set beside a bare tantivy call.
    pub bm25_index: Latency,
    /// The image graph's own search at k = 10 with the text → image width (the query vector
    /// given; no embedder, no store reads): the figure to set beside a bare hnswlib call.
    pub clip_index: Latency,
    /// Cold one-shot commands against the finished KB, each a fresh process (the files in the
    /// page cache); present when [`KbBenchOptions::cold_exe`] is set.
    pub cold: Option<ColdReport>,
    /// Mean recall@10 of CLIP search against exact search at the default search width.
    pub recall_at_10: f64,
    /// The search width used for text → image queries.
    pub ef_search_cross: usize,
    /// The candidate list size used while building.
    pub ef_construction: usize,
    /// Threads rayon used.
    pub threads: usize,
}

impl std::fmt::Display for KbBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "graph engine     {}", self.graph)?;
        writeln!(f, "pairs            {}", self.pairs)?;
        writeln!(
            f,
            "ingest           {:.1} s  ({:.0} pairs/s)",
            self.ingest_secs, self.ingest_pairs_per_sec
        )?;
        for (name, l) in [
            ("bm25", self.bm25),
            ("clip", self.clip),
            ("hybrid", self.hybrid),
            ("clip + entity", self.clip_entity),
        ] {
            writeln!(
                f,
                "{name:<16} p50 {:.3} ms  p99 {:.3} ms",
                l.p50_ms, l.p99_ms
            )?;
        }
        for (name, l) in [
            ("bm25 index", self.bm25_index),
            ("clip index", self.clip_index),
        ] {
            writeln!(
                f,
                "{name:<16} p50 {:.3} ms  p99 {:.3} ms  (the index alone)",
                l.p50_ms, l.p99_ms
            )?;
        }
        if let Some(cold) = &self.cold {
            for (name, run) in [
                ("cold bm25", &cold.bm25_search),
                ("cold similar", &cold.similar),
                ("cold stats", &cold.stats),
                ("writer open", &cold.writer_open),
            ] {
                let rss = run
                    .peak_rss_mb
                    .map_or("-".to_string(), |r| format!("{r:.0} MiB"));
                writeln!(
                    f,
                    "{name:<16} p50 {:.1} ms  max {:.1} ms  peak RSS {rss}  ({} runs)",
                    run.wall_ms_p50, run.wall_ms_max, cold.runs
                )?;
            }
        }
        write!(
            f,
            "recall@10        {:.3}  (ef {})",
            self.recall_at_10, self.ef_search_cross
        )
    }
}

/// Cold one-shot commands of the CLI against the benchmark's KB.
#[derive(Clone, Debug, Serialize)]
pub struct ColdReport {
    /// Runs of each command.
    pub runs: usize,
    /// `search QUERY --mode bm25 -k 10 --json`.
    pub bm25_search: ColdRun,
    /// `similar PAIR-ID -k 10 --json`: a CLIP graph walk from a stored vector (no model).
    pub similar: ColdRun,
    /// `stats --json`.
    pub stats: ColdRun,
    /// `remove` of an id that is not there: the writer's open (both graphs loaded and
    /// verified) and close, which is what a daemon holds in memory before it touches anything.
    pub writer_open: ColdRun,
}

/// Wall time and peak resident memory of one cold command, over its runs.
#[derive(Clone, Debug, Serialize)]
pub struct ColdRun {
    /// The arguments after `--kb DIR`, with the first run's query.
    pub command: String,
    /// Median wall time, spawn to exit.
    pub wall_ms_p50: f64,
    /// Slowest run.
    pub wall_ms_max: f64,
    /// Largest peak resident set of a run, MiB (from GNU time; absent where it is not installed).
    pub peak_rss_mb: Option<f64>,
}

const DIM: usize = 512;
const SUBSPACE: usize = 32;
const CENTRES: usize = 2_000;
const WORDS: usize = 20_000;
/// Pair `i` belongs to entity `i % ENTITIES` (5 pairs each at 100,000 pairs).
const ENTITIES: usize = 20_000;

struct Workload {
    captions: Vec<String>,
    vectors: Vec<Vec<f32>>,
    query_texts: Vec<String>,
    query_vectors: Vec<Vec<f32>>,
}

fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    // Box–Muller.
    let u1: f32 = rng.random::<f32>().max(1e-12);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

fn workload(opts: &KbBenchOptions) -> Workload {
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    const SYLLABLES: &[&str] = &[
        "ka", "ro", "mi", "tsu", "le", "an", "vo", "ri", "po", "el", "shi", "da", "nu", "qua",
        "ze", "ti",
    ];
    let mut seen = std::collections::HashSet::new();
    let mut words = Vec::with_capacity(WORDS);
    while words.len() < WORDS {
        let n = rng.random_range(2..5);
        let w: String = (0..n)
            .map(|_| SYLLABLES[rng.random_range(0..SYLLABLES.len())])
            .collect();
        if seen.insert(w.clone()) {
            words.push(w);
        }
    }
    // Zipf-like: rank r has weight 1 / r.
    let mut cdf = Vec::with_capacity(WORDS);
    let mut total = 0.0f64;
    for r in 1..=WORDS {
        total += 1.0 / r as f64;
        cdf.push(total);
    }
    let word = |rng: &mut ChaCha8Rng| {
        let x = rng.random::<f64>() * total;
        &words[cdf.partition_point(|c| *c < x).min(WORDS - 1)]
    };
    let projection: Vec<f32> = (0..DIM * SUBSPACE)
        .map(|_| gaussian(&mut rng) / (SUBSPACE as f32).sqrt())
        .collect();
    let centres: Vec<Vec<f32>> = (0..CENTRES)
        .map(|_| (0..SUBSPACE).map(|_| gaussian(&mut rng)).collect())
        .collect();
    let embed = |rng: &mut ChaCha8Rng, centre: &[f32], spread: f32| {
        let z: Vec<f32> = centre.iter().map(|c| c + spread * gaussian(rng)).collect();
        let mut v: Vec<f32> = (0..DIM)
            .map(|i| {
                projection[i * SUBSPACE..(i + 1) * SUBSPACE]
                    .iter()
                    .zip(&z)
                    .map(|(p, z)| p * z)
                    .sum::<f32>()
                    + opts.noise * gaussian(rng)
            })
            .collect();
        normalize(&mut v);
        v
    };
    let mut captions = Vec::with_capacity(opts.pairs);
    let mut vectors = Vec::with_capacity(opts.pairs);
    for _ in 0..opts.pairs {
        captions.push(
            (0..8)
                .map(|_| word(&mut rng).as_str())
                .collect::<Vec<_>>()
                .join(" "),
        );
        let c = rng.random_range(0..CENTRES);
        vectors.push(embed(&mut rng, &centres[c], opts.spread));
    }
    let mut query_texts = Vec::with_capacity(opts.queries);
    let mut query_vectors = Vec::with_capacity(opts.queries);
    for i in 0..opts.queries {
        let n = rng.random_range(2..4);
        let words: Vec<&str> = (0..n).map(|_| word(&mut rng).as_str()).collect();
        // A query text is unique per query (the table embedder keys on it).
        query_texts.push(format!("{} q{i}", words.join(" ")));
        let c = rng.random_range(0..CENTRES);
        query_vectors.push(embed(&mut rng, &centres[c], opts.spread));
    }
    Workload {
        captions,
        vectors,
        query_texts,
        query_vectors,
    }
}

/// Hands back precomputed vectors: images carry their pair index in their pixels, texts are
/// looked up in a table. It keeps embedding cost out of the measurement.
struct TableEmbedder {
    images: Arc<Vec<Vec<f32>>>,
    texts: HashMap<String, Vec<f32>>,
}

impl Embedder for TableEmbedder {
    fn id(&self) -> String {
        format!("bench-table/{DIM}")
    }

    fn dim(&self) -> usize {
        DIM
    }

    fn embed_images(
        &self,
        images: &[DynamicImage],
    ) -> std::result::Result<Vec<Vec<f32>>, ModelError> {
        images.iter().map(|i| self.embed_image(i)).collect()
    }

    fn embed_texts(&self, texts: &[&str]) -> std::result::Result<Vec<Vec<f32>>, ModelError> {
        texts.iter().map(|t| self.embed_text(t)).collect()
    }

    fn embed_image(&self, image: &DynamicImage) -> std::result::Result<Vec<f32>, ModelError> {
        let px = image.to_rgb8();
        let p = px.get_pixel(0, 0).0;
        let q = px.get_pixel(1, 0).0;
        let index =
            (p[0] as usize) | (p[1] as usize) << 8 | (p[2] as usize) << 16 | (q[0] as usize) << 24;
        self.images
            .get(index)
            .cloned()
            .ok_or_else(|| ModelError::Embed {
                model: self.id(),
                reason: format!("no vector {index}"),
            })
    }

    fn embed_text(&self, text: &str) -> std::result::Result<Vec<f32>, ModelError> {
        self.texts
            .get(text)
            .cloned()
            .ok_or_else(|| ModelError::Embed {
                model: self.id(),
                reason: format!("no vector for {text:?}"),
            })
    }
}

fn index_png(i: usize) -> Vec<u8> {
    let mut img = RgbImage::new(2, 1);
    img.put_pixel(0, 0, Rgb([i as u8, (i >> 8) as u8, (i >> 16) as u8]));
    img.put_pixel(1, 0, Rgb([(i >> 24) as u8, 0, 0]));
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
        .expect("in-memory PNG");
    out
}

fn latency(mut samples: Vec<f64>) -> Latency {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Latency {
        p50_ms: at(0.5),
        p99_ms: at(0.99),
    }
}

/// Runs the KB benchmark in `dir` (a fresh directory). `progress` gets a line per phase.
pub fn run_kb(dir: &Path, opts: &KbBenchOptions, progress: &dyn Fn(&str)) -> Result<KbBenchReport> {
    progress("generating the workload");
    let w = workload(opts);
    if let Some(export) = &opts.export {
        export_workload(export, &w)?;
    }
    let mut texts: HashMap<String, Vec<f32>> = HashMap::new();
    for (c, v) in w.captions.iter().zip(&w.vectors) {
        texts.insert(c.clone(), v.clone());
    }
    for (q, v) in w.query_texts.iter().zip(&w.query_vectors) {
        texts.insert(q.clone(), v.clone());
    }
    let embedder = Arc::new(TableEmbedder {
        images: Arc::new(w.vectors.clone()),
        texts,
    });
    let params = opts.hnsw;
    let kb = KnowledgeBase::builder(dir)
        .create(true)
        .embedder(embedder)
        .hnsw(params)
        .graph(opts.graph)
        .open()?;

    progress("ingesting");
    let start = Instant::now();
    for chunk_start in (0..w.captions.len()).step_by(4096) {
        let end = (chunk_start + 4096).min(w.captions.len());
        let pairs: Vec<NewPair> = (chunk_start..end)
            .map(|i| {
                NewPair::bytes(format!("pair-{i}"), index_png(i), w.captions[i].clone())
                    .entity(format!("entity-{}", i % ENTITIES))
            })
            .collect();
        for r in kb.add_many(pairs) {
            r?;
        }
        progress(&format!("ingested {end}/{}", w.captions.len()));
    }
    let ingest_secs = start.elapsed().as_secs_f64();

    progress("querying");
    let time = |query: &Query| millis(|| kb.search(query));
    let mut bm25 = Vec::new();
    let mut clip = Vec::new();
    let mut hybrid = Vec::new();
    let mut clip_entity = Vec::new();
    let mut bm25_index = Vec::new();
    let mut clip_index = Vec::new();
    let entities = ENTITIES.min(w.captions.len()).max(1);
    let (text_index, image_index) = kb.bare_indices();
    let no_filters = crate::text::Filters::default();
    for (i, q) in w.query_texts.iter().enumerate() {
        // The bare call and the end-to-end one on the same query, which first alternating: the
        // second finds the first's pages in cache.
        let bare = || -> Result<(f64, f64)> {
            Ok((
                millis(|| text_index.search(q, &no_filters, 10))?,
                millis(|| image_index.search(&w.query_vectors[i], 10, true, &|_| true))?,
            ))
        };
        let e2e = || -> Result<(f64, f64)> {
            Ok((
                time(&Query::text(q.clone()).k(10))?,
                time(&Query::text(q.clone()).mode(SearchMode::Clip).k(10))?,
            ))
        };
        let ((bare_bm25, bare_clip), (e2e_bm25, e2e_clip)) = if i % 2 == 0 {
            let b = bare()?;
            (b, e2e()?)
        } else {
            let e = e2e()?;
            (bare()?, e)
        };
        bm25_index.push(bare_bm25);
        clip_index.push(bare_clip);
        bm25.push(e2e_bm25);
        clip.push(e2e_clip);
        hybrid.push(time(
            &Query::text(q.clone()).mode(SearchMode::Hybrid).k(10),
        )?);
        let entity = format!("entity-{}", (i * 7919) % entities);
        clip_entity.push(time(
            &Query::text(q.clone())
                .mode(SearchMode::Clip)
                .k(10)
                .entity(entity),
        )?);
    }

    progress("measuring recall against exact search");
    let id_to_index: HashMap<crate::ImageId, usize> = (0..w.captions.len())
        .map(|i| (crate::ImageId::of_bytes(&index_png(i)), i))
        .collect();
    let recall_queries = w.query_texts.len().min(200);
    let mut recall = 0.0;
    for (q, v) in w
        .query_texts
        .iter()
        .zip(&w.query_vectors)
        .take(recall_queries)
    {
        let mut exact: Vec<(f32, usize)> = w
            .vectors
            .iter()
            .enumerate()
            .map(|(i, x)| (crate::vector::dot(v, x), i))
            .collect();
        exact.select_nth_unstable_by(9, |a, b| b.0.total_cmp(&a.0));
        let truth: std::collections::HashSet<usize> = exact[..10].iter().map(|(_, i)| *i).collect();
        let found = kb.search(&Query::text(q.clone()).mode(SearchMode::Clip).k(10))?;
        let hits = found
            .iter()
            .filter(|h| id_to_index.get(&h.id).is_some_and(|i| truth.contains(i)))
            .count();
        recall += hits as f64 / 10.0;
    }
    // The writer closes (and dumps) before other processes open the KB.
    drop(kb);
    let cold = match &opts.cold_exe {
        Some(exe) => {
            progress("timing cold commands");
            Some(cold_commands(exe, dir, &w, opts.cold_runs.max(1))?)
        }
        None => None,
    };
    Ok(KbBenchReport {
        graph: opts.graph,
        pairs: w.captions.len(),
        ingest_secs,
        ingest_pairs_per_sec: w.captions.len() as f64 / ingest_secs,
        bm25: latency(bm25),
        clip: latency(clip),
        hybrid: latency(hybrid),
        clip_entity: latency(clip_entity),
        bm25_index: latency(bm25_index),
        clip_index: latency(clip_index),
        cold,
        recall_at_10: recall / recall_queries as f64,
        ef_search_cross: params.ef_search_cross,
        ef_construction: params.ef_construction,
        threads: rayon::current_num_threads(),
    })
}

/// Times the cold commands of [`ColdReport`], `runs` fresh processes each.
fn cold_commands(exe: &Path, kb: &Path, w: &Workload, runs: usize) -> Result<ColdReport> {
    let kb = kb.display().to_string();
    let pair = |i: usize| crate::ImageId::of_bytes(&index_png(i % w.captions.len())).to_hex();
    let query = |i: usize| w.query_texts[i % w.query_texts.len()].clone();
    let measure = |args: &dyn Fn(usize) -> Vec<String>, must_succeed: bool| -> Result<ColdRun> {
        let mut walls = Vec::with_capacity(runs);
        let mut peak: Option<f64> = None;
        for run in 0..runs {
            let mut all = vec!["--kb".to_string(), kb.clone()];
            all.extend(args(run));
            let (wall, rss, ok) = run_child(exe, &all)?;
            if must_succeed && !ok {
                return Err(io_err(exe)(std::io::Error::other(format!(
                    "`{}` failed (run it by hand to see why)",
                    all.join(" ")
                ))));
            }
            walls.push(wall);
            peak = match (peak, rss) {
                (Some(p), Some(r)) => Some(p.max(r)),
                (p, r) => p.or(r),
            };
        }
        walls.sort_by(f64::total_cmp);
        Ok(ColdRun {
            command: args(0).join(" "),
            wall_ms_p50: walls[walls.len() / 2],
            wall_ms_max: walls[walls.len() - 1],
            peak_rss_mb: peak,
        })
    };
    let strings = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    Ok(ColdReport {
        runs,
        bm25_search: measure(
            &|i| {
                let mut a = strings(&["search", "--mode", "bm25", "-k", "10", "--json"]);
                a.push(query(i));
                a
            },
            true,
        )?,
        similar: measure(
            &|i| {
                let mut a = strings(&["similar", "-k", "10", "--json"]);
                a.push(pair(i * 7_919));
                a
            },
            true,
        )?,
        stats: measure(&|_| strings(&["stats", "--json"]), true)?,
        writer_open: measure(&|_| strings(&["remove", "ffffffffffffffffffff"]), false)?,
    })
}

/// Runs `exe args` to its end: wall milliseconds, peak resident MiB, and success.
///
/// The peak comes from GNU time (`/usr/bin/time -f %M`, on Linux where it is installed), not
/// from this process's `wait4`: a child spawned from this process (gigabytes of workload by
/// now) reports this process's resident set as its own peak, since Linux counts the memory a
/// process had before its `exec`. GNU time is small, so its child's peak is the command's own.
/// The wall time then includes GNU time's fork and exec (about a millisecond).
fn run_child(exe: &Path, args: &[String]) -> Result<(f64, Option<f64>, bool)> {
    use std::process::{Command, Stdio};
    let time = Path::new("/usr/bin/time");
    let peak_file = tempfile::NamedTempFile::new().map_err(io_err(exe))?;
    let mut command = if cfg!(target_os = "linux") && time.exists() {
        let mut command = Command::new(time);
        command
            .args(["-f", "%M", "-o"])
            .arg(peak_file.path())
            .arg(exe);
        command
    } else {
        Command::new(exe)
    };
    let start = Instant::now();
    let status = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(io_err(exe))?;
    let wall = start.elapsed().as_secs_f64() * 1e3;
    // GNU time writes a line about a failed command before the figure.
    let peak = std::fs::read_to_string(peak_file.path())
        .ok()
        .and_then(|s| s.lines().last()?.trim().parse::<f64>().ok())
        .map(|kib| kib / 1024.0);
    Ok((wall, peak, status.success()))
}

fn export_workload(dir: &Path, w: &Workload) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let write_lines = |name: &str, lines: &[String]| -> Result<()> {
        let path = dir.join(name);
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).map_err(io_err(&path))?);
        for l in lines {
            writeln!(f, "{l}").map_err(io_err(&path))?;
        }
        f.flush().map_err(io_err(&path))
    };
    let write_vectors = |name: &str, vectors: &[Vec<f32>]| -> Result<()> {
        let path = dir.join(name);
        let bytes: Vec<u8> = vectors
            .iter()
            .flatten()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        std::fs::write(&path, bytes).map_err(io_err(&path))
    };
    write_lines("captions.txt", &w.captions)?;
    write_lines("queries.txt", &w.query_texts)?;
    write_vectors("vectors.f32", &w.vectors)?;
    write_vectors("query_vectors.f32", &w.query_vectors)
}

/// The wall time of one call, in milliseconds (its result kept from the optimiser).
fn millis<T, E>(call: impl FnOnce() -> std::result::Result<T, E>) -> Result<f64>
where
    crate::Error: From<E>,
{
    let t = Instant::now();
    std::hint::black_box(call()?);
    Ok(t.elapsed().as_secs_f64() * 1e3)
}
