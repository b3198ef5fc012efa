//! Resolves secret references. A resolved value is wrapped so that it never prints.

#[cfg(feature = "aws-secrets")]
pub mod aws_sm;

use crate::domain::secret_ref::SecretRef;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A secret value; `Debug` and `Display` print `***`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value that came out of another secret (a password inside a connection string).
    pub fn from_value(value: String) -> Secret {
        Secret(value)
    }

    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Why a reference could not be resolved; names the reference, never a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The environment variable is not set.
    #[error("secret `{reference}`: environment variable is not set")]
    EnvMissing {
        /// The reference.
        reference: String,
    },
    /// The file cannot be read.
    #[error("secret `{reference}`: cannot read file: {source}")]
    File {
        /// The reference.
        reference: String,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
    /// AWS Secrets Manager could not give the secret.
    #[cfg(feature = "aws-secrets")]
    #[error("secret `{reference}`: {source}")]
    AwsSm {
        /// The reference.
        reference: String,
        /// What went wrong (never the value).
        #[source]
        source: aws_sm::AwsSmError,
    },
    /// This build cannot read that kind of reference.
    #[error("secret `{reference}`: AWS Secrets Manager is not available in this build (feature aws-secrets)")]
    Unsupported {
        /// The reference.
        reference: String,
    },
}

/// How long a secret fetched from a secret manager is reused before it is fetched again.
pub const CACHE_TTL: Duration = Duration::from_secs(300);

type Cache = Mutex<HashMap<String, (Secret, Instant)>>;

fn cache() -> &'static Cache {
    static C: OnceLock<Cache> = OnceLock::new();
    C.get_or_init(Cache::default)
}

/// Forgets cached secret-manager values, so the next use fetches them again (after an
/// authentication failure: the secret may have been rotated).
pub fn invalidate_cached() {
    cache().lock().unwrap_or_else(|p| p.into_inner()).clear();
}

/// Resolves a reference. Environment variables and files are read every time (rotation takes
/// effect on the next job); Secrets Manager values are cached for [`CACHE_TTL`].
pub fn resolve(r: &SecretRef) -> Result<Secret, SecretError> {
    match r {
        SecretRef::Env(name) => std::env::var(name).map(Secret).map_err(|_| SecretError::EnvMissing {
            reference: r.to_string(),
        }),
        SecretRef::File(path) => std::fs::read_to_string(path)
            .map(|s| Secret(s.trim_end_matches(['\n', '\r']).to_owned()))
            .map_err(|source| SecretError::File {
                reference: r.to_string(),
                source,
            }),
        #[cfg(not(feature = "aws-secrets"))]
        SecretRef::AwsSm(_) => Err(SecretError::Unsupported {
            reference: r.to_string(),
        }),
        #[cfg(feature = "aws-secrets")]
        SecretRef::AwsSm(arn) => {
            if let Some((s, at)) = cache().lock().unwrap_or_else(|p| p.into_inner()).get(arn) {
                if at.elapsed() < CACHE_TTL {
                    return Ok(s.clone());
                }
            }
            let value = Secret(aws_sm::fetch(arn).map_err(|source| SecretError::AwsSm {
                reference: r.to_string(),
                source,
            })?);
            cache()
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(arn.clone(), (value.clone(), Instant::now()));
            Ok(value)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_and_never_prints() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cr3t\n").unwrap();
        let r = SecretRef::File(path.display().to_string());
        let s = resolve(&r).unwrap();
        assert_eq!(s.expose(), "s3cr3t");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        let missing = SecretRef::Env("SIGNALS_TEST_SURELY_UNSET".into());
        assert_eq!(
            resolve(&missing).unwrap_err().to_string(),
            "secret `env:SIGNALS_TEST_SURELY_UNSET`: environment variable is not set"
        );
    }
}
