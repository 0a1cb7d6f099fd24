//! DPoP proofs (RFC 9449) as a server checks them: the token endpoint of the
//! [`Authority`](crate::Authority) uses this module, and a resource server of a test can too.
//!
//! [`verify_proof`] does the checks of RFC 9449 §4.3 that need no memory: the proof is a
//! well-formed JWT of type `dpop+jwt`, signed with an asymmetric algorithm this module supports
//! (`ES256` on P-256, `EdDSA`/`Ed25519` on Ed25519; anything else is refused as unsupported)
//! by the public key in its `jwk` header (which must hold no private part), for this method
//! and URL (query and fragment left out), made within a window around now, and, for a
//! resource request, naming the access token it travels with (`ath`). What needs memory is
//! left to the caller: whether the `jti` was seen before ([`JtiCache`]) and whether the
//! `nonce` is one the server handed out.
//!
//! The checks are written from the RFC with *ring*; they share no code with the proofs'
//! signer in `tokenkeeper-driver`.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::signature::{ECDSA_P256_SHA256_FIXED, ED25519, UnparsedPublicKey};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use super::codec::{base64_decode, base64url_encode};

/// The longest proof read; longer ones are malformed.
const MAX_PROOF_BYTES: usize = 8 * 1024;

/// The window around now in which a proof's `iat` is accepted by default.
pub const DEFAULT_PROOF_WINDOW: Duration = Duration::from_secs(60);

/// Whether and how the authority's token endpoint asks DPoP proofs for its nonce
/// (RFC 9449 §8).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DpopNonces {
    /// No nonce is needed (the default); a nonce in a proof is ignored.
    #[default]
    NotRequired,
    /// Every proof must carry the current nonce, else the answer is `400 use_dpop_nonce` with
    /// the nonce in a `DPoP-Nonce` header. Successful answers to DPoP requests carry it too.
    /// It changes only when the test calls
    /// [`Authority::rotate_dpop_nonce`](crate::Authority::rotate_dpop_nonce).
    Required,
    /// Like [`Required`](DpopNonces::Required), and each token issued to a DPoP request uses
    /// the nonce up: its answer carries a new one, which the next proof must name. A client
    /// that keeps sending the first nonce it was given is refused every time after that.
    FreshPerToken,
}

impl DpopNonces {
    /// Whether proofs must carry a nonce.
    pub fn required(self) -> bool {
        !matches!(self, DpopNonces::NotRequired)
    }
}

/// What a DPoP proof says: its header's algorithm and key, and its claims.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DpopProof {
    /// The `alg` of its header.
    pub alg: String,
    /// The public key of its header (`jwk`).
    pub jwk: Value,
    /// The key's JWK SHA-256 thumbprint (RFC 7638), base64url: what a token bound to it names
    /// in `cnf.jkt`.
    pub jkt: String,
    /// The proof's unique id (`jti`).
    pub jti: String,
    /// The HTTP method it is for (`htm`).
    pub htm: String,
    /// The URL it is for (`htu`), as written.
    pub htu: String,
    /// When it was made, in seconds since the epoch (`iat`).
    pub iat: i64,
    /// The server nonce it carries (`nonce`), if any.
    pub nonce: Option<String>,
    /// The hash of the access token it travels with (`ath`), if any.
    pub ath: Option<String>,
}

