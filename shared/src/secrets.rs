//! Resolves secret references. A resolved value is wrapped so that it never prints.

use crate::domain::secret_ref::SecretRef;
use std::fmt;

/// A secret value; `Debug` and `Display` print `***`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
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
    /// This build cannot read that kind of reference.
    #[error("secret `{reference}`: AWS Secrets Manager is not available in this build")]
    Unsupported {
        /// The reference.
        reference: String,
    },
}

/// Resolves a reference now (values are not cached: rotation takes effect on the next job).
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
        SecretRef::AwsSm(_) => Err(SecretError::Unsupported {
            reference: r.to_string(),
        }),
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
