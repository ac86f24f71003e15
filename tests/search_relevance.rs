//! `bench relevance` on a small emojibase-shaped package made here (the real one comes from
//! npm): the labelled queries, before/after rows, the tarball reader, the clip and hybrid rows
//! with an embedder, and the message when the data is missing.

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
    assert!(from_tarball.notes.is_empty());
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