/// Why a DPoP proof was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DpopError {
    /// No proof, from a client that must send one.
    Missing,
    /// More than one `DPoP` header (RFC 9449 §4.3, check 1).
    Multiple,
    /// Not a JWT, or a part of it is not base64url JSON, or a required member is missing or
    /// of the wrong type.
    Malformed(String),
    /// The `typ` header is not `dpop+jwt`.
    WrongType(String),
    /// The `alg` is not one this server verifies (`ES256`, `EdDSA`, `Ed25519`).
    UnsupportedAlgorithm(String),
    /// The `jwk` is not a public key of the `alg`'s kind.
    BadKey(String),
    /// The `jwk` holds a private key.
    PrivateKey,
    /// The signature does not verify with the `jwk`.
    BadSignature,
    /// `htm` is not the request's method.
    WrongMethod {
        /// The request's method.
        expected: String,
        /// The proof's `htm`.
        found: String,
    },
    /// `htu` is not the request's URL.
    WrongUrl {
        /// The request's URL, without query and fragment.
        expected: String,
        /// The proof's `htu`.
        found: String,
    },
    /// `iat` is too far from now.
    OutOfWindow {
        /// The proof's `iat`.
        iat: i64,
        /// The server's time, in seconds since the epoch.
        now: i64,
    },
    /// `ath` is missing, or is not the hash of the access token the request carries.
    WrongAccessTokenHash,
    /// The `jti` was seen before.
    Replayed {
        /// The proof's `jti`.
        jti: String,
    },
    /// The access token is not bound to the proof's key (a resource server's check,
    /// RFC 9449 §7.1), or is DPoP-bound and came without a proof.
    WrongKey {
        /// The `jkt` the token is bound to, if any.
        bound: Option<String>,
    },
    /// The proof carries no nonce, or not the current one (answered `use_dpop_nonce`).
    NonceRequired {
        /// The nonce it carried, if any.
        presented: Option<String>,
    },
}

impl DpopError {
    /// The OAuth error code of the answer: `use_dpop_nonce` for
    /// [`NonceRequired`](DpopError::NonceRequired), `invalid_dpop_proof` otherwise.
    pub fn error_code(&self) -> &'static str {
        match self {
            DpopError::NonceRequired { .. } => "use_dpop_nonce",
            _ => "invalid_dpop_proof",
        }
    }
}

impl fmt::Display for DpopError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DpopError::Missing => f.write_str("this client must send a DPoP proof"),
            DpopError::Multiple => f.write_str("more than one DPoP header"),
            DpopError::Malformed(what) => write!(f, "malformed DPoP proof: {what}"),
            DpopError::WrongType(typ) => write!(f, "DPoP proof typ is {typ:?}, not dpop+jwt"),
            DpopError::UnsupportedAlgorithm(alg) => {
                write!(f, "DPoP proof alg {alg:?} is not supported")
            }
            DpopError::BadKey(what) => write!(f, "DPoP proof jwk: {what}"),
            DpopError::PrivateKey => f.write_str("DPoP proof jwk holds a private key"),
            DpopError::BadSignature => f.write_str("DPoP proof signature does not verify"),
            DpopError::WrongMethod { expected, found } => {
                write!(f, "DPoP proof htm is {found:?}, not {expected:?}")
            }
            DpopError::WrongUrl { expected, found } => {
                write!(f, "DPoP proof htu is {found:?}, not {expected:?}")
            }
            DpopError::OutOfWindow { iat, now } => {
                write!(f, "DPoP proof iat {iat} is too far from now ({now})")
            }
            DpopError::WrongAccessTokenHash => {
                f.write_str("DPoP proof ath does not match the access token")
            }
            DpopError::Replayed { jti } => write!(f, "DPoP proof jti {jti:?} was used before"),
            DpopError::WrongKey { bound: None } => {
                f.write_str("the access token is not DPoP-bound")
            }
            DpopError::WrongKey { bound: Some(_) } => {
                f.write_str("the access token is bound to another key than the proof's")
            }
            DpopError::NonceRequired { presented: None } => {
                f.write_str("DPoP proof must carry the server's nonce")
            }
            DpopError::NonceRequired { presented: Some(_) } => {
                f.write_str("DPoP proof carries a nonce that is not current")
            }
        }
    }
}

impl std::error::Error for DpopError {}

/// A proof taken apart, not yet verified.
struct Decoded {
    proof: DpopProof,
    typ: Option<String>,
    signing_input: String,
    signature: Vec<u8>,
}

/// Reads a proof without verifying anything but its shape: what it claims, for a log.
pub fn read_proof(proof: &str) -> Result<DpopProof, DpopError> {
    decode(proof).map(|decoded| decoded.proof)
}

