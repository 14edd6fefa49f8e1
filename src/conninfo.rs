//! libpq-compatible connection settings: `key=value` strings and `postgresql://`
//! URIs, the `PG*` environment, and the password file (`~/.pgpass`), combined with
//! pg_receivewal's precedence for `-d`, `-h`, `-p` and `-U`.
//!
//! The aim is that any string Barman (or a user) hands to `pg_receivewal --dbname`
//! means the same thing to walrcv, or is refused with an error naming the key,
//! never silently reinterpreted. Three layers are combined by [`resolve`], each
//! only filling what the previous ones left unset (an empty value counts as
//! unset, as it does when pg_receivewal passes its keyword array to libpq):
//!
//! 1. the `-d` string, then the `-h`/`-p`/`-U` flags and a prompted password,
//!    which override the same keys of `-d` (pg_receivewal appends them after the
//!    `-d` entries and libpq keeps the last value);
//! 2. the `PG*` environment variables libpq reads for each keyword;
//! 3. defaults: Unix socket in [`DEFAULT_SOCKET_DIR`], port 5432, the OS user.
//!
//! Keywords whose only effect is on TLS or GSSAPI (not implemented) are accepted
//! and ignored; keywords whose value *demands* something walrcv cannot do
//! (`sslmode=require`, `gssencmode=require`, `service`, ...) are errors, because
//! quietly connecting with weaker guarantees than asked for is worse than not
//! connecting.
//!
//! Passwords never appear in errors or log lines: a URI in an error is redacted
//! and a malformed value that follows a password is not echoed.

use std::collections::BTreeMap;
use std::ffi::{CStr, OsStr};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    #[error("invalid value for \"{key}\": {value:?} ({what})")]
    BadValue {
        key: String,
        value: String,
        what: String,
    },
    #[error("sslmode \"{0}\" is not yet supported: walrcv cannot use TLS yet; use sslmode=disable or prefer")]
    TlsNotSupported(String),
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
}

/// TLS policy, libpq's `sslmode`. Only the modes that may fall back to plain
/// text are usable until TLS lands (issue 9); the rest are refused by `resolve`.
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

/// `ssl_min_protocol_version` / `ssl_max_protocol_version`. libpq also accepts
/// TLSv1 and TLSv1.1, which rustls cannot speak: `resolve` refuses them as a
/// minimum below 1.2 is harmless only as long as 1.2 is what is negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls1_2,
    Tls1_3,
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
            sni: true,
            min_protocol_version: Some(TlsVersion::Tls1_2),
            max_protocol_version: None,
            negotiation: SslNegotiation::Postgres,
        }
    }
}

/// Where to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// TCP to `host` (used for .pgpass matching and messages), connecting to
    /// `hostaddr` when given instead of resolving `host`. When only `hostaddr`
    /// was given, `host` is the address itself (libpq matches `.pgpass` on it).
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
                write!(f, "server at \"{host}\"")?;
                if let Some(addr) = hostaddr.as_deref().filter(|a| a != host) {
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
    /// TLS settings; `tls.mode` is the same as `sslmode` (kept until the TLS
    /// work of issue 9 moves every user to `tls`).
    pub tls: TlsSettings,
    pub channel_binding: ChannelBinding,
    /// `None` when `require_auth` is not set (every method accepted).
    pub require_auth: Option<RequireAuth>,
    /// `client_encoding` startup parameter (`client_encoding` key or
    /// `PGCLIENTENCODING`); `None` leaves the server default. libpq's `auto`
    /// (derive it from the locale) is treated as `None`.
    pub client_encoding: Option<String>,
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

    /// `$HOME`, else the passwd entry's home directory (libpq's
    /// `pqGetHomeDirectory` order).
    fn home_dir(&self) -> Option<PathBuf> {
        match std::env::var_os("HOME") {
            Some(home) if !home.is_empty() => Some(PathBuf::from(home)),
            _ => effective_passwd().and_then(|(_, dir)| dir),
        }
    }

    /// The effective user's name from the passwd database (what libpq uses as
    /// the default user), else `$USER` (e.g. a uid without a passwd entry in a
    /// container).
    fn os_user(&self) -> Option<String> {
        effective_passwd()
            .map(|(name, _)| name)
            .filter(|name| !name.is_empty())
            .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
    }
}

/// The effective user's passwd entry: (name, home directory).
fn effective_passwd() -> Option<(String, Option<PathBuf>)> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let mut buf_len = 1024usize;
    loop {
        let mut buf: Vec<libc::c_char> = vec![0; buf_len];
        // SAFETY: passwd is a plain C struct for which all-zero bytes (null
        // pointers, zero ids) is a valid value; getpwuid_r overwrites it.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for writes for the whole call and
        // buf.len() is the true length of buf.
        let rc =
            unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
        // Entries with very long fields need a bigger buffer; the cap stops a
        // broken NSS module from making us allocate without bound.
        if rc == libc::ERANGE && buf_len < (1 << 20) {
            buf_len *= 2;
            continue;
        }
        if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        // SAFETY: on success pw_name and pw_dir (when non-null) point to
        // NUL-terminated strings inside `buf`, which is still alive here.
        let name = unsafe { CStr::from_ptr(pwd.pw_name) }
            .to_str()
            .ok()?
            .to_owned();
        let dir = if pwd.pw_dir.is_null() {
            None
        } else {
            // SAFETY: as above.
            let bytes = unsafe { CStr::from_ptr(pwd.pw_dir) }.to_bytes();
            (!bytes.is_empty()).then(|| PathBuf::from(OsStr::from_bytes(bytes)))
        };
        return Some((name, dir));
    }
}

/// A libpq connection keyword and the environment variable libpq reads for it.
struct Keyword {
    name: &'static str,
    env: Option<&'static str>,
}

const fn kw(name: &'static str, env: Option<&'static str>) -> Keyword {
    Keyword { name, env }
}

/// Every keyword libpq 18 knows. Anything else is [`ConnInfoError::UnknownKey`],
/// as in libpq. `dbname` deliberately has no `PGDATABASE`: pg_receivewal always
/// sets dbname itself, so libpq never reads `PGDATABASE` for it.
/// `fallback_application_name` is accepted and ignored: pg_receivewal's own
/// fallback replaces it.
const KEYWORDS: &[Keyword] = &[
    kw("host", Some("PGHOST")),
    kw("hostaddr", Some("PGHOSTADDR")),
    kw("port", Some("PGPORT")),
    kw("user", Some("PGUSER")),
    kw("password", Some("PGPASSWORD")),
    kw("passfile", Some("PGPASSFILE")),
    kw("dbname", None),
    kw("application_name", Some("PGAPPNAME")),
    kw("fallback_application_name", None),
    kw("options", Some("PGOPTIONS")),
    kw("client_encoding", Some("PGCLIENTENCODING")),
    kw("connect_timeout", Some("PGCONNECT_TIMEOUT")),
    kw("keepalives", None),
    kw("keepalives_idle", None),
    kw("keepalives_interval", None),
    kw("keepalives_count", None),
    kw("tcp_user_timeout", None),
    kw("replication", None),
    kw("sslmode", Some("PGSSLMODE")),
    kw("sslnegotiation", Some("PGSSLNEGOTIATION")),
    kw("sslcompression", Some("PGSSLCOMPRESSION")),
    kw("sslcert", Some("PGSSLCERT")),
    kw("sslkey", Some("PGSSLKEY")),
    kw("sslcertmode", Some("PGSSLCERTMODE")),
    kw("sslpassword", None),
    kw("sslrootcert", Some("PGSSLROOTCERT")),
    kw("sslcrl", Some("PGSSLCRL")),
    kw("sslcrldir", Some("PGSSLCRLDIR")),
    kw("sslsni", Some("PGSSLSNI")),
    kw("sslkeylogfile", None),
    kw("ssl_min_protocol_version", Some("PGSSLMINPROTOCOLVERSION")),
    kw("ssl_max_protocol_version", Some("PGSSLMAXPROTOCOLVERSION")),
    kw("min_protocol_version", None),
    kw("max_protocol_version", None),
    kw("requirepeer", Some("PGREQUIREPEER")),
    kw("require_auth", Some("PGREQUIREAUTH")),
    kw("channel_binding", Some("PGCHANNELBINDING")),
    kw("gssencmode", Some("PGGSSENCMODE")),
    kw("krbsrvname", Some("PGKRBSRVNAME")),
    kw("gsslib", Some("PGGSSLIB")),
    kw("gssdelegation", Some("PGGSSDELEGATION")),
    kw("target_session_attrs", Some("PGTARGETSESSIONATTRS")),
    kw("load_balance_hosts", Some("PGLOADBALANCEHOSTS")),
    kw("service", Some("PGSERVICE")),
    kw("scram_client_key", None),
    kw("scram_server_key", None),
    kw("oauth_issuer", None),
    kw("oauth_client_id", None),
    kw("oauth_client_secret", None),
    kw("oauth_scope", None),
];

/// Keywords that only matter once TLS or GSSAPI is in use (neither is
/// implemented), or for an authentication method walrcv cannot use; ignoring
/// them changes nothing about the connection walrcv makes.
const IGNORED_KEYWORDS: &[&str] = &[
    "fallback_application_name",
    "sslcompression",
    "sslcert",
    "sslkey",
    "sslcertmode",
    "sslpassword",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "sslkeylogfile",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
    "oauth_issuer",
    "oauth_client_id",
    "oauth_client_secret",
    "oauth_scope",
];

/// Keywords whose values are secrets: never echoed in errors or logs.
const SECRET_KEYWORDS: &[&str] = &[
    "password",
    "sslpassword",
    "oauth_client_secret",
    "scram_client_key",
    "scram_server_key",
];

fn keyword(name: &str) -> Option<&'static Keyword> {
    KEYWORDS.iter().find(|k| k.name == name)
}

fn is_secret(name: &str) -> bool {
    SECRET_KEYWORDS.contains(&name)
}

const URI_PREFIXES: [&str; 2] = ["postgresql://", "postgres://"];

