//! The generator's samplers and guidance against the PyTorch reference
//! (`tests/fixtures/reimagen/{base,sr}-cases.*`, written by training/reimagen_fixtures.py):
//! the ᾱ tables and timesteps, each stored 4-step trajectory replayed step by step from the
//! stored per-branch model outputs (DDIM interleaved, DDIM standard with a negative prompt,
//! DPM-Solver++ weighted, DDPM joint with the stored noise) on both backends, every guidance
//! function against plain f64 arithmetic, thresholding, the seeded draws, request validation,
//! cancellation and a second backend implementing [`Generator`].
//!
//! Tolerances: trajectory steps within 1e-3 (docs/generator.md §8: dynamic thresholding's
//! quantile sits on sorted values); guidance and thresholding element-wise within
//! 1e-5 + 1e-5·|ref|; ᾱ within 1e-12 relative.
//!
//! Not here: the UNet (its parity tests come with it).

#[macro_use]
mod reimagen_cases;
mod tensor_support;

use image::RgbImage;
use reimagen::generate::guidance::{
    self, Branch, Guidance, GuidanceMode, InterleavedChoice, TextSource, interleaved_choice,
};
use reimagen::generate::sampler::{
    BranchModel, Draws, SamplerKind, Schedule, ScheduleConfig, SeededDraws, StageSampling,
    quantile_abs, sample_stage,
};
use reimagen::generate::{
    CancelToken, GenerateError, GenerationObserver, GenerationOutput, GenerationRequest, Generator,
    Neighbour, NoObserver, Progress, Provenance, StageImages, StageInfo, tensor_to_images,
};
use reimagen::tensor::{Device, Tensor};
use reimagen_cases::{Cases, cases};
use serde_json::Value;
use tensor_support::values;

impl Cases {
    fn schedule(&self) -> Schedule {
        let cfg: ScheduleConfig = serde_json::from_value(self.meta["config"].clone()).unwrap();
        Schedule::new(cfg).unwrap()
    }
}

