//! Frontend (client → walrcv) messages, parsed sans-IO: the start-up packet
//! (and the SSLRequest, GSSENCRequest and CancelRequest that share its
//! untagged framing), then tagged messages.
//!
//! Lengths come from an unauthenticated peer: every message has a limit
//! checked before anything is reserved, and [`parse_startup`] /
//! [`parse_message`] take bytes off the buffer only when a whole message is
//! there.

use bytes::{Buf, Bytes, BytesMut};

/// Protocol 3.0, the only one spoken (minor versions above 0 are answered
/// with NegotiateProtocolVersion by PostgreSQL; walrcv refuses them).
pub const PROTOCOL_3_0: u32 = 196_608;
/// `SSLRequest` code.
pub const SSL_REQUEST: u32 = 80_877_103;
/// `GSSENCRequest` code.
pub const GSSENC_REQUEST: u32 = 80_877_104;
/// `CancelRequest` code.
pub const CANCEL_REQUEST: u32 = 80_877_102;

/// PostgreSQL's limit on a start-up packet (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_LEN: usize = 10_000;
/// Largest message before authentication ends (a SASL response is ~200 bytes).
pub const MAX_AUTH_MESSAGE_LEN: usize = 2_000;
/// Largest message after it: replication commands and standby replies are short.
pub const MAX_SESSION_MESSAGE_LEN: usize = 64 << 10;

/// Why the peer's bytes are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("invalid length of startup packet: {0}")]
    StartupLength(usize),
    #[error("unsupported frontend protocol {}.{}: server supports 3.0", .0 >> 16, .0 & 0xffff)]
    Protocol(u32),
    #[error("invalid startup packet layout: {0}")]
    StartupLayout(&'static str),
    #[error("invalid message length {len} for message type '{tag}' (at most {max})")]
    Length { tag: char, len: usize, max: usize },
    #[error("invalid string in message type '{0}'")]
    BadString(char),
}

/// The first packet of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    SslRequest,
    GssEncRequest,
    Cancel,
    Params(StartupParams),
}

/// How the client asked for a walsender (`replication=...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicationMode {
    /// No `replication` parameter, or a false one: a normal backend.
    None,
    /// `replication=true` (physical).
    Physical,
    /// `replication=database` (logical walsender).
    Database,
}

/// The parameters of a start-up packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupParams {
    pub user: String,
    pub database: Option<String>,
    pub application_name: Option<String>,
    pub replication: ReplicationMode,
}

/// Parses the start-up packet at the front of `buf`: `Ok(None)` until whole.
pub fn parse_startup(buf: &mut BytesMut) -> Result<Option<Startup>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(8..=MAX_STARTUP_LEN).contains(&len) {
        return Err(WireError::StartupLength(len));
    }
    if buf.len() < len {
        return Ok(None);
    }
    let mut body = buf.split_to(len).freeze();
    body.advance(4);
    let code = body.get_u32();
    match code {
        SSL_REQUEST => Ok(Some(Startup::SslRequest)),
        GSSENC_REQUEST => Ok(Some(Startup::GssEncRequest)),
        CANCEL_REQUEST => Ok(Some(Startup::Cancel)),
        PROTOCOL_3_0 => parse_params(&body).map(|p| Some(Startup::Params(p))),
        other => Err(WireError::Protocol(other)),
    }
}

fn parse_params(body: &[u8]) -> Result<StartupParams, WireError> {
    let mut fields = body.split(|&b| b == 0);
    let mut user = None;
    let mut database = None;
    let mut application_name = None;
    let mut replication = ReplicationMode::None;
    loop {
        let key = fields
            .next()
            .ok_or(WireError::StartupLayout("missing terminator"))?;
        if key.is_empty() {
            break;
        }
        let value = fields
            .next()
            .ok_or(WireError::StartupLayout("a parameter has no value"))?;
        let key = std::str::from_utf8(key).map_err(|_| WireError::StartupLayout("not UTF-8"))?;
        let value =
            std::str::from_utf8(value).map_err(|_| WireError::StartupLayout("not UTF-8"))?;
        match key {
            "user" => user = Some(value.to_owned()),
            "database" => database = Some(value.to_owned()),
            "application_name" => application_name = Some(value.to_owned()),
            "replication" => replication = replication_mode(value)?,
            _ => {}
        }
    }
    // After the terminating empty key only the final split remains, empty.
    if fields.next().is_some_and(|rest| !rest.is_empty()) || fields.next().is_some() {
        return Err(WireError::StartupLayout("bytes after the terminator"));
    }
    let user = user
        .filter(|u| !u.is_empty())
        .ok_or(WireError::StartupLayout(
            "no PostgreSQL user name specified",
        ))?;
    Ok(StartupParams {
        user,
        database,
        application_name,
        replication,
    })
}

/// PostgreSQL's `parse_bool` forms, plus `database`.
fn replication_mode(value: &str) -> Result<ReplicationMode, WireError> {
    match value.to_ascii_lowercase().as_str() {
        "database" => Ok(ReplicationMode::Database),
        "true" | "on" | "yes" | "1" | "t" | "y" => Ok(ReplicationMode::Physical),
        "false" | "off" | "no" | "0" | "f" | "n" => Ok(ReplicationMode::None),
        _ => Err(WireError::StartupLayout(
            "invalid value for parameter \"replication\"",
        )),
    }
}

