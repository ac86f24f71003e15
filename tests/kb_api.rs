//! The library API end to end: add, get, search in every mode, filters, de-duplication,
//! update, remove, check, rebuild, backup, reopen, and the embedder rules.

mod common;

use std::sync::Arc;

use common::{ToyEmbedder, colour_png};
use reimagen::{
    AddOutcome, Error, FusionWeights, KnowledgeBase, ModelError, NewPair, PairText, Query,
    QueryImage, Retriever, SearchMode,
};

fn toy() -> Arc<ToyEmbedder> {
    Arc::new(ToyEmbedder { dim: 16 })
}

fn open_with_toy(dir: &std::path::Path) -> KnowledgeBase {
    KnowledgeBase::builder(dir)
        .create(true)
        .embedder(toy())
        .open()
        .unwrap()
}

/// Adds `n` pairs per colour, entity = colour + " thing", tag = the colour's warmth.
fn populate(kb: &KnowledgeBase, per_colour: u32) -> Vec<reimagen::ImageId> {
    let mut pairs = Vec::new();
    for (name, _) in common::COLOURS {
        for seed in 0..per_colour {
            let warmth = if ["red", "orange", "yellow"].contains(name) {
                "warm"
            } else {
                "cool"
            };
            pairs.push(
                NewPair::bytes(
                    format!("{name}-{seed}.png"),
                    colour_png(name, seed),
                    format!("a {name} square number {seed}"),
                )
                .entity(format!("{name} thing"))
                .tag(warmth),
            );
        }
    }
    kb.add_many(pairs)
        .into_iter()
        .map(|r| r.unwrap().id())
        .collect()
}

#[test]
fn bm25_search_finds_by_caption_entity_and_tag_and_carries_provenance() {
    let dir = tempfile::tempdir().unwrap();
    let kb = KnowledgeBase::create(dir.path()).unwrap();
    let ids = populate(&kb, 3);
    assert_eq!(ids.len(), 18);

    let hits = kb.search(&Query::text("green square").k(5)).unwrap();
    assert_eq!(hits.len(), 5);
    assert!(
        hits[..3].iter().all(|h| h.caption.contains("green")),
        "{hits:#?}"
    );
    assert_eq!(hits[0].provenance[0].retriever, Retriever::Bm25);
    assert_eq!(hits[0].provenance[0].rank, 1);
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));

    let filtered = kb
        .search(&Query::text("square").k(50).entity("Blue Thing"))
        .unwrap();
    assert_eq!(filtered.len(), 3);
    assert!(
        filtered
            .iter()
            .all(|h| h.entity.as_deref() == Some("blue thing"))
    );

    let warm = kb.search(&Query::text("square").k(50).tag("warm")).unwrap();
    assert_eq!(warm.len(), 9);

    let dedup = kb
        .search(&Query::text("square").k(50).dedup_entity(true))
        .unwrap();
    assert_eq!(dedup.len(), 6, "one hit per entity");
}

#[test]
fn clip_image_and_hybrid_modes_use_the_embedder() {
    let dir = tempfile::tempdir().unwrap();
    let kb = open_with_toy(dir.path());
    populate(&kb, 4);

    let clip = kb
        .search(&Query::text("something red").mode(SearchMode::Clip).k(4))
        .unwrap();
    assert_eq!(clip.len(), 4);
    assert!(
        clip.iter()
            .all(|h| h.entity.as_deref() == Some("red thing")),
        "{clip:#?}"
    );
    assert!(
        clip[0].score > 0.9,
        "cosine similarity of a red query to a red image: {}",
        clip[0].score
    );

    let floor = kb
        .search(
            &Query::text("something red")
                .mode(SearchMode::Clip)
                .k(30)
                .min_similarity(0.95),
        )
        .unwrap();
    assert!(
        !floor.is_empty() && floor.len() < 24,
        "the floor drops far colours ({} kept)",
        floor.len()
    );

    let blue = kb
        .search(
            &Query::text("x")
                .mode(SearchMode::Clip)
                .k(24)
                .entity("blue thing"),
        )
        .unwrap();
    assert_eq!(blue.len(), 4, "filters apply to CLIP search too");

    let anchor = kb.search(&Query::text("purple square number 2")).unwrap()[0].id;
    let similar = kb
        .search(&Query::image(QueryImage::Pair(anchor)).k(4))
        .unwrap();
    assert_eq!(similar[0].id, anchor);
    assert!(
        similar
            .iter()
            .all(|h| h.entity.as_deref() == Some("purple thing"))
    );

    // Hybrid: BM25 ranks "yellow … number 1" captions, CLIP ranks yellow images; pairs that both
    // lists hold come first, and every top hit is yellow.
    let hybrid = kb
        .search(&Query::text("yellow number 1").mode(SearchMode::Hybrid).k(4))
        .unwrap();
    assert!(
        hybrid
            .iter()
            .all(|h| h.entity.as_deref() == Some("yellow thing")),
        "{hybrid:#?}"
    );
    assert!(
        hybrid[..2]
            .iter()
            .any(|h| h.caption == "a yellow square number 1"),
        "{hybrid:#?}"
    );
    let sources: Vec<Retriever> = hybrid[0].provenance.iter().map(|p| p.retriever).collect();
    assert!(sources.contains(&Retriever::Bm25) && sources.contains(&Retriever::Clip));

    let clip_only = kb
        .search(
            &Query::text("yellow number 1")
                .mode(SearchMode::Hybrid)
                .k(4)
                .weights(FusionWeights {
                    bm25: 0.0,
                    clip: 1.0,
                    rrf_k: 60.0,
                }),
        )
        .unwrap();
    assert!(
        clip_only
            .iter()
            .all(|h| h.entity.as_deref() == Some("yellow thing"))
    );
}

