//! PostgreSQL frontend/backend protocol: sans-IO backend message parsing
//! ([`backend`]), the sans-IO authentication exchange ([`auth`], with the
//! channel binding data of [`cert_hash`]), and the async [`Connection`] (TCP
//! or Unix socket, startup, simple queries; its errors are [`error`]'s) and its TLS layer ([`tls`],
//! OpenSSL). Frontend messages are encoded with `postgres-protocol`, which
//! also provides the MD5 and SCRAM-SHA-256 maths. With several hosts,
//! [`session_attrs`] decides (sans-IO) which server fits
//! `target_session_attrs` and in which order `load_balance_hosts` tries them.

pub mod auth;
pub mod backend;
pub mod cert_hash;
pub mod connection;
pub mod error;
pub mod session_attrs;
pub mod tls;

pub use backend::{BackendMessage, ProtocolError, ServerMessage};
pub use connection::{Connection, QueryResult};
pub use error::{PgError, PgErrorKind, TargetError};
