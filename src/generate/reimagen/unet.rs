//! The Re-Imagen UNet (docs/generator.md §4–§5): [`UNet::new`] loads a stage's checkpoint by
//! the spec's tensor names, [`UNet::encode_neighbours`] runs the neighbours through the DStack
//! at t = 0, [`UNet::neighbour_context`] turns their feature maps into the neighbour
//! attentions' keys (once per generation), and [`UNet::forward`] is one call: DStack with text
//! and neighbour cross-attention, bottleneck, UStack with the skips, ε or v.
//!
//! Not here: the blocks (`blocks.rs`), the text encoder (`text.rs`), sampling and the cascade
//! (`cascade.rs`).

use std::path::Path;

use crate::generate::{GenerateError, Result};
use crate::tensor::nn::{Conv2d, GroupNorm};
use crate::tensor::{Device, Tensor, TensorError, Weights};

use super::blocks::{NeighbourAttention, NeighbourKeys, ResBlock, TimeMlp, TransformerBlock};
use super::config::{UNetConfig, model_error};

/// A batch of text conditions: the CLIP text tower's last hidden states and which tokens are
/// real.
#[derive(Debug, Clone)]
pub struct TextCondition {
    /// `[N, L, D_t]`, padded rows zero.
    pub states: Tensor,
    /// `N × L`, row-major: 1 for a real token, 0 for padding (all 0: the text is dropped).
    pub valid: Vec<f32>,
}

impl TextCondition {
    /// Rows of the batch.
    pub fn len(&self) -> usize {
        self.states.shape().first().copied().unwrap_or(0)
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same rows with every token marked invalid: the dropped text.
    pub fn dropped(&self) -> TextCondition {
        TextCondition {
            states: self.states.clone(),
            valid: vec![0.0; self.valid.len()],
        }
    }

    /// Row `i` repeated `times` times.
    ///
    /// # Errors
    /// When `i` is out of the batch.
    pub fn repeat_row(&self, i: usize, times: usize) -> Result<TextCondition> {
        let row = self.states.narrow(0, i, 1)?;
        let l = self.valid.len() / self.len().max(1);
        let rows: Vec<&Tensor> = (0..times).map(|_| &row).collect();
        Ok(TextCondition {
            states: Tensor::concat(&rows, 0)?,
            valid: self.valid[i * l..(i + 1) * l].repeat(times),
        })
    }

    /// The batches one after another.
    ///
    /// # Errors
    /// When the parts do not fit together.
    pub fn concat(parts: &[&TextCondition]) -> Result<TextCondition> {
        let states: Vec<&Tensor> = parts.iter().map(|p| &p.states).collect();
        Ok(TextCondition {
            states: Tensor::concat(&states, 0)?,
            valid: parts.iter().flat_map(|p| p.valid.iter().copied()).collect(),
        })
    }
}

/// The neighbour pass's output: one feature map per key of [`UNetConfig::neighbour_keys`]
/// (`level{i}`…, `mid`), each `[K, C, h, w]`.
#[derive(Debug, Clone)]
pub struct NeighbourFeatures {
    /// `(key, map)` in the config's order.
    pub maps: Vec<(String, Tensor)>,
}

impl NeighbourFeatures {
    /// The number of neighbours (0 when there are none).
    pub fn count(&self) -> usize {
        self.maps
            .first()
            .map_or(0, |(_, m)| m.shape().first().copied().unwrap_or(0))
    }

    /// The map of `key`.
    pub fn get(&self, key: &str) -> Option<&Tensor> {
        self.maps.iter().find(|(k, _)| k == key).map(|(_, m)| m)
    }

    /// Neighbour `i`'s maps alone (`[1, C, h, w]` each).
    ///
    /// # Errors
    /// When `i` is out of range.
    pub fn row(&self, i: usize) -> Result<NeighbourFeatures> {
        let maps = self
            .maps
            .iter()
            .map(|(k, m)| Ok((k.clone(), m.narrow(0, i, 1)?)))
            .collect::<Result<_>>()?;
        Ok(NeighbourFeatures { maps })
    }

