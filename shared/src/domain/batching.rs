//! Batching rules: cut a run's change records, in sequence order, into batches bounded by rows and
//! bytes. Deterministic, so a re-run of the batch stage cuts the same batches with the same ids.

/// Row and byte limits of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most records per batch.
    pub max_rows: usize,
    /// Most record bytes per batch (a single larger record still travels, alone).
    pub max_bytes: usize,
}

/// Accumulates record sizes and says where each batch ends.
#[derive(Debug)]
pub struct Cutter {
    limits: BatchLimits,
    rows: usize,
    bytes: usize,
}

impl Cutter {
    /// A cutter with nothing accumulated.
    pub fn new(limits: BatchLimits) -> Cutter {
        Cutter {
            limits,
            rows: 0,
            bytes: 0,
        }
    }

    /// Whether a record of `len` bytes must start a new batch; then counts it in.
    pub fn starts_new_batch(&mut self, len: usize) -> bool {
        let cut = self.rows > 0 && (self.rows + 1 > self.limits.max_rows || self.bytes + len > self.limits.max_bytes);
        if cut {
            self.rows = 0;
            self.bytes = 0;
        }
        self.rows += 1;
        self.bytes += len;
        cut
    }
}

/// The deterministic id of the batch holding sequence numbers `first..=last` of a run.
pub fn batch_id(run_id: &str, first: u64, last: u64) -> String {
    format!("{run_id}.{first}-{last}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(limits: BatchLimits, sizes: &[usize]) -> Vec<Vec<usize>> {
        let mut c = Cutter::new(limits);
        let mut out: Vec<Vec<usize>> = Vec::new();
        for &s in sizes {
            if c.starts_new_batch(s) || out.is_empty() {
                out.push(Vec::new());
            }
            out.last_mut().unwrap().push(s);
        }
        out
    }

    #[test]
    fn cuts_at_row_limit() {
        let l = BatchLimits {
            max_rows: 2,
            max_bytes: 1000,
        };
        assert_eq!(cut(l, &[1, 1, 1, 1, 1]), vec![vec![1, 1], vec![1, 1], vec![1]]);
    }

    #[test]
    fn cuts_at_byte_limit_and_keeps_oversized_records_alone() {
        let l = BatchLimits {
            max_rows: 100,
            max_bytes: 10,
        };
        assert_eq!(
            cut(l, &[4, 4, 4, 20, 1, 10]),
            vec![vec![4, 4], vec![4], vec![20], vec![1], vec![10]]
        );
        assert_eq!(cut(l, &[5, 5]), vec![vec![5, 5]]);
    }

    #[test]
    fn ids_derive_from_run_and_range() {
        assert_eq!(batch_id("r1", 1, 500), "r1.1-500");
    }
}
