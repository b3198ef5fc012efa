//! Config versions in SQL Server.

use super::session::{int, p, text};
use super::{now_ms, MssqlStore};
use crate::errors::StoreError;
use crate::ports::ConfigStore;
use async_trait::async_trait;

#[async_trait]
impl ConfigStore for MssqlStore {
    async fn apply_config(&self, toml: &str, origin: &str) -> Result<(i64, bool), StoreError> {
        let mut x = self.session("apply config").await?;
        x.begin().await?;
        // Serialise appliers so "identical to the latest" is decided once.
        let latest = x
            .row(
                &self.q("SELECT TOP (1) version, toml FROM {s}.config_versions WITH (TABLOCKX, HOLDLOCK) ORDER BY version DESC"),
                vec![],
            )
            .await?;
        if let Some(r) = latest {
            if text(&r, 1)? == toml {
                let v = int(&r, 0)?;
                x.rollback().await?;
                return Ok((v, false));
            }
        }
        let r = x
            .row(
                &self.q(
                    "INSERT INTO {s}.config_versions (toml, origin, applied_at) OUTPUT inserted.version VALUES (@P1, @P2, @P3)",
                ),
                vec![p(toml.to_owned()), p(origin.to_owned()), p(now_ms())],
            )
            .await?;
        let v = r.map(|r| int(&r, 0)).transpose()?.unwrap_or_default();
        x.commit().await?;
        self.count(1);
        Ok((v, true))
    }

    async fn latest_config(&self) -> Result<Option<(i64, String)>, StoreError> {
        let mut x = self.session("latest config").await?;
        let r = x
            .row(
                &self.q("SELECT TOP (1) version, toml FROM {s}.config_versions ORDER BY version DESC"),
                vec![],
            )
            .await?;
        x.done();
        r.map(|r| Ok((int(&r, 0)?, text(&r, 1)?))).transpose()
    }

    async fn latest_config_version(&self) -> Result<Option<i64>, StoreError> {
        let mut x = self.session("latest config version").await?;
        let r = x
            .row(
                &self.q("SELECT TOP (1) version FROM {s}.config_versions ORDER BY version DESC"),
                vec![],
            )
            .await?;
        x.done();
        r.map(|r| int(&r, 0)).transpose()
    }

    async fn config_version(&self, version: i64) -> Result<Option<String>, StoreError> {
        let mut x = self.session("config version").await?;
        let r = x
            .row(
                &self.q("SELECT toml FROM {s}.config_versions WHERE version = @P1"),
                vec![p(version)],
            )
            .await?;
        x.done();
        r.map(|r| text(&r, 0)).transpose()
    }
}
