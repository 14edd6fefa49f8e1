//! Command-line definitions. `walrcv stream` takes pg_receivewal's flags, with
//! the same meaning; invoked under the name `pg_receivewal` (a symlink), walrcv
//! parses its arguments as `walrcv stream` and prints a version line that
//! Barman's version check accepts.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::archive::compress_spec::{CompressionSpec, SpecError};
use crate::conninfo::ConnectionArgs;
use crate::lsn::Lsn;

#[derive(Debug, Parser)]
#[command(
    name = "walrcv",
    version,
    about = "PostgreSQL WAL receiver: streams, verifies and archives WAL"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr: text (default) or json (one object per line).
    #[arg(
        long = "log-format",
        value_name = "FORMAT",
        value_enum,
        default_value_t,
        env = "WALRCV_LOG_FORMAT",
        global = true
    )]
    pub log_format: LogFormat,
}

/// `--log-format`: how log lines are written on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, message and the event's
    /// fields), for log shippers.
    Json,
}

/// `walrcv generate-assets DIR` (the work is [`crate::assets`]'s, which
/// reads these definitions: so the arguments live here, not there).
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    /// Directory to write into (created if missing): `man/walrcv*.1` and
    /// `completions/{walrcv.bash,_walrcv,walrcv.fish}`.
    pub dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream WAL from a server into an archive directory (pg_receivewal's flags).
    Stream(Box<StreamArgs>),
    /// Check a whole archive offline: page headers, record CRCs, continuity,
    /// timelines and gaps. Exit 0 only when there is no problem.
    Verify(crate::tools::verify::VerifyArgs),
    /// Write the man pages and shell completions generated from these
    /// definitions into a directory (for packaging; hidden).
    #[command(hide = true)]
    GenerateAssets(GenerateArgs),
    /// Health check: is the archive complete and current? Nagios exit
    /// statuses: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
    Status(crate::tools::status::StatusArgs),
    /// PostgreSQL's restore_command: `walrcv restore %f %p -D ARCHIVE`.
    /// Serves complete segments, the newest .partial (as the segment) and
    /// history files, compressed or not, each verified first. Exit 0 served,
    /// 1 not in the archive, 200 refused (recovery must stop).
    Restore(crate::tools::restore::RestoreArgs),
    /// Remove old WAL from an archive (--before SEGMENT, --older-than,
    /// --keep-size; --dry-run lists). Never the newest file of a timeline,
    /// never a history file, never a hole. Exit 0 done, 1 removal failed, 2
    /// bad arguments.
    Cleanup(crate::tools::cleanup::CleanupArgs),
    /// Serve an archive's verified WAL over the replication protocol to
    /// standbys and pg_receivewal (a walsender without a primary). Needs
    /// --serve-hba; see docs/src/serve.md.
    Serve(crate::serve::ServeArgs),
}

