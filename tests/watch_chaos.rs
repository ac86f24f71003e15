//! Model-based chaos test of the watch daemon: random sequences of file-system operations
//! (create, modify, atomic replace, rename, move, copy, move a folder in/out/around, delete,
//! sidecar edits, truncated writes) against a folder while the daemon runs; after each sequence
//! the KB must equal the folder (same paths, ids, captions, quarantine).
//!
//! `REIMAGEN_CHAOS_SEQUENCES` sets the number of sequences (default 200), `REIMAGEN_CHAOS_SEED`
//! the seed (default: fixed, printed on failure).

mod watch_common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use image::ImageFormat;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use reimagen::Watcher;
use watch_common::*;

const DIRS: &[&str] = &["a", "b", "a/deep", "c d"];
const NAMES: &[&str] = &["dog", "cat", "tower_1", "my-emblem", "x"];
const EXTS: &[&str] = &["png", "jpg", "PNG"];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Image files under `dir` (not following links).
fn images(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() && reimagen::is_image_path(&p) => out.push(p),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

fn subdirs(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(e.path());
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fn new_image(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let format = if rng.random_bool(0.7) {
        ImageFormat::Png
    } else {
        ImageFormat::Jpeg
    };
    random_image(rng, format)
}

fn random_path(rng: &mut ChaCha8Rng, root: &Path) -> PathBuf {
    let dirs = subdirs(root);
    let dir = if rng.random_bool(0.3) {
        root.join(DIRS.choose(rng).unwrap())
    } else {
        dirs.choose(rng).unwrap().clone()
    };
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!(
        "{}.{}",
        NAMES.choose(rng).unwrap(),
        EXTS.choose(rng).unwrap()
    ))
}

fn caption_text(rng: &mut ChaCha8Rng) -> String {
    let words = [
        "red", "dog", "tower", "at", "night", "emblem", "small", "blue",
    ];
    let n = rng.random_range(0..5);
    let mut text: Vec<String> = (0..n)
        .map(|_| words.choose(rng).unwrap().to_string())
        .collect();
    if rng.random_bool(0.2) {
        text.push("entity: Lucky dog".into());
    }
    if rng.random_bool(0.2) {
        text.push("tags: pet, outdoor ,".into());
    }
    text.join("\n")
}

/// One random operation; returns a description for the failure message.
fn operate(
    rng: &mut ChaCha8Rng,
    root: &Path,
    outside: &Path,
    truncated: &mut Vec<(PathBuf, Vec<u8>)>,
) -> String {
    let files = images(root);
    let pick = |rng: &mut ChaCha8Rng| files.choose(rng).cloned();
    match rng.random_range(0..13) {
        0 | 1 => {
            let p = random_path(rng, root);
            std::fs::write(&p, new_image(rng)).unwrap();
            format!("create {}", p.display())
        }
        2 => match pick(rng) {
            Some(p) => {
                std::fs::write(&p, new_image(rng)).unwrap();
                format!("modify {}", p.display())
            }
            None => "nothing".into(),
        },
        3 => match pick(rng) {
            // Atomic replace, the way editors save: write a temporary name, rename over.
            Some(p) => {
                let tmp = p.with_extension("part");
                std::fs::write(&tmp, new_image(rng)).unwrap();
                std::fs::rename(&tmp, &p).unwrap();
                format!("replace {}", p.display())
            }
            None => "nothing".into(),
        },
        4 | 5 => match pick(rng) {
            Some(p) => {
                let to = random_path(rng, root);
                std::fs::rename(&p, &to).unwrap();
                if rng.random_bool(0.5) && p.with_extension("txt").exists() {
                    let _ = std::fs::rename(p.with_extension("txt"), to.with_extension("txt"));
                }
                format!("move {} -> {}", p.display(), to.display())
            }
            None => "nothing".into(),
        },
        6 => match pick(rng) {
            Some(p) => {
                let to = random_path(rng, root);
                if to == p {
                    return "nothing".into();
                }
                std::fs::copy(&p, &to).unwrap();
                format!("copy {} -> {}", p.display(), to.display())
            }
            None => "nothing".into(),
        },
        7 => {
            // Move a folder: within the root, out of it, or back in.
            let dirs: Vec<PathBuf> = subdirs(root).into_iter().skip(1).collect();
            let parked: Vec<PathBuf> = std::fs::read_dir(outside)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .collect();
            if !parked.is_empty() && rng.random_bool(0.4) {
                let from = parked.choose(rng).unwrap().clone();
                let to = root.join(format!("back{}", rng.random_range(0..1000)));
                if to.exists() {
                    return "nothing".into();
                }
                std::fs::rename(&from, &to).unwrap();
                format!("move folder in {} -> {}", from.display(), to.display())
            } else if let Some(d) = dirs.choose(rng) {
                if rng.random_bool(0.3) {
                    let to = outside.join(format!("parked{}", rng.random_range(0..1000)));
                    if to.exists() {
                        return "nothing".into();
                    }
                    std::fs::rename(d, &to).unwrap();
                    format!("move folder out {} -> {}", d.display(), to.display())
                } else {
                    let to = root.join(format!("dir{}", rng.random_range(0..1000)));
                    if to.exists() || to.starts_with(d) {
                        return "nothing".into();
                    }
                    std::fs::rename(d, &to).unwrap();
                    format!("rename folder {} -> {}", d.display(), to.display())
                }
            } else {
                "nothing".into()
            }
        }
        8 => match pick(rng) {
            Some(p) => {
                std::fs::remove_file(&p).unwrap();
                format!("delete {}", p.display())
            }
            None => "nothing".into(),
        },
        9 => {
            let dirs: Vec<PathBuf> = subdirs(root).into_iter().skip(1).collect();
            match dirs.choose(rng) {
                Some(d) if rng.random_bool(0.3) => {
                    std::fs::remove_dir_all(d).unwrap();
                    format!("delete folder {}", d.display())
                }
                _ => "nothing".into(),
            }
        }
        10 | 11 => match pick(rng) {
            Some(p) => {
                let sidecar = p.with_extension("txt");
                if sidecar.exists() && rng.random_bool(0.3) {
                    std::fs::remove_file(&sidecar).unwrap();
                    format!("delete sidecar {}", sidecar.display())
                } else {
                    std::fs::write(&sidecar, caption_text(rng)).unwrap();
                    format!("write sidecar {}", sidecar.display())
                }
            }
            None => "nothing".into(),
        },
        _ => {
            // A truncated write: half a PNG, completed later in the sequence or never.
            let p = random_path(rng, root).with_extension("png");
            let full = random_image(rng, ImageFormat::Png);
            std::fs::write(&p, &full[..full.len() / 2]).unwrap();
            if rng.random_bool(0.6) {
                truncated.push((p.clone(), full));
            }
            format!("truncated write {}", p.display())
        }
    }
}

#[test]
fn chaos_kb_equals_folder_after_every_sequence() {
    init_logs();
    let sequences = env_u64("REIMAGEN_CHAOS_SEQUENCES", 200);
    let seed = env_u64("REIMAGEN_CHAOS_SEED", 0x5eed_2026);
    let restart_every = 40;
    let tmp = tempfile::tempdir().unwrap();
    let (kb, root) = setup(tmp.path());
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut watcher = Some(Watcher::start(kb.clone(), [&root], fast_options()).unwrap());
    let started = Instant::now();
    let mut ops_run = 0;
    for seq in 0..sequences {
        if seq > 0 && seq % restart_every == 0 {
            // A clean restart: the new daemon starts from the KB and a reconcile scan.
            watcher.take().unwrap().stop().unwrap();
            watcher = Some(Watcher::start(kb.clone(), [&root], fast_options()).unwrap());
        }
        let mut log = Vec::new();
        let mut truncated = Vec::new();
        for _ in 0..rng.random_range(1..7) {
            log.push(operate(&mut rng, &root, &outside, &mut truncated));
            ops_run += 1;
            if rng.random_bool(0.3) {
                std::thread::sleep(Duration::from_millis(rng.random_range(0..80)));
            }
        }
        for (p, full) in truncated {
            if p.exists() {
                std::fs::write(&p, full).unwrap();
                log.push(format!("complete {}", p.display()));
            }
        }
        let w = watcher.as_ref().unwrap();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            converge(&kb, w, &root, Duration::from_secs(30))
        }));
        if let Err(e) = result {
            panic!(
                "sequence {seq} (seed {seed:#x}) did not converge; operations:\n  {}\n{}",
                log.join("\n  "),
                e.downcast_ref::<String>().cloned().unwrap_or_default()
            );
        }
    }
    watcher.take().unwrap().stop().unwrap();
    let report = kb.check().unwrap();
    assert!(report.is_consistent(), "{:?}", report.problems);
    eprintln!(
        "chaos: {sequences} sequences, {ops_run} operations, seed {seed:#x}, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
