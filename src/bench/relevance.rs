//! `reimagen bench relevance`: how often search finds the right entity, on a labelled query set
//! built from emojibase-data (the emoji names, keywords and their translations that the npm
//! package ships).
//!
//! For each language a KB is built of one pair per emoji: the emoji's name (in that language)
//! as caption and entity, its keywords as tags, and a tiny generated PNG as image. Queries with
//! known answers are derived from the same data: names, keywords, singular/plural forms
//! (English), accents removed or added, and seeded one-letter typos. Each system answers every
//! query; recall@1, recall@10 and nDCG@10 of the right entities are reported per language, kind
//! and system. `bm25-before` is the BM25 this project had before analyzers (tantivy's default
//! tokenizer over the same fields, exact words), rebuilt here so both run on the same data.
//!
//! Given the emoji dataset (`reimagen dataset build`, docs/dataset.md) the pairs are real: each
//! emoji's image is one of its renditions (chosen by the seed, the smallest size the dataset
//! has) and its caption the one the dataset gives that rendition (`"dog face, noto style"`);
//! entity and tags stay the locale's. That is what makes the `clip` and `hybrid` rows mean
//! something: without it the images are placeholders.
//!
//! Not here: the synthetic speed workload (`bench.rs`); the analyzers (`text/analyzer.rs`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::embed::Embedder;
use crate::error::{Error, Result, io_err};
use crate::kb::{KnowledgeBase, NewPair};
use crate::search::{Query, SearchMode};
use crate::text::TextLanguage;

/// The npm package the benchmark reads.
pub const PACKAGE: &str = "emojibase-data";

/// Settings of a relevance run.
///
/// By default: the data in [`default_data_dir`], English, French, German and Spanish, seed 7,
/// at most 300 queries per language and kind, no embedder (BM25 rows only).
#[derive(Clone)]
pub struct RelevanceOptions {
    /// The emojibase-data tarball (`npm pack` output), a folder holding one, or an unpacked
    /// package folder.
    pub data: PathBuf,
    /// emojibase locales to build a KB for (`en`, `fr`, `de`, `es`, …).
    pub locales: Vec<String>,
    /// Seed of the sampling and the typos.
    pub seed: u64,
    /// At most this many queries per language and kind.
    pub max_queries: usize,
    /// An embedder for the `clip` and `hybrid` rows; without one they are skipped.
    pub embedder: Option<Arc<dyn Embedder>>,
    /// The emoji dataset folder (holding `manifest.jsonl`), for real images and captions.
    pub dataset: Option<PathBuf>,
}

impl Default for RelevanceOptions {
    fn default() -> Self {
        RelevanceOptions {
            data: default_data_dir(),
            locales: ["en", "fr", "de", "es"].map(String::from).to_vec(),
            seed: 7,
            max_queries: 300,
            embedder: None,
            dataset: None,
        }
    }
}

/// Where the benchmark looks for the data by default: `$XDG_CACHE_HOME/reimagen/npm`.
pub fn default_data_dir() -> PathBuf {
    cache_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("reimagen")
        .join("npm")
}

/// The user's cache folder (`dirs` with the `cli` feature; without it, the XDG rule).
fn cache_dir() -> Option<PathBuf> {
    #[cfg(feature = "cli")]
    return dirs::cache_dir();
    #[cfg(not(feature = "cli"))]
    return std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
}

/// The scores of one system on one kind of query in one language.
#[derive(Clone, Debug, Serialize)]
pub struct RelevanceRow {
    /// emojibase locale.
    pub locale: String,
    /// Kind of query (`name`, `keyword`, `plural`, `accent`, `typo`).
    pub kind: String,
    /// `bm25-before`, `bm25`, `clip` or `hybrid`.
    pub system: String,
    /// Queries asked.
    pub queries: usize,
    /// Share of the right entities in the first hit (see the module header).
    pub recall_at_1: f64,
    /// Share of the right entities in the first ten hits, out of at most ten.
    pub recall_at_10: f64,
    /// nDCG@10 with every right entity of gain 1.
    pub ndcg_at_10: f64,
}

