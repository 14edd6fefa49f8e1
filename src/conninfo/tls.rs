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
use super::settings::{bad_value, Origin, Settings};
use super::{
    ConnInfoError, RootCerts, SslMode, SslNegotiation, SslPassword, TlsSettings, TlsVersion,
};

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
    let cert_mode = client_cert_mode(s)?;
    let send_client_cert = cert_mode != CertMode::Disable;
    let cert = file_setting(s, "sslcert", home.as_deref(), DEFAULT_CERT);
    let key = file_setting(s, "sslkey", home.as_deref(), DEFAULT_KEY);
    let crl_dir = s.get("sslcrldir").map(|(dir, _)| PathBuf::from(dir));
    // The default CRL file only when neither sslcrl nor sslcrldir is set.
    let crl = match crl_dir {
        Some(_) => s.get("sslcrl").map(|(file, _)| PathBuf::from(file)),
        None => file_setting(s, "sslcrl", home.as_deref(), DEFAULT_CRL),
    };
    Ok(TlsSettings {
        mode,
        root_cert,
        cert: cert.filter(|_| send_client_cert),
        key: key.filter(|_| send_client_cert),
        crl,
        crl_dir,
        key_password: s
            .get("sslpassword")
            .map(|(p, _)| SslPassword(p.to_string())),
        require_cert_request: cert_mode == CertMode::Require,
        key_log_file: s.get("sslkeylogfile").map(|(f, _)| PathBuf::from(f)),
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
        "tlsv1" => Ok(TlsVersion::Tls1),
        "tlsv1.1" => Ok(TlsVersion::Tls1_1),
        "tlsv1.2" => Ok(TlsVersion::Tls1_2),
        "tlsv1.3" => Ok(TlsVersion::Tls1_3),
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

/// `sslcertmode` (libpq 16+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CertMode {
    /// Never send a client certificate.
    Disable,
    /// Send one if the server asks and there is one (the default).
    Allow,
    /// As `allow`, and fail unless the server asked for one.
    Require,
}

fn client_cert_mode(s: &Settings) -> Result<CertMode, ConnInfoError> {
    match s.get("sslcertmode") {
        None | Some(("allow", _)) => Ok(CertMode::Allow),
        Some(("disable", _)) => Ok(CertMode::Disable),
        Some(("require", _)) => Ok(CertMode::Require),
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
