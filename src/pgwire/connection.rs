//! The async connection to a server: TCP (with keepalives) or Unix socket,
//! the startup packet, the authentication exchange (its decisions are
//! [`super::auth`]'s; this drives it), simple queries, and raw message reads and writes for the
//! CopyBoth stream.
//!
//! Cancellation: [`Connection::read_message`] is cancel-safe (bytes are only
//! consumed from the read buffer once a whole message is parsed), so it can sit
//! in a `select!` beside timers. Writes are not: they run to completion.
//!
//! Bounded waits: outside the CopyBoth stream (whose receive loop has its own
//! timer) no wait is longer than the caller's reply timeout. The TCP or Unix
//! socket connect waits at most `connect_timeout` (from the connection string,
//! as libpq), else [`DEFAULT_CONNECT_TIMEOUT`]; then every message awaited
//! during start-up, authentication and a command's reply waits at most the
//! reply timeout (`--receive-timeout` for `walrcv stream`). As in libpq,
//! `connect_timeout` also bounds each host's whole attempt, start-up included;
//! without it, the TLS handshake, start-up and authentication of each
//! connection must end within [`start_up_deadline`] all the same (a server
//! that keeps sending without ever finishing the start-up is given up).
//!
//! Before the start-up ends, what the server sends is small and few, as
//! libpq has it ([`backend::max_message_len`],
//! [`backend::MAX_STARTUP_PARAMETERS`]).

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::auth::{AuthError, AuthSettings, Authenticated, Authenticator, Step};
use super::backend::{self, truncated, BackendMessage, Phase, ProtocolError};
pub use super::error::{PgError, PgErrorKind, TargetError};
use super::session_attrs::{self, Pass, Rejection, ServerState, Verdict};
use super::tls::{self, Encryption, SslResponse, TlsError};
use crate::conninfo::{ConnParams, LoadBalanceHosts, SslNegotiation, Target, TargetSessionAttrs};

/// Anything we can speak the protocol over.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// "the reply to IDENTIFY_SYSTEM": what a command's reply timeout names (the
/// command's first word, bounded).
fn reply_to(sql: &str) -> String {
    let name = sql.split_whitespace().next().unwrap_or("");
    format!("the reply to {}", truncated(name, 40))
}

/// "with TLS" / "without TLS", for the log line of a second attempt.
fn describe(encryption: Encryption) -> &'static str {
    match encryption {
        Encryption::Tls => "with TLS",
        Encryption::Plain => "without TLS",
    }
}

/// The order to try the targets in: as given, or with
/// `load_balance_hosts=random` a new random order for each connection (libpq
/// shuffles once per connection object, i.e. per connection attempt).
fn host_order(params: &ConnParams) -> Vec<&Target> {
    let mut order: Vec<&Target> = params.targets.iter().collect();
    if params.load_balance_hosts == LoadBalanceHosts::Random {
        session_attrs::shuffle(&mut order, fresh_seed());
    }
    order
}

