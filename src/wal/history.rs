//! Timeline history files (`TTTTTTTT.history`): parsing and lookups.
//!
//! Format: one line per ancestor timeline, `parentTLI<TAB>X/X<TAB>reason`; blank
//! lines and lines starting with `#` are skipped; parent TLIs strictly increase.
//! The TLI is decimal, the switch point `%X/%X` (1 to 8 hex digits per half, so the
//! PG 19 `%X/%08X` form parses too); the reason is free text and ignored.
//!
//! Entry `P  X/Y` means: timeline `P` was the history up to `X/Y` (exclusive); at `X/Y`
//! the next timeline of the chain (the next entry's parent, or the file's own timeline
//! for the last entry) begins.

use crate::lsn::{Lsn, TimeLineId};

/// One ancestor: timeline `parent` was the history up to `switchpoint` (exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryEntry {
    pub parent: TimeLineId,
    pub switchpoint: Lsn,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HistoryError {
    #[error("line {line}: {what}")]
    Syntax { line: usize, what: String },
}

/// Parses the content of a history file, oldest ancestor first.
///
/// Rules (PostgreSQL's `readTimeLineHistory`, stricter where it is lax): leading
/// whitespace is skipped; blank lines and `#` comments are ignored; each other line
/// must start with a decimal TLI, whitespace, and an `X/X` LSN; TLIs must be non-zero
/// and strictly increasing, switch points non-decreasing. Content must be UTF-8 up to
/// the reasons (which are not decoded).
pub fn parse_history(content: &[u8]) -> Result<Vec<HistoryEntry>, HistoryError> {
    let mut out: Vec<HistoryEntry> = Vec::new();
    for (i, raw) in content.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let syntax = |what: String| HistoryError::Syntax { line, what };
        let trimmed = trim_start(raw);
        if trimmed.is_empty() || trimmed == b"\r" || trimmed.first() == Some(&b'#') {
            continue;
        }
        let mut fields = trimmed
            .split(|&b| b == b'\t' || b == b' ' || b == b'\r')
            .filter(|f| !f.is_empty());
        let tli_text = fields.next().unwrap_or(&[]);
        let tli = std::str::from_utf8(tli_text)
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<TimeLineId>().ok())
            .filter(|&t| t > 0)
            .ok_or_else(|| {
                syntax(format!(
                    "invalid timeline ID {:?}",
                    String::from_utf8_lossy(tli_text)
                ))
            })?;
        let lsn_text = fields
            .next()
            .ok_or_else(|| syntax("expected a switch point after the timeline ID".into()))?;
        let switchpoint = std::str::from_utf8(lsn_text)
            .ok()
            .and_then(|s| s.parse::<Lsn>().ok())
            .ok_or_else(|| {
                syntax(format!(
                    "invalid switch point {:?}",
                    String::from_utf8_lossy(lsn_text)
                ))
            })?;
        if let Some(last) = out.last() {
            if tli <= last.parent {
                return Err(syntax(format!(
                    "timeline IDs must be in increasing sequence: {tli} after {}",
                    last.parent
                )));
            }
            if switchpoint < last.switchpoint {
                return Err(syntax(format!(
                    "switch point {switchpoint} is before the previous one {}",
                    last.switchpoint
                )));
            }
        }
        out.push(HistoryEntry {
            parent: tli,
            switchpoint,
        });
    }
    Ok(out)
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| matches!(c, b' ' | b'\t')).count();
    b.get(n..).unwrap_or(&[])
}

/// Checks that a parsed history fits the timeline `tli` whose file it is: every parent
/// is below `tli`.
pub fn check_history_for(tli: TimeLineId, entries: &[HistoryEntry]) -> Result<(), String> {
    match entries.iter().find(|e| e.parent >= tli) {
        Some(e) => Err(format!(
            "history of timeline {tli} lists timeline {} as an ancestor",
            e.parent
        )),
        None => Ok(()),
    }
}

