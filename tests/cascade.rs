//! The Re-Imagen cascade end to end, on both backends: the fixtures' 4-step trajectories
//! replayed through the real UNet (DDIM interleaved, DDIM standard with a negative prompt,
//! DPM-Solver++ weighted, DDPM joint, base and SR), `ReImagen::open` on the fixture model
//! folder and `generate` through every stage, determinism (same seed, settings and device:
//! bit-identical images; CPU against the GPU backend within a stated tolerance), the
//! neighbour-feature cache (a second generation encodes nothing; changed weights encode again)
//! and bad model folders.
//!
//! Tolerances: trajectory steps within 1e-3 (docs/generator.md §8); CPU against GPU images
//! within 2 levels of 255 per channel (docs/generator.md §9).
//!
//! Not here: single UNet calls (tests/reimagen_unet.rs), the samplers alone (tests/generate.rs).

#[macro_use]
mod reimagen_cases;
mod tensor_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::RgbImage;
use reimagen::generate::guidance::{Guidance, GuidanceMode};
use reimagen::generate::reimagen::{
    FeatureCache, NeighbourFeatures, ReImagen, TextCondition, UNet, UNetBranches,
};
use reimagen::generate::sampler::{
    Draws, SamplerKind, Schedule, ScheduleConfig, StageSampling, sample_stage,
};
use reimagen::generate::{
    CancelToken, GenerateError, GenerationRequest, Generator, Neighbour, NoObserver,
};
use reimagen::tensor::{Device, Tensor};
use reimagen_cases::{Cases, cases, fixtures};
use serde_json::Value;

impl Cases {
    fn text(&self, states: &str, valid: &str, dev: &Device) -> TextCondition {
        TextCondition {
            states: self.tensor(states, dev),
            valid: self.tensors[valid].1.clone(),
        }
    }
}

/// The stored interleaved choices and DDPM noise.
struct StoredDraws<'a> {
    cases: &'a Cases,
    run: String,
}

