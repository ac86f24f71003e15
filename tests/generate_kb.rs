//! Generation from a knowledge base through the library: neighbours retrieved (BM25, CLIP,
//! entity filter) or given by id, loaded into the request, run through a deterministic test
//! generator, and the record that names the KB pairs used; the errors for unknown ids, empty
//! retrievals, impossible settings, cancellation and bad model folders; the crate `Error`'s
//! conversions of the generator's and the dataset builder's errors.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{ToyEmbedder, colour_png};
use image::{Rgb, RgbImage};
use reimagen::generate::open::{check_model_folder, open_generator};
use reimagen::generate::{
    NeighbourChoice, NoObserver, Progress, Provenance, StageImages, StageInfo,
};
use reimagen::{
    CancelToken, Device, Error, GenerateError, GenerationObserver, GenerationOutput,
    GenerationRequest, Generator, KnowledgeBase, ModelError, NewPair, Query, SearchMode,
};

/// A test generator: every stage's image is the mean colour of the neighbours (weighted by
/// their weights), mid-grey without neighbours, at the stage's resolution; it reports progress
/// before every step and honours the cancel token, like a real cascade.
struct MeanOfNeighbours {
    stages: Vec<StageInfo>,
}

impl MeanOfNeighbours {
    fn new() -> Self {
        Self {
            stages: vec![
                StageInfo {
                    name: "base".into(),
                    resolution: 8,
                },
                StageInfo {
                    name: "sr".into(),
                    resolution: 16,
                },
            ],
        }
    }
}

fn mean_colour(neighbours: &[reimagen::Neighbour]) -> [u8; 3] {
    let total: f32 = neighbours.iter().map(|n| n.weight).sum();
    if total == 0.0 {
        return [128, 128, 128];
    }
    let mut sum = [0f32; 3];
    for n in neighbours {
        let pixels = (n.image.width() * n.image.height()) as f32;
        for p in n.image.pixels() {
            for c in 0..3 {
                sum[c] += n.weight * f32::from(p[c]) / pixels;
            }
        }
    }
    sum.map(|v| (v / total).round() as u8)
}

impl Generator for MeanOfNeighbours {
    fn name(&self) -> &str {
        "mean-of-neighbours"
    }

    fn stages(&self) -> Vec<StageInfo> {
        self.stages.clone()
    }

    fn generate(
        &self,
        request: &GenerationRequest,
        observer: &mut dyn GenerationObserver,
        cancel: &CancelToken,
    ) -> reimagen::generate::Result<GenerationOutput> {
        request.validate()?;
        let colour = mean_colour(&request.neighbours);
        let mut stages = Vec::new();
        for (stage, info) in self.stages.iter().enumerate() {
            let steps = request.steps_for_stage(stage)?;
            for step in 0..steps {
                if cancel.is_cancelled() {
                    return Err(GenerateError::Cancelled { stage, step });
                }
                observer.progress(&Progress {
                    stage,
                    stages: self.stages.len(),
                    step,
                    steps,
                    timestep: (steps - step) as i64,
                });
            }
            stages.push(StageImages {
                name: info.name.clone(),
                resolution: info.resolution,
                images: vec![
                    RgbImage::from_pixel(info.resolution, info.resolution, Rgb(colour));
                    request.batch_size
                ],
            });
        }
        Ok(GenerationOutput {
            stages,
            provenance: Provenance::of(self.name(), request),
        })
    }
}

/// Records every progress report.
#[derive(Default)]
struct Steps(Vec<Progress>);

impl GenerationObserver for Steps {
    fn progress(&mut self, progress: &Progress) {
        self.0.push(progress.clone());
    }
}

/// A KB with three red, three blue and two green squares; entity = colour + " thing".
fn kb_with_squares(dir: &std::path::Path) -> KnowledgeBase {
    let kb = KnowledgeBase::builder(dir)
        .create(true)
        .embedder(Arc::new(ToyEmbedder { dim: 16 }))
        .open()
        .unwrap();
    for (colour, count) in [("red", 3), ("blue", 3), ("green", 2)] {
        for seed in 0..count {
            kb.add(
                NewPair::bytes(
                    format!("{colour}-{seed}.png"),
                    colour_png(colour, seed),
                    format!("a {colour} square number {seed}"),
                )
                .entity(format!("{colour} thing")),
            )
            .unwrap();
        }
    }
    kb
}

