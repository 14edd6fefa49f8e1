//! `walrcv serve` authentication by client certificate and SCRAM channel
//! binding, with Debian's libpq (psql 15) as the client (issue 21):
//! `--serve-ssl-ca` and the `cert` hba method (the certificate's CN must be
//! the user name), `clientcert=verify-ca` on a SCRAM line, and
//! SCRAM-SHA-256-PLUS (`channel_binding=require`) over TLS. Certificates are
//! made here with rcgen, as tests/tls.rs makes them.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    IsCa, Issuer, KeyIdMethod, KeyPair, RevokedCertParams, SanType, SerialNumber,
};

use crate::support::{
    debian_bin, free_port, run_with_timeout, wait_until, walrcv_spawn, BackgroundProcess, PgServer,
};

const APP: &str = "walrcv";

/// An archive of a few segments written by `walrcv stream` (then stopped).
pub(crate) fn small_archive(pg: &PgServer, dir: &Path) {
    let conn = format!("{} application_name={APP}", pg.conninfo());
    let mut rcv = walrcv_spawn(&["stream", "-D", dir.to_str().unwrap(), "-d", &conn]);
    pg.psql("CREATE TABLE t AS SELECT g, repeat('x', 500) AS pad FROM generate_series(1, 3000) g");
    let end = pg.current_lsn();
    wait_until(Duration::from_secs(60), "walrcv to flush", || {
        assert!(rcv.is_running(), "walrcv exited:\n{}", rcv.stderr());
        pg.replication_flush_lsn(APP).is_some_and(|f| f >= end)
    });
    rcv.interrupt();
}

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    // libpq refuses a private key others can read.
    let mode = if name.ends_with(".key") { 0o600 } else { 0o644 };
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn ca(name: &str) -> (CertificateParams, KeyPair) {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    (p, KeyPair::generate().unwrap())
}

fn leaf(dir: &Path, name: &str, cn: &str, sans: Vec<SanType>, issuer: &Issuer<KeyPair>) {
    let serial = SERIALS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.subject_alt_names = sans;
    p.serial_number = Some(SerialNumber::from(serial));
    let key = KeyPair::generate().unwrap();
    write(
        dir,
        &format!("{name}.crt"),
        &p.signed_by(&key, issuer).unwrap().pem(),
    );
    write(dir, &format!("{name}.key"), &key.serialize_pem());
}

/// Serial numbers of the leaf certificates, unique in the process.
static SERIALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1000);

/// `root.crt`; `server` (127.0.0.1), `client` (CN certuser), `full` (CN full) by it;
/// `stranger` (CN certuser) by another CA. Returns the root as an issuer.
fn make_pki(dir: &Path) -> Issuer<'static, KeyPair> {
    let (root, root_key) = ca("walrcv serve test CA");
    write(dir, "root.crt", &root.self_signed(&root_key).unwrap().pem());
    let root = Issuer::new(root, root_key);
    let ip = SanType::IpAddress("127.0.0.1".parse().unwrap());
    leaf(dir, "server", "localhost", vec![ip], &root);
    leaf(dir, "client", "certuser", vec![], &root);
    leaf(dir, "full", "full", vec![], &root);
    let (other, other_key) = ca("another CA");
    let other = Issuer::new(other, other_key);
    leaf(dir, "stranger", "certuser", vec![], &other);
    root
}

/// `root.crl`: the root's CRL revoking the certificate of `revoked.crt`.
fn revoke(dir: &Path, root: &Issuer<KeyPair>, revoked: &str) {
    let pem = std::fs::read(dir.join(revoked)).unwrap();
    let cert = openssl::x509::X509::from_pem(&pem).unwrap();
    let serial = cert.serial_number().to_bn().unwrap().to_vec();
    let crl = CertificateRevocationListParams {
        this_update: date_time_ymd(2025, 1, 1),
        next_update: date_time_ymd(2099, 1, 1),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![RevokedCertParams {
            serial_number: SerialNumber::from(serial),
            revocation_time: date_time_ymd(2025, 1, 1),
            reason_code: None,
            invalidity_date: None,
        }],
        key_identifier_method: KeyIdMethod::Sha256,
    };
    write(
        dir,
        "root.crl",
        &crl.signed_by(root).unwrap().pem().unwrap(),
    );
}

