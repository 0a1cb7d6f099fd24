//! JWS compact serialization (RFC 7515 §7.1) with *ring*: the one place
//! where DPoP proofs ([`crate::dpop`]) and JWT assertions
//! ([`crate::assertion`]) are signed. No cryptography is written here: ring
//! signs, `base64` encodes.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde_json::{Map, Value, json};

/// A key that signs JWS, with its algorithm.
pub(crate) enum SigningKey {
    /// ECDSA P-256 with SHA-256 (`ES256`).
    Es256(EcdsaKeyPair),
    /// Ed25519 (`EdDSA`).
    EdDsa(Ed25519KeyPair),
    /// RSA with SHA-256: PKCS#1 v1.5 (`RS256`) or PSS (`PS256`).
    Rsa { pair: RsaKeyPair, pss: bool },
    /// HMAC SHA-256 (`HS256`).
    Hs256(ring::hmac::Key),
}

/// Signing failed (ring refused; it does not say why).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SignError;

impl SigningKey {
    /// The JWS `alg`.
    pub(crate) fn algorithm(&self) -> &'static str {
        match self {
            SigningKey::Es256(_) => "ES256",
            SigningKey::EdDsa(_) => "EdDSA",
            SigningKey::Rsa { pss: false, .. } => "RS256",
            SigningKey::Rsa { pss: true, .. } => "PS256",
            SigningKey::Hs256(_) => "HS256",
        }
    }

    /// The public key as a JWK (no private member); `None` for HMAC.
    pub(crate) fn public_jwk(&self) -> Option<Value> {
        Some(match self {
            SigningKey::Es256(pair) => {
                // An uncompressed point: 0x04, then x and y, 32 bytes each.
                let point = pair.public_key().as_ref();
                if point.len() != 65 {
                    return None;
                }
                json!({
                    "crv": "P-256",
                    "kty": "EC",
                    "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                    "y": URL_SAFE_NO_PAD.encode(&point[33..]),
                })
            }
            SigningKey::EdDsa(pair) => json!({
                "crv": "Ed25519",
                "kty": "OKP",
                "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
            }),
            SigningKey::Rsa { pair, .. } => {
                let public = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
                json!({
                    "e": URL_SAFE_NO_PAD.encode(&public.e),
                    "kty": "RSA",
                    "n": URL_SAFE_NO_PAD.encode(&public.n),
                })
            }
            SigningKey::Hs256(_) => return None,
        })
    }

    fn sign(&self, rng: &SystemRandom, input: &[u8]) -> Result<Vec<u8>, SignError> {
        Ok(match self {
            SigningKey::Es256(pair) => pair
                .sign(rng, input)
                .map_err(|_| SignError)?
                .as_ref()
                .to_vec(),
            SigningKey::EdDsa(pair) => pair.sign(input).as_ref().to_vec(),
            SigningKey::Rsa { pair, pss } => {
                let padding: &'static dyn ring::signature::RsaEncoding = if *pss {
                    &ring::signature::RSA_PSS_SHA256
                } else {
                    &ring::signature::RSA_PKCS1_SHA256
                };
                let mut signature = vec![0; pair.public().modulus_len()];
                pair.sign(padding, rng, input, &mut signature)
                    .map_err(|_| SignError)?;
                signature
            }
            SigningKey::Hs256(key) => ring::hmac::sign(key, input).as_ref().to_vec(),
        })
    }
}

/// The JWK SHA-256 thumbprint (RFC 7638) of a public JWK, base64url: the
/// required members in lexicographic order, no whitespace (serde_json's map
/// keeps keys sorted, and [`SigningKey::public_jwk`] holds only those).
pub(crate) fn thumbprint(jwk: &Value) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, jwk.to_string().as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// `header.payload.signature`, each part base64url without padding.
pub(crate) fn compact(
    key: &SigningKey,
    rng: &SystemRandom,
    header: &Value,
    payload: &str,
) -> Result<String, SignError> {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature = key.sign(rng, input.as_bytes())?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

/// 16 random bytes from the system, hex: a unique `jti`.
pub(crate) fn random_id(rng: &SystemRandom) -> Result<String, SignError> {
    let mut id = [0u8; 16];
    rng.fill(&mut id).map_err(|_| SignError)?;
    Ok(id.iter().map(|b| format!("{b:02x}")).collect())
}

/// The payload of a compact JWS or JWT, without checking its signature
/// (which is not ours to check): for an assertion made elsewhere, to see
/// that it is one and when it expires. The error says what is wrong and
/// never quotes the text.
pub(crate) fn unverified_claims(jwt: &str) -> Result<Map<String, Value>, &'static str> {
    let mut parts = jwt.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("it is not a JWT (three dot-separated parts)");
    };
    if header.is_empty() || payload.is_empty() || signature.is_empty() {
        return Err("it is not a signed JWT (a part is empty)");
    }
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part.trim_end_matches('='));
    let header = decode(header).map_err(|_| "its header is not base64url")?;
    if !matches!(
        serde_json::from_slice::<Value>(&header),
        Ok(Value::Object(_))
    ) {
        return Err("its header is not a JSON object");
    }
    let payload = decode(payload).map_err(|_| "its payload is not base64url")?;
    match serde_json::from_slice::<Value>(&payload) {
        Ok(Value::Object(claims)) => Ok(claims),
        _ => Err("its payload is not a JSON object"),
    }
}
