//! ADO.NET connection strings (`Server=tcp:host,1433;Database=…;User Id=…;Password=…`) parsed
//! by us rather than by tiberius, so that every mistake gets an error naming the keyword and
//! never the value (the string is itself a secret: it holds the password), unknown keywords are
//! refused instead of silently ignored, and an Entra ID access token can be a secret reference
//! resolved at every new connection (tokens expire within the hour).

use crate::domain::secret_ref::SecretRef;
use crate::secrets::Secret;
use std::time::Duration;

/// How the client authenticates.
#[derive(Clone)]
pub enum Auth {
    /// SQL Server authentication (`User Id`, `Password`).
    Sql {
        /// The login.
        user: String,
        /// Its password (from the connection string, itself a secret).
        password: Secret,
    },
    /// An Entra ID (Azure AD) access token, read from a secret reference on every connect.
    AccessToken(SecretRef),
}

/// TLS for the connection (`Encrypt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encrypt {
    /// `Encrypt=false`: only the login packet is encrypted.
    LoginOnly,
    /// `Encrypt=true` (the default of current drivers): everything, or fail.
    Required,
    /// `Encrypt=strict`: TDS 8.0, TLS before any TDS byte.
    Strict,
}

/// A parsed connection string.
#[derive(Clone)]
pub struct ConnSpec {
    /// Host name or address.
    pub host: String,
    /// TCP port, when given (`host,port`); otherwise 1433 or the instance's port.
    pub port: Option<u16>,
    /// Named instance (`host\instance`), located through the SQL Browser service.
    pub instance: Option<String>,
    /// Initial catalog.
    pub database: Option<String>,
    /// Credentials.
    pub auth: Auth,
    /// TLS level.
    pub encrypt: Encrypt,
    /// Accept any server certificate (development servers, the Docker image).
    pub trust_server_certificate: bool,
    /// Give up connecting (TCP, TLS and login) after this long.
    pub connect_timeout: Duration,
    /// Give up on a statement that has produced nothing for this long (`None`: wait).
    pub command_timeout: Option<Duration>,
    /// Shown in the server's session list.
    pub application_name: String,
    /// `ApplicationIntent=ReadOnly`: route to a readable secondary.
    pub read_only: bool,
    /// `Max Pool Size`.
    pub max_pool_size: Option<usize>,
}

impl std::fmt::Debug for ConnSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.describe())
    }
}

/// A malformed connection string; never contains a value from it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SQL Server connection string: {0}")]
pub struct ConnStrError(pub String);

fn err(msg: impl Into<String>) -> ConnStrError {
    ConnStrError(msg.into())
}

/// Keywords real connection strings carry that change nothing here.
const IGNORED: &[&str] = &[
    "persist security info",
    "multipleactiveresultsets",
    "multiple active result sets",
    "pooling",
    "min pool size",
    "load balance timeout",
    "connect retry count",
    "connect retry interval",
    "packet size",
    "workstation id",
    "wsid",
    "current language",
    "language",
    "transparent network ip resolution",
    "column encryption setting",
    "enlist",
    "replication",
    "type system version",
    "pool blocking period",
];

/// Splits `key=value;…` into (lower-cased key, value) pairs. Values may be quoted with `'` or
/// `"` (the quote doubled inside) or braces; unquoted values are trimmed.
fn pairs(s: &str) -> Result<Vec<(String, String)>, ConnStrError> {
    let mut out = Vec::new();
    let mut rest = s;
    let mut n = 0;
    loop {
        rest = rest.trim_start_matches([' ', '\t', '\r', '\n', ';']);
        if rest.is_empty() {
            return Ok(out);
        }
        n += 1;
        let eq = rest
            .find('=')
            .ok_or_else(|| err(format!("part {n} has no `=` (expected `keyword=value`)")))?;
        let key = rest[..eq].trim().to_ascii_lowercase();
        if key.is_empty() || key.contains(';') {
            return Err(err(format!("part {n} has no keyword before `=`")));
        }
        let after = rest[eq + 1..].trim_start_matches([' ', '\t']);
        let (value, next) = match after.chars().next() {
            Some(q @ ('\'' | '"' | '{')) => {
                let close = if q == '{' { '}' } else { q };
                let body = &after[1..];
                let mut value = String::new();
                let mut chars = body.char_indices().peekable();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    if c == close {
                        if chars.peek().map(|&(_, c2)| c2) == Some(close) {
                            value.push(c);
                            chars.next();
                            continue;
                        }
                        end = Some(i + 1);
                        break;
                    }
                    value.push(c);
                }
                let end = end.ok_or_else(|| err(format!("the value of `{key}` opens a quote it never closes")))?;
                let tail = body[end..].trim_start();
                if !(tail.is_empty() || tail.starts_with(';')) {
                    return Err(err(format!("unexpected text after the quoted value of `{key}`")));
                }
                (value, tail)
            }
            _ => match after.find(';') {
                Some(i) => (after[..i].trim().to_owned(), &after[i..]),
                None => (after.trim().to_owned(), ""),
            },
        };
        if out.iter().any(|(k, _)| *k == key) {
            return Err(err(format!("`{key}` is given twice")));
        }
        out.push((key, value));
        rest = next;
    }
}

