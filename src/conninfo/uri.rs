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
/// Each part has its own method on [`UriParser`], in the order they appear.
pub(super) fn parse_uri(
    uri: &str,
    prefix_len: usize,
) -> Result<Vec<(String, String)>, ConnInfoError> {
    let mut parser = UriParser::new(uri, prefix_len);
    parser.user_info()?;
    parser.refuse_stray_at()?;
    parser.host_list()?;
    parser.path()?;
    parser.query()?;
    Ok(parser.out)
}

/// The state of one URI parse: the text after the scheme, a cursor into it and
/// the pairs found so far.
struct UriParser<'a> {
    uri: &'a str,
    prefix_len: usize,
    /// The URI after `postgresql://`.
    rest: &'a str,
    /// Byte offset into `rest` of the next part.
    pos: usize,
    /// Where the user info ends (its '@'), if there is one.
    userinfo_end: Option<usize>,
    /// An '@' after the user info (see [`UriParser::new`]).
    stray_at: bool,
    out: Vec<(String, String)>,
}

impl<'a> UriParser<'a> {
    fn new(uri: &'a str, prefix_len: usize) -> Self {
        let rest = &uri[prefix_len..];
        // libpq looks for '@' before the first '/', so an '@' in a query
        // parameter can be mistaken for user info; same here for compatibility.
        let userinfo_end = rest
            .find(['@', '/'])
            .filter(|&i| rest.as_bytes()[i] == b'@');
        let pos = userinfo_end.map_or(0, |at| at + 1);
        // A raw '@' after the user info is legitimate only in a query value or
        // an odd database name; more likely a password holds an unencoded '/'
        // or '@' and pieces of it landed in the host, port or query. Errors
        // then hide everything up to the last '@'.
        let stray_at = rest[pos..].contains('@');
        UriParser {
            uri,
            prefix_len,
            rest,
            pos,
            userinfo_end,
            stray_at,
            out: Vec::new(),
        }
    }

    /// An error about this URI, which is shown redacted.
    fn bad(&self, what: String) -> ConnInfoError {
        let uri = if self.stray_at {
            redact_uri_through_last_at(self.uri, self.prefix_len)
        } else {
            redact_uri(self.uri)
        };
        ConnInfoError::BadUri { uri, what }
    }

    fn decode(&self, part: &str, what: &str) -> Result<String, ConnInfoError> {
        percent_decode(part).map_err(|e| self.bad(format!("{e} in the {what}")))
    }

    fn push(&mut self, key: &str, value: String) {
        self.out.push((key.to_owned(), value));
    }

    /// The byte at the cursor, if any.
    fn peek(&self) -> Option<u8> {
        self.rest.as_bytes().get(self.pos).copied()
    }

