//! Authorization server metadata: where an issuer's endpoints are, taken
//! from its discovery document (OpenID Connect Discovery 1.0 §4, RFC 8414).
//!
//! A client made with [`OAuth2Client::from_issuer`](super::OAuth2Client::from_issuer)
//! knows its issuer, not its token endpoint. Before its first token request
//! the refresher fetches the issuer's metadata through the same effect as
//! token requests ([`Effect::SendRequest`](crate::Effect::SendRequest), here
//! a `GET`), reads the token endpoint from it, and keeps the metadata in the
//! cache record beside the token, so that a restart or another instance
//! sharing the cache asks for it again only when it is older than the
//! client's [`discovery_max_age`](super::OAuth2Client::discovery_max_age)
//! (default [`DEFAULT_DISCOVERY_MAX_AGE`]) or the token endpoint stops
//! answering as one (it moved).
//!
//! Where the document is looked for, in order ([`Issuer::metadata_urls`]):
//!
//! 1. `{issuer}/.well-known/openid-configuration` (OpenID Connect
//!    Discovery §4: appended to the issuer, its trailing `/` removed). Most
//!    authorities serve this one (Entra ID, Cognito, Keycloak, Okta, Auth0,
//!    Google).
//! 2. `{scheme}://{host}/.well-known/oauth-authorization-server{path}`
//!    (RFC 8414 §3.1: the well-known part inserted between the host and
//!    the issuer's path), asked for only when the first answered with a
//!    client error other than 408 and 429 (typically 404), or a redirect
//!    (redirects are never followed).
//!
//! What is checked (RFC 8414 §3.3, OpenID Connect Discovery §4.3): the
//! document's `issuer` is the configured issuer, character for character;
//! the token endpoint (and the device authorization endpoint, when given)
//! is a URL the client may send its credentials to, by the same rule as a
//! configured token URL ([`TokenUrl::parse`]: https, or http to loopback or
//! with explicit consent); the body is capped in size.
//!
//! ```
//! use tokenkeeper_core::Timestamp;
//! use tokenkeeper_core::oauth2::discovery::{Issuer, Metadata};
//!
//! let issuer = Issuer::parse("https://auth.example.com/tenant-1", false)?;
//! let urls: Vec<String> = issuer.metadata_urls().iter().map(|u| u.to_string()).collect();
//! assert_eq!(urls, [
//!     "https://auth.example.com/tenant-1/.well-known/openid-configuration",
//!     "https://auth.example.com/.well-known/oauth-authorization-server/tenant-1",
//! ]);
//!
//! let body = br#"{"issuer":"https://auth.example.com/tenant-1",
//!                 "token_endpoint":"https://auth.example.com/tenant-1/oauth2/token",
//!                 "token_endpoint_auth_methods_supported":["private_key_jwt"]}"#;
//! let metadata = Metadata::parse(&issuer, 200, body, 64 * 1024, Timestamp::from_secs(0))?;
//! assert_eq!(metadata.token_endpoint().as_str(), "https://auth.example.com/tenant-1/oauth2/token");
//! assert_eq!(metadata.token_endpoint_auth_methods_supported(), ["private_key_jwt"]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::time::Duration;

use http::header::ACCEPT;
use http::{Method, Request};
use serde_json::{Map, Value};
use url::Url;

use super::{ConfigError, TokenRequest, TokenUrl, is_loopback_host, redacted_url};
use crate::error::{ErrorClass, FetchError};
use crate::text::escape_capped;
use crate::time::Timestamp;

/// How long fetched metadata is used before it is fetched again: 24 hours.
pub const DEFAULT_DISCOVERY_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// The most characters of a document's value shown in an error.
const SHOWN_CHARS: usize = 120;

/// The two well-known locations of an issuer's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WellKnown {
    /// `/.well-known/openid-configuration`, appended to the issuer
    /// (OpenID Connect Discovery 1.0 §4).
    OpenIdConfiguration,
    /// `/.well-known/oauth-authorization-server`, inserted before the
    /// issuer's path (RFC 8414 §3.1).
    OAuthAuthorizationServer,
}

/// An issuer identifier (RFC 8414 §2): an https URL (or http to loopback, or
/// anywhere with explicit consent) without query or fragment. Kept exactly as
/// given, since the document's `issuer` must equal it character for
/// character.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Issuer {
    text: String,
    /// The issuer as a URL; what a client's token URL is until the
    /// metadata is known.
    url: TokenUrl,
    /// Endpoints may be plain http to any host.
    allow_insecure_http: bool,
}

impl fmt::Debug for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Issuer({})", self.text)
    }
}

impl fmt::Display for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Issuer {
    /// Parses and checks an issuer identifier. The scheme rule is the token
    /// URL's ([`TokenUrl::parse`]); an issuer also has no query and no
    /// fragment (RFC 8414 §2).
    pub fn parse(issuer: &str, allow_insecure_http: bool) -> Result<Self, ConfigError> {
        let issuer = issuer.trim();
        // The same scheme, host and credential rules as a token URL.
        let url = TokenUrl::parse(issuer, allow_insecure_http)?;
        if url.as_url().query().is_some() || issuer.contains('#') {
            return Err(ConfigError::InvalidUrl(
                "an issuer identifier has no query or fragment (RFC 8414 §2)".into(),
            ));
        }
        Ok(Issuer {
            text: issuer.to_owned(),
            url,
            allow_insecure_http,
        })
    }

    /// Whether the issuer was parsed allowing plain http to any host: its
    /// metadata's endpoints may then be plain http too.
    pub fn allows_insecure_http(&self) -> bool {
        self.allow_insecure_http
    }

