//! The TLS engine: OpenSSL (the library libpq itself uses), through the
//! `openssl` crate and `tokio-openssl`. Everything here is what libpq's
//! `initialize_SSL` and `open_client_SSL` (fe-secure-openssl.c) do with the
//! settings; the decisions themselves are the pure functions of the parent
//! module ([`super::verification`], [`super::sni_name`], [`super::host_name`],
//! [`super::handshake_failure`]).

use std::ffi::{c_int, c_void};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use foreign_types::ForeignType;
use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{Ssl, SslContextBuilder, SslFiletype, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::store::X509Lookup;
use openssl::x509::verify::X509VerifyFlags;
use openssl::x509::{X509Ref, X509VerifyResult};
use tokio::io::{AsyncRead, AsyncWrite};

use super::host_name::{self, AltName, CertificateNames};
use super::{
    handshake_failure, key_file_refused, pem_key_is_encrypted, sni_name, verification, TlsError,
    Verification, ALPN_POSTGRESQL,
};
use crate::conninfo::{RootCerts, SslNegotiation, TlsSettings, TlsVersion};

/// Whether the server asked for a client certificate during the handshake,
/// and whether one was loaded to answer (libpq's `ssl_cert_requested` and
/// `ssl_cert_sent`, set by its `cert_cb`).
#[derive(Debug, Default)]
pub struct CertificateRequest {
    requested: AtomicBool,
    sent: AtomicBool,
}

impl CertificateRequest {
    /// What `sslcertmode=require` concludes once the server has
    /// authenticated the client (libpq checks it at AuthenticationOk).
    pub fn check_required(&self) -> Result<(), TlsError> {
        if !self.requested.load(Ordering::Relaxed) {
            Err(TlsError::CertificateNotRequested)
        } else if !self.sent.load(Ordering::Relaxed) {
            Err(TlsError::CertificateNotSent)
        } else {
            Ok(())
        }
    }
}

// OpenSSL's certificate callback, which the openssl crate does not wrap: it
// runs when the server sends CertificateRequest, before the client picks
// its certificate.
extern "C" {
    fn SSL_set_cert_cb(
        ssl: *mut openssl_sys::SSL,
        cb: Option<unsafe extern "C" fn(*mut openssl_sys::SSL, *mut c_void) -> c_int>,
        arg: *mut c_void,
    );
}

/// Notes the server's request. `arg` is the `CertificateRequest` that the
/// session's ex-data keeps alive as long as the session.
unsafe extern "C" fn note_certificate_request(
    ssl: *mut openssl_sys::SSL,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: `arg` points into the Arc held by this SSL's ex-data (see
    // `watch_certificate_request`), so it outlives every call on `ssl`.
    let request = unsafe { &*(arg as *const CertificateRequest) };
    request.requested.store(true, Ordering::Relaxed);
    // SAFETY: `ssl` is the live session OpenSSL passes to its callback.
    let loaded = unsafe { !openssl_sys::SSL_get_certificate(ssl).is_null() };
    request.sent.store(loaded, Ordering::Relaxed);
    1
}

fn watch_certificate_request(ssl: &mut Ssl) -> Result<Arc<CertificateRequest>, TlsError> {
    let request = Arc::new(CertificateRequest::default());
    // One ex-data index for the process (OpenSSL never frees them).
    static INDEX: OnceLock<Index<Ssl, Arc<CertificateRequest>>> = OnceLock::new();
    let index = match INDEX.get() {
        Some(index) => *index,
        None => {
            let new = Ssl::new_ex_index().map_err(config_err)?;
            *INDEX.get_or_init(|| new)
        }
    };
    ssl.set_ex_data(index, request.clone());
    let arg = Arc::as_ptr(&request) as *mut c_void;
    // SAFETY: `ssl` is a valid session; the callback only reads `arg`, which
    // the ex-data just set keeps alive until the session is freed.
    unsafe { SSL_set_cert_cb(ssl.as_ptr(), Some(note_certificate_request), arg) };
    Ok(request)
}

/// `sslkeylogfile` (libpq 18): each secret line appended to the file,
/// created 0600; a file that cannot be written is reported and the
/// connection goes on, as libpq does.
fn log_keys_to(ctx: &mut SslContextBuilder, path: PathBuf) {
    ctx.set_keylog_callback(move |_, line| {
        let written = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
        if let Err(e) = written {
            tracing::warn!(
                "could not write to SSL key logging file \"{}\": {e}",
                path.display()
            );
        }
    });
}

/// One connection's OpenSSL session, ready for the handshake, and what is
/// checked after it.
pub struct TlsTarget {
    ssl: Ssl,
    certificate_request: Arc<CertificateRequest>,
    verification: Verification,
    host: String,
    min: Option<TlsVersion>,
    max: Option<TlsVersion>,
}

/// The text of OpenSSL's first queued error, as libpq's `SSLerrmessage`
/// shows it (the reason string), else the whole stack.
pub(super) fn reason(stack: &ErrorStack) -> String {
    match stack.errors().first().and_then(|e| e.reason()) {
        Some(r) => r.to_string(),
        None if stack.errors().is_empty() => "no SSL error reported".to_string(),
        None => stack.to_string(),
    }
}

fn config_err(stack: ErrorStack) -> TlsError {
    TlsError::Config(reason(&stack))
}

fn openssl_version(v: TlsVersion) -> SslVersion {
    match v {
        TlsVersion::Tls1 => SslVersion::TLS1,
        TlsVersion::Tls1_1 => SslVersion::TLS1_1,
        TlsVersion::Tls1_2 => SslVersion::TLS1_2,
        TlsVersion::Tls1_3 => SslVersion::TLS1_3,
    }
}

/// Sets up the session for a connection to `host` (the host name given, not
/// the `hostaddr`: libpq checks the name the user meant).
pub fn client_config(settings: &TlsSettings, host: &str) -> Result<TlsTarget, TlsError> {
    let root_file = match &settings.root_cert {
        Some(RootCerts::File(p)) => Some(p.as_path()),
        _ => None,
    };
    // libpq stat()s the root file: anything that exists (a directory too)
    // is loaded, and fails loading if it is not a certificate file.
    let root_exists = root_file.is_some_and(|p| fs::metadata(p).is_ok());
    let verification = verification(settings.mode, settings.root_cert.as_ref(), root_exists)?;
    let mut ctx = SslContextBuilder::new(SslMethod::tls_client()).map_err(config_err)?;
    let (min, max) = (settings.min_protocol_version, settings.max_protocol_version);
    if let (Some(min), Some(max)) = (min, max) {
        if min > max {
            return Err(TlsError::VersionRange { min, max });
        }
    }
    ctx.set_min_proto_version(min.map(openssl_version))
        .map_err(config_err)?;
    ctx.set_max_proto_version(max.map(openssl_version))
        .map_err(config_err)?;
    load_roots(&mut ctx, settings, verification, root_file)?;
    load_client_certificate(&mut ctx, settings)?;
    // libpq 17+ always offers ALPN; a server that does not know it ignores it.
    let mut alpn = vec![ALPN_POSTGRESQL.len() as u8];
    alpn.extend_from_slice(ALPN_POSTGRESQL);
    ctx.set_alpn_protos(&alpn).map_err(config_err)?;
    if let Some(path) = &settings.key_log_file {
        log_keys_to(&mut ctx, path.clone());
    }
    let ctx = ctx.build();
    let mut ssl = Ssl::new(&ctx).map_err(config_err)?;
    let certificate_request = watch_certificate_request(&mut ssl)?;
    if let Some(name) = sni_name(host, settings.sni) {
        ssl.set_hostname(name).map_err(|e| {
            TlsError::Config(format!(
                "could not set SSL Server Name Indication (SNI): {}",
                reason(&e)
            ))
        })?;
    }
    Ok(TlsTarget {
        ssl,
        certificate_request,
        verification,
        host: host.to_string(),
        min,
        max,
    })
}

/// The trust anchors and revocation lists, and whether the handshake fails
/// on a chain that does not verify (libpq's `SSL_VERIFY_PEER` when a root
/// file or the system store is in use, else no verification at all).
fn load_roots(
    ctx: &mut SslContextBuilder,
    settings: &TlsSettings,
    verification: Verification,
    root_file: Option<&Path>,
) -> Result<(), TlsError> {
    if verification == Verification::None {
        ctx.set_verify(SslVerifyMode::NONE);
        return Ok(());
    }
    match root_file {
        Some(path) => {
            ctx.set_ca_file(path).map_err(|e| TlsError::Load {
                what: "root certificate",
                path: path.to_path_buf(),
                why: reason(&e),
            })?;
            load_crls(ctx, settings)?;
        }
        None => ctx
            .set_default_verify_paths()
            .map_err(|e| TlsError::SystemRoots(reason(&e)))?,
    }
    ctx.set_verify(SslVerifyMode::PEER);
    Ok(())
}

/// `sslcrl` and `sslcrldir`: loaded, when they exist, into the store beside
/// the root file's certificates (the directory is read lazily, by the
/// issuer's hash, as `openssl rehash` names the files), and then every
/// certificate of the chain must be covered by a CRL of its issuer (libpq's
/// `X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL`).
fn load_crls(ctx: &mut SslContextBuilder, settings: &TlsSettings) -> Result<(), TlsError> {
    let file = settings.crl.as_deref().filter(|p| p.exists());
    let dir = settings.crl_dir.as_deref().filter(|p| p.is_dir());
    if file.is_none() && dir.is_none() {
        return Ok(());
    }
    let store = ctx.cert_store_mut();
    if let Some(crl) = file {
        let bad = |why: String| TlsError::BadCrl {
            path: crl.to_path_buf(),
            why,
        };
        let lookup = store
            .add_lookup(X509Lookup::file())
            .map_err(|e| bad(reason(&e)))?;
        let loaded = lookup
            .load_crl_file(crl, SslFiletype::PEM)
            .map_err(|e| bad(reason(&e)))?;
        if loaded == 0 {
            return Err(bad("no X509 CRL in it".to_string()));
        }
    }
    if let Some(dir) = dir {
        let bad = |e: ErrorStack| TlsError::BadCrl {
            path: dir.to_path_buf(),
            why: reason(&e),
        };
        let text = dir.to_str().ok_or_else(|| TlsError::BadCrl {
            path: dir.to_path_buf(),
            why: "the directory name is not UTF-8".to_string(),
        })?;
        store
            .add_lookup(X509Lookup::hash_dir())
            .map_err(bad)?
            .add_dir(text, SslFiletype::PEM)
            .map_err(bad)?;
    }
    store
        .set_flags(X509VerifyFlags::CRL_CHECK | X509VerifyFlags::CRL_CHECK_ALL)
        .map_err(|e| TlsError::Config(reason(&e)))
}

/// The client certificate chain and key, when the certificate file exists
/// (libpq sends none, silently, when it does not; the key must then exist).
fn load_client_certificate(
    ctx: &mut SslContextBuilder,
    settings: &TlsSettings,
) -> Result<(), TlsError> {
    let Some(cert_path) = settings.cert.as_deref().filter(|p| p.exists()) else {
        return Ok(());
    };
    ctx.set_certificate_chain_file(cert_path)
        .map_err(|e| TlsError::Load {
            what: "certificate",
            path: cert_path.to_path_buf(),
            why: reason(&e),
        })?;
    let key_path = settings
        .key
        .clone()
        .unwrap_or_else(|| PathBuf::from("postgresql.key"));
    let password = settings.key_password.as_ref().map(|p| p.0.as_bytes());
    let key = private_key(&key_path, password)?;
    ctx.set_private_key(&key).map_err(|e| TlsError::KeyLoad {
        path: key_path.clone(),
        why: reason(&e),
    })?;
    ctx.check_private_key().map_err(|e| TlsError::KeyMismatch {
        path: key_path,
        why: reason(&e),
    })
}

/// The private key: a regular file with libpq's permissions, PEM (PKCS#8,
/// PKCS#1 or SEC1, encrypted or not) or else DER, as libpq tries them.
fn private_key(path: &Path, password: Option<&[u8]>) -> Result<PKey<Private>, TlsError> {
    let meta = fs::metadata(path).map_err(|_| TlsError::KeyMissing(path.to_path_buf()))?;
    if !meta.is_file() {
        return Err(TlsError::KeyNotRegular(path.to_path_buf()));
    }
    if key_file_refused(meta.mode(), meta.uid()) {
        return Err(TlsError::KeyPermissions(path.to_path_buf()));
    }
    let bytes = fs::read(path).map_err(|source| TlsError::Read {
        what: "private key",
        path: path.to_path_buf(),
        source,
    })?;
    if password.is_none() && pem_key_is_encrypted(&String::from_utf8_lossy(&bytes)) {
        return Err(TlsError::KeyEncrypted(path.to_path_buf()));
    }
    private_key_from_bytes(&bytes, password).map_err(|why| TlsError::KeyLoad {
        path: path.to_path_buf(),
        why,
    })
}

/// A private key from PEM, else from DER (plain, or PKCS#8 encrypted), with
/// `sslpassword` for an encrypted one; never OpenSSL's terminal prompt. The
/// error is OpenSSL's reason ("bad decrypt"...), never the key.
pub fn private_key_from_bytes(
    bytes: &[u8],
    password: Option<&[u8]>,
) -> Result<PKey<Private>, String> {
    let give_password = |buf: &mut [u8]| {
        let p = password.unwrap_or_default();
        let n = p.len().min(buf.len());
        buf[..n].copy_from_slice(&p[..n]);
        Ok(n)
    };
    let pem_error = match PKey::private_key_from_pem_callback(bytes, give_password) {
        Ok(key) => return Ok(key),
        Err(e) => e,
    };
    if let Ok(key) = PKey::private_key_from_der(bytes) {
        return Ok(key);
    }
    if let Some(p) = password {
        if let Ok(key) = PKey::private_key_from_pkcs8_passphrase(bytes, p) {
            return Ok(key);
        }
    }
    Err(reason(&pem_error))
}

/// An established TLS stream and the server's end-entity certificate (DER),
/// which SCRAM-SHA-256-PLUS binds to.
pub struct Established<S> {
    pub stream: tokio_openssl::SslStream<S>,
    pub server_certificate: Option<Vec<u8>>,
    /// Whether the server asked for a client certificate (sslcertmode=require).
    pub certificate_request: Arc<CertificateRequest>,
}

/// Runs the TLS handshake on `socket`, then libpq's checks on the result:
/// with direct negotiation the server must have chosen ALPN `postgresql`
/// (`open_client_SSL`), and under verify-full the certificate must name the
/// host (`pq_verify_peer_name_matches_certificate`).
pub async fn handshake<S>(
    socket: S,
    target: TlsTarget,
    negotiation: SslNegotiation,
) -> Result<Established<S>, TlsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut stream = tokio_openssl::SslStream::new(target.ssl, socket).map_err(config_err)?;
    if let Err(e) = Pin::new(&mut stream).connect().await {
        let verify = stream.ssl().verify_result();
        let verify = (verify != X509VerifyResult::OK).then(|| verify.error_string());
        let reason = e.ssl_error().map(reason);
        return Err(TlsError::Handshake(handshake_failure(
            reason.as_deref(),
            verify,
            e.io_error(),
            target.min,
            target.max,
        )));
    }
    let ssl = stream.ssl();
    if negotiation == SslNegotiation::Direct {
        match ssl.selected_alpn_protocol() {
            None => return Err(TlsError::NoAlpn),
            Some(p) if p != ALPN_POSTGRESQL => return Err(TlsError::WrongAlpn),
            Some(_) => {}
        }
    }
    let peer = ssl.peer_certificate().ok_or(TlsError::NoPeerCertificate)?;
    if target.verification == Verification::ChainAndName {
        host_name::check(Some(&target.host), &certificate_names(&peer))
            .map_err(TlsError::HostName)?;
    }
    let server_certificate = peer.to_der().ok();
    tracing::debug!(
        version = ssl.version_str(),
        cipher = ssl.current_cipher().map(|c| c.name()),
        "TLS established"
    );
    Ok(Established {
        stream,
        server_certificate,
        certificate_request: target.certificate_request,
    })
}

/// The names libpq examines: dNSName and iPAddress SANs, and the subject's
/// first Common Name (raw bytes).
fn certificate_names(cert: &X509Ref) -> CertificateNames {
    let alt_names = cert
        .subject_alt_names()
        .map(|stack| {
            stack
                .iter()
                .filter_map(|name| {
                    if let Some(ip) = name.ipaddress() {
                        Some(AltName::Ip(ip.to_vec()))
                    } else {
                        name.dnsname().map(|d| AltName::Dns(d.as_bytes().to_vec()))
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let common_name = cert
        .subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .map(|entry| entry.data().as_slice().to_vec());
    CertificateNames {
        alt_names,
        common_name,
    }
}
