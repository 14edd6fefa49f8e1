//! `walrcv stream --upload` and `walrcv restore --from` against a real
//! object store (SeaweedFS, tests/support/seaweed.rs) and real PostgreSQL:
//! point-in-time recovery from the bucket alone (the local archive deleted)
//! with every acknowledged commit back, the last ones only in the uploaded
//! `.partial`, for every `-Z` method; a conflicting object is never
//! overwritten.

use std::path::Path;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;

use crate::support::seaweed::{Seaweed, ACCESS_KEY, SECRET_KEY};
use crate::support::{
    parse_lsn, wait_until, walrcv_bin, BackgroundProcess, PgServer, Recovery, Walrcv, SUPERUSER,
};

const APP: &str = "walrcv_a";
const RECOVERY_LIMIT: Duration = Duration::from_secs(120);

pub(crate) fn start_uploading_receiver(
    pg: &PgServer,
    weed: &Seaweed,
    dir: &Path,
    prefix: &str,
    compress: Option<&str>,
) -> BackgroundProcess {
    let conn = format!("{} application_name={APP}", pg.conninfo());
    let mut walrcv = Walrcv::new(Vec::<&str>::new());
    let cmd = walrcv.command_mut();
    cmd.args(["stream", "-D", dir.to_str().unwrap(), "-d", &conn, "-v"])
        .args([
            "--upload",
            &weed.url(prefix),
            "--upload-partial-interval",
            "1",
        ])
        .args(["--upload-receiver-id", APP]);
    if let Some(c) = compress {
        cmd.args(["-Z", c]);
    }
    weed.apply(cmd);
    let mut rcv = walrcv.spawn();
    pg.make_synchronous_standby(APP, &mut rcv);
    rcv
}

/// The test's own client of the store (explicit settings, no environment).
pub(crate) fn client(weed: &Seaweed) -> object_store::aws::AmazonS3 {
    AmazonS3Builder::new()
        .with_bucket_name(weed.bucket())
        .with_endpoint(format!("http://127.0.0.1:{}", weed.s3_port()))
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key(SECRET_KEY)
        .build()
        .expect("object store client")
}

pub(crate) fn object_names(weed: &Seaweed, prefix: &str) -> Vec<String> {
    let store = client(weed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut names = Vec::new();
        let mut dirs = vec![ObjectPath::from(prefix)];
        while let Some(dir) = dirs.pop() {
            let listed = store.list_with_delimiter(Some(&dir)).await.expect("LIST");
            names.extend(listed.objects.into_iter().map(|o| o.location.to_string()));
            dirs.extend(listed.common_prefixes);
        }
        names.sort();
        names
    })
}

fn rows(pg: &PgServer) -> (u32, u64) {
    let out = pg.psql("SELECT count(*), coalesce(sum(i), 0) FROM t");
    let (n, sum) = out.split_once('|').unwrap();
    (n.parse().unwrap(), sum.parse().unwrap())
}

/// Archive recovery from the bucket alone (`walrcv restore --from`, the
/// store's settings through `env`) to the end of `target_timeline`, with no
/// synchronous standby to wait for once promoted.
fn bucket_recovery_settings(weed: &Seaweed, prefix: &str, target_timeline: &str) -> Vec<String> {
    let env: String = weed
        .env()
        .iter()
        .map(|(k, v)| format!("{k}={v} "))
        .collect();
    vec![
        format!(
            "restore_command = 'env {env}{} restore %f %p --from {}'",
            walrcv_bin().display(),
            weed.url(prefix)
        ),
        format!("recovery_target_timeline = '{target_timeline}'"),
        "synchronous_standby_names = ''".to_string(),
    ]
}

