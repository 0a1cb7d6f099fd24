//! A resource server on loopback that accepts only the tokens an [`Authority`] currently
//! considers valid: what middleware that attaches tokens is tested against.
//!
//! [`ResourceServer`] is an HTTP/1.1 server bound to `127.0.0.1`, on its own tokio runtime in
//! its own thread (like the authority, so it serves tests of any runtime). Every request, on
//! any path and with any method, is answered:
//!
//! - `200` with the request body echoed back, when it carries `Authorization: Bearer <t>` and
//!   the authority says `t` is active ([`Authority::token_is_active`]: issued there, not
//!   expired, not [revoked](Authority::revoke));
//! - `401` with `WWW-Authenticate: Bearer realm=".."` and no error code when it carries no
//!   bearer token (RFC 6750 §3.1);
//! - `401` with `WWW-Authenticate: Bearer realm="..", error="invalid_token"` when the token is
//!   unknown, expired or revoked;
//! - `403` with `error="insufficient_scope"` for an active token while the server is told to
//!   [forbid](ResourceServer::forbid).
//!
//! DPoP (RFC 9449 §7) is checked on every request, with the authority's verifier
//! ([`crate::authority::dpop`], written independently of tokenkeeper's signer):
//!
//! - `Authorization: DPoP <t>` must come with one `DPoP` proof, signed by the key in its header,
//!   of type `dpop+jwt`, for this method and URL (`htm`, `htu`), with `ath` the hash of `t`,
//!   `iat` within [`DEFAULT_PROOF_WINDOW`] of now, and a `jti` never seen before; and `t` must be
//!   bound to the proof's key ([`Authority::dpop_binding`] equals the key's thumbprint).
//!   Otherwise `401` with `WWW-Authenticate: DPoP error="invalid_dpop_proof"` (or
//!   `error="invalid_token"` when the binding is wrong).
//! - While the server [requires a nonce](ResourceServer::require_dpop_nonce), a proof without
//!   the current one gets `401` with `WWW-Authenticate: DPoP error="use_dpop_nonce"` and the
//!   nonce in `DPoP-Nonce`; every answer to a DPoP request carries the current nonce.
//! - A DPoP-bound token sent as `Bearer` is refused (`401`, `DPoP error="invalid_token"`).
//!
//! What was checked is logged with the request ([`ResourceRequest::dpop`]).
//!
//! Every request is logged ([`ResourceRequest`]: method, path, `Host`, the `Authorization`
//! header as it came, the body, the status). The server listens on `127.0.0.1` only; a test
//! that needs it under another name (to check that plain `http` to a host that is not
//! loopback carries no token) points its client's resolver at [`ResourceServer::addr`].
//!
//! ```
//! use tokenkeeper_testkit::{Authority, Client, ResourceServer};
//!
//! let authority = Authority::start();
//! authority.register_client(Client::new("svc", "s3cret"));
//! let api = ResourceServer::start(&authority);
//! assert!(api.url("/orders").starts_with("http://127.0.0.1:"));
//! // ... get a token from `authority.token_url()`, call `api.url(..)` with it, then:
//! assert_eq!(api.request_count(), 0);
//! ```

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::authority::Authority;
use crate::authority::dpop::{
    DEFAULT_PROOF_WINDOW, DpopError, DpopProof, JtiCache, read_proof, verify_proof,
};
use crate::authority::state::{Shared as AuthorityState, mint_nonce};
use crate::server_thread::ServerThread;

/// The realm of the server's `WWW-Authenticate` challenges.
pub const RESOURCE_REALM: &str = "tokenkeeper-testkit-api";

/// The largest request body read; larger ones get a `413`.
const MAX_BODY: usize = 1024 * 1024;

/// The longest a [gathered](ResourceServer::gather) request is held.
const GATHER_LIMIT: Duration = Duration::from_secs(30);

/// One request as the resource server saw it.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResourceRequest {
    /// Its place in the log, from 0.
    pub seq: u64,
    /// When it arrived.
    pub at: SystemTime,
    /// The method.
    pub method: String,
    /// The path (without the query).
    pub path: String,
    /// The `Host` header, if any.
    pub host: Option<String>,
    /// The `Authorization` header as it came (test tokens only: this is a test kit), if any.
    pub authorization: Option<String>,
    /// The body.
    pub body: Vec<u8>,
    /// The status answered.
    pub status: u16,
    /// What the DPoP checks found, for a request with `Authorization: DPoP` or a DPoP-bound
    /// token sent as `Bearer`.
    pub dpop: Option<DpopCheck>,
}