/// pg_receivewal's options. `-h` is the host, as in pg_receivewal, so help is
/// `-?`/`--help`.
#[derive(Debug, Clone, Args, Default)]
#[command(disable_help_flag = true)]
pub struct StreamArgs {
    /// Receive WAL files into this directory (must exist).
    #[arg(short = 'D', long = "directory", value_name = "DIR")]
    pub directory: Option<PathBuf>,
    /// Exit after receiving the specified LSN.
    #[arg(short = 'E', long = "endpos", value_name = "LSN")]
    pub endpos: Option<Lsn>,
    /// Do not error out when --create-slot is given and the slot already exists.
    #[arg(long = "if-not-exists")]
    pub if_not_exists: bool,
    /// Do not loop on connection lost: exit with status 1.
    #[arg(short = 'n', long = "no-loop")]
    pub no_loop: bool,
    /// Do not wait for changes to be written safely to disk (no fsync).
    #[arg(long = "no-sync")]
    pub no_sync: bool,
    /// Time between status packets sent to the server (seconds; 0 = only when
    /// flushed WAL advances or the server asks).
    #[arg(short = 's', long = "status-interval", value_name = "SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(0..=2_147_483))]
    pub status_interval: u32,
    /// Drop the connection after this many seconds without any byte from
    /// the server (then reconnect, or exit with --no-loop); a ping asking for a
    /// reply is sent at half of it (like the server's wal_receiver_timeout).
    /// Also the longest wait for each reply outside the stream (start-up,
    /// authentication, replication commands). At least 1.
    #[arg(long = "receive-timeout", value_name = "SECS", default_value_t = DEFAULT_RECEIVE_TIMEOUT_SECS,
          value_parser = parse_receive_timeout)]
    pub receive_timeout: u32,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (off by default).
    #[arg(long = "metrics-address", value_name = "HOST:PORT")]
    pub metrics_address: Option<String>,
    /// Replication slot to use.
    #[arg(short = 'S', long = "slot", value_name = "SLOTNAME")]
    pub slot: Option<String>,
    /// Flush WAL to disk and report it at once (walrcv always does).
    #[arg(long = "synchronous")]
    pub synchronous: bool,
    /// Output verbose messages (twice for debug output).
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count)]
    pub verbose: u8,
    /// Compress WAL files: none, gzip[:LEVEL], lz4[:LEVEL], zstd[:LEVEL], a
    /// bare level (0 = none, 1-9 = gzip) or METHOD:level=N (pg_receivewal's -Z).
    #[arg(short = 'Z', long = "compress", value_name = "METHOD[:DETAIL]")]
    pub compress: Option<String>,
    /// `-d`, `-h`, `-p`, `-U`.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Never prompt for a password.
    #[arg(short = 'w', long = "no-password")]
    pub no_password: bool,
    /// Force a password prompt before connecting.
    #[arg(short = 'W', long = "password")]
    pub password: bool,
    /// Create a new physical replication slot (reserving WAL) and exit.
    #[arg(long = "create-slot")]
    pub create_slot: bool,
    /// Drop the replication slot and exit.
    #[arg(long = "drop-slot")]
    pub drop_slot: bool,
    /// Create the --slot on the server (physical, reserving WAL) whenever it
    /// is missing there, e.g. on a new primary after a failover; warns when
    /// it does.
    #[arg(long = "create-slot-if-missing")]
    pub create_slot_if_missing: bool,
    /// Also upload the archive to S3-compatible object storage
    /// (s3://BUCKET/PREFIX; configured from the AWS_* environment).
    #[arg(long = "upload", value_name = "URL")]
    pub upload: Option<String>,
    /// Seconds between uploads of the newest .partial (also uploaded at a
    /// new segment or timeline and at a clean stop).
    #[arg(long = "upload-partial-interval", value_name = "SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub upload_partial_interval: u32,
    /// Remove local complete segments once uploaded, keeping this much:
    /// SIZE (e.g. 10GB) or DURATION (e.g. 12h). Never the newest file of a
    /// timeline.
    #[arg(long = "upload-keep-local", value_name = "SIZE|DURATION",
          value_parser = crate::upload::plan::KeepLocal::parse)]
    pub upload_keep_local: Option<crate::upload::plan::KeepLocal>,
    /// This receiver's name in the .partial copies it uploads (default: the
    /// slot name, else the host name). Two receivers sharing a prefix need
    /// two names.
    #[arg(long = "upload-receiver-id", value_name = "ID")]
    pub upload_receiver_id: Option<String>,
    /// Also serve the archive to standbys and pg_receivewal at HOST:PORT (or
    /// PORT for 127.0.0.1:PORT), as `walrcv serve` does, live WAL included up
    /// to the position last reported flushed to the primary, never past it.
    #[arg(long = "serve", value_name = "HOST:PORT")]
    pub serve: Option<String>,
    /// `--serve-hba`, `--serve-passfile`, `--serve-ssl-cert`, `--serve-ssl-key`,
    /// `--serve-max-clients` (with `--serve`).
    #[command(flatten)]
    pub serve_options: crate::serve::ServeOptions,
    /// Show this help, then exit.
    #[arg(short = '?', long = "help", action = ArgAction::Help)]
    pub help: Option<bool>,
}

/// `--receive-timeout` when not given: 60 s, like wal_receiver_timeout.
pub const DEFAULT_RECEIVE_TIMEOUT_SECS: u32 = 60;
/// The largest `--receive-timeout`: wal_receiver_timeout's maximum (INT_MAX ms).
pub const MAX_RECEIVE_TIMEOUT_SECS: u32 = 2_147_483;

/// `--receive-timeout`: whole seconds, 1 to [`MAX_RECEIVE_TIMEOUT_SECS`]. 0 is
/// refused rather than read as "never": walrcv pings at half the timeout, and
/// a receiver that never notices a dead connection leaves a synchronous
/// primary's commits waiting on it.
fn parse_receive_timeout(s: &str) -> Result<u32, String> {
    let secs: u32 = s.trim().parse().map_err(|_| {
        format!("\"{s}\" is not a number of seconds (1 to {MAX_RECEIVE_TIMEOUT_SECS})")
    })?;
    check_receive_timeout(secs)
}

