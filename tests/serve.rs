//! `walrcv serve` against real servers (issue 21): an archive written by
//! `walrcv stream` from a PostgreSQL 15 primary is served to pg_receivewal
//! (byte-identical segments) and to a real standby made with pg_basebackup,
//! whose primary_conninfo points at walrcv after the primary crashed (it
//! catches up with every acknowledged commit); bad clients are refused in
//! PostgreSQL's words and do not disturb the server. `walrcv stream --serve`:
//! live WAL never past the flush position reported to the primary, and the
//! failover of a lagging standby to the archiving process.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use walrcv::conninfo::ConnParams;
use walrcv::pgwire::{BackendMessage, Connection};
#[cfg(feature = "failpoints")]
use walrcv::replication::ReplicationMessage;

use crate::support::proxy::FaultProxy;
use crate::support::{
    debian_bin, format_lsn, free_port, parse_lsn, run_with_timeout, wait_until, walrcv_spawn,
    BackgroundProcess, PgServer, Walrcv,
};

pub(crate) const APP: &str = "walrcv";
pub(crate) const LIMIT: Duration = Duration::from_secs(120);

/// Streams `pg`'s WAL into `dir` with a synchronous `walrcv stream`.
pub(crate) fn start_archiver(pg: &PgServer, dir: &Path) -> BackgroundProcess {
    let conn = format!("{} application_name={APP}", pg.conninfo());
    let mut rcv = walrcv_spawn(&["stream", "-D", dir.to_str().unwrap(), "-d", &conn, "-v"]);
    wait_until(Duration::from_secs(30), "walrcv to stream", || {
        assert!(rcv.is_running(), "walrcv exited:\n{}", rcv.stderr());
        pg.replication_flush_lsn(APP).is_some()
    });
    pg.psql(&format!(
        "ALTER SYSTEM SET synchronous_standby_names = '{APP}'"
    ));
    pg.psql("SELECT pg_reload_conf()");
    rcv
}

/// Commits `n` rows of ~10 kB each (several 1 MB segments for 300).
pub(crate) fn commit_rows(pg: &PgServer, n: u32) {
    pg.psql("CREATE TABLE IF NOT EXISTS t (id serial, pad text)");
    // Stored uncompressed, so that the WAL is as large as the rows.
    pg.psql("ALTER TABLE t ALTER pad SET STORAGE EXTERNAL");
    for _ in 0..n / 50 {
        pg.psql("INSERT INTO t (pad) SELECT repeat(md5(random()::text), 300) FROM generate_series(1, 50)");
    }
}

/// `walrcv serve` on a free port with the given hba lines (and extra flags).
pub(crate) fn start_serve(
    dir: &Path,
    conf: &Path,
    hba: &str,
    extra: &[&str],
) -> (BackgroundProcess, u16) {
    let hba_path = conf.join("serve_hba.conf");
    std::fs::write(&hba_path, hba).unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "serve",
        "-D",
        dir.to_str().unwrap(),
        "--listen",
        &listen,
        "--serve-hba",
        hba_path.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let mut serve = walrcv_spawn(&args);
    serve.wait_for_stderr("serving the archive", Duration::from_secs(30));
    (serve, port)
}

pub(crate) fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.len() >= 24 && n[..24].bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    names.sort();
    names
}

pub(crate) fn psql(
    port: u16,
    user: &str,
    password: Option<&str>,
    extra: &str,
    sql: &str,
) -> Result<String, String> {
    let mut cmd = std::process::Command::new(debian_bin("psql"));
    cmd.args([
        "-XAtqw",
        "-d",
        &format!(
            "host=127.0.0.1 port={port} user={user} dbname=replication replication=true {extra}"
        ),
        "-c",
        sql,
    ]);
    cmd.env_remove("PGPASSWORD");
    if let Some(pw) = password {
        cmd.env("PGPASSWORD", pw);
    }
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    if out.success() {
        Ok(out.stdout.trim().to_owned())
    } else {
        Err(out.text())
    }
}

