//! A store frozen at schema v1 (tests/fixtures/store-v1, see its README) opens with every later
//! build: it is migrated in one transaction and answers queries as before.

mod common;

use std::path::Path;

use reimagen::{KnowledgeBase, Query};

#[test]
fn the_v1_fixture_migrates_and_answers_queries() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1");
    common::copy_dir(&fixture, dir.path());
    let kb = KnowledgeBase::open(dir.path()).unwrap();
    let stats = kb.stats().unwrap();
    assert_eq!(stats.schema_version, 2);
    assert_eq!(stats.pairs, 4);
    assert_eq!(stats.entities, 2);

    let hits = kb.search(&Query::text("tokyo tower").k(1)).unwrap();
    assert_eq!(hits[0].caption, "Tokyo tower at night");
    assert_eq!(hits[0].tags, ["landmark", "red"]);
    assert_eq!(hits[0].entity.as_deref(), Some("tower"));

    // v2 backfilled a thumbnail for every pair.
    for pair in kb.list().unwrap() {
        let png = kb
            .thumbnail(&pair.id)
            .unwrap()
            .expect("thumbnail backfilled");
        let thumb = image::load_from_memory(&png).unwrap();
        assert_eq!(
            (thumb.width(), thumb.height()),
            (pair.width, pair.height),
            "small images keep their size"
        );
    }
    assert!(kb.check().unwrap().is_consistent());
    drop(kb);

    // Opening again is a no-op migration.
    let kb = KnowledgeBase::open(dir.path()).unwrap();
    assert_eq!(kb.stats().unwrap().pairs, 4);
}
