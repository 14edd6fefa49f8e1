//! Server-side SCRAM-SHA-256 (RFC 5802/7677, as PostgreSQL's `auth-scram.c`
//! speaks it), sans-IO: a verifier from `--serve-passfile` in the
//! `pg_authid.rolpassword` format, then the two client messages in, the two
//! server messages out. Over TLS, SCRAM-SHA-256-PLUS is offered too, with
//! `tls-server-end-point` channel binding (RFC 5929: the hash of the
//! server's certificate), as PostgreSQL offers it; a client that supports
//! binding but says it thinks the server does not (`y,,`) is refused as a
//! downgrade, in PostgreSQL's words.
//!
//! An unknown user runs the same exchange against a made-up verifier and
//! fails at the end, so that a client cannot tell unknown users from wrong
//! passwords (PostgreSQL's "mock authentication").

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// A stored SCRAM-SHA-256 verifier.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys stay out of logs.
        write!(f, "Verifier(SCRAM-SHA-256, {} iterations)", self.iterations)
    }
}

/// Why an exchange fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("invalid SCRAM verifier: {0}")]
    BadVerifier(&'static str),
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("SCRAM channel binding negotiation error: {0}")]
    ChannelBinding(&'static str),
    #[error("SCRAM channel binding check failed")]
    BindingMismatch,
    #[error("wrong password")]
    WrongProof,
}

fn key32(text: &str) -> Option<[u8; 32]> {
    B64.decode(text).ok()?.try_into().ok()
}

impl Verifier {
    /// Parses `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn parse(text: &str) -> Result<Verifier, ScramError> {
        let rest = text
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or(ScramError::BadVerifier(
                "it does not start with SCRAM-SHA-256$",
            ))?;
        let (params, keys) = rest
            .split_once('$')
            .ok_or(ScramError::BadVerifier("no '$' before the keys"))?;
        let (iter, salt) = params.split_once(':').ok_or(ScramError::BadVerifier(
            "no ':' between iterations and salt",
        ))?;
        let (stored, server) = keys
            .split_once(':')
            .ok_or(ScramError::BadVerifier("no ':' between the keys"))?;
        let iterations = iter
            .parse::<u32>()
            .ok()
            .filter(|i| *i > 0)
            .ok_or(ScramError::BadVerifier("bad iteration count"))?;
        Ok(Verifier {
            iterations,
            salt: B64
                .decode(salt)
                .map_err(|_| ScramError::BadVerifier("salt is not base64"))?,
            stored_key: key32(stored).ok_or(ScramError::BadVerifier("bad StoredKey"))?,
            server_key: key32(server).ok_or(ScramError::BadVerifier("bad ServerKey"))?,
        })
    }

    /// A verifier for `password` (what PostgreSQL stores; for tests and mocks).
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> Verifier {
        let salted = hi(password.as_bytes(), salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        Verifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
        }
    }
}

/// SCRAM's `Hi()` (PBKDF2 with HMAC-SHA-256, one block). No SASLprep: used
/// for mock verifiers and tests, whose passwords are ASCII.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &first);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        for (o, b) in out.iter_mut().zip(u) {
            *o ^= b;
        }
    }
    out
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The channel binding of an exchange: what the server offered and what
/// the client chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding<'a> {
    /// No TLS: only SCRAM-SHA-256 was offered.
    NotOffered,
    /// Over TLS: both mechanisms offered; `plus` when the client chose
    /// SCRAM-SHA-256-PLUS; `endpoint` is the tls-server-end-point data.
    Offered { plus: bool, endpoint: &'a [u8] },
}

/// The mechanism names to offer.
pub fn mechanisms(binding_available: bool) -> &'static [&'static str] {
    if binding_available {
        &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
    } else {
        &["SCRAM-SHA-256"]
    }
}

