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

/// Extracts the job messages of an SQS event or an EventBridge scheduled event.
pub fn parse_event(text: &str) -> Result<Vec<EventMessage>, EventError> {
    let v: Value = serde_json::from_str(text)?;
    if v.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event") {
        let id = v.get("id").and_then(Value::as_str).unwrap_or("").to_owned();
        let mut tick = Job::new(Task::Tick);
        tick.id = format!("scheduled-{id}");
        return Ok(vec![EventMessage {
            origin: format!("scheduled:{id}"),
            body: tick.encode(),
            attempts: 1,
        }]);
    }
    let Some(records) = v.get("Records").and_then(Value::as_array) else {
        return Err(EventError::UnknownShape);
    };
    records
        .iter()
        .enumerate()
        .map(|(index, r)| {
            if r.get("eventSource").and_then(Value::as_str) != Some("aws:sqs") {
                return Err(EventError::UnknownShape);
            }
            let body = r
                .get("body")
                .and_then(Value::as_str)
                .ok_or(EventError::NoBody { index })?;
            let attempts = r
                .pointer("/attributes/ApproximateReceiveCount")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .unwrap_or(1);
            let id = r.get("messageId").and_then(Value::as_str).unwrap_or("");
            Ok(EventMessage {
                origin: format!("sqs:{id}"),
                body: body.to_owned(),
                attempts,
            })
        })
        .collect()
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
