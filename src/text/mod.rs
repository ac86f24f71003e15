//! The BM25 index over caption, entity and tags (tantivy). Derived from the store (invariant 1 of ARCHITECTURE.md):
//! it records the last change-log sequence it applied, its analyzer version and language in its
//! commit payload, replays the gap on open, and is wiped and rebuilt when it cannot be opened or
//! was analyzed differently.
//!
//! A query's words match in three tiers: the same stem (BM25); then, for a word the index does
//! not hold, words within a small edit distance (typos); and words that start with the last
//! query word (search as you type). Every pair found by a word of the first tier ranks above
//! every pair found only by the others. A text that is an entity's name, or holds one as a run
//! of its words ("radio in noto style"), lifts that entity's pairs above pairs that only share
//! words with it ("radio button").
//!
//! Writes happen on the store's writer thread only; searches on any thread.
//!
//! Not here: the analysis recipe itself (`analyzer.rs`), vector retrieval (`vector/`), fusion
//! (`search/`).

pub mod analyzer;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tantivy::collector::{DocSetCollector, TopDocs};
use tantivy::query::{
    AllQuery, BooleanQuery, BoostQuery, ConstScoreQuery, FuzzyTermQuery, Occur, Query, QueryClone,
    TermQuery,
};
use tantivy::schema::{
    FAST, Field, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing, TextOptions, Value,
};
use tantivy::tokenizer::TextAnalyzer;
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term, doc};

pub use analyzer::{ANALYZER_VERSION, TextLanguage, UnknownLanguage, name_key};

use crate::error::{IndexError, StoreError};
use crate::kb::Progress;
use crate::store::Store;
use crate::store::records::{Change, ImageId, PairRecord};

/// Memory the tantivy writer may buffer before it flushes a segment.
const WRITER_MEMORY: usize = 64 << 20;

/// Weight of a word found in the entity name against one found in the caption or tags.
const ENTITY_BOOST: f32 = 1.5;
/// Weight of a query that is a whole entity name (folded).
const NAME_BOOST: f32 = 3.0;
/// Constant score of a word found at edit distance 1 (distance 2 scores half of it): about
/// the BM25 score of a rare word in a short caption, so that a pair matching one query word
/// exactly and another with a typo outranks pairs matching the first word alone.
const TYPO_SCORE: f32 = 3.0;
/// Constant score of a word the last query word starts (as [`TYPO_SCORE`]).
const PREFIX_SCORE: f32 = 3.0;
/// The longest entity name, in words, looked for inside a query's text.
const MAX_NAME_WORDS: usize = 8;
/// The words of a query's text searched for entity names inside it.
const NAMES_WITHIN_WORDS: usize = 64;
/// The last query word must have this many characters before it matches as a prefix: shorter
/// ones would match a large part of the dictionary.
const PREFIX_MIN_CHARS: usize = 3;

/// The edit distance a word of `chars` characters may be misspelt by: none below 5 letters,
/// 1 from 5, 2 from 9 (as search engines people know do). A transposition counts as one.
pub fn typo_distance(chars: usize) -> u8 {
    match chars {
        0..5 => 0,
        5..9 => 1,
        _ => 2,
    }
}

#[derive(Clone, Copy)]
struct Fields {
    id: Field,
    doc: Field,
    caption: Field,
    entity: Field,
    entity_key: Field,
    tags: Field,
    tag_key: Field,
    /// Caption, entity and tags as written (folded, not stemmed): typos and prefixes are of
    /// what people type, not of stems.
    plain: Field,
}

fn schema() -> (Schema, Fields) {
    let words = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(analyzer::WORDS)
            .set_index_option(IndexRecordOption::WithFreqs),
    );
    let plain = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(analyzer::PLAIN)
            .set_index_option(IndexRecordOption::Basic),
    );
    let names = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(analyzer::NAME)
            .set_index_option(IndexRecordOption::Basic),
    );
    let mut b = Schema::builder();
    let fields = Fields {
        id: b.add_text_field("id", STRING | STORED),
        // The pair's doc number as a fast field: a hit maps to its pair without touching the
        // compressed document store.
        doc: b.add_u64_field("doc", FAST),
        caption: b.add_text_field("caption", words.clone()),
        entity: b.add_text_field("entity", words.clone()),
        entity_key: b.add_text_field("entity_key", names.clone()),
        tags: b.add_text_field("tags", words),
        tag_key: b.add_text_field("tag_key", names),
        plain: b.add_text_field("plain", plain),
    };
    (b.build(), fields)
}