fn request(prompt: &str) -> GenerationRequest {
    let mut r = GenerationRequest::new(prompt);
    r.steps = vec![3, 2];
    r.seed = 7;
    r
}

fn generate(
    kb: &KnowledgeBase,
    request: GenerationRequest,
    choice: &NeighbourChoice,
) -> reimagen::Result<reimagen::generate::KbGeneration> {
    kb.generate(
        &MeanOfNeighbours::new(),
        request,
        choice,
        &mut NoObserver,
        &CancelToken::new(),
    )
}

fn invalid_setting(e: &Error) -> &'static str {
    match e {
        Error::Generate(GenerateError::InvalidRequest { what, .. }) => what,
        other => panic!("expected an invalid request, got {other:?}"),
    }
}

#[test]
fn bm25_neighbours_become_the_request_and_the_record_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let kb = kb_with_squares(dir.path());
    let hits = kb.search(&Query::text("red square").k(2)).unwrap();
    assert_eq!(hits.len(), 2);

    let choice = NeighbourChoice::retrieve(2);
    let (req, selection) = kb
        .generation_request(request("red square"), &choice)
        .unwrap();
    assert!(selection.warnings.is_empty());
    assert_eq!(req.neighbours.len(), 2);
    for (n, hit) in req.neighbours.iter().zip(&hits) {
        assert_eq!(n.id, hit.id.to_hex());
        assert_eq!(n.caption, hit.caption);
        assert_eq!(n.score, Some(hit.score));
        assert_eq!(n.weight, 1.0);
        // The image is the stored one, decoded.
        let stored = image::load_from_memory(&kb.image_bytes(&hit.id).unwrap().unwrap())
            .unwrap()
            .to_rgb8();
        assert_eq!(n.image, stored);
    }

    let mut steps = Steps::default();
    let generation = kb
        .generate(
            &MeanOfNeighbours::new(),
            request("red square"),
            &choice,
            &mut steps,
            &CancelToken::new(),
        )
        .unwrap();
    // 3 steps of the base stage, then 2 of the SR stage, each reported before it runs.
    let seen: Vec<(usize, usize, usize)> =
        steps.0.iter().map(|p| (p.stage, p.step, p.steps)).collect();
    assert_eq!(
        seen,
        [(0, 0, 3), (0, 1, 3), (0, 2, 3), (1, 0, 2), (1, 1, 2)]
    );
    // The generator saw red neighbours: the output is (nearly) red.
    let out = generation.output.images()[0].get_pixel(0, 0).0;
    assert!(out[0] > 180 && out[1] < 60 && out[2] < 60, "{out:?}");

    let record = &generation.record;
    assert_eq!(record.prompt, "red square");
    assert_eq!(record.generator, "mean-of-neighbours");
    assert_eq!(record.seed, 7);
    assert_eq!(record.steps, [3, 2]);
    let retrieval = record.retrieval.as_ref().unwrap();
    assert_eq!((retrieval.mode, retrieval.k), (SearchMode::Bm25, 2));
    let ids: Vec<_> = record.neighbours.iter().map(|n| n.id).collect();
    assert_eq!(ids, hits.iter().map(|h| h.id).collect::<Vec<_>>());
    assert!(record.neighbours.iter().all(|n| n.retrievers.len() == 1));
    let stages: Vec<_> = record
        .stages
        .iter()
        .map(|s| (s.name.as_str(), s.resolution))
        .collect();
    assert_eq!(stages, [("base", 8), ("sr", 16)]);
    // The generator's own provenance names the same items.
    let provenance_ids: Vec<_> = generation
        .output
        .provenance
        .neighbours
        .iter()
        .map(|n| n.id.clone())
        .collect();
    assert_eq!(
        provenance_ids,
        hits.iter().map(|h| h.id.to_hex()).collect::<Vec<_>>()
    );

    // As JSON (what `reimagen generate` writes next to the PNG).
    let json = serde_json::to_value(record).unwrap();
    assert_eq!(json["prompt"], "red square");
    assert_eq!(json["guidance"]["mode"], "interleaved");
    assert_eq!(json["sampler"], "ddim");
    assert_eq!(json["retrieval"]["mode"], "bm25");
    let first = &json["neighbours"][0];
    assert_eq!(first["id"].as_str().unwrap(), hits[0].id.to_hex());
    assert_eq!(first["id"].as_str().unwrap().len(), 64);
    assert_eq!(first["caption"], hits[0].caption.as_str());
    assert_eq!(first["weight"], 1.0);
    assert!((first["score"].as_f64().unwrap() - f64::from(hits[0].score)).abs() < 1e-6);
    assert_eq!(first["retrievers"][0]["retriever"], "bm25");
}

