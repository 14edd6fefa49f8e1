//! The authentication state machine driven by scripted servers: every
//! request order, every `channel_binding` × method pair, every `require_auth`
//! case, with a real SCRAM server side (RFC 5802 maths written here, checked
//! against postgres-protocol's client) so that right and wrong signatures are
//! both exercised.

use std::cell::Cell;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256, Sha384};

use super::*;
use crate::pgwire::cert_hash::tests::self_signed;

const USER: &str = "walrcv";
const PASSWORD: &str = "s3cret-pässword";

fn settings(channel_binding: ChannelBinding, tls: Option<Vec<u8>>) -> AuthSettings {
    AuthSettings {
        user: USER.into(),
        channel_binding,
        require_auth: None,
        tls_server_certificate: tls,
    }
}

fn require(text: &str) -> RequireAuth {
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
    RequireAuth { negated, methods }
}

fn with_require(text: &str) -> AuthSettings {
    AuthSettings {
        require_auth: Some(require(text)),
        ..settings(ChannelBinding::Prefer, None)
    }
}

fn tls_cert() -> Vec<u8> {
    self_signed(&rcgen::PKCS_ECDSA_P384_SHA384)
}

fn sasl(mechanisms: &[&str]) -> AuthRequest {
    AuthRequest::Sasl {
        mechanisms: mechanisms.iter().map(|m| m.to_string()).collect(),
    }
}

fn pw() -> Option<String> {
    Some(PASSWORD.into())
}

/// The payload of a 'p' message (after the type byte and length).
fn payload(step: Step) -> Vec<u8> {
    let Step::Send(m) = step else {
        panic!("expected a message, got {step:?}")
    };
    let bytes = m.into_bytes();
    assert_eq!(bytes[0], b'p');
    let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
    assert_eq!(len + 1, bytes.len());
    bytes[5..].to_vec()
}

