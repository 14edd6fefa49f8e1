//! libpq-compatible connection settings: `key=value` strings and `postgresql://`
//! URIs, the `PG*` environment, and the password file (`~/.pgpass`), combined with
//! pg_receivewal's precedence for `-d`, `-h`, `-p` and `-U`.

use std::path::PathBuf;
use std::time::Duration;

/// Errors in a connection string or in the settings derived from it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnInfoError {
    #[error("invalid connection option \"{0}\"")]
    UnknownKey(String),
    #[error("missing \"=\" after \"{0}\" in connection info string")]
    MissingEquals(String),
    #[error("unterminated quoted string in connection info string")]
    UnterminatedQuote,
    #[error("invalid URI {uri:?}: {what}")]
    BadUri { uri: String, what: String },
    #[error("invalid value for \"{key}\": {value:?} ({what})")]
    BadValue { key: String, value: String, what: String },
    #[error("sslmode \"{0}\" is not yet supported: walrcv cannot use TLS yet; use sslmode=disable or prefer")]
    TlsNotSupported(String),
}

/// TLS policy. Only the modes that may fall back to plain text are usable today.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
}

/// Where to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// TCP to `host` (used for .pgpass matching and messages), connecting to
    /// `hostaddr` when given instead of resolving `host`.
    Tcp { host: String, hostaddr: Option<String>, port: u16 },
    /// Unix-domain socket `dir/.s.PGSQL.port`.
    Unix { dir: PathBuf, port: u16 },
}

/// Fully resolved settings for one connection attempt sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnParams {
    /// Hosts to try in order (libpq's comma-separated host lists).
    pub targets: Vec<Target>,
    pub user: String,
    /// Explicit password (conninfo, PGPASSWORD or prompt); the password file is
    /// consulted per target when this is `None` (see [`ConnParams::password_for`]).
    pub password: Option<String>,
    pub passfile: Option<PathBuf>,
    /// Database name used for `.pgpass` matching (`replication` by default).
    pub dbname: String,
    pub application_name: String,
    /// `options` startup parameter, passed through as is.
    pub options: Option<String>,
    pub connect_timeout: Option<Duration>,
    pub keepalives: bool,
    pub keepalives_idle: Option<Duration>,
    pub keepalives_interval: Option<Duration>,
    pub keepalives_count: Option<u32>,
    pub sslmode: SslMode,
}

/// Values given by command-line flags (`-h`, `-p`, `-U`, a prompted password);
/// they override the same keys in `-d`, as in pg_receivewal.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub dbname: Option<String>,
    pub host: Option<String>,
    pub port: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
}

/// The process environment and home directory, injectable for tests.
pub trait Environment {
    fn var(&self, name: &str) -> Option<String>;
    fn home_dir(&self) -> Option<PathBuf>;
    fn os_user(&self) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn home_dir(&self) -> Option<PathBuf> {
        std::env::var_os("HOME").map(PathBuf::from)
    }
    fn os_user(&self) -> Option<String> {
        todo!("helper A")
    }
}

/// Parses a conninfo string (`key=value ...` or a `postgresql://` URI) into its
/// keyword/value pairs, in order. Unknown keywords are an error naming the key.
pub fn parse(conninfo: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
    let _ = conninfo;
    todo!("helper A")
}

/// Resolves the final settings: `-d` entries, then the flags' overrides, then
/// `PG*` variables for what is still unset, then defaults (Unix socket in
/// `/var/run/postgresql`, port 5432, the OS user, application_name `walrcv`).
pub fn resolve(overrides: &Overrides, env: &dyn Environment) -> Result<ConnParams, ConnInfoError> {
    let _ = (overrides, env);
    todo!("helper A")
}

impl ConnParams {
    /// The password to use for `target`: the explicit one, else a `.pgpass` match
    /// (libpq rules; the file is ignored with a warning when group- or
    /// world-readable).
    pub fn password_for(&self, target: &Target) -> Option<String> {
        let _ = target;
        todo!("helper A")
    }
}
