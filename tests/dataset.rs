//! The dataset builder on tiny fixture packages made in the test (a few SVGs, PNGs and an
//! Emojibase names file in generated npm-style tarballs): the join across sets, the folder
//! layout and sidecars `import` reads, the held-out split, the manifest, and the neighbours.
//! No network: every tarball is in the cache before the build starts.
//!
//! Not here: the real packages (docs/dataset.md records a real build).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use reimagen::dataset::{
    self, BuildOptions, DatasetError, ManifestEntry, NeighbourOptions, PACKAGES, Split, is_held_out,
};

fn svg(colour: &str) -> Vec<u8> {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 36 36"><circle cx="18" cy="18" r="16" fill="{colour}"/></svg>"#
    )
    .into_bytes()
}

fn png(rgba: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut image = image::RgbaImage::from_pixel(64, 64, image::Rgba([0, 0, 0, 0]));
    for y in 8..56 {
        for x in 8..56 {
            image.put_pixel(x, y, image::Rgba(rgba));
        }
    }
    image
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

fn write_tarball(path: &Path, files: &[(String, Vec<u8>)]) {
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(path).unwrap(),
        flate2::Compression::fast(),
    );
    let mut tar = tar::Builder::new(gz);
    for (name, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, bytes.as_slice())
            .unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap();
}

/// Synthetic creatures: enough names that both splits are populated, found by the rule itself.
fn creatures() -> Vec<String> {
    let (mut held, mut train) = (Vec::new(), Vec::new());
    for i in 0.. {
        let name = format!("creature {i}");
        if is_held_out(&name) {
            held.push(name);
        } else {
            train.push(name);
        }
        if held.len() >= 2 && train.len() >= 6 {
            break;
        }
    }
    held.into_iter().chain(train).collect()
}

fn tarball(name: &str) -> &'static str {
    PACKAGES.iter().find(|p| p.name == name).unwrap().tarball
}

/// Writes the five fixture tarballs into `cache`.
fn fixture_cache(cache: &Path) {
    std::fs::create_dir_all(cache).unwrap();
    let mut names = vec![
        serde_json::json!({"label": "dog face", "hexcode": "1F436", "group": 3, "tags": ["dog", "face", "pet"]}),
        serde_json::json!({"label": "keycap: #", "hexcode": "0023-FE0F-20E3", "group": 8, "tags": ["keycap"]}),
        serde_json::json!({"label": "keycap: *", "hexcode": "002A-FE0F-20E3", "group": 8, "tags": ["keycap"]}),
        serde_json::json!({"label": "waving hand", "hexcode": "1F44B", "group": 1, "tags": ["hand", "wave"],
            "skins": [{"label": "waving hand: dark skin tone", "hexcode": "1F44B-1F3FF"}]}),
        serde_json::json!({"label": "smiling face with open hands", "hexcode": "1F917", "group": 0, "tags": ["hug"]}),
        serde_json::json!({"label": "Piñata", "hexcode": "1FA85", "group": 6, "tags": ["party"]}),
        serde_json::json!({"label": "light skin tone", "hexcode": "1F3FB", "group": 2}),
        serde_json::json!({"label": "regional indicator A", "hexcode": "1F1E6"}),
    ];
    let mut twemoji = vec![
        ("package/1f436.svg".to_string(), svg("#c08040")),
        ("package/23-20e3.svg".to_string(), svg("#888888")),
        ("package/2a-20e3.svg".to_string(), svg("#777777")),
        ("package/1f3fb.svg".to_string(), svg("#ffe0c0")),
        ("package/e50a.svg".to_string(), svg("#000000")),
        ("package/LICENSE".to_string(), b"CC-BY-4.0".to_vec()),
    ];
    let mut fluent = vec![
        (
            "package/icons/flat/dog-face.svg".to_string(),
            svg("#d09050"),
        ),
        (
            "package/icons/modern/dog-face.svg".to_string(),
            svg("#e0a060"),
        ),
        (
            "package/icons/high-contrast/dog-face.svg".to_string(),
            svg("#000000"),
        ),
        (
            "package/icons/flat/waving-hand-default.svg".to_string(),
            svg("#ffcc00"),
        ),
        (
            "package/icons/flat/waving-hand-dark.svg".to_string(),
            svg("#663300"),
        ),
        (
            "package/icons/flat/hugging-face.svg".to_string(),
            svg("#ffdd00"),
        ),
        ("package/icons/flat/pinata.svg".to_string(), svg("#ff00ff")),
    ];
    for (i, name) in creatures().iter().enumerate() {
        let hex = format!("{:X}", 0x1F400 + i);
        names.push(
            serde_json::json!({"label": name, "hexcode": hex, "group": 3, "tags": ["creature"]}),
        );
        twemoji.push((
            format!("package/{}.svg", hex.to_lowercase()),
            svg(&format!("#{:02x}4080", 20 * i)),
        ));
        fluent.push((
            format!("package/icons/flat/{}.svg", name.replace(' ', "-")),
            svg(&format!("#80{:02x}40", 20 * i)),
        ));
    }
    let data = serde_json::to_vec(&names).unwrap();
    write_tarball(
        &cache.join(tarball("emojibase-data")),
        &[
            ("package/en/data.json".into(), data),
            ("package/fr/data.json".into(), b"[]".to_vec()),
        ],
    );
    write_tarball(&cache.join(tarball("@twemoji/svg")), &twemoji);
    write_tarball(&cache.join(tarball("fluentui-emoji")), &fluent);
    write_tarball(
        &cache.join(tarball("openmoji")),
        &[
            ("package/color/svg/1F436.svg".into(), svg("#a06030")),
            ("package/black/svg/1F436.svg".into(), svg("#000000")),
            (
                "package/color/svg/0023-FE0F-20E3.svg".into(),
                svg("#3060a0"),
            ),
            ("package/src/animals/1F436.svg".into(), svg("#ffffff")),
        ],
    );
    write_tarball(
        &cache.join(tarball("emoji-datasource-google")),
        &[
            (
                "package/img/google/64/1f436.png".into(),
                png([200, 120, 40, 255]),
            ),
            (
                "package/img/google/64/0023-fe0f-20e3.png".into(),
                png([10, 20, 30, 255]),
            ),
            ("package/emoji.json".into(), b"[]".to_vec()),
        ],
    );
}

fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn built() -> (tempfile::TempDir, dataset::BuildReport) {
    let tmp = tempfile::tempdir().unwrap();
    fixture_cache(&tmp.path().join("npm"));
    let options = BuildOptions::new(tmp.path().join("emoji"), tmp.path().join("npm"))
        .npm(tmp.path().join("no-npm-here"));
    let report = dataset::build(&options, &|_, _| {}).unwrap();
    (tmp, report)
}

#[test]
fn renditions_of_one_emoji_are_joined_across_the_sets() {
    let (tmp, report) = built();
    let out = tmp.path().join("emoji");
    let manifest = dataset::read_manifest(&out).unwrap();
    let by_id: BTreeMap<&str, &ManifestEntry> =
        manifest.iter().map(|m| (m.id.as_str(), m)).collect();

    let dog: Vec<&str> = by_id
        .keys()
        .filter(|id| id.starts_with("dog-face/"))
        .copied()
        .collect();
    assert_eq!(
        dog,
        [
            "dog-face/fluent-flat",
            "dog-face/fluent-high-contrast",
            "dog-face/fluent-modern",
            "dog-face/noto",
            "dog-face/openmoji",
            "dog-face/openmoji-black",
            "dog-face/twemoji",
        ]
    );
    let tw = by_id["dog-face/twemoji"];
    assert_eq!(tw.entity, "dog face");
    assert_eq!(tw.caption, "dog face, twemoji style");
    assert_eq!(tw.tags, ["dog", "face", "pet"]);
    assert_eq!(tw.source, "@twemoji/svg@15.0.0/1f436.svg");
    assert_eq!(tw.license, "CC-BY-4.0");
    assert_eq!(by_id["dog-face/openmoji-black"].license, "CC-BY-SA-4.0");
    assert_eq!(by_id["dog-face/noto"].license, "Apache-2.0");
    assert_eq!(
        tw.split,
        if is_held_out("dog face") {
            Split::Heldout
        } else {
            Split::Train
        }
    );

    // FE0F and leading zeros do not split a keycap; colliding slugs take their codepoints.
    assert!(by_id.contains_key("keycap-23-20e3/twemoji"));
    assert!(by_id.contains_key("keycap-23-20e3/openmoji"));
    assert!(by_id.contains_key("keycap-23-20e3/noto"));
    assert!(by_id.contains_key("keycap-2a-20e3/twemoji"));
    // Fluent: `-default` is the base of a skin-tone emoji; older names map through the aliases;
    // accents are dropped as Fluent drops them.
    assert!(by_id.contains_key("waving-hand/fluent-flat"));
    assert!(by_id.contains_key("smiling-face-with-open-hands/fluent-flat"));
    assert_eq!(by_id["pinata/fluent-flat"].entity, "piñata");
    // Components, skin-tone variants and private-use extras are no entities.
    assert!(!manifest.iter().any(|m| m.entity.contains("skin tone")));
    assert_eq!(report.unmatched.get("twemoji"), Some(&2), "1f3fb and e50a");
    assert_eq!(
        report.unmatched.get("fluent-flat"),
        Some(&1),
        "waving-hand-dark"
    );
    assert!(report.failed.is_empty(), "{:?}", report.failed);

    assert_eq!(report.renditions, manifest.len());
    assert_eq!(report.per_style.values().sum::<usize>(), manifest.len());
    assert_eq!(report.per_style["twemoji"], 3 + creatures().len());
    let entities = read_jsonl(&out.join("entities.jsonl"));
    assert_eq!(entities.len(), report.entities);
    let dog_entity = entities.iter().find(|e| e["slug"] == "dog-face").unwrap();
    assert_eq!(dog_entity["styles"].as_array().unwrap().len(), 7);
    assert!(
        std::fs::read_to_string(out.join("LICENSES.md"))
            .unwrap()
            .contains("CC-BY-SA-4.0")
    );
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("build.json")).unwrap()).unwrap();
    assert_eq!(record["packages"].as_array().unwrap().len(), PACKAGES.len());
}

