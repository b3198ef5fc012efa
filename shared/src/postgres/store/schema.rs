//! The PostgreSQL store's schema (name configurable), created and migrated by the program under
//! an advisory lock so many workers starting at once migrate exactly once.

use crate::errors::StoreError;
use deadpool_postgres::Pool;

/// Migrations in order; `{s}` is the quoted schema name.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE {s}.config_versions (
    version    BIGSERIAL PRIMARY KEY,
    toml       TEXT NOT NULL,
    origin     TEXT NOT NULL,
    applied_at BIGINT NOT NULL
);
CREATE TABLE {s}.runs (
    id                TEXT PRIMARY KEY,
    tenant            TEXT NOT NULL,
    source            TEXT NOT NULL,
    kind              TEXT NOT NULL,
    state             TEXT NOT NULL,
    config_version    BIGINT NOT NULL,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    finished_at       BIGINT,
    chunks_total      BIGINT NOT NULL DEFAULT 0,
    chunks_done       BIGINT NOT NULL DEFAULT 0,
    rows_read         BIGINT NOT NULL DEFAULT 0,
    inserts           BIGINT NOT NULL DEFAULT 0,
    updates           BIGINT NOT NULL DEFAULT 0,
    deletes           BIGINT NOT NULL DEFAULT 0,
    batches_total     BIGINT NOT NULL DEFAULT 0,
    batches_delivered BIGINT NOT NULL DEFAULT 0,
    bytes             BIGINT NOT NULL DEFAULT 0,
    schema_json       TEXT,
    force_all         BOOLEAN NOT NULL DEFAULT FALSE,
    last_error        TEXT
);
CREATE UNIQUE INDEX runs_one_active ON {s}.runs (tenant, source) WHERE state <> 'done';
CREATE INDEX runs_by_source ON {s}.runs (tenant, source, created_at);
CREATE TABLE {s}.chunks (
    run_id   TEXT NOT NULL,
    chunk_no INTEGER NOT NULL,
    lo       BYTEA,
    hi       BYTEA,
    done     BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (run_id, chunk_no)
);
CREATE TABLE {s}.staging (
    tenant TEXT NOT NULL,
    source TEXT NOT NULL,
    key    BYTEA NOT NULL,
    hash   BYTEA NOT NULL,
    PRIMARY KEY (tenant, source, key)
);
CREATE TABLE {s}.staged_schemas (
    tenant      TEXT NOT NULL,
    source      TEXT NOT NULL,
    schema_json TEXT NOT NULL,
    run_id      TEXT NOT NULL,
    PRIMARY KEY (tenant, source)
);
CREATE TABLE {s}.deltas (
    run_id   TEXT NOT NULL,
    key      BYTEA NOT NULL,
    chunk_no INTEGER NOT NULL,
    op       SMALLINT NOT NULL,
    hash     BYTEA,
    payload  TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE TABLE {s}.batches (
    id           TEXT PRIMARY KEY,
    run_id       TEXT NOT NULL,
    seq_first    BIGINT NOT NULL,
    seq_last     BIGINT NOT NULL,
    rows         BIGINT NOT NULL,
    body         BYTEA,
    delivered_at BIGINT
);
CREATE INDEX batches_by_run ON {s}.batches (run_id, seq_first);
CREATE TABLE {s}.deliveries (
    id          BIGSERIAL PRIMARY KEY,
    run_id      TEXT NOT NULL,
    batch_id    TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    at          BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    status      INTEGER,
    detail      TEXT NOT NULL,
    request_id  TEXT
);
CREATE INDEX deliveries_by_batch ON {s}.deliveries (batch_id);
CREATE TABLE {s}.dead_letters (
    id          BIGSERIAL PRIMARY KEY,
    message_id  TEXT UNIQUE,
    tenant      TEXT,
    source      TEXT,
    run_id      TEXT,
    stage       TEXT NOT NULL,
    message     TEXT NOT NULL,
    error       TEXT NOT NULL,
    attempts    INTEGER NOT NULL,
    state       TEXT NOT NULL DEFAULT 'open',
    created_at  BIGINT NOT NULL,
    resolved_at BIGINT
);
CREATE INDEX dead_letters_open ON {s}.dead_letters (run_id) WHERE state = 'open';
CREATE TABLE {s}.jobs (
    id          BIGSERIAL PRIMARY KEY,
    stage       TEXT NOT NULL,
    body        TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    enqueued_at BIGINT NOT NULL,
    visible_at  BIGINT NOT NULL,
    lease_token TEXT,
    last_error  TEXT
);
CREATE INDEX jobs_visible ON {s}.jobs (stage, visible_at);
"#,
    r#"
ALTER TABLE {s}.dead_letters ADD COLUMN resolved_by TEXT;
DROP INDEX {s}.runs_one_active;
CREATE UNIQUE INDEX runs_one_active ON {s}.runs (tenant, source) WHERE state NOT IN ('done', 'abandoned');
"#,
    r#"
CREATE TABLE {s}.verifications (
    tenant      TEXT NOT NULL,
    source      TEXT NOT NULL,
    at          BIGINT NOT NULL,
    in_sync     BOOLEAN,
    report_json TEXT NOT NULL,
    PRIMARY KEY (tenant, source)
);
"#,
    r#"
-- Source load and change modes: bytes read per run, the mode a run used, watermark cursors, and
-- slots limiting concurrent queries per source server across every process.
ALTER TABLE {s}.runs ADD COLUMN bytes_read BIGINT NOT NULL DEFAULT 0;
ALTER TABLE {s}.runs ADD COLUMN diff_mode TEXT;
CREATE TABLE {s}.cursors (
    tenant       TEXT NOT NULL,
    source       TEXT NOT NULL,
    cursor_json  TEXT,
    last_full_at BIGINT,
    PRIMARY KEY (tenant, source)
);
CREATE TABLE {s}.source_slots (
    server     TEXT NOT NULL,
    holder     TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (server, holder)
);
"#,
    r#"
-- Operator pauses ('' source: the whole tenant) and an audit log of operator actions.
CREATE TABLE {s}.pauses (
    tenant    TEXT NOT NULL,
    source    TEXT NOT NULL,
    paused_at BIGINT NOT NULL,
    paused_by TEXT NOT NULL,
    PRIMARY KEY (tenant, source)
);
CREATE TABLE {s}.audit_log (
    at      BIGINT NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail  TEXT NOT NULL
);
"#,
    r#"
-- Claim order: interval work (and the timer) before a deep onboarding backlog.
ALTER TABLE {s}.jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
"#,
    r#"
-- Run history: what each stage spent on each run.
CREATE TABLE {s}.run_stages (
    run_id   TEXT NOT NULL,
    stage    TEXT NOT NULL,
    jobs     BIGINT NOT NULL,
    failures BIGINT NOT NULL,
    busy_ms  BIGINT NOT NULL,
    first_at BIGINT NOT NULL,
    last_at  BIGINT NOT NULL,
    PRIMARY KEY (run_id, stage)
);
"#,
    r#"
-- Deltas as packed segments of a few thousand changes each (domain::segment): a run writes and
-- reads back hundreds of records instead of one per change. `deltas` stays for runs in flight
-- across the upgrade. Segments and batch bodies arrive compressed: EXTERNAL keeps PostgreSQL
-- from compressing them again.
CREATE TABLE {s}.delta_segments (
    run_id   TEXT NOT NULL,
    chunk_no INTEGER NOT NULL,
    seg_no   INTEGER NOT NULL,
    rows     INTEGER NOT NULL,
    body     BYTEA NOT NULL,
    PRIMARY KEY (run_id, chunk_no, seg_no)
);
ALTER TABLE {s}.delta_segments ALTER COLUMN body SET STORAGE EXTERNAL;
ALTER TABLE {s}.batches ALTER COLUMN body SET STORAGE EXTERNAL;
"#,
    r#"
-- Claims read the queue in its claim order from an index: without it every claim scanned and
-- sorted the whole queue (thousands of jobs during an onboarding, ~1 ms of server CPU each).
CREATE INDEX jobs_claim ON {s}.jobs (priority DESC, visible_at, id);
"#,
    r#"
-- Staging keyed by one integer per (tenant, data source) and hash-partitioned on it (decision
-- 0013): every staging B-tree comparison had compared two texts before the key, and concurrent
-- initial merges of different sources queued on the one table's extension lock.
CREATE TABLE {s}.sources (
    sid    SERIAL PRIMARY KEY,
    tenant TEXT NOT NULL,
    source TEXT NOT NULL,
    UNIQUE (tenant, source)
);
CREATE TABLE {s}.staging_keys (
    sid  INTEGER NOT NULL,
    key  BYTEA NOT NULL,
    hash BYTEA NOT NULL,
    PRIMARY KEY (sid, key)
) PARTITION BY HASH (sid);
{staging_partitions}
INSERT INTO {s}.sources (tenant, source) SELECT DISTINCT tenant, source FROM {s}.staging;
INSERT INTO {s}.staging_keys (sid, key, hash)
    SELECT so.sid, st.key, st.hash FROM {s}.staging st JOIN {s}.sources so USING (tenant, source);
DROP TABLE {s}.staging;
-- Workers of the previous release, still running during a rollout, keep reading and writing
-- staging by name through this view: reads, `COPY` and deletes work; their upsert
-- (`ON CONFLICT`, which a view cannot take) fails and its job is retried by a new worker. A
-- later release drops the view and its trigger.
CREATE VIEW {s}.staging AS
    SELECT so.tenant, so.source, st.key, st.hash FROM {s}.staging_keys st JOIN {s}.sources so USING (sid);
CREATE FUNCTION {s}.staging_write() RETURNS trigger LANGUAGE plpgsql AS $body$
DECLARE
    id INTEGER;
BEGIN
    IF TG_OP = 'DELETE' THEN
        DELETE FROM {s}.staging_keys
            WHERE sid = (SELECT sid FROM {s}.sources WHERE tenant = OLD.tenant AND source = OLD.source)
              AND key = OLD.key;
        RETURN OLD;
    END IF;
    SELECT sid INTO id FROM {s}.sources WHERE tenant = NEW.tenant AND source = NEW.source;
    IF id IS NULL THEN
        INSERT INTO {s}.sources (tenant, source) VALUES (NEW.tenant, NEW.source) ON CONFLICT DO NOTHING;
        SELECT sid INTO id FROM {s}.sources WHERE tenant = NEW.tenant AND source = NEW.source;
    END IF;
    INSERT INTO {s}.staging_keys (sid, key, hash) VALUES (id, NEW.key, NEW.hash)
        ON CONFLICT (sid, key) DO UPDATE SET hash = EXCLUDED.hash;
    RETURN NEW;
END
$body$;
CREATE TRIGGER staging_write INSTEAD OF INSERT OR DELETE ON {s}.staging
    FOR EACH ROW EXECUTE FUNCTION {s}.staging_write();
"#,
    r#"
-- A run that re-sends a whole table keeps its delta segments and batches in tables of its own,
-- inheriting delta_segments and batches and dropped when the run is done (decision 0016,
-- store::scratch).
ALTER TABLE {s}.runs ADD COLUMN IF NOT EXISTS own_scratch BOOLEAN NOT NULL DEFAULT FALSE;
"#,
    r#"
-- Staging pages keep a tenth free, so an interval merge's new hash for a key is written beside
-- the old one (a heap-only update): no new primary-key entry, so no index page logged and no
-- index growth between vacuums (decision 0017). Full pages get room only as vacuum frees it.
DO $$
DECLARE
    part REGCLASS;
BEGIN
    FOR part IN SELECT inhrelid::REGCLASS FROM pg_inherits WHERE inhparent = '{s}.staging_keys'::REGCLASS LOOP
        EXECUTE format('ALTER TABLE %s SET (fillfactor = {staging_fillfactor})', part);
    END LOOP;
END
$$;
"#,
    r#"
-- Each attempt at a chunk gets a number when it resets the chunk; only the latest attempt's
-- segment writes and finish are taken, so a job delivered twice cannot mix two reads' deltas.
ALTER TABLE {s}.chunks ADD COLUMN IF NOT EXISTS attempt BIGINT NOT NULL DEFAULT 0;
"#,
    r#"
-- When a run's deferred job is due (a retry's backoff, a `Retry-After`, a sync window): until
-- then the run is not taken for stalled.
ALTER TABLE {s}.runs ADD COLUMN IF NOT EXISTS resumes_at BIGINT;
"#,
    r#"