/// Length of the URI scheme designator, as libpq's `uri_prefix_length`
/// (case-sensitive, no leading whitespace).
fn uri_prefix_len(s: &str) -> Option<usize> {
    URI_PREFIXES
        .iter()
        .find(|p| s.starts_with(**p))
        .map(|p| p.len())
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

/// libpq's `isspace` in the C locale (Rust's `is_ascii_whitespace` lacks `\v`).
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

/// libpq's `conninfo_parse`: `key = value` pairs separated by whitespace;
/// values either single-quoted (`\` escapes any character) or running to the
/// next whitespace (`\` escapes there too).
fn parse_key_value(s: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    // Set when the previous value was an unquoted secret: the next token might
    // be the rest of that secret (`password=two words`), so it must not be
    // echoed in an error.
    let mut after_secret: Option<&'static str> = None;
    loop {
        while chars.next_if(|&c| is_space(c)).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|&c| c != '=' && !is_space(c)) {
            key.push(c);
        }
        while chars.next_if(|&c| is_space(c)).is_some() {}
        if chars.next_if_eq(&'=').is_none() {
            return Err(match after_secret {
                Some(secret) => ConnInfoError::TextAfterSecret {
                    key: secret.to_owned(),
                },
                None => ConnInfoError::MissingEquals(key),
            });
        }
        // libpq skips whitespace after '=', so `host= port=5` sets host to
        // "port=5"; kept for compatibility.
        while chars.next_if(|&c| is_space(c)).is_some() {}
        let mut value = String::new();
        let quoted = chars.next_if_eq(&'\'').is_some();
        if quoted {
            loop {
                match chars.next() {
                    None => return Err(ConnInfoError::UnterminatedQuote),
                    Some('\'') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(ConnInfoError::UnterminatedQuote),
                    },
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|&c| !is_space(c)) {
                if c == '\\' {
                    if let Some(escaped) = chars.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        let Some(known) = keyword(&key) else {
            return Err(match after_secret {
                Some(secret) => ConnInfoError::TextAfterSecret {
                    key: secret.to_owned(),
                },
                None => ConnInfoError::UnknownKey(key),
            });
        };
        after_secret = (is_secret(known.name) && !quoted).then_some(known.name);
        out.push((key, value));
    }
    Ok(out)
}

/// libpq's `conninfo_uri_parse_options`:
/// `postgresql://[user[:password]@][host][:port][,...][/dbname][?param=value&...]`.
fn parse_uri(uri: &str, prefix_len: usize) -> Result<Vec<(String, String)>, ConnInfoError> {
    let rest = &uri[prefix_len..];
    let bytes = rest.as_bytes();
    // libpq looks for '@' before the first '/', so an '@' in a query
    // parameter can be mistaken for user info; same here for compatibility.
    let userinfo_end = rest.find(['@', '/']).filter(|&i| bytes[i] == b'@');
    let after_userinfo = userinfo_end.map_or(0, |at| at + 1);
    // A raw '@' after the user info is legitimate only in a query value or an
    // odd database name; more likely a password holds an unencoded '/' or '@'
    // and pieces of it landed in the host, port or query. Errors then hide
    // everything up to the last '@'.
    let stray_at = rest[after_userinfo..].contains('@');
    let bad = |what: String| ConnInfoError::BadUri {
        uri: if stray_at {
            redact_uri_through_last_at(uri, prefix_len)
        } else {
            redact_uri(uri)
        },
        what,
    };
    let decode_part = |part: &str, what: &str| -> Result<String, ConnInfoError> {
        percent_decode(part).map_err(|e| bad(format!("{e} in the {what}")))
    };
    let mut out = Vec::new();
    let mut p = after_userinfo;

    if let Some(at) = userinfo_end {
        let userinfo = &rest[..at];
        let (user, password) = match userinfo.split_once(':') {
            Some((user, password)) => (user, Some(password)),
            None => (userinfo, None),
        };
        if !user.is_empty() {
            out.push(("user".to_owned(), decode_part(user, "user name")?));
        }
        if let Some(password) = password.filter(|p| !p.is_empty()) {
            out.push(("password".to_owned(), decode_part(password, "password")?));
        }
    }

    // No host or port can contain '@', and a database name can write it as
    // %40: an '@' there is a mis-encoded password, refused before libpq's
    // split hands pieces of it to later checks that would echo them.
    let query_start = rest[p..].find('?').map_or(rest.len(), |i| p + i);
    if rest[p..query_start].contains('@') {
        return Err(bad(
            "unexpected \"@\" after the user info; percent-encode \"@\" as %40 and \
             \"/\" as %2F in user names, passwords and database names"
                .to_owned(),
        ));
    }

    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    let mut term;
    loop {
        let host;
        if bytes.get(p) == Some(&b'[') {
            let start = p + 1;
            let close = match rest[start..].find(']') {
                Some(i) => start + i,
                None => return Err(bad(
                    "end of string reached when looking for matching \"]\" in IPv6 host address"
                        .to_owned(),
                )),
            };
            if close == start {
                return Err(bad("IPv6 host address may not be empty".to_owned()));
            }
            host = &rest[start..close];
            p = close + 1;
            if let Some(c) = rest[p..].chars().next() {
                if !matches!(c, ':' | '/' | '?' | ',') {
                    return Err(bad(format!(
                        "unexpected character {c:?} at position {} (expected \":\" or \"/\")",
                        prefix_len + p + 1
                    )));
                }
            }
        } else {
            let start = p;
            while p < bytes.len() && !matches!(bytes[p], b':' | b'/' | b'?' | b',') {
                p += 1;
            }
            host = &rest[start..p];
        }
        hosts.push(decode_part(host, "host")?);
        term = bytes.get(p).copied();
        let mut port = "";
        if term == Some(b':') {
            p += 1;
            let start = p;
            while p < bytes.len() && !matches!(bytes[p], b'/' | b'?' | b',') {
                p += 1;
            }
            port = &rest[start..p];
            term = bytes.get(p).copied();
        }
        let port = decode_part(port, "port")?;
        // libpq checks ports only when connecting; checking here keeps a
        // mis-split password out of a later "invalid port" error.
        if !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("invalid port number: digits only".to_owned()));
        }
        ports.push(port);
        if term != Some(b',') {
            break;
        }
        p += 1;
    }
    // Lists stay aligned: "a:1,b" gives host "a,b" and port "1," (empty = default).
    let hosts = hosts.join(",");
    if !hosts.is_empty() {
        out.push(("host".to_owned(), hosts));
    }
    // libpq would store "," for "a,b"; leaving it out means the same (every
    // host on the default port) and reads better.
    if ports.iter().any(|p| !p.is_empty()) {
        out.push(("port".to_owned(), ports.join(",")));
    }

    if term == Some(b'/') {
        p += 1;
        let start = p;
        while p < bytes.len() && bytes[p] != b'?' {
            p += 1;
        }
        let dbname = &rest[start..p];
        if !dbname.is_empty() {
            out.push(("dbname".to_owned(), decode_part(dbname, "database name")?));
        }
        term = bytes.get(p).copied();
    }

    if term == Some(b'?') {
        // As libpq: a trailing '&' ends the list, but an empty parameter in
        // the middle ("a=1&&b=2") is an error.
        let mut params = &rest[p + 1..];
        while !params.is_empty() {
            let param;
            (param, params) = params.split_once('&').unwrap_or((params, ""));
            let Some((key, value)) = param.split_once('=') else {
                // Named only if it is a keyword: it could be a piece of a
                // mis-encoded password.
                let what = match percent_decode(param).ok().filter(|k| keyword(k).is_some()) {
                    Some(k) => format!("missing key/value separator \"=\" after {k:?}"),
                    None => "missing key/value separator \"=\" in a query parameter".to_owned(),
                };
                return Err(bad(what));
            };
            if value.contains('=') {
                return Err(bad(format!(
                    "extra key/value separator \"=\" in URI query parameter {key:?}"
                )));
            }
            let key = decode_part(key, "query parameter name")?;
            let value = decode_part(value, &format!("value of query parameter {key:?}"))?;
            // JDBC compatibility, as in libpq: ssl=true means sslmode=require.
            let (key, value) = if key == "ssl" && value == "true" {
                ("sslmode".to_owned(), "require".to_owned())
            } else {
                (key, value)
            };
            if keyword(&key).is_none() {
                return Err(ConnInfoError::UnknownKey(key));
            }
            out.push((key, value));
        }
    }
    Ok(out)
}

/// Decodes `%XX` escapes (no `+` for space, as libpq). `%00` is refused because
/// the value ends up in C strings on the server side.
fn percent_decode(s: &str) -> Result<String, &'static str> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
        let (Some(hi), Some(lo)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) else {
            return Err("invalid percent-encoded token");
        };
        let byte = (hi << 4 | lo) as u8;
        if byte == 0 {
            return Err("forbidden value %00 in percent-encoded value");
        }
        out.push(byte);
        i += 3;
    }
    String::from_utf8(out).map_err(|_| "percent-decoded value is not valid UTF-8")
}

/// `uri` with the user-info password and secret query parameters replaced by
/// `***`, for error messages. Uses the same splitting rules as [`parse_uri`] so
/// that whatever the parser would take as a password is what gets hidden.
fn redact_uri(uri: &str) -> String {
    let Some(prefix_len) = uri_prefix_len(uri) else {
        return uri.to_owned();
    };
    let mut out = uri[..prefix_len].to_owned();
    let mut rest = &uri[prefix_len..];
    if let Some(at) = rest
        .find(['@', '/'])
        .filter(|&i| rest.as_bytes()[i] == b'@')
    {
        match rest[..at].split_once(':') {
            Some((user, _)) => {
                out.push_str(user);
                out.push_str(":***");
            }
            None => out.push_str(&rest[..at]),
        }
        out.push('@');
        rest = &rest[at + 1..];
    }
    out.push_str(&redact_query(rest));
    out
}

/// For a URI whose user info cannot be told apart reliably: everything up to
/// the last '@' is hidden.
fn redact_uri_through_last_at(uri: &str, prefix_len: usize) -> String {
    let rest = &uri[prefix_len..];
    match rest.rfind('@') {
        Some(at) => format!("{}***{}", &uri[..prefix_len], redact_query(&rest[at..])),
        None => redact_uri(uri),
    }
}