/// What a relevance run measured.
#[derive(Clone, Debug, Serialize)]
pub struct RelevanceReport {
    /// The data read.
    pub data: PathBuf,
    /// Its package version.
    pub version: String,
    /// Pairs in each language's KB.
    pub pairs: BTreeMap<String, usize>,
    /// The emoji dataset the images and captions came from, if any.
    pub dataset: Option<PathBuf>,
    /// The embedder of the `clip` and `hybrid` rows, if any.
    pub embedder: Option<String>,
    /// One row per language, kind and system.
    pub rows: Vec<RelevanceRow>,
    /// What was skipped and why.
    pub notes: Vec<String>,
}

impl std::fmt::Display for RelevanceReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{PACKAGE} {} ({})", self.version, self.data.display())?;
        if let Some(d) = &self.dataset {
            writeln!(f, "images and captions: {}", d.display())?;
        }
        if let Some(e) = &self.embedder {
            writeln!(f, "embedder: {e}")?;
        }
        writeln!(
            f,
            "{:<6} {:<8} {:<12} {:>7} {:>6} {:>6} {:>8}",
            "locale", "kind", "system", "queries", "R@1", "R@10", "nDCG@10"
        )?;
        for r in &self.rows {
            writeln!(
                f,
                "{:<6} {:<8} {:<12} {:>7} {:>6.3} {:>6.3} {:>8.3}",
                r.locale, r.kind, r.system, r.queries, r.recall_at_1, r.recall_at_10, r.ndcg_at_10
            )?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Deserialize)]
struct Emoji {
    label: String,
    hexcode: String,
    #[serde(default)]
    tags: Vec<String>,
    group: Option<u32>,
}

/// The emojibase group of skin tones and hair components: not entities.
const COMPONENT_GROUP: u32 = 2;

/// A labelled query: its text and the indices of the right entities.
struct Labelled {
    kind: &'static str,
    text: String,
    relevant: Vec<usize>,
}

/// The files of the package, by path inside it (`en/data.json`).
struct Package {
    path: PathBuf,
    files: HashMap<String, Vec<u8>>,
}

fn missing(path: &Path, why: &str) -> Error {
    Error::Config {
        path: path.to_path_buf(),
        reason: format!(
            "{why}; fetch the data with `mkdir -p {dir} && cd {dir} && npm pack {PACKAGE}` \
             (or give its tarball with --data)",
            dir = if path.extension().is_some() {
                path.parent().unwrap_or(path).display()
            } else {
                path.display()
            }
        ),
    }
}

/// Finds and reads the package: a `.tgz`, a folder holding `emojibase-data-*.tgz` (the newest
/// version wins), or an unpacked folder with `en/data.json` (or `package/en/data.json`).
fn load_package(data: &Path) -> Result<Package> {
    if data.is_dir() {
        for root in [data.to_path_buf(), data.join("package")] {
            if root.join("en").join("data.json").is_file() {
                let mut files = HashMap::new();
                for entry in std::fs::read_dir(&root).map_err(io_err(&root))? {
                    let entry = entry.map_err(io_err(&root))?;
                    let file = entry.path().join("data.json");
                    if file.is_file() {
                        let name = format!("{}/data.json", entry.file_name().to_string_lossy());
                        files.insert(name, std::fs::read(&file).map_err(io_err(&file))?);
                    }
                }
                let manifest = root.join("package.json");
                if manifest.is_file() {
                    files.insert(
                        "package.json".into(),
                        std::fs::read(&manifest).map_err(io_err(&manifest))?,
                    );
                }
                return Ok(Package { path: root, files });
            }
        }
        let mut tarballs: Vec<PathBuf> = std::fs::read_dir(data)
            .map_err(io_err(data))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("emojibase-data-") && n.ends_with(".tgz"))
            })
            .collect();
        tarballs.sort_by_key(|p| version_key(p));
        return match tarballs.pop() {
            Some(t) => read_tarball(&t),
            None => Err(missing(data, &format!("no {PACKAGE}-*.tgz here"))),
        };
    }
    if data.is_file() {
        return read_tarball(data);
    }
    Err(missing(data, "no such file or folder"))
}

/// Sorts `emojibase-data-16.0.3.tgz` before `emojibase-data-17.0.0.tgz`.
fn version_key(path: &Path) -> Vec<u64> {
    path.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .trim_start_matches("emojibase-data-")
        .trim_end_matches(".tgz")
        .split('.')
        .map(|p| p.parse().unwrap_or(0))
        .collect()
}

