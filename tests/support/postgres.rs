//! Helpers for tests of the PostgreSQL store itself, beside what a worker does through the ports,
//! and PostgreSQL source tables.

use crate::{create_items, items_source, pg_url, unique_schema, Harness, StoreKind};

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

/// A PostgreSQL schema for source tables, and a client to fill it.
pub struct PgSource {
    /// Client on the test server.
    pub client: tokio_postgres::Client,
    /// Unique schema name.
    pub schema: String,
    /// `file:` secret reference holding the connection URL.
    pub url_ref: String,
}

/// Drops a test's schema once the test has passed; a failed test's stays for whoever debugs it
/// (its `runs` table tells what happened). A thread of its own, because a `Drop` cannot await
/// on the test's runtime; and a lock timeout, because something of the test may still hold a
/// lock there (a worker process not yet killed): then the schema stays, as every one used to.
fn drop_schema_unless_failed(url: &str, schema: &str) {
    if std::thread::panicking() {
        return;
    }
    let (url, schema) = (url.to_owned(), schema.to_owned());
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.ok()?;
            tokio::spawn(conn);
            c.batch_execute(&format!(
                "SET lock_timeout = '3s'; DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
            ))
            .await
            .ok()
        })
    })
    .join();
}

impl PgSource {
    /// Creates a fresh schema on the test server.
    pub async fn new(h: &Harness) -> PgSource {
        let (client, conn) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL must be running on 127.0.0.1:5432 (user postgres, trust auth)");
        tokio::spawn(conn);
        let schema = unique_schema("sigsrc");
        client
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .expect("create schema");
        let path = h.dir.path().join(format!("{schema}.url"));
        std::fs::write(&path, pg_url()).expect("write url file");
        PgSource {
            client,
            schema,
            url_ref: format!("file:{}", path.display()),
        }
    }

    /// Runs SQL with `{s}` replaced by the schema.
    pub async fn exec(&self, sql: &str) {
        self.client
            .batch_execute(&sql.replace("{s}", &self.schema))
            .await
            .unwrap_or_else(|e| panic!("{e}: {sql}"));
    }

    /// A config with connection `db` on this PostgreSQL schema, and `sources` (with `{s}` replaced).
    pub fn config(&self, h: &Harness, sources: &str) -> String {
        format!(
            "[destinations.platform]\nurl = \"{}\"\nbatch_max_rows = 500\nmax_attempts = 3\nbackoff_base_ms = 10\nbackoff_cap_ms = 50\n\n\
             [tenants.t]\ndestination = \"platform\"\n\n[tenants.t.connections.db]\nurl = \"{}\"\n\n{}",
            h.url,
            self.url_ref,
            sources.replace("{s}", &self.schema)
        )
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if self.store_spec.starts_with("postgres") {
            drop_schema_unless_failed(&self.store_spec, &self.store_schema);
        }
    }
}

impl Drop for PgSource {
    fn drop(&mut self) {
        drop_schema_unless_failed(&pg_url(), &self.schema);
    }
}
