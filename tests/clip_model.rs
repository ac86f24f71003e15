//! CLIP against transformers 5.24.0 on both backends: the fixtures of
//! `training/clip_fixtures.py` (three random-weight `CLIPModel`s: quick_gelu with legacy argmax
//! pooling, gelu with the real end-of-text id and truncation, odd sizes), fed the script's own
//! token ids and pixels so only the model is compared here (tests/clip_preprocess.rs compares the
//! inputs).
//!
//! Tolerances: f32 weights, cosine ≥ 0.9999 per embedding and per hidden-state row; f16 weights
//! (kept f16 on the GPU; the CPU backend keeps weights as stored), cosine ≥ 0.999.

mod clip_support;
mod tensor_support;

use clip_support::*;
use reimagen::embed::clip::{ClipModel, TokenBatch, WeightPrecision};
use reimagen::tensor::{Device, Tensor};

fn tokens(name: &str) -> TokenBatch {
    let inputs = inputs(name);
    TokenBatch {
        batch: inputs.input_ids.len(),
        len: inputs.input_ids[0].len(),
        ids: inputs.input_ids.concat(),
        mask: inputs.attention_mask.concat(),
    }
}

fn pixels(name: &str, dev: &Device) -> Tensor {
    let (values, shape) = expected(name, "pixel_values");
    Tensor::from_vec(values, &shape, dev).unwrap()
}

/// Every row (of width `width`) of `got` against `want`: the worst cosine.
fn worst_cosine(got: &[f32], want: &[f32], width: usize) -> f64 {
    assert_eq!(got.len(), want.len());
    got.chunks(width)
        .zip(want.chunks(width))
        .map(|(g, w)| cosine(g, w))
        .fold(1.0, f64::min)
}

fn check_model(dev: &Device, precision: WeightPrecision, min_cosine: f64) {
    for name in MODELS {
        let model = ClipModel::load(folder(name), dev.clone(), precision).unwrap();
        let proj = model.config().projection_dim;
        let tokens = tokens(name);

        let (want, _) = expected(name, "text_embeds");
        let got = model.text_features(&tokens).unwrap().to_vec().unwrap();
        let c = worst_cosine(&got, &want, proj);
        println!("{name} {precision:?}: text embeds, worst cosine {c:.7}");
        assert!(c >= min_cosine, "{name}: text embeds cosine {c}");

        let (want, _) = expected(name, "image_embeds");
        let got = model
            .image_features(&pixels(name, dev))
            .unwrap()
            .to_vec()
            .unwrap();
        let c = worst_cosine(&got, &want, proj);
        println!("{name} {precision:?}: image embeds, worst cosine {c:.7}");
        assert!(c >= min_cosine, "{name}: image embeds cosine {c}");

        let (want, shape) = expected(name, "text_last_hidden_state");
        let out = model.text_forward(&tokens).unwrap();
        assert_eq!(out.last_hidden_state.shape(), shape.as_slice());
        let got = out.last_hidden_state.to_vec().unwrap();
        let c = worst_cosine(&got, &want, shape[2]);
        println!("{name} {precision:?}: last hidden state, worst row cosine {c:.7}");
        assert!(c >= min_cosine, "{name}: last hidden state cosine {c}");

        // Unit length, as transformers returns them.
        for row in got_rows(&model.text_features(&tokens).unwrap(), proj) {
            let norm: f32 = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "{name}: norm {norm}");
        }
    }
}

fn got_rows(t: &Tensor, width: usize) -> Vec<Vec<f32>> {
    t.to_vec()
        .unwrap()
        .chunks(width)
        .map(<[f32]>::to_vec)
        .collect()
}

on_both_backends!(embeddings_match_transformers_f32, |dev| {
    check_model(dev, WeightPrecision::F32, 0.9999);
});

on_both_backends!(embeddings_match_transformers_f16_weights, |dev| {
    check_model(dev, WeightPrecision::F16, 0.999);
});

on_both_backends!(end_to_end_from_files_matches_transformers, |dev| {
    // Tokenizer and processor of the folder, then the model: what the embedder runs.
    for name in MODELS {
        let model = ClipModel::load(folder(name), dev.clone(), WeightPrecision::F32).unwrap();
        let proj = model.config().projection_dim;
        let inputs = inputs(name);
        let texts: Vec<&str> = inputs.texts.iter().map(String::as_str).collect();
        let got = model.embed_texts(&texts).unwrap().concat();
        let c = worst_cosine(&got, &expected(name, "text_embeds").0, proj);
        assert!(c >= 0.9999, "{name}: texts from files, cosine {c}");
        let got = model.embed_images(&images(name)).unwrap().concat();
        let c = worst_cosine(&got, &expected(name, "image_embeds").0, proj);
        assert!(c >= 0.9999, "{name}: images from files, cosine {c}");
    }
});

#[test]
fn a_mis_shaped_tensor_is_an_error_naming_it_the_file_and_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let src = folder("odd-sizes");
    for f in [
        "config.json",
        "tokenizer.json",
        "preprocessor_config.json",
        "model.safetensors",
    ] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    // Claim a wider MLP than the checkpoint holds.
    let config = std::fs::read_to_string(src.join("config.json"))
        .unwrap()
        .replace("\"intermediate_size\": 40", "\"intermediate_size\": 41");
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    let err = ClipModel::load(dir.path(), Device::Cpu, WeightPrecision::F32).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("model.safetensors"), "{msg}");
    assert!(
        msg.contains("text_model.encoder.layers.0.mlp.fc1.weight"),
        "{msg}"
    );
    assert!(
        msg.contains("[40, 16]") && msg.contains("[41, 16]"),
        "{msg}"
    );
    assert!(err.is_user_error());
}

#[test]
fn a_missing_tensor_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let src = folder("odd-sizes");
    for f in [
        "config.json",
        "tokenizer.json",
        "preprocessor_config.json",
        "model.safetensors",
    ] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let config = std::fs::read_to_string(src.join("config.json"))
        .unwrap()
        .replace("\"num_hidden_layers\": 3", "\"num_hidden_layers\": 4");
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    let msg = ClipModel::load(dir.path(), Device::Cpu, WeightPrecision::F32)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("vision_model.encoder.layers.3.") && msg.contains("is not in"),
        "{msg}"
    );
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let model = ClipModel::load(folder("gelu-eos"), Device::Cpu, WeightPrecision::F32).unwrap();
    let bad_id = TokenBatch {
        ids: vec![0, 100_000],
        mask: vec![1, 1],
        batch: 1,
        len: 2,
    };
    assert!(model.text_features(&bad_id).is_err());
    let too_long = TokenBatch {
        ids: vec![1; 13],
        mask: vec![1; 13],
        batch: 1,
        len: 13,
    };
    assert!(model.text_features(&too_long).is_err());
    let wrong_size = Tensor::zeros(&[1, 3, 31, 30], &Device::Cpu).unwrap();
    assert!(model.image_features(&wrong_size).is_err());
    assert!(model.embed_texts(&[]).unwrap().is_empty());
    let empty = image::DynamicImage::new_rgb8(0, 0);
    assert!(model.embed_images(&[empty]).is_err());
}