fn read_tarball(path: &Path) -> Result<Package> {
    let bad = |reason: String| Error::Config {
        path: path.to_path_buf(),
        reason: format!("not a readable {PACKAGE} tarball: {reason}"),
    };
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut files = HashMap::new();
    for entry in archive.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let name = entry
            .path()
            .map_err(|e| bad(e.to_string()))?
            .to_string_lossy()
            .trim_start_matches("package/")
            .to_string();
        let wanted = name == "package.json"
            || (name.ends_with("/data.json") && name.matches('/').count() == 1);
        if wanted {
            let mut bytes = Vec::new();
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| bad(e.to_string()))?;
            files.insert(name, bytes);
        }
    }
    if !files.contains_key("en/data.json") {
        return Err(bad("it holds no en/data.json".into()));
    }
    Ok(Package {
        path: path.to_path_buf(),
        files,
    })
}

impl Package {
    fn version(&self) -> String {
        self.files
            .get("package.json")
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
            .and_then(|v| v["version"].as_str().map(String::from))
            .unwrap_or_else(|| "unknown".into())
    }

    fn emojis(&self, locale: &str) -> Result<Vec<Emoji>> {
        let name = format!("{locale}/data.json");
        let bytes = self.files.get(&name).ok_or_else(|| Error::Config {
            path: self.path.clone(),
            reason: format!("{PACKAGE} has no locale `{locale}` ({name} is missing)"),
        })?;
        let all: Vec<Emoji> = serde_json::from_slice(bytes).map_err(|e| Error::Config {
            path: self.path.join(&name),
            reason: format!("not emojibase data: {e}"),
        })?;
        Ok(all
            .into_iter()
            .filter(|e| e.group.is_some_and(|g| g != COMPONENT_GROUP) && !e.label.is_empty())
            .collect())
    }
}

/// The stemmer language of an emojibase locale.
fn language_of(locale: &str) -> TextLanguage {
    let base = locale.split('-').next().unwrap_or(locale);
    let base = if base == "nb" { "no" } else { base };
    base.parse().unwrap_or(TextLanguage::None)
}

/// Runs the relevance benchmark; each language's KB lives in a folder under `work`.
pub fn run_relevance(
    work: &Path,
    opts: &RelevanceOptions,
    progress: &dyn Fn(&str),
) -> Result<RelevanceReport> {
    let package = load_package(&opts.data)?;
    let mut report = RelevanceReport {
        data: package.path.clone(),
        version: package.version(),
        pairs: BTreeMap::new(),
        dataset: opts.dataset.clone(),
        embedder: opts.embedder.as_ref().map(|e| e.id()),
        rows: Vec::new(),
        notes: Vec::new(),
    };
    let renditions = match &opts.dataset {
        Some(dir) => Some(dataset_renditions(dir, &package.emojis("en")?, opts.seed)?),
        None => {
            if opts.embedder.is_some() {
                report.notes.push(
                    "clip and hybrid rows ran on generated placeholder images: give the emoji \
                     dataset (--dataset) for real ones"
                        .into(),
                );
            }
            None
        }
    };
    if opts.embedder.is_none() {
        report.notes.push(
            "clip and hybrid rows skipped: no embedder (they run when the bench is given one)"
                .into(),
        );
    }
    for locale in &opts.locales {
        let mut emojis = package.emojis(locale)?;
        if let Some(r) = &renditions {
            let before = emojis.len();
            emojis.retain(|e| r.contains_key(&e.hexcode));
            if emojis.len() < before {
                report.notes.push(format!(
                    "{locale}: {} emojis left out, the dataset has no rendition of them",
                    before - emojis.len()
                ));
            }
        }
        let language = language_of(locale);
        progress(&format!(
            "{locale}: building a KB of {} pairs ({language})",
            emojis.len()
        ));
        let dir = work.join(locale);
        let mut builder = KnowledgeBase::builder(&dir).create(true).language(language);
        if let Some(e) = &opts.embedder {
            builder = builder.embedder(e.clone());
        }
        let kb = builder.open()?;
        let pairs: Vec<NewPair> = emojis
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let (image, caption) = match renditions.as_ref().and_then(|r| r.get(&e.hexcode)) {
                    Some((path, caption)) => {
                        (std::fs::read(path).map_err(io_err(path))?, caption.clone())
                    }
                    None => (super::index_png(i), e.label.clone()),
                };
                let mut pair =
                    NewPair::bytes(e.hexcode.clone(), image, caption).entity(e.label.clone());
                for t in &e.tags {
                    pair = pair.tag(t.clone());
                }
                Ok(pair)
            })
            .collect::<Result<_>>()?;
        let mut of_id = HashMap::new();
        for (i, r) in kb.add_many(pairs).into_iter().enumerate() {
            of_id.insert(r?.id(), i);
        }
        report.pairs.insert(locale.clone(), emojis.len());
        let baseline = Baseline::build(&emojis)?;
        let queries = labelled_queries(&emojis, locale, opts.seed, opts.max_queries);
        progress(&format!("{locale}: asking {} queries", queries.len()));
        let mut systems: Vec<(&str, Option<SearchMode>)> =
            vec![("bm25-before", None), ("bm25", Some(SearchMode::Bm25))];
        if opts.embedder.is_some() {
            systems.push(("clip", Some(SearchMode::Clip)));
            systems.push(("hybrid", Some(SearchMode::Hybrid)));
        }
        let mut kinds: Vec<&str> = Vec::new();
        for q in &queries {
            if !kinds.contains(&q.kind) {
                kinds.push(q.kind);
            }
        }
        for kind in kinds {
            for (system, mode) in &systems {
                let mut scores = Scores::default();
                for q in queries.iter().filter(|q| q.kind == kind) {
                    let ranked: Vec<usize> = match mode {
                        None => baseline.search(&q.text, 10)?,
                        Some(mode) => kb
                            .search(&Query::text(q.text.clone()).mode(*mode).k(10))?
                            .iter()
                            .filter_map(|h| of_id.get(&h.id).copied())
                            .collect(),
                    };
                    scores.add(&ranked, &q.relevant);
                }
                report.rows.push(scores.row(locale, kind, system));
            }
        }
    }
    Ok(report)
}

