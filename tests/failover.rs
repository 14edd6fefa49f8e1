//! Following the primary through a failover (issue 11), against real
//! servers: a planned switchover with walrcv as the synchronous standby and a
//! point-in-time recovery to the end of the new timeline; an unplanned
//! failover that leaves a divergent tail; a new primary without the slot;
//! a host of another cluster in the list; a sibling fork; a new primary that
//! no longer has the WAL the archive needs.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use walrcv::archive::names::ArchiveName;

use crate::support::{
    archive_dir, file_names, give_to_server_user, parse_lsn, wait_until, walrcv_recovery_settings,
    walrcv_run, walrcv_spawn, BackgroundProcess, PgServer, Recovery, SUPERUSER,
};

const APP: &str = "walrcv";
const SEG: u64 = 1 << 20;

/// `host=127.0.0.1,... port=P1,... target_session_attrs=ATTRS`: libpq's host
/// list over the servers, in this order.
fn hosts(servers: &[&PgServer], attrs: &str) -> String {
    let host = vec!["127.0.0.1"; servers.len()].join(",");
    let port: Vec<String> = servers.iter().map(|s| s.port().to_string()).collect();
    format!(
        "host={host} port={} user={SUPERUSER} target_session_attrs={attrs} application_name={APP} \
         connect_timeout=5",
        port.join(",")
    )
}

fn stream(dir: &Path, conninfo: &str, extra: &[&str]) -> BackgroundProcess {
    let d = dir.to_str().unwrap();
    let mut args = vec!["stream", "-D", d, "-d", conninfo, "-v"];
    args.extend_from_slice(extra);
    walrcv_spawn(&args)
}

/// Every file's name and content.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    file_names(dir)
        .into_iter()
        .map(|n| {
            let bytes = std::fs::read(dir.join(&n)).unwrap();
            (n, bytes)
        })
        .collect()
}

/// Runs `walrcv stream -n -v` once against `conninfo`, which must refuse;
/// asserts that the archive is byte-identical afterwards, and returns the
/// output for the caller's checks of the exit status and message.
fn refused_without_writing(dir: &Path, conninfo: &str) -> crate::support::RunOutput {
    let before = snapshot(dir);
    let d = dir.to_str().unwrap();
    let out = walrcv_run(
        &["stream", "-D", d, "-d", conninfo, "-n", "-v"],
        Duration::from_secs(60),
    );
    assert_eq!(snapshot(dir), before, "nothing written:\n{}", out.text());
    out
}

/// How long walrcv may take to stream from a server (after a failover: its
/// reconnect backoff, the new primary's promotion).
const STREAMING: Duration = Duration::from_secs(90);

/// One synchronous commit: acknowledged within 30 s, or the test fails.
fn commit(server: &PgServer, rcv: &BackgroundProcess, sql: &str) {
    if let Err(e) = server.try_psql_timeout(sql, Duration::from_secs(30)) {
        panic!("commit {sql:?} failed: {e}\nwalrcv:\n{}", rcv.stderr());
    }
}

/// The switch point out of `parent` in the archive's history file of
/// `timeline` (stored plain or gzip-compressed).
fn switchpoint(dir: &Path, timeline: u32, parent: u32) -> u64 {
    let plain = dir.join(format!("{timeline:08X}.history"));
    let text = std::fs::read_to_string(&plain).unwrap_or_else(|_| {
        use std::io::Read;
        let gz = std::fs::read(dir.join(format!("{timeline:08X}.history.gz"))).unwrap();
        let mut text = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut text)
            .unwrap();
        text
    });
    text.lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let p: u32 = f.next()?.trim().parse().ok()?;
            let lsn = f.next()?;
            (p == parent).then(|| parse_lsn(lsn))
        })
        .next()
        .unwrap_or_else(|| panic!("no parent {parent} in {timeline:08X}.history:\n{text}"))
}

/// (timeline, segno, partial) of every segment file, and the same of every
/// divergent file.
type Files = Vec<(u32, u64, bool)>;

fn classified(dir: &Path) -> (Files, Files) {
    let (mut segments, mut divergent) = (Vec::new(), Vec::new());
    for n in file_names(dir) {
        match ArchiveName::classify(&n) {
            ArchiveName::Segment { name, partial, .. } => {
                let (tli, segno) = name.segno(SEG).unwrap();
                segments.push((tli, segno, partial));
            }
            ArchiveName::Divergent { name, partial, .. } => {
                let (tli, segno) = name.segno(SEG).unwrap();
                divergent.push((tli, segno, partial));
            }
            _ => {}
        }
    }
    (segments, divergent)
}

