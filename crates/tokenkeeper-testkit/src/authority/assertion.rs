//! JWT assertions (RFC 7523) as a server checks them: client authentication with
//! `private_key_jwt` or `client_secret_jwt` (§2.2), and the JWT bearer grant (§2.1).
//!
//! [`verify_assertion`] checks what needs no memory: a well-formed JWT signed with an allowed
//! algorithm (`RS256`, `PS256`, `ES256`, `EdDSA` with a registered public JWK; `HS256` with a
//! shared secret; `none` and anything else refused) by one of the given keys (the one its `kid`
//! names, when it names one), whose `iss` and `sub` are what is expected, whose `aud` names one
//! of the accepted audiences, whose `exp` is in the future and not too far, and whose `iat` and
//! `nbf` are not in the future. The `jti` replay check needs memory: [`AssertionJtis`].
//!
//! Written from the RFCs with *ring*; it shares no code with the signer in
//! `tokenkeeper-driver`.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ED25519, RSA_PKCS1_2048_8192_SHA256, RSA_PSS_2048_8192_SHA256,
    UnparsedPublicKey,
};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use super::codec::base64url_encode;
use super::dpop::base64url_decode;

/// The longest assertion read; longer ones are malformed.
const MAX_ASSERTION_BYTES: usize = 16 * 1024;

/// How far in the future an assertion's `exp` may be by default.
pub const DEFAULT_MAX_ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);

/// How much clock difference is forgiven on `exp` and `iat`.
const LEEWAY_SECS: i64 = 30;

/// What an assertion says: its header's algorithm and key id, and its claims.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PresentedAssertion {
    /// The `alg` of its header.
    pub alg: String,
    /// The `kid` of its header, if any.
    pub kid: Option<String>,
    /// Its `jti`, if any.
    pub jti: Option<String>,
    /// Its `iss`, if any.
    pub iss: Option<String>,
    /// Its `sub`, if any.
    pub sub: Option<String>,
    /// Its `exp`, if any.
    pub exp: Option<i64>,
    /// Why it was refused, once checked and refused; `None` when accepted or not checked.
    pub refused: Option<AssertionError>,
}

/// Why an assertion was refused. Each is answered `invalid_client` for a client assertion and
/// `invalid_grant` for a grant's.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AssertionError {
    /// Not a JWT, or a part of it is not base64url JSON, or a claim is of the wrong type.
    Malformed(String),
    /// The `alg` is not one this server verifies, or not one allowed for this client.
    UnsupportedAlgorithm(String),
    /// No registered key fits (none with its `kid`, or none of the `alg`'s kind).
    NoKey,
    /// The signature does not verify.
    BadSignature,
    /// `iss` or `sub` is not what the registration says.
    WrongIdentity(String),
    /// `aud` names neither the token endpoint nor the issuer.
    WrongAudience,
    /// `exp` is missing, past, or too far ahead; or `iat` is in the future.
    BadTime(String),
    /// The `jti` is missing.
    NoId,
    /// The `jti` was seen before.
    Replayed(String),
}

impl fmt::Display for AssertionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AssertionError::Malformed(what) => write!(f, "malformed assertion: {what}"),
            AssertionError::UnsupportedAlgorithm(alg) => {
                write!(f, "assertion alg {alg:?} is not allowed")
            }
            AssertionError::NoKey => f.write_str("no registered key verifies the assertion"),
            AssertionError::BadSignature => f.write_str("assertion signature does not verify"),
            AssertionError::WrongIdentity(what) => write!(f, "assertion {what}"),
            AssertionError::WrongAudience => {
                f.write_str("assertion aud names neither the token endpoint nor the issuer")
            }
            AssertionError::BadTime(what) => write!(f, "assertion {what}"),
            AssertionError::NoId => f.write_str("assertion has no jti"),
            AssertionError::Replayed(jti) => write!(f, "assertion jti {jti:?} was used before"),
        }
    }
}

impl std::error::Error for AssertionError {}

/// The keys an assertion may be verified with.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum VerifyWith<'a> {
    /// Public JWKs (RS256, PS256, ES256, EdDSA).
    PublicKeys(&'a [Value]),
    /// A shared secret (HS256).
    Secret(&'a [u8]),
}

/// What the verifier expects of an assertion.
#[derive(Clone, Debug)]
pub struct Expected<'a> {
    /// The `iss` it must carry, if one is required.
    pub iss: Option<&'a str>,
    /// The `sub` it must carry, if one is required.
    pub sub: Option<&'a str>,
    /// The `aud` values accepted (the token endpoint URL, the issuer).
    pub audiences: &'a [String],
    /// How far ahead `exp` may be.
    pub max_lifetime: Duration,
}