/// For each emoji (by hexcode) of the English data, one rendition of its dataset entity (the
/// entity is the English name in lower case): the image file of the smallest size and the
/// rendition's caption. The rendition is picked by a hash of the seed and the hexcode, so every
/// locale gets the same image.
fn dataset_renditions(
    dir: &Path,
    english: &[Emoji],
    seed: u64,
) -> Result<HashMap<String, (PathBuf, String)>> {
    let manifest = crate::dataset::read_manifest(dir).map_err(|e| Error::Config {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut by_entity: HashMap<&str, Vec<&crate::dataset::ManifestEntry>> = HashMap::new();
    for m in &manifest {
        by_entity.entry(m.entity.as_str()).or_default().push(m);
    }
    let mut out = HashMap::new();
    for e in english {
        let Some(list) = by_entity.get(e.label.to_lowercase().as_str()) else {
            continue;
        };
        let hash = blake3::hash(format!("{seed}:{}", e.hexcode).as_bytes());
        let pick = u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"));
        let m = list[(pick % list.len() as u64) as usize];
        let smallest = m
            .files
            .iter()
            .min_by_key(|(size, _)| size.parse::<u32>().unwrap_or(u32::MAX));
        if let Some((_, file)) = smallest {
            out.insert(e.hexcode.clone(), (dir.join(file), m.caption.clone()));
        }
    }
    Ok(out)
}

#[derive(Default)]
struct Scores {
    n: usize,
    r1: f64,
    r10: f64,
    ndcg: f64,
}

impl Scores {
    fn add(&mut self, ranked: &[usize], relevant: &[usize]) {
        let relevant: HashSet<usize> = relevant.iter().copied().collect();
        let found = |k: usize| {
            ranked
                .iter()
                .take(k)
                .filter(|i| relevant.contains(i))
                .count()
        };
        self.n += 1;
        self.r1 += found(1) as f64 / relevant.len().min(1) as f64;
        self.r10 += found(10) as f64 / relevant.len().min(10) as f64;
        let dcg: f64 = ranked
            .iter()
            .take(10)
            .enumerate()
            .filter(|(_, i)| relevant.contains(i))
            .map(|(rank, _)| 1.0 / (rank as f64 + 2.0).log2())
            .sum();
        let ideal: f64 = (0..relevant.len().min(10))
            .map(|rank| 1.0 / (rank as f64 + 2.0).log2())
            .sum();
        self.ndcg += dcg / ideal;
    }

    fn row(&self, locale: &str, kind: &str, system: &str) -> RelevanceRow {
        let n = self.n.max(1) as f64;
        RelevanceRow {
            locale: locale.into(),
            kind: kind.into(),
            system: system.into(),
            queries: self.n,
            recall_at_1: self.r1 / n,
            recall_at_10: self.r10 / n,
            ndcg_at_10: self.ndcg / n,
        }
    }
}

/// Words of a name or keyword as people type them: split on anything but letters and digits.
fn plain_words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// The labelled queries of one language (see the module header).
fn labelled_queries(emojis: &[Emoji], locale: &str, seed: u64, max: usize) -> Vec<Labelled> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut by_keyword: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut by_word: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, e) in emojis.iter().enumerate() {
        for t in &e.tags {
            by_keyword.entry(t.to_lowercase()).or_default().push(i);
        }

        for w in plain_words(&e.label).into_iter().chain(
            e.tags
                .iter()
                .flat_map(|t| plain_words(t).into_iter())
                .collect::<Vec<_>>(),
        ) {
            let list = by_word.entry(w).or_default();
            if list.last() != Some(&i) {
                list.push(i);
            }
        }
    }
    // An emoji named by a keyword answers it too ("satellite" is not among the keywords of the
    // emoji named so).
    for (i, e) in emojis.iter().enumerate() {
        if let Some(list) = by_keyword.get_mut(&e.label.to_lowercase())
            && !list.contains(&i)
        {
            list.push(i);
        }
    }
    // Keywords that single out a handful of entities make answerable queries.
    let keywords: Vec<(&String, &Vec<usize>)> = by_keyword
        .iter()
        .filter(|(_, ids)| ids.len() <= 10)
        .collect();
    let mut out = Vec::new();
    let mut take = |rng: &mut ChaCha8Rng, mut candidates: Vec<Labelled>| {
        candidates.shuffle(rng);
        candidates.truncate(max);
        out.extend(candidates);
    };

    let names = emojis
        .iter()
        .enumerate()
        .map(|(i, e)| Labelled {
            kind: "name",
            text: e.label.clone(),
            relevant: vec![i],
        })
        .collect();
    take(&mut rng, names);

    let keyword_queries = keywords
        .iter()
        .map(|(k, ids)| Labelled {
            kind: "keyword",
            text: (*k).clone(),
            relevant: (*ids).clone(),
        })
        .collect();
    take(&mut rng, keyword_queries);

    if locale.starts_with("en") {
        // Singular ↔ plural of one-word keywords (with every entity holding either form), and
        // of the last word of names.
        let mut forms = Vec::new();
        for (k, ids) in &keywords {
            if k.chars().all(|c| c.is_ascii_lowercase()) && k.len() >= 3 {
                let other = english_number(k);
                let mut relevant = (*ids).clone();
                relevant.extend(by_keyword.get(&other).into_iter().flatten());
                relevant.sort_unstable();
                relevant.dedup();
                forms.push(Labelled {
                    kind: "plural",
                    text: other,
                    relevant,
                });
            }
        }
        for (i, e) in emojis.iter().enumerate() {
            let words: Vec<&str> = e.label.split(' ').collect();
            if let Some((last, rest)) = words.split_last()
                && last.len() >= 3
                && last.chars().all(|c| c.is_ascii_lowercase())
            {
                let mut text = rest.join(" ");
                if !text.is_empty() {
                    text.push(' ');
                }
                text.push_str(&english_number(last));
                forms.push(Labelled {
                    kind: "plural",
                    text,
                    relevant: vec![i],
                });
            }
        }
        take(&mut rng, forms);
    }

    // Accents: removed where the name has them, added to one vowel where it has none.
    let accents = emojis
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            let stripped = strip_accents(&e.label);
            let text = if stripped != e.label {
                stripped
            } else {
                add_accent(&e.label, &mut rng)?
            };
            Some(Labelled {
                kind: "accent",
                text,
                relevant: vec![i],
            })
        })
        .collect();
    take(&mut rng, accents);

    // Typos: one seeded edit in the longest word of a name (5+ letters), and in keywords.
    let mut typos = Vec::new();
    for (i, e) in emojis.iter().enumerate() {
        if let Some(text) = misspell(&e.label, &by_word, &mut rng) {
            typos.push(Labelled {
                kind: "typo",
                text,
                relevant: vec![i],
            });
        }
    }
    for (k, ids) in &keywords {
        if let Some(text) = misspell(k, &by_word, &mut rng) {
            typos.push(Labelled {
                kind: "typo",
                text,
                relevant: (*ids).clone(),
            });
        }
    }
    take(&mut rng, typos);
    out
}

