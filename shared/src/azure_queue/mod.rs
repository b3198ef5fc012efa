//! Azure Storage queues as the job queue: one queue per stage (`PREFIX-scheduler` …
//! `PREFIX-push`) and `PREFIX-poison` for messages no stage can decode. Messages are base64 of the
//! job envelope, as the Azure SDKs and KEDA expect; visibility timeouts are the leases (each
//! update returns a new pop receipt, kept here per message); `dequeueCount` is the attempt count,
//! so a job that keeps failing becomes a dead letter in the store after the stage's attempts.
//!
//! The spec is `azure://ACCOUNT/PREFIX`. Credentials, in order: `SIGNALS_AZURE_CONNECTION` (a
//! connection string with an account key or a SAS, or a secret reference `env:`/`file:`/`aws-sm:`
//! to one), `SIGNALS_AZURE_SAS_URL` (a queue-service URL with a SAS), else Entra ID through
//! workload identity (`AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_FEDERATED_TOKEN_FILE`).

pub mod auth;

use crate::domain::job::{Job, Stage};
use crate::errors::StoreError;
use crate::ports::{Claimed, JobQueue};
use async_trait::async_trait;
use auth::ConnectionString;
use azure_core::http::Url;
use azure_storage_queue::models::{
    QueueClientReceiveMessagesOptions, QueueClientSendMessageOptions, QueueClientUpdateMessageOptions, QueueMessage,
};
use azure_storage_queue::{QueueClient, QueueClientOptions};
use base64::Engine;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a signed account SAS is valid, and when clients are rebuilt with a fresh one.
const SAS_VALID: Duration = Duration::from_secs(4 * 3600);
const SAS_RENEW: Duration = Duration::from_secs(3600);
/// Longest visibility timeout Azure accepts (7 days).
const MAX_VISIBILITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// How requests are authorised.
enum Credential {
    /// An account key: a SAS is signed here and renewed hourly.
    Key(String),
    /// A SAS given ready.
    Sas(String),
    /// Entra ID tokens (workload identity).
    Entra(Arc<dyn azure_core::credentials::TokenCredential>),
}

struct Clients {
    built: Instant,
    by_name: HashMap<String, Arc<QueueClient>>,
}

/// One Azure Storage queue per stage, plus the poison queue.
pub struct AzureQueue {
    account: String,
    endpoint: String,
    prefix: String,
    credential: Credential,
    clients: Mutex<Clients>,
    /// Latest pop receipt per claimed message id (each visibility update replaces it).
    receipts: Mutex<HashMap<String, String>>,
}

fn az_err(context: &'static str) -> impl Fn(azure_core::Error) -> StoreError {
    move |e| StoreError::Db {
        context,
        detail: format!("Azure queue: {e}"),
    }
}

/// (account, prefix) of an `azure://ACCOUNT/PREFIX` spec.
pub fn parse_spec(spec: &str) -> Option<(&str, &str)> {
    let (account, prefix) = spec.strip_prefix("azure://")?.split_once('/')?;
    (!account.is_empty() && !prefix.is_empty() && !prefix.contains('/')).then_some((account, prefix))
}

/// An environment variable holding a secret, or a reference (`env:`, `file:`, `aws-sm:`) to one.
fn secret_env(name: &str) -> Result<Option<String>, StoreError> {
    let Ok(value) = std::env::var(name) else {
        return Ok(None);
    };
    if ["env:", "file:", "aws-sm:"].iter().any(|p| value.starts_with(p)) {
        let r = crate::domain::secret_ref::SecretRef::try_from(value).map_err(|e| open_err(format!("{name}: {e}")))?;
        let v = crate::secrets::resolve(&r).map_err(|e| open_err(format!("{name}: {e}")))?;
        Ok(Some(v.expose().to_owned()))
    } else {
        Ok(Some(value))
    }
}

fn open_err(detail: String) -> StoreError {
    StoreError::Db {
        context: "open queue",
        detail,
    }
}

impl AzureQueue {
    /// Connects to the stage queues of `spec` with the credentials the environment names, and
    /// checks each exists and answers.
    pub async fn connect(spec: &str) -> Result<AzureQueue, StoreError> {
        let q = AzureQueue::from_env(spec)?;
        // Fail at start, with the queue's name, when a stage queue is missing or unauthorised.
        for stage in Stage::ALL {
            let name = q.name(stage);
            q.client(&name)?
                .get_properties(None)
                .await
                .map_err(|e| open_err(format!("Azure queue `{name}` ({}): {e}", q.endpoint)))?;
        }
        Ok(q)
    }

    /// Creates the stage queues and the poison queue (for development and tests; in Azure the
    /// infrastructure does).
    pub async fn create(spec: &str) -> Result<AzureQueue, StoreError> {
        let q = AzureQueue::from_env(spec)?;
        for name in Stage::ALL.map(|s| q.name(s)).into_iter().chain([q.poison_name()]) {
            q.client(&name)?.create(None).await.map_err(az_err("create queue"))?;
        }
        Ok(q)
    }

