//! Progress of long syncs on a terminal: chunks, rows and batches, once a second.

use signals_shared::backends::Backend;
use std::io::IsTerminal;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// Prints progress to stderr while the returned task runs (nothing when stderr is not a terminal).
pub fn spawn(store: Arc<dyn Backend>, label: String) -> JoinHandle<()> {
    tokio::spawn(async move {
        if !std::io::stderr().is_terminal() {
            return;
        }
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let Ok(runs) = store.runs(None, 50).await else {
                continue;
            };
            let active: Vec<_> = runs.iter().filter(|r| r.display_state() != "done").collect();
            let (cd, ct, rows, bd, bt) = active.iter().fold((0, 0, 0, 0, 0), |a, r| {
                (
                    a.0 + r.chunks_done,
                    a.1 + r.chunks_total,
                    a.2 + r.rows_read,
                    a.3 + r.batches_delivered,
                    a.4 + r.batches_total,
                )
            });
            eprint!(
                "\r  {label}: {} runs active, chunks {cd}/{ct}, {rows} rows diffed, batches {bd}/{bt}   ",
                active.len()
            );
        }
    })
}
