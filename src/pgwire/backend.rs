//! Backend (server → client) messages, parsed sans-IO from a byte buffer.
//!
//! [`parse`] takes bytes from the front of a `BytesMut` only when a whole message
//! is buffered, returns `Ok(None)` otherwise, and keeps payloads as `Bytes`
//! slices of the buffer so WAL reaches the writer without a copy. Lengths from
//! the server are hostile: a message longer than its limit ([`max_message_len`]:
//! small during start-up, as libpq has it, [`MAX_MESSAGE_LEN`] after) is an
//! error before anything is reserved, and every field read is bounds-checked.

use std::fmt;

use bytes::{Buf, Bytes, BytesMut};

/// Largest message accepted. WAL arrives in CopyData of at most 128 KiB and the
/// biggest result row walrcv reads is a timeline history file; 64 MiB leaves a
/// wide margin while bounding what a hostile server can make us allocate.
pub const MAX_MESSAGE_LEN: usize = 64 << 20;

/// libpq's limit on an authentication request or a NegotiateProtocolVersion
/// before authentication (fe-connect.c, `CONNECTION_AWAITING_RESPONSE`: "can't
/// be very large"), counted as the message's length word counts (itself
/// included).
pub const MAX_AUTH_REQUEST_LEN: usize = 2000;

/// libpq's limit on an ErrorResponse before authentication, and on any
/// message other than the long kinds (rows, copy data, notices) after it
/// (`MAX_ERRLEN`, and the 30000 of fe-protocol3.c's `pqParseInput3`): walrcv
/// applies it to every other message until the start-up ends.
pub const MAX_STARTUP_MESSAGE_LEN: usize = 30_000;

/// The most ParameterStatus messages accepted during start-up: a server
/// reports about fifteen (`GUC_REPORT` settings); more is a flood.
pub const MAX_STARTUP_PARAMETERS: usize = 1000;

/// Where a connection is: its start-up (authentication included, until the
/// first ReadyForQuery), when what the server sends is small, or after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    StartUp,
    Session,
}

/// The largest length word accepted for a message of type `tag` in `phase`.
pub fn max_message_len(phase: Phase, tag: u8) -> usize {
    match (phase, tag) {
        (Phase::StartUp, b'R' | b'v') => MAX_AUTH_REQUEST_LEN,
        (Phase::StartUp, _) => MAX_STARTUP_MESSAGE_LEN,
        (Phase::Session, _) => MAX_MESSAGE_LEN,
    }
}

/// A protocol violation by the server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("invalid message length {len} for message type '{tag}'")]
    BadLength { tag: char, len: usize },
    #[error("malformed '{tag}' message: {what}")]
    Malformed { tag: char, what: &'static str },
    #[error(
        "invalid message length {len} for message type '{tag}' during start-up (at most {max})"
    )]
    TooLongDuringStartUp { tag: char, len: usize, max: usize },
    #[error("more than {max} ParameterStatus messages during start-up")]
    TooManyParameters { max: usize },
}

/// Fields of an ErrorResponse or NoticeResponse.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerMessage {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl fmt::Display for ServerMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.severity, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " (DETAIL: {d})")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " (HINT: {h})")?;
        }
        Ok(())
    }
}

/// An authentication request ('R').
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest {
    Ok,
    Cleartext,
    Md5 {
        salt: [u8; 4],
    },
    Sasl {
        mechanisms: Vec<String>,
    },
    SaslContinue(Bytes),
    SaslFinal(Bytes),
    /// Kerberos, GSS, SSPI...: not supported; carries the request code.
    Unsupported(i32),
}

/// A backend message walrcv understands; anything else is kept as `Other`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendMessage {
    Authentication(AuthRequest),
    BackendKeyData,
    ParameterStatus { name: String, value: String },
    ReadyForQuery,
    RowDescription { columns: Vec<String> },
    DataRow { values: Vec<Option<Bytes>> },
    CommandComplete { tag: String },
    EmptyQueryResponse,
    Error(ServerMessage),
    Notice(ServerMessage),
    CopyBothResponse,
    CopyInResponse,
    CopyOutResponse,
    CopyData(Bytes),
    CopyDone,
    NegotiateProtocolVersion,
    Other { tag: u8 },
}

