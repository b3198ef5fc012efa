//! PostgreSQL connection pools fail in time and say why: a host whose connections all stay in
//! use, and a database that takes a connection but never answers, are errors naming the wait —
//! not a job that hangs for ever (or until the kernel gives up on the socket) saying nothing.

use signals_shared::postgres::pool::{pool_failure, pool_with, Limits};
use signals_tests::pg_url;
use std::time::{Duration, Instant};

/// The pool's own bound or this test's, whichever comes first: without one the test would hang
/// rather than fail.
async fn bounded<T>(get: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), get)
        .await
        .expect("the pool gave no answer within 10 s: it waits without a bound")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_caller_that_finds_every_connection_in_use_is_told_so_in_time() {
    let limits = Limits {
        connections: 1,
        wait: Some(Duration::from_millis(300)),
        ..Limits::queueing(1)
    };
    let pool = pool_with(&pg_url(), limits).expect("pool");
    let held = pool.get().await.expect("the one connection");
    let started = Instant::now();
    let e = bounded(pool.get()).await.expect_err("no second connection");
    let waited = started.elapsed();
    let msg = pool_failure(&pool, e);
    assert!(
        msg.contains("no connection came free within 0.3s") && msg.contains("all 1 of this host's connections"),
        "{msg}"
    );
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    // The connection held was not harmed, and once given back the next caller has it.
    held.simple_query("SELECT 1").await.expect("the held connection works");
    drop(held);
    let back = pool.get().await.expect("the connection came back");
    back.simple_query("SELECT 1").await.expect("it works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_database_that_never_answers_fails_the_connect_in_time_without_the_password() {
    // Takes the TCP connection and never answers the startup message: what a stuck server, a
    // half-open firewall or the wrong service on the port looks like to the client.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("listener");
    let port = silent.local_addr().expect("address").port();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            sockets.push(s);
        }
    });
    let url = format!("postgres://signals:s3cret-value@127.0.0.1:{port}/postgres");
    let limits = Limits {
        connect: Duration::from_millis(500),
        ..Limits::queueing(2)
    };
    let pool = pool_with(&url, limits).expect("pool");
    let started = Instant::now();
    let e = bounded(pool.get()).await.expect_err("nothing answers");
    let waited = started.elapsed();
    let msg = pool_failure(&pool, e);
    assert!(msg.contains("did not complete a connection within 0.5s"), "{msg}");
    assert!(!msg.contains("s3cret-value"), "{msg}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    held.abort();
}
