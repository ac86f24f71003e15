//! The emoji dataset: many renditions of one entity by different designers, the data the shipped
//! models are trained on (design.md §6, issue 10 points 1–2).
//!
//! - [`build`] fetches the npm packages of [`PACKAGES`] into a cache (`npm pack`, only when a
//!   tarball is missing), joins the renditions of one emoji across the sets ([`catalog`]),
//!   renders them onto white ([`render`]) and writes the folder layout that `import` and `watch`
//!   read, with `manifest.jsonl`, `entities.jsonl`, `build.json` and `LICENSES.md`.
//! - [`is_held_out`] is the one rule that keeps an entity away from every trainer.
//! - [`neighbours()`] builds the training KB with the product's own import and writes each train
//!   rendition's top-2 BM25 neighbours (`neighbours.jsonl`), the paper's training examples.
//!
//! The format of what is written is the contract in docs/dataset.md.
//!
//! Not here: the trainers (training/, PyTorch), downloads other than `npm pack`, any image
//! processing beyond rasterising and compositing on white.

pub mod catalog;
mod neighbours;
pub mod packages;
pub mod render;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use catalog::{Catalog, Entity, Rendition, codepoint_key, kebab};
pub use neighbours::{NeighbourOptions, NeighboursReport, neighbours};
pub use packages::{PACKAGES, Package, PackageFiles};

use crate::kb::Progress;

/// Errors of the dataset builder.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatasetError {
    /// A package tarball is missing from the cache and npm is not installed to fetch it.
    #[error(
        "{tarball} is missing and npm is not installed; install npm, or run `npm pack {spec}` in {cache} by hand"
    )]
    NpmMissing {
        /// The package, as `name@version`.
        spec: String,
        /// The tarball expected in the cache.
        tarball: PathBuf,
        /// The cache directory.
        cache: PathBuf,
    },
    /// `npm pack` ran and failed.
    #[error("`npm pack {spec}` in {cache} failed ({status}): {stderr}")]
    NpmFailed {
        /// The package, as `name@version`.
        spec: String,
        /// The cache directory.
        cache: PathBuf,
        /// The exit status.
        status: String,
        /// What npm wrote to stderr (the tail).
        stderr: String,
    },
    /// A package tarball cannot be read.
    #[error("package tarball {path}: {reason}")]
    Tarball {
        /// The tarball.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A data file inside a package does not hold what the builder expects.
    #[error("{package}: {file}: {reason}")]
    PackageData {
        /// The package name.
        package: String,
        /// The file inside the package.
        file: String,
        /// Why.
        reason: String,
    },
    /// The output directory holds something that is not a dataset, or a dataset is incomplete.
    #[error("{dir}: {reason}")]
    NotADataset {
        /// The directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The training KB failed.
    #[error("training KB: {0}")]
    Kb(#[from] crate::Error),
}

impl DatasetError {
    /// True when the user can fix it (install npm, pick another directory); false when something
    /// broke inside or a package changed under a pinned version.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            DatasetError::NpmMissing { .. } | DatasetError::NotADataset { .. }
        )
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DatasetError + '_ {
    move |source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Entities whose `blake3(name)` starts with a byte below this are held out (~10%).
pub const HELD_OUT_BELOW: u8 = 26;

/// Whether the entity `name` is held out: never shown to any trainer, kept to measure whether
/// retrieval lets the generator draw an entity it never saw (design.md §6).
///
/// `name` is the entity's English name in lower case, as all its renditions share it
/// (`"dog face"`, `"flag: bhutan"`); the rule is `blake3(name as UTF-8)[0] < 26`.
///
/// ```
/// use reimagen::dataset::is_held_out;
/// assert!(is_held_out("tokyo tower"));
/// assert!(is_held_out("flag: australia"));
/// assert!(!is_held_out("dog face"));
/// assert!(!is_held_out("flag: bhutan"));
/// ```
pub fn is_held_out(name: &str) -> bool {
    blake3::hash(name.as_bytes()).as_bytes()[0] < HELD_OUT_BELOW
}

/// The split an entity belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Seen by the trainers.
    Train,
    /// Never seen by any trainer (see [`is_held_out`]).
    Heldout,
}

impl Split {
    /// The split of the entity `name`.
    pub fn of(name: &str) -> Split {
        if is_held_out(name) {
            Split::Heldout
        } else {
            Split::Train
        }
    }

    /// The folder name (`train`, `heldout`).
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Heldout => "heldout",
        }
    }
}

