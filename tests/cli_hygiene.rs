//! The CLI's manners: help offers only options that do something, and every number in a `--json`
//! output says its unit in its field name.
//!
//! Not here: what the commands do (`cli.rs`, `verbs.rs`); a closed pipe (`cli_pipe.rs`).

mod common;

use std::path::Path;
use std::process::Command;

use common::{image_bytes, ok, write};
use image::ImageFormat;

/// A KB of `n` small pairs under `root`.
fn kb_of(root: &Path, n: u32) -> std::path::PathBuf {
    let kb = root.join("kb");
    let photos = root.join("photos");
    for i in 0..n {
        write(
            &photos,
            &format!("thing{}/picture {i}.png", i % 3),
            &image_bytes([(i * 7) as u8, 90, 200], i, 24, 16, ImageFormat::Png),
        );
    }
    ok(&kb, &["init", "--no-models"]);
    ok(&kb, &["import", photos.to_str().unwrap()]);
    kb
}

#[test]
fn commands_that_never_open_the_kb_do_not_offer_kb() {
    let dir = tempfile::tempdir().unwrap();
    let kb = dir.path().join("kb");
    for args in [
        &["bench", "kb", "--help"][..],
        &["bench", "relevance", "--help"],
        &["bench", "--help"],
        &["dataset", "build", "--help"],
        &["doctor", "--help"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_reimagen"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(!help.contains("--kb"), "{args:?} offers --kb:\n{help}");
    }
    // Given there anyway, it is refused rather than ignored.
    let out = Command::new(env!("CARGO_BIN_EXE_reimagen"))
        .args(["bench", "kb", "--pairs", "10", "--kb"])
        .arg(&kb)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--kb"));
    // The commands that do open it still offer it.
    for args in [
        &["search", "--help"][..],
        &["list", "--help"],
        &["watch", "--help"],
    ] {
        let help = ok(&kb, args);
        assert!(help.contains("--kb"), "{args:?} lacks --kb:\n{help}");
    }
}

/// Numeric fields that are counts (or ids, ranks, scores): no unit to name.
const COUNTS: &[&str] = &[
    "pairs",
    "entities",
    "last_seq",
    "seq",
    "schema_version",
    "text_index_docs",
    "points",
    "tombstones",
    "rank",
    "score",
    "items",
    "queue",
    "pending_deletes",
    "progress_done",
    "progress_total",
    "pid",
    "files",
    "changed",
    "added",
    "linked",
    "updated",
    "removed",
    "quarantined",
    "duplicates",
];

/// Suffixes that name a unit.
const UNITS: &[&str] = &["_bytes", "_px", "_ms", "_unix_s", "_s", "_secs"];

/// Every numeric field of `value`, with its path, that names neither a count nor a unit.
fn unitless(value: &serde_json::Value, path: &str, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                let here = format!("{path}.{key}");
                if v.is_number()
                    && !COUNTS.contains(&key.as_str())
                    && !UNITS.iter().any(|u| key.ends_with(u))
                {
                    out.push(here.clone());
                }
                unitless(v, &here, out);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                unitless(v, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn every_number_in_a_json_output_names_its_unit() {
    let dir = tempfile::tempdir().unwrap();
    let kb = kb_of(dir.path(), 4);
    let list: serde_json::Value = serde_json::from_str(&ok(&kb, &["list", "--json"])).unwrap();
    let id = list[0]["id"].as_str().unwrap().to_string();
    let mut bad = Vec::new();
    for args in [
        &["list", "--json"][..],
        &["show", &id, "--json"],
        &["stats", "--json"],
        &["check", "--json"],
        &["search", "picture", "--json"],
        &["entities", "--json"],
        &["status", "--json"],
    ] {
        let out: serde_json::Value = serde_json::from_str(&ok(&kb, args)).unwrap();
        unitless(&out, &args.join(" "), &mut bad);
    }
    assert!(bad.is_empty(), "numbers without a unit: {bad:?}");
    let show: serde_json::Value = serde_json::from_str(&ok(&kb, &["show", &id, "--json"])).unwrap();
    assert_eq!(show["width_px"], 24);
    assert_eq!(show["height_px"], 16);
    assert!(show["size_bytes"].as_u64().unwrap() > 0);
    let stats: serde_json::Value = serde_json::from_str(&ok(&kb, &["stats", "--json"])).unwrap();
    assert!(
        stats["map_size_bytes"].as_u64().unwrap() >= stats["disk_size_bytes"].as_u64().unwrap()
    );
}
