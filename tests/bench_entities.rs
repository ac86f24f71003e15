//! `reimagen bench entities` (EntityDrawBench-mini): the pixel measures on hand-made images, the
//! bootstrap interval, the calibration on a tiny hand-drawn emoji dataset, and the whole command
//! end to end on that dataset with the fixture cascade and the fixture CLIP.
//!
//! Not here: the generator's numbers (tests/generate.rs), the dataset build (tests/dataset.rs).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use image::{Rgb, RgbImage};
use reimagen::bench::entities::metrics::{
    bootstrap, colour_layout, layout_similarity, silhouette, silhouette_iou,
};
use reimagen::bench::entities::{
    self, ArmKind, EntitiesOptions, EntitySample, Verdict, flat_grey, parse_arms,
};
use reimagen::dataset::{ManifestEntry, Split, is_held_out};
use reimagen::embed::ClipEmbedder;
use reimagen::embed::clip::WeightPrecision;

const FIXTURE_CLIP: &str = "tests/fixtures/clip/quickgelu-argmax";
const FIXTURE_CASCADE: &str = "tests/fixtures/reimagen";

/// A 64×64 white image with the rectangle [x0, x1) × [y0, y1) in `colour`.
fn rect(x0: u32, y0: u32, x1: u32, y1: u32, colour: [u8; 3]) -> RgbImage {
    RgbImage::from_fn(64, 64, |x, y| {
        if (x0..x1).contains(&x) && (y0..y1).contains(&y) {
            Rgb(colour)
        } else {
            Rgb([255, 255, 255])
        }
    })
}

#[test]
fn identical_images_score_one_and_disjoint_silhouettes_zero() {
    let a = rect(4, 4, 30, 30, [200, 30, 30]);
    let b = rect(34, 34, 60, 60, [200, 30, 30]);
    assert!((layout_similarity(&a, &a) - 1.0).abs() < 1e-12);
    assert!((silhouette_iou(&a, &a) - 1.0).abs() < 1e-12);
    assert_eq!(
        silhouette_iou(&a, &b),
        0.0,
        "disjoint shapes share no pixel"
    );
    assert!(layout_similarity(&a, &b) < 0.9);
    // Half-overlapping squares: 13·26 shared pixels of 26·26 + 13·26.
    let c = rect(17, 4, 43, 30, [200, 30, 30]);
    let iou = silhouette_iou(&a, &c);
    assert!((iou - 1.0 / 3.0).abs() < 0.02, "IoU {iou}");
    // Black against white everywhere is the farthest layout.
    let black = RgbImage::from_pixel(64, 64, Rgb([0, 0, 0]));
    let white = RgbImage::from_pixel(64, 64, Rgb([255, 255, 255]));
    assert!(layout_similarity(&black, &white).abs() < 1e-9);
    // Flat images have no foreground; two of them agree, one against a shape does not.
    assert!(silhouette(&flat_grey()).iter().all(|f| !f));
    assert_eq!(silhouette_iou(&flat_grey(), &white), 1.0);
    assert_eq!(silhouette_iou(&flat_grey(), &a), 0.0);
    // Another size is compared at 64 pixels: a 16-pixel copy scores as the original.
    let small = image::imageops::resize(&a, 16, 16, image::imageops::FilterType::Nearest);
    assert!(silhouette_iou(&small, &a) > 0.85);
    assert_eq!(colour_layout(&a).len(), 64);
}

#[test]
fn the_bootstrap_interval_holds_the_mean_and_is_reproducible() {
    let values: Vec<f64> = (0..40).map(|i| f64::from(i % 7) / 7.0).collect();
    let a = bootstrap(&values, 5);
    let b = bootstrap(&values, 5);
    assert_eq!(a, b, "same values and seed, same interval");
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    assert!((a.mean - mean).abs() < 1e-12);
    assert!(a.lo <= a.mean && a.mean <= a.hi, "{a:?}");
    assert!(a.lo < a.hi, "a spread sample has a spread interval: {a:?}");
    assert!(a.lo > 0.0 && a.hi < 1.0, "{a:?}");
    assert_eq!(a.n, 40);
    let c = bootstrap(&values, 6);
    assert_ne!(
        (a.lo, a.hi),
        (c.lo, c.hi),
        "another seed resamples differently"
    );
    let constant = bootstrap(&[0.5; 10], 1);
    assert_eq!((constant.lo, constant.mean, constant.hi), (0.5, 0.5, 0.5));
    assert_eq!(bootstrap(&[], 1).n, 0);
}

