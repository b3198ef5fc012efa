//! Pauses and the audit log in SQLite.

use super::{from_ms, now_ms, SqliteStore};
use crate::errors::StoreError;
use crate::ports::{OperatorStore, PruneCutoffs, SourceClock};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::params;

#[async_trait]
impl OperatorStore for SqliteStore {
    async fn set_paused(&self, tenant: &str, source: Option<&str>, paused: bool, by: &str) -> Result<(), StoreError> {
        let (tenant, source, by) = (tenant.to_owned(), source.unwrap_or("").to_owned(), by.to_owned());
        self.db
            .write("set paused", move |tx| {
                if paused {
                    tx.execute(
                        "INSERT INTO pauses (tenant, source, paused_at, paused_by) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                        params![tenant, source, now_ms(), by],
                    )?;
                } else {
                    tx.execute("DELETE FROM pauses WHERE tenant = ?1 AND source = ?2", params![tenant, source])?;
                }
                Ok(())
            })
            .await
    }

    async fn pauses(&self, tenant: &str) -> Result<Vec<Option<String>>, StoreError> {
        let tenant = tenant.to_owned();
        self.db
            .read("pauses", move |c| {
                let mut stmt = c.prepare_cached("SELECT source FROM pauses WHERE tenant = ?1")?;
                let rows = stmt.query_map([tenant], |r| r.get::<_, String>(0))?;
                rows.map(|s| s.map(|s| (!s.is_empty()).then_some(s))).collect()
            })
            .await
    }

    async fn last_audit(&self, action: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        let action = action.to_owned();
        let at: Option<i64> = self
            .db
            .read("last audit", move |c| {
                c.query_row("SELECT MAX(at) FROM audit_log WHERE action = ?1", [action], |r| {
                    r.get(0)
                })
            })
            .await?;
        Ok(at.map(super::from_ms))
    }

    async fn prune(&self, cut: &PruneCutoffs) -> Result<u64, StoreError> {
        let steps = [
            (
                "DELETE FROM deliveries WHERE rowid IN (SELECT d.rowid FROM deliveries d JOIN runs r ON r.id = d.run_id \
                 WHERE r.state IN ('done', 'abandoned') AND r.finished_at < ?1 AND r.created_at < (SELECT MAX(created_at) \
                 FROM runs x WHERE x.tenant = r.tenant AND x.source = r.source) LIMIT 1000)",
                cut.runs,
            ),
            (
                "DELETE FROM batches WHERE rowid IN (SELECT b.rowid FROM batches b JOIN runs r ON r.id = b.run_id \
                 WHERE r.state IN ('done', 'abandoned') AND r.finished_at < ?1 AND r.created_at < (SELECT MAX(created_at) \
                 FROM runs x WHERE x.tenant = r.tenant AND x.source = r.source) LIMIT 1000)",
                cut.runs,
            ),
            (
                "DELETE FROM runs WHERE rowid IN (SELECT r.rowid FROM runs r WHERE r.state IN ('done', 'abandoned') \
                 AND r.finished_at < ?1 AND r.created_at < (SELECT MAX(created_at) FROM runs x \
                 WHERE x.tenant = r.tenant AND x.source = r.source) \
                 AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.run_id = r.id) LIMIT 1000)",
                cut.runs,
            ),
            (
                "DELETE FROM run_stages WHERE rowid IN (SELECT s.rowid FROM run_stages s WHERE s.first_at < ?1 \
                 AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.id = s.run_id) LIMIT 1000)",
                cut.runs,
            ),
            ("DELETE FROM deliveries WHERE rowid IN (SELECT rowid FROM deliveries WHERE at < ?1 LIMIT 1000)", cut.ledger),
            (
                "UPDATE batches SET body = NULL WHERE rowid IN (SELECT rowid FROM batches \
                 WHERE delivered_at < ?1 AND body IS NOT NULL LIMIT 1000)",
                cut.bodies,
            ),
            (
                "DELETE FROM dead_letters WHERE rowid IN (SELECT rowid FROM dead_letters \
                 WHERE state <> 'open' AND resolved_at < ?1 LIMIT 1000)",
                cut.dead_letters,
            ),
        ];
        let mut total = 0;
        for (sql, cutoff) in steps {
            // Small transactions: a sync never waits long for the writer.
            loop {
                let ms = cutoff.timestamp_millis();
                let n = self.db.write("prune", move |tx| tx.execute(sql, [ms])).await? as u64;
                total += n;
                if n < 1000 {
                    break;
                }
            }
        }
        Ok(total)
    }

    async fn purge_tenant(&self, tenant: &str, keep_history: bool) -> Result<u64, StoreError> {
        let tenant = tenant.to_owned();
        self.db
            .write("purge tenant", move |tx| {
                let runs = "(SELECT id FROM runs WHERE tenant = ?1)";
                let mut sql = vec![
                    "DELETE FROM jobs WHERE json_extract(body, '$.tenant') = ?1".to_owned(),
                    "DELETE FROM staging WHERE tenant = ?1".to_owned(),
                    "DELETE FROM staged_schemas WHERE tenant = ?1".to_owned(),
                    format!("DELETE FROM deltas WHERE run_id IN {runs}"),
                    format!("DELETE FROM delta_segments WHERE run_id IN {runs}"),
                    format!("DELETE FROM chunks WHERE run_id IN {runs}"),
                    "DELETE FROM cursors WHERE tenant = ?1".to_owned(),
                    "DELETE FROM verifications WHERE tenant = ?1".to_owned(),
                    "DELETE FROM pauses WHERE tenant = ?1".to_owned(),
                ];
                if keep_history {
                    sql.push(format!("UPDATE batches SET body = NULL WHERE run_id IN {runs}"));
                } else {
                    sql.push(format!("DELETE FROM deliveries WHERE run_id IN {runs}"));
                    sql.push(format!("DELETE FROM batches WHERE run_id IN {runs}"));
                    sql.push("DELETE FROM dead_letters WHERE tenant = ?1".to_owned());
                    sql.push(format!("DELETE FROM run_stages WHERE run_id IN {runs}"));
                    sql.push("DELETE FROM runs WHERE tenant = ?1".to_owned());
                }
                let mut n = 0;
                for s in sql {
                    n += tx.execute(&s, [&tenant])? as u64;
                }
                Ok(n)
            })
            .await
    }

    async fn audit(&self, actor: &str, action: &str, subject: &str, detail: &str) -> Result<(), StoreError> {
        let row = (
            actor.to_owned(),
            action.to_owned(),
            subject.to_owned(),
            detail.to_owned(),
        );
        self.db
            .write("audit", move |tx| {
                tx.execute(
                    "INSERT INTO audit_log (at, actor, action, subject, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![now_ms(), row.0, row.1, row.2, row.3],
                )?;
                Ok(())
            })
            .await
    }

    async fn sync_clocks(&self) -> Result<Vec<SourceClock>, StoreError> {
        self.db
            .read("sync clocks", |c| {
                let mut st = c.prepare(
                    "SELECT tenant, source, MIN(created_at), MAX(CASE WHEN state = 'done' THEN finished_at END) \
                     FROM runs GROUP BY tenant, source ORDER BY tenant, source",
                )?;
                let rows = st.query_map([], |r| {
                    Ok(SourceClock {
                        tenant: r.get(0)?,
                        source: r.get(1)?,
                        first_run_at: from_ms(r.get(2)?),
                        last_success_at: r.get::<_, Option<i64>>(3)?.map(from_ms),
                    })
                })?;
                rows.collect()
            })
            .await
    }
}