    /// Advances the cursor to the next of `stops` (or the end) and returns the
    /// text passed over.
    fn take_until(&mut self, stops: &[u8]) -> &'a str {
        let start = self.pos;
        let bytes = self.rest.as_bytes();
        while self.pos < bytes.len() && !stops.contains(&bytes[self.pos]) {
            self.pos += 1;
        }
        &self.rest[start..self.pos]
    }

    /// `user[:password]@`.
    fn user_info(&mut self) -> Result<(), ConnInfoError> {
        let Some(at) = self.userinfo_end else {
            return Ok(());
        };
        let userinfo = &self.rest[..at];
        let (user, password) = match userinfo.split_once(':') {
            Some((user, password)) => (user, Some(password)),
            None => (userinfo, None),
        };
        if !user.is_empty() {
            let user = self.decode(user, "user name")?;
            self.push("user", user);
        }
        if let Some(password) = password.filter(|p| !p.is_empty()) {
            let password = self.decode(password, "password")?;
            self.push("password", password);
        }
        Ok(())
    }

    /// No host or port can contain '@', and a database name can write it as
    /// %40: an '@' there is a mis-encoded password, refused before libpq's
    /// split hands pieces of it to later checks that would echo them.
    fn refuse_stray_at(&self) -> Result<(), ConnInfoError> {
        let after = &self.rest[self.pos..];
        let before_query = after.find('?').map_or(after, |q| &after[..q]);
        if before_query.contains('@') {
            return Err(self.bad(
                "unexpected \"@\" after the user info; percent-encode \"@\" as %40 and \
                 \"/\" as %2F in user names, passwords and database names"
                    .to_owned(),
            ));
        }
        Ok(())
    }

    /// `host[:port][,host[:port]...]`. Lists stay aligned: "a:1,b" gives host
    /// "a,b" and port "1," (an empty entry means the default port).
    fn host_list(&mut self) -> Result<(), ConnInfoError> {
        let mut hosts = Vec::new();
        let mut ports = Vec::new();
        loop {
            hosts.push(self.host()?);
            ports.push(self.port()?);
            if self.peek() != Some(b',') {
                break;
            }
            self.pos += 1;
        }
        let hosts = hosts.join(",");
        if !hosts.is_empty() {
            self.push("host", hosts);
        }
        // libpq would store "," for "a,b"; leaving it out means the same (every
        // host on the default port) and reads better.
        if ports.iter().any(|p| !p.is_empty()) {
            self.push("port", ports.join(","));
        }
        Ok(())
    }

    /// One host: a name, an IPv4 address or a bracketed IPv6 address.
    fn host(&mut self) -> Result<String, ConnInfoError> {
        if self.peek() != Some(b'[') {
            let host = self.take_until(b":/?,");
            return self.decode(host, "host");
        }
        let start = self.pos + 1;
        let Some(len) = self.rest[start..].find(']') else {
            return Err(self.bad(
                "end of string reached when looking for matching \"]\" in IPv6 host address"
                    .to_owned(),
            ));
        };
        if len == 0 {
            return Err(self.bad("IPv6 host address may not be empty".to_owned()));
        }
        let host = &self.rest[start..start + len];
        self.pos = start + len + 1;
        if let Some(c) = self.rest[self.pos..].chars().next() {
            if !matches!(c, ':' | '/' | '?' | ',') {
                return Err(self.bad(format!(
                    "unexpected character {c:?} at position {} (expected \":\" or \"/\")",
                    self.prefix_len + self.pos + 1
                )));
            }
        }
        self.decode(host, "host")
    }

    /// `:port` after a host, or "" when there is none.
    fn port(&mut self) -> Result<String, ConnInfoError> {
        if self.peek() != Some(b':') {
            return Ok(String::new());
        }
        self.pos += 1;
        let port = self.take_until(b"/?,");
        let port = self.decode(port, "port")?;
        // libpq checks ports only when connecting; checking here keeps a
        // mis-split password out of a later "invalid port" error.
        if !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.bad("invalid port number: digits only".to_owned()));
        }
        Ok(port)
    }

    /// `/dbname`.
    fn path(&mut self) -> Result<(), ConnInfoError> {
        if self.peek() != Some(b'/') {
            return Ok(());
        }
        self.pos += 1;
        let dbname = self.take_until(b"?");
        if !dbname.is_empty() {
            let dbname = self.decode(dbname, "database name")?;
            self.push("dbname", dbname);
        }
        Ok(())
    }

    /// `?key=value&...`. As libpq: a trailing '&' ends the list, but an empty
    /// parameter in the middle ("a=1&&b=2") is an error.
    fn query(&mut self) -> Result<(), ConnInfoError> {
        if self.peek() != Some(b'?') {
            return Ok(());
        }
        let mut params = &self.rest[self.pos + 1..];
        while !params.is_empty() {
            let param;
            (param, params) = params.split_once('&').unwrap_or((params, ""));
            let (key, value) = self.query_param(param)?;
            self.out.push((key, value));
        }
        Ok(())
    }

    /// One `key=value` query parameter, decoded and checked to be a keyword.
    fn query_param(&self, param: &str) -> Result<(String, String), ConnInfoError> {
        let Some((key, value)) = param.split_once('=') else {
            // Named only if it is a keyword: it could be a piece of a
            // mis-encoded password.
            let what = match percent_decode(param).ok().filter(|k| keyword(k).is_some()) {
                Some(k) => format!("missing key/value separator \"=\" after {k:?}"),
                None => "missing key/value separator \"=\" in a query parameter".to_owned(),
            };
            return Err(self.bad(what));
        };
        if value.contains('=') {
            return Err(self.bad(format!(
                "extra key/value separator \"=\" in URI query parameter {key:?}"
            )));
        }
        let key = self.decode(key, "query parameter name")?;
        let value = self.decode(value, &format!("value of query parameter {key:?}"))?;
        // JDBC compatibility, as in libpq: ssl=true means sslmode=require.
        if key == "ssl" && value == "true" {
            return Ok(("sslmode".to_owned(), "require".to_owned()));
        }
        if keyword(&key).is_none() {
            return Err(ConnInfoError::UnknownKey(key));
        }
        Ok((key, value))
    }
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
