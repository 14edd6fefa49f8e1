//! `walrcv serve -D ARCHIVE --listen HOST:PORT` (IO): the listener, the
//! client cap, TLS (OpenSSL, as the client side), authentication by the
//! `--serve-hba` rules and `--serve-passfile` verifiers, then each session:
//! replication commands answered by [`super::walsender`], copy mode driven
//! by [`super::streamer`] over [`super::source`].
//!
//! A session's reads run in their own task, so that a standby's replies are
//! taken in while WAL is written to it; writes have a timeout, so a client
//! that never reads is dropped instead of holding its segment forever.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use openssl::nid::Nid;
use openssl::ssl::{Ssl, SslAcceptor, SslFiletype, SslMethod, SslVerifyMode};
use openssl::x509::{X509Name, X509Ref};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

use crate::lsn::{pg_now, wal_file_name, Lsn, TimeLineId};
use crate::metrics::serve::{ClientMetrics, Refusal};

use super::hba::{self, ClientCert, Hba, Method, Rule};
use super::ident::{self, IdentMaps};
use super::reply::{self, Severity};
use super::scram::{self, Verifier};
use super::source::{self, SegmentReader};
use super::streamer::{parse_standby, Keepalive, Streamer};
use super::walsender::{self, sqlstate, Catalog, Outcome, StreamPlan};
use super::wire::{self, Frontend, ReplicationMode, Startup, StartupParams, WireError};

/// The verified and flushed end a receiver publishes (`walrcv stream --serve`):
/// a [`crate::archive::live::LiveEnd::subscribe`].
pub type LiveEnd = watch::Receiver<Option<(TimeLineId, Lsn)>>;

/// Start-up and authentication must finish within this.
const AUTH_TIMEOUT: Duration = Duration::from_secs(60);
/// A write to a client that takes longer ends its session.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a caught-up stream looks for new WAL without a live hook.
const POLL: Duration = Duration::from_millis(500);
/// How often each client's positions are logged.
const METRICS_EVERY: Duration = Duration::from_secs(10);

/// `walrcv serve` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The archive directory to serve.
    #[arg(short = 'D', long = "directory", value_name = "DIR")]
    pub directory: PathBuf,
    /// Address to listen on: HOST:PORT, or PORT alone for 127.0.0.1:PORT.
    #[arg(
        long = "listen",
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:5432"
    )]
    pub listen: String,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (off by
    /// default): clients, per-client positions and lag, refusals.
    #[arg(long = "metrics-address", value_name = "HOST:PORT")]
    pub metrics_address: Option<String>,
    #[command(flatten)]
    pub options: ServeOptions,
}

/// What `walrcv serve` shares with `walrcv stream --serve` (one definition,
/// flattened into both).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeOptions {
    /// Who may connect, in pg_hba.conf syntax (host/hostssl/hostnossl lines
    /// for database `replication`; trust, reject, scram-sha-256, cert).
    /// Without it no connection is accepted.
    #[arg(long = "serve-hba", value_name = "FILE")]
    pub hba: Option<PathBuf>,
    /// User name maps in pg_ident.conf syntax, for `map=` on cert and
    /// clientcert=verify-full lines (the certificate's CN is the system
    /// user name).
    #[arg(long = "serve-ident", value_name = "FILE")]
    pub ident: Option<PathBuf>,
    /// SCRAM-SHA-256 verifiers, one `user:SCRAM-SHA-256$iter:salt$stored:server`
    /// a line (as pg_authid.rolpassword holds them).
    #[arg(long = "serve-passfile", value_name = "FILE")]
    pub passfile: Option<PathBuf>,
    /// Server certificate (PEM) for TLS; with --serve-ssl-key.
    #[arg(long = "serve-ssl-cert", value_name = "FILE", requires = "ssl_key")]
    pub ssl_cert: Option<PathBuf>,
    /// Server private key (PEM) for TLS; with --serve-ssl-cert.
    #[arg(long = "serve-ssl-key", value_name = "FILE", requires = "ssl_cert")]
    pub ssl_key: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to, like
    /// PostgreSQL's ssl_ca_file: with it, clients are asked for a
    /// certificate (for `cert` lines and `clientcert=` options).
    #[arg(long = "serve-ssl-ca", value_name = "FILE", requires = "ssl_cert")]
    pub ssl_ca: Option<PathBuf>,
    /// Certificate revocation lists (PEM) for client certificates, like
    /// PostgreSQL's ssl_crl_file: a revoked certificate fails the handshake,
    /// and every CA of a client's chain then needs its CRL here.
    #[arg(long = "serve-ssl-crl", value_name = "FILE", requires = "ssl_ca")]
    pub ssl_crl: Option<PathBuf>,
    /// Most clients served at once; more are refused ("too many clients").
    #[arg(long = "serve-max-clients", value_name = "N", default_value_t = DEFAULT_MAX_CLIENTS)]
    pub max_clients: usize,
    /// Drop a client silent this long, in seconds (like wal_sender_timeout;
    /// 0: never); a reply is requested at half of it.
    #[arg(long = "serve-sender-timeout", value_name = "SECS", default_value_t = DEFAULT_SENDER_TIMEOUT_SECS)]
    pub sender_timeout: u32,
    /// Send a keepalive after this many seconds without sending anything.
    #[arg(long = "serve-keepalive-interval", value_name = "SECS",
          default_value_t = DEFAULT_KEEPALIVE_INTERVAL_SECS,
          value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub keepalive_interval: u32,
}

/// `--serve-sender-timeout` when not given: wal_sender_timeout's default.
pub const DEFAULT_SENDER_TIMEOUT_SECS: u32 = 60;
/// `--serve-keepalive-interval` when not given.
pub const DEFAULT_KEEPALIVE_INTERVAL_SECS: u32 = 10;

/// `--serve-max-clients` when not given.
pub const DEFAULT_MAX_CLIENTS: usize = 16;

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            hba: None,
            ident: None,
            passfile: None,
            ssl_cert: None,
            ssl_key: None,
            ssl_ca: None,
            ssl_crl: None,
            max_clients: DEFAULT_MAX_CLIENTS,
            sender_timeout: DEFAULT_SENDER_TIMEOUT_SECS,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL_SECS,
        }
    }
}

