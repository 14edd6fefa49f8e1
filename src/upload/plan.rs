//! What the uploader does next, from a directory listing (pure).
//!
//! Complete segments and history files are final once they carry their
//! name (written, fsynced and verified before the rename), so each is
//! uploaded once. `.partial` files are uploaded as versions (see
//! [`crate::objstore::partial`]) when a pass is due ([`partial_pass`]): at
//! start, at a clean stop, every `--upload-partial-interval`, and at once
//! when a `.partial` of a timeline not seen before appears (a timeline
//! switch: the old timeline's last `.partial` is final then). The new
//! `.partial` of a plain segment switch waits for the interval: it holds
//! almost nothing yet, and the completed segment goes up on its own. Local removal
//! (`--upload-keep-local`) only ever takes confirmed uploads and never the
//! newest complete segment of a timeline.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, SystemTime};

use crate::archive::names::ArchiveName;
use crate::lsn::TimeLineId;

/// One regular file of the archive directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFile {
    pub name: String,
    pub size: u64,
    pub modified: SystemTime,
}

/// The kinds of file the uploader handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A complete segment or a history file: uploaded once.
    Final,
    /// A `.partial` of the segment named: uploaded as versions.
    Partial,
    /// Anything else (temporary, divergent, foreign): never uploaded.
    Other,
}

/// Classifies a local file name.
pub fn kind(name: &str) -> Kind {
    match ArchiveName::classify(name) {
        ArchiveName::Segment { partial: false, .. } | ArchiveName::History { .. } => Kind::Final,
        ArchiveName::Segment { partial: true, .. } => Kind::Partial,
        _ => Kind::Other,
    }
}

/// The segment name (24 hex digits) of a segment or `.partial` file name.
pub fn segment_of(name: &str) -> Option<String> {
    match ArchiveName::classify(name) {
        ArchiveName::Segment { name, .. } => Some(name.as_str().to_string()),
        _ => None,
    }
}

/// The final files not confirmed yet, oldest name first (segments sort by
/// timeline then position; a history file sorts before its timeline's
/// segments).
pub fn pending<'a>(files: &'a [LocalFile], done: &HashSet<String>) -> Vec<&'a LocalFile> {
    let mut out: Vec<&LocalFile> = files
        .iter()
        .filter(|f| kind(&f.name) == Kind::Final && !done.contains(&f.name))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Why a pass over the `.partial` files runs now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartialPass {
    /// A clean stop: the last `.partial` goes up before the exit.
    Stop,
    /// The first pass of this process: what an earlier one (perhaps killed)
    /// did not upload goes up at once.
    Start,
    /// A `.partial` of this timeline appeared beside another timeline's,
    /// not seen in any earlier pass (a timeline switch): the old
    /// timeline's last `.partial` is final.
    NewTimeline(TimeLineId),
    /// `--upload-partial-interval` elapsed since the last pass.
    Interval,
    /// The last pass failed to upload a `.partial` and its backoff ended.
    Retry,
}

/// The timelines of the `.partial` files among `files`.
pub fn partial_timelines(files: &[LocalFile]) -> BTreeSet<TimeLineId> {
    files
        .iter()
        .filter_map(|f| match ArchiveName::classify(&f.name) {
            ArchiveName::Segment {
                name,
                partial: true,
                ..
            } => Some(name.timeline()),
            _ => None,
        })
        .collect()
}

/// What the `.partial` decision looks at besides the files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartialClock {
    /// Time since the last pass; `None`: none yet in this process.
    pub since_last: Option<Duration>,
    /// `--upload-partial-interval`.
    pub interval: Duration,
    /// A `.partial` upload of the last pass failed and its backoff ended.
    pub retry_due: bool,
    /// A clean stop was asked for.
    pub stopping: bool,
}

