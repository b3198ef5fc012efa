//! Pauses, the audit log, pruning and purging in SQL Server.

use super::runs::upsert;
use super::session::{int, opt_int, p, text};
use super::{from_ms, now_ms, MssqlStore};
use crate::errors::StoreError;
use crate::ports::{OperatorStore, PruneCutoffs, SourceClock};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// Rows each pruning statement removes at most, so no transaction grows large.
const PRUNE_STEP: u64 = 1_000;

#[async_trait]
impl OperatorStore for MssqlStore {
    async fn set_paused(&self, tenant: &str, source: Option<&str>, paused: bool, by: &str) -> Result<(), StoreError> {
        let source = source.unwrap_or("").to_owned();
        let mut x = self.session("set paused").await?;
        if paused {
            let sql = self.q(&upsert(
                "UPDATE {s}.pauses WITH (UPDLOCK, SERIALIZABLE) SET paused_at = paused_at WHERE tenant = @P1 AND source = @P2",
                "INSERT INTO {s}.pauses (tenant, source, paused_at, paused_by) VALUES (@P1, @P2, @P3, @P4)",
            ));
            x.exec(
                &sql,
                vec![p(tenant.to_owned()), p(source), p(now_ms()), p(by.to_owned())],
            )
            .await?;
        } else {
            let sql = self.q("DELETE FROM {s}.pauses WHERE tenant = @P1 AND source = @P2");
            x.exec(&sql, vec![p(tenant.to_owned()), p(source)]).await?;
        }
        x.done();
        Ok(())
    }

    async fn pauses(&self, tenant: &str) -> Result<Vec<Option<String>>, StoreError> {
        let sql = self.q("SELECT source FROM {s}.pauses WHERE tenant = @P1");
        let mut x = self.session("pauses").await?;
        let rows = x.rows(&sql, vec![p(tenant.to_owned())]).await?;
        x.done();
        rows.iter()
            .map(|r| Ok(Some(text(r, 0)?).filter(|s| !s.is_empty())))
            .collect()
    }

    async fn last_audit(&self, action: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        let sql = self.q("SELECT MAX(at) FROM {s}.audit_log WHERE action = @P1");
        let mut x = self.session("last audit").await?;
        let row = x.row(&sql, vec![p(action.to_owned())]).await?;
        x.done();
        Ok(row.map(|r| opt_int(&r, 0)).transpose()?.flatten().map(from_ms))
    }

    async fn prune(&self, cut: &PruneCutoffs) -> Result<u64, StoreError> {
        let old_runs = "SELECT r.id FROM {s}.runs r WHERE r.state IN ('done', 'abandoned') AND r.finished_at < @P1 \
             AND r.created_at < (SELECT MAX(x.created_at) FROM {s}.runs x WHERE x.tenant = r.tenant AND x.source = r.source)";
        let steps = [
            (
                format!("DELETE TOP (1000) FROM {{s}}.deliveries WHERE run_id IN ({old_runs})"),
                cut.runs,
            ),
            (
                format!("DELETE TOP (1000) FROM {{s}}.batches WHERE run_id IN ({old_runs})"),
                cut.runs,
            ),
            (
                format!(
                    "DELETE TOP (1000) FROM {{s}}.runs WHERE id IN ({old_runs} \
                     AND NOT EXISTS (SELECT 1 FROM {{s}}.batches b WHERE b.run_id = r.id))"
                ),
                cut.runs,
            ),
            (
                "DELETE TOP (1000) FROM {s}.run_stages WHERE first_at < @P1 \
                 AND NOT EXISTS (SELECT 1 FROM {s}.runs r WHERE r.id = run_stages.run_id)"
                    .to_owned(),
                cut.runs,
            ),
            (
                "DELETE TOP (1000) FROM {s}.deliveries WHERE at < @P1".to_owned(),
                cut.ledger,
            ),
            (
                "UPDATE TOP (1000) {s}.batches SET body = NULL WHERE delivered_at < @P1 AND body IS NOT NULL"
                    .to_owned(),
                cut.bodies,
            ),
            (
                "DELETE TOP (1000) FROM {s}.dead_letters WHERE state <> 'open' AND resolved_at < @P1".to_owned(),
                cut.dead_letters,
            ),
        ];
        let mut x = self.session("prune").await?;
        let mut total = 0;
        for (sql, cutoff) in steps {
            let sql = self.q(&sql);
            loop {
                let n = x.exec(&sql, vec![p(cutoff.timestamp_millis())]).await?;
                total += n;
                if n < PRUNE_STEP {
                    break;
                }
            }
        }
        x.done();
        Ok(total)
    }

