//! Unit tests of the password file lookup.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::super::test_support::*;
use super::super::*;
use super::*;

// ---- .pgpass ----

fn pgpass(contents: &str, mode: u32) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(contents.as_bytes()).unwrap();
    f.flush().unwrap();
    std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode)).unwrap();
    f
}

fn params_with(passfile: &Path, user: &str) -> ConnParams {
    let mut p = resolve_d(&format!("user={user}")).unwrap();
    p.passfile = Some(passfile.to_owned());
    p
}

#[test]
fn pgpass_matching() {
    let f = pgpass(
        "# comment line\n\
         \n\
         db1:5432:replication:alice:first\n\
         db1:5432:replication:alice:second\n\
         *:5433:*:alice:wild-host\n\
         db2:*:replication:*:wild-port-user\n\
         db3:5432:otherdb:alice:wrong-db\n\
         db3:5432:*:alice:any-db\n\
         localhost:5432:replication:alice:socket\n\
         /tmp:5432:replication:alice:tmp-socket\n\
         \\:\\:1:5432:replication:alice:ipv6\n\
         esc\\\\aped:5432:replication:alice:pw\\:with\\\\colon:ignored-field\n\
         crlf:5432:replication:alice:crlf-pw\r\n",
        0o600,
    );
    let p = params_with(f.path(), "alice");
    let pw = |t: Target| p.password_for(&t);
    assert_eq!(
        pw(tcp("db1", 5432)).as_deref(),
        Some("first"),
        "first match wins"
    );
    assert_eq!(pw(tcp("anything", 5433)).as_deref(), Some("wild-host"));
    assert_eq!(pw(tcp("db2", 9999)).as_deref(), Some("wild-port-user"));
    assert_eq!(pw(tcp("db3", 5432)).as_deref(), Some("any-db"));
    assert_eq!(pw(tcp("nomatch", 5432)), None);
    assert_eq!(pw(tcp("db1", 5434)), None);
    assert_eq!(
        pw(unix(DEFAULT_SOCKET_DIR, 5432)).as_deref(),
        Some("socket")
    );
    assert_eq!(pw(unix("/tmp", 5432)).as_deref(), Some("tmp-socket"));
    assert_eq!(pw(tcp("::1", 5432)).as_deref(), Some("ipv6"));
    assert_eq!(
        pw(tcp("esc\\aped", 5432)).as_deref(),
        Some("pw:with\\colon")
    );
    assert_eq!(pw(tcp("crlf", 5432)).as_deref(), Some("crlf-pw"));
    // hostaddr-only targets match on the address.
    let t = Target::Tcp {
        host: String::new(),
        hostaddr: Some("::1".into()),
        port: 5432,
    };
    assert_eq!(pw(t).as_deref(), Some("ipv6"));

    // Another user only gets the wildcard-user line.
    let p = params_with(f.path(), "bob");
    assert_eq!(p.password_for(&tcp("db1", 5432)), None);
    assert_eq!(
        p.password_for(&tcp("db2", 1)).as_deref(),
        Some("wild-port-user")
    );
}

#[test]
fn pgpass_dbname_is_matched() {
    let f = pgpass("h:5432:replication:u:repl\nh:5432:mydb:u:mine\n", 0o600);
    let mut p = resolve_d("dbname=mydb user=u").unwrap();
    p.passfile = Some(f.path().to_owned());
    assert_eq!(p.password_for(&tcp("h", 5432)).as_deref(), Some("mine"));
}

#[test]
fn pgpass_wildcard_is_a_whole_field_only() {
    // "*x" is not a pattern; "\*" is a literal star.
    let f = pgpass("*x:*:*:*:no\n\\*:*:*:*:star\n", 0o600);
    let p = params_with(f.path(), "u");
    assert_eq!(p.password_for(&tcp("ax", 5432)), None);
    assert_eq!(p.password_for(&tcp("*", 5432)).as_deref(), Some("star"));
}

