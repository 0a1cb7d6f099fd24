//! Registered clients of the authority.

use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value};

/// How a client must authenticate at the token endpoint (RFC 6749 §2.3.1, RFC 8705 §2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuthMethod {
    /// `client_secret_basic`: `Authorization: Basic base64(urlencode(id) ":" urlencode(secret))`.
    #[default]
    Basic,
    /// `client_secret_post`: `client_id` and `client_secret` in the form body.
    Post,
    /// `tls_client_auth` (RFC 8705 §2.1): `client_id` in the body, no secret, over a connection
    /// that presented a certificate chaining to the client CA of the authority's
    /// [`Pki`](crate::pki::Pki) whose subject CN, or one of its subject alternative names,
    /// equals the client id.
    TlsClientAuth,
    /// `self_signed_tls_client_auth` (RFC 8705 §2.2): `client_id` in the body, no secret, over
    /// a connection that presented a certificate whose `x5t#S256` thumbprint is registered with
    /// [`Client::certificate_thumbprint`]. The certificate need not chain anywhere.
    SelfSignedTlsClientAuth,
    /// `private_key_jwt` (RFC 7523 §2.2): `client_assertion_type` and a `client_assertion`
    /// signed (RS256, PS256, ES256 or EdDSA) with a key registered with
    /// [`Client::public_key`], `iss` and `sub` the client id, `aud` the token endpoint or the
    /// issuer, a near `exp` and a `jti` never seen before.
    PrivateKeyJwt,
    /// `client_secret_jwt`: as [`PrivateKeyJwt`](AuthMethod::PrivateKeyJwt), signed with HS256
    /// keyed by the client secret.
    ClientSecretJwt,
}

impl AuthMethod {
    /// The method's registered name: `client_secret_basic`, `client_secret_post`,
    /// `tls_client_auth` or `self_signed_tls_client_auth`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Basic => "client_secret_basic",
            AuthMethod::Post => "client_secret_post",
            AuthMethod::TlsClientAuth => "tls_client_auth",
            AuthMethod::SelfSignedTlsClientAuth => "self_signed_tls_client_auth",
            AuthMethod::PrivateKeyJwt => "private_key_jwt",
            AuthMethod::ClientSecretJwt => "client_secret_jwt",
        }
    }

    /// Whether the method authenticates with a client certificate rather than a secret.
    pub fn uses_certificate(self) -> bool {
        matches!(
            self,
            AuthMethod::TlsClientAuth | AuthMethod::SelfSignedTlsClientAuth
        )
    }
}

impl fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A client registration: id, secret, authentication method and what its tokens look like.
///
/// ```
/// use std::time::Duration;
/// use tokenkeeper_testkit::{AuthMethod, Client};
///
/// let client = Client::new("svc", "s3cret")
///     .auth_method(AuthMethod::Post)
///     .token_lifetime(Duration::from_secs(60))
///     .issue_refresh_tokens(true);
/// assert_eq!(client.id(), "svc");
/// ```
#[derive(Clone, PartialEq)]
pub struct Client {
    pub(crate) id: String,
    pub(crate) secret: String,
    pub(crate) auth_method: AuthMethod,
    pub(crate) token_lifetime: Option<Duration>,
    pub(crate) issue_refresh_tokens: bool,
    pub(crate) expires_in_as_string: bool,
    pub(crate) extra_fields: Map<String, Value>,
    pub(crate) thumbprints: Vec<String>,
    pub(crate) require_dpop: bool,
    /// Public JWKs for `private_key_jwt`.
    pub(crate) public_keys: Vec<Value>,
}

impl Client {
    /// A client authenticating with `client_secret_basic`, with the authority's default token
    /// lifetime and no refresh tokens in `client_credentials` answers.
    pub fn new(id: impl Into<String>, secret: impl Into<String>) -> Client {
        Client {
            id: id.into(),
            secret: secret.into(),
            auth_method: AuthMethod::Basic,
            token_lifetime: None,
            issue_refresh_tokens: false,
            expires_in_as_string: false,
            extra_fields: Map::new(),
            thumbprints: Vec::new(),
            require_dpop: false,
            public_keys: Vec::new(),
        }
    }

    /// A client authenticating with `private_key_jwt` (RFC 7523 §2.2) with the key of this
    /// public JWK (see [`public_jwk_from_pem`](crate::authority::assertion::public_jwk_from_pem));
    /// more can be registered with [`Client::public_key`]. A `kid` in the JWK must match the
    /// assertion's; an `alg` in it restricts the key to that algorithm.
    pub fn private_key_jwt(id: impl Into<String>, public_jwk: Value) -> Client {
        Client::new(id, "")
            .auth_method(AuthMethod::PrivateKeyJwt)
            .public_key(public_jwk)
    }

