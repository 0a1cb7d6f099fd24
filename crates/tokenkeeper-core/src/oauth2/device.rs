//! The device authorization grant (RFC 8628), for people at a terminal: what
//! to ask the device authorization endpoint, how to read its answer, and a
//! small state machine that says when to poll the token endpoint and what
//! each answer means. Pure: every input carries `now`.
//!
//! The flow: the client sends [`OAuth2Client::device_authorization_request`]
//! and reads the answer with [`OAuth2Client::read_device_authorization`]; it
//! shows the person the [`user_code`](DeviceAuthorization::user_code) and
//! where to enter it ([`verification_uri`](DeviceAuthorization::verification_uri),
//! or the complete form that carries the code); then a [`DevicePoll`] says
//! when each token request is due ([`DevicePoll::next`]), builds it
//! ([`DevicePoll::request`]) and reads its answer
//! ([`DevicePoll::handle_response`]) until the person approves (a token,
//! normally with a refresh token), denies, or lets the code expire.
//!
//! The `device_code` is a credential ([`DeviceCode`]): it is never shown by
//! `Debug`, `Display` or an error.
//!
//! ```
//! use std::time::Duration;
//! use http::HeaderMap;
//! use tokenkeeper_core::oauth2::device::{DevicePoll, PollOutcome, PollStep};
//! use tokenkeeper_core::oauth2::{OAuth2Client, TokenUrl};
//! use tokenkeeper_core::{ClientId, Monotonic, Now, Timestamp};
//!
//! let client = OAuth2Client::refresh_token("https://auth.example/token", ClientId::new("cli"), None)?
//!     .scope("offline_access");
//! let endpoint = TokenUrl::parse("https://auth.example/device", false)?;
//! let ask = client.device_authorization_request(&endpoint)?;
//! assert_eq!(ask.as_http().uri(), "https://auth.example/device");
//!
//! let wall = Timestamp::from_secs(1_700_000_000);
//! let answer = br#"{"device_code":"dc-1","user_code":"WDJB-MJHT",
//!     "verification_uri":"https://auth.example/activate","expires_in":600}"#;
//! let authorization = client.read_device_authorization(200, &HeaderMap::new(), answer, wall)?;
//! assert_eq!(authorization.user_code, "WDJB-MJHT");
//!
//! let mut poll = DevicePoll::new(authorization, Monotonic::from_millis(0));
//! // The first poll waits the default interval, 5 s.
//! assert_eq!(poll.next(Monotonic::from_millis(0)), PollStep::Wait(Duration::from_secs(5)));
//! assert_eq!(poll.next(Monotonic::from_millis(5_000)), PollStep::Send);
//! let _request = poll.request(&client)?;
//! let pending = br#"{"error":"authorization_pending"}"#;
//! let now = Now::new(wall, Monotonic::from_millis(5_100));
//! let outcome = poll.handle_response(&client, 400, &HeaderMap::new(), pending, now);
//! assert_eq!(outcome, PollOutcome::Pending);
//! assert_eq!(poll.next(now.mono), PollStep::Wait(Duration::from_secs(5)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::time::Duration;

use http::HeaderMap;
use serde_json::{Map, Value};
use url::form_urlencoded;

use super::request::{append_parameters, authenticated};
use super::response::{read_object, seconds_field};
use super::{OAuth2Client, TokenRequest, TokenUrl};
use crate::clock::{Monotonic, Now};
use crate::error::{ErrorClass, FetchError};
use crate::text::escape_capped;
use crate::time::Timestamp;
use crate::token::TokenGrant;

pub use crate::secret::DeviceCode;

/// The `grant_type` of the token requests that poll for the person's
/// approval (RFC 8628 §3.4).
pub const DEVICE_CODE_GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// How long to wait between polls when the authority does not say (RFC 8628
/// §3.2).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// How much each `slow_down` answer adds to the interval, for that poll and
/// every later one (RFC 8628 §3.5).
pub const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);

/// The shortest interval used, whatever the authority says: an interval of
/// zero would poll in a tight loop.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// The longest wait after failures that are not answers (the authority
/// unreachable, a `5xx`): the wait doubles from the interval up to this.
pub const MAX_FAILURE_WAIT: Duration = Duration::from_secs(60);

/// The most characters of a user code or verification URI accepted: they
/// are shown to a person, and a longer one is not something to type.
const MAX_SHOWN_CHARS: usize = 2_048;

