//! `walrcv restore --from` applies the local archive's rules to the bucket
//! (issue 18), on WAL written by a real PostgreSQL 15 and a real object
//! store (SeaweedFS): a complete segment in the bucket wins over a local
//! `.partial` (the other receiver of a pair uploaded it); a `.partial`
//! followed by a later segment of its timeline (in the bucket or locally)
//! is a hole and is refused; the switch segment of a timeline whose
//! `.partial` ends before the switch point is served from the parent
//! timeline's copy up to it, in a recovery from the bucket alone; a PITR
//! with a stopped receiver's archive as the first tier gets every row from
//! the bucket's complete segments; the prefetch directory is used, then
//! removed at the end of recovery. Also the (ignored) measures of upload
//! throughput and restore with and without prefetch.

use std::path::Path;
use std::time::Duration;

use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
use walrcv::archive::names::ArchiveName;
use walrcv::objstore::partial;

use crate::failover::switch_segment_cut_archive;
use crate::object_storage::client;
use crate::support::seaweed::Seaweed;
use crate::support::{walrcv_bin, walrcv_spawn, PgServer, Recovery, RunOutput, Walrcv};

const APP: &str = "walrcv_a";

/// PUTs `files` (name, bytes) under `prefix` as the uploader names them: a
/// `.partial` under `partial/SEG/`, anything else under its own name.
fn put(weed: &Seaweed, prefix: &str, files: &[(&str, &[u8])]) {
    let store = client(weed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for (name, bytes) in files {
            let object = match ArchiveName::classify(name) {
                ArchiveName::Segment {
                    name: seg,
                    partial: true,
                    ..
                } => partial::object_name(seg.as_str(), name, APP, bytes),
                _ => name.to_string(),
            };
            let path = ObjectPath::from(format!("{prefix}/{object}"));
            store.put(&path, bytes.to_vec().into()).await.expect("PUT");
        }
    });
}

/// Every segment and history file of `dir`, uploaded under `prefix`.
fn put_archive(weed: &Seaweed, prefix: &str, dir: &Path) {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if matches!(
            ArchiveName::classify(&name),
            ArchiveName::Segment { .. } | ArchiveName::History { .. }
        ) {
            files.push((name, std::fs::read(entry.path()).unwrap()));
        }
    }
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    put(weed, prefix, &refs);
}

/// The segment after `name` on its timeline (the low digits only: the
/// tests' positions are small).
fn segment_after(name: &str) -> String {
    let low = u32::from_str_radix(&name[16..], 16).unwrap();
    format!("{}{:08X}", &name[..16], low + 1)
}

/// `walrcv restore SEG OUT --from URL [-D DIR] --prefetch 0`.
fn restore(
    weed: &Seaweed,
    segment: &str,
    out: &Path,
    url: &str,
    local: Option<&Path>,
) -> RunOutput {
    let mut walrcv =
        Walrcv::new(["restore", segment])
            .arg(out)
            .args(["--from", url, "--prefetch", "0"]);
    if let Some(dir) = local {
        walrcv = walrcv.arg("-D").arg(dir);
    }
    weed.apply(walrcv.command_mut());
    walrcv.run()
}

fn stream(pg: &PgServer, dir: &Path) -> crate::support::BackgroundProcess {
    let conn = format!("{} application_name={APP}", pg.conninfo());
    walrcv_spawn(&["stream", "-D", dir.to_str().unwrap(), "-d", &conn, "-v"])
}

/// Writes `mb` MB of WAL and waits until the receiver has flushed it.
fn load(pg: &PgServer, mb: u32) {
    pg.psql(&format!(
        "INSERT INTO t SELECT g, repeat(md5(g::text), 30) FROM generate_series(1, {}) g",
        mb * 700
    ));
    let lsn = pg.current_lsn();
    pg.wait_for_flush(APP, lsn, Duration::from_secs(60));
}