/// Commits acknowledged by a synchronous uploading receiver, the primary
/// crashes, the receiver stops cleanly (its last `.partial` uploaded), the
/// local archive is deleted, and a base backup recovers from the bucket
/// alone: every acknowledged row is back.
fn pitr_from_bucket(compress: Option<&str>) {
    let weed = Seaweed::start("walrcv");
    let prefix = "db1";
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    pg.psql("CREATE TABLE t (i int PRIMARY KEY, filler text)");
    let archive = tempfile::tempdir().unwrap();
    let mut rcv = start_uploading_receiver(&pg, &weed, archive.path(), prefix, compress);
    let backup = pg.base_backup();
    const BIG: u32 = 20;
    for i in 1..=BIG {
        pg.try_psql_timeout(
            &format!(
                "INSERT INTO t SELECT {i}, string_agg(md5(random()::text), '') \
                 FROM generate_series(1, 3000)"
            ),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("commit {i}: {e}\n{}", rcv.stderr()));
    }
    let last = BIG + 1;
    let out = pg.psql(&format!(
        "BEGIN; INSERT INTO t VALUES ({last}, 'last'); SELECT pg_current_wal_insert_lsn(); COMMIT"
    ));
    let last_commit_from = parse_lsn(out.trim());
    let segment = pg.walfile_name(last_commit_from);
    let mut primary = pg;
    primary.stop_immediate();
    let status = rcv.interrupt();
    assert!(status.success(), "receiver: {status:?}\n{}", rcv.stderr());
    let names = object_names(&weed, prefix);
    assert!(
        names
            .iter()
            .any(|n| n.starts_with(&format!("{prefix}/partial/{segment}/"))),
        "the last .partial ({segment}) was not uploaded: {names:?}\n{}",
        rcv.stderr()
    );
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with(&format!("{prefix}/{segment}"))),
        "{segment} complete in the bucket: {names:?}"
    );
    // One version of the .partial per segment and receiver at most, and
    // none left of the segments completed since (SeaweedFS may list an
    // emptied directory as an object of its own: not counted).
    let partials: Vec<_> = names.iter().filter(|n| n.contains(".partial.")).collect();
    assert_eq!(partials.len(), 1, "{partials:?}");
    drop(archive);
    let settings = bucket_recovery_settings(&weed, prefix, "latest");
    let server = match backup.start_recovery(&settings) {
        Recovery::Started(s) => s,
        Recovery::Failed { log } => panic!("recovery failed:\n{log}"),
    };
    server.wait_for_promotion(RECOVERY_LIMIT);
    assert_eq!(
        rows(&server),
        (last, u64::from(last) * u64::from(last + 1) / 2),
        "every acknowledged row\n{}",
        server.full_log()
    );
    assert_eq!(
        server.psql(&format!("SELECT filler FROM t WHERE i = {last}")),
        "last"
    );
    let log = server.full_log();
    assert!(
        log.contains(&format!("restored log file \"{segment}\" from archive")),
        "{segment} not restored:\n{log}"
    );
    // The prefetch directory is gone once the recovery ended (no worker
    // left writing into it either; that the prefetch serves segments is
    // timing-dependent here: object_storage_restore tests it).
    let cache = server.data_dir().join("pg_wal/.walrcv-prefetch");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !cache.exists(),
        "{} left after the recovery",
        cache.display()
    );
    assert!(
        !std::fs::read_dir(server.data_dir().join("pg_wal"))
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".walrcv")),
        "a walrcv directory left in pg_wal"
    );
}

#[test]
fn upload_pitr_from_bucket_uncompressed() {
    pitr_from_bucket(None);
}

#[test]
fn upload_pitr_from_bucket_gzip() {
    pitr_from_bucket(Some("gzip"));
}

#[test]
fn upload_pitr_from_bucket_lz4() {
    pitr_from_bucket(Some("lz4"));
}

#[test]
fn upload_pitr_from_bucket_zstd() {
    pitr_from_bucket(Some("zstd"));
}

