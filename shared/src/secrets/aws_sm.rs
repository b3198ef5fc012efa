//! AWS Secrets Manager (`aws-sm:ARN[#json-key]`): `GetSecretValue` signed with SigV4 from the
//! environment's credentials (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! as Lambda provides them), at `AWS_ENDPOINT_URL` when set (moto in tests, or a VPC endpoint).

use sha2::{Digest, Sha256};

/// Why Secrets Manager could not answer.
#[derive(Debug, thiserror::Error)]
pub enum AwsSmError {
    /// A required setting is missing.
    #[error("{0}")]
    Setup(String),
    /// The request failed or was refused (the body is AWS's error, never a secret).
    #[error("Secrets Manager: {0}")]
    Request(String),
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// HMAC-SHA256 (RFC 2104), written out: SigV4 needs nothing else from a MAC crate.
fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut k = if key.len() > 64 {
        Sha256::digest(key).to_vec()
    } else {
        key.to_vec()
    };
    k.resize(64, 0);
    let inner: Vec<u8> = k.iter().map(|b| b ^ 0x36).chain(data.iter().copied()).collect();
    let outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).chain(Sha256::digest(&inner)).collect();
    Sha256::digest(&outer).to_vec()
}

/// A SigV4-signed JSON POST: everything but the body's bytes.
pub struct SignedPost<'a> {
    /// Access key id.
    pub access_key: &'a str,
    /// Secret access key.
    pub secret_key: &'a str,
    /// Region.
    pub region: &'a str,
    /// Service name in the credential scope.
    pub service: &'a str,
    /// Host header value.
    pub host: &'a str,
    /// `YYYYMMDDTHHMMSSZ`.
    pub amz_date: &'a str,
    /// `X-Amz-Target`.
    pub target: &'a str,
}

impl SignedPost<'_> {
    /// The `Authorization` header for `body`.
    pub fn authorization(&self, body: &[u8]) -> String {
        let (host, amz_date, target) = (self.host, self.amz_date, self.target);
        let date = &amz_date[..8];
        let canonical = format!(
            "POST\n/\n\ncontent-type:application/x-amz-json-1.1\nhost:{host}\nx-amz-date:{amz_date}\nx-amz-target:{target}\n\n\
             content-type;host;x-amz-date;x-amz-target\n{}",
            sha256_hex(body)
        );
        let scope = format!("{date}/{}/{}/aws4_request", self.region, self.service);
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            sha256_hex(canonical.as_bytes())
        );
        let k = hmac(format!("AWS4{}", self.secret_key).as_bytes(), date.as_bytes());
        let k = hmac(&k, self.region.as_bytes());
        let k = hmac(&k, self.service.as_bytes());
        let k = hmac(&k, b"aws4_request");
        let signature = hex::encode(hmac(&k, to_sign.as_bytes()));
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature={signature}",
            self.access_key
        )
    }
}

/// Fetches a secret's string (or one key of its JSON) — blocking, on a thread of its own, so it
/// works from any context; callers cache the result.
pub fn fetch(reference: &str) -> Result<String, AwsSmError> {
    let (arn, json_key) = match reference.split_once('#') {
        Some((a, k)) => (a.to_owned(), Some(k.to_owned())),
        None => (reference.to_owned(), None),
    };
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let region = arn
        .split(':')
        .nth(3)
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .ok_or_else(|| AwsSmError::Setup("no region in the ARN and AWS_REGION is not set".into()))?;
    let access = env("AWS_ACCESS_KEY_ID").ok_or_else(|| AwsSmError::Setup("AWS_ACCESS_KEY_ID is not set".into()))?;
    let secret =
        env("AWS_SECRET_ACCESS_KEY").ok_or_else(|| AwsSmError::Setup("AWS_SECRET_ACCESS_KEY is not set".into()))?;
    let token = env("AWS_SESSION_TOKEN");
    let endpoint = env("AWS_ENDPOINT_URL_SECRETS_MANAGER")
        .or_else(|| env("AWS_ENDPOINT_URL"))
        .unwrap_or_else(|| format!("https://secretsmanager.{region}.amazonaws.com"));
    let host = endpoint
        .split("://")
        .nth(1)
        .unwrap_or(&endpoint)
        .trim_end_matches('/')
        .to_owned();
    let body = serde_json::json!({ "SecretId": arn }).to_string();
    let target = "secretsmanager.GetSecretValue";
    let amz_date = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let signed = SignedPost {
        access_key: &access,
        secret_key: &secret,
        region: &region,
        service: "secretsmanager",
        host: &host,
        amz_date: &amz_date,
        target,
    };
    let auth = signed.authorization(body.as_bytes());
    let call = move || -> Result<String, AwsSmError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| AwsSmError::Request(e.to_string()))?;
        rt.block_on(async {
            let client = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .map_err(|e| AwsSmError::Request(e.to_string()))?;
            let mut req = client
                .post(&endpoint)
                .header("content-type", "application/x-amz-json-1.1")
                .header("x-amz-date", &amz_date)
                .header("x-amz-target", target)
                .header("authorization", auth)
                .body(body);
            if let Some(t) = token {
                req = req.header("x-amz-security-token", t);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| AwsSmError::Request(e.without_url().to_string()))?;
            let status = resp.status();
            let text = resp
                .text()
                .await
                .map_err(|e| AwsSmError::Request(e.without_url().to_string()))?;
            if !status.is_success() {
                // AWS error bodies name the error type; keep only that.
                let kind = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v.get("__type").and_then(|t| t.as_str()).map(str::to_owned))
                    .unwrap_or_default();
                return Err(AwsSmError::Request(format!("{status} {kind}")));
            }
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|_| AwsSmError::Request("unreadable answer".into()))?;
            v.get("SecretString")
                .and_then(|s| s.as_str())
                .map(str::to_owned)
                .ok_or_else(|| AwsSmError::Request("the secret has no SecretString".into()))
        })
    };
    let value = std::thread::scope(|s| s.spawn(call).join())
        .map_err(|_| AwsSmError::Request("fetch thread failed".into()))??;
    match json_key {
        None => Ok(value),
        Some(k) => serde_json::from_str::<serde_json::Value>(&value)
            .ok()
            .and_then(|v| {
                v.get(&k)
                    .map(|x| x.as_str().map(str::to_owned).unwrap_or_else(|| x.to_string()))
            })
            .ok_or_else(|| AwsSmError::Setup(format!("the secret is not JSON with a key `{k}`"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231, test case 2.
        let mac = hmac(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn signing_key_derivation_matches_the_aws_example() {
        // AWS's documented example: wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY, 20120215, us-east-1, iam.
        let k = hmac(b"AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", b"20120215");
        let k = hmac(&k, b"us-east-1");
        let k = hmac(&k, b"iam");
        let k = hmac(&k, b"aws4_request");
        assert_eq!(
            hex::encode(k),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }
}