#[test]
fn restore_from_bucket_applies_the_local_rules() {
    let weed = Seaweed::start("walrcv");
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    pg.psql("CREATE TABLE t (i int, filler text)");
    let archive = tempfile::tempdir().unwrap();
    // A .partial of segment X as a receiver stopped there leaves it.
    let mut rcv = stream(&pg, archive.path());
    load(&pg, 1);
    let x = pg.walfile_name(pg.current_lsn());
    assert!(rcv.terminate().success(), "{}", rcv.stderr());
    let short = std::fs::read(archive.path().join(format!("{x}.partial")))
        .unwrap_or_else(|e| panic!("{x}.partial: {e}"));
    // The receiver again: X and X+1 complete.
    let mut rcv = stream(&pg, archive.path());
    load(&pg, 3);
    pg.force_switch_wal();
    load(&pg, 0);
    assert!(rcv.terminate().success(), "{}", rcv.stderr());
    let complete = std::fs::read(archive.path().join(&x)).unwrap();
    let next = {
        let mut names: Vec<String> = std::fs::read_dir(archive.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.len() == 24 && n[..8] == x[..8] && *n > x)
            .collect();
        names.sort();
        names.first().cloned().expect("a complete segment after X")
    };
    let next_bytes = std::fs::read(archive.path().join(&next)).unwrap();
    assert_ne!(short, complete, "the .partial is shorter than the segment");

    let local = tempfile::tempdir().unwrap();
    std::fs::write(local.path().join(format!("{x}.partial")), &short).unwrap();
    let local_later = tempfile::tempdir().unwrap();
    std::fs::write(local_later.path().join(&next), &next_bytes).unwrap();
    put(&weed, "full", &[(&x, &complete), (&next, &next_bytes)]);
    let partial_name = format!("{x}.partial");
    put(
        &weed,
        "hole",
        &[(&partial_name, &short), (&next, &next_bytes)],
    );
    put(&weed, "end", &[(&partial_name, &short)]);
    // A gap: X+1 missing everywhere, a later segment of the timeline there,
    // complete or only as a receiver's `.partial` copy. Its bytes do not
    // matter: the hole check goes by names.
    let after_next = segment_after(&next);
    let after_next_partial = format!("{after_next}.partial");
    put(
        &weed,
        "gap",
        &[(&partial_name, &short), (&after_next, &next_bytes)],
    );
    put(
        &weed,
        "gapcopy",
        &[(&partial_name, &short), (&after_next_partial, &next_bytes)],
    );
    // A later timeline's segment is no hole in this one.
    let other_timeline = format!(
        "{:08X}{}",
        u32::from_str_radix(&x[..8], 16).unwrap() + 1,
        &after_next[8..]
    );
    put(
        &weed,
        "othertli",
        &[(&partial_name, &short), (&other_timeline, &next_bytes)],
    );
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join(&x);

    // -D alone serves the local .partial (padded): the control.
    let only_local = Walrcv::new(["restore", &x])
        .arg(&out)
        .arg("-D")
        .arg(local.path())
        .run();
    only_local.assert_success();
    assert_ne!(std::fs::read(&out).unwrap(), complete);
    // With the bucket holding the complete segment: that one, verified.
    restore(&weed, &x, &out, &weed.url("full"), Some(local.path())).assert_success();
    assert_eq!(std::fs::read(&out).unwrap(), complete, "the complete copy");
    std::fs::remove_file(&out).unwrap();

    // A .partial in the bucket with the next segment there: a hole.
    let hole = restore(&weed, &x, &out, &weed.url("hole"), None);
    assert_eq!(hole.code(), Some(200), "{}", hole.text());
    assert!(hole.stderr.contains("has a hole"), "{}", hole.text());
    assert!(!out.exists());
    // The same .partial alone: the end of the archive, served padded.
    restore(&weed, &x, &out, &weed.url("end"), None).assert_success();
    let served = std::fs::read(&out).unwrap();
    assert_eq!(served.len(), complete.len());
    assert_ne!(served, complete);
    std::fs::remove_file(&out).unwrap();
    // The same with a gap after X: still a hole, however far the later
    // segment is (the hole check looks past the next segment).
    for prefix in ["gap", "gapcopy"] {
        let hole = restore(&weed, &x, &out, &weed.url(prefix), None);
        assert_eq!(hole.code(), Some(200), "{prefix}: {}", hole.text());
        assert!(
            hole.stderr.contains("has a hole"),
            "{prefix}: {}",
            hole.text()
        );
        assert!(!out.exists());
    }
    restore(&weed, &x, &out, &weed.url("othertli"), None).assert_success();
    std::fs::remove_file(&out).unwrap();
    // ... unless the local archive holds a later segment of the timeline.
    let hole = restore(&weed, &x, &out, &weed.url("end"), Some(local_later.path()));
    assert_eq!(hole.code(), Some(200), "{}", hole.text());
    assert!(hole.stderr.contains("has a hole"), "{}", hole.text());
    // Nothing about X anywhere: not found.
    let none = restore(&weed, &x, &out, &weed.url("nothing"), None);
    assert_eq!(none.code(), Some(1), "{}", none.text());

    // Prefetch: X served from the bucket starts a worker that fetches the
    // next segment into pg_wal/.walrcv-prefetch; the next request takes it
    // from there; a history file request (the start or the end of a
    // recovery) removes the directory.
    let data = tempfile::tempdir().unwrap();
    let pg_wal = data.path().join("pg_wal");
    std::fs::create_dir(&pg_wal).unwrap();
    let cache = pg_wal.join(".walrcv-prefetch");
    let ask = |name: &str| {
        let mut walrcv = Walrcv::new(["restore", name])
            .arg(pg_wal.join("RECOVERYXLOG"))
            .args(["--from", &weed.url("full"), "--prefetch", "2"])
            .env("WALRCV_LOG", "info");
        weed.apply(walrcv.command_mut());
        walrcv.run()
    };
    ask(&x).assert_success();
    crate::support::wait_until(
        Duration::from_secs(30),
        "the next segment prefetched",
        || cache.join(&next).exists(),
    );
    let taken = ask(&next);
    taken.assert_success();
    assert!(
        taken.stderr.contains("taken from the prefetch directory"),
        "{}",
        taken.text()
    );
    assert_eq!(
        std::fs::read(pg_wal.join("RECOVERYXLOG")).unwrap(),
        next_bytes
    );
    assert_eq!(ask("00000002.history").code(), Some(1));
    assert!(!cache.exists(), "the prefetch directory is left");
    let left: Vec<_> = std::fs::read_dir(&pg_wal)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, ["RECOVERYXLOG"], "only %p in pg_wal");
}

