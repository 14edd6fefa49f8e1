//! `walrcv status -D DIR -d CONNINFO`: is the archive complete and current?
//! A health check in the Nagios plugin convention, run without (or beside) a
//! `walrcv stream`.
//!
//! It gathers, each step independent of the others' failures:
//!
//! - the archive, read-only ([`archive`], or [`bucket`] for `-D s3://BUCKET/PREFIX`): the newest WAL per timeline, where
//!   the archived WAL ends, the age of the newest file, gaps;
//! - the server ([`server`]): timeline and position (IDENTIFY_SYSTEM), and the
//!   slot named by `--slot` (READ_REPLICATION_SLOT, `pg_replication_slots`);
//! - with `--metrics-url`, the live state of a running `walrcv stream` ([`metrics`]);
//!
//! then [`check::evaluate`] judges them against the thresholds and
//! [`render`] prints one summary line first (`WALRCV OK - ...`, with Nagios
//! performance data), the details after it, or one JSON document (`--json`).
//!
//! Exit statuses: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. A server that cannot
//! be reached, an unreadable archive and invalid flags are UNKNOWN, as the
//! Nagios plugin guidelines ask for a check that could not be performed (the
//! server's own availability is the server's check's business); a definite
//! CRITICAL finding (a gap in the archive) still wins over UNKNOWN.

pub mod archive;
pub mod bucket;
pub mod check;
pub mod metrics;
pub mod render;
pub mod server;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::conninfo::{self, ConnectionArgs, ProcessEnv};
use crate::lsn::TimeLineId;

use check::{Facts, Gap, LiveFacts, Problem, SlotFacts, State, Thresholds, TimelineNewest};
use server::ServerFacts;

/// `walrcv status` arguments. `-h` is the host, as for `stream`, so help is `-?`.
#[derive(Debug, Clone, clap::Args)]
#[command(disable_help_flag = true)]
pub struct StatusArgs {
    /// The archive directory (read only: never locked or written), or
    /// `s3://BUCKET/PREFIX` (see [`bucket`]).
    #[arg(short = 'D', long = "directory", value_name = "DIR")]
    pub directory: PathBuf,
    /// `-d`, `-h`, `-p`, `-U`, as for `walrcv stream` (a replication
    /// connection is made).
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Replication slot whose state to check.
    #[arg(short = 'S', long = "slot", value_name = "SLOTNAME")]
    pub slot: Option<String>,
    /// Database of the normal connection that reads pg_replication_slots.
    #[arg(
        long = "query-database",
        value_name = "DBNAME",
        default_value = "postgres"
    )]
    pub query_database: String,
    /// Also read the live state of a running `walrcv stream` from its
    /// `--metrics-address` (`http://HOST:PORT/metrics` or `HOST:PORT`).
    #[arg(long = "metrics-url", value_name = "URL")]
    pub metrics_url: Option<String>,
    /// Print one JSON document instead of the human report.
    #[arg(long)]
    pub json: bool,
    /// The longest wait for each connection and each reply (seconds).
    #[arg(long = "timeout", value_name = "SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
    /// WARNING when the archive is this far behind the server (bytes, or kB/MB/GB).
    #[arg(long, value_name = "SIZE", default_value = "16MB", value_parser = check::parse_size)]
    pub warning_lag_bytes: u64,
    /// CRITICAL when the archive is this far behind the server.
    #[arg(long, value_name = "SIZE", default_value = "256MB", value_parser = check::parse_size)]
    pub critical_lag_bytes: u64,
    /// WARNING when the archive has been behind for this long (seconds).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub warning_lag_seconds: u64,
    /// CRITICAL when the archive has been behind for this long (seconds).
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub critical_lag_seconds: u64,
    /// WARNING when the slot's safe_wal_size is below this.
    #[arg(long, value_name = "SIZE", default_value = "1GB", value_parser = check::parse_size)]
    pub warning_safe_wal_size: u64,
    /// CRITICAL when the slot's safe_wal_size is below this.
    #[arg(long, value_name = "SIZE", default_value = "256MB", value_parser = check::parse_size)]
    pub critical_safe_wal_size: u64,
    /// Show this help, then exit.
    #[arg(short = '?', long = "help", action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

impl StatusArgs {
    /// The thresholds, refusing a WARNING limit beyond its CRITICAL one.
    pub fn thresholds(&self) -> Result<Thresholds, String> {
        let t = Thresholds {
            warning_lag_bytes: self.warning_lag_bytes,
            critical_lag_bytes: self.critical_lag_bytes,
            warning_lag_seconds: self.warning_lag_seconds,
            critical_lag_seconds: self.critical_lag_seconds,
            warning_safe_wal_size: self.warning_safe_wal_size,
            critical_safe_wal_size: self.critical_safe_wal_size,
        };
        if t.warning_lag_bytes > t.critical_lag_bytes {
            return Err("--warning-lag-bytes must not exceed --critical-lag-bytes".into());
        }
        if t.warning_lag_seconds > t.critical_lag_seconds {
            return Err("--warning-lag-seconds must not exceed --critical-lag-seconds".into());
        }
        if t.warning_safe_wal_size < t.critical_safe_wal_size {
            return Err(
                "--warning-safe-wal-size must be at least --critical-safe-wal-size (alerts are under them)"
                    .into(),
            );
        }
        Ok(t)
    }
}

