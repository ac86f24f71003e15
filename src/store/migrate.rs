//! The migrations runner: brings an older store up to [`CURRENT_VERSION`] inside one write
//! transaction, one step per version, and refuses a store from a newer build.
//!
//! The steps themselves live in `migrations/`, one file per version step.

use std::path::Path;

use heed::types::{Bytes, Str};
use heed::{CommitOrAbort, Database, DatabaseOpener, Env, RwTxn, WithoutTls};

use super::{Tables, db_name, meta_key, read_u64, write_u64};
use crate::error::StoreError;

/// The schema version this build writes.
pub const CURRENT_VERSION: u32 = 2;

/// One version step of the store schema.
pub(crate) trait Migration {
    /// The version this step upgrades from (it leaves the store at `from() + 1`).
    fn from(&self) -> u32;
    /// What the step changes, for the log.
    fn describe(&self) -> &'static str;
    /// Applies the step inside the open's write transaction.
    fn run<'e>(
        &self,
        opener: &DatabaseOpener<'e, WithoutTls>,
        wtxn: &mut RwTxn<'e>,
    ) -> heed::Result<()>;
}

#[path = "../../migrations/v1_to_v2.rs"]
mod v1_to_v2;

/// Every step, in version order.
fn steps() -> Vec<Box<dyn Migration>> {
    vec![Box::new(v1_to_v2::V1ToV2)]
}

enum Refusal {
    Lmdb(heed::Error),
    TooNew(u32),
}

impl From<heed::Error> for Refusal {
    fn from(e: heed::Error) -> Self {
        Refusal::Lmdb(e)
    }
}

/// Opens or creates every table and migrates the store to [`CURRENT_VERSION`], all in one
/// write transaction: a failed migration leaves the store as it was.
pub(crate) fn run(env: &Env<WithoutTls>, dir: &Path) -> Result<Tables<'static>, StoreError> {
    let lmdb = |source| StoreError::Lmdb {
        path: dir.to_path_buf(),
        source,
    };
    let wtxn = env.write_txn().map_err(lmdb)?;
    let outcome = env.create_databases_and_commit(
        wtxn,
        |opener, wtxn| -> Result<CommitOrAbort<Tables<'_>, ()>, Refusal> {
            let meta: Option<Database<Str, Bytes>> =
                opener.open_database(wtxn, Some(db_name::META))?;
            let found = match meta {
                None => 0,
                Some(_) => read_u64(
                    &Tables::create(opener, wtxn)?,
                    wtxn,
                    meta_key::SCHEMA_VERSION,
                )? as u32,
            };
            if found > CURRENT_VERSION {
                return Err(Refusal::TooNew(found));
            }
            if found != 0 {
                for step in steps().iter().filter(|s| s.from() >= found) {
                    tracing::info!(
                        from = step.from(),
                        to = step.from() + 1,
                        "migrating store: {}",
                        step.describe()
                    );
                    step.run(opener, wtxn)?;
                }
            }
            let tables = Tables::create(opener, wtxn)?;
            if found != CURRENT_VERSION {
                write_u64(
                    &tables,
                    wtxn,
                    meta_key::SCHEMA_VERSION,
                    CURRENT_VERSION as u64,
                )?;
            }
            Ok(CommitOrAbort::Commit(tables))
        },
    );
    match outcome {
        Ok(committed) => Ok(committed.unwrap_commit()),
        Err(Refusal::Lmdb(e)) => Err(lmdb(e)),
        Err(Refusal::TooNew(found)) => Err(StoreError::TooNew {
            path: dir.to_path_buf(),
            found,
            supported: CURRENT_VERSION,
        }),
    }
}
