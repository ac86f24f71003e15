//! `bench relevance` on a small emojibase-shaped package made here (the real one comes from
//! npm): the labelled queries, before/after rows, the tarball reader, the clip and hybrid rows
//! with an embedder, real images and captions from an emoji dataset, and the message when the
//! data is missing.

mod common;

use std::path::Path;
use std::sync::Arc;

use reimagen::bench::relevance::{RelevanceOptions, RelevanceReport, run_relevance};

const EN: &str = r#"[
 {"label":"grinning face","hexcode":"1F600","tags":["face","grin"],"group":0},
 {"label":"red heart","hexcode":"2764","tags":["heart","love"],"group":0},
 {"label":"two hearts","hexcode":"1F495","tags":["hearts","love"],"group":0},
 {"label":"dog face","hexcode":"1F436","tags":["dog","pet","puppy"],"group":3},
 {"label":"cat face","hexcode":"1F431","tags":["cat","kitten","pet"],"group":3},
 {"label":"lighthouse","hexcode":"1F3EF","tags":["beacon","coast"],"group":5},
 {"label":"beach with umbrella","hexcode":"1F3D6","tags":["beach","umbrella"],"group":5},
 {"label":"flag: Côte d’Ivoire","hexcode":"1F1E8-1F1EE","tags":["flag"],"group":9},
 {"label":"piñata","hexcode":"1FA85","tags":["celebration","party"],"group":6},
 {"label":"strawberry","hexcode":"1F353","tags":["berry","fruit"],"group":4},
 {"label":"light skin tone","hexcode":"1F3FB","group":2},
 {"label":"regional indicator A","hexcode":"1F1E6"}
]"#;

const FR: &str = r#"[
 {"label":"visage souriant","hexcode":"1F600","tags":["sourire","visage"],"group":0},
 {"label":"cœur rouge","hexcode":"2764","tags":["amour","cœur"],"group":0},
 {"label":"deux cœurs","hexcode":"1F495","tags":["amour","cœurs"],"group":0},
 {"label":"tête de chien","hexcode":"1F436","tags":["chien","animal"],"group":3},
 {"label":"tête de chat","hexcode":"1F431","tags":["chat","animal"],"group":3},
 {"label":"phare","hexcode":"1F3EF","tags":["côte","lumière"],"group":5},
 {"label":"plage avec parasol","hexcode":"1F3D6","tags":["plage","parasol"],"group":5},
 {"label":"drapeau : Côte d’Ivoire","hexcode":"1F1E8-1F1EE","tags":["drapeau"],"group":9},
 {"label":"piñata","hexcode":"1FA85","tags":["fête","célébration"],"group":6},
 {"label":"fraise","hexcode":"1F353","tags":["fruit","baie"],"group":4}
]"#;

fn package(dir: &Path) {
    for (locale, data) in [("en", EN), ("fr", FR)] {
        common::write(dir, &format!("package/{locale}/data.json"), data.as_bytes());
    }
    common::write(
        dir,
        "package/package.json",
        br#"{"name":"emojibase-data","version":"0.0.1-test"}"#,
    );
}

fn options(data: &Path) -> RelevanceOptions {
    RelevanceOptions {
        data: data.to_path_buf(),
        locales: vec!["en".into(), "fr".into()],
        max_queries: 50,
        ..RelevanceOptions::default()
    }
}

fn row<'a>(
    r: &'a RelevanceReport,
    locale: &str,
    kind: &str,
    system: &str,
) -> &'a reimagen::bench::relevance::RelevanceRow {
    r.rows
        .iter()
        .find(|x| x.locale == locale && x.kind == kind && x.system == system)
        .unwrap_or_else(|| panic!("no row {locale} {kind} {system}: {r}"))
}

#[test]
fn the_bench_reports_before_and_after_per_kind() {
    let data = tempfile::tempdir().unwrap();
    package(data.path());
    let work = tempfile::tempdir().unwrap();
    let report = run_relevance(work.path(), &options(data.path()), &|_| {}).unwrap();
    assert_eq!(report.version, "0.0.1-test");
    // Components and entries without a group are not entities.
    assert_eq!(report.pairs["en"], 10);
    for kind in ["name", "keyword", "plural", "accent", "typo"] {
        let before = row(&report, "en", kind, "bm25-before");
        let after = row(&report, "en", kind, "bm25");
        assert!(
            after.queries > 0 && after.queries == before.queries,
            "{kind}"
        );
        assert!(
            after.recall_at_10 >= before.recall_at_10,
            "{kind}: {report}"
        );
    }
    assert_eq!(row(&report, "en", "name", "bm25").recall_at_10, 1.0);
    assert_eq!(row(&report, "en", "accent", "bm25").recall_at_10, 1.0);
    assert!(
        row(&report, "en", "plural", "bm25").recall_at_10
            > row(&report, "en", "plural", "bm25-before").recall_at_10
    );
    assert!(
        row(&report, "en", "typo", "bm25").recall_at_10
            > row(&report, "en", "typo", "bm25-before").recall_at_10
    );
    // French has no plural kind (the rules are English) but has the others.
    assert!(
        report
            .rows
            .iter()
            .all(|r| !(r.locale == "fr" && r.kind == "plural"))
    );
    assert_eq!(row(&report, "fr", "accent", "bm25").recall_at_10, 1.0);
    assert!(
        report.notes.iter().any(|n| n.contains("clip")),
        "{:?}",
        report.notes
    );
    let text = report.to_string();
    assert!(text.contains("bm25-before") && text.contains("nDCG@10"));
}

