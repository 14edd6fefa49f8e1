//! Which files `walrcv cleanup` removes: a pure planner over the archive's
//! names, sizes and modification times.
//!
//! Only segment files (complete or `.partial`, any compression) are ever
//! removed. History files, backup history files, temporaries and foreign
//! files are never touched.
//!
//! Segments are put in WAL order by their position digits (the last 16 hex
//! digits, which `pg_archivecleanup` compares too), then timeline. Each rule
//! given marks files it would remove; a file is removable only when every
//! rule given marks it. The files removed are then the longest *prefix* of the
//! WAL order whose files are all removable, so what stays is a contiguous
//! range: a file that some rule keeps stops the removal there, even if older
//! files elsewhere would qualify, and no hole is ever made.
//!
//! Protected (never removed, and, like any file that stays, ending the
//! prefix): the newest file of the newest timeline (its highest position,
//! complete or `.partial`: the stream writes only there), and an older
//! timeline's newest file when it is a `.partial`. After a switchover the old
//! timeline's last `.partial` (left at its switch point) therefore stops
//! cleanup at the switch segment: removing the new timeline's files past it
//! would leave that `.partial` as the only file of its position with a hole
//! after it, which `walrcv verify` rightly reports. Removing such a file is a
//! decision for a person (`docs/src/cleanup.md` says how). An older timeline that ends
//! with a complete segment (after an unplanned failover its files from the
//! switch segment on are set aside as divergent, and are not WAL here) has
//! nothing to protect: that segment goes with the prefix like any other, or
//! cleanup would stop there for good.

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::archive::names::{ArchiveName, SegmentName};
use crate::lsn::TimeLineId;

/// One directory entry, as the inventory saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub size: u64,
    pub modified: SystemTime,
}

/// The rules given on the command line; a file goes only when all the given
/// ones say so, and nothing goes when none is given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// `--before`: segments whose position sorts before this one's.
    pub before: Option<SegmentName>,
    /// `--older-than`, as an instant: files modified before it.
    pub modified_before: Option<SystemTime>,
    /// `--keep-size`: keep the newest segments totalling at most this many bytes.
    pub keep_size: Option<u64>,
}

impl Rules {
    fn any(&self) -> bool {
        self.before.is_some() || self.modified_before.is_some() || self.keep_size.is_some()
    }
}

/// A segment file with its place in WAL order.
#[derive(Debug, Clone)]
struct Segment<'a> {
    entry: &'a Entry,
    /// The position digits (last 16 hex digits) of the name.
    position: String,
    timeline: TimeLineId,
    partial: bool,
}

/// The entries to remove, oldest first (so that an interrupted run has still
/// removed a prefix).
pub fn plan<'a>(entries: &'a [Entry], rules: &Rules) -> Vec<&'a Entry> {
    if !rules.any() {
        return Vec::new();
    }
    let mut segments = segments_in_wal_order(entries);
    let protected = protected(&segments);
    let over_size = over_keep_size(&segments, rules.keep_size);
    let removable = |i: usize, s: &Segment| {
        let before = rules
            .before
            .as_ref()
            .is_none_or(|cut| s.position.as_str() < cut.position_digits());
        let old = rules
            .modified_before
            .is_none_or(|instant| s.entry.modified < instant);
        before && old && over_size.get(i).copied().unwrap_or(false)
    };
    // The first position holding a file that must stay: everything from
    // there on stays, so what is kept is contiguous.
    let cut = segments
        .iter()
        .enumerate()
        .find(|(i, s)| protected.contains(i) || !removable(*i, s))
        .map(|(_, s)| s.position.clone());
    segments
        .drain(..)
        .take_while(|s| cut.as_ref().is_none_or(|c| s.position < *c))
        .map(|s| s.entry)
        .collect()
}

fn segments_in_wal_order(entries: &[Entry]) -> Vec<Segment<'_>> {
    let mut segments: Vec<Segment> = entries
        .iter()
        .filter_map(|entry| match ArchiveName::classify(&entry.name) {
            ArchiveName::Segment { name, partial, .. } => Some(Segment {
                entry,
                position: name.position_digits().to_owned(),
                timeline: name.timeline(),
                partial,
            }),
            _ => None,
        })
        .collect();
    segments.sort_by(|a, b| {
        (&a.position, a.timeline, &a.entry.name).cmp(&(&b.position, b.timeline, &b.entry.name))
    });
    segments
}

