//! Dry-run sink: appends each batch body as one line to a file and answers 200.

use crate::errors::PushError;
use crate::ports::{PushRequest, PushResponse, Pusher};
use async_trait::async_trait;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

/// Writes batches to a JSONL file.
pub struct JsonlSink {
    path: PathBuf,
    lock: Mutex<()>,
}

impl JsonlSink {
    /// A sink appending to `path`.
    pub fn new(path: PathBuf) -> JsonlSink {
        JsonlSink {
            path,
            lock: Mutex::new(()),
        }
    }
}

#[async_trait]
impl Pusher for JsonlSink {
    async fn push(&self, req: &PushRequest<'_>) -> Result<PushResponse, PushError> {
        let (batch_id, body) = (req.batch_id, req.body);
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
        f.write_all(&body.json()?)?;
        f.write_all(b"\n")?;
        f.sync_data()?;
        Ok(PushResponse {
            status: 200,
            retry_after: None,
            excerpt: format!("written {batch_id}"),
            request_id: None,
        })
    }
}
