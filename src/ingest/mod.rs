//! Turning user files into pairs: read, decode under limits, hash, caption.
//!
//! Everything here is pure and runs on many threads at once (rayon); nothing here writes to the
//! store (the writer does). The caption rules are shared by `import` and the daemon; the
//! preparation of whole records (text normalised, image decoded, embedded) is `prepare.rs`.

pub mod caption;
mod prepare;

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageFormat, ImageReader};

use crate::error::IngestError;
use crate::store::records::ImageId;

pub use caption::{CaptionRules, PairText, caption_for_file};
pub use prepare::{ImageSource, NewPair, ReadFile};
pub(crate) use prepare::{
    Preparation, absolute_lossy, absolute_utf8, collect_images, path_record, quarantine_record,
};

/// Extensions `import` and the daemon treat as images.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "gif", "webp", "bmp"];

/// Whether a path names an image by its extension (case-insensitive).
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// Limits applied before and while decoding anything a user dropped.
///
/// By default: files up to 64 MiB, images up to 8192×8192 pixels, and at most 512 MiB allocated
/// by the decoder (a small PNG can claim gigabytes when decoded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest file read, in bytes.
    pub max_file_bytes: u64,
    /// Widest image accepted, in pixels.
    pub max_width: u32,
    /// Tallest image accepted, in pixels.
    pub max_height: u32,
    /// Most memory the decoder may allocate, in bytes.
    pub max_alloc: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_file_bytes: 64 << 20,
            max_width: 8192,
            max_height: 8192,
            max_alloc: 512 << 20,
        }
    }
}

/// An image that decoded cleanly.
#[derive(Debug)]
pub struct DecodedImage {
    /// Content hash of `bytes`.
    pub id: ImageId,
    /// The file's bytes, unchanged.
    pub bytes: Vec<u8>,
    /// The decoded pixels.
    pub image: DynamicImage,
    /// Format name (`png`, `jpeg`, …).
    pub format: String,
}

/// Reads a file, refusing it before reading when it is over the size limit.
pub fn read_image_file(path: &Path, limits: &DecodeLimits) -> Result<DecodedImage, IngestError> {
    let read_err = |source| IngestError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if !meta.is_file() {
        return Err(IngestError::BadImage {
            path: path.to_path_buf(),
            reason: "not a regular file".into(),
        });
    }
    if meta.len() > limits.max_file_bytes {
        return Err(IngestError::TooLarge {
            path: path.to_path_buf(),
            reason: format!(
                "file is {} bytes, over the limit of {}",
                meta.len(),
                limits.max_file_bytes
            ),
        });
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
    decode_image(path, bytes, limits)
}

/// Decodes image bytes under `limits`; `name` is only used in errors.
pub fn decode_image(
    name: &Path,
    bytes: Vec<u8>,
    limits: &DecodeLimits,
) -> Result<DecodedImage, IngestError> {
    let id = ImageId::of_bytes(&bytes);
    decode_hashed_image(name, bytes, id, limits)
}

/// [`decode_image`] for bytes whose hash `id` the caller has computed already (the daemon
/// hashes a file to know whether the KB holds it before it asks for a decode).
pub(crate) fn decode_hashed_image(
    name: &Path,
    bytes: Vec<u8>,
    id: ImageId,
    limits: &DecodeLimits,
) -> Result<DecodedImage, IngestError> {
    let bad = |reason: String| IngestError::BadImage {
        path: name.to_path_buf(),
        reason,
    };
    if bytes.is_empty() {
        return Err(bad("the file is empty".into()));
    }
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err(IngestError::TooLarge {
            path: name.to_path_buf(),
            reason: format!(
                "{} bytes, over the limit of {}",
                bytes.len(),
                limits.max_file_bytes
            ),
        });
    }
    let mut reader = ImageReader::new(Cursor::new(&bytes[..]))
        .with_guessed_format()
        .map_err(|e| bad(e.to_string()))?;
    let Some(format) = reader.format() else {
        return Err(bad(
            "unrecognised image format (content is not PNG, JPEG, GIF, WebP or BMP)".into(),
        ));
    };
    if !matches!(
        format,
        ImageFormat::Png
            | ImageFormat::Jpeg
            | ImageFormat::Gif
            | ImageFormat::WebP
            | ImageFormat::Bmp
    ) {
        return Err(bad(format!("unsupported image format {format:?}")));
    }
    let mut image_limits = image::Limits::default();
    image_limits.max_image_width = Some(limits.max_width);
    image_limits.max_image_height = Some(limits.max_height);
    image_limits.max_alloc = Some(limits.max_alloc);
    reader.limits(image_limits);
    // Decoders fill a missing tail with grey (JPEG) or stop at the last whole frame (GIF): the
    // format's own end marker is what tells a whole file from the start of one (invariant 9 of
    // ARCHITECTURE.md).
    if let Some(reason) = missing_end(format, &bytes) {
        return Err(IngestError::Truncated {
            path: name.to_path_buf(),
            reason,
        });
    }
    let image = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(l) => IngestError::TooLarge {
            path: name.to_path_buf(),
            reason: format!(
                "{l} (limits: {}×{} pixels, {} MiB decoded)",
                limits.max_width,
                limits.max_height,
                limits.max_alloc >> 20
            ),
        },
        other if ran_out_of_bytes(&other) => IngestError::Truncated {
            path: name.to_path_buf(),
            reason: format!("the decoder ran out of bytes ({other})"),
        },
        other => bad(other.to_string()),
    })?;
    Ok(DecodedImage {
        id,
        bytes,
        image,
        format: format
            .extensions_str()
            .first()
            .copied()
            .unwrap_or("image")
            .to_string(),
    })
}