impl Draws for StoredDraws<'_> {
    fn uniform(&mut self, step: usize) -> f64 {
        match self.cases.meta["trajectories"][&self.run]["choices"][step].as_str() {
            Some("p") => 0.0,
            Some("n") => 1.0 - f64::EPSILON,
            other => panic!("{} step {step}: no stored choice ({other:?})", self.run),
        }
    }

    fn normal(
        &mut self,
        step: usize,
        _shape: &[usize],
        device: &Device,
    ) -> reimagen::generate::Result<Tensor> {
        Ok(self.cases.tensor(&format!("{}.z.{step}", self.run), device))
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

// Every trajectory of both stages, through the real UNet, ending within 1e-3 of the stored x.
on_both_backends!(trajectories_replay_through_the_real_unet, |dev| {
    for stage in ["base", "sr"] {
        let c = cases(stage);
        let unet = UNet::open(&fixtures().join(stage), dev).unwrap();
        let cfg: ScheduleConfig = serde_json::from_value(c.meta["config"].clone()).unwrap();
        let schedule = Schedule::new(cfg).unwrap();
        let keys: Vec<String> =
            serde_json::from_value(c.meta["neighbour_feature_keys"].clone()).unwrap();
        let features = NeighbourFeatures {
            maps: keys
                .iter()
                .map(|k| (k.clone(), c.tensor(&format!("neighbour_features.{k}"), dev)))
                .collect(),
        };
        let context = unet.neighbour_context(&features).unwrap();
        let prompt = c.text("prompt_states", "prompt_valid", dev);
        let negative = c.text("negative_states", "negative_valid", dev);
        let weights = c.tensors["call.neighbour_weights"].1.clone();
        let low_res = c
            .tensors
            .contains_key("call.low_res")
            .then(|| c.tensor("call.low_res", dev).narrow(0, 0, 1).unwrap());
        let aug = c.meta["call"]["low_res_aug"].as_f64().unwrap_or(0.0) as f32;
        for (run, meta) in c.meta["trajectories"].as_object().unwrap() {
            let g = &meta["guidance"];
            let mode: GuidanceMode = serde_json::from_value(g["mode"].clone()).unwrap();
            let f = |k: &str| g[k].as_f64().unwrap() as f32;
            let guidance = Guidance {
                mode,
                w: f("w"),
                w_p: f("w_p"),
                w_n: f("w_n"),
                eta: f("eta"),
            };
            let sampler = match meta["sampler"].as_str().unwrap() {
                "ddim" => SamplerKind::Ddim,
                "ddpm" => SamplerKind::Ddpm,
                _ => SamplerKind::Dpmpp,
            };
            let mut model = UNetBranches {
                unet: &unet,
                prompt: &prompt,
                negative: meta["negative_prompt"]
                    .as_bool()
                    .unwrap()
                    .then_some(&negative),
                neighbours: &context,
                weights: &weights,
                low_res: low_res.as_ref(),
                aug,
            };
            let steps = meta["steps"].as_u64().unwrap() as usize;
            let sampling = StageSampling {
                schedule: &schedule,
                sampler,
                guidance: &guidance,
                steps,
                stage: 0,
                stages: 1,
            };
            let mut draws = StoredDraws {
                cases: &c,
                run: run.clone(),
            };
            let x_t = c.tensor(&format!("{run}.x_T"), dev);
            let x = sample_stage(
                &sampling,
                &mut model,
                &mut draws,
                &x_t,
                &mut NoObserver,
                &CancelToken::new(),
            )
            .unwrap_or_else(|e| panic!("{stage}/{run}: {e}"));
            let want = &c.tensors[&format!("{run}.x.{}", steps - 1)].1;
            let err = max_abs_diff(&x.to_vec().unwrap(), want);
            assert!(err <= 1e-3, "{stage}/{run}: final x max |Δ| = {err}");
        }
    }
});

/// A small picture for a neighbour: a gradient with a coloured square.
fn picture(size: u32, seed: u8) -> RgbImage {
    RgbImage::from_fn(size, size, |x, y| {
        let inside = (size / 4..3 * size / 4).contains(&x) && (size / 4..size / 2).contains(&y);
        match inside {
            true => image::Rgb([seed, 255 - seed, 40]),
            false => image::Rgb([(x * 255 / size) as u8, (y * 255 / size) as u8, seed]),
        }
    })
}

fn request() -> GenerationRequest {
    let mut r = GenerationRequest::new("dog face in fluent flat style");
    r.neighbours = vec![
        Neighbour::new("a", picture(24, 10), "dog face, twemoji style"),
        {
            let mut n = Neighbour::new("b", picture(12, 200), "dog face, openmoji black style");
            n.weight = 0.5;
            n
        },
    ];
    r.negative_prompt = Some("blurry".into());
    r.guidance = Guidance::interleaved(2.0, 3.0, 0.5);
    r.steps = vec![3, 2];
    r.seed = 7;
    r.batch_size = 2;
    r
}

fn pixels(out: &reimagen::generate::GenerationOutput) -> Vec<Vec<u8>> {
    out.stages
        .iter()
        .flat_map(|s| s.images.iter().map(|i| i.as_raw().clone()))
        .collect()
}

on_both_backends!(the_cascade_runs_every_stage_deterministically, |dev| {
    let model = ReImagen::open(&fixtures(), dev).unwrap();
    let stages: Vec<(String, u32)> = model
        .stages()
        .into_iter()
        .map(|s| (s.name, s.resolution))
        .collect();
    assert_eq!(stages, [("base".to_string(), 8), ("sr".to_string(), 16)]);
    for sampler in [SamplerKind::Ddim, SamplerKind::Ddpm, SamplerKind::Dpmpp] {
        let mut r = request();
        r.sampler = sampler;
        let out = model
            .generate(&r, &mut NoObserver, &CancelToken::new())
            .unwrap();
        assert_eq!(out.stages.len(), 2);
        assert_eq!(out.stages[0].images.len(), 2);
        assert_eq!(out.images()[0].dimensions(), (16, 16));
        assert_eq!(out.provenance.neighbours.len(), 2);
        // Same seed, settings and device: bit-identical (warm cache, and a fresh cascade).
        let again = model
            .generate(&r, &mut NoObserver, &CancelToken::new())
            .unwrap();
        assert_eq!(pixels(&out), pixels(&again), "{sampler:?}: same instance");
        let fresh = ReImagen::open(&fixtures(), dev).unwrap();
        let third = fresh
            .generate(&r, &mut NoObserver, &CancelToken::new())
            .unwrap();
        assert_eq!(pixels(&out), pixels(&third), "{sampler:?}: fresh instance");
        // Another seed gives other images.
        r.seed = 8;
        let other = model
            .generate(&r, &mut NoObserver, &CancelToken::new())
            .unwrap();
        assert_ne!(pixels(&out), pixels(&other), "{sampler:?}: seed 8");
    }
    // Every guidance mode, and no neighbours at all.
    for guidance in [
        Guidance::joint(),
        Guidance::standard(2.5),
        Guidance::weighted(2.0, 1.5, 0.3),
    ] {
        let mut r = request();
        r.guidance = guidance;
        model
            .generate(&r, &mut NoObserver, &CancelToken::new())
            .unwrap();
        r.neighbours.clear();
        model
            .generate(&r, &mut NoObserver, &CancelToken::new())
            .unwrap();
    }
});

#[test]
fn cpu_and_gpu_agree_within_tolerance() {
    let gpu = tensor_support::gpu();
    let r = request();
    let on = |dev: &Device| {
        let model = ReImagen::open(&fixtures(), dev).unwrap();
        pixels(
            &model
                .generate(&r, &mut NoObserver, &CancelToken::new())
                .unwrap(),
        )
    };
    let (a, b) = (on(&Device::Cpu), on(&gpu));
    let worst = a
        .iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap();
    eprintln!("CPU against GPU: images differ by at most {worst} levels of 255");
    assert!(worst <= 2, "CPU and GPU images differ by {worst} levels");
}

on_both_backends!(neighbour_features_are_encoded_once_and_invalidated, |dev| {
    let cache = Arc::new(FeatureCache::default());
    let model = ReImagen::open_with_cache(&fixtures(), dev, cache.clone()).unwrap();
    let r = request();
    model
        .generate(&r, &mut NoObserver, &CancelToken::new())
        .unwrap();
    // Two neighbours × two stages, each once (not per step, not per branch).
    assert_eq!(cache.stats().encodes, 4);
    model
        .generate(&r, &mut NoObserver, &CancelToken::new())
        .unwrap();
    assert_eq!(
        cache.stats().encodes,
        4,
        "the second generation encodes nothing"
    );
    assert_eq!(cache.stats().hits, 4);
    // One neighbour changed: only it is encoded again (at both stages).
    let mut changed = r.clone();
    changed.neighbours[1].image = picture(12, 201);
    model
        .generate(&changed, &mut NoObserver, &CancelToken::new())
        .unwrap();
    assert_eq!(cache.stats().encodes, 6);
    // The same folder reopened shares the entries; a copy with one weight changed does not.
    let reopened = ReImagen::open_with_cache(&fixtures(), dev, cache.clone()).unwrap();
    reopened
        .generate(&r, &mut NoObserver, &CancelToken::new())
        .unwrap();
    assert_eq!(cache.stats().encodes, 6);
    let (_dir, copy) = copy_model();
    let shard = copy.join("sr/model-00004-of-00004.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&shard, bytes).unwrap();
    let edited = ReImagen::open_with_cache(&copy, dev, cache.clone()).unwrap();
    assert_eq!(
        edited.stage_list()[0].model_key(),
        model.stage_list()[0].model_key()
    );
    assert_ne!(
        edited.stage_list()[1].model_key(),
        model.stage_list()[1].model_key()
    );
    edited
        .generate(&r, &mut NoObserver, &CancelToken::new())
        .unwrap();
    assert_eq!(cache.stats().encodes, 8, "the changed stage encodes again");
});

/// A copy of the fixture model folder.
fn copy_model() -> (tempfile::TempDir, PathBuf) {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            let dest = to.join(path.file_name().unwrap());
            if path.is_dir() {
                copy(&path, &dest);
            } else {
                std::fs::copy(&path, dest).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("model");
    for part in ["cascade.json", "base", "sr", "clip"] {
        let from = fixtures().join(part);
        if from.is_dir() {
            copy(&from, &root.join(part));
        } else {
            std::fs::create_dir_all(&root).unwrap();
            std::fs::copy(&from, root.join(part)).unwrap();
        }
    }
    (dir, root)
}

fn open_error(folder: &Path) -> (PathBuf, String) {
    match ReImagen::open(folder, &Device::Cpu) {
        Err(GenerateError::Model { path, reason }) => (path, reason),
        other => panic!("expected a model error, got {other:?}"),
    }
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

#[test]
fn bad_model_folders_get_clear_errors() {
    // No cascade.json.
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = open_error(dir.path());
    assert!(path.ends_with("cascade.json"));

    // A stage whose resolution is not its config's sample_size.
    let (_d, root) = copy_model();
    edit_json(&root.join("cascade.json"), |v| {
        v["stages"][1]["resolution"] = serde_json::json!(32)
    });
    let (path, reason) = open_error(&root);
    assert!(
        path.ends_with("cascade.json") && reason.contains("resolution"),
        "{reason}"
    );

    // The SR stage alone: its low_res_size needs a stage below it.
    let (_d, root) = copy_model();
    edit_json(
        &root.join("cascade.json"),
        |v| v["stages"] = serde_json::json!([{"name": "sr", "path": "sr", "resolution": 16}]),
    );
    let (path, reason) = open_error(&root);
    assert!(
        path.ends_with("sr/config.json") && reason.contains("low_res_size"),
        "{reason}"
    );

    // The base stage alone is a valid cascade.
    let (_d, root) = copy_model();
    edit_json(
        &root.join("cascade.json"),
        |v| v["stages"] = serde_json::json!([{"name": "base", "path": "base", "resolution": 8}]),
    );
    let one = ReImagen::open(&root, &Device::Cpu).unwrap();
    let mut r = request();
    r.steps = vec![2];
    let out = one
        .generate(&r, &mut NoObserver, &CancelToken::new())
        .unwrap();
    assert_eq!(out.images()[0].dimensions(), (8, 8));

    // An unknown text encoder path.
    let (_d, root) = copy_model();
    edit_json(&root.join("base/config.json"), |v| {
        v["text_encoder"] = serde_json::json!("../no-such-clip")
    });
    let (path, reason) = open_error(&root);
    assert!(
        path.ends_with("base/config.json") && reason.contains("no-such-clip"),
        "{reason}"
    );

    // A missing tensor (a level the config now says has attention) and a mis-shaped one.
    let (_d, root) = copy_model();
    edit_json(&root.join("sr/config.json"), |v| {
        v["attention_levels"] = serde_json::json!([0, 1])
    });
    let (path, reason) = open_error(&root);
    assert!(
        path.ends_with("sr") && reason.contains("down.0.attn.0"),
        "{reason}"
    );
    let (_d, root) = copy_model();
    edit_json(&root.join("base/config.json"), |v| {
        v["time_embed_dim"] = serde_json::json!(16)
    });
    let (_, reason) = open_error(&root);
    assert!(reason.contains("time_embed"), "{reason}");

    // A text_dim the CLIP folder does not have.
    let (_d, root) = copy_model();
    edit_json(&root.join("base/config.json"), |v| {
        v["text_dim"] = serde_json::json!(48)
    });
    assert!(open_error(&root).1.contains("null_text") || open_error(&root).1.contains("text_dim"));
}

#[test]
fn the_cascade_can_be_shared_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<ReImagen>();
    let model: Box<dyn Generator + Send + Sync> =
        Box::new(ReImagen::open(&fixtures(), &Device::Cpu).unwrap());
    assert_eq!(model.stages().len(), 2);
}

#[test]
fn impossible_requests_are_refused() {
    let model = ReImagen::open(&fixtures(), &Device::Cpu).unwrap();
    let mut r = request();
    r.steps = vec![2, 2, 2];
    assert!(matches!(
        model.generate(&r, &mut NoObserver, &CancelToken::new()),
        Err(GenerateError::InvalidRequest { what: "steps", .. })
    ));
    r.steps = vec![];
    assert!(matches!(
        model.generate(&r, &mut NoObserver, &CancelToken::new()),
        Err(GenerateError::InvalidRequest { .. })
    ));
    let mut r = request();
    r.neighbours[0].weight = -1.0;
    assert!(matches!(
        model.generate(&r, &mut NoObserver, &CancelToken::new()),
        Err(GenerateError::InvalidRequest { .. })
    ));
    let cancel = CancelToken::new();
    cancel.cancel();
    assert!(matches!(
        model.generate(&request(), &mut NoObserver, &cancel),
        Err(GenerateError::Cancelled { stage: 0, step: 0 })
    ));
}
