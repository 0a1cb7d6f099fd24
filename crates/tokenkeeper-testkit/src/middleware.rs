//! The scenarios every token-attaching middleware runs (tower, reqwest, ureq), written once:
//! a real [`Authority`], a real [`ResourceServer`] that accepts only the tokens the authority
//! considers active, and the client under test, over HTTP on loopback.
//!
//! A middleware crate implements [`MiddlewareAdapter`] (build a watcher and a client with the
//! middleware installed, send a request) and expands [`middleware_tests!`](crate::middleware_tests)
//! in a test file: one `#[test]` per scenario.
//!
//! What is checked, for every client:
//!
//! - the current token goes on a request to an allowed origin, and nothing else happens;
//! - after a revocation the next request is refused once, one token request follows, and the
//!   retried request succeeds with the new token;
//! - a request body that can be replayed arrives intact on the retry (or, for a client that
//!   cannot replay bodies, the `401` comes back with no retry);
//! - 100 requests refused together cause exactly one token request, and all succeed;
//! - a request whose body cannot be replayed gets the `401` back, with no retry;
//! - a request to a host that is not allowed carries no token;
//! - plain `http` to a host that is not loopback carries no token, even when that host is
//!   allowed over `https`;
//! - a `403` is not retried and asks for no token;
//! - a request with its own `Authorization` header is sent as it is, and its `401` comes back;
//! - with DPoP (a watcher holding DPoP-bound tokens, [`ClientSpec::dpop`]): the token goes as
//!   `Authorization: DPoP` with a proof the server verifies (`htm`, `htu`, `ath`, `iat`, `jti`,
//!   the token bound to the proof's key); the server's nonce requirement costs one retry and
//!   later requests carry the nonce; no two proofs share an id; a revoked DPoP token makes one
//!   token request and a retry with a new proof; a DPoP-bound token never goes as `Bearer`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokenkeeper_core::oauth2::OAuth2Client;
use tokenkeeper_core::{ClientId, ClientSecret};

use crate::authority::dpop::{DpopError, access_token_hash};
use crate::authority::{Authority, Client};
use crate::resource::{ResourceRequest, ResourceServer};

const CLIENT_ID: &str = "middleware-client";
const CLIENT_SECRET: &str = "middleware-secret-8d1e";

/// The host name under which the resource server is reached over plain `http` although it is
/// not loopback by name: clients resolve it to the server's loopback address.
pub const REMOTE_NAME: &str = "api.example.test";

/// A second loopback name for the resource server, not on the allow list: clients resolve it
/// to the server's loopback address.
pub const OTHER_LOOPBACK_NAME: &str = "other.localhost";

/// How many requests the burst scenario sends at once.
pub const BURST: usize = 100;

/// What an adapter needs to build its client.
#[derive(Clone)]
#[non_exhaustive]
pub struct ClientSpec {
    /// The OAuth2 client the watcher runs (client credentials at the test authority).
    pub client: OAuth2Client,
    /// The origins the middleware may send tokens to: the first for
    /// `AttachPolicy::for_origin`, the others for `allow_origin`.
    pub allowed_origins: Vec<String>,
    /// Host names the client must resolve to these addresses (and only these) instead of
    /// asking the system: how the scenarios reach the loopback server under other names.
    pub resolve: Vec<(String, SocketAddr)>,
    /// A bound on each request, so that a broken middleware fails a test instead of hanging it.
    pub request_timeout: Duration,
    /// Whether the watcher holds DPoP-bound tokens: the adapter builds it with
    /// `.dpop(key)` for a new key (the authority requires DPoP of this client).
    pub dpop: bool,
}

/// A request body, as a scenario wants it sent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Payload {
    /// No body.
    Empty,
    /// A body the client can replay (bytes it holds: a `Full` body, a `reqwest::Body` from
    /// bytes, ...).
    Replayable(Vec<u8>),
    /// A body the client cannot replay (a stream or a reader), holding these bytes.
    OneShot(Vec<u8>),
}

