//! The plan stage (pure): which file stands for each segment number in the
//! sequence followed through the timeline history, which numbers are missing
//! (gaps), and the order in which files are checked.
//!
//! For segment number `s`, the file of the timeline that owns the end of `s`
//! (a complete one before a `.partial`); at the archive's last segment
//! number, when that file is missing, an ancestor's file (the child's copy of
//! the switch segment has not arrived yet). Before later segments, the
//! owner's file missing is a gap.

use std::collections::{BTreeMap, BTreeSet};

use crate::lsn::{wal_file_name, Lsn, SegNo, TimeLineId};

use super::report::Problem;
use super::timelines::Timelines;

/// What the plan needs to know of a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slot {
    pub tli: TimeLineId,
    pub segno: SegNo,
    pub partial: bool,
}

/// The files to check, in order: the sequence first (`true`: chained, its
/// verifier carried from one file to the next), then every other file on
/// its own (`false`). Indices into the slots given.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    pub order: Vec<(usize, bool)>,
    pub gaps: Vec<Problem>,
}

pub(super) fn plan(slots: &[Slot], t: &Timelines, segment_size: u64) -> Plan {
    let mut by_segno: BTreeMap<SegNo, Vec<usize>> = BTreeMap::new();
    for (i, s) in slots.iter().enumerate() {
        if t.in_chain(s.tli) {
            by_segno.entry(s.segno).or_default().push(i);
        }
    }
    let owner = |segno: SegNo| -> TimeLineId {
        if !t.history_known {
            return by_segno
                .get(&segno)
                .and_then(|c| c.iter().filter_map(|&i| slots.get(i).map(|s| s.tli)).max())
                .unwrap_or(t.tip);
        }
        t.owner_of_last_byte(segno, segment_size)
    };
    let mut sequence: Vec<usize> = Vec::new();
    // Missing segment numbers, as runs (first, last): iterating over present
    // numbers only, so that far-apart names cannot make this loop long.
    let mut gaps: Vec<(SegNo, SegNo)> = Vec::new();
    let mut add_gap = |from: SegNo, to: SegNo| match gaps.last_mut() {
        Some(g) if g.1 + 1 == from => g.1 = to,
        _ => gaps.push((from, to)),
    };
    let last = by_segno.keys().next_back().copied().unwrap_or(0);
    let mut prev: Option<SegNo> = None;
    for (&segno, candidates) in &by_segno {
        if let Some(p) = prev.filter(|&p| segno > p + 1) {
            add_gap(p + 1, segno - 1);
        }
        prev = Some(segno);
        match pick(slots, candidates, owner(segno), segno == last) {
            Some(i) => sequence.push(i),
            None => add_gap(segno, segno),
        }
    }
    let gap_problems = gaps
        .iter()
        .map(|&(from, to)| gap_problem(from, to, &owner, segment_size))
        .collect();
    let in_sequence: BTreeSet<usize> = sequence.iter().copied().collect();
    let mut order: Vec<(usize, bool)> = sequence.iter().map(|&i| (i, true)).collect();
    order.extend(
        (0..slots.len())
            .filter(|i| !in_sequence.contains(i))
            .map(|i| (i, false)),
    );
    Plan {
        order,
        gaps: gap_problems,
    }
}

/// The owner's file (complete before `.partial`); at the last segment number
/// only, else the newest timeline's (complete first).
fn pick(slots: &[Slot], candidates: &[usize], own: TimeLineId, is_last: bool) -> Option<usize> {
    candidates
        .iter()
        .copied()
        .filter(|&i| slots.get(i).is_some_and(|s| s.tli == own))
        .min_by_key(|&i| slots.get(i).map(|s| s.partial))
        .or_else(|| {
            if !is_last {
                return None;
            }
            candidates
                .iter()
                .copied()
                .max_by_key(|&i| slots.get(i).map(|s| (s.tli, !s.partial)))
        })
}

fn gap_problem(
    from: SegNo,
    to: SegNo,
    owner: &impl Fn(SegNo) -> TimeLineId,
    segment_size: u64,
) -> Problem {
    let own = owner(from);
    let name = wal_file_name(own, from, segment_size);
    let message = if from == to {
        format!("missing segment {name} (timeline {own}): gap in the WAL")
    } else {
        format!(
            "missing segments {name} to {} ({} segments): gap in the WAL",
            wal_file_name(owner(to), to, segment_size),
            to - from + 1
        )
    };
    Problem::gap(name, Lsn(from.saturating_mul(segment_size)), message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::history::HistoryEntry;

    const MB: u64 = 1 << 20;

    fn slot(tli: TimeLineId, segno: SegNo, partial: bool) -> Slot {
        Slot {
            tli,
            segno,
            partial,
        }
    }

    fn two_timelines() -> Timelines {
        Timelines {
            newest: Some(2),
            tip: 2,
            history: vec![HistoryEntry {
                parent: 1,
                switchpoint: Lsn(0xC1_41F8),
            }],
            history_known: true,
        }
    }

    fn one_timeline() -> Timelines {
        Timelines {
            newest: Some(1),
            tip: 1,
            history: Vec::new(),
            history_known: true,
        }
    }

    #[test]
    fn follows_the_history_through_a_switch() {
        // testdata/wal/pg15: 1/08..0B, 1/0C.partial, 2/0C, 2/0D.partial.
        let slots = [
            slot(1, 8, false),
            slot(1, 9, false),
            slot(1, 0xA, false),
            slot(1, 0xB, false),
            slot(1, 0xC, true),
            slot(2, 0xC, false),
            slot(2, 0xD, true),
        ];
        let p = plan(&slots, &two_timelines(), MB);
        assert!(p.gaps.is_empty(), "{:?}", p.gaps);
        assert_eq!(
            p.order,
            [
                (0, true),
                (1, true),
                (2, true),
                (3, true),
                (5, true),
                (6, true),
                (4, false)
            ]
        );
    }

    #[test]
    fn ancestor_partial_at_the_end_stands_in_for_the_child() {
        let slots = [slot(1, 0xB, false), slot(1, 0xC, true)];
        let p = plan(&slots, &two_timelines(), MB);
        assert!(p.gaps.is_empty());
        assert_eq!(p.order, [(0, true), (1, true)]);
        // ...but not before later segments: then the child's copy is a gap.
        let slots = [slot(1, 0xB, false), slot(1, 0xC, true), slot(2, 0xD, false)];
        let p = plan(&slots, &two_timelines(), MB);
        assert_eq!(p.gaps.len(), 1);
        assert_eq!(p.gaps[0].file, "00000002000000000000000C");
        assert_eq!(p.order, [(0, true), (2, true), (1, false)]);
    }

    #[test]
    fn gaps_are_runs() {
        let slots = [slot(1, 1, false), slot(1, 5, false), slot(1, 7, false)];
        let p = plan(&slots, &one_timeline(), MB);
        let messages: Vec<_> = p.gaps.iter().map(|g| g.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "missing segments 000000010000000000000002 to 000000010000000000000004 (3 segments): gap in the WAL",
                "missing segment 000000010000000000000006 (timeline 1): gap in the WAL",
            ]
        );
        assert_eq!(p.gaps[0].lsn, Some(Lsn(2 * MB)));
    }

    #[test]
    fn complete_before_partial_and_far_apart_names() {
        let slots = [
            slot(1, 3, true),
            slot(1, 3, false),
            slot(1, u64::from(u32::MAX) * 4, false),
        ];
        let p = plan(&slots, &one_timeline(), MB);
        assert_eq!(p.order[0], (1, true));
        assert_eq!(p.gaps.len(), 1);
    }
}
