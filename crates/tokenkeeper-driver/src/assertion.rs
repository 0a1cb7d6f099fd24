//! JWT assertions (RFC 7523): client authentication with `private_key_jwt`
//! or `client_secret_jwt`, and the JWT bearer grant. The core decides what
//! each assertion claims
//! ([`tokenkeeper_core::oauth2::assertion`]); this module signs the claims
//! with a [`ClientKey`] (*ring*: RS256, PS256, ES256, EdDSA, HS256), or takes
//! an assertion made elsewhere: a file read again before every token
//! request (a Kubernetes projected service-account token, which the kubelet
//! replaces underneath), or a callback.
//!
//! ```
//! use tokenkeeper_core::oauth2::OAuth2Client;
//! use tokenkeeper_core::ClientId;
//! use tokenkeeper_driver::assertion::{Assertion, ClientKey};
//! use tokenkeeper_driver::Source;
//!
//! # let pem = tokenkeeper_driver::assertion::testing_es256_pem();
//! let key = ClientKey::from_pem(pem.as_bytes())?.with_key_id("key-2024");
//! let client = OAuth2Client::private_key_jwt("https://auth.example/token", ClientId::new("svc"))?;
//! let source = Source::oauth2(client).client_assertion(Assertion::signed(key));
//! # let _ = source;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Failures
//!
//! A request whose assertion cannot be had is not sent; the refresher gets a
//! [`FetchError::Assertion`] whose [`AssertionProblem`] says how it is
//! classed:
//!
//! - an assertion file that is missing or empty (the kubelet replacing it, a
//!   sidecar yet to write it): [`Unavailable`](AssertionProblem::Unavailable),
//!   transient, retried with backoff;
//! - a file that holds no JWT: [`Malformed`](AssertionProblem::Malformed),
//!   permanent (a wrong path, most likely), retried at the backoff cap;
//! - an assertion whose `exp` is past: [`Expired`](AssertionProblem::Expired),
//!   permanent: whatever issues it is not renewing it;
//! - a file that cannot be read for another reason (permissions, a folder),
//!   and every configuration that cannot work (no signer for a client that
//!   needs one, an HMAC key for `private_key_jwt`): [`Misconfigured`](AssertionProblem::Misconfigured),
//!   detected at spawn where it can be.
//!
//! Keys and assertions never appear in `Debug`, `Display`, errors or logs:
//! a key shows its algorithm and key id, an assertion its kind and path.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokenkeeper_core::oauth2::assertion::{
    AssertionClaims, AssertionTemplate, add_client_assertion, add_grant_assertion,
};
use tokenkeeper_core::oauth2::exchange::{
    ID_TOKEN_TYPE, JWT_TOKEN_TYPE, add_actor_token, add_subject_token,
};
use tokenkeeper_core::oauth2::{AuthMethod, GrantType, OAuth2Client, TokenRequest};
use tokenkeeper_core::{FetchError, Timestamp, TokenRecord};
use zeroize::Zeroizing;

pub use tokenkeeper_core::oauth2::assertion::AssertionProblem;

use crate::jws::{self, SigningKey};
use crate::runtime::{Runtime, unblock};
use crate::token_exchange::{
    ExchangeTokens, Needed, Presented, make_blocking, replace_refused, take_upstream,
};

/// How far past its `exp` an external assertion is still sent: clocks
/// differ a little, and the authority decides.
const EXPIRY_LEEWAY_SECS: u64 = 5;

/// The largest assertion file read; a larger one is not an assertion.
const MAX_ASSERTION_BYTES: u64 = 64 * 1024;

/// A JWS algorithm a [`ClientKey`] signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
    /// HMAC with SHA-256 (`client_secret_jwt`).
    HS256,
}

impl Algorithm {
    /// The JWS `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::PS256 => "PS256",
            Algorithm::ES256 => "ES256",
            Algorithm::EdDSA => "EdDSA",
            Algorithm::HS256 => "HS256",
        }
    }

    /// The algorithm of a JWS `alg` name, if it is one of these.
    pub fn from_name(name: &str) -> Result<Self, AssertionError> {
        Ok(match name {
            "RS256" => Algorithm::RS256,
            "PS256" => Algorithm::PS256,
            "ES256" => Algorithm::ES256,
            "EdDSA" => Algorithm::EdDSA,
            "HS256" => Algorithm::HS256,
            other => {
                return Err(AssertionError::misconfigured(format!(
                    "the algorithm {other:?} is not supported (RS256, PS256, ES256, EdDSA and HS256 are)"
                )));
            }
        })
    }

    /// Whether the algorithm signs with a private key (not HMAC).
    pub fn is_asymmetric(self) -> bool {
        self != Algorithm::HS256
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an assertion or a key could not be had. Never holds a key or an
/// assertion; the message names the file and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AssertionError {
    problem: AssertionProblem,
    message: String,
}

impl AssertionError {
    /// An error of this kind.
    pub fn new(problem: AssertionProblem, message: impl Into<String>) -> Self {
        AssertionError {
            problem,
            message: message.into(),
        }
    }