/// Verifies a proof for a request of `method` to `url` (its query and fragment are left out
/// of the comparison), made at `now` give or take `window`, and, when `access_token` is given,
/// carrying its hash (`ath`). Replay and nonce are the caller's to check (see the
/// [module documentation](self)).
pub fn verify_proof(
    proof: &str,
    method: &str,
    url: &str,
    access_token: Option<&str>,
    now: SystemTime,
    window: Duration,
) -> Result<DpopProof, DpopError> {
    let decoded = decode(proof)?;
    let proof = &decoded.proof;
    match decoded.typ.as_deref() {
        Some(typ) if typ.eq_ignore_ascii_case("dpop+jwt") => {}
        other => return Err(DpopError::WrongType(other.unwrap_or_default().to_owned())),
    }
    verify_signature(&proof.alg, &proof.jwk, &decoded)?;
    if proof.htm != method {
        return Err(DpopError::WrongMethod {
            expected: method.to_owned(),
            found: proof.htm.clone(),
        });
    }
    let expected = without_query(url).unwrap_or_else(|| url.to_owned());
    if without_query(&proof.htu).as_deref() != Some(expected.as_str()) {
        return Err(DpopError::WrongUrl {
            expected,
            found: proof.htu.clone(),
        });
    }
    let now = unix_seconds(now);
    let window = i64::try_from(window.as_secs()).unwrap_or(i64::MAX);
    if proof.iat.abs_diff(now) > window.unsigned_abs() {
        return Err(DpopError::OutOfWindow {
            iat: proof.iat,
            now,
        });
    }
    if let Some(token) = access_token
        && proof.ath.as_deref() != Some(access_token_hash(token).as_str())
    {
        return Err(DpopError::WrongAccessTokenHash);
    }
    Ok(decoded.proof)
}

/// The `ath` of an access token: base64url of its SHA-256.
pub fn access_token_hash(access_token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, access_token.as_bytes());
    base64url_encode(digest.as_ref())
}

/// The JWK SHA-256 thumbprint of a public key (RFC 7638): base64url of the SHA-256 of its
/// required members, in lexicographic order, without whitespace. EC, OKP and RSA keys.
pub fn jwk_thumbprint(jwk: &Value) -> Result<String, DpopError> {
    let member = |name: &str| -> Result<String, DpopError> {
        match jwk.get(name) {
            Some(Value::String(value)) => Ok(Value::String(value.clone()).to_string()),
            _ => Err(DpopError::BadKey(format!("no {name} member"))),
        }
    };
    let canonical = match jwk.get("kty").and_then(Value::as_str) {
        Some("EC") => format!(
            r#"{{"crv":{},"kty":"EC","x":{},"y":{}}}"#,
            member("crv")?,
            member("x")?,
            member("y")?
        ),
        Some("OKP") => format!(
            r#"{{"crv":{},"kty":"OKP","x":{}}}"#,
            member("crv")?,
            member("x")?
        ),
        Some("RSA") => format!(
            r#"{{"e":{},"kty":"RSA","n":{}}}"#,
            member("e")?,
            member("n")?
        ),
        other => return Err(DpopError::BadKey(format!("kty {other:?} is not supported"))),
    };
    let digest = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
    Ok(base64url_encode(digest.as_ref()))
}

/// The proof ids seen within the window, to refuse a replay (RFC 9449 §11.1). An id is
/// forgotten once a proof carrying it would be refused for its `iat` anyway.
#[derive(Clone, Debug, Default)]
pub struct JtiCache {
    /// Each id seen, with the `iat` of its proof.
    seen: HashMap<String, i64>,
}

impl JtiCache {
    /// An empty cache.
    pub fn new() -> JtiCache {
        JtiCache::default()
    }

