//! A run's delta read back, for the merge and the batch cut: segments from wherever the plan
//! put them (`scratch`), and the rows of a build before segments for a run in flight at that
//! upgrade.

use super::scratch::{Scratch, Table};
use super::PgStore;
use crate::domain::diff::Op;
use crate::domain::segment::{self, Part};
use crate::errors::StoreError;
use crate::ports::{Batches, DeltaRow};

/// Opens one of a run's delta streams (old rows, or segments).
type OpenDelta = fn(&PgStore, &str) -> Batches<DeltaRow, StoreError>;

/// The run's delta segments, decoded one at a time (`decode`), in chunk and segment order, from
/// wherever the plan put them. Only the delta of a run whose chunks are all read: the statement
/// checks the run's state in the snapshot it reads the segments in, so a reader holding a stale
/// run (one that a rewind has sent back to `snapshotting`, decision 0018) reads nothing rather
/// than a delta being written again, and cannot cut batches from half of it.
pub(super) fn segments<T: Send + 'static>(
    store: &PgStore,
    run_id: &str,
    decode: fn(&[u8]) -> Result<Vec<T>, segment::SegmentError>,
) -> Batches<T, StoreError> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let (store, run_id) = (store.clone(), run_id.to_owned());
    tokio::spawn(async move {
        let found = match store.client().await {
            Ok(c) => Scratch::of(&c, &store.s, &run_id).await,
            Err(e) => Err(e),
        };
        let sql = match found {
            Ok(at) => format!(
                "SELECT body FROM ({}) seg ORDER BY chunk_no, seg_no",
                at.select(
                    &store.s,
                    Table::Segments,
                    "chunk_no, seg_no, body",
                    &format!(
                        "run_id = $1 AND EXISTS (SELECT 1 FROM {}.runs r WHERE r.id = $1 \
                         AND r.state IN ('snapshotted', 'merged', 'batched'))",
                        store.s
                    )
                )
            ),
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let mut rows = store.stream_each("read delta segments", sql, vec![Box::new(run_id)], move |r| {
            Ok(decode(r.get(0))?)
        });
        while let Some(batch) = rows.recv().await {
            if tx.send(batch).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// Delta rows a build before segments wrote for a run still in flight at the upgrade.
pub(super) fn legacy_rows(store: &PgStore, run_id: &str) -> Batches<DeltaRow, StoreError> {
    let sql = format!(
        "SELECT op, payload, key, hash FROM {}.deltas WHERE run_id = $1 ORDER BY key",
        store.s
    );
    store.stream("read changes", sql, vec![Box::new(run_id.to_owned())], |r| {
        let code: i16 = r.get(0);
        let op = Op::from_code(code as i64).ok_or_else(|| StoreError::Corrupt {
            what: "delta op",
            detail: code.to_string(),
        })?;
        let hash: Option<Vec<u8>> = r.get(3);
        let hash = hash
            .map(|h| h.try_into())
            .transpose()
            .map_err(|_| StoreError::Corrupt {
                what: "delta hash",
                detail: "not 16 bytes".into(),
            })?;
        Ok(DeltaRow {
            op,
            payload: r.get(1),
            key: r.get(2),
            hash,
        })
    })
}

/// The run's whole delta: rows from a build before segments, then segments — the second stream
/// opened only once the first is drained, since a merge's transaction already holds a
/// connection of the pool.
pub(super) fn delta(store: &PgStore, run_id: &str) -> Batches<DeltaRow, StoreError> {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let (store, run_id) = (store.clone(), run_id.to_owned());
    tokio::spawn(async move {
        let sources: [OpenDelta; 2] = [legacy_rows, |s, run| {
            segments(s, run, |b| segment::decode(b, Part::Keys))
        }];
        for open in sources {
            let mut source = open(&store, &run_id);
            while let Some(batch) = source.recv().await {
                let failed = batch.is_err();
                if tx.send(batch).await.is_err() || failed {
                    return;
                }
            }
        }
    });
    rx
}
