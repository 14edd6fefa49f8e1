//! TLS for the connection, with libpq's `sslmode` semantics, on OpenSSL (the
//! library libpq uses, so that every certificate and key libpq accepts is
//! accepted here too: X.509 version 1 certificates, RSA-PSS, old key formats).
//!
//! The policy is pure and unit-tested: [`verification`] decides how the
//! server's certificate is checked from the `sslmode` and whether a root
//! certificate file exists; [`first_encryption`] and [`fallback`] decide which
//! encryption a connection attempt uses and whether a failed attempt is tried
//! again the other way; [`key_file_refused`] is libpq's rule on the private
//! key's permissions; [`ssl_response`] reads the server's one-byte answer to
//! SSLRequest; [`sni_name`] decides what SNI names; [`handshake_failure`]
//! words a failed handshake as libpq does; [`host_name`] is libpq's check of
//! the certificate's names under verify-full. The engine (`engine.rs`)
//! applies them with OpenSSL: [`client_config`] reads the files into an
//! OpenSSL session and [`handshake`] is the thin async shell that runs it on
//! a socket.
//!
//! The rules come from libpq: `initialize_SSL`, `open_client_SSL` and
//! `verify_cb` in fe-secure-openssl.c (root file, client certificate and key,
//! CRL, SNI), `PQconnectPoll` / `select_next_encryption_method` in
//! fe-connect.c (the order of attempts and the fallbacks),
//! `pq_verify_peer_name_matches_certificate` in fe-secure-common.c (the host
//! name, never the `hostaddr`, is checked).

use std::io;
use std::path::PathBuf;

use crate::conninfo::{RootCerts, SslMode, TlsVersion};

mod engine;
pub mod host_name;

pub use engine::{
    client_config, handshake, private_key_from_bytes, CertificateRequest, Established, TlsTarget,
};
pub use host_name::HostNameError;

/// The ALPN protocol name PostgreSQL 17+ servers expect (libpq's
/// `PG_ALPN_PROTOCOL`); required with `sslnegotiation=direct`.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// libpq's hint when a verifying mode has no root certificate.
const ROOT_HINT: &str = "Either provide the file, use the system's trusted roots with \
     sslrootcert=system, or change sslmode to disable server certificate verification.";

/// Why TLS could not be set up or negotiated. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("root certificate file \"{}\" does not exist\n{ROOT_HINT}", .0.display())]
    RootCertMissing(PathBuf),
    #[error("could not get home directory to locate root certificate file\n{ROOT_HINT}")]
    NoRootCertPath,
    #[error("could not read {what} file \"{}\": {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// OpenSSL could not load a root certificate or certificate file.
    #[error("could not read {what} file \"{}\": {why}", path.display())]
    Load {
        what: &'static str,
        path: PathBuf,
        why: String,
    },
    #[error("could not load system root certificate paths: {0}")]
    SystemRoots(String),
    #[error("certificate present, but not private key file \"{}\"", .0.display())]
    KeyMissing(PathBuf),
    #[error("private key file \"{}\" is not a regular file", .0.display())]
    KeyNotRegular(PathBuf),
    #[error(
        "private key file \"{}\" has group or world access; file must have permissions \
         u=rw (0600) or less if owned by the current user, or permissions u=rw,g=r (0640) \
         or less if owned by root",
        .0.display()
    )]
    KeyPermissions(PathBuf),
    #[error(
        "private key file \"{}\" is encrypted and no sslpassword was given (walrcv never \
         prompts for it)",
        .0.display()
    )]
    KeyEncrypted(PathBuf),
    #[error("could not load private key file \"{}\": {why}", path.display())]
    KeyLoad { path: PathBuf, why: String },
    #[error("certificate does not match private key file \"{}\": {why}", path.display())]
    KeyMismatch { path: PathBuf, why: String },
    #[error("the certificate revocation list \"{}\" is invalid: {why}", path.display())]
    BadCrl { path: PathBuf, why: String },
    #[error("ssl_min_protocol_version {min} is above ssl_max_protocol_version {max}")]
    VersionRange { min: TlsVersion, max: TlsVersion },
    #[error("invalid TLS settings: {0}")]
    Config(String),
    #[error("the server does not support SSL, but SSL was required")]
    ServerRefusedTls,
    #[error("server sent an error response during SSL exchange")]
    ErrorDuringSslExchange,
    #[error("received invalid response to SSL negotiation: {0:?}")]
    InvalidSslResponse(char),
    /// The handshake failed; libpq's wording ("SSL error: certificate verify
    /// failed: ...", "SSL SYSCALL error: EOF detected").
    #[error("{0}")]
    Handshake(String),
    #[error("server did not request an SSL certificate")]
    CertificateNotRequested,
    #[error("server accepted connection without a valid SSL certificate")]
    CertificateNotSent,
    #[error("server certificate could not be obtained")]
    NoPeerCertificate,
    #[error("{0}")]
    HostName(HostNameError),
    #[error("direct SSL connection was established without ALPN protocol negotiation extension")]
    NoAlpn,
    #[error("SSL connection was established with unexpected ALPN protocol")]
    WrongAlpn,
}

