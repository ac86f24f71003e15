//! hnsw_rs as the selectable graph engine (`graph = "hnsw_rs"` in `kb.toml`): a KB on it
//! ingests, searches, reopens from its dump and serves readers; a damaged dump is refused (its
//! checksum) and rebuilt from the store, never handed to hnsw_rs.

mod common;

use std::sync::Arc;

use common::{ToyEmbedder, populate};
use reimagen::{GraphEngine, KnowledgeBase, Query, SearchMode};

fn toy() -> Arc<ToyEmbedder> {
    Arc::new(ToyEmbedder { dim: 16 })
}

fn open(dir: &std::path::Path) -> KnowledgeBase {
    KnowledgeBase::builder(dir)
        .create(true)
        .embedder(toy())
        .graph(GraphEngine::HnswRs)
        .open()
        .unwrap()
}

fn red(kb: &KnowledgeBase) -> Vec<reimagen::ImageId> {
    let hits = kb
        .search(&Query::text("red").mode(SearchMode::Clip).k(5))
        .unwrap();
    assert_eq!(hits.len(), 5);
    assert!(hits.iter().all(|h| h.caption.contains("red")), "{hits:?}");
    hits.into_iter().map(|h| h.id).collect()
}

#[test]
fn a_kb_on_hnsw_rs_ingests_searches_reopens_and_serves_readers() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let kb = open(dir.path());
        populate(&kb, 0, 10);
        assert!(kb.check().unwrap().is_consistent());
        red(&kb)
    };
    let config = std::fs::read_to_string(dir.path().join("kb.toml")).unwrap();
    assert!(config.contains("graph = \"hnsw_rs\""), "{config}");
    let manifest =
        std::fs::read_to_string(dir.path().join("vector-index/image.manifest.json")).unwrap();
    assert!(
        manifest.contains("graph.hnsw.data") && manifest.contains("\"hnsw_rs\""),
        "{manifest}"
    );

    // Reopened from its dump (kb.toml keeps the engine): the same answers, and it goes on.
    let kb = KnowledgeBase::builder(dir.path())
        .embedder(toy())
        .open()
        .unwrap();
    assert_eq!(kb.config().graph, GraphEngine::HnswRs);
    assert_eq!(red(&kb), before);
    populate(&kb, 100, 2);
    assert!(kb.remove(&before[0]).unwrap());
    assert!(!red(&kb).contains(&before[0]));
    assert!(kb.check().unwrap().is_consistent());
    let from_writer = red(&kb);
    drop(kb);

    // A read-only open (LMDB opens a KB once per process) loads the dump whole.
    let reader = KnowledgeBase::builder(dir.path())
        .embedder(toy())
        .open_read_only()
        .unwrap();
    assert_eq!(red(&reader), from_writer);
    assert_eq!(reader.stats().unwrap().image_index.points, 72);
    assert!(reader.check().unwrap().is_consistent());
    drop(reader);

    // Back to the own graph: rebuilt on open.
    let kb = KnowledgeBase::builder(dir.path())
        .embedder(toy())
        .graph(GraphEngine::Own)
        .open()
        .unwrap();
    assert!(kb.check().unwrap().is_consistent());
    assert_eq!(red(&kb).len(), 5);
}

#[test]
fn a_damaged_hnsw_rs_dump_is_refused_and_rebuilt_not_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let kb = open(dir.path());
        populate(&kb, 0, 10);
        red(&kb)
    };
    let root = dir.path().join("vector-index");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("image.manifest.json")).unwrap()).unwrap();
    let dump = root.join(manifest["dir"].as_str().unwrap());
    // Cut short (hnsw_rs would exit the process on it) and changed in place.
    let data = dump.join("graph.hnsw.data");
    let bytes = std::fs::read(&data).unwrap();
    std::fs::write(&data, &bytes[..bytes.len() / 2]).unwrap();
    let graph = dump.join("graph.hnsw.graph");
    let mut bytes = std::fs::read(&graph).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&graph, &bytes).unwrap();

    let reader = KnowledgeBase::builder(dir.path())
        .embedder(toy())
        .open_read_only()
        .unwrap();
    assert_eq!(red(&reader), before, "a reader rebuilds in memory");
    drop(reader);
    let kb = KnowledgeBase::builder(dir.path())
        .embedder(toy())
        .open()
        .unwrap();
    assert!(kb.check().unwrap().is_consistent());
    assert_eq!(red(&kb), before);
}