/// Indexes (into the WAL-ordered list) of the protected files: those at the
/// newest timeline's highest position, and the `.partial`s at an older
/// timeline's highest position.
fn protected(segments: &[Segment]) -> Vec<usize> {
    let mut newest: BTreeMap<TimeLineId, &str> = BTreeMap::new();
    for s in segments {
        let top = newest.entry(s.timeline).or_insert(&s.position);
        if s.position.as_str() > *top {
            *top = &s.position;
        }
    }
    let newest_timeline = newest.keys().next_back().copied();
    segments
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            newest.get(&s.timeline) == Some(&s.position.as_str())
                && (s.partial || Some(s.timeline) == newest_timeline)
        })
        .map(|(i, _)| i)
        .collect()
}

/// Per segment (WAL order): whether `--keep-size` lets it go, i.e. whether it
/// and everything newer add up to more than the size. Without the rule, all.
fn over_keep_size(segments: &[Segment], keep_size: Option<u64>) -> Vec<bool> {
    let Some(keep) = keep_size else {
        return vec![true; segments.len()];
    };
    let mut total: u64 = 0;
    let mut over: Vec<bool> = segments
        .iter()
        .rev()
        .map(|s| {
            total = total.saturating_add(s.entry.size);
            total > keep
        })
        .collect();
    over.reverse();
    over
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MB: u64 = 1 << 20;

    fn at(minutes: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(minutes * 60)
    }

    /// Entries named `names`, 1 MB each (compressed ones 100 kB), the n-th
    /// modified at minute n.
    fn archive(names: &[&str]) -> Vec<Entry> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| Entry {
                name: (*n).to_owned(),
                size: if n.contains(".gz") || n.contains(".lz4") || n.contains(".zst") {
                    100_000
                } else {
                    MB
                },
                modified: at(i as u64),
            })
            .collect()
    }

    fn names(removed: Vec<&Entry>) -> Vec<&str> {
        removed.into_iter().map(|e| e.name.as_str()).collect()
    }

    fn before(name: &str) -> Rules {
        Rules {
            before: SegmentName::parse(name),
            ..Rules::default()
        }
    }

    /// Two timelines (a promotion in segment 0C), compressed files, a history
    /// file, a backup file, a temporary and a foreign file.
    fn two_timelines() -> Vec<Entry> {
        archive(&[
            "000000010000000000000008.gz",
            "000000010000000000000009",
            "00000001000000000000000A.lz4",
            "00000001000000000000000B.zst",
            "00000001000000000000000C.gz.partial",
            "00000002.history",
            "00000002000000000000000C",
            "00000002000000000000000D.zst",
            "00000002000000000000000E.lz4.partial",
            "00000002000000000000000E.lz4.partial.tmp",
            "000000010000000000000009.00000028.backup",
            "notes.txt",
        ])
    }

    #[test]
    fn no_rule_removes_nothing() {
        assert!(plan(&two_timelines(), &Rules::default()).is_empty());
    }

    #[test]
    fn before_is_pg_archivecleanup_on_every_timeline_but_keeps_each_newest() {
        let a = two_timelines();
        assert_eq!(
            names(plan(&a, &before("00000002000000000000000A"))),
            ["000000010000000000000008.gz", "000000010000000000000009"]
        );
        // The timeline does not matter, only the position digits.
        assert_eq!(
            names(plan(&a, &before("00000007000000000000000A"))),
            ["000000010000000000000008.gz", "000000010000000000000009"]
        );
        // Timeline 1's last file (its .partial at the switch) stays, and so
        // does everything after it: timeline 2's 0C and 0D are kept too, or
        // the .partial would be left with a hole after it.
        assert_eq!(
            names(plan(&a, &before("0000000200000000000000FF"))),
            [
                "000000010000000000000008.gz",
                "000000010000000000000009",
                "00000001000000000000000A.lz4",
                "00000001000000000000000B.zst",
            ]
        );
        assert!(plan(&a, &before("000000010000000000000008")).is_empty());
    }

    #[test]
    fn older_than_stops_at_the_first_newer_file() {
        let mut a = two_timelines();
        // 0A was touched recently: it and everything after stay, though 0B is old.
        a[2].modified = at(1000);
        let rules = Rules {
            modified_before: Some(at(100)),
            ..Rules::default()
        };
        assert_eq!(
            names(plan(&a, &rules)),
            ["000000010000000000000008.gz", "000000010000000000000009"]
        );
        let rules = Rules {
            modified_before: Some(at(4)),
            ..Rules::default()
        };
        a[2].modified = at(2);
        assert_eq!(
            names(plan(&a, &rules)),
            [
                "000000010000000000000008.gz",
                "000000010000000000000009",
                "00000001000000000000000A.lz4",
                "00000001000000000000000B.zst",
            ]
        );
    }

    #[test]
    fn keep_size_keeps_the_newest_bytes() {
        let a = two_timelines();
        // Newest first: E.lz4.partial 100k, D.zst 100k, 2/0C 1M, 1/0C.gz.partial
        // 100k, 0B.zst 100k, 0A.lz4 100k, 09 1M, 08.gz 100k.
        let keep = |size| Rules {
            keep_size: Some(size),
            ..Rules::default()
        };
        assert_eq!(
            names(plan(&a, &keep(MB + 500_000))),
            ["000000010000000000000008.gz", "000000010000000000000009"]
        );
        assert_eq!(
            names(plan(&a, &keep(MB + 400_000))),
            [
                "000000010000000000000008.gz",
                "000000010000000000000009",
                "00000001000000000000000A.lz4",
            ]
        );
        assert!(plan(&a, &keep(10 * MB)).is_empty());
        // Even a zero size keeps each timeline's newest file, and what
        // follows the first of them (timeline 1's .partial at the switch).
        assert_eq!(plan(&a, &keep(0)).len(), 4);
    }

    #[test]
    fn rules_combine_with_and() {
        let a = two_timelines();
        let rules = Rules {
            before: SegmentName::parse("0000000100000000000000FF"),
            keep_size: Some(MB + 400_000),
            modified_before: Some(at(1)),
        };
        assert_eq!(names(plan(&a, &rules)), ["000000010000000000000008.gz"]);
    }

    #[test]
    fn never_history_backup_temporary_or_foreign() {
        let a = two_timelines();
        let removed = names(plan(&a, &before("0000000F00000000000000FF")));
        for kept in [
            "00000002.history",
            "000000010000000000000009.00000028.backup",
            "00000002000000000000000E.lz4.partial.tmp",
            "notes.txt",
            "00000001000000000000000C.gz.partial",
            "00000002000000000000000E.lz4.partial",
        ] {
            assert!(!removed.contains(&kept), "{kept} removed");
        }
    }

    #[test]
    fn both_files_of_a_position_decide_together() {
        // A complete 0A and a stale 0A.partial of the same timeline (an old
        // crash): the .partial is newer, so --older-than keeps both.
        let mut a = archive(&[
            "000000010000000000000009",
            "00000001000000000000000A",
            "00000001000000000000000A.partial",
            "00000001000000000000000B.partial",
        ]);
        a[2].modified = at(50);
        let rules = Rules {
            modified_before: Some(at(10)),
            ..Rules::default()
        };
        assert_eq!(names(plan(&a, &rules)), ["000000010000000000000009"]);
    }

    #[test]
    fn an_older_timeline_ending_complete_is_not_protected() {
        // After an unplanned failover: timeline 1's files from the switch
        // segment on are set aside (not WAL here), so it ends with a complete
        // 0B; timeline 2 goes on from 0C.
        let a = archive(&[
            "000000010000000000000009",
            "00000001000000000000000A",
            "00000001000000000000000B",
            "00000001000000000000000C.partial.divergent.tmp",
            "00000002.history",
            "00000002000000000000000C",
            "00000002000000000000000D",
            "00000002000000000000000E.partial",
        ]);
        assert_eq!(
            names(plan(&a, &before("00000002000000000000000E"))),
            [
                "000000010000000000000009",
                "00000001000000000000000A",
                "00000001000000000000000B",
                "00000002000000000000000C",
                "00000002000000000000000D",
            ]
        );
        // The newest timeline's newest file stays, complete or not.
        let a = archive(&["000000010000000000000009", "00000001000000000000000A"]);
        assert_eq!(
            names(plan(&a, &before("0000000100000000000000FF"))),
            ["000000010000000000000009"]
        );
    }

    #[test]
    fn removal_is_a_prefix_in_wal_order() {
        // Whatever the rules, what stays is contiguous: no kept file lies
        // before a removed one, and no protected file is removed.
        let a = two_timelines();
        for minutes in 0..12 {
            for size in [0, 300_000, MB, 2 * MB, 3 * MB] {
                let rules = Rules {
                    modified_before: Some(at(minutes)),
                    keep_size: Some(size),
                    before: SegmentName::parse("0000000100000000000000FF"),
                };
                let removed = plan(&a, &rules);
                let order = segments_in_wal_order(&a);
                let protected = protected(&order);
                let last_removed = order
                    .iter()
                    .rposition(|s| removed.contains(&s.entry))
                    .map_or(0, |i| i + 1);
                for s in order.iter().take(last_removed) {
                    assert!(
                        removed.contains(&s.entry),
                        "hole at {} ({minutes} min, {size} B)",
                        s.entry.name
                    );
                }
                for &i in &protected {
                    assert!(!removed.contains(&order[i].entry), "protected file removed");
                }
            }
        }
    }
}
