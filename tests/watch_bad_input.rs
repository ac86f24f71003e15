//! The watch daemon against a corpus of bad input: truncated PNG and JPEG, a zero-byte file,
//! huge dimensions, text named `.png`, a PNG named `.jpg`, a non-UTF-8 name, symbolic-link loops,
//! links out of the root, a dangling link, a sidecar that is a link. No crash; every bad file is
//! quarantined with a reason; every good file is ingested; nothing is written into the folder; a
//! quarantined file is retried when it changes.

mod watch_common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use image::{ImageFormat, Rgb, RgbImage};
use reimagen::Watcher;
use watch_common::*;

fn listing(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            out.insert(e.path());
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

#[test]
fn bad_files_are_quarantined_with_reasons_and_good_files_ingested() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let (kb, root) = setup(tmp.path());
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("real.png"), png(1)).unwrap();
    std::fs::write(outside.join("secret.txt"), "not yours").unwrap();

    // Good files.
    let good = root.join("good");
    std::fs::create_dir_all(good.join("sub")).unwrap();
    std::fs::write(good.join("a.png"), png(2)).unwrap();
    std::fs::write(good.join("b.jpg"), jpeg(3)).unwrap();
    std::fs::write(good.join("png-named.jpg"), png(4)).unwrap();
    std::fs::write(good.join("sub/c.png"), png(5)).unwrap();
    std::fs::write(good.join("sub/c.txt"), "a captioned square\ntags: x, y").unwrap();

    // Bad files, with a word their reason must hold.
    let bad = root.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let full_png = png(6);
    std::fs::write(bad.join("truncated.png"), &full_png[..full_png.len() / 2]).unwrap();
    let big_jpeg = encode(
        &RgbImage::from_fn(64, 64, |x, y| Rgb([x as u8 * 3, y as u8 * 3, 7])),
        ImageFormat::Jpeg,
    );
    std::fs::write(bad.join("truncated.jpg"), &big_jpeg[..big_jpeg.len() / 3]).unwrap();
    std::fs::write(bad.join("zero.png"), b"").unwrap();
    std::fs::write(
        bad.join("huge.png"),
        encode(&RgbImage::new(10_000, 1), ImageFormat::Png),
    )
    .unwrap();
    std::fs::write(bad.join("text.png"), "hello, I am not an image").unwrap();
    std::fs::write(bad.join("empty-caption.png"), png(7)).unwrap();
    std::fs::write(bad.join("empty-caption.txt"), "  \n").unwrap();
    std::fs::write(bad.join("linked-caption.png"), png(8)).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::fs::symlink;
        let name = std::ffi::OsStr::from_bytes(b"caf\xe9.png");
        std::fs::write(bad.join(name), png(9)).unwrap();
        symlink("loop.png", bad.join("loop.png")).unwrap();
        symlink(outside.join("real.png"), bad.join("out.png")).unwrap();
        symlink(&outside, bad.join("outdir")).unwrap();
        symlink(bad.join("nowhere.png"), bad.join("dangling.png")).unwrap();
        symlink(outside.join("secret.txt"), bad.join("linked-caption.txt")).unwrap();
        // A folder link back up the tree, inside the root: never followed, nothing to refuse.
        symlink("..", good.join("sub/up")).unwrap();
    }
    let expectations: &[(&str, &str)] = &[
        ("truncated.png", "image is truncated"),
        ("truncated.jpg", "image is truncated"),
        ("zero.png", "empty"),
        ("huge.png", "too large"),
        ("text.png", "not a readable image"),
        ("empty-caption.png", "caption is empty"),
        ("linked-caption.png", "symbolic link"),
        ("loop.png", "symbolic link"),
        ("out.png", "outside the watched folder"),
        ("outdir", "outside the watched folder"),
        ("dangling.png", "symbolic link"),
        ("caf\u{fffd}.png", "not valid UTF-8"),
    ];
    let before = listing(&root);

    let watcher = Watcher::start(kb.clone(), [&root], fast_options()).unwrap();
    let want_good = expected(&good);
    let ok = wait_until(Duration::from_secs(60), || {
        let q = kb.quarantined().unwrap();
        actual(&kb, &good).paths == want_good.paths
            && expectations
                .iter()
                .all(|(name, _)| q.iter().any(|r| r.path == bad.join(name).to_string_lossy()))
            && watcher.status().queue == 0
    });
    let quarantined = kb.quarantined().unwrap();
    assert!(
        ok,
        "did not converge; quarantined: {quarantined:#?}\nKB paths: {:#?}",
        kb.paths().unwrap()
    );
    for (name, word) in expectations {
        let path = bad.join(name).to_string_lossy().into_owned();
        let record = quarantined.iter().find(|r| r.path == path).unwrap();
        assert!(
            record.reason.contains(word),
            "{name}: reason `{}` should mention `{word}`",
            record.reason
        );
    }
    assert_eq!(
        quarantined.len(),
        expectations.len(),
        "only the bad files are quarantined: {quarantined:#?}"
    );
    // Nothing under `bad/` is in the KB, nothing outside the root was followed.
    assert!(
        kb.paths()
            .unwrap()
            .iter()
            .all(|p| Path::new(&p.path).starts_with(&good)),
        "{:#?}",
        kb.paths().unwrap()
    );
    let c = kb
        .get(&want_good.paths[&good.join("sub/c.png").to_string_lossy().into_owned()])
        .unwrap()
        .unwrap();
    assert_eq!(c.caption, "a captioned square");
    assert_eq!(c.tags, vec!["x".to_string(), "y".to_string()]);
    let status = watcher.status();
    assert_eq!(status.quarantined.len(), expectations.len());
    assert!(status.quarantined.iter().all(|q| !q.reason.is_empty()));

    // A quarantined file is retried when it changes: complete the truncated PNG.
    std::fs::write(bad.join("truncated.png"), &full_png).unwrap();
    let fixed = bad.join("truncated.png").to_string_lossy().into_owned();
    assert!(
        wait_until(Duration::from_secs(30), || {
            kb.path_info(&bad.join("truncated.png")).unwrap().is_some()
                && !kb.quarantined().unwrap().iter().any(|q| q.path == fixed)
        }),
        "the completed file was not retried"
    );

    // The daemon wrote nothing into the watched folder.
    let mut after = listing(&root);
    after.retain(|p| !before.contains(p));
    assert!(
        after.is_empty(),
        "new files in the watched folder: {after:?}"
    );
    watcher.stop().unwrap();
    assert!(kb.check().unwrap().is_consistent());
}
