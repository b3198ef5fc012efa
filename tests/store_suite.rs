//! One behaviour suite for every store backend (SQLite, PostgreSQL; SQL Server when it lands):
//! the table queue's leases and attempts, the one-active-run rule, dead-letter identity, tenant
//! isolation, identifiers from config, and fenced attempts at a chunk (stalled runs:
//! `stalled_runs.rs`).

use signals_shared::domain::job::{Job, Stage, Task};
use signals_shared::errors::StoreError;
use signals_shared::ports::{ChunkStats, RunKind};
use signals_tests::{create_items, items_source, Harness};
use std::time::Duration;

fn chunk_job(tenant: &str, run: &str) -> Job {
    Job::new(Task::Chunk {
        tenant: tenant.into(),
        source: "items".into(),
        run_id: run.into(),
        chunk: 0,
    })
}

async fn the_queue_leases_counts_attempts_and_reclaims(h: Harness) {
    let q = &h.store;
    q.enqueue(
        &[Job::new(Task::Tick), chunk_job("t", "r1"), chunk_job("t", "r2")],
        Duration::ZERO,
    )
    .await
    .unwrap();
    assert_eq!(q.depth(&[]).await.unwrap().0, 3);

    let only_snapshot = q.claim(10, Duration::from_secs(30), &[Stage::Snapshot]).await.unwrap();
    assert_eq!(only_snapshot.len(), 2, "stage filter");
    let short = q.claim(10, Duration::from_millis(1500), &[]).await.unwrap();
    assert_eq!(short.len(), 1, "leased messages are invisible");
    assert_eq!(short[0].attempts, 1);
    assert!(q.claim(10, Duration::from_secs(30), &[]).await.unwrap().is_empty());

    // An expired lease makes the message visible again, with its attempt counted.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let again = q.claim(10, Duration::from_secs(30), &[]).await.unwrap();
    assert_eq!((again.len(), again[0].attempts), (1, 2));
    assert_eq!(again[0].body, short[0].body);
    // The first claimer's late ack must not remove the message the second one holds.
    q.ack(&short[0]).await.unwrap();
    assert_eq!(q.depth(&[]).await.unwrap().0, 3);
    q.ack(&again[0]).await.unwrap();
    assert_eq!(q.depth(&[]).await.unwrap().0, 2);

    // Extending keeps a message leased past its original lease.
    let c = &only_snapshot[0];
    // (Generous margins: a loaded CI machine may oversleep.)
    q.extend(c, Duration::from_millis(3000)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    q.extend(c, Duration::from_millis(3000)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let visible = q.claim(10, Duration::from_secs(30), &[]).await.unwrap();
    assert!(visible.iter().all(|v| v.body != c.body), "an extended lease holds");
    q.extend(c, Duration::from_secs(30)).await.unwrap();

    // retry_later hides a message for the delay and keeps the error.
    q.retry_later(&only_snapshot[1], Duration::from_millis(1500), "boom")
        .await
        .unwrap();
    assert!(q.claim(10, Duration::from_secs(30), &[]).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let back = q.claim(10, Duration::from_secs(30), &[]).await.unwrap();
    assert_eq!((back.len(), back[0].attempts), (1, 2));
    let (depth, oldest) = q.depth(&[]).await.unwrap();
    assert_eq!(depth, 2);
    assert!(oldest.is_none(), "nothing visible: every message is leased");
}

async fn one_active_run_per_data_source(h: Harness) {
    let s = &h.store;
    let first = s
        .open_run("t", "items", RunKind::Initial, 1)
        .await
        .unwrap()
        .expect("opens");
    assert!(
        s.open_run("t", "items", RunKind::Interval, 1).await.unwrap().is_none(),
        "no overlap"
    );
    assert!(
        s.open_run("t", "other", RunKind::Initial, 1).await.unwrap().is_some(),
        "other sources are free"
    );
    assert!(
        s.open_run("u", "items", RunKind::Initial, 1).await.unwrap().is_some(),
        "other tenants are free"
    );
    assert!(
        s.run("u", &first.id).await.unwrap().is_none(),
        "runs are scoped by tenant"
    );
    assert_eq!(
        s.run("t", &first.id).await.unwrap().unwrap().display_state(),
        "planning"
    );
}

async fn dead_letters_are_recorded_once_per_message(h: Harness) {
    let job = chunk_job("t", "r9");
    let a = h
        .store
        .dead_letter(Some(&job), &job.encode(), "snapshot", "first", 5)
        .await
        .unwrap();
    let b = h
        .store
        .dead_letter(Some(&job), &job.encode(), "snapshot", "again", 5)
        .await
        .unwrap();
    assert_eq!(a, b);
    let all = h.store.dead_letters(true).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(
        (
            all[0].tenant.as_deref(),
            all[0].run_id.as_deref(),
            all[0].error.as_str()
        ),
        (Some("t"), Some("r9"), "first")
    );
    assert!(h.store.resolve_dead_letter(a, "retried", "test").await.unwrap());
    assert!(
        !h.store.resolve_dead_letter(a, "retried", "test").await.unwrap(),
        "only open ones resolve"
    );
    assert!(h.store.dead_letters(true).await.unwrap().is_empty());
    assert_eq!(h.store.dead_letters(false).await.unwrap().len(), 1);
}

/// Two tenants with the same data source name: neither tenant's jobs can read or change the
/// other's staging, change records or batches.
async fn tenants_never_see_each_others_rows(h: Harness) {
    create_items(&h.src(), 1_200);
    let u_db = h.dir.path().join("u.db");
    let u_conn = rusqlite::Connection::open(&u_db).unwrap();
    create_items(&u_conn, 300);
    u_conn.execute_batch("UPDATE items SET name = 'u'").unwrap();
    let u_source = items_source(1_000).replace("tenants.t.", "tenants.u.");
    let config = h.config(&items_source(1_000))
        + &format!("\n[tenants.u]\ndestination = \"platform\"\n\n[tenants.u.connections.db]\nsqlite_path = \"{}\"\n\n{u_source}", u_db.display());
    h.apply(&config).await;
    h.run_job(Job::new(Task::Onboard {
        tenant: "t".into(),
        reports: vec![],
    }))
    .await;
    let t_run = h.runs().await.remove(0);
    // Tenant u's jobs naming tenant t's run and batches: every stage refuses, nothing changes.
    let batch_id = format!("{}.1-500", t_run.id);
    let forged = [
        Task::Plan {
            tenant: "u".into(),
            source: "items".into(),
            run_id: t_run.id.clone(),
        },
        Task::Chunk {
            tenant: "u".into(),
            source: "items".into(),
            run_id: t_run.id.clone(),
            chunk: 0,
        },
        Task::Merge {
            tenant: "u".into(),
            source: "items".into(),
            run_id: t_run.id.clone(),
        },
        Task::Batch {
            tenant: "u".into(),
            source: "items".into(),
            run_id: t_run.id.clone(),
        },
        Task::Push {
            tenant: "u".into(),
            source: "items".into(),
            run_id: t_run.id.clone(),
            batch_id,
        },
    ];
    h.store.enqueue(&forged.map(Job::new), Duration::ZERO).await.unwrap();
    h.run_until_idle().await;
    let dead = h.store.dead_letters(true).await.unwrap();
    assert_eq!(dead.len(), 5);
    assert!(
        dead.iter().all(|d| d.error.contains("tenant `u` has no run")),
        "{dead:#?}"
    );
    for d in &dead {
        h.store.resolve_dead_letter(d.id, "dropped", "test").await.unwrap();
    }

    // Tenant u onboards its own `items`: its staging starts empty (all inserts), t's is untouched.
    h.run_job(Job::new(Task::Onboard {
        tenant: "u".into(),
        reports: vec![],
    }))
    .await;
    let u_run = h.store.runs(Some("u"), 10).await.unwrap().remove(0);
    assert_eq!((u_run.inserts, u_run.updates, u_run.deletes), (300, 0, 0));
    let mut staged = h.store.staging("u", "items", &Default::default());
    let mut n = 0;
    while let Some(b) = staged.recv().await {
        n += b.unwrap().len();
    }
    assert_eq!(n, 300, "u's staging holds only u's keys");
    assert_eq!(h.store.runs(Some("t"), 10).await.unwrap().len(), 1);
    let u_rows = h.receiver.db.rows("u", "items").unwrap();
    assert!(
        u_rows.iter().all(|(_, row)| row.contains("\"name\":\"u\"")),
        "u's dataset holds only u's rows"
    );
    assert_eq!(h.receiver.db.rows("t", "items").unwrap().len(), 1_200);
    assert!(h
        .store
        .batch(&u_run.id, &format!("{}.1-500", t_run.id))
        .await
        .unwrap()
        .is_none());
    h.assert_in_sync().await;
}

async fn identifiers_from_config_are_validated(h: Harness) {
    let attempts = [
        (
            "table = \"items\"",
            "table = \"items; DROP TABLE items\"",
            "field `table`",
        ),
        ("table = \"items\"", "table = \"items\\\" --\"", "field `table`"),
        ("key = [\"id\"]", "key = [\"id) OR 1=1 --\"]", "field `key`"),
    ];
    for (from, to, field) in attempts {
        let toml = h.config(&items_source(1_000)).replace(from, to);
        let err = signals_shared::domain::config::Config::parse(&toml, "x.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains(field) && err.contains("is not a valid"), "{to}: {err}");
    }
    let err = signals_shared::backends::open(&signals_tests::pg_url(), "signals; DROP SCHEMA public")
        .await
        .err()
        .expect("an injected schema name is refused")
        .to_string();
    assert!(err.contains("is not a valid store schema name"), "{err}");
}

/// A deep onboarding backlog does not hold up interval work: claims go by priority first.
async fn interval_work_is_claimed_before_an_onboarding_backlog(h: Harness) {
    let backlog: Vec<Job> = (0..300).map(|i| chunk_job("big", &format!("onboarding-{i}"))).collect();
    h.store.enqueue(&backlog, Duration::ZERO).await.unwrap();
    let mut interval = chunk_job("small", "interval-run");
    interval.priority = signals_shared::domain::job::PRIORITY_INTERVAL;
    h.store
        .enqueue(&[interval.clone(), Job::new(Task::Tick)], Duration::ZERO)
        .await
        .unwrap();
    let first = h.store.claim(2, Duration::from_secs(30), &[]).await.unwrap();
    let tasks: Vec<Job> = first.iter().map(|c| Job::decode(c.body.as_bytes()).unwrap()).collect();
    // (Rows of one claim come back in no particular order; what matters is which are claimed.)
    assert!(
        tasks.iter().any(|j| j.task == Task::Tick),
        "the timer is claimed first: {tasks:?}"
    );
    assert!(
        tasks.iter().any(|j| j.task == interval.task),
        "interval work goes ahead of 300 older onboarding jobs"
    );
    let one = h.store.claim(1, Duration::from_secs(30), &[]).await.unwrap();
    assert!(
        Job::decode(one[0].body.as_bytes()).unwrap().scope().0 == Some("big"),
        "then the backlog"
    );

    // A runner's reserved slot takes interval work only: with the backlog still deep, it
    // claims nothing until an interval job arrives, then exactly that one.
    assert!(h
        .store
        .claim_urgent(1, Duration::from_secs(30), &[])
        .await
        .unwrap()
        .is_empty());
    let mut later = chunk_job("small", "interval-run-2");
    later.priority = signals_shared::domain::job::PRIORITY_INTERVAL;
    h.store.enqueue(&[later.clone()], Duration::ZERO).await.unwrap();
    let urgent = h.store.claim_urgent(3, Duration::from_secs(30), &[]).await.unwrap();
    assert_eq!(urgent.len(), 1);
    assert_eq!(Job::decode(urgent[0].body.as_bytes()).unwrap().task, later.task);
}

/// Every push asks for the latest version alone; it must be the version `latest_config`
/// reports, and a configuration applied twice unchanged is not a new one.
async fn the_latest_config_version_is_the_last_applied(h: Harness) {
    assert_eq!(h.store.latest_config_version().await.unwrap(), None);
    let first = h.apply(&h.config("")).await;
    let second = h.apply(&h.config(&items_source(100))).await;
    assert!(second > first);
    assert_eq!(
        h.apply(&h.config(&items_source(100))).await,
        second,
        "unchanged: no new version"
    );
    let latest = h.store.latest_config().await.unwrap().map(|(v, _)| v);
    assert_eq!(h.store.latest_config_version().await.unwrap(), Some(second));
    assert_eq!(latest, Some(second));
}

/// The run's batches are the ones its delta cuts into (seq ranges of at most `batch_max_rows`,
/// in order), and once pushed the destination has every item once.
async fn assert_cut_and_sent_once(h: &Harness, run_id: &str) {
    let ranges: Vec<(i64, i64)> = h
        .store
        .pending_batches(run_id)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, first, last)| (first, last))
        .collect();
    assert_eq!(
        ranges,
        [(1, 500), (501, 1_000), (1_001, 1_500), (1_501, 2_000), (2_001, 2_200)]
    );
    h.run_until_idle().await;
    h.assert_in_sync().await;
    assert_eq!(h.stats().changes, 2_200);
}

/// A merge job cuts its run's batches beside the merge (decision 0019): the run leaves it
/// batched with a push job per batch queued and no batch job between.
async fn a_merge_job_cuts_the_batches_beside_the_merge(h: Harness) {
    let h = h.merging_initial_runs();
    h.snapshotted_items().await;
    h.run_stages_until_idle(vec![Stage::Merge]).await;
    let run = h.runs().await.remove(0);
    assert_eq!((run.state.as_str(), run.batches_total), ("batched", 5));
    assert_eq!(h.store.depth(&[Stage::Batch]).await.unwrap().0, 0, "no batch job");
    assert_eq!(h.store.depth(&[Stage::Push]).await.unwrap().0, 5);
    assert_cut_and_sent_once(&h, &run.id).await;
}

/// While another merge job of the host is cutting, a merge job merges alone and asks for the
/// batch stage, which cuts the same batches.
async fn a_merge_job_merges_alone_while_another_cuts(h: Harness) {
    let h = h.merging_initial_runs();
    h.snapshotted_items().await;
    let busy = h.ctx.cut_beside().expect("nothing else is cutting");
    h.run_stages_until_idle(vec![Stage::Merge]).await;
    let run = h.runs().await.remove(0);
    assert_eq!((run.state.as_str(), run.batches_total), ("merged", 0));
    assert_eq!(h.store.depth(&[Stage::Batch]).await.unwrap().0, 1, "a batch job");
    drop(busy);
    h.run_stages_until_idle(vec![Stage::Batch]).await;
    assert_cut_and_sent_once(&h, &run.id).await;
}

/// Two attempts at one chunk — a job delivered twice, or redelivered while a stalled worker still
/// held it — cannot mix their deltas: each reset numbers a new attempt, and an earlier attempt's
/// segment writes and finish are refused from then on, whichever order they come in.
async fn an_earlier_attempt_at_a_chunk_is_refused_once_a_later_one_resets_it(h: Harness) {
    let h = h.merging_initial_runs();
    create_items(&h.src(), 2_200);
    h.apply(&h.config(&items_source(1_000))).await;
    let chunk_jobs = h.plan_by_hand().await;
    h.store.enqueue(&chunk_jobs, Duration::ZERO).await.unwrap();
    let run = h.runs().await.remove(0);
    let chunk = h.store.chunks(&run.id).await.unwrap().remove(0);
    let (store, id, no) = (&h.store, run.id.as_str(), chunk.no);
    fn refused<T>(r: Result<T, StoreError>) -> bool {
        matches!(r, Err(StoreError::Superseded { .. }))
    }
    let garbage = || vec![7u8; 16].into();

    let first = store.reset_chunk(id, &chunk).await.unwrap().expect("an open chunk");
    store.write_segment(id, no, first, 0, 1, garbage()).await.unwrap();
    let second = store.reset_chunk(id, &chunk).await.unwrap().expect("an open chunk");
    assert!(second > first);
    assert!(refused(store.write_segment(id, no, first, 1, 1, garbage()).await));
    assert!(refused(store.finish_chunk(id, no, first, ChunkStats::default()).await));

    // The chunk jobs read every chunk (a third attempt at this one) and the run goes through…
    h.run_until_idle().await;
    // …and the second attempt, stalled meanwhile, cannot add to the finished chunk either.
    assert!(refused(store.write_segment(id, no, second, 0, 1, garbage()).await));
    assert!(refused(store.finish_chunk(id, no, second, ChunkStats::default()).await));
    assert_eq!(
        store.reset_chunk(id, &chunk).await.unwrap(),
        None,
        "a done chunk stays done"
    );
    h.assert_in_sync().await;
    let run = h.runs().await.remove(0);
    assert_eq!((run.state.as_str(), run.rows_read, run.inserts), ("done", 2_200, 2_200));
    let stats = h.stats();
    assert_eq!((stats.changes, stats.applied_twice), (2_200, 0));
}

signals_tests::on_every_store!(
    an_earlier_attempt_at_a_chunk_is_refused_once_a_later_one_resets_it,
    a_merge_job_cuts_the_batches_beside_the_merge,
    a_merge_job_merges_alone_while_another_cuts,
    the_latest_config_version_is_the_last_applied,
    interval_work_is_claimed_before_an_onboarding_backlog,
    the_queue_leases_counts_attempts_and_reclaims,
    one_active_run_per_data_source,
    dead_letters_are_recorded_once_per_message,
    tenants_never_see_each_others_rows,
    identifiers_from_config_are_validated,
);
