//! Unit tests of resolution: precedence of the layers and every value.

use super::super::test_support::*;
use super::super::*;
use std::path::Path;

// ---- resolve: precedence ----

#[test]
fn defaults() {
    let p = resolve(&Overrides::default(), &FakeEnv::new()).unwrap();
    assert_eq!(
        p,
        ConnParams {
            targets: vec![unix(DEFAULT_SOCKET_DIR, 5432)],
            user: "osuser".into(),
            password: None,
            passfile: None,
            dbname: "replication".into(),
            application_name: "walrcv".into(),
            options: None,
            connect_timeout: None,
            keepalives: true,
            keepalives_idle: None,
            keepalives_interval: None,
            keepalives_count: None,
            tls: TlsSettings::prefer(),
            channel_binding: crate::conninfo::ChannelBinding::Prefer,
            require_auth: None,
            client_encoding: None,
            target_session_attrs: crate::conninfo::TargetSessionAttrs::Any,
            load_balance_hosts: crate::conninfo::LoadBalanceHosts::Disable,
        }
    );
    let env = FakeEnv {
        home: Some("/home/me".into()),
        ..FakeEnv::new()
    };
    let p = resolve(&Overrides::default(), &env).unwrap();
    assert_eq!(p.passfile, Some(PathBuf::from("/home/me/.pgpass")));
    // libpq's default TLS files, filled in whether or not they exist.
    assert_eq!(
        p.tls,
        TlsSettings {
            root_cert: Some(RootCerts::File("/home/me/.postgresql/root.crt".into())),
            cert: Some("/home/me/.postgresql/postgresql.crt".into()),
            key: Some("/home/me/.postgresql/postgresql.key".into()),
            crl: Some("/home/me/.postgresql/root.crl".into()),
            ..TlsSettings::prefer()
        }
    );
}

#[test]
fn no_user_anywhere_is_an_error() {
    let env = FakeEnv::default();
    assert_eq!(
        resolve(&Overrides::default(), &env),
        Err(ConnInfoError::NoUser)
    );
    assert_eq!(resolve(&d("user=u"), &env).unwrap().user, "u");
}

#[test]
fn barman_conninfo() {
    let s = "application_name=barman_receive_wal dbname=replication host=pg \
             options=-cdatestyle=iso replication=true user=streaming_barman";
    let p = resolve_d(s).unwrap();
    assert_eq!(p.targets, vec![tcp("pg", 5432)]);
    assert_eq!(p.user, "streaming_barman");
    assert_eq!(p.application_name, "barman_receive_wal");
    assert_eq!(p.options.as_deref(), Some("-cdatestyle=iso"));
    assert_eq!(p.dbname, "replication");
    assert_eq!(p.password, None);
    assert_eq!(p.tls.mode, SslMode::Prefer);
}

#[test]
fn flags_override_conninfo() {
    let o = Overrides {
        dbname: Some("host=dhost port=1111 user=duser password=dpw".into()),
        host: Some("fhost".into()),
        port: Some("2222".into()),
        user: Some("fuser".into()),
        password: Some("fpw".into()),
    };
    let env = FakeEnv::new()
        .with("PGHOST", "ehost")
        .with("PGPASSWORD", "epw");
    let p = resolve(&o, &env).unwrap();
    assert_eq!(p.targets, vec![tcp("fhost", 2222)]);
    assert_eq!(p.user, "fuser");
    assert_eq!(p.password.as_deref(), Some("fpw"));

    // Empty flags are ignored, as libpq skips empty keyword values.
    let o = Overrides {
        dbname: Some("host=dhost".into()),
        host: Some(String::new()),
        ..Default::default()
    };
    assert_eq!(
        resolve(&o, &FakeEnv::new()).unwrap().targets,
        vec![tcp("dhost", 5432)]
    );
}

