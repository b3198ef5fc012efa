//! The table queue in SQLite: a claim moves `visible_at` past the lease and stamps a token, so an
//! expired lease makes the message visible again by itself (like an SQS visibility timeout).

use super::{now_ms, SqliteStore};
use crate::domain::job::{Job, Stage, PRIORITY_INTERVAL};
use crate::errors::StoreError;
use crate::ports::{Claimed, JobQueue};
use async_trait::async_trait;
use rusqlite::params;
use std::time::Duration;

/// ` AND stage IN (...)`, empty for all stages. Stage names are our own constants, never input.
fn stage_filter(stages: &[Stage]) -> String {
    if stages.is_empty() {
        return String::new();
    }
    let names: Vec<String> = stages.iter().map(|s| format!("'{}'", s.as_str())).collect();
    format!(" AND stage IN ({})", names.join(", "))
}

fn parse_handle(h: &str) -> (i64, String) {
    let (id, token) = h.split_once(':').unwrap_or(("0", ""));
    (id.parse().unwrap_or(0), token.to_owned())
}

#[async_trait]
impl JobQueue for SqliteStore {
    async fn enqueue(&self, jobs: &[Job], delay: Duration) -> Result<(), StoreError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let rows: Vec<(String, String, u8)> = jobs
            .iter()
            .map(|j| (j.stage().to_string(), j.encode(), j.priority))
            .collect();
        self.db
            .write("enqueue", move |tx| {
                let now = now_ms();
                let mut ins = tx.prepare_cached(
                    "INSERT INTO jobs (stage, body, enqueued_at, visible_at, priority) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for (stage, body, priority) in rows {
                    ins.execute(params![stage, body, now, now + delay.as_millis() as i64, priority])?;
                }
                Ok(())
            })
            .await
    }

    async fn claim(&self, max: usize, lease: Duration, stages: &[Stage]) -> Result<Vec<Claimed>, StoreError> {
        self.claim_from(max, lease, stages, 0).await
    }

    async fn claim_urgent(&self, max: usize, lease: Duration, stages: &[Stage]) -> Result<Vec<Claimed>, StoreError> {
        self.claim_from(max, lease, stages, PRIORITY_INTERVAL).await
    }

    async fn extend(&self, claimed: &Claimed, lease: Duration) -> Result<(), StoreError> {
        let (id, token) = parse_handle(&claimed.handle);
        self.db
            .write("extend lease", move |tx| {
                tx.execute(
                    "UPDATE jobs SET visible_at = ?3 WHERE id = ?1 AND lease_token = ?2",
                    params![id, token, now_ms() + lease.as_millis() as i64],
                )?;
                Ok(())
            })
            .await
    }

    async fn ack(&self, claimed: &Claimed) -> Result<(), StoreError> {
        let (id, token) = parse_handle(&claimed.handle);
        self.db
            .write("ack", move |tx| {
                tx.execute(
                    "DELETE FROM jobs WHERE id = ?1 AND lease_token = ?2",
                    params![id, token],
                )?;
                Ok(())
            })
            .await
    }

    async fn retry_later(&self, claimed: &Claimed, delay: Duration, error: &str) -> Result<(), StoreError> {
        let (id, token) = parse_handle(&claimed.handle);
        let error = error.to_owned();
        self.db
            .write("retry later", move |tx| {
                tx.execute(
                    "UPDATE jobs SET visible_at = ?3, lease_token = NULL, last_error = ?4 WHERE id = ?1 AND lease_token = ?2",
                    params![id, token, now_ms() + delay.as_millis() as i64, error],
                )?;
                Ok(())
            })
            .await
    }

    async fn depth(&self, stages: &[Stage]) -> Result<(u64, Option<Duration>), StoreError> {
        let filter = stage_filter(stages);
        self.db
            .read("queue depth", move |c| {
                c.query_row(
                    &format!("SELECT COUNT(*), MIN(CASE WHEN visible_at <= ?1 THEN enqueued_at END) FROM jobs WHERE 1 = 1{filter}"),
                    [now_ms()],
                    |r| {
                        let n: i64 = r.get(0)?;
                        let oldest: Option<i64> = r.get(1)?;
                        Ok((
                            n as u64,
                            oldest.map(|o| Duration::from_millis((now_ms() - o).max(0) as u64)),
                        ))
                    },
                )
            })
            .await
    }
}

impl SqliteStore {
    /// Claims visible jobs of at least `min_priority`, highest priority first.
    async fn claim_from(
        &self,
        max: usize,
        lease: Duration,
        stages: &[Stage],
        min_priority: u8,
    ) -> Result<Vec<Claimed>, StoreError> {
        let filter = stage_filter(stages);
        self.db
            .write("claim", move |tx| {
                let now = now_ms();
                let token = uuid::Uuid::new_v4().simple().to_string();
                let mut stmt = tx.prepare_cached(&format!(
                    "UPDATE jobs SET visible_at = ?1, lease_token = ?2, attempts = attempts + 1 \
                     WHERE id IN (SELECT id FROM jobs WHERE visible_at <= ?3 AND priority >= ?5{filter} ORDER BY priority DESC, visible_at, id LIMIT ?4) \
                     RETURNING id, body, attempts"
                ))?;
                let rows = stmt.query_map(params![now + lease.as_millis() as i64, token, now, max as i64, min_priority], |r| {
                    Ok(Claimed {
                        handle: format!("{}:{token}", r.get::<_, i64>(0)?),
                        body: r.get(1)?,
                        attempts: r.get(2)?,
                    })
                })?;
                rows.collect()
            })
            .await
    }
}