/// Reads an assertion without verifying anything but its shape: what it claims, for a log.
pub fn read_assertion(jwt: &str) -> Result<PresentedAssertion, AssertionError> {
    decode(jwt).map(|d| d.presented)
}

struct Decoded {
    presented: PresentedAssertion,
    aud: Vec<String>,
    iat: Option<i64>,
    nbf: Option<i64>,
    signing_input: String,
    signature: Vec<u8>,
}

fn decode(jwt: &str) -> Result<Decoded, AssertionError> {
    if jwt.len() > MAX_ASSERTION_BYTES {
        return Err(AssertionError::Malformed("too long".into()));
    }
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header, payload, signature] = parts.as_slice() else {
        return Err(AssertionError::Malformed(
            "not three dot-separated parts".into(),
        ));
    };
    let object = |part: &str, what: &str| -> Result<Map<String, Value>, AssertionError> {
        let bytes = base64url_decode(part)
            .ok_or_else(|| AssertionError::Malformed(format!("the {what} is not base64url")))?;
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(AssertionError::Malformed(format!(
                "the {what} is not a JSON object"
            ))),
        }
    };
    let header_map = object(header, "header")?;
    let claims = object(payload, "payload")?;
    let signature = base64url_decode(signature)
        .ok_or_else(|| AssertionError::Malformed("the signature is not base64url".into()))?;
    let string = |map: &Map<String, Value>, name: &str| -> Result<Option<String>, AssertionError> {
        match map.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(AssertionError::Malformed(format!("{name} is not a string"))),
        }
    };
    let number = |name: &str| -> Result<Option<i64>, AssertionError> {
        match claims.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.is_finite())
                        .map(|f| f.floor() as i64)
                })
                .map(Some)
                .ok_or_else(|| AssertionError::Malformed(format!("{name} is not a number"))),
            Some(_) => Err(AssertionError::Malformed(format!("{name} is not a number"))),
        }
    };
    let aud = match claims.get("aud") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| AssertionError::Malformed("aud is not a string or strings".into()))?,
        Some(_) => return Err(AssertionError::Malformed("aud is not a string".into())),
    };
    let presented = PresentedAssertion {
        alg: string(&header_map, "alg")?
            .ok_or_else(|| AssertionError::Malformed("no alg header".into()))?,
        kid: string(&header_map, "kid")?,
        jti: string(&claims, "jti")?,
        iss: string(&claims, "iss")?,
        sub: string(&claims, "sub")?,
        exp: number("exp")?,
        refused: None,
    };
    Ok(Decoded {
        presented,
        aud,
        iat: number("iat")?,
        nbf: number("nbf")?,
        signing_input: format!("{header}.{payload}"),
        signature,
    })
}

/// Verifies an assertion (see the [module documentation](self)); the `jti` replay check is the
/// caller's ([`AssertionJtis`]).
pub fn verify_assertion(
    jwt: &str,
    keys: VerifyWith<'_>,
    expected: &Expected<'_>,
    now: SystemTime,
) -> Result<PresentedAssertion, AssertionError> {
    let decoded = decode(jwt)?;
    let presented = &decoded.presented;
    let input = decoded.signing_input.as_bytes();
    let verified = match (presented.alg.as_str(), keys) {
        ("HS256", VerifyWith::Secret(secret)) => {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
            ring::hmac::verify(&key, input, &decoded.signature).is_ok()
        }
        (alg @ ("RS256" | "PS256" | "ES256" | "EdDSA"), VerifyWith::PublicKeys(jwks)) => {
            let candidates: Vec<&Value> = jwks
                .iter()
                .filter(|jwk| match &presented.kid {
                    Some(kid) => jwk.get("kid").and_then(Value::as_str) == Some(kid.as_str()),
                    None => true,
                })
                .filter(|jwk| fits(alg, jwk))
                .collect();
            if candidates.is_empty() {
                return Err(AssertionError::NoKey);
            }
            candidates
                .iter()
                .any(|jwk| verify_with_jwk(alg, jwk, input, &decoded.signature))
        }
        (other, _) => return Err(AssertionError::UnsupportedAlgorithm(other.to_owned())),
    };
    if !verified {
        return Err(AssertionError::BadSignature);
    }
    for (name, want, got) in [
        ("iss", expected.iss, &presented.iss),
        ("sub", expected.sub, &presented.sub),
    ] {
        if let Some(want) = want
            && got.as_deref() != Some(want)
        {
            return Err(AssertionError::WrongIdentity(format!(
                "{name} is {got:?}, not {want:?}"
            )));
        }
    }
    if !decoded
        .aud
        .iter()
        .any(|aud| expected.audiences.contains(aud))
    {
        return Err(AssertionError::WrongAudience);
    }
    let now = unix_seconds(now);
    let Some(exp) = presented.exp else {
        return Err(AssertionError::BadTime("has no exp".into()));
    };
    if exp + LEEWAY_SECS < now {
        return Err(AssertionError::BadTime(format!(
            "expired at {exp} (now {now})"
        )));
    }
    let max = i64::try_from(expected.max_lifetime.as_secs()).unwrap_or(i64::MAX);
    if exp > now.saturating_add(max).saturating_add(LEEWAY_SECS) {
        return Err(AssertionError::BadTime(format!(
            "exp {exp} is more than {max} s ahead"
        )));
    }
    if decoded.iat.is_some_and(|iat| iat > now + LEEWAY_SECS) {
        return Err(AssertionError::BadTime("iat is in the future".into()));
    }
    if decoded.nbf.is_some_and(|nbf| nbf > now + LEEWAY_SECS) {
        return Err(AssertionError::BadTime("nbf is in the future".into()));
    }
    if presented.jti.as_deref().is_none_or(str::is_empty) {
        return Err(AssertionError::NoId);
    }
    Ok(decoded.presented)
}