/// `SELECT count(*) FROM t WHERE what = '...'` on a restored server.
fn count(server: &PgServer, what: &str) -> u64 {
    server
        .psql(&format!("SELECT count(*) FROM t WHERE what = '{what}'"))
        .parse()
        .unwrap()
}

/// Planned switchover: walrcv is the synchronous standby of P (host list
/// `P,S`, `target_session_attrs=primary`) while pgbench and counted commits
/// run; P stops (fast), S is promoted; walrcv follows S by itself, stores
/// `00000002.history`, is S's synchronous standby as soon as S names it, and
/// a server restored from a base backup taken before the switchover replays
/// the archive (through `walrcv restore`) to the end of the new timeline with
/// every acknowledged commit.
#[test]
fn planned_switchover_follows_the_new_primary_and_restores_to_its_end() {
    let mut p = PgServer::builder().wal_segsize_mb(1).start();
    p.psql("CREATE TABLE t(i int, what text)");
    p.pgbench_init(1);
    let s = p.create_standby();
    let backup = p.base_backup();
    let dir = archive_dir();
    let mut rcv = stream(dir.path(), &hosts(&[&p, &s], "primary"), &["--synchronous"]);
    p.wait_streaming(APP, Some(&mut rcv), STREAMING);
    p.make_synchronous(APP, Some(&mut rcv), Duration::from_secs(30));
    std::thread::scope(|scope| {
        scope.spawn(|| p.pgbench(&["-n", "-c", "2", "-T", "4"]));
        for i in 1..=40 {
            commit(&p, &rcv, &format!("INSERT INTO t VALUES ({i}, 'on P')"));
        }
    });
    // Fast: P's walsenders send all of its WAL to S and walrcv first.
    p.stop();
    s.promote();
    // walrcv follows S.
    s.wait_streaming(APP, Some(&mut rcv), STREAMING);
    s.make_synchronous(APP, Some(&mut rcv), Duration::from_secs(30));
    for i in 1..=40 {
        commit(&s, &rcv, &format!("INSERT INTO t VALUES ({i}, 'on S')"));
    }
    let end = s.current_lsn();
    s.wait_for_flush(APP, end, Duration::from_secs(30));
    let status = rcv.terminate();
    let err = rcv.stderr();
    assert!(status.success(), "SIGTERM exits 0:\n{err}");
    assert!(
        err.contains("stored timeline history file \"00000002.history\""),
        "{err}"
    );
    assert!(!err.contains("diverges"), "{err}");
    let (segments, divergent) = classified(dir.path());
    assert!(divergent.is_empty(), "{divergent:?}");
    // pg_receivewal's rule: the old timeline's last segment stays .partial.
    let last_on_1 = segments.iter().filter(|f| f.0 == 1).max().unwrap();
    assert!(last_on_1.2, "{segments:?}");
    let verify = walrcv_run(
        &["verify", dir.path().to_str().unwrap()],
        Duration::from_secs(120),
    );
    verify.assert_success();

    give_to_server_user(dir.path());
    let restored = match backup.start_recovery(&walrcv_recovery_settings(dir.path())) {
        Recovery::Started(server) => server,
        Recovery::Failed { log } => panic!("recovery failed:\n{log}"),
    };
    restored.wait_for_promotion(Duration::from_secs(180));
    assert_eq!(
        count(&restored, "on P"),
        40,
        "every commit acknowledged on P"
    );
    assert_eq!(
        count(&restored, "on S"),
        40,
        "every commit acknowledged on S"
    );
    assert_eq!(restored.timeline(), 3, "replayed timeline 2 to its end");
    let log = restored.full_log();
    assert!(
        log.contains("restored log file \"00000002.history\" from archive"),
        "{log}"
    );
}

