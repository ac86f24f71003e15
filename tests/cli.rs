//! The `reimagen` binary on real PNG and JPEG files: init, add, import, search --json, show,
//! list, remove, stats, check, rebuild-index, backup, and its errors and exit codes.

mod common;

use common::{image_bytes, json, ok, reimagen, write};
use image::ImageFormat;

#[test]
fn a_session_from_init_to_backup() {
    let dir = tempfile::tempdir().unwrap();
    let kb = dir.path().join("kb");
    let photos = dir.path().join("photos");
    let corgi1 = write(
        &photos,
        "corgi/corgi_on_beach.jpg",
        &image_bytes([200, 140, 60], 1, 64, 48, ImageFormat::Jpeg),
    );
    write(
        &photos,
        "corgi/corgi_in_snow.png",
        &image_bytes([230, 230, 240], 2, 64, 48, ImageFormat::Png),
    );
    write(
        &photos,
        "tower/night.png",
        &image_bytes([200, 10, 10], 3, 48, 64, ImageFormat::Png),
    );
    write(
        &photos,
        "tower/night.txt",
        b"Tokyo tower lit up at night\ntags: landmark, Tokyo\n",
    );
    let loose = write(
        dir.path(),
        "loose/emblem.png",
        &image_bytes([10, 200, 10], 4, 32, 32, ImageFormat::Png),
    );

    // Commands other than init refuse a missing KB, saying what to do.
    let out = reimagen(&kb, &["list"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("reimagen init"));

    assert!(ok(&kb, &["init", "--no-models"]).contains("Created"));
    let import = json(&kb, &["import", photos.to_str().unwrap(), "--json"]);
    assert_eq!(import["added"], 3);
    assert_eq!(import["failed"].as_array().unwrap().len(), 0);

    let added = json(
        &kb,
        &[
            "add",
            loose.to_str().unwrap(),
            "--caption",
            "the club emblem",
            "--entity",
            "emblem",
            "--tag",
            "logo",
            "--json",
        ],
    );
    assert_eq!(added[0]["status"], "added");
    let emblem_id = added[0]["id"].as_str().unwrap().to_string();
    let again = json(&kb, &["add", corgi1.to_str().unwrap(), "--json"]);
    assert_eq!(again[0]["status"], "duplicate");

    let hits = json(&kb, &["search", "tokyo tower", "--mode", "bm25", "--json"]);
    let first = &hits.as_array().unwrap()[0];
    assert_eq!(first["caption"], "Tokyo tower lit up at night");
    assert_eq!(first["entity"], "tower");
    assert!(first["score"].as_f64().unwrap() > 0.0);
    assert_eq!(first["id"].as_str().unwrap().len(), 64);

    let corgis = json(&kb, &["search", "corgi", "--json"]);
    assert_eq!(
        corgis.as_array().unwrap().len(),
        2,
        "stem captions and the folder entity: {corgis}"
    );

    let shown = json(&kb, &["show", &emblem_id[..10], "--json"]);
    assert_eq!(shown["caption"], "the club emblem");
    assert_eq!(shown["tags"][0], "logo");
    assert_eq!(json(&kb, &["list", "--json"]).as_array().unwrap().len(), 4);
    assert_eq!(json(&kb, &["stats", "--json"])["pairs"], 4);

    let out = reimagen(&kb, &["search", "corgi", "--mode", "clip"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no embedder is configured"));

    assert!(ok(&kb, &["remove", &emblem_id]).contains("removed"));
    assert!(
        !reimagen(&kb, &["remove", &emblem_id]).status.success(),
        "removing twice fails"
    );
    assert!(
        json(&kb, &["search", "emblem", "--json"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(ok(&kb, &["check"]).starts_with("ok: 3 pairs"));
    assert!(ok(&kb, &["rebuild-index"]).contains("3 BM25 documents"));

    let backup = dir.path().join("backup");
    ok(&kb, &["backup", backup.to_str().unwrap()]);
    assert_eq!(json(&backup, &["stats", "--json"])["pairs"], 3);
    assert!(ok(&backup, &["check"]).starts_with("ok"));
}

#[test]
fn bad_files_fail_with_a_non_zero_exit_and_leave_the_kb_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let kb = dir.path().join("kb");
    ok(&kb, &["init", "--no-models"]);
    let good = write(
        dir.path(),
        "in/good.png",
        &image_bytes([1, 1, 1], 1, 8, 8, ImageFormat::Png),
    );
    let png = image_bytes([1, 2, 3], 2, 30, 30, ImageFormat::Png);
    let broken = write(dir.path(), "in/broken.png", &png[..png.len() - 20]);
    let text = write(dir.path(), "in/readme.jpg", b"hello");
    ok(&kb, &["add", good.to_str().unwrap(), "--caption", "good"]);
    let before = json(&kb, &["stats", "--json"]);

    for (file, reason) in [
        (&broken, "image is truncated"),
        (&text, "unrecognised image format"),
    ] {
        let out = reimagen(&kb, &["add", file.to_str().unwrap(), "--caption", "x"]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(file.file_name().unwrap().to_str().unwrap()) && stderr.contains(reason),
            "{stderr}"
        );
    }
    let out = reimagen(&kb, &["add", good.to_str().unwrap(), "--caption", "   "]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("caption is empty"));

    let after = json(&kb, &["stats", "--json"]);
    assert_eq!(before["pairs"], after["pairs"]);
    assert_eq!(before["last_seq"], after["last_seq"]);

    // import goes on past bad files, reports them, and exits non-zero.
    let out = reimagen(
        &kb,
        &["import", dir.path().join("in").to_str().unwrap(), "--json"],
    );
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["duplicates"], 1);
    assert_eq!(report["failed"].as_array().unwrap().len(), 2);
}
