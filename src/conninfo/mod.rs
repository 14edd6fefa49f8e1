//! libpq-compatible connection settings: `key=value` strings and `postgresql://`
//! URIs, connection services, the `PG*` environment, and the password file
//! (`~/.pgpass`), combined with pg_receivewal's precedence for `-d`, `-h`, `-p`
//! and `-U`.
//!
//! The aim is that any string Barman (or a user) hands to `pg_receivewal --dbname`
//! means the same thing to walrcv, or is refused with an error naming the key,
//! never silently reinterpreted. Four layers are combined by [`resolve`], each
//! only filling what the previous ones left unset (an empty value counts as
//! unset, as it does when pg_receivewal passes its keyword array to libpq):
//!
//! 1. the `-d` string, then the `-h`/`-p`/`-U` flags and a prompted password,
//!    which override the same keys of `-d` (pg_receivewal appends them after the
//!    `-d` entries and libpq keeps the last value);
//! 2. the connection service (`service` or `PGSERVICE`, see `service.rs`);
//! 3. the `PG*` environment variables libpq reads for each keyword;
//! 4. defaults: Unix socket in [`DEFAULT_SOCKET_DIR`], port 5432, the OS user,
//!    `sslmode=prefer` and the TLS files under `~/.postgresql/`.
//!
//! The TLS keywords (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`,
//! `sslpassword`, `sslcrl`, `sslcrldir`, `sslsni`, `ssl_min/max_protocol_version`,
//! `sslnegotiation`, `sslcertmode`, `sslkeylogfile`) resolve into
//! [`TlsSettings`] (`tls.rs`), `channel_binding` and `require_auth` into
//! their own types (`auth.rs`); the transport and the authentication that
//! use them live in `pgwire`. Keywords with no effect on what walrcv does
//! (`sslcompression`, GSSAPI and OAuth details) are accepted and ignored;
//! keywords whose value *demands* something walrcv cannot do
//! (`gssencmode=require`, ...) are errors, because quietly connecting with
//! weaker guarantees than asked for is
//! worse than not connecting. `target_session_attrs` and `load_balance_hosts`
//! resolve into [`TargetSessionAttrs`] and [`LoadBalanceHosts`]; the check of
//! each server against them is `pgwire::session_attrs`'.
//!
//! Module map: `keywords` (the keyword table), `keyvalue` and `uri` (the two
//! string forms), `service` (pg_service.conf), `env` (environment and passwd),
//! `resolve` (layers, validation, targets), `settings` (the combined settings
//! and their origins, which `resolve`, `tls` and `auth` share), `tls` and `auth`
//! (their keywords), `pgpass` (the password file), `flags` (the `-d/-h/-p/-U`
//! flags of the commands that connect).
//!
//! Passwords never appear in errors or log lines: a URI in an error is redacted
//! and a malformed value that follows a password is not echoed.

mod auth;
mod env;
mod flags;
mod keyvalue;
mod keywords;
mod pgpass;
mod resolve;
mod service;
mod settings;
#[cfg(test)]
mod test_support;
mod tls;
mod uri;

pub use env::{Environment, ProcessEnv};
pub use flags::ConnectionArgs;
pub use resolve::resolve;
pub use service::{find_service, ServiceFileError, ServiceSetting, DEFAULT_SYSCONFDIR};

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use keyvalue::parse_key_value;
use uri::{parse_uri, uri_prefix_len};

/// Debian's libpq `DEFAULT_PGSOCKET_DIR`: where the server's Unix socket is when
/// no host is given. `.pgpass` entries for `localhost` match this directory only.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";
/// libpq's `DEF_PGPORT`.
pub const DEFAULT_PORT: u16 = 5432;
/// `application_name` when neither the connection string nor `PGAPPNAME` set one.
pub const DEFAULT_APPLICATION_NAME: &str = "walrcv";
/// The database name pg_receivewal uses for a physical replication connection.
/// The server ignores it, but `.pgpass` lines are matched against it.
pub const REPLICATION_DBNAME: &str = "replication";

