//! Packed staging against the machine's PostgreSQL: reads, look-ups and compaction checked
//! against a model of what was staged.

use super::*;
use crate::ports::StagingStore;
use crate::postgres::store::PgStore;
use std::collections::BTreeMap;

type Model = BTreeMap<Vec<u8>, RowHash>;

async fn read_all(store: &PgStore, range: &KeyRange) -> Vec<(Vec<u8>, RowHash)> {
    let mut rx = store.staging("t", "src", range);
    let mut out = Vec::new();
    while let Some(batch) = rx.recv().await {
        out.extend(batch.expect("a staging read"));
    }
    out
}

fn expected(model: &Model, range: &KeyRange) -> Vec<(Vec<u8>, RowHash)> {
    model
        .iter()
        .filter(|(k, _)| range.lo.as_ref().is_none_or(|lo| *k >= lo) && range.hi.as_ref().is_none_or(|hi| *k < hi))
        .map(|(k, h)| (k.clone(), *h))
        .collect()
}

/// Staging read back, whole or by range, and looked up by key, is exactly what was staged:
/// packs that overlap (as a case-insensitive collation's steps do in byte order), keys that
/// differ only by case or trailing spaces, per-key rows that override packed entries, are
/// new or are tombstones, across many pages of either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_reads_merge_packs_and_per_key_rows_exactly() {
    let schema = format!("packs_merge_{}", std::process::id());
    let store = PgStore::connect(&super::super::test_url(), &schema, 2)
        .await
        .expect("store");
    let mut model = Model::new();
    let key = |i: u32| format!("k{:06}", (i * 7919) % 20_000).into_bytes();
    let mut c = store.client().await.expect("a connection");
    let tx = c.transaction().await.expect("a transaction");
    let sid = super::super::staging::sid(&*tx, &store.s, "t", "src")
        .await
        .expect("sid");
    // Two packs of interleaved keys (even and odd positions of one range), and one apart.
    let mut steps: Vec<Vec<(Vec<u8>, RowHash)>> = vec![Vec::new(), Vec::new(), Vec::new()];
    for i in 0..9_000u32 {
        let k = format!("k{:06}", i * 2).into_bytes();
        steps[(i % 2) as usize].push((k, [(i % 250) as u8 + 1; 16]));
    }
    for k in ["A", "a", "a ", "a  ", "\u{e1}", "Z"] {
        steps[2].push((format!("z{k}").into_bytes(), [9; 16]));
    }
    for step in &steps {
        let mut entries: Vec<(&[u8], &[u8])> = step.iter().map(|(k, h)| (k.as_slice(), h.as_slice())).collect();
        stage(&tx, &store.s, sid, &mut entries).await.expect("a pack staged");
        model.extend(step.iter().cloned());
    }
    // Per key: new hashes for packed keys, new keys, tombstones for packed keys, and keys
    // deleted that no pack covers.
    let (mut upserts, mut gone) = (Vec::new(), Vec::new());
    for i in 0..3_000u32 {
        let k = key(i);
        match i % 3 {
            0 | 1 => upserts.push((k, [0xee; 16])),
            _ => gone.push(k),
        }
    }
    upserts.push((b"zz-new".to_vec(), [7; 16]));
    let sql = format!(
        "INSERT INTO {s}.staging_keys (sid, key, hash) SELECT $1, k, h FROM UNNEST($2::BYTEA[], $3::BYTEA[]) AS u(k, h) \
         ON CONFLICT (sid, key) DO UPDATE SET hash = EXCLUDED.hash",
        s = store.s
    );
    let (keys, hashes): (Vec<Vec<u8>>, Vec<Vec<u8>>) = upserts.iter().map(|(k, h)| (k.clone(), h.to_vec())).unzip();
    tx.execute(&sql, &[&sid, &keys, &hashes]).await.expect("upserts");
    model.extend(upserts.iter().cloned());
    gone.push(b"zz-new".to_vec());
    gone.push(b"~beyond every pack".to_vec());
    let cov = Coverage::of(&tx, &store.s, sid).await.expect("coverage");
    unstage(&tx, &store.s, sid, &cov, &gone).await.expect("deletes");
    for k in &gone {
        model.remove(k);
    }
    tx.commit().await.expect("commit");
    let tombstones: i64 = c
        .query_one(
            &format!("SELECT COUNT(*) FROM {}.staging_keys WHERE hash IS NULL", store.s),
            &[],
        )
        .await
        .expect("count")
        .get(0);
    let per_key: i64 = c
        .query_one(&format!("SELECT COUNT(*) FROM {}.staging_keys", store.s), &[])
        .await
        .expect("count")
        .get(0);

    let ranges = [
        KeyRange::default(),
        KeyRange {
            lo: Some(b"k001000".to_vec()),
            hi: Some(b"k004001".to_vec()),
        },
        KeyRange {
            lo: None,
            hi: Some(b"k000100".to_vec()),
        },
        KeyRange {
            lo: Some(b"z".to_vec()),
            hi: None,
        },
        KeyRange {
            lo: Some(b"za ".to_vec()),
            hi: Some(b"za!".to_vec()),
        },
    ];
    let mut reads = Vec::new();
    for range in &ranges {
        reads.push((read_all(&store, range).await, expected(&model, range)));
    }
    let asked: Vec<Vec<u8>> = [
        key(0),
        key(1),
        key(2),
        b"za ".to_vec(),
        b"zA".to_vec(),
        b"zz-new".to_vec(),
    ]
    .into_iter()
    .chain([b"k000002".to_vec(), b"k000003".to_vec(), b"nowhere".to_vec()])
    .collect();
    let mut found = store.staged_hashes("t", "src", asked.clone()).await.expect("hashes");
    found.sort();
    let mut want: Vec<(Vec<u8>, RowHash)> = asked
        .iter()
        .filter_map(|k| model.get(k).map(|h| (k.clone(), *h)))
        .collect();
    want.sort();
    c.batch_execute(&format!("DROP SCHEMA {} CASCADE", store.s))
        .await
        .expect("drop");

    // The packs span k000000–k017998 and zA–zá: a key deleted there may be packed.
    let covered = gone
        .iter()
        .filter(|k| k.as_slice() <= b"k017998".as_slice() || k.as_slice() == b"zz-new")
        .count() as i64;
    assert!(covered > 800 && covered < 1_001, "{covered}");
    assert_eq!(
        tombstones, covered,
        "a tombstone per deleted key a pack may hold, none for the others"
    );
    assert_eq!(
        per_key,
        2_000 + covered,
        "the overrides and new keys, then the tombstones"
    );
    for ((got, want), range) in reads.iter().zip(&ranges) {
        assert_eq!(got.len(), want.len(), "{range:?}");
        assert!(got == want, "{range:?}: the read differs from what was staged");
    }
    assert_eq!(found, want);
}

