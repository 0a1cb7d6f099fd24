//! Putting tokens on requests: the rules every middleware shares
//! (`tokenkeeper-tower`, `tokenkeeper-reqwest`, `tokenkeeper-ureq`), written
//! once so that the three agree.
//!
//! - **Where a token goes** ([`AttachPolicy::placement`]): only to the
//!   origins the policy allows (scheme, host and port, given as URLs), never
//!   over plain `http` except to loopback (the one loopback rule,
//!   [`is_loopback_host`]), and never onto a request that already carries an
//!   `Authorization` header.
//! - **What goes on it** ([`Attacher::attach`]): `Authorization: Bearer
//!   <token>`, or for a DPoP-bound token (`token_type` `DPoP`, the watcher
//!   built with a [`DpopKey`]) `Authorization: DPoP <token>` and a `DPoP`
//!   proof signed for this request (RFC 9449 §7: `htm`, `htu` without query
//!   and fragment, `ath`, `iat`, a fresh `jti`, and the latest nonce the
//!   origin handed out). Values are marked sensitive, so that `http`'s
//!   `Debug` hides them. A DPoP-bound token never goes out as a bearer
//!   token: without a key it is refused ([`CredentialError::ProofRequired`]).
//! - **DPoP nonces** ([`Attacher::after_answer`]): a `DPoP-Nonce` header on
//!   any answer to a DPoP request is remembered for its origin (at most
//!   [`MAX_NONCE_ORIGINS`] origins); a `401` with a `DPoP`
//!   `error="use_dpop_nonce"` challenge and a new nonce is sent once more,
//!   with the same token and a new proof carrying it (if it can be
//!   replayed).
//! - **Whether a 401 calls for a retry** ([`AttachPolicy::calls_for_retry`]):
//!   by default a `401` whose `WWW-Authenticate` has a `Bearer` or `DPoP`
//!   challenge with `error="invalid_token"` or no error code, or no challenge at all
//!   ([`RetryOn`]). A `403` never does.
//! - **The refusal → refresh → retry-once step** ([`renew_after_refusal`]):
//!   tell the watcher the token was refused
//!   ([`TokenWatcher::refresh_if_current`], so a burst of refusals makes one
//!   token request) and wait, within [`AttachPolicy::renewal_timeout`], for a
//!   token other than the refused one. The middleware then sends the request
//!   again once, if it can replay it, or hands back the `401` unchanged.
//!   [`report_refusal`] is the same without the wait, for requests that
//!   cannot be replayed.
//!
//! [`Attacher`] holds what a middleware instance shares and takes a request
//! through these steps; the middleware crates only carry them out. The
//! async steps are futures on every runtime (the thread adapter's
//! middleware runs them with [`park::block_on`](crate::park::block_on)).
//!
//! ```
//! use http::{HeaderMap, Uri};
//! use tokenkeeper_driver::attach::{AttachPolicy, Placement, Target};
//!
//! let policy = AttachPolicy::for_origin("https://api.example.com/v1/")?
//!     .allow_origin("http://127.0.0.1:8080")?;
//! let place = |uri: &str| {
//!     let uri: Uri = uri.parse().unwrap();
//!     policy.placement(Target::from_uri(&uri), &HeaderMap::new())
//! };
//! assert_eq!(place("https://api.example.com/orders"), Placement::Attach);
//! assert_eq!(place("https://API.example.com:443/"), Placement::Attach);
//! assert_eq!(place("http://127.0.0.1:8080/health"), Placement::Attach);
//! assert_eq!(place("https://evil.example.net/"), Placement::OriginNotAllowed);
//! assert_eq!(place("http://api.example.com/"), Placement::PlainHttp);
//! // A plain-http origin elsewhere than loopback is refused up front.
//! assert!(AttachPolicy::for_origin("http://api.example.com").is_err());
//! # Ok::<(), tokenkeeper_driver::attach::OriginError>(())
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue, WWW_AUTHENTICATE};
use http::{Method, StatusCode, Uri};
use tokenkeeper_core::oauth2::is_loopback_host;
use tokenkeeper_core::{RefreshNow, Timestamp, TokenRecord};

use crate::dpop::{DpopKey, DpopKeyError};
use crate::error::TokenError;
use crate::runtime::{Runtime, timeout};
use crate::watcher::TokenWatcher;

/// How long a refused request waits for a new token by default before its
/// `401` is handed back.
pub const DEFAULT_RENEWAL_TIMEOUT: Duration = Duration::from_secs(5);

/// An origin: scheme, host and port, the unit that tokens are allowed to go to.
#[derive(Clone, PartialEq, Eq)]
struct Origin {
    https: bool,
    /// Lower case, brackets kept around IPv6 addresses.
    host: String,
    port: u16,
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

impl Origin {
    /// The origin of `url`, which must be absolute `http` or `https`.
    fn parse(url: &str) -> Result<Origin, OriginError> {
        let uri: Uri = url.trim().parse().map_err(|_| OriginError::NotAUrl)?;
        let target = Target::from_uri(&uri).ok_or(OriginError::NotAbsolute)?;
        let origin = Origin::of(&target).ok_or(OriginError::UnsupportedScheme)?;
        if !origin.https && !is_loopback_host(&origin.host) {
            return Err(OriginError::PlainHttp);
        }
        Ok(origin)
    }

    /// The origin a target names, if its scheme is `http` or `https`.
    fn of(target: &Target<'_>) -> Option<Origin> {
        let https = scheme_is_https(target.scheme)?;
        Some(Origin {
            https,
            host: target.host.to_ascii_lowercase(),
            port: target.port.unwrap_or(if https { 443 } else { 80 }),
        })
    }

