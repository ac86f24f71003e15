//! Training examples the paper's way (issue 10 point 2): the training KB is made with the
//! product's own `import` from the dataset's 64-pixel train folder, and each train rendition
//! gets its top-2 BM25 neighbours from that KB, its own image excluded and, for a seeded half of
//! the examples, its own style excluded too, so that the model learns to carry an entity across
//! styles.
//!
//! Not here: the dataset itself (`super::build`), any use of the neighbours (training/).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::Serialize;

use super::{DatasetError, ManifestEntry, Split, Stage, io_err, read_manifest, write_jsonl};
use crate::kb::{KnowledgeBase, Progress};
use crate::search::{Query, SearchMode};
use crate::store::records::ImageId;

/// Options of [`neighbours`].
///
/// By default: seed 10, two neighbours, the KB in `kb-train-64` made from `64/train`.
#[derive(Clone, Debug)]
#[must_use]
pub struct NeighbourOptions {
    /// Seed of the choice of which half of the examples excludes its own style.
    pub seed: u64,
    /// Neighbours per example.
    pub per_example: usize,
    /// The image size whose train folder makes the KB.
    pub size: u32,
}

impl Default for NeighbourOptions {
    fn default() -> Self {
        NeighbourOptions {
            seed: 10,
            per_example: 2,
            size: 64,
        }
    }
}

/// What [`neighbours`] made.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NeighboursReport {
    /// The training KB.
    pub kb: PathBuf,
    /// Pairs imported into it.
    pub imported: usize,
    /// Images that were already there (identical pixels in two renditions).
    pub duplicates: usize,
    /// Files the import refused, with the reason.
    pub import_failed: Vec<(PathBuf, String)>,
    /// Examples written to `neighbours.jsonl`.
    pub examples: usize,
    /// Of those, with their own style excluded.
    pub excluding_own_style: usize,
    /// Examples that found fewer neighbours than asked for.
    pub short: usize,
    /// Of the neighbours found, how many show the same entity as the example.
    pub same_entity: usize,
    /// Neighbours found in all.
    pub found: usize,
}

impl std::fmt::Display for NeighboursReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "training KB {}", self.kb.display())?;
        writeln!(
            f,
            "imported    {} pairs ({} identical images shared)",
            self.imported, self.duplicates
        )?;
        writeln!(
            f,
            "examples    {} ({} excluding their own style, {} with fewer than 2 neighbours)",
            self.examples, self.excluding_own_style, self.short
        )?;
        write!(
            f,
            "neighbours  {} found, {} of the same entity",
            self.found, self.same_entity
        )?;
        for (path, reason) in &self.import_failed {
            write!(f, "\nfailed      {}: {reason}", path.display())?;
        }
        Ok(())
    }
}

/// One line of `neighbours.jsonl`.
#[derive(Serialize)]
struct Example<'a> {
    id: &'a str,
    neighbours: Vec<String>,
    scores: Vec<f32>,
    exclude_own_style: bool,
}

