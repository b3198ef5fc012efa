//! What a run's last staging load records beside the keys, whether a merge or a numbered
//! run's last step (decision 0025) loaded them: the staged shape and fresh planner statistics.

use crate::errors::StoreError;
use crate::ports::Run;
use crate::postgres::pool::pg_err;
use tokio_postgres::Transaction;

/// Staging rows changed by one merge after which its statistics are refreshed at once.
const REANALYZE_AFTER: u64 = 100_000;

/// Records the shape the run staged, for the next run's drift check.
pub(super) async fn record_staged_schema(tx: &Transaction<'_>, s: &str, run: &Run) -> Result<(), StoreError> {
    let Some(schema) = &run.schema else {
        return Ok(());
    };
    let schema = serde_json::to_string(schema).expect("schemas serialise");
    tx.execute(
        &format!(
            "INSERT INTO {s}.staged_schemas (tenant, source, schema_json, run_id) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant, source) DO UPDATE SET schema_json = EXCLUDED.schema_json, run_id = EXCLUDED.run_id"
        ),
        &[&run.tenant, &run.source, &schema, &run.id],
    )
    .await
    .map_err(pg_err("record staged schema"))?;
    Ok(())
}

/// The staging partition of source `sid` to `ANALYZE` after the commit, when `changed` rows
/// make its statistics stale.
///
/// Planner statistics lag a large merge (autovacuum analyses a minute later, if at all
/// under load): with staging believed empty, the next run's delete join scans every
/// staged key of the source (1,000,000 probes instead of a few thousand). Only the
/// source's partition: analysing the parent would sample every partition. It is named
/// here, inside the transaction, where the look-up is one probe of the primary key: after
/// the commit an unanalysed partition was read from its start, through any other
/// source's rows sharing it (~250 ms of server time per 1,000,000-row merge).
pub(super) async fn analysed_partition(
    tx: &Transaction<'_>,
    s: &str,
    sid: i32,
    changed: u64,
) -> Result<Option<String>, StoreError> {
    if changed < REANALYZE_AFTER {
        return Ok(None);
    }
    Ok(tx
        .query_opt(
            &format!("SELECT tableoid::regclass::TEXT FROM {s}.staging_keys WHERE sid = $1 LIMIT 1"),
            &[&sid],
        )
        .await
        .map_err(pg_err("find staging partition"))?
        .map(|r| r.get(0)))
}