/// An object already in the bucket under a segment's name with other bytes
/// is never overwritten: the upload reports the conflict (log, metric) and
/// the other segments are uploaded.
#[test]
fn upload_conflict_is_never_overwritten() {
    let weed = Seaweed::start("walrcv");
    let prefix = "db2";
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    let archive = tempfile::tempdir().unwrap();
    let mut walrcv = Walrcv::new(Vec::<&str>::new());
    let cmd = walrcv.command_mut();
    let metrics_port = crate::support::free_port();
    let conn = format!("{} application_name={APP}", pg.conninfo());
    cmd.args([
        "stream",
        "-D",
        archive.path().to_str().unwrap(),
        "-d",
        &conn,
    ])
    .args([
        "--upload",
        &weed.url(prefix),
        "--upload-partial-interval",
        "1",
    ])
    .args(["--metrics-address", &format!("127.0.0.1:{metrics_port}")]);
    weed.apply(cmd);
    let mut rcv = walrcv.spawn();
    wait_until(Duration::from_secs(30), "the receiver to stream", || {
        assert!(rcv.is_running(), "receiver exited:\n{}", rcv.stderr());
        pg.psql(&format!(
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = '{APP}' AND state = 'streaming'"
        )) == "1"
    });
    // The segment being streamed: another object takes its name first.
    let first = pg.walfile_name(pg.current_lsn());
    let store = client(&weed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let key = ObjectPath::from(format!("{prefix}/{first}"));
    rt.block_on(store.put(&key, b"not this segment".to_vec().into()))
        .expect("PUT");
    pg.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) i");
    pg.switch_wal();
    pg.psql("INSERT INTO t SELECT generate_series(1, 1000)");
    let second = pg.walfile_name(pg.switch_wal());
    wait_until(
        Duration::from_secs(60),
        "the second segment uploaded",
        || {
            assert!(rcv.is_running(), "{}", rcv.stderr());
            object_names(&weed, prefix).contains(&format!("{prefix}/{second}"))
        },
    );
    wait_until(Duration::from_secs(30), "the conflict reported", || {
        rcv.stderr().contains("CONFLICT") && rcv.stderr().contains(&first)
    });
    let body = rt
        .block_on(async { store.get(&key).await?.bytes().await })
        .expect("GET");
    assert_eq!(&body[..], b"not this segment", "the object was overwritten");
    assert_eq!(
        metric(metrics_port, "walrcv_upload_conflicted_files"),
        Some(1.0)
    );
    assert!(metric(metrics_port, "walrcv_upload_conflicts_total").unwrap_or(0.0) >= 1.0);
    // walrcv status: CRITICAL (exit 2), naming the conflict.
    let status = crate::support::walrcv_run(
        &[
            "status",
            "-D",
            archive.path().to_str().unwrap(),
            "--metrics-url",
            &format!("127.0.0.1:{metrics_port}"),
        ],
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(2), "{}", status.text());
    assert!(
        status.text().contains("different content"),
        "{}",
        status.text()
    );
    // The bucket itself shows it: the uploader's marker, and walrcv status
    // on the bucket alone (no receiver asked) is CRITICAL naming the object.
    let marker_dir = format!("{prefix}/conflicts/{first}.");
    let markers = || -> Vec<String> {
        object_names(&weed, prefix)
            .into_iter()
            .filter(|n| n.starts_with(&marker_dir))
            .collect()
    };
    wait_until(Duration::from_secs(30), "the conflict marker", || {
        !markers().is_empty()
    });
    let marker = markers();
    assert_eq!(marker.len(), 1, "{marker:?}");
    let marker_key = ObjectPath::from(marker[0].as_str());
    let text = rt
        .block_on(async { store.get(&marker_key).await?.bytes().await })
        .expect("GET the marker");
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.contains(&format!("object: {prefix}/{first}\n"))
            && text.contains("object in the bucket: 16 bytes"),
        "{text}"
    );
    let on_bucket = |args: &[&str]| {
        let mut w = Walrcv::new(args).timeout(Duration::from_secs(60));
        weed.apply(w.command_mut());
        w.run()
    };
    let url = weed.url(prefix);
    let status = on_bucket(&["status", "-D", &url, "-d", &conn]);
    assert_eq!(status.status.code(), Some(2), "{}", status.text());
    assert!(
        status.text().contains("upload conflict in the bucket")
            && status.text().contains(&format!("\"{prefix}/{first}\"")),
        "{}",
        status.text()
    );
    // Cleanup never deletes a marker, whatever its rules.
    let cleanup = on_bucket(&["cleanup", "-D", &url, "--before", &second, "--dry-run"]);
    assert!(cleanup.status.success(), "{}", cleanup.text());
    assert!(!cleanup.stdout.contains("conflicts/"), "{}", cleanup.text());
    // The DBA's resolution: the wrong object removed, the receiver uploads
    // its segment at its next retry (the conflict metric back to 0); then
    // the marker is deleted and the bucket's status has no conflict.
    rt.block_on(store.delete(&key)).expect("DELETE");
    wait_until(Duration::from_secs(90), "the segment uploaded", || {
        assert!(rcv.is_running(), "{}", rcv.stderr());
        metric(metrics_port, "walrcv_upload_conflicted_files") == Some(0.0)
    });
    let body = rt
        .block_on(async { store.get(&key).await?.bytes().await })
        .expect("GET");
    assert_eq!(
        &body[..],
        &std::fs::read(archive.path().join(&first)).unwrap()[..]
    );
    rt.block_on(store.delete(&marker_key))
        .expect("DELETE the marker");
    let status = on_bucket(&["status", "-D", &url, "-d", &conn, "--json"]);
    assert!(
        !status.stdout.contains("bucket_conflict"),
        "{}",
        status.text()
    );
    rcv.interrupt();
}

