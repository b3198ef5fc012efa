//! The steps of an initial run's chunks numbered at commit (decision 0025), on every store:
//! gap-free numbering across chunks and attempts, the fence, the resume key, the run's finish,
//! and a repair that invalidates staged keys while the run reads.

use signals_shared::domain::encoding::INVALID_HASH;
use signals_shared::domain::key::encode_key;
use signals_shared::domain::packing::Body;
use signals_shared::domain::value::Value;
use signals_shared::errors::StoreError;
use signals_shared::ports::{Attempt, BatchRecord, ChunkStats, NumberedStep};
use signals_tests::{create_items, items_source, Harness};
use std::time::Duration;

/// One step of a chunk of a run numbered at commit: `keys` (one byte each) as one batch.
fn step(run_id: &str, chunk: u32, attempt: i64, keys: &[u8], resume: Option<u8>, last: bool) -> NumberedStep {
    let (run_id, n) = (run_id.to_owned(), keys.len() as i64);
    NumberedStep {
        chunk,
        attempt,
        ops: [n, 0, 0],
        staged: keys.iter().map(|&k| (vec![k], Some([k; 16]))).collect(),
        resume: resume.map(|k| vec![k]),
        last: last.then(|| ChunkStats {
            rows_read: 10,
            ..ChunkStats::default()
        }),
        bodies: Box::new(move |base| {
            Ok(if n == 0 {
                Vec::new()
            } else {
                vec![BatchRecord {
                    id: format!("{run_id}.{}-{}", base + 1, base + n),
                    run_id,
                    seq_first: base + 1,
                    seq_last: base + n,
                    rows: n,
                    body: Body::gzip_of(b"{}"),
                    delivered: false,
                }]
            })
        }),
    }
}

/// The steps of a run numbered at commit (decision 0025) number it 1..n without gaps whatever
/// order its chunks commit in: each takes the run's count so far as its base, in the
/// transaction that saves its batches and stages its keys. A later attempt at a chunk fences
/// the earlier one out and reads on from the chunk's resume key; the last chunk's commit makes
/// the run `batched` — `done` when every batch was delivered before it.
async fn the_steps_of_a_numbered_run_number_it_without_gaps(h: Harness) {
    create_items(&h.src(), 2_200);
    h.apply(&h.config(&items_source(1_000))).await;
    h.plan_by_hand().await;
    let run = h.runs().await.remove(0);
    assert!(
        run.mode.as_ref().is_some_and(|m| m.numbered),
        "nothing was staged: numbered at commit"
    );
    let chunks = h.store.chunks(&run.id).await.unwrap();
    assert_eq!(chunks.len(), 3);
    let (store, id) = (&h.store, run.id.as_str());
    let attempt = |no: usize| store.reset_chunk(id, &chunks[no]);

    let first = attempt(1).await.unwrap().expect("an open chunk");
    let saved = store
        .commit_step(&run, step(id, 1, first, &[10, 11], Some(12), false))
        .await
        .unwrap();
    assert_eq!((saved.batches, saved.all_done), (vec![format!("{id}.1-2")], false));
    let a0 = attempt(0).await.unwrap().expect("an open chunk");
    let saved = store
        .commit_step(&run, step(id, 0, a0, &[1, 2, 3], None, true))
        .await
        .unwrap();
    assert_eq!(saved.batches, [format!("{id}.3-5")]);

    let second = attempt(1).await.unwrap().expect("an open chunk");
    let refused = store.commit_step(&run, step(id, 1, first, &[12], None, true)).await;
    assert!(matches!(refused, Err(StoreError::Superseded { .. })), "{refused:?}");
    let resume = store.chunks(id).await.unwrap().remove(1).resume;
    assert_eq!(resume, Some(vec![12]), "where the second attempt reads on from");
    store
        .commit_step(&run, step(id, 1, second, &[12], None, true))
        .await
        .unwrap();

    // Every batch delivered before the last chunk commits: its commit finishes the run.
    for (batch_id, _, _) in store.pending_batches(id).await.unwrap() {
        let note = Attempt {
            batch_id,
            attempt: 1,
            status: Some(200),
            detail: String::new(),
            request_id: None,
            duration: Duration::ZERO,
        };
        assert!(
            !store.mark_delivered(&run, &note).await.unwrap(),
            "not before the last chunk"
        );
    }
    let a2 = attempt(2).await.unwrap().expect("an open chunk");
    let saved = store.commit_step(&run, step(id, 2, a2, &[], None, true)).await.unwrap();
    assert_eq!((saved.batches.len(), saved.all_done), (0, true));
    let run = h.runs().await.remove(0);
    assert_eq!(
        (
            run.state.as_str(),
            run.inserts,
            run.batches_total,
            run.batches_delivered,
            run.chunks_done,
            run.rows_read
        ),
        ("done", 6, 3, 3, 3, 36),
        "rows read: each step's changes, and 10 more with each chunk's last step"
    );
    let keys: Vec<Vec<u8>> = [1, 2, 3, 10, 11, 12].iter().map(|&k| vec![k]).collect();
    let staged = store.staged_hashes("t", "items", keys).await.unwrap();
    assert_eq!(staged.len(), 6, "every committed key is staged");
    assert!(staged.iter().all(|(k, h)| *h == [k[0]; 16]));
    assert!(store.staged_schema("t", "items").await.unwrap().is_some());
}

/// A repair scheduled while a numbered run reads (`verify --repair` or `dlq drop --repair`
/// during an onboarding) stages keys with a hash no row has: a key the source holds then reads
/// as an update, one it lacks as a delete. Both are numbered and staged like the inserts
/// around them, and the destination ends equal to the source, nothing applied twice.
async fn a_repair_during_a_numbered_run_sends_updates_and_deletes(h: Harness) {
    create_items(&h.src(), 3_000);
    h.apply(&h.config(&items_source(1_000))).await;
    let chunk_jobs = h.plan_by_hand().await;
    let run = h.runs().await.remove(0);
    assert!(
        run.mode.as_ref().is_some_and(|m| m.numbered),
        "nothing was staged at plan"
    );
    let key = |id: i64| {
        let mut k = Vec::new();
        encode_key(&mut k, &[&Value::Int(id)], &["id".to_string()]).unwrap();
        k
    };
    let repaired = signals_shared::ops::repair::schedule(h.store.as_ref(), "t", "items", vec![key(2_500), key(99_999)])
        .await
        .unwrap();
    assert_eq!(repaired, 2);
    h.store.enqueue(&chunk_jobs, Duration::ZERO).await.unwrap();
    h.run_until_idle().await;
    let run = h.runs().await.remove(0);
    assert_eq!(
        (run.state.as_str(), run.inserts, run.updates, run.deletes, run.rows_read),
        ("done", 2_999, 1, 1, 3_000),
        "{run:?}"
    );
    h.assert_in_sync().await;
    let stats = h.stats();
    assert_eq!((stats.changes, stats.applied_twice), (3_001, 0));
    let staged = h
        .store
        .staged_hashes("t", "items", vec![key(2_500), key(99_999)])
        .await
        .unwrap();
    assert_eq!(
        staged.len(),
        1,
        "the deleted key left staging, the updated one stayed: {staged:?}"
    );
    assert_ne!(staged[0].1, INVALID_HASH, "with its row's hash");
}

signals_tests::on_every_store!(
    the_steps_of_a_numbered_run_number_it_without_gaps,
    a_repair_during_a_numbered_run_sends_updates_and_deletes,
);
