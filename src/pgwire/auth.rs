//! Client authentication as libpq does it, as a sans-IO state machine: each
//! backend authentication request in, the frontend message to send (or a
//! decision, or an error) out.
//!
//! What it enforces, before anything is sent:
//!
//! - `require_auth` (libpq 16+, `check_expected_areq` in fe-auth.c): a request
//!   for a method the list does not allow ends the exchange before a password
//!   leaves the client; AuthenticationOk is accepted without an exchange only
//!   when `none` is allowed.
//! - `channel_binding=require`: only SASL requests are answered, and
//!   AuthenticationOk is accepted only after a SCRAM-SHA-256-PLUS exchange
//!   whose server signature was verified.
//! - SCRAM authenticates both ways: AuthenticationOk after a SASL exchange is
//!   accepted only once the server's final message (its signature, proof that
//!   it knows the password) was verified. libpq lets this pass unless
//!   `require_auth` or `channel_binding=require` is set; walrcv never does.
//!
//! Mechanism choice follows libpq's `pg_SASL_init` (fe-auth.c), and the gs2
//! header its `build_client_first_message` (fe-auth-scram.c): `p` with
//! SCRAM-SHA-256-PLUS, `y` over TLS when the client could bind but the server
//! offered no PLUS, `n` otherwise. The SCRAM maths are postgres-protocol's.
//!
//! - The SCRAM iteration count is the server's choice, made before it has
//!   proved anything, and the key derivation runs on the connection's thread:
//!   a count above [`MAX_SCRAM_ITERATIONS`] is refused before any derivation
//!   (libpq has no limit; 4294967295 would stall walrcv for hours).
//!
//! Nothing secret is logged: the password, the messages that carry it or a
//! proof derived from it are never formatted (see [`OutgoingMessage`]'s
//! `Debug`).

use std::fmt;

use bytes::BytesMut;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::frontend;

use super::backend::{truncated, AuthRequest};
use super::cert_hash::{self, CertHashError};
use crate::conninfo::{AuthMethod, ChannelBinding, RequireAuth};

/// The most SCRAM iterations walrcv derives a key with: postgres-protocol's
/// own cap (0.6.12+, the version Cargo.toml requires), checked here first for
/// a message that names the count. About 40 ms of PBKDF2 on one core;
/// PostgreSQL's default (`scram_iterations`, 16+) is 4096.
pub const MAX_SCRAM_ITERATIONS: u64 = 100_000;

/// Why authentication ended on the client's side. The messages are libpq's
/// where libpq has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication method requirement \"{required}\" failed: {reason}")]
    RequirementFailed {
        /// `require_auth` as written (e.g. `scram-sha-256` or `!password,!md5`).
        required: String,
        reason: &'static str,
    },
    #[error(
        "channel binding required but not supported by server's authentication request ({request})"
    )]
    ChannelBindingRequestUnsupported { request: &'static str },
    #[error("channel binding required, but server authenticated client without channel binding")]
    ChannelBindingNotUsed,
    #[error("channel binding is required, but server did not offer an authentication method that supports channel binding (offered: {offered})")]
    ChannelBindingNotOffered { offered: String },
    #[error("server offered SCRAM-SHA-256-PLUS authentication over a non-SSL connection")]
    PlusWithoutTls,
    #[error(
        "none of the server's SASL authentication mechanisms are supported (offered: {offered})"
    )]
    NoSupportedMechanism { offered: String },
    #[error("the server asks for a password but none was given")]
    NoPassword,
    #[error("channel binding: {0}")]
    ChannelBindingData(#[from] CertHashError),
    #[error("invalid SCRAM server-first message: {0}")]
    ScramServerFirst(String),
    #[error("the server asks for {count} SCRAM iterations, more than walrcv accepts ({max}; PostgreSQL's default is 4096, see scram_iterations)")]
    ScramIterations { count: u64, max: u64 },
    #[error("incorrect server signature: the server does not know the password (or a man in the middle answered)")]
    WrongServerSignature,
    #[error("invalid SCRAM server-final message: {0}")]
    ScramServerFinal(String),
    #[error("server sent AuthenticationOk before the SASL exchange was completed: it never proved that it knows the password")]
    SaslIncomplete,
    #[error("unexpected {got} from the server {when}")]
    OutOfOrder {
        got: &'static str,
        when: &'static str,
    },
    #[error("{method} requested by the server is not supported by walrcv")]
    Unsupported { method: &'static str },
    #[error("could not encode the {what} message: {reason}")]
    Encode { what: &'static str, reason: String },
}

/// What the exchange needs besides the server's requests.
#[derive(Clone)]
pub struct AuthSettings {
    pub user: String,
    pub channel_binding: ChannelBinding,
    /// `None`: every method accepted.
    pub require_auth: Option<RequireAuth>,
    /// The server's end-entity certificate (DER) when the connection is TLS;
    /// `None` over plain text.
    pub tls_server_certificate: Option<Vec<u8>>,
}

impl fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthSettings")
            .field("user", &self.user)
            .field("channel_binding", &self.channel_binding)
            .field("require_auth", &self.require_auth)
            .field("tls", &self.tls_server_certificate.is_some())
            .finish()
    }
}

