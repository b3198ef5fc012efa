//! The SQL Server store's schema (name configurable), created and migrated by the program under
//! an application lock (`sp_getapplock`) so many workers starting at once migrate exactly once.
//!
//! Times are milliseconds since the epoch in `BIGINT`, as on PostgreSQL. Staging is keyed by a
//! compact integer source id and the key bytes, clustered, so the 900-byte limit of a clustered
//! key leaves 896 bytes for the key itself (decision 0012).

use super::session::{p, Session};
use crate::errors::StoreError;
use crate::mssql::pool::Pool;

/// Longest key staging holds: a clustered index key is at most 900 bytes, 4 go to the source id.
pub const MAX_KEY_BYTES: usize = 896;

/// Identifiers and names compare exactly, whatever the database's default collation (often
/// case-insensitive): `acme` and `Acme` are two tenants, as on PostgreSQL. Every such column is
/// `NVARCHAR`, so the `NVARCHAR` parameters tiberius sends never force a conversion (and a scan).
const EXACT: &str = "COLLATE Latin1_General_100_BIN2";

/// Migrations in order, each a list of statements; `{s}` is the quoted schema, `{bin}` [`EXACT`].
const MIGRATIONS: &[&[&str]] = &[FIRST, CHUNK_ATTEMPTS, RUN_RESUMES_AT, CHUNK_RESUME_KEYS];

/// A chunk of a run numbered at commit (decision 0025) commits in steps: the first key its
/// committed steps have not covered, where a later attempt reads on from.
const CHUNK_RESUME_KEYS: &[&str] = &["ALTER TABLE {s}.chunks ADD resume_key VARBINARY(MAX) NULL"];

/// When a run's deferred job is due (a retry's backoff, a `Retry-After`, a sync window): until
/// then the run is not taken for stalled.
const RUN_RESUMES_AT: &[&str] = &["ALTER TABLE {s}.runs ADD resumes_at BIGINT NULL"];

/// Each attempt at a chunk gets a number when it resets the chunk; only the latest attempt's
/// segment writes and finish are taken, so a job delivered twice cannot mix two reads' deltas.
const CHUNK_ATTEMPTS: &[&str] =
    &["ALTER TABLE {s}.chunks ADD attempt BIGINT NOT NULL CONSTRAINT chunks_attempt_default DEFAULT 0"];

