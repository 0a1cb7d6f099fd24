//! DPoP keys (RFC 9449): the key a watcher proves possession of, and the
//! proofs it signs, with *ring* (ES256 or EdDSA). What each proof claims is
//! decided by the core ([`DpopClaims`]); this module only signs.
//!
//! ```
//! use tokenkeeper_driver::dpop::DpopKey;
//!
//! let key = DpopKey::generate_es256()?;
//! // The RFC 7638 thumbprint tokens are bound to (`cnf.jkt`).
//! assert_eq!(key.thumbprint().len(), 43);
//! let proof = key.resource_proof("GET", &"https://api.example/orders?x=1".parse()?, "access-token", None, 1_700_000_000)?;
//! assert_eq!(proof.split('.').count(), 3);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair};
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject;
use serde_json::json;
use tokenkeeper_core::oauth2::dpop::DpopClaims;
use zeroize::Zeroizing;

use crate::jws::{self, SigningKey};

/// A DPoP signing key: ES256 (P-256) or EdDSA (Ed25519). Cheap to clone;
/// `Debug` shows the algorithm and the thumbprint only.
#[derive(Clone)]
pub struct DpopKey {
    inner: Arc<Inner>,
}

struct Inner {
    key: SigningKey,
    jwk: serde_json::Value,
    thumbprint: String,
    rng: SystemRandom,
}

/// A DPoP key could not be made, read or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("DPoP key: {0}")]
pub struct DpopKeyError(String);

impl fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopKey")
            .field("alg", &self.algorithm())
            .field("jkt", &self.inner.thumbprint)
            .finish()
    }
}

impl DpopKey {
    /// A new random P-256 key, for ES256 proofs.
    pub fn generate_es256() -> Result<Self, DpopKeyError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| DpopKeyError("could not generate a P-256 key".into()))?;
        Self::from_pkcs8_der(pkcs8.as_ref())
    }

    /// A new random Ed25519 key, for EdDSA proofs.
    pub fn generate_ed25519() -> Result<Self, DpopKeyError> {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| DpopKeyError("could not generate an Ed25519 key".into()))?;
        Self::from_pkcs8_der(pkcs8.as_ref())
    }

    /// A key from PKCS#8 DER: P-256 (ES256) or Ed25519 (EdDSA).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, DpopKeyError> {
        let rng = SystemRandom::new();
        let key = if let Ok(pair) =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
        {
            SigningKey::Es256(pair)
        } else if let Ok(pair) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            SigningKey::EdDsa(pair)
        } else {
            return Err(DpopKeyError(
                "not a PKCS#8 P-256 or Ed25519 private key (ES256 and EdDSA are supported)".into(),
            ));
        };
        let jwk = key
            .public_jwk()
            .ok_or_else(|| DpopKeyError("unexpected public key".into()))?;
        Ok(DpopKey {
            inner: Arc::new(Inner {
                thumbprint: jws::thumbprint(&jwk),
                key,
                jwk,
                rng,
            }),
        })
    }

    /// A key from a PEM `PRIVATE KEY` (PKCS#8) text.
    pub fn from_pkcs8_pem(pem: &[u8]) -> Result<Self, DpopKeyError> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem)
            .map_err(|_| DpopKeyError("no PEM `PRIVATE KEY` (PKCS#8) block".into()))?;
        Self::from_pkcs8_der(der.secret_pkcs8_der())
    }

    /// A key from a PEM file, as [`from_pkcs8_pem`](Self::from_pkcs8_pem).
    pub fn from_pkcs8_pem_file(path: impl AsRef<Path>) -> Result<Self, DpopKeyError> {
        let path = path.as_ref();
        let pem = Zeroizing::new(std::fs::read(path).map_err(|e| {
            DpopKeyError(format!("cannot read the key file {}: {e}", path.display()))
        })?);
        Self::from_pkcs8_pem(&pem)
    }

    /// The JWS algorithm: `ES256` or `EdDSA`.
    pub fn algorithm(&self) -> &'static str {
        self.inner.key.algorithm()
    }

    /// The public key as a JWK.
    pub fn public_jwk(&self) -> &serde_json::Value {
        &self.inner.jwk
    }

    /// The JWK SHA-256 thumbprint (RFC 7638), base64url: what DPoP-bound
    /// tokens name in `cnf.jkt`.
    pub fn thumbprint(&self) -> &str {
        &self.inner.thumbprint
    }

    /// Signs a proof with these claims: a JWT of type `dpop+jwt` whose
    /// header carries the public key.
    pub fn sign(&self, claims: &DpopClaims) -> Result<String, DpopKeyError> {
        let header = json!({ "typ": "dpop+jwt", "alg": self.algorithm(), "jwk": self.inner.jwk });
        jws::compact(&self.inner.key, &self.inner.rng, &header, &claims.to_json())
            .map_err(|_| DpopKeyError("signing failed".into()))
    }

    /// Signs the claims as [`sign`](Self::sign) does, with a new random
    /// `jti` in place of theirs, drawn from the system's randomness. The
    /// core draws its ids from the refresher's seedable generator, so two
    /// watchers given the same seed (or a process restarted with one) would
    /// send the same ids, which servers refuse as replays (RFC 9449 §11.1).
    pub fn sign_with_fresh_id(&self, claims: &DpopClaims) -> Result<String, DpopKeyError> {
        let mut claims = claims.clone();
        claims.jti = self.fresh_id()?;
        self.sign(&claims)
    }

    /// 16 random bytes from the system, hex.
    fn fresh_id(&self) -> Result<String, DpopKeyError> {
        jws::random_id(&self.inner.rng).map_err(|_| DpopKeyError("no randomness".into()))
    }

    /// A proof for a request to a resource server (RFC 9449 §7): `method`
    /// and `url` (its query and fragment left out), the hash of the access
    /// token it carries (`ath`), the server's `nonce` if it gave one, and a
    /// random `jti`, at `iat` (seconds since the epoch).
    pub fn resource_proof(
        &self,
        method: &str,
        url: &url::Url,
        access_token: &str,
        nonce: Option<&str>,
        iat: u64,
    ) -> Result<String, DpopKeyError> {
        let jti = self.fresh_id()?;
        let mut claims = DpopClaims::new(method, url, iat, jti, nonce.map(str::to_owned));
        claims.ath = Some(access_token_hash(access_token));
        self.sign(&claims)
    }
}

