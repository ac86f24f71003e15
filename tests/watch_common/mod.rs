//! Helpers shared by the `watch_*` tests: small generated images, the expected KB state computed
//! from a folder (the oracle), the KB's actual state, and a bounded wait for convergence.
//!
//! The oracle reads the folder with the same caption rules and decoder as `import`, but shares no
//! code with the daemon's engine.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use image::{ImageFormat, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use reimagen::{CaptionRules, DecodeLimits, ImageId, KnowledgeBase, PairText, WatchOptions};
use reimagen::{caption_for_file, is_image_path, read_image_file};

/// Logs the daemon to stderr when `REIMAGEN_LOG` is set (for debugging a failure).
pub fn init_logs() {
    if let Ok(filter) = std::env::var("REIMAGEN_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// Options for tests: short stability interval, immediate deletes, and a truncated file
/// quarantined once it has stayed so for 300 ms.
pub fn fast_options() -> WatchOptions {
    WatchOptions::default()
        .stable_for(Duration::from_millis(60))
        .truncated_grace(Duration::from_millis(300))
        .delete_grace(Duration::ZERO)
        .status_every(Duration::from_millis(100))
        .fallback_poll(Duration::from_millis(200))
}

/// An image with random pixels, encoded as PNG or JPEG.
pub fn random_image(rng: &mut impl Rng, format: ImageFormat) -> Vec<u8> {
    let (w, h) = (rng.random_range(2..24), rng.random_range(2..24));
    let img = RgbImage::from_fn(w, h, |_, _| Rgb([rng.random(), rng.random(), rng.random()]));
    encode(&img, format)
}

/// A PNG of one colour (deterministic in `seed`).
pub fn png(seed: u64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    random_image(&mut rng, ImageFormat::Png)
}

/// A JPEG with random pixels (deterministic in `seed`).
pub fn jpeg(seed: u64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    random_image(&mut rng, ImageFormat::Jpeg)
}

pub fn encode(img: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), format)
        .expect("encoding into memory");
    out
}

/// What the KB should hold for a folder, or holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// Path → pair id.
    pub paths: BTreeMap<String, ImageId>,
    /// Pair id → (caption, entity, tags).
    pub texts: BTreeMap<ImageId, (String, Option<String>, Vec<String>)>,
    /// Quarantined paths.
    pub quarantined: BTreeSet<String>,
}

impl State {
    /// A short description of how two states differ.
    pub fn diff(&self, other: &State) -> String {
        let mut out = Vec::new();
        for (p, id) in &self.paths {
            match other.paths.get(p) {
                None => out.push(format!("only expected: {p}")),
                Some(o) if o != id => out.push(format!("id differs: {p}")),
                _ => {}
            }
        }
        for p in other.paths.keys() {
            if !self.paths.contains_key(p) {
                out.push(format!("only in KB: {p}"));
            }
        }
        for (id, t) in &self.texts {
            if let Some(o) = other.texts.get(id)
                && o != t
            {
                out.push(format!("text of {}: expected {t:?}, KB {o:?}", id.short()));
            }
        }
        for q in self.quarantined.symmetric_difference(&other.quarantined) {
            out.push(format!(
                "quarantine differs: {q} (expected: {})",
                self.quarantined.contains(q)
            ));
        }
        out.join("\n")
    }
}

fn normalise(text: PairText, rules: &CaptionRules, path: &Path) -> Option<PairText> {
    text.normalised(rules, path).ok()
}

/// The state the KB should reach for the folder `root`: every regular image file that decodes
/// and has a valid caption, by path; the caption of a pair held by several files is that of the
/// first path; every other image file quarantined.
pub fn expected(root: &Path) -> State {
    let rules = CaptionRules::default();
    let limits = DecodeLimits::default();
    let mut files = Vec::new();
    collect(root, &mut files);
    files.sort();
    let mut state = State::default();
    let mut first: BTreeMap<ImageId, PathBuf> = BTreeMap::new();
    let mut texts: BTreeMap<PathBuf, PairText> = BTreeMap::new();
    for path in files {
        let lossy = path.to_string_lossy().into_owned();
        let sidecar_link = std::fs::symlink_metadata(path.with_extension("txt"))
            .is_ok_and(|m| m.file_type().is_symlink());
        let text = if sidecar_link {
            None
        } else {
            caption_for_file(&path, &rules)
                .ok()
                .and_then(|t| normalise(t, &rules, &path))
        };
        let decoded = read_image_file(&path, &limits).ok();
        match (text, decoded, path.to_str()) {
            (Some(text), Some(decoded), Some(_)) => {
                state.paths.insert(lossy, decoded.id);
                first.entry(decoded.id).or_insert_with(|| path.clone());
                texts.insert(path, text);
            }
            _ => {
                state.quarantined.insert(lossy);
            }
        }
    }
    for (id, path) in first {
        let t = &texts[&path];
        state
            .texts
            .insert(id, (t.caption.clone(), t.entity.clone(), t.tags.clone()));
    }
    state
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            collect(&path, out);
        } else if kind.is_file() && is_image_path(&path) {
            out.push(path);
        }
    }
}

/// What the KB holds under `root`.
pub fn actual(kb: &KnowledgeBase, root: &Path) -> State {
    let mut state = State::default();
    for record in kb.paths().expect("paths") {
        if Path::new(&record.path).starts_with(root) {
            state.paths.insert(record.path.clone(), record.id);
            if let Some(pair) = kb.get(&record.id).expect("get") {
                state
                    .texts
                    .insert(record.id, (pair.caption, pair.entity, pair.tags));
            }
        }
    }
    for q in kb.quarantined().expect("quarantined") {
        if Path::new(&q.path).starts_with(root) {
            state.quarantined.insert(q.path);
        }
    }
    state
}

/// Polls `f` until it returns true or `timeout` passes; true if it did.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the KB equals the folder and the daemon's queue is empty (and the KB still
/// equals the folder then); panics with the difference after `timeout`.
pub fn converge(kb: &KnowledgeBase, watcher: &reimagen::Watcher, root: &Path, timeout: Duration) {
    let mut last = (State::default(), State::default());
    let ok = wait_until(timeout, || {
        let want = expected(root);
        let status = watcher.status();
        let have = actual(kb, root);
        let done = have == want && status.queue == 0;
        last = (want, have);
        done
    });
    assert!(
        ok,
        "the KB did not converge to the folder {} within {timeout:?}:\n{}",
        root.display(),
        last.0.diff(&last.1)
    );
}

/// A KB in `dir/kb` and a watched folder `dir/photos`.
pub fn setup(dir: &Path) -> (std::sync::Arc<KnowledgeBase>, PathBuf) {
    let root = dir.join("photos");
    std::fs::create_dir_all(&root).unwrap();
    let root = std::fs::canonicalize(&root).unwrap();
    let kb = std::sync::Arc::new(KnowledgeBase::create(dir.join("kb")).unwrap());
    (kb, root)
}