/// The other grammatical number of an English noun, by the regular rules.
fn english_number(word: &str) -> String {
    let consonant_before = |s: &str| s.chars().rev().nth(1).is_some_and(|c| !"aeiou".contains(c));
    if let Some(stem) = word.strip_suffix("ies") {
        format!("{stem}y")
    } else if ["ches", "shes", "sses", "xes"]
        .iter()
        .any(|s| word.ends_with(s))
    {
        word[..word.len() - 2].to_string()
    } else if word.ends_with('s') && !word.ends_with("ss") && !word.ends_with("us") {
        word[..word.len() - 1].to_string()
    } else if word.ends_with('y') && consonant_before(word) {
        format!("{}ies", &word[..word.len() - 1])
    } else if ["ch", "sh", "ss", "x"].iter().any(|s| word.ends_with(s)) {
        format!("{word}es")
    } else {
        format!("{word}s")
    }
}

/// The text without the accents of Latin letters (its own table, so that the benchmark does
/// not grade the folding with itself).
fn strip_accents(text: &str) -> String {
    const TABLE: &[(&str, char)] = &[
        ("àáâãäåā", 'a'),
        ("çćč", 'c'),
        ("èéêëēę", 'e'),
        ("ìíîïī", 'i'),
        ("ñń", 'n'),
        ("òóôõöøō", 'o'),
        ("ùúûüū", 'u'),
        ("ýÿ", 'y'),
        ("śš", 's'),
        ("źżž", 'z'),
        ("ł", 'l'),
        ("ÀÁÂÃÄÅ", 'A'),
        ("Ç", 'C'),
        ("ÈÉÊË", 'E'),
        ("ÌÍÎÏ", 'I'),
        ("Ñ", 'N'),
        ("ÒÓÔÕÖØ", 'O'),
        ("ÙÚÛÜ", 'U'),
    ];
    text.chars()
        .map(|c| {
            TABLE
                .iter()
                .find(|(from, _)| from.contains(c))
                .map_or(c, |(_, to)| *to)
        })
        .collect()
}

