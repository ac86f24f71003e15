//! One KB, many processes: a `reimagen watch` daemon (a child process) ingests a stream of files
//! while this process reads the KB read-only and runs the CLI's read commands beside it; a write
//! command is refused with the daemon's pid (`similar` needs an embedder, which this KB has
//! not: it is left to `clip_cli.rs`); after `kill -9` of the daemon the readers keep
//! working and the KB is consistent.
//!
//! A writer whose map doubles several times beside a reader of another process: the reader
//! follows the map instead of failing or holding the growth up.
//!
//! `REIMAGEN_SOAK_FILES=N` streams N files per phase instead of 24 (a longer soak).
//!
//! Not here: the daemon's behaviour within one process (`watch_*.rs`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{image_bytes, ok, reimagen, write};
use image::ImageFormat;
use reimagen::{KnowledgeBase, Query};

fn daemon(kb: &Path, photos: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_reimagen"))
        .arg("--kb")
        .arg(kb)
        .args(["watch", "--delete-grace", "0s"])
        .arg(photos)
        .env_remove("REIMAGEN_KB")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Writes `n` pictures, `from` onwards, one every 40 ms, on a thread.
fn stream(photos: PathBuf, from: u32, n: u32) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for i in from..from + n {
            let bytes = image_bytes([(i * 13) as u8, 120, 40], i, 20, 14, ImageFormat::Png);
            // Written beside, then renamed in: the daemon never sees half a file.
            let tmp = photos.join(format!(".tmp-{i}"));
            std::fs::write(&tmp, &bytes).unwrap();
            std::fs::rename(&tmp, photos.join(format!("stream/picture {i}.png"))).unwrap();
            std::thread::sleep(Duration::from_millis(40));
        }
    })
}

/// What one round of reading sees: (pairs listed, BM25 hits, pairs in stats). Any error fails.
fn read_round(kb: &KnowledgeBase) -> (usize, usize, u64) {
    let listed = kb.list().expect("list beside the daemon").len();
    let hits = kb
        .search(&Query::text("picture").k(1000))
        .expect("search beside the daemon")
        .len();
    let stats = kb.stats().expect("stats beside the daemon").pairs;
    (listed, hits, stats)
}

#[test]
fn readers_beside_the_daemon_see_its_writes_and_survive_its_kill() {
    let n: u32 = std::env::var("REIMAGEN_SOAK_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let dir = tempfile::tempdir().unwrap();
    let kb_dir = dir.path().join("kb");
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(photos.join("stream")).unwrap();
    ok(&kb_dir, &["init", "--no-models"]);
    let mut child = daemon(&kb_dir, &photos);
    assert!(
        wait_until(Duration::from_secs(20), || KnowledgeBase::is_locked(
            &kb_dir
        )
        .unwrap()),
        "the daemon never took the KB"
    );
    let kb = KnowledgeBase::open_read_only(&kb_dir).unwrap();
    assert!(kb.is_read_only());

    // Phase 1: a stream of files; this process reads in a loop, the CLI now and then.
    let writer = stream(photos.clone(), 0, n);
    let mut last = (0, 0, 0);
    let mut rounds = 0;
    let mut all_written_at = None;
    let seen_all = wait_until(Duration::from_secs(60), || {
        let now = read_round(&kb);
        assert!(
            now.0 >= last.0 && now.1 >= last.1 && now.2 >= last.2,
            "counts went backwards: {last:?} then {now:?}"
        );
        last = now;
        rounds += 1;
        if rounds % 10 == 0 {
            let listed: serde_json::Value =
                serde_json::from_str(&ok(&kb_dir, &["list", "--json"])).unwrap();
            assert!(listed.as_array().unwrap().len() >= last.0);
            ok(&kb_dir, &["search", "picture", "--json"]);
            ok(&kb_dir, &["stats", "--json"]);
        }
        if all_written_at.is_none() && writer.is_finished() {
            all_written_at = Some(Instant::now());
        }
        now == (n as usize, n as usize, n as u64)
    });
    assert!(seen_all, "the reader saw {last:?} of {n} files");
    // The daemon waits 1 s for a file to settle; the reader sees it soon after.
    let lag = all_written_at.map_or(Duration::ZERO, |t| t.elapsed());
    assert!(
        lag < Duration::from_secs(4),
        "the last write took {lag:?} to be seen"
    );

    // Every read command works from another process; a write command names the daemon.
    let status: serde_json::Value =
        serde_json::from_str(&ok(&kb_dir, &["status", "--json"])).unwrap();
    assert_eq!(status["running"], true, "{status}");
    assert_eq!(status["pid"], child.id(), "{status}");
    let id = kb.list().unwrap()[0].id.to_hex();
    ok(&kb_dir, &["show", &id]);
    ok(&kb_dir, &["entities"]);
    let check = reimagen(&kb_dir, &["check", "--json"]);
    assert!(check.status.success(), "{check:?}");
    let backup = dir.path().join("backup");
    ok(&kb_dir, &["backup", backup.to_str().unwrap()]);
    assert_eq!(
        KnowledgeBase::open(&backup).unwrap().stats().unwrap().pairs,
        n as u64
    );
    let extra = write(
        dir.path(),
        "extra.png",
        &image_bytes([1, 2, 3], 999, 8, 8, ImageFormat::Png),
    );
    let refused = reimagen(&kb_dir, &["add", extra.to_str().unwrap()]);
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        message.contains(&format!("pid {}", child.id())) && message.contains("kill"),
        "{message}"
    );
    writer.join().unwrap();

    // Phase 2: kill -9 of the daemon while files stream in.
    let writer = stream(photos.clone(), n, n);
    wait_until(Duration::from_secs(30), || {
        read_round(&kb).2 > n as u64 + n as u64 / 4
    });
    child.kill().unwrap();
    child.wait().unwrap();
    writer.join().unwrap();
    // The readers keep working: this process's, a fresh one, and the CLI.
    let before = read_round(&kb);
    assert!(before.2 >= n as u64);
    // (heed opens an environment once per process: the fresh reader replaces this one.)
    drop(kb);
    let fresh = KnowledgeBase::open_read_only(&kb_dir).unwrap();
    assert_eq!(read_round(&fresh).2, before.2);
    ok(&kb_dir, &["search", "picture"]);
    drop(fresh);
    // The next writer finds the KB consistent, and the restarted daemon catches up.
    let writer_kb = KnowledgeBase::open(&kb_dir).unwrap();
    let report = writer_kb.check().unwrap();
    assert!(report.is_consistent(), "{report:?}");
    assert_eq!(report.pairs, before.2);
    drop(writer_kb);
    let mut child = daemon(&kb_dir, &photos);
    let kb = KnowledgeBase::open_read_only(&kb_dir).unwrap();
    let caught_up = wait_until(Duration::from_secs(30), || {
        read_round(&kb) == (2 * n as usize, 2 * n as usize, 2 * n as u64)
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(caught_up, "the restarted daemon left {:?}", read_round(&kb));
}

/// A noisy 200×200 PNG (about 120 KB): a few dozen outgrow a 1 MiB map several times.
fn big_png(seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    let img = image::RgbImage::from_fn(200, 200, |_, _| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let [a, b, c, _] = state.to_le_bytes();
        image::Rgb([a, b, c])
    });
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), ImageFormat::Png)
        .unwrap();
    out
}