/// A request for the client under test.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Outgoing {
    /// `GET` or `POST`.
    pub method: &'static str,
    /// The absolute URL.
    pub url: String,
    /// The body.
    pub payload: Payload,
    /// An `Authorization` header the caller sets itself.
    pub authorization: Option<String>,
}

impl Outgoing {
    /// A `GET` of `url`.
    pub fn get(url: impl Into<String>) -> Outgoing {
        Outgoing {
            method: "GET",
            url: url.into(),
            payload: Payload::Empty,
            authorization: None,
        }
    }

    /// A `POST` of `payload` to `url`.
    pub fn post(url: impl Into<String>, payload: Payload) -> Outgoing {
        Outgoing {
            method: "POST",
            url: url.into(),
            payload,
            authorization: None,
        }
    }

    /// With an `Authorization` header of the caller's own.
    pub fn authorization(mut self, value: impl Into<String>) -> Outgoing {
        self.authorization = Some(value.into());
        self
    }
}

/// The answer the client under test handed back.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Answer {
    /// The status.
    pub status: u16,
    /// The `WWW-Authenticate` header, if any.
    pub www_authenticate: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

impl Answer {
    /// An answer.
    pub fn new(status: u16, www_authenticate: Option<String>, body: Vec<u8>) -> Answer {
        Answer {
            status,
            www_authenticate,
            body,
        }
    }
}

/// A client with the middleware installed, over a running watcher.
pub trait MiddlewareClient: Send + Sync + 'static {
    /// Sends a request and waits for the answer. `Err` for a failure that is not an HTTP
    /// answer (a transport error, a timeout, a middleware error).
    fn send(&self, request: Outgoing) -> Result<Answer, String>;

    /// Sends the requests all at once and waits for every answer, in order. The default sends
    /// each from a thread of its own.
    fn send_all(&self, requests: Vec<Outgoing>) -> Vec<Result<Answer, String>> {
        std::thread::scope(|scope| {
            let handles: Vec<_> = requests
                .into_iter()
                .map(|request| scope.spawn(move || self.send(request)))
                .collect();
            handles
                .into_iter()
                .map(|handle| {
                    handle
                        .join()
                        .unwrap_or_else(|_| Err("the sending thread panicked".to_owned()))
                })
                .collect()
        })
    }

    /// The access token the watcher holds now.
    fn current_token(&self) -> Option<String>;

    /// Stops the watcher.
    fn shutdown(self);
}

/// A middleware under test.
pub trait MiddlewareAdapter: 'static {
    /// Its name, for messages.
    const NAME: &'static str;
    /// Whether it replays a request with a body it holds ([`Payload::Replayable`]). When not,
    /// such a request is expected to get its `401` back, like [`Payload::OneShot`].
    const REPLAYS_BODIES: bool;
    /// Its client.
    type Client: MiddlewareClient;
    /// Starts a watcher for `spec.client` (returning once it holds a token) and a client with
    /// the middleware installed.
    fn client(spec: ClientSpec) -> Self::Client;
}

/// A running authority with the scenarios' client registered, and a resource server that
/// checks its tokens.
pub struct Fixture {
    /// The authority.
    pub authority: Arc<Authority>,
    /// The resource server.
    pub api: ResourceServer,
    /// Whether the client must use DPoP.
    dpop: bool,
}

impl Fixture {
    /// Starts both servers.
    pub fn start() -> Fixture {
        Fixture::with_client(Client::new(CLIENT_ID, CLIENT_SECRET))
    }

    /// Starts both servers, with a client that must use DPoP (its tokens are DPoP-bound); its
    /// [`spec`](Self::spec) asks for a watcher with a DPoP key.
    pub fn start_dpop() -> Fixture {
        Fixture::with_client(Client::new(CLIENT_ID, CLIENT_SECRET).require_dpop(true))
    }