    /// The issuer as a token URL: a client's until its metadata is known.
    pub(crate) fn placeholder_url(&self) -> &TokenUrl {
        &self.url
    }

    /// The issuer identifier, exactly as configured.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the issuer is on this machine (plain http is allowed to it).
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(self.url.as_url().host_str().unwrap_or_default())
    }

    /// Where the `which` document of this issuer is.
    pub fn metadata_url(&self, which: WellKnown) -> Url {
        let base = self.url.as_url();
        let mut url = base.clone();
        match which {
            WellKnown::OpenIdConfiguration => {
                let path = format!(
                    "{}/.well-known/openid-configuration",
                    base.path().trim_end_matches('/')
                );
                url.set_path(&path);
            }
            WellKnown::OAuthAuthorizationServer => {
                let path = format!(
                    "/.well-known/oauth-authorization-server{}",
                    base.path().trim_end_matches('/')
                );
                url.set_path(&path);
            }
        }
        url
    }

    /// The URLs asked, in order: the OpenID Connect one, then the RFC 8414
    /// one (see the [module documentation](self)).
    pub fn metadata_urls(&self) -> [Url; 2] {
        [
            self.metadata_url(WellKnown::OpenIdConfiguration),
            self.metadata_url(WellKnown::OAuthAuthorizationServer),
        ]
    }
}

/// The request for a metadata document: `GET`, `Accept: application/json`,
/// no credentials.
pub fn metadata_request(url: &Url) -> Result<TokenRequest, FetchError> {
    let inner = Request::builder()
        .method(Method::GET)
        .uri(url.as_str())
        .header(ACCEPT, "application/json")
        .body(Vec::new())
        .map_err(|e| FetchError::Transport {
            message: format!("could not build the metadata request: {e}"),
        })?;
    Ok(TokenRequest::plain(inner))
}

/// Why an issuer's metadata could not be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The document names another issuer than the one configured (RFC 8414
    /// §3.3 forbids using it). Permanent: the issuer URL is wrong (a
    /// trailing `/` too many or too few, say), or the document is not this
    /// issuer's.
    #[error(
        "the metadata document names the issuer {found:?}, not {expected:?} as configured; the two must be identical (RFC 8414 §3.3): check the issuer URL"
    )]
    IssuerMismatch {
        /// The configured issuer.
        expected: String,
        /// What the document says (escaped, capped).
        found: String,
    },
    /// Neither well-known URL serves a document (they answered a client
    /// error such as 404). Permanent: the issuer URL is wrong, or the
    /// authority publishes no metadata (configure its token URL instead).
    #[error(
        "no metadata document at the issuer's well-known URLs (HTTP {status}): check the issuer URL, or configure the token URL instead"
    )]
    NotServed {
        /// The last status.
        status: u16,
    },
    /// An error status: transient for 408, 429 and 5xx; permanent for other
    /// client errors and for redirects (which are not followed).
    #[error("the metadata URL answered HTTP {status}")]
    Status {
        /// The status.
        status: u16,
    },
    /// A success status with a body that is not a JSON object (an HTML page
    /// from a proxy, a truncated answer). Transient.
    #[error("the metadata document is not a JSON object: {reason}")]
    Unparseable {
        /// What is wrong with it (never the body).
        reason: String,
    },
    /// A JSON document that cannot be used: no `token_endpoint`, an
    /// endpoint the credentials may not be sent to (plain http), a field of
    /// the wrong type. Permanent.
    #[error("the metadata document is unusable: {reason}")]
    Invalid {
        /// What is wrong with it.
        reason: String,
    },
    /// The document is larger than the body cap. Transient.
    #[error("the metadata document exceeded {limit} bytes")]
    TooLarge {
        /// The cap.
        limit: usize,
    },
    /// No answer came (connection failure, timeout, TLS): the class of the
    /// underlying error.
    #[error("{0}")]
    Unreachable(Box<FetchError>),
}

impl DiscoveryError {
    /// Whether trying again soon can help.
    pub fn class(&self) -> ErrorClass {
        match self {
            DiscoveryError::IssuerMismatch { .. }
            | DiscoveryError::NotServed { .. }
            | DiscoveryError::Invalid { .. } => ErrorClass::Permanent,
            // A redirect is not followed (the document must come from the
            // issuer's own URL): permanent, as other client errors.
            DiscoveryError::Status { status } => match status {
                408 | 429 | 500..=599 => ErrorClass::Transient,
                300..=499 => ErrorClass::Permanent,
                _ => ErrorClass::Transient,
            },
            DiscoveryError::Unparseable { .. } | DiscoveryError::TooLarge { .. } => {
                ErrorClass::Transient
            }
            DiscoveryError::Unreachable(inner) => inner.class(),
        }
    }

    /// Whether the next well-known URL should be tried: the first answered
    /// with a client error (other than 408 and 429) or a redirect, as a
    /// server that does not publish that document does.
    pub fn try_next_location(&self) -> bool {
        matches!(self, DiscoveryError::Status { status }
            if (300..500).contains(status) && *status != 408 && *status != 429)
    }
}

