//! Authentication against real servers (one per test, pg_hba lines per role:
//! `password`, `md5`, `trust`, and `scram-sha-256` for everything else) and
//! against scripted fake servers that misbehave in ways a real one does not:
//! a cleartext request to a client that requires SCRAM (recording whether a
//! password arrived), a wrong SCRAM server signature, AuthenticationOk right
//! after SASLContinue.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use walrcv::conninfo::{AuthMethod, ChannelBinding, ConnParams, RequireAuth, SslMode, TlsSettings};
use walrcv::pgwire::auth::AuthError;
use walrcv::pgwire::{Connection, PgError, PgErrorKind, TargetError};

use crate::support::{conn_params, Auth, PgBuilder, PgServer, SUPERUSER, SUPERUSER_PASSWORD};

const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// `require_auth` as a connection string would give it.
fn require(text: &str) -> Option<RequireAuth> {
    let negated = text.starts_with('!');
    let methods = text
        .split(',')
        .map(|m| match m.trim_start_matches('!') {
            "password" => AuthMethod::Password,
            "md5" => AuthMethod::Md5,
            "scram-sha-256" => AuthMethod::ScramSha256,
            "none" => AuthMethod::None,
            other => panic!("{other}"),
        })
        .collect();
    Some(RequireAuth { negated, methods })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Connects, runs IDENTIFY_SYSTEM; the system identifier or the error.
fn identify(p: &ConnParams) -> Result<String, PgError> {
    runtime().block_on(async {
        let mut conn = Connection::connect(p, true, REPLY_TIMEOUT).await?;
        let r = conn.simple_query("IDENTIFY_SYSTEM").await?;
        conn.close().await;
        Ok(r.text(0, 0).unwrap_or_default())
    })
}

/// [`identify`], and the method the server authenticated walrcv with
/// (empty when it refused). Read from the connection, not from walrcv's
/// debug log: tracing may cache a callsite as uninteresting when another
/// test's thread reaches it first (tokio-rs/tracing#3611).
fn identify_with_mechanism(p: &ConnParams) -> (Result<String, PgError>, String) {
    runtime().block_on(async {
        let mut conn = match Connection::connect(p, true, REPLY_TIMEOUT).await {
            Ok(conn) => conn,
            Err(e) => return (Err(e), String::new()),
        };
        let method = conn.authentication().name().to_owned();
        let r = conn.simple_query("IDENTIFY_SYSTEM").await;
        conn.close().await;
        (r.map(|r| r.text(0, 0).unwrap_or_default()), method)
    })
}

/// The text of an authentication error walrcv raised itself.
fn client_refusal<T: std::fmt::Debug>(r: Result<T, PgError>) -> AuthError {
    match r {
        Err(PgError::At(TargetError {
            kind: PgErrorKind::Authentication { source },
            ..
        })) => source,
        other => panic!("expected walrcv to refuse, got {other:?}"),
    }
}

/// One server: `pw_user` authenticates with `password`, `md5_user` with
/// `md5` (its password stored as MD5), `trust_user` with `trust`, everyone
/// else (the superuser) with `scram-sha-256`.
fn server_with_every_method() -> PgServer {
    every_method(PgServer::builder())
}

fn every_method(builder: PgBuilder) -> PgServer {
    let pg = builder
        .auth(Auth::Scram)
        .hba("host replication pw_user 127.0.0.1/32 password")
        .hba("host replication md5_user 127.0.0.1/32 md5")
        .hba("host replication trust_user 127.0.0.1/32 trust")
        .start();
    pg.create_role("pw_user", Some("pw-secret"), true);
    pg.create_role("trust_user", None, true);
    pg.psql(
        "SET password_encryption = 'md5'; \
         CREATE ROLE md5_user LOGIN REPLICATION PASSWORD 'md5-secret'",
    );
    pg
}

#[test]
fn auth_every_method_connects_with_the_right_password() {
    let pg = server_with_every_method();
    let id = pg.system_identifier().to_string();
    let port = pg.port();
    for (user, password) in [
        (SUPERUSER, Some(SUPERUSER_PASSWORD)),
        ("pw_user", Some("pw-secret")),
        ("md5_user", Some("md5-secret")),
        ("trust_user", None),
    ] {
        let got = identify(&conn_params(port, user, password));
        assert_eq!(got.unwrap_or_else(|e| panic!("{user}: {e}")), id, "{user}");
    }
    // A wrong password is the server's refusal, after a completed exchange.
    for user in [SUPERUSER, "pw_user", "md5_user"] {
        let e = identify(&conn_params(port, user, Some("wrong"))).unwrap_err();
        assert_eq!(e.sqlstate(), Some("28P01"), "{user}: {e}");
    }
}

#[test]
fn auth_require_auth_against_each_method() {
    let pg = server_with_every_method();
    let port = pg.port();
    let id = pg.system_identifier().to_string();
    let with = |user: &str, password: Option<&str>, required: &str| {
        let mut p = conn_params(port, user, password);
        p.require_auth = require(required);
        identify(&p)
    };
    let scram = (SUPERUSER, Some(SUPERUSER_PASSWORD));
    let password = ("pw_user", Some("pw-secret"));
    let md5 = ("md5_user", Some("md5-secret"));
    let trust = ("trust_user", None);
    let refusals = [
        (
            password,
            "scram-sha-256",
            "server requested a cleartext password",
        ),
        (md5, "scram-sha-256", "server requested a hashed password"),
        (
            trust,
            "scram-sha-256",
            "server did not complete authentication",
        ),
        (
            scram,
            "password,md5",
            "server requested SASL authentication",
        ),
        (md5, "!md5", "server requested a hashed password"),
        (
            password,
            "!password,!md5",
            "server requested a cleartext password",
        ),
        (trust, "!none", "server did not complete authentication"),
        (password, "none", "server requested a cleartext password"),
    ];
    for ((user, pw), required, reason) in refusals {
        let e = client_refusal(with(user, pw, required));
        assert_eq!(
            e.to_string(),
            format!("authentication method requirement \"{required}\" failed: {reason}"),
            "{user} with require_auth={required}"
        );
    }
    let accepted = [
        (scram, "scram-sha-256"),
        (password, "password"),
        (md5, "md5"),
        (trust, "none"),
        (password, "!md5"),
        (scram, "!password,!md5"),
        (trust, "!md5"),
        (md5, "!none"),
        (trust, "scram-sha-256,none"),
    ];
    for ((user, pw), required) in accepted {
        let got = with(user, pw, required);
        let got = got.unwrap_or_else(|e| panic!("{user} with require_auth={required}: {e}"));
        assert_eq!(got, id);
    }
}

#[test]
fn auth_channel_binding_require_fails_over_plain_text() {
    let pg = server_with_every_method();
    let port = pg.port();
    for (user, pw) in [
        (SUPERUSER, Some(SUPERUSER_PASSWORD)),
        ("md5_user", Some("md5-secret")),
        ("pw_user", Some("pw-secret")),
        ("trust_user", None),
    ] {
        let mut p = conn_params(port, user, pw);
        p.channel_binding = ChannelBinding::Require;
        let e = client_refusal(identify(&p));
        assert!(e.to_string().starts_with("channel binding"), "{user}: {e}");
        // channel_binding=disable changes nothing over plain text.
        p.channel_binding = ChannelBinding::Disable;
        assert!(identify(&p).is_ok(), "{user}");
    }
}

// ---------------------------------------------------------------------------
// Over TLS: SCRAM-SHA-256-PLUS against the server's own channel binding check
// ---------------------------------------------------------------------------

/// A server certificate signed with `alg` and its key, written for the
/// server (the key 0600, owned by the server's OS user when run as root).
struct ServerCert {
    dir: tempfile::TempDir,
}

impl ServerCert {
    fn new(alg: &'static rcgen::SignatureAlgorithm) -> ServerCert {
        let key = if alg == &rcgen::PKCS_RSA_SHA256 || alg == &rcgen::PKCS_RSA_SHA512 {
            let pem = std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/testdata/certs/rsa2048.key"
            ))
            .unwrap();
            rcgen::KeyPair::from_pem_and_sign_algo(&pem, alg).unwrap()
        } else {
            rcgen::KeyPair::generate_for(alg).unwrap()
        };
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("walrcv-auth-tls")
            .tempdir_in("/tmp")
            .unwrap();
        let mode = |m| std::fs::Permissions::from_mode(m);
        std::fs::set_permissions(dir.path(), mode(0o755)).unwrap();
        std::fs::write(dir.path().join("server.crt"), cert.pem()).unwrap();
        let key_path = dir.path().join("server.key");
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        std::fs::set_permissions(&key_path, mode(0o600)).unwrap();
        if nix::unistd::geteuid().is_root() {
            let user = nix::unistd::User::from_name("postgres").unwrap().unwrap();
            nix::unistd::chown(&key_path, Some(user.uid), Some(user.gid)).unwrap();
        }
        ServerCert { dir }
    }

    /// [`server_with_every_method`] with `ssl = on` and this certificate.
    fn server(&self) -> PgServer {
        let file = |name: &str| self.dir.path().join(name).display().to_string();
        let builder = PgServer::builder()
            .conf("ssl = on")
            .conf(&format!("ssl_cert_file = '{}'", file("server.crt")))
            .conf(&format!("ssl_key_file = '{}'", file("server.key")));
        every_method(builder)
    }
}