/// Unplanned failover: S is an asynchronous standby that falls behind (it is
/// stopped), P writes WAL that walrcv receives and S never gets, P crashes
/// (immediate stop), S is promoted. walrcv sets the divergent tail aside
/// (`.divergent.tmp`), says which range diverges, continues on timeline 2;
/// `verify` reports the range; a recovery to the new timeline never reads
/// the divergent bytes (the lost rows are absent, the new ones present).
#[test]
fn unplanned_failover_sets_the_divergent_tail_aside() {
    let mut p = PgServer::builder().wal_segsize_mb(1).start();
    p.psql("CREATE TABLE t(i int, what text)");
    let mut s = p.create_standby();
    let backup = p.base_backup();
    let dir = archive_dir();
    let mut rcv = stream(dir.path(), &hosts(&[&p, &s], "primary"), &[]);
    p.wait_streaming(APP, Some(&mut rcv), STREAMING);
    p.psql("INSERT INTO t SELECT g, 'both' FROM generate_series(1, 1000) g");
    let both = p.current_lsn();
    p.wait_for_flush("walrcv_test_standby", both, Duration::from_secs(30));
    p.wait_for_flush(APP, both, Duration::from_secs(30));
    // S lags: what follows reaches walrcv only.
    s.stop();
    p.psql("INSERT INTO t SELECT g, 'lost' FROM generate_series(1, 3000) g");
    let lost = p.current_lsn();
    p.wait_for_flush(APP, lost, Duration::from_secs(30));
    p.stop_immediate();
    s.start_again();
    s.promote();
    s.psql("INSERT INTO t SELECT g, 'new' FROM generate_series(1, 1000) g");
    // walrcv follows S.
    s.wait_streaming(APP, Some(&mut rcv), STREAMING);
    let end = s.current_lsn();
    s.wait_for_flush(APP, end, Duration::from_secs(30));
    let status = rcv.terminate();
    let err = rcv.stderr();
    assert!(status.success(), "SIGTERM exits 0:\n{err}");

    let switch = switchpoint(dir.path(), 2, 1);
    assert!(switch < lost, "S was promoted before the lost WAL");
    let message = format!(
        "the archive's timeline 1 diverges from the server's history at {}",
        crate::support::format_lsn(switch)
    );
    assert!(err.contains(&message), "{message}\n{err}");
    let (segments, divergent) = classified(dir.path());
    let first = switch / SEG;
    assert!(!divergent.is_empty(), "{:?}", file_names(dir.path()));
    assert!(
        divergent.iter().all(|f| f.0 == 1 && f.1 >= first),
        "{divergent:?}"
    );
    assert!(
        !segments.iter().any(|f| f.0 == 1 && f.1 >= first),
        "no timeline 1 file holds WAL past the switch point: {segments:?}"
    );
    assert!(
        segments.iter().any(|f| f.0 == 2 && f.1 == first),
        "timeline 2 has the switch point's segment: {segments:?}"
    );
    // The divergent bytes are kept: they reach where the lost WAL ended.
    let newest = divergent.iter().max().unwrap();
    let aside = file_names(dir.path())
        .into_iter()
        .find(|n| {
            n.starts_with(&walrcv::lsn::wal_file_name(1, newest.1, SEG)) && n.ends_with(".tmp")
        })
        .unwrap();
    let bytes = std::fs::read(dir.path().join(&aside)).unwrap();
    let data_end = newest.1 * SEG + walrcv::archive::divergent::end_of_data(&bytes) as u64;
    assert!(
        data_end >= lost.min((newest.1 + 1) * SEG) - 8192,
        "{aside}: data to {data_end:X}, lost WAL to {lost:X}"
    );
    let verify = walrcv_run(
        &["verify", dir.path().to_str().unwrap()],
        Duration::from_secs(120),
    );
    // verify names the files set aside, the switch point and the timelines.
    let report = verify.text();
    for part in [
        "divergent WAL of timeline 1 set aside (".to_string(),
        aside.clone(),
        format!(
            "past the switch point {} where timeline 2's history left timeline 1",
            crate::support::format_lsn(switch)
        ),
    ] {
        assert!(
            report.contains(&part),
            "verify reports the divergent tail with {part:?}:\n{report}"
        );
    }

    give_to_server_user(dir.path());
    let restored = match backup.start_recovery(&walrcv_recovery_settings(dir.path())) {
        Recovery::Started(server) => server,
        Recovery::Failed { log } => panic!("recovery failed:\n{log}"),
    };
    restored.wait_for_promotion(Duration::from_secs(180));
    assert_eq!(count(&restored, "both"), 1000);
    assert_eq!(
        count(&restored, "lost"),
        0,
        "the divergent WAL is not replayed"
    );
    assert_eq!(count(&restored, "new"), 1000);
    let log = restored.full_log();
    let old_name = walrcv::lsn::wal_file_name(1, first, SEG);
    assert!(
        !log.contains(&format!("restored log file \"{old_name}\"")),
        "timeline 1's divergent segment was restored:\n{log}"
    );
}

