//! The store's schema, created and migrated by the program (`PRAGMA user_version` counts steps).

use rusqlite::Connection;

/// Migrations in order; each runs once, in its own transaction.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE config_versions (
    version    INTEGER PRIMARY KEY AUTOINCREMENT,
    toml       TEXT NOT NULL,
    origin     TEXT NOT NULL,
    applied_at INTEGER NOT NULL
);
CREATE TABLE runs (
    id                TEXT PRIMARY KEY,
    tenant            TEXT NOT NULL,
    source            TEXT NOT NULL,
    kind              TEXT NOT NULL,
    state             TEXT NOT NULL,
    config_version    INTEGER NOT NULL,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    finished_at       INTEGER,
    chunks_total      INTEGER NOT NULL DEFAULT 0,
    chunks_done       INTEGER NOT NULL DEFAULT 0,
    rows_read         INTEGER NOT NULL DEFAULT 0,
    inserts           INTEGER NOT NULL DEFAULT 0,
    updates           INTEGER NOT NULL DEFAULT 0,
    deletes           INTEGER NOT NULL DEFAULT 0,
    batches_total     INTEGER NOT NULL DEFAULT 0,
    batches_delivered INTEGER NOT NULL DEFAULT 0,
    bytes             INTEGER NOT NULL DEFAULT 0,
    schema_json       TEXT,
    force_all         INTEGER NOT NULL DEFAULT 0,
    last_error        TEXT
);
-- Runs of one data source never overlap: at most one run that is not done.
CREATE UNIQUE INDEX runs_one_active ON runs(tenant, source) WHERE state <> 'done';
CREATE INDEX runs_by_source ON runs(tenant, source, created_at);
CREATE TABLE chunks (
    run_id    TEXT NOT NULL,
    chunk_no  INTEGER NOT NULL,
    lo        BLOB,
    hi        BLOB,
    done      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, chunk_no)
) WITHOUT ROWID;
CREATE TABLE staging (
    tenant TEXT NOT NULL,
    source TEXT NOT NULL,
    key    BLOB NOT NULL,
    hash   BLOB NOT NULL,
    PRIMARY KEY (tenant, source, key)
) WITHOUT ROWID;
CREATE TABLE staged_schemas (
    tenant      TEXT NOT NULL,
    source      TEXT NOT NULL,
    schema_json TEXT NOT NULL,
    run_id      TEXT NOT NULL,
    PRIMARY KEY (tenant, source)
);
-- A run's delta: one row per changed key (a run holds each key at most once). After merge these
-- are the run's change records; their sequence number is their rank in key order.
CREATE TABLE deltas (
    run_id   TEXT NOT NULL,
    key      BLOB NOT NULL,
    chunk_no INTEGER NOT NULL,
    op       INTEGER NOT NULL,
    hash     BLOB,
    payload  TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
) WITHOUT ROWID;
CREATE TABLE batches (
    id           TEXT PRIMARY KEY,
    run_id       TEXT NOT NULL,
    seq_first    INTEGER NOT NULL,
    seq_last     INTEGER NOT NULL,
    rows         INTEGER NOT NULL,
    body         BLOB,
    delivered_at INTEGER
);
CREATE INDEX batches_by_run ON batches(run_id, seq_first);
CREATE TABLE deliveries (
    id          INTEGER PRIMARY KEY,
    run_id      TEXT NOT NULL,
    batch_id    TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    status      INTEGER,
    detail      TEXT NOT NULL,
    request_id  TEXT
);
CREATE INDEX deliveries_by_batch ON deliveries(batch_id);
CREATE TABLE dead_letters (
    id          INTEGER PRIMARY KEY,
    message_id  TEXT UNIQUE,
    tenant      TEXT,
    source      TEXT,
    run_id      TEXT,
    stage       TEXT NOT NULL,
    message     TEXT NOT NULL,
    error       TEXT NOT NULL,
    attempts    INTEGER NOT NULL,
    state       TEXT NOT NULL DEFAULT 'open',
    created_at  INTEGER NOT NULL,
    resolved_at INTEGER
);
CREATE INDEX dead_letters_open ON dead_letters(run_id) WHERE state = 'open';
-- The table queue: a message is visible when visible_at has passed and no live lease holds it.
CREATE TABLE jobs (
    id          INTEGER PRIMARY KEY,
    stage       TEXT NOT NULL,
    body        TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    enqueued_at INTEGER NOT NULL,
    visible_at  INTEGER NOT NULL,
    lease_token TEXT,
    last_error  TEXT
);
CREATE INDEX jobs_visible ON jobs(visible_at);
"#,
    r#"
