//! Config versions in SQLite.

use super::{now_ms, SqliteStore};
use crate::errors::StoreError;
use crate::ports::ConfigStore;
use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

#[async_trait]
impl ConfigStore for SqliteStore {
    async fn apply_config(&self, toml: &str, origin: &str) -> Result<(i64, bool), StoreError> {
        let (toml, origin) = (toml.to_owned(), origin.to_owned());
        self.db
            .write("apply config", move |tx| {
                let latest: Option<(i64, String)> = tx
                    .query_row(
                        "SELECT version, toml FROM config_versions ORDER BY version DESC LIMIT 1",
                        [],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                if let Some((v, t)) = latest {
                    if t == toml {
                        return Ok((v, false));
                    }
                }
                tx.execute(
                    "INSERT INTO config_versions (toml, origin, applied_at) VALUES (?1, ?2, ?3)",
                    params![toml, origin, now_ms()],
                )?;
                Ok((tx.last_insert_rowid(), true))
            })
            .await
    }

    async fn latest_config(&self) -> Result<Option<(i64, String)>, StoreError> {
        self.db
            .read("latest config", |c| {
                c.query_row(
                    "SELECT version, toml FROM config_versions ORDER BY version DESC LIMIT 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
            })
            .await
    }

    async fn latest_config_version(&self) -> Result<Option<i64>, StoreError> {
        self.db
            .read("latest config version", |c| {
                c.query_row("SELECT max(version) FROM config_versions", [], |r| r.get(0))
            })
            .await
    }

    async fn config_version(&self, version: i64) -> Result<Option<String>, StoreError> {
        self.db
            .read("config version", move |c| {
                c.query_row("SELECT toml FROM config_versions WHERE version = ?1", [version], |r| {
                    r.get(0)
                })
                .optional()
            })
            .await
    }
}