#[test]
fn the_entity_filter_and_clip_mode_choose_from_the_kb() {
    let dir = tempfile::tempdir().unwrap();
    let kb = kb_with_squares(dir.path());
    // "square" matches every pair; the filter keeps the blue ones.
    let selection = kb
        .choose_neighbours("square", &NeighbourChoice::retrieve(5).entity("blue thing"))
        .unwrap();
    assert_eq!(selection.neighbours.len(), 3);
    assert!(
        selection
            .neighbours
            .iter()
            .all(|n| n.entity.as_deref() == Some("blue thing"))
    );
    // CLIP mode with the toy embedder: the colour word finds its colour.
    let selection = kb
        .choose_neighbours(
            "green",
            &NeighbourChoice::retrieve(2).mode(SearchMode::Clip),
        )
        .unwrap();
    assert_eq!(selection.neighbours.len(), 2);
    assert!(
        selection
            .neighbours
            .iter()
            .all(|n| n.entity.as_deref() == Some("green thing"))
    );
    let generation = generate(
        &kb,
        request("green"),
        &NeighbourChoice::retrieve(2).mode(SearchMode::Clip),
    )
    .unwrap();
    assert_eq!(
        generation.record.retrieval.as_ref().unwrap().mode,
        SearchMode::Clip
    );
    let out = generation.output.images()[0].get_pixel(3, 3).0;
    assert!(out[1] > 150 && out[0] < 80, "{out:?}");
}

#[test]
fn bm25_hits_far_below_the_best_are_left_out_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let kb = kb_with_squares(dir.path());
    // "red square": the three red pairs match both words; the others only `square`, a word of
    // every pair, and score far below.
    let all = kb.search(&Query::text("red square").k(5)).unwrap();
    assert_eq!(all.len(), 5);
    assert!(all[3].score < 0.75 * all[0].score, "{all:?}");

    let chosen = kb
        .choose_neighbours("red square", &NeighbourChoice::retrieve(5))
        .unwrap();
    assert_eq!(chosen.neighbours.len(), 3);
    assert!(
        chosen
            .neighbours
            .iter()
            .all(|n| n.entity.as_deref() == Some("red thing"))
    );
    assert_eq!(chosen.warnings.len(), 1);
    assert!(
        chosen.warnings[0].contains("2 of 5"),
        "{:?}",
        chosen.warnings
    );

    let everything = kb
        .choose_neighbours(
            "red square",
            &NeighbourChoice::retrieve(5).min_score_ratio(0.0),
        )
        .unwrap();
    assert_eq!(everything.neighbours.len(), 5);
    assert!(everything.warnings.is_empty());

    let generation = generate(&kb, request("red square"), &NeighbourChoice::retrieve(5)).unwrap();
    assert_eq!(generation.record.neighbours.len(), 3);
    let json = serde_json::to_value(&generation.record).unwrap();
    assert_eq!(json["retrieval"]["min_score_ratio"], 0.75);
    assert_eq!(json["warnings"].as_array().unwrap().len(), 1);

    for bad in [-0.1, 1.5, f32::NAN] {
        let err = kb
            .choose_neighbours(
                "red square",
                &NeighbourChoice::retrieve(5).min_score_ratio(bad),
            )
            .unwrap_err();
        assert_eq!(invalid_setting(&err), "min_score_ratio", "{bad}");
    }
}