fn assert_close(what: &str, got: &[f32], want: &[f32], abs: f32, rel: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= abs + rel * w.abs(),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

#[test]
fn alphas_cumprod_and_timesteps_match_the_reference() {
    for stage in ["base", "sr"] {
        let c = cases(stage);
        let s = c.schedule();
        for (t, want) in c.meta["schedule"]["alphas_cumprod_at"].as_object().unwrap() {
            let t: i64 = t.parse().unwrap();
            let want = want.as_f64().unwrap();
            let got = s.abar(t);
            assert!(
                (got - want).abs() <= 1e-12 * want.max(1e-300) + 1e-300,
                "{stage}: abar({t}) = {got}, reference {want}"
            );
        }
        for run in c.meta["trajectories"].as_object().unwrap().values() {
            let want: Vec<i64> = serde_json::from_value(run["timesteps"].clone()).unwrap();
            assert_eq!(s.timesteps(4).unwrap(), want, "{stage}");
        }
        assert_eq!(s.abar(-1), 1.0);
    }
}

#[test]
fn timesteps_round_ties_to_even_as_python() {
    let s = Schedule::new(ScheduleConfig::default()).unwrap();
    // Python: [round(1000 - i*1000/16) - 1 for i in range(16)] (937.5 → 938, 812.5 → 812).
    assert_eq!(
        s.timesteps(16).unwrap(),
        [
            999, 937, 874, 811, 749, 687, 624, 561, 499, 437, 374, 311, 249, 187, 124, 61
        ]
    );
    assert_eq!(s.timesteps(1).unwrap(), [999]);
    assert!(matches!(
        s.timesteps(0),
        Err(GenerateError::InvalidRequest { what: "steps", .. })
    ));
    assert!(s.timesteps(1001).is_err());
}

#[test]
fn impossible_schedule_configs_are_refused_by_key() {
    let bad = |cfg: ScheduleConfig, key: &str| match Schedule::new(cfg) {
        Err(GenerateError::InvalidConfig { key: k, .. }) => assert_eq!(k, key),
        other => panic!("expected InvalidConfig({key}), got {other:?}"),
    };
    bad(
        ScheduleConfig {
            num_train_timesteps: 0,
            ..Default::default()
        },
        "num_train_timesteps",
    );
    bad(
        ScheduleConfig {
            beta_end: 1.5,
            ..Default::default()
        },
        "beta_end",
    );
    bad(
        ScheduleConfig {
            dynamic_threshold_ratio: 0.0,
            ..Default::default()
        },
        "dynamic_threshold_ratio",
    );
    bad(
        ScheduleConfig {
            sample_max_value: -1.0,
            ..Default::default()
        },
        "sample_max_value",
    );
    let err = serde_json::from_str::<ScheduleConfig>(r#"{"beta_schedule": "sigmoid"}"#);
    assert!(err.is_err(), "an unknown beta schedule is refused");
}

/// Replays the stored per-branch outputs of one trajectory, checking that each call gets the
/// branches and the x the reference ran.
struct Replay<'a> {
    cases: &'a Cases,
    run: String,
    dev: Device,
    step: usize,
    calls: usize,
}

impl BranchModel for Replay<'_> {
    fn predict(
        &mut self,
        x: &Tensor,
        t: i64,
        branches: &[Branch],
    ) -> reimagen::generate::Result<Tensor> {
        let meta = &self.cases.meta["trajectories"][&self.run];
        let i = self.step;
        assert_eq!(
            t,
            meta["timesteps"][i].as_i64().unwrap(),
            "{} step {i}: timestep",
            self.run
        );
        let want: Vec<String> =
            serde_json::from_value(meta["branches_per_step"][i].clone()).unwrap();
        let got: Vec<&str> = branches.iter().map(|b| b.name()).collect();
        assert_eq!(got, want, "{} step {i}: branches", self.run);
        // x is the previous step's stored x (x_T at the first), repeated branch-major.
        let prev = if i == 0 {
            format!("{}.x_T", self.run)
        } else {
            format!("{}.x.{}", self.run, i - 1)
        };
        let prev = self.cases.tensors[&prev].1.repeat(branches.len());
        assert_close(
            &format!("{} step {i}: x in", self.run),
            &x.to_vec().unwrap(),
            &prev,
            1e-3,
            0.0,
        );
        let outs: Vec<Tensor> = branches
            .iter()
            .map(|b| {
                self.cases
                    .tensor(&format!("{}.out.{i}.{}", self.run, b.name()), &self.dev)
            })
            .collect();
        let refs: Vec<&Tensor> = outs.iter().collect();
        self.step += 1;
        self.calls += 1;
        Ok(Tensor::concat(&refs, 0)?)
    }
}

/// The stored interleaved choices as draws (0 picks ε̂_p, 1 − 2⁻⁵³ picks ε̂_n) and the stored
/// DDPM noise.
struct StoredDraws<'a> {
    cases: &'a Cases,
    run: String,
}

impl Draws for StoredDraws<'_> {
    fn uniform(&mut self, step: usize) -> f64 {
        match self.cases.meta["trajectories"][&self.run]["choices"][step].as_str() {
            Some("p") => 0.0,
            Some("n") => 1.0 - f64::EPSILON,
            other => panic!("{} step {step}: no stored choice ({other:?})", self.run),
        }
    }

    fn normal(
        &mut self,
        step: usize,
        shape: &[usize],
        device: &Device,
    ) -> reimagen::generate::Result<Tensor> {
        let z = self.cases.tensor(&format!("{}.z.{step}", self.run), device);
        assert_eq!(z.shape(), shape);
        Ok(z)
    }
}

/// Counts progress reports and previews.
#[derive(Default)]
struct Recorder {
    progress: Vec<Progress>,
    previews: usize,
    cancel_at: Option<(usize, CancelToken)>,
}

impl GenerationObserver for Recorder {
    fn progress(&mut self, p: &Progress) {
        self.progress.push(p.clone());
        if let Some((step, token)) = &self.cancel_at
            && p.step == *step
        {
            token.cancel();
        }
    }
    fn wants_preview(&self) -> bool {
        true
    }
    fn preview(&mut self, _p: &Progress, images: &[RgbImage]) {
        assert!(!images.is_empty());
        self.previews += 1;
    }
}

fn sampler_of(name: &str) -> SamplerKind {
    match name {
        "ddim" => SamplerKind::Ddim,
        "ddpm" => SamplerKind::Ddpm,
        "dpmpp" => SamplerKind::Dpmpp,
        other => panic!("unknown sampler {other}"),
    }
}