/// Splits the GS2 header off the client-first message and checks it
/// against the binding (PostgreSQL's `read_client_first_message`): returns
/// the header and what the client-final `c=` must decode to.
fn gs2<'t>(text: &'t str, binding: Binding) -> Result<(&'t str, Vec<u8>), ScramError> {
    let cb_end = text
        .find(',')
        .ok_or(ScramError::Malformed("bad GS2 header"))?;
    let authzid_end = text[cb_end + 1..]
        .find(',')
        .map(|i| cb_end + 1 + i)
        .ok_or(ScramError::Malformed("bad GS2 header"))?;
    if authzid_end != cb_end + 1 {
        return Err(ScramError::Malformed(
            "client uses authorization identity, but it is not supported",
        ));
    }
    let header = &text[..=authzid_end];
    let flag = &text[..cb_end];
    let plus = matches!(binding, Binding::Offered { plus: true, .. });
    match (flag, binding) {
        ("n", _) | ("y", Binding::NotOffered) if !plus => Ok((header, header.as_bytes().to_vec())),
        ("y", _) if !plus => Err(ScramError::ChannelBinding(
            "the client supports SCRAM channel binding but thinks the server does not; \
             however, this server does support channel binding",
        )),
        ("p=tls-server-end-point", Binding::Offered { plus: true, endpoint }) => {
            let mut expected = header.as_bytes().to_vec();
            expected.extend_from_slice(endpoint);
            Ok((header, expected))
        }
        (f, _) if f.starts_with("p=") && plus => Err(ScramError::Malformed(
            "unsupported SCRAM channel-binding type",
        )),
        (f, _) if f.starts_with("p=") => Err(ScramError::Malformed(
            "the client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data",
        )),
        ("n" | "y", _) => Err(ScramError::Malformed(
            "the client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data",
        )),
        _ => Err(ScramError::Malformed("bad GS2 header")),
    }
}

/// The tls-server-end-point data of a certificate (RFC 5929 §4.1): its
/// hash by the digest of its signature algorithm, SHA-256 when that is MD5
/// or SHA-1. `None` when the algorithm has no digest (Ed25519): binding is
/// then not offered, as PostgreSQL cannot offer it either.
pub fn tls_server_end_point(cert: &openssl::x509::X509Ref) -> Option<Vec<u8>> {
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    let algs = cert
        .signature_algorithm()
        .object()
        .nid()
        .signature_algorithms()?;
    let digest = match algs.digest {
        Nid::MD5 | Nid::SHA1 => MessageDigest::sha256(),
        other => MessageDigest::from_nid(other)?,
    };
    cert.digest(digest).ok().map(|d| d.to_vec())
}

/// An exchange after the client's first message.
#[derive(Debug)]
pub struct Exchange {
    verifier: Verifier,
    /// `false` for a mock exchange (unknown user): it always fails.
    real: bool,
    /// What the client-final `c=` must decode to: the GS2 header, then the
    /// channel binding data when bound.
    cbind: Vec<u8>,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

/// Takes the client-first message; returns the exchange and the server-first
/// message. `verifier` is `None` for an unknown user.
pub fn server_first(
    client_first: &[u8],
    verifier: Option<&Verifier>,
    server_nonce: &[u8],
    binding: Binding,
) -> Result<(Exchange, String), ScramError> {
    let text = std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
    let (gs2_header, cbind) = gs2(text, binding)?;
    let bare = &text[gs2_header.len()..];
    let client_nonce = bare
        .split(',')
        .find_map(|a| a.strip_prefix("r="))
        .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b','))
        .ok_or(ScramError::Malformed("no client nonce"))?;
    let (verifier, real) = match verifier {
        Some(v) => (v.clone(), true),
        None => (
            Verifier::from_password("", &Sha256::digest(server_nonce)[..16], 4096),
            false,
        ),
    };
    let nonce = format!("{client_nonce}{}", B64.encode(server_nonce));
    let server_first = format!(
        "r={nonce},s={},i={}",
        B64.encode(&verifier.salt),
        verifier.iterations
    );
    let exchange = Exchange {
        verifier,
        real,
        cbind,
        client_first_bare: bare.to_owned(),
        server_first: server_first.clone(),
        nonce,
    };
    Ok((exchange, server_first))
}