    /// No assertion for now; the next attempt may have one (transient).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(AssertionProblem::Unavailable, message)
    }

    /// The configuration cannot work (permanent).
    pub fn misconfigured(message: impl Into<String>) -> Self {
        Self::new(AssertionProblem::Misconfigured, message)
    }

    /// What kind of problem, and so how it is classed.
    pub fn problem(&self) -> AssertionProblem {
        self.problem
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<AssertionError> for FetchError {
    fn from(error: AssertionError) -> Self {
        FetchError::Assertion {
            problem: error.problem,
            message: error.message,
        }
    }
}

/// A key that signs assertions: RSA (RS256 or PS256), P-256 (ES256) or
/// Ed25519 (EdDSA) from PEM or a JWK, or an HMAC key (HS256, for
/// `client_secret_jwt`), with an optional key id (`kid`) for the JWS
/// header. Cheap to clone; `Debug` shows the algorithm and key id only.
#[derive(Clone)]
pub struct ClientKey {
    key: Arc<SigningKey>,
    kid: Option<String>,
    rng: SystemRandom,
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientKey")
            .field("alg", &self.key.algorithm())
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl ClientKey {
    fn of(key: SigningKey) -> Self {
        ClientKey {
            key: Arc::new(key),
            kid: None,
            rng: SystemRandom::new(),
        }
    }

    /// A private key from PEM: PKCS#8 (`PRIVATE KEY`: RSA, P-256 or
    /// Ed25519) or PKCS#1 (`RSA PRIVATE KEY`). RSA keys sign RS256 unless
    /// [`with_algorithm`](Self::with_algorithm) says PS256; P-256 keys sign
    /// ES256 and Ed25519 keys EdDSA. SEC1 `EC PRIVATE KEY` files are refused
    /// with the command that converts them.
    pub fn from_pem(pem: &[u8]) -> Result<Self, AssertionError> {
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|_| {
            AssertionError::misconfigured(
                "no PEM private key (PKCS#8 `PRIVATE KEY`, or `RSA PRIVATE KEY`)",
            )
        })?;
        let rng = SystemRandom::new();
        let key = match &der {
            PrivateKeyDer::Pkcs8(der) => {
                let der = der.secret_pkcs8_der();
                if let Ok(pair) = RsaKeyPair::from_pkcs8(der) {
                    SigningKey::Rsa { pair, pss: false }
                } else if let Ok(pair) =
                    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
                {
                    SigningKey::Es256(pair)
                } else if let Ok(pair) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
                    SigningKey::EdDsa(pair)
                } else {
                    return Err(AssertionError::misconfigured(
                        "the PKCS#8 key is not an RSA (2048 bits or more), P-256 or Ed25519 key",
                    ));
                }
            }
            PrivateKeyDer::Pkcs1(der) => RsaKeyPair::from_der(der.secret_pkcs1_der())
                .map(|pair| SigningKey::Rsa { pair, pss: false })
                .map_err(|e| {
                    AssertionError::misconfigured(format!("the RSA key is refused: {e}"))
                })?,
            PrivateKeyDer::Sec1(_) => {
                return Err(AssertionError::misconfigured(
                    "SEC1 `EC PRIVATE KEY` files are not read; convert with `openssl pkcs8 -topk8 -nocrypt -in key.pem -out key-pkcs8.pem`",
                ));
            }
            _ => {
                return Err(AssertionError::misconfigured(
                    "an unknown kind of private key",
                ));
            }
        };
        Ok(Self::of(key))
    }

    /// A private key from a PEM file, as [`from_pem`](Self::from_pem). A
    /// missing or unreadable file is [`AssertionProblem::Misconfigured`].
    pub fn from_pem_file(path: impl AsRef<Path>) -> Result<Self, AssertionError> {
        let path = path.as_ref();
        let pem = read_key_file(path)?;
        Self::from_pem(&pem).map_err(|e| in_file(e, path))
    }

    /// A private key from a JWK (RFC 7517, JSON): `kty` `RSA`, `EC` (P-256),
    /// `OKP` (Ed25519) or `oct` (HMAC), with its private members. Its `alg`,
    /// when present, chooses the algorithm, and its `kid` becomes the key id.
    pub fn from_jwk(jwk: &str) -> Result<Self, AssertionError> {
        let jwk: Zeroizing<String> = Zeroizing::new(jwk.to_owned());
        let value: Value = serde_json::from_str(&jwk)
            .map_err(|_| AssertionError::misconfigured("the JWK is not JSON"))?;
        let text = |name: &str| value.get(name).and_then(Value::as_str);
        let bytes = |name: &str| -> Result<Zeroizing<Vec<u8>>, AssertionError> {
            text(name)
                .and_then(|t| URL_SAFE_NO_PAD.decode(t).ok())
                .map(Zeroizing::new)
                .ok_or_else(|| {
                    AssertionError::misconfigured(format!(
                        "the JWK has no base64url `{name}` member (a private key needs it)"
                    ))
                })
        };
        let rejected = |e: ring::error::KeyRejected| {
            AssertionError::misconfigured(format!("the JWK's key is refused: {e}"))
        };
        let rng = SystemRandom::new();
        let key = match text("kty") {
            Some("RSA") => {
                let (n, e, d, p, q, dp, dq, qi) = (
                    bytes("n")?,
                    bytes("e")?,
                    bytes("d")?,
                    bytes("p")?,
                    bytes("q")?,
                    bytes("dp")?,
                    bytes("dq")?,
                    bytes("qi")?,
                );
                let components = ring::rsa::KeyPairComponents {
                    public_key: ring::rsa::PublicKeyComponents {
                        n: &n[..],
                        e: &e[..],
                    },
                    d: &d[..],
                    p: &p[..],
                    q: &q[..],
                    dP: &dp[..],
                    dQ: &dq[..],
                    qInv: &qi[..],
                };
                SigningKey::Rsa {
                    pair: RsaKeyPair::from_components(&components).map_err(rejected)?,
                    pss: false,
                }
            }
            Some("EC") if text("crv") == Some("P-256") => {
                let mut point = vec![0x04];
                point.extend_from_slice(&bytes("x")?);
                point.extend_from_slice(&bytes("y")?);
                SigningKey::Es256(
                    EcdsaKeyPair::from_private_key_and_public_key(
                        &ECDSA_P256_SHA256_FIXED_SIGNING,
                        &bytes("d")?,
                        &point,
                        &rng,
                    )
                    .map_err(rejected)?,
                )
            }
            Some("OKP") if text("crv") == Some("Ed25519") => SigningKey::EdDsa(
                Ed25519KeyPair::from_seed_and_public_key(&bytes("d")?, &bytes("x")?)
                    .map_err(rejected)?,
            ),
            Some("oct") => hmac_key(&bytes("k")?)?,
            _ => {
                return Err(AssertionError::misconfigured(
                    "the JWK is not an RSA, EC P-256, OKP Ed25519 or oct key",
                ));
            }
        };
        let mut key = Self::of(key);
        if let Some(alg) = text("alg") {
            key = key.with_algorithm(Algorithm::from_name(alg)?)?;
        }
        if let Some(kid) = text("kid") {
            key = key.with_key_id(kid);
        }
        Ok(key)
    }

    /// A private key from a JWK file, as [`from_jwk`](Self::from_jwk).
    pub fn from_jwk_file(path: impl AsRef<Path>) -> Result<Self, AssertionError> {
        let path = path.as_ref();
        let text = read_key_file(path)?;
        let text = std::str::from_utf8(&text)
            .map_err(|_| in_file(AssertionError::misconfigured("the JWK is not UTF-8"), path))?;
        Self::from_jwk(text).map_err(|e| in_file(e, path))
    }

    /// An HMAC key for HS256 (`client_secret_jwt`: the client secret's
    /// bytes). The watcher makes this key from the client's secret by
    /// itself.
    pub fn hmac(secret: &[u8]) -> Result<Self, AssertionError> {
        Ok(Self::of(hmac_key(secret)?))
    }

    /// Signs with `algorithm`, which must suit the key: RS256 or PS256 for
    /// an RSA key; an EC, Ed25519 or HMAC key has one algorithm only.
    pub fn with_algorithm(mut self, algorithm: Algorithm) -> Result<Self, AssertionError> {
        if self.algorithm() == algorithm {
            return Ok(self);
        }
        let rsa = matches!(algorithm, Algorithm::RS256 | Algorithm::PS256);
        match Arc::get_mut(&mut self.key) {
            Some(SigningKey::Rsa { pss, .. }) if rsa => {
                *pss = algorithm == Algorithm::PS256;
                Ok(self)
            }
            Some(_) | None => Err(AssertionError::misconfigured(format!(
                "a {} key cannot sign {algorithm}",
                self.key_kind()
            ))),
        }
    }

    /// Names the key in each JWS header (`kid`), so that the authority
    /// picks the right one of the client's registered keys.
    pub fn with_key_id(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// The algorithm the key signs with.
    pub fn algorithm(&self) -> Algorithm {
        match *self.key {
            SigningKey::Es256(_) => Algorithm::ES256,
            SigningKey::EdDsa(_) => Algorithm::EdDSA,
            SigningKey::Rsa { pss: false, .. } => Algorithm::RS256,
            SigningKey::Rsa { pss: true, .. } => Algorithm::PS256,
            SigningKey::Hs256(_) => Algorithm::HS256,
        }
    }

    /// The key id, if set.
    pub fn key_id(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The public key as a JWK (with `kid`, `alg` and `use`), to register
    /// with the authority; `None` for an HMAC key.
    pub fn public_jwk(&self) -> Option<Value> {
        let mut jwk = self.key.public_jwk()?;
        if let Some(map) = jwk.as_object_mut() {
            map.insert("alg".into(), json!(self.algorithm().as_str()));
            map.insert("use".into(), json!("sig"));
            if let Some(kid) = &self.kid {
                map.insert("kid".into(), json!(kid));
            }
        }
        Some(jwk)
    }

    fn key_kind(&self) -> &'static str {
        match *self.key {
            SigningKey::Es256(_) => "P-256",
            SigningKey::EdDsa(_) => "Ed25519",
            SigningKey::Rsa { .. } => "RSA",
            SigningKey::Hs256(_) => "HMAC",
        }
    }

    /// Signs these claims: a JWT (`typ` `JWT`) with the key's `alg` and
    /// `kid`.
    pub fn sign(&self, claims: &AssertionClaims) -> Result<String, AssertionError> {
        let mut header = json!({ "alg": self.algorithm().as_str(), "typ": "JWT" });
        if let Some(kid) = &self.kid {
            header["kid"] = json!(kid);
        }
        jws::compact(&self.key, &self.rng, &header, &claims.to_json()).map_err(|_| {
            AssertionError::new(
                AssertionProblem::SigningFailed,
                "signing the assertion failed",
            )
        })
    }

    /// Completes the claims of `template` at `now` with a new random `jti`
    /// from the system's randomness (never the refresher's seeded
    /// generator: ids must not repeat across processes), and signs them.
    pub fn sign_template(
        &self,
        template: &AssertionTemplate,
        now: Timestamp,
    ) -> Result<String, AssertionError> {
        let jti = jws::random_id(&self.rng).map_err(|_| {
            AssertionError::new(AssertionProblem::SigningFailed, "no system randomness")
        })?;
        self.sign(&template.claims_at(now, jti))
    }
}

fn hmac_key(secret: &[u8]) -> Result<SigningKey, AssertionError> {
    if secret.is_empty() {
        return Err(AssertionError::misconfigured("an HMAC key cannot be empty"));
    }
    Ok(SigningKey::Hs256(ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        secret,
    )))
}

