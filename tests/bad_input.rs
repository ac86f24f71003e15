//! Bad input never costs data (invariant 8 of ARCHITECTURE.md): each bad file or caption gets an error that
//! names the file and the reason, and the KB is left exactly as it was.

mod common;

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use common::{colour_png, image_bytes, write};
use image::ImageFormat;
use reimagen::{AddOutcome, DecodeLimits, Error, IngestError, KnowledgeBase, NewPair};

/// What must not change when an add is refused.
fn fingerprint(kb: &KnowledgeBase) -> (u64, u64, usize) {
    let s = kb.stats().unwrap();
    (s.pairs, s.last_seq, s.text_index_docs)
}

fn refused(kb: &KnowledgeBase, pair: NewPair) -> Error {
    let before = fingerprint(kb);
    let err = kb.add(pair).expect_err("the add must be refused");
    assert_eq!(
        fingerprint(kb),
        before,
        "a refused add changed the KB: {err}"
    );
    assert!(
        err.is_user_error(),
        "{err} should be reported as the user's input"
    );
    err
}

#[test]
fn corrupt_truncated_and_non_images_are_refused_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let kb = KnowledgeBase::create(dir.path().join("kb")).unwrap();
    kb.add(NewPair::bytes(
        "good.png",
        colour_png("red", 1),
        "a good one",
    ))
    .unwrap();
    let files = dir.path().join("in");
    let png = image_bytes([1, 2, 3], 5, 40, 30, ImageFormat::Png);
    let jpeg = image_bytes([1, 2, 3], 5, 40, 30, ImageFormat::Jpeg);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated.png",
            png[..png.len() / 2].to_vec(),
            "image is truncated",
        ),
        (
            "truncated.jpg",
            jpeg[..jpeg.len() / 3].to_vec(),
            "image is truncated",
        ),
        ("empty.png", Vec::new(), "empty"),
        (
            "notes.png",
            b"this is a text file, not a PNG\n".to_vec(),
            "unrecognised image format",
        ),
        (
            "garbage.jpg",
            // A JPEG's first bytes and no scan: the start of a file, not a whole one.
            vec![0xFF, 0xD8, 0xFF, 0x00, 1, 2, 3, 4, 5],
            "image is truncated",
        ),
    ];
    for (name, bytes, reason) in cases {
        let path = write(&files, name, &bytes);
        let err = refused(&kb, NewPair::file(&path, "caption"));
        let msg = err.to_string();
        assert!(
            msg.contains(name),
            "error for {name} does not name it: {msg}"
        );
        assert!(
            msg.contains(reason),
            "error for {name} does not say `{reason}`: {msg}"
        );
    }
}

#[test]
fn images_over_the_limits_are_refused_before_they_cost_memory() {
    let dir = tempfile::tempdir().unwrap();
    let limits = DecodeLimits {
        max_file_bytes: 200_000,
        max_width: 512,
        max_height: 512,
        max_alloc: 1 << 20,
    };
    let kb = KnowledgeBase::builder(dir.path().join("kb"))
        .create(true)
        .decode_limits(limits)
        .open()
        .unwrap();
    let files = dir.path().join("in");

    let wide = write(
        &files,
        "wide.png",
        &image_bytes([9, 9, 9], 1, 600, 4, ImageFormat::Png),
    );
    let err = refused(&kb, NewPair::file(&wide, "wide"));
    assert!(
        matches!(err, Error::Ingest(IngestError::TooLarge { .. })),
        "{err}"
    );
    assert!(
        err.to_string().contains("wide.png") && err.to_string().contains("too large"),
        "{err}"
    );

    // A 300×300 RGB image fits the dimension limits but needs 270 KB decoded: over a 100 KB
    // allocation limit it is refused (this is what stops a small PNG that decodes to gigabytes).
    let tight = DecodeLimits {
        max_alloc: 100_000,
        ..limits
    };
    let kb2 = KnowledgeBase::builder(dir.path().join("kb2"))
        .create(true)
        .decode_limits(tight)
        .open()
        .unwrap();
    let square = write(
        &files,
        "square.png",
        &image_bytes([9, 9, 9], 1, 300, 300, ImageFormat::Png),
    );
    let err = refused(&kb2, NewPair::file(&square, "square"));
    assert!(
        matches!(err, Error::Ingest(IngestError::TooLarge { .. })),
        "{err}"
    );

    let big_file = write(
        &files,
        "big.bmp",
        &image_bytes([9, 9, 9], 1, 300, 300, ImageFormat::Bmp),
    );
    let err = refused(&kb, NewPair::file(&big_file, "big"));
    assert!(err.to_string().contains("over the limit"), "{err}");
}

