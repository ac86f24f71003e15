//! A stage's `config.json` (docs/generator.md §3): [`UNetConfig`], read strictly (unknown keys,
//! other format versions and impossible shapes are refused with the file and key named), and the
//! schedule settings it carries ([`UNetConfig::schedule`]).
//!
//! Not here: the network built from it (`unet.rs`), the cascade's `cascade.json` (`cascade.rs`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::generate::sampler::ScheduleConfig;
use crate::generate::{GenerateError, Result};
use crate::tensor::TimestepEmbedding;

/// The only `model_type` a stage may have.
pub const MODEL_TYPE: &str = "reimagen_unet";
/// The only `format_version` this loader reads.
pub const FORMAT_VERSION: u32 = 1;

/// A stage's `config.json`: every key of the reference's `UNetConfig`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UNetConfig {
    /// `"reimagen_unet"`.
    pub model_type: String,
    /// The format version (1).
    pub format_version: u32,
    /// Storage type of the shards: `"float16"` or `"float32"` (compute is f32).
    pub dtype: String,
    /// S, the stage's output resolution.
    pub sample_size: usize,
    /// Image channels in (3).
    pub in_channels: usize,
    /// Channels out (3: ε or v).
    pub out_channels: usize,
    /// `None` for a base stage, else the low-resolution input's size.
    pub low_res_size: Option<usize>,
    /// `C_i` per level; level i runs at `S / 2^i`.
    pub block_channels: Vec<usize>,
    /// ResBlocks per down level (the up levels have one more).
    pub layers_per_block: usize,
    /// Levels with a TransformerBlock after every ResBlock.
    pub attention_levels: Vec<usize>,
    /// Levels whose last down block is followed by neighbour attention.
    pub neighbour_levels: Vec<usize>,
    /// Whether the neighbour attention adds a fixed 2-D sine-cosine position code to its
    /// queries and keys (not its values), so that a pixel can find the same place in a
    /// neighbour's map. Absent in older configs: `false`.
    #[serde(default)]
    pub neighbour_positions: bool,
    /// Head size of every attention.
    pub attention_head_dim: usize,
    /// TransformerBlock feed-forward width = C · ff_mult.
    pub ff_mult: usize,
    /// GroupNorm groups.
    pub norm_groups: usize,
    /// GroupNorm ε.
    pub norm_eps: f32,
    /// LayerNorm ε.
    pub layer_norm_eps: f32,
    /// E, the timestep-embedding MLP width.
    pub time_embed_dim: usize,
    /// `[cos | sin]` order when true.
    pub time_flip_sin_to_cos: bool,
    /// diffusers' `downscale_freq_shift`.
    pub time_freq_shift: f32,
    /// The sinusoid's max period (10000).
    pub time_max_period: f32,
    /// The CLIP folder, relative to the stage folder.
    pub text_encoder: String,
    /// D_t, the CLIP text tower's hidden size.
    pub text_dim: usize,
    /// L, tokens per caption.
    pub text_max_length: usize,
    /// `"epsilon"` or `"v_prediction"`.
    pub prediction_type: String,
    /// `"linear"` or `"cosine"`.
    pub beta_schedule: String,
    /// T.
    pub num_train_timesteps: usize,
    /// The linear schedule's first β.
    pub beta_start: f64,
    /// The linear schedule's last β.
    pub beta_end: f64,
    /// `"none"`, `"clip"` or `"dynamic"`.
    pub thresholding: String,
    /// The quantile dynamic thresholding uses.
    pub dynamic_threshold_ratio: f64,
    /// The upper clamp of the dynamic threshold.
    pub sample_max_value: f64,
    #[serde(default)]
    /// SR: training draws the augmentation level from `[0, noise_aug_max)`.
    pub noise_aug_max: usize,
    #[serde(default)]
    /// SR: the augmentation level used when sampling.
    pub noise_aug_level: usize,
}