/// Errors in a connection string or in the settings derived from it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnInfoError {
    #[error("invalid connection option \"{0}\"")]
    UnknownKey(String),
    #[error("missing \"=\" after \"{0}\" in connection info string")]
    MissingEquals(String),
    #[error("unterminated quoted string in connection info string")]
    UnterminatedQuote,
    /// `uri` is redacted: passwords (user info and secret query parameters) are
    /// replaced by `***`.
    #[error("invalid URI {uri:?}: {what}")]
    BadUri { uri: String, what: String },
    /// A value outside a keyword's fixed set, in libpq's wording
    /// (`invalid target_session_attrs value: "x"`), then walrcv's details.
    #[error("invalid {key} value: \"{value}\" ({what})")]
    InvalidChoice {
        key: String,
        value: String,
        what: String,
    },
    #[error("invalid value for \"{key}\": {value:?} ({what})")]
    BadValue {
        key: String,
        value: String,
        what: String,
    },
    /// A valid libpq setting that asks for something walrcv does not implement.
    #[error("connection option \"{key}\" is not supported: {what}")]
    Unsupported { key: String, what: String },
    /// Text after an unquoted secret (e.g. `password=two words`) is neither a
    /// keyword nor `key=value`; most likely the secret contains a space. The
    /// text is not shown because it is probably part of the secret.
    #[error("unexpected text after the value of \"{key}\" in connection info string (not shown); quote values that contain spaces: {key}='...'")]
    TextAfterSecret { key: String },
    /// No `user` setting and the OS user name could not be determined.
    #[error("could not determine the user name: set user in the connection string, -U or PGUSER")]
    NoUser,
    /// Settings that are valid alone but contradict each other (libpq's
    /// wording, e.g. `weak sslmode "require" may not be used with
    /// sslrootcert=system (use "verify-full")`).
    #[error("{0}")]
    Conflict(String),
    /// `service=NAME` (or `PGSERVICE`) names a service no service file defines.
    #[error("definition of service \"{0}\" not found")]
    ServiceNotFound(String),
    /// A service file could not be read, or the service's section has an
    /// error. Never shows a value from the file (it may hold a password).
    #[error("service file \"{path}\": {what}")]
    ServiceFile { path: String, what: String },
}

/// TLS policy, libpq's `sslmode` (default `prefer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// `sslrootcert`: a PEM file, or `system` (the platform's trust store, which
/// implies `verify-full` as in libpq 16+).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    File(PathBuf),
    System,
}

/// `ssl_min_protocol_version` / `ssl_max_protocol_version`: every version
/// libpq accepts. Whether OpenSSL will then speak TLSv1 or TLSv1.1 depends on
/// its configuration (Debian 12's security level refuses them), for libpq alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls1,
    Tls1_1,
    Tls1_2,
    Tls1_3,
}

/// `sslpassword`: the password of an encrypted client key. Its `Debug` never
/// shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SslPassword(pub String);

impl fmt::Debug for SslPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SslPassword(<redacted>)")
    }
}

/// `sslnegotiation`: `postgres` sends SSLRequest first; `direct` starts the TLS
/// handshake at once with ALPN `postgresql` (servers 17+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslNegotiation {
    Postgres,
    Direct,
}

/// `channel_binding` (SCRAM-SHA-256-PLUS with `tls-server-end-point`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelBinding {
    Disable,
    Prefer,
    Require,
}

/// An authentication method as `require_auth` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Password,
    Md5,
    ScramSha256,
    /// The server sent AuthenticationOk without asking for anything (trust).
    None,
}

/// `require_auth` (libpq 16+): the methods the client accepts, or with `!`
/// the methods it refuses (a list is all negated or none is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequireAuth {
    pub negated: bool,
    pub methods: Vec<AuthMethod>,
}

impl RequireAuth {
    /// Whether the server may authenticate the client with `method`.
    pub fn allows(&self, method: AuthMethod) -> bool {
        self.methods.contains(&method) != self.negated
    }
}

