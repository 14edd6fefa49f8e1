//! walrcv as a service: systemd's notification protocol through a fake
//! `NOTIFY_SOCKET` (a unix datagram socket the test binds, as systemd does):
//! `READY=1` once it streams, `WATCHDOG=1` at half of `WATCHDOG_USEC` (also
//! while it waits to reconnect), `STOPPING=1` on SIGTERM, and no ping while
//! the loop is stuck (a slow fdatasync, with failpoints); the
//! `--log-format json` lines; and the units in contrib/ run as systemd runs
//! them, with the connection string and password off the command line.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::support::{
    archive_dir, free_port, wait_until, Auth, BackgroundProcess, PgServer, Walrcv,
    SUPERUSER_PASSWORD,
};

/// The watchdog timeout the tests give walrcv: it must ping every 0.5 s.
const WATCHDOG_USEC: u64 = 1_000_000;
const WATCHDOG: Duration = Duration::from_micros(WATCHDOG_USEC);

/// A fake systemd: the notification socket and every line received on it,
/// with when it arrived.
struct FakeSystemd {
    dir: tempfile::TempDir,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    _reader: JoinHandle<()>,
}

impl FakeSystemd {
    fn bind() -> FakeSystemd {
        let dir = tempfile::Builder::new()
            .prefix("walrcv-notify-")
            .tempdir()
            .unwrap();
        let socket = UnixDatagram::bind(dir.path().join("notify")).unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            // Ends with an error once the directory (and the socket) is gone.
            while let Ok(n) = socket.recv(&mut buf) {
                let at = Instant::now();
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let mut lines = sink.lock().unwrap();
                lines.extend(text.lines().map(|l| (at, l.to_string())));
            }
        });
        FakeSystemd {
            dir,
            lines,
            _reader: reader,
        }
    }

    fn socket_path(&self) -> std::path::PathBuf {
        self.dir.path().join("notify")
    }

    fn lines(&self) -> Vec<(Instant, String)> {
        self.lines.lock().unwrap().clone()
    }

    fn first(&self, line: &str) -> Option<Instant> {
        self.lines()
            .into_iter()
            .find(|(_, l)| l == line)
            .map(|(at, _)| at)
    }

    /// When each `WATCHDOG=1` arrived, from `since` on.
    fn pings_since(&self, since: Instant) -> Vec<Instant> {
        self.lines()
            .into_iter()
            .filter(|(at, l)| l == "WATCHDOG=1" && *at >= since)
            .map(|(at, _)| at)
            .collect()
    }

    fn dump(&self) -> String {
        let lines = self.lines();
        let t0 = lines.first().map(|(at, _)| *at);
        lines
            .iter()
            .map(|(at, l)| {
                format!(
                    "{:>6} ms {l}",
                    t0.map_or(0, |t| at.duration_since(t).as_millis())
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `walrcv stream` under the fake systemd, with a watchdog.
fn spawn_under(
    systemd: &FakeSystemd,
    archive: &Path,
    conninfo: &str,
    extra_env: &[(&str, &str)],
) -> BackgroundProcess {
    Walrcv::new([
        "stream",
        "-v",
        "-D",
        archive.to_str().unwrap(),
        "-d",
        conninfo,
    ])
    .env("NOTIFY_SOCKET", systemd.socket_path())
    .env("WATCHDOG_USEC", WATCHDOG_USEC.to_string())
    .env_remove("WATCHDOG_PID")
    .envs(extra_env.iter().copied())
    .spawn()
}

fn longest_gap(pings: &[Instant]) -> Duration {
    pings
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default()
}

#[test]
fn ready_once_streaming_then_watchdog_pings_and_stopping_on_sigterm() {
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    let dir = archive_dir();
    let systemd = FakeSystemd::bind();
    let mut child = spawn_under(&systemd, dir.path(), &pg.conninfo(), &[]);

    wait_until(Duration::from_secs(20), "READY=1", || {
        systemd.first("READY=1").is_some()
    });
    // READY comes after the server answered START_REPLICATION, and the
    // walsender is registered before it answers.
    assert_eq!(
        pg.psql("SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walrcv'"),
        "1",
        "READY=1 before the stream started:\n{}",
        systemd.dump()
    );
    let ready = systemd.first("READY=1").unwrap();
    assert!(
        systemd
            .lines()
            .iter()
            .any(|(_, l)| l.starts_with("STATUS=streaming from ")),
        "{}",
        systemd.dump()
    );

    // An idle stream still pings: 3 s is at least 5 pings at 0.5 s.
    std::thread::sleep(3 * WATCHDOG);
    let pings = systemd.pings_since(ready);
    assert!(
        pings.len() >= 5,
        "{} pings in 3 s:\n{}",
        pings.len(),
        systemd.dump()
    );
    assert!(
        longest_gap(&pings) < WATCHDOG,
        "a gap of {:?} between pings would have had systemd kill walrcv:\n{}",
        longest_gap(&pings),
        systemd.dump()
    );
    assert_eq!(
        systemd
            .lines()
            .iter()
            .filter(|(_, l)| l == "READY=1")
            .count(),
        1,
        "READY=1 only once"
    );

    let status = child.terminate();
    assert!(status.success(), "SIGTERM exits 0: {}", child.stderr());
    assert!(
        systemd.first("STOPPING=1").is_some(),
        "no STOPPING=1:\n{}",
        systemd.dump()
    );
}

#[test]
fn waiting_to_reconnect_pings_the_watchdog_but_is_not_ready() {
    // Nothing listens there: walrcv retries with backoff, forever.
    let port = free_port();
    let dir = archive_dir();
    let systemd = FakeSystemd::bind();
    let started = Instant::now();
    let mut child = spawn_under(
        &systemd,
        dir.path(),
        &format!("host=127.0.0.1 port={port} user=postgres connect_timeout=2"),
        &[],
    );
    std::thread::sleep(3 * WATCHDOG);
    let pings = systemd.pings_since(started);
    assert!(
        pings.len() >= 5,
        "{} pings in 3 s:\n{}",
        pings.len(),
        systemd.dump()
    );
    assert!(longest_gap(&pings) < WATCHDOG, "{}", systemd.dump());
    assert_eq!(systemd.first("READY=1"), None, "{}", systemd.dump());
    assert!(
        systemd
            .lines()
            .iter()
            .any(|(_, l)| l.starts_with("STATUS=disconnected")),
        "{}",
        systemd.dump()
    );
    assert!(child.terminate().success(), "{}", child.stderr());
}

/// A loop stuck in fdatasync (2.5 s each, through the failpoint's sleep)
/// stops pinging: systemd would restart it.
#[cfg(feature = "failpoints")]
#[test]
fn a_stuck_fdatasync_stops_the_pings() {
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    let dir = archive_dir();
    let systemd = FakeSystemd::bind();
    let mut child = spawn_under(
        &systemd,
        dir.path(),
        &pg.conninfo(),
        &[("FAILPOINTS", "wal-fdatasync=sleep(2500)")],
    );
    wait_until(Duration::from_secs(20), "READY=1", || {
        systemd.first("READY=1").is_some()
    });
    let ready = systemd.first("READY=1").unwrap();
    // Pinging before any WAL comes (every half WATCHDOG_USEC).
    wait_until(Duration::from_secs(20), "pings after READY=1", || {
        systemd.pings_since(ready).len() >= 2
    });
    let issued = Instant::now();
    pg.psql("CREATE TABLE stuck AS SELECT generate_series(1, 1000) AS x");
    // The WAL's fdatasync stops the loop, and with it the pings, for 2.5 s;
    // then they come again. The gap is the one the WAL caused: it ends
    // after the WAL was written, and walrcv is alive and pinging after it
    // (a walrcv that died would leave a gap too).
    let stalled = |pings: &[Instant]| {
        pings
            .windows(2)
            .any(|w| w[1] > issued && w[1].duration_since(w[0]) >= Duration::from_secs(2))
    };
    wait_until(
        Duration::from_secs(60),
        "a pause of >= 2 s in the pings after the WAL, then pings again",
        || {
            assert!(child.is_running(), "walrcv exited:\n{}", child.stderr());
            stalled(&systemd.pings_since(ready))
        },
    );
    let pings = systemd.pings_since(ready);
    assert!(
        longest_gap(&pings) >= Duration::from_secs(2) && stalled(&pings),
        "{}",
        systemd.dump()
    );
    child.kill9();
}

#[test]
fn json_logs_are_one_object_per_line_with_level_and_message() {
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    let dir = archive_dir();
    let mut child = Walrcv::new([
        "stream",
        "-v",
        "--log-format",
        "json",
        "-D",
        dir.path().to_str().unwrap(),
        "-d",
        &pg.conninfo(),
    ])
    .spawn();
    child.wait_for_stderr("starting log streaming", Duration::from_secs(20));
    assert!(child.interrupt().success(), "{}", child.stderr());
    let stderr = child.stderr();
    assert_json_lines(
        &stderr,
        &["starting log streaming at", "received a stop signal"],
    );

    // Errors for the operator too, with WALRCV_LOG_FORMAT (the env file's way).
    let out = Walrcv::new(["stream", "-D", "/nonexistent/walrcv", "-d", &pg.conninfo()])
        .env("WALRCV_LOG_FORMAT", "json")
        .run();
    assert_eq!(out.code(), Some(2));
    let stderr = &out.stderr;
    let objects = assert_json_lines(stderr, &["does not exist"]);
    assert_eq!(objects.last().unwrap()["level"], "ERROR", "{stderr}");

    // Text stays the default, unchanged.
    let out = Walrcv::new(["stream", "-D", "/nonexistent/walrcv", "-d", &pg.conninfo()]).run();
    let stderr = &out.stderr;
    assert!(
        stderr.starts_with("walrcv: error: directory \"/nonexistent/walrcv\""),
        "{stderr}"
    );
}

/// Every line is a JSON object with a timestamp, a level and a message; each
/// of `wanted` is in one of the messages. Returns the objects.
fn assert_json_lines(stderr: &str, wanted: &[&str]) -> Vec<serde_json::Value> {
    let objects: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\n{stderr}"))
        })
        .collect();
    assert!(!objects.is_empty(), "no log lines");
    for o in &objects {
        for field in ["timestamp", "level", "message"] {
            assert!(o[field].is_string(), "no {field} in {o}");
        }
    }
    for w in wanted {
        assert!(
            objects
                .iter()
                .any(|o| o["message"].as_str().unwrap().contains(w)),
            "no message with {w:?}:\n{stderr}"
        );
    }
    objects
}

/// `KEY=value` or `KEY="value"` lines of an environment file, as systemd's
/// `EnvironmentFile=` reads them (comments and blank lines skipped).
fn environment_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

/// A unit's `ExecStart=` command, split at spaces, with `${NAME}` replaced by
/// a variable's value and `$NAME` by its words (systemd's two expansions).
fn exec_start(unit: &str, env: &[(String, String)]) -> Vec<String> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart= line");
    let value = |name: &str| {
        env.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("${name} is not in the environment file"))
    };
    let mut words = Vec::new();
    for word in line.split_whitespace() {
        if let Some(name) = word.strip_prefix('$').filter(|n| !n.starts_with('{')) {
            words.extend(value(name).split_whitespace().map(str::to_string));
        } else {
            let mut word = word.to_string();
            while let Some(start) = word.find("${") {
                let end = start + word[start..].find('}').expect("closing brace");
                word.replace_range(start..=end, &value(&word[start + 2..end]));
            }
            words.push(word);
        }
    }
    words
}