#[test]
fn pgpass_explicit_password_wins() {
    let f = pgpass("*:*:*:*:file\n", 0o600);
    let mut p = params_with(f.path(), "u");
    assert_eq!(p.password_for(&tcp("h", 5432)).as_deref(), Some("file"));
    p.password = Some("explicit".into());
    assert_eq!(p.password_for(&tcp("h", 5432)).as_deref(), Some("explicit"));
}

#[test]
fn pgpass_insecure_missing_or_not_a_file_is_ignored() {
    let f = pgpass("*:*:*:*:file\n", 0o644);
    assert_eq!(
        params_with(f.path(), "u").password_for(&tcp("h", 5432)),
        None
    );
    let f = pgpass("*:*:*:*:file\n", 0o640);
    assert_eq!(
        params_with(f.path(), "u").password_for(&tcp("h", 5432)),
        None
    );
    let f = pgpass("*:*:*:*:file\n", 0o400);
    assert_eq!(
        params_with(f.path(), "u")
            .password_for(&tcp("h", 5432))
            .as_deref(),
        Some("file")
    );

    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        params_with(&dir.path().join("missing"), "u").password_for(&tcp("h", 5432)),
        None
    );
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(
        params_with(dir.path(), "u").password_for(&tcp("h", 5432)),
        None
    );

    let mut p = params_with(f.path(), "u");
    p.passfile = None;
    assert_eq!(p.password_for(&tcp("h", 5432)), None);
}

#[test]
fn pgpass_empty_first_match_stops_the_search() {
    let f = pgpass("h:*:*:*:\n*:*:*:*:later\n", 0o600);
    assert_eq!(
        params_with(f.path(), "u").password_for(&tcp("h", 5432)),
        None
    );
}

#[test]
fn pgpass_path_from_home_pgpassfile_and_key() {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join(".pgpass");
    std::fs::write(&file, "*:*:*:*:fromhome\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let env = FakeEnv {
        home: Some(home.path().to_owned()),
        ..FakeEnv::new()
    };
    let p = resolve(&d("host=h"), &env).unwrap();
    assert_eq!(p.password_for(&p.targets[0]).as_deref(), Some("fromhome"));

    let other = pgpass("*:*:*:*:fromenv\n", 0o600);
    let env = FakeEnv {
        home: Some(home.path().to_owned()),
        ..FakeEnv::new()
    }
    .with("PGPASSFILE", other.path().to_str().unwrap());
    let p = resolve(&d("host=h"), &env).unwrap();
    assert_eq!(p.password_for(&p.targets[0]).as_deref(), Some("fromenv"));

    let keyed = pgpass("*:*:*:*:fromkey\n", 0o600);
    let p = resolve(
        &d(&format!("host=h passfile='{}'", keyed.path().display())),
        &env,
    )
    .unwrap();
    assert_eq!(p.password_for(&p.targets[0]).as_deref(), Some("fromkey"));

    // An explicit empty password means "none": the file is used.
    let p = resolve(&d("host=h password=''"), &env).unwrap();
    assert_eq!(p.password, None);
    assert_eq!(p.password_for(&p.targets[0]).as_deref(), Some("fromenv"));
}

#[test]
fn pgpass_field_matcher() {
    assert_eq!(pgpass_match_field(b"abc:rest", b"abc"), Some(&b"rest"[..]));
    assert_eq!(pgpass_match_field(b"*:rest", b"abc"), Some(&b"rest"[..]));
    assert_eq!(pgpass_match_field(b"ab:rest", b"abc"), None);
    assert_eq!(pgpass_match_field(b"abcd:rest", b"abc"), None);
    assert_eq!(pgpass_match_field(b"abc", b"abc"), None);
    assert_eq!(
        pgpass_match_field(b"a\\:b:rest", b"a:b"),
        Some(&b"rest"[..])
    );
    assert_eq!(pgpass_match_field(b"abc\\", b"abc"), None);
    assert_eq!(pgpass_unescape_password(b"a\\:b\\\\c:d"), b"a:b\\c");
    assert_eq!(pgpass_unescape_password(b"trailing\\"), b"trailing\\");
}
