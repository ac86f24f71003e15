//! Shared helpers for the integration tests: the `reimagen` binary run on a KB, small images
//! made on the fly, and a deterministic toy embedder whose image and text spaces agree on colour
//! words.
//!
//! Not here: the CLIP fixtures (`clip_support/`), the daemon harness (`watch_common/`).
#![allow(dead_code)]

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use image::{ImageFormat, Rgb, RgbImage};
use reimagen::{Embedder, ModelError};

/// The `reimagen` binary as the tests run it: on one KB (`--kb`), with `REIMAGEN_KB` unset, and
/// on the backend `device` names through `REIMAGEN_DEVICE` when set (the CLIP tests pin the CPU
/// backend so that their figures do not depend on the adapter the machine has).
#[derive(Clone, Copy, Debug)]
pub struct Cli {
    /// `REIMAGEN_DEVICE` for the run, or the binary's own choice when `None`.
    pub device: Option<&'static str>,
}

impl Cli {
    /// The binary's own device choice.
    pub const AUTO: Cli = Cli { device: None };
    /// The CPU backend.
    pub const CPU: Cli = Cli {
        device: Some("cpu"),
    };

    /// Runs `reimagen --kb KB ARGS…`.
    pub fn run(self, kb: &Path, args: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_reimagen"));
        command
            .arg("--kb")
            .arg(kb)
            .args(args)
            .env_remove("REIMAGEN_KB");
        if let Some(device) = self.device {
            command.env("REIMAGEN_DEVICE", device);
        }
        command.output().unwrap()
    }

    /// Runs it, asserts success, and returns stdout.
    pub fn ok(self, kb: &Path, args: &[&str]) -> String {
        let out = self.run(kb, args);
        assert!(
            out.status.success(),
            "reimagen {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs it, asserts success, and parses stdout as JSON.
    pub fn json(self, kb: &Path, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(kb, args)).unwrap()
    }

    /// Runs it, asserts failure, and returns stderr.
    pub fn fails(self, kb: &Path, args: &[&str]) -> String {
        let out = self.run(kb, args);
        assert!(!out.status.success(), "reimagen {args:?} should fail");
        String::from_utf8(out.stderr).unwrap()
    }
}

/// [`Cli::run`] with the binary's own device choice.
pub fn reimagen(kb: &Path, args: &[&str]) -> Output {
    Cli::AUTO.run(kb, args)
}

/// [`Cli::ok`] with the binary's own device choice.
pub fn ok(kb: &Path, args: &[&str]) -> String {
    Cli::AUTO.ok(kb, args)
}

/// [`Cli::json`] with the binary's own device choice.
pub fn json(kb: &Path, args: &[&str]) -> serde_json::Value {
    Cli::AUTO.json(kb, args)
}

/// [`Cli::fails`] with the binary's own device choice.
pub fn fails(kb: &Path, args: &[&str]) -> String {
    Cli::AUTO.fails(kb, args)
}

/// Colours the toy embedder understands, by name.
pub const COLOURS: &[(&str, [u8; 3])] = &[
    ("red", [220, 20, 20]),
    ("green", [20, 200, 40]),
    ("blue", [30, 40, 220]),
    ("yellow", [230, 220, 30]),
    ("purple", [140, 30, 160]),
    ("orange", [240, 140, 20]),
];

/// Encodes a `w`×`h` image of one colour with a seed-dependent pixel pattern (so that images of
/// the same colour still hash differently).
pub fn image_bytes(rgb: [u8; 3], seed: u32, w: u32, h: u32, format: ImageFormat) -> Vec<u8> {
    let mut img = RgbImage::from_pixel(w, h, Rgb(rgb));
    for i in 0..8u32 {
        let x = (seed.wrapping_mul(31).wrapping_add(i * 7)) % w;
        let y = (seed.wrapping_mul(17).wrapping_add(i * 3)) % h;
        img.put_pixel(x, y, Rgb([(seed % 251) as u8, (i * 30) as u8, 0]));
    }
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), format)
        .expect("encode");
    out
}

/// A PNG of a named colour.
pub fn colour_png(name: &str, seed: u32) -> Vec<u8> {
    let rgb = COLOURS
        .iter()
        .find(|(n, _)| *n == name)
        .expect("known colour")
        .1;
    image_bytes(rgb, seed, 24, 16, ImageFormat::Png)
}

/// `per_colour` pairs of each colour (a caption naming it), from seed `from` on, into `kb`.
pub fn populate(kb: &reimagen::KnowledgeBase, from: u32, per_colour: u32) {
    let mut pairs = Vec::new();
    for (name, _) in COLOURS {
        for seed in from..from + per_colour {
            pairs.push(reimagen::NewPair::bytes(
                format!("{name}-{seed}.png"),
                colour_png(name, seed),
                format!("a {name} square number {seed}"),
            ));
        }
    }
    for r in kb.add_many(pairs) {
        r.unwrap();
    }
}

/// Writes bytes to `dir/name`, creating folders.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A toy embedder: an image maps to its mean colour, a text to the mean of the colour words it
/// names, both as unit vectors in RGB space padded with a small hash-based tail, so that CLIP-mode
/// search has a real answer to find.
pub struct ToyEmbedder {
    pub dim: usize,
}

impl ToyEmbedder {
    fn finish(&self, rgb: [f32; 3], salt: u64) -> Vec<f32> {
        let mut v = vec![0.0f32; self.dim];
        v[..3].copy_from_slice(&rgb);
        // A faint deterministic tail keeps distinct inputs distinct.
        let mut x = salt | 1;
        for slot in v.iter_mut().skip(3) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *slot = ((x % 1000) as f32 / 1000.0 - 0.5) * 0.01;
        }
        let n = v.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-9);
        v.iter_mut().for_each(|a| *a /= n);
        v
    }
}

impl Embedder for ToyEmbedder {
    fn id(&self) -> String {
        format!("toy-colour/{}", self.dim)
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn embed_images(&self, images: &[image::DynamicImage]) -> Result<Vec<Vec<f32>>, ModelError> {
        images.iter().map(|i| self.embed_image(i)).collect()
    }

    fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError> {
        texts.iter().map(|t| self.embed_text(t)).collect()
    }

    fn embed_image(&self, image: &image::DynamicImage) -> Result<Vec<f32>, ModelError> {
        let rgb = image.to_rgb8();
        let n = rgb.pixels().len() as f32;
        let mut mean = [0.0f32; 3];
        for p in rgb.pixels() {
            for (m, v) in mean.iter_mut().zip(p.0) {
                *m += v as f32 / 255.0 / n;
            }
        }
        let salt = rgb.as_raw().iter().fold(1469598103934665603u64, |h, b| {
            (h ^ *b as u64).wrapping_mul(1099511628211)
        });
        Ok(self.finish(mean, salt))
    }

    fn embed_text(&self, text: &str) -> Result<Vec<f32>, ModelError> {
        let mut sum = [0.0f32; 3];
        for word in text.to_lowercase().split(|c: char| !c.is_alphanumeric()) {
            if let Some((_, rgb)) = COLOURS.iter().find(|(n, _)| *n == word) {
                for (s, v) in sum.iter_mut().zip(rgb) {
                    *s += *v as f32 / 255.0;
                }
            }
        }
        let salt = text
            .bytes()
            .fold(7u64, |h, b| (h ^ b as u64).wrapping_mul(1099511628211));
        Ok(self.finish(sum, salt))
    }
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let dest = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &dest);
        } else {
            std::fs::copy(&path, &dest).unwrap();
        }
    }
}
