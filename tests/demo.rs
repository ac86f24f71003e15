//! `reimagen demo` end to end on the random-weight fixture cascade: the sample set is imported
//! with the shipped CLIP, every held-out entity retrieves renditions of itself by BM25, and the
//! contact sheet, the page and the images are written.

mod common;

use std::path::Path;

use common::Cli;

#[test]
fn demo_builds_the_kb_generates_and_writes_the_sheet() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let model = root.join("tests/fixtures/reimagen");
    let args = [
        "demo",
        "--model",
        model.to_str().unwrap(),
        "--limit",
        "2",
        "--steps",
        "2",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ];
    let report = Cli::CPU.json(&dir.path().join("unused-kb"), &args);
    let samples = std::fs::read_dir(root.join("examples/demo/kb"))
        .unwrap()
        .flat_map(|entity| std::fs::read_dir(entity.unwrap().path()).unwrap())
        .filter(|f| {
            f.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|e| e == "png")
        })
        .count();
    assert_eq!(report["imported"], samples, "{report}");
    let entities = report["entities"].as_array().unwrap();
    assert_eq!(entities.len(), 2, "{report}");
    for e in entities {
        assert_eq!(
            e["neighbours_of_entity"], 2,
            "BM25 finds the entity's renditions: {e}"
        );
        for key in ["with_retrieval", "without_retrieval"] {
            let image = image::open(e[key].as_str().unwrap()).unwrap();
            assert_eq!(image.width(), 16, "the fixture cascade's last stage");
        }
    }
    let sheet = image::open(out.join("demo.png")).unwrap();
    assert!(
        sheet.height() > 2 * 128 && sheet.width() > 5 * 128,
        "two rows of five cells"
    );
    let page = std::fs::read_to_string(out.join("index.html")).unwrap();
    for e in entities {
        assert!(page.contains(e["prompt"].as_str().unwrap()), "{page}");
    }
    // The page and the report say how it sampled; a flag changes one setting.
    assert_eq!(report["guidance"]["eta"], 0.5, "{report}");
    assert!(
        page.contains("guidance: interleaved, η = 0.5, w_p = 3, w_n = 3"),
        "{page}"
    );

    // A second run replaces the KB instead of adding to it.
    let again = Cli::CPU.json(
        &dir.path().join("unused-kb"),
        &[&args[..], &["--wn", "5"]].concat(),
    );
    assert_eq!(again["imported"], samples);
    assert_eq!(again["guidance"]["w_n"], 5.0, "{again}");
    assert_eq!(again["guidance"]["eta"], 0.5, "{again}");
}

#[test]
fn demo_without_a_generator_says_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-model");
    let err = Cli::CPU.fails(
        dir.path(),
        &["demo", "--model", missing.to_str().unwrap(), "--out", "x"],
    );
    assert!(
        err.contains("no generator model") && err.contains("no-model"),
        "{err}"
    );
}
