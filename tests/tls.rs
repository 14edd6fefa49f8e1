//! TLS against real servers (issue 9): certificates made here with rcgen (a
//! CA, a server certificate for DNS `localhost` and IP `127.0.0.1`, a revoked
//! one and its CRL, client certificates from the right and a wrong CA);
//! servers with `ssl = on` and `hostssl`/`hostnossl` lines. Every sslmode
//! against a TLS server and a plain server gives the outcome psql (libpq 15)
//! gives for the same settings; the oracle runs beside walrcv in each case.
//!
//! These tests build `ConnParams` by hand (the `ssl*` keywords are resolved
//! by the conninfo work of issue 9) and connect with `walrcv::pgwire`.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use walrcv::conninfo::{
    ChannelBinding, ConnParams, RootCerts, SslMode, SslNegotiation, SslPassword, Target,
    TlsSettings, TlsVersion,
};
use walrcv::pgwire::tls::TlsError;
use walrcv::pgwire::{Connection, PgError, PgErrorKind};

use crate::support::{conn_params, Auth, PgServer, Walrcv, SUPERUSER, SUPERUSER_PASSWORD};

const ROLE_PASSWORD: &str = "tls-role-secret";
const ALL_MODES: [SslMode; 6] = [
    SslMode::Disable,
    SslMode::Allow,
    SslMode::Prefer,
    SslMode::Require,
    SslMode::VerifyCa,
    SslMode::VerifyFull,
];

fn mode_name(mode: SslMode) -> &'static str {
    match mode {
        SslMode::Disable => "disable",
        SslMode::Allow => "allow",
        SslMode::Prefer => "prefer",
        SslMode::Require => "require",
        SslMode::VerifyCa => "verify-ca",
        SslMode::VerifyFull => "verify-full",
    }
}

/// The test's certificates, as files in a directory the server can read.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

fn leaf_params(cn: &str, sans: Vec<SanType>, serial: u64) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.subject_alt_names = sans;
    p.serial_number = Some(SerialNumber::from(serial));
    p
}

/// Writes a file; a private key gets 0600 and, when the tests run as root,
/// the server's OS user as owner (PostgreSQL refuses anything looser).
fn write(dir: &Path, name: &str, text: &str, server_key: bool) {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    let mode = if name.ends_with(".key") { 0o600 } else { 0o644 };
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    if server_key && nix::unistd::geteuid().is_root() {
        let user = nix::unistd::User::from_name("postgres").unwrap().unwrap();
        nix::unistd::chown(&path, Some(user.uid), Some(user.gid)).unwrap();
    }
}

/// CA `root.crt`, `server.crt` (localhost, 127.0.0.1), `revoked.crt` and
/// `root.crl` revoking it, `client.crt` for role `certuser`, and from a
/// second CA `other-root.crt` and `wrong-client.crt` (also `certuser`).
fn make_pki() -> Pki {
    let dir = tempfile::Builder::new()
        .prefix("walrcv-tls")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = dir.path();
    let server_sans = || {
        vec![
            SanType::DnsName("localhost".try_into().unwrap()),
            SanType::IpAddress("127.0.0.1".parse().unwrap()),
        ]
    };
    let ca_key = KeyPair::generate().unwrap();
    let root_params = ca_params("walrcv test CA");
    write(
        d,
        "root.crt",
        &root_params.self_signed(&ca_key).unwrap().pem(),
        false,
    );
    let ca = Issuer::new(root_params, ca_key);

    let leaf = |name: &str,
                cn: &str,
                sans: Vec<SanType>,
                serial: u64,
                issuer: &Issuer<KeyPair>,
                server: bool| {
        let key = KeyPair::generate().unwrap();
        let cert = leaf_params(cn, sans, serial)
            .signed_by(&key, issuer)
            .unwrap();
        write(d, &format!("{name}.crt"), &cert.pem(), false);
        write(d, &format!("{name}.key"), &key.serialize_pem(), server);
    };
    leaf("server", "localhost", server_sans(), 2, &ca, true);
    leaf("revoked", "localhost", server_sans(), 3, &ca, true);
    leaf("client", "certuser", vec![], 4, &ca, false);

    let crl = CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2020, 1, 1),
        next_update: rcgen::date_time_ymd(4000, 1, 1),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![RevokedCertParams {
            serial_number: SerialNumber::from(3u64),
            revocation_time: rcgen::date_time_ymd(2021, 1, 1),
            reason_code: None,
            invalidity_date: None,
        }],
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&ca)
    .unwrap();
    write(d, "root.crl", &crl.pem().unwrap(), false);

    let other_key = KeyPair::generate().unwrap();
    let other_params = ca_params("walrcv other CA");
    write(
        d,
        "other-root.crt",
        &other_params.self_signed(&other_key).unwrap().pem(),
        false,
    );
    let other = Issuer::new(other_params, other_key);
    leaf("wrong-client", "certuser", vec![], 5, &other, false);
    Pki { dir }
}

/// A server with TLS on (`cert` is `server` or `revoked`) and these lines
/// before the harness's `host ... scram-sha-256`: `certuser` only by client
/// certificate, `sslonly` never without TLS, `plainonly` never with it.
fn tls_server(pki: &Pki, major: u32, cert: &str) -> PgServer {
    let mut b = PgServer::builder()
        .major(major)
        .wal_segsize_mb(1)
        .auth(Auth::Scram)
        .conf("ssl = on")
        .conf(&format!(
            "ssl_cert_file = '{}'",
            pki.path(&format!("{cert}.crt")).display()
        ))
        .conf(&format!(
            "ssl_key_file = '{}'",
            pki.path(&format!("{cert}.key")).display()
        ))
        .conf(&format!(
            "ssl_ca_file = '{}'",
            pki.path("root.crt").display()
        ));
    for db in ["replication", "all"] {
        b = b
            .hba(&format!("hostssl {db} certuser 127.0.0.1/32 cert"))
            .hba(&format!("hostnossl {db} certuser 127.0.0.1/32 reject"))
            .hba(&format!("hostnossl {db} sslonly 127.0.0.1/32 reject"))
            .hba(&format!("hostssl {db} plainonly 127.0.0.1/32 reject"));
    }
    let pg = b.start();
    for role in ["sslonly", "plainonly"] {
        pg.create_role(role, Some(ROLE_PASSWORD), true);
    }
    pg.create_role("certuser", None, true);
    pg
}

