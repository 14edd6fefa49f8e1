//! Resolution of the `ssl*` keywords into [`TlsSettings`], with libpq 16–18's
//! defaults and checks (`connectOptions2` in fe-connect.c; the default file
//! names come from `initialize_SSL` in fe-secure-openssl.c).
//!
//! Only settings are decided here; the TLS transport that uses them lives in
//! `pgwire`. Default files under `~/.postgresql/` are filled in whether or not
//! they exist: the transport decides, as libpq does at connect time, whether a
//! missing one matters.

use std::path::{Path, PathBuf};

use super::env::Environment;
use super::resolve::{bad_value, unsupported, Origin, Settings};
use super::{ConnInfoError, RootCerts, SslMode, SslNegotiation, TlsSettings, TlsVersion};

/// libpq's defaults, relative to the home directory.
const DEFAULT_ROOT_CERT: &str = ".postgresql/root.crt";
const DEFAULT_CERT: &str = ".postgresql/postgresql.crt";
const DEFAULT_KEY: &str = ".postgresql/postgresql.key";
const DEFAULT_CRL: &str = ".postgresql/root.crl";

/// Builds the TLS settings from the combined settings.
pub(super) fn resolve_tls(
    s: &Settings,
    env: &dyn Environment,
) -> Result<TlsSettings, ConnInfoError> {
    let home = env.home_dir();
    let root_cert = root_certs(s, home.as_deref());
    let mode = sslmode(s, root_cert.as_ref())?;
    let negotiation = negotiation(s, mode)?;
    check_system_roots(root_cert.as_ref(), mode)?;
    let (min_protocol_version, max_protocol_version) = protocol_versions(s)?;
    refuse_crl_dir(s)?;
    let send_client_cert = client_cert_mode(s)?;
    let cert = file_setting(s, "sslcert", home.as_deref(), DEFAULT_CERT);
    let key = file_setting(s, "sslkey", home.as_deref(), DEFAULT_KEY);
    Ok(TlsSettings {
        mode,
        root_cert,
        cert: cert.filter(|_| send_client_cert),
        key: key.filter(|_| send_client_cert),
        crl: file_setting(s, "sslcrl", home.as_deref(), DEFAULT_CRL),
        sni: sni(s)?,
        min_protocol_version,
        max_protocol_version,
        negotiation,
    })
}

/// A file keyword, else its default under the home directory.
fn file_setting(s: &Settings, key: &str, home: Option<&Path>, default: &str) -> Option<PathBuf> {
    match s.get(key) {
        Some((path, _)) => Some(PathBuf::from(path)),
        None => home.map(|home| home.join(default)),
    }
}

/// `sslrootcert`: `system` is the platform's trust store.
fn root_certs(s: &Settings, home: Option<&Path>) -> Option<RootCerts> {
    match s.get("sslrootcert") {
        Some(("system", _)) => Some(RootCerts::System),
        _ => file_setting(s, "sslrootcert", home, DEFAULT_ROOT_CERT).map(RootCerts::File),
    }
}

/// `sslmode`, default `prefer`, or `verify-full` when `sslrootcert=system`
/// and no sslmode was given (libpq 16+'s `conninfo_add_defaults`).
fn sslmode(s: &Settings, root_cert: Option<&RootCerts>) -> Result<SslMode, ConnInfoError> {
    let Some((value, origin)) = s.get("sslmode") else {
        return Ok(match root_cert {
            Some(RootCerts::System) => SslMode::VerifyFull,
            _ => SslMode::Prefer,
        });
    };
    parse_sslmode(value).ok_or_else(|| {
        bad_value(
            "sslmode",
            value,
            "valid values are disable, allow, prefer, require, verify-ca, verify-full",
            origin,
        )
    })
}

fn parse_sslmode(value: &str) -> Option<SslMode> {
    Some(match value {
        "disable" => SslMode::Disable,
        "allow" => SslMode::Allow,
        "prefer" => SslMode::Prefer,
        "require" => SslMode::Require,
        "verify-ca" => SslMode::VerifyCa,
        "verify-full" => SslMode::VerifyFull,
        _ => return None,
    })
}

/// libpq's name for a mode, for messages.
fn sslmode_name(mode: SslMode) -> &'static str {
    match mode {
        SslMode::Disable => "disable",
        SslMode::Allow => "allow",
        SslMode::Prefer => "prefer",
        SslMode::Require => "require",
        SslMode::VerifyCa => "verify-ca",
        SslMode::VerifyFull => "verify-full",
    }
}

/// Whether the mode can never fall back to plain text.
fn requires_tls(mode: SslMode) -> bool {
    matches!(
        mode,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
    )
}

