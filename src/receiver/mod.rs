//! The streaming receiver: the supervisor ([`run`]) that reconnects with
//! backoff, the session that picks the start point, follows timeline switches
//! and runs the receive loop (in [`session`]), the sink that verifies, writes
//! and fsyncs on the loop's own task (in [`sink`]), and the feedback policy
//! (in [`feedback`]).

pub mod backoff;
pub mod classify;
mod error;
pub mod feedback;
pub mod gap;
pub mod hosts;
pub mod lineage;
mod options;
// The sink's property test drives the session's real steps, so it sits beside
// both rather than inside the sink (no file cycle sink <-> session).
#[cfg(test)]
mod proptests;
pub mod session;
pub mod sink;
pub mod slots;

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

use crate::archive::ArchiveDir;
use crate::conninfo::ConnParams;
use crate::lsn::Lsn;

use backoff::Backoff;
pub(crate) use error::refine_at_start;
pub use error::ReceiverError;
use gap::with_missing_range;
pub use options::conn_overrides;
pub use sink::SinkError;

/// What `walrcv stream` was asked to do.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    pub directory: PathBuf,
    pub conn: ConnParams,
    pub slot: Option<String>,
    /// `--create-slot-if-missing`: create `slot` on a server that lacks it.
    pub create_slot_if_missing: bool,
    pub endpos: Option<Lsn>,
    pub no_loop: bool,
    /// fsync files and directories (off with `--no-sync`).
    pub sync: bool,
    pub synchronous: bool,
    /// Periodic status updates; `None` = only when flushed WAL advances or the
    /// server asks.
    pub status_interval: Option<Duration>,
    /// Drop the connection after this long without any message from the server
    /// (a ping is sent at half of it).
    pub receive_timeout: Duration,
    /// May prompt for a password on the terminal if the server asks for one.
    pub password_prompt: bool,
    /// Serve `/metrics` at this HOST:PORT (`--metrics-address`).
    pub metrics_address: Option<String>,
    /// `-Z/--compress`: how segment and history files are written.
    pub compression: crate::archive::compress_spec::CompressionSpec,
    /// `--serve`: where each position reported flushed is published for the
    /// walsender (`None` without `--serve`).
    pub live: Option<crate::archive::live::LiveEnd>,
}

/// How a successful run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped by SIGINT or SIGTERM.
    Stopped,
    /// `--endpos` reached.
    EndposReached,
}

/// Exit statuses of `walrcv stream` (documented in `docs/src/exit-status.md`).
pub mod exit {
    /// Stopped by a signal, or `--endpos` reached.
    pub const OK: i32 = 0;
    /// Connection lost or failed with `--no-loop`, or another runtime error.
    pub const DISCONNECTED: i32 = 1;
    /// Bad usage or configuration: flags, connection string, authentication,
    /// archive directory (locked, another cluster, a file of the wrong size).
    pub const CONFIG: i32 = 2;
    /// The server cannot serve the WAL the archive needs next (segment removed,
    /// position not in its history, archive ahead of the server), or the slot
    /// is gone or invalidated. Decided by SQLSTATE (see [`super::classify`]).
    pub const NEEDS_OPERATOR: i32 = 3;
    /// Received WAL failed verification (with `--no-loop`).
    pub const VERIFY_FAILED: i32 = 4;
    /// The archive's own WAL before the start point cannot be trusted: it
    /// fails verification (corrupt), or its fsync failed in this process and
    /// it cannot be streamed again. Retrying cannot help.
    pub const ARCHIVE_UNTRUSTED: i32 = 5;
}

/// Runs `walrcv stream` until stopped: sessions one after the other, with
/// backoff between failures (see [`backoff`]). `shutdown` turns true on
/// SIGINT/SIGTERM.
pub async fn run(
    mut opts: StreamOptions,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Outcome, ReceiverError> {
    let archive = ArchiveDir::open(&opts.directory).map_err(ReceiverError::Archive)?;
    if opts.compression.method == crate::archive::names::Compression::Lz4
        && opts.compression.level > 0
    {
        // Accepted for pg_receivewal compatibility; say so rather than
        // letting a DBA believe a higher level is in effect.
        tracing::warn!(
            "lz4 level {} has no effect: walrcv's lz4 encoder has one level (lz4's fast mode)",
            opts.compression.level
        );
    }
    // Served until `run` returns; a bind failure is a configuration error.
    let _metrics_server = match &opts.metrics_address {
        Some(address) => Some(
            crate::metrics::serve(address, &opts.directory)
                .map_err(|e| ReceiverError::Config(e.to_string()))?,
        ),
        None => None,
    };
    let mut backoff = Backoff::new(backoff::BackoffPolicy::default());
    // A record begun in the archive that failed verification last session.
    let mut suspect = None;
    let mut hosts = hosts::HostOrder::new(opts.conn.targets.clone());
    // A password typed at the prompt serves every later session.
    let prompted = session::PromptedPassword::default();
    loop {
        if *shutdown.borrow() {
            return Ok(Outcome::Stopped);
        }
        let started = std::time::Instant::now();
        opts.conn.targets = hosts.order();
        let session::SessionEnd { result, streamed } =
            session::run_session(&opts, &archive, &mut shutdown, &prompted).await;
        // Before anything else: the next session must not trust what a
        // failed fsync concerned (see `archive::taint`).
        if let Some(failed) = result.as_ref().err().and_then(ReceiverError::archive_error) {
            archive.record_fsync_failure(failed);
        }
        let result =
            result.map_err(|e| error::repeated_in_archive(e, &mut suspect, &opts.directory));
        match result {
            Ok(outcome) => return Ok(outcome),
            // A host behind the archive, with others to try: retried.
            Err(e) if !e.retryable() && (!hosts.several() || e.behind_the_archive().is_none()) => {
                return Err(with_missing_range(e, &opts).await)
            }
            Err(e) if opts.no_loop => return Err(e),
            Err(e) => {
                if streamed {
                    hosts.streamed();
                }
                if let Some(target) = e.behind_the_archive() {
                    hosts.behind_the_archive(target);
                    tracing::warn!(
                        "{target} does not have the WAL the archive needs next (a standby lagging behind?): \
                         trying the other hosts first, and this one again later"
                    );
                }
                let kind = e.failure_kind();
                crate::metrics::global().session_failed(kind);
                let delay = backoff.after_failure(backoff::FailedSession {
                    kind,
                    streamed_for: if streamed {
                        started.elapsed()
                    } else {
                        Duration::ZERO
                    },
                });
                tracing::error!("{e}");
                if e.is_disk_full() {
                    tracing::error!(
                        "the file system of the archive directory \"{}\" is full (ENOSPC): nothing past the last \
                         fsynced WAL was acknowledged; free some space and walrcv resumes by itself",
                        opts.directory.display()
                    );
                }
                tracing::warn!(
                    "disconnected ({} failure, {} in a row); waiting {} seconds to try again",
                    kind.describe(),
                    backoff.repeats(),
                    delay.as_secs()
                );
                crate::service::status(&format!(
                    "disconnected ({}); retrying in {} s",
                    kind.describe(),
                    delay.as_secs()
                ));
                // A stop ends the wait; the loop's first check returns.
                let wait = crate::service::pinging(tokio::time::sleep(delay));
                let _ = crate::shutdown::unless_stopped(&mut shutdown, wait).await;
            }
        }
    }
}