/// What the client uses of an issuer's metadata (RFC 8414 §2, OpenID
/// Connect Discovery §3), checked against the issuer.
#[derive(Clone, PartialEq, Eq)]
pub struct Metadata {
    issuer: String,
    token_endpoint: TokenUrl,
    device_authorization_endpoint: Option<TokenUrl>,
    auth_methods: Vec<String>,
    grant_types: Vec<String>,
    /// When it was fetched (wall clock): records shared between processes
    /// carry it, so that every instance knows its age.
    fetched: Timestamp,
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metadata")
            .field("issuer", &self.issuer)
            .field("token_endpoint", &self.token_endpoint)
            .field(
                "device_authorization_endpoint",
                &self.device_authorization_endpoint,
            )
            .field("token_endpoint_auth_methods_supported", &self.auth_methods)
            .field("grant_types_supported", &self.grant_types)
            .field("fetched", &self.fetched)
            .finish()
    }
}

impl Metadata {
    /// Reads the answer to a [`metadata_request`] for `issuer`, fetched at
    /// `now` (wall clock). Endpoints follow the token URL's scheme rule,
    /// with plain http to any host allowed when the issuer was parsed
    /// allowing it.
    pub fn parse(
        issuer: &Issuer,
        status: u16,
        body: &[u8],
        max_body: usize,
        now: Timestamp,
    ) -> Result<Metadata, DiscoveryError> {
        if !(200..300).contains(&status) {
            return Err(DiscoveryError::Status { status });
        }
        if body.len() > max_body {
            return Err(DiscoveryError::TooLarge { limit: max_body });
        }
        let doc: Value = serde_json::from_slice(body).map_err(|e| DiscoveryError::Unparseable {
            reason: format!(
                "not JSON ({:?} error at line {}, column {})",
                e.classify(),
                e.line(),
                e.column()
            ),
        })?;
        let Value::Object(doc) = doc else {
            return Err(DiscoveryError::Unparseable {
                reason: "not a JSON object".into(),
            });
        };
        Self::from_document(issuer, &doc, now)
    }

    /// Checks a document (fetched, or stored in a cache record).
    fn from_document(
        issuer: &Issuer,
        doc: &Map<String, Value>,
        fetched: Timestamp,
    ) -> Result<Metadata, DiscoveryError> {
        let invalid = |reason: String| DiscoveryError::Invalid { reason };
        let found = match doc.get("issuer") {
            Some(Value::String(found)) => found,
            Some(_) => return Err(invalid("its \"issuer\" is not a string".into())),
            None => return Err(invalid("it has no \"issuer\"".into())),
        };
        if found != issuer.as_str() {
            return Err(DiscoveryError::IssuerMismatch {
                expected: issuer.as_str().to_owned(),
                found: escape_capped(found, SHOWN_CHARS),
            });
        }
        let endpoint = |name: &str| -> Result<Option<TokenUrl>, DiscoveryError> {
            match doc.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(url)) => TokenUrl::parse(url, issuer.allow_insecure_http)
                    .map(Some)
                    .map_err(|e| invalid(format!("its {name:?} cannot be used: {e}"))),
                Some(_) => Err(invalid(format!("its {name:?} is not a string"))),
            }
        };
        let token_endpoint = endpoint("token_endpoint")?.ok_or_else(|| {
            invalid(
                "it has no \"token_endpoint\" (the authority issues no tokens to clients)".into(),
            )
        })?;
        let device_authorization_endpoint = endpoint("device_authorization_endpoint")?;
        let list = |name: &str| -> Result<Vec<String>, DiscoveryError> {
            match doc.get(name) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|item| {
                        item.as_str()
                            .map(|s| escape_capped(s, SHOWN_CHARS))
                            .ok_or_else(|| invalid(format!("its {name:?} holds a non-string")))
                    })
                    .collect(),
                Some(_) => Err(invalid(format!("its {name:?} is not an array"))),
            }
        };
        Ok(Metadata {
            issuer: found.clone(),
            token_endpoint,
            device_authorization_endpoint,
            auth_methods: list("token_endpoint_auth_methods_supported")?,
            grant_types: list("grant_types_supported")?,
            fetched,
        })
    }

    /// The issuer the document names (the configured one).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The token endpoint.
    pub fn token_endpoint(&self) -> &TokenUrl {
        &self.token_endpoint
    }

    /// The device authorization endpoint (RFC 8628 §4), when the authority
    /// has one.
    pub fn device_authorization_endpoint(&self) -> Option<&TokenUrl> {
        self.device_authorization_endpoint.as_ref()
    }

    /// `token_endpoint_auth_methods_supported`: empty when the document
    /// does not say (RFC 8414 then means `client_secret_basic`).
    pub fn token_endpoint_auth_methods_supported(&self) -> &[String] {
        &self.auth_methods
    }

    /// `grant_types_supported`: empty when the document does not say.
    pub fn grant_types_supported(&self) -> &[String] {
        &self.grant_types
    }

    /// When it was fetched (wall clock).
    pub fn fetched(&self) -> Timestamp {
        self.fetched
    }

    /// Whether it is older than `max_age` at `now` (or claims to be fetched
    /// implausibly far in the future: another machine's clock).
    pub(crate) fn is_stale(&self, now: Timestamp, max_age: Duration, tolerance: Duration) -> bool {
        self.fetched.saturating_add(max_age) <= now || self.fetched > now.saturating_add(tolerance)
    }

    /// The form kept in a cache record (no secret: all of it is public).
    pub(crate) fn to_stored(&self) -> Value {
        let mut doc = serde_json::json!({
            "issuer": self.issuer,
            "token_endpoint": self.token_endpoint.as_str(),
            "token_endpoint_auth_methods_supported": self.auth_methods,
            "grant_types_supported": self.grant_types,
            "fetched_ms": self.fetched.as_millis(),
        });
        if let (Some(device), Value::Object(map)) = (&self.device_authorization_endpoint, &mut doc)
        {
            map.insert(
                "device_authorization_endpoint".into(),
                Value::from(device.as_str()),
            );
        }
        doc
    }

    /// Reads the form kept in a cache record, checked again as a fetched
    /// document is; `None` when it is not this issuer's or unusable.
    pub(crate) fn from_stored(issuer: &Issuer, stored: &Value) -> Option<Metadata> {
        let doc = stored.as_object()?;
        let fetched = Timestamp::from_millis(doc.get("fetched_ms")?.as_u64()?);
        Self::from_document(issuer, doc, fetched).ok()
    }
}

