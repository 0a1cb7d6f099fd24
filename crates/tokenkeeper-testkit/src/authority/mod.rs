//! A real OAuth2 token authority on loopback, with a request log and scripted faults.
//!
//! [`Authority`] is an HTTP/1.1 server bound to `127.0.0.1` that runs on its own tokio runtime
//! in its own thread, so it serves tests written for any runtime, or none. Its token endpoint
//! (`POST /token`) speaks RFC 6749: the `client_credentials`, `refresh_token` and JWT bearer
//! grants, client authentication with `client_secret_basic` or `client_secret_post`, single-use
//! rotating refresh tokens, and RFC 6749 §5.2 errors. Every request is logged
//! ([`RequestRecord`]), and the next requests can be told to misbehave ([`Fault`]).
//!
//! It checks DPoP proofs (RFC 9449, module [`dpop`]): a request with a valid proof gets a
//! `DPoP` token bound to the proof's key, a bad proof gets `400 invalid_dpop_proof`, and with
//! [`AuthorityBuilder::dpop_nonces`] proofs must carry the server's nonce (`use_dpop_nonce`).
//!
//! It checks JWT assertions (RFC 7523, module [`assertion`]): clients registered for
//! `private_key_jwt` ([`Client::private_key_jwt`], with public JWKs) or `client_secret_jwt`
//! ([`Client::client_secret_jwt`]) authenticate with a `client_assertion` whose signature,
//! `iss`, `sub`, `aud`, `exp` and never-seen `jti` are verified (else `invalid_client`), and
//! the JWT bearer grant exchanges an assertion from a registered issuer
//! ([`Authority::register_assertion_issuer`]) for a token for its `sub` (else
//! `invalid_grant`). The log records each assertion's `alg`, `kid`, `jti` and fate.
//!
//! With [`AuthorityBuilder::tls`] it serves HTTPS instead, with a certificate of a test
//! [`Pki`](crate::pki::Pki), and can ask for client certificates: clients registered for
//! `tls_client_auth` or `self_signed_tls_client_auth` (RFC 8705) then authenticate with them.
//!
//! ```
//! use std::time::Duration;
//! use tokenkeeper_testkit::{AuthMethod, Authority, Client, Fault};
//!
//! let authority = Authority::start();
//! authority.register_client(
//!     Client::new("svc", "s3cret")
//!         .auth_method(AuthMethod::Basic)
//!         .token_lifetime(Duration::from_secs(60)),
//! );
//! assert!(authority.token_url().starts_with("http://127.0.0.1:"));
//!
//! // The next two token requests get a 503, then the authority answers normally again.
//! authority.script(Fault::status(503), 2);
//! assert_eq!(authority.pending_faults(), 2);
//! assert_eq!(authority.request_count(), 0);
//! // Dropping the handle stops the server and its thread.
//! drop(authority);
//! ```

pub mod assertion;
mod body;
mod client;
pub(crate) mod codec;
mod device;
mod discovery;
pub mod dpop;
mod fault;
mod record;
mod server;
pub(crate) mod state;
mod tls;

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::server_thread::ServerThread;

pub use assertion::{AssertionError, PresentedAssertion};
pub use client::{AuthMethod, Client};
pub use codec::format_http_date;
pub use device::{DEFAULT_DEVICE_CODE_LIFETIME, DEFAULT_DEVICE_INTERVAL};
pub use dpop::{DpopError, DpopNonces, DpopProof};
pub use fault::{Fault, RetryAfter};
pub use record::{
    DpopCheck, DpopVerdict, IssuedToken, Outcome, PresentedAuth, PresentedCertificate,
    RequestRecord, TlsFailure, TlsSession, TlsVersion,
};
pub use tls::{ClientAuth, TlsSettings};

use state::{Shared, State};

/// The lifetime of access tokens for clients that do not set their own.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// The largest request body the authority reads by default; larger ones get a `413`.
pub const DEFAULT_MAX_REQUEST_BODY: usize = 64 * 1024;