    fn matches(&self, target: &Target<'_>, https: bool) -> bool {
        self.https == https
            && self.port == target.port.unwrap_or(if https { 443 } else { 80 })
            && self.host.eq_ignore_ascii_case(target.host)
    }
}

/// `Some(true)` for `https`, `Some(false)` for `http`, `None` otherwise.
fn scheme_is_https(scheme: &str) -> Option<bool> {
    if scheme.eq_ignore_ascii_case("https") {
        Some(true)
    } else if scheme.eq_ignore_ascii_case("http") {
        Some(false)
    } else {
        None
    }
}

/// Why a URL cannot be an allowed origin.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OriginError {
    /// It does not parse as a URL.
    NotAUrl,
    /// It has no scheme or no host.
    NotAbsolute,
    /// Its scheme is neither `http` nor `https`.
    UnsupportedScheme,
    /// It is plain `http` to a host other than loopback: tokens never travel
    /// in clear off this machine.
    PlainHttp,
    /// No origin was given.
    NoOrigin,
}

impl fmt::Display for OriginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL itself is not repeated: it may carry a password.
        f.write_str(match self {
            OriginError::NotAUrl => "the allowed origin is not a URL",
            OriginError::NotAbsolute => "the allowed origin needs a scheme and a host",
            OriginError::UnsupportedScheme => "the allowed origin must be http or https",
            OriginError::PlainHttp => {
                "tokens are sent over plain http only to loopback; use https for this origin"
            }
            OriginError::NoOrigin => "no allowed origin was given",
        })
    }
}

impl std::error::Error for OriginError {}

/// Where a request goes, as the placement rules see it: its scheme, host
/// (brackets kept around an IPv6 address, as in URLs) and explicit port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    /// The scheme, such as `https`.
    pub scheme: &'a str,
    /// The host, such as `api.example.com` or `[::1]`.
    pub host: &'a str,
    /// The port, when the URL names one.
    pub port: Option<u16>,
}

impl<'a> Target<'a> {
    /// The target of an absolute URI; `None` for a relative one (`/path`).
    pub fn from_uri(uri: &'a Uri) -> Option<Target<'a>> {
        Some(Target {
            scheme: uri.scheme_str()?,
            host: uri.host()?,
            port: uri.port_u16(),
        })
    }
}

/// Where the rules put a token, or why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Placement {
    /// Attach the token.
    Attach,
    /// The request carries an `Authorization` header already: leave it alone.
    AlreadyAuthorized,
    /// Plain `http` to a host other than loopback: no token, whatever the
    /// allow list says.
    PlainHttp,
    /// The origin is not allowed.
    OriginNotAllowed,
    /// The request has no absolute URI (and no
    /// [`relative_to`](AttachPolicy::relative_to) origin is set), so where it
    /// goes is unknown.
    UnknownOrigin,
}

impl Placement {
    /// Whether a token goes on the request.
    pub fn attaches(self) -> bool {
        self == Placement::Attach
    }
}

/// Which `401` answers call for a new token and a retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RetryOn {
    /// A `401` whose `WWW-Authenticate` holds a `Bearer` or `DPoP` challenge with
    /// `error="invalid_token"` or with no error code, or that has no
    /// `WWW-Authenticate` at all (a server that does not follow RFC 6750
    /// §3). Not one that challenges for another scheme only, nor one whose
    /// challenge names another error (a `DPoP` `use_dpop_nonce` is a nonce
    /// retry, never a refusal of the token) (`invalid_request`,
    /// `insufficient_scope`). The default.
    #[default]
    InvalidToken,
    /// Every `401`.
    AnyUnauthorized,
    /// Never: every `401` is handed back unchanged, and the watcher is not
    /// told (call [`TokenWatcher::refresh_if_current`] yourself).
    Never,
}

/// The rules a middleware follows: which origins get tokens, which `401`s
/// call for a retry, and how long a refused request waits for a new token.
///
/// Built from the origins allowed; see the [module documentation](self).
#[derive(Clone, Debug)]
pub struct AttachPolicy {
    origins: Vec<Origin>,
    relative_to: Option<Origin>,
    retry_on: RetryOn,
    renewal_timeout: Duration,
}

impl AttachPolicy {
    /// Tokens go to the origin of `url` (scheme, host and port; any path is
    /// ignored), typically the base URL of the API the client calls.
    /// Plain `http` is accepted only for loopback.
    pub fn for_origin(url: &str) -> Result<AttachPolicy, OriginError> {
        Ok(AttachPolicy {
            origins: vec![Origin::parse(url)?],
            relative_to: None,
            retry_on: RetryOn::default(),
            renewal_timeout: DEFAULT_RENEWAL_TIMEOUT,
        })
    }

    /// Tokens go to each of these origins: [`for_origin`](Self::for_origin)
    /// of the first, [`allow_origin`](Self::allow_origin) of the others.
    pub fn for_origins<S: AsRef<str>>(
        urls: impl IntoIterator<Item = S>,
    ) -> Result<AttachPolicy, OriginError> {
        let mut urls = urls.into_iter();
        let first = urls.next().ok_or(OriginError::NoOrigin)?;
        urls.try_fold(AttachPolicy::for_origin(first.as_ref())?, |policy, url| {
            policy.allow_origin(url.as_ref())
        })
    }

    /// Tokens go to each of these origins too.
    pub fn allow_origin(mut self, url: &str) -> Result<AttachPolicy, OriginError> {
        let origin = Origin::parse(url)?;
        if !self.origins.contains(&origin) {
            self.origins.push(origin);
        }
        Ok(self)
    }

    /// Requests with a relative URI (`/path`) are taken to go to the origin
    /// of `url`, which must also be allowed to get a token. For clients that
    /// add the origin below the middleware, such as a tonic `Channel`.
    pub fn relative_to(mut self, url: &str) -> Result<AttachPolicy, OriginError> {
        self.relative_to = Some(Origin::parse(url)?);
        Ok(self)
    }

    /// Which `401` answers call for a retry ([`RetryOn::InvalidToken`] unless set).
    pub fn retry_on(mut self, retry_on: RetryOn) -> AttachPolicy {
        self.retry_on = retry_on;
        self
    }

    /// How long a refused request waits for a new token before its `401` is
    /// handed back ([`DEFAULT_RENEWAL_TIMEOUT`] unless set).
    pub fn renewal_timeout(mut self, limit: Duration) -> AttachPolicy {
        self.renewal_timeout = limit;
        self
    }

