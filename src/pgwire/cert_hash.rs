//! The `tls-server-end-point` channel binding data (RFC 5929 §4.1): a hash of
//! the server's end-entity certificate, with the hash function of the
//! certificate's signature algorithm, except that MD5 and SHA-1 are replaced
//! by SHA-256. PostgreSQL computes it the same way on both sides
//! (`be_tls_get_certificate_hash` in be-secure-openssl.c,
//! `pgtls_get_peer_certificate_hash` in fe-secure-openssl.c): a certificate
//! whose signature algorithm names no such hash (Ed25519) cannot be bound to,
//! and the exchange fails there too. RSASSA-PSS names its hash in its
//! parameters (default SHA-1, so SHA-256 here); PostgreSQL 17+ takes it from
//! there (`X509_get_signature_info`), older servers cannot bind to such a
//! certificate at all.
//!
//! Sans-IO: certificate bytes in, hash bytes out.

use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};
use x509_cert::der::asn1::ObjectIdentifier as Oid;
use x509_cert::der::Decode;

/// Why no binding data can be derived from a certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertHashError {
    #[error("the server certificate is not valid DER X.509: {0}")]
    Malformed(String),
    #[error(
        "the server certificate's signature algorithm {0} names no hash usable for \
         tls-server-end-point channel binding"
    )]
    NoHash(String),
}

/// The hash functions RFC 5929 can end up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingHash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

// Signature algorithm OIDs (RFC 3279, 4055, 5754, 5758).
const MD5_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.4");
const SHA1_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.5");
const SHA256_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.11");
const SHA384_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.12");
const SHA512_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.13");
const SHA224_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.14");
const SHA1_ECDSA: Oid = Oid::new_unwrap("1.2.840.10045.4.1");
const SHA224_ECDSA: Oid = Oid::new_unwrap("1.2.840.10045.4.3.1");
const SHA256_ECDSA: Oid = Oid::new_unwrap("1.2.840.10045.4.3.2");
const SHA384_ECDSA: Oid = Oid::new_unwrap("1.2.840.10045.4.3.3");
const SHA512_ECDSA: Oid = Oid::new_unwrap("1.2.840.10045.4.3.4");
const SHA1_DSA: Oid = Oid::new_unwrap("1.2.840.10040.4.3");
const SHA224_DSA: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.3.1");
const SHA256_DSA: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.3.2");
const RSASSA_PSS: Oid = Oid::new_unwrap("1.2.840.113549.1.1.10");
// Hash algorithm OIDs, as RSASSA-PSS parameters name them (RFC 4055, 5754).
const SHA1: Oid = Oid::new_unwrap("1.3.14.3.2.26");
const SHA224: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.4");
const SHA256: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.1");
const SHA384: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.2");
const SHA512: Oid = Oid::new_unwrap("2.16.840.1.101.3.4.2.3");

/// The hash RFC 5929 §4.1 assigns to a signature algorithm: its own, with
/// MD5 and SHA-1 upgraded to SHA-256; `None` when it names no hash.
pub fn binding_hash_for(signature_algorithm: &Oid) -> Option<BindingHash> {
    let oid = *signature_algorithm;
    Some(match oid {
        MD5_RSA | SHA1_RSA | SHA1_ECDSA | SHA1_DSA => BindingHash::Sha256,
        SHA224_RSA | SHA224_ECDSA | SHA224_DSA => BindingHash::Sha224,
        SHA256_RSA | SHA256_ECDSA | SHA256_DSA => BindingHash::Sha256,
        SHA384_RSA | SHA384_ECDSA => BindingHash::Sha384,
        SHA512_RSA | SHA512_ECDSA => BindingHash::Sha512,
        _ => return None,
    })
}

/// The hash of RSASSA-PSS parameters (RFC 4055: `hashAlgorithm [0]`,
/// default SHA-1), upgraded as RFC 5929 says; `None` when the parameters do
/// not parse or name no known hash.
pub fn binding_hash_for_pss(parameters: Option<&[u8]>) -> Option<BindingHash> {
    // RSASSA-PSS-params ::= SEQUENCE { hashAlgorithm [0] EXPLICIT
    //   AlgorithmIdentifier DEFAULT sha1, ... }
    let (tag, params, _) = der_element(parameters?)?;
    if tag != 0x30 {
        return None;
    }
    let hash = match der_element(params) {
        Some((0xa0, explicit, _)) => {
            let (tag, algorithm, _) = der_element(explicit)?;
            let (oid_tag, oid, _) = der_element(algorithm)?;
            if tag != 0x30 || oid_tag != 0x06 {
                return None;
            }
            Oid::from_bytes(oid).ok()?
        }
        _ => SHA1,
    };
    Some(match hash {
        SHA1 | SHA256 => BindingHash::Sha256,
        SHA224 => BindingHash::Sha224,
        SHA384 => BindingHash::Sha384,
        SHA512 => BindingHash::Sha512,
        _ => return None,
    })
}

