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
    check(bytes, name, completeness).map(|(valid, _)| valid)
}

/// [`check_segment`] of a `.partial`, with the state that lets the check
/// go on when the file grows ([`PartialCheck::resume`]) instead of starting
/// again from its first byte.
pub fn check_partial(
    bytes: &[u8],
    name: &SegmentName,
) -> Result<(ValidEnd, Option<PartialCheck>), FileProblem> {
    check(bytes, name, Completeness::Partial)
}

fn check(
    bytes: &[u8],
    name: &SegmentName,
    completeness: Completeness,
) -> Result<(ValidEnd, Option<PartialCheck>), FileProblem> {
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
    let strict = verifier.clone();
    let _ = verifier.feed(zero_tail);
    let end = match completeness {
        Completeness::Complete => Lsn(start.0 + segment_size),
        Completeness::Partial => partial_end(&verifier, start, block_size),
    };
    let valid = ValidEnd {
        segment_size,
        end,
        valid_bytes: end.0.saturating_sub(start.0).min(size),
        records: verifier.records(),
    };
    let resumable = (completeness == Completeness::Partial).then_some(PartialCheck {
        strict,
        start,
        len: size,
        block_size,
        valid,
    });
    Ok((valid, resumable))
}

/// Where a `.partial`'s usable WAL ends, once every byte of it was fed (the
/// strict part, then the zero tail until the verifier stopped).
fn partial_end(verifier: &Verifier, start: Lsn, block_size: u32) -> Lsn {
    verifier
        .verified_end()
        .max(continuation_end(verifier, start, block_size))
}

/// The check of a `.partial` still being written, kept to go on from where
/// it stopped when the file grows: the writer fills a zero-padded file in
/// place, front to back, so the bytes already checked do not change and only
/// those appended since need the verifier ([`PartialCheck::resume`]).
///
/// Resuming gives exactly [`check_segment`]'s answer for the grown file, on
/// one assumption it does not read the file to confirm: the bytes more than
/// one WAL page past where verification stops are still zero. (A full check
/// reads them all, which is what made every reload cost a whole segment.)
/// Anything else it cannot answer for itself (the file's length changed, the
/// new bytes fail the strict check, the written end moved backwards) gives
/// `None`: the caller checks the whole file again.
#[derive(Debug, Clone)]
pub struct PartialCheck {
    /// The verifier after the strict part of the last check: every byte up
    /// to the last non-zero one, without error. Resuming feeds it on.
    strict: Verifier,
    start: Lsn,
    /// The file's length when checked (a `.partial` keeps its length).
    len: u64,
    block_size: u32,
    valid: ValidEnd,
}

impl PartialCheck {
    /// The answer of the last check.
    pub fn valid(&self) -> ValidEnd {
        self.valid
    }

    /// Offset in the file up to which every byte passed the strict check:
    /// what is read and verified on the next resume starts there.
    pub fn checked_len(&self) -> u64 {
        self.strict.position().0.saturating_sub(self.start.0)
    }

    /// Checks the file again, now holding `bytes` (its whole content, of
    /// which the first [`PartialCheck::checked_len`] are as they were), by
    /// verifying only what follows the checked bytes. `Some`: the new state,
    /// whose [`PartialCheck::valid`] is [`check_segment`]'s answer for
    /// `bytes`. `None`: check the whole file instead.
    pub fn resume(&self, bytes: &[u8]) -> Option<PartialCheck> {
        if bytes.len() as u64 != self.len {
            return None;
        }
        let from = usize::try_from(self.checked_len()).ok()?;
        let rest = bytes.get(from..)?;
        // Where the WAL ends: the verifier fed on until it fails (on the
        // zeros after the last written byte) or the bytes end, as the full
        // check feeds its zero tail.
        let mut lenient = self.strict.clone();
        let _ = lenient.feed(rest);
        let stop = usize::try_from(lenient.position().0.saturating_sub(self.start.0)).ok()?;
        let window = written_window(from, stop, bytes.len(), self.block_size);
        let written = from + written_len(bytes.get(from..window)?);
        // Every written byte must pass, as in the full check: a byte the
        // lenient verifier failed on that is followed by written bytes is
        // damage (or garbage), which the full check reports.
        let mut strict = self.strict.clone();
        strict.feed(bytes.get(from..written)?).ok()?;
        let end = partial_end(&lenient, self.start, self.block_size);
        Some(PartialCheck {
            strict,
            start: self.start,
            len: self.len,
            block_size: self.block_size,
            valid: ValidEnd {
                segment_size: self.valid.segment_size,
                end,
                valid_bytes: end.0.saturating_sub(self.start.0).min(self.len),
                records: lenient.records(),
            },
        })
    }

    /// The check of the same file, now complete: its writer filled it to
    /// the segment's end, fsynced it and renamed it to the segment's own
    /// name (the same file, the caller makes sure of that), so it must now
    /// be what [`check_segment`] demands of a complete segment: WAL through
    /// its last byte, a zero tail only after `XLOG_SWITCH`. `bytes` is its
    /// whole content, of which the first [`PartialCheck::checked_len`] are
    /// as they were; every byte after those is fed to the strict verifier,
    /// none assumed. `Some`: [`check_segment`]'s answer for `bytes` as a
    /// complete segment. `None`: check the whole file instead (it fails
    /// there too, unless its checked bytes changed).
    ///
    /// At every segment completion this spares each caught-up client a
    /// read and check of the whole segment: only the bytes written since
    /// its last resume are verified.
    pub fn complete(&self, bytes: &[u8]) -> Option<ValidEnd> {
        let size = self.valid.segment_size;
        if bytes.len() as u64 != self.len || self.len != size {
            return None;
        }
        let from = usize::try_from(self.checked_len()).ok()?;
        let mut strict = self.strict.clone();
        strict.feed(bytes.get(from..)?).ok()?;
        Some(ValidEnd {
            segment_size: size,
            end: Lsn(self.start.0.checked_add(size)?),
            valid_bytes: size,
            records: strict.records(),
        })
    }
}

/// The end of the bytes a resumed check looks at for its written end:
/// one page past `stop` (where the lenient verifier stopped, at or after
/// `from`), within `len`. Written bytes past the verified WAL are the
/// record in progress or damage right after it; the full check's scan of
/// every zero to the file's end is what a resume saves.
pub fn written_window(from: usize, stop: usize, len: usize, block_size: u32) -> usize {
    let page = usize::try_from(block_size).unwrap_or(usize::MAX);
    stop.max(from).saturating_add(page).min(len)
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

/// Length up to and including the last non-zero byte. A new `.partial` is
/// mostly zeros: 64-byte blocks are OR-reduced from the end (which
/// vectorizes) rather than tested a byte at a time.
pub fn written_len(bytes: &[u8]) -> usize {
    let mut end = bytes.len();
    for block in bytes.rchunks(64) {
        if block.iter().fold(0u8, |a, &b| a | b) != 0 {
            return block
                .iter()
                .rposition(|&b| b != 0)
                .map_or(0, |i| end - block.len() + i + 1);
        }
        end -= block.len();
    }
    0
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