fn check_receive_timeout(secs: u32) -> Result<u32, String> {
    match secs {
        0 => Err(format!(
            "the receive timeout must be at least 1 second (0 would drop every connection at once; \
             there is no \"never\"); the default is {DEFAULT_RECEIVE_TIMEOUT_SECS}"
        )),
        s if s > MAX_RECEIVE_TIMEOUT_SECS => Err(format!(
            "the receive timeout {s} s is too large (at most {MAX_RECEIVE_TIMEOUT_SECS})"
        )),
        s => Ok(s),
    }
}

/// What `stream` will do once its flags are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamAction {
    Stream,
    CreateSlot,
    DropSlot,
}

impl StreamArgs {
    /// pg_receivewal's argument rules, plus walrcv's own refusals.
    pub fn validate(&self) -> Result<StreamAction, String> {
        if self.create_slot && self.drop_slot {
            return Err("cannot use --create-slot together with --drop-slot".into());
        }
        if (self.create_slot || self.drop_slot) && self.slot.is_none() {
            return Err(format!(
                "{} needs a slot to be specified using --slot",
                if self.create_slot {
                    "--create-slot"
                } else {
                    "--drop-slot"
                }
            ));
        }
        if self.create_slot_if_missing && self.slot.is_none() {
            return Err(
                "--create-slot-if-missing needs a slot to be specified using --slot".into(),
            );
        }
        if self.synchronous && self.no_sync {
            return Err("cannot use --synchronous together with --no-sync".into());
        }
        // Also for a StreamArgs built in code (Default gives 0), not parsed.
        check_receive_timeout(self.receive_timeout)
            .map_err(|e| format!("invalid --receive-timeout: {e}"))?;
        if self.serve.is_none() && self.serve_options.any_given() {
            return Err("the --serve-* options need --serve HOST:PORT".into());
        }
        if self.no_password && self.password {
            return Err("cannot use --no-password together with --password".into());
        }
        self.compression().map_err(|e| e.to_string())?;
        if self.create_slot {
            return Ok(StreamAction::CreateSlot);
        }
        if self.drop_slot {
            return Ok(StreamAction::DropSlot);
        }
        if self.directory.is_none() {
            return Err("no target directory specified (use -D/--directory)".into());
        }
        Ok(StreamAction::Stream)
    }
}

impl StreamArgs {
    /// The `-Z` specification ([`CompressionSpec::NONE`] without `-Z`),
    /// checked as pg_receivewal checks it.
    pub fn compression(&self) -> Result<CompressionSpec, SpecError> {
        match &self.compress {
            Some(z) => CompressionSpec::parse(z),
            None => Ok(CompressionSpec::NONE),
        }
    }
}

/// pg_receivewal's name: walrcv behaves as `walrcv stream` under it.
pub const PG_RECEIVEWAL: &str = "pg_receivewal";

/// The arguments under the `pg_receivewal` name: the stream flags at top level.
#[derive(Debug, Parser)]
#[command(
    name = "pg_receivewal",
    about = "walrcv, invoked as pg_receivewal: streams WAL into a directory"
)]
pub struct PgReceivewalCli {
    #[command(flatten)]
    pub stream: StreamArgs,
    /// Log format on stderr: text (default) or json (one object per line).
    #[arg(
        long = "log-format",
        value_name = "FORMAT",
        value_enum,
        default_value_t,
        env = "WALRCV_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
}

