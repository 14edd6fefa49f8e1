//! The archive as the walsender sees it (IO): the [`Catalog`] (system
//! identifier, major, sizes, newest timeline, its history and verified end)
//! and the WAL of one segment, read through `walrcv restore`'s own reader
//! ([`read_segment`]): the same plan, the same checks, every `-Z`
//! compression, a `.partial` up to its last valid record, and never a
//! set-aside divergent copy. WAL of an ancestor timeline's file past that
//! timeline's switch point is never served as the new timeline's.
//!
//! Memory: one segment per client at a time, memory-mapped when stored
//! uncompressed (page cache, shared between clients), decoded when
//! compressed; never more however far behind the client is.

use std::path::{Path, PathBuf};

use crate::archive::inspect::read_prefix;
use crate::archive::names::{ArchiveName, SegmentName};
use crate::archive::{ArchiveDir, ArchiveError};
use crate::lsn::{segment_start_lsn, wal_file_name, Lsn, SegNo, TimeLineId};
use crate::tools::restore::{read_segment, RestoreError, SegmentBytes};
use crate::wal::history::{parse_history, timeline_range, HistoryEntry};
use crate::wal::page::{major_for_magic, PageHeader, LONG_HEADER_SIZE};

use super::walsender::{switch_out_of, Catalog};

/// Why the archive cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("the archive \"{0}\" holds no WAL segment with a valid long page header yet")]
    Empty(PathBuf),
    #[error("archive \"{}\": {source}", .dir.display())]
    Archive { dir: PathBuf, source: ArchiveError },
    #[error("the history file of timeline {0} is missing or does not parse: {1}")]
    History(TimeLineId, String),
    #[error(transparent)]
    Read(#[from] RestoreError),
    #[error("the WAL of \"{file}\" is from PostgreSQL page magic {magic:#06x}, which walrcv does not know")]
    UnknownMagic { file: String, magic: u16 },
}

/// Identity and sizes from the first segment with a valid long header.
fn identity(dir: &Path) -> Result<(u64, u32, u64, u32), SourceError> {
    let archive_err = |e| SourceError::Archive {
        dir: dir.to_owned(),
        source: ArchiveError::io(dir, e),
    };
    for entry in std::fs::read_dir(dir).map_err(archive_err)? {
        let entry = entry.map_err(archive_err)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let ArchiveName::Segment { compression, .. } = ArchiveName::classify(name) else {
            continue;
        };
        let Ok(bytes) = read_prefix(&entry.path(), compression, LONG_HEADER_SIZE) else {
            continue;
        };
        let Some(header) = PageHeader::parse(&bytes) else {
            continue;
        };
        let Some(long) = header.long else { continue };
        let major = major_for_magic(header.magic).ok_or_else(|| SourceError::UnknownMagic {
            file: name.to_owned(),
            magic: header.magic,
        })?;
        return Ok((
            long.system_id,
            major,
            u64::from(long.segment_size),
            long.block_size,
        ));
    }
    Err(SourceError::Empty(dir.to_owned()))
}

/// The history of `tli` from the archive (empty for timeline 1).
pub fn history(dir: &Path, tli: TimeLineId) -> Result<Vec<HistoryEntry>, SourceError> {
    if tli == 1 {
        return Ok(Vec::new());
    }
    let content = history_file(dir, tli)
        .ok_or_else(|| SourceError::History(tli, "no history file".into()))?;
    parse_history(&content).map_err(|e| SourceError::History(tli, e.to_string()))
}

/// The raw content of `tli`'s history file, as TIMELINE_HISTORY sends it.
pub fn history_file(dir: &Path, tli: TimeLineId) -> Option<Vec<u8>> {
    ArchiveDir::for_reading(dir).ok()?.read_history(tli)
}

/// Reads the catalog. `live_end`: the verified and flushed end published
/// by a receiver in the same process (`walrcv stream --serve`), which the
/// served end never passes. `complete_only`: the end of the complete
/// segment files only (`stream --serve` before the receiver's first report:
/// a `.partial` an earlier run left may hold WAL never fsynced, even when it
/// is valid to the segment's end).
pub fn catalog(
    dir: &Path,
    live_end: Option<(TimeLineId, Lsn)>,
    complete_only: bool,
) -> Result<Catalog, SourceError> {
    let (system_id, major, segment_size, block_size) = identity(dir)?;
    let scan =
        ArchiveDir::scan_unlocked(dir, segment_size).map_err(|source| SourceError::Archive {
            dir: dir.to_owned(),
            source,
        })?;
    let newest_segment_tli = scan.segments.iter().map(|s| s.timeline).max().unwrap_or(1);
    let timeline = scan
        .histories
        .iter()
        .copied()
        .chain([newest_segment_tli])
        .max()
        .unwrap_or(1);
    let history = history(dir, timeline)?;
    let mut catalog = Catalog {
        system_id,
        major,
        segment_size,
        block_size,
        timeline,
        end: Lsn(0),
        history,
    };
    catalog.end = served_end(dir, &catalog, &scan.segments, complete_only)?;
    if let Some((tli, end)) = live_end {
        if tli == catalog.timeline {
            catalog.end = catalog.end.min(end);
        } else if tli < catalog.timeline {
            // The receiver stored the new timeline's history but has not
            // reported any of its WAL flushed yet: nothing past the switch.
            let switch_in = catalog.history.last().map_or(Lsn(0), |e| e.switchpoint);
            catalog.end = catalog.end.min(switch_in);
        }
    }
    Ok(catalog)
}