-- A chunk of a run numbered at commit (decision 0025) commits in steps: the first key its
-- committed steps have not covered, where a later attempt reads on from.
ALTER TABLE {s}.chunks ADD COLUMN IF NOT EXISTS resume_key BYTEA;
"#,
    r#"
-- An initial run's steps stage their keys as packs, a row per step (decision 0029); a per-key
-- row overrides a packed entry of its key, and one without a hash deletes it.
CREATE TABLE IF NOT EXISTS {s}.staging_packs (
    sid  INTEGER NOT NULL,
    lo   BYTEA NOT NULL,
    hi   BYTEA NOT NULL,
    n    INTEGER NOT NULL,
    body BYTEA NOT NULL,
    PRIMARY KEY (sid, lo)
);
-- Keys and hashes gain little from compression: stored out of line as they are.
ALTER TABLE {s}.staging_packs ALTER COLUMN body SET STORAGE EXTERNAL;
ALTER TABLE {s}.staging_keys ALTER COLUMN hash DROP NOT NULL;
-- Rows staged per key since the source's packs were written: the merge compacts at half its packs.
ALTER TABLE {s}.sources ADD COLUMN IF NOT EXISTS per_key BIGINT NOT NULL DEFAULT 0;
"#,
];

/// Percent of each staging page filled by inserts and loads; the rest is room for updates.
const STAGING_FILLFACTOR: u32 = 90;

