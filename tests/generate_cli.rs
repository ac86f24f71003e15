//! `reimagen generate` and `reimagen init --generator` through the binary: --dry-run (text and
//! --json) with retrieved and given neighbours, and the errors for a bad or missing model
//! folder, unknown ids, an empty retrieval and impossible settings.

mod common;

use std::path::Path;

use common::{Cli, colour_png, fails, json, ok, write};

/// A KB of two red and two blue squares (entity = the folder).
fn kb_with_squares(dir: &Path) -> std::path::PathBuf {
    let kb = dir.join("kb");
    let photos = dir.join("photos");
    for (colour, seed) in [("red", 0), ("red", 1), ("blue", 2), ("blue", 3)] {
        write(
            &photos,
            &format!("{colour}/{colour}-{seed}.png"),
            &colour_png(colour, seed),
        );
        write(
            &photos,
            &format!("{colour}/{colour}-{seed}.txt"),
            format!("a {colour} square, number {seed}").as_bytes(),
        );
    }
    ok(&kb, &["init", "--no-models"]);
    ok(&kb, &["import", photos.to_str().unwrap()]);
    kb
}

#[test]
fn dry_run_prints_the_neighbours_it_would_use() {
    let dir = tempfile::tempdir().unwrap();
    let kb = kb_with_squares(dir.path());

    // Needs no model: none is configured and none is given.
    let chosen = json(&kb, &["generate", "red square", "--dry-run", "--json"]);
    let neighbours = chosen["neighbours"].as_array().unwrap();
    assert_eq!(neighbours.len(), 2, "{chosen}");
    for n in neighbours {
        assert_eq!(n["entity"], "red");
        assert!(n["caption"].as_str().unwrap().contains("red square"));
        assert_eq!(n["id"].as_str().unwrap().len(), 64);
        assert!(n["score"].as_f64().unwrap() > 0.0);
        assert_eq!(n["weight"], 1.0);
    }
    assert_eq!(chosen["warnings"].as_array().unwrap().len(), 0);

    // -k and the entity filter.
    let chosen = json(
        &kb,
        &[
            "generate",
            "square",
            "-k",
            "3",
            "--entity",
            "blue",
            "--dry-run",
            "--json",
        ],
    );
    let neighbours = chosen["neighbours"].as_array().unwrap();
    assert_eq!(neighbours.len(), 2);
    assert!(neighbours.iter().all(|n| n["entity"] == "blue"));

    // The text form names the pairs.
    let text = ok(&kb, &["generate", "blue square", "-k", "1", "--dry-run"]);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("a blue square"), "{text}");

    // Given ids (a prefix will do), in order, without scores.
    let blue = chosen["neighbours"][0]["id"].as_str().unwrap().to_string();
    let red =
        json(&kb, &["generate", "red", "-k", "1", "--dry-run", "--json"])["neighbours"][0]["id"]
            .as_str()
            .unwrap()
            .to_string();
    let given = json(
        &kb,
        &[
            "generate",
            "anything",
            "--neighbour",
            &red[..12],
            "--neighbour",
            &blue,
            "--dry-run",
            "--json",
        ],
    );
    let ids: Vec<&str> = given["neighbours"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [red.as_str(), blue.as_str()]);
    assert!(given["neighbours"][0]["score"].is_null());
}

#[test]
fn an_empty_retrieval_and_unknown_ids_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let kb = kb_with_squares(dir.path());

    let err = fails(&kb, &["generate", "zebra", "--dry-run"]);
    assert!(err.contains("found no pairs"), "{err}");
    let allowed = json(
        &kb,
        &[
            "generate",
            "zebra",
            "--allow-no-neighbours",
            "--dry-run",
            "--json",
        ],
    );
    assert_eq!(allowed["neighbours"].as_array().unwrap().len(), 0);
    assert!(
        allowed["warnings"][0]
            .as_str()
            .unwrap()
            .contains("prompt alone")
    );

    let err = fails(
        &kb,
        &["generate", "red", "--neighbour", "abcdef0123", "--dry-run"],
    );
    assert!(err.contains("no pair with id `abcdef0123`"), "{err}");

    // --neighbour replaces retrieval: retrieval options with it are a usage error.
    let err = fails(&kb, &["generate", "red", "--neighbour", "abcd", "-k", "3"]);
    assert!(err.contains("cannot be used with"), "{err}");
}

