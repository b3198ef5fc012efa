//! Dead letters in SQL Server.

use super::session::{int, opt_text, p, text};
use super::{from_ms, now_ms, MssqlStore};
use crate::domain::job::Job;
use crate::errors::StoreError;
use crate::ports::{DeadLetter, DeadLetterStore};
use async_trait::async_trait;

const COLS: &str = "id, tenant, source, run_id, stage, message, error, attempts, state, created_at, resolved_by";

fn map(r: &tiberius::Row) -> Result<DeadLetter, StoreError> {
    Ok(DeadLetter {
        id: int(r, 0)?,
        tenant: opt_text(r, 1)?,
        source: opt_text(r, 2)?,
        run_id: opt_text(r, 3)?,
        stage: text(r, 4)?,
        message: text(r, 5)?,
        error: text(r, 6)?,
        attempts: int(r, 7)? as u32,
        state: text(r, 8)?,
        created_at: from_ms(int(r, 9)?),
        resolved_by: opt_text(r, 10)?,
    })
}

#[async_trait]
impl DeadLetterStore for MssqlStore {
    async fn dead_letter(
        &self,
        job: Option<&Job>,
        raw: &str,
        stage: &str,
        error: &str,
        attempts: u32,
    ) -> Result<i64, StoreError> {
        let (tenant, source, run_id) = job.map(|j| j.scope()).unwrap_or((None, None, None));
        let message_id = job.map(|j| j.id.clone());
        let own = |s: Option<&str>| s.map(str::to_owned);
        // Once per message id: a second report of the same message returns the first's id.
        let sql = self.q(
            "BEGIN TRANSACTION; \
             IF @P1 IS NULL OR NOT EXISTS (SELECT 1 FROM {s}.dead_letters WITH (UPDLOCK, HOLDLOCK) WHERE message_id = @P1) \
               INSERT INTO {s}.dead_letters (message_id, tenant, source, run_id, stage, message, error, attempts, created_at) \
               VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8, @P9); \
             IF @P4 IS NOT NULL UPDATE {s}.runs SET last_error = @P7, updated_at = @P9 WHERE id = @P4; \
             COMMIT TRANSACTION; \
             SELECT CASE WHEN @P1 IS NULL THEN CAST(SCOPE_IDENTITY() AS BIGINT) \
                         ELSE (SELECT id FROM {s}.dead_letters WHERE message_id = @P1) END",
        );
        let mut x = self.session("record dead letter").await?;
        let row = x
            .row(
                &sql,
                vec![
                    p(message_id),
                    p(own(tenant)),
                    p(own(source)),
                    p(own(run_id)),
                    p(stage.to_owned()),
                    p(raw.to_owned()),
                    p(error.to_owned()),
                    p(attempts as i32),
                    p(now_ms()),
                ],
            )
            .await?;
        x.done();
        self.count(2);
        row.map(|r| int(&r, 0)).transpose()?.ok_or_else(|| StoreError::Corrupt {
            what: "dead letter",
            detail: "no id came back".into(),
        })
    }

    async fn dead_letters(&self, open_only: bool) -> Result<Vec<DeadLetter>, StoreError> {
        let sql = self.q(&format!(
            "SELECT {COLS} FROM {{s}}.dead_letters WHERE (@P1 = 0 OR state = 'open') ORDER BY id DESC"
        ));
        let mut x = self.session("list dead letters").await?;
        let rows = x.rows(&sql, vec![p(open_only)]).await?;
        x.done();
        rows.iter().map(map).collect()
    }

    async fn dead_letter_by_id(&self, id: i64) -> Result<Option<DeadLetter>, StoreError> {
        let sql = self.q(&format!("SELECT {COLS} FROM {{s}}.dead_letters WHERE id = @P1"));
        let mut x = self.session("load dead letter").await?;
        let row = x.row(&sql, vec![p(id)]).await?;
        x.done();
        row.as_ref().map(map).transpose()
    }

    async fn resolve_dead_letter(&self, id: i64, state: &str, by: &str) -> Result<bool, StoreError> {
        let sql = self.q(
            "UPDATE {s}.dead_letters SET state = @P2, resolved_at = @P3, resolved_by = @P4 WHERE id = @P1 AND state = 'open'",
        );
        let mut x = self.session("resolve dead letter").await?;
        let n = x
            .exec(&sql, vec![p(id), p(state.to_owned()), p(now_ms()), p(by.to_owned())])
            .await?;
        x.done();
        self.count(n);
        Ok(n == 1)
    }
}
