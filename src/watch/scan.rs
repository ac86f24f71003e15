//! Walking a watched folder: what files it holds, with size and mtime, never following a link.
//!
//! Pure file-system reads; nothing here touches the KB (the engine compares what a walk found
//! with what the KB knows) and nothing here writes anywhere.

use std::fs::{self, Metadata};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::ingest::is_image_path;

/// What a file looked like: size and modification time, the pair the KB records per path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    pub size: u64,
    pub mtime_ns: u128,
}

impl Fingerprint {
    pub fn of(meta: &Metadata) -> Fingerprint {
        Fingerprint {
            size: meta.len(),
            mtime_ns: meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos()),
        }
    }

    /// The fingerprint of the path itself (a link is not followed).
    pub fn of_path(path: &Path) -> std::io::Result<(Fingerprint, fs::FileType)> {
        let meta = fs::symlink_metadata(path)?;
        Ok((Fingerprint::of(&meta), meta.file_type()))
    }
}

/// Whether a path names a caption sidecar (`NAME.txt`).
pub(crate) fn is_sidecar(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("txt"))
}

/// What a walk found.
#[derive(Debug, Default)]
pub(crate) struct Walk {
    /// Regular files with an image extension.
    pub images: Vec<(PathBuf, Fingerprint)>,
    /// Regular `.txt` files.
    pub sidecars: Vec<(PathBuf, Fingerprint)>,
    /// Symbolic links (never followed).
    pub links: Vec<(PathBuf, Fingerprint)>,
    /// Folders that could not be read: what they hold is unknown, not gone.
    pub unreadable: Vec<(PathBuf, String)>,
    /// Folders walked.
    pub dirs: u64,
}

/// Walks `dir` recursively without following links.
pub(crate) fn walk(dir: &Path) -> Walk {
    let mut out = Walk::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                out.unreadable.push((dir, e.to_string()));
                continue;
            }
        };
        out.dirs += 1;
        for entry in entries {
            let Ok(entry) = entry else { continue };
            let path = entry.path();
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            let kind = meta.file_type();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_symlink() {
                out.links.push((path, Fingerprint::of(&meta)));
            } else if kind.is_file() {
                if is_image_path(&path) {
                    out.images.push((path, Fingerprint::of(&meta)));
                } else if is_sidecar(&path) {
                    out.sidecars.push((path, Fingerprint::of(&meta)));
                }
            }
        }
    }
    out
}

/// Why a link inside `root` is refused, or `None` when it is harmless (it points inside the
/// root, where its target is watched under its own path, or it is not image-like at all).
pub(crate) fn link_problem(link: &Path, root: &Path) -> Option<String> {
    match fs::metadata(link) {
        Err(e) => is_image_path(link).then(|| {
            format!(
                "{}: broken or looping symbolic link ({e}); links are not followed",
                link.display()
            )
        }),
        Ok(meta) => {
            if !meta.is_dir() && !is_image_path(link) {
                return None;
            }
            match fs::canonicalize(link) {
                Ok(target) if target.starts_with(root) => None,
                Ok(target) => Some(format!(
                    "{}: symbolic link to {}, outside the watched folder {}; links out of a \
                     watched folder are never followed",
                    link.display(),
                    target.display(),
                    root.display()
                )),
                Err(e) => Some(format!(
                    "{}: unresolvable symbolic link ({e}); links are not followed",
                    link.display()
                )),
            }
        }
    }
}