#[test]
fn impossible_settings_are_refused_with_the_setting_named() {
    let dir = tempfile::tempdir().unwrap();
    let kb = kb_with_squares(dir.path());
    for (args, says) in [
        (&["--eta", "2"][..], "guidance.eta"),
        (&["--wp", "NaN"][..], "guidance.w_p"),
        (&["--steps", "10,0"][..], "steps"),
        (&["--batch", "0"][..], "batch_size"),
        (&["-k", "0"][..], "k"),
    ] {
        let mut full = vec!["generate", "red square", "--dry-run"];
        full.extend_from_slice(args);
        let err = fails(&kb, &full);
        assert!(
            err.contains("invalid generation request"),
            "{args:?}: {err}"
        );
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // Refused before the model is looked for.
    let err = fails(&kb, &["generate", "red square", "--eta", "-0.5"]);
    assert!(err.contains("guidance.eta"), "{err}");
    assert!(!err.contains("--model"), "{err}");

    // Values clap itself refuses.
    let err = fails(&kb, &["generate", "red", "--mode", "image", "--dry-run"]);
    assert!(err.contains("invalid value 'image'"), "{err}");
    let err = fails(&kb, &["generate", "red", "--sampler", "euler", "--dry-run"]);
    assert!(err.contains("invalid value 'euler'"), "{err}");
}

#[test]
fn a_missing_or_bad_model_folder_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let kb = kb_with_squares(dir.path());

    // No --model and none in kb.toml.
    let err = fails(&kb, &["generate", "red square"]);
    assert!(err.contains("names no generator model"), "{err}");
    assert!(
        err.contains("--model") && err.contains("init --generator"),
        "{err}"
    );

    let nowhere = dir.path().join("nowhere");
    let err = fails(
        &kb,
        &[
            "generate",
            "red square",
            "--model",
            nowhere.to_str().unwrap(),
        ],
    );
    assert!(
        err.contains("nowhere") && err.contains("no such folder"),
        "{err}"
    );

    let empty = dir.path().join("empty-model");
    std::fs::create_dir(&empty).unwrap();
    let err = fails(
        &kb,
        &["generate", "red square", "--model", empty.to_str().unwrap()],
    );
    assert!(
        err.contains("cascade.json") && err.contains("missing"),
        "{err}"
    );

    // init --generator refuses the bad folder and leaves kb.toml as it was.
    let before = std::fs::read_to_string(kb.join("kb.toml")).unwrap();
    let err = fails(&kb, &["init", "--generator", empty.to_str().unwrap()]);
    assert!(err.contains("cascade.json"), "{err}");
    assert_eq!(std::fs::read_to_string(kb.join("kb.toml")).unwrap(), before);
}

#[test]
fn init_records_the_generator_model_that_generate_then_uses() {
    let dir = tempfile::tempdir().unwrap();
    let kb = kb_with_squares(dir.path());
    let model = dir.path().join("my-model");
    write(
        &model,
        "cascade.json",
        br#"{"format": "reimagen-cascade", "version": 1, "stages": [{"name": "base", "path": "base", "resolution": 64}]}"#,
    );
    assert!(ok(&kb, &["init", "--generator", model.to_str().unwrap()]).contains("Opened existing"));
    let config: toml::Table = std::fs::read_to_string(kb.join("kb.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let recorded = Path::new(config["generator_model"].as_str().unwrap());
    assert_eq!(recorded, model.canonicalize().unwrap());

    // Without --model, generate loads that folder: it gets past the model lookup to loading
    // it (this folder has a cascade.json but no stages, so loading fails, naming the folder).
    let err = fails(&kb, &["generate", "red square", "--steps", "1"]);
    assert!(!err.contains("names no generator model"), "{err}");
    assert!(err.contains("my-model"), "{err}");
}

/// The whole path on the random-weight fixture cascade (8×8 base, 8 → 16 SR): retrieval, both
/// stages, the PNGs and the provenance file; the same seed on the same device gives the same
/// bytes, on the CPU backend and on the wgpu adapter (lavapipe in CI).
#[test]
fn generate_runs_the_fixture_cascade_and_writes_images_and_provenance() {
    let dir = tempfile::tempdir().unwrap();
    let kb = kb_with_squares(dir.path());
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reimagen");
    for device in ["cpu", "gpu"] {
        let run = |name: &str| {
            let out = dir.path().join(format!("{device}-{name}.png"));
            let cli = Cli {
                device: Some(device),
            };
            let args = [
                "generate",
                "a red square",
                "-k",
                "2",
                "--steps",
                "3",
                "--seed",
                "7",
                "--all-stages",
                "--json",
                "--model",
                model.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ];
            let provenance = cli.json(&kb, &args);
            (out, provenance)
        };
        let (first, provenance) = run("a");
        let image = image::open(&first).unwrap();
        assert_eq!(
            (image.width(), image.height()),
            (16, 16),
            "the SR stage's size"
        );
        let neighbours = provenance["neighbours"].as_array().unwrap();
        assert_eq!(neighbours.len(), 2, "{provenance}");
        assert!(
            neighbours
                .iter()
                .all(|n| n["caption"].as_str().unwrap().contains("red")),
            "BM25 retrieves the red squares: {provenance}"
        );
        assert!(first.with_extension("json").exists(), "provenance file");
        let stage_files = provenance["files"].as_array().unwrap();
        assert!(
            stage_files.len() >= 2,
            "--all-stages writes each stage: {provenance}"
        );
        let (second, _) = run("b");
        assert_eq!(
            std::fs::read(&first).unwrap(),
            std::fs::read(&second).unwrap(),
            "same seed, same device, same bytes ({device})"
        );
    }
}