/// The DPoP checks of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DpopCheck {
    /// The proof as it came (its claims read, whether or not it verified), if one could be read.
    pub proof: Option<DpopProof>,
    /// The `jkt` the access token is bound to at the authority, if any.
    pub bound_to: Option<String>,
    /// `Ok` when the proof passed every check (signature, `typ`, `htm`, `htu`, `ath`, `iat`,
    /// `jti` not replayed, the token bound to its key, the nonce when required); otherwise why
    /// the request was refused.
    pub verdict: Result<(), DpopError>,
}

impl ResourceRequest {
    /// Whether an `Authorization` header came.
    pub fn had_authorization(&self) -> bool {
        self.authorization.is_some()
    }

    /// The bearer token presented, if the `Authorization` header was `Bearer <token>`.
    pub fn bearer_token(&self) -> Option<&str> {
        self.authorization
            .as_deref()
            .and_then(|value| credential(value, "bearer"))
    }

    /// The DPoP-bound token presented, if the `Authorization` header was `DPoP <token>`.
    pub fn dpop_token(&self) -> Option<&str> {
        self.authorization
            .as_deref()
            .and_then(|value| credential(value, "dpop"))
    }
}

impl fmt::Debug for ResourceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResourceRequest")
            .field("seq", &self.seq)
            .field("method", &self.method)
            .field("path", &self.path)
            .field("host", &self.host)
            .field("authorization", &self.authorization)
            .field("body_bytes", &self.body.len())
            .field("status", &self.status)
            .field("dpop", &self.dpop)
            .finish()
    }
}

/// The token of an `Authorization` value of `scheme` (`bearer`, `dpop`).
fn credential<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (given, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (given.eq_ignore_ascii_case(scheme) && !token.is_empty()).then_some(token)
}

/// Requests held until enough have arrived.
struct Gather {
    wanted: usize,
    arrived: usize,
    release: watch::Sender<bool>,
}

#[derive(Default)]
struct State {
    log: Vec<ResourceRequest>,
    forbidden: bool,
    gather: Option<Gather>,
    /// The DPoP proof ids seen.
    jtis: JtiCache,
    /// The nonce DPoP proofs must carry, while one is required.
    nonce: Option<String>,
    rng: fastrand::Rng,
}

struct Shared {
    authority: Arc<AuthorityState>,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running resource server on `127.0.0.1`; see the [module documentation](self).
///
/// Every method takes `&self`. Dropping it (or [`ResourceServer::shutdown`]) closes the socket
/// and every connection and joins the server thread. It keeps the authority's state alive, not
/// its server: revocations and issued tokens stay visible after the authority handle is gone.
pub struct ResourceServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: ServerThread,
}

impl fmt::Debug for ResourceServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResourceServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ResourceServer {
    /// Starts a resource server on a free loopback port that checks tokens with `authority`.
    ///
    /// # Panics
    ///
    /// If it cannot start; see [`ResourceServer::try_start`].
    #[track_caller]
    pub fn start(authority: &Authority) -> ResourceServer {
        match ResourceServer::try_start(authority) {
            Ok(server) => server,
            Err(error) => panic!("cannot start the test resource server: {error}"),
        }
    }

