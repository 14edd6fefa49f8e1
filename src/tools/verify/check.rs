//! The per-file check stage (pure, over bytes): one segment file's WAL
//! verified with a [`Verifier`] (carried over from the previous file of the
//! sequence, or fresh), its size checked, where its valid WAL ends, and what
//! follows that end.
//!
//! Compressed files arrive decompressed: a complete one must decompress to
//! exactly the segment size and finish its stream; a compressed `.partial`
//! (never padded by pg_receivewal) is checked to its end of valid WAL like a
//! plain one. A compressed file that does not decode is one problem, with
//! the decompressor's message.
//!
//! `src/archive/check.rs` (restore's "is this file fit to serve") answers a
//! narrower question over the same bytes; the two are meant to share their
//! core once both are on main.

use crate::archive::names::Compression;
use crate::lsn::{Lsn, SegNo, TimeLineId};
use crate::wal::verifier::{Check, Verifier, VerifierConfig, VerifyError};

use super::report::{FileReport, Problem};

/// The archive-wide facts a file is checked against.
#[derive(Debug, Clone, Copy)]
pub(super) struct Context {
    pub segment_size: u64,
    pub block_size: u32,
    pub system_id: Option<u64>,
    pub server_major: Option<u32>,
    pub max_problems_per_file: usize,
}

impl Context {
    pub fn config(&self, tli: TimeLineId) -> VerifierConfig {
        VerifierConfig {
            segment_size: self.segment_size,
            block_size: self.block_size,
            system_id: self.system_id,
            timeline: tli,
            server_major: self.server_major,
        }
    }
}

/// The file being checked.
#[derive(Debug, Clone, Copy)]
pub(super) struct FileMeta<'a> {
    pub name: &'a str,
    pub tli: TimeLineId,
    pub segno: SegNo,
    pub partial: bool,
    pub compression: Compression,
    /// Size on disk.
    pub size: u64,
    pub in_sequence: bool,
}

/// A file's (decompressed) content.
#[derive(Debug, Clone, Copy)]
pub(super) struct Content<'a> {
    pub bytes: &'a [u8],
    /// Whether a compressed stream ended with its trailer (plain: always).
    pub finished: bool,
}

/// What checking one file gave.
#[derive(Debug)]
pub(super) struct Checked {
    pub report: FileReport,
    pub problems: Vec<Problem>,
    /// Whether the file is a complete segment whose verifier the next file of
    /// the sequence may continue.
    pub complete: bool,
    pub verifier: Verifier,
}

/// The empty report of `f` (nothing verified yet).
pub(super) fn empty_report(f: &FileMeta) -> FileReport {
    FileReport {
        name: f.name.to_owned(),
        timeline: f.tli,
        segno: f.segno,
        partial: f.partial,
        size: f.size,
        records: 0,
        in_sequence: f.in_sequence,
        valid_end: None,
        end_reason: None,
        verified_end: None,
    }
}

/// A compressed file that does not decode at all.
pub(super) fn undecodable(f: &FileMeta, seg_start: Lsn, detail: &str) -> Problem {
    Problem::undecodable(f.name, seg_start, f.compression.method_name(), detail)
}

/// Checks `content` of `f` with `v` (positioned at the segment start).
pub(super) fn check_file(f: &FileMeta, content: Content, v: Verifier, ctx: &Context) -> Checked {
    let checked = check_bytes(f, &content, v.clone(), ctx, false);
    if !f.partial || checked.problems.is_empty() {
        return checked;
    }
    // A `.partial` whose WAL ends inside a record, then zeros: the record in
    // progress (see `received_part`), when nothing else is wrong.
    let torn = check_bytes(f, &content, v, ctx, true);
    if torn.problems.is_empty() {
        torn
    } else {
        checked
    }
}