impl ServeOptions {
    /// Whether any flag was given (they mean nothing to `stream` without
    /// `--serve`).
    pub fn any_given(&self) -> bool {
        self.hba.is_some()
            || self.ident.is_some()
            || self.passfile.is_some()
            || self.ssl_cert.is_some()
            || self.ssl_key.is_some()
            || self.ssl_ca.is_some()
            || self.ssl_crl.is_some()
            || self.max_clients != DEFAULT_MAX_CLIENTS
            || self.sender_timeout != DEFAULT_SENDER_TIMEOUT_SECS
            || self.keepalive_interval != DEFAULT_KEEPALIVE_INTERVAL_SECS
    }

    /// The keepalive policy of these flags.
    pub fn keepalive(&self) -> Keepalive {
        Keepalive::from_secs(self.keepalive_interval, self.sender_timeout)
    }
}

/// Why the server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid --listen \"{0}\": expected HOST:PORT or PORT")]
    Listen(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("--serve-hba: {0}")]
    Hba(String),
    #[error("--serve-passfile: {0}")]
    Passfile(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("the archive directory \"{0}\" does not exist or is not a directory")]
    NoArchive(PathBuf),
    #[error("cannot start the server's runtime: {0}")]
    Runtime(String),
}

/// What every session shares.
struct Shared {
    dir: PathBuf,
    hba: Hba,
    ident: IdentMaps,
    verifiers: HashMap<String, Verifier>,
    tls: Option<SslAcceptor>,
    /// tls-server-end-point data of the server certificate, when SCRAM
    /// channel binding can be offered.
    end_point: Option<Vec<u8>>,
    keepalive: Keepalive,
    clients: Semaphore,
    max_clients: usize,
    live: Option<LiveEnd>,
    next_pid: AtomicUsize,
}

/// Parses `--listen`.
pub fn listen_addr(text: &str) -> Result<String, ServeError> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(format!("127.0.0.1:{port}"));
    }
    match text.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => {
            let host = if host.is_empty() { "127.0.0.1" } else { host };
            Ok(format!("{host}:{port}"))
        }
        _ => Err(ServeError::Listen(text.to_owned())),
    }
}

/// Reads `--serve-passfile`.
pub fn load_passfile(path: &Path) -> Result<HashMap<String, Verifier>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read \"{}\": {e}", path.display()))?;
    parse_passfile(&text).map_err(|e| format!("\"{}\": {e}", path.display()))
}

/// Parses `user:verifier` lines (blank lines and `#` comments skipped).
pub fn parse_passfile(text: &str) -> Result<HashMap<String, Verifier>, String> {
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (user, verifier) = line
            .split_once(':')
            .ok_or_else(|| format!("line {}: expected user:SCRAM-SHA-256$...", i + 1))?;
        let v = Verifier::parse(verifier).map_err(|e| format!("line {}: {e}", i + 1))?;
        out.insert(user.to_owned(), v);
    }
    Ok(out)
}

/// `--serve-ssl-ca` and `--serve-ssl-crl`.
#[derive(Debug, Clone, Copy, Default)]
struct ClientCertFiles<'a> {
    ca: Option<&'a Path>,
    crl: Option<&'a Path>,
}

fn tls_acceptor(
    cert: &Path,
    key: &Path,
    client: ClientCertFiles,
) -> Result<SslAcceptor, ServeError> {
    let tls = |e: openssl::error::ErrorStack| ServeError::Tls(e.to_string());
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).map_err(tls)?;
    b.set_certificate_chain_file(cert)
        .map_err(|e| ServeError::Tls(format!("\"{}\": {e}", cert.display())))?;
    b.set_private_key_file(key, SslFiletype::PEM)
        .map_err(|e| ServeError::Tls(format!("\"{}\": {e}", key.display())))?;
    b.check_private_key().map_err(tls)?;
    if let Some(ca) = client.ca {
        let at =
            |e: openssl::error::ErrorStack| ServeError::Tls(format!("\"{}\": {e}", ca.display()));
        b.set_ca_file(ca).map_err(at)?;
        b.set_client_ca_list(X509Name::load_client_ca_file(ca).map_err(at)?);
        // Asked for, not required (as PostgreSQL with ssl_ca_file): a line
        // without clientcert still accepts a client that has none. One that
        // is sent must verify, or the handshake fails.
        b.set_verify(SslVerifyMode::PEER);
    }
    if let Some(crl) = client.crl {
        load_crls(&mut b, crl)?;
    }
    Ok(b.build())
}

/// Loads the CRLs of `path` into the client certificate store and checks
/// every certificate of a client's chain against them, as PostgreSQL does
/// with ssl_crl_file (`X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL`).
fn load_crls(b: &mut openssl::ssl::SslAcceptorBuilder, path: &Path) -> Result<(), ServeError> {
    use openssl::x509::store::X509Lookup;
    use openssl::x509::verify::X509VerifyFlags;
    let at =
        |e: openssl::error::ErrorStack| ServeError::Tls(format!("\"{}\": {e}", path.display()));
    let store = b.cert_store_mut();
    let lookup = store.add_lookup(X509Lookup::file()).map_err(at)?;
    let loaded = lookup.load_crl_file(path, SslFiletype::PEM).map_err(at)?;
    if loaded < 1 {
        return Err(ServeError::Tls(format!(
            "\"{}\": no certificate revocation list in the file",
            path.display()
        )));
    }
    store
        .set_flags(X509VerifyFlags::CRL_CHECK | X509VerifyFlags::CRL_CHECK_ALL)
        .map_err(at)
}

/// What TLS established for a session.
#[derive(Debug, Clone, Default)]
struct TlsInfo {
    /// A client certificate was sent (and verified: the handshake checks it).
    client_cert: bool,
    /// Its subject's common name.
    peer_cn: Option<String>,
}

fn common_name(cert: &X509Ref) -> Option<String> {
    let entry = cert.subject_name().entries_by_nid(Nid::COMMONNAME).next()?;
    // As PostgreSQL: a name with an embedded NUL is no name.
    let raw = entry.data().as_slice();
    if raw.contains(&0) {
        return None;
    }
    String::from_utf8(raw.to_vec()).ok()
}

