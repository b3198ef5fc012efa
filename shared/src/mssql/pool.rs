//! Connections and a small pool. The bb8/deadpool adapters on crates.io target tiberius 0.12,
//! and a pool here needs little: a cap on open connections, idle ones reused, and a connection
//! handed back only when its user says it is clean — a statement's stream dropped half read
//! leaves unread tokens on the wire, so anything not explicitly released is closed instead.

use super::conn_str::{Auth, ConnSpec, Encrypt};
use super::errors::{describe, Class};
use crate::secrets::resolve;
use std::sync::{Arc, Mutex};
use tiberius::{AuthMethod, Client, Config, EncryptionLevel, SqlBrowser};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

/// A connection.
pub type Conn = Client<Compat<TcpStream>>;

/// Why no connection could be had: its class and an operator's message (no credential).
#[derive(Debug, Clone)]
pub struct ConnectError {
    /// The class (decides retrying).
    pub class: Class,
    /// What happened, naming the server.
    pub detail: String,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

fn config(spec: &ConnSpec) -> Result<Config, ConnectError> {
    let mut c = Config::new();
    c.host(&spec.host);
    if let Some(p) = spec.port {
        c.port(p);
    }
    if let Some(i) = &spec.instance {
        c.instance_name(i);
    }
    if let Some(d) = &spec.database {
        c.database(d);
    }
    c.application_name(&spec.application_name);
    c.readonly(spec.read_only);
    c.command_timeout(spec.command_timeout);
    c.handshake_timeout(Some(spec.connect_timeout));
    c.encryption(match spec.encrypt {
        Encrypt::LoginOnly => EncryptionLevel::Off,
        Encrypt::Required => EncryptionLevel::Required,
        Encrypt::Strict => EncryptionLevel::Strict,
    });
    if spec.trust_server_certificate {
        c.trust_cert();
    }
    c.authentication(match &spec.auth {
        Auth::Sql { user, password } => AuthMethod::sql_server(user, password.expose()),
        // Read on every connect: a workload-identity token file is rewritten before expiry.
        Auth::AccessToken(r) => AuthMethod::aad_token(
            resolve(r)
                .map_err(|e| ConnectError {
                    class: Class::LoginFailed,
                    detail: format!("{}: access token: {e}", spec.describe()),
                })?
                .expose(),
        ),
    });
    Ok(c)
}

/// Opens one connection (TCP, TLS, login), following an Azure SQL gateway redirect once, all
/// within the connect timeout.
pub async fn open(spec: &ConnSpec) -> Result<Conn, ConnectError> {
    let fail = |e: &tiberius::error::Error| {
        let (class, detail) = describe(e);
        ConnectError {
            class,
            detail: format!("{}: {detail}", spec.describe()),
        }
    };
    let attempt = async {
        let mut cfg = config(spec)?;
        for _redirect in 0..2 {
            let tcp = if spec.instance.is_some() && spec.port.is_none() {
                TcpStream::connect_named(&cfg).await.map_err(|e| fail(&e))?
            } else {
                TcpStream::connect(cfg.get_addr()).await.map_err(|e| {
                    fail(&tiberius::error::Error::Io {
                        kind: e.kind(),
                        message: e.to_string(),
                    })
                })?
            };
            let _ = tcp.set_nodelay(true);
            match Client::connect(cfg.clone(), tcp.compat_write()).await {
                Ok(c) => return Ok(c),
                Err(tiberius::error::Error::Routing { host, port }) => {
                    cfg.host(host);
                    cfg.port(port);
                }
                Err(e) => return Err(fail(&e)),
            }
        }
        Err(ConnectError {
            class: Class::Unreachable,
            detail: format!("{}: redirected more than once", spec.describe()),
        })
    };
    match tokio::time::timeout(spec.connect_timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError {
            class: Class::Timeout,
            detail: format!(
                "{}: timed out: no login within {} s (Connect Timeout)",
                spec.describe(),
                spec.connect_timeout.as_secs()
            ),
        }),
    }
}

/// Session settings every connection gets: standard ANSI behaviour (as ADO.NET sets it), no
/// truncation of large text, and a bounded wait for locks.
const SESSION: &str = "SET ANSI_NULLS ON; SET ANSI_PADDING ON; SET ANSI_WARNINGS ON; SET ARITHABORT ON; \
                       SET CONCAT_NULL_YIELDS_NULL ON; SET QUOTED_IDENTIFIER ON; SET NUMERIC_ROUNDABORT OFF; \
                       SET TEXTSIZE 2147483647; SET LOCK_TIMEOUT 30000; SET XACT_ABORT ON";

