//! Opening and locking the archive directory, scanning its files, and choosing
//! where streaming starts (pg_receivewal's `FindStreamingStart` rules).

use std::path::{Path, PathBuf};

use super::ArchiveError;
use crate::lsn::{Lsn, SegNo, TimeLineId};

/// An open, locked archive directory. The lock (flock on the directory itself,
/// so no extra file appears in it) is held until this value is dropped.
#[derive(Debug)]
pub struct ArchiveDir {
    path: PathBuf,
}

/// A segment file found by the scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFile {
    pub timeline: TimeLineId,
    pub segno: SegNo,
    pub partial: bool,
    pub size: u64,
    pub path: PathBuf,
}

/// What the scan found.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// Segment files (complete and `.partial`), sorted by (segno, timeline, complete-last).
    pub segments: Vec<SegmentFile>,
    /// Timelines with a `.history` file.
    pub histories: Vec<TimeLineId>,
}

/// Where to start streaming, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartPoint {
    pub lsn: Lsn,
    pub timeline: TimeLineId,
}

impl ArchiveDir {
    /// Opens `path` (which must exist and be a directory) and takes the lock.
    /// A second opener gets [`ArchiveError::Locked`].
    pub fn open(path: &Path) -> Result<Self, ArchiveError> {
        let _ = path;
        todo!("helper D")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lists segment and history files. Complete segments must be exactly
    /// `segment_size` bytes and `.partial` files 0 or `segment_size` bytes:
    /// anything else is [`ArchiveError::WrongSize`].
    pub fn scan(&self, segment_size: u64) -> Result<Scan, ArchiveError> {
        let _ = segment_size;
        todo!("helper D")
    }

    /// Checks that the WAL already in the directory (the long page header of the
    /// newest non-empty segment file) belongs to `system_id` with `segment_size`.
    pub fn check_identity(&self, scan: &Scan, system_id: u64, segment_size: u64) -> Result<(), ArchiveError> {
        let _ = (scan, system_id, segment_size);
        todo!("helper D")
    }

    /// Whether `TTTTTTTT.history` is present.
    pub fn has_history(&self, timeline: TimeLineId) -> bool {
        let _ = timeline;
        todo!("helper D")
    }

    /// Stores a history file received from the server, after checking that
    /// `name_from_server` is exactly the expected `TTTTTTTT.history` for `timeline`.
    /// Written through `NAME.tmp` and a durable rename (no fsync if `!sync`).
    pub fn write_history(&self, timeline: TimeLineId, name_from_server: &str, content: &[u8], sync: bool) -> Result<(), ArchiveError> {
        let _ = (timeline, name_from_server, content, sync);
        todo!("helper D")
    }
}

impl Scan {
    /// pg_receivewal's rule: after the newest complete segment, or at the start of
    /// the newest `.partial`; highest segno, then highest timeline, complete beats
    /// partial. `None` when the directory holds no segment.
    pub fn streaming_start(&self, segment_size: u64) -> Option<StartPoint> {
        let _ = segment_size;
        todo!("helper D")
    }
}