/// How many payload bytes [`BackendMessage::summary`] shows.
const SUMMARY_PREFIX: usize = 16;

impl BackendMessage {
    /// A bounded, one-line description for logs and errors: the message type,
    /// its payload length and (for raw payloads) the first few bytes in hex.
    /// Never `Debug`: a message may be 64 MiB of server-chosen bytes.
    pub fn summary(&self) -> String {
        match self {
            BackendMessage::CopyData(payload) => {
                format!(
                    "CopyData ({} bytes: {})",
                    payload.len(),
                    hex_prefix(payload)
                )
            }
            BackendMessage::DataRow { values } => {
                let bytes: usize = values.iter().flatten().map(Bytes::len).sum();
                format!("DataRow ({} columns, {bytes} bytes)", values.len())
            }
            BackendMessage::RowDescription { columns } => {
                format!("RowDescription ({} columns)", columns.len())
            }
            BackendMessage::ParameterStatus { name, value } => format!(
                "ParameterStatus ({}, {} bytes)",
                truncated(name, 64),
                value.len()
            ),
            BackendMessage::CommandComplete { tag } => {
                format!("CommandComplete ({})", truncated(tag, 64))
            }
            BackendMessage::Error(m) | BackendMessage::Notice(m) => {
                let kind = if matches!(self, BackendMessage::Error(_)) {
                    "ErrorResponse"
                } else {
                    "NoticeResponse"
                };
                format!(
                    "{kind} ({}: {})",
                    truncated(&m.code, 8),
                    truncated(&m.message, 200)
                )
            }
            BackendMessage::Authentication(req) => match req {
                AuthRequest::SaslContinue(b) => {
                    format!("AuthenticationSASLContinue ({} bytes)", b.len())
                }
                AuthRequest::SaslFinal(b) => format!("AuthenticationSASLFinal ({} bytes)", b.len()),
                AuthRequest::Sasl { mechanisms } => {
                    format!("AuthenticationSASL ({} mechanisms)", mechanisms.len())
                }
                AuthRequest::Ok => "AuthenticationOk".into(),
                AuthRequest::Cleartext => "AuthenticationCleartextPassword".into(),
                AuthRequest::Md5 { .. } => "AuthenticationMD5Password".into(),
                AuthRequest::Unsupported(code) => format!("Authentication (method {code})"),
            },
            BackendMessage::Other { tag } => format!("message type {:?}", *tag as char),
            BackendMessage::BackendKeyData => "BackendKeyData".into(),
            BackendMessage::ReadyForQuery => "ReadyForQuery".into(),
            BackendMessage::EmptyQueryResponse => "EmptyQueryResponse".into(),
            BackendMessage::CopyBothResponse => "CopyBothResponse".into(),
            BackendMessage::CopyInResponse => "CopyInResponse".into(),
            BackendMessage::CopyOutResponse => "CopyOutResponse".into(),
            BackendMessage::CopyDone => "CopyDone".into(),
            BackendMessage::NegotiateProtocolVersion => "NegotiateProtocolVersion".into(),
        }
    }
}

/// The first [`SUMMARY_PREFIX`] bytes in hex, with "..." when there are more.
fn hex_prefix(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(SUMMARY_PREFIX)];
    let mut s: String = shown.iter().map(|b| format!("{b:02x}")).collect();
    if bytes.len() > shown.len() {
        s.push_str("...");
    }
    s
}

/// At most `max` characters of `s`, with "..." when cut.
pub(crate) fn truncated(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s.to_string(),
    }
}

/// Parses one message from the front of `buf`, or returns `Ok(None)` (consuming
/// nothing) until a whole message is there; after the start-up.
pub fn parse(buf: &mut BytesMut) -> Result<Option<BackendMessage>, ProtocolError> {
    parse_in(Phase::Session, buf)
}