#[test]
fn conninfo_overrides_env_and_env_overrides_defaults() {
    let env = FakeEnv::new()
        .with("PGHOST", "ehost")
        .with("PGPORT", "3333")
        .with("PGUSER", "euser")
        .with("PGPASSWORD", "epw")
        .with("PGAPPNAME", "eapp")
        .with("PGCONNECT_TIMEOUT", "7")
        .with("PGSSLMODE", "disable")
        .with("PGPASSFILE", "/e/pgpass")
        .with("PGOPTIONS", "-c x=1")
        .with("PGDATABASE", "edb");
    let p = resolve(&Overrides::default(), &env).unwrap();
    assert_eq!(p.targets, vec![tcp("ehost", 3333)]);
    assert_eq!(p.user, "euser");
    assert_eq!(p.password.as_deref(), Some("epw"));
    assert_eq!(p.application_name, "eapp");
    assert_eq!(p.connect_timeout, Some(Duration::from_secs(7)));
    assert_eq!(p.tls.mode, SslMode::Disable);
    assert_eq!(p.passfile, Some(PathBuf::from("/e/pgpass")));
    assert_eq!(p.options.as_deref(), Some("-c x=1"));
    // PGDATABASE is never used: pg_receivewal always sets dbname.
    assert_eq!(p.dbname, "replication");

    let p = resolve(
        &d("host=dhost port=4444 user=duser password=dpw application_name=dapp sslmode=allow passfile=/d/pgpass"),
        &env,
    )
    .unwrap();
    assert_eq!(p.targets, vec![tcp("dhost", 4444)]);
    assert_eq!(p.user, "duser");
    assert_eq!(p.password.as_deref(), Some("dpw"));
    assert_eq!(p.application_name, "dapp");
    assert_eq!(p.tls.mode, SslMode::Allow);
    assert_eq!(p.passfile, Some(PathBuf::from("/d/pgpass")));

    // An empty value in -d counts as unset: the environment fills it.
    let p = resolve(&d("host='' user="), &env).unwrap();
    assert_eq!(p.targets, vec![tcp("ehost", 3333)]);
    assert_eq!(p.user, "euser");
    // Empty environment variables are unset too.
    let p = resolve(&Overrides::default(), &FakeEnv::new().with("PGHOST", "")).unwrap();
    assert_eq!(p.targets, vec![unix(DEFAULT_SOCKET_DIR, 5432)]);
}

#[test]
fn last_repeated_key_wins() {
    let p = resolve_d("host=a port=1 host=b").unwrap();
    assert_eq!(p.targets, vec![tcp("b", 1)]);
}

#[test]
fn dbname_forms() {
    assert_eq!(resolve_d("mydb").unwrap().dbname, "mydb");
    assert_eq!(resolve_d("dbname=x host=h").unwrap().dbname, "x");
    assert_eq!(resolve_d("host=h").unwrap().dbname, "replication");
    assert_eq!(resolve_d("postgresql://h/urldb").unwrap().dbname, "urldb");
    assert_eq!(resolve_d("").unwrap().dbname, "replication");
}

#[test]
fn uri_resolves() {
    let p = resolve_d("postgresql://u:pw@h1:5433,[::1]/db?application_name=a").unwrap();
    assert_eq!(p.targets, vec![tcp("h1", 5433), tcp("::1", 5432)]);
    assert_eq!(p.user, "u");
    assert_eq!(p.password.as_deref(), Some("pw"));
    assert_eq!(p.application_name, "a");
    let p = resolve_d("postgresql://%2Fvar%2Frun%2Fpostgresql:5444/db").unwrap();
    assert_eq!(p.targets, vec![unix("/var/run/postgresql", 5444)]);
    assert_eq!(
        resolve_d("postgresql://h?ssl=true").unwrap().tls.mode,
        SslMode::Require
    );
}

#[test]
fn application_name_fallbacks() {
    // fallback_application_name is replaced by walrcv's own fallback.
    let p = resolve_d("fallback_application_name=other").unwrap();
    assert_eq!(p.application_name, "walrcv");
    let env = FakeEnv::new().with("PGAPPNAME", "fromenv");
    assert_eq!(
        resolve(&d("fallback_application_name=x"), &env)
            .unwrap()
            .application_name,
        "fromenv"
    );
    assert_eq!(
        resolve(&d("application_name=mine"), &env)
            .unwrap()
            .application_name,
        "mine"
    );
}

// ---- resolve: values ----