#[test]
fn arms_expand_per_k_and_unknown_names_are_refused() {
    let names = |s: &str| s.split(',').map(String::from).collect::<Vec<_>>();
    let arms = parse_arms(&names("bm25,clip,none,copy,bm25-k2"), &[2, 4], 0.5).unwrap();
    let got: Vec<&str> = arms.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(got, ["bm25-k2", "bm25-k4", "clip-k2", "none", "copy"]);
    assert!(matches!(arms[4].kind, ArmKind::Copy { .. }));
    let err = parse_arms(&names("bm25,dalle"), &[2], 0.5).unwrap_err();
    assert!(err.to_string().contains("dalle"), "{err}");
    assert!(parse_arms(&names("bm25"), &[0], 0.5).is_err());
    assert!(parse_arms(&names("clip-k0"), &[2], 0.5).is_err());
    assert_eq!("all".parse::<EntitySample>(), Ok(EntitySample::All));
    assert_eq!("7".parse::<EntitySample>(), Ok(EntitySample::Count(7)));
    assert!("0".parse::<EntitySample>().is_err());
}

/// The first `n` names `thing N` that the dataset's rule holds out (or keeps for training).
fn names(held_out: bool, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("thing {i}"))
        .filter(|name| is_held_out(name) == held_out)
        .take(n)
        .collect()
}

/// The shape of entity `i`: disjoint rectangles, so that other entities share little.
fn shape(i: usize, colour: [u8; 3]) -> RgbImage {
    let (x, y) = ((i % 3) as u32 * 20, (i / 3 % 3) as u32 * 20);
    rect(x + 2, y + 2, x + 20, y + 20, colour)
}

/// Styles: close colours, so that a style changes an entity less than another entity does.
const STYLES: [(&str, [u8; 3]); 3] = [
    ("ink", [150, 30, 30]),
    ("rust", [120, 60, 30]),
    ("plum", [130, 30, 90]),
];