#[test]
fn clip_mode_without_an_embedder_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let kb = KnowledgeBase::create(dir.path()).unwrap();
    populate(&kb, 1);
    let err = kb
        .search(&Query::text("red").mode(SearchMode::Clip))
        .unwrap_err();
    assert!(
        matches!(err, Error::Model(ModelError::NoEmbedder { .. })),
        "{err}"
    );
    assert!(
        err.to_string().contains("no embedder is configured"),
        "{err}"
    );
    assert!(err.is_user_error());
}

#[test]
fn a_kb_refuses_embeddings_of_another_model() {
    let dir = tempfile::tempdir().unwrap();
    {
        let kb = open_with_toy(dir.path());
        populate(&kb, 1);
    }
    let other = Arc::new(ToyEmbedder { dim: 8 });
    let err = KnowledgeBase::builder(dir.path())
        .embedder(other)
        .open()
        .err()
        .expect("mismatch refused");
    assert!(
        matches!(err, Error::Model(ModelError::EmbedderMismatch { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("toy-colour/16") && err.to_string().contains("toy-colour/8"));
}

#[test]
fn duplicates_return_the_existing_id_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let kb = KnowledgeBase::create(dir.path()).unwrap();
    let first = kb
        .add(NewPair::bytes(
            "a.png",
            colour_png("red", 1),
            "first caption",
        ))
        .unwrap();
    let again = kb
        .add(NewPair::bytes(
            "b.png",
            colour_png("red", 1),
            "second caption",
        ))
        .unwrap();
    assert!(matches!(first, AddOutcome::Added(_)));
    assert_eq!(again, AddOutcome::Duplicate(first.id()));
    assert_eq!(
        kb.get(&first.id()).unwrap().unwrap().caption,
        "first caption"
    );
    assert_eq!(kb.stats().unwrap().pairs, 1);
}

#[test]
fn update_and_remove_reach_every_index() {
    let dir = tempfile::tempdir().unwrap();
    let kb = open_with_toy(dir.path());
    let ids = populate(&kb, 2);
    let id = ids[0];
    assert!(
        kb.update(
            &id,
            PairText {
                caption: "a zebra crossing".into(),
                entity: Some("zebra".into()),
                tags: vec![]
            }
        )
        .unwrap()
    );
    let hits = kb.search(&Query::text("zebra")).unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].id, id);
    assert!(
        kb.check().unwrap().is_consistent(),
        "{:?}",
        kb.check().unwrap()
    );

    assert!(kb.remove(&id).unwrap());
    assert!(!kb.remove(&id).unwrap(), "a second remove finds nothing");
    assert!(kb.get(&id).unwrap().is_none());
    assert!(kb.search(&Query::text("zebra")).unwrap().is_empty());
    let similar = kb
        .search(&Query::image(QueryImage::Pair(ids[1])).k(50))
        .unwrap();
    assert!(
        similar.iter().all(|h| h.id != id),
        "tombstoned in the HNSW index"
    );
    let stats = kb.stats().unwrap();
    assert_eq!(
        stats.image_index.tombstones, 2,
        "the update's old point and the removed one"
    );
    let report = kb.check().unwrap();
    assert!(report.is_consistent(), "{report:?}");
}

