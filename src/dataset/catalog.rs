//! Joining the renditions of one emoji across the art sets.
//!
//! Entities are Emojibase's base emoji (no skin-tone variants, no components such as the
//! regional-indicator letters): the English name in lower case is the entity, its tags are the
//! tags. Twemoji, OpenMoji and Noto name files by codepoints, joined after dropping U+FE0F and
//! leading zeros. Fluent names files by the kebab-case CLDR name (`dog-face.svg`), with
//! `-default` on the base of emoji that have skin tones, and a few older names ([`FLUENT_ALIASES`]).
//!
//! Not here: reading tarballs (`packages`), rendering (`render`).

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use super::packages::{EMOJIBASE, FLUENT, NOTO, OPENMOJI, PackageFiles, TWEMOJI};
use super::{DatasetError, Style};

/// One rendition of an entity: a file inside a package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendition {
    /// The style.
    pub style: Style,
    /// The path inside the tarball (`package/1f436.svg`).
    pub path: String,
}

/// One entity with its renditions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entity {
    /// English name, lower case (`dog face`, `flag: bhutan`).
    pub name: String,
    /// Folder name: the name in kebab case, with the codepoints added where two names collide.
    pub slug: String,
    /// Emojibase's codepoints, normalised by [`codepoint_key`].
    pub codepoints: String,
    /// Emojibase's English tags.
    pub tags: Vec<String>,
    /// Renditions in [`Style::ALL`] order.
    pub renditions: Vec<Rendition>,
}

/// Every entity that has at least one rendition, in Emojibase order.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// The entities.
    pub entities: Vec<Entity>,
    /// Files per style id that named no entity (skin-tone variants, OpenMoji extras, …).
    pub unmatched: BTreeMap<String, usize>,
}

/// Fluent file names (kebab case) that differ from the CLDR name Emojibase carries, mapped to
/// that name. Found by listing the Fluent files that matched no Emojibase name.
pub const FLUENT_ALIASES: &[(&str, &str)] = &[
    ("blackbird", "black bird"),
    ("hugging-face", "smiling face with open hands"),
    ("keycap-asterisk", "keycap: *"),
    ("keycap-hashtag", "keycap: #"),
    ("knocked-out-face", "face with crossed-out eyes"),
    ("pouting-face", "enraged face"),
    ("red-triangle", "red triangle pointed up"),
    ("phoenix-bird", "phoenix"),
    ("stuffedbread", "stuffed flatbread"),
    ("stuffedbread-flat", "stuffed flatbread"),
    ("man-blonde-hair", "man: blond hair"),
    ("woman-blonde-hair", "woman: blond hair"),
    ("person-blonde-hair", "person: blond hair"),
    ("man-deaf", "deaf man"),
    ("woman-deaf", "deaf woman"),
    ("person-deaf", "deaf person"),
    ("man-merpeople", "merman"),
    ("woman-merpeople", "mermaid"),
    ("person-merpeople", "merperson"),
    ("man-with-bunny-ears", "men with bunny ears"),
    ("woman-with-bunny-ears", "women with bunny ears"),
    ("person-with-bunny-ears", "people with bunny ears"),
    ("man-wrestling", "men wrestling"),
    ("woman-wrestling", "women wrestling"),
    ("person-wrestling", "people wrestling"),
    ("person-elf", "elf"),
    ("person-fairy", "fairy"),
    ("person-genie", "genie"),
    ("person-mage", "mage"),
    ("person-superhero", "superhero"),
    ("person-supervillain", "supervillain"),
    ("person-vampire", "vampire"),
    ("person-zombie", "zombie"),
];

/// Normalises a codepoint sequence written as hex (`1F436`, `0023-fe0f-20e3`, `1f1e7_1f1f9`):
/// lower case, no leading zeros, U+FE0F (the emoji presentation selector, written by some sets
/// and not others) dropped, joined by `-`. `None` when a part is not hex.
pub fn codepoint_key(hex: &str) -> Option<String> {
    let mut parts = Vec::new();
    for part in hex.split(['-', '_', ' ']) {
        if part.is_empty() {
            continue;
        }
        let cp = u32::from_str_radix(part, 16).ok()?;
        if cp != 0xFE0F {
            parts.push(format!("{cp:x}"));
        }
    }
    (!parts.is_empty()).then(|| parts.join("-"))
}