/// A complete frontend message to write. It may carry a password, an MD5
/// hash of one or a SCRAM proof: its `Debug` shows only what it is.
pub struct OutgoingMessage {
    kind: &'static str,
    bytes: BytesMut,
}

impl OutgoingMessage {
    /// "PasswordMessage", "SASLInitialResponse", "SASLResponse".
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    pub fn into_bytes(self) -> BytesMut {
        self.bytes
    }
}

impl fmt::Debug for OutgoingMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} bytes)", self.kind, self.bytes.len())
    }
}

/// What to do after one authentication request.
#[derive(Debug)]
pub enum Step {
    /// Write this message, then wait for the next request.
    Send(OutgoingMessage),
    /// Nothing to send (the server signature was verified); wait for
    /// AuthenticationOk.
    Wait,
    /// AuthenticationOk accepted: the client is authenticated (and, after
    /// SCRAM, so is the server).
    Authenticated,
}

/// The SASL mechanisms walrcv speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mechanism {
    ScramSha256,
    ScramSha256Plus,
}

impl Mechanism {
    fn name(self) -> &'static str {
        match self {
            Mechanism::ScramSha256 => sasl::SCRAM_SHA_256,
            Mechanism::ScramSha256Plus => sasl::SCRAM_SHA_256_PLUS,
        }
    }
}

/// How the server authenticated us: a `require_auth` method
/// ([`AuthMethod`]), with SCRAM's channel binding told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authenticated {
    None,
    Password,
    Md5,
    ScramSha256,
    ScramSha256Plus,
}

impl Authenticated {
    pub fn name(self) -> &'static str {
        match self {
            Authenticated::None => "none",
            Authenticated::Password => "password",
            Authenticated::Md5 => "md5",
            Authenticated::ScramSha256 => sasl::SCRAM_SHA_256,
            Authenticated::ScramSha256Plus => sasl::SCRAM_SHA_256_PLUS,
        }
    }
}

impl From<Mechanism> for Authenticated {
    fn from(mechanism: Mechanism) -> Authenticated {
        match mechanism {
            Mechanism::ScramSha256 => Authenticated::ScramSha256,
            Mechanism::ScramSha256Plus => Authenticated::ScramSha256Plus,
        }
    }
}

