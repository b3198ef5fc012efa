//! A whole-table run's scratch — delta segments and batch bodies — in tables of its own
//! (decision 0016). Deleting a run's segments and clearing its bodies row by row when it is done
//! wrote about as much WAL as writing them had — a full-page image of every page touched after a
//! checkpoint, ~3 GB per 12-source onboarding — so a run that re-sends a whole table writes them
//! into tables that are dropped instead.
//!
//! Each table inherits the shared one (`delta_segments`, `batches`): a worker of an earlier
//! build, still running during a rollout, reads, writes and deletes a run's rows through the
//! shared table by name and sees these too, so it neither misses nor repeats a change. This build
//! reads and changes a run's rows through its own table plus `ONLY` the shared one, never
//! through the whole inheritance tree: that would lock every other run's tables and queue
//! behind a drop.

use super::prepared::{self, Conn};
use crate::errors::StoreError;
use crate::ports::Run;
use crate::postgres::pool::pg_err;
use deadpool_postgres::Transaction;

/// PostgreSQL's identifier limit, in bytes.
const MAX_IDENT: usize = 63;

/// One kind of scratch a run writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Table {
    /// Delta segments.
    Segments,
    /// Batches with their bodies.
    Batches,
}

impl Table {
    const ALL: [Table; 2] = [Table::Segments, Table::Batches];

    fn shared(self) -> &'static str {
        match self {
            Table::Segments => "delta_segments",
            Table::Batches => "batches",
        }
    }

    /// A run's own table of this kind is named by this prefix and the run id.
    fn prefix(self) -> String {
        format!("{}_", self.shared())
    }

    /// Key of a run's own table, as on the shared one.
    fn key(self) -> &'static str {
        match self {
            Table::Segments => "run_id, chunk_no, seg_no",
            Table::Batches => "id",
        }
    }
}

/// Whether a run id can name its own tables: plain characters (it is also written as a literal)
/// within PostgreSQL's identifier limit with the longest prefix.
fn nameable(run_id: &str) -> bool {
    let plain = run_id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    plain && !run_id.is_empty() && Table::Segments.prefix().len() + run_id.len() <= MAX_IDENT
}

/// Where a run's scratch lives, as its plan decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Scratch {
    /// Only the shared tables.
    Shared,
    /// Tables of its own (named by this run id), and the shared ones for rows an earlier build
    /// wrote for it.
    Own(String),
}

impl Scratch {
    /// Where the run's scratch is now: a finished run's own tables are gone (`retire`), and
    /// the record of its batches is in the shared table.
    pub(super) async fn of(c: &impl Conn, s: &str, run_id: &str) -> Result<Scratch, StoreError> {
        Scratch::look_up(c, s, run_id, "own_scratch AND state NOT IN ('done', 'abandoned')").await
    }

    /// What the plan decided, whatever the run's state.
    async fn planned(c: &impl Conn, s: &str, run_id: &str) -> Result<Scratch, StoreError> {
        Scratch::look_up(c, s, run_id, "own_scratch").await
    }

    async fn look_up(c: &impl Conn, s: &str, run_id: &str, own: &str) -> Result<Scratch, StoreError> {
        let own = prepared::query_opt(c, &format!("SELECT {own} FROM {s}.runs WHERE id = $1"), &[&run_id])
            .await
            .map_err(pg_err("find run scratch"))?
            .is_some_and(|r| r.get(0));
        Ok(if own && nameable(run_id) {
            Scratch::Own(run_id.to_owned())
        } else {
            Scratch::Shared
        })
    }

    /// The run's own table of this kind, quoted and schema-qualified.
    fn own(&self, s: &str, t: Table) -> Option<String> {
        match self {
            Scratch::Shared => None,
            Scratch::Own(id) => Some(format!("{s}.\"{}{id}\"", t.prefix())),
        }
    }

    /// The table new rows of this kind go into.
    pub(super) fn insert_into(&self, s: &str, t: Table) -> String {
        self.own(s, t).unwrap_or_else(|| format!("{s}.{}", t.shared()))
    }