/// A new primary without walrcv's slot: without `--create-slot-if-missing`
/// walrcv stops (exit 3) naming the slot and the option; with it, walrcv
/// creates the slot on S, warns once (not again after S restarts), and
/// streams.
#[test]
fn failover_to_a_host_without_the_slot() {
    let mut p = PgServer::builder().wal_segsize_mb(1).start();
    p.psql("CREATE TABLE t(i int)");
    p.create_physical_slot("archiver");
    let mut s = p.create_standby();
    let dir = archive_dir();
    let conninfo = hosts(&[&p, &s], "primary");
    let mut rcv = stream(dir.path(), &conninfo, &["--slot", "archiver"]);
    p.wait_streaming(APP, Some(&mut rcv), STREAMING);
    p.psql("INSERT INTO t SELECT generate_series(1, 1000)");
    p.wait_for_flush(APP, p.current_lsn(), Duration::from_secs(30));
    p.stop();
    s.promote();
    let status = rcv
        .wait_timeout(Duration::from_secs(90))
        .unwrap_or_else(|| panic!("walrcv still running:\n{}", rcv.stderr()));
    let err = rcv.stderr();
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(
        err.contains("replication slot \"archiver\" does not exist")
            && err.contains("--create-slot-if-missing"),
        "{err}"
    );
    assert!(!s.slot_exists("archiver"));

    let mut rcv = stream(
        dir.path(),
        &conninfo,
        &["--slot", "archiver", "--create-slot-if-missing"],
    );
    s.wait_streaming(APP, Some(&mut rcv), STREAMING);
    assert!(s.slot_exists("archiver"));
    s.restart();
    // After its restart.
    s.wait_streaming(APP, Some(&mut rcv), STREAMING);
    s.psql("INSERT INTO t SELECT generate_series(1, 1000)");
    s.wait_for_flush(APP, s.current_lsn(), Duration::from_secs(30));
    let status = rcv.terminate();
    let err = rcv.stderr();
    assert!(status.success(), "{err}");
    let warned = err
        .matches("replication slot \"archiver\" did not exist")
        .count();
    assert_eq!(warned, 1, "warned once:\n{err}");
    assert!(file_names(dir.path()).contains(&"00000002.history".to_string()));
}

/// A host of another cluster in the list, primary while the archive's own
/// primary is down: refused (exit 2, another system identifier), nothing
/// written.
#[test]
fn a_host_of_another_cluster_is_refused_and_nothing_is_written() {
    let mut p = PgServer::builder().wal_segsize_mb(1).start();
    let other = PgServer::builder().wal_segsize_mb(1).start();
    let dir = archive_dir();
    let d = dir.path().to_str().unwrap();
    p.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) i");
    let endpos = crate::support::format_lsn(p.current_lsn());
    walrcv_run(
        &["stream", "-D", d, "-d", &p.conninfo(), "-E", &endpos, "-n"],
        Duration::from_secs(60),
    )
    .assert_success();
    p.stop();
    assert!(
        file_names(dir.path())
            .iter()
            .any(|n| n.ends_with(".partial")),
        "the archive holds WAL of P: {:?}",
        file_names(dir.path())
    );
    let out = refused_without_writing(dir.path(), &hosts(&[&p, &other], "primary"));
    assert_eq!(out.code(), Some(2), "{}", out.text());
    assert!(out.text().contains("system identifier"), "{}", out.text());
}

/// Two standbys promoted apart both pick timeline 2: the archive followed
/// one of them; the other is refused (exit 3) without writing anything.
#[test]
fn a_sibling_fork_with_the_same_timeline_number_is_refused() {
    let mut p = PgServer::builder().wal_segsize_mb(1).start();
    p.psql("CREATE TABLE t(i int)");
    let mut s1 = p.create_standby();
    let s2 = p.create_standby();
    // S1 lags behind S2 and P: the two forks leave timeline 1 at different points.
    s1.stop();
    p.psql("INSERT INTO t SELECT generate_series(1, 1000)");
    p.wait_for_flush(
        "walrcv_test_standby",
        p.current_lsn(),
        Duration::from_secs(30),
    );
    p.stop();
    s2.promote();
    let dir = archive_dir();
    let mut rcv = stream(dir.path(), &hosts(&[&s2], "primary"), &[]);
    s2.wait_streaming(APP, Some(&mut rcv), STREAMING);
    s2.psql("INSERT INTO t SELECT generate_series(1, 1000)");
    s2.psql("SELECT pg_switch_wal()");
    s2.wait_for_flush(APP, s2.current_lsn(), Duration::from_secs(30));
    assert!(rcv.terminate().success(), "{}", rcv.stderr());
    assert!(file_names(dir.path()).contains(&"00000002.history".to_string()));
    s1.start_again();
    s1.promote();
    assert_eq!(s1.timeline(), 2);
    let out = refused_without_writing(dir.path(), &hosts(&[&s1], "primary"));
    assert_eq!(out.code(), Some(3), "{}", out.text());
    assert!(
        out.text().contains("has another history of timeline 2"),
        "{}",
        out.text()
    );
}