    /// The wait set with [`renewal_timeout`](Self::renewal_timeout).
    pub fn renewal_wait(&self) -> Duration {
        self.renewal_timeout
    }

    /// The retry rule set with [`retry_on`](Self::retry_on).
    pub fn retry_rule(&self) -> RetryOn {
        self.retry_on
    }

    /// Whether a token goes on a request to `target` (`None`: a relative
    /// URI) with these `headers`.
    pub fn placement(&self, target: Option<Target<'_>>, headers: &HeaderMap) -> Placement {
        self.placement_of(target, headers.contains_key(AUTHORIZATION))
    }

    /// [`placement`](Self::placement), told only whether the request has an
    /// `Authorization` header.
    pub fn placement_of(&self, target: Option<Target<'_>>, has_authorization: bool) -> Placement {
        if has_authorization {
            return Placement::AlreadyAuthorized;
        }
        let Some(target) = target else {
            return match &self.relative_to {
                Some(origin) if self.origins.contains(origin) => Placement::Attach,
                Some(_) => Placement::OriginNotAllowed,
                None => Placement::UnknownOrigin,
            };
        };
        let Some(https) = scheme_is_https(target.scheme) else {
            return Placement::OriginNotAllowed;
        };
        if !https && !is_loopback_host(target.host) {
            return Placement::PlainHttp;
        }
        if self
            .origins
            .iter()
            .any(|origin| origin.matches(&target, https))
        {
            Placement::Attach
        } else {
            Placement::OriginNotAllowed
        }
    }

    /// Whether an answer with `status` and `headers` to a request that
    /// carried a token calls for a new token and one retry.
    pub fn calls_for_retry(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        if status != StatusCode::UNAUTHORIZED {
            return false;
        }
        match self.retry_on {
            RetryOn::Never => false,
            RetryOn::AnyUnauthorized => true,
            RetryOn::InvalidToken => challenge_refuses_token(headers),
        }
    }
}

const BEARER: &str = "Bearer ";
const DPOP: &str = "DPoP ";

/// The request header that carries a DPoP proof (RFC 9449 §4.1).
pub const DPOP_HEADER: HeaderName = HeaderName::from_static("dpop");

/// The answer header in which a server hands out a DPoP nonce (RFC 9449 §8).
pub const DPOP_NONCE_HEADER: HeaderName = HeaderName::from_static("dpop-nonce");

/// The most origins whose DPoP nonce a middleware remembers; the oldest is
/// forgotten first. Tokens go only to allowed origins, so this is seldom
/// reached.
pub const MAX_NONCE_ORIGINS: usize = 64;

/// The longest DPoP nonce remembered; a longer one is ignored.
const MAX_NONCE_LEN: usize = 1024;

/// The headers that carry a token on one request. `Debug` hides them.
#[derive(Clone)]
pub struct Credentials {
    authorization: HeaderValue,
    proof: Option<HeaderValue>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("dpop", &self.proof.is_some())
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// The headers for `record`: `Authorization: Bearer <token>`, or, for a
    /// DPoP-bound token (`token_type` `DPoP`), `Authorization: DPoP <token>`
    /// and a `DPoP` proof signed with `key` for `request` (RFC 9449 §7).
    /// Every value is marked sensitive, so that `http`'s `Debug` hides it.
    fn for_record(
        record: &TokenRecord,
        key: Option<&DpopKey>,
        request: Option<&ProofRequest>,
    ) -> Result<Credentials, CredentialError> {
        let secret = record.access_token.expose_secret();
        let (scheme, proof) = if is_dpop_bound(record) {
            let (Some(key), Some(request)) = (key, request) else {
                return Err(CredentialError::ProofRequired);
            };
            let proof = key
                .resource_proof(
                    request.method.as_str(),
                    &request.url,
                    secret,
                    request.nonce.as_deref(),
                    unix_now(),
                )
                .map_err(CredentialError::Signing)?;
            let mut proof =
                HeaderValue::try_from(proof).map_err(|_| CredentialError::NotAHeaderValue)?;
            proof.set_sensitive(true);
            (DPOP, Some(proof))
        } else {
            (BEARER, None)
        };
        let mut value = String::with_capacity(scheme.len() + secret.len());
        value.push_str(scheme);
        value.push_str(secret);
        let mut authorization =
            HeaderValue::try_from(value).map_err(|_| CredentialError::NotAHeaderValue)?;
        authorization.set_sensitive(true);
        Ok(Credentials {
            authorization,
            proof,
        })
    }

    /// Sets the headers on a request's header map (replacing any of the
    /// same names).
    #[inline]
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(AUTHORIZATION, self.authorization.clone());
        match &self.proof {
            Some(proof) => {
                headers.insert(DPOP_HEADER, proof.clone());
            }
            None => {
                headers.remove(DPOP_HEADER);
            }
        }
    }
}

/// Whether `record` is a DPoP-bound token.
fn is_dpop_bound(record: &TokenRecord) -> bool {
    record.token_type.eq_ignore_ascii_case("dpop")
}

/// Seconds since the Unix epoch: a proof's `iat`, which servers compare
/// with their wall clock.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// What a proof is signed for: the request's method and URL (`htm`, `htu`),
/// its origin (whose nonce it carries), and that nonce.
#[derive(Clone)]
struct ProofRequest {
    method: Method,
    url: url::Url,
    origin: Origin,
    nonce: Option<String>,
}

/// Why a token cannot be put on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CredentialError {
    /// The token holds characters an HTTP header cannot carry (the
    /// authority sent a malformed token).
    NotAHeaderValue,
    /// The token is DPoP-bound but the watcher has no DPoP key to sign a
    /// proof with (a token from a source of its own): it is not sent as a
    /// bearer token, which the resource server must refuse (RFC 9449 §7.1).
    ProofRequired,
    /// The proof could not be signed.
    Signing(DpopKeyError),
}

