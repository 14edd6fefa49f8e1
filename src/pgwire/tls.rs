//! TLS for the connection, with libpq's `sslmode` semantics, on rustls (ring
//! provider, no OpenSSL).
//!
//! The policy is pure and unit-tested: [`verification`] decides how the
//! server's certificate is checked from the `sslmode` and whether a root
//! certificate file exists; [`first_encryption`] and [`fallback`] decide which
//! encryption a connection attempt uses and whether a failed attempt is tried
//! again the other way; [`key_file_refused`] is libpq's rule on the private
//! key's permissions; [`ssl_response`] reads the server's one-byte answer to
//! SSLRequest. [`client_config`] turns a [`TlsSettings`] into a rustls
//! `ClientConfig` (reading the certificate, key and CRL files), and
//! [`handshake`] is the thin async shell that runs the handshake on a socket.
//!
//! The rules come from libpq: `initialize_SSL` and `verify_cb` in
//! fe-secure-openssl.c (root file, client certificate and key, CRL, SNI),
//! `PQconnectPoll` / `select_next_encryption_method` in fe-connect.c (the
//! order of attempts and the fallbacks), `pq_verify_peer_name_matches_certificate`
//! in fe-secure-common.c (the host name, never the `hostaddr`, is checked).

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::conninfo::{RootCerts, SslMode, SslNegotiation, TlsSettings, TlsVersion};

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
    #[error("{what} file \"{}\" contains no {what}", path.display())]
    Empty { what: &'static str, path: PathBuf },
    #[error("could not load the system's root certificates: {0}")]
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
        "private key file \"{}\" is encrypted: walrcv cannot decrypt keys (sslpassword is not \
         supported); store it decrypted (openssl pkey -in KEY -out KEY.plain) with mode 0600",
        .0.display()
    )]
    KeyEncrypted(PathBuf),
    #[error("the certificate revocation list \"{}\" is invalid: {why}", path.display())]
    BadCrl { path: PathBuf, why: String },
    #[error("ssl_min_protocol_version {min:?} is above ssl_max_protocol_version {max:?}")]
    VersionRange { min: TlsVersion, max: TlsVersion },
    #[error("invalid TLS settings: {0}")]
    Config(String),
    #[error("host name \"{0}\" cannot be checked against a certificate")]
    BadHostName(String),
    #[error("the server does not support SSL, but SSL was required")]
    ServerRefusedTls,
    #[error("server sent an error response during SSL exchange")]
    ErrorDuringSslExchange,
    #[error("received invalid response to SSL negotiation: {0:?}")]
    InvalidSslResponse(char),
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
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
                | TlsError::Empty { .. }
                | TlsError::SystemRoots(_)
                | TlsError::KeyMissing(_)
                | TlsError::KeyNotRegular(_)
                | TlsError::KeyPermissions(_)
                | TlsError::KeyEncrypted(_)
                | TlsError::BadCrl { .. }
                | TlsError::VersionRange { .. }
                | TlsError::Config(_)
                | TlsError::BadHostName(_)
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

/// A rustls configuration for one server, and the name it is checked (and
/// SNI-named) against.
pub struct TlsTarget {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

/// Builds the rustls configuration for a connection to `host` (the host
/// name given, not the `hostaddr`: libpq checks the name the user meant).
pub fn client_config(settings: &TlsSettings, host: &str) -> Result<TlsTarget, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let root_file = match &settings.root_cert {
        Some(RootCerts::File(p)) => Some(p.as_path()),
        _ => None,
    };
    let root_exists = root_file.is_some_and(Path::is_file);
    let verification = verification(settings.mode, settings.root_cert.as_ref(), root_exists)?;
    let verifier = server_verifier(settings, verification, provider.clone())?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&protocol_versions(settings)?)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client_certificate(settings)? {
        Some((certs, key)) => builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| TlsError::Config(format!("client certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    // libpq 17 always offers ALPN; a server that does not know it ignores it.
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    // rustls, as libpq, never sends an IP address as SNI.
    config.enable_sni = settings.sni;
    let server_name = server_name(host, verification)?;
    Ok(TlsTarget {
        config: Arc::new(config),
        server_name,
    })
}

/// The name given to rustls. When the name is not checked, a host rustls
/// cannot parse as a DNS name (an underscore...) must not stop the
/// connection: a placeholder is used, and SNI names nothing real.
fn server_name(host: &str, verification: Verification) -> Result<ServerName<'static>, TlsError> {
    match ServerName::try_from(host.to_string()) {
        Ok(n) => Ok(n),
        Err(_) if verification != Verification::ChainAndName => {
            Ok(ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()))
        }
        Err(_) => Err(TlsError::BadHostName(host.to_string())),
    }
}

