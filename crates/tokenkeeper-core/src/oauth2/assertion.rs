//! JWT assertions (RFC 7521, RFC 7523): what an assertion claims, decided
//! here; signing it, reading it from a file or asking a callback for it is
//! the driver's (the core holds no key and does no cryptography).
//!
//! Two uses, which may be combined:
//!
//! - **Client authentication** (RFC 7523 §2.2, OpenID Connect Core §9):
//!   a client whose [`AuthMethod`](super::AuthMethod) is
//!   [`PrivateKeyJwt`](super::AuthMethod::PrivateKeyJwt) or
//!   [`ClientSecretJwt`](super::AuthMethod::ClientSecretJwt) sends
//!   `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`
//!   and a `client_assertion`. The request the core builds carries the type
//!   and the client id, and the claims the assertion must make
//!   ([`TokenRequest::client_assertion`](super::TokenRequest::client_assertion));
//!   the driver signs them (or takes an assertion made elsewhere: a file, a
//!   callback) and adds it with [`add_client_assertion`].
//! - **The JWT bearer grant** (RFC 7523 §2.1): a client made with
//!   [`OAuth2Client::jwt_bearer`](super::OAuth2Client::jwt_bearer) sends
//!   `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` and an
//!   `assertion`, described by a [`GrantAssertion`]; the driver adds it with
//!   [`add_grant_assertion`].
//!
//! Each assertion's unique id (`jti`) and its time (`iat`, `exp`) are given
//! by the driver when it signs ([`AssertionTemplate::claims_at`]): the id
//! from the system's randomness (a seeded generator would repeat ids across
//! processes, which servers refuse as replays), the time from its clock at
//! that moment, so that an assertion is never older than its request.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::time::Timestamp;

/// The `client_assertion_type` of a JWT client assertion (RFC 7523 §2.2).
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The `grant_type` of the JWT bearer grant (RFC 7523 §2.1).
pub const JWT_BEARER_GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// How long an assertion the core asks for is valid by default: one minute
/// (RFC 7523 §3 wants a short `exp`; servers may refuse long ones).
pub const DEFAULT_ASSERTION_LIFETIME: Duration = Duration::from_secs(60);

/// The longest assertion lifetime accepted; longer ones are cut to it.
pub const MAX_ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);

/// Claims an assertion's signer sets itself: they cannot be added with
/// [`GrantAssertion::claim`].
const RESERVED_CLAIMS: [&str; 7] = ["iss", "sub", "aud", "iat", "exp", "jti", "nbf"];

/// Why the assertion a request needs could not be had
/// ([`FetchError::Assertion`](crate::FetchError::Assertion)), and so whether
/// trying again soon can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AssertionProblem {
    /// Not there for now: the assertion file is missing or empty (a kubelet
    /// replacing it, a sidecar that has not written it yet), or the
    /// callback said to try again. Transient.
    Unavailable,
    /// The assertion made elsewhere has expired (its `exp` is past): the
    /// platform that issues it is not renewing it. Permanent: retried at
    /// the backoff cap, as the file may yet be replaced.
    Expired,
    /// The assertion made elsewhere is not a JWT (three base64url parts, a
    /// JSON payload), or the callback failed for good. Permanent.
    Malformed,
    /// The key or assertion file cannot be read (permissions, a folder), or
    /// the configuration cannot work: no signer for a client that needs one,
    /// a key that does not fit the algorithm or the auth method, an
    /// algorithm that is not supported. Permanent, and a misconfiguration.
    Misconfigured,
    /// Signing failed. Transient.
    SigningFailed,
}

impl AssertionProblem {
    /// Whether trying again soon can help.
    pub fn class(self) -> crate::ErrorClass {
        match self {
            AssertionProblem::Unavailable | AssertionProblem::SigningFailed => {
                crate::ErrorClass::Transient
            }
            AssertionProblem::Expired
            | AssertionProblem::Malformed
            | AssertionProblem::Misconfigured => crate::ErrorClass::Permanent,
        }
    }
}

