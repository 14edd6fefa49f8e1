//! Faults on the server's side: refusals that need an operator (decided by
//! SQLSTATE, whatever the server's `lc_messages`), a replication slot dropped
//! or invalidated while walrcv runs, a primary stopped in immediate mode
//! mid-stream, and a standby promoted while walrcv streams from it under load.
//!
//! The first tests run the `walrcv` binary against the scripted fake primary
//! ([`crate::support::fake_walsender`]), which sends translated error texts;
//! the others run against real servers.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::fake_walsender::{FakeConfig, FakeWalsender, ServerMsg};
use crate::support::{
    assert_only_wal_names, assert_partial_matches, assert_segments_identical, complete_segments,
    file_names, format_lsn, parse_wal_file_name, wait_until, walrcv_run, walrcv_spawn,
    BackgroundProcess, PgServer,
};

// ---------------------------------------------------------------------------
// Against the fake primary: translated texts, SQLSTATE decides.

fn fake_conninfo(fake: &FakeWalsender) -> String {
    format!("host=127.0.0.1 port={} user=walrcv", fake.port())
}

fn spawn_against_fake(fake: &FakeWalsender, dir: &Path) -> BackgroundProcess {
    walrcv_spawn(&[
        "stream",
        "-D",
        dir.to_str().expect("utf-8 path"),
        "-d",
        &fake_conninfo(fake),
        "-w",
        "-v",
    ])
}

/// Waits (without blocking the fake's tasks) for the process to exit.
async fn exit_code_within(child: &mut BackgroundProcess, limit: Duration) -> Option<i32> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait() {
            return status.code();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// A 58P01 in German inside the stream (as a walsender reports a removed
/// segment): walrcv stops at once with exit status 3, and does not retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn translated_segment_removed_exits_3_without_retrying() {
    let mut fake = FakeWalsender::start(FakeConfig::pg15_fixture()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = spawn_against_fake(&fake, dir.path());
    let mut stream = fake.next_stream(Duration::from_secs(20)).await;
    let text = "das angeforderte WAL-Segment 000000010000000000000008 wurde schon entfernt";
    stream
        .send(&[ServerMsg::Error {
            code: "58P01".into(),
            message: text.into(),
        }])
        .await
        .expect("send the error");
    let code = exit_code_within(&mut child, Duration::from_secs(20)).await;
    let err = child.stderr();
    assert_eq!(code, Some(3), "exit status 3 (needs an operator):\n{err}");
    // One more connection looks for the oldest WAL the server has (here the
    // server's position is in the removed segment itself: no probe).
    assert!(fake.connections() <= 2, "no retry:\n{err}");
    assert!(
        fake.try_next_stream(Duration::from_millis(200))
            .await
            .is_none(),
        "no second START_REPLICATION:\n{err}"
    );
    assert!(
        err.contains(text),
        "the server's own words are shown:\n{err}"
    );
    assert!(err.contains("SQLSTATE 58P01"), "{err}");
    assert!(
        err.contains("the archive needs WAL from 0/800000 on timeline 1"),
        "the missing WAL is named:\n{err}"
    );
    assert!(err.contains("HINT: "), "{err}");
}

/// An XX000 in French at START_REPLICATION while walrcv asks for a timeline
/// that is not the server's: the refusal of a start point not in the server's
/// history, told by walrcv's own facts. Exit status 3, no retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn translated_history_refusal_exits_3_without_retrying() {
    let text =
        "le point de reprise 0/900000 de la timeline 1 n'est pas dans l'historique du serveur";
    let config = FakeConfig {
        timeline: 2,
        xlogpos: 0xA0_0000,
        // Its history continues the archive (which ends at 0/900000), so
        // walrcv asks for it; the fake refuses anyway, in French.
        timeline_history: Some("1\t0/A00000\tno recovery target specified\n".into()),
        ..FakeConfig::pg15_fixture()
    }
    .refusing_start("XX000", text);
    let fake = FakeWalsender::start(config).await;
    let dir = tempfile::tempdir().expect("tempdir");
    // The archive ends with segment 8 of timeline 1: walrcv asks for 0/900000
    // on timeline 1, the server is on timeline 2.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/wal/pg15");
    let seg = "000000010000000000000008";
    std::fs::copy(fixture.join(seg), dir.path().join(seg)).expect("copy fixture segment");
    let mut child = spawn_against_fake(&fake, dir.path());
    let code = exit_code_within(&mut child, Duration::from_secs(20)).await;
    let err = child.stderr();
    assert_eq!(code, Some(3), "exit status 3 (needs an operator):\n{err}");
    assert_eq!(fake.connections(), 1, "no retry:\n{err}");
    assert!(
        err.contains(text) && err.contains("SQLSTATE XX000"),
        "{err}"
    );
    assert!(
        err.contains("walrcv asked for 0/900000 on timeline 1; the server is on timeline 2"),
        "{err}"
    );
}

