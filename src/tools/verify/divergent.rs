//! The divergent stage (pure): the files set aside after a failover
//! (`NAME[.gz|.lz4|.zst][.partial].divergent.tmp`, see
//! [`crate::archive::divergent`]) as ranges of WAL that are not part of the
//! history that continues.
//!
//! They are reported as warnings, never as errors: the history the archive
//! follows is still whole without them (they are not segments, so they are
//! never a gap, a missing segment or a timeline problem either). Each tail
//! (the consecutive set-aside files of one timeline) is one range:
//!
//! - it begins at the switch point where the history left that timeline: the
//!   entry whose parent is the file's timeline, in the newest history file
//!   that has one (later history files repeat their ancestors' entries, and
//!   the newest one is what the archive follows). When no history file says,
//!   the range begins at the first file's segment start, and the report says
//!   so;
//! - it ends where the data of its last file ends: a complete file at its
//!   segment end, a `.partial` at its last non-zero byte
//!   ([`crate::archive::divergent::end_of_data`], on the decompressed bytes).
//!
//! A file set aside whose data does not reach past the switch point (the old
//! timeline's `.partial` of the switch segment, as a standby's receiver left
//! it) holds nothing divergent; it is still reported, as such.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::archive::divergent::end_of_data;
use crate::lsn::{segment_start_lsn, Lsn, SegNo, TimeLineId};
use crate::wal::history::HistoryEntry;

use super::lsn_json::{ser_lsn, ser_opt_lsn};

/// A set-aside file as measured by the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Measured {
    pub name: String,
    pub timeline: TimeLineId,
    pub segno: SegNo,
    pub partial: bool,
    /// Size on disk.
    pub size: u64,
    /// Where its data ends (its segment end for a complete file).
    pub data_end: Lsn,
}

/// One set-aside file in a [`DivergentRange`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DivergentFile {
    pub name: String,
    pub timeline: TimeLineId,
    pub segno: SegNo,
    pub partial: bool,
    /// Size on disk.
    pub size: u64,
    /// Where the file's data ends.
    #[serde(serialize_with = "ser_lsn")]
    pub data_end: Lsn,
    /// Bytes of WAL in this file past the range's start.
    pub divergent_bytes: u64,
}

/// One tail of set-aside files: WAL of `timeline` past the point where the
/// history left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DivergentRange {
    pub timeline: TimeLineId,
    /// Where the history left `timeline`, when a history file says.
    #[serde(serialize_with = "ser_opt_lsn")]
    pub switchpoint: Option<Lsn>,
    /// The timeline whose history file says so.
    pub history_of: Option<TimeLineId>,
    /// Start of the range: the switch point (or, when it lies before the
    /// first file, that file's segment start; without history, the same).
    #[serde(serialize_with = "ser_lsn")]
    pub from: Lsn,
    /// Where the data of the range's last file ends.
    #[serde(serialize_with = "ser_lsn")]
    pub to: Lsn,
    /// Bytes of WAL past the switch point (`to - from`, 0 when none).
    pub bytes: u64,
    pub files: Vec<DivergentFile>,
}

/// Where the data of a set-aside `.partial` starting at `segment_start` ends,
/// from its (decompressed) bytes: past its last non-zero byte, within the
/// segment. A complete file's data ends at its segment end.
pub(super) fn partial_data_end(segment_start: Lsn, bytes: &[u8], segment_size: u64) -> Lsn {
    let within = usize::try_from(segment_size).map_or(bytes, |n| bytes.get(..n).unwrap_or(bytes));
    Lsn(segment_start.0.saturating_add(end_of_data(within) as u64))
}

/// Where the history left `timeline`: `(history file's timeline, switch
/// point)` from the newest history file with an entry whose parent is
/// `timeline`.
pub(super) fn switch_point_of(
    timeline: TimeLineId,
    histories: &BTreeMap<TimeLineId, Vec<HistoryEntry>>,
) -> Option<(TimeLineId, Lsn)> {
    histories.iter().rev().find_map(|(&of, entries)| {
        entries
            .iter()
            .find(|e| e.parent == timeline)
            .map(|e| (of, e.switchpoint))
    })
}

/// The set-aside files as ranges, one per run of consecutive segment numbers
/// of one timeline, in (timeline, segment) order.
pub(super) fn ranges(
    mut files: Vec<Measured>,
    histories: &BTreeMap<TimeLineId, Vec<HistoryEntry>>,
    segment_size: u64,
) -> Vec<DivergentRange> {
    files.sort_by(|a, b| (a.timeline, a.segno, &a.name).cmp(&(b.timeline, b.segno, &b.name)));
    let mut runs: Vec<Vec<Measured>> = Vec::new();
    for f in files {
        match runs.last_mut() {
            Some(run)
                if run.last().is_some_and(|l| {
                    l.timeline == f.timeline && (l.segno == f.segno || l.segno + 1 == f.segno)
                }) =>
            {
                run.push(f)
            }
            _ => runs.push(vec![f]),
        }
    }
    runs.into_iter()
        .map(|run| range_of(run, histories, segment_size))
        .collect()
}