fn plain_server() -> PgServer {
    PgServer::builder().auth(Auth::Scram).start()
}

/// What a connection attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Refused,
    Plain,
    Tls,
}

/// The settings of one case, for walrcv and for psql alike.
#[derive(Clone)]
struct Case {
    host: String,
    hostaddr: Option<String>,
    port: u16,
    user: String,
    password: Option<String>,
    tls: TlsSettings,
}

impl Case {
    fn new(port: u16, user: &str, mode: SslMode, pki: &Pki) -> Case {
        Case {
            host: "localhost".into(),
            hostaddr: Some("127.0.0.1".into()),
            port,
            user: user.into(),
            password: match user {
                SUPERUSER => Some(SUPERUSER_PASSWORD.into()),
                "certuser" => None,
                _ => Some(ROLE_PASSWORD.into()),
            },
            tls: TlsSettings {
                mode,
                root_cert: Some(RootCerts::File(pki.path("root.crt"))),
                cert: Some(pki.path("no-client.crt")),
                key: Some(pki.path("no-client.key")),
                ..TlsSettings::prefer()
            },
        }
    }

    fn params(&self) -> ConnParams {
        ConnParams {
            targets: vec![Target::Tcp {
                host: self.host.clone(),
                hostaddr: self.hostaddr.clone(),
                port: self.port,
            }],
            application_name: "walrcv_tls_test".into(),
            connect_timeout: Some(Duration::from_secs(10)),
            tls: self.tls.clone(),
            ..conn_params(self.port, &self.user, self.password.as_deref())
        }
    }

    /// walrcv's outcome, and its error's text when refused.
    fn walrcv(&self) -> (Outcome, String) {
        match connect(&self.params()) {
            Ok(c) if c.is_tls() => (Outcome::Tls, String::new()),
            Ok(_) => (Outcome::Plain, String::new()),
            Err(e) => (Outcome::Refused, e.to_string()),
        }
    }

    /// libpq's outcome: psql 15 with the same settings, asked whether its
    /// own connection is encrypted.
    fn psql(&self, pg: &PgServer) -> (Outcome, String) {
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        let root = match &self.tls.root_cert {
            Some(RootCerts::File(p)) => p.display().to_string(),
            Some(RootCerts::System) => "system".into(),
            None => String::new(),
        };
        let mut conninfo = format!(
            "host='{}' port={} user={} dbname=postgres sslmode={} sslrootcert='{root}' sslcert='{}' sslkey='{}' sslcrl='{}'",
            self.host,
            self.port,
            self.user,
            mode_name(self.tls.mode),
            path(&self.tls.cert),
            path(&self.tls.key),
            path(&self.tls.crl),
        );
        if let Some(a) = &self.hostaddr {
            conninfo.push_str(&format!(" hostaddr={a}"));
        }
        if let Some(pw) = &self.tls.key_password {
            conninfo.push_str(&format!(" sslpassword='{}'", pw.0));
        }
        if let Some(dir) = &self.tls.crl_dir {
            conninfo.push_str(&format!(" sslcrldir='{}'", dir.display()));
        }
        let version = |v: Option<TlsVersion>| v.map(walrcv::pgwire::tls::version_name);
        if let Some(v) = version(self.tls.min_protocol_version) {
            conninfo.push_str(&format!(" ssl_min_protocol_version={v}"));
        }
        if let Some(v) = version(self.tls.max_protocol_version) {
            conninfo.push_str(&format!(" ssl_max_protocol_version={v}"));
        }
        let home = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(pg.bin("psql"));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("PG") {
                cmd.env_remove(k);
            }
        }
        cmd.env("HOME", home.path())
            .env("PGCONNECT_TIMEOUT", "10")
            .args(["-XAtqw", "-d", &conninfo, "-c"])
            .arg("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()");
        if let Some(pw) = &self.password {
            cmd.env("PGPASSWORD", pw);
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        match (out.status.success(), stdout.as_str()) {
            (true, "t") => (Outcome::Tls, String::new()),
            (true, "f") => (Outcome::Plain, String::new()),
            (true, other) => panic!("psql printed {other:?}"),
            (false, _) => (
                Outcome::Refused,
                String::from_utf8_lossy(&out.stderr).into(),
            ),
        }
    }

    /// walrcv and psql agree, and the outcome is the expected one.
    fn check(&self, pg: &PgServer, expected: Outcome, what: &str) -> String {
        let (ours, why) = self.walrcv();
        let (libpq, libpq_why) = self.psql(pg);
        assert_eq!(
            libpq, expected,
            "{what}: psql (the oracle) disagrees with the test: {libpq_why}"
        );
        assert_eq!(ours, expected, "{what}: walrcv: {why}\npsql: {libpq_why}");
        why
    }
}

/// Connects on a current-thread runtime of its own.
fn connect(params: &ConnParams) -> Result<Connection, PgError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut conn = Connection::connect(params, true, Duration::from_secs(10)).await?;
        // The connection is usable: a replication command gets its answer.
        conn.simple_query("IDENTIFY_SYSTEM").await?;
        Ok(conn)
    })
}