/// What a metadata request's answer leads to.
#[derive(Debug)]
#[non_exhaustive]
pub enum LookupStep {
    /// The metadata, checked against the issuer.
    Found(Metadata),
    /// This location has no document: ask the next one
    /// ([`Lookup::request`] again).
    TryNext,
    /// No usable metadata: [`FetchError::Discovery`], classed.
    Failed(FetchError),
}

/// The one rule for what an answer from the `location`-th well-known URL of
/// `issuer` means (see the [module documentation](self)).
pub(crate) fn step(
    issuer: &Issuer,
    location: u8,
    result: Result<Metadata, DiscoveryError>,
) -> LookupStep {
    let last = usize::from(location) + 1 >= issuer.metadata_urls().len();
    match result {
        Ok(metadata) => LookupStep::Found(metadata),
        Err(error) if !last && error.try_next_location() => LookupStep::TryNext,
        Err(error) => {
            let error = match error {
                // Neither location has a document.
                DiscoveryError::Status { status } if error.try_next_location() => {
                    DiscoveryError::NotServed { status }
                }
                other => other,
            };
            let urls = issuer.metadata_urls();
            let url = &urls[usize::from(location).min(urls.len() - 1)];
            LookupStep::Failed(FetchError::Discovery {
                url: shown_url(url),
                error,
            })
        }
    }
}

/// Finding an issuer's metadata outside a refresher (a device login, a
/// driver of one's own), by the refresher's rules: send
/// [`request`](Lookup::request), give the answer to
/// [`handle_response`](Lookup::handle_response) (or the failure to
/// [`handle_failure`](Lookup::handle_failure)), and repeat on
/// [`LookupStep::TryNext`].
///
/// ```
/// use tokenkeeper_core::Timestamp;
/// use tokenkeeper_core::oauth2::discovery::{Issuer, Lookup, LookupStep};
///
/// let mut lookup = Lookup::new(Issuer::parse("https://idp.example/t1", false)?);
/// let first = lookup.request()?;
/// assert_eq!(first.as_http().uri(), "https://idp.example/t1/.well-known/openid-configuration");
/// let now = Timestamp::from_secs(1_700_000_000);
/// assert!(matches!(lookup.handle_response(404, b"", 65536, now), LookupStep::TryNext));
/// let second = lookup.request()?;
/// assert_eq!(second.as_http().uri(), "https://idp.example/.well-known/oauth-authorization-server/t1");
/// let body = br#"{"issuer":"https://idp.example/t1","token_endpoint":"https://idp.example/t1/token"}"#;
/// let LookupStep::Found(metadata) = lookup.handle_response(200, body, 65536, now) else { panic!() };
/// assert_eq!(metadata.token_endpoint().as_str(), "https://idp.example/t1/token");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Lookup {
    issuer: Issuer,
    location: u8,
}

impl Lookup {
    /// A lookup of `issuer`'s metadata, from its first location.
    pub fn new(issuer: Issuer) -> Self {
        Lookup {
            issuer,
            location: 0,
        }
    }

    /// The URL asked now.
    pub fn url(&self) -> Url {
        let urls = self.issuer.metadata_urls();
        urls[usize::from(self.location).min(urls.len() - 1)].clone()
    }

    /// The request to send now.
    pub fn request(&self) -> Result<TokenRequest, FetchError> {
        metadata_request(&self.url())
    }

    /// The answer to [`request`](Lookup::request), received at `now`.
    pub fn handle_response(
        &mut self,
        status: u16,
        body: &[u8],
        max_body: usize,
        now: Timestamp,
    ) -> LookupStep {
        let result = Metadata::parse(&self.issuer, status, body, max_body, now);
        self.advance(result)
    }

    /// No answer came (connection failure, timeout, oversized body).
    pub fn handle_failure(&mut self, error: FetchError) -> LookupStep {
        self.advance(Err(DiscoveryError::Unreachable(Box::new(error))))
    }

    fn advance(&mut self, result: Result<Metadata, DiscoveryError>) -> LookupStep {
        let next = step(&self.issuer, self.location, result);
        if matches!(next, LookupStep::TryNext) {
            self.location = self.location.saturating_add(1);
        }
        next
    }
}

/// The discovery part of a client made from an issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Discovery {
    pub(crate) issuer: Issuer,
    pub(crate) max_age: Duration,
    /// The auth method was chosen by the caller: the metadata does not
    /// change it.
    pub(crate) auth_method_chosen: bool,
    /// The metadata in use, once fetched or read from a cache.
    pub(crate) metadata: Option<Metadata>,
}