enum State {
    /// No request answered yet.
    Start,
    /// A cleartext or MD5 password was sent.
    PasswordSent { method: Authenticated },
    /// SASLInitialResponse sent; the server-first message comes next.
    ScramFirstSent {
        scram: Box<sasl::ScramSha256>,
        mechanism: Mechanism,
    },
    /// SASLResponse (with the proof) sent; the server signature comes next.
    ScramFinalSent {
        scram: Box<sasl::ScramSha256>,
        mechanism: Mechanism,
    },
    /// The server signature was verified; AuthenticationOk comes next.
    ScramVerified { mechanism: Mechanism },
    /// AuthenticationOk accepted, after this method.
    Done { method: Authenticated },
    /// An error ended the exchange; every further request is refused.
    Failed,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Start => "start",
            State::PasswordSent { .. } => "password sent",
            State::ScramFirstSent { .. } => "SCRAM client-first sent",
            State::ScramFinalSent { .. } => "SCRAM client-final sent",
            State::ScramVerified { .. } => "SCRAM server signature verified",
            State::Done { .. } => "authenticated",
            State::Failed => "failed",
        }
    }

    /// libpq's `client_finished_auth`: the client did its whole part.
    fn client_finished(&self) -> bool {
        matches!(
            self,
            State::PasswordSent { .. } | State::ScramVerified { .. } | State::Done { .. }
        )
    }

    /// A completed, verified SCRAM-SHA-256-PLUS exchange.
    fn channel_bound(&self) -> bool {
        matches!(
            self,
            State::ScramVerified {
                mechanism: Mechanism::ScramSha256Plus
            }
        )
    }
}

/// The client side of one authentication exchange.
pub struct Authenticator {
    settings: AuthSettings,
    state: State,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("settings", &self.settings)
            .field("state", &self.state.name())
            .finish()
    }
}

impl Authenticator {
    pub fn new(settings: AuthSettings) -> Authenticator {
        Authenticator {
            settings,
            state: State::Start,
        }
    }

    /// Whether AuthenticationOk was accepted.
    pub fn is_authenticated(&self) -> bool {
        self.method().is_some()
    }

    /// The method the server authenticated us with, once it accepted us.
    pub fn method(&self) -> Option<Authenticated> {
        match self.state {
            State::Done { method } => Some(method),
            _ => None,
        }
    }

    /// Answers one authentication request. `password` is asked for only
    /// when a password is about to be used, after every check that could
    /// refuse the request. After an error, every request is refused.
    pub fn step(
        &mut self,
        request: &AuthRequest,
        password: impl FnOnce() -> Option<String>,
    ) -> Result<Step, AuthError> {
        let state = std::mem::replace(&mut self.state, State::Failed);
        if let State::Failed = state {
            return Err(AuthError::OutOfOrder {
                got: request_name(request),
                when: "after authentication failed",
            });
        }
        self.check_expected(request, &state)?;
        let (next, step) = self.advance(state, request, password)?;
        self.state = next;
        Ok(step)
    }

    fn advance(
        &self,
        state: State,
        request: &AuthRequest,
        password: impl FnOnce() -> Option<String>,
    ) -> Result<(State, Step), AuthError> {
        match request {
            AuthRequest::Ok => accept_ok(state),
            AuthRequest::Cleartext => self.send_password(state, None, password),
            AuthRequest::Md5 { salt } => self.send_password(state, Some(*salt), password),
            AuthRequest::Sasl { mechanisms } => self.start_sasl(state, mechanisms, password),
            AuthRequest::SaslContinue(data) => continue_scram(state, data),
            AuthRequest::SaslFinal(data) => finish_scram(state, data),
            AuthRequest::Unsupported(code) => Err(AuthError::Unsupported {
                method: unsupported_method_name(*code),
            }),
        }
    }

    /// libpq's `check_expected_areq` (fe-auth.c): `require_auth`, then
    /// `channel_binding=require`, each judged before the request is answered.
    fn check_expected(&self, request: &AuthRequest, state: &State) -> Result<(), AuthError> {
        if let Some(required) = &self.settings.require_auth {
            if !require_auth_allows(required, request, state) {
                return Err(AuthError::RequirementFailed {
                    required: require_auth_text(required),
                    reason: refusal_reason(request),
                });
            }
        }
        if self.settings.channel_binding == ChannelBinding::Require {
            match request {
                AuthRequest::Sasl { .. }
                | AuthRequest::SaslContinue(_)
                | AuthRequest::SaslFinal(_) => {}
                AuthRequest::Ok if state.channel_bound() => {}
                AuthRequest::Ok => return Err(AuthError::ChannelBindingNotUsed),
                other => {
                    return Err(AuthError::ChannelBindingRequestUnsupported {
                        request: request_name(other),
                    })
                }
            }
        }
        Ok(())
    }

