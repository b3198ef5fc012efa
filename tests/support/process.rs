//! Child processes and loopback HTTP for the tests that run the shipped binaries and services:
//! free ports, waiting for a listener, SIGTERM with a clean-exit check, kill on drop.

use std::process::Child;
use std::time::Duration;

/// A child process killed (and reaped) when the test is done with it, even on panic.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits up to 30 s for something to listen on `port`.
pub fn wait_for_port(port: u16, what: &str) {
    for _ in 0..300 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} never listened on port {port}");
}

/// Sends SIGTERM and asserts the process drains and exits 0.
pub fn terminate(mut w: Child) {
    // SAFETY: kill(2) on a child pid we own.
    unsafe { libc::kill(w.id() as i32, libc::SIGTERM) };
    let status = w.wait().unwrap();
    assert!(
        status.success(),
        "a worker must exit 0 after draining on SIGTERM: {status}"
    );
}

/// One HTTP/1.0 exchange with `addr` (retried until it listens, up to 10 s); the whole response.
pub async fn http(addr: &str, request: &str) -> String {
    for _ in 0..100 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            s.write_all(request.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            return out;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("nothing listens on {addr}");
}

/// `GET path` over [`http`].
pub async fn http_get(addr: &str, path: &str) -> String {
    http(addr, &format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")).await
}
