//! The LMDB store (heed): the one source of truth (invariant 1 of ARCHITECTURE.md).
//!
//! Named databases, one typed handle each, are opened once in [`Store::open`], which also runs
//! the schema migrations. Reads go through [`Store::read`]; every write goes through the writer
//! thread in `writer`. The derived indices live elsewhere (`text/`, `vector/`) and only read
//! from here.

pub(crate) mod migrate;
pub mod records;
pub(crate) mod writer;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard};

use heed::byteorder::BigEndian;
use heed::types::{Bytes, Str, U64, Unit};
use heed::{
    CommitOrAbort, CommitToken, Database, DatabaseOpener, Env, EnvFlags, EnvOpenOptions, MdbError,
    OnCommit, RoTxn, RwTxn, WithoutTls,
};

use crate::error::StoreError;
use records::{Bincode, Change, F32Vec, IdKey, ImageId, PairRecord, PathRecord, QuarantineRecord};

/// Names of the LMDB databases. A name, once released, is never reused for another meaning.
pub mod db_name {
    /// [`PairRecord`](super::records::PairRecord) by image id.
    pub const PAIRS: &str = "pairs";
    /// Original image bytes by image id (content-addressed).
    pub const IMAGES: &str = "images";
    /// Embeddings by image id and kind.
    pub const EMBEDDINGS: &str = "embeddings";
    /// [`PathRecord`](super::records::PathRecord) by blake3 of the path.
    pub const PATHS: &str = "paths";
    /// Reverse path entries: image id ++ path key → ().
    pub const ID_PATHS: &str = "id-paths";
    /// Image id by current doc number.
    pub const DOCS: &str = "docs";
    /// [`Change`](super::records::Change) by sequence number.
    pub const CHANGE_LOG: &str = "change-log";
    /// Store-wide values: schema version, embedder id, counters.
    pub const META: &str = "meta";
    /// PNG thumbnails by image id (schema v2).
    pub const THUMBNAILS: &str = "thumbnails";
    /// [`QuarantineRecord`](super::records::QuarantineRecord) by blake3 of the path (schema v2).
    pub const QUARANTINE: &str = "quarantine";
}

/// Keys of the `meta` table.
pub(crate) mod meta_key {
    pub const SCHEMA_VERSION: &str = "schema-version";
    pub const EMBEDDER: &str = "embedder";
    pub const LAST_SEQ: &str = "last-seq";
    pub const NEXT_DOC: &str = "next-doc";
}

/// The typed handle of every named database. `'e` is the lifetime heed gives handles inside the
/// transaction that opened them; after the commit they are `Tables<'static>`.
#[derive(Clone, Copy)]
pub(crate) struct Tables<'e> {
    pub pairs: Database<'e, IdKey, Bincode<PairRecord>>,
    pub images: Database<'e, IdKey, Bytes>,
    pub embeddings: Database<'e, Bytes, F32Vec>,
    pub paths: Database<'e, Bytes, Bincode<PathRecord>>,
    pub id_paths: Database<'e, Bytes, Unit>,
    pub docs: Database<'e, U64<BigEndian>, IdKey>,
    pub change_log: Database<'e, U64<BigEndian>, Bincode<Change>>,
    pub meta: Database<'e, Str, Bytes>,
    pub thumbnails: Database<'e, IdKey, Bytes>,
    pub quarantine: Database<'e, Bytes, Bincode<QuarantineRecord>>,
}

impl<'e> Tables<'e> {
    pub(crate) fn create(
        opener: &DatabaseOpener<'e, WithoutTls>,
        wtxn: &mut RwTxn<'e>,
    ) -> heed::Result<Self> {
        Ok(Tables {
            pairs: opener.create_database(wtxn, Some(db_name::PAIRS))?,
            images: opener.create_database(wtxn, Some(db_name::IMAGES))?,
            embeddings: opener.create_database(wtxn, Some(db_name::EMBEDDINGS))?,
            paths: opener.create_database(wtxn, Some(db_name::PATHS))?,
            id_paths: opener.create_database(wtxn, Some(db_name::ID_PATHS))?,
            docs: opener.create_database(wtxn, Some(db_name::DOCS))?,
            change_log: opener.create_database(wtxn, Some(db_name::CHANGE_LOG))?,
            meta: opener.create_database(wtxn, Some(db_name::META))?,
            thumbnails: opener.create_database(wtxn, Some(db_name::THUMBNAILS))?,
            quarantine: opener.create_database(wtxn, Some(db_name::QUARANTINE))?,
        })
    }
}

