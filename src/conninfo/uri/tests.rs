//! Unit tests of the URI parser and its redaction.

use super::super::test_support::*;
use super::super::*;

// ---- URIs ----

#[test]
fn uri_full() {
    assert_eq!(
        parse(
            "postgresql://bob:s3cret@db.example.com:5433/mydb?application_name=x&sslmode=disable"
        )
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