/// The `ath` of an access token: base64url of its SHA-256.
pub fn access_token_hash(access_token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, access_token.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{ECDSA_P256_SHA256_FIXED, ED25519, UnparsedPublicKey};

    fn parts(proof: &str) -> (serde_json::Value, serde_json::Value, Vec<u8>, String) {
        let mut it = proof.split('.');
        let (h, p, s) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        let decode = |x: &str| URL_SAFE_NO_PAD.decode(x).unwrap();
        (
            serde_json::from_slice(&decode(h)).unwrap(),
            serde_json::from_slice(&decode(p)).unwrap(),
            decode(s),
            format!("{h}.{p}"),
        )
    }

    #[test]
    fn proofs_verify_with_the_key_in_their_header() {
        for key in [
            DpopKey::generate_es256().unwrap(),
            DpopKey::generate_ed25519().unwrap(),
        ] {
            let url = url::Url::parse("https://api.example/orders?page=2").unwrap();
            let proof = key
                .resource_proof("GET", &url, "tok", Some("n-1"), 1_700_000_000)
                .unwrap();
            let (header, payload, signature, input) = parts(&proof);
            assert_eq!(header["typ"], "dpop+jwt");
            assert_eq!(header["alg"], key.algorithm());
            assert_eq!(&header["jwk"], key.public_jwk());
            assert_eq!(payload["htu"], "https://api.example/orders");
            assert_eq!(payload["htm"], "GET");
            assert_eq!(payload["nonce"], "n-1");
            assert_eq!(payload["ath"], access_token_hash("tok"));
            let public: Vec<u8> = match key.algorithm() {
                "ES256" => {
                    let mut p = vec![4];
                    p.extend(
                        URL_SAFE_NO_PAD
                            .decode(header["jwk"]["x"].as_str().unwrap())
                            .unwrap(),
                    );
                    p.extend(
                        URL_SAFE_NO_PAD
                            .decode(header["jwk"]["y"].as_str().unwrap())
                            .unwrap(),
                    );
                    p
                }
                _ => URL_SAFE_NO_PAD
                    .decode(header["jwk"]["x"].as_str().unwrap())
                    .unwrap(),
            };
            let alg: &dyn ring::signature::VerificationAlgorithm = match key.algorithm() {
                "ES256" => &ECDSA_P256_SHA256_FIXED,
                _ => &ED25519,
            };
            UnparsedPublicKey::new(alg, public)
                .verify(input.as_bytes(), &signature)
                .expect("a valid signature");
            // Two proofs never share an id.
            let again = key
                .resource_proof("GET", &url, "tok", None, 1_700_000_000)
                .unwrap();
            assert_ne!(parts(&again).1["jti"], payload["jti"]);
            // Its debug form names the algorithm and the public thumbprint,
            // and nothing else: no private key. (Asserting that the text
            // lacks some short base64 string failed now and then, when the
            // random key's thumbprint happened to contain it.)
            assert_eq!(
                format!("{key:?}"),
                format!(
                    "DpopKey {{ alg: {:?}, jkt: {:?} }}",
                    key.algorithm(),
                    key.inner.thumbprint
                )
            );
        }
    }

    #[test]
    fn thumbprints_follow_rfc7638() {
        // RFC 7638 §3.1's example key (an RSA key there; this checks the
        // canonical form: sorted members, no whitespace) on an EC key.
        let key = DpopKey::generate_es256().unwrap();
        let jwk = key.public_jwk();
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            jwk["x"].as_str().unwrap(),
            jwk["y"].as_str().unwrap()
        );
        let digest = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
        assert_eq!(key.thumbprint(), URL_SAFE_NO_PAD.encode(digest.as_ref()));
        assert!(DpopKey::from_pkcs8_pem(b"nothing").is_err());
        let err = DpopKey::from_pkcs8_pem_file("/nonexistent/key.pem").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/key.pem"), "{err}");
    }
}
