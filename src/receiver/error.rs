//! Why a session or the whole run failed ([`ReceiverError`]), what each
//! failure means for the supervisor (retry or not, exit status, backoff
//! kind), and the text of the server errors that need an operator: the
//! server's words, what walrcv asked for, the missing WAL range, what to do.

use std::path::PathBuf;

use crate::archive::ArchiveError;
use crate::lsn::Lsn;
use crate::pgwire::{PgError, PgErrorKind, ServerMessage, TargetError};
use crate::replication::{ReplicationError, StreamError};
use crate::wal::VerifyError;

use super::backoff::FailureKind;
use super::classify::{self, ServerFault, StartFacts};
use super::{exit, SinkError};

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
    /// The archive's own WAL that the start point relies on cannot be
    /// trusted: it fails verification, or its fsync failed and it cannot be
    /// streamed again. Retrying cannot help (exit
    /// [`exit::ARCHIVE_UNTRUSTED`]).
    #[error("{message}\nHINT: {hint}")]
    ArchiveUntrusted {
        path: PathBuf,
        message: String,
        hint: String,
    },
    /// A server error that needs an operator (see [`classify`]).
    #[error("{}", server_fault_message(*.fault, .target, .message, .facts.as_ref(), *.oldest_available))]
    ServerFault {
        fault: ServerFault,
        target: String,
        message: Box<ServerMessage>,
        /// What walrcv asked for, when the error answered START_REPLICATION.
        facts: Option<StartFacts>,
        /// For [`ServerFault::WalRemoved`]: where the WAL the server still
        /// has begins (see [`super::gap`]), when found.
        oldest_available: Option<Lsn>,
    },
    #[error(
        "server version {found} is not supported: walrcv supports PostgreSQL {} to {}",
        crate::MIN_SERVER_MAJOR,
        crate::MAX_SERVER_MAJOR
    )]
    UnsupportedServer { found: String },
    #[error("replication connection is unexpectedly database specific (dbname={0}): remove replication=database from the connection string")]
    DatabaseSpecific(String),
    #[error("{0}")]
    Config(String),
    #[error("replication stream was terminated before stop point")]
    StreamEnded,
    #[error("no message from the server for {0} s: connection considered dead")]
    Timeout(u64),
    /// See [`super::session::incomplete`]: a record whose length was
    /// corrupted in transit. Retried: the next session streams it again.
    #[error("WAL record at {record} is still incomplete at {received}, where the server's WAL ends, after {waited_secs} s: its length must have been corrupted in transit; nothing of it was acknowledged")]
    IncompleteRecord {
        record: Lsn,
        received: Lsn,
        waited_secs: u64,
    },
    #[error("unexpected message from the server: {0}")]
    Unexpected(String),
}

