//! A KB as JSON lines, to move between machines and tools: `reimagen export --jsonl` writes one
//! [`PairLine`] per pair (text, image facts, the files that hold it, and optionally its
//! embeddings); `reimagen import --jsonl` reads such a file back, taking each image from the
//! first of its files that still holds it.
//!
//! Imported pairs are embedded again by the importing KB's embedder, if it has one: exported
//! vectors are for other tools, and an importing KB may use another model.
//!
//! Not here: folder import (`KnowledgeBase::import_dir`), backups (`KnowledgeBase::backup`).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ingest::PairText;
use crate::kb::{AddOutcome, KnowledgeBase, NewPair, Progress};
use crate::store::records::{EmbeddingKind, ImageId};

/// One line of an export: a pair as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairLine {
    /// The pair's id: the BLAKE3 hash of its image bytes, 64 hex digits.
    pub id: String,
    /// Caption.
    pub caption: String,
    /// Entity.
    #[serde(default)]
    pub entity: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Width in pixels.
    #[serde(default)]
    pub width: u32,
    /// Height in pixels.
    #[serde(default)]
    pub height: u32,
    /// Image format.
    #[serde(default)]
    pub format: String,
    /// Image size in bytes.
    #[serde(default)]
    pub byte_len: u64,
    /// Seconds since the epoch when added.
    #[serde(default)]
    pub added_at: u64,
    /// Files known to hold the image (absolute).
    #[serde(default)]
    pub paths: Vec<String>,
    /// The embedder the vectors come from (with `--embeddings`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedder: Option<String>,
    /// The image's embedding (with `--embeddings`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_embedding: Option<Vec<f32>>,
    /// The caption's embedding (with `--embeddings`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_embedding: Option<Vec<f32>>,
}

/// What [`import_jsonl`] did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct JsonlImportReport {
    /// New pairs.
    pub added: usize,
    /// Pairs already present whose caption, entity or tags were replaced by the line's.
    pub updated: usize,
    /// Pairs already present as the line has them.
    pub unchanged: usize,
    /// Lines refused: 1-based line number and reason.
    pub failed: Vec<(usize, String)>,
}

/// Writes every pair of `kb` to `out` as JSON lines, in id order; with `embeddings`, their
/// vectors too. Returns how many lines were written.
pub fn export_jsonl(kb: &KnowledgeBase, out: &mut dyn Write, embeddings: bool) -> Result<usize> {
    let io = |e: std::io::Error| Error::Io {
        path: PathBuf::from("<export>"),
        source: e,
    };
    let embedder = if embeddings {
        kb.stats()?.embedder
    } else {
        None
    };
    let pairs = kb.list()?;
    for pair in &pairs {
        let mut line = PairLine {
            id: pair.id.to_hex(),
            caption: pair.caption.clone(),
            entity: pair.entity.clone(),
            tags: pair.tags.clone(),
            width: pair.width,
            height: pair.height,
            format: pair.format.clone(),
            byte_len: pair.byte_len,
            added_at: pair.added_at,
            paths: pair.paths.clone(),
            embedder: None,
            image_embedding: None,
            text_embedding: None,
        };
        if embeddings {
            for (kind, v) in kb.embeddings_of(&pair.id)? {
                line.embedder.clone_from(&embedder);
                match kind {
                    EmbeddingKind::Image => line.image_embedding = Some(v),
                    EmbeddingKind::Text => line.text_embedding = Some(v),
                }
            }
        }
        serde_json::to_writer(&mut *out, &line).map_err(|e| io(e.into()))?;
        out.write_all(b"\n").map_err(io)?;
    }
    out.flush().map_err(io)?;
    Ok(pairs.len())
}