#[derive(Serialize, Deserialize)]
struct Payload {
    seq: u64,
    /// Absent in indices from before analyzers were versioned (version 1).
    #[serde(default = "legacy_version")]
    analyzer: u32,
    #[serde(default)]
    language: Option<TextLanguage>,
}

fn legacy_version() -> u32 {
    1
}

/// Filters shared by every retriever: exact entity and tags, compared folded (case and accents
/// aside, see [`name_key`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    /// Only pairs of this entity.
    pub entity: Option<String>,
    /// Only pairs having every one of these tags.
    pub tags: Vec<String>,
}

impl Filters {
    /// True when nothing is filtered.
    pub fn is_empty(&self) -> bool {
        self.entity.is_none() && self.tags.is_empty()
    }

    /// Whether a pair passes.
    pub fn accepts(&self, pair: &PairRecord) -> bool {
        // The same folding as the index's key fields, so that every retriever agrees on
        // "Ölberg", "ölberg" and "OLBERG".
        let same = |a: &str, b: &str| a == b || name_key(a) == name_key(b);
        let entity_ok = self
            .entity
            .as_ref()
            .is_none_or(|e| pair.entity.as_ref().is_some_and(|pe| same(pe, e)));
        entity_ok
            && self
                .tags
                .iter()
                .all(|t| pair.tags.iter().any(|pt| same(pt, t)))
    }
}

/// Why an existing index is not used as it is.
enum Unusable {
    /// Analyzed by another recipe or for another language: rebuilt, which is expected.
    Stale(String),
    /// Missing, damaged or foreign.
    Broken(String),
}

/// The BM25 index.
pub struct TextIndex {
    path: PathBuf,
    index: Index,
    fields: Fields,
    language: TextLanguage,
    reader: IndexReader,
    /// `None` when opened read-only beside the writer of another process, which holds
    /// tantivy's writer lock.
    writer: Option<Mutex<IndexWriter>>,
}

impl TextIndex {
    /// Opens the index in `dir` and brings it up to the store. An index of an older analyzer
    /// version or another language is rebuilt (`progress` follows the rebuild); a damaged or
    /// foreign one is wiped and rebuilt.
    pub fn open(
        dir: &Path,
        store: &Store,
        language: TextLanguage,
        progress: &dyn Fn(Progress),
    ) -> Result<TextIndex, crate::Error> {
        match Self::open_existing(dir, store, language) {
            Ok(index) => Ok(index),
            Err(reason) => {
                match reason {
                    Unusable::Stale(why) => {
                        tracing::warn!("rebuilding the text index {} ({why})", dir.display());
                    }
                    Unusable::Broken(why) if dir.exists() => tracing::warn!(
                        "text index {} is unusable ({why}); rebuilding it",
                        dir.display()
                    ),
                    Unusable::Broken(_) => {}
                }
                let _ = std::fs::remove_dir_all(dir);
                let index = Self::create(dir, language)?;
                index.rebuild_with_progress(store, progress)?;
                Ok(index)
            }
        }
    }