/// One art style: a set of renditions by one designer team, from one package folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Style {
    /// Twitter's Twemoji (`@twemoji/svg`), flat colour.
    Twemoji,
    /// OpenMoji in colour (`openmoji/color/svg`).
    Openmoji,
    /// OpenMoji's black line art (`openmoji/black/svg`).
    OpenmojiBlack,
    /// Microsoft Fluent, flat (`fluentui-emoji/icons/flat`).
    FluentFlat,
    /// Microsoft Fluent, soft gradients (`fluentui-emoji/icons/modern`).
    FluentModern,
    /// Microsoft Fluent, black high-contrast (`fluentui-emoji/icons/high-contrast`).
    FluentHighContrast,
    /// Google's Noto, 64×64 PNGs from `emoji-datasource-google` (no larger size ships).
    Noto,
}

impl Style {
    /// Every style, in manifest order.
    pub const ALL: [Style; 7] = [
        Style::Twemoji,
        Style::Openmoji,
        Style::OpenmojiBlack,
        Style::FluentFlat,
        Style::FluentModern,
        Style::FluentHighContrast,
        Style::Noto,
    ];

    /// The style's id: file name and the word in captions.
    pub fn id(self) -> &'static str {
        match self {
            Style::Twemoji => "twemoji",
            Style::Openmoji => "openmoji",
            Style::OpenmojiBlack => "openmoji-black",
            Style::FluentFlat => "fluent-flat",
            Style::FluentModern => "fluent-modern",
            Style::FluentHighContrast => "fluent-high-contrast",
            Style::Noto => "noto",
        }
    }

    /// The package the style comes from.
    pub fn package(self) -> &'static Package {
        let name = match self {
            Style::Twemoji => packages::TWEMOJI,
            Style::Openmoji | Style::OpenmojiBlack => packages::OPENMOJI,
            Style::FluentFlat | Style::FluentModern | Style::FluentHighContrast => packages::FLUENT,
            Style::Noto => packages::NOTO,
        };
        PACKAGES
            .iter()
            .find(|p| p.name == name)
            .expect("every style's package is in PACKAGES")
    }

    /// The license of the style's art (SPDX).
    pub fn license(self) -> &'static str {
        self.package().license
    }
}

/// What [`build`] is doing, for progress bars.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// Fetching and reading the package tarballs (one step per package).
    Packages,
    /// Rendering and writing renditions (one step per rendition).
    Render,
    /// Importing the training renditions into the training KB (one step per image).
    Import,
    /// Querying each train rendition's neighbours (one step per rendition).
    Neighbours,
}

/// Options of [`build`].
///
/// By default the images are rendered at 64 and 256 pixels with a margin of 1/16 of the size on
/// each side, and `npm` is found on the `PATH`.
#[derive(Clone, Debug)]
#[must_use]
pub struct BuildOptions {
    /// Where the dataset is written.
    pub out: PathBuf,
    /// Where the npm tarballs are kept (fetched with `npm pack` when missing).
    pub cache: PathBuf,
    /// Square image sizes to render.
    pub sizes: Vec<u32>,
    /// The npm program, run only when a tarball is missing from the cache.
    pub npm: PathBuf,
}

impl BuildOptions {
    /// Options writing to `out` with tarballs cached in `cache`, at 64 and 256 pixels.
    pub fn new(out: impl Into<PathBuf>, cache: impl Into<PathBuf>) -> BuildOptions {
        BuildOptions {
            out: out.into(),
            cache: cache.into(),
            sizes: vec![64, 256],
            npm: PathBuf::from("npm"),
        }
    }

    /// Renders at these sizes instead.
    pub fn sizes(mut self, sizes: Vec<u32>) -> BuildOptions {
        self.sizes = sizes;
        self
    }

    /// Runs this npm program to fetch missing tarballs.
    pub fn npm(mut self, npm: impl Into<PathBuf>) -> BuildOptions {
        self.npm = npm.into();
        self
    }
}