#[test]
fn sslmode_policy() {
    for (value, mode) in [
        ("disable", SslMode::Disable),
        ("allow", SslMode::Allow),
        ("prefer", SslMode::Prefer),
        ("require", SslMode::Require),
        ("verify-ca", SslMode::VerifyCa),
        ("verify-full", SslMode::VerifyFull),
    ] {
        let p = resolve_d(&format!("sslmode={value}")).unwrap();
        assert_eq!(p.tls.mode, mode, "{value}");
    }
    assert_eq!(resolve_d("").unwrap().tls.mode, SslMode::Prefer);
    let err = resolve_d("sslmode=bogus").unwrap_err();
    assert!(
        matches!(&err, ConnInfoError::BadValue { key, value, .. } if key == "sslmode" && value == "bogus")
    );
    let env = FakeEnv::new().with("PGSSLMODE", "verify-full");
    assert_eq!(
        resolve(&Overrides::default(), &env).unwrap().tls.mode,
        SslMode::VerifyFull
    );
    // The connection string beats the environment.
    assert_eq!(
        resolve(&d("sslmode=disable"), &env).unwrap().tls.mode,
        SslMode::Disable
    );
    // libpq's deprecated PGREQUIRESSL=1, below PGSSLMODE and the string.
    let env = FakeEnv::new().with("PGREQUIRESSL", "1");
    assert_eq!(
        resolve(&Overrides::default(), &env).unwrap().tls.mode,
        SslMode::Require
    );
    let env = env.with("PGSSLMODE", "allow");
    assert_eq!(
        resolve(&Overrides::default(), &env).unwrap().tls.mode,
        SslMode::Allow
    );
    let env = FakeEnv::new().with("PGREQUIRESSL", "0");
    assert_eq!(
        resolve(&Overrides::default(), &env).unwrap().tls.mode,
        SslMode::Prefer
    );
}

#[test]
fn replication_key() {
    for v in ["true", "on", "yes", "1", "TRUE", "On"] {
        assert!(resolve_d(&format!("replication={v}")).is_ok(), "{v}");
    }
    for v in ["false", "0", "database", "off", "maybe"] {
        let err = resolve_d(&format!("replication={v}")).unwrap_err();
        assert!(
            matches!(&err, ConnInfoError::BadValue { key, .. } if key == "replication"),
            "{v}"
        );
        assert!(err.to_string().contains("physical replication"), "{err}");
    }
}

#[test]
fn host_lists() {
    let p = resolve_d("host=a,b port=5433").unwrap();
    assert_eq!(p.targets, vec![tcp("a", 5433), tcp("b", 5433)]);
    let p = resolve_d("host=a,/tmp,b port=1,2,3").unwrap();
    assert_eq!(p.targets, vec![tcp("a", 1), unix("/tmp", 2), tcp("b", 3)]);
    // Empty entries mean the default host and port.
    let p = resolve_d("host=a,,b port=1,,3").unwrap();
    assert_eq!(
        p.targets,
        vec![tcp("a", 1), unix(DEFAULT_SOCKET_DIR, 5432), tcp("b", 3)]
    );
    // A port list without hosts: must match the single default host.
    let err = resolve_d("host=a,b,c port=1,2").unwrap_err();
    assert!(matches!(&err, ConnInfoError::BadValue { key, .. } if key == "port"));
    assert!(
        err.to_string()
            .contains("could not match 2 port numbers to 3 hosts"),
        "{err}"
    );
    assert!(resolve_d("port=1,2").is_err());
}

#[test]
fn hostaddr() {
    let p = resolve_d("host=db.example hostaddr=10.0.0.1 port=5433").unwrap();
    assert_eq!(
        p.targets,
        vec![Target::Tcp {
            host: "db.example".into(),
            hostaddr: Some("10.0.0.1".into()),
            port: 5433
        }]
    );
    // hostaddr alone: no host name (libpq's empty host).
    let p = resolve_d("hostaddr=10.0.0.1,::1").unwrap();
    assert_eq!(
        p.targets,
        vec![
            Target::Tcp {
                host: String::new(),
                hostaddr: Some("10.0.0.1".into()),
                port: 5432
            },
            Target::Tcp {
                host: String::new(),
                hostaddr: Some("::1".into()),
                port: 5432
            },
        ]
    );
    // Mixed: an empty hostaddr entry falls back to the host entry.
    let p = resolve_d("host=a,b hostaddr=10.0.0.1,").unwrap();
    assert_eq!(
        p.targets,
        vec![
            Target::Tcp {
                host: "a".into(),
                hostaddr: Some("10.0.0.1".into()),
                port: 5432
            },
            tcp("b", 5432),
        ]
    );
    let err = resolve_d("host=a,b,c hostaddr=10.0.0.1,10.0.0.2").unwrap_err();
    assert!(
        err.to_string()
            .contains("could not match 3 host names to 2 hostaddr values"),
        "{err}"
    );
    let err = resolve_d("hostaddr=db.example").unwrap_err();
    assert!(matches!(&err, ConnInfoError::BadValue { key, .. } if key == "hostaddr"));
    let env = FakeEnv::new().with("PGHOSTADDR", "10.1.1.1");
    assert_eq!(
        resolve(&d("host=h"), &env).unwrap().targets,
        vec![Target::Tcp {
            host: "h".into(),
            hostaddr: Some("10.1.1.1".into()),
            port: 5432
        }]
    );
}