/// What the device authorization endpoint granted (RFC 8628 §3.2): a code
/// for the person to enter, where to enter it, and the device code the
/// client polls with. Its `Debug` shows the device code as a fingerprint.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceAuthorization {
    /// The code the client polls with: a credential, never shown.
    pub device_code: DeviceCode,
    /// The code the person enters at the verification URI. Printable text:
    /// an answer with control characters in it is refused.
    pub user_code: String,
    /// Where the person enters the user code (an `https` or `http` URL; the
    /// `verification_url` of some older authorities is accepted too).
    pub verification_uri: String,
    /// The verification URI with the user code in it, when the authority
    /// gives one (a link or QR code needs no typing).
    pub verification_uri_complete: Option<String>,
    /// How long the codes are valid, from the answer.
    pub expires_in: Duration,
    /// The wall time the codes expire, from the answer's arrival.
    pub expires_at: Timestamp,
    /// The wait between polls: the authority's, at least [`MIN_INTERVAL`],
    /// or [`DEFAULT_INTERVAL`].
    pub interval: Duration,
}

impl fmt::Debug for DeviceAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceAuthorization")
            .field("device_code", &self.device_code)
            .field("user_code", &self.user_code)
            .field("verification_uri", &self.verification_uri)
            .field("verification_uri_complete", &self.verification_uri_complete)
            .field("expires_in", &self.expires_in)
            .field("expires_at", &self.expires_at)
            .field("interval", &self.interval)
            .finish()
    }
}

impl OAuth2Client {
    /// The device authorization request (RFC 8628 §3.1) to `endpoint`: a
    /// form `POST` with the client's scope, audience, resources and extra
    /// parameters, authenticated the way the client's token requests are
    /// (a public client sends its `client_id`).
    pub fn device_authorization_request(
        &self,
        endpoint: &TokenUrl,
    ) -> Result<TokenRequest, FetchError> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        append_parameters(self, &mut form);
        authenticated(self, form, endpoint.as_str())
    }

    /// The token request that polls with `device_code` (RFC 8628 §3.4),
    /// authenticated as the client's token requests are. [`DevicePoll::request`]
    /// builds it with the code it holds.
    pub fn device_token_request(
        &self,
        device_code: &DeviceCode,
    ) -> Result<TokenRequest, FetchError> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", DEVICE_CODE_GRANT_TYPE);
        form.append_pair("device_code", device_code.expose_secret());
        authenticated(self, form, self.token_url.as_str())
    }

    /// The credentials this client sends, to be kept out of error text that
    /// quotes a request.
    fn credentials(&self) -> Vec<&str> {
        self.client_secret
            .iter()
            .map(|secret| secret.expose_secret())
            .collect()
    }

    /// Reads the device authorization endpoint's answer, received at `now`
    /// (wall time). Error answers become the same typed errors as the token
    /// endpoint's (an OAuth2 error, an error status, a page, a body over the
    /// client's [`max_body_bytes`](Self::max_body_bytes)); a success without
    /// a `device_code`, `user_code`, `verification_uri` or `expires_in`, or
    /// with a value that cannot be right, is [`FetchError::InvalidBody`]
    /// saying which field (never its value).
    pub fn read_device_authorization(
        &self,
        status: u16,
        headers: &HeaderMap,
        body: &[u8],
        now: Timestamp,
    ) -> Result<DeviceAuthorization, FetchError> {
        let map = read_object(status, headers, body, now, self.max_body_bytes)
            .map_err(|e| e.without_values(&self.credentials()))?;
        let bad = |reason: String| FetchError::InvalidBody { status, reason };
        let device_code = match map.get("device_code") {
            Some(Value::String(code)) if !code.is_empty() => DeviceCode::new(code.as_str()),
            Some(_) => return Err(bad("`device_code` is not a non-empty string".into())),
            None => return Err(bad("`device_code` is missing".into())),
        };
        let user_code = shown_text(&map, "user_code", status)?
            .ok_or_else(|| bad("`user_code` is missing".into()))?;
        let verification_uri = match shown_url(&map, "verification_uri", status)? {
            Some(uri) => uri,
            None => shown_url(&map, "verification_url", status)?
                .ok_or_else(|| bad("`verification_uri` is missing".into()))?,
        };
        let verification_uri_complete = shown_url(&map, "verification_uri_complete", status)?;
        let expires_in = seconds_field(&map, "expires_in", status)?
            .ok_or_else(|| bad("`expires_in` is missing".into()))?;
        if expires_in.is_zero() {
            return Err(bad("`expires_in` is zero: the codes are expired".into()));
        }
        let interval = seconds_field(&map, "interval", status)?
            .unwrap_or(DEFAULT_INTERVAL)
            .max(MIN_INTERVAL);
        Ok(DeviceAuthorization {
            device_code,
            user_code,
            verification_uri,
            verification_uri_complete,
            expires_in,
            expires_at: now.saturating_add(expires_in),
            interval,
        })
    }
}