/// Retryable SQLSTATEs are retried, whatever the text says: an XX000 on the
/// server's own timeline at a start point it has, and a slot in use (55006)
/// while the previous walsender exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_refusals_are_retried() {
    for (code, text) in [
        (
            "XX000",
            "requested starting point 0/800000 is ahead of the WAL flush position of this server 0/700000",
        ),
        ("55006", "Replikations-Slot »walrcv« ist aktiv für PID 4242"),
    ] {
        let fake =
            FakeWalsender::start(FakeConfig::pg15_fixture().refusing_start(code, text)).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = spawn_against_fake(&fake, dir.path());
        let start = Instant::now();
        while fake.connections() < 3 && start.elapsed() < Duration::from_secs(20) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let err = child.stderr();
        assert!(
            fake.connections() >= 3,
            "{code}: walrcv retries ({} connections):\n{err}",
            fake.connections()
        );
        assert!(child.is_running(), "{code}: still running:\n{err}");
        // Same failure again and again: the delay grows (1 s, then 2 s).
        let times = fake.connection_times();
        let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            gaps[1] > gaps[0] + Duration::from_millis(500),
            "{code}: backoff grows: {gaps:?}\n{err}"
        );
        assert!(err.contains("server failure, 2 in a row"), "{code}:\n{err}");
        child.interrupt();
    }
}

// ---------------------------------------------------------------------------
// Real servers: slots.

fn spawn_walrcv(pg: &PgServer, dir: &Path, extra: &[&str]) -> BackgroundProcess {
    let conn = pg.conninfo();
    let mut args = vec![
        "stream",
        "-D",
        dir.to_str().expect("utf-8 path"),
        "-d",
        &conn,
        "-v",
    ];
    args.extend_from_slice(extra);
    walrcv_spawn(&args)
}

fn wait_exit(child: &mut BackgroundProcess, limit: Duration) -> Option<i32> {
    child.wait_timeout(limit).and_then(|s| s.code())
}

/// The slot walrcv streams through is dropped (after terminating walrcv's
/// walsender, as an operator must): walrcv stops with exit status 3 and says
/// the slot does not exist, instead of retrying forever.
#[test]
fn slot_dropped_while_streaming_exits_3() {
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    pg.create_physical_slot("walrcv_slot");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = spawn_walrcv(&pg, dir.path(), &["-S", "walrcv_slot"]);
    pg.wait_streaming("walrcv", Some(&mut child), Duration::from_secs(30));
    pg.psql("CREATE TABLE t AS SELECT generate_series(1, 10000) AS x");
    // walrcv reconnects within a second: terminate and drop until the drop
    // finds the slot inactive.
    wait_until(Duration::from_secs(30), "the slot dropped", || {
        pg.psql(
            "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots \
             WHERE slot_name = 'walrcv_slot' AND active_pid IS NOT NULL",
        );
        pg.try_psql("SELECT pg_drop_replication_slot('walrcv_slot')")
            .is_ok()
    });
    let code = wait_exit(&mut child, Duration::from_secs(60));
    let err = child.stderr();
    assert_eq!(code, Some(3), "exit status 3:\n{err}");
    assert!(err.contains("SQLSTATE 42704"), "{err}");
    assert!(err.contains("the replication slot does not exist"), "{err}");
    assert!(err.contains("--create-slot"), "says what to do:\n{err}");
    assert_only_wal_names(dir.path());
}

