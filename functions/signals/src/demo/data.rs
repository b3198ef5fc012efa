//! The demo source: three tables of mixed types (one with a composite key), and a mutation of
//! about 1% of rows between the initial and the interval sync.

use rusqlite::{params, Connection};
use std::path::Path;

const FIRST: &[&str] = &[
    "Zoë",
    "José",
    "Ōsaka",
    "李",
    "Ærin",
    "Mårten",
    "Ñandú",
    "Øyvind",
    "Chloé",
    "Dmitrий",
    "Ada",
    "O'Brien",
];
const LAST: &[&str] = &[
    "Müller",
    "González",
    "van der Berg",
    "Nakamura",
    "Smith",
    "Dubois",
    "Kowalski",
    "Ødegaard",
    "\"Quoted\"",
    "Tab\tSeparated",
];
const COUNTRIES: &[&str] = &["NL", "DE", "JP", "BR", "US", "FR", "NO", "CN"];
const STATUSES: &[&str] = &["new", "paid", "shipped", "cancelled", "returned"];

/// Row counts of the demo tables.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// customers rows.
    pub customers: i64,
    /// orders rows.
    pub orders: i64,
    /// order_lines orders (each has 1-3 lines).
    pub line_orders: i64,
}

impl Sizes {
    /// Sizes scaled so the three tables hold about `total` rows.
    pub fn for_total(total: i64) -> Sizes {
        Sizes {
            customers: total * 3 / 10,
            orders: total * 4 / 10,
            line_orders: total * 3 / 20,
        }
    }
}

fn ts(i: i64) -> String {
    let offset: i64 = [0, 60, -300, 330, 120][(i % 5) as usize];
    let (oh, om) = (offset / 60, (offset % 60).abs());
    let day = 1 + i % 28;
    let month = 1 + (i / 28) % 12;
    format!(
        "2025-{month:02}-{day:02} {:02}:{:02}:{:02}.{:06}{:+03}:{om:02}",
        i % 24,
        i % 60,
        (i * 7) % 60,
        (i * 7919) % 1_000_000,
        oh
    )
}

fn customer(c: &Connection, i: i64, salt: i64) -> rusqlite::Result<usize> {
    let name = format!("{} {}", FIRST[(i % 12) as usize], LAST[((i + salt) % 10) as usize]);
    let notes: Option<String> = (i % 7 != 0).then(|| format!("note {i}/{salt}: ünïcödé ✓ — line\nbreak"));
    let avatar: Option<Vec<u8>> =
        (i % 5 == 0).then(|| (0..(i % 64) as u8).map(|b| b.wrapping_mul(31) ^ salt as u8).collect());
    c.execute(
        "INSERT OR REPLACE INTO customers VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            i,
            name,
            format!("user{i}@example.com"),
            COUNTRIES[(i % 8) as usize],
            format!("{}.{:02}", (i * 37 + salt) % 100_000 - 5_000, (i + salt) % 100),
            (i + salt) % 3 == 0,
            ts(i + salt),
            notes,
            avatar
        ],
    )
}

fn order(c: &Connection, i: i64, customers: i64, salt: i64) -> rusqlite::Result<usize> {
    let discount: Option<f64> = (i % 4 == 0).then(|| ((i + salt) % 50) as f64 / 3.0);
    let shipped: Option<String> = (i % 3 != 0).then(|| format!("2025-{:02}-{:02}", 1 + i % 12, 1 + (i + salt) % 28));
    c.execute(
        "INSERT OR REPLACE INTO orders VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            i,
            1 + (i * 7) % customers.max(1),
            ts(i * 3 + salt),
            format!("{}.{:02}", (i * 13 + salt) % 20_000, (i * 7) % 100),
            STATUSES[((i + salt) % 5) as usize],
            discount,
            shipped
        ],
    )
}

