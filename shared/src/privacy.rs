//! Column masking: masked columns are replaced by a salted SHA-256 of their canonical encoding as
//! soon as they are read, so only the masked form is ever hashed, stored or pushed. (Excluded
//! columns never get this far: the source adapters leave them out of every query.)

use crate::domain::encoding::{encode_value, RowHash};
use crate::domain::schema::{ColumnType, TableSchema};
use crate::domain::value::Value;
use crate::errors::SourceError;
use crate::ports::{Batches, KeyRange, SnapshotSource, SourceSpec, TrackedChange};
use async_trait::async_trait;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Masks one value: NULL stays NULL; anything else becomes `sha256:` and 32 hex digits.
pub fn mask(v: &Value, salt: &[u8]) -> Value {
    if *v == Value::Null {
        return Value::Null;
    }
    let mut bytes = salt.to_vec();
    encode_value(&mut bytes, v);
    let digest = Sha256::digest(&bytes);
    Value::Text(format!("sha256:{}", hex::encode(&digest[..16])))
}

/// A source whose masked columns are masked on read.
pub struct MaskedSource {
    inner: Arc<dyn SnapshotSource>,
    columns: Vec<String>,
    salt: Vec<u8>,
}

impl MaskedSource {
    /// Wraps `inner`, masking `columns` with `salt`.
    pub fn new(inner: Arc<dyn SnapshotSource>, columns: Vec<String>, salt: Vec<u8>) -> MaskedSource {
        MaskedSource { inner, columns, salt }
    }

    fn masked_schema(&self, mut schema: TableSchema) -> TableSchema {
        for c in schema.columns.iter_mut().filter(|c| self.columns.contains(&c.name)) {
            c.native = format!("masked {}", c.native);
            c.ty = ColumnType::Text;
            c.scale = None;
        }
        schema.masked = self
            .columns
            .iter()
            .filter(|m| schema.columns.iter().any(|c| &c.name == *m))
            .cloned()
            .collect();
        schema
    }

    /// Reads through the inner source with its own (unmasked) shape and masks every row.
    fn masked_stream<T: Send + 'static>(
        &self,
        spec: &SourceSpec,
        open: impl FnOnce(&dyn SnapshotSource, &SourceSpec, &TableSchema) -> Batches<T, SourceError> + Send + 'static,
        values_of: fn(&mut T) -> Option<&mut Vec<Value>>,
    ) -> Batches<T, SourceError> {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let (inner, spec, cols, salt) = (
            self.inner.clone(),
            spec.clone(),
            self.columns.clone(),
            self.salt.clone(),
        );
        tokio::spawn(async move {
            let raw = match inner.describe(&spec).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let idx: Vec<usize> = raw
                .columns
                .iter()
                .enumerate()
                .filter(|(_, c)| cols.contains(&c.name))
                .map(|(i, _)| i)
                .collect();
            let mut rows = open(inner.as_ref(), &spec, &raw);
            while let Some(batch) = rows.recv().await {
                let batch = batch.map(|mut rows| {
                    for row in rows.iter_mut().filter_map(values_of) {
                        for &i in &idx {
                            row[i] = mask(&row[i], &salt);
                        }
                    }
                    rows
                });
                if tx.send(batch).await.is_err() {
                    return;
                }
            }
        });
        rx
    }
}

#[async_trait]
impl SnapshotSource for MaskedSource {
    async fn describe(&self, spec: &SourceSpec) -> Result<TableSchema, SourceError> {
        Ok(self.masked_schema(self.inner.describe(spec).await?))
    }

    async fn split(
        &self,
        spec: &SourceSpec,
        _schema: &TableSchema,
        chunk_rows: u64,
    ) -> Result<Vec<Vec<u8>>, SourceError> {
        let raw = self.inner.describe(spec).await?; // key columns are never masked
        self.inner.split(spec, &raw, chunk_rows).await
    }