    fn with_client(client: Client) -> Fixture {
        let authority = Arc::new(Authority::start());
        let dpop = client.requires_dpop();
        authority.register_client(client);
        let api = ResourceServer::start(&authority);
        Fixture {
            authority,
            api,
            dpop,
        }
    }

    /// The spec of a client allowed to send tokens to the resource server's loopback address
    /// (and to `https://api.example.test:PORT`), resolving [`REMOTE_NAME`] and
    /// [`OTHER_LOOPBACK_NAME`] to it.
    pub fn spec(&self) -> ClientSpec {
        let client = OAuth2Client::client_credentials(
            self.authority.token_url(),
            ClientId::new(CLIENT_ID),
            ClientSecret::new(CLIENT_SECRET),
        )
        .unwrap_or_else(|error| panic!("the test token URL is valid: {error}"));
        ClientSpec {
            client,
            allowed_origins: vec![
                self.api.base_url(),
                self.api.url_as("https", REMOTE_NAME, ""),
            ],
            resolve: vec![
                (REMOTE_NAME.to_owned(), self.api.addr()),
                (OTHER_LOOPBACK_NAME.to_owned(), self.api.addr()),
            ],
            request_timeout: Duration::from_secs(30),
            dpop: self.dpop,
        }
    }

    /// The number of token requests the authority received.
    pub fn token_requests(&self) -> usize {
        self.authority.count_by_grant("client_credentials")
    }
}

fn answer(adapter: &str, result: Result<Answer, String>) -> Answer {
    result.unwrap_or_else(|error| panic!("{adapter}: the request failed: {error}"))
}

/// Starts the fixture and a client, and sends one request so that a token is in use.
fn started<A: MiddlewareAdapter>() -> (Fixture, A::Client, String) {
    started_with::<A>(Fixture::start())
}

/// [`started`] with a client that holds DPoP-bound tokens.
fn started_dpop<A: MiddlewareAdapter>() -> (Fixture, A::Client, String) {
    started_with::<A>(Fixture::start_dpop())
}

fn started_with<A: MiddlewareAdapter>(fixture: Fixture) -> (Fixture, A::Client, String) {
    let client = A::client(fixture.spec());
    let token = client
        .current_token()
        .unwrap_or_else(|| panic!("{}: the watcher holds no token after spawn", A::NAME));
    (fixture, client, token)
}

/// The current token goes on a request to an allowed origin, and nothing else happens.
pub fn attaches_the_current_token<A: MiddlewareAdapter>() {
    let (fixture, client, token) = started::<A>();
    let before = fixture.token_requests();
    let got = answer(
        A::NAME,
        client.send(Outgoing::get(fixture.api.url("/orders"))),
    );
    assert_eq!(got.status, 200, "{}: {got:?}", A::NAME);
    let log = fixture.api.requests();
    assert_eq!(log.len(), 1, "{}: {log:?}", A::NAME);
    assert_eq!(log[0].bearer_token(), Some(token.as_str()), "{}", A::NAME);
    assert_eq!(log[0].path, "/orders");
    assert_eq!(fixture.token_requests(), before, "{}", A::NAME);
    client.shutdown();
}

/// After a revocation the next request is refused once, one token request follows, and the
/// retried request succeeds with the new token.
pub fn revoked_token_is_refused_once_then_retried<A: MiddlewareAdapter>() {
    let (fixture, client, old) = started::<A>();
    assert!(fixture.authority.revoke(&old));
    let before = fixture.token_requests();

    let got = answer(
        A::NAME,
        client.send(Outgoing::get(fixture.api.url("/orders"))),
    );
    assert_eq!(
        got.status,
        200,
        "{}: the retry did not succeed: {got:?}",
        A::NAME
    );
    assert_eq!(
        fixture.token_requests(),
        before + 1,
        "{}: one token request",
        A::NAME
    );
    let log = fixture.api.requests();
    assert_eq!(
        log.len(),
        2,
        "{}: refused once, then retried: {log:?}",
        A::NAME
    );
    assert_eq!(log[0].status, 401);
    assert_eq!(log[0].bearer_token(), Some(old.as_str()));
    assert_eq!(log[1].status, 200);
    let new = client.current_token().expect("a token");
    assert_ne!(new, old);
    assert_eq!(log[1].bearer_token(), Some(new.as_str()), "{}", A::NAME);

    // The next request uses the new token at once.
    let again = answer(
        A::NAME,
        client.send(Outgoing::get(fixture.api.url("/orders"))),
    );
    assert_eq!(again.status, 200);
    assert_eq!(fixture.api.request_count(), 3);
    assert_eq!(fixture.token_requests(), before + 1);
    client.shutdown();
}

