//! A driver for an event loop of your own, written from `docs/embedding.md`
//! alone: the core's `Refresher`, a hand-written loop, a file cache with its
//! cross-process lease answered at once, token requests sent with ureq on a
//! worker thread and answered on a later turn of the loop, and a shutdown
//! drained to the end.
//!
//! ```sh
//! cargo run --example embedding   # against a loopback test authority
//! ```
//!
//! `tests/embedding.rs` runs [`run`] against the test authority.

use std::error::Error;
use std::path::Path;
use std::sync::OnceLock;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use tokenkeeper_core::oauth2::OAuth2Client;
use tokenkeeper_core::{
    ClientId, ClientSecret, Effect, Event, FetchError, Input, Jitter, Monotonic, Now, Refresher,
    RefresherConfig,
};
use tokenkeeper_fs::{FileCache, FileLayer};

/// The longest the loop sleeps before it looks at the clock again.
const WAKE_AT_LEAST_EVERY: Duration = Duration::from_secs(60);

/// Both clocks, as the core reads time: the wall clock for facts shared
/// with others (a cached record's expiry), a monotonic reading for the
/// refresher's own schedule (it survives a wall clock that steps).
fn now() -> Now {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    Now::new(
        SystemTime::now().into(),
        Monotonic::from_elapsed(start.elapsed()),
    )
}

/// What the driver did.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// The access tokens published, in order.
    pub(crate) tokens: Vec<String>,
    /// Token requests sent.
    pub(crate) requests: usize,
    /// Whether the refresher finished (shutdown drained).
    pub(crate) finished: bool,
}

/// Keeps a token fresh until `tokens_wanted` tokens were published, then
/// shuts down. Tokens are cached in `cache` (with its lock file as the lease).
pub(crate) fn run(
    token_url: &str,
    client_id: &str,
    client_secret: &str,
    cache: &Path,
    tokens_wanted: usize,
) -> Result<Outcome, Box<dyn Error>> {
    // 1. The machine: a source, its cache layers, a seed of our own.
    let client = OAuth2Client::client_credentials(
        token_url,
        ClientId::new(client_id),
        ClientSecret::new(client_secret),
    )?;
    let file = FileLayer::new(FileCache::new(cache));
    let config = RefresherConfig::oauth2(client)
        .layer(FileLayer::core_layer())
        .jitter(Jitter::none());
    let mut refresher = Refresher::new(config, fastrand::u64(..), now());

    // 2. The loop's inbox: answers that arrive later come through here.
    let (answers, inbox) = mpsc::channel::<Input>();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false) // every status goes to the refresher
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();

    let mut outcome = Outcome {
        tokens: Vec::new(),
        requests: 0,
        finished: false,
    };
    loop {
        // 3. Carry out every effect the machine asks for.
        while let Some(effect) = refresher.poll_effect() {
            match effect {
                // Cache calls are quick: answered at once.
                Effect::ReadCache { id, .. } => {
                    let result = file.read();
                    refresher.handle(now(), Input::CacheRead { id, result })?;
                }
                Effect::WriteCache { id, record, .. } => {
                    let result = file.write(&record);
                    refresher.handle(now(), Input::CacheWritten { id, result })?;
                }
                Effect::AcquireLease { id, .. } => {
                    let outcome = file.try_acquire();
                    refresher.handle(now(), Input::Lease { id, outcome })?;
                }
                Effect::ReleaseLease { .. } => file.release(),
                // A request takes a while: sent from a worker thread, and
                // answered on a later turn of the loop.
                Effect::SendRequest {
                    id,
                    request,
                    max_body,
                } => {
                    outcome.requests += 1;
                    let (agent, answers) = (agent.clone(), answers.clone());
                    thread::spawn(move || {
                        let input = match send(&agent, request.into_http(), max_body) {
                            Ok((status, headers, body)) => Input::Response {
                                id,
                                status,
                                headers,
                                body,
                            },
                            Err(error) => Input::FetchFailed { id, error },
                        };
                        // The loop may be gone already; the answer is then moot.
                        let _ = answers.send(input);
                    });
                }
                // Effects this driver has no use for (a custom source's
                // `Fetch`, future kinds): it never configured them.
                other => return Err(format!("unexpected effect {other:?}").into()),
            }
        }
        // 4. Publish what happened.
        while let Some(event) = refresher.poll_event() {
            match event {
                Event::TokenChanged { token, origin } => {
                    println!(
                        "token {} from {origin:?}, fresh until {}, expires {}",
                        token.access_token.fingerprint(),
                        token.stale,
                        token.expiry
                    );
                    outcome
                        .tokens
                        .push(token.access_token.expose_secret().to_owned());
                    if outcome.tokens.len() >= tokens_wanted {
                        // Leases are released through the effects drained
                        // next turn; a refresh-token request in flight would
                        // be let finish first.
                        refresher.shutdown(now());
                    }
                }
                Event::FetchFailed {
                    error, retry_at, ..
                } => {
                    println!("fetch failed ({error}); retrying at {retry_at}");
                }
                other => println!("{other:?}"),
            }
        }
        // 5. Wait as the machine says, for an answer or until its deadline,
        //    measured on the monotonic clock; `None`: finished.
        let Some(sleep) = refresher.poll_sleep(now()) else {
            break;
        };
        let sleep = sleep.min(WAKE_AT_LEAST_EVERY);
        match inbox.recv_timeout(sleep) {
            Ok(answer) => refresher.handle(now(), answer)?,
            Err(RecvTimeoutError::Timeout) => refresher.handle(now(), Input::Timeout)?,
            Err(RecvTimeoutError::Disconnected) => unreachable!("the loop holds a sender"),
        }
    }
    outcome.finished = refresher.is_finished();
    Ok(outcome)
}

/// One HTTP exchange: status, headers and at most `max_body` bytes of body.
fn send(
    agent: &ureq::Agent,
    request: http::Request<Vec<u8>>,
    max_body: usize,
) -> Result<(u16, http::HeaderMap, Vec<u8>), FetchError> {
    let transport = |e: ureq::Error| FetchError::Transport {
        message: e.to_string(),
    };
    let mut response = agent.run(request).map_err(transport)?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .body_mut()
        .with_config()
        .limit(max_body as u64)
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => FetchError::BodyTooLarge { limit: max_body },
            other => transport(other),
        })?;
    Ok((status, headers, body))
}

#[allow(dead_code)]
fn main() -> Result<(), Box<dyn Error>> {
    let authority = tokenkeeper_testkit::Authority::start();
    authority.register_client(
        tokenkeeper_testkit::Client::new("embedded", "s3cret")
            .token_lifetime(Duration::from_secs(4)),
    );
    let dir = tempfile::tempdir()?;
    let outcome = run(
        &authority.token_url(),
        "embedded",
        "s3cret",
        &dir.path().join("token.json"),
        3,
    )?;
    println!(
        "{} tokens, {} requests, finished: {}",
        outcome.tokens.len(),
        outcome.requests,
        outcome.finished
    );
    Ok(())
}
