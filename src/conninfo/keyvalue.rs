//! The `key = value` form of a connection string (libpq's `conninfo_parse`).

use super::keywords::{is_secret, keyword};
use super::ConnInfoError;

/// libpq's `isspace` in the C locale (Rust's `is_ascii_whitespace` lacks `\v`).
pub(super) fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

/// libpq's `conninfo_parse`: `key = value` pairs separated by whitespace;
/// values either single-quoted (`\` escapes any character) or running to the
/// next whitespace (`\` escapes there too).
pub(super) fn parse_key_value(s: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
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

#[cfg(test)]
mod tests {
    use super::super::keywords::KEYWORDS;
    use super::super::test_support::*;
    use super::super::*;

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
}