/// Why `bytes`, an image of `format`, cannot be whole: its end marker or declared length is
/// missing. `None` when the file ends where the format says it does.
fn missing_end(format: ImageFormat, bytes: &[u8]) -> Option<String> {
    match format {
        // The IEND chunk: length 0, type, CRC. Anything after it is ignored by decoders.
        ImageFormat::Png => {
            const IEND: &[u8] = b"\0\0\0\0IEND\xAE\x42\x60\x82";
            (!bytes.windows(IEND.len()).any(|w| w == IEND))
                .then(|| "PNG without its IEND chunk".to_string())
        }
        // EOI (FF D9) after the last start-of-scan (FF DA): an EXIF thumbnail has its own EOI,
        // but it comes before the main image's scans.
        ImageFormat::Jpeg => {
            let last = |marker: u8| bytes.windows(2).rposition(|w| w == [0xFF, marker]);
            match (last(0xDA), last(0xD9)) {
                (Some(sos), Some(eoi)) if eoi > sos => None,
                (None, _) => Some("JPEG without a start of scan (FF DA)".into()),
                _ => {
                    Some("JPEG without its end-of-image marker (FF D9) after the last scan".into())
                }
            }
        }
        // The trailer byte 0x3B ends every GIF; without it the last frames are missing.
        ImageFormat::Gif => {
            (bytes.last() != Some(&0x3B)).then(|| "GIF without its trailer (3B)".to_string())
        }
        // RIFF: bytes 4..8 hold the length of what follows them.
        ImageFormat::WebP => {
            let declared = bytes
                .get(4..8)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize + 8);
            match declared {
                Some(n) if bytes.len() >= n => None,
                Some(n) => Some(format!(
                    "WebP of {} bytes where its RIFF header declares {n}",
                    bytes.len()
                )),
                None => Some("WebP shorter than its RIFF header".into()),
            }
        }
        // bfSize (bytes 2..6) is the file's length; some writers leave it 0. The pixel data
        // starts at bfOffBits (10..14), and a row count times a row size must fit after it.
        ImageFormat::Bmp => {
            let u32_at = |at: usize| {
                bytes
                    .get(at..at + 4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            };
            match (u32_at(2), u32_at(10)) {
                (Some(size), _) if size != 0 && bytes.len() < size => Some(format!(
                    "BMP of {} bytes where its header declares {size}",
                    bytes.len()
                )),
                (_, Some(offset)) if bytes.len() <= offset => {
                    Some("BMP that ends before its pixel data".into())
                }
                (None, _) | (_, None) => Some("BMP shorter than its header".into()),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Whether a decoder error means the input ended early rather than held something wrong.
fn ran_out_of_bytes(e: &image::ImageError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::UnexpectedEof
        {
            return true;
        }
        let text = err.to_string().to_lowercase();
        if [
            "unexpected end",
            "unexpected eof",
            "end of file",
            "truncated",
            "not enough data",
        ]
        .iter()
        .any(|s| text.contains(s))
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// Longest side of a thumbnail, in pixels.
pub const THUMBNAIL_SIZE: u32 = 128;

/// A PNG thumbnail of at most [`THUMBNAIL_SIZE`] pixels a side, aspect ratio kept.
pub fn thumbnail(image: &DynamicImage) -> Vec<u8> {
    let small = if image.width() > THUMBNAIL_SIZE || image.height() > THUMBNAIL_SIZE {
        image.thumbnail(THUMBNAIL_SIZE, THUMBNAIL_SIZE)
    } else {
        image.clone()
    };
    let mut png = Vec::new();
    small
        .to_rgba8()
        .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
        .expect("encoding a PNG into memory cannot fail");
    png
}