/// `s` with the values of secret query parameters (after the first '?')
/// replaced by `***`.
fn redact_query(s: &str) -> String {
    let Some(q) = s.find('?') else {
        return s.to_owned();
    };
    let params: Vec<String> = s[q + 1..]
        .split('&')
        .map(|param| match param.split_once('=') {
            // A key that does not decode might be a secret in disguise.
            Some((key, _)) if percent_decode(key).map_or(true, |k| is_secret(&k)) => {
                format!("{key}=***")
            }
            _ => param.to_owned(),
        })
        .collect();
    format!("{}{}", &s[..=q], params.join("&"))
}

/// Where a setting came from, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Conninfo,
    Flag,
    Env(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Conninfo => f.write_str("set in the connection string"),
            Origin::Flag => f.write_str("set by a command-line option"),
            Origin::Env(var) => write!(f, "set by environment variable {var}"),
        }
    }
}

/// The combined settings; the last insert for a key wins. Empty values are
/// kept (a later empty value still hides an earlier one) but read as unset.
#[derive(Default)]
struct Settings {
    values: BTreeMap<&'static str, (String, Origin)>,
}

impl Settings {
    fn set(&mut self, key: &'static str, value: String, origin: Origin) {
        self.values.insert(key, (value, origin));
    }

    fn get(&self, key: &str) -> Option<(&str, Origin)> {
        self.values
            .get(key)
            .filter(|(v, _)| !v.is_empty())
            .map(|(v, o)| (v.as_str(), *o))
    }
}

fn bad_value(key: &str, value: &str, what: impl fmt::Display, origin: Origin) -> ConnInfoError {
    ConnInfoError::BadValue {
        key: key.to_owned(),
        value: value.to_owned(),
        what: format!("{what}; {origin}"),
    }
}

fn unsupported(key: &str, what: impl fmt::Display, origin: Origin) -> ConnInfoError {
    ConnInfoError::Unsupported {
        key: key.to_owned(),
        what: format!("{what} ({origin})"),
    }
}

/// libpq's `parse_int_param`: a decimal `int`, surrounding whitespace allowed.
fn parse_int(key: &str, value: &str, origin: Origin) -> Result<i32, ConnInfoError> {
    value
        .trim_matches(is_space)
        .parse::<i32>()
        .map_err(|_| bad_value(key, value, "must be an integer", origin))
}

/// A number of seconds; zero or negative means "not set" (libpq passes such
/// values to setsockopt, which refuses them; the system default is the useful
/// reading).
fn parse_seconds(
    key: &str,
    value: &str,
    origin: Origin,
) -> Result<Option<Duration>, ConnInfoError> {
    let n = parse_int(key, value, origin)?;
    Ok(u64::try_from(n)
        .ok()
        .filter(|&n| n > 0)
        .map(Duration::from_secs))
}

fn parse_port(value: &str, origin: Origin) -> Result<u16, ConnInfoError> {
    if value.is_empty() {
        // An empty element of a port list means the default, as in libpq.
        return Ok(DEFAULT_PORT);
    }
    parse_int("port", value, origin)
        .ok()
        .and_then(|n| u16::try_from(n).ok())
        .filter(|&n| n >= 1)
        .ok_or_else(|| {
            bad_value(
                "port",
                value,
                "invalid port number: must be from 1 to 65535",
                origin,
            )
        })
}

/// Checks `value` against the values libpq accepts for `key`; `ok` are the
/// ones walrcv honours, `unsupported` the valid ones it cannot.
fn check_choice(
    s: &Settings,
    key: &str,
    ok: &[&str],
    unsupported_values: &[&str],
    why: &str,
) -> Result<(), ConnInfoError> {
    let Some((value, origin)) = s.get(key) else {
        return Ok(());
    };
    if ok.contains(&value) {
        Ok(())
    } else if unsupported_values.contains(&value) {
        Err(unsupported(
            key,
            format_args!("{key}={value}: {why}"),
            origin,
        ))
    } else {
        let valid: Vec<&str> = ok.iter().chain(unsupported_values).copied().collect();
        Err(bad_value(
            key,
            value,
            format_args!("valid values are {}", valid.join(", ")),
            origin,
        ))
    }
}

/// Resolves the final settings: `-d` entries, then the flags' overrides, then
/// `PG*` variables for what is still unset, then defaults (Unix socket in
/// `/var/run/postgresql`, port 5432, the OS user, application_name `walrcv`).
///
/// `dbname` (used only for `.pgpass` matching: the server ignores it for a
/// physical replication connection) is the one `-d` gives, as in pg_receivewal
/// 17+, else `replication`. A `-d` value with no `=` that is not a URI is a
/// database name, as libpq reads `dbname`.
pub fn resolve(overrides: &Overrides, env: &dyn Environment) -> Result<ConnParams, ConnInfoError> {
    let mut s = Settings::default();

    if let Some(d) = overrides.dbname.as_deref().filter(|d| !d.is_empty()) {
        if uri_prefix_len(d).is_some() || d.contains('=') {
            for (key, value) in parse(d)? {
                // parse only returns known keywords; the lookup gives the
                // 'static name the map is keyed by.
                let Some(known) = keyword(&key) else {
                    return Err(ConnInfoError::UnknownKey(key));
                };
                s.set(known.name, value, Origin::Conninfo);
            }
        } else {
            s.set("dbname", d.to_owned(), Origin::Conninfo);
        }
    }

    let flags = [
        ("host", &overrides.host),
        ("port", &overrides.port),
        ("user", &overrides.user),
        ("password", &overrides.password),
    ];
    for (key, value) in flags {
        // pg_receivewal hands libpq a keyword array, which skips empty values.
        if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
            s.set(key, value.to_owned(), Origin::Flag);
        }
    }

    for k in KEYWORDS {
        let Some(var) = k.env else { continue };
        if s.get(k.name).is_none() {
            if let Some(value) = env.var(var).filter(|v| !v.is_empty()) {
                s.set(k.name, value, Origin::Env(var));
            }
        }
    }

    check_unsupported(&s)?;
    let sslmode = resolve_sslmode(&s)?;
    let targets = resolve_targets(&s)?;

    if let Some((value, origin)) = s.get("requirepeer") {
        if targets.iter().any(|t| matches!(t, Target::Unix { .. })) {
            return Err(unsupported(
                "requirepeer",
                format_args!(
                    "walrcv cannot check that the server process runs as {value:?}; \
                     remove requirepeer or connect over TCP"
                ),
                origin,
            ));
        }
        // libpq too ignores requirepeer for TCP connections.
    }

    for key in IGNORED_KEYWORDS {
        if let Some((_, origin)) = s.get(key) {
            // The key only, never the value: sslpassword and
            // oauth_client_secret are secrets.
            tracing::debug!(
                "ignoring connection option \"{key}\" ({origin}): \
                 TLS, GSSAPI and OAuth are not used by walrcv"
            );
        }
    }

    let user = match s.get("user") {
        Some((user, _)) => user.to_owned(),
        None => env
            .os_user()
            .filter(|u| !u.is_empty())
            .ok_or(ConnInfoError::NoUser)?,
    };
    let password = s.get("password").map(|(p, _)| p.to_owned());
    let passfile = match s.get("passfile") {
        Some((path, _)) => Some(PathBuf::from(path)),
        None => env.home_dir().map(|home| home.join(".pgpass")),
    };
    let dbname = s
        .get("dbname")
        .map_or(REPLICATION_DBNAME, |(d, _)| d)
        .to_owned();

    let application_name = s
        .get("application_name")
        .map_or(DEFAULT_APPLICATION_NAME, |(a, _)| a)
        .to_owned();
    if !application_name.bytes().all(|b| (32..=126).contains(&b)) {
        // The server rewrites such bytes (to '?' or \xNN), so a
        // synchronous_standby_names entry written with the original would not match.
        tracing::warn!(
            "application_name {application_name:?} contains characters outside printable ASCII; \
             the server will replace them, so match synchronous_standby_names against the replaced name"
        );
    }

    let options = s.get("options").map(|(o, _)| o.to_owned());

    let client_encoding = match s.get("client_encoding") {
        Some(("auto", origin)) => {
            tracing::debug!("client_encoding=auto ({origin}): using the server's default encoding");
            None
        }
        Some((enc, _)) => Some(enc.to_owned()),
        None => None,
    };

    let connect_timeout = match s.get("connect_timeout") {
        Some((value, origin)) => {
            // libpq: zero or negative waits forever; the minimum is 2 s
            // because a 1 s timer could fire almost at once.
            let n = parse_int("connect_timeout", value, origin)?;
            u64::try_from(n)
                .ok()
                .filter(|&n| n > 0)
                .map(|n| Duration::from_secs(n.max(2)))
        }
        None => None,
    };

    let keepalives = match s.get("keepalives") {
        // libpq: any non-zero integer turns keepalives on.
        Some((value, origin)) => parse_int("keepalives", value, origin)? != 0,
        None => true,
    };
    let keepalives_idle = match s.get("keepalives_idle") {
        Some((value, origin)) => parse_seconds("keepalives_idle", value, origin)?,
        None => None,
    };
    let keepalives_interval = match s.get("keepalives_interval") {
        Some((value, origin)) => parse_seconds("keepalives_interval", value, origin)?,
        None => None,
    };
    let keepalives_count = match s.get("keepalives_count") {
        Some((value, origin)) => u32::try_from(parse_int("keepalives_count", value, origin)?)
            .ok()
            .filter(|&n| n > 0),
        None => None,
    };
    if let Some((value, origin)) = s.get("tcp_user_timeout") {
        parse_int("tcp_user_timeout", value, origin)?;
        tracing::warn!(
            "connection option \"tcp_user_timeout\" ({origin}) is not supported by walrcv \
             and is ignored"
        );
    }

    Ok(ConnParams {
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
        sslmode,
        tls: TlsSettings {
            mode: sslmode,
            ..TlsSettings::prefer()
        },
        channel_binding: ChannelBinding::Prefer,
        require_auth: None,
        client_encoding,
    })
}