/// Once half as many rows are staged per key as the packs hold, the merge writes the source's
/// staging again as packs of what is live: no tombstone or override is left, and a read
/// finds exactly what it found before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_staged_mostly_per_key_is_packed_again() {
    let schema = format!("packs_compact_{}", std::process::id());
    let store = PgStore::connect(&super::super::test_url(), &schema, 2)
        .await
        .expect("store");
    let mut c = store.client().await.expect("a connection");
    let s = store.s.clone();
    let tx = c.transaction().await.expect("a transaction");
    let sid = super::super::staging::sid(&*tx, &s, "t", "src").await.expect("sid");
    let keys: Vec<Vec<u8>> = (0..30_000u32).map(|i| format!("{i:08}").into_bytes()).collect();
    for step in keys.chunks(10_000) {
        let mut entries: Vec<(&[u8], &[u8])> = step.iter().map(|k| (k.as_slice(), [1u8; 16].as_slice())).collect();
        stage(&tx, &s, sid, &mut entries).await.expect("a pack");
    }
    let cov = Coverage::of(&tx, &s, sid).await.expect("coverage");
    let gone: Vec<&Vec<u8>> = keys.iter().step_by(3).collect();
    unstage(&tx, &s, sid, &cov, &gone).await.expect("tombstones");
    tx.execute(
        &format!("INSERT INTO {s}.staging_keys (sid, key, hash) SELECT $1, k, $3 FROM UNNEST($2::BYTEA[]) k"),
        &[
            &sid,
            &keys.iter().skip(1).step_by(3).take(4_000).collect::<Vec<_>>(),
            &vec![2u8; 16],
        ],
    )
    .await
    .expect("overrides");
    let early = compact_if_due(&tx, &s, sid, 10_000).await.expect("not yet due");
    tx.commit().await.expect("commit");
    let before = read_all(&store, &KeyRange::default()).await;

    let tx = c.transaction().await.expect("a transaction");
    // The count is of rows the merges wrote: 15,000 here, half the 30,000 packed.
    let n = compact_if_due(&tx, &s, sid, 5_000).await.expect("compaction");
    tx.commit().await.expect("commit");
    let after = read_all(&store, &KeyRange::default()).await;
    let r = c
        .query_one(
            &format!(
                "SELECT (SELECT COUNT(*) FROM {s}.staging_keys), (SELECT COUNT(*) FROM {s}.staging_packs), \
                 (SELECT SUM(n) FROM {s}.staging_packs)::BIGINT, (SELECT per_key FROM {s}.sources)"
            ),
            &[],
        )
        .await
        .expect("counts");
    let counts: (i64, i64, i64, i64) = (r.get(0), r.get(1), r.get(2), r.get(3));
    c.batch_execute(&format!("DROP SCHEMA {s} CASCADE"))
        .await
        .expect("drop");

    assert_eq!(early, 0, "10,000 per key of 30,000 packed is not half");
    assert!(n > 0);
    assert_eq!(before.len(), 20_000);
    assert_eq!(before.iter().filter(|(_, h)| h[0] == 2).count(), 4_000);
    assert!(after == before, "the compacted staging reads as before");
    assert_eq!(counts, (0, 1, 20_000, 0), "one pack of what is live, nothing per key");
}
