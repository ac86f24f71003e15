//! Shared by the generator tests (generate, cascade, reimagen_unet): the random-weight fixture
//! cascade of tests/fixtures/reimagen and its stored PyTorch cases, loaded once per test as the
//! JSON metadata and the f32 tensors by name. Each test file adds its own `impl Cases` helpers.
//!
//! Not here: the fixtures' generation (training/reimagen_fixtures.py).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use reimagen::tensor::{Device, Tensor};
use serde_json::Value;

/// The fixture cascade folder.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reimagen")
}

/// One stage's cases: the JSON and the f32 tensors by name.
pub struct Cases {
    pub meta: Value,
    pub tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

/// The cases of `stage` (`base` or `sr`).
pub fn cases(stage: &str) -> Cases {
    let dir = fixtures();
    let meta: Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{stage}-cases.json"))).unwrap())
            .unwrap();
    let bytes = std::fs::read(dir.join(format!("{stage}-cases.safetensors"))).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            let data = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, (view.shape().to_vec(), data))
        })
        .collect();
    Cases { meta, tensors }
}

impl Cases {
    /// The stored tensor `name` on `dev`.
    pub fn tensor(&self, name: &str, dev: &Device) -> Tensor {
        let (shape, data) = self
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("fixture tensor {name} missing"));
        Tensor::from_vec(data.clone(), shape, dev).unwrap()
    }

    /// The stored values of `name`.
    pub fn values(&self, name: &str) -> &[f32] {
        &self.tensors[name].1
    }
}
