//! The watch daemon's behaviours one at a time: renames and folder moves keep ids and never
//! re-embed; sidecar edits update captions; deletes wait for the grace period; a root that
//! disappears keeps its items; polling (forced, or as the fallback when watches are refused);
//! the status file and `daemon_status`.

mod watch_common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use image::DynamicImage;
use reimagen::{DaemonState, WatchMode, daemon_status};
use reimagen::{Embedder, KnowledgeBase, ModelError, Watcher};
use watch_common::*;

/// A tiny embedder that counts its calls.
#[derive(Default)]
struct Counting {
    images: AtomicUsize,
}

impl Embedder for Counting {
    fn id(&self) -> String {
        "counting/4".into()
    }
    fn dim(&self) -> usize {
        4
    }
    fn embed_images(&self, images: &[DynamicImage]) -> Result<Vec<Vec<f32>>, ModelError> {
        images.iter().map(|i| self.embed_image(i)).collect()
    }

    fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError> {
        texts.iter().map(|t| self.embed_text(t)).collect()
    }

    fn embed_image(&self, image: &DynamicImage) -> Result<Vec<f32>, ModelError> {
        self.images.fetch_add(1, Ordering::SeqCst);
        let px = image.to_rgb8();
        let p = px.get_pixel(0, 0);
        Ok(vec![p[0] as f32 + 1.0, p[1] as f32, p[2] as f32, 1.0])
    }
    fn embed_text(&self, text: &str) -> Result<Vec<f32>, ModelError> {
        Ok(vec![text.len() as f32, 1.0, 0.0, 0.0])
    }
}

const LONG: Duration = Duration::from_secs(30);

#[test]
fn renames_and_folder_moves_keep_ids_and_never_re_embed() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("photos");
    std::fs::create_dir_all(root.join("corgi")).unwrap();
    let root = std::fs::canonicalize(&root).unwrap();
    let embedder = Arc::new(Counting::default());
    let kb = Arc::new(
        KnowledgeBase::builder(tmp.path().join("kb"))
            .create(true)
            .embedder(embedder.clone())
            .open()
            .unwrap(),
    );
    for i in 0..3 {
        std::fs::write(root.join(format!("corgi/photo_{i}.png")), png(i)).unwrap();
    }
    let watcher = Watcher::start(kb.clone(), [&root], fast_options()).unwrap();
    converge(&kb, &watcher, &root, LONG);
    let ids: Vec<_> = kb.paths().unwrap().into_iter().map(|p| p.id).collect();
    assert_eq!(embedder.images.load(Ordering::SeqCst), 3);

    std::fs::rename(root.join("corgi/photo_0.png"), root.join("corgi/best.png")).unwrap();
    std::fs::rename(root.join("corgi"), root.join("dog")).unwrap();
    std::fs::write(root.join("dog/photo_1.txt"), "a corgi on the beach").unwrap();
    converge(&kb, &watcher, &root, LONG);
    let mut after: Vec<_> = kb.paths().unwrap().into_iter().map(|p| p.id).collect();
    after.sort();
    let mut before = ids.clone();
    before.sort();
    assert_eq!(before, after, "ids are content: a move keeps them");
    assert_eq!(
        embedder.images.load(Ordering::SeqCst),
        3,
        "no image was embedded again"
    );
    let best = kb.path_info(&root.join("dog/best.png")).unwrap().unwrap();
    let pair = kb.get(&best.id).unwrap().unwrap();
    assert_eq!(pair.caption, "best");
    assert_eq!(pair.entity.as_deref(), Some("dog"));
    let beach = kb
        .path_info(&root.join("dog/photo_1.png"))
        .unwrap()
        .unwrap();
    assert_eq!(
        kb.get(&beach.id).unwrap().unwrap().caption,
        "a corgi on the beach"
    );
    // Deleting the sidecar brings the stem back.
    std::fs::remove_file(root.join("dog/photo_1.txt")).unwrap();
    converge(&kb, &watcher, &root, LONG);
    assert_eq!(kb.get(&beach.id).unwrap().unwrap().caption, "photo 1");
    watcher.stop().unwrap();
}

#[test]
fn deletes_wait_for_the_grace_period() {
    let tmp = tempfile::tempdir().unwrap();
    let (kb, root) = setup(tmp.path());
    std::fs::write(root.join("a.png"), png(1)).unwrap();
    let grace = Duration::from_millis(1500);
    let watcher = Watcher::start(kb.clone(), [&root], fast_options().delete_grace(grace)).unwrap();
    converge(&kb, &watcher, &root, LONG);
    let removed = std::time::Instant::now();
    std::fs::remove_file(root.join("a.png")).unwrap();
    assert!(wait_until(LONG, || watcher.status().pending_deletes == 1));
    assert!(
        kb.path_info(&root.join("a.png")).unwrap().is_some(),
        "still known during the grace period"
    );
    assert!(wait_until(LONG, || kb.paths().unwrap().is_empty()));
    assert!(
        removed.elapsed() >= grace,
        "removed before the grace period"
    );
    assert!(
        kb.list().unwrap().is_empty(),
        "the orphaned pair is removed"
    );
    watcher.stop().unwrap();
}

