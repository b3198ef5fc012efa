//! Amazon SQS as the job queue: one standard queue per stage. Ordering comes from the run rules,
//! not the queue, and every handler is idempotent, so SQS's at-least-once delivery and its
//! duplicates are harmless. Visibility timeouts are the leases; `ApproximateReceiveCount` is the
//! attempt count. Works against AWS and any endpoint given by `AWS_ENDPOINT_URL` (moto, LocalStack).
//!
//! Queues are named by a spec: `sqs://PREFIX` means `PREFIX-scheduler`, `PREFIX-snapshot`,
//! `PREFIX-merge`, `PREFIX-batch` and `PREFIX-push`; `SIGNALS_SQS_<STAGE>_URL` overrides one
//! stage's queue URL (the Lambda template passes URLs this way).

use crate::domain::job::{Job, Stage};
use crate::errors::StoreError;
use crate::ports::{Claimed, JobQueue};
use async_trait::async_trait;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{
    MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry,
};
use std::collections::HashMap;
use std::time::Duration;

/// Longest delay SQS accepts on a message; later jobs arrive early and re-park themselves.
const MAX_DELAY: Duration = Duration::from_secs(900);
/// Longest visibility timeout SQS accepts.
const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);

/// One queue per stage.
#[derive(Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    urls: HashMap<Stage, String>,
}

fn sqs_err<E: std::error::Error + 'static>(context: &'static str) -> impl Fn(E) -> StoreError {
    move |e| StoreError::Db {
        context,
        detail: format!("SQS: {}", DisplayErrorContext(&e)),
    }
}

/// The queue name prefix of an `sqs://PREFIX` spec.
pub fn prefix_of(spec: &str) -> Option<&str> {
    spec.strip_prefix("sqs://")
        .filter(|p| !p.is_empty() && !p.contains('/'))
}

/// The SQS client as the environment configures it (region, credentials, `AWS_ENDPOINT_URL`).
pub async fn client() -> aws_sdk_sqs::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    aws_sdk_sqs::Client::new(&config)
}

impl SqsQueue {
    /// A handle for queues named by URL only (no stage queues), e.g. a dead-letter queue.
    pub fn with_client(client: aws_sdk_sqs::Client) -> SqsQueue {
        SqsQueue {
            client,
            urls: HashMap::new(),
        }
    }

    /// Resolves the stage queues of `spec` (`sqs://PREFIX`), failing clearly when one is missing.
    pub async fn connect(spec: &str) -> Result<SqsQueue, StoreError> {
        let prefix = prefix_of(spec).ok_or_else(|| StoreError::Db {
            context: "open queue",
            detail: format!("`{spec}` is not an SQS queue spec: expected sqs://PREFIX"),
        })?;
        let client = client().await;
        let mut urls = HashMap::new();
        for stage in Stage::ALL {
            let env = format!("SIGNALS_SQS_{}_URL", stage.as_str().to_uppercase());
            let url = match std::env::var(&env) {
                Ok(url) if !url.is_empty() => url,
                _ => {
                    let name = format!("{prefix}-{stage}");
                    let out = client
                        .get_queue_url()
                        .queue_name(&name)
                        .send()
                        .await
                        .map_err(|e| StoreError::Db {
                            context: "open queue",
                            detail: format!(
                                "SQS queue `{name}` for the {stage} stage is not reachable ({}); create it \
                             (infra/aws/template.yaml does) or set {env}",
                                DisplayErrorContext(&e)
                            ),
                        })?;
                    out.queue_url().unwrap_or_default().to_owned()
                }
            };
            urls.insert(stage, url);
        }
        Ok(SqsQueue { client, urls })
    }