/// Configures and starts an [`Authority`].
#[derive(Clone, Debug)]
pub struct AuthorityBuilder {
    port: u16,
    realm: String,
    default_lifetime: Duration,
    max_request_body: usize,
    seed: Option<u64>,
    tls: Option<TlsSettings>,
    dpop_nonces: DpopNonces,
    dpop_window: Duration,
}

impl Default for AuthorityBuilder {
    fn default() -> AuthorityBuilder {
        AuthorityBuilder {
            port: 0,
            realm: "tokenkeeper-testkit".to_owned(),
            default_lifetime: DEFAULT_TOKEN_LIFETIME,
            max_request_body: DEFAULT_MAX_REQUEST_BODY,
            seed: None,
            tls: None,
            dpop_nonces: DpopNonces::NotRequired,
            dpop_window: dpop::DEFAULT_PROOF_WINDOW,
        }
    }
}

impl AuthorityBuilder {
    /// The loopback port to bind; 0 (the default) lets the system pick a free one. A fixed
    /// port lets a test restart an authority at the same address.
    pub fn port(mut self, port: u16) -> AuthorityBuilder {
        self.port = port;
        self
    }

    /// The realm of the `WWW-Authenticate: Basic realm=".."` header of `401` answers.
    pub fn realm(mut self, realm: impl Into<String>) -> AuthorityBuilder {
        self.realm = realm.into();
        self
    }

    /// The token lifetime of clients that do not set one ([`DEFAULT_TOKEN_LIFETIME`] unless
    /// set). Truncated to whole seconds on the wire, like [`Client::token_lifetime`].
    pub fn default_token_lifetime(mut self, lifetime: Duration) -> AuthorityBuilder {
        self.default_lifetime = lifetime;
        self
    }

    /// The largest request body read ([`DEFAULT_MAX_REQUEST_BODY`] unless set).
    pub fn max_request_body(mut self, bytes: usize) -> AuthorityBuilder {
        self.max_request_body = bytes;
        self
    }

    /// Seeds the generator of the random part of tokens, for reproducible token strings.
    pub fn seed(mut self, seed: u64) -> AuthorityBuilder {
        self.seed = Some(seed);
        self
    }

    /// Whether DPoP proofs must carry a server nonce (RFC 9449 §8); not by default.
    pub fn dpop_nonces(mut self, nonces: DpopNonces) -> AuthorityBuilder {
        self.dpop_nonces = nonces;
        self
    }

    /// How far a DPoP proof's `iat` may be from the authority's clock, either way
    /// ([`dpop::DEFAULT_PROOF_WINDOW`] unless set). Accepted proof ids are remembered this long,
    /// so that a replay is refused.
    pub fn dpop_proof_window(mut self, window: Duration) -> AuthorityBuilder {
        self.dpop_window = window;
        self
    }

    /// Serves HTTPS with these settings instead of plain HTTP. The URLs then name `localhost`
    /// (`https://localhost:PORT/token`), which the server certificates of a
    /// [`Pki`](crate::pki::Pki) are issued for; the server listens on `127.0.0.1` and, when it
    /// can get the same port there, on `::1` too.
    pub fn tls(mut self, settings: TlsSettings) -> AuthorityBuilder {
        self.tls = Some(settings);
        self
    }

    /// Binds the socket, starts the server thread, and returns once connections are being
    /// accepted.
    ///
    /// # Panics
    ///
    /// If the socket cannot be bound or the thread or runtime cannot be started; see
    /// [`AuthorityBuilder::try_start`].
    #[track_caller]
    pub fn start(self) -> Authority {
        match self.try_start() {
            Ok(authority) => authority,
            Err(error) => panic!("cannot start the test authority: {error}"),
        }
    }

