//! Config versions in PostgreSQL.

use super::prepared;
use super::{now_ms, PgStore};
use crate::errors::StoreError;
use crate::ports::ConfigStore;
use crate::postgres::pool::pg_err;
use async_trait::async_trait;

#[async_trait]
impl ConfigStore for PgStore {
    async fn apply_config(&self, toml: &str, origin: &str) -> Result<(i64, bool), StoreError> {
        let s = &self.s;
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err("apply config"))?;
        // Serialise appliers so "identical to the latest" is decided once.
        tx.execute(&format!("LOCK TABLE {s}.config_versions IN EXCLUSIVE MODE"), &[])
            .await
            .map_err(pg_err("apply config"))?;
        let latest = tx
            .query_opt(
                &format!("SELECT version, toml FROM {s}.config_versions ORDER BY version DESC LIMIT 1"),
                &[],
            )
            .await
            .map_err(pg_err("apply config"))?;
        if let Some(r) = latest {
            if r.get::<_, String>(1) == toml {
                return Ok((r.get(0), false));
            }
        }
        let v: i64 = tx
            .query_one(
                &format!(
                    "INSERT INTO {s}.config_versions (toml, origin, applied_at) VALUES ($1, $2, $3) RETURNING version"
                ),
                &[&toml, &origin, &now_ms()],
            )
            .await
            .map_err(pg_err("apply config"))?
            .get(0);
        tx.commit().await.map_err(pg_err("apply config"))?;
        self.count(1);
        Ok((v, true))
    }

    async fn latest_config(&self) -> Result<Option<(i64, String)>, StoreError> {
        let sql = format!(
            "SELECT version, toml FROM {}.config_versions ORDER BY version DESC LIMIT 1",
            self.s
        );
        let row = prepared::query_opt(&self.client().await?, &sql, &[])
            .await
            .map_err(pg_err("latest config"))?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    async fn latest_config_version(&self) -> Result<Option<i64>, StoreError> {
        let sql = format!("SELECT max(version) FROM {}.config_versions", self.s);
        let row = prepared::query_one(&self.client().await?, &sql, &[])
            .await
            .map_err(pg_err("latest config version"))?;
        Ok(row.get(0))
    }

    async fn config_version(&self, version: i64) -> Result<Option<String>, StoreError> {
        let sql = format!("SELECT toml FROM {}.config_versions WHERE version = $1", self.s);
        let row = prepared::query_opt(&self.client().await?, &sql, &[&version])
            .await
            .map_err(pg_err("config version"))?;
        Ok(row.map(|r| r.get(0)))
    }
}