/// `--serve-ident`, checked against the maps `--serve-hba` names: a map
/// that is not in the file is refused at start (PostgreSQL would refuse
/// every connection through it at authentication).
fn load_ident(hba: &Hba, path: Option<&Path>) -> Result<IdentMaps, ServeError> {
    let maps = match path {
        Some(path) => ident::load(path).map_err(ServeError::Hba)?,
        None => IdentMaps::default(),
    };
    if let Some((line, map)) = hba.maps().find(|(_, map)| !maps.has_map(map)) {
        return Err(ServeError::Hba(format!(
            "line {line} of the hba file: user name map \"{map}\" is not defined{}",
            if path.is_none() {
                " (no --serve-ident)"
            } else {
                " in --serve-ident"
            }
        )));
    }
    Ok(maps)
}

/// Binds and serves until `shutdown` fires.
pub async fn serve(
    dir: PathBuf,
    listen: &str,
    opts: ServeOptions,
    live: Option<LiveEnd>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ServeError> {
    bind(dir, listen, opts, live).await?.run(shutdown).await;
    Ok(())
}

/// A bound listener with everything its sessions share.
pub struct Bound {
    listener: TcpListener,
    shared: Arc<Shared>,
}

/// Loads the rules, verifiers and TLS files, and binds `listen`: every
/// configuration error shows here, before anything is served.
pub async fn bind(
    dir: PathBuf,
    listen: &str,
    opts: ServeOptions,
    live: Option<LiveEnd>,
) -> Result<Bound, ServeError> {
    if !dir.is_dir() {
        return Err(ServeError::NoArchive(dir));
    }
    let hba = match &opts.hba {
        Some(path) => hba::load(path).map_err(ServeError::Hba)?,
        None => {
            tracing::warn!("no --serve-hba: every connection will be refused");
            Hba::default()
        }
    };
    let ident = load_ident(&hba, opts.ident.as_deref())?;
    let verifiers = match &opts.passfile {
        Some(path) => load_passfile(path).map_err(ServeError::Passfile)?,
        None => HashMap::new(),
    };
    let tls = match (&opts.ssl_cert, &opts.ssl_key) {
        (Some(c), Some(k)) => {
            let client = ClientCertFiles {
                ca: opts.ssl_ca.as_deref(),
                crl: opts.ssl_crl.as_deref(),
            };
            Some(tls_acceptor(c, k, client)?)
        }
        _ => None,
    };
    if hba.wants_client_certs() && opts.ssl_ca.is_none() {
        return Err(ServeError::Hba(
            "client certificates can only be checked if a root certificate store is available \
             (--serve-ssl-ca)"
                .into(),
        ));
    }
    let end_point = tls.as_ref().and_then(|t| {
        t.context()
            .certificate()
            .and_then(scram::tls_server_end_point)
    });
    let addr = listen_addr(listen)?;
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: addr.clone(),
            source,
        })?;
    tracing::info!(listen = %addr, dir = %dir.display(), "serving the archive \"{}\" on {addr}", dir.display());
    let shared = Arc::new(Shared {
        dir,
        hba,
        ident,
        verifiers,
        tls,
        end_point,
        keepalive: opts.keepalive(),
        clients: Semaphore::new(opts.max_clients),
        max_clients: opts.max_clients,
        live,
        next_pid: AtomicUsize::new(1),
    });
    Ok(Bound { listener, shared })
}

impl Bound {
    /// Accepts clients until `shutdown` fires (or its sender is gone).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let Bound { listener, shared } = self;
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let shared = shared.clone();
                        tokio::spawn(async move {
                            let _ = stream.set_nodelay(true);
                            if let Err(e) = session(stream, peer, shared).await {
                                tracing::info!(peer = %peer, "client {peer}: {e}");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// `walrcv stream --serve`: the server on a thread and runtime of its own,
/// so that serving clients never takes the receive loop's thread (a slow or
/// busy client cannot delay the primary's acknowledgements). Returns once
/// bound (or with the configuration error); the server then runs until the
/// process exits.
pub fn spawn_live(
    dir: PathBuf,
    listen: String,
    opts: ServeOptions,
    live: LiveEnd,
) -> Result<(), ServeError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("walrcv-serve".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("walrcv-serve")
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(ServeError::Runtime(e.to_string())));
                    return;
                }
            };
            rt.block_on(async move {
                match bind(dir, &listen, opts, Some(live)).await {
                    Ok(bound) => {
                        let _ = tx.send(Ok(()));
                        // Never fires: the server lives as long as the process.
                        let (_keep, never) = watch::channel(false);
                        bound.run(never).await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        });
    if let Err(e) = spawned {
        return Err(ServeError::Runtime(e.to_string()));
    }
    rx.recv()
        .map_err(|_| ServeError::Runtime("the server thread ended at start".into()))?
}

/// `walrcv serve`: runs until SIGINT or SIGTERM; the exit status.
pub fn run(args: &ServeArgs) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return 1;
        }
    };
    // Kept until the server stops: dropping it stops the endpoint.
    let _metrics = match &args.metrics_address {
        Some(address) => match crate::metrics::serve(address, &args.directory) {
            Ok(server) => Some(server),
            Err(e) => {
                tracing::error!("walrcv serve: {e}");
                return 1;
            }
        },
        None => None,
    };
    rt.block_on(async {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            let _ = tx.send(true);
        });
        match serve(
            args.directory.clone(),
            &args.listen,
            args.options.clone(),
            None,
            rx,
        )
        .await
        {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!("walrcv serve: {e}");
                1
            }
        }
    })
}

/// How far a client on `timeline` may be sent, given the receiver's
/// published end: up to it on the same timeline; nothing on a newer timeline
/// than the receiver has reported flushed (its history is stored first, its
/// WAL is not reported yet); no cap on an older one (it ends at its switch
/// point, which the stream plan enforces).
fn live_cap(published: (TimeLineId, Lsn), timeline: TimeLineId) -> Option<Lsn> {
    let (tli, end) = published;
    match tli.cmp(&timeline) {
        std::cmp::Ordering::Equal => Some(end),
        std::cmp::Ordering::Less => Some(Lsn(0)),
        std::cmp::Ordering::Greater => None,
    }
}

/// What the receiver of this process has said about durability: `None`
/// under `walrcv serve` (an archive at rest: everything verified is served),
/// `Some(None)` under `stream --serve` before its first report, then
/// `Some(Some((timeline, flushed)))`.
type Published = Option<Option<(TimeLineId, Lsn)>>;