/// One line of `manifest.jsonl`: one rendition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// `<slug>/<style>`.
    pub id: String,
    /// The entity's English name, lower case.
    pub entity: String,
    /// The entity's folder name.
    pub slug: String,
    /// The style id.
    pub style: String,
    /// The entity's split.
    pub split: Split,
    /// The caption (first line of the sidecar).
    pub caption: String,
    /// The entity's tags.
    pub tags: Vec<String>,
    /// `<package>@<version>/<path inside the package>`.
    pub source: String,
    /// SPDX id of the art's license.
    pub license: String,
    /// Image file per size (`"64"` → `64/train/dog-face/twemoji.png`), relative to the dataset.
    pub files: BTreeMap<String, String>,
}

/// One line of `entities.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EntityEntry {
    /// The entity's English name, lower case.
    pub entity: String,
    /// Its folder name.
    pub slug: String,
    /// Its split.
    pub split: Split,
    /// Its tags.
    pub tags: Vec<String>,
    /// The styles it has renditions in.
    pub styles: Vec<String>,
}

/// What [`build`] made.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BuildReport {
    /// The dataset directory.
    pub out: PathBuf,
    /// Entities with at least one rendition.
    pub entities: usize,
    /// Of those, held out.
    pub heldout_entities: usize,
    /// Renditions written.
    pub renditions: usize,
    /// Of those, of held-out entities.
    pub heldout_renditions: usize,
    /// Renditions per style id.
    pub per_style: BTreeMap<String, usize>,
    /// Image files written.
    pub images: usize,
    /// Renditions that failed to render, with the reason.
    pub failed: Vec<(String, String)>,
    /// Package files that named no known entity, per style id (extras, skin-tone variants).
    pub unmatched: BTreeMap<String, usize>,
    /// Seconds the build took.
    pub seconds: f64,
}

impl std::fmt::Display for BuildReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "dataset     {}", self.out.display())?;
        writeln!(
            f,
            "entities    {} ({} held out)",
            self.entities, self.heldout_entities
        )?;
        writeln!(
            f,
            "renditions  {} ({} of held-out entities), {} images",
            self.renditions, self.heldout_renditions, self.images
        )?;
        for (style, n) in &self.per_style {
            writeln!(f, "  {style:<22}{n}")?;
        }
        for (style, n) in &self.unmatched {
            writeln!(
                f,
                "unmatched   {style}: {n} files name no entity (skin tones, extras)"
            )?;
        }
        for (id, reason) in &self.failed {
            writeln!(f, "failed      {id}: {reason}")?;
        }
        write!(f, "time        {:.1} s", self.seconds)
    }
}

/// The caption of a rendition: `"<entity>, <style> style"` (`"dog face, twemoji style"`).
pub fn caption(entity: &str, style: Style) -> String {
    format!("{entity}, {} style", style.id())
}

/// The sidecar caption file `import` reads: the caption, then `entity:` and `tags:` lines.
pub fn sidecar(caption: &str, entity: &str, tags: &[String]) -> String {
    let mut text = format!("{caption}\nentity: {entity}\n");
    if !tags.is_empty() {
        text.push_str(&format!("tags: {}\n", tags.join(", ")));
    }
    text
}

/// File names written at the top of a dataset; a directory holding `manifest.jsonl` is taken to
/// be a dataset this builder may overwrite.
const MANIFEST: &str = "manifest.jsonl";
const ENTITIES: &str = "entities.jsonl";
const BUILD_RECORD: &str = "build.json";
const LICENSES_FILE: &str = "LICENSES.md";