#[test]
fn tls_every_sslmode_against_tls_and_plain_servers_as_libpq() {
    use Outcome::*;
    let pki = make_pki();
    let tls = tls_server(&pki, 15, "server");
    let plain = plain_server();
    // (server, role, [outcome for disable, allow, prefer, require, verify-ca, verify-full])
    let table: [(&PgServer, &str, [Outcome; 6]); 4] = [
        (&tls, SUPERUSER, [Plain, Plain, Tls, Tls, Tls, Tls]),
        // Plain text is rejected: allow retries with TLS.
        (&tls, "sslonly", [Refused, Tls, Tls, Tls, Tls, Tls]),
        // TLS is rejected: prefer retries without.
        (
            &tls,
            "plainonly",
            [Plain, Plain, Plain, Refused, Refused, Refused],
        ),
        (
            &plain,
            SUPERUSER,
            [Plain, Plain, Plain, Refused, Refused, Refused],
        ),
    ];
    for (server, role, outcomes) in table {
        for (mode, expected) in ALL_MODES.into_iter().zip(outcomes) {
            let what = format!(
                "{} server, {role}, sslmode={}",
                if std::ptr::eq(server, &tls) {
                    "TLS"
                } else {
                    "plain"
                },
                mode_name(mode)
            );
            let why = Case::new(server.port(), role, mode, &pki).check(server, expected, &what);
            if std::ptr::eq(server, &plain) && expected == Refused {
                assert!(
                    why.contains("the server does not support SSL, but SSL was required"),
                    "{what}: {why}"
                );
            }
        }
    }
}

/// Unusable TLS files (a root file that is no certificate, a certificate
/// file that is none, a key missing or readable by others) matter only once
/// the server has accepted TLS, as in libpq, which loads them only then
/// (`initialize_SSL` in `pgtls_open_client`): against a plain server,
/// `prefer` connects in plain text and `require` reports the server's
/// refusal; against a TLS server, `prefer` falls back to plain text and
/// `require` reports the file, in libpq's words.
#[test]
fn tls_unusable_files_matter_only_when_the_server_accepts_tls_as_libpq() {
    let pki = make_pki();
    write(pki.dir.path(), "garbage.crt", "not a certificate\n", false);
    let open_key = pki.path("open.key");
    std::fs::copy(pki.path("client.key"), &open_key).unwrap();
    std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let tls = tls_server(&pki, 15, "server");
    let plain = plain_server();
    type Spoil = fn(&mut TlsSettings, &Pki);
    let faults: [(&str, Spoil, &str); 4] = [
        (
            "bad sslrootcert",
            |t, pki| t.root_cert = Some(RootCerts::File(pki.path("garbage.crt"))),
            "could not read root certificate file",
        ),
        (
            "bad sslcert",
            |t, pki| t.cert = Some(pki.path("garbage.crt")),
            "could not read certificate file",
        ),
        (
            "sslkey missing",
            |t, pki| {
                t.cert = Some(pki.path("client.crt"));
                t.key = Some(pki.path("none.key"));
            },
            "certificate present, but not private key file",
        ),
        (
            "sslkey readable by others",
            |t, pki| {
                t.cert = Some(pki.path("client.crt"));
                t.key = Some(pki.path("open.key"));
            },
            "has group or world access",
        ),
    ];
    for (fault, spoil, libpq_words) in faults {
        for (server, server_accepts_tls) in [(&plain, false), (&tls, true)] {
            for mode in [SslMode::Prefer, SslMode::Require] {
                let mut case = Case::new(server.port(), SUPERUSER, mode, &pki);
                spoil(&mut case.tls, &pki);
                let what = format!(
                    "{fault}, sslmode={}, {} server",
                    mode_name(mode),
                    if server_accepts_tls { "TLS" } else { "plain" }
                );
                let expected = match mode {
                    SslMode::Prefer => Outcome::Plain,
                    _ => Outcome::Refused,
                };
                let why = case.check(server, expected, &what);
                if expected != Outcome::Refused {
                    continue;
                }
                let (_, libpq_why) = case.psql(server);
                let words = if server_accepts_tls {
                    libpq_words
                } else {
                    "server does not support SSL, but SSL was required"
                };
                assert!(libpq_why.contains(words), "{what}: psql: {libpq_why}");
                assert!(why.contains(words), "{what}: walrcv: {why}");
            }
        }
    }
}

#[test]
fn tls_verify_full_checks_the_host_name_verify_ca_the_chain() {
    let pki = make_pki();
    let pg = tls_server(&pki, 15, "server");
    // The certificate names localhost and 127.0.0.1, not this name; the
    // address is the same server.
    let mut case = Case::new(pg.port(), SUPERUSER, SslMode::VerifyFull, &pki);
    case.host = "walrcv-tls-test.invalid".into();
    let why = case.check(&pg, Outcome::Refused, "verify-full, wrong host name");
    assert!(
        why.contains(
            "server certificate for \"localhost\" (and 1 other name) does not match host name \"walrcv-tls-test.invalid\""
        ),
        "{why}"
    );
    case.tls.mode = SslMode::VerifyCa;
    case.check(&pg, Outcome::Tls, "verify-ca, wrong host name");
    // The IP SAN: host=127.0.0.1 under verify-full.
    let mut by_ip = Case::new(pg.port(), SUPERUSER, SslMode::VerifyFull, &pki);
    by_ip.host = "127.0.0.1".into();
    by_ip.hostaddr = None;
    by_ip.check(&pg, Outcome::Tls, "verify-full, IP address in the SAN");

    // Another CA: the chain does not verify.
    let mut wrong_ca = Case::new(pg.port(), SUPERUSER, SslMode::VerifyCa, &pki);
    wrong_ca.tls.root_cert = Some(RootCerts::File(pki.path("other-root.crt")));
    let why = wrong_ca.check(&pg, Outcome::Refused, "verify-ca, wrong CA");
    assert!(
        why.contains("SSL error: certificate verify failed: "),
        "{why}"
    );

    // No root file: libpq's message for the verifying modes; require
    // encrypts without verifying.
    let mut missing = Case::new(pg.port(), SUPERUSER, SslMode::VerifyCa, &pki);
    missing.tls.root_cert = Some(RootCerts::File(pki.path("absent-root.crt")));
    let why = missing.check(&pg, Outcome::Refused, "verify-ca, no root file");
    assert!(
        why.contains(&format!(
            "root certificate file \"{}\" does not exist",
            pki.path("absent-root.crt").display()
        )),
        "{why}"
    );
    missing.tls.mode = SslMode::Require;
    missing.check(&pg, Outcome::Tls, "require, no root file");
    // require with a root file that does not match: verify-ca semantics.
    wrong_ca.tls.mode = SslMode::Require;
    wrong_ca.check(&pg, Outcome::Refused, "require, root file of another CA");
}