    /// Like [`AuthorityBuilder::start`], returning an error instead of panicking.
    pub fn try_start(self) -> io::Result<Authority> {
        let tls_server = match &self.tls {
            Some(settings) => Some(Arc::new(tls::TlsServer::new(settings)?)),
            None => None,
        };
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, self.port))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let mut listeners = vec![listener];
        if self.tls.is_some() {
            // `localhost` may resolve to ::1 first; serve it there too when the port is free.
            if let Ok(v6) = std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, addr.port()))
                && v6.set_nonblocking(true).is_ok()
            {
                listeners.push(v6);
            }
        }
        let shared = Arc::new(Shared::new(
            self.realm,
            self.default_lifetime,
            self.max_request_body,
            self.seed,
            self.dpop_nonces,
            self.dpop_window,
        ));

        let server_shared = Arc::clone(&shared);
        let server = ServerThread::start(
            format!("tokenkeeper-testkit-authority-{}", addr.port()),
            listeners,
            move |listeners, stop| server::serve(listeners, server_shared, tls_server, stop),
        )?;
        tracing::debug!(%addr, "test authority started");
        let authority = Authority {
            shared,
            addr,
            tls: self.tls,
            server,
        };
        authority
            .shared
            .discovery
            .set_base_url(authority.base_url());
        Ok(authority)
    }
}

/// What it takes to stop the server.
/// A running OAuth2 token authority on `127.0.0.1`.
///
/// Every method takes `&self`; the handle is `Send + Sync`, so share it with an `Arc`.
/// Dropping it (or calling [`Authority::shutdown`]) stops the server: the listening socket and
/// every open connection are closed and the server thread is joined. That join blocks the
/// calling thread briefly, which is harmless even inside an async test.
///
/// See the [module documentation](self) for an example.
pub struct Authority {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tls: Option<TlsSettings>,
    server: ServerThread,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority")
            .field("addr", &self.addr)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Starts an authority with the default settings on a free loopback port.
    ///
    /// # Panics
    ///
    /// If it cannot start; see [`AuthorityBuilder::try_start`].
    #[track_caller]
    pub fn start() -> Authority {
        AuthorityBuilder::default().start()
    }

    /// A builder for an authority with non-default settings.
    pub fn builder() -> AuthorityBuilder {
        AuthorityBuilder::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.lock()
    }

    // ----- addresses -----

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, or `https://localhost:PORT` over TLS; without a trailing
    /// slash.
    pub fn base_url(&self) -> String {
        match self.tls {
            None => format!("http://{}", self.addr),
            Some(_) => format!("https://localhost:{}", self.addr.port()),
        }
    }

    /// The token endpoint: `http://127.0.0.1:PORT/token`, or `https://localhost:PORT/token`
    /// over TLS (unless [moved](Authority::move_token_endpoint)).
    pub fn token_url(&self) -> String {
        format!("{}{}", self.base_url(), self.shared.discovery.token_path())
    }

    // ----- metadata (OpenID Connect Discovery, RFC 8414) -----

    /// The issuer its metadata names: the [`base_url`](Authority::base_url), plus the path set
    /// with [`set_issuer_path`](Authority::set_issuer_path). Its documents are served at
    /// `{issuer}/.well-known/openid-configuration` and at
    /// `{base_url}/.well-known/oauth-authorization-server{issuer path}` (RFC 8414 §3.1).
    pub fn discovery_issuer(&self) -> String {
        self.shared.discovery.issuer()
    }

    /// Gives the issuer a path (`/tenant-1`), as multi-tenant authorities do; the metadata
    /// locations follow it.
    pub fn set_issuer_path(&self, path: &str) {
        self.shared.discovery.set_issuer_path(path);
    }

    /// Which metadata documents are served: the OpenID Connect one, the RFC 8414 one (both
    /// by default). A location not served answers `404`.
    pub fn serve_metadata(&self, openid_configuration: bool, oauth_authorization_server: bool) {
        self.shared
            .discovery
            .serve(openid_configuration, oauth_authorization_server);
    }

