//! The one writer (invariant 2 of ARCHITECTURE.md): a dedicated thread owns every LMDB write transaction.
//!
//! Callers send [`WriteOp`]s over a channel and wait for the outcome. The thread drains what is
//! queued into one transaction (one commit for many adds), appends one change-log entry per
//! change, and grows the map and retries when LMDB says it is full; no transaction ever crosses
//! a thread or an `.await`.
//!
//! After a commit the writer hands the changes to a second thread, the indexer, which applies
//! them to the [`ChangeSink`] (the derived indices) and only then answers the callers: an
//! acknowledged write is in the store and in every index. The two threads form a pipeline: while
//! the indexer works on one batch, the writer builds and commits the next (a commit mostly waits
//! on the disk). Tasks that need the sink ([`Writer::with_sink`]) run on the writer thread once
//! the indexer has caught up, between transactions, as if there were one thread.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use heed::RwTxn;

use super::records::{
    Change, ChangeKind, EmbeddingKind, ImageId, PairRecord, PathRecord, QuarantineRecord,
};
use super::records::{embedding_key, id_path_key, path_key};
use super::{Store, meta_key, read_u64, write_u64};
use crate::error::StoreError;

/// Most operations folded into one write transaction.
const MAX_BATCH: usize = 1024;

/// A pair ready to be written: everything expensive (decode, hash, embed) is done already.
#[derive(Debug)]
pub(crate) struct NewRecord {
    pub pair: PairRecord,
    pub image: Vec<u8>,
    pub thumbnail: Vec<u8>,
    pub embeddings: Vec<(EmbeddingKind, Vec<f32>)>,
    pub path: Option<PathRecord>,
    /// Embedder id to record in the store if it has none yet.
    pub embedder: Option<String>,
}

/// One write.
#[derive(Debug)]
pub(crate) enum WriteOp {
    /// Adds a pair; a pair with the same id already present makes it a duplicate (its path, if
    /// any, is still recorded).
    Add(Box<NewRecord>),
    /// Replaces caption, entity and tags, and the embeddings given (a re-embedding gives both).
    Update {
        id: ImageId,
        caption: String,
        entity: Option<String>,
        tags: Vec<String>,
        text_embedding: Option<Vec<f32>>,
        image_embedding: Option<Vec<f32>>,
    },
    /// Records the embedder whose vectors the store now holds (after a re-embedding).
    SetEmbedder(String),
    /// Removes a pair and every path that holds it.
    Remove { id: ImageId },
    /// Records that a path holds a pair (a rename or a second copy: no change to the pair).
    SetPath(PathRecord),
    /// Forgets a path; with `remove_orphan`, also removes the pair when no other path holds it.
    RemovePath { path: String, remove_orphan: bool },
    /// Removes a pair only when no path holds it (a file whose content changed left it behind).
    RemoveOrphan { id: ImageId },
    /// Records (or, with `None` reason, clears) the quarantine of a path.
    Quarantine { record: QuarantineRecord },
    /// Clears the quarantine of a path.
    Unquarantine { path: String },
}

/// What a write did.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum WriteOutcome {
    Added { id: ImageId, seq: u64 },
    Duplicate { id: ImageId },
    Updated { seq: u64 },
    Removed { id: ImageId, seq: u64 },
    PathSet,
    PathRemoved { removed_pair: Option<ImageId> },
    Quarantined,
    EmbedderSet,
    NotFound,
}

/// Receives the changes of each committed transaction, in commit order, on the indexer thread.
pub(crate) trait ChangeSink: Send {
    /// Applies committed changes (in sequence order). Errors are the sink's to log: the store
    /// has committed, and the log lets the sink catch up on the next open.
    fn apply(&mut self, store: &Store, changes: &[Change]);
}

type Reply = Sender<Result<WriteOutcome, StoreError>>;
type SinkTask = Box<dyn FnOnce(&Store, &mut dyn ChangeSink) + Send>;

enum Job {
    Write(WriteOp, Reply),
    /// Runs on the writer thread with the sink, between transactions (flush, rebuild).
    WithSink(SinkTask),
}

/// Work for the indexer thread.
enum IndexJob {
    /// Committed changes, and the answers to send once they are applied.
    Apply {
        changes: Vec<Change>,
        replies: Vec<(Reply, WriteOutcome)>,
    },
    /// Answered once every earlier job is done.
    Barrier(Sender<()>),
}

/// Committed batches the writer may run ahead of the indexer.
const PIPELINE_DEPTH: usize = 2;

type SharedSink = Arc<Mutex<Box<dyn ChangeSink>>>;

