//! reimagen: an embedded knowledge base of image-text pairs with a retrieval-augmented generator.
#![warn(missing_docs)]
