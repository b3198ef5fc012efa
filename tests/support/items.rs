//! The `items` table most tests sync, and its data source's configuration.

use super::Harness;
use rusqlite::Connection;
use std::path::PathBuf;

/// Creates `items(id INTEGER PRIMARY KEY, name TEXT, price DECIMAL(10,2), at TIMESTAMPTZ, flag BOOLEAN, data BLOB)`
/// with `n` rows.
pub fn create_items(conn: &Connection, n: i64) {
    conn.execute_batch(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price DECIMAL(10,2), at TIMESTAMPTZ, flag BOOLEAN, data BLOB)",
    )
    .expect("create items");
    let tx = conn.unchecked_transaction().expect("tx");
    for i in 1..=n {
        tx.execute(
            "INSERT INTO items VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            rusqlite::params![
                i,
                if i % 10 == 0 {
                    None
                } else {
                    Some(format!("item {i} ✓"))
                },
                format!("{}.{:02}", i % 1000, i % 100),
                format!("2025-03-{:02}T10:00:00.5+02:00", 1 + i % 28),
                i % 2 == 0,
                vec![i as u8, 0, 255]
            ],
        )
        .expect("insert");
    }
    tx.commit().expect("commit");
}

/// `[tenants.t.sources.items]` reading table `items`, chunked every `chunk_rows`.
pub fn items_source(chunk_rows: u64) -> String {
    format!("[tenants.t.sources.items]\nconnection = \"db\"\ntable = \"items\"\nkey = [\"id\"]\ninterval_secs = 1\nchunk_rows = {chunk_rows}\n")
}

/// Updates, inserts and deletes a few rows of `items`.
pub fn mutate_items(conn: &Connection, n: i64) {
    conn.execute_batch(&format!(
        "UPDATE items SET name = name || ' (edited)' WHERE id % 97 = 0;
         DELETE FROM items WHERE id % 89 = 0;
         INSERT INTO items SELECT id + {n}, 'new ' || id, '1.50', '2026-01-01T00:00:00+00:00', 1, NULL FROM items WHERE id <= 25;"
    ))
    .expect("mutate");
}

/// Sources for tenant `t`: `items` (1,000-row chunks) and `poison`, whose database file does not
/// exist yet (its jobs fail, retryably, until it does). Returns the TOML and that file's path.
pub fn items_and_a_poison_source(h: &Harness) -> (String, PathBuf) {
    let missing = h.dir.path().join("later.db");
    let sources = format!(
        "{}\n[tenants.t.connections.later]\nsqlite_path = \"{}\"\n\n\
         [tenants.t.sources.poison]\nconnection = \"later\"\ntable = \"items\"\nkey = [\"id\"]\n",
        items_source(1_000),
        missing.display()
    );
    (sources, missing)
}