#[test]
fn bad_captions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let kb = KnowledgeBase::create(dir.path()).unwrap();
    for (caption, reason) in [
        ("", "empty"),
        ("   \n\t ", "empty"),
        (&"word ".repeat(600)[..], "over the limit"),
        ("bell \u{7} inside", "control character"),
    ] {
        let err = refused(
            &kb,
            NewPair::bytes("named.png", colour_png("blue", 2), caption),
        );
        assert!(err.to_string().contains("named.png"), "{err}");
        assert!(
            err.to_string().contains(reason),
            "caption {caption:?}: {err}"
        );
    }
}

#[test]
fn a_non_utf8_file_name_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let kb = KnowledgeBase::create(dir.path().join("kb")).unwrap();
    let name = std::ffi::OsStr::from_bytes(b"bad-\xff\xfe.png");
    let path = dir.path().join(name);
    std::fs::write(&path, colour_png("green", 4)).unwrap();
    let err = refused(&kb, NewPair::file(&path, "caption"));
    assert!(
        matches!(err, Error::Ingest(IngestError::NonUtf8Name { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("bad-"), "{err}");

    // import reports it and goes on with the good files.
    let folder = dir.path().join("folder");
    std::fs::create_dir(&folder).unwrap();
    std::fs::rename(&path, folder.join(name)).unwrap();
    write(&folder, "fine.png", &colour_png("red", 9));
    let report = kb.import_dir(&folder, &|_| {}).unwrap();
    assert_eq!(report.added, 1);
    assert_eq!(report.failed.len(), 1);
    assert!(
        report.failed[0].1.contains("not valid UTF-8"),
        "{:?}",
        report.failed
    );
}

#[test]
fn a_duplicate_gives_the_existing_id() {
    let dir = tempfile::tempdir().unwrap();
    let kb = KnowledgeBase::create(dir.path()).unwrap();
    let id = kb
        .add(NewPair::bytes("a.png", colour_png("red", 1), "one"))
        .unwrap()
        .id();
    let before = fingerprint(&kb);
    assert_eq!(
        kb.add(NewPair::bytes("b.png", colour_png("red", 1), "two"))
            .unwrap(),
        AddOutcome::Duplicate(id)
    );
    assert_eq!(fingerprint(&kb), before);
}

#[test]
fn a_store_from_a_newer_build_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    drop(KnowledgeBase::create(dir.path()).unwrap());
    set_schema_version(&dir.path().join("store"), 99);
    let err = KnowledgeBase::open(dir.path()).err().expect("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("schema version 99") && msg.contains("upgrade reimagen"),
        "{msg}"
    );
}

fn set_schema_version(store: &Path, version: u64) {
    // SAFETY: the KB is closed; this test is the only user of the environment.
    let env = unsafe { heed::EnvOpenOptions::new().max_dbs(16).open(store) }.unwrap();
    let wtxn = env.write_txn().unwrap();
    let meta = env
        .create_databases_and_commit(wtxn, |opener, wtxn| -> heed::Result<_> {
            let db: heed::Database<heed::types::Str, heed::types::Bytes> =
                opener.create_database(wtxn, Some("meta"))?;
            Ok(heed::CommitOrAbort::<_, ()>::Commit(db))
        })
        .unwrap()
        .unwrap_commit();
    let mut wtxn = env.write_txn().unwrap();
    meta.put(&mut wtxn, "schema-version", &version.to_le_bytes())
        .unwrap();
    wtxn.commit().unwrap();
}
