//! The timelines stage (pure): history files parsed and checked against each
//! other, and the segments' timelines against the newest timeline's history.

use std::collections::{BTreeMap, HashMap};

use crate::lsn::{history_file_name, Lsn, SegNo, TimeLineId};
use crate::wal::history::{check_history_for, parse_history, timeline_range, HistoryEntry};

use super::report::Problem;

/// The timeline history the archive follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Timelines {
    /// The newest timeline found (segments or history files).
    pub newest: Option<TimeLineId>,
    /// The newest timeline, 1 when there is none.
    pub tip: TimeLineId,
    /// The tip's history (empty when unknown or on timeline 1).
    pub history: Vec<HistoryEntry>,
    /// Whether the tip's history is known; without it timelines are assumed
    /// to follow each other in numeric order.
    pub history_known: bool,
}

impl Timelines {
    /// Whether `tli` is the tip or one of its ancestors.
    pub fn in_chain(&self, tli: TimeLineId) -> bool {
        !self.history_known || tli == self.tip || self.history.iter().any(|e| e.parent == tli)
    }

    /// Where `tli` begins and (for an ancestor) ends.
    pub fn range(&self, tli: TimeLineId) -> Option<(Lsn, Option<Lsn>)> {
        timeline_range(&self.history, self.tip, tli)
    }

    /// The timeline that owns the last byte of segment `segno`.
    pub fn owner_of_last_byte(&self, segno: SegNo, segment_size: u64) -> TimeLineId {
        let last_byte = Lsn(segno
            .saturating_mul(segment_size)
            .saturating_add(segment_size - 1));
        crate::wal::history::timeline_of(&self.history, self.tip, last_byte)
    }

    /// (parent, switch point into `tli`) from the tip's history.
    pub fn parent_of(&self, tli: TimeLineId) -> (Option<TimeLineId>, Option<Lsn>) {
        let history = &self.history;
        match history.iter().position(|e| e.parent == tli) {
            _ if tli == self.tip => (
                history.last().map(|e| e.parent),
                history.last().map(|e| e.switchpoint),
            ),
            Some(0) | None => (None, None),
            Some(i) => (
                history.get(i - 1).map(|e| e.parent),
                history.get(i - 1).map(|e| e.switchpoint),
            ),
        }
    }
}

/// Parses the history files (`None`: present but unreadable, already
/// reported) and picks the tip's history; problems for malformed files,
/// histories that disagree, and a tip above 1 without a history file.
pub(super) fn timelines(
    segment_timelines: &[TimeLineId],
    histories: &BTreeMap<TimeLineId, Option<Vec<u8>>>,
    problems: &mut Vec<Problem>,
) -> Timelines {
    let newest = segment_timelines
        .iter()
        .copied()
        .chain(histories.keys().copied())
        .max();
    let mut parsed: HashMap<TimeLineId, Vec<HistoryEntry>> = HashMap::new();
    for (&tli, content) in histories {
        let Some(content) = content else { continue };
        let name = history_file_name(tli);
        match parse_history(content) {
            Err(e) => problems.push(Problem::history(
                &name,
                format!("malformed history file: {e}"),
            )),
            Ok(entries) => {
                if let Err(m) = check_history_for(tli, &entries) {
                    problems.push(Problem::history(&name, m));
                }
                parsed.insert(tli, entries);
            }
        }
    }
    let mut history: Vec<HistoryEntry> = Vec::new();
    if let Some(tip) = newest {
        match parsed.get(&tip) {
            Some(h) => history = h.clone(),
            None if tip > 1 && !histories.contains_key(&tip) => problems.push(Problem::history(
                &history_file_name(tip),
                format!("timeline {tip} has segments but no history file"),
            )),
            None => {}
        }
        problems.extend(older_histories_disagreeing(tip, &history, &parsed));
    }
    let tip = newest.unwrap_or(1);
    Timelines {
        newest,
        tip,
        history,
        history_known: tip == 1 || parsed.contains_key(&tip),
    }
}

/// Older history files must be prefixes of the newest one.
fn older_histories_disagreeing(
    tip: TimeLineId,
    history: &[HistoryEntry],
    parsed: &HashMap<TimeLineId, Vec<HistoryEntry>>,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    if history.is_empty() {
        return problems;
    }
    let mut older: Vec<_> = parsed.iter().filter(|(&tli, _)| tli != tip).collect();
    older.sort_by_key(|(&tli, _)| tli);
    for (&tli, entries) in older {
        let prefix_ok = entries.len() <= history.len()
            && entries.iter().zip(history).all(|(a, b)| a == b)
            && history.get(entries.len()).is_some_and(|e| e.parent == tli);
        if !prefix_ok {
            problems.push(Problem::history(
                &history_file_name(tli),
                format!("history of timeline {tli} is not an ancestor of timeline {tip}'s history"),
            ));
        }
    }
    problems
}