fn read_key_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, AssertionError> {
    std::fs::read(path).map(Zeroizing::new).map_err(|e| {
        AssertionError::misconfigured(format!("cannot read the key file {}: {e}", path.display()))
    })
}

fn in_file(error: AssertionError, path: &Path) -> AssertionError {
    AssertionError::new(
        error.problem,
        format!("the key file {}: {}", path.display(), error.message),
    )
}

type AssertionFn = dyn Fn() -> Result<String, AssertionError> + Send + Sync;
type SignerFn = dyn Fn(&AssertionClaims) -> Result<String, AssertionError> + Send + Sync;

/// Where an assertion comes from: signed here with a [`ClientKey`], read
/// from a file before every token request, or given by a callback. Cheap to
/// clone; `Debug` shows the kind, the key's algorithm and id, or the path.
#[derive(Clone)]
pub struct Assertion(Kind);

#[derive(Clone)]
enum Kind {
    Signed(ClientKey),
    Signer(Arc<SignerFn>),
    File(PathBuf),
    Callback(Arc<AssertionFn>),
}

impl fmt::Debug for Assertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Signed(key) => f.debug_tuple("Assertion::Signed").field(key).finish(),
            Kind::Signer(_) => f.write_str("Assertion::Signer"),
            Kind::File(path) => f.debug_tuple("Assertion::File").field(path).finish(),
            Kind::Callback(_) => f.write_str("Assertion::Callback"),
        }
    }
}

impl Assertion {
    /// Assertions signed with `key`, with the claims the core decides, a new
    /// random `jti` and the time of each request.
    pub fn signed(key: ClientKey) -> Self {
        Assertion(Kind::Signed(key))
    }