#[test]
fn indices_survive_reopen_and_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let kb = open_with_toy(dir.path());
        populate(&kb, 3)
    };
    let kb = open_with_toy(dir.path());
    assert!(kb.check().unwrap().is_consistent());
    let before = kb
        .search(&Query::text("orange").mode(SearchMode::Clip).k(3))
        .unwrap();
    kb.rebuild_indices().unwrap();
    let after = kb
        .search(&Query::text("orange").mode(SearchMode::Clip).k(3))
        .unwrap();
    let ids_of = |h: &[reimagen::Hit]| {
        h.iter()
            .map(|h| h.id)
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(ids_of(&before), ids_of(&after));
    assert_eq!(kb.stats().unwrap().pairs, ids.len() as u64);
    assert!(kb.check().unwrap().is_consistent());
}

#[test]
fn damaged_indices_are_rebuilt_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let kb = open_with_toy(dir.path());
        populate(&kb, 3);
    }
    // Corrupt the tantivy metadata and truncate every file of the HNSW dumps.
    std::fs::write(dir.path().join("text-index/meta.json"), b"{ not json").unwrap();
    for entry in walk(&dir.path().join("vector-index")) {
        if entry.extension().is_some_and(|e| e == "data") {
            let bytes = std::fs::read(&entry).unwrap();
            std::fs::write(&entry, &bytes[..bytes.len() / 2]).unwrap();
        }
    }
    let kb = open_with_toy(dir.path());
    let report = kb.check().unwrap();
    assert!(report.is_consistent(), "{report:?}");
    assert_eq!(
        kb.search(&Query::text("green").mode(SearchMode::Clip).k(3))
            .unwrap()
            .len(),
        3
    );
    assert_eq!(kb.search(&Query::text("green")).unwrap().len(), 3);
}

#[test]
fn an_index_left_behind_replays_the_change_log() {
    let dir = tempfile::tempdir().unwrap();
    {
        let kb = open_with_toy(dir.path());
        populate(&kb, 1);
    }
    // Keep the indices as they are now, add more, then put the old indices back: as if the
    // process died after the LMDB commit and before the index commits.
    let saved = tempfile::tempdir().unwrap();
    common::copy_dir(
        &dir.path().join("text-index"),
        &saved.path().join("text-index"),
    );
    common::copy_dir(
        &dir.path().join("vector-index"),
        &saved.path().join("vector-index"),
    );
    {
        let kb = open_with_toy(dir.path());
        populate_more(&kb);
    }
    for name in ["text-index", "vector-index"] {
        std::fs::remove_dir_all(dir.path().join(name)).unwrap();
        common::copy_dir(&saved.path().join(name), &dir.path().join(name));
    }
    let kb = open_with_toy(dir.path());
    assert!(
        kb.check().unwrap().is_consistent(),
        "{:?}",
        kb.check().unwrap()
    );
    assert_eq!(kb.search(&Query::text("teal")).unwrap().len(), 1);
}

fn populate_more(kb: &KnowledgeBase) {
    let png = common::image_bytes([0, 128, 128], 99, 10, 10, image::ImageFormat::Png);
    kb.add(NewPair::bytes("teal.png", png, "a teal square"))
        .unwrap();
}

#[test]
fn backup_opens_as_a_knowledge_base() {
    let dir = tempfile::tempdir().unwrap();
    let kb = KnowledgeBase::create(dir.path().join("kb")).unwrap();
    populate(&kb, 2);
    let dest = dir.path().join("backup");
    kb.backup(&dest).unwrap();
    assert!(
        kb.backup(&dest).is_err(),
        "a non-empty destination is refused"
    );
    let copy = KnowledgeBase::open(&dest).unwrap();
    assert_eq!(copy.stats().unwrap().pairs, 12);
    assert!(copy.check().unwrap().is_consistent());
    assert_eq!(copy.search(&Query::text("purple")).unwrap().len(), 2);
}

#[test]
fn a_second_opener_is_told_the_kb_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let _kb = KnowledgeBase::create(dir.path()).unwrap();
    let err = KnowledgeBase::open(dir.path()).err().expect("locked");
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
}