/// [`check_file`]; `received_only`: without a `.partial`'s zero padding.
fn check_bytes(
    f: &FileMeta,
    content: &Content,
    mut v: Verifier,
    ctx: &Context,
    received_only: bool,
) -> Checked {
    let seg_size = ctx.segment_size;
    let seg_start = Lsn(f.segno.saturating_mul(seg_size));
    let data = content.bytes;
    let length = data.len() as u64;
    let data = data.get(..(seg_size.min(length) as usize)).unwrap_or(data);
    let complete_size = length == seg_size && content.finished;
    let data = if received_only {
        received_part(data)
    } else {
        data
    };
    let mut report = empty_report(f);
    let mut problems: Vec<Problem> =
        size_problems(f, seg_start, length, content.finished, seg_size)
            .into_iter()
            .collect();

    let mut base = v.records();
    let mut per_file = 0usize;
    let mut suppressed = 0usize;
    let mut offset = 0usize;
    let mut ended: Option<VerifyError> = None;
    let mut resyncing = false;
    loop {
        let chunk = data.get(offset..).unwrap_or(&[]);
        let Err(e) = v.feed(chunk) else { break };
        if f.partial || !complete_size {
            // End of valid WAL in a partial (or truncated) file.
            ended = Some(e);
            break;
        }
        // While resynchronising after a failure, pages that do not verify belong to
        // the same damaged region: not reported again.
        let silent = resyncing && v.records() == 0;
        if !silent {
            if per_file < ctx.max_problems_per_file {
                problems.push(Problem::corrupt(
                    f.name,
                    e.lsn.0.saturating_sub(seg_start.0),
                    &e,
                ));
            } else {
                suppressed += 1;
            }
            per_file += 1;
        }
        resyncing = true;
        if report.valid_end.is_none() {
            report.valid_end = Some(v.verified_end());
            report.end_reason = Some(format!("{}: {}", e.check, e.detail));
        }
        // Resync at the next page after the failure.
        report.records += v.records().saturating_sub(base);
        base = 0;
        let next_page = if e.check == Check::SwitchTail {
            // The tail runs to the segment end.
            seg_start.0 + seg_size
        } else {
            (e.lsn.0 / u64::from(ctx.block_size) + 1) * u64::from(ctx.block_size)
        };
        let next_off = next_page.saturating_sub(seg_start.0);
        if next_off >= data.len() as u64 {
            v = Verifier::at_page(ctx.config(f.tli), Lsn(seg_start.0 + data.len() as u64));
            break;
        }
        offset = next_off as usize;
        v = Verifier::at_page(ctx.config(f.tli), Lsn(next_page));
    }
    report.records += v.records().saturating_sub(base);
    // A verifier restarted after a failure that verified nothing has no end to show.
    if per_file == 0 || v.records() > 0 {
        report.verified_end = Some(v.verified_end());
    }
    if suppressed > 0 {
        problems.push(Problem::more_not_shown(f.name, suppressed));
    }
    if let Some(e) = ended {
        problems.extend(end_of_valid_wal(f, &mut report, &v, &e, data, seg_start));
    } else if f.partial {
        report.valid_end = Some(v.verified_end());
        if v.in_record() {
            report.end_reason = Some("file ends inside a record".into());
        }
    }
    let complete = complete_size && !f.partial;
    Checked {
        report,
        problems,
        complete,
        verifier: v,
    }
}

/// A `.partial` padded with zeros, without the padding (from its last
/// non-zero byte on). Its WAL ends where the receiver stopped, often inside
/// a record (a server flushes whole pages, and a receiver may stop
/// anywhere), as a compressed `.partial`, which is not padded, may. The
/// record cut there is the one in progress, not damage, but the zeros after
/// it make its CRC or the next page's header fail. Only a fallback: a
/// complete record may end in zero bytes too.
fn received_part(data: &[u8]) -> &[u8] {
    let end = crate::archive::check::written_len(data).min(data.len());
    &data[..end]
}