/// Refuses settings that ask for something walrcv does not do, so that a
/// connection is never made with weaker guarantees than configured.
fn check_unsupported(s: &Settings) -> Result<(), ConnInfoError> {
    if let Some((value, origin)) = s.get("replication") {
        // The server's parse_bool spellings of "true"; walrcv only ever opens
        // a physical replication connection.
        if !["true", "on", "yes", "1"].contains(&value.to_ascii_lowercase().as_str()) {
            return Err(bad_value(
                "replication",
                value,
                "walrcv always opens a physical replication connection; \
                 use replication=true or leave it out",
                origin,
            ));
        }
    }
    if let Some((value, origin)) = s.get("service") {
        return Err(unsupported(
            "service",
            format_args!(
                "service {value:?}: connection service files (pg_service.conf) are not supported; \
                 put the settings in the connection string"
            ),
            origin,
        ));
    }
    if let Some((_, origin)) = s.get("require_auth") {
        return Err(unsupported(
            "require_auth",
            "walrcv cannot restrict the authentication methods it accepts; remove require_auth",
            origin,
        ));
    }
    for key in ["scram_client_key", "scram_server_key"] {
        if let Some((_, origin)) = s.get(key) {
            // Value not shown: these are secrets.
            return Err(unsupported(
                key,
                "SCRAM pass-through keys are not supported",
                origin,
            ));
        }
    }
    check_choice(
        s,
        "gssencmode",
        &["disable", "prefer"],
        &["require"],
        "GSSAPI encryption is not supported",
    )?;
    check_choice(
        s,
        "channel_binding",
        &["disable", "prefer"],
        &["require"],
        "channel binding needs TLS, which walrcv does not support yet",
    )?;
    check_choice(
        s,
        "target_session_attrs",
        &["any"],
        &[
            "read-write",
            "read-only",
            "primary",
            "standby",
            "prefer-standby",
        ],
        "walrcv does not check the server's role; list only the server to stream from",
    )?;
    check_choice(
        s,
        "load_balance_hosts",
        &["disable"],
        &["random"],
        "walrcv tries hosts in the order given",
    )?;
    check_choice(
        s,
        "sslnegotiation",
        &["postgres"],
        &["direct"],
        "direct TLS negotiation needs TLS, which walrcv does not support yet",
    )?;
    // PG18 protocol version bounds: walrcv speaks protocol 3.0.
    check_choice(
        s,
        "min_protocol_version",
        &["3.0"],
        &["3.2", "latest"],
        "walrcv speaks protocol version 3.0 only",
    )?;
    check_choice(
        s,
        "max_protocol_version",
        &["3.0", "3.2", "latest"],
        &[],
        "",
    )?;
    Ok(())
}

fn resolve_sslmode(s: &Settings) -> Result<SslMode, ConnInfoError> {
    match s.get("sslmode") {
        None => Ok(SslMode::Prefer),
        Some(("disable", _)) => Ok(SslMode::Disable),
        Some(("allow", _)) => Ok(SslMode::Allow),
        Some(("prefer", _)) => Ok(SslMode::Prefer),
        Some((mode @ ("require" | "verify-ca" | "verify-full"), _)) => {
            Err(ConnInfoError::TlsNotSupported(mode.to_owned()))
        }
        Some((value, origin)) => Err(bad_value(
            "sslmode",
            value,
            "valid values are disable, allow, prefer, require, verify-ca, verify-full",
            origin,
        )),
    }
}

/// libpq's host list rules (`connectOptions2`): the number of targets is the
/// number of `hostaddr` entries if any, else of `host` entries, else one; a
/// single port applies to every host; an empty entry means the default.
fn resolve_targets(s: &Settings) -> Result<Vec<Target>, ConnInfoError> {
    let host = s.get("host");
    let hostaddr = s.get("hostaddr");
    let hosts: Vec<&str> = host
        .map(|(h, _)| h.split(',').collect())
        .unwrap_or_default();
    let addrs: Vec<&str> = hostaddr
        .map(|(a, _)| a.split(',').collect())
        .unwrap_or_default();
    let n = if !addrs.is_empty() {
        addrs.len()
    } else {
        hosts.len().max(1)
    };
    if let (Some((addr_value, origin)), false) = (hostaddr, hosts.is_empty()) {
        if hosts.len() != addrs.len() {
            return Err(bad_value(
                "hostaddr",
                addr_value,
                format_args!(
                    "could not match {} host names to {} hostaddr values",
                    hosts.len(),
                    addrs.len()
                ),
                origin,
            ));
        }
    }
    let ports = match s.get("port") {
        None => vec![DEFAULT_PORT; n],
        Some((value, origin)) => {
            let ports = value
                .split(',')
                .map(|p| parse_port(p, origin))
                .collect::<Result<Vec<_>, _>>()?;
            if ports.len() == 1 {
                vec![ports[0]; n]
            } else if ports.len() == n {
                ports
            } else {
                return Err(bad_value(
                    "port",
                    value,
                    format_args!(
                        "could not match {} port numbers to {} hosts",
                        ports.len(),
                        n
                    ),
                    origin,
                ));
            }
        }
    };

    let mut targets = Vec::with_capacity(n);
    for (i, &port) in ports.iter().enumerate() {
        let h = hosts.get(i).copied().unwrap_or("");
        let a = addrs.get(i).copied().unwrap_or("");
        let target = if !a.is_empty() {
            if a.parse::<std::net::IpAddr>().is_err() {
                let origin = hostaddr.map_or(Origin::Conninfo, |(_, o)| o);
                return Err(bad_value(
                    "hostaddr",
                    a,
                    "not a numeric IPv4 or IPv6 address",
                    origin,
                ));
            }
            let host = if h.is_empty() { a } else { h };
            Target::Tcp {
                host: host.to_owned(),
                hostaddr: Some(a.to_owned()),
                port,
            }
        } else if h.is_empty() {
            Target::Unix {
                dir: PathBuf::from(DEFAULT_SOCKET_DIR),
                port,
            }
        } else if h.starts_with('/') {
            Target::Unix {
                dir: PathBuf::from(h),
                port,
            }
        } else if h.starts_with('@') {
            let origin = host.map_or(Origin::Conninfo, |(_, o)| o);
            return Err(bad_value(
                "host",
                h,
                "abstract Unix sockets are not supported; give a socket directory starting with '/'",
                origin,
            ));
        } else {
            Target::Tcp {
                host: h.to_owned(),
                hostaddr: None,
                port,
            }
        };
        targets.push(target);
    }
    Ok(targets)
}

impl ConnParams {
    /// The password to use for `target`: the explicit one, else a `.pgpass` match
    /// (libpq rules; the file is ignored with a warning when group- or
    /// world-readable).
    ///
    /// The host matched is the `host` setting (the `hostaddr` when no host was
    /// given), except that the default socket directory matches `localhost`, as
    /// in libpq; any other socket directory is matched by its path.
    pub fn password_for(&self, target: &Target) -> Option<String> {
        if let Some(password) = &self.password {
            return Some(password.clone());
        }
        let passfile = self.passfile.as_deref()?;
        let (host, port) = match target {
            Target::Tcp { host, port, .. } => (host.clone(), *port),
            Target::Unix { dir, port } => (dir.to_string_lossy().into_owned(), *port),
        };
        let host = if host == DEFAULT_SOCKET_DIR {
            "localhost"
        } else {
            host.as_str()
        };
        password_from_file(passfile, host, &port.to_string(), &self.dbname, &self.user)
    }
}

/// libpq's `passwordFromFile`: the password of the first line
/// `hostname:port:database:username:password` matching all four fields.
fn password_from_file(
    path: &Path,
    host: &str,
    port: &str,
    dbname: &str,
    user: &str,
) -> Option<String> {
    // A missing file is the normal case: no warning.
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        tracing::warn!("password file \"{}\" is not a plain file", path.display());
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "password file \"{}\" has group or world access; permissions should be u=rw (0600) or less",
            path.display()
        );
        return None;
    }
    let data = match std::fs::read(path) {
        Ok(data) => data,
        Err(e) => {
            tracing::debug!("cannot read password file \"{}\": {e}", path.display());
            return None;
        }
    };
    for (n, line) in data.split(|&b| b == b'\n').enumerate() {
        let end = line.iter().rposition(|&b| b != b'\r').map_or(0, |i| i + 1);
        let line = &line[..end];
        if line.is_empty() || line[0] == b'#' {
            continue;
        }
        let Some(rest) = [host, port, dbname, user]
            .iter()
            .try_fold(line, |rest, field| {
                pgpass_match_field(rest, field.as_bytes())
            })
        else {
            continue;
        };
        // First match wins, even if its password is empty (libpq stops too).
        let password = pgpass_unescape_password(rest);
        return match String::from_utf8(password) {
            Ok(p) if p.is_empty() => None,
            Ok(p) => Some(p),
            Err(_) => {
                tracing::warn!(
                    "password file \"{}\" line {}: the password is not valid UTF-8; ignored",
                    path.display(),
                    n + 1
                );
                None
            }
        };
    }
    None
}

/// libpq's `pwdfMatchesString`: if the field at the start of `line` is `*` or
/// equals `token` (with `\` escaping the next byte), the rest of the line after
/// its ':'.
fn pgpass_match_field<'a>(line: &'a [u8], token: &[u8]) -> Option<&'a [u8]> {
    if let Some(rest) = line.strip_prefix(b"*:") {
        return Some(rest);
    }
    let mut i = 0;
    let mut t = 0;
    while i < line.len() {
        let mut escaped = false;
        if line[i] == b'\\' {
            i += 1;
            escaped = true;
            if i == line.len() {
                return None;
            }
        }
        let c = line[i];
        if c == b':' && !escaped && t == token.len() {
            return Some(&line[i + 1..]);
        }
        if t == token.len() || token[t] != c {
            return None;
        }
        i += 1;
        t += 1;
    }
    None
}

