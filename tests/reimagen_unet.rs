//! The Re-Imagen UNet against the PyTorch reference (`tests/fixtures/reimagen/`, written by
//! training/reimagen_fixtures.py), on both backends: the text condition of the fixtures' CLIP,
//! the neighbour pass's feature maps, and one UNet call per branch (`pn`, `p`, `n`, `0`, and
//! `pn` with the second neighbour's weight 0, which must equal K = 1) for the base and the SR
//! stage. Also the loader's errors for bad stage folders.
//!
//! Tolerances (docs/generator.md §8): UNet outputs and features within
//! 1e-4 × max(1, max |ref|) element-wise; text states within 1e-4 × max(1, max |ref|) (the
//! CLIP tests' normwise bound).
//!
//! Not here: sampling and the cascade (tests/cascade.rs).

#[macro_use]
mod reimagen_cases;
mod tensor_support;

use std::path::{Path, PathBuf};

use reimagen::generate::GenerateError;
use reimagen::generate::reimagen::{
    NeighbourFeatures, TextCondition, TextEncoder, UNet, UNetConfig, UNetInput,
};
use reimagen::tensor::Device;
use reimagen_cases::{Cases, cases, fixtures};
use serde_json::Value;

impl Cases {
    fn text(&self, states: &str, valid: &str, dev: &Device) -> TextCondition {
        TextCondition {
            states: self.tensor(states, dev),
            valid: self.values(valid).to_vec(),
        }
    }

    fn features(&self, dev: &Device) -> NeighbourFeatures {
        let keys: Vec<String> =
            serde_json::from_value(self.meta["neighbour_feature_keys"].clone()).unwrap();
        NeighbourFeatures {
            maps: keys
                .into_iter()
                .map(|k| {
                    let t = self.tensor(&format!("neighbour_features.{k}"), dev);
                    (k, t)
                })
                .collect(),
        }
    }
}

fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let tol = 1e-4 * scale;
    let (i, err) = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .enumerate()
        .fold((0, 0.0f32), |a, (i, e)| if e > a.1 { (i, e) } else { a });
    assert!(
        err <= tol,
        "{what}: max |Δ| = {err} at {i} (got {}, want {}), tolerance {tol}",
        got[i],
        want[i]
    );
}