#[test]
fn prefixes_resolve_to_ids() {
    let dir = tempfile::tempdir().unwrap();
    let kb = KnowledgeBase::create(dir.path()).unwrap();
    let id = kb
        .add(NewPair::bytes("a.png", colour_png("blue", 3), "blue"))
        .unwrap()
        .id();
    assert_eq!(kb.resolve(&id.to_hex()[..7]).unwrap(), id);
    assert_eq!(kb.resolve(&id.to_hex().to_uppercase()).unwrap(), id);
    assert!(
        matches!(kb.resolve("ffff0000"), Err(Error::NotFound(_)))
            || id.to_hex().starts_with("ffff0000")
    );
    assert!(kb.thumbnail(&id).unwrap().is_some());
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn the_lmdb_map_grows_by_itself_when_full() {
    let dir = tempfile::tempdir().unwrap();
    let kb = KnowledgeBase::builder(dir.path())
        .create(true)
        .initial_map_size(1 << 20)
        .open()
        .unwrap();
    // Noise does not compress: 40 × 64 KiB of pixels is well past a 1 MiB map.
    let mut pairs = Vec::new();
    for seed in 0..40u32 {
        let mut x = seed.wrapping_mul(2654435761) | 1;
        let img = image::RgbImage::from_fn(128, 128, |_, _| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            image::Rgb([x as u8, (x >> 8) as u8, (x >> 16) as u8])
        });
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        pairs.push(NewPair::bytes(
            format!("noise-{seed}.png"),
            png,
            format!("noise {seed}"),
        ));
    }
    for r in kb.add_many(pairs) {
        r.unwrap();
    }
    let stats = kb.stats().unwrap();
    assert_eq!(stats.pairs, 40);
    assert!(
        stats.map_size > 2 << 20,
        "the map grew: {} bytes",
        stats.map_size
    );
    assert!(kb.check().unwrap().is_consistent());
}

#[test]
fn filtered_vector_search_is_exact_for_a_rare_entity_and_walks_the_graph_for_a_common_one() {
    use reimagen::Embedder;
    let dir = tempfile::tempdir().unwrap();
    let kb = open_with_toy(dir.path());
    let embedder = toy();
    let query = embedder.embed_text("something red").unwrap();
    // 2,100 pairs of one entity (more than the exact-search limit), 3 of a rare one whose name
    // needs Unicode case folding, 300 with none; colours spread over the cube.
    let mut pairs = Vec::new();
    let mut truth: Vec<(Option<&str>, f32)> = Vec::new();
    for i in 0..2403u32 {
        let rgb = [
            (i * 37 % 256) as u8,
            (i * 101 % 256) as u8,
            (i * 53 % 256) as u8,
        ];
        let bytes = common::image_bytes(rgb, i, 12, 8, image::ImageFormat::Png);
        let entity = match i {
            0..2100 => Some("common"),
            2100..2103 => Some("Rare Ölberg"),
            _ => None,
        };
        let v = embedder
            .embed_image(&image::load_from_memory(&bytes).unwrap())
            .unwrap();
        truth.push((entity, v.iter().zip(&query).map(|(a, b)| a * b).sum()));
        let mut pair = NewPair::bytes(format!("{i}.png"), bytes, format!("square {i}"));
        if let Some(e) = entity {
            pair = pair.entity(e);
        }
        pairs.push(pair);
    }
    assert!(kb.add_many(pairs).iter().all(|r| r.is_ok()));
    let best = |entity: &str| -> Vec<f32> {
        let mut s: Vec<f32> = truth
            .iter()
            .filter(|(e, _)| *e == Some(entity))
            .map(|(_, s)| *s)
            .collect();
        s.sort_by(|a, b| b.total_cmp(a));
        s
    };

    let rare = kb
        .search(
            &Query::text("something red")
                .mode(SearchMode::Clip)
                .k(10)
                .entity("RARE ÖLBERG"),
        )
        .unwrap();
    assert_eq!(rare.len(), 3, "{rare:#?}");
    assert!(
        rare.iter()
            .all(|h| h.entity.as_deref() == Some("Rare Ölberg"))
    );
    for (hit, exact) in rare.iter().zip(best("Rare Ölberg")) {
        assert!((hit.score - exact).abs() < 1e-4, "{} vs {exact}", hit.score);
    }

    let common = kb
        .search(
            &Query::text("something red")
                .mode(SearchMode::Clip)
                .k(5)
                .entity("common"),
        )
        .unwrap();
    assert_eq!(common.len(), 5);
    assert!(common.iter().all(|h| h.entity.as_deref() == Some("common")));
    let fifth = best("common")[4];
    assert!(
        common.iter().all(|h| h.score >= fifth - 2e-3),
        "the graph walk found worse than the exact top 5 (5th: {fifth}): {common:#?}"
    );
}