/// Partitions of `staging_keys`: enough that a tenant's dozen data sources mostly load into
/// partitions of their own, few enough that an unpruned statement stays cheap to plan.
const STAGING_PARTITIONS: u32 = 16;

/// A migration's text for one schema: `{s}` quoted, the staging partitions and fill factor written out.
fn expand(sql: &str, s: &str) -> String {
    let partitions = (0..STAGING_PARTITIONS)
        .map(|i| {
            format!(
                "CREATE TABLE {s}.staging_keys_{i} PARTITION OF {s}.staging_keys \
                 FOR VALUES WITH (MODULUS {STAGING_PARTITIONS}, REMAINDER {i});"
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    sql.replace("{staging_partitions}", &partitions)
        .replace("{staging_fillfactor}", &STAGING_FILLFACTOR.to_string())
        .replace("{s}", s)
}

/// Creates the schema if needed and applies pending migrations, once across all processes.
pub async fn migrate(pool: &Pool, schema: &str) -> Result<(), StoreError> {
    let err = |e: tokio_postgres::Error| StoreError::Db {
        context: "migrate",
        detail: e.to_string(),
    };
    let mut client = pool
        .get()
        .await
        .map_err(crate::postgres::pool::pool_err("connect", pool))?;
    let s = crate::domain::ident::quote(schema);
    let tx = client.transaction().await.map_err(err)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1))",
        &[&format!("signals-migrate:{schema}")],
    )
    .await
    .map_err(err)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {s}; CREATE TABLE IF NOT EXISTS {s}.meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL)"
    ))
    .await
    .map_err(err)?;
    let current: i64 = tx
        .query_opt(&format!("SELECT value FROM {s}.meta WHERE key = 'schema_version'"), &[])
        .await
        .map_err(err)?
        .map_or(0, |r| r.get(0));
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.batch_execute(&expand(sql, &s)).await.map_err(err)?;
        tx.execute(
            &format!(
                "INSERT INTO {s}.meta (key, value) VALUES ('schema_version', $1) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
            ),
            &[&(i as i64 + 1)],
        )
        .await
        .map_err(err)?;
    }
    tx.commit().await.map_err(err)
}
