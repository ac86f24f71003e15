//! `reimagen watch` killed with SIGKILL in the middle of a large first ingest, then started
//! again: the KB converges to the folder with nothing lost and nothing duplicated. Also: `reimagen
//! status` answers while the daemon holds the KB, and SIGTERM stops the daemon with exit code 0.

mod watch_common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reimagen::KnowledgeBase;
use watch_common::*;

const BIN: &str = env!("CARGO_BIN_EXE_reimagen");
const FILES: u64 = 3000;

fn reimagen(kb: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--kb").arg(kb);
    c
}

/// A fresh KB without models (the daemon here ingests by BM25 only) at `dir/kb`.
fn init_kb(dir: &Path) -> std::path::PathBuf {
    let kb = dir.join("kb");
    let status = reimagen(&kb).args(["init", "--no-models"]).status();
    assert!(status.unwrap().success(), "reimagen init failed");
    kb
}

fn start_daemon(kb: &Path, root: &Path) -> Child {
    reimagen(kb)
        .args(["watch", "--delete-grace", "0s"])
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning reimagen watch")
}

fn status(kb: &Path) -> Option<serde_json::Value> {
    let out = reimagen(kb).args(["status", "--json"]).output().ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

fn make_folder(root: &Path) -> std::path::PathBuf {
    for i in 0..FILES {
        let dir = root.join(format!("entity{}", i % 30));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("img{i}.png")), png(i)).unwrap();
        if i % 7 == 0 {
            std::fs::write(dir.join(format!("img{i}.txt")), format!("captioned {i}")).unwrap();
        }
    }
    std::fs::canonicalize(root).unwrap()
}

fn sigterm(child: &Child) {
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
}

#[test]
fn sigterm_during_first_ingest_stops_after_the_batch_and_exits_0() {
    let tmp = tempfile::tempdir().unwrap();
    let root = make_folder(&tmp.path().join("photos"));
    let kb_dir = init_kb(tmp.path());
    let data = kb_dir.join("store/data.mdb");
    let size = || std::fs::metadata(&data).map_or(0, |m| m.len());
    let initial = size();
    let mut child = start_daemon(&kb_dir, &root);
    assert!(wait_until(Duration::from_secs(120), || size() > initial + 64 * 1024));
    sigterm(&child);
    let mut exit = None;
    assert!(
        wait_until(Duration::from_secs(60), || {
            exit = child.try_wait().unwrap();
            exit.is_some()
        }),
        "SIGTERM did not stop the daemon"
    );
    assert!(exit.unwrap().success(), "exit status {exit:?}");
    let kb = KnowledgeBase::open(&kb_dir).unwrap();
    assert!(kb.check().unwrap().is_consistent());
    let have = actual(&kb, &root);
    let want = expected(&root);
    for (path, id) in &have.paths {
        assert_eq!(want.paths.get(path), Some(id), "{path}");
    }
    eprintln!(
        "stopped with {} of {FILES} files ingested",
        have.paths.len()
    );
}

#[test]
fn kill_9_during_first_ingest_then_restart_converges() {
    let tmp = tempfile::tempdir().unwrap();
    let root = make_folder(&tmp.path().join("photos"));
    let kb_dir = init_kb(tmp.path());
    let data = kb_dir.join("store/data.mdb");
    let size = || std::fs::metadata(&data).map_or(0, |m| m.len());
    let initial = size();

    // Kill -9 right after the first batch has been written (usually just after its commit;
    // sometimes between its pages and its commit, which is a crash worth testing too).
    let mut child = start_daemon(&kb_dir, &root);
    assert!(
        wait_until(Duration::from_secs(120), || size() > initial + 256 * 1024),
        "the first batch was never written"
    );
    std::thread::sleep(Duration::from_millis(20));
    child.kill().unwrap();
    child.wait().unwrap();
    let after_kill = {
        let kb = KnowledgeBase::open(&kb_dir).unwrap();
        assert!(kb.check().unwrap().is_consistent());
        kb.paths().unwrap().len() as u64
    };
    eprintln!("killed with {after_kill} of {FILES} files ingested");
    assert!(
        after_kill < FILES,
        "the kill did not land in the middle of the ingest ({after_kill} of {FILES})"
    );

    // Restart: it converges; `status` answers while it runs.
    let mut child = start_daemon(&kb_dir, &root);
    let converged = wait_until(Duration::from_secs(240), || {
        status(&kb_dir).is_some_and(|s| {
            s["running"] == true && s["items"] == FILES && s["queue"] == 0 && s["state"] == "idle"
        })
    });
    let last = status(&kb_dir);
    sigterm(&child);
    let exit = child.wait().unwrap();
    assert!(converged, "did not converge; last status: {last:#?}");
    assert!(exit.success(), "SIGTERM should exit 0, got {exit:?}");

    let kb = KnowledgeBase::open(&kb_dir).unwrap();
    let want = expected(&root);
    let have = actual(&kb, &root);
    assert!(have == want, "{}", want.diff(&have));
    assert_eq!(kb.list().unwrap().len() as u64, FILES, "no duplicates");
    assert!(kb.check().unwrap().is_consistent());
    let status = reimagen::daemon_status(&kb_dir);
    drop(kb);
    assert!(status.is_err(), "the KB is open here: the status is locked");
    let status = reimagen::daemon_status(&kb_dir).unwrap();
    assert!(!status.running);
    assert_eq!(status.items, FILES);
}