#[test]
fn tls_a_revoked_server_certificate_is_refused_with_sslcrl() {
    let pki = make_pki();
    let pg = tls_server(&pki, 15, "revoked");
    let mut case = Case::new(pg.port(), SUPERUSER, SslMode::VerifyFull, &pki);
    case.check(&pg, Outcome::Tls, "revoked certificate, no CRL");
    case.tls.crl = Some(pki.path("root.crl"));
    let why = case.check(&pg, Outcome::Refused, "revoked certificate, sslcrl");
    assert!(why.to_lowercase().contains("revoked"), "{why}");
    // The same CRL does not refuse the good certificate.
    let good = tls_server(&pki, 15, "server");
    let mut case = Case::new(good.port(), SUPERUSER, SslMode::VerifyFull, &pki);
    case.tls.crl = Some(pki.path("root.crl"));
    case.check(&good, Outcome::Tls, "good certificate, sslcrl");
}

#[test]
fn tls_client_certificate_authentication() {
    let pki = make_pki();
    let pg = tls_server(&pki, 15, "server");
    let mut case = Case::new(pg.port(), "certuser", SslMode::VerifyFull, &pki);
    case.tls.cert = Some(pki.path("client.crt"));
    case.tls.key = Some(pki.path("client.key"));
    case.check(&pg, Outcome::Tls, "client certificate");

    let mut none = case.clone();
    none.tls.cert = Some(pki.path("absent.crt"));
    let why = none.check(&pg, Outcome::Refused, "no client certificate");
    assert!(why.contains("certificate"), "{why}");

    let mut wrong = case.clone();
    wrong.tls.cert = Some(pki.path("wrong-client.crt"));
    wrong.tls.key = Some(pki.path("wrong-client.key"));
    wrong.check(&pg, Outcome::Refused, "client certificate of another CA");

    // A key readable by others is refused before anything is sent.
    let loose = pki.path("loose.key");
    std::fs::copy(pki.path("client.key"), &loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut loose_case = case.clone();
    loose_case.tls.key = Some(loose.clone());
    let why = loose_case.check(&pg, Outcome::Refused, "key readable by others");
    assert!(
        why.contains(&format!(
            "private key file \"{}\" has group or world access",
            loose.display()
        )),
        "{why}"
    );

    // An encrypted key is an error naming what to do, never a silent
    // connection without the certificate.
    let encrypted = pki.path("encrypted.key");
    let mut f = std::fs::File::create(&encrypted).unwrap();
    writeln!(
        f,
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQwwHAQI\n-----END ENCRYPTED PRIVATE KEY-----"
    )
    .unwrap();
    std::fs::set_permissions(&encrypted, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut enc_case = case.clone();
    enc_case.tls.key = Some(encrypted);
    let e = connect(&enc_case.params()).unwrap_err();
    assert!(
        matches!(
            e.kind(),
            Some(PgErrorKind::Tls {
                source: TlsError::KeyEncrypted(_),
            })
        ),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("is encrypted and no sslpassword was given"),
        "{e}"
    );
}

/// A man in the middle that answers SSLRequest with 'N' itself and relays
/// everything else to `upstream` in plain text.
fn refusing_proxy(upstream: u16) -> (u16, std::thread::JoinHandle<()>, Arc<Mutex<bool>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = Arc::new(Mutex::new(false));
    let stop2 = stop.clone();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let accepted =
                    tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
                if *stop2.lock().unwrap() {
                    return;
                }
                let Ok(Ok((mut client, _))) = accepted else {
                    continue;
                };
                tokio::spawn(async move {
                    let mut first = [0u8; 8];
                    if client.read_exact(&mut first).await.is_err() {
                        return;
                    }
                    let mut server = tokio::net::TcpStream::connect(("127.0.0.1", upstream))
                        .await
                        .unwrap();
                    if first == walrcv::pgwire::tls::SSL_REQUEST {
                        if client.write_all(b"N").await.is_err() {
                            return;
                        }
                    } else {
                        server.write_all(&first).await.unwrap();
                    }
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
    });
    (port, thread, stop)
}

#[test]
fn tls_a_proxy_refusing_tls_gets_plain_text_only_under_prefer() {
    let pki = make_pki();
    let pg = tls_server(&pki, 15, "server");
    let (port, thread, stop) = refusing_proxy(pg.port());
    let expected = [
        Outcome::Plain,
        Outcome::Plain,
        Outcome::Plain,
        Outcome::Refused,
        Outcome::Refused,
        Outcome::Refused,
    ];
    for (mode, expected) in ALL_MODES.into_iter().zip(expected) {
        let case = Case::new(port, SUPERUSER, mode, &pki);
        let what = format!("proxy answering 'N', sslmode={}", mode_name(mode));
        let why = case.check(&pg, expected, &what);
        if expected == Outcome::Refused {
            assert!(why.contains("SSL was required"), "{what}: {why}");
        }
    }
    *stop.lock().unwrap() = true;
    thread.join().unwrap();
}

#[test]
fn tls_direct_negotiation_with_a_17_server() {
    let pki = make_pki();
    let pg17 = tls_server(&pki, 17, "server");
    let mut case = Case::new(pg17.port(), SUPERUSER, SslMode::VerifyFull, &pki);
    case.tls.negotiation = SslNegotiation::Direct;
    assert_eq!(case.walrcv().0, Outcome::Tls, "{}", case.walrcv().1);
    // A 15 server does not speak TLS before SSLRequest.
    let pg15 = tls_server(&pki, 15, "server");
    case.port = pg15.port();
    let (outcome, why) = case.walrcv();
    assert_eq!(outcome, Outcome::Refused);
    assert!(
        why.contains("SSL SYSCALL error") || why.contains("SSL error: "),
        "{why}"
    );
}

#[test]
fn tls_streaming_is_byte_identical() {
    use walrcv::receiver::{self, StreamOptions};
    let pki = make_pki();
    let pg = tls_server(&pki, 15, "server");
    // The slot keeps the WAL from here on; streaming starts at it.
    pg.create_physical_slot("tls_arch");
    pg.pgbench_init(1);
    pg.psql("SELECT pg_logical_emit_message(false, 'big', repeat('x', 3000000))");
    pg.force_switch_wal();
    let end = pg.current_lsn();
    let dir = tempfile::tempdir().unwrap();
    let case = Case::new(pg.port(), "sslonly", SslMode::VerifyFull, &pki);
    let opts = StreamOptions {
        directory: dir.path().to_path_buf(),
        conn: case.params(),
        slot: Some("tls_arch".into()),
        create_slot_if_missing: false,
        endpos: Some(walrcv::lsn::Lsn(end)),
        no_loop: true,
        sync: false,
        synchronous: false,
        status_interval: Some(Duration::from_secs(1)),
        receive_timeout: Duration::from_secs(60),
        password_prompt: false,
        metrics_address: None,
        compression: walrcv::archive::compress_spec::CompressionSpec::NONE,
        live: None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let outcome = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(120), receiver::run(opts, rx)).await
    });
    assert!(matches!(outcome, Ok(Ok(_))), "{outcome:?}");
    let n = crate::stream::assert_complete_segments_identical(dir.path(), &pg.wal_dir());
    assert!(n >= 3, "compared {n} complete segments");
    // `sslonly` is refused without TLS: the stream was encrypted.
}

