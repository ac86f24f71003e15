//! A read-only KB walks the dumped graph file in place (memory-mapped): damage in the file is an
//! error at the step that meets it, never a panic or a read out of bounds; `check` finds it and
//! the writer's open rebuilds; a writer replacing the dump never breaks a reader that has the
//! old one mapped; `stats` takes its graph counts from the dump's manifest.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{ToyEmbedder, populate};
use reimagen::{KnowledgeBase, Query, QueryImage, SearchMode};

fn toy() -> Arc<ToyEmbedder> {
    Arc::new(ToyEmbedder { dim: 16 })
}

fn writer(dir: &Path) -> KnowledgeBase {
    KnowledgeBase::builder(dir)
        .create(true)
        .embedder(toy())
        .open()
        .unwrap()
}

fn reader(dir: &Path) -> KnowledgeBase {
    KnowledgeBase::builder(dir)
        .embedder(toy())
        .open_read_only()
        .unwrap()
}

fn clip(kb: &KnowledgeBase, text: &str) -> reimagen::Result<Vec<reimagen::Hit>> {
    kb.search(&Query::text(text).mode(SearchMode::Clip).k(5))
}

/// The image graph file the manifest names.
fn image_graph(kb: &Path) -> PathBuf {
    let root = kb.join("vector-index");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("image.manifest.json")).unwrap()).unwrap();
    root.join(manifest["dir"].as_str().unwrap())
        .join("graph.bin")
}

/// The header of a graph file (format 2), as `src/vector/graph_file.rs` writes it.
#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct Header {
    dim: u32,
    m: u32,
    ef_construction: u32,
    nodes: u64,
    upper_len: u64,
    entry: Option<(u32, u8)>,
}

/// (nodes, 2m, byte offset of the layer-0 link slots) of a format-2 graph file: every array
/// starts on a 64-byte boundary after the header.
fn links0(bytes: &[u8]) -> (usize, usize, usize) {
    assert_eq!(&bytes[..8], b"RIHNSW02");
    let len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    let (h, _): (Header, usize) =
        bincode::serde::decode_from_slice(&bytes[12..12 + len], bincode::config::standard())
            .unwrap();
    let align = |x: usize| x.div_ceil(64) * 64;
    let (n, dim) = (h.nodes as usize, h.dim as usize);
    let mut at = align(12 + len);
    for size in [n * dim * 2, n * dim * 4, n * 8, n] {
        at = align(at + size);
    }
    (n, 2 * h.m as usize, at)
}

/// A KB of 60 pairs, closed (its graphs dumped), in a fresh folder.
fn dumped_kb() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    populate(&writer(dir.path()), 0, 10);
    dir
}

#[test]
fn a_reader_walks_the_dump_in_place_and_answers_like_the_writer() {
    let dir = dumped_kb();
    let expected = clip(&writer(dir.path()), "red").unwrap();
    let kb = reader(dir.path());
    let got = clip(&kb, "red").unwrap();
    let ids = |h: &[reimagen::Hit]| h.iter().map(|h| h.id).collect::<Vec<_>>();
    assert_eq!(ids(&got), ids(&expected));
    assert!(kb.check().unwrap().is_consistent());
    drop(kb);
    // `similar` by a stored pair needs no embedder: its stored vector is the query.
    let bare = KnowledgeBase::open_read_only(dir.path()).unwrap();
    let similar = bare
        .search(&Query::image(QueryImage::Pair(got[0].id)).k(3))
        .unwrap();
    assert_eq!(similar[0].id, got[0].id);
}

