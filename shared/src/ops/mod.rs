//! Operator actions on the store that cross stages: dropping dead letters (and scheduling the
//! repair that leaves no destination knowingly behind), and reconciliation with a destination.

pub mod drop;
pub mod reconcile;
pub mod repair;
pub mod resync;
pub mod retry;