fn fits(alg: &str, jwk: &Value) -> bool {
    let text = |name: &str| jwk.get(name).and_then(Value::as_str);
    let kind = match alg {
        "RS256" | "PS256" => text("kty") == Some("RSA"),
        "ES256" => text("kty") == Some("EC") && text("crv") == Some("P-256"),
        "EdDSA" => text("kty") == Some("OKP") && text("crv") == Some("Ed25519"),
        _ => false,
    };
    // A JWK that names its algorithm is for that one only.
    kind && text("alg").is_none_or(|a| a == alg)
}

fn verify_with_jwk(alg: &str, jwk: &Value, input: &[u8], signature: &[u8]) -> bool {
    let bytes = |name: &str| {
        jwk.get(name)
            .and_then(Value::as_str)
            .and_then(base64url_decode)
    };
    match alg {
        "RS256" | "PS256" => {
            let (Some(n), Some(e)) = (bytes("n"), bytes("e")) else {
                return false;
            };
            let params = if alg == "RS256" {
                &RSA_PKCS1_2048_8192_SHA256
            } else {
                &RSA_PSS_2048_8192_SHA256
            };
            ring::signature::RsaPublicKeyComponents { n, e }
                .verify(params, input, signature)
                .is_ok()
        }
        "ES256" => {
            let (Some(x), Some(y)) = (bytes("x"), bytes("y")) else {
                return false;
            };
            if x.len() != 32 || y.len() != 32 {
                return false;
            }
            let mut point = vec![0x04];
            point.extend(x);
            point.extend(y);
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                .verify(input, signature)
                .is_ok()
        }
        "EdDSA" => bytes("x").is_some_and(|x| {
            UnparsedPublicKey::new(&ED25519, x)
                .verify(input, signature)
                .is_ok()
        }),
        _ => false,
    }
}

/// The assertion ids seen, until their assertions expire, to refuse a replay (RFC 7523 §3,
/// item 7).
#[derive(Clone, Debug, Default)]
pub struct AssertionJtis {
    seen: HashMap<String, i64>,
}

impl AssertionJtis {
    /// An empty cache.
    pub fn new() -> AssertionJtis {
        AssertionJtis::default()
    }