    /// One statement per table holding the run's rows of this kind: `stmt` gets the table to
    /// name (the run's own, `ONLY` the shared one).
    pub(super) fn each(&self, s: &str, t: Table, stmt: impl Fn(&str) -> String) -> Vec<String> {
        let mut sql = vec![stmt(&format!("ONLY {s}.{}", t.shared()))];
        sql.extend(self.own(s, t).map(|own| stmt(&own)));
        sql
    }

    /// `cols` of the run's rows of this kind matching `cond`, from every table holding them.
    pub(super) fn select(&self, s: &str, t: Table, cols: &str, cond: &str) -> String {
        self.each(s, t, |from| format!("SELECT {cols} FROM {from} WHERE {cond}"))
            .join(" UNION ALL ")
    }
}

/// Creates the run's own tables inside the plan's transaction, when its id can name them (it
/// keeps the shared tables otherwise). The segments of a run that finds nothing staged for its
/// data source are not written to the WAL (decision 0018): should the server lose them, staging
/// can be put back as the plan found it and the chunks read again (`rewind_lost_delta`).
pub(super) async fn create(c: &impl Conn, s: &str, run_id: &str, nothing_staged: bool) -> Result<(), StoreError> {
    if !nameable(run_id) {
        return Ok(());
    }
    let at = Scratch::Own(run_id.to_owned());
    let mut sql = String::new();
    for t in Table::ALL {
        // The CHECK lets an earlier build's statements on the shared table skip this one at plan
        // time; the id is plain (`nameable`), so it can be written as a literal. Autovacuum
        // leaves the tables alone: they are only filled and then dropped, and its insert
        // threshold would otherwise scan each of them again every time it grew by a fifth.
        // Bodies stay logged: once one is sent, it is the only record of what was.
        let own = at.insert_into(s, t);
        let unlogged = if nothing_staged && t == Table::Segments {
            "UNLOGGED "
        } else {
            ""
        };
        sql.push_str(&format!(
            "CREATE {unlogged}TABLE {own} (CHECK (run_id = '{run_id}')) INHERITS ({s}.{shared}) \
             WITH (autovacuum_enabled = false, toast.autovacuum_enabled = false); \
             ALTER TABLE {own} ADD PRIMARY KEY ({key}); \
             ALTER TABLE {own} ALTER COLUMN body SET STORAGE EXTERNAL; ",
            shared = t.shared(),
            key = t.key()
        ));
    }
    sql.push_str(&format!("UPDATE {s}.runs SET own_scratch = TRUE WHERE id = '{run_id}'"));
    c.batch_execute(&sql).await.map_err(pg_err("create run scratch"))
}

