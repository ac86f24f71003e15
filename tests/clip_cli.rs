//! The KB's CLIP embedder end to end through the `reimagen` binary: `init --embedder`, `import`
//! and `add` embedding, `search --mode clip|hybrid`, `similar`, `embed`, and a model change
//! that refuses CLIP search (BM25 still answers) until `reembed`. The model is the small
//! `gelu-eos` fixture of `training/clip_fixtures.py`, on the CPU backend.

mod clip_support;
mod common;

use std::path::Path;

use clip_support::*;
use common::Cli;
use reimagen::embed::clip::{ClipModel, WeightPrecision};
use reimagen::tensor::Device;

/// The CLIP tests pin the CPU backend.
const CPU: Cli = Cli::CPU;

/// A copy of the fixture model (so a test can change it) and a folder of captioned images.
fn setup(root: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let model = root.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in [
        "config.json",
        "tokenizer.json",
        "preprocessor_config.json",
        "model.safetensors",
    ] {
        std::fs::copy(folder("gelu-eos").join(f), model.join(f)).unwrap();
    }
    let photos = root.join("photos").join("things");
    std::fs::create_dir_all(&photos).unwrap();
    for (i, caption) in [
        "a photo of a cat",
        "a dog on the beach",
        "an oil painting of apples",
    ]
    .iter()
    .enumerate()
    {
        std::fs::copy(
            folder("gelu-eos").join(format!("images/{i}.png")),
            photos.join(format!("{i}.png")),
        )
        .unwrap();
        std::fs::write(photos.join(format!("{i}.txt")), caption).unwrap();
    }
    (model, root.join("photos"))
}

#[test]
fn a_kb_with_an_embedder_answers_clip_hybrid_and_similar_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (model, photos) = setup(dir.path());
    let kb = dir.path().join("kb");
    CPU.ok(&kb, &["init", "--embedder", model.to_str().unwrap()]);
    let toml = std::fs::read_to_string(kb.join("kb.toml")).unwrap();
    assert!(toml.contains("embedder_model"), "{toml}");

    let report = CPU.json(&kb, &["import", photos.to_str().unwrap(), "--json"]);
    assert_eq!(report["added"], 3, "{report}");

    // The text query's nearest caption embedding is its own caption's.
    let hits = CPU.json(
        &kb,
        &[
            "search",
            "--mode",
            "clip",
            "-k",
            "3",
            "--json",
            "a dog on the beach",
        ],
    );
    let hits = hits.as_array().unwrap();
    assert_eq!(hits.len(), 3);
    let hybrid = CPU.json(&kb, &["search", "--mode", "hybrid", "--json", "apples"]);
    assert!(!hybrid.as_array().unwrap().is_empty());

    // An image finds itself first.
    let image = photos.join("things/1.png");
    let similar = CPU.json(
        &kb,
        &["similar", image.to_str().unwrap(), "-k", "1", "--json"],
    );
    assert_eq!(similar[0]["caption"], "a dog on the beach", "{similar}");

    // `embed` gives what the library gives, unit length, naming model and device.
    let out = CPU.json(&kb, &["embed", "--text", "a photo of a cat", "--json"]);
    let got: Vec<f32> = serde_json::from_value(out["embedding"].clone()).unwrap();
    let want = ClipModel::load(&model, Device::Cpu, WeightPrecision::F32)
        .unwrap()
        .embed_texts(&["a photo of a cat"])
        .unwrap()
        .remove(0);
    assert!(cosine(&got, &want) > 0.99999);
    assert!(
        out["model"].as_str().unwrap().starts_with("clip:model:"),
        "{out}"
    );
    assert_eq!(out["device"], "cpu");
    let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4);
    let by_image = CPU.json(
        &kb,
        &[
            "embed",
            "--image",
            image.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(by_image["embedding"].as_array().unwrap().len(), 16);
}

#[test]
fn a_changed_model_keeps_bm25_refuses_clip_until_reembed() {
    let dir = tempfile::tempdir().unwrap();
    let (model, photos) = setup(dir.path());
    let kb = dir.path().join("kb");
    CPU.ok(&kb, &["init", "--embedder", model.to_str().unwrap()]);
    CPU.ok(&kb, &["import", photos.to_str().unwrap()]);
    // Another model of the same width: bilinear instead of bicubic resizing.
    let processor = model.join("preprocessor_config.json");
    let changed = std::fs::read_to_string(&processor)
        .unwrap()
        .replace("\"resample\": 3", "\"resample\": 2");
    std::fs::write(&processor, changed).unwrap();

    let refused = CPU.run(&kb, &["search", "--mode", "clip", "cat"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("reembed"), "{stderr}");
    let bm25 = CPU.json(&kb, &["search", "--json", "cat"]);
    assert_eq!(bm25.as_array().unwrap().len(), 1, "{bm25}");

    let report = CPU.json(&kb, &["reembed", "--json"]);
    assert_eq!(report["embedded"], 3, "{report}");
    let hits = CPU.json(&kb, &["search", "--mode", "clip", "--json", "cat"]);
    assert_eq!(hits.as_array().unwrap().len(), 3);
    let check = CPU.run(&kb, &["check"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

#[test]
fn init_with_a_folder_that_is_no_model_fails_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = CPU.run(
        &dir.path().join("kb"),
        &["init", "--embedder", empty.to_str().unwrap()],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("config.json"), "{stderr}");
}

/// `init` with no flags records the checkout's shipped models (`models/clip`, and
/// `models/reimagen` once it is shipped), so CLIP search works on a fresh KB; `--no-models`
/// records none.
#[test]
fn init_with_no_flags_uses_the_shipped_models() {
    let dir = tempfile::tempdir().unwrap();
    let (_, photos) = setup(dir.path());
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let kb = dir.path().join("kb");
    let said = CPU.ok(&kb, &["init"]);
    let config = reimagen::KbConfig::read(&kb).unwrap().unwrap();
    let clip = repo.join("models/clip").canonicalize().unwrap();
    assert_eq!(
        config.embedder_model.as_deref(),
        Some(clip.as_path()),
        "{said}"
    );
    let generator = repo.join("models/reimagen");
    if generator.join("cascade.json").is_file() {
        let generator = generator.canonicalize().unwrap();
        assert_eq!(config.generator_model.as_deref(), Some(generator.as_path()));
    } else {
        assert_eq!(config.generator_model, None);
        assert!(said.contains("generator: none"), "{said}");
    }

    let report = CPU.json(&kb, &["import", photos.to_str().unwrap(), "--json"]);
    assert_eq!(report["added"], 3, "{report}");
    let hits = CPU.json(
        &kb,
        &["search", "--mode", "clip", "-k", "3", "--json", "a cat"],
    );
    assert_eq!(hits.as_array().unwrap().len(), 3, "{hits}");
    let image = photos.join("things/0.png");
    let similar = CPU.json(
        &kb,
        &["similar", image.to_str().unwrap(), "-k", "1", "--json"],
    );
    assert_eq!(similar[0]["caption"], "a photo of a cat", "{similar}");

    let bare = dir.path().join("bare");
    CPU.ok(&bare, &["init", "--no-models"]);
    let config = reimagen::KbConfig::read(&bare).unwrap().unwrap();
    assert_eq!(
        (config.embedder_model, config.generator_model),
        (None, None)
    );
}