/// The whole status, as `--json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub state: State,
    /// The first line of the human output, without `WALRCV STATE - `.
    pub summary: String,
    pub archive: Option<ArchiveReport>,
    pub server: Option<ServerFacts>,
    pub lag: Option<LagReport>,
    pub slot: Option<SlotFacts>,
    pub walrcv: Option<LiveFacts>,
    pub problems: Vec<Problem>,
    pub thresholds: Thresholds,
}

#[derive(Debug, Clone, Serialize)]
pub struct ArchiveReport {
    pub directory: PathBuf,
    pub wal_segment_size: u64,
    pub timelines: Vec<TimelineNewest>,
    pub histories: Vec<TimeLineId>,
    /// Where the archived WAL ends (estimated inside a `.partial`).
    pub archived_end: Option<String>,
    pub newest_file_age_seconds: Option<u64>,
    pub gaps: Vec<Gap>,
    /// Files set aside after a failover (`*.divergent.tmp`), and their
    /// size on disk. Shown, never judged: `walrcv verify` reports them.
    pub divergent_files: u64,
    pub divergent_bytes: u64,
    /// From a bucket: the receivers' `.partial` copies of segments not
    /// there complete.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub partial_copies: Vec<bucket::PartialCopy>,
    /// From a bucket: the uploaders' conflict markers (each CRITICAL).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conflict_markers: Vec<bucket::ConflictMarker>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LagReport {
    pub bytes: u64,
    pub seconds: Option<u64>,
    pub archived_end: String,
    pub server_position: String,
}

/// Runs the check and prints it; returns the exit status.
pub fn run(args: &StatusArgs) -> i32 {
    let thresholds = match args.thresholds() {
        Ok(t) => t,
        Err(msg) => return usage_error(&msg),
    };
    let timeout = Duration::from_secs(args.timeout);
    let report = gather(args, thresholds, timeout);
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                println!("WALRCV UNKNOWN - could not encode the report as JSON: {e}");
                return State::Unknown.exit_code();
            }
        }
    } else {
        print!("{}", render::human(&report));
    }
    report.state.exit_code()
}

/// Invalid flags: UNKNOWN (3), with the summary line a monitoring system shows.
pub fn usage_error(msg: &str) -> i32 {
    println!("WALRCV UNKNOWN - {msg}");
    eprintln!("Try \"walrcv status --help\" for more information.");
    State::Unknown.exit_code()
}

fn gather(args: &StatusArgs, thresholds: Thresholds, timeout: Duration) -> StatusReport {
    let mut facts = Facts::default();
    let (server, slot) = match query_server(args, timeout) {
        Ok((s, slot)) => (Some(s), slot),
        Err(msg) => {
            facts
                .errors
                .push(check::problem(State::Unknown, "server_unreachable", msg));
            (None, None)
        }
    };
    let server_segment_size = server.as_ref().map(|s| s.wal_segment_size);
    let url = args.directory.to_str().filter(|d| d.starts_with("s3://"));
    let mut copies = Vec::new();
    let mut conflicts = Vec::new();
    let read = match url {
        Some(url) => bucket::read_bucket(url, server_segment_size).map(|b| {
            copies = b.copies;
            conflicts = b.conflicts;
            b.read
        }),
        None => archive::read_archive(&args.directory, server_segment_size),
    };
    let archive = match read {
        Ok(a) => Some(a),
        Err(e) => {
            let (state, kind) = if e.is_damage() {
                (State::Critical, "archive_damaged")
            } else {
                (State::Unknown, "archive_unreadable")
            };
            facts
                .errors
                .push(check::problem(state, kind, e.to_string()));
            None
        }
    };
    // The resume check reads the local directory a stream would resume in.
    if let Some(message) = archive
        .as_ref()
        .filter(|_| url.is_none())
        .and_then(|a| archive::corrupt_before_start(&args.directory, a))
    {
        facts
            .errors
            .push(check::problem(State::Critical, "archive_corrupt", message));
    }
    let live = args
        .metrics_url
        .as_deref()
        .map(|url| metrics::read_live(url, timeout));

    facts.bucket_conflicts = conflicts
        .iter()
        .map(|c| (c.object.clone(), c.receiver.clone()))
        .collect();
    let archive_report = archive.as_ref().map(|a| ArchiveReport {
        partial_copies: copies,
        conflict_markers: conflicts,
        ..archive_report(args, a)
    });
    let archived_end = archive
        .as_ref()
        .and_then(|a| check::archived_end(a.newest, a.partial_written, a.segment_size));
    let lag = match (&server, archived_end) {
        (Some(s), Some(end)) => {
            let age = archive.as_ref().and_then(|a| a.newest_age_secs);
            Some((check::lag(end, s.position_lsn, age), end, s.position_lsn))
        }
        _ => None,
    };
    facts.archive_timelines = archive_report
        .as_ref()
        .map(|a| a.timelines.iter().map(|t| t.timeline).collect());
    facts.archive_histories = archive_report
        .as_ref()
        .map(|a| a.histories.clone())
        .unwrap_or_default();
    facts.gaps = archive_report
        .as_ref()
        .map(|a| a.gaps.clone())
        .unwrap_or_default();
    facts.server_timeline = server.as_ref().map(|s| s.timeline);
    facts.lag = lag.map(|(l, _, _)| l);
    facts.slot = slot.clone();
    facts.live = live.clone();

    let problems = check::evaluate(&facts, &thresholds);
    let state = check::overall(&problems);
    let lag = lag.map(|(l, end, pos)| LagReport {
        bytes: l.bytes,
        seconds: l.seconds,
        archived_end: end.to_string(),
        server_position: pos.to_string(),
    });
    let summary = render::summary(&problems, server.as_ref(), lag.as_ref());
    StatusReport {
        state,
        summary,
        archive: archive_report,
        server,
        lag,
        slot,
        walrcv: live,
        problems,
        thresholds,
    }
}