    /// Creates the stage queues of `spec` (for development and tests; in AWS the template does),
    /// each with a redrive policy to `PREFIX-dlq` after `max_receives` deliveries.
    pub async fn create(spec: &str, max_receives: u32) -> Result<SqsQueue, StoreError> {
        let prefix = prefix_of(spec).ok_or_else(|| StoreError::Db {
            context: "create queues",
            detail: format!("`{spec}` is not an SQS queue spec: expected sqs://PREFIX"),
        })?;
        let client = client().await;
        let dlq = client
            .create_queue()
            .queue_name(format!("{prefix}-dlq"))
            .send()
            .await
            .map_err(sqs_err("create queues"))?;
        let dlq_arn = client
            .get_queue_attributes()
            .queue_url(dlq.queue_url().unwrap_or_default())
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(sqs_err("create queues"))?
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .unwrap_or_default();
        let redrive =
            serde_json::json!({ "deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receives.to_string() });
        for stage in Stage::ALL {
            client
                .create_queue()
                .queue_name(format!("{prefix}-{stage}"))
                .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
                .send()
                .await
                .map_err(sqs_err("create queues"))?;
        }
        SqsQueue::connect(spec).await
    }

    /// The URL of a stage's queue.
    pub fn url(&self, stage: Stage) -> &str {
        &self.urls[&stage]
    }

    /// The queue URL and receipt handle packed into a claim handle.
    fn split(handle: &str) -> Result<(&str, &str), StoreError> {
        handle.split_once('\t').ok_or_else(|| StoreError::Corrupt {
            what: "SQS claim handle",
            detail: "no queue URL".into(),
        })
    }

    async fn set_visibility(
        &self,
        claimed: &Claimed,
        after: Duration,
        context: &'static str,
    ) -> Result<(), StoreError> {
        let (url, receipt) = Self::split(&claimed.handle)?;
        self.client
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(receipt)
            .visibility_timeout(after.min(MAX_VISIBILITY).as_secs() as i32)
            .send()
            .await
            .map_err(sqs_err(context))?;
        Ok(())
    }

    /// Receives up to `max` messages of one queue (for `signals dlq import`: the redrive DLQ).
    pub async fn receive_from(
        &self,
        url: &str,
        max: usize,
        lease: Duration,
        wait: Duration,
    ) -> Result<Vec<Claimed>, StoreError> {
        let out = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .visibility_timeout(lease.min(MAX_VISIBILITY).as_secs().max(1) as i32)
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(sqs_err("receive"))?;
        Ok(out
            .messages()
            .iter()
            .filter_map(|m| {
                let attempts = m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1);
                Some(Claimed {
                    handle: format!("{url}\t{}", m.receipt_handle()?),
                    body: m.body().unwrap_or_default().to_owned(),
                    attempts,
                })
            })
            .collect())
    }

    /// Deletes a message claimed with [`SqsQueue::receive_from`] or [`JobQueue::claim`].
    pub async fn delete(&self, claimed: &Claimed) -> Result<(), StoreError> {
        let (url, receipt) = Self::split(&claimed.handle)?;
        self.client
            .delete_message()
            .queue_url(url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(sqs_err("delete"))?;
        Ok(())
    }

    /// The URL of the stage queue an event source ARN (`arn:aws:sqs:REGION:ACCOUNT:NAME`) names.
    pub fn url_for_arn(&self, arn: &str) -> Option<&str> {
        let name = arn.rsplit(':').next().filter(|n| !n.is_empty())?;
        self.urls
            .values()
            .find(|u| u.rsplit('/').next() == Some(name))
            .map(String::as_str)
    }

    /// The URL of the queue named `name`.
    pub async fn url_of(&self, name: &str) -> Result<String, StoreError> {
        Ok(self
            .client
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .map_err(sqs_err("queue url"))?
            .queue_url()
            .unwrap_or_default()
            .to_owned())
    }
}

#[async_trait]
impl JobQueue for SqsQueue {
    async fn enqueue(&self, jobs: &[Job], delay: Duration) -> Result<(), StoreError> {
        let delay = delay.min(MAX_DELAY).as_secs() as i32;
        for stage in Stage::ALL {
            let of_stage: Vec<&Job> = jobs.iter().filter(|j| j.stage() == stage).collect();
            for ten in of_stage.chunks(10) {
                let mut entries = Vec::with_capacity(ten.len());
                for (i, job) in ten.iter().enumerate() {
                    let mut entry = SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(job.encode())
                        .delay_seconds(delay);
                    // The envelope carries the trace context; the attribute repeats it for tools.
                    if let Some(tp) = &job.traceparent {
                        let value = MessageAttributeValue::builder()
                            .data_type("String")
                            .string_value(tp)
                            .build()
                            .map_err(sqs_err("enqueue"))?;
                        entry = entry.message_attributes("traceparent", value);
                    }
                    entries.push(entry.build().map_err(sqs_err("enqueue"))?);
                }
                let out = self
                    .client
                    .send_message_batch()
                    .queue_url(self.url(stage))
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(sqs_err("enqueue"))?;
                if let Some(f) = out.failed().first() {
                    // The whole call fails so the caller's message is redelivered: duplicates
                    // of the entries that did go through are harmless, a lost job is not.
                    return Err(StoreError::Db {
                        context: "enqueue",
                        detail: format!(
                            "SQS refused {} of {} messages for the {stage} queue: {} {}",
                            out.failed().len(),
                            ten.len(),
                            f.code(),
                            f.message().unwrap_or("")
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    async fn claim(&self, max: usize, lease: Duration, stages: &[Stage]) -> Result<Vec<Claimed>, StoreError> {
        let stages = Stage::selected(stages);
        // Long-poll only when this process serves one queue; several are polled in turn.
        let wait = if stages.len() == 1 {
            Duration::from_secs(1)
        } else {
            Duration::ZERO
        };
        let mut out = Vec::new();
        for stage in stages {
            if out.len() >= max {
                break;
            }
            let url = self.url(stage).to_owned();
            out.extend(self.receive_from(&url, max - out.len(), lease, wait).await?);
        }
        Ok(out)
    }

    async fn extend(&self, claimed: &Claimed, lease: Duration) -> Result<(), StoreError> {
        self.set_visibility(claimed, lease, "extend lease").await
    }

    async fn ack(&self, claimed: &Claimed) -> Result<(), StoreError> {
        self.delete(claimed).await
    }

    async fn retry_later(&self, claimed: &Claimed, delay: Duration, error: &str) -> Result<(), StoreError> {
        // SQS keeps no error per message: the store's run records it (`note_error`).
        tracing::debug!(error, "message made visible again later");
        self.set_visibility(claimed, delay, "retry later").await
    }

    async fn depth(&self, stages: &[Stage]) -> Result<(u64, Option<Duration>), StoreError> {
        let stages = Stage::selected(stages);
        let mut total = 0;
        for stage in stages {
            let out = self
                .client
                .get_queue_attributes()
                .queue_url(self.url(stage))
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
                .send()
                .await
                .map_err(sqs_err("queue depth"))?;
            total += out
                .attributes()
                .map(|a| a.values().filter_map(|v| v.parse::<u64>().ok()).sum::<u64>())
                .unwrap_or(0);
        }
        // SQS reports the oldest message's age only through CloudWatch.
        Ok((total, None))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn specs_name_a_prefix() {
        assert_eq!(super::prefix_of("sqs://signals-prod"), Some("signals-prod"));
        assert_eq!(super::prefix_of("sqs://"), None);
        assert_eq!(super::prefix_of("sqs://a/b"), None);
        assert_eq!(super::prefix_of("table"), None);
    }
}
