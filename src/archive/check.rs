//! Whether one archive file may be used, judged from its (decompressed) bytes
//! alone: the check `walrcv restore` runs before serving a file, and that
//! `verify` can share.
//!
//! - A complete segment must be exactly one segment of valid WAL: its long
//!   page header, then page headers and records (CRC-32C, `xl_prev`) through
//!   its last byte, a zero tail allowed only after `XLOG_SWITCH` (the
//!   [`Verifier`]'s rules).
//! - A `.partial` holds valid WAL up to some record boundary and then the
//!   beginning of at most one record that was being written when streaming
//!   stopped (cut off by zeros, or by the end of a compressed stream). Its
//!   usable length is that record boundary. Anything invalid *before* the last
//!   written byte is damage, not a torn end: serving the prefix would end
//!   recovery early, at the damage, and silently drop what follows it.
//! - A history file must parse and list only lower timelines.
//!
//! Pure: bytes in, a [`ValidEnd`] or a [`FileProblem`] out.

use crate::lsn::{is_valid_segment_size, segment_start_lsn, Lsn, TimeLineId};
use crate::wal::history::{check_history_for, parse_history, HistoryEntry};
use crate::wal::page::{PageHeader, LONG_HEADER_SIZE, SHORT_HEADER_SIZE, XLP_LONG_HEADER};
use crate::wal::verifier::{Verifier, VerifierConfig, VerifyError};

use super::names::SegmentName;

/// Whether a segment file claims to be complete or is a `.partial`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completeness {
    Complete,
    Partial,
}

/// How much of a segment file is valid WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidEnd {
    /// `wal_segment_size`, from the file's long page header.
    pub segment_size: u64,
    /// End of the last valid record (or the segment end for a complete one).
    pub end: Lsn,
    /// Bytes of the file to keep: `end` as an offset in the segment. Bytes
    /// after it are served as zeros.
    pub valid_bytes: u64,
    /// Records verified in the file.
    pub records: u64,
}

/// Why a file must not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileProblem {
    /// No long page header at the start (nothing valid to learn the segment
    /// size from). For a `.partial` it means nothing was ever written.
    #[error("{file}: no valid long page header at the start of the file ({what})")]
    NoLongHeader { file: String, what: String },
    /// The name does not fit the segment size in the header.
    #[error("{file}: the name is not a valid segment name for wal_segment_size {segment_size}")]
    NameForSize { file: String, segment_size: u64 },
    /// A complete segment of the wrong length (decompressed), or a `.partial`
    /// longer than a segment.
    #[error("{file}: holds {size} bytes, expected {expected}")]
    WrongSize {
        file: String,
        size: u64,
        expected: u64,
    },
    /// A `.partial` of nothing but zeros: streaming never wrote to it.
    #[error("{file}: nothing was written to this partial file (all zeros)")]
    NothingWritten { file: String },
    /// A page header or record failed its check.
    #[error("{file}: WAL verification failed at LSN {} (offset {offset}): {} check: {}", .error.lsn, .error.check, .error.detail)]
    Corrupt {
        file: String,
        offset: u64,
        error: VerifyError,
    },
    /// A history file that does not parse or lists a wrong ancestor.
    #[error("{file}: invalid timeline history: {what}")]
    BadHistory { file: String, what: String },
}

/// `wal_segment_size` and the WAL page size from a file's first (long) page
/// header, when it has a valid one.
pub fn sizes_of(bytes: &[u8]) -> Option<(u64, u32)> {
    let header = PageHeader::parse(bytes)?;
    if header.info & XLP_LONG_HEADER == 0 {
        return None;
    }
    let long = header.long?;
    let size = u64::from(long.segment_size);
    let block_ok = long.block_size.is_power_of_two() && (1024..=65536).contains(&long.block_size);
    (is_valid_segment_size(size) && block_ok).then_some((size, long.block_size))
}

