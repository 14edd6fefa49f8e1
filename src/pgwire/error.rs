//! The errors of a connection ([`PgError`]): what went wrong with one server
//! is a [`TargetError`], the server named once (`host=... port=...`) beside
//! a [`PgErrorKind`]; the errors about no server in particular (none to try,
//! none fitting `target_session_attrs`, both attempts of a TLS fallback) are
//! `PgError`'s other variants. The messages are pg_receivewal-like and
//! tested as such (`tests/dropin_messages.rs`); each kind's wording, with the
//! place of the target in it, is written once, in [`TargetError`]'s
//! `Display`.

use std::fmt;
use std::io;

use super::auth::AuthError;
use super::backend::{ProtocolError, ServerMessage};
use super::tls::{AttemptFailure, TlsError};
use crate::conninfo::TargetSessionAttrs;

/// Errors of a connection, at connect time or later.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// Something that went wrong with one server.
    #[error(transparent)]
    At(#[from] TargetError),
    #[error("no host to connect to")]
    NoTarget,
    /// Every host failed, at least one because its role did not fit
    /// `target_session_attrs`; one entry per attempt, in order, in libpq's
    /// wording. Retryable: a standby may be promoted, a host may come back.
    #[error("no server fits target_session_attrs={attrs}: {}", .failures.join("; "))]
    NoSuitableHost {
        attrs: TargetSessionAttrs,
        failures: Vec<String>,
    },
    /// The second attempt of `sslmode=prefer` (without TLS) or `allow` (with
    /// TLS) failed too; both reasons are kept, as libpq reports both.
    #[error("{then} (the attempt {} TLS before it failed too: {first})", if *.first_was_tls { "with" } else { "without" })]
    Fallback {
        first: Box<PgError>,
        first_was_tls: bool,
        then: Box<PgError>,
    },
}

/// What went wrong with one server, and which (`host=... port=...`, as
/// [`crate::conninfo::Target`] shows it).
#[derive(Debug)]
pub struct TargetError {
    pub target: String,
    pub kind: PgErrorKind,
}

/// What went wrong with a server ([`TargetError`] says which).
#[derive(Debug)]
pub enum PgErrorKind {
    Connect {
        source: io::Error,
    },
    ConnectTimeout {
        secs: u64,
    },
    WriteTimeout {
        secs: u64,
    },
    ReplyTimeout {
        waiting_for: String,
        secs: u64,
    },
    Io {
        source: io::Error,
    },
    Closed,
    Protocol {
        source: ProtocolError,
    },
    /// The server's ErrorResponse.
    Server {
        message: Box<ServerMessage>,
    },
    NoPassword,
    Authentication {
        source: AuthError,
    },
    Unexpected {
        during: &'static str,
        got: String,
    },
    Tls {
        source: TlsError,
    },
}

impl PgError {
    /// `kind` at `target`.
    pub fn at(target: impl Into<String>, kind: PgErrorKind) -> PgError {
        PgError::At(TargetError {
            target: target.into(),
            kind,
        })
    }

    /// The ErrorResponse `message` of the server at `target`.
    pub fn server(target: impl Into<String>, message: ServerMessage) -> PgError {
        PgError::at(
            target,
            PgErrorKind::Server {
                message: Box::new(message),
            },
        )
    }

    /// What went wrong with the server, when one is concerned.
    pub fn kind(&self) -> Option<&PgErrorKind> {
        match self {
            PgError::At(e) => Some(&e.kind),
            _ => None,
        }
    }

    /// The server's SQLSTATE, when the server sent an error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            PgError::At(TargetError {
                kind: PgErrorKind::Server { message },
                ..
            }) => Some(message.code.as_str()),
            PgError::Fallback { then, .. } => then.sqlstate(),
            _ => None,
        }
    }

    /// Whether retrying cannot help: authentication and authorisation
    /// failures, and TLS settings or files that are wrong locally (the same
    /// for every host).
    pub fn is_auth_failure(&self) -> bool {
        if let PgError::Fallback { then, .. } = self {
            return then.is_auth_failure();
        }
        match self.kind() {
            Some(PgErrorKind::NoPassword | PgErrorKind::Authentication { .. }) => true,
            Some(PgErrorKind::Tls { source }) => source.is_local_configuration(),
            Some(PgErrorKind::Server { message }) => {
                message.code.starts_with("28") || message.code == "42501" || message.code == "3D000"
            }
            _ => false,
        }
    }

    /// Whether the other encryption may succeed where this attempt failed
    /// (see [`super::tls::fallback`]).
    pub(super) fn attempt_failure(&self) -> AttemptFailure {
        match self.kind() {
            Some(PgErrorKind::Server { .. }) => AttemptFailure::ServerRejected,
            Some(PgErrorKind::Tls {
                source:
                    TlsError::ServerRefusedTls
                    | TlsError::ErrorDuringSslExchange
                    | TlsError::InvalidSslResponse(_),
            }) => AttemptFailure::Other,
            Some(PgErrorKind::Tls { .. }) => AttemptFailure::Handshake,
            _ => AttemptFailure::Other,
        }
    }
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = &self.target;
        match &self.kind {
            PgErrorKind::Connect { source } => write!(f, "could not connect to {target}: {source}"),
            PgErrorKind::ConnectTimeout { secs } => {
                write!(f, "connection to {target} timed out after {secs} s")
            }
            PgErrorKind::WriteTimeout { secs } => write!(
                f,
                "{target}: the server accepted none of our bytes for {secs} s"
            ),
            PgErrorKind::ReplyTimeout { waiting_for, secs } => write!(
                f,
                "{target}: no reply from the server within {secs} s while waiting for {waiting_for}"
            ),
            PgErrorKind::Io { source } => {
                write!(f, "I/O error on the connection to {target}: {source}")
            }
            PgErrorKind::Closed => write!(f, "{target} closed the connection unexpectedly"),
            PgErrorKind::Protocol { source } => write!(f, "protocol error from {target}: {source}"),
            PgErrorKind::Server { message } => {
                write!(f, "{target}: {message}{}", hint_suffix(message))
            }
            PgErrorKind::NoPassword => write!(
                f,
                "{target}: the server asks for a password but none was given (hint: use -W, PGPASSWORD or a password file)"
            ),
            PgErrorKind::Authentication { source } => write!(f, "{target}: {source}"),
            PgErrorKind::Unexpected { during, got } => write!(
                f,
                "{target}: unexpected message from the server while {during}: {got}"
            ),
            PgErrorKind::Tls { source } => write!(f, "{target}: {source}"),
        }
    }
}