/// A slot invalidated because `max_slot_wal_keep_size` was exceeded while
/// walrcv was stopped (`wal_status = lost`, the WAL it needs removed):
/// walrcv stops with exit status 3, naming the missing WAL range and what to
/// do, instead of retrying forever.
#[test]
fn invalidated_slot_exits_3_naming_the_missing_range() {
    let pg = PgServer::builder()
        .wal_segsize_mb(1)
        .conf("wal_keep_size = 0")
        .conf("max_slot_wal_keep_size = '4MB'")
        .start();
    pg.create_physical_slot("walrcv_slot");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = spawn_walrcv(&pg, dir.path(), &["-S", "walrcv_slot"]);
    pg.wait_streaming("walrcv", Some(&mut child), Duration::from_secs(30));
    pg.psql("CREATE TABLE t AS SELECT generate_series(1, 20000) AS x");
    let end = pg.force_switch_wal();
    pg.wait_for_flush("walrcv", end, Duration::from_secs(30));
    assert!(child.interrupt().success(), "{}", child.stderr());
    let partial = file_names(dir.path())
        .into_iter()
        .find(|n| n.ends_with(".partial"))
        .expect("a .partial in the archive");
    let (_, resume_at) = parse_wal_file_name(&partial, pg.wal_segment_size()).expect("wal name");

    // WAL past max_slot_wal_keep_size while walrcv is stopped, then checkpoints.
    wait_until(Duration::from_secs(60), "the slot to be lost", || {
        for _ in 0..4 {
            pg.psql("INSERT INTO t SELECT generate_series(1, 1000); SELECT pg_switch_wal()");
        }
        pg.psql("CHECKPOINT");
        pg.psql("SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'walrcv_slot'")
            == "lost"
    });
    assert!(
        !pg.wal_dir().join(&partial[..24]).exists(),
        "the server removed {}",
        &partial[..24]
    );

    let conn = pg.conninfo();
    let out = walrcv_run(
        &[
            "stream",
            "-D",
            dir.path().to_str().unwrap(),
            "-d",
            &conn,
            "-S",
            "walrcv_slot",
            "-v",
        ],
        Duration::from_secs(60),
    );
    let err = out.stderr.clone();
    assert_eq!(out.code(), Some(3), "exit status 3:\n{err}");
    // 58P01 up to PostgreSQL 17 (the WAL is gone), 55000 from 18 (the slot
    // is refused).
    assert!(
        err.contains("SQLSTATE 58P01") || err.contains("SQLSTATE 55000"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "the archive needs WAL from {} on timeline 1",
            format_lsn(resume_at)
        )),
        "names where the missing WAL starts:\n{err}"
    );
    // The oldest segment the server still has, found by probing.
    let oldest = pg
        .wal_segment_names()
        .into_iter()
        .filter(|n| n.starts_with("00000001"))
        .min()
        .expect("the server has WAL");
    let (_, oldest_lsn) = parse_wal_file_name(&oldest, pg.wal_segment_size()).unwrap();
    assert!(
        err.contains(&format!(
            "the WAL from {} to {} is missing",
            format_lsn(resume_at),
            format_lsn(oldest_lsn)
        )),
        "names the missing range up to the oldest WAL the server has ({oldest}):\n{err}"
    );
    assert!(err.contains("HINT: "), "says what to do:\n{err}");
    assert_eq!(err.matches("waiting").count(), 0, "no retry at all:\n{err}");
    eprintln!("--- walrcv stderr ---\n{err}");
}

// ---------------------------------------------------------------------------
// Real servers: the primary crashes, a standby is promoted.

/// Segment numbers (on any timeline) from the first complete segment to the
/// last file have no hole.
fn assert_no_gap(dir: &Path, seg_size: u64) {
    let mut segnos: Vec<u64> = file_names(dir)
        .iter()
        .filter_map(|n| parse_wal_file_name(n.strip_suffix(".partial").unwrap_or(n), seg_size))
        .map(|(_, lsn)| lsn / seg_size)
        .collect();
    segnos.sort_unstable();
    segnos.dedup();
    for w in segnos.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "gap in the archive between segments {:X} and {:X}: {:?}",
            w[0],
            w[1],
            file_names(dir)
        );
    }
}