/// Whom an assertion is for (its `aud`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum AssertionAudience {
    /// The token endpoint URL (query included), as RFC 7523 §3 suggests
    /// (the default).
    #[default]
    TokenEndpoint,
    /// The authorization server's issuer identifier, which OpenID Connect
    /// and RFC 7523bis also accept, or another value the authority asks for.
    Issuer(String),
}

/// The claims of one assertion JWT (RFC 7523 §3), ready to sign.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct AssertionClaims {
    /// Who made the assertion (`iss`).
    pub iss: String,
    /// Whom it is about (`sub`).
    pub sub: String,
    /// Whom it is for (`aud`).
    pub aud: String,
    /// When it was made, in seconds since the epoch (`iat`); also its
    /// `nbf` (not before), which some authorities require.
    pub iat: u64,
    /// When it expires, in seconds since the epoch (`exp`).
    pub exp: u64,
    /// Its unique id (`jti`).
    pub jti: String,
    /// Further claims ([`GrantAssertion::claim`]).
    pub extra: Map<String, Value>,
}

impl AssertionClaims {
    /// The claims as the JSON object of the JWT's payload.
    pub fn to_json(&self) -> String {
        let mut map = self.extra.clone();
        map.insert("iss".into(), Value::String(self.iss.clone()));
        map.insert("sub".into(), Value::String(self.sub.clone()));
        map.insert("aud".into(), Value::String(self.aud.clone()));
        map.insert("iat".into(), Value::from(self.iat));
        map.insert("nbf".into(), Value::from(self.iat));
        map.insert("exp".into(), Value::from(self.exp));
        map.insert("jti".into(), Value::String(self.jti.clone()));
        Value::Object(map).to_string()
    }
}

/// What an assertion must claim, less its time and unique id: a request
/// carries one for each assertion it needs, and the driver completes it
/// with [`claims_at`](Self::claims_at) when it signs.
#[derive(Debug, Clone, PartialEq)]
pub struct AssertionTemplate {
    iss: String,
    sub: String,
    aud: String,
    lifetime: Duration,
    extra: Map<String, Value>,
}

impl AssertionTemplate {
    /// The claims of an assertion made at `now` with the unique id `jti`:
    /// `iat` is `now` and `exp` `now` plus the lifetime, both in whole
    /// seconds.
    pub fn claims_at(&self, now: Timestamp, jti: String) -> AssertionClaims {
        let iat = now.as_millis() / 1000;
        AssertionClaims {
            iss: self.iss.clone(),
            sub: self.sub.clone(),
            aud: self.aud.clone(),
            iat,
            exp: iat.saturating_add(self.lifetime.as_secs().max(1)),
            jti,
            extra: self.extra.clone(),
        }
    }

    /// The issuer (`iss`).
    pub fn issuer(&self) -> &str {
        &self.iss
    }

    /// The subject (`sub`).
    pub fn subject(&self) -> &str {
        &self.sub
    }

    /// The audience (`aud`).
    pub fn audience(&self) -> &str {
        &self.aud
    }

    /// How long the assertion is valid.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }
}

/// How a client's authentication assertions are made (`private_key_jwt`,
/// `client_secret_jwt`): their audience and lifetime. `iss` and `sub` are
/// the client id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ClientAssertionSettings {
    pub(crate) audience: AssertionAudience,
    pub(crate) lifetime: Option<Duration>,
}

impl ClientAssertionSettings {
    /// The audience of the assertions (default: the token endpoint).
    pub fn audience(mut self, audience: AssertionAudience) -> Self {
        self.audience = audience;
        self
    }

    /// How long each assertion is valid (default
    /// [`DEFAULT_ASSERTION_LIFETIME`], at most [`MAX_ASSERTION_LIFETIME`],
    /// at least a second).
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = Some(lifetime);
        self
    }

    pub(crate) fn template(&self, client_id: &str, token_url: &str) -> AssertionTemplate {
        AssertionTemplate {
            iss: client_id.to_owned(),
            sub: client_id.to_owned(),
            aud: audience_of(&self.audience, token_url),
            lifetime: lifetime_of(self.lifetime),
            extra: Map::new(),
        }
    }
}

