//! Source-server query slots in PostgreSQL, counted under a transaction-scoped advisory lock per
//! server so concurrent workers cannot both take the last slot.

use super::prepared;
use super::{now_ms, PgStore};
use crate::errors::StoreError;
use crate::ports::SlotStore;
use crate::postgres::pool::pg_err;
use async_trait::async_trait;
use std::time::Duration;

#[async_trait]
impl SlotStore for PgStore {
    async fn acquire_slot(&self, server: &str, holder: &str, limit: u32, lease: Duration) -> Result<bool, StoreError> {
        let (s, err) = (&self.s, pg_err("acquire slot"));
        let now = now_ms();
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(&err)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))",
            &[&format!("signals-slot:{server}")],
        )
        .await
        .map_err(&err)?;
        tx.execute(
            &format!("DELETE FROM {s}.source_slots WHERE server = $1 AND expires_at < $2"),
            &[&server, &now],
        )
        .await
        .map_err(&err)?;
        let held: i64 = tx
            .query_one(
                &format!("SELECT COUNT(*) FROM {s}.source_slots WHERE server = $1 AND holder <> $2"),
                &[&server, &holder],
            )
            .await
            .map_err(&err)?
            .get(0);
        let ok = held < i64::from(limit);
        if ok {
            tx.execute(
                &format!(
                    "INSERT INTO {s}.source_slots (server, holder, expires_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (server, holder) DO UPDATE SET expires_at = EXCLUDED.expires_at"
                ),
                &[&server, &holder, &(now + lease.as_millis() as i64)],
            )
            .await
            .map_err(&err)?;
        }
        tx.commit().await.map_err(&err)?;
        Ok(ok)
    }

    async fn release_slot(&self, server: &str, holder: &str) -> Result<(), StoreError> {
        let sql = format!("DELETE FROM {}.source_slots WHERE server = $1 AND holder = $2", self.s);
        prepared::execute(&self.client().await?, &sql, &[&server, &holder])
            .await
            .map_err(pg_err("release slot"))?;
        Ok(())
    }
}