impl fmt::Display for CredentialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialError::NotAHeaderValue => {
                f.write_str("the access token holds characters an HTTP header cannot carry")
            }
            CredentialError::ProofRequired => f.write_str(
                "the access token is DPoP-bound and the watcher has no DPoP key to sign proofs with",
            ),
            CredentialError::Signing(error) => write!(f, "cannot sign the DPoP proof: {error}"),
        }
    }
}

impl std::error::Error for CredentialError {}

/// Whether the `WWW-Authenticate` headers of a `401` say the token itself
/// was refused: a `Bearer` or `DPoP` challenge with `error="invalid_token"`
/// or no error, or no challenge at all.
fn challenge_refuses_token(headers: &HeaderMap) -> bool {
    let mut challenged = false;
    for value in headers.get_all(WWW_AUTHENTICATE) {
        challenged = true;
        let Ok(text) = value.to_str() else { continue };
        for challenge in challenges(text) {
            if challenge.scheme.eq_ignore_ascii_case("bearer")
                || challenge.scheme.eq_ignore_ascii_case("dpop")
            {
                match challenge.error {
                    None => return true,
                    Some(error) if error == "invalid_token" => return true,
                    Some(_) => {}
                }
            }
        }
    }
    !challenged
}

/// Whether the `WWW-Authenticate` headers hold a `DPoP` challenge with
/// `error="use_dpop_nonce"` (RFC 9449 §9): the server wants a proof with its
/// nonce, which says nothing against the token.
fn challenge_asks_for_nonce(headers: &HeaderMap) -> bool {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(challenges)
        .any(|challenge| {
            challenge.scheme.eq_ignore_ascii_case("dpop")
                && challenge.error.as_deref() == Some("use_dpop_nonce")
        })
}

/// One challenge of a `WWW-Authenticate` value: its scheme and its `error`
/// parameter.
#[derive(Debug, PartialEq, Eq)]
struct Challenge<'a> {
    scheme: &'a str,
    error: Option<String>,
}

/// The challenges of a `WWW-Authenticate` value (RFC 9110 §11.6.1),
/// read tolerantly: `scheme [token68 | param ("," param)*] ("," challenge)*`.
fn challenges(text: &str) -> Vec<Challenge<'_>> {
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_ascii_whitespace());
        if rest.is_empty() {
            return out;
        }
        let (name, after) = split_token(rest);
        if name.is_empty() {
            // Not a token: skip one character and look again.
            let mut chars = rest.chars();
            chars.next();
            rest = chars.as_str();
            continue;
        }
        let trimmed = after.trim_start_matches([' ', '\t']);
        if trimmed.starts_with('=') && !out.is_empty() {
            // A parameter of the challenge before.
            let (value, after_value) = param_value(&trimmed[1..]);
            if name.eq_ignore_ascii_case("error")
                && let Some(last) = out.last_mut()
                && let Challenge { error: None, .. } = last
            {
                last.error = Some(value);
            }
            rest = after_value;
        } else {
            out.push(Challenge {
                scheme: name,
                error: None,
            });
            rest = after;
            // A token68 after the scheme: skip it.
            let trimmed = rest.trim_start_matches([' ', '\t']);
            let (word, after_word) = split_token68(trimmed);
            let next = after_word.trim_start_matches([' ', '\t']);
            if !word.is_empty() && (next.is_empty() || next.starts_with(',')) {
                rest = after_word;
            }
        }
    }
}

/// A token (RFC 9110 `tchar`s) at the start of `text`, and what follows.
fn split_token(text: &str) -> (&str, &str) {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)))
        .unwrap_or(text.len());
    text.split_at(end)
}

/// A token68 at the start of `text` (ending in `=`s), and what follows.
fn split_token68(text: &str) -> (&str, &str) {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || "-._~+/".contains(c)))
        .unwrap_or(text.len());
    let end = end + text[end..].len() - text[end..].trim_start_matches('=').len();
    let (word, rest) = text.split_at(end);
    if word.chars().all(|c| c == '=') {
        ("", text)
    } else {
        (word, rest)
    }
}

/// A parameter value (a token or a quoted string) after the `=`, and what follows.
fn param_value(text: &str) -> (String, &str) {
    let text = text.trim_start_matches([' ', '\t']);
    if let Some(quoted) = text.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        while let Some((at, c)) = chars.next() {
            match c {
                '"' => return (value, &quoted[at + 1..]),
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                }
                c => value.push(c),
            }
        }
        (value, "")
    } else {
        let (token, rest) = split_token(text);
        (token.to_owned(), rest)
    }
}

/// What came of [`renew_after_refusal`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Renewal {
    /// The watcher holds a token other than the refused one: retry with it.
    Renewed(Arc<TokenRecord>),
    /// The refused token is still the current one and a forced refresh is
    /// not allowed again before `until`: hand back the `401`.
    RateLimited {
        /// When a forced refresh is allowed again.
        until: Timestamp,
    },
    /// No new token within the renewal timeout: hand back the `401`.
    TimedOut,
    /// The watcher has stopped.
    Stopped,
}

/// Tells the watcher that a resource server refused `refused`, and waits
/// (at most `limit`) for a token other than it: the step between a `401` and
/// the one retry, the same for every middleware and runtime.
///
/// A burst of refusals of one token makes one token request: the first
/// starts a refresh, the others join it (or learn that the token was
/// replaced already), and all wait for the same new token.
pub async fn renew_after_refusal<R: Runtime>(
    watcher: &TokenWatcher<R>,
    refused: &TokenRecord,
    limit: Duration,
) -> Renewal {
    let work = async {
        match watcher.refresh_if_current_async(refused).await {
            Err(_) => Renewal::Stopped,
            Ok(RefreshNow::RateLimited { until }) => Renewal::RateLimited { until },
            // Replaced, Started, Joined, and whatever a later core adds: wait
            // for a token other than the refused one (at once if it is there).
            Ok(_) => match watcher.changed_from_async(refused).await {
                Ok(token) => Renewal::Renewed(token),
                Err(_) => Renewal::Stopped,
            },
        }
    };
    timeout(watcher.runtime(), limit, work)
        .await
        .unwrap_or(Renewal::TimedOut)
}

