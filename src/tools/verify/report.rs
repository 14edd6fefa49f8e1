//! The report stage: what `walrcv verify` found, as data (serializable to
//! JSON), and the constructors of its problems.

use std::path::PathBuf;

use serde::Serialize;

use crate::lsn::{Lsn, SegNo, TimeLineId};
use crate::wal::verifier::{Check, VerifyError};

use super::divergent::DivergentRange;
use super::lsn_json::ser_opt_lsn;

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

// The constructors below are the one place each kind of problem takes its
// shape (severity, kind, where it is); the callers only say what they found.
impl Problem {
    /// A problem with no offset, LSN or failed check (each constructor adds
    /// the ones its kind has).
    fn new(
        severity: Severity,
        kind: ProblemKind,
        file: impl Into<String>,
        message: impl Into<String>,
    ) -> Problem {
        Problem {
            severity,
            kind,
            file: file.into(),
            offset: None,
            lsn: None,
            check: None,
            message: message.into(),
        }
    }

    fn at(self, offset: Option<u64>, lsn: Option<Lsn>) -> Problem {
        Problem {
            offset,
            lsn,
            ..self
        }
    }

    /// A file that could not be read (exit status 2).
    pub(super) fn unreadable(file: &str, e: &std::io::Error) -> Problem {
        Problem::new(
            Severity::Error,
            ProblemKind::Unreadable,
            file,
            format!("cannot read: {e}"),
        )
    }

    /// A history file unreadable, malformed, missing, or in conflict with
    /// the segments.
    pub(super) fn history(file: &str, message: String) -> Problem {
        Problem::new(Severity::Error, ProblemKind::History, file, message)
    }

    /// WAL past what the history says, which does not make the archive fail
    /// (a segment before its timeline began, records past a switch point).
    pub(super) fn history_warning(file: &str, message: String) -> Problem {
        Problem::new(Severity::Warning, ProblemKind::History, file, message)
    }

    /// A WAL check failed at `offset` in `file` (a segment of another system
    /// is its own kind).
    pub(super) fn corrupt(file: &str, offset: u64, e: &VerifyError) -> Problem {
        Problem {
            check: Some(e.check),
            ..Problem::new(
                Severity::Error,
                wal_kind(e.check, ProblemKind::Corrupt),
                file,
                format!("{} check failed: {}", e.check, e.detail),
            )
            .at(Some(offset), Some(e.lsn))
        }
    }

    /// The problems of a file past the per-file limit, counted.
    pub(super) fn more_not_shown(file: &str, count: usize) -> Problem {
        Problem::new(
            Severity::Error,
            ProblemKind::Corrupt,
            file,
            format!("{count} more problems in this file not shown"),
        )
    }

    /// A compressed file (of segment start `lsn`) that does not decode at all.
    pub(super) fn undecodable(file: &str, lsn: Lsn, method: &str, detail: &str) -> Problem {
        Problem::new(
            Severity::Error,
            ProblemKind::Corrupt,
            file,
            format!("{method} file cannot be decompressed: {detail}"),
        )
        .at(None, Some(lsn))
    }

    /// A file (of segment start `lsn`) with no byte of WAL: only a warning
    /// for a `.partial`, which a receiver may have just created.
    pub(super) fn empty(file: &str, partial: bool, lsn: Lsn, compressed: bool) -> Problem {
        let (severity, kind) = if partial {
            (Severity::Warning, ProblemKind::WrongSize)
        } else {
            (Severity::Error, ProblemKind::NotWal)
        };
        let message = if compressed {
            "decompresses to nothing"
        } else {
            "empty file"
        };
        Problem::new(severity, kind, file, message).at(Some(0), Some(lsn))
    }

    /// A complete segment of the wrong size, wrong from `offset` (at `lsn`) on.
    pub(super) fn wrong_size(file: &str, offset: u64, lsn: Lsn, message: String) -> Problem {
        Problem::new(Severity::Error, ProblemKind::WrongSize, file, message)
            .at(Some(offset), Some(lsn))
    }

    /// Non-zero bytes after the end of valid WAL at `end`, where `e` failed at
    /// `offset`: stale pages of a recycled segment (wrong page address) are
    /// only a warning.
    pub(super) fn after_valid_end(file: &str, offset: u64, end: Lsn, e: &VerifyError) -> Problem {
        let severity = if e.check == Check::PageAddress {
            Severity::Warning
        } else {
            Severity::Error
        };
        Problem {
            check: Some(e.check),
            ..Problem::new(
                severity,
                wal_kind(e.check, ProblemKind::TrailingGarbage),
                file,
                format!(
                    "valid WAL ends at {end}; non-zero bytes follow ({} check failed at {}: {})",
                    e.check, e.lsn, e.detail
                ),
            )
            .at(Some(offset), Some(e.lsn))
        }
    }