fn archive_report(args: &StatusArgs, a: &archive::ArchiveRead) -> ArchiveReport {
    let entries: Vec<check::SegmentEntry> = a
        .scan
        .segments
        .iter()
        .map(|s| check::SegmentEntry {
            timeline: s.timeline,
            segno: s.segno,
            partial: s.partial,
        })
        .collect();
    ArchiveReport {
        directory: args.directory.clone(),
        wal_segment_size: a.segment_size,
        timelines: check::newest_per_timeline(&entries, a.segment_size),
        histories: a.scan.histories.clone(),
        archived_end: check::archived_end(a.newest, a.partial_written, a.segment_size)
            .map(|l| l.to_string()),
        newest_file_age_seconds: a.newest_age_secs,
        gaps: check::gaps(&entries, a.segment_size),
        divergent_files: a.divergent.files,
        divergent_bytes: a.divergent.bytes,
        partial_copies: Vec::new(),
        conflict_markers: Vec::new(),
    }
}

/// The server and slot facts, or why they could not be read.
fn query_server(
    args: &StatusArgs,
    timeout: Duration,
) -> Result<(ServerFacts, Option<SlotFacts>), String> {
    let overrides = args.connection.overrides();
    let mut params = conninfo::resolve(&overrides, &ProcessEnv).map_err(|e| e.to_string())?;
    params.connect_timeout.get_or_insert(timeout);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("could not start the runtime: {e}"))?;
    runtime
        .block_on(server::query(
            &params,
            args.slot.as_deref(),
            &args.query_database,
            timeout,
        ))
        .map_err(|e| format!("could not query the server: {e}"))
}

#[cfg(test)]
mod tests {
    use clap::{Args, FromArgMatches};

    use super::*;

    /// Parses `walrcv status` arguments as the subcommand does (built from
    /// the same derive), without `crate::cli`, which sits above the tools.
    fn parse(extra: &[&str]) -> Result<StatusArgs, clap::Error> {
        let mut v = vec!["status", "-D", "/x"];
        v.extend_from_slice(extra);
        let matches =
            StatusArgs::augment_args(clap::Command::new("status")).try_get_matches_from(v)?;
        StatusArgs::from_arg_matches(&matches)
    }

    #[test]
    fn defaults_and_flags() {
        let a = parse(&["-h", "db", "-S", "walrcv"]).unwrap();
        assert_eq!(a.connection.host.as_deref(), Some("db"));
        assert_eq!(a.warning_lag_bytes, 16 << 20);
        assert_eq!(a.critical_lag_bytes, 256 << 20);
        assert_eq!((a.warning_lag_seconds, a.critical_lag_seconds), (60, 300));
        assert_eq!(a.query_database, "postgres");
        assert!(a.thresholds().is_ok());
        let a = parse(&["--warning-lag-bytes", "1GB", "--critical-lag-bytes", "2GB"]).unwrap();
        assert_eq!(a.warning_lag_bytes, 1 << 30);
        assert!(parse(&["--warning-lag-bytes", "lots"]).is_err());
        assert!(parse(&["--timeout", "0"]).is_err());
    }

    #[test]
    fn warning_beyond_critical_is_refused() {
        let a = parse(&["--warning-lag-bytes", "1GB", "--critical-lag-bytes", "1MB"]).unwrap();
        assert!(a.thresholds().is_err());
        let a = parse(&["--warning-lag-seconds", "600"]).unwrap();
        assert!(a.thresholds().is_err());
        let a = parse(&["--warning-safe-wal-size", "1MB"]).unwrap();
        assert!(a.thresholds().is_err());
    }
}
