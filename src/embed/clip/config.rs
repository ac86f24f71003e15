//! [`ClipConfig`]: transformers' `CLIPConfig` as `config.json` holds it — `text_config`,
//! `vision_config`, `projection_dim` — with transformers' defaults for every key left out, so
//! openai/clip-vit-base-patch32's file and one written by `save_pretrained` today both load.
//!
//! Not here: the tokenizer's and the image processor's files (`tokenizer.rs`, `preprocess.rs`).

use std::path::Path;

use serde::Deserialize;

use super::error::ClipError;

/// The MLP activation, `hidden_act` in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `quick_gelu`: `x · σ(1.702 x)`, OpenAI's CLIP.
    QuickGelu,
    /// `gelu`: the exact (erf) form.
    Gelu,
}

impl Activation {
    fn parse(value: &str, path: &Path, key: &str) -> Result<Activation, ClipError> {
        match value {
            "quick_gelu" => Ok(Activation::QuickGelu),
            "gelu" => Ok(Activation::Gelu),
            other => Err(ClipError::Config {
                path: path.to_path_buf(),
                key: key.to_string(),
                reason: format!("activation {other:?} is not supported (quick_gelu or gelu)"),
            }),
        }
    }
}

/// The text tower: transformers' `CLIPTextConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipTextConfig {
    /// Token vocabulary size (`vocab_size`, default 49408).
    pub vocab_size: usize,
    /// Width (`hidden_size`, default 512).
    pub hidden_size: usize,
    /// MLP width (`intermediate_size`, default 2048).
    pub intermediate_size: usize,
    /// Blocks (`num_hidden_layers`, default 12).
    pub num_hidden_layers: usize,
    /// Heads (`num_attention_heads`, default 8).
    pub num_attention_heads: usize,
    /// Context length (`max_position_embeddings`, default 77).
    pub max_position_embeddings: usize,
    /// MLP activation (`hidden_act`, default `quick_gelu`).
    pub hidden_act: Activation,
    /// Layer-norm epsilon (`layer_norm_eps`, default 1e-5).
    pub layer_norm_eps: f32,
    /// `eos_token_id` (default 49407). The value 2 selects transformers' legacy pooling (the
    /// position of the largest id), as OpenAI's configs carry it.
    pub eos_token_id: u32,
}

/// The vision tower: transformers' `CLIPVisionConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipVisionConfig {
    /// Width (`hidden_size`, default 768).
    pub hidden_size: usize,
    /// MLP width (`intermediate_size`, default 3072).
    pub intermediate_size: usize,
    /// Blocks (`num_hidden_layers`, default 12).
    pub num_hidden_layers: usize,
    /// Heads (`num_attention_heads`, default 12).
    pub num_attention_heads: usize,
    /// Input channels (`num_channels`, default 3).
    pub num_channels: usize,
    /// Input side in pixels (`image_size`, default 224).
    pub image_size: usize,
    /// Patch side in pixels (`patch_size`, default 32).
    pub patch_size: usize,
    /// MLP activation (`hidden_act`, default `quick_gelu`).
    pub hidden_act: Activation,
    /// Layer-norm epsilon (`layer_norm_eps`, default 1e-5).
    pub layer_norm_eps: f32,
}

impl ClipVisionConfig {
    /// Patches per side: the convolution's stride drops a remainder, as in transformers.
    pub fn patches_per_side(&self) -> usize {
        self.image_size / self.patch_size
    }
}

/// transformers' `CLIPConfig`: both towers and the shared embedding width.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipConfig {
    /// The text tower.
    pub text: ClipTextConfig,
    /// The vision tower.
    pub vision: ClipVisionConfig,
    /// Width of the shared embedding space (`projection_dim`, default 512).
    pub projection_dim: usize,
}

#[derive(Deserialize)]
struct RawText {
    #[serde(default = "d_vocab")]
    vocab_size: usize,
    #[serde(default = "d_512")]
    hidden_size: usize,
    #[serde(default = "d_2048")]
    intermediate_size: usize,
    #[serde(default = "d_12")]
    num_hidden_layers: usize,
    #[serde(default = "d_8")]
    num_attention_heads: usize,
    #[serde(default = "d_77")]
    max_position_embeddings: usize,
    #[serde(default = "d_act")]
    hidden_act: String,
    #[serde(default = "d_eps")]
    layer_norm_eps: f32,
    #[serde(default = "d_eos")]
    eos_token_id: u32,
}

#[derive(Deserialize)]
struct RawVision {
    #[serde(default = "d_768")]
    hidden_size: usize,
    #[serde(default = "d_3072")]
    intermediate_size: usize,
    #[serde(default = "d_12")]
    num_hidden_layers: usize,
    #[serde(default = "d_12")]
    num_attention_heads: usize,
    #[serde(default = "d_3")]
    num_channels: usize,
    #[serde(default = "d_224")]
    image_size: usize,
    #[serde(default = "d_32")]
    patch_size: usize,
    #[serde(default = "d_act")]
    hidden_act: String,
    #[serde(default = "d_eps")]
    layer_norm_eps: f32,
}

#[derive(Deserialize)]
struct RawConfig {
    text_config: Option<RawText>,
    // Configs written before transformers 4.21 keep the towers here.
    text_config_dict: Option<RawText>,
    vision_config: Option<RawVision>,
    vision_config_dict: Option<RawVision>,
    #[serde(default = "d_512")]
    projection_dim: usize,
}