/// The primary is stopped in immediate mode while walrcv is still catching
/// up, and restarted: walrcv reconnects by itself, with no gap, and the
/// archive ends identical to the primary's WAL.
#[test]
fn primary_immediate_stop_mid_stream_then_restart() {
    let mut pg = PgServer::builder().wal_segsize_mb(1).start();
    pg.create_physical_slot("walrcv_slot");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = spawn_walrcv(&pg, dir.path(), &["-S", "walrcv_slot"]);
    pg.wait_streaming("walrcv", Some(&mut child), Duration::from_secs(30));
    // Some 100 segments of WAL in one transaction; the server dies once
    // walrcv has flushed two of them and the transaction still runs: walrcv
    // is mid-stream, the server mid-transaction.
    let seg = pg.wal_segment_size();
    let start = pg.current_lsn();
    let mut big = pg.psql_background("CREATE TABLE t AS SELECT generate_series(1, 2000000) AS x");
    wait_until(
        Duration::from_secs(120),
        "walrcv to flush WAL of the transaction in flight",
        || {
            pg.replication_flush_lsn("walrcv")
                .is_some_and(|f| f >= start + 2 * seg)
        },
    );
    assert!(
        big.is_running(),
        "the transaction ended too soon:\n{}",
        big.stderr()
    );
    let written = pg.current_lsn();
    pg.stop_immediate();
    assert!(
        big.wait_timeout(Duration::from_secs(30))
            .is_some_and(|s| !s.success()),
        "psql lost its server:\n{}",
        big.stderr()
    );
    let archived_at_crash = complete_segments(dir.path()).len();
    assert!(
        archived_at_crash >= 2,
        "walrcv had archived WAL of the transaction"
    );
    pg.start_again();
    assert_eq!(
        pg.psql("SELECT to_regclass('t') IS NULL"),
        "t",
        "the transaction was in flight at the crash"
    );
    pg.psql("CREATE TABLE t (x int)");
    pg.psql("INSERT INTO t SELECT generate_series(1, 100000)");
    let end = pg.force_switch_wal();
    pg.psql("INSERT INTO t VALUES (1)");
    let flush = pg.wait_for_flush("walrcv", end, Duration::from_secs(60));
    assert!(child.interrupt().success(), "{}", child.stderr());
    let err = child.stderr();
    assert!(err.contains("waiting"), "walrcv reconnected:\n{err}");
    let segs = assert_segments_identical(dir.path(), &pg);
    assert!(
        segs.len() > archived_at_crash,
        "archived more after the restart ({archived_at_crash} at the crash, {} now, WAL written \
         up to {} before it)",
        segs.len(),
        format_lsn(written)
    );
    assert_no_gap(dir.path(), pg.wal_segment_size());
    let partial = file_names(dir.path())
        .into_iter()
        .find(|n| n.ends_with(".partial"))
        .expect("a .partial");
    assert_partial_matches(dir.path(), &pg, &partial, flush);
    assert_only_wal_names(dir.path());
}

