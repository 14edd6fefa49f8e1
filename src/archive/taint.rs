//! Files whose fsync failed: what the archive still owes the server before
//! anything built on them is reported flushed.
//!
//! After a failed fsync (or fdatasync) the kernel may have dropped the dirty
//! pages and cleared the error: a later fsync of the same file, even on a new
//! descriptor, returns 0 without the data being on disk ("fsyncgate"). So the
//! data of a file whose fsync failed is of *unknown durability* for the life
//! of the process, whatever later fsyncs say. The same holds for a directory
//! entry whose directory fsync failed after a rename.
//!
//! The archive keeps a record of them ([`Taints`], shared by the clones of
//! an [`super::ArchiveDir`]) and the start point honours it ([`plan`], a pure
//! function):
//!
//! - A tainted segment is **streamed again from its start**: rewriting its
//!   bytes dirties the pages again, and the fdatasync that follows makes
//!   them durable (for a name in doubt: renaming it again dirties the
//!   directory entry, and the directory fsync that follows covers it). A
//!   complete segment is first renamed back to `NAME.partial`, which the
//!   sink then rewrites from offset 0 and completes as usual; nothing of it
//!   is reported before. The WAL before its start is backed by the complete
//!   segment before it, which is not tainted (the oldest tainted segment is
//!   the one streamed again). The taint is cleared once the segment exists
//!   again under its complete name after that: only the sink's completion
//!   (fdatasync, rename, directory fsync, all successful) makes it so.
//! - A tainted `.partial` is streamed again from its start the same way (the
//!   newest one always is, pg_receivewal's rule).
//! - The server may no longer have that WAL: START_REPLICATION then fails
//!   with "requested WAL segment has already been removed" and walrcv stops
//!   (exit 3) naming the missing range; it never reports the segment flushed.
//! - walrcv **stops** with a clear error ([`Plan::Stop`]) when it cannot
//!   stream the tainted WAL again without rewriting complete segments that
//!   follow it (it never rewrites a complete segment it did not taint), when
//!   the tainted segment is compressed, and when the fsync of the directory
//!   itself failed outside a segment's completion (the names of unknown
//!   durability are then not known one by one).
//!
//! Across a process restart the record is gone and the kernel has forgotten
//! the error: a new walrcv fsyncs every file again and trusts what the fsyncs
//! say. That is PostgreSQL's limit too (it PANICs on a failed fsync and
//! replays its WAL after the restart); `docs/src/disk-faults.md` says so.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::listing::{Scan, SegmentFile, StartPoint};
use super::names::{ArchiveName, Compression};
use crate::lsn::segment_start_lsn;

/// What is in doubt about a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doubt {
    /// Its data: an fsync or fdatasync of the file failed.
    Data,
    /// The data of its `.partial` only: a complete file of the segment put
    /// beside it (whose fsync did not fail) is not in doubt.
    PartialData,
    /// Its complete name: the directory fsync after the rename failed.
    Name,
    /// Renamed back to `.partial` and being streamed again: in doubt until
    /// the sink completes it.
    Restreaming,
}

/// The record kept for the life of the process.
#[derive(Debug, Default, Clone)]
pub struct Taints {
    /// By segment name (24 hex digits), whatever the file's suffixes.
    segments: HashMap<String, Doubt>,
    /// A directory fsync failed other than after a segment's completion.
    directory: Option<PathBuf>,
}

/// What the next session must do about the taints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing tainted affects the start point.
    Normal,
    /// Rename `file` (a complete, uncompressed segment) back to `NAME.partial`
    /// when it is `Some`, then start at `start`.
    Restream {
        rename: Option<SegmentFile>,
        start: StartPoint,
    },
    /// The tainted WAL cannot be streamed again: stop.
    Stop { path: PathBuf, why: String },
}

