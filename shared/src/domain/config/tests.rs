//! Config parsing and validation tests.
use super::*;

const GOOD: &str = r#"
[destinations.platform]
url = "https://push.example.com"
auth = { bearer = { token = "env:PUSH_TOKEN" } }

[tenants.acme]
destination = "platform"
reports = { sales = ["orders", "customers"], stock = ["customers", "products"] }

[tenants.acme.connections.erp]
url = "env:ACME_ERP_URL"

[tenants.acme.sources.orders]
connection = "erp"
table = "dbo.orders"
key = ["id"]

[tenants.acme.sources.customers]
connection = "erp"
table = "customers"
key = ["id"]
interval_secs = 60

[tenants.acme.sources.products]
connection = "erp"
query = "SELECT * FROM products WHERE active = 1"
key = ["sku", "site"]
"#;

#[test]
fn parses_and_applies_defaults() {
    let c = Config::parse(GOOD, "good.toml").unwrap();
    let d = &c.destinations["platform"];
    assert_eq!(d.batch_max_rows, 5_000);
    assert_eq!(c.tenants["acme"].sources["orders"].interval_secs, 300);
    let srcs = c
        .sources_for_reports("acme", &["sales".into(), "stock".into()], 1)
        .unwrap();
    assert_eq!(srcs, vec!["customers", "orders", "products"]);
}

#[test]
fn errors_name_file_tenant_source_and_field() {
    let bad = GOOD
        .replace(
            "connection = \"erp\"\ntable = \"customers\"",
            "connection = \"crm\"\ntable = \"customers\"",
        )
        .replace("key = [\"sku\", \"site\"]", "key = []");
    let err = Config::parse(&bad, "acme.toml").unwrap_err().to_string();
    assert!(err.starts_with("acme.toml: invalid configuration"), "{err}");
    assert!(
        err.contains("tenant `acme`, data source `customers`, field `connection`: no connection `crm`"),
        "{err}"
    );
    assert!(
        err.contains("tenant `acme`, data source `products`, field `key`"),
        "{err}"
    );
}

#[test]
fn a_stalled_run_is_one_quiet_for_several_heartbeats_or_never() {
    assert_eq!(
        Config::parse(GOOD, "good.toml").unwrap().recovery.stalled_after_secs,
        1_800
    );
    for (secs, ok) in [(0, true), (300, true), (86_400, true), (299, false), (60, false)] {
        let text = format!("{GOOD}\n[recovery]\nstalled_after_secs = {secs}\n");
        match Config::parse(&text, "r.toml") {
            Ok(c) => assert!(ok && c.recovery.stalled_after_secs == secs, "{secs} accepted"),
            Err(e) => {
                let e = e.to_string();
                assert!(!ok, "{secs} refused: {e}");
                assert!(
                    e.contains("recovery, field `stalled_after_secs`: must be 0 (never) or at least 300"),
                    "{e}"
                );
            }
        }
    }
}

#[test]
fn heavy_hours_wrap_midnight() {
    assert_eq!(parse_hours("22-6"), Some((22, 6)));
    assert!(in_window(23, (22, 6)) && in_window(3, (22, 6)) && !in_window(12, (22, 6)));
    assert!(in_window(9, (8, 18)) && !in_window(18, (8, 18)));
    assert_eq!(parse_hours("25-3"), None);
    assert_eq!(parse_hours("night"), None);
}

#[test]
fn watermark_needs_its_column_and_remote_hash_a_server() {
    let bad = GOOD.replace("table = \"dbo.orders\"", "table = \"dbo.orders\"\ndiff = \"watermark\"");
    let err = Config::parse(&bad, "x.toml").unwrap_err().to_string();
    assert!(err.contains("data source `orders`, field `watermark_column`"), "{err}");
}

#[test]
fn change_tracking_reads_a_table_of_a_server() {
    let ok = GOOD.replace(
        "table = \"dbo.orders\"",
        "table = \"dbo.orders\"\ndiff = \"change_tracking\"",
    );
    let c = Config::parse(&ok, "x.toml").unwrap();
    assert_eq!(c.source("acme", "orders", 1).unwrap().diff, DiffMode::ChangeTracking);
    let on_query = GOOD.replace(
        "key = [\"sku\", \"site\"]",
        "key = [\"sku\", \"site\"]\ndiff = \"change_tracking\"",
    );
    let err = Config::parse(&on_query, "x.toml").unwrap_err().to_string();
    assert!(
        err.contains("data source `products`, field `diff`: `change_tracking` reads a table"),
        "{err}"
    );
    let on_sqlite = ok.replace("url = \"env:ACME_ERP_URL\"", "sqlite_path = \"erp.db\"");
    let err = Config::parse(&on_sqlite, "x.toml").unwrap_err().to_string();
    assert!(
        err.contains("`change_tracking` needs a server source (SQL Server)"),
        "{err}"
    );
}

#[test]
fn unknown_fields_and_bad_secret_refs_are_refused() {
    let err = Config::parse(&GOOD.replace("interval_secs = 60", "interval = 60"), "x.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `interval`"), "{err}");
    let err = Config::parse(
        &GOOD.replace("env:ACME_ERP_URL", "Server=db;Password=hunter2"),
        "x.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("secret reference"), "{err}");
    assert!(!err.contains("hunter2"), "a secret value leaked into an error: {err}");
}
