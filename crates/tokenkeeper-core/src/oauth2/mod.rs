//! The OAuth2 token endpoint codec (RFC 6749, RFC 8707): what to send, and how
//! to read what comes back. Pure functions over `http` types; no I/O.

pub mod assertion;
mod base64;
pub mod device;
pub mod discovery;
pub mod dpop;
pub mod exchange;
mod request;
mod response;

pub use request::TokenRequest;
pub use response::{DEFAULT_MAX_BODY_BYTES, parse_token_response};

use std::net::IpAddr;

use url::Url;

use crate::secret::{ClientId, ClientSecret, RefreshToken};

/// How the client proves its identity to the token endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum AuthMethod {
    /// HTTP Basic with the form-urlencoded id and secret (the default).
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the request body.
    ClientSecretPost,
    /// Mutual TLS with a certificate issued by a CA the authority trusts
    /// (RFC 8705 §2.1): `client_id` in the body, no secret. The client
    /// certificate is an HTTP setting of the driver.
    TlsClientAuth,
    /// Mutual TLS with a self-signed certificate registered with the
    /// authority (RFC 8705 §2.2): `client_id` in the body, no secret.
    SelfSignedTlsClientAuth,
    /// A JWT signed with the client's private key (RFC 7523 §2.2, OpenID
    /// Connect Core §9), or an assertion made elsewhere (a platform's
    /// identity token in a file): `client_id`, `client_assertion_type` and
    /// `client_assertion` in the body, no secret. The core decides the
    /// claims ([`assertion`]); the driver holds the key and signs them.
    PrivateKeyJwt,
    /// A JWT signed with HMAC SHA-256 keyed by the client secret (OpenID
    /// Connect Core §9): the secret never travels.
    ClientSecretJwt,
}

impl AuthMethod {
    /// The registered name (RFC 8414 `token_endpoint_auth_methods_supported`):
    /// `client_secret_basic`, `client_secret_post`, `tls_client_auth`,
    /// `self_signed_tls_client_auth`, `private_key_jwt` or
    /// `client_secret_jwt`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ClientSecretBasic => "client_secret_basic",
            AuthMethod::ClientSecretPost => "client_secret_post",
            AuthMethod::TlsClientAuth => "tls_client_auth",
            AuthMethod::SelfSignedTlsClientAuth => "self_signed_tls_client_auth",
            AuthMethod::PrivateKeyJwt => "private_key_jwt",
            AuthMethod::ClientSecretJwt => "client_secret_jwt",
        }
    }

    /// Whether the client authenticates with a JWT assertion (RFC 7523
    /// §2.2), which the driver must supply.
    pub fn uses_assertion(self) -> bool {
        matches!(
            self,
            AuthMethod::PrivateKeyJwt | AuthMethod::ClientSecretJwt
        )
    }

    /// Whether the client authenticates with its TLS certificate (RFC 8705),
    /// so that the HTTP client must present one.
    pub fn uses_client_certificate(self) -> bool {
        matches!(
            self,
            AuthMethod::TlsClientAuth | AuthMethod::SelfSignedTlsClientAuth
        )
    }
}

/// Which grant the client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GrantType {
    /// `client_credentials` (RFC 6749 §4.4).
    ClientCredentials,
    /// `refresh_token` (RFC 6749 §6).
    RefreshToken,
    /// `urn:ietf:params:oauth:grant-type:jwt-bearer` (RFC 7523 §2.1): a JWT
    /// assertion, described by a [`GrantAssertion`](assertion::GrantAssertion),
    /// is exchanged for a token for its subject.
    JwtBearer,
    /// `urn:ietf:params:oauth:grant-type:token-exchange` (RFC 8693): a
    /// subject token (and an optional actor token), which the driver adds,
    /// is exchanged for another token; described by a
    /// [`TokenExchange`](exchange::TokenExchange).
    TokenExchange,
}

impl GrantType {
    /// The `grant_type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantType::ClientCredentials => "client_credentials",
            GrantType::RefreshToken => "refresh_token",
            GrantType::JwtBearer => assertion::JWT_BEARER_GRANT_TYPE,
            GrantType::TokenExchange => exchange::TOKEN_EXCHANGE_GRANT_TYPE,
        }
    }
}

