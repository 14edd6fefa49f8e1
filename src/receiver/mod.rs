//! The streaming receiver: the supervisor ([`run`]) that reconnects with
//! backoff, the session that picks the start point, follows timeline switches
//! and runs the receive loop (in [`session`]), the sink that verifies, writes
//! and fsyncs on the loop's own task (in [`sink`]), and the feedback policy
//! (in [`feedback`]).

pub mod feedback;
mod options;
pub mod session;
pub mod sink;
pub mod slots;

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

use crate::archive::{ArchiveDir, ArchiveError};
use crate::conninfo::ConnParams;
use crate::lsn::Lsn;
use crate::pgwire::{PgError, ServerMessage};
use crate::replication::{ReplicationError, StreamError};

pub use options::conn_overrides;
pub use sink::SinkError;

/// What `walrcv stream` was asked to do.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    pub directory: PathBuf,
    pub conn: ConnParams,
    pub slot: Option<String>,
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
}

/// How a successful run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped by SIGINT or SIGTERM.
    Stopped,
    /// `--endpos` reached.
    EndposReached,
}

/// Exit statuses of `walrcv stream` (documented in the README).
pub mod exit {
    /// Stopped by a signal, or `--endpos` reached.
    pub const OK: i32 = 0;
    /// Connection lost or failed with `--no-loop`, or another runtime error.
    pub const DISCONNECTED: i32 = 1;
    /// Bad usage or configuration: flags, connection string, authentication,
    /// archive directory (locked, another cluster, a file of the wrong size).
    pub const CONFIG: i32 = 2;
    /// The server cannot serve the WAL the archive needs next (segment removed,
    /// position not in its history, archive ahead of the server).
    pub const NEEDS_OPERATOR: i32 = 3;
    /// Received WAL failed verification (with `--no-loop`).
    pub const VERIFY_FAILED: i32 = 4;
}

/// Why a session or the whole run failed.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    #[error(transparent)]
    Archive(ArchiveError),
    #[error(transparent)]
    Connection(PgError),
    #[error(transparent)]
    Replication(ReplicationError),
    #[error("invalid message in the replication stream: {0}")]
    Stream(#[from] StreamError),
    #[error("WAL writer stopped: {0}")]
    Writer(SinkError),
    /// Writing or fsyncing the archive failed outside the sink (the fsync of
    /// existing files at start, a history file): retried by a new session,
    /// on new descriptors, which re-streams the newest `.partial` from its
    /// start.
    #[error("could not {doing}: {source}")]
    ArchiveIo {
        doing: &'static str,
        source: ArchiveError,
    },
    #[error("{message}\nHINT: {hint}")]
    NeedsOperator { message: String, hint: String },
    #[error("server version {found} is not supported: walrcv supports PostgreSQL 13 to 18")]
    UnsupportedServer { found: String },
    #[error("replication connection is unexpectedly database specific (dbname={0}): remove replication=database from the connection string")]
    DatabaseSpecific(String),
    #[error("{0}")]
    Config(String),
    #[error("replication stream was terminated before stop point")]
    StreamEnded,
    #[error("no message from the server for {0} s: connection considered dead")]
    Timeout(u64),
    #[error("unexpected message from the server: {0}")]
    Unexpected(String),
}

impl From<PgError> for ReceiverError {
    fn from(e: PgError) -> Self {
        match e {
            PgError::Server { message, target } => classify_server_error(message, target),
            other => ReceiverError::Connection(other),
        }
    }
}

impl From<ReplicationError> for ReceiverError {
    fn from(e: ReplicationError) -> Self {
        match e {
            ReplicationError::Pg(p) => p.into(),
            other => ReceiverError::Replication(other),
        }
    }
}

/// Turns the server errors that no retry can fix into clear, actionable ones.
fn classify_server_error(message: Box<ServerMessage>, target: String) -> ReceiverError {
    let m = &message.message;
    let needs = |hint: &str| ReceiverError::NeedsOperator {
        message: format!("{target}: {message}"),
        hint: hint.to_string(),
    };
    if message.code == "58P01" || m.contains("has already been removed") {
        return needs(
            "the server no longer has the WAL the archive needs next, so the archive would have a gap. \
             Use a replication slot (--slot) to prevent this. To accept the gap, move the archive's files \
             aside (or use a new directory) so walrcv starts at the server's current position.",
        );
    }
    if m.contains("not in this server's history") || m.contains("is not present in the server") {
        return needs(
            "the archive's newest WAL is on a timeline or position this server does not have (a failover \
             to a server that did not receive it?). Check `walrcv verify` on the archive and the server's \
             timeline history; archive the new timeline into a new directory.",
        );
    }
    if m.contains("ahead of the WAL flush position") {
        return needs(
            "the archive holds WAL newer than this server: was the server restored from a backup, rewound, \
             or is this another server? Point walrcv at the primary the archive came from, or use a new directory.",
        );
    }
    ReceiverError::Connection(PgError::Server { target, message })
}

impl ReceiverError {
    /// Whether the supervisor may try again (unless `--no-loop`).
    pub fn retryable(&self) -> bool {
        match self {
            ReceiverError::Connection(e) => !e.is_auth_failure(),
            ReceiverError::Replication(ReplicationError::BadSlotName(_)) => false,
            ReceiverError::Replication(_) => true,
            ReceiverError::Stream(_)
            | ReceiverError::StreamEnded
            | ReceiverError::Timeout(_)
            | ReceiverError::Unexpected(_)
            | ReceiverError::Writer(_)
            | ReceiverError::ArchiveIo { .. } => true,
            ReceiverError::Archive(_)
            | ReceiverError::NeedsOperator { .. }
            | ReceiverError::UnsupportedServer { .. }
            | ReceiverError::DatabaseSpecific(_)
            | ReceiverError::Config(_) => false,
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            ReceiverError::Writer(SinkError::Verify { .. }) => exit::VERIFY_FAILED,
            ReceiverError::NeedsOperator { .. } => exit::NEEDS_OPERATOR,
            ReceiverError::Connection(e) if e.is_auth_failure() => exit::CONFIG,
            ReceiverError::Replication(ReplicationError::BadSlotName(_))
            | ReceiverError::Archive(_)
            | ReceiverError::UnsupportedServer { .. }
            | ReceiverError::DatabaseSpecific(_)
            | ReceiverError::Config(_) => exit::CONFIG,
            _ => exit::DISCONNECTED,
        }
    }
}

/// Backoff between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Runs `walrcv stream` until stopped: sessions one after the other, with
/// backoff between failures. `shutdown` turns true on SIGINT/SIGTERM.
pub async fn run(
    mut opts: StreamOptions,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Outcome, ReceiverError> {
    let archive = ArchiveDir::open(&opts.directory).map_err(ReceiverError::Archive)?;
    let mut backoff = BACKOFF_MIN;
    loop {
        if *shutdown.borrow() {
            return Ok(Outcome::Stopped);
        }
        let mut streamed = false;
        match session::run_session(&mut opts, &archive, &mut shutdown, &mut streamed).await {
            Ok(outcome) => return Ok(outcome),
            Err(e) if !e.retryable() => return Err(e),
            Err(e) if opts.no_loop => return Err(e),
            Err(e) => {
                if streamed {
                    backoff = BACKOFF_MIN;
                }
                tracing::error!("{e}");
                tracing::warn!(
                    "disconnected; waiting {} seconds to try again",
                    backoff.as_secs()
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}
