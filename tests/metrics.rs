//! `walrcv stream --metrics-address` against a real server: /metrics scraped
//! while pgbench writes with walrcv as the synchronous standby.
//!
//! - every scrape parses with a strict OpenMetrics parser (openmetrics-parser,
//!   checked against the OpenMetrics test suite);
//! - `walrcv_flushed_lsn` matches pg_stat_replication's flush_lsn for walrcv:
//!   what the server shows is never ahead of the metric scraped after it, the
//!   server shows the scraped value within one status interval, and both are
//!   equal once the load stops;
//! - counters and histogram counts only grow between two scrapes, and those
//!   the load drives do grow;
//! - a terminated walsender counts one reconnect, with its kind;
//! - every `walrcv_*` name in contrib/grafana-dashboard.json and
//!   contrib/prometheus-alerts.yml exists in a real scrape;
//! - an address already in use is refused at start with exit status 2;
//! - a hostile scraper (a 300 MB request line, 1,000 idle connections) leaves
//!   walrcv's memory, threads and descriptors bounded, scrapes answered and
//!   synchronous commits prompt.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use openmetrics_parser::{MetricsExposition, OpenMetricsType, OpenMetricsValue};

use crate::support::{
    format_lsn, free_port, wait_until, walrcv_run, BackgroundProcess, PgServer, Walrcv,
};

const APP: &str = "walrcv";
/// `--status-interval` of the walrcv under test (seconds).
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// One parsed scrape: every series by its sample name (`_total`, `_count`,
/// `_bucket`... included) and labels, and the names it exposes.
struct Scrape {
    series: BTreeMap<String, f64>,
    names: BTreeSet<String>,
}

impl Scrape {
    /// A series without labels, or with the labels given as `{k="v",...}`.
    fn get(&self, series: &str) -> f64 {
        *self
            .series
            .get(series)
            .unwrap_or_else(|| panic!("no series {series} in the scrape: {:?}", self.series.keys()))
    }

    fn lsn(&self, name: &str) -> u64 {
        // LSNs of a test cluster are far below 2^53: exact in an f64.
        self.get(name) as u64
    }

    /// Counters and histogram counts: what must never go down.
    fn monotonic(&self) -> impl Iterator<Item = (&String, &f64)> {
        self.series
            .iter()
            .filter(|(k, _)| k.contains("_total") || k.contains("_count") || k.contains("_bucket"))
    }
}

fn http_get(address: &str, path: &str) -> String {
    let mut socket = TcpStream::connect(address).expect("connect to the metrics address");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    write!(socket, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").expect("send the request");
    let mut reply = String::new();
    socket.read_to_string(&mut reply).expect("read the reply");
    reply
}

/// `{name="value",...}` with the names sorted, or "" without labels.
fn labels_key<'a>(pairs: impl Iterator<Item = (&'a String, &'a String)>) -> String {
    let mut pairs: Vec<String> = pairs.map(|(n, v)| format!("{n}=\"{v}\"")).collect();
    if pairs.is_empty() {
        return String::new();
    }
    pairs.sort();
    format!("{{{}}}", pairs.join(","))
}