/// The handle through which everything writes.
pub(crate) struct Writer {
    tx: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    pub fn spawn(store: Arc<Store>, sink: Box<dyn ChangeSink>) -> Writer {
        let (tx, rx) = unbounded();
        let thread = std::thread::Builder::new()
            .name("reimagen-writer".into())
            .spawn(move || writer_loop(store, rx, sink))
            .expect("spawning the writer thread");
        Writer {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    fn sender(&self) -> Result<&Sender<Job>, StoreError> {
        self.tx.as_ref().ok_or(StoreError::WriterGone)
    }

    /// Sends one op and waits for its outcome.
    pub fn submit(&self, op: WriteOp) -> Result<WriteOutcome, StoreError> {
        self.submit_many(vec![op])
            .pop()
            .expect("one outcome per op")
    }

    /// Sends many ops at once (they share transactions) and waits for every outcome, in order.
    pub fn submit_many(&self, ops: Vec<WriteOp>) -> Vec<Result<WriteOutcome, StoreError>> {
        let mut waiting = Vec::with_capacity(ops.len());
        for op in ops {
            let (reply, rx) = bounded(1);
            let sent = self.sender().and_then(|s| {
                s.send(Job::Write(op, reply))
                    .map_err(|_| StoreError::WriterGone)
            });
            waiting.push(sent.map(|()| rx));
        }
        waiting
            .into_iter()
            .map(|w| w.and_then(|rx| rx.recv().unwrap_or(Err(StoreError::WriterGone))))
            .collect()
    }

    /// Runs `task` on the writer thread between transactions and returns its result.
    pub fn with_sink<R: Send + 'static>(
        &self,
        task: impl FnOnce(&Store, &mut dyn ChangeSink) -> R + Send + 'static,
    ) -> Result<R, StoreError> {
        let (reply, rx) = bounded(1);
        let job = Job::WithSink(Box::new(move |store, sink| {
            let _ = reply.send(task(store, sink));
        }));
        self.sender()?
            .send(job)
            .map_err(|_| StoreError::WriterGone)?;
        rx.recv().map_err(|_| StoreError::WriterGone)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn writer_loop(store: Arc<Store>, rx: Receiver<Job>, sink: Box<dyn ChangeSink>) {
    let sink: SharedSink = Arc::new(Mutex::new(sink));
    let (index_tx, index_rx) = bounded(PIPELINE_DEPTH);
    let indexer = {
        let (store, sink) = (Arc::clone(&store), Arc::clone(&sink));
        std::thread::Builder::new()
            .name("reimagen-indexer".into())
            .spawn(move || indexer_loop(&store, index_rx, &sink))
            .expect("spawning the indexer thread")
    };
    let store = store.as_ref();
    while let Ok(first) = rx.recv() {
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Write(op, reply) => batch.push((op, reply)),
                Job::WithSink(task) => {
                    flush_batch(store, &mut batch, &index_tx, &sink);
                    let (done, wait) = bounded(1);
                    if index_tx.send(IndexJob::Barrier(done)).is_ok() {
                        let _ = wait.recv();
                    }
                    let mut sink = sink.lock().unwrap_or_else(|e| e.into_inner());
                    task(store, sink.as_mut());
                }
            }
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        flush_batch(store, &mut batch, &index_tx, &sink);
    }
    drop(index_tx);
    let _ = indexer.join();
}

fn indexer_loop(store: &Store, rx: Receiver<IndexJob>, sink: &SharedSink) {
    while let Ok(job) = rx.recv() {
        match job {
            IndexJob::Apply { changes, replies } => {
                if !changes.is_empty() {
                    sink.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .apply(store, &changes);
                }
                for (reply, outcome) in replies {
                    let _ = reply.send(Ok(outcome));
                }
            }
            IndexJob::Barrier(done) => {
                let _ = done.send(());
            }
        }
    }
}

fn flush_batch(
    store: &Store,
    batch: &mut Vec<(WriteOp, Reply)>,
    index_tx: &Sender<IndexJob>,
    sink: &SharedSink,
) {
    if batch.is_empty() {
        return;
    }
    let ops: Vec<&WriteOp> = batch.iter().map(|(op, _)| op).collect();
    let result = loop {
        match apply_batch(store, &ops) {
            Err(heed::Error::Mdb(heed::MdbError::MapFull)) => {
                if let Err(e) = store.grow_map() {
                    break Err(e);
                }
            }
            other => break other.map_err(|e| store.lmdb_err(e)),
        }
    };
    match result {
        Ok((outcomes, changes)) => {
            let replies: Vec<(Reply, WriteOutcome)> = batch
                .drain(..)
                .map(|(_, reply)| reply)
                .zip(outcomes)
                .collect();
            if let Err(unsent) = index_tx.send(IndexJob::Apply { changes, replies }) {
                // No indexer (it panicked): apply here so that nothing waits forever.
                if let IndexJob::Apply { changes, replies } = unsent.into_inner() {
                    sink.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .apply(store, &changes);
                    for (reply, outcome) in replies {
                        let _ = reply.send(Ok(outcome));
                    }
                }
            }
        }
        Err(e) => {
            // heed errors are not Clone: every op of the failed batch gets the message.
            let msg = e.to_string();
            tracing::error!("write transaction failed: {msg}");
            for (_, reply) in batch.drain(..) {
                let source = std::io::Error::other(msg.clone());
                let _ = reply.send(Err(StoreError::Io {
                    path: store.path().to_path_buf(),
                    source,
                }));
            }
        }
    }
}

/// Applies every op in one transaction. Nothing is visible unless the commit succeeds.
fn apply_batch(store: &Store, ops: &[&WriteOp]) -> heed::Result<(Vec<WriteOutcome>, Vec<Change>)> {
    let mut wtxn = store.env.write_txn()?;
    let mut log = ChangeLog {
        last_seq: read_u64(&store.tables, &wtxn, meta_key::LAST_SEQ)?,
        next_doc: read_u64(&store.tables, &wtxn, meta_key::NEXT_DOC)?,
        changes: Vec::new(),
    };
    let mut outcomes = Vec::with_capacity(ops.len());
    for op in ops {
        outcomes.push(apply_one(store, &mut wtxn, &mut log, op)?);
    }
    write_u64(&store.tables, &mut wtxn, meta_key::LAST_SEQ, log.last_seq)?;
    write_u64(&store.tables, &mut wtxn, meta_key::NEXT_DOC, log.next_doc)?;
    wtxn.commit()?;
    Ok((outcomes, log.changes))
}

struct ChangeLog {
    last_seq: u64,
    next_doc: u64,
    changes: Vec<Change>,
}

impl ChangeLog {
    fn new_doc(&mut self) -> u64 {
        let doc = self.next_doc;
        self.next_doc += 1;
        doc
    }

    fn append(
        &mut self,
        store: &Store,
        wtxn: &mut RwTxn,
        kind: ChangeKind,
        id: ImageId,
        doc: u64,
        old_doc: Option<u64>,
    ) -> heed::Result<u64> {
        self.last_seq += 1;
        let change = Change {
            seq: self.last_seq,
            kind,
            id,
            doc,
            old_doc,
        };
        store.tables.change_log.put(wtxn, &change.seq, &change)?;
        self.changes.push(change);
        Ok(self.last_seq)
    }
}

fn apply_one(
    store: &Store,
    wtxn: &mut RwTxn,
    log: &mut ChangeLog,
    op: &WriteOp,
) -> heed::Result<WriteOutcome> {
    let t = &store.tables;
    match op {
        WriteOp::Add(new) => {
            let id = new.pair.id;
            if let Some(path) = &new.path {
                set_path(store, wtxn, path)?;
            }
            if t.pairs.get(wtxn, &id)?.is_some() {
                return Ok(WriteOutcome::Duplicate { id });
            }
            if let Some(embedder) = &new.embedder
                && t.meta.get(wtxn, meta_key::EMBEDDER)?.is_none()
            {
                t.meta.put(wtxn, meta_key::EMBEDDER, embedder.as_bytes())?;
            }
            let doc = log.new_doc();
            let pair = PairRecord {
                doc,
                ..new.pair.clone()
            };
            t.pairs.put(wtxn, &id, &pair)?;
            t.images.put(wtxn, &id, &new.image)?;
            t.thumbnails.put(wtxn, &id, &new.thumbnail)?;
            for (kind, vector) in &new.embeddings {
                t.embeddings.put(wtxn, &embedding_key(&id, *kind), vector)?;
            }
            t.docs.put(wtxn, &doc, &id)?;
            let seq = log.append(store, wtxn, ChangeKind::Add, id, doc, None)?;
            Ok(WriteOutcome::Added { id, seq })
        }
        WriteOp::Update {
            id,
            caption,
            entity,
            tags,
            text_embedding,
            image_embedding,
        } => {
            let Some(mut pair) = t.pairs.get(wtxn, id)? else {
                return Ok(WriteOutcome::NotFound);
            };
            let old_doc = pair.doc;
            pair.doc = log.new_doc();
            pair.caption = caption.clone();
            pair.entity = entity.clone();
            pair.tags = tags.clone();
            t.pairs.put(wtxn, id, &pair)?;
            t.docs.delete(wtxn, &old_doc)?;
            t.docs.put(wtxn, &pair.doc, id)?;
            if let Some(vector) = text_embedding {
                t.embeddings
                    .put(wtxn, &embedding_key(id, EmbeddingKind::Text), vector)?;
            }
            if let Some(vector) = image_embedding {
                t.embeddings
                    .put(wtxn, &embedding_key(id, EmbeddingKind::Image), vector)?;
            }
            let seq = log.append(
                store,
                wtxn,
                ChangeKind::Update,
                *id,
                pair.doc,
                Some(old_doc),
            )?;
            Ok(WriteOutcome::Updated { seq })
        }
        WriteOp::SetEmbedder(embedder) => {
            t.meta.put(wtxn, meta_key::EMBEDDER, embedder.as_bytes())?;
            Ok(WriteOutcome::EmbedderSet)
        }
        WriteOp::Remove { id } => remove_pair(store, wtxn, log, id),
        WriteOp::RemoveOrphan { id } => {
            if t.id_paths.prefix_iter(wtxn, &id.0)?.next().is_some() {
                return Ok(WriteOutcome::NotFound);
            }
            remove_pair(store, wtxn, log, id)
        }
        WriteOp::SetPath(path) => {
            set_path(store, wtxn, path)?;
            Ok(WriteOutcome::PathSet)
        }
        WriteOp::Quarantine { record } => {
            t.quarantine.put(wtxn, &path_key(&record.path), record)?;
            Ok(WriteOutcome::Quarantined)
        }
        WriteOp::Unquarantine { path } => {
            t.quarantine.delete(wtxn, &path_key(path))?;
            Ok(WriteOutcome::Quarantined)
        }
        WriteOp::RemovePath {
            path,
            remove_orphan,
        } => {
            let Some(record) = t.paths.get(wtxn, &path_key(path))? else {
                return Ok(WriteOutcome::NotFound);
            };
            t.paths.delete(wtxn, &path_key(path))?;
            t.id_paths.delete(wtxn, &id_path_key(&record.id, path))?;
            let orphan = t.id_paths.prefix_iter(wtxn, &record.id.0)?.next().is_none();
            let mut removed_pair = None;
            if *remove_orphan
                && orphan
                && let WriteOutcome::Removed { id, .. } = remove_pair(store, wtxn, log, &record.id)?
            {
                removed_pair = Some(id);
            }
            Ok(WriteOutcome::PathRemoved { removed_pair })
        }
    }
}

fn set_path(store: &Store, wtxn: &mut RwTxn, path: &PathRecord) -> heed::Result<()> {
    let t = &store.tables;
    let key = path_key(&path.path);
    if let Some(old) = t.paths.get(wtxn, &key)?
        && old.id != path.id
    {
        t.id_paths.delete(wtxn, &id_path_key(&old.id, &old.path))?;
    }
    t.paths.put(wtxn, &key, path)?;
    t.id_paths
        .put(wtxn, &id_path_key(&path.id, &path.path), &())?;
    Ok(())
}

fn remove_pair(
    store: &Store,
    wtxn: &mut RwTxn,
    log: &mut ChangeLog,
    id: &ImageId,
) -> heed::Result<WriteOutcome> {
    let t = &store.tables;
    let Some(pair) = t.pairs.get(wtxn, id)? else {
        return Ok(WriteOutcome::NotFound);
    };
    t.pairs.delete(wtxn, id)?;
    t.images.delete(wtxn, id)?;
    t.thumbnails.delete(wtxn, id)?;
    for kind in [EmbeddingKind::Image, EmbeddingKind::Text] {
        t.embeddings.delete(wtxn, &embedding_key(id, kind))?;
    }
    t.docs.delete(wtxn, &pair.doc)?;
    let path_keys: Vec<Vec<u8>> = t
        .id_paths
        .prefix_iter(wtxn, &id.0)?
        .map(|r| r.map(|(k, ())| k[32..].to_vec()))
        .collect::<heed::Result<_>>()?;
    for key in path_keys {
        t.paths.delete(wtxn, &key)?;
        let mut full = id.0.to_vec();
        full.extend_from_slice(&key);
        t.id_paths.delete(wtxn, &full)?;
    }
    let seq = log.append(store, wtxn, ChangeKind::Remove, *id, pair.doc, None)?;
    Ok(WriteOutcome::Removed { id: *id, seq })
}
