//! Unit tests of the TLS keywords' resolution.

use super::super::test_support::*;
use super::super::*;

fn tls(conninfo: &str) -> Result<TlsSettings, ConnInfoError> {
    resolve_d(conninfo).map(|p| p.tls)
}

fn conflict(conninfo: &str) -> String {
    match resolve_d(conninfo) {
        Err(ConnInfoError::Conflict(message)) => message,
        other => panic!("{conninfo}: expected a conflict, got {other:?}"),
    }
}

#[test]
fn system_roots_imply_verify_full() {
    let t = tls("sslrootcert=system").unwrap();
    assert_eq!(t.root_cert, Some(RootCerts::System));
    assert_eq!(t.mode, SslMode::VerifyFull);
    assert_eq!(
        tls("sslrootcert=system sslmode=verify-full").unwrap().mode,
        SslMode::VerifyFull
    );
    for mode in ["disable", "allow", "prefer", "require", "verify-ca"] {
        assert_eq!(
            conflict(&format!("sslrootcert=system sslmode={mode}")),
            format!(
                "weak sslmode \"{mode}\" may not be used with sslrootcert=system (use \"verify-full\")"
            )
        );
    }
    // PGSSLMODE is an explicit sslmode too.
    let env = FakeEnv::new().with("PGSSLMODE", "require");
    assert!(matches!(
        resolve(&d("sslrootcert=system"), &env),
        Err(ConnInfoError::Conflict(_))
    ));
    // And PGSSLROOTCERT=system strengthens the default.
    let env = FakeEnv::new().with("PGSSLROOTCERT", "system");
    assert_eq!(
        resolve(&Overrides::default(), &env).unwrap().tls.mode,
        SslMode::VerifyFull
    );
}

#[test]
fn files_from_keywords_environment_and_home() {
    let env = FakeEnv {
        home: Some("/home/me".into()),
        ..FakeEnv::new()
    }
    .with("PGSSLCERT", "/env/client.crt")
    .with("PGSSLKEY", "/env/client.key")
    .with("PGSSLROOTCERT", "/env/root.crt")
    .with("PGSSLCRL", "/env/root.crl");
    let t = resolve(&Overrides::default(), &env).unwrap().tls;
    assert_eq!(t.cert, Some("/env/client.crt".into()));
    assert_eq!(t.key, Some("/env/client.key".into()));
    assert_eq!(t.root_cert, Some(RootCerts::File("/env/root.crt".into())));
    assert_eq!(t.crl, Some("/env/root.crl".into()));
    // The connection string beats the environment.
    let t = resolve(&d("sslcert=/cs/c.crt sslrootcert=/cs/r.crt"), &env)
        .unwrap()
        .tls;
    assert_eq!(t.cert, Some("/cs/c.crt".into()));
    assert_eq!(t.root_cert, Some(RootCerts::File("/cs/r.crt".into())));
    // No home directory and nothing set: no files at all.
    let t = tls("").unwrap();
    assert_eq!(
        (t.root_cert, t.cert, t.key, t.crl),
        (None, None, None, None)
    );
}

#[test]
fn client_certificate_mode() {
    let env = FakeEnv {
        home: Some("/home/me".into()),
        ..FakeEnv::new()
    };
    let with_cert = resolve(&d("sslcertmode=allow"), &env).unwrap().tls;
    assert!(with_cert.cert.is_some() && with_cert.key.is_some());
    // disable: never send one, even the explicit one.
    let t = resolve(&d("sslcertmode=disable sslcert=/c sslkey=/k"), &env)
        .unwrap()
        .tls;
    assert_eq!((t.cert, t.key), (None, None));
    let t = resolve(&d("sslcertmode=require"), &env).unwrap().tls;
    assert!(t.require_cert_request && t.cert.is_some());
    assert!(!with_cert.require_cert_request);
    assert!(matches!(
        resolve_d("sslcertmode=maybe"),
        Err(ConnInfoError::BadValue { .. })
    ));
}

#[test]
fn protocol_versions() {
    let t = tls("").unwrap();
    assert_eq!(t.min_protocol_version, Some(TlsVersion::Tls1_2));
    assert_eq!(t.max_protocol_version, None);
    let t = tls("ssl_min_protocol_version=tlsv1.3 ssl_max_protocol_version=TLSv1.3").unwrap();
    assert_eq!(t.min_protocol_version, Some(TlsVersion::Tls1_3));
    assert_eq!(t.max_protocol_version, Some(TlsVersion::Tls1_3));
    let t = tls("ssl_max_protocol_version=TLSv1.2").unwrap();
    assert_eq!(t.max_protocol_version, Some(TlsVersion::Tls1_2));
    assert_eq!(
        conflict("ssl_min_protocol_version=TLSv1.3 ssl_max_protocol_version=TLSv1.2"),
        "invalid SSL protocol version range"
    );
    // The whole range libpq accepts.
    let t = tls("ssl_min_protocol_version=TLSv1 ssl_max_protocol_version=tlsv1.1").unwrap();
    assert_eq!(t.min_protocol_version, Some(TlsVersion::Tls1));
    assert_eq!(t.max_protocol_version, Some(TlsVersion::Tls1_1));
    assert_eq!(
        conflict("ssl_min_protocol_version=TLSv1.1 ssl_max_protocol_version=TLSv1"),
        "invalid SSL protocol version range"
    );
    for key in ["ssl_min_protocol_version", "ssl_max_protocol_version"] {
        let err = resolve_d(&format!("{key}=SSLv3")).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("invalid \"{key}\" value: \"SSLv3\"")),
            "{err}"
        );
    }
    let env = FakeEnv::new().with("PGSSLMINPROTOCOLVERSION", "TLSv1.3");
    assert_eq!(
        resolve(&Overrides::default(), &env)
            .unwrap()
            .tls
            .min_protocol_version,
        Some(TlsVersion::Tls1_3)
    );
}

