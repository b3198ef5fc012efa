//! Pauses and the audit log in PostgreSQL.

use super::prepared;
use super::{from_ms, now_ms, scratch, PgStore};
use crate::errors::StoreError;
use crate::ports::{OperatorStore, PruneCutoffs, SourceClock};
use crate::postgres::pool::pg_err;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

#[async_trait]
impl OperatorStore for PgStore {
    async fn set_paused(&self, tenant: &str, source: Option<&str>, paused: bool, by: &str) -> Result<(), StoreError> {
        let source = source.unwrap_or("");
        let c = self.client().await?;
        if paused {
            let sql = format!(
                "INSERT INTO {}.pauses (tenant, source, paused_at, paused_by) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                self.s
            );
            c.execute(&sql, &[&tenant, &source, &now_ms(), &by])
                .await
                .map_err(pg_err("set paused"))?;
        } else {
            let sql = format!("DELETE FROM {}.pauses WHERE tenant = $1 AND source = $2", self.s);
            c.execute(&sql, &[&tenant, &source])
                .await
                .map_err(pg_err("set paused"))?;
        }
        Ok(())
    }

    async fn pauses(&self, tenant: &str) -> Result<Vec<Option<String>>, StoreError> {
        let sql = format!("SELECT source FROM {}.pauses WHERE tenant = $1", self.s);
        let rows = prepared::query(&self.client().await?, &sql, &[&tenant])
            .await
            .map_err(pg_err("pauses"))?;
        Ok(rows
            .iter()
            .map(|r| Some(r.get::<_, String>(0)).filter(|s| !s.is_empty()))
            .collect())
    }

    async fn last_audit(&self, action: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        let sql = format!("SELECT MAX(at) FROM {}.audit_log WHERE action = $1", self.s);
        let at: Option<i64> = prepared::query_one(&self.client().await?, &sql, &[&action])
            .await
            .map_err(pg_err("last audit"))?
            .get(0);
        Ok(at.map(super::from_ms))
    }

    async fn prune(&self, cut: &PruneCutoffs) -> Result<u64, StoreError> {
        let s = &self.s;
        let old_runs = format!(
            "SELECT r.id FROM {s}.runs r WHERE r.state IN ('done', 'abandoned') AND r.finished_at < $1 \
             AND r.created_at < (SELECT MAX(created_at) FROM {s}.runs x WHERE x.tenant = r.tenant AND x.source = r.source)"
        );
        let steps = [
            (format!("DELETE FROM {s}.deliveries WHERE id IN (SELECT id FROM {s}.deliveries WHERE run_id IN ({old_runs}) LIMIT 1000)"), cut.runs),
            (format!("DELETE FROM ONLY {s}.batches WHERE id IN (SELECT id FROM ONLY {s}.batches WHERE run_id IN ({old_runs}) LIMIT 1000)"), cut.runs),
            (
                format!(
                    "DELETE FROM {s}.runs WHERE id IN ({old_runs} AND NOT EXISTS (SELECT 1 FROM ONLY {s}.batches b WHERE b.run_id = r.id) LIMIT 1000)"
                ),
                cut.runs,
            ),
            (
                format!(
                    "DELETE FROM {s}.run_stages WHERE (run_id, stage) IN (SELECT st.run_id, st.stage FROM {s}.run_stages st \
                     WHERE st.first_at < $1 AND NOT EXISTS (SELECT 1 FROM {s}.runs r WHERE r.id = st.run_id) LIMIT 1000)"
                ),
                cut.runs,
            ),
            (format!("DELETE FROM {s}.deliveries WHERE id IN (SELECT id FROM {s}.deliveries WHERE at < $1 LIMIT 1000)"), cut.ledger),
            (
                format!("UPDATE ONLY {s}.batches SET body = NULL WHERE id IN (SELECT id FROM ONLY {s}.batches WHERE delivered_at < $1 AND body IS NOT NULL LIMIT 1000)"),
                cut.bodies,
            ),
            (
                format!("DELETE FROM {s}.dead_letters WHERE id IN (SELECT id FROM {s}.dead_letters WHERE state <> 'open' AND resolved_at < $1 LIMIT 1000)"),
                cut.dead_letters,
            ),
        ];
        let c = self.client().await?;
        scratch::drop_orphans(&c, s).await?;
        let mut total = 0;
        for (sql, cutoff) in steps {
            loop {
                let n = c
                    .execute(&sql, &[&cutoff.timestamp_millis()])
                    .await
                    .map_err(pg_err("prune"))?;
                total += n;
                if n < 1000 {
                    break;
                }
            }
        }
        Ok(total)
    }

