//! The receiver's SQLite database: per-dataset tables, remembered idempotency keys, and a count of
//! how often each (run, sequence number) was applied — a change applied twice under any batch id
//! shows up there.

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde_json::Value;
use std::path::Path;
use std::sync::Mutex;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS idempotency (key TEXT PRIMARY KEY, response TEXT NOT NULL, at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS datasets (
    id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, dataset TEXT NOT NULL, schema_json TEXT NOT NULL,
    UNIQUE (tenant, dataset));
CREATE TABLE IF NOT EXISTS applied (
    tenant TEXT NOT NULL, dataset TEXT NOT NULL, run_id TEXT NOT NULL, seq INTEGER NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (tenant, dataset, run_id, seq)) WITHOUT ROWID;
"#;

/// Why a batch was refused (→ 400) or could not be stored (→ 500).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The request does not follow the protocol.
    #[error("{0}")]
    Invalid(String),
    /// Storage failed.
    #[error("receiver storage failed: {0}")]
    Db(#[from] rusqlite::Error),
}

/// Counts a receiver reports.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ReceiverStats {
    /// Batches applied (replays excluded).
    pub batches: i64,
    /// Changes applied.
    pub changes: i64,
    /// (run, seq) pairs applied more than once.
    pub applied_twice: i64,
}

fn string_field<'x>(name: &str, v: &'x Option<std::borrow::Cow<'_, str>>) -> Result<&'x str, ApplyError> {
    v.as_deref()
        .ok_or_else(|| invalid(format!("missing string field `{name}`")))
}

/// The part of a batch's `schema` the receiver needs.
#[derive(serde::Deserialize)]
struct SchemaKey {
    key: Vec<String>,
}

/// The database behind a receiver.
pub struct ReceiverDb {
    conn: Mutex<Connection>,
}

fn invalid(msg: impl Into<String>) -> ApplyError {
    ApplyError::Invalid(msg.into())
}

/// The row key as text: the JSON array of the key columns' values, in key order.
pub fn key_text<'a>(values: impl IntoIterator<Item = &'a Value>) -> String {
    serde_json::to_string(&values.into_iter().collect::<Vec<_>>()).expect("JSON values serialise")
}

impl ReceiverDb {
    /// Opens or creates the database.
    pub fn open(path: &Path) -> rusqlite::Result<ReceiverDb> {
        let conn = crate::sqlite::db::connect(path, false)?;
        conn.execute_batch(SCHEMA)?;
        Ok(ReceiverDb { conn: Mutex::new(conn) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a batch once per idempotency key. Returns (response body, replayed).
    pub fn apply(&self, idempotency_key: &str, body: &[u8]) -> Result<(String, bool), ApplyError> {
        let batch = super::body::parse(body).map_err(invalid)?;
        let s = string_field;
        if s("protocol", &batch.protocol)? != crate::protocol::PROTOCOL {
            return Err(invalid(format!(
                "unsupported protocol `{}`",
                s("protocol", &batch.protocol)?
            )));
        }
        let (tenant, dataset, run_id) = (
            s("tenant", &batch.tenant)?,
            s("dataset", &batch.dataset)?,
            s("run_id", &batch.run_id)?,
        );
        let schema = batch.schema.ok_or_else(|| invalid("missing `schema`"))?;
        let key_cols: Vec<String> = serde_json::from_str::<SchemaKey>(schema.get())
            .ok()
            .map(|s| s.key)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| invalid("`schema.key` must list the key columns"))?;
        let key_cols: Vec<&str> = key_cols.iter().map(String::as_str).collect();
        let changes = batch
            .changes
            .as_ref()
            .ok_or_else(|| invalid("missing `changes` array"))?;

        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Some(resp) = tx
            .query_row(
                "SELECT response FROM idempotency WHERE key = ?1",
                [idempotency_key],
                |r| r.get::<_, String>(0),
            )
            .optional()?
        {
            return Ok((resp, true));
        }
        let schema_json = schema.get();
        tx.execute(
            "INSERT INTO datasets (tenant, dataset, schema_json) VALUES (?1, ?2, ?3) \
             ON CONFLICT (tenant, dataset) DO UPDATE SET schema_json = excluded.schema_json",
            params![tenant, dataset, schema_json],
        )?;
        let id: i64 = tx.query_row(
            "SELECT id FROM datasets WHERE tenant = ?1 AND dataset = ?2",
            params![tenant, dataset],
            |r| r.get(0),
        )?;
        let table = format!("rows_{id}");
        tx.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {table} (key TEXT PRIMARY KEY, row TEXT NOT NULL, run_id TEXT NOT NULL, seq INTEGER NOT NULL) WITHOUT ROWID"
        ))?;
        {
            let mut upsert = tx.prepare(&format!(
                "INSERT INTO {table} (key, row, run_id, seq) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (key) DO UPDATE SET row = excluded.row, run_id = excluded.run_id, seq = excluded.seq"
            ))?;
            let mut delete = tx.prepare(&format!("DELETE FROM {table} WHERE key = ?1"))?;
            let mut count = tx.prepare(
                "INSERT INTO applied (tenant, dataset, run_id, seq, count) VALUES (?1, ?2, ?3, ?4, 1) \
                 ON CONFLICT DO UPDATE SET count = count + 1",
            )?;
            for (i, c) in changes.iter().enumerate() {
                let seq = c.seq.ok_or_else(|| invalid(format!("change {i}: missing `seq`")))?;
                let op = c.op.as_deref().unwrap_or("");
                let (field, obj) = if op == "delete" { ("key", c.key) } else { ("row", c.row) };
                let need_object = || invalid(format!("change {i} (seq {seq}): `{op}` needs an object `{field}`"));
                let obj = obj.ok_or_else(need_object)?;
                let key_values = super::body::key_values(obj, &key_cols)
                    .map_err(|_| need_object())?
                    .into_iter()
                    .zip(&key_cols)
                    .map(|(v, k)| v.ok_or_else(|| invalid(format!("change {i} (seq {seq}): key column `{k}` missing"))))
                    .collect::<Result<Vec<_>, _>>()?;
                let key = key_text(&key_values);
                match op {
                    "insert" | "update" => {
                        upsert.execute(params![key, obj.get(), run_id, seq as i64])?;
                    }
                    "delete" => {
                        delete.execute([&key])?;
                    }
                    other => return Err(invalid(format!("change {i} (seq {seq}): unknown op `{other}`"))),
                }
                count.execute(params![tenant, dataset, run_id, seq as i64])?;
            }
        }
        let resp = super::body::ack(&batch);
        tx.execute(
            "INSERT INTO idempotency (key, response, at) VALUES (?1, ?2, ?3)",
            params![idempotency_key, resp, chrono::Utc::now().timestamp_millis()],
        )?;
        tx.commit()?;
        Ok((resp, false))
    }