/// Tells the watcher that a resource server refused `refused`, without
/// waiting for a new token: for a request that cannot be replayed, whose
/// `401` goes back to the caller while the next requests get a new token.
/// Errors only when the watcher has stopped, which the caller may ignore.
pub async fn report_refusal<R: Runtime>(
    watcher: &TokenWatcher<R>,
    refused: &TokenRecord,
) -> Result<RefreshNow, crate::WatcherStopped> {
    watcher.refresh_if_current_async(refused).await
}

/// Why a middleware did not send a request.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum AttachError {
    /// The request should carry a token and the watcher has none usable
    /// (none yet, the last one expired, or it stopped).
    Token(TokenError),
    /// The token cannot be carried in a header (or its DPoP proof cannot be
    /// made).
    Credentials(CredentialError),
}

impl fmt::Display for AttachError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttachError::Token(error) => write!(f, "no access token to send: {error}"),
            AttachError::Credentials(error) => write!(f, "cannot send the access token: {error}"),
        }
    }
}

impl std::error::Error for AttachError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AttachError::Token(error) => Some(error),
            AttachError::Credentials(error) => Some(error),
        }
    }
}

/// A token put on one request: the record it came from and the headers
/// that carry it. Made by [`Attacher::attach`]; `Debug` hides the token.
#[derive(Clone)]
pub struct Attached {
    record: Arc<TokenRecord>,
    credentials: Credentials,
    proof: Option<ProofRequest>,
}

impl fmt::Debug for Attached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attached")
            .field("dpop", &self.proof.is_some())
            .finish_non_exhaustive()
    }
}

impl Attached {
    /// Sets the headers on a request's header map.
    #[inline]
    pub fn apply(&self, headers: &mut HeaderMap) {
        self.credentials.apply(headers);
    }

    /// The token record it carries.
    pub fn record(&self) -> &Arc<TokenRecord> {
        &self.record
    }

    /// Whether it carries a DPoP-bound token with a proof.
    pub fn is_dpop(&self) -> bool {
        self.proof.is_some()
    }
}

/// What an answer to a request that carried a token calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Judgement {
    /// Hand it back.
    Keep,
    /// The resource server wants a DPoP proof with its nonce (now
    /// remembered): send once more with a new proof.
    Nonce,
    /// The token was refused: get a new one and send once more.
    Refused,
}

/// The part every middleware shares, one per middleware instance: the
/// watcher, the [`AttachPolicy`], and the DPoP nonces resource servers
/// handed out (per origin, at most [`MAX_NONCE_ORIGINS`]).
///
/// A middleware calls [`attach`](Self::attach) (or
/// [`attach_url`](Self::attach_url)) before sending, applies the
/// [`Attached`] headers, and hands the answer to
/// [`after_answer`](Self::after_answer), which says whether to send once
/// more and with which headers; the answer to that one retry goes to
/// [`note_answer`](Self::note_answer).
pub struct Attacher<R> {
    watcher: TokenWatcher<R>,
    policy: AttachPolicy,
    nonces: Mutex<VecDeque<(Origin, String)>>,
}

impl<R> fmt::Debug for Attacher<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attacher")
            .field("watcher", &self.watcher)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<R> Attacher<R> {
    /// Tokens of `watcher`, on the requests `policy` allows.
    pub fn new(watcher: TokenWatcher<R>, policy: AttachPolicy) -> Attacher<R> {
        Attacher {
            watcher,
            policy,
            nonces: Mutex::new(VecDeque::new()),
        }
    }

    /// The watcher.
    pub fn watcher(&self) -> &TokenWatcher<R> {
        &self.watcher
    }

    /// The policy.
    pub fn policy(&self) -> &AttachPolicy {
        &self.policy
    }

    fn nonces(&self) -> std::sync::MutexGuard<'_, VecDeque<(Origin, String)>> {
        self.nonces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The latest nonce `origin` handed out, if any.
    fn nonce_for(&self, origin: &Origin) -> Option<String> {
        self.nonces()
            .iter()
            .find(|(known, _)| known == origin)
            .map(|(_, nonce)| nonce.clone())
    }

    /// Remembers the nonce of a `DPoP-Nonce` header in an answer from
    /// `origin`; whether it differs from `sent`. A malformed or overlong
    /// nonce is ignored.
    fn remember_nonce(&self, origin: &Origin, headers: &HeaderMap, sent: Option<&str>) -> bool {
        let Some(nonce) = headers
            .get(DPOP_NONCE_HEADER)
            .and_then(|value| value.to_str().ok())
            .filter(|nonce| is_nonce(nonce))
        else {
            return false;
        };
        let mut nonces = self.nonces();
        match nonces.iter_mut().find(|(known, _)| known == origin) {
            Some((_, held)) if held == nonce => {}
            Some((_, held)) => *held = nonce.to_owned(),
            None => {
                if nonces.len() >= MAX_NONCE_ORIGINS {
                    nonces.pop_front();
                }
                nonces.push_back((origin.clone(), nonce.to_owned()));
            }
        }
        sent != Some(nonce)
    }
}

/// RFC 9449 §8.1: `nonce = 1*NQCHAR` (visible ASCII but `"` and `\`).
fn is_nonce(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_NONCE_LEN
        && text
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\')
}

