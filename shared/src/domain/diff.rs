//! Diff rules: one step of the sorted merge join of a chunk's source rows with staging's
//! (key → hash) for the same key range. Both sides arrive in ascending key-byte order.

use super::encoding::RowHash;
use std::cmp::Ordering;

/// What one step of the merge join decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The source row is new: insert; advance the source.
    Insert,
    /// Same key, different hash: update; advance both.
    Update,
    /// Same key, same hash: nothing to send; advance both.
    Unchanged,
    /// Staging has a key the source no longer has: delete; advance staging.
    Delete,
    /// Both sides are exhausted.
    Done,
}

/// The change kind recorded in a delta and sent in the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// A key the destination does not have.
    Insert = 1,
    /// A key whose row changed.
    Update = 2,
    /// A key the source no longer has.
    Delete = 3,
}

impl Op {
    /// Wire and storage code.
    pub fn code(self) -> i64 {
        self as i64
    }
    /// From a stored code.
    pub fn from_code(code: i64) -> Option<Op> {
        match code {
            1 => Some(Op::Insert),
            2 => Some(Op::Update),
            3 => Some(Op::Delete),
            _ => None,
        }
    }
    /// Protocol name.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }
}

/// Decides the next step given the heads of both sides. With `force`, unchanged rows are sent
/// as updates (an accepted schema drift or a resync re-sends every row in its current shape).
pub fn step(source: Option<(&[u8], &RowHash)>, staging: Option<(&[u8], &RowHash)>, force: bool) -> Step {
    match (source, staging) {
        (None, None) => Step::Done,
        (Some(_), None) => Step::Insert,
        (None, Some(_)) => Step::Delete,
        (Some((sk, sh)), Some((gk, gh))) => match sk.cmp(gk) {
            Ordering::Less => Step::Insert,
            Ordering::Greater => Step::Delete,
            Ordering::Equal if sh != gh || force => Step::Update,
            Ordering::Equal => Step::Unchanged,
        },
    }
}

/// Why a source's key sequence cannot be diffed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// Two rows share a key.
    #[error("duplicate key {key} in the source: key columns must identify one row")]
    Duplicate {
        /// The key, rendered as JSON.
        key: String,
    },
    /// Keys went backwards: the source's collation does not match binary order.
    #[error("source returned key {key} after a greater key: its ORDER BY does not follow binary key order (check the collation of the key columns)")]
    OutOfOrder {
        /// The key, rendered as JSON.
        key: String,
    },
}

/// Checks that `next` follows `prev` strictly; `render` formats the key for the error only.
pub fn check_order(prev: &[u8], next: &[u8], render: impl FnOnce() -> String) -> Result<(), OrderError> {
    match prev.cmp(next) {
        Ordering::Less => Ok(()),
        Ordering::Equal => Err(OrderError::Duplicate { key: render() }),
        Ordering::Greater => Err(OrderError::OutOfOrder { key: render() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the rules over two sorted lists, as the snapshot stage does over two streams.
    fn run(source: &[(u8, u8)], staging: &[(u8, u8)], force: bool) -> Vec<(Step, u8)> {
        let (mut i, mut j, mut out) = (0, 0, Vec::new());
        loop {
            let s = source.get(i).map(|(k, h)| ([*k], [*h; 16]));
            let g = staging.get(j).map(|(k, h)| ([*k], [*h; 16]));
            let st = step(
                s.as_ref().map(|(k, h)| (&k[..], h)),
                g.as_ref().map(|(k, h)| (&k[..], h)),
                force,
            );
            match st {
                Step::Done => return out,
                Step::Insert => {
                    out.push((st, source[i].0));
                    i += 1
                }
                Step::Delete => {
                    out.push((st, staging[j].0));
                    j += 1
                }
                Step::Update | Step::Unchanged => {
                    out.push((st, source[i].0));
                    i += 1;
                    j += 1
                }
            }
        }
    }

    #[test]
    fn classifies_every_case() {
        let source = [(1, 1), (2, 9), (4, 4), (6, 6)];
        let staging = [(2, 2), (3, 3), (4, 4), (7, 7)];
        assert_eq!(
            run(&source, &staging, false),
            vec![
                (Step::Insert, 1),
                (Step::Update, 2),
                (Step::Delete, 3),
                (Step::Unchanged, 4),
                (Step::Insert, 6),
                (Step::Delete, 7)
            ]
        );
        assert_eq!(run(&[], &[], false), vec![]);
        assert_eq!(run(&[], &[(1, 1)], false), vec![(Step::Delete, 1)]);
        assert_eq!(run(&[(1, 1)], &[], false), vec![(Step::Insert, 1)]);
        assert_eq!(run(&[(1, 1)], &[(1, 1)], true), vec![(Step::Update, 1)]);
    }

    #[test]
    fn order_violations_are_named() {
        assert!(check_order(b"a", b"b", || unreachable!()).is_ok());
        let e = check_order(b"b", b"b", || "[2]".into()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "duplicate key [2] in the source: key columns must identify one row"
        );
        assert!(matches!(
            check_order(b"c", b"b", || "x".into()),
            Err(OrderError::OutOfOrder { .. })
        ));
    }

    #[test]
    fn op_codes_round_trip() {
        for op in [Op::Insert, Op::Update, Op::Delete] {
            assert_eq!(Op::from_code(op.code()), Some(op));
        }
        assert_eq!(Op::from_code(9), None);
    }
}