/// Problems of a segment file `name` of timeline `tli`, number `segno`, with
/// the history: not in the tip's history, after its timeline's switch point
/// (a forked-off branch), or before its timeline began (a warning).
pub(super) fn segment_timeline_problems(
    t: &Timelines,
    name: &str,
    tli: TimeLineId,
    segno: SegNo,
    segment_size: u64,
) -> Vec<Problem> {
    let seg_of = |l: Lsn| l.0 / segment_size;
    let tip = t.tip;
    if !t.in_chain(tli) {
        return vec![Problem::history(
            name,
            format!("timeline {tli} is not in the history of timeline {tip}"),
        )];
    }
    let mut problems = Vec::new();
    let Some((start, end)) = t.range(tli) else {
        return problems;
    };
    // The switch segment of an ancestor may exist (as .partial or complete);
    // anything after it is WAL of a forked-off branch.
    if let Some(end) = end.filter(|&end| segno > seg_of(end)) {
        problems.push(Problem::history(
            name,
            format!(
                "segment of timeline {tli} after its switch point {end} (timeline {tip}'s history moved on)"
            ),
        ));
    }
    if start.0 != 0 && segno < seg_of(start) {
        problems.push(Problem::history_warning(
            name,
            format!("segment of timeline {tli} before the timeline began at {start}"),
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::verify::report::{ProblemKind, Severity};

    const MB: u64 = 1 << 20;

    fn histories(files: &[(TimeLineId, &str)]) -> BTreeMap<TimeLineId, Option<Vec<u8>>> {
        files
            .iter()
            .map(|(t, c)| (*t, Some(c.as_bytes().to_vec())))
            .collect()
    }

    #[test]
    fn single_timeline_needs_no_history() {
        let mut problems = Vec::new();
        let t = timelines(&[1, 1], &BTreeMap::new(), &mut problems);
        assert!(problems.is_empty());
        assert_eq!((t.newest, t.tip, t.history_known), (Some(1), 1, true));
        assert!(t.in_chain(1));
        let t = timelines(&[], &BTreeMap::new(), &mut problems);
        assert_eq!((t.newest, t.tip), (None, 1));
    }

    #[test]
    fn tip_history_and_chain() {
        let mut problems = Vec::new();
        let h = histories(&[
            (2, "1\t0/C141F8\tno recovery target specified\n"),
            (3, "1\t0/C141F8\tx\n2\t0/E00000\ty\n"),
        ]);
        let t = timelines(&[1, 2, 3], &h, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(t.tip, 3);
        assert!(t.in_chain(1) && t.in_chain(2) && t.in_chain(3) && !t.in_chain(4));
        assert_eq!(t.owner_of_last_byte(0xB, MB), 1);
        assert_eq!(t.owner_of_last_byte(0xC, MB), 2);
        assert_eq!(t.owner_of_last_byte(0xE, MB), 3);
        assert_eq!(t.parent_of(3), (Some(2), Some(Lsn(0xE0_0000))));
        assert_eq!(t.parent_of(2), (Some(1), Some(Lsn(0xC1_41F8))));
        assert_eq!(t.parent_of(1), (None, None));
        // A segment of timeline 1 past its switch segment: a forked-off branch.
        let p = segment_timeline_problems(&t, "00000001000000000000000D", 1, 0xD, MB);
        assert_eq!(p.len(), 1);
        assert!(p[0].message.contains("after its switch point"), "{p:?}");
        assert!(
            segment_timeline_problems(&t, "00000001000000000000000C.partial", 1, 0xC, MB)
                .is_empty()
        );
        // A segment of timeline 2 before it began: a warning.
        let p = segment_timeline_problems(&t, "00000002000000000000000B", 2, 0xB, MB);
        assert_eq!(p[0].severity, Severity::Warning);
        let p = segment_timeline_problems(&t, "000000070000000000000010", 7, 0x10, MB);
        assert!(p[0].message.contains("not in the history"), "{p:?}");
    }

    #[test]
    fn missing_malformed_and_disagreeing_histories() {
        let mut problems = Vec::new();
        let t = timelines(&[1, 2], &BTreeMap::new(), &mut problems);
        assert!(!t.history_known);
        assert!(
            t.in_chain(5),
            "without history every timeline is assumed in order"
        );
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].kind, ProblemKind::History);
        assert!(problems[0].message.contains("no history file"));

        let mut problems = Vec::new();
        let h = histories(&[(2, "garbage"), (3, "1\t0/C141F8\tx\n2\t0/E00000\ty\n")]);
        timelines(&[3], &h, &mut problems);
        assert!(problems[0].message.contains("malformed"), "{problems:?}");

        let mut problems = Vec::new();
        let h = histories(&[
            (2, "1\t0/D00000\tx\n"),
            (3, "1\t0/C141F8\tx\n2\t0/E00000\ty\n"),
        ]);
        timelines(&[3], &h, &mut problems);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].message.contains("not an ancestor"));

        // Present but unreadable: reported by the inventory, not "missing" here.
        let mut problems = Vec::new();
        let mut h = BTreeMap::new();
        h.insert(2, None);
        timelines(&[2], &h, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
    }
}