fn boolean(key: &str, v: &str) -> Result<bool, ConnStrError> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        _ => Err(err(format!("`{key}` must be true or false"))),
    }
}

fn seconds(key: &str, v: &str) -> Result<u64, ConnStrError> {
    v.parse()
        .map_err(|_| err(format!("`{key}` must be a whole number of seconds")))
}

/// Splits the `Server` value: `[tcp:]host[\instance][,port]`; `.`, `(local)` and `localhost`
/// mean this machine.
fn server(v: &str) -> Result<(String, Option<String>, Option<u16>), ConnStrError> {
    let v = v.trim();
    let lower = v.to_ascii_lowercase();
    if lower.starts_with("np:") || lower.starts_with("lpc:") || lower.starts_with("admin:") {
        return Err(err("only TCP connections are supported (`Server=tcp:host,port`)"));
    }
    let v = if lower.starts_with("tcp:") { &v[4..] } else { v };
    let (hostpart, port) = match v.rsplit_once(',') {
        Some((h, p)) => (
            h.trim(),
            Some(
                p.trim()
                    .parse::<u16>()
                    .map_err(|_| err("the port after `,` in `Server` must be a number 1–65535"))?,
            ),
        ),
        None => (v, None),
    };
    let (host, instance) = match hostpart.split_once('\\') {
        Some((h, i)) if !i.trim().is_empty() => (h.trim(), Some(i.trim().to_owned())),
        Some(_) => return Err(err("`Server` names an empty instance after `\\`")),
        None => (hostpart, None),
    };
    if host.is_empty() {
        return Err(err("`Server` names no host"));
    }
    let host = match host.to_ascii_lowercase().as_str() {
        "." | "(local)" | "localhost" => "localhost".to_owned(),
        _ => host.to_owned(),
    };
    Ok((host, instance, port))
}