/// [`parse`] with the limits of `phase` ([`max_message_len`]).
pub fn parse_in(phase: Phase, buf: &mut BytesMut) -> Result<Option<BackendMessage>, ProtocolError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    let max = max_message_len(phase, tag);
    if !(4..=MAX_MESSAGE_LEN).contains(&len) {
        return Err(ProtocolError::BadLength {
            tag: tag as char,
            len,
        });
    }
    if len > max {
        return Err(ProtocolError::TooLongDuringStartUp {
            tag: tag as char,
            len,
            max,
        });
    }
    if buf.len() < 1 + len {
        buf.reserve(1 + len - buf.len());
        return Ok(None);
    }
    buf.advance(5);
    let body = buf.split_to(len - 4).freeze();
    decode(tag, body).map(Some)
}

/// A cursor over a message body with checked reads.
struct Reader {
    tag: char,
    body: Bytes,
}

impl Reader {
    fn malformed(&self, what: &'static str) -> ProtocolError {
        ProtocolError::Malformed {
            tag: self.tag,
            what,
        }
    }
    fn i16(&mut self) -> Result<i16, ProtocolError> {
        if self.body.remaining() < 2 {
            return Err(self.malformed("truncated int16"));
        }
        Ok(self.body.get_i16())
    }
    fn i32(&mut self) -> Result<i32, ProtocolError> {
        if self.body.remaining() < 4 {
            return Err(self.malformed("truncated int32"));
        }
        Ok(self.body.get_i32())
    }
    fn bytes(&mut self, n: usize) -> Result<Bytes, ProtocolError> {
        if self.body.remaining() < n {
            return Err(self.malformed("truncated field"));
        }
        Ok(self.body.split_to(n))
    }
    /// A NUL-terminated string (lossily decoded: server text is for humans).
    fn cstr(&mut self) -> Result<String, ProtocolError> {
        let end = self
            .body
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.malformed("unterminated string"))?;
        let s = String::from_utf8_lossy(&self.body[..end]).into_owned();
        self.body.advance(end + 1);
        Ok(s)
    }
    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.body)
    }
    fn finish(self) -> Result<(), ProtocolError> {
        if self.body.has_remaining() {
            return Err(self.malformed("trailing bytes"));
        }
        Ok(())
    }
}

fn decode(tag: u8, body: Bytes) -> Result<BackendMessage, ProtocolError> {
    let mut r = Reader {
        tag: tag as char,
        body,
    };
    let msg = match tag {
        b'd' => return Ok(BackendMessage::CopyData(r.rest())),
        b'R' => BackendMessage::Authentication(decode_auth(&mut r)?),
        b'K' => {
            r.rest();
            BackendMessage::BackendKeyData
        }
        b'S' => BackendMessage::ParameterStatus {
            name: r.cstr()?,
            value: r.cstr()?,
        },
        b'Z' => {
            r.bytes(1)?;
            BackendMessage::ReadyForQuery
        }
        b'T' => {
            let n = r.i16()?;
            let n = usize::try_from(n).map_err(|_| r.malformed("negative column count"))?;
            let mut columns = Vec::with_capacity(n.min(64));
            for _ in 0..n {
                columns.push(r.cstr()?);
                // table oid, column number, type oid, type size, type modifier, format
                r.bytes(4 + 2 + 4 + 2 + 4 + 2)?;
            }
            BackendMessage::RowDescription { columns }
        }
        b'D' => {
            let n = r.i16()?;
            let n = usize::try_from(n).map_err(|_| r.malformed("negative column count"))?;
            let mut values = Vec::with_capacity(n.min(64));
            for _ in 0..n {
                let len = r.i32()?;
                if len == -1 {
                    values.push(None);
                } else {
                    let len =
                        usize::try_from(len).map_err(|_| r.malformed("negative value length"))?;
                    values.push(Some(r.bytes(len)?));
                }
            }
            BackendMessage::DataRow { values }
        }
        b'C' => BackendMessage::CommandComplete { tag: r.cstr()? },
        b'I' => BackendMessage::EmptyQueryResponse,
        b'E' => BackendMessage::Error(decode_fields(&mut r)?),
        b'N' => BackendMessage::Notice(decode_fields(&mut r)?),
        b'W' | b'G' | b'H' => {
            // Overall format and per-column formats: walrcv does not use them.
            r.rest();
            match tag {
                b'W' => BackendMessage::CopyBothResponse,
                b'G' => BackendMessage::CopyInResponse,
                _ => BackendMessage::CopyOutResponse,
            }
        }
        b'c' => BackendMessage::CopyDone,
        b'v' => {
            r.rest();
            BackendMessage::NegotiateProtocolVersion
        }
        other => {
            r.rest();
            BackendMessage::Other { tag: other }
        }
    };
    r.finish()?;
    Ok(msg)
}