    /// AuthenticationCleartextPassword (`salt` None) or AuthenticationMD5Password.
    fn send_password(
        &self,
        state: State,
        salt: Option<[u8; 4]>,
        password: impl FnOnce() -> Option<String>,
    ) -> Result<(State, Step), AuthError> {
        let got = if salt.is_some() {
            "AuthenticationMD5Password"
        } else {
            "AuthenticationCleartextPassword"
        };
        expect_start(&state, got)?;
        let password = password().ok_or(AuthError::NoPassword)?;
        let sent = match salt {
            Some(salt) => md5_hash(self.settings.user.as_bytes(), password.as_bytes(), salt),
            None => password,
        };
        tracing::debug!("authentication: sending the {got} answer");
        let mut bytes = BytesMut::new();
        frontend::password_message(sent.as_bytes(), &mut bytes)
            .map_err(|e| encode_error("PasswordMessage", e))?;
        let message = OutgoingMessage {
            kind: "PasswordMessage",
            bytes,
        };
        let method = if salt.is_some() {
            Authenticated::Md5
        } else {
            Authenticated::Password
        };
        Ok((State::PasswordSent { method }, Step::Send(message)))
    }

    /// AuthenticationSASL: choose the mechanism and the gs2 header, send the
    /// client-first message.
    fn start_sasl(
        &self,
        state: State,
        mechanisms: &[String],
        password: impl FnOnce() -> Option<String>,
    ) -> Result<(State, Step), AuthError> {
        expect_start(&state, "AuthenticationSASL")?;
        let tls = self.settings.tls_server_certificate.as_deref();
        let mechanism = choose_mechanism(mechanisms, tls.is_some(), self.settings.channel_binding)?;
        let binding = match (mechanism, tls) {
            (Mechanism::ScramSha256Plus, Some(cert)) => {
                sasl::ChannelBinding::tls_server_end_point(cert_hash::tls_server_end_point(cert)?)
            }
            // The client could bind but the server offered no PLUS: "y" lets
            // the server detect a downgrade by a man in the middle.
            (_, Some(_)) if self.settings.channel_binding != ChannelBinding::Disable => {
                sasl::ChannelBinding::unrequested()
            }
            _ => sasl::ChannelBinding::unsupported(),
        };
        let password = password().ok_or(AuthError::NoPassword)?;
        let scram = Box::new(sasl::ScramSha256::new(password.as_bytes(), binding));
        tracing::debug!("authentication: {} chosen", mechanism.name());
        let mut bytes = BytesMut::new();
        frontend::sasl_initial_response(mechanism.name(), scram.message(), &mut bytes)
            .map_err(|e| encode_error("SASLInitialResponse", e))?;
        let message = OutgoingMessage {
            kind: "SASLInitialResponse",
            bytes,
        };
        Ok((
            State::ScramFirstSent { scram, mechanism },
            Step::Send(message),
        ))
    }
}

/// AuthenticationOk: accepted after nothing (trust), a password, or a
/// verified SCRAM exchange; never in the middle of one.
fn accept_ok(state: State) -> Result<(State, Step), AuthError> {
    match state {
        State::Start | State::PasswordSent { .. } | State::ScramVerified { .. } => {
            tracing::debug!("authentication: AuthenticationOk accepted");
            let method = match state {
                State::PasswordSent { method } => method,
                State::ScramVerified { mechanism } => mechanism.into(),
                _ => Authenticated::None,
            };
            Ok((State::Done { method }, Step::Authenticated))
        }
        State::ScramFirstSent { .. } | State::ScramFinalSent { .. } => {
            Err(AuthError::SaslIncomplete)
        }
        State::Done { .. } | State::Failed => Err(AuthError::OutOfOrder {
            got: "AuthenticationOk",
            when: "after authentication completed",
        }),
    }
}

