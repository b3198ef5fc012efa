//! Dead letters in SQLite.

use super::{from_ms, now_ms, SqliteStore};
use crate::domain::job::Job;
use crate::errors::StoreError;
use crate::ports::{DeadLetter, DeadLetterStore};
use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

const COLS: &str = "id, tenant, source, run_id, stage, message, error, attempts, state, created_at, resolved_by";

fn map(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeadLetter> {
    Ok(DeadLetter {
        id: r.get(0)?,
        tenant: r.get(1)?,
        source: r.get(2)?,
        run_id: r.get(3)?,
        stage: r.get(4)?,
        message: r.get(5)?,
        error: r.get(6)?,
        attempts: r.get(7)?,
        state: r.get(8)?,
        created_at: from_ms(r.get(9)?),
        resolved_by: r.get(10)?,
    })
}

#[async_trait]
impl DeadLetterStore for SqliteStore {
    async fn dead_letter(
        &self,
        job: Option<&Job>,
        raw: &str,
        stage: &str,
        error: &str,
        attempts: u32,
    ) -> Result<i64, StoreError> {
        let (tenant, source, run_id) = job.map(|j| j.scope()).unwrap_or((None, None, None));
        let (tenant, source, run_id) = (
            tenant.map(str::to_owned),
            source.map(str::to_owned),
            run_id.map(str::to_owned),
        );
        let message_id = job.map(|j| j.id.clone());
        let (raw, stage, error) = (raw.to_owned(), stage.to_owned(), error.to_owned());
        self.db
            .write("record dead letter", move |tx| {
                tx.execute(
                    "INSERT INTO dead_letters (message_id, tenant, source, run_id, stage, message, error, attempts, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (message_id) DO NOTHING",
                    params![message_id, tenant, source, run_id, stage, raw, error, attempts, now_ms()],
                )?;
                if let Some(run_id) = &run_id {
                    tx.execute(
                        "UPDATE runs SET last_error = ?2, updated_at = ?3 WHERE id = ?1",
                        params![run_id, error, now_ms()],
                    )?;
                }
                match &message_id {
                    Some(m) => tx.query_row("SELECT id FROM dead_letters WHERE message_id = ?1", [m], |r| r.get(0)),
                    None => Ok(tx.last_insert_rowid()),
                }
            })
            .await
    }

    async fn dead_letters(&self, open_only: bool) -> Result<Vec<DeadLetter>, StoreError> {
        self.db
            .read("list dead letters", move |c| {
                let mut stmt = c.prepare(&format!(
                    "SELECT {COLS} FROM dead_letters WHERE (?1 = 0 OR state = 'open') ORDER BY id DESC"
                ))?;
                let rows = stmt.query_map([open_only], map)?;
                rows.collect()
            })
            .await
    }

    async fn dead_letter_by_id(&self, id: i64) -> Result<Option<DeadLetter>, StoreError> {
        self.db
            .read("load dead letter", move |c| {
                c.query_row(&format!("SELECT {COLS} FROM dead_letters WHERE id = ?1"), [id], map)
                    .optional()
            })
            .await
    }

    async fn resolve_dead_letter(&self, id: i64, state: &str, by: &str) -> Result<bool, StoreError> {
        let (state, by) = (state.to_owned(), by.to_owned());
        self.db
            .write("resolve dead letter", move |tx| {
                let n = tx.execute(
                    "UPDATE dead_letters SET state = ?2, resolved_at = ?3, resolved_by = ?4 WHERE id = ?1 AND state = 'open'",
                    params![id, state, now_ms(), by],
                )?;
                Ok(n == 1)
            })
            .await
    }
}