fn range_of(
    run: Vec<Measured>,
    histories: &BTreeMap<TimeLineId, Vec<HistoryEntry>>,
    segment_size: u64,
) -> DivergentRange {
    let timeline = run.first().map_or(0, |f| f.timeline);
    let first_start = segment_start_lsn(run.first().map_or(0, |f| f.segno), segment_size);
    let switch = switch_point_of(timeline, histories);
    let from = switch.map_or(first_start, |(_, sp)| sp.max(first_start));
    let to = run.iter().map(|f| f.data_end).max().unwrap_or(from);
    let files = run
        .into_iter()
        .map(|f| DivergentFile {
            divergent_bytes: f
                .data_end
                .0
                .saturating_sub(from.max(segment_start_lsn(f.segno, segment_size)).0),
            name: f.name,
            timeline: f.timeline,
            segno: f.segno,
            partial: f.partial,
            size: f.size,
            data_end: f.data_end,
        })
        .collect();
    DivergentRange {
        timeline,
        switchpoint: switch.map(|(_, sp)| sp),
        history_of: switch.map(|(of, _)| of),
        from,
        to,
        bytes: to.0.saturating_sub(from.0),
        files,
    }
}

impl DivergentRange {
    /// What the warning reporting this range says: its files, its span and
    /// where the history left its timeline.
    pub(super) fn description(&self) -> String {
        let r = self;
        let names = match (r.files.first(), r.files.last()) {
            (Some(a), Some(b)) if r.files.len() > 1 => {
                format!("{} files, {} to {}", r.files.len(), a.name, b.name)
            }
            (Some(a), _) => a.name.clone(),
            _ => String::new(),
        };
        let t = r.timeline;
        match (r.switchpoint, r.history_of) {
            (Some(sp), Some(of)) if r.bytes == 0 => format!(
                "set aside ({names}), holds no WAL past the switch point {sp} where timeline {of}'s history left timeline {t} (its data ends at {})",
                r.to
            ),
            (Some(sp), Some(of)) => format!(
                "divergent WAL of timeline {t} set aside ({names}): {} to {}, {} bytes past the switch point {sp} where timeline {of}'s history left timeline {t}; not part of timeline {of}, never restored",
                r.from, r.to, r.bytes
            ),
            _ => format!(
                "divergent WAL of timeline {t} set aside ({names}): {} to {}, {} bytes, counted from the segment start: no history file says where timeline {t} was left",
                r.from, r.to, r.bytes
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn file(timeline: TimeLineId, segno: SegNo, partial: bool, data_end: u64) -> Measured {
        Measured {
            name: format!(
                "{timeline:08X}{:016X}{}.divergent.tmp",
                segno,
                if partial { ".partial" } else { "" }
            ),
            timeline,
            segno,
            partial,
            size: MB,
            data_end: Lsn(data_end),
        }
    }

    fn history(
        entries: &[(TimeLineId, TimeLineId, u64)],
    ) -> BTreeMap<TimeLineId, Vec<HistoryEntry>> {
        let mut h: BTreeMap<TimeLineId, Vec<HistoryEntry>> = BTreeMap::new();
        for &(of, parent, sp) in entries {
            h.entry(of).or_default().push(HistoryEntry {
                parent,
                switchpoint: Lsn(sp),
            });
        }
        h
    }

    #[test]
    fn a_partial_ends_at_its_data_compressed_or_not() {
        use crate::archive::compress_spec::CompressionSpec;
        use crate::archive::compressed::compress_all;
        use crate::archive::compression::decompress;
        use crate::archive::names::Compression;
        let mut plain = vec![0u8; MB as usize];
        plain[..0x141DE].fill(0xA5);
        assert_eq!(partial_data_end(Lsn(0xC0_0000), &plain, MB), Lsn(0xC1_41DE));
        // A compressed .partial is not padded: measured on what it decompresses to.
        for (method, kind) in [
            ("gzip", Compression::Gzip),
            ("lz4", Compression::Lz4),
            ("zstd", Compression::Zstd),
        ] {
            let packed =
                compress_all(CompressionSpec::parse(method).unwrap(), &plain[..0x20000]).unwrap();
            let bytes = decompress(kind, &packed, MB).unwrap().bytes;
            assert_eq!(
                partial_data_end(Lsn(0xC0_0000), &bytes, MB),
                Lsn(0xC1_41DE),
                "{method}"
            );
        }
        // Nothing past the segment counts; an empty file ends at its start.
        let mut long = plain.clone();
        long.extend_from_slice(&[7; 10]);
        assert_eq!(partial_data_end(Lsn(0xC0_0000), &long, MB), Lsn(0xC1_41DE));
        assert_eq!(partial_data_end(Lsn(0xC0_0000), &[], MB), Lsn(0xC0_0000));
    }

    #[test]
    fn the_newest_history_with_an_entry_for_the_timeline_wins() {
        let h = history(&[(2, 1, 0xB1_0000), (3, 1, 0xB1_0000), (3, 2, 0xE0_0000)]);
        assert_eq!(switch_point_of(1, &h), Some((3, Lsn(0xB1_0000))));
        assert_eq!(switch_point_of(2, &h), Some((3, Lsn(0xE0_0000))));
        assert_eq!(switch_point_of(3, &h), None);
        assert_eq!(switch_point_of(1, &BTreeMap::new()), None);
    }

    #[test]
    fn several_files_of_one_tail_are_one_range() {
        let h = history(&[(2, 1, 0xB1_0000)]);
        let r = ranges(
            vec![
                file(1, 0xC, true, 0xC1_41DE),
                file(1, 0xB, false, 0xC0_0000),
            ],
            &h,
            MB,
        );
        assert_eq!(r.len(), 1);
        let r = &r[0];
        assert_eq!((r.from, r.to), (Lsn(0xB1_0000), Lsn(0xC1_41DE)));
        assert_eq!(r.bytes, 0xC1_41DE - 0xB1_0000);
        assert_eq!(
            (r.switchpoint, r.history_of),
            (Some(Lsn(0xB1_0000)), Some(2))
        );
        let per_file: Vec<_> = r
            .files
            .iter()
            .map(|f| (f.segno, f.divergent_bytes))
            .collect();
        assert_eq!(per_file, [(0xB, 0xC0_0000 - 0xB1_0000), (0xC, 0x1_41DE)]);
        let w = r.description();
        assert!(w.contains("2 files"), "{w}");
        assert!(w.contains("0/B10000 to 0/C141DE"), "{w}");
    }

    #[test]
    fn separate_timelines_and_far_apart_files_are_separate_ranges() {
        let h = history(&[(3, 1, 0xB1_0000), (3, 2, 0xD0_0100)]);
        let r = ranges(
            vec![
                file(1, 0xB, true, 0xB2_0000),
                file(2, 0xD, true, 0xD0_8000),
                file(1, 0x20, false, 0x210_0000),
            ],
            &h,
            MB,
        );
        let spans: Vec<_> = r.iter().map(|r| (r.timeline, r.from, r.to)).collect();
        assert_eq!(
            spans,
            [
                (1, Lsn(0xB1_0000), Lsn(0xB2_0000)),
                (1, Lsn(0x200_0000), Lsn(0x210_0000)),
                (2, Lsn(0xD0_0100), Lsn(0xD0_8000)),
            ]
        );
    }

    #[test]
    fn without_history_the_range_starts_at_the_segment_start() {
        let r = ranges(vec![file(4, 0x7, true, 0x70_2000)], &BTreeMap::new(), MB);
        assert_eq!((r[0].from, r[0].bytes), (Lsn(0x70_0000), 0x2000));
        assert_eq!(r[0].switchpoint, None);
        let w = r[0].description();
        assert!(w.contains("no history file says"), "{w}");
    }

    #[test]
    fn a_file_with_nothing_past_the_switch_point_is_still_reported() {
        let h = history(&[(2, 1, 0xC1_41F8)]);
        let r = ranges(vec![file(1, 0xC, true, 0xC1_41DE)], &h, MB);
        assert_eq!(r[0].bytes, 0);
        assert_eq!(r[0].files[0].divergent_bytes, 0);
        let w = r[0].description();
        assert!(
            w.contains("holds no WAL past the switch point 0/C141F8"),
            "{w}"
        );
    }

    #[test]
    fn a_switch_point_before_the_first_file_starts_the_range_at_that_file() {
        // Earlier files of the tail were removed (or never archived).
        let h = history(&[(2, 1, 0x50_0010)]);
        let r = ranges(vec![file(1, 0x9, false, 0xA0_0000)], &h, MB);
        assert_eq!((r[0].from, r[0].bytes), (Lsn(0x90_0000), MB));
        assert_eq!(r[0].switchpoint, Some(Lsn(0x50_0010)));
    }
}