/// Where timeline `tli` ends, if the archive now holds a newer timeline
/// whose history forks from it: `(switch point, next timeline)`. A client
/// streaming `tli` as the current timeline is then moved on, as
/// PostgreSQL's cascading walsender moves its standbys when its own
/// server switches timeline.
pub fn timeline_end(dir: &Path, tli: TimeLineId) -> Result<Option<(Lsn, TimeLineId)>, SourceError> {
    let Some(newest) = newest_history_after(dir, tli)? else {
        return Ok(None);
    };
    Ok(switch_out_of(&history(dir, newest)?, newest, tli))
}

/// The newest timeline after `tli` with a history file: names only (no
/// stat, no segment listing), as it runs at each wake of a caught-up client.
fn newest_history_after(dir: &Path, tli: TimeLineId) -> Result<Option<TimeLineId>, SourceError> {
    let archive_err = |e| SourceError::Archive {
        dir: dir.to_owned(),
        source: ArchiveError::io(dir, e),
    };
    let mut newest = None;
    for entry in std::fs::read_dir(dir).map_err(archive_err)? {
        let entry = entry.map_err(archive_err)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let ArchiveName::History { timeline, .. } = ArchiveName::classify(name) {
            if timeline > tli {
                newest = newest.max(Some(timeline));
            }
        }
    }
    Ok(newest)
}

/// The end of the verified WAL on the catalog's timeline.
fn served_end(
    dir: &Path,
    c: &Catalog,
    segments: &[crate::archive::SegmentFile],
    complete_only: bool,
) -> Result<Lsn, SourceError> {
    let switch_in = c.history.last().map_or(Lsn(0), |e| e.switchpoint);
    let Some(newest) = segments
        .iter()
        .filter(|s| s.timeline == c.timeline)
        .map(|s| s.segno)
        .max()
    else {
        return Ok(switch_in);
    };
    let mut reader = SegmentReader::default();
    let end = match reader.load(dir, c, c.timeline, newest)? {
        Some(loaded) if complete_only && !loaded.complete => loaded.start,
        Some(loaded) => loaded.end,
        None => segment_start_lsn(newest, c.segment_size),
    };
    Ok(end.max(switch_in))
}

/// One segment's verified WAL, loaded.
pub struct Loaded {
    pub segno: SegNo,
    /// The timeline the stream is on (not necessarily the file's).
    pub timeline: TimeLineId,
    pub start: Lsn,
    /// End of what may be sent from it.
    pub end: Lsn,
    /// Whether the whole segment is there in a complete segment file (no
    /// need to read it again). A `.partial` never is, even with WAL to its
    /// end: it may not have been fsynced.
    pub complete: bool,
    /// The timeline of the file read (`timeline` or an ancestor's).
    file_timeline: TimeLineId,
    bytes: SegmentBytes,
}

impl Loaded {
    /// WAL from `from` to `to` (both inside `[start, end]`).
    pub fn slice(&self, from: Lsn, to: Lsn) -> &[u8] {
        let a = (from.0 - self.start.0) as usize;
        let b = (to.0 - self.start.0) as usize;
        self.bytes.valid().get(a..b).unwrap_or(&[])
    }
}

/// A client's segment reader: holds at most one segment.
#[derive(Default)]
pub struct SegmentReader {
    pub current: Option<Loaded>,
}