impl<R: Runtime> Attacher<R> {
    /// The token for a request of `method` to `uri` with `headers`, if the
    /// policy puts one on it (`Ok(None)`: send it as it is). A relative URI
    /// is taken to go to the [`relative_to`](AttachPolicy::relative_to)
    /// origin.
    pub fn attach(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<Option<Attached>, AttachError> {
        let target = Target::from_uri(uri);
        if !self.policy.placement(target, headers).attaches() {
            return Ok(None);
        }
        self.attach_to(method, || match target {
            Some(_) => url::Url::parse(&uri.to_string()).ok(),
            None => {
                let origin = self.policy.relative_to.as_ref()?;
                let path = uri.path_and_query().map_or("/", |path| path.as_str());
                url::Url::parse(&format!("{origin:?}{path}")).ok()
            }
        })
    }

    /// [`attach`](Self::attach) for a request whose URL is a
    /// [`url::Url`] (as reqwest's are).
    pub fn attach_url(
        &self,
        method: &Method,
        url: &url::Url,
        headers: &HeaderMap,
    ) -> Result<Option<Attached>, AttachError> {
        let target = url.host_str().map(|host| Target {
            scheme: url.scheme(),
            host,
            port: url.port(),
        });
        if !self.policy.placement(target, headers).attaches() {
            return Ok(None);
        }
        self.attach_to(method, || Some(url.clone()))
    }

    /// The current token, with a proof for `method` and the URL `url` gives
    /// when the token is DPoP-bound.
    fn attach_to(
        &self,
        method: &Method,
        url: impl FnOnce() -> Option<url::Url>,
    ) -> Result<Option<Attached>, AttachError> {
        let record = self.watcher.token().map_err(AttachError::Token)?.into_arc();
        let proof = if is_dpop_bound(&record) {
            let url = url().ok_or(AttachError::Credentials(CredentialError::ProofRequired))?;
            let origin = url
                .host_str()
                .and_then(|host| {
                    Origin::of(&Target {
                        scheme: url.scheme(),
                        host,
                        port: url.port(),
                    })
                })
                .ok_or(AttachError::Credentials(CredentialError::ProofRequired))?;
            let nonce = self.nonce_for(&origin);
            Some(ProofRequest {
                method: method.clone(),
                url,
                origin,
                nonce,
            })
        } else {
            None
        };
        self.with_record(record, proof)
            .map(Some)
            .map_err(AttachError::Credentials)
    }

    fn with_record(
        &self,
        record: Arc<TokenRecord>,
        proof: Option<ProofRequest>,
    ) -> Result<Attached, CredentialError> {
        let credentials =
            Credentials::for_record(&record, self.watcher.dpop_key(), proof.as_ref())?;
        Ok(Attached {
            record,
            credentials,
            proof,
        })
    }

    /// What the answer (`status`, and its `headers` unless the client
    /// dropped them, as ureq does for a `401` it turns into an error) to a
    /// request that carried `attached` calls for. Remembers a `DPoP-Nonce`.
    fn judge(
        &self,
        attached: &Attached,
        status: StatusCode,
        headers: Option<&HeaderMap>,
    ) -> Judgement {
        let new_nonce = match (&attached.proof, headers) {
            (Some(proof), Some(headers)) => {
                self.remember_nonce(&proof.origin, headers, proof.nonce.as_deref())
            }
            _ => false,
        };
        if status != StatusCode::UNAUTHORIZED {
            return Judgement::Keep;
        }
        let Some(headers) = headers else {
            return if self.policy.retry_on == RetryOn::Never {
                Judgement::Keep
            } else {
                Judgement::Refused
            };
        };
        if challenge_asks_for_nonce(headers) {
            // Never a refusal of the token; a retry only with a nonce other
            // than the one the proof carried.
            return if new_nonce {
                Judgement::Nonce
            } else {
                Judgement::Keep
            };
        }
        if self.policy.calls_for_retry(status, headers) {
            Judgement::Refused
        } else {
            Judgement::Keep
        }
    }

    /// After the answer to a request that carried `attached`: whether to
    /// send it once more, and with which token (`None`: hand the answer
    /// back). `can_replay` says whether the middleware holds a copy of the
    /// request to send.
    ///
    /// - A `DPoP-Nonce` header is remembered for the origin: later proofs
    ///   to it carry the nonce.
    /// - A `401` with a `DPoP` `use_dpop_nonce` challenge and a new nonce:
    ///   the same token with a new proof carrying it.
    /// - A `401` that refuses the token ([`AttachPolicy::calls_for_retry`];
    ///   without `headers`, any `401` unless [`RetryOn::Never`]): the
    ///   watcher is told ([`renew_after_refusal`], or [`report_refusal`]
    ///   when the request cannot be replayed) and the new token comes back.
    pub async fn after_answer(
        &self,
        attached: &Attached,
        status: StatusCode,
        headers: Option<&HeaderMap>,
        can_replay: bool,
    ) -> Option<Attached> {
        match self.judge(attached, status, headers) {
            Judgement::Keep => None,
            Judgement::Nonce if can_replay => {
                tracing::debug!("the resource server asked for a DPoP nonce; sending once more");
                self.with_record(Arc::clone(&attached.record), self.next_proof(attached))
                    .ok()
            }
            Judgement::Nonce => None,
            Judgement::Refused if !can_replay => {
                // The next requests get a new token; this one's 401 goes back.
                let _ = report_refusal(&self.watcher, &attached.record).await;
                None
            }
            Judgement::Refused => {
                let renewed = renew_after_refusal(
                    &self.watcher,
                    &attached.record,
                    self.policy.renewal_wait(),
                )
                .await;
                let Renewal::Renewed(token) = renewed else {
                    return None;
                };
                self.with_record(token, self.next_proof(attached)).ok()
            }
        }
    }

    /// What the retry of `attached` signs a proof for: the same request,
    /// with the origin's latest nonce.
    fn next_proof(&self, attached: &Attached) -> Option<ProofRequest> {
        attached.proof.as_ref().map(|proof| ProofRequest {
            nonce: self.nonce_for(&proof.origin),
            ..proof.clone()
        })
    }

    /// The answer to the one retry: only its `DPoP-Nonce` is remembered
    /// (never a second retry).
    pub fn note_answer(&self, attached: &Attached, headers: &HeaderMap) {
        if let Some(proof) = &attached.proof {
            self.remember_nonce(&proof.origin, headers, proof.nonce.as_deref());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> AttachPolicy {
        AttachPolicy::for_origin("https://api.example.com/base/")
            .and_then(|p| p.allow_origin("http://127.0.0.1:8080"))
            .and_then(|p| p.allow_origin("http://[::1]:9000"))
            .and_then(|p| p.allow_origin("http://localhost"))
            .expect("valid origins")
    }

    fn place(policy: &AttachPolicy, uri: &str) -> Placement {
        let uri: Uri = uri.parse().expect("a uri");
        policy.placement(Target::from_uri(&uri), &HeaderMap::new())
    }

    #[test]
    fn tokens_go_only_to_allowed_origins() {
        let p = policy();
        for yes in [
            "https://api.example.com/orders?x=1",
            "https://API.Example.COM:443/",
            "HTTPS://api.example.com",
            "http://127.0.0.1:8080/",
            "http://[::1]:9000/x",
            "http://localhost:80/",
        ] {
            assert_eq!(place(&p, yes), Placement::Attach, "{yes}");
        }
        for no in [
            "https://api.example.com:8443/",
            "https://api.example.com.evil.net/",
            "https://evil.net/?https://api.example.com",
            "https://user@evil.net/",
            "http://127.0.0.1:8081/",
            "http://127.0.0.2:8080/",
            "https://127.0.0.1:8080/",
            "ftp://api.example.com/",
            "ws://localhost/",
        ] {
            assert_eq!(place(&p, no), Placement::OriginNotAllowed, "{no}");
        }
    }

    #[test]
    fn plain_http_goes_only_to_loopback() {
        let p = policy();
        // Even an origin that is allowed over https gets nothing over http.
        assert_eq!(place(&p, "http://api.example.com/"), Placement::PlainHttp);
        assert_eq!(place(&p, "http://10.0.0.1:8080/"), Placement::PlainHttp);
        assert_eq!(
            place(&p, "http://127.0.0.1.nip.io:8080/"),
            Placement::PlainHttp
        );
        assert_eq!(
            AttachPolicy::for_origin("http://api.example.com").unwrap_err(),
            OriginError::PlainHttp
        );
        assert_eq!(
            policy().allow_origin("http://192.168.1.1:80").unwrap_err(),
            OriginError::PlainHttp
        );
        assert!(AttachPolicy::for_origin("http://sub.localhost:1").is_ok());
    }

    #[test]
    fn own_authorization_and_relative_uris() {
        let p = policy();
        let uri: Uri = "https://api.example.com/".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(
            p.placement(Target::from_uri(&uri), &headers),
            Placement::AlreadyAuthorized
        );
        let relative: Uri = "/pkg.Service/Call".parse().unwrap();
        assert_eq!(Target::from_uri(&relative), None);
        assert_eq!(
            p.placement(None, &HeaderMap::new()),
            Placement::UnknownOrigin
        );
        let tonic = p.clone().relative_to("https://api.example.com").unwrap();
        assert_eq!(tonic.placement(None, &HeaderMap::new()), Placement::Attach);
        let elsewhere = p.relative_to("https://other.example.com").unwrap();
        assert_eq!(
            elsewhere.placement(None, &HeaderMap::new()),
            Placement::OriginNotAllowed
        );
    }

    #[test]
    fn bad_origins_are_typed() {
        assert_eq!(
            AttachPolicy::for_origin("not a url").unwrap_err(),
            OriginError::NotAUrl
        );
        assert_eq!(
            AttachPolicy::for_origin("/relative").unwrap_err(),
            OriginError::NotAbsolute
        );
        assert_eq!(
            AttachPolicy::for_origin("ftp://example.com").unwrap_err(),
            OriginError::UnsupportedScheme
        );
        let shown = OriginError::NotAUrl.to_string();
        assert!(!shown.contains("not a url"));
    }

    fn retry(policy: &AttachPolicy, status: u16, challenges: &[&str]) -> bool {
        let mut headers = HeaderMap::new();
        for c in challenges {
            headers.append(WWW_AUTHENTICATE, HeaderValue::from_str(c).unwrap());
        }
        policy.calls_for_retry(StatusCode::from_u16(status).unwrap(), &headers)
    }

    #[test]
    fn which_refusals_call_for_a_retry() {
        let p = policy();
        assert!(retry(&p, 401, &[r#"Bearer error="invalid_token""#]));
        assert!(retry(
            &p,
            401,
            &[r#"Bearer realm="api", error="invalid_token", error_description="expired""#]
        ));
        assert!(retry(&p, 401, &["Bearer"]));
        assert!(retry(&p, 401, &[r#"Bearer realm="api""#]));
        assert!(retry(&p, 401, &["bearer error=invalid_token"]));
        assert!(retry(&p, 401, &[]));
        assert!(retry(
            &p,
            401,
            &[r#"Basic realm="x", Bearer error="invalid_token""#]
        ));
        assert!(retry(&p, 401, &[r#"Basic realm="x""#, "Bearer"]));
        assert!(retry(&p, 401, &[r#"Newauth abc=, Bearer"#]));
        assert!(!retry(&p, 401, &[r#"Basic realm="x""#]));
        assert!(!retry(&p, 401, &[r#"Bearer error="invalid_request""#]));
        assert!(!retry(&p, 401, &[r#"Bearer error="insufficient_scope""#]));
        assert!(!retry(
            &p,
            401,
            &[r#"Bearer realm="a,b\" error=invalid_token", error="invalid_request""#]
        ));
        assert!(!retry(&p, 403, &[r#"Bearer error="invalid_token""#]));
        assert!(!retry(&p, 403, &[]));
        assert!(!retry(&p, 200, &[]));
        let any = p.clone().retry_on(RetryOn::AnyUnauthorized);
        assert!(retry(&any, 401, &[r#"Bearer error="invalid_request""#]));
        assert!(!retry(&any, 403, &[]));
        let never = p.retry_on(RetryOn::Never);
        assert!(!retry(&never, 401, &[r#"Bearer error="invalid_token""#]));
    }

    fn record(token: &str) -> TokenRecord {
        tokenkeeper_core::LifetimePolicy::default().record(
            tokenkeeper_core::TokenGrant::bearer(
                tokenkeeper_core::AccessToken::new(token),
                Some(Duration::from_secs(60)),
            ),
            Timestamp::from_secs(1),
            None,
        )
    }

    #[test]
    fn credentials_carry_the_token_and_hide_it() {
        let creds = Credentials::for_record(&record("tok-123"), None, None).unwrap();
        assert!(!format!("{creds:?}").contains("tok-123"));
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_static("old"));
        headers.insert(DPOP_HEADER, HeaderValue::from_static("stale-proof"));
        creds.apply(&mut headers);
        let value = headers.get(AUTHORIZATION).unwrap();
        assert_eq!(value, "Bearer tok-123");
        assert!(value.is_sensitive());
        assert!(headers.get(DPOP_HEADER).is_none());
        assert!(!format!("{headers:?}").contains("tok-123"));
        assert_eq!(
            Credentials::for_record(&record("bad\ntoken"), None, None).unwrap_err(),
            CredentialError::NotAHeaderValue
        );
        let mut lower = record("tok-789");
        lower.token_type = "bearer".into();
        assert!(Credentials::for_record(&lower, None, None).is_ok());
    }

    fn proof_request(url: &str, nonce: Option<&str>) -> ProofRequest {
        let url = url::Url::parse(url).unwrap();
        let origin = Origin::parse(url.as_str()).unwrap();
        ProofRequest {
            method: Method::POST,
            url,
            origin,
            nonce: nonce.map(str::to_owned),
        }
    }

    fn claims(proof: &HeaderValue) -> serde_json::Value {
        use base64::Engine as _;
        let payload = proof.to_str().unwrap().split('.').nth(1).unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn dpop_tokens_go_with_a_proof_and_never_as_bearer() {
        let key = DpopKey::generate_es256().unwrap();
        let mut bound = record("tok-456");
        bound.token_type = "DPoP".into();
        // No key, or no request to sign for: refused, not sent as bearer.
        let request = proof_request("https://api.example.com/orders?page=2#top", Some("n-1"));
        assert_eq!(
            Credentials::for_record(&bound, None, Some(&request)).unwrap_err(),
            CredentialError::ProofRequired
        );
        assert_eq!(
            Credentials::for_record(&bound, Some(&key), None).unwrap_err(),
            CredentialError::ProofRequired
        );
        let creds = Credentials::for_record(&bound, Some(&key), Some(&request)).unwrap();
        let mut headers = HeaderMap::new();
        creds.apply(&mut headers);
        assert_eq!(headers.get(AUTHORIZATION).unwrap(), "DPoP tok-456");
        let proof = headers.get(DPOP_HEADER).unwrap();
        assert!(proof.is_sensitive());
        assert!(!format!("{creds:?}").contains("tok-456"));
        let first = claims(proof);
        assert_eq!(first["htm"], "POST");
        assert_eq!(first["htu"], "https://api.example.com/orders");
        assert_eq!(first["nonce"], "n-1");
        assert_eq!(first["ath"], crate::dpop::access_token_hash("tok-456"));
        // Every proof has an id of its own.
        let again = Credentials::for_record(&bound, Some(&key), Some(&request)).unwrap();
        assert_ne!(claims(again.proof.as_ref().unwrap())["jti"], first["jti"]);
    }

    #[test]
    fn nonces_and_their_challenges() {
        assert!(is_nonce("eyJ7S_zG.eyJH0-Z.HX4w-7v"));
        for bad in ["", "a b", "a\"b", "a\\b", "\u{e9}"] {
            assert!(!is_nonce(bad), "{bad:?}");
        }
        assert!(!is_nonce(&"n".repeat(MAX_NONCE_LEN + 1)));
        let mut headers = HeaderMap::new();
        headers.insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"DPoP error="use_dpop_nonce", error_description="x""#),
        );
        assert!(challenge_asks_for_nonce(&headers));
        // A nonce request is not a refusal of the token.
        assert!(!challenge_refuses_token(&headers));
        let p = policy();
        assert!(retry(&p, 401, &[r#"DPoP error="invalid_token""#]));
        assert!(retry(&p, 401, &[r#"DPoP algs="ES256 EdDSA""#]));
        assert!(!retry(&p, 401, &[r#"DPoP error="invalid_dpop_proof""#]));
        let mut bearer = HeaderMap::new();
        bearer.insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer error="use_dpop_nonce""#),
        );
        assert!(!challenge_asks_for_nonce(&bearer));
    }

    #[test]
    fn policies_from_lists() {
        let p = AttachPolicy::for_origins(["https://a.example", "http://127.0.0.1:1"]).unwrap();
        assert_eq!(place(&p, "http://127.0.0.1:1/x"), Placement::Attach);
        assert_eq!(place(&p, "https://a.example/"), Placement::Attach);
        assert_eq!(
            AttachPolicy::for_origins(Vec::<String>::new()).unwrap_err(),
            OriginError::NoOrigin
        );
        assert_eq!(
            AttachPolicy::for_origins(["https://a.example", "http://b.example"]).unwrap_err(),
            OriginError::PlainHttp
        );
    }

    #[test]
    fn challenge_reading_never_panics() {
        for text in [
            "",
            ",",
            "=",
            "\"",
            "Bearer =",
            "Bearer error=",
            "Bearer error=\"",
            "Bearer error=\"\\",
            "a b c d",
            "Bearer abc==, error=\"invalid_token\"",
            "é",
            "Bearer\terror=x",
        ] {
            let _ = challenges(text);
        }
        assert_eq!(
            challenges(r#"Basic realm="r", Bearer error="invalid_token""#),
            vec![
                Challenge {
                    scheme: "Basic",
                    error: None
                },
                Challenge {
                    scheme: "Bearer",
                    error: Some("invalid_token".into())
                },
            ]
        );
        assert_eq!(
            challenges("Negotiate abc123==, Bearer"),
            vec![
                Challenge {
                    scheme: "Negotiate",
                    error: None
                },
                Challenge {
                    scheme: "Bearer",
                    error: None
                },
            ]
        );
    }
}
