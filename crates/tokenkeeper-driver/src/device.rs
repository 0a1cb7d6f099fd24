//! Device login (the device authorization grant, RFC 8628) for people at a
//! terminal: [`TokenWatcherBuilder::device_login`].
//!
//! The login is a method of the same builder a watcher or a one-shot
//! [`get_token`](TokenWatcherBuilder::get_token) is started from: it asks
//! the device authorization endpoint for codes, shows them to the person
//! through a callback, polls the token endpoint as the core's
//! [`DevicePoll`] says (its interval, `slow_down`, the codes' expiry), and
//! writes the token it gets, refresh token included, to the builder's cache
//! layers under the builder's cache key. A watcher or `get_token` built the
//! same way afterwards finds that record and refreshes with its refresh
//! token: no person needed until the authority ends the session.
//!
//! No timing arithmetic happens here: the driver sleeps as long as the core
//! says and sends what it builds.

use std::sync::Arc;
use std::time::Duration;

use tokenkeeper_core::cache::encode_record;
use tokenkeeper_core::oauth2::device::{DevicePoll, PollOutcome, PollStep};
use tokenkeeper_core::oauth2::discovery::{Issuer, Lookup, LookupStep, Metadata};
use tokenkeeper_core::oauth2::{GrantType, TokenRequest, TokenUrl};
use tokenkeeper_core::{CacheProblem, FetchError, Timestamp, TokenRecord};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::assertion::Assertions;
use crate::builder::{LoginParts, TokenWatcherBuilder};
use crate::error::SpawnError;
use crate::http::{HttpAnswer, SharedExchange};
use crate::oneshot::Warning;
use crate::runtime::{Runtime, Waited, wait};
use crate::shared::now;

/// Where the device authorization endpoint is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeviceEndpoint {
    /// This URL.
    Url(TokenUrl),
    /// The `device_authorization_endpoint` of the issuer's metadata, for a
    /// client made from an issuer
    /// ([`OAuth2Client::from_issuer`](tokenkeeper_core::oauth2::OAuth2Client::from_issuer),
    /// [`with_issuer`](tokenkeeper_core::oauth2::OAuth2Client::with_issuer)).
    FromMetadata,
}

impl From<TokenUrl> for DeviceEndpoint {
    fn from(url: TokenUrl) -> Self {
        DeviceEndpoint::Url(url)
    }
}

/// What the person must be shown to approve the login: the code, and where
/// to enter it. Handed to the callback of
/// [`TokenWatcherBuilder::device_login`]. Holds no secret (the device code
/// stays inside the login).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DevicePrompt {
    /// The code the person enters (printable text: the core refuses an
    /// answer with control characters in it).
    pub user_code: String,
    /// Where to enter it.
    pub verification_uri: String,
    /// The verification URI with the code in it, when the authority gives
    /// one: show this one when it is there (a link, a QR code).
    pub verification_uri_complete: Option<String>,
    /// How long the codes are valid.
    pub expires_in: Duration,
    /// When the codes expire (wall clock).
    pub expires_at: Timestamp,
}

impl DevicePrompt {
    /// The address to show: the complete form when there is one.
    pub fn uri_to_show(&self) -> &str {
        self.verification_uri_complete
            .as_deref()
            .unwrap_or(&self.verification_uri)
    }
}

/// What a device login obtained.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeviceLogin {
    /// The token, as stored in the cache layers. Its `refresh_token` is
    /// what later runs refresh with; `None` when the authority issued none
    /// (ask for the scope it wants, often `offline_access`).
    pub token: Arc<TokenRecord>,
    /// How many token requests polled for the person's answer.
    pub polls: u32,
    /// The interval between polls at the end (grown by each `slow_down`).
    pub interval: Duration,
    /// Cache layers that could not be written ([`Warning::Cache`]): later
    /// runs will not find the token there.
    pub warnings: Vec<Warning>,
}

/// Why a device login ended without a token.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceLoginError {
    /// The person refused (`access_denied`).
    #[error("the sign-in was refused (access_denied)")]
    Denied,
    /// The codes expired before the person approved (`expired_token`, or
    /// their lifetime ran out): start a new login.
    #[error("the sign-in code expired before it was approved: start again")]
    Expired,
    /// The authority refused for good (`invalid_client`,
    /// `unauthorized_client`, `unsupported_grant_type`, a `4xx`, ...).
    #[error("{0}")]
    Rejected(FetchError),
    /// An endpoint is misconfigured: its TLS certificate cannot be
    /// verified, or the URL is not the endpoint it should be.
    #[error("{0}")]
    Misconfigured(FetchError),
    /// The device authorization endpoint could not be reached, or its
    /// answer was unusable.
    #[error("no sign-in code from the device authorization endpoint: {}", endpoint_problem(.0))]
    Unavailable(FetchError),
    /// The device authorization URL answered as no such endpoint does
    /// (`404`, `405`, a redirect, a web page): the URL is wrong.
    #[error(
        "the device authorization URL is not a device authorization endpoint: it answered {}; check the URL (device_authorization_endpoint in the issuer's metadata)",
        not_an_endpoint(.0)
    )]
    NotADeviceEndpoint(FetchError),
    /// The builder cannot log in this way: its source is not a refresh-token
    /// OAuth2 client (the grant later runs refresh with), or it asks for
    /// DPoP-bound tokens, which device login does not support.
    #[error("device login is not possible here: {0}")]
    Unsupported(String),
    /// The builder could not be set up (the HTTP client, a client
    /// assertion, the cache folder, the runtime): see [`SpawnError`].
    #[error(transparent)]
    Start(SpawnError),
}

