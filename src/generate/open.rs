//! Opening a generator from a model folder: [`open_generator`] checks what every backend needs
//! (a readable folder holding a `cascade.json` of the format docs/generator.md §2 gives) and
//! hands the folder to the backend, boxed behind the [`Generator`] trait so the CLI and library
//! users never name a backend.
//!
//! Not here: reading the stages and the weights (the backend's loader), the generation itself.

use std::path::Path;

use super::{GenerateError, Generator, Result};
use crate::tensor::Device;

/// The file every generator model folder holds (docs/generator.md §2).
pub const CASCADE_FILE: &str = "cascade.json";

/// Checks that `folder` looks like a generator model: a readable folder whose `cascade.json`
/// is JSON with `"format": "reimagen-cascade"` and a non-empty `stages` list. The backend's
/// loader checks the rest (stage folders, configs, weights).
///
/// # Errors
/// [`GenerateError::Model`] naming the folder or file and what is wrong.
pub fn check_model_folder(folder: &Path) -> Result<()> {
    let bad = |path: &Path, reason: String| GenerateError::Model {
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(folder).map_err(|e| {
        bad(
            folder,
            match e.kind() {
                std::io::ErrorKind::NotFound => "no such folder".to_string(),
                _ => format!("cannot read: {e}"),
            },
        )
    })?;
    if !meta.is_dir() {
        return Err(bad(
            folder,
            format!("not a folder (a generator model is a folder holding {CASCADE_FILE})"),
        ));
    }
    let cascade = folder.join(CASCADE_FILE);
    let raw = std::fs::read_to_string(&cascade).map_err(|e| {
        bad(
            &cascade,
            match e.kind() {
                std::io::ErrorKind::NotFound => "missing: this folder is not a generator model \
                     (docs/generator.md §2 lists what one holds)"
                    .to_string(),
                _ => format!("cannot read: {e}"),
            },
        )
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&raw).map_err(|e| bad(&cascade, format!("not valid JSON: {e}")))?;
    match json.get("format").and_then(|f| f.as_str()) {
        Some("reimagen-cascade") => {}
        Some(other) => {
            return Err(bad(
                &cascade,
                format!("key `format` is {other:?}, expected \"reimagen-cascade\""),
            ));
        }
        None => {
            return Err(bad(
                &cascade,
                "key `format` is missing (expected \"reimagen-cascade\")".into(),
            ));
        }
    }
    match json.get("stages").and_then(|s| s.as_array()) {
        Some(stages) if !stages.is_empty() => Ok(()),
        Some(_) => Err(bad(
            &cascade,
            "key `stages` is empty; a cascade needs at least one stage".into(),
        )),
        None => Err(bad(
            &cascade,
            "key `stages` is missing or not a list".into(),
        )),
    }
}

/// Opens the generator model in `folder` on `device`: checks the folder
/// ([`check_model_folder`]), then loads the Re-Imagen cascade it holds.
///
/// # Errors
/// [`GenerateError::Model`] for a missing or bad folder, or the backend's error while loading.
pub fn open_generator(folder: &Path, device: &Device) -> Result<Box<dyn Generator + Send>> {
    check_model_folder(folder)?;
    Ok(Box::new(super::reimagen::ReImagen::open(folder, device)?))
}
