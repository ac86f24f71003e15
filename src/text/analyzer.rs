//! The analyzers of the BM25 index: how captions, entity names, tags and query texts become
//! terms. Words are split on Unicode letters and digits, lower-cased, folded to ASCII where a
//! folding exists (é → e, Ö → o, ß → ss) and stemmed for the KB's [`TextLanguage`]; whole entity
//! names and tags are folded the same way but kept whole, for exact matching and filters.
//!
//! [`ANALYZER_VERSION`] names this recipe: an index built by another version is rebuilt on open.
//!
//! Not here: the index itself and query building (`text/mod.rs`).

use std::fmt;
use std::str::FromStr;

use tantivy::tokenizer::{
    AsciiFoldingFilter, Language, LowerCaser, RawTokenizer, RemoveLongFilter, SimpleTokenizer,
    Stemmer, TextAnalyzer, TokenStream,
};

/// Version of the analysis recipe. Bump it whenever a change to the analyzers would make terms
/// already in an index differ from those a query produces; indices of an older version are
/// rebuilt from the store on open.
///
/// 1: tantivy's default tokenizer (before analyzers existed; such indices record no version).
/// 2: Unicode words, lower-casing, ASCII folding, stemming per language; folded whole names;
///    unstemmed words for typos and prefixes.
pub const ANALYZER_VERSION: u32 = 2;

/// Name under which the word analyzer (with stemming) is registered in the index.
pub(crate) const WORDS: &str = "reimagen_words";
/// Name of the word analyzer without stemming (words as written, for typos and prefixes).
pub(crate) const PLAIN: &str = "reimagen_plain";
/// Name of the analyzer that keeps a whole entity name or tag as one folded term.
pub(crate) const NAME: &str = "reimagen_name";

/// Words longer than this (in bytes) are dropped: base64 blobs and URLs are not words.
const LONGEST_WORD: usize = 60;

/// The language whose stemmer applies to captions, entity names and tags (`language` in
/// `kb.toml`). `none` keeps words as they are (after lower-casing and folding).
///
/// Written in `kb.toml` as its lower-case English name (`english`, `french`, …); the two-letter
/// ISO 639-1 codes (`en`, `fr`, …) are accepted too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TextLanguage {
    /// No stemming.
    None,
    /// Arabic.
    Arabic,
    /// Danish.
    Danish,
    /// Dutch.
    Dutch,
    /// English (the default).
    #[default]
    English,
    /// Finnish.
    Finnish,
    /// French.
    French,
    /// German.
    German,
    /// Greek.
    Greek,
    /// Hungarian.
    Hungarian,
    /// Italian.
    Italian,
    /// Norwegian.
    Norwegian,
    /// Portuguese.
    Portuguese,
    /// Romanian.
    Romanian,
    /// Russian.
    Russian,
    /// Spanish.
    Spanish,
    /// Swedish.
    Swedish,
    /// Tamil.
    Tamil,
    /// Turkish.
    Turkish,
}

/// Every language with its `kb.toml` name and ISO 639-1 code.
const LANGUAGES: &[(TextLanguage, &str, &str)] = &[
    (TextLanguage::None, "none", "none"),
    (TextLanguage::Arabic, "arabic", "ar"),
    (TextLanguage::Danish, "danish", "da"),
    (TextLanguage::Dutch, "dutch", "nl"),
    (TextLanguage::English, "english", "en"),
    (TextLanguage::Finnish, "finnish", "fi"),
    (TextLanguage::French, "french", "fr"),
    (TextLanguage::German, "german", "de"),
    (TextLanguage::Greek, "greek", "el"),
    (TextLanguage::Hungarian, "hungarian", "hu"),
    (TextLanguage::Italian, "italian", "it"),
    (TextLanguage::Norwegian, "norwegian", "no"),
    (TextLanguage::Portuguese, "portuguese", "pt"),
    (TextLanguage::Romanian, "romanian", "ro"),
    (TextLanguage::Russian, "russian", "ru"),
    (TextLanguage::Spanish, "spanish", "es"),
    (TextLanguage::Swedish, "swedish", "sv"),
    (TextLanguage::Tamil, "tamil", "ta"),
    (TextLanguage::Turkish, "turkish", "tr"),
];

