//! walrcv: a PostgreSQL WAL receiver.
//!
//! It streams WAL from a primary over the physical replication protocol, verifies
//! every record's CRC-32C as it arrives, writes segment files exactly as the
//! primary has them, and acknowledges only what is durable and verified.
//!
//! # Layout
//!
//! - [`lsn`]: WAL positions, segment numbers and file names.
//! - [`conninfo`]: libpq-compatible connection strings, `PG*` environment, `.pgpass`.
//! - [`pgwire`]: protocol messages (sans-IO) and the async [`pgwire::Connection`].
//! - [`replication`]: replication commands and the CopyBoth stream payloads.
//! - [`wal`]: sans-IO WAL decoding: page headers, records, CRC, history files.
//! - [`archive`]: the archive directory: lock, scan, start point, segment writer.
//! - [`receiver`]: the streaming session pipeline and its supervisor.
//! - [`metrics`]: Prometheus metrics and the `/metrics` endpoint (`--metrics-address`).
//! - [`shutdown`]: stop requests (SIGINT, SIGTERM) and the helper that makes any wait give way to them.
//! - [`service`]: systemd notifications (`READY=1`, watchdog pings, `STATUS=`).
//! - [`tools`]: offline tools over an archive (`verify`).
//! - [`cli`]: command-line definitions.
//! - [`messages`]: how messages on stderr begin (`walrcv:` or, as the drop-in, `pg_receivewal:`).
//! - [`assets`]: man pages and shell completions generated from them.

pub mod archive;
pub mod assets;
pub mod cli;
pub mod conninfo;
pub mod lsn;
pub mod messages;
pub mod metrics;
pub mod objstore;
pub mod pgwire;
pub mod receiver;
pub mod replication;
pub mod serve;
pub mod service;
pub mod shutdown;
pub mod tools;
pub mod upload;
pub mod wal;

/// The newest PostgreSQL major version walrcv supports, reported in the
/// `pg_receivewal`-compatible `--version` line (Barman parses it).
pub const NEWEST_SUPPORTED_SERVER: &str = "18.4";
/// Oldest and newest supported server major versions: the one place the
/// supported range is written (messages and metrics derive it from these).
pub const MIN_SERVER_MAJOR: u32 = 13;
pub const MAX_SERVER_MAJOR: u32 = 18;

#[cfg(test)]
mod tests {
    #[test]
    fn the_newest_supported_server_is_of_the_newest_major() {
        let major = super::NEWEST_SUPPORTED_SERVER.split('.').next();
        assert_eq!(major, Some(super::MAX_SERVER_MAJOR.to_string().as_str()));
    }
}