/// One DER element: its tag, its contents and what follows it.
fn der_element(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The signature algorithm of a DER certificate.
pub fn signature_algorithm(cert_der: &[u8]) -> Result<Oid, CertHashError> {
    let cert = x509_cert::Certificate::from_der(cert_der)
        .map_err(|e| CertHashError::Malformed(e.to_string()))?;
    Ok(cert.signature_algorithm.oid)
}

/// The hash binding data is made with for a DER certificate.
fn binding_hash_of(cert_der: &[u8]) -> Result<BindingHash, CertHashError> {
    use x509_cert::der::Encode;
    let cert = x509_cert::Certificate::from_der(cert_der)
        .map_err(|e| CertHashError::Malformed(e.to_string()))?;
    let algorithm = &cert.signature_algorithm;
    let hash = if algorithm.oid == RSASSA_PSS {
        let parameters = algorithm.parameters.as_ref().and_then(|p| p.to_der().ok());
        binding_hash_for_pss(parameters.as_deref())
    } else {
        binding_hash_for(&algorithm.oid)
    };
    hash.ok_or_else(|| CertHashError::NoHash(algorithm.oid.to_string()))
}

/// The `tls-server-end-point` binding data of a DER certificate.
pub fn tls_server_end_point(cert_der: &[u8]) -> Result<Vec<u8>, CertHashError> {
    let hash = binding_hash_of(cert_der)?;
    Ok(match hash {
        BindingHash::Sha224 => Sha224::digest(cert_der).to_vec(),
        BindingHash::Sha256 => Sha256::digest(cert_der).to_vec(),
        BindingHash::Sha384 => Sha384::digest(cert_der).to_vec(),
        BindingHash::Sha512 => Sha512::digest(cert_der).to_vec(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SignatureAlgorithm};

    /// A fixed RSA key (ring can sign with RSA but not make RSA keys).
    const RSA_KEY: &str = include_str!("../../testdata/certs/rsa2048.key");

    /// A self-signed certificate (DER) signed with `alg`.
    pub(crate) fn self_signed(alg: &'static SignatureAlgorithm) -> Vec<u8> {
        let key = if [
            &rcgen::PKCS_RSA_SHA256,
            &rcgen::PKCS_RSA_SHA384,
            &rcgen::PKCS_RSA_SHA512,
        ]
        .contains(&alg)
        {
            KeyPair::from_pem_and_sign_algo(RSA_KEY, alg).unwrap()
        } else {
            KeyPair::generate_for(alg).unwrap()
        };
        let params = CertificateParams::new(vec!["db.example".to_string()]).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn each_signature_hash_gives_its_own_binding_hash() {
        for (alg, len) in [
            (&rcgen::PKCS_RSA_SHA256, 32),
            (&rcgen::PKCS_RSA_SHA384, 48),
            (&rcgen::PKCS_RSA_SHA512, 64),
            (&rcgen::PKCS_ECDSA_P256_SHA256, 32),
            (&rcgen::PKCS_ECDSA_P384_SHA384, 48),
        ] {
            let der = self_signed(alg);
            let data = tls_server_end_point(&der).unwrap();
            assert_eq!(data.len(), len, "{alg:?}");
            let expected = match len {
                32 => Sha256::digest(&der).to_vec(),
                48 => Sha384::digest(&der).to_vec(),
                _ => Sha512::digest(&der).to_vec(),
            };
            assert_eq!(data, expected, "{alg:?}");
        }
    }

    #[test]
    fn md5_and_sha1_signatures_bind_with_sha256() {
        // Made by `openssl req -x509 -sha1` / `-md5` (rcgen cannot sign so).
        for name in ["rsa-sha1.der", "rsa-md5.der"] {
            let path = format!("{}/testdata/certs/{name}", env!("CARGO_MANIFEST_DIR"));
            let der = std::fs::read(&path).unwrap();
            assert_eq!(
                tls_server_end_point(&der).unwrap(),
                Sha256::digest(&der).to_vec(),
                "{name}"
            );
        }
        assert_eq!(binding_hash_for(&SHA1_ECDSA), Some(BindingHash::Sha256));
        assert_eq!(binding_hash_for(&SHA224_RSA), Some(BindingHash::Sha224));
    }

    #[test]
    fn rsa_pss_binds_with_the_hash_of_its_parameters() {
        // SHA-1 (the parameters' default) is upgraded to SHA-256.
        for name in ["rsa-pss-sha256.der", "rsa-pss-sha1.der"] {
            let path = format!("{}/testdata/certs/{name}", env!("CARGO_MANIFEST_DIR"));
            let der = std::fs::read(&path).unwrap();
            assert_eq!(
                tls_server_end_point(&der).unwrap(),
                Sha256::digest(&der).to_vec(),
                "{name}"
            );
        }
        let path = format!(
            "{}/testdata/certs/rsa-pss-sha384.der",
            env!("CARGO_MANIFEST_DIR")
        );
        let der = std::fs::read(&path).unwrap();
        assert_eq!(
            tls_server_end_point(&der).unwrap(),
            Sha384::digest(&der).to_vec()
        );
        assert_eq!(binding_hash_for_pss(None), None);
        assert_eq!(
            binding_hash_for_pss(Some(b"\x30\x00")),
            Some(BindingHash::Sha256)
        );
        assert_eq!(binding_hash_for_pss(Some(b"junk")), None);
    }

    #[test]
    fn ed25519_and_garbage_cannot_be_bound() {
        let der = self_signed(&rcgen::PKCS_ED25519);
        let e = tls_server_end_point(&der).unwrap_err();
        assert_eq!(e, CertHashError::NoHash("1.3.101.112".into()), "{e}");
        assert!(matches!(
            tls_server_end_point(b"not a certificate"),
            Err(CertHashError::Malformed(_))
        ));
        assert!(matches!(
            tls_server_end_point(&[]),
            Err(CertHashError::Malformed(_))
        ));
    }
}
