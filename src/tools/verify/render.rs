//! The render stage: the human-readable form of a [`VerifyReport`] (the JSON
//! form is its serde serialization).

use super::report::{Severity, VerifyReport};
use crate::lsn::Lsn;

fn human_bytes(n: u64) -> String {
    if n >= 1 << 30 {
        format!("{:.1} GiB", n as f64 / f64::from(1u32 << 30))
    } else if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20))
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

pub(super) fn opt_lsn(l: Option<Lsn>) -> String {
    l.map_or_else(|| "-".to_string(), |l| l.to_string())
}

/// The human-readable report.
pub fn render_human(r: &VerifyReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "archive {}", r.directory.display());
    match (r.system_id, r.segment_size, r.block_size) {
        (Some(id), Some(seg), Some(blk)) => {
            let _ = writeln!(
                s,
                "system identifier {id}, segment size {}, page size {blk}, PostgreSQL {}",
                human_bytes(seg),
                r.server_major
                    .map_or_else(|| "?".to_string(), |m| m.to_string())
            );
        }
        _ => {
            let _ = writeln!(s, "no WAL found");
        }
    }
    for t in &r.timelines {
        let from = match (t.parent, t.switchpoint) {
            (Some(p), Some(sp)) => format!(" (from timeline {p} at {sp})"),
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "timeline {}{from}: {} .. {}, {} segments ({} partial), {} records, {}",
            t.timeline,
            opt_lsn(t.first_lsn),
            opt_lsn(t.last_lsn),
            t.segments,
            t.partial_segments,
            t.records,
            human_bytes(t.bytes)
        );
    }
    for f in r
        .files
        .iter()
        .filter(|f| f.partial || f.end_reason.is_some())
    {
        let _ = writeln!(
            s,
            "  {}: valid WAL ends at {}{}",
            f.name,
            opt_lsn(f.valid_end),
            f.end_reason
                .as_ref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        );
    }
    divergent_lines(&mut s, r);
    let errors = r.errors().count();
    let warnings = r.problems.len() - errors;
    for p in &r.problems {
        let sev = match p.severity {
            Severity::Error => "ERROR",
            Severity::Warning => "WARNING",
        };
        let mut at = p.file.clone();
        if let Some(o) = p.offset {
            let _ = write!(at, " offset {o} (0x{o:X})");
        }
        if let Some(l) = p.lsn {
            let _ = write!(at, " LSN {l}");
        }
        let _ = writeln!(s, "{sev}: {at}: {}", p.message);
    }
    let aside = divergent_summary(r);
    if r.ok {
        let _ = writeln!(
            s,
            "OK: {} records verified, {warnings} warnings{aside}",
            r.records
        );
    } else {
        let _ = writeln!(
            s,
            "FAILED: {errors} problems, {warnings} warnings ({} records verified){aside}",
            r.records
        );
    }
    s
}

/// One line per set-aside file: where its data ends and how much of it is
/// past the switch point.
fn divergent_lines(s: &mut String, r: &VerifyReport) {
    use std::fmt::Write as _;
    for f in r.divergent.iter().flat_map(|d| &d.files) {
        let _ = writeln!(
            s,
            "  {}: set aside, timeline {}, data ends at {}, {} bytes past the switch point",
            f.name, f.timeline, f.data_end, f.divergent_bytes
        );
    }
}

/// `, N divergent files set aside (B bytes of WAL past a switch point)`, or
/// nothing when there are none.
fn divergent_summary(r: &VerifyReport) -> String {
    if r.divergent_files == 0 {
        return String::new();
    }
    format!(
        ", {} divergent file{} set aside ({} bytes of WAL past a switch point)",
        r.divergent_files,
        if r.divergent_files == 1 { "" } else { "s" },
        r.divergent_bytes
    )
}