fn guidance_of(v: &Value) -> Guidance {
    let mode: GuidanceMode = serde_json::from_value(v["mode"].clone()).unwrap();
    let f = |k: &str| v[k].as_f64().unwrap() as f32;
    Guidance {
        mode,
        w: f("w"),
        w_p: f("w_p"),
        w_n: f("w_n"),
        eta: f("eta"),
    }
}

on_both_backends!(trajectories_match_the_reference_step_by_step, |dev| {
    for stage in ["base", "sr"] {
        let c = cases(stage);
        let schedule = c.schedule();
        for (run, meta) in c.meta["trajectories"].as_object().unwrap() {
            let guidance = guidance_of(&meta["guidance"]);
            let steps = meta["steps"].as_u64().unwrap() as usize;
            let x_t = c.tensor(&format!("{run}.x_T"), dev);
            // The replay checks each call's x against the stored x of the step before, so
            // every step is compared, not just the end.
            let mut model = Replay {
                cases: &c,
                run: run.clone(),
                dev: dev.clone(),
                step: 0,
                calls: 0,
            };
            let mut draws = StoredDraws {
                cases: &c,
                run: run.clone(),
            };
            let mut observer = Recorder::default();
            let sampling = StageSampling {
                schedule: &schedule,
                sampler: sampler_of(meta["sampler"].as_str().unwrap()),
                guidance: &guidance,
                steps,
                stage: 0,
                stages: 1,
            };
            let x = sample_stage(
                &sampling,
                &mut model,
                &mut draws,
                &x_t,
                &mut observer,
                &CancelToken::new(),
            )
            .unwrap_or_else(|e| panic!("{stage}/{run}: {e}"));
            assert_eq!(model.calls, steps, "{stage}/{run}: one call per step");
            let want = &c.tensors[&format!("{run}.x.{}", steps - 1)].1;
            assert_close(
                &format!("{stage}/{run} x0"),
                &x.to_vec().unwrap(),
                want,
                1e-3,
                0.0,
            );
            assert_eq!(observer.previews, steps);
            let seen: Vec<(usize, i64)> = observer
                .progress
                .iter()
                .map(|p| (p.step, p.timestep))
                .collect();
            let want: Vec<(usize, i64)> = schedule
                .timesteps(steps)
                .unwrap()
                .into_iter()
                .enumerate()
                .collect();
            assert_eq!(seen, want, "{stage}/{run}: progress before every step");
        }
    }
});

on_both_backends!(guidance_functions_match_plain_arithmetic, |dev| {
    let n = 37;
    let (pn, p, nn, z) = (values(n, 1), values(n, 2), values(n, 3), values(n, 4));
    let t = |v: &[f32]| Tensor::from_vec(v.to_vec(), &[1, n], dev).unwrap();
    let (tpn, tp, tn, tz) = (t(&pn), t(&p), t(&nn), t(&z));
    let f = |a: &[f32], b: &[f32], w: f64| -> Vec<f32> {
        a.iter()
            .zip(b)
            .map(|(&a, &b)| (w * f64::from(a) - (w - 1.0) * f64::from(b)) as f32)
            .collect()
    };
    let check = |what: &str, got: Tensor, want: Vec<f32>| {
        assert_close(what, &got.to_vec().unwrap(), &want, 1e-5, 1e-5)
    };
    check(
        "eps_hat_p",
        guidance::eps_hat_p(&tpn, &tn, 2.0).unwrap(),
        f(&pn, &nn, 2.0),
    );
    check(
        "eps_hat_n",
        guidance::eps_hat_n(&tpn, &tp, 3.5).unwrap(),
        f(&pn, &p, 3.5),
    );
    check(
        "standard",
        guidance::standard_cfg(&tpn, &tz, 7.5).unwrap(),
        f(&pn, &z, 7.5),
    );
    check(
        "standard w = 1 is joint",
        guidance::standard_cfg(&tpn, &tz, 1.0).unwrap(),
        pn.clone(),
    );
    let (hp, hn) = (f(&pn, &nn, 2.0), f(&pn, &p, 1.5));
    let mix: Vec<f32> = hp.iter().zip(&hn).map(|(a, b)| 0.3 * a + 0.7 * b).collect();
    check(
        "weighted",
        guidance::weighted(&tpn, &tn, &tp, 2.0, 1.5, 0.3).unwrap(),
        mix,
    );
    check(
        "weighted eta = 1 is eps_hat_p",
        guidance::weighted(&tpn, &tn, &tp, 2.0, 1.5, 1.0).unwrap(),
        hp.clone(),
    );

    // combine: the outputs in the order branches() gives.
    let g = Guidance::weighted(2.0, 1.5, 0.3);
    let outs = [tpn.clone(), tn.clone(), tp.clone()];
    check(
        "combine weighted",
        g.combine(&outs, None).unwrap(),
        guidance::weighted(&tpn, &tn, &tp, 2.0, 1.5, 0.3)
            .unwrap()
            .to_vec()
            .unwrap(),
    );
    let g = Guidance::interleaved(2.0, 1.5, 0.5);
    check(
        "combine interleaved p",
        g.combine(&[tpn.clone(), tn.clone()], Some(InterleavedChoice::Text))
            .unwrap(),
        hp,
    );
    check(
        "combine interleaved n",
        g.combine(
            &[tpn.clone(), tp.clone()],
            Some(InterleavedChoice::Neighbours),
        )
        .unwrap(),
        hn,
    );
    check(
        "combine standard",
        Guidance::standard(7.5)
            .combine(&[tpn.clone(), tz.clone()], None)
            .unwrap(),
        f(&pn, &z, 7.5),
    );
    check(
        "combine joint",
        Guidance::joint()
            .combine(std::slice::from_ref(&tpn), None)
            .unwrap(),
        pn.clone(),
    );
    assert!(matches!(
        Guidance::standard(2.0).combine(std::slice::from_ref(&tpn), None),
        Err(GenerateError::ModelOutput { .. })
    ));
});