// The message includes the cause's and `source` returns it too, as the
// derived implementation of the former variants did: callers walk the chain
// (e.g. for ENOSPC) and print only the top.
impl std::error::Error for TargetError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            PgErrorKind::Connect { source } | PgErrorKind::Io { source } => Some(source),
            PgErrorKind::Protocol { source } => Some(source),
            PgErrorKind::Authentication { source } => Some(source),
            PgErrorKind::Tls { source } => Some(source),
            _ => None,
        }
    }
}

/// walrcv's own hint for server errors whose fix is on the operator's side.
fn hint_suffix(m: &ServerMessage) -> String {
    let ours = match m.code.as_str() {
        "28P01" => Some("check the password given by -W, PGPASSWORD, the connection string or the password file"),
        "28000" if m.message.contains("pg_hba.conf") => Some(
            "add a line such as \"host replication ROLE ADDRESS scram-sha-256\" to pg_hba.conf (the database column must be the keyword 'replication') and reload the server",
        ),
        "42501" => Some("the role needs the REPLICATION attribute: ALTER ROLE name REPLICATION"),
        "53300" => Some("all replication connection slots are in use: raise max_wal_senders or stop another client"),
        _ => None,
    };
    match (ours, m.hint.is_some()) {
        (Some(h), _) => format!(" (walrcv hint: {h})"),
        (None, _) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    const T: &str = "host=db port=5432";

    fn shown(kind: PgErrorKind) -> String {
        PgError::at(T, kind).to_string()
    }

    fn io_error() -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionRefused, "refused")
    }

    /// The wording of each kind, with the target where the former variants
    /// put it (pg_receivewal-like messages that users and tests match).
    #[test]
    fn each_kind_names_the_target_once_in_its_place() {
        let cases = [
            (
                PgErrorKind::Connect { source: io_error() },
                "could not connect to host=db port=5432: refused",
            ),
            (
                PgErrorKind::ConnectTimeout { secs: 3 },
                "connection to host=db port=5432 timed out after 3 s",
            ),
            (
                PgErrorKind::WriteTimeout { secs: 4 },
                "host=db port=5432: the server accepted none of our bytes for 4 s",
            ),
            (
                PgErrorKind::ReplyTimeout {
                    waiting_for: "the reply to IDENTIFY_SYSTEM".into(),
                    secs: 5,
                },
                "host=db port=5432: no reply from the server within 5 s while waiting for the reply to IDENTIFY_SYSTEM",
            ),
            (
                PgErrorKind::Io { source: io_error() },
                "I/O error on the connection to host=db port=5432: refused",
            ),
            (
                PgErrorKind::Closed,
                "host=db port=5432 closed the connection unexpectedly",
            ),
            (
                PgErrorKind::NoPassword,
                "host=db port=5432: the server asks for a password but none was given (hint: use -W, PGPASSWORD or a password file)",
            ),
            (
                PgErrorKind::Unexpected {
                    during: "starting up",
                    got: "CopyDone".into(),
                },
                "host=db port=5432: unexpected message from the server while starting up: CopyDone",
            ),
        ];
        for (kind, want) in cases {
            assert_eq!(shown(kind), want);
        }
    }

    #[test]
    fn a_server_error_keeps_its_words_and_walrcv_s_hint() {
        let e = PgError::server(
            T,
            ServerMessage {
                severity: "FATAL".into(),
                code: "42501".into(),
                message: "must be superuser or replication role".into(),
                detail: None,
                hint: None,
            },
        );
        assert_eq!(
            e.to_string(),
            "host=db port=5432: FATAL: must be superuser or replication role (walrcv hint: the role needs the REPLICATION attribute: ALTER ROLE name REPLICATION)"
        );
        assert_eq!(e.sqlstate(), Some("42501"));
        assert!(e.is_auth_failure());
    }

    #[test]
    fn the_cause_stays_the_source_and_fallback_shows_both() {
        let e = PgError::at(T, PgErrorKind::Io { source: io_error() });
        let source = e.source().and_then(|s| s.downcast_ref::<io::Error>());
        assert_eq!(
            source.map(io::Error::kind),
            Some(io::ErrorKind::ConnectionRefused)
        );
        assert!(PgError::at(T, PgErrorKind::Closed).source().is_none());
        let both = PgError::Fallback {
            first: Box::new(PgError::at(T, PgErrorKind::Closed)),
            first_was_tls: true,
            then: Box::new(PgError::at(T, PgErrorKind::ConnectTimeout { secs: 1 })),
        };
        assert_eq!(
            both.to_string(),
            "connection to host=db port=5432 timed out after 1 s (the attempt with TLS before it failed too: host=db port=5432 closed the connection unexpectedly)"
        );
        assert_eq!(PgError::NoTarget.to_string(), "no host to connect to");
    }
}
