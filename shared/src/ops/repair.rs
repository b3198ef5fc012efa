//! Repair by forgetting: staging records an impossible hash for exactly the keys whose destination
//! state is in doubt, so the next ordinary run re-sends each one's current source state — an
//! upsert if the source has the row, a delete if it does not — with run ids, sequence numbers and
//! idempotency keys like any other change.

use crate::domain::job::{Job, Task, PRIORITY_INTERVAL};
use crate::domain::json::key_value_from_json;
use crate::domain::key::encode_key;
use crate::domain::schema::TableSchema;
use crate::errors::StoreError;
use crate::ports::{RunKind, Store};

/// Key bytes of the change records in a batch body (rows of inserts/updates, keys of deletes).
pub fn keys_of_body(body: &[u8], schema: &TableSchema) -> Result<Vec<Vec<u8>>, String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("batch body is not JSON: {e}"))?;
    let changes = v
        .get("changes")
        .and_then(|c| c.as_array())
        .ok_or("batch body has no changes")?;
    changes
        .iter()
        .map(|c| {
            let obj = c
                .get("row")
                .or_else(|| c.get("key"))
                .ok_or("a change has neither row nor key")?;
            key_of_object(obj, schema)
        })
        .collect()
}

/// Key bytes of a row or key object in protocol JSON.
pub fn key_of_object(obj: &serde_json::Value, schema: &TableSchema) -> Result<Vec<u8>, String> {
    let values = schema
        .key_indexes()
        .into_iter()
        .map(|i| {
            let c = &schema.columns[i];
            obj.get(&c.name)
                .and_then(|v| key_value_from_json(v, c.ty))
                .ok_or_else(|| format!("key column `{}` is missing or not a {:?}", c.name, c.ty))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut key = Vec::new();
    encode_key(&mut key, &values.iter().collect::<Vec<_>>(), &schema.key).map_err(|e| e.to_string())?;
    Ok(key)
}

/// Opens the data source's next run now, if none is active, and returns its id and plan job
/// (interval priority: a repair is small). With a run active, its successor sends the repair.
pub async fn open_run_now(
    store: &dyn Store,
    tenant: &str,
    source: &str,
    config_version: i64,
) -> Result<(Option<String>, Vec<Job>), StoreError> {
    let Some(run) = store
        .open_run(tenant, source, RunKind::Interval, config_version)
        .await?
    else {
        return Ok((None, Vec::new()));
    };
    let mut plan = Job::new(Task::Plan {
        tenant: tenant.into(),
        source: source.into(),
        run_id: run.id.clone(),
    });
    plan.priority = PRIORITY_INTERVAL;
    plan.traceparent = Some(crate::telemetry::start_run_trace(tenant, source, &run.id, "interval"));
    Ok((Some(run.id), vec![plan]))
}

/// Marks the keys for re-sending by the next run of the data source; returns how many.
pub async fn schedule(store: &dyn Store, tenant: &str, source: &str, keys: Vec<Vec<u8>>) -> Result<u64, StoreError> {
    if keys.is_empty() {
        return Ok(0);
    }
    store.invalidate_staging(tenant, source, keys).await
}
