//! Combines the layers (connection string, flags, `PG*` environment,
//! defaults) into [`ConnParams`], validating every value.

use std::path::PathBuf;
use std::time::Duration;

use super::auth::{resolve_channel_binding, resolve_require_auth};
use super::env::Environment;
use super::keyvalue::is_space;
use super::keywords::{keyword, IGNORED_KEYWORDS, KEYWORDS};
use super::service::lookup_service;
use super::settings::{bad_value, unsupported, Origin, Settings};
use super::tls::resolve_tls;
use super::uri::uri_prefix_len;
use super::{
    parse, ConnInfoError, ConnParams, LoadBalanceHosts, Overrides, Target, TargetSessionAttrs,
    DEFAULT_APPLICATION_NAME, DEFAULT_PORT, DEFAULT_SOCKET_DIR, REPLICATION_DBNAME,
};

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
/// the connection service's settings, then `PG*` variables for what is still
/// unset, then defaults (Unix socket in `/var/run/postgresql`, port 5432, the
/// OS user, application_name `walrcv`, TLS as in [`resolve_tls`]).
///
/// `dbname` (used only for `.pgpass` matching: the server ignores it for a
/// physical replication connection) is the one `-d` gives, as in pg_receivewal
/// 17+, else `replication`. A `-d` value with no `=` that is not a URI is a
/// database name, as libpq reads `dbname`.
pub fn resolve(overrides: &Overrides, env: &dyn Environment) -> Result<ConnParams, ConnInfoError> {
    let mut s = Settings::default();
    add_conninfo(&mut s, overrides)?;
    add_flags(&mut s, overrides);
    add_service(&mut s, env)?;
    add_env(&mut s, env);
    check_unsupported(&s)?;
    let tls = resolve_tls(&s, env)?;
    let channel_binding = resolve_channel_binding(&s, tls.mode)?;
    let require_auth = resolve_require_auth(&s)?;
    let targets = resolve_targets(&s)?;
    check_requirepeer(&s, &targets)?;
    log_ignored(&s);
    let keepalives = resolve_keepalives(&s)?;
    Ok(ConnParams {
        targets,
        user: resolve_user(&s, env)?,
        password: s.get("password").map(|(p, _)| p.to_owned()),
        passfile: match s.get("passfile") {
            Some((path, _)) => Some(PathBuf::from(path)),
            None => env.home_dir().map(|home| home.join(".pgpass")),
        },
        dbname: s
            .get("dbname")
            .map_or(REPLICATION_DBNAME, |(d, _)| d)
            .to_owned(),
        application_name: resolve_application_name(&s),
        options: s.get("options").map(|(o, _)| o.to_owned()),
        connect_timeout: resolve_connect_timeout(&s)?,
        keepalives: keepalives.on,
        keepalives_idle: keepalives.idle,
        keepalives_interval: keepalives.interval,
        keepalives_count: keepalives.count,
        tls,
        channel_binding,
        require_auth,
        client_encoding: resolve_client_encoding(&s),
        target_session_attrs: resolve_keyword_choice(
            &s,
            "target_session_attrs",
            TargetSessionAttrs::from_keyword,
            &TargetSessionAttrs::ALL.map(TargetSessionAttrs::as_str),
        )?
        .unwrap_or_default(),
        load_balance_hosts: resolve_keyword_choice(
            &s,
            "load_balance_hosts",
            LoadBalanceHosts::from_keyword,
            &["disable", "random"],
        )?
        .unwrap_or_default(),
    })
}

/// A keyword with a fixed set of values, checked as libpq's `connectOptions2`
/// does (exact spelling), with its message: `invalid KEY value: "VALUE"`.
fn resolve_keyword_choice<T>(
    s: &Settings,
    key: &str,
    parse: impl Fn(&str) -> Option<T>,
    valid: &[&str],
) -> Result<Option<T>, ConnInfoError> {
    let Some((value, origin)) = s.get(key) else {
        return Ok(None);
    };
    match parse(value) {
        Some(v) => Ok(Some(v)),
        None => Err(ConnInfoError::InvalidChoice {
            key: key.to_owned(),
            value: value.to_owned(),
            what: format!("valid values are {}; {origin}", valid.join(", ")),
        }),
    }
}

/// `requirepeer` asks to check the server process's OS user, which walrcv
/// cannot do; libpq too ignores it for TCP connections.
fn check_requirepeer(s: &Settings, targets: &[Target]) -> Result<(), ConnInfoError> {
    let Some((value, origin)) = s.get("requirepeer") else {
        return Ok(());
    };
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
    Ok(())
}

fn log_ignored(s: &Settings) {
    for key in IGNORED_KEYWORDS {
        if let Some((_, origin)) = s.get(key) {
            // The key only, never the value: sslpassword and
            // oauth_client_secret are secrets.
            tracing::debug!(
                "ignoring connection option \"{key}\" ({origin}): \
                 it has no effect on the connections walrcv makes"
            );
        }
    }
}