impl TlsError {
    /// Whether the fault is in the local settings or files (a missing root
    /// file, a key readable by others...): the same for every host and every
    /// retry until the operator fixes it.
    pub fn is_local_configuration(&self) -> bool {
        matches!(
            self,
            TlsError::RootCertMissing(_)
                | TlsError::NoRootCertPath
                | TlsError::Read { .. }
                | TlsError::Load { .. }
                | TlsError::SystemRoots(_)
                | TlsError::KeyMissing(_)
                | TlsError::KeyNotRegular(_)
                | TlsError::KeyPermissions(_)
                | TlsError::KeyEncrypted(_)
                | TlsError::KeyLoad { .. }
                | TlsError::KeyMismatch { .. }
                | TlsError::BadCrl { .. }
                | TlsError::VersionRange { .. }
                | TlsError::Config(_)
        )
    }
}

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Encryption only (`require` without a root file, `prefer`, `allow`).
    None,
    /// The chain up to a trusted root, any host name (`verify-ca`).
    Chain,
    /// The chain and the host name (`verify-full`, `sslrootcert=system`).
    ChainAndName,
}

/// The verification libpq applies (`initialize_SSL`): a verifying mode
/// needs the root file; any other mode verifies the chain anyway when the
/// root file exists (libpq loads it and sets `SSL_VERIFY_PEER` whatever the
/// mode, which is why `require` behaves as `verify-ca` then). The system
/// store implies verify-full (libpq 16+).
pub fn verification(
    mode: SslMode,
    root: Option<&RootCerts>,
    root_file_exists: bool,
) -> Result<Verification, TlsError> {
    if root == Some(&RootCerts::System) {
        return Ok(Verification::ChainAndName);
    }
    let wanted = match mode {
        SslMode::VerifyFull => Verification::ChainAndName,
        SslMode::VerifyCa => Verification::Chain,
        _ if root_file_exists => Verification::Chain,
        _ => Verification::None,
    };
    if wanted != Verification::None && !root_file_exists {
        return Err(match root {
            Some(RootCerts::File(p)) => TlsError::RootCertMissing(p.clone()),
            _ => TlsError::NoRootCertPath,
        });
    }
    Ok(wanted)
}

/// What one connection attempt speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encryption {
    Plain,
    Tls,
}

/// The first attempt: plain text for `disable` and `allow` (libpq tries
/// `allow` without TLS first) and over Unix sockets (libpq never requests
/// SSL there, whatever the sslmode); TLS otherwise.
pub fn first_encryption(mode: SslMode, unix_socket: bool) -> Encryption {
    match mode {
        _ if unix_socket => Encryption::Plain,
        SslMode::Disable | SslMode::Allow => Encryption::Plain,
        _ => Encryption::Tls,
    }
}

