//! Per-step time of a Re-Imagen cascade with text only (K = 0) against K neighbours with a
//! warm feature cache (issue 9 point 3; docs/generator.md §9 records the figures).
//!
//! ```text
//! cargo run --release --example reimagen_step_time -- MODEL_DIR [K] [RUNS] [STEPS]
//! cargo run --release --example reimagen_step_time   # the tiny fixture cascade: a smoke run
//! REIMAGEN_DEVICE=gpu cargo run --release --example reimagen_step_time -- MODEL_DIR
//! ```
//!
//! A step's time is the gap between two progress reports (so the once-per-generation work —
//! text states, neighbour features, keys — is not in it); both configurations run once to warm
//! up (and fill the cache), then RUNS times each, alternating; the median step is reported.
//!
//! Not here: the kernel benchmark (`benches/kernels.rs`).

use std::time::{Duration, Instant};

use image::RgbImage;
use reimagen::generate::{
    CancelToken, GenerationObserver, GenerationRequest, Generator, Neighbour, Progress, ReImagen,
};
use reimagen::tensor::Device;

#[derive(Default)]
struct StepClock {
    marks: Vec<(usize, Instant)>,
}

impl GenerationObserver for StepClock {
    fn progress(&mut self, p: &Progress) {
        self.marks.push((p.stage, Instant::now()));
    }
}

fn picture(size: u32, seed: u8) -> RgbImage {
    RgbImage::from_fn(size, size, |x, y| {
        image::Rgb([(x * 4) as u8 ^ seed, (y * 4) as u8, seed.wrapping_mul(3)])
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    // Without a folder: the random-weight fixture cascade of the tests (seconds, a smoke run).
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/reimagen").to_string();
    let folder = args.get(1).unwrap_or(&fixture);
    let k: usize = args.get(2).map_or(Ok(2), |s| s.parse())?;
    let runs: usize = args.get(3).map_or(Ok(5), |s| s.parse())?;
    let steps: usize = args.get(4).map_or(Ok(6), |s| s.parse())?;
    let device = Device::from_env()?;
    let model = ReImagen::open(std::path::Path::new(folder), &device)?;
    println!(
        "model {folder} on {}, {steps} DDIM steps, interleaved guidance, {runs} runs",
        device.name()
    );
    let requests: Vec<GenerationRequest> = [0, k]
        .into_iter()
        .map(|neighbours| {
            let mut request = GenerationRequest::new("a red heart, twemoji style");
            request.steps = vec![steps];
            request.neighbours = (0..neighbours)
                .map(|i| Neighbour::new(format!("n{i}"), picture(72, i as u8 * 50), "a heart"))
                .collect();
            request
        })
        .collect();
    // The two configurations alternate run by run, so the load of a shared machine drifts
    // over both alike.
    let mut gaps = vec![Vec::new(), Vec::new()];
    for run in 0..=runs {
        for (request, gaps) in requests.iter().zip(&mut gaps) {
            let mut clock = StepClock::default();
            model.generate(request, &mut clock, &CancelToken::new())?;
            if run == 0 {
                continue; // warm-up: pipelines, buffers, and the neighbour features cached
            }
            for pair in clock.marks.windows(2) {
                if pair[0].0 == pair[1].0 {
                    gaps.push(pair[1].1 - pair[0].1);
                }
            }
        }
    }
    let medians: Vec<Duration> = gaps.into_iter().map(median).collect();
    for (request, m) in requests.iter().zip(&medians) {
        println!(
            "K = {}: median step {:.1} ms",
            request.neighbours.len(),
            m.as_secs_f64() * 1e3
        );
    }
    let ratio = medians[1].as_secs_f64() / medians[0].as_secs_f64();
    println!(
        "K = {k} / K = 0: {ratio:.3} (overhead {:+.1}%)",
        (ratio - 1.0) * 100.0
    );
    println!("cache: {:?}", model.cache().stats());
    Ok(())
}
