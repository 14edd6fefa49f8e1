//! The decisions of `walrcv status`, as pure functions over what was gathered:
//! the gaps inside the archive, the lag behind the server, and which findings
//! are OK, WARNING, CRITICAL or UNKNOWN (the Nagios plugin states).
//!
//! Nothing here does IO: [`super::archive`], [`super::server`] and
//! [`super::metrics`] gather the facts, [`evaluate`] judges them.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::lsn::{segment_start_lsn, wal_file_name, Lsn, SegNo, TimeLineId};

/// A Nagios plugin state. The derived order is the severity used to combine
/// findings: a definite CRITICAL beats UNKNOWN (a gap in the archive is known
/// even when the server cannot be reached), and UNKNOWN beats WARNING (the main
/// question, "is the archive current?", could not be answered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    Ok,
    Warning,
    Unknown,
    Critical,
}

impl State {
    /// The Nagios exit status: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
    pub fn exit_code(self) -> i32 {
        match self {
            State::Ok => 0,
            State::Warning => 1,
            State::Critical => 2,
            State::Unknown => 3,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            State::Ok => "OK",
            State::Warning => "WARNING",
            State::Critical => "CRITICAL",
            State::Unknown => "UNKNOWN",
        }
    }
}

/// The limits a finding is compared with (the `--warning-*`/`--critical-*` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Thresholds {
    pub warning_lag_bytes: u64,
    pub critical_lag_bytes: u64,
    pub warning_lag_seconds: u64,
    pub critical_lag_seconds: u64,
    /// A slot whose `safe_wal_size` is below this is a WARNING ...
    pub warning_safe_wal_size: u64,
    /// ... and below this a CRITICAL.
    pub critical_safe_wal_size: u64,
}

/// One segment file as the status sees it: timeline, number, and whether it is
/// still a `.partial`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentEntry {
    pub timeline: TimeLineId,
    pub segno: SegNo,
    pub partial: bool,
}

/// The newest WAL of one timeline in the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimelineNewest {
    pub timeline: TimeLineId,
    /// Segment files of this timeline (complete and `.partial`).
    pub segments: usize,
    /// The oldest and newest file names (without `.partial`).
    pub first: String,
    pub newest: String,
    pub newest_partial: bool,
}

/// A run of missing segments between the first and the newest in the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap {
    /// Name of the first missing segment (on the timeline of the file before it).
    pub first_missing: String,
    /// Name of the last missing segment.
    pub last_missing: String,
    pub segments: u64,
}

/// The newest file of each timeline, oldest timeline first.
pub fn newest_per_timeline(segments: &[SegmentEntry], segment_size: u64) -> Vec<TimelineNewest> {
    let mut by_tli: BTreeMap<TimeLineId, Vec<&SegmentEntry>> = BTreeMap::new();
    for s in segments {
        by_tli.entry(s.timeline).or_default().push(s);
    }
    by_tli
        .into_iter()
        .filter_map(|(timeline, segs)| {
            let first = segs.iter().min_by_key(|s| s.segno)?;
            // A complete file beats a `.partial` of the same number.
            let newest = segs.iter().max_by_key(|s| (s.segno, !s.partial))?;
            Some(TimelineNewest {
                timeline,
                segments: segs.len(),
                first: wal_file_name(timeline, first.segno, segment_size),
                newest: wal_file_name(timeline, newest.segno, segment_size),
                newest_partial: newest.partial,
            })
        })
        .collect()
}

/// Segment numbers between the first and the newest with no file on any
/// timeline. A number held by any timeline counts as present: after a switch
/// the same number exists on both, and which one recovery needs is
/// `walrcv verify`'s deeper check, not this quick one.
pub fn gaps(segments: &[SegmentEntry], segment_size: u64) -> Vec<Gap> {
    let mut present: BTreeMap<SegNo, TimeLineId> = BTreeMap::new();
    for s in segments {
        let tli = present.entry(s.segno).or_insert(s.timeline);
        *tli = (*tli).max(s.timeline);
    }
    let mut out = Vec::new();
    let mut prev: Option<(SegNo, TimeLineId)> = None;
    for (&segno, &tli) in &present {
        if let Some((p, ptli)) = prev {
            if segno > p + 1 {
                out.push(Gap {
                    first_missing: wal_file_name(ptli, p + 1, segment_size),
                    last_missing: wal_file_name(ptli, segno - 1, segment_size),
                    segments: segno - p - 1,
                });
            }
        }
        prev = Some((segno, tli));
    }
    out
}