/// `sslmode=require` without a root certificate (encrypted, not verified:
/// what binding protects against a man in the middle in that case).
fn over_tls(port: u16, user: &str, password: Option<&str>, cb: ChannelBinding) -> ConnParams {
    let mut p = conn_params(port, user, password);
    p.tls = TlsSettings {
        mode: SslMode::Require,
        ..TlsSettings::prefer()
    };
    p.channel_binding = cb;
    p
}

#[test]
fn auth_scram_plus_binds_to_certificates_of_each_signature_hash() {
    // The server checks the binding data against its own hash of its
    // certificate (OpenSSL's choice of hash): SHA-256, SHA-384, SHA-512.
    for alg in [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_RSA_SHA256,
        &rcgen::PKCS_RSA_SHA512,
    ] {
        let cert = ServerCert::new(alg);
        let pg = cert.server();
        let p = over_tls(
            pg.port(),
            SUPERUSER,
            Some(SUPERUSER_PASSWORD),
            ChannelBinding::Require,
        );
        let got = identify(&p).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(got, pg.system_identifier().to_string(), "{alg:?}");
    }
}

#[test]
fn auth_channel_binding_over_tls_against_each_method() {
    let cert = ServerCert::new(&rcgen::PKCS_ECDSA_P384_SHA384);
    let pg = cert.server();
    let port = pg.port();
    let scram = (SUPERUSER, Some(SUPERUSER_PASSWORD));

    // SCRAM over TLS: PLUS under prefer and require, plain SCRAM under
    // disable; each completes with a verified server signature.
    for (cb, expected) in [
        (ChannelBinding::Prefer, "SCRAM-SHA-256-PLUS"),
        (ChannelBinding::Require, "SCRAM-SHA-256-PLUS"),
        (ChannelBinding::Disable, "SCRAM-SHA-256"),
    ] {
        let (got, mechanism) = identify_with_mechanism(&over_tls(port, scram.0, scram.1, cb));
        assert!(got.is_ok(), "{cb:?}: {got:?}");
        assert_eq!(mechanism, expected, "{cb:?}: the mechanism chosen");
    }
    // With require_auth as well.
    let mut p = over_tls(port, scram.0, scram.1, ChannelBinding::Require);
    p.require_auth = require("scram-sha-256");
    let (got, mechanism) = identify_with_mechanism(&p);
    assert!(got.is_ok(), "{got:?}");
    assert_eq!(mechanism, "SCRAM-SHA-256-PLUS");

    // channel_binding=require with any other method: refused by walrcv,
    // before a password or hash is sent.
    for (user, pw, what) in [
        (
            "md5_user",
            Some("md5-secret"),
            "not supported by server's authentication request",
        ),
        (
            "pw_user",
            Some("pw-secret"),
            "not supported by server's authentication request",
        ),
        (
            "trust_user",
            None,
            "server authenticated client without channel binding",
        ),
    ] {
        let e = client_refusal(identify(&over_tls(port, user, pw, ChannelBinding::Require)));
        assert!(e.to_string().contains(what), "{user}: {e}");
        // The same method is fine without the requirement.
        let ok = identify(&over_tls(port, user, pw, ChannelBinding::Prefer));
        assert!(ok.is_ok(), "{user}: {ok:?}");
    }

    // The same SCRAM server over plain text offers no PLUS: refused.
    let mut p = conn_params(port, scram.0, scram.1);
    p.channel_binding = ChannelBinding::Require;
    let e = client_refusal(identify(&p));
    assert!(
        matches!(e, AuthError::ChannelBindingNotOffered { .. }),
        "{e}"
    );
}