/// Kebab case as Fluent names its files: ASCII lower case, Latin accents and apostrophes dropped,
/// every run of other characters one `-` (`"A button (blood type)"` → `a-button-blood-type`,
/// `"eight o’clock"` → `eight-oclock`).
pub fn kebab(name: &str) -> String {
    let mut out = String::new();
    let mut gap = false;
    for c in name.chars().flat_map(char::to_lowercase) {
        let c = match c {
            'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' => 'a',
            'ç' => 'c',
            'è' | 'é' | 'ê' | 'ë' => 'e',
            'ì' | 'í' | 'î' | 'ï' => 'i',
            'ñ' => 'n',
            'ò' | 'ó' | 'ô' | 'õ' | 'ö' => 'o',
            'ù' | 'ú' | 'û' | 'ü' => 'u',
            '\'' | '’' => continue,
            c => c,
        };
        if c.is_ascii_alphanumeric() {
            if gap && !out.is_empty() {
                out.push('-');
            }
            gap = false;
            out.push(c);
        } else {
            gap = true;
        }
    }
    out
}

#[derive(Deserialize)]
struct EmojibaseEntry {
    label: String,
    hexcode: String,
    #[serde(default)]
    tags: Vec<String>,
    group: Option<u32>,
}

/// Emojibase's group of components (skin tones, hair styles), which are not entities.
const COMPONENT_GROUP: u32 = 2;

impl Catalog {
    /// Joins the packages' files into entities. `files` holds every package of
    /// [`super::PACKAGES`].
    pub fn join(files: &[PackageFiles]) -> Result<Catalog, DatasetError> {
        let of = |name: &str| {
            files
                .iter()
                .find(|f| f.package.name == name)
                .ok_or_else(|| DatasetError::PackageData {
                    package: name.to_string(),
                    file: String::new(),
                    reason: "the package was not read".into(),
                })
        };
        let emojibase = of(EMOJIBASE)?;
        let data_path = "package/en/data.json";
        let bad_data = |reason: String| DatasetError::PackageData {
            package: EMOJIBASE.into(),
            file: data_path.into(),
            reason,
        };
        let data = emojibase
            .files
            .get(data_path)
            .ok_or_else(|| bad_data("missing".into()))?;
        let entries: Vec<EmojibaseEntry> =
            serde_json::from_slice(data).map_err(|e| bad_data(e.to_string()))?;

        let mut entities = Vec::new();
        let mut by_key: HashMap<String, usize> = HashMap::new();
        let mut by_name: HashMap<String, usize> = HashMap::new();
        // `None` where two names share a kebab case: Fluent's file cannot say which it is.
        let mut by_kebab: HashMap<String, Option<usize>> = HashMap::new();
        let mut seen_names = std::collections::HashSet::new();
        for e in entries {
            if e.group.is_none_or(|g| g == COMPONENT_GROUP) {
                continue;
            }
            let Some(key) = codepoint_key(&e.hexcode) else {
                continue;
            };
            let name = e.label.to_lowercase();
            if by_key.contains_key(&key) || !seen_names.insert(name.clone()) {
                continue;
            }
            by_key.insert(key.clone(), entities.len());
            by_name.insert(name.clone(), entities.len());
            by_kebab
                .entry(kebab(&name))
                .and_modify(|i| *i = None)
                .or_insert(Some(entities.len()));
            entities.push(Entity {
                slug: String::new(),
                name,
                codepoints: key,
                tags: e.tags.iter().map(|t| t.to_lowercase()).collect(),
                renditions: Vec::new(),
            });
        }
        assign_slugs(&mut entities);

        let mut found: Vec<BTreeMap<Style, String>> = vec![BTreeMap::new(); entities.len()];
        let mut unmatched: BTreeMap<String, usize> = BTreeMap::new();
        let mut place = |style: Style, index: Option<usize>, path: &str| match index {
            Some(i) => {
                // Sorted paths: the first file of a key wins (`a9.svg` before `a9-fe0f.svg`).
                found[i].entry(style).or_insert_with(|| path.to_string());
            }
            None => *unmatched.entry(style.id().to_string()).or_default() += 1,
        };
        let by_codepoints = |stem: &str| codepoint_key(stem).and_then(|k| by_key.get(&k).copied());

        for path in of(TWEMOJI)?.files.keys() {
            if let Some(stem) = file_stem(path, "package/", ".svg") {
                place(Style::Twemoji, by_codepoints(stem), path);
            }
        }
        for path in of(OPENMOJI)?.files.keys() {
            if let Some(stem) = file_stem(path, "package/color/svg/", ".svg") {
                place(Style::Openmoji, by_codepoints(stem), path);
            } else if let Some(stem) = file_stem(path, "package/black/svg/", ".svg") {
                place(Style::OpenmojiBlack, by_codepoints(stem), path);
            }
        }
        let aliases: HashMap<&str, &str> = FLUENT_ALIASES.iter().copied().collect();
        for path in of(FLUENT)?.files.keys() {
            for (folder, style) in [
                ("package/icons/flat/", Style::FluentFlat),
                ("package/icons/modern/", Style::FluentModern),
                ("package/icons/high-contrast/", Style::FluentHighContrast),
            ] {
                if let Some(stem) = file_stem(path, folder, ".svg") {
                    let stem = stem.strip_suffix("-default").unwrap_or(stem);
                    let index = match aliases.get(stem) {
                        Some(name) => by_name.get(*name).copied(),
                        None => by_kebab.get(stem).copied().flatten(),
                    };
                    place(style, index, path);
                }
            }
        }
        for path in of(NOTO)?.files.keys() {
            if let Some(stem) = file_stem(path, "package/img/google/64/", ".png") {
                place(Style::Noto, by_codepoints(stem), path);
            }
        }

        for (entity, styles) in entities.iter_mut().zip(found) {
            entity.renditions = styles
                .into_iter()
                .map(|(style, path)| Rendition { style, path })
                .collect();
        }
        entities.retain(|e| !e.renditions.is_empty());
        Ok(Catalog {
            entities,
            unmatched,
        })
    }
}

