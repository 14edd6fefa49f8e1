//! The report stage: what `walrcv verify` found, as data (serializable to
//! JSON), and the constructors of its problems.

use std::path::PathBuf;

use serde::{Serialize, Serializer};

use crate::lsn::{Lsn, SegNo, TimeLineId};
use crate::wal::verifier::{Check, VerifyError};

use super::divergent::DivergentRange;

/// How bad a problem is. Only errors make the archive fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// Kind of a problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// A WAL check failed (see `check`).
    Corrupt,
    /// A segment number is missing.
    Gap,
    /// A file has the wrong size (truncated or too long).
    WrongSize,
    /// A file with a WAL name holds no WAL (or no usable long header).
    NotWal,
    /// A segment of another database system.
    SystemId,
    /// History file unreadable, malformed, missing, or in conflict with the segments.
    History,
    /// A file could not be read.
    Unreadable,
    /// Bytes after the end of valid WAL in a `.partial` file.
    TrailingGarbage,
    /// A file name not valid for the archive's segment size, or a compressed file.
    Name,
    /// Files set aside after a failover (`*.divergent.tmp`): WAL of a
    /// timeline past the point where the history left it. Always a warning.
    Divergent,
}

/// One problem, with where it is.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub severity: Severity,
    pub kind: ProblemKind,
    /// File name (relative to the archive directory; for a gap, the missing name).
    pub file: String,
    /// Byte offset in the file, when meaningful.
    pub offset: Option<u64>,
    #[serde(serialize_with = "ser_opt_lsn")]
    pub lsn: Option<Lsn>,
    pub check: Option<Check>,
    pub message: String,
}

/// Per-file result.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    pub name: String,
    pub timeline: TimeLineId,
    pub segno: SegNo,
    pub partial: bool,
    pub size: u64,
    /// Records that completed in this file.
    pub records: u64,
    /// Whether the file is part of the verified sequence (else: superseded by a newer
    /// timeline's file of the same segment number, verified on its own).
    pub in_sequence: bool,
    /// Where valid WAL ends in this file (for `.partial` files, or where checks failed).
    #[serde(serialize_with = "ser_opt_lsn")]
    pub valid_end: Option<Lsn>,
    /// Why the valid WAL ends there (the failed check's message), if it does.
    pub end_reason: Option<String>,
    /// The verifier's verified end after this file (end of the last verified record, or
    /// the next segment start after a switch tail).
    #[serde(serialize_with = "ser_opt_lsn")]
    pub verified_end: Option<Lsn>,
}

/// Per-timeline summary.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineSummary {
    pub timeline: TimeLineId,
    /// Parent timeline and switch point into this one, from the history.
    pub parent: Option<TimeLineId>,
    #[serde(serialize_with = "ser_opt_lsn")]
    pub switchpoint: Option<Lsn>,
    /// Start of the first verified record in this timeline's files.
    #[serde(serialize_with = "ser_opt_lsn")]
    pub first_lsn: Option<Lsn>,
    /// Verified end (MAXALIGNed end of the last verified record) in this timeline's files.
    #[serde(serialize_with = "ser_opt_lsn")]
    pub last_lsn: Option<Lsn>,
    pub segments: u64,
    pub partial_segments: u64,
    pub records: u64,
    /// Bytes of the files read.
    pub bytes: u64,
}

/// Everything `walrcv verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub directory: PathBuf,
    pub system_id: Option<u64>,
    pub segment_size: Option<u64>,
    pub block_size: Option<u32>,
    pub server_major: Option<u32>,
    /// The newest timeline found (segments or history files).
    pub newest_timeline: Option<TimeLineId>,
    pub timelines: Vec<TimelineSummary>,
    pub files: Vec<FileReport>,
    pub problems: Vec<Problem>,
    /// Records verified in the sequence of files followed through the timeline history
    /// (records of a superseded parent `.partial` are in its timeline's summary only).
    pub records: u64,
    /// Whether no problem of severity error was found.
    pub ok: bool,
    /// The files set aside after a failover, as ranges (one per tail).
    pub divergent: Vec<DivergentRange>,
    /// How many set-aside files there are.
    pub divergent_files: usize,
    /// Bytes of WAL they hold past their switch points.
    pub divergent_bytes: u64,
}

impl VerifyReport {
    /// Problems of severity [`Severity::Error`].
    pub fn errors(&self) -> impl Iterator<Item = &Problem> {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
    }

    /// 0: no error; 1: problems; 2: a file could not be read. Divergent
    /// files are warnings and change nothing here.
    pub fn exit_code(&self) -> i32 {
        if self
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::Unreadable)
        {
            2
        } else if self.ok {
            0
        } else {
            1
        }
    }
}

pub(super) fn ser_lsn<S: Serializer>(v: &Lsn, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.to_string())
}

pub(super) fn ser_opt_lsn<S: Serializer>(v: &Option<Lsn>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(l) => s.serialize_str(&l.to_string()),
        None => s.serialize_none(),
    }
}

pub(super) fn unreadable(name: &str, e: &std::io::Error) -> Problem {
    Problem {
        severity: Severity::Error,
        kind: ProblemKind::Unreadable,
        file: name.to_string(),
        offset: None,
        lsn: None,
        check: None,
        message: format!("cannot read: {e}"),
    }
}

pub(super) fn history_problem(name: &str, message: String) -> Problem {
    Problem {
        severity: Severity::Error,
        kind: ProblemKind::History,
        file: name.to_string(),
        offset: None,
        lsn: None,
        check: None,
        message,
    }
}

pub(super) fn corrupt(name: &str, offset: u64, e: &VerifyError) -> Problem {
    Problem {
        severity: Severity::Error,
        kind: if e.check == Check::SystemId {
            ProblemKind::SystemId
        } else {
            ProblemKind::Corrupt
        },
        file: name.to_string(),
        offset: Some(offset),
        lsn: Some(e.lsn),
        check: Some(e.check),
        message: format!("{} check failed: {}", e.check, e.detail),
    }
}