/// A seed for the host shuffle: from the kernel's generator when it can be
/// read, else from the time and pid (libpq's `libpq_prng_init` falls back the
/// same way). Not secret: it only spreads connections over hosts.
fn fresh_seed() -> u64 {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    let from_kernel =
        std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if from_kernel.is_ok() {
        return u64::from_le_bytes(bytes);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// TCP to each address `host` resolves to, until one accepts, as
/// `TcpStream::connect` does; with `load_balance_hosts=random` the addresses
/// are shuffled first, as libpq shuffles them in `PQconnectPoll`.
async fn tcp_connect(
    host: &str,
    port: u16,
    load_balance: LoadBalanceHosts,
) -> io::Result<tokio::net::TcpStream> {
    if load_balance == LoadBalanceHosts::Disable {
        return tokio::net::TcpStream::connect((host, port)).await;
    }
    let mut addrs: Vec<std::net::SocketAddr> =
        tokio::net::lookup_host((host, port)).await?.collect();
    session_attrs::shuffle(&mut addrs, fresh_seed());
    let mut last = io::Error::new(
        io::ErrorKind::InvalidInput,
        "could not resolve to any address",
    );
    for addr in addrs {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The TCP (or Unix socket) connect timeout when the connection string sets no
/// `connect_timeout`. libpq would wait as long as the kernel does (about two
/// minutes for TCP); a receiver that must reconnect by itself waits less.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Without `connect_timeout`, how long the TLS handshake, start-up and
/// authentication of one connection may take in all, once its socket is
/// open: twice the reply timeout (each message's own limit), so that a
/// server that keeps sending without ever finishing cannot hold us.
pub fn start_up_deadline(reply_timeout: Duration) -> Duration {
    reply_timeout.saturating_mul(2)
}

/// Why a `server_version` parameter cannot be turned into a version number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid server_version {shown:?}: {why}")]
pub struct BadServerVersion {
    /// The value, cut to a printable length.
    pub shown: String,
    pub why: &'static str,
}

/// `server_version_num`-style number from a `server_version` parameter:
/// "15.18 (Debian 15.18-1)" → 150018, "17devel" → 170000. The value comes from
/// the server: checked arithmetic, and a minor number must fit in four digits.
pub fn parse_server_version(v: &str) -> Result<u32, BadServerVersion> {
    let bad = |why| BadServerVersion {
        shown: truncated(v, 40),
        why,
    };
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    let major = parts.next().unwrap_or("");
    if major.is_empty() {
        return Err(bad("it does not start with a number"));
    }
    let major: u32 = major
        .parse()
        .map_err(|_| bad("the major version is too large"))?;
    let minor: u32 = match parts.next() {
        Some(p) if !p.is_empty() => p
            .parse()
            .map_err(|_| bad("the minor version is too large"))?,
        _ => 0,
    };
    if minor >= 10000 {
        return Err(bad("the minor version is too large"));
    }
    major
        .checked_mul(10000)
        .and_then(|m| m.checked_add(minor))
        .ok_or_else(|| bad("the major version is too large"))
}

/// Rows of a simple query's (single) result set, in text format.
#[derive(Debug, Clone, Default)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<Bytes>>>,
}

impl QueryResult {
    /// The text value at (row, col), if present and not NULL.
    pub fn text(&self, row: usize, col: usize) -> Option<String> {
        let v = self.rows.get(row)?.get(col)?.as_ref()?;
        Some(String::from_utf8_lossy(v).into_owned())
    }
}

/// What START_REPLICATION answered.
#[derive(Debug, Clone)]
pub enum CopyStart {
    /// The server entered CopyBoth.
    CopyBoth,
    /// No copy: the server answered with a result set (the requested point is the
    /// exact end of a historic timeline), followed by ReadyForQuery.
    ResultSet(QueryResult),
}

/// An open, authenticated connection.
pub struct Connection {
    stream: Box<dyn Stream>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    target: String,
    params: HashMap<String, String>,
    /// The longest wait for one message outside the CopyBoth stream.
    reply_timeout: Duration,
    /// Bytes arrived since [`Connection::take_bytes_arrived`] last looked.
    bytes_arrived: bool,
    /// Whether the connection is encrypted.
    tls: bool,
    /// The server's end-entity certificate (DER), over TLS.
    tls_server_certificate: Option<Vec<u8>>,
    /// Start-up until the first ReadyForQuery: the limits of
    /// [`backend::max_message_len`] and [`backend::MAX_STARTUP_PARAMETERS`].
    phase: Phase,
    /// ParameterStatus messages received during start-up.
    startup_parameters: usize,
    /// Whether the server asked for a client certificate, over TLS.
    certificate_request: Option<Arc<tls::CertificateRequest>>,
    /// How the server authenticated us (set when it accepted us).
    authentication: Authenticated,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("target", &self.target)
            .finish()
    }
}

impl Connection {
    /// Connects to the first target of `params` that accepts us and fits
    /// `target_session_attrs`, with `replication=true` and the given
    /// application name. The targets are tried in order, or shuffled anew for
    /// each call with `load_balance_hosts=random`; `prefer-standby` makes a
    /// second pass accepting any server, as libpq. A server that does not fit
    /// is closed (Terminate) and the next one tried. Authentication failures
    /// end the attempt at once (other hosts would say the same). Every
    /// message awaited outside the CopyBoth stream, from start-up on, waits
    /// at most `reply_timeout`.
    ///
    /// When no host fits and at least one was refused for its role, the error
    /// is [`PgError::NoSuitableHost`], naming each host and why; otherwise the
    /// last host's error.
    pub async fn connect(
        params: &ConnParams,
        replication: bool,
        reply_timeout: Duration,
    ) -> Result<Connection, PgError> {
        let attrs = params.target_session_attrs;
        let order = host_order(params);
        let attempts: Vec<(Pass, &Target)> = session_attrs::passes(attrs)
            .iter()
            .flat_map(|&pass| order.iter().map(move |&target| (pass, target)))
            .collect();
        let mut last = PgError::NoTarget;
        let mut failures = Vec::new();
        let mut refused_for_role = false;
        for (i, &(pass, target)) in attempts.iter().enumerate() {
            let then = if i + 1 < attempts.len() {
                "; trying the next host"
            } else {
                ""
            };
            match Self::connect_fitting(params, target, replication, reply_timeout, pass).await {
                Ok(Ok(conn)) => {
                    if order.len() > 1 {
                        tracing::info!("connected to {target} (target_session_attrs={attrs})");
                    }
                    return Ok(conn);
                }
                Ok(Err(rejection)) => {
                    // libpq's wording: "connection to server at ... failed:
                    // server is in hot standby mode".
                    let why = format!("connection to {target} failed: {rejection}");
                    tracing::info!("{why}{then}");
                    failures.push(why);
                    refused_for_role = true;
                }
                Err(e) if e.is_auth_failure() => return Err(e),
                Err(e) => {
                    // With several hosts each failure gets a line: the final
                    // error names only the last one.
                    if order.len() > 1 {
                        tracing::info!("{e}{then}");
                    } else {
                        tracing::debug!("{e}");
                    }
                    failures.push(e.to_string());
                    last = e;
                }
            }
        }
        if refused_for_role {
            return Err(PgError::NoSuitableHost { attrs, failures });
        }
        Err(last)
    }

    /// One host, bounded by `connect_timeout` as in libpq (the role check
    /// included): the connection if the server fits, or why it does not
    /// (the connection then closed).
    async fn connect_fitting(
        params: &ConnParams,
        target: &Target,
        replication: bool,
        reply_timeout: Duration,
        pass: Pass,
    ) -> Result<Result<Connection, Rejection>, PgError> {
        let attempt = async {
            let mut conn = Self::connect_one(params, target, replication, reply_timeout).await?;
            match conn.check_fit(params.target_session_attrs, pass).await? {
                None => Ok(Ok(conn)),
                Some(rejection) => {
                    conn.close().await;
                    Ok(Err(rejection))
                }
            }
        };
        match params.connect_timeout {
            Some(t) => match tokio::time::timeout(t, attempt).await {
                Ok(r) => r,
                Err(_) => Err(PgError::at(
                    target.to_string(),
                    PgErrorKind::ConnectTimeout { secs: t.as_secs() },
                )),
            },
            None => attempt.await,
        }
    }

    /// Whether this server fits `attrs` on `pass` ([`session_attrs::check`]),
    /// asking with `SHOW` what the start-up parameters did not report.
    async fn check_fit(
        &mut self,
        attrs: TargetSessionAttrs,
        pass: Pass,
    ) -> Result<Option<Rejection>, PgError> {
        let mut state = ServerState::reported(|name| self.parameter(name));
        // Ends: check never asks for a setting already learnt, and there are two.
        loop {
            match session_attrs::check(attrs, pass, &state) {
                Verdict::Accept => return Ok(None),
                Verdict::Reject(rejection) => return Ok(Some(rejection)),
                Verdict::Show(setting) => {
                    let sql = setting.show_command();
                    let result = self.simple_query(sql).await?;
                    let Some(value) = result.text(0, 0) else {
                        return Err(PgError::at(
                            self.target.clone(),
                            PgErrorKind::Unexpected {
                                during: "checking target_session_attrs",
                                got: format!("no value in the reply to {sql}"),
                            },
                        ));
                    };
                    // Bounded: the value comes from the server.
                    tracing::debug!("{}: {sql}: {}", self.target, truncated(&value, 40));
                    state.learn(setting, &value);
                }
            }
        }
    }

    /// One host: the first encryption libpq would try, then, if that failed
    /// in a way the other encryption may cure, the other one on a new
    /// connection (`sslmode=prefer` and `allow`).
    async fn connect_one(
        params: &ConnParams,
        target: &Target,
        replication: bool,
        reply_timeout: Duration,
    ) -> Result<Connection, PgError> {
        let unix = matches!(target, Target::Unix { .. });
        let first = tls::first_encryption(params.tls.mode, unix);
        let attempt = |enc| Self::attempt(params, target, replication, reply_timeout, enc);
        let e = match attempt(first).await {
            Ok(c) => return Ok(c),
            Err(e) => e,
        };
        let Some(next) = tls::fallback(params.tls.mode, first, e.attempt_failure()) else {
            return Err(e);
        };
        tracing::debug!("{e}; trying again {}", describe(next));
        attempt(next).await.map_err(|then| PgError::Fallback {
            first: Box::new(e),
            first_was_tls: first == Encryption::Tls,
            then: Box::new(then),
        })
    }

    /// One connection: the socket, the encryption, start-up and authentication.
    async fn attempt(
        params: &ConnParams,
        target: &Target,
        replication: bool,
        reply_timeout: Duration,
        encryption: Encryption,
    ) -> Result<Connection, PgError> {
        let socket = Self::open_socket(params, target).await?;
        let mut conn = Connection {
            stream: socket,
            rbuf: BytesMut::with_capacity(256 * 1024),
            wbuf: BytesMut::with_capacity(1024),
            target: target.to_string(),
            params: HashMap::new(),
            reply_timeout,
            bytes_arrived: false,
            tls: false,
            tls_server_certificate: None,
            phase: Phase::StartUp,
            startup_parameters: 0,
            certificate_request: None,
            authentication: Authenticated::None,
        };
        let start_up = async {
            if encryption == Encryption::Tls {
                conn.negotiate_tls(params, target).await?;
            }
            conn.startup(params, target, replication).await
        };
        match params.connect_timeout {
            // The caller bounds the whole attempt.
            Some(_) => start_up.await?,
            None => {
                let limit = start_up_deadline(reply_timeout);
                match tokio::time::timeout(limit, start_up).await {
                    Ok(r) => r?,
                    Err(_) => {
                        return Err(PgError::at(
                            target.to_string(),
                            PgErrorKind::ConnectTimeout {
                                secs: limit.as_secs(),
                            },
                        ))
                    }
                }
            }
        }
        conn.phase = Phase::Session;
        Ok(conn)
    }

    /// TCP (with keepalives) or Unix socket, within the connect timeout.
    async fn open_socket(params: &ConnParams, target: &Target) -> Result<Box<dyn Stream>, PgError> {
        let desc = target.to_string();
        let connect_err = |source| PgError::at(desc.clone(), PgErrorKind::Connect { source });
        let limit = params.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let timed_out = || {
            PgError::at(
                desc.clone(),
                PgErrorKind::ConnectTimeout {
                    secs: limit.as_secs(),
                },
            )
        };
        let stream: Box<dyn Stream> = match target {
            Target::Tcp {
                host,
                hostaddr,
                port,
            } => {
                let addr = hostaddr.as_deref().unwrap_or(host);
                let connect = tcp_connect(addr, *port, params.load_balance_hosts);
                let s = tokio::time::timeout(limit, connect)
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(connect_err)?;
                s.set_nodelay(true).map_err(connect_err)?;
                if params.keepalives {
                    let mut ka = socket2::TcpKeepalive::new();
                    if let Some(d) = params.keepalives_idle {
                        ka = ka.with_time(d);
                    }
                    if let Some(d) = params.keepalives_interval {
                        ka = ka.with_interval(d);
                    }
                    if let Some(n) = params.keepalives_count {
                        ka = ka.with_retries(n);
                    }
                    socket2::SockRef::from(&s)
                        .set_tcp_keepalive(&ka)
                        .map_err(connect_err)?;
                }
                Box::new(s)
            }
            Target::Unix { dir, port } => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                Box::new(
                    tokio::time::timeout(limit, tokio::net::UnixStream::connect(path))
                        .await
                        .map_err(|_| timed_out())?
                        .map_err(connect_err)?,
                )
            }
        };
        Ok(stream)
    }

    /// SSLRequest and its answer (or, with `sslnegotiation=direct`, nothing),
    /// then the TLS handshake; each wait bounded by the reply timeout. An 'N'
    /// under `prefer`/`allow` leaves the connection in plain text.
    ///
    /// The OpenSSL context (and the root, certificate, key and CRL files) is
    /// built only once the server has answered 'S', as libpq's
    /// `pgtls_open_client` runs `initialize_SSL` only then: a server without
    /// TLS never costs OpenSSL's context and trust store (megabytes of
    /// resident memory), and a bad file is reported only when TLS is really
    /// going to be used (under `require` against such a server, libpq
    /// reports that the server does not support SSL, not the file). What
    /// libpq checks before connecting (`sslmode`, `sslrootcert=system` with
    /// a weaker mode, the protocol version range) is checked by `conninfo`.
    async fn negotiate_tls(&mut self, params: &ConnParams, target: &Target) -> Result<(), PgError> {
        let host = match target {
            Target::Tcp { host, .. } => host.as_str(),
            Target::Unix { .. } => return Ok(()),
        };
        if params.tls.negotiation == SslNegotiation::Postgres {
            let mut request = BytesMut::new();
            request.extend_from_slice(&tls::SSL_REQUEST);
            self.write_all(request).await?;
            // Exactly one byte: anything the server sent after it must go
            // through the TLS handshake, never be read as plain text
            // (CVE-2021-23222).
            let answer = self.read_one_byte("the answer to SSLRequest").await?;
            match tls::ssl_response(params.tls.mode, answer).map_err(|e| self.tls_err(e))? {
                SslResponse::ContinuePlain => {
                    tracing::debug!(
                        "{}: the server does not accept TLS, going on without",
                        self.target
                    );
                    return Ok(());
                }
                SslResponse::Handshake => {}
            }
        }
        let config = tls::client_config(&params.tls, host).map_err(|e| self.tls_err(e))?;
        // The socket moves into the TLS stream; a closed placeholder stands in
        // meanwhile (a failed handshake ends this connection anyway).
        let placeholder: Box<dyn Stream> = Box::new(tokio::io::duplex(1).0);
        let socket = std::mem::replace(&mut self.stream, placeholder);
        let handshake = tls::handshake(socket, config, params.tls.negotiation);
        let established = match tokio::time::timeout(self.reply_timeout, handshake).await {
            Ok(r) => r.map_err(|e| self.tls_err(e))?,
            Err(_) => return Err(self.reply_timeout_err("the TLS handshake")),
        };
        self.stream = Box::new(established.stream);
        self.tls = true;
        self.tls_server_certificate = established.server_certificate;
        self.certificate_request = Some(established.certificate_request);
        Ok(())
    }

    /// One byte from the socket, outside the message framing.
    async fn read_one_byte(&mut self, waiting_for: &str) -> Result<u8, PgError> {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(self.reply_timeout, self.stream.read_exact(&mut byte)).await {
            Ok(Ok(_)) => Ok(byte[0]),
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(PgError::at(self.target.clone(), PgErrorKind::Closed))
            }
            Ok(Err(e)) => Err(self.io_err(e)),
            Err(_) => Err(self.reply_timeout_err(waiting_for)),
        }
    }

    async fn startup(
        &mut self,
        params: &ConnParams,
        target: &Target,
        replication: bool,
    ) -> Result<(), PgError> {
        let mut startup: Vec<(&str, &str)> = vec![
            ("user", params.user.as_str()),
            ("database", params.dbname.as_str()),
            ("application_name", params.application_name.as_str()),
        ];
        if replication {
            startup.push(("replication", "true"));
        }
        if let Some(o) = &params.options {
            startup.push(("options", o.as_str()));
        }
        if let Some(e) = &params.client_encoding {
            startup.push(("client_encoding", e.as_str()));
        }
        let mut buf = BytesMut::new();
        frontend::startup_message(startup, &mut buf).map_err(|e| self.io_err(e))?;
        self.write_all(buf).await?;

        let mut auth = Authenticator::new(AuthSettings {
            user: params.user.clone(),
            channel_binding: params.channel_binding,
            require_auth: params.require_auth.clone(),
            tls_server_certificate: self.tls_server_certificate().map(<[u8]>::to_vec),
        });
        loop {
            match self.read_reply("start-up and authentication").await? {
                BackendMessage::Authentication(req) => {
                    let step = auth
                        .step(&req, || params.password_for(target))
                        .map_err(|e| self.auth_failed(e))?;
                    if let Step::Send(message) = step {
                        self.write_all(message.into_bytes()).await?;
                    }
                    if auth.is_authenticated() && params.tls.require_cert_request {
                        self.check_certificate_was_requested()?;
                    }
                }
                BackendMessage::BackendKeyData | BackendMessage::NegotiateProtocolVersion => {}
                BackendMessage::ReadyForQuery => {
                    if let Some(method) = auth.method() {
                        self.authentication = method;
                        return Ok(());
                    }
                    return Err(self.unexpected("starting up", &BackendMessage::ReadyForQuery));
                }
                BackendMessage::Error(message) => {
                    return Err(PgError::server(self.target.clone(), message))
                }
                other => return Err(self.unexpected("starting up", &other)),
            }
        }
    }

    /// `sslcertmode=require`, checked once the server has authenticated us
    /// (libpq's `check_expected_areq` at AuthenticationOk): the server must
    /// have asked for a client certificate and been sent one. A plain-text
    /// connection was never asked.
    fn check_certificate_was_requested(&self) -> Result<(), PgError> {
        let checked = match &self.certificate_request {
            Some(request) => request.check_required(),
            None => Err(TlsError::CertificateNotRequested),
        };
        checked.map_err(|e| self.tls_err(e))
    }

    fn auth_failed(&self, source: AuthError) -> PgError {
        match source {
            AuthError::NoPassword => PgError::at(self.target.clone(), PgErrorKind::NoPassword),
            source => PgError::at(self.target.clone(), PgErrorKind::Authentication { source }),
        }
    }

    fn tls_err(&self, source: TlsError) -> PgError {
        PgError::at(self.target.clone(), PgErrorKind::Tls { source })
    }

    fn reply_timeout_err(&self, waiting_for: &str) -> PgError {
        PgError::at(
            self.target.clone(),
            PgErrorKind::ReplyTimeout {
                waiting_for: waiting_for.to_string(),
                secs: self.reply_timeout.as_secs(),
            },
        )
    }

    fn io_err(&self, source: io::Error) -> PgError {
        PgError::at(self.target.clone(), PgErrorKind::Io { source })
    }

    fn unexpected(&self, during: &'static str, got: &BackendMessage) -> PgError {
        PgError::at(
            self.target.clone(),
            PgErrorKind::Unexpected {
                during,
                got: got.summary(),
            },
        )
    }

    /// Whether the connection is encrypted with TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The server's end-entity certificate (DER) when the connection is TLS:
    /// what SCRAM-SHA-256-PLUS's `tls-server-end-point` channel binding
    /// hashes. `None` in plain text.
    pub fn tls_server_certificate(&self) -> Option<&[u8]> {
        self.tls_server_certificate.as_deref()
    }

    /// How the server authenticated this connection: "none" (trust),
    /// password, md5, SCRAM-SHA-256 or SCRAM-SHA-256-PLUS.
    pub fn authentication(&self) -> Authenticated {
        self.authentication
    }

    /// A human description of the server this connection goes to.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// A ParameterStatus value reported by the server (e.g. `server_version`).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// `server_version_num`-style number derived from `server_version`
    /// (e.g. "15.18 (Debian...)" → 150018), if the server reported it; see
    /// [`parse_server_version`].
    pub fn server_version_num(&self) -> Option<Result<u32, BadServerVersion>> {
        self.parameter("server_version").map(parse_server_version)
    }

    /// Writes a whole message; bounded by the reply timeout (a server that
    /// stopped reading would otherwise block us once the socket buffer fills).
    async fn write_all(&mut self, buf: BytesMut) -> Result<(), PgError> {
        self.write_bytes(&buf).await
    }

    /// Writes `buf` whole and flushes, bounded by the reply timeout. What the
    /// socket takes at once (a status update almost always) is written
    /// without arming that timeout: a timer registered and cancelled in
    /// tokio's timer wheel for every commit's status update was measured
    /// (callgrind, `pgbench -N -c 1`) at about 700 instructions per commit,
    /// a tenth of the receive loop's own work besides the CRC.
    async fn write_bytes(&mut self, buf: &[u8]) -> Result<(), PgError> {
        let written = match self.write_now(buf) {
            Ok(Some(n)) => n,
            Ok(None) => return Ok(()),
            Err(source) => return Err(self.io_err(source)),
        };
        let rest = buf.get(written..).unwrap_or(&[]);
        let limit = self.reply_timeout;
        let stream = &mut self.stream;
        let write = async {
            stream.write_all(rest).await?;
            stream.flush().await
        };
        match tokio::time::timeout(limit, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(PgError::at(self.target.clone(), PgErrorKind::Io { source })),
            Err(_) => Err(PgError::at(
                self.target.clone(),
                PgErrorKind::WriteTimeout {
                    secs: limit.as_secs(),
                },
            )),
        }
    }

    /// Writes what the socket takes without waiting, then flushes: `None`
    /// when all of `buf` is written and flushed, else how much was written
    /// (the rest, and the flush, are for [`Connection::write_bytes`]'s timed
    /// write). Polling with a no-op waker is sound for the same reason as in
    /// [`Connection::try_fill`]: a `Pending` leaves the socket registered and
    /// the timed write polls again with a real waker, from where this left
    /// off (the same bytes, as `write_all` itself would retry them).
    fn write_now(&mut self, buf: &[u8]) -> io::Result<Option<usize>> {
        use std::task::Poll;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut stream = std::pin::Pin::new(&mut self.stream);
        let mut written = 0;
        while let Some(rest) = buf.get(written..).filter(|r| !r.is_empty()) {
            match stream.as_mut().poll_write(&mut cx, rest) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => written += n,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(Some(written)),
            }
        }
        match stream.poll_flush(&mut cx) {
            Poll::Ready(Ok(())) => Ok(None),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Ok(Some(written)),
        }
    }

    /// [`Connection::read_message`] bounded by the reply timeout: for every
    /// wait outside the CopyBoth stream. `waiting_for` names it in the error.
    pub async fn read_reply(&mut self, waiting_for: &str) -> Result<BackendMessage, PgError> {
        match tokio::time::timeout(self.reply_timeout, self.read_message()).await {
            Ok(r) => r,
            Err(_) => Err(PgError::at(
                self.target.clone(),
                PgErrorKind::ReplyTimeout {
                    waiting_for: waiting_for.to_string(),
                    secs: self.reply_timeout.as_secs(),
                },
            )),
        }
    }

    /// Reads the next message, handling ParameterStatus and NoticeResponse
    /// itself. Cancel-safe. Unbounded: the streaming loop times it itself.
    pub async fn read_message(&mut self) -> Result<BackendMessage, PgError> {
        loop {
            if let Some(m) = self.next_buffered()? {
                return Ok(m);
            }
            self.reserve_read_space();
            let n = self
                .stream
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|e| self.io_err(e))?;
            if n == 0 {
                return Err(PgError::at(self.target.clone(), PgErrorKind::Closed));
            }
            self.bytes_arrived = true;
        }
    }

    /// Whether any byte arrived from the server since the last call, whole
    /// message or not: a slow link that delivers a large message over longer
    /// than the receive timeout is alive all the same.
    pub fn take_bytes_arrived(&mut self) -> bool {
        std::mem::take(&mut self.bytes_arrived)
    }

    /// The next message if one can be had without waiting: from the read
    /// buffer, or from one non-blocking read of the socket. `Ok(None)` means
    /// the socket has nothing more right now (the batch that arrived together
    /// ends here).
    pub fn try_read_message(&mut self) -> Result<Option<BackendMessage>, PgError> {
        loop {
            if let Some(m) = self.next_buffered()? {
                return Ok(Some(m));
            }
            if !self.try_fill()? {
                return Ok(None);
            }
        }
    }

    /// The next whole message in the read buffer, after handling the
    /// ParameterStatus (remembered) and NoticeResponse (logged) before it.
    fn next_buffered(&mut self) -> Result<Option<BackendMessage>, PgError> {
        loop {
            match backend::parse_in(self.phase, &mut self.rbuf) {
                Ok(Some(BackendMessage::ParameterStatus { name, value })) => {
                    if self.phase == Phase::StartUp {
                        self.startup_parameters += 1;
                        if self.startup_parameters > backend::MAX_STARTUP_PARAMETERS {
                            return Err(PgError::at(
                                self.target.clone(),
                                PgErrorKind::Protocol {
                                    source: ProtocolError::TooManyParameters {
                                        max: backend::MAX_STARTUP_PARAMETERS,
                                    },
                                },
                            ));
                        }
                    }
                    self.params.insert(name, value);
                }
                Ok(Some(BackendMessage::Notice(n))) => {
                    // Bounded: a notice may be megabytes of server-chosen text.
                    tracing::info!("server: {}", truncated(&n.to_string(), 1000));
                }
                Ok(other) => return Ok(other),
                Err(source) => {
                    return Err(PgError::at(
                        self.target.clone(),
                        PgErrorKind::Protocol { source },
                    ))
                }
            }
        }
    }

    /// Room for at least one more large read. The buffer is bounded: messages
    /// are split off it and dropped once handled, so its memory is reused.
    fn reserve_read_space(&mut self) {
        if self.rbuf.capacity() - self.rbuf.len() < 64 * 1024 {
            self.rbuf.reserve(256 * 1024);
        }
    }

    /// One read from the socket if it does not have to wait. Polling with a
    /// no-op waker is sound: a `Pending` leaves the socket registered, and the
    /// next [`Connection::read_message`] polls again with a real waker. When
    /// the last read was short, tokio already knows the socket is drained and
    /// answers `Pending` without a system call. `Pending` can also mean that
    /// the task used up its tokio I/O budget: the batch then ends early,
    /// which is harmless.
    fn try_fill(&mut self) -> Result<bool, PgError> {
        self.reserve_read_space();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let read = std::pin::pin!(self.stream.read_buf(&mut self.rbuf));
        match std::future::Future::poll(read, &mut cx) {
            std::task::Poll::Pending => Ok(false),
            std::task::Poll::Ready(Ok(0)) => {
                Err(PgError::at(self.target.clone(), PgErrorKind::Closed))
            }
            std::task::Poll::Ready(Ok(_)) => {
                self.bytes_arrived = true;
                Ok(true)
            }
            std::task::Poll::Ready(Err(e)) => Err(self.io_err(e)),
        }
    }

    /// Runs a simple query and collects its result set (replication commands
    /// return at most one). An ErrorResponse becomes [`PgError::Server`] once the
    /// server is ready again.
    pub async fn simple_query(&mut self, sql: &str) -> Result<QueryResult, PgError> {
        self.send_query(sql).await?;
        let mut result = QueryResult::default();
        let mut error = None;
        loop {
            match self.read_reply(&reply_to(sql)).await? {
                BackendMessage::RowDescription { columns } => result.columns = columns,
                BackendMessage::DataRow { values } => result.rows.push(values),
                BackendMessage::CommandComplete { .. } | BackendMessage::EmptyQueryResponse => {}
                BackendMessage::Error(message) => error = Some(message),
                BackendMessage::ReadyForQuery => break,
                other => return Err(self.unexpected("running a command", &other)),
            }
        }
        match error {
            Some(message) => Err(PgError::server(self.target.clone(), message)),
            None => Ok(result),
        }
    }

    async fn send_query(&mut self, sql: &str) -> Result<(), PgError> {
        let mut b = BytesMut::new();
        frontend::query(sql, &mut b).map_err(|e| self.io_err(e))?;
        self.write_all(b).await
    }

    /// Sends START_REPLICATION (or any command that may enter CopyBoth) and
    /// reports whether the server entered CopyBoth or answered with a result set.
    pub async fn start_copy(&mut self, sql: &str) -> Result<CopyStart, PgError> {
        self.send_query(sql).await?;
        let mut result = QueryResult::default();
        let mut error = None;
        loop {
            match self.read_reply(&reply_to(sql)).await? {
                BackendMessage::CopyBothResponse if error.is_none() => {
                    return Ok(CopyStart::CopyBoth)
                }
                BackendMessage::RowDescription { columns } => result.columns = columns,
                BackendMessage::DataRow { values } => result.rows.push(values),
                BackendMessage::CommandComplete { .. } => {}
                BackendMessage::Error(message) => error = Some(message),
                BackendMessage::ReadyForQuery => break,
                other => return Err(self.unexpected("starting replication", &other)),
            }
        }
        match error {
            Some(message) => Err(PgError::server(self.target.clone(), message)),
            None => Ok(CopyStart::ResultSet(result)),
        }
    }

    /// Sends one CopyData message.
    pub async fn send_copy_data(&mut self, payload: &[u8]) -> Result<(), PgError> {
        // Framed in the connection's write buffer, reused: no allocation per
        // status update. (A send cancelled mid-way leaves an empty buffer
        // behind, which the next one grows.)
        let mut b = std::mem::take(&mut self.wbuf);
        b.clear();
        let result = match frontend::CopyData::new(payload) {
            Ok(message) => {
                message.write(&mut b);
                self.write_bytes(&b).await
            }
            Err(e) => Err(self.io_err(e)),
        };
        self.wbuf = b;
        result
    }

    /// Sends CopyDone.
    pub async fn send_copy_done(&mut self) -> Result<(), PgError> {
        let mut b = BytesMut::new();
        frontend::copy_done(&mut b);
        self.write_all(b).await
    }

    /// Sends Terminate and closes the connection (errors ignored: we are leaving).
    pub async fn close(mut self) {
        self.wbuf.clear();
        frontend::terminate(&mut self.wbuf);
        let b = std::mem::take(&mut self.wbuf);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.write_all(b)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conninfo::SslMode;
    use crate::pgwire::error::PgErrorKind;
    use std::sync::Arc;
    use std::time::Instant;
    use tokio::net::TcpListener;

    fn params(port: u16, connect_timeout: Option<Duration>) -> ConnParams {
        ConnParams {
            targets: vec![Target::Tcp {
                host: "127.0.0.1".into(),
                hostaddr: None,
                port,
            }],
            user: "walrcv".into(),
            password: None,
            passfile: None,
            dbname: "replication".into(),
            application_name: "walrcv".into(),
            options: None,
            connect_timeout,
            keepalives: false,
            keepalives_idle: None,
            keepalives_interval: None,
            keepalives_count: None,
            tls: crate::conninfo::TlsSettings {
                mode: SslMode::Disable,
                ..crate::conninfo::TlsSettings::prefer()
            },
            channel_binding: crate::conninfo::ChannelBinding::Prefer,
            require_auth: None,
            client_encoding: None,
            target_session_attrs: crate::conninfo::TargetSessionAttrs::Any,
            load_balance_hosts: crate::conninfo::LoadBalanceHosts::Disable,
        }
    }

    /// A server that accepts, reads the start-up packet, sends `greeting`,
    /// then reads whatever comes and never answers.
    async fn silent_server(greeting: &'static [u8]) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            s.write_all(greeting).await.unwrap();
            while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        });
        port
    }

    const AUTH_OK_READY: &[u8] = b"R\0\0\0\x08\0\0\0\0Z\0\0\0\x05I";

    /// A server that accepts, reads the start-up packet, answers
    /// AuthenticationOk and ReadyForQuery, then returns everything the client
    /// sends until it closes.
    async fn recording_server() -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut len = [0u8; 4];
            s.read_exact(&mut len).await.unwrap();
            let mut startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
            s.read_exact(&mut startup).await.unwrap();
            s.write_all(AUTH_OK_READY).await.unwrap();
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got).await;
            got
        });
        (port, server)
    }

    fn copy_data_frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![b'd'];
        f.extend_from_slice(&(payload.len() as u32 + 4).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[tokio::test]
    async fn copy_data_small_and_larger_than_the_socket_takes_at_once_arrives_whole() {
        let (port, server) = recording_server().await;
        let mut conn = Connection::connect(&params(port, None), true, Duration::from_secs(30))
            .await
            .unwrap();
        // A status update's size (written at once, no timer), then 8 MiB:
        // more than the socket buffers hold, so the write resumes where the
        // non-blocking attempt stopped, then the small one again (the reused
        // buffer must not keep bytes of the large one).
        let small: Vec<u8> = (0..34u8).collect();
        let large: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
        conn.send_copy_data(&small).await.unwrap();
        conn.send_copy_data(&large).await.unwrap();
        conn.send_copy_data(&small).await.unwrap();
        conn.close().await;
        let got = server.await.unwrap();
        let mut want = copy_data_frame(&small);
        want.extend(copy_data_frame(&large));
        want.extend(copy_data_frame(&small));
        want.extend_from_slice(b"X\0\0\0\x04");
        assert_eq!(got.len(), want.len());
        assert!(got == want, "the bytes sent differ from the frames");
    }

    #[tokio::test]
    async fn a_server_that_stops_reading_times_the_write_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            s.write_all(AUTH_OK_READY).await.unwrap();
            // Holds the socket open without reading until the test ends.
            let _ = done_rx.await;
        });
        let mut conn = Connection::connect(&params(port, None), true, Duration::from_millis(300))
            .await
            .unwrap();
        let huge = vec![0u8; 64 << 20];
        let t = Instant::now();
        let e = conn.send_copy_data(&huge).await.unwrap_err();
        assert!(
            matches!(e.kind(), Some(PgErrorKind::WriteTimeout { .. })),
            "{e}"
        );
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        let _ = done_tx.send(());
    }

    #[tokio::test]
    async fn a_silent_start_up_times_out_naming_the_wait() {
        let port = silent_server(b"").await;
        let t = Instant::now();
        let e = Connection::connect(&params(port, None), true, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(
            matches!(e.kind(), Some(PgErrorKind::ReplyTimeout { waiting_for, .. }) if waiting_for == "start-up and authentication"),
            "{e}"
        );
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }

    #[tokio::test]
    async fn connect_timeout_bounds_the_whole_attempt_as_in_libpq() {
        let port = silent_server(b"").await;
        let limit = Some(Duration::from_millis(300));
        let e = Connection::connect(&params(port, limit), true, Duration::from_secs(60))
            .await
            .unwrap_err();
        assert!(
            matches!(e.kind(), Some(PgErrorKind::ConnectTimeout { .. })),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_command_without_a_reply_times_out_naming_the_wait() {
        let port = silent_server(AUTH_OK_READY).await;
        let mut conn = Connection::connect(&params(port, None), true, Duration::from_millis(300))
            .await
            .unwrap();
        let e = conn.simple_query("IDENTIFY_SYSTEM").await.unwrap_err();
        assert!(
            matches!(e.kind(), Some(PgErrorKind::ReplyTimeout { waiting_for, .. }) if waiting_for == "the reply to IDENTIFY_SYSTEM"),
            "{e}"
        );
        assert!(
            e.to_string().ends_with(
                "no reply from the server within 0 s while waiting for the reply to IDENTIFY_SYSTEM"
            ),
            "{e}"
        );
    }

    #[tokio::test]
    async fn an_unexpected_huge_message_is_summarised_not_dumped() {
        // A 1 MiB CopyData where a command's reply is expected.
        static REPLY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let reply = REPLY.get_or_init(|| {
            let mut m = AUTH_OK_READY.to_vec();
            m.push(b'd');
            m.extend_from_slice(&((1u32 << 20) + 4).to_be_bytes());
            m.extend(std::iter::repeat_n(b'w', 1 << 20));
            m
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            s.write_all(&reply[..AUTH_OK_READY.len()]).await.unwrap();
            let _ = s.read(&mut buf).await;
            s.write_all(&reply[AUTH_OK_READY.len()..]).await.unwrap();
            while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        });
        let mut conn = Connection::connect(&params(port, None), true, Duration::from_secs(10))
            .await
            .unwrap();
        let e = conn.simple_query("IDENTIFY_SYSTEM").await.unwrap_err();
        let text = e.to_string();
        assert!(text.contains("CopyData (1048576 bytes: 7777"), "{text}");
        assert!(text.len() < 300, "{} bytes", text.len());
    }

    /// A TLS-capable fake server: answers SSLRequest with `answer`, then (on
    /// 'S') runs an OpenSSL handshake with a fresh self-signed certificate for
    /// `localhost`, and accepts the start-up with AuthenticationOk. Returns
    /// the port and the certificate (DER).
    async fn tls_server(answer: u8) -> (u16, Vec<u8>) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert_der = certified.cert.der().to_vec();
        let mut acceptor =
            openssl::ssl::SslAcceptor::mozilla_intermediate_v5(openssl::ssl::SslMethod::tls())
                .unwrap();
        acceptor
            .set_private_key(
                &openssl::pkey::PKey::private_key_from_der(&certified.signing_key.serialize_der())
                    .unwrap(),
            )
            .unwrap();
        acceptor
            .set_certificate(&openssl::x509::X509::from_der(&cert_der).unwrap())
            .unwrap();
        let acceptor = acceptor.build();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 8];
            s.read_exact(&mut request).await.unwrap();
            assert_eq!(request, tls::SSL_REQUEST);
            s.write_all(&[answer]).await.unwrap();
            let mut buf = [0u8; 1024];
            if answer != b'S' {
                if s.read(&mut buf).await.is_ok_and(|n| n > 0) {
                    let _ = s.write_all(AUTH_OK_READY).await;
                }
                while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                return;
            }
            let ssl = openssl::ssl::Ssl::new(acceptor.context()).unwrap();
            let mut s = tokio_openssl::SslStream::new(ssl, s).unwrap();
            std::pin::Pin::new(&mut s).accept().await.unwrap();
            let _ = s.read(&mut buf).await;
            s.write_all(AUTH_OK_READY).await.unwrap();
            s.flush().await.unwrap();
            while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        });
        (port, cert_der)
    }

    fn tls_params(port: u16, mode: SslMode) -> ConnParams {
        let mut p = params(port, None);
        p.targets = vec![Target::Tcp {
            host: "localhost".into(),
            hostaddr: Some("127.0.0.1".into()),
            port,
        }];
        p.tls.mode = mode;
        p
    }

    #[tokio::test]
    async fn the_server_certificate_is_exposed_for_channel_binding() {
        let (port, cert) = tls_server(b'S').await;
        let conn = Connection::connect(
            &tls_params(port, SslMode::Require),
            true,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert!(conn.is_tls());
        assert_eq!(conn.tls_server_certificate(), Some(cert.as_slice()));
    }

    #[tokio::test]
    async fn prefer_goes_on_in_plain_text_when_the_server_says_no() {
        let (port, _) = tls_server(b'N').await;
        let conn = Connection::connect(
            &tls_params(port, SslMode::Prefer),
            true,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert!(!conn.is_tls());
        assert_eq!(conn.tls_server_certificate(), None);
    }

    #[tokio::test]
    async fn require_never_falls_back_to_plain_text() {
        for answer in [b'N', b'E'] {
            let (port, _) = tls_server(answer).await;
            let e = Connection::connect(
                &tls_params(port, SslMode::Require),
                true,
                Duration::from_secs(10),
            )
            .await
            .unwrap_err();
            assert!(matches!(e.kind(), Some(PgErrorKind::Tls { .. })), "{e}");
        }
    }

    #[tokio::test]
    async fn verify_full_refuses_a_certificate_it_cannot_chain() {
        let (port, _) = tls_server(b'S').await;
        let dir = tempfile::tempdir().unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let root = dir.path().join("root.crt");
        std::fs::write(&root, other.cert.pem()).unwrap();
        let mut p = tls_params(port, SslMode::VerifyFull);
        p.tls.root_cert = Some(crate::conninfo::RootCerts::File(root));
        let e = Connection::connect(&p, true, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e.kind(),
                Some(PgErrorKind::Tls {
                    source: TlsError::Handshake(_),
                })
            ),
            "{e}"
        );
    }

    /// Settings whose files OpenSSL cannot use: a root "certificate" that is
    /// not one, a client certificate without its key. Loading either fails.
    fn unusable_tls_files(dir: &std::path::Path, mode: SslMode, port: u16) -> ConnParams {
        let root = dir.join("root.crt");
        std::fs::write(&root, "not a certificate\n").unwrap();
        let mut p = tls_params(port, mode);
        p.tls.root_cert = Some(crate::conninfo::RootCerts::File(root));
        p.tls.cert = Some(dir.join("client.crt"));
        p.tls.key = Some(dir.join("client.key"));
        std::fs::write(dir.join("client.crt"), "not a certificate either\n").unwrap();
        p
    }

    #[tokio::test]
    async fn tls_files_are_not_read_when_the_server_answers_no() {
        let dir = tempfile::tempdir().unwrap();
        // prefer: plain text on the same connection, no error about files
        // that libpq would never have opened.
        let (port, _) = tls_server(b'N').await;
        let p = unusable_tls_files(dir.path(), SslMode::Prefer, port);
        let conn = Connection::connect(&p, true, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(!conn.is_tls());
        // require and verify-ca: libpq's "server does not support SSL", not
        // the files (verify-ca even without any root file).
        for (mode, root) in [(SslMode::Require, true), (SslMode::VerifyCa, false)] {
            let (port, _) = tls_server(b'N').await;
            let mut p = unusable_tls_files(dir.path(), mode, port);
            if !root {
                p.tls.root_cert = Some(crate::conninfo::RootCerts::File(dir.path().join("none")));
            }
            let e = Connection::connect(&p, true, Duration::from_secs(10))
                .await
                .unwrap_err();
            assert!(
                matches!(
                    e.kind(),
                    Some(PgErrorKind::Tls {
                        source: TlsError::ServerRefusedTls,
                    })
                ),
                "{mode:?}: {e}"
            );
        }
    }

    #[tokio::test]
    async fn tls_files_are_read_once_the_server_answers_yes() {
        let dir = tempfile::tempdir().unwrap();
        let (port, _) = tls_server(b'S').await;
        let p = unusable_tls_files(dir.path(), SslMode::Require, port);
        let e = Connection::connect(&p, true, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e.kind(),
                Some(PgErrorKind::Tls {
                    source: TlsError::Load { .. },
                })
            ),
            "{e}"
        );
        assert!(e.to_string().contains("root certificate file"), "{e}");
    }

    /// A server that accepts any number of connections and reports
    /// `in_hot_standby` and `default_transaction_read_only` at start-up, as
    /// servers 14+ do. Counts the connections it accepted.
    async fn role_server(in_hot_standby: &'static str) -> (u16, Arc<std::sync::atomic::AtomicU32>) {
        fn parameter_status(name: &str, value: &str) -> Vec<u8> {
            let body = [name.as_bytes(), b"\0", value.as_bytes(), b"\0"].concat();
            let mut m = vec![b'S'];
            m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
            m.extend_from_slice(&body);
            m
        }
        let mut greeting = b"R\0\0\0\x08\0\0\0\0".to_vec();
        greeting.extend(parameter_status("in_hot_standby", in_hot_standby));
        greeting.extend(parameter_status("default_transaction_read_only", "off"));
        greeting.extend_from_slice(b"Z\0\0\0\x05I");
        let accepted = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = accepted.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let greeting = greeting.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(&greeting).await;
                    while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                });
            }
        });
        (port, accepted)
    }

    fn hosts(ports: &[u16], attrs: TargetSessionAttrs) -> ConnParams {
        let mut p = params(ports[0], None);
        p.targets = ports
            .iter()
            .map(|&port| Target::Tcp {
                host: "127.0.0.1".into(),
                hostaddr: None,
                port,
            })
            .collect();
        p.target_session_attrs = attrs;
        p
    }

    fn port_of(conn: &Connection) -> u16 {
        conn.target().rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[tokio::test]
    async fn the_first_host_of_the_wanted_role_is_chosen() {
        use TargetSessionAttrs as A;
        let (standby, _) = role_server("on").await;
        let (primary, _) = role_server("off").await;
        let t = Duration::from_secs(10);
        for (attrs, want) in [
            (A::Any, standby),
            (A::Primary, primary),
            (A::ReadWrite, primary),
            (A::Standby, standby),
            (A::ReadOnly, standby),
            (A::PreferStandby, standby),
        ] {
            let conn = Connection::connect(&hosts(&[standby, primary], attrs), true, t)
                .await
                .unwrap();
            assert_eq!(port_of(&conn), want, "{attrs}");
        }
    }

    #[tokio::test]
    async fn no_fitting_host_names_each_host_and_why_and_is_not_final() {
        let (standby, _) = role_server("on").await;
        let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_port = dead.local_addr().unwrap().port();
        drop(dead);
        let p = hosts(&[dead_port, standby], TargetSessionAttrs::Primary);
        let e = Connection::connect(&p, true, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(matches!(e, PgError::NoSuitableHost { .. }), "{e}");
        assert!(!e.is_auth_failure(), "retryable: {e}");
        let text = e.to_string();
        assert!(
            text.starts_with("no server fits target_session_attrs=primary: "),
            "{text}"
        );
        assert!(text.contains(&format!("port {dead_port}")), "{text}");
        assert!(
            text.contains(&format!(
                "connection to server at \"127.0.0.1\", port {standby} failed: server is in hot standby mode"
            )),
            "{text}"
        );
        // Every host a connection error: that error, as before.
        let p = hosts(&[dead_port], TargetSessionAttrs::Primary);
        let e = Connection::connect(&p, true, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(matches!(e.kind(), Some(PgErrorKind::Connect { .. })), "{e}");
    }

    #[tokio::test]
    async fn prefer_standby_falls_back_to_a_primary_on_a_second_pass() {
        let (primary, accepted) = role_server("off").await;
        let p = hosts(&[primary], TargetSessionAttrs::PreferStandby);
        let conn = Connection::connect(&p, true, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(port_of(&conn), primary);
        // Refused on the first pass, accepted on the second.
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
        let e = Connection::connect(
            &hosts(&[primary], TargetSessionAttrs::Standby),
            true,
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
        assert!(
            e.to_string().contains("server is not in hot standby mode"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn random_load_balancing_spreads_connections_over_the_hosts() {
        let (a, a_count) = role_server("off").await;
        let (b, b_count) = role_server("off").await;
        let mut p = hosts(&[a, b], TargetSessionAttrs::Any);
        p.load_balance_hosts = LoadBalanceHosts::Random;
        for _ in 0..40 {
            let conn = Connection::connect(&p, true, Duration::from_secs(10))
                .await
                .unwrap();
            conn.close().await;
        }
        let (a_n, b_n) = (
            a_count.load(std::sync::atomic::Ordering::SeqCst),
            b_count.load(std::sync::atomic::Ordering::SeqCst),
        );
        assert_eq!(a_n + b_n, 40);
        // Each side is chosen with probability 1/2: 40 draws give 5..35 except
        // with probability about 1e-6.
        assert!((5..=35).contains(&a_n), "{a_n} / {b_n}");
    }

    #[tokio::test]
    async fn random_load_balancing_resolves_and_tries_each_address() {
        let (port, accepted) = role_server("off").await;
        let mut p = hosts(&[port], TargetSessionAttrs::Any);
        p.targets = vec![Target::Tcp {
            host: "localhost".into(),
            hostaddr: None,
            port,
        }];
        p.load_balance_hosts = LoadBalanceHosts::Random;
        // localhost may also resolve to ::1, where nothing listens: every
        // connection still reaches the server on 127.0.0.1.
        for _ in 0..5 {
            Connection::connect(&p, true, Duration::from_secs(10))
                .await
                .unwrap()
                .close()
                .await;
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 5);
        let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
        p.targets = vec![Target::Tcp {
            host: "127.0.0.1".into(),
            hostaddr: None,
            port: dead.local_addr().unwrap().port(),
        }];
        drop(dead);
        let e = Connection::connect(&p, true, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(matches!(e.kind(), Some(PgErrorKind::Connect { .. })), "{e}");
    }

    #[test]
    fn server_versions() {
        assert_eq!(
            parse_server_version("15.18 (Debian 15.18-1.pgdg120+1)"),
            Ok(150018)
        );
        assert_eq!(parse_server_version("13.0"), Ok(130000));
        assert_eq!(parse_server_version("17devel"), Ok(170000));
        assert_eq!(parse_server_version("18rc1"), Ok(180000));
        assert_eq!(parse_server_version("16beta2"), Ok(160000));
        assert_eq!(parse_server_version("16.9999"), Ok(169999));
    }

    #[test]
    fn hostile_server_versions_are_errors_not_overflows() {
        for v in [
            "429497.0",
            "4294967295.1",
            "4294967296",
            "99999999999999999999999.1",
            "15.10000",
            "15.4294967296",
            "15.99999999999999999999",
            "",
            "devel",
            ".15",
        ] {
            let e = parse_server_version(v).expect_err(v);
            assert!(!e.to_string().is_empty());
        }
        // The largest major that fits, and one more.
        assert_eq!(parse_server_version("429496.7295"), Ok(u32::MAX));
        assert!(parse_server_version("429496.7296").is_err());
        let huge = "9".repeat(1 << 20);
        let e = parse_server_version(&huge).unwrap_err();
        assert!(e.to_string().len() < 120, "the value is cut in the message");
    }
}
