//! Dead letters in PostgreSQL.

use super::prepared;
use super::{from_ms, now_ms, PgStore};
use crate::domain::job::Job;
use crate::errors::StoreError;
use crate::ports::{DeadLetter, DeadLetterStore};
use crate::postgres::pool::pg_err;
use async_trait::async_trait;

const COLS: &str = "id, tenant, source, run_id, stage, message, error, attempts, state, created_at, resolved_by";

fn map(r: &tokio_postgres::Row) -> DeadLetter {
    DeadLetter {
        id: r.get(0),
        tenant: r.get(1),
        source: r.get(2),
        run_id: r.get(3),
        stage: r.get(4),
        message: r.get(5),
        error: r.get(6),
        attempts: r.get::<_, i32>(7) as u32,
        state: r.get(8),
        created_at: from_ms(r.get(9)),
        resolved_by: r.get(10),
    }
}

#[async_trait]
impl DeadLetterStore for PgStore {
    async fn dead_letter(
        &self,
        job: Option<&Job>,
        raw: &str,
        stage: &str,
        error: &str,
        attempts: u32,
    ) -> Result<i64, StoreError> {
        let (s, err) = (&self.s, pg_err("record dead letter"));
        let (tenant, source, run_id) = job.map(|j| j.scope()).unwrap_or((None, None, None));
        let message_id = job.map(|j| j.id.as_str());
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(&err)?;
        let inserted = tx
            .query_opt(
                &format!(
                    "INSERT INTO {s}.dead_letters (message_id, tenant, source, run_id, stage, message, error, attempts, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (message_id) DO NOTHING RETURNING id"
                ),
                &[&message_id, &tenant, &source, &run_id, &stage, &raw, &error, &(attempts as i32), &now_ms()],
            )
            .await
            .map_err(&err)?;
        let id = match inserted {
            Some(r) => r.get(0),
            None => tx
                .query_one(
                    &format!("SELECT id FROM {s}.dead_letters WHERE message_id = $1"),
                    &[&message_id],
                )
                .await
                .map_err(&err)?
                .get(0),
        };
        if let Some(run_id) = run_id {
            tx.execute(
                &format!("UPDATE {s}.runs SET last_error = $2, updated_at = $3 WHERE id = $1"),
                &[&run_id, &error, &now_ms()],
            )
            .await
            .map_err(&err)?;
        }
        tx.commit().await.map_err(&err)?;
        self.count(2);
        Ok(id)
    }

    async fn dead_letters(&self, open_only: bool) -> Result<Vec<DeadLetter>, StoreError> {
        let sql = format!(
            "SELECT {COLS} FROM {}.dead_letters WHERE (NOT $1 OR state = 'open') ORDER BY id DESC",
            self.s
        );
        let rows = prepared::query(&self.client().await?, &sql, &[&open_only])
            .await
            .map_err(pg_err("list dead letters"))?;
        Ok(rows.iter().map(map).collect())
    }

    async fn dead_letter_by_id(&self, id: i64) -> Result<Option<DeadLetter>, StoreError> {
        let sql = format!("SELECT {COLS} FROM {}.dead_letters WHERE id = $1", self.s);
        let row = prepared::query_opt(&self.client().await?, &sql, &[&id])
            .await
            .map_err(pg_err("load dead letter"))?;
        Ok(row.as_ref().map(map))
    }

    async fn resolve_dead_letter(&self, id: i64, state: &str, by: &str) -> Result<bool, StoreError> {
        let sql = format!(
            "UPDATE {}.dead_letters SET state = $2, resolved_at = $3, resolved_by = $4 WHERE id = $1 AND state = 'open'",
            self.s
        );
        let n = prepared::execute(&self.client().await?, &sql, &[&id, &state, &now_ms(), &by])
            .await
            .map_err(pg_err("resolve dead letter"))?;
        self.count(n);
        Ok(n == 1)
    }
}