/// How far a loaded segment (`start..end`, `complete` when the whole
/// segment is there) may be served to a client on `timeline`. Before the
/// receiver's first report only complete segments are known durable (they
/// were fsynced before their rename): a `.partial` left by an earlier run
/// may hold bytes written but never fsynced, so none of it is served until
/// this process has flushed and reported.
fn servable(
    published: Published,
    timeline: TimeLineId,
    start: Lsn,
    end: Lsn,
    complete: bool,
) -> Lsn {
    match published {
        None => end,
        Some(None) if complete => end,
        Some(None) => start,
        Some(Some(p)) => live_cap(p, timeline).map_or(end, |cap| end.min(cap).max(start)),
    }
}

/// A client connection, TLS or not.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type BoxIo = Box<dyn Io>;

/// Why a session ended early.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("refused: {0}")]
    Refused(String),
    #[error("timed out")]
    Timeout,
}

/// Sends a FATAL error and returns it as the session's end.
async fn fatal(
    w: &mut (impl AsyncWrite + Unpin),
    code: &str,
    text: String,
) -> Result<(), SessionError> {
    let mut out = BytesMut::new();
    reply::error(&mut out, Severity::Fatal, code, &text, None);
    let _ = tokio::time::timeout(WRITE_TIMEOUT, w.write_all(&out)).await;
    Err(SessionError::Refused(text))
}

async fn session(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
) -> Result<(), SessionError> {
    let started = tokio::time::timeout(AUTH_TIMEOUT, start_up(Box::new(tcp), &shared)).await;
    let (mut io, params, tls, leftover) = started.map_err(|_| refused_by_timeout())??;
    let Ok(_permit) = shared.clients.try_acquire() else {
        refused(Refusal::TooManyClients);
        return fatal(
            &mut io,
            sqlstate::TOO_MANY_CONNECTIONS,
            "sorry, too many clients already".into(),
        )
        .await;
    };
    if params.replication == ReplicationMode::None {
        refused(Refusal::NotReplication);
        return fatal(
            &mut io,
            sqlstate::FEATURE_NOT_SUPPORTED,
            "walrcv serves replication connections only (connect with replication=true)".into(),
        )
        .await;
    }
    let (rd, mut wr) = tokio::io::split(io);
    let max_len = Arc::new(AtomicUsize::new(wire::MAX_AUTH_MESSAGE_LEN));
    let (tx, mut rx) = mpsc::channel(16);
    let reader = tokio::spawn(read_messages(rd, leftover, max_len.clone(), tx));
    let result = async {
        let authed = tokio::time::timeout(
            AUTH_TIMEOUT,
            authenticate(&mut wr, &mut rx, &shared, &params, peer.ip(), tls.as_ref()),
        )
        .await
        .map_err(|_| refused_by_timeout())?;
        authed?;
        max_len.store(wire::MAX_SESSION_MESSAGE_LEN, Ordering::Relaxed);
        let app = params.application_name.clone().unwrap_or_default();
        tracing::info!(peer = %peer, user = %params.user, application_name = %app, "replication connection authorized: user={} application_name={app}", params.user);
        let pid = shared.next_pid.fetch_add(1, Ordering::Relaxed) as u32;
        let cm = crate::metrics::global()
            .serve()
            .client(&app, &peer.to_string(), shared.max_clients);
        commands(&mut wr, &mut rx, &shared, &params, pid, &app, &cm).await
    }
    .await;
    reader.abort();
    result
}

fn refused(why: Refusal) {
    crate::metrics::global().serve().refused(why);
}

fn refused_by_timeout() -> SessionError {
    refused(Refusal::Timeout);
    SessionError::Timeout
}

/// Reads the start-up packet, negotiating TLS (SSLRequest) and refusing
/// GSS encryption on the way.
async fn start_up(
    mut io: BoxIo,
    shared: &Shared,
) -> Result<(BoxIo, StartupParams, Option<TlsInfo>, BytesMut), SessionError> {
    let mut buf = BytesMut::with_capacity(1024);
    let mut tls = None;
    loop {
        let Some(packet) = wire::parse_startup(&mut buf)? else {
            if io.read_buf(&mut buf).await? == 0 {
                return Err(SessionError::Refused(
                    "connection closed during start-up".into(),
                ));
            }
            continue;
        };
        match packet {
            Startup::SslRequest if tls.is_none() && shared.tls.is_some() => {
                if !buf.is_empty() {
                    return Err(SessionError::Refused("data after SSLRequest".into()));
                }
                io.write_all(b"S").await?;
                let (secured, info) = accept_tls(io, shared).await?;
                io = secured;
                tls = Some(info);
            }
            Startup::SslRequest | Startup::GssEncRequest => io.write_all(b"N").await?,
            Startup::Cancel => {
                return Err(SessionError::Refused(
                    "cancel request (not supported)".into(),
                ))
            }
            Startup::Params(p) => return Ok((io, p, tls, buf)),
        }
    }
}

async fn accept_tls(io: BoxIo, shared: &Shared) -> Result<(BoxIo, TlsInfo), SessionError> {
    let acceptor = shared
        .tls
        .as_ref()
        .ok_or_else(|| SessionError::Refused("TLS not configured".into()))?;
    let ssl = Ssl::new(acceptor.context()).map_err(|e| SessionError::Refused(e.to_string()))?;
    let mut stream =
        tokio_openssl::SslStream::new(ssl, io).map_err(|e| SessionError::Refused(e.to_string()))?;
    Pin::new(&mut stream).accept().await.map_err(|e| {
        refused(Refusal::Tls);
        SessionError::Refused(format!("TLS handshake: {e}"))
    })?;
    let peer = stream.ssl().peer_certificate();
    let info = TlsInfo {
        client_cert: peer.is_some(),
        peer_cn: peer.as_deref().and_then(common_name),
    };
    Ok((Box::new(stream), info))
}

