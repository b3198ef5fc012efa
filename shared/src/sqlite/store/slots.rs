//! Source-server query slots in SQLite.

use super::{now_ms, SqliteStore};
use crate::errors::StoreError;
use crate::ports::SlotStore;
use async_trait::async_trait;
use rusqlite::params;
use std::time::Duration;

#[async_trait]
impl SlotStore for SqliteStore {
    async fn acquire_slot(&self, server: &str, holder: &str, limit: u32, lease: Duration) -> Result<bool, StoreError> {
        let (server, holder) = (server.to_owned(), holder.to_owned());
        self.db
            .write("acquire slot", move |tx| {
                let now = now_ms();
                tx.execute(
                    "DELETE FROM source_slots WHERE server = ?1 AND expires_at < ?2",
                    params![server, now],
                )?;
                let held: i64 = tx.query_row(
                    "SELECT COUNT(*) FROM source_slots WHERE server = ?1 AND holder <> ?2",
                    params![server, holder],
                    |r| r.get(0),
                )?;
                if held >= i64::from(limit) {
                    return Ok(false);
                }
                tx.execute(
                    "INSERT INTO source_slots (server, holder, expires_at) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (server, holder) DO UPDATE SET expires_at = excluded.expires_at",
                    params![server, holder, now + lease.as_millis() as i64],
                )?;
                Ok(true)
            })
            .await
    }

    async fn release_slot(&self, server: &str, holder: &str) -> Result<(), StoreError> {
        let (server, holder) = (server.to_owned(), holder.to_owned());
        self.db
            .write("release slot", move |tx| {
                tx.execute(
                    "DELETE FROM source_slots WHERE server = ?1 AND holder = ?2",
                    params![server, holder],
                )?;
                Ok(())
            })
            .await
    }
}