#[test]
fn socket_hosts() {
    assert_eq!(
        resolve_d("host=/tmp port=5999").unwrap().targets,
        vec![unix("/tmp", 5999)]
    );
    let err = resolve_d("host=@abstract").unwrap_err();
    assert!(matches!(&err, ConnInfoError::BadValue { key, .. } if key == "host"));
    assert!(err.to_string().contains("abstract"), "{err}");
}

#[test]
fn port_validation() {
    assert_eq!(
        resolve_d("port=' 5433 '").unwrap().targets,
        vec![unix(DEFAULT_SOCKET_DIR, 5433)]
    );
    assert_eq!(
        resolve_d("port=65535").unwrap().targets,
        vec![unix(DEFAULT_SOCKET_DIR, 65535)]
    );
    for bad in ["0", "65536", "-1", "abc", "5432x", "99999999999"] {
        let err = resolve_d(&format!("port={bad}")).unwrap_err();
        assert!(
            matches!(&err, ConnInfoError::BadValue { key, value, .. } if key == "port" && value == bad),
            "{bad}: {err:?}"
        );
    }
    let o = Overrides {
        port: Some("x".into()),
        ..Default::default()
    };
    let err = resolve(&o, &FakeEnv::new()).unwrap_err();
    assert!(err.to_string().contains("command-line"), "{err}");
    let err = resolve(&Overrides::default(), &FakeEnv::new().with("PGPORT", "x")).unwrap_err();
    assert!(err.to_string().contains("PGPORT"), "{err}");
}

#[test]
fn timeouts_and_keepalives() {
    let t = |s: &str| resolve_d(s).map(|p| p.connect_timeout);
    assert_eq!(t("connect_timeout=10"), Ok(Some(Duration::from_secs(10))));
    assert_eq!(t("connect_timeout=1"), Ok(Some(Duration::from_secs(2))));
    assert_eq!(t("connect_timeout=0"), Ok(None));
    assert_eq!(t("connect_timeout=-5"), Ok(None));
    assert!(matches!(
        t("connect_timeout=soon"),
        Err(ConnInfoError::BadValue { .. })
    ));
    assert!(matches!(
        t("connect_timeout=1.5"),
        Err(ConnInfoError::BadValue { .. })
    ));

    let p = resolve_d("keepalives=0").unwrap();
    assert!(!p.keepalives);
    assert!(resolve_d("keepalives=1").unwrap().keepalives);
    assert!(resolve_d("keepalives=yes").is_err());
    let p = resolve_d("keepalives_idle=30 keepalives_interval=5 keepalives_count=3").unwrap();
    assert_eq!(p.keepalives_idle, Some(Duration::from_secs(30)));
    assert_eq!(p.keepalives_interval, Some(Duration::from_secs(5)));
    assert_eq!(p.keepalives_count, Some(3));
    let p = resolve_d("keepalives_idle=0 keepalives_interval=-1 keepalives_count=0").unwrap();
    assert_eq!(
        (p.keepalives_idle, p.keepalives_interval, p.keepalives_count),
        (None, None, None)
    );
    for key in [
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
    ] {
        let err = resolve_d(&format!("{key}=x")).unwrap_err();
        assert!(
            matches!(&err, ConnInfoError::BadValue { key: k, .. } if k == key),
            "{err:?}"
        );
    }
    assert!(resolve_d("tcp_user_timeout=1000").is_ok());
}

