//! Resolution of the authentication keywords: `channel_binding` and
//! `require_auth` (libpq 16+), checked as libpq's `connectOptions2` does.
//! The authentication itself lives in `pgwire`.

use super::settings::{bad_value, Settings};
use super::{AuthMethod, ChannelBinding, ConnInfoError, RequireAuth, SslMode};

/// `channel_binding`, default `prefer`. `require` without TLS can never be
/// met; libpq finds out when the server asks for SCRAM, walrcv says so before
/// connecting, with libpq's words (`pg_SASL_init` in fe-auth.c).
pub(super) fn resolve_channel_binding(
    s: &Settings,
    sslmode: SslMode,
) -> Result<ChannelBinding, ConnInfoError> {
    let binding = match s.get("channel_binding") {
        None | Some(("prefer", _)) => ChannelBinding::Prefer,
        Some(("disable", _)) => ChannelBinding::Disable,
        Some(("require", _)) => ChannelBinding::Require,
        Some((value, origin)) => {
            return Err(bad_value(
                "channel_binding",
                value,
                "valid values are disable, prefer, require",
                origin,
            ))
        }
    };
    if binding == ChannelBinding::Require && sslmode == SslMode::Disable {
        return Err(ConnInfoError::Conflict(
            "channel_binding=require cannot be used with sslmode=disable: \
             channel binding required, but SSL not in use"
                .to_owned(),
        ));
    }
    Ok(binding)
}

/// `require_auth`, `None` when unset (every method accepted).
pub(super) fn resolve_require_auth(s: &Settings) -> Result<Option<RequireAuth>, ConnInfoError> {
    let Some((value, origin)) = s.get("require_auth") else {
        return Ok(None);
    };
    parse_require_auth(value)
        .map(Some)
        .map_err(|what| bad_value("require_auth", value, what, origin))
}

/// A method name `require_auth` knows. walrcv implements only some of them;
/// the others (GSSAPI, SSPI, OAuth) it can never use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NamedMethod {
    Usable(AuthMethod),
    NeverUsed,
}

fn named_method(name: &str) -> Option<NamedMethod> {
    Some(match name {
        "password" => NamedMethod::Usable(AuthMethod::Password),
        "md5" => NamedMethod::Usable(AuthMethod::Md5),
        "scram-sha-256" => NamedMethod::Usable(AuthMethod::ScramSha256),
        "none" => NamedMethod::Usable(AuthMethod::None),
        // libpq 18 adds oauth; gss and sspi are older.
        "gss" | "sspi" | "oauth" => NamedMethod::NeverUsed,
        _ => return None,
    })
}

/// libpq 16's `require_auth` parser (`connectOptions2`): a comma-separated
/// list, not trimmed; `!` negates an element, and either every element is
/// negated or none is; a repeated or unknown name is an error. The error is
/// libpq's message.
///
/// Names of methods walrcv never uses are accepted (libpq knows them) and
/// dropped: a server asking for one is refused anyway. A positive list naming
/// only such methods could never be satisfied, so it is refused here.
pub(super) fn parse_require_auth(value: &str) -> Result<RequireAuth, String> {
    let mut negated = false;
    let mut seen: Vec<&str> = Vec::new();
    let mut methods = Vec::new();
    for (index, part) in value.split(',').enumerate() {
        let name = match part.strip_prefix('!') {
            Some(name) if index == 0 || negated => {
                negated = true;
                name
            }
            Some(_) => {
                return Err(format!(
                    "negative require_auth method \"{part}\" cannot be mixed with \
                     non-negative methods"
                ))
            }
            None if negated => {
                return Err(format!(
                    "require_auth method \"{part}\" cannot be mixed with negative methods"
                ))
            }
            None => part,
        };
        let Some(method) = named_method(name) else {
            return Err(format!("invalid require_auth value: \"{name}\""));
        };
        if seen.contains(&name) {
            return Err(format!(
                "require_auth method \"{part}\" is specified more than once"
            ));
        }
        seen.push(name);
        if let NamedMethod::Usable(method) = method {
            methods.push(method);
        }
    }
    if !negated && methods.is_empty() {
        return Err(format!(
            "require_auth={value} names only methods walrcv does not implement \
             (gss, sspi, oauth): no server could satisfy it"
        ));
    }
    Ok(RequireAuth { negated, methods })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(value: &str) -> RequireAuth {
        parse_require_auth(value).unwrap()
    }

    #[test]
    fn positive_lists() {
        assert_eq!(
            ok("scram-sha-256"),
            RequireAuth {
                negated: false,
                methods: vec![AuthMethod::ScramSha256]
            }
        );
        let r = ok("password,md5,none");
        assert!(!r.negated);
        assert_eq!(
            r.methods,
            vec![AuthMethod::Password, AuthMethod::Md5, AuthMethod::None]
        );
        assert!(r.allows(AuthMethod::None));
        assert!(!r.allows(AuthMethod::ScramSha256));
        // gss is known to libpq; walrcv drops it from a list that has others.
        assert_eq!(ok("gss,md5").methods, vec![AuthMethod::Md5]);
    }

    #[test]
    fn negated_lists() {
        let r = ok("!password,!md5");
        assert!(r.negated);
        assert!(!r.allows(AuthMethod::Password));
        assert!(!r.allows(AuthMethod::Md5));
        assert!(r.allows(AuthMethod::ScramSha256));
        assert!(r.allows(AuthMethod::None));
        let r = ok("!none");
        assert!(!r.allows(AuthMethod::None));
        assert!(r.allows(AuthMethod::Password));
        // Refusing only methods walrcv never uses leaves everything allowed.
        let r = ok("!gss,!sspi");
        assert!(r.negated && r.methods.is_empty());
        assert!(r.allows(AuthMethod::Md5));
    }

    #[test]
    fn libpq_errors() {
        for (value, message) in [
            ("foo", "invalid require_auth value: \"foo\""),
            ("password, md5", "invalid require_auth value: \" md5\""),
            ("", "invalid require_auth value: \"\""),
            ("md5,", "invalid require_auth value: \"\""),
            ("!foo", "invalid require_auth value: \"foo\""),
            (
                "md5,!password",
                "negative require_auth method \"!password\" cannot be mixed with non-negative methods",
            ),
            (
                "!md5,password",
                "require_auth method \"password\" cannot be mixed with negative methods",
            ),
            (
                "md5,md5",
                "require_auth method \"md5\" is specified more than once",
            ),
            (
                "!none,!none",
                "require_auth method \"!none\" is specified more than once",
            ),
        ] {
            assert_eq!(parse_require_auth(value), Err(message.to_owned()), "{value}");
        }
    }

    #[test]
    fn unsatisfiable_positive_list() {
        for value in ["gss", "sspi", "gss,sspi", "oauth"] {
            let err = parse_require_auth(value).unwrap_err();
            assert!(err.contains("walrcv does not implement"), "{value}: {err}");
        }
    }
}