/// The read side: frontend messages to the session task, until an error or EOF.
async fn read_messages(
    mut rd: ReadHalf<BoxIo>,
    mut buf: BytesMut,
    max_len: Arc<AtomicUsize>,
    tx: mpsc::Sender<Result<Frontend, WireError>>,
) {
    loop {
        match wire::parse_message(&mut buf, max_len.load(Ordering::Relaxed)) {
            Ok(Some(m)) => {
                if tx.send(Ok(m)).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

type Rx = mpsc::Receiver<Result<Frontend, WireError>>;
type Wr = WriteHalf<BoxIo>;

async fn write(wr: &mut Wr, out: &mut BytesMut) -> Result<(), SessionError> {
    tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(out))
        .await
        .map_err(|_| SessionError::Timeout)??;
    out.clear();
    Ok(())
}

/// The next message, or the end of the session (EOF or a protocol error, reported).
async fn next(rx: &mut Rx, wr: &mut Wr) -> Result<Frontend, SessionError> {
    match rx.recv().await {
        Some(Ok(m)) => Ok(m),
        Some(Err(e)) => fatal(wr, sqlstate::PROTOCOL_VIOLATION, e.to_string())
            .await
            .map(|()| Frontend::Terminate),
        None => Err(SessionError::Refused("connection closed".into())),
    }
}

async fn authenticate(
    wr: &mut Wr,
    rx: &mut Rx,
    shared: &Shared,
    params: &StartupParams,
    ip: IpAddr,
    tls: Option<&TlsInfo>,
) -> Result<(), SessionError> {
    let user = &params.user;
    let enc = if tls.is_some() {
        "SSL encryption"
    } else {
        "no encryption"
    };
    let Some(rule) = shared.hba.find(user, ip, tls.is_some()) else {
        refused(Refusal::NoHbaEntry);
        return fatal(
            wr,
            sqlstate::INVALID_AUTHORIZATION,
            format!("no pg_hba.conf entry for replication connection from host \"{ip}\", user \"{user}\", {enc}"),
        )
        .await;
    };
    match rule.method {
        Method::Trust => Ok(()),
        Method::Reject => {
            refused(Refusal::HbaReject);
            fatal(
                wr,
                sqlstate::INVALID_AUTHORIZATION,
                format!("pg_hba.conf rejects replication connection for host \"{ip}\", user \"{user}\", {enc}"),
            )
            .await
        }
        Method::Cert => {
            let failed = format!("certificate authentication failed for user \"{user}\"");
            let failed = (sqlstate::INVALID_AUTHORIZATION, failed);
            let check = CertCheck {
                level: ClientCert::VerifyFull,
                rule,
                ident: &shared.ident,
            };
            check_client_cert(wr, user, tls, check, failed).await
        }
        Method::ScramSha256 => {
            if let Some(level) = rule.clientcert {
                // PostgreSQL words a CN mismatch under clientcert=verify-full
                // as the method's failure.
                let failed = format!("password authentication failed for user \"{user}\"");
                let failed = (sqlstate::INVALID_PASSWORD, failed);
                let check = CertCheck {
                    level,
                    rule,
                    ident: &shared.ident,
                };
                check_client_cert(wr, user, tls, check, failed).await?;
            }
            scram_exchange(wr, rx, shared, user, tls.is_some()).await
        }
    }
}

/// What a line asks of a client certificate.
struct CertCheck<'a> {
    level: ClientCert,
    rule: &'a Rule,
    ident: &'a IdentMaps,
}

impl CertCheck<'_> {
    /// Whether the certificate's CN may connect as `user`: the CN itself,
    /// or through the line's user name map (PostgreSQL's `check_usermap`).
    fn cn_allows(&self, cn: &str, user: &str) -> bool {
        match &self.rule.map {
            Some(map) => self.ident.allows(map, cn, user),
            None => cn == user,
        }
    }
}

/// The client certificate check of a `cert` line or a `clientcert=` option
/// (PostgreSQL's `CheckCertAuth`: the CN must equal the user name, or map
/// to it). The chain was verified by the handshake.
async fn check_client_cert(
    wr: &mut Wr,
    user: &str,
    tls: Option<&TlsInfo>,
    check: CertCheck<'_>,
    (code, failed): (&str, String),
) -> Result<(), SessionError> {
    let Some(info) = tls.filter(|t| t.client_cert) else {
        refused(Refusal::AuthFailed);
        return fatal(
            wr,
            sqlstate::INVALID_AUTHORIZATION,
            "connection requires a valid client certificate".into(),
        )
        .await;
    };
    let line = check.rule.line;
    match (check.level, info.peer_cn.as_deref()) {
        (ClientCert::VerifyCa, _) => Ok(()),
        (ClientCert::VerifyFull, Some(cn)) if check.cn_allows(cn, user) => Ok(()),
        (ClientCert::VerifyFull, cn) => {
            let cn = cn.unwrap_or("");
            match &check.rule.map {
                Some(map) => {
                    tracing::info!(user = %user, "{failed}: no match in usermap \"{map}\" for user \"{user}\" authenticated as \"{cn}\" (hba line {line})")
                }
                None => {
                    tracing::info!(user = %user, "{failed}: provided user name ({user}) and authenticated user name ({cn}) do not match (hba line {line})")
                }
            }
            refused(Refusal::AuthFailed);
            fatal(wr, code, failed).await
        }
    }
}

async fn scram_exchange(
    wr: &mut Wr,
    rx: &mut Rx,
    shared: &Shared,
    user: &str,
    tls: bool,
) -> Result<(), SessionError> {
    let failed = format!("password authentication failed for user \"{user}\"");
    let end_point = shared.end_point.as_deref().filter(|_| tls);
    let mut out = BytesMut::new();
    reply::auth_sasl(&mut out, scram::mechanisms(end_point.is_some()));
    write(wr, &mut out).await?;
    let Frontend::Password(initial) = next(rx, wr).await? else {
        return fatal(
            wr,
            sqlstate::PROTOCOL_VIOLATION,
            "expected SASL response".into(),
        )
        .await;
    };
    let Some((plus, first)) = sasl_initial(&initial, end_point.is_some()) else {
        return fatal(
            wr,
            sqlstate::PROTOCOL_VIOLATION,
            "malformed SASLInitialResponse".into(),
        )
        .await;
    };
    let mut nonce = [0u8; 18];
    openssl::rand::rand_bytes(&mut nonce).map_err(|e| SessionError::Refused(e.to_string()))?;
    let binding = match end_point {
        Some(endpoint) => scram::Binding::Offered { plus, endpoint },
        None => scram::Binding::NotOffered,
    };
    let (exchange, server_first) =
        match scram::server_first(first, shared.verifiers.get(user), &nonce, binding) {
            Ok(x) => x,
            Err(e) => return fatal(wr, sqlstate::PROTOCOL_VIOLATION, e.to_string()).await,
        };
    reply::auth_sasl_data(&mut out, 11, server_first.as_bytes());
    write(wr, &mut out).await?;
    let Frontend::Password(last) = next(rx, wr).await? else {
        return fatal(
            wr,
            sqlstate::PROTOCOL_VIOLATION,
            "expected SASL response".into(),
        )
        .await;
    };
    match exchange.server_final(&last) {
        Ok(server_final) => {
            reply::auth_sasl_data(&mut out, 12, server_final.as_bytes());
            write(wr, &mut out).await
        }
        Err(e) => {
            tracing::info!(user = %user, "SCRAM authentication of \"{user}\" failed: {e}");
            refused(Refusal::AuthFailed);
            let (code, message) = final_failure(&e, failed);
            fatal(wr, code, message).await
        }
    }
}

/// What the client is told when its final SCRAM message fails, as
/// PostgreSQL says it: a channel binding that does not match the TLS
/// connection is a protocol violation of its own ("SCRAM channel binding
/// check failed", e.g. a proxy terminating TLS in between), anything else
/// the password failure.
fn final_failure(e: &scram::ScramError, password_failed: String) -> (&'static str, String) {
    match e {
        scram::ScramError::BindingMismatch => (sqlstate::PROTOCOL_VIOLATION, e.to_string()),
        _ => (sqlstate::INVALID_PASSWORD, password_failed),
    }
}

/// The mechanism (`true`: SCRAM-SHA-256-PLUS, only when offered) and the
/// client-first message of a SASLInitialResponse (mechanism, length, data).
fn sasl_initial(body: &[u8], plus_offered: bool) -> Option<(bool, &[u8])> {
    let nul = body.iter().position(|&b| b == 0)?;
    let plus = match &body[..nul] {
        b"SCRAM-SHA-256" => false,
        b"SCRAM-SHA-256-PLUS" if plus_offered => true,
        _ => return None,
    };
    let len = body.get(nul + 1..nul + 5)?;
    let len = i32::from_be_bytes(len.try_into().ok()?);
    let data = body.get(nul + 5..)?;
    (usize::try_from(len).ok()? == data.len()).then_some((plus, data))
}

async fn load_catalog(shared: &Shared) -> Result<Catalog, String> {
    let dir = shared.dir.clone();
    let published: Published = shared.live.as_ref().map(|l| *l.borrow());
    // Before the receiver's first report: complete segment files only.
    let complete_only = published == Some(None);
    tokio::task::spawn_blocking(move || source::catalog(&dir, published.flatten(), complete_only))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

async fn commands(
    wr: &mut Wr,
    rx: &mut Rx,
    shared: &Shared,
    params: &StartupParams,
    pid: u32,
    app: &str,
    cm: &ClientMetrics,
) -> Result<(), SessionError> {
    let catalog = match load_catalog(shared).await {
        Ok(c) => c,
        Err(e) => {
            return fatal(
                wr,
                sqlstate::INTERNAL_ERROR,
                format!("walrcv cannot serve: {e}"),
            )
            .await
        }
    };
    let mut out = BytesMut::new();
    reply::auth_ok(&mut out);
    walsender::parameter_statuses(&mut out, catalog.major, &params.user, app);
    reply::backend_key_data(&mut out, pid, 0);
    reply::ready_for_query(&mut out);
    write(wr, &mut out).await?;
    loop {
        match next(rx, wr).await? {
            Frontend::Query(q) => {
                tracing::debug!(application_name = %app, "command: {q}");
                let catalog = match load_catalog(shared).await {
                    Ok(c) => c,
                    Err(e) => {
                        return fatal(
                            wr,
                            sqlstate::INTERNAL_ERROR,
                            format!("walrcv cannot serve: {e}"),
                        )
                        .await
                    }
                };
                let dir = shared.dir.clone();
                let c2 = catalog.clone();
                let outcome = tokio::task::spawn_blocking(move || {
                    walsender::answer(&q, &c2, |tli| source::history_file(&dir, tli))
                })
                .await
                .map_err(|e| SessionError::Refused(e.to_string()))?;
                match outcome {
                    Outcome::Reply(mut bytes) => write(wr, &mut bytes).await?,
                    Outcome::Stream(plan) => {
                        if !stream(wr, rx, shared, catalog, plan, app, cm).await? {
                            return Ok(());
                        }
                    }
                }
            }
            Frontend::Terminate => return Ok(()),
            Frontend::Other(t) => {
                return fatal(
                    wr,
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("invalid frontend message type {t}"),
                )
                .await
            }
            // Outside copy mode, or a password after authentication: ignored
            // as PostgreSQL ignores a stray CopyData.
            _ => {}
        }
    }
}

/// What a client message does to the stream.
enum Flow {
    Continue,
    /// Copy mode is over; back to commands.
    Ended,
    /// The client left.
    Exit,
}

/// Streams one START_REPLICATION. `Ok(false)`: the client left.
async fn stream(
    wr: &mut Wr,
    rx: &mut Rx,
    shared: &Shared,
    mut catalog: Catalog,
    plan: StreamPlan,
    app: &str,
    cm: &ClientMetrics,
) -> Result<bool, SessionError> {
    let mut out = BytesMut::new();
    reply::copy_both(&mut out);
    if plan.switch.is_none() && plan.start > catalog.end {
        reply::error(
            &mut out,
            Severity::Error,
            sqlstate::INTERNAL_ERROR,
            &format!(
                "requested starting point {} is ahead of the WAL flush position of this server {}",
                plan.start, catalog.end
            ),
            None,
        );
        reply::ready_for_query(&mut out);
        write(wr, &mut out).await?;
        return Ok(true);
    }
    write(wr, &mut out).await?;
    tracing::info!(application_name = %app, "streaming from {} on timeline {}{}", plan.start, plan.timeline, plan.slot.as_ref().map(|s| format!(" (slot \"{s}\" ignored: walrcv keeps the archive, not slots)")).unwrap_or_default());
    let mut s = Streamer::new(
        plan,
        catalog.major,
        catalog.segment_size,
        catalog.block_size,
        pg_now(),
    )
    .with_keepalive(shared.keepalive);
    let mut reader = SegmentReader::default();
    let mut live = shared.live.clone();
    let mut last_metrics = tokio::time::Instant::now();
    let mut need_reload = true;
    loop {
        while let Ok(m) = rx.try_recv() {
            match on_client(m, &mut s, wr, &mut out, app).await? {
                Flow::Continue => {}
                Flow::Ended => return Ok(true),
                Flow::Exit => return Ok(false),
            }
        }
        cm.positions(s.sent, s.reported.flush);
        let now = pg_now();
        if s.timed_out(now) {
            tracing::warn!(application_name = %app, "terminating walsender process due to replication timeout");
            return Ok(false);
        }
        if last_metrics.elapsed() >= METRICS_EVERY {
            last_metrics = tokio::time::Instant::now();
            log_positions(&s, app);
        }
        if s.timeline_finished() {
            s.finish_timeline(&mut out);
            write(wr, &mut out).await?;
            continue;
        }
        // The segment holding the next byte to send.
        let segno = s.sent.segment_number(catalog.segment_size);
        let stale = reader
            .current
            .as_ref()
            .is_none_or(|l| l.segno != segno || (!l.complete && s.sent >= l.end));
        if stale && need_reload {
            // The growing `.partial` in place; anything else off the runtime.
            if !reader.refresh(s.timeline(), segno, catalog.segment_size) {
                reader = reload(shared, &catalog, s.timeline(), segno, reader).await?;
            }
            need_reload = false;
        }
        let published: Published = live.as_ref().map(|l| *l.borrow());
        let available = reader
            .current
            .as_ref()
            .filter(|l| l.segno == segno)
            .map(|l| servable(published, s.timeline(), l.start, l.end, l.complete));
        if let Some(available) = available {
            if let Some((start, len)) = s.next_piece(available) {
                let Some(loaded) = reader.current.as_ref() else {
                    continue;
                };
                let data = loaded.slice(start, Lsn(start.0 + len));
                reply::xlog_data(&mut out, start, available, now, data);
                write(wr, &mut out).await?;
                s.sent_piece(start, len, now);
                cm.sent(s.sent, len, s.reported.flush);
                need_reload = true;
                continue;
            }
        } else if s.plan.switch.is_none() {
            // No file for the segment: gone, unless it is still to come.
            catalog = load_catalog(shared).await.map_err(SessionError::Refused)?;
            if s.sent < catalog.end {
                // The catalog found WAL past the client's position: the
                // segment's file may have been created, or got its first
                // WAL, since it was looked for (the next `.partial`, just
                // after the previous segment's completion). Look once more
                // before calling it removed.
                reader = reload(shared, &catalog, s.timeline(), segno, reader).await?;
                if reader.current.as_ref().is_some_and(|l| l.segno == segno) {
                    continue;
                }
                let name = wal_file_name(s.timeline(), segno, catalog.segment_size);
                reply::error(
                    &mut out,
                    Severity::Error,
                    sqlstate::UNDEFINED_FILE,
                    &format!("requested WAL segment {name} has already been removed"),
                    None,
                );
                reply::ready_for_query(&mut out);
                write(wr, &mut out).await?;
                return Ok(true);
            }
        } else {
            let name = wal_file_name(s.timeline(), segno, catalog.segment_size);
            reply::error(
                &mut out,
                Severity::Error,
                sqlstate::UNDEFINED_FILE,
                &format!("requested WAL segment {name} has already been removed"),
                None,
            );
            reply::ready_for_query(&mut out);
            write(wr, &mut out).await?;
            return Ok(true);
        }
        // Caught up on the current timeline: has walrcv followed a switch?
        // (Under `stream --serve`, only once a newer timeline is published.)
        let published = live.as_ref().and_then(|l| *l.borrow());
        if s.plan.switch.is_none() && published.is_none_or(|(t, _)| t > s.timeline()) {
            if let Some((switchpoint, next)) = timeline_end(shared, s.timeline()).await? {
                tracing::info!(application_name = %app, "timeline {} ended at {switchpoint}: moving the client to timeline {next}", s.timeline());
                s.timeline_ended(switchpoint, next);
                continue;
            }
        }
        if let Some(reply_requested) = s.keepalive_due(now) {
            reply::keepalive(&mut out, s.sent, now, reply_requested);
            write(wr, &mut out).await?;
        }
        // Caught up: wait for the client, new WAL, or the next poll.
        let changed = async {
            match live.as_mut() {
                Some(l) => {
                    let _ = l.changed().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            m = rx.recv() => {
                let m = m.ok_or_else(|| SessionError::Refused("connection closed".into()))?;
                match on_client(m, &mut s, wr, &mut out, app).await? {
                    Flow::Continue => {}
                    Flow::Ended => return Ok(true),
                    Flow::Exit => return Ok(false),
                }
            }
            _ = changed => need_reload = true,
            _ = tokio::time::sleep(POLL) => need_reload = true,
        }
    }
}

/// [`source::timeline_end`] off the runtime's threads.
async fn timeline_end(
    shared: &Shared,
    tli: TimeLineId,
) -> Result<Option<(Lsn, TimeLineId)>, SessionError> {
    let dir = shared.dir.clone();
    tokio::task::spawn_blocking(move || source::timeline_end(&dir, tli))
        .await
        .map_err(|e| SessionError::Refused(e.to_string()))?
        .map_err(|e| SessionError::Refused(e.to_string()))
}

async fn reload(
    shared: &Shared,
    catalog: &Catalog,
    tli: TimeLineId,
    segno: u64,
    mut reader: SegmentReader,
) -> Result<SegmentReader, SessionError> {
    let dir = shared.dir.clone();
    let c = catalog.clone();
    let (reader, result) = tokio::task::spawn_blocking(move || {
        let r = reader.load(&dir, &c, tli, segno).map(|l| l.is_some());
        (reader, r)
    })
    .await
    .map_err(|e| SessionError::Refused(e.to_string()))?;
    match result {
        Ok(_) => Ok(reader),
        Err(e) => {
            tracing::error!("cannot serve segment {segno:X} of timeline {tli}: {e}");
            Err(SessionError::Refused(e.to_string()))
        }
    }
}

fn log_positions(s: &Streamer, app: &str) {
    let r = &s.reported;
    tracing::info!(
        application_name = %app,
        sent = %s.sent,
        write = %r.write,
        flush = %r.flush,
        apply = %r.apply,
        lag_bytes = s.lag(),
        xmin = ?r.xmin,
        "standby \"{app}\": sent {}, write {}, flush {}, apply {}, lag {} bytes",
        s.sent, r.write, r.flush, r.apply, s.lag()
    );
}

async fn on_client(
    m: Result<Frontend, WireError>,
    s: &mut Streamer,
    wr: &mut Wr,
    out: &mut BytesMut,
    app: &str,
) -> Result<Flow, SessionError> {
    let now = pg_now();
    s.heard(now);
    match m {
        Ok(Frontend::CopyData(payload)) => match parse_standby(payload) {
            Ok(msg) => {
                if s.on_standby(&msg, now) {
                    reply::keepalive(out, s.sent, now, false);
                    write(wr, out).await?;
                }
                tracing::debug!(application_name = %app, "standby reply: {msg:?}");
                Ok(Flow::Continue)
            }
            Err(e) => fatal(wr, sqlstate::PROTOCOL_VIOLATION, e.to_string())
                .await
                .map(|()| Flow::Exit),
        },
        Ok(Frontend::CopyDone) => {
            s.client_copy_done(out);
            write(wr, out).await?;
            log_positions(s, app);
            Ok(Flow::Ended)
        }
        Ok(Frontend::Terminate) => {
            log_positions(s, app);
            Ok(Flow::Exit)
        }
        Ok(Frontend::Other(t)) => fatal(
            wr,
            sqlstate::PROTOCOL_VIOLATION,
            format!("invalid standby message type \"{}\"", t as char),
        )
        .await
        .map(|()| Flow::Exit),
        Ok(Frontend::CopyFail) => Ok(Flow::Exit),
        Ok(_) => fatal(
            wr,
            sqlstate::PROTOCOL_VIOLATION,
            "unexpected message type in copy mode".into(),
        )
        .await
        .map(|()| Flow::Exit),
        Err(e) => fatal(wr, sqlstate::PROTOCOL_VIOLATION, e.to_string())
            .await
            .map(|()| Flow::Exit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_cap_by_timeline() {
        assert_eq!(live_cap((2, Lsn(500)), 2), Some(Lsn(500)));
        assert_eq!(live_cap((1, Lsn(500)), 2), Some(Lsn(0)));
        assert_eq!(live_cap((3, Lsn(500)), 2), None);
    }

    #[test]
    fn nothing_unreported_is_served_under_stream_serve() {
        let seg = 1u64 << 20;
        let (start, end) = (Lsn(3 * seg), Lsn(3 * seg + 4096));
        // walrcv serve: the verified end.
        assert_eq!(servable(None, 1, start, end, false), end);
        // stream --serve before the first report: complete segments only.
        assert_eq!(
            servable(Some(None), 1, start, Lsn(4 * seg), true),
            Lsn(4 * seg)
        );
        assert_eq!(servable(Some(None), 1, start, end, false), start);
        // Then up to the report, never before the segment's start.
        let reported = Some(Some((1, Lsn(3 * seg + 100))));
        assert_eq!(servable(reported, 1, start, end, false), Lsn(3 * seg + 100));
        assert_eq!(
            servable(Some(Some((1, Lsn(seg)))), 1, start, end, false),
            start
        );
        assert_eq!(servable(Some(Some((2, Lsn(0)))), 1, start, end, false), end);
        assert_eq!(
            servable(Some(Some((1, Lsn(9 * seg)))), 2, start, end, true),
            start
        );
    }

    #[test]
    fn listen_forms() {
        assert_eq!(listen_addr("5433").unwrap(), "127.0.0.1:5433");
        assert_eq!(listen_addr(":5433").unwrap(), "127.0.0.1:5433");
        assert_eq!(listen_addr("0.0.0.0:5433").unwrap(), "0.0.0.0:5433");
        assert_eq!(listen_addr("[::1]:5433").unwrap(), "[::1]:5433");
        assert!(listen_addr("host").is_err());
    }

    #[test]
    fn passfile_lines() {
        let v = Verifier::from_password("pw", b"salt", 4096);
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD;
        let line = format!(
            "rep:SCRAM-SHA-256$4096:{}${}:{}",
            b.encode(&v.salt),
            b.encode(v.stored_key),
            b.encode(v.server_key)
        );
        let m = parse_passfile(&format!("# comment\n\n{line}\n")).unwrap();
        assert_eq!(m.get("rep"), Some(&v));
        assert!(parse_passfile("rep:md5abcdef")
            .unwrap_err()
            .contains("line 1"));
        assert!(parse_passfile("nocolon").is_err());
    }

    #[test]
    fn a_channel_binding_mismatch_is_not_a_wrong_password() {
        let failed = || "password authentication failed for user \"u\"".to_string();
        assert_eq!(
            final_failure(&scram::ScramError::BindingMismatch, failed()),
            (
                sqlstate::PROTOCOL_VIOLATION,
                "SCRAM channel binding check failed".to_string()
            )
        );
        assert_eq!(
            final_failure(&scram::ScramError::WrongProof, failed()),
            (sqlstate::INVALID_PASSWORD, failed())
        );
    }

    #[test]
    fn sasl_initial_response() {
        let mut b = b"SCRAM-SHA-256\0".to_vec();
        b.extend_from_slice(&5i32.to_be_bytes());
        b.extend_from_slice(b"n,,ab");
        assert_eq!(sasl_initial(&b, false), Some((false, &b"n,,ab"[..])));
        b.push(0);
        assert_eq!(sasl_initial(&b, true), None);
        assert_eq!(sasl_initial(b"MD5\0\0\0\0\0", true), None);
        let mut p = b"SCRAM-SHA-256-PLUS\0".to_vec();
        p.extend_from_slice(&3i32.to_be_bytes());
        p.extend_from_slice(b"p=x");
        assert_eq!(sasl_initial(&p, true), Some((true, &b"p=x"[..])));
        // Not offered (no TLS): not accepted.
        assert_eq!(sasl_initial(&p, false), None);
    }
}