/// A standby is promoted while walrcv streams from it and WAL is still
/// arriving from the old primary (extends stream.rs's idle promotion test):
/// timeline 1's last segment stays `.partial` and matches the standby's bytes
/// up to the switch point, timeline 2 starts in that same segment, no gap,
/// every complete segment identical to the new primary's.
#[test]
fn standby_promoted_under_load_while_streaming() {
    let primary = PgServer::builder().wal_segsize_mb(1).start();
    primary.psql("CREATE TABLE t(x int)");
    let standby = primary.create_standby();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = spawn_walrcv(&standby, dir.path(), &[]);
    wait_until(
        Duration::from_secs(30),
        "walrcv streaming from the standby",
        || {
            standby
                .psql("SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walrcv'")
                == "1"
        },
    );
    // The old primary keeps writing (and the standby receiving) until the
    // promotion cuts them apart.
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = primary.try_psql("INSERT INTO t SELECT generate_series(1, 5000)");
            }
        });
        std::thread::sleep(Duration::from_secs(2));
        standby.promote();
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let switch = standby.psql("SELECT pg_current_wal_lsn()");
    standby.psql("INSERT INTO t SELECT generate_series(1, 50000)");
    let end = standby.force_switch_wal();
    standby.psql("INSERT INTO t VALUES (1)");
    let flush = standby.wait_for_flush("walrcv", end, Duration::from_secs(60));
    assert!(child.terminate().success(), "{}", child.stderr());

    let names = assert_only_wal_names(dir.path());
    assert!(names.contains(&"00000002.history".to_string()), "{names:?}");
    let history = std::fs::read_to_string(dir.path().join("00000002.history")).unwrap();
    let switch_lsn = crate::support::parse_lsn(
        history
            .split('\t')
            .nth(1)
            .unwrap_or_else(|| panic!("history {history:?}")),
    );
    let seg = standby.wal_segment_size();
    let old_partial: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with("00000001") && n.ends_with(".partial"))
        .collect();
    assert_eq!(old_partial.len(), 1, "{names:?}");
    let old_partial = old_partial[0];
    let (_, old_start) = parse_wal_file_name(old_partial, seg).unwrap();
    assert_eq!(
        old_start / seg,
        switch_lsn / seg,
        "timeline 1's .partial is the segment of the switch point {} ({names:?}, switch seen at {switch})",
        format_lsn(switch_lsn)
    );
    // The promoted standby keeps timeline 1's last segment under its own name
    // (NAME.partial only with archiving on).
    let theirs = std::fs::read(standby.wal_dir().join(&old_partial[..24]))
        .or_else(|_| std::fs::read(standby.wal_dir().join(old_partial)))
        .expect("the standby's copy of timeline 1's last segment");
    let ours = std::fs::read(dir.path().join(old_partial)).unwrap();
    let upto = (switch_lsn - old_start) as usize;
    assert!(
        ours[..upto] == theirs[..upto],
        "{old_partial} differs from the standby's below the switch point {}",
        format_lsn(switch_lsn)
    );
    let tl2_first = old_partial[..24].replacen("00000001", "00000002", 1);
    assert!(
        names.contains(&tl2_first) || names.contains(&format!("{tl2_first}.partial")),
        "timeline 2 starts in the switch point's segment: {names:?}"
    );
    assert_no_gap(dir.path(), seg);
    let tl2_partial = names
        .iter()
        .find(|n| n.starts_with("00000002") && n.ends_with(".partial"))
        .expect("timeline 2 .partial");
    assert_partial_matches(dir.path(), &standby, tl2_partial, flush);
    assert!(assert_segments_identical(dir.path(), &standby).len() >= 2);
}

// ---------------------------------------------------------------------------
// A real server speaking German.

/// PostgreSQL 15 (Debian's) with `lc_messages = 'de_DE.UTF-8'`. The locale
/// is compiled by `localedef` into a directory of the test's own and handed
/// to the server alone through `LOCPATH`, so nothing changes on the machine
/// and no other test's server sees it. (The harness's [`PgServer`] has no
/// way to give a server its own environment, hence this small one.)
struct GermanServer {
    dir: tempfile::TempDir,
    port: u16,
}