/// What the assertion of a JWT bearer grant (RFC 7523 §2.1) says, or where
/// it comes from when it is made elsewhere. None of it is secret: all of it
/// is part of the cache key, because the token is issued for the
/// assertion's subject.
#[derive(Debug, Clone, PartialEq)]
pub struct GrantAssertion {
    pub(crate) kind: GrantAssertionKind,
    pub(crate) audience: AssertionAudience,
    pub(crate) lifetime: Option<Duration>,
    pub(crate) extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum GrantAssertionKind {
    Signed { issuer: String, subject: String },
    External { label: String },
}

impl GrantAssertion {
    /// An assertion the driver signs, issued by `issuer` about `subject`:
    /// the core decides its claims (`iss`, `sub`, `aud`, `iat`, `exp`,
    /// `jti`, and any added with [`claim`](Self::claim)).
    pub fn signed(issuer: impl Into<String>, subject: impl Into<String>) -> Self {
        Self::of(GrantAssertionKind::Signed {
            issuer: issuer.into(),
            subject: subject.into(),
        })
    }

    /// An assertion made elsewhere (a platform's identity token in a file,
    /// a callback), which the driver passes on as it is. `label` names what
    /// it asserts (its issuer and subject, say, or the file it is read
    /// from): the core cannot read the assertion, so the label is what keeps
    /// the tokens of two different assertions apart in caches.
    pub fn external(label: impl Into<String>) -> Self {
        Self::of(GrantAssertionKind::External {
            label: label.into(),
        })
    }

    fn of(kind: GrantAssertionKind) -> Self {
        GrantAssertion {
            kind,
            audience: AssertionAudience::TokenEndpoint,
            lifetime: None,
            extra: Map::new(),
        }
    }

    /// The audience of a signed assertion (default: the token endpoint).
    pub fn audience(mut self, audience: AssertionAudience) -> Self {
        self.audience = audience;
        self
    }

    /// How long a signed assertion is valid (default
    /// [`DEFAULT_ASSERTION_LIFETIME`], at most [`MAX_ASSERTION_LIFETIME`]).
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = Some(lifetime);
        self
    }

    /// Adds a claim to a signed assertion (a `scope` claim, as some
    /// authorities want). The claims the signer sets itself (`iss`, `sub`,
    /// `aud`, `iat`, `exp`, `jti`, `nbf`) are refused.
    pub fn claim(
        mut self,
        name: impl Into<String>,
        value: impl Into<Value>,
    ) -> Result<Self, super::ConfigError> {
        let name = name.into();
        if RESERVED_CLAIMS.contains(&name.as_str()) {
            return Err(super::ConfigError::ReservedParameter(name));
        }
        self.extra.insert(name, value.into());
        Ok(self)
    }

    /// Whether the driver signs the assertion (rather than taking it from
    /// elsewhere).
    pub fn is_signed(&self) -> bool {
        matches!(self.kind, GrantAssertionKind::Signed { .. })
    }

    /// The issuer and subject of a signed assertion.
    pub fn issuer_and_subject(&self) -> Option<(&str, &str)> {
        match &self.kind {
            GrantAssertionKind::Signed { issuer, subject } => Some((issuer, subject)),
            GrantAssertionKind::External { .. } => None,
        }
    }

    /// The label of an external assertion.
    pub fn label(&self) -> Option<&str> {
        match &self.kind {
            GrantAssertionKind::External { label } => Some(label),
            GrantAssertionKind::Signed { .. } => None,
        }
    }

    /// What a request carries for the driver: the claims of a signed
    /// assertion, or the bare audience and lifetime of an external one
    /// (whose issuer and subject are the label), which a driver can use to
    /// check what it was given.
    pub(crate) fn template(&self, token_url: &str) -> AssertionTemplate {
        let (iss, sub) = match &self.kind {
            GrantAssertionKind::Signed { issuer, subject } => (issuer.clone(), subject.clone()),
            GrantAssertionKind::External { label } => (label.clone(), label.clone()),
        };
        AssertionTemplate {
            iss,
            sub,
            aud: audience_of(&self.audience, token_url),
            lifetime: lifetime_of(self.lifetime),
            extra: self.extra.clone(),
        }
    }