impl ConnSpec {
    /// Parses an ADO.NET connection string.
    pub fn parse(s: &str) -> Result<ConnSpec, ConnStrError> {
        let mut host = None;
        let (mut database, mut user, mut password, mut token, mut method) = (None, None, None, None, None);
        let mut spec = ConnSpec {
            host: String::new(),
            port: None,
            instance: None,
            database: None,
            auth: Auth::AccessToken(SecretRef::Env(String::new())),
            encrypt: Encrypt::Required,
            trust_server_certificate: false,
            connect_timeout: Duration::from_secs(15),
            command_timeout: None,
            application_name: "signals-etl".into(),
            read_only: false,
            max_pool_size: None,
        };
        for (key, v) in pairs(s)? {
            match key.as_str() {
                "server" | "data source" | "address" | "addr" | "network address" => host = Some(server(&v)?),
                "database" | "initial catalog" => database = Some(v),
                "user id" | "uid" | "user" | "username" => user = Some(v),
                "password" | "pwd" => password = Some(Secret::from_value(v)),
                "authentication" => method = Some(v.to_ascii_lowercase().replace([' ', '-'], "")),
                "access token" | "accesstoken" => token = Some(v),
                "encrypt" => {
                    spec.encrypt = match v.to_ascii_lowercase().as_str() {
                        "true" | "yes" | "mandatory" => Encrypt::Required,
                        "false" | "no" | "optional" => Encrypt::LoginOnly,
                        "strict" => Encrypt::Strict,
                        _ => return Err(err("`Encrypt` must be true, false or strict")),
                    }
                }
                "trustservercertificate" | "trust server certificate" => {
                    spec.trust_server_certificate = boolean(&key, &v)?
                }
                "connect timeout" | "connection timeout" | "timeout" => {
                    spec.connect_timeout = Duration::from_secs(seconds(&key, &v)?.max(1))
                }
                "command timeout" => {
                    let s = seconds(&key, &v)?;
                    spec.command_timeout = (s > 0).then(|| Duration::from_secs(s));
                }
                "application name" | "app" => spec.application_name = v,
                "applicationintent" | "application intent" => {
                    spec.read_only = match v.to_ascii_lowercase().as_str() {
                        "readonly" => true,
                        "readwrite" => false,
                        _ => return Err(err("`ApplicationIntent` must be ReadOnly or ReadWrite")),
                    }
                }
                "max pool size" => {
                    spec.max_pool_size = Some(
                        v.parse()
                            .ok()
                            .filter(|n| *n > 0)
                            .ok_or_else(|| err("`Max Pool Size` must be a positive whole number"))?,
                    )
                }
                "integrated security" | "trusted_connection" if boolean(&key, &v).unwrap_or(true) => return Err(err(
                    "Windows integrated security is not supported: use SQL authentication or an Entra ID access token",
                )),
                "integrated security" | "trusted_connection" => {}
                "multisubnetfailover" | "multi subnet failover" if boolean(&key, &v)? => {
                    return Err(err(
                        "`MultiSubnetFailover=true` is not supported: name the listener's current address",
                    ))
                }
                k if IGNORED.contains(&k) || k == "multisubnetfailover" || k == "multi subnet failover" => {}
                other => return Err(err(format!("unknown keyword `{other}`"))),
            }
        }
        let (h, instance, port) = host.ok_or_else(|| err("`Server` is required"))?;
        (spec.host, spec.instance, spec.port) = (h, instance, port);
        spec.database = database.filter(|d| !d.is_empty());
        spec.auth = match method.as_deref() {
            None | Some("sqlpassword") => match (user, password) {
                (Some(u), Some(p)) if !u.is_empty() => Auth::Sql { user: u, password: p },
                (Some(u), None) if !u.is_empty() => return Err(err("`User Id` is given without a `Password`")),
                _ => return Err(err("`User Id` is required for SQL authentication")),
            },
            Some("activedirectoryaccesstoken") => {
                let t = token.ok_or_else(|| {
                    err("`Authentication=ActiveDirectoryAccessToken` needs `Access Token=env:NAME` or `file:PATH`")
                })?;
                Auth::AccessToken(SecretRef::try_from(t).map_err(|_| {
                    err("`Access Token` must be a secret reference (`env:NAME`, `file:PATH`, `aws-sm:ARN`), not a token")
                })?)
            }
            Some(other) => {
                return Err(err(format!(
                    "`Authentication={other}` is not supported: use SqlPassword or ActiveDirectoryAccessToken"
                )))
            }
        };
        Ok(spec)
    }

