//! reimagen: an embedded knowledge base of image-text pairs, after *Re-Imagen:
//! Retrieval-Augmented Text-to-Image Generator* (Chen et al., ICLR 2023).
//!
//! Pairs live in LMDB (the truth); captions are indexed with BM25 (tantivy) and embeddings with
//! HNSW graphs; both indices are derived and rebuild themselves when damaged.
//!
//! # Quick start
//!
//! ```
//! use reimagen::{KnowledgeBase, NewPair, Query};
//!
//! # fn main() -> reimagen::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let kb = KnowledgeBase::create(dir.path().join("kb"))?;
//!
//! // Any PNG/JPEG bytes will do; here a 2×2 red square.
//! let mut png = Vec::new();
//! image::RgbImage::from_pixel(2, 2, image::Rgb([255, 0, 0]))
//!     .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
//!     .unwrap();
//! let added = kb.add(NewPair::bytes("red.png", png, "a red square").entity("squares"))?;
//!
//! let hits = kb.search(&Query::text("red square").k(5))?;
//! assert_eq!(hits[0].id, added.id());
//! assert_eq!(hits[0].entity.as_deref(), Some("squares"));
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

// The knowledge base's own modules are private: everything a user may name is in the `pub use`
// list below, so that nothing outside the crate can reach `Store::open` or a `VectorIndex` and
// bypass the `kb.lock` the store's safety rests on (invariant 10 of ARCHITECTURE.md).
pub mod bench;
pub mod dataset;
pub mod demo;
pub mod embed;
mod error;
pub mod generate;
mod ingest;
mod kb;
mod search;
mod store;
pub mod tensor;
mod text;
pub mod transfer;
mod vector;
mod watch;

pub use embed::{ClipEmbedder, Embedder};
pub use error::{Error, IndexError, IngestError, ModelError, Result, StoreError, WatchError};
pub use generate::{
    CancelToken, GenerateError, GenerationObserver, GenerationOutput, GenerationRequest, Generator,
    Guidance, GuidanceMode, Neighbour, SamplerKind,
};
pub use ingest::{
    CaptionRules, DecodeLimits, DecodedImage, IMAGE_EXTENSIONS, ImageSource, NewPair, PairText,
    ReadFile, caption_for_file, decode_image, is_image_path, read_image_file,
};
pub use kb::{
    AddOutcome, Builder, CheckReport, EntitySummary, ImportReport, KbConfig, KnowledgeBase, Pair,
    PathOp, PathOpOutcome, Progress, ProgressFn, ReembedReport, Stats,
};
pub use search::{FusionWeights, Hit, Provenance, Query, QueryImage, Retriever, SearchMode};
pub use store::records::{EmbeddingKind, ImageId, PathRecord, QuarantineRecord};
pub use tensor::{Device, DeviceChoice, Tensor, TensorError};
pub use text::{Filters, TextLanguage, UnknownLanguage, name_key};
pub use vector::{GraphEngine, HnswParams, VectorCounts};
pub use watch::{
    DaemonState, QuarantinedFile, RootStatus, ScanReport, WatchCounters, WatchMode, WatchOptions,
    WatchStatus, Watcher, daemon_status, open_when_free,
};
