//! What a scan of the archive found: its segment files ([`SegmentFile`]),
//! the whole listing ([`Scan`]) and where to start streaming ([`StartPoint`]).
//! Plain data: [`super::scan`] builds it, [`super::taint`] plans over it
//! and the scan applies the plan, so both depend on this file and not on
//! each other.

use std::path::PathBuf;

use super::names::Compression;
use crate::lsn::{segment_start_lsn, Lsn, SegNo, TimeLineId};

/// A segment file found by the scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFile {
    pub timeline: TimeLineId,
    pub segno: SegNo,
    pub partial: bool,
    /// Size on disk (compressed for a compressed file).
    pub size: u64,
    pub path: PathBuf,
    /// How its bytes are stored.
    pub compression: Compression,
}

/// What the scan found.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// Segment files (complete and `.partial`), sorted by (segno, timeline, complete-last).
    pub segments: Vec<SegmentFile>,
    /// Timelines with a `.history` file.
    pub histories: Vec<TimeLineId>,
    /// Where to start instead of pg_receivewal's rule: a segment whose fsync
    /// failed is streamed again (see [`super::taint`]).
    pub restream_from: Option<StartPoint>,
}

/// Where to start streaming, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartPoint {
    pub lsn: Lsn,
    pub timeline: TimeLineId,
}

impl Scan {
    /// pg_receivewal's rule: after the newest complete segment, or at the start of
    /// the newest `.partial`; highest segno, then highest timeline, complete beats
    /// partial. `None` when the directory holds no segment.
    pub fn streaming_start(&self, segment_size: u64) -> Option<StartPoint> {
        if let Some(start) = self.restream_from {
            return Some(start);
        }
        let best = self.newest()?;
        // A zero-byte partial (e.g. from `barman receive-wal --reset`) counts as
        // a partial: start at the beginning of that segment.
        let segno = if best.partial {
            best.segno
        } else {
            best.segno.saturating_add(1)
        };
        Some(StartPoint {
            lsn: segment_start_lsn(segno, segment_size),
            timeline: best.timeline,
        })
    }

    /// The newest segment file by pg_receivewal's ordering (the one
    /// [`Scan::streaming_start`] is derived from).
    pub fn newest(&self) -> Option<&SegmentFile> {
        self.segments
            .iter()
            .max_by_key(|s| (s.segno, s.timeline, !s.partial))
    }
}
