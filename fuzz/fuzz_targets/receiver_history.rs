//! The timeline history path of the receiver, with a hostile server and an
//! arbitrary archive: where to start, the `TIMELINE_HISTORY` reply (file name
//! and content) stored through [`ArchiveDir::write_history`], the history parsed,
//! the end-of-timeline result set, and the timeline lookups at arbitrary start
//! points and timelines.
//!
//! Properties:
//! - nothing panics;
//! - a history file is stored only under the canonical name of the timeline asked
//!   for, with exactly the bytes received, and file names round-trip;
//! - the archive's start point is a segment start on the newest segment's timeline;
//! - for a history that fits its timeline, every LSN belongs to exactly the
//!   timeline whose range (`timeline_range`) contains it, and `switchpoint_into`
//!   agrees with that range;
//! - a next-timeline reply that is accepted names a timeline above 0.
//!
//! Input layout: 4 bytes timeline (LE), 8 bytes LSN (LE), 1 byte segment size
//! (1 MB shifted left by 0..=10) and flags, then fields separated by `0xFF`:
//! history file name, history content, next timeline, next start LSN, and
//! archive segments (13 bytes each: timeline, log, seg as LE u32 and a partial flag).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use walrcv::archive::compress_spec::CompressionSpec;
use walrcv::archive::names::Compression;
use walrcv::archive::{ArchiveDir, Scan, SegmentFile};
use walrcv::lsn::{history_file_name, parse_history_file_name, parse_wal_file_name, Lsn};
use walrcv::pgwire::QueryResult;
use walrcv::replication::parse_next_timeline;
use walrcv::wal::history::{
    check_history_for, parse_history, switchpoint_into, timeline_of, timeline_range,
};

/// One scratch archive per fuzzing process (the lock is held for its lifetime).
fn archive() -> &'static (PathBuf, ArchiveDir) {
    static ARCHIVE: OnceLock<(PathBuf, ArchiveDir)> = OnceLock::new();
    ARCHIVE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!(
            "walrcv-fuzz-receiver-history-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).expect("scratch archive directory");
        let dir = ArchiveDir::open(&path).expect("scratch archive");
        (path, dir)
    })
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn text_cell(b: &[u8]) -> Option<Bytes> {
    // An empty field stands for NULL.
    (!b.is_empty()).then(|| Bytes::copy_from_slice(b))
}

/// The archive's segments: each 13-byte group names a file as the scan would
/// find it (only names the scan accepts are kept).
fn scan_of(spec: &[u8], segment_size: u64) -> Scan {
    let mut scan = Scan::default();
    for g in spec.chunks_exact(13) {
        let name = format!(
            "{:08X}{:08X}{:08X}",
            u32_at(g, 0),
            u32_at(g, 4),
            u32_at(g, 8)
        );
        if let Some((timeline, segno)) = parse_wal_file_name(&name, segment_size) {
            scan.segments.push(SegmentFile {
                timeline,
                segno,
                partial: g[12] & 1 != 0,
                size: 0,
                path: PathBuf::from(name),
                // The start point does not depend on how a file is stored.
                compression: Compression::ALL[usize::from(g[12] >> 1) % Compression::ALL.len()],
            });
        }
    }
    scan
}

fn check_start_point(scan: &Scan, segment_size: u64) {
    let Some(start) = scan.streaming_start(segment_size) else {
        assert!(scan.segments.is_empty());
        return;
    };
    let newest = scan.newest().expect("a start point comes from a segment");
    assert_eq!(start.timeline, newest.timeline);
    if start.lsn == Lsn(u64::MAX) {
        // After a complete last segment of the LSN space the start saturates
        // (a server could not have produced that archive).
        assert!(!newest.partial);
        return;
    }
    assert_eq!(start.lsn.segment_offset(segment_size), 0);
    let next = u64::from(!newest.partial);
    assert_eq!(start.lsn.segment_number(segment_size), newest.segno + next);
}

