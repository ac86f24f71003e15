//! The [`Embedder`] trait: images and texts into one vector space (CLIP).
//!
//! The real CLIP embedder comes in its own module; until a KB has one configured it works in
//! BM25 mode. The KB records its embedder's id and refuses to mix embeddings of two models.

use image::DynamicImage;

use crate::error::ModelError;

/// Turns images and texts into vectors of one space.
pub trait Embedder: Send + Sync {
    /// Names the model and its output dimension, e.g. `clip-vit-b32/512`. Two embedders with the
    /// same id must give the same vectors.
    fn id(&self) -> String;
    /// Length of every vector this embedder returns.
    fn dim(&self) -> usize;
    /// Embeds an image.
    fn embed_image(&self, image: &DynamicImage) -> Result<Vec<f32>, ModelError>;
    /// Embeds a text.
    fn embed_text(&self, text: &str) -> Result<Vec<f32>, ModelError>;
}

/// Scales a vector to unit length (left as is when it is all zeros).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}