/// The password field: up to the first unescaped ':' (later fields are
/// ignored), with `\x` meaning `x`.
fn pgpass_unescape_password(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() && field[i] != b':' {
        if field[i] == b'\\' && i + 1 < field.len() {
            i += 1;
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Write;

    /// An injectable environment: no real `PG*` variable leaks into a test.
    #[derive(Default)]
    struct FakeEnv {
        vars: HashMap<String, String>,
        home: Option<PathBuf>,
        user: Option<String>,
    }

    impl FakeEnv {
        fn new() -> Self {
            FakeEnv {
                user: Some("osuser".to_owned()),
                ..Default::default()
            }
        }
        fn with(mut self, name: &str, value: &str) -> Self {
            self.vars.insert(name.to_owned(), value.to_owned());
            self
        }
    }

    impl Environment for FakeEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.vars.get(name).cloned()
        }
        fn home_dir(&self) -> Option<PathBuf> {
            self.home.clone()
        }
        fn os_user(&self) -> Option<String> {
            self.user.clone()
        }
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn d(conninfo: &str) -> Overrides {
        Overrides {
            dbname: Some(conninfo.to_owned()),
            ..Default::default()
        }
    }

    fn resolve_d(conninfo: &str) -> Result<ConnParams, ConnInfoError> {
        resolve(&d(conninfo), &FakeEnv::new())
    }

    fn unix(dir: &str, port: u16) -> Target {
        Target::Unix {
            dir: PathBuf::from(dir),
            port,
        }
    }

    fn tcp(host: &str, port: u16) -> Target {
        Target::Tcp {
            host: host.to_owned(),
            hostaddr: None,
            port,
        }
    }

    // ---- key=value parsing ----

    #[test]
    fn key_value_basic_and_spaces_around_equals() {
        assert_eq!(
            parse("host=pg  port = 5433\tuser =bob dbname= db").unwrap(),
            pairs(&[
                ("host", "pg"),
                ("port", "5433"),
                ("user", "bob"),
                ("dbname", "db")
            ])
        );
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(parse("   \n ").unwrap(), vec![]);
    }

    #[test]
    fn key_value_quoting_and_escapes() {
        assert_eq!(
            parse(r"password='it\'s a \\secret' options='-c a=b'").unwrap(),
            pairs(&[("password", r"it's a \secret"), ("options", "-c a=b")])
        );
        // Empty values, quoted or at the end.
        assert_eq!(
            parse("user='' host=").unwrap(),
            pairs(&[("user", ""), ("host", "")])
        );
        // Backslash escapes in unquoted values too.
        assert_eq!(parse(r"user=a\ b").unwrap(), pairs(&[("user", "a b")]));
        // A closing quote ends the value even without whitespace after it.
        assert_eq!(
            parse("user='a'host=b").unwrap(),
            pairs(&[("user", "a"), ("host", "b")])
        );
        // Repeated keys are all returned, in order (the last one wins later).
        assert_eq!(
            parse("host=a host=b").unwrap(),
            pairs(&[("host", "a"), ("host", "b")])
        );
        // Non-ASCII is kept as is.
        assert_eq!(
            parse("application_name='réplica 1'").unwrap(),
            pairs(&[("application_name", "réplica 1")])
        );
    }

    #[test]
    fn key_value_errors() {
        assert_eq!(
            parse("host"),
            Err(ConnInfoError::MissingEquals("host".into()))
        );
        assert_eq!(
            parse("host pg"),
            Err(ConnInfoError::MissingEquals("host".into()))
        );
        assert_eq!(parse("user='bob"), Err(ConnInfoError::UnterminatedQuote));
        assert_eq!(parse(r"user='bob\"), Err(ConnInfoError::UnterminatedQuote));
        let err = parse("host=pg colour=blue").unwrap_err();
        assert_eq!(err, ConnInfoError::UnknownKey("colour".into()));
        assert!(err.to_string().contains("\"colour\""), "{err}");
        assert_eq!(parse("=x"), Err(ConnInfoError::UnknownKey("".into())));
    }

    #[test]
    fn text_after_unquoted_password_is_not_echoed() {
        for s in [
            "password=open sesame",
            "password=open sesame=1",
            "user=u password=open sesame host=h",
        ] {
            let err = parse(s).unwrap_err();
            assert_eq!(
                err,
                ConnInfoError::TextAfterSecret {
                    key: "password".into()
                },
                "{s}"
            );
            assert!(!err.to_string().contains("sesame"), "{err}");
        }
        // Quoted, the same text after a password is an ordinary error.
        assert_eq!(
            parse("password='open' sesame"),
            Err(ConnInfoError::MissingEquals("sesame".into()))
        );
    }

    #[test]
    fn all_libpq_keywords_parse() {
        for k in KEYWORDS {
            assert_eq!(
                parse(&format!("{}=x", k.name)).unwrap(),
                pairs(&[(k.name, "x")])
            );
        }
    }

    // ---- URIs ----

    #[test]
    fn uri_full() {
        assert_eq!(
            parse("postgresql://bob:s3cret@db.example.com:5433/mydb?application_name=x&sslmode=disable")
                .unwrap(),
            pairs(&[
                ("user", "bob"),
                ("password", "s3cret"),
                ("host", "db.example.com"),
                ("port", "5433"),
                ("dbname", "mydb"),
                ("application_name", "x"),
                ("sslmode", "disable"),
            ])
        );
        assert_eq!(parse("postgres://h").unwrap(), pairs(&[("host", "h")]));
        assert_eq!(parse("postgresql://").unwrap(), vec![]);
        assert_eq!(
            parse("postgresql:///db").unwrap(),
            pairs(&[("dbname", "db")])
        );
        assert_eq!(parse("postgresql://h/").unwrap(), pairs(&[("host", "h")]));
        assert_eq!(parse("postgresql://h?").unwrap(), pairs(&[("host", "h")]));
        assert_eq!(
            parse("postgresql://bob@h").unwrap(),
            pairs(&[("user", "bob"), ("host", "h")])
        );
        assert_eq!(
            parse("postgresql://:pw@h").unwrap(),
            pairs(&[("password", "pw"), ("host", "h")])
        );
        // A password may contain ':' (only the first one separates).
        assert_eq!(
            parse("postgresql://u:a:b@h").unwrap(),
            pairs(&[("user", "u"), ("password", "a:b"), ("host", "h")])
        );
    }

    #[test]
    fn uri_ipv6_and_host_lists() {
        assert_eq!(
            parse("postgresql://[::1]:5433/db").unwrap(),
            pairs(&[("host", "::1"), ("port", "5433"), ("dbname", "db")])
        );
        assert_eq!(
            parse("postgresql://[2001:db8::7]").unwrap(),
            pairs(&[("host", "2001:db8::7")])
        );
        assert_eq!(
            parse("postgresql://h1:5432,[::1]:5433,h3/db").unwrap(),
            pairs(&[
                ("host", "h1,::1,h3"),
                ("port", "5432,5433,"),
                ("dbname", "db")
            ])
        );
        assert_eq!(
            parse("postgresql://a,b").unwrap(),
            pairs(&[("host", "a,b")])
        );
    }

    #[test]
    fn uri_percent_decoding_and_socket_dir() {
        assert_eq!(
            parse("postgresql://%2Fvar%2Frun%2Fpostgresql/db").unwrap(),
            pairs(&[("host", "/var/run/postgresql"), ("dbname", "db")])
        );
        assert_eq!(
            parse("postgresql://us%40er:p%3Aw%2fd@h/my%20db?options=-c%20x%3D1").unwrap(),
            pairs(&[
                ("user", "us@er"),
                ("password", "p:w/d"),
                ("host", "h"),
                ("dbname", "my db"),
                ("options", "-c x=1"),
            ])
        );
        // Socket directory as a query parameter too.
        assert_eq!(
            parse("postgresql:///db?host=/tmp&port=5999").unwrap(),
            pairs(&[("dbname", "db"), ("host", "/tmp"), ("port", "5999")])
        );
        // '+' is not a space in libpq URIs.
        assert_eq!(
            parse("postgresql:///a+b").unwrap(),
            pairs(&[("dbname", "a+b")])
        );
    }

    #[test]
    fn uri_params() {
        assert_eq!(
            parse("postgresql://h?ssl=true").unwrap(),
            pairs(&[("host", "h"), ("sslmode", "require")])
        );
        assert_eq!(
            parse("postgresql://h?ssl=false"),
            Err(ConnInfoError::UnknownKey("ssl".into()))
        );
        let err = parse("postgresql://h?colour=blue").unwrap_err();
        assert_eq!(err, ConnInfoError::UnknownKey("colour".into()));
        assert!(err.to_string().contains("colour"));
        // Trailing '&' is fine; an empty parameter in the middle is not.
        assert_eq!(
            parse("postgresql://h?port=1&").unwrap(),
            pairs(&[("host", "h"), ("port", "1")])
        );
        assert!(matches!(
            parse("postgresql://h?port=1&&user=u"),
            Err(ConnInfoError::BadUri { .. })
        ));
        assert!(matches!(
            parse("postgresql://h?port"),
            Err(ConnInfoError::BadUri { .. })
        ));
        assert!(matches!(
            parse("postgresql://h?port=1=2"),
            Err(ConnInfoError::BadUri { .. })
        ));
    }

    #[test]
    fn uri_errors() {
        for bad in [
            "postgresql://[::1",
            "postgresql://[]/db",
            "postgresql://[::1]x/db",
            "postgresql://h/db%2",
            "postgresql://h/db%zz",
            "postgresql://h/db%00",
            "postgresql://h/db%ff",
        ] {
            assert!(
                matches!(parse(bad), Err(ConnInfoError::BadUri { .. })),
                "{bad}"
            );
        }
        let err = parse("postgresql://[::1]x").unwrap_err();
        assert!(err.to_string().contains("position 19"), "{err}");
    }

    #[test]
    fn bad_uri_error_redacts_passwords() {
        let err = parse("postgresql://bob:hunter2@[::1/db").unwrap_err();
        let msg = err.to_string();
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(msg.contains("bob:***@"), "{msg}");

        let err = parse("postgresql://h/db?password=hunter2&port=1&x=%zz").unwrap_err();
        let msg = err.to_string();
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(msg.contains("password=***"), "{msg}");

        // Encoded key names and bad escapes in the password itself.
        let err = parse("postgresql://u:hunter2%zz@h").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = parse("postgresql://h?pass%77ord=hunter2&[").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn unencoded_slash_or_at_in_password_is_refused_without_echo() {
        for uri in [
            "postgresql://u:qx/zz99@h/db",
            "postgresql://u:qx@zz99@h/db",
            "postgresql://u:q?x/zz99@h",
            "postgresql://h/db@x?password=zz99",
            "postgresql://u:q?x=1/zz99@h",
            "postgresql://u:1?x/zz99@h",
        ] {
            let err = parse(uri).unwrap_err();
            assert!(matches!(err, ConnInfoError::BadUri { .. }), "{uri}");
            let msg = err.to_string();
            assert!(
                !msg.contains("zz99") && !msg.contains("qx") && !msg.contains("q?x"),
                "{uri}: {msg}"
            );
        }
        // A '?' alone in a password is fine: the '@' comes before any '/'.
        assert_eq!(
            parse("postgresql://u:qx?zz99@h").unwrap(),
            pairs(&[("user", "u"), ("password", "qx?zz99"), ("host", "h")])
        );
        // '@' in a query value is legitimate (e.g. Azure-style user names).
        assert_eq!(
            parse("postgresql://h/db?user=me@corp").unwrap(),
            pairs(&[("host", "h"), ("dbname", "db"), ("user", "me@corp")])
        );
        // Encoded, they are fine.
        assert_eq!(
            parse("postgresql://u:pa%2Fs%40s@h/d%40b").unwrap(),
            pairs(&[
                ("user", "u"),
                ("password", "pa/s@s"),
                ("host", "h"),
                ("dbname", "d@b")
            ])
        );
    }

    // ---- resolve: precedence ----

    #[test]
    fn defaults() {
        let p = resolve(&Overrides::default(), &FakeEnv::new()).unwrap();
        assert_eq!(
            p,
            ConnParams {
                targets: vec![unix(DEFAULT_SOCKET_DIR, 5432)],
                user: "osuser".into(),
                password: None,
                passfile: None,
                dbname: "replication".into(),
                application_name: "walrcv".into(),
                options: None,
                connect_timeout: None,
                keepalives: true,
                keepalives_idle: None,
                keepalives_interval: None,
                keepalives_count: None,
                sslmode: SslMode::Prefer,
                tls: crate::conninfo::TlsSettings {
                    mode: SslMode::Prefer,
                    ..crate::conninfo::TlsSettings::prefer()
                },
                channel_binding: crate::conninfo::ChannelBinding::Prefer,
                require_auth: None,
                client_encoding: None,
            }
        );
        let env = FakeEnv {
            home: Some("/home/me".into()),
            ..FakeEnv::new()
        };
        let p = resolve(&Overrides::default(), &env).unwrap();
        assert_eq!(p.passfile, Some(PathBuf::from("/home/me/.pgpass")));
    }

    #[test]
    fn no_user_anywhere_is_an_error() {
        let env = FakeEnv::default();
        assert_eq!(
            resolve(&Overrides::default(), &env),
            Err(ConnInfoError::NoUser)
        );
        assert_eq!(resolve(&d("user=u"), &env).unwrap().user, "u");
    }

    #[test]
    fn barman_conninfo() {
        let s = "application_name=barman_receive_wal dbname=replication host=pg \
                 options=-cdatestyle=iso replication=true user=streaming_barman";
        let p = resolve_d(s).unwrap();
        assert_eq!(p.targets, vec![tcp("pg", 5432)]);
        assert_eq!(p.user, "streaming_barman");
        assert_eq!(p.application_name, "barman_receive_wal");
        assert_eq!(p.options.as_deref(), Some("-cdatestyle=iso"));
        assert_eq!(p.dbname, "replication");
        assert_eq!(p.password, None);
        assert_eq!(p.sslmode, SslMode::Prefer);
    }

    #[test]
    fn flags_override_conninfo() {
        let o = Overrides {
            dbname: Some("host=dhost port=1111 user=duser password=dpw".into()),
            host: Some("fhost".into()),
            port: Some("2222".into()),
            user: Some("fuser".into()),
            password: Some("fpw".into()),
        };
        let env = FakeEnv::new()
            .with("PGHOST", "ehost")
            .with("PGPASSWORD", "epw");
        let p = resolve(&o, &env).unwrap();
        assert_eq!(p.targets, vec![tcp("fhost", 2222)]);
        assert_eq!(p.user, "fuser");
        assert_eq!(p.password.as_deref(), Some("fpw"));

        // Empty flags are ignored, as libpq skips empty keyword values.
        let o = Overrides {
            dbname: Some("host=dhost".into()),
            host: Some(String::new()),
            ..Default::default()
        };
        assert_eq!(
            resolve(&o, &FakeEnv::new()).unwrap().targets,
            vec![tcp("dhost", 5432)]
        );
    }

    #[test]
    fn conninfo_overrides_env_and_env_overrides_defaults() {
        let env = FakeEnv::new()
            .with("PGHOST", "ehost")
            .with("PGPORT", "3333")
            .with("PGUSER", "euser")
            .with("PGPASSWORD", "epw")
            .with("PGAPPNAME", "eapp")
            .with("PGCONNECT_TIMEOUT", "7")
            .with("PGSSLMODE", "disable")
            .with("PGPASSFILE", "/e/pgpass")
            .with("PGOPTIONS", "-c x=1")
            .with("PGDATABASE", "edb");
        let p = resolve(&Overrides::default(), &env).unwrap();
        assert_eq!(p.targets, vec![tcp("ehost", 3333)]);
        assert_eq!(p.user, "euser");
        assert_eq!(p.password.as_deref(), Some("epw"));
        assert_eq!(p.application_name, "eapp");
        assert_eq!(p.connect_timeout, Some(Duration::from_secs(7)));
        assert_eq!(p.sslmode, SslMode::Disable);
        assert_eq!(p.passfile, Some(PathBuf::from("/e/pgpass")));
        assert_eq!(p.options.as_deref(), Some("-c x=1"));
        // PGDATABASE is never used: pg_receivewal always sets dbname.
        assert_eq!(p.dbname, "replication");

        let p = resolve(
            &d("host=dhost port=4444 user=duser password=dpw application_name=dapp sslmode=allow passfile=/d/pgpass"),
            &env,
        )
        .unwrap();
        assert_eq!(p.targets, vec![tcp("dhost", 4444)]);
        assert_eq!(p.user, "duser");
        assert_eq!(p.password.as_deref(), Some("dpw"));
        assert_eq!(p.application_name, "dapp");
        assert_eq!(p.sslmode, SslMode::Allow);
        assert_eq!(p.passfile, Some(PathBuf::from("/d/pgpass")));

        // An empty value in -d counts as unset: the environment fills it.
        let p = resolve(&d("host='' user="), &env).unwrap();
        assert_eq!(p.targets, vec![tcp("ehost", 3333)]);
        assert_eq!(p.user, "euser");
        // Empty environment variables are unset too.
        let p = resolve(&Overrides::default(), &FakeEnv::new().with("PGHOST", "")).unwrap();
        assert_eq!(p.targets, vec![unix(DEFAULT_SOCKET_DIR, 5432)]);
    }

    #[test]
    fn last_repeated_key_wins() {
        let p = resolve_d("host=a port=1 host=b").unwrap();
        assert_eq!(p.targets, vec![tcp("b", 1)]);
    }

    #[test]
    fn dbname_forms() {
        assert_eq!(resolve_d("mydb").unwrap().dbname, "mydb");
        assert_eq!(resolve_d("dbname=x host=h").unwrap().dbname, "x");
        assert_eq!(resolve_d("host=h").unwrap().dbname, "replication");
        assert_eq!(resolve_d("postgresql://h/urldb").unwrap().dbname, "urldb");
        assert_eq!(resolve_d("").unwrap().dbname, "replication");
    }

    #[test]
    fn uri_resolves() {
        let p = resolve_d("postgresql://u:pw@h1:5433,[::1]/db?application_name=a").unwrap();
        assert_eq!(p.targets, vec![tcp("h1", 5433), tcp("::1", 5432)]);
        assert_eq!(p.user, "u");
        assert_eq!(p.password.as_deref(), Some("pw"));
        assert_eq!(p.application_name, "a");
        let p = resolve_d("postgresql://%2Fvar%2Frun%2Fpostgresql:5444/db").unwrap();
        assert_eq!(p.targets, vec![unix("/var/run/postgresql", 5444)]);
        assert_eq!(
            resolve_d("postgresql://h?ssl=true"),
            Err(ConnInfoError::TlsNotSupported("require".into()))
        );
    }

    #[test]
    fn application_name_fallbacks() {
        // fallback_application_name is replaced by walrcv's own fallback.
        let p = resolve_d("fallback_application_name=other").unwrap();
        assert_eq!(p.application_name, "walrcv");
        let env = FakeEnv::new().with("PGAPPNAME", "fromenv");
        assert_eq!(
            resolve(&d("fallback_application_name=x"), &env)
                .unwrap()
                .application_name,
            "fromenv"
        );
        assert_eq!(
            resolve(&d("application_name=mine"), &env)
                .unwrap()
                .application_name,
            "mine"
        );
    }

    // ---- resolve: values ----

    #[test]
    fn sslmode_policy() {
        assert_eq!(
            resolve_d("sslmode=disable").unwrap().sslmode,
            SslMode::Disable
        );
        assert_eq!(resolve_d("sslmode=allow").unwrap().sslmode, SslMode::Allow);
        assert_eq!(
            resolve_d("sslmode=prefer").unwrap().sslmode,
            SslMode::Prefer
        );
        assert_eq!(resolve_d("").unwrap().sslmode, SslMode::Prefer);
        for mode in ["require", "verify-ca", "verify-full"] {
            assert_eq!(
                resolve_d(&format!("sslmode={mode}")),
                Err(ConnInfoError::TlsNotSupported(mode.into()))
            );
        }
        let err = resolve_d("sslmode=bogus").unwrap_err();
        assert!(
            matches!(&err, ConnInfoError::BadValue { key, value, .. } if key == "sslmode" && value == "bogus")
        );
        let env = FakeEnv::new().with("PGSSLMODE", "verify-full");
        assert_eq!(
            resolve(&Overrides::default(), &env),
            Err(ConnInfoError::TlsNotSupported("verify-full".into()))
        );
        // The connection string beats the environment.
        assert_eq!(
            resolve(&d("sslmode=disable"), &env).unwrap().sslmode,
            SslMode::Disable
        );
    }

    #[test]
    fn replication_key() {
        for v in ["true", "on", "yes", "1", "TRUE", "On"] {
            assert!(resolve_d(&format!("replication={v}")).is_ok(), "{v}");
        }
        for v in ["false", "0", "database", "off", "maybe"] {
            let err = resolve_d(&format!("replication={v}")).unwrap_err();
            assert!(
                matches!(&err, ConnInfoError::BadValue { key, .. } if key == "replication"),
                "{v}"
            );
            assert!(err.to_string().contains("physical replication"), "{err}");
        }
    }

    #[test]
    fn host_lists() {
        let p = resolve_d("host=a,b port=5433").unwrap();
        assert_eq!(p.targets, vec![tcp("a", 5433), tcp("b", 5433)]);
        let p = resolve_d("host=a,/tmp,b port=1,2,3").unwrap();
        assert_eq!(p.targets, vec![tcp("a", 1), unix("/tmp", 2), tcp("b", 3)]);
        // Empty entries mean the default host and port.
        let p = resolve_d("host=a,,b port=1,,3").unwrap();
        assert_eq!(
            p.targets,
            vec![tcp("a", 1), unix(DEFAULT_SOCKET_DIR, 5432), tcp("b", 3)]
        );
        // A port list without hosts: must match the single default host.
        let err = resolve_d("host=a,b,c port=1,2").unwrap_err();
        assert!(matches!(&err, ConnInfoError::BadValue { key, .. } if key == "port"));
        assert!(
            err.to_string()
                .contains("could not match 2 port numbers to 3 hosts"),
            "{err}"
        );
        assert!(resolve_d("port=1,2").is_err());
    }

    #[test]
    fn hostaddr() {
        let p = resolve_d("host=db.example hostaddr=10.0.0.1 port=5433").unwrap();
        assert_eq!(
            p.targets,
            vec![Target::Tcp {
                host: "db.example".into(),
                hostaddr: Some("10.0.0.1".into()),
                port: 5433
            }]
        );
        // hostaddr alone: the address stands in for the host name.
        let p = resolve_d("hostaddr=10.0.0.1,::1").unwrap();
        assert_eq!(
            p.targets,
            vec![
                Target::Tcp {
                    host: "10.0.0.1".into(),
                    hostaddr: Some("10.0.0.1".into()),
                    port: 5432
                },
                Target::Tcp {
                    host: "::1".into(),
                    hostaddr: Some("::1".into()),
                    port: 5432
                },
            ]
        );
        // Mixed: an empty hostaddr entry falls back to the host entry.
        let p = resolve_d("host=a,b hostaddr=10.0.0.1,").unwrap();
        assert_eq!(
            p.targets,
            vec![
                Target::Tcp {
                    host: "a".into(),
                    hostaddr: Some("10.0.0.1".into()),
                    port: 5432
                },
                tcp("b", 5432),
            ]
        );
        let err = resolve_d("host=a,b,c hostaddr=10.0.0.1,10.0.0.2").unwrap_err();
        assert!(
            err.to_string()
                .contains("could not match 3 host names to 2 hostaddr values"),
            "{err}"
        );
        let err = resolve_d("hostaddr=db.example").unwrap_err();
        assert!(matches!(&err, ConnInfoError::BadValue { key, .. } if key == "hostaddr"));
        let env = FakeEnv::new().with("PGHOSTADDR", "10.1.1.1");
        assert_eq!(
            resolve(&d("host=h"), &env).unwrap().targets,
            vec![Target::Tcp {
                host: "h".into(),
                hostaddr: Some("10.1.1.1".into()),
                port: 5432
            }]
        );
    }

    #[test]
    fn socket_hosts() {
        assert_eq!(
            resolve_d("host=/tmp port=5999").unwrap().targets,
            vec![unix("/tmp", 5999)]
        );
        let err = resolve_d("host=@abstract").unwrap_err();
        assert!(matches!(&err, ConnInfoError::BadValue { key, .. } if key == "host"));
        assert!(err.to_string().contains("abstract"), "{err}");
    }

    #[test]
    fn port_validation() {
        assert_eq!(
            resolve_d("port=' 5433 '").unwrap().targets,
            vec![unix(DEFAULT_SOCKET_DIR, 5433)]
        );
        assert_eq!(
            resolve_d("port=65535").unwrap().targets,
            vec![unix(DEFAULT_SOCKET_DIR, 65535)]
        );
        for bad in ["0", "65536", "-1", "abc", "5432x", "99999999999"] {
            let err = resolve_d(&format!("port={bad}")).unwrap_err();
            assert!(
                matches!(&err, ConnInfoError::BadValue { key, value, .. } if key == "port" && value == bad),
                "{bad}: {err:?}"
            );
        }
        let o = Overrides {
            port: Some("x".into()),
            ..Default::default()
        };
        let err = resolve(&o, &FakeEnv::new()).unwrap_err();
        assert!(err.to_string().contains("command-line"), "{err}");
        let err = resolve(&Overrides::default(), &FakeEnv::new().with("PGPORT", "x")).unwrap_err();
        assert!(err.to_string().contains("PGPORT"), "{err}");
    }

    #[test]
    fn timeouts_and_keepalives() {
        let t = |s: &str| resolve_d(s).map(|p| p.connect_timeout);
        assert_eq!(t("connect_timeout=10"), Ok(Some(Duration::from_secs(10))));
        assert_eq!(t("connect_timeout=1"), Ok(Some(Duration::from_secs(2))));
        assert_eq!(t("connect_timeout=0"), Ok(None));
        assert_eq!(t("connect_timeout=-5"), Ok(None));
        assert!(matches!(
            t("connect_timeout=soon"),
            Err(ConnInfoError::BadValue { .. })
        ));
        assert!(matches!(
            t("connect_timeout=1.5"),
            Err(ConnInfoError::BadValue { .. })
        ));

        let p = resolve_d("keepalives=0").unwrap();
        assert!(!p.keepalives);
        assert!(resolve_d("keepalives=1").unwrap().keepalives);
        assert!(resolve_d("keepalives=yes").is_err());
        let p = resolve_d("keepalives_idle=30 keepalives_interval=5 keepalives_count=3").unwrap();
        assert_eq!(p.keepalives_idle, Some(Duration::from_secs(30)));
        assert_eq!(p.keepalives_interval, Some(Duration::from_secs(5)));
        assert_eq!(p.keepalives_count, Some(3));
        let p = resolve_d("keepalives_idle=0 keepalives_interval=-1 keepalives_count=0").unwrap();
        assert_eq!(
            (p.keepalives_idle, p.keepalives_interval, p.keepalives_count),
            (None, None, None)
        );
        for key in [
            "keepalives_idle",
            "keepalives_interval",
            "keepalives_count",
            "tcp_user_timeout",
        ] {
            let err = resolve_d(&format!("{key}=x")).unwrap_err();
            assert!(
                matches!(&err, ConnInfoError::BadValue { key: k, .. } if k == key),
                "{err:?}"
            );
        }
        assert!(resolve_d("tcp_user_timeout=1000").is_ok());
    }

    #[test]
    fn options_and_client_encoding() {
        let p = resolve_d("options='-c wal_sender_timeout=10s -c datestyle=iso'").unwrap();
        assert_eq!(
            p.options.as_deref(),
            Some("-c wal_sender_timeout=10s -c datestyle=iso")
        );
        assert_eq!(
            resolve_d("client_encoding=UTF8")
                .unwrap()
                .client_encoding
                .as_deref(),
            Some("UTF8")
        );
        assert_eq!(
            resolve_d("client_encoding=auto").unwrap().client_encoding,
            None
        );
        let env = FakeEnv::new().with("PGCLIENTENCODING", "LATIN1");
        assert_eq!(
            resolve(&Overrides::default(), &env)
                .unwrap()
                .client_encoding
                .as_deref(),
            Some("LATIN1")
        );
    }

    #[test]
    fn harmless_keys_are_ignored() {
        let s = "sslrootcert=/r sslcert=/c sslkey=/k sslcrl=/l sslcrldir=/d sslpassword=x \
                 sslcompression=1 sslsni=1 ssl_min_protocol_version=TLSv1.2 \
                 ssl_max_protocol_version=TLSv1.3 sslcertmode=allow krbsrvname=postgres \
                 gsslib=gssapi gssdelegation=0 gssencmode=prefer channel_binding=prefer \
                 target_session_attrs=any load_balance_hosts=disable sslnegotiation=postgres \
                 fallback_application_name=f min_protocol_version=3.0 max_protocol_version=latest \
                 host=h";
        let p = resolve_d(s).unwrap();
        assert_eq!(p.targets, vec![tcp("h", 5432)]);
        // requirepeer only applies to Unix sockets, as in libpq.
        assert!(resolve_d("host=h requirepeer=postgres").is_ok());
    }

    #[test]
    fn demanding_values_are_refused() {
        for (s, key) in [
            ("gssencmode=require", "gssencmode"),
            ("channel_binding=require", "channel_binding"),
            ("target_session_attrs=read-write", "target_session_attrs"),
            ("target_session_attrs=primary", "target_session_attrs"),
            ("load_balance_hosts=random", "load_balance_hosts"),
            ("service=mydb", "service"),
            ("require_auth=scram-sha-256", "require_auth"),
            ("sslnegotiation=direct", "sslnegotiation"),
            ("min_protocol_version=3.2", "min_protocol_version"),
            ("requirepeer=postgres", "requirepeer"),
            ("scram_client_key=c2VjcmV0", "scram_client_key"),
        ] {
            let err = resolve_d(s).unwrap_err();
            assert!(
                matches!(&err, ConnInfoError::Unsupported { key: k, .. } if k == key),
                "{s}: {err:?}"
            );
            assert!(err.to_string().contains(key), "{err}");
        }
        assert!(!resolve_d("scram_client_key=c2VjcmV0")
            .unwrap_err()
            .to_string()
            .contains("c2VjcmV0"));
        for (s, key) in [
            ("gssencmode=maybe", "gssencmode"),
            ("channel_binding=x", "channel_binding"),
            ("target_session_attrs=x", "target_session_attrs"),
            ("max_protocol_version=4.0", "max_protocol_version"),
        ] {
            let err = resolve_d(s).unwrap_err();
            assert!(
                matches!(&err, ConnInfoError::BadValue { key: k, .. } if k == key),
                "{s}: {err:?}"
            );
        }
        // From the environment too.
        let env = FakeEnv::new().with("PGSERVICE", "svc");
        let err = resolve(&Overrides::default(), &env).unwrap_err();
        assert!(err.to_string().contains("PGSERVICE"), "{err}");
        let env = FakeEnv::new().with("PGGSSENCMODE", "require");
        assert!(matches!(
            resolve(&Overrides::default(), &env),
            Err(ConnInfoError::Unsupported { .. })
        ));
    }

    #[test]
    fn unknown_key_in_d_is_reported() {
        let err = resolve_d("host=h frobnicate=1").unwrap_err();
        assert_eq!(err, ConnInfoError::UnknownKey("frobnicate".into()));
        assert!(err.to_string().contains("frobnicate"));
        // No '=' at all: a database name, as libpq reads a bare dbname.
        assert_eq!(resolve_d("host pg").unwrap().dbname, "host pg");
        assert!(matches!(
            resolve_d("host=h pg"),
            Err(ConnInfoError::MissingEquals(_))
        ));
    }

    // ---- .pgpass ----

    fn pgpass(contents: &str, mode: u32) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(contents.as_bytes()).unwrap();
        f.flush().unwrap();
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        f
    }

    fn params_with(passfile: &Path, user: &str) -> ConnParams {
        let mut p = resolve_d(&format!("user={user}")).unwrap();
        p.passfile = Some(passfile.to_owned());
        p
    }

    #[test]
    fn pgpass_matching() {
        let f = pgpass(
            "# comment line\n\
             \n\
             db1:5432:replication:alice:first\n\
             db1:5432:replication:alice:second\n\
             *:5433:*:alice:wild-host\n\
             db2:*:replication:*:wild-port-user\n\
             db3:5432:otherdb:alice:wrong-db\n\
             db3:5432:*:alice:any-db\n\
             localhost:5432:replication:alice:socket\n\
             /tmp:5432:replication:alice:tmp-socket\n\
             \\:\\:1:5432:replication:alice:ipv6\n\
             esc\\\\aped:5432:replication:alice:pw\\:with\\\\colon:ignored-field\n\
             crlf:5432:replication:alice:crlf-pw\r\n",
            0o600,
        );
        let p = params_with(f.path(), "alice");
        let pw = |t: Target| p.password_for(&t);
        assert_eq!(
            pw(tcp("db1", 5432)).as_deref(),
            Some("first"),
            "first match wins"
        );
        assert_eq!(pw(tcp("anything", 5433)).as_deref(), Some("wild-host"));
        assert_eq!(pw(tcp("db2", 9999)).as_deref(), Some("wild-port-user"));
        assert_eq!(pw(tcp("db3", 5432)).as_deref(), Some("any-db"));
        assert_eq!(pw(tcp("nomatch", 5432)), None);
        assert_eq!(pw(tcp("db1", 5434)), None);
        assert_eq!(
            pw(unix(DEFAULT_SOCKET_DIR, 5432)).as_deref(),
            Some("socket")
        );
        assert_eq!(pw(unix("/tmp", 5432)).as_deref(), Some("tmp-socket"));
        assert_eq!(pw(tcp("::1", 5432)).as_deref(), Some("ipv6"));
        assert_eq!(
            pw(tcp("esc\\aped", 5432)).as_deref(),
            Some("pw:with\\colon")
        );
        assert_eq!(pw(tcp("crlf", 5432)).as_deref(), Some("crlf-pw"));
        // hostaddr-only targets match on the address.
        let t = Target::Tcp {
            host: "::1".into(),
            hostaddr: Some("::1".into()),
            port: 5432,
        };
        assert_eq!(pw(t).as_deref(), Some("ipv6"));

        // Another user only gets the wildcard-user line.
        let p = params_with(f.path(), "bob");
        assert_eq!(p.password_for(&tcp("db1", 5432)), None);
        assert_eq!(
            p.password_for(&tcp("db2", 1)).as_deref(),
            Some("wild-port-user")
        );
    }

    #[test]
    fn pgpass_dbname_is_matched() {
        let f = pgpass("h:5432:replication:u:repl\nh:5432:mydb:u:mine\n", 0o600);
        let mut p = resolve_d("dbname=mydb user=u").unwrap();
        p.passfile = Some(f.path().to_owned());
        assert_eq!(p.password_for(&tcp("h", 5432)).as_deref(), Some("mine"));
    }

    #[test]
    fn pgpass_wildcard_is_a_whole_field_only() {
        // "*x" is not a pattern; "\*" is a literal star.
        let f = pgpass("*x:*:*:*:no\n\\*:*:*:*:star\n", 0o600);
        let p = params_with(f.path(), "u");
        assert_eq!(p.password_for(&tcp("ax", 5432)), None);
        assert_eq!(p.password_for(&tcp("*", 5432)).as_deref(), Some("star"));
    }

    #[test]
    fn pgpass_explicit_password_wins() {
        let f = pgpass("*:*:*:*:file\n", 0o600);
        let mut p = params_with(f.path(), "u");
        assert_eq!(p.password_for(&tcp("h", 5432)).as_deref(), Some("file"));
        p.password = Some("explicit".into());
        assert_eq!(p.password_for(&tcp("h", 5432)).as_deref(), Some("explicit"));
    }

    #[test]
    fn pgpass_insecure_missing_or_not_a_file_is_ignored() {
        let f = pgpass("*:*:*:*:file\n", 0o644);
        assert_eq!(
            params_with(f.path(), "u").password_for(&tcp("h", 5432)),
            None
        );
        let f = pgpass("*:*:*:*:file\n", 0o640);
        assert_eq!(
            params_with(f.path(), "u").password_for(&tcp("h", 5432)),
            None
        );
        let f = pgpass("*:*:*:*:file\n", 0o400);
        assert_eq!(
            params_with(f.path(), "u")
                .password_for(&tcp("h", 5432))
                .as_deref(),
            Some("file")
        );

        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            params_with(&dir.path().join("missing"), "u").password_for(&tcp("h", 5432)),
            None
        );
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(
            params_with(dir.path(), "u").password_for(&tcp("h", 5432)),
            None
        );

        let mut p = params_with(f.path(), "u");
        p.passfile = None;
        assert_eq!(p.password_for(&tcp("h", 5432)), None);
    }

    #[test]
    fn pgpass_empty_first_match_stops_the_search() {
        let f = pgpass("h:*:*:*:\n*:*:*:*:later\n", 0o600);
        assert_eq!(
            params_with(f.path(), "u").password_for(&tcp("h", 5432)),
            None
        );
    }

    #[test]
    fn pgpass_path_from_home_pgpassfile_and_key() {
        let home = tempfile::tempdir().unwrap();
        let file = home.path().join(".pgpass");
        std::fs::write(&file, "*:*:*:*:fromhome\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let env = FakeEnv {
            home: Some(home.path().to_owned()),
            ..FakeEnv::new()
        };
        let p = resolve(&d("host=h"), &env).unwrap();
        assert_eq!(p.password_for(&p.targets[0]).as_deref(), Some("fromhome"));

        let other = pgpass("*:*:*:*:fromenv\n", 0o600);
        let env = FakeEnv {
            home: Some(home.path().to_owned()),
            ..FakeEnv::new()
        }
        .with("PGPASSFILE", other.path().to_str().unwrap());
        let p = resolve(&d("host=h"), &env).unwrap();
        assert_eq!(p.password_for(&p.targets[0]).as_deref(), Some("fromenv"));

        let keyed = pgpass("*:*:*:*:fromkey\n", 0o600);
        let p = resolve(
            &d(&format!("host=h passfile='{}'", keyed.path().display())),
            &env,
        )
        .unwrap();
        assert_eq!(p.password_for(&p.targets[0]).as_deref(), Some("fromkey"));

        // An explicit empty password means "none": the file is used.
        let p = resolve(&d("host=h password=''"), &env).unwrap();
        assert_eq!(p.password, None);
        assert_eq!(p.password_for(&p.targets[0]).as_deref(), Some("fromenv"));
    }

    #[test]
    fn pgpass_field_matcher() {
        assert_eq!(pgpass_match_field(b"abc:rest", b"abc"), Some(&b"rest"[..]));
        assert_eq!(pgpass_match_field(b"*:rest", b"abc"), Some(&b"rest"[..]));
        assert_eq!(pgpass_match_field(b"ab:rest", b"abc"), None);
        assert_eq!(pgpass_match_field(b"abcd:rest", b"abc"), None);
        assert_eq!(pgpass_match_field(b"abc", b"abc"), None);
        assert_eq!(
            pgpass_match_field(b"a\\:b:rest", b"a:b"),
            Some(&b"rest"[..])
        );
        assert_eq!(pgpass_match_field(b"abc\\", b"abc"), None);
        assert_eq!(pgpass_unescape_password(b"a\\:b\\\\c:d"), b"a:b\\c");
        assert_eq!(pgpass_unescape_password(b"trailing\\"), b"trailing\\");
    }

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
    }

    // ---- the real environment ----

    #[test]
    fn process_env_os_user_matches_passwd() {
        let expected = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map(|u| u.name);
        match expected {
            Some(name) => assert_eq!(ProcessEnv.os_user(), Some(name)),
            // No passwd entry (some containers): $USER or nothing.
            None => assert_eq!(
                ProcessEnv.os_user(),
                std::env::var("USER").ok().filter(|u| !u.is_empty())
            ),
        }
    }

    // ---- robustness ----

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = parse(&s);
            let _ = parse(&format!("postgresql://{s}"));
        }

        #[test]
        fn resolve_never_panics(s in "[a-z_=' ,:/@\\[\\]?&%0-9\\\\]*") {
            let _ = resolve(&d(&s), &FakeEnv::new());
            let _ = resolve(&d(&format!("postgresql://{s}")), &FakeEnv::new());
        }

        #[test]
        fn uri_password_never_in_errors(pw in "[a-zA-Z0-9]{8,16}", tail in "[\\[\\]%?&=/:@a-z0-9]*") {
            let uri = format!("postgresql://u:{pw}@{tail}");
            if let Err(e) = parse(&uri) {
                let msg = e.to_string();
                proptest::prop_assert!(!msg.contains(&pw), "{}", msg);
            }
        }
    }
}