on_both_backends!(text_condition_matches_the_reference, |dev| {
    let c = cases("base");
    let cfg = UNetConfig::from_file(&fixtures().join("base/config.json")).unwrap();
    let enc = TextEncoder::open(&fixtures().join("clip"), cfg.text_max_length, dev).unwrap();
    let captions = &c.meta["captions"];
    let prompt = captions["prompt"].as_str().unwrap();
    let got = enc.encode(&[prompt]).unwrap();
    assert_eq!(got.valid, c.values("prompt_valid"));
    assert_close(
        "prompt_states",
        &got.states.to_vec().unwrap(),
        c.values("prompt_states"),
    );
    let nbr: Vec<&str> = captions["neighbours"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let got = enc.encode(&nbr).unwrap();
    assert_eq!(got.valid, c.values("neighbour_text_valid"));
    assert_close(
        "neighbour_text_states",
        &got.states.to_vec().unwrap(),
        c.values("neighbour_text_states"),
    );
});

on_both_backends!(neighbour_pass_matches_the_reference, |dev| {
    for stage in ["base", "sr"] {
        let c = cases(stage);
        let unet = UNet::open(&fixtures().join(stage), dev).unwrap();
        let text = c.text("neighbour_text_states", "neighbour_text_valid", dev);
        let got = unet
            .encode_neighbours(&c.tensor("neighbour_images", dev), &text)
            .unwrap();
        let keys: Vec<&str> = got.maps.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            c.meta["neighbour_feature_keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect::<Vec<_>>()
        );
        assert_eq!(unet.config().neighbour_keys(), keys);
        for (key, map) in &got.maps {
            assert_close(
                &format!("{stage} features {key}"),
                &map.to_vec().unwrap(),
                c.values(&format!("neighbour_features.{key}")),
            );
        }
    }
});

/// One stored UNet call: B = 2 rows under `branch`, with `weights` for the two neighbours.
fn call(c: &Cases, unet: &UNet, dev: &Device, branch: &str, weights: [f32; 2]) -> Vec<f32> {
    let prompt = c.text("prompt_states", "prompt_valid", dev);
    let two = prompt.repeat_row(0, 2).unwrap();
    let text = match branch {
        "pn" | "p" => two,
        _ => two.dropped(),
    };
    let weights: Vec<f32> = match branch {
        "pn" | "n" => weights.repeat(2),
        _ => vec![0.0; 4],
    };
    let context = unet.neighbour_context(&c.features(dev)).unwrap();
    let t = c.values("call.t").to_vec();
    let low_res = c
        .tensors
        .contains_key("call.low_res")
        .then(|| c.tensor("call.low_res", dev));
    let aug_level = c.meta["call"]["low_res_aug"].as_f64().unwrap_or(0.0) as f32;
    let aug = vec![aug_level; 2];
    let out = unet
        .forward(&UNetInput {
            x_t: &c.tensor("call.x_t", dev),
            t: &t,
            text: &text,
            neighbours: &context,
            weights: &weights,
            low_res: low_res.as_ref(),
            aug: low_res.as_ref().map(|_| aug.as_slice()),
        })
        .unwrap();
    assert_eq!(out.shape(), c.tensors["call.x_t"].0.as_slice());
    out.to_vec().unwrap()
}

on_both_backends!(unet_calls_match_the_reference_per_branch, |dev| {
    for stage in ["base", "sr"] {
        let c = cases(stage);
        let unet = UNet::open(&fixtures().join(stage), dev).unwrap();
        let w = c.values("call.neighbour_weights");
        let w = [w[0], w[1]];
        for branch in ["pn", "p", "n", "0"] {
            assert_close(
                &format!("{stage} call.out.{branch}"),
                &call(&c, &unet, dev, branch, w),
                c.values(&format!("call.out.{branch}")),
            );
        }
        let masked = call(&c, &unet, dev, "pn", [1.0, 0.0]);
        assert_close(
            &format!("{stage} call.out.pn_second_masked"),
            &masked,
            c.values("call.out.pn_second_masked"),
        );
        // A weight of 0 removes that neighbour exactly: the same as K = 1.
        let first = c.features(dev).row(0).unwrap();
        let context = unet.neighbour_context(&first).unwrap();
        assert_eq!(context.count(), 1);
        let prompt = c
            .text("prompt_states", "prompt_valid", dev)
            .repeat_row(0, 2)
            .unwrap();
        let low_res = c
            .tensors
            .contains_key("call.low_res")
            .then(|| c.tensor("call.low_res", dev));
        let aug = vec![c.meta["call"]["low_res_aug"].as_f64().unwrap_or(0.0) as f32; 2];
        let one = unet
            .forward(&UNetInput {
                x_t: &c.tensor("call.x_t", dev),
                t: c.values("call.t"),
                text: &prompt,
                neighbours: &context,
                weights: &[1.0, 1.0],
                low_res: low_res.as_ref(),
                aug: low_res.as_ref().map(|_| aug.as_slice()),
            })
            .unwrap();
        assert_close(
            &format!("{stage} K = 1 against the masked second"),
            &one.to_vec().unwrap(),
            c.values("call.out.pn_second_masked"),
        );
        // The branches really differ (so the comparisons above can fail).
        let (pn, p) = (c.values("call.out.pn"), c.values("call.out.p"));
        assert!(pn.iter().zip(p).any(|(a, b)| (a - b).abs() > 1e-3));
    }
});

on_both_backends!(calls_that_do_not_fit_are_refused, |dev| {
    let c = cases("base");
    let unet = UNet::open(&fixtures().join("base"), dev).unwrap();
    let context = unet.neighbour_context(&c.features(dev)).unwrap();
    let text = c
        .text("prompt_states", "prompt_valid", dev)
        .repeat_row(0, 2)
        .unwrap();
    let x = c.tensor("call.x_t", dev);
    let input = UNetInput {
        x_t: &x,
        t: c.values("call.t"),
        text: &text,
        neighbours: &context,
        weights: &[1.0, 1.0, 1.0], // 3 weights for 2 rows × 2 neighbours
        low_res: None,
        aug: None,
    };
    assert!(matches!(
        unet.forward(&input),
        Err(GenerateError::Tensor(_))
    ));
    // An SR stage without its low-res input.
    let sr = UNet::open(&fixtures().join("sr"), dev).unwrap();
    let c = cases("sr");
    let context = sr.neighbour_context(&c.features(dev)).unwrap();
    let x = c.tensor("call.x_t", dev);
    let input = UNetInput {
        x_t: &x,
        t: c.values("call.t"),
        text: &text,
        neighbours: &context,
        weights: &[1.0; 4],
        low_res: None,
        aug: None,
    };
    let err = sr.forward(&input).unwrap_err().to_string();
    assert!(err.contains("low_res"), "{err}");
});

/// A copy of the fixture stage `stage` in a temporary folder, with its config edited by `edit`.
fn edited_stage(stage: &str, edit: impl FnOnce(&mut Value)) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join(stage);
    std::fs::create_dir(&folder).unwrap();
    for entry in std::fs::read_dir(fixtures().join(stage)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, folder.join(path.file_name().unwrap())).unwrap();
    }
    let config = folder.join("config.json");
    let mut value: Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    edit(&mut value);
    std::fs::write(&config, serde_json::to_vec_pretty(&value).unwrap()).unwrap();
    (dir, folder)
}

