//! The layer kit over a checkpoint: `Weights` views (prefixes, shaped loaders, f16 weights,
//! errors naming the full tensor name, the file and both shapes) and the layers of
//! `reimagen::tensor::nn`, each checked on both backends against plain f64 references over a
//! safetensors file written here.

mod tensor_support;

use std::path::{Path, PathBuf};

use reimagen::tensor::nn::{Conv2d, Embedding, GroupNorm, LayerNorm, Linear};
use reimagen::tensor::{DType, Device, Tensor, TensorError, Weights};
use safetensors::Dtype;
use tensor_support::*;

/// A checkpoint laid out like transformers writes one: a block with a linear, a conv, two
/// norms and an embedding, its values from `values(n, seed)`, the conv's weight stored f16.
struct Checkpoint {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

const PREFIX: &str = "model.blocks.1";

/// (name below `PREFIX`, shape, seed, stored f16)
const TENSORS: &[(&str, &[usize], u64, bool)] = &[
    ("proj.weight", &[67, 37], 1, false),
    ("proj.bias", &[67], 2, false),
    ("conv.weight", &[7, 5, 3, 3], 3, true),
    ("conv.bias", &[7], 4, false),
    ("group_norm.weight", &[12], 5, false),
    ("group_norm.bias", &[12], 6, false),
    ("layer_norm.weight", &[37], 7, false),
    ("layer_norm.bias", &[37], 8, false),
    ("tokens.weight", &[11, 6], 9, false),
];

fn checkpoint() -> Checkpoint {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = TENSORS
        .iter()
        .map(|&(name, shape, seed, f16)| {
            let v = values(shape.iter().product(), seed);
            let (dtype, bytes) = if f16 {
                (Dtype::F16, f16_bytes(&v))
            } else {
                (Dtype::F32, f32_bytes(&v))
            };
            (format!("{PREFIX}.{name}"), dtype, shape.to_vec(), bytes)
        })
        .collect();
    let borrowed: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, s.clone(), b.clone()))
        .collect();
    write_safetensors(&path, &borrowed);
    Checkpoint { _dir: dir, path }
}

/// The stored values of `name` (below `PREFIX`) in f64: f16 ones as rounded in the file.
fn stored(name: &str) -> Vec<f64> {
    let &(_, shape, seed, f16) = TENSORS.iter().find(|t| t.0 == name).unwrap();
    values(shape.iter().product(), seed)
        .into_iter()
        .map(|v| {
            if f16 {
                half::f16::from_f32(v).to_f64()
            } else {
                v as f64
            }
        })
        .collect()
}

fn rounded_to_f16(v: &[f64]) -> Vec<f64> {
    v.iter().map(|&x| half::f16::from_f64(x).to_f64()).collect()
}

fn open(path: &Path, dev: &Device) -> Weights {
    Weights::open(path, dev).unwrap().pp("model.blocks").pp(1)
}

#[test]
fn views_scope_names_and_carry_the_device() {
    let ckpt = checkpoint();
    let root = Weights::open(&ckpt.path, &Device::Cpu).unwrap();
    assert_eq!(root.prefix(), "");
    let vb = root.pp("model").pp("blocks").pp(1);
    assert_eq!(vb.prefix(), PREFIX);
    assert_eq!(vb.pp("proj").prefix(), format!("{PREFIX}.proj"));
    assert!(vb.contains("proj.weight"));
    assert!(vb.pp("proj").contains("bias"));
    assert!(!vb.contains("model.blocks.1.proj.weight"));
    assert!(root.contains("model.blocks.1.proj.weight"));
    assert_eq!(vb.pp("proj").names(), ["bias", "weight"]);
    assert_eq!(vb.device(), &Device::Cpu);
    assert!(!vb.f16() && vb.with_f16(true).f16());
    let gpu_view = vb.with_device(&gpu());
    assert!(matches!(gpu_view.device(), Device::Wgpu(_)));
    assert_eq!(gpu_view.prefix(), PREFIX);
    // Views share the checkpoint and cross threads.
    fn send_sync<T: Send + Sync + Clone>() {}
    send_sync::<Weights>();
    let t = std::thread::spawn(move || vb.pp("proj").get("bias", &[67]).unwrap().numel());
    assert_eq!(t.join().unwrap(), 67);
}

