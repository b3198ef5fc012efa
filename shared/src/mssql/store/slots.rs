//! Source-server query slots in SQL Server, counted under a transaction-owned application lock
//! per server so concurrent workers cannot both take the last slot.

use super::session::{int, p};
use super::{now_ms, MssqlStore};
use crate::errors::StoreError;
use crate::ports::SlotStore;
use async_trait::async_trait;
use std::time::Duration;

#[async_trait]
impl SlotStore for MssqlStore {
    async fn acquire_slot(&self, server: &str, holder: &str, limit: u32, lease: Duration) -> Result<bool, StoreError> {
        let now = now_ms();
        let sql = self.q(
            "SET XACT_ABORT ON; BEGIN TRANSACTION; \
             DECLARE @lock INT; EXEC @lock = sp_getapplock @Resource = @P5, @LockMode = 'Exclusive', \
               @LockOwner = 'Transaction', @LockTimeout = 30000; \
             IF @lock < 0 THROW 51000, 'source slot lock not granted within 30 s', 1; \
             DELETE FROM {s}.source_slots WHERE server = @P1 AND expires_at < @P3; \
             DECLARE @ok INT = CASE WHEN (SELECT COUNT_BIG(*) FROM {s}.source_slots WHERE server = @P1 AND holder <> @P2) < @P4 \
               THEN 1 ELSE 0 END; \
             IF @ok = 1 BEGIN \
               UPDATE {s}.source_slots SET expires_at = @P6 WHERE server = @P1 AND holder = @P2; \
               IF @@ROWCOUNT = 0 INSERT INTO {s}.source_slots (server, holder, expires_at) VALUES (@P1, @P2, @P6); \
             END; \
             COMMIT TRANSACTION; \
             SELECT @ok",
        );
        let mut x = self.session("acquire slot").await?;
        let row = x
            .row(
                &sql,
                vec![
                    p(server.to_owned()),
                    p(holder.to_owned()),
                    p(now),
                    p(i64::from(limit)),
                    p(format!("signals-slot:{server}")),
                    p(now + lease.as_millis() as i64),
                ],
            )
            .await?;
        x.done();
        Ok(row.map(|r| int(&r, 0)).transpose()? == Some(1))
    }

    async fn release_slot(&self, server: &str, holder: &str) -> Result<(), StoreError> {
        let sql = self.q("DELETE FROM {s}.source_slots WHERE server = @P1 AND holder = @P2");
        let mut x = self.session("release slot").await?;
        x.exec(&sql, vec![p(server.to_owned()), p(holder.to_owned())]).await?;
        x.done();
        Ok(())
    }
}
