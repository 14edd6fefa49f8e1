//! Divergent tails: WAL the archive holds on a timeline past the point where
//! the server's history left that timeline (the old primary sent it, the
//! promoted standby never had it).
//!
//! Such WAL is not part of the history that continues, so it must never be
//! restored into it, streamed over, or taken as a start point; it may also be
//! the only copy of transactions a DBA wants to look at, so it is never
//! deleted either. Each segment file holding some of it is renamed to
//! `NAME.divergent.tmp` ([`super::names::ArchiveName::Divergent`]): the name
//! keeps the original (so `pg_waldump` works on a copy renamed back) and ends
//! in `.tmp`, which Barman's archiver ignores. The decision itself is
//! [`crate::receiver::lineage::decide`]; this module measures where the
//! archive's WAL ends and does the renames.
//!
//! Where the WAL in a `.partial` ends is where its data ends: walrcv and
//! pg_receivewal pre-pad a `.partial` with zeros, and whatever WAL was written
//! past a switch point starts with a non-zero byte (a record's length or a
//! page header's magic), so the last non-zero byte bounds what was received.

use std::path::{Path, PathBuf};

use super::durable::{self, Site};
use super::inspect::read_prefix;
use super::names::divergent_file_name;
use super::{ArchiveDir, ArchiveError, Scan, SegmentFile};
use crate::lsn::{segment_start_lsn, Lsn, TimeLineId};

/// Where the archive's WAL ends: its newest timeline and the end of the data
/// on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalEnd {
    pub timeline: TimeLineId,
    pub end: Lsn,
}

/// One file set aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    pub from: PathBuf,
    pub to: PathBuf,
}

/// The offset just past the last non-zero byte of `bytes` (0 when all are
/// zero): where the data written into a zero-padded `.partial` ends.
pub fn end_of_data(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
}

impl ArchiveDir {
    /// The end of the archive's newest WAL (pg_receivewal's ordering, as the
    /// start point): a complete segment ends at its end, a `.partial` where
    /// its data ends. `None` for an archive without segments. Blocking.
    pub fn wal_end(&self, scan: &Scan, segment_size: u64) -> Result<Option<WalEnd>, ArchiveError> {
        scan.newest()
            .map(|newest| end_of_file(newest, segment_size))
            .transpose()
    }

    /// The end of the archive's WAL on `timeline` (its newest file of that
    /// timeline, measured as in [`ArchiveDir::wal_end`]): an older timeline
    /// may hold WAL past the switch point out of it. `None` without a file of
    /// that timeline. Blocking.
    pub fn wal_end_on(
        &self,
        scan: &Scan,
        timeline: TimeLineId,
        segment_size: u64,
    ) -> Result<Option<WalEnd>, ArchiveError> {
        scan.segments
            .iter()
            .filter(|f| f.timeline == timeline)
            .max_by_key(|f| (f.segno, !f.partial))
            .map(|newest| end_of_file(newest, segment_size))
            .transpose()
    }

    /// Sets aside every segment file of `timeline` that holds WAL at or past
    /// `switchpoint` (the segment holding it, and all later ones), newest
    /// first so that an interruption leaves the archive's end still past the
    /// switch point (the next start does the rest). Never overwrites: an
    /// existing target is an error. Blocking; fsyncs the directory once per
    /// rename when `sync`.
    pub fn set_aside_divergent(
        &self,
        scan: &Scan,
        timeline: TimeLineId,
        switchpoint: Lsn,
        segment_size: u64,
        sync: bool,
    ) -> Result<Vec<SetAside>, ArchiveError> {
        let first = switchpoint.segment_number(segment_size);
        let mut files: Vec<_> = scan
            .segments
            .iter()
            .filter(|f| f.timeline == timeline && f.segno >= first)
            .collect();
        files.sort_by_key(|f| std::cmp::Reverse((f.segno, !f.partial)));
        let mut moved = Vec::with_capacity(files.len());
        for file in files {
            let to = aside_path(&file.path)?;
            if std::fs::symlink_metadata(&to).is_ok() {
                return Err(ArchiveError::io(
                    &to,
                    std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "a divergent file of that name is already set aside",
                    ),
                ));
            }
            if sync {
                durable::durable_rename(&file.path, &to, Site::Divergent)?;
            } else {
                durable::rename(&file.path, &to, Site::Divergent)?;
            }
            self.forget_known(&file.path);
            moved.push(SetAside {
                from: file.path.clone(),
                to,
            });
        }
        Ok(moved)
    }
}

/// Where the WAL in `file` ends: a complete segment at its end, a `.partial`
/// where its data ends.
fn end_of_file(file: &SegmentFile, segment_size: u64) -> Result<WalEnd, ArchiveError> {
    let start = segment_start_lsn(file.segno, segment_size);
    let end = if file.partial {
        let limit = usize::try_from(segment_size).unwrap_or(usize::MAX);
        let bytes = read_prefix(&file.path, file.compression, limit)
            .map_err(|e| ArchiveError::io(&file.path, e))?;
        Lsn(start.0 + end_of_data(&bytes) as u64)
    } else {
        Lsn(start.0 + segment_size)
    };
    Ok(WalEnd {
        timeline: file.timeline,
        end,
    })
}