/// Where the archived WAL ends: the end of the newest complete segment, or
/// inside the newest `.partial` at `partial_written` bytes (as estimated by
/// [`super::archive`]). `None` for an empty archive.
pub fn archived_end(
    newest: Option<SegmentEntry>,
    partial_written: u64,
    segment_size: u64,
) -> Option<Lsn> {
    let n = newest?;
    let start = segment_start_lsn(n.segno, segment_size);
    Some(if n.partial {
        Lsn(start.0 + partial_written.min(segment_size))
    } else {
        Lsn(start.0 + segment_size)
    })
}

/// How far the archive is behind the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Lag {
    /// The server's position minus the archived end (0 when the archive is at
    /// or past it: a standby's replay can trail what it already sent).
    pub bytes: u64,
    /// How long the archive has been behind: 0 when it is current, else the
    /// age of its newest file (its last write) — an idle server costs nothing,
    /// a stopped receiver grows it from the moment it stopped writing.
    pub seconds: Option<u64>,
}

pub fn lag(archived_end: Lsn, server_position: Lsn, newest_file_age_secs: Option<u64>) -> Lag {
    let bytes = server_position.0.saturating_sub(archived_end.0);
    Lag {
        bytes,
        seconds: if bytes == 0 {
            Some(0)
        } else {
            newest_file_age_secs
        },
    }
}

/// The state of the slot named by `--slot`, as read from the server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SlotFacts {
    pub name: String,
    /// `None` when it could not be told (server before 15 and no normal connection).
    pub exists: Option<bool>,
    pub restart_lsn: Option<String>,
    pub active: Option<bool>,
    /// `pg_replication_slots.wal_status`: reserved, extended, unreserved, lost.
    pub wal_status: Option<String>,
    /// `pg_replication_slots.safe_wal_size` (NULL when `max_slot_wal_keep_size` is -1).
    pub safe_wal_size: Option<i64>,
    /// `pg_replication_slots.invalidation_reason` (17+).
    pub invalidation_reason: Option<String>,
    /// Why the details (`wal_status`...) could not be read over a normal connection.
    pub details_unavailable: Option<String>,
}

/// What a running `walrcv stream` says on its metrics endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LiveFacts {
    pub url: String,
    /// Why the endpoint could not be read (then every other field is `None`).
    pub error: Option<String>,
    pub version: Option<String>,
    pub connected: Option<bool>,
    pub server_timeline: Option<u64>,
    pub flushed_lsn: Option<String>,
    pub server_wal_end_lsn: Option<String>,
    pub lag_bytes: Option<u64>,
    pub reconnects: Option<u64>,
    pub verification_failures: Option<u64>,
    pub last_disconnect_kind: Option<String>,
    pub archive_free_bytes: Option<u64>,
    /// `--upload`: files whose object holds other content (critical).
    pub upload_conflicted_files: Option<u64>,
    /// `--upload`: files not yet confirmed in the object store.
    pub upload_backlog_files: Option<u64>,
    /// `--upload`: age of the oldest of them.
    pub upload_oldest_pending_seconds: Option<u64>,
}

/// An upload backlog older than this is a WARNING in `walrcv status`.
pub const UPLOAD_BACKLOG_WARNING_SECS: u64 = 3600;

/// A finding that is not OK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub state: State,
    /// A stable identifier: `server_unreachable`, `archive_unreadable`,
    /// `archive_empty`, `gap`, `timeline_missing`, `lag_bytes`, `lag_seconds`,
    /// `slot_missing`, `slot_invalidated`, `slot_unreserved`, `slot_safe_wal_size`,
    /// `slot_unknown`, `metrics_unreachable`, `receiver_disconnected`,
    /// `verification_failures`, `upload_conflict`, `upload_backlog`,
    /// `bucket_conflict`.
    pub kind: &'static str,
    pub message: String,
}