impl GermanServer {
    fn start() -> GermanServer {
        let dir = tempfile::Builder::new()
            .prefix("walrcv-pg-de-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let root = dir.path().to_path_buf();
        let locales = root.join("locales");
        std::fs::create_dir(&locales).expect("locale directory");
        let out = std::process::Command::new("localedef")
            .args(["-i", "de_DE", "-f", "UTF-8"])
            .arg(locales.join("de_DE.UTF-8"))
            .output()
            .expect("run localedef");
        assert!(
            locales.join("de_DE.UTF-8").join("LC_MESSAGES").exists(),
            "localedef de_DE.UTF-8 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let postgres = nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .expect("the postgres OS user (tests run as root)");
        let chown = std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&root)
            .status()
            .expect("chown");
        assert!(chown.success());
        let port = crate::support::free_port();
        let server = GermanServer { dir, port };
        let data = server.data();
        server.run_as_postgres(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "--wal-segsize=1",
                "-A",
                "trust",
                "-U",
                "postgres",
                "--locale=C",
                "--no-sync",
            ],
            postgres.uid.as_raw(),
        );
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             lc_messages = 'de_DE.UTF-8'\nwal_keep_size = 0\nfsync = off\n",
            root.display()
        );
        append(&data.join("postgresql.conf"), &conf);
        append(
            &data.join("pg_hba.conf"),
            "host replication all 127.0.0.1/32 trust\n",
        );
        server.run_as_postgres(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                root.join("server.log").to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "start",
            ],
            postgres.uid.as_raw(),
        );
        server
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn bin(name: &str) -> PathBuf {
        crate::support::debian_bin(name)
    }

    fn run_as_postgres(&self, tool: &str, args: &[&str], uid: u32) {
        use std::os::unix::process::CommandExt;
        let out = std::process::Command::new(Self::bin(tool))
            .args(args)
            .env("LOCPATH", self.dir.path().join("locales"))
            .env("LC_ALL", "C")
            .env("HOME", "/tmp")
            .uid(uid)
            .gid(
                nix::unistd::Group::from_name("postgres")
                    .ok()
                    .flatten()
                    .map_or(uid, |g| g.gid.as_raw()),
            )
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run a PostgreSQL tool");
        assert!(
            out.status.success(),
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn psql(&self, sql: &str) -> String {
        let out = std::process::Command::new(Self::bin("psql"))
            .args(["-XAtq", "-h"])
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-c", sql])
            .env("LC_ALL", "C")
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn conninfo(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres", self.port)
    }
}

impl Drop for GermanServer {
    fn drop(&mut self) {
        use std::os::unix::process::CommandExt;
        let Ok(Some(user)) = nix::unistd::User::from_name("postgres") else {
            return;
        };
        let _ = std::process::Command::new(Self::bin("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .uid(user.uid.as_raw())
            .gid(user.gid.as_raw())
            .stdin(std::process::Stdio::null())
            .output();
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(text.as_bytes()).expect("append");
}

/// A real PostgreSQL 15 whose messages are in German: a removed segment
/// (58P01) and a missing slot (42704) end walrcv with exit status 3 at once,
/// the server's German words shown with the SQLSTATE, the missing range named.
#[test]
fn german_server_refusals_exit_3() {
    let pg = GermanServer::start();
    assert_eq!(pg.psql("SHOW lc_messages"), "de_DE.UTF-8");
    let old = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    pg.psql("CREATE TABLE churn(x int)");
    for _ in 0..12 {
        pg.psql("INSERT INTO churn VALUES (1); SELECT pg_switch_wal()");
    }
    pg.psql("CHECKPOINT");
    pg.psql("CHECKPOINT");
    assert!(
        !pg.data().join("pg_wal").join(&old).exists(),
        "{old} removed"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(format!("{old}.partial")), b"").unwrap();
    let conn = pg.conninfo();
    let out = walrcv_run(
        &[
            "stream",
            "-D",
            dir.path().to_str().unwrap(),
            "-d",
            &conn,
            "-w",
        ],
        Duration::from_secs(60),
    );
    let err = out.stderr.clone();
    assert_eq!(out.code(), Some(3), "{err}");
    assert!(
        err.contains(&format!(
            "das angeforderte WAL-Segment {old} wurde schon entfernt"
        )) && err.contains("SQLSTATE 58P01"),
        "the German text with its SQLSTATE:\n{err}"
    );
    let (_, old_lsn) = parse_wal_file_name(&old, 1 << 20).unwrap();
    assert!(
        err.contains(&format!("the WAL from {} to ", format_lsn(old_lsn))),
        "the missing range:\n{err}"
    );

    let current = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(format!("{current}.partial")), b"").unwrap();
    let out = walrcv_run(
        &[
            "stream",
            "-D",
            dir.path().to_str().unwrap(),
            "-d",
            &conn,
            "-S",
            "gibt_es_nicht",
            "-w",
        ],
        Duration::from_secs(60),
    );
    let err = out.stderr.clone();
    assert_eq!(out.code(), Some(3), "{err}");
    assert!(
        // (» « come out as >> << with the server's LC_CTYPE = C.)
        err.contains("Replikations-Slot")
            && err.contains("gibt_es_nicht")
            && err.contains("existiert nicht")
            && err.contains("SQLSTATE 42704"),
        "{err}"
    );
}
