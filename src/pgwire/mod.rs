//! PostgreSQL frontend/backend protocol: sans-IO backend message parsing
//! ([`backend`]), and the async [`Connection`] (TCP or Unix socket, startup,
//! authentication, simple queries). Frontend messages are encoded with
//! `postgres-protocol`, which also provides the MD5 and SCRAM-SHA-256 maths.

pub mod backend;
pub mod connection;

pub use backend::{BackendMessage, ProtocolError, ServerMessage};
pub use connection::{Connection, PgError, QueryResult};