    /// The neighbours of `parts`, one after another (K = the sum).
    ///
    /// # Errors
    /// When the parts' keys or shapes differ.
    pub fn concat(parts: &[&NeighbourFeatures]) -> Result<NeighbourFeatures> {
        let Some(first) = parts.first() else {
            return Ok(NeighbourFeatures { maps: Vec::new() });
        };
        let maps = first
            .maps
            .iter()
            .enumerate()
            .map(|(i, (key, _))| {
                let maps: Vec<&Tensor> = parts.iter().map(|p| &p.maps[i].1).collect();
                Ok((key.clone(), Tensor::concat(&maps, 0)?))
            })
            .collect::<Result<_>>()?;
        Ok(NeighbourFeatures { maps })
    }
}

/// The neighbour attentions' keys and values for a set of K neighbours, made once per
/// generation by [`UNet::neighbour_context`].
#[derive(Debug, Clone)]
pub struct NeighbourContext {
    levels: Vec<(usize, NeighbourKeys)>,
    mid: NeighbourKeys,
    count: usize,
}

impl NeighbourContext {
    /// K, the neighbours it holds.
    pub fn count(&self) -> usize {
        self.count
    }
}

/// One UNet call's inputs (B rows).
#[derive(Debug, Clone, Copy)]
pub struct UNetInput<'a> {
    /// x_t `[B, 3, S, S]`.
    pub x_t: &'a Tensor,
    /// The (float) timestep of each row.
    pub t: &'a [f32],
    /// The text of each row (B rows).
    pub text: &'a TextCondition,
    /// The neighbours' keys (K neighbours, shared by every row).
    pub neighbours: &'a NeighbourContext,
    /// The neighbour weights, `B × K` row-major (a row of zeros drops the neighbours).
    pub weights: &'a [f32],
    /// SR stages: the already noise-augmented low-resolution image `[B, 3, r, r]`.
    pub low_res: Option<&'a Tensor>,
    /// SR stages: the augmentation level of each row.
    pub aug: Option<&'a [f32]>,
}

#[derive(Debug, Clone)]
struct DownLevel {
    res: Vec<ResBlock>,
    attn: Vec<TransformerBlock>,
    neighbour_attn: Option<NeighbourAttention>,
    downsample: Option<Conv2d>,
}

#[derive(Debug, Clone)]
struct UpLevel {
    res: Vec<ResBlock>,
    attn: Vec<TransformerBlock>,
    upsample: Option<Conv2d>,
}

/// The Re-Imagen UNet of one stage.
#[derive(Debug, Clone)]
pub struct UNet {
    config: UNetConfig,
    conv_in: Conv2d,
    time_embed: TimeMlp,
    aug_embed: Option<TimeMlp>,
    null_text: Tensor,
    down: Vec<DownLevel>,
    mid_res: [ResBlock; 2],
    mid_attn: TransformerBlock,
    mid_neighbour_attn: NeighbourAttention,
    up: Vec<UpLevel>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    device: Device,
}

/// What the DStack hands on: `h`, the skips, and (neighbour pass) the features.
struct DStackOut {
    h: Tensor,
    skips: Vec<Tensor>,
    features: Vec<(String, Tensor)>,
}

impl UNet {
    /// Loads a stage folder (`config.json` + the safetensors of
    /// `model.safetensors.index.json`) onto `device`.
    ///
    /// # Errors
    /// [`GenerateError::Model`] naming the file and the key or tensor (missing, mis-shaped).
    pub fn open(folder: &Path, device: &Device) -> Result<UNet> {
        let config = UNetConfig::from_file(&folder.join("config.json"))?;
        let weights =
            Weights::open(folder, device).map_err(|e| model_error(folder, e.to_string()))?;
        UNet::new(weights, config).map_err(|e| match e {
            GenerateError::Tensor(e) => model_error(folder, e.to_string()),
            other => other,
        })
    }