/// A string field shown to a person: printable, and not absurdly long.
fn shown_text(
    map: &Map<String, Value>,
    name: &str,
    status: u16,
) -> Result<Option<String>, FetchError> {
    let bad = |why: &str| FetchError::InvalidBody {
        status,
        reason: format!("`{name}` {why}"),
    };
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => {
            if text.trim().is_empty() {
                Err(bad("is empty"))
            } else if text.chars().count() > MAX_SHOWN_CHARS {
                Err(bad("is too long to show"))
            } else if escape_capped(text, MAX_SHOWN_CHARS) != *text {
                // Control or invisible formatting characters: printed on a
                // terminal, they could rewrite what the person sees.
                Err(bad("holds control characters"))
            } else {
                Ok(Some(text.clone()))
            }
        }
        Some(_) => Err(bad("is not a string")),
    }
}

/// A URL field shown to a person: printable, `https` or `http`.
fn shown_url(
    map: &Map<String, Value>,
    name: &str,
    status: u16,
) -> Result<Option<String>, FetchError> {
    let Some(text) = shown_text(map, name, status)? else {
        return Ok(None);
    };
    match url::Url::parse(&text) {
        Ok(url) if matches!(url.scheme(), "https" | "http") && url.has_host() => Ok(Some(text)),
        _ => Err(FetchError::InvalidBody {
            status,
            reason: format!("`{name}` is not an http(s) URL"),
        }),
    }
}

/// What to do next, as [`DevicePoll::next`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PollStep {
    /// Send the next token request now ([`DevicePoll::request`]).
    Send,
    /// Wait this long, then ask again.
    Wait(Duration),
    /// The codes have expired: the person did not approve in time. Stop.
    Expired,
    /// The flow has ended ([`PollOutcome::is_final`]): nothing more to send.
    Finished,
}

/// What a poll's answer means ([`DevicePoll::handle_response`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PollOutcome {
    /// The person approved: the token (with a refresh token when the
    /// authority issues one), read by the client's token response reader.
    /// Final.
    Granted(TokenGrant),
    /// `authorization_pending`: the person has not answered yet; poll again
    /// after the interval.
    Pending,
    /// `slow_down`: the interval grew by [`SLOW_DOWN_STEP`], to this, for
    /// this poll and every later one.
    SlowDown {
        /// The interval from now on.
        interval: Duration,
    },
    /// `access_denied`: the person refused. Final.
    Denied,
    /// `expired_token`, or the codes' lifetime ran out: the person did not
    /// approve in time; a new login must start over. Final.
    Expired,
    /// The request failed in a way that may pass (the authority unreachable,
    /// a `5xx`, a malformed answer): the next poll waits longer (the
    /// interval doubled per failure in a row, up to [`MAX_FAILURE_WAIT`],
    /// and never before a `Retry-After`).
    Retry {
        /// What went wrong.
        error: FetchError,
        /// How long until the next poll.
        after: Duration,
    },
    /// The authority refused for good (`invalid_client`, `invalid_grant`,
    /// `unauthorized_client`, another `4xx`, ...). Final.
    Failed(FetchError),
}

impl PollOutcome {
    /// Whether the flow has ended with this outcome.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            PollOutcome::Granted(_)
                | PollOutcome::Denied
                | PollOutcome::Expired
                | PollOutcome::Failed(_)
        )
    }
}

/// The polling half of the device flow: holds the device code, the interval
/// (grown by each `slow_down`), the codes' expiry and when the next poll is
/// due, on the monotonic clock the driver passes in.
///
/// The driver loops: [`next`](Self::next) says send, wait or stop;
/// [`request`](Self::request) builds the poll; the answer goes to
/// [`handle_response`](Self::handle_response) (or a failure to send to
/// [`handle_failure`](Self::handle_failure)), which says what it means and
/// schedules the next poll. Its `Debug` shows the device code as a
/// fingerprint.
#[derive(Clone)]
pub struct DevicePoll {
    device_code: DeviceCode,
    interval: Duration,
    expires_at: Monotonic,
    next_at: Monotonic,
    failures: u32,
    polls: u32,
    finished: bool,
}