    /// Assertions signed by `signer`, a key this crate does not hold (in a
    /// KMS or an HSM, say): it gets the claims the core decided, with a new
    /// random `jti` and the time of the request, and returns the compact
    /// JWS. It runs where blocking is allowed. Counts as a signer wherever a
    /// key is asked for.
    pub fn signed_by(
        signer: impl Fn(&AssertionClaims) -> Result<String, AssertionError> + Send + Sync + 'static,
    ) -> Self {
        Assertion(Kind::Signer(Arc::new(signer)))
    }

    /// Whether the assertion is signed here or by a [`signed_by`](Self::signed_by)
    /// signer, with the claims the core decides (rather than made elsewhere).
    pub fn is_signed(&self) -> bool {
        matches!(self.0, Kind::Signed(_) | Kind::Signer(_))
    }

    /// An assertion made elsewhere, read from the file at `path` before
    /// every token request, whole: a platform that rotates it by replacing
    /// the file (as the kubelet does with an atomic rename) is followed at
    /// once. A missing or empty file is transient; see the
    /// [module documentation](self) for the rest.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Assertion(Kind::File(path.into()))
    }

    /// An assertion made elsewhere, asked of `callback` before every token
    /// request. It runs where blocking is allowed (the runtime's blocking
    /// pool, or a thread); return [`AssertionError::unavailable`] for a
    /// failure worth retrying soon.
    pub fn from_fn(
        callback: impl Fn() -> Result<String, AssertionError> + Send + Sync + 'static,
    ) -> Self {
        Assertion(Kind::Callback(Arc::new(callback)))
    }

    /// The key, for a signed assertion.
    pub fn key(&self) -> Option<&ClientKey> {
        match &self.0 {
            Kind::Signed(key) => Some(key),
            _ => None,
        }
    }

    /// Makes the assertion for a request: signs `template` at `now`, or
    /// reads the file, or calls back (blocking work: run it off async
    /// tasks).
    pub fn make(
        &self,
        template: &AssertionTemplate,
        now: Timestamp,
    ) -> Result<Zeroizing<String>, AssertionError> {
        match &self.0 {
            Kind::Signed(key) => key.sign_template(template, now).map(Zeroizing::new),
            Kind::Signer(signer) => {
                let jti = jws::random_id(&SystemRandom::new()).map_err(|_| {
                    AssertionError::new(AssertionProblem::SigningFailed, "no system randomness")
                })?;
                signer(&template.claims_at(now, jti)).map(Zeroizing::new)
            }
            Kind::File(path) => {
                let text = read_secret_file(path, "assertion")?;
                check_external(&text, now, &format!("the assertion in {}", path.display()))?;
                Ok(text)
            }
            Kind::Callback(callback) => {
                let text = Zeroizing::new(callback()?.trim().to_owned());
                check_external(&text, now, "the assertion from the callback")?;
                Ok(text)
            }
        }
    }
}

/// Reads a file that holds a credential made elsewhere (an assertion, a
/// token exchange's subject token), whole and trimmed; `what` names it in
/// errors ("assertion", "subject token"). Missing or empty: transient (a
/// rotation in progress); unreadable for another reason: a
/// misconfiguration; larger than 64 KiB or not text: malformed.
pub(crate) fn read_secret_file(
    path: &Path,
    what: &str,
) -> Result<Zeroizing<String>, AssertionError> {
    use std::io::Read;
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => AssertionError::unavailable(format!(
            "the {what} file {shown} is missing (being replaced?)"
        )),
        _ => AssertionError::misconfigured(format!("cannot read the {what} file {shown}: {e}")),
    })?;
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_ASSERTION_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| {
            AssertionError::misconfigured(format!("cannot read the {what} file {shown}: {e}"))
        })?;
    if bytes.len() as u64 > MAX_ASSERTION_BYTES {
        return Err(AssertionError::new(
            AssertionProblem::Malformed,
            format!("the {what} file {shown} is larger than {MAX_ASSERTION_BYTES} bytes"),
        ));
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        AssertionError::new(
            AssertionProblem::Malformed,
            format!("the {what} file {shown} is not text"),
        )
    })?;
    let text = Zeroizing::new(text.trim().to_owned());
    if text.is_empty() {
        return Err(AssertionError::unavailable(format!(
            "the {what} file {shown} is empty (being written?)"
        )));
    }
    Ok(text)
}

/// Checks that an assertion made elsewhere is a JWT that has not expired.
fn check_external(text: &str, now: Timestamp, what: &str) -> Result<(), AssertionError> {
    let claims = jws::unverified_claims(text).map_err(|why| {
        AssertionError::new(AssertionProblem::Malformed, format!("{what}: {why}"))
    })?;
    check_expiry(&claims, now, what)
}

/// Checks the `exp` of a JWT made elsewhere (read, not verified): past
/// (beyond a few seconds of leeway) is [`AssertionProblem::Expired`].
pub(crate) fn check_expiry(
    claims: &serde_json::Map<String, Value>,
    now: Timestamp,
    what: &str,
) -> Result<(), AssertionError> {
    if let Some(exp) = claims.get("exp") {
        let Some(exp) = exp.as_f64().filter(|e| e.is_finite()) else {
            return Err(AssertionError::new(
                AssertionProblem::Malformed,
                format!("{what}: its exp is not a number"),
            ));
        };
        let now_secs = now.as_millis() / 1000;
        if exp < 0.0 || (exp as u64).saturating_add(EXPIRY_LEEWAY_SECS) < now_secs {
            return Err(AssertionError::new(
                AssertionProblem::Expired,
                format!(
                    "{what} expired {} s ago (exp {}): whatever issues it is not renewing it",
                    now_secs.saturating_sub(exp as u64),
                    exp as u64
                ),
            ));
        }
    }
    Ok(())
}

/// The assertions of one key's requests, as the driver holds them.
#[derive(Clone, Debug, Default)]
pub(crate) struct Assertions {
    /// For client authentication.
    pub(crate) client: Option<Assertion>,
    /// For the JWT bearer grant.
    pub(crate) grant: Option<Assertion>,
    /// A token exchange's subject and actor tokens (RFC 8693), made in the
    /// same step.
    pub(crate) exchange: crate::token_exchange::ExchangeTokens,
}