    fn open_existing(
        dir: &Path,
        store: &Store,
        language: TextLanguage,
    ) -> Result<TextIndex, Unusable> {
        let broken = |e: &dyn std::fmt::Display| Unusable::Broken(e.to_string());
        if !dir.join("meta.json").exists() {
            return Err(Unusable::Broken("no index".into()));
        }
        let index = Index::open_in_dir(dir).map_err(|e| broken(&e))?;
        // The payload first: an index from an older build also has an older schema, and the
        // reason to give is the analyzer.
        let payload = Self::payload_of(&index).map_err(|e| broken(&e))?;
        if payload.analyzer != ANALYZER_VERSION {
            return Err(Unusable::Stale(format!(
                "analyzer version {} → {ANALYZER_VERSION}",
                payload.analyzer
            )));
        }
        if payload.language != Some(language) {
            return Err(Unusable::Stale(format!(
                "language {} → {language}",
                payload.language.map_or("unknown", TextLanguage::name)
            )));
        }
        let (expected, _) = schema();
        if index.schema() != expected {
            return Err(Unusable::Broken("schema differs from this build's".into()));
        }
        let text = Self::with_index(dir, index, language, true).map_err(|e| broken(&e))?;
        let rtxn = store.read().map_err(|e| broken(&e))?;
        if payload.seq > store.last_seq(&rtxn).map_err(|e| broken(&e))? {
            return Err(Unusable::Broken(
                "index is ahead of the store (restored backup?)".into(),
            ));
        }
        drop(rtxn);
        text.catch_up(store).map_err(|e| broken(&e))?;
        Ok(text)
    }

    fn create(dir: &Path, language: TextLanguage) -> Result<TextIndex, IndexError> {
        std::fs::create_dir_all(dir).map_err(|e| IndexError::Text {
            path: dir.into(),
            source: e.into(),
        })?;
        let (schema, _) = schema();
        let index = Index::create_in_dir(dir, schema).map_err(|source| IndexError::Text {
            path: dir.into(),
            source,
        })?;
        Self::with_index(dir, index, language, true)
    }

    /// Opens the index in `dir` for searching only, beside the process that writes it: no
    /// tantivy writer, no catch-up, no rebuild. Each search first looks for the writer's latest
    /// commit ([`TextIndex::refresh`]). An index this build cannot use is an error that says so.
    pub fn open_read_only(dir: &Path, language: TextLanguage) -> Result<TextIndex, crate::Error> {
        let unusable = |why: String| StoreError::ReadOnly {
            path: dir.to_path_buf(),
            reason: format!(
                "the text index {} cannot be used ({why}); open the knowledge base for writing \
                 once (or let the daemon run) to rebuild it",
                dir.display()
            ),
        };
        if !dir.join("meta.json").exists() {
            return Err(unusable("no index".into()).into());
        }
        let index = Index::open_in_dir(dir).map_err(|e| unusable(e.to_string()))?;
        let payload = Self::payload_of(&index).map_err(|e| unusable(e.to_string()))?;
        if payload.analyzer != ANALYZER_VERSION || payload.language != Some(language) {
            return Err(unusable("built with another analyzer or language".into()).into());
        }
        if index.schema() != schema().0 {
            return Err(unusable("schema differs from this build's".into()).into());
        }
        Ok(Self::with_index(dir, index, language, false)?)
    }

    /// Picks up the writer's latest commit; a no-op where this process writes (its commits
    /// reload the reader already).
    pub fn refresh(&self) -> Result<(), IndexError> {
        if self.writer.is_some() {
            return Ok(());
        }
        // The writer deletes the segments a merge replaced right after its commit: a reload that
        // read the meta just before may miss a file. The next read finds the new meta.
        let mut tries = 0;
        loop {
            match self.reader.reload() {
                Ok(()) => return Ok(()),
                Err(_) if tries < 3 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(self.err(e)),
            }
        }
    }