/// IDENTIFY_SYSTEM through psql 15 with `conn` added to the connection string.
fn identify(port: u16, user: &str, password: Option<&str>, conn: &str) -> Result<String, String> {
    let mut cmd = std::process::Command::new(debian_bin("psql"));
    cmd.args([
        "-XAtqw",
        "-d",
        &format!(
            "host=127.0.0.1 port={port} user={user} dbname=replication replication=true {conn}"
        ),
        "-c",
        "IDENTIFY_SYSTEM",
    ]);
    cmd.env_remove("PGPASSWORD");
    // No ~/.postgresql/postgresql.crt taken by default.
    cmd.env("PGSSLCERT", "/nonexistent/postgresql.crt");
    cmd.env("PGSSLKEY", "/nonexistent/postgresql.key");
    if let Some(pw) = password {
        cmd.env("PGPASSWORD", pw);
    }
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    if out.success() {
        Ok(out.stdout.trim().to_owned())
    } else {
        Err(out.text())
    }
}

pub(crate) fn start_serve(
    archive: &Path,
    conf: &Path,
    hba: &str,
    extra: &[&str],
) -> (BackgroundProcess, u16) {
    let hba_path = conf.join("serve_hba.conf");
    std::fs::write(&hba_path, hba).unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "serve",
        "-D",
        archive.to_str().unwrap(),
        "--listen",
        &listen,
        "--serve-hba",
        hba_path.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let mut serve = walrcv_spawn(&args);
    serve.wait_for_stderr("serving the archive", Duration::from_secs(30));
    (serve, port)
}

/// An archive and a PKI (see [`make_pki`]) for one test of client
/// certificates, with `walrcv serve` started over TLS and `--serve-ssl-ca`.
struct CertSetup {
    pg: PgServer,
    work: tempfile::TempDir,
    archive: std::path::PathBuf,
    root: Issuer<'static, KeyPair>,
}

impl CertSetup {
    fn new() -> CertSetup {
        let pg = PgServer::builder().wal_segsize_mb(1).start();
        let work = tempfile::tempdir().unwrap();
        let archive = work.path().join("a");
        std::fs::create_dir_all(&archive).unwrap();
        small_archive(&pg, &archive);
        let root = make_pki(work.path());
        CertSetup {
            pg,
            work,
            archive,
            root,
        }
    }

    fn path(&self, name: &str) -> String {
        self.work.path().join(name).to_str().unwrap().to_owned()
    }

    /// libpq's TLS options for a client presenting `name`.crt.
    fn with_cert(&self, name: &str) -> String {
        format!(
            "sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
            self.path("root.crt"),
            self.path(&format!("{name}.crt")),
            self.path(&format!("{name}.key"))
        )
    }

