//! The everyday verbs of the `reimagen` binary: `edit`, `entities`, `export --jsonl` and
//! `import --jsonl`, with `--json`, and their errors.

mod common;

use std::path::Path;

use common::{colour_png, fails, json, ok, reimagen, write};

/// A KB of three pairs: two of entity "Café Ölberg" (one spelt in capitals), one of "dogs".
fn three_pairs(root: &Path) -> (std::path::PathBuf, Vec<String>) {
    let kb = root.join("kb");
    ok(&kb, &["init", "--no-models"]);
    let mut ids = Vec::new();
    for (i, (caption, entity)) in [
        ("a terrace in the sun", "Café Ölberg"),
        ("chairs on a terrace", "CAFÉ ÖLBERG"),
        ("two corgis running", "dogs"),
    ]
    .iter()
    .enumerate()
    {
        let image = write(
            root,
            &format!("img/{i}.png"),
            &colour_png("green", i as u32),
        );
        let added = json(
            &kb,
            &[
                "add",
                image.to_str().unwrap(),
                "--caption",
                caption,
                "--entity",
                entity,
                "--tag",
                "summer",
                "--json",
            ],
        );
        ids.push(added[0]["id"].as_str().unwrap().to_string());
    }
    (kb, ids)
}

#[test]
fn edit_changes_caption_entity_and_tags() {
    let root = tempfile::tempdir().unwrap();
    let (kb, ids) = three_pairs(root.path());
    let prefix = &ids[2][..8];
    let edited = json(
        &kb,
        &[
            "edit",
            prefix,
            "--caption",
            "two corgis on the beaches of Brittany",
            "--entity",
            "corgis",
            "--tag",
            "Beach",
            "--untag",
            "SUMMER",
            "--json",
        ],
    );
    assert_eq!(edited["id"], ids[2].as_str());
    assert_eq!(edited["caption"], "two corgis on the beaches of Brittany");
    assert_eq!(edited["entity"], "corgis");
    assert_eq!(edited["tags"], serde_json::json!(["Beach"]));
    // Search sees the edit.
    let hits = json(&kb, &["search", "britany beach", "--json"]);
    assert_eq!(hits[0]["id"], ids[2].as_str());
    let hits = json(&kb, &["search", "corgi", "--tag", "beach", "--json"]);
    assert_eq!(hits.as_array().unwrap().len(), 1);

    let cleared = json(&kb, &["edit", prefix, "--no-entity", "--json"]);
    assert_eq!(cleared["entity"], serde_json::Value::Null);
    assert_eq!(cleared["caption"], "two corgis on the beaches of Brittany");

    // Errors: nothing to change, a tag it does not have, an unknown id, an empty caption.
    assert!(fails(&kb, &["edit", prefix]).contains("nothing to change"));
    assert!(fails(&kb, &["edit", prefix, "--untag", "winter"]).contains("no tag `winter`"));
    assert!(fails(&kb, &["edit", "ffffffff", "--caption", "x"]).contains("no pair with id"));
    let err = fails(&kb, &["edit", prefix, "--caption", "   "]);
    assert!(err.contains("caption"), "{err}");
    assert_eq!(
        json(&kb, &["show", prefix, "--json"])["caption"],
        "two corgis on the beaches of Brittany"
    );
    ok(&kb, &["check"]);
}

#[test]
fn entities_are_counted_folded_and_sorted_by_count() {
    let root = tempfile::tempdir().unwrap();
    let (kb, ids) = three_pairs(root.path());
    let entities = json(&kb, &["entities", "--json"]);
    let list = entities.as_array().unwrap();
    assert_eq!(list.len(), 2, "{entities}");
    assert_eq!(list[0]["pairs"], 2);
    assert_eq!(
        list[0]["name"].as_str().unwrap().to_lowercase(),
        "café ölberg"
    );
    assert!(ids[..2].contains(&list[0]["example"].as_str().unwrap().to_string()));
    assert_eq!(list[1]["name"], "dogs");
    assert_eq!(list[1]["pairs"], 1);
    assert_eq!(list[1]["example"], ids[2].as_str());
    let text = ok(&kb, &["entities"]);
    assert!(
        text.lines().next().unwrap().trim_start().starts_with('2'),
        "{text}"
    );
}