/// Reads pairs written by [`export_jsonl`] from the file at `path` into `kb`. A pair already in
/// the KB takes the line's caption, entity and tags; a new one is read from the first of its
/// files that still holds its image. Bad lines are reported, not fatal. `progress` follows the
/// lines.
pub fn import_jsonl(
    kb: &KnowledgeBase,
    path: &Path,
    progress: &dyn Fn(Progress),
) -> Result<JsonlImportReport> {
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.into(),
        source,
    })?;
    let lines: Vec<String> = std::io::BufReader::new(file)
        .lines()
        .collect::<std::io::Result<_>>()
        .map_err(|source| Error::Io {
            path: path.into(),
            source,
        })?;
    let total = lines.len() as u64;
    let mut report = JsonlImportReport::default();
    let mut pending: Vec<(usize, NewPair, ImageId)> = Vec::new();
    for (i, raw) in lines.iter().enumerate() {
        let number = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        match prepare_line(kb, raw) {
            Ok(Prepared::New(pair, id)) => pending.push((number, *pair, id)),
            Ok(Prepared::Updated) => report.updated += 1,
            Ok(Prepared::Unchanged) => report.unchanged += 1,
            Err(reason) => report.failed.push((number, reason)),
        }
        if pending.len() == 256 || number == lines.len() {
            add_pending(kb, &mut pending, &mut report);
            progress(Progress {
                done: number as u64,
                total,
            });
        }
    }
    add_pending(kb, &mut pending, &mut report);
    report.failed.sort();
    Ok(report)
}

enum Prepared {
    New(Box<NewPair>, ImageId),
    Updated,
    Unchanged,
}

fn prepare_line(kb: &KnowledgeBase, raw: &str) -> std::result::Result<Prepared, String> {
    let line: PairLine = serde_json::from_str(raw).map_err(|e| format!("not a pair line: {e}"))?;
    let id: ImageId = line
        .id
        .parse()
        .map_err(|_| format!("`{}` is not a pair id (64 hex digits)", line.id))?;
    let text = PairText {
        caption: line.caption.clone(),
        entity: line.entity.clone(),
        tags: line.tags.clone(),
    };
    if let Some(existing) = kb.get(&id).map_err(|e| e.to_string())? {
        if existing.caption == text.caption
            && existing.entity == text.entity
            && existing.tags == text.tags
        {
            return Ok(Prepared::Unchanged);
        }
        kb.update(&id, text).map_err(|e| e.to_string())?;
        return Ok(Prepared::Updated);
    }
    for candidate in &line.paths {
        // Size and mtime from before the read, as for any file the KB reads; the bytes read and
        // hashed here are the ones decoded and stored, not read a second time.
        let Ok(before) = crate::ingest::path_record(candidate.as_ref(), id) else {
            continue;
        };
        let Ok(bytes) = std::fs::read(candidate) else {
            continue;
        };
        if ImageId::of_bytes(&bytes) == id {
            let read = crate::ingest::ReadFile::new(
                candidate.into(),
                bytes,
                id,
                before.size,
                before.mtime_ns,
            );
            return Ok(Prepared::New(
                Box::new(NewPair {
                    image: crate::kb::ImageSource::Read(read),
                    text,
                }),
                id,
            ));
        }
    }
    Err(if line.paths.is_empty() {
        format!("pair {} lists no file to read its image from", id.short())
    } else {
        format!(
            "pair {}: none of its files holds its image any more ({})",
            id.short(),
            line.paths.join(", ")
        )
    })
}

fn add_pending(
    kb: &KnowledgeBase,
    pending: &mut Vec<(usize, NewPair, ImageId)>,
    report: &mut JsonlImportReport,
) {
    let (numbers, pairs): (Vec<usize>, Vec<NewPair>) =
        pending.drain(..).map(|(n, pair, _)| (n, pair)).unzip();
    for (number, result) in numbers.into_iter().zip(kb.add_many(pairs)) {
        match result {
            Ok(AddOutcome::Added(_)) => report.added += 1,
            // Two lines of one image: the first one's text stands.
            Ok(AddOutcome::Duplicate(_)) => report.unchanged += 1,
            Err(e) => report.failed.push((number, e.to_string())),
        }
    }
}