impl Assertions {
    /// Boxed, or nothing when there are none (most clients): a key keeps
    /// eight bytes for them, not the whole set.
    pub(crate) fn boxed(self) -> Option<Box<Assertions>> {
        let none = self.client.is_none()
            && self.grant.is_none()
            && self.exchange.subject.is_none()
            && self.exchange.actor.is_none();
        (!none).then(|| Box::new(self))
    }

    /// Checks these assertions against what `client` needs and completes
    /// them (a `client_secret_jwt` client signs with its secret): every
    /// configuration that cannot work is refused here, before any request.
    pub(crate) fn for_client(&self, client: &OAuth2Client) -> Result<Assertions, AssertionError> {
        let method = client.get_auth_method();
        let client_assertion = match (method, &self.client) {
            (AuthMethod::PrivateKeyJwt, Some(assertion)) => {
                if assertion
                    .key()
                    .is_some_and(|k| !k.algorithm().is_asymmetric())
                {
                    return Err(AssertionError::misconfigured(
                        "private_key_jwt signs with a private key (RS256, PS256, ES256, EdDSA), not an HMAC key; for HS256 use client_secret_jwt",
                    ));
                }
                Some(assertion.clone())
            }
            (AuthMethod::PrivateKeyJwt, None) => {
                return Err(AssertionError::misconfigured(
                    "the client authenticates with private_key_jwt: give it a key (Assertion::signed), an assertion file or a callback",
                ));
            }
            (AuthMethod::ClientSecretJwt, Some(assertion)) => {
                if assertion
                    .key()
                    .is_some_and(|k| k.algorithm().is_asymmetric())
                {
                    return Err(AssertionError::misconfigured(
                        "client_secret_jwt signs with HS256 and the client secret, not a private key; for a private key use private_key_jwt",
                    ));
                }
                Some(assertion.clone())
            }
            (AuthMethod::ClientSecretJwt, None) => {
                let secret = client.get_client_secret().ok_or_else(|| {
                    AssertionError::misconfigured(
                        "the client authenticates with client_secret_jwt but has no client secret",
                    )
                })?;
                Some(Assertion::signed(ClientKey::hmac(
                    secret.expose_secret().as_bytes(),
                )?))
            }
            (_, Some(_)) => {
                return Err(AssertionError::misconfigured(format!(
                    "a client assertion was given, but the client authenticates with {}: use AuthMethod::PrivateKeyJwt or ClientSecretJwt",
                    method.as_str()
                )));
            }
            (_, None) => None,
        };
        let grant_assertion = match (client.grant(), client.get_grant_assertion(), &self.grant) {
            (GrantType::JwtBearer, Some(described), Some(assertion)) => {
                if described.is_signed() != assertion.is_signed() {
                    return Err(AssertionError::misconfigured(if described.is_signed() {
                        "the JWT bearer grant's assertion is described as signed (GrantAssertion::signed): give it a key (Assertion::signed) or a signer (Assertion::signed_by)"
                    } else {
                        "the JWT bearer grant's assertion is described as external (GrantAssertion::external): give it a file or a callback, not a key"
                    }));
                }
                Some(assertion.clone())
            }
            (GrantType::JwtBearer, _, None) => {
                return Err(AssertionError::misconfigured(
                    "the JWT bearer grant needs its assertion: a key (Assertion::signed), a file or a callback",
                ));
            }
            (GrantType::JwtBearer, None, Some(_)) => {
                return Err(AssertionError::misconfigured(
                    "the JWT bearer grant needs a GrantAssertion on its OAuth2Client",
                ));
            }
            (_, _, Some(_)) => {
                return Err(AssertionError::misconfigured(
                    "a grant assertion was given, but the client does not use the JWT bearer grant",
                ));
            }
            (_, _, None) => None,
        };
        let exchange = self.exchange_for(client)?;
        Ok(Assertions {
            client: client_assertion,
            grant: grant_assertion,
            exchange,
        })
    }

    /// Checks the token exchange's tokens against what `client` needs.
    fn exchange_for(
        &self,
        client: &OAuth2Client,
    ) -> Result<crate::token_exchange::ExchangeTokens, AssertionError> {
        let ExchangeTokens { subject, actor, .. } = &self.exchange;
        let Some(settings) = client.get_token_exchange() else {
            if subject.is_some() || actor.is_some() {
                return Err(AssertionError::misconfigured(
                    "a subject or actor token was given, but the client does not use token exchange (OAuth2Client::token_exchange)",
                ));
            }
            return Ok(ExchangeTokens::default());
        };
        if client.grant() != GrantType::TokenExchange {
            return Err(AssertionError::misconfigured(
                "the client has token exchange settings but another grant",
            ));
        }
        if subject.is_none() {
            return Err(AssertionError::misconfigured(
                "the token exchange needs its subject token: a file, a callback or another watcher",
            ));
        }
        match (settings.actor_token_type(), actor) {
            (Some(_), None) => {
                return Err(AssertionError::misconfigured(
                    "the token exchange presents an actor token (TokenExchange::actor): give its file, callback or watcher",
                ));
            }
            (None, Some(_)) => {
                return Err(AssertionError::misconfigured(
                    "an actor token was given, but the token exchange names no actor token type (TokenExchange::actor)",
                ));
            }
            _ => {}
        }
        let jwt =
            |token_type: Option<&str>| matches!(token_type, Some(JWT_TOKEN_TYPE | ID_TOKEN_TYPE));
        Ok(ExchangeTokens {
            subject_jwt: jwt(Some(settings.subject_token_type())),
            actor_jwt: jwt(settings.actor_token_type()),
            ..self.exchange.clone()
        })
    }