/// pg_receivewal (Debian's 15) as a client of walrcv serve: every segment it
/// writes is byte-identical to the archive's.
#[test]
fn serve_pg_receivewal_gets_byte_identical_segments() {
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    let work = tempfile::tempdir().unwrap();
    let a = work.path().join("a");
    let b = work.path().join("b");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let mut rcv = start_archiver(&pg, &a);
    commit_rows(&pg, 300);
    let end = pg.current_lsn();
    pg.wait_for_flush(APP, end, LIMIT);
    rcv.interrupt();
    // pg_receivewal starts after the newest complete segment of its directory:
    // give it the archive's first one, so it streams all the others.
    let first = segment_files(&a)
        .into_iter()
        .find(|n| n.len() == 24)
        .expect("a complete segment");
    std::fs::copy(a.join(&first), b.join(&first)).unwrap();
    let (mut serve, port) = start_serve(
        &a,
        work.path(),
        "host replication all 127.0.0.1/32 trust\n",
        &[],
    );
    let ident = psql(port, "postgres", None, "", "IDENTIFY_SYSTEM").unwrap();
    assert!(
        ident.starts_with(&pg.system_identifier().to_string()),
        "{ident}"
    );
    let mut cmd = std::process::Command::new(debian_bin("pg_receivewal"));
    cmd.args([
        "-D",
        b.to_str().unwrap(),
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
    ])
    // pg_receivewal stops once past --endpos (`endpos < xlogpos`).
    .args([
        "-U",
        "postgres",
        "-n",
        "-v",
        "--endpos",
        &format_lsn(end - 1),
    ]);
    let out = run_with_timeout(cmd, LIMIT);
    assert!(
        out.success(),
        "pg_receivewal failed:\n{}\n--- serve ---\n{}",
        out.text(),
        serve.stderr()
    );
    let got = segment_files(&b);
    let complete: Vec<&String> = got.iter().filter(|n| n.len() == 24).collect();
    assert!(complete.len() >= 3, "too few segments: {got:?}");
    for name in &got {
        let mine = std::fs::read(b.join(name)).unwrap();
        let theirs = std::fs::read(a.join(name))
            .unwrap_or_else(|e| panic!("{name} not in the archive: {e}"));
        if name.ends_with(".partial") {
            // Up to the end point pg_receivewal asked for.
            let upto = (end % (1 << 20)) as usize;
            assert_eq!(
                mine[..upto],
                theirs[..upto],
                "{name} differs before the end point"
            );
        } else {
            assert!(mine == theirs, "{name} differs from the archive's");
        }
    }
    assert!(serve.is_running());
    serve.interrupt();
}

/// A real standby made with pg_basebackup, stopped while the primary goes
/// on committing synchronously with walrcv, then pointed at walrcv serve
/// after the primary crashed: it replays every acknowledged commit, and is
/// promoted with them.
#[test]
fn serve_a_standby_catches_up_from_the_archive_after_the_primary_crashed() {
    let mut pg = PgServer::builder().wal_segsize_mb(1).start();
    let work = tempfile::tempdir().unwrap();
    let a = work.path().join("a");
    std::fs::create_dir_all(&a).unwrap();
    let mut rcv = start_archiver(&pg, &a);
    commit_rows(&pg, 50);
    let mut standby = pg.create_standby();
    standby.stop();
    // Acknowledged by walrcv only: the standby is down.
    commit_rows(&pg, 300);
    let acknowledged: u64 = pg.psql("SELECT count(*) FROM t").parse().unwrap();
    let end = pg.current_lsn();
    pg.wait_for_flush(APP, end, LIMIT);
    pg.stop_immediate();
    rcv.interrupt();
    let (mut serve, port) = start_serve(
        &a,
        work.path(),
        "host replication all 127.0.0.1/32 trust\n",
        &[],
    );
    let conf = standby.data_dir().join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&format!(
        "primary_conninfo = 'host=127.0.0.1 port={port} user=postgres application_name=standby'\n"
    ));
    std::fs::write(&conf, text).unwrap();
    standby.start_again();
    wait_until(LIMIT, "the standby to replay the archive's WAL", || {
        assert!(
            serve.is_running(),
            "walrcv serve exited:\n{}",
            serve.stderr()
        );
        standby
            .try_psql("SELECT pg_last_wal_replay_lsn()")
            .map(|l| parse_lsn(&l) >= end)
            .unwrap_or(false)
    });
    assert!(
        serve.stderr().contains("streaming from"),
        "the standby did not stream from walrcv:\n{}",
        serve.stderr()
    );
    standby.promote();
    let present: u64 = standby.psql("SELECT count(*) FROM t").parse().unwrap();
    assert_eq!(
        present, acknowledged,
        "acknowledged commits missing after promotion"
    );
    serve.interrupt();
}