const GROWTH_PAIRS: u32 = 40;
const GROWTH_DIR: &str = "REIMAGEN_MAP_GROWTH_DIR";

/// Adds `GROWTH_PAIRS` big pairs to a KB opened with a 1 MiB map, which must double several
/// times. Run alone it uses a temporary KB; `map_growth_beside_a_reader_of_another_process`
/// runs it in a child process on its KB (`REIMAGEN_MAP_GROWTH_DIR`).
#[test]
fn map_growth_writer() {
    let temp = tempfile::tempdir().unwrap();
    let dir = std::env::var_os(GROWTH_DIR).map_or_else(|| temp.path().join("kb"), PathBuf::from);
    let kb = KnowledgeBase::builder(&dir)
        .create(true)
        .initial_map_size(1 << 20)
        .open()
        .unwrap();
    for i in 0..GROWTH_PAIRS {
        let pair = reimagen::NewPair::bytes(format!("big-{i}.png"), big_png(i), "a big picture");
        kb.add(pair).unwrap();
    }
    let stats = kb.stats().unwrap();
    assert_eq!(stats.pairs, u64::from(GROWTH_PAIRS));
    assert!(
        stats.map_size >= 4 << 20,
        "the map stayed at {}",
        stats.map_size
    );
}

#[test]
fn map_growth_beside_a_reader_of_another_process() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("kb");
    KnowledgeBase::builder(&dir)
        .create(true)
        .initial_map_size(1 << 20)
        .open()
        .unwrap();
    let kb = KnowledgeBase::open_read_only(&dir).unwrap();
    let initial_map = kb.stats().unwrap().map_size;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "map_growth_writer", "--test-threads", "1"])
        .env(GROWTH_DIR, &dir)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut last = 0;
    let mut rounds = 0;
    let status = loop {
        let pairs = kb.stats().expect("stats while the map grows").pairs;
        kb.search(&Query::text("big picture").k(100))
            .expect("search while the map grows");
        assert!(pairs >= last, "pairs went from {last} to {pairs}");
        last = pairs;
        rounds += 1;
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "the writer failed");
    let stats = kb.stats().unwrap();
    assert_eq!(
        stats.pairs,
        u64::from(GROWTH_PAIRS),
        "after {rounds} rounds"
    );
    // The reader followed the writer's map rather than reading past its own.
    assert!(
        stats.map_size > initial_map,
        "the reader's map stayed at {}",
        stats.map_size
    );
    assert_eq!(
        kb.search(&Query::text("big picture").k(100)).unwrap().len(),
        GROWTH_PAIRS as usize
    );
}
