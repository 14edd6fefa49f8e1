//! Several hosts in the connection string (`host=A,B port=P1,P2`), against
//! real servers: `target_session_attrs` picks the server of the wanted role
//! (servers 14+ by their start-up parameters, 13 by `SHOW` over the
//! replication connection), `prefer-standby` falls back to the primary,
//! and with no primary in the list `walrcv stream` keeps trying every host
//! until a standby is promoted, then streams from it by itself.

use std::path::Path;
use std::time::Duration;

use crate::stream::assert_complete_segments_identical;
use crate::support::{
    archive_dir, debian_bin, run_with_timeout, wait_until, walrcv_bin, walrcv_spawn,
    BackgroundProcess, PgServer, SUPERUSER,
};

/// `host=127.0.0.1,... port=P1,... target_session_attrs=ATTRS` over `ports`,
/// in this order.
fn hosts(ports: &[u16], attrs: &str, app: &str) -> String {
    let host = vec!["127.0.0.1"; ports.len()].join(",");
    let port: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!(
        "host={host} port={} user={SUPERUSER} target_session_attrs={attrs} \
         application_name={app} connect_timeout=5",
        port.join(",")
    )
}

/// `walrcv stream -vv` (debug: the SHOW queries of the role check are logged).
fn stream(dir: &Path, conninfo: &str) -> BackgroundProcess {
    let d = dir.to_str().unwrap();
    walrcv_spawn(&["stream", "-D", d, "-d", conninfo, "-vv"])
}

fn streams_to(server: &PgServer, app: &str) -> bool {
    server
        .try_psql(&format!(
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = '{app}' AND state = 'streaming'"
        ))
        .is_ok_and(|n| n == "1")
}

/// A port nothing listens on.
fn dead_port() -> u16 {
    crate::support::free_port()
}

/// Runs `walrcv stream` over `ports` with `attrs` until `want` lists it in
/// `pg_stat_replication`; checks `other` does not, and that walrcv logged its
/// choice. Returns walrcv's stderr.
fn streams_from(ports: &[u16], attrs: &str, want: &PgServer, other: Option<&PgServer>) -> String {
    let app = format!("walrcv_{}", attrs.replace('-', "_"));
    let dir = archive_dir();
    let mut rcv = stream(dir.path(), &hosts(ports, attrs, &app));
    wait_until(
        Duration::from_secs(60),
        &format!("{attrs}: walrcv streaming from port {}", want.port()),
        || {
            assert!(
                rcv.is_running(),
                "{attrs}: walrcv exited:\n{}",
                rcv.stderr()
            );
            streams_to(want, &app)
        },
    );
    if let Some(other) = other {
        assert!(
            !streams_to(other, &app),
            "{attrs}: also streaming from port {}",
            other.port()
        );
    }
    rcv.wait_for_stderr(
        &format!(
            "connected to server at \"127.0.0.1\", port {} (target_session_attrs={attrs})",
            want.port()
        ),
        Duration::from_secs(10),
    );
    let status = rcv.terminate();
    assert!(
        status.success(),
        "{attrs}: SIGTERM exits 0: {}",
        rcv.stderr()
    );
    rcv.stderr()
}

fn primary_and_standby(major: u32) -> (PgServer, PgServer) {
    let primary = PgServer::builder().major(major).wal_segsize_mb(1).start();
    primary.psql("CREATE TABLE t(x int)");
    let standby = primary.create_standby();
    (primary, standby)
}

