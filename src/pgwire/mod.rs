//! PostgreSQL frontend/backend protocol: sans-IO backend message parsing
//! ([`backend`]), the async [`Connection`] (TCP or Unix socket, startup,
//! authentication, simple queries) and its TLS layer ([`tls`], rustls).
//! Frontend messages are encoded with `postgres-protocol`, which also
//! provides the MD5 and SCRAM-SHA-256 maths.

pub mod backend;
pub mod connection;
pub mod tls;

pub use backend::{BackendMessage, ProtocolError, ServerMessage};
pub use connection::{Connection, PgError, QueryResult};