/// A body the client holds arrives intact on the retry; a client that cannot replay bodies
/// hands back the `401` with no retry.
pub fn replayable_body_after_revocation<A: MiddlewareAdapter>() {
    let (fixture, client, old) = started::<A>();
    assert!(fixture.authority.revoke(&old));
    let body = b"{\"order\": 42, \"note\": \"sent twice, byte for byte\"}".to_vec();
    let got = answer(
        A::NAME,
        client.send(Outgoing::post(
            fixture.api.url("/orders"),
            Payload::Replayable(body.clone()),
        )),
    );
    let log = fixture.api.requests();
    if A::REPLAYS_BODIES {
        assert_eq!(got.status, 200, "{}: {got:?}", A::NAME);
        assert_eq!(got.body, body, "{}: the echo of the retried body", A::NAME);
        assert_eq!(log.len(), 2, "{}: {log:?}", A::NAME);
        assert_eq!(log[0].body, body);
        assert_eq!(log[1].body, body);
        assert_eq!(log[1].status, 200);
    } else {
        assert_eq!(got.status, 401, "{}: {got:?}", A::NAME);
        assert_eq!(log.len(), 1, "{}: no retry: {log:?}", A::NAME);
    }
    client.shutdown();
}

/// 100 requests refused together cause exactly one token request, and all succeed.
pub fn burst_of_refusals_makes_one_token_request<A: MiddlewareAdapter>() {
    let (fixture, client, old) = started::<A>();
    assert!(fixture.authority.revoke(&old));
    let before = fixture.token_requests();
    // The server holds the first 100 requests until all have arrived, so all are refused
    // together, before any new token exists.
    fixture.api.gather(BURST);
    let requests = (0..BURST)
        .map(|i| Outgoing::get(fixture.api.url(&format!("/burst/{i}"))))
        .collect();
    let answers = client.send_all(requests);
    for got in answers {
        let got = answer(A::NAME, got);
        assert_eq!(got.status, 200, "{}: {got:?}", A::NAME);
    }
    assert_eq!(
        fixture.token_requests(),
        before + 1,
        "{}: {BURST} refusals of one token make one token request",
        A::NAME
    );
    let log = fixture.api.requests();
    let refused = log.iter().filter(|r| r.status == 401).count();
    let served = log.iter().filter(|r| r.status == 200).count();
    assert_eq!(refused, BURST, "{}: all refused together", A::NAME);
    assert_eq!(served, BURST, "{}: each retried once", A::NAME);
    assert!(
        log.iter()
            .filter(|r| r.status == 401)
            .all(|r| r.bearer_token() == Some(old.as_str()))
    );
    let new = client.current_token().expect("a token");
    assert!(
        log.iter()
            .filter(|r| r.status == 200)
            .all(|r| r.bearer_token() == Some(new.as_str())),
        "{}: every retry carried the one new token",
        A::NAME
    );
    client.shutdown();
}