/// The timeline of the history `entries` (of timeline `tip`) that contains `lsn`: the
/// first ancestor whose switch point is after `lsn`, else `tip`.
pub fn timeline_of(entries: &[HistoryEntry], tip: TimeLineId, lsn: Lsn) -> TimeLineId {
    entries
        .iter()
        .find(|e| lsn < e.switchpoint)
        .map_or(tip, |e| e.parent)
}

/// Where timeline `tli` of the history `entries` (of timeline `tip`) begins and ends:
/// `(start, end)`, `start` = the switch point into it (`Lsn(0)` for the oldest),
/// `end` = the switch point out of it (`None` for `tip`). `None` when `tli` is not in
/// the history.
pub fn timeline_range(
    entries: &[HistoryEntry],
    tip: TimeLineId,
    tli: TimeLineId,
) -> Option<(Lsn, Option<Lsn>)> {
    let mut start = Lsn(0);
    for e in entries {
        if e.parent == tli {
            return Some((start, Some(e.switchpoint)));
        }
        start = e.switchpoint;
    }
    (tli == tip).then_some((start, None))
}

/// The switch point at which `tli` (a timeline of the history of `tip`) began:
/// `None` for the oldest timeline or a timeline not in the history.
pub fn switchpoint_into(entries: &[HistoryEntry], tip: TimeLineId, tli: TimeLineId) -> Option<Lsn> {
    timeline_range(entries, tip, tli)
        .map(|(s, _)| s)
        .filter(|s| s.0 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_history() {
        let h = parse_history(b"1\t0/6003278\tno recovery target specified\n").unwrap();
        assert_eq!(
            h,
            vec![HistoryEntry {
                parent: 1,
                switchpoint: Lsn(0x600_3278)
            }]
        );
        let h = parse_history(
            b"1\t0/6003278\tno recovery target specified\n\n2\t0/8000000\tat restore point \"x\"\n# comment\n  \n3\t1/0000ABCD\tbefore 2024\n",
        )
        .unwrap();
        assert_eq!(h.len(), 3);
        assert_eq!(h[2].switchpoint, Lsn(0x1_0000_ABCD));
        assert_eq!(timeline_of(&h, 4, Lsn(0x600_3277)), 1);
        assert_eq!(timeline_of(&h, 4, Lsn(0x600_3278)), 2);
        assert_eq!(timeline_of(&h, 4, Lsn(0x2_0000_0000)), 4);
        assert_eq!(
            timeline_range(&h, 4, 2),
            Some((Lsn(0x600_3278), Some(Lsn(0x800_0000))))
        );
        assert_eq!(timeline_range(&h, 4, 4), Some((Lsn(0x1_0000_ABCD), None)));
        assert_eq!(timeline_range(&h, 4, 7), None);
        assert_eq!(switchpoint_into(&h, 4, 1), None);
        assert_eq!(switchpoint_into(&h, 4, 2), Some(Lsn(0x600_3278)));
        assert!(check_history_for(4, &h).is_ok());
        assert!(check_history_for(3, &h).is_err());
        assert_eq!(parse_history(b"").unwrap(), vec![]);
        assert_eq!(parse_history(b"1\t0/10\r\n").unwrap().len(), 1);
    }

    #[test]
    fn errors_name_the_line() {
        let cases: [(&[u8], usize); 7] = [
            (b"x\t0/1\n", 1),
            (b"1\t0/1\n\n1\t0/2\n", 3),
            (b"2\t0/1\n1\t0/2\n", 2),
            (b"1\n", 1),
            (b"1\t0/1\n2\tzz\n", 2),
            (b"0\t0/1\n", 1),
            (b"1\t0/5\n2\t0/4\n", 2),
        ];
        for (input, line) in cases {
            match parse_history(input) {
                Err(HistoryError::Syntax { line: l, .. }) => assert_eq!(l, line, "{input:?}"),
                other => panic!("{input:?}: {other:?}"),
            }
        }
        assert!(parse_history(b"99999999999\t0/1\n").is_err());
        assert!(parse_history(&[0xFF, b'\t', b'0']).is_err());
    }
}