    fn from_env(spec: &str) -> Result<AzureQueue, StoreError> {
        let (account, prefix) = parse_spec(spec).ok_or_else(|| {
            open_err(format!(
                "`{spec}` is not an Azure queue spec: expected azure://ACCOUNT/PREFIX"
            ))
        })?;
        let (conn, credential) = if let Some(cs) = secret_env("SIGNALS_AZURE_CONNECTION")? {
            let c =
                auth::parse_connection_string(&cs).map_err(|e| open_err(format!("SIGNALS_AZURE_CONNECTION: {e}")))?;
            let cred = match (&c.key, &c.sas) {
                (Some(key), _) => Credential::Key(key.clone()),
                (None, Some(sas)) => Credential::Sas(sas.clone()),
                (None, None) => unreachable!("parse_connection_string demands one"),
            };
            (c, cred)
        } else if let Some(url) = secret_env("SIGNALS_AZURE_SAS_URL")? {
            let c = auth::parse_sas_url(&url).map_err(|e| open_err(format!("SIGNALS_AZURE_SAS_URL: {e}")))?;
            let sas = c.sas.clone().unwrap_or_default();
            (c, Credential::Sas(sas))
        } else {
            let cred = azure_identity::WorkloadIdentityCredential::new(None).map_err(|e| {
                open_err(format!(
                    "no SIGNALS_AZURE_CONNECTION or SIGNALS_AZURE_SAS_URL, and workload identity is not set up: {e}"
                ))
            })?;
            let c = ConnectionString {
                account: account.to_owned(),
                endpoint: format!("https://{account}.queue.core.windows.net"),
                key: None,
                sas: None,
            };
            (c, Credential::Entra(cred))
        };
        if conn.account != account {
            return Err(open_err(format!(
                "the queue spec names account `{account}` but the credentials are for {conn}"
            )));
        }
        Ok(AzureQueue {
            account: conn.account,
            endpoint: conn.endpoint,
            prefix: prefix.to_owned(),
            credential,
            clients: Mutex::new(Clients {
                built: Instant::now(),
                by_name: HashMap::new(),
            }),
            receipts: Mutex::new(HashMap::new()),
        })
    }

    /// The queue of a stage.
    pub fn name(&self, stage: Stage) -> String {
        format!("{}-{stage}", self.prefix)
    }

    /// The queue undecodable messages are moved to.
    pub fn poison_name(&self) -> String {
        format!("{}-poison", self.prefix)
    }

    /// A client for queue `name`, rebuilt with a fresh SAS once an hour.
    fn client(&self, name: &str) -> Result<Arc<QueueClient>, StoreError> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if clients.built.elapsed() > SAS_RENEW {
            clients.by_name.clear();
            clients.built = Instant::now();
        }
        if let Some(c) = clients.by_name.get(name) {
            return Ok(c.clone());
        }
        let base = format!("{}/{name}", self.endpoint);
        let (url, token) = match &self.credential {
            Credential::Key(key) => {
                let sas = auth::account_sas(&self.account, key, chrono::Utc::now(), SAS_VALID).map_err(open_err)?;
                (format!("{base}?{sas}"), None)
            }
            Credential::Sas(sas) => (format!("{base}?{sas}"), None),
            Credential::Entra(cred) => (base, Some(cred.clone())),
        };
        let url = Url::parse(&url).map_err(|e| open_err(format!("Azure queue URL for `{name}`: {e}")))?;
        let client = Arc::new(
            QueueClient::new(url, token, Some(QueueClientOptions::default()))
                .map_err(|e| open_err(format!("Azure queue `{name}`: {e}")))?,
        );
        clients.by_name.insert(name.to_owned(), client.clone());
        Ok(client)
    }

    async fn send(&self, queue: &str, text: String, delay: Duration) -> Result<(), StoreError> {
        let message = QueueMessage {
            message_text: Some(text),
        };
        let options = QueueClientSendMessageOptions {
            visibility_timeout: Some(delay.min(MAX_VISIBILITY).as_secs() as i32),
            // Never expire: a job waits as long as it must.
            message_time_to_live: Some(-1),
            ..Default::default()
        };
        self.client(queue)?
            .send_message(message.try_into().map_err(az_err("enqueue"))?, Some(options))
            .await
            .map_err(az_err("enqueue"))?;
        Ok(())
    }

    /// Messages waiting in a queue, by name (for tests and operators: the poison queue).
    pub async fn count(&self, queue: &str) -> Result<u64, StoreError> {
        use azure_storage_queue::models::QueueClientGetPropertiesResultHeaders;
        let props = self
            .client(queue)?
            .get_properties(None)
            .await
            .map_err(az_err("queue depth"))?;
        Ok(props
            .approximate_messages_count()
            .map_err(az_err("queue depth"))?
            .unwrap_or(0) as u64)
    }

    /// Sends a raw text to a stage's queue, as another producer might (tests of bad input).
    pub async fn send_raw(&self, stage: Stage, text: &str) -> Result<(), StoreError> {
        self.send(&self.name(stage), text.to_owned(), Duration::ZERO).await
    }

    fn split(handle: &str) -> Result<(&str, &str), StoreError> {
        handle.split_once('\t').ok_or_else(|| StoreError::Corrupt {
            what: "Azure claim handle",
            detail: "no queue name".into(),
        })
    }

    fn receipt(&self, id: &str) -> Result<String, StoreError> {
        self.receipts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| StoreError::Db {
                context: "Azure queue",
                detail: format!("message {id} is not held by this process (its lease may have expired)"),
            })
    }

    /// Changes a held message's visibility; the new pop receipt replaces the old.
    async fn set_visibility(
        &self,
        claimed: &Claimed,
        after: Duration,
        context: &'static str,
    ) -> Result<(), StoreError> {
        let (queue, id) = Self::split(&claimed.handle)?;
        let pop = self.receipt(id)?;
        let resp = self
            .client(queue)?
            .update_message(
                id,
                &pop,
                after.min(MAX_VISIBILITY).as_secs() as i32,
                Some(QueueClientUpdateMessageOptions::default()),
            )
            .await
            .map_err(az_err(context))?;
        let next = resp
            .headers()
            .get_optional_str(&azure_core::http::headers::HeaderName::from_static("x-ms-popreceipt"))
            .map(str::to_owned);
        let mut receipts = self.receipts.lock().unwrap_or_else(|p| p.into_inner());
        match next {
            Some(p) => receipts.insert(id.to_owned(), p),
            None => receipts.remove(id),
        };
        Ok(())
    }
}

