//! Benchmark of the watch daemon: the time to ingest a folder of small images on first start,
//! and the latency from a file landing in a watched folder to it being searchable (BM25).
//!
//! No embedder is configured (there is none yet), so embedding time is not included.
//!
//! ```text
//! cargo run --release --example bench_watch -- --files 10000 --runs 3 --samples 20 [--json]
//! ```
//!
//! Without arguments it runs a quick version (2,000 files, one run, 5 samples), as CI does.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::{ImageFormat, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use reimagen::{KnowledgeBase, Query, WatchOptions, Watcher};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn small_png(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let img = RgbImage::from_fn(32, 32, |_, _| {
        Rgb([rng.random(), rng.random(), rng.random()])
    });
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), ImageFormat::Png)
        .unwrap();
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Seconds from start until every file is in the KB and the queue is empty.
fn initial_ingest(folder: &Path, files: usize, options: WatchOptions) -> f64 {
    let tmp = tempfile::tempdir().unwrap();
    let kb = Arc::new(KnowledgeBase::create(tmp.path().join("kb")).unwrap());
    let start = Instant::now();
    let watcher = Watcher::start(kb.clone(), [folder], options).unwrap();
    wait("the first ingest", Duration::from_secs(3600), || {
        let s = watcher.status();
        s.items as usize == files && s.queue == 0
    });
    let secs = start.elapsed().as_secs_f64();
    watcher.stop().unwrap();
    secs
}

/// Milliseconds from a file landing (renamed into the folder) to a BM25 hit on its caption.
fn latencies(
    folder: &Path,
    files: usize,
    samples: usize,
    options: WatchOptions,
    rng: &mut ChaCha8Rng,
) -> Vec<f64> {
    let tmp = tempfile::tempdir().unwrap();
    let kb = Arc::new(KnowledgeBase::create(tmp.path().join("kb")).unwrap());
    let watcher = Watcher::start(kb.clone(), [folder], options).unwrap();
    wait("the first ingest", Duration::from_secs(3600), || {
        let s = watcher.status();
        s.items as usize == files && s.queue == 0
    });
    let staging = tmp.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let landing = folder.join("landing");
    std::fs::create_dir_all(&landing).unwrap();
    let mut out = Vec::new();
    for i in 0..samples {
        let word = format!("zebra{i}x{}", rng.random::<u32>());
        let staged = staging.join(format!("{word}.png"));
        std::fs::write(&staged, small_png(rng)).unwrap();
        let start = Instant::now();
        std::fs::rename(&staged, landing.join(format!("{word}.png"))).unwrap();
        wait("a search hit", Duration::from_secs(60), || {
            !kb.search(&Query::text(word.clone()).k(1))
                .unwrap()
                .is_empty()
        });
        out.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    watcher.stop().unwrap();
    std::fs::remove_dir_all(&landing).unwrap();
    out
}

fn main() {
    let files = arg("--files", 2_000);
    let runs = arg("--runs", 1).max(1);
    let samples = arg("--samples", 5).max(1);
    let json = std::env::args().any(|a| a == "--json");
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("photos");
    for i in 0..files {
        let dir = folder.join(format!("entity{:03}", i % 100));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("image{i}.png")), small_png(&mut rng)).unwrap();
    }
    let folder = std::fs::canonicalize(folder).unwrap();
    let defaults = WatchOptions::default();
    let fast = WatchOptions::default().stable_for(Duration::from_millis(100));

    let ingest: Vec<f64> = (0..runs)
        .map(|_| initial_ingest(&folder, files, defaults.clone()))
        .collect();
    let ingest_fast: Vec<f64> = (0..runs)
        .map(|_| initial_ingest(&folder, files, fast.clone()))
        .collect();
    let latency = latencies(&folder, files, samples, defaults, &mut rng);
    let latency_fast = latencies(&folder, files, samples, fast, &mut rng);

    let (m_ingest, m_ingest_fast) = (median(ingest.clone()), median(ingest_fast.clone()));
    let (m_lat, m_lat_fast) = (median(latency.clone()), median(latency_fast.clone()));
    if json {
        println!(
            "{}",
            serde_json::json!({
                "files": files,
                "runs": runs,
                "samples": samples,
                "embedding": "excluded (no embedder)",
                "initial_ingest_s": {"stable_for_1s": m_ingest, "stable_for_100ms": m_ingest_fast},
                "files_per_s": {"stable_for_1s": files as f64 / m_ingest, "stable_for_100ms": files as f64 / m_ingest_fast},
                "landing_to_searchable_ms": {"stable_for_1s": m_lat, "stable_for_100ms": m_lat_fast},
            })
        );
    } else {
        println!(
            "{files} images of 32x32 pixels, {runs} runs, {samples} latency samples; embedding excluded (no embedder)"
        );
        println!(
            "initial ingest, stable_for 1 s (default): median {m_ingest:.2} s ({:.0} files/s)",
            files as f64 / m_ingest
        );
        println!(
            "initial ingest, stable_for 100 ms:        median {m_ingest_fast:.2} s ({:.0} files/s)",
            files as f64 / m_ingest_fast
        );
        println!("landing -> searchable, stable_for 1 s:    median {m_lat:.0} ms");
        println!("landing -> searchable, stable_for 100 ms: median {m_lat_fast:.0} ms");
    }
}