    /// A segment when no file of the archive tells the segment size.
    pub(super) fn no_parameters(file: &str, size: u64) -> Problem {
        let message = if size == 0 {
            "empty file"
        } else {
            "no valid WAL long page header in any segment: cannot tell the segment size"
        };
        Problem::new(Severity::Error, ProblemKind::NotWal, file, message).at(Some(0), None)
    }

    /// A file name that is not a segment of `segment_size` bytes.
    pub(super) fn bad_name(file: &str, segment_size: u64) -> Problem {
        Problem::new(
            Severity::Error,
            ProblemKind::Name,
            file,
            format!("not a valid segment name for {segment_size} byte segments"),
        )
    }

    /// Missing segments, from the one at `lsn` (named `file`) on.
    pub(super) fn gap(file: String, lsn: Lsn, message: String) -> Problem {
        Problem::new(Severity::Error, ProblemKind::Gap, file, message).at(None, Some(lsn))
    }

    /// A set-aside file that could not be measured (always a warning).
    pub(super) fn divergent(file: &str, message: String) -> Problem {
        Problem::new(Severity::Warning, ProblemKind::Divergent, file, message)
    }

    /// One range of set-aside files (always a warning), at its start.
    pub(super) fn divergent_range(r: &DivergentRange) -> Problem {
        let file = r.files.first().map(|f| f.name.clone()).unwrap_or_default();
        Problem::new(
            Severity::Warning,
            ProblemKind::Divergent,
            file,
            r.description(),
        )
        .at(None, Some(r.from))
    }
}

/// A failed WAL check's kind: a segment of another database system is
/// [`ProblemKind::SystemId`] whatever else it is.
fn wal_kind(check: Check, otherwise: ProblemKind) -> ProblemKind {
    if check == Check::SystemId {
        ProblemKind::SystemId
    } else {
        otherwise
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::verify::divergent::DivergentFile;

    fn error(check: Check) -> VerifyError {
        VerifyError {
            lsn: Lsn(0x100_2000),
            check,
            detail: "bad".into(),
        }
    }

    #[test]
    fn a_wal_check_is_corrupt_unless_it_is_another_system() {
        let p = Problem::corrupt("f", 0x2000, &error(Check::Crc));
        assert_eq!(
            (p.severity, p.kind),
            (Severity::Error, ProblemKind::Corrupt)
        );
        assert_eq!((p.offset, p.lsn), (Some(0x2000), Some(Lsn(0x100_2000))));
        assert_eq!(p.check, Some(Check::Crc));
        let p = Problem::corrupt("f", 0x2000, &error(Check::SystemId));
        assert_eq!(p.kind, ProblemKind::SystemId);
    }

    #[test]
    fn stale_pages_after_the_end_are_only_a_warning() {
        let end = Lsn(0x100_1000);
        let p = Problem::after_valid_end("f", 0x2000, end, &error(Check::PageAddress));
        assert_eq!(
            (p.severity, p.kind),
            (Severity::Warning, ProblemKind::TrailingGarbage)
        );
        let p = Problem::after_valid_end("f", 0x2000, end, &error(Check::Crc));
        assert_eq!(p.severity, Severity::Error);
        assert!(p.message.starts_with("valid WAL ends at 0/1001000; "));
    }

    #[test]
    fn an_empty_partial_is_a_warning_an_empty_segment_not_wal() {
        let p = Problem::empty("f.partial", true, Lsn(0), false);
        assert_eq!(
            (p.severity, p.kind, p.message.as_str()),
            (Severity::Warning, ProblemKind::WrongSize, "empty file")
        );
        let p = Problem::empty("f.gz", false, Lsn(0), true);
        assert_eq!(
            (p.severity, p.kind, p.message.as_str()),
            (
                Severity::Error,
                ProblemKind::NotWal,
                "decompresses to nothing"
            )
        );
    }

    #[test]
    fn a_divergent_range_is_a_warning_at_its_start_on_its_first_file() {
        let file = |name: &str| DivergentFile {
            name: name.into(),
            timeline: 1,
            segno: 0xB,
            partial: false,
            size: 1 << 20,
            data_end: Lsn(0xC0_0000),
            divergent_bytes: 0,
        };
        let r = DivergentRange {
            timeline: 1,
            switchpoint: Some(Lsn(0xB1_0000)),
            history_of: Some(2),
            from: Lsn(0xB1_0000),
            to: Lsn(0xC0_0000),
            bytes: 0xC0_0000 - 0xB1_0000,
            files: vec![file("a.divergent.tmp"), file("b.divergent.tmp")],
        };
        let p = Problem::divergent_range(&r);
        assert_eq!(
            (p.severity, p.kind),
            (Severity::Warning, ProblemKind::Divergent)
        );
        assert_eq!((p.file.as_str(), p.lsn), ("a.divergent.tmp", Some(r.from)));
        assert_eq!(p.message, r.description());
    }
}