#[async_trait]
impl JobQueue for AzureQueue {
    async fn enqueue(&self, jobs: &[Job], delay: Duration) -> Result<(), StoreError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        for chunk in jobs.chunks(16) {
            let sends = chunk.iter().map(|j| {
                let queue = self.name(j.stage());
                let text = b64.encode(j.encode());
                async move { self.send(&queue, text, delay).await }
            });
            for r in futures_util::future::join_all(sends).await {
                r?;
            }
        }
        Ok(())
    }

    async fn claim(&self, max: usize, lease: Duration, stages: &[Stage]) -> Result<Vec<Claimed>, StoreError> {
        let stages = Stage::selected(stages);
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut out = Vec::new();
        for stage in stages {
            if out.len() >= max {
                break;
            }
            let name = self.name(stage);
            let options = QueueClientReceiveMessagesOptions {
                number_of_messages: Some((max - out.len()).clamp(1, 32) as i32),
                visibility_timeout: Some(lease.min(MAX_VISIBILITY).as_secs().max(1) as i32),
                ..Default::default()
            };
            let received = self
                .client(&name)?
                .receive_messages(Some(options))
                .await
                .map_err(az_err("claim"))?
                .into_model()
                .map_err(az_err("claim"))?;
            for m in received.items.unwrap_or_default() {
                let (Some(id), Some(pop)) = (m.message_id, m.pop_receipt) else {
                    continue;
                };
                let text = m.message_text.unwrap_or_default();
                // Base64 as the Azure SDKs write it; a body that is not is kept as sent, so the
                // runner can report it undecodable and move it to the poison queue.
                let body = b64
                    .decode(text.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .unwrap_or(text);
                self.receipts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id.clone(), pop);
                out.push(Claimed {
                    handle: format!("{name}\t{id}"),
                    body,
                    attempts: m.dequeue_count.unwrap_or(1).max(1) as u32,
                });
            }
        }
        Ok(out)
    }

    async fn extend(&self, claimed: &Claimed, lease: Duration) -> Result<(), StoreError> {
        self.set_visibility(claimed, lease, "extend lease").await
    }

    async fn ack(&self, claimed: &Claimed) -> Result<(), StoreError> {
        let (queue, id) = Self::split(&claimed.handle)?;
        let pop = self.receipt(id)?;
        self.client(queue)?
            .delete_message(id, &pop, None)
            .await
            .map_err(az_err("ack"))?;
        self.receipts.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        Ok(())
    }

    async fn retry_later(&self, claimed: &Claimed, delay: Duration, error: &str) -> Result<(), StoreError> {
        tracing::debug!(error, "message made visible again later");
        self.set_visibility(claimed, delay, "retry later").await?;
        // The next delivery comes with a receipt of its own.
        let (_, id) = Self::split(&claimed.handle)?;
        self.receipts.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        Ok(())
    }

    async fn depth(&self, stages: &[Stage]) -> Result<(u64, Option<Duration>), StoreError> {
        let stages = Stage::selected(stages);
        let mut total = 0;
        for stage in stages {
            total += self.count(&self.name(stage)).await?;
        }
        Ok((total, None))
    }

    async fn quarantine(&self, claimed: &Claimed, error: &str) -> Result<bool, StoreError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        tracing::warn!(error, queue = %self.poison_name(), "undecodable message moved to the poison queue");
        self.send(&self.poison_name(), b64.encode(&claimed.body), Duration::ZERO)
            .await?;
        self.ack(claimed).await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn specs_name_account_and_prefix() {
        assert_eq!(super::parse_spec("azure://acme/signals"), Some(("acme", "signals")));
        assert_eq!(super::parse_spec("azure://acme/"), None);
        assert_eq!(super::parse_spec("azure://acme"), None);
        assert_eq!(super::parse_spec("sqs://x"), None);
    }
}