impl From<PgError> for ReceiverError {
    fn from(e: PgError) -> Self {
        match e {
            PgError::At(TargetError {
                target,
                kind: PgErrorKind::Server { message },
            }) => classify_server_error(message, target),
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

/// Turns the server errors that no retry can fix into clear, actionable ones,
/// by SQLSTATE (see [`classify`]).
fn classify_server_error(message: Box<ServerMessage>, target: String) -> ReceiverError {
    match classify::classify(&message.code, None) {
        Some(fault) => ReceiverError::ServerFault {
            fault,
            target,
            message,
            facts: None,
            oldest_available: None,
        },
        None => ReceiverError::Connection(PgError::at(target, PgErrorKind::Server { message })),
    }
}

/// The text of [`ReceiverError::ServerFault`]: the server's own words, what
/// walrcv makes of them, and what to do.
fn server_fault_message(
    fault: ServerFault,
    target: &str,
    message: &ServerMessage,
    facts: Option<&StartFacts>,
    oldest_available: Option<Lsn>,
) -> String {
    let mut text = format!(
        "{target}: {message} (SQLSTATE {})\n{}",
        message.code,
        fault.summary()
    );
    if let Some(facts) = facts {
        let facts = missing_from(fault, message, facts);
        text.push_str(": ");
        text.push_str(&start_context(fault, &facts, oldest_available));
    }
    text.push_str("\nHINT: ");
    text.push_str(fault.hint());
    text
}

/// Refines an error that answered START_REPLICATION (or ended the stream it
/// opened) with what walrcv asked for: an `XX000` becomes a refusal when the
/// facts show one, and a refusal names the WAL concerned.
pub(crate) fn refine_at_start(error: ReceiverError, facts: &StartFacts) -> ReceiverError {
    match error {
        ReceiverError::Connection(PgError::At(TargetError {
            target,
            kind: PgErrorKind::Server { message },
        })) => match classify::classify(&message.code, Some(facts)) {
            Some(fault) => ReceiverError::ServerFault {
                fault,
                target,
                message,
                facts: Some(*facts),
                oldest_available: None,
            },
            None => ReceiverError::Connection(PgError::at(target, PgErrorKind::Server { message })),
        },
        ReceiverError::ServerFault {
            fault,
            target,
            message,
            facts: None,
            oldest_available,
        } => ReceiverError::ServerFault {
            fault,
            target,
            message,
            facts: Some(*facts),
            oldest_available,
        },
        other => other,
    }
}

/// For WAL removed mid-stream, the missing WAL starts at the segment the
/// server names (past the session's start point), not at the start point.
pub(super) fn missing_from(
    fault: ServerFault,
    message: &ServerMessage,
    facts: &StartFacts,
) -> StartFacts {
    let named = (fault == ServerFault::WalRemoved)
        .then(|| {
            classify::removed_segment_start(&message.message, facts.timeline, facts.segment_size)
        })
        .flatten();
    match named {
        Some(start) if start > facts.start => StartFacts { start, ..*facts },
        _ => *facts,
    }
}

/// What walrcv asked for, in the terms of `fault`.
fn start_context(fault: ServerFault, f: &StartFacts, oldest_available: Option<Lsn>) -> String {
    match fault {
        ServerFault::WalRemoved => match oldest_available {
            Some(oldest) => format!(
                "the archive needs WAL from {} on timeline {}, and the server's WAL on that timeline \
                 now starts at {} (and ends at {}): the WAL from {} to {} is missing",
                f.start, f.timeline, oldest, f.server_flush, f.start, oldest
            ),
            None => format!(
                "the archive needs WAL from {} on timeline {}, and the server's WAL now ends at {} \
                 (timeline {}): the WAL from {} up to what the server still has is missing",
                f.start, f.timeline, f.server_flush, f.server_timeline, f.start
            ),
        },
        ServerFault::NotInHistory => format!(
            "walrcv asked for {} on timeline {}; the server is on timeline {}",
            f.start, f.timeline, f.server_timeline
        ),
        ServerFault::AheadOfServer => format!(
            "walrcv asked for {} on timeline {}; the server's WAL ends at {}",
            f.start, f.timeline, f.server_flush
        ),
        ServerFault::SlotMissing | ServerFault::SlotUnusable => format!(
            "walrcv asked for WAL from {} on timeline {}",
            f.start, f.timeline
        ),
    }
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
            | ReceiverError::IncompleteRecord { .. }
            | ReceiverError::Unexpected(_)
            | ReceiverError::Writer(_)
            | ReceiverError::ArchiveIo { .. } => true,
            // A full disk (e.g. while storing a history file) heals once
            // space is freed.
            ReceiverError::Archive(_) => self.is_disk_full(),
            ReceiverError::NeedsOperator { .. }
            | ReceiverError::ArchiveUntrusted { .. }
            | ReceiverError::ServerFault { .. }
            | ReceiverError::UnsupportedServer { .. }
            | ReceiverError::DatabaseSpecific(_)
            | ReceiverError::Config(_) => false,
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            ReceiverError::Writer(SinkError::Verify { .. })
            | ReceiverError::IncompleteRecord { .. } => exit::VERIFY_FAILED,
            ReceiverError::ArchiveUntrusted { .. } => exit::ARCHIVE_UNTRUSTED,
            ReceiverError::NeedsOperator { .. } | ReceiverError::ServerFault { .. } => {
                exit::NEEDS_OPERATOR
            }
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

impl ReceiverError {
    /// What failed, for the backoff between sessions.
    pub fn failure_kind(&self) -> FailureKind {
        match self {
            ReceiverError::Writer(SinkError::Verify { .. })
            | ReceiverError::IncompleteRecord { .. } => FailureKind::Verification,
            ReceiverError::Writer(SinkError::Archive(_) | SinkError::Write { .. })
            | ReceiverError::Archive(_)
            | ReceiverError::ArchiveUntrusted { .. }
            | ReceiverError::ArchiveIo { .. } => FailureKind::Archive,
            ReceiverError::Connection(PgError::At(TargetError {
                kind: PgErrorKind::Server { .. },
                ..
            }))
            | ReceiverError::Replication(ReplicationError::Pg(PgError::At(TargetError {
                kind: PgErrorKind::Server { .. },
                ..
            })))
            | ReceiverError::NeedsOperator { .. }
            | ReceiverError::ServerFault { .. } => FailureKind::Server,
            ReceiverError::Connection(_)
            | ReceiverError::Replication(ReplicationError::Pg(_))
            | ReceiverError::Timeout(_)
            | ReceiverError::StreamEnded => FailureKind::Network,
            ReceiverError::Stream(_)
            | ReceiverError::Unexpected(_)
            | ReceiverError::Writer(_)
            | ReceiverError::Replication(_)
            | ReceiverError::UnsupportedServer { .. }
            | ReceiverError::DatabaseSpecific(_)
            | ReceiverError::Config(_) => FailureKind::Protocol,
        }
    }

    /// The archive error that ended the session, if one did (a failed fsync
    /// is recorded from it: see [`crate::archive::taint`]).
    pub fn archive_error(&self) -> Option<&ArchiveError> {
        match self {
            ReceiverError::Archive(e)
            | ReceiverError::ArchiveIo { source: e, .. }
            | ReceiverError::Writer(SinkError::Archive(e))
            | ReceiverError::Writer(SinkError::Write { source: e, .. }) => Some(e),
            _ => None,
        }
    }

    /// The stop when WAL whose fsync failed cannot be streamed again (see
    /// [`crate::archive::taint`]).
    pub(super) fn untrusted_after_fsync(path: PathBuf, why: &str) -> ReceiverError {
        crate::metrics::global().archive_untrusted();
        ReceiverError::ArchiveUntrusted {
            message: format!(
                "\"{}\": {why}; nothing built on it is reported flushed",
                path.display()
            ),
            hint: "check the disk (kernel log, SMART). Then move that file and every segment file after it out of \
                   the archive directory and start walrcv again: it streams them again from the server if the server \
                   still has them (a replication slot keeps them). A new walrcv process cannot tell whether the \
                   kernel wrote pages whose fsync failed (see the guide, docs/src/disk-faults.md)."
                .into(),
            path,
        }
    }

    /// The stop when the archive's own WAL before the start point is
    /// corrupt: every session would read it again and fail the same way.
    pub(super) fn corrupt_archive(path: PathBuf, error: &VerifyError) -> ReceiverError {
        crate::metrics::global().verification_failed();
        crate::metrics::global().archive_untrusted();
        ReceiverError::ArchiveUntrusted {
            message: format!(
                "the archive's WAL before the start point is corrupt: \"{}\" fails verification at {}: {error}; \
                 walrcv cannot resume after it",
                path.display(),
                error.lsn
            ),
            hint: CORRUPT_ARCHIVE_HINT.into(),
            path,
        }
    }

    /// A verification failure of a record that began in the archive's own
    /// WAL before the start point: its start and the file holding it.
    fn began_in_archive(&self) -> Option<(Lsn, &str)> {
        match self {
            ReceiverError::Writer(SinkError::Verify {
                error,
                file,
                began_in_archive: true,
                ..
            }) => Some((error.lsn, file.as_str())),
            _ => None,
        }
    }

    /// The server that refused the start point as ahead of its WAL (a
    /// lagging standby, with several hosts: see [`super::hosts`]).
    pub fn behind_the_archive(&self) -> Option<&str> {
        match self {
            ReceiverError::ServerFault {
                fault: ServerFault::AheadOfServer,
                target,
                ..
            } => Some(target),
            _ => None,
        }
    }

    /// Whether the archive's file system is full (ENOSPC).
    pub fn is_disk_full(&self) -> bool {
        // `Writer` and `Archive` wrap their error without making it the source.
        let mut source: Option<&(dyn std::error::Error + 'static)> = match self {
            ReceiverError::Writer(w) => Some(w),
            ReceiverError::Archive(a) => Some(a),
            other => Some(other),
        };
        while let Some(e) = source {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if io.raw_os_error() == Some(libc::ENOSPC) {
                    return true;
                }
            }
            source = e.source();
        }
        false
    }
}

/// What to do about corrupt WAL in the archive.
const CORRUPT_ARCHIVE_HINT: &str =
    "the file was damaged after walrcv wrote it (walrcv checks every record before writing it). Move it and every \
     segment file after it out of the archive directory (keep them for inspection; `walrcv verify` tells what is \
     wrong), then start walrcv again: it streams them again from the server if the server still has them (a \
     replication slot keeps them).";

/// A record that began in the archive's WAL before the start point fails
/// verification once the stream brings its end: its archive part or the
/// stream's may be damaged (a bit flipped on the way heals by itself at the
/// next session). The same failure at the same LSN on the next session too
/// means the archive's part: every session would read it again, so walrcv
/// stops ([`exit::ARCHIVE_UNTRUSTED`]). `suspect` carries the LSN from one
/// failed session to the next.
pub(super) fn repeated_in_archive(
    error: ReceiverError,
    suspect: &mut Option<Lsn>,
    dir: &std::path::Path,
) -> ReceiverError {
    let Some((lsn, file)) = error.began_in_archive() else {
        *suspect = None;
        return error;
    };
    if *suspect != Some(lsn) {
        *suspect = Some(lsn);
        return error;
    }
    crate::metrics::global().archive_untrusted();
    let path = dir.join(file);
    ReceiverError::ArchiveUntrusted {
        message: format!(
            "the archive's WAL before the start point is corrupt: the record at {lsn}, which begins in \"{}\" \
             and continues in the archive's files up to the start point, fails verification on two sessions in a \
             row; walrcv cannot resume after it. {}",
            path.display(),
            error.to_string().trim_start_matches("WAL writer stopped: ")
        ),
        hint: CORRUPT_ARCHIVE_HINT.into(),
        path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(code: &str, text: &str) -> ReceiverError {
        ReceiverError::from(PgError::server(
            "host=db port=5432",
            ServerMessage {
                severity: "FEHLER".into(),
                code: code.into(),
                message: text.into(),
                detail: None,
                hint: None,
            },
        ))
    }

    fn facts(timeline: u32, start: u64, server_timeline: u32, flush: u64) -> StartFacts {
        StartFacts {
            start: Lsn(start),
            timeline,
            server_timeline,
            server_flush: Lsn(flush),
            segment_size: 1 << 24,
        }
    }

    fn assert_needs_operator(e: &ReceiverError, fault: ServerFault) {
        match e {
            ReceiverError::ServerFault { fault: f, .. } => assert_eq!(*f, fault, "{e}"),
            other => panic!("expected {fault:?}, got {other:?}"),
        }
        assert!(!e.retryable(), "{e}");
        assert_eq!(e.exit_code(), exit::NEEDS_OPERATOR, "{e}");
    }

    #[test]
    fn translated_segment_removed_needs_an_operator() {
        for text in [
            "das angeforderte WAL-Segment 000000010000000000000003 wurde schon entfernt",
            "le segment demandé du journal de transaction, 000000010000000000000003, a déjà été supprimé",
            "requested WAL segment 000000010000000000000003 has already been removed",
        ] {
            let e = server_error("58P01", text);
            assert_needs_operator(&e, ServerFault::WalRemoved);
            let e = refine_at_start(e, &facts(1, 0x300_0000, 1, 0x900_0000));
            assert_needs_operator(&e, ServerFault::WalRemoved);
            let shown = e.to_string();
            assert!(shown.contains(text), "{shown}");
            assert!(shown.contains("SQLSTATE 58P01"), "{shown}");
            assert!(
                shown.contains("from 0/3000000 on timeline 1") && shown.contains("ends at 0/9000000"),
                "the missing range is named: {shown}"
            );
            assert!(shown.contains("HINT: "), "{shown}");
        }
    }

    #[test]
    fn translated_slot_errors_need_an_operator() {
        let e = server_error("42704", "Replikations-Slot »walrcv« existiert nicht");
        assert_needs_operator(&e, ServerFault::SlotMissing);
        let e = server_error("42704", "le slot de réplication « walrcv » n'existe pas");
        assert_needs_operator(&e, ServerFault::SlotMissing);
        let e = server_error(
            "55000",
            "kann nicht mehr auf Replikations-Slot »walrcv« zugreifen",
        );
        assert_needs_operator(&e, ServerFault::SlotUnusable);
    }

    #[test]
    fn translated_history_refusal_is_told_by_the_facts() {
        let text = "angeforderter Startpunkt 0/3000000 auf Zeitleiste 1 ist nicht in der History dieses Servers";
        let e = server_error("XX000", text);
        // Without START_REPLICATION's facts an XX000 is retried.
        assert!(e.retryable(), "{e}");
        let e = refine_at_start(e, &facts(1, 0x300_0000, 2, 0x500_0000));
        assert_needs_operator(&e, ServerFault::NotInHistory);
    }

    #[test]
    fn translated_ahead_refusal_is_told_by_the_facts() {
        let text = "le point de reprise requis 0/3000000 est devant la position de vidage des WAL de ce serveur 0/2000000";
        let e = refine_at_start(
            server_error("XX000", text),
            &facts(1, 0x300_0000, 1, 0x200_0000),
        );
        assert_needs_operator(&e, ServerFault::AheadOfServer);
    }

    #[test]
    fn a_server_behind_the_archive_is_named() {
        let e = refine_at_start(
            server_error("XX000", "requested starting point 0/3000000 is ahead of the WAL flush position of this server 0/2000000"),
            &facts(1, 0x300_0000, 1, 0x200_0000),
        );
        assert_eq!(e.behind_the_archive(), Some("host=db port=5432"));
        let e = refine_at_start(
            server_error(
                "XX000",
                "requested starting point 0/3000000 on timeline 1 is not in this server's history",
            ),
            &facts(1, 0x300_0000, 2, 0x500_0000),
        );
        assert_eq!(e.behind_the_archive(), None);
    }

    #[test]
    fn english_text_alone_decides_nothing() {
        // The English text of a refusal with a retryable SQLSTATE, or an XX000
        // whose facts do not show the refusal, is retried.
        let e = server_error(
            "57P01",
            "requested WAL segment 000000010000000000000003 has already been removed",
        );
        assert!(e.retryable());
        let e = refine_at_start(
            server_error(
                "XX000",
                "requested starting point 0/3000000 is ahead of the WAL flush position of this server 0/2000000",
            ),
            &facts(1, 0x300_0000, 1, 0x400_0000),
        );
        assert!(e.retryable(), "{e}");
        assert_eq!(e.exit_code(), exit::DISCONNECTED);
    }

    #[test]
    fn wal_removed_mid_stream_names_the_segment_the_server_names() {
        // The session started at 0/3000000; the server removed 0/5000000's
        // segment before walrcv got there.
        let e = refine_at_start(
            server_error(
                "58P01",
                "das angeforderte WAL-Segment 000000010000000000000005 wurde schon entfernt",
            ),
            &facts(1, 0x300_0000, 1, 0x900_0000),
        );
        let shown = e.to_string();
        assert!(shown.contains("from 0/5000000 on timeline 1"), "{shown}");
    }

    #[test]
    fn a_full_disk_is_retried_wherever_it_is_met() {
        let full = ReceiverError::Archive(ArchiveError::io(
            "/a/00000002.history.tmp",
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        ));
        assert!(full.retryable());
        assert_eq!(full.failure_kind(), FailureKind::Archive);
        let other = ReceiverError::Archive(ArchiveError::NotADirectory("/a".into()));
        assert!(!other.retryable());
    }

    #[test]
    fn slot_in_use_is_retried() {
        let e = server_error("55006", "Replikations-Slot »walrcv« ist aktiv für PID 42");
        assert!(e.retryable());
        assert_eq!(e.failure_kind(), FailureKind::Server);
    }

    #[test]
    fn failure_kinds() {
        let io = || std::io::Error::from_raw_os_error(libc::ENOSPC);
        let full = ReceiverError::Writer(SinkError::Write {
            at: Lsn(0x300_0000),
            timeline: 1,
            source: ArchiveError::io("/a/000000010000000000000003.partial.tmp", io()),
        });
        assert_eq!(full.failure_kind(), FailureKind::Archive);
        assert!(full.is_disk_full());
        let shown = full.to_string();
        assert!(
            shown.contains("0/3000000") && shown.contains(".partial.tmp"),
            "{shown}"
        );
        let eio = ReceiverError::Writer(SinkError::Archive(ArchiveError::io(
            "/a/x",
            std::io::Error::from_raw_os_error(libc::EIO),
        )));
        assert_eq!(eio.failure_kind(), FailureKind::Archive);
        assert!(!eio.is_disk_full());
        assert_eq!(
            ReceiverError::Timeout(30).failure_kind(),
            FailureKind::Network
        );
        assert_eq!(
            ReceiverError::Connection(PgError::at("t", PgErrorKind::Closed)).failure_kind(),
            FailureKind::Network
        );
        assert_eq!(
            ReceiverError::Unexpected("x".into()).failure_kind(),
            FailureKind::Protocol
        );
    }

    fn crc_failure(lsn: u64, began_in_archive: bool) -> ReceiverError {
        ReceiverError::Writer(SinkError::Verify {
            error: crate::wal::VerifyError {
                lsn: Lsn(lsn),
                check: crate::wal::Check::Crc,
                detail: "mismatch".into(),
            },
            file: "000000010000000000000009".into(),
            offset: 0xFF00,
            verified: Lsn(lsn),
            began_in_archive,
        })
    }

    #[test]
    fn a_record_begun_in_the_archive_failing_twice_in_a_row_stops() {
        let dir = std::path::Path::new("/archive");
        let mut suspect = None;
        // Once: retried (a flipped bit on the way heals by itself).
        let e = repeated_in_archive(crc_failure(0x9FF00, true), &mut suspect, dir);
        assert_eq!(e.exit_code(), exit::VERIFY_FAILED);
        assert!(e.retryable());
        // Another failure in between starts the count again.
        let e = repeated_in_archive(ReceiverError::Timeout(60), &mut suspect, dir);
        assert!(e.retryable());
        let e = repeated_in_archive(crc_failure(0x9FF00, true), &mut suspect, dir);
        assert!(e.retryable());
        // Twice in a row at the same LSN: the archive's part.
        let e = repeated_in_archive(crc_failure(0x9FF00, true), &mut suspect, dir);
        assert_eq!(e.exit_code(), exit::ARCHIVE_UNTRUSTED);
        assert!(!e.retryable());
        let text = e.to_string();
        assert!(
            text.contains("/archive/000000010000000000000009") && text.contains("0/9FF00"),
            "{text}"
        );
        // A failure of the stream's own WAL is never blamed on the archive.
        let mut suspect = None;
        for _ in 0..3 {
            let e = repeated_in_archive(crc_failure(0xA0100, false), &mut suspect, dir);
            assert_eq!(e.exit_code(), exit::VERIFY_FAILED);
        }
    }
}
