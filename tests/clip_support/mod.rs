//! Shared by the CLIP tests: the fixture folders of `tests/fixtures/clip/`, written by
//! `training/clip_fixtures.py` (transformers 5.24.0, torch 2.15.0), and what each holds.

#![allow(dead_code)]

use std::path::PathBuf;

use reimagen::tensor::{Device, Weights};

/// The fixture models, one folder each.
pub const MODELS: &[&str] = &["quickgelu-argmax", "gelu-eos", "odd-sizes"];

/// `tests/fixtures/clip/<name>`.
pub fn folder(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/clip")
        .join(name)
}

/// `inputs.json`: what the script fed the model.
#[derive(serde::Deserialize)]
pub struct Inputs {
    pub texts: Vec<String>,
    pub images: Vec<String>,
    pub input_ids: Vec<Vec<u32>>,
    pub attention_mask: Vec<Vec<u32>>,
}

pub fn inputs(name: &str) -> Inputs {
    let text = std::fs::read_to_string(folder(name).join("inputs.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub fn images(name: &str) -> Vec<image::DynamicImage> {
    inputs(name)
        .images
        .iter()
        .map(|f| image::open(folder(name).join(f)).unwrap())
        .collect()
}

/// A tensor of `expected.safetensors`: (values, shape).
pub fn expected(name: &str, tensor: &str) -> (Vec<f32>, Vec<usize>) {
    let t = Weights::open(folder(name).join("expected.safetensors"), &Device::Cpu)
        .unwrap()
        .get_unshaped(tensor)
        .unwrap();
    (t.to_vec().unwrap(), t.shape().to_vec())
}

/// Cosine similarity of two vectors, in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

/// Largest absolute difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
