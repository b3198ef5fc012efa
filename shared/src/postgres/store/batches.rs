//! Batches and the delivery ledger in PostgreSQL.

use super::prepared;
use super::scratch::{self, Scratch, Table};
use super::{now_ms, PgStore};
use crate::domain::packing::unpack_body;
use crate::errors::StoreError;
use crate::ports::{Attempt, BatchRecord, BatchStore, Run};
use crate::postgres::pool::pg_err;
use async_trait::async_trait;
use deadpool_postgres::Transaction;
use tokio_postgres::types::ToSql;

async fn insert_attempt(tx: &Transaction<'_>, s: &str, run_id: &str, a: &Attempt) -> Result<(), tokio_postgres::Error> {
    prepared::execute(
        tx,
        &format!(
            "INSERT INTO {s}.deliveries (run_id, batch_id, attempt, at, duration_ms, status, detail, request_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ),
        &[
            &run_id,
            &a.batch_id,
            &(a.attempt as i32),
            &now_ms(),
            &(a.duration.as_millis() as i64),
            &a.status.map(i32::from),
            &a.detail,
            &a.request_id,
        ],
    )
    .await
    .map(drop)
}

/// Marks the run done and drops its scratch.
pub(super) async fn finish_run(tx: &Transaction<'_>, s: &str, run_id: &str) -> Result<bool, StoreError> {
    let n = tx
        .execute(
            &format!("UPDATE {s}.runs SET state = 'done', finished_at = $2, updated_at = $2 WHERE id = $1 AND state <> 'done'"),
            &[&run_id, &now_ms()],
        )
        .await
        .map_err(pg_err("finish run"))?;
    scratch::retire(tx, s, run_id).await?;
    Ok(n == 1)
}

/// Stores batches where the run keeps them. A batch already stored is left as it is — also one
/// in the shared table when the run has its own, as an earlier build's cut during a rollout
/// would have put it.
pub(super) async fn insert_batches(tx: &Transaction<'_>, s: &str, batches: &[BatchRecord]) -> Result<(), StoreError> {
    let err = pg_err("save batches");
    let mut runs: Vec<&str> = batches.iter().map(|b| b.run_id.as_str()).collect();
    runs.dedup();
    for run_id in runs {
        let at = Scratch::of(tx, s, run_id).await?;
        let ins = format!(
            "INSERT INTO {} (id, run_id, seq_first, seq_last, rows, body) \
             SELECT $1::TEXT, $2::TEXT, $3::BIGINT, $4::BIGINT, $5::BIGINT, $6::BYTEA \
             WHERE NOT EXISTS (SELECT 1 FROM ONLY {s}.batches WHERE id = $1::TEXT) ON CONFLICT (id) DO NOTHING",
            at.insert_into(s, Table::Batches)
        );
        for b in batches.iter().filter(|b| b.run_id == run_id) {
            let body = b.body.stored();
            let row: [&(dyn ToSql + Sync); 6] = [&b.id, &b.run_id, &b.seq_first, &b.seq_last, &b.rows, &body.as_ref()];
            prepared::execute(tx, &ins, &row).await.map_err(&err)?;
        }
    }
    Ok(())
}

/// Runs `stmt` on every table holding the run's batches; the rows it changed.
async fn change_batches(
    tx: &Transaction<'_>,
    s: &str,
    run_id: &str,
    stmt: impl Fn(&str) -> String,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, StoreError> {
    let err = pg_err("update batches");
    let mut n = 0;
    for sql in Scratch::of(tx, s, run_id).await?.each(s, Table::Batches, stmt) {
        n += prepared::execute(tx, &sql, params).await.map_err(&err)?;
    }
    Ok(n)
}

#[async_trait]
impl BatchStore for PgStore {
    async fn save_batches(&self, batches: Vec<BatchRecord>) -> Result<(), StoreError> {
        let err = pg_err("save batches");
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(&err)?;
        insert_batches(&tx, &self.s, &batches).await?;
        tx.commit().await.map_err(&err)?;
        self.count(batches.len() as u64);
        Ok(())
    }

    async fn finish_batching(&self, run: &Run, total: i64, bytes: i64) -> Result<(), StoreError> {
        let err = pg_err("finish batching");
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(&err)?;
        let n = prepared::execute(
            &tx,
            &format!(
                "UPDATE {}.runs SET state = 'batched', batches_total = $2, bytes = $3, updated_at = $4 \
                     WHERE id = $1 AND state = 'merged'",
                self.s
            ),
            &[&run.id, &total, &bytes, &now_ms()],
        )
        .await
        .map_err(&err)?;
        if n == 1 && total == 0 {
            finish_run(&tx, &self.s, &run.id).await?;
        }
        tx.commit().await.map_err(&err)?;
        self.count(1);
        Ok(())
    }

    async fn pending_batches(&self, run_id: &str) -> Result<Vec<(String, i64, i64)>, StoreError> {
        let c = self.client().await?;
        let at = Scratch::of(&c, &self.s, run_id).await?;
        let sql = format!(
            "SELECT id, seq_first, seq_last FROM ({}) b ORDER BY seq_first",
            at.select(
                &self.s,
                Table::Batches,
                "id, seq_first, seq_last",
                "run_id = $1 AND delivered_at IS NULL"
            )
        );
        let rows = prepared::query(&c, &sql, &[&run_id])
            .await
            .map_err(pg_err("pending batches"))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    async fn split_batch(&self, run: &Run, attempt: &Attempt, children: Vec<BatchRecord>) -> Result<(), StoreError> {
        let (s, err) = (&self.s, pg_err("split batch"));
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(&err)?;
        insert_attempt(&tx, s, &run.id, attempt).await.map_err(&err)?;
        let set =
            |t: &str| format!("UPDATE {t} SET delivered_at = $2, body = NULL WHERE id = $1 AND delivered_at IS NULL");
        let first = change_batches(&tx, s, &run.id, set, &[&attempt.batch_id, &now_ms()]).await? > 0;
        if first {
            insert_batches(&tx, s, &children).await?;
            tx.execute(
                &format!(
                    "UPDATE {s}.runs SET batches_total = batches_total + $2, batches_delivered = batches_delivered + 1, \
                     updated_at = $3 WHERE id = $1"
                ),
                &[&run.id, &(children.len() as i64), &now_ms()],
            )
            .await
            .map_err(&err)?;
        }
        tx.commit().await.map_err(&err)?;
        self.count(2 + children.len() as u64);
        Ok(())
    }

    async fn batch(&self, run_id: &str, batch_id: &str) -> Result<Option<BatchRecord>, StoreError> {
        let c = self.client().await?;
        let at = Scratch::of(&c, &self.s, run_id).await?;
        let sql = at.select(
            &self.s,
            Table::Batches,
            "id, run_id, seq_first, seq_last, rows, body, delivered_at IS NOT NULL",
            "id = $1 AND run_id = $2",
        );
        let rows = prepared::query(&c, &sql, &[&batch_id, &run_id])
            .await
            .map_err(pg_err("load batch"))?;
        rows.first()
            .map(|r| {
                Ok(BatchRecord {
                    id: r.get(0),
                    run_id: r.get(1),
                    seq_first: r.get(2),
                    seq_last: r.get(3),
                    rows: r.get(4),
                    body: unpack_body(r.get::<_, Option<Vec<u8>>>(5).unwrap_or_default())?,
                    delivered: r.get(6),
                })
            })
            .transpose()
    }

    async fn record_attempt(&self, run_id: &str, attempt: &Attempt) -> Result<(), StoreError> {
        let err = pg_err("record attempt");
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(&err)?;
        insert_attempt(&tx, &self.s, run_id, attempt).await.map_err(&err)?;
        tx.commit().await.map_err(&err)?;
        self.count(1);
        Ok(())
    }

    async fn mark_delivered(&self, run: &Run, attempt: &Attempt) -> Result<bool, StoreError> {
        let (s, err) = (&self.s, pg_err("mark delivered"));
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(&err)?;
        insert_attempt(&tx, s, &run.id, attempt).await.map_err(&err)?;
        let set = |t: &str| format!("UPDATE {t} SET delivered_at = $2 WHERE id = $1 AND delivered_at IS NULL");
        let first = change_batches(&tx, s, &run.id, set, &[&attempt.batch_id, &now_ms()]).await? > 0;
        let mut finished = false;
        if first {
            // The row lock on the run serialises concurrent last deliveries: exactly one finishes it.
            let last: bool = prepared::query_one(
                &tx,
                &format!(
                    "UPDATE {s}.runs SET batches_delivered = batches_delivered + 1, updated_at = $2 WHERE id = $1 \
                         RETURNING state = 'batched' AND batches_delivered >= batches_total"
                ),
                &[&run.id, &now_ms()],
            )
            .await
            .map_err(&err)?
            .get(0);
            if last {
                finished = finish_run(&tx, s, &run.id).await?;
            }
        }
        tx.commit().await.map_err(&err)?;
        self.count(3);
        Ok(finished)
    }
}