/// `user`, else the OS user (libpq's `pg_fe_getauthname`).
fn resolve_user(s: &Settings, env: &dyn Environment) -> Result<String, ConnInfoError> {
    match s.get("user") {
        Some((user, _)) => Ok(user.to_owned()),
        None => env
            .os_user()
            .filter(|u| !u.is_empty())
            .ok_or(ConnInfoError::NoUser),
    }
}

fn resolve_application_name(s: &Settings) -> String {
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
    application_name
}

fn resolve_client_encoding(s: &Settings) -> Option<String> {
    match s.get("client_encoding") {
        Some(("auto", origin)) => {
            tracing::debug!("client_encoding=auto ({origin}): using the server's default encoding");
            None
        }
        Some((enc, _)) => Some(enc.to_owned()),
        None => None,
    }
}

fn resolve_connect_timeout(s: &Settings) -> Result<Option<Duration>, ConnInfoError> {
    let Some((value, origin)) = s.get("connect_timeout") else {
        return Ok(None);
    };
    // libpq: zero or negative waits forever; the minimum is 2 s because a
    // 1 s timer could fire almost at once.
    let n = parse_int("connect_timeout", value, origin)?;
    Ok(u64::try_from(n)
        .ok()
        .filter(|&n| n > 0)
        .map(|n| Duration::from_secs(n.max(2))))
}

/// The TCP keepalive settings.
struct Keepalives {
    on: bool,
    idle: Option<Duration>,
    interval: Option<Duration>,
    count: Option<u32>,
}

fn resolve_keepalives(s: &Settings) -> Result<Keepalives, ConnInfoError> {
    let on = match s.get("keepalives") {
        // libpq: any non-zero integer turns keepalives on.
        Some((value, origin)) => parse_int("keepalives", value, origin)? != 0,
        None => true,
    };
    let seconds = |key: &str| match s.get(key) {
        Some((value, origin)) => parse_seconds(key, value, origin),
        None => Ok(None),
    };
    let count = match s.get("keepalives_count") {
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
    Ok(Keepalives {
        on,
        idle: seconds("keepalives_idle")?,
        interval: seconds("keepalives_interval")?,
        count,
    })
}

/// Layer 1: the `-d` string (a conninfo string or URI, else a database name).
fn add_conninfo(s: &mut Settings, overrides: &Overrides) -> Result<(), ConnInfoError> {
    let Some(d) = overrides.dbname.as_deref().filter(|d| !d.is_empty()) else {
        return Ok(());
    };
    if uri_prefix_len(d).is_none() && !d.contains('=') {
        s.set("dbname", d.to_owned(), Origin::Conninfo);
        return Ok(());
    }
    for (key, value) in parse(d)? {
        // parse only returns known keywords; the lookup gives the 'static
        // name the map is keyed by.
        let Some(known) = keyword(&key) else {
            return Err(ConnInfoError::UnknownKey(key));
        };
        s.set(known.name, value, Origin::Conninfo);
    }
    Ok(())
}

/// Layer 1 too: `-h`, `-p`, `-U` and a prompted password override `-d`.
fn add_flags(s: &mut Settings, overrides: &Overrides) {
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
}

/// Layer 2: the connection service named by `service` or `PGSERVICE` fills
/// what layer 1 left unset (libpq's `parseServiceInfo`, called before the
/// environment is read).
fn add_service(s: &mut Settings, env: &dyn Environment) -> Result<(), ConnInfoError> {
    let service = match s.get("service") {
        Some((name, _)) => name.to_owned(),
        None => match env.var("PGSERVICE").filter(|v| !v.is_empty()) {
            Some(name) => name,
            None => return Ok(()),
        },
    };
    let found = lookup_service(&service, env)?;
    tracing::debug!(
        "using connection service \"{service}\" from \"{}\"",
        found.file.display()
    );
    for setting in found.settings {
        if s.get(setting.key).is_none() {
            let origin = Origin::Service { line: setting.line };
            s.set(setting.key, setting.value, origin);
        }
    }
    Ok(())
}

/// Layer 3: the `PG*` variables, for keywords still unset. libpq's deprecated
/// `PGREQUIRESSL=1` means `sslmode=require` when nothing else sets sslmode.
fn add_env(s: &mut Settings, env: &dyn Environment) {
    for k in KEYWORDS {
        let Some(var) = k.env else { continue };
        if s.get(k.name).is_none() {
            if let Some(value) = env.var(var).filter(|v| !v.is_empty()) {
                s.set(k.name, value, Origin::Env(var));
            }
        }
    }
    if s.get("sslmode").is_none() && env.var("PGREQUIRESSL").is_some_and(|v| v.starts_with('1')) {
        s.set("sslmode", "require".to_owned(), Origin::Env("PGREQUIRESSL"));
    }
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
            Target::Tcp {
                host: h.to_owned(),
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

#[cfg(test)]
mod tests;