impl Exchange {
    /// Takes the client-final message; returns the server-final message
    /// when the proof is right.
    pub fn server_final(&self, client_final: &[u8]) -> Result<String, ScramError> {
        let text =
            std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut attrs = without_proof.split(',');
        let binding = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramError::Malformed("no channel binding attribute"))?;
        if B64.decode(binding).ok().as_deref() != Some(self.cbind.as_slice()) {
            return Err(ScramError::BindingMismatch);
        }
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("no nonce"))?;
        if nonce != self.nonce {
            return Err(ScramError::Malformed("nonce does not match"));
        }
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed("bad proof"))?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
        let stored: [u8; 32] = Sha256::digest(&client_key).into();
        // Constant-time enough: both are hashes of secrets the client cannot steer.
        if !self.real || stored != self.verifier.stored_key {
            return Err(ScramError::WrongProof);
        }
        let server_signature = hmac(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// walrcv's own client (postgres-protocol) authenticates against it.
    fn run(client_password: &str, verifier: Option<&Verifier>) -> Result<(), ScramError> {
        run_bound(
            client_password,
            verifier,
            ChannelBinding::unsupported(),
            Binding::NotOffered,
        )
    }

    fn run_bound(
        client_password: &str,
        verifier: Option<&Verifier>,
        client_binding: ChannelBinding,
        binding: Binding,
    ) -> Result<(), ScramError> {
        let mut client = ScramSha256::new(client_password.as_bytes(), client_binding);
        let (exchange, first) = server_first(client.message(), verifier, b"servernonce", binding)?;
        client
            .update(first.as_bytes())
            .map_err(|_| ScramError::Malformed("client refused server-first"))?;
        let last = exchange.server_final(client.message())?;
        client
            .finish(last.as_bytes())
            .map_err(|_| ScramError::Malformed("client refused server-final"))
    }

    #[test]
    fn right_and_wrong_passwords() {
        let v = Verifier::from_password("secret", b"0123456789abcdef", 4096);
        run("secret", Some(&v)).unwrap();
        assert_eq!(run("wrong", Some(&v)), Err(ScramError::WrongProof));
        assert_eq!(run("", None), Err(ScramError::WrongProof));
    }

    #[test]
    fn parses_what_postgres_stores() {
        let v = Verifier::from_password("secret", b"0123456789abcdef", 4096);
        let text = format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            v.iterations,
            B64.encode(&v.salt),
            B64.encode(v.stored_key),
            B64.encode(v.server_key)
        );
        assert_eq!(Verifier::parse(&text).unwrap(), v);
        for bad in [
            "md5abc",
            "SCRAM-SHA-256$4096:c2FsdA==",
            "SCRAM-SHA-256$0:c2FsdA==$AA==:AA==",
            "SCRAM-SHA-256$4096:c2FsdA==$AA==:AA==",
        ] {
            assert!(Verifier::parse(bad).is_err(), "{bad}");
        }
        assert!(!format!("{v:?}").contains(&B64.encode(v.stored_key)));
    }

    #[test]
    fn malformed_messages() {
        let v = Verifier::from_password("secret", b"salt", 4096);
        let no = Binding::NotOffered;
        assert!(server_first(b"x,,n=,r=abc", Some(&v), b"s", no).is_err());
        assert!(server_first(b"n,a=admin,n=,r=abc", Some(&v), b"s", no).is_err());
        assert!(matches!(
            server_first(b"p=tls-server-end-point,,n=,r=abc", Some(&v), b"s", no),
            Err(ScramError::Malformed(m)) if m.contains("without channel binding")
        ));
        let (ex, _) = server_first(b"n,,n=,r=abc", Some(&v), b"s", no).unwrap();
        assert!(ex.server_final(b"c=biws,r=other,p=AAAA").is_err());
        assert!(ex.server_final(b"garbage").is_err());
    }

    #[test]
    fn channel_binding_over_tls() {
        let v = Verifier::from_password("secret", b"0123456789abcdef", 4096);
        let endpoint = [7u8; 32];
        let plus = Binding::Offered {
            plus: true,
            endpoint: &endpoint,
        };
        let plain = Binding::Offered {
            plus: false,
            endpoint: &endpoint,
        };
        let tse = |data: &[u8]| ChannelBinding::tls_server_end_point(data.to_vec());
        // SCRAM-SHA-256-PLUS with the right certificate hash.
        run_bound("secret", Some(&v), tse(&endpoint), plus).unwrap();
        // A client bound to another certificate (a man in the middle).
        assert_eq!(
            run_bound("secret", Some(&v), tse(&[8u8; 32]), plus),
            Err(ScramError::BindingMismatch)
        );
        assert_eq!(
            run_bound("wrong", Some(&v), tse(&endpoint), plus),
            Err(ScramError::WrongProof)
        );
        // SCRAM-SHA-256 over TLS by a client without binding: fine.
        run_bound("secret", Some(&v), ChannelBinding::unsupported(), plain).unwrap();
        // "y": the client could bind but was told the server cannot.
        assert!(matches!(
            run_bound("secret", Some(&v), ChannelBinding::unrequested(), plain),
            Err(ScramError::ChannelBinding(_))
        ));
        // -PLUS chosen without binding data, or binding data under the plain name.
        assert!(run_bound("secret", Some(&v), ChannelBinding::unsupported(), plus).is_err());
        assert!(run_bound("secret", Some(&v), tse(&endpoint), plain).is_err());
        assert_eq!(mechanisms(true)[0], "SCRAM-SHA-256-PLUS");
        assert_eq!(mechanisms(false), ["SCRAM-SHA-256"]);
    }

    #[test]
    fn end_point_hash_of_a_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let x509 = openssl::x509::X509::from_der(cert.der()).unwrap();
        // rcgen signs with ECDSA-SHA256: the hash is SHA-256 of the DER.
        assert_eq!(
            tls_server_end_point(&x509).unwrap(),
            Sha256::digest(cert.der()).to_vec()
        );
    }
}