/// The switch-segment case of tests/failover.rs, uploaded, the local
/// archive gone: the recovery from the bucket alone serves timeline 1's
/// copy of the switch segment up to the switch point (its `.partial`, found
/// by the LIST of its `partial/` directory), and every commit acknowledged
/// on P is back.
#[test]
fn restore_from_bucket_serves_the_switch_segment_from_the_parent() {
    let weed = Seaweed::start("walrcv");
    let case = switch_segment_cut_archive(&[]);
    put_archive(&weed, "sw", case.dir.path());
    let parent = case.parent();
    let env: String = weed
        .env()
        .iter()
        .map(|(k, v)| format!("{k}={v} "))
        .collect();
    let settings = vec![
        format!(
            "restore_command = 'env {env}{} restore %f %p --from {}'",
            walrcv_bin().display(),
            weed.url("sw")
        ),
        "recovery_target_timeline = 'latest'".to_string(),
    ];
    let restored = match case.backup.start_recovery(&settings) {
        Recovery::Started(server) => server,
        Recovery::Failed { log } => panic!("recovery failed:\n{log}"),
    };
    restored.wait_for_promotion(Duration::from_secs(180));
    let log = restored.full_log();
    assert_eq!(
        restored.psql("SELECT count(*) FROM t WHERE what = 'on P'"),
        "60",
        "every commit acknowledged on P, up to the switch point:\n{log}"
    );
    assert!(log.contains(&format!("serving \"{parent}")), "{log}");
}

/// The walrcv binary the measures run: `WALRCV_PERF_BIN` (a release build),
/// else the test's own.
fn perf_bin() -> std::path::PathBuf {
    std::env::var_os("WALRCV_PERF_BIN")
        .map(Into::into)
        .unwrap_or_else(walrcv_bin)
}

