//! The authority's state and the OAuth2 logic of the token endpoint, free of any HTTP plumbing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

use super::assertion::{
    self, AssertionError, AssertionJtis, Expected, PresentedAssertion, VerifyWith,
};
use super::client::{AuthMethod, Client};
use super::device::{DEVICE_CODE, DEVICE_PATH, Devices};
use super::dpop::{self, DpopError, DpopNonces, DpopProof, JtiCache};
use super::fault::Fault;
use super::record::{
    DpopCheck, DpopVerdict, IssuedToken, Outcome, PresentedAuth, PresentedCertificate,
    RequestRecord, TlsFailure, TlsSession,
};

/// Credentials found in the `Authorization` header.
#[derive(Debug)]
pub(crate) enum BasicCredentials {
    /// No `Authorization` header.
    Absent,
    /// A well-formed `Basic` header, already base64- and form-decoded.
    Present { id: String, secret: String },
    /// Another scheme, or a `Basic` header that does not decode.
    Malformed,
}

/// A request as the token endpoint sees it: its form parameters (empty when the body was not
/// a form), its `Authorization` header, the TLS session of its connection, its `DPoP` headers
/// and its URL as the client addressed it (scheme, `Host` and path), for DPoP's `htu`.
#[derive(Debug)]
pub(crate) struct FormRequest {
    pub(crate) params: Vec<(String, String)>,
    pub(crate) basic: BasicCredentials,
    pub(crate) tls: Option<TlsSession>,
    pub(crate) dpop: Vec<String>,
    pub(crate) url: String,
    /// The path requested: the token endpoint's, or the device authorization endpoint's.
    pub(crate) path: String,
}