/// Everything the TLS layer (`pgwire`) needs, resolved from the `ssl*`
/// keywords, their `PG*` variables and libpq's defaults under
/// `~/.postgresql/`. Default paths are filled in whether or not the file
/// exists; the TLS layer decides, as libpq does at connect time, whether a
/// missing default file matters (it does for `verify-ca`/`verify-full`'s root
/// certificate, it does not for `require` or the client certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub root_cert: Option<RootCerts>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub crl: Option<PathBuf>,
    /// `sslcrldir`: a directory of CRLs named by `openssl rehash`.
    pub crl_dir: Option<PathBuf>,
    /// `sslpassword`: decrypts an encrypted client key.
    pub key_password: Option<SslPassword>,
    /// `sslcertmode=require`: fail unless the server asked for a client
    /// certificate (libpq 16+).
    pub require_cert_request: bool,
    /// `sslkeylogfile` (libpq 18+): where to append the TLS secrets in the
    /// NSS key log format, for debugging with Wireshark.
    pub key_log_file: Option<PathBuf>,
    /// `sslsni` (default on): send the host name in the TLS handshake.
    pub sni: bool,
    pub min_protocol_version: Option<TlsVersion>,
    pub max_protocol_version: Option<TlsVersion>,
    pub negotiation: SslNegotiation,
}

impl TlsSettings {
    /// What a connection string without any `ssl*` keyword means, without the
    /// default files (used by tests and by callers that build params by hand).
    pub fn prefer() -> Self {
        TlsSettings {
            mode: SslMode::Prefer,
            root_cert: None,
            cert: None,
            key: None,
            crl: None,
            crl_dir: None,
            key_password: None,
            require_cert_request: false,
            key_log_file: None,
            sni: true,
            min_protocol_version: Some(TlsVersion::Tls1_2),
            max_protocol_version: None,
            negotiation: SslNegotiation::Postgres,
        }
    }
}

/// `target_session_attrs` (libpq 14+): which kind of server a connection must
/// reach; hosts that are not of that kind are skipped (libpq's
/// `target_server_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetSessionAttrs {
    /// Any server (the default).
    #[default]
    Any,
    /// A session that accepts writes: not in hot standby, and
    /// `default_transaction_read_only` off.
    ReadWrite,
    /// The opposite of `ReadWrite`.
    ReadOnly,
    /// A server that is not in hot standby (recovery).
    Primary,
    /// A server in hot standby.
    Standby,
    /// A standby if one answers, else any server (a second pass over the hosts).
    PreferStandby,
}

impl TargetSessionAttrs {
    /// Every value, in libpq's order.
    pub const ALL: [TargetSessionAttrs; 6] = [
        TargetSessionAttrs::Any,
        TargetSessionAttrs::ReadWrite,
        TargetSessionAttrs::ReadOnly,
        TargetSessionAttrs::Primary,
        TargetSessionAttrs::Standby,
        TargetSessionAttrs::PreferStandby,
    ];

    /// The keyword value libpq spells.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetSessionAttrs::Any => "any",
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::ReadOnly => "read-only",
            TargetSessionAttrs::Primary => "primary",
            TargetSessionAttrs::Standby => "standby",
            TargetSessionAttrs::PreferStandby => "prefer-standby",
        }
    }

    /// libpq's spelling, exactly (case-sensitive, as `connectOptions2`'s strcmp).
    pub fn from_keyword(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == value)
    }
}

impl fmt::Display for TargetSessionAttrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `load_balance_hosts` (libpq 16+): try the hosts in the order given, or in
/// a random order chosen anew for each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoadBalanceHosts {
    #[default]
    Disable,
    Random,
}

