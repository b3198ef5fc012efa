//! Forced resync: the data source's next run — opened now — re-sends the current state of every
//! key in a range (or all keys): staging forgets their hashes, so each key the source has is sent
//! as an upsert and each key staging has but the source lacks as a delete.

use crate::ctx::Ctx;
use crate::domain::job::Job;
use crate::domain::json::key_value_from_json;
use crate::domain::key::encode_key;
use crate::domain::schema::TableSchema;
use crate::errors::StageError;
use crate::ports::KeyRange;
use crate::stages::cursor::Cursor;

/// What a resync did.
#[derive(Debug, Default)]
pub struct Resync {
    /// Keys whose state will be re-sent.
    pub keys: u64,
    /// The run opened to send them (none if one is active: then its successor sends them).
    pub run: Option<String>,
}

/// Parses one side of `A..B`: a JSON array of key values, or one value (JSON, else bare text).
fn bound(text: &str, schema: &TableSchema) -> Result<Option<Vec<u8>>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let json: serde_json::Value =
        serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned()));
    let parts = match json {
        serde_json::Value::Array(a) => a,
        one => vec![one],
    };
    let key_idx = schema.key_indexes();
    if parts.is_empty() || parts.len() > key_idx.len() {
        return Err(format!(
            "`{text}` has {} values; the key has {} columns",
            parts.len(),
            key_idx.len()
        ));
    }
    let values = parts
        .iter()
        .zip(&key_idx)
        .map(|(v, &i)| {
            let c = &schema.columns[i];
            key_value_from_json(v, c.ty).ok_or_else(|| format!("`{v}` is not a {:?} for key column `{}`", c.ty, c.name))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut key = Vec::new();
    encode_key(
        &mut key,
        &values.iter().collect::<Vec<_>>(),
        &schema.key[..values.len()],
    )
    .map_err(|e| e.to_string())?;
    Ok(Some(key))
}

/// Parses `A..B` (both inclusive; either side may be empty) into a key-byte range.
pub fn parse_range(text: &str, schema: &TableSchema) -> Result<KeyRange, String> {
    let (a, b) = text
        .split_once("..")
        .ok_or_else(|| format!("key range `{text}`: expected A..B"))?;
    // Keys are prefix-free, so every key ≤ B (or starting with a partial B) sorts below B + 0xFF.
    let hi = bound(b, schema)?.map(|mut k| {
        k.push(0xFF);
        k
    });
    Ok(KeyRange {
        lo: bound(a, schema)?,
        hi,
    })
}

/// Resyncs one data source (`range`: only those keys) and opens the run that sends it.
pub async fn resync(
    ctx: &Ctx,
    tenant: &str,
    source: &str,
    range: Option<&str>,
) -> Result<(Resync, Vec<Job>), StageError> {
    let (version, config) = ctx
        .latest_config()
        .await?
        .ok_or_else(|| StageError::NotFound("no configuration applied".into()))?;
    config.source(tenant, source, version)?;
    let schema = ctx.store.staged_schema(tenant, source).await?.ok_or_else(|| {
        StageError::NotFound(format!(
            "tenant `{tenant}`, data source `{source}` has never synced: onboard it first"
        ))
    })?;
    let range = match range {
        Some(r) => parse_range(r, &schema).map_err(StageError::NotFound)?,
        None => KeyRange::default(),
    };
    let mut out = Resync::default();
    let mut staged = Cursor::new(ctx.store.staging(tenant, source, &range));
    let mut keys = Vec::new();
    while let Some((key, _)) = staged.next().await? {
        keys.push(key);
        if keys.len() == 5_000 {
            out.keys += ctx
                .store
                .invalidate_staging(tenant, source, std::mem::take(&mut keys))
                .await?;
        }
    }
    out.keys += ctx.store.invalidate_staging(tenant, source, keys).await?;
    let (run, jobs) = super::repair::open_run_now(ctx.store.as_ref(), tenant, source, version).await?;
    out.run = run;
    Ok((out, jobs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::schema::{Column, ColumnType};

    #[test]
    fn ranges_parse_inclusively_and_say_what_is_wrong() {
        let schema = TableSchema {
            columns: vec![Column {
                name: "id".into(),
                ty: ColumnType::Int,
                scale: None,
                native: "INTEGER".into(),
            }],
            key: vec!["id".into()],
            ..Default::default()
        };
        let r = parse_range("40..70", &schema).unwrap();
        let key = |i: i64| {
            let mut k = Vec::new();
            encode_key(&mut k, &[&crate::domain::value::Value::Int(i)], &schema.key).unwrap();
            k
        };
        let within = |k: Vec<u8>| r.lo.as_ref().is_none_or(|lo| &k >= lo) && r.hi.as_ref().is_none_or(|hi| &k < hi);
        assert!(within(key(40)) && within(key(70)) && !within(key(39)) && !within(key(71)));
        assert_eq!(parse_range("..", &schema).unwrap(), KeyRange::default());
        assert!(parse_range("x..y", &schema).unwrap_err().contains("not a Int"));
        assert!(parse_range("5", &schema).unwrap_err().contains("expected A..B"));
    }
}
