//! Connection services (`service=NAME` or `PGSERVICE`): named groups of
//! settings in `pg_service.conf` files, as libpq's `parseServiceInfo` and
//! `parseServiceFile` read them.
//!
//! The files searched, in order (the first that defines the service wins):
//! 1. `PGSERVICEFILE`, else `~/.pg_service.conf` (skipped when missing; a
//!    missing `PGSERVICEFILE` is an error, as in libpq);
//! 2. `PGSYSCONFDIR/pg_service.conf`, `PGSYSCONFDIR` defaulting to
//!    [`DEFAULT_SYSCONFDIR`] (skipped when missing).
//!
//! The service's settings fill only keywords the connection string and flags
//! left unset, and come before the `PG*` environment variables.
//!
//! [`find_service`] is the sans-IO part (text in, settings out); the file
//! lookup around it reads through the injectable [`Environment`].

use std::path::{Path, PathBuf};

use super::env::Environment;
use super::keyvalue::is_space;
use super::keywords::keyword;
use super::ConnInfoError;

/// Debian's `SYSCONFDIR` for libpq (where `pg_service.conf` lives when
/// `PGSYSCONFDIR` is not set).
pub const DEFAULT_SYSCONFDIR: &str = "/etc/postgresql-common";

/// One `key=value` line of a service section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSetting {
    /// A libpq keyword (checked against the keyword table).
    pub key: &'static str,
    pub value: String,
    /// 1-based line number in the file, for messages.
    pub line: usize,
}

/// An error inside the requested service's section. Values are never part of
/// the message: a service file may hold passwords.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ServiceFileError {
    #[error("syntax error in line {line}: expected key=value")]
    MissingEquals { line: usize },
    #[error("syntax error in line {line}: invalid connection option \"{key}\"")]
    UnknownKey { line: usize, key: String },
    #[error("nested service specifications not supported (line {line})")]
    NestedService { line: usize },
}

/// libpq's `parseServiceFile` on the text of one file: the settings of section
/// `[service]`, or `None` when the file does not define it.
///
/// Lines are trimmed; blank lines and `#` comments are skipped; a line starting
/// with `[service]` opens the section and the next `[` line ends it (a second
/// section of the same name is not read, as in libpq). Only the requested
/// section is checked, so an error elsewhere in the file does not matter.
pub fn find_service(
    text: &str,
    service: &str,
) -> Result<Option<Vec<ServiceSetting>>, ServiceFileError> {
    let mut settings: Option<Vec<ServiceSetting>> = None;
    for (index, raw) in text.split('\n').enumerate() {
        let line = raw.trim_matches(is_space);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            if settings.is_some() {
                break;
            }
            if opens_section(line, service) {
                settings = Some(Vec::new());
            }
            continue;
        }
        if let Some(found) = settings.as_mut() {
            found.push(service_setting(line, index + 1)?);
        }
    }
    Ok(settings)
}

/// Whether `line` is the header of section `service`. libpq compares only the
/// start of the line (`[name]` followed by anything).
fn opens_section(line: &str, service: &str) -> bool {
    line.strip_prefix('[')
        .and_then(|rest| rest.strip_prefix(service))
        .is_some_and(|rest| rest.starts_with(']'))
}

/// One `key=value` line of the wanted section. Unlike libpq, spaces around the
/// key and the value are trimmed (libpq would read `host = x` as the unknown
/// keyword "host " and refuse the file).
fn service_setting(line: &str, number: usize) -> Result<ServiceSetting, ServiceFileError> {
    let Some((key, value)) = line.split_once('=') else {
        return Err(ServiceFileError::MissingEquals { line: number });
    };
    let key = key.trim_matches(is_space);
    if key == "service" {
        return Err(ServiceFileError::NestedService { line: number });
    }
    let Some(known) = keyword(key) else {
        return Err(ServiceFileError::UnknownKey {
            line: number,
            key: key.to_owned(),
        });
    };
    Ok(ServiceSetting {
        key: known.name,
        value: value.trim_matches(is_space).to_owned(),
        line: number,
    })
}

/// A service definition found in a file.
#[derive(Debug)]
pub(super) struct FoundService {
    pub(super) file: PathBuf,
    pub(super) settings: Vec<ServiceSetting>,
}

/// libpq's `parseServiceInfo`: looks `service` up in the user's file, then in
/// the system-wide file.
pub(super) fn lookup_service(
    service: &str,
    env: &dyn Environment,
) -> Result<FoundService, ConnInfoError> {
    let user_file = match env.var("PGSERVICEFILE").filter(|f| !f.is_empty()) {
        Some(file) => Some((PathBuf::from(file), true)),
        None => env
            .home_dir()
            .map(|home| (home.join(".pg_service.conf"), false)),
    };
    let sysconfdir = env
        .var("PGSYSCONFDIR")
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| DEFAULT_SYSCONFDIR.to_owned());
    let system_file = (PathBuf::from(sysconfdir).join("pg_service.conf"), false);
    for (file, must_exist) in user_file.into_iter().chain([system_file]) {
        let Some(text) = read_service_file(&file, must_exist, env)? else {
            continue;
        };
        let found = find_service(&text, service).map_err(|e| service_file_error(&file, e))?;
        if let Some(settings) = found {
            tracing::debug!(
                "connection service \"{service}\" read from \"{}\"",
                file.display()
            );
            return Ok(FoundService { file, settings });
        }
    }
    Err(ConnInfoError::ServiceNotFound(service.to_owned()))
}

/// The text of a service file; `None` when it does not exist and need not.
fn read_service_file(
    file: &Path,
    must_exist: bool,
    env: &dyn Environment,
) -> Result<Option<String>, ConnInfoError> {
    match env.read_file(file) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ConnInfoError::ServiceFile {
            path: file.display().to_string(),
            what: "service file not found (PGSERVICEFILE)".to_owned(),
        }),
        Err(e) => Err(ConnInfoError::ServiceFile {
            path: file.display().to_string(),
            what: format!("cannot read: {e}"),
        }),
    }
}

fn service_file_error(file: &Path, e: ServiceFileError) -> ConnInfoError {
    ConnInfoError::ServiceFile {
        path: file.display().to_string(),
        what: e.to_string(),
    }
}

#[cfg(test)]
mod tests;
