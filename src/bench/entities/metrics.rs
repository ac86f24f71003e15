//! The faithfulness measures of `reimagen bench entities` that need no model — the similarity of
//! 8×8 colour layouts and the overlap (IoU) of foreground silhouettes — the cosine the CLIP
//! measures use, and the seeded bootstrap interval every mean is reported with.
//!
//! Both pixel measures compare images at [`SIZE`]×[`SIZE`] (any input is resized first), so a
//! 16-pixel fixture output, a 64-pixel rendition and a 256-pixel generation compare alike.
//!
//! Not here: the CLIP embeddings (`crate::embed`), which pairs of images are compared (the
//! benchmark, `super`).

use image::imageops::{self, FilterType};
use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// The side both pixel measures compare images at.
pub const SIZE: u32 = 64;
/// Cells per side of the colour layout.
pub const LAYOUT_CELLS: u32 = 8;
/// A pixel whose largest channel difference from the background exceeds this is foreground.
pub const FOREGROUND_THRESHOLD: u8 = 32;

/// `image` at [`SIZE`]×[`SIZE`] (unchanged when it already is).
fn at_size(image: &RgbImage) -> RgbImage {
    if image.dimensions() == (SIZE, SIZE) {
        image.clone()
    } else {
        imageops::resize(image, SIZE, SIZE, FilterType::Triangle)
    }
}

/// The 8×8 colour layout: the mean RGB of each cell of the image at [`SIZE`] pixels.
pub fn colour_layout(image: &RgbImage) -> Vec<[f32; 3]> {
    let image = at_size(image);
    let cell = SIZE / LAYOUT_CELLS;
    let mut layout = Vec::with_capacity((LAYOUT_CELLS * LAYOUT_CELLS) as usize);
    for cy in 0..LAYOUT_CELLS {
        for cx in 0..LAYOUT_CELLS {
            let mut sum = [0f32; 3];
            for y in cy * cell..(cy + 1) * cell {
                for x in cx * cell..(cx + 1) * cell {
                    let Rgb(p) = *image.get_pixel(x, y);
                    for (total, v) in sum.iter_mut().zip(p) {
                        *total += f32::from(v);
                    }
                }
            }
            let n = (cell * cell) as f32;
            layout.push(sum.map(|s| s / n));
        }
    }
    layout
}

/// Similarity of the colour layouts of `a` and `b`: 1 − the mean over the 64 cells of the RGB
/// distance between their mean colours, divided by the largest possible distance (255·√3).
/// 1 for identical layouts, 0 for black against white everywhere.
pub fn layout_similarity(a: &RgbImage, b: &RgbImage) -> f64 {
    let (la, lb) = (colour_layout(a), colour_layout(b));
    let max = 255.0 * 3f64.sqrt();
    let mean = la
        .iter()
        .zip(&lb)
        .map(|(p, q)| {
            (0..3)
                .map(|c| f64::from(p[c] - q[c]).powi(2))
                .sum::<f64>()
                .sqrt()
        })
        .sum::<f64>()
        / la.len() as f64;
    1.0 - mean / max
}

/// The background colour: the most common colour of the border pixels (quantised to 16 levels a
/// channel), as the mean of the border pixels in that bin.
pub fn background_colour(image: &RgbImage) -> [u8; 3] {
    let (w, h) = image.dimensions();
    let border = (0..w)
        .flat_map(|x| [(x, 0), (x, h - 1)])
        .chain((0..h).flat_map(|y| [(0, y), (w - 1, y)]));
    let mut bins: std::collections::HashMap<[u8; 3], (u32, [u32; 3])> =
        std::collections::HashMap::new();
    for (x, y) in border {
        let Rgb(p) = *image.get_pixel(x, y);
        let entry = bins.entry(p.map(|v| v >> 4)).or_default();
        entry.0 += 1;
        for (total, v) in entry.1.iter_mut().zip(p) {
            *total += u32::from(v);
        }
    }
    // Ties go to the smallest bin, so the choice does not depend on the map's order.
    let (_, (n, sum)) = bins
        .into_iter()
        .max_by(|(ka, (na, _)), (kb, (nb, _))| na.cmp(nb).then(kb.cmp(ka)))
        .unwrap_or(([0; 3], (1, [255; 3])));
    sum.map(|s| (s / n.max(1)) as u8)
}

/// The foreground silhouette at [`SIZE`] pixels: pixels whose largest channel difference from
/// the [`background_colour`] exceeds [`FOREGROUND_THRESHOLD`].
pub fn silhouette(image: &RgbImage) -> Vec<bool> {
    let image = at_size(image);
    let bg = background_colour(&image);
    image
        .pixels()
        .map(|Rgb(p)| (0..3).any(|c| p[c].abs_diff(bg[c]) > FOREGROUND_THRESHOLD))
        .collect()
}

/// Intersection over union of the silhouettes of `a` and `b`; 1 when both are empty (two
/// blank images agree), 0 when one is empty and the other is not.
pub fn silhouette_iou(a: &RgbImage, b: &RgbImage) -> f64 {
    let (sa, sb) = (silhouette(a), silhouette(b));
    let inter = sa.iter().zip(&sb).filter(|(x, y)| **x && **y).count();
    let union = sa.iter().zip(&sb).filter(|(x, y)| **x || **y).count();
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

/// Cosine similarity of two vectors (0 when either is all zeros).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

/// A mean with its 95% bootstrap interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Interval {
    /// The mean of the values.
    pub mean: f64,
    /// The 2.5th percentile of the resampled means.
    pub lo: f64,
    /// The 97.5th percentile of the resampled means.
    pub hi: f64,
    /// How many values (entities) it is over.
    pub n: usize,
}

impl Interval {
    /// Whether the two intervals share no point.
    pub fn disjoint(&self, other: &Interval) -> bool {
        self.lo > other.hi || other.lo > self.hi
    }
}

impl std::fmt::Display for Interval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.n == 0 {
            return f.write_str("—");
        }
        write!(f, "{:.3} [{:.3}, {:.3}]", self.mean, self.lo, self.hi)
    }
}

/// Resamples the bootstrap draws.
pub const RESAMPLES: usize = 2000;

/// The mean of `values` with a 95% percentile-bootstrap interval over [`RESAMPLES`] resamples
/// drawn by a ChaCha8 generator seeded with `seed` (the same values and seed give the same
/// interval). An empty slice gives NaNs and `n = 0`.
pub fn bootstrap(values: &[f64], seed: u64) -> Interval {
    let n = values.len();
    if n == 0 {
        return Interval {
            mean: f64::NAN,
            lo: f64::NAN,
            hi: f64::NAN,
            n,
        };
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut means: Vec<f64> = (0..RESAMPLES)
        .map(|_| (0..n).map(|_| values[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * (RESAMPLES - 1) as f64).round() as usize).min(RESAMPLES - 1)];
    Interval {
        mean,
        // The percentile interval of a skewed sample can miss the mean by a rounding; widen it
        // so that it always holds the estimate it is reported with.
        lo: at(0.025).min(mean),
        hi: at(0.975).max(mean),
        n,
    }
}