/// Builds `DIR/kb-train-<size>` with [`KnowledgeBase::import_dir`] from `DIR/<size>/train`
/// (replacing an older one) and writes `DIR/neighbours.jsonl`: one line per train rendition,
/// sorted by id, with its top neighbours by BM25 on its caption.
pub fn neighbours(
    dir: &Path,
    options: &NeighbourOptions,
    progress: &(dyn Fn(Stage, Progress) + Sync),
) -> Result<NeighboursReport, DatasetError> {
    let manifest = read_manifest(dir)?;
    let size = options.size.to_string();
    let train: Vec<&ManifestEntry> = manifest
        .iter()
        .filter(|m| m.split == Split::Train && m.files.contains_key(&size))
        .collect();
    let images = dir.join(&size).join("train");
    if train.is_empty() || !images.is_dir() {
        return Err(DatasetError::NotADataset {
            dir: dir.to_path_buf(),
            reason: format!("no train renditions at {size} pixels"),
        });
    }
    let kb_dir = dir.join(format!("kb-train-{size}"));
    if kb_dir.exists() {
        std::fs::remove_dir_all(&kb_dir).map_err(io_err(&kb_dir))?;
    }
    let kb = KnowledgeBase::create(&kb_dir)?;
    let import = kb.import_dir(&images, &|p| progress(Stage::Import, p))?;

    // A pair holds every rendition whose image has its bytes; `<slug>/<style>.png` names one.
    let mut renditions_of: HashMap<ImageId, Vec<String>> = HashMap::new();
    for record in kb.paths()? {
        let path = Path::new(&record.path);
        let (Some(style), Some(slug)) = (
            path.file_stem().and_then(|s| s.to_str()),
            path.parent()
                .and_then(|p| p.file_name())
                .and_then(|s| s.to_str()),
        ) else {
            continue;
        };
        renditions_of
            .entry(record.id)
            .or_default()
            .push(format!("{slug}/{style}"));
    }
    for ids in renditions_of.values_mut() {
        ids.sort();
    }
    let style_of: HashMap<&str, &str> = manifest
        .iter()
        .map(|m| (m.id.as_str(), m.style.as_str()))
        .collect();
    let entity_of: HashMap<&str, &str> = manifest
        .iter()
        .map(|m| (m.id.as_str(), m.entity.as_str()))
        .collect();

    let mut order: Vec<usize> = (0..train.len()).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(options.seed));
    let mut exclude_style = vec![false; train.len()];
    for &i in &order[..train.len() / 2] {
        exclude_style[i] = true;
    }

    let mut report = NeighboursReport {
        kb: kb_dir.clone(),
        imported: import.added,
        duplicates: import.duplicates,
        import_failed: import.failed,
        ..NeighboursReport::default()
    };
    let total = train.len() as u64;
    let mut rows = Vec::with_capacity(train.len());
    for (i, example) in train.iter().enumerate() {
        let exclude_own_style = exclude_style[i];
        let keep = |candidate: &str| {
            candidate != example.id
                && !(exclude_own_style && style_of.get(candidate) == Some(&example.style.as_str()))
        };
        let mut found: Vec<(String, f32)> = Vec::new();
        // Most queries are answered from the first 32 hits; a wider search is the fallback.
        for k in [32, 1024] {
            found.clear();
            let hits = kb.search(
                &Query::text(query_text(&example.caption))
                    .mode(SearchMode::Bm25)
                    .k(k),
            )?;
            for hit in hits {
                let chosen = renditions_of
                    .get(&hit.id)
                    .and_then(|ids| ids.iter().find(|c| keep(c)));
                if let Some(id) = chosen
                    && !found.iter().any(|(f, _)| f == id)
                {
                    found.push((id.clone(), hit.score));
                }
                if found.len() == options.per_example {
                    break;
                }
            }
            if found.len() == options.per_example {
                break;
            }
        }
        if found.len() < options.per_example {
            report.short += 1;
        }
        report.found += found.len();
        report.same_entity += found
            .iter()
            .filter(|(id, _)| entity_of.get(id.as_str()) == Some(&example.entity.as_str()))
            .count();
        report.excluding_own_style += usize::from(exclude_own_style);
        let (neighbours, scores) = found.into_iter().unzip();
        rows.push(Example {
            id: &example.id,
            neighbours,
            scores,
            exclude_own_style,
        });
        let done = i as u64 + 1;
        if done.is_multiple_of(64) || done == total {
            progress(Stage::Neighbours, Progress { done, total });
        }
    }
    report.examples = rows.len();
    write_jsonl(&dir.join("neighbours.jsonl"), &rows)?;
    Ok(report)
}

/// The caption as a BM25 query: every character that is not a letter or digit becomes a space.
/// The index splits words at those characters anyway, so no term is lost; the datasets the
/// shipped models were trained on were built this way.
fn query_text(caption: &str) -> String {
    caption
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_text_has_no_query_syntax() {
        assert_eq!(
            super::query_text("keycap: *, fluent-high-contrast style"),
            "keycap     fluent high contrast style"
        );
        assert_eq!(
            super::query_text("piñata, noto style"),
            "piñata  noto style"
        );
    }
}