/// AuthenticationSASLContinue: the server-first message; send the proof.
fn continue_scram(state: State, data: &[u8]) -> Result<(State, Step), AuthError> {
    let State::ScramFirstSent {
        mut scram,
        mechanism,
    } = state
    else {
        return Err(AuthError::OutOfOrder {
            got: "AuthenticationSASLContinue",
            when: "without a SASL exchange awaiting it",
        });
    };
    check_iteration_count(data)?;
    scram
        .update(data)
        .map_err(|e| AuthError::ScramServerFirst(e.to_string()))?;
    let mut bytes = BytesMut::new();
    frontend::sasl_response(scram.message(), &mut bytes)
        .map_err(|e| encode_error("SASLResponse", e))?;
    let message = OutgoingMessage {
        kind: "SASLResponse",
        bytes,
    };
    Ok((
        State::ScramFinalSent { scram, mechanism },
        Step::Send(message),
    ))
}

/// Refuses a server-first message (`r=...,s=...,i=N`) whose iteration count
/// is above [`MAX_SCRAM_ITERATIONS`]. A missing or malformed count is left to
/// postgres-protocol's parser, which refuses it.
fn check_iteration_count(server_first: &[u8]) -> Result<(), AuthError> {
    let count = server_first
        .split(|&b| b == b',')
        .find_map(|attr| attr.strip_prefix(b"i="))
        .and_then(|digits| std::str::from_utf8(digits).ok()?.parse::<u64>().ok());
    match count {
        Some(count) if count > MAX_SCRAM_ITERATIONS => Err(AuthError::ScramIterations {
            count,
            max: MAX_SCRAM_ITERATIONS,
        }),
        _ => Ok(()),
    }
}

/// AuthenticationSASLFinal: verify the server signature.
fn finish_scram(state: State, data: &[u8]) -> Result<(State, Step), AuthError> {
    let State::ScramFinalSent {
        mut scram,
        mechanism,
    } = state
    else {
        // libpq: "AuthenticationSASLFinal received from server, but SASL
        // authentication was not completed".
        return Err(AuthError::OutOfOrder {
            got: "AuthenticationSASLFinal",
            when: "before the SASL exchange reached its last step",
        });
    };
    scram.finish(data).map_err(|e| {
        // postgres-protocol's wording for a signature that does not match.
        if e.to_string() == "SCRAM verification error" {
            AuthError::WrongServerSignature
        } else {
            AuthError::ScramServerFinal(e.to_string())
        }
    })?;
    tracing::debug!("authentication: server signature verified");
    Ok((State::ScramVerified { mechanism }, Step::Wait))
}

fn expect_start(state: &State, got: &'static str) -> Result<(), AuthError> {
    match state {
        State::Start => Ok(()),
        _ => Err(AuthError::OutOfOrder {
            got,
            when: "after an authentication request was already answered",
        }),
    }
}

/// libpq's `pg_SASL_init` choice: SCRAM-SHA-256-PLUS over TLS unless
/// `channel_binding=disable`; a PLUS offer over plain text is refused (the
/// server would refuse a client that could bind and did not: TLS was
/// probably stripped on the way).
fn choose_mechanism(
    offered: &[String],
    tls: bool,
    channel_binding: ChannelBinding,
) -> Result<Mechanism, AuthError> {
    let mut chosen = None;
    for name in offered {
        if name == sasl::SCRAM_SHA_256_PLUS {
            if !tls {
                return Err(AuthError::PlusWithoutTls);
            }
            if channel_binding != ChannelBinding::Disable {
                chosen = Some(Mechanism::ScramSha256Plus);
            }
        } else if name == sasl::SCRAM_SHA_256 && chosen.is_none() {
            chosen = Some(Mechanism::ScramSha256);
        }
    }
    // Server-chosen text: bounded in the message.
    let offered_text = || truncated(&offered.join(", "), 200);
    let chosen = chosen.ok_or_else(|| AuthError::NoSupportedMechanism {
        offered: offered_text(),
    })?;
    if channel_binding == ChannelBinding::Require && chosen != Mechanism::ScramSha256Plus {
        return Err(AuthError::ChannelBindingNotOffered {
            offered: offered_text(),
        });
    }
    Ok(chosen)
}