/// A writer that collects everything the tracing subscriber prints.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn tls_no_password_or_key_material_in_trace_output() {
    let pki = make_pki();
    let pg = tls_server(&pki, 15, "server");
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // Other tests of this binary hit the same call sites on their own
    // threads. With a single registered dispatcher, tracing-core computes a
    // call site's interest from the registering thread's default only, so a
    // call site first reached on another thread while this subscriber is in
    // place is cached as "never", and its events are lost here (now and
    // then). A second registered dispatcher makes it ask every one.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    tracing::subscriber::with_default(subscriber, || {
        let case = Case::new(pg.port(), "sslonly", SslMode::VerifyFull, &pki);
        assert_eq!(case.walrcv().0, Outcome::Tls);
        // Client certificate: the key is read.
        let mut cert = Case::new(pg.port(), "certuser", SslMode::VerifyFull, &pki);
        cert.tls.cert = Some(pki.path("client.crt"));
        cert.tls.key = Some(pki.path("client.key"));
        assert_eq!(cert.walrcv().0, Outcome::Tls);
        // A failure of the password over TLS, then the fallback of prefer.
        let mut wrong = Case::new(pg.port(), "plainonly", SslMode::Prefer, &pki);
        wrong.password = Some(format!("{ROLE_PASSWORD}-wrong"));
        assert_eq!(wrong.walrcv().0, Outcome::Refused);
    });
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("TLS established"), "trace output:\n{text}");
    assert!(!text.contains(ROLE_PASSWORD), "password in:\n{text}");
    let key = std::fs::read_to_string(pki.path("client.key")).unwrap();
    for line in key.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!text.contains(line), "key material in:\n{text}");
    }
}

/// `program` (walrcv, or a `pg_receivewal` link to it) without the
/// caller's `PG*` variables, with a home directory of its own (no
/// `~/.postgresql` defaults) and everything logged (`WALRCV_LOG=trace`).
fn traced(program: &Path, home: &Path) -> Walrcv {
    Walrcv::via(program, std::iter::empty::<&str>())
        .env("HOME", home)
        .env("WALRCV_LOG", "trace")
}

/// Asserts that `text` (a trace) shows neither the password nor any line of
/// the key file.
fn assert_no_secrets(text: &str, password: &str, key_file: &Path) {
    assert!(!text.contains(password), "password in the trace:\n{text}");
    let key = std::fs::read_to_string(key_file).unwrap();
    for line in key.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!text.contains(line), "key material in the trace:\n{text}");
    }
}

/// Barman's invocation (through a `pg_receivewal` symlink) with
/// `sslmode=require` in its conninfo; the role is refused without TLS, so the
/// archive it leaves, byte-identical to the server's, came over TLS. The
/// trace shows no password.
#[test]
fn tls_barman_invocation_with_sslmode_require() {
    let pki = make_pki();
    let pg = tls_server(&pki, 15, "server");
    pg.create_physical_slot("barman");
    let bin_dir = tempfile::tempdir().unwrap();
    let link = bin_dir.path().join("pg_receivewal");
    std::os::unix::fs::symlink(crate::support::walrcv_bin(), &link).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let conninfo = format!(
        "application_name=barman_receive_wal dbname=replication host=127.0.0.1 \
         options=-cdatestyle=iso port={} replication=true user=sslonly sslmode=require",
        pg.port()
    );
    let mut child = traced(&link, home.path())
        .env("PGPASSWORD", ROLE_PASSWORD)
        .args([
            &format!("--dbname={conninfo}"),
            "--verbose",
            "--verbose",
            "--no-loop",
            "--no-password",
            &format!("--directory={}", dir.path().display()),
            "--slot=barman",
            "--synchronous",
        ])
        .spawn();
    crate::support::wait_until(
        Duration::from_secs(20),
        "barman_receive_wal streaming over TLS",
        || {
            pg.psql(
                "SELECT count(*) FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) \
             WHERE r.application_name = 'barman_receive_wal' AND s.ssl",
            ) == "1"
        },
    );
    pg.pgbench_init(1);
    pg.force_switch_wal();
    crate::support::wait_until(Duration::from_secs(30), "segments archived", || {
        crate::stream::assert_complete_segments_identical(dir.path(), &pg.wal_dir()) >= 2
    });
    assert!(child.terminate().success(), "{}", child.stderr());
    crate::stream::assert_only_barman_names(dir.path());
    let trace = child.stderr();
    assert!(trace.contains("TLS established"), "{trace}");
    assert_no_secrets(&trace, ROLE_PASSWORD, &pki.path("client.key"));
}