/// The schema as first released.
const FIRST: &[&str] = &[
    "CREATE TABLE {s}.config_versions (
        version    BIGINT IDENTITY(1, 1) NOT NULL PRIMARY KEY,
        toml       NVARCHAR(MAX) NOT NULL,
        origin     NVARCHAR(1000) NOT NULL,
        applied_at BIGINT NOT NULL)",
    "CREATE TABLE {s}.sources (
        sid    INT IDENTITY(1, 1) NOT NULL PRIMARY KEY,
        tenant NVARCHAR(200) {bin} NOT NULL,
        source NVARCHAR(200) {bin} NOT NULL,
        CONSTRAINT sources_by_name UNIQUE (tenant, source))",
    "CREATE TABLE {s}.runs (
        id                NVARCHAR(64) {bin} NOT NULL PRIMARY KEY,
        tenant            NVARCHAR(200) {bin} NOT NULL,
        source            NVARCHAR(200) {bin} NOT NULL,
        kind              NVARCHAR(16) {bin} NOT NULL,
        state             NVARCHAR(16) {bin} NOT NULL,
        config_version    BIGINT NOT NULL,
        created_at        BIGINT NOT NULL,
        updated_at        BIGINT NOT NULL,
        finished_at       BIGINT NULL,
        chunks_total      BIGINT NOT NULL DEFAULT 0,
        chunks_done       BIGINT NOT NULL DEFAULT 0,
        rows_read         BIGINT NOT NULL DEFAULT 0,
        inserts           BIGINT NOT NULL DEFAULT 0,
        updates           BIGINT NOT NULL DEFAULT 0,
        deletes           BIGINT NOT NULL DEFAULT 0,
        batches_total     BIGINT NOT NULL DEFAULT 0,
        batches_delivered BIGINT NOT NULL DEFAULT 0,
        bytes             BIGINT NOT NULL DEFAULT 0,
        schema_json       NVARCHAR(MAX) NULL,
        force_all         BIT NOT NULL DEFAULT 0,
        last_error        NVARCHAR(MAX) NULL,
        bytes_read        BIGINT NOT NULL DEFAULT 0,
        diff_mode         NVARCHAR(MAX) NULL)",
    // Filtered indexes take only simple comparisons joined by AND (no NOT IN).
    "CREATE UNIQUE INDEX runs_one_active ON {s}.runs (tenant, source)
        WHERE state <> 'done' AND state <> 'abandoned'",
    "CREATE INDEX runs_by_source ON {s}.runs (tenant, source, created_at)",
    "CREATE TABLE {s}.chunks (
        run_id   NVARCHAR(64) {bin} NOT NULL,
        chunk_no INT NOT NULL,
        lo       VARBINARY(MAX) NULL,
        hi       VARBINARY(MAX) NULL,
        done     BIT NOT NULL DEFAULT 0,
        CONSTRAINT chunks_pk PRIMARY KEY (run_id, chunk_no))",
    "CREATE TABLE {s}.staging (
        sid  INT NOT NULL,
        k    VARBINARY(896) NOT NULL,
        hash BINARY(16) NOT NULL,
        CONSTRAINT staging_pk PRIMARY KEY (sid, k))",
    "CREATE TABLE {s}.staged_schemas (
        tenant      NVARCHAR(200) {bin} NOT NULL,
        source      NVARCHAR(200) {bin} NOT NULL,
        schema_json NVARCHAR(MAX) NOT NULL,
        run_id      NVARCHAR(64) {bin} NOT NULL,
        CONSTRAINT staged_schemas_pk PRIMARY KEY (tenant, source))",
    "CREATE TABLE {s}.delta_segments (
        run_id   NVARCHAR(64) {bin} NOT NULL,
        chunk_no INT NOT NULL,
        seg_no   INT NOT NULL,
        rows     INT NOT NULL,
        body     VARBINARY(MAX) NOT NULL,
        CONSTRAINT delta_segments_pk PRIMARY KEY (run_id, chunk_no, seg_no))",
    "CREATE TABLE {s}.batches (
        id           NVARCHAR(200) {bin} NOT NULL PRIMARY KEY,
        run_id       NVARCHAR(64) {bin} NOT NULL,
        seq_first    BIGINT NOT NULL,
        seq_last     BIGINT NOT NULL,
        rows         BIGINT NOT NULL,
        body         VARBINARY(MAX) NULL,
        delivered_at BIGINT NULL)",
    "CREATE INDEX batches_by_run ON {s}.batches (run_id, seq_first)",
    "CREATE TABLE {s}.deliveries (
        id          BIGINT IDENTITY(1, 1) NOT NULL PRIMARY KEY,
        run_id      NVARCHAR(64) {bin} NOT NULL,
        batch_id    NVARCHAR(200) {bin} NOT NULL,
        attempt     INT NOT NULL,
        at          BIGINT NOT NULL,
        duration_ms BIGINT NOT NULL,
        status      INT NULL,
        detail      NVARCHAR(MAX) NOT NULL,
        request_id  NVARCHAR(400) NULL)",
    "CREATE INDEX deliveries_by_batch ON {s}.deliveries (batch_id)",
    "CREATE INDEX deliveries_by_run ON {s}.deliveries (run_id)",
    "CREATE TABLE {s}.dead_letters (
        id          BIGINT IDENTITY(1, 1) NOT NULL PRIMARY KEY,
        message_id  NVARCHAR(200) {bin} NULL,
        tenant      NVARCHAR(200) {bin} NULL,
        source      NVARCHAR(200) {bin} NULL,
        run_id      NVARCHAR(64) {bin} NULL,
        stage       NVARCHAR(32) {bin} NOT NULL,
        message     NVARCHAR(MAX) NOT NULL,
        error       NVARCHAR(MAX) NOT NULL,
        attempts    INT NOT NULL,
        state       NVARCHAR(16) {bin} NOT NULL DEFAULT 'open',
        created_at  BIGINT NOT NULL,
        resolved_at BIGINT NULL,
        resolved_by NVARCHAR(400) NULL)",
    // A UNIQUE constraint would admit one NULL only; dead letters of undecodable messages have none.
    "CREATE UNIQUE INDEX dead_letters_by_message ON {s}.dead_letters (message_id) WHERE message_id IS NOT NULL",
    "CREATE INDEX dead_letters_open ON {s}.dead_letters (run_id) WHERE state = 'open'",
    "CREATE TABLE {s}.jobs (
        id          BIGINT IDENTITY(1, 1) NOT NULL PRIMARY KEY,
        stage       NVARCHAR(32) {bin} NOT NULL,
        body        NVARCHAR(MAX) NOT NULL,
        priority    INT NOT NULL DEFAULT 0,
        attempts    INT NOT NULL DEFAULT 0,
        enqueued_at BIGINT NOT NULL,
        visible_at  BIGINT NOT NULL,
        lease_token NVARCHAR(64) {bin} NULL,
        last_error  NVARCHAR(MAX) NULL)",
    "CREATE INDEX jobs_claim ON {s}.jobs (priority DESC, visible_at, id) INCLUDE (stage)",
    "CREATE INDEX jobs_by_stage ON {s}.jobs (stage, visible_at)",
    "CREATE TABLE {s}.verifications (
        tenant      NVARCHAR(200) {bin} NOT NULL,
        source      NVARCHAR(200) {bin} NOT NULL,
        at          BIGINT NOT NULL,
        in_sync     BIT NULL,
        report_json NVARCHAR(MAX) NOT NULL,
        CONSTRAINT verifications_pk PRIMARY KEY (tenant, source))",
    "CREATE TABLE {s}.cursors (
        tenant       NVARCHAR(200) {bin} NOT NULL,
        source       NVARCHAR(200) {bin} NOT NULL,
        cursor_json  NVARCHAR(MAX) NULL,
        last_full_at BIGINT NULL,
        CONSTRAINT cursors_pk PRIMARY KEY (tenant, source))",
    "CREATE TABLE {s}.source_slots (
        server     NVARCHAR(200) {bin} NOT NULL,
        holder     NVARCHAR(200) {bin} NOT NULL,
        expires_at BIGINT NOT NULL,
        CONSTRAINT source_slots_pk PRIMARY KEY (server, holder))",
    "CREATE TABLE {s}.pauses (
        tenant    NVARCHAR(200) {bin} NOT NULL,
        source    NVARCHAR(200) {bin} NOT NULL,
        paused_at BIGINT NOT NULL,
        paused_by NVARCHAR(400) NOT NULL,
        CONSTRAINT pauses_pk PRIMARY KEY (tenant, source))",
    "CREATE TABLE {s}.audit_log (
        id      BIGINT IDENTITY(1, 1) NOT NULL PRIMARY KEY,
        at      BIGINT NOT NULL,
        actor   NVARCHAR(400) NOT NULL,
        action  NVARCHAR(200) {bin} NOT NULL,
        subject NVARCHAR(MAX) NOT NULL,
        detail  NVARCHAR(MAX) NOT NULL)",
    "CREATE INDEX audit_log_by_action ON {s}.audit_log (action, at)",
    "CREATE TABLE {s}.run_stages (
        run_id   NVARCHAR(64) {bin} NOT NULL,
        stage    NVARCHAR(32) {bin} NOT NULL,
        jobs     BIGINT NOT NULL,
        failures BIGINT NOT NULL,
        busy_ms  BIGINT NOT NULL,
        first_at BIGINT NOT NULL,
        last_at  BIGINT NOT NULL,
        CONSTRAINT run_stages_pk PRIMARY KEY (run_id, stage))",
];