/// A file's size (decompressed) against the segment size.
fn size_problems(
    f: &FileMeta,
    seg_start: Lsn,
    length: u64,
    finished: bool,
    seg_size: u64,
) -> Option<Problem> {
    let compressed = f.compression != Compression::None;
    if length == 0 {
        return Some(Problem::empty(f.name, f.partial, seg_start, compressed));
    }
    if f.partial || (length == seg_size && finished) {
        return None;
    }
    let at = length.min(seg_size);
    let message = if !compressed {
        format!(
            "file has {length} bytes, expected {seg_size}: {}",
            if length < seg_size {
                "truncated segment"
            } else {
                "too long"
            }
        )
    } else if length != seg_size {
        format!(
            "decompresses to {length} bytes, expected {seg_size}: {}",
            if length < seg_size {
                "truncated segment"
            } else {
                "too long"
            }
        )
    } else {
        format!(
            "{} stream does not end properly (no trailer): truncated file",
            f.compression.method_name()
        )
    };
    Some(Problem::wrong_size(
        f.name,
        at,
        Lsn(seg_start.0 + at),
        message,
    ))
}

/// Where the valid WAL of a `.partial` (or truncated) file ends: zeros after
/// it are the normal end of WAL; anything else is a problem, except stale
/// pages of a recycled segment (wrong page address), a warning.
fn end_of_valid_wal(
    f: &FileMeta,
    report: &mut FileReport,
    v: &Verifier,
    e: &VerifyError,
    data: &[u8],
    seg_start: Lsn,
) -> Option<Problem> {
    let end = v.verified_end();
    let off = end.0.saturating_sub(seg_start.0) as usize;
    let tail = data.get(off..).unwrap_or(&[]);
    report.valid_end = Some(end);
    report.end_reason = Some(format!("{}: {}", e.check, e.detail));
    if tail.iter().all(|&b| b == 0) {
        return None;
    }
    Some(Problem::after_valid_end(
        f.name,
        e.lsn.0.saturating_sub(seg_start.0),
        end,
        e,
    ))
}