    /// The part of the cache key that tells this grant's tokens apart.
    pub(crate) fn key_part(&self) -> Value {
        let mut part = Map::new();
        match &self.kind {
            GrantAssertionKind::Signed { issuer, subject } => {
                part.insert("iss".into(), Value::String(issuer.clone()));
                part.insert("sub".into(), Value::String(subject.clone()));
            }
            GrantAssertionKind::External { label } => {
                part.insert("external".into(), Value::String(label.clone()));
            }
        }
        if let AssertionAudience::Issuer(aud) = &self.audience {
            part.insert("aud".into(), Value::String(aud.clone()));
        }
        if !self.extra.is_empty() {
            part.insert("claims".into(), Value::Object(self.extra.clone()));
        }
        serde_json::json!({ "assertion": part })
    }
}

fn audience_of(audience: &AssertionAudience, token_url: &str) -> String {
    match audience {
        AssertionAudience::TokenEndpoint => token_url.to_owned(),
        AssertionAudience::Issuer(issuer) => issuer.clone(),
    }
}

fn lifetime_of(lifetime: Option<Duration>) -> Duration {
    lifetime
        .unwrap_or(DEFAULT_ASSERTION_LIFETIME)
        .clamp(Duration::from_secs(1), MAX_ASSERTION_LIFETIME)
}

/// Adds the client assertion to a request built for a client that
/// authenticates with one ([`TokenRequest::client_assertion`](super::TokenRequest::client_assertion)
/// says which): the `client_assertion` form parameter. The old body is
/// zeroed.
pub fn add_client_assertion(request: &mut http::Request<Vec<u8>>, assertion: &str) {
    append_pair(request, "client_assertion", assertion);
}

/// Adds the JWT bearer grant's assertion to its request: the `assertion`
/// form parameter. The old body is zeroed.
pub fn add_grant_assertion(request: &mut http::Request<Vec<u8>>, assertion: &str) {
    append_pair(request, "assertion", assertion);
}