/// Scrapes `/metrics` and parses it with the OpenMetrics parser (a failure to
/// parse fails the test).
fn scrape(address: &str) -> Scrape {
    let reply = http_get(address, "/metrics");
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP reply: {reply}"));
    assert!(head.contains(" 200 "), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    let parsed = openmetrics_parser::openmetrics::parse_openmetrics(body)
        .unwrap_or_else(|e| panic!("the exposition does not parse ({e:?}):\n{body}"));
    flatten(&parsed)
}

fn flatten(parsed: &MetricsExposition<OpenMetricsType, OpenMetricsValue>) -> Scrape {
    let mut series = BTreeMap::new();
    let mut names = BTreeSet::new();
    for (family, metrics) in &parsed.families {
        names.insert(family.clone());
        for sample in metrics.iter_samples() {
            let labelset = sample
                .get_labelset()
                .unwrap_or_else(|e| panic!("{family}: {e:?}"));
            let labels = labels_key(labelset.iter());
            match &sample.value {
                OpenMetricsValue::Gauge(n) | OpenMetricsValue::Unknown(n) => {
                    names.insert(family.clone());
                    series.insert(format!("{family}{labels}"), n.as_f64());
                }
                OpenMetricsValue::Counter(c) => {
                    names.insert(format!("{family}_total"));
                    series.insert(format!("{family}_total{labels}"), c.value.as_f64());
                }
                OpenMetricsValue::Histogram(h) => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{family}{suffix}"));
                    }
                    let count = h.count.unwrap_or_else(|| panic!("{family}: no _count"));
                    series.insert(format!("{family}_count{labels}"), count as f64);
                    let sum = h.sum.as_ref().map_or(f64::NAN, |s| s.as_f64());
                    series.insert(format!("{family}_sum{labels}"), sum);
                    for bucket in &h.buckets {
                        series.insert(
                            format!("{family}_bucket{{le=\"{}\"}}", bucket.upper_bound),
                            bucket.count.as_f64(),
                        );
                    }
                }
                other => panic!("{family}: unexpected metric type {other:?}"),
            }
        }
    }
    Scrape { series, names }
}

/// Every counter and histogram count of `later` is at least that of `earlier`.
fn assert_only_grew(earlier: &Scrape, later: &Scrape) {
    for (name, &before) in earlier.monotonic() {
        let after = later.get(name);
        assert!(after >= before, "{name} went down: {before} -> {after}");
    }
}

/// walrcv with metrics at `address`, streaming into `dir` as the synchronous
/// standby of `pg`.
fn start_synchronous_walrcv(pg: &PgServer, dir: &Path, address: &str) -> BackgroundProcess {
    start_synchronous_walrcv_limited(pg, dir, address, None)
}

/// The same, with its open-file limit (`ulimit -n`) set to `max_files` when given.
fn start_synchronous_walrcv_limited(
    pg: &PgServer,
    dir: &Path,
    address: &str,
    max_files: Option<u64>,
) -> BackgroundProcess {
    let conn = format!("{} application_name={APP}", pg.conninfo());
    let interval = STATUS_INTERVAL.as_secs().to_string();
    let mut cmd = Walrcv::new([
        "stream",
        "-D",
        dir.to_str().expect("utf-8 path"),
        "-d",
        &conn,
        "-s",
        &interval,
        "--metrics-address",
        address,
    ]);
    if let Some(max) = max_files {
        cmd = cmd.max_open_files(max);
    }
    let mut rcv = cmd.spawn();
    pg.make_synchronous(APP, Some(&mut rcv), Duration::from_secs(30));
    rcv
}

/// The flush_lsn the server shows for walrcv (0 before any).
fn server_flush(pg: &PgServer) -> u64 {
    pg.replication_flush_lsn(APP).unwrap_or(0)
}