fn model_error(folder: &Path) -> (PathBuf, String) {
    match UNet::open(folder, &Device::Cpu) {
        Err(GenerateError::Model { path, reason }) => (path, reason),
        other => panic!("expected a model error, got {other:?}"),
    }
}

#[test]
fn bad_stage_folders_name_the_file_and_the_reason() {
    // A tensor the config implies but the checkpoint lacks.
    let (_d, folder) = edited_stage("base", |v| {
        v["attention_levels"] = serde_json::json!([0, 1])
    });
    let (path, reason) = model_error(&folder);
    assert_eq!(path, folder);
    assert!(reason.contains("down.0.attn.0"), "{reason}");
    // A tensor of another shape than the config implies.
    let (_d, folder) = edited_stage("base", |v| v["ff_mult"] = serde_json::json!(3));
    let (_, reason) = model_error(&folder);
    assert!(reason.contains("ff_in"), "{reason}");
    // Config keys: unknown, other version, impossible values.
    let (_d, folder) = edited_stage("base", |v| v["colour"] = serde_json::json!("blue"));
    let (path, reason) = model_error(&folder);
    assert!(
        path.ends_with("config.json") && reason.contains("colour"),
        "{reason}"
    );
    let (_d, folder) = edited_stage("base", |v| v["format_version"] = serde_json::json!(2));
    assert!(model_error(&folder).1.contains("format_version"));
    let (_d, folder) = edited_stage("base", |v| v["neighbour_levels"] = serde_json::json!([5]));
    assert!(model_error(&folder).1.contains("neighbour_levels"));
    let (_d, folder) = edited_stage("base", |v| v["prediction_type"] = serde_json::json!("x0"));
    assert!(model_error(&folder).1.contains("x0"));
    // No config at all.
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = model_error(dir.path());
    assert!(path.ends_with("config.json"));
    // A text encoder folder that does not exist.
    let err = TextEncoder::open(&dir.path().join("nope"), 12, &Device::Cpu).unwrap_err();
    assert!(matches!(err, GenerateError::Model { .. }), "{err}");
    // More tokens than the tower has positions (the fixture CLIP has 16).
    let err = TextEncoder::open(&fixtures().join("clip"), 17, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("17"), "{err}");
}