/// The `require_auth` half of libpq's `check_expected_areq`.
fn require_auth_allows(required: &RequireAuth, request: &AuthRequest, state: &State) -> bool {
    match request {
        // Without an exchange only `none` allows it (libpq's auth_required);
        // after one, only if the client finished its part.
        AuthRequest::Ok => required.allows(AuthMethod::None) || state.client_finished(),
        AuthRequest::Cleartext => required.allows(AuthMethod::Password),
        AuthRequest::Md5 { .. } => required.allows(AuthMethod::Md5),
        AuthRequest::Sasl { .. } | AuthRequest::SaslContinue(_) | AuthRequest::SaslFinal(_) => {
            required.allows(AuthMethod::ScramSha256)
        }
        // GSSAPI and SSPI cannot be listed here: a positive list leaves them
        // out, a negated one lets them through (to be refused as unsupported).
        AuthRequest::Unsupported(7..=9) => required.negated,
        AuthRequest::Unsupported(_) => false,
    }
}

/// libpq's `auth_method_description`.
fn refusal_reason(request: &AuthRequest) -> &'static str {
    match request {
        AuthRequest::Ok => "server did not complete authentication",
        AuthRequest::Cleartext => "server requested a cleartext password",
        AuthRequest::Md5 { .. } => "server requested a hashed password",
        AuthRequest::Sasl { .. } | AuthRequest::SaslContinue(_) | AuthRequest::SaslFinal(_) => {
            "server requested SASL authentication"
        }
        AuthRequest::Unsupported(7 | 8) => "server requested GSSAPI authentication",
        AuthRequest::Unsupported(9) => "server requested SSPI authentication",
        AuthRequest::Unsupported(_) => "server requested an unknown authentication type",
    }
}

/// `require_auth` written back as the user would have written it.
pub fn require_auth_text(required: &RequireAuth) -> String {
    let bang = if required.negated { "!" } else { "" };
    let names: Vec<String> = required
        .methods
        .iter()
        .map(|m| {
            let name = match m {
                AuthMethod::Password => "password",
                AuthMethod::Md5 => "md5",
                AuthMethod::ScramSha256 => "scram-sha-256",
                AuthMethod::None => "none",
            };
            format!("{bang}{name}")
        })
        .collect();
    names.join(",")
}

fn request_name(request: &AuthRequest) -> &'static str {
    match request {
        AuthRequest::Ok => "AuthenticationOk",
        AuthRequest::Cleartext => "AuthenticationCleartextPassword",
        AuthRequest::Md5 { .. } => "AuthenticationMD5Password",
        AuthRequest::Sasl { .. } => "AuthenticationSASL",
        AuthRequest::SaslContinue(_) => "AuthenticationSASLContinue",
        AuthRequest::SaslFinal(_) => "AuthenticationSASLFinal",
        AuthRequest::Unsupported(code) => unsupported_method_name(*code),
    }
}

/// The request codes of protocol 3.0 walrcv does not answer.
fn unsupported_method_name(code: i32) -> &'static str {
    match code {
        2 => "Kerberos V5 authentication",
        6 => "SCM credential authentication",
        7 | 8 => "GSSAPI authentication",
        9 => "SSPI authentication",
        _ => "an unknown authentication method",
    }
}

fn encode_error(what: &'static str, e: std::io::Error) -> AuthError {
    AuthError::Encode {
        what,
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests;