#[test]
fn missing_and_misshaped_tensors_name_the_full_name_the_file_and_both_shapes() {
    let ckpt = checkpoint();
    let vb = open(&ckpt.path, &Device::Cpu);
    match vb.pp("proj").get("weight", &[37, 67]) {
        Err(e @ TensorError::WeightShape { .. }) => {
            let msg = e.to_string();
            for part in [
                "model.blocks.1.proj.weight",
                "model.safetensors",
                "[67, 37]",
                "[37, 67]",
            ] {
                assert!(msg.contains(part), "{part} not in {msg}");
            }
        }
        other => panic!("expected WeightShape, got {other:?}"),
    }
    let e = Linear::new(vb.pp("proj"), 37, 67, true).map(|_| ()).err();
    assert!(e.is_none(), "{e:?}");
    let e = Linear::new(vb.pp("proj"), 36, 67, true)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.blocks.1.proj.weight") && e.contains("[67, 36]"),
        "{e}"
    );
    match vb.pp("attn").get_f16("weight", &[2]) {
        Err(e @ TensorError::MissingTensor { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("model.blocks.1.attn.weight") && msg.contains("model.safetensors"),
                "{msg}"
            );
        }
        other => panic!("expected MissingTensor, got {other:?}"),
    }
    // A layer pointed at the wrong tensors names what it found.
    let e = Conv2d::new(vb.pp("group_norm"), 5, 12, 1, 1, 0, true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("model.blocks.1.group_norm.weight"), "{e}");
}

on_both_backends!(shaped_loaders_f32_and_f16, |dev| {
    let ckpt = checkpoint();
    let vb = open(&ckpt.path, dev);
    // f32 in the file, f32 out.
    let w = vb.get("proj.weight", &[67, 37]).unwrap();
    assert_eq!(w.dtype(), DType::F32);
    assert_eq!(got(&w), stored("proj.weight"));
    // f16 in the file: widened exactly by `get`, taken bit for bit by `get_f16`.
    let c = vb.get("conv.weight", &[7, 5, 3, 3]).unwrap();
    assert_eq!(got(&c), stored("conv.weight"));
    let c16 = vb.get_f16("conv.weight", &[7, 5, 3, 3]).unwrap();
    assert_eq!(got(&c16), stored("conv.weight"));
    // f32 in the file, rounded to the nearest f16 by `get_f16`.
    let w16 = vb.get_f16("proj.weight", &[67, 37]).unwrap();
    assert_eq!(got(&w16), rounded_to_f16(&stored("proj.weight")));
    let on_gpu = matches!(dev, Device::Wgpu(_));
    assert_eq!(
        w16.dtype() == DType::F16,
        on_gpu,
        "f16 stays f16 only on a GPU"
    );
    // `with_f16` decides what `get_weight` (the layers' loader) gives.
    let plain = vb.get_weight("proj.weight", &[67, 37]).unwrap();
    assert_eq!(plain.dtype(), DType::F32);
    let half = vb
        .with_f16(true)
        .get_weight("proj.weight", &[67, 37])
        .unwrap();
    assert_eq!(half.dtype() == DType::F16, on_gpu);
    let want = if on_gpu {
        rounded_to_f16(&stored("proj.weight"))
    } else {
        stored("proj.weight")
    };
    assert_eq!(got(&half), want, "the CPU keeps weights as stored");
});