#[test]
fn each_target_session_attrs_picks_its_server() {
    let (p, s) = primary_and_standby(15);
    let (pp, sp) = (p.port(), s.port());
    // The standby first: primary and read-write must skip it.
    for attrs in ["primary", "read-write"] {
        let log = streams_from(&[sp, pp], attrs, &p, Some(&s));
        assert!(
            log.contains(&format!(
                "connection to server at \"127.0.0.1\", port {sp} failed: server is in hot standby mode"
            )) || log.contains(&format!(
                "connection to server at \"127.0.0.1\", port {sp} failed: session is read-only"
            )),
            "{attrs}: the standby's refusal is logged:\n{log}"
        );
        // A server 14+ reports in_hot_standby and default_transaction_read_only
        // to a physical replication connection: no query needed.
        assert!(!log.contains("SHOW "), "{attrs}: asked the server:\n{log}");
    }
    // The primary first: standby, read-only and prefer-standby skip it.
    for attrs in ["standby", "read-only", "prefer-standby"] {
        let log = streams_from(&[pp, sp], attrs, &s, Some(&p));
        assert!(!log.contains("SHOW "), "{attrs}: asked the server:\n{log}");
    }
    // any: the first host, whatever it is.
    streams_from(&[sp, pp], "any", &s, Some(&p));
    streams_from(&[pp, sp], "any", &p, Some(&s));
}

#[test]
fn prefer_standby_falls_back_to_the_primary_when_the_standby_is_stopped() {
    let (p, mut s) = primary_and_standby(15);
    let (pp, sp) = (p.port(), s.port());
    streams_from(&[pp, sp], "prefer-standby", &s, Some(&p));
    s.stop();
    let log = streams_from(&[sp, pp], "prefer-standby", &p, None);
    assert!(
        log.contains(&format!(
            "connection to server at \"127.0.0.1\", port {pp} failed: server is not in hot standby mode"
        )),
        "the first pass refused the primary:\n{log}"
    );
}

#[test]
fn waits_for_a_primary_and_streams_once_a_standby_is_promoted() {
    let (mut p, s) = primary_and_standby(15);
    p.stop();
    let dead = dead_port();
    let app = "walrcv_waits";
    let dir = archive_dir();
    let mut rcv = stream(dir.path(), &hosts(&[dead, s.port()], "primary", app));
    // No host fits: the error names each host and why, and walrcv tries again.
    let refusal = "no server fits target_session_attrs=primary";
    wait_until(
        Duration::from_secs(60),
        "walrcv to try all hosts twice",
        || {
            assert!(rcv.is_running(), "walrcv exited:\n{}", rcv.stderr());
            rcv.stderr().matches(refusal).count() >= 2
        },
    );
    let log = rcv.stderr();
    let line = log.lines().find(|l| l.contains(refusal)).unwrap();
    assert!(line.contains(&format!("port {dead}")), "{line}");
    assert!(
        line.contains(&format!(
            "connection to server at \"127.0.0.1\", port {} failed: server is in hot standby mode",
            s.port()
        )),
        "{line}"
    );
    assert!(log.contains("waiting"), "backs off between tries:\n{log}");

    s.promote();
    wait_until(
        Duration::from_secs(90),
        "walrcv streaming from the promoted standby",
        || {
            assert!(rcv.is_running(), "walrcv exited:\n{}", rcv.stderr());
            streams_to(&s, app)
        },
    );
    s.psql("INSERT INTO t SELECT generate_series(1, 20000)");
    s.psql("SELECT pg_switch_wal()");
    wait_until(
        Duration::from_secs(60),
        "a complete timeline 2 segment in the archive",
        || {
            std::fs::read_dir(dir.path()).unwrap().any(|e| {
                let n = e.unwrap().file_name().to_string_lossy().into_owned();
                n.len() == 24 && n.starts_with("00000002")
            })
        },
    );
    assert!(
        assert_complete_segments_identical(dir.path(), &s.wal_dir()) >= 1,
        "the archive's segments equal the new primary's"
    );
    let status = rcv.terminate();
    assert!(status.success(), "SIGTERM exits 0: {}", rcv.stderr());
}

/// Servers 16, 17 and 18 (15 above) report in_hot_standby and
/// default_transaction_read_only to a physical replication connection too:
/// the role is known without a query.
#[test]
fn newer_servers_report_their_role_at_start_up() {
    for major in [16, 17, 18] {
        let (p, s) = primary_and_standby(major);
        let (pp, sp) = (p.port(), s.port());
        let log = streams_from(&[sp, pp], "primary", &p, Some(&s));
        assert!(
            log.contains("server is in hot standby mode"),
            "{major}: the standby was refused:\n{log}"
        );
        assert!(!log.contains("SHOW "), "{major}: asked the server:\n{log}");
        let log = streams_from(&[pp, sp], "standby", &s, Some(&p));
        assert!(!log.contains("SHOW "), "{major}: asked the server:\n{log}");
    }
}