/// A request whose body cannot be replayed gets the `401` back, with no retry.
pub fn unreplayable_body_gets_the_401<A: MiddlewareAdapter>() {
    let (fixture, client, old) = started::<A>();
    assert!(fixture.authority.revoke(&old));
    let got = answer(
        A::NAME,
        client.send(Outgoing::post(
            fixture.api.url("/upload"),
            Payload::OneShot(b"streamed once".to_vec()),
        )),
    );
    assert_eq!(got.status, 401, "{}: {got:?}", A::NAME);
    let challenge = got.www_authenticate.unwrap_or_default();
    assert!(
        challenge.contains("invalid_token"),
        "{}: the 401 comes back unchanged: {challenge}",
        A::NAME
    );
    let log = fixture.api.requests();
    assert_eq!(log.len(), 1, "{}: no retry: {log:?}", A::NAME);
    assert_eq!(log[0].body, b"streamed once");
    client.shutdown();
}

/// A request to a host that is not on the allow list carries no token.
pub fn origin_not_allowed_gets_no_token<A: MiddlewareAdapter>() {
    let (fixture, client, _) = started::<A>();
    let before = fixture.token_requests();
    let url = fixture
        .api
        .url_as("http", OTHER_LOOPBACK_NAME, "/elsewhere");
    let got = answer(A::NAME, client.send(Outgoing::get(url)));
    assert_eq!(got.status, 401, "{}: {got:?}", A::NAME);
    let log = fixture.api.requests();
    assert_eq!(log.len(), 1, "{}: {log:?}", A::NAME);
    assert!(
        !log[0].had_authorization(),
        "{}: a token went to a host not allowed",
        A::NAME
    );
    assert!(
        log[0]
            .host
            .as_deref()
            .is_some_and(|h| h.starts_with(OTHER_LOOPBACK_NAME))
    );
    assert_eq!(fixture.token_requests(), before);
    client.shutdown();
}

/// Plain `http` to a host that is not loopback carries no token, even though that host is
/// allowed over `https`.
pub fn plain_http_to_remote_host_gets_no_token<A: MiddlewareAdapter>() {
    let (fixture, client, _) = started::<A>();
    let url = fixture.api.url_as("http", REMOTE_NAME, "/clear");
    let got = answer(A::NAME, client.send(Outgoing::get(url)));
    assert_eq!(got.status, 401, "{}: {got:?}", A::NAME);
    let log = fixture.api.requests();
    assert_eq!(log.len(), 1, "{}: {log:?}", A::NAME);
    assert!(
        !log[0].had_authorization(),
        "{}: a token went over plain http to {REMOTE_NAME}",
        A::NAME
    );
    assert!(
        log[0]
            .host
            .as_deref()
            .is_some_and(|h| h.starts_with(REMOTE_NAME)),
        "{}: the request went out under the remote name: {log:?}",
        A::NAME
    );
    client.shutdown();
}

/// A `403` is not retried and asks for no token.
pub fn forbidden_is_not_retried<A: MiddlewareAdapter>() {
    let (fixture, client, token) = started::<A>();
    let before = fixture.token_requests();
    fixture.api.forbid(true);
    let got = answer(
        A::NAME,
        client.send(Outgoing::get(fixture.api.url("/admin"))),
    );
    assert_eq!(got.status, 403, "{}: {got:?}", A::NAME);
    let log = fixture.api.requests();
    assert_eq!(log.len(), 1, "{}: {log:?}", A::NAME);
    assert_eq!(log[0].bearer_token(), Some(token.as_str()));
    assert_eq!(fixture.token_requests(), before);
    assert_eq!(client.current_token().as_deref(), Some(token.as_str()));
    client.shutdown();
}

/// A request with its own `Authorization` header is sent as it is, and its `401` comes back
/// without a retry or a token request.
pub fn own_authorization_is_left_alone<A: MiddlewareAdapter>() {
    let (fixture, client, token) = started::<A>();
    let before = fixture.token_requests();
    let request = Outgoing::get(fixture.api.url("/mine")).authorization("Bearer my-own-token");
    let got = answer(A::NAME, client.send(request));
    assert_eq!(got.status, 401, "{}: {got:?}", A::NAME);
    let log = fixture.api.requests();
    assert_eq!(log.len(), 1, "{}: {log:?}", A::NAME);
    assert_eq!(log[0].authorization.as_deref(), Some("Bearer my-own-token"));
    assert_eq!(fixture.token_requests(), before);
    assert_eq!(client.current_token().as_deref(), Some(token.as_str()));
    client.shutdown();
}