/// `sslnegotiation`; `direct` only with a mode that never falls back to plain
/// text (libpq 17+: a pre-17 server would otherwise be an unnoticed downgrade).
fn negotiation(s: &Settings, mode: SslMode) -> Result<SslNegotiation, ConnInfoError> {
    let negotiation = match s.get("sslnegotiation") {
        None | Some(("postgres", _)) => SslNegotiation::Postgres,
        Some(("direct", _)) => SslNegotiation::Direct,
        Some((value, origin)) => {
            return Err(bad_value(
                "sslnegotiation",
                value,
                "valid values are postgres, direct",
                origin,
            ))
        }
    };
    if negotiation == SslNegotiation::Direct && !requires_tls(mode) {
        return Err(ConnInfoError::Conflict(format!(
            "weak sslmode \"{}\" may not be used with sslnegotiation=direct \
             (use \"require\", \"verify-ca\", or \"verify-full\")",
            sslmode_name(mode)
        )));
    }
    Ok(negotiation)
}

/// The platform's roots vouch for any public host name, so only a host name
/// check makes them meaningful (libpq 16+).
fn check_system_roots(root_cert: Option<&RootCerts>, mode: SslMode) -> Result<(), ConnInfoError> {
    if root_cert == Some(&RootCerts::System) && mode != SslMode::VerifyFull {
        return Err(ConnInfoError::Conflict(format!(
            "weak sslmode \"{}\" may not be used with sslrootcert=system (use \"verify-full\")",
            sslmode_name(mode)
        )));
    }
    Ok(())
}

/// `ssl_min_protocol_version` (default TLSv1.2, as libpq 13+) and
/// `ssl_max_protocol_version` (default: no limit), checked as libpq's
/// `sslVerifyProtocolVersion` and `sslVerifyProtocolRange` do.
fn protocol_versions(
    s: &Settings,
) -> Result<(Option<TlsVersion>, Option<TlsVersion>), ConnInfoError> {
    let min = match s.get("ssl_min_protocol_version") {
        Some((value, origin)) => parse_tls_version("ssl_min_protocol_version", value, origin)?,
        None => TlsVersion::Tls1_2,
    };
    let max = match s.get("ssl_max_protocol_version") {
        Some((value, origin)) => Some(parse_tls_version(
            "ssl_max_protocol_version",
            value,
            origin,
        )?),
        None => None,
    };
    if max.is_some_and(|max| min > max) {
        return Err(ConnInfoError::Conflict(
            "invalid SSL protocol version range".to_owned(),
        ));
    }
    Ok((Some(min), max))
}

/// One protocol version name, case-insensitive as libpq's `pg_strcasecmp`.
fn parse_tls_version(key: &str, value: &str, origin: Origin) -> Result<TlsVersion, ConnInfoError> {
    match value.to_ascii_lowercase().as_str() {
        "tlsv1.2" => Ok(TlsVersion::Tls1_2),
        "tlsv1.3" => Ok(TlsVersion::Tls1_3),
        "tlsv1" | "tlsv1.1" => Err(unsupported(
            key,
            format_args!(
                "{key}={value}: walrcv's TLS library (rustls) speaks only TLSv1.2 and TLSv1.3; \
                 use TLSv1.2 or TLSv1.3"
            ),
            origin,
        )),
        _ => Err(bad_value(
            key,
            value,
            format_args!(
                "invalid \"{key}\" value: \"{value}\"; valid values are TLSv1, TLSv1.1, \
                 TLSv1.2, TLSv1.3"
            ),
            origin,
        )),
    }
}

/// `sslcrldir` needs a directory of hashed CRL files, which walrcv does not
/// read; ignoring it would skip revocation checks the user asked for.
fn refuse_crl_dir(s: &Settings) -> Result<(), ConnInfoError> {
    match s.get("sslcrldir") {
        Some((_, origin)) => Err(unsupported(
            "sslcrldir",
            "certificate revocation list directories are not supported; \
             concatenate the CRLs into one PEM file and give it as sslcrl",
            origin,
        )),
        None => Ok(()),
    }
}

/// `sslcertmode`: whether to send a client certificate (`allow`, the default)
/// or never (`disable`). `require` (fail unless the server asked for one) is
/// refused: the TLS layer cannot tell whether the server asked.
fn client_cert_mode(s: &Settings) -> Result<bool, ConnInfoError> {
    match s.get("sslcertmode") {
        None | Some(("allow", _)) => Ok(true),
        Some(("disable", _)) => Ok(false),
        Some(("require", origin)) => Err(unsupported(
            "sslcertmode",
            "sslcertmode=require: walrcv cannot check that the server asked for a \
             client certificate; use sslcertmode=allow (the default)",
            origin,
        )),
        Some((value, origin)) => Err(bad_value(
            "sslcertmode",
            value,
            "valid values are disable, allow, require",
            origin,
        )),
    }
}

/// `sslsni`: libpq sends SNI when the value is `1` and reads anything else as
/// off; walrcv accepts only `0` and `1` so that `on` is not silently off.
fn sni(s: &Settings) -> Result<bool, ConnInfoError> {
    match s.get("sslsni") {
        None | Some(("1", _)) => Ok(true),
        Some(("0", _)) => Ok(false),
        Some((value, origin)) => Err(bad_value("sslsni", value, "must be 0 or 1", origin)),
    }
}

#[cfg(test)]
mod tests;