impl TextLanguage {
    /// The name written in `kb.toml`.
    pub fn name(self) -> &'static str {
        LANGUAGES
            .iter()
            .find(|(l, _, _)| *l == self)
            .map_or("none", |(_, name, _)| name)
    }

    /// Every accepted name, for error messages and help.
    pub fn names() -> Vec<&'static str> {
        LANGUAGES.iter().map(|(_, name, _)| *name).collect()
    }

    fn stemmer(self) -> Option<Language> {
        Some(match self {
            TextLanguage::None => return None,
            TextLanguage::Arabic => Language::Arabic,
            TextLanguage::Danish => Language::Danish,
            TextLanguage::Dutch => Language::Dutch,
            TextLanguage::English => Language::English,
            TextLanguage::Finnish => Language::Finnish,
            TextLanguage::French => Language::French,
            TextLanguage::German => Language::German,
            TextLanguage::Greek => Language::Greek,
            TextLanguage::Hungarian => Language::Hungarian,
            TextLanguage::Italian => Language::Italian,
            TextLanguage::Norwegian => Language::Norwegian,
            TextLanguage::Portuguese => Language::Portuguese,
            TextLanguage::Romanian => Language::Romanian,
            TextLanguage::Russian => Language::Russian,
            TextLanguage::Spanish => Language::Spanish,
            TextLanguage::Swedish => Language::Swedish,
            TextLanguage::Tamil => Language::Tamil,
            TextLanguage::Turkish => Language::Turkish,
        })
    }
}

impl fmt::Display for TextLanguage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A language name that no stemmer covers.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown language `{given}`; one of: {}", TextLanguage::names().join(", "))]
pub struct UnknownLanguage {
    /// What was given.
    pub given: String,
}

impl FromStr for TextLanguage {
    type Err = UnknownLanguage;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_lowercase();
        LANGUAGES
            .iter()
            .find(|(_, name, code)| *name == wanted || *code == wanted)
            .map(|(l, _, _)| *l)
            .ok_or(UnknownLanguage {
                given: s.to_string(),
            })
    }
}

impl TryFrom<String> for TextLanguage {
    type Error = UnknownLanguage;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<TextLanguage> for String {
    fn from(l: TextLanguage) -> String {
        l.name().to_string()
    }
}

impl serde::Serialize for TextLanguage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for TextLanguage {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The word analyzer: Unicode words, lower-cased, folded, stemmed for `language`.
pub fn words(language: TextLanguage) -> TextAnalyzer {
    let builder = TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(LONGEST_WORD))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter);
    match language.stemmer() {
        Some(l) => builder.filter(Stemmer::new(l)).build(),
        None => builder.build(),
    }
}

/// The analyzer of whole names: the text as one term, lower-cased and folded.
pub fn name() -> TextAnalyzer {
    TextAnalyzer::builder(RawTokenizer::default())
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .build()
}

/// The terms `analyzer` makes of `text`, in order.
pub fn terms(analyzer: &mut TextAnalyzer, text: &str) -> Vec<String> {
    let mut stream = analyzer.token_stream(text);
    let mut out = Vec::new();
    while stream.advance() {
        out.push(stream.token().text.clone());
    }
    out
}

/// A whole name (entity or tag) as the index keys it: trimmed, inner whitespace collapsed,
/// lower-cased and folded. "Café  Ölberg" and "cafe olberg" give the same key.
pub fn name_key(text: &str) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    terms(&mut name(), &collapsed).pop().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_folded_and_stemmed() {
        let mut en = words(TextLanguage::English);
        assert_eq!(
            terms(&mut en, "Two corgis running across the BEACHES of Brittany"),
            [
                "two", "corgi", "run", "across", "the", "beach", "of", "brittani"
            ]
        );
        assert_eq!(terms(&mut en, "Café Ölberg"), ["cafe", "olberg"]);
        let mut none = words(TextLanguage::None);
        assert_eq!(terms(&mut none, "Corgis, café"), ["corgis", "cafe"]);
    }

    #[test]
    fn words_split_on_unicode_boundaries() {
        let mut none = words(TextLanguage::None);
        assert_eq!(
            terms(&mut none, "naïve—résumé/Straße 42"),
            ["naive", "resume", "strasse", "42"]
        );
    }

    #[test]
    fn name_keys_fold_case_accents_and_spacing() {
        assert_eq!(name_key("  Café   Ölberg "), "cafe olberg");
        assert_eq!(name_key("CAFE OLBERG"), name_key("café ölberg"));
        assert_eq!(name_key(""), "");
    }

    #[test]
    fn languages_parse_by_name_and_code() {
        assert_eq!("french".parse::<TextLanguage>(), Ok(TextLanguage::French));
        assert_eq!("FR".parse::<TextLanguage>(), Ok(TextLanguage::French));
        assert_eq!("none".parse::<TextLanguage>(), Ok(TextLanguage::None));
        let err = "klingon".parse::<TextLanguage>().unwrap_err();
        assert!(err.to_string().contains("klingon") && err.to_string().contains("english"));
        for name in TextLanguage::names() {
            let l: TextLanguage = name.parse().unwrap();
            assert_eq!(l.name(), name);
        }
    }
}