/// The one way a [`Problem`] is made (here and by the gathering in `mod.rs`).
pub(super) fn problem(state: State, kind: &'static str, message: String) -> Problem {
    Problem {
        state,
        kind,
        message,
    }
}

/// Everything [`evaluate`] judges. `None` fields were not gathered (the server
/// or the archive could not be read: that is itself a problem in `errors`).
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Problems met while gathering (unreachable server, unreadable archive).
    pub errors: Vec<Problem>,
    /// Timelines the archive holds segments of, and its gaps.
    pub archive_timelines: Option<Vec<TimeLineId>>,
    pub archive_histories: Vec<TimeLineId>,
    pub gaps: Vec<Gap>,
    pub server_timeline: Option<TimeLineId>,
    pub lag: Option<Lag>,
    pub slot: Option<SlotFacts>,
    pub live: Option<LiveFacts>,
    /// From a bucket's conflict markers: (conflicting object's key, receiver).
    pub bucket_conflicts: Vec<(String, String)>,
}

/// Judges the facts: every problem, worst first.
pub fn evaluate(f: &Facts, t: &Thresholds) -> Vec<Problem> {
    let mut out = f.errors.clone();
    archive_problems(f, &mut out);
    conflict_problems(&f.bucket_conflicts, &mut out);
    if let Some(lag) = f.lag {
        lag_problems(lag, t, &mut out);
    }
    if let Some(slot) = &f.slot {
        slot_problems(slot, t, &mut out);
    }
    if let Some(live) = &f.live {
        live_problems(live, &mut out);
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.state));
    out
}

/// The overall state: the worst problem's, OK when there is none.
pub fn overall(problems: &[Problem]) -> State {
    problems.iter().map(|p| p.state).max().unwrap_or(State::Ok)
}

fn archive_problems(f: &Facts, out: &mut Vec<Problem>) {
    let Some(timelines) = &f.archive_timelines else {
        return;
    };
    if timelines.is_empty() {
        out.push(problem(
            State::Critical,
            "archive_empty",
            "the archive holds no WAL segment".into(),
        ));
        return;
    }
    for g in &f.gaps {
        let what = if g.segments == 1 {
            format!("segment {} is missing", g.first_missing)
        } else {
            format!(
                "{} segments are missing, {} to {}",
                g.segments, g.first_missing, g.last_missing
            )
        };
        out.push(problem(
            State::Critical,
            "gap",
            format!("gap in the archive: {what}"),
        ));
    }
    if let Some(tli) = f.server_timeline {
        if !timelines.contains(&tli) {
            let history = if tli == 1 || f.archive_histories.contains(&tli) {
                ""
            } else {
                " nor its history file"
            };
            out.push(problem(
                State::Critical,
                "timeline_missing",
                format!(
                    "the server is on timeline {tli}, but the archive has no WAL of it{history}"
                ),
            ));
        }
    }
}

/// The bucket's conflict markers: CRITICAL, one problem naming every
/// conflicting object (and the receivers that met it).
fn conflict_problems(conflicts: &[(String, String)], out: &mut Vec<Problem>) {
    if conflicts.is_empty() {
        return;
    }
    let mut by_object: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for (object, receiver) in conflicts {
        by_object.entry(object).or_default().push(receiver);
    }
    let named: Vec<String> = by_object
        .iter()
        .map(|(object, receivers)| format!("\"{object}\" (by {})", receivers.join(", ")))
        .collect();
    out.push(problem(
        State::Critical,
        "bucket_conflict",
        format!(
            "upload conflict in the bucket: {} holds other content than a receiver's local file (nothing was overwritten; delete its marker under conflicts/ once resolved)",
            named.join(", ")
        ),
    ));
}

fn lag_problems(lag: Lag, t: &Thresholds, out: &mut Vec<Problem>) {
    let bytes_state = over(lag.bytes, t.warning_lag_bytes, t.critical_lag_bytes);
    if bytes_state != State::Ok {
        out.push(problem(
            bytes_state,
            "lag_bytes",
            format!(
                "the archive is {} behind the server (warning at {}, critical at {})",
                human_bytes(lag.bytes),
                human_bytes(t.warning_lag_bytes),
                human_bytes(t.critical_lag_bytes)
            ),
        ));
    }
    if let Some(secs) = lag.seconds {
        let secs_state = over(secs, t.warning_lag_seconds, t.critical_lag_seconds);
        if secs_state != State::Ok {
            out.push(problem(
                secs_state,
                "lag_seconds",
                format!(
                    "the archive has not received WAL for {secs} s while the server has more (warning at {} s, critical at {} s)",
                    t.warning_lag_seconds, t.critical_lag_seconds
                ),
            ));
        }
    }
}