/// A TLS connection with a password and a client certificate, traced at the
/// finest level by the CLI: neither the password nor the key appears. The
/// connection string names the key and root files as a DBA would.
#[test]
fn tls_cli_trace_shows_no_password_or_key() {
    let pki = make_pki();
    let pg = tls_server(&pki, 15, "server");
    let home = tempfile::tempdir().unwrap();
    let for_role = |user: &str, extra: &str| {
        format!(
            "host=localhost hostaddr=127.0.0.1 port={} user={user} sslmode=verify-full sslrootcert={} {extra}",
            pg.port(),
            pki.path("root.crt").display()
        )
    };
    let runs = [
        for_role("sslonly", &format!("password={ROLE_PASSWORD}")),
        for_role(
            "certuser",
            &format!(
                "sslcert={} sslkey={}",
                pki.path("client.crt").display(),
                pki.path("client.key").display()
            ),
        ),
    ];
    for (i, conninfo) in runs.iter().enumerate() {
        let slot = format!("traced{i}");
        let out = traced(&crate::support::walrcv_bin(), home.path())
            .args([
                "stream",
                "-v",
                "-v",
                "-d",
                conninfo,
                "--create-slot",
                "-S",
                &slot,
            ])
            .run();
        let trace = out.stderr.clone();
        assert!(out.success(), "{conninfo}: {trace}");
        assert!(pg.slot_exists(&slot));
        assert!(trace.contains("TLS established"), "{trace}");
        assert_no_secrets(&trace, ROLE_PASSWORD, &pki.path("client.key"));
    }
}

/// A TLS setting that is wrong locally (here: no root certificate file under
/// verify-full) ends `walrcv stream` at once with exit status 2 and libpq's
/// message, instead of retrying forever.
#[test]
fn tls_cli_local_tls_faults_exit_2_with_libpqs_message() {
    let pki = make_pki();
    let pg = tls_server(&pki, 15, "server");
    let home = tempfile::tempdir().unwrap();
    let archive = tempfile::tempdir().unwrap();
    let conninfo = format!(
        "host=localhost hostaddr=127.0.0.1 port={} user=postgres password={SUPERUSER_PASSWORD} sslmode=verify-full",
        pg.port()
    );
    let out = traced(&crate::support::walrcv_bin(), home.path())
        .args(["stream", "-D"])
        .arg(archive.path())
        .args(["-d", &conninfo])
        .timeout(Duration::from_secs(60))
        .run();
    let text = out.text();
    assert_eq!(out.code(), Some(2), "{text}");
    let expected = format!(
        "root certificate file \"{}\" does not exist",
        home.path().join(".postgresql/root.crt").display()
    );
    assert!(text.contains(&expected), "{text}");
}

/// Runs the `openssl` command in `dir`; the test fails on its failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Gives a server key to the server's OS user when the tests run as root.
fn server_owned(path: &Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    if nix::unistd::geteuid().is_root() {
        let user = nix::unistd::User::from_name("postgres").unwrap().unwrap();
        nix::unistd::chown(path, Some(user.uid), Some(user.gid)).unwrap();
    }
}