/// The text with one vowel accented, or `None` when it has no plain vowel.
fn add_accent(text: &str, rng: &mut ChaCha8Rng) -> Option<String> {
    const ACCENTED: &[(char, char)] = &[('a', 'á'), ('e', 'é'), ('i', 'í'), ('o', 'ö'), ('u', 'ü')];
    let chars: Vec<char> = text.chars().collect();
    let vowels: Vec<usize> = (0..chars.len())
        .filter(|&i| ACCENTED.iter().any(|(v, _)| *v == chars[i]))
        .collect();
    let &at = vowels.get(rng.random_range(0..vowels.len().max(1)))?;
    let mut out = chars.clone();
    out[at] = ACCENTED
        .iter()
        .find(|(v, _)| *v == chars[at])
        .map(|(_, a)| *a)?;
    Some(out.into_iter().collect())
}

/// The text with one edit (substitution, deletion, insertion or transposition) in its longest
/// word of 5+ letters; `None` when there is none or the edit makes a word the data holds.
fn misspell(
    text: &str,
    vocabulary: &HashMap<String, Vec<usize>>,
    rng: &mut ChaCha8Rng,
) -> Option<String> {
    let words: Vec<&str> = text.split(' ').collect();
    let (at, word) = words
        .iter()
        .enumerate()
        .filter(|(_, w)| w.chars().count() >= 5 && w.chars().all(char::is_alphabetic))
        .max_by_key(|(_, w)| w.chars().count())?;
    let mut chars: Vec<char> = word.chars().collect();
    // Not the first letter: people rarely get that one wrong.
    let i = rng.random_range(1..chars.len());
    let letter = (b'a' + rng.random_range(0..26u8)) as char;
    match rng.random_range(0..4) {
        0 => chars[i] = letter,
        1 => {
            chars.remove(i);
        }
        2 => chars.insert(i, letter),
        _ => {
            let j = i.max(2);
            chars.swap(j - 1, j);
        }
    }
    let typo: String = chars.into_iter().collect();
    if typo == *word || vocabulary.contains_key(&typo.to_lowercase()) {
        return None;
    }
    let mut out = words.clone();
    out[at] = &typo;
    Some(out.join(" "))
}