/// A client configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The token URL does not parse.
    #[error("the token URL is not a valid URL: {0}")]
    InvalidUrl(String),
    /// Plain `http://` to a host that is not loopback, without explicit consent.
    #[error(
        "the token URL uses plain http to {host}, which would expose the client secret; use https, or allow insecure http explicitly"
    )]
    InsecureUrl {
        /// The host named in the URL.
        host: String,
    },
    /// A scheme other than http or https.
    #[error("the token URL must use https (or http for loopback), not {0:?}")]
    UnsupportedScheme(String),
    /// Credentials embedded in the URL would leak into logs.
    #[error("the token URL must not carry a user name or password")]
    CredentialsInUrl,
    /// A parameter the codec sets itself was given as an extra parameter.
    #[error("the extra parameter {0:?} is reserved")]
    ReservedParameter(String),
}

/// A validated token endpoint URL.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TokenUrl(Url);

/// Scheme, host, port and path only: a query may carry a key, so `Debug`
/// (which reaches logs through every configuration that holds a client)
/// shows only that there is one.
impl std::fmt::Debug for TokenUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenUrl({})", self.redacted())
    }
}

/// Like `Debug`, without the query: [`TokenUrl::as_str`] gives the whole URL.
impl std::fmt::Display for TokenUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// `scheme://host:port/path`, and `?<redacted>` when there is a query.
pub(crate) fn redacted_url(url: &Url) -> String {
    let mut out = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        out.push_str(&format!(":{port}"));
    }
    out.push_str(url.path());
    if url.query().is_some() {
        out.push_str("?<redacted>");
    }
    out
}

impl TokenUrl {
    /// Parses and checks a token URL: `https`, or `http` to a loopback host
    /// (`localhost`, 127.0.0.0/8, `::1`), or `http` anywhere when
    /// `allow_insecure_http` is set. No user info; any fragment is dropped.
    pub fn parse(url: &str, allow_insecure_http: bool) -> Result<Self, ConfigError> {
        let mut parsed = Url::parse(url).map_err(|e| ConfigError::InvalidUrl(e.to_string()))?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(ConfigError::CredentialsInUrl);
        }
        let host = parsed.host_str().unwrap_or_default().to_owned();
        match parsed.scheme() {
            "https" => {}
            "http" if allow_insecure_http || is_loopback_host(&host) => {}
            "http" => return Err(ConfigError::InsecureUrl { host }),
            other => return Err(ConfigError::UnsupportedScheme(other.to_owned())),
        }
        if host.is_empty() {
            return Err(ConfigError::InvalidUrl("the URL has no host".into()));
        }
        parsed.set_fragment(None);
        // A URL the `url` crate accepts but the `http` crate refuses (a
        // backtick in the host, say) could never be requested: a
        // configuration error now, not a transient failure on every fetch.
        if http::Uri::try_from(parsed.as_str()).is_err() {
            return Err(ConfigError::InvalidUrl(
                "the URL cannot be sent in an HTTP request".into(),
            ));
        }
        Ok(TokenUrl(parsed))
    }

    /// The URL.
    pub fn as_url(&self) -> &Url {
        &self.0
    }

    /// The URL as text, query included: what requests are sent to. Its query
    /// may hold a key: log [`TokenUrl::redacted`] (or `Display`) instead.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The URL fit for logs: scheme, host, port and path, and `?<redacted>`
    /// in place of a query. This is what `Display` and `Debug` show.
    pub fn redacted(&self) -> String {
        redacted_url(&self.0)
    }
}

/// Whether `host` (a URL's host, brackets allowed) names this machine:
/// `localhost` and `*.localhost` (RFC 6761), `127.0.0.0/8`, `::1` and
/// `::ffff:127.x.y.z`. The one rule for "loopback" in tokenkeeper: plain
/// `http` is allowed to it, and no proxy is ever used for it.
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    // One trailing dot is a fully qualified name; more make empty labels,
    // a name no resolver sends to this machine (found by fuzzing).
    let bare = bare.strip_suffix('.').unwrap_or(bare).to_ascii_lowercase();
    match bare.parse::<IpAddr>() {
        Ok(ip) => ip.to_canonical().is_loopback(),
        Err(_) => bare == "localhost" || bare.ends_with(".localhost"),
    }
}