/// A metadata URL fit for logs and errors.
pub(crate) fn shown_url(url: &Url) -> String {
    redacted_url(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer(s: &str) -> Issuer {
        Issuer::parse(s, false).unwrap()
    }

    fn parse(issuer: &Issuer, body: &str) -> Result<Metadata, DiscoveryError> {
        Metadata::parse(issuer, 200, body.as_bytes(), 4096, Timestamp::from_secs(0))
    }

    #[test]
    fn metadata_urls_for_issuers_with_and_without_a_path() {
        let urls = |s: &str| issuer(s).metadata_urls().map(|u| u.to_string());
        assert_eq!(
            urls("https://a.example"),
            [
                "https://a.example/.well-known/openid-configuration",
                "https://a.example/.well-known/oauth-authorization-server",
            ]
        );
        assert_eq!(
            urls("https://a.example/"),
            [
                "https://a.example/.well-known/openid-configuration",
                "https://a.example/.well-known/oauth-authorization-server",
            ]
        );
        assert_eq!(
            urls("https://a.example:8443/tenants/t1/"),
            [
                "https://a.example:8443/tenants/t1/.well-known/openid-configuration",
                "https://a.example:8443/.well-known/oauth-authorization-server/tenants/t1",
            ]
        );
        assert_eq!(
            urls("http://127.0.0.1:9/realms/x"),
            [
                "http://127.0.0.1:9/realms/x/.well-known/openid-configuration",
                "http://127.0.0.1:9/.well-known/oauth-authorization-server/realms/x",
            ]
        );
    }

    #[test]
    fn issuer_rules() {
        assert_eq!(
            issuer(" https://a.example/t ").as_str(),
            "https://a.example/t"
        );
        assert!(matches!(
            Issuer::parse("http://a.example", false),
            Err(ConfigError::InsecureUrl { .. })
        ));
        assert!(Issuer::parse("http://a.example", true).is_ok());
        assert!(Issuer::parse("https://a.example/?x=1", false).is_err());
        assert!(Issuer::parse("https://a.example/#f", false).is_err());
        assert!(Issuer::parse("https://u:p@a.example/", false).is_err());
        assert!(Issuer::parse("not a url", false).is_err());
    }

    #[test]
    fn a_document_is_read_and_checked() {
        let iss = issuer("https://a.example/t1");
        let m = parse(
            &iss,
            r#"{"issuer":"https://a.example/t1","token_endpoint":"https://login.a.example/t1/token",
                "device_authorization_endpoint":"https://login.a.example/t1/device",
                "token_endpoint_auth_methods_supported":["client_secret_post","private_key_jwt"],
                "grant_types_supported":["client_credentials"],"jwks_uri":"https://a.example/jwks"}"#,
        )
        .unwrap();
        assert_eq!(m.issuer(), "https://a.example/t1");
        assert_eq!(
            m.token_endpoint().as_str(),
            "https://login.a.example/t1/token"
        );
        assert_eq!(
            m.device_authorization_endpoint().map(TokenUrl::as_str),
            Some("https://login.a.example/t1/device")
        );
        assert_eq!(
            m.token_endpoint_auth_methods_supported(),
            ["client_secret_post", "private_key_jwt"]
        );
        assert_eq!(m.grant_types_supported(), ["client_credentials"]);
        // Stored in a record and read back: the same.
        let back = Metadata::from_stored(&iss, &m.to_stored()).unwrap();
        assert_eq!(back, m);
        // Stored for another issuer: not used.
        assert!(Metadata::from_stored(&issuer("https://a.example/t2"), &m.to_stored()).is_none());
    }

    #[test]
    fn the_issuer_must_match_exactly() {
        let iss = issuer("https://a.example/t1");
        for other in [
            "https://a.example/t1/",
            "https://A.example/t1",
            "https://evil.example/t1",
        ] {
            let body =
                format!(r#"{{"issuer":"{other}","token_endpoint":"https://a.example/token"}}"#);
            let err = parse(&iss, &body).unwrap_err();
            assert_eq!(
                err,
                DiscoveryError::IssuerMismatch {
                    expected: "https://a.example/t1".into(),
                    found: other.into()
                }
            );
            assert_eq!(err.class(), ErrorClass::Permanent);
            let shown = err.to_string();
            assert!(
                shown.contains(other) && shown.contains("RFC 8414"),
                "{shown}"
            );
        }
        let escaped = parse(
            &iss,
            r#"{"issuer":"x\u001b[31m","token_endpoint":"https://a.example/t"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(!escaped.contains('\u{1b}'), "{escaped}");
    }

    #[test]
    fn bad_documents_are_typed_and_classed() {
        let iss = issuer("https://a.example");
        let permanent = [
            r#"{"issuer":"https://a.example"}"#,
            r#"{"issuer":"https://a.example","token_endpoint":"http://a.example/token"}"#,
            r#"{"issuer":"https://a.example","token_endpoint":42}"#,
            r#"{"issuer":"https://a.example","token_endpoint":"https://a.example/t","grant_types_supported":"x"}"#,
            r#"{"token_endpoint":"https://a.example/t"}"#,
        ];
        for body in permanent {
            let err = parse(&iss, body).unwrap_err();
            assert!(
                matches!(err, DiscoveryError::Invalid { .. }),
                "{body}: {err:?}"
            );
            assert_eq!(err.class(), ErrorClass::Permanent, "{body}");
        }
        for body in ["<html>moved</html>", "[1]", "", "{\"issuer\":"] {
            let err = parse(&iss, body).unwrap_err();
            assert!(
                matches!(err, DiscoveryError::Unparseable { .. }),
                "{body}: {err:?}"
            );
            assert_eq!(err.class(), ErrorClass::Transient);
        }
        let big = format!(
            r#"{{"issuer":"https://a.example","pad":"{}"}}"#,
            "x".repeat(5000)
        );
        assert_eq!(
            parse(&iss, &big).unwrap_err(),
            DiscoveryError::TooLarge { limit: 4096 }
        );
        let status = |s| Metadata::parse(&iss, s, b"", 10, Timestamp::from_secs(0)).unwrap_err();
        assert_eq!(status(503).class(), ErrorClass::Transient);
        assert_eq!(status(429).class(), ErrorClass::Transient);
        assert_eq!(status(403).class(), ErrorClass::Permanent);
        assert!(status(404).try_next_location());
        assert!(status(301).try_next_location());
        assert_eq!(status(302).class(), ErrorClass::Permanent);
        assert!(!status(429).try_next_location());
        assert!(!status(500).try_next_location());
        // An http endpoint is fine for a loopback issuer's own loopback
        // endpoint, and anywhere with consent.
        let local = Issuer::parse("http://127.0.0.1:8080", false).unwrap();
        let body =
            br#"{"issuer":"http://127.0.0.1:8080","token_endpoint":"http://127.0.0.1:8080/t"}"#;
        assert!(Metadata::parse(&local, 200, body, 4096, Timestamp::from_secs(0)).is_ok());
        let body = br#"{"issuer":"https://a.example","token_endpoint":"http://a.example/t"}"#;
        let consenting = Issuer::parse("https://a.example", true).unwrap();
        assert!(Metadata::parse(&consenting, 200, body, 4096, Timestamp::from_secs(0)).is_ok());
    }

    #[test]
    fn the_request_is_a_plain_get() {
        let url = issuer("https://a.example").metadata_url(WellKnown::OpenIdConfiguration);
        let request = metadata_request(&url).unwrap();
        let http = request.as_http();
        assert_eq!(http.method(), Method::GET);
        assert_eq!(
            http.uri(),
            "https://a.example/.well-known/openid-configuration"
        );
        assert!(http.body().is_empty());
        assert!(http.headers().get(http::header::AUTHORIZATION).is_none());
        assert!(request.client_assertion().is_none() && request.grant_assertion().is_none());
    }

    #[test]
    fn staleness() {
        let iss = issuer("https://a.example");
        let body = br#"{"issuer":"https://a.example","token_endpoint":"https://a.example/t"}"#;
        let at = Timestamp::from_secs(1_000_000);
        let m = Metadata::parse(&iss, 200, body, 4096, at).unwrap();
        let day = DEFAULT_DISCOVERY_MAX_AGE;
        let tol = Duration::from_secs(300);
        assert!(!m.is_stale(at, day, tol));
        assert!(!m.is_stale(at.saturating_add(day - Duration::from_secs(1)), day, tol));
        assert!(m.is_stale(at.saturating_add(day), day, tol));
        // Fetched "in the future" by a machine whose clock runs ahead.
        assert!(m.is_stale(Timestamp::from_secs(1_000_000 - 3600), day, tol));
    }

    // ---- the refresher fetching and keeping metadata ----

    use crate::jitter::Jitter;
    use crate::oauth2::OAuth2Client;
    use crate::refresher::{Effect, EffectId, Event, Layer, Refresher, RefresherConfig};
    use crate::secret::{ClientId, ClientSecret};

    const ISS: &str = "https://idp.example/tenant";
    const T0: Timestamp = Timestamp::from_secs(1_700_000_000);

    fn doc(token_endpoint: &str) -> String {
        format!(r#"{{"issuer":"{ISS}","token_endpoint":"{token_endpoint}"}}"#)
    }

    fn client() -> OAuth2Client {
        OAuth2Client::from_issuer(ISS, ClientId::new("svc"), Some(ClientSecret::new("s3cret")))
            .unwrap()
    }

    fn config(layers: usize) -> RefresherConfig {
        let mut config = RefresherConfig::oauth2(client()).jitter(Jitter::none());
        for i in 0..layers {
            config = config.layer(Layer::new(format!("l{i}")));
        }
        config
    }

    /// The next effect: a request, as (id, method, uri).
    fn request(r: &mut Refresher) -> (EffectId, String, String) {
        match r.poll_effect() {
            Some(Effect::SendRequest { id, request, .. }) => {
                let http = request.as_http();
                (id, http.method().to_string(), http.uri().to_string())
            }
            other => panic!("expected a request, got {other:?}"),
        }
    }

    fn answer(r: &mut Refresher, id: EffectId, status: u16, body: &str) {
        r.handle_response(T0, id, status, &http::HeaderMap::new(), body.as_bytes())
            .unwrap();
    }

    const TOKEN: &str = r#"{"access_token":"at-1","token_type":"Bearer","expires_in":3600}"#;

    #[test]
    fn the_token_endpoint_comes_from_the_metadata_and_is_stored_with_the_record() {
        let mut r = Refresher::new(config(1), 1, T0);
        let Some(Effect::ReadCache { id, .. }) = r.poll_effect() else {
            panic!("a read first")
        };
        r.handle_cache_read(T0, id, Ok(None)).unwrap();
        let (id, method, uri) = request(&mut r);
        assert_eq!(
            (method.as_str(), uri.as_str()),
            (
                "GET",
                "https://idp.example/tenant/.well-known/openid-configuration"
            )
        );
        answer(
            &mut r,
            id,
            200,
            &doc("https://login.idp.example/tenant/token"),
        );
        let (id, method, uri) = request(&mut r);
        assert_eq!(
            (method.as_str(), uri.as_str()),
            ("POST", "https://login.idp.example/tenant/token")
        );
        answer(&mut r, id, 200, TOKEN);
        let Some(Effect::WriteCache { record, .. }) = r.poll_effect() else {
            panic!("a write")
        };
        let stored: Value = serde_json::from_slice(record.bytes()).unwrap();
        assert_eq!(
            stored["discovery"]["token_endpoint"],
            "https://login.idp.example/tenant/token"
        );
        assert_eq!(stored["discovery"]["fetched_ms"], T0.as_millis());

        // Another instance (or a restart) reads the record after the token
        // went stale: it asks for a token at once, no metadata request.
        let later = T0.saturating_add(Duration::from_secs(3500));
        let mut other = Refresher::new(config(1), 2, later);
        let Some(Effect::ReadCache { id, .. }) = other.poll_effect() else {
            panic!("a read first")
        };
        other
            .handle_cache_read(later, id, Ok(Some(record.bytes().to_vec())))
            .unwrap();
        let (_, method, uri) = request(&mut other);
        assert_eq!(
            (method.as_str(), uri.as_str()),
            ("POST", "https://login.idp.example/tenant/token")
        );
        assert_eq!(
            match other.config().source() {
                crate::refresher::Source::OAuth2(c) => c.metadata().map(|m| m.fetched()),
                _ => None,
            },
            Some(T0)
        );

        // A day later the metadata is fetched again before the token.
        let next_day = T0.saturating_add(DEFAULT_DISCOVERY_MAX_AGE);
        let mut old = Refresher::new(config(1), 3, next_day);
        let Some(Effect::ReadCache { id, .. }) = old.poll_effect() else {
            panic!("a read first")
        };
        old.handle_cache_read(next_day, id, Ok(Some(record.bytes().to_vec())))
            .unwrap();
        let (_, method, _) = request(&mut old);
        assert_eq!(method, "GET");
    }

    #[test]
    fn a_moved_endpoint_is_looked_up_again_once_per_attempt() {
        let mut r = Refresher::new(config(0), 1, T0);
        let (id, _, _) = request(&mut r);
        answer(&mut r, id, 200, &doc("https://idp.example/v1/token"));
        let (id, _, _) = request(&mut r);
        answer(&mut r, id, 200, TOKEN);
        while r.poll_event().is_some() {}
        // Forced refresh: the old endpoint is gone.
        let _ = r.refresh_now(T0.saturating_add(Duration::from_secs(60)));
        let (id, _, uri) = request(&mut r);
        assert_eq!(uri, "https://idp.example/v1/token");
        answer(&mut r, id, 404, "");
        let (id, method, _) = request(&mut r);
        assert_eq!(method, "GET", "the metadata again after a 404");
        answer(&mut r, id, 200, &doc("https://idp.example/v2/token"));
        let (id, method, uri) = request(&mut r);
        assert_eq!(
            (method.as_str(), uri.as_str()),
            ("POST", "https://idp.example/v2/token")
        );
        answer(&mut r, id, 200, TOKEN);
        assert!(
            std::iter::from_fn(|| r.poll_event()).any(|e| matches!(e, Event::TokenChanged { .. }))
        );

        // Same endpoint in the metadata: the 404 stands, no third request.
        let _ = r.refresh_now(T0.saturating_add(Duration::from_secs(120)));
        let (id, _, _) = request(&mut r);
        answer(&mut r, id, 404, "");
        let (id, method, _) = request(&mut r);
        assert_eq!(method, "GET");
        answer(&mut r, id, 200, &doc("https://idp.example/v2/token"));
        assert!(r.poll_effect().is_none());
        let failed = std::iter::from_fn(|| r.poll_event()).find_map(|e| match e {
            Event::FetchFailed { error, .. } => Some(error),
            _ => None,
        });
        assert!(
            matches!(
                failed,
                Some(FetchError::NotATokenEndpoint { status: 404, .. })
            ),
            "{failed:?}"
        );
    }

    #[test]
    fn a_mismatching_issuer_is_a_permanent_typed_error() {
        let mut r = Refresher::new(config(0), 1, T0);
        let (id, _, _) = request(&mut r);
        answer(
            &mut r,
            id,
            200,
            r#"{"issuer":"https://evil.example/tenant","token_endpoint":"https://evil.example/t"}"#,
        );
        assert!(r.poll_effect().is_none(), "no token request");
        let (error, class) = std::iter::from_fn(|| r.poll_event())
            .find_map(|e| match e {
                Event::FetchFailed { error, class, .. } => Some((error, class)),
                _ => None,
            })
            .unwrap();
        assert_eq!(class, ErrorClass::Permanent);
        assert!(error.is_misconfiguration());
        let shown = error.to_string();
        assert!(
            shown.contains("https://evil.example/tenant") && shown.contains(ISS),
            "{shown}"
        );
        assert!(matches!(
            error,
            FetchError::Discovery {
                error: DiscoveryError::IssuerMismatch { .. },
                ..
            }
        ));
    }

    #[test]
    fn the_rfc_8414_location_is_asked_when_the_oidc_one_is_missing() {
        let mut r = Refresher::new(config(0), 1, T0);
        let (id, _, _) = request(&mut r);
        answer(&mut r, id, 404, "");
        let (id, method, uri) = request(&mut r);
        assert_eq!(
            (method.as_str(), uri.as_str()),
            (
                "GET",
                "https://idp.example/.well-known/oauth-authorization-server/tenant"
            )
        );
        answer(&mut r, id, 404, "");
        let error = std::iter::from_fn(|| r.poll_event())
            .find_map(|e| match e {
                Event::FetchFailed { error, .. } => Some(error),
                _ => None,
            })
            .unwrap();
        assert!(
            matches!(
                error,
                FetchError::Discovery {
                    error: DiscoveryError::NotServed { status: 404 },
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(error.is_permanent());
        // A 503 is transient, and not a reason to look elsewhere.
        let mut r = Refresher::new(config(0), 1, T0);
        let (id, _, _) = request(&mut r);
        answer(&mut r, id, 503, "");
        assert!(r.poll_effect().is_none());
        let class = std::iter::from_fn(|| r.poll_event())
            .find_map(|e| match e {
                Event::FetchFailed { class, .. } => Some(class),
                _ => None,
            })
            .unwrap();
        assert_eq!(class, ErrorClass::Transient);
    }

    #[test]
    fn the_auth_method_follows_the_metadata_unless_chosen() {
        let iss = issuer(ISS);
        let body = format!(
            r#"{{"issuer":"{ISS}","token_endpoint":"https://idp.example/t","token_endpoint_auth_methods_supported":["client_secret_post"]}}"#
        );
        let m = Metadata::parse(&iss, 200, body.as_bytes(), 4096, T0).unwrap();
        let c = client().with_metadata(m.clone()).unwrap();
        assert_eq!(
            c.get_auth_method(),
            crate::oauth2::AuthMethod::ClientSecretPost
        );
        assert_eq!(c.token_url().as_str(), "https://idp.example/t");
        let chosen = client()
            .auth_method(crate::oauth2::AuthMethod::ClientSecretBasic)
            .with_metadata(m)
            .unwrap();
        assert_eq!(
            chosen.get_auth_method(),
            crate::oauth2::AuthMethod::ClientSecretBasic
        );
        // The key names the issuer, whatever the endpoint.
        assert_eq!(
            crate::CacheKey::for_client(&c),
            crate::CacheKey::for_client(&client())
        );
        assert!(crate::CacheKey::for_client(&c).description().contains(ISS));
    }

    /// A record written by a refresher that discovered `endpoint` at `T0`.
    fn record_with_metadata(endpoint: &str) -> Vec<u8> {
        let mut r = Refresher::new(config(0).layer(Layer::new("l0")), 1, T0);
        let Some(Effect::ReadCache { id, .. }) = r.poll_effect() else {
            panic!("a read first")
        };
        r.handle_cache_read(T0, id, Ok(None)).unwrap();
        let (id, _, _) = request(&mut r);
        answer(&mut r, id, 200, &doc(endpoint));
        let (id, _, _) = request(&mut r);
        answer(&mut r, id, 200, TOKEN);
        match r.poll_effect() {
            Some(Effect::WriteCache { record, .. }) => record.bytes().to_vec(),
            other => panic!("a write, not {other:?}"),
        }
    }

    /// A refresher starting at `at` on a layer holding `record`: its first
    /// request.
    fn first_request_after(record: &[u8], at: Timestamp) -> (Refresher, EffectId, String, String) {
        let mut r = Refresher::new(config(1), 5, at);
        let Some(Effect::ReadCache { id, .. }) = r.poll_effect() else {
            panic!("a read first")
        };
        r.handle_cache_read(at, id, Ok(Some(record.to_vec())))
            .unwrap();
        let (id, method, uri) = request(&mut r);
        (r, id, method, uri)
    }

    #[test]
    fn cached_metadata_outlives_its_token_and_an_old_one_serves_while_the_issuer_is_down() {
        let record = record_with_metadata("https://idp.example/t");
        // The token expired (1 h), the metadata did not (24 h): no GET.
        let (_, _, method, uri) =
            first_request_after(&record, T0.saturating_add(Duration::from_secs(7200)));
        assert_eq!(
            (method.as_str(), uri.as_str()),
            ("POST", "https://idp.example/t")
        );
        // A day on: the metadata is asked for again; the issuer answers 503,
        // so the old metadata is used rather than nothing.
        let later = T0.saturating_add(DEFAULT_DISCOVERY_MAX_AGE + Duration::from_secs(60));
        let (mut r, id, method, _) = first_request_after(&record, later);
        assert_eq!(method, "GET");
        r.handle_response(later, id, 503, &http::HeaderMap::new(), b"")
            .unwrap();
        let (_, method, uri) = request(&mut r);
        assert_eq!(
            (method.as_str(), uri.as_str()),
            ("POST", "https://idp.example/t")
        );
        // A record of another issuer's client is not this client's: its
        // metadata is not taken either.
        let other =
            OAuth2Client::from_issuer("https://idp.example/other", ClientId::new("svc"), None)
                .unwrap();
        let key = crate::CacheKey::for_client(&other);
        assert!(
            crate::cache::decode_metadata(&key, &issuer("https://idp.example/other"), &record)
                .is_none()
        );
    }

    #[test]
    fn an_unanswered_metadata_request_is_a_transient_failure() {
        let mut r = Refresher::new(config(0), 1, T0);
        let (_id, method, _) = request(&mut r);
        assert_eq!(method, "GET");
        r.handle_timeout(T0.saturating_add(Duration::from_secs(600)));
        let (error, class) = std::iter::from_fn(|| r.poll_event())
            .find_map(|e| match e {
                Event::FetchFailed { error, class, .. } => Some((error, class)),
                _ => None,
            })
            .unwrap();
        assert_eq!(class, ErrorClass::Transient);
        assert!(
            matches!(&error, FetchError::Discovery { error: DiscoveryError::Unreachable(inner), .. }
                if matches!(**inner, FetchError::Timeout { .. })),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .contains("/.well-known/openid-configuration"),
            "{error}"
        );
    }
}