    /// Records the proof's `jti`; `Err(Replayed)` when it was seen before. Ids of proofs made
    /// longer than `window` before `now` are forgotten first.
    pub fn check_and_insert(
        &mut self,
        proof: &DpopProof,
        now: SystemTime,
        window: Duration,
    ) -> Result<(), DpopError> {
        let oldest =
            unix_seconds(now).saturating_sub(i64::try_from(window.as_secs()).unwrap_or(i64::MAX));
        self.seen.retain(|_, iat| *iat >= oldest);
        if self.seen.contains_key(&proof.jti) {
            return Err(DpopError::Replayed {
                jti: proof.jti.clone(),
            });
        }
        self.seen.insert(proof.jti.clone(), proof.iat);
        Ok(())
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// The kind of a key made by [`private_key_pem`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyAlgorithm {
    /// A P-256 key, for `ES256` proofs.
    Es256,
    /// An Ed25519 key, for `EdDSA` proofs.
    EdDsa,
}

/// A new private key for a client's DPoP proofs, as PKCS#8 PEM (`-----BEGIN PRIVATE
/// KEY-----`), for tests of clients that read their key from a file. It is zeroized when
/// dropped.
pub fn private_key_pem(algorithm: KeyAlgorithm) -> Result<Zeroizing<String>, crate::pki::PkiError> {
    let kind = match algorithm {
        KeyAlgorithm::Es256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyAlgorithm::EdDsa => &rcgen::PKCS_ED25519,
    };
    let key = rcgen::KeyPair::generate_for(kind)?;
    Ok(Zeroizing::new(key.serialize_pem()))
}

fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// A URL without query and fragment, normalised by the URL parser (scheme and host in lower
/// case, default port left out); `None` if it does not parse.
fn without_query(url: &str) -> Option<String> {
    let mut url = url::Url::parse(url).ok()?;
    url.set_query(None);
    url.set_fragment(None);
    Some(url.into())
}

/// Decodes unpadded base64url (RFC 4648 §5), as JWS parts are written.
pub(crate) fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    if text
        .bytes()
        .any(|b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    {
        return None;
    }
    let standard: String = text
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            other => other,
        })
        .collect();
    base64_decode(&standard)
}

fn json_object(part: &str, what: &str) -> Result<Map<String, Value>, DpopError> {
    let bytes = base64url_decode(part)
        .ok_or_else(|| DpopError::Malformed(format!("the {what} is not base64url")))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(DpopError::Malformed(format!(
            "the {what} is not a JSON object"
        ))),
    }
}

fn decode(proof: &str) -> Result<Decoded, DpopError> {
    if proof.len() > MAX_PROOF_BYTES {
        return Err(DpopError::Malformed("too long".into()));
    }
    let parts: Vec<&str> = proof.split('.').collect();
    let [header, payload, signature] = parts.as_slice() else {
        return Err(DpopError::Malformed("not three dot-separated parts".into()));
    };
    let header_map = json_object(header, "header")?;
    let claims = json_object(payload, "payload")?;
    let signature = base64url_decode(signature)
        .ok_or_else(|| DpopError::Malformed("the signature is not base64url".into()))?;

    let header_string = |name: &str| header_map.get(name).and_then(Value::as_str);
    let claim_string = |name: &str| -> Result<Option<String>, DpopError> {
        match claims.get(name) {
            None => Ok(None),
            Some(Value::String(value)) => Ok(Some(value.clone())),
            Some(_) => Err(DpopError::Malformed(format!("{name} is not a string"))),
        }
    };
    let required = |name: &str| -> Result<String, DpopError> {
        claim_string(name)?
            .filter(|value| !value.is_empty())
            .ok_or_else(|| DpopError::Malformed(format!("no {name} claim")))
    };
    let alg = header_string("alg")
        .ok_or_else(|| DpopError::Malformed("no alg header".into()))?
        .to_owned();
    let jwk = match header_map.get("jwk") {
        Some(jwk @ Value::Object(_)) => jwk.clone(),
        _ => return Err(DpopError::Malformed("no jwk header".into())),
    };
    let iat = match claims.get("iat") {
        // A NumericDate may have a fraction; whole seconds are enough here.
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| f.floor() as i64)
            })
            .ok_or_else(|| DpopError::Malformed("iat is not a number".into()))?,
        _ => return Err(DpopError::Malformed("no numeric iat claim".into())),
    };
    let proof = DpopProof {
        jkt: jwk_thumbprint(&jwk)?,
        alg,
        jwk,
        jti: required("jti")?,
        htm: required("htm")?,
        htu: required("htu")?,
        iat,
        nonce: claim_string("nonce")?,
        ath: claim_string("ath")?,
    };
    Ok(Decoded {
        proof,
        typ: header_string("typ").map(str::to_owned),
        signing_input: format!("{header}.{payload}"),
        signature,
    })
}