/// How an attempt failed, as far as retrying the other way is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptFailure {
    /// The TLS handshake (or its set-up) failed.
    Handshake,
    /// The server answered start-up or authentication with an error
    /// (a `hostssl`/`hostnossl` line, a wrong password...).
    ServerRejected,
    /// Anything else (the network, a timeout): retrying the other way would
    /// not help.
    Other,
}

/// The next attempt after a failed one, on a new connection, as libpq's
/// `select_next_encryption_method`: `prefer` retries without TLS when the
/// handshake failed or the server rejected the TLS connection; `allow`
/// retries with TLS when the server rejected the plain one. Nothing else is
/// retried, and never twice.
pub fn fallback(mode: SslMode, tried: Encryption, failure: AttemptFailure) -> Option<Encryption> {
    match (mode, tried, failure) {
        (SslMode::Prefer, Encryption::Tls, AttemptFailure::Handshake)
        | (SslMode::Prefer, Encryption::Tls, AttemptFailure::ServerRejected) => {
            Some(Encryption::Plain)
        }
        (SslMode::Allow, Encryption::Plain, AttemptFailure::ServerRejected) => {
            Some(Encryption::Tls)
        }
        _ => None,
    }
}

/// What the server's one-byte answer to SSLRequest means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslResponse {
    /// 'S': go on with the TLS handshake.
    Handshake,
    /// 'N' under `disable`/`allow`/`prefer`: carry on in plain text on the
    /// same connection.
    ContinuePlain,
}

/// libpq's reading of the SSLRequest answer (`PQconnectPoll`,
/// `CONNECTION_SSL_STARTUP`): 'N' is plain text only when TLS was optional;
/// an 'E' is not trusted (the server is not authenticated yet) and ends the
/// attempt; anything else is a protocol violation.
pub fn ssl_response(mode: SslMode, byte: u8) -> Result<SslResponse, TlsError> {
    match byte {
        b'S' => Ok(SslResponse::Handshake),
        b'N' if matches!(mode, SslMode::Disable | SslMode::Allow | SslMode::Prefer) => {
            Ok(SslResponse::ContinuePlain)
        }
        b'N' => Err(TlsError::ServerRefusedTls),
        b'E' => Err(TlsError::ErrorDuringSslExchange),
        other => Err(TlsError::InvalidSslResponse(char::from(other))),
    }
}

/// The SSLRequest packet: length 8, code 80877103.
pub const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// libpq's rule on the private key file's mode (`initialize_SSL`, the same
/// as the server's `check_ssl_key_file_permissions`): a root-owned key may be
/// group-readable (0640, for system-wide keys read through a group), any
/// other key must have no group or other bit (0600). Whoever could read a
/// file that strict owns it, so the owner is not compared with the user.
/// `true` when the key must be refused.
pub fn key_file_refused(mode: u32, owner: u32) -> bool {
    let forbidden = if owner == 0 { 0o037 } else { 0o077 };
    mode & forbidden != 0
}

/// Whether a PEM text holds an encrypted private key (PKCS#8
/// `ENCRYPTED PRIVATE KEY`, or a legacy OpenSSL `Proc-Type: 4,ENCRYPTED`).
pub fn pem_key_is_encrypted(pem: &str) -> bool {
    pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") || pem.contains("Proc-Type: 4,ENCRYPTED")
}

/// What SNI names (libpq's `initialize_SSL`): the host name when `sslsni`
/// is on and the host is not an IP address literal (digits and dots, or
/// anything with a colon).
pub fn sni_name(host: &str, sni: bool) -> Option<&str> {
    let literal = host.bytes().all(|b| b.is_ascii_digit() || b == b'.') || host.contains(':');
    (sni && !host.is_empty() && !literal).then_some(host)
}