/// Checks the bytes of segment `name` (decompressed), as a complete segment
/// or as a `.partial`, and says how many of them are valid WAL.
pub fn check_segment(
    bytes: &[u8],
    name: &SegmentName,
    completeness: Completeness,
) -> Result<ValidEnd, FileProblem> {
    let file = name.as_str().to_owned();
    let written = written_len(bytes);
    if completeness == Completeness::Partial && written == 0 {
        return Err(FileProblem::NothingWritten { file });
    }
    let (segment_size, block_size) = sizes_of(bytes).ok_or_else(|| FileProblem::NoLongHeader {
        file: file.clone(),
        what: describe_start(bytes),
    })?;
    let (timeline, segno) = name
        .segno(segment_size)
        .ok_or_else(|| FileProblem::NameForSize {
            file: file.clone(),
            segment_size,
        })?;
    let size = bytes.len() as u64;
    let size_ok = match completeness {
        Completeness::Complete => size == segment_size,
        Completeness::Partial => size <= segment_size,
    };
    if !size_ok {
        return Err(FileProblem::WrongSize {
            file,
            size,
            expected: segment_size,
        });
    }
    let start = segment_start_lsn(segno, segment_size);
    // A complete segment is checked to its last byte; a `.partial` up to its
    // last written (non-zero) byte, which must be a clean prefix of WAL. The
    // zeros after that byte may still complete the record in progress (a
    // record can end in zero bytes); a check failing there is the end of WAL.
    let (checked, zero_tail) = match completeness {
        Completeness::Complete => (bytes, &[][..]),
        Completeness::Partial => bytes.split_at(written.min(bytes.len())),
    };
    let config = VerifierConfig {
        segment_size,
        block_size,
        system_id: None,
        timeline,
        server_major: None,
    };
    let mut verifier = Verifier::at_segment_start(config, start);
    verifier
        .feed(checked)
        .map_err(|error| FileProblem::Corrupt {
            file,
            offset: error.lsn.0.saturating_sub(start.0),
            error,
        })?;
    let _ = verifier.feed(zero_tail);
    let end = match completeness {
        Completeness::Complete => Lsn(start.0 + segment_size),
        Completeness::Partial => verifier
            .verified_end()
            .max(continuation_end(&verifier, start, block_size)),
    };
    Ok(ValidEnd {
        segment_size,
        end,
        valid_bytes: end.0.saturating_sub(start.0).min(size),
        records: verifier.records(),
    })
}

/// Checks the content of the history file of `timeline`.
pub fn check_history(
    bytes: &[u8],
    file: &str,
    timeline: TimeLineId,
) -> Result<Vec<HistoryEntry>, FileProblem> {
    let bad = |what: String| FileProblem::BadHistory {
        file: file.to_owned(),
        what,
    };
    let entries = parse_history(bytes).map_err(|e| bad(e.to_string()))?;
    if timeline > 1 && entries.is_empty() {
        return Err(bad(format!(
            "timeline {timeline} has no ancestor listed (empty history)"
        )));
    }
    check_history_for(timeline, &entries).map_err(bad)?;
    Ok(entries)
}

/// Where the continuation of a record begun in the previous segment ends, when
/// the segment starts with one and all of it was fed: those bytes are valid
/// WAL too (PostgreSQL needs them to finish that record) even when no record
/// starts after them. `xlp_rem_len` counts record bytes only, so the page
/// headers it crosses are added back.
fn continuation_end(verifier: &Verifier, start: Lsn, block_size: u32) -> Lsn {
    let Some((page, len)) = verifier.skipped_continuation() else {
        return start;
    };
    if page != start {
        return start;
    }
    // MAXALIGNed, as the next record starts there.
    let Some(end) = continuation_length(u64::from(len), u64::from(block_size))
        .and_then(|n| start.0.checked_add(n))
        .and_then(|end| end.checked_add(7))
        .map(|end| Lsn(end & !7))
    else {
        return start;
    };
    if verifier.position() >= end {
        end
    } else {
        start
    }
}

/// Bytes from a segment's start to the end of a continuation of `len` record
/// bytes that begins after the segment's long page header: the first page
/// holds `block - 40` of them, each later page `block - 24` after its short
/// header. `None` on overflow (a header from a fuzzer, not a server).
fn continuation_length(len: u64, block: u64) -> Option<u64> {
    let long = LONG_HEADER_SIZE as u64;
    let short = SHORT_HEADER_SIZE as u64;
    let first_page = block.checked_sub(long)?;
    if len <= first_page {
        return Some(long + len);
    }
    let rest = len - first_page;
    let per_page = block.checked_sub(short)?;
    let pages = rest.div_ceil(per_page);
    let on_last = rest - (pages - 1) * per_page;
    block.checked_mul(pages)?.checked_add(short + on_last)
}

/// Length up to and including the last non-zero byte.
fn written_len(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
}

fn describe_start(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        "the file is empty".into()
    } else if bytes.iter().take(64).all(|&b| b == 0) {
        "it starts with zeros".into()
    } else {
        "not a WAL segment, or another page size".into()
    }
}

#[cfg(test)]
mod tests;
