//! The middleware scenarios of the testkit, run through `BearerAgent` (ureq 3, the watcher on
//! `tokenkeeper-blocking`'s threads), plus what is particular to ureq: its
//! `http_status_as_error` default, and the middleware added by hand (no retry).

use std::io::Cursor;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokenkeeper_blocking::TokenWatcher;
use tokenkeeper_driver::dpop::DpopKey;
use tokenkeeper_testkit::middleware::{
    Answer, ClientSpec, Fixture, MiddlewareAdapter, MiddlewareClient, Outgoing, Payload,
};
use tokenkeeper_ureq::{AttachPolicy, BearerAgent, BearerMiddleware};
use ureq::config::Config;
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};
use ureq::{Agent, SendBody};

/// Resolves the scenario's names (and IP literals) to the resource server, nothing else.
#[derive(Debug)]
struct MapResolver(Arc<Vec<(String, SocketAddr)>>);

impl Resolver for MapResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        _: &Config,
        _: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let host = uri.host().ok_or(ureq::Error::HostNotFound)?;
        let port = uri.port_u16().unwrap_or(80);
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addr = match bare.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, port),
            Err(_) => self
                .0
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(host))
                .map(|(_, addr)| *addr)
                .ok_or(ureq::Error::HostNotFound)?,
        };
        let mut addrs = self.empty();
        addrs.push(addr);
        Ok(addrs)
    }
}

fn policy(spec: &ClientSpec) -> AttachPolicy {
    AttachPolicy::for_origins(&spec.allowed_origins).expect("valid origins")
}

fn watcher(spec: &ClientSpec) -> TokenWatcher {
    let builder = TokenWatcher::builder(spec.client.clone());
    let builder = if spec.dpop {
        builder.dpop(DpopKey::generate_es256().expect("a key"))
    } else {
        builder
    };
    builder.spawn().expect("the watcher starts")
}

fn agent(spec: &ClientSpec, watcher: &TokenWatcher, status_as_error: bool) -> BearerAgent {
    let names = Arc::new(spec.resolve.clone());
    let config = Agent::config_builder()
        .http_status_as_error(status_as_error)
        .timeout_global(Some(spec.request_timeout));
    BearerAgent::with_agent(config, watcher.clone(), policy(spec), move |config| {
        Agent::with_parts(config, DefaultConnector::default(), MapResolver(names))
    })
}

struct Ureq;

struct Client {
    watcher: TokenWatcher,
    agent: BearerAgent,
}

impl MiddlewareAdapter for Ureq {
    const NAME: &'static str = "ureq";
    const REPLAYS_BODIES: bool = false;
    type Client = Client;

    fn client(spec: ClientSpec) -> Client {
        let watcher = watcher(&spec);
        let agent = agent(&spec, &watcher, false);
        Client { watcher, agent }
    }
}

fn answer(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Answer, String> {
    let mut response = result.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get(ureq::http::header::WWW_AUTHENTICATE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let body = response
        .body_mut()
        .read_to_vec()
        .map_err(|e| e.to_string())?;
    Ok(Answer::new(status, challenge, body))
}

fn send(
    agent: &Agent,
    outgoing: Outgoing,
) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
    let url = outgoing.url.as_str();
    match (outgoing.method, outgoing.payload) {
        ("GET", Payload::Empty) => {
            let mut request = agent.get(url);
            if let Some(value) = &outgoing.authorization {
                request = request.header("authorization", value);
            }
            request.call()
        }
        ("POST", Payload::Replayable(bytes)) => agent.post(url).send(&bytes[..]),
        ("POST", Payload::OneShot(bytes)) => agent
            .post(url)
            .send(SendBody::from_owned_reader(Cursor::new(bytes))),
        (method, payload) => unreachable!("{method} {payload:?} is not a scenario request"),
    }
}

impl MiddlewareClient for Client {
    fn send(&self, outgoing: Outgoing) -> Result<Answer, String> {
        answer(send(&self.agent, outgoing))
    }

    fn current_token(&self) -> Option<String> {
        self.watcher
            .token()
            .ok()
            .map(|t| t.access_token.expose_secret().to_owned())
    }

    fn shutdown(self) {
        self.watcher.shutdown();
    }
}

tokenkeeper_testkit::middleware_tests!(Ureq);

/// With ureq's default `http_status_as_error(true)` the 401 reaches the middleware as an
/// error without headers: it still counts as a refusal, and the retry succeeds.
#[test]
fn status_as_error_agent_retries_too() {
    let fixture = Fixture::start();
    let spec = fixture.spec();
    let watcher = watcher(&spec);
    let agent = agent(&spec, &watcher, true);
    let old = watcher
        .token()
        .expect("a token")
        .access_token
        .expose_secret()
        .to_owned();
    assert!(fixture.authority.revoke(&old));
    let before = fixture.token_requests();
    let response = agent
        .get(fixture.api.url("/orders"))
        .call()
        .expect("the retry succeeds");
    assert_eq!(response.status(), 200);
    assert_eq!(fixture.token_requests(), before + 1);
    let log = fixture.api.requests();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0].status, 401);
    assert_eq!(log[1].status, 200);
    // A 403 stays an error, unretried.
    fixture.api.forbid(true);
    let error = agent
        .get(fixture.api.url("/admin"))
        .call()
        .expect_err("403");
    assert!(matches!(error, ureq::Error::StatusCode(403)), "{error}");
    assert_eq!(fixture.api.request_count(), 3);
    watcher.shutdown();
}

/// Added by hand to a config, the middleware attaches tokens and reports a refusal (the next
/// request carries a new token), but cannot retry.
#[test]
fn middleware_by_hand_reports_but_does_not_retry() {
    let fixture = Fixture::start();
    let spec = fixture.spec();
    let watcher = watcher(&spec);
    let names = Arc::new(spec.resolve.clone());
    let config = Agent::config_builder()
        .http_status_as_error(false)
        .middleware(BearerMiddleware::new(watcher.clone(), policy(&spec)))
        .build();
    let agent = Agent::with_parts(config, DefaultConnector::default(), MapResolver(names));
    let old = watcher.token().expect("a token").into_arc();
    assert!(fixture.authority.revoke(old.access_token.expose_secret()));
    let refused = agent
        .get(fixture.api.url("/orders"))
        .call()
        .expect("an answer");
    assert_eq!(refused.status(), 401);
    assert_eq!(fixture.api.request_count(), 1);
    // The refusal was reported: a new token comes without anyone asking again.
    let new = watcher.changed_from(&old).expect("a new token");
    let served = agent
        .get(fixture.api.url("/orders"))
        .call()
        .expect("an answer");
    assert_eq!(served.status(), 200);
    let log = fixture.api.requests();
    assert_eq!(
        log[1].bearer_token(),
        Some(new.access_token.expose_secret())
    );
    watcher.shutdown();
}