#[test]
fn branches_per_mode_and_the_negative_prompt() {
    use Branch::*;
    assert_eq!(Guidance::joint().branches(None), [Both]);
    assert_eq!(Guidance::standard(2.0).branches(None), [Both, Neither]);
    let g = Guidance::interleaved(2.0, 3.0, 0.5);
    assert_eq!(
        g.branches(Some(InterleavedChoice::Text)),
        [Both, NeighboursOnly]
    );
    assert_eq!(
        g.branches(Some(InterleavedChoice::Neighbours)),
        [Both, TextOnly]
    );
    assert_eq!(
        Guidance::weighted(2.0, 3.0, 0.5).branches(None),
        [Both, NeighboursOnly, TextOnly]
    );
    assert_eq!(
        [Both, TextOnly, NeighboursOnly, Neither].map(|b| (
            b.name(),
            b.keeps_text(),
            b.keeps_neighbours()
        )),
        [
            ("pn", true, true),
            ("p", true, false),
            ("n", false, true),
            ("0", false, false)
        ]
    );
    // A negative prompt replaces the dropped text, never the prompt.
    assert_eq!(Neither.text_source(true), TextSource::Negative);
    assert_eq!(NeighboursOnly.text_source(true), TextSource::Negative);
    assert_eq!(NeighboursOnly.text_source(false), TextSource::Dropped);
    assert_eq!(Both.text_source(true), TextSource::Prompt);
    assert_eq!(TextOnly.text_source(true), TextSource::Prompt);
    // R < η picks ε̂_p.
    assert_eq!(interleaved_choice(0.49, 0.5), InterleavedChoice::Text);
    assert_eq!(interleaved_choice(0.5, 0.5), InterleavedChoice::Neighbours);
    assert_eq!(interleaved_choice(0.0, 0.0), InterleavedChoice::Neighbours);
    assert_eq!(interleaved_choice(0.999, 1.0), InterleavedChoice::Text);
}