/// The new primary no longer has the WAL the archive needs (walrcv was down
/// while it wrote and checkpointed): walrcv stops with exit 3 naming the
/// exact missing range, and writes nothing.
#[test]
fn a_new_primary_without_the_wal_the_archive_needs_names_the_missing_range() {
    let mut p = PgServer::builder().wal_segsize_mb(1).start();
    p.psql("CREATE TABLE t(i int)");
    let s = p.create_standby();
    s.set_conf_and_reload("wal_keep_size = 0");
    let dir = archive_dir();
    let conninfo = hosts(&[&p, &s], "primary");
    let mut rcv = stream(dir.path(), &conninfo, &[]);
    p.wait_streaming(APP, Some(&mut rcv), STREAMING);
    p.psql("INSERT INTO t SELECT generate_series(1, 1000)");
    p.wait_for_flush(APP, p.current_lsn(), Duration::from_secs(30));
    assert!(rcv.interrupt().success(), "{}", rcv.stderr());
    p.stop();
    s.promote();
    let (segments, _) = classified(dir.path());
    let resume = segments.iter().max().unwrap();
    let needed = walrcv::lsn::wal_file_name(resume.0, resume.1, SEG);
    wait_until(
        Duration::from_secs(60),
        "the new primary to remove the segment the archive needs",
        || {
            for _ in 0..4 {
                s.psql("INSERT INTO t SELECT generate_series(1, 1000); SELECT pg_switch_wal()");
            }
            s.psql("CHECKPOINT");
            s.wal_segment_names()
                .iter()
                .all(|n| n[8..] > needed[8..] && !n.starts_with("00000001"))
        },
    );
    let out = refused_without_writing(dir.path(), &conninfo);
    let err = out.text();
    assert_eq!(out.code(), Some(3), "{err}");
    let from = crate::support::format_lsn(resume.1 * SEG);
    assert!(
        err.contains(&format!("the archive needs WAL from {from} on timeline 1")),
        "{err}"
    );
    // Up to the oldest segment the new primary still has (on timeline 2).
    let oldest = s.wal_segment_names().into_iter().min().unwrap();
    let (tli, oldest_segno) = walrcv::lsn::parse_wal_file_name(&oldest, SEG).unwrap();
    assert_eq!(tli, 2, "{oldest}");
    let to = crate::support::format_lsn(oldest_segno * SEG);
    assert!(
        err.contains(&format!("the WAL from {from} to {to} is missing")),
        "{err}"
    );
}

/// A timeline that the server ends before the WAL it already sent (a
/// cascading standby promoted after it passed on the beginning of a record
/// its upstream never finished): the scripted server sends timeline 1 up to
/// 0/C141DE, then says timeline 2 begins at 0/C10000. walrcv sets the bytes
/// past the switch point aside before following, instead of leaving them in
/// timeline 1's `.partial`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeline_ended_before_the_wal_received_sets_the_tail_aside() {
    use crate::support::fake_walsender::{FakeConfig, FakeWalsender, ServerMsg};
    const SWITCH: u64 = 0xC1_0000;
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/wal/pg15");
    let dir = archive_dir();
    for segno in 8..=0xB {
        let name = walrcv::lsn::wal_file_name(1, segno, SEG);
        std::fs::copy(fixture.join(&name), dir.path().join(&name)).unwrap();
    }
    let old = std::fs::read(fixture.join("00000001000000000000000C.partial")).unwrap();
    let sent = walrcv::archive::divergent::end_of_data(&old);
    let config = FakeConfig {
        timeline: 2,
        xlogpos: 0xC2_0000,
        timeline_history: Some(format!(
            "1\t{}\tno recovery target specified\n",
            crate::support::format_lsn(SWITCH)
        )),
        ..FakeConfig::pg15_fixture()
    };
    let mut fake = FakeWalsender::start(config).await;
    let conninfo = format!("host=127.0.0.1 port={} user=walrcv", fake.port());
    let mut rcv = stream(dir.path(), &conninfo, &["-w"]);
    let mut replication = fake.next_stream(Duration::from_secs(20)).await;
    assert_eq!(
        (replication.start_lsn, replication.timeline),
        (0xC0_0000, Some(1))
    );
    replication
        .send(&[ServerMsg::xlog(0xC0_0000, &old[..sent])])
        .await
        .unwrap();
    replication.end_timeline(2, SWITCH).await.unwrap();
    rcv.wait_for_stderr(
        "the archive's timeline 1 diverges from the server's history at 0/C10000",
        Duration::from_secs(20),
    );
    let err = rcv.stderr();
    assert!(
        err.contains(&format!(
            "from 0/C10000 to {} ({} bytes)",
            crate::support::format_lsn(0xC0_0000 + sent as u64),
            0xC0_0000 + sent as u64 - SWITCH
        )),
        "{err}"
    );
    let all = file_names(dir.path());
    assert!(
        all.contains(&"00000001000000000000000C.partial.divergent.tmp".to_string()),
        "{all:?}"
    );
    assert!(
        !all.contains(&"00000001000000000000000C.partial".to_string()),
        "{all:?}"
    );
    // Kept whole: the WAL received, past the switch point included.
    let kept = std::fs::read(
        dir.path()
            .join("00000001000000000000000C.partial.divergent.tmp"),
    )
    .unwrap();
    assert_eq!(&kept[..sent], &old[..sent]);
    rcv.kill9();
}

