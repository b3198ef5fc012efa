//! How the Azure queue adapter authenticates: a connection string with an account key (we sign an
//! account SAS from it: the official crate has no shared-key mode), a connection string or URL
//! carrying a SAS, or Entra ID (workload identity) through `azure_identity`.

use std::time::Duration;

/// The parts of a storage connection string the queue adapter uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionString {
    /// Storage account name.
    pub account: String,
    /// Base URL of the queue service (`https://ACCOUNT.queue.core.windows.net`, or Azurite's).
    pub endpoint: String,
    /// Base64 account key, if given.
    pub key: Option<String>,
    /// A ready SAS (without the leading `?`), if given.
    pub sas: Option<String>,
}

impl std::fmt::Display for ConnectionString {
    /// Shows where it points, never the key or the SAS.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "account `{}` at {}", self.account, self.endpoint)
    }
}

/// Parses `Key=Value;…` (names case-insensitive, as the Azure SDKs read them).
pub fn parse_connection_string(s: &str) -> Result<ConnectionString, String> {
    let mut fields = std::collections::HashMap::new();
    for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| "the Azure connection string has a part without `=`".to_owned())?;
        fields.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
    }
    let get = |k: &str| fields.get(k).cloned().filter(|v| !v.is_empty());
    let account = get("accountname");
    let endpoint = match get("queueendpoint") {
        Some(e) => e.trim_end_matches('/').to_owned(),
        None => {
            let account = account
                .as_deref()
                .ok_or("the Azure connection string names neither QueueEndpoint nor AccountName")?;
            let protocol = get("defaultendpointsprotocol").unwrap_or_else(|| "https".into());
            let suffix = get("endpointsuffix").unwrap_or_else(|| "core.windows.net".into());
            format!("{protocol}://{account}.queue.{suffix}")
        }
    };
    let account = match account {
        Some(a) => a,
        // Azurite-style endpoints name the account in the path; Azure in the host.
        None => account_of_endpoint(&endpoint).ok_or("the Azure connection string has no AccountName")?,
    };
    let key = get("accountkey");
    let sas = get("sharedaccesssignature").map(|s| s.trim_start_matches('?').to_owned());
    if key.is_none() && sas.is_none() {
        return Err("the Azure connection string has neither AccountKey nor SharedAccessSignature".into());
    }
    Ok(ConnectionString {
        account,
        endpoint,
        key,
        sas,
    })
}

fn account_of_endpoint(endpoint: &str) -> Option<String> {
    let rest = endpoint.split_once("://")?.1;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let first = path.split('/').next().filter(|p| !p.is_empty());
    first
        .map(str::to_owned)
        .or_else(|| host.split('.').next().map(str::to_owned))
}

/// Splits a SAS URL (`https://ACCOUNT.queue.core.windows.net/?sv=…&sig=…`) into endpoint and SAS.
pub fn parse_sas_url(url: &str) -> Result<ConnectionString, String> {
    let (base, sas) = url
        .split_once('?')
        .ok_or("the Azure SAS URL has no query string (no SAS)")?;
    if !sas.contains("sig=") {
        return Err("the Azure SAS URL's query has no `sig`".into());
    }
    let endpoint = base.trim_end_matches('/').to_owned();
    Ok(ConnectionString {
        account: account_of_endpoint(&endpoint).ok_or("the Azure SAS URL names no account")?,
        endpoint,
        key: None,
        sas: Some(sas.to_owned()),
    })
}

/// Service version the account SAS is signed for.
const SAS_VERSION: &str = "2022-11-02";