/// Whether a pass over the `.partial` files is due now, and why (`None`:
/// not due). `known` holds the timelines of the `.partial` files that the
/// passes of this process have seen. A `.partial` of a new timeline beside
/// another timeline's is a timeline switch: due at once. A new `.partial`
/// on a known timeline (a plain segment switch) is not a reason: it waits
/// for the interval, as does the first `.partial` of a process that had
/// none at its first pass.
pub fn partial_pass(
    files: &[LocalFile],
    known: &BTreeSet<TimeLineId>,
    clock: PartialClock,
) -> Option<PartialPass> {
    if clock.stopping {
        return Some(PartialPass::Stop);
    }
    let Some(since_last) = clock.since_last else {
        return Some(PartialPass::Start);
    };
    let present = partial_timelines(files);
    if let Some(&new) = present.difference(known).next() {
        // A switch only when another timeline's `.partial` was seen too:
        // the first `.partial` after a start in an empty directory holds
        // almost nothing yet and waits for the interval.
        if known.union(&present).nth(1).is_some() {
            return Some(PartialPass::NewTimeline(new));
        }
    }
    if since_last >= clock.interval {
        return Some(PartialPass::Interval);
    }
    clock.retry_due.then_some(PartialPass::Retry)
}

/// `--upload-keep-local`: how much uploaded WAL stays on the local disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepLocal {
    /// Keep the newest uploaded segments up to this many bytes.
    Bytes(u64),
    /// Keep uploaded segments modified less than this long ago.
    Age(Duration),
}

impl KeepLocal {
    /// Parses `SIZE` (`512MB`, `10GB`, `1TB`, bytes without a unit) or
    /// `DURATION` (`30s`, `15min`, `12h`, `7d`).
    pub fn parse(s: &str) -> Result<KeepLocal, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("invalid --upload-keep-local \"{s}\": expected SIZE (e.g. 10GB) or DURATION (e.g. 12h)"))?;
        let bytes = |m: u64| n.checked_mul(m).map(KeepLocal::Bytes);
        let secs = |m: u64| {
            n.checked_mul(m)
                .map(|v| KeepLocal::Age(Duration::from_secs(v)))
        };
        let parsed = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => bytes(1),
            "kb" => bytes(1 << 10),
            "mb" => bytes(1 << 20),
            "gb" => bytes(1 << 30),
            "tb" => bytes(1 << 40),
            "s" => secs(1),
            "min" => secs(60),
            "h" => secs(3600),
            "d" => secs(86400),
            _ => None,
        };
        parsed.ok_or_else(|| {
            format!("invalid --upload-keep-local \"{s}\": expected SIZE (B, kB, MB, GB, TB) or DURATION (s, min, h, d)")
        })
    }
}