/// The old primary comes back as a primary on its old timeline (not rewound,
/// not a standby) after walrcv followed the promoted standby onto timeline 2:
/// its history does not contain timeline 2, so it is refused (exit 3) and
/// nothing is written.
#[test]
fn an_old_primary_back_on_its_old_timeline_is_refused() {
    let mut p = PgServer::builder().wal_segsize_mb(1).start();
    p.psql("CREATE TABLE t(i int)");
    let mut s = p.create_standby();
    let dir = archive_dir();
    let mut rcv = stream(dir.path(), &hosts(&[&p, &s], "primary"), &[]);
    p.wait_streaming(APP, Some(&mut rcv), STREAMING);
    p.stop();
    s.promote();
    s.psql("INSERT INTO t SELECT generate_series(1, 1000)");
    // walrcv follows S.
    s.wait_streaming(APP, Some(&mut rcv), STREAMING);
    s.wait_for_flush(APP, s.current_lsn(), Duration::from_secs(30));
    assert!(rcv.terminate().success(), "{}", rcv.stderr());
    s.stop();
    p.start_again();
    assert_eq!(p.timeline(), 1);
    let out = refused_without_writing(dir.path(), &hosts(&[&p, &s], "primary"));
    assert_eq!(out.code(), Some(3), "{}", out.text());
    assert!(
        out.text()
            .contains("is on timeline 1, whose history does not contain the archive's timeline 2"),
        "{}",
        out.text()
    );
}

/// A standby behind the archive, promoted while walrcv streams from it: the
/// archive's timeline 1 `.partial` was written by the old primary P up to
/// `lost`; after P's crash walrcv reconnects to the standby S (host list
/// `P,S`, `any`), which is still on timeline 1 and has that segment up to an
/// earlier point, and re-streams the segment from its start over the same
/// bytes. S is promoted: its walsender ends timeline 1 at S's end, which is
/// all it ever sent, and P's bytes past it stay in the file.
struct PromotedBehind {
    s: PgServer,
    dir: tempfile::TempDir,
    rcv: BackgroundProcess,
    /// Where P's WAL (received by walrcv only) ended.
    lost: u64,
    /// Where timeline 2 begins.
    switch: u64,
    _p: PgServer,
}

fn a_standby_behind_the_archive_promoted_while_streamed() -> PromotedBehind {
    let mut p = PgServer::builder().wal_segsize_mb(1).start();
    p.psql("CREATE TABLE t(i int, what text)");
    let mut s = p.create_standby();
    let dir = archive_dir();
    let mut rcv = stream(dir.path(), &hosts(&[&p, &s], "any"), &[]);
    p.wait_streaming(APP, Some(&mut rcv), STREAMING);
    p.switch_wal();
    p.psql("INSERT INTO t SELECT g, 'both' FROM generate_series(1, 100) g");
    let both = p.current_lsn();
    p.wait_for_flush("walrcv_test_standby", both, Duration::from_secs(30));
    p.wait_for_flush(APP, both, Duration::from_secs(30));
    s.stop();
    p.psql("INSERT INTO t SELECT g, 'lost' FROM generate_series(1, 300) g");
    let lost = p.current_lsn();
    assert_eq!(
        lost / SEG,
        both / SEG,
        "the lost WAL is in the segment S has begun"
    );
    p.wait_for_flush(APP, lost, Duration::from_secs(30));
    p.stop_immediate();
    s.start_again();
    // S, still a standby on timeline 1.
    s.wait_streaming(APP, Some(&mut rcv), STREAMING);
    s.promote();
    rcv.wait_for_stderr("switched to timeline 2", Duration::from_secs(60));
    s.psql("INSERT INTO t SELECT g, 'new' FROM generate_series(1, 100) g");
    s.wait_for_flush(APP, s.current_lsn(), Duration::from_secs(30));
    let switch = switchpoint(dir.path(), 2, 1);
    assert!(switch < lost, "S was promoted before the lost WAL");
    PromotedBehind {
        s,
        dir,
        rcv,
        lost,
        switch,
        _p: p,
    }
}