/// An account SAS for the queue service (read, add, update, process, create, list, write,
/// delete on services, containers and objects) valid from a minute ago for `valid_for`.
pub fn account_sas(
    account: &str,
    key: &str,
    now: chrono::DateTime<chrono::Utc>,
    valid_for: Duration,
) -> Result<String, String> {
    let fmt = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let start = fmt(now - chrono::Duration::minutes(1));
    let expiry = fmt(now + chrono::Duration::from_std(valid_for).map_err(|e| e.to_string())?);
    let (permissions, services, resource_types, protocol) = ("rwdlacup", "q", "sco", "https,http");
    // Account SAS string-to-sign for versions from 2020-12-06 (with the encryption scope line).
    let to_sign = format!(
        "{account}\n{permissions}\n{services}\n{resource_types}\n{start}\n{expiry}\n\n{protocol}\n{SAS_VERSION}\n\n"
    );
    let signature = azure_core::hmac::hmac_sha256(&to_sign, &azure_core::credentials::Secret::new(key.to_owned()))
        .map_err(|_| "the Azure account key is not valid base64".to_owned())?;
    let enc = crate::domain::url::percent_encode;
    Ok(format!(
        "sv={SAS_VERSION}&ss={services}&srt={resource_types}&sp={permissions}&st={}&se={}&spr={}&sig={}",
        enc(&start),
        enc(&expiry),
        enc(protocol),
        enc(&signature)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const AZURITE: &str = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;\
        AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;\
        QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;";

    #[test]
    fn connection_strings_name_endpoint_account_and_credential() {
        let c = parse_connection_string(AZURITE).unwrap();
        assert_eq!(
            (c.account.as_str(), c.endpoint.as_str(), c.sas.is_none()),
            ("devstoreaccount1", "http://127.0.0.1:10001/devstoreaccount1", true)
        );
        let c =
            parse_connection_string("AccountName=acme;AccountKey=a2V5;EndpointSuffix=core.chinacloudapi.cn").unwrap();
        assert_eq!(c.endpoint, "https://acme.queue.core.chinacloudapi.cn");
        let c = parse_connection_string(
            "QueueEndpoint=https://acme.queue.core.windows.net/;SharedAccessSignature=?sv=1&sig=x",
        )
        .unwrap();
        assert_eq!((c.account.as_str(), c.sas.as_deref()), ("acme", Some("sv=1&sig=x")));
        assert!(parse_connection_string("AccountName=acme")
            .unwrap_err()
            .contains("neither AccountKey"));
        assert!(parse_connection_string("garbage").is_err());
        assert!(
            !format!("{}", parse_connection_string(AZURITE).unwrap()).contains("Eby8"),
            "no key in messages"
        );
    }

    #[test]
    fn sas_urls_split_into_endpoint_and_sas() {
        let c = parse_sas_url("https://acme.queue.core.windows.net/?sv=2022-11-02&sig=abc").unwrap();
        assert_eq!(
            (c.account.as_str(), c.sas.as_deref()),
            ("acme", Some("sv=2022-11-02&sig=abc"))
        );
        assert!(parse_sas_url("https://acme.queue.core.windows.net/").is_err());
    }

    #[test]
    fn account_sas_is_signed_over_the_documented_fields() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-26T12:00:00Z")
            .unwrap()
            .to_utc();
        let sas = account_sas("acme", "a2V5", now, Duration::from_secs(3600)).unwrap();
        assert!(sas.starts_with("sv=2022-11-02&ss=q&srt=sco&sp=rwdlacup&st=2026-11-26T11%3A59%3A00Z&se=2026-11-26T13%3A00%3A00Z&spr=https%2Chttp&sig="), "{sas}");
        // HMAC-SHA256 over the string-to-sign with the decoded key, base64, URL-encoded.
        let expected = azure_core::hmac::hmac_sha256(
            "acme\nrwdlacup\nq\nsco\n2026-11-26T11:59:00Z\n2026-11-26T13:00:00Z\n\nhttps,http\n2022-11-02\n\n",
            &azure_core::credentials::Secret::new("a2V5"),
        )
        .unwrap();
        assert!(sas.ends_with(&crate::domain::url::percent_encode(&expected)));
        assert!(account_sas("acme", "not base64!", now, Duration::from_secs(60)).is_err());
    }
}