#[test]
fn seeded_draws_are_reproducible_and_follow_eta() {
    let dev = Device::Cpu;
    let (mut a, mut b, mut c) = (
        SeededDraws::new(7),
        SeededDraws::new(7),
        SeededDraws::new(8),
    );
    let ua: Vec<f64> = (0..1000).map(|i| a.uniform(i)).collect();
    let ub: Vec<f64> = (0..1000).map(|i| b.uniform(i)).collect();
    let uc: Vec<f64> = (0..1000).map(|i| c.uniform(i)).collect();
    assert_eq!(ua, ub);
    assert_ne!(ua, uc);
    assert!(ua.iter().all(|r| (0.0..1.0).contains(r)));
    let text = ua
        .iter()
        .filter(|&&r| interleaved_choice(r, 0.3) == InterleavedChoice::Text)
        .count();
    assert!(
        (250..350).contains(&text),
        "{text} of 1000 draws below η = 0.3"
    );
    let z1 = a.normal(3, &[2, 3, 4, 4], &dev).unwrap().to_vec().unwrap();
    let z2 = b.normal(3, &[2, 3, 4, 4], &dev).unwrap().to_vec().unwrap();
    let z3 = b.normal(4, &[2, 3, 4, 4], &dev).unwrap().to_vec().unwrap();
    let x_t = Tensor::randn(&[2, 3, 4, 4], 7, &dev)
        .unwrap()
        .to_vec()
        .unwrap();
    assert_eq!(z1, z2);
    assert_ne!(z1, z3, "each step has its own noise");
    assert_ne!(z1, x_t, "step noise differs from x_T's");
}

on_both_backends!(thresholding_clip_and_dynamic, |dev| {
    // One image whose |x̂₀| quantile is known, one whose quantile is below 1 (s = 1: a clip).
    let big: Vec<f32> = (0..12).map(|i| (i as f32 - 5.5) * 0.5).collect(); // |x| up to 2.75
    let small: Vec<f32> = (0..12).map(|i| (i as f32 - 5.5) * 0.1).collect();
    let x0 = Tensor::from_vec([big.clone(), small.clone()].concat(), &[2, 3, 2, 2], dev).unwrap();
    let dynamic = Schedule::new(ScheduleConfig {
        thresholding: reimagen::generate::Thresholding::Dynamic,
        dynamic_threshold_ratio: 0.9,
        sample_max_value: 2.0,
        ..Default::default()
    })
    .unwrap();
    let s_big = quantile_abs(&big, 0.9).clamp(1.0, 2.0) as f32;
    // |big| sorted: 0.25,0.25,0.75,0.75,…,2.75,2.75; position 9.9 → 2.25 + 0.9·0.5 = 2.7 → 2.0.
    assert!((quantile_abs(&big, 0.9) - 2.7).abs() < 1e-6);
    assert_eq!(s_big, 2.0);
    let want: Vec<f32> = big
        .iter()
        .map(|v| v.clamp(-s_big, s_big) / s_big)
        .chain(small.iter().copied())
        .collect();
    assert_close(
        "dynamic",
        &dynamic.threshold(&x0).unwrap().to_vec().unwrap(),
        &want,
        1e-6,
        1e-6,
    );
    let clip = Schedule::new(ScheduleConfig {
        thresholding: reimagen::generate::Thresholding::Clip,
        ..Default::default()
    })
    .unwrap();
    let want: Vec<f32> = big
        .iter()
        .chain(&small)
        .map(|v| v.clamp(-1.0, 1.0))
        .collect();
    assert_close(
        "clip",
        &clip.threshold(&x0).unwrap().to_vec().unwrap(),
        &want,
        0.0,
        0.0,
    );
});

on_both_backends!(v_prediction_splits_consistently, |dev| {
    // From v, x̂₀ and ε̂ must satisfy x_t = √ᾱ x̂₀ + √(1−ᾱ) ε̂ and v = √ᾱ ε̂ − √(1−ᾱ) x̂₀.
    let s = Schedule::new(ScheduleConfig {
        prediction_type: reimagen::generate::PredictionType::V,
        ..Default::default()
    })
    .unwrap();
    let n = 48;
    let x_t = Tensor::from_vec(values(n, 11), &[1, 3, 4, 4], dev).unwrap();
    let v = Tensor::from_vec(values(n, 12), &[1, 3, 4, 4], dev).unwrap();
    for t in [0_i64, 37, 500, 999] {
        let p = s.split(&x_t, &v, t).unwrap();
        let a = s.abar(t);
        let (sa, sb) = (a.sqrt() as f32, (1.0 - a).sqrt() as f32);
        let back =
            p.x0.scale(sa)
                .unwrap()
                .add(&p.eps.scale(sb).unwrap())
                .unwrap();
        assert_close(
            &format!("x_t at {t}"),
            &back.to_vec().unwrap(),
            &values(n, 11),
            1e-5,
            1e-5,
        );
        let v_back = p
            .eps
            .scale(sa)
            .unwrap()
            .sub(&p.x0.scale(sb).unwrap())
            .unwrap();
        assert_close(
            &format!("v at {t}"),
            &v_back.to_vec().unwrap(),
            &values(n, 12),
            1e-5,
            1e-5,
        );
    }
});

