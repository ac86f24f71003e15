//! The tensor runtime around the ops: every WGSL file validated by naga (no GPU needed), the
//! pipeline cache and buffer pool in steady state, clear errors (never a wgpu panic) for tensors
//! past the adapter's limits, device choice, and safetensors loading (f32/f16, sharded index).

mod tensor_support;

use std::collections::HashMap;

use reimagen::tensor::{Device, DeviceChoice, SHADERS, Tensor, TensorError, Weights, WeightsDtype};
use tensor_support::*;

/// The workgroup memory every kernel stays within: WebGPU's default limit, so any adapter runs
/// them (lavapipe allows 32 KiB).
const WORKGROUP_MEMORY_BUDGET: u32 = 16 * 1024;

#[test]
fn naga_validates_every_shader_file() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("shaders/ exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wgsl"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let source = std::fs::read_to_string(path).unwrap();
        let module = naga::front::wgsl::parse_str(&source)
            .unwrap_or_else(|e| panic!("{}", e.emit_to_string_with_path(&source, &name)));
        // What wgpu grants every adapter that is not downlevel: unpack2x16float (f16 weights)
        // needs SHADER_FLOAT16_IN_FLOAT32; the runtime widens f16 weights where it is missing.
        let capabilities = naga::valid::Capabilities::default()
            | naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32;
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities)
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}", e.emit_to_string_with_path(&source, &name)));
        let workgroup_bytes: u32 = module
            .global_variables
            .iter()
            .filter(|(_, g)| g.space == naga::AddressSpace::WorkGroup)
            .map(|(_, g)| module.types[g.ty].inner.size(module.to_ctx()))
            .sum();
        assert!(
            workgroup_bytes <= WORKGROUP_MEMORY_BUDGET,
            "{name}: {workgroup_bytes} bytes of workgroup memory > {WORKGROUP_MEMORY_BUDGET}"
        );
        // The runtime embeds exactly these files.
        let embedded = SHADERS.iter().find(|s| s.name == name);
        assert_eq!(
            embedded.map(|s| s.source),
            Some(source.as_str()),
            "{name} is not in SHADERS"
        );
        // Every uniform struct has a Rust mirror with the same fields, in order, and size.
        let uniforms: Vec<String> = module
            .global_variables
            .iter()
            .filter(|(_, g)| g.space == naga::AddressSpace::Uniform)
            .filter_map(|(_, g)| module.types[g.ty].name.clone())
            .collect();
        let mirrors = embedded.unwrap().params;
        let mut mirrored: Vec<&str> = mirrors.iter().map(|m| m.wgsl_struct).collect();
        mirrored.sort_unstable();
        let mut declared: Vec<&str> = uniforms.iter().map(String::as_str).collect();
        declared.sort_unstable();
        assert_eq!(mirrored, declared, "{name}: uniforms without a Rust mirror");
        for mirror in mirrors {
            let (_, ty) = module
                .types
                .iter()
                .find(|(_, t)| t.name.as_deref() == Some(mirror.wgsl_struct))
                .unwrap_or_else(|| panic!("{name}: no struct {}", mirror.wgsl_struct));
            let naga::TypeInner::Struct { members, span } = &ty.inner else {
                panic!("{name}: {} is not a struct", mirror.wgsl_struct)
            };
            let fields: Vec<&str> = members.iter().filter_map(|m| m.name.as_deref()).collect();
            assert_eq!(
                fields, mirror.fields,
                "{name}: {} fields",
                mirror.wgsl_struct
            );
            assert_eq!(
                *span as usize, mirror.size,
                "{name}: {} is {span} bytes in WGSL, {} in Rust",
                mirror.wgsl_struct, mirror.size
            );
        }
    }
    assert_eq!(
        files.len(),
        SHADERS.len(),
        "SHADERS lists a file that is not in shaders/"
    );
}

fn unet_like_step(dev: &Device) -> Tensor {
    let (x, _) = tensor(&[2, 8, 10, 10], 1, dev);
    let (w, _) = tensor(&[8, 8, 3, 3], 2, dev);
    let (g, _) = tensor(&[8], 3, dev);
    let h = x
        .conv2d(&w, None, 1, 1)
        .unwrap()
        .group_norm_silu(2, &g, &g, 1e-5)
        .unwrap();
    let seq = h.reshape(&[2, 8, 100]).unwrap().transpose(1, 2).unwrap();
    let a = seq.attention(&seq, &seq, None, false, 0.3).unwrap();
    a.linear(
        &w.reshape(&[8, 72]).unwrap().narrow(1, 0, 8).unwrap(),
        Some(&g),
    )
    .unwrap()
}

