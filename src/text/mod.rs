//! The BM25 index over caption, entity and tags (tantivy). Derived from the store (invariant 2):
//! it records the last change-log sequence it applied in its commit payload, replays the gap on
//! open, and is wiped and rebuilt when it cannot be opened.
//!
//! Writes happen on the store's writer thread only; searches on any thread.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tantivy::collector::{DocSetCollector, TopDocs};
use tantivy::query::{AllQuery, BooleanQuery, Occur, Query, QueryParser, TermQuery};
use tantivy::schema::{FAST, Field, IndexRecordOption, STORED, STRING, Schema, TEXT, Value};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term, doc};

use crate::error::IndexError;
use crate::store::Store;
use crate::store::records::{Change, ImageId, PairRecord};

/// Memory the tantivy writer may buffer before it flushes a segment.
const WRITER_MEMORY: usize = 64 << 20;

#[derive(Clone, Copy)]
struct Fields {
    id: Field,
    doc: Field,
    caption: Field,
    entity: Field,
    entity_exact: Field,
    tags: Field,
    tag_exact: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let fields = Fields {
        id: b.add_text_field("id", STRING | STORED),
        // The pair's doc number as a fast field: a hit maps to its pair without touching the
        // compressed document store.
        doc: b.add_u64_field("doc", FAST),
        caption: b.add_text_field("caption", TEXT),
        entity: b.add_text_field("entity", TEXT),
        entity_exact: b.add_text_field("entity_exact", STRING),
        tags: b.add_text_field("tags", TEXT),
        tag_exact: b.add_text_field("tag_exact", STRING),
    };
    (b.build(), fields)
}

#[derive(Serialize, Deserialize)]
struct Payload {
    seq: u64,
}

/// Filters shared by every retriever: exact entity and tags (case-insensitive).
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
        // The same folding as the index's exact fields (Unicode lowercase), so that every
        // retriever agrees on "Ölberg" and "ölberg".
        let same = |a: &str, b: &str| a == b || a.to_lowercase() == b.to_lowercase();
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

/// The BM25 index.
pub struct TextIndex {
    path: PathBuf,
    index: Index,
    fields: Fields,
    reader: IndexReader,
    writer: Mutex<IndexWriter>,
}

impl TextIndex {
    /// Opens the index in `dir` and brings it up to the store; a damaged or foreign index is
    /// wiped and rebuilt.
    pub fn open(dir: &Path, store: &Store) -> Result<TextIndex, crate::Error> {
        match Self::open_existing(dir, store) {
            Ok(index) => Ok(index),
            Err(reason) => {
                if dir.exists() {
                    tracing::warn!(
                        "text index {} is unusable ({reason}); rebuilding it",
                        dir.display()
                    );
                }
                let _ = std::fs::remove_dir_all(dir);
                let index = Self::create(dir)?;
                index.rebuild(store)?;
                Ok(index)
            }
        }
    }

    fn open_existing(dir: &Path, store: &Store) -> Result<TextIndex, String> {
        if !dir.join("meta.json").exists() {
            return Err("no index".into());
        }
        let index = Index::open_in_dir(dir).map_err(|e| e.to_string())?;
        let (expected, _) = schema();
        if index.schema() != expected {
            return Err("schema differs from this build's".into());
        }
        let text = Self::with_index(dir, index).map_err(|e| e.to_string())?;
        let applied = text.applied_seq().map_err(|e| e.to_string())?;
        let rtxn = store.read().map_err(|e| e.to_string())?;
        if applied > store.last_seq(&rtxn).map_err(|e| e.to_string())? {
            return Err("index is ahead of the store (restored backup?)".into());
        }
        drop(rtxn);
        text.catch_up(store).map_err(|e| e.to_string())?;
        Ok(text)
    }

    fn create(dir: &Path) -> Result<TextIndex, IndexError> {
        std::fs::create_dir_all(dir).map_err(|e| IndexError::Text {
            path: dir.into(),
            source: e.into(),
        })?;
        let (schema, _) = schema();
        let index = Index::create_in_dir(dir, schema).map_err(|source| IndexError::Text {
            path: dir.into(),
            source,
        })?;
        Self::with_index(dir, index)
    }

