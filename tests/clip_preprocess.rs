//! CLIP's inputs against transformers: the tokenizer (ids and masks, truncation, padding) and
//! the image processor (pixels), on the fixtures of `training/clip_fixtures.py`.
//!
//! Pixels: the resize is Pillow's own algorithm, so the pixels are transformers' to the last bit:
//! the largest difference allowed is 1e-6 (float noise), the measured one is 0 (printed).

mod clip_support;

use clip_support::*;
use reimagen::embed::clip::{ClipConfig, ClipTokenizer, ImageProcessor, Padding};

#[test]
fn tokenizer_matches_transformers() {
    for name in MODELS {
        let config = ClipConfig::from_file(folder(name)).unwrap();
        let tok = ClipTokenizer::from_file(
            folder(name),
            config.text.max_position_embeddings,
            config.text.eos_token_id,
        )
        .unwrap();
        let inputs = inputs(name);
        let texts: Vec<&str> = inputs.texts.iter().map(String::as_str).collect();
        let batch = tok.encode_batch(&texts, Padding::Longest).unwrap();
        assert_eq!(batch.batch, texts.len());
        for (i, (ids, mask)) in inputs
            .input_ids
            .iter()
            .zip(&inputs.attention_mask)
            .enumerate()
        {
            assert_eq!(batch.row(i), ids.as_slice(), "{name}: ids of text {i}");
            assert_eq!(
                &batch.mask[i * batch.len..(i + 1) * batch.len],
                mask.as_slice(),
                "{name}: mask of text {i}"
            );
        }
        assert!(batch.len <= config.text.max_position_embeddings);
    }
}

#[test]
fn tokenizer_truncates_to_the_context_and_keeps_the_end_of_text_token() {
    let name = "gelu-eos";
    let eos = ClipConfig::from_file(folder(name))
        .unwrap()
        .text
        .eos_token_id;
    let tok = ClipTokenizer::from_file(folder(name), 5, eos).unwrap();
    let long = "a photo of a dog running on the beach at sunset";
    let batch = tok.encode_batch(&[long, "a"], Padding::Longest).unwrap();
    assert_eq!(batch.len, 5);
    assert_eq!(batch.row(0)[4], eos);
    assert_eq!(batch.mask[..5], [1, 1, 1, 1, 1]);
    // "a" → <|startoftext|> a <|endoftext|>, then two pads.
    assert_eq!(batch.mask[5..], [1, 1, 1, 0, 0]);
    let full = tok.encode_batch(&["a"], Padding::Context).unwrap();
    assert_eq!(full.len, 5);
    assert_eq!(full.row(0)[2..], [eos, tok.pad_id(), tok.pad_id()]);
}

#[test]
fn tokenizer_file_missing_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let err = ClipTokenizer::from_file(dir.path(), 77, 49407).unwrap_err();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
    assert!(err.is_user_error());
}

#[test]
fn pixels_match_transformers() {
    let mut worst = 0f32;
    for name in MODELS {
        let processor = ImageProcessor::from_file(folder(name)).unwrap();
        let (want, shape) = expected(name, "pixel_values");
        let per_image = shape[1] * shape[2] * shape[3];
        for (i, image) in images(name).iter().enumerate() {
            let (got, h, w) = processor.pixels(image).unwrap();
            assert_eq!([3, h, w], shape[1..], "{name}: image {i}");
            let diff = max_abs_diff(&got, &want[i * per_image..(i + 1) * per_image]);
            println!("{name} image {i}: max |Δ| {diff:.6}");
            worst = worst.max(diff);
        }
    }
    println!("max per-pixel difference over all fixtures: {worst:.6}");
    assert!(worst <= 1e-6, "max per-pixel difference {worst}");
}

#[test]
fn processor_config_refuses_bad_values_naming_the_key() {
    for (json, key) in [
        (r#"{"resample": 9}"#, "resample"),
        (r#"{"image_mean": [0.5, 0.5]}"#, "image_mean"),
        (r#"{"size": {"longest_edge": 3}}"#, "size"),
        (r#"{"crop_size": 0}"#, "crop_size"),
    ] {
        let err = ImageProcessor::from_json(json, "p.json".as_ref()).unwrap_err();
        assert!(err.to_string().contains(key), "{json}: {err}");
    }
}

#[test]
fn openai_style_processor_config_loads() {
    // openai/clip-vit-base-patch32's preprocessor_config.json (ints for size and crop_size).
    let json = r#"{"crop_size": 224, "do_center_crop": true, "do_normalize": true,
        "do_resize": true, "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224}"#;
    let p = ImageProcessor::from_json(json, "p.json".as_ref()).unwrap();
    assert_eq!(p, ImageProcessor::default());
    let wide = image::DynamicImage::new_rgb8(300, 100);
    let (px, h, w) = p.pixels(&wide).unwrap();
    assert_eq!((px.len(), h, w), (3 * 224 * 224, 224, 224));
}

#[test]
fn openai_style_model_config_loads() {
    // The shape of openai/clip-vit-base-patch32's config.json (written by transformers 4.x):
    // generation keys in the towers, the legacy eos_token_id 2, null *_config_dict keys.
    let json = r#"{
      "architectures": ["CLIPModel"], "initializer_factor": 1.0, "logit_scale_init_value": 2.6592,
      "model_type": "clip", "projection_dim": 512,
      "text_config": {"_name_or_path": "", "architectures": null, "attention_dropout": 0.0,
        "bad_words_ids": null, "bos_token_id": 0, "dropout": 0.0, "eos_token_id": 2,
        "hidden_act": "quick_gelu", "hidden_size": 512, "initializer_range": 0.02,
        "intermediate_size": 2048, "layer_norm_eps": 1e-05, "max_position_embeddings": 77,
        "model_type": "clip_text_model", "num_attention_heads": 8, "num_hidden_layers": 12,
        "pad_token_id": 1, "vocab_size": 49408},
      "text_config_dict": null,
      "vision_config": {"hidden_act": "quick_gelu", "hidden_size": 768, "image_size": 224,
        "intermediate_size": 3072, "layer_norm_eps": 1e-05, "model_type": "clip_vision_model",
        "num_attention_heads": 12, "num_hidden_layers": 12, "patch_size": 32},
      "vision_config_dict": null
    }"#;
    let c = ClipConfig::from_json(json, "config.json".as_ref()).unwrap();
    assert_eq!(c.text.eos_token_id, 2);
    assert_eq!(
        (c.text.hidden_size, c.vision.hidden_size, c.projection_dim),
        (512, 768, 512)
    );
    assert_eq!(c.vision.patches_per_side(), 7);
    let bad = json.replace(
        "\"hidden_act\": \"quick_gelu\", \"hidden_size\": 768",
        "\"hidden_act\": \"relu\", \"hidden_size\": 768",
    );
    let err = ClipConfig::from_json(&bad, "config.json".as_ref()).unwrap_err();
    assert!(
        err.to_string().contains("vision_config.hidden_act"),
        "{err}"
    );
}