/// The units of contrib/ with the example environment file, run as systemd
/// would (the environment file's variables in the environment, ExecStart's
/// expansions): the connection string and the password never appear in
/// /proc/PID/cmdline (readable by every local user), walrcv streams, and the
/// example recommends verify-full TLS with channel binding.
#[test]
fn the_units_keep_the_connection_string_and_password_off_the_command_line() {
    let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib");
    let example = std::fs::read_to_string(contrib.join("walrcv.env.example")).unwrap();
    let example_env = environment_file(&example);
    let conninfo = &example_env
        .iter()
        .find(|(k, _)| k == "WALRCV_CONNINFO")
        .expect("WALRCV_CONNINFO in the example")
        .1;
    for wanted in ["sslmode=verify-full", "channel_binding=require"] {
        assert!(conninfo.contains(wanted), "{conninfo}");
    }
    assert!(!example.contains("no TLS"), "{example}");
    for unit in ["walrcv.service", "walrcv@.service"] {
        let text = std::fs::read_to_string(contrib.join(unit)).unwrap();
        let line = text.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
        assert!(
            !line.contains("CONNINFO") && !line.contains("--dbname") && !line.contains(" -d"),
            "{unit}: {line}"
        );
    }

    let pg = PgServer::builder().auth(Auth::Scram).start();
    pg.psql("SELECT pg_create_physical_replication_slot('walrcv')");
    let archive = archive_dir();
    // The example, pointed at the test server (no TLS here: the TLS tests
    // cover it), its password in PGPASSWORD.
    let env: Vec<(String, String)> = example_env
        .into_iter()
        .map(|(k, v)| match k.as_str() {
            "WALRCV_CONNINFO" => (
                k,
                format!(
                    "host=127.0.0.1 port={} user=postgres application_name=walrcv",
                    pg.port()
                ),
            ),
            "PGPASSFILE" => (k, "/nonexistent/walrcv-test-pgpass".into()),
            _ => (k, v),
        })
        .chain([("PGPASSWORD".to_string(), SUPERUSER_PASSWORD.to_string())])
        .collect();
    let unit = std::fs::read_to_string(contrib.join("walrcv.service")).unwrap();
    let argv = exec_start(&unit, &env);
    assert_eq!(argv[0], "/usr/bin/walrcv");
    let archive_path = archive.path().to_str().unwrap();
    let mut rcv = Walrcv::new(
        argv[1..]
            .iter()
            .map(|arg| arg.replace("/var/lib/walrcv/archive", archive_path)),
    )
    .envs(env.iter().map(|(k, v)| (k, v)))
    .spawn();
    pg.wait_streaming("walrcv", Some(&mut rcv), Duration::from_secs(30));
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", rcv.pid())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    for secret in [SUPERUSER_PASSWORD, "port="] {
        assert!(!cmdline.contains(secret), "{cmdline}");
    }
    assert!(rcv.terminate().success(), "{}", rcv.stderr());
}