#[test]
fn a_root_that_disappears_keeps_its_items_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let (kb, root) = setup(tmp.path());
    for i in 0..3 {
        std::fs::write(root.join(format!("{i}.png")), png(i)).unwrap();
    }
    let watcher = Watcher::start(kb.clone(), [&root], fast_options()).unwrap();
    converge(&kb, &watcher, &root, LONG);
    let away = tmp.path().join("unmounted");
    std::fs::rename(&root, &away).unwrap();
    assert!(wait_until(LONG, || !watcher.status().roots[0].online));
    // Give the daemon many ticks (delete grace is zero) to do the wrong thing.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(kb.paths().unwrap().len(), 3, "offline items are kept");
    assert_eq!(watcher.status().roots[0].items, 3);
    std::fs::rename(&away, &root).unwrap();
    assert!(wait_until(LONG, || watcher.status().roots[0].online));
    converge(&kb, &watcher, &root, LONG);
    assert_eq!(watcher.status().counters.added, 3, "nothing was re-added");
    watcher.stop().unwrap();
}

#[test]
fn polling_forced_and_as_fallback() {
    let tmp = tempfile::tempdir().unwrap();
    let (kb, root) = setup(tmp.path());
    let other = tmp.path().join("other");
    std::fs::create_dir_all(other.join("sub")).unwrap();
    let other = std::fs::canonicalize(other).unwrap();
    // Forced polling.
    let watcher = Watcher::start(
        kb.clone(),
        [&root],
        fast_options().poll(Duration::from_millis(100)),
    )
    .unwrap();
    std::fs::write(root.join("p.png"), png(1)).unwrap();
    converge(&kb, &watcher, &root, LONG);
    assert_eq!(watcher.status().roots[0].mode, WatchMode::Poll);
    std::fs::write(root.join("p.txt"), "polled caption").unwrap();
    converge(&kb, &watcher, &root, LONG);
    watcher.stop().unwrap();
    // Too many folders to watch: say so once, poll instead.
    let watcher = Watcher::start(kb.clone(), [&other], fast_options().max_watched_dirs(1)).unwrap();
    let status = watcher.status();
    assert_eq!(status.roots[0].mode, WatchMode::PollFallback);
    assert_eq!(status.warnings.len(), 1, "{:?}", status.warnings);
    assert!(status.warnings[0].contains("polling"));
    std::fs::write(other.join("sub/q.png"), png(2)).unwrap();
    converge(&kb, &watcher, &other, LONG);
    watcher.stop().unwrap();
}

#[test]
fn status_file_and_daemon_status() {
    let tmp = tempfile::tempdir().unwrap();
    let (kb, root) = setup(tmp.path());
    std::fs::write(root.join("a.png"), png(1)).unwrap();
    std::fs::write(root.join("bad.png"), "text").unwrap();
    let kb_dir = kb.path().to_path_buf();
    let watcher = Watcher::start(kb.clone(), [&root], fast_options()).unwrap();
    assert!(wait_until(LONG, || {
        daemon_status(&kb_dir)
            .is_ok_and(|s| s.running && s.items == 1 && s.quarantined.len() == 1 && s.queue == 0)
    }));
    let s = daemon_status(&kb_dir).unwrap();
    assert_eq!(s.pid, std::process::id());
    assert!(s.last_scan.is_some());
    watcher.stop().unwrap();
    drop(kb);
    let s = daemon_status(&kb_dir).unwrap();
    assert!(!s.running);
    assert_eq!(s.state, DaemonState::Stopped);
    assert_eq!(s.items, 1);
    assert_eq!(s.quarantined.len(), 1);
    assert!(s.quarantined[0].reason.contains("not a readable image"));
}

#[test]
fn roots_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let (kb, root) = setup(tmp.path());
    let err = |r: reimagen::Result<Watcher>| r.err().expect("refused").to_string();
    assert!(
        err(Watcher::start(kb.clone(), [tmp.path()], fast_options()))
            .contains("holds the knowledge base")
    );
    assert!(
        err(Watcher::start(
            kb.clone(),
            [&root, &root.join("..").join("photos")],
            fast_options()
        ))
        .contains("overlaps")
    );
    assert!(
        err(Watcher::start(
            kb.clone(),
            [tmp.path().join("missing")],
            fast_options()
        ))
        .contains("cannot watch")
    );
}

#[test]
fn an_overflowing_event_queue_falls_back_to_a_scan() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let (kb, root) = setup(tmp.path());
    let watcher = Watcher::start(kb.clone(), [&root], fast_options().queue_capacity(16)).unwrap();
    for i in 0..200 {
        std::fs::write(root.join(format!("{i}.png")), png(i)).unwrap();
    }
    converge(&kb, &watcher, &root, LONG);
    assert_eq!(kb.paths().unwrap().len(), 200);
    watcher.stop().unwrap();
}

#[test]
fn knowledge_base_watch_is_the_same_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("photos");
    std::fs::create_dir_all(root.join("lighthouse")).unwrap();
    let kb = Arc::new(KnowledgeBase::create(dir.path().join("kb")).unwrap());
    let options = reimagen::WatchOptions::default().stable_for(Duration::from_millis(200));
    let watcher = kb.clone().watch([&root], options).unwrap();
    let png = {
        let img = image::RgbImage::from_pixel(6, 6, image::Rgb([10, 20, 30]));
        let mut out = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    };
    std::fs::write(root.join("lighthouse/old_lighthouse.png"), png).unwrap();
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let hits = kb.search(&reimagen::Query::text("old lighthouse")).unwrap();
        if let Some(hit) = hits.first() {
            assert_eq!(hit.entity.as_deref(), Some("lighthouse"));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dropped file never became searchable"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    watcher.stop().unwrap();
}