impl FormRequest {
    fn first(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    fn all(&self, name: &str) -> Vec<String> {
        self.params
            .iter()
            .filter(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
            .collect()
    }

    fn count(&self, name: &str) -> usize {
        self.params.iter().filter(|(key, _)| key == name).count()
    }

    fn certificate(&self) -> Option<&PresentedCertificate> {
        self.tls
            .as_ref()
            .and_then(|tls| tls.client_certificate.as_ref())
    }
}

/// What the log can tell about a request before it is answered.
#[derive(Debug)]
pub(crate) struct Summary {
    pub(crate) tls: Option<TlsSession>,
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) grant_type: Option<String>,
    pub(crate) client_id: Option<String>,
    pub(crate) auth: PresentedAuth,
    pub(crate) scope: Option<String>,
    pub(crate) audience: Vec<String>,
    pub(crate) resource: Vec<String>,
    pub(crate) refresh_token: Option<String>,
    pub(crate) dpop: Option<DpopCheck>,
    pub(crate) client_assertion: Option<PresentedAssertion>,
    pub(crate) grant_assertion: Option<PresentedAssertion>,
    pub(crate) subject_token: Option<(String, String)>,
    pub(crate) actor_token: Option<(String, String)>,
    pub(crate) requested_token_type: Option<String>,
}

impl Summary {
    pub(crate) fn new(method: String, path: String, request: &FormRequest) -> Summary {
        let body_secret = request.first("client_secret").is_some();
        let client_assertion = request
            .first("client_assertion")
            .and_then(|jwt| assertion::read_assertion(jwt).ok());
        let presents_assertion = request.first("client_assertion").is_some();
        let auth = match (&request.basic, body_secret) {
            (BasicCredentials::Malformed, _) => PresentedAuth::Malformed,
            (BasicCredentials::Present { .. }, _) | (_, true) if presents_assertion => {
                PresentedAuth::Both
            }
            (BasicCredentials::Absent, false) if presents_assertion => PresentedAuth::Assertion,
            (BasicCredentials::Present { .. }, true) => PresentedAuth::Both,
            (BasicCredentials::Present { .. }, false) => PresentedAuth::Basic,
            (BasicCredentials::Absent, true) => PresentedAuth::Post,
            (BasicCredentials::Absent, false) if request.certificate().is_some() => {
                PresentedAuth::Certificate
            }
            (BasicCredentials::Absent, false) => PresentedAuth::None,
        };
        let client_id = match &request.basic {
            BasicCredentials::Present { id, .. } => Some(id.clone()),
            _ => request
                .first("client_id")
                .map(str::to_owned)
                .or_else(|| client_assertion.as_ref().and_then(|a| a.sub.clone())),
        };
        let owned = |name: &str| request.first(name).map(str::to_owned);
        Summary {
            tls: request.tls.clone(),
            method,
            path,
            grant_type: owned("grant_type"),
            client_id,
            auth,
            scope: owned("scope"),
            audience: request.all("audience"),
            resource: request.all("resource"),
            refresh_token: owned("refresh_token"),
            dpop: request.dpop.first().map(|proof| DpopCheck {
                proof: dpop::read_proof(proof).ok(),
                verdict: DpopVerdict::NotChecked,
            }),
            client_assertion,
            grant_assertion: request
                .first("assertion")
                .and_then(|jwt| assertion::read_assertion(jwt).ok()),
            subject_token: owned("subject_token")
                .map(|t| (t, owned("subject_token_type").unwrap_or_default())),
            actor_token: owned("actor_token")
                .map(|t| (t, owned("actor_token_type").unwrap_or_default())),
            requested_token_type: owned("requested_token_type"),
        }
    }
}

/// What to do with a request, decided when it arrives.
#[derive(Debug)]
pub(crate) enum Decision {
    /// The authority is down: 503.
    Down,
    /// Not the token endpoint: 404.
    NotFound,
    /// Apply this fault.
    Fault(Fault),
    /// Process normally.
    Normal,
}

/// The answer of normal processing.
#[derive(Debug)]
pub(crate) enum Reply {
    /// `200` with this JSON object.
    Token(Map<String, Value>),
    /// An RFC 6749 §5.2 error.
    Error {
        status: u16,
        error: &'static str,
        description: String,
    },
}

impl Reply {
    fn error(status: u16, error: &'static str, description: impl Into<String>) -> Reply {
        Reply::Error {
            status,
            error,
            description: description.into(),
        }
    }
}

#[derive(Debug)]
struct RefreshEntry {
    client_id: String,
    scope: Option<String>,
    status: RefreshStatus,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RefreshStatus {
    /// Can be used once.
    Live,
    /// Was used in a successful refresh; presenting it again is a reuse.
    Used,
    /// Was revoked by the test.
    Revoked,
}

/// Everything mutable, behind one lock.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) clients: HashMap<String, Client>,
    refresh_tokens: HashMap<String, RefreshEntry>,
    pub(crate) faults: VecDeque<Fault>,
    pub(crate) down: bool,
    pub(crate) log: Vec<RequestRecord>,
    pub(crate) issued: Vec<IssuedToken>,
    /// Access tokens revoked by the test.
    revoked: HashSet<String>,
    pub(crate) tls_failures: Vec<TlsFailure>,
    /// The DPoP nonce proofs must carry now, when nonces are required.
    pub(crate) dpop_nonce: Option<String>,
    /// The ids of the DPoP proofs accepted within the window.
    dpop_jtis: JtiCache,
    /// The ids of the assertions accepted, until they expire.
    assertion_jtis: AssertionJtis,
    /// The public keys of assertion issuers, for the JWT bearer grant.
    pub(crate) issuers: HashMap<String, Vec<Value>>,
    /// Tokens a token exchange accepts (RFC 8693): token, its type and its subject.
    pub(crate) exchange_tokens: HashMap<String, (String, String)>,
    /// The device codes handed out (RFC 8628).
    pub(crate) devices: Devices,
    next_seq: u64,
    token_counter: u64,
    rng: fastrand::Rng,
}

/// State shared by the server task and the [`Authority`](crate::Authority) handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) realm: String,
    pub(crate) default_lifetime: Duration,
    pub(crate) max_request_body: usize,
    pub(crate) dpop_nonces: DpopNonces,
    pub(crate) dpop_window: Duration,
    /// Requests being answered now, and the most ever at once.
    pub(crate) in_flight: std::sync::atomic::AtomicUsize,
    pub(crate) peak_in_flight: std::sync::atomic::AtomicUsize,
    /// The metadata documents and where the token endpoint is.
    pub(crate) discovery: super::discovery::Discovery,
    state: Mutex<State>,
}

/// Counts a request as in flight while it lives.
pub(crate) struct InFlight(Arc<Shared>);