/// The BM25 of before the analyzers: tantivy's default tokenizer (split on non-alphanumerics,
/// lower-case), the query parsed leniently over caption, entity (×1.5) and tags.
struct Baseline {
    index: tantivy::Index,
    reader: tantivy::IndexReader,
    fields: [tantivy::schema::Field; 3],
}

impl Baseline {
    fn build(emojis: &[Emoji]) -> Result<Baseline> {
        use tantivy::schema::{FAST, Schema, TEXT};
        let err = |e: tantivy::TantivyError| Error::Query(format!("baseline index: {e}"));
        let mut b = Schema::builder();
        let caption = b.add_text_field("caption", TEXT);
        let entity = b.add_text_field("entity", TEXT);
        let tags = b.add_text_field("tags", TEXT);
        let n = b.add_u64_field("n", FAST);
        let index = tantivy::Index::create_in_ram(b.build());
        let mut writer: tantivy::IndexWriter =
            index.writer_with_num_threads(1, 32 << 20).map_err(err)?;
        for (i, e) in emojis.iter().enumerate() {
            let mut d = tantivy::TantivyDocument::default();
            d.add_text(caption, &e.label);
            d.add_text(entity, &e.label);
            for t in &e.tags {
                d.add_text(tags, t);
            }
            d.add_u64(n, i as u64);
            writer.add_document(d).map_err(err)?;
        }
        writer.commit().map_err(err)?;
        let reader = index.reader().map_err(err)?;
        Ok(Baseline {
            index,
            reader,
            fields: [caption, entity, tags],
        })
    }

    fn search(&self, text: &str, k: usize) -> Result<Vec<usize>> {
        let err = |e: tantivy::TantivyError| Error::Query(format!("baseline index: {e}"));
        let mut parser = tantivy::query::QueryParser::for_index(&self.index, self.fields.to_vec());
        parser.set_field_boost(self.fields[1], 1.5);
        let (query, _) = parser.parse_query_lenient(text);
        let searcher = self.reader.searcher();
        let top = searcher
            .search(
                &query,
                &tantivy::collector::TopDocs::with_limit(k).order_by_score(),
            )
            .map_err(err)?;
        let mut out = Vec::with_capacity(top.len());
        for (_, address) in top {
            let column = searcher
                .segment_reader(address.segment_ord)
                .fast_fields()
                .u64("n")
                .map_err(err)?;
            if let Some(n) = column.first(address.doc_id) {
                out.push(n as usize);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn english_numbers_follow_the_regular_rules() {
        for (a, b) in [
            ("corgi", "corgis"),
            ("beach", "beaches"),
            ("baby", "babies"),
            ("box", "boxes"),
            ("glass", "glasses"),
            ("day", "days"),
        ] {
            assert_eq!(english_number(a), b);
            assert_eq!(english_number(b), a);
        }
    }

    #[test]
    fn accents_are_stripped_and_added() {
        assert_eq!(
            strip_accents("Café Ölberg, São Tomé"),
            "Cafe Olberg, Sao Tome"
        );
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let accented = add_accent("cat face", &mut rng).unwrap();
        assert_ne!(accented, "cat face");
        assert_eq!(strip_accents(&accented), "cat face");
        assert_eq!(add_accent("xyz", &mut rng), None);
    }

    #[test]
    fn typos_are_one_edit_and_never_a_known_word() {
        let vocabulary: HashMap<String, Vec<usize>> =
            [("rocket".to_string(), vec![0])].into_iter().collect();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..50 {
            if let Some(t) = misspell("red rocket", &vocabulary, &mut rng) {
                assert!(t.starts_with("red r"), "{t}");
                assert_ne!(t, "red rocket");
                let len = t.chars().count() as i64;
                assert!((len - 10).abs() <= 1);
            }
        }
        assert_eq!(misspell("cat", &vocabulary, &mut rng), None);
    }

    #[test]
    fn scores_count_right_entities() {
        let mut s = Scores::default();
        s.add(&[3, 1, 2], &[1]);
        let row = s.row("en", "name", "bm25");
        assert_eq!(row.recall_at_1, 0.0);
        assert_eq!(row.recall_at_10, 1.0);
        assert!((row.ndcg_at_10 - 1.0 / 3f64.log2()).abs() < 1e-9);
    }
}