/// SASLInitialResponse → (mechanism, client-first message).
fn initial_response(step: Step) -> (String, String) {
    let p = payload(step);
    let nul = p.iter().position(|&b| b == 0).unwrap();
    let mechanism = String::from_utf8(p[..nul].to_vec()).unwrap();
    let data = &p[nul + 5..];
    (mechanism, String::from_utf8(data.to_vec()).unwrap())
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// The server side of SCRAM-SHA-256 (RFC 5802 §3, RFC 7677), enough to
/// check the client's proof and binding and to sign its answer.
struct ScramServer {
    salted_password: Vec<u8>,
    expected_cbind: Vec<u8>,
    client_first_bare: String,
    server_first: String,
    auth_message: String,
}

impl ScramServer {
    /// `expected_cbind`: what `c=` must decode to (gs2 header + binding data).
    fn new(expected_cbind: Vec<u8>) -> ScramServer {
        let salt = b"0123456789ab";
        let mut u = hmac(PASSWORD.as_bytes(), &[&salt[..], &[0, 0, 0, 1]].concat());
        let mut salted = u.clone();
        for _ in 1..4 {
            u = hmac(PASSWORD.as_bytes(), &u);
            salted.iter_mut().zip(&u).for_each(|(s, u)| *s ^= u);
        }
        ScramServer {
            salted_password: salted,
            expected_cbind,
            client_first_bare: String::new(),
            server_first: String::new(),
            auth_message: String::new(),
        }
    }

    fn server_first(&mut self, client_first: &str) -> AuthRequest {
        let gs2_end = client_first.match_indices(',').nth(1).unwrap().0 + 1;
        let gs2 = &client_first[..gs2_end];
        assert!(
            self.expected_cbind.starts_with(gs2.as_bytes()),
            "gs2 header {gs2:?}"
        );
        self.client_first_bare = client_first[gs2_end..].to_string();
        let nonce = self.client_first_bare.split("r=").nth(1).unwrap();
        self.server_first = format!("r={nonce}SERVERNONCE,s={},i=4", B64.encode(b"0123456789ab"));
        AuthRequest::SaslContinue(self.server_first.clone().into())
    }

    /// Checks the client-final message; returns the signature it earns.
    fn check_client_final(&mut self, client_final: &str) -> Vec<u8> {
        let (without_proof, proof) = client_final.rsplit_once(",p=").unwrap();
        let cbind = without_proof.strip_prefix("c=").unwrap().split(',').next();
        assert_eq!(
            B64.decode(cbind.unwrap()).unwrap(),
            self.expected_cbind,
            "channel binding"
        );
        self.auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let client_key = hmac(&self.salted_password, b"Client Key");
        let stored_key = Sha256::digest(&client_key);
        let signature = hmac(&stored_key, self.auth_message.as_bytes());
        let proof = B64.decode(proof).unwrap();
        let recovered: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
        assert_eq!(recovered, client_key, "client proof");
        let server_key = hmac(&self.salted_password, b"Server Key");
        hmac(&server_key, self.auth_message.as_bytes())
    }

    fn server_final(&mut self, client_final: &str) -> AuthRequest {
        let signature = self.check_client_final(client_final);
        AuthRequest::SaslFinal(format!("v={}", B64.encode(signature)).into())
    }
}

/// Runs a SCRAM exchange up to (and including) the server's final message.
/// Returns the mechanism and the client-first message.
fn scram_until_final(
    auth: &mut Authenticator,
    offered: &[&str],
    expected_cbind: Vec<u8>,
) -> (String, String) {
    let mut server = ScramServer::new(expected_cbind);
    let (mechanism, first) = initial_response(auth.step(&sasl(offered), pw).unwrap());
    let reply = auth.step(&server.server_first(&first), pw).unwrap();
    let client_final = String::from_utf8(payload(reply)).unwrap();
    let fin = server.server_final(&client_final);
    assert!(matches!(auth.step(&fin, pw).unwrap(), Step::Wait));
    (mechanism, first)
}

fn ok(auth: &mut Authenticator) -> Result<Step, AuthError> {
    auth.step(&AuthRequest::Ok, pw)
}

const PLAIN: &[&str] = &["SCRAM-SHA-256"];
const BOTH: &[&str] = &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"];

#[test]
fn scram_over_plain_text_verifies_the_server_signature() {
    let mut auth = Authenticator::new(settings(ChannelBinding::Prefer, None));
    let (mechanism, first) = scram_until_final(&mut auth, PLAIN, b"n,,".to_vec());
    assert_eq!(mechanism, "SCRAM-SHA-256");
    assert!(first.starts_with("n,,n=,r="), "{first}");
    assert!(!auth.is_authenticated());
    assert!(matches!(ok(&mut auth), Ok(Step::Authenticated)));
    assert!(auth.is_authenticated());
}

#[test]
fn the_method_is_known_once_the_server_accepted_us() {
    // SCRAM, with and without the binding.
    let cert = tls_cert();
    let mut cbind = b"p=tls-server-end-point,,".to_vec();
    cbind.extend_from_slice(&Sha384::digest(&cert));
    for (tls, offered, cbind, expected) in [
        (None, PLAIN, b"n,,".to_vec(), Authenticated::ScramSha256),
        (Some(cert), BOTH, cbind, Authenticated::ScramSha256Plus),
    ] {
        let mut auth = Authenticator::new(settings(ChannelBinding::Prefer, tls));
        scram_until_final(&mut auth, offered, cbind);
        assert_eq!(
            auth.method(),
            None,
            "{expected:?}: not before AuthenticationOk"
        );
        ok(&mut auth).unwrap();
        assert_eq!(auth.method(), Some(expected));
    }
    // A password, an MD5 hash, nothing at all (trust).
    for (request, expected) in [
        (AuthRequest::Cleartext, Authenticated::Password),
        (AuthRequest::Md5 { salt: [1; 4] }, Authenticated::Md5),
    ] {
        let mut auth = Authenticator::new(settings(ChannelBinding::Prefer, None));
        auth.step(&request, pw).unwrap();
        assert_eq!(auth.method(), None);
        ok(&mut auth).unwrap();
        assert_eq!(auth.method(), Some(expected));
    }
    let mut auth = Authenticator::new(settings(ChannelBinding::Prefer, None));
    ok(&mut auth).unwrap();
    assert_eq!(auth.method().map(Authenticated::name), Some("none"));
}

#[test]
fn a_wrong_server_signature_is_refused() {
    let mut auth = Authenticator::new(settings(ChannelBinding::Prefer, None));
    let mut server = ScramServer::new(b"n,,".to_vec());
    let (_, first) = initial_response(auth.step(&sasl(PLAIN), pw).unwrap());
    let reply = auth.step(&server.server_first(&first), pw).unwrap();
    let mut signature = server.check_client_final(&String::from_utf8(payload(reply)).unwrap());
    signature[0] ^= 1;
    let fin = AuthRequest::SaslFinal(format!("v={}", B64.encode(signature)).into());
    assert_eq!(
        auth.step(&fin, pw).unwrap_err(),
        AuthError::WrongServerSignature
    );
    // Whatever comes next is refused, AuthenticationOk included.
    assert!(matches!(ok(&mut auth), Err(AuthError::OutOfOrder { .. })));
    assert!(!auth.is_authenticated());
}

#[test]
fn a_server_error_or_garbage_in_the_final_message_is_refused() {
    for (fin, want) in [
        ("e=invalid-proof", "invalid-proof"),
        ("v=not base64!", "invalid SCRAM server-final message"),
        ("", "invalid SCRAM server-final message"),
    ] {
        let mut auth = Authenticator::new(settings(ChannelBinding::Prefer, None));
        let mut server = ScramServer::new(b"n,,".to_vec());
        let (_, first) = initial_response(auth.step(&sasl(PLAIN), pw).unwrap());
        auth.step(&server.server_first(&first), pw).unwrap();
        let e = auth
            .step(&AuthRequest::SaslFinal(fin.as_bytes().to_vec().into()), pw)
            .unwrap_err();
        assert!(matches!(e, AuthError::ScramServerFinal(_)), "{fin}: {e}");
        assert!(e.to_string().contains(want), "{fin}: {e}");
    }
}

#[test]
fn authentication_ok_in_the_middle_of_scram_is_refused() {
    // Right after AuthenticationSASL.
    let mut auth = Authenticator::new(settings(ChannelBinding::Prefer, None));
    auth.step(&sasl(PLAIN), pw).unwrap();
    assert_eq!(ok(&mut auth).unwrap_err(), AuthError::SaslIncomplete);

    // Right after AuthenticationSASLContinue: the server skips its signature.
    let mut auth = Authenticator::new(settings(ChannelBinding::Prefer, None));
    let mut server = ScramServer::new(b"n,,".to_vec());
    let (_, first) = initial_response(auth.step(&sasl(PLAIN), pw).unwrap());
    auth.step(&server.server_first(&first), pw).unwrap();
    let e = ok(&mut auth).unwrap_err();
    assert_eq!(e, AuthError::SaslIncomplete);
    assert!(
        e.to_string()
            .starts_with("server sent AuthenticationOk before the SASL exchange was completed"),
        "{e}"
    );
}

#[test]
fn sasl_messages_out_of_order_are_refused() {
    let cont = AuthRequest::SaslContinue(b"r=x,s=eA==,i=4096".to_vec().into());
    let fin = AuthRequest::SaslFinal(b"v=AAAA".to_vec().into());
    for (script, what) in [
        (vec![cont.clone()], "AuthenticationSASLContinue"),
        (vec![fin.clone()], "AuthenticationSASLFinal"),
        (vec![sasl(PLAIN), fin.clone()], "AuthenticationSASLFinal"),
        (vec![sasl(PLAIN), sasl(PLAIN)], "AuthenticationSASL"),
        (
            vec![sasl(PLAIN), AuthRequest::Cleartext],
            "AuthenticationCleartextPassword",
        ),
        (
            vec![AuthRequest::Cleartext, AuthRequest::Md5 { salt: [1; 4] }],
            "AuthenticationMD5Password",
        ),
        (vec![AuthRequest::Ok, AuthRequest::Ok], "AuthenticationOk"),
    ] {
        let mut auth = Authenticator::new(settings(ChannelBinding::Prefer, None));
        let (last, before) = script.split_last().unwrap();
        for r in before {
            auth.step(r, pw).unwrap();
        }
        let e = auth.step(last, pw).unwrap_err();
        assert!(
            matches!(e, AuthError::OutOfOrder { got, .. } if got == what),
            "{what}: {e}"
        );
    }
}

#[test]
fn a_server_first_message_with_a_foreign_nonce_is_refused() {
    let mut auth = Authenticator::new(settings(ChannelBinding::Prefer, None));
    auth.step(&sasl(PLAIN), pw).unwrap();
    let cont = AuthRequest::SaslContinue(b"r=notours,s=eA==,i=4096".to_vec().into());
    let e = auth.step(&cont, pw).unwrap_err();
    assert!(matches!(e, AuthError::ScramServerFirst(_)), "{e}");
}

#[test]
fn plus_is_chosen_over_tls_and_binds_to_the_certificate_hash() {
    let cert = tls_cert();
    let mut cbind = b"p=tls-server-end-point,,".to_vec();
    cbind.extend_from_slice(&Sha384::digest(&cert));
    for cb in [ChannelBinding::Prefer, ChannelBinding::Require] {
        let mut auth = Authenticator::new(settings(cb, Some(cert.clone())));
        let (mechanism, first) = scram_until_final(&mut auth, BOTH, cbind.clone());
        assert_eq!(mechanism, "SCRAM-SHA-256-PLUS");
        assert!(
            first.starts_with("p=tls-server-end-point,,n=,r="),
            "{first}"
        );
        assert!(matches!(ok(&mut auth), Ok(Step::Authenticated)), "{cb:?}");
    }
}

#[test]
fn tls_without_a_plus_offer_sends_y_and_disable_sends_n() {
    // The client could bind, the server offered no PLUS: "y".
    let mut auth = Authenticator::new(settings(ChannelBinding::Prefer, Some(tls_cert())));
    let (mechanism, _) = scram_until_final(&mut auth, PLAIN, b"y,,".to_vec());
    assert_eq!(mechanism, "SCRAM-SHA-256");
    assert!(ok(&mut auth).is_ok());

    // channel_binding=disable: plain SCRAM even when PLUS is offered, "n".
    let mut auth = Authenticator::new(settings(ChannelBinding::Disable, Some(tls_cert())));
    let (mechanism, _) = scram_until_final(&mut auth, BOTH, b"n,,".to_vec());
    assert_eq!(mechanism, "SCRAM-SHA-256");
    assert!(ok(&mut auth).is_ok());
}

#[test]
fn plus_offered_over_plain_text_is_refused() {
    for cb in [
        ChannelBinding::Disable,
        ChannelBinding::Prefer,
        ChannelBinding::Require,
    ] {
        let mut auth = Authenticator::new(settings(cb, None));
        let asked = Cell::new(false);
        let e = auth
            .step(&sasl(BOTH), || {
                asked.set(true);
                pw()
            })
            .unwrap_err();
        assert_eq!(e, AuthError::PlusWithoutTls);
        assert!(!asked.get());
    }
}

#[test]
fn a_huge_mechanism_list_is_cut_in_the_message() {
    let mut auth = Authenticator::new(settings(ChannelBinding::Prefer, None));
    let names = vec!["X".repeat(100_000); 3];
    let e = auth
        .step(&AuthRequest::Sasl { mechanisms: names }, pw)
        .unwrap_err();
    assert!(e.to_string().len() < 400, "{} bytes", e.to_string().len());
}

#[test]
fn unknown_mechanisms_only_are_refused() {
    let mut auth = Authenticator::new(settings(ChannelBinding::Prefer, None));
    let e = auth.step(&sasl(&["OAUTHBEARER"]), pw).unwrap_err();
    assert_eq!(
        e.to_string(),
        "none of the server's SASL authentication mechanisms are supported (offered: OAUTHBEARER)"
    );
}

/// One request under `settings`; whether the password was asked for.
fn first_step(settings: AuthSettings, request: &AuthRequest) -> (Result<Step, AuthError>, bool) {
    let mut auth = Authenticator::new(settings);
    let asked = Cell::new(false);
    let r = auth.step(request, || {
        asked.set(true);
        pw()
    });
    (r, asked.get())
}

#[test]
fn channel_binding_require_refuses_every_other_method_before_the_password() {
    let require = |tls| settings(ChannelBinding::Require, tls);
    for tls in [None, Some(tls_cert())] {
        for request in [AuthRequest::Cleartext, AuthRequest::Md5 { salt: [7; 4] }] {
            let (r, asked) = first_step(require(tls.clone()), &request);
            let e = r.unwrap_err();
            assert!(
                e.to_string().starts_with(
                    "channel binding required but not supported by server's authentication request"
                ),
                "{e}"
            );
            assert!(!asked, "{request:?}: the password was looked up");
        }
        // Trust: AuthenticationOk without any exchange.
        let (r, _) = first_step(require(tls.clone()), &AuthRequest::Ok);
        assert_eq!(r.unwrap_err(), AuthError::ChannelBindingNotUsed);
        assert_eq!(
            AuthError::ChannelBindingNotUsed.to_string(),
            "channel binding required, but server authenticated client without channel binding"
        );
    }
    // SCRAM without PLUS: over plain text (nothing to bind to) and over TLS
    // when the server does not offer it.
    for tls in [None, Some(tls_cert())] {
        let (r, asked) = first_step(require(tls), &sasl(PLAIN));
        let e = r.unwrap_err();
        assert!(
            matches!(e, AuthError::ChannelBindingNotOffered { .. }),
            "{e}"
        );
        assert!(e.to_string().starts_with("channel binding is required, but server did not offer an authentication method that supports channel binding"));
        assert!(!asked);
    }
}

#[test]
fn channel_binding_prefer_and_disable_accept_every_method() {
    for cb in [ChannelBinding::Prefer, ChannelBinding::Disable] {
        for tls in [None, Some(tls_cert())] {
            let (r, _) = first_step(settings(cb, tls.clone()), &AuthRequest::Ok);
            assert!(matches!(r, Ok(Step::Authenticated)));
            let (r, asked) = first_step(settings(cb, tls.clone()), &AuthRequest::Cleartext);
            assert_eq!(payload(r.unwrap()), format!("{PASSWORD}\0").into_bytes());
            assert!(asked);
            let md5 = AuthRequest::Md5 { salt: [1, 2, 3, 4] };
            let (r, _) = first_step(settings(cb, tls), &md5);
            let sent = payload(r.unwrap());
            let expected = md5_hash(USER.as_bytes(), PASSWORD.as_bytes(), [1, 2, 3, 4]);
            assert_eq!(sent, format!("{expected}\0").into_bytes());
            assert!(expected.starts_with("md5") && expected.len() == 35);
        }
    }
}

#[test]
fn a_missing_password_is_reported_as_such() {
    for request in [
        AuthRequest::Cleartext,
        AuthRequest::Md5 { salt: [0; 4] },
        sasl(PLAIN),
    ] {
        let mut auth = Authenticator::new(settings(ChannelBinding::Prefer, None));
        assert_eq!(
            auth.step(&request, || None).unwrap_err(),
            AuthError::NoPassword
        );
    }
}

/// `require_auth` × request: Ok(()) when the request is answered, else the
/// reason in libpq's message.
fn require_auth_case(required: &str, request: AuthRequest) -> Result<(), String> {
    let (r, asked) = first_step(with_require(required), &request);
    match r {
        Ok(_) => Ok(()),
        Err(e) => {
            assert!(!asked, "{required}: password looked up before refusing");
            Err(e.to_string())
        }
    }
}

#[test]
fn require_auth_refuses_a_cleartext_request_before_the_password() {
    assert_eq!(
        require_auth_case("scram-sha-256", AuthRequest::Cleartext),
        Err(
            "authentication method requirement \"scram-sha-256\" failed: server requested a cleartext password"
                .into()
        )
    );
}

#[test]
fn require_auth_lists_and_negations() {
    let md5 = || AuthRequest::Md5 { salt: [0; 4] };
    let refused = |reason: &str, list: &str| {
        Err(format!(
            "authentication method requirement \"{list}\" failed: {reason}"
        ))
    };
    let cases: Vec<(&str, AuthRequest, Result<(), String>)> = vec![
        ("scram-sha-256", sasl(PLAIN), Ok(())),
        (
            "scram-sha-256",
            md5(),
            refused("server requested a hashed password", "scram-sha-256"),
        ),
        (
            "scram-sha-256",
            AuthRequest::Ok,
            refused("server did not complete authentication", "scram-sha-256"),
        ),
        ("password,md5", md5(), Ok(())),
        ("password,md5", AuthRequest::Cleartext, Ok(())),
        (
            "password,md5",
            sasl(PLAIN),
            refused("server requested SASL authentication", "password,md5"),
        ),
        ("none", AuthRequest::Ok, Ok(())),
        (
            "none",
            AuthRequest::Cleartext,
            refused("server requested a cleartext password", "none"),
        ),
        ("md5,none", AuthRequest::Ok, Ok(())),
        (
            "!md5",
            md5(),
            refused("server requested a hashed password", "!md5"),
        ),
        ("!md5", AuthRequest::Cleartext, Ok(())),
        ("!md5", sasl(PLAIN), Ok(())),
        ("!md5", AuthRequest::Ok, Ok(())),
        (
            "!password,!md5",
            AuthRequest::Cleartext,
            refused("server requested a cleartext password", "!password,!md5"),
        ),
        ("!password,!md5", sasl(PLAIN), Ok(())),
        (
            "!none",
            AuthRequest::Ok,
            refused("server did not complete authentication", "!none"),
        ),
        ("!none", md5(), Ok(())),
        (
            "scram-sha-256",
            AuthRequest::Unsupported(7),
            refused("server requested GSSAPI authentication", "scram-sha-256"),
        ),
        (
            "scram-sha-256",
            AuthRequest::Unsupported(9),
            refused("server requested SSPI authentication", "scram-sha-256"),
        ),
        (
            "!md5",
            AuthRequest::Unsupported(42),
            refused("server requested an unknown authentication type", "!md5"),
        ),
    ];
    for (list, request, expected) in cases {
        let shown = format!("{list} / {request:?}");
        assert_eq!(require_auth_case(list, request), expected, "{shown}");
    }
    // A negated list lets GSSAPI through to be refused as unsupported.
    let (r, _) = first_step(with_require("!md5"), &AuthRequest::Unsupported(7));
    assert_eq!(
        r.unwrap_err().to_string(),
        "GSSAPI authentication requested by the server is not supported by walrcv"
    );
}

#[test]
fn require_auth_judges_authentication_ok_by_what_was_completed() {
    // A password sent: the client finished its part.
    let mut auth = Authenticator::new(with_require("password"));
    auth.step(&AuthRequest::Cleartext, pw).unwrap();
    assert!(ok(&mut auth).is_ok());

    // SCRAM completed and verified.
    let mut auth = Authenticator::new(with_require("scram-sha-256"));
    scram_until_final(&mut auth, PLAIN, b"n,,".to_vec());
    assert!(ok(&mut auth).is_ok());

    // SCRAM cut short: libpq's require_auth message comes first.
    let mut auth = Authenticator::new(with_require("scram-sha-256"));
    auth.step(&sasl(PLAIN), pw).unwrap();
    let e = ok(&mut auth).unwrap_err();
    assert_eq!(
        e.to_string(),
        "authentication method requirement \"scram-sha-256\" failed: server did not complete authentication"
    );
}

#[test]
fn require_auth_and_channel_binding_together() {
    let both = |tls| AuthSettings {
        require_auth: Some(require("scram-sha-256")),
        ..settings(ChannelBinding::Require, tls)
    };
    let cert = tls_cert();
    let mut cbind = b"p=tls-server-end-point,,".to_vec();
    cbind.extend_from_slice(&Sha384::digest(&cert));
    let mut auth = Authenticator::new(both(Some(cert)));
    scram_until_final(&mut auth, BOTH, cbind);
    assert!(ok(&mut auth).is_ok());

    // require_auth is judged first, as in libpq.
    let (r, _) = first_step(both(None), &AuthRequest::Md5 { salt: [0; 4] });
    assert!(matches!(
        r.unwrap_err(),
        AuthError::RequirementFailed { .. }
    ));
}

#[test]
fn a_certificate_without_a_binding_hash_fails_plus() {
    let cert = self_signed(&rcgen::PKCS_ED25519);
    let (r, _) = first_step(settings(ChannelBinding::Prefer, Some(cert)), &sasl(BOTH));
    assert!(
        matches!(
            r,
            Err(AuthError::ChannelBindingData(CertHashError::NoHash(_)))
        ),
        "{r:?}"
    );
}

#[test]
fn require_auth_is_written_back_as_given() {
    assert_eq!(
        require_auth_text(&require("!password,!md5")),
        "!password,!md5"
    );
    assert_eq!(
        require_auth_text(&require("scram-sha-256,none")),
        "scram-sha-256,none"
    );
}

/// A `Write` into a shared buffer, for the trace subscriber.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn no_secret_reaches_the_trace_output_or_debug_formatting() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let cert = tls_cert();
    let mut cbind = b"p=tls-server-end-point,,".to_vec();
    cbind.extend_from_slice(&Sha384::digest(&cert));
    let mut secrets = vec![PASSWORD.to_string()];
    // Call sites first reached on another test's thread would be cached as
    // "never" while this is the only registered dispatcher (see
    // tests/tls.rs): a second one makes tracing-core ask every one.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    tracing::subscriber::with_default(subscriber, || {
        // A full SCRAM-SHA-256-PLUS exchange, every step traced with Debug.
        let mut auth = Authenticator::new(settings(ChannelBinding::Require, Some(cert)));
        let mut server = ScramServer::new(cbind);
        let step = auth.step(&sasl(BOTH), pw).unwrap();
        tracing::trace!("{step:?} {auth:?}");
        let (_, first) = initial_response(step);
        let step = auth.step(&server.server_first(&first), pw).unwrap();
        tracing::trace!("{step:?} {auth:?}");
        let client_final = String::from_utf8(payload(step)).unwrap();
        secrets.push(client_final.rsplit_once(",p=").unwrap().1.to_string());
        secrets.push(B64.encode(&server.salted_password));
        secrets.push(B64.encode(hmac(&server.salted_password, b"Client Key")));
        let step = auth.step(&server.server_final(&client_final), pw).unwrap();
        tracing::trace!("{step:?} {auth:?}");
        let step = ok(&mut auth).unwrap();
        tracing::trace!("{step:?} {auth:?}");

        // A cleartext and an MD5 password.
        for request in [AuthRequest::Cleartext, AuthRequest::Md5 { salt: [9; 4] }] {
            let mut auth = Authenticator::new(settings(ChannelBinding::Prefer, None));
            let step = auth.step(&request, pw).unwrap();
            tracing::trace!("{step:?} {auth:?}");
        }
    });
    secrets.push(md5_hash(USER.as_bytes(), PASSWORD.as_bytes(), [9; 4]));
    let out = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(out.contains("SCRAM-SHA-256-PLUS chosen"), "{out}");
    assert!(out.contains("server signature verified"), "{out}");
    assert!(out.contains("PasswordMessage ("), "{out}");
    for secret in &secrets {
        assert!(!out.contains(secret.as_str()), "{secret:?} in:\n{out}");
    }
    assert!(!out.contains("s3cret"), "{out}");
}

/// The iteration count is checked before any key derivation: above the cap
/// (or too large for any integer type) is refused naming the count; at the
/// cap, and a count that is not a number, go on to postgres-protocol (which
/// derives, or refuses the malformed message).
#[test]
fn scram_iteration_counts_above_the_cap_are_refused_before_deriving() {
    for (count, refused) in [
        ("4096", false),
        ("100000", false),
        ("100001", true),
        ("4294967295", true),
        ("99999999999999999999", false),
        ("x", false),
    ] {
        let message = format!("r=abc,s=c2FsdA==,i={count}");
        let got = check_iteration_count(message.as_bytes());
        if refused {
            assert_eq!(
                got,
                Err(AuthError::ScramIterations {
                    count: count.parse().unwrap(),
                    max: MAX_SCRAM_ITERATIONS
                }),
                "{count}"
            );
        } else {
            assert_eq!(got, Ok(()), "{count}");
        }
    }
}