#[test]
fn steady_state_allocates_no_buffers_and_compiles_no_pipelines() {
    // Its own device, so other tests' traffic does not move the counters.
    let dev = Device::gpu().unwrap_or_else(|e| panic!("the WGSL tests need a wgpu adapter: {e}"));
    let Device::Wgpu(handle) = &dev else {
        unreachable!()
    };
    for _ in 0..2 {
        unet_like_step(&dev).to_vec().unwrap();
    }
    let warm = handle.pool_stats();
    for _ in 0..5 {
        unet_like_step(&dev).to_vec().unwrap();
    }
    let after = handle.pool_stats();
    assert_eq!(
        after.buffers_created, warm.buffers_created,
        "{warm:?} → {after:?}"
    );
    assert_eq!(after.pipelines_compiled, warm.pipelines_compiled);
    assert!(after.reused > warm.reused);
    // Many dispatches share one submit.
    assert!(
        after.dispatches - warm.dispatches >= 5 * (after.submits - warm.submits),
        "{after:?}"
    );
}

#[test]
fn a_tensor_past_the_adapters_limit_is_a_clear_error() {
    let dev = gpu();
    let Device::Wgpu(handle) = &dev else {
        unreachable!()
    };
    let limit = handle.adapter().max_storage_buffer_binding_size;
    // Past the binding limit (128 MiB on lavapipe); on adapters with huge limits, past the u32
    // indices of the kernels instead (70 000² > 2³²). Either is a TooLarge.
    let side = (((limit / 4) as f64).sqrt() as usize + 16).min(70_000);
    let a = Tensor::zeros(&[side, 1], &dev).unwrap();
    let b = Tensor::zeros(&[1, side], &dev).unwrap();
    match a.matmul(&b) {
        Err(e @ TensorError::TooLarge { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("matmul")
                    && (msg.contains("max_storage_buffer_binding_size") || msg.contains("u32")),
                "{msg}"
            );
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // More workgroups than a grid dimension allows.
    let q = Tensor::zeros(&[70_000, 1, 1], &dev).unwrap();
    match q.attention(&q, &q, None, false, 1.0) {
        Err(TensorError::TooLarge { limit_name, .. }) => assert!(limit_name.contains("workgroups")),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // The device is still fine afterwards.
    assert_eq!(
        Tensor::from_vec(vec![1.0, 2.0], &[2], &dev)
            .unwrap()
            .scale(2.0)
            .unwrap()
            .to_vec()
            .unwrap(),
        [2.0, 4.0]
    );
}

#[test]
fn head_size_past_the_kernel_is_a_clear_error() {
    let q = Tensor::zeros(&[1, 2, 129], &gpu()).unwrap();
    let e = q
        .attention(&q, &q, None, false, 1.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("attention") && e.contains("129"), "{e}");
}

#[test]
fn shape_and_device_errors_name_the_op_and_shapes() {
    let a = Tensor::zeros(&[2, 3], &Device::Cpu).unwrap();
    let b = Tensor::zeros(&[4, 5], &Device::Cpu).unwrap();
    let e = a.matmul(&b).unwrap_err().to_string();
    assert!(
        e.contains("matmul") && e.contains("[2, 3]") && e.contains("[4, 5]"),
        "{e}"
    );
    let e = a.add(&b).unwrap_err().to_string();
    assert!(e.contains("broadcast"), "{e}");
    let g = a.to_device(&gpu()).unwrap();
    assert!(matches!(a.add(&g), Err(TensorError::DeviceMismatch { .. })));
    let e = Tensor::from_vec(vec![1.0; 5], &[2, 3], &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("5 values") && e.contains("[2, 3]"), "{e}");
    let e = Tensor::zeros(&[2, 6, 4, 4], &Device::Cpu)
        .unwrap()
        .group_norm(4, &b, &b, 1e-5)
        .unwrap_err()
        .to_string();
    assert!(e.contains("group_norm") && e.contains("4 groups"), "{e}");
}

#[test]
fn device_choice_parses_and_auto_prefers_the_cpu_backend_over_a_cpu_adapter() {
    assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
    assert_eq!("GPU".parse::<DeviceChoice>().unwrap(), DeviceChoice::Gpu);
    assert_eq!("auto".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
    let e = "tpu".parse::<DeviceChoice>().unwrap_err().to_string();
    assert!(e.contains("tpu") && e.contains("cpu, gpu or auto"), "{e}");
    let report = reimagen::tensor::doctor::report();
    if report.adapters.iter().all(|a| a.device_type == "Cpu") {
        assert_eq!(report.auto_picks, "cpu");
        assert_eq!(Device::auto(), Device::Cpu);
    }
    let json = serde_json::to_string(&report).unwrap();
    assert!(json.contains("auto_picks"));
    assert!(report.to_string().contains("auto picks"));
}

#[test]
fn safetensors_single_and_sharded_f32_and_f16() {
    let dir = tempfile::tempdir().unwrap();
    let w = values(12, 1);
    let b = values(3, 2);
    let single = dir.path().join("single.safetensors");
    write_safetensors(
        &single,
        &[
            (
                "proj.weight",
                safetensors::Dtype::F16,
                vec![3, 4],
                f16_bytes(&w),
            ),
            ("proj.bias", safetensors::Dtype::F32, vec![3], f32_bytes(&b)),
        ],
    );
    let weights = Weights::open(&single, &Device::Cpu).unwrap();
    assert_eq!(weights.names(), ["proj.bias", "proj.weight"]);
    assert_eq!(
        weights.info("proj.weight").unwrap(),
        (WeightsDtype::F16, vec![3, 4])
    );
    for dev in [Device::Cpu, gpu()] {
        let weights = weights.with_device(&dev);
        let t = weights.get("proj.weight", &[3, 4]).unwrap();
        let want: Vec<f64> = w.iter().map(|&x| half::f16::from_f32(x).to_f64()).collect();
        // f16 in the file: widened exactly.
        assert_eq!(got(&t), want, "f16 weight widened");
        assert_eq!(weights.get("proj.bias", &[3]).unwrap().to_vec().unwrap(), b);
    }
    let e = weights.get("proj.weight", &[4, 3]).unwrap_err().to_string();
    assert!(
        e.contains("proj.weight")
            && e.contains("[4, 3]")
            && e.contains("[3, 4]")
            && e.contains("single.safetensors"),
        "{e}"
    );
    let e = weights.get("missing", &[1]).unwrap_err().to_string();
    assert!(
        e.contains("missing") && e.contains("single.safetensors"),
        "{e}"
    );

    // Sharded: two files and an index, opened through the folder.
    let shard_dir = dir.path().join("sharded");
    std::fs::create_dir(&shard_dir).unwrap();
    write_safetensors(
        &shard_dir.join("model-00001-of-00002.safetensors"),
        &[(
            "a",
            safetensors::Dtype::F32,
            vec![2],
            f32_bytes(&[1.0, 2.0]),
        )],
    );
    write_safetensors(
        &shard_dir.join("model-00002-of-00002.safetensors"),
        &[(
            "b",
            safetensors::Dtype::F16,
            vec![1, 2],
            f16_bytes(&[0.5, -4.0]),
        )],
    );
    let index: HashMap<&str, serde_json::Value> = HashMap::from([
        ("metadata", serde_json::json!({"total_size": 12})),
        (
            "weight_map",
            serde_json::json!({"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}),
        ),
    ]);
    std::fs::write(
        shard_dir.join("model.safetensors.index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    let sharded = Weights::open(&shard_dir, &Device::Cpu).unwrap();
    assert_eq!(sharded.names(), ["a", "b"]);
    assert_eq!(
        sharded.get("b", &[1, 2]).unwrap().to_vec().unwrap(),
        [0.5, -4.0]
    );
    // A shape error names the shard that holds the tensor, not the index.
    let e = sharded.get("b", &[2]).unwrap_err().to_string();
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");

    // A corrupt file names itself.
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, b"not a safetensors file").unwrap();
    let e = Weights::open(&bad, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("bad.safetensors"), "{e}");
}

#[test]
fn tensors_and_devices_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Tensor>();
    send_sync::<Device>();
    send_sync::<Weights>();
    // And work from several threads at once on one device.
    let dev = gpu();
    std::thread::scope(|s| {
        for seed in 0..4u64 {
            let dev = dev.clone();
            s.spawn(move || {
                let (a, av) = tensor(&[33, 17], seed, &dev);
                let (b, bv) = tensor(&[17, 9], seed + 10, &dev);
                let want = matmul_ref(&av, &bv, 1, 33, 17, 9, false);
                assert_normwise(
                    "threaded matmul",
                    &got(&a.matmul(&b).unwrap()),
                    &want,
                    GEMM_TOL,
                );
            });
        }
    });
}

#[test]
fn elementwise_grids_fold_past_65535_workgroups() {
    // 65 536 × 256 + 7 elements: one more workgroup than a grid dimension allows.
    let n = 65_536 * 256 + 7;
    let x = Tensor::from_vec((0..n).map(|i| (i % 1000) as f32).collect(), &[n], &gpu()).unwrap();
    let y = x.affine(2.0, 1.0).unwrap().to_vec().unwrap();
    for i in [0, 1, 999, 65_535 * 256, n - 1] {
        assert_eq!(y[i], (i % 1000) as f32 * 2.0 + 1.0, "element {i}");
    }
}
