//! [`ImageProcessor`]: transformers' `CLIPImageProcessor` from `preprocessor_config.json` — RGB,
//! shortest-side resize, centre crop, rescale, normalise — giving `pixel_values` `[N, C, H, W]`.
//!
//! The resize is Pillow's (what the processor's PIL backend calls), transcribed from
//! `libImaging/Resample.c`: per-output-pixel filter windows widened by the scale when shrinking,
//! coefficients normalised then rounded to 22-bit fixed point, a horizontal pass then a vertical
//! one, each rounding to 8 bits. So equal inputs give equal bytes (tests/clip_preprocess.rs
//! checks the pixels against transformers 5.24.0 with Pillow 13). The arithmetic after it copies
//! numpy's: rescale in f64 then f32, normalise in f32.
//!
//! Not here: image decoding (the caller's `image::DynamicImage`), the model (`vision.rs`).

use std::path::Path;

use image::DynamicImage;
use serde::Deserialize;

use super::error::ClipError;

/// Pillow's resampling filters, as the config's `resample` numbers them (nearest, 0, is not
/// supported).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    /// `2`.
    Bilinear,
    /// `3` (CLIP's).
    Bicubic,
    /// `1`.
    Lanczos,
}

impl Resample {
    /// Half-width of the filter at scale 1, and the filter.
    fn filter(self) -> (f64, fn(f64) -> f64) {
        match self {
            Resample::Bilinear => (1.0, |x: f64| {
                let x = x.abs();
                if x < 1.0 { 1.0 - x } else { 0.0 }
            }),
            Resample::Bicubic => (2.0, |x: f64| {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }),
            Resample::Lanczos => (3.0, |x: f64| {
                let sinc = |x: f64| {
                    if x == 0.0 {
                        1.0
                    } else {
                        let x = x * std::f64::consts::PI;
                        x.sin() / x
                    }
                };
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }),
        }
    }
}

/// How the resize picks its output size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeTo {
    /// The shorter side becomes this, the longer keeps the aspect ratio (rounded down).
    ShortestEdge(usize),
    /// Exactly this height and width.
    Exact {
        /// Rows.
        height: usize,
        /// Columns.
        width: usize,
    },
}

/// `CLIPImageProcessor`'s settings. By default (every key absent) it is OpenAI's: bicubic resize
/// of the shortest edge to 224, centre crop 224 × 224, rescale by 1/255, OpenAI's mean and std.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
    /// `do_resize` and `size`; `None` when resizing is off.
    pub resize: Option<ResizeTo>,
    /// `resample`.
    pub resample: Resample,
    /// `do_center_crop` and `crop_size` as (height, width); `None` when cropping is off.
    pub crop: Option<(usize, usize)>,
    /// `do_rescale` and `rescale_factor`; `None` when off.
    pub rescale: Option<f64>,
    /// `do_normalize`, `image_mean` and `image_std`; `None` when off.
    pub normalize: Option<([f32; 3], [f32; 3])>,
}

/// OpenAI's CLIP mean and std (transformers' `OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD`).
const OPENAI_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
// transformers writes 0.26130258 and 0.27577711; these are the same f32 values.
const OPENAI_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

#[derive(Deserialize)]
#[serde(untagged)]
enum RawSize {
    Square(usize),
    Dict {
        shortest_edge: Option<usize>,
        height: Option<usize>,
        width: Option<usize>,
    },
}

#[derive(Deserialize)]
struct RawProcessor {
    do_resize: Option<bool>,
    size: Option<RawSize>,
    resample: Option<u32>,
    do_center_crop: Option<bool>,
    crop_size: Option<RawSize>,
    do_rescale: Option<bool>,
    rescale_factor: Option<f64>,
    do_normalize: Option<bool>,
    image_mean: Option<Vec<f32>>,
    image_std: Option<Vec<f32>>,
}

impl Default for ImageProcessor {
    fn default() -> Self {
        ImageProcessor {
            resize: Some(ResizeTo::ShortestEdge(224)),
            resample: Resample::Bicubic,
            crop: Some((224, 224)),
            rescale: Some(1.0 / 255.0),
            normalize: Some((OPENAI_MEAN, OPENAI_STD)),
        }
    }
}

