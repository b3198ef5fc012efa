//! Pulls items one at a time from a stream of batches (the merge join needs to peek each side).

use crate::ports::Batches;

/// A peekable cursor over a batch stream.
pub(crate) struct Cursor<T, E> {
    rx: Batches<T, E>,
    buf: std::vec::IntoIter<T>,
}

impl<T, E> Cursor<T, E> {
    pub(crate) fn new(rx: Batches<T, E>) -> Self {
        Cursor {
            rx,
            buf: Vec::new().into_iter(),
        }
    }

    /// The next item, or `None` at the end of the stream.
    pub(crate) async fn next(&mut self) -> Result<Option<T>, E> {
        loop {
            if let Some(x) = self.buf.next() {
                return Ok(Some(x));
            }
            match self.rx.recv().await {
                Some(Ok(batch)) => self.buf = batch.into_iter(),
                Some(Err(e)) => return Err(e),
                None => return Ok(None),
            }
        }
    }
}