    fn with_index(dir: &Path, index: Index) -> Result<TextIndex, IndexError> {
        let err = |source| IndexError::Text {
            path: dir.into(),
            source,
        };
        let (_, fields) = schema();
        let writer = index
            .writer_with_num_threads(1, WRITER_MEMORY)
            .map_err(err)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(err)?;
        Ok(TextIndex {
            path: dir.into(),
            index,
            fields,
            reader,
            writer: Mutex::new(writer),
        })
    }

    fn err(&self, source: tantivy::TantivyError) -> IndexError {
        IndexError::Text {
            path: self.path.clone(),
            source,
        }
    }

    /// The last change-log sequence this index applied.
    pub fn applied_seq(&self) -> Result<u64, IndexError> {
        let metas = self.index.load_metas().map_err(|e| self.err(e))?;
        Ok(metas
            .payload
            .and_then(|p| serde_json::from_str::<Payload>(&p).ok())
            .map_or(0, |p| p.seq))
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
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
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
        prepared.set_payload(&serde_json::to_string(&Payload { seq }).expect("payload serializes"));
        prepared.commit().map_err(|e| self.err(e))?;
        self.reader.reload().map_err(|e| self.err(e))?;
        Ok(())
    }

    fn document(&self, pair: &PairRecord) -> TantivyDocument {
        let f = self.fields;
        let mut d =
            doc!(f.id => pair.id.to_hex(), f.doc => pair.doc, f.caption => pair.caption.as_str());
        if let Some(entity) = &pair.entity {
            d.add_text(f.entity, entity);
            d.add_text(f.entity_exact, entity.to_lowercase());
        }
        for tag in &pair.tags {
            d.add_text(f.tags, tag);
            d.add_text(f.tag_exact, tag.to_lowercase());
        }
        d
    }

    /// Drops every document and indexes every pair of the store again.
    pub fn rebuild(&self, store: &Store) -> Result<usize, crate::Error> {
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        writer.delete_all_documents().map_err(|e| self.err(e))?;
        let rtxn = store.read()?;
        let seq = store.last_seq(&rtxn)?;
        let pairs = store.all_pairs(&rtxn)?;
        drop(rtxn);
        for pair in &pairs {
            writer
                .add_document(self.document(pair))
                .map_err(|e| self.err(e))?;
        }
        self.commit(&mut writer, seq)?;
        Ok(pairs.len())
    }

    /// BM25 search over caption, entity and tags; returns doc numbers (see
    /// [`PairRecord::doc`]) and scores, best first. Query syntax errors are forgiven (lenient
    /// parsing): a user's caption words are not a query language.
    pub fn search(
        &self,
        text: &str,
        filters: &Filters,
        limit: usize,
    ) -> Result<Vec<(u64, f32)>, IndexError> {
        let f = self.fields;
        let mut parser = QueryParser::for_index(&self.index, vec![f.caption, f.entity, f.tags]);
        parser.set_field_boost(f.entity, 1.5);
        let (parsed, _errors) = parser.parse_query_lenient(text);
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![(Occur::Must, parsed)];
        clauses.extend(self.filter_clauses(filters));
        let query = BooleanQuery::new(clauses);
        let searcher = self.reader.searcher();
        let top = searcher
            .search(&query, &TopDocs::with_limit(limit.max(1)).order_by_score())
            .map_err(|e| self.err(e))?;
        self.doc_numbers(&searcher, top)
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

    /// One `Must` clause per filter (exact entity, each exact tag).
    fn filter_clauses(&self, filters: &Filters) -> Vec<(Occur, Box<dyn Query>)> {
        let f = self.fields;
        let entity = filters
            .entity
            .iter()
            .map(|e| Term::from_field_text(f.entity_exact, &e.to_lowercase()));
        let tags = filters
            .tags
            .iter()
            .map(|t| Term::from_field_text(f.tag_exact, &t.to_lowercase()));
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
        self.writer.lock().unwrap()
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
