//! Batches and the delivery ledger in SQL Server. Bodies are stored packed, each as a parameter
//! of its own statement (a body passes 64 KiB easily; bulk loads cannot carry that).

use super::session::{flag, int, opt_bytes, p, text, Session};
use super::{now_ms, MssqlStore};
use crate::domain::packing::unpack_body;
use crate::errors::StoreError;
use crate::ports::{Attempt, BatchRecord, BatchStore, Run};
use async_trait::async_trait;

/// Drops a finished or abandoned run's scratch rows (`@P1` is the run id).
pub(super) const DROP_SCRATCH: &str = "DELETE FROM {s}.delta_segments WHERE run_id = @P1; \
    UPDATE {s}.batches SET body = NULL WHERE run_id = @P1 AND body IS NOT NULL; \
    DELETE FROM {s}.chunks WHERE run_id = @P1";

const INSERT_BATCH: &str = "IF NOT EXISTS (SELECT 1 FROM {s}.batches WITH (UPDLOCK, HOLDLOCK) WHERE id = @P1) \
    INSERT INTO {s}.batches (id, run_id, seq_first, seq_last, rows, body) VALUES (@P1, @P2, @P3, @P4, @P5, @P6)";

impl MssqlStore {
    async fn insert_attempt(&self, x: &mut Session, run_id: &str, a: &Attempt) -> Result<(), StoreError> {
        x.exec(
            &self.q(
                "INSERT INTO {s}.deliveries (run_id, batch_id, attempt, at, duration_ms, status, detail, request_id) \
                 VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8)",
            ),
            vec![
                p(run_id.to_owned()),
                p(a.batch_id.clone()),
                p(a.attempt as i32),
                p(now_ms()),
                p(a.duration.as_millis() as i64),
                p(a.status.map(i32::from)),
                p(a.detail.clone()),
                p(a.request_id.clone()),
            ],
        )
        .await
        .map(drop)
    }

    pub(super) async fn insert_batch(&self, x: &mut Session, b: &BatchRecord) -> Result<(), StoreError> {
        x.exec(
            &self.q(INSERT_BATCH),
            vec![
                p(b.id.clone()),
                p(b.run_id.clone()),
                p(b.seq_first),
                p(b.seq_last),
                p(b.rows),
                p(b.body.stored().into_owned()),
            ],
        )
        .await
        .map(drop)
    }

    /// Marks the run done and drops its scratch rows; true if this call finished it.
    pub(super) async fn finish_run(&self, x: &mut Session, run_id: &str) -> Result<bool, StoreError> {
        let n = x
            .exec(
                &self.q(
                    "UPDATE {s}.runs SET state = 'done', finished_at = @P2, updated_at = @P2 WHERE id = @P1 AND state <> 'done'",
                ),
                vec![p(run_id.to_owned()), p(now_ms())],
            )
            .await?;
        x.exec(&self.q(DROP_SCRATCH), vec![p(run_id.to_owned())]).await?;
        Ok(n == 1)
    }
}

#[async_trait]
impl BatchStore for MssqlStore {
    async fn save_batches(&self, batches: Vec<BatchRecord>) -> Result<(), StoreError> {
        let mut x = self.session("save batches").await?;
        x.begin().await?;
        for b in &batches {
            self.insert_batch(&mut x, b).await?;
        }
        x.commit().await?;
        self.count(batches.len() as u64);
        Ok(())
    }

    async fn finish_batching(&self, run: &Run, total: i64, bytes: i64) -> Result<(), StoreError> {
        let mut x = self.session("finish batching").await?;
        x.begin().await?;
        let n = x
            .exec(
                &self.q(
                    "UPDATE {s}.runs SET state = 'batched', batches_total = @P2, bytes = @P3, updated_at = @P4 \
                     WHERE id = @P1 AND state = 'merged'",
                ),
                vec![p(run.id.clone()), p(total), p(bytes), p(now_ms())],
            )
            .await?;
        if n == 1 && total == 0 {
            self.finish_run(&mut x, &run.id).await?;
        }
        x.commit().await?;
        self.count(1);
        Ok(())
    }