/// Runs the layers of the checkpoint with a view that keeps weights f16 (on a GPU) or not, and
/// checks them against f64 references over the weights the device holds (rounded to f16
/// where it keeps them f16).
fn layers_match_references(dev: &Device, f16: bool) {
    let ckpt = checkpoint();
    let vb = open(&ckpt.path, dev).with_f16(f16);
    let halved = f16 && matches!(dev, Device::Wgpu(_));
    let weight = |name: &str| {
        if halved {
            rounded_to_f16(&stored(name))
        } else {
            stored(name)
        }
    };
    let what = |layer: &str| format!("{layer} (f16 weights: {halved})");

    let proj = Linear::new(vb.pp("proj"), 37, 67, true).unwrap();
    assert_eq!(proj.weight().dtype() == DType::F16, halved);
    let (x, xv) = tensor(&[2, 3, 37], 20, dev);
    let y = proj.forward(&x).unwrap();
    assert_eq!(y.shape(), &[2, 3, 67]);
    let want = linear_ref(
        &xv,
        &weight("proj.weight"),
        Some(&stored("proj.bias")),
        6,
        37,
        67,
    );
    assert_normwise(&what("linear"), &got(&y), &want, GEMM_TOL);
    let no_bias = Linear::new(vb.pp("proj"), 37, 67, false).unwrap();
    assert!(no_bias.bias().is_none());
    let want = linear_ref(&xv, &weight("proj.weight"), None, 6, 37, 67);
    assert_normwise(
        &what("linear, no bias"),
        &got(&no_bias.forward(&x).unwrap()),
        &want,
        GEMM_TOL,
    );

    let conv = Conv2d::new(vb.pp("conv"), 5, 7, 3, 2, 1, true).unwrap();
    let (x, xv) = tensor(&[2, 5, 9, 8], 21, dev);
    let y = conv.forward(&x).unwrap();
    let (want, shape) = conv2d_ref(
        &xv,
        &weight("conv.weight"),
        Some(&stored("conv.bias")),
        [2, 5, 9, 8],
        [7, 3, 3],
        2,
        1,
    );
    assert_eq!(y.shape(), &shape);
    assert_normwise(&what("conv2d"), &got(&y), &want, GEMM_TOL);

    let norm = GroupNorm::new(vb.pp("group_norm"), 4, 12, 1e-5).unwrap();
    let (x, xv) = tensor(&[2, 12, 3, 5], 22, dev);
    for silu in [false, true] {
        let y = if silu {
            norm.forward_silu(&x)
        } else {
            norm.forward(&x)
        }
        .unwrap();
        let want = group_norm_ref(
            &xv,
            &stored("group_norm.weight"),
            &stored("group_norm.bias"),
            2,
            12,
            15,
            4,
            1e-5,
            silu,
        );
        assert_elementwise(&what("group_norm"), &got(&y), &want, ATOL * 10.0, RTOL);
    }

    let norm = LayerNorm::new(vb.pp("layer_norm"), 37, 1e-5).unwrap();
    let (x, xv) = tensor(&[3, 37], 23, dev);
    let want = layer_norm_ref(
        &xv,
        &stored("layer_norm.weight"),
        &stored("layer_norm.bias"),
        37,
        1e-5,
    );
    assert_elementwise(
        &what("layer_norm"),
        &got(&norm.forward(&x).unwrap()),
        &want,
        ATOL * 10.0,
        RTOL,
    );

    let tokens = Embedding::new(vb.pp("tokens"), 11, 6).unwrap();
    let table = weight("tokens.weight");
    let ids = [10u32, 0, 3, 3];
    let want: Vec<f64> = ids
        .iter()
        .flat_map(|&i| table[i as usize * 6..][..6].to_vec())
        .collect();
    let rows = tokens.forward(&ids).unwrap();
    assert_eq!(rows.shape(), &[4, 6]);
    assert_eq!(got(&rows), want, "{}", what("embedding"));
    assert!(
        tokens.forward(&[11]).is_err(),
        "an id past the table is refused"
    );
}

on_both_backends!(layers_match_f64_references, |dev| {
    layers_match_references(dev, false);
    layers_match_references(dev, true);
});

#[test]
fn a_sharded_checkpoint_is_one_view() {
    let dir = tempfile::tempdir().unwrap();
    write_safetensors(
        &dir.path().join("model-00001-of-00002.safetensors"),
        &[(
            "enc.proj.weight",
            Dtype::F32,
            vec![2, 2],
            f32_bytes(&[1.0, 2.0, 3.0, 4.0]),
        )],
    );
    write_safetensors(
        &dir.path().join("model-00002-of-00002.safetensors"),
        &[(
            "enc.proj.bias",
            Dtype::BF16,
            vec![2],
            vec![0x80, 0x3f, 0x00, 0xc0],
        )],
    );
    let index = serde_json::json!({
        "metadata": {"total_size": 20},
        "weight_map": {
            "enc.proj.weight": "model-00001-of-00002.safetensors",
            "enc.proj.bias": "model-00002-of-00002.safetensors",
        }
    });
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    let vb = Weights::open(dir.path(), &Device::Cpu).unwrap().pp("enc");
    let proj = Linear::new(vb.pp("proj"), 2, 2, true).unwrap();
    let x = Tensor::from_vec(vec![1.0, 1.0], &[1, 2], &Device::Cpu).unwrap();
    // bf16 0x3f80 = 1.0, 0xc000 = -2.0.
    assert_eq!(proj.forward(&x).unwrap().to_vec().unwrap(), [4.0, 5.0]);
}