    fn read(&self, spec: &SourceSpec, _schema: &TableSchema, range: &KeyRange) -> Batches<Vec<Value>, SourceError> {
        let range = range.clone();
        self.masked_stream(spec, move |inner, spec, raw| inner.read(spec, raw, &range), |r| Some(r))
    }

    fn read_hashes(
        &self,
        spec: &SourceSpec,
        schema: &TableSchema,
        range: &KeyRange,
    ) -> Batches<(Vec<Value>, RowHash), SourceError> {
        // The server hashes the raw values: a change of a masked column still shows.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let (inner, spec, range, _) = (self.inner.clone(), spec.clone(), range.clone(), schema);
        tokio::spawn(async move {
            match inner.describe(&spec).await {
                Ok(raw) => {
                    let mut rows = inner.read_hashes(&spec, &raw, &range);
                    while let Some(b) = rows.recv().await {
                        if tx.send(b).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                }
            }
        });
        rx
    }

    fn reads_with_hashes(&self) -> bool {
        self.inner.reads_with_hashes()
    }

    fn read_with_hashes(
        &self,
        spec: &SourceSpec,
        _schema: &TableSchema,
        range: &KeyRange,
    ) -> Batches<(Vec<Value>, RowHash), SourceError> {
        // Hashed over the raw values, as `read_hashes` hashes them; the rows are masked.
        let range = range.clone();
        self.masked_stream(
            spec,
            move |inner, spec, raw| inner.read_with_hashes(spec, raw, &range),
            |r| Some(&mut r.0),
        )
    }

    async fn read_keys(
        &self,
        spec: &SourceSpec,
        _schema: &TableSchema,
        keys: &[Vec<Value>],
    ) -> Result<Vec<Vec<Value>>, SourceError> {
        let raw = self.inner.describe(spec).await?;
        let idx: Vec<usize> = raw
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| self.columns.contains(&c.name))
            .map(|(i, _)| i)
            .collect();
        let mut rows = self.inner.read_keys(spec, &raw, keys).await?;
        for row in &mut rows {
            for &i in &idx {
                row[i] = mask(&row[i], &self.salt);
            }
        }
        Ok(rows)
    }

    fn read_since(
        &self,
        spec: &SourceSpec,
        _schema: &TableSchema,
        column: &str,
        from: &Value,
    ) -> Batches<Vec<Value>, SourceError> {
        let (column, from) = (column.to_owned(), from.clone());
        self.masked_stream(
            spec,
            move |inner, spec, raw| inner.read_since(spec, raw, &column, &from),
            |r| Some(r),
        )
    }

    async fn max_of(
        &self,
        spec: &SourceSpec,
        _schema: &TableSchema,
        column: &str,
    ) -> Result<Option<Value>, SourceError> {
        let raw = self.inner.describe(spec).await?;
        self.inner.max_of(spec, &raw, column).await
    }

    async fn change_versions(&self, spec: &SourceSpec) -> Result<(i64, Option<i64>), SourceError> {
        self.inner.change_versions(spec).await
    }

    fn read_changes(
        &self,
        spec: &SourceSpec,
        _schema: &TableSchema,
        version: i64,
    ) -> Batches<TrackedChange, SourceError> {
        // Keys are never masked: a vanished key's values pass as they are.
        self.masked_stream(
            spec,
            move |inner, spec, raw| inner.read_changes(spec, raw, version),
            |c| match c {
                TrackedChange::Row(values) => Some(values),
                TrackedChange::Gone(_) => None,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_are_stable_salted_and_keep_nulls() {
        let a = mask(&Value::Text("person@example.com".into()), b"t1");
        assert_eq!(a, mask(&Value::Text("person@example.com".into()), b"t1"));
        assert_ne!(
            a,
            mask(&Value::Text("person@example.com".into()), b"t2"),
            "salted per tenant"
        );
        let Value::Text(s) = &a else { panic!() };
        assert!(s.starts_with("sha256:") && s.len() == 39 && !s.contains("person"));
        assert_eq!(mask(&Value::Null, b"t1"), Value::Null);
    }
}