    /// Where it connects, for logs and errors: host, instance or port, database — no credential.
    pub fn describe(&self) -> String {
        let mut s = format!("mssql://{}", self.host);
        if let Some(i) = &self.instance {
            s.push('\\');
            s.push_str(i);
        }
        s.push_str(&format!(":{}", self.port.unwrap_or(1433)));
        if let Some(d) = &self.database {
            s.push('/');
            s.push_str(d);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ConnSpec {
        ConnSpec::parse(s).unwrap()
    }

    fn fails(s: &str) -> String {
        ConnSpec::parse(s).expect_err("should fail").to_string()
    }

    #[test]
    fn reads_the_usual_forms() {
        let c = parse(
            "Server=tcp:db.example.com,1444;Database=Sales;User Id=etl;Password=p@ss;TrustServerCertificate=true",
        );
        assert_eq!(
            (c.host.as_str(), c.port, c.instance.as_deref()),
            ("db.example.com", Some(1444), None)
        );
        assert_eq!(c.database.as_deref(), Some("Sales"));
        assert!(c.trust_server_certificate);
        assert_eq!(c.encrypt, Encrypt::Required);
        match &c.auth {
            Auth::Sql { user, password } => assert_eq!((user.as_str(), password.expose()), ("etl", "p@ss")),
            Auth::AccessToken(_) => panic!("sql auth expected"),
        }
        let c = parse("data source=SQL01\\REPORTING; initial catalog = x ; uid=u; pwd=p; Encrypt=false; Connect Timeout=5; Command Timeout=60; ApplicationIntent=ReadOnly; Max Pool Size=4");
        assert_eq!(
            (c.host.as_str(), c.instance.as_deref(), c.port),
            ("SQL01", Some("REPORTING"), None)
        );
        assert_eq!(c.encrypt, Encrypt::LoginOnly);
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.command_timeout, Some(Duration::from_secs(60)));
        assert!(c.read_only);
        assert_eq!(c.max_pool_size, Some(4));
        assert_eq!(parse("Server=(local);User Id=sa;Password=x").host, "localhost");
        assert_eq!(
            parse("Server=.,1433;User Id=sa;Password=x;Encrypt=strict").encrypt,
            Encrypt::Strict
        );
    }

    #[test]
    fn quoted_values_keep_separators_and_doubled_quotes() {
        let c = parse(r#"Server=h;User Id=sa;Password='a;b=''c'''"#);
        let Auth::Sql { password, .. } = &c.auth else { panic!() };
        assert_eq!(password.expose(), "a;b='c'");
        let c = parse(r#"Server=h;User Id=sa;Password="x""y";Database={my;db}"#);
        let Auth::Sql { password, .. } = &c.auth else { panic!() };
        assert_eq!(password.expose(), "x\"y");
        assert_eq!(c.database.as_deref(), Some("my;db"));
    }

    #[test]
    fn access_tokens_are_secret_references() {
        let c = parse("Server=x.database.windows.net;Database=d;Authentication=Active Directory Access Token;Access Token=file:/var/run/token");
        assert!(matches!(&c.auth, Auth::AccessToken(SecretRef::File(p)) if p == "/var/run/token"));
        let e = fails("Server=x;Authentication=ActiveDirectoryAccessToken;Access Token=eyJhbGciOi.secret.token");
        assert!(e.contains("must be a secret reference"), "{e}");
        assert!(!e.contains("eyJ"), "the token is not echoed: {e}");
    }

    #[test]
    fn malformed_strings_say_what_is_wrong_and_never_echo_values() {
        let cases = [
            ("User Id=sa;Password=hunter2", "`Server` is required"),
            ("Server=h;Password=hunter2", "`User Id` is required"),
            ("Server=h;User Id=sa", "without a `Password`"),
            (
                "Server=h;User Id=sa;Password=hunter2;Colour=blue",
                "unknown keyword `colour`",
            ),
            ("Server=h;User Id=sa;Password='hunter2", "never closes"),
            ("Server=h;User Id=sa;Password=hunter2;Password=hunter3", "given twice"),
            ("Server=h,99999;User Id=sa;Password=hunter2", "port"),
            (
                "Server=h;User Id=sa;Password=hunter2;Encrypt=maybe",
                "`Encrypt` must be",
            ),
            (
                "Server=h;User Id=sa;Password=hunter2;Connect Timeout=soon",
                "whole number of seconds",
            ),
            (
                "Server=h;Integrated Security=SSPI",
                "integrated security is not supported",
            ),
            ("Server=np:\\\\.\\pipe\\sql;User Id=sa;Password=hunter2", "only TCP"),
            ("Server=h;User Id=sa;hunter2", "has no `=`"),
            (
                "Server=h;User Id=sa;Password=hunter2;Authentication=ActiveDirectoryInteractive",
                "not supported",
            ),
        ];
        for (s, want) in cases {
            let e = fails(s);
            assert!(e.contains(want), "{s}: {e}");
            assert!(!e.contains("hunter2"), "{s}: the password leaked into `{e}`");
        }
        let c = parse("Server=h;User Id=sa;Password=hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.describe(), "mssql://h:1433");
    }

    #[test]
    fn harmless_keywords_are_accepted() {
        parse("Server=h;User Id=sa;Password=x;Persist Security Info=False;MultipleActiveResultSets=False;Pooling=true;Integrated Security=false;MultiSubnetFailover=False");
    }
}
