//! Store schema v1 → v2: adds the `thumbnails` table (a PNG of at most 128 pixels a side per
//! pair, backfilled from the stored images) and the `quarantine` table (files refused by the
//! daemon, with the reason).

use heed::types::Bytes;
use heed::{Database, DatabaseOpener, RwTxn, WithoutTls};

use crate::store::db_name;
use crate::store::migrate::Migration;
use crate::store::records::IdKey;

pub(crate) struct V1ToV2;

impl Migration for V1ToV2 {
    fn from(&self) -> u32 {
        1
    }

    fn describe(&self) -> &'static str {
        "add thumbnails (backfilled) and quarantine tables"
    }

    fn run<'e>(
        &self,
        opener: &DatabaseOpener<'e, WithoutTls>,
        wtxn: &mut RwTxn<'e>,
    ) -> heed::Result<()> {
        let images: Database<IdKey, Bytes> = opener.create_database(wtxn, Some(db_name::IMAGES))?;
        let thumbnails: Database<IdKey, Bytes> =
            opener.create_database(wtxn, Some(db_name::THUMBNAILS))?;
        let _quarantine: Database<Bytes, Bytes> =
            opener.create_database(wtxn, Some(db_name::QUARANTINE))?;
        let mut made = Vec::new();
        for entry in images.iter(wtxn)? {
            let (id, bytes) = entry?;
            // A stored image always decoded once; if it no longer does, the pair simply has no
            // thumbnail, which readers handle.
            let decoded = crate::ingest::decode_image(
                std::path::Path::new(&id.to_hex()),
                bytes.to_vec(),
                &Default::default(),
            );
            if let Ok(decoded) = decoded {
                made.push((id, crate::ingest::thumbnail(&decoded.image)));
            }
        }
        for (id, png) in made {
            thumbnails.put(wtxn, &id, &png)?;
        }
        Ok(())
    }
}