    /// A client authenticating with `client_secret_jwt`: HS256 assertions keyed by `secret`.
    pub fn client_secret_jwt(id: impl Into<String>, secret: impl Into<String>) -> Client {
        Client::new(id, secret).auth_method(AuthMethod::ClientSecretJwt)
    }

    /// Registers a public JWK the client's assertions may be signed with, as a registered JWK
    /// set would hold.
    pub fn public_key(mut self, jwk: Value) -> Client {
        self.public_keys.push(jwk);
        self
    }

    /// A client authenticating with `tls_client_auth` (RFC 8705 §2.1): it has no secret, and
    /// presents a certificate issued by the client CA whose subject CN (or a subject
    /// alternative name) is `id`, such as [`Pki::client_identity`](crate::pki::Pki::client_identity)
    /// makes.
    pub fn tls_client_auth(id: impl Into<String>) -> Client {
        Client::new(id, "").auth_method(AuthMethod::TlsClientAuth)
    }

    /// A client authenticating with `self_signed_tls_client_auth` (RFC 8705 §2.2) with the
    /// certificate of this `x5t#S256` thumbprint (see
    /// [`Identity::x5t_s256`](crate::pki::Identity::x5t_s256)). More can be registered with
    /// [`Client::certificate_thumbprint`].
    pub fn self_signed_tls_client_auth(
        id: impl Into<String>,
        x5t_s256: impl Into<String>,
    ) -> Client {
        Client::new(id, "")
            .auth_method(AuthMethod::SelfSignedTlsClientAuth)
            .certificate_thumbprint(x5t_s256)
    }

    /// Registers the `x5t#S256` thumbprint of a certificate this client may authenticate with
    /// under [`AuthMethod::SelfSignedTlsClientAuth`], as a registered JWK set would.
    pub fn certificate_thumbprint(mut self, x5t_s256: impl Into<String>) -> Client {
        self.thumbprints.push(x5t_s256.into());
        self
    }

    /// Sets the only authentication method the authority accepts from this client.
    pub fn auth_method(mut self, method: AuthMethod) -> Client {
        self.auth_method = method;
        self
    }

    /// Sets the lifetime of the access tokens issued to this client.
    ///
    /// `expires_in` is whole seconds on the wire, so the lifetime is truncated to whole
    /// seconds: anything under one second is announced as `"expires_in": 0`.
    pub fn token_lifetime(mut self, lifetime: Duration) -> Client {
        self.token_lifetime = Some(lifetime);
        self
    }

    /// Whether `client_credentials` answers carry a `refresh_token` too. (Answers to the
    /// `refresh_token` grant always carry a new one.)
    pub fn issue_refresh_tokens(mut self, yes: bool) -> Client {
        self.issue_refresh_tokens = yes;
        self
    }

    /// Whether `expires_in` is written as a numeric string (`"3600"`), as some authorities do,
    /// instead of a number.
    pub fn expires_in_as_string(mut self, yes: bool) -> Client {
        self.expires_in_as_string = yes;
        self
    }

    /// Adds a field to every successful answer for this client, for example a `refresh_in`
    /// hint. It overrides a standard field of the same name.
    pub fn extra_field(mut self, name: impl Into<String>, value: impl Into<Value>) -> Client {
        self.extra_fields.insert(name.into(), value.into());
        self
    }

    /// Whether this client must send a DPoP proof (RFC 9449) with every token request, as a
    /// registration with `dpop_bound_access_tokens` says (§5.2): a request without one is
    /// refused with `400 invalid_dpop_proof`. Without it, a request that carries a valid proof
    /// still gets a DPoP-bound token, and one without gets a bearer token.
    pub fn require_dpop(mut self, yes: bool) -> Client {
        self.require_dpop = yes;
        self
    }

    /// Whether this client must send a DPoP proof ([`Client::require_dpop`]).
    pub fn requires_dpop(&self) -> bool {
        self.require_dpop
    }

    /// The client id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The client secret (empty for a client registered with a certificate method).
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The registered authentication method.
    pub fn method(&self) -> AuthMethod {
        self.auth_method
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field("auth_method", &self.auth_method)
            .field("token_lifetime", &self.token_lifetime)
            .field("issue_refresh_tokens", &self.issue_refresh_tokens)
            .field("expires_in_as_string", &self.expires_in_as_string)
            .field("extra_fields", &self.extra_fields)
            .field("thumbprints", &self.thumbprints)
            .field("require_dpop", &self.require_dpop)
            .field("public_keys", &self.public_keys.len())
            .finish()
    }
}
