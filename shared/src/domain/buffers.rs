//! Large byte buffers kept for reuse: the segments, batch bodies and their packed copies every
//! change passes through are 0.1–4 MiB each. Allocated fresh, each is mapped by glibc (above
//! the 128 KiB mmap threshold `hosts::tune_malloc` fixes, so the peak does not drift) and the
//! kernel faults in and zeroes every page of it again; a profile of the onboarding put 17% of
//! the workers' CPU in the kernel, most of it those faults. A buffer dropped here is kept
//! instead, and the next one of its size comes back already mapped.
//!
//! The keep is bounded (16 MiB idle, no buffer over 8 MiB), so at most that much memory is held
//! idle; a raised malloc threshold, which would have reused them too, held 20–60 MB more per
//! worker (decision 0014).

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

/// Smaller buffers come from the allocator's heap, already mapped.
const MIN_KEPT: usize = 64 << 10;
/// Larger ones are rare (a body is capped at 4 MiB by default) and not worth holding.
const MAX_KEPT: usize = 8 << 20;
/// Idle bytes kept at most, over every buffer: four jobs' worth of segments and bodies.
const KEPT_BYTES: usize = 16 << 20;

/// Idle buffers, oldest first.
#[derive(Default)]
struct Kept {
    buffers: VecDeque<Vec<u8>>,
    bytes: usize,
}

impl Kept {
    /// The smallest kept buffer with room for `capacity` bytes.
    fn take(&mut self, capacity: usize) -> Option<Vec<u8>> {
        let (i, _) = (self.buffers.iter().enumerate())
            .filter(|(_, b)| b.capacity() >= capacity)
            .min_by_key(|(_, b)| b.capacity())?;
        let b = self.buffers.remove(i)?;
        self.bytes -= b.capacity();
        Some(b)
    }

    /// Keeps `b` (emptied) if it is worth keeping, letting the oldest idle buffers go to stay
    /// within the bound: sizes the running jobs no longer ask for (a snapshot's segments while
    /// the batch cut builds bodies) would otherwise hold the whole keep while every buffer the
    /// new work needs is allocated fresh beside it, with no reuse.
    /// Returns the buffers let go, for the caller to free once the keep is unlocked.
    #[must_use]
    fn give(&mut self, mut b: Vec<u8>) -> Vec<Vec<u8>> {
        let cap = b.capacity();
        if !(MIN_KEPT..=MAX_KEPT).contains(&cap) {
            return vec![b];
        }
        let mut gone = Vec::new();
        while self.bytes + cap > KEPT_BYTES {
            let Some(old) = self.buffers.pop_front() else { break };
            self.bytes -= old.capacity();
            gone.push(old);
        }
        b.clear();
        self.bytes += cap;
        self.buffers.push_back(b);
        gone
    }
}

static KEPT: Mutex<Kept> = Mutex::new(Kept {
    buffers: VecDeque::new(),
    bytes: 0,
});

fn kept() -> std::sync::MutexGuard<'static, Kept> {
    // A panic elsewhere while holding the lock leaves nothing inconsistent: a list of buffers.
    KEPT.lock().unwrap_or_else(|p| p.into_inner())
}

/// A byte buffer that goes back to the keep when dropped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Buffer(Vec<u8>);

impl Buffer {
    /// An empty buffer with room for at least `capacity` bytes: the smallest kept one that
    /// fits, or a new one.
    pub fn with_capacity(capacity: usize) -> Buffer {
        let reused = (capacity >= MIN_KEPT).then(|| kept().take(capacity)).flatten();
        Buffer(reused.unwrap_or_else(|| Vec::with_capacity(capacity)))
    }

    /// The bytes as a plain vector, for an owner that keeps them (not returned to the keep).
    pub fn into_vec(mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}

impl From<Vec<u8>> for Buffer {
    fn from(v: Vec<u8>) -> Buffer {
        Buffer(v)
    }
}

impl AsRef<[u8]> for Buffer {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Deref for Buffer {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if (MIN_KEPT..=MAX_KEPT).contains(&self.0.capacity()) {
            let gone = kept().give(std::mem::take(&mut self.0));
            drop(gone); // unmapped outside the lock
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smallest_kept_buffer_that_fits_comes_back_empty() {
        let mut k = Kept::default();
        let (mut a, b) = (Vec::with_capacity(1 << 20), Vec::with_capacity(2 << 20));
        a.extend_from_slice(b"payload");
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        assert!(k.give(b).is_empty() && k.give(a).is_empty());
        let got = k.take(900 << 10).unwrap();
        assert_eq!((got.as_ptr(), got.len()), (pa, 0));
        let larger = k.take(1_500_000).unwrap();
        assert_eq!(larger.as_ptr(), pb);
        assert!(k.take(1).is_none() && k.bytes == 0);
    }

    #[test]
    fn the_keep_stays_bounded() {
        let mut k = Kept::default();
        let _ = k.give(Vec::with_capacity(1024)); // small: the heap serves these without a fault
        let _ = k.give(Vec::with_capacity(MAX_KEPT + 1));
        assert!(k.buffers.is_empty());
        for _ in 0..40 {
            let _ = k.give(Vec::with_capacity(1 << 20));
        }
        assert_eq!(k.bytes, KEPT_BYTES);
        assert_eq!(k.bytes, k.buffers.iter().map(Vec::capacity).sum::<usize>());
    }

    #[test]
    fn a_full_keep_lets_its_oldest_buffers_go_for_the_newest() {
        let mut k = Kept::default();
        for _ in 0..16 {
            assert!(k.give(Vec::with_capacity(1 << 20)).is_empty()); // a finished stage's size
        }
        let body = Vec::with_capacity(3 << 20); // what the stage now running asks for
        let p = body.as_ptr();
        assert_eq!(k.give(body).len(), 3, "the three oldest let go");
        assert_eq!((k.buffers.len(), k.bytes), (14, KEPT_BYTES));
        assert_eq!(k.take(2 << 20).map(|b| b.as_ptr()), Some(p));
        assert_eq!(k.bytes, 13 << 20);
    }

    #[test]
    fn a_buffer_is_a_vector_until_handed_out() {
        let mut b = Buffer::with_capacity(1 << 20);
        b.extend_from_slice(b"abc");
        assert_eq!(b.as_slice(), b"abc");
        let v = b.into_vec();
        assert_eq!(v, b"abc");
        assert!(v.capacity() >= 1 << 20);
    }
}
