//! Arbitrary bytes as the PEM files walrcv reads for TLS (root
//! certificates, client certificate and key, CRL) and as the server's answer
//! to SSLRequest: nothing panics, an encrypted key is never taken for a
//! usable one, and TLS is never given up on when it was required.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walrcv::conninfo::SslMode;
use walrcv::pgwire::tls::{
    certificates_from_pem, crls_from_pem, pem_key_is_encrypted, private_key_from_pem, ssl_response,
    KeyPemError, SslResponse,
};

fuzz_target!(|data: &[u8]| {
    let _ = certificates_from_pem(data);
    let _ = crls_from_pem(data);
    let key = private_key_from_pem(data);
    if pem_key_is_encrypted(&String::from_utf8_lossy(data)) {
        assert_eq!(key.err(), Some(KeyPemError::Encrypted));
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