#[test]
fn options_and_client_encoding() {
    let p = resolve_d("options='-c wal_sender_timeout=10s -c datestyle=iso'").unwrap();
    assert_eq!(
        p.options.as_deref(),
        Some("-c wal_sender_timeout=10s -c datestyle=iso")
    );
    assert_eq!(
        resolve_d("client_encoding=UTF8")
            .unwrap()
            .client_encoding
            .as_deref(),
        Some("UTF8")
    );
    assert_eq!(
        resolve_d("client_encoding=auto").unwrap().client_encoding,
        None
    );
    let env = FakeEnv::new().with("PGCLIENTENCODING", "LATIN1");
    assert_eq!(
        resolve(&Overrides::default(), &env)
            .unwrap()
            .client_encoding
            .as_deref(),
        Some("LATIN1")
    );
}

#[test]
fn harmless_keys_are_ignored() {
    let s = "sslrootcert=/r sslcert=/c sslkey=/k sslcrl=/l sslpassword=x sslkeylogfile=/f \
             sslcompression=1 sslsni=1 ssl_min_protocol_version=TLSv1.2 \
             ssl_max_protocol_version=TLSv1.3 sslcertmode=allow krbsrvname=postgres \
             gsslib=gssapi gssdelegation=0 gssencmode=prefer channel_binding=prefer \
             target_session_attrs=any load_balance_hosts=disable sslnegotiation=postgres \
             fallback_application_name=f min_protocol_version=3.0 max_protocol_version=latest \
             host=h";
    let p = resolve_d(s).unwrap();
    assert_eq!(p.targets, vec![tcp("h", 5432)]);
    assert_eq!(p.tls.root_cert, Some(RootCerts::File("/r".into())));
    assert_eq!(p.tls.cert.as_deref(), Some(Path::new("/c")));
    assert_eq!(p.tls.key.as_deref(), Some(Path::new("/k")));
    assert_eq!(p.tls.crl.as_deref(), Some(Path::new("/l")));
    assert_eq!(p.tls.key_password, Some(SslPassword("x".into())));
    assert_eq!(p.tls.key_log_file.as_deref(), Some(Path::new("/f")));
    // requirepeer only applies to Unix sockets, as in libpq.
    assert!(resolve_d("host=h requirepeer=postgres").is_ok());
}

#[test]
fn demanding_values_are_refused() {
    for (s, key) in [
        ("gssencmode=require", "gssencmode"),
        ("min_protocol_version=3.2", "min_protocol_version"),
        ("requirepeer=postgres", "requirepeer"),
        ("scram_client_key=c2VjcmV0", "scram_client_key"),
    ] {
        let err = resolve_d(s).unwrap_err();
        assert!(
            matches!(&err, ConnInfoError::Unsupported { key: k, .. } if k == key),
            "{s}: {err:?}"
        );
        assert!(err.to_string().contains(key), "{err}");
    }
    assert!(!resolve_d("scram_client_key=c2VjcmV0")
        .unwrap_err()
        .to_string()
        .contains("c2VjcmV0"));
    for (s, key) in [
        ("gssencmode=maybe", "gssencmode"),
        ("channel_binding=x", "channel_binding"),
        ("max_protocol_version=4.0", "max_protocol_version"),
    ] {
        let err = resolve_d(s).unwrap_err();
        assert!(
            matches!(&err, ConnInfoError::BadValue { key: k, .. } if k == key),
            "{s}: {err:?}"
        );
    }
    // From the environment too.
    let env = FakeEnv::new().with("PGGSSENCMODE", "require");
    assert!(matches!(
        resolve(&Overrides::default(), &env),
        Err(ConnInfoError::Unsupported { .. })
    ));
}

#[test]
fn unknown_key_in_d_is_reported() {
    let err = resolve_d("host=h frobnicate=1").unwrap_err();
    assert_eq!(err, ConnInfoError::UnknownKey("frobnicate".into()));
    assert!(err.to_string().contains("frobnicate"));
    // No '=' at all: a database name, as libpq reads a bare dbname.
    assert_eq!(resolve_d("host pg").unwrap().dbname, "host pg");
    assert!(matches!(
        resolve_d("host=h pg"),
        Err(ConnInfoError::MissingEquals(_))
    ));
}