fn d_vocab() -> usize {
    49408
}
fn d_512() -> usize {
    512
}
fn d_2048() -> usize {
    2048
}
fn d_12() -> usize {
    12
}
fn d_8() -> usize {
    8
}
fn d_77() -> usize {
    77
}
fn d_768() -> usize {
    768
}
fn d_3072() -> usize {
    3072
}
fn d_3() -> usize {
    3
}
fn d_224() -> usize {
    224
}
fn d_32() -> usize {
    32
}
fn d_act() -> String {
    "quick_gelu".into()
}
fn d_eps() -> f32 {
    1e-5
}
fn d_eos() -> u32 {
    49407
}

impl ClipConfig {
    /// Reads `config.json` (a file, or the model folder holding it).
    ///
    /// # Errors
    /// A missing file, bad JSON, an unsupported activation, or sizes that do not fit together
    /// (a width not divisible by the head count, a patch larger than the image, a zero size).
    pub fn from_file(path: impl AsRef<Path>) -> Result<ClipConfig, ClipError> {
        let mut path = path.as_ref().to_path_buf();
        if path.is_dir() {
            path.push("config.json");
        }
        let text = std::fs::read_to_string(&path).map_err(|e| ClipError::Io {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        ClipConfig::from_json(&text, &path)
    }

    /// Parses the text of a `config.json`; `path` only names it in errors.
    ///
    /// ```
    /// use reimagen::embed::clip::{Activation, ClipConfig};
    /// let c = ClipConfig::from_json(r#"{"text_config": {"hidden_act": "gelu"}}"#, "config.json".as_ref())?;
    /// assert_eq!(c.text.hidden_act, Activation::Gelu);
    /// assert_eq!((c.vision.image_size, c.vision.patch_size, c.projection_dim), (224, 32, 512));
    /// # Ok::<(), reimagen::embed::clip::ClipError>(())
    /// ```
    ///
    /// # Errors
    /// As [`ClipConfig::from_file`].
    pub fn from_json(json: &str, path: &Path) -> Result<ClipConfig, ClipError> {
        let bad = |key: &str, reason: String| ClipError::Config {
            path: path.to_path_buf(),
            key: key.to_string(),
            reason,
        };
        let raw: RawConfig =
            serde_json::from_str(json).map_err(|e| bad("(file)", e.to_string()))?;
        // Every key has a default, so an absent tower reads as `{}`.
        let t: RawText = match raw.text_config.or(raw.text_config_dict) {
            Some(t) => t,
            None => serde_json::from_str("{}").map_err(|e| bad("text_config", e.to_string()))?,
        };
        let v: RawVision = match raw.vision_config.or(raw.vision_config_dict) {
            Some(v) => v,
            None => serde_json::from_str("{}").map_err(|e| bad("vision_config", e.to_string()))?,
        };
        let config = ClipConfig {
            text: ClipTextConfig {
                vocab_size: t.vocab_size,
                hidden_size: t.hidden_size,
                intermediate_size: t.intermediate_size,
                num_hidden_layers: t.num_hidden_layers,
                num_attention_heads: t.num_attention_heads,
                max_position_embeddings: t.max_position_embeddings,
                hidden_act: Activation::parse(&t.hidden_act, path, "text_config.hidden_act")?,
                layer_norm_eps: t.layer_norm_eps,
                eos_token_id: t.eos_token_id,
            },
            vision: ClipVisionConfig {
                hidden_size: v.hidden_size,
                intermediate_size: v.intermediate_size,
                num_hidden_layers: v.num_hidden_layers,
                num_attention_heads: v.num_attention_heads,
                num_channels: v.num_channels,
                image_size: v.image_size,
                patch_size: v.patch_size,
                hidden_act: Activation::parse(&v.hidden_act, path, "vision_config.hidden_act")?,
                layer_norm_eps: v.layer_norm_eps,
            },
            projection_dim: raw.projection_dim,
        };
        config.check().map_err(|(key, reason)| bad(key, reason))?;
        Ok(config)
    }

    fn check(&self) -> Result<(), (&'static str, String)> {
        let (t, v) = (&self.text, &self.vision);
        let positive = [
            ("text_config.vocab_size", t.vocab_size),
            ("text_config.hidden_size", t.hidden_size),
            ("text_config.intermediate_size", t.intermediate_size),
            ("text_config.num_attention_heads", t.num_attention_heads),
            (
                "text_config.max_position_embeddings",
                t.max_position_embeddings,
            ),
            ("vision_config.hidden_size", v.hidden_size),
            ("vision_config.intermediate_size", v.intermediate_size),
            ("vision_config.num_attention_heads", v.num_attention_heads),
            ("vision_config.num_channels", v.num_channels),
            ("vision_config.patch_size", v.patch_size),
            ("projection_dim", self.projection_dim),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, n)| *n == 0) {
            return Err((key, "must be at least 1".into()));
        }
        if t.hidden_size % t.num_attention_heads != 0 {
            return Err((
                "text_config.num_attention_heads",
                format!(
                    "{} heads do not divide hidden_size {}",
                    t.num_attention_heads, t.hidden_size
                ),
            ));
        }
        if v.hidden_size % v.num_attention_heads != 0 {
            return Err((
                "vision_config.num_attention_heads",
                format!(
                    "{} heads do not divide hidden_size {}",
                    v.num_attention_heads, v.hidden_size
                ),
            ));
        }
        if v.patch_size > v.image_size {
            return Err((
                "vision_config.patch_size",
                format!(
                    "patch {} is larger than image_size {}",
                    v.patch_size, v.image_size
                ),
            ));
        }
        Ok(())
    }
}