// ---------------------------------------------------------------------------
// Scripted fake servers
// ---------------------------------------------------------------------------

/// An Authentication ('R') message with this code and payload.
fn auth_message(code: i32, payload: &[u8]) -> Vec<u8> {
    let mut m = vec![b'R'];
    m.extend_from_slice(&(8 + payload.len() as u32).to_be_bytes());
    m.extend_from_slice(&code.to_be_bytes());
    m.extend_from_slice(payload);
    m
}

const READY: &[u8] = b"Z\0\0\0\x05I";

/// The client's next message (type, body), or `None` once it closed.
async fn read_message(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
    let mut body = vec![0; len - 4];
    s.read_exact(&mut body).await.ok()?;
    Some((head[0], body))
}

/// Accepts one client and reads its start-up packet.
async fn accept_client(listener: TcpListener) -> TcpStream {
    let (mut s, _) = listener.accept().await.unwrap();
    let len = s.read_u32().await.unwrap() as usize;
    let mut rest = vec![0; len - 4];
    s.read_exact(&mut rest).await.unwrap();
    s
}

/// A fake server running `script` on its one client; the test gets the
/// client's result and the script's.
fn against_fake<T: Send + 'static, F>(
    p: impl FnOnce(u16) -> ConnParams,
    script: impl FnOnce(TcpStream) -> F + Send + 'static,
) -> (Result<(), PgError>, T)
where
    F: std::future::Future<Output = T> + Send + 'static,
{
    runtime().block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move { script(accept_client(listener).await).await });
        // Dropped at once: a script that reads to the end then finishes.
        let client = Connection::connect(&p(port), true, REPLY_TIMEOUT)
            .await
            .map(drop);
        let outcome = server.await.unwrap();
        (client, outcome)
    })
}