/// The stem of `path` when it lies directly in `folder` and ends with `ext`.
fn file_stem<'a>(path: &'a str, folder: &str, ext: &str) -> Option<&'a str> {
    let stem = path.strip_prefix(folder)?.strip_suffix(ext)?;
    (!stem.contains('/')).then_some(stem)
}

/// Slugs are the kebab-case names; names whose kebab case collides (`keycap: *` and `keycap: #`
/// are both `keycap`) or is empty take their codepoints too, so no slug depends on order.
fn assign_slugs(entities: &mut [Entity]) {
    let mut count: HashMap<String, usize> = HashMap::new();
    for e in entities.iter() {
        *count.entry(kebab(&e.name)).or_default() += 1;
    }
    for e in entities.iter_mut() {
        let k = kebab(&e.name);
        e.slug = if k.is_empty() {
            e.codepoints.clone()
        } else if count[&k] > 1 {
            format!("{k}-{}", e.codepoints)
        } else {
            k
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codepoints_drop_fe0f_and_leading_zeros() {
        assert_eq!(codepoint_key("0023-FE0F-20E3").as_deref(), Some("23-20e3"));
        assert_eq!(codepoint_key("1F436").as_deref(), Some("1f436"));
        assert_eq!(codepoint_key("1f1e7-1f1f9").as_deref(), Some("1f1e7-1f1f9"));
        assert_eq!(codepoint_key("fe0f"), None);
        assert_eq!(codepoint_key("dog"), None);
    }

    #[test]
    fn kebab_matches_fluent_file_names() {
        assert_eq!(kebab("A button (blood type)"), "a-button-blood-type");
        assert_eq!(kebab("1st place medal"), "1st-place-medal");
        assert_eq!(kebab("piñata"), "pinata");
        assert_eq!(kebab("flag: Côte d’Ivoire"), "flag-cote-divoire");
        assert_eq!(kebab("eight o’clock"), "eight-oclock");
        assert_eq!(kebab("man’s shoe"), "mans-shoe");
        assert_eq!(kebab("*"), "");
    }
}
