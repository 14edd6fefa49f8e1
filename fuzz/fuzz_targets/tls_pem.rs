//! Arbitrary bytes as the private key file walrcv reads for TLS and as the server's answer
//! to SSLRequest: nothing panics, an encrypted key is never taken for a
//! usable one, and TLS is never given up on when it was required.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walrcv::conninfo::SslMode;
use walrcv::pgwire::tls::{pem_key_is_encrypted, private_key_from_bytes, ssl_response, SslResponse};

fuzz_target!(|data: &[u8]| {
    // Never a terminal prompt for a password, never a panic.
    let key = private_key_from_bytes(data, None);
    if pem_key_is_encrypted(&String::from_utf8_lossy(data)) {
        assert!(key.is_err());
    }
    if let Some(&byte) = data.first() {
        for mode in [SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull] {
            assert_ne!(
                ssl_response(mode, byte).ok(),
                Some(SslResponse::ContinuePlain)
            );
        }
    }
});