fn aside_path(path: &Path) -> Result<PathBuf, ArchiveError> {
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        ArchiveError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a plain file name"),
        )
    })?;
    Ok(path.with_file_name(divergent_file_name(name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::names::{ArchiveName, Compression};

    const SEG: u64 = 1 << 20;

    #[test]
    fn end_of_data_is_past_the_last_non_zero_byte() {
        assert_eq!(end_of_data(&[]), 0);
        assert_eq!(end_of_data(&[0; 16]), 0);
        assert_eq!(end_of_data(&[1, 0, 0]), 1);
        assert_eq!(end_of_data(&[0, 0, 7, 0, 9, 0, 0]), 5);
        assert_eq!(end_of_data(&[3; 4]), 4);
    }

    fn write(dir: &Path, name: &str, data: &[u8]) {
        let mut bytes = data.to_vec();
        bytes.resize(SEG as usize, 0);
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    #[test]
    fn the_end_of_a_partial_is_where_its_data_ends() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "000000010000000000000003", &[1; 10]);
        write(tmp.path(), "000000010000000000000004.partial", &[1; 100]);
        let archive = ArchiveDir::open(tmp.path()).unwrap();
        let scan = archive.scan(SEG).unwrap();
        assert_eq!(
            archive.wal_end(&scan, SEG).unwrap(),
            Some(WalEnd {
                timeline: 1,
                end: Lsn(4 * SEG + 100)
            })
        );
    }

    #[test]
    fn the_end_on_an_older_timeline_is_that_of_its_newest_file() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "000000010000000000000003", &[1; 10]);
        write(tmp.path(), "000000010000000000000004.partial", &[1; 300]);
        write(tmp.path(), "000000020000000000000004.partial", &[1; 100]);
        let archive = ArchiveDir::open(tmp.path()).unwrap();
        let scan = archive.scan(SEG).unwrap();
        let end = |tli| archive.wal_end_on(&scan, tli, SEG).unwrap();
        assert_eq!(
            end(1),
            Some(WalEnd {
                timeline: 1,
                end: Lsn(4 * SEG + 300)
            })
        );
        assert_eq!(
            end(2),
            Some(WalEnd {
                timeline: 2,
                end: Lsn(4 * SEG + 100)
            })
        );
        assert_eq!(end(3), None);
        // The newest file overall is timeline 2's (same segment, newer timeline).
        assert_eq!(archive.wal_end(&scan, SEG).unwrap(), end(2));
    }

    #[test]
    fn the_end_of_a_complete_segment_is_its_end() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "000000010000000000000003", &[1; 10]);
        let archive = ArchiveDir::open(tmp.path()).unwrap();
        let scan = archive.scan(SEG).unwrap();
        assert_eq!(
            archive.wal_end(&scan, SEG).unwrap(),
            Some(WalEnd {
                timeline: 1,
                end: Lsn(4 * SEG)
            })
        );
        let empty = tempfile::tempdir().unwrap();
        let archive = ArchiveDir::open(empty.path()).unwrap();
        let scan = archive.scan(SEG).unwrap();
        assert_eq!(archive.wal_end(&scan, SEG).unwrap(), None);
    }

    #[test]
    fn set_aside_moves_the_switchpoint_segment_and_later_ones_of_that_timeline_only() {
        let tmp = tempfile::tempdir().unwrap();
        for name in [
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000000000005.partial",
            "000000020000000000000004.partial",
        ] {
            write(tmp.path(), name, &[1; 10]);
        }
        let archive = ArchiveDir::open(tmp.path()).unwrap();
        let scan = archive.scan(SEG).unwrap();
        let moved = archive
            .set_aside_divergent(&scan, 1, Lsn(4 * SEG + 0x60), SEG, true)
            .unwrap();
        let names: Vec<_> = moved
            .iter()
            .map(|m| m.to.file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "000000010000000000000005.partial.divergent.tmp",
                "000000010000000000000004.divergent.tmp"
            ]
        );
        for name in &names {
            assert!(matches!(
                ArchiveName::classify(name),
                ArchiveName::Divergent {
                    compression: Compression::None,
                    ..
                }
            ));
        }
        let left = archive.scan(SEG).unwrap();
        let left: Vec<_> = left
            .segments
            .iter()
            .map(|f| (f.timeline, f.segno, f.partial))
            .collect();
        assert_eq!(left, [(1, 3, false), (2, 4, true)]);
        // Reopening (start-up cleans interrupted writes) keeps them.
        drop(archive);
        let _again = ArchiveDir::open(tmp.path()).unwrap();
        for name in &names {
            assert!(tmp.path().join(name).exists(), "{name}");
        }
    }

    #[test]
    fn set_aside_never_overwrites() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "000000010000000000000004.partial", &[1; 10]);
        write(
            tmp.path(),
            "000000010000000000000004.partial.divergent.tmp",
            &[2; 10],
        );
        let archive = ArchiveDir::open(tmp.path()).unwrap();
        let scan = archive.scan(SEG).unwrap();
        assert!(archive
            .set_aside_divergent(&scan, 1, Lsn(4 * SEG + 8), SEG, false)
            .is_err());
        assert!(tmp.path().join("000000010000000000000004.partial").exists());
    }
}