/// PostgreSQL 13 does not report in_hot_standby: the role is read with SHOW
/// over the replication connection.
#[test]
fn postgres_13_roles_are_read_with_show() {
    let (p, s) = primary_and_standby(13);
    let (pp, sp) = (p.port(), s.port());
    for attrs in ["primary", "read-write"] {
        let log = streams_from(&[sp, pp], attrs, &p, Some(&s));
        assert!(
            log.contains("SHOW transaction_read_only: on"),
            "{attrs}: the standby was asked:\n{log}"
        );
        assert!(
            log.contains("SHOW transaction_read_only: off"),
            "{attrs}: the primary was asked:\n{log}"
        );
    }
    for attrs in ["standby", "read-only", "prefer-standby"] {
        streams_from(&[pp, sp], attrs, &s, Some(&p));
    }
    let log = streams_from(&[pp, sp], "standby", &s, Some(&p));
    assert!(
        log.contains("SHOW default_transaction_read_only: off"),
        "a read-only session, not read-only by default: in recovery:\n{log}"
    );

    // default_transaction_read_only on a 13 primary: read-only either way,
    // so its role cannot be told; it is refused for primary, with the reason.
    p.set_conf_and_reload("default_transaction_read_only = on");
    let app = "walrcv_unknown";
    let dir = archive_dir();
    let mut rcv = stream(dir.path(), &hosts(&[pp], "primary", app));
    rcv.wait_for_stderr(
        "cannot tell whether the server is in hot standby mode",
        Duration::from_secs(60),
    );
    assert!(!streams_to(&p, app));
    let status = rcv.terminate();
    assert!(status.success(), "SIGTERM exits 0: {}", rcv.stderr());
}

/// `program` (a `pg_receivewal` symlink to walrcv, or Debian's real one)
/// with a clean environment.
fn pg_receivewal_command(program: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(program);
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("PGPASSFILE", "/nonexistent/walrcv-test-pgpass")
        .stdin(std::process::Stdio::null());
    cmd
}

/// Runs `program args` to completion: (exit code, stderr).
fn run_as_pg_receivewal(program: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = pg_receivewal_command(program);
    cmd.args(args);
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    (out.status.code(), out.stderr)
}

/// Under the pg_receivewal name (Barman's invocation, a host list with the
/// standby first and `target_session_attrs=read-write`): the primary is
/// chosen, the log lines are in pg_receivewal's format, and an invalid value
/// gives pg_receivewal's own message.
#[test]
fn as_pg_receivewal_a_host_list_reaches_the_primary() {
    let link_dir = tempfile::tempdir().unwrap();
    let link = link_dir.path().join("pg_receivewal");
    std::os::unix::fs::symlink(walrcv_bin(), &link).unwrap();
    let (p, s) = primary_and_standby(15);
    let (pp, sp) = (p.port(), s.port());
    let dir = archive_dir();
    let conninfo = format!(
        "{} replication=true dbname=replication",
        hosts(&[sp, pp], "read-write", "barman_receive_wal")
    );
    let mut cmd = pg_receivewal_command(&link);
    cmd.args([
        &format!("--dbname={conninfo}"),
        "--verbose",
        "--no-password",
        &format!("--directory={}", dir.path().display()),
    ]);
    let mut rcv = BackgroundProcess::spawn(cmd);
    rcv.wait_for_stderr(
        &format!(
            "pg_receivewal: connected to server at \"127.0.0.1\", port {pp} (target_session_attrs=read-write)"
        ),
        Duration::from_secs(60),
    );
    p.psql("INSERT INTO t SELECT generate_series(1, 20000)");
    p.switch_wal();
    wait_until(Duration::from_secs(60), "a complete segment", || {
        assert!(rcv.is_running(), "exited:\n{}", rcv.stderr());
        assert_complete_segments_identical(dir.path(), &p.wal_dir()) >= 1
    });
    assert!(streams_to(&p, "barman_receive_wal"));
    let status = rcv.terminate();
    let log = rcv.stderr();
    assert!(status.success(), "SIGTERM exits 0: {log}");
    assert!(
        log.contains(&format!(
            "pg_receivewal: connection to server at \"127.0.0.1\", port {sp} failed: session is read-only; trying the next host"
        )),
        "{log}"
    );

    // A bad value: pg_receivewal's message (libpq's), then walrcv's details.
    let empty = archive_dir();
    let bad = [
        "-D",
        empty.path().to_str().unwrap(),
        "-d",
        "host=127.0.0.1 target_session_attrs=master",
    ];
    let (_, theirs) = run_as_pg_receivewal(&debian_bin("pg_receivewal"), &bad);
    let (code, ours) = run_as_pg_receivewal(&link, &bad);
    assert_eq!(code, Some(2), "a configuration error: {ours}");
    let theirs = theirs.lines().next().unwrap_or_default();
    assert_eq!(
        theirs,
        "pg_receivewal: error: invalid target_session_attrs value: \"master\""
    );
    assert!(ours.starts_with(theirs), "ours: {ours}\ntheirs: {theirs}");
}