impl LoadBalanceHosts {
    pub fn as_str(self) -> &'static str {
        match self {
            LoadBalanceHosts::Disable => "disable",
            LoadBalanceHosts::Random => "random",
        }
    }

    /// libpq's spelling, exactly (case-sensitive, as `connectOptions2`'s strcmp).
    pub fn from_keyword(value: &str) -> Option<Self> {
        [LoadBalanceHosts::Disable, LoadBalanceHosts::Random]
            .into_iter()
            .find(|l| l.as_str() == value)
    }
}

/// Where to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// TCP to `host` (used for .pgpass matching, messages and the
    /// certificate's name), connecting to `hostaddr` when given instead of
    /// resolving `host`. When only `hostaddr` was given, `host` is empty, as
    /// in libpq: messages and `.pgpass` use the address instead, and
    /// `sslmode=verify-full` has no name to check (libpq refuses then).
    Tcp {
        host: String,
        hostaddr: Option<String>,
        port: u16,
    },
    /// Unix-domain socket `dir/.s.PGSQL.port`.
    Unix { dir: PathBuf, port: u16 },
}

impl Target {
    pub fn port(&self) -> u16 {
        match self {
            Target::Tcp { port, .. } | Target::Unix { port, .. } => *port,
        }
    }

    /// The socket file of a Unix target (`dir/.s.PGSQL.port`, the server's naming).
    pub fn socket_path(&self) -> Option<PathBuf> {
        match self {
            Target::Unix { dir, port } => Some(dir.join(format!(".s.PGSQL.{port}"))),
            Target::Tcp { .. } => None,
        }
    }
}

/// libpq's wording, for "connection to {target} failed: ..." messages:
/// `server at "host" (addr), port N` or `server on socket "path"`.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp {
                host,
                hostaddr,
                port,
            } => {
                let shown = match hostaddr {
                    Some(addr) if host.is_empty() => addr,
                    _ => host,
                };
                write!(f, "server at \"{shown}\"")?;
                if let Some(addr) = hostaddr.as_deref().filter(|a| a != shown) {
                    write!(f, " ({addr})")?;
                }
                write!(f, ", port {port}")
            }
            Target::Unix { dir, port } => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                write!(f, "server on socket \"{}\"", path.display())
            }
        }
    }
}

/// Fully resolved settings for one connection attempt sequence. Its `Debug`
/// shows every field but the password ([`redacted`]).
#[derive(Clone, PartialEq, Eq)]
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
    /// TLS settings (`sslmode` is `tls.mode`).
    pub tls: TlsSettings,
    pub channel_binding: ChannelBinding,
    /// `None` when `require_auth` is not set (every method accepted).
    pub require_auth: Option<RequireAuth>,
    /// `client_encoding` startup parameter (`client_encoding` key or
    /// `PGCLIENTENCODING`); `None` leaves the server default. libpq's `auto`
    /// (derive it from the locale) is treated as `None`.
    pub client_encoding: Option<String>,
    /// Which kind of server to accept among `targets`.
    pub target_session_attrs: TargetSessionAttrs,
    /// Whether to shuffle `targets` before each connection.
    pub load_balance_hosts: LoadBalanceHosts,
}

/// Values given by command-line flags (`-h`, `-p`, `-U`, a prompted password);
/// they override the same keys in `-d`, as in pg_receivewal. Its `Debug`
/// hides the password ([`redacted`]).
#[derive(Clone, Default)]
pub struct Overrides {
    pub dbname: Option<String>,
    pub host: Option<String>,
    pub port: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
}

/// How a `Debug` implementation shows a secret (`password`, `sslpassword`):
/// whether one is set, never its value, so that a `{:?}` in a log line, a
/// panic message or an error chain cannot leak it.
pub fn redacted(secret: &Option<String>) -> Option<&'static str> {
    secret.as_ref().map(|_| "<redacted>")
}

