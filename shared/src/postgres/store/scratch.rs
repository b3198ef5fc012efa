//! A whole-table run's delta segments in a table of its own (decision 0016). Deleting a run's
//! segments row by row when it is done writes about as much WAL as writing them did — a full-page
//! image of every page touched after a checkpoint, ~250 MB per 1,000,000-row initial sync — so a
//! run that re-sends a whole table writes them into a table that is dropped instead.
//!
//! The table inherits `delta_segments`: a worker of an earlier build, still running during a
//! rollout, reads, writes and deletes a run's segments through the shared table by name and
//! sees these rows too, so it neither misses nor repeats a change. This build reads and deletes
//! through the run's table and `ONLY` the shared one, never through the whole inheritance tree:
//! that would lock every other run's table and queue behind a drop.

use crate::errors::StoreError;
use crate::postgres::pool::pg_err;
use tokio_postgres::GenericClient;

/// Prefix of the tables' names; the run id follows.
const PREFIX: &str = "delta_segments_";

/// PostgreSQL's identifier limit, in bytes.
const MAX_IDENT: usize = 63;

/// The run's own segments table, quoted and schema-qualified, if its id can name one.
pub(super) fn table(s: &str, run_id: &str) -> Option<String> {
    let fits = PREFIX.len() + run_id.len() <= MAX_IDENT;
    let plain = run_id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    (fits && plain && !run_id.is_empty()).then(|| format!("{s}.\"{PREFIX}{run_id}\""))
}

/// Where a run's segments live, as the plan decided.
pub(super) enum Segments {
    /// Only the shared table.
    Shared,
    /// The run's own table (quoted), and the shared table for rows an earlier build wrote.
    Own(String),
}

impl Segments {
    /// Looks up the plan's decision.
    pub(super) async fn of(c: &impl GenericClient, s: &str, run_id: &str) -> Result<Segments, StoreError> {
        let own = c
            .query_opt(&format!("SELECT own_segments FROM {s}.runs WHERE id = $1"), &[&run_id])
            .await
            .map_err(pg_err("find segments"))?
            .is_some_and(|r| r.get(0));
        Ok(match table(s, run_id) {
            Some(t) if own => Segments::Own(t),
            _ => Segments::Shared,
        })
    }

    /// The table a new segment goes into.
    pub(super) fn insert_into(&self, s: &str) -> String {
        match self {
            Segments::Shared => format!("{s}.delta_segments"),
            Segments::Own(t) => t.clone(),
        }
    }

    /// `(chunk_no, seg_no, body)` of the run's segments (`$1` is the run id), unordered.
    pub(super) fn select(&self, s: &str) -> String {
        let shared = format!("SELECT chunk_no, seg_no, body FROM ONLY {s}.delta_segments WHERE run_id = $1");
        match self {
            Segments::Shared => shared,
            // `run_id = $1` lets the table's key give the order: the union is merged, not sorted.
            Segments::Own(t) => format!("SELECT chunk_no, seg_no, body FROM {t} WHERE run_id = $1 UNION ALL {shared}"),
        }
    }

    /// Statements deleting the rows of the run (`$1`) that match `cond` (which may use `$2`…).
    pub(super) fn delete(&self, s: &str, cond: &str) -> Vec<String> {
        let mut sql = vec![format!("DELETE FROM ONLY {s}.delta_segments WHERE run_id = $1{cond}")];
        if let Segments::Own(t) = self {
            sql.push(format!("DELETE FROM {t} WHERE run_id = $1{cond}"));
        }
        sql
    }
}