/// Every message type the client sent until it closed the connection.
async fn drain(mut s: TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    while let Some((kind, _)) = read_message(&mut s).await {
        seen.push(kind);
    }
    seen
}

#[test]
fn auth_require_auth_refuses_cleartext_before_sending_the_password() {
    let (client, sent) = against_fake(
        |port| {
            let mut p = conn_params(port, "walrcv", Some("never-sent"));
            p.require_auth = require("scram-sha-256");
            p
        },
        |mut s| async move {
            s.write_all(&auth_message(3, b"")).await.unwrap();
            // The client must close without answering.
            drain(s).await
        },
    );
    let e = client_refusal(client);
    assert_eq!(
        e.to_string(),
        "authentication method requirement \"scram-sha-256\" failed: server requested a cleartext password"
    );
    assert!(
        !sent.contains(&b'p'),
        "a PasswordMessage was sent: {sent:?}"
    );
}

#[test]
fn auth_channel_binding_require_sends_no_md5_hash() {
    let (client, sent) = against_fake(
        |port| {
            let mut p = conn_params(port, "walrcv", Some("never-sent"));
            p.channel_binding = ChannelBinding::Require;
            p
        },
        |mut s| async move {
            s.write_all(&auth_message(5, b"salt")).await.unwrap();
            drain(s).await
        },
    );
    let e = client_refusal(client);
    assert!(
        matches!(e, AuthError::ChannelBindingRequestUnsupported { .. }),
        "{e}"
    );
    assert!(!sent.contains(&b'p'), "{sent:?}");
}

/// A SCRAM-SHA-256 server that does not know the password: it answers the
/// client-first message, then either skips its final message or signs with
/// a made-up key. Returns whether the client sent its proof.
async fn scram_impostor(mut s: TcpStream, send_final: bool) -> bool {
    s.write_all(&auth_message(10, b"SCRAM-SHA-256\0\0"))
        .await
        .unwrap();
    let (kind, body) = read_message(&mut s).await.expect("SASLInitialResponse");
    assert_eq!(kind, b'p');
    let first = String::from_utf8_lossy(&body).into_owned();
    let nonce = first.split("r=").nth(1).expect("client nonce").to_string();
    let server_first = format!("r={nonce}IMPOSTOR,s={},i=4096", B64.encode(b"salt"));
    s.write_all(&auth_message(11, server_first.as_bytes()))
        .await
        .unwrap();
    let proof_sent = matches!(read_message(&mut s).await, Some((b'p', _)));
    let mut reply = Vec::new();
    if send_final {
        let made_up = format!("v={}", B64.encode([0x5a; 32]));
        reply.extend(auth_message(12, made_up.as_bytes()));
    }
    reply.extend(auth_message(0, b""));
    reply.extend_from_slice(READY);
    // The client may already have gone: its refusal is what is tested.
    let _ = s.write_all(&reply).await;
    drain(s).await;
    proof_sent
}

