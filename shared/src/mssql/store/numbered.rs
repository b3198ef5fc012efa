//! A step of a chunk of a run numbered at commit (decision 0025), in one transaction: the run's
//! count so far under its update lock, the step's batches numbered from it, its keys staged
//! through `#delta` like a merge's.

use super::merge::drop_delta;
use super::session::{flag, int, p, Session};
use super::{now_ms, MssqlStore};
use crate::errors::StoreError;
use crate::ports::{NumberedStep, Run, StepCommitted};

impl MssqlStore {
    pub(super) async fn commit_numbered_step(
        &self,
        run: &Run,
        step: NumberedStep,
    ) -> Result<StepCommitted, StoreError> {
        let mut x = self.session("commit chunk step").await?;
        let sid = self.sid(&mut x, &run.tenant, &run.source).await?;
        // Loaded before the transaction opens, as a merge's: staging's locks last only the apply.
        self.load_delta(&mut x, super::staging::ready(step.staged)).await?;
        x.begin().await?;
        let held = x
            .row(
                &self.q(
                    "SELECT CASE WHEN attempt = @P3 AND done = 0 THEN 1 ELSE 0 END FROM {s}.chunks WITH (UPDLOCK, ROWLOCK) \
                     WHERE run_id = @P1 AND chunk_no = @P2",
                ),
                vec![p(run.id.clone()), p(step.chunk as i32), p(step.attempt)],
            )
            .await?
            .map(|r| flag(&r, 0))
            .transpose()?;
        if held != Some(true) {
            return self.refuse(x, run, step.chunk, step.attempt).await;
        }
        // Staged before the run's row is locked: nothing here depends on the numbering.
        let (upserted, _) = self.apply_delta(&mut x, sid).await?;
        let done = step.last.is_some();
        x.exec(
            &self.q("UPDATE {s}.chunks SET resume_key = @P3, done = @P4 WHERE run_id = @P1 AND chunk_no = @P2"),
            vec![p(run.id.clone()), p(step.chunk as i32), p(step.resume), p(done)],
        )
        .await?;
        // The run's row last, held only while the batches are numbered, compressed and saved: its
        // update lock makes the count and the batches numbered from it this step's alone.
        let base = x
            .row(
                &self.q(
                    "SELECT inserts + updates + deletes FROM {s}.runs WITH (UPDLOCK, ROWLOCK) \
                     WHERE id = @P1 AND state = 'snapshotting'",
                ),
                vec![p(run.id.clone())],
            )
            .await?
            .map(|r| int(&r, 0))
            .transpose()?;
        let Some(base) = base else {
            return self.refuse(x, run, step.chunk, step.attempt).await;
        };
        let batches = (step.bodies)(base)?;
        for b in &batches {
            self.insert_batch(&mut x, b).await?;
        }
        let read = step.last.unwrap_or_default();
        let bytes: i64 = batches.iter().map(|b| b.body.len() as i64).sum();
        let all_done = x
            .row(
                &self.q(
                    "UPDATE {s}.runs SET inserts = inserts + @P2, updates = updates + @P9, deletes = deletes + @P10, \
                     batches_total = batches_total + @P3, bytes = bytes + @P4, chunks_done = chunks_done + @P5, \
                     rows_read = rows_read + @P2 + @P9 + @P6, bytes_read = bytes_read + @P7, updated_at = @P8 \
                     OUTPUT CASE WHEN inserted.chunks_done >= inserted.chunks_total THEN 1 ELSE 0 END \
                     WHERE id = @P1",
                ),
                vec![
                    p(run.id.clone()),
                    p(step.ops[0]),
                    p(batches.len() as i64),
                    p(bytes),
                    p(done as i64),
                    p(read.rows_read),
                    p(read.bytes_read),
                    p(now_ms()),
                    p(step.ops[1]),
                    p(step.ops[2]),
                ],
            )
            .await?
            .map(|r| flag(&r, 0))
            .transpose()?
            .unwrap_or(false);
        if all_done {
            let delivered = x
                .row(
                    &self.q("UPDATE {s}.runs SET state = 'batched', updated_at = @P2 \
                         OUTPUT CASE WHEN inserted.batches_delivered >= inserted.batches_total THEN 1 ELSE 0 END \
                         WHERE id = @P1"),
                    vec![p(run.id.clone()), p(now_ms())],
                )
                .await?
                .map(|r| flag(&r, 0))
                .transpose()?
                .unwrap_or(false);
            self.record_staged_schema(&mut x, run).await?;
            if delivered {
                self.finish_run(&mut x, &run.id).await?;
            }
        }
        x.commit_keep().await?;
        drop_delta(&mut x).await?;
        x.done();
        self.count(3 + batches.len() as u64 + upserted);
        Ok(StepCommitted {
            batches: batches.into_iter().map(|b| b.id).collect(),
            all_done,
        })
    }

    /// A superseded attempt, or a run that left `snapshotting`: nothing of the step is kept.
    async fn refuse(&self, mut x: Session, run: &Run, chunk: u32, attempt: i64) -> Result<StepCommitted, StoreError> {
        x.rollback_keep().await?;
        drop_delta(&mut x).await?;
        x.done();
        Err(StoreError::chunk_superseded(&run.id, chunk, attempt))
    }
}