/// Stores the reply as the receiver does and checks what landed on disk.
fn check_store(timeline: u32, name_cell: &[u8], content: &[u8]) {
    let reply = QueryResult {
        columns: vec!["filename".into(), "content".into()],
        rows: vec![vec![
            text_cell(name_cell),
            Some(Bytes::copy_from_slice(content)),
        ]],
    };
    let Some(name) = reply.text(0, 0) else {
        return;
    };
    let (path, dir) = archive();
    match dir.write_history(timeline, &name, content, false, CompressionSpec::NONE) {
        Ok(()) => {
            assert_eq!(name, history_file_name(timeline));
            assert!(dir.has_history(timeline));
            let stored = std::fs::read(path.join(&name)).expect("stored history");
            assert_eq!(stored, content);
            std::fs::remove_file(path.join(&name)).expect("remove stored history");
        }
        Err(_) => assert!(timeline == 0 || name != history_file_name(timeline)),
    }
    if let Some(t) = parse_history_file_name(&name) {
        assert_eq!(history_file_name(t), name);
    }
}

fn check_lookups(timeline: u32, content: &[u8], lsn: Lsn) {
    let Ok(entries) = parse_history(content) else {
        return;
    };
    if check_history_for(timeline, &entries).is_err() {
        // Refused by the receiver and by verify: only the lookups must not panic.
        let _ = timeline_of(&entries, timeline, lsn);
        let _ = timeline_range(&entries, timeline, timeline);
        return;
    }
    let owner = timeline_of(&entries, timeline, lsn);
    let (start, end) = timeline_range(&entries, timeline, owner)
        .unwrap_or_else(|| panic!("timeline {owner} of {lsn} has no range"));
    assert!(
        start <= lsn,
        "{lsn} before the start {start} of timeline {owner}"
    );
    assert!(
        end.is_none_or(|e| lsn < e),
        "{lsn} after the end of timeline {owner}"
    );
    for t in entries
        .iter()
        .map(|e| e.parent)
        .chain([timeline, lsn.0 as u32])
    {
        let range = timeline_range(&entries, timeline, t);
        let into = switchpoint_into(&entries, timeline, t);
        assert_eq!(into, range.map(|(s, _)| s).filter(|s| s.0 != 0));
        if let Some((s, Some(e))) = range {
            assert!(s <= e, "timeline {t} ends at {e} before it starts at {s}");
        }
    }
}

fn check_next_timeline(tli_cell: &[u8], lsn_cell: &[u8], shape: u8) {
    let mut row = vec![text_cell(tli_cell), text_cell(lsn_cell)];
    row.truncate(usize::from(shape % 3));
    let rows = if shape & 4 != 0 {
        vec![row.clone(), row]
    } else {
        vec![row]
    };
    let reply = QueryResult {
        columns: vec!["next_tli".into(), "next_tli_startpos".into()],
        rows,
    };
    if let Ok((tli, lsn)) = parse_next_timeline(&reply) {
        assert!(tli > 0);
        assert_eq!(lsn.to_string().parse::<Lsn>(), Ok(lsn));
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 13 {
        return;
    }
    let (head, rest) = data.split_at(13);
    let timeline = u32_at(head, 0);
    let mut lsn_bytes = [0u8; 8];
    lsn_bytes.copy_from_slice(&head[4..12]);
    let lsn = Lsn(u64::from_le_bytes(lsn_bytes));
    let segment_size = 1u64 << (20 + u32::from(head[12] % 11));
    let mut fields = rest.split(|&b| b == 0xFF);
    let name = fields.next().unwrap_or(&[]);
    let content = fields.next().unwrap_or(&[]);
    let next_tli = fields.next().unwrap_or(&[]);
    let next_lsn = fields.next().unwrap_or(&[]);
    let segments = fields.next().unwrap_or(&[]);

    check_start_point(&scan_of(segments, segment_size), segment_size);
    check_store(timeline, name, content);
    check_lookups(timeline, content, lsn);
    check_next_timeline(next_tli, next_lsn, head[12] >> 4);
});