/// [`crate::ports::StagingStore::rewind_lost_delta`]: a crash or failover leaves a table kept
/// out of the WAL empty, so a run whose unlogged segments no longer hold the changes its chunks
/// counted is put back to reading them. Its segments table is unlogged only if nothing was
/// staged for its data source at plan time (`create`), so a merge already done is undone by
/// emptying the source's staging; the bodies of a cut that stopped part way go too (none was
/// sent: pushes start when the cut is done). The run's row is locked first, so a merge or cut
/// committing at the same time is either seen whole or not at all.
pub(super) async fn rewind_if_lost(tx: Transaction<'_>, s: &str, run: &Run) -> Result<bool, StoreError> {
    let err = pg_err("rewind lost delta");
    let Some(row) = tx
        .query_opt(
            &format!(
                "SELECT state = 'merged', inserts + updates + deletes FROM {s}.runs \
                 WHERE id = $1 AND state IN ('snapshotted', 'merged') FOR UPDATE"
            ),
            &[&run.id],
        )
        .await
        .map_err(&err)?
    else {
        return Ok(false);
    };
    let (merged, counted): (bool, i64) = (row.get(0), row.get(1));
    let at = Scratch::of(&tx, s, &run.id).await?;
    let Some(segments) = at.own(s, Table::Segments) else {
        return Ok(false);
    };
    let unlogged: bool = tx
        .query_one(
            "SELECT COALESCE((SELECT relpersistence = 'u' FROM pg_class WHERE oid = to_regclass($1)), FALSE)",
            &[&segments],
        )
        .await
        .map_err(&err)?
        .get(0);
    if !unlogged {
        return Ok(false);
    }
    let kept: i64 = tx
        .query_one(
            &format!(
                "SELECT COALESCE(SUM(rows), 0)::BIGINT FROM ({}) seg",
                at.select(s, Table::Segments, "rows", "run_id = $1")
            ),
            &[&run.id],
        )
        .await
        .map_err(&err)?
        .get(0);
    if kept == counted {
        return Ok(false);
    }
    tracing::warn!(tenant = %run.tenant, source = %run.source, run = %run.id, counted, kept,
        "the store lost this run's delta (a server restart or failover): reading its chunks again");
    let mut sql: Vec<String> = [Table::Segments, Table::Batches]
        .into_iter()
        .flat_map(|t| at.each(s, t, |from| format!("DELETE FROM {from} WHERE run_id = $1")))
        .collect();
    if merged {
        let source = format!(
            "(SELECT sid FROM {s}.sources r, {s}.runs n WHERE n.id = $1 AND r.tenant = n.tenant AND r.source = n.source)"
        );
        for table in ["staging_keys", "staging_packs"] {
            sql.push(format!("DELETE FROM {s}.{table} WHERE sid = {source}"));
        }
        sql.push(format!("UPDATE {s}.sources SET per_key = 0 WHERE sid = {source}"));
    }
    sql.push(format!("UPDATE {s}.chunks SET done = FALSE WHERE run_id = $1"));
    sql.push(format!(
        "UPDATE {s}.runs SET state = 'snapshotting', chunks_done = 0, rows_read = 0, inserts = 0, updates = 0, \
         deletes = 0, bytes_read = 0, updated_at = {now}, \
         last_error = 'the store lost the delta read so far ({kept} of {counted} changes; a server restart or \
         failover): every chunk is read again' WHERE id = $1",
        now = crate::ports::now_ms()
    ));
    for stmt in sql {
        tx.execute(&stmt, &[&run.id]).await.map_err(&err)?;
    }
    tx.commit().await.map_err(&err)?;
    Ok(true)
}

/// Drops a finished (or abandoned) run's scratch: its chunks, old-style delta rows, and segments
/// and bodies in the shared tables are deleted and cleared, and its own tables, if any, dropped —
/// not emptied: the point of having them — once its batches' delivery record (without bodies)
/// has moved to the shared table, which keeps the run's history.
pub(super) async fn retire(c: &impl Conn, s: &str, run_id: &str) -> Result<(), StoreError> {
    let err = pg_err("drop run scratch");
    for sql in [
        format!("DELETE FROM {s}.chunks WHERE run_id = $1"),
        format!("DELETE FROM {s}.deltas WHERE run_id = $1"),
        format!("DELETE FROM ONLY {s}.delta_segments WHERE run_id = $1"),
        format!("UPDATE ONLY {s}.batches SET body = NULL WHERE run_id = $1 AND body IS NOT NULL"),
    ] {
        c.execute(&sql, &[&run_id]).await.map_err(&err)?;
    }
    let at = Scratch::planned(c, s, run_id).await?;
    drop_own(c, s, &at).await
}

/// [`retire`]'s dropping of own tables for runs known to have them (a tenant forgotten).
pub(super) async fn retire_own(c: &impl Conn, s: &str, run_ids: &[String]) -> Result<(), StoreError> {
    for id in run_ids.iter().filter(|id| nameable(id)) {
        drop_own(c, s, &Scratch::Own(id.clone())).await?;
    }
    Ok(())
}