impl SegmentReader {
    /// Loads segment `segno` of timeline `tli`'s history from the file of
    /// `tli` or, failing that, of the ancestor the segment belongs to.
    /// `None`: the archive has no file for it (yet).
    pub fn load(
        &mut self,
        dir: &Path,
        c: &Catalog,
        tli: TimeLineId,
        segno: SegNo,
    ) -> Result<Option<&Loaded>, SourceError> {
        let start = segment_start_lsn(segno, c.segment_size);
        let seg_end = Lsn(start.0 + c.segment_size);
        if self.refresh(tli, segno, c.segment_size) {
            return Ok(self.current.as_ref());
        }
        // Candidate file timelines, newest first: `tli` itself, then its
        // ancestors whose range overlaps the segment.
        let mut candidates = vec![tli];
        for e in c.history.iter().rev() {
            if e.parent < tli {
                candidates.push(e.parent);
            }
        }
        for file_tli in candidates {
            let Some((from, until)) = timeline_range(&c.history, c.timeline, file_tli) else {
                continue;
            };
            if from >= seg_end || until.is_some_and(|u| u <= start) && file_tli != tli {
                continue;
            }
            let Some(name) = SegmentName::parse(&wal_file_name(file_tli, segno, c.segment_size))
            else {
                continue;
            };
            let Some(bytes) = read_segment(dir, &name)? else {
                continue;
            };
            let mut end = Lsn(start.0 + bytes.valid().len() as u64);
            // An ancestor's file past its switch point is a divergent tail.
            if file_tli != tli {
                if let Some(u) = until {
                    end = end.min(u);
                }
            }
            let complete = end == seg_end && !bytes.from_partial();
            self.current = Some(Loaded {
                segno,
                timeline: tli,
                start,
                end,
                complete,
                file_timeline: file_tli,
                bytes,
            });
            return Ok(self.current.as_ref());
        }
        self.current = None;
        Ok(None)
    }

    /// The segment held, still a `.partial` of the stream's own timeline,
    /// brought up to date by verifying only what was appended to it
    /// ([`SegmentBytes::refresh`]): a caught-up client wakes at every flush,
    /// and reading the whole `.partial` again each time cost a segment of
    /// CRC per flush and client. `false`: load it as a new segment.
    ///
    /// Cheap enough for an async task to call in place (one `stat`, the
    /// CRC of the new bytes, already in the page cache), sparing a hand-off
    /// to a blocking thread at every flush.
    pub fn refresh(&mut self, tli: TimeLineId, segno: SegNo, segment_size: u64) -> bool {
        let Some(l) = self.current.as_mut() else {
            return false;
        };
        let seg_end = Lsn(l.start.0.saturating_add(segment_size));
        // An ancestor's file is cut at its switch point: never resumed.
        if l.segno != segno || l.timeline != tli || l.file_timeline != tli || l.complete {
            return false;
        }
        if !l.bytes.refresh() {
            return false;
        }
        l.end = Lsn(l.start.0 + l.bytes.valid().len() as u64);
        l.complete = l.end == seg_end && !l.bytes.from_partial();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `.partial` whose valid WAL fills the segment (its writer died
    /// after the last write, before the fsync and the rename) is not a
    /// complete segment: before the receiver's first report, nothing of it.
    #[test]
    fn a_full_partial_is_not_a_complete_segment() {
        let dir = tempfile::tempdir().unwrap();
        let fixture = format!(
            "{}/testdata/wal/pg15/000000010000000000000008",
            env!("CARGO_MANIFEST_DIR")
        );
        let partial = dir.path().join("000000010000000000000008.partial");
        std::fs::copy(&fixture, &partial).unwrap();
        let seg = 1u64 << 20;
        let all = catalog(dir.path(), None, false).unwrap();
        assert_eq!(all.end, Lsn(9 * seg), "the verified end");
        let complete = catalog(dir.path(), None, true).unwrap();
        assert_eq!(complete.end, Lsn(8 * seg), "no complete segment yet");
        let mut reader = SegmentReader::default();
        let loaded = reader.load(dir.path(), &all, 1, 8).unwrap().unwrap();
        assert_eq!(loaded.end, Lsn(9 * seg));
        assert!(!loaded.complete, "a .partial is never complete");
        // The same WAL under the segment's own name is complete.
        std::fs::rename(&partial, dir.path().join("000000010000000000000008")).unwrap();
        let loaded = reader.load(dir.path(), &all, 1, 8).unwrap().unwrap();
        assert!(loaded.complete);
        assert_eq!(catalog(dir.path(), None, true).unwrap().end, Lsn(9 * seg));
    }

    #[test]
    fn timeline_end_from_the_newest_history_forking_from_the_timeline() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(timeline_end(dir.path(), 1).unwrap(), None);
        std::fs::write(
            dir.path().join("00000002.history"),
            "1\t0/3000000\tno recovery target specified\n",
        )
        .unwrap();
        assert_eq!(
            timeline_end(dir.path(), 1).unwrap(),
            Some((Lsn(0x300_0000), 2))
        );
        std::fs::write(
            dir.path().join("00000004.history"),
            "1\t0/3000000\tno recovery target specified\n\
             2\t0/5000028\tno recovery target specified\n",
        )
        .unwrap();
        // Timeline 3 (no history file here) is not in 4's history: skipped.
        assert_eq!(
            timeline_end(dir.path(), 1).unwrap(),
            Some((Lsn(0x300_0000), 2))
        );
        assert_eq!(
            timeline_end(dir.path(), 2).unwrap(),
            Some((Lsn(0x500_0028), 4))
        );
        assert_eq!(timeline_end(dir.path(), 4).unwrap(), None);
        // A timeline the newest history does not go through has no end.
        assert_eq!(timeline_end(dir.path(), 3).unwrap(), None);
    }
}