/// Checks the signature with the header's key, which must suit the algorithm.
fn verify_signature(alg: &str, jwk: &Value, decoded: &Decoded) -> Result<(), DpopError> {
    const PRIVATE_MEMBERS: [&str; 6] = ["d", "p", "q", "dp", "dq", "qi"];
    if PRIVATE_MEMBERS.iter().any(|name| jwk.get(name).is_some()) {
        return Err(DpopError::PrivateKey);
    }
    let text = |name: &str| jwk.get(name).and_then(Value::as_str);
    let bytes = |name: &str, len: usize| -> Result<Vec<u8>, DpopError> {
        text(name)
            .and_then(base64url_decode)
            .filter(|bytes| bytes.len() == len)
            .ok_or_else(|| DpopError::BadKey(format!("{name} is not {len} base64url bytes")))
    };
    let verified = match alg {
        "ES256" => {
            if text("kty") != Some("EC") || text("crv") != Some("P-256") {
                return Err(DpopError::BadKey("ES256 needs an EC key on P-256".into()));
            }
            let mut point = vec![0x04];
            point.extend(bytes("x", 32)?);
            point.extend(bytes("y", 32)?);
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                .verify(decoded.signing_input.as_bytes(), &decoded.signature)
        }
        "EdDSA" | "Ed25519" => {
            if text("kty") != Some("OKP") || text("crv") != Some("Ed25519") {
                return Err(DpopError::BadKey(format!(
                    "{alg} needs an OKP key on Ed25519"
                )));
            }
            UnparsedPublicKey::new(&ED25519, bytes("x", 32)?)
                .verify(decoded.signing_input.as_bytes(), &decoded.signature)
        }
        other => return Err(DpopError::UnsupportedAlgorithm(other.to_owned())),
    };
    verified.map_err(|_| DpopError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    use serde_json::json;

    const URL: &str = "http://127.0.0.1:8080/token";

    fn b64(bytes: &[u8]) -> String {
        base64url_encode(bytes)
    }

    /// A P-256 key and its JWK.
    fn es256_key() -> (EcdsaKeyPair, Value) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let point = pair.public_key().as_ref().to_vec();
        let jwk =
            json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..])});
        (pair, jwk)
    }

    fn sign(pair: &EcdsaKeyPair, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = pair.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", b64(signature.as_ref()))
    }

    fn now_secs() -> i64 {
        unix_seconds(SystemTime::now())
    }

    #[test]
    fn a_good_proof_verifies_and_each_check_can_fail() {
        let (pair, jwk) = es256_key();
        let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
        let claims = json!({"jti": "j-1", "htm": "POST", "htu": URL, "iat": now_secs()});
        let good = sign(&pair, &header, &claims);
        let check = |proof: &str| {
            verify_proof(
                proof,
                "POST",
                URL,
                None,
                SystemTime::now(),
                DEFAULT_PROOF_WINDOW,
            )
        };
        let proof = check(&good).expect("a good proof");
        assert_eq!(proof.jkt, jwk_thumbprint(&jwk).unwrap());
        assert_eq!((proof.jti.as_str(), proof.nonce), ("j-1", None));
        // The query of the request does not count.
        assert!(
            verify_proof(
                &good,
                "POST",
                &format!("{URL}?x=1"),
                None,
                SystemTime::now(),
                DEFAULT_PROOF_WINDOW
            )
            .is_ok()
        );

        let with = |header: &Value, claims: &Value| check(&sign(&pair, header, claims));
        let mut h = header.clone();
        h["typ"] = json!("jwt");
        assert!(matches!(with(&h, &claims), Err(DpopError::WrongType(_))));
        let mut c = claims.clone();
        c["htm"] = json!("GET");
        assert!(matches!(
            with(&header, &c),
            Err(DpopError::WrongMethod { .. })
        ));
        c = claims.clone();
        c["htu"] = json!("http://127.0.0.1:8080/other");
        assert!(matches!(with(&header, &c), Err(DpopError::WrongUrl { .. })));
        c = claims.clone();
        c["iat"] = json!(now_secs() - 3600);
        assert!(matches!(
            with(&header, &c),
            Err(DpopError::OutOfWindow { .. })
        ));
        c = claims.clone();
        c.as_object_mut().unwrap().remove("jti");
        assert!(matches!(with(&header, &c), Err(DpopError::Malformed(_))));
        h = header.clone();
        h["alg"] = json!("HS256");
        assert!(matches!(
            with(&h, &claims),
            Err(DpopError::UnsupportedAlgorithm(_))
        ));
        h = header.clone();
        h["jwk"]["d"] = json!("AAAA");
        assert_eq!(with(&h, &claims), Err(DpopError::PrivateKey));
        // Another key in the header: the signature does not verify.
        let (_, other) = es256_key();
        h = header.clone();
        h["jwk"] = other;
        assert_eq!(with(&h, &claims), Err(DpopError::BadSignature));
        // A flipped signature byte.
        let mut tampered = good.clone();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        assert!(check(&tampered).is_err());
        assert!(matches!(check("a.b"), Err(DpopError::Malformed(_))));
        assert!(matches!(check("a.b.c"), Err(DpopError::Malformed(_))));

        // ath: required and checked when an access token is given.
        c = claims.clone();
        c["ath"] = json!(access_token_hash("at-1"));
        let bound = sign(&pair, &header, &c);
        let at = |token| {
            verify_proof(
                &bound,
                "POST",
                URL,
                Some(token),
                SystemTime::now(),
                DEFAULT_PROOF_WINDOW,
            )
        };
        assert!(at("at-1").is_ok());
        assert_eq!(at("at-2"), Err(DpopError::WrongAccessTokenHash));
        assert_eq!(
            verify_proof(
                &good,
                "POST",
                URL,
                Some("at-1"),
                SystemTime::now(),
                DEFAULT_PROOF_WINDOW
            ),
            Err(DpopError::WrongAccessTokenHash)
        );
    }

    #[test]
    fn thumbprint_of_rfc_7638_example() {
        // RFC 7638 §3.1: the RSA key and its thumbprint.
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            jwk_thumbprint(&jwk).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn replays_are_refused_within_the_window() {
        let (pair, jwk) = es256_key();
        let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
        let now = SystemTime::now();
        let make = |jti: &str, iat: i64| {
            read_proof(&sign(
                &pair,
                &header,
                &json!({"jti": jti, "htm": "POST", "htu": URL, "iat": iat}),
            ))
            .unwrap()
        };
        let mut cache = JtiCache::new();
        let window = Duration::from_secs(60);
        cache
            .check_and_insert(&make("a", now_secs()), now, window)
            .unwrap();
        cache
            .check_and_insert(&make("b", now_secs()), now, window)
            .unwrap();
        assert_eq!(
            cache.check_and_insert(&make("a", now_secs()), now, window),
            Err(DpopError::Replayed { jti: "a".into() })
        );
        // Long after: "a" and "b" are forgotten (their proofs are out of the window anyway).
        let later = now + Duration::from_secs(120);
        cache
            .check_and_insert(&make("c", now_secs() + 120), later, window)
            .unwrap();
        assert_eq!(cache.len(), 1);
    }
}