/// Creates the run's table, inside the plan's transaction; false when its id cannot name one.
pub(super) async fn create(c: &impl GenericClient, s: &str, run_id: &str) -> Result<bool, StoreError> {
    let Some(t) = table(s, run_id) else {
        return Ok(false);
    };
    let err = pg_err("create run segments");
    // The CHECK lets an earlier build's statements on the shared table skip this one at plan
    // time; the id is plain (see `table`), so it can be written as a literal.
    c.batch_execute(&format!(
        "CREATE TABLE {t} (CHECK (run_id = '{run_id}')) INHERITS ({s}.delta_segments); \
         ALTER TABLE {t} ADD PRIMARY KEY (run_id, chunk_no, seg_no); \
         ALTER TABLE {t} ALTER COLUMN body SET STORAGE EXTERNAL; \
         UPDATE {s}.runs SET own_segments = TRUE WHERE id = '{run_id}'"
    ))
    .await
    .map_err(err)?;
    Ok(true)
}

/// Removes a finished run's segments: its rows in the shared table, and its own table if it has
/// one (dropped, not emptied: the point of having it).
pub(super) async fn drop_segments(c: &impl GenericClient, s: &str, run_id: &str) -> Result<(), StoreError> {
    let err = pg_err("drop run segments");
    c.execute(
        &format!("DELETE FROM ONLY {s}.delta_segments WHERE run_id = $1"),
        &[&run_id],
    )
    .await
    .map_err(&err)?;
    if let Segments::Own(t) = Segments::of(c, s, run_id).await? {
        c.batch_execute(&format!("DROP TABLE IF EXISTS {t}"))
            .await
            .map_err(&err)?;
    }
    Ok(())
}

/// Drops the segment tables of these runs (those that have one).
pub(super) async fn drop_tables(c: &impl GenericClient, s: &str, run_ids: &[String]) -> Result<(), StoreError> {
    let err = pg_err("drop run segments");
    for t in run_ids.iter().filter_map(|id| table(s, id)) {
        c.batch_execute(&format!("DROP TABLE IF EXISTS {t}"))
            .await
            .map_err(&err)?;
    }
    Ok(())
}

/// Runs whose segment tables outlived them: finished by an earlier build (which deletes the
/// rows but knows nothing of the table), or pruned since.
pub(super) async fn orphans(c: &impl GenericClient, s: &str) -> Result<Vec<String>, StoreError> {
    // `s` is a validated, quoted identifier: it holds no single quote.
    let rows = c
        .query(
            &format!(
                "SELECT substr(k.relname, {start}) FROM pg_inherits i JOIN pg_class k ON k.oid = i.inhrelid \
                 WHERE i.inhparent = '{s}.delta_segments'::regclass \
                 AND NOT EXISTS (SELECT 1 FROM {s}.runs r WHERE r.id = substr(k.relname, {start}) \
                                 AND r.state NOT IN ('done', 'abandoned'))",
                start = PREFIX.len() + 1
            ),
            &[],
        )
        .await
        .map_err(pg_err("find orphaned run segments"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_ids_short_enough_name_a_table() {
        let s = "\"signals\"";
        assert_eq!(
            table(s, "4f1c0a").as_deref(),
            Some("\"signals\".\"delta_segments_4f1c0a\"")
        );
        assert!(table(s, &"a".repeat(48)).is_some(), "63 bytes with the prefix");
        assert!(table(s, &"a".repeat(49)).is_none(), "past the identifier limit");
        assert!(
            table(s, "x'; DROP TABLE runs; --").is_none(),
            "quotes never reach a literal"
        );
        assert!(table(s, "").is_none());
    }

    #[test]
    fn reads_and_deletes_never_cross_the_inheritance_tree() {
        let own = Segments::Own("\"s\".\"delta_segments_r1\"".into());
        assert!(own.select("\"s\"").contains("FROM ONLY \"s\".delta_segments"));
        assert!(own
            .delete("\"s\"", "")
            .iter()
            .all(|d| !d.contains("FROM \"s\".delta_segments ")));
        assert_eq!(own.insert_into("\"s\""), "\"s\".\"delta_segments_r1\"");
        assert_eq!(Segments::Shared.delete("\"s\"", " AND chunk_no = $2").len(), 1);
    }
}