    /// Takes a request out to send it, with what it still needs: the
    /// assertions, made by [`Pending::complete`].
    pub(crate) fn take<R: Runtime>(
        &self,
        request: TokenRequest,
        runtime: &R,
    ) -> (http::Request<Vec<u8>>, Pending<R>) {
        let pending = Pending {
            runtime: runtime.clone(),
            client: request
                .client_assertion()
                .cloned()
                .map(|t| (t, self.client.clone())),
            grant: request
                .grant_assertion()
                .cloned()
                .map(|t| (t, self.grant.clone())),
            subject: request
                .subject_token_needed()
                .then(|| self.exchange.subject.clone())
                .flatten()
                .map(|source| Needed::new(source, "subject token", self.exchange.subject_jwt)),
            actor: request
                .actor_token_needed()
                .then(|| self.exchange.actor.clone())
                .flatten()
                .map(|source| Needed::new(source, "actor token", self.exchange.actor_jwt)),
            exchange_needed: request.subject_token_needed(),
            presented: Presented::default(),
        };
        (request.into_http(), pending)
    }
}

/// The assertions and exchange tokens a request still needs.
#[derive(Clone)]
pub(crate) struct Pending<R> {
    runtime: R,
    client: Option<(AssertionTemplate, Option<Assertion>)>,
    grant: Option<(AssertionTemplate, Option<Assertion>)>,
    subject: Option<Needed>,
    actor: Option<Needed>,
    /// Whether the request is a token exchange (which needs a subject token
    /// even when none is configured: then it fails, typed).
    exchange_needed: bool,
    /// The upstream watchers' tokens presented (a chain).
    presented: Presented,
}

impl<R: Runtime> Pending<R> {
    /// Makes the assertions and takes the exchange tokens (off the async
    /// task: files and callbacks may block; upstream watchers' tokens are
    /// awaited) and adds them to the request.
    pub(crate) async fn complete(
        &self,
        mut request: http::Request<Vec<u8>>,
    ) -> Result<http::Request<Vec<u8>>, FetchError> {
        if self.client.is_none() && self.grant.is_none() && !self.exchange_needed {
            return Ok(request);
        }
        if self.exchange_needed && self.subject.is_none() {
            return Err(AssertionError::misconfigured(
                "the request needs a subject token and none is configured",
            )
            .into());
        }
        let needed: Vec<&Needed> = self.subject.iter().chain(self.actor.iter()).collect();
        let upstream = take_upstream(&self.runtime, &needed, &self.presented).await?;
        let mut upstream = upstream.into_iter();
        let subject = self.subject.clone().map(|n| (n, upstream.next().flatten()));
        let actor = self.actor.clone().map(|n| (n, upstream.next().flatten()));
        let (client, grant) = (self.client.clone(), self.grant.clone());
        let made = unblock(&self.runtime, move || {
            let now: Timestamp = std::time::SystemTime::now().into();
            let make = |pending: Option<(AssertionTemplate, Option<Assertion>)>, what: &str| {
                pending
                    .map(|(template, assertion)| match assertion {
                        Some(assertion) => assertion.make(&template, now),
                        None => Err(AssertionError::misconfigured(format!(
                            "the request needs a {what} and none is configured"
                        ))),
                    })
                    .transpose()
            };
            let take = |pending: Option<(Needed, Option<Arc<TokenRecord>>)>| {
                pending
                    .map(|(need, token)| make_blocking(&need, token, now))
                    .transpose()
            };
            Ok::<_, AssertionError>((
                make(client, "client assertion")?,
                make(grant, "grant assertion")?,
                take(subject)?,
                take(actor)?,
            ))
        })
        .await
        .map_err(|_| {
            FetchError::from(AssertionError::unavailable(
                "making the assertion panicked or was cancelled",
            ))
        })?;
        let (client, grant, subject, actor) = made?;
        if let Some(client) = client {
            add_client_assertion(&mut request, &client);
        }
        if let Some(grant) = grant {
            add_grant_assertion(&mut request, &grant);
        }
        if let Some(subject) = subject {
            add_subject_token(&mut request, &subject);
        }
        if let Some(actor) = actor {
            add_actor_token(&mut request, &actor);
        }
        Ok(request)
    }

    /// Whether a refusal of this request can be retried at once after an
    /// upstream watcher replaced its token: a chain, without a DPoP proof
    /// (which cannot be sent twice).
    pub(crate) fn retries_after_upstream(&self, request: &http::Request<Vec<u8>>) -> bool {
        self.subject
            .iter()
            .chain(self.actor.iter())
            .any(Needed::is_watcher)
            && !request.headers().contains_key("dpop")
    }

    /// After the authority refused the request with `invalid_grant`: asks
    /// the upstream watchers to replace the tokens presented, and waits for
    /// them. `true` when sending again can help.
    pub(crate) async fn upstream_replaced(&self) -> bool {
        let needed: Vec<&Needed> = self.subject.iter().chain(self.actor.iter()).collect();
        replace_refused(&self.runtime, &needed, &self.presented).await
    }
}