#[test]
fn damaged_links_are_an_error_for_a_reader_never_a_panic() {
    let pristine = dumped_kb();
    let bytes = std::fs::read(image_graph(pristine.path())).unwrap();
    let (nodes, m0, at) = links0(&bytes);
    let slot = move |node: usize| at + node * 4 * (1 + m0);
    let put = |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    type Damage = Box<dyn Fn(&mut Vec<u8>)>;
    let damages: Vec<(&str, Damage)> = vec![
        (
            "counts past the slot",
            Box::new(move |b| (0..nodes).for_each(|n| put(b, slot(n), (m0 + 1) as u32))),
        ),
        (
            "counts of u32::MAX",
            Box::new(move |b| (0..nodes).for_each(|n| put(b, slot(n), u32::MAX))),
        ),
        (
            "links past the last node",
            Box::new(move |b| {
                for n in 0..nodes {
                    put(b, slot(n), 2);
                    put(b, slot(n) + 8, nodes as u32 + 3);
                }
            }),
        ),
    ];
    for (what, damage) in damages {
        let dir = tempfile::tempdir().unwrap();
        common::copy_dir(pristine.path(), dir.path());
        let mut bad = bytes.clone();
        damage(&mut bad);
        let graph = image_graph(dir.path());
        std::fs::write(&graph, &bad).unwrap();

        let kb = reader(dir.path());
        let err = clip(&kb, "red").expect_err(what).to_string();
        assert!(
            err.contains("graph.bin") && err.contains("links are damaged"),
            "{what}: {err}"
        );
        // BM25 never touches the graph.
        assert!(
            !kb.search(&Query::text("red")).unwrap().is_empty(),
            "{what}"
        );
        // `check` verifies the whole file.
        let report = kb.check().unwrap();
        assert!(
            report.problems.iter().any(|p| p.contains("image index")),
            "{what}: {report:?}"
        );
        drop(kb);
        // The writer's open verifies the dump, refuses it and rebuilds.
        let kb = writer(dir.path());
        assert!(kb.check().unwrap().is_consistent(), "{what}");
        assert_eq!(clip(&kb, "red").unwrap().len(), 5, "{what}");
    }
}

#[test]
fn a_cut_short_or_lengthened_graph_file_is_refused_at_open_and_the_reader_still_answers() {
    let pristine = dumped_kb();
    let expected = clip(&reader(pristine.path()), "blue").unwrap();
    let bytes = std::fs::read(image_graph(pristine.path())).unwrap();
    let (_, _, at) = links0(&bytes);
    let mut long = bytes.clone();
    long.extend_from_slice(&[0; 64]);
    let mut huge_header = bytes.clone();
    huge_header[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    for (what, damaged) in [
        ("empty", Vec::new()),
        ("cut in the header", bytes[..10].to_vec()),
        ("cut in the links", bytes[..at + 10].to_vec()),
        ("one byte short", bytes[..bytes.len() - 1].to_vec()),
        ("one block long", long),
        ("a header length past the end", huge_header),
    ] {
        let dir = tempfile::tempdir().unwrap();
        common::copy_dir(pristine.path(), dir.path());
        std::fs::write(image_graph(dir.path()), &damaged).unwrap();
        // The dump is unusable: this reader rebuilds its graph from the store, in memory.
        let got = clip(&reader(dir.path()), "blue").unwrap();
        assert_eq!(
            got.iter().map(|h| h.id).collect::<Vec<_>>(),
            expected.iter().map(|h| h.id).collect::<Vec<_>>(),
            "{what}"
        );
    }
}

#[test]
fn a_reader_keeps_its_mapping_while_the_writer_replaces_the_dump() {
    let dir = dumped_kb();
    let first = image_graph(dir.path());
    let reader = reader(dir.path());
    let before = clip(&reader, "green").unwrap();
    assert_eq!(before.len(), 5);

    // Another process writes (LMDB opens a KB once per process): it removes the best hit, and
    // its close dumps into a new directory and removes the one this reader has mapped.
    common::ok(dir.path(), &["remove", &before[0].id.to_hex()]);
    let second = image_graph(dir.path());
    assert_ne!(first, second);
    assert!(!first.exists(), "the old dump is removed");

    // The reader walks its old mapping and replays the remove as a tombstone.
    let after = clip(&reader, "green").unwrap();
    assert_eq!(after.len(), 5);
    assert!(after.iter().all(|h| h.id != before[0].id));
    let ids = |h: &[reimagen::Hit]| h.iter().map(|h| h.id).collect::<Vec<_>>();
    assert_eq!(ids(&after[..4]), ids(&before[1..]));
    assert_eq!(reader.stats().unwrap().image_index.tombstones, 1);
    assert!(reader.check().unwrap().is_consistent());
}

#[test]
fn stats_counts_come_from_the_manifest_and_match_the_graph() {
    let dir = dumped_kb();
    {
        let kb = writer(dir.path());
        let id = clip(&kb, "red").unwrap()[0].id;
        assert!(kb.remove(&id).unwrap());
    }
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("vector-index/image.manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["points"], 60);
    assert_eq!(manifest["tombstones"], 1);
    let from_manifest = reader(dir.path()).stats().unwrap();
    assert_eq!(
        (
            from_manifest.image_index.points,
            from_manifest.image_index.tombstones
        ),
        (60, 1)
    );
    // The same counts once the graph is loaded.
    let kb = reader(dir.path());
    clip(&kb, "red").unwrap();
    assert_eq!(kb.stats().unwrap().image_index, from_manifest.image_index);
    assert_eq!(
        kb.stats().unwrap().text_vector_index,
        from_manifest.text_vector_index
    );
}
