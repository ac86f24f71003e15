//! Caption rules, shared by `import` and the daemon: a sidecar `NAME.txt` next to `NAME.png`
//! gives the caption (and optional `entity:` / `tags:` lines); otherwise the file stem does. The
//! parent folder's name is the entity.

use std::path::{Path, PathBuf};

use crate::error::IngestError;

/// Limits on captions.
///
/// By default a caption is at most 2,000 characters after whitespace is collapsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptionRules {
    /// Most characters a caption may have.
    pub max_chars: usize,
}

impl Default for CaptionRules {
    fn default() -> Self {
        CaptionRules { max_chars: 2000 }
    }
}

impl CaptionRules {
    /// Cleans a caption (collapses whitespace) and refuses it when empty, too long or holding
    /// control characters. `path` names the file the caption belongs to, for the error.
    pub fn clean(&self, text: &str, path: &Path) -> Result<String, IngestError> {
        let bad = |reason: String| IngestError::BadCaption {
            path: path.to_path_buf(),
            reason,
        };
        let cleaned = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if cleaned.is_empty() {
            return Err(bad("the caption is empty".into()));
        }
        if let Some(c) = cleaned.chars().find(|c| c.is_control()) {
            return Err(bad(format!(
                "the caption holds a control character (U+{:04X})",
                c as u32
            )));
        }
        let n = cleaned.chars().count();
        if n > self.max_chars {
            return Err(bad(format!(
                "the caption has {n} characters, over the limit of {}",
                self.max_chars
            )));
        }
        Ok(cleaned)
    }
}

/// Caption, entity and tags of a pair.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PairText {
    /// The caption.
    pub caption: String,
    /// The entity, if any.
    pub entity: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
}

impl PairText {
    /// The text as the KB stores it: the caption and the entity cleaned by `rules` (whitespace
    /// collapsed, refused when empty, too long or holding control characters), tags trimmed and
    /// empty ones dropped. `add`, `update`, the daemon and its tests all compare against this,
    /// so it is written once here. `path` names the file (or pair) for the error.
    pub fn normalised(&self, rules: &CaptionRules, path: &Path) -> Result<PairText, IngestError> {
        let caption = rules.clean(&self.caption, path)?;
        let entity = match &self.entity {
            Some(e) => Some(rules.clean(e, path).map_err(|_| IngestError::BadCaption {
                path: path.to_path_buf(),
                reason: format!("the entity name `{e}` is empty or invalid"),
            })?),
            None => None,
        };
        let tags = self
            .tags
            .iter()
            .map(|t| t.trim())
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect();
        Ok(PairText {
            caption,
            entity,
            tags,
        })
    }
}

/// The sidecar caption file of an image: `NAME.txt` beside `NAME.EXT`.
pub fn sidecar_path(image: &Path) -> PathBuf {
    image.with_extension("txt")
}

/// Applies the caption rules to an image file.
///
/// A sidecar holds the caption on its lines; a line `entity: NAME` sets the entity and a line
/// `tags: a, b, c` the tags. Without a sidecar the caption is the file stem with `_` and `-` read
/// as spaces. The entity defaults to the parent folder's name.
pub fn caption_for_file(image: &Path, rules: &CaptionRules) -> Result<PairText, IngestError> {
    let name_err = || IngestError::NonUtf8Name {
        path: image.to_path_buf(),
    };
    let stem = image
        .file_stem()
        .ok_or_else(name_err)?
        .to_str()
        .ok_or_else(name_err)?;
    let entity = image
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| {
            n.to_str()
                .map(str::to_string)
                .ok_or_else(|| IngestError::NonUtf8Name {
                    path: image.to_path_buf(),
                })
        })
        .transpose()?;
    let sidecar = sidecar_path(image);
    match std::fs::read(&sidecar) {
        Ok(bytes) => {
            let text = String::from_utf8(bytes).map_err(|e| IngestError::BadCaption {
                path: sidecar.clone(),
                reason: format!(
                    "the sidecar is not UTF-8 (invalid byte at offset {})",
                    e.utf8_error().valid_up_to()
                ),
            })?;
            parse_sidecar(&text, &sidecar, entity, rules)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let caption = rules.clean(&stem.replace(['_', '-'], " "), image)?;
            Ok(PairText {
                caption,
                entity,
                tags: Vec::new(),
            })
        }
        Err(source) => Err(IngestError::Read {
            path: sidecar,
            source,
        }),
    }
}

/// Parses a sidecar's text (see [`caption_for_file`]).
pub fn parse_sidecar(
    text: &str,
    sidecar: &Path,
    entity: Option<String>,
    rules: &CaptionRules,
) -> Result<PairText, IngestError> {
    let mut out = PairText {
        entity,
        ..PairText::default()
    };
    let mut caption = Vec::new();
    for line in text.lines() {
        if let Some(rest) = strip_key(line, "entity:") {
            let rest = rest.trim();
            out.entity = (!rest.is_empty()).then(|| rest.to_string());
        } else if let Some(rest) = strip_key(line, "tags:") {
            out.tags = rest
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect();
        } else {
            caption.push(line);
        }
    }
    out.caption = rules.clean(&caption.join(" "), sidecar)?;
    Ok(out)
}

fn strip_key<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let trimmed = line.trim_start();
    // `get`, not indexing: a line may hold a multi-byte character where the key would end.
    trimmed
        .get(..key.len())
        .filter(|head| head.eq_ignore_ascii_case(key))
        .map(|_| &trimmed[key.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_normalised_the_way_the_kb_stores_it() {
        let rules = CaptionRules::default();
        let text = PairText {
            caption: "  a\tcorgi \n on the beach ".into(),
            entity: Some(" Corgi  dogs ".into()),
            tags: vec![" beach ".into(), "  ".into(), "dog".into()],
        };
        let clean = text.normalised(&rules, Path::new("a.png")).unwrap();
        assert_eq!(clean.caption, "a corgi on the beach");
        assert_eq!(clean.entity.as_deref(), Some("Corgi dogs"));
        assert_eq!(clean.tags, ["beach", "dog"]);
        // Normalising is idempotent: what is stored compares equal to what the rules give.
        assert_eq!(clean.normalised(&rules, Path::new("a.png")).unwrap(), clean);
        let bad_entity = PairText {
            entity: Some("   ".into()),
            ..clean
        };
        let err = bad_entity
            .normalised(&rules, Path::new("a.png"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a.png") && err.contains("entity name"),
            "{err}"
        );
    }
}