/// CRITICAL at or above `critical`, WARNING at or above `warning`, else OK
/// (Nagios ranges: "alert if more than", with the limit itself alerting).
fn over(value: u64, warning: u64, critical: u64) -> State {
    if value >= critical {
        State::Critical
    } else if value >= warning {
        State::Warning
    } else {
        State::Ok
    }
}

fn slot_problems(s: &SlotFacts, t: &Thresholds, out: &mut Vec<Problem>) {
    let name = &s.name;
    match s.exists {
        Some(false) => {
            out.push(problem(
                State::Critical,
                "slot_missing",
                format!("replication slot \"{name}\" does not exist"),
            ));
            return;
        }
        None => {
            out.push(problem(
                State::Warning,
                "slot_unknown",
                format!(
                    "the state of replication slot \"{name}\" could not be read: {}",
                    s.details_unavailable
                        .as_deref()
                        .unwrap_or("no reason given")
                ),
            ));
            return;
        }
        Some(true) => {}
    }
    if let Some(reason) = &s.invalidation_reason {
        out.push(problem(
            State::Critical,
            "slot_invalidated",
            format!(
                "replication slot \"{name}\" is invalidated ({reason}): it no longer protects WAL"
            ),
        ));
    }
    match s.wal_status.as_deref() {
        Some("lost") if s.invalidation_reason.is_none() => out.push(problem(
            State::Critical,
            "slot_invalidated",
            format!("replication slot \"{name}\" has lost WAL (wal_status lost)"),
        )),
        Some("unreserved") => out.push(problem(
            State::Critical,
            "slot_unreserved",
            format!(
                "replication slot \"{name}\" is about to lose WAL (wal_status unreserved: past max_slot_wal_keep_size)"
            ),
        )),
        _ => {}
    }
    if let Some(safe) = s.safe_wal_size {
        let safe = u64::try_from(safe).unwrap_or(0);
        let state = under(safe, t.warning_safe_wal_size, t.critical_safe_wal_size);
        if state != State::Ok {
            out.push(problem(
                state,
                "slot_safe_wal_size",
                format!(
                    "replication slot \"{name}\" is invalidated after {} more WAL (safe_wal_size; warning under {}, critical under {})",
                    human_bytes(safe),
                    human_bytes(t.warning_safe_wal_size),
                    human_bytes(t.critical_safe_wal_size)
                ),
            ));
        }
    }
}

/// CRITICAL below `critical`, WARNING below `warning`, else OK.
fn under(value: u64, warning: u64, critical: u64) -> State {
    if value < critical {
        State::Critical
    } else if value < warning {
        State::Warning
    } else {
        State::Ok
    }
}

fn live_problems(l: &LiveFacts, out: &mut Vec<Problem>) {
    if let Some(e) = &l.error {
        // The archive and server checks still say whether the archive is
        // current: a receiver whose metrics cannot be read is a WARNING.
        out.push(problem(
            State::Warning,
            "metrics_unreachable",
            format!("could not read walrcv's metrics at {}: {e}", l.url),
        ));
        return;
    }
    if l.connected == Some(false) {
        let why = l
            .last_disconnect_kind
            .as_deref()
            .map(|k| format!(" (last disconnect: {k})"))
            .unwrap_or_default();
        out.push(problem(
            State::Warning,
            "receiver_disconnected",
            format!("walrcv is running but not connected to the server{why}"),
        ));
    }
    if let Some(n) = l.verification_failures.filter(|&n| n > 0) {
        out.push(problem(
            State::Warning,
            "verification_failures",
            format!("walrcv has counted {n} WAL verification failures since it started"),
        ));
    }
    upload_problems(l, out);
}