    /// Builds the network of `config` from `vb`, loading every tensor by its spec name.
    ///
    /// # Errors
    /// A missing or mis-shaped tensor (the runtime names it and its file).
    pub fn new(vb: Weights, config: UNetConfig) -> Result<UNet> {
        let cfg = &config;
        let ch = &cfg.block_channels;
        let c0 = ch[0];
        let temb = cfg.time_embed_dim;
        let cin = cfg.in_channels * if cfg.is_super_resolution() { 2 } else { 1 };
        let conv_in = Conv2d::new(vb.pp("conv_in"), cin, c0, 3, 1, 1, true)?;
        let time_embed = TimeMlp::new(vb.pp("time_embed"), c0, temb)?;
        let aug_embed = match cfg.is_super_resolution() {
            true => Some(TimeMlp::new(vb.pp("aug_embed"), c0, temb)?),
            false => None,
        };
        let null_text = vb.get("null_text", &[1, cfg.text_dim])?;

        let mut skips = vec![c0];
        let mut cur = c0;
        let mut down = Vec::with_capacity(ch.len());
        for (i, &c) in ch.iter().enumerate() {
            let lv = vb.pp("down").pp(i);
            let mut res = Vec::new();
            let mut attn = Vec::new();
            for j in 0..cfg.layers_per_block {
                res.push(ResBlock::new(lv.pp("res").pp(j), cur, c, cfg)?);
                cur = c;
                if cfg.attention_levels.contains(&i) {
                    attn.push(TransformerBlock::new(lv.pp("attn").pp(j), c, cfg)?);
                }
                skips.push(c);
            }
            let neighbour_attn = match cfg.neighbour_levels.contains(&i) {
                true => Some(NeighbourAttention::new(lv.pp("neighbour_attn"), c, cfg)?),
                false => None,
            };
            let downsample = match i + 1 < ch.len() {
                true => {
                    skips.push(c);
                    Some(Conv2d::new(lv.pp("downsample"), c, c, 3, 2, 1, true)?)
                }
                false => None,
            };
            down.push(DownLevel {
                res,
                attn,
                neighbour_attn,
                downsample,
            });
        }
        let mid = vb.pp("mid");
        let mid_res = [
            ResBlock::new(mid.pp("res.0"), cur, cur, cfg)?,
            ResBlock::new(mid.pp("res.1"), cur, cur, cfg)?,
        ];
        let mid_attn = TransformerBlock::new(mid.pp("attn.0"), cur, cfg)?;
        let mid_neighbour_attn = NeighbourAttention::new(mid.pp("neighbour_attn"), cur, cfg)?;

        let mut up: Vec<Option<UpLevel>> = (0..ch.len()).map(|_| None).collect();
        for i in (0..ch.len()).rev() {
            let c = ch[i];
            let lv = vb.pp("up").pp(i);
            let mut res = Vec::new();
            let mut attn = Vec::new();
            for j in 0..=cfg.layers_per_block {
                let skip = skips.pop().unwrap_or(0);
                res.push(ResBlock::new(lv.pp("res").pp(j), cur + skip, c, cfg)?);
                cur = c;
                if cfg.attention_levels.contains(&i) {
                    attn.push(TransformerBlock::new(lv.pp("attn").pp(j), c, cfg)?);
                }
            }
            let upsample = match i > 0 {
                true => Some(Conv2d::new(lv.pp("upsample"), c, c, 3, 1, 1, true)?),
                false => None,
            };
            up[i] = Some(UpLevel {
                res,
                attn,
                upsample,
            });
        }
        let up = up.into_iter().flatten().collect();
        let norm_out = GroupNorm::new(vb.pp("norm_out"), cfg.norm_groups, cur, cfg.norm_eps)?;
        let conv_out = Conv2d::new(vb.pp("conv_out"), cur, cfg.out_channels, 3, 1, 1, true)?;
        Ok(UNet {
            device: vb.device().clone(),
            config,
            conv_in,
            time_embed,
            aug_embed,
            null_text,
            down,
            mid_res,
            mid_attn,
            mid_neighbour_attn,
            up,
            norm_out,
            conv_out,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// `silu(te(t) [+ ae(aug)])`, what every ResBlock reads.
    fn embed_time(&self, t: &[f32], aug: Option<&[f32]>) -> Result<Tensor> {
        let c0 = self.config.block_channels[0];
        let opts = self.config.timestep_embedding();
        let te = |mlp: &TimeMlp, values: &[f32]| -> Result<Tensor> {
            let v = Tensor::from_vec(values.to_vec(), &[values.len()], &self.device)?;
            Ok(mlp.forward(&v.timestep_embedding_with(c0, &opts)?)?)
        };
        let mut e = te(&self.time_embed, t)?;
        if let Some(ae) = &self.aug_embed {
            let zeros;
            let aug = match aug {
                Some(a) => a,
                None => {
                    zeros = vec![0.0; t.len()];
                    &zeros
                }
            };
            e = e.add(&te(ae, aug)?)?;
        }
        Ok(e.silu()?)
    }

    /// `[null_text; states]` and its key mask `[B, 1 + L]` (the null always kept).
    fn text_context(&self, text: &TextCondition) -> Result<(Tensor, Tensor)> {
        let s = text.states.shape();
        let (b, l, d) = (s[0], s[1], s[2]);
        if d != self.config.text_dim || text.valid.len() != b * l {
            return Err(shape_error(format!(
                "text states {s:?} with {} validity flags do not fit text_dim {}",
                text.valid.len(),
                self.config.text_dim
            )));
        }
        let null = self
            .null_text
            .reshape(&[1, 1, d])?
            .broadcast_to(&[b, 1, d])?;
        let ctx = Tensor::concat(&[&null, &text.states], 1)?;
        let mut keep = Vec::with_capacity(b * (l + 1));
        for row in text.valid.chunks(l.max(1)) {
            keep.push(1.0);
            keep.extend(row.iter().map(|&v| if v > 0.0 { 1.0 } else { 0.0 }));
        }
        let mask = Tensor::from_vec(keep, &[b, l + 1], &self.device)?;
        Ok((ctx, mask))
    }

    /// The DStack; `neighbours` = None is the neighbour pass (features collected instead).
    fn dstack(
        &self,
        h: Tensor,
        es: &Tensor,
        ctx: &Tensor,
        mask: &Tensor,
        neighbours: Option<(&NeighbourContext, &[f32])>,
    ) -> Result<DStackOut> {
        let cfg = &self.config;
        let mut h = h;
        let mut skips = vec![h.clone()];
        let mut features = Vec::new();
        for (i, lv) in self.down.iter().enumerate() {
            for j in 0..cfg.layers_per_block {
                h = lv.res[j].forward(&h, es)?;
                if let Some(attn) = lv.attn.get(j) {
                    h = attn.forward(&h, ctx, mask)?;
                }
                if j + 1 == cfg.layers_per_block
                    && let Some(na) = &lv.neighbour_attn
                {
                    match neighbours {
                        None => features.push((format!("level{i}"), h.clone())),
                        Some((context, weights)) => {
                            let keys = context
                                .levels
                                .iter()
                                .find(|(level, _)| *level == i)
                                .map(|(_, k)| k)
                                .ok_or_else(|| {
                                    shape_error(format!("no neighbour keys for level {i}"))
                                })?;
                            h = na.forward(&h, keys, weights)?;
                        }
                    }
                }
                skips.push(h.clone());
            }
            if let Some(down) = &lv.downsample {
                h = down.forward(&h)?;
                skips.push(h.clone());
            }
        }
        h = self.mid_res[0].forward(&h, es)?;
        h = self.mid_attn.forward(&h, ctx, mask)?;
        h = self.mid_res[1].forward(&h, es)?;
        match neighbours {
            None => features.push(("mid".into(), h.clone())),
            Some((context, weights)) => {
                h = self.mid_neighbour_attn.forward(&h, &context.mid, weights)?;
            }
        }
        // The neighbour pass's features in the config's key order (ascending levels, then mid).
        features.sort_by_key(|(k, _)| {
            k.strip_prefix("level")
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(usize::MAX)
        });
        Ok(DStackOut { h, skips, features })
    }

    fn ustack(
        &self,
        mut h: Tensor,
        mut skips: Vec<Tensor>,
        es: &Tensor,
        ctx: &Tensor,
        mask: &Tensor,
    ) -> Result<Tensor> {
        for (i, lv) in self.up.iter().enumerate().rev() {
            for (j, res) in lv.res.iter().enumerate() {
                let skip = skips
                    .pop()
                    .ok_or_else(|| shape_error(format!("no skip left for up.{i}.res.{j}")))?;
                h = res.forward(&Tensor::concat(&[&h, &skip], 1)?, es)?;
                if let Some(attn) = lv.attn.get(j) {
                    h = attn.forward(&h, ctx, mask)?;
                }
            }
            if let Some(upsample) = &lv.upsample {
                h = upsample.forward(&h.upsample_nearest2x()?)?;
            }
        }
        Ok(self.conv_out.forward(&self.norm_out.forward_silu(&h)?)?)
    }

    /// The neighbours' feature maps: `images` `[K, 3, S, S]` in [−1, 1] at the stage's
    /// resolution and their captions' text (K rows), through the DStack with t = 0 (and in an
    /// SR stage the image itself as the low-res input, augmentation 0).
    ///
    /// # Errors
    /// Shapes that do not fit the model, or a runtime failure.
    pub fn encode_neighbours(
        &self,
        images: &Tensor,
        text: &TextCondition,
    ) -> Result<NeighbourFeatures> {
        let s = self.config.sample_size;
        let k = images.shape().first().copied().unwrap_or(0);
        if images.shape() != [k, 3, s, s] || text.len() != k {
            return Err(shape_error(format!(
                "neighbour images {:?} with {} captions; expected [K, 3, {s}, {s}] and K captions",
                images.shape(),
                text.len()
            )));
        }
        if k == 0 {
            return Ok(NeighbourFeatures { maps: Vec::new() });
        }
        let zeros = vec![0.0; k];
        let es = self.embed_time(&zeros, Some(&zeros))?;
        let (ctx, mask) = self.text_context(text)?;
        let x = match self.config.is_super_resolution() {
            true => Tensor::concat(&[images, images], 1)?,
            false => images.clone(),
        };
        let out = self.dstack(self.conv_in.forward(&x)?, &es, &ctx, &mask, None)?;
        Ok(NeighbourFeatures { maps: out.features })
    }

    /// The neighbour attentions' keys and values for `features` (K may be 0: the null key
    /// alone). Independent of t, x_t and the weights: made once per generation.
    ///
    /// # Errors
    /// Features that do not fit the model.
    pub fn neighbour_context(&self, features: &NeighbourFeatures) -> Result<NeighbourContext> {
        let count = features.count();
        let get = |key: &str| -> Result<Option<&Tensor>> {
            match count {
                0 => Ok(None),
                _ => features
                    .get(key)
                    .map(Some)
                    .ok_or_else(|| shape_error(format!("neighbour features lack {key:?}"))),
            }
        };
        let mut levels = Vec::new();
        for (i, lv) in self.down.iter().enumerate() {
            if let Some(na) = &lv.neighbour_attn {
                levels.push((i, na.keys(get(&format!("level{i}"))?)?));
            }
        }
        let mid = self.mid_neighbour_attn.keys(get("mid")?)?;
        Ok(NeighbourContext { levels, mid, count })
    }

    /// One call: ε or v `[B, 3, S, S]` per `prediction_type`.
    ///
    /// # Errors
    /// Inputs that do not fit the model (named), or a runtime failure.
    pub fn forward(&self, input: &UNetInput<'_>) -> Result<Tensor> {
        let cfg = &self.config;
        let s = cfg.sample_size;
        let b = input.x_t.shape().first().copied().unwrap_or(0);
        let k = input.neighbours.count;
        if input.x_t.shape() != [b, 3, s, s]
            || input.t.len() != b
            || input.text.len() != b
            || input.weights.len() != b * k
        {
            return Err(shape_error(format!(
                "x_t {:?}, {} timesteps, {} text rows and {} weights for {k} neighbours do not \
                 fit a [B, 3, {s}, {s}] call",
                input.x_t.shape(),
                input.t.len(),
                input.text.len(),
                input.weights.len()
            )));
        }
        let x = match (cfg.low_res_size, input.low_res) {
            (None, _) => input.x_t.clone(),
            (Some(r), Some(low)) if low.shape() == [b, 3, r, r] => {
                let up = low.resize_bilinear(s, s)?;
                Tensor::concat(&[input.x_t, &up], 1)?
            }
            (Some(r), low) => {
                return Err(shape_error(format!(
                    "a super-resolution stage needs low_res [{b}, 3, {r}, {r}], got {:?}",
                    low.map(Tensor::shape)
                )));
            }
        };
        let es = self.embed_time(input.t, input.aug)?;
        let (ctx, mask) = self.text_context(input.text)?;
        let h = self.conv_in.forward(&x)?;
        let out = self.dstack(h, &es, &ctx, &mask, Some((input.neighbours, input.weights)))?;
        self.ustack(out.h, out.skips, &es, &ctx, &mask)
    }
}

fn shape_error(reason: String) -> GenerateError {
    GenerateError::Tensor(TensorError::Shape {
        op: "reimagen unet",
        reason,
    })
}