/// Checks that a logged request carried `token` as `Authorization: DPoP` with a proof the
/// server verified in full, for `method` and `url`, and returns the proof's id.
fn assert_valid_proof(
    adapter: &str,
    fixture: &Fixture,
    logged: &ResourceRequest,
    token: &str,
    method: &str,
    url: &str,
) -> String {
    assert_eq!(
        logged.bearer_token(),
        None,
        "{adapter}: sent as Bearer: {logged:?}"
    );
    assert_eq!(logged.dpop_token(), Some(token), "{adapter}: {logged:?}");
    let check = logged
        .dpop
        .as_ref()
        .unwrap_or_else(|| panic!("{adapter}: no DPoP check logged: {logged:?}"));
    assert_eq!(check.verdict, Ok(()), "{adapter}: {logged:?}");
    let proof = check
        .proof
        .as_ref()
        .unwrap_or_else(|| panic!("{adapter}: no proof: {logged:?}"));
    assert_eq!(proof.htm, method, "{adapter}");
    assert_eq!(proof.htu, url, "{adapter}: htu without query or fragment");
    assert_eq!(proof.ath, Some(access_token_hash(token)), "{adapter}");
    let bound = fixture.authority.dpop_binding(token);
    assert_eq!(bound.as_deref(), Some(proof.jkt.as_str()), "{adapter}");
    assert_eq!(check.bound_to, bound, "{adapter}");
    proof.jti.clone()
}

/// A DPoP-bound token goes as `Authorization: DPoP` with a proof the server verifies: `htm`,
/// `htu` (without the query), `ath`, `iat`, a new `jti`, and the token bound to its key.
pub fn dpop_token_goes_with_a_valid_proof<A: MiddlewareAdapter>() {
    let (fixture, client, token) = started_dpop::<A>();
    let before = fixture.token_requests();
    let got = answer(
        A::NAME,
        client.send(Outgoing::get(fixture.api.url("/orders?page=2"))),
    );
    assert_eq!(got.status, 200, "{}: {got:?}", A::NAME);
    let got = answer(
        A::NAME,
        client.send(Outgoing::post(
            fixture.api.url("/orders"),
            Payload::Replayable(b"{}".to_vec()),
        )),
    );
    assert_eq!(got.status, 200, "{}: {got:?}", A::NAME);
    let log = fixture.api.requests();
    assert_eq!(log.len(), 2, "{}: {log:?}", A::NAME);
    let url = fixture.api.url("/orders");
    let first = assert_valid_proof(A::NAME, &fixture, &log[0], &token, "GET", &url);
    let second = assert_valid_proof(A::NAME, &fixture, &log[1], &token, "POST", &url);
    assert_ne!(first, second, "{}: a proof id used twice", A::NAME);
    assert_eq!(fixture.token_requests(), before, "{}", A::NAME);
    client.shutdown();
}