/// `--version` under the pg_receivewal name: `pg_receivewal (walrcv X) 18.4`.
/// Barman drops the parenthesised part and reads the second token as the
/// PostgreSQL version, which must be at least the server's.
pub fn pg_receivewal_version() -> String {
    format!(
        "pg_receivewal (walrcv {}) {}",
        env!("CARGO_PKG_VERSION"),
        crate::NEWEST_SUPPORTED_SERVER
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(args: &[&str]) -> Result<StreamArgs, clap::Error> {
        let mut v = vec!["walrcv", "stream"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).map(|c| match c.command {
            Command::Stream(s) => *s,
            _ => unreachable!("parsed a stream command line"),
        })
    }

    #[test]
    fn serve_flags_are_shared_with_walrcv_serve_and_need_serve() {
        let a = stream(&[
            "-D",
            "/a",
            "--serve",
            "0.0.0.0:5433",
            "--serve-hba",
            "/h",
            "--serve-max-clients",
            "4",
        ])
        .unwrap();
        assert_eq!(a.serve.as_deref(), Some("0.0.0.0:5433"));
        assert_eq!(a.serve_options.hba, Some(PathBuf::from("/h")));
        assert_eq!(a.serve_options.max_clients, 4);
        assert_eq!(a.validate(), Ok(StreamAction::Stream));
        let lone = stream(&["-D", "/a", "--serve-hba", "/h"]).unwrap();
        assert!(lone.validate().unwrap_err().contains("need --serve"));
        assert!(stream(&["-D", "/a", "--serve", "5433", "--serve-ssl-cert", "/c"]).is_err());
        assert_eq!(StreamArgs::default().serve_options.max_clients, 16);
    }

    #[test]
    fn barman_invocation_parses() {
        let argv = [
            "pg_receivewal",
            "--dbname=application_name=barman_receive_wal dbname=replication host=pg options=-cdatestyle=iso replication=true user=streaming_barman",
            "--verbose",
            "--no-loop",
            "--no-password",
            "--directory=/var/lib/barman/pg/streaming",
            "--slot=barman",
            "--synchronous",
        ];
        let a = PgReceivewalCli::try_parse_from(argv).unwrap().stream;
        assert_eq!(a.validate(), Ok(StreamAction::Stream));
        assert!(a.no_loop && a.no_password && a.synchronous);
        assert_eq!(a.verbose, 1);
        assert_eq!(a.slot.as_deref(), Some("barman"));
    }

    #[test]
    fn short_flags_as_pg_receivewal() {
        let a = stream(&[
            "-D",
            "/x",
            "-h",
            "db",
            "-p",
            "5433",
            "-U",
            "u",
            "-E",
            "0/3000000",
            "-s",
            "0",
            "-n",
            "-vv",
        ])
        .unwrap();
        assert_eq!(a.connection.host.as_deref(), Some("db"));
        assert_eq!(a.endpos, Some(Lsn(0x300_0000)));
        assert_eq!(a.status_interval, 0);
        assert_eq!(a.verbose, 2);
    }

    #[test]
    fn rules() {
        assert!(stream(&["--bogus"]).is_err());
        assert!(stream(&["-D", "/x", "-E", "nope"]).is_err());
        assert!(stream(&["-D", "/x", "-s", "-1"]).is_err());
        assert!(stream(&["-D", "/x", "extra"]).is_err());
        let v = |a: &[&str]| stream(a).unwrap().validate();
        assert!(v(&["--create-slot", "--drop-slot", "-S", "s"]).is_err());
        assert!(v(&["--create-slot"]).is_err());
        assert_eq!(
            v(&["--create-slot", "-S", "s"]),
            Ok(StreamAction::CreateSlot)
        );
        assert_eq!(v(&["--drop-slot", "-S", "s"]), Ok(StreamAction::DropSlot));
        assert!(v(&["-D", "/x", "--synchronous", "--no-sync"]).is_err());
        assert!(v(&[]).is_err());
        for z in ["0", "none", "5", "gzip", "lz4:level=3", "zstd:19"] {
            assert_eq!(v(&["-D", "/x", "-Z", z]), Ok(StreamAction::Stream), "{z}");
        }
        assert_eq!(
            v(&["-D", "/x", "-Z", "none:1"]).unwrap_err(),
            "invalid compression specification: compression algorithm \"none\" does not accept a compression level"
        );
        assert_eq!(
            v(&["-D", "/x", "--compress=bz2"]).unwrap_err(),
            "unrecognized compression algorithm: \"bz2\""
        );
    }

    #[test]
    fn log_format_is_text_unless_asked_on_any_subcommand() {
        let parse = |v: &[&str]| Cli::try_parse_from(v).map(|c| c.log_format);
        assert_eq!(
            parse(&["walrcv", "stream", "-D", "/x"]).unwrap(),
            LogFormat::Text
        );
        assert_eq!(
            parse(&["walrcv", "stream", "--log-format", "json", "-D", "/x"]).unwrap(),
            LogFormat::Json
        );
        assert_eq!(
            parse(&["walrcv", "--log-format=json", "verify", "/x"]).unwrap(),
            LogFormat::Json
        );
        assert!(parse(&["walrcv", "stream", "--log-format", "xml"]).is_err());
        let pg =
            PgReceivewalCli::try_parse_from(["pg_receivewal", "-D", "/x", "--log-format=json"]);
        assert_eq!(pg.unwrap().log_format, LogFormat::Json);
    }

    #[test]
    fn version_line_is_what_barman_parses() {
        // Barman: drop parenthesised groups, take the second token, major = before the last dot.
        let v = pg_receivewal_version();
        let mut s = v.clone();
        while let (Some(a), Some(b)) = (s.find('('), s.find(')')) {
            s.replace_range(a..=b, "");
        }
        let tok: Vec<&str> = s.split_whitespace().collect();
        assert_eq!(tok[0], "pg_receivewal");
        assert_eq!(tok[1], crate::NEWEST_SUPPORTED_SERVER);
        assert!(tok[1].rsplit_once('.').is_some());
    }
}