    /// Batches, changes, and (run, seq) pairs applied more than once.
    pub fn stats(&self) -> rusqlite::Result<ReceiverStats> {
        self.lock().query_row(
            "SELECT (SELECT COUNT(*) FROM idempotency), COALESCE(SUM(count), 0), COUNT(*) FILTER (WHERE count > 1) FROM applied",
            [],
            |r| Ok(ReceiverStats { batches: r.get(0)?, changes: r.get(1)?, applied_twice: r.get(2)? }),
        )
    }

    /// Reconciliation checksums of a dataset (docs/push-protocol.md §Reconciliation).
    pub fn checksums(
        &self,
        req: &crate::protocol::ChecksumRequest,
    ) -> rusqlite::Result<crate::protocol::ChecksumResponse> {
        use crate::domain::checksum::{bucket_of, row_checksum, Bucket};
        let n = req.buckets.clamp(1, 1 << 20);
        let mut buckets = vec![Bucket::default(); n as usize];
        let mut rows_of_detail = Vec::new();
        let rows = self.rows(&req.tenant, &req.dataset)?;
        for (key, row) in &rows {
            let b = bucket_of(key, n);
            let Ok(value) = serde_json::from_str::<Value>(row) else {
                continue;
            };
            let h = row_checksum(&value);
            buckets[b as usize].add(h);
            if req.detail.contains(&b) {
                let key = serde_json::from_str(key).unwrap_or_default();
                rows_of_detail.push(crate::protocol::ChecksumRow {
                    key,
                    hash: format!("{h:032x}"),
                });
            }
        }
        Ok(crate::protocol::ChecksumResponse {
            rows: rows.len() as u64,
            buckets,
            rows_of_detail,
        })
    }

    /// Drops every dataset of a tenant (offboarding). Returns how many.
    pub fn drop_tenant(&self, tenant: &str) -> rusqlite::Result<usize> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let ids: Vec<i64> = {
            let mut stmt = tx.prepare("SELECT id FROM datasets WHERE tenant = ?1")?;
            let rows = stmt.query_map([tenant], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for id in &ids {
            tx.execute_batch(&format!("DROP TABLE IF EXISTS rows_{id}"))?;
        }
        tx.execute("DELETE FROM datasets WHERE tenant = ?1", [tenant])?;
        tx.execute("DELETE FROM applied WHERE tenant = ?1", [tenant])?;
        tx.commit()?;
        Ok(ids.len())
    }

    /// Changes a stored row behind the pipeline's back (tests of drift detection).
    pub fn tamper(&self, tenant: &str, dataset: &str, key_text: &str, row: Option<&str>) -> rusqlite::Result<usize> {
        let conn = self.lock();
        let id: i64 = conn.query_row(
            "SELECT id FROM datasets WHERE tenant = ?1 AND dataset = ?2",
            params![tenant, dataset],
            |r| r.get(0),
        )?;
        match row {
            Some(row) => conn.execute(
                &format!("INSERT INTO rows_{id} (key, row, run_id, seq) VALUES (?1, ?2, 'tamper', 0) ON CONFLICT (key) DO UPDATE SET row = excluded.row"),
                params![key_text, row],
            ),
            None => conn.execute(&format!("DELETE FROM rows_{id} WHERE key = ?1"), [key_text]),
        }
    }

    /// Every row of a dataset as (key text, row JSON); empty if the dataset never arrived.
    pub fn rows(&self, tenant: &str, dataset: &str) -> rusqlite::Result<Vec<(String, String)>> {
        let conn = self.lock();
        let id: Option<i64> = conn
            .query_row(
                "SELECT id FROM datasets WHERE tenant = ?1 AND dataset = ?2",
                params![tenant, dataset],
                |r| r.get(0),
            )
            .optional()?;
        let Some(id) = id else { return Ok(Vec::new()) };
        let mut stmt = conn.prepare(&format!("SELECT key, row FROM rows_{id}"))?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    }
}