pub(crate) fn params(port: u16) -> ConnParams {
    ConnParams {
        application_name: "probe".into(),
        ..crate::support::conn_params(port, crate::support::SUPERUSER, None)
    }
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Bad clients: refused in PostgreSQL's words, and the server goes on.
#[test]
fn serve_refuses_bad_clients() {
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    let work = tempfile::tempdir().unwrap();
    let a = work.path().join("a");
    std::fs::create_dir_all(&a).unwrap();
    let mut rcv = start_archiver(&pg, &a);
    commit_rows(&pg, 100);
    // The verifier PostgreSQL would store for "right-password".
    let verifier = pg.psql(
        "SET password_encryption = 'scram-sha-256'; CREATE ROLE probe PASSWORD 'right-password'; \
         SELECT rolpassword FROM pg_authid WHERE rolname = 'probe'",
    );
    let end = pg.current_lsn();
    pg.wait_for_flush(APP, end, LIMIT);
    rcv.interrupt();
    // Certificate and key for TLS.
    let key =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_path = work.path().join("server.crt");
    let key_path = work.path().join("server.key");
    std::fs::write(&cert_path, key.cert.pem()).unwrap();
    std::fs::write(&key_path, key.signing_key.serialize_pem()).unwrap();
    let passfile = work.path().join("passfile");
    std::fs::write(
        &passfile,
        format!("rep:{}\n", verifier.lines().last().unwrap()),
    )
    .unwrap();
    let hba = "hostssl replication tlsonly 127.0.0.1/32 trust\n\
               host replication rep 127.0.0.1/32 scram-sha-256\n\
               host replication blocked 127.0.0.1/32 reject\n\
               host replication postgres 127.0.0.1/32 trust\n";
    let (mut serve, port) = start_serve(
        &a,
        work.path(),
        hba,
        &[
            "--serve-passfile",
            passfile.to_str().unwrap(),
            "--serve-ssl-cert",
            cert_path.to_str().unwrap(),
            "--serve-ssl-key",
            key_path.to_str().unwrap(),
        ],
    );
    // SCRAM: right and wrong passwords.
    let ok = psql(
        port,
        "rep",
        Some("right-password"),
        "sslmode=disable",
        "IDENTIFY_SYSTEM",
    )
    .unwrap();
    assert!(ok.starts_with(&pg.system_identifier().to_string()));
    let e = psql(
        port,
        "rep",
        Some("wrong"),
        "sslmode=disable",
        "IDENTIFY_SYSTEM",
    )
    .unwrap_err();
    assert!(
        e.contains("password authentication failed for user \"rep\""),
        "{e}"
    );
    // hostssl: refused without TLS, accepted with it.
    let e = psql(port, "tlsonly", None, "sslmode=disable", "IDENTIFY_SYSTEM").unwrap_err();
    assert!(
        e.contains("no pg_hba.conf entry for replication connection"),
        "{e}"
    );
    assert!(e.contains("no encryption"), "{e}");
    psql(port, "tlsonly", None, "sslmode=require", "IDENTIFY_SYSTEM").unwrap();
    let e = psql(port, "blocked", None, "sslmode=disable", "IDENTIFY_SYSTEM").unwrap_err();
    assert!(
        e.contains("pg_hba.conf rejects replication connection"),
        "{e}"
    );
    let e = psql(port, "nobody", None, "sslmode=disable", "IDENTIFY_SYSTEM").unwrap_err();
    assert!(e.contains("no pg_hba.conf entry"), "{e}");
    // Not replication commands.
    let e = psql(port, "postgres", None, "sslmode=disable", "BASE_BACKUP").unwrap_err();
    assert!(e.contains("BASE_BACKUP is not supported"), "{e}");
    let e = psql(port, "postgres", None, "sslmode=disable", "SELECT 1").unwrap_err();
    assert!(e.contains("replication commands"), "{e}");
    // A start point the archive does not hold: before it, and after its end.
    runtime().block_on(async {
        let mut conn = Connection::connect(&params(port), true, Duration::from_secs(10))
            .await
            .unwrap();
        conn.start_copy("START_REPLICATION 0/100000 TIMELINE 1")
            .await
            .unwrap();
        let mut error = None;
        for _ in 0..10 {
            if let BackendMessage::Error(e) = conn.read_message().await.unwrap() {
                error = Some(e);
                break;
            }
        }
        let e = error.expect("an error");
        assert_eq!(e.code, "58P01");
        assert!(
            e.message
                .contains("000000010000000000000001 has already been removed"),
            "{e}"
        );
        let past = format!(
            "START_REPLICATION {} TIMELINE 1",
            format_lsn(end + (64 << 20))
        );
        conn.start_copy(&past).await.unwrap();
        let mut error = None;
        for _ in 0..10 {
            if let BackendMessage::Error(e) = conn.read_message().await.unwrap() {
                error = Some(e);
                break;
            }
        }
        assert!(error
            .expect("an error")
            .message
            .contains("is ahead of the WAL flush position"));
    });
    // Garbage after start-up: a FATAL protocol error, the connection closed.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut startup = 196_608u32.to_be_bytes().to_vec();
    startup.extend_from_slice(b"user\0postgres\0replication\0true\0\0");
    let mut packet = ((startup.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&startup);
    s.write_all(&packet).unwrap();
    s.write_all(&[0xff; 64]).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains("08P01"), "{text}");
    // Still serving.
    psql(port, "postgres", None, "sslmode=disable", "IDENTIFY_SYSTEM").unwrap();
    assert!(serve.is_running());
    serve.interrupt();
    let _: PathBuf = a;
}

/// `walrcv stream --serve` on a free port (trust for 127.0.0.1), the
/// synchronous standby of `pg`; `env`: extra environment (failpoints).
pub(crate) fn start_archiver_serving(
    pg: &PgServer,
    dir: &Path,
    conf: &Path,
    env: &[(&str, &str)],
) -> (BackgroundProcess, u16) {
    let port = free_port();
    (start_archiver_serving_on(pg, dir, conf, env, port), port)
}

/// [`start_archiver_serving`] on a given port (a restart on the same one).
pub(crate) fn start_archiver_serving_on(
    pg: &PgServer,
    dir: &Path,
    conf: &Path,
    env: &[(&str, &str)],
    port: u16,
) -> BackgroundProcess {
    let hba_path = conf.join("stream_serve_hba.conf");
    std::fs::write(&hba_path, "host replication all 127.0.0.1/32 trust\n").unwrap();
    let listen = format!("127.0.0.1:{port}");
    let conn = format!("{} application_name={APP}", pg.conninfo());
    let mut rcv = Walrcv::new(["stream", "-D", dir.to_str().unwrap(), "-d", &conn, "-v"])
        .args(["--synchronous", "--serve", &listen])
        .args(["--serve-hba", hba_path.to_str().unwrap()])
        .envs(env.iter().copied())
        .spawn();
    rcv.wait_for_stderr("serving the archive", Duration::from_secs(30));
    wait_until(Duration::from_secs(30), "walrcv to stream", || {
        assert!(rcv.is_running(), "walrcv exited:\n{}", rcv.stderr());
        pg.replication_flush_lsn(APP).is_some()
    });
    pg.psql(&format!(
        "ALTER SYSTEM SET synchronous_standby_names = '{APP}'"
    ));
    pg.psql("SELECT pg_reload_conf()");
    rcv
}

/// The served end (`xlogpos` of IDENTIFY_SYSTEM).
#[cfg(feature = "failpoints")]
fn served_end(port: u16) -> u64 {
    let ident = psql(port, "postgres", None, "", "IDENTIFY_SYSTEM").unwrap();
    parse_lsn(ident.split('|').nth(2).expect("xlogpos"))
}

/// `walrcv stream --serve` serves live WAL, never past the position it
/// reported flushed: each fdatasync is slowed (1.5 s), so the archive's
/// `.partial` holds WAL written but not yet flushed for most of the test,
/// and every piece a client receives must end at or before the flush
/// position the primary shows for walrcv. pg_receivewal, started before the
/// commits, gets the live WAL up to the last acknowledged commit.
#[cfg(feature = "failpoints")]
#[test]
fn stream_serve_sends_live_wal_never_past_the_reported_flush() {
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    let work = tempfile::tempdir().unwrap();
    let a = work.path().join("a");
    let b = work.path().join("b");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    pg.psql("CREATE TABLE live (id int, pad text)");
    let (mut rcv, port) = start_archiver_serving(
        &pg,
        &a,
        work.path(),
        &[("FAILPOINTS", "wal-fdatasync=sleep(1500)")],
    );
    let begin = served_end(port);
    let segment = 1u64 << 20;
    let mut receivewal = BackgroundProcess::spawn({
        let mut cmd = std::process::Command::new(debian_bin("pg_receivewal"));
        cmd.args(["-D", b.to_str().unwrap(), "-h", "127.0.0.1"])
            .args(["-p", &port.to_string(), "-U", "postgres", "-n", "-v"]);
        cmd
    });
    // Commits, each acknowledged once walrcv flushed it.
    let mut writer = pg.psql_background(
        "DO $$ BEGIN FOR i IN 1..8 LOOP \
         INSERT INTO live SELECT i, repeat(md5(random()::text), 100) FROM generate_series(1, 20); \
         COMMIT; END LOOP; END $$",
    );
    let (pieces, max_end) = runtime().block_on(async {
        let mut conn = Connection::connect(&params(port), true, Duration::from_secs(10))
            .await
            .unwrap();
        let start = begin - begin % segment;
        conn.start_copy(&format!(
            "START_REPLICATION {} TIMELINE 1",
            format_lsn(start)
        ))
        .await
        .unwrap();
        let (mut pieces, mut max_end) = (0u32, start);
        let deadline = std::time::Instant::now() + LIMIT;
        let mut final_end = None;
        while final_end.is_none_or(|f| max_end < f) {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out at {max_end:#x}"
            );
            if final_end.is_none() && !writer.is_running() {
                assert!(writer.wait_timeout(Duration::ZERO).unwrap().success());
                let end = pg.current_lsn();
                pg.wait_for_flush(APP, end, LIMIT);
                final_end = Some(end);
            }
            let msg = tokio::time::timeout(Duration::from_secs(2), conn.read_message()).await;
            let Ok(msg) = msg else { continue };
            let BackendMessage::CopyData(payload) = msg.unwrap() else {
                continue;
            };
            let Ok(ReplicationMessage::XLogData {
                data_start, data, ..
            }) = ReplicationMessage::parse(payload)
            else {
                continue;
            };
            let end = data_start.0 + data.len() as u64;
            if end <= max_end {
                continue;
            }
            (pieces, max_end) = (pieces + 1, end);
            // The primary saw a flush position at least this far before
            // walrcv published it; a moment's grace for the primary to
            // process the status update, far shorter than the slowed fsync.
            let mut reported = 0;
            for _ in 0..3 {
                reported = pg.replication_flush_lsn(APP).unwrap_or(0);
                if reported >= end {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(
                reported >= end,
                "served up to {} while walrcv reported only {} flushed",
                format_lsn(end),
                format_lsn(reported)
            );
        }
        (pieces, max_end)
    });
    assert!(pieces >= 4, "live WAL in too few pieces: {pieces}");
    assert!(max_end > begin);
    // pg_receivewal got the same live WAL, up to the last commit.
    let name = segment_files(&a)
        .into_iter()
        .find(|n| n.ends_with(".partial"))
        .expect("the archive's .partial");
    let upto = (max_end % segment) as usize;
    wait_until(LIMIT, "pg_receivewal to receive the live WAL", || {
        assert!(
            receivewal.is_running(),
            "pg_receivewal exited:\n{}",
            receivewal.stderr()
        );
        let mine = std::fs::read(b.join(&name)).unwrap_or_default();
        let theirs = std::fs::read(a.join(&name)).unwrap();
        mine.len() >= upto && mine[..upto] == theirs[..upto]
    });
    assert!(rcv.is_running());
    receivewal.interrupt();
    rcv.interrupt();
}

/// The headline of issue 21: walrcv is the primary's synchronous standby
/// and serves (`stream --serve`); an ordinary standby streams asynchronously
/// from the primary through a proxy that stops it; commits are acknowledged;
/// the primary crashes. The standby, pointed at walrcv's --serve address,
/// catches up from the process that archived the WAL and, promoted, holds
/// every acknowledged commit.
#[test]
fn stream_serve_a_lagging_standby_gets_every_acknowledged_commit_after_a_crash() {
    let mut pg = PgServer::builder().wal_segsize_mb(1).start();
    let work = tempfile::tempdir().unwrap();
    let a = work.path().join("a");
    std::fs::create_dir_all(&a).unwrap();
    let (mut rcv, port) = start_archiver_serving(&pg, &a, work.path(), &[]);
    commit_rows(&pg, 50);
    let standby = pg.create_standby();
    let proxy = FaultProxy::start(pg.port());
    set_primary_conninfo(&standby, proxy.port());
    wait_until(LIMIT, "the standby to stream through the proxy", || {
        standby
            .try_psql("SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'")
            .is_ok_and(|p| p == proxy.port().to_string())
    });
    // The standby falls behind: its connection stops moving, and so would
    // any new one.
    proxy.stall();
    proxy.stall_new_connections(true);
    commit_rows(&pg, 300);
    let acknowledged: u64 = pg.psql("SELECT count(*) FROM t").parse().unwrap();
    let end = pg.current_lsn();
    pg.wait_for_flush(APP, end, LIMIT);
    let behind = parse_lsn(&standby.psql("SELECT pg_last_wal_receive_lsn()"));
    assert!(
        behind < end,
        "the standby is not behind: {} >= {}",
        format_lsn(behind),
        format_lsn(end)
    );
    pg.stop_immediate();
    set_primary_conninfo(&standby, port);
    drop(proxy);
    wait_until(LIMIT, "the standby to replay walrcv's WAL", || {
        assert!(rcv.is_running(), "walrcv exited:\n{}", rcv.stderr());
        standby
            .try_psql("SELECT pg_last_wal_replay_lsn()")
            .map(|l| parse_lsn(&l) >= end)
            .unwrap_or(false)
    });
    let sender = standby.psql("SELECT sender_port FROM pg_stat_wal_receiver");
    assert_eq!(sender, port.to_string(), "the standby streams from walrcv");
    standby.promote();
    let present: u64 = standby.psql("SELECT count(*) FROM t").parse().unwrap();
    assert_eq!(
        present, acknowledged,
        "acknowledged commits missing after promotion"
    );
    rcv.interrupt();
}

/// Points `standby` at 127.0.0.1:`port` (the last primary_conninfo line
/// wins) and reloads: its WAL receiver restarts with it.
pub(crate) fn set_primary_conninfo(standby: &PgServer, port: u16) {
    let conf = standby.data_dir().join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&format!(
        "primary_conninfo = 'host=127.0.0.1 port={port} user=postgres application_name=standby'\n"
    ));
    std::fs::write(&conf, text).unwrap();
    standby.psql("SELECT pg_reload_conf()");
}