impl Taints {
    /// Records a failed fsync of `path` (a file or the archive directory
    /// `dir`). A temporary or foreign file needs no record: it is never
    /// reported flushed (a temporary is removed or replaced).
    pub fn failed_fsync(&mut self, dir: &Path, path: &Path) {
        if path == dir {
            self.directory = Some(path.to_path_buf());
            return;
        }
        if let Some(name) = segment_name(path) {
            let doubt = if is_partial(path) {
                Doubt::PartialData
            } else {
                Doubt::Data
            };
            let kept = self.segments.entry(name).or_insert(doubt);
            // A complete file's failed fsync overrides `Restreaming` too: a
            // complete file moved in beside the `.partial` being streamed
            // again would otherwise settle the taint (`settle`) and be
            // trusted although its fsync failed.
            if *kept == Doubt::PartialData || (*kept == Doubt::Restreaming && doubt == Doubt::Data)
            {
                *kept = doubt;
            }
        }
    }

    /// Records that the directory fsync after renaming a segment to its
    /// complete name `path` failed.
    pub fn failed_rename(&mut self, path: &Path) {
        if let Some(name) = segment_name(path) {
            self.segments.insert(name, Doubt::Name);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty() && self.directory.is_none()
    }

    /// Forgets what the scan shows settled: a segment streamed again and
    /// completed since (only the sink's successful completion makes a
    /// complete file of it), or gone (moved away by Barman or cleanup: no
    /// longer ours to report). Call it before [`plan`].
    pub fn settle(&mut self, scan: &Scan) {
        self.segments.retain(|name, doubt| {
            let mut files = files_of(scan, name).peekable();
            let present = files.peek().is_some();
            let complete = files.any(|f| !f.partial);
            present && !(*doubt == Doubt::Restreaming && complete)
        });
    }

    /// After `plan` was carried out: the segments it streams again (a
    /// renamed one, and every tainted one that is only a `.partial`, which
    /// the stream rewrites from its start) are owed until completed.
    pub fn restreaming(&mut self, scan: &Scan, plan: &Plan) {
        if matches!(plan, Plan::Stop { .. }) {
            return;
        }
        let renamed = match plan {
            Plan::Restream {
                rename: Some(file), ..
            } => segment_name(&file.path),
            _ => None,
        };
        for (name, doubt) in self.segments.iter_mut() {
            let only_partial = files_of(scan, name).all(|f| f.partial);
            if only_partial || renamed.as_deref() == Some(name.as_str()) {
                *doubt = Doubt::Restreaming;
            }
        }
    }
}

/// The 24-digit segment name of a segment file's path (`None` for anything
/// else: temporaries, history files).
fn segment_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    match ArchiveName::classify(file) {
        ArchiveName::Segment { name, .. } => Some(name.as_str().to_string()),
        _ => None,
    }
}

fn is_partial(path: &Path) -> bool {
    let file = path
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or_default();
    matches!(
        ArchiveName::classify(file),
        ArchiveName::Segment { partial: true, .. }
    )
}

fn files_of<'a>(scan: &'a Scan, name: &'a str) -> impl Iterator<Item = &'a SegmentFile> + 'a {
    scan.segments
        .iter()
        .filter(move |f| segment_name(&f.path).as_deref() == Some(name))
}

/// What the session must do before it streams, given the scan and the
/// record (see the module documentation). `normal` is pg_receivewal's start
/// point ([`Scan::streaming_start`]).
pub fn plan(scan: &Scan, taints: &Taints, segment_size: u64) -> Plan {
    if let Some(dir) = &taints.directory {
        return Plan::Stop {
            path: dir.clone(),
            why: "an fsync of the archive directory failed: the names of the files created or renamed in it are \
                  of unknown durability"
                .into(),
        };
    }
    let Some(normal) = scan.streaming_start(segment_size) else {
        return Plan::Normal;
    };
    // The oldest tainted segment file on the start point's timeline that
    // the start point relies on (at or before it).
    let oldest = scan
        .segments
        .iter()
        .filter(|f| f.timeline == normal.timeline)
        .filter(|f| segment_start_lsn(f.segno, segment_size) < normal.lsn || f.partial)
        // A `.partial` beside a complete file of its segment is stale: the
        // start point relies on the complete one, never on it.
        .filter(|f| !(f.partial && has_complete(scan, f)))
        .filter(|f| {
            segment_name(&f.path).is_some_and(|n| match taints.segments.get(n.as_str()) {
                None => false,
                Some(Doubt::PartialData) => f.partial,
                Some(_) => true,
            })
        })
        .min_by_key(|f| (f.segno, f.partial));
    let Some(tainted) = oldest else {
        return Plan::Normal;
    };
    let start = StartPoint {
        lsn: segment_start_lsn(tainted.segno, segment_size),
        timeline: tainted.timeline,
    };
    let complete_after = scan
        .segments
        .iter()
        .any(|f| !f.partial && (f.segno, f.timeline) > (tainted.segno, tainted.timeline));
    let what = if tainted.partial {
        "its fsync failed"
    } else {
        "its fsync (or the directory fsync after its rename) failed"
    };
    if complete_after {
        return Plan::Stop {
            path: tainted.path.clone(),
            why: format!(
                "{what}, so its WAL is of unknown durability, and complete segments follow it, which walrcv does \
                 not rewrite: it cannot stream it again"
            ),
        };
    }
    if tainted.compression != Compression::None {
        return Plan::Stop {
            path: tainted.path.clone(),
            why: format!(
                "{what}, so its WAL is of unknown durability, and walrcv does not stream a compressed segment again"
            ),
        };
    }
    if tainted.partial {
        if start == normal {
            return Plan::Normal;
        }
        return Plan::Restream {
            rename: None,
            start,
        };
    }
    Plan::Restream {
        rename: Some(tainted.clone()),
        start,
    }
}