#[test]
fn auth_a_wrong_scram_server_signature_is_refused() {
    let (client, proof_sent) = against_fake(
        |port| conn_params(port, "walrcv", Some("pw")),
        |s| scram_impostor(s, true),
    );
    assert!(proof_sent);
    let e = client_refusal(client);
    assert_eq!(e, AuthError::WrongServerSignature);
}

#[test]
fn auth_authentication_ok_right_after_sasl_continue_is_refused() {
    let (client, proof_sent) = against_fake(
        |port| conn_params(port, "walrcv", Some("pw")),
        |s| scram_impostor(s, false),
    );
    assert!(proof_sent);
    let e = client_refusal(client);
    assert_eq!(e, AuthError::SaslIncomplete);
}

// ---------------------------------------------------------------------------
// The walrcv binary
// ---------------------------------------------------------------------------

#[test]
fn auth_cli_require_auth_refusal_exits_2_and_no_secret_is_logged() {
    let pg = server_with_every_method();
    let dir = tempfile::tempdir().unwrap();
    let run = |conninfo: String, log: &str| {
        let out = crate::support::Walrcv::new([
            "stream",
            "-D",
            dir.path().to_str().unwrap(),
            "-n",
            "-v",
            "-v",
        ])
        .env("WALRCV_LOG", log)
        .args(["-E", &crate::support::format_lsn(pg.current_lsn())])
        .args(["-d", &conninfo])
        .run();
        (out.code(), out.stderr)
    };
    let base = format!("host=127.0.0.1 port={}", pg.port());

    let (code, stderr) = run(
        format!("{base} user=pw_user password=pw-secret require_auth=scram-sha-256"),
        "trace",
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "authentication method requirement \"scram-sha-256\" failed: server requested a cleartext password"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("pw-secret"), "{stderr}");

    // A full SCRAM exchange and streaming to the server's current position,
    // traced at the finest level: the password appears nowhere.
    let (code, stderr) = run(
        format!("{base} user={SUPERUSER} password={SUPERUSER_PASSWORD} require_auth=scram-sha-256"),
        "trace",
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("SCRAM-SHA-256 chosen"), "{stderr}");
    assert!(stderr.contains("server signature verified"), "{stderr}");
    assert!(!stderr.contains(SUPERUSER_PASSWORD), "{stderr}");
}

// ---------------------------------------------------------------------------
// Hostile servers before authentication: bounded in size, count and time
// ---------------------------------------------------------------------------

/// Connects to a fake server running `script` with this reply timeout;
/// `Err(())` if the attempt was still going after `limit` (a hang).
fn connect_to_fake<F>(
    p: impl FnOnce(u16) -> ConnParams,
    reply_timeout: Duration,
    limit: Duration,
    script: impl FnOnce(TcpStream) -> F + Send + 'static,
) -> Result<Result<(), PgError>, ()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    runtime().block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move { script(accept_client(listener).await).await });
        let params = p(port);
        let connect = Connection::connect(&params, true, reply_timeout);
        let outcome = tokio::time::timeout(limit, connect).await;
        server.abort();
        outcome.map(|r| r.map(drop)).map_err(drop)
    })
}

/// A ParameterStatus ('S') message.
fn parameter_status(name: &str, value: &str) -> Vec<u8> {
    let mut m = vec![b'S'];
    m.extend_from_slice(&((4 + name.len() + value.len() + 2) as u32).to_be_bytes());
    for s in [name, value] {
        m.extend_from_slice(s.as_bytes());
        m.push(0);
    }
    m
}

/// A server that picks the SCRAM iteration count before it has proved
/// anything: 4294967295 (hours of PBKDF2 on the runtime's only thread)
/// is refused at once, naming the count and walrcv's limit.
#[test]
fn auth_an_absurd_scram_iteration_count_is_refused_at_once() {
    let started = std::time::Instant::now();
    let client = connect_to_fake(
        |port| conn_params(port, "walrcv", Some("pw")),
        REPLY_TIMEOUT,
        Duration::from_secs(20),
        |mut s| async move {
            s.write_all(&auth_message(10, b"SCRAM-SHA-256\0\0"))
                .await
                .unwrap();
            let (_, body) = read_message(&mut s).await.expect("SASLInitialResponse");
            let first = String::from_utf8_lossy(&body).into_owned();
            let nonce = first.split("r=").nth(1).expect("client nonce").to_string();
            let server_first = format!("r={nonce}X,s={},i=4294967295", B64.encode(b"salt"));
            let _ = s
                .write_all(&auth_message(11, server_first.as_bytes()))
                .await;
            drain(s).await;
        },
    )
    .expect("the attempt hung");
    assert!(started.elapsed() < Duration::from_secs(5));
    let e = client_refusal(client).to_string();
    assert_eq!(
        e,
        "the server asks for 4294967295 SCRAM iterations, more than walrcv accepts (100000; \
         PostgreSQL's default is 4096, see scram_iterations)"
    );
}