    fn writer(&self) -> Result<std::sync::MutexGuard<'_, IndexWriter>, crate::Error> {
        match &self.writer {
            Some(writer) => Ok(writer.lock().unwrap_or_else(|e| e.into_inner())),
            None => Err(StoreError::ReadOnly {
                path: self.path.clone(),
                reason: "the text index is read-only in this process".into(),
            }
            .into()),
        }
    }

    fn with_index(
        dir: &Path,
        index: Index,
        language: TextLanguage,
        writable: bool,
    ) -> Result<TextIndex, IndexError> {
        let err = |source| IndexError::Text {
            path: dir.into(),
            source,
        };
        index
            .tokenizers()
            .register(analyzer::WORDS, analyzer::words(language));
        index
            .tokenizers()
            .register(analyzer::NAME, analyzer::name());
        index
            .tokenizers()
            .register(analyzer::PLAIN, analyzer::words(TextLanguage::None));
        let (_, fields) = schema();
        let writer = if writable {
            Some(Mutex::new(
                index
                    .writer_with_num_threads(1, WRITER_MEMORY)
                    .map_err(err)?,
            ))
        } else {
            None
        };
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(err)?;
        Ok(TextIndex {
            path: dir.into(),
            index,
            fields,
            language,
            reader,
            writer,
        })
    }

    fn err(&self, source: tantivy::TantivyError) -> IndexError {
        IndexError::Text {
            path: self.path.clone(),
            source,
        }
    }

    fn payload_of(index: &Index) -> Result<Payload, tantivy::TantivyError> {
        let metas = index.load_metas()?;
        Ok(metas
            .payload
            .and_then(|p| serde_json::from_str::<Payload>(&p).ok())
            .unwrap_or(Payload {
                seq: 0,
                analyzer: ANALYZER_VERSION,
                language: None,
            }))
    }

    /// The last change-log sequence this index applied.
    pub fn applied_seq(&self) -> Result<u64, IndexError> {
        Ok(Self::payload_of(&self.index).map_err(|e| self.err(e))?.seq)
    }

    /// Replays the change log from the last applied sequence.
    pub fn catch_up(&self, store: &Store) -> Result<usize, crate::Error> {
        let applied = self.applied_seq()?;
        let rtxn = store.read()?;
        let changes = store.changes_after(&rtxn, applied)?;
        drop(rtxn);
        if !changes.is_empty() {
            tracing::info!(
                count = changes.len(),
                "replaying change log into the text index"
            );
            self.apply(store, &changes)?;
        }
        Ok(changes.len())
    }

    /// Brings the documents of the changed pairs to their state in the store, and commits.
    /// Idempotent: replaying a change twice leaves the same index.
    pub fn apply(&self, store: &Store, changes: &[Change]) -> Result<(), crate::Error> {
        let Some(last) = changes.last() else {
            return Ok(());
        };
        let ids: BTreeSet<ImageId> = changes.iter().map(|c| c.id).collect();
        let mut writer = self.writer()?;
        let rtxn = store.read()?;
        for id in ids {
            writer.delete_term(Term::from_field_text(self.fields.id, &id.to_hex()));
            if let Some(pair) = store.pair(&rtxn, &id)? {
                writer
                    .add_document(self.document(&pair))
                    .map_err(|e| self.err(e))?;
            }
        }
        drop(rtxn);
        self.commit(&mut writer, last.seq)
    }

    fn commit(&self, writer: &mut IndexWriter, seq: u64) -> Result<(), crate::Error> {
        let mut prepared = writer.prepare_commit().map_err(|e| self.err(e))?;
        let payload = Payload {
            seq,
            analyzer: ANALYZER_VERSION,
            language: Some(self.language),
        };
        prepared.set_payload(&serde_json::to_string(&payload).expect("payload serializes"));
        prepared.commit().map_err(|e| self.err(e))?;
        self.reader.reload().map_err(|e| self.err(e))?;
        Ok(())
    }

    fn document(&self, pair: &PairRecord) -> TantivyDocument {
        let f = self.fields;
        let mut d = doc!(
            f.id => pair.id.to_hex(),
            f.doc => pair.doc,
            f.caption => pair.caption.as_str(),
            f.plain => pair.caption.as_str()
        );
        if let Some(entity) = &pair.entity {
            d.add_text(f.entity, entity);
            d.add_text(f.entity_key, name_key(entity));
            d.add_text(f.plain, entity);
        }
        for tag in &pair.tags {
            d.add_text(f.tags, tag);
            d.add_text(f.tag_key, name_key(tag));
            d.add_text(f.plain, tag);
        }
        d
    }

    /// Drops every document and indexes every pair of the store again.
    pub fn rebuild(&self, store: &Store) -> Result<usize, crate::Error> {
        self.rebuild_with_progress(store, &|_| {})
    }

    /// [`TextIndex::rebuild`], calling `progress` every few thousand pairs.
    pub fn rebuild_with_progress(
        &self,
        store: &Store,
        progress: &dyn Fn(Progress),
    ) -> Result<usize, crate::Error> {
        let mut writer = self.writer()?;
        writer.delete_all_documents().map_err(|e| self.err(e))?;
        let rtxn = store.read()?;
        let seq = store.last_seq(&rtxn)?;
        let pairs = store.all_pairs(&rtxn)?;
        drop(rtxn);
        let total = pairs.len() as u64;
        progress(Progress { done: 0, total });
        for (i, pair) in pairs.iter().enumerate() {
            writer
                .add_document(self.document(pair))
                .map_err(|e| self.err(e))?;
            if (i + 1) % 4096 == 0 {
                progress(Progress {
                    done: i as u64 + 1,
                    total,
                });
            }
        }
        self.commit(&mut writer, seq)?;
        progress(Progress { done: total, total });
        Ok(pairs.len())
    }

    /// BM25 search over caption, entity and tags, with typo tolerance and prefix matching of
    /// the last word (see the module header); returns doc numbers (see [`PairRecord::doc`]) and
    /// scores, best first. Nothing in the text is syntax: a user's words are not a query
    /// language.
    pub fn search(
        &self,
        text: &str,
        filters: &Filters,
        limit: usize,
    ) -> Result<Vec<(u64, f32)>, IndexError> {
        let searcher = self.reader.searcher();
        let Some(matching) = self.text_query(&searcher, text)? else {
            return Ok(Vec::new());
        };
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![(Occur::Must, matching)];
        clauses.extend(self.filter_clauses(filters));
        let query = BooleanQuery::new(clauses);
        let top = searcher
            .search(&query, &TopDocs::with_limit(limit.max(1)).order_by_score())
            .map_err(|e| self.err(e))?;
        self.doc_numbers(&searcher, top)
    }

    /// The query the words of `text` make (see the module header); `None` when `text` holds no
    /// word.
    fn text_query(
        &self,
        searcher: &tantivy::Searcher,
        text: &str,
    ) -> Result<Option<Box<dyn Query>>, IndexError> {
        let f = self.fields;
        let searched = [(f.caption, 1.0), (f.entity, ENTITY_BOOST), (f.tags, 1.0)];
        let stems = analyzer::terms(&mut self.analyzer(analyzer::WORDS)?, text);
        // The same words unstemmed: the stemmer maps each word to one term, so they pair up.
        let plain = analyzer::terms(&mut self.analyzer(analyzer::PLAIN)?, text);
        if stems.is_empty() {
            return Ok(None);
        }
        let mut exact: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        let mut loose: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        // The largest score the loose clauses can add up to: pairs found by an exact word get at
        // least this much more, so that they rank first.
        let mut loose_max = 0.0f32;
        for (stem, word) in stems.iter().zip(&plain) {
            let mut known = false;
            for (field, boost) in searched {
                let term = Term::from_field_text(field, stem);
                known |= searcher.doc_freq(&term).map_err(|e| self.err(e))? > 0;
                exact.push((
                    Occur::Should,
                    boosted(TermQuery::new(term, IndexRecordOption::WithFreqs), boost),
                ));
            }
            // A word the index does not hold is likely misspelt: look for near words, as
            // written (a typo's stem can be far from the word's).
            let distance = typo_distance(word.chars().count());
            if !known && distance > 0 {
                let score = TYPO_SCORE / f32::from(distance);
                let term = Term::from_field_text(f.plain, word);
                loose.push((
                    Occur::Should,
                    constant(FuzzyTermQuery::new(term, distance, true), score),
                ));
                loose_max += score;
            }
        }
        // The whole text as an entity name, folded.
        let key = name_key(text);
        let key_term = Term::from_field_text(f.entity_key, &key);
        let names_entity =
            !key.is_empty() && searcher.doc_freq(&key_term).map_err(|e| self.err(e))? > 0;
        if !key.is_empty() {
            exact.push((
                Occur::Should,
                boosted(
                    TermQuery::new(key_term, IndexRecordOption::Basic),
                    NAME_BOOST,
                ),
            ));
        }
        // Else entity names inside the text: "radio in noto style" names the entity `radio`,
        // though the whole text names none. Weighted by the share of the text's words the name
        // covers, so that a longer name that only matches by its stems ("man cooks") can still
        // win; not when a word is misspelt (the name inside may be another entity's, as
        // `cat` in "grinnig cat").
        if !names_entity && loose.is_empty() {
            let words = text.split_whitespace().count().max(1) as f32;
            for name in self.names_within(searcher, text)? {
                let share = name.split_whitespace().count() as f32 / words;
                exact.push((
                    Occur::Should,
                    boosted(
                        TermQuery::new(
                            Term::from_field_text(f.entity_key, &name),
                            IndexRecordOption::Basic,
                        ),
                        NAME_BOOST * share.sqrt(),
                    ),
                ));
            }
        }
        // The last word as a prefix of words as written, unless the text ends in a separator
        // (the word is complete).
        let complete = text.chars().last().is_none_or(|c| !c.is_alphanumeric());
        if !complete
            && let Some(last) = plain.last()
            && last.chars().count() >= PREFIX_MIN_CHARS
            && self.starts_some_word(searcher, last)?
        {
            let term = Term::from_field_text(f.plain, last);
            loose.push((
                Occur::Should,
                constant(FuzzyTermQuery::new_prefix(term, 0, false), PREFIX_SCORE),
            ));
            loose_max += PREFIX_SCORE;
        }
        let exact = BooleanQuery::new(exact);
        if loose.is_empty() {
            return Ok(Some(Box::new(exact)));
        }
        let tier: Box<dyn Query> = Box::new(BoostQuery::new(
            Box::new(ConstScoreQuery::new(exact.box_clone(), 1.0)),
            loose_max + 1.0,
        ));
        Ok(Some(Box::new(BooleanQuery::new(vec![
            (Occur::Should, Box::new(exact)),
            (Occur::Should, Box::new(BooleanQuery::new(loose))),
            (Occur::Should, tier),
        ]))))
    }

    /// The keys of the entity names that runs of words of `text` spell, read left to right,
    /// the longest name at each word first, names not overlapping; the whole text is left to
    /// the caller. Punctuation at either end of a run does not count ("cat," names `cat`),
    /// inside it does ("flag: chad").
    fn names_within(
        &self,
        searcher: &tantivy::Searcher,
        text: &str,
    ) -> Result<Vec<String>, IndexError> {
        let words: Vec<&str> = text.split_whitespace().take(NAMES_WITHIN_WORDS).collect();
        let mut keys = Vec::new();
        let mut start = 0;
        while start < words.len() {
            let longest = words.len().min(start + MAX_NAME_WORDS);
            let mut found = None;
            for end in (start + 1..=longest).rev() {
                if start == 0 && end == words.len() {
                    continue;
                }
                let run = words[start..end].join(" ");
                let key = name_key(run.trim_matches(|c: char| !c.is_alphanumeric()));
                if key.is_empty() {
                    continue;
                }
                let term = Term::from_field_text(self.fields.entity_key, &key);
                if searcher.doc_freq(&term).map_err(|e| self.err(e))? > 0 {
                    found = Some((end, key));
                    break;
                }
            }
            match found {
                Some((end, key)) => {
                    keys.push(key);
                    start = end;
                }
                None => start += 1,
            }
        }
        Ok(keys)
    }

    /// Whether some indexed word (as written) starts with `prefix`: one dictionary seek per
    /// segment, which spares the common query whose last word starts nothing the prefix tier
    /// and its second pass over the exact words.
    fn starts_some_word(
        &self,
        searcher: &tantivy::Searcher,
        prefix: &str,
    ) -> Result<bool, IndexError> {
        for segment in searcher.segment_readers() {
            let index = segment
                .inverted_index(self.fields.plain)
                .map_err(|e| self.err(e))?;
            let mut stream = index
                .terms()
                .range()
                .ge(prefix.as_bytes())
                .into_stream()
                .map_err(|e| self.err(e.into()))?;
            if stream.advance() && stream.key().starts_with(prefix.as_bytes()) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn analyzer(&self, name: &str) -> Result<TextAnalyzer, IndexError> {
        self.index.tokenizers().get(name).ok_or_else(|| {
            self.err(tantivy::TantivyError::InternalError(format!(
                "analyzer {name} is not registered"
            )))
        })
    }

    /// Doc numbers of every pair that passes `filters`, in no particular order; an empty filter
    /// passes every pair. The vector retrievers use it to search a small filtered set exactly.
    pub fn filtered_docs(&self, filters: &Filters) -> Result<Vec<u64>, IndexError> {
        let mut clauses = self.filter_clauses(filters);
        if clauses.is_empty() {
            clauses.push((Occur::Must, Box::new(AllQuery)));
        }
        let searcher = self.reader.searcher();
        let found = searcher
            .search(&BooleanQuery::new(clauses), &DocSetCollector)
            .map_err(|e| self.err(e))?;
        Ok(self
            .doc_numbers(&searcher, found.into_iter().map(|a| ((), a)))?
            .into_iter()
            .map(|(doc, ())| doc)
            .collect())
    }

    /// One `Must` clause per filter (entity, each tag; folded whole names).
    fn filter_clauses(&self, filters: &Filters) -> Vec<(Occur, Box<dyn Query>)> {
        let f = self.fields;
        let entity = filters
            .entity
            .iter()
            .map(|e| Term::from_field_text(f.entity_key, &name_key(e)));
        let tags = filters
            .tags
            .iter()
            .map(|t| Term::from_field_text(f.tag_key, &name_key(t)));
        entity
            .chain(tags)
            .map(|term| {
                let query: Box<dyn Query> =
                    Box::new(TermQuery::new(term, IndexRecordOption::Basic));
                (Occur::Must, query)
            })
            .collect()
    }

    /// Maps tantivy addresses (with whatever rides along) to doc numbers through the `doc` fast
    /// field, keeping the order.
    fn doc_numbers<T>(
        &self,
        searcher: &tantivy::Searcher,
        found: impl IntoIterator<Item = (T, tantivy::DocAddress)>,
    ) -> Result<Vec<(u64, T)>, IndexError> {
        let mut columns = std::collections::HashMap::new();
        let mut out = Vec::new();
        for (extra, address) in found {
            let column = match columns.entry(address.segment_ord) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let reader = searcher.segment_reader(address.segment_ord);
                    e.insert(reader.fast_fields().u64("doc").map_err(|e| self.err(e))?)
                }
            };
            if let Some(doc) = column.first(address.doc_id) {
                out.push((doc, extra));
            }
        }
        Ok(out)
    }

    #[cfg(test)]
    pub(crate) fn writer_for_tests(&self) -> std::sync::MutexGuard<'_, IndexWriter> {
        self.writer.as_ref().unwrap().lock().unwrap()
    }

    #[cfg(test)]
    pub(crate) fn id_term(&self, id: &ImageId) -> Term {
        Term::from_field_text(self.fields.id, &id.to_hex())
    }

    #[cfg(test)]
    pub(crate) fn reload_for_tests(&self) {
        self.reader.reload().unwrap();
    }

    /// Every id in the index (for consistency checks).
    pub fn all_ids(&self) -> Result<Vec<ImageId>, IndexError> {
        let searcher = self.reader.searcher();
        let docs = searcher
            .search(&AllQuery, &DocSetCollector)
            .map_err(|e| self.err(e))?;
        let mut out = Vec::with_capacity(docs.len());
        for address in docs {
            let doc: TantivyDocument = searcher.doc(address).map_err(|e| self.err(e))?;
            if let Some(id) = doc
                .get_first(self.fields.id)
                .and_then(|v| v.as_str())
                .and_then(|s| s.parse().ok())
            {
                out.push(id);
            }
        }
        out.sort();
        Ok(out)
    }
}

fn boosted(query: impl Query, boost: f32) -> Box<dyn Query> {
    if boost == 1.0 {
        Box::new(query)
    } else {
        Box::new(BoostQuery::new(Box::new(query), boost))
    }
}

/// `query` scoring `score` for every pair it finds (fuzzy and prefix matches have no BM25).
fn constant(query: impl Query, score: f32) -> Box<dyn Query> {
    Box::new(ConstScoreQuery::new(Box::new(query), score))
}