    /// Makes the documents name `issuer` instead of the authority's own (`None`: its own
    /// again), as a document that does not match the issuer a client was configured with.
    pub fn set_metadata_issuer(&self, issuer: Option<&str>) {
        self.shared
            .discovery
            .set_issuer_override(issuer.map(str::to_owned));
    }

    /// Moves the token endpoint to `path` (`/v2/token`): requests to the old path answer
    /// `404` from now on, and the metadata names the new one. Returns the new URL.
    pub fn move_token_endpoint(&self, path: &str) -> String {
        self.shared.discovery.set_token_path(path);
        self.token_url()
    }

    /// How many metadata requests (`GET` of a well-known location, served or not) arrived.
    pub fn metadata_request_count(&self) -> usize {
        self.count_where(|r| r.method == "GET" && r.path.contains("/.well-known/"))
    }

    // ----- TLS -----

    /// The TLS settings, for an HTTPS authority.
    pub fn tls(&self) -> Option<&TlsSettings> {
        self.tls.as_ref()
    }

    /// Whether the authority serves HTTPS.
    pub fn is_https(&self) -> bool {
        self.tls.is_some()
    }

    /// The TLS connections that failed before any request (a client that did not trust the
    /// certificate, a handshake that found no common version, a missing client certificate),
    /// in order.
    pub fn tls_failures(&self) -> Vec<TlsFailure> {
        self.state().tls_failures.clone()
    }

    /// The `x5t#S256` thumbprint of the client certificate an access token is bound to, if it
    /// was issued by this authority to a client that authenticated with a certificate: what a
    /// resource server would compare with the certificate its caller presents (RFC 8705 §3).
    pub fn token_binding(&self, access_token: &str) -> Option<String> {
        self.state()
            .issued
            .iter()
            .find(|token| token.access_token == access_token)
            .and_then(|token| token.bound_to.clone())
    }

    /// The JWK thumbprint (`jkt`) of the DPoP key an access token is bound to, if this
    /// authority issued it to a request with a valid DPoP proof (RFC 9449): what a resource
    /// server compares with the key of the proof that comes with the token (and what a JWT
    /// access token would carry in `cnf.jkt`).
    pub fn dpop_binding(&self, access_token: &str) -> Option<String> {
        self.state().dpop_binding(access_token)
    }

    // ----- DPoP nonces -----

    /// The DPoP nonce proofs must carry now; `None` unless the authority was built with
    /// [`AuthorityBuilder::dpop_nonces`].
    pub fn dpop_nonce(&self) -> Option<String> {
        self.state().dpop_nonce.clone()
    }

    /// Replaces the DPoP nonce with a new one and returns it: proofs carrying the old one get
    /// `use_dpop_nonce` from now on. `None` (and nothing changes) when nonces are not
    /// required.
    pub fn rotate_dpop_nonce(&self) -> Option<String> {
        self.shared.rotate_dpop_nonce()
    }

    // ----- clients -----

    /// Registers a client, replacing any client with the same id.
    pub fn register_client(&self, client: Client) {
        self.state().clients.insert(client.id.clone(), client);
    }

    /// Removes a client; its later requests get `invalid_client`. Returns whether it existed.
    pub fn remove_client(&self, client_id: &str) -> bool {
        self.state().clients.remove(client_id).is_some()
    }

    /// The registration of a client, if it exists.
    pub fn client(&self, client_id: &str) -> Option<Client> {
        self.state().clients.get(client_id).cloned()
    }

    /// Changes the lifetime of the tokens issued to a client from now on.
    ///
    /// # Panics
    ///
    /// If no client with this id is registered.
    #[track_caller]
    pub fn set_token_lifetime(&self, client_id: &str, lifetime: Duration) {
        let mut state = self.state();
        match state.clients.get_mut(client_id) {
            Some(client) => client.token_lifetime = Some(lifetime),
            None => {
                drop(state);
                panic!("set_token_lifetime: no client {client_id:?} is registered");
            }
        }
    }