// ---- target_session_attrs and load_balance_hosts ----

#[test]
fn every_target_session_attrs_value_is_accepted() {
    assert_eq!(
        resolve_d("host=h").unwrap().target_session_attrs,
        TargetSessionAttrs::Any
    );
    for attrs in TargetSessionAttrs::ALL {
        let p = resolve_d(&format!("host=a,b target_session_attrs={attrs}")).unwrap();
        assert_eq!(p.target_session_attrs, attrs);
        assert_eq!(p.targets, vec![tcp("a", 5432), tcp("b", 5432)]);
    }
    let uri = "postgresql://a:5433,b:5434/?target_session_attrs=prefer-standby";
    let p = resolve_d(uri).unwrap();
    assert_eq!(p.target_session_attrs, TargetSessionAttrs::PreferStandby);
    assert_eq!(p.targets, vec![tcp("a", 5433), tcp("b", 5434)]);
}

#[test]
fn load_balance_hosts_values() {
    assert_eq!(
        resolve_d("host=h").unwrap().load_balance_hosts,
        LoadBalanceHosts::Disable
    );
    for (value, want) in [
        ("disable", LoadBalanceHosts::Disable),
        ("random", LoadBalanceHosts::Random),
    ] {
        let p = resolve_d(&format!("host=a,b load_balance_hosts={value}")).unwrap();
        assert_eq!(p.load_balance_hosts, want);
    }
}

#[test]
fn invalid_choices_use_libpq_wording() {
    for (s, key, value) in [
        ("target_session_attrs=x", "target_session_attrs", "x"),
        // Exact spelling, as libpq's strcmp.
        (
            "target_session_attrs=Primary",
            "target_session_attrs",
            "Primary",
        ),
        (
            "target_session_attrs=master",
            "target_session_attrs",
            "master",
        ),
        (
            "load_balance_hosts=doesnotexist",
            "load_balance_hosts",
            "doesnotexist",
        ),
        ("load_balance_hosts=on", "load_balance_hosts", "on"),
    ] {
        let err = resolve_d(s).unwrap_err();
        assert!(
            matches!(&err, ConnInfoError::InvalidChoice { key: k, .. } if k == key),
            "{s}: {err:?}"
        );
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("invalid {key} value: \"{value}\"")),
            "{text}"
        );
        assert!(text.contains("set in the connection string"), "{text}");
    }
    let text = resolve_d("target_session_attrs=x").unwrap_err().to_string();
    assert!(
        text.contains("any, read-write, read-only, primary, standby, prefer-standby"),
        "{text}"
    );
}

#[test]
fn session_attrs_and_load_balancing_from_the_environment() {
    let env = FakeEnv::new()
        .with("PGTARGETSESSIONATTRS", "read-write")
        .with("PGLOADBALANCEHOSTS", "random");
    let p = resolve(&Overrides::default(), &env).unwrap();
    assert_eq!(p.target_session_attrs, TargetSessionAttrs::ReadWrite);
    assert_eq!(p.load_balance_hosts, LoadBalanceHosts::Random);
    // The connection string wins over the environment.
    let p = resolve(&d("target_session_attrs=standby"), &env).unwrap();
    assert_eq!(p.target_session_attrs, TargetSessionAttrs::Standby);
    // A bad value from the environment names the variable.
    let env = FakeEnv::new().with("PGTARGETSESSIONATTRS", "primary-ish");
    let text = resolve(&Overrides::default(), &env)
        .unwrap_err()
        .to_string();
    assert!(text.contains("PGTARGETSESSIONATTRS"), "{text}");
}

#[test]
fn session_attrs_from_a_service_file() {
    let env = FakeEnv::new().with("PGSERVICEFILE", "/svc.conf").with_file(
        "/svc.conf",
        "[ha]\nhost=a,b\ntarget_session_attrs=primary\nload_balance_hosts=random\n",
    );
    let p = resolve(&d("service=ha"), &env).unwrap();
    assert_eq!(p.target_session_attrs, TargetSessionAttrs::Primary);
    assert_eq!(p.load_balance_hosts, LoadBalanceHosts::Random);
    assert_eq!(p.targets, vec![tcp("a", 5432), tcp("b", 5432)]);
}
