//! The human output of `walrcv status`: the Nagios summary line first
//! (`WALRCV STATE - summary | performance data`), then the details.

use std::fmt::Write;

use super::check::{human_bytes, Problem};
use super::server::ServerFacts;
use super::{LagReport, StatusReport};

/// The summary: every problem's message, worst first, or what is OK.
pub fn summary(
    problems: &[Problem],
    server: Option<&ServerFacts>,
    lag: Option<&LagReport>,
) -> String {
    if !problems.is_empty() {
        return problems
            .iter()
            .map(|p| p.message.as_str())
            .collect::<Vec<_>>()
            .join("; ");
    }
    match (server, lag) {
        (Some(s), Some(l)) => format!(
            "archive current on timeline {}: {} behind the server at {}",
            s.timeline,
            human_bytes(l.bytes),
            s.position
        ),
        _ => "no problem found".into(),
    }
}

/// Nagios performance data: `lag_bytes=N;warn;crit;0 lag_seconds=Ns;warn;crit;0`.
fn perfdata(r: &StatusReport) -> String {
    let Some(lag) = &r.lag else {
        return String::new();
    };
    let t = &r.thresholds;
    let mut out = format!(
        " | lag_bytes={}B;{};{};0",
        lag.bytes, t.warning_lag_bytes, t.critical_lag_bytes
    );
    if let Some(s) = lag.seconds {
        let _ = write!(
            out,
            " lag_seconds={s}s;{};{};0",
            t.warning_lag_seconds, t.critical_lag_seconds
        );
    }
    out
}

pub fn human(r: &StatusReport) -> String {
    let mut out = format!(
        "WALRCV {} - {}{}\n",
        r.state.label(),
        r.summary,
        perfdata(r)
    );
    if let Some(a) = &r.archive {
        let _ = writeln!(
            out,
            "archive: {} (segment size {})",
            a.directory.display(),
            human_bytes(a.wal_segment_size)
        );
        for t in &a.timelines {
            let _ = writeln!(
                out,
                "  timeline {}: {} segment files, {} to {}{}",
                t.timeline,
                t.segments,
                t.first,
                t.newest,
                if t.newest_partial { ".partial" } else { "" }
            );
        }
        if let Some(end) = &a.archived_end {
            let age = a
                .newest_file_age_seconds
                .map(|s| format!(" (newest file written {s} s ago)"))
                .unwrap_or_default();
            let _ = writeln!(out, "  archived up to {end}{age}");
        }
        for c in &a.partial_copies {
            let _ = writeln!(
                out,
                "  .partial copy of {} by {}: {} ({})",
                c.segment,
                c.receiver,
                c.object,
                human_bytes(c.size)
            );
        }
        for c in &a.conflict_markers {
            let _ = writeln!(
                out,
                "  conflict: {} (by {}), marker {}",
                c.object, c.receiver, c.marker
            );
        }
        if a.divergent_files > 0 {
            let _ = writeln!(
                out,
                "  divergent: {} file{} set aside after a failover ({}), see walrcv verify",
                a.divergent_files,
                if a.divergent_files == 1 { "" } else { "s" },
                human_bytes(a.divergent_bytes)
            );
        }
        for g in &a.gaps {
            let _ = if g.segments == 1 {
                writeln!(out, "  gap: {} (1 segment)", g.first_missing)
            } else {
                writeln!(
                    out,
                    "  gap: {} to {} ({} segments)",
                    g.first_missing, g.last_missing, g.segments
                )
            };
        }
    }
    if let Some(s) = &r.server {
        let _ = writeln!(
            out,
            "server: {}{}, system {}, timeline {}, position {}",
            s.target,
            s.version
                .as_deref()
                .map(|v| format!(" (PostgreSQL {v})"))
                .unwrap_or_default(),
            s.system_identifier,
            s.timeline,
            s.position
        );
    }
    if let Some(l) = &r.lag {
        let secs = l.seconds.map(|s| format!(", {s} s")).unwrap_or_default();
        let exact = if l.bytes >= 1024 {
            format!(" ({} bytes)", l.bytes)
        } else {
            String::new()
        };
        let _ = writeln!(out, "lag: {}{exact}{secs}", human_bytes(l.bytes));
    }
    if let Some(s) = &r.slot {
        out.push_str(&slot_line(s));
    }
    if let Some(l) = &r.walrcv {
        out.push_str(&live_line(l));
    }
    if !r.problems.is_empty() {
        out.push_str("problems:\n");
        for p in &r.problems {
            let _ = writeln!(out, "  {} {}: {}", p.state.label(), p.kind, p.message);
        }
    }
    out
}

fn slot_line(s: &super::check::SlotFacts) -> String {
    let mut parts = Vec::new();
    match s.exists {
        Some(false) => parts.push("does not exist".to_string()),
        None => parts.push("state unknown".to_string()),
        Some(true) => {}
    }
    if let Some(l) = &s.restart_lsn {
        parts.push(format!("restart_lsn {l}"));
    }
    if let Some(a) = s.active {
        parts.push(if a { "active" } else { "inactive" }.to_string());
    }
    if let Some(w) = &s.wal_status {
        parts.push(format!("wal_status {w}"));
    }
    if s.wal_status.is_some() {
        parts.push(match s.safe_wal_size {
            Some(b) => format!(
                "safe_wal_size {}",
                human_bytes(u64::try_from(b).unwrap_or(0))
            ),
            None => "safe_wal_size unlimited".to_string(),
        });
    }
    if let Some(r) = &s.invalidation_reason {
        parts.push(format!("invalidated: {r}"));
    }
    if let Some(why) = &s.details_unavailable {
        parts.push(format!("details unavailable: {why}"));
    }
    format!("slot \"{}\": {}\n", s.name, parts.join(", "))
}

fn live_line(l: &super::check::LiveFacts) -> String {
    if let Some(e) = &l.error {
        return format!("walrcv {}: unreachable: {e}\n", l.url);
    }
    let mut parts = Vec::new();
    if let Some(v) = &l.version {
        parts.push(format!("version {v}"));
    }
    if let Some(c) = l.connected {
        parts.push(if c { "connected" } else { "not connected" }.to_string());
    }
    if let Some(t) = l.server_timeline {
        parts.push(format!("timeline {t}"));
    }
    if let Some(f) = &l.flushed_lsn {
        parts.push(format!("flushed {f}"));
    }
    if let Some(b) = l.lag_bytes {
        parts.push(format!("lag {}", human_bytes(b)));
    }
    if let Some(n) = l.reconnects {
        parts.push(format!("{n} reconnects"));
    }
    if let Some(k) = &l.last_disconnect_kind {
        parts.push(format!("last disconnect: {k}"));
    }
    format!("walrcv {}: {}\n", l.url, parts.join(", "))
}
