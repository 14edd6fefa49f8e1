//! Smoke tests of the test harness itself (tests/support): servers of each
//! installed major version start with the requested settings, standbys follow
//! and promote, and every auth method accepts the right password only.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::{self, Auth, BackgroundProcess, PgServer, SUPERUSER, SUPERUSER_PASSWORD};

/// Starts `major` with 1 MB segments and checks version, segment size, WAL
/// switching, pgbench, stop/start and the removal of the directory on drop.
fn check_major(major: u32) {
    let mut pg = PgServer::builder().major(major).wal_segsize_mb(1).start();
    assert_eq!(pg.major(), major);
    let num = pg.version_num();
    assert_eq!(num / 10000, major, "server_version_num {num}");
    assert_eq!(pg.psql("SHOW wal_segment_size"), "1MB");
    assert_eq!(pg.psql("SHOW wal_level"), "replica");
    assert_eq!(pg.wal_segment_size(), 1 << 20);
    assert!(pg.data_dir().join("PG_VERSION").is_file());
    // psql 15 prints the result of every statement of a -c string.
    assert_eq!(pg.psql("SELECT 1; SELECT 2"), "1\n2");

    let first = pg.walfile_name(pg.current_lsn());
    let before = pg.current_lsn();
    pg.pgbench_init(1);
    let out = pg.pgbench(&["-t", "20", "-c", "2"]);
    assert!(out.contains("tps"), "pgbench output: {out}");
    let boundary = pg.force_switch_wal();
    let after = pg.current_lsn();
    assert!(after > before + (1 << 20), "{before:X} -> {after:X}");
    assert!(
        after >= boundary && boundary % (1 << 20) == 0,
        "{after:X} {boundary:X}"
    );
    let names = pg.wal_segment_names();
    assert!(names.contains(&first), "{first} not in {names:?}");
    for name in &names {
        let len = std::fs::metadata(pg.wal_dir().join(name)).unwrap().len();
        assert_eq!(len, 1 << 20, "{name}");
    }

    let sysid = pg.system_identifier();
    pg.stop();
    assert!(pg.try_psql("SELECT 1").is_err());
    pg.start_again();
    assert_eq!(pg.system_identifier(), sysid);
    pg.stop_immediate();
    pg.start_again();
    assert_eq!(pg.timeline(), 1);

    let dir: PathBuf = pg.socket_dir().to_path_buf();
    drop(pg);
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn harness_major_15() {
    check_major(15);
}

#[test]
fn harness_major_13() {
    check_major(13);
}

#[test]
fn harness_major_14() {
    check_major(14);
}

#[test]
fn harness_major_17() {
    check_major(17);
}

#[test]
fn harness_installed_majors() {
    assert_eq!(support::test_majors(), [15, 13, 14, 16, 17, 18]);
    let majors = support::available_majors();
    for m in [15, 13, 14, 16, 17, 18] {
        assert!(
            majors.contains(&m),
            "PostgreSQL {m} missing ({majors:?}): run scripts/install-deps.sh"
        );
    }
}

/// Standby of a primary, data reaches it, promotion leaves timeline 2.
fn check_standby_promote(major: u32) {
    let primary = PgServer::builder().major(major).wal_segsize_mb(1).start();
    primary.psql("CREATE TABLE t (i int); INSERT INTO t VALUES (1)");
    let standby = primary.create_standby();
    assert!(standby.is_in_recovery());
    assert_ne!(standby.port(), primary.port());
    assert_eq!(standby.system_identifier(), primary.system_identifier());
    primary.psql("INSERT INTO t VALUES (2)");
    support::wait_until(Duration::from_secs(30), "row 2 on the standby", || {
        standby.psql("SELECT count(*) FROM t") == "2"
    });
    let apps = primary.stat_replication();
    assert_eq!(apps.len(), 1, "{apps:?}");
    assert!(
        apps[0].starts_with("walrcv_test_standby|streaming|"),
        "{apps:?}"
    );

    assert_eq!(standby.timeline(), 1);
    assert!(standby.current_lsn() > 0);
    standby.promote();
    assert!(!standby.is_in_recovery());
    assert_eq!(standby.timeline(), 2);
    assert!(standby.wal_dir().join("00000002.history").is_file());
    let name = standby.walfile_name(standby.current_lsn());
    assert!(name.starts_with("00000002"), "{name}");
    standby.psql("INSERT INTO t VALUES (3)");
    assert_eq!(primary.psql("SELECT count(*) FROM t"), "2");
}

#[test]
fn harness_standby_promote_15() {
    check_standby_promote(15);
}

#[test]
fn harness_standby_promote_17() {
    check_standby_promote(17);
}

fn check_auth(auth: Auth, major: u32) {
    let pg = PgServer::builder().major(major).auth(auth).start();
    assert_eq!(pg.auth(), auth);
    pg.create_role("alice", Some("alice's pw"), true);
    pg.create_role("bob", Some("bob-pw"), false);
    if auth == Auth::Md5 {
        let stored = pg.psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'alice'");
        assert!(stored.starts_with("md5"), "{stored}");
    }
    if matches!(auth, Auth::Scram | Auth::Password) {
        let stored = pg.psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'alice'");
        assert!(stored.starts_with("SCRAM-SHA-256$"), "{stored}");
    }
    assert_eq!(pg.conninfo().contains("password="), auth.needs_password());

    let ok = pg.try_psql_as(SUPERUSER, Some(SUPERUSER_PASSWORD), "SELECT current_user");
    assert_eq!(ok.as_deref(), Ok(SUPERUSER));
    let ok = pg.try_psql_as("alice", Some("alice's pw"), "SELECT current_user");
    assert_eq!(ok.as_deref(), Ok("alice"));
    let repl = pg.try_replication_command("alice", Some("alice's pw"), "IDENTIFY_SYSTEM");
    let line = repl.unwrap_or_else(|e| panic!("{auth:?}: IDENTIFY_SYSTEM: {e}"));
    assert!(
        line.starts_with(&pg.system_identifier().to_string()),
        "{line}"
    );

    let wrong = pg.try_psql_as("alice", Some("not it"), "SELECT 1");
    let none = pg.try_psql_as("alice", None, "SELECT 1");
    let wrong_repl = pg.try_replication_command("alice", Some("not it"), "IDENTIFY_SYSTEM");
    // bob has no REPLICATION attribute: refused whatever the method.
    let bob = pg.try_replication_command("bob", Some("bob-pw"), "IDENTIFY_SYSTEM");
    let bob = bob.expect_err("bob has no REPLICATION");
    assert!(bob.contains("replication"), "{bob}");
    if auth == Auth::Trust {
        assert!(wrong.is_ok() && none.is_ok() && wrong_repl.is_ok());
    } else {
        let wrong = wrong.expect_err("wrong password accepted");
        assert!(
            wrong.contains("password authentication failed"),
            "{auth:?}: {wrong}"
        );
        let none = none.expect_err("missing password accepted");
        assert!(none.contains("password"), "{auth:?}: {none}");
        let wrong_repl = wrong_repl.expect_err("wrong password accepted (replication)");
        assert!(
            wrong_repl.contains("password authentication failed"),
            "{wrong_repl}"
        );
    }
}

#[test]
fn harness_auth_trust() {
    check_auth(Auth::Trust, 15);
}

#[test]
fn harness_auth_password() {
    check_auth(Auth::Password, 15);
}

#[test]
fn harness_auth_md5() {
    check_auth(Auth::Md5, 15);
}

#[test]
fn harness_auth_scram() {
    check_auth(Auth::Scram, 15);
}

#[test]
fn harness_auth_scram_13() {
    // 13 still defaults to md5 storage: the harness must switch it to SCRAM.
    check_auth(Auth::Scram, 13);
}

#[test]
fn harness_no_replication_hba() {
    let pg = PgServer::builder().no_replication_hba().start();
    let err = pg
        .try_replication_command(SUPERUSER, None, "IDENTIFY_SYSTEM")
        .expect_err("replication connection accepted");
    assert!(
        err.contains("no pg_hba.conf entry for replication connection"),
        "{err}"
    );
    assert_eq!(
        pg.try_psql_as(SUPERUSER, None, "SELECT 1").as_deref(),
        Ok("1")
    );
}

#[test]
fn harness_conf_and_slots() {
    let pg = PgServer::builder()
        .conf("wal_sender_timeout = '7s'")
        .wal_segsize_mb(2)
        .start();
    assert_eq!(pg.psql("SHOW wal_sender_timeout"), "7s");
    assert_eq!(pg.psql("SHOW wal_segment_size"), "2MB");
    pg.create_physical_slot("s1");
    assert!(pg.slot_exists("s1"));
    assert!(pg.slot_restart_lsn("s1").is_some());
    assert!(!pg.slot_exists("s2"));
    assert_eq!(support::parse_lsn("16/B374D848"), 0x16_B374_D848);
    assert_eq!(support::format_lsn(0x16_B374_D848), "16/B374D848");
    assert!(support::walrcv_bin().is_file());
}

#[test]
fn harness_free_ports_are_distinct() {
    let ports: std::collections::HashSet<u16> = (0..50).map(|_| support::free_port()).collect();
    assert_eq!(ports.len(), 50);
}

#[test]
fn harness_wal_file_names() {
    let seg16 = 16 << 20;
    assert_eq!(
        support::wal_file_name(1, 0x16_B374_D848, seg16),
        "0000000100000016000000B3"
    );
    assert_eq!(
        support::parse_wal_file_name("0000000100000016000000B3.partial", seg16),
        Some((1, 0x16_B300_0000))
    );
    // 1 MB segments: 4096 per xlogid.
    assert_eq!(
        support::wal_file_name(2, 0x1_0030_0000, 1 << 20),
        "000000020000000100000003"
    );
    assert_eq!(
        support::parse_wal_file_name("000000020000000100000003", 1 << 20),
        Some((2, 0x1_0030_0000))
    );
    assert_eq!(
        support::parse_wal_file_name("00000002.history", 1 << 20),
        None
    );
}

#[test]
fn harness_processes() {
    let mut sh = Command::new("sh");
    sh.args(["-c", "echo out; echo err >&2; exit 3"]);
    let out = support::run_with_timeout(sh, Duration::from_secs(10));
    assert_eq!(out.code(), Some(3));
    assert_eq!(out.stdout, "out\n");
    out.assert_failure_with("err");

    let mut sh = Command::new("sh");
    sh.args([
        "-c",
        "trap 'echo bye >&2; exit 0' INT; echo ready >&2; while :; do sleep 0.1; done",
    ]);
    let mut p = BackgroundProcess::spawn(sh);
    p.wait_for_stderr("ready", Duration::from_secs(10));
    assert!(p.is_running());
    assert!(p.interrupt().success());
    assert!(p.stderr().contains("bye"));

    let mut sleep = Command::new("sleep");
    sleep.arg("100");
    let mut p = BackgroundProcess::spawn(sleep);
    let status = p.kill9();
    assert_eq!(status.signal(), Some(9));
    let pid = p.pid();
    drop(p);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}

/// The comparison helpers agree with the reference: pg_receivewal's archive of
/// a 15 primary is byte-identical, and its `.partial` matches up to the flush
/// position it reported.
#[test]
fn harness_compare_with_pg_receivewal() {
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    let archive = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(support::debian_bin("pg_receivewal"));
    cmd.arg("-D")
        .arg(archive.path())
        .args(["-d", &pg.conninfo(), "--synchronous", "-v", "-n"]);
    let mut rcv = BackgroundProcess::spawn(cmd);
    rcv.wait_for_stderr("starting log streaming", Duration::from_secs(30));
    pg.pgbench_init(1);
    pg.pgbench(&["-t", "50"]);
    let boundary = pg.force_switch_wal();
    assert_eq!(boundary % pg.wal_segment_size(), 0);
    pg.wait_for_flush("pg_receivewal", boundary, Duration::from_secs(30));
    pg.psql("INSERT INTO walrcv_switch VALUES (now())");
    let target = pg.current_lsn();
    assert!(target > boundary);
    let flushed = pg.wait_for_flush("pg_receivewal", target, Duration::from_secs(30));
    assert!(rcv.interrupt().success());

    let names = support::assert_only_wal_names(archive.path());
    let compared = support::assert_segments_identical(archive.path(), &pg);
    assert!(compared.len() >= 2, "{names:?}");
    let partial = support::wal_file_name(1, flushed, pg.wal_segment_size()) + ".partial";
    assert!(names.contains(&partial), "{partial} not in {names:?}");
    support::assert_partial_matches(archive.path(), &pg, &partial, flushed);
    // pg_receivewal stopped; the primary keeps writing past its .partial.
    pg.psql("INSERT INTO walrcv_switch VALUES (now())");
    let later = pg.current_lsn();
    assert_eq!(
        later / pg.wal_segment_size(),
        flushed / pg.wal_segment_size(),
        "the later WAL is in the .partial's segment"
    );
    // The check must fail for the one reason it exists for: the bytes differ
    // (not a bad name, a short file or an LSN outside the segment).
    let failure = std::panic::catch_unwind(|| {
        support::assert_partial_matches(archive.path(), &pg, &partial, later)
    })
    .expect_err("the .partial cannot match past what was received");
    let message = failure
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| failure.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(
        message.contains(&format!("{partial} differs from the primary's")),
        "assert_partial_matches failed for another reason: {message}"
    );
}

#[test]
fn harness_standby_promote_13() {
    check_standby_promote(13);
}

/// A commit waiting for a synchronous standby that never comes fails the
/// test through psql's time limit instead of hanging it.
#[test]
fn harness_sync_commit_does_not_hang() {
    let pg = PgServer::builder()
        .auth(Auth::Scram)
        .conf("synchronous_standby_names = 'nobody'")
        .start();
    pg.psql("SET synchronous_commit = local; CREATE TABLE t (i int)");
    let start = std::time::Instant::now();
    let err = pg
        .try_psql_timeout("INSERT INTO t VALUES (1)", Duration::from_secs(2))
        .unwrap_err();
    assert!(err.contains("timed out"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(10));
    // The backend still waits for the standby, the row not yet visible.
    let waiting = pg.psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'");
    assert_eq!(waiting, "1");
}

/// The text of a caught panic.
fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(p) => p.downcast_ref::<&str>().unwrap_or(&"?").to_string(),
    }
}