/// The certificates of PostgreSQL's documentation ("Creating Certificates",
/// and the client certificate of "Client Certificates"), made with exactly
/// its commands: with OpenSSL 3.0 `openssl x509 -req` makes X.509 version 1
/// server and client certificates. Also: the client key encrypted with
/// `sslpassword` as PKCS#8 (`client-pkcs8.key`) and as legacy PEM
/// (`client-pem.key`), and `server-pss.crt`, the same server key certified
/// with an RSASSA-PSS signature.
fn documentation_pki() -> Pki {
    let dir = tempfile::Builder::new()
        .prefix("walrcv-tls-doc")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = dir.path();
    let req = |name: &str, cn: &str| {
        openssl(
            d,
            &[
                "req",
                "-new",
                "-nodes",
                "-text",
                "-out",
                &format!("{name}.csr"),
                "-keyout",
                &format!("{name}.key"),
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        std::fs::set_permissions(
            d.join(format!("{name}.key")),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    };
    let sign = |name: &str, out: &str, extra: &[&str]| {
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            name,
            "-text",
            "-days",
            "365",
            "-CA",
            "root.crt",
            "-CAkey",
            "root.key",
            "-CAcreateserial",
            "-out",
            out,
        ];
        args.extend_from_slice(extra);
        openssl(d, &args);
    };
    req("root", "root.example");
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "root.csr",
            "-text",
            "-days",
            "3650",
            "-extfile",
            "/etc/ssl/openssl.cnf",
            "-extensions",
            "v3_ca",
            "-signkey",
            "root.key",
            "-out",
            "root.crt",
        ],
    );
    req("server", "localhost");
    sign("server.csr", "server.crt", &[]);
    server_owned(&d.join("server.key"));
    req("client", "certuser");
    sign("client.csr", "client.crt", &[]);
    // The same key, certified with RSASSA-PSS.
    sign(
        "server.csr",
        "server-pss.crt",
        &[
            "-sha256",
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:digest",
        ],
    );
    std::fs::copy(d.join("server.key"), d.join("server-pss.key")).unwrap();
    server_owned(&d.join("server-pss.key"));
    openssl(
        d,
        &[
            "pkey",
            "-in",
            "client.key",
            "-aes256",
            "-passout",
            "pass:key-secret",
            "-out",
            "client-pkcs8.key",
        ],
    );
    openssl(
        d,
        &[
            "rsa",
            "-in",
            "client.key",
            "-aes256",
            "-passout",
            "pass:key-secret",
            "-traditional",
            "-out",
            "client-pem.key",
        ],
    );
    for key in ["client-pkcs8.key", "client-pem.key"] {
        std::fs::set_permissions(d.join(key), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    Pki { dir }
}

/// The certificate's X.509 version, as `openssl x509 -text` prints it.
fn x509_version(path: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| l.trim_start().starts_with("Version:"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn tls_documentation_recipe_v1_certificates_in_every_sslmode_and_as_client_certificate() {
    use Outcome::*;
    let pki = documentation_pki();
    for name in ["server.crt", "client.crt"] {
        assert_eq!(x509_version(&pki.path(name)), "Version: 1 (0x0)", "{name}");
    }
    let pg = tls_server(&pki, 15, "server");
    for (mode, expected) in ALL_MODES
        .into_iter()
        .zip([Plain, Plain, Tls, Tls, Tls, Tls])
    {
        let case = Case::new(pg.port(), SUPERUSER, mode, &pki);
        let why = case.check(
            &pg,
            expected,
            &format!("v1 server, sslmode={}", mode_name(mode)),
        );
        assert!(why.is_empty(), "{why}");
    }
    // The v1 client certificate authenticates certuser (`cert` in pg_hba).
    let mut client = Case::new(pg.port(), "certuser", SslMode::VerifyFull, &pki);
    client.tls.cert = Some(pki.path("client.crt"));
    client.tls.key = Some(pki.path("client.key"));
    client.check(&pg, Tls, "v1 client certificate");
}

#[test]
fn tls_encrypted_client_keys_open_with_sslpassword() {
    let pki = documentation_pki();
    let pg = tls_server(&pki, 15, "server");
    for key in ["client-pkcs8.key", "client-pem.key"] {
        let mut case = Case::new(pg.port(), "certuser", SslMode::VerifyFull, &pki);
        case.tls.cert = Some(pki.path("client.crt"));
        case.tls.key = Some(pki.path(key));
        case.tls.key_password = Some(SslPassword("key-secret".into()));
        case.check(&pg, Outcome::Tls, &format!("{key} with sslpassword"));
        case.tls.key_password = Some(SslPassword("not-the-secret".into()));
        let why = case.check(&pg, Outcome::Refused, &format!("{key}, wrong sslpassword"));
        assert!(
            why.contains(&format!(
                "could not load private key file \"{}\"",
                pki.path(key).display()
            )),
            "{why}"
        );
        assert!(!why.contains("not-the-secret"), "{why}");
        // No password: refused, never prompted for.
        case.tls.key_password = None;
        let (outcome, why) = case.walrcv();
        assert_eq!(outcome, Outcome::Refused);
        assert!(
            why.contains("is encrypted and no sslpassword was given"),
            "{why}"
        );
    }
}

#[test]
fn tls_a_crl_directory_revoking_the_server_is_refused() {
    let pki = make_pki();
    let crls = pki.path("crls");
    std::fs::create_dir(&crls).unwrap();
    let out = Command::new("openssl")
        .args(["crl", "-hash", "-noout", "-in"])
        .arg(pki.path("root.crl"))
        .output()
        .unwrap();
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(hash.len(), 8, "{out:?}");
    std::fs::copy(pki.path("root.crl"), crls.join(format!("{hash}.r0"))).unwrap();

    let revoked = tls_server(&pki, 15, "revoked");
    let mut case = Case::new(revoked.port(), SUPERUSER, SslMode::VerifyFull, &pki);
    case.tls.crl = None;
    case.tls.crl_dir = Some(crls.clone());
    let why = case.check(&revoked, Outcome::Refused, "revoked server, sslcrldir");
    assert!(
        why.contains("SSL error: certificate verify failed: certificate revoked"),
        "{why}"
    );
    let good = tls_server(&pki, 15, "server");
    case.port = good.port();
    case.check(&good, Outcome::Tls, "good server, sslcrldir");
}

#[test]
fn tls_sslcertmode_require_fails_when_the_server_asks_for_no_certificate() {
    let pki = make_pki();
    // No ssl_ca_file: the server never sends CertificateRequest.
    let no_ca = PgServer::builder()
        .wal_segsize_mb(1)
        .auth(Auth::Scram)
        .conf("ssl = on")
        .conf(&format!(
            "ssl_cert_file = '{}'",
            pki.path("server.crt").display()
        ))
        .conf(&format!(
            "ssl_key_file = '{}'",
            pki.path("server.key").display()
        ))
        .start();
    let mut case = Case::new(no_ca.port(), SUPERUSER, SslMode::VerifyFull, &pki);
    case.tls.cert = Some(pki.path("client.crt"));
    case.tls.key = Some(pki.path("client.key"));
    assert_eq!(case.walrcv().0, Outcome::Tls, "{}", case.walrcv().1);
    case.tls.require_cert_request = true;
    let (outcome, why) = case.walrcv();
    assert_eq!(outcome, Outcome::Refused);
    assert!(
        why.ends_with("server did not request an SSL certificate"),
        "{why}"
    );
    // A server that asks, and gets one: accepted.
    let asks = tls_server(&pki, 15, "server");
    let mut cert = Case::new(asks.port(), "certuser", SslMode::VerifyFull, &pki);
    cert.tls.cert = Some(pki.path("client.crt"));
    cert.tls.key = Some(pki.path("client.key"));
    cert.tls.require_cert_request = true;
    assert_eq!(cert.walrcv().0, Outcome::Tls, "{}", cert.walrcv().1);
    // A server that asks, and gets none (password authentication goes on).
    let mut none = Case::new(asks.port(), SUPERUSER, SslMode::VerifyFull, &pki);
    none.tls.require_cert_request = true;
    let (outcome, why) = none.walrcv();
    assert_eq!(outcome, Outcome::Refused);
    assert!(
        why.ends_with("server accepted connection without a valid SSL certificate"),
        "{why}"
    );
}

#[test]
fn tls_rsa_pss_server_certificate_with_channel_binding_on_17_and_18() {
    let pki = documentation_pki();
    for major in [17, 18] {
        let pg = tls_server(&pki, major, "server-pss");
        let case = Case::new(pg.port(), SUPERUSER, SslMode::VerifyFull, &pki);
        let mut params = case.params();
        params.channel_binding = ChannelBinding::Require;
        let conn = connect(&params).unwrap_or_else(|e| panic!("{major}: {e}"));
        assert!(conn.is_tls(), "{major}");
    }
}

#[test]
fn tls_root_directory_and_hostaddr_without_host_are_refused_as_libpq() {
    let pki = make_pki();
    let pg = tls_server(&pki, 15, "server");
    // sslrootcert naming a directory: libpq fails to load it, even under
    // require, where walrcv used to go on without verification.
    let mut dir_root = Case::new(pg.port(), SUPERUSER, SslMode::Require, &pki);
    dir_root.tls.root_cert = Some(RootCerts::File(pki.path("")));
    let why = dir_root.check(&pg, Outcome::Refused, "sslrootcert is a directory");
    assert!(
        why.contains("could not read root certificate file"),
        "{why}"
    );
    // hostaddr without host under verify-full: no name to check.
    let mut no_host = Case::new(pg.port(), SUPERUSER, SslMode::VerifyFull, &pki);
    no_host.host = String::new();
    let why = no_host.check(&pg, Outcome::Refused, "verify-full, hostaddr only");
    assert!(
        why.contains("host name must be specified for a verified SSL connection"),
        "{why}"
    );
    no_host.tls.mode = SslMode::VerifyCa;
    no_host.check(&pg, Outcome::Tls, "verify-ca, hostaddr only");
}

#[test]
fn tls_protocol_version_bounds_over_libpqs_range() {
    let pki = make_pki();
    let pg = tls_server(&pki, 15, "server");
    let mut case = Case::new(pg.port(), SUPERUSER, SslMode::VerifyFull, &pki);
    case.tls.min_protocol_version = Some(TlsVersion::Tls1_3);
    case.tls.max_protocol_version = Some(TlsVersion::Tls1_3);
    case.check(&pg, Outcome::Tls, "TLSv1.3 only");
    case.tls.min_protocol_version = Some(TlsVersion::Tls1_2);
    case.tls.max_protocol_version = Some(TlsVersion::Tls1_2);
    case.check(&pg, Outcome::Tls, "TLSv1.2 only");
    // Below the server's minimum (TLSv1.2): refused, with libpq's hint.
    case.tls.min_protocol_version = Some(TlsVersion::Tls1);
    case.tls.max_protocol_version = Some(TlsVersion::Tls1_1);
    let why = case.check(&pg, Outcome::Refused, "TLSv1 to TLSv1.1");
    assert!(
        why.contains(
            "This may indicate that the server does not support any SSL protocol version \
             between TLSv1 and TLSv1.1."
        ),
        "{why}"
    );
}

#[test]
fn tls_sslkeylogfile_appends_the_secrets_in_a_0600_file() {
    let pki = make_pki();
    let pg = tls_server(&pki, 15, "server");
    let log = pki.path("keys.log");
    let mut case = Case::new(pg.port(), SUPERUSER, SslMode::VerifyFull, &pki);
    case.tls.key_log_file = Some(log.clone());
    assert_eq!(case.walrcv().0, Outcome::Tls);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("CLIENT_TRAFFIC_SECRET_0 "), "{text}");
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let lines = text.lines().count();
    assert_eq!(case.walrcv().0, Outcome::Tls);
    let again = std::fs::read_to_string(&log).unwrap();
    assert!(again.lines().count() > lines, "appended");
    // Without it, nothing is written anywhere.
    case.tls.key_log_file = None;
    std::fs::remove_file(&log).unwrap();
    assert_eq!(case.walrcv().0, Outcome::Tls);
    assert!(!log.exists());
}

/// Invoked as pg_receivewal, a TLS failure that is the server's (a
/// certificate that does not name the host) ends walrcv as any connection
/// failure does (a closed port), and as Debian's pg_receivewal ends for the
/// same settings, with libpq's words for the failed check.
#[test]
fn tls_cli_a_server_tls_failure_exits_as_any_connection_failure_and_as_pg_receivewal() {
    let pki = make_pki();
    let pg = tls_server(&pki, 15, "server");
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("pg_receivewal");
    std::os::unix::fs::symlink(crate::support::walrcv_bin(), &ours).unwrap();
    let theirs = crate::support::debian_bin("pg_receivewal");
    let archive = tempfile::tempdir().unwrap();
    let run = |program: &Path, conninfo: &str| {
        let out = Command::new(program)
            .args(["-n", "-D"])
            .arg(archive.path())
            .args(["-d", conninfo])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", dir.path())
            .env("PGPASSWORD", SUPERUSER_PASSWORD)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let mismatch = format!(
        "host=walrcv-tls-test.invalid hostaddr=127.0.0.1 port={} user={SUPERUSER} \
         sslmode=verify-full sslrootcert={}",
        pg.port(),
        pki.path("root.crt").display()
    );
    let closed = format!(
        "host=127.0.0.1 port={} user={SUPERUSER} sslmode=disable",
        crate::support::free_port()
    );
    let (tls_code, tls_text) = run(&ours, &mismatch);
    let (closed_code, closed_text) = run(&ours, &closed);
    let (libpq_code, libpq_text) = run(&theirs, &mismatch);
    assert_eq!(tls_code, closed_code, "{tls_text}\n{closed_text}");
    assert_eq!(tls_code, libpq_code, "{tls_text}\n{libpq_text}");
    let words = "server certificate for \"localhost\" (and 1 other name) does not match host name \
                 \"walrcv-tls-test.invalid\"";
    assert!(libpq_text.contains(words), "{libpq_text}");
    assert!(tls_text.contains(words), "{tls_text}");
    assert!(tls_text.starts_with("pg_receivewal: error: "), "{tls_text}");
    assert!(
        !tls_text.contains("Error {") && !tls_text.contains("Other("),
        "{tls_text}"
    );
}
