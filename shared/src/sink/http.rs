//! The Data Push API client: one POST per batch with `Idempotency-Key`, auth from secret
//! references resolved per request (so rotation needs no restart), no redirects followed.

use crate::domain::config::{Auth, Destination};
use crate::domain::retry::parse_retry_after;
use crate::errors::PushError;
use crate::ports::{PushResponse, Pusher};
use crate::secrets::resolve;
use async_trait::async_trait;
use std::time::Duration;

/// `User-Agent` naming the product and version.
pub const USER_AGENT: &str = concat!("signals-etl/", env!("CARGO_PKG_VERSION"));

/// Bytes of a response body kept in the ledger and dead letters.
const EXCERPT: usize = 512;

/// Pushes to one destination.
pub struct HttpPusher {
    client: reqwest::Client,
    url: String,
    auth: Option<Auth>,
}

impl HttpPusher {
    /// A client for the destination's URL, timeout and auth.
    pub fn new(dest: &Destination) -> Result<HttpPusher, PushError> {
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(Duration::from_millis(dest.timeout_ms))
            .connect_timeout(Duration::from_millis(dest.timeout_ms.min(10_000)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| PushError::Setup(e.to_string()))?;
        Ok(HttpPusher {
            client,
            url: format!("{}/v1/batches", dest.url.trim_end_matches('/')),
            auth: dest.auth.clone(),
        })
    }
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
    async fn push(&self, batch_id: &str, body: &[u8]) -> Result<PushResponse, PushError> {
        let mut req = self
            .client
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", batch_id)
            .body(body.to_vec());
        let secret_err = |e: crate::secrets::SecretError| PushError::Setup(e.to_string());
        req = match &self.auth {
            None => req,
            Some(Auth::Bearer { token }) => req.bearer_auth(resolve(token).map_err(secret_err)?.expose()),
            Some(Auth::Header { name, value }) => {
                req.header(name.as_str(), resolve(value).map_err(secret_err)?.expose())
            }
            Some(Auth::Basic { username, password }) => {
                req.basic_auth(username, Some(resolve(password).map_err(secret_err)?.expose()))
            }
        };
        // reqwest's error text names the URL only, never headers, so no credential can leak.
        let transport = |e: reqwest::Error| PushError::Transport {
            url: self.url.clone(),
            detail: if e.is_timeout() {
                "timed out".into()
            } else {
                e.without_url().to_string()
            },
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let header = |n: &str| resp.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let retry_after = header("retry-after").and_then(|v| parse_retry_after(&v, chrono::Utc::now()));
        let request_id = header("x-request-id");
        let text = resp.text().await.map_err(transport)?;
        Ok(PushResponse {
            status,
            retry_after,
            excerpt: excerpt(&text),
            request_id,
        })
    }
}