/// `PgServer::wait_streaming` and `make_synchronous`: they return once
/// walrcv streams and is `sync`; they fail as soon as the receiver has
/// exited, with what it printed, and at the deadline when nothing streams,
/// with the server's `pg_stat_replication`.
#[test]
fn harness_wait_streaming_passes_and_fails_with_what_happened() {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    let pg = PgServer::builder().start();
    let archive = support::archive_dir();
    let dir = archive.path().to_str().unwrap();
    let mut rcv = support::walrcv_spawn(&["stream", "-D", dir, "-d", &pg.conninfo()]);
    pg.wait_streaming("walrcv", Some(&mut rcv), Duration::from_secs(60));
    pg.make_synchronous("walrcv", Some(&mut rcv), Duration::from_secs(60));
    assert_eq!(
        pg.psql("SELECT sync_state FROM pg_stat_replication WHERE application_name = 'walrcv'"),
        "sync"
    );

    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo the receiver gave up >&2; exit 3"]);
    let mut quitter = BackgroundProcess::spawn(cmd);
    let exited = catch_unwind(AssertUnwindSafe(|| {
        pg.wait_streaming("quitter", Some(&mut quitter), Duration::from_secs(600))
    }))
    .expect_err("a receiver that exited never streams");
    let text = panic_text(exited);
    assert!(text.contains("the receiver exited"), "{text}");
    assert!(text.contains("the receiver gave up"), "{text}");

    let late = catch_unwind(|| pg.wait_streaming("nobody", None, Duration::from_millis(300)))
        .expect_err("nobody streams as `nobody`");
    let text = panic_text(late);
    assert!(
        text.contains("timed out after 300ms waiting for nobody"),
        "{text}"
    );
    assert!(text.contains("walrcv|streaming|sync"), "{text}");
    assert!(rcv.interrupt().success(), "{}", rcv.stderr());
}