impl UNetConfig {
    /// Reads and checks `path` (a stage's `config.json`).
    ///
    /// # Errors
    /// [`GenerateError::Model`] naming the file and the key (or the JSON error) when it is
    /// missing, malformed, of another format version, or describes an impossible network.
    pub fn from_file(path: &Path) -> Result<UNetConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| model_error(path, e.to_string()))?;
        UNetConfig::from_json(&text, path)
    }

    /// Parses and checks the JSON `text` read from `path` (named in errors).
    ///
    /// # Errors
    /// As [`UNetConfig::from_file`].
    pub fn from_json(text: &str, path: &Path) -> Result<UNetConfig> {
        let config: UNetConfig =
            serde_json::from_str(text).map_err(|e| model_error(path, e.to_string()))?;
        config.validate(path)?;
        Ok(config)
    }

    /// The number of levels (`block_channels.len()`).
    pub fn levels(&self) -> usize {
        self.block_channels.len()
    }

    /// Whether this is a super-resolution stage (`low_res_size` set).
    pub fn is_super_resolution(&self) -> bool {
        self.low_res_size.is_some()
    }

    /// The channels of the last level (the bottleneck).
    pub fn bottleneck_channels(&self) -> usize {
        self.block_channels.last().copied().unwrap_or(0)
    }

    /// The neighbour feature maps this model uses, in order: `level{i}` for each neighbour
    /// level (ascending), then `mid`.
    pub fn neighbour_keys(&self) -> Vec<String> {
        let mut levels = self.neighbour_levels.clone();
        levels.sort_unstable();
        levels.dedup();
        let mut keys: Vec<String> = levels.iter().map(|i| format!("level{i}")).collect();
        keys.push("mid".into());
        keys
    }

    /// The timestep-embedding options of the config.
    pub fn timestep_embedding(&self) -> TimestepEmbedding {
        TimestepEmbedding {
            max_period: self.time_max_period,
            flip_sin_to_cos: self.time_flip_sin_to_cos,
            freq_shift: self.time_freq_shift,
        }
    }

    /// The schedule settings (the same keys, read by the sampler).
    ///
    /// # Errors
    /// [`GenerateError::Model`] when a schedule key has a value the sampler does not know.
    pub fn schedule(&self, path: &Path) -> Result<ScheduleConfig> {
        let value = serde_json::json!({
            "num_train_timesteps": self.num_train_timesteps,
            "beta_schedule": self.beta_schedule,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "prediction_type": self.prediction_type,
            "thresholding": self.thresholding,
            "dynamic_threshold_ratio": self.dynamic_threshold_ratio,
            "sample_max_value": self.sample_max_value,
        });
        serde_json::from_value(value).map_err(|e| model_error(path, e.to_string()))
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |key: &str, why: String| Err(model_error(path, format!("key `{key}` {why}")));
        if self.model_type != MODEL_TYPE {
            return bad("model_type", format!("must be {MODEL_TYPE:?}"));
        }
        if self.format_version != FORMAT_VERSION {
            return bad(
                "format_version",
                format!(
                    "is {}, this loader reads {FORMAT_VERSION}",
                    self.format_version
                ),
            );
        }
        if self.dtype != "float16" && self.dtype != "float32" {
            return bad("dtype", "must be float16 or float32".into());
        }
        if self.block_channels.is_empty() {
            return bad("block_channels", "is empty".into());
        }
        let levels = self.levels();
        let divisor = 1usize << (levels - 1).min(30);
        if self.sample_size == 0 || !self.sample_size.is_multiple_of(divisor) {
            return bad(
                "sample_size",
                format!("must be a positive multiple of 2^(levels-1) = {divisor}"),
            );
        }
        if self.in_channels != 3 || self.out_channels != 3 {
            return bad("in_channels", "and out_channels must be 3 (RGB)".into());
        }
        for (key, list) in [
            ("attention_levels", &self.attention_levels),
            ("neighbour_levels", &self.neighbour_levels),
        ] {
            if let Some(lv) = list.iter().find(|&&lv| lv >= levels) {
                return bad(key, format!("names level {lv}, the model has {levels}"));
            }
        }
        if self.attention_head_dim == 0 || self.norm_groups == 0 || self.ff_mult == 0 {
            return bad(
                "attention_head_dim",
                "norm_groups and ff_mult must be ≥ 1".into(),
            );
        }
        for (i, &ch) in self.block_channels.iter().enumerate() {
            let attended = self.attention_levels.contains(&i)
                || self.neighbour_levels.contains(&i)
                || i == levels - 1;
            if ch == 0 || (attended && !ch.is_multiple_of(self.attention_head_dim)) {
                return bad(
                    "block_channels",
                    format!("{ch} (level {i}) is not a multiple of attention_head_dim"),
                );
            }
            if !ch.is_multiple_of(self.norm_groups) {
                return bad(
                    "block_channels",
                    format!("{ch} is not a multiple of norm_groups"),
                );
            }
        }
        if self.neighbour_positions {
            let mut coded = self.neighbour_levels.clone();
            coded.push(levels - 1);
            if let Some(&lv) = coded
                .iter()
                .find(|&&lv| !self.block_channels[lv].is_multiple_of(4))
            {
                return bad(
                    "block_channels",
                    format!(
                        "{} (level {lv}, neighbour positions) is not a multiple of 4",
                        self.block_channels[lv]
                    ),
                );
            }
        }
        if self.layers_per_block == 0 {
            return bad("layers_per_block", "must be ≥ 1".into());
        }
        if self.time_embed_dim == 0 || self.text_dim == 0 || self.text_max_length == 0 {
            return bad(
                "time_embed_dim",
                "text_dim and text_max_length must be ≥ 1".into(),
            );
        }
        if let Some(r) = self.low_res_size
            && (r == 0 || r > self.sample_size)
        {
            return bad("low_res_size", "must be in 1..=sample_size".into());
        }
        if self.is_super_resolution() && self.noise_aug_level >= self.num_train_timesteps.max(1) {
            return bad(
                "noise_aug_level",
                format!(
                    "must be < num_train_timesteps ({})",
                    self.num_train_timesteps
                ),
            );
        }
        self.schedule(path)?;
        Ok(())
    }
}

/// A [`GenerateError::Model`] about `path`.
pub(crate) fn model_error(path: &Path, reason: impl Into<String>) -> GenerateError {
    GenerateError::Model {
        path: PathBuf::from(path),
        reason: reason.into(),
    }
}