fn line(c: &Connection, order: i64, line: i64, salt: i64) -> rusqlite::Result<usize> {
    c.execute(
        "INSERT OR REPLACE INTO order_lines VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            order,
            line,
            format!(
                "SKU-{:05}-{}",
                (order * 31 + line) % 99_991,
                ["A", "ß", "Ω"][(line % 3) as usize]
            ),
            1 + (order + line + salt) % 9,
            format!("{}.{:04}", (order + line) % 500, (order * line + salt) % 10_000),
            vec![(order % 256) as u8, 0, (line + salt) as u8, 255]
        ],
    )
}

/// Creates the source database (replacing any old one).
pub fn create(path: &Path, sizes: Sizes) -> rusqlite::Result<i64> {
    let _ = std::fs::remove_file(path);
    let mut c = Connection::open(path)?;
    c.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email VARCHAR(120), country CHAR(2),
             balance DECIMAL(12,2), vip BOOLEAN, created_at TIMESTAMPTZ, notes TEXT, avatar BLOB);
         CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id BIGINT NOT NULL, ordered_at TIMESTAMPTZ,
             total DECIMAL(14,2), status VARCHAR(20), discount DOUBLE, shipped_on DATE);
         CREATE TABLE order_lines (order_id INTEGER NOT NULL, line_no INTEGER NOT NULL, sku TEXT,
             qty INTEGER, unit_price DECIMAL(10,4), payload BLOB, PRIMARY KEY (order_id, line_no)) WITHOUT ROWID;",
    )?;
    let tx = c.transaction()?;
    let mut rows = 0;
    for i in 1..=sizes.customers {
        rows += customer(&tx, i, 0)? as i64;
    }
    for i in 1..=sizes.orders {
        rows += order(&tx, i, sizes.customers, 0)? as i64;
    }
    for o in 1..=sizes.line_orders {
        for l in 1..=(1 + o % 3) {
            rows += line(&tx, o, l, 0)? as i64;
        }
    }
    tx.commit()?;
    Ok(rows)
}

/// What a mutation did, per kind.
#[derive(Debug, Default, Clone, Copy)]
pub struct Mutation {
    /// Rows inserted.
    pub inserts: i64,
    /// Rows updated.
    pub updates: i64,
    /// Rows deleted.
    pub deletes: i64,
}

/// Updates ~1%, inserts ~0.5% and deletes ~0.5% of each table.
pub fn mutate(path: &Path, sizes: Sizes) -> rusqlite::Result<Mutation> {
    let mut c = Connection::open(path)?;
    let tx = c.transaction()?;
    let mut m = Mutation::default();
    for i in (1..=sizes.customers).step_by(100) {
        m.updates += customer(&tx, i, 1)? as i64;
    }
    for i in (50..=sizes.customers).step_by(200) {
        m.deletes += tx.execute("DELETE FROM customers WHERE id = ?1", [i])? as i64;
    }
    for i in 1..=sizes.customers / 200 {
        m.inserts += customer(&tx, sizes.customers + i, 2)? as i64;
    }
    for i in (3..=sizes.orders).step_by(100) {
        m.updates += order(&tx, i, sizes.customers, 1)? as i64;
    }
    for i in (77..=sizes.orders).step_by(200) {
        m.deletes += tx.execute("DELETE FROM orders WHERE id = ?1", [i])? as i64;
    }
    for i in 1..=sizes.orders / 200 {
        m.inserts += order(&tx, sizes.orders + i, sizes.customers, 2)? as i64;
    }
    for o in (5..=sizes.line_orders).step_by(100) {
        m.updates += line(&tx, o, 1, 3)? as i64;
    }
    for o in (9..=sizes.line_orders).step_by(100) {
        m.deletes += tx.execute("DELETE FROM order_lines WHERE order_id = ?1 AND line_no = 1", [o])? as i64;
        m.inserts += line(&tx, o, 9, 4)? as i64;
    }
    tx.commit()?;
    Ok(m)
}