/// Moves the batches' record out of the run's own tables and drops them; tables already gone
/// (a shared run, a retry) are skipped.
async fn drop_own(c: &impl Conn, s: &str, at: &Scratch) -> Result<(), StoreError> {
    let err = pg_err("drop run scratch");
    let (Some(segments), Some(batches)) = (at.own(s, Table::Segments), at.own(s, Table::Batches)) else {
        return Ok(());
    };
    let exists: Option<String> = c
        .query_one("SELECT to_regclass($1)::TEXT", &[&batches])
        .await
        .map_err(&err)?
        .get(0);
    if exists.is_some() {
        c.execute(
            &format!(
                "INSERT INTO {s}.batches (id, run_id, seq_first, seq_last, rows, body, delivered_at) \
                 SELECT id, run_id, seq_first, seq_last, rows, NULL, delivered_at FROM {batches} \
                 ON CONFLICT (id) DO NOTHING"
            ),
            &[],
        )
        .await
        .map_err(&err)?;
    }
    c.batch_execute(&format!("DROP TABLE IF EXISTS {segments}, {batches}"))
        .await
        .map_err(&err)?;
    Ok(())
}

/// Drops the scratch of runs whose own tables outlived them: finished by an earlier build (which
/// empties the rows but knows nothing of the tables), or forgotten since.
pub(super) async fn drop_orphans(c: &impl Conn, s: &str) -> Result<(), StoreError> {
    // `s` is a validated, quoted identifier: it holds no single quote.
    let mut ids = Vec::new();
    for t in Table::ALL {
        let start = t.prefix().len() + 1;
        let rows = c
            .query(
                &format!(
                    "SELECT substr(k.relname, {start}) FROM pg_inherits i JOIN pg_class k ON k.oid = i.inhrelid \
                     WHERE i.inhparent = '{s}.{shared}'::regclass \
                     AND NOT EXISTS (SELECT 1 FROM {s}.runs r WHERE r.id = substr(k.relname, {start}) \
                                     AND r.state NOT IN ('done', 'abandoned'))",
                    shared = t.shared()
                ),
                &[],
            )
            .await
            .map_err(pg_err("find orphaned run scratch"))?;
        ids.extend(rows.iter().map(|r| r.get::<_, String>(0)));
    }
    ids.sort();
    ids.dedup();
    retire_own(c, s, &ids).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_ids_short_enough_name_tables() {
        assert!(nameable("4f1c0a"));
        assert!(nameable(&"a".repeat(48)), "63 bytes with the longest prefix");
        assert!(!nameable(&"a".repeat(49)), "past the identifier limit");
        assert!(!nameable("x'; DROP TABLE runs; --"), "quotes never reach a literal");
        assert!(!nameable(""));
        let own = Scratch::Own("4f1c0a".into());
        assert_eq!(
            own.insert_into("\"signals\"", Table::Segments),
            "\"signals\".\"delta_segments_4f1c0a\""
        );
        assert_eq!(
            own.insert_into("\"signals\"", Table::Batches),
            "\"signals\".\"batches_4f1c0a\""
        );
        assert_eq!(
            Scratch::Shared.insert_into("\"signals\"", Table::Batches),
            "\"signals\".batches"
        );
    }

    #[test]
    fn reads_and_changes_never_cross_the_inheritance_tree() {
        let own = Scratch::Own("r1".into());
        let select = own.select("\"s\"", Table::Segments, "body", "run_id = $1");
        assert_eq!(
            select,
            "SELECT body FROM ONLY \"s\".delta_segments WHERE run_id = $1 UNION ALL \
             SELECT body FROM \"s\".\"delta_segments_r1\" WHERE run_id = $1"
        );
        let updates = own.each("\"s\"", Table::Batches, |t| format!("UPDATE {t} SET x = 1"));
        assert_eq!(
            updates,
            [
                "UPDATE ONLY \"s\".batches SET x = 1",
                "UPDATE \"s\".\"batches_r1\" SET x = 1"
            ]
        );
        assert_eq!(Scratch::Shared.each("\"s\"", Table::Batches, |t| t.to_owned()).len(), 1);
    }
}