struct Shared {
    spec: ConnSpec,
    idle: Mutex<Vec<Conn>>,
    permits: Arc<Semaphore>,
    max: usize,
    /// How long `get` waits for a connection to come free; `None` queues for as long as it takes.
    wait: Option<std::time::Duration>,
}

/// A bounded set of connections to one server and database.
#[derive(Clone)]
pub struct Pool(Arc<Shared>);

impl Pool {
    /// A pool of at most `max` connections (`Max Pool Size` in the string wins).
    pub fn new(spec: ConnSpec, max: usize) -> Pool {
        Pool::waiting(spec, max, None)
    }

    /// Like [`Pool::new`], where a caller that finds every connection in use for `wait` gets an
    /// error instead (the store's pool: `backends::STORE_WAIT` says why).
    pub fn waiting(spec: ConnSpec, max: usize, wait: Option<std::time::Duration>) -> Pool {
        let max = spec.max_pool_size.unwrap_or(max).max(1);
        Pool(Arc::new(Shared {
            spec,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(max)),
            max,
            wait,
        }))
    }

    /// Where it connects (no credential).
    pub fn describe(&self) -> String {
        self.0.spec.describe()
    }

    /// An idle connection or a new one, waiting while `max` are in use.
    pub async fn get(&self) -> Result<Pooled, ConnectError> {
        let acquire = self.0.permits.clone().acquire_owned();
        let acquired = match self.0.wait {
            None => acquire.await,
            Some(wait) => tokio::time::timeout(wait, acquire).await.map_err(|_| ConnectError {
                class: Class::Timeout,
                detail: format!(
                    "{}: {}",
                    self.0.spec.describe(),
                    crate::backends::pool_exhausted(wait, self.0.max)
                ),
            })?,
        };
        let permit = acquired.map_err(|_| ConnectError {
            class: Class::Other,
            detail: "connection pool closed".into(),
        })?;
        let idle = self.0.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match idle {
            Some(c) => c,
            None => {
                let mut c = open(&self.0.spec).await?;
                c.simple_query(SESSION)
                    .await
                    .map_err(|e| ConnectError {
                        class: describe(&e).0,
                        detail: format!("{}: session settings: {}", self.0.spec.describe(), describe(&e).1),
                    })?
                    .into_results()
                    .await
                    .map_err(|e| ConnectError {
                        class: describe(&e).0,
                        detail: format!("{}: session settings: {}", self.0.spec.describe(), describe(&e).1),
                    })?;
                c
            }
        };
        Ok(Pooled {
            conn: Some(conn),
            pool: self.0.clone(),
            _permit: permit,
        })
    }
}

/// A connection on loan; closed on drop unless [`Pooled::release`]d.
pub struct Pooled {
    conn: Option<Conn>,
    pool: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
}

impl Pooled {
    /// The connection.
    pub fn conn(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("present until released")
    }

    /// Hands the connection back for reuse: every result of it has been read to the end.
    pub fn release(mut self) {
        if let Some(c) = self.conn.take() {
            self.pool.idle.lock().unwrap_or_else(|p| p.into_inner()).push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_caller_that_finds_every_connection_in_use_is_told_so_in_time() {
        let spec = ConnSpec::parse("Server=127.0.0.1,1;Database=erp;User Id=sa;Password=s3cret-value").unwrap();
        let pool = Pool::waiting(spec, 1, Some(std::time::Duration::from_millis(100)));
        // The one connection's permit, held as a job holding it would.
        let _held = pool.0.permits.clone().acquire_owned().await.unwrap();
        let e = tokio::time::timeout(std::time::Duration::from_secs(10), pool.get())
            .await
            .expect("the wait is bounded")
            .err()
            .expect("no connection");
        assert_eq!(e.class, Class::Timeout);
        assert!(
            e.detail.contains("127.0.0.1")
                && e.detail
                    .contains("no connection came free within 0.1s: all 1 of this host's connections"),
            "{}",
            e.detail
        );
        assert!(!e.detail.contains("s3cret-value"), "{}", e.detail);
    }
}
