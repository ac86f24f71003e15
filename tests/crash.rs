//! Crash safety: a writer in a child process is killed with SIGKILL at random points; after each
//! kill the KB must hold every acknowledged add (and no acknowledged remove), and `check` must
//! find store and indices consistent.
//!
//! The child is this test binary itself, re-run on the `writer_child` test with
//! `REIMAGEN_CRASH_CHILD=<kb dir>`. Run without that variable, `writer_child` exercises the same
//! loop in-process for a bounded number of writes. `REIMAGEN_CRASH_KILLS` sets the number of kills
//! (50 by default; set thousands for a soak).

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{ToyEmbedder, image_bytes};
use rand::{Rng, SeedableRng};
use reimagen::{ImageId, KnowledgeBase, NewPair, PairText};

fn open(dir: &Path) -> KnowledgeBase {
    KnowledgeBase::builder(dir)
        .create(true)
        .embedder(Arc::new(ToyEmbedder { dim: 16 }))
        .open()
        .expect("open KB")
}

/// Adds, updates and removes pairs forever (or `limit` times), printing `added ID` / `removed ID`
/// only after the call returned, so the parent knows what was acknowledged (and `removing ID`
/// before a remove, since an unacknowledged remove may land).
fn write_loop(dir: &Path, limit: Option<u64>, out: &mut dyn Write) {
    let kb = open(dir);
    let start = kb.stats().unwrap().last_seq;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(start);
    let mut live: Vec<ImageId> = kb.list().unwrap().iter().map(|p| p.id).collect();
    let mut i = 0u64;
    while limit.is_none_or(|l| i < l) {
        i += 1;
        let roll: f32 = rng.random();
        if roll < 0.15 && !live.is_empty() {
            let id = live.swap_remove(rng.random_range(0..live.len()));
            // Announced first: a remove cut short by the kill may or may not have landed.
            writeln!(out, "removing {id}").unwrap();
            out.flush().unwrap();
            assert!(kb.remove(&id).unwrap());
            writeln!(out, "removed {id}").unwrap();
        } else if roll < 0.25 && !live.is_empty() {
            let id = live[rng.random_range(0..live.len())];
            let text = PairText {
                caption: format!("updated caption {i}"),
                entity: Some("updated".into()),
                tags: vec![],
            };
            assert!(kb.update(&id, text).unwrap());
        } else {
            let n = rng.random_range(1..6);
            let pairs: Vec<NewPair> = (0..n)
                .map(|j| {
                    let seed = rng.random::<u32>();
                    let rgb = [rng.random(), rng.random(), rng.random()];
                    NewPair::bytes(
                        format!("{i}-{j}.png"),
                        image_bytes(rgb, seed, 12, 9, image::ImageFormat::Png),
                        format!("pair {i} {j} seed {seed}"),
                    )
                    .entity(format!("entity {}", seed % 7))
                })
                .collect();
            for r in kb.add_many(pairs) {
                let id = r.unwrap().id();
                live.push(id);
                writeln!(out, "added {id}").unwrap();
            }
        }
        out.flush().unwrap();
    }
}

#[test]
fn writer_child() {
    if let Ok(dir) = std::env::var("REIMAGEN_CRASH_CHILD") {
        write_loop(Path::new(&dir), None, &mut std::io::stdout().lock());
        return;
    }
    // In-process: the same loop, bounded, then the same verification.
    let dir = tempfile::tempdir().unwrap();
    let mut log = Vec::new();
    write_loop(dir.path(), Some(60), &mut log);
    let acked = parse_acks(&String::from_utf8(log).unwrap());
    verify(dir.path(), &acked);
}

#[derive(Default)]
struct Acks {
    added: BTreeSet<ImageId>,
    removed: BTreeSet<ImageId>,
}

fn parse_acks(text: &str) -> Acks {
    let mut acks = Acks::default();
    parse_into(text, &mut acks);
    acks
}

fn parse_into(text: &str, acks: &mut Acks) {
    for line in text.lines() {
        // The test harness prefixes the first line ("test writer_child ... "), so read the last two
        // words; a line cut by the kill has no full id and does not parse.
        let mut words = line.split_whitespace().rev();
        let (Some(id), Some(verb)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(id) = id.parse::<ImageId>() else {
            continue;
        };
        match verb {
            "added" => {
                acks.removed.remove(&id);
                acks.added.insert(id);
            }
            "removing" => {
                acks.added.remove(&id);
            }
            "removed" => {
                acks.removed.insert(id);
            }
            _ => {}
        }
    }
}

fn verify(dir: &Path, acks: &Acks) {
    let kb = open(dir);
    for id in &acks.added {
        assert!(
            kb.get(id).unwrap().is_some(),
            "acknowledged add {id} is missing"
        );
    }
    for id in &acks.removed {
        assert!(
            kb.get(id).unwrap().is_none(),
            "acknowledged remove {id} came back"
        );
    }
    let report = kb.check().unwrap();
    assert!(
        report.is_consistent(),
        "after reopen: {:?}",
        report.problems
    );
}

#[test]
fn sigkill_at_random_points_loses_no_acknowledged_write() {
    let kills: u32 = std::env::var("REIMAGEN_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut acks = Acks::default();
    for round in 0..kills {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "writer_child",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("REIMAGEN_CRASH_CHILD", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => {
                        text.push_str(&l);
                        text.push('\n');
                    }
                    Err(_) => break,
                }
            }
            text
        });
        // Kill anywhere from during open (replay, rebuild) to deep into the write loop.
        std::thread::sleep(Duration::from_millis(rng.random_range(5..400)));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "round {round}: the child must die by the kill, not exit"
        );
        let text = reader.join().unwrap();
        parse_into(&text, &mut acks);
        verify(dir.path(), &acks);
    }
    assert!(
        acks.added.len() > kills as usize,
        "the children acknowledged {} adds in {kills} rounds",
        acks.added.len()
    );
}
