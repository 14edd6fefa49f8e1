//! Unit tests of connection services: the file parser and the lookup order.

use super::super::test_support::*;
use super::super::*;
use super::*;

const FILE: &str = "\
# a comment
[other]
host=elsewhere
garbage line in another section is not read

  [mydb]  
  host = pg1.example  
port=5433
# comment inside
sslmode=verify-full

password=se=cret
[next]
host=never
[mydb]
host=second-definition-ignored
";

fn setting(key: &'static str, value: &str, line: usize) -> ServiceSetting {
    ServiceSetting {
        key,
        value: value.to_owned(),
        line,
    }
}

#[test]
fn parser_reads_only_the_named_section() {
    assert_eq!(
        find_service(FILE, "mydb").unwrap(),
        Some(vec![
            setting("host", "pg1.example", 7),
            setting("port", "5433", 8),
            setting("sslmode", "verify-full", 10),
            // Split at the first '=': the value may contain more.
            setting("password", "se=cret", 12),
        ])
    );
    assert_eq!(
        find_service(FILE, "other"),
        Err(ServiceFileError::MissingEquals { line: 4 })
    );
    assert_eq!(find_service(FILE, "absent").unwrap(), None);
    assert_eq!(find_service("", "mydb").unwrap(), None);
    // libpq compares the start of the header line only.
    assert_eq!(
        find_service("[mydb] trailing\nhost=h\r\n", "mydb").unwrap(),
        Some(vec![setting("host", "h", 2)])
    );
    // A prefix of the name is not the name.
    assert_eq!(find_service("[my]\nhost=h\n", "mydb").unwrap(), None);
    assert_eq!(find_service("[mydbx]\nhost=h\n", "mydb").unwrap(), None);
    // An empty section is found, with nothing in it.
    assert_eq!(find_service("[mydb]\n", "mydb").unwrap(), Some(vec![]));
}

#[test]
fn parser_errors_name_the_line() {
    assert_eq!(
        find_service("[s]\n\nservice=other\n", "s"),
        Err(ServiceFileError::NestedService { line: 3 })
    );
    assert_eq!(
        find_service("[s]\nhots=h\n", "s"),
        Err(ServiceFileError::UnknownKey {
            line: 2,
            key: "hots".into()
        })
    );
    let err = find_service("[s]\npassword secret\n", "s").unwrap_err();
    assert_eq!(err, ServiceFileError::MissingEquals { line: 2 });
    assert!(!err.to_string().contains("secret"));
}

fn home_env() -> FakeEnv {
    FakeEnv {
        home: Some("/home/me".into()),
        ..FakeEnv::new()
    }
}

#[test]
fn service_settings_fill_what_the_string_left_unset() {
    let env = home_env().with_file("/home/me/.pg_service.conf", FILE);
    let p = resolve(&d("service=mydb port=6000"), &env).unwrap();
    assert_eq!(p.targets, vec![tcp("pg1.example", 6000)]);
    assert_eq!(p.tls.mode, SslMode::VerifyFull);
    assert_eq!(p.password.as_deref(), Some("se=cret"));
    // Flags beat the service too.
    let o = Overrides {
        dbname: Some("service=mydb".into()),
        host: Some("flaghost".into()),
        ..Default::default()
    };
    assert_eq!(
        resolve(&o, &env).unwrap().targets,
        vec![tcp("flaghost", 5433)]
    );
}

#[test]
fn service_beats_the_environment() {
    let env = home_env()
        .with_file("/home/me/.pg_service.conf", FILE)
        .with("PGHOST", "envhost")
        .with("PGUSER", "envuser")
        .with("PGSERVICE", "mydb");
    let p = resolve(&Overrides::default(), &env).unwrap();
    assert_eq!(p.targets, vec![tcp("pg1.example", 5433)]);
    // What the service does not set still comes from the environment.
    assert_eq!(p.user, "envuser");
    // service= in the string beats PGSERVICE.
    let env = env.with_file(
        "/home/me/.pg_service.conf",
        "[a]\nhost=ha\n[mydb]\nhost=hm\n",
    );
    let p = resolve(&d("service=a"), &env).unwrap();
    assert_eq!(p.targets, vec![tcp("ha", 5432)]);
}

#[test]
fn lookup_order_user_file_then_system_file() {
    let system = "[mydb]\nhost=from-system\n[sysonly]\nhost=sys\n";
    let env = home_env()
        .with_file("/home/me/.pg_service.conf", "[mydb]\nhost=from-home\n")
        .with_file("/etc/postgresql-common/pg_service.conf", system);
    let host = |env: &FakeEnv, s: &str| resolve(&d(s), env).map(|p| p.targets);
    assert_eq!(
        host(&env, "service=mydb").unwrap(),
        vec![tcp("from-home", 5432)]
    );
    // Not in the user file: the system file.
    assert_eq!(
        host(&env, "service=sysonly").unwrap(),
        vec![tcp("sys", 5432)]
    );
    // PGSERVICEFILE replaces ~/.pg_service.conf.
    let env2 = home_env()
        .with_file("/home/me/.pg_service.conf", "[mydb]\nhost=from-home\n")
        .with_file("/srv/services.conf", "[mydb]\nhost=from-pgservicefile\n")
        .with("PGSERVICEFILE", "/srv/services.conf");
    assert_eq!(
        host(&env2, "service=mydb").unwrap(),
        vec![tcp("from-pgservicefile", 5432)]
    );
    // PGSYSCONFDIR moves the system file.
    let env3 = FakeEnv::new()
        .with_file(
            "/opt/pg/etc/pg_service.conf",
            "[mydb]\nhost=from-sysconfdir\n",
        )
        .with("PGSYSCONFDIR", "/opt/pg/etc");
    assert_eq!(
        host(&env3, "service=mydb").unwrap(),
        vec![tcp("from-sysconfdir", 5432)]
    );
}

#[test]
fn lookup_errors() {
    let env = home_env();
    assert_eq!(
        resolve(&d("service=nowhere"), &env),
        Err(ConnInfoError::ServiceNotFound("nowhere".into()))
    );
    assert_eq!(
        ConnInfoError::ServiceNotFound("x".into()).to_string(),
        "definition of service \"x\" not found"
    );
    // A PGSERVICEFILE that does not exist is an error, not a skip.
    let env = home_env().with("PGSERVICEFILE", "/missing.conf");
    let err = resolve(&d("service=s"), &env).unwrap_err();
    assert!(
        matches!(&err, ConnInfoError::ServiceFile { path, .. } if path == "/missing.conf"),
        "{err:?}"
    );
    // An error in the service's section names the file and line, not the value.
    let env = home_env().with_file(
        "/home/me/.pg_service.conf",
        "[s]\nhost=h\nservice=t\npassword=hunter2\n",
    );
    let err = resolve(&d("service=s"), &env).unwrap_err().to_string();
    assert!(err.contains("/home/me/.pg_service.conf"), "{err}");
    assert!(err.contains("line 3"), "{err}");
    // A bad value from the service says where it came from.
    let env = home_env().with_file("/home/me/.pg_service.conf", "[s]\n\nsslmode=sometimes\n");
    let err = resolve(&d("service=s"), &env).unwrap_err().to_string();
    assert!(err.contains("service file, line 3"), "{err}");
}
