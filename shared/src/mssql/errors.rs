//! What went wrong talking to SQL Server, in the words an operator needs: the driver's own
//! errors say "Token error: …" or an I/O kind, which is not enough to tell a wrong password from
//! a firewall. Classes decide retrying too: a deadlock victim (1205) or a busy Azure database is
//! tried again, a failed login is reported as it is.

use crate::errors::{SourceError, StoreError};

/// The class of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// No TCP connection: DNS, refused, unreachable, reset.
    Unreachable,
    /// The server refused the credentials (18456) or the token.
    LoginFailed,
    /// The database named in the connection string does not exist or is not accessible (4060, 911).
    NoDatabase,
    /// TLS could not be agreed (encryption settings or certificate).
    Tls,
    /// The peer closed the connection mid-conversation: not a SQL Server port, a proxy, or a
    /// server that dropped us.
    Closed,
    /// Connecting or a statement took longer than its timeout.
    Timeout,
    /// Chosen as a deadlock victim (1205): run it again.
    Deadlock,
    /// A lock wait ran past `LOCK_TIMEOUT` (1222).
    LockTimeout,
    /// Azure SQL throttling or failover (40501, 40613, 49918–49920, 10928, 10929, 4221).
    Busy,
    /// The object does not exist (208).
    NoSuchObject,
    /// Missing permission (229, 230, 262, 297, 300).
    PermissionDenied,
    /// Anything else.
    Other,
}

impl Class {
    /// Whether trying again later may succeed.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Class::Unreachable | Class::Closed | Class::Timeout | Class::Deadlock | Class::LockTimeout | Class::Busy
        )
    }

    fn lead(self) -> &'static str {
        match self {
            Class::Unreachable => "server unreachable",
            Class::LoginFailed => "login failed (wrong user or password, disabled login, or expired token)",
            Class::NoDatabase => "database missing or not accessible to this login",
            Class::Tls => "TLS mismatch (check Encrypt and TrustServerCertificate, or the server's certificate)",
            Class::Closed => "the server closed the connection (is this a SQL Server port? Encrypt settings?)",
            Class::Timeout => "timed out",
            Class::Deadlock => "deadlock victim (retried)",
            Class::LockTimeout => "lock wait timed out",
            Class::Busy => "database busy or failing over (retried)",
            Class::NoSuchObject => "no such object",
            Class::PermissionDenied => "permission denied",
            Class::Other => "failed",
        }
    }
}

/// Classifies from a server error number, an I/O error kind, or whether TLS failed.
pub fn class_of(code: Option<u32>, io: Option<std::io::ErrorKind>, tls: bool) -> Class {
    use std::io::ErrorKind as K;
    if tls {
        return Class::Tls;
    }
    if let Some(kind) = io {
        return match kind {
            K::TimedOut | K::WouldBlock => Class::Timeout,
            K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => Class::Closed,
            _ => Class::Unreachable,
        };
    }
    match code {
        Some(18456 | 18452 | 18470 | 18486 | 18487 | 18488 | 33155) => Class::LoginFailed,
        Some(4060 | 911 | 916 | 40508) => Class::NoDatabase,
        Some(1205) => Class::Deadlock,
        Some(1222) => Class::LockTimeout,
        Some(40501 | 40613 | 49918 | 49919 | 49920 | 10928 | 10929 | 4221 | 40197 | 40540) => Class::Busy,
        Some(208) => Class::NoSuchObject,
        Some(229 | 230 | 262 | 297 | 300) => Class::PermissionDenied,
        _ => Class::Other,
    }
}

/// The class and an operator's message of a driver error.
pub fn describe(e: &tiberius::error::Error) -> (Class, String) {
    use tiberius::error::Error as E;
    let (class, said) = match e {
        E::Server(t) => (
            class_of(Some(t.code()), None, false),
            format!("{} (error {}, state {})", t.message(), t.code(), t.state()),
        ),
        E::Io { kind, message } => (class_of(None, Some(*kind), false), message.clone()),
        E::Tls(m) => (Class::Tls, m.clone()),
        E::Routing { host, port } => (
            Class::Other,
            format!("server redirected the connection to {host}:{port}"),
        ),
        other => (Class::Other, other.to_string()),
    };
    (class, format!("{}: {said}", class.lead()))
}

/// A statement's failure, as a source error.
pub fn source_error(e: &tiberius::error::Error) -> SourceError {
    let (class, detail) = describe(e);
    match class {
        Class::Unreachable | Class::Closed | Class::LoginFailed | Class::NoDatabase | Class::Tls => {
            SourceError::Connect {
                connection: "mssql".into(),
                detail,
            }
        }
        _ => SourceError::Query { detail },
    }
}

/// A statement's failure, as a store error.
pub fn store_error(context: &'static str) -> impl Fn(tiberius::error::Error) -> StoreError {
    move |e| StoreError::Db {
        context,
        detail: describe(&e).1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;

    #[test]
    fn classes_name_the_cause_and_decide_retries() {
        assert_eq!(class_of(Some(18456), None, false), Class::LoginFailed);
        assert_eq!(class_of(Some(4060), None, false), Class::NoDatabase);
        assert_eq!(class_of(Some(1205), None, false), Class::Deadlock);
        assert_eq!(class_of(Some(1222), None, false), Class::LockTimeout);
        assert_eq!(class_of(Some(40613), None, false), Class::Busy);
        assert_eq!(
            class_of(None, Some(ErrorKind::ConnectionRefused), false),
            Class::Unreachable
        );
        assert_eq!(class_of(None, Some(ErrorKind::TimedOut), false), Class::Timeout);
        assert_eq!(class_of(None, Some(ErrorKind::UnexpectedEof), false), Class::Closed);
        assert_eq!(class_of(None, None, true), Class::Tls);
        assert_eq!(class_of(Some(102), None, false), Class::Other);
        assert!(Class::Deadlock.retryable() && Class::Busy.retryable() && Class::Unreachable.retryable());
        assert!(!Class::LoginFailed.retryable() && !Class::NoDatabase.retryable() && !Class::Tls.retryable());
    }

    #[test]
    fn driver_errors_read_as_their_class() {
        let io = tiberius::error::Error::Io {
            kind: ErrorKind::ConnectionRefused,
            message: "connection refused".into(),
        };
        let (class, msg) = describe(&io);
        assert_eq!(class, Class::Unreachable);
        assert_eq!(msg, "server unreachable: connection refused");
        let (class, msg) = describe(&tiberius::error::Error::Tls("invalid peer certificate".into()));
        assert_eq!(class, Class::Tls);
        assert!(msg.contains("TrustServerCertificate"), "{msg}");
    }
}