impl<'e> Tables<'e> {
    /// Opens every table in a read transaction; `None` when one is missing (a store that was
    /// never opened for writing by this build's schema).
    pub(crate) fn open(
        opener: &DatabaseOpener<'e, WithoutTls>,
        rtxn: &RoTxn<'e, WithoutTls>,
    ) -> heed::Result<Option<Self>> {
        macro_rules! open {
            ($name:expr) => {
                match opener.open_database(rtxn, Some($name))? {
                    Some(db) => db,
                    None => return Ok(None),
                }
            };
        }
        Ok(Some(Tables {
            pairs: open!(db_name::PAIRS),
            images: open!(db_name::IMAGES),
            embeddings: open!(db_name::EMBEDDINGS),
            paths: open!(db_name::PATHS),
            id_paths: open!(db_name::ID_PATHS),
            docs: open!(db_name::DOCS),
            change_log: open!(db_name::CHANGE_LOG),
            meta: open!(db_name::META),
            thumbnails: open!(db_name::THUMBNAILS),
            quarantine: open!(db_name::QUARANTINE),
        }))
    }
}

impl OnCommit for Tables<'_> {
    type Committed = Tables<'static>;

    fn on_commit(self, token: &CommitToken) -> Tables<'static> {
        Tables {
            pairs: self.pairs.on_commit(token),
            images: self.images.on_commit(token),
            embeddings: self.embeddings.on_commit(token),
            paths: self.paths.on_commit(token),
            id_paths: self.id_paths.on_commit(token),
            docs: self.docs.on_commit(token),
            change_log: self.change_log.on_commit(token),
            meta: self.meta.on_commit(token),
            thumbnails: self.thumbnails.on_commit(token),
            quarantine: self.quarantine.on_commit(token),
        }
    }
}

/// By default the map starts at this size; it doubles whenever LMDB reports it full.
pub const INITIAL_MAP_SIZE: usize = 64 << 20;
/// Enough reader slots for a daemon plus CLI readers (LMDB's default is 126).
const MAX_READERS: u32 = 1024;

/// The LMDB environment and its tables.
pub struct Store {
    env: Env<WithoutTls>,
    pub(crate) tables: Tables<'static>,
    path: PathBuf,
    /// Held shared by every transaction and exclusively while the map is resized: LMDB requires
    /// that no transaction is open in the process when the map size changes. Only this process's
    /// transactions: another process's readers never hold up a resize (invariant "the map grows
    /// itself"), they adopt the new size when their next transaction starts.
    resize_lock: RwLock<()>,
    /// Opened with `MDB_RDONLY` beside a writer in another process: no write transaction.
    read_only: bool,
}

/// A read transaction that keeps the map from being resized under it.
pub struct ReadView<'s> {
    // Field order matters: the transaction must end before the guard is released.
    txn: RoTxn<'s, WithoutTls>,
    _guard: RwLockReadGuard<'s, ()>,
}

impl<'s> std::ops::Deref for ReadView<'s> {
    type Target = RoTxn<'s, WithoutTls>;

    fn deref(&self) -> &Self::Target {
        &self.txn
    }
}

impl Store {
    /// Opens (creating if needed) the store in `dir` and migrates it to the current schema. The
    /// map starts at `map_size` bytes (or twice the file, if larger) and grows by itself.
    pub fn open(dir: &Path, map_size: usize) -> Result<Store, StoreError> {
        fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let file_len = fs::metadata(dir.join("data.mdb"))
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        let map_size = round_to_page(map_size.max(file_len.saturating_mul(2)));
        let lmdb = |source| StoreError::Lmdb {
            path: dir.to_path_buf(),
            source,
        };
        // SAFETY: the environment is opened once per KB directory in this process (the KB holds an
        // exclusive lock file, invariant 10 of ARCHITECTURE.md; this module is private to the
        // crate, so only `KnowledgeBase` gets here), the directory is a local one we own, and
        // nothing else maps data.mdb with different options.
        let env = unsafe {
            EnvOpenOptions::new()
                .read_txn_without_tls()
                .map_size(map_size)
                .max_dbs(16)
                .max_readers(MAX_READERS)
                .open(dir)
        }
        .map_err(lmdb)?;
        // Reader slots of processes that died (kill -9) would pin old pages forever.
        match env.clear_stale_readers() {
            Ok(0) => {}
            Ok(dead) => tracing::info!(dead, "cleared reader slots of processes that are gone"),
            Err(e) => tracing::warn!("clearing stale LMDB readers failed: {e}"),
        }
        let tables = migrate::run(&env, dir)?;
        Ok(Store {
            env,
            tables,
            path: dir.to_path_buf(),
            resize_lock: RwLock::new(()),
            read_only: false,
        })
    }