    /// Registers a public JWK of an assertion issuer for the JWT bearer grant (RFC 7523
    /// §2.1): assertions whose `iss` is `issuer` and that verify with one of its keys are
    /// exchanged for a token for their `sub`. Call again to add keys.
    pub fn register_assertion_issuer(&self, issuer: &str, public_jwk: serde_json::Value) {
        self.state()
            .issuers
            .entry(issuer.to_owned())
            .or_default()
            .push(public_jwk);
    }

    /// Makes token exchange (RFC 8693) accept `token` as a subject or actor token of type
    /// `token_type` (a URI such as `urn:ietf:params:oauth:token-type:jwt`), standing for
    /// `subject`. Besides these, an access token this authority issued and still holds active
    /// is accepted with type `urn:ietf:params:oauth:token-type:access_token` (its subject is
    /// the one it was issued for), so that one watcher's token can be exchanged by another.
    /// An exchange answers `issued_token_type` (the requested type: `access_token`, the
    /// default, or `jwt`, with `token_type` `N_A`); any other token is refused with
    /// `invalid_grant`. The request log records each request's tokens
    /// ([`RequestRecord::subject_token`]).
    pub fn accept_exchange_token(&self, token_type: &str, token: &str, subject: &str) {
        self.state().exchange_tokens.insert(
            token.to_owned(),
            (token_type.to_owned(), subject.to_owned()),
        );
    }

    /// Stops accepting `token` for token exchange; `true` if it was accepted.
    pub fn forget_exchange_token(&self, token: &str) -> bool {
        self.state().exchange_tokens.remove(token).is_some()
    }

    /// The authority's issuer identifier: its [`base_url`](Authority::base_url). Assertions
    /// may name it, or the token endpoint, as their `aud`.
    pub fn issuer(&self) -> String {
        self.base_url()
    }

    // ----- the device authorization grant (RFC 8628) -----

    /// The device authorization endpoint: `http://127.0.0.1:PORT/device_authorization`.
    /// Registered clients authenticate there as at the token endpoint and get a device code
    /// and a user code; polls of the token endpoint with the device code grant are answered
    /// `authorization_pending` until the test, playing the person, approves or denies the user
    /// code. An approved code is redeemed once, for a token with a refresh token.
    pub fn device_authorization_url(&self) -> String {
        format!("{}{}", self.base_url(), device::DEVICE_PATH)
    }

    /// Approves the device login waiting with `user_code`, as the person would on the
    /// verification page. Returns whether such a login was waiting.
    pub fn approve_device(&self, user_code: &str) -> bool {
        self.state().devices.answer(user_code, true)
    }

    /// Refuses the device login waiting with `user_code`: its next poll gets `access_denied`.
    /// Returns whether such a login was waiting.
    pub fn deny_device(&self, user_code: &str) -> bool {
        self.state().devices.answer(user_code, false)
    }

    /// Makes the codes of `user_code` expire now: the next poll gets `expired_token`.
    pub fn expire_device(&self, user_code: &str) -> bool {
        self.state()
            .devices
            .expire(user_code, std::time::SystemTime::now())
    }

    /// The user codes of the device logins waiting for the person's answer.
    pub fn pending_user_codes(&self) -> Vec<String> {
        self.state().devices.pending_user_codes()
    }

    /// The device code handed out with `user_code` (a credential of the client: for tests
    /// that check it never shows).
    pub fn device_code_of(&self, user_code: &str) -> Option<String> {
        self.state().devices.code_of(user_code)
    }

    /// Answers the next `polls` device code polls with `slow_down` (each adds 5 s to that
    /// code's interval, as RFC 8628 §3.5 says). A client that polls sooner than its interval
    /// gets `slow_down` anyway.
    pub fn force_slow_down(&self, polls: usize) {
        self.state().devices.forced_slow_downs = polls;
    }

