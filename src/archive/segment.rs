//! The segment writer: one open `NAME.partial`, pre-padded with zeros to the
//! segment size (through a `.tmp` name, so a short file never carries a WAL name),
//! written with `pwrite`, made durable with `fdatasync`, and renamed to `NAME`
//! once complete and fsynced.

use std::path::{Path, PathBuf};

use super::ArchiveError;
use crate::lsn::{SegNo, TimeLineId};

#[derive(Debug)]
pub struct SegmentWriter {
    path: PathBuf,
}

impl SegmentWriter {
    /// Opens the segment for writing from offset 0: reuses an existing
    /// `NAME.partial` of full size (fsyncing it first, in case of an earlier
    /// crash), or creates a new zero-padded one. With `sync`, the new file and the
    /// directory are fsynced before it is used.
    pub fn open(dir: &Path, timeline: TimeLineId, segno: SegNo, segment_size: u64, sync: bool) -> Result<Self, ArchiveError> {
        let _ = (dir, timeline, segno, segment_size, sync);
        todo!("helper D")
    }

    /// Writes `data` at `offset` inside the segment (offset + len ≤ segment size).
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), ArchiveError> {
        let _ = (offset, data);
        todo!("helper D")
    }

    /// fdatasync (no-op without `sync`). An error poisons the writer: it is never
    /// retried on this descriptor and every later call fails.
    pub fn sync(&mut self) -> Result<(), ArchiveError> {
        todo!("helper D")
    }

    /// The segment is complete: fsync, rename `NAME.partial` to `NAME`, fsync the
    /// directory.
    pub fn complete(self) -> Result<PathBuf, ArchiveError> {
        todo!("helper D")
    }

    /// Stop writing but keep the `.partial` (fsynced when `sync`).
    pub fn close_partial(self) -> Result<(), ArchiveError> {
        todo!("helper D")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn timeline(&self) -> TimeLineId {
        todo!("helper D")
    }
    pub fn segno(&self) -> SegNo {
        todo!("helper D")
    }
}