/// A standby behind the archive first in the host list: it refuses the
/// archive's start point ("requested starting point ... is ahead of the WAL
/// flush position of this server", SQLSTATE XX000). With one host that needs
/// an operator (exit 3); with several, walrcv tries the other hosts (the
/// lagging one last) and streams from the primary. (Before: exit 3 at the
/// first refusal, the primary never tried.)
#[test]
fn a_standby_behind_the_archive_first_in_the_list_gives_way_to_the_other_hosts() {
    let (p, mut s) = primary_and_standby(15);
    let app = "walrcv_lagging";
    // The standby stops where it is; the primary goes on, into a new segment.
    s.stop();
    p.psql("INSERT INTO t SELECT generate_series(1, 1000)");
    p.switch_wal();
    p.psql("INSERT INTO t SELECT generate_series(1, 1000)");
    // The archive follows the primary to its end.
    let dir = archive_dir();
    let mut first = stream(dir.path(), &hosts(&[p.port()], "any", app));
    let end = p.current_lsn();
    p.wait_for_flush(app, end, Duration::from_secs(30));
    assert!(first.terminate().success(), "{}", first.stderr());
    // The standby comes back without its upstream: it stays behind.
    let mut auto = std::fs::OpenOptions::new()
        .append(true)
        .open(s.data_dir().join("postgresql.auto.conf"))
        .unwrap();
    use std::io::Write as _;
    writeln!(
        auto,
        "primary_conninfo = 'host=127.0.0.1 port={} user=postgres'",
        dead_port()
    )
    .unwrap();
    drop(auto);
    s.start_again();
    let behind = s.current_lsn();
    assert!(
        behind < end - end % p.wal_segment_size(),
        "the standby at {} is not behind the archive's segment start",
        crate::support::format_lsn(behind)
    );
    let mut rcv = stream(dir.path(), &hosts(&[s.port(), p.port()], "any", app));
    wait_until(
        Duration::from_secs(60),
        "walrcv streaming from the primary",
        || {
            assert!(rcv.is_running(), "walrcv exited:\n{}", rcv.stderr());
            streams_to(&p, app)
        },
    );
    let log = rcv.stderr();
    assert!(
        log.contains("is ahead of the WAL flush position"),
        "the standby refused first:\n{log}"
    );
    assert!(
        log.contains(&format!(
            "server at \"127.0.0.1\", port {} does not have the WAL the archive needs next",
            s.port()
        )),
        "{log}"
    );
    p.psql("INSERT INTO t SELECT generate_series(1, 1000)");
    p.wait_for_flush(app, p.current_lsn(), Duration::from_secs(30));
    assert!(
        rcv.terminate().success(),
        "SIGTERM exits 0: {}",
        rcv.stderr()
    );
}
