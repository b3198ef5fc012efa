//! Microsoft SQL Server (and Azure SQL Database) over tiberius: connection strings, a small
//! pool, type mapping and the source. Nothing here can be run against a server on our own
//! machines; what can be checked without one is unit-tested, and the rest runs in the backend
//! suites when `SIGNALS_TEST_MSSQL` holds a connection string (docs/sqlserver.md).

pub mod conn_str;
pub mod errors;
pub mod ident;
pub mod pool;
pub mod pushdown;
pub mod source;
pub mod split;
pub mod sql;
pub mod store;
pub mod tracking;
pub mod types;

/// Whether a connection string is an ADO.NET SQL Server one (`Server=…;…`).
pub fn is_mssql(s: &str) -> bool {
    let head = s.trim_start().to_ascii_lowercase();
    ["server=", "data source=", "address=", "addr=", "network address="]
        .iter()
        .any(|k| head.starts_with(k) || head.replace(' ', "").starts_with(&k.replace(' ', "")))
}