/// What went wrong at the device authorization endpoint, in its own terms
/// (the core's texts name the token endpoint, whose reader they share).
fn endpoint_problem(error: &FetchError) -> String {
    match error {
        FetchError::InvalidBody { status, reason } => {
            format!("an unusable answer (HTTP {status}): {reason}")
        }
        FetchError::BodyTooLarge { limit } => format!("its answer exceeded {limit} bytes"),
        other => other.to_string(),
    }
}

fn not_an_endpoint(error: &FetchError) -> String {
    match error {
        FetchError::NotATokenEndpoint { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

impl DeviceLoginError {
    /// A failure of the device authorization request.
    fn at_endpoint(error: FetchError) -> Self {
        match error {
            FetchError::NotATokenEndpoint { .. } => DeviceLoginError::NotADeviceEndpoint(error),
            FetchError::InvalidBody { .. } | FetchError::BodyTooLarge { .. } => {
                DeviceLoginError::Unavailable(error)
            }
            other => DeviceLoginError::refused(other),
        }
    }

    /// A refusal, classed as the refresher classes it.
    fn refused(error: FetchError) -> Self {
        if error.is_misconfiguration() {
            DeviceLoginError::Misconfigured(error)
        } else if error.is_permanent() {
            DeviceLoginError::Rejected(error)
        } else {
            DeviceLoginError::Unavailable(error)
        }
    }
}

/// A callback that shows the person the codes.
type Present = Box<dyn FnOnce(&DevicePrompt) + Send>;

impl<R: Runtime> TokenWatcherBuilder<R> {
    /// Logs a person in with the device authorization grant (RFC 8628) and
    /// stores the token, with its refresh token, in the builder's cache
    /// layers, where a watcher or [`get_token`](Self::get_token) built the
    /// same way finds it and refreshes it without the person.
    ///
    /// The builder's source must be an
    /// [`OAuth2Client::refresh_token`](tokenkeeper_core::oauth2::OAuth2Client::refresh_token) client (public, or with a secret, or
    /// authenticating with an assertion): the grant later runs use, and so
    /// the cache key they read. `endpoint` is the authority's device
    /// authorization endpoint (`device_authorization_endpoint` in its
    /// metadata), or [`DeviceEndpoint::FromMetadata`] for a client made from
    /// an issuer. The login:
    ///
    /// 0. for a client made from an issuer, fetches the issuer's metadata
    ///    (the token endpoint, and the device authorization endpoint when
    ///    asked for), checked against the issuer as a watcher checks it;
    /// 1. asks `endpoint` for codes (with the client's scope, audience,
    ///    resources and extra parameters, authenticated as its token
    ///    requests are); a failure ends the login
    ///    ([`DeviceLoginError::Unavailable`], `Rejected` or `Misconfigured`);
    /// 2. calls `present` once with the [`DevicePrompt`]: show the person
    ///    the user code and the URI;
    /// 3. polls the token endpoint at the authority's interval (default
    ///    5 s), 5 s slower after each `slow_down`, longer after failures
    ///    that are not answers, until the person approves, refuses
    ///    ([`DeviceLoginError::Denied`]) or the codes expire
    ///    ([`DeviceLoginError::Expired`]);
    /// 4. writes the token to every cache layer (a layer that fails is a
    ///    [`Warning::Cache`] of the [`DeviceLogin`]) and returns it.
    ///
    /// The device code never appears in a log, an error or `Debug`.
    ///
    /// ```no_run
    /// use tokenkeeper_core::ClientId;
    /// use tokenkeeper_core::oauth2::{OAuth2Client, TokenUrl};
    /// use tokenkeeper_driver::{Runtime, TokenWatcherBuilder};
    ///
    /// fn login<R: Runtime>(runtime: R) -> Result<(), Box<dyn std::error::Error>> {
    ///     let client =
    ///         OAuth2Client::refresh_token("https://auth.example/token", ClientId::new("cli"), None)?
    ///             .scope("offline_access");
    ///     let endpoint = TokenUrl::parse("https://auth.example/device", false)?;
    ///     // A future on an async runtime, the result itself on threads.
    ///     let _login = TokenWatcherBuilder::new(runtime, client)
    ///         .default_file_cache()
    ///         .device_login(endpoint, |prompt| {
    ///             eprintln!("Open {} and enter {}", prompt.uri_to_show(), prompt.user_code);
    ///         });
    ///     Ok(())
    /// }
    /// ```
    pub fn device_login(
        self,
        endpoint: impl Into<DeviceEndpoint>,
        present: impl FnOnce(&DevicePrompt) + Send + 'static,
    ) -> Waited<'static, R, Result<DeviceLogin, DeviceLoginError>> {
        let present: Present = Box::new(present);
        let endpoint = endpoint.into();
        // Started when first polled, where the runtime can be bound.
        wait::<R, _>(async move {
            let parts = self.login_parts().map_err(DeviceLoginError::Start)?;
            let span = info_span!(
                "tokenkeeper.device",
                key = %parts.config.cache_key(),
                name = parts.name.as_deref().unwrap_or_default(),
            );
            login(parts, endpoint, present).instrument(span).await
        })
    }
}

/// The login, once the builder is taken apart.
async fn login<R: Runtime>(
    parts: LoginParts<R>,
    endpoint: DeviceEndpoint,
    present: Present,
) -> Result<DeviceLogin, DeviceLoginError> {
    let LoginParts {
        runtime,
        source,
        config,
        layers,
        http,
        dpop,
        name: _,
    } = parts;
    let mut client = config.oauth2_client().cloned().ok_or_else(|| {
        DeviceLoginError::Unsupported("the source is not an OAuth2 client".into())
    })?;
    if client.grant() != GrantType::RefreshToken {
        return Err(DeviceLoginError::Unsupported(format!(
            "the client uses the {} grant; device login stores a refresh token for a refresh_token client (OAuth2Client::refresh_token), which later runs refresh with",
            client.grant().as_str()
        )));
    }
    if dpop {
        return Err(DeviceLoginError::Unsupported(
            "DPoP-bound tokens are not supported by device login".into(),
        ));
    }
    let exchange = runtime
        .exchange(&http)
        .map_err(|e| DeviceLoginError::Start(SpawnError::Http(e)))?;
    let unauthenticated = Assertions::default();
    // 0. The endpoints, for a client made from an issuer.
    if let Some(issuer) = client.issuer().cloned()
        && client.metadata().is_none()
    {
        let send = Sender {
            runtime: &runtime,
            exchange: &exchange,
            assertions: &unauthenticated,
            limit: client.body_limit(),
        };
        let metadata = discover(&send, &issuer)
            .await
            .map_err(DeviceLoginError::refused)?;
        client = client
            .with_metadata(metadata)
            .map_err(|e| DeviceLoginError::Unsupported(e.to_string()))?;
    }
    let endpoint = match endpoint {
        DeviceEndpoint::Url(url) => url,
        DeviceEndpoint::FromMetadata => client
            .metadata()
            .and_then(|m| m.device_authorization_endpoint())
            .cloned()
            .ok_or_else(|| {
                DeviceLoginError::Unsupported(if client.issuer().is_some() {
                    "the issuer's metadata names no device_authorization_endpoint: give the endpoint's URL".to_owned()
                } else {
                    "DeviceEndpoint::FromMetadata needs a client made from an issuer: give the endpoint's URL".to_owned()
                })
            })?,
    };
    let assertions = source
        .1
        .for_client(&client)
        .map_err(|e| DeviceLoginError::Start(SpawnError::Assertion { error: e.into() }))?;
    let send = Sender {
        runtime: &runtime,
        exchange: &exchange,
        assertions: &assertions,
        limit: client.body_limit(),
    };

    // 1. The codes.
    let request = client
        .device_authorization_request(&endpoint)
        .map_err(DeviceLoginError::refused)?;
    debug!(endpoint = %endpoint, "asking for a device code");
    let answer = send
        .send(request)
        .await
        .map_err(DeviceLoginError::at_endpoint)?;
    let authorization = client
        .read_device_authorization(answer.status, &answer.headers, &answer.body, now().wall)
        .map_err(DeviceLoginError::at_endpoint)?;
    let prompt = DevicePrompt {
        user_code: authorization.user_code.clone(),
        verification_uri: authorization.verification_uri.clone(),
        verification_uri_complete: authorization.verification_uri_complete.clone(),
        expires_in: authorization.expires_in,
        expires_at: authorization.expires_at,
    };
    info!(
        verification_uri = %prompt.verification_uri,
        expires_in_s = prompt.expires_in.as_secs(),
        interval_s = authorization.interval.as_secs(),
        "waiting for the person to approve the sign-in"
    );
    let mut poll = DevicePoll::new(authorization, now().mono);
    present(&prompt);

    // 2. Polls, as the core says.
    let grant = loop {
        match poll.next(now().mono) {
            PollStep::Wait(duration) => runtime.sleep(duration).await,
            PollStep::Send => {
                let request = poll.request(&client).map_err(DeviceLoginError::refused)?;
                let outcome = match send.send(request).await {
                    Ok(answer) => poll.handle_response(
                        &client,
                        answer.status,
                        &answer.headers,
                        &answer.body,
                        now(),
                    ),
                    Err(error) => poll.handle_failure(error, now()),
                };
                match outcome {
                    PollOutcome::Granted(grant) => break grant,
                    PollOutcome::Pending => {
                        debug!(polls = poll.polls(), "not approved yet");
                    }
                    PollOutcome::SlowDown { interval } => {
                        debug!(
                            polls = poll.polls(),
                            interval_s = interval.as_secs(),
                            "the authority asked to slow down"
                        );
                    }
                    PollOutcome::Retry { error, after } => {
                        warn!(%error, retry_in_ms = after.as_millis() as u64, "polling failed; trying again");
                    }
                    PollOutcome::Denied => {
                        info!(polls = poll.polls(), "the sign-in was refused");
                        return Err(DeviceLoginError::Denied);
                    }
                    PollOutcome::Expired => {
                        info!(polls = poll.polls(), "the sign-in code expired");
                        return Err(DeviceLoginError::Expired);
                    }
                    PollOutcome::Failed(error) => {
                        warn!(%error, "the authority refused the device code");
                        return Err(DeviceLoginError::refused(error));
                    }
                    other => {
                        warn!(outcome = ?other, "an unknown poll outcome; stopping");
                        return Err(DeviceLoginError::Expired);
                    }
                }
            }
            PollStep::Expired => {
                info!(polls = poll.polls(), "the sign-in code expired");
                return Err(DeviceLoginError::Expired);
            }
            _ => return Err(DeviceLoginError::Expired),
        }
    };

    // 3. The record, where later runs read it.
    let record = config.policy().record(grant, now().wall, None);
    if record.refresh_token.is_none() {
        warn!("the authority issued no refresh token: later runs will need another sign-in");
    }
    let key = config.cache_key();
    let encoded = encode_record(key, &record);
    let mut warnings = Vec::new();
    for layer in &layers {
        let name = layer.layer().name().to_owned();
        match layer.write(&runtime, &encoded).await {
            Ok(()) => debug!(layer = %name, "stored the signed-in token"),
            Err(error) => {
                warn!(layer = %name, %error, "could not store the signed-in token");
                warnings.push(Warning::Cache {
                    layer: name,
                    problem: CacheProblem::Write(error),
                });
            }
        }
    }
    info!(
        polls = poll.polls(),
        token = %record.access_token.fingerprint(),
        refresh_token = ?record.refresh_token.as_ref().map(|t| t.fingerprint()),
        "signed in"
    );
    Ok(DeviceLogin {
        token: Arc::new(record),
        polls: poll.polls(),
        interval: poll.interval(),
        warnings,
    })
}

/// Fetches the issuer's metadata as the core's [`Lookup`] says (its
/// locations, in its order, by the refresher's own rule).
async fn discover<R: Runtime>(
    send: &Sender<'_, R>,
    issuer: &Issuer,
) -> Result<Metadata, FetchError> {
    let mut lookup = Lookup::new(issuer.clone());
    loop {
        let request = lookup.request()?;
        debug!(url = %issuer.as_str(), "fetching the issuer's metadata");
        let step = match send.send(request).await {
            Ok(answer) => {
                lookup.handle_response(answer.status, &answer.body, send.limit, now().wall)
            }
            Err(error) => lookup.handle_failure(error),
        };
        match step {
            LookupStep::Found(metadata) => return Ok(metadata),
            LookupStep::TryNext => continue,
            LookupStep::Failed(error) => return Err(error),
            _ => {
                return Err(FetchError::Transport {
                    message: "an unknown step of the metadata lookup".into(),
                });
            }
        }
    }
}

/// Sends the login's requests: assertions completed (off the async task),
/// then the runtime's exchange.
struct Sender<'a, R> {
    runtime: &'a R,
    exchange: &'a SharedExchange,
    assertions: &'a Assertions,
    limit: usize,
}

impl<R: Runtime> Sender<'_, R> {
    async fn send(&self, request: TokenRequest) -> Result<HttpAnswer, FetchError> {
        let (request, pending) = self.assertions.take(request, self.runtime);
        let request = pending.complete(request).await?;
        self.exchange.send(request, self.limit).await
    }
}
