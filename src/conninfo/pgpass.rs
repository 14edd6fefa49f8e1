//! The password file (`~/.pgpass`, libpq's `passwordFromFile`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::{ConnParams, Target, DEFAULT_SOCKET_DIR};

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
            // libpq matches a hostaddr-only target on the address.
            Target::Tcp {
                host,
                hostaddr: Some(addr),
                port,
            } if host.is_empty() => (addr.clone(), *port),
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
pub(super) fn password_from_file(
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
mod tests;