    /// The polling interval announced with codes handed out from now on (default
    /// [`DEFAULT_DEVICE_INTERVAL`], whole seconds).
    pub fn set_device_interval(&self, interval: Duration) {
        self.state().devices.interval = interval;
    }

    /// The lifetime of codes handed out from now on (default
    /// [`DEFAULT_DEVICE_CODE_LIFETIME`], whole seconds).
    pub fn set_device_code_lifetime(&self, lifetime: Duration) {
        self.state().devices.lifetime = lifetime;
    }

    /// Whether answers carry `verification_uri_complete` (default yes).
    pub fn set_device_complete_uri(&self, included: bool) {
        self.state().devices.include_complete_uri = included;
    }

    // ----- refresh tokens -----

    /// Mints a refresh token for a client (registered or not), for `refresh_token` grant
    /// tests. It carries no scope.
    pub fn issue_refresh_token(&self, client_id: &str) -> String {
        self.state().mint_refresh_token(client_id, None)
    }

    /// Mints a refresh token carrying a scope: answers to its `refresh_token` grant echo that
    /// scope when the request names none.
    pub fn issue_refresh_token_with_scope(&self, client_id: &str, scope: &str) -> String {
        self.state()
            .mint_refresh_token(client_id, Some(scope.to_owned()))
    }

    /// Whether a refresh token was issued and has not been used (or revoked) yet.
    pub fn refresh_token_is_live(&self, refresh_token: &str) -> bool {
        self.state().refresh_token_is_live(refresh_token)
    }

    /// The refresh tokens of a client that can still be used, in no particular order. With
    /// rotation working, a client that has been refreshing holds exactly one.
    pub fn live_refresh_tokens(&self, client_id: &str) -> Vec<String> {
        self.state().live_refresh_tokens(client_id)
    }

    /// Revokes a refresh token: using it afterwards gets `invalid_grant` (not counted as a
    /// reuse). Returns whether it was live.
    pub fn revoke_refresh_token(&self, refresh_token: &str) -> bool {
        self.state().revoke_refresh_token(refresh_token)
    }

    // ----- faults and outages -----

    /// Queues a fault for the next token request that finds the queue otherwise empty.
    ///
    /// # Panics
    ///
    /// If the fault carries a status code outside 100–999.
    #[track_caller]
    pub fn push_fault(&self, fault: Fault) {
        if let Some(status) = fault.status_code() {
            assert!(
                (100..=999).contains(&status),
                "fault status {status} is not an HTTP status code"
            );
        }
        self.state().faults.push_back(fault);
    }