/// No file of timeline 1 under a WAL name holds WAL past the switch point,
/// and the divergent file kept holds P's WAL up to `lost`.
fn assert_tail_set_aside(dir: &Path, switch: u64, lost: u64, log: &str) {
    let message = format!(
        "the archive's timeline 1 diverges from the server's history at {}",
        crate::support::format_lsn(switch)
    );
    assert!(log.contains(&message), "{message}\n{log}");
    let (segments, divergent) = classified(dir);
    let first = switch / SEG;
    assert!(
        !segments.iter().any(|f| f.0 == 1 && f.1 >= first),
        "a timeline 1 file still holds WAL past the switch point {}: {segments:?}",
        crate::support::format_lsn(switch)
    );
    assert_eq!(divergent, [(1, first, true)], "{:?}", file_names(dir));
    let aside = format!(
        "{}.partial.divergent.tmp",
        walrcv::lsn::wal_file_name(1, first, SEG)
    );
    let bytes = std::fs::read(dir.join(&aside)).unwrap();
    let data_end = first * SEG + walrcv::archive::divergent::end_of_data(&bytes) as u64;
    assert!(
        data_end + 8192 > lost,
        "{aside}: data to {data_end:X}, the lost WAL to {lost:X}"
    );
}

/// In-session: at the end of timeline 1 walrcv measures the old timeline's
/// file, not only what this stream sent, and sets P's tail aside. (Before:
/// the tail was set aside only when the stream itself had sent WAL past the
/// switch point; P's bytes stayed in timeline 1's `.partial`.)
#[test]
fn a_standby_promoted_while_streamed_sets_the_old_primarys_tail_aside() {
    let PromotedBehind {
        s,
        dir,
        mut rcv,
        lost,
        switch,
        ..
    } = a_standby_behind_the_archive_promoted_while_streamed();
    assert!(rcv.terminate().success(), "{}", rcv.stderr());
    assert_tail_set_aside(dir.path(), switch, lost, &rcv.stderr());
    assert!(
        classified(dir.path()).0.contains(&(2, switch / SEG, true))
            || classified(dir.path()).0.contains(&(2, switch / SEG, false)),
        "timeline 2 has the switch point's segment: {:?}",
        file_names(dir.path())
    );
    drop(s);
}

/// At start: a divergent tail on an older timeline while the archive's newest
/// WAL is on the server's timeline (left by pg_receivewal, or by a walrcv that
/// did not measure the old timeline's file: here the file set aside above,
/// renamed back) is set aside before streaming. (Before: the archive's end was measured only when its timeline
/// was not the server's, and the tail stayed under its WAL name.)
#[test]
fn a_divergent_tail_left_on_an_older_timeline_is_set_aside_before_streaming() {
    let PromotedBehind {
        s,
        dir,
        mut rcv,
        lost,
        switch,
        ..
    } = a_standby_behind_the_archive_promoted_while_streamed();
    assert!(rcv.terminate().success(), "{}", rcv.stderr());
    let name = format!(
        "{}.partial",
        walrcv::lsn::wal_file_name(1, switch / SEG, SEG)
    );
    std::fs::rename(
        dir.path().join(format!("{name}.divergent.tmp")),
        dir.path().join(&name),
    )
    .unwrap();
    let mut again = stream(dir.path(), &hosts(&[&s], "any"), &[]);
    s.wait_streaming(APP, Some(&mut again), STREAMING);
    s.psql("INSERT INTO t SELECT g, 'more' FROM generate_series(1, 100) g");
    s.wait_for_flush(APP, s.current_lsn(), Duration::from_secs(30));
    assert!(again.terminate().success(), "{}", again.stderr());
    let log = again.stderr();
    assert!(
        log.contains("The archive's newest WAL is not concerned"),
        "{log}"
    );
    assert_tail_set_aside(dir.path(), switch, lost, &log);
}

/// Issue 17, the switch segment: after a switchover at S inside segment k,
/// walrcv streams timeline 2 from k's start; killed then, it leaves
/// `00000002...k.partial` with valid WAL ending before S, while timeline 1's
/// copy of k holds the WAL up to S, acknowledged. Recovery with
/// `recovery_target_timeline = latest` asks for timeline 2's file of k
/// first: `walrcv restore` must serve timeline 1's copy up to S (zeros after,
/// as PostgreSQL writes at promotion), not the short `.partial`, so that every
/// commit acknowledged on P comes back. The cut `.partial` is made from a real
/// one by zeroing it from a record boundary before S, as a kill leaves it.
/// The archive of the switch-segment case (shared with the object storage
/// tests, which upload it and recover from the bucket).
pub(crate) struct SwitchCase {
    pub dir: tempfile::TempDir,
    pub backup: crate::support::BaseBackup,
    /// The switch segment's number.
    pub k: u64,
    // The servers stay until the case is dropped (the backup is theirs).
    _servers: (PgServer, PgServer),
}