/// Under pgbench load: the flushed LSN against pg_stat_replication, counters
/// growing, every scrape parsing.
#[test]
fn flushed_lsn_follows_pg_stat_replication_and_counters_grow_under_pgbench() {
    let pg = PgServer::builder().start();
    pg.pgbench_init(1);
    let dir = tempfile::tempdir().expect("archive dir");
    let address = format!("127.0.0.1:{}", free_port());
    let rcv = start_synchronous_walrcv(&pg, dir.path(), &address);

    let first = scrape(&address);
    assert_eq!(first.get("walrcv_connected"), 1.0);
    assert_eq!(
        first.get("walrcv_server_timeline"),
        f64::from(pg.timeline())
    );
    assert!(first.get("walrcv_archive_free_bytes") > 0.0);
    let build = format!(
        "walrcv_build_info{{server_majors=\"13-18\",version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(first.get(&build), 1.0);

    let mut scrapes = 0;
    let mut compared = 0;
    std::thread::scope(|s| {
        let load = s.spawn(|| pg.pgbench(&["-N", "-c", "2", "-T", "8"]));
        let mut previous = first;
        while !load.is_finished() {
            // The server never shows more than walrcv reported before...
            let shown = server_flush(&pg);
            let now = scrape(&address);
            scrapes += 1;
            let flushed = now.lsn("walrcv_flushed_lsn");
            assert!(
                shown <= flushed,
                "pg_stat_replication shows flush {} beyond walrcv_flushed_lsn {} scraped after it",
                format_lsn(shown),
                format_lsn(flushed)
            );
            // ...and shows what it reported: within two status intervals
            // (the wait's bound; the interval itself is the feedback policy's,
            // tested under a controlled clock in src/receiver/feedback.rs, not
            // timed here on a loaded machine).
            let caught_up = pg.wait_for_flush(APP, flushed, STATUS_INTERVAL * 2);
            assert!(
                caught_up >= flushed,
                "server flush {} < scraped {} after two status intervals",
                format_lsn(caught_up),
                format_lsn(flushed)
            );
            compared += 1;
            // Consistency of one scrape.
            let verified = now.lsn("walrcv_verified_lsn");
            let received = now.lsn("walrcv_received_lsn");
            assert!(
                flushed <= verified,
                "flushed {flushed} > verified {verified}"
            );
            // The verified end is MAXALIGNed: the padding after a record
            // may still be on its way.
            let received_aligned = (received + 7) & !7;
            assert!(
                verified <= received_aligned,
                "verified {verified} > received {received} (aligned)"
            );
            assert_only_grew(&previous, &now);
            previous = now;
            std::thread::sleep(Duration::from_millis(250));
        }
        load.join().expect("pgbench thread");
    });
    assert!(compared >= 5, "only {compared} comparisons during the load");

    // Once the load stops, both sides agree exactly.
    let mut last = (0, 0);
    wait_until(
        Duration::from_secs(10),
        "walrcv_flushed_lsn == flush_lsn",
        || {
            last = (
                scrape(&address).lsn("walrcv_flushed_lsn"),
                server_flush(&pg),
            );
            last.0 == last.1 && last.0 > 0
        },
    );
    // A completed segment is counted.
    pg.switch_wal();
    pg.psql("CREATE TABLE after_switch AS SELECT 1 AS x");
    wait_until(Duration::from_secs(20), "a segment to be completed", || {
        scrape(&address).get("walrcv_segments_completed_total") >= 1.0
    });

    let end = scrape(&address);
    for grown in [
        "walrcv_received_bytes_total",
        "walrcv_records_verified_total",
        "walrcv_fdatasync_duration_seconds_count",
        "walrcv_flush_ack_latency_seconds_count",
    ] {
        assert!(end.get(grown) > 0.0, "{grown} did not grow");
    }
    // Thousands of commits, each acknowledged after an fdatasync.
    assert!(end.get("walrcv_flush_ack_latency_seconds_count") >= 100.0);
    assert_eq!(end.get("walrcv_verification_failures_total"), 0.0);
    assert_eq!(end.get("walrcv_reconnects_total"), 0.0);
    assert!(end.lsn("walrcv_server_wal_end_lsn") >= end.lsn("walrcv_flushed_lsn"));
    assert_eq!(
        end.lsn("walrcv_lag_bytes"),
        end.lsn("walrcv_server_wal_end_lsn") - end.lsn("walrcv_flushed_lsn")
    );
    eprintln!(
        "{scrapes} scrapes during the load, {compared} compared with pg_stat_replication, last {} = {}",
        format_lsn(last.0),
        format_lsn(last.1)
    );
    drop(rcv);
}

/// A walsender terminated by the server: one reconnect, its kind marked, and
/// connected again.
#[test]
fn a_terminated_walsender_counts_one_reconnect_with_its_kind() {
    let pg = PgServer::builder().start();
    let dir = tempfile::tempdir().expect("archive dir");
    let address = format!("127.0.0.1:{}", free_port());
    let rcv = start_synchronous_walrcv(&pg, dir.path(), &address);
    let before = scrape(&address);
    assert_eq!(before.get("walrcv_reconnects_total"), 0.0);
    pg.psql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_replication WHERE application_name = '{APP}'"
    ));
    wait_until(Duration::from_secs(30), "a reconnect to be counted", || {
        scrape(&address).get("walrcv_reconnects_total") == 1.0
    });
    wait_until(
        Duration::from_secs(30),
        "walrcv to be connected again",
        || scrape(&address).get("walrcv_connected") == 1.0,
    );
    let after = scrape(&address);
    assert_only_grew(&before, &after);
    let marked: Vec<&String> = after
        .series
        .iter()
        .filter(|(k, &v)| k.starts_with("walrcv_last_disconnect_reason{") && v == 1.0)
        .map(|(k, _)| k)
        .collect();
    // The server's FATAL (57P01 admin shutdown) is a server failure when
    // walrcv reads it, a network one when the closed socket fails first.
    assert_eq!(marked.len(), 1, "{:?}", after.series);
    assert!(
        [
            "walrcv_last_disconnect_reason{kind=\"server\"}",
            "walrcv_last_disconnect_reason{kind=\"network\"}"
        ]
        .contains(&marked[0].as_str()),
        "{marked:?}"
    );
    drop(rcv);
}