impl InFlight {
    pub(crate) fn new(shared: &Arc<Shared>) -> Self {
        use std::sync::atomic::Ordering;
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(Arc::clone(shared))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The grants the authority supports.
const CLIENT_CREDENTIALS: &str = "client_credentials";
const REFRESH_TOKEN: &str = "refresh_token";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The token types of token exchange (RFC 8693 §3) the authority issues.
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// The `client_assertion_type` of JWT client assertions (RFC 7523 §2.2).
const JWT_CLIENT_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Parameters that must not be repeated (RFC 6749 §3.2).
const SINGLE_VALUED: [&str; 13] = [
    "grant_type",
    "client_id",
    "client_secret",
    "scope",
    "refresh_token",
    "client_assertion",
    "client_assertion_type",
    "assertion",
    "subject_token",
    "subject_token_type",
    "actor_token",
    "actor_token_type",
    "requested_token_type",
];

impl Shared {
    pub(crate) fn new(
        realm: String,
        default_lifetime: Duration,
        max_request_body: usize,
        seed: Option<u64>,
        dpop_nonces: DpopNonces,
        dpop_window: Duration,
    ) -> Shared {
        let mut rng = match seed {
            Some(seed) => fastrand::Rng::with_seed(seed),
            None => fastrand::Rng::new(),
        };
        let dpop_nonce = dpop_nonces.required().then(|| mint_nonce(&mut rng));
        Shared {
            realm,
            default_lifetime,
            max_request_body,
            dpop_nonces,
            dpop_window,
            in_flight: Default::default(),
            peak_in_flight: Default::default(),
            discovery: Default::default(),
            state: Mutex::new(State {
                clients: HashMap::new(),
                refresh_tokens: HashMap::new(),
                faults: VecDeque::new(),
                down: false,
                log: Vec::new(),
                issued: Vec::new(),
                revoked: HashSet::new(),
                tls_failures: Vec::new(),
                dpop_nonce,
                dpop_jtis: JtiCache::new(),
                assertion_jtis: AssertionJtis::new(),
                issuers: HashMap::new(),
                exchange_tokens: HashMap::new(),
                devices: Devices::default(),
                next_seq: 0,
                token_counter: 0,
                rng,
            }),
        }
    }

    /// Locks the state. A panic while holding the lock cannot leave it half-updated in a way
    /// that matters to a test, so poisoning is ignored.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Logs a request as pending and decides how to answer it.
    pub(crate) fn begin(
        &self,
        at: SystemTime,
        summary: Summary,
        token_endpoint: bool,
    ) -> (u64, Decision) {
        let mut state = self.lock();
        let decision = if state.down {
            Decision::Down
        } else if !token_endpoint {
            Decision::NotFound
        } else if let Some(fault) = state.faults.pop_front() {
            Decision::Fault(fault)
        } else {
            Decision::Normal
        };
        let seq = state.next_seq;
        state.next_seq += 1;
        let fault = match &decision {
            Decision::Fault(fault) => Some(fault.clone()),
            _ => None,
        };
        state.log.push(RequestRecord {
            seq,
            at,
            tls: summary.tls,
            method: summary.method,
            path: summary.path,
            grant_type: summary.grant_type,
            client_id: summary.client_id,
            authenticated: false,
            auth: summary.auth,
            scope: summary.scope,
            audience: summary.audience,
            resource: summary.resource,
            refresh_token: summary.refresh_token,
            refresh_token_reused: false,
            dpop: summary.dpop,
            client_assertion: summary.client_assertion,
            grant_assertion: summary.grant_assertion,
            subject_token: summary.subject_token,
            actor_token: summary.actor_token,
            requested_token_type: summary.requested_token_type,
            fault,
            status: None,
            outcome: Outcome::Pending,
        });
        (seq, decision)
    }

    /// Records the answer to a request.
    pub(crate) fn finish(&self, seq: u64, status: Option<u16>, outcome: Outcome) {
        let mut state = self.lock();
        if let Some(record) = state.record_mut(seq) {
            record.status = status;
            record.outcome = outcome;
        }
    }

    /// Marks a request whose answer was never decided as abandoned.
    pub(crate) fn abandon(&self, seq: u64) {
        let mut state = self.lock();
        if let Some(record) = state.record_mut(seq)
            && record.outcome == Outcome::Pending
        {
            record.outcome = Outcome::Abandoned;
        }
    }

    /// Processes a token request normally, applying `shape` (a [`Fault::MissingExpiresIn`] or
    /// [`Fault::UnknownTokenType`]) to a successful answer, and records the result. Returns
    /// the answer and the `DPoP-Nonce` to send with it, if any.
    pub(crate) fn process(
        &self,
        seq: u64,
        request: &FormRequest,
        shape: Option<&Fault>,
    ) -> (Reply, Option<String>) {
        let mut state = self.lock();
        let mut note = Note::default();
        let reply = state.process(self, request, shape, &mut note);
        let (status, outcome) = match &reply {
            Reply::Token(_) => (
                200,
                match note.user_code.take() {
                    Some(user_code) => Outcome::DeviceCodeIssued { user_code },
                    None => Outcome::Issued {
                        access_token: note.access_token.take().unwrap_or_default(),
                        refresh_token: note.refresh_token.take(),
                    },
                },
            ),
            Reply::Error { status, error, .. } => (
                *status,
                Outcome::Rejected {
                    error: (*error).to_owned(),
                },
            ),
        };
        if let Some(record) = state.record_mut(seq) {
            record.authenticated = note.authenticated;
            record.refresh_token_reused = note.reused;
            if let (Some(refused), Some(presented)) = (
                note.client_assertion_refused.take(),
                record.client_assertion.as_mut(),
            ) {
                presented.refused = Some(refused);
            }
            if let (Some(refused), Some(presented)) = (
                note.grant_assertion_refused.take(),
                record.grant_assertion.as_mut(),
            ) {
                presented.refused = Some(refused);
            }
            record.status = Some(status);
            record.outcome = outcome;
            if let Some(verdict) = note.dpop_verdict.take()
                && let Some(check) = record.dpop.as_mut()
            {
                check.verdict = verdict;
            }
        }
        (reply, note.dpop_nonce)
    }

    /// Makes a new DPoP nonce current (the old one is refused from now on) and returns it;
    /// `None` when the authority does not require nonces.
    pub(crate) fn rotate_dpop_nonce(&self) -> Option<String> {
        let mut state = self.lock();
        if !self.dpop_nonces.required() {
            return None;
        }
        let nonce = mint_nonce(&mut state.rng);
        state.dpop_nonce = Some(nonce.clone());
        Some(nonce)
    }
}

/// A fresh DPoP nonce: random, and visible ASCII as RFC 9449 §8.1 asks.
pub(crate) fn mint_nonce(rng: &mut fastrand::Rng) -> String {
    format!("nonce-{:016x}{:016x}", rng.u64(..), rng.u64(..))
}

/// Facts learned while processing, for the log.
#[derive(Default)]
struct Note {
    authenticated: bool,
    reused: bool,
    access_token: Option<String>,
    refresh_token: Option<String>,
    /// What became of the request's DPoP proof, once checked.
    dpop_verdict: Option<DpopVerdict>,
    /// The `DPoP-Nonce` to send with the answer.
    dpop_nonce: Option<String>,
    /// Why the client assertion was refused, if it was.
    client_assertion_refused: Option<AssertionError>,
    /// Why the grant's assertion was refused, if it was.
    grant_assertion_refused: Option<AssertionError>,
    /// The user code handed out by the device authorization endpoint.
    user_code: Option<String>,
}

impl State {
    fn record_mut(&mut self, seq: u64) -> Option<&mut RequestRecord> {
        self.log.iter_mut().rev().find(|record| record.seq == seq)
    }

    /// Makes a fresh token: `<prefix>-<counter>-<16 random hex digits>`.
    fn mint(&mut self, prefix: &str) -> String {
        self.token_counter += 1;
        let random = self.rng.u64(..);
        format!("{prefix}-{}-{random:016x}", self.token_counter)
    }

    /// Mints a refresh token bound to a client.
    pub(crate) fn mint_refresh_token(&mut self, client_id: &str, scope: Option<String>) -> String {
        let token = self.mint("rt");
        self.refresh_tokens.insert(
            token.clone(),
            RefreshEntry {
                client_id: client_id.to_owned(),
                scope,
                status: RefreshStatus::Live,
            },
        );
        token
    }

    /// Whether a refresh token exists and has not been used.
    pub(crate) fn refresh_token_is_live(&self, token: &str) -> bool {
        self.refresh_tokens
            .get(token)
            .is_some_and(|entry| entry.status == RefreshStatus::Live)
    }

    /// The unused refresh tokens of a client, in no particular order.
    pub(crate) fn live_refresh_tokens(&self, client_id: &str) -> Vec<String> {
        self.refresh_tokens
            .iter()
            .filter(|(_, entry)| {
                entry.status == RefreshStatus::Live && entry.client_id == client_id
            })
            .map(|(token, _)| token.clone())
            .collect()
    }

    /// Whether an access token was issued here, has not expired at `now` and was not revoked:
    /// what a resource server checks.
    pub(crate) fn access_token_is_active(&self, token: &str, now: SystemTime) -> bool {
        !self.revoked.contains(token)
            && self
                .issued
                .iter()
                .rev()
                .any(|issued| issued.access_token == token && issued.expires_at() > now)
    }

    /// The `jkt` of the DPoP key an access token issued here is bound to, if any.
    pub(crate) fn dpop_binding(&self, token: &str) -> Option<String> {
        self.issued
            .iter()
            .find(|issued| issued.access_token == token)
            .and_then(|issued| issued.dpop_jkt.clone())
    }

    /// Revokes an access token. Returns whether it was issued here and not revoked before.
    pub(crate) fn revoke_access_token(&mut self, token: &str) -> bool {
        self.issued
            .iter()
            .any(|issued| issued.access_token == token)
            && self.revoked.insert(token.to_owned())
    }

    /// Revokes a refresh token. Returns whether it was live.
    pub(crate) fn revoke_refresh_token(&mut self, token: &str) -> bool {
        match self.refresh_tokens.get_mut(token) {
            Some(entry) if entry.status == RefreshStatus::Live => {
                entry.status = RefreshStatus::Revoked;
                true
            }
            _ => false,
        }
    }

    fn process(
        &mut self,
        shared: &Shared,
        request: &FormRequest,
        shape: Option<&Fault>,
        note: &mut Note,
    ) -> Reply {
        if let Some(name) = SINGLE_VALUED.iter().find(|name| request.count(name) > 1) {
            return Reply::error(
                400,
                "invalid_request",
                format!("parameter {name} is repeated"),
            );
        }
        if request.path == DEVICE_PATH {
            return self.authorize_device(request, note);
        }
        let grant = match request.first("grant_type") {
            None => return Reply::error(400, "invalid_request", "missing grant_type"),
            Some(grant)
                if grant == CLIENT_CREDENTIALS
                    || grant == REFRESH_TOKEN
                    || grant == JWT_BEARER
                    || grant == TOKEN_EXCHANGE
                    || grant == DEVICE_CODE =>
            {
                grant
            }
            Some(other) => {
                return Reply::error(
                    400,
                    "unsupported_grant_type",
                    format!("grant type {other:?} is not supported"),
                );
            }
        };

        // The JWT bearer grant's assertion authenticates the request on its own: a client
        // that sends no credentials at all is not authenticated (RFC 7523 §3.1), and its
        // registration, if it names one, only shapes the token.
        let credentials = !matches!(request.basic, BasicCredentials::Absent)
            || request.first("client_secret").is_some()
            || request.first("client_assertion").is_some()
            || request.certificate().is_some();
        let (client, bound_to) = if (grant == JWT_BEARER || grant == TOKEN_EXCHANGE) && !credentials
        {
            let id = request.first("client_id").unwrap_or_default();
            let client = self
                .clients
                .get(id)
                .cloned()
                .unwrap_or_else(|| Client::new(id, ""));
            (client, None)
        } else {
            match self.authenticate(request, note) {
                Ok(authenticated) => {
                    note.authenticated = true;
                    authenticated
                }
                Err(reply) => return reply,
            }
        };

        let dpop_proof = match self.check_dpop(shared, request, &client) {
            Ok(proof) => {
                if proof.is_some() {
                    note.dpop_verdict = Some(DpopVerdict::Accepted);
                    note.dpop_nonce = self.dpop_nonce.clone();
                }
                proof
            }
            Err(error) => {
                if matches!(error, DpopError::NonceRequired { .. }) {
                    note.dpop_nonce = self.dpop_nonce.clone();
                }
                let reply = Reply::error(400, error.error_code(), error.to_string());
                note.dpop_verdict = Some(DpopVerdict::Refused(error));
                return reply;
            }
        };

        let mut subject = client.id.clone();
        let mut issued_token_type = None;
        let (scope, with_refresh_token) = if grant == TOKEN_EXCHANGE {
            match self.check_exchange(request) {
                Ok((sub, issued)) => {
                    subject = sub;
                    issued_token_type = Some(issued);
                }
                Err((error, description)) => return Reply::error(400, error, description),
            }
            (request.first("scope").map(str::to_owned), false)
        } else if grant == JWT_BEARER {
            match self.check_grant_assertion(request) {
                Ok(sub) => subject = sub,
                Err(error) => {
                    let reply = Reply::error(400, "invalid_grant", error.to_string());
                    note.grant_assertion_refused = Some(error);
                    return reply;
                }
            }
            (request.first("scope").map(str::to_owned), false)
        } else if grant == DEVICE_CODE {
            let polled =
                self.devices
                    .redeem(request.first("device_code"), &client.id, SystemTime::now());
            match polled {
                Ok(scope) => (scope, true),
                Err((error, description)) => return Reply::error(400, error, description),
            }
        } else if grant == REFRESH_TOKEN {
            let Some(presented) = request.first("refresh_token") else {
                return Reply::error(400, "invalid_request", "missing refresh_token");
            };
            let Some(entry) = self.refresh_tokens.get_mut(presented) else {
                return Reply::error(400, "invalid_grant", "unknown refresh token");
            };
            match entry.status {
                RefreshStatus::Live => {}
                RefreshStatus::Used => {
                    note.reused = true;
                    return Reply::error(400, "invalid_grant", "refresh token was already used");
                }
                RefreshStatus::Revoked => {
                    return Reply::error(400, "invalid_grant", "refresh token was revoked");
                }
            }
            if entry.client_id != client.id {
                return Reply::error(
                    400,
                    "invalid_grant",
                    "refresh token was issued to another client",
                );
            }
            entry.status = RefreshStatus::Used;
            let scope = request
                .first("scope")
                .map(str::to_owned)
                .or_else(|| entry.scope.clone());
            (scope, true)
        } else {
            (
                request.first("scope").map(str::to_owned),
                client.issue_refresh_tokens,
            )
        };

        let access_token = self.mint("at");
        let refresh_token =
            with_refresh_token.then(|| self.mint_refresh_token(&client.id, scope.clone()));
        let expires_in = client
            .token_lifetime
            .unwrap_or(shared.default_lifetime)
            .as_secs();

        let mut body = Map::new();
        body.insert("access_token".into(), access_token.clone().into());
        let dpop_bound = dpop_proof.is_some();
        let token_type = match issued_token_type {
            _ if dpop_bound => "DPoP",
            Some(JWT_TOKEN_TYPE) => "N_A",
            _ => "Bearer",
        };
        body.insert("token_type".into(), token_type.into());
        if let Some(issued) = issued_token_type {
            body.insert("issued_token_type".into(), issued.into());
        }
        let expires_value = if client.expires_in_as_string {
            Value::from(expires_in.to_string())
        } else {
            Value::from(expires_in)
        };
        body.insert("expires_in".into(), expires_value);
        if let Some(scope) = &scope {
            body.insert("scope".into(), scope.clone().into());
        }
        if let Some(refresh_token) = &refresh_token {
            body.insert("refresh_token".into(), refresh_token.clone().into());
        }
        for (name, value) in &client.extra_fields {
            body.insert(name.clone(), value.clone());
        }
        match shape {
            Some(Fault::MissingExpiresIn) => {
                body.remove("expires_in");
            }
            Some(Fault::UnknownTokenType(token_type)) => {
                body.insert("token_type".into(), token_type.clone().into());
            }
            _ => {}
        }

        self.issued.push(IssuedToken {
            access_token: access_token.clone(),
            client_id: client.id.clone(),
            grant_type: grant.to_owned(),
            scope,
            expires_in,
            refresh_token: refresh_token.clone(),
            issued_at: SystemTime::now(),
            bound_to,
            dpop_jkt: dpop_proof.map(|proof| proof.jkt),
            subject,
        });
        if dpop_bound && shared.dpop_nonces == DpopNonces::FreshPerToken {
            // This token used the nonce up: the answer hands out the next one.
            let nonce = mint_nonce(&mut self.rng);
            self.dpop_nonce = Some(nonce.clone());
            note.dpop_nonce = Some(nonce);
        }
        note.access_token = Some(access_token);
        note.refresh_token = refresh_token;
        Reply::Token(body)
    }

    /// The device authorization endpoint (RFC 8628 §3.1, §3.2): the client authenticates as at
    /// the token endpoint, and gets codes for its scope.
    fn authorize_device(&mut self, request: &FormRequest, note: &mut Note) -> Reply {
        let client = match self.authenticate(request, note) {
            Ok((client, _)) => {
                note.authenticated = true;
                client
            }
            Err(reply) => return reply,
        };
        let scope = request.first("scope").map(str::to_owned);
        let (body, user_code) = self.devices.issue(
            &mut self.rng,
            &client.id,
            scope,
            &request.url,
            SystemTime::now(),
        );
        note.user_code = Some(user_code);
        Reply::Token(body)
    }

    /// Checks the request's DPoP proof (RFC 9449 §4.3, and §8 for the nonce) for an
    /// authenticated client: `Ok(None)` when there is none and the client may go without, the
    /// accepted proof (its `jti` now remembered), or why it was refused.
    fn check_dpop(
        &mut self,
        shared: &Shared,
        request: &FormRequest,
        client: &Client,
    ) -> Result<Option<DpopProof>, DpopError> {
        let proof = match request.dpop.as_slice() {
            [] if client.require_dpop => return Err(DpopError::Missing),
            [] => return Ok(None),
            [proof] => proof,
            _ => return Err(DpopError::Multiple),
        };
        let now = SystemTime::now();
        let proof = dpop::verify_proof(proof, "POST", &request.url, None, now, shared.dpop_window)?;
        if shared.dpop_nonces.required() && proof.nonce != self.dpop_nonce {
            return Err(DpopError::NonceRequired {
                presented: proof.nonce.clone(),
            });
        }
        self.dpop_jtis
            .check_and_insert(&proof, now, shared.dpop_window)?;
        Ok(Some(proof))
    }

    /// Authenticates the client by its registered method (RFC 6749 §2.3.1, RFC 8705 §2).
    /// Returns the client and, when it authenticated with a certificate, that certificate's
    /// thumbprint, to which the token is bound.
    fn authenticate(
        &mut self,
        request: &FormRequest,
        note: &mut Note,
    ) -> Result<(Client, Option<String>), Reply> {
        let invalid_client = |description: String| Reply::error(401, "invalid_client", description);
        let body_id = request.first("client_id");
        let body_secret = request.first("client_secret");
        if let Some(jwt) = request.first("client_assertion") {
            if !matches!(request.basic, BasicCredentials::Absent) || body_secret.is_some() {
                return Err(Reply::error(
                    400,
                    "invalid_request",
                    "more than one client authentication method was used",
                ));
            }
            return self.authenticate_by_assertion(jwt, request, note);
        }

        let (id, secret, method) = match (&request.basic, body_secret) {
            (BasicCredentials::Malformed, _) => {
                return Err(invalid_client(
                    "the Authorization header is not a well-formed Basic credential".into(),
                ));
            }
            (BasicCredentials::Present { .. }, Some(_)) => {
                return Err(Reply::error(
                    400,
                    "invalid_request",
                    "more than one client authentication method was used",
                ));
            }
            (BasicCredentials::Present { id, secret }, None) => {
                if body_id.is_some_and(|body_id| body_id != id) {
                    return Err(Reply::error(
                        400,
                        "invalid_request",
                        "client_id in the body does not match the Authorization header",
                    ));
                }
                (id.as_str(), secret.as_str(), AuthMethod::Basic)
            }
            (BasicCredentials::Absent, Some(secret)) => {
                let Some(id) = body_id else {
                    return Err(Reply::error(
                        400,
                        "invalid_request",
                        "client_secret without client_id",
                    ));
                };
                (id, secret, AuthMethod::Post)
            }
            (BasicCredentials::Absent, None) => {
                return match body_id {
                    Some(id) => self.authenticate_by_certificate(id, request.certificate()),
                    None => Err(invalid_client("client authentication is required".into())),
                };
            }
        };

        let Some(client) = self.clients.get(id) else {
            return Err(invalid_client(format!("unknown client {id:?}")));
        };
        if client.auth_method != method {
            return Err(invalid_client(format!(
                "client {id:?} is registered for {}, not {}",
                client.auth_method, method
            )));
        }
        if client.secret != secret {
            return Err(invalid_client(format!("wrong secret for client {id:?}")));
        }
        Ok((client.clone(), None))
    }

    /// Authenticates a client by its `client_assertion` (RFC 7523 §2.2, §3).
    fn authenticate_by_assertion(
        &mut self,
        jwt: &str,
        request: &FormRequest,
        note: &mut Note,
    ) -> Result<(Client, Option<String>), Reply> {
        let invalid_client = |description: String| Reply::error(401, "invalid_client", description);
        if request.first("client_assertion_type") != Some(JWT_CLIENT_ASSERTION) {
            return Err(Reply::error(
                400,
                "invalid_request",
                "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ));
        }
        let claimed = assertion::read_assertion(jwt).ok().and_then(|a| a.sub);
        let Some(id) = request.first("client_id").map(str::to_owned).or(claimed) else {
            return Err(invalid_client(
                "the client assertion names no client".into(),
            ));
        };
        let Some(client) = self.clients.get(&id).cloned() else {
            return Err(invalid_client(format!("unknown client {id:?}")));
        };
        let keys = match client.auth_method {
            AuthMethod::PrivateKeyJwt => VerifyWith::PublicKeys(&client.public_keys),
            AuthMethod::ClientSecretJwt => VerifyWith::Secret(client.secret.as_bytes()),
            other => {
                return Err(invalid_client(format!(
                    "client {id:?} is registered for {other}, not a client assertion"
                )));
            }
        };
        let audiences = audiences(&request.url);
        let expected = Expected {
            iss: Some(&id),
            sub: Some(&id),
            audiences: &audiences,
            max_lifetime: assertion::DEFAULT_MAX_ASSERTION_LIFETIME,
        };
        let now = SystemTime::now();
        let checked = assertion::verify_assertion(jwt, keys, &expected, now)
            .and_then(|presented| self.assertion_jtis.check_and_insert(&presented, now));
        if let Err(error) = checked {
            let reply = invalid_client(error.to_string());
            note.client_assertion_refused = Some(error);
            return Err(reply);
        }
        Ok((client, None))
    }

    /// Checks a token exchange (RFC 8693 §2.1): its subject token is one the test registered
    /// with that type, or an access token this authority issued and still holds active (type
    /// `access_token`); an actor token, when present, likewise; the requested type is
    /// `access_token` or `jwt`. The subject, and the type of token to issue; or the error
    /// code and description.
    fn check_exchange(
        &self,
        request: &FormRequest,
    ) -> Result<(String, &'static str), (&'static str, String)> {
        let (Some(token), Some(token_type)) = (
            request.first("subject_token"),
            request.first("subject_token_type"),
        ) else {
            return Err((
                "invalid_request",
                "subject_token and subject_token_type are required".into(),
            ));
        };
        let subject = self
            .exchange_subject(token, token_type)
            .ok_or(("invalid_grant", "the subject token is not valid".to_owned()))?;
        match (
            request.first("actor_token"),
            request.first("actor_token_type"),
        ) {
            (None, None) => {}
            (Some(actor), Some(actor_type)) => {
                self.exchange_subject(actor, actor_type)
                    .ok_or(("invalid_grant", "the actor token is not valid".to_owned()))?;
            }
            _ => {
                return Err((
                    "invalid_request",
                    "actor_token and actor_token_type go together".into(),
                ));
            }
        }
        let issued = match request.first("requested_token_type") {
            None | Some(ACCESS_TOKEN_TYPE) => ACCESS_TOKEN_TYPE,
            Some(JWT_TOKEN_TYPE) => JWT_TOKEN_TYPE,
            Some(other) => {
                return Err((
                    "invalid_request",
                    format!("cannot issue a token of type {other:?}"),
                ));
            }
        };
        Ok((subject, issued))
    }

    /// Whom a token presented for exchange is about, if the authority accepts it.
    fn exchange_subject(&self, token: &str, token_type: &str) -> Option<String> {
        if let Some((registered_type, subject)) = self.exchange_tokens.get(token) {
            return (registered_type == token_type).then(|| subject.clone());
        }
        if token_type != ACCESS_TOKEN_TYPE || !self.access_token_is_active(token, SystemTime::now())
        {
            return None;
        }
        self.issued
            .iter()
            .find(|issued| issued.access_token == token)
            .map(|issued| issued.subject.clone())
    }

    /// Checks a JWT bearer grant's assertion against the keys of its issuer; its subject.
    fn check_grant_assertion(&mut self, request: &FormRequest) -> Result<String, AssertionError> {
        let jwt = request
            .first("assertion")
            .ok_or_else(|| AssertionError::Malformed("no assertion parameter".into()))?;
        let presented = assertion::read_assertion(jwt)?;
        let issuer = presented.iss.clone().unwrap_or_default();
        let keys = self.issuers.get(&issuer).cloned().unwrap_or_default();
        if keys.is_empty() {
            return Err(AssertionError::WrongIdentity(format!(
                "iss {issuer:?} is not a registered issuer"
            )));
        }
        let audiences = audiences(&request.url);
        let expected = Expected {
            iss: Some(&issuer),
            sub: None,
            audiences: &audiences,
            max_lifetime: assertion::DEFAULT_MAX_ASSERTION_LIFETIME,
        };
        let now = SystemTime::now();
        let verified =
            assertion::verify_assertion(jwt, VerifyWith::PublicKeys(&keys), &expected, now)?;
        let subject = verified
            .sub
            .clone()
            .filter(|sub| !sub.is_empty())
            .ok_or_else(|| AssertionError::WrongIdentity("has no sub".into()))?;
        self.assertion_jtis.check_and_insert(&verified, now)?;
        Ok(subject)
    }

    /// Authenticates a client that sent its id and no secret, by the certificate its connection
    /// presented (RFC 8705 §2).
    fn authenticate_by_certificate(
        &self,
        id: &str,
        certificate: Option<&PresentedCertificate>,
    ) -> Result<(Client, Option<String>), Reply> {
        let invalid_client = |description: String| Reply::error(401, "invalid_client", description);
        let Some(client) = self.clients.get(id) else {
            return Err(invalid_client(format!("unknown client {id:?}")));
        };
        if !client.auth_method.uses_certificate() {
            return Err(invalid_client(format!(
                "client {id:?} is registered for {} and sent no secret",
                client.auth_method
            )));
        }
        let Some(certificate) = certificate else {
            return Err(invalid_client(format!(
                "client {id:?} is registered for {} and presented no client certificate",
                client.auth_method
            )));
        };
        let accepted = match client.auth_method {
            AuthMethod::TlsClientAuth => {
                if !certificate.chains_to_client_ca {
                    return Err(invalid_client(format!(
                        "the certificate of client {id:?} is not issued by the client CA"
                    )));
                }
                certificate.common_name.as_deref() == Some(id)
                    || certificate.alt_names.iter().any(|name| name == id)
            }
            _ => client.thumbprints.contains(&certificate.x5t_s256),
        };
        if !accepted {
            return Err(invalid_client(format!(
                "the client certificate does not match the registration of client {id:?}"
            )));
        }
        Ok((client.clone(), Some(certificate.x5t_s256.clone())))
    }
}

/// The audiences an assertion may name: the token endpoint as the client addressed it, and
/// the issuer (the URL without its path).
fn audiences(token_url: &str) -> Vec<String> {
    let mut out = vec![token_url.to_owned()];
    if let Ok(mut url) = url::Url::parse(token_url) {
        url.set_path("");
        url.set_query(None);
        let issuer = url.to_string();
        out.push(issuer.trim_end_matches('/').to_owned());
        out.push(issuer);
    }
    out
}