    async fn pending_batches(&self, run_id: &str) -> Result<Vec<(String, i64, i64)>, StoreError> {
        let sql = self.q(
            "SELECT id, seq_first, seq_last FROM {s}.batches WHERE run_id = @P1 AND delivered_at IS NULL ORDER BY seq_first",
        );
        let mut x = self.session("pending batches").await?;
        let rows = x.rows(&sql, vec![p(run_id.to_owned())]).await?;
        x.done();
        rows.iter().map(|r| Ok((text(r, 0)?, int(r, 1)?, int(r, 2)?))).collect()
    }

    async fn split_batch(&self, run: &Run, attempt: &Attempt, children: Vec<BatchRecord>) -> Result<(), StoreError> {
        let mut x = self.session("split batch").await?;
        x.begin().await?;
        self.insert_attempt(&mut x, &run.id, attempt).await?;
        let first = x
            .exec(
                &self.q(
                    "UPDATE {s}.batches SET delivered_at = @P2, body = NULL WHERE id = @P1 AND delivered_at IS NULL",
                ),
                vec![p(attempt.batch_id.clone()), p(now_ms())],
            )
            .await?
            == 1;
        if first {
            for b in &children {
                self.insert_batch(&mut x, b).await?;
            }
            x.exec(
                &self.q(
                    "UPDATE {s}.runs SET batches_total = batches_total + @P2, batches_delivered = batches_delivered + 1, \
                     updated_at = @P3 WHERE id = @P1",
                ),
                vec![p(run.id.clone()), p(children.len() as i64), p(now_ms())],
            )
            .await?;
        }
        x.commit().await?;
        self.count(2 + children.len() as u64);
        Ok(())
    }

    async fn batch(&self, run_id: &str, batch_id: &str) -> Result<Option<BatchRecord>, StoreError> {
        let sql = self.q(
            "SELECT id, run_id, seq_first, seq_last, rows, body, CASE WHEN delivered_at IS NULL THEN 0 ELSE 1 END \
             FROM {s}.batches WHERE id = @P1 AND run_id = @P2",
        );
        let mut x = self.session("load batch").await?;
        let row = x.row(&sql, vec![p(batch_id.to_owned()), p(run_id.to_owned())]).await?;
        x.done();
        row.map(|r| {
            Ok(BatchRecord {
                id: text(&r, 0)?,
                run_id: text(&r, 1)?,
                seq_first: int(&r, 2)?,
                seq_last: int(&r, 3)?,
                rows: int(&r, 4)?,
                body: unpack_body(opt_bytes(&r, 5)?.unwrap_or_default())?,
                delivered: flag(&r, 6)?,
            })
        })
        .transpose()
    }

    async fn record_attempt(&self, run_id: &str, attempt: &Attempt) -> Result<(), StoreError> {
        let mut x = self.session("record attempt").await?;
        self.insert_attempt(&mut x, run_id, attempt).await?;
        x.done();
        self.count(1);
        Ok(())
    }

    async fn mark_delivered(&self, run: &Run, attempt: &Attempt) -> Result<bool, StoreError> {
        let mut x = self.session("mark delivered").await?;
        x.begin().await?;
        self.insert_attempt(&mut x, &run.id, attempt).await?;
        let first = x
            .exec(
                &self.q("UPDATE {s}.batches SET delivered_at = @P2 WHERE id = @P1 AND delivered_at IS NULL"),
                vec![p(attempt.batch_id.clone()), p(now_ms())],
            )
            .await?
            == 1;
        let mut finished = false;
        if first {
            // The row lock on the run serialises concurrent last deliveries: exactly one finishes it.
            let last = x
                .row(
                    &self.q(
                        "UPDATE {s}.runs SET batches_delivered = batches_delivered + 1, updated_at = @P2 \
                         OUTPUT CASE WHEN inserted.state = 'batched' AND inserted.batches_delivered >= inserted.batches_total \
                         THEN 1 ELSE 0 END WHERE id = @P1",
                    ),
                    vec![p(run.id.clone()), p(now_ms())],
                )
                .await?
                .map(|r| flag(&r, 0))
                .transpose()?
                .unwrap_or(false);
            if last {
                finished = self.finish_run(&mut x, &run.id).await?;
            }
        }
        x.commit().await?;
        self.count(3);
        Ok(finished)
    }
}