/// Measures, by hand (`--ignored --nocapture`): (1) upload throughput of a
/// backlog: a local archive of `WALRCV_PERF_SEGMENTS` (64) segments of
/// `WALRCV_PERF_SEG_MB` (16) MB, then `walrcv stream --upload` started on
/// it, timed until the backlog is empty; (2) `walrcv restore` of those
/// segments one after the other, as the startup process calls its
/// `restore_command`, with `--prefetch 0` and `--prefetch 8` in alternating
/// rounds. See docs/src/object-storage.md ("Performance").
#[test]
#[ignore]
fn perf_restore_prefetch_and_upload_backlog() {
    let env_num = |k: &str, d: u32| -> u32 {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (count, seg_mb) = (
        env_num("WALRCV_PERF_SEGMENTS", 64),
        env_num("WALRCV_PERF_SEG_MB", 16),
    );
    let rounds = env_num("WALRCV_PERF_ROUNDS", 2);
    let bin = perf_bin();
    let weed = Seaweed::start("walrcv");
    let pg = PgServer::builder().wal_segsize_mb(seg_mb).start();
    pg.psql("CREATE TABLE t (i int, filler text)");
    let archive = tempfile::tempdir().unwrap();
    let mut rcv = stream(&pg, archive.path());
    let names = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.len() == 24)
            .collect();
        v.sort();
        v
    };
    while names(archive.path()).len() < count as usize {
        load(&pg, seg_mb * 4);
    }
    assert!(rcv.terminate().success(), "{}", rcv.stderr());
    let segments: Vec<String> = names(archive.path())
        .into_iter()
        .take(count as usize)
        .collect();
    let bytes: u64 = names(archive.path())
        .iter()
        .map(|n| std::fs::metadata(archive.path().join(n)).unwrap().len())
        .sum();

    // (1) Upload of the backlog.
    let metrics_port = crate::support::free_port();
    let conn = format!("{} application_name={APP}", pg.conninfo());
    let mut walrcv = Walrcv::via(
        &bin,
        [
            "stream",
            "-D",
            archive.path().to_str().unwrap(),
            "-d",
            &conn,
            "--upload",
            &weed.url("perf"),
            "--metrics-address",
            &format!("127.0.0.1:{metrics_port}"),
        ],
    );
    weed.apply(walrcv.command_mut());
    let started = std::time::Instant::now();
    let mut up = walrcv.spawn();
    let files = names(archive.path()).len() as f64;
    crate::support::wait_until(Duration::from_secs(1800), "the backlog to drain", || {
        assert!(up.is_running(), "{}", up.stderr());
        upload_metric(metrics_port, "walrcv_upload_backlog_files") == Some(0.0)
            && upload_metric(metrics_port, "walrcv_upload_files_total").unwrap_or(0.0) >= files
    });
    let upload_secs = started.elapsed().as_secs_f64();
    up.interrupt();
    println!(
        "upload backlog: {files} files, {:.0} MB in {upload_secs:.1} s = {:.1} MB/s",
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / upload_secs
    );

    // (2) Restore, sequentially, as the startup process does: straight to
    // the store on loopback, then (WALRCV_PERF_DRIP_KB=K) through a relay
    // that delivers K KB per millisecond on each connection, a store whose
    // per-connection bandwidth is limited as over a real network.
    let mut setups = vec![("loopback".to_string(), weed.env(), None)];
    if let Some(kb) = std::env::var("WALRCV_PERF_DRIP_KB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        let proxy = crate::support::proxy::FaultProxy::start(weed.s3_port());
        proxy.drip(kb << 10, Duration::from_millis(1));
        let env = Seaweed::env_for_port(proxy.port());
        setups.push((format!("{kb} KB/ms per connection"), env, Some(proxy)));
    }
    for (what, env, _proxy) in &setups {
        let mut results: Vec<(u32, f64)> = Vec::new();
        for _ in 0..rounds {
            for prefetch in [0u32, 8] {
                let secs = restore_all(&bin, weed.url("perf"), env, &segments, prefetch);
                println!(
                    "{what}: restore of {} segments ({seg_mb} MB) with --prefetch {prefetch}: {secs:.1} s, {:.1} ms per segment",
                    segments.len(),
                    secs * 1000.0 / segments.len() as f64
                );
                results.push((prefetch, secs));
            }
        }
        let total = |p: u32| -> f64 { results.iter().filter(|r| r.0 == p).map(|r| r.1).sum() };
        println!(
            "{what}: restore time, --prefetch 8 / --prefetch 0: {:.2}",
            total(8) / total(0)
        );
    }
}

