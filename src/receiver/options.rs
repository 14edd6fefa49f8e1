//! From `walrcv stream`'s parsed flags to what the receiver runs with: the
//! connection overrides (`-d`, `-h`, `-p`, `-U`) and the [`StreamOptions`].
//! Kept out of `main.rs` so that every flag's meaning is unit-tested here.

use std::time::Duration;

use crate::archive::compress_spec::CompressionSpec;
use crate::cli::StreamArgs;
use crate::conninfo::{ConnParams, Overrides};

use super::StreamOptions;

impl StreamOptions {
    /// The options of `walrcv stream` (and of the `pg_receivewal` name) from
    /// its flags and the connection resolved from them (see
    /// [`conn_overrides`]). Call it on flags that passed
    /// [`StreamArgs::validate`] (which refuses a zero receive timeout).
    ///
    /// - `-D` is the directory (empty when absent: only `--create-slot` and
    ///   `--drop-slot` run without one).
    /// - `-s 0` means no periodic status updates (`None`), as in pg_receivewal.
    /// - `--receive-timeout` (seconds) is the dead-connection timeout.
    /// - `--no-sync` turns fsync off; `-w` forbids the password prompt.
    pub fn from_args(args: &StreamArgs, conn: ConnParams) -> StreamOptions {
        StreamOptions {
            directory: args.directory.clone().unwrap_or_default(),
            conn,
            slot: args.slot.clone(),
            create_slot_if_missing: args.create_slot_if_missing,
            endpos: args.endpos,
            no_loop: args.no_loop,
            sync: !args.no_sync,
            synchronous: args.synchronous,
            status_interval: (args.status_interval > 0)
                .then(|| Duration::from_secs(u64::from(args.status_interval))),
            receive_timeout: Duration::from_secs(u64::from(args.receive_timeout)),
            password_prompt: !args.no_password,
            metrics_address: args.metrics_address.clone(),
            // Checked by `validate`; an unchecked bad spec writes plain files.
            compression: args.compression().unwrap_or(CompressionSpec::NONE),
            // Set by the caller that starts the server (`main`'s stream command).
            live: None,
        }
    }
}

