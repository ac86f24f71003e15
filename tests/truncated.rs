//! Nothing truncated is stored: a file of every accepted format, cut short at several points, is
//! refused by `add` with an error that says it is truncated, and the daemon waits for the rest of
//! a file before it quarantines one that stays cut.
//!
//! Not here: other bad input (`bad_input.rs`, `watch_bad_input.rs`).

mod watch_common;

use std::time::Duration;

use image::{ImageFormat, Rgb, RgbImage};
use reimagen::{Error, IngestError, KnowledgeBase, NewPair, Watcher};
use std::path::Path;
use watch_common::*;

/// A noisy 48×40 image in `format`, so that every format has a body worth cutting.
fn sample(format: ImageFormat) -> Vec<u8> {
    let img = RgbImage::from_fn(48, 40, |x, y| {
        Rgb([
            (x * 5) as u8,
            (y * 6) as u8,
            ((x * 31 + y * 17) % 256) as u8,
        ])
    });
    encode(&img, format)
}

/// Writes `bytes` to `dir/name` (replacing it).
fn put(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

const FORMATS: &[(ImageFormat, &str)] = &[
    (ImageFormat::Png, "png"),
    (ImageFormat::Jpeg, "jpg"),
    (ImageFormat::Gif, "gif"),
    (ImageFormat::WebP, "webp"),
    (ImageFormat::Bmp, "bmp"),
];

#[test]
fn a_file_of_every_format_cut_short_is_refused_as_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let kb = KnowledgeBase::create(dir.path().join("kb")).unwrap();
    for &(format, ext) in FORMATS {
        let whole = sample(format);
        let n = whole.len();
        let mut cuts = vec![16, n / 4, n / 2, 3 * n / 4, n - 2, n - 1];
        cuts.dedup();
        for cut in cuts {
            let name = format!("cut-{cut}.{ext}");
            let result = kb.add(NewPair::bytes(&name, whole[..cut].to_vec(), "a cut image"));
            match result {
                Err(Error::Ingest(IngestError::Truncated { .. })) => {}
                other => panic!("{ext} cut at {cut} of {n} bytes: {other:?}"),
            }
            let message = result.unwrap_err().to_string();
            assert!(
                message.contains("truncated") && message.contains(&name),
                "{message}"
            );
        }
        assert_eq!(
            kb.stats().unwrap().pairs,
            0,
            "{ext}: a truncated file was stored"
        );
        // The whole file goes in.
        kb.add(NewPair::bytes(
            format!("whole.{ext}"),
            whole,
            "a whole image",
        ))
        .unwrap_or_else(|e| panic!("whole {ext}: {e}"));
        assert_eq!(kb.stats().unwrap().pairs, 1);
        let id = kb.list().unwrap()[0].id;
        assert!(kb.remove(&id).unwrap());
    }
}

#[test]
fn the_daemon_waits_for_the_rest_of_a_file_then_quarantines_one_that_stays_cut() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let (kb, root) = setup(dir.path());
    let growing = sample(ImageFormat::Jpeg);
    let stuck = sample(ImageFormat::Png);
    // Half a JPEG, as a copy under way leaves it; and a PNG that will never be finished.
    put(&root, "growing.jpg", &growing[..growing.len() / 2]);
    put(&root, "stuck.png", &stuck[..stuck.len() / 2]);
    let watcher = Watcher::start(
        kb.clone(),
        [&root],
        fast_options().truncated_grace(Duration::from_millis(1500)),
    )
    .unwrap();
    // Well within the grace period: neither is stored nor quarantined.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(kb.stats().unwrap().pairs, 0);
    assert!(
        kb.quarantined().unwrap().is_empty(),
        "quarantined too early"
    );
    // The copy finishes: the file goes in whole.
    put(&root, "growing.jpg", &growing);
    assert!(
        wait_until(Duration::from_secs(10), || kb.stats().unwrap().pairs == 1),
        "the finished JPEG was not ingested"
    );
    // The other stays cut past the grace period: quarantined, saying why.
    assert!(
        wait_until(Duration::from_secs(10), || !kb
            .quarantined()
            .unwrap()
            .is_empty()),
        "the cut PNG was never quarantined"
    );
    let q = kb.quarantined().unwrap();
    assert_eq!(q.len(), 1);
    assert!(q[0].path.ends_with("stuck.png"), "{q:?}");
    assert!(q[0].reason.contains("truncated"), "{q:?}");
    assert_eq!(kb.stats().unwrap().pairs, 1);
    watcher.stop().unwrap();
}
