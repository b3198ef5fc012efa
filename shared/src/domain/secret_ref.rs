//! Secret references (`env:NAME`, `file:PATH`, `aws-sm:ARN`): config holds these, never values.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Where a secret lives; resolving it is the job of `crate::secrets`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum SecretRef {
    /// An environment variable.
    Env(String),
    /// A file (e.g. a Kubernetes secret mount); trailing newlines are trimmed.
    File(String),
    /// An AWS Secrets Manager secret ARN.
    AwsSm(String),
}

impl TryFrom<String> for SecretRef {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let (scheme, rest) = s.split_once(':').unwrap_or(("", ""));
        let r = match scheme {
            "env" if !rest.is_empty() => SecretRef::Env(rest.to_owned()),
            "file" if !rest.is_empty() => SecretRef::File(rest.to_owned()),
            "aws-sm" if !rest.is_empty() => SecretRef::AwsSm(rest.to_owned()),
            // Never echo the text: it may be the secret itself pasted by mistake.
            _ => {
                return Err(
                    "expected a secret reference (`env:NAME`, `file:PATH` or `aws-sm:ARN`), not a value".to_owned(),
                )
            }
        };
        Ok(r)
    }
}

impl From<SecretRef> for String {
    fn from(r: SecretRef) -> String {
        r.to_string()
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(n) => write!(f, "env:{n}"),
            SecretRef::File(p) => write!(f, "file:{p}"),
            SecretRef::AwsSm(a) => write!(f, "aws-sm:{a}"),
        }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretRef({self})")
    }
}