/// When the server requires its nonce, the first request is refused once (`use_dpop_nonce`)
/// and sent again with it; later requests carry it at once; a new nonce costs one retry more.
pub fn dpop_nonce_costs_one_retry<A: MiddlewareAdapter>() {
    let (fixture, client, token) = started_dpop::<A>();
    let before = fixture.token_requests();
    fixture.api.require_dpop_nonce(true);
    let nonce = fixture.api.dpop_nonce().expect("a nonce");
    let url = fixture.api.url("/orders");
    let got = answer(A::NAME, client.send(Outgoing::get(url.clone())));
    assert_eq!(got.status, 200, "{}: {got:?}", A::NAME);
    let log = fixture.api.requests();
    assert_eq!(log.len(), 2, "{}: one retry: {log:?}", A::NAME);
    assert_eq!(log[0].status, 401);
    assert_eq!(
        log[0].dpop.as_ref().map(|check| check.verdict.clone()),
        Some(Err(DpopError::NonceRequired { presented: None })),
        "{}",
        A::NAME
    );
    assert_valid_proof(A::NAME, &fixture, &log[1], &token, "GET", &url);
    let carried = |r: &ResourceRequest| {
        r.dpop
            .as_ref()
            .and_then(|c| c.proof.as_ref())
            .and_then(|p| p.nonce.clone())
    };
    assert_eq!(carried(&log[1]).as_deref(), Some(nonce.as_str()));

    // Later requests carry the nonce: one request each.
    for _ in 0..3 {
        let got = answer(A::NAME, client.send(Outgoing::get(url.clone())));
        assert_eq!(got.status, 200, "{}: {got:?}", A::NAME);
    }
    let log = fixture.api.requests();
    assert_eq!(log.len(), 5, "{}: no more retries: {log:?}", A::NAME);
    assert!(log[2..].iter().all(|r| r.status == 200));
    assert!(
        log[2..]
            .iter()
            .all(|r| carried(r).as_deref() == Some(nonce.as_str()))
    );

    // A new nonce: one refusal and one retry, with the new one.
    let rotated = fixture.api.rotate_dpop_nonce().expect("a new nonce");
    let got = answer(A::NAME, client.send(Outgoing::get(url.clone())));
    assert_eq!(got.status, 200, "{}: {got:?}", A::NAME);
    let log = fixture.api.requests();
    assert_eq!(log.len(), 7, "{}: {log:?}", A::NAME);
    assert_eq!(log[5].status, 401);
    assert_eq!(carried(&log[6]).as_deref(), Some(rotated.as_str()));
    // A nonce is no refusal of the token.
    assert_eq!(fixture.token_requests(), before, "{}", A::NAME);
    assert_eq!(client.current_token().as_deref(), Some(token.as_str()));
    client.shutdown();
}

/// How many requests the proof-id scenario sends.
pub const PROOFS: usize = 40;

/// No two proofs share an id, across many requests sent at once: the server, which refuses a
/// replayed `jti`, accepts every one.
pub fn dpop_proofs_never_repeat_an_id<A: MiddlewareAdapter>() {
    let (fixture, client, _) = started_dpop::<A>();
    let requests = (0..PROOFS)
        .map(|i| Outgoing::get(fixture.api.url(&format!("/items/{i}"))))
        .collect();
    for got in client.send_all(requests) {
        let got = answer(A::NAME, got);
        assert_eq!(got.status, 200, "{}: {got:?}", A::NAME);
    }
    let log = fixture.api.requests();
    assert_eq!(log.len(), PROOFS, "{}: {log:?}", A::NAME);
    let mut ids: Vec<String> = log
        .iter()
        .filter_map(|r| r.dpop.as_ref()?.proof.as_ref().map(|p| p.jti.clone()))
        .collect();
    assert_eq!(ids.len(), PROOFS, "{}", A::NAME);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), PROOFS, "{}: a proof id was used twice", A::NAME);
    assert!(
        log.iter()
            .all(|r| r.dpop.as_ref().is_some_and(|c| c.verdict.is_ok())),
        "{}: {log:?}",
        A::NAME
    );
    client.shutdown();
}