impl ImageProcessor {
    /// Reads `preprocessor_config.json` (a file, or the model folder holding it).
    ///
    /// # Errors
    /// A missing file, bad JSON, or an unsupported value (naming the key).
    pub fn from_file(path: impl AsRef<Path>) -> Result<ImageProcessor, ClipError> {
        let mut path = path.as_ref().to_path_buf();
        if path.is_dir() {
            path.push("preprocessor_config.json");
        }
        let text = std::fs::read_to_string(&path).map_err(|e| ClipError::Io {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        ImageProcessor::from_json(&text, &path)
    }

    /// Parses the text of a `preprocessor_config.json`; `path` only names it in errors. An int
    /// `size` means the shortest edge and an int `crop_size` a square, as in old CLIP configs.
    ///
    /// ```
    /// use reimagen::embed::clip::{ImageProcessor, ResizeTo};
    /// let p = ImageProcessor::from_json(r#"{"size": 224, "crop_size": 224}"#, "p.json".as_ref())?;
    /// assert_eq!(p.resize, Some(ResizeTo::ShortestEdge(224)));
    /// assert_eq!(p.crop, Some((224, 224)));
    /// # Ok::<(), reimagen::embed::clip::ClipError>(())
    /// ```
    ///
    /// # Errors
    /// As [`ImageProcessor::from_file`].
    pub fn from_json(json: &str, path: &Path) -> Result<ImageProcessor, ClipError> {
        let bad = |key: &str, reason: String| ClipError::Config {
            path: path.to_path_buf(),
            key: key.to_string(),
            reason,
        };
        let raw: RawProcessor =
            serde_json::from_str(json).map_err(|e| bad("(file)", e.to_string()))?;
        let defaults = ImageProcessor::default();
        let resize = match (raw.do_resize.unwrap_or(true), raw.size) {
            (false, _) => None,
            (true, None) => defaults.resize,
            (true, Some(RawSize::Square(s))) => Some(ResizeTo::ShortestEdge(s)),
            (
                true,
                Some(RawSize::Dict {
                    shortest_edge: Some(s),
                    ..
                }),
            ) => Some(ResizeTo::ShortestEdge(s)),
            (
                true,
                Some(RawSize::Dict {
                    height: Some(height),
                    width: Some(width),
                    ..
                }),
            ) => Some(ResizeTo::Exact { height, width }),
            (true, Some(_)) => {
                return Err(bad(
                    "size",
                    "needs shortest_edge, or height and width".into(),
                ));
            }
        };
        let resample = match raw.resample.unwrap_or(3) {
            1 => Resample::Lanczos,
            2 => Resample::Bilinear,
            3 => Resample::Bicubic,
            other => {
                return Err(bad(
                    "resample",
                    format!("Pillow filter {other} is not supported"),
                ));
            }
        };
        let crop = match (raw.do_center_crop.unwrap_or(true), raw.crop_size) {
            (false, _) => None,
            (true, None) => defaults.crop,
            (true, Some(RawSize::Square(s))) => Some((s, s)),
            (
                true,
                Some(RawSize::Dict {
                    height: Some(h),
                    width: Some(w),
                    ..
                }),
            ) => Some((h, w)),
            (true, Some(_)) => return Err(bad("crop_size", "needs height and width".into())),
        };
        let rescale = raw
            .do_rescale
            .unwrap_or(true)
            .then(|| raw.rescale_factor.unwrap_or(1.0 / 255.0));
        let triple = |key: &str, v: Option<Vec<f32>>, default: [f32; 3]| match v {
            None => Ok(default),
            Some(v) => <[f32; 3]>::try_from(v.as_slice())
                .map_err(|_| bad(key, format!("needs 3 values (RGB), got {}", v.len()))),
        };
        let normalize = if raw.do_normalize.unwrap_or(true) {
            let mean = triple("image_mean", raw.image_mean, OPENAI_MEAN)?;
            let std = triple("image_std", raw.image_std, OPENAI_STD)?;
            if std.contains(&0.0) {
                return Err(bad("image_std", "a standard deviation of 0".into()));
            }
            Some((mean, std))
        } else {
            None
        };
        let processor = ImageProcessor {
            resize,
            resample,
            crop,
            rescale,
            normalize,
        };
        if matches!(
            processor.resize,
            Some(ResizeTo::ShortestEdge(0))
                | Some(ResizeTo::Exact { height: 0, .. })
                | Some(ResizeTo::Exact { width: 0, .. })
        ) {
            return Err(bad("size", "a size of 0".into()));
        }
        if matches!(processor.crop, Some((0, _)) | Some((_, 0))) {
            return Err(bad("crop_size", "a size of 0".into()));
        }
        Ok(processor)
    }

    /// The (height, width) every image comes out with, when the settings fix one (a crop or an
    /// exact resize).
    pub fn output_size(&self) -> Option<(usize, usize)> {
        match (self.crop, self.resize) {
            (Some(hw), _) => Some(hw),
            (None, Some(ResizeTo::Exact { height, width })) => Some((height, width)),
            _ => None,
        }
    }

    /// Preprocesses one image into `[3, H, W]` floats, channel-first.
    ///
    /// # Errors
    /// An empty image, or a resize the resampler refuses.
    pub fn pixels(&self, image: &DynamicImage) -> Result<(Vec<f32>, usize, usize), ClipError> {
        let rgb = image.to_rgb8();
        let (mut w, mut h) = (rgb.width() as usize, rgb.height() as usize);
        if w == 0 || h == 0 {
            return Err(ClipError::Input(format!("an empty image ({w}×{h})")));
        }
        let mut bytes = rgb.into_raw();
        if let Some(to) = self.resize {
            let (nh, nw) = match to {
                ResizeTo::Exact { height, width } => (height, width),
                ResizeTo::ShortestEdge(s) => {
                    // transformers: int(size * long / short), in Python floats.
                    let (short, long) = if w <= h { (w, h) } else { (h, w) };
                    let long = (s as f64 * long as f64 / short as f64) as usize;
                    if w <= h { (long, s) } else { (s, long) }
                }
            };
            bytes = self.resize_rgb(bytes, (w, h), (nw.max(1), nh.max(1)))?;
            (w, h) = (nw.max(1), nh.max(1));
        }
        let (oh, ow) = self.crop.unwrap_or((h, w));
        // numpy's centre crop: floor division (negative when the crop is larger, which pads
        // with zeros, i.e. 0 before rescaling).
        let top = (h as i64 - oh as i64).div_euclid(2);
        let left = (w as i64 - ow as i64).div_euclid(2);
        let mut out = vec![0f32; 3 * oh * ow];
        for c in 0..3 {
            let (mean, std) = self.normalize.map_or((0.0, 1.0), |(m, s)| (m[c], s[c]));
            for y in 0..oh {
                let sy = top + y as i64;
                for x in 0..ow {
                    let sx = left + x as i64;
                    let byte = if (0..h as i64).contains(&sy) && (0..w as i64).contains(&sx) {
                        bytes[(sy as usize * w + sx as usize) * 3 + c]
                    } else {
                        0
                    };
                    let v = match self.rescale {
                        Some(factor) => (byte as f64 * factor) as f32,
                        None => byte as f32,
                    };
                    out[(c * oh + y) * ow + x] = if self.normalize.is_some() {
                        (v - mean) / std
                    } else {
                        v
                    };
                }
            }
        }
        Ok((out, oh, ow))
    }

    fn resize_rgb(
        &self,
        bytes: Vec<u8>,
        (w, h): (usize, usize),
        (nw, nh): (usize, usize),
    ) -> Result<Vec<u8>, ClipError> {
        Ok(pillow_resize(&bytes, (w, h), (nw, nh), self.resample))
    }
}

/// Fixed-point precision of Pillow's 8-bit resampler (`PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// One axis of Pillow's resampling: for each output index, the first input index and the
/// fixed-point weights of its window (`precompute_coeffs` + `normalize_coeffs_8bpc`).
fn pillow_coefficients(input: usize, output: usize, resample: Resample) -> Vec<(usize, Vec<i32>)> {
    let (support, filter) = resample.filter();
    let scale = input as f64 / output as f64;
    let filterscale = scale.max(1.0);
    let support = support * filterscale;
    (0..output)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) casts truncate toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(input as i64) as usize;
            let weights: Vec<f64> = (xmin..xmax)
                .map(|x| filter((x as f64 - center + 0.5) / filterscale))
                .collect();
            let total: f64 = weights.iter().sum();
            let fixed = weights
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w };
                    let v = w * (1u32 << PRECISION_BITS) as f64;
                    (if v < 0.0 { v - 0.5 } else { v + 0.5 }) as i32
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's `ImagingResample` on packed RGB: the horizontal pass first (over the rows the
/// vertical pass will read), then the vertical one, each rounding to 8 bits; an axis whose size
/// does not change is not resampled.
fn pillow_resize(
    rgb: &[u8],
    (w, h): (usize, usize),
    (nw, nh): (usize, usize),
    resample: Resample,
) -> Vec<u8> {
    let vertical = (nh != h).then(|| pillow_coefficients(h, nh, resample));
    // Rows the vertical pass reads.
    let (first_row, last_row) = match &vertical {
        Some(v) => (v[0].0, v.last().map_or(h, |(y0, k)| y0 + k.len())),
        None => (0, h),
    };
    let rounding = 1i64 << (PRECISION_BITS - 1);
    let temp: Vec<u8>;
    let (source, width, row_offset) = if nw != w {
        let horizontal = pillow_coefficients(w, nw, resample);
        let mut out = vec![0u8; (last_row - first_row) * nw * 3];
        for (y, row_out) in out.chunks_mut(nw * 3).enumerate() {
            let row_in = &rgb[(first_row + y) * w * 3..][..w * 3];
            for (xx, (x0, k)) in horizontal.iter().enumerate() {
                for c in 0..3 {
                    let acc = k.iter().enumerate().fold(rounding, |acc, (i, &kv)| {
                        acc + row_in[(x0 + i) * 3 + c] as i64 * kv as i64
                    });
                    row_out[xx * 3 + c] = clip8(acc);
                }
            }
        }
        temp = out;
        (temp.as_slice(), nw, first_row)
    } else {
        (rgb, w, 0)
    };
    let Some(vertical) = vertical else {
        return source.to_vec();
    };
    let mut out = vec![0u8; nh * width * 3];
    for (yy, (y0, k)) in vertical.iter().enumerate() {
        for x in 0..width * 3 {
            let acc = k.iter().enumerate().fold(rounding, |acc, (i, &kv)| {
                acc + source[(y0 - row_offset + i) * width * 3 + x] as i64 * kv as i64
            });
            out[yy * width * 3 + x] = clip8(acc);
        }
    }
    out
}