impl fmt::Debug for DevicePoll {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevicePoll")
            .field("device_code", &self.device_code)
            .field("interval", &self.interval)
            .field("expires_at", &self.expires_at)
            .field("next_at", &self.next_at)
            .field("failures", &self.failures)
            .field("polls", &self.polls)
            .field("finished", &self.finished)
            .finish()
    }
}

fn after(at: Monotonic, wait: Duration) -> Monotonic {
    Monotonic::from_millis(
        at.as_millis()
            .saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)),
    )
}

impl DevicePoll {
    /// Starts polling for `authorization`, received at `now`: the first poll
    /// is due one interval later, and the codes expire `expires_in` after
    /// `now`.
    pub fn new(authorization: DeviceAuthorization, now: Monotonic) -> Self {
        DevicePoll {
            device_code: authorization.device_code,
            interval: authorization.interval.max(MIN_INTERVAL),
            expires_at: after(now, authorization.expires_in),
            next_at: after(now, authorization.interval.max(MIN_INTERVAL)),
            failures: 0,
            polls: 0,
            finished: false,
        }
    }

    /// What to do at `now`: send the poll, wait, or stop (the codes expired,
    /// or the flow ended). A wait never runs past the codes' expiry.
    pub fn next(&self, now: Monotonic) -> PollStep {
        if self.finished {
            PollStep::Finished
        } else if now >= self.expires_at {
            PollStep::Expired
        } else if now >= self.next_at {
            PollStep::Send
        } else {
            let until = self.next_at.min(self.expires_at);
            PollStep::Wait(Duration::from_millis(
                until.as_millis().saturating_sub(now.as_millis()),
            ))
        }
    }

    /// The token request of the next poll ([`OAuth2Client::device_token_request`]
    /// with the device code held here); counts it.
    pub fn request(&mut self, client: &OAuth2Client) -> Result<TokenRequest, FetchError> {
        self.polls = self.polls.saturating_add(1);
        client.device_token_request(&self.device_code)
    }

    /// The interval between polls now.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// How many polls were built so far.
    pub fn polls(&self) -> u32 {
        self.polls
    }

    /// When the codes expire, on the monotonic clock.
    pub fn expires_at(&self) -> Monotonic {
        self.expires_at
    }

    /// Reads a poll's answer with the client's token response reader, and
    /// schedules the next poll. `now` is when the answer arrived.
    pub fn handle_response(
        &mut self,
        client: &OAuth2Client,
        status: u16,
        headers: &HeaderMap,
        body: &[u8],
        now: Now,
    ) -> PollOutcome {
        match client.read_response(status, headers, body, now.wall) {
            Ok(grant) => {
                self.finished = true;
                PollOutcome::Granted(grant)
            }
            Err(error) => self.handle_failure(error.without_values(&client.credentials()), now),
        }
    }

    /// What a failed poll means (an error answer, or no answer at all), and
    /// when the next one is due. An error that quotes the device code (an
    /// `error_description` echoing the request, say) has it replaced by
    /// `<redacted>`, as [`handle_response`](Self::handle_response) does the
    /// client's credentials too.
    pub fn handle_failure(&mut self, error: FetchError, now: Now) -> PollOutcome {
        let error = error.without_values(&[self.device_code.expose_secret()]);
        let code = error.oauth_error().map(|e| e.error.as_str());
        let outcome = match code {
            Some("authorization_pending") => {
                self.failures = 0;
                self.next_at = after(now.mono, self.interval);
                PollOutcome::Pending
            }
            Some("slow_down") => {
                self.failures = 0;
                self.interval = self.interval.saturating_add(SLOW_DOWN_STEP);
                self.next_at = after(now.mono, self.interval);
                PollOutcome::SlowDown {
                    interval: self.interval,
                }
            }
            Some("access_denied") => PollOutcome::Denied,
            Some("expired_token") => PollOutcome::Expired,
            _ if error.class() == ErrorClass::Transient => {
                self.failures = self.failures.saturating_add(1);
                let mut wait = failure_wait(self.interval, self.failures);
                if let Some(retry_after) = error.retry_after() {
                    wait = wait.max(retry_after.duration_since(now.wall));
                }
                self.next_at = after(now.mono, wait);
                PollOutcome::Retry { error, after: wait }
            }
            _ => PollOutcome::Failed(error),
        };
        if outcome.is_final() {
            self.finished = true;
        } else if now.mono >= self.expires_at {
            self.finished = true;
            return PollOutcome::Expired;
        }
        outcome
    }
}