impl SwitchCase {
    /// Timeline 1's file name of the switch segment.
    pub fn parent(&self) -> String {
        format!(
            "{:08X}{:08X}{:08X}",
            1,
            self.k / (0x1_0000_0000 / SEG),
            self.k % (0x1_0000_0000 / SEG)
        )
    }
}

/// Streams P then S after a switchover at S inside segment k, and cuts
/// timeline 2's `.partial` of k before the switch point.
pub(crate) fn switch_segment_cut_archive(compress: &[&str]) -> SwitchCase {
    let mut p = PgServer::builder().wal_segsize_mb(1).start();
    p.psql("CREATE TABLE t(i int, what text)");
    let s = p.create_standby();
    let backup = p.base_backup();
    let dir = archive_dir();
    let mut args = vec!["--synchronous"];
    args.extend_from_slice(compress);
    let mut rcv = stream(dir.path(), &hosts(&[&p, &s], "primary"), &args);
    p.wait_streaming(APP, Some(&mut rcv), STREAMING);
    p.make_synchronous(APP, Some(&mut rcv), Duration::from_secs(30));
    for i in 1..=20 {
        commit(&p, &rcv, &format!("INSERT INTO t VALUES ({i}, 'on P')"));
    }
    // Segment k starts here: the commits below and the switch point are in it.
    p.psql("SELECT pg_switch_wal()");
    let mut cut = 0;
    for i in 21..=60 {
        commit(&p, &rcv, &format!("INSERT INTO t VALUES ({i}, 'on P')"));
        if i == 25 {
            cut = parse_lsn(&p.psql("SELECT pg_current_wal_insert_lsn()"));
        }
    }
    p.stop();
    s.promote();
    // walrcv follows S.
    s.wait_streaming(APP, Some(&mut rcv), STREAMING);
    let end = s.current_lsn();
    s.wait_for_flush(APP, end, Duration::from_secs(30));
    rcv.terminate();
    let switch = switchpoint(dir.path(), 2, 1);
    let k = switch / SEG;
    assert_eq!(cut / SEG, k, "cut {cut:X} in the switch segment");
    assert!(
        cut < switch,
        "cut {cut:X} before the switch point {switch:X}"
    );
    // Timeline 2's copy of k, cut at `cut` as a kill leaves it.
    let (name, compression) = file_names(dir.path())
        .into_iter()
        .find_map(|n| match ArchiveName::classify(&n) {
            ArchiveName::Segment {
                name,
                compression,
                partial: true,
            } if name.segno(SEG) == Some((2, k)) => Some((n, compression)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no timeline 2 .partial of segment {k}"));
    let path = dir.path().join(&name);
    let stored = std::fs::read(&path).unwrap();
    let mut bytes = walrcv::archive::compression::decompress(compression, &stored, SEG)
        .unwrap()
        .bytes;
    assert!(
        bytes.len() as u64 > switch % SEG,
        "{name} reaches the switch point"
    );
    bytes.truncate((cut % SEG) as usize);
    bytes.resize(SEG as usize, 0);
    let cut_file = if compress.is_empty() {
        bytes
    } else {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&bytes).unwrap();
        gz.finish().unwrap()
    };
    std::fs::write(&path, cut_file).unwrap();
    SwitchCase {
        dir,
        backup,
        k,
        _servers: (p, s),
    }
}

fn switch_segment_cut_before_the_switch_point(compress: &[&str]) {
    let case = switch_segment_cut_archive(compress);
    let parent = case.parent();
    let SwitchCase {
        dir,
        backup,
        _servers,
        ..
    } = case;
    give_to_server_user(dir.path());
    let restored = match backup.start_recovery(&walrcv_recovery_settings(dir.path())) {
        Recovery::Started(server) => server,
        Recovery::Failed { log } => panic!("recovery failed:\n{log}"),
    };
    restored.wait_for_promotion(Duration::from_secs(180));
    let log = restored.full_log();
    assert_eq!(
        count(&restored, "on P"),
        60,
        "every commit acknowledged on P, up to the switch point:\n{log}"
    );
    assert!(log.contains(&format!("serving \"{parent}")), "{log}");
}

#[test]
fn switch_segment_partial_cut_before_the_switch_point_serves_the_parent_up_to_it() {
    switch_segment_cut_before_the_switch_point(&[]);
}

#[test]
fn switch_segment_gzip_partial_cut_before_the_switch_point_serves_the_parent_up_to_it() {
    switch_segment_cut_before_the_switch_point(&["-Z", "gzip"]);
}