#[test]
fn negotiation() {
    assert_eq!(tls("").unwrap().negotiation, SslNegotiation::Postgres);
    for mode in ["require", "verify-ca", "verify-full"] {
        let t = tls(&format!("sslnegotiation=direct sslmode={mode}")).unwrap();
        assert_eq!(t.negotiation, SslNegotiation::Direct);
    }
    for mode in ["disable", "allow", "prefer"] {
        assert_eq!(
            conflict(&format!("sslnegotiation=direct sslmode={mode}")),
            format!(
                "weak sslmode \"{mode}\" may not be used with sslnegotiation=direct \
                 (use \"require\", \"verify-ca\", or \"verify-full\")"
            )
        );
    }
    // The default sslmode (prefer) is too weak as well.
    assert!(conflict("sslnegotiation=direct").contains("\"prefer\""));
    let env = FakeEnv::new()
        .with("PGSSLNEGOTIATION", "direct")
        .with("PGSSLMODE", "require");
    assert_eq!(
        resolve(&Overrides::default(), &env)
            .unwrap()
            .tls
            .negotiation,
        SslNegotiation::Direct
    );
    assert!(matches!(
        resolve_d("sslnegotiation=tls"),
        Err(ConnInfoError::BadValue { .. })
    ));
}

#[test]
fn sni_and_crl_dir() {
    assert!(tls("").unwrap().sni);
    assert!(tls("sslsni=1").unwrap().sni);
    assert!(!tls("sslsni=0").unwrap().sni);
    let env = FakeEnv::new().with("PGSSLSNI", "0");
    assert!(!resolve(&Overrides::default(), &env).unwrap().tls.sni);
    assert!(matches!(
        resolve_d("sslsni=on"),
        Err(ConnInfoError::BadValue { .. })
    ));
    // sslcrldir, and libpq's rule that the default root.crl is used only
    // when neither sslcrl nor sslcrldir is set.
    let env = FakeEnv {
        home: Some("/home/me".into()),
        ..FakeEnv::new()
    };
    let t = resolve(&d("sslcrldir=/etc/crls"), &env).unwrap().tls;
    assert_eq!(t.crl_dir, Some("/etc/crls".into()));
    assert_eq!(t.crl, None);
    let t = resolve(&d("sslcrldir=/etc/crls sslcrl=/c.crl"), &env)
        .unwrap()
        .tls;
    assert_eq!(t.crl, Some("/c.crl".into()));
    let t = resolve(&d(""), &env).unwrap().tls;
    assert_eq!(t.crl, Some("/home/me/.postgresql/root.crl".into()));
    let env = FakeEnv::new().with("PGSSLCRLDIR", "/env/crls");
    assert_eq!(
        resolve(&Overrides::default(), &env).unwrap().tls.crl_dir,
        Some("/env/crls".into())
    );
}

#[test]
fn channel_binding_and_require_auth() {
    assert_eq!(
        resolve_d("").unwrap().channel_binding,
        ChannelBinding::Prefer
    );
    for (value, binding) in [
        ("disable", ChannelBinding::Disable),
        ("prefer", ChannelBinding::Prefer),
        ("require", ChannelBinding::Require),
    ] {
        let p = resolve_d(&format!("channel_binding={value}")).unwrap();
        assert_eq!(p.channel_binding, binding);
    }
    assert!(conflict("channel_binding=require sslmode=disable")
        .contains("channel binding required, but SSL not in use"));
    let env = FakeEnv::new().with("PGCHANNELBINDING", "require");
    assert_eq!(
        resolve(&Overrides::default(), &env)
            .unwrap()
            .channel_binding,
        ChannelBinding::Require
    );
    assert!(matches!(
        resolve_d("channel_binding=x"),
        Err(ConnInfoError::BadValue { .. })
    ));

    assert_eq!(resolve_d("").unwrap().require_auth, None);
    let p = resolve_d("require_auth=scram-sha-256").unwrap();
    assert_eq!(
        p.require_auth,
        Some(RequireAuth {
            negated: false,
            methods: vec![AuthMethod::ScramSha256]
        })
    );
    let env = FakeEnv::new().with("PGREQUIREAUTH", "!password");
    let r = resolve(&Overrides::default(), &env)
        .unwrap()
        .require_auth
        .unwrap();
    assert!(r.negated && !r.allows(AuthMethod::Password));
    let err = resolve_d("require_auth=foo").unwrap_err();
    assert!(matches!(&err, ConnInfoError::BadValue { key, .. } if key == "require_auth"));
    assert!(
        err.to_string()
            .contains("invalid require_auth value: \"foo\""),
        "{err}"
    );
}