/// Builds the dataset: fetches the packages when missing, renders every rendition of every
/// entity at each size, writes images, sidecars, the manifest, the entity list, the build record
/// and the licenses. An existing dataset in `out` is replaced; any other non-empty `out` is
/// refused. `progress` is called from worker threads.
pub fn build(
    options: &BuildOptions,
    progress: &(dyn Fn(Stage, Progress) + Sync),
) -> Result<BuildReport, DatasetError> {
    let started = Instant::now();
    if options.sizes.is_empty() || options.sizes.iter().any(|&s| !(8..=4096).contains(&s)) {
        return Err(DatasetError::NotADataset {
            dir: options.out.clone(),
            reason: format!(
                "image sizes must be between 8 and 4096 pixels, got {:?}",
                options.sizes
            ),
        });
    }
    let mut files = Vec::new();
    for (i, package) in PACKAGES.iter().enumerate() {
        progress(
            Stage::Packages,
            Progress {
                done: i as u64,
                total: PACKAGES.len() as u64,
            },
        );
        let tarball = packages::ensure_cached(package, &options.cache, &options.npm)?;
        files.push(packages::read_tarball(package, &tarball)?);
    }
    progress(
        Stage::Packages,
        Progress {
            done: PACKAGES.len() as u64,
            total: PACKAGES.len() as u64,
        },
    );
    let catalog = Catalog::join(&files)?;
    prepare_out(&options.out)?;

    let renditions: Vec<(&Entity, &Rendition)> = catalog
        .entities
        .iter()
        .flat_map(|e| e.renditions.iter().map(move |r| (e, r)))
        .collect();
    let total = renditions.len() as u64;
    let done = AtomicU64::new(0);
    progress(Stage::Render, Progress { done: 0, total });
    let results: Vec<Result<ManifestEntry, (String, String)>> = renditions
        .par_iter()
        .map(|(entity, rendition)| {
            let out = write_rendition(options, &files, entity, rendition);
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_multiple_of(64) || n == total {
                progress(Stage::Render, Progress { done: n, total });
            }
            out
        })
        .collect();

    let mut report = BuildReport {
        out: options.out.clone(),
        unmatched: catalog.unmatched.clone(),
        ..BuildReport::default()
    };
    let mut manifest = Vec::new();
    for r in results {
        match r {
            Ok(m) => manifest.push(m),
            Err(failure) => report.failed.push(failure),
        }
    }
    manifest.sort_by(|a, b| a.id.cmp(&b.id));
    let mut entities: BTreeMap<&str, EntityEntry> = BTreeMap::new();
    for m in &manifest {
        *report.per_style.entry(m.style.clone()).or_default() += 1;
        report.images += m.files.len();
        if m.split == Split::Heldout {
            report.heldout_renditions += 1;
        }
        entities
            .entry(m.slug.as_str())
            .or_insert_with(|| EntityEntry {
                entity: m.entity.clone(),
                slug: m.slug.clone(),
                split: m.split,
                tags: m.tags.clone(),
                styles: Vec::new(),
            })
            .styles
            .push(m.style.clone());
    }
    report.renditions = manifest.len();
    report.entities = entities.len();
    report.heldout_entities = entities
        .values()
        .filter(|e| e.split == Split::Heldout)
        .count();
    write_jsonl(&options.out.join(MANIFEST), &manifest)?;
    write_jsonl(
        &options.out.join(ENTITIES),
        &entities.into_values().collect::<Vec<_>>(),
    )?;
    write_file(
        &options.out.join(LICENSES_FILE),
        packages::licenses_markdown().as_bytes(),
    )?;
    report.seconds = started.elapsed().as_secs_f64();
    let record = serde_json::json!({
        "command": format!("reimagen dataset build --sizes {}", options.sizes.iter().map(u32::to_string).collect::<Vec<_>>().join(",")),
        "builder_version": env!("CARGO_PKG_VERSION"),
        "packages": files.iter().map(|f| serde_json::json!({
            "name": f.package.name, "version": f.package.version,
            "tarball": f.package.tarball, "blake3": f.tarball_blake3,
        })).collect::<Vec<_>>(),
        "sizes": options.sizes,
        "margin": "size / 16 on each side",
        "held_out_rule": format!("blake3(entity)[0] < {HELD_OUT_BELOW}"),
        "report": &report,
    });
    write_file(
        &options.out.join(BUILD_RECORD),
        serde_json::to_string_pretty(&record)
            .expect("a JSON value serialises")
            .as_bytes(),
    )?;
    Ok(report)
}