    async fn purge_tenant(&self, tenant: &str, keep_history: bool) -> Result<u64, StoreError> {
        let runs = "(SELECT id FROM {s}.runs WHERE tenant = @P1)";
        // The (tenant, source) → id map stays: other processes cache it, and it holds no data.
        let mut sql = vec![
            "DELETE FROM {s}.jobs WHERE CASE WHEN ISJSON(body) = 1 THEN JSON_VALUE(body, '$.tenant') END = @P1"
                .to_owned(),
            "DELETE FROM {s}.staging WHERE sid IN (SELECT sid FROM {s}.sources WHERE tenant = @P1)".to_owned(),
            "DELETE FROM {s}.staged_schemas WHERE tenant = @P1".to_owned(),
            format!("DELETE FROM {{s}}.delta_segments WHERE run_id IN {runs}"),
            format!("DELETE FROM {{s}}.chunks WHERE run_id IN {runs}"),
            "DELETE FROM {s}.cursors WHERE tenant = @P1".to_owned(),
            "DELETE FROM {s}.verifications WHERE tenant = @P1".to_owned(),
            "DELETE FROM {s}.pauses WHERE tenant = @P1".to_owned(),
        ];
        if keep_history {
            sql.push(format!("UPDATE {{s}}.batches SET body = NULL WHERE run_id IN {runs}"));
        } else {
            sql.push(format!("DELETE FROM {{s}}.deliveries WHERE run_id IN {runs}"));
            sql.push(format!("DELETE FROM {{s}}.batches WHERE run_id IN {runs}"));
            sql.push("DELETE FROM {s}.dead_letters WHERE tenant = @P1".to_owned());
            sql.push(format!("DELETE FROM {{s}}.run_stages WHERE run_id IN {runs}"));
            sql.push("DELETE FROM {s}.runs WHERE tenant = @P1".to_owned());
        }
        let mut x = self.session("purge tenant").await?;
        x.begin().await?;
        let mut n = 0;
        for q in sql {
            n += x.exec(&self.q(&q), vec![p(tenant.to_owned())]).await?;
        }
        x.commit().await?;
        Ok(n)
    }

    async fn audit(&self, actor: &str, action: &str, subject: &str, detail: &str) -> Result<(), StoreError> {
        let sql =
            self.q("INSERT INTO {s}.audit_log (at, actor, action, subject, detail) VALUES (@P1, @P2, @P3, @P4, @P5)");
        let mut x = self.session("audit").await?;
        x.exec(
            &sql,
            vec![
                p(now_ms()),
                p(actor.to_owned()),
                p(action.to_owned()),
                p(subject.to_owned()),
                p(detail.to_owned()),
            ],
        )
        .await?;
        x.done();
        Ok(())
    }

    async fn sync_clocks(&self) -> Result<Vec<SourceClock>, StoreError> {
        let sql = self.q(
            "SELECT tenant, source, MIN(created_at), MAX(CASE WHEN state = 'done' THEN finished_at END) \
             FROM {s}.runs GROUP BY tenant, source ORDER BY tenant, source",
        );
        let mut x = self.session("sync clocks").await?;
        let rows = x.rows(&sql, vec![]).await?;
        x.done();
        rows.iter()
            .map(|r| {
                Ok(SourceClock {
                    tenant: text(r, 0)?,
                    source: text(r, 1)?,
                    first_run_at: from_ms(int(r, 2)?),
                    last_success_at: opt_int(r, 3)?.map(from_ms),
                })
            })
            .collect()
    }
}