    /// Opens the store in `dir` for reading only, beside a writer in this or another process:
    /// no migration (a store at another schema version is refused) and no write transaction.
    /// The map is the size the writer last gave it, and follows it as it grows.
    pub fn open_read_only(dir: &Path) -> Result<Store, StoreError> {
        let lmdb = |source| StoreError::Lmdb {
            path: dir.to_path_buf(),
            source,
        };
        if !dir.join("data.mdb").exists() {
            return Err(StoreError::ReadOnly {
                path: dir.to_path_buf(),
                reason: "there is no store yet; open it for writing once to create it".into(),
            });
        }
        // SAFETY: as in `open`; MDB_RDONLY maps the file read-only, and LMDB's own lock file
        // (lock.mdb) coordinates this reader with the writer of any process.
        let env = unsafe {
            let mut options = EnvOpenOptions::new().read_txn_without_tls();
            options
                .max_dbs(16)
                .max_readers(MAX_READERS)
                .flags(EnvFlags::READ_ONLY);
            options.open(dir)
        }
        .map_err(lmdb)?;
        let rtxn = env.read_txn().map_err(lmdb)?;
        let tables = env
            .open_databases_and_commit(
                rtxn,
                |opener, rtxn| -> heed::Result<CommitOrAbort<Tables<'_>, ()>> {
                    Ok(match Tables::open(opener, rtxn)? {
                        Some(tables) => CommitOrAbort::Commit(tables),
                        None => CommitOrAbort::Abort(()),
                    })
                },
            )
            .map_err(lmdb)?
            .commit();
        let Some(tables) = tables else {
            return Err(StoreError::ReadOnly {
                path: dir.to_path_buf(),
                reason: "the store lacks tables of this build's schema; open it for writing once \
                         to migrate it"
                    .into(),
            });
        };
        let store = Store {
            env,
            tables,
            path: dir.to_path_buf(),
            resize_lock: RwLock::new(()),
            read_only: true,
        };
        let rtxn = store.read()?;
        let found = store.schema_version(&rtxn)?;
        drop(rtxn);
        if found != migrate::CURRENT_VERSION {
            return Err(StoreError::ReadOnly {
                path: dir.to_path_buf(),
                reason: format!(
                    "the store is at schema version {found}, this build reads {}; open it for \
                     writing with this build once to migrate it",
                    migrate::CURRENT_VERSION
                ),
            });
        }
        Ok(store)
    }

    /// Whether this store was opened with [`Store::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The store directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn lmdb_err(&self, source: heed::Error) -> StoreError {
        StoreError::Lmdb {
            path: self.path.clone(),
            source,
        }
    }

    /// Starts a read transaction.
    pub fn read(&self) -> Result<ReadView<'_>, StoreError> {
        let guard = self.resize_lock.read().unwrap_or_else(|e| e.into_inner());
        match self.env.read_txn() {
            Ok(txn) => return Ok(ReadView { txn, _guard: guard }),
            // Another process grew the map past ours: adopt its size (no transaction of this
            // process may be open meanwhile, hence the exclusive lock), then start again.
            Err(heed::Error::Mdb(MdbError::MapResized)) => drop(guard),
            Err(e) => return Err(self.lmdb_err(e)),
        }
        {
            let _exclusive = self.resize_lock.write().unwrap_or_else(|e| e.into_inner());
            // SAFETY: the exclusive lock waits for this process's transactions to end and keeps
            // new ones from starting; 0 means "the size the file's meta page records"
            // (invariant 3 of ARCHITECTURE.md).
            unsafe { self.env.resize(0) }.map_err(|e| self.lmdb_err(e))?;
        }
        let guard = self.resize_lock.read().unwrap_or_else(|e| e.into_inner());
        let txn = self.env.read_txn().map_err(|e| self.lmdb_err(e))?;
        Ok(ReadView { txn, _guard: guard })
    }

    /// Doubles the map. Called by the writer after aborting its transaction on `MapFull`.
    pub(crate) fn grow_map(&self) -> Result<(), StoreError> {
        let _exclusive = self.resize_lock.write().unwrap_or_else(|e| e.into_inner());
        let new_size = round_to_page(self.env.info().map_size.saturating_mul(2));
        tracing::info!(new_size, "LMDB map full, growing it");
        // SAFETY: the writer has no transaction open, and the exclusive lock waits for every
        // reader in this process to finish and keeps new ones from starting.
        unsafe { self.env.resize(new_size) }.map_err(|e| self.lmdb_err(e))
    }

    /// A pair by id.
    pub fn pair(&self, rtxn: &RoTxn, id: &ImageId) -> Result<Option<PairRecord>, StoreError> {
        self.tables
            .pairs
            .get(rtxn, id)
            .map_err(|e| self.decode_err(db_name::PAIRS, id.to_hex(), e))
    }

    fn decode_err(&self, table: &'static str, key: String, e: heed::Error) -> StoreError {
        match e {
            heed::Error::Decoding(reason) => StoreError::Corrupt {
                table,
                key,
                reason: reason.to_string(),
            },
            other => self.lmdb_err(other),
        }
    }

    /// The embedder id recorded in the store, if any embedding was ever written.
    pub fn embedder_id(&self, rtxn: &RoTxn) -> Result<Option<String>, StoreError> {
        let raw = self
            .tables
            .meta
            .get(rtxn, meta_key::EMBEDDER)
            .map_err(|e| self.lmdb_err(e))?;
        Ok(raw.map(|b| String::from_utf8_lossy(b).into_owned()))
    }

    /// The last change-log sequence number (0 for an empty store).
    pub fn last_seq(&self, rtxn: &RoTxn) -> Result<u64, StoreError> {
        read_u64(&self.tables, rtxn, meta_key::LAST_SEQ).map_err(|e| self.lmdb_err(e))
    }

    /// The store's schema version.
    pub fn schema_version(&self, rtxn: &RoTxn) -> Result<u32, StoreError> {
        Ok(
            read_u64(&self.tables, rtxn, meta_key::SCHEMA_VERSION).map_err(|e| self.lmdb_err(e))?
                as u32,
        )
    }

    /// Change-log entries with sequence number greater than `after`, in order.
    pub fn changes_after(&self, rtxn: &RoTxn, after: u64) -> Result<Vec<Change>, StoreError> {
        let range = (std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded);
        let iter = self
            .tables
            .change_log
            .range(rtxn, &range)
            .map_err(|e| self.lmdb_err(e))?;
        iter.map(|r| {
            r.map(|(_, c)| c)
                .map_err(|e| self.decode_err(db_name::CHANGE_LOG, after.to_string(), e))
        })
        .collect()
    }

    /// Every pair, in id order.
    pub fn all_pairs(&self, rtxn: &RoTxn) -> Result<Vec<PairRecord>, StoreError> {
        let iter = self.tables.pairs.iter(rtxn).map_err(|e| self.lmdb_err(e))?;
        iter.map(|r| {
            r.map(|(_, p)| p)
                .map_err(|e| self.decode_err(db_name::PAIRS, "?".into(), e))
        })
        .collect()
    }

    /// Number of pairs.
    pub fn pair_count(&self, rtxn: &RoTxn) -> Result<u64, StoreError> {
        self.tables.pairs.len(rtxn).map_err(|e| self.lmdb_err(e))
    }

    /// The image bytes of a pair.
    pub fn image_bytes(&self, rtxn: &RoTxn, id: &ImageId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tables
            .images
            .get(rtxn, id)
            .map_err(|e| self.lmdb_err(e))?
            .map(<[u8]>::to_vec))
    }

    /// The PNG thumbnail of a pair.
    pub fn thumbnail(&self, rtxn: &RoTxn, id: &ImageId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tables
            .thumbnails
            .get(rtxn, id)
            .map_err(|e| self.lmdb_err(e))?
            .map(<[u8]>::to_vec))
    }

    /// Every quarantined file, in key order.
    pub fn quarantined(&self, rtxn: &RoTxn) -> Result<Vec<QuarantineRecord>, StoreError> {
        let iter = self
            .tables
            .quarantine
            .iter(rtxn)
            .map_err(|e| self.lmdb_err(e))?;
        iter.map(|r| {
            r.map(|(_, q)| q)
                .map_err(|e| self.decode_err(db_name::QUARANTINE, "?".into(), e))
        })
        .collect()
    }

    /// An embedding of a pair.
    pub fn embedding(
        &self,
        rtxn: &RoTxn,
        id: &ImageId,
        kind: records::EmbeddingKind,
    ) -> Result<Option<Vec<f32>>, StoreError> {
        let key = records::embedding_key(id, kind);
        self.tables
            .embeddings
            .get(rtxn, &key)
            .map_err(|e| self.decode_err(db_name::EMBEDDINGS, id.to_hex(), e))
    }

    /// The id of the pair that currently has doc number `doc`.
    pub fn id_of_doc(&self, rtxn: &RoTxn, doc: u64) -> Result<Option<ImageId>, StoreError> {
        self.tables
            .docs
            .get(rtxn, &doc)
            .map_err(|e| self.lmdb_err(e))
    }

    /// The paths known for a pair.
    pub fn paths_of(&self, rtxn: &RoTxn, id: &ImageId) -> Result<Vec<String>, StoreError> {
        let iter = self
            .tables
            .id_paths
            .prefix_iter(rtxn, &id.0)
            .map_err(|e| self.lmdb_err(e))?;
        let mut out = Vec::new();
        for entry in iter {
            let (key, ()) = entry.map_err(|e| self.lmdb_err(e))?;
            if let Some(rec) = self
                .tables
                .paths
                .get(rtxn, &key[32..])
                .map_err(|e| self.lmdb_err(e))?
            {
                out.push(rec.path);
            }
        }
        out.sort();
        Ok(out)
    }

    /// The record of a path, if the store knows it.
    pub fn path_record(&self, rtxn: &RoTxn, path: &str) -> Result<Option<PathRecord>, StoreError> {
        self.tables
            .paths
            .get(rtxn, &records::path_key(path))
            .map_err(|e| self.lmdb_err(e))
    }

    /// Every known path, in key order.
    pub fn all_paths(&self, rtxn: &RoTxn) -> Result<Vec<PathRecord>, StoreError> {
        let iter = self.tables.paths.iter(rtxn).map_err(|e| self.lmdb_err(e))?;
        iter.map(|r| r.map(|(_, p)| p).map_err(|e| self.lmdb_err(e)))
            .collect()
    }

    /// Ids whose hex form starts with `prefix` (at most `limit`).
    pub fn ids_with_prefix(
        &self,
        rtxn: &RoTxn,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<ImageId>, StoreError> {
        // Hex digits map to bytes two at a time; seek with the whole bytes, filter the odd digit.
        let whole = &prefix[..prefix.len() / 2 * 2];
        let bytes: Vec<u8> = (0..whole.len())
            .step_by(2)
            .filter_map(|i| u8::from_str_radix(&whole[i..i + 2], 16).ok())
            .collect();
        let iter = self
            .tables
            .pairs
            .remap_data_type::<heed::types::DecodeIgnore>()
            .remap_key_type::<Bytes>()
            .prefix_iter(rtxn, &bytes)
            .map_err(|e| self.lmdb_err(e))?;
        let mut out = Vec::new();
        for entry in iter {
            let (key, ()) = entry.map_err(|e| self.lmdb_err(e))?;
            let id = ImageId(key.try_into().expect("pair keys are 32 bytes"));
            if id.to_hex().starts_with(prefix) {
                out.push(id);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// A compacted copy of the store into `dest_dir` (which must not hold a store).
    pub fn backup_to(&self, dest_dir: &Path) -> Result<(), StoreError> {
        fs::create_dir_all(dest_dir).map_err(|source| StoreError::Io {
            path: dest_dir.to_path_buf(),
            source,
        })?;
        let _shared = self.resize_lock.read().unwrap_or_else(|e| e.into_inner());
        self.env
            .copy_to_path(dest_dir.join("data.mdb"), heed::CompactionOption::Enabled)
            .map_err(|e| self.lmdb_err(e))?;
        Ok(())
    }

    /// Map size and on-disk size, in bytes.
    pub fn sizes(&self) -> (usize, u64) {
        (
            self.env.info().map_size,
            self.env.real_disk_size().unwrap_or(0),
        )
    }
}

pub(crate) fn read_u64(tables: &Tables<'_>, rtxn: &RoTxn, key: &str) -> heed::Result<u64> {
    Ok(tables
        .meta
        .get(rtxn, key)?
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0))
}

pub(crate) fn write_u64(
    tables: &Tables<'_>,
    wtxn: &mut RwTxn,
    key: &str,
    value: u64,
) -> heed::Result<()> {
    tables.meta.put(wtxn, key, &value.to_le_bytes())
}

fn round_to_page(size: usize) -> usize {
    const PAGE: usize = 64 << 10; // a multiple of every common page size
    size.div_ceil(PAGE) * PAGE
}