    /// `--serve-ssl-cert`, `--serve-ssl-key`, `--serve-ssl-ca`, then `extra`.
    fn tls_args(&self, extra: &[&str]) -> Vec<String> {
        let mut args = vec![
            "--serve-ssl-cert".to_owned(),
            self.path("server.crt"),
            "--serve-ssl-key".to_owned(),
            self.path("server.key"),
            "--serve-ssl-ca".to_owned(),
            self.path("root.crt"),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    }

    fn start(&self, hba: &str, extra: &[&str]) -> (BackgroundProcess, u16) {
        let args = self.tls_args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        start_serve(&self.archive, self.work.path(), hba, &args)
    }

    /// `walrcv serve` with `hba` and `extra`, which must refuse to start.
    fn refused(&self, hba: &str, extra: &[&str]) -> crate::support::RunOutput {
        let hba_path = self.path("refused_hba.conf");
        std::fs::write(&hba_path, hba).unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let mut args = vec![
            "serve".to_owned(),
            "-D".to_owned(),
            self.archive.to_str().unwrap().to_owned(),
            "--listen".to_owned(),
            listen,
            "--serve-hba".to_owned(),
            hba_path,
        ];
        args.extend(self.tls_args(extra));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = crate::support::walrcv_run(&args, Duration::from_secs(30));
        assert!(!out.success(), "{}", out.text());
        out
    }

    /// IDENTIFY_SYSTEM as `user` with `name`.crt: the system identifier
    /// line, or libpq's error.
    fn identify(&self, port: u16, user: &str, cert: &str) -> Result<String, String> {
        let ok = identify(port, user, None, &self.with_cert(cert))?;
        let sysid = self.pg.system_identifier().to_string();
        assert!(ok.starts_with(&sysid), "{ok}");
        Ok(ok)
    }
}

/// `--serve-ssl-crl`: a client certificate the CA revoked fails the
/// handshake; without the flag the same certificate is accepted (the
/// control); another client of the same CA still gets in.
#[test]
fn serve_revoked_client_certificates() {
    let setup = CertSetup::new();
    revoke(setup.work.path(), &setup.root, "full.crt");
    let hba = "hostssl replication certuser,full 127.0.0.1/32 cert\n";
    let (mut plain, port) = setup.start(hba, &[]);
    setup.identify(port, "full", "full").unwrap();
    plain.interrupt();

    let crl = setup.path("root.crl");
    let (mut checked, port) = setup.start(hba, &["--serve-ssl-crl", &crl]);
    let e = setup.identify(port, "full", "full").unwrap_err();
    assert!(e.contains("revoked"), "{e}");
    setup.identify(port, "certuser", "client").unwrap();
    assert!(checked.is_running());
    checked.interrupt();

    // A file without a CRL: refused at start, naming the file.
    let ca = setup.path("root.crt");
    let bad = setup.refused(hba, &["--serve-ssl-crl", &ca]);
    assert!(bad.stderr.contains("root.crt"), "{}", bad.text());
}

/// `map=` on a cert line with `--serve-ident`: the certificate's CN maps to
/// other user names (an exact line, and a regular expression whose capture
/// is the user), and no longer logs in as itself unless mapped; a map the
/// ident file does not define is refused at start.
#[test]
fn serve_cert_user_name_map() {
    let setup = CertSetup::new();
    let ident = setup.path("ident.conf");
    std::fs::write(
        &ident,
        "# MAPNAME SYSTEM-USERNAME DATABASE-USERNAME\n\
         certs     certuser        replicator\n\
         certs     /^(f.*)$        \\1_standby\n",
    )
    .unwrap();
    let hba = "hostssl replication all 127.0.0.1/32 cert map=certs\n";
    let (mut serve, port) = setup.start(hba, &["--serve-ident", &ident]);
    setup.identify(port, "replicator", "client").unwrap();
    setup.identify(port, "full_standby", "full").unwrap();
    for (user, cert) in [
        ("certuser", "client"),
        ("full", "full"),
        ("replicator", "full"),
    ] {
        let e = setup.identify(port, user, cert).unwrap_err();
        assert!(
            e.contains(&format!(
                "certificate authentication failed for user \"{user}\""
            )),
            "{user} with {cert}: {e}"
        );
    }
    assert!(serve.is_running());
    serve.interrupt();
    assert!(
        serve.stderr().contains("no match in usermap \"certs\""),
        "{}",
        serve.stderr()
    );

    // The map missing: refused at start, naming it.
    let bad = setup.refused(hba, &[]);
    assert!(
        bad.stderr
            .contains("user name map \"certs\" is not defined"),
        "{}",
        bad.text()
    );
}

#[test]
fn serve_client_certificates_and_channel_binding() {
    let pg = PgServer::builder().wal_segsize_mb(1).start();
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("a");
    std::fs::create_dir_all(&archive).unwrap();
    small_archive(&pg, &archive);
    let verifier = pg.psql(
        "SET password_encryption = 'scram-sha-256'; CREATE ROLE probe PASSWORD 'pw-123'; \
         SELECT rolpassword FROM pg_authid WHERE rolname = 'probe'",
    );
    let verifier = verifier.lines().last().unwrap().to_owned();
    let d = work.path();
    make_pki(d);
    let passfile = d.join("passfile");
    std::fs::write(
        &passfile,
        format!("rep:{verifier}\nbound:{verifier}\nfull:{verifier}\n"),
    )
    .unwrap();
    let p = |n: &str| d.join(n).to_str().unwrap().to_owned();
    let hba = "hostssl replication certuser,mismatch 127.0.0.1/32 cert\n\
               hostssl replication rep 127.0.0.1/32 scram-sha-256 clientcert=verify-ca\n\
               hostssl replication full 127.0.0.1/32 scram-sha-256 clientcert=verify-full\n\
               host    replication bound 127.0.0.1/32 scram-sha-256\n";
    // A cert line without --serve-ssl-ca: refused at start, as PostgreSQL.
    let hba_path = d.join("no_ca_hba.conf");
    std::fs::write(&hba_path, hba).unwrap();
    let (cert, key, ca) = (p("server.crt"), p("server.key"), p("root.crt"));
    let mut refused = walrcv_spawn(&[
        "serve",
        "-D",
        archive.to_str().unwrap(),
        "--listen",
        &free_port().to_string(),
        "--serve-hba",
        hba_path.to_str().unwrap(),
        "--serve-ssl-cert",
        &cert,
        "--serve-ssl-key",
        &key,
    ]);
    refused.wait_for_stderr("root certificate store", Duration::from_secs(30));
    let ssl = ["--serve-ssl-cert", &cert, "--serve-ssl-key", &key];
    let (mut serve, port) = start_serve(
        &archive,
        d,
        hba,
        &[
            &ssl[..],
            &[
                "--serve-ssl-ca",
                &ca,
                "--serve-passfile",
                passfile.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    let sysid = pg.system_identifier().to_string();
    let with_cert = |name: &str| {
        format!(
            "sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
            p("root.crt"),
            p(&format!("{name}.crt")),
            p(&format!("{name}.key"))
        )
    };
    let no_cert = format!("sslmode=verify-full sslrootcert={}", p("root.crt"));

    // cert: a verified certificate whose CN is the user name.
    let ok = identify(port, "certuser", None, &with_cert("client")).unwrap();
    assert!(ok.starts_with(&sysid), "{ok}");
    // The same certificate for another user.
    let e = identify(port, "mismatch", None, &with_cert("client")).unwrap_err();
    assert!(
        e.contains("certificate authentication failed for user \"mismatch\""),
        "{e}"
    );
    // No certificate.
    let e = identify(port, "certuser", None, &no_cert).unwrap_err();
    assert!(
        e.contains("connection requires a valid client certificate"),
        "{e}"
    );
    // A certificate from a CA walrcv does not trust: the handshake fails.
    let e = identify(port, "certuser", None, &with_cert("stranger")).unwrap_err();
    assert!(
        e.to_lowercase().contains("ssl") || e.contains("certificate"),
        "{e}"
    );

    // clientcert=verify-ca on a SCRAM line: any verified certificate (its
    // CN is not rep) and the password.
    let ok = identify(port, "rep", Some("pw-123"), &with_cert("client")).unwrap();
    assert!(ok.starts_with(&sysid), "{ok}");
    let e = identify(port, "rep", Some("pw-123"), &no_cert).unwrap_err();
    assert!(
        e.contains("connection requires a valid client certificate"),
        "{e}"
    );
    let e = identify(port, "rep", Some("wrong"), &with_cert("client")).unwrap_err();
    assert!(e.contains("password authentication failed"), "{e}");

    // clientcert=verify-full: the certificate's CN must also be the user;
    // a mismatch is worded as the method's failure, as PostgreSQL does.
    let ok = identify(port, "full", Some("pw-123"), &with_cert("full")).unwrap();
    assert!(ok.starts_with(&sysid), "{ok}");
    let e = identify(port, "full", Some("pw-123"), &with_cert("client")).unwrap_err();
    assert!(
        e.contains("password authentication failed for user \"full\""),
        "{e}"
    );

    // SCRAM-SHA-256-PLUS: libpq insists on channel binding and gets it over
    // TLS; without TLS there is nothing to bind to and libpq gives up.
    let ok = identify(
        port,
        "bound",
        Some("pw-123"),
        &format!("{no_cert} channel_binding=require"),
    )
    .unwrap();
    assert!(ok.starts_with(&sysid), "{ok}");
    let e = identify(
        port,
        "bound",
        Some("wrong"),
        &format!("{no_cert} channel_binding=require"),
    )
    .unwrap_err();
    assert!(e.contains("password authentication failed"), "{e}");
    let e = identify(
        port,
        "bound",
        Some("pw-123"),
        "sslmode=disable channel_binding=require",
    )
    .unwrap_err();
    assert!(e.contains("channel binding"), "{e}");
    // A client that does not bind still gets in over TLS and without it.
    identify(
        port,
        "bound",
        Some("pw-123"),
        &format!("{no_cert} channel_binding=disable"),
    )
    .unwrap();
    identify(port, "bound", Some("pw-123"), "sslmode=disable").unwrap();
    assert!(serve.is_running());
    serve.interrupt();
}