#[test]
fn images_and_sidecars_are_in_the_layout_import_reads() {
    let (tmp, _) = built();
    let out = tmp.path().join("emoji");
    let manifest = dataset::read_manifest(&out).unwrap();
    for m in &manifest {
        let expected: Vec<&str> = if m.style == "noto" {
            vec!["64"]
        } else {
            vec!["256", "64"]
        };
        assert_eq!(
            m.files.keys().map(String::as_str).collect::<Vec<_>>(),
            expected,
            "{}",
            m.id
        );
        for (size, rel) in &m.files {
            assert_eq!(
                rel,
                &format!("{size}/{}/{}/{}.png", m.split.as_str(), m.slug, m.style)
            );
            let image = image::open(out.join(rel)).unwrap();
            assert_eq!(image.color(), image::ColorType::Rgb8, "{rel}");
            let side: u32 = size.parse().unwrap();
            assert_eq!((image.width(), image.height()), (side, side));
            let rgb = image.to_rgb8();
            assert_eq!(
                rgb.get_pixel(0, 0).0,
                [255, 255, 255],
                "{rel}: corner is white"
            );
            let centre = rgb.get_pixel(side / 2, side / 2).0;
            assert_ne!(centre, [255, 255, 255], "{rel}: the emoji is drawn");
            // The sidecar is what `import` reads.
            let text = reimagen::caption_for_file(&out.join(rel), &Default::default()).unwrap();
            assert_eq!(text.caption, m.caption);
            assert_eq!(text.entity.as_deref(), Some(m.entity.as_str()));
            assert_eq!(text.tags, m.tags);
        }
        assert_eq!(m.split == Split::Heldout, is_held_out(&m.entity));
    }
    assert!(manifest.iter().any(|m| m.split == Split::Heldout));
    assert!(manifest.iter().any(|m| m.split == Split::Train));
}

