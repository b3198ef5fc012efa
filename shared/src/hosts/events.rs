//! Cloud event files (`events/`): the exact JSON a cloud delivers, turned into job messages so
//! `signals replay` runs them through the same handlers a Lambda or worker would.

use crate::domain::job::{Job, Task};
use serde_json::Value;

/// One message found in an event.
#[derive(Debug)]
pub struct EventMessage {
    /// Where it came from (`sqs:<messageId>`, `scheduled:<id>`).
    pub origin: String,
    /// The raw message body (for dead letters and errors).
    pub body: String,
    /// Deliveries so far, as the cloud counted them.
    pub attempts: u32,
}

/// Why an event file is not one we know.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// Not JSON.
    #[error("event is not valid JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    /// JSON of an unknown shape.
    #[error("unrecognised event shape: expected an SQS event (`Records` with `eventSource` aws:sqs) or an EventBridge scheduled event (`detail-type` \"Scheduled Event\")")]
    UnknownShape,
    /// An SQS record without a string body.
    #[error("SQS record {index} has no string `body`")]
    NoBody {
        /// Record position.
        index: usize,
    },
}

/// An event as a cloud delivers it, decoded through the `aws_lambda_events` types the Lambda
/// host uses too.
#[derive(Debug)]
pub enum CloudEvent {
    /// A batch of SQS messages.
    Sqs(aws_lambda_events::sqs::SqsEvent),
    /// An EventBridge (CloudWatch Events) scheduled event: the scheduler's timer.
    Scheduled(aws_lambda_events::eventbridge::EventBridgeEvent),
}

/// Decodes an SQS event or an EventBridge scheduled event.
pub fn decode(v: Value) -> Result<CloudEvent, EventError> {
    if v.get("detail-type").is_some() {
        let e: aws_lambda_events::eventbridge::EventBridgeEvent = serde_json::from_value(v)?;
        return if e.detail_type == "Scheduled Event" {
            Ok(CloudEvent::Scheduled(e))
        } else {
            Err(EventError::UnknownShape)
        };
    }
    if v.get("Records").is_none() {
        return Err(EventError::UnknownShape);
    }
    let e: aws_lambda_events::sqs::SqsEvent = serde_json::from_value(v)?;
    if e.records.iter().any(|r| r.event_source.as_deref() != Some("aws:sqs")) {
        return Err(EventError::UnknownShape);
    }
    Ok(CloudEvent::Sqs(e))
}

/// The timer tick a scheduled event stands for (its id derived from the event's, so a repeated
/// delivery of one event is recognisable in logs).
pub fn tick_of(e: &aws_lambda_events::eventbridge::EventBridgeEvent) -> Job {
    let mut tick = Job::new(Task::Tick);
    tick.id = format!("scheduled-{}", e.id.as_deref().unwrap_or(""));
    tick
}

/// Deliveries of an SQS message so far (`ApproximateReceiveCount`), this one included.
pub fn receive_count(m: &aws_lambda_events::sqs::SqsMessage) -> u32 {
    m.attributes
        .get("ApproximateReceiveCount")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

/// Extracts the job messages of an SQS event or an EventBridge scheduled event.
pub fn parse_event(text: &str) -> Result<Vec<EventMessage>, EventError> {
    match decode(serde_json::from_str(text)?)? {
        CloudEvent::Scheduled(e) => Ok(vec![EventMessage {
            origin: format!("scheduled:{}", e.id.as_deref().unwrap_or("")),
            body: tick_of(&e).encode(),
            attempts: 1,
        }]),
        CloudEvent::Sqs(e) => e
            .records
            .iter()
            .enumerate()
            .map(|(index, r)| {
                Ok(EventMessage {
                    origin: format!("sqs:{}", r.message_id.as_deref().unwrap_or("")),
                    body: r.body.clone().ok_or(EventError::NoBody { index })?,
                    attempts: receive_count(r),
                })
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sqs_and_scheduled_events() {
        let sqs = r#"{"Records":[{"messageId":"m1","receiptHandle":"h","body":"{\"v\":1}","attributes":{"ApproximateReceiveCount":"3"},"messageAttributes":{},"md5OfBody":"x","eventSource":"aws:sqs","eventSourceARN":"arn:aws:sqs:eu-west-1:1:q","awsRegion":"eu-west-1"}]}"#;
        let m = parse_event(sqs).unwrap();
        assert_eq!(
            (m[0].origin.as_str(), m[0].body.as_str(), m[0].attempts),
            ("sqs:m1", "{\"v\":1}", 3)
        );
        let sched = r#"{"version":"0","id":"e1","detail-type":"Scheduled Event","source":"aws.events","account":"1","time":"2026-01-01T00:00:00Z","region":"eu-west-1","resources":[],"detail":{}}"#;
        let m = parse_event(sched).unwrap();
        assert_eq!(Job::decode(m[0].body.as_bytes()).unwrap().task, Task::Tick);
        assert!(matches!(parse_event("{\"foo\":1}"), Err(EventError::UnknownShape)));
        assert!(matches!(parse_event("{"), Err(EventError::NotJson(_))));
    }
}