fn http_get(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect metrics");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// A sample of the metrics endpoint (`name value` lines).
fn metric(port: u16, name: &str) -> Option<f64> {
    http_get(port).lines().find_map(|l| {
        let (n, v) = l.rsplit_once(' ')?;
        (n == name).then(|| v.parse().ok())?
    })
}

/// `walrcv stream -v --upload URL` into `dir` as `app`, through `env`.
fn receiver_command(
    pg: &PgServer,
    env: &[(&'static str, String)],
    dir: &Path,
    url: &str,
    app: &str,
    extra: &[&str],
) -> Walrcv {
    let conn = format!("{} application_name={app}", pg.conninfo());
    let mut walrcv = Walrcv::new(Vec::<&str>::new());
    let cmd = walrcv.command_mut();
    cmd.args(["stream", "-D", dir.to_str().unwrap(), "-d", &conn, "-v"])
        .args(["--upload", url, "--upload-receiver-id", app])
        .args(extra);
    crate::support::seaweed::apply_env(cmd, env);
    walrcv
}

/// A receiver uploading through `env` (not made synchronous).
fn spawn_receiver(
    pg: &PgServer,
    env: &[(&'static str, String)],
    dir: &Path,
    url: &str,
    app: &str,
    extra: &[&str],
) -> BackgroundProcess {
    let mut rcv = receiver_command(pg, env, dir, url, app, extra).spawn();
    wait_until(Duration::from_secs(30), "the receiver to stream", || {
        assert!(rcv.is_running(), "receiver exited:\n{}", rcv.stderr());
        pg.psql(&format!(
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = '{app}' AND state = 'streaming'"
        )) == "1"
    });
    rcv
}

/// The store down (every connection to it hangs, open ones reset): commits
/// stay as fast as the local archive makes them, the backlog shows in the
/// metrics, and once the store is back it drains by itself; every complete
/// segment in the bucket is byte-identical to the local one. A restart
/// then neither uploads nor reads back what the state file names as
/// confirmed (`walrcv_upload_state_files`, `walrcv_upload_files_total`);
/// with the state file damaged, every local file is offered again: each
/// meets the create-only rule, is read back, found identical, and nothing
/// is reported as a conflict.
#[test]
fn upload_backlog_drains_after_a_store_outage() {
    let weed = Seaweed::start("walrcv");
    let proxy = crate::support::proxy::FaultProxy::start(weed.s3_port());
    let mut env = Seaweed::env_for_port(proxy.port());
    env.push(("AWS_TIMEOUT", "2s".to_string()));
    env.push(("AWS_CONNECT_TIMEOUT", "2s".to_string()));
    let prefix = "db3";
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    pg.psql("CREATE TABLE t (i int, filler text)");
    let archive = tempfile::tempdir().unwrap();
    let metrics_port = crate::support::free_port();
    let metrics_arg = format!("127.0.0.1:{metrics_port}");
    let mut rcv = spawn_receiver(
        &pg,
        &env,
        archive.path(),
        &weed.url(prefix),
        APP,
        &[
            "--metrics-address",
            &metrics_arg,
            "--upload-partial-interval",
            "1",
        ],
    );
    pg.psql(&format!(
        "ALTER SYSTEM SET synchronous_standby_names = '{APP}'"
    ));
    pg.psql("SELECT pg_reload_conf()");
    proxy.stall_new_connections(true);
    proxy.stall();
    proxy.reset();
    for i in 1..=12 {
        let started = std::time::Instant::now();
        pg.try_psql_timeout(
            &format!("INSERT INTO t SELECT {i}, string_agg(md5(random()::text), '') FROM generate_series(1, 3000)"),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("commit {i}: {e}\n{}", rcv.stderr()));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a commit waited {:?} while the store was down",
            started.elapsed()
        );
    }
    pg.switch_wal();
    wait_until(Duration::from_secs(90), "a backlog and failures", || {
        metric(metrics_port, "walrcv_upload_backlog_files").unwrap_or(0.0) >= 2.0
            && metric(metrics_port, "walrcv_upload_failures_total").unwrap_or(0.0) >= 1.0
    });
    proxy.stall_new_connections(false);
    proxy.forward();
    wait_until(Duration::from_secs(120), "the backlog to drain", || {
        assert!(rcv.is_running(), "{}", rcv.stderr());
        metric(metrics_port, "walrcv_upload_backlog_files") == Some(0.0)
    });
    let local = crate::support::file_names(archive.path());
    let complete: Vec<&String> = local.iter().filter(|n| n.len() == 24).collect();
    assert!(complete.len() >= 2, "{local:?}");
    let store = client(&weed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for name in &complete {
        let key = ObjectPath::from(format!("{prefix}/{name}"));
        let body = rt
            .block_on(async { store.get(&key).await?.bytes().await })
            .unwrap_or_else(|e| panic!("{name} not in the bucket: {e}"));
        let ours = std::fs::read(archive.path().join(name)).unwrap();
        assert!(body[..] == ours[..], "{name} differs in the bucket");
    }
    assert_eq!(
        metric(metrics_port, "walrcv_upload_conflicts_total"),
        Some(0.0)
    );
    rcv.interrupt();
    // Restart: what the state file names as confirmed is neither uploaded
    // nor read back; only the .partial is offered again.
    let state = archive.path().join(".walrcv-uploaded");
    assert!(state.is_file(), "no upload state file");
    let vouched: Vec<String> = std::fs::read_to_string(&state)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("file ")?.split(' ').next().map(String::from))
        .collect();
    let mut again = restart_and_drain(&pg, &env, archive.path(), &weed.url(prefix), &metrics_arg);
    let state_files = metric(metrics_port, "walrcv_upload_state_files").unwrap_or(0.0);
    assert!(
        state_files >= complete.len() as f64,
        "{state_files} files in the state\n{}",
        again.stderr()
    );
    // Only what the state does not vouch for may go up: the .partial, a
    // segment completed since.
    let offered = metric(metrics_port, "walrcv_upload_files_total").unwrap_or(0.0);
    let others = crate::support::file_names(archive.path())
        .into_iter()
        .filter(|n| !n.starts_with('.') && !vouched.contains(n))
        .count();
    assert!(
        offered <= others as f64 && offered < complete.len() as f64,
        "{offered} files uploaded or read back again after a restart, {others} not in the state {vouched:?}\n{}",
        again.stderr()
    );
    again.interrupt();
    // A damaged state file: every file offered again (read back, identical).
    let mut text = std::fs::read(&state).unwrap();
    let n = text.len();
    text[n / 2] ^= 1;
    std::fs::write(&state, text).unwrap();
    let mut again = restart_and_drain(&pg, &env, archive.path(), &weed.url(prefix), &metrics_arg);
    wait_until(Duration::from_secs(60), "the files offered again", || {
        assert!(again.is_running(), "{}", again.stderr());
        metric(metrics_port, "walrcv_upload_files_total").unwrap_or(0.0) >= complete.len() as f64
    });
    assert!(again.stderr().contains("every local file is offered again"));
    assert_eq!(
        metric(metrics_port, "walrcv_upload_conflicts_total"),
        Some(0.0),
        "{}",
        again.stderr()
    );
    again.interrupt();
}

/// A receiver started again on `dir`, once its backlog is empty.
fn restart_and_drain(
    pg: &PgServer,
    env: &[(&'static str, String)],
    dir: &Path,
    url: &str,
    metrics_arg: &str,
) -> BackgroundProcess {
    let port: u16 = metrics_arg.rsplit_once(':').unwrap().1.parse().unwrap();
    let mut again = spawn_receiver(pg, env, dir, url, APP, &["--metrics-address", metrics_arg]);
    wait_until(Duration::from_secs(60), "the backlog to be empty", || {
        assert!(again.is_running(), "{}", again.stderr());
        metric(port, "walrcv_upload_backlog_files") == Some(0.0)
    });
    // A pass over the .partial too.
    std::thread::sleep(Duration::from_secs(3));
    again
}

/// `--upload-keep-local 0`: uploaded complete segments leave the local
/// disk, except the newest of the timeline; the bucket has them all.
#[test]
fn upload_keep_local_removes_only_confirmed_segments() {
    let weed = Seaweed::start("walrcv");
    let prefix = "db4";
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    let archive = tempfile::tempdir().unwrap();
    let mut rcv = spawn_receiver(
        &pg,
        &weed.env(),
        archive.path(),
        &weed.url(prefix),
        APP,
        &["--upload-keep-local", "0"],
    );
    let mut names = Vec::new();
    for _ in 0..4 {
        pg.psql("SELECT txid_current()");
        names.push(pg.walfile_name(pg.switch_wal()));
    }
    let newest = names.last().unwrap().clone();
    wait_until(Duration::from_secs(60), "uploads and local removal", || {
        assert!(rcv.is_running(), "{}", rcv.stderr());
        let local = crate::support::file_names(archive.path());
        let uploaded = object_names(&weed, prefix);
        names
            .iter()
            .all(|n| uploaded.contains(&format!("{prefix}/{n}")))
            && local.iter().filter(|n| n.len() == 24).count() == 1
    });
    let local = crate::support::file_names(archive.path());
    assert!(
        local.contains(&newest),
        "the newest segment was removed: {local:?}"
    );
    rcv.interrupt();
}

/// Thread name → nice value of the threads of process `pid`
/// (`/proc/PID/task/TID/stat`, field 19).
fn thread_nice(pid: u32) -> std::collections::BTreeMap<String, i64> {
    let mut out = std::collections::BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // "TID (COMM) STATE ...": the fields after the comm's ')' start at 3.
        let (head, rest) = stat.rsplit_once(") ").unwrap();
        let comm = head.split_once(" (").unwrap().1.to_string();
        let nice = rest.split(' ').nth(19 - 3).unwrap().parse().unwrap();
        out.insert(comm, nice);
    }
    out
}

/// With `--upload-partial-interval 3600`, only a timeline switch can send
/// a `.partial` up while the receiver runs: a plain segment switch uploads
/// the complete segment and not the new, almost empty `.partial`; then P
/// stops, its standby S is promoted and walrcv follows S, and timeline 1's
/// last `.partial` (final now, with the commits acknowledged on P) is in
/// the bucket at once, byte for byte, before any clean stop (the receiver
/// is killed at the end). The uploader thread runs at nice 10, the rest of
/// walrcv at 0. Then a base backup of P taken before the commits recovers
/// from the bucket alone to the end of timeline 1: every commit
/// acknowledged on P is back, the last ones only in that final `.partial`
/// (timeline 2's own `.partial` never went up: the receiver was killed).
#[test]
fn upload_timeline_switch_sends_the_old_partial_at_once() {
    let weed = Seaweed::start("walrcv");
    let prefix = "tli";
    let mut p = PgServer::builder().wal_segsize_mb(1).start();
    p.psql("CREATE TABLE t (i int, what text)");
    let s = p.create_standby();
    let archive = tempfile::tempdir().unwrap();
    let conn = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user={SUPERUSER} target_session_attrs=primary \
         application_name={APP} connect_timeout=5",
        p.port(),
        s.port()
    );
    let mut walrcv = Walrcv::new(Vec::<&str>::new());
    let cmd = walrcv.command_mut();
    cmd.args(["stream", "-D", archive.path().to_str().unwrap()])
        .args(["-d", &conn, "-v", "--synchronous"])
        .args(["--upload", &weed.url(prefix), "--upload-receiver-id", APP])
        .args(["--upload-partial-interval", "3600"]);
    weed.apply(cmd);
    let mut rcv = walrcv.spawn();
    p.make_synchronous_standby(APP, &mut rcv);
    let backup = p.base_backup();
    // The uploader thread alone runs at a lower CPU priority.
    let nice = thread_nice(rcv.pid());
    assert_eq!(nice.get("walrcv-upload"), Some(&10), "{nice:?}");
    assert_eq!(nice.get("walrcv"), Some(&0), "{nice:?}");
    let mut completed = String::new();
    for i in 1..=3 {
        p.psql(&format!("INSERT INTO t VALUES ({i}, 'before')"));
        completed = p.walfile_name(p.switch_wal());
    }
    for i in 1..=10 {
        p.try_psql_timeout(
            &format!("INSERT INTO t VALUES ({i}, 'on P')"),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("commit {i}: {e}\n{}", rcv.stderr()));
    }
    let current = p.walfile_name(p.current_lsn());
    assert_ne!(current, completed);
    wait_until(Duration::from_secs(60), "the completed segment", || {
        assert!(rcv.is_running(), "{}", rcv.stderr());
        object_names(&weed, prefix).contains(&format!("{prefix}/{completed}"))
    });
    // A few of the uploader's one-second passes.
    std::thread::sleep(Duration::from_secs(3));
    let copies = format!("{prefix}/partial/{current}/");
    let names = object_names(&weed, prefix);
    assert!(
        !names.iter().any(|n| n.starts_with(&copies)),
        "the .partial of a plain segment switch went up before the interval: {names:?}"
    );
    p.stop();
    s.promote();
    wait_until(Duration::from_secs(90), "00000002.history", || {
        assert!(rcv.is_running(), "{}", rcv.stderr());
        archive.path().join("00000002.history").exists()
    });
    s.psql("INSERT INTO t VALUES (0, 'on S')");
    let old = format!("{current}.partial");
    wait_until(Duration::from_secs(60), "a .partial of timeline 2", || {
        assert!(rcv.is_running(), "{}", rcv.stderr());
        crate::support::file_names(archive.path())
            .iter()
            .any(|n| n.starts_with("00000002") && n.ends_with(".partial"))
    });
    let bytes = std::fs::read(archive.path().join(&old))
        .unwrap_or_else(|e| panic!("timeline 1's last segment stays {old}: {e}"));
    let object = format!(
        "{prefix}/{}",
        walrcv::objstore::partial::object_name(&current, &old, APP, &bytes)
    );
    wait_until(
        Duration::from_secs(30),
        "timeline 1's final .partial",
        || {
            assert!(rcv.is_running(), "{}", rcv.stderr());
            object_names(&weed, prefix).contains(&object)
        },
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let key = ObjectPath::from(object.as_str());
    let body = rt
        .block_on(async { client(&weed).get(&key).await?.bytes().await })
        .unwrap_or_else(|e| panic!("{object}: {e}"));
    assert!(body[..] == bytes[..], "{object} differs from {old}");
    rcv.kill9();
    drop(archive);
    let server = match backup.start_recovery(&bucket_recovery_settings(&weed, prefix, "1")) {
        Recovery::Started(s) => s,
        Recovery::Failed { log } => panic!("recovery failed:\n{log}"),
    };
    server.wait_for_promotion(RECOVERY_LIMIT);
    let log = server.full_log();
    assert_eq!(
        server.psql("SELECT what, count(*) FROM t GROUP BY what ORDER BY what"),
        "before|3\non P|10",
        "every commit acknowledged on timeline 1, none of timeline 2\n{log}"
    );
    assert!(
        log.contains(&format!("restored log file \"{current}\" from archive")),
        "timeline 1's last segment ({current}) not restored from the bucket:\n{log}"
    );
}

/// Two receivers in `ANY 1`, uploading into one prefix; one is killed
/// (SIGKILL) and restarted during the load, then the primary crashes and
/// both stop cleanly: restore from the bucket alone has every
/// acknowledged commit (identical complete segments uploaded twice meet
/// the create-only + compare rule; each `.partial` has its own name).
#[test]
fn two_receivers_any_1_one_bucket() {
    let weed = Seaweed::start("walrcv");
    let prefix = "ha";
    let url = weed.url(prefix);
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    pg.psql("CREATE TABLE t (i int PRIMARY KEY, filler text)");
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let interval = ["--upload-partial-interval", "1"];
    let mut a = spawn_receiver(&pg, &weed.env(), dir_a.path(), &url, "walrcv_a", &interval);
    let mut b = spawn_receiver(&pg, &weed.env(), dir_b.path(), &url, "walrcv_b", &interval);
    pg.psql("ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (walrcv_a, walrcv_b)'");
    pg.psql("SELECT pg_reload_conf()");
    let backup = pg.base_backup();
    const N: u32 = 16;
    for i in 1..=N {
        if i == 6 {
            a.kill9();
        }
        if i == 10 {
            a = spawn_receiver(&pg, &weed.env(), dir_a.path(), &url, "walrcv_a", &interval);
            b.kill9();
        }
        if i == 13 {
            b = spawn_receiver(&pg, &weed.env(), dir_b.path(), &url, "walrcv_b", &interval);
        }
        pg.try_psql_timeout(
            &format!("INSERT INTO t SELECT {i}, string_agg(md5(random()::text), '') FROM generate_series(1, 3000)"),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("commit {i}: {e}"));
    }
    let mut primary = pg;
    primary.stop_immediate();
    assert!(a.interrupt().success(), "{}", a.stderr());
    assert!(b.interrupt().success(), "{}", b.stderr());
    assert!(!a.stderr().contains("CONFLICT") && !b.stderr().contains("CONFLICT"));
    drop((dir_a, dir_b));
    let settings = bucket_recovery_settings(&weed, prefix, "latest");
    let server = match backup.start_recovery(&settings) {
        Recovery::Started(s) => s,
        Recovery::Failed { log } => panic!("recovery failed:\n{log}"),
    };
    server.wait_for_promotion(RECOVERY_LIMIT);
    assert_eq!(
        rows(&server),
        (N, u64::from(N) * u64::from(N + 1) / 2),
        "every acknowledged row\n{}",
        server.full_log()
    );
}

fn tps(out: &str) -> f64 {
    out.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no tps in {out}"))
}

/// Performance (run by hand: `cargo test --release --test integration --
/// --ignored object_storage::perf`): synchronous commit TPS with a
/// receiver that uploads to SeaweedFS against one that does not, side by
/// side on one primary, alternating runs.
#[test]
#[ignore]
fn perf_sync_commit_tps_with_upload() {
    let weed = Seaweed::start("walrcv");
    let pg = PgServer::builder().start();
    pg.pgbench_init(10);
    let secs = std::env::var("WALRCV_PERF_SECS").unwrap_or_else(|_| "20".into());
    let mut results = Vec::new();
    for round in 0..2 {
        for upload in [false, true] {
            let archive = tempfile::tempdir().unwrap();
            let conn = format!("{} application_name={APP}", pg.conninfo());
            let mut walrcv = Walrcv::new(Vec::<&str>::new());
            let cmd = walrcv.command_mut();
            cmd.args([
                "stream",
                "-D",
                archive.path().to_str().unwrap(),
                "-d",
                &conn,
            ]);
            if upload {
                cmd.args([
                    "--upload",
                    &weed.url(&format!("perf{round}")),
                    "--upload-partial-interval",
                    "10",
                ]);
            }
            weed.apply(cmd);
            let mut rcv = walrcv.spawn();
            pg.psql(&format!(
                "ALTER SYSTEM SET synchronous_standby_names = '{APP}'"
            ));
            pg.psql("SELECT pg_reload_conf()");
            wait_until(Duration::from_secs(30), "sync", || {
                assert!(rcv.is_running(), "{}", rcv.stderr());
                pg.psql(&format!(
                    "SELECT sync_state FROM pg_stat_replication WHERE application_name = '{APP}'"
                )) == "sync"
            });
            let out = pg.pgbench(&["-c", "4", "-j", "2", "-N", "-T", &secs]);
            results.push((upload, tps(&out)));
            rcv.interrupt();
        }
    }
    for (upload, t) in &results {
        println!("PERF sync commit tps, upload={upload}: {t:.1}");
    }
}

/// 503 answers, then a PUT that reaches the store but whose answer is
/// lost: every segment ends up confirmed, byte-identical, with no conflict
/// (the lost answer is resolved by reading the object back).
#[test]
fn upload_5xx_and_lost_put_answers() {
    let weed = Seaweed::start("walrcv");
    let relay = crate::support::http_faults::HttpFaults::start(weed.s3_port());
    let env = Seaweed::env_for_port(relay.port());
    let prefix = "db5";
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    let archive = tempfile::tempdir().unwrap();
    let metrics_port = crate::support::free_port();
    let metrics_arg = format!("127.0.0.1:{metrics_port}");
    relay.fail_next(6);
    relay.lose_next_put_answers(2);
    let mut rcv = spawn_receiver(
        &pg,
        &env,
        archive.path(),
        &weed.url(prefix),
        APP,
        &["--metrics-address", &metrics_arg],
    );
    let mut names = Vec::new();
    for _ in 0..3 {
        pg.psql("SELECT txid_current()");
        names.push(pg.walfile_name(pg.switch_wal()));
    }
    wait_until(Duration::from_secs(90), "every segment confirmed", || {
        assert!(rcv.is_running(), "{}", rcv.stderr());
        let uploaded = object_names(&weed, prefix);
        names
            .iter()
            .all(|n| uploaded.contains(&format!("{prefix}/{n}")))
            && metric(metrics_port, "walrcv_upload_backlog_files") == Some(0.0)
    });
    assert_eq!(relay.failed(), 6);
    assert_eq!(relay.lost(), 2, "{}", rcv.stderr());
    assert_eq!(
        metric(metrics_port, "walrcv_upload_conflicts_total"),
        Some(0.0),
        "{}",
        rcv.stderr()
    );
    let store = client(&weed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for name in &names {
        let key = ObjectPath::from(format!("{prefix}/{name}"));
        let body = rt
            .block_on(async { store.get(&key).await?.bytes().await })
            .unwrap();
        assert!(
            body[..] == std::fs::read(archive.path().join(name)).unwrap()[..],
            "{name}"
        );
    }
    rcv.interrupt();
}

/// A restart with the `.partial` unchanged since its last upload: the
/// upload state file names that version, so the new process checks it
/// with one HEAD and neither PUTs nor GETs it (before: a PUT, its 412, and
/// a GET of the whole file to compare). The primary is stopped first so
/// that nothing can change the `.partial` meanwhile.
#[test]
fn upload_restart_skips_an_unchanged_partial() {
    let weed = Seaweed::start("walrcv");
    let relay = crate::support::http_faults::HttpFaults::start(weed.s3_port());
    let env = Seaweed::env_for_port(relay.port());
    let prefix = "db6";
    let mut pg = PgServer::builder().wal_segsize_mb(1).start();
    let archive = tempfile::tempdir().unwrap();
    let interval = ["--upload-partial-interval", "1"];
    let url = weed.url(prefix);
    let mut rcv = spawn_receiver(&pg, &env, archive.path(), &url, APP, &interval);
    pg.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) i");
    pg.switch_wal();
    pg.psql("INSERT INTO t SELECT generate_series(1, 1000)");
    pg.stop();
    assert!(rcv.interrupt().success(), "{}", rcv.stderr());
    let partial = crate::support::file_names(archive.path())
        .into_iter()
        .find(|n| n.ends_with(".partial"))
        .expect("a .partial");
    let segment = &partial[..24];
    let copies = format!("/{prefix}/partial/{segment}/");
    let first = relay.take_requests();
    assert!(
        first
            .iter()
            .any(|r| r.starts_with("PUT ") && r.contains(&copies)),
        "the .partial was never uploaded: {first:?}"
    );
    let state = std::fs::read_to_string(archive.path().join(".walrcv-uploaded")).unwrap();
    assert!(
        state.contains(&format!(
            "partial {partial} partial/{segment}/{partial}.{APP}."
        )),
        "{state}"
    );
    // Again, on the same archive (the primary is down: the uploader runs
    // its passes while the receiver retries). Once the state's object has
    // been checked, a clean stop (one more pass over the .partial, which
    // would upload it if it were not taken as confirmed).
    let mut again = receiver_command(&pg, &env, archive.path(), &url, APP, &interval).spawn();
    let mut requests = Vec::new();
    wait_until(
        Duration::from_secs(60),
        "the state's .partial object to be checked",
        || {
            assert!(again.is_running(), "walrcv exited:\n{}", again.stderr());
            requests.extend(relay.take_requests());
            requests
                .iter()
                .any(|r| r.starts_with("HEAD ") && r.contains(&copies))
        },
    );
    assert!(again.interrupt().success(), "{}", again.stderr());
    requests.extend(relay.take_requests());
    let read_or_written: Vec<_> = requests
        .iter()
        .filter(|r| (r.starts_with("GET ") || r.starts_with("PUT ")) && r.contains(&copies))
        .collect();
    assert!(
        read_or_written.is_empty(),
        "the unchanged .partial was offered again: {read_or_written:?}\n{}",
        again.stderr()
    );
}
