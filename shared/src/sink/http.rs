//! The Data Push API client: one POST per batch with `Idempotency-Key`; requests in flight bounded
//! per destination (adaptive) and per tenant; bodies gzip-compressed above a size; auth from
//! secret references (bearer, API-key header, basic resolved per request so rotation needs no
//! restart; mTLS identity loaded when the client is built); no redirects followed.

use super::limiter::Limiter;
use crate::domain::buffers::Buffer;
use crate::domain::config::{Auth, Destination};
use crate::domain::retry::{classify_status, parse_retry_after, StatusClass};
use crate::errors::PushError;
use crate::ports::{PushRequest, PushResponse, Pusher};
use crate::protocol::{ChecksumRequest, ChecksumResponse};
use crate::secrets::resolve;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// `User-Agent` naming the product and version.
pub const USER_AGENT: &str = concat!("signals-etl/", env!("CARGO_PKG_VERSION"));

/// Bytes of a response body kept in the ledger and dead letters.
const EXCERPT: usize = 512;

/// Pushes to one destination.
pub struct HttpPusher {
    client: reqwest::Client,
    url: String,
    auth: Option<Auth>,
    gzip_min_bytes: usize,
    limiter: Limiter,
    max_concurrency: usize,
    tenants: Mutex<HashMap<String, Arc<Semaphore>>>,
}

fn setup(e: impl std::fmt::Display) -> PushError {
    PushError::Setup(e.to_string())
}

impl HttpPusher {
    /// A client for the destination's URL, timeout, limits and auth.
    pub fn new(dest: &Destination) -> Result<HttpPusher, PushError> {
        let mut builder = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(Duration::from_millis(dest.timeout_ms))
            .connect_timeout(Duration::from_millis(dest.timeout_ms.min(10_000)))
            .pool_max_idle_per_host(dest.max_concurrency)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(Auth::Mtls { cert, key }) = &dest.auth {
            let mut pem = resolve(cert).map_err(setup)?.expose().as_bytes().to_vec();
            pem.push(b'\n');
            pem.extend_from_slice(resolve(key).map_err(setup)?.expose().as_bytes());
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|_| PushError::Setup("the mTLS certificate or key is not valid PEM".into()))?;
            builder = builder.identity(identity);
        }
        Ok(HttpPusher {
            client: builder.build().map_err(setup)?,
            url: format!("{}/v1/batches", dest.url.trim_end_matches('/')),
            auth: dest.auth.clone(),
            gzip_min_bytes: dest.gzip_min_bytes,
            limiter: Limiter::new(dest.max_concurrency),
            max_concurrency: dest.max_concurrency,
            tenants: Mutex::default(),
        })
    }

    fn tenant_slots(&self, tenant: &str, cap: Option<usize>) -> Arc<Semaphore> {
        let mut t = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        t.entry(tenant.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(cap.unwrap_or(self.max_concurrency).max(1))))
            .clone()
    }

    fn request(&self, req: &PushRequest<'_>) -> Result<reqwest::RequestBuilder, PushError> {
        let r = self
            .client
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", req.batch_id);
        // Kept buffers (`domain::buffers`), handed back when the client has sent them.
        let gzip = req.body.len() >= self.gzip_min_bytes;
        let out = match req.body.gzip() {
            // As the batch stage stored it: no second compression.
            Some(gz) if gzip => copied(gz),
            _ if gzip => crate::domain::packing::gzip(&req.body.json()?)?,
            _ => copied(&req.body.json()?),
        };
        let r = if gzip { r.header("Content-Encoding", "gzip") } else { r };
        let r = r.body(bytes::Bytes::from_owner(out));
        self.authorize(r)
    }

    /// Adds the credential, resolved now so a rotated secret takes effect without a restart.
    fn authorize(&self, r: reqwest::RequestBuilder) -> Result<reqwest::RequestBuilder, PushError> {
        Ok(match &self.auth {
            None | Some(Auth::Mtls { .. }) => r,
            Some(Auth::Bearer { token }) => r.bearer_auth(resolve(token).map_err(setup)?.expose()),
            Some(Auth::Header { name, value }) => r.header(name.as_str(), resolve(value).map_err(setup)?.expose()),
            Some(Auth::Basic { username, password }) => {
                r.basic_auth(username, Some(resolve(password).map_err(setup)?.expose()))
            }
        })
    }
}

/// `bytes` in a kept buffer, which the client hands back once it has sent them.
fn copied(bytes: &[u8]) -> Buffer {
    let mut out = Buffer::with_capacity(bytes.len());
    out.extend_from_slice(bytes);
    out
}