/// Everything needed to ask a token endpoint for a token.
///
/// ```
/// use tokenkeeper_core::oauth2::{OAuth2Client, AuthMethod};
/// use tokenkeeper_core::{ClientId, ClientSecret};
///
/// let client = OAuth2Client::client_credentials(
///     "https://auth.example.com/oauth/token",
///     ClientId::new("my-service"),
///     ClientSecret::new("s3cret"),
/// )?
/// .scope("read write")
/// .audience("https://api.example.com")
/// .auth_method(AuthMethod::ClientSecretPost);
/// assert_eq!(client.token_url().as_str(), "https://auth.example.com/oauth/token");
/// # Ok::<(), tokenkeeper_core::oauth2::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct OAuth2Client {
    pub(crate) token_url: TokenUrl,
    pub(crate) client_id: ClientId,
    pub(crate) client_secret: Option<ClientSecret>,
    pub(crate) auth_method: AuthMethod,
    pub(crate) grant: GrantType,
    pub(crate) scope: Option<String>,
    pub(crate) audience: Option<String>,
    pub(crate) resources: Vec<String>,
    pub(crate) extra_params: Vec<(String, String)>,
    pub(crate) max_body_bytes: usize,
    /// The SHA-256 thumbprint (`x5t#S256`) of the client certificate the
    /// HTTP client presents, when tokens are bound to it (RFC 8705 §3).
    pub(crate) certificate_thumbprint: Option<String>,
    /// The JWK SHA-256 thumbprint (`jkt`, RFC 7638) of the DPoP key the
    /// driver signs proofs with, when tokens are DPoP-bound (RFC 9449).
    pub(crate) dpop_jkt: Option<String>,
    /// How client assertions are made, for the assertion auth methods.
    pub(crate) client_assertion: assertion::ClientAssertionSettings,
    /// The assertion of the JWT bearer grant.
    pub(crate) grant_assertion: Option<assertion::GrantAssertion>,
    /// For a client made from an issuer: the issuer, and its metadata once
    /// known (the token URL is then the metadata's token endpoint).
    pub(crate) discovery: Option<Box<discovery::Discovery>>,
    /// What a token exchange presents and asks for.
    pub(crate) token_exchange: Option<exchange::TokenExchange>,
}

/// Extra parameters may carry credentials (a client assertion, say): `Debug`
/// shows their names only.
impl std::fmt::Debug for OAuth2Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let extra: Vec<&str> = self.extra_params.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("OAuth2Client")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("auth_method", &self.auth_method)
            .field("grant", &self.grant)
            .field("scope", &self.scope)
            .field("audience", &self.audience)
            .field("resources", &self.resources)
            .field("extra_params", &extra)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("certificate_thumbprint", &self.certificate_thumbprint)
            .field("dpop_jkt", &self.dpop_jkt)
            .field("client_assertion", &self.client_assertion)
            .field("grant_assertion", &self.grant_assertion)
            .field("discovery", &self.discovery)
            .field("token_exchange", &self.token_exchange)
            .finish()
    }
}

const RESERVED: [&str; 15] = [
    "grant_type",
    "client_id",
    "client_secret",
    "refresh_token",
    "scope",
    "audience",
    "resource",
    "client_assertion",
    "client_assertion_type",
    "assertion",
    "subject_token",
    "subject_token_type",
    "actor_token",
    "actor_token_type",
    "requested_token_type",
];

impl OAuth2Client {
    /// A client-credentials client (RFC 6749 §4.4). Plain http is accepted for
    /// loopback hosts only; see [`OAuth2Client::allow_insecure_http`].
    pub fn client_credentials(
        token_url: impl AsRef<str>,
        client_id: ClientId,
        client_secret: ClientSecret,
    ) -> Result<Self, ConfigError> {
        Ok(Self::new(
            TokenUrl::parse(token_url.as_ref(), false)?,
            client_id,
            Some(client_secret),
            GrantType::ClientCredentials,
        ))
    }

    /// A refresh-token client (RFC 6749 §6). The refresh token itself is state,
    /// not configuration: give the first one to the refresher.
    /// `client_secret` is `None` for public clients.
    pub fn refresh_token(
        token_url: impl AsRef<str>,
        client_id: ClientId,
        client_secret: Option<ClientSecret>,
    ) -> Result<Self, ConfigError> {
        Ok(Self::new(
            TokenUrl::parse(token_url.as_ref(), false)?,
            client_id,
            client_secret,
            GrantType::RefreshToken,
        ))
    }