/// Whether the segment of `file` is in the archive under its complete name too.
fn has_complete(scan: &Scan, file: &SegmentFile) -> bool {
    scan.segments
        .iter()
        .any(|f| !f.partial && f.timeline == file.timeline && f.segno == file.segno)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::{wal_file_name, Lsn, SegNo, TimeLineId};

    const SEG: u64 = 1 << 20;

    fn file(tli: TimeLineId, segno: SegNo, partial: bool) -> SegmentFile {
        let name = wal_file_name(tli, segno, SEG);
        SegmentFile {
            timeline: tli,
            segno,
            partial,
            size: SEG,
            path: PathBuf::from("/a").join(if partial {
                format!("{name}.partial")
            } else {
                name
            }),
            compression: Compression::None,
        }
    }

    fn scan(files: &[(SegNo, bool)]) -> Scan {
        Scan {
            segments: files.iter().map(|&(s, p)| file(1, s, p)).collect(),
            histories: vec![],
            restream_from: None,
        }
    }

    fn at(segno: SegNo) -> StartPoint {
        StartPoint {
            lsn: Lsn(segno * SEG),
            timeline: 1,
        }
    }

    fn data(path: &str) -> Taints {
        let mut t = Taints::default();
        t.failed_fsync(Path::new("/a"), &Path::new("/a").join(path));
        t
    }

    #[test]
    fn nothing_tainted_is_normal() {
        let s = scan(&[(7, false), (8, false), (9, true)]);
        assert_eq!(plan(&s, &Taints::default(), SEG), Plan::Normal);
        // A temporary or a history file is no segment to stream again.
        let t = data("000000010000000000000009.partial.tmp");
        assert!(t.is_empty());
        assert_eq!(plan(&s, &data("00000002.history"), SEG), Plan::Normal);
    }

    #[test]
    fn the_newest_complete_segment_is_streamed_again_from_its_start() {
        let s = scan(&[(7, false), (8, false), (9, true)]);
        let name8 = wal_file_name(1, 8, SEG);
        let p = plan(&s, &data(&name8), SEG);
        assert_eq!(
            p,
            Plan::Restream {
                rename: Some(file(1, 8, false)),
                start: at(8)
            }
        );
        // Without a .partial after it, and for a name in doubt, the same.
        let s2 = scan(&[(7, false), (8, false)]);
        let mut t = Taints::default();
        t.failed_rename(&Path::new("/a").join(&name8));
        assert_eq!(
            plan(&s2, &t, SEG),
            Plan::Restream {
                rename: Some(file(1, 8, false)),
                start: at(8)
            }
        );
    }

    #[test]
    fn a_stale_partial_beside_its_complete_segment_is_not_streamed_again() {
        // Found by the property test: a complete segment put beside a
        // `.partial` of the same segment, the `.partial`'s fsync failing.
        // The complete file (fsynced fine) is what the start relies on; it
        // is neither renamed over the `.partial` nor streamed again.
        let s = scan(&[(7, false), (8, false), (8, true)]);
        let name8 = wal_file_name(1, 8, SEG);
        assert_eq!(
            plan(&s, &data(&format!("{name8}.partial")), SEG),
            Plan::Normal
        );
        // The complete file's own failure still counts, whatever came first.
        let mut t = data(&format!("{name8}.partial"));
        t.failed_fsync(Path::new("/a"), &Path::new("/a").join(&name8));
        assert!(matches!(plan(&s, &t, SEG), Plan::Restream { .. }));
    }

    #[test]
    fn a_tainted_segment_stays_owed_until_completed_again() {
        let name8 = wal_file_name(1, 8, SEG);
        let mut t = data(&name8);
        let s = scan(&[(7, false), (8, false), (9, true)]);
        let p = plan(&s, &t, SEG);
        t.restreaming(&s, &p);
        // Renamed back: 8.partial and 9.partial; the session fails before
        // completing it: the next one starts at 8 again, not at 9.
        let s = scan(&[(7, false), (8, true), (9, true)]);
        t.settle(&s);
        let p = plan(&s, &t, SEG);
        assert_eq!(
            p,
            Plan::Restream {
                rename: None,
                start: at(8)
            }
        );
        t.restreaming(&s, &p);
        // Completed by the sink: cleared.
        let s = scan(&[(7, false), (8, false), (9, true)]);
        t.settle(&s);
        assert!(t.is_empty(), "{t:?}");
        assert_eq!(plan(&s, &t, SEG), Plan::Normal);
    }

    #[test]
    fn a_complete_file_whose_fsync_failed_while_streamed_again_is_not_settled() {
        // Found by the property test: 8.partial is being streamed again, a
        // complete 8 is moved in beside it and its fsync fails at start-up.
        let name8 = wal_file_name(1, 8, SEG);
        let mut t = data(&format!("{name8}.partial"));
        let s = scan(&[(7, false), (8, true)]);
        let p = plan(&s, &t, SEG);
        t.restreaming(&s, &p);
        t.failed_fsync(Path::new("/a"), &Path::new("/a").join(&name8));
        let s = scan(&[(7, false), (8, false), (8, true)]);
        t.settle(&s);
        assert!(
            matches!(plan(&s, &t, SEG), Plan::Restream { start, .. } if start == at(8)),
            "{t:?}"
        );
    }

    #[test]
    fn the_resumed_partial_is_streamed_again_anyway() {
        let s = scan(&[(7, false), (8, true)]);
        let mut t = data(&format!("{}.partial", wal_file_name(1, 8, SEG)));
        let p = plan(&s, &t, SEG);
        assert_eq!(p, Plan::Normal);
        t.restreaming(&s, &p);
        // Completed by the sink: cleared, not streamed again.
        let done = scan(&[(7, false), (8, false)]);
        t.settle(&done);
        assert!(t.is_empty(), "{t:?}");
        assert_eq!(plan(&done, &t, SEG), Plan::Normal);
        // Moved away: forgotten.
        let mut t = data(&wal_file_name(1, 7, SEG));
        t.settle(&scan(&[(8, true)]));
        assert!(t.is_empty());
    }

    #[test]
    fn stops_when_complete_segments_follow_or_the_directory_is_in_doubt() {
        let s = scan(&[(7, false), (8, false), (9, true)]);
        let p = plan(&s, &data(&wal_file_name(1, 7, SEG)), SEG);
        assert!(
            matches!(&p, Plan::Stop { path, why } if path.ends_with(wal_file_name(1, 7, SEG)) && why.contains("complete segments follow")),
            "{p:?}"
        );
        let mut t = Taints::default();
        t.failed_fsync(Path::new("/a"), Path::new("/a"));
        assert!(matches!(plan(&s, &t, SEG), Plan::Stop { path, .. } if path == Path::new("/a")));
        let mut gz = s.clone();
        gz.segments[1].compression = Compression::Gzip;
        gz.segments[1].path = PathBuf::from(format!("/a/{}.gz", wal_file_name(1, 8, SEG)));
        let p = plan(&gz, &data(&format!("{}.gz", wal_file_name(1, 8, SEG))), SEG);
        assert!(
            matches!(&p, Plan::Stop { why, .. } if why.contains("compressed")),
            "{p:?}"
        );
    }
}