/// libpq's name of a protocol version, for messages.
pub fn version_name(v: TlsVersion) -> &'static str {
    match v {
        TlsVersion::Tls1 => "TLSv1",
        TlsVersion::Tls1_1 => "TLSv1.1",
        TlsVersion::Tls1_2 => "TLSv1.2",
        TlsVersion::Tls1_3 => "TLSv1.3",
    }
}

impl std::fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(version_name(*self))
    }
}

/// OpenSSL's reasons for a handshake that found no common protocol version,
/// after which libpq adds a hint naming the configured range.
const PROTOCOL_VERSION_REASONS: &[&str] = &[
    "no protocols available",
    "unsupported protocol",
    "bad protocol version number",
    "unknown protocol",
    "unknown ssl version",
    "unsupported ssl version",
    "wrong ssl version",
    "wrong version number",
    "tlsv1 alert protocol version",
    "version too high",
    "version too low",
];

/// A failed handshake in libpq's words (`open_client_SSL`): "SSL error:"
/// and OpenSSL's reason, with the certificate check that failed when the
/// reason is a failed verification (OpenSSL's `X509_verify_cert_error_string`:
/// "certificate has expired", "certificate has been revoked"...), and
/// libpq's hint on the protocol range when no version was common; "SSL
/// SYSCALL error:" when the socket failed or closed.
pub fn handshake_failure(
    reason: Option<&str>,
    verify_error: Option<&str>,
    io_error: Option<&io::Error>,
    min: Option<TlsVersion>,
    max: Option<TlsVersion>,
) -> String {
    match (reason, io_error) {
        (Some(reason), _) => {
            let mut text = format!("SSL error: {reason}");
            if let Some(check) = verify_error.filter(|_| reason == "certificate verify failed") {
                text.push_str(": ");
                text.push_str(check);
            }
            if PROTOCOL_VERSION_REASONS.contains(&reason) {
                let name = |v: Option<TlsVersion>| v.map_or("any", version_name);
                text.push_str(&format!(
                    "\nThis may indicate that the server does not support any SSL protocol \
                     version between {} and {}.",
                    name(min),
                    name(max)
                ));
            }
            text
        }
        (None, Some(e)) => format!("SSL SYSCALL error: {e}"),
        (None, None) => "SSL SYSCALL error: EOF detected".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(p: &str) -> RootCerts {
        RootCerts::File(PathBuf::from(p))
    }

    #[test]
    fn require_verifies_the_chain_only_when_the_root_file_exists() {
        let root = file("/r.crt");
        for mode in [SslMode::Allow, SslMode::Prefer, SslMode::Require] {
            assert_eq!(
                verification(mode, Some(&root), false).unwrap(),
                Verification::None
            );
            assert_eq!(
                verification(mode, Some(&root), true).unwrap(),
                Verification::Chain
            );
            assert_eq!(verification(mode, None, false).unwrap(), Verification::None);
        }
    }

    #[test]
    fn verifying_modes_need_the_root_file_with_libpqs_message() {
        let root = file("/nowhere/root.crt");
        let e = verification(SslMode::VerifyCa, Some(&root), false).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("root certificate file \"/nowhere/root.crt\" does not exist\n{ROOT_HINT}")
        );
        let e = verification(SslMode::VerifyFull, None, false).unwrap_err();
        assert!(matches!(e, TlsError::NoRootCertPath), "{e}");
        assert_eq!(
            verification(SslMode::VerifyCa, Some(&root), true).unwrap(),
            Verification::Chain
        );
        assert_eq!(
            verification(SslMode::VerifyFull, Some(&root), true).unwrap(),
            Verification::ChainAndName
        );
    }

    #[test]
    fn the_system_store_means_verify_full() {
        for mode in [SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull] {
            assert_eq!(
                verification(mode, Some(&RootCerts::System), false).unwrap(),
                Verification::ChainAndName
            );
        }
    }

    #[test]
    fn first_attempts_and_fallbacks_follow_libpq() {
        use AttemptFailure::*;
        use Encryption::*;
        assert_eq!(first_encryption(SslMode::Disable, false), Plain);
        assert_eq!(first_encryption(SslMode::Allow, false), Plain);
        for mode in [SslMode::Prefer, SslMode::Require, SslMode::VerifyCa] {
            assert_eq!(first_encryption(mode, false), Tls);
            assert_eq!(first_encryption(mode, true), Plain, "Unix socket");
        }
        assert_eq!(fallback(SslMode::Prefer, Tls, Handshake), Some(Plain));
        assert_eq!(fallback(SslMode::Prefer, Tls, ServerRejected), Some(Plain));
        assert_eq!(fallback(SslMode::Prefer, Tls, Other), None);
        assert_eq!(fallback(SslMode::Prefer, Plain, ServerRejected), None);
        assert_eq!(fallback(SslMode::Allow, Plain, ServerRejected), Some(Tls));
        assert_eq!(fallback(SslMode::Allow, Plain, Other), None);
        assert_eq!(fallback(SslMode::Allow, Tls, ServerRejected), None);
        for mode in [
            SslMode::Disable,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ] {
            for failure in [Handshake, ServerRejected, Other] {
                assert_eq!(fallback(mode, Tls, failure), None, "{mode:?}");
                assert_eq!(fallback(mode, Plain, failure), None, "{mode:?}");
            }
        }
    }

    #[test]
    fn never_plain_text_when_tls_was_required() {
        for mode in [SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull] {
            assert!(matches!(
                ssl_response(mode, b'N'),
                Err(TlsError::ServerRefusedTls)
            ));
            assert_eq!(ssl_response(mode, b'S').unwrap(), SslResponse::Handshake);
        }
        for mode in [SslMode::Allow, SslMode::Prefer] {
            assert_eq!(
                ssl_response(mode, b'N').unwrap(),
                SslResponse::ContinuePlain
            );
        }
        let e = ssl_response(SslMode::Prefer, b'E').unwrap_err();
        assert_eq!(
            e.to_string(),
            "server sent an error response during SSL exchange"
        );
        let e = ssl_response(SslMode::Prefer, b'H').unwrap_err();
        assert!(matches!(e, TlsError::InvalidSslResponse('H')), "{e}");
    }

    #[test]
    fn key_permissions_as_libpq() {
        let user = 1000;
        assert!(!key_file_refused(0o100600, user));
        assert!(!key_file_refused(0o100400, user));
        assert!(key_file_refused(0o100640, user));
        assert!(key_file_refused(0o100604, user));
        // Owned by root: group read is allowed, nothing more.
        assert!(!key_file_refused(0o100640, 0));
        assert!(!key_file_refused(0o100600, 0));
        assert!(key_file_refused(0o100660, 0));
        assert!(key_file_refused(0o100644, 0));
    }

    #[test]
    fn private_keys_in_pem_and_der_and_errors_that_do_not_quote_them() {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let key_pem = certified.signing_key.serialize_pem();
        let cert_pem = certified.cert.pem();
        assert!(private_key_from_bytes(key_pem.as_bytes(), None).is_ok());
        assert!(private_key_from_bytes(&certified.signing_key.serialize_der(), None).is_ok());
        let with_cert = format!("{cert_pem}{key_pem}");
        assert!(private_key_from_bytes(with_cert.as_bytes(), None).is_ok());
        let e = private_key_from_bytes(cert_pem.as_bytes(), None).unwrap_err();
        assert!(!e.contains("BEGIN"), "{e}");
        // An encrypted key without a password fails, without a prompt.
        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMII\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert!(private_key_from_bytes(encrypted.as_bytes(), None).is_err());
    }

    #[test]
    fn encrypted_keys_are_recognised() {
        assert!(pem_key_is_encrypted(
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMII\n-----END ENCRYPTED PRIVATE KEY-----\n"
        ));
        assert!(pem_key_is_encrypted(
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES\n"
        ));
        assert!(!pem_key_is_encrypted(
            "-----BEGIN PRIVATE KEY-----\nMII\n-----END PRIVATE KEY-----\n"
        ));
    }

    #[test]
    fn local_configuration_faults_are_told_from_the_servers() {
        assert!(TlsError::KeyPermissions(PathBuf::from("k")).is_local_configuration());
        assert!(TlsError::RootCertMissing(PathBuf::from("r")).is_local_configuration());
        assert!(!TlsError::ServerRefusedTls.is_local_configuration());
        assert!(!TlsError::Handshake("x".into()).is_local_configuration());
        assert!(!TlsError::NoAlpn.is_local_configuration());
    }

    #[test]
    fn the_ssl_request_code_is_postgres_s() {
        assert_eq!(
            u32::from_be_bytes(SSL_REQUEST[4..].try_into().unwrap()),
            80877103
        );
        assert_eq!(u32::from_be_bytes(SSL_REQUEST[..4].try_into().unwrap()), 8);
    }

    #[test]
    fn encrypted_keys_open_with_sslpassword_in_pem_and_pkcs8() {
        use openssl::ec::{EcGroup, EcKey};
        use openssl::symm::Cipher;
        let group = EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
        let ec = EcKey::generate(&group).unwrap();
        let traditional = ec
            .private_key_to_pem_passphrase(Cipher::aes_256_cbc(), b"s3cret")
            .unwrap();
        assert!(pem_key_is_encrypted(&String::from_utf8_lossy(&traditional)));
        let pkey = openssl::pkey::PKey::from_ec_key(ec).unwrap();
        let pkcs8 = pkey
            .private_key_to_pem_pkcs8_passphrase(Cipher::aes_256_cbc(), b"s3cret")
            .unwrap();
        assert!(String::from_utf8_lossy(&pkcs8).contains("BEGIN ENCRYPTED PRIVATE KEY"));
        for (what, key) in [("PEM", &traditional), ("PKCS#8", &pkcs8)] {
            let opened = private_key_from_bytes(key, Some(b"s3cret")).unwrap();
            assert!(opened.public_eq(&pkey), "{what}");
            let e = private_key_from_bytes(key, Some(b"wrong")).unwrap_err();
            assert!(!e.contains("BEGIN"), "{what}: {e}");
            assert!(private_key_from_bytes(key, None).is_err(), "{what}");
        }
    }

    #[test]
    fn sni_names_host_names_never_addresses() {
        assert_eq!(sni_name("db.example", true), Some("db.example"));
        assert_eq!(sni_name("db.example", false), None);
        assert_eq!(sni_name("127.0.0.1", true), None);
        assert_eq!(sni_name("::1", true), None);
        assert_eq!(sni_name("", true), None);
    }

    #[test]
    fn handshake_failures_in_libpqs_words() {
        assert_eq!(
            handshake_failure(
                Some("certificate verify failed"),
                Some("certificate has been revoked"),
                None,
                Some(TlsVersion::Tls1_2),
                None
            ),
            "SSL error: certificate verify failed: certificate has been revoked"
        );
        assert_eq!(
            handshake_failure(
                Some("tlsv1 alert unknown ca"),
                Some("ignored"),
                None,
                None,
                None
            ),
            "SSL error: tlsv1 alert unknown ca"
        );
        assert_eq!(
            handshake_failure(
                Some("no protocols available"),
                None,
                None,
                Some(TlsVersion::Tls1_3),
                None
            ),
            "SSL error: no protocols available\nThis may indicate that the server does not \
             support any SSL protocol version between TLSv1.3 and any."
        );
        assert_eq!(
            handshake_failure(None, None, None, None, None),
            "SSL SYSCALL error: EOF detected"
        );
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert!(handshake_failure(None, None, Some(&reset), None, None)
            .starts_with("SSL SYSCALL error: "));
    }
}