/// Makes `out` ready: creates it, or clears a previous dataset in it. Refuses a non-empty
/// directory that holds no manifest, so a typo cannot wipe someone's folder.
fn prepare_out(out: &Path) -> Result<(), DatasetError> {
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() && !out.join(MANIFEST).exists() {
                return Err(DatasetError::NotADataset {
                    dir: out.to_path_buf(),
                    reason: format!(
                        "the directory is not empty and holds no {MANIFEST}; pick an empty or new directory"
                    ),
                });
            }
            let entries = std::fs::read_dir(out).map_err(io_err(out))?;
            for entry in entries {
                let entry = entry.map_err(io_err(out))?;
                let path = entry.path();
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let ours = name.chars().all(|c| c.is_ascii_digit())
                    || name == "kb-train-64"
                    || name.ends_with(".jsonl")
                    || name == BUILD_RECORD
                    || name == LICENSES_FILE;
                if !ours {
                    continue;
                }
                if path.is_dir() {
                    std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
                } else {
                    std::fs::remove_file(&path).map_err(io_err(&path))?;
                }
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(out).map_err(io_err(out))
        }
        Err(source) => Err(DatasetError::Io {
            path: out.to_path_buf(),
            source,
        }),
    }
}

/// Renders one rendition at every size it can have and writes images and sidecars.
fn write_rendition(
    options: &BuildOptions,
    files: &[PackageFiles],
    entity: &Entity,
    rendition: &Rendition,
) -> Result<ManifestEntry, (String, String)> {
    let id = format!("{}/{}", entity.slug, rendition.style.id());
    let fail = |reason: String| (id.clone(), reason);
    let package = rendition.style.package();
    let bytes = files
        .iter()
        .find(|f| f.package.name == package.name)
        .and_then(|f| f.files.get(&rendition.path))
        .ok_or_else(|| fail(format!("{} is gone from the package", rendition.path)))?;
    let source = render::Source::read(&rendition.path, bytes).map_err(&fail)?;
    let split = Split::of(&entity.name);
    let caption = caption(&entity.name, rendition.style);
    let text = sidecar(&caption, &entity.name, &entity.tags);
    let mut written = BTreeMap::new();
    for &size in &options.sizes {
        let Some(image) = source.render(size).map_err(&fail)? else {
            continue;
        };
        let rel = format!(
            "{size}/{}/{}/{}.png",
            split.as_str(),
            entity.slug,
            rendition.style.id()
        );
        let path = options.out.join(&rel);
        let dir = path.parent().expect("a rendition path has a folder");
        std::fs::create_dir_all(dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
        image
            .save_with_format(&path, image::ImageFormat::Png)
            .map_err(|e| fail(format!("{}: {e}", path.display())))?;
        let txt = path.with_extension("txt");
        std::fs::write(&txt, &text).map_err(|e| fail(format!("{}: {e}", txt.display())))?;
        written.insert(size.to_string(), rel);
    }
    if written.is_empty() {
        return Err(fail(format!(
            "no requested size is at most the source's own size ({})",
            rendition.path
        )));
    }
    Ok(ManifestEntry {
        id,
        entity: entity.name.clone(),
        slug: entity.slug.clone(),
        style: rendition.style.id().to_string(),
        split,
        caption,
        tags: entity.tags.clone(),
        source: format!(
            "{}@{}/{}",
            package.name,
            package.version,
            rendition.path.trim_start_matches("package/")
        ),
        license: package.license.to_string(),
        files: written,
    })
}

/// Reads `manifest.jsonl` of the dataset in `dir`.
pub fn read_manifest(dir: &Path) -> Result<Vec<ManifestEntry>, DatasetError> {
    let path = dir.join(MANIFEST);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DatasetError::NotADataset {
                dir: dir.to_path_buf(),
                reason: format!(
                    "no {MANIFEST}; build the dataset first (`reimagen dataset build`)"
                ),
            });
        }
        Err(source) => return Err(DatasetError::Io { path, source }),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| DatasetError::NotADataset {
                dir: dir.to_path_buf(),
                reason: format!("{MANIFEST} line {}: {e}", i + 1),
            })
        })
        .collect()
}

fn write_jsonl<T: Serialize>(path: &Path, rows: &[T]) -> Result<(), DatasetError> {
    let mut out = Vec::new();
    for row in rows {
        serde_json::to_writer(&mut out, row).expect("dataset rows serialise");
        out.push(b'\n');
    }
    write_file(path, &out)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), DatasetError> {
    let mut f = std::fs::File::create(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))
}