#[test]
fn clip_mode_without_an_embedder_says_so() {
    let dir = tempfile::tempdir().unwrap();
    drop(kb_with_squares(dir.path()));
    let kb = KnowledgeBase::open(dir.path()).unwrap();
    let e = kb
        .choose_neighbours("red", &NeighbourChoice::retrieve(2).mode(SearchMode::Clip))
        .unwrap_err();
    assert!(
        matches!(e, Error::Model(ModelError::NoEmbedder { .. })),
        "{e:?}"
    );
    assert!(e.is_user_error());
}

#[test]
fn given_ids_are_used_in_order_with_weights_and_no_scores() {
    let dir = tempfile::tempdir().unwrap();
    let kb = kb_with_squares(dir.path());
    let blue = kb.search(&Query::text("blue").k(1)).unwrap()[0].id;
    let red = kb.search(&Query::text("red").k(1)).unwrap()[0].id;
    // A unique prefix works like the full id.
    let choice = NeighbourChoice::ids([blue.to_hex()[..10].to_string(), red.to_hex()]).weight(0.5);
    let generation = generate(&kb, request("anything at all"), &choice).unwrap();
    let record = &generation.record;
    assert!(record.retrieval.is_none());
    let ids: Vec<_> = record.neighbours.iter().map(|n| n.id).collect();
    assert_eq!(ids, [blue, red]);
    assert!(
        record
            .neighbours
            .iter()
            .all(|n| n.score.is_none() && n.retrievers.is_empty() && n.weight == 0.5)
    );
    assert_eq!(
        record.neighbours[0].caption,
        kb.get(&blue).unwrap().unwrap().caption
    );
    let json = serde_json::to_value(record).unwrap();
    assert!(json["neighbours"][0]["score"].is_null());
    assert!(json["retrieval"].is_null());
    // Red and blue averaged: the generator got both images.
    let out = generation.output.images()[0].get_pixel(0, 0).0;
    assert!(out[0] > 90 && out[2] > 90 && out[1] < 60, "{out:?}");
}

#[test]
fn unknown_and_repeated_ids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let kb = kb_with_squares(dir.path());
    let e = generate(&kb, request("x"), &NeighbourChoice::ids(["ffffffffff"])).unwrap_err();
    assert!(
        matches!(&e, Error::NotFound(id) if id == "ffffffffff"),
        "{e:?}"
    );
    assert!(e.is_user_error());
    assert!(e.to_string().contains("ffffffffff"));

    let e = generate(&kb, request("x"), &NeighbourChoice::ids(["not-an-id"])).unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e:?}");

    let red = kb.search(&Query::text("red").k(1)).unwrap()[0].id;
    let e = generate(
        &kb,
        request("x"),
        &NeighbourChoice::ids([red.to_hex(), red.to_hex()[..8].to_string()]),
    )
    .unwrap_err();
    assert_eq!(invalid_setting(&e), "neighbours");
    assert!(e.to_string().contains("given twice"), "{e}");

    let e = generate(
        &kb,
        request("x"),
        &NeighbourChoice::ids(Vec::<String>::new()),
    )
    .unwrap_err();
    assert_eq!(invalid_setting(&e), "neighbours");
}

#[test]
fn an_empty_retrieval_fails_unless_allowed_and_then_warns() {
    let dir = tempfile::tempdir().unwrap();
    let kb = kb_with_squares(dir.path());
    let e = generate(&kb, request("zebra"), &NeighbourChoice::retrieve(2)).unwrap_err();
    assert_eq!(invalid_setting(&e), "neighbours");
    assert!(e.to_string().contains("found no pairs"), "{e}");
    assert!(e.is_user_error());
    // An entity filter that matches nothing says which entity.
    let e = kb
        .choose_neighbours(
            "square",
            &NeighbourChoice::retrieve(2).entity("purple thing"),
        )
        .unwrap_err();
    assert!(e.to_string().contains("purple thing"), "{e}");

    let generation = generate(
        &kb,
        request("zebra"),
        &NeighbourChoice::retrieve(2).allow_none(true),
    )
    .unwrap();
    assert!(generation.record.neighbours.is_empty());
    assert_eq!(generation.record.warnings.len(), 1);
    assert!(generation.record.warnings[0].contains("prompt alone"));
    assert_eq!(
        generation.output.images()[0].get_pixel(0, 0).0,
        [128, 128, 128]
    );
}