#[test]
fn export_and_import_move_a_kb_without_losing_text() {
    let root = tempfile::tempdir().unwrap();
    let (kb, ids) = three_pairs(root.path());
    ok(&kb, &["edit", &ids[0][..8], "--tag", "terrace"]);
    let file = root.path().join("kb.jsonl");
    let summary = json(
        &kb,
        &["export", "--jsonl", file.to_str().unwrap(), "--json"],
    );
    assert_eq!(summary["pairs"], 3);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(
        lines
            .iter()
            .all(|l| l["paths"].as_array().unwrap().len() == 1)
    );
    assert!(lines.iter().all(|l| l.get("image_embedding").is_none()));
    // Standard output works too, line for line.
    let stdout = ok(&kb, &["export", "--jsonl", "-"]);
    assert_eq!(stdout.lines().count(), 3);

    // Into a new KB: every pair with its caption, entity and tags.
    let other = root.path().join("other");
    ok(&other, &["init", "--no-models"]);
    let report = json(
        &other,
        &["import", "--jsonl", file.to_str().unwrap(), "--json"],
    );
    assert_eq!(report["added"], 3, "{report}");
    assert_eq!(report["failed"], serde_json::json!([]));
    let mut before = json(&kb, &["list", "--json"]);
    let mut after = json(&other, &["list", "--json"]);
    for list in [&mut before, &mut after] {
        for p in list.as_array_mut().unwrap() {
            p.as_object_mut().unwrap().remove("added_at_unix_s");
        }
    }
    assert_eq!(before, after);

    // Again: nothing new; an edited line updates the text of the pair it names.
    let report = json(
        &other,
        &["import", "--jsonl", file.to_str().unwrap(), "--json"],
    );
    assert_eq!(
        (report["added"].as_u64(), report["unchanged"].as_u64()),
        (Some(0), Some(3))
    );
    let edited: String = std::fs::read_to_string(&file)
        .unwrap()
        .replace("two corgis running", "two corgis sleeping");
    std::fs::write(&file, edited).unwrap();
    let report = json(
        &other,
        &["import", "--jsonl", file.to_str().unwrap(), "--json"],
    );
    assert_eq!(report["updated"], 1, "{report}");
    assert_eq!(
        json(&other, &["show", &ids[2][..8], "--json"])["caption"],
        "two corgis sleeping"
    );
}

#[test]
fn import_reports_bad_lines_and_missing_images() {
    let root = tempfile::tempdir().unwrap();
    let (kb, ids) = three_pairs(root.path());
    let file = root.path().join("kb.jsonl");
    ok(&kb, &["export", "--jsonl", file.to_str().unwrap()]);
    // One image gone, one line broken, one id bad.
    std::fs::remove_file(root.path().join("img/1.png")).unwrap();
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str("{not json\n");
    text.push_str("{\"id\":\"xyz\",\"caption\":\"c\"}\n");
    std::fs::write(&file, text).unwrap();
    let other = root.path().join("other");
    ok(&other, &["init", "--no-models"]);
    let out = reimagen(
        &other,
        &["import", "--jsonl", file.to_str().unwrap(), "--json"],
    );
    assert!(
        !out.status.success(),
        "refused lines make the exit code non-zero"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["added"], 2);
    let failed = report["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 3, "{report}");
    let missing_line = failed
        .iter()
        .find(|f| f["error"].as_str().unwrap().contains("none of its files"))
        .expect("the missing image is reported");
    assert!(
        missing_line["error"]
            .as_str()
            .unwrap()
            .contains(&ids[1][..8])
    );
    assert!(
        failed
            .iter()
            .any(|f| f["line"] == 4 && f["error"].as_str().unwrap().contains("not a pair line"))
    );
    assert!(
        failed
            .iter()
            .any(|f| f["line"] == 5 && f["error"].as_str().unwrap().contains("`xyz`"))
    );
    // A file that is not there, and import without a folder or --jsonl.
    assert!(
        fails(&other, &["import", "--jsonl", "/nonexistent/x.jsonl"])
            .contains("/nonexistent/x.jsonl")
    );
    fails(&other, &["import"]);
    fails(
        &other,
        &["import", "somedir", "--jsonl", file.to_str().unwrap()],
    );
}