/// `stream`'s connection overrides: [`ConnectionArgs::overrides`](crate::conninfo::ConnectionArgs::overrides),
/// the one place that builds them for every command. The password is left to
/// the caller (`-W` prompts for it).
pub fn conn_overrides(args: &StreamArgs) -> Overrides {
    args.connection.overrides()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command, PgReceivewalCli, StreamAction};
    use crate::conninfo::{self, Environment};
    use crate::lsn::Lsn;

    /// An empty environment: no `PG*` variables, no home, OS user `osuser`.
    struct NoEnv;

    impl Environment for NoEnv {
        fn var(&self, _: &str) -> Option<String> {
            None
        }
        fn home_dir(&self) -> Option<PathBuf> {
            None
        }
        fn os_user(&self) -> Option<String> {
            Some("osuser".into())
        }
    }

    fn args(flags: &[&str]) -> StreamArgs {
        let mut v = vec!["walrcv", "stream"];
        v.extend_from_slice(flags);
        match Cli::try_parse_from(v).unwrap().command {
            Command::Stream(s) => *s,
            _ => unreachable!("parsed a stream command line"),
        }
    }

    fn options(flags: &[&str]) -> StreamOptions {
        let a = args(flags);
        a.validate().unwrap();
        let conn = conninfo::resolve(&conn_overrides(&a), &NoEnv).unwrap();
        StreamOptions::from_args(&a, conn)
    }

    #[test]
    fn defaults() {
        let o = options(&["-D", "/archive", "-d", "host=db user=arch"]);
        assert_eq!(o.directory, PathBuf::from("/archive"));
        assert_eq!(o.status_interval, Some(Duration::from_secs(10)));
        assert_eq!(o.receive_timeout, Duration::from_secs(60));
        assert!(o.sync);
        assert!(!o.synchronous);
        assert!(!o.no_loop);
        assert!(o.password_prompt);
        assert_eq!(o.slot, None);
        assert_eq!(o.endpos, None);
        assert_eq!(o.conn.user, "arch");
        assert_eq!(o.conn.application_name, "walrcv");
    }

    #[test]
    fn every_flag_lands_in_its_option() {
        let o = options(&[
            "-D",
            "/a",
            "-S",
            "arch",
            "-E",
            "1/2000000",
            "-n",
            "--synchronous",
            "-w",
            "-s",
            "3",
            "--receive-timeout",
            "7",
        ]);
        assert_eq!(o.slot.as_deref(), Some("arch"));
        assert_eq!(o.endpos, Some(Lsn(0x1_0200_0000)));
        assert!(o.no_loop && o.synchronous && o.sync);
        assert!(!o.password_prompt);
        assert_eq!(o.status_interval, Some(Duration::from_secs(3)));
        assert_eq!(o.receive_timeout, Duration::from_secs(7));
    }

    #[test]
    fn status_interval_zero_means_no_periodic_updates() {
        assert_eq!(options(&["-D", "/a", "-s", "0"]).status_interval, None);
        assert_eq!(
            options(&["-D", "/a", "--status-interval=1"]).status_interval,
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn no_sync_turns_fsync_off() {
        let o = options(&["-D", "/a", "--no-sync"]);
        assert!(!o.sync);
        assert!(!o.synchronous);
    }

    #[test]
    fn receive_timeout_bounds() {
        assert_eq!(
            options(&["-D", "/a", "--receive-timeout=1"]).receive_timeout,
            Duration::from_secs(1)
        );
        assert_eq!(
            options(&["-D", "/a", "--receive-timeout", "2147483"]).receive_timeout,
            Duration::from_secs(2_147_483)
        );
        let parse = |v: &str| {
            let flag = format!("--receive-timeout={v}");
            Cli::try_parse_from(["walrcv", "stream", "-D", "/a", &flag])
                .map(|_| ())
                .unwrap_err()
                .to_string()
        };
        let zero = parse("0");
        assert!(zero.contains("at least 1 second"), "{zero}");
        assert!(parse("2147484").contains("too large"));
        assert!(parse("-5").contains("not a number of seconds"));
        assert!(parse("1.5").contains("not a number of seconds"));
        assert!(parse("60s").contains("not a number of seconds"));
        // A StreamArgs built in code, not parsed, is checked by validate().
        let built = StreamArgs {
            directory: Some("/a".into()),
            ..StreamArgs::default()
        };
        assert!(built
            .validate()
            .unwrap_err()
            .contains("invalid --receive-timeout"));
    }

    #[test]
    fn pg_receivewal_name_takes_the_flag_too() {
        let a =
            PgReceivewalCli::try_parse_from(["pg_receivewal", "-D", "/a", "--receive-timeout=15"])
                .unwrap()
                .stream;
        assert_eq!(a.validate(), Ok(StreamAction::Stream));
        let conn = conninfo::resolve(&conn_overrides(&a), &NoEnv).unwrap();
        let o = StreamOptions::from_args(&a, conn);
        assert_eq!(o.receive_timeout, Duration::from_secs(15));
        assert_eq!(o.status_interval, Some(Duration::from_secs(10)));
    }

    #[test]
    fn slot_commands_need_no_directory() {
        let a = args(&["--create-slot", "-S", "s", "-d", "host=db"]);
        assert_eq!(a.validate(), Ok(StreamAction::CreateSlot));
        let conn = conninfo::resolve(&conn_overrides(&a), &NoEnv).unwrap();
        let o = StreamOptions::from_args(&a, conn);
        assert_eq!(o.directory, PathBuf::new());
        assert_eq!(o.slot.as_deref(), Some("s"));
    }

    #[test]
    fn host_port_user_flags_override_the_connection_string() {
        let o = options(&[
            "-D",
            "/a",
            "-d",
            "host=db1 port=5432 user=a",
            "-h",
            "db2",
            "-p",
            "5433",
            "-U",
            "b",
        ]);
        assert_eq!(o.conn.user, "b");
        let target = format!("{}", o.conn.targets[0]);
        assert!(
            target.contains("db2") && target.contains("5433"),
            "{target}"
        );
    }
}
