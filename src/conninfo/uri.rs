//! The `postgresql://` URI form of a connection string (libpq's
//! `conninfo_uri_parse_options`) and the redaction of URIs for error messages.

use super::keywords::{is_secret, keyword};
use super::ConnInfoError;

const URI_PREFIXES: [&str; 2] = ["postgresql://", "postgres://"];

/// Length of the URI scheme designator, as libpq's `uri_prefix_length`
/// (case-sensitive, no leading whitespace).
pub(super) fn uri_prefix_len(s: &str) -> Option<usize> {
    URI_PREFIXES
        .iter()
        .find(|p| s.starts_with(**p))
        .map(|p| p.len())
}

/// libpq's `conninfo_uri_parse_options`:
/// `postgresql://[user[:password]@][host][:port][,...][/dbname][?param=value&...]`.
pub(super) fn parse_uri(
    uri: &str,
    prefix_len: usize,
) -> Result<Vec<(String, String)>, ConnInfoError> {
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
pub(super) fn redact_uri(uri: &str) -> String {
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

#[cfg(test)]
mod tests;
