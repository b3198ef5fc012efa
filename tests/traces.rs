//! One trace per run across every stage and every host: two worker processes (scheduler and
//! snapshot in one, merge, batch and push in the other) export spans over OTLP/HTTP protobuf to an
//! in-process collector; the run's spans form one tree that covers every stage, with source read,
//! bulk write, merge and each batch push (HTTP status, request id), and the JSON logs carry the
//! trace id.

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use signals_tests::{cli_onboard, create_items, items_source, terminate, Harness, StoreKind};
use std::collections::{BTreeMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_signals-under-test");

/// A span as the collector received it.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    trace: String,
    id: String,
    parent: String,
    name: String,
    attrs: BTreeMap<String, String>,
}

type Spans = Arc<Mutex<Vec<Got>>>;

async fn collect(State(spans): State<Spans>, body: Bytes) -> &'static str {
    let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
    let mut out = spans.lock().unwrap();
    for rs in req.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
            .unwrap_or_default();
        for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
            out.push(Got {
                service: service.clone(),
                trace: hex(&span.trace_id),
                id: hex(&span.span_id),
                parent: hex(&span.parent_span_id),
                name: span.name,
                attrs: span
                    .attributes
                    .iter()
                    .map(|kv| (kv.key.clone(), text(kv.value.as_ref().and_then(|v| v.value.as_ref()))))
                    .collect(),
            });
        }
    }
    ""
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn text(v: Option<&AnyValue>) -> String {
    match v {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

fn spawn_worker(h: &Harness, stages: &str, endpoint: &str, log: &std::path::Path) -> Child {
    Command::new(BIN)
        .args([
            "--store",
            &h.store_spec,
            "worker",
            "--stages",
            stages,
            "--lease-secs",
            "5",
        ])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_SERVICE_NAME", format!("worker-{stages}"))
        .env("SIGNALS_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("spawn worker")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_one_trace_across_stages_and_hosts() {
    let spans: Spans = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/v1/traces", post(collect))
        .with_state(spans.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let h = Harness::on(StoreKind::Sqlite).await;
    create_items(&h.src(), 2_500);
    cli_onboard(BIN, &h, &h.config(&items_source(1_000)));
    let (a_log, b_log) = (h.dir.path().join("a.log"), h.dir.path().join("b.log"));
    let a = spawn_worker(&h, "scheduler,snapshot", &endpoint, &a_log);
    let b = spawn_worker(&h, "merge,batch,push", &endpoint, &b_log);
    let started = Instant::now();
    let run = loop {
        let runs = h.runs().await;
        if runs.len() == 1 && runs[0].display_state() == "done" && h.store.depth(&[]).await.unwrap().0 == 0 {
            break runs[0].clone();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "sync not done: {runs:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    h.assert_in_sync().await;
    // Draining on SIGTERM flushes each process's buffered spans.
    terminate(a);
    terminate(b);

    let spans = spans.lock().unwrap().clone();
    let of_run: Vec<&Got> = spans.iter().filter(|s| s.attrs.get("run") == Some(&run.id)).collect();
    let traces: HashSet<&str> = of_run.iter().map(|s| s.trace.as_str()).collect();
    assert_eq!(
        traces.len(),
        1,
        "every span naming the run is in one trace: {of_run:#?}"
    );
    let trace = *traces.iter().next().unwrap();
    let tree: Vec<&Got> = spans.iter().filter(|s| s.trace == trace).collect();
    let ids: HashSet<&str> = tree.iter().map(|s| s.id.as_str()).collect();
    let roots: Vec<&&Got> = tree.iter().filter(|s| !ids.contains(s.parent.as_str())).collect();
    assert_eq!(
        roots.len(),
        1,
        "one root, every other span's parent is in the trace: {roots:#?}"
    );
    assert_eq!((roots[0].name.as_str(), roots[0].parent.as_str()), ("run", ""));

    let count = |name: &str| tree.iter().filter(|s| s.name == name).count();
    assert_eq!(count("snapshot"), 4, "plan and three chunk jobs");
    assert_eq!(
        (count("merge"), count("batch")),
        (0, 0),
        "an initial run's chunks number and cut their own batches (decision 0025)"
    );
    assert_eq!(count("push") as i64, run.batches_total);
    assert_eq!(count("source.read"), 3, "one read per chunk");
    assert!(count("store.commit_step") >= 3, "at least one commit per chunk");
    assert_eq!((count("store.merge"), count("batch.cut")), (0, 0));
    let pushes: Vec<&&Got> = tree.iter().filter(|s| s.name == "push.batch").collect();
    assert_eq!(pushes.len() as i64, run.batches_total);
    for p in &pushes {
        assert_eq!(
            p.attrs.get("http.response.status_code").map(String::as_str),
            Some("200"),
            "{p:?}"
        );
        assert!(
            p.attrs.get("request_id").is_some_and(|r| r.starts_with("rcv-")),
            "{p:?}"
        );
    }
    let reads: i64 = tree
        .iter()
        .filter(|s| s.name == "source.read")
        .map(|s| s.attrs["rows_read"].parse::<i64>().unwrap())
        .sum();
    assert_eq!(reads, 2_500);
    // Both hosts took part in the one trace.
    let services: HashSet<&str> = tree.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        services,
        HashSet::from(["worker-scheduler,snapshot", "worker-merge,batch,push"]),
        "{tree:#?}"
    );

    // The JSON logs of both workers carry the trace id.
    for log in [&a_log, &b_log] {
        let text = std::fs::read_to_string(log).unwrap();
        assert!(
            text.lines().any(|l| l.starts_with('{') && l.contains(trace)),
            "no log line of {} carries trace {trace}",
            log.display()
        );
    }
}