-- Who resolved a dead letter; abandoned runs no longer hold their data source.
ALTER TABLE dead_letters ADD COLUMN resolved_by TEXT;
DROP INDEX runs_one_active;
CREATE UNIQUE INDEX runs_one_active ON runs(tenant, source) WHERE state NOT IN ('done', 'abandoned');
"#,
    r#"
CREATE TABLE verifications (
    tenant      TEXT NOT NULL,
    source      TEXT NOT NULL,
    at          INTEGER NOT NULL,
    in_sync     INTEGER,
    report_json TEXT NOT NULL,
    PRIMARY KEY (tenant, source)
);
"#,
    r#"
-- Source load and change modes: bytes read per run, the mode a run used, watermark cursors, and
-- slots limiting concurrent queries per source server across every process.
ALTER TABLE runs ADD COLUMN bytes_read INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN diff_mode TEXT;
CREATE TABLE cursors (
    tenant       TEXT NOT NULL,
    source       TEXT NOT NULL,
    cursor_json  TEXT,
    last_full_at INTEGER,
    PRIMARY KEY (tenant, source)
);
CREATE TABLE source_slots (
    server     TEXT NOT NULL,
    holder     TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (server, holder)
);
"#,
    r#"
-- Operator pauses ('' source: the whole tenant) and an audit log of operator actions.
CREATE TABLE pauses (
    tenant    TEXT NOT NULL,
    source    TEXT NOT NULL,
    paused_at INTEGER NOT NULL,
    paused_by TEXT NOT NULL,
    PRIMARY KEY (tenant, source)
);
CREATE TABLE audit_log (
    at      INTEGER NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail  TEXT NOT NULL
);
"#,
    r#"
-- Claim order: interval work (and the timer) before a deep onboarding backlog.
ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
"#,
    r#"
-- Run history: what each stage spent on each run.
CREATE TABLE run_stages (
    run_id   TEXT NOT NULL,
    stage    TEXT NOT NULL,
    jobs     INTEGER NOT NULL,
    failures INTEGER NOT NULL,
    busy_ms  INTEGER NOT NULL,
    first_at INTEGER NOT NULL,
    last_at  INTEGER NOT NULL,
    PRIMARY KEY (run_id, stage)
);
"#,
    r#"
-- Deltas as packed segments of a few thousand changes each (domain::segment): a run writes and
-- reads back hundreds of records instead of one per change. `deltas` stays for runs in flight
-- across the upgrade.
CREATE TABLE delta_segments (
    run_id   TEXT NOT NULL,
    chunk_no INTEGER NOT NULL,
    seg_no   INTEGER NOT NULL,
    rows     INTEGER NOT NULL,
    body     BLOB NOT NULL,
    PRIMARY KEY (run_id, chunk_no, seg_no)
);
"#,
    r#"
-- Claims read the queue in its claim order from an index: without it every claim sorted the
-- whole queue (thousands of jobs during an onboarding).
CREATE INDEX jobs_claim ON jobs (priority DESC, visible_at, id);
"#,
    r#"
-- Each attempt at a chunk gets a number when it resets the chunk; only the latest attempt's
-- segment writes and finish are taken, so a job delivered twice cannot mix two reads' deltas.
ALTER TABLE chunks ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0;
"#,
    r#"
-- When a run's deferred job is due (a retry's backoff, a `Retry-After`, a sync window): until
-- then the run is not taken for stalled.
ALTER TABLE runs ADD COLUMN resumes_at INTEGER;
"#,
    r#"
-- A chunk of a run numbered at commit (decision 0025) commits in steps: the first key its
-- committed steps have not covered, where a later attempt reads on from.
ALTER TABLE chunks ADD COLUMN resume_key BLOB;
"#,
];

/// Brings the schema up to date.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let current: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Another process may have migrated while we waited for the lock.
        let now: usize = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if now <= i {
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i + 1)?;
        }
        tx.commit()?;
    }
    Ok(())
}
