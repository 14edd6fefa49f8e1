//! Arbitrary backend messages from a hostile server into the authentication
//! state machine (`walrcv::pgwire::auth`), under every `channel_binding`, a
//! few `require_auth` lists, over plain text and over "TLS" (a fixed server
//! certificate).
//!
//! Properties:
//! - the state machine never panics, and its errors and steps format;
//! - after an error every further request is refused;
//! - under `channel_binding=require`, or `require_auth=scram-sha-256`, the
//!   client is never authenticated (that needs a server signature made with
//!   the password, which the fuzzer cannot forge) and never sends a
//!   PasswordMessage;
//! - the password never appears in an error or a formatted step (unless the
//!   server's own text, e.g. a mechanism name, carried it).
//!
//! Input layout: 1 settings byte (bits 0-1 channel_binding, bits 2-3
//! require_auth: none / `scram-sha-256` / `!md5` / `password,none`, bit 4
//! TLS), then backend messages as a server sends them.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use walrcv::conninfo::{AuthMethod, ChannelBinding, RequireAuth};
use walrcv::pgwire::auth::{AuthSettings, Authenticator, Step};
use walrcv::pgwire::backend::{parse, BackendMessage};

const PASSWORD: &str = "Zq9sEcReTpw";
const CERT: &[u8] = include_bytes!("../../testdata/certs/rsa-sha1.der");

fn settings(byte: u8) -> AuthSettings {
    let channel_binding = match byte & 3 {
        0 => ChannelBinding::Disable,
        1 => ChannelBinding::Prefer,
        _ => ChannelBinding::Require,
    };
    let require_auth = match (byte >> 2) & 3 {
        0 => None,
        1 => Some(RequireAuth {
            negated: false,
            methods: vec![AuthMethod::ScramSha256],
        }),
        2 => Some(RequireAuth {
            negated: true,
            methods: vec![AuthMethod::Md5],
        }),
        _ => Some(RequireAuth {
            negated: false,
            methods: vec![AuthMethod::Password, AuthMethod::None],
        }),
    };
    AuthSettings {
        user: "walrcv".into(),
        channel_binding,
        require_auth,
        tls_server_certificate: (byte & 16 != 0).then(|| CERT.to_vec()),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let settings = settings(first);
    let strict = settings.channel_binding == ChannelBinding::Require || (first >> 2) & 3 == 1;
    // Server text (mechanism names) is echoed in errors: an input carrying
    // the password would show it through no fault of the client.
    let echoes_password = rest
        .windows(PASSWORD.len())
        .any(|w| w == PASSWORD.as_bytes());
    let leaks = |shown: &str| !echoes_password && shown.contains(PASSWORD);
    let mut auth = Authenticator::new(settings);
    let mut buf = BytesMut::from(rest);
    let mut failed = false;
    while let Ok(Some(message)) = parse(&mut buf) {
        let BackendMessage::Authentication(request) = message else {
            continue;
        };
        match auth.step(&request, || Some(PASSWORD.to_string())) {
            Ok(step) => {
                assert!(!failed, "a request answered after an error");
                let shown = format!("{step:?}");
                assert!(!leaks(&shown), "{shown}");
                if let Step::Send(m) = &step {
                    assert!(!(strict && m.kind() == "PasswordMessage"));
                }
            }
            Err(e) => {
                failed = true;
                let shown = format!("{e} {e:?}");
                assert!(!leaks(&shown), "{shown}");
            }
        }
        assert!(!(strict && auth.is_authenticated()));
    }
});