/// A server that floods ParameterStatus after AuthenticationOk (each one
/// new, so each one kept) is refused once it passes the cap, long before the
/// attempt's deadline.
#[test]
fn startup_a_parameter_status_flood_is_refused() {
    let started = std::time::Instant::now();
    let client = connect_to_fake(
        |port| conn_params(port, "walrcv", None),
        REPLY_TIMEOUT,
        Duration::from_secs(20),
        |mut s| async move {
            let _ = s.write_all(&auth_message(0, b"")).await;
            for i in 0u64.. {
                let batch: Vec<u8> = (0..100)
                    .flat_map(|j| parameter_status(&format!("p{i}_{j}"), "v"))
                    .collect();
                if s.write_all(&batch).await.is_err() {
                    return;
                }
            }
        },
    )
    .expect("the attempt hung");
    assert!(started.elapsed() < Duration::from_secs(10));
    let e = client.expect_err("a flood is no start-up").to_string();
    assert!(e.contains("more than 1000 ParameterStatus messages"), "{e}");
}

/// A server that never finishes the start-up but keeps the connection alive
/// (a BackendKeyData every 100 ms, so no wait for a message reaches the
/// reply timeout) is given up at the attempt's deadline, even without
/// connect_timeout: twice the reply timeout.
#[test]
fn startup_that_never_finishes_ends_at_the_deadline_without_connect_timeout() {
    let started = std::time::Instant::now();
    let client = connect_to_fake(
        |port| ConnParams {
            connect_timeout: None,
            ..conn_params(port, "walrcv", None)
        },
        Duration::from_secs(1),
        Duration::from_secs(20),
        |mut s| async move {
            let _ = s.write_all(&auth_message(0, b"")).await;
            let key_data = b"K\0\0\0\x0c\0\0\0\x01\0\0\0\x02";
            loop {
                if s.write_all(key_data).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
    )
    .expect("the attempt hung");
    let took = started.elapsed();
    let e = client.expect_err("no ReadyForQuery ever came").to_string();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "{took:?}: {e}"
    );
    assert!(e.contains("timed out after 2 s"), "{e}");
}

/// Before authentication the messages are small, as libpq has them
/// (fe-connect.c): an authentication request of more than 2000 bytes, or an
/// error of more than 30000, is a protocol error and is not read.
#[test]
fn startup_oversized_messages_before_authentication_are_refused() {
    // A SASL request listing 100 kB of mechanisms.
    let mut mechanisms = Vec::new();
    for i in 0..10_000 {
        mechanisms.extend_from_slice(format!("MECH-{i:04}\0").as_bytes());
    }
    mechanisms.push(0);
    let huge_sasl = auth_message(10, &mechanisms);
    // An ErrorResponse of 40 kB.
    let mut fields = b"SFATAL\0C28000\0M".to_vec();
    fields.extend(std::iter::repeat_n(b'x', 40_000));
    fields.extend_from_slice(b"\0\0");
    let mut huge_error = vec![b'E'];
    huge_error.extend_from_slice(&((4 + fields.len()) as u32).to_be_bytes());
    huge_error.extend_from_slice(&fields);

    for (what, message, expected) in [
        (
            "SASL request",
            huge_sasl,
            "invalid message length 100009 for message type 'R' during start-up (at most 2000)",
        ),
        (
            "error",
            huge_error,
            "invalid message length 40021 for message type 'E' during start-up (at most 30000)",
        ),
    ] {
        let client = connect_to_fake(
            |port| conn_params(port, "walrcv", Some("pw")),
            REPLY_TIMEOUT,
            Duration::from_secs(20),
            move |mut s| async move {
                let _ = s.write_all(&message).await;
                drain(s).await;
            },
        )
        .expect("the attempt hung");
        let e = client.expect_err(what).to_string();
        assert!(e.contains(expected), "{what}: {e}");
    }
}