/// The local complete segments that may be removed now: confirmed uploaded,
/// not the newest complete segment of their timeline, and beyond what
/// `keep` keeps (counted from the newest), oldest first. History files and `.partial` files are
/// never removed.
pub fn removable(
    files: &[LocalFile],
    done: &HashSet<String>,
    keep: KeepLocal,
    now: SystemTime,
) -> Vec<String> {
    let mut by_timeline: BTreeMap<u32, Vec<&LocalFile>> = BTreeMap::new();
    for f in files {
        if let ArchiveName::Segment {
            name,
            partial: false,
            ..
        } = ArchiveName::classify(&f.name)
        {
            by_timeline.entry(name.timeline()).or_default().push(f);
        }
    }
    let mut out = Vec::new();
    for segments in by_timeline.values_mut() {
        // Newest first; the first is never removed.
        segments.sort_by(|a, b| b.name.cmp(&a.name));
        let mut kept_bytes = 0u64;
        for f in segments.iter().skip(1) {
            let keep_it = match keep {
                KeepLocal::Bytes(limit) => {
                    kept_bytes = kept_bytes.saturating_add(f.size);
                    kept_bytes <= limit
                }
                KeepLocal::Age(age) => now
                    .duration_since(f.modified)
                    .map(|d| d < age)
                    .unwrap_or(true),
            };
            if !keep_it && done.contains(&f.name) {
                out.push(f.name.clone());
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, age_s: u64) -> LocalFile {
        LocalFile {
            name: name.to_string(),
            size: 16 << 20,
            modified: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 - age_s),
        }
    }
    const NOW_S: u64 = 1_000_000;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(NOW_S)
    }

    #[test]
    fn kinds() {
        assert_eq!(kind("000000010000000000000001"), Kind::Final);
        assert_eq!(kind("000000010000000000000001.zst"), Kind::Final);
        assert_eq!(kind("00000002.history"), Kind::Final);
        assert_eq!(kind("000000010000000000000001.partial"), Kind::Partial);
        assert_eq!(kind("000000010000000000000001.gz.partial"), Kind::Partial);
        assert_eq!(kind("000000010000000000000001.partial.tmp"), Kind::Other);
        assert_eq!(kind("notes.txt"), Kind::Other);
    }

    #[test]
    fn pending_skips_done_and_partials() {
        let files = vec![
            file("000000010000000000000002", 0),
            file("000000010000000000000001", 0),
            file("000000010000000000000003.partial", 0),
            file("00000002.history", 0),
        ];
        let done: HashSet<String> = ["000000010000000000000001".to_string()].into();
        let names: Vec<&str> = pending(&files, &done)
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(names, ["000000010000000000000002", "00000002.history"]);
    }

    const MIN: Duration = Duration::from_secs(60);

    fn due(
        names: &[&str],
        known: &[TimeLineId],
        since_last: Option<u64>,
        stopping: bool,
    ) -> Option<PartialPass> {
        let files: Vec<LocalFile> = names.iter().map(|n| file(n, 0)).collect();
        let known: BTreeSet<TimeLineId> = known.iter().copied().collect();
        let clock = PartialClock {
            since_last: since_last.map(Duration::from_secs),
            interval: MIN,
            retry_due: false,
            stopping,
        };
        partial_pass(&files, &known, clock)
    }

    #[test]
    fn partial_pass_at_start_and_stop() {
        // Nothing known yet (a start, a restart): at once, with or
        // without a .partial (an earlier process may have left one).
        let p = "000000010000000000000005.partial";
        assert_eq!(due(&[p], &[], None, false), Some(PartialPass::Start));
        assert_eq!(due(&[], &[], None, false), Some(PartialPass::Start));
        // A clean stop, however recent the last pass.
        assert_eq!(due(&[p], &[1], Some(0), true), Some(PartialPass::Stop));
    }

    #[test]
    fn a_segment_switch_waits_for_the_interval() {
        // Timeline 1 known; its next .partial appeared (5 completed).
        let files = [
            "000000010000000000000005",
            "000000010000000000000006.partial",
        ];
        assert_eq!(due(&files, &[1], Some(1), false), None);
        assert_eq!(due(&files, &[1], Some(59), false), None);
        assert_eq!(
            due(&files, &[1], Some(60), false),
            Some(PartialPass::Interval)
        );
        // No .partial at all: only the interval.
        assert_eq!(due(&[], &[1], Some(5), false), None);
        assert_eq!(due(&[], &[], Some(61), false), Some(PartialPass::Interval));
    }

    #[test]
    fn a_failed_partial_is_retried_after_its_backoff() {
        let files = [file("000000010000000000000006.partial", 0)];
        let clock = PartialClock {
            since_last: Some(Duration::from_secs(2)),
            interval: MIN,
            retry_due: true,
            stopping: false,
        };
        assert_eq!(
            partial_pass(&files, &[1].into(), clock),
            Some(PartialPass::Retry)
        );
        let waiting = PartialClock {
            retry_due: false,
            ..clock
        };
        assert_eq!(partial_pass(&files, &[1].into(), waiting), None);
    }

    #[test]
    fn a_timeline_switch_is_uploaded_at_once() {
        // Timeline 1's last .partial stays (final), timeline 2's appears.
        let files = [
            "000000010000000000000006.partial",
            "00000002.history",
            "000000020000000000000006.partial",
        ];
        assert_eq!(
            due(&files, &[1], Some(1), false),
            Some(PartialPass::NewTimeline(2))
        );
        // Once timeline 2 is known (after a restart: both seen at the
        // first pass), its next segment waits again.
        let later = [
            "000000010000000000000006.partial",
            "000000020000000000000007.partial",
        ];
        assert_eq!(due(&later, &[1, 2], Some(1), false), None);
        // The first .partial after a start in an empty directory: no
        // switch, it waits for the interval.
        let first = ["000000010000000000000001.partial"];
        assert_eq!(due(&first, &[], Some(1), false), None);
        assert_eq!(
            due(&first, &[], Some(60), false),
            Some(PartialPass::Interval)
        );
        // A switch right after a start, before any pass saw a .partial:
        // both timelines' .partial files at once.
        assert_eq!(
            due(&files, &[], Some(1), false),
            Some(PartialPass::NewTimeline(1))
        );
        // A switch that completed the old timeline's last segment (the
        // switch point on a segment boundary): no .partial of timeline 1
        // is final, the history file goes up as any complete file.
        let boundary = [
            "000000010000000000000006",
            "000000020000000000000007.partial",
        ];
        assert_eq!(due(&boundary, &[], Some(1), false), None);
        // Compressed names count the same.
        assert_eq!(
            due(
                &["000000030000000000000009.zst.partial"],
                &[1, 2],
                Some(1),
                false
            ),
            Some(PartialPass::NewTimeline(3))
        );
    }

    #[test]
    fn timelines_of_partials_only() {
        let files: Vec<LocalFile> = [
            "000000010000000000000004",
            "000000010000000000000005.partial",
            "00000002.history",
            "0000000A0000000000000006.gz.partial",
            "000000030000000000000007.partial.tmp",
        ]
        .iter()
        .map(|n| file(n, 0))
        .collect();
        assert_eq!(partial_timelines(&files), [1, 10].into());
    }

    #[test]
    fn keep_local_parses() {
        assert_eq!(KeepLocal::parse("10GB"), Ok(KeepLocal::Bytes(10 << 30)));
        assert_eq!(KeepLocal::parse("0"), Ok(KeepLocal::Bytes(0)));
        assert_eq!(
            KeepLocal::parse("12h"),
            Ok(KeepLocal::Age(Duration::from_secs(43200)))
        );
        assert_eq!(
            KeepLocal::parse("15min"),
            Ok(KeepLocal::Age(Duration::from_secs(900)))
        );
        assert!(KeepLocal::parse("12 parsecs").is_err());
        assert!(KeepLocal::parse("GB").is_err());
    }

    #[test]
    fn never_removes_unconfirmed_or_newest() {
        let files = vec![
            file("000000010000000000000001", 100),
            file("000000010000000000000002", 100),
            file("000000010000000000000003", 100),
            file("000000010000000000000004.partial", 0),
            file("00000001.history", 100),
        ];
        let done: HashSet<String> = files.iter().map(|f| f.name.clone()).collect();
        let mut gone = removable(&files, &done, KeepLocal::Bytes(0), now());
        gone.sort();
        assert_eq!(
            gone,
            ["000000010000000000000001", "000000010000000000000002"]
        );
        // Not confirmed: kept.
        let only_two: HashSet<String> = ["000000010000000000000002".to_string()].into();
        assert_eq!(
            removable(&files, &only_two, KeepLocal::Bytes(0), now()),
            ["000000010000000000000002"]
        );
    }

    #[test]
    fn keeps_by_size_and_age() {
        let files = vec![
            file("000000010000000000000001", 300),
            file("000000010000000000000002", 200),
            file("000000010000000000000003", 100),
            file("000000010000000000000004", 0),
        ];
        let done: HashSet<String> = files.iter().map(|f| f.name.clone()).collect();
        // The newest is never counted; one more segment fits in 16 MB.
        assert_eq!(
            removable(&files, &done, KeepLocal::Bytes(16 << 20), now()),
            ["000000010000000000000001", "000000010000000000000002"]
        );
        assert_eq!(
            removable(
                &files,
                &done,
                KeepLocal::Age(Duration::from_secs(250)),
                now()
            ),
            ["000000010000000000000001"]
        );
    }
}