/// A P-256 PKCS#8 PEM key made now, for documentation examples.
#[doc(hidden)]
pub fn testing_es256_pem() -> Zeroizing<String> {
    let rng = SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("a P-256 key");
    let body = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Zeroizing::new(pem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{
        ECDSA_P256_SHA256_FIXED, ED25519, RSA_PKCS1_2048_8192_SHA256, RSA_PSS_2048_8192_SHA256,
        UnparsedPublicKey,
    };
    use tokenkeeper_core::oauth2::assertion::ClientAssertionSettings;
    use tokenkeeper_core::{ClientId, ClientSecret};

    const RSA_PKCS8: &str = include_str!("../../tokenkeeper-testkit/src/keys/rsa-2048-a.pem");
    const RSA_PKCS1: &str = include_str!("../../tokenkeeper-testkit/src/keys/rsa-2048-b-pkcs1.pem");

    fn template() -> AssertionTemplate {
        OAuth2Client::private_key_jwt("https://a.example/token", ClientId::new("svc"))
            .unwrap()
            .client_assertion_settings(ClientAssertionSettings::default())
            .build_request(None)
            .unwrap()
            .client_assertion()
            .cloned()
            .unwrap()
    }

    fn parts(jwt: &str) -> (Value, Value, Vec<u8>, String) {
        let p: Vec<&str> = jwt.split('.').collect();
        let d = |x: &str| URL_SAFE_NO_PAD.decode(x).unwrap();
        (
            serde_json::from_slice(&d(p[0])).unwrap(),
            serde_json::from_slice(&d(p[1])).unwrap(),
            d(p[2]),
            format!("{}.{}", p[0], p[1]),
        )
    }

    /// Verifies with ring from the public JWK alone.
    fn verify(jwk: &Value, alg: &str, input: &str, signature: &[u8]) {
        let b = |n: &str| URL_SAFE_NO_PAD.decode(jwk[n].as_str().unwrap()).unwrap();
        let ok = match alg {
            "ES256" => {
                let mut point = vec![4];
                point.extend(b("x"));
                point.extend(b("y"));
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                    .verify(input.as_bytes(), signature)
            }
            "EdDSA" => UnparsedPublicKey::new(&ED25519, b("x")).verify(input.as_bytes(), signature),
            "RS256" | "PS256" => {
                let params = if alg == "RS256" {
                    &RSA_PKCS1_2048_8192_SHA256
                } else {
                    &RSA_PSS_2048_8192_SHA256
                };
                ring::signature::RsaPublicKeyComponents {
                    n: b("n"),
                    e: b("e"),
                }
                .verify(params, input.as_bytes(), signature)
            }
            other => panic!("{other}"),
        };
        ok.unwrap_or_else(|_| panic!("{alg} signature verifies"));
    }

    fn ed25519_pem() -> String {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let body = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
        format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n")
    }

    #[test]
    fn every_algorithm_signs_what_its_public_key_verifies() {
        let keys = [
            ClientKey::from_pem(RSA_PKCS8.as_bytes()).unwrap(),
            ClientKey::from_pem(RSA_PKCS8.as_bytes())
                .unwrap()
                .with_algorithm(Algorithm::PS256)
                .unwrap(),
            ClientKey::from_pem(RSA_PKCS1.as_bytes()).unwrap(),
            ClientKey::from_pem(testing_es256_pem().as_bytes()).unwrap(),
            ClientKey::from_pem(ed25519_pem().as_bytes()).unwrap(),
        ];
        let expected = ["RS256", "PS256", "RS256", "ES256", "EdDSA"];
        let now = Timestamp::from_secs(1_700_000_000);
        for (key, alg) in keys.into_iter().zip(expected) {
            let key = key.with_key_id("k-1");
            assert_eq!(key.algorithm().as_str(), alg);
            let jwt = key.sign_template(&template(), now).unwrap();
            let (header, claims, signature, input) = parts(&jwt);
            assert_eq!(header["alg"], alg);
            assert_eq!(header["kid"], "k-1");
            assert_eq!(header["typ"], "JWT");
            assert_eq!(claims["iss"], "svc");
            assert_eq!(claims["sub"], "svc");
            assert_eq!(claims["aud"], "https://a.example/token");
            assert_eq!(claims["exp"], 1_700_000_060u64);
            let jwk = key.public_jwk().unwrap();
            assert!(jwk.get("d").is_none());
            verify(&jwk, alg, &input, &signature);
            // Each assertion has its own id from the system's randomness.
            let again = parts(&key.sign_template(&template(), now).unwrap()).1;
            assert_ne!(again["jti"], claims["jti"]);
            assert_eq!(claims["jti"].as_str().unwrap().len(), 32);
            let shown = format!("{key:?}");
            assert!(shown.contains(alg) && shown.contains("k-1"), "{shown}");
        }
    }

    #[test]
    fn hmac_and_jwk_keys() {
        let key = ClientKey::hmac(b"the-shared-secret").unwrap();
        let jwt = key
            .sign_template(&template(), Timestamp::from_secs(10))
            .unwrap();
        let (header, _, signature, input) = parts(&jwt);
        assert_eq!(header["alg"], "HS256");
        let hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"the-shared-secret");
        ring::hmac::verify(&hmac, input.as_bytes(), &signature).unwrap();
        assert!(key.public_jwk().is_none());
        assert!(!format!("{key:?}").contains("the-shared-secret"));

        // A private JWK: kid and alg come from it; the signature verifies with its public part.
        let ec = ClientKey::from_pem(testing_es256_pem().as_bytes()).unwrap();
        let public = ec.public_jwk().unwrap();
        // Build a private EC JWK from the PKCS#8 by way of ring: sign with the JWK-made key
        // and verify with the public JWK.
        let rsa = ClientKey::from_pem(RSA_PKCS8.as_bytes()).unwrap();
        assert!(rsa.clone().with_algorithm(Algorithm::ES256).is_err());
        assert!(ec.clone().with_algorithm(Algorithm::PS256).is_err());
        assert_eq!(public["kty"], "EC");
        let oct = format!(
            r#"{{"kty":"oct","k":"{}","kid":"h1","alg":"HS256"}}"#,
            URL_SAFE_NO_PAD.encode(b"k3y")
        );
        let key = ClientKey::from_jwk(&oct).unwrap();
        assert_eq!(
            (key.algorithm(), key.key_id()),
            (Algorithm::HS256, Some("h1"))
        );
        let err = ClientKey::from_jwk(&public.to_string()).unwrap_err();
        assert_eq!(err.problem(), AssertionProblem::Misconfigured);
        assert!(err.to_string().contains("`d`"), "{err}");
        assert!(Algorithm::from_name("RS512").is_err());
        let err = ClientKey::from_pem_file("/nonexistent/key.pem").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/key.pem"), "{err}");
        let sec1 = b"-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIIm4\n-----END EC PRIVATE KEY-----\n";
        assert!(ClientKey::from_pem(sec1).is_err());
    }

    #[test]
    fn private_jwks_of_every_kind_sign_what_their_public_keys_verify() {
        // RSA: the same key as the PEM fixture, as a private JWK (kid and alg from it).
        let rsa = ClientKey::from_jwk(include_str!(
            "../../tokenkeeper-testkit/src/keys/rsa-2048-a.jwk.json"
        ))
        .unwrap();
        assert_eq!(
            (rsa.algorithm(), rsa.key_id()),
            (Algorithm::PS256, Some("rsa-a"))
        );
        let from_pem = ClientKey::from_pem(RSA_PKCS8.as_bytes()).unwrap();
        assert_eq!(
            rsa.public_jwk().unwrap()["n"],
            from_pem.public_jwk().unwrap()["n"]
        );
        // Test keys made for this test (Python's `cryptography`).
        let ec = ClientKey::from_jwk(
            r#"{"kty":"EC","crv":"P-256","x":"S-ugmHvKTZ_qEfGpK-2Q81Sj0kTtFaR6aklxYWa_1zs","y":"5fdnvZY9JPEgD1dIu4h_yj4H4IF1OB_hQizLuoJaGqA","d":"p8Cn2mboiKk_eOsWrgOJOFW5Mayn86Tt8BOJth1O9Ks"}"#,
        )
        .unwrap();
        let ed = ClientKey::from_jwk(
            r#"{"kty":"OKP","crv":"Ed25519","d":"9wSaeOG1fpaLbBzQQBhb4viZYsAZEjANmkqBUWL8FO4","x":"VzFhuX9R48ACcQWXLZHUFEiCfeTMY3zWE0Ea5NFQnT8","kid":"ed"}"#,
        )
        .unwrap();
        assert_eq!(ed.key_id(), Some("ed"));
        for key in [rsa, ec, ed] {
            let alg = key.algorithm().as_str();
            let jwt = key
                .sign_template(&template(), Timestamp::from_secs(5))
                .unwrap();
            let (header, _, signature, input) = parts(&jwt);
            assert_eq!(header["alg"], alg);
            verify(&key.public_jwk().unwrap(), alg, &input, &signature);
        }
        // A private key whose public half does not match is refused.
        let mismatched = r#"{"kty":"OKP","crv":"Ed25519","d":"9wSaeOG1fpaLbBzQQBhb4viZYsAZEjANmkqBUWL8FO4","x":"S-ugmHvKTZ_qEfGpK-2Q81Sj0kTtFaR6aklxYWa_1zs"}"#;
        assert_eq!(
            ClientKey::from_jwk(mismatched).unwrap_err().problem(),
            AssertionProblem::Misconfigured
        );
    }

    fn jwt_with(claims: Value) -> String {
        let e = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.c2ln", e(&json!({"alg": "RS256"})), e(&claims))
    }

    #[test]
    fn external_assertions_are_read_whole_each_time_and_classed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let source = Assertion::file(&path);
        let now = Timestamp::from_secs(1_000_000);
        let make = || source.make(&template(), now);
        assert_eq!(make().unwrap_err().problem(), AssertionProblem::Unavailable);
        std::fs::write(&path, "").unwrap();
        assert_eq!(make().unwrap_err().problem(), AssertionProblem::Unavailable);
        std::fs::write(&path, "not a jwt").unwrap();
        assert_eq!(make().unwrap_err().problem(), AssertionProblem::Malformed);
        let first = jwt_with(json!({"sub": "a", "exp": 1_000_100}));
        std::fs::write(&path, format!("{first}\n")).unwrap();
        assert_eq!(make().unwrap().as_str(), first);
        let second = jwt_with(json!({"sub": "b", "exp": 1_000_200}));
        std::fs::write(&path, &second).unwrap();
        assert_eq!(make().unwrap().as_str(), second);
        let expired = jwt_with(json!({"sub": "c", "exp": 999_000}));
        std::fs::write(&path, &expired).unwrap();
        let err = make().unwrap_err();
        assert_eq!(err.problem(), AssertionProblem::Expired);
        assert!(!err.to_string().contains(&expired), "{err}");
        let fetch: FetchError = err.into();
        assert!(fetch.is_permanent() && !fetch.is_misconfiguration());
        // A folder is not a transient problem.
        let err = Assertion::file(dir.path())
            .make(&template(), now)
            .unwrap_err();
        assert_eq!(err.problem(), AssertionProblem::Misconfigured);

        let callback = Assertion::from_fn(|| Err(AssertionError::unavailable("not yet")));
        assert_eq!(
            callback.make(&template(), now).unwrap_err().problem(),
            AssertionProblem::Unavailable
        );
        assert!(format!("{callback:?}").contains("Callback"));
    }

    #[test]
    fn configurations_that_cannot_work_are_refused() {
        let url = "https://a.example/token";
        let pkj = OAuth2Client::private_key_jwt(url, ClientId::new("svc")).unwrap();
        let none = Assertions::default();
        assert!(none.for_client(&pkj).is_err());
        let hmac = Assertions {
            client: Some(Assertion::signed(ClientKey::hmac(b"x").unwrap())),
            ..Assertions::default()
        };
        assert!(hmac.for_client(&pkj).is_err());
        let hs =
            OAuth2Client::client_credentials(url, ClientId::new("svc"), ClientSecret::new("s"))
                .unwrap()
                .auth_method(AuthMethod::ClientSecretJwt);
        let made = none.for_client(&hs).unwrap();
        assert_eq!(
            made.client
                .as_ref()
                .and_then(Assertion::key)
                .map(ClientKey::algorithm),
            Some(Algorithm::HS256)
        );
        let plain =
            OAuth2Client::client_credentials(url, ClientId::new("svc"), ClientSecret::new("s"))
                .unwrap();
        assert!(hmac.for_client(&plain).is_err());
        assert!(none.for_client(&plain).unwrap().client.is_none());
        let bearer = OAuth2Client::jwt_bearer(
            url,
            ClientId::new("svc"),
            tokenkeeper_core::oauth2::assertion::GrantAssertion::external("k8s"),
        )
        .unwrap();
        assert!(none.for_client(&bearer).is_err());
        let key = ClientKey::from_pem(testing_es256_pem().as_bytes()).unwrap();
        let signed = Assertions {
            client: None,
            grant: Some(Assertion::signed(key)),
            ..Assertions::default()
        };
        assert!(
            signed.for_client(&bearer).is_err(),
            "an external grant takes no key"
        );
        let file = Assertions {
            client: None,
            grant: Some(Assertion::file("/var/run/token")),
            ..Assertions::default()
        };
        assert!(file.for_client(&bearer).is_ok());
    }
}