    /// A client-credentials client that authenticates with `private_key_jwt`
    /// (RFC 7523 §2.2): no secret; the driver signs each request's assertion
    /// with the client's key, or takes one made elsewhere (a file, a
    /// callback). See [`assertion`].
    pub fn private_key_jwt(
        token_url: impl AsRef<str>,
        client_id: ClientId,
    ) -> Result<Self, ConfigError> {
        Ok(Self::new(
            TokenUrl::parse(token_url.as_ref(), false)?,
            client_id,
            None,
            GrantType::ClientCredentials,
        )
        .auth_method(AuthMethod::PrivateKeyJwt))
    }

    /// A JWT bearer grant client (RFC 7523 §2.1): each request exchanges
    /// the assertion `assertion` describes (signed by the driver, or made
    /// elsewhere) for a token for its subject. The client does not
    /// authenticate unless told to ([`with_client_secret`](Self::with_client_secret),
    /// or [`auth_method`](Self::auth_method) with an assertion method); it
    /// sends its id.
    pub fn jwt_bearer(
        token_url: impl AsRef<str>,
        client_id: ClientId,
        assertion: assertion::GrantAssertion,
    ) -> Result<Self, ConfigError> {
        let mut client = Self::new(
            TokenUrl::parse(token_url.as_ref(), false)?,
            client_id,
            None,
            GrantType::JwtBearer,
        );
        client.grant_assertion = Some(assertion);
        Ok(client)
    }

    /// A token exchange client (RFC 8693): each request presents the
    /// subject token (and actor token) `exchange` describes, which the
    /// driver adds, for a token for the client's
    /// [`audience`](Self::audience), [`resource`](Self::resource)s and
    /// [`scope`](Self::scope). The client does not authenticate unless told
    /// to ([`with_client_secret`](Self::with_client_secret), or
    /// [`auth_method`](Self::auth_method) with an assertion method); it sends
    /// its id.
    pub fn token_exchange(
        token_url: impl AsRef<str>,
        client_id: ClientId,
        exchange: exchange::TokenExchange,
    ) -> Result<Self, ConfigError> {
        let mut client = Self::new(
            TokenUrl::parse(token_url.as_ref(), false)?,
            client_id,
            None,
            GrantType::TokenExchange,
        );
        client.token_exchange = Some(exchange);
        Ok(client)
    }

    /// Sets what a token exchange presents and asks for (for a client made
    /// with [`OAuth2Client::new`], or to change it).
    pub fn with_token_exchange(mut self, exchange: exchange::TokenExchange) -> Self {
        self.token_exchange = Some(exchange);
        self
    }

    /// What a token exchange presents and asks for.
    pub fn get_token_exchange(&self) -> Option<&exchange::TokenExchange> {
        self.token_exchange.as_ref()
    }