/// Restores `segments` one after the other (then one that is not there,
/// the end of recovery) into a fresh `pg_wal`; the seconds taken.
fn restore_all(
    bin: &Path,
    url: String,
    env: &[(&'static str, String)],
    segments: &[String],
    prefetch: u32,
) -> f64 {
    let data = tempfile::tempdir().unwrap();
    let pg_wal = data.path().join("pg_wal");
    std::fs::create_dir(&pg_wal).unwrap();
    let started = std::time::Instant::now();
    let after = format!("{}FF", &segments[0][..22]);
    let mut asked: Vec<&str> = segments.iter().map(String::as_str).collect();
    asked.push(&after);
    for seg in &asked {
        let target = pg_wal.join("RECOVERYXLOG");
        let mut walrcv = Walrcv::via(
            bin,
            [
                "restore",
                seg,
                target.to_str().unwrap(),
                "--from",
                &url,
                "--prefetch",
                &prefetch.to_string(),
            ],
        );
        crate::support::seaweed::apply_env(walrcv.command_mut(), env);
        let out = walrcv.run();
        assert!(
            out.success() || (*seg == after && out.code() == Some(1)),
            "{seg}: {}",
            out.text()
        );
    }
    let secs = started.elapsed().as_secs_f64();
    assert!(
        !pg_wal.join(".walrcv-prefetch").exists(),
        "prefetch dir left"
    );
    secs
}

fn upload_metric(port: u16, name: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.lines().find_map(|l| {
        let (n, v) = l.rsplit_once(' ')?;
        (n == name).then(|| v.parse().ok())?
    })
}

/// Receiver B of an `ANY 1` pair stopped inside segment X: its local
/// archive ends with `X.partial`; receiver A went on and uploaded X and
/// what follows. A PITR with B's archive as the first tier (`-D`) and the
/// bucket second gets every row: X comes complete from the bucket, not
/// short from B's `.partial` (which would end recovery there and promote).
#[test]
fn pitr_local_partial_gives_way_to_the_bucket_complete_segment() {
    let weed = Seaweed::start("walrcv");
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    pg.psql("CREATE TABLE t (i int, filler text)");
    let backup = pg.base_backup();
    let archive = tempfile::tempdir().unwrap();
    let conn = format!("{} application_name={APP}", pg.conninfo());
    let mut walrcv = Walrcv::new([
        "stream",
        "-D",
        archive.path().to_str().unwrap(),
        "-d",
        &conn,
        "--upload",
        &weed.url("pair"),
        "--upload-partial-interval",
        "1",
    ]);
    weed.apply(walrcv.command_mut());
    let mut rcv = walrcv.spawn();
    crate::support::wait_until(Duration::from_secs(30), "streaming", || {
        assert!(rcv.is_running(), "{}", rcv.stderr());
        pg.replication_flush_lsn(APP).is_some()
    });
    load(&pg, 2);
    // B's archive: a copy of this moment, ending with a .partial.
    let b = crate::support::archive_dir();
    for entry in std::fs::read_dir(archive.path()).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if matches!(
            ArchiveName::classify(&name),
            ArchiveName::Segment { .. } | ArchiveName::History { .. }
        ) {
            std::fs::copy(entry.path(), b.path().join(&name)).unwrap();
        }
    }
    let x = crate::support::file_names(b.path())
        .into_iter()
        .find(|n| n.ends_with(".partial"))
        .expect("B's .partial");
    load(&pg, 3);
    let rows = pg.psql("SELECT count(*) FROM t");
    let mut primary = pg;
    primary.stop_immediate();
    assert!(rcv.interrupt().success(), "{}", rcv.stderr());
    crate::support::give_to_server_user(b.path());
    let env: String = weed
        .env()
        .iter()
        .map(|(k, v)| format!("{k}={v} "))
        .collect();
    let settings = vec![
        format!(
            "restore_command = 'env {env}{} restore %f %p -D {} --from {}'",
            walrcv_bin().display(),
            b.path().display(),
            weed.url("pair")
        ),
        "recovery_target_timeline = 'latest'".to_string(),
    ];
    let server = match backup.start_recovery(&settings) {
        Recovery::Started(s) => s,
        Recovery::Failed { log } => panic!("recovery failed:\n{log}"),
    };
    server.wait_for_promotion(Duration::from_secs(120));
    let log = server.full_log();
    assert_eq!(
        server.psql("SELECT count(*) FROM t"),
        rows,
        "every row, past B's {x}:\n{log}"
    );
}