/// A revoked DPoP-bound token is refused once, one token request follows, and the retry goes
/// with the new token and a new proof for it.
pub fn revoked_dpop_token_is_retried_with_a_new_proof<A: MiddlewareAdapter>() {
    let (fixture, client, old) = started_dpop::<A>();
    assert!(fixture.authority.revoke(&old));
    let before = fixture.token_requests();
    let url = fixture.api.url("/orders");
    let got = answer(A::NAME, client.send(Outgoing::get(url.clone())));
    assert_eq!(got.status, 200, "{}: {got:?}", A::NAME);
    assert_eq!(
        fixture.token_requests(),
        before + 1,
        "{}: one token request",
        A::NAME
    );
    let log = fixture.api.requests();
    assert_eq!(log.len(), 2, "{}: {log:?}", A::NAME);
    assert_eq!(log[0].status, 401);
    let refused = assert_valid_proof(A::NAME, &fixture, &log[0], &old, "GET", &url);
    let new = client.current_token().expect("a token");
    assert_ne!(new, old);
    let retried = assert_valid_proof(A::NAME, &fixture, &log[1], &new, "GET", &url);
    assert_ne!(
        refused,
        retried,
        "{}: the retry needs a proof of its own",
        A::NAME
    );
    assert_eq!(log[1].status, 200);
    client.shutdown();
}

/// A DPoP-bound token never goes out as `Bearer`, whatever the request; and the server would
/// refuse it if it did.
pub fn dpop_token_never_goes_as_bearer<A: MiddlewareAdapter>() {
    let (fixture, client, token) = started_dpop::<A>();
    assert!(fixture.authority.dpop_binding(&token).is_some());
    fixture.api.forbid(true);
    let _ = client.send(Outgoing::get(fixture.api.url("/admin")));
    fixture.api.forbid(false);
    assert!(fixture.authority.revoke(&token));
    let _ = client.send(Outgoing::post(
        fixture.api.url("/upload"),
        Payload::OneShot(b"once".to_vec()),
    ));
    let _ = client.send(Outgoing::get(fixture.api.url("/after")));
    let elsewhere = fixture
        .api
        .url_as("http", OTHER_LOOPBACK_NAME, "/elsewhere");
    let _ = client.send(Outgoing::get(elsewhere));
    let log = fixture.api.requests();
    assert!(log.len() >= 4, "{}: {log:?}", A::NAME);
    assert!(
        log.iter().all(|r| r.bearer_token().is_none()),
        "{}: a DPoP-bound token went as Bearer: {log:?}",
        A::NAME
    );
    // The server refuses one sent as Bearer (by hand here).
    let current = client.current_token().expect("a token");
    let got = answer(
        A::NAME,
        client.send(
            Outgoing::get(fixture.api.url("/mine")).authorization(format!("Bearer {current}")),
        ),
    );
    assert_eq!(got.status, 401, "{}: {got:?}", A::NAME);
    let last = fixture.api.requests().pop().expect("a request");
    assert_eq!(
        last.dpop.map(|check| check.verdict),
        Some(Err(DpopError::Missing)),
        "{}",
        A::NAME
    );
    client.shutdown();
}

/// One `#[test]` per middleware scenario for an adapter type.
///
/// ```ignore
/// tokenkeeper_testkit::middleware_tests!(MyAdapter);
/// ```
#[macro_export]
macro_rules! middleware_tests {
    ($adapter:ty) => {
        $crate::middleware_tests!(@each $adapter;
            attaches_the_current_token,
            revoked_token_is_refused_once_then_retried,
            replayable_body_after_revocation,
            burst_of_refusals_makes_one_token_request,
            unreplayable_body_gets_the_401,
            origin_not_allowed_gets_no_token,
            plain_http_to_remote_host_gets_no_token,
            forbidden_is_not_retried,
            own_authorization_is_left_alone,
            dpop_token_goes_with_a_valid_proof,
            dpop_nonce_costs_one_retry,
            dpop_proofs_never_repeat_an_id,
            revoked_dpop_token_is_retried_with_a_new_proof,
            dpop_token_never_goes_as_bearer,
        );
    };
    (@each $adapter:ty; $($scenario:ident),* $(,)?) => {
        $(
            #[test]
            fn $scenario() {
                $crate::middleware::$scenario::<$adapter>();
            }
        )*
    };
}