    async fn purge_tenant(&self, tenant: &str, keep_history: bool) -> Result<u64, StoreError> {
        let (s, err) = (&self.s, pg_err("purge tenant"));
        let runs = format!("(SELECT id FROM {s}.runs WHERE tenant = $1)");
        let mut sql = vec![
            format!("DELETE FROM {s}.jobs WHERE (body::jsonb) ->> 'tenant' = $1"),
            // The (tenant, source) → id map stays, as on SQL Server: it holds no data.
            format!("DELETE FROM {s}.staging_keys WHERE sid IN (SELECT sid FROM {s}.sources WHERE tenant = $1)"),
            format!("DELETE FROM {s}.staging_packs WHERE sid IN (SELECT sid FROM {s}.sources WHERE tenant = $1)"),
            format!("DELETE FROM {s}.staged_schemas WHERE tenant = $1"),
            format!("DELETE FROM {s}.deltas WHERE run_id IN {runs}"),
            format!("DELETE FROM ONLY {s}.delta_segments WHERE run_id IN {runs}"),
            format!("DELETE FROM {s}.chunks WHERE run_id IN {runs}"),
            format!("DELETE FROM {s}.cursors WHERE tenant = $1"),
            format!("DELETE FROM {s}.verifications WHERE tenant = $1"),
            format!("DELETE FROM {s}.pauses WHERE tenant = $1"),
        ];
        if keep_history {
            sql.push(format!(
                "UPDATE ONLY {s}.batches SET body = NULL WHERE run_id IN {runs}"
            ));
        } else {
            sql.push(format!("DELETE FROM {s}.deliveries WHERE run_id IN {runs}"));
            sql.push(format!("DELETE FROM ONLY {s}.batches WHERE run_id IN {runs}"));
            sql.push(format!("DELETE FROM {s}.dead_letters WHERE tenant = $1"));
            sql.push(format!("DELETE FROM {s}.run_stages WHERE run_id IN {runs}"));
            sql.push(format!("DELETE FROM {s}.runs WHERE tenant = $1"));
        }
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(&err)?;
        // Own scratch tables first (their batch records move to the shared table), so that the
        // statements below name only the shared tables and lock no other tenant's.
        let own: Vec<String> = tx
            .query(
                &format!("SELECT id FROM {s}.runs WHERE tenant = $1 AND own_scratch"),
                &[&tenant],
            )
            .await
            .map_err(&err)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        scratch::retire_own(&tx, s, &own).await?;
        let mut n = 0;
        for q in sql {
            n += tx.execute(&q, &[&tenant]).await.map_err(&err)?;
        }
        // Not data, and not counted: the merges' count towards compacting a source staged anew.
        tx.execute(
            &format!("UPDATE {s}.sources SET per_key = 0 WHERE tenant = $1"),
            &[&tenant],
        )
        .await
        .map_err(&err)?;
        tx.commit().await.map_err(&err)?;
        Ok(n)
    }

    async fn audit(&self, actor: &str, action: &str, subject: &str, detail: &str) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO {}.audit_log (at, actor, action, subject, detail) VALUES ($1, $2, $3, $4, $5)",
            self.s
        );
        prepared::execute(
            &self.client().await?,
            &sql,
            &[&now_ms(), &actor, &action, &subject, &detail],
        )
        .await
        .map_err(pg_err("audit"))?;
        Ok(())
    }

    async fn sync_clocks(&self) -> Result<Vec<SourceClock>, StoreError> {
        let sql = format!(
            "SELECT tenant, source, MIN(created_at), MAX(CASE WHEN state = 'done' THEN finished_at END) \
             FROM {}.runs GROUP BY tenant, source ORDER BY tenant, source",
            self.s
        );
        let rows = prepared::query(&self.client().await?, &sql, &[])
            .await
            .map_err(pg_err("sync clocks"))?;
        Ok(rows
            .iter()
            .map(|r| SourceClock {
                tenant: r.get(0),
                source: r.get(1),
                first_run_at: from_ms(r.get(2)),
                last_success_at: r.get::<_, Option<i64>>(3).map(from_ms),
            })
            .collect())
    }
}
