//! Helpers for tests of the PostgreSQL store itself, beside what a worker does through the ports.

use crate::{create_items, items_source, Harness, StoreKind};

/// A harness on a PostgreSQL store with 3,000 items configured in chunks of 1,000.
pub async fn postgres_with_items() -> Harness {
    let h = Harness::on(StoreKind::Postgres).await;
    create_items(&h.src(), 3_000);
    h.apply(&h.config(&items_source(1_000))).await;
    h
}

/// A connection of its own to the harness's PostgreSQL store, as another build's worker has.
pub async fn store_client(h: &Harness) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(&h.store_spec, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c
}