/// A model that returns zeros, for loop-level checks.
struct Zeros;

impl BranchModel for Zeros {
    fn predict(
        &mut self,
        x: &Tensor,
        _t: i64,
        _b: &[Branch],
    ) -> reimagen::generate::Result<Tensor> {
        Ok(Tensor::zeros(x.shape(), &x.device())?)
    }
}

/// A model that returns the wrong shape.
struct Truncating;

impl BranchModel for Truncating {
    fn predict(
        &mut self,
        x: &Tensor,
        _t: i64,
        _b: &[Branch],
    ) -> reimagen::generate::Result<Tensor> {
        Ok(x.narrow(0, 0, 1)?)
    }
}

#[test]
fn cancellation_and_bad_models_stop_the_loop() {
    let dev = Device::Cpu;
    let schedule = Schedule::new(ScheduleConfig::default()).unwrap();
    let g = Guidance::standard(3.0);
    let run = StageSampling {
        schedule: &schedule,
        sampler: SamplerKind::Ddpm,
        guidance: &g,
        steps: 5,
        stage: 1,
        stages: 2,
    };
    let x = Tensor::randn(&[2, 3, 4, 4], 1, &dev).unwrap();
    let cancel = CancelToken::new();
    cancel.cancel();
    let err = sample_stage(
        &run,
        &mut Zeros,
        &mut SeededDraws::new(1),
        &x,
        &mut NoObserver,
        &cancel,
    )
    .unwrap_err();
    assert!(
        matches!(err, GenerateError::Cancelled { stage: 1, step: 0 }),
        "{err}"
    );
    // Cancelled while step 2 runs: it stops before step 3.
    let cancel = CancelToken::new();
    let mut rec = Recorder {
        cancel_at: Some((2, cancel.clone())),
        ..Recorder::default()
    };
    let err = sample_stage(
        &run,
        &mut Zeros,
        &mut SeededDraws::new(1),
        &x,
        &mut rec,
        &cancel,
    )
    .unwrap_err();
    assert!(
        matches!(err, GenerateError::Cancelled { stage: 1, step: 3 }),
        "{err}"
    );
    assert_eq!(rec.progress.len(), 3);
    let err = sample_stage(
        &run,
        &mut Truncating,
        &mut SeededDraws::new(1),
        &x,
        &mut NoObserver,
        &CancelToken::new(),
    )
    .unwrap_err();
    assert!(matches!(err, GenerateError::ModelOutput { .. }), "{err}");
    assert!(err.to_string().contains("pn, 0"), "{err}");
    // Same seed, same result (bit-identical on one device); another seed differs.
    let go = |seed| {
        sample_stage(
            &run,
            &mut Zeros,
            &mut SeededDraws::new(seed),
            &x,
            &mut NoObserver,
            &CancelToken::new(),
        )
        .unwrap()
        .to_vec()
        .unwrap()
    };
    assert_eq!(go(3), go(3));
    assert_ne!(go(3), go(4));
    let bad = Guidance {
        eta: 1.5,
        ..Guidance::default()
    };
    let run = StageSampling {
        guidance: &bad,
        ..run
    };
    let err = sample_stage(
        &run,
        &mut Zeros,
        &mut SeededDraws::new(1),
        &x,
        &mut NoObserver,
        &CancelToken::new(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            GenerateError::InvalidRequest {
                what: "guidance.eta",
                ..
            }
        ),
        "{err}"
    );
}

fn red() -> RgbImage {
    RgbImage::from_pixel(2, 2, image::Rgb([255, 0, 0]))
}