/// A tiny dataset in the layout `reimagen dataset build` writes: 4 held-out and 4 train
/// entities in 3 styles at 64 pixels, with a manifest and sidecars.
fn tiny_dataset(dir: &Path) {
    let mut manifest = Vec::new();
    let all: Vec<String> = names(true, 4).into_iter().chain(names(false, 4)).collect();
    for (i, entity) in all.iter().enumerate() {
        let split = Split::of(entity);
        let slug = entity.replace(' ', "-");
        for (style, colour) in STYLES {
            let rel = format!("64/{}/{slug}/{style}.png", split.as_str());
            let path = dir.join(&rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            shape(i, colour).save(&path).unwrap();
            let caption = format!("{entity}, {style} style");
            std::fs::write(
                path.with_extension("txt"),
                format!("{caption}\nentity: {entity}\ntags: thing\n"),
            )
            .unwrap();
            manifest.push(ManifestEntry {
                id: format!("{slug}/{style}"),
                entity: entity.clone(),
                slug: slug.clone(),
                style: style.into(),
                split,
                caption,
                tags: vec!["thing".into()],
                source: "test".into(),
                license: "CC0-1.0".into(),
                files: BTreeMap::from([("64".to_string(), rel)]),
            });
        }
    }
    manifest.sort_by(|a, b| a.id.cmp(&b.id));
    let lines: Vec<String> = manifest
        .iter()
        .map(|m| serde_json::to_string(m).unwrap())
        .collect();
    std::fs::write(dir.join("manifest.jsonl"), lines.join("\n") + "\n").unwrap();
}

fn fixture_clip() -> Arc<ClipEmbedder> {
    Arc::new(ClipEmbedder::open(FIXTURE_CLIP, reimagen::Device::Cpu, WeightPrecision::F32).unwrap())
}

#[test]
fn calibration_on_a_tiny_dataset_passes_the_pixel_measures() {
    let data = tempfile::tempdir().unwrap();
    tiny_dataset(data.path());
    let work = tempfile::tempdir().unwrap();
    let clip = fixture_clip();
    let opts = EntitiesOptions {
        model: None,
        clip: clip.clone(),
        clip_folder: PathBuf::from(FIXTURE_CLIP),
        dataset: data.path().to_path_buf(),
        ks: vec![2],
        seeds: 1,
        entities: EntitySample::All,
        shard: None,
        arms: parse_arms(&["bm25".into()], &[2], 0.5).unwrap(),
        eta_sweep: false,
        steps: 1,
        max_resolution: 64,
        guidance: Default::default(),
        min_score_ratio: reimagen::generate::DEFAULT_MIN_SCORE_RATIO,
        device: reimagen::Device::Cpu,
        work: work.path().to_path_buf(),
        write_report: true,
        seed: 3,
        command: "test".into(),
    };
    let report = entities::run_entities(&opts, &|_| {}).unwrap();
    assert_eq!(report.held_out_entities, 4);
    assert_eq!(report.calibration_targets, 12, "every held-out rendition");
    assert_eq!(report.calibration.len(), 4);
    for row in &report.calibration {
        let ordered =
            row.same_entity.mean > row.other_entity.mean && row.same_entity.mean > row.grey.mean;
        assert_eq!(row.verdict == Verdict::Fail, !ordered, "{row:?}");
    }
    let by = |m: &str| report.calibration.iter().find(|r| r.metric == m).unwrap();
    // The shapes are disjoint: other entities share no foreground, grey has none.
    let iou = by("IoU");
    assert_eq!(iou.verdict, Verdict::Pass, "{iou:?}");
    assert_eq!(iou.other_entity.mean, 0.0);
    assert_eq!(iou.grey.mean, 0.0);
    assert!((iou.same_entity.mean - 1.0).abs() < 1e-9);
    let layout = by("layout");
    assert_eq!(layout.verdict, Verdict::Pass, "{layout:?}");
    assert!((layout.identical.mean - 1.0).abs() < 1e-9);
    assert!((by("CLIP-I").identical.mean - 1.0).abs() < 1e-5);
    // Calibration alone writes its report and no KB.
    let md = std::fs::read_to_string(work.path().join("report.md")).unwrap();
    assert!(
        md.contains("## Calibration") && md.contains("| IoU |"),
        "{md}"
    );
    assert!(!md.contains("## Arms"));
    assert!(report.kb.is_none());
    // The same seed gives the same table.
    let again = entities::run_entities(&opts, &|_| {}).unwrap();
    assert_eq!(again.calibration, report.calibration);
    // A cut-off that is not a share of the best score is refused, as `generate` refuses it.
    for bad in [1.5, -0.1, f32::NAN] {
        let opts = EntitiesOptions {
            min_score_ratio: bad,
            ..opts.clone()
        };
        let err = entities::run_entities(&opts, &|_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("min_score_ratio"), "{bad}: {err}");
    }
}

#[test]
fn the_command_runs_end_to_end_on_the_fixture_cascade() {
    let data = tempfile::tempdir().unwrap();
    tiny_dataset(data.path());
    let out = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_reimagen"))
            .args([
                "bench",
                "entities",
                "--model",
                FIXTURE_CASCADE,
                "--clip",
                FIXTURE_CLIP,
            ])
            .arg("--dataset")
            .arg(data.path())
            .args([
                "--k",
                "1,2",
                "--seeds",
                "2",
                "--steps",
                "2",
                "--entities",
                "2",
            ])
            .args(["--eta-sweep", "--device", "cpu", "--json", "--out"])
            .arg(out.path())
            .args(extra)
            .env_remove("REIMAGEN_KB")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "bench entities failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
    };
    let report = run(&[]);
    for key in [
        "command",
        "calibration",
        "arms",
        "comparisons",
        "eta",
        "per_case",
        "kb",
        "entities",
        "generations",
    ] {
        assert!(report.get(key).is_some(), "no `{key}` in {report}");
    }
    let arms: Vec<&str> = report["arms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["arm"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(arms, ["bm25-k1", "bm25-k2", "clip-k1", "none", "copy"]);
    for arm in report["arms"].as_array().unwrap() {
        for m in ["clip_i", "clip_t", "layout", "iou"] {
            let i = &arm["scores"][m];
            let (lo, mean, hi) = (
                i["lo"].as_f64().unwrap(),
                i["mean"].as_f64().unwrap(),
                i["hi"].as_f64().unwrap(),
            );
            assert!(lo <= mean && mean <= hi, "{arm}");
            assert_eq!(i["n"], 2, "two entities");
        }
    }
    assert_eq!(report["eta"].as_array().unwrap().len(), 5);
    assert_eq!(report["entities"].as_array().unwrap().len(), 2);
    // 2 entities × 3 styles; 4 generating arms + 4 extra η values, 2 seeds each.
    assert_eq!(report["per_case"].as_array().unwrap().len(), 6);
    assert_eq!(report["generations"], 6 * (4 + 4) * 2);
    assert_eq!(report["kb"]["pairs"], 24);
    assert_eq!(report["kb"]["built"], true);

    // Every neighbour obeys the protocol: a train rendition, or the case's own entity in
    // another style; the copy is the top BM25 neighbour.
    let manifest = std::fs::read_to_string(data.path().join("manifest.jsonl")).unwrap();
    let renditions: BTreeMap<String, ManifestEntry> = manifest
        .lines()
        .map(|l| serde_json::from_str::<ManifestEntry>(l).unwrap())
        .map(|m| (m.id.clone(), m))
        .collect();
    let mut own_entity = 0;
    for case in report["per_case"].as_array().unwrap() {
        let (entity, style) = (
            case["entity"].as_str().unwrap(),
            case["style"].as_str().unwrap(),
        );
        for (arm, ids) in case["neighbours"].as_object().unwrap() {
            let ids: Vec<&str> = ids
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            // The η arms are the primary arm (bm25-k1) at other η.
            let want = match arm.as_str() {
                "none" => 0,
                "copy" | "clip-k1" => 1,
                a if a.starts_with("bm25-k1") => 1,
                _ => 2,
            };
            assert_eq!(ids.len(), want, "{arm}: {ids:?}");
            for id in ids {
                let r = &renditions[id];
                let allowed = r.split == Split::Train || (r.entity == entity && r.style != style);
                assert!(allowed, "{arm} of {entity}/{style} got {id}");
                own_entity += usize::from(r.entity == entity);
            }
        }
        assert_eq!(
            case["neighbours"]["copy"][0], case["neighbours"]["bm25-k1"][0],
            "copy returns the top BM25 neighbour"
        );
    }
    assert!(
        own_entity > 0,
        "BM25 on the entity's name finds its other styles"
    );

    for file in ["report.md", "report.json", "eta.png", "cases.png"] {
        assert!(out.path().join(file).is_file(), "{file} written");
    }
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    for section in [
        "## Calibration",
        "## Arms",
        "## Paired differences",
        "## η sweep",
    ] {
        assert!(md.contains(section), "{section} in {md}");
    }
    let plot = image::open(out.path().join("eta.png")).unwrap().to_rgb8();
    assert!(
        plot.pixels().any(|p| p.0 == [200, 40, 40]),
        "the η points are drawn"
    );

    assert_eq!(report["reused"], 0);
    assert_eq!(
        report["stages"],
        serde_json::json!(["base (8 px)", "sr (16 px)"])
    );

    // A second run reuses the KB and every arm's result (the run resumes), with the same
    // numbers. It opens the cached KB read-only: a writer holding it (another run building it,
    // or anything else) does not stop it.
    let writer = reimagen::KnowledgeBase::builder(out.path().join("kb-64"))
        .open()
        .unwrap();
    let again = run(&[]);
    drop(writer);
    assert_eq!(again["kb"]["built"], false);
    assert_eq!(again["generations"], 0);
    assert_eq!(again["reused"], 6 * 9, "every arm of every case read back");
    assert_eq!(again["arms"], report["arms"]);
    assert_eq!(again["per_case"], report["per_case"]);

    // A case cache whose image is gone, or whose settings differ, is generated again.
    let case = &report["per_case"][0];
    let folder = out
        .path()
        .join("cases")
        .join(case["entity"].as_str().unwrap().replace(' ', "-"))
        .join(case["style"].as_str().unwrap());
    assert!(folder.join("none.json").is_file(), "{}", folder.display());
    std::fs::remove_file(folder.join("none.png")).unwrap();
    let partial = run(&[]);
    assert_eq!(partial["generations"], 2, "one arm, two seeds");
    assert_eq!(partial["per_case"], report["per_case"]);
    let other = run(&["--wn", "1.5", "--max-resolution", "8"]);
    assert_eq!(other["reused"], 0);
    assert_eq!(other["generations"], 6 * 8 * 2);
    assert_eq!(other["stages"], serde_json::json!(["base (8 px)"]));
    assert_eq!(other["guidance"]["w_n"], 1.5);
}