    /// A client from parts. A [`GrantType::JwtBearer`] client made here
    /// needs [`grant_assertion`](Self::grant_assertion).
    pub fn new(
        token_url: TokenUrl,
        client_id: ClientId,
        client_secret: Option<ClientSecret>,
        grant: GrantType,
    ) -> Self {
        OAuth2Client {
            token_url,
            client_id,
            client_secret,
            auth_method: AuthMethod::default(),
            grant,
            scope: None,
            audience: None,
            resources: Vec::new(),
            extra_params: Vec::new(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            certificate_thumbprint: None,
            dpop_jkt: None,
            client_assertion: assertion::ClientAssertionSettings::default(),
            grant_assertion: None,
            discovery: None,
            token_exchange: None,
        }
    }

    /// A client-credentials client (a public one when `client_secret` is
    /// `None`) whose token endpoint comes from the metadata of `issuer`
    /// (OpenID Connect Discovery, RFC 8414): see [`with_issuer`](Self::with_issuer).
    /// Plain http is accepted for loopback issuers only; for others, parse
    /// the issuer yourself ([`Issuer::parse`](discovery::Issuer::parse)).
    pub fn from_issuer(
        issuer: impl AsRef<str>,
        client_id: ClientId,
        client_secret: Option<ClientSecret>,
    ) -> Result<Self, ConfigError> {
        let issuer = discovery::Issuer::parse(issuer.as_ref(), false)?;
        Ok(Self::new(
            issuer.placeholder_url().clone(),
            client_id,
            client_secret,
            GrantType::ClientCredentials,
        )
        .with_issuer(issuer))
    }

    /// Takes the token endpoint from the metadata of `issuer` instead of
    /// the token URL given (any grant, any authentication). The refresher
    /// fetches the metadata before its first token request (or reads it
    /// from a cache record), again once it is older than
    /// [`discovery_max_age`](Self::discovery_max_age), and again after a
    /// token request that failed as if the endpoint had moved; see
    /// [`discovery`]. Until then [`token_url`](Self::token_url) is the
    /// issuer's URL. The cache key names the issuer, not the endpoint.
    ///
    /// The authentication method, unless chosen ([`auth_method`](Self::auth_method)
    /// or an assertion constructor), follows the metadata's
    /// `token_endpoint_auth_methods_supported`: `client_secret_basic` when
    /// it is listed or nothing is, else `client_secret_post` when listed.
    pub fn with_issuer(mut self, issuer: discovery::Issuer) -> Self {
        self.token_url = issuer.placeholder_url().clone();
        let chosen = self.auth_method != AuthMethod::default();
        self.discovery = Some(Box::new(discovery::Discovery {
            issuer,
            max_age: discovery::DEFAULT_DISCOVERY_MAX_AGE,
            auth_method_chosen: chosen,
            metadata: None,
        }));
        self
    }

    /// How long fetched metadata is used before it is fetched again
    /// (default [`DEFAULT_DISCOVERY_MAX_AGE`](discovery::DEFAULT_DISCOVERY_MAX_AGE),
    /// 24 hours). No effect on a client with a token URL.
    pub fn discovery_max_age(mut self, max_age: std::time::Duration) -> Self {
        if let Some(d) = &mut self.discovery {
            d.max_age = max_age;
        }
        self
    }

    /// The issuer, for a client whose token endpoint comes from its metadata.
    pub fn issuer(&self) -> Option<&discovery::Issuer> {
        self.discovery.as_ref().map(|d| &d.issuer)
    }

    /// The issuer's metadata in use, once fetched or read from a cache.
    pub fn metadata(&self) -> Option<&discovery::Metadata> {
        self.discovery.as_ref().and_then(|d| d.metadata.as_ref())
    }

    /// Uses `metadata` (fetched by the caller, for a driver of one's own or
    /// a device login): the token URL becomes its token endpoint, and the
    /// authentication method follows it unless chosen. Metadata of another
    /// issuer is refused. A client made with a token URL becomes one made
    /// from the metadata's issuer.
    pub fn with_metadata(mut self, metadata: discovery::Metadata) -> Result<Self, ConfigError> {
        if self.discovery.is_none() {
            // Plain http to any host only if this client already sends there.
            let url = self.token_url.as_url();
            let insecure =
                url.scheme() == "http" && !is_loopback_host(url.host_str().unwrap_or_default());
            let issuer = discovery::Issuer::parse(metadata.issuer(), insecure)?;
            self = self.with_issuer(issuer);
        }
        match &self.discovery {
            Some(d) if d.issuer.as_str() == metadata.issuer() => {}
            _ => {
                return Err(ConfigError::InvalidUrl(
                    "the metadata is another issuer's".into(),
                ));
            }
        }
        self.use_metadata(metadata);
        Ok(self)
    }

    /// Adopts checked metadata of this client's issuer.
    pub(crate) fn use_metadata(&mut self, metadata: discovery::Metadata) {
        let Some(d) = &mut self.discovery else {
            return;
        };
        self.token_url = metadata.token_endpoint().clone();
        if !d.auth_method_chosen {
            let listed = metadata.token_endpoint_auth_methods_supported();
            let has = |m: AuthMethod| listed.iter().any(|l| l == m.as_str());
            self.auth_method = if listed.is_empty() || has(AuthMethod::ClientSecretBasic) {
                AuthMethod::ClientSecretBasic
            } else if has(AuthMethod::ClientSecretPost) {
                AuthMethod::ClientSecretPost
            } else {
                AuthMethod::ClientSecretBasic
            };
        }
        d.metadata = Some(metadata);
    }

    /// Sets the client secret (for `client_secret_*` methods on a client
    /// made without one, such as a JWT bearer grant client).
    pub fn with_client_secret(mut self, secret: ClientSecret) -> Self {
        self.client_secret = Some(secret);
        self
    }

    /// The client secret, if any: a driver keys `client_secret_jwt`
    /// assertions with it.
    pub fn get_client_secret(&self) -> Option<&ClientSecret> {
        self.client_secret.as_ref()
    }

    /// How client assertions are made, for [`AuthMethod::PrivateKeyJwt`] and
    /// [`AuthMethod::ClientSecretJwt`]: their audience and lifetime.
    pub fn client_assertion_settings(
        mut self,
        settings: assertion::ClientAssertionSettings,
    ) -> Self {
        self.client_assertion = settings;
        self
    }

    /// The settings of client assertions.
    pub fn get_client_assertion_settings(&self) -> &assertion::ClientAssertionSettings {
        &self.client_assertion
    }

    /// Sets what the JWT bearer grant's assertion is (for a client made with
    /// [`OAuth2Client::new`]).
    pub fn grant_assertion(mut self, assertion: assertion::GrantAssertion) -> Self {
        self.grant_assertion = Some(assertion);
        self
    }

    /// The JWT bearer grant's assertion, for that grant.
    pub fn get_grant_assertion(&self) -> Option<&assertion::GrantAssertion> {
        self.grant_assertion.as_ref()
    }

    /// What the cache key needs beyond the URL, id, grant and parameters:
    /// how the client authenticates when it does so with an assertion, and
    /// whom a JWT bearer grant's assertion is about (the token is theirs).
    /// Never a secret or an assertion. Empty for other clients, so that
    /// their keys stay what earlier versions derived.
    pub(crate) fn assertion_key_parts(&self) -> Vec<serde_json::Value> {
        let mut parts = Vec::new();
        if self.auth_method.uses_assertion() {
            parts.push(serde_json::json!({ "auth": self.auth_method.as_str() }));
        }
        if self.grant == GrantType::JwtBearer
            && let Some(assertion) = &self.grant_assertion
        {
            parts.push(assertion.key_part());
        }
        if self.grant == GrantType::TokenExchange
            && let Some(exchange) = &self.token_exchange
        {
            parts.push(exchange.key_part());
        }
        parts
    }

    /// Re-parses the token URL allowing plain http to any host. Only for
    /// networks you trust: the client secret travels in clear text.
    pub fn allow_insecure_http(mut self) -> Result<Self, ConfigError> {
        self.token_url = TokenUrl::parse(self.token_url.as_str(), true)?;
        if let Some(d) = &mut self.discovery {
            d.issuer = discovery::Issuer::parse(d.issuer.as_str(), true)?;
        }
        Ok(self)
    }

    /// Sets the client authentication method.
    pub fn auth_method(mut self, method: AuthMethod) -> Self {
        self.auth_method = method;
        if let Some(d) = &mut self.discovery {
            d.auth_method_chosen = true;
        }
        self
    }

    /// Requests a scope (space-separated list).
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// Requests an audience (the `audience` parameter many authorities accept).
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// Adds a resource indicator (RFC 8707); may be given several times.
    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.resources.push(resource.into());
        self
    }