fn protocol_versions(
    settings: &TlsSettings,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, TlsError> {
    let min = settings.min_protocol_version.unwrap_or(TlsVersion::Tls1_2);
    let max = settings.max_protocol_version.unwrap_or(TlsVersion::Tls1_3);
    if min > max {
        return Err(TlsError::VersionRange { min, max });
    }
    Ok([
        (TlsVersion::Tls1_2, &rustls::version::TLS12),
        (TlsVersion::Tls1_3, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (min..=max).contains(v))
    .map(|(_, p)| p)
    .collect())
}

fn server_verifier(
    settings: &TlsSettings,
    verification: Verification,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
    if verification == Verification::None {
        return Ok(Arc::new(EncryptionOnly(provider)));
    }
    let roots = match &settings.root_cert {
        Some(RootCerts::File(p)) => file_roots(p)?,
        _ => system_roots()?,
    };
    let mut builder = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider);
    if let Some(crl) = settings.crl.as_deref().filter(|p| p.exists()) {
        builder = builder.with_crls(read_crls(crl)?);
    }
    let webpki = builder
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(match verification {
        Verification::Chain => Arc::new(ChainOnly(webpki)),
        _ => webpki,
    })
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// The certificates of a PEM text, in order (sans-IO; fuzzed by
/// `fuzz/fuzz_targets/tls_pem.rs`). Other PEM sections are skipped.
pub fn certificates_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

/// The certificate revocation lists of a PEM text (sans-IO, fuzzed).
pub fn crls_from_pem(pem: &[u8]) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    CertificateRevocationListDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

/// Why a PEM text gives no usable private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPemError {
    /// Encrypted: would need `sslpassword`.
    Encrypted,
    /// No key, or not one rustls reads; the text never quotes the key.
    Invalid(String),
}

/// The private key of a PEM text (PKCS#8, PKCS#1 or SEC1; sans-IO, fuzzed).
/// An encrypted key is recognised before parsing, so it is never mistaken
/// for a missing one.
pub fn private_key_from_pem(pem: &[u8]) -> Result<PrivateKeyDer<'static>, KeyPemError> {
    if pem_key_is_encrypted(&String::from_utf8_lossy(pem)) {
        return Err(KeyPemError::Encrypted);
    }
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| KeyPemError::Invalid(e.to_string()))
}

fn file_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let what = "root certificate";
    let bad = |e: String| TlsError::Config(format!("{}: {e}", path.display()));
    let mut store = RootCertStore::empty();
    for cert in certificates_from_pem(&read_file(what, path)?).map_err(bad)? {
        store.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    if store.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(store)
}

/// `sslrootcert=system`: the platform's trust store.
fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = match found.errors.first() {
            Some(e) => e.to_string(),
            None => "the platform has none".to_string(),
        };
        return Err(TlsError::SystemRoots(why));
    }
    Ok(store)
}

fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let bad = |why| TlsError::BadCrl {
        path: path.to_path_buf(),
        why,
    };
    let crls = crls_from_pem(&read_file("certificate revocation list", path)?).map_err(bad)?;
    if crls.is_empty() {
        return Err(bad("no X509 CRL in it".to_string()));
    }
    Ok(crls)
}

/// The client certificate chain and key, when the certificate file exists
/// (libpq sends none, silently, when it does not; the key must then exist).
type ClientIdentity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn client_certificate(settings: &TlsSettings) -> Result<Option<ClientIdentity>, TlsError> {
    let Some(cert_path) = settings.cert.as_deref().filter(|p| p.exists()) else {
        return Ok(None);
    };
    let what = "certificate";
    let certs = certificates_from_pem(&read_file(what, cert_path)?)
        .map_err(|e| TlsError::Config(format!("{}: {e}", cert_path.display())))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: cert_path.to_path_buf(),
        });
    }
    let key_path = settings
        .key
        .as_deref()
        .ok_or_else(|| TlsError::KeyMissing(PathBuf::from("postgresql.key")))?;
    Ok(Some((certs, private_key(key_path)?)))
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let meta = fs::metadata(path).map_err(|_| TlsError::KeyMissing(path.to_path_buf()))?;
    if !meta.is_file() {
        return Err(TlsError::KeyNotRegular(path.to_path_buf()));
    }
    if key_file_refused(meta.mode(), meta.uid()) {
        return Err(TlsError::KeyPermissions(path.to_path_buf()));
    }
    private_key_from_pem(&read_file("private key", path)?).map_err(|e| match e {
        KeyPemError::Encrypted => TlsError::KeyEncrypted(path.to_path_buf()),
        KeyPemError::Invalid(why) => {
            TlsError::Config(format!("private key file \"{}\": {why}", path.display()))
        }
    })
}