    /// Queues several faults, in order.
    ///
    /// # Panics
    ///
    /// As [`Authority::push_fault`].
    #[track_caller]
    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        for fault in faults {
            self.push_fault(fault);
        }
    }

    /// Queues `times` copies of a fault: the next `times` token requests misbehave.
    ///
    /// # Panics
    ///
    /// As [`Authority::push_fault`].
    #[track_caller]
    pub fn script(&self, fault: Fault, times: usize) {
        self.push_faults(std::iter::repeat_n(fault, times));
    }

    /// How many queued faults have not been used yet.
    pub fn pending_faults(&self) -> usize {
        self.state().faults.len()
    }

    /// Forgets the queued faults.
    pub fn clear_faults(&self) {
        self.state().faults.clear();
    }

    /// Takes the authority down (every request, on any path, gets a `503` HTML page and
    /// consumes no fault) or brings it back up.
    pub fn set_down(&self, down: bool) {
        self.state().down = down;
    }

    /// Whether the authority is down.
    pub fn is_down(&self) -> bool {
        self.state().down
    }

    // ----- the request log -----

    /// Every request received so far, in order of arrival.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state().log.clone()
    }

    /// The number of requests received.
    pub fn request_count(&self) -> usize {
        self.state().log.len()
    }

    /// The number of requests matching a predicate.
    pub fn count_where(&self, predicate: impl Fn(&RequestRecord) -> bool) -> usize {
        self.state()
            .log
            .iter()
            .filter(|record| predicate(record))
            .count()
    }

    /// The number of requests with this `grant_type`.
    pub fn count_by_grant(&self, grant_type: &str) -> usize {
        self.count_where(|record| record.grant_type.as_deref() == Some(grant_type))
    }

    /// The number of requests answered with this status.
    pub fn count_by_status(&self, status: u16) -> usize {
        self.count_where(|record| record.status == Some(status))
    }

    /// The number of requests claiming this client id (authenticated or not).
    pub fn count_by_client(&self, client_id: &str) -> usize {
        self.count_where(|record| record.client_id.as_deref() == Some(client_id))
    }

    /// The number of requests that presented an already used refresh token. A correct client
    /// keeps this at zero.
    pub fn refresh_token_reuses(&self) -> usize {
        self.count_where(|record| record.refresh_token_reused)
    }

    /// The most requests the authority was answering at once (those it
    /// holds back with [`Fault::Delay`] included), since it started or
    /// since [`Authority::clear_requests`].
    pub fn peak_concurrent_requests(&self) -> usize {
        self.shared
            .peak_in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Forgets the request log (issued tokens and refresh tokens are kept).
    pub fn clear_requests(&self) {
        self.shared
            .peak_in_flight
            .store(0, std::sync::atomic::Ordering::SeqCst);
        self.state().log.clear();
    }

    /// Blocks the calling thread until at least `count` requests have been received, or
    /// `timeout` has passed. Returns whether the count was reached.
    pub fn wait_for_requests(&self, count: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |log| log.len() >= count)
    }

    /// Blocks the calling thread until `condition` holds for the request log, or `timeout`
    /// has passed, checking every few milliseconds. Returns whether the condition held.
    pub fn wait_until(
        &self,
        timeout: Duration,
        condition: impl Fn(&[RequestRecord]) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if condition(&self.state().log) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    // ----- issued tokens -----

    /// Every token handed out in a successful answer, in order.
    pub fn issued_tokens(&self) -> Vec<IssuedToken> {
        self.state().issued.clone()
    }

    /// The last token handed out.
    pub fn last_issued(&self) -> Option<IssuedToken> {
        self.state().issued.last().cloned()
    }

    /// The last access token handed out.
    pub fn last_access_token(&self) -> Option<String> {
        self.state()
            .issued
            .last()
            .map(|token| token.access_token.clone())
    }

    /// Whether an access token was issued by this authority, has not expired and was not
    /// [revoked](Authority::revoke): what a resource server checks (the
    /// [`ResourceServer`](crate::ResourceServer) asks exactly this).
    pub fn token_is_active(&self, access_token: &str) -> bool {
        self.state()
            .access_token_is_active(access_token, SystemTime::now())
    }

    /// Revokes an access token: from now on [`token_is_active`](Authority::token_is_active)
    /// says no, and a [`ResourceServer`](crate::ResourceServer) refuses it with `401`
    /// `invalid_token`. Returns whether it was issued here and not revoked before.
    pub fn revoke(&self, access_token: &str) -> bool {
        self.state().revoke_access_token(access_token)
    }

    /// The authority's state, for a resource server that checks tokens against it.
    pub(crate) fn shared_state(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    // ----- lifecycle -----

    /// Stops the server: closes the listening socket and every connection, and joins the
    /// server thread. Idempotent; dropping the handle does the same.
    pub fn shutdown(&self) {
        if !self.server.stop() {
            tracing::error!(addr = %self.addr, "the test authority thread panicked");
        }
    }
}

impl Drop for Authority {
    fn drop(&mut self) {
        self.shutdown();
    }
}