    /// Like [`ResourceServer::start`], returning an error instead of panicking.
    pub fn try_start(authority: &Authority) -> io::Result<ResourceServer> {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            authority: authority.shared_state(),
            state: Mutex::new(State::default()),
        });
        let server_shared = Arc::clone(&shared);
        let server = ServerThread::start(
            format!("tokenkeeper-testkit-resource-{}", addr.port()),
            vec![listener],
            move |listeners, stop| async move {
                for listener in listeners {
                    tokio::spawn(accept_loop(listener, Arc::clone(&server_shared)));
                }
                let _ = stop.await;
            },
        )?;
        Ok(ResourceServer {
            shared,
            addr,
            server,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL of `path` (which should start with `/`) on this server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    /// The URL of `path` under another host name at this server's port, such as
    /// `http://api.example.test:PORT/path`: a client must resolve `host` to
    /// [`addr`](Self::addr) itself.
    pub fn url_as(&self, scheme: &str, host: &str, path: &str) -> String {
        format!("{scheme}://{host}:{}{path}", self.addr.port())
    }

    /// While `forbidden`, requests with an active token get `403` (`insufficient_scope`)
    /// instead of `200`.
    pub fn forbid(&self, forbidden: bool) {
        self.shared.lock().forbidden = forbidden;
    }

    /// Whether DPoP proofs must carry this server's nonce (RFC 9449 §9); not unless told.
    /// Turning it on mints a nonce, which [`dpop_nonce`](Self::dpop_nonce) tells.
    pub fn require_dpop_nonce(&self, required: bool) {
        let mut state = self.shared.lock();
        state.nonce = if required {
            Some(mint_nonce(&mut state.rng))
        } else {
            None
        };
    }

    /// The nonce DPoP proofs must carry now, while one is required.
    pub fn dpop_nonce(&self) -> Option<String> {
        self.shared.lock().nonce.clone()
    }

    /// Replaces the required nonce with a new one and returns it (`None`, and nothing changes,
    /// while no nonce is required): proofs with the old one get `use_dpop_nonce`.
    pub fn rotate_dpop_nonce(&self) -> Option<String> {
        let mut state = self.shared.lock();
        state.nonce.as_ref()?;
        let nonce = mint_nonce(&mut state.rng);
        state.nonce = Some(nonce.clone());
        Some(nonce)
    }

    /// Holds the next `count` requests until all of them have arrived (or 30 s have passed),
    /// then answers them together: how a test makes a burst of requests be refused at once.
    /// Each is answered as its token stood when it arrived.
    pub fn gather(&self, count: usize) {
        let (release, _) = watch::channel(false);
        self.shared.lock().gather = (count > 0).then_some(Gather {
            wanted: count,
            arrived: 0,
            release,
        });
    }

    /// Every request answered so far, in order of answer.
    pub fn requests(&self) -> Vec<ResourceRequest> {
        self.shared.lock().log.clone()
    }

    /// The number of requests answered.
    pub fn request_count(&self) -> usize {
        self.shared.lock().log.len()
    }

    /// The number of requests answered with `status`.
    pub fn count_by_status(&self, status: u16) -> usize {
        self.shared
            .lock()
            .log
            .iter()
            .filter(|request| request.status == status)
            .count()
    }

    /// Forgets the request log.
    pub fn clear_requests(&self) {
        self.shared.lock().log.clear();
    }

    /// Blocks until at least `count` requests have been answered, or `timeout` has passed.
    /// Returns whether the count was reached.
    pub fn wait_for_requests(&self, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.request_count() >= count {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Stops the server and joins its thread. Idempotent; dropping the handle does the same.
    pub fn shutdown(&self) {
        if !self.server.stop() {
            tracing::error!(addr = %self.addr, "the test resource server thread panicked");
        }
    }
}

impl Drop for ResourceServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = service_fn(move |request| handle(Arc::clone(&shared), request));
                    let served = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .serve_connection(TokioIo::new(stream), service);
                    if let Err(error) = served.await {
                        tracing::debug!(%error, "resource server connection ended with an error");
                    }
                });
            }
            Err(error) => {
                tracing::warn!(%error, "resource server failed to accept a connection");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// What the token on a request amounts to.
enum Verdict {
    NoToken,
    Inactive,
    Active,
    /// The DPoP checks failed.
    Dpop(DpopError),
}

/// The DPoP checks of a request carrying `authorization` (RFC 9449 §7.1), with `None` for a
/// request they do not concern (no token, or a bearer token bound to no key).
fn check_dpop(
    shared: &Shared,
    parts: &hyper::http::request::Parts,
    authorization: Option<&str>,
    at: SystemTime,
) -> Option<DpopCheck> {
    let authorization = authorization?;
    if let Some(token) = credential(authorization, "bearer") {
        // A DPoP-bound token must not be accepted as a bearer token.
        let bound_to = shared.authority.lock().dpop_binding(token)?;
        return Some(DpopCheck {
            proof: None,
            bound_to: Some(bound_to),
            verdict: Err(DpopError::Missing),
        });
    }
    let token = credential(authorization, "dpop")?;
    let bound_to = shared.authority.lock().dpop_binding(token);
    let mut proofs = parts.headers.get_all("dpop").iter();
    let (proof, verdict) = match (proofs.next(), proofs.next()) {
        (None, _) => (None, Err(DpopError::Missing)),
        (Some(_), Some(_)) => (None, Err(DpopError::Multiple)),
        (Some(value), None) => {
            let text = String::from_utf8_lossy(value.as_bytes());
            let host = parts
                .headers
                .get(header::HOST)
                .and_then(|host| host.to_str().ok())
                .unwrap_or_default();
            // The URL the client addressed: this server speaks plain http.
            let url = format!("http://{host}{}", parts.uri.path());
            let verdict = verify_proof(
                &text,
                parts.method.as_str(),
                &url,
                Some(token),
                at,
                DEFAULT_PROOF_WINDOW,
            )
            .and_then(|proof| {
                let mut state = shared.lock();
                state
                    .jtis
                    .check_and_insert(&proof, at, DEFAULT_PROOF_WINDOW)?;
                if bound_to.as_deref() != Some(proof.jkt.as_str()) {
                    return Err(DpopError::WrongKey {
                        bound: bound_to.clone(),
                    });
                }
                match &state.nonce {
                    Some(nonce) if proof.nonce.as_ref() != Some(nonce) => {
                        Err(DpopError::NonceRequired {
                            presented: proof.nonce.clone(),
                        })
                    }
                    _ => Ok(()),
                }
            });
            (read_proof(&text).ok(), verdict)
        }
    };
    Some(DpopCheck {
        proof,
        bound_to,
        verdict,
    })
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map(|collected| collected.to_bytes());
    let at = SystemTime::now();
    let text = |name: header::HeaderName| {
        parts
            .headers
            .get(name)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
    };
    let authorization = text(header::AUTHORIZATION);
    let dpop = check_dpop(&shared, &parts, authorization.as_deref(), at);
    let token = authorization
        .as_deref()
        .and_then(|value| credential(value, "bearer").or_else(|| credential(value, "dpop")));
    let verdict = match (token, &dpop) {
        (
            _,
            Some(DpopCheck {
                verdict: Err(error),
                ..
            }),
        ) => Verdict::Dpop(error.clone()),
        (None, _) => Verdict::NoToken,
        (Some(token), _) if shared.authority.lock().access_token_is_active(token, at) => {
            Verdict::Active
        }
        (Some(_), _) => Verdict::Inactive,
    };
    let is_dpop = authorization
        .as_deref()
        .is_some_and(|value| credential(value, "dpop").is_some());

    // A gathered request waits here until the whole burst has arrived.
    let held = {
        let mut state = shared.lock();
        match state.gather.as_mut() {
            Some(gather) => {
                gather.arrived += 1;
                let release = gather.release.subscribe();
                if gather.arrived >= gather.wanted {
                    let _ = gather.release.send(true);
                    state.gather = None;
                }
                Some(release)
            }
            None => None,
        }
    };
    if let Some(mut release) = held {
        let _ = tokio::time::timeout(GATHER_LIMIT, release.wait_for(|released| *released)).await;
    }

    let forbidden = shared.lock().forbidden;
    let (status, challenge, answer) = match (&body, verdict) {
        (Err(_), _) => (StatusCode::PAYLOAD_TOO_LARGE, None, Bytes::new()),
        (_, Verdict::NoToken) => (
            StatusCode::UNAUTHORIZED,
            Some(format!("Bearer realm=\"{RESOURCE_REALM}\"")),
            Bytes::new(),
        ),
        (_, Verdict::Inactive) => (
            StatusCode::UNAUTHORIZED,
            Some(format!(
                "{} realm=\"{RESOURCE_REALM}\", error=\"invalid_token\", \
                 error_description=\"the access token is not active\"",
                if is_dpop { "DPoP" } else { "Bearer" }
            )),
            Bytes::new(),
        ),
        (_, Verdict::Dpop(error)) => {
            let code = match error {
                DpopError::WrongKey { .. } | DpopError::Missing => "invalid_token",
                other => other.error_code(),
            };
            (
                StatusCode::UNAUTHORIZED,
                Some(format!(
                    "DPoP realm=\"{RESOURCE_REALM}\", error=\"{code}\", \
                     algs=\"ES256 EdDSA\""
                )),
                Bytes::new(),
            )
        }
        (Ok(_), Verdict::Active) if forbidden => (
            StatusCode::FORBIDDEN,
            Some(format!(
                "Bearer realm=\"{RESOURCE_REALM}\", error=\"insufficient_scope\""
            )),
            Bytes::new(),
        ),
        (Ok(bytes), Verdict::Active) => (StatusCode::OK, None, bytes.clone()),
    };

    {
        let mut state = shared.lock();
        let seq = state.log.len() as u64;
        state.log.push(ResourceRequest {
            seq,
            at,
            method: parts.method.as_str().to_owned(),
            path: parts.uri.path().to_owned(),
            host: text(header::HOST),
            authorization,
            body: body.map(|bytes| bytes.to_vec()).unwrap_or_default(),
            status: status.as_u16(),
            dpop,
        });
    }

    let mut response = Response::new(Full::new(answer));
    *response.status_mut() = status;
    if let Some(challenge) = challenge
        && let Ok(value) = HeaderValue::from_str(&challenge)
    {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    if is_dpop
        && let Some(nonce) = shared.lock().nonce.clone()
        && let Ok(value) = HeaderValue::from_str(&nonce)
    {
        response.headers_mut().insert("dpop-nonce", value);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