/// `require` (and the other non-verifying modes) without a root file:
/// encrypted, the certificate taken as it comes. The handshake signatures are
/// still checked, so the peer does hold the certificate's key.
#[derive(Debug)]
struct EncryptionOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptionOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: webpki's full check, of which only a host name mismatch is
/// forgiven. webpki checks the chain, validity and revocation before the
/// name, so a name error means everything else passed.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// An established TLS stream and the server's end-entity certificate (DER),
/// which SCRAM-SHA-256-PLUS binds to.
pub struct Established<S> {
    pub stream: tokio_rustls::client::TlsStream<S>,
    pub server_certificate: Option<Vec<u8>>,
}

/// Runs the TLS handshake on `socket`. With direct negotiation the server
/// must have chosen ALPN `postgresql` (libpq's `open_client_SSL` check).
pub async fn handshake<S>(
    socket: S,
    target: TlsTarget,
    negotiation: SslNegotiation,
) -> Result<Established<S>, TlsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let connector = tokio_rustls::TlsConnector::from(target.config);
    let stream = connector
        .connect(target.server_name, socket)
        .await
        .map_err(TlsError::Handshake)?;
    let session = stream.get_ref().1;
    if negotiation == SslNegotiation::Direct {
        match session.alpn_protocol() {
            None => return Err(TlsError::NoAlpn),
            Some(p) if p != ALPN_POSTGRESQL => return Err(TlsError::WrongAlpn),
            Some(_) => {}
        }
    }
    let server_certificate = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|c| c.as_ref().to_vec());
    tracing::debug!(
        version = ?session.protocol_version(),
        cipher = ?session.negotiated_cipher_suite().map(|s| s.suite()),
        "TLS established"
    );
    Ok(Established {
        stream,
        server_certificate,
    })
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
    fn pem_texts() {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert_pem = certified.cert.pem();
        let key_pem = certified.signing_key.serialize_pem();
        let both = format!("{key_pem}{cert_pem}{cert_pem}");
        assert_eq!(certificates_from_pem(both.as_bytes()).unwrap().len(), 2);
        assert!(private_key_from_pem(both.as_bytes()).is_ok());
        assert!(crls_from_pem(both.as_bytes()).unwrap().is_empty());
        assert!(matches!(
            private_key_from_pem(cert_pem.as_bytes()),
            Err(KeyPemError::Invalid(_))
        ));
        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMII\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert_eq!(
            private_key_from_pem(encrypted.as_bytes()),
            Err(KeyPemError::Encrypted)
        );
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
        assert!(!TlsError::Handshake(io::Error::other("x")).is_local_configuration());
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
    fn protocol_bounds() {
        let mut s = TlsSettings::prefer();
        assert_eq!(protocol_versions(&s).unwrap().len(), 2);
        s.min_protocol_version = Some(TlsVersion::Tls1_3);
        assert_eq!(
            protocol_versions(&s).unwrap(),
            vec![&rustls::version::TLS13]
        );
        s.max_protocol_version = Some(TlsVersion::Tls1_2);
        assert!(matches!(
            protocol_versions(&s),
            Err(TlsError::VersionRange { .. })
        ));
    }

    #[test]
    fn unparsable_host_names_are_an_error_only_when_checked() {
        assert!(server_name("bad_host!", Verification::None).is_ok());
        assert!(server_name("bad_host!", Verification::Chain).is_ok());
        assert!(server_name("bad_host!", Verification::ChainAndName).is_err());
        assert!(matches!(
            server_name("127.0.0.1", Verification::ChainAndName).unwrap(),
            ServerName::IpAddress(_)
        ));
    }
}