fn excerpt(body: &str) -> String {
    let mut s: String = body.chars().take(EXCERPT).collect();
    if s.len() < body.len() {
        s.push('…');
    }
    s
}

#[async_trait]
impl Pusher for HttpPusher {
    async fn push(&self, req: &PushRequest<'_>) -> Result<PushResponse, PushError> {
        let request = self.request(req)?;
        let tenant = self.tenant_slots(req.tenant, req.tenant_max_concurrency);
        let _tenant_slot = tenant.acquire().await.map_err(setup)?;
        let _slot = self.limiter.acquire().await;
        // reqwest's error text names the URL only, never headers, so no credential can leak.
        let transport = |e: reqwest::Error| PushError::Transport {
            url: self.url.clone(),
            detail: if e.is_timeout() {
                "timed out".into()
            } else {
                e.without_url().to_string()
            },
        };
        let resp = request.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let header = |n: &str| resp.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let retry_after = header("retry-after").and_then(|v| parse_retry_after(&v, chrono::Utc::now()));
        let request_id = header("x-request-id");
        let text = resp.text().await.map_err(transport)?;
        if matches!(status, 401 | 403) {
            // The credential may have been rotated: fetch secret-manager values afresh next time.
            crate::secrets::invalidate_cached();
        }
        match (status, classify_status(status)) {
            (429 | 503, _) => self.limiter.throttled(retry_after),
            (_, StatusClass::Success) => self.limiter.success(),
            _ => {}
        }
        Ok(PushResponse {
            status,
            retry_after,
            excerpt: excerpt(&text),
            request_id,
        })
    }
    async fn drop_tenant(&self, tenant: &str) -> Result<bool, PushError> {
        let url = format!("{}/tenants/{tenant}", self.url.trim_end_matches("/batches"));
        let r = self.authorize(self.client.delete(&url))?;
        let transport = |e: reqwest::Error| PushError::Transport {
            url: url.clone(),
            detail: e.without_url().to_string(),
        };
        match r.send().await.map_err(transport)?.status().as_u16() {
            200..=299 => Ok(true),
            404 | 405 | 501 => Ok(false),
            status => Err(PushError::Setup(format!(
                "dropping the tenant at {url} answered {status}"
            ))),
        }
    }

    async fn checksums(&self, req: &ChecksumRequest) -> Result<Option<ChecksumResponse>, PushError> {
        let url = format!("{}/checksums", self.url.trim_end_matches("/batches"));
        let body = serde_json::to_vec(req).map_err(|e| PushError::Setup(e.to_string()))?;
        let r = self.authorize(
            self.client
                .post(&url)
                .header("Content-Type", "application/json")
                .body(body),
        )?;
        let transport = |e: reqwest::Error| PushError::Transport {
            url: url.clone(),
            detail: e.without_url().to_string(),
        };
        let resp = r.send().await.map_err(transport)?;
        match resp.status().as_u16() {
            404 | 405 | 501 => Ok(None),
            200..=299 => {
                let bytes = resp.bytes().await.map_err(transport)?;
                let parsed = serde_json::from_slice(&bytes)
                    .map_err(|e| PushError::Setup(format!("checksums at {url}: unreadable answer: {e}")))?;
                Ok(Some(parsed))
            }
            status => Err(PushError::Setup(format!("checksums at {url} answered {status}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::config::Config;

    fn destination(auth: &str) -> Destination {
        let toml = format!("[destinations.d]\nurl = \"https://push.example.com\"\nauth = {auth}\n");
        Config::parse(&toml, "t.toml")
            .unwrap()
            .destinations
            .remove("d")
            .unwrap()
    }

    #[test]
    fn a_bad_mtls_identity_is_a_clear_error_without_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, "not a certificate").unwrap();
        std::fs::write(&key, "PRIVATE-KEY-DUMMY").unwrap();
        let auth = format!(
            "{{ mtls = {{ cert = \"file:{}\", key = \"file:{}\" }} }}",
            cert.display(),
            key.display()
        );
        let err = HttpPusher::new(&destination(&auth))
            .err()
            .expect("invalid PEM is refused")
            .to_string();
        assert_eq!(err, "push setup: the mTLS certificate or key is not valid PEM");
        let missing = "{ mtls = { cert = \"env:SIGNALS_TEST_NO_SUCH_CERT\", key = \"env:SIGNALS_TEST_NO_SUCH_KEY\" } }";
        let err = HttpPusher::new(&destination(missing))
            .err()
            .expect("missing secret")
            .to_string();
        assert!(
            err.contains("env:SIGNALS_TEST_NO_SUCH_CERT") && err.contains("not set"),
            "{err}"
        );
    }
}