#[test]
fn requests_are_validated_by_setting() {
    let ok = GenerationRequest::new("a dog");
    ok.validate().unwrap();
    let check = |r: GenerationRequest, what: &str| match r.validate() {
        Err(GenerateError::InvalidRequest { what: w, .. }) => assert_eq!(w, what),
        other => panic!("expected InvalidRequest({what}), got {other:?}"),
    };
    check(GenerationRequest::new("  "), "prompt");
    check(
        GenerationRequest {
            steps: vec![10, 0],
            ..ok.clone()
        },
        "steps",
    );
    check(
        GenerationRequest {
            steps: vec![],
            ..ok.clone()
        },
        "steps",
    );
    check(
        GenerationRequest {
            batch_size: 0,
            ..ok.clone()
        },
        "batch_size",
    );
    check(
        GenerationRequest {
            guidance: Guidance::interleaved(2.0, 2.0, -0.1),
            ..ok.clone()
        },
        "guidance.eta",
    );
    check(
        GenerationRequest {
            guidance: Guidance::standard(f32::NAN),
            ..ok.clone()
        },
        "guidance.w",
    );
    let mut n = Neighbour::new("kb:1", red(), "a red square");
    n.weight = -1.0;
    check(
        GenerationRequest {
            neighbours: vec![n],
            ..ok.clone()
        },
        "neighbours.weight",
    );
    let per_stage = GenerationRequest {
        steps: vec![30, 20],
        ..ok.clone()
    };
    assert_eq!(per_stage.steps_for_stage(1).unwrap(), 20);
    assert!(per_stage.steps_for_stage(2).is_err());
    assert_eq!(ok.steps_for_stage(5).unwrap(), 50);
}

/// Another backend: paints every image the mean colour of the neighbours (a stand-in for an
/// external service), through the same trait.
struct MeanColour;

impl Generator for MeanColour {
    fn name(&self) -> &str {
        "mean-colour"
    }
    fn stages(&self) -> Vec<StageInfo> {
        vec![StageInfo {
            name: "only".into(),
            resolution: 4,
        }]
    }
    fn generate(
        &self,
        request: &GenerationRequest,
        observer: &mut dyn GenerationObserver,
        cancel: &CancelToken,
    ) -> reimagen::generate::Result<GenerationOutput> {
        request.validate()?;
        let steps = request.steps_for_stage(0)?;
        for step in 0..steps {
            if cancel.is_cancelled() {
                return Err(GenerateError::Cancelled { stage: 0, step });
            }
            observer.progress(&Progress {
                stage: 0,
                stages: 1,
                step,
                steps,
                timestep: 0,
            });
        }
        let x = Tensor::from_vec(
            vec![
                1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0, 0.0, 0.0, 0.0, 0.0,
            ],
            &[1, 3, 2, 2],
            &Device::Cpu,
        )?;
        let image = tensor_to_images(&x)?.remove(0);
        let images = vec![image; request.batch_size];
        Ok(GenerationOutput {
            stages: vec![StageImages {
                name: "only".into(),
                resolution: 2,
                images,
            }],
            provenance: Provenance::of(self.name(), request),
        })
    }
}

#[test]
fn another_backend_implements_the_generator_trait() {
    let generator: Box<dyn Generator> = Box::new(MeanColour);
    let mut n = Neighbour::new("kb:42", red(), "a red square");
    n.score = Some(0.8);
    n.weight = 0.5;
    let request = GenerationRequest {
        neighbours: vec![n],
        steps: vec![3],
        batch_size: 2,
        seed: 9,
        ..GenerationRequest::new("a red square")
    };
    let mut rec = Recorder::default();
    let out = generator
        .generate(&request, &mut rec, &CancelToken::new())
        .unwrap();
    assert_eq!(rec.progress.len(), 3);
    assert_eq!(out.images().len(), 2);
    // (x + 1)·127.5 rounded: 1 → 255, −1 → 0, 0 → 127.5 → 128.
    assert_eq!(out.images()[0].get_pixel(1, 1).0, [255, 0, 128]);
    assert_eq!(out.provenance.generator, "mean-colour");
    assert_eq!(out.provenance.seed, 9);
    assert_eq!(out.provenance.neighbours[0].id, "kb:42");
    assert_eq!(out.provenance.neighbours[0].score, Some(0.8));
    assert_eq!(out.provenance.neighbours[0].weight, 0.5);
    let cancel = CancelToken::new();
    cancel.cancel();
    assert!(matches!(
        generator.generate(&request, &mut NoObserver, &cancel),
        Err(GenerateError::Cancelled { step: 0, .. })
    ));
    assert!(tensor_to_images(&Tensor::zeros(&[1, 4, 2, 2], &Device::Cpu).unwrap()).is_err());
}
