//! Re-Imagen on the tensor runtime (docs/generator.md): the stage config ([`UNetConfig`]),
//! the UNet ([`UNet`]: DStack, the neighbours through the same DStack at t = 0, neighbour and
//! text cross-attention, UStack), the CLIP text encoder a stage names ([`TextEncoder`]), the
//! neighbour-feature cache ([`FeatureCache`]) and the cascade ([`ReImagen`], a
//! [`crate::generate::Generator`]) with [`UNetBranches`], the UNet as the sampler's
//! [`crate::generate::BranchModel`].
//!
//! Not here: the samplers and guidance (`crate::generate::sampler`, `guidance`), the ops.

mod blocks;
mod cache;
mod cascade;
mod config;
mod text;
mod unet;

pub use blocks::NeighbourKeys;
pub use cache::{CacheKey, CacheStats, Digest, FeatureCache, item_key, model_key};
pub use cascade::{ReImagen, Stage, UNetBranches, box_resize, image_tensor};
pub use config::{FORMAT_VERSION, MODEL_TYPE, UNetConfig};
pub use text::TextEncoder;
pub use unet::{NeighbourContext, NeighbourFeatures, TextCondition, UNet, UNetInput};