    /// Adds an extra form parameter. The names the codec sets itself are refused.
    pub fn extra_param(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, ConfigError> {
        let name = name.into();
        if RESERVED.contains(&name.as_str()) {
            return Err(ConfigError::ReservedParameter(name));
        }
        self.extra_params.push((name, value.into()));
        Ok(self)
    }

    /// Caps the size of the response body (default [`DEFAULT_MAX_BODY_BYTES`]).
    pub fn max_body_bytes(mut self, limit: usize) -> Self {
        self.max_body_bytes = limit;
        self
    }

    /// The token URL.
    pub fn token_url(&self) -> &TokenUrl {
        &self.token_url
    }

    /// The client id.
    pub fn client_id(&self) -> &ClientId {
        &self.client_id
    }

    /// The grant.
    pub fn grant(&self) -> GrantType {
        self.grant
    }

    /// The requested scope.
    pub fn requested_scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    /// The requested audience.
    pub fn requested_audience(&self) -> Option<&str> {
        self.audience.as_deref()
    }

    /// The requested resources.
    pub fn requested_resources(&self) -> &[String] {
        &self.resources
    }

    /// The extra parameters.
    pub fn extra_params(&self) -> &[(String, String)] {
        &self.extra_params
    }

    /// How the client authenticates.
    pub fn get_auth_method(&self) -> AuthMethod {
        self.auth_method
    }

    /// The body size cap.
    pub fn body_limit(&self) -> usize {
        self.max_body_bytes
    }

    /// Records that the HTTP client presents the certificate with this
    /// SHA-256 thumbprint (`x5t#S256`, base64url without padding): tokens
    /// issued over that connection may be bound to it (RFC 8705 §3), so it
    /// is part of the cache key (a token bound to another certificate is
    /// useless here) and each record keeps it as `cnf` unless the authority
    /// sent its own. Drivers set it from their client certificate.
    pub fn bound_to_certificate(mut self, thumbprint: impl Into<String>) -> Self {
        self.certificate_thumbprint = Some(thumbprint.into());
        self
    }

    /// Asks for DPoP-bound tokens (RFC 9449): each token request carries a
    /// proof signed with the key whose JWK thumbprint (`jkt`, RFC 7638,
    /// base64url) this is. The refresher decides each proof's claims; the
    /// driver holds the key and signs them. The thumbprint is part of the
    /// cache key (a token bound to another key is useless here), records
    /// keep it as `cnf` (`{"jkt": ...}`), and the `DPoP` token type is
    /// accepted. Drivers set it from their DPoP key.
    pub fn bound_to_dpop_key(mut self, jkt: impl Into<String>) -> Self {
        self.dpop_jkt = Some(jkt.into());
        self
    }

    /// The thumbprint of the DPoP key, if tokens are DPoP-bound.
    pub fn dpop_key_thumbprint(&self) -> Option<&str> {
        self.dpop_jkt.as_deref()
    }

    /// The thumbprint of the client certificate, if set.
    pub fn certificate_thumbprint(&self) -> Option<&str> {
        self.certificate_thumbprint.as_deref()
    }

    /// Reads the token endpoint's answer ([`parse_token_response`]); with a
    /// client certificate, the grant keeps the certificate binding as
    /// `cnf` (`{"x5t#S256": ...}`) unless the authority sent a `cnf`.
    pub fn read_response(
        &self,
        status: u16,
        headers: &http::HeaderMap,
        body: &[u8],
        now: crate::Timestamp,
    ) -> Result<crate::TokenGrant, crate::FetchError> {
        let mut grant = response::parse(
            status,
            headers,
            body,
            now,
            self.max_body_bytes,
            self.dpop_jkt.is_some(),
            self.grant == GrantType::TokenExchange,
        )?;
        let binding = match (&self.dpop_jkt, &self.certificate_thumbprint) {
            (Some(jkt), _) if grant.token_type.eq_ignore_ascii_case("dpop") => {
                Some(serde_json::json!({ "jkt": jkt }))
            }
            (_, Some(thumbprint)) => Some(serde_json::json!({ "x5t#S256": thumbprint })),
            _ => None,
        };
        if let Some(binding) = binding {
            grant.extra.entry("cnf").or_insert(binding);
        }
        Ok(grant)
    }

    /// Builds the token request. For the refresh-token grant, `refresh_token`
    /// must be given, or [`crate::FetchError::NoRefreshToken`] is returned.
    pub fn build_request(
        &self,
        refresh_token: Option<&RefreshToken>,
    ) -> Result<TokenRequest, crate::FetchError> {
        request::build(self, refresh_token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_url_rules() {
        assert!(TokenUrl::parse("https://auth.example.com/token", false).is_ok());
        assert!(TokenUrl::parse("http://127.0.0.1:8080/token", false).is_ok());
        assert!(TokenUrl::parse("http://127.9.9.9/token", false).is_ok());
        assert!(TokenUrl::parse("http://localhost/token", false).is_ok());
        assert!(TokenUrl::parse("http://[::1]:9/token", false).is_ok());
        assert_eq!(
            TokenUrl::parse("http://auth.example.com/token", false),
            Err(ConfigError::InsecureUrl {
                host: "auth.example.com".into()
            })
        );
        assert!(TokenUrl::parse("http://auth.example.com/token", true).is_ok());
        assert_eq!(
            TokenUrl::parse("https://u:p@auth.example.com/", false),
            Err(ConfigError::CredentialsInUrl)
        );
        assert!(matches!(
            TokenUrl::parse("ftp://auth.example.com/", false),
            Err(ConfigError::UnsupportedScheme(_))
        ));
        assert!(matches!(
            TokenUrl::parse("not a url", false),
            Err(ConfigError::InvalidUrl(_))
        ));
        // A name that merely starts like loopback is not loopback.
        assert!(TokenUrl::parse("http://127.0.0.1.evil.example/token", false).is_err());
        assert!(TokenUrl::parse("http://localhost.evil.example/token", false).is_err());
        // One trailing dot is the same name; more are empty labels, not
        // this machine (found by fuzzing in CI).
        assert!(TokenUrl::parse("http://localhost./token", false).is_ok());
        assert!(TokenUrl::parse("http://127.0.0.1..../token", false).is_err());
        assert!(TokenUrl::parse("http://localhost../token", false).is_err());
        // RFC 6761 names and IPv4-mapped loopback are loopback.
        assert!(TokenUrl::parse("http://auth.localhost:8080/token", false).is_ok());
        assert!(TokenUrl::parse("http://[::ffff:127.0.0.1]/token", false).is_ok());
        // Accepted by `url`, refused by `http` (found by fuzzing): no request
        // could ever be built, so it is a configuration error.
        assert!(matches!(
            TokenUrl::parse("https://a`b.example/token", false),
            Err(ConfigError::InvalidUrl(_))
        ));
    }

    #[test]
    fn mtls_sends_no_secret_and_binds_tokens_to_the_certificate() {
        let plain = OAuth2Client::client_credentials(
            "https://a.example/t",
            ClientId::new("svc"),
            ClientSecret::new("never-sent"),
        )
        .unwrap();
        for method in [
            AuthMethod::TlsClientAuth,
            AuthMethod::SelfSignedTlsClientAuth,
        ] {
            let client = plain
                .clone()
                .auth_method(method)
                .bound_to_certificate("thumb-A");
            let request = client.build_request(None).unwrap().into_http();
            let body = String::from_utf8(request.body().clone()).unwrap();
            assert_eq!(body, "grant_type=client_credentials&client_id=svc");
            assert!(request.headers().get(http::header::AUTHORIZATION).is_none());
            assert!(method.uses_client_certificate());
        }
        // Another certificate, another slot; none at all, the old slot.
        let a = plain.clone().bound_to_certificate("thumb-A");
        let b = plain.clone().bound_to_certificate("thumb-B");
        let (ka, kb, kp) = (
            crate::CacheKey::for_client(&a),
            crate::CacheKey::for_client(&b),
            crate::CacheKey::for_client(&plain),
        );
        assert_ne!(ka, kb);
        assert_ne!(ka, kp);
        assert!(ka.description().contains("thumb-A"), "{}", ka.description());
        // The record keeps the binding, unless the authority sent its own.
        let ok = br#"{"access_token":"t","expires_in":60}"#;
        let now = crate::Timestamp::from_secs(1_000);
        let grant = a
            .read_response(200, &http::HeaderMap::new(), ok, now)
            .unwrap();
        assert_eq!(grant.extra["cnf"]["x5t#S256"], "thumb-A");
        let own = br#"{"access_token":"t","expires_in":60,"cnf":{"x5t#S256":"theirs"}}"#;
        let grant = a
            .read_response(200, &http::HeaderMap::new(), own, now)
            .unwrap();
        assert_eq!(grant.extra["cnf"]["x5t#S256"], "theirs");
        let grant = plain
            .read_response(200, &http::HeaderMap::new(), ok, now)
            .unwrap();
        assert!(!grant.extra.contains_key("cnf"));
    }

    #[test]
    fn debug_shows_no_secret_values() {
        let c = OAuth2Client::client_credentials(
            "https://a.example/t",
            ClientId::new("c"),
            ClientSecret::new("the-client-secret"),
        )
        .unwrap()
        .extra_param("api_key", "signed-jwt-value")
        .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("the-client-secret"), "{shown}");
        assert!(!shown.contains("signed-jwt-value"), "{shown}");
        assert!(shown.contains("api_key"), "{shown}");

        let keyed = OAuth2Client::client_credentials(
            "https://a.example:8443/t?api_key=the-url-key",
            ClientId::new("c"),
            ClientSecret::new("s"),
        )
        .unwrap();
        let shown = format!("{keyed:?}");
        assert!(!shown.contains("the-url-key"), "{shown}");
        assert!(
            shown.contains("TokenUrl(https://a.example:8443/t?<redacted>)"),
            "{shown}"
        );
    }

    #[test]
    fn reserved_extra_params_are_refused() {
        let c = OAuth2Client::client_credentials(
            "https://a.example/t",
            ClientId::new("c"),
            ClientSecret::new("s"),
        )
        .unwrap();
        assert_eq!(
            c.clone().extra_param("grant_type", "x").unwrap_err(),
            ConfigError::ReservedParameter("grant_type".into())
        );
        assert!(c.extra_param("tenant", "t1").is_ok());
    }
}