    /// Records the assertion's `jti` (under its issuer); `Err(Replayed)` when it was seen
    /// before. Ids of assertions expired at `now` are forgotten first.
    pub fn check_and_insert(
        &mut self,
        assertion: &PresentedAssertion,
        now: SystemTime,
    ) -> Result<(), AssertionError> {
        let now = unix_seconds(now);
        self.seen.retain(|_, exp| *exp + LEEWAY_SECS >= now);
        let jti = assertion.jti.clone().ok_or(AssertionError::NoId)?;
        let key = format!("{}\u{0}{jti}", assertion.iss.as_deref().unwrap_or_default());
        if self.seen.contains_key(&key) {
            return Err(AssertionError::Replayed(jti));
        }
        self.seen.insert(key, assertion.exp.unwrap_or(now));
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

/// The public JWK (RFC 7517) of a PEM private key: PKCS#8 RSA, P-256 or Ed25519, or PKCS#1
/// RSA, for registering a client's key. The private key is read with *ring* and forgotten.
pub fn public_jwk_from_pem(pem: &str) -> Result<Value, BadKey> {
    use ring::signature::KeyPair as _;
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let bad = |what: &str| BadKey(what.to_owned());
    let der =
        PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| bad("no PEM private key"))?;
    let rng = ring::rand::SystemRandom::new();
    let rsa = |pair: ring::signature::RsaKeyPair| {
        let public = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
        serde_json::json!({"kty": "RSA", "n": base64url_encode(&public.n), "e": base64url_encode(&public.e)})
    };
    Ok(match &der {
        PrivateKeyDer::Pkcs1(der) => rsa(ring::signature::RsaKeyPair::from_der(
            der.secret_pkcs1_der(),
        )
        .map_err(|_| bad("a bad RSA key"))?),
        PrivateKeyDer::Pkcs8(der) => {
            let der = Zeroizing::new(der.secret_pkcs8_der().to_vec());
            if let Ok(pair) = ring::signature::RsaKeyPair::from_pkcs8(&der) {
                rsa(pair)
            } else if let Ok(pair) = ring::signature::EcdsaKeyPair::from_pkcs8(
                &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &der,
                &rng,
            ) {
                let point = pair.public_key().as_ref();
                serde_json::json!({"kty": "EC", "crv": "P-256", "x": base64url_encode(&point[1..33]), "y": base64url_encode(&point[33..])})
            } else if let Ok(pair) =
                ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            {
                serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": base64url_encode(pair.public_key().as_ref())})
            } else {
                return Err(bad("not an RSA, P-256 or Ed25519 key"));
            }
        }
        _ => return Err(bad("not a PKCS#8 or PKCS#1 key")),
    })
}

/// A private key that [`public_jwk_from_pem`] cannot read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadKey(pub String);

impl fmt::Display for BadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot read the private key: {}", self.0)
    }
}

impl std::error::Error for BadKey {}

/// RSA private keys for tests, as PEM (2048 bits, generated once with `openssl genpkey` and
/// kept in the testkit's `src/keys/`: *ring* cannot generate RSA keys). Test fixtures only:
/// they are public.
pub mod rsa_keys {
    /// An RSA key, PKCS#8 (`PRIVATE KEY`).
    pub const A_PKCS8: &str = include_str!("../keys/rsa-2048-a.pem");
    /// Another RSA key, PKCS#8.
    pub const B_PKCS8: &str = include_str!("../keys/rsa-2048-b.pem");
    /// The same key as [`B_PKCS8`], PKCS#1 (`RSA PRIVATE KEY`).
    pub const B_PKCS1: &str = include_str!("../keys/rsa-2048-b-pkcs1.pem");
}

fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// Signs `claims` with a PEM private key (PKCS#8 P-256 as `ES256`, Ed25519 as `EdDSA`, RSA as
/// `RS256`), naming `kid`: an assertion "made elsewhere", as a platform would issue one, for
/// tests of clients that read assertions from a file or a callback.
pub fn sign_test_assertion(pem: &str, kid: Option<&str>, claims: &Value) -> Result<String, BadKey> {
    use rustls::pki_types::PrivatePkcs8KeyDer;
    use rustls::pki_types::pem::PemObject;
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| BadKey("no PKCS#8 PEM private key".into()))?;
    let der = der.secret_pkcs8_der();
    let rng = ring::rand::SystemRandom::new();
    enum Key {
        Ec(ring::signature::EcdsaKeyPair),
        Ed(ring::signature::Ed25519KeyPair),
        Rsa(ring::signature::RsaKeyPair),
    }
    let (key, alg) = if let Ok(pair) = ring::signature::RsaKeyPair::from_pkcs8(der) {
        (Key::Rsa(pair), "RS256")
    } else if let Ok(pair) = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        der,
        &rng,
    ) {
        (Key::Ec(pair), "ES256")
    } else if let Ok(pair) = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
        (Key::Ed(pair), "EdDSA")
    } else {
        return Err(BadKey("not an RSA, P-256 or Ed25519 key".into()));
    };
    let mut header = serde_json::json!({"alg": alg, "typ": "JWT"});
    if let Some(kid) = kid {
        header["kid"] = Value::String(kid.to_owned());
    }
    let input = format!(
        "{}.{}",
        base64url_encode(header.to_string().as_bytes()),
        base64url_encode(claims.to_string().as_bytes())
    );
    let failed = |_| BadKey("signing failed".into());
    let signature = match key {
        Key::Ec(pair) => pair
            .sign(&rng, input.as_bytes())
            .map_err(failed)?
            .as_ref()
            .to_vec(),
        Key::Ed(pair) => pair.sign(input.as_bytes()).as_ref().to_vec(),
        Key::Rsa(pair) => {
            let mut signature = vec![0; pair.public().modulus_len()];
            pair.sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &rng,
                input.as_bytes(),
                &mut signature,
            )
            .map_err(failed)?;
            signature
        }
    };
    Ok(format!("{input}.{}", base64url_encode(&signature)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn verifies_signed_assertions_and_refuses_each_bad_one() {
        let pem =
            crate::authority::dpop::private_key_pem(crate::authority::dpop::KeyAlgorithm::Es256)
                .unwrap();
        let mut jwk = public_jwk_from_pem(&pem).unwrap();
        jwk["kid"] = json!("k1");
        let now = SystemTime::now();
        let secs = unix_seconds(now);
        let url = "http://127.0.0.1:1/token".to_owned();
        let audiences = [url.clone()];
        let expected = Expected {
            iss: Some("c"),
            sub: Some("c"),
            audiences: &audiences,
            max_lifetime: DEFAULT_MAX_ASSERTION_LIFETIME,
        };
        let claims =
            json!({"iss": "c", "sub": "c", "aud": url, "exp": secs + 60, "iat": secs, "jti": "j1"});
        let keys = [jwk.clone()];
        let check = |claims: &Value, kid: Option<&str>| {
            verify_assertion(
                &sign_test_assertion(&pem, kid, claims).unwrap(),
                VerifyWith::PublicKeys(&keys),
                &expected,
                now,
            )
        };
        let ok = check(&claims, Some("k1")).unwrap();
        assert_eq!(
            (ok.alg.as_str(), ok.kid.as_deref(), ok.jti.as_deref()),
            ("ES256", Some("k1"), Some("j1"))
        );
        assert_eq!(check(&claims, Some("k2")), Err(AssertionError::NoKey));
        let mut bad = claims.clone();
        bad["aud"] = json!("http://elsewhere/token");
        assert_eq!(check(&bad, None), Err(AssertionError::WrongAudience));
        bad = claims.clone();
        bad["exp"] = json!(secs - 600);
        assert!(matches!(check(&bad, None), Err(AssertionError::BadTime(_))));
        bad = claims.clone();
        bad["exp"] = json!(secs + 86_400);
        assert!(matches!(check(&bad, None), Err(AssertionError::BadTime(_))));
        bad = claims.clone();
        bad["nbf"] = json!(secs + 600);
        assert!(matches!(check(&bad, None), Err(AssertionError::BadTime(_))));
        bad = claims.clone();
        bad["sub"] = json!("other");
        assert!(matches!(
            check(&bad, None),
            Err(AssertionError::WrongIdentity(_))
        ));
        // Replays.
        let mut jtis = AssertionJtis::new();
        jtis.check_and_insert(&ok, now).unwrap();
        assert_eq!(
            jtis.check_and_insert(&ok, now),
            Err(AssertionError::Replayed("j1".into()))
        );
        // HS256 with the secret; `none` refused.
        let hs = {
            let header = base64url_encode(br#"{"alg":"HS256"}"#);
            let payload = base64url_encode(claims.to_string().as_bytes());
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"s3cret");
            let tag = ring::hmac::sign(&key, format!("{header}.{payload}").as_bytes());
            format!("{header}.{payload}.{}", base64url_encode(tag.as_ref()))
        };
        assert!(verify_assertion(&hs, VerifyWith::Secret(b"s3cret"), &expected, now).is_ok());
        assert_eq!(
            verify_assertion(&hs, VerifyWith::Secret(b"other"), &expected, now),
            Err(AssertionError::BadSignature)
        );
        assert!(matches!(
            verify_assertion(&hs, VerifyWith::PublicKeys(&keys), &expected, now),
            Err(AssertionError::UnsupportedAlgorithm(_))
        ));
        // RSA, PKCS#1 and PKCS#8 give the same public key.
        assert_eq!(
            public_jwk_from_pem(rsa_keys::B_PKCS1).unwrap(),
            public_jwk_from_pem(rsa_keys::B_PKCS8).unwrap()
        );
        let rsa_jwk = [public_jwk_from_pem(rsa_keys::A_PKCS8).unwrap()];
        let rs = sign_test_assertion(rsa_keys::A_PKCS8, None, &claims).unwrap();
        assert_eq!(
            verify_assertion(&rs, VerifyWith::PublicKeys(&rsa_jwk), &expected, now)
                .unwrap()
                .alg,
            "RS256"
        );
    }
}