// Written out (not derived) to leave the password out; the destructuring
// makes a new field a compile error here until it is shown or redacted.
impl fmt::Debug for ConnParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ConnParams {
            targets,
            user,
            password,
            passfile,
            dbname,
            application_name,
            options,
            connect_timeout,
            keepalives,
            keepalives_idle,
            keepalives_interval,
            keepalives_count,
            tls,
            channel_binding,
            require_auth,
            client_encoding,
            target_session_attrs,
            load_balance_hosts,
        } = self;
        f.debug_struct("ConnParams")
            .field("targets", targets)
            .field("user", user)
            .field("password", &redacted(password))
            .field("passfile", passfile)
            .field("dbname", dbname)
            .field("application_name", application_name)
            .field("options", options)
            .field("connect_timeout", connect_timeout)
            .field("keepalives", keepalives)
            .field("keepalives_idle", keepalives_idle)
            .field("keepalives_interval", keepalives_interval)
            .field("keepalives_count", keepalives_count)
            .field("tls", tls)
            .field("channel_binding", channel_binding)
            .field("require_auth", require_auth)
            .field("client_encoding", client_encoding)
            .field("target_session_attrs", target_session_attrs)
            .field("load_balance_hosts", load_balance_hosts)
            .finish()
    }
}

impl fmt::Debug for Overrides {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Overrides {
            dbname,
            host,
            port,
            user,
            password,
        } = self;
        f.debug_struct("Overrides")
            .field("dbname", dbname)
            .field("host", host)
            .field("port", port)
            .field("user", user)
            .field("password", &redacted(password))
            .finish()
    }
}

/// Parses a conninfo string (`key=value ...` or a `postgresql://` URI) into its
/// keyword/value pairs, in order. Unknown keywords are an error naming the key.
///
/// Values are not validated here (that is [`resolve`]'s job, once the layers are
/// combined); a key may appear more than once, and the last one wins.
pub fn parse(conninfo: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
    match uri_prefix_len(conninfo) {
        Some(prefix) => parse_uri(conninfo, prefix),
        None => parse_key_value(conninfo),
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    #[test]
    fn target_helpers() {
        let t = unix(DEFAULT_SOCKET_DIR, 5433);
        assert_eq!(t.port(), 5433);
        assert_eq!(
            t.socket_path(),
            Some(PathBuf::from("/var/run/postgresql/.s.PGSQL.5433"))
        );
        assert_eq!(
            t.to_string(),
            "server on socket \"/var/run/postgresql/.s.PGSQL.5433\""
        );
        assert_eq!(tcp("pg", 5432).to_string(), "server at \"pg\", port 5432");
        assert_eq!(tcp("pg", 5432).socket_path(), None);
        let t = Target::Tcp {
            host: "pg".into(),
            hostaddr: Some("10.0.0.1".into()),
            port: 5432,
        };
        assert_eq!(t.to_string(), "server at \"pg\" (10.0.0.1), port 5432");
        let t = Target::Tcp {
            host: String::new(),
            hostaddr: Some("10.0.0.1".into()),
            port: 5432,
        };
        assert_eq!(t.to_string(), "server at \"10.0.0.1\", port 5432");
    }

    /// `{:?}` of the parameters (in a log line, a panic, an error chain)
    /// says a password is set, never what it is.
    #[test]
    fn debug_output_redacts_passwords() {
        let secret = "s3cr3t-Pa55";
        let params = resolve_d(&format!("host=pg user=rep password={secret}")).unwrap();
        assert_eq!(params.password.as_deref(), Some(secret));
        let overrides = Overrides {
            user: Some("rep".into()),
            password: Some(secret.into()),
            ..Overrides::default()
        };
        for shown in [
            format!("{params:?}"),
            format!("{params:#?}"),
            format!("{overrides:?}"),
        ] {
            assert!(!shown.contains(secret), "{shown}");
            assert!(shown.contains("\"<redacted>\""), "{shown}");
        }
        assert!(format!("{params:?}").contains("password: Some(\"<redacted>\")"));
        assert!(format!("{params:?}").contains("user: \"rep\""));
        assert!(format!("{overrides:?}").contains("user: Some(\"rep\")"));
        let none = format!("{:?}", Overrides::default());
        assert!(none.contains("password: None"), "{none}");
    }
}
