//! The npm packages the dataset is built from, pinned by version, with their licenses and
//! attribution; fetching them into a cache with `npm pack` and reading the tarballs.
//!
//! Not here: what the files inside mean (`catalog`), rendering (`render`).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{DatasetError, io_err};

/// One pinned npm package.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Package {
    /// The npm name.
    pub name: &'static str,
    /// The pinned version.
    pub version: &'static str,
    /// The file `npm pack` writes.
    pub tarball: &'static str,
    /// SPDX id of the license of what the dataset takes from it.
    pub license: &'static str,
    /// Who made the art (or data), for the attribution.
    pub author: &'static str,
    /// Where the license text lives.
    pub license_url: &'static str,
    /// Folders (or files) inside the tarball the builder reads; nothing else is kept in memory.
    pub keep: &'static [&'static str],
}

pub(crate) const TWEMOJI: &str = "@twemoji/svg";
pub(crate) const OPENMOJI: &str = "openmoji";
pub(crate) const FLUENT: &str = "fluentui-emoji";
pub(crate) const NOTO: &str = "emoji-datasource-google";
pub(crate) const EMOJIBASE: &str = "emojibase-data";

/// The packages, pinned so that a build is reproducible (design.md §6). Apple's set (in
/// `emoji-datasource-apple`) is absent on purpose: its images are not licensed for this use.
pub const PACKAGES: [Package; 5] = [
    Package {
        name: TWEMOJI,
        version: "15.0.0",
        tarball: "twemoji-svg-15.0.0.tgz",
        license: "CC-BY-4.0",
        author: "Twitter, Inc and other contributors (Twemoji, maintained by jdecked)",
        license_url: "https://creativecommons.org/licenses/by/4.0/",
        keep: &["package/"],
    },
    Package {
        name: OPENMOJI,
        version: "17.0.0",
        tarball: "openmoji-17.0.0.tgz",
        license: "CC-BY-SA-4.0",
        author: "OpenMoji – the open-source emoji and icon project (https://openmoji.org)",
        license_url: "https://creativecommons.org/licenses/by-sa/4.0/",
        keep: &["package/color/svg/", "package/black/svg/"],
    },
    Package {
        name: FLUENT,
        version: "1.3.0",
        tarball: "fluentui-emoji-1.3.0.tgz",
        license: "MIT",
        author: "Microsoft Corporation (Fluent Emoji), packaged for npm by Mohammad Abu Mattar",
        license_url: "https://github.com/microsoft/fluentui-emoji/blob/main/LICENSE",
        keep: &["package/icons/"],
    },
    Package {
        name: NOTO,
        version: "16.0.0",
        tarball: "emoji-datasource-google-16.0.0.tgz",
        license: "Apache-2.0",
        author: "Google Inc. (Noto Emoji), packaged by the emoji-datasource project (iamcal)",
        license_url: "https://github.com/googlefonts/noto-emoji/blob/main/LICENSE",
        keep: &["package/img/google/64/"],
    },
    Package {
        name: EMOJIBASE,
        version: "17.0.0",
        tarball: "emojibase-data-17.0.0.tgz",
        license: "MIT",
        author: "Miles Johnson and the Emojibase contributors (names and tags from Unicode CLDR)",
        license_url: "https://github.com/milesj/emojibase/blob/master/LICENSE",
        keep: &["package/en/data.json"],
    },
];

/// The files the builder reads from one package, by their path in the tarball.
#[derive(Clone, Debug)]
pub struct PackageFiles {
    /// The package.
    pub package: &'static Package,
    /// `package/...` path → bytes, for the paths under [`Package::keep`].
    pub files: BTreeMap<String, Vec<u8>>,
    /// blake3 of the tarball, hex, recorded in `build.json`.
    pub tarball_blake3: String,
}

impl Package {
    /// `name@version`, what `npm pack` is given.
    pub fn spec(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// Returns the package's tarball in `cache`, running `npm pack` there first when it is missing;
/// `npm` is the program to run.
pub fn ensure_cached(package: &Package, cache: &Path, npm: &Path) -> Result<PathBuf, DatasetError> {
    let tarball = cache.join(package.tarball);
    if tarball.is_file() {
        return Ok(tarball);
    }
    std::fs::create_dir_all(cache).map_err(io_err(cache))?;
    let spec = package.spec();
    let output = match Command::new(npm)
        .args(["pack", &spec, "--silent"])
        .current_dir(cache)
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DatasetError::NpmMissing {
                spec,
                tarball,
                cache: cache.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(DatasetError::Io {
                path: PathBuf::from("npm"),
                source,
            });
        }
    };
    if !output.status.success() || !tarball.is_file() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: String = stderr.lines().rev().take(5).collect::<Vec<_>>().join(" / ");
        return Err(DatasetError::NpmFailed {
            spec,
            cache: cache.to_path_buf(),
            status: if output.status.success() {
                format!("it wrote no {}", package.tarball)
            } else {
                output.status.to_string()
            },
            stderr: tail,
        });
    }
    Ok(tarball)
}

/// Reads the files under the package's [`Package::keep`] paths from its gzipped tarball.
pub fn read_tarball(
    package: &'static Package,
    tarball: &Path,
) -> Result<PackageFiles, DatasetError> {
    let bytes = std::fs::read(tarball).map_err(io_err(tarball))?;
    let bad = |reason: String| DatasetError::Tarball {
        path: tarball.to_path_buf(),
        reason,
    };
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes.as_slice()));
    let mut files = BTreeMap::new();
    for entry in archive.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry
            .path()
            .map_err(|e| bad(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        if !package.keep.iter().any(|k| path.starts_with(k)) {
            continue;
        }
        let mut content = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut content)
            .map_err(|e| bad(format!("{path}: {e}")))?;
        files.insert(path, content);
    }
    if files.is_empty() {
        return Err(bad(format!(
            "it holds nothing under {}; is it {}?",
            package.keep.join(", "),
            package.spec()
        )));
    }
    Ok(PackageFiles {
        package,
        files,
        tarball_blake3: blake3::hash(&bytes).to_hex().to_string(),
    })
}

/// The attribution written into each dataset as `LICENSES.md` (the repo's `LICENSES/` holds the
/// same, with how the project treats share-alike).
pub fn licenses_markdown() -> String {
    let mut text = String::from(
        "# Licenses of the emoji dataset\n\n\
         The images are renderings of the art sets below, rasterised at other sizes and composited \
         on white; the captions are made from Emojibase's English names and tags. Each rendition's \
         license is in its `manifest.jsonl` line. See LICENSES/README.md in the reimagen repository \
         for how the project treats share-alike (OpenMoji).\n\n",
    );
    for p in &PACKAGES {
        text.push_str(&format!(
            "- `{}` {}: {} — {} ({})\n",
            p.name, p.version, p.author, p.license, p.license_url
        ));
    }
    text
}
