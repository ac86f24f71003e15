//! reimagen: an embedded knowledge base of image-text pairs with a retrieval-augmented generator.
#![warn(missing_docs)]

pub mod tensor;

pub use tensor::{Device, DeviceChoice, Tensor, TensorError};