/// A tagged frontend message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frontend {
    /// `Q`: a simple query (a replication command).
    Query(String),
    /// `d`: CopyData (a standby reply).
    CopyData(Bytes),
    /// `c`: CopyDone.
    CopyDone,
    /// `f`: CopyFail.
    CopyFail,
    /// `X`: Terminate.
    Terminate,
    /// `p`: password, SASLInitialResponse or SASLResponse (told apart by context).
    Password(Bytes),
    /// Anything else: refused by the caller.
    Other(u8),
}

/// Parses one tagged message at the front of `buf`, at most `max` bytes long
/// (its length word included): `Ok(None)` until whole.
pub fn parse_message(buf: &mut BytesMut, max: usize) -> Result<Option<Frontend>, WireError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len < 4 || len > max {
        return Err(WireError::Length {
            tag: tag as char,
            len,
            max,
        });
    }
    if buf.len() < len + 1 {
        return Ok(None);
    }
    let mut body = buf.split_to(len + 1).freeze();
    body.advance(5);
    Ok(Some(match tag {
        b'Q' => Frontend::Query(c_string(&body, tag)?),
        b'd' => Frontend::CopyData(body),
        b'c' => Frontend::CopyDone,
        b'f' => Frontend::CopyFail,
        b'X' => Frontend::Terminate,
        b'p' => Frontend::Password(body),
        other => Frontend::Other(other),
    }))
}

/// A NUL-terminated UTF-8 string filling `body`.
fn c_string(body: &[u8], tag: u8) -> Result<String, WireError> {
    let (text, nul) = body
        .split_last()
        .map(|(last, text)| (text, *last))
        .ok_or(WireError::BadString(tag as char))?;
    if nul != 0 || text.contains(&0) {
        return Err(WireError::BadString(tag as char));
    }
    String::from_utf8(text.to_vec()).map_err(|_| WireError::BadString(tag as char))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup(params: &[(&str, &str)]) -> BytesMut {
        let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
        for (k, v) in params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut out = BytesMut::new();
        out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn replication_startup_forms() {
        let mut b = startup(&[
            ("user", "rep"),
            ("database", "replication"),
            ("replication", "true"),
            ("application_name", "s1"),
        ]);
        let Some(Startup::Params(p)) = parse_startup(&mut b).unwrap() else {
            panic!()
        };
        assert_eq!(p.user, "rep");
        assert_eq!(p.replication, ReplicationMode::Physical);
        assert_eq!(p.application_name.as_deref(), Some("s1"));
        assert!(b.is_empty());
        let mut b = startup(&[("user", "rep"), ("replication", "database")]);
        let Some(Startup::Params(p)) = parse_startup(&mut b).unwrap() else {
            panic!()
        };
        assert_eq!(p.replication, ReplicationMode::Database);
        let mut b = startup(&[("user", "rep")]);
        let Some(Startup::Params(p)) = parse_startup(&mut b).unwrap() else {
            panic!()
        };
        assert_eq!(p.replication, ReplicationMode::None);
    }

    #[test]
    fn ssl_and_gssenc_requests() {
        for (code, want) in [
            (SSL_REQUEST, Startup::SslRequest),
            (GSSENC_REQUEST, Startup::GssEncRequest),
            (CANCEL_REQUEST, Startup::Cancel),
        ] {
            let mut b = BytesMut::new();
            b.extend_from_slice(&8u32.to_be_bytes());
            b.extend_from_slice(&code.to_be_bytes());
            assert_eq!(parse_startup(&mut b).unwrap(), Some(want));
        }
    }

    #[test]
    fn startup_refusals() {
        let mut b = BytesMut::from(&[0u8, 0, 0x40, 0][..]);
        assert!(matches!(
            parse_startup(&mut b),
            Err(WireError::StartupLength(_))
        ));
        let mut b = startup(&[("user", "rep")]);
        b[4..8].copy_from_slice(&0x0002_0000u32.to_be_bytes());
        assert!(matches!(parse_startup(&mut b), Err(WireError::Protocol(_))));
        let mut b = startup(&[("database", "replication")]);
        assert!(parse_startup(&mut b).is_err());
        let mut b = startup(&[("user", "rep")]);
        let cut = b.len() - 1;
        b.truncate(cut);
        assert_eq!(parse_startup(&mut b).unwrap(), None);
    }

    #[test]
    fn tagged_messages() {
        let mut b = BytesMut::new();
        b.extend_from_slice(b"Q\0\0\0\x14IDENTIFY_SYSTEM\0");
        b.extend_from_slice(b"c\0\0\0\x04");
        assert_eq!(
            parse_message(&mut b, 100).unwrap(),
            Some(Frontend::Query("IDENTIFY_SYSTEM".into()))
        );
        assert_eq!(
            parse_message(&mut b, 100).unwrap(),
            Some(Frontend::CopyDone)
        );
        assert_eq!(parse_message(&mut b, 100).unwrap(), None);
        let mut b = BytesMut::from(&b"Q\x7f\0\0\0"[..]);
        assert!(matches!(
            parse_message(&mut b, 100),
            Err(WireError::Length { .. })
        ));
        let mut b = BytesMut::from(&b"Q\0\0\0\x06a\x01"[..]);
        assert!(matches!(
            parse_message(&mut b, 100),
            Err(WireError::BadString('Q'))
        ));
    }
}