#[test]
fn impossible_settings_are_refused_before_any_search() {
    let dir = tempfile::tempdir().unwrap();
    let kb = kb_with_squares(dir.path());
    let e = generate(&kb, request("red"), &NeighbourChoice::retrieve(0)).unwrap_err();
    assert_eq!(invalid_setting(&e), "k");
    let e = generate(
        &kb,
        request("red"),
        &NeighbourChoice::retrieve(2).mode(SearchMode::Image),
    )
    .unwrap_err();
    assert_eq!(invalid_setting(&e), "mode");
    let e = generate(
        &kb,
        request("red"),
        &NeighbourChoice::retrieve(2).weight(-1.0),
    )
    .unwrap_err();
    assert_eq!(invalid_setting(&e), "neighbours.weight");

    let mut bad = request("red");
    bad.guidance.eta = 2.0;
    let e = generate(&kb, bad, &NeighbourChoice::retrieve(2)).unwrap_err();
    assert_eq!(invalid_setting(&e), "guidance.eta");
    assert!(e.is_user_error());
    let mut bad = request("red");
    bad.steps = vec![4, 0];
    assert_eq!(
        invalid_setting(&generate(&kb, bad, &NeighbourChoice::retrieve(2)).unwrap_err()),
        "steps"
    );
    let mut bad = request("red");
    bad.batch_size = 0;
    assert_eq!(
        invalid_setting(&generate(&kb, bad, &NeighbourChoice::retrieve(2)).unwrap_err()),
        "batch_size"
    );
    assert_eq!(
        invalid_setting(&generate(&kb, request("  "), &NeighbourChoice::retrieve(2)).unwrap_err()),
        "prompt"
    );
}

#[test]
fn a_cancelled_generation_stops_with_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let kb = kb_with_squares(dir.path());

    /// Cancels once the second stage begins.
    struct CancelAtStage(CancelToken);
    impl GenerationObserver for CancelAtStage {
        fn progress(&mut self, p: &Progress) {
            if p.stage == 1 {
                self.0.cancel();
            }
        }
    }
    let cancel = CancelToken::new();
    let e = kb
        .generate(
            &MeanOfNeighbours::new(),
            request("red square"),
            &NeighbourChoice::retrieve(2),
            &mut CancelAtStage(cancel.clone()),
            &cancel,
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Generate(GenerateError::Cancelled { stage: 1, step: 1 })
        ),
        "{e:?}"
    );
    assert!(e.is_user_error());
}