fn decode_auth(r: &mut Reader) -> Result<AuthRequest, ProtocolError> {
    Ok(match r.i32()? {
        0 => AuthRequest::Ok,
        3 => AuthRequest::Cleartext,
        5 => {
            let s = r.bytes(4)?;
            AuthRequest::Md5 {
                salt: [s[0], s[1], s[2], s[3]],
            }
        }
        10 => {
            let mut mechanisms = Vec::new();
            loop {
                let m = r.cstr()?;
                if m.is_empty() {
                    break;
                }
                mechanisms.push(m);
            }
            AuthRequest::Sasl { mechanisms }
        }
        11 => AuthRequest::SaslContinue(r.rest()),
        12 => AuthRequest::SaslFinal(r.rest()),
        other => {
            r.rest();
            AuthRequest::Unsupported(other)
        }
    })
}

fn decode_fields(r: &mut Reader) -> Result<ServerMessage, ProtocolError> {
    let mut m = ServerMessage::default();
    loop {
        let code = r.bytes(1)?[0];
        if code == 0 {
            break;
        }
        let value = r.cstr()?;
        match code {
            // 'V' is the non-localised severity (9.6+); prefer it over 'S'.
            b'V' => m.severity = value,
            b'S' if m.severity.is_empty() => m.severity = value,
            b'C' => m.code = value,
            b'M' => m.message = value,
            b'D' => m.detail = Some(value),
            b'H' => m.hint = Some(value),
            _ => {}
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.extend_from_slice(&[tag]);
        b.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        b.extend_from_slice(body);
        b
    }

    /// libpq's start-up limits, at their edges; the header alone decides
    /// (nothing past it needs to have arrived), and nothing is consumed.
    #[test]
    fn start_up_messages_are_small_as_in_libpq() {
        for (tag, max) in [
            (b'R', MAX_AUTH_REQUEST_LEN),
            (b'v', MAX_AUTH_REQUEST_LEN),
            (b'E', MAX_STARTUP_MESSAGE_LEN),
            (b'S', MAX_STARTUP_MESSAGE_LEN),
            (b'N', MAX_STARTUP_MESSAGE_LEN),
        ] {
            let mut at_max = frame(tag, &vec![0; max - 4]);
            assert!(
                !matches!(
                    parse_in(Phase::StartUp, &mut at_max),
                    Err(ProtocolError::TooLongDuringStartUp { .. })
                ),
                "{}",
                tag as char
            );
            let mut header = BytesMut::new();
            header.extend_from_slice(&[tag]);
            header.extend_from_slice(&(max as u32 + 1).to_be_bytes());
            assert_eq!(
                parse_in(Phase::StartUp, &mut header),
                Err(ProtocolError::TooLongDuringStartUp {
                    tag: tag as char,
                    len: max + 1,
                    max
                })
            );
            assert_eq!(header.len(), 5);
            // After the start-up only the general limit applies.
            assert_eq!(parse_in(Phase::Session, &mut header), Ok(None));
        }
        assert_eq!(max_message_len(Phase::Session, b'R'), MAX_MESSAGE_LEN);
    }

    #[test]
    fn waits_for_a_whole_message() {
        let full = frame(b'C', b"START_STREAMING\0");
        for cut in 0..full.len() {
            let mut part = BytesMut::from(&full[..cut]);
            assert_eq!(parse(&mut part).unwrap(), None);
            assert_eq!(part.len(), cut, "nothing consumed");
        }
        let mut all = full.clone();
        all.extend_from_slice(&frame(b'Z', b"I"));
        assert_eq!(
            parse(&mut all).unwrap(),
            Some(BackendMessage::CommandComplete {
                tag: "START_STREAMING".into()
            })
        );
        assert_eq!(
            parse(&mut all).unwrap(),
            Some(BackendMessage::ReadyForQuery)
        );
        assert!(all.is_empty());
    }

    #[test]
    fn rows_and_nulls() {
        let mut body = Vec::new();
        body.extend_from_slice(&2i16.to_be_bytes());
        body.extend_from_slice(&3i32.to_be_bytes());
        body.extend_from_slice(b"abc");
        body.extend_from_slice(&(-1i32).to_be_bytes());
        let mut b = frame(b'D', &body);
        assert_eq!(
            parse(&mut b).unwrap(),
            Some(BackendMessage::DataRow {
                values: vec![Some(Bytes::from_static(b"abc")), None]
            })
        );
    }

    #[test]
    fn error_fields() {
        let mut b = frame(
            b'E',
            b"SERROR\0VERROR\0C58P01\0Mrequested WAL segment 000000010000000000000001 has already been removed\0\0",
        );
        let Some(BackendMessage::Error(e)) = parse(&mut b).unwrap() else {
            panic!()
        };
        assert_eq!(e.code, "58P01");
        assert_eq!(e.severity, "ERROR");
        assert!(e.message.contains("already been removed"));
    }

    #[test]
    fn auth_requests() {
        let mut b = frame(b'R', b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        assert_eq!(
            parse(&mut b).unwrap(),
            Some(BackendMessage::Authentication(AuthRequest::Sasl {
                mechanisms: vec!["SCRAM-SHA-256-PLUS".into(), "SCRAM-SHA-256".into()]
            }))
        );
        let mut b = frame(b'R', b"\0\0\0\x05abcd");
        assert_eq!(
            parse(&mut b).unwrap(),
            Some(BackendMessage::Authentication(AuthRequest::Md5 {
                salt: *b"abcd"
            }))
        );
    }

    #[test]
    fn hostile_input_is_an_error_not_a_panic() {
        let mut b = BytesMut::from(&b"d\0\0\0\x02"[..]);
        assert!(parse(&mut b).is_err());
        let mut b = BytesMut::from(&b"d\xff\xff\xff\xff"[..]);
        assert!(parse(&mut b).is_err());
        let mut b = frame(b'D', &[0, 1, 0, 0, 0, 9, b'x']);
        assert!(parse(&mut b).is_err());
        let mut b = frame(b'D', &[0xff, 0xff]);
        assert!(parse(&mut b).is_err());
        let mut b = frame(b'Z', b"");
        assert!(parse(&mut b).is_err());
        let mut b = frame(b'Z', b"II");
        assert!(parse(&mut b).is_err());
        let mut b = frame(b'E', b"Mno terminator");
        assert!(parse(&mut b).is_err());
    }

    #[test]
    fn summaries_are_bounded() {
        let huge = Bytes::from(vec![0x77u8; MAX_MESSAGE_LEN]);
        let s = BackendMessage::CopyData(huge.clone()).summary();
        assert_eq!(
            s,
            format!("CopyData ({MAX_MESSAGE_LEN} bytes: 77777777777777777777777777777777...)")
        );
        let s = BackendMessage::DataRow {
            values: vec![Some(huge.clone()), None],
        }
        .summary();
        assert_eq!(s, format!("DataRow (2 columns, {MAX_MESSAGE_LEN} bytes)"));
        let long = "é".repeat(1 << 20);
        let s = BackendMessage::Notice(ServerMessage {
            code: "01000".into(),
            message: long.clone(),
            ..Default::default()
        })
        .summary();
        assert!(
            s.starts_with("NoticeResponse (01000: éé") && s.ends_with("...)"),
            "{s}"
        );
        assert!(s.chars().count() < 250, "{}", s.len());
        let s = BackendMessage::ParameterStatus {
            name: long.clone(),
            value: long,
        }
        .summary();
        assert!(s.len() < 200, "{}", s.len());
        assert_eq!(
            BackendMessage::CopyData(Bytes::from_static(b"k\x01")).summary(),
            "CopyData (2 bytes: 6b01)"
        );
        assert_eq!(
            BackendMessage::Other { tag: b'X' }.summary(),
            "message type 'X'"
        );
    }
}