/// The wait after `failures` failures in a row that were not answers: the
/// interval doubled per failure, at most [`MAX_FAILURE_WAIT`] (and never
/// less than the interval, which the authority asked for).
pub fn failure_wait(interval: Duration, failures: u32) -> Duration {
    let doubled = interval.saturating_mul(1u32 << failures.min(16));
    doubled.min(MAX_FAILURE_WAIT).max(interval)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::{ClientId, ClientSecret};
    use proptest::prelude::*;

    const WALL: Timestamp = Timestamp::from_secs(1_700_000_000);

    fn client() -> OAuth2Client {
        OAuth2Client::refresh_token(
            "https://auth.example/token",
            ClientId::new("cli"),
            Some(ClientSecret::new("cli-secret")),
        )
        .unwrap()
        .scope("openid offline_access")
    }

    fn at(ms: u64) -> Now {
        Now::new(
            WALL.saturating_add(Duration::from_millis(ms)),
            Monotonic::from_millis(ms),
        )
    }

    fn authorization(body: &str) -> Result<DeviceAuthorization, FetchError> {
        client().read_device_authorization(200, &HeaderMap::new(), body.as_bytes(), WALL)
    }

    const GOOD: &str = r#"{"device_code":"dc-secret-42","user_code":"WDJB-MJHT",
        "verification_uri":"https://auth.example/device",
        "verification_uri_complete":"https://auth.example/device?user_code=WDJB-MJHT",
        "expires_in":1800,"interval":2}"#;

    fn form(request: &TokenRequest) -> Vec<(String, String)> {
        form_urlencoded::parse(request.as_http().body())
            .into_owned()
            .collect()
    }

    #[test]
    fn the_authorization_request_authenticates_like_token_requests() {
        let endpoint = TokenUrl::parse("https://auth.example/device", false).unwrap();
        let request = client().device_authorization_request(&endpoint).unwrap();
        let http = request.as_http();
        assert_eq!(http.uri(), "https://auth.example/device");
        assert_eq!(http.method(), http::Method::POST);
        assert!(
            http.headers()[http::header::AUTHORIZATION]
                .to_str()
                .unwrap()
                .starts_with("Basic ")
        );
        assert_eq!(
            form(&request),
            vec![("scope".to_owned(), "openid offline_access".to_owned())]
        );
        // A public client names itself.
        let public =
            OAuth2Client::refresh_token("https://auth.example/token", ClientId::new("tv"), None)
                .unwrap();
        let request = public.device_authorization_request(&endpoint).unwrap();
        assert_eq!(form(&request), vec![("client_id".into(), "tv".into())]);
        // An assertion-authenticated client gets a template to complete.
        let jwt = client().auth_method(super::super::AuthMethod::ClientSecretJwt);
        assert!(
            jwt.device_authorization_request(&endpoint)
                .unwrap()
                .client_assertion()
                .is_some()
        );
    }

    #[test]
    fn the_poll_request_carries_the_grant_and_code_and_hides_them() {
        let mut poll = DevicePoll::new(authorization(GOOD).unwrap(), Monotonic::from_millis(0));
        let request = poll.request(&client()).unwrap();
        assert_eq!(request.as_http().uri(), "https://auth.example/token");
        assert_eq!(
            form(&request),
            vec![
                ("grant_type".into(), DEVICE_CODE_GRANT_TYPE.into()),
                ("device_code".into(), "dc-secret-42".into()),
            ]
        );
        assert_eq!(poll.polls(), 1);
        for shown in [
            format!("{request:?}"),
            format!("{poll:?}"),
            format!("{:?}", authorization(GOOD).unwrap()),
        ] {
            assert!(!shown.contains("dc-secret-42"), "{shown}");
        }
    }

    #[test]
    fn a_good_answer_is_read() {
        let a = authorization(GOOD).unwrap();
        assert_eq!(a.device_code.expose_secret(), "dc-secret-42");
        assert_eq!(a.user_code, "WDJB-MJHT");
        assert_eq!(a.verification_uri, "https://auth.example/device");
        assert_eq!(
            a.verification_uri_complete.as_deref(),
            Some("https://auth.example/device?user_code=WDJB-MJHT")
        );
        assert_eq!(a.expires_in, Duration::from_secs(1800));
        assert_eq!(a.expires_at, WALL.saturating_add(Duration::from_secs(1800)));
        assert_eq!(a.interval, Duration::from_secs(2));
        // No interval: 5 s; zero: the floor; numeric strings; the older name.
        let a = authorization(
            r#"{"device_code":"d","user_code":"U","verification_url":"https://x.example/","expires_in":"60"}"#,
        )
        .unwrap();
        assert_eq!(a.interval, DEFAULT_INTERVAL);
        assert_eq!(a.verification_uri, "https://x.example/");
        let a = authorization(
            r#"{"device_code":"d","user_code":"U","verification_uri":"https://x.example/","expires_in":60,"interval":0}"#,
        )
        .unwrap();
        assert_eq!(a.interval, MIN_INTERVAL);
    }

    #[test]
    fn bad_answers_are_typed_errors_that_name_the_field() {
        for (body, says) in [
            (
                r#"{"user_code":"U","verification_uri":"https://x/","expires_in":60}"#,
                "`device_code` is missing",
            ),
            (
                r#"{"device_code":7,"user_code":"U","verification_uri":"https://x/","expires_in":60}"#,
                "`device_code` is not",
            ),
            (
                r#"{"device_code":"dc-secret-42","verification_uri":"https://x/","expires_in":60}"#,
                "`user_code` is missing",
            ),
            (
                r#"{"device_code":"dc-secret-42","user_code":"","verification_uri":"https://x/","expires_in":60}"#,
                "`user_code` is empty",
            ),
            (
                r#"{"device_code":"dc-secret-42","user_code":"A\u001b[2JB","verification_uri":"https://x/","expires_in":60}"#,
                "control characters",
            ),
            (
                r#"{"device_code":"dc-secret-42","user_code":"U","expires_in":60}"#,
                "`verification_uri` is missing",
            ),
            (
                r#"{"device_code":"dc-secret-42","user_code":"U","verification_uri":"javascript:alert(1)","expires_in":60}"#,
                "not an http(s) URL",
            ),
            (
                r#"{"device_code":"dc-secret-42","user_code":"U","verification_uri":"https://x/","verification_uri_complete":3,"expires_in":60}"#,
                "`verification_uri_complete` is not a string",
            ),
            (
                r#"{"device_code":"dc-secret-42","user_code":"U","verification_uri":"https://x/"}"#,
                "`expires_in` is missing",
            ),
            (
                r#"{"device_code":"dc-secret-42","user_code":"U","verification_uri":"https://x/","expires_in":0}"#,
                "`expires_in` is zero",
            ),
            (
                r#"{"device_code":"dc-secret-42","user_code":"U","verification_uri":"https://x/","expires_in":60,"interval":"soon"}"#,
                "`interval`",
            ),
            ("[]", "not an object"),
            ("", "empty"),
        ] {
            let error = authorization(body).unwrap_err();
            let text = error.to_string();
            assert!(
                matches!(error, FetchError::InvalidBody { .. }),
                "{body}: {error:?}"
            );
            assert!(text.contains(says), "{body}: {text}");
            assert!(!text.contains("dc-secret-42"), "{text}");
        }
        // Error answers read as the token endpoint's do.
        let refused = client()
            .read_device_authorization(
                401,
                &HeaderMap::new(),
                br#"{"error":"invalid_client"}"#,
                WALL,
            )
            .unwrap_err();
        assert!(refused.is_permanent(), "{refused:?}");
        let page = client()
            .read_device_authorization(404, &HeaderMap::new(), b"<html>nope</html>", WALL)
            .unwrap_err();
        assert!(
            matches!(page, FetchError::NotATokenEndpoint { .. }),
            "{page:?}"
        );
        let big = client()
            .max_body_bytes(64)
            .read_device_authorization(200, &HeaderMap::new(), GOOD.as_bytes(), WALL)
            .unwrap_err();
        assert_eq!(big, FetchError::BodyTooLarge { limit: 64 });
    }

    fn answer(poll: &mut DevicePoll, status: u16, body: &str, now: Now) -> PollOutcome {
        poll.handle_response(&client(), status, &HeaderMap::new(), body.as_bytes(), now)
    }

    #[test]
    fn pending_slow_down_and_approval() {
        let mut poll = DevicePoll::new(authorization(GOOD).unwrap(), Monotonic::from_millis(0));
        assert_eq!(
            poll.next(Monotonic::from_millis(0)),
            PollStep::Wait(Duration::from_secs(2))
        );
        assert_eq!(
            poll.next(Monotonic::from_millis(1_999)),
            PollStep::Wait(Duration::from_millis(1))
        );
        assert_eq!(poll.next(Monotonic::from_millis(2_000)), PollStep::Send);
        let pending = r#"{"error":"authorization_pending"}"#;
        let slow = r#"{"error":"slow_down"}"#;
        assert_eq!(
            answer(&mut poll, 400, pending, at(2_100)),
            PollOutcome::Pending
        );
        assert_eq!(
            poll.next(Monotonic::from_millis(2_100)),
            PollStep::Wait(Duration::from_secs(2))
        );
        assert_eq!(
            answer(&mut poll, 400, slow, at(4_200)),
            PollOutcome::SlowDown {
                interval: Duration::from_secs(7)
            }
        );
        assert_eq!(
            poll.next(Monotonic::from_millis(4_200)),
            PollStep::Wait(Duration::from_secs(7))
        );
        // It stays grown for every later poll.
        assert_eq!(
            answer(&mut poll, 400, pending, at(11_300)),
            PollOutcome::Pending
        );
        assert_eq!(poll.interval(), Duration::from_secs(7));
        assert_eq!(
            poll.next(Monotonic::from_millis(11_300)),
            PollStep::Wait(Duration::from_secs(7))
        );
        let ok = r#"{"access_token":"at-1","token_type":"Bearer","expires_in":60,"refresh_token":"rt-1"}"#;
        match answer(&mut poll, 200, ok, at(18_400)) {
            PollOutcome::Granted(grant) => {
                assert_eq!(grant.access_token.expose_secret(), "at-1");
                assert_eq!(grant.refresh_token.unwrap().expose_secret(), "rt-1");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            poll.next(Monotonic::from_millis(18_400)),
            PollStep::Finished
        );
    }

    #[test]
    fn denial_expiry_and_refusals_end_the_flow() {
        for (status, body, expected) in [
            (400, r#"{"error":"access_denied"}"#, "denied"),
            (400, r#"{"error":"expired_token"}"#, "expired"),
            (401, r#"{"error":"invalid_client"}"#, "failed"),
            (400, r#"{"error":"invalid_grant"}"#, "failed"),
            (400, r#"{"error":"unsupported_grant_type"}"#, "failed"),
        ] {
            let mut poll = DevicePoll::new(authorization(GOOD).unwrap(), Monotonic::from_millis(0));
            let outcome = answer(&mut poll, status, body, at(2_000));
            let got = match &outcome {
                PollOutcome::Denied => "denied",
                PollOutcome::Expired => "expired",
                PollOutcome::Failed(e) => {
                    assert!(e.is_permanent());
                    "failed"
                }
                other => panic!("{body}: {other:?}"),
            };
            assert_eq!(got, expected, "{body}");
            assert!(outcome.is_final());
            assert_eq!(poll.next(Monotonic::from_millis(2_000)), PollStep::Finished);
        }
        // The codes' lifetime running out ends it without an answer.
        let poll = DevicePoll::new(authorization(GOOD).unwrap(), Monotonic::from_millis(0));
        assert_eq!(
            poll.next(Monotonic::from_millis(1_800_000)),
            PollStep::Expired
        );
        // A wait never runs past the expiry.
        let short = authorization(
            r#"{"device_code":"d","user_code":"U","verification_uri":"https://x/","expires_in":3,"interval":5}"#,
        )
        .unwrap();
        let poll = DevicePoll::new(short, Monotonic::from_millis(0));
        assert_eq!(
            poll.next(Monotonic::from_millis(0)),
            PollStep::Wait(Duration::from_secs(3))
        );
        // A pending answer that arrives after the expiry is an expiry.
        let mut poll = DevicePoll::new(authorization(GOOD).unwrap(), Monotonic::from_millis(0));
        assert_eq!(
            answer(
                &mut poll,
                400,
                r#"{"error":"authorization_pending"}"#,
                at(1_800_001)
            ),
            PollOutcome::Expired
        );
    }

    #[test]
    fn failures_that_are_not_answers_back_off_and_honour_retry_after() {
        let mut poll = DevicePoll::new(authorization(GOOD).unwrap(), Monotonic::from_millis(0));
        let down = FetchError::Transport {
            message: "refused".into(),
        };
        let waits: Vec<Duration> = (0..8)
            .map(|i| match poll.handle_failure(down.clone(), at(2_000 + i)) {
                PollOutcome::Retry { after, .. } => after,
                other => panic!("{other:?}"),
            })
            .collect();
        let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [4, 8, 16, 32, 60, 60, 60, 60]);
        // An answer resets the doubling.
        assert_eq!(
            answer(
                &mut poll,
                400,
                r#"{"error":"authorization_pending"}"#,
                at(3_000)
            ),
            PollOutcome::Pending
        );
        match answer(&mut poll, 503, "", at(5_000)) {
            PollOutcome::Retry { after, error } => {
                assert_eq!(after, Duration::from_secs(4));
                assert!(!error.is_permanent());
            }
            other => panic!("{other:?}"),
        }
        let mut headers = HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, "30".parse().unwrap());
        match poll.handle_response(&client(), 429, &headers, b"", at(6_000)) {
            PollOutcome::Retry { after, .. } => assert_eq!(after, Duration::from_secs(30)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_quoting_the_device_code_or_secret_do_not_show_them() {
        let mut poll = DevicePoll::new(authorization(GOOD).unwrap(), Monotonic::from_millis(0));
        let echo = r#"{"error":"invalid_grant","error_description":"bad device_code dc-secret-42 for cli-secret"}"#;
        let outcome = answer(&mut poll, 400, echo, at(2_000));
        let shown = format!("{outcome:?}");
        assert!(
            !shown.contains("dc-secret-42") && !shown.contains("cli-secret"),
            "{shown}"
        );
        assert!(shown.contains("<redacted>"), "{shown}");
        let error = client()
            .read_device_authorization(
                400,
                &HeaderMap::new(),
                br#"{"error":"invalid_request","error_description":"echo cli-secret"}"#,
                WALL,
            )
            .unwrap_err();
        assert!(!error.to_string().contains("cli-secret"), "{error}");
    }

    proptest! {
        /// Whatever the answers, the interval only grows, by exactly 5 s per
        /// `slow_down`, and no poll is ever due sooner than one interval
        /// after the last answer (nor before the first interval).
        #[test]
        fn the_interval_arithmetic_holds(
            initial in 0u64..30,
            answers in proptest::collection::vec(0u8..4, 0..40),
        ) {
            let body = format!(
                r#"{{"device_code":"d","user_code":"U","verification_uri":"https://x/","expires_in":100000,"interval":{initial}}}"#
            );
            let first = authorization(&body).unwrap();
            let start = first.interval;
            prop_assert_eq!(start, Duration::from_secs(initial).max(MIN_INTERVAL));
            let mut poll = DevicePoll::new(first, Monotonic::from_millis(0));
            prop_assert_eq!(poll.next(Monotonic::from_millis(0)), PollStep::Wait(start));
            let mut now_ms = start.as_millis() as u64;
            let mut slow_downs = 0u32;
            for kind in answers {
                prop_assert_eq!(poll.next(Monotonic::from_millis(now_ms)), PollStep::Send);
                let before = poll.interval();
                let outcome = match kind {
                    0 => answer(&mut poll, 400, r#"{"error":"authorization_pending"}"#, at(now_ms)),
                    1 => answer(&mut poll, 400, r#"{"error":"slow_down"}"#, at(now_ms)),
                    2 => answer(&mut poll, 502, "", at(now_ms)),
                    _ => poll.handle_failure(FetchError::Timeout { after: Duration::from_secs(1) }, at(now_ms)),
                };
                if kind == 1 {
                    slow_downs += 1;
                    prop_assert_eq!(poll.interval(), before + SLOW_DOWN_STEP);
                } else {
                    prop_assert_eq!(poll.interval(), before);
                }
                prop_assert_eq!(poll.interval(), start + SLOW_DOWN_STEP * slow_downs);
                let wait = match (kind, &outcome) {
                    (0, PollOutcome::Pending) => poll.interval(),
                    (1, PollOutcome::SlowDown { interval }) => *interval,
                    (_, PollOutcome::Retry { after, .. }) => *after,
                    (_, other) => return Err(TestCaseError::fail(format!("{other:?}"))),
                };
                prop_assert!(wait >= poll.interval());
                prop_assert!(wait <= MAX_FAILURE_WAIT.max(poll.interval()));
                prop_assert_eq!(poll.next(Monotonic::from_millis(now_ms)), PollStep::Wait(wait));
                let almost = now_ms + wait.as_millis() as u64 - 1;
                prop_assert!(matches!(poll.next(Monotonic::from_millis(almost)), PollStep::Wait(_)));
                now_ms += wait.as_millis() as u64;
            }
        }
    }
}
