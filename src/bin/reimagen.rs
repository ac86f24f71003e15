//! The `reimagen` command line: parses arguments, calls the library, prints. No logic of its own
//! beyond presentation (tables, JSON, progress bars, exit codes).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use reimagen::{
    AddOutcome, FusionWeights, Hit, KnowledgeBase, NewPair, PairText, Query, QueryImage, SearchMode,
};

/// Writes a line to standard output and returns the error with `?`, where `println!` would panic
/// once the reader has gone (`reimagen list --json | head`); `main` ends such a run quietly.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

/// The status of a run whose reader closed the pipe: 128 + SIGPIPE, what the shell reports for a
/// program the signal ended (`seq 1 1000000 | head`). Rust ignores SIGPIPE, so the write fails
/// with `BrokenPipe` instead and the CLI exits with the same status, silently.
const CLOSED_PIPE_STATUS: u8 = 128 + 13;

/// An embedded knowledge base of image-text pairs with retrieval (BM25, CLIP, hybrid).
#[derive(Parser)]
#[command(name = "reimagen", version, about)]
struct Cli {
    /// Knowledge-base directory [default: $REIMAGEN_KB, else the XDG data directory].
    #[arg(long, global = true, env = "REIMAGEN_KB")]
    kb: Option<PathBuf>,
    /// Log more (repeat for more detail).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a knowledge base.
    Init {
        /// Language of the BM25 stemmer (english, french, …, or none) [default: english].
        #[arg(long)]
        language: Option<reimagen::TextLanguage>,
        /// A CLIP model folder (transformers' layout: config.json, model.safetensors,
        /// tokenizer.json, preprocessor_config.json) to embed images and captions with; recorded
        /// in kb.toml [default: the shipped models/clip].
        #[arg(long, value_name = "DIR")]
        embedder: Option<PathBuf>,
        /// A generator model folder (cascade.json and its stages, docs/generator.md §2) for
        /// `generate`; recorded in kb.toml [default: the shipped models/reimagen].
        #[arg(long, value_name = "DIR")]
        generator: Option<PathBuf>,
        /// Record no default model: a bare KB (BM25 only, no embeddings, no generator) unless
        /// --embedder / --generator name one.
        #[arg(long)]
        no_models: bool,
    },
    /// Generate images for a prompt, conditioned on neighbours retrieved from the KB (or given
    /// by id); writes the PNG and a provenance JSON (FILE.json) next to it.
    Generate(GenerateArgs),
    /// The whole idea in one command: builds a KB from the sample set (examples/demo), generates
    /// held-out entities with and without retrieval on the shipped models, and writes a contact
    /// sheet (demo.png) and a page (index.html).
    Demo(DemoArgs),
    /// Print the CLIP embedding of a text or an image: {"embedding": [...], "model", "device"}.
    Embed {
        /// The text.
        #[arg(long, required_unless_present = "image", conflicts_with = "image")]
        text: Option<String>,
        /// The image file.
        #[arg(long)]
        image: Option<PathBuf>,
        /// The model folder [default: the KB's embedder].
        #[arg(long, value_name = "DIR")]
        model: Option<PathBuf>,
        /// Print as JSON (otherwise the id, the device and the vector, one value a line).
        #[arg(long)]
        json: bool,
    },
    /// Embed every pair again with the model kb.toml names (after the model changed); BM25
    /// search keeps working meanwhile.
    Reembed {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add images. Without --caption, the caption rules of `import` apply.
    Add {
        /// Image files.
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Caption for every image given.
        #[arg(long, conflicts_with = "caption_file")]
        caption: Option<String>,
        /// Read the caption from this file.
        #[arg(long)]
        caption_file: Option<PathBuf>,
        /// Entity the images show [default: the parent folder's name].
        #[arg(long)]
        entity: Option<String>,
        /// Tag (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Print results as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Import every image under a folder (sidecar NAME.txt captions, else the file stem; the
    /// parent folder is the entity), or the pairs of an `export --jsonl` file.
    Import {
        /// The folder.
        #[arg(required_unless_present = "jsonl", conflicts_with = "jsonl")]
        dir: Option<PathBuf>,
        /// Read pairs from this JSON-lines export instead (images from the files it lists).
        #[arg(long, value_name = "FILE")]
        jsonl: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write every pair (caption, entity, tags, image facts, files) as JSON lines.
    Export {
        /// The file to write (`-` for standard output).
        #[arg(long, value_name = "FILE")]
        jsonl: PathBuf,
        /// Add each pair's embeddings.
        #[arg(long)]
        embeddings: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change a pair's caption, entity or tags (full id or a unique prefix).
    Edit {
        /// The id.
        id: String,
        /// New caption.
        #[arg(long)]
        caption: Option<String>,
        /// New entity.
        #[arg(long, conflicts_with = "no_entity")]
        entity: Option<String>,
        /// Remove the entity.
        #[arg(long)]
        no_entity: bool,
        /// Add a tag (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Remove a tag (repeatable; case and accents aside).
        #[arg(long = "untag")]
        untags: Vec<String>,
        /// Print the edited pair as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List entities with their pair counts and one example pair, most pairs first.
    Entities {
        /// Print as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Search by text.
    Search {
        /// The query text.
        query: String,
        /// Retrieval mode.
        #[arg(long, default_value_t = SearchMode::Bm25, value_parser = search_mode())]
        mode: SearchMode,
        /// Number of hits.
        #[arg(short, default_value_t = 10)]
        k: usize,
        /// Only this entity.
        #[arg(long)]
        entity: Option<String>,
        /// Only pairs with this tag (repeatable; all must match).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Keep the best hit per entity only.
        #[arg(long)]
        dedup: bool,
        /// Drop CLIP hits below this cosine similarity.
        #[arg(long)]
        min_similarity: Option<f32>,
        /// Weight of BM25 in hybrid mode.
        #[arg(long, default_value_t = 1.0)]
        bm25_weight: f32,
        /// Weight of CLIP in hybrid mode.
        #[arg(long, default_value_t = 1.0)]
        clip_weight: f32,
        /// Print hits as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Find pairs whose image looks like IMAGE (a file, or the id of a pair).
    Similar {
        /// Image file or pair id.
        image: String,
        /// Number of hits.
        #[arg(short, default_value_t = 10)]
        k: usize,
        /// Print hits as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Show one pair (full id or a unique prefix).
    Show {
        /// The id.
        id: String,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List every pair.
    List {
        /// Print as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Remove pairs by id (full or unique prefix).
    Remove {
        /// The ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Counts and sizes.
    Stats {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Verify that the indices match the store; exit 1 if they do not.
    Check {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild every index from the store.
    RebuildIndex,
    /// Write a compacted copy of the KB to DEST (a new or empty folder).
    Backup {
        /// Destination folder.
        dest: PathBuf,
    },
    /// Benchmarks (they use their own temporary data, never the KB).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// List the compute adapters wgpu finds and which device `auto` picks.
    Doctor {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Keep the KB equal to what folders hold: ingest new and changed images, follow renames and
    /// moves, forget deleted files (a foreground daemon; SIGINT/SIGTERM stop it cleanly).
    Watch {
        /// Folders to watch.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Poll every SECS seconds instead of using OS events (network file systems).
        #[arg(long, value_name = "SECS")]
        poll: Option<f64>,
        /// Full reconcile scan interval.
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
        rescan_every: std::time::Duration,
        /// How long a file must stay gone before it leaves the KB (`0s`: at once).
        #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
        delete_grace: std::time::Duration,
    },
    /// Show the watch daemon's status: folders, items, queue, last scan, quarantined files.
    Status {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The emoji training dataset (docs/dataset.md); never touches the KB of --kb.
    #[command(subcommand)]
    Dataset(DatasetCommand),
}

/// The arguments of `reimagen demo`.
#[derive(clap::Args)]
struct DemoArgs {
    /// Where the KB, images, sheet and page go (its `kb/` is rebuilt).
    #[arg(long, default_value = "reimagen-demo")]
    out: PathBuf,
    /// The sample set [default: examples/demo of this checkout].
    #[arg(long)]
    samples: Option<PathBuf>,
    /// The CLIP folder the KB embeds with [default: models/clip of this checkout].
    #[arg(long)]
    clip: Option<PathBuf>,
    /// The generator model folder [default: models/reimagen of this checkout].
    #[arg(long)]
    model: Option<PathBuf>,
    /// Neighbours per generation.
    #[arg(short, value_name = "N", default_value_t = 2)]
    k: usize,
    /// How neighbours are retrieved (BM25 over captions, as the paper; the shipped CLIP knows
    /// few held-out names, so clip and hybrid tend to return the asked style, not the entity).
    #[arg(long, value_enum, default_value = "bm25")]
    mode: RetrieveMode,
    /// Steps per stage: one number for every stage, or one per stage, comma-separated
    /// [default: 25, and 10 for stages of 256 px and more, whose steps cost the most].
    #[arg(long, value_delimiter = ',')]
    steps: Vec<usize>,
    /// The seed of every generation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Only the first N held-out entities.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    #[command(flatten)]
    guidance: GuidanceArgs,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// The arguments of `reimagen generate`.
#[derive(clap::Args)]
struct GenerateArgs {
    /// The prompt.
    prompt: String,
    /// Neighbours to retrieve [default: 2].
    #[arg(short, value_name = "N")]
    k: Option<usize>,
    /// How neighbours are retrieved for the prompt [default: bm25].
    #[arg(long, value_enum)]
    mode: Option<RetrieveMode>,
    /// Retrieve only pairs of this entity.
    #[arg(long)]
    entity: Option<String>,
    /// Leave out BM25 hits scoring below this share of the best hit (0 keeps all k).
    #[arg(long, value_name = "SHARE", default_value_t = reimagen::generate::DEFAULT_MIN_SCORE_RATIO)]
    min_score_ratio: f32,
    /// Use this pair as a neighbour instead of retrieving (full id or unique prefix; repeatable,
    /// in order).
    #[arg(long = "neighbour", value_name = "ID", conflicts_with_all = ["k", "mode", "entity"])]
    neighbours: Vec<String>,
    /// When retrieval finds nothing, generate from the prompt alone (with a warning) instead of
    /// failing.
    #[arg(long)]
    allow_no_neighbours: bool,
    #[command(flatten)]
    guidance: GuidanceArgs,
    /// The sampler of every stage.
    #[arg(long, value_enum, default_value_t = SamplerArg::Ddim)]
    sampler: SamplerArg,
    /// Steps per stage: one number for every stage, or one per stage, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "50")]
    steps: Vec<usize>,
    /// The seed of all noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A negative prompt (replaces the dropped text in the unconditional branches).
    #[arg(long, value_name = "TEXT")]
    negative: Option<String>,
    /// The generator model folder [default: the one kb.toml names].
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// The PNG to write (with --batch N: FILE-1.png … FILE-N.png); the provenance goes to the
    /// same name with .json.
    #[arg(long, value_name = "FILE.png", default_value = "generated.png")]
    out: PathBuf,
    /// Also write each lower stage's image (FILE.STAGE.png).
    #[arg(long)]
    all_stages: bool,
    /// Images to generate.
    #[arg(long, value_name = "N", default_value_t = 1)]
    batch: usize,
    /// Print the provenance JSON (with --dry-run: the neighbours) instead of a summary.
    #[arg(long)]
    json: bool,
    /// Only print the neighbours it would use (needs no model).
    #[arg(long)]
    dry_run: bool,
}

/// The retrievers a prompt can use (image search needs an image).
#[derive(Clone, Copy, clap::ValueEnum)]
enum RetrieveMode {
    Bm25,
    Clip,
    Hybrid,
}

/// The guidance flags of every command that generates (`generate`, `demo`, `bench entities`).
#[derive(clap::Args)]
struct GuidanceArgs {
    /// Guidance: interleaved (the paper's, Eq. 6), standard classifier-free, weighted, or none.
    #[arg(long, value_enum, default_value_t = GuidanceArg::Interleaved)]
    guidance: GuidanceArg,
    /// Interleaving ratio (weighted: mix) η ∈ [0, 1] [default: 0.5].
    #[arg(long, allow_negative_numbers = true)]
    eta: Option<f32>,
    /// Text-guidance weight w_p [default: 3].
    #[arg(long, allow_negative_numbers = true)]
    wp: Option<f32>,
    /// Neighbour-guidance weight w_n [default: 3].
    #[arg(long, allow_negative_numbers = true)]
    wn: Option<f32>,
    /// Classifier-free weight w of standard guidance [default: 3].
    #[arg(long, allow_negative_numbers = true)]
    w: Option<f32>,
}

impl GuidanceArgs {
    /// The guidance these flags ask for (unset weights at their defaults).
    fn guidance(&self) -> reimagen::generate::Guidance {
        use reimagen::generate::{Guidance, GuidanceMode};
        let defaults = Guidance::default();
        Guidance {
            mode: match self.guidance {
                GuidanceArg::Interleaved => GuidanceMode::Interleaved,
                GuidanceArg::Standard => GuidanceMode::Standard,
                GuidanceArg::Weighted => GuidanceMode::Weighted,
                GuidanceArg::None => GuidanceMode::Joint,
            },
            w: self.w.unwrap_or(defaults.w),
            w_p: self.wp.unwrap_or(defaults.w_p),
            w_n: self.wn.unwrap_or(defaults.w_n),
            eta: self.eta.unwrap_or(defaults.eta),
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum GuidanceArg {
    Interleaved,
    Standard,
    Weighted,
    None,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SamplerArg {
    Ddpm,
    Ddim,
    Dpmpp,
}

#[derive(Subcommand)]
enum DatasetCommand {
    /// Fetch the emoji packages (npm pack, when not cached), render every rendition of every
    /// entity, write images, sidecar captions, manifest and licenses, split off held-out entities.
    Build {
        /// Where the dataset goes [default: the XDG data directory's reimagen/emoji].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Where the npm tarballs are kept [default: the XDG cache directory's reimagen/npm].
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Image sizes, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "64,256")]
        sizes: Vec<u32>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Build the training KB (DIR/kb-train-64) with `import` and write DIR/neighbours.jsonl: each
    /// train rendition's top-2 BM25 neighbours, own style excluded for a seeded half.
    Neighbours {
        /// The dataset directory.
        dir: PathBuf,
        /// Seed of which half excludes its own style.
        #[arg(long, default_value_t = 10)]
        seed: u64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Search quality on a labelled query set built from emojibase-data (npm): recall@1/@10
    /// and nDCG@10 of the right entity, BM25 before and after the analyzers.
    Relevance {
        /// The emojibase-data tarball (`npm pack emojibase-data`), a folder holding it, or the
        /// unpacked package [default: $XDG_CACHE_HOME/reimagen/npm].
        #[arg(long)]
        data: Option<PathBuf>,
        /// emojibase locales, comma-separated.
        #[arg(long, default_value = "en,fr,de,es", value_delimiter = ',')]
        locales: Vec<String>,
        /// Seed of the sampling and the typos.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// At most this many queries per locale and kind.
        #[arg(long, default_value_t = 300)]
        max_queries: usize,
        /// A CLIP model folder: adds the `clip` and `hybrid` rows.
        #[arg(long, value_name = "DIR")]
        embedder: Option<PathBuf>,
        /// The emoji dataset (`reimagen dataset build`): real images and captions for the pairs.
        /// A --data folder holding manifest.jsonl is taken as this.
        #[arg(long, value_name = "DIR")]
        dataset: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// CLIP speed: images/s and texts/s per tower at batch 1 and 32 on the CPU backend and a
    /// wgpu adapter, beside PyTorch on the same config (`--torch`), and `import` pairs/s with
    /// and without an embedder.
    Clip {
        /// The model: `vit-b32` (its config with random weights), `shipped` (models/clip), or
        /// a model folder.
        #[arg(long, default_value = "vit-b32")]
        config: String,
        /// Devices, comma-separated: cpu, gpu, auto [default: cpu and the best adapter found].
        #[arg(long)]
        device: Option<String>,
        /// Batch sizes, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,32")]
        batches: Vec<usize>,
        /// A Python with PyTorch and transformers, to run training/bench_clip.py on the same
        /// config as a baseline.
        #[arg(long)]
        torch: Option<String>,
        /// The device PyTorch runs on (cpu or cuda).
        #[arg(long, default_value = "cpu")]
        torch_device: String,
        /// Pairs per import measurement (0: none).
        #[arg(long, default_value_t = 256)]
        import_pairs: usize,
        /// The shipped CLIP (imported with too; its tokenizer serves the random ViT-B/32).
        #[arg(long, default_value = reimagen::bench::clip::SHIPPED)]
        shipped: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The knowledge base on a seeded synthetic workload: ingest rate, query latency, recall.
    Kb {
        /// Pairs to ingest.
        #[arg(long, default_value_t = 100_000)]
        pairs: usize,
        /// Queries per retriever.
        #[arg(long, default_value_t = 1_000)]
        queries: usize,
        /// Seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Also write the workload here, for training/bench_peers.py.
        #[arg(long)]
        export: Option<PathBuf>,
        /// Build the KB in DIR (a new folder) and keep it, to time cold opens of the CLI
        /// against it [default: a temporary folder, removed at the end].
        #[arg(long, value_name = "DIR")]
        keep_kb: Option<PathBuf>,
        /// HNSW search width for text → image queries [default: the KB default].
        #[arg(long)]
        ef_search: Option<usize>,
        /// HNSW candidate list size while building [default: the KB default].
        #[arg(long)]
        ef_construction: Option<usize>,
        /// Spread of a pair around its cluster centre (larger: fuzzier neighbourhoods; 0: a
        /// cluster's pairs are near-duplicates told apart by the noise alone).
        #[arg(long, default_value_t = 0.3)]
        spread: f32,
        /// Noise added to every dimension of an embedding.
        #[arg(long, default_value_t = 0.02)]
        noise: f32,
        /// Graph engines to measure, one KB each, in this order (`own`, `hnsw_rs`).
        #[arg(long, value_delimiter = ',', default_value = "own")]
        graph: Vec<reimagen::GraphEngine>,
        /// Print the report as JSON (an array of reports with more than one engine).
        #[arg(long)]
        json: bool,
    },
    /// The generator's speed: UNet steps/s per stage (every guidance branch, K neighbours,
    /// warm cache), neighbour encoding, seconds per image for the cascade and peak memory, per
    /// device, beside the PyTorch reference on the same weights (`--torch`).
    Generate {
        /// A cascade folder [default: the shipped CPU cascade's configs with random weights].
        #[arg(long, value_name = "DIR")]
        model: Option<PathBuf>,
        /// The CLIP folder the random cascade's stages use.
        #[arg(long, value_name = "DIR", default_value = reimagen::bench::clip::SHIPPED)]
        clip: PathBuf,
        /// Devices, comma-separated: cpu, gpu, auto [default: cpu and the best adapter found].
        #[arg(long)]
        device: Option<String>,
        /// Stages to time, by name, comma-separated [default: all].
        #[arg(long, value_delimiter = ',')]
        stages: Vec<String>,
        /// Steps per stage of the cascade (seconds per image).
        #[arg(long, default_value_t = 50)]
        steps: usize,
        /// Images per generation (a step's UNet call has 2 × batch rows).
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Neighbours per generation.
        #[arg(long, default_value_t = 2)]
        k: usize,
        /// Timed steps per stage on the CPU backend (and PyTorch).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Timed steps per stage on a wgpu adapter (capped by --runs).
        #[arg(long, default_value_t = 2)]
        gpu_runs: usize,
        /// Leave out the cascade (seconds per image).
        #[arg(long)]
        no_cascade: bool,
        /// A Python with PyTorch and the training requirements, to run
        /// training/bench_generate.py on the same weights as a baseline.
        #[arg(long)]
        torch: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// EntityDrawBench-mini: draw held-out entities with and without retrieval and score them
    /// against their held-out renditions (CLIP-I, CLIP-T, colour layout, silhouette IoU), after
    /// a calibration of the measures (docs/entities.md).
    Entities(EntitiesArgs),
    /// Tensor kernels: GFLOP/s of matmul, conv2d and attention, and copy bandwidth, per device.
    Kernels {
        /// Devices, comma-separated: cpu, gpu, auto [default: cpu and the best adapter found].
        #[arg(long)]
        device: Option<String>,
        /// Fewer rounds, for a quick look or a slow software adapter.
        #[arg(long)]
        quick: bool,
        /// A Python with PyTorch, to run training/bench_torch.py at the same shapes as a baseline.
        #[arg(long)]
        torch: Option<String>,
        /// The device PyTorch runs on (cpu or cuda).
        #[arg(long, default_value = "cpu")]
        torch_device: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `reimagen bench entities`.
#[derive(clap::Args)]
struct EntitiesArgs {
    /// The generator model folder.
    #[arg(long, value_name = "DIR", default_value = "models/reimagen")]
    model: PathBuf,
    /// The CLIP that retrieves and scores.
    #[arg(long, value_name = "DIR", default_value = "models/clip")]
    clip: PathBuf,
    /// The emoji dataset [default: $XDG_DATA_HOME/reimagen/emoji].
    #[arg(long, value_name = "DIR")]
    dataset: Option<PathBuf>,
    /// Neighbour counts of the BM25 arms (the first is the primary arm's).
    #[arg(long, value_delimiter = ',', default_value = "2,4")]
    k: Vec<usize>,
    /// Seeds per case, the same in every arm.
    #[arg(long, default_value_t = 2)]
    seeds: usize,
    /// Held-out entities: a seeded sample of N, or `all`.
    #[arg(long, default_value_t = reimagen::bench::entities::DEFAULT_ENTITIES.to_string())]
    entities: String,
    /// Run only share I of N of the entities (e.g. 0/2 and 1/2 in two processes with the same
    /// --out; the same command without --shard then reports them all from the case cache).
    #[arg(long, value_name = "I/N")]
    shard: Option<String>,
    /// Arms: bm25 (one per k), clip (first k), bm25-kN, clip-kN, none, copy.
    #[arg(long, value_delimiter = ',', default_value = "bm25,clip,none,copy")]
    arms: Vec<String>,
    /// BM25 arms leave out neighbours scoring below this share of the best allowed hit, as
    /// `generate` does (0 keeps all k).
    #[arg(long, value_name = "SHARE", default_value_t = reimagen::generate::DEFAULT_MIN_SCORE_RATIO)]
    min_score_ratio: f32,
    /// Also sweep η (0, 0.25, 0.5, 0.75, 1) of the interleaved guidance on the primary arm.
    #[arg(long)]
    eta_sweep: bool,
    /// Sampler steps per stage.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Stages of the cascade above this resolution are not run: the measures are taken at 64
    /// px, so the 256 px stage costs the most and changes the scores least.
    #[arg(long, value_name = "PX", default_value_t = 64)]
    max_resolution: usize,
    /// The guidance of every generating arm (`--eta-sweep` varies its η).
    #[command(flatten)]
    guidance: GuidanceArgs,
    /// Device: cpu, gpu or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Run the calibration of the measures alone (no generator needed).
    #[arg(long)]
    calibration_only: bool,
    /// Seed of the entity sample, the calibration and the bootstrap.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write report.md, report.json, eta.png and cases.png here (the KB is cached here too).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn run_bench_entities(args: EntitiesArgs) -> anyhow::Result<ExitCode> {
    use reimagen::bench::entities::{self, EntitiesOptions};
    let device = reimagen::Device::from_choice(args.device.parse()?)?;
    let clip = reimagen::embed::ClipEmbedder::open(
        &args.clip,
        device.clone(),
        reimagen::embed::clip::WeightPrecision::F32,
    )
    .with_context(|| format!("loading the CLIP {}", args.clip.display()))?;
    let temp = tempfile::tempdir().context("creating a temporary directory")?;
    let guidance = args.guidance.guidance();
    guidance.validate().map_err(reimagen::Error::from)?;
    let opts = EntitiesOptions {
        model: (!args.calibration_only).then_some(args.model),
        clip: std::sync::Arc::new(clip),
        clip_folder: args.clip,
        dataset: args.dataset.unwrap_or_else(|| {
            dirs::data_dir()
                .unwrap_or_else(|| PathBuf::from("."))
                .join("reimagen")
                .join("emoji")
        }),
        arms: entities::parse_arms(&args.arms, &args.k, guidance.eta)?,
        ks: args.k,
        seeds: args.seeds,
        entities: args.entities.parse().map_err(anyhow::Error::msg)?,
        shard: args
            .shard
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(anyhow::Error::msg)?,
        eta_sweep: args.eta_sweep,
        steps: args.steps,
        max_resolution: args.max_resolution,
        guidance,
        min_score_ratio: args.min_score_ratio,
        device,
        write_report: args.out.is_some(),
        work: args.out.unwrap_or_else(|| temp.path().to_path_buf()),
        seed: args.seed,
        command: std::iter::once("reimagen".to_string())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
    };
    let bar = spinner("benchmarking entities");
    let report = entities::run_entities(&opts, &|m| bar.set_message(m.to_string()));
    bar.finish_and_clear();
    print_report(&report?, args.json)?;
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    // SAFETY: the first statement of `main`; no other thread exists yet.
    unsafe { reimagen::tensor::quiet_headless_vulkan() };
    let cli = parse_cli();
    let filter = match cli.verbose {
        0 if matches!(cli.command, Command::Watch { .. }) => "info,tantivy=warn,hnsw_rs=warn",
        // resvg warns of every odd attribute in the emoji SVGs; the renders are checked by eye.
        0 if matches!(cli.command, Command::Dataset(_)) => "warn,usvg=error,tiny_skia=error",
        0 => "warn",
        1 => "info,tantivy=warn,hnsw_rs=warn",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REIMAGEN_LOG")
                .unwrap_or_else(|_| filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) if is_closed_pipe(&e) => ExitCode::from(CLOSED_PIPE_STATUS),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Parses the command line. `--kb` is global, but `bench`, `dataset` and `doctor` never open the
/// KB it names: each gets a hidden argument of the same id, which stops clap from offering the
/// global one in their help and their subcommands' (`bench kb --kb DIR` is refused as unknown).
fn parse_cli() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let mut command = Cli::command();
    for name in ["bench", "dataset", "doctor"] {
        command = command.mut_subcommand(name, |sub| {
            sub.arg(
                clap::Arg::new("kb")
                    .long("kb")
                    .hide(true)
                    .value_parser(clap::value_parser!(PathBuf)),
            )
        });
    }
    let matches = command.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Opens the KB for a command. A read command opens it read-only: it never waits for a writer
/// (the daemon, a program) nor makes one wait. Only when no process writes and the read-only
/// open cannot serve (an index to rebuild, a store to migrate) or finds an index behind the store
/// (a writer killed between its two commits) does it open the KB for writing, which repairs
/// that on open. A write command beside the daemon is refused with the daemon's pid and what to
/// do instead (ARCHITECTURE.md, "Write commands beside the daemon").
fn open_kb(dir: &Path, reads_only: bool) -> anyhow::Result<KnowledgeBase> {
    let open = || {
        KnowledgeBase::builder(dir)
            .progress(rebuild_progress())
            .open()
    };
    if reads_only {
        let repairable = match KnowledgeBase::open_read_only(dir) {
            Ok(kb) => {
                if !kb.is_behind()? {
                    return Ok(kb);
                }
                Ok(kb)
            }
            Err(e @ reimagen::Error::Store(reimagen::StoreError::ReadOnly { .. })) => Err(e),
            Err(e) => return Err(e.into()),
        };
        if KnowledgeBase::is_locked(dir)? {
            // The writer repairs what it needs to; meanwhile read what there is.
            return Ok(repairable?);
        }
        drop(repairable);
    }
    match open() {
        Ok(kb) => Ok(kb),
        // Taken between the look and the open.
        Err(reimagen::Error::Store(reimagen::StoreError::Locked { .. })) if reads_only => {
            Ok(KnowledgeBase::open_read_only(dir)?)
        }
        Err(e @ reimagen::Error::Store(reimagen::StoreError::Locked { .. })) => {
            match reimagen::daemon_status(dir) {
                Ok(status) if status.running => bail!(
                    "the watch daemon (pid {pid}) holds {dir} for writing. Put the files in one \
                     of its folders and it ingests them, or stop it (`kill {pid}`) and run this \
                     command again; read commands (search, similar, list, show, stats, check, \
                     status, backup) work beside it.",
                    pid = status.pid,
                    dir = dir.display()
                ),
                _ => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether an error comes from writing to a pipe whose reader has gone.
fn is_closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn default_kb_dir() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("reimagen")
        .join("kb")
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let dir = cli.kb.clone().unwrap_or_else(default_kb_dir);
    if let Command::Bench(bench) = cli.command {
        return run_bench(bench);
    }
    if let Command::Dataset(command) = cli.command {
        return run_dataset(command);
    }
    if let Command::Doctor { json } = cli.command {
        let report = reimagen::tensor::doctor::report();
        print_report(&report, json)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Embed {
        text,
        image,
        model,
        json,
    } = cli.command
    {
        return embed(&dir, text, image, model, json);
    }
    if let Command::Init {
        language,
        embedder,
        generator,
        no_models,
    } = cli.command
    {
        let existed = dir.join("kb.toml").exists();
        // A new KB gets the shipped models unless told otherwise; an existing one keeps its own.
        let defaults = !no_models && !existed;
        let embedder = embedder.or_else(|| {
            defaults
                .then(|| shipped_model("models/clip", "config.json"))
                .flatten()
        });
        let generator = generator.or_else(|| {
            defaults
                .then(|| shipped_model("models/reimagen", "cascade.json"))
                .flatten()
        });
        let mut builder = KnowledgeBase::builder(&dir)
            .create(true)
            .progress(rebuild_progress());
        if let Some(language) = language {
            builder = builder.language(language);
        }
        if let Some(model) = embedder {
            let model = model
                .canonicalize()
                .with_context(|| format!("embedder model folder {}", model.display()))?;
            builder = builder.embedder_model(model);
        }
        if let Some(model) = generator {
            reimagen::generate::open::check_model_folder(&model)?;
            let model = model
                .canonicalize()
                .with_context(|| format!("generator model folder {}", model.display()))?;
            builder = builder.generator_model(model);
        }
        let kb = builder.open()?;
        out!(
            "{} knowledge base at {}",
            if existed {
                "Opened existing"
            } else {
                "Created"
            },
            kb.path().display()
        );
        let config = kb.config();
        for (what, model) in [
            ("CLIP embedder", &config.embedder_model),
            ("generator", &config.generator_model),
        ] {
            match model {
                Some(model) => out!("  {what}: {}", model.display()),
                None => out!("  {what}: none"),
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Generate(args) = cli.command {
        return generate(&dir, args);
    }
    if let Command::Demo(args) = cli.command {
        return demo(args);
    }
    match cli.command {
        Command::Status { json } => return watch_status(&dir, json),
        Command::Watch {
            dirs,
            poll,
            rescan_every,
            delete_grace,
        } => {
            let mut options = reimagen::WatchOptions::default()
                .rescan_every(rescan_every)
                .delete_grace(delete_grace)
                .handle_signals(true);
            if let Some(secs) = poll {
                options = options.poll(std::time::Duration::from_secs_f64(secs.max(0.1)));
            }
            return watch(&dir, &dirs, options);
        }
        _ => {}
    }
    let reads_only = matches!(
        cli.command,
        Command::Search { .. }
            | Command::Similar { .. }
            | Command::List { .. }
            | Command::Show { .. }
            | Command::Stats { .. }
            | Command::Check { .. }
            | Command::Backup { .. }
            | Command::Entities { .. }
            | Command::Export { .. }
    );
    let kb = open_kb(&dir, reads_only)
        .with_context(|| format!("opening knowledge base {}", dir.display()))?;
    match cli.command {
        Command::Init { .. }
        | Command::Bench(_)
        | Command::Doctor { .. }
        | Command::Embed { .. }
        | Command::Generate(_)
        | Command::Demo(_)
        | Command::Dataset(_) => {
            unreachable!("handled above")
        }
        Command::Reembed { json } => reembed(&kb, json),
        Command::Add {
            images,
            caption,
            caption_file,
            entity,
            tags,
            json,
        } => add(&kb, images, caption, caption_file, entity, tags, json),
        Command::Import {
            dir,
            jsonl: None,
            json,
        } => import(
            &kb,
            &dir.expect("clap requires a folder without --jsonl"),
            json,
        ),
        Command::Import {
            jsonl: Some(file),
            json,
            ..
        } => import_jsonl(&kb, &file, json),
        Command::Export {
            jsonl,
            embeddings,
            json,
        } => export(&kb, &jsonl, embeddings, json),
        Command::Edit {
            id,
            caption,
            entity,
            no_entity,
            tags,
            untags,
            json,
        } => {
            let id = kb.resolve(&id)?;
            let pair = kb
                .get(&id)?
                .ok_or_else(|| reimagen::Error::NotFound(id.to_hex()))?;
            if caption.is_none()
                && entity.is_none()
                && !no_entity
                && tags.is_empty()
                && untags.is_empty()
            {
                bail!("nothing to change: give --caption, --entity, --no-entity, --tag or --untag");
            }
            let mut text = PairText {
                caption: caption.unwrap_or(pair.caption),
                entity: if no_entity {
                    None
                } else {
                    entity.or(pair.entity)
                },
                tags: pair.tags,
            };
            let untags: Vec<String> = untags.iter().map(|t| reimagen::name_key(t)).collect();
            let missing: Vec<&String> = untags
                .iter()
                .filter(|u| !text.tags.iter().any(|t| reimagen::name_key(t) == **u))
                .collect();
            if !missing.is_empty() {
                bail!(
                    "pair {} has no tag {}",
                    id.short(),
                    missing
                        .iter()
                        .map(|t| format!("`{t}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            text.tags
                .retain(|t| !untags.contains(&reimagen::name_key(t)));
            for tag in tags {
                let tag = tag.trim().to_string();
                let key = reimagen::name_key(&tag);
                if !tag.is_empty() && !text.tags.iter().any(|t| reimagen::name_key(t) == key) {
                    text.tags.push(tag);
                }
            }
            if !kb.update(&id, text)? {
                bail!("pair {} was removed meanwhile", id.short());
            }
            let pair = kb
                .get(&id)?
                .ok_or_else(|| reimagen::Error::NotFound(id.to_hex()))?;
            if json {
                out!("{}", serde_json::to_string_pretty(&pair)?);
            } else {
                out!("edited {}", pair.id.short());
                out!("caption  {}", pair.caption);
                out!("entity   {}", pair.entity.as_deref().unwrap_or("-"));
                out!("tags     {}", pair.tags.join(", "));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Entities { json } => {
            let entities = kb.entities()?;
            if json {
                out!("{}", serde_json::to_string_pretty(&entities)?);
            } else {
                for e in &entities {
                    out!("{:>6}  {}  {}", e.pairs, e.example.short(), e.name);
                }
                eprintln!("{} entities", entities.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Search {
            query,
            mode,
            k,
            entity,
            tags,
            dedup,
            min_similarity,
            bm25_weight,
            clip_weight,
            json,
        } => {
            let mut q = Query::text(query)
                .mode(mode)
                .k(k)
                .dedup_entity(dedup)
                .weights(FusionWeights {
                    bm25: bm25_weight,
                    clip: clip_weight,
                    ..FusionWeights::default()
                });
            if let Some(e) = entity {
                q = q.entity(e);
            }
            for t in tags {
                q = q.tag(t);
            }
            if let Some(floor) = min_similarity {
                q = q.min_similarity(floor);
            }
            print_hits(&kb.search(&q)?, json)
        }
        Command::Similar { image, k, json } => {
            let path = PathBuf::from(&image);
            let source = if path.exists() {
                QueryImage::File(path)
            } else {
                QueryImage::Pair(kb.resolve(&image)?)
            };
            print_hits(&kb.search(&Query::image(source).k(k))?, json)
        }
        Command::Show { id, json } => {
            let id = kb.resolve(&id)?;
            let pair = kb
                .get(&id)?
                .ok_or_else(|| reimagen::Error::NotFound(id.to_hex()))?;
            if json {
                out!("{}", serde_json::to_string_pretty(&pair)?);
            } else {
                out!("id       {}", pair.id);
                out!("caption  {}", pair.caption);
                out!("entity   {}", pair.entity.as_deref().unwrap_or("-"));
                out!("tags     {}", pair.tags.join(", "));
                out!(
                    "image    {}×{} {} ({} bytes)",
                    pair.width,
                    pair.height,
                    pair.format,
                    pair.byte_len
                );
                for p in &pair.paths {
                    out!("path     {p}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::List { json } => {
            let pairs = kb.list()?;
            if json {
                out!("{}", serde_json::to_string_pretty(&pairs)?);
            } else {
                for p in &pairs {
                    out!(
                        "{}  {:<20}  {}",
                        p.id.short(),
                        p.entity.as_deref().unwrap_or("-"),
                        p.caption
                    );
                }
                eprintln!("{} pairs", pairs.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Remove { ids } => {
            let mut code = ExitCode::SUCCESS;
            for raw in ids {
                match kb
                    .resolve(&raw)
                    .and_then(|id| kb.remove(&id).map(|found| (id, found)))
                {
                    Ok((id, true)) => out!("removed {id}"),
                    Ok((id, false)) => {
                        eprintln!("error: no pair with id {id}");
                        code = ExitCode::FAILURE;
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        code = ExitCode::FAILURE;
                    }
                }
            }
            Ok(code)
        }
        Command::Stats { json } => {
            let s = kb.stats()?;
            if json {
                out!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                out!("knowledge base  {}", s.path.display());
                out!("pairs           {}", s.pairs);
                out!("entities        {}", s.entities);
                out!(
                    "embedder        {}",
                    s.embedder.as_deref().unwrap_or("none (BM25 only)")
                );
                out!("schema version  {}", s.schema_version);
                out!("change log      {} changes", s.last_seq);
                out!(
                    "store           {:.1} MiB on disk, map {:.0} MiB",
                    s.disk_size as f64 / 1048576.0,
                    s.map_size as f64 / 1048576.0
                );
                out!("BM25 index      {} documents", s.text_index_docs);
                out!(
                    "image index     {} points ({} tombstones)",
                    s.image_index.points,
                    s.image_index.tombstones
                );
                out!(
                    "text vectors    {} points ({} tombstones)",
                    s.text_vector_index.points,
                    s.text_vector_index.tombstones
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { json } => {
            let report = kb.check()?;
            if json {
                out!("{}", serde_json::to_string_pretty(&report)?);
            } else if report.is_consistent() {
                out!("ok: {} pairs; store and indices agree", report.pairs);
            } else {
                for p in &report.problems {
                    out!("mismatch: {p}");
                }
                out!("run `reimagen rebuild-index` to rebuild the indices from the store");
            }
            Ok(if report.is_consistent() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::RebuildIndex => {
            let bar = spinner("rebuilding indices from the store");
            kb.rebuild_indices()?;
            bar.finish_and_clear();
            let s = kb.stats()?;
            out!(
                "rebuilt: {} BM25 documents, {} image points, {} text points",
                s.text_index_docs,
                s.image_index.points,
                s.text_vector_index.points
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup { dest } => {
            kb.backup(&dest)?;
            out!("backed up {} to {}", kb.path().display(), dest.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Watch { .. } | Command::Status { .. } => unreachable!("handled above"),
    }
}

/// One progress bar per stage of the dataset builder; a new stage finishes the bar before it.
fn dataset_progress() -> impl Fn(reimagen::dataset::Stage, reimagen::Progress) + Sync {
    use reimagen::dataset::Stage;
    let current = std::sync::Mutex::new(None::<(Stage, ProgressBar)>);
    move |now: Stage, p: reimagen::Progress| {
        let mut current = current.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_none_or(|(stage, _)| *stage != now) {
            if let Some((_, old)) = current.take() {
                old.finish();
            }
            let what = match now {
                Stage::Packages => "packages  ",
                Stage::Render => "rendering ",
                Stage::Import => "importing ",
                Stage::Neighbours => "neighbours",
                _ => "working   ",
            };
            let bar = ProgressBar::new(p.total).with_style(
                ProgressStyle::with_template(&format!(
                    "{what} [{{bar:40}}] {{pos}}/{{len}} ({{per_sec}}, eta {{eta}})"
                ))
                .expect("valid template")
                .progress_chars("=> "),
            );
            *current = Some((now, bar));
        }
        if let Some((_, bar)) = current.as_ref() {
            bar.set_length(p.total);
            bar.set_position(p.done);
        }
    }
}

fn run_dataset(command: DatasetCommand) -> anyhow::Result<ExitCode> {
    use reimagen::dataset;
    match command {
        DatasetCommand::Build {
            out,
            cache,
            sizes,
            json,
        } => {
            let out = out.unwrap_or_else(|| {
                dirs::data_dir()
                    .unwrap_or_else(|| PathBuf::from("."))
                    .join("reimagen")
                    .join("emoji")
            });
            let cache = cache.unwrap_or_else(|| {
                dirs::cache_dir()
                    .unwrap_or_else(|| PathBuf::from("."))
                    .join("reimagen")
                    .join("npm")
            });
            let options = dataset::BuildOptions::new(&out, &cache).sizes(sizes);
            // The last bar is left drawn when the closure is dropped at the end of the statement.
            let report = dataset::build(&options, &dataset_progress())?;
            print_report(&report, json)?;
            Ok(if report.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        DatasetCommand::Neighbours { dir, seed, json } => {
            let options = dataset::NeighbourOptions {
                seed,
                ..Default::default()
            };
            let report = dataset::neighbours(&dir, &options, &dataset_progress())?;
            print_report(&report, json)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn run_bench(bench: BenchCommand) -> anyhow::Result<ExitCode> {
    match bench {
        BenchCommand::Relevance {
            data,
            locales,
            seed,
            max_queries,
            embedder,
            dataset,
            json,
        } => {
            use reimagen::bench::relevance::{self, RelevanceOptions};
            let dir = tempfile::tempdir().context("creating a temporary directory")?;
            // `--data DATASET` alone: the dataset, with emojibase from the default cache.
            let (data, dataset) = match (data, dataset) {
                (Some(d), None) if d.join("manifest.jsonl").is_file() => (None, Some(d)),
                other => other,
            };
            let embedder = match embedder {
                Some(folder) => {
                    let device = reimagen::tensor::Device::from_env()?;
                    let clip = reimagen::embed::ClipEmbedder::open(
                        &folder,
                        device,
                        reimagen::embed::clip::WeightPrecision::F32,
                    )
                    .with_context(|| format!("loading the embedder {}", folder.display()))?;
                    Some(std::sync::Arc::new(clip) as std::sync::Arc<dyn reimagen::Embedder>)
                }
                None => None,
            };
            let opts = RelevanceOptions {
                data: data.unwrap_or_else(relevance::default_data_dir),
                locales,
                seed,
                max_queries,
                embedder,
                dataset,
            };
            let bar = spinner("benchmarking relevance");
            let report =
                relevance::run_relevance(dir.path(), &opts, &|m| bar.set_message(m.to_string()));
            bar.finish_and_clear();
            print_report(&report?, json)?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Kb {
            pairs,
            queries,
            seed,
            export,
            keep_kb,
            ef_search,
            ef_construction,
            spread,
            noise,
            graph,
            json,
        } => {
            let dir = tempfile::tempdir().context("creating a temporary directory")?;
            let kb_root = match keep_kb {
                Some(kept) if kept.exists() => {
                    bail!(
                        "{}: --keep-kb needs a folder that does not exist",
                        kept.display()
                    )
                }
                Some(kept) => kept,
                None => dir.path().join("kb"),
            };
            let mut hnsw = reimagen::HnswParams::default();
            hnsw.ef_search_cross = ef_search.unwrap_or(hnsw.ef_search_cross);
            hnsw.ef_construction = ef_construction.unwrap_or(hnsw.ef_construction);
            let opts = reimagen::bench::KbBenchOptions {
                pairs,
                queries,
                seed,
                export,
                hnsw,
                spread,
                noise,
                cold_exe: std::env::current_exe().ok(),
                ..reimagen::bench::KbBenchOptions::default()
            };
            let mut reports = Vec::new();
            for engine in &graph {
                // One engine: the KB in DIR; several: DIR/<engine> each.
                let kb_dir = if graph.len() == 1 {
                    kb_root.clone()
                } else {
                    kb_root.join(engine.name())
                };
                let opts = reimagen::bench::KbBenchOptions {
                    graph: *engine,
                    ..opts.clone()
                };
                let bar = spinner(&format!("benchmarking ({engine} graph)"));
                let report =
                    reimagen::bench::run_kb(&kb_dir, &opts, &|m| bar.set_message(m.to_string()))?;
                bar.finish_and_clear();
                reports.push(report);
            }
            match reports.as_slice() {
                [one] => print_report(one, json)?,
                all if json => out!("{}", serde_json::to_string_pretty(all)?),
                all => {
                    for report in all {
                        out!("{report}\n");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Clip {
            config,
            device,
            batches,
            torch,
            torch_device,
            import_pairs,
            shipped,
            json,
        } => {
            use reimagen::bench::clip::{self, ClipBenchModel, ClipBenchOptions};
            let model: ClipBenchModel = config.parse()?;
            let model = match model {
                ClipBenchModel::Folder(_) if config == "shipped" => {
                    ClipBenchModel::Folder(shipped.clone())
                }
                m => m,
            };
            let mut opts = ClipBenchOptions {
                import_models: vec![model.clone(), ClipBenchModel::Folder(shipped.clone())],
                model,
                batches,
                torch_python: torch,
                torch_device,
                import_pairs,
                shipped,
                ..ClipBenchOptions::default()
            };
            if let Some(list) = device {
                opts.devices = reimagen::tensor::bench::parse_devices(&list)?;
            }
            let dir = tempfile::tempdir().context("creating a temporary directory")?;
            let bar = spinner("benchmarking CLIP");
            let report = clip::run_clip(dir.path(), &opts, &|m| bar.set_message(m.to_string()));
            bar.finish_and_clear();
            print_report(&report?, json)?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Generate {
            model,
            clip,
            device,
            stages,
            steps,
            batch,
            k,
            runs,
            gpu_runs,
            no_cascade,
            torch,
            json,
        } => {
            use reimagen::bench::generate::{self, GenerateBenchOptions};
            let mut opts = GenerateBenchOptions {
                model,
                clip,
                stages,
                steps,
                batch,
                k,
                runs,
                gpu_runs,
                cascade: !no_cascade,
                torch_python: torch,
                ..GenerateBenchOptions::default()
            };
            if let Some(list) = device {
                opts.devices = reimagen::tensor::bench::parse_devices(&list)?;
            }
            let dir = tempfile::tempdir().context("creating a temporary directory")?;
            // Progress goes to stderr line by line: a run takes minutes and is often logged.
            let report = generate::run_generate(dir.path(), &opts, &|m| eprintln!("{m}"));
            print_report(&report?, json)?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Entities(args) => run_bench_entities(args),
        BenchCommand::Kernels {
            device,
            quick,
            torch,
            torch_device,
            json,
        } => {
            use reimagen::tensor::bench::{self, BenchOptions};
            let mut options = BenchOptions {
                quick,
                torch_python: torch,
                torch_device,
                ..BenchOptions::default()
            };
            if let Some(list) = device {
                options.devices = bench::parse_devices(&list)?;
            }
            let bar = spinner("benchmarking kernels");
            let report = bench::run(&options)?;
            bar.finish_and_clear();
            print_report(&report, json)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints a report as one JSON document, or as its text form.
fn print_report<T: serde::Serialize + std::fmt::Display>(
    report: &T,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        out!("{}", serde_json::to_string_pretty(report)?);
    } else {
        out!("{report}");
    }
    Ok(())
}

fn watch(
    dir: &Path,
    dirs: &[PathBuf],
    options: reimagen::WatchOptions,
) -> anyhow::Result<ExitCode> {
    // `reimagen status` may hold the KB for an instant: wait for it rather than fail.
    let kb = reimagen::open_when_free(dir, std::time::Duration::from_secs(10))
        .with_context(|| format!("opening knowledge base {}", dir.display()))?;
    let watcher = reimagen::Watcher::start(std::sync::Arc::new(kb), dirs, options)?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} ingesting [{bar:40}] {pos}/{len} files ({per_sec})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    while !watcher.is_finished() {
        let s = watcher.status();
        if s.progress_total > 50 && s.progress_done < s.progress_total {
            bar.set_length(s.progress_total);
            bar.set_position(s.progress_done);
        } else if !bar.is_hidden() && bar.length().unwrap_or(0) > 0 {
            bar.finish_and_clear();
            bar.set_length(0);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    bar.finish_and_clear();
    watcher.wait()?;
    Ok(ExitCode::SUCCESS)
}

fn watch_status(dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let s = reimagen::daemon_status(dir)?;
    if json {
        out!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    let ago = |t: u64| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        format!("{} s ago", now.saturating_sub(t))
    };
    if s.running {
        out!(
            "daemon      running (pid {}, state {:?}, updated {})",
            s.pid,
            s.state,
            ago(s.updated_at)
        );
    } else {
        out!("daemon      not running");
    }
    for r in &s.roots {
        out!(
            "folder      {}  {} items  {}{}",
            r.path.display(),
            r.items,
            format!("{:?}", r.mode).to_lowercase(),
            if r.online {
                ""
            } else {
                "  OFFLINE (items kept)"
            }
        );
    }
    out!("items       {}", s.items);
    out!(
        "queue       {} ({} deletions waiting)",
        s.queue,
        s.pending_deletes
    );
    match &s.last_scan {
        Some(scan) => out!(
            "last scan   {} ({} files, {} changed, {} ms)",
            ago(scan.at),
            scan.files,
            scan.changed,
            scan.duration_ms
        ),
        None => out!("last scan   never"),
    }
    for w in &s.warnings {
        out!("warning     {w}");
    }
    out!("quarantined {}", s.quarantined.len());
    for q in &s.quarantined {
        out!("  {}: {}", q.path, q.reason);
    }
    Ok(ExitCode::SUCCESS)
}

fn add(
    kb: &KnowledgeBase,
    images: Vec<PathBuf>,
    caption: Option<String>,
    caption_file: Option<PathBuf>,
    entity: Option<String>,
    tags: Vec<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let caption = match (caption, caption_file) {
        (Some(c), _) => Some(c),
        (None, Some(f)) => {
            let bytes = std::fs::read(&f)
                .with_context(|| format!("{}: cannot read caption file", f.display()))?;
            match String::from_utf8(bytes) {
                Ok(s) => Some(s),
                Err(_) => bail!("{}: caption file is not UTF-8", f.display()),
            }
        }
        (None, None) => None,
    };
    let mut pairs = Vec::new();
    let mut results: Vec<(PathBuf, Result<AddOutcome, String>)> = Vec::new();
    for image in &images {
        let text = match &caption {
            Some(c) => Ok(PairText {
                caption: c.clone(),
                entity: None,
                tags: Vec::new(),
            }),
            None => reimagen::caption_for_file(image, &reimagen::CaptionRules::default()),
        };
        match text {
            Ok(mut text) => {
                if entity.is_some() {
                    text.entity = entity.clone();
                } else if text.entity.is_none() {
                    text.entity = reimagen::caption_for_file(image, &Default::default())
                        .ok()
                        .and_then(|t| t.entity);
                }
                text.tags.extend(tags.iter().cloned());
                pairs.push(NewPair {
                    image: reimagen::ImageSource::File(image.clone()),
                    text,
                });
            }
            Err(e) => results.push((image.clone(), Err(e.to_string()))),
        }
    }
    let names: Vec<PathBuf> = pairs
        .iter()
        .map(|p| match &p.image {
            reimagen::ImageSource::File(f) => f.clone(),
            reimagen::ImageSource::Read(read) => read.path().to_path_buf(),
            reimagen::ImageSource::Bytes { name, .. } => PathBuf::from(name),
        })
        .collect();
    for (name, r) in names.into_iter().zip(kb.add_many(pairs)) {
        results.push((name, r.map_err(|e| e.to_string())));
    }
    let failed = results.iter().filter(|(_, r)| r.is_err()).count();
    if json {
        let rows: Vec<serde_json::Value> = results
            .iter()
            .map(|(path, r)| match r {
                Ok(AddOutcome::Added(id)) => {
                    serde_json::json!({"path": path, "status": "added", "id": id.to_hex()})
                }
                Ok(AddOutcome::Duplicate(id)) => {
                    serde_json::json!({"path": path, "status": "duplicate", "id": id.to_hex()})
                }
                Err(e) => serde_json::json!({"path": path, "status": "error", "error": e}),
            })
            .collect();
        out!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        for (path, r) in &results {
            match r {
                Ok(AddOutcome::Added(id)) => out!("added {}  {}", id.short(), path.display()),
                Ok(AddOutcome::Duplicate(id)) => {
                    out!("already present as {}  {}", id.short(), path.display())
                }
                Err(e) => eprintln!("error: {e}"),
            }
        }
    }
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn import(kb: &KnowledgeBase, dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} importing [{bar:40}] {pos}/{len} images ({per_sec}, eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let report = kb.import_dir(dir, &|p| {
        bar.set_length(p.total);
        bar.set_position(p.done);
    })?;
    bar.finish_and_clear();
    if json {
        let failed: Vec<serde_json::Value> = report
            .failed
            .iter()
            .map(|(p, e)| serde_json::json!({"path": p, "error": e}))
            .collect();
        out!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"added": report.added, "duplicates": report.duplicates, "failed": failed})
            )?
        );
    } else {
        for (path, e) in &report.failed {
            let _ = path;
            eprintln!("skipped: {e}");
        }
        out!(
            "imported {} new pairs ({} already present, {} refused)",
            report.added,
            report.duplicates,
            report.failed.len()
        );
    }
    Ok(if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A progress bar for an index rebuilt while the KB opens; hidden until it is needed.
fn rebuild_progress() -> reimagen::ProgressFn {
    let bar = ProgressBar::hidden();
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} pairs ({per_sec})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    std::sync::Arc::new(move |what: &str, p: reimagen::Progress| {
        if bar.is_hidden() && p.done < p.total {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        bar.set_message(what.to_string());
        bar.set_length(p.total);
        bar.set_position(p.done);
        if p.done >= p.total {
            bar.finish_and_clear();
        }
    })
}

fn export(
    kb: &KnowledgeBase,
    file: &Path,
    embeddings: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let count = if file == Path::new("-") {
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        reimagen::transfer::export_jsonl(kb, &mut out, embeddings)?
    } else {
        let f = std::fs::File::create(file)
            .with_context(|| format!("{}: cannot create the export file", file.display()))?;
        let mut out = std::io::BufWriter::new(f);
        reimagen::transfer::export_jsonl(kb, &mut out, embeddings)
            .with_context(|| format!("writing {}", file.display()))?
    };
    if file == Path::new("-") {
        return Ok(ExitCode::SUCCESS);
    }
    if json {
        out!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"file": file, "pairs": count, "embeddings": embeddings})
            )?
        );
    } else {
        out!("exported {count} pairs to {}", file.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn import_jsonl(kb: &KnowledgeBase, file: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} importing [{bar:40}] {pos}/{len} lines")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let report = reimagen::transfer::import_jsonl(kb, file, &|p| {
        bar.set_length(p.total);
        bar.set_position(p.done);
    });
    bar.finish_and_clear();
    let report = report.with_context(|| format!("importing {}", file.display()))?;
    if json {
        let failed: Vec<serde_json::Value> = report
            .failed
            .iter()
            .map(|(line, e)| serde_json::json!({"line": line, "error": e}))
            .collect();
        out!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "added": report.added,
                "updated": report.updated,
                "unchanged": report.unchanged,
                "failed": failed,
            }))?
        );
    } else {
        for (line, e) in &report.failed {
            eprintln!("{}:{line}: {e}", file.display());
        }
        out!(
            "imported {} new pairs ({} updated, {} unchanged, {} lines refused)",
            report.added,
            report.updated,
            report.unchanged,
            report.failed.len()
        );
    }
    Ok(if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_hits(hits: &[Hit], json: bool) -> anyhow::Result<ExitCode> {
    if json {
        out!("{}", serde_json::to_string_pretty(hits)?);
    } else if hits.is_empty() {
        out!("no hits");
    } else {
        for (i, h) in hits.iter().enumerate() {
            let sources: Vec<String> = h
                .provenance
                .iter()
                .map(|p| format!("{:?}#{}", p.retriever, p.rank).to_lowercase())
                .collect();
            out!(
                "{:>2}. {}  {:>8.4}  {:<18} {}  [{}]",
                i + 1,
                h.id.short(),
                h.score,
                h.entity.as_deref().unwrap_or("-"),
                h.caption,
                sources.join(" ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn spinner(message: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_message(message.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

fn embed(
    kb_dir: &Path,
    text: Option<String>,
    image: Option<PathBuf>,
    model: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use reimagen::Embedder;
    let folder = match model {
        Some(m) => m,
        None => reimagen::KbConfig::read(kb_dir)?
            .and_then(|c| c.embedder_folder(kb_dir))
            .with_context(|| {
                format!(
                    "no --model given and the knowledge base {} names no embedder",
                    kb_dir.display()
                )
            })?,
    };
    let device = reimagen::Device::from_env()?;
    let embedder = reimagen::ClipEmbedder::open(
        &folder,
        device.clone(),
        reimagen::embed::clip::WeightPrecision::F32,
    )
    .map_err(|source| reimagen::ModelError::Clip {
        model: folder.display().to_string(),
        source,
    })?;
    let embedding = match (text, image) {
        (Some(t), _) => embedder.embed_text(&t)?,
        (None, Some(path)) => {
            let decoded = reimagen::read_image_file(&path, &reimagen::DecodeLimits::default())?;
            embedder.embed_image(&decoded.image)?
        }
        (None, None) => bail!("give --text or --image"),
    };
    if json {
        let out = serde_json::json!({
            "embedding": embedding,
            "model": embedder.id(),
            "device": device.name(),
        });
        out!("{out}");
    } else {
        out!("model   {}", embedder.id());
        out!("device  {}", device.name());
        for v in &embedding {
            out!("{v}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn reembed(kb: &KnowledgeBase, json: bool) -> anyhow::Result<ExitCode> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "re-embedding [{bar:40}] {pos}/{len} pairs ({per_sec}, {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let report = kb.reembed(&|p| {
        bar.set_length(p.total);
        bar.set_position(p.done);
    })?;
    bar.finish_and_clear();
    if json {
        out!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!(
            "re-embedded {} pairs with {}",
            report.embedded,
            report.embedder
        );
        for (id, reason) in &report.failed {
            eprintln!("failed {id}: {reason}");
        }
    }
    Ok(if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The request and neighbour choice `reimagen generate`'s arguments ask for.
fn generation_settings(
    args: &GenerateArgs,
) -> (
    reimagen::GenerationRequest,
    reimagen::generate::NeighbourChoice,
) {
    use reimagen::generate::NeighbourChoice;
    let mut request = reimagen::GenerationRequest::new(args.prompt.clone());
    request.guidance = args.guidance.guidance();
    request.sampler = match args.sampler {
        SamplerArg::Ddpm => reimagen::SamplerKind::Ddpm,
        SamplerArg::Ddim => reimagen::SamplerKind::Ddim,
        SamplerArg::Dpmpp => reimagen::SamplerKind::Dpmpp,
    };
    request.steps = args.steps.clone();
    request.seed = args.seed;
    request.negative_prompt = args.negative.clone();
    request.batch_size = args.batch;
    let choice = if args.neighbours.is_empty() {
        let mut choice = NeighbourChoice::retrieve(args.k.unwrap_or(2)).mode(match args.mode {
            None | Some(RetrieveMode::Bm25) => SearchMode::Bm25,
            Some(RetrieveMode::Clip) => SearchMode::Clip,
            Some(RetrieveMode::Hybrid) => SearchMode::Hybrid,
        });
        if let Some(entity) = &args.entity {
            choice = choice.entity(entity.clone());
        }
        choice.min_score_ratio(args.min_score_ratio)
    } else {
        NeighbourChoice::ids(args.neighbours.iter().cloned())
    };
    (request, choice.allow_none(args.allow_no_neighbours))
}

fn generate(dir: &Path, args: GenerateArgs) -> anyhow::Result<ExitCode> {
    let (request, choice) = generation_settings(&args);
    // Impossible settings are refused before anything is opened or loaded.
    request.validate().map_err(reimagen::Error::from)?;
    // Generation only reads the KB, so it runs beside the watch daemon.
    let kb =
        open_kb(dir, true).with_context(|| format!("opening knowledge base {}", dir.display()))?;
    if args.dry_run {
        let selection = kb.choose_neighbours(&request.prompt, &choice)?;
        if args.json {
            out!("{}", serde_json::to_string_pretty(&selection)?);
        } else {
            for w in &selection.warnings {
                eprintln!("warning: {w}");
            }
            if selection.neighbours.is_empty() {
                out!("no neighbours");
            }
            for (i, n) in selection.neighbours.iter().enumerate() {
                let score = n.score.map_or("given".to_string(), |s| format!("{s:.4}"));
                out!(
                    "{:>2}. {}  {:>8}  {:<18} {}",
                    i + 1,
                    n.id.short(),
                    score,
                    n.entity.as_deref().unwrap_or("-"),
                    n.caption
                );
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let model = match &args.model {
        Some(m) => m.clone(),
        None => kb
            .config()
            .generator_model
            .as_ref()
            .map(|m| dir.join(m))
            .with_context(|| {
                format!(
                    "no --model given and the knowledge base {} names no generator model; give --model DIR or record one with `reimagen init --generator DIR`",
                    dir.display()
                )
            })?,
    };
    let device = reimagen::Device::from_env()?;
    let generator = load_generator(&model, &device)?;
    let cancel = reimagen::CancelToken::new();
    cancel_on_ctrl_c(cancel.clone());
    let mut observer = StageBars::new(generator.stages());
    let result = kb.generate(generator.as_ref(), request, &choice, &mut observer, &cancel);
    observer.finish(result.is_ok());
    let generation = match result {
        Err(reimagen::Error::Generate(e @ reimagen::GenerateError::Cancelled { .. })) => {
            eprintln!("{e}; nothing written");
            return Ok(ExitCode::from(130));
        }
        other => other?,
    };
    for w in &generation.record.warnings {
        eprintln!("warning: {w}");
    }
    let provenance = generation.write(&args.out, args.all_stages, &model, &device.name())?;
    if args.json {
        out!("{}", serde_json::to_string_pretty(&provenance)?);
    } else {
        for f in provenance.files.iter().filter(|f| f.final_stage) {
            out!("wrote {}", f.path.display());
        }
        out!("provenance {}", provenance.path.display());
        for n in &provenance.record.neighbours {
            let score = n.score.map_or("given".to_string(), |s| format!("{s:.4}"));
            out!("neighbour {}  {score:>8}  {}", n.id.short(), n.caption);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens the generator model folder `model` on `device`, with a spinner meanwhile.
fn load_generator(
    model: &Path,
    device: &reimagen::Device,
) -> anyhow::Result<Box<dyn reimagen::Generator + Send>> {
    let bar = spinner(&format!("loading {}", model.display()));
    let generator = reimagen::generate::open::open_generator(model, device);
    bar.finish_and_clear();
    Ok(generator.map_err(reimagen::Error::from)?)
}

/// A path of this checkout (`examples/demo`, `models/clip`): relative to the working directory
/// when it is there (`cargo run` in the checkout), else to the checkout the binary was built
/// from.
fn shipped(relative: &str) -> PathBuf {
    let here = PathBuf::from(relative);
    if here.exists() {
        here
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
    }
}

/// A shipped model folder (`models/clip`, `models/reimagen`) when this checkout has it: the
/// folder holds `marker`, the file its loader reads first.
fn shipped_model(relative: &str, marker: &str) -> Option<PathBuf> {
    let folder = shipped(relative);
    folder.join(marker).is_file().then_some(folder)
}

/// The demo's steps per stage when none are given: 25, and 10 for a stage of 256 px or more
/// (a super-resolution stage there follows its low-res input closely, and its steps are the
/// costly ones: the demo stays within minutes on a CPU).
fn demo_steps(stages: &[reimagen::generate::StageInfo]) -> Vec<usize> {
    stages
        .iter()
        .map(|s| if s.resolution >= 256 { 10 } else { 25 })
        .collect()
}

fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let model = args.model.unwrap_or_else(|| shipped("models/reimagen"));
    let clip = args.clip.unwrap_or_else(|| shipped("models/clip"));
    let samples = args.samples.unwrap_or_else(|| shipped("examples/demo"));
    for (what, folder) in [("CLIP", &clip), ("sample set", &samples)] {
        if !folder.is_dir() {
            bail!(
                "the demo's {what} folder {} does not exist",
                folder.display()
            );
        }
    }
    if !model.join("cascade.json").is_file() {
        bail!(
            "no generator model at {}: the demo needs a cascade folder (docs/generator.md §2). \
             Train one (docs/training.md) or give --model DIR",
            model.display()
        );
    }
    let device = reimagen::Device::from_env()?;
    let generator = load_generator(&model, &device)?;
    let mut request = reimagen::GenerationRequest::new("demo");
    request.steps = if args.steps.is_empty() {
        demo_steps(&generator.stages())
    } else {
        args.steps
    };
    request.seed = args.seed;
    request.guidance = args.guidance.guidance();
    request.validate().map_err(reimagen::Error::from)?;
    let options = reimagen::demo::DemoOptions {
        samples,
        out: args.out,
        clip,
        k: args.k,
        mode: match args.mode {
            RetrieveMode::Bm25 => SearchMode::Bm25,
            RetrieveMode::Clip => SearchMode::Clip,
            RetrieveMode::Hybrid => SearchMode::Hybrid,
        },
        request,
        limit: args.limit,
    };
    let cancel = reimagen::CancelToken::new();
    cancel_on_ctrl_c(cancel.clone());
    let mut bars = DemoBars::default();
    let report = reimagen::demo::run(&options, generator.as_ref(), &mut bars, &cancel);
    bars.finish();
    let report = match report {
        Err(reimagen::Error::Generate(e @ reimagen::GenerateError::Cancelled { .. })) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(130));
        }
        other => other?,
    };
    print_report(&report, args.json)?;
    Ok(ExitCode::SUCCESS)
}

/// The demo's bars: the import, then one bar over all generations.
#[derive(Default)]
struct DemoBars {
    import: Option<ProgressBar>,
    generations: Option<ProgressBar>,
    label: String,
}

impl DemoBars {
    fn finish(&mut self) {
        for bar in [self.import.take(), self.generations.take()]
            .into_iter()
            .flatten()
        {
            bar.finish();
        }
    }
}

impl reimagen::GenerationObserver for DemoBars {
    fn progress(&mut self, p: &reimagen::generate::Progress) {
        if let Some(bar) = &self.generations {
            bar.set_message(format!(
                "{}: stage {}/{} step {}/{}",
                self.label,
                p.stage + 1,
                p.stages,
                p.step + 1,
                p.steps
            ));
        }
    }
}

impl reimagen::demo::DemoObserver for DemoBars {
    fn import(&mut self, p: reimagen::Progress) {
        let bar = self.import.get_or_insert_with(|| {
            ProgressBar::new(p.total).with_style(
                ProgressStyle::with_template("importing  [{bar:40}] {pos}/{len} pairs ({eta})")
                    .expect("valid template")
                    .progress_chars("=> "),
            )
        });
        bar.set_length(p.total);
        bar.set_position(p.done);
    }

    fn generation(&mut self, prompt: &str, index: usize, total: usize, with: bool) {
        if let Some(bar) = self.import.take() {
            bar.finish();
        }
        let bar = self.generations.get_or_insert_with(|| {
            ProgressBar::new(2 * total as u64).with_style(
                ProgressStyle::with_template("generating [{bar:40}] {pos}/{len} {msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            )
        });
        bar.set_position(2 * index as u64 + u64::from(!with));
        self.label = format!(
            "{prompt} ({})",
            if with { "with retrieval" } else { "without" }
        );
        bar.set_message(self.label.clone());
    }
}

/// Cancels `cancel` on the first Ctrl-C (the generation stops before its next step); a second
/// one exits at once.
fn cancel_on_ctrl_c(cancel: reimagen::CancelToken) {
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            if tokio::signal::ctrl_c().await.is_err() {
                return;
            }
            eprintln!("\ncancelling after this step (Ctrl-C again to quit at once)");
            cancel.cancel();
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        });
    });
}

/// One progress bar per stage of the cascade; a new stage finishes the bar before it.
struct StageBars {
    stages: Vec<reimagen::generate::StageInfo>,
    current: Option<(usize, ProgressBar)>,
}

impl StageBars {
    fn new(stages: Vec<reimagen::generate::StageInfo>) -> Self {
        Self {
            stages,
            current: None,
        }
    }

    /// Ends the current bar, full when its stage completed, else where it stopped.
    fn finish(&mut self, completed: bool) {
        if let Some((_, bar)) = self.current.take() {
            if completed && let Some(len) = bar.length() {
                bar.set_position(len);
            }
            bar.finish();
        }
    }
}

impl reimagen::GenerationObserver for StageBars {
    fn progress(&mut self, p: &reimagen::generate::Progress) {
        if self
            .current
            .as_ref()
            .is_none_or(|(stage, _)| *stage != p.stage)
        {
            self.finish(true);
            let name = self.stages.get(p.stage).map_or_else(
                || format!("stage {}", p.stage + 1),
                |s| format!("{} {}²", s.name, s.resolution),
            );
            let bar = ProgressBar::new(p.steps as u64).with_style(
                ProgressStyle::with_template(&format!(
                    "{}/{} {name:<12} [{{bar:40}}] {{pos}}/{{len}} steps ({{per_sec}}, eta {{eta}})",
                    p.stage + 1,
                    p.stages
                ))
                .expect("valid template")
                .progress_chars("=> "),
            );
            self.current = Some((p.stage, bar));
        }
        if let Some((_, bar)) = &self.current {
            bar.set_length(p.steps as u64);
            // Sent before each step: the steps before it are done.
            bar.set_position(p.step as u64);
        }
    }
}

/// The parser of `--mode`: the library's [`SearchMode`] names, offered as the possible values
/// (the library's types carry no clap derive).
fn search_mode() -> impl clap::builder::TypedValueParser<Value = SearchMode> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["bm25", "clip", "image", "hybrid"])
        .try_map(|name| name.parse::<SearchMode>())
}