/// The `walrcv_*` names that a contrib file mentions.
fn names_mentioned(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("walrcv_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The dashboard and the alert rules use only names a real scrape has.
#[test]
fn every_name_in_the_dashboard_and_alert_rules_is_in_a_real_scrape() {
    let pg = PgServer::builder().start();
    let dir = tempfile::tempdir().expect("archive dir");
    let address = format!("127.0.0.1:{}", free_port());
    let _rcv = start_synchronous_walrcv(&pg, dir.path(), &address);
    let exposed = scrape(&address).names;
    let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib");
    let dashboard_text =
        std::fs::read_to_string(contrib.join("grafana-dashboard.json")).expect("dashboard");
    // The dashboard is JSON, and its queries are where the names are.
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard_text).expect("valid JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 6, "{} panels", panels.len());
    let alerts = std::fs::read_to_string(contrib.join("prometheus-alerts.yml")).expect("alerts");
    for (file, text) in [
        ("grafana-dashboard.json", &dashboard_text),
        ("prometheus-alerts.yml", &alerts),
    ] {
        let used = names_mentioned(text);
        assert!(used.len() >= 5, "{file} names only {used:?}");
        let missing: Vec<&String> = used.difference(&exposed).collect();
        assert!(
            missing.is_empty(),
            "{file} uses {missing:?}, not in a scrape: {exposed:?}"
        );
    }
    // What the issue asks the dashboard and the alerts to cover.
    for needed in [
        "walrcv_lag_bytes",
        "walrcv_flush_ack_latency_seconds_bucket",
        "walrcv_received_bytes_total",
        "walrcv_fdatasync_duration_seconds_bucket",
        "walrcv_reconnects_total",
        "walrcv_archive_free_bytes",
    ] {
        assert!(
            dashboard_text.contains(needed),
            "the dashboard lacks {needed}"
        );
    }
    for needed in [
        "walrcv_connected",
        "walrcv_lag_bytes",
        "walrcv_flush_ack_latency_seconds_bucket",
        "walrcv_archive_free_bytes",
        "walrcv_verification_failures_total",
    ] {
        assert!(alerts.contains(needed), "the alert rules lack {needed}");
    }
}

/// An address already in use: exit status 2 at start, naming it.
#[test]
fn an_address_in_use_is_refused_at_start_with_status_2() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address").to_string();
    let dir = tempfile::tempdir().expect("archive dir");
    // No server is needed: the address is bound before any connection.
    let out = walrcv_run(
        &[
            "stream",
            "-D",
            dir.path().to_str().expect("utf-8 path"),
            "-d",
            "host=127.0.0.1 port=1",
            "--metrics-address",
            &address,
        ],
        Duration::from_secs(30),
    );
    assert_eq!(out.code(), Some(2), "{}", out.text());
    assert!(
        out.text()
            .contains(&format!("could not serve metrics on \"{address}\"")),
        "{}",
        out.text()
    );
}

/// A field of /proc/PID/status as a number (VmRSS in kB, Threads).
fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Raises this process's soft open-file limit to at least `wanted` (the
/// test itself holds 1,000 connections); fails the test if the hard limit
/// does not allow it.
fn raise_open_file_limit(wanted: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit write or read the struct given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < wanted {
            assert!(
                limit.rlim_max >= wanted,
                "ulimit -Hn is {}: this test needs {wanted} open files",
                limit.rlim_max
            );
            limit.rlim_cur = wanted;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
}

/// A hostile scraper while pgbench-like commits wait on walrcv as the
/// synchronous standby, walrcv limited to 1024 open files (systemd's default
/// soft limit): one client sends a 300 MB request line, another opens 1,000
/// connections and sends nothing. walrcv's RSS stays within 64 MB of what it
/// was, it keeps a bounded number of threads and descriptors, every scrape
/// meanwhile is answered, and every commit completes within a second.
#[test]
fn a_hostile_scraper_leaves_memory_threads_and_commits_alone() {
    const IDLE: usize = 1000;
    raise_open_file_limit(IDLE as u64 + 512);
    let pg = PgServer::builder().start();
    pg.psql("CREATE TABLE t (x int)");
    let dir = tempfile::tempdir().expect("archive dir");
    let address = format!("127.0.0.1:{}", free_port());
    let mut rcv = start_synchronous_walrcv_limited(&pg, dir.path(), &address, Some(1024));
    let pid = rcv.pid();
    scrape(&address);
    let rss_before = proc_status(pid, "VmRSS");
    // The same commits without the attack, for the figures.
    let mut slowest_quiet = Duration::ZERO;
    for _ in 0..5 {
        let commit = Instant::now();
        pg.psql("INSERT INTO t VALUES (0)");
        slowest_quiet = slowest_quiet.max(commit.elapsed());
    }

    let idle: Vec<TcpStream> = (0..IDLE)
        .map(|_| TcpStream::connect(&address).expect("connect an idle client"))
        .collect();
    let flood_address = address.clone();
    let flood = std::thread::spawn(move || {
        let mut socket = TcpStream::connect(&flood_address).expect("connect the flood");
        socket
            .set_write_timeout(Some(Duration::from_secs(30)))
            .expect("write timeout");
        let chunk = vec![b'a'; 1 << 20];
        let mut sent = 0usize;
        let _ = socket.write_all(b"GET /");
        for _ in 0..300 {
            match socket.write_all(&chunk) {
                Ok(()) => sent += chunk.len(),
                // Refused and closed by the server: what should happen.
                Err(_) => break,
            }
        }
        sent
    });

    let mut rss_peak = rss_before;
    let mut slowest_commit = Duration::ZERO;
    let mut scrapes = 0;
    let attack = Instant::now();
    while attack.elapsed() < Duration::from_secs(8) || !flood.is_finished() {
        assert!(rcv.is_running(), "walrcv exited:\n{}", rcv.stderr());
        rss_peak = rss_peak.max(proc_status(pid, "VmRSS"));
        let commit = Instant::now();
        pg.psql("INSERT INTO t VALUES (1)");
        slowest_commit = slowest_commit.max(commit.elapsed());
        scrape(&address);
        scrapes += 1;
        assert!(
            attack.elapsed() < Duration::from_secs(120),
            "the flood never ended"
        );
    }
    let flooded = flood.join().expect("the flood thread");
    let threads = proc_status(pid, "Threads");
    let files = open_files(pid);
    eprintln!(
        "RSS {rss_before} kB before, peak {rss_peak} kB; {flooded} bytes of request line sent; \
         {scrapes} scrapes; slowest commit {slowest_commit:?} ({slowest_quiet:?} without \
         the attack); {threads} threads, \
         {files} open files with {IDLE} idle clients"
    );
    assert!(
        rss_peak < rss_before + 64 * 1024,
        "RSS grew from {rss_before} kB to {rss_peak} kB"
    );
    assert!(
        slowest_commit < Duration::from_secs(1),
        "a commit took {slowest_commit:?}"
    );
    assert!(threads <= 16, "{threads} threads");
    assert!(files <= 200, "{files} open files");
    assert_eq!(
        pg.psql("SELECT count(*) FROM t WHERE x = 1"),
        scrapes.to_string()
    );
    drop(idle);
    assert!(rcv.is_running(), "walrcv exited:\n{}", rcv.stderr());
    drop(rcv);
}