/// Start of the first record in a file, verified on its own from the segment
/// start (only the first pages are looked at).
pub(super) fn first_record_start(
    data: &[u8],
    tli: TimeLineId,
    segno: SegNo,
    ctx: &Context,
) -> Option<Lsn> {
    let mut v = Verifier::at_segment_start(ctx.config(tli), Lsn(segno * ctx.segment_size));
    for page in data.chunks(ctx.block_size as usize) {
        if v.feed(page).is_err() || v.first_record_start().is_some() {
            break;
        }
    }
    v.first_record_start()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::verify::report::{ProblemKind, Severity};

    const SEG: u64 = 1 << 20;

    fn segment(name: &str) -> Vec<u8> {
        let path = format!("{}/testdata/wal/pg15/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(path).unwrap()
    }

    fn ctx() -> Context {
        let data = segment("000000010000000000000008");
        let h = crate::wal::page::PageHeader::parse(&data).unwrap();
        Context {
            segment_size: SEG,
            block_size: 8192,
            system_id: h.long.map(|l| l.system_id),
            server_major: Some(15),
            max_problems_per_file: 10,
        }
    }

    fn meta(name: &str, segno: SegNo, partial: bool, compression: Compression) -> FileMeta<'_> {
        FileMeta {
            name,
            tli: 1,
            segno,
            partial,
            compression,
            size: 1,
            in_sequence: true,
        }
    }

    fn check(f: &FileMeta, bytes: &[u8], finished: bool) -> Checked {
        let c = ctx();
        let v = Verifier::at_segment_start(c.config(f.tli), Lsn(f.segno * SEG));
        check_file(f, Content { bytes, finished }, v, &c)
    }

    #[test]
    fn a_good_segment_plain_or_decompressed() {
        let data = segment("000000010000000000000008");
        for compression in Compression::ALL {
            let f = meta("x", 8, false, compression);
            let c = check(&f, &data, true);
            assert!(c.problems.is_empty(), "{:?}", c.problems);
            assert!(c.complete, "{:?}", c.report);
            assert!(c.report.records > 0, "{:?}", c.report);
        }
    }

    #[test]
    fn a_compressed_segment_must_be_whole_and_finished() {
        let data = segment("000000010000000000000009");
        let f = meta("000000010000000000000009.gz", 9, false, Compression::Gzip);
        let c = check(&f, &data, false);
        assert!(!c.complete);
        assert_eq!(c.problems[0].kind, ProblemKind::WrongSize);
        assert!(
            c.problems[0]
                .message
                .contains("gzip stream does not end properly"),
            "{:?}",
            c.problems
        );
        let c = check(&f, &data[..500_000], false);
        assert!(c.problems[0]
            .message
            .contains("decompresses to 500000 bytes, expected 1048576: truncated"));
        let mut long = data.clone();
        long.extend_from_slice(&[0; 10]);
        let c = check(&f, &long, true);
        assert!(
            c.problems[0].message.ends_with("too long"),
            "{:?}",
            c.problems
        );
    }

    #[test]
    fn a_padded_partial_may_end_inside_a_record() {
        let data = segment("000000010000000000000008");
        let f = meta(
            "000000010000000000000008.partial",
            8,
            true,
            Compression::None,
        );
        // Cut at a page boundary inside a record (0/837FF0 starts a record
        // that goes on in the next page), and in the middle of a page.
        for (cut, end) in [(0x38000, 0x837FF0), (0x37E3C, 0x837E28)] {
            let mut torn = data.clone();
            torn[cut..].fill(0);
            let c = check(&f, &torn, true);
            assert!(c.problems.is_empty(), "{cut:#x}: {:?}", c.problems);
            assert_eq!(c.report.valid_end, Some(Lsn(end)), "{cut:#x}");
            assert_eq!(
                c.report.end_reason.as_deref(),
                Some("file ends inside a record")
            );
            // The same with a damaged byte before the cut: still an error.
            torn[0x30000 + 5] ^= 0xff;
            let c = check(&f, &torn, true);
            assert!(
                c.problems.iter().any(|p| p.severity == Severity::Error),
                "{cut:#x}: {:?}",
                c.problems
            );
        }
    }

    #[test]
    fn a_compressed_partial_ends_at_its_valid_wal() {
        // pg_receivewal does not pad a compressed .partial: shorter is normal.
        let data = segment("00000002000000000000000D.partial");
        let f = FileMeta {
            tli: 2,
            ..meta(
                "00000002000000000000000D.lz4.partial",
                0xD,
                true,
                Compression::Lz4,
            )
        };
        let c = check(&f, &data[..300_000], false);
        let errors: Vec<_> = c
            .problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .collect();
        assert!(errors.is_empty(), "{errors:?}");
        assert!(c.report.valid_end.is_some());
    }

    #[test]
    fn a_flipped_byte_is_reported_with_its_lsn() {
        let mut data = segment("000000010000000000000008");
        data[100_000] ^= 0x40;
        let f = meta("000000010000000000000008.zst", 8, false, Compression::Zstd);
        let c = check(&f, &data, true);
        let p = c.problems.iter().find(|p| p.kind == ProblemKind::Corrupt);
        let p = p.unwrap_or_else(|| panic!("{:?} {:?}", c.problems, c.report));
        assert_eq!(p.file, "000000010000000000000008.zst");
        assert!(p.lsn.is_some_and(|l| l.0 / SEG == 8), "{p:?}");
    }

    #[test]
    fn empty_files() {
        let c = check(&meta("x", 9, false, Compression::None), &[], true);
        assert_eq!(
            (c.problems[0].kind, c.problems[0].severity),
            (ProblemKind::NotWal, Severity::Error)
        );
        let c = check(&meta("x", 9, true, Compression::Gzip), &[], false);
        assert_eq!(
            (c.problems[0].kind, c.problems[0].severity),
            (ProblemKind::WrongSize, Severity::Warning)
        );
    }

    #[test]
    fn first_record() {
        let data = segment("000000010000000000000008");
        let start = first_record_start(&data, 1, 8, &ctx()).unwrap();
        assert_eq!(start.0 / SEG, 8);
        // Segment 9 is one record's continuation: no record starts in it.
        assert_eq!(
            first_record_start(&segment("000000010000000000000009"), 1, 9, &ctx()),
            None
        );
    }
}
