//! `reimagen bench generate` end to end on the tiny fixture cascade (tests/fixtures/reimagen):
//! it runs on the CPU backend and the wgpu adapter with one run, its JSON carries every field
//! with sane positive numbers, a failing PyTorch baseline is reported rather than fatal, and a
//! bad --model or stage name is a clear error. Nothing here asserts a time.
//!
//! Not here: the random shipped cascade's tensor list (unit tests in `src/bench/generate.rs`).

use std::path::PathBuf;
use std::process::{Command, Output};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reimagen")
}

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_reimagen"))
        .args(["bench", "generate"])
        .args(args)
        .env_remove("REIMAGEN_KB")
        .output()
        .unwrap()
}

fn json(args: &[&str]) -> serde_json::Value {
    let out = bench(args);
    assert!(
        out.status.success(),
        "bench generate {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn positive(v: &serde_json::Value, key: &str) -> f64 {
    let x = v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"));
    assert!(x.is_finite() && x > 0.0, "{key} = {x} in {v}");
    x
}

#[test]
fn runs_on_the_fixture_cascade_on_cpu_and_gpu_with_every_field() {
    let model = fixture();
    let report = json(&[
        "--model",
        model.to_str().unwrap(),
        "--device",
        "cpu,gpu",
        "--runs",
        "1",
        "--steps",
        "2",
        "--batch",
        "2",
        "--k",
        "2",
        // A baseline that cannot start is reported in the report, not an error.
        "--torch",
        "/nonexistent/python",
        "--json",
    ]);
    assert_eq!(report["batch"], 2);
    assert_eq!(report["neighbours"], 2);
    assert_eq!(
        report["branches"], 2,
        "interleaved guidance batches two branches"
    );
    assert!(report["cpu_threads"].as_u64().unwrap() >= 1);
    assert!(report["torch"].is_null());
    let why = report["torch_error"].as_str().unwrap();
    assert!(why.contains("/nonexistent/python"), "{why}");

    let stages: Vec<&str> = report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["base", "sr"]);
    for s in report["stages"].as_array().unwrap() {
        positive(s, "resolution");
        positive(s, "parameters");
    }
    assert_eq!(report["stages"][1]["low_res"], 8);

    let steps = report["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 4, "two stages × two devices: {steps:?}");
    let devices: Vec<&str> = steps
        .iter()
        .map(|s| s["device"].as_str().unwrap())
        .collect();
    assert_eq!(devices[0], "cpu");
    assert_ne!(devices[2], "cpu", "the second device is the adapter");
    for s in steps {
        assert_eq!(s["rows"], 4, "2 branches × batch 2");
        assert_eq!(s["runs"], 1);
        let rate = positive(s, "steps_per_sec");
        let median = positive(s, "step_ms_median");
        assert!((rate * median / 1e3 - 1.0).abs() < 1e-6, "{s}");
        assert!(positive(s, "step_ms_min") <= median && median <= positive(s, "step_ms_max"));
        assert!(s["vs_torch"].is_null(), "no baseline ran");
    }
    let encode = report["encode"].as_array().unwrap();
    assert_eq!(encode.len(), 4);
    for e in encode {
        assert_eq!(e["neighbours"], 2);
        positive(e, "encode_ms_median");
    }
    let cascade = report["cascade"].as_array().unwrap();
    assert_eq!(cascade.len(), 2, "{report}");
    for c in cascade {
        assert_eq!(c["steps_per_stage"], 2);
        assert_eq!(c["stages"], serde_json::json!(["base", "sr"]));
        let total = positive(c, "secs_total");
        assert!((positive(c, "secs_per_image") * 2.0 - total).abs() < 1e-9);
    }
    assert!(report["cascade_skipped"].is_null());
    let memory = report["memory"].as_array().unwrap();
    assert_eq!(memory.len(), 2);
    for m in memory {
        // At least the weights and the binary are resident.
        assert!(positive(m, "peak_rss_mib") > 1.0);
        assert!(m["reset"].is_boolean());
    }
}

#[test]
fn a_stage_subset_that_is_no_cascade_is_timed_and_the_cascade_left_out() {
    let model = fixture();
    let report = json(&[
        "--model",
        model.to_str().unwrap(),
        "--device",
        "cpu",
        "--stages",
        "sr",
        "--runs",
        "1",
        "--json",
    ]);
    assert_eq!(report["steps"].as_array().unwrap().len(), 1);
    assert_eq!(report["steps"][0]["stage"], "sr");
    assert!(report["cascade"].as_array().unwrap().is_empty());
    let why = report["cascade_skipped"].as_str().unwrap();
    assert!(why.contains("low_res_size"), "{why}");
}

#[test]
fn the_text_report_has_the_table() {
    let model = fixture();
    let out = bench(&[
        "--model",
        model.to_str().unwrap(),
        "--device",
        "cpu",
        "--runs",
        "1",
        "--no-cascade",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "steps/s",
        "vs torch",
        "neighbour encoding",
        "peak RSS",
        "cascade: not run",
    ] {
        assert!(text.contains(needle), "{needle:?} missing in:\n{text}");
    }
    // Progress goes to stderr, the report alone to stdout.
    assert!(!text.contains("warm-up"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("warm-up"));
}

#[test]
fn a_bad_model_folder_or_stage_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-cascade");
    let out = bench(&["--model", missing.to_str().unwrap(), "--runs", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no-such-cascade") && err.contains("no such model folder"),
        "{err}"
    );

    // A folder without cascade.json names the file.
    let out = bench(&["--model", dir.path().to_str().unwrap(), "--runs", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cascade.json"), "{err}");

    let model = fixture();
    let out = bench(&["--model", model.to_str().unwrap(), "--stages", "sr9"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sr9") && err.contains("base, sr"), "{err}");
}