/// Creates the schema if needed and applies pending migrations, once across all processes.
pub async fn migrate(pool: &Pool, name: &str, s: &str) -> Result<(), StoreError> {
    let mut x = Session::open(pool, "migrate").await?;
    x.begin().await?;
    let got = x
        .row(
            "DECLARE @r INT; EXEC @r = sp_getapplock @Resource = @P1, @LockMode = 'Exclusive', \
             @LockOwner = 'Transaction', @LockTimeout = 120000; SELECT @r",
            vec![p(format!("signals-migrate:{name}"))],
        )
        .await?;
    if got
        .as_ref()
        .map(|r| super::session::int(r, 0))
        .transpose()?
        .unwrap_or(-1)
        < 0
    {
        return Err(StoreError::Db {
            context: "migrate",
            detail: "another process held the migration lock for two minutes".into(),
        });
    }
    x.exec(
        "IF SCHEMA_ID(@P1) IS NULL BEGIN DECLARE @sql NVARCHAR(400) = N'CREATE SCHEMA ' + QUOTENAME(@P1); EXEC (@sql) END",
        vec![p(name.to_owned())],
    )
    .await?;
    x.exec(
        &format!(
            "IF OBJECT_ID(@P1, N'U') IS NULL CREATE TABLE {s}.meta (k NVARCHAR(100) NOT NULL PRIMARY KEY, value BIGINT NOT NULL)"
        ),
        vec![p(format!("{s}.meta"))],
    )
    .await?;
    let current = x
        .row(
            &format!("SELECT value FROM {s}.meta WHERE k = N'schema_version'"),
            vec![],
        )
        .await?
        .map(|r| super::session::int(&r, 0))
        .transpose()?
        .unwrap_or(0);
    for (i, statements) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        for sql in *statements {
            x.exec(&sql.replace("{s}", s).replace("{bin}", EXACT), vec![]).await?;
        }
        x.exec(
            &format!(
                "UPDATE {s}.meta SET value = @P1 WHERE k = N'schema_version'; \
                 IF @@ROWCOUNT = 0 INSERT INTO {s}.meta (k, value) VALUES (N'schema_version', @P1)"
            ),
            vec![p(i as i64 + 1)],
        )
        .await?;
    }
    x.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_is_in_the_schema_and_no_statement_needs_a_batch_of_its_own() {
        for sql in MIGRATIONS.iter().flat_map(|m| m.iter()) {
            let head = sql.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
            assert!(
                head.starts_with("CREATE TABLE {s}.")
                    || head.starts_with("ALTER TABLE {s}.")
                    || head.starts_with("CREATE INDEX")
                    || head.starts_with("CREATE UNIQUE INDEX"),
                "{head}"
            );
            if head.contains("INDEX") {
                assert!(sql.contains(" ON {s}."), "{sql}");
            }
            // `GO` separates batches in tools only; CREATE VIEW/PROCEDURE would need their own.
            assert!(!sql.contains("\nGO") && !sql.contains("CREATE VIEW") && !sql.contains("CREATE PROC"));
            assert!(!sql.contains("NOT IN"), "filtered indexes refuse NOT IN: {sql}");
            assert!(
                !sql.contains(" VARCHAR("),
                "NVARCHAR only, matching the parameters: {sql}"
            );
        }
    }

    #[test]
    fn the_staging_key_fits_a_clustered_index() {
        let staging = FIRST.iter().find(|s| s.contains("{s}.staging (")).unwrap();
        assert!(staging.contains(&format!("VARBINARY({MAX_KEY_BYTES})")));
        assert_eq!(MAX_KEY_BYTES + 4, 900, "SQL Server's clustered key limit");
    }
}