/// Appends a form-encoded pair to a request's body, zeroing the old body.
pub(super) fn append_pair(request: &mut http::Request<Vec<u8>>, name: &str, value: &str) {
    use zeroize::Zeroize;
    let encoded: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
    let old = request.body_mut();
    let mut body = Vec::with_capacity(old.len() + name.len() + encoded.len() + 2);
    body.extend_from_slice(old);
    if !body.is_empty() {
        body.push(b'&');
    }
    body.extend_from_slice(name.as_bytes());
    body.push(b'=');
    body.extend_from_slice(encoded.as_bytes());
    old.zeroize();
    *old = body;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_make_short_lived_claims() {
        let settings = ClientAssertionSettings::default();
        let template = settings.template("svc", "https://a.example/token?x=1");
        let claims = template.claims_at(Timestamp::from_millis(1_700_000_000_999), "id-1".into());
        assert_eq!(
            (claims.iat, claims.exp),
            (1_700_000_000, 1_700_000_060),
            "whole seconds, one minute"
        );
        assert_eq!((claims.iss.as_str(), claims.sub.as_str()), ("svc", "svc"));
        assert_eq!(claims.aud, "https://a.example/token?x=1");
        let json: Value = serde_json::from_str(&claims.to_json()).unwrap();
        assert_eq!(json["jti"], "id-1");
        assert_eq!(json["nbf"], json["iat"]);
        assert_eq!(json["exp"], 1_700_000_060u64);

        let long = ClientAssertionSettings::default()
            .audience(AssertionAudience::Issuer("https://a.example".into()))
            .lifetime(Duration::from_secs(86_400))
            .template("svc", "https://a.example/token");
        assert_eq!(long.audience(), "https://a.example");
        assert_eq!(long.lifetime(), MAX_ASSERTION_LIFETIME);
    }

    #[test]
    fn grant_assertions_refuse_reserved_claims_and_key_on_their_subject() {
        assert!(GrantAssertion::signed("i", "s").claim("exp", 1).is_err());
        let a = GrantAssertion::signed("i", "alice")
            .claim("scope", "read")
            .unwrap();
        let b = GrantAssertion::signed("i", "bob");
        assert_ne!(a.key_part(), b.key_part());
        let claims = a
            .template("https://t.example/token")
            .claims_at(Timestamp::from_secs(10), "j".into());
        let json: Value = serde_json::from_str(&claims.to_json()).unwrap();
        assert_eq!(json["scope"], "read");
        assert_eq!(json["sub"], "alice");
        let external = GrantAssertion::external("k8s:ns/sa");
        assert!(!external.is_signed());
        assert_eq!(external.label(), Some("k8s:ns/sa"));
    }

    #[test]
    fn assertions_are_form_encoded_and_appended() {
        let mut request = http::Request::new(b"grant_type=x".to_vec());
        add_client_assertion(&mut request, "a.b+c/d");
        add_grant_assertion(&mut request, "e.f.g");
        assert_eq!(
            String::from_utf8(request.body().clone()).unwrap(),
            "grant_type=x&client_assertion=a.b%2Bc%2Fd&assertion=e.f.g"
        );
    }

    fn form(request: &super::super::TokenRequest) -> Vec<(String, String)> {
        url::form_urlencoded::parse(request.as_http().body())
            .into_owned()
            .collect()
    }

    #[test]
    fn assertion_clients_build_requests_without_secrets() {
        use super::super::{AuthMethod, OAuth2Client};
        use crate::{CacheKey, ClientId, ClientSecret};
        let url = "https://a.example/token";
        let pkj = OAuth2Client::private_key_jwt(url, ClientId::new("svc")).unwrap();
        let request = pkj.build_request(None).unwrap();
        let pairs = form(&request);
        assert!(pairs.contains(&("client_id".into(), "svc".into())));
        assert!(pairs.contains(&("client_assertion_type".into(), CLIENT_ASSERTION_TYPE.into())));
        assert!(
            request
                .as_http()
                .headers()
                .get(http::header::AUTHORIZATION)
                .is_none()
        );
        assert_eq!(request.client_assertion().unwrap().issuer(), "svc");
        assert_eq!(request.client_assertion().unwrap().audience(), url);
        assert!(request.grant_assertion().is_none());

        let hs = OAuth2Client::client_credentials(
            url,
            ClientId::new("svc"),
            ClientSecret::new("hmac-key-secret"),
        )
        .unwrap()
        .auth_method(AuthMethod::ClientSecretJwt);
        let request = hs.build_request(None).unwrap();
        let body = String::from_utf8(request.as_http().body().clone()).unwrap();
        assert!(!body.contains("hmac-key-secret"), "{body}");
        assert!(request.client_assertion().is_some());

        let alice = OAuth2Client::jwt_bearer(
            url,
            ClientId::new("svc"),
            GrantAssertion::signed("svc", "alice"),
        )
        .unwrap();
        let bob = OAuth2Client::jwt_bearer(
            url,
            ClientId::new("svc"),
            GrantAssertion::signed("svc", "bob"),
        )
        .unwrap();
        let request = alice.build_request(None).unwrap();
        assert!(form(&request).contains(&("grant_type".into(), JWT_BEARER_GRANT_TYPE.into())));
        assert_eq!(request.grant_assertion().unwrap().subject(), "alice");
        assert!(request.client_assertion().is_none());

        // Keys: the subject and the assertion auth method count.
        let plain =
            OAuth2Client::client_credentials(url, ClientId::new("svc"), ClientSecret::new("s"))
                .unwrap();
        let keys = [
            CacheKey::for_client(&alice),
            CacheKey::for_client(&bob),
            CacheKey::for_client(&pkj),
            CacheKey::for_client(&hs),
            CacheKey::for_client(&plain),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert!(
            keys[0].description().contains("alice"),
            "{}",
            keys[0].description()
        );
        assert!(!keys[3].description().contains("hmac-key-secret"));
        // Without a GrantAssertion, a JWT bearer client cannot ask.
        let bare = OAuth2Client::new(
            super::super::TokenUrl::parse(url, false).unwrap(),
            ClientId::new("svc"),
            None,
            super::super::GrantType::JwtBearer,
        );
        assert!(matches!(
            bare.build_request(None),
            Err(crate::FetchError::Assertion {
                problem: AssertionProblem::Misconfigured,
                ..
            })
        ));
    }
}