#[test]
fn the_tarball_reads_like_the_folder_and_clip_rows_need_an_embedder() {
    let data = tempfile::tempdir().unwrap();
    package(data.path());
    let tgz = data.path().join("emojibase-data-0.0.1.tgz");
    let file = std::fs::File::create(&tgz).unwrap();
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        file,
        flate2::Compression::fast(),
    ));
    builder
        .append_dir_all("package", data.path().join("package"))
        .unwrap();
    builder.into_inner().unwrap().finish().unwrap();
    let only_tarball = tempfile::tempdir().unwrap();
    std::fs::copy(&tgz, only_tarball.path().join("emojibase-data-0.0.1.tgz")).unwrap();

    let mut opts = options(only_tarball.path());
    opts.locales = vec!["en".into()];
    opts.embedder = Some(Arc::new(common::ToyEmbedder { dim: 16 }));
    let work = tempfile::tempdir().unwrap();
    let from_tarball = run_relevance(work.path(), &opts, &|_| {}).unwrap();
    // Without the dataset the images are placeholders, and the report says so.
    assert_eq!(from_tarball.notes.len(), 1, "{:?}", from_tarball.notes);
    assert!(from_tarball.notes[0].contains("placeholder"));
    for system in ["clip", "hybrid"] {
        assert!(row(&from_tarball, "en", "name", system).queries > 0);
    }
    let mut folder = options(data.path());
    folder.locales = vec!["en".into()];
    let work = tempfile::tempdir().unwrap();
    let from_folder = run_relevance(work.path(), &folder, &|_| {}).unwrap();
    assert_eq!(
        row(&from_tarball, "en", "typo", "bm25").recall_at_10,
        row(&from_folder, "en", "typo", "bm25").recall_at_10
    );
}

#[test]
fn missing_data_says_how_to_fetch_it() {
    let empty = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let err = run_relevance(work.path(), &options(empty.path()), &|_| {}).unwrap_err();
    assert!(err.is_user_error());
    assert!(err.to_string().contains("npm pack emojibase-data"), "{err}");
    let mut unknown = options(empty.path());
    package(empty.path());
    unknown.locales = vec!["xx".into()];
    let err = run_relevance(work.path(), &unknown, &|_| {}).unwrap_err();
    assert!(err.to_string().contains("`xx`"), "{err}");
}

/// A dataset in the layout of `reimagen dataset build` with renditions of three entities only:
/// red heart (red, two styles), strawberry (red) and lighthouse (blue).
fn dataset(dir: &Path) {
    let mut manifest = String::new();
    for (entity, slug, style, colour) in [
        ("red heart", "red-heart", "noto", "red"),
        ("red heart", "red-heart", "twemoji", "red"),
        ("strawberry", "strawberry", "noto", "red"),
        ("lighthouse", "lighthouse", "openmoji", "blue"),
    ] {
        let file = format!("64/train/{slug}/{style}.png");
        common::write(dir, &file, &common::colour_png(colour, slug.len() as u32));
        let line = serde_json::json!({
            "id": format!("{slug}/{style}"), "entity": entity, "slug": slug, "style": style,
            "split": "train", "caption": format!("{entity}, {style} style"), "tags": [],
            "source": "test", "license": "CC0-1.0", "files": {"64": file},
        });
        manifest.push_str(&format!("{line}\n"));
    }
    common::write(dir, "manifest.jsonl", manifest.as_bytes());
}

#[test]
fn a_dataset_gives_the_pairs_real_images_and_captions() {
    let data = tempfile::tempdir().unwrap();
    package(data.path());
    let set = tempfile::tempdir().unwrap();
    dataset(set.path());
    let mut opts = options(data.path());
    opts.embedder = Some(Arc::new(common::ToyEmbedder { dim: 16 }));
    opts.dataset = Some(set.path().to_path_buf());
    let work = tempfile::tempdir().unwrap();
    let report = run_relevance(work.path(), &opts, &|_| {}).unwrap();
    assert_eq!(report.dataset.as_deref(), Some(set.path()));
    assert_eq!(report.embedder.as_deref(), Some("toy-colour/16"));
    // Only the emojis the dataset has are pairs, in every locale.
    assert_eq!(report.pairs["en"], 3);
    assert_eq!(report.pairs["fr"], 3);
    assert!(report.notes.iter().any(|n| n.contains("7 emojis left out")));
    for system in ["bm25", "clip", "hybrid"] {
        assert!(row(&report, "en", "name", system).queries > 0);
    }

    // The captions are the dataset's, the images its files, the entities the locale's.
    let kb = reimagen::KnowledgeBase::builder(work.path().join("fr"))
        .open()
        .unwrap();
    let pairs = kb.list().unwrap();
    assert_eq!(pairs.len(), 3);
    let lighthouse = pairs
        .iter()
        .find(|p| p.caption == "lighthouse, openmoji style")
        .expect("the dataset's caption");
    assert_eq!(lighthouse.entity.as_deref(), Some("phare"));
    assert_eq!(
        kb.image_bytes(&lighthouse.id).unwrap().unwrap(),
        std::fs::read(set.path().join("64/train/lighthouse/openmoji.png")).unwrap()
    );
    // Red heart has two renditions: one is picked, the same for every locale.
    let en = reimagen::KnowledgeBase::builder(work.path().join("en"))
        .open()
        .unwrap();
    let heart = |kb: &reimagen::KnowledgeBase| {
        kb.list()
            .unwrap()
            .into_iter()
            .find(|p| p.caption.starts_with("red heart"))
            .unwrap()
            .caption
    };
    assert_eq!(heart(&en), heart(&kb));
}