#[test]
fn neighbours_come_from_the_training_kb_and_respect_the_exclusions() {
    let (tmp, _) = built();
    let out = tmp.path().join("emoji");
    let manifest = dataset::read_manifest(&out).unwrap();
    let report = dataset::neighbours(&out, &NeighbourOptions::default(), &|_, _| {}).unwrap();
    let train: HashMap<&str, &ManifestEntry> = manifest
        .iter()
        .filter(|m| m.split == Split::Train)
        .map(|m| (m.id.as_str(), m))
        .collect();
    assert!(out.join("kb-train-64").join("kb.toml").exists());
    assert_eq!(report.imported + report.duplicates, train.len());
    assert!(report.import_failed.is_empty());

    let rows = read_jsonl(&out.join("neighbours.jsonl"));
    assert_eq!(rows.len(), train.len());
    assert_eq!(report.examples, train.len());
    let excluding = rows
        .iter()
        .filter(|r| r["exclude_own_style"] == true)
        .count();
    assert_eq!(excluding, train.len() / 2);
    let mut seen = HashSet::new();
    for row in &rows {
        let id = row["id"].as_str().unwrap();
        assert!(seen.insert(id.to_string()), "one line per rendition");
        let own = train[id];
        let neighbours: Vec<&str> = row["neighbours"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        assert_eq!(neighbours.len(), row["scores"].as_array().unwrap().len());
        assert_eq!(neighbours.len(), 2, "{id}: the fixture always has two");
        for n in &neighbours {
            assert_ne!(*n, id, "never itself");
            let other = train
                .get(n)
                .unwrap_or_else(|| panic!("{n} is no train rendition"));
            if row["exclude_own_style"] == true {
                assert_ne!(other.style, own.style, "{id} → {n}");
            }
        }
    }
    // BM25 on the caption finds the same entity first when there is one in another style.
    if let Some(row) = rows
        .iter()
        .find(|r| r["id"] == "dog-face/twemoji" && r["exclude_own_style"] == true)
    {
        assert!(
            row["neighbours"][0]
                .as_str()
                .unwrap()
                .starts_with("dog-face/")
        );
    }
    assert!(report.same_entity > 0);
}

#[test]
fn a_rebuild_replaces_the_dataset_but_a_foreign_folder_is_refused() {
    let (tmp, first) = built();
    let out = tmp.path().join("emoji");
    let options =
        BuildOptions::new(&out, tmp.path().join("npm")).npm(tmp.path().join("no-npm-here"));
    let second = dataset::build(&options.clone().sizes(vec![64]), &|_, _| {}).unwrap();
    assert_eq!(second.renditions, first.renditions);
    assert!(!out.join("256").exists(), "the old 256 folder is gone");

    let foreign = tmp.path().join("photos");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("holiday.jpg"), b"not ours").unwrap();
    let err = dataset::build(
        &BuildOptions::new(&foreign, tmp.path().join("npm")),
        &|_, _| {},
    )
    .unwrap_err();
    assert!(matches!(err, DatasetError::NotADataset { .. }), "{err}");
    assert!(err.is_user_error());
    assert!(foreign.join("holiday.jpg").exists());
}

#[test]
fn a_missing_tarball_without_npm_names_the_command_to_run() {
    let tmp = tempfile::tempdir().unwrap();
    let options = BuildOptions::new(tmp.path().join("emoji"), tmp.path().join("npm"))
        .npm(tmp.path().join("no-npm-here"));
    let err = dataset::build(&options, &|_, _| {}).unwrap_err();
    assert!(matches!(err, DatasetError::NpmMissing { .. }), "{err}");
    assert!(
        err.to_string().contains("npm pack @twemoji/svg@15.0.0"),
        "{err}"
    );
    assert!(err.is_user_error());
}

#[test]
fn the_held_out_rule_is_the_first_byte_of_blake3_of_the_name() {
    // Golden values of design.md §6's rule, so that a change of rule (hashing the slug, another
    // threshold, title case) cannot pass silently: the real dataset holds these out.
    for name in [
        "tokyo tower",
        "steaming bowl",
        "abacus",
        "bat",
        "flag: australia",
    ] {
        assert!(is_held_out(name), "{name}");
        assert!(blake3::hash(name.as_bytes()).as_bytes()[0] < 26);
    }
    for name in ["dog face", "red heart", "flag: bhutan", "eight o’clock"] {
        assert!(!is_held_out(name), "{name}");
    }
    let held = (0..10_000)
        .filter(|i| is_held_out(&format!("entity {i}")))
        .count();
    assert!((900..1150).contains(&held), "about 26/256 of names: {held}");
}

#[test]
fn a_caption_with_a_multibyte_character_where_a_key_would_end_is_read() {
    // `import` panicked on "five o’clock, noto style": the `entity:` check sliced inside `’`.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("five-oclock");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("noto.png"), png([1, 2, 3, 255])).unwrap();
    std::fs::write(
        dir.join("noto.txt"),
        dataset::sidecar(
            "five o’clock, noto style",
            "five o’clock",
            &["clock".into()],
        ),
    )
    .unwrap();
    let text = reimagen::caption_for_file(&dir.join("noto.png"), &Default::default()).unwrap();
    assert_eq!(text.caption, "five o’clock, noto style");
    assert_eq!(text.entity.as_deref(), Some("five o’clock"));
    assert_eq!(text.tags, ["clock"]);
}