#[test]
fn images_are_written_per_stage_and_batch_row() {
    let dir = tempfile::tempdir().unwrap();
    let kb = kb_with_squares(dir.path().join("kb").as_path());
    let mut req = request("blue square");
    req.batch_size = 2;
    let generation = generate(&kb, req, &NeighbourChoice::retrieve(2)).unwrap();
    let out = dir.path().join("out/cat.png");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let written = generation.write_images(&out, true).unwrap();
    let names: Vec<_> = written
        .iter()
        .map(|w| w.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["cat-1.base.png", "cat-2.base.png", "cat-1.png", "cat-2.png"]
    );
    assert!(written.iter().all(|w| w.path.exists()));
    let last = image::open(&written[3].path).unwrap().to_rgb8();
    assert_eq!(last.dimensions(), (16, 16));
    assert_eq!(&last, &generation.output.images()[1]);
    assert_eq!(serde_json::to_value(&written[0]).unwrap()["final"], false);

    // With the provenance next to them.
    let provenance = generation
        .write(&out, false, Path::new("models/tiny"), "cpu")
        .unwrap();
    assert_eq!(provenance.path, dir.path().join("out/cat.json"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&provenance.path).unwrap()).unwrap();
    assert_eq!(json["prompt"], "blue square");
    assert_eq!(json["seed"], 7);
    assert_eq!(json["batch_size"], 2);
    assert_eq!(json["steps"], serde_json::json!([3, 2]));
    assert_eq!(json["model"], "models/tiny");
    assert_eq!(json["device"], "cpu");
    assert_eq!(json["generator"], "mean-of-neighbours");
    let files: Vec<&str> = json["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(files.len(), 2);
    assert!(files[0].ends_with("cat-1.png") && files[1].ends_with("cat-2.png"));
    let neighbours = json["neighbours"].as_array().unwrap();
    assert_eq!(neighbours.len(), 2);
    for (n, chosen) in neighbours.iter().zip(&generation.record.neighbours) {
        assert_eq!(n["id"].as_str().unwrap(), chosen.id.to_hex());
        assert!(n["caption"].as_str().unwrap().contains("blue square"));
        assert!(n["score"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(json["stages"][1]["resolution"], 16);
    assert!(json.get("path").is_none());

    // One image, final stage only: exactly the name asked for.
    let generation = generate(&kb, request("blue square"), &NeighbourChoice::retrieve(2)).unwrap();
    let single = dir.path().join("one.png");
    let written = generation.write_images(&single, false).unwrap();
    assert_eq!(written.len(), 1);
    assert_eq!(written[0].path, single);
    assert!(written[0].final_stage);

    // A folder that does not exist: an I/O error naming the file.
    let e = generation
        .write_images(&dir.path().join("missing/x.png"), false)
        .unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("missing"), "{e}");
}

#[test]
fn bad_model_folders_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::Cpu;
    let model_error = |e: GenerateError| match e {
        GenerateError::Model { path, reason } => (path, reason),
        other => panic!("expected a model error, got {other:?}"),
    };

    let missing = dir.path().join("nowhere");
    let (path, reason) = model_error(check_model_folder(&missing).unwrap_err());
    assert_eq!(path, missing);
    assert!(reason.contains("no such folder"), "{reason}");

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (path, reason) = model_error(check_model_folder(&empty).unwrap_err());
    assert_eq!(path, empty.join("cascade.json"));
    assert!(reason.contains("missing"), "{reason}");

    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    assert!(
        model_error(check_model_folder(&file).unwrap_err())
            .1
            .contains("not a folder")
    );

    for (text, says) in [
        ("{", "not valid JSON"),
        (r#"{"stages": []}"#, "`format` is missing"),
        (r#"{"format": "diffusers", "stages": []}"#, "\"diffusers\""),
        (
            r#"{"format": "reimagen-cascade", "stages": []}"#,
            "`stages` is empty",
        ),
        (r#"{"format": "reimagen-cascade"}"#, "`stages` is missing"),
    ] {
        std::fs::write(empty.join("cascade.json"), text).unwrap();
        let (path, reason) = model_error(check_model_folder(&empty).unwrap_err());
        assert_eq!(path, empty.join("cascade.json"));
        assert!(reason.contains(says), "{text}: {reason}");
        // open_generator checks the same before loading anything.
        let e = open_generator(&empty, &device).err().expect("refused");
        assert!(model_error(e).1.contains(says));
    }
    std::fs::write(
        empty.join("cascade.json"),
        r#"{"format": "reimagen-cascade", "version": 1, "stages": [{"name": "base", "path": "base", "resolution": 64}]}"#,
    )
    .unwrap();
    check_model_folder(&empty).unwrap();

    // Converted into the crate error, a bad folder is the user's to fix.
    let e = Error::from(check_model_folder(&missing).unwrap_err());
    assert!(e.is_user_error());
    assert!(e.to_string().contains("nowhere"), "{e}");
}

#[test]
fn dataset_errors_convert_into_the_crate_error() {
    use reimagen::dataset::DatasetError;
    let e = Error::from(DatasetError::NotADataset {
        dir: "/tmp/x".into(),
        reason: "no manifest.json".into(),
    });
    assert!(matches!(e, Error::Dataset(_)), "{e:?}");
    assert!(e.is_user_error());
    assert_eq!(e.to_string(), "/tmp/x: no manifest.json");

    let e = Error::from(DatasetError::Tarball {
        path: "/tmp/a.tgz".into(),
        reason: "truncated".into(),
    });
    assert!(!e.is_user_error());

    // A KB error the builder passed on comes back as itself.
    let e = Error::from(DatasetError::Kb(Error::NotFound("abcd".into())));
    assert!(matches!(&e, Error::NotFound(id) if id == "abcd"), "{e:?}");

    // The generator's internal failures stay internal.
    let e = Error::from(GenerateError::ModelOutput {
        branches: "pn, 0".into(),
        found: vec![1],
        expected: vec![2],
    });
    assert!(!e.is_user_error());
}