/// `--upload`: a conflict is CRITICAL (an object of that name holds other
/// WAL: another cluster or receiver writes to the prefix); a backlog older
/// than [`UPLOAD_BACKLOG_WARNING_SECS`] a WARNING.
fn upload_problems(l: &LiveFacts, out: &mut Vec<Problem>) {
    if let Some(n) = l.upload_conflicted_files.filter(|&n| n > 0) {
        out.push(problem(
            State::Critical,
            "upload_conflict",
            format!("{n} files could not be uploaded: their objects in the store hold different content (nothing was overwritten; see walrcv's log)"),
        ));
    }
    if let Some(age) = l
        .upload_oldest_pending_seconds
        .filter(|&a| a >= UPLOAD_BACKLOG_WARNING_SECS)
    {
        out.push(problem(
            State::Warning,
            "upload_backlog",
            format!(
                "{} files wait for upload to the object store, the oldest for {age} s",
                l.upload_backlog_files.unwrap_or(0)
            ),
        ));
    }
}

/// `1536` → `1.5 KiB`: sizes in problems and the human output.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} bytes")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Parses a size flag: bytes, or a number with `kB`, `MB`, `GB`, `TB` (powers of
/// 1024, as in postgresql.conf; `KiB`... and lower case are accepted too).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = t[..digits]
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 16MB, 1GB or a number of bytes)"))?;
    let mult: u64 = match t[digits..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "kib" => 1 << 10,
        "mb" | "mib" => 1 << 20,
        "gb" | "gib" => 1 << 30,
        "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {s:?} (use kB, MB, GB, TB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;
    const MB: u64 = 1 << 20;

    fn seg(timeline: TimeLineId, segno: SegNo, partial: bool) -> SegmentEntry {
        SegmentEntry {
            timeline,
            segno,
            partial,
        }
    }

    fn thresholds() -> Thresholds {
        Thresholds {
            warning_lag_bytes: 16 * MB,
            critical_lag_bytes: 128 * MB,
            warning_lag_seconds: 60,
            critical_lag_seconds: 300,
            warning_safe_wal_size: 1024 * MB,
            critical_safe_wal_size: 128 * MB,
        }
    }

    fn kinds(p: &[Problem]) -> Vec<(&'static str, State)> {
        p.iter().map(|p| (p.kind, p.state)).collect()
    }

    #[test]
    fn exit_codes_follow_nagios() {
        assert_eq!(State::Ok.exit_code(), 0);
        assert_eq!(State::Warning.exit_code(), 1);
        assert_eq!(State::Critical.exit_code(), 2);
        assert_eq!(State::Unknown.exit_code(), 3);
        assert_eq!(overall(&[]), State::Ok);
        let p = |s| problem(s, "x", String::new());
        assert_eq!(
            overall(&[p(State::Warning), p(State::Unknown)]),
            State::Unknown
        );
        assert_eq!(
            overall(&[p(State::Critical), p(State::Unknown)]),
            State::Critical
        );
    }

    #[test]
    fn gaps_are_named_and_counted() {
        let segs = [
            seg(1, 1, false),
            seg(1, 2, false),
            seg(1, 5, false),
            seg(1, 6, true),
        ];
        let g = gaps(&segs, SEG);
        assert_eq!(
            g,
            vec![Gap {
                first_missing: "000000010000000000000003".into(),
                last_missing: "000000010000000000000004".into(),
                segments: 2
            }]
        );
        assert!(gaps(&segs[..2], SEG).is_empty());
        assert!(gaps(&[], SEG).is_empty());
    }

    #[test]
    fn a_timeline_switch_is_not_a_gap() {
        // Segment 3 on both timelines (the old one's .partial), then 4 on the new.
        let segs = [
            seg(1, 2, false),
            seg(1, 3, true),
            seg(2, 3, false),
            seg(2, 4, true),
        ];
        assert!(gaps(&segs, SEG).is_empty());
        let n = newest_per_timeline(&segs, SEG);
        assert_eq!(n.len(), 2);
        assert_eq!(n[0].newest, "000000010000000000000003");
        assert!(n[0].newest_partial);
        assert_eq!(n[1].first, "000000020000000000000003");
        assert_eq!(n[1].segments, 2);
    }

    #[test]
    fn newest_prefers_complete_over_partial() {
        let n = newest_per_timeline(&[seg(1, 7, true), seg(1, 7, false)], SEG);
        assert!(!n[0].newest_partial);
    }

    #[test]
    fn archived_end_of_complete_and_partial() {
        assert_eq!(archived_end(None, 0, SEG), None);
        assert_eq!(
            archived_end(Some(seg(1, 2, false)), 0, SEG),
            Some(Lsn(3 * SEG))
        );
        assert_eq!(
            archived_end(Some(seg(1, 2, true)), 8192, SEG),
            Some(Lsn(2 * SEG + 8192))
        );
        // An estimate past the segment is clamped.
        assert_eq!(
            archived_end(Some(seg(1, 2, true)), 2 * SEG, SEG),
            Some(Lsn(3 * SEG))
        );
    }

    #[test]
    fn lag_time_counts_only_while_behind() {
        assert_eq!(
            lag(Lsn(100), Lsn(100), Some(3600)),
            Lag {
                bytes: 0,
                seconds: Some(0)
            }
        );
        assert_eq!(lag(Lsn(200), Lsn(100), Some(3600)).bytes, 0);
        assert_eq!(
            lag(Lsn(100), Lsn(150), Some(42)),
            Lag {
                bytes: 50,
                seconds: Some(42)
            }
        );
    }

    #[test]
    fn lag_thresholds() {
        let t = thresholds();
        let eval = |bytes, seconds| {
            let f = Facts {
                archive_timelines: Some(vec![1]),
                server_timeline: Some(1),
                lag: Some(Lag { bytes, seconds }),
                ..Facts::default()
            };
            evaluate(&f, &t)
        };
        assert!(eval(0, Some(0)).is_empty());
        assert_eq!(
            kinds(&eval(16 * MB, Some(0))),
            [("lag_bytes", State::Warning)]
        );
        assert_eq!(
            kinds(&eval(128 * MB, None)),
            [("lag_bytes", State::Critical)]
        );
        assert_eq!(
            kinds(&eval(MB, Some(61))),
            [("lag_seconds", State::Warning)]
        );
        assert_eq!(
            kinds(&eval(200 * MB, Some(301))),
            [
                ("lag_bytes", State::Critical),
                ("lag_seconds", State::Critical)
            ]
        );
    }

    #[test]
    fn a_bucket_conflict_marker_is_critical_and_named() {
        let t = thresholds();
        let f = Facts {
            archive_timelines: Some(vec![1]),
            bucket_conflicts: vec![
                ("db1/000000010000000000000003".into(), "walrcv_a".into()),
                ("db1/000000010000000000000003".into(), "walrcv_b".into()),
                ("db1/00000002.history".into(), "walrcv_a".into()),
            ],
            ..Facts::default()
        };
        let p = evaluate(&f, &t);
        assert_eq!(kinds(&p), [("bucket_conflict", State::Critical)]);
        let m = &p[0].message;
        assert!(
            m.contains("\"db1/000000010000000000000003\" (by walrcv_a, walrcv_b)"),
            "{m}"
        );
        assert!(m.contains("\"db1/00000002.history\" (by walrcv_a)"), "{m}");
        let none = Facts {
            archive_timelines: Some(vec![1]),
            ..Facts::default()
        };
        assert!(evaluate(&none, &t).is_empty());
    }

    #[test]
    fn archive_findings() {
        let t = thresholds();
        let empty = Facts {
            archive_timelines: Some(vec![]),
            server_timeline: Some(1),
            ..Facts::default()
        };
        assert_eq!(
            kinds(&evaluate(&empty, &t)),
            [("archive_empty", State::Critical)]
        );
        let behind_timeline = Facts {
            archive_timelines: Some(vec![1]),
            server_timeline: Some(2),
            ..Facts::default()
        };
        let p = evaluate(&behind_timeline, &t);
        assert_eq!(kinds(&p), [("timeline_missing", State::Critical)]);
        assert!(p[0].message.contains("timeline 2"), "{}", p[0].message);
        assert!(p[0].message.contains("history"), "{}", p[0].message);
        let gap = Facts {
            archive_timelines: Some(vec![1]),
            gaps: gaps(&[seg(1, 1, false), seg(1, 3, false)], SEG),
            ..Facts::default()
        };
        let p = evaluate(&gap, &t);
        assert_eq!(kinds(&p), [("gap", State::Critical)]);
        assert!(p[0].message.contains("000000010000000000000002"));
    }

    #[test]
    fn unknown_server_keeps_a_known_gap_critical() {
        let f = Facts {
            errors: vec![problem(State::Unknown, "server_unreachable", "x".into())],
            archive_timelines: Some(vec![1]),
            gaps: gaps(&[seg(1, 1, false), seg(1, 3, false)], SEG),
            ..Facts::default()
        };
        let p = evaluate(&f, &thresholds());
        assert_eq!(overall(&p), State::Critical);
        assert_eq!(p[1].kind, "server_unreachable");
    }

    fn slot(f: impl FnOnce(&mut SlotFacts)) -> Vec<(&'static str, State)> {
        let mut s = SlotFacts {
            name: "walrcv".into(),
            exists: Some(true),
            wal_status: Some("reserved".into()),
            ..SlotFacts::default()
        };
        f(&mut s);
        let facts = Facts {
            slot: Some(s),
            ..Facts::default()
        };
        kinds(&evaluate(&facts, &thresholds()))
    }

    #[test]
    fn slot_findings() {
        assert!(slot(|_| {}).is_empty());
        assert!(slot(|s| s.wal_status = Some("extended".into())).is_empty());
        assert_eq!(
            slot(|s| s.exists = Some(false)),
            [("slot_missing", State::Critical)]
        );
        assert_eq!(
            slot(|s| s.exists = None),
            [("slot_unknown", State::Warning)]
        );
        assert_eq!(
            slot(|s| s.wal_status = Some("unreserved".into())),
            [("slot_unreserved", State::Critical)]
        );
        assert_eq!(
            slot(|s| s.wal_status = Some("lost".into())),
            [("slot_invalidated", State::Critical)]
        );
        assert_eq!(
            slot(|s| {
                s.wal_status = Some("lost".into());
                s.invalidation_reason = Some("wal_removed".into());
            }),
            [("slot_invalidated", State::Critical)]
        );
        assert_eq!(
            slot(|s| s.safe_wal_size = Some(512 << 20)),
            [("slot_safe_wal_size", State::Warning)]
        );
        assert_eq!(
            slot(|s| s.safe_wal_size = Some(-5)),
            [("slot_safe_wal_size", State::Critical)]
        );
        assert!(slot(|s| s.safe_wal_size = Some(4 << 30)).is_empty());
    }

    #[test]
    fn live_findings() {
        let eval = |l: LiveFacts| {
            kinds(&evaluate(
                &Facts {
                    live: Some(l),
                    ..Facts::default()
                },
                &thresholds(),
            ))
        };
        assert!(eval(LiveFacts {
            connected: Some(true),
            verification_failures: Some(0),
            ..LiveFacts::default()
        })
        .is_empty());
        assert_eq!(
            eval(LiveFacts {
                error: Some("refused".into()),
                ..LiveFacts::default()
            }),
            [("metrics_unreachable", State::Warning)]
        );
        assert_eq!(
            eval(LiveFacts {
                connected: Some(false),
                last_disconnect_kind: Some("network".into()),
                ..LiveFacts::default()
            }),
            [("receiver_disconnected", State::Warning)]
        );
        assert_eq!(
            eval(LiveFacts {
                upload_conflicted_files: Some(1),
                upload_backlog_files: Some(3),
                upload_oldest_pending_seconds: Some(UPLOAD_BACKLOG_WARNING_SECS),
                ..LiveFacts::default()
            }),
            [
                ("upload_conflict", State::Critical),
                ("upload_backlog", State::Warning)
            ]
        );
        assert!(eval(LiveFacts {
            upload_conflicted_files: Some(0),
            upload_backlog_files: Some(3),
            upload_oldest_pending_seconds: Some(UPLOAD_BACKLOG_WARNING_SECS - 1),
            ..LiveFacts::default()
        })
        .is_empty());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16MB"), Ok(16 << 20));
        assert_eq!(parse_size("1 GB"), Ok(1 << 30));
        assert_eq!(parse_size("512kB"), Ok(512 << 10));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("99999999999TB").is_err());
        assert_eq!(human_bytes(10), "10 bytes");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(48 << 20), "48.0 MiB");
    }
}
