//! Unit tests of the refresher, driven by hand in virtual time.

use std::time::Duration;

use super::*;
use crate::cache::{CacheKey, EncodedRecord, encode_record};
use crate::error::{CacheErrorKind, ErrorClass, OAuthError};
use crate::jitter::Jitter;
use crate::oauth2::OAuth2Client;
use crate::oauth2::dpop::DpopClaims;
use crate::policy::LifetimePolicy;
use crate::secret::{AccessToken, ClientId, ClientSecret};
use std::collections::VecDeque;

const T0: Timestamp = Timestamp::from_secs(1_700_000_000);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn key() -> CacheKey {
    CacheKey::custom("unit", &[])
}

fn grant(name: &str, life: u64) -> TokenGrant {
    TokenGrant::bearer(AccessToken::new(name), Some(secs(life)))
}

fn record_at(name: &str, issued: Timestamp, life: u64) -> TokenRecord {
    LifetimePolicy::default().record(grant(name, life), issued, None)
}

fn encoded(name: &str, issued: Timestamp, life: u64) -> Vec<u8> {
    encode_record(&key(), &record_at(name, issued, life))
        .bytes()
        .to_vec()
}

struct H {
    r: Refresher,
    now: Timestamp,
    effects: VecDeque<Effect>,
    events: Vec<Event>,
}

impl H {
    fn new(config: RefresherConfig) -> Self {
        let mut h = H {
            r: Refresher::new(config, 7, T0),
            now: T0,
            effects: VecDeque::new(),
            events: Vec::new(),
        };
        h.drain();
        h
    }

    fn custom() -> RefresherConfig {
        RefresherConfig::custom(key()).jitter(Jitter::none())
    }

    fn drain(&mut self) {
        while let Some(e) = self.r.poll_effect() {
            self.effects.push_back(e);
        }
        while let Some(e) = self.r.poll_event() {
            self.events.push(e);
        }
    }

    fn next(&mut self) -> Effect {
        self.drain();
        self.effects
            .pop_front()
            .unwrap_or_else(|| panic!("no effect; events {:?}", self.events))
    }

    fn no_effect(&mut self) {
        self.drain();
        assert!(self.effects.is_empty(), "{:?}", self.effects);
    }

    fn at(&mut self, t: Timestamp) {
        self.now = t;
        self.r.handle_timeout(t);
        self.drain();
    }

    fn advance(&mut self, d: Duration) {
        let t = self.now.saturating_add(d);
        self.at(t);
    }

    fn expect_fetch(&mut self) -> EffectId {
        match self.next() {
            Effect::Fetch { id, .. } => id,
            other => panic!("expected a fetch, got {other:?}"),
        }
    }

    fn expect_read(&mut self, layer: usize) -> EffectId {
        match self.next() {
            Effect::ReadCache { id, layer: l } if l == layer => id,
            other => panic!("expected a read of {layer}, got {other:?}"),
        }
    }

    fn expect_write(&mut self, layer: usize) -> (EffectId, EncodedRecord) {
        match self.next() {
            Effect::WriteCache {
                id,
                layer: l,
                record,
            } if l == layer => (id, record),
            other => panic!("expected a write of {layer}, got {other:?}"),
        }
    }

    fn expect_lease(&mut self, layer: usize) -> EffectId {
        match self.next() {
            Effect::AcquireLease { id, layer: l, .. } if l == layer => id,
            other => panic!("expected a lease on {layer}, got {other:?}"),
        }
    }

    fn expect_release(&mut self, layer: usize) {
        match self.next() {
            Effect::ReleaseLease { layer: l } if l == layer => {}
            other => panic!("expected a release of {layer}, got {other:?}"),
        }
    }

    fn grant(&mut self, id: EffectId, result: Result<TokenGrant, FetchError>) {
        self.r.handle_grant(self.now, id, result).unwrap();
        self.drain();
    }

    fn read(&mut self, id: EffectId, bytes: Option<Vec<u8>>) {
        self.r.handle_cache_read(self.now, id, Ok(bytes)).unwrap();
        self.drain();
    }

    fn written(&mut self, id: EffectId) {
        self.r.handle_cache_written(self.now, id, Ok(())).unwrap();
        self.drain();
    }

    fn lease(&mut self, id: EffectId, outcome: LeaseOutcome) {
        self.r.handle_lease(self.now, id, outcome).unwrap();
        self.drain();
    }

    fn access(&self) -> Option<String> {
        self.r
            .token()
            .map(|t| t.access_token.expose_secret().to_owned())
    }

    fn changed_count(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, Event::TokenChanged { .. }))
            .count()
    }
}

fn unavailable() -> FetchError {
    FetchError::Status {
        status: 503,
        snippet: String::new(),
        retry_after: None,
    }
}

#[test]
fn without_layers_it_fetches_and_refreshes_at_the_stale_time() {
    let mut h = H::new(H::custom());
    let id = h.expect_fetch();
    assert!(h.r.status(h.now).fetch_in_flight);
    h.grant(id, Ok(grant("a", 3600)));
    assert_eq!(h.access().as_deref(), Some("a"));
    assert_eq!(h.r.poll_timeout(), Some(T0.saturating_add(secs(2700))));
    h.no_effect();
    // Early and spurious timeouts do nothing.
    h.at(T0.saturating_add(secs(100)));
    h.at(T0.saturating_add(secs(2699)));
    h.no_effect();
    h.at(T0.saturating_add(secs(2700)));
    let id = h.expect_fetch();
    h.grant(id, Ok(grant("b", 3600)));
    assert_eq!(h.access().as_deref(), Some("b"));
}

#[test]
fn a_fresh_cached_token_is_served_without_a_fetch() {
    let mut h = H::new(H::custom().layer(Layer::new("file")));
    let id = h.expect_read(0);
    h.read(
        id,
        Some(encoded("cached", T0.saturating_sub(secs(60)), 3600)),
    );
    assert_eq!(h.access().as_deref(), Some("cached"));
    assert!(matches!(
        h.events[0],
        Event::TokenChanged {
            origin: Origin::Cache { layer: 0 },
            ..
        }
    ));
    h.no_effect();
}

#[test]
fn a_stale_cached_token_is_served_and_refreshed() {
    let mut h = H::new(H::custom().layer(Layer::new("file")));
    let id = h.expect_read(0);
    h.read(
        id,
        Some(encoded("old", T0.saturating_sub(secs(3000)), 3600)),
    );
    assert_eq!(h.access().as_deref(), Some("old"));
    let id = h.expect_fetch();
    h.grant(id, Ok(grant("new", 3600)));
    assert_eq!(h.access().as_deref(), Some("new"));
    let (id, record) = h.expect_write(0);
    let back = crate::cache::decode_record(&key(), record.bytes()).unwrap();
    assert_eq!(back.access_token.expose_secret(), "new");
    h.written(id);
    h.no_effect();
}

#[test]
fn expired_and_corrupt_records_are_misses_and_get_replaced() {
    for bytes in [
        encoded("dead", T0.saturating_sub(secs(7200)), 3600),
        b"{\"format\":\"tokenkeeper-cache-record\",\"vers".to_vec(),
        b"\x00\xffnot json".to_vec(),
    ] {
        let mut h = H::new(H::custom().layer(Layer::new("file")));
        let id = h.expect_read(0);
        h.read(id, Some(bytes));
        assert_eq!(h.access(), None);
        let id = h.expect_fetch();
        h.grant(id, Ok(grant("new", 3600)));
        let (id, _) = h.expect_write(0);
        h.written(id);
    }
    let mut h = H::new(H::custom().layer(Layer::new("file")));
    let id = h.expect_read(0);
    h.r.handle_cache_read(
        h.now,
        id,
        Err(CacheError::new(CacheErrorKind::Io, "permission denied")),
    )
    .unwrap();
    h.drain();
    assert!(h.events.iter().any(|e| matches!(
        e,
        Event::CacheProblem {
            layer: 0,
            problem: CacheProblem::Read(_)
        }
    )));
    let _ = h.expect_fetch();
}

#[test]
fn layers_are_read_in_order_and_a_later_hit_fills_earlier_layers() {
    let mut h = H::new(
        H::custom()
            .layer(Layer::new("memory"))
            .layer(Layer::new("redis")),
    );
    let id = h.expect_read(0);
    h.read(id, None);
    let id = h.expect_read(1);
    h.read(id, Some(encoded("shared", T0, 3600)));
    assert_eq!(h.access().as_deref(), Some("shared"));
    let (id, _) = h.expect_write(0);
    h.written(id);
    h.no_effect();
}

#[test]
fn a_fresh_hit_in_the_first_layer_skips_the_rest() {
    let mut h = H::new(H::custom().layer(Layer::new("a")).layer(Layer::new("b")));
    let id = h.expect_read(0);
    h.read(id, Some(encoded("first", T0, 3600)));
    h.no_effect();
    assert_eq!(h.access().as_deref(), Some("first"));
}

fn leased() -> RefresherConfig {
    H::custom().layer(Layer::new("shared").with_lease(LeaseSettings::default()))
}

#[test]
fn the_lease_is_taken_before_fetching_and_released_after_the_write() {
    let mut h = H::new(leased());
    let id = h.expect_read(0);
    h.read(id, None);
    let id = h.expect_lease(0);
    h.lease(id, LeaseOutcome::Acquired);
    // Re-read under the lease: somebody may have just stored a token.
    let id = h.expect_read(0);
    h.read(id, None);
    let id = h.expect_fetch();
    h.grant(id, Ok(grant("mine", 3600)));
    let (id, _) = h.expect_write(0);
    h.no_effect();
    h.written(id);
    h.expect_release(0);
}

#[test]
fn a_busy_lease_means_wait_and_reread_not_fetch() {
    let mut h = H::new(leased());
    let id = h.expect_read(0);
    h.read(id, None);
    let id = h.expect_lease(0);
    h.lease(id, LeaseOutcome::HeldByOther);
    h.no_effect();
    let Some(Event::LeaseBusy { retry_at, .. }) = h.events.last().cloned() else {
        panic!("{:?}", h.events)
    };
    let wait = retry_at.duration_since(h.now);
    assert!(
        wait >= Duration::from_millis(500) && wait <= secs(1),
        "{wait:?}"
    );
    h.at(retry_at);
    let id = h.expect_read(0);
    // The holder has written meanwhile.
    h.read(id, Some(encoded("theirs", retry_at, 3600)));
    assert_eq!(h.access().as_deref(), Some("theirs"));
    h.no_effect();
}

#[test]
fn a_store_notification_ends_the_lease_wait_early() {
    let mut h = H::new(leased());
    let id = h.expect_read(0);
    h.read(id, None);
    let id = h.expect_lease(0);
    h.lease(id, LeaseOutcome::HeldByOther);
    h.r.handle_cache_changed(h.now, 0);
    let id = h.expect_read(0);
    h.read(id, Some(encoded("theirs", h.now, 3600)));
    assert_eq!(h.access().as_deref(), Some("theirs"));
}

#[test]
fn an_unreachable_lease_store_does_not_stop_the_fetch() {
    let mut h = H::new(leased());
    let id = h.expect_read(0);
    h.read(id, None);
    let id = h.expect_lease(0);
    h.lease(
        id,
        LeaseOutcome::Failed(CacheError::new(CacheErrorKind::Unavailable, "down")),
    );
    let id = h.expect_read(0);
    h.read(id, None);
    let id = h.expect_fetch();
    h.grant(id, Ok(grant("mine", 3600)));
    assert_eq!(h.access().as_deref(), Some("mine"));
    let (id, _) = h.expect_write(0);
    h.written(id);
    // Nothing to release: the lease was never held.
    h.no_effect();
}

#[test]
fn on_failure_the_lease_is_held_through_the_backoff_or_released_at_once() {
    for hold in [true, false] {
        let settings = LeaseSettings {
            hold_through_backoff: hold,
            ..LeaseSettings::default()
        };
        let mut h = H::new(H::custom().layer(Layer::new("shared").with_lease(settings)));
        let id = h.expect_read(0);
        h.read(id, None);
        let id = h.expect_lease(0);
        h.lease(id, LeaseOutcome::Acquired);
        let id = h.expect_read(0);
        h.read(id, None);
        let id = h.expect_fetch();
        h.grant(id, Err(unavailable()));
        let retry_at = h.r.status(h.now).next_attempt.unwrap();
        if hold {
            h.no_effect();
            // At the retry the lease is still ours: no new acquisition.
            h.at(retry_at);
            let id = h.expect_read(0);
            h.read(id, None);
            let _ = h.expect_fetch();
        } else {
            h.expect_release(0);
            h.at(retry_at);
            let _ = h.expect_lease(0);
        }
    }
}

#[test]
fn a_held_lease_is_released_before_it_expires_during_a_long_backoff() {
    let mut h = H::new(leased());
    let id = h.expect_read(0);
    h.read(id, None);
    let id = h.expect_lease(0);
    h.lease(id, LeaseOutcome::Acquired);
    let id = h.expect_read(0);
    h.read(id, None);
    let id = h.expect_fetch();
    let permanent = FetchError::OAuth {
        status: 401,
        error: OAuthError {
            error: "invalid_client".into(),
            description: None,
            uri: None,
        },
        retry_after: None,
    };
    h.grant(id, Err(permanent));
    // Permanent: retry at the 5 min cap, but the lease (30 s) goes back at 30 s.
    assert_eq!(h.r.poll_timeout(), Some(h.now.saturating_add(secs(30))));
    h.advance(secs(30));
    h.expect_release(0);
    assert_eq!(h.r.poll_timeout(), Some(T0.saturating_add(secs(300))));
}

#[test]
fn failures_back_off_and_the_last_token_is_served_until_expiry() {
    let mut h = H::new(H::custom());
    let id = h.expect_fetch();
    h.grant(id, Ok(grant("a", 100)));
    h.at(T0.saturating_add(secs(70)));
    let mut last_failure = h.now;
    let mut failures = 0;
    while h.now < T0.saturating_add(secs(100)) {
        let id = h.expect_fetch();
        assert!(h.now.duration_since(last_failure) >= Duration::from_millis(500) || failures == 0);
        h.grant(id, Err(unavailable()));
        failures += 1;
        last_failure = h.now;
        let Some(Event::FetchFailed {
            consecutive_failures,
            class,
            retry_at,
            ..
        }) = h.events.last().cloned()
        else {
            panic!("{:?}", h.events)
        };
        assert_eq!(consecutive_failures, failures);
        assert_eq!(class, ErrorClass::Transient);
        let token_ok = h.r.token().is_some();
        assert_eq!(token_ok, h.now < T0.saturating_add(secs(100)));
        let next = h.r.poll_timeout().unwrap();
        assert!(next <= retry_at);
        h.at(next);
    }
    assert_eq!(h.access(), None, "expired tokens are not served");
    assert!(
        h.events
            .iter()
            .any(|e| matches!(e, Event::TokenExpired { .. }))
    );
    assert_eq!(h.r.status(h.now).token_state, None);
    // Recovery resets the count.
    h.at(h.r.poll_timeout().unwrap());
    let id = h.expect_fetch();
    h.grant(id, Ok(grant("b", 100)));
    assert_eq!(h.r.status(h.now).consecutive_failures, 0);
    assert!(h.r.status(h.now).last_error.is_some(), "kept for diagnosis");
}

#[test]
fn retry_after_is_honoured() {
    let mut h = H::new(H::custom());
    let id = h.expect_fetch();
    let error = FetchError::Status {
        status: 429,
        snippet: String::new(),
        retry_after: Some(T0.saturating_add(secs(42))),
    };
    h.grant(id, Err(error));
    assert_eq!(h.r.poll_timeout(), Some(T0.saturating_add(secs(42))));
    h.at(T0.saturating_add(secs(41)));
    h.no_effect();
    h.at(T0.saturating_add(secs(42)));
    let _ = h.expect_fetch();
}

#[test]
fn forced_refresh_is_rate_limited_and_wants_a_newer_token() {
    // Writes stay outstanding for the whole test (well inside the timeout).
    let mut h = H::new(
        leased()
            .refresh_now_min_interval(secs(10))
            .cache_timeout(secs(60)),
    );
    let id = h.expect_read(0);
    h.read(id, Some(encoded("current", T0, 3600)));
    h.no_effect();
    h.advance(secs(1));
    assert_eq!(h.r.refresh_now(h.now), RefreshNow::Started);
    let id = h.expect_lease(0);
    h.lease(id, LeaseOutcome::Acquired);
    let id = h.expect_read(0);
    // The cache still holds the very token we want replaced: not good enough.
    h.read(id, Some(encoded("current", T0, 3600)));
    let id = h.expect_fetch();
    assert_eq!(
        h.r.refresh_now(h.now),
        RefreshNow::RateLimited {
            until: T0.saturating_add(secs(11))
        }
    );
    h.grant(id, Ok(grant("newer", 3600)));
    assert_eq!(h.access().as_deref(), Some("newer"));
    h.advance(secs(10));
    assert_eq!(
        h.r.refresh_now(h.now),
        RefreshNow::Joined,
        "writes still in flight"
    );
}

#[test]
fn refusals_of_one_token_make_one_request() {
    let mut h = H::new(
        leased()
            .refresh_now_min_interval(secs(10))
            .cache_timeout(secs(60)),
    );
    let id = h.expect_read(0);
    h.read(id, Some(encoded("current", T0, 3600)));
    h.no_effect();
    h.advance(secs(1));
    let refused = AccessToken::new("current");
    // The first refusal starts a cycle; the others, while it runs, join it
    // without being rate-limited (refresh_now would answer RateLimited).
    assert_eq!(h.r.refresh_if_current(h.now, &refused), RefreshNow::Started);
    for _ in 0..99 {
        assert_eq!(h.r.refresh_if_current(h.now, &refused), RefreshNow::Joined);
    }
    let id = h.expect_lease(0);
    h.lease(id, LeaseOutcome::Acquired);
    let id = h.expect_read(0);
    // The fleet's shared record still holds the refused token: not adopted.
    h.read(id, Some(encoded("current", T0, 3600)));
    let id = h.expect_fetch();
    assert_eq!(h.r.refresh_if_current(h.now, &refused), RefreshNow::Joined);
    h.grant(id, Ok(grant("newer", 3600)));
    assert_eq!(h.access().as_deref(), Some("newer"));
    // Late refusals of the old token: nothing to do, use the new one.
    assert_eq!(
        h.r.refresh_if_current(h.now, &refused),
        RefreshNow::Replaced
    );
    let fetches = h
        .events
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::TokenChanged {
                    origin: Origin::Authority,
                    ..
                }
            )
        })
        .count();
    assert_eq!(fetches, 1, "{:?}", h.events);
    // A refusal of the current token once the cycle is over is a forced
    // refresh, rate-limited like refresh_now.
    assert!(matches!(
        h.r.refresh_if_current(h.now, &AccessToken::new("newer")),
        RefreshNow::RateLimited { .. } | RefreshNow::Joined
    ));
}

#[test]
fn dpop_proofs_carry_the_servers_nonce_and_a_nonce_request_is_no_failure() {
    let client = OAuth2Client::client_credentials(
        "https://auth.example/token?tenant=t",
        ClientId::new("c"),
        ClientSecret::new("s"),
    )
    .unwrap()
    .bound_to_dpop_key("jkt-1");
    let mut h = H::new(RefresherConfig::oauth2(client).jitter(Jitter::none()));
    let send = |effect: Effect| -> (EffectId, DpopClaims) {
        let Effect::SendRequest { id, request, .. } = effect else {
            panic!("{effect:?}")
        };
        (
            id,
            request
                .dpop_claims()
                .cloned()
                .expect("a DPoP-bound request"),
        )
    };
    let (id, claims) = send(h.next());
    assert_eq!(
        (claims.htm.as_str(), claims.htu.as_str()),
        ("POST", "https://auth.example/token")
    );
    assert_eq!(claims.nonce, None);
    // The server wants a nonce: asked again at once, with it.
    let mut nonce = HeaderMap::new();
    nonce.insert("dpop-nonce", "n-1".parse().unwrap());
    let wants = br#"{"error":"use_dpop_nonce","error_description":"nonce required"}"#;
    h.r.handle_response(h.now, id, 400, &nonce, wants).unwrap();
    let (id2, again) = send(h.next());
    assert_eq!(again.nonce.as_deref(), Some("n-1"));
    assert_ne!(again.jti, claims.jti, "each proof has its own id");
    h.drain();
    assert!(
        !h.events
            .iter()
            .any(|e| matches!(e, Event::FetchFailed { .. })),
        "{:?}",
        h.events
    );
    let body = br#"{"access_token":"a1","token_type":"DPoP","expires_in":100}"#;
    h.r.handle_response(h.now, id2, 200, &HeaderMap::new(), body)
        .unwrap();
    h.drain();
    let token = h.r.token().expect("a DPoP token");
    assert_eq!(token.token_type, "DPoP");
    assert_eq!(token.extra["cnf"]["jkt"], "jkt-1");
    // The next refresh sends the nonce it knows; a second nonce request in
    // one attempt is a failure, not a loop.
    h.at(h.r.poll_timeout().unwrap());
    let (id, claims) = send(h.next());
    assert_eq!(claims.nonce.as_deref(), Some("n-1"));
    h.r.handle_response(h.now, id, 400, &nonce, wants).unwrap();
    let (id, _) = send(h.next());
    h.r.handle_response(h.now, id, 400, &nonce, wants).unwrap();
    h.drain();
    assert!(
        h.events
            .iter()
            .any(|e| matches!(e, Event::FetchFailed { .. })),
        "{:?}",
        h.events
    );
}

#[test]
fn rotated_refresh_tokens_are_used_and_kept() {
    let client = OAuth2Client::refresh_token(
        "https://auth.example/token",
        ClientId::new("c"),
        Some(ClientSecret::new("s")),
    )
    .unwrap();
    let config = RefresherConfig::oauth2(client)
        .initial_refresh_token(RefreshToken::new("rt-0"))
        .jitter(Jitter::none());
    let mut h = H::new(config);
    let sent = |effect: Effect| -> String {
        let Effect::SendRequest { request, .. } = effect else {
            panic!("{effect:?}")
        };
        url::form_urlencoded::parse(request.as_http().body())
            .find(|(k, _)| k == "refresh_token")
            .map(|(_, v)| v.into_owned())
            .unwrap()
    };
    let effect = h.next();
    let Effect::SendRequest { id, .. } = &effect else {
        panic!()
    };
    let id = *id;
    assert_eq!(sent(effect), "rt-0");
    let body = br#"{"access_token":"a1","expires_in":100,"refresh_token":"rt-1"}"#;
    h.r.handle_response(h.now, id, 200, &HeaderMap::new(), body)
        .unwrap();
    h.drain();
    h.at(h.r.poll_timeout().unwrap());
    let effect = h.next();
    let Effect::SendRequest { id, .. } = &effect else {
        panic!()
    };
    let id = *id;
    assert_eq!(sent(effect), "rt-1", "the rotated token is used");
    // No new refresh token in the answer: the last one is kept.
    let body = br#"{"access_token":"a2","expires_in":100}"#;
    h.r.handle_response(h.now, id, 200, &HeaderMap::new(), body)
        .unwrap();
    h.drain();
    assert_eq!(
        h.r.token()
            .unwrap()
            .refresh_token
            .as_ref()
            .map(|t| t.expose_secret()),
        Some("rt-1")
    );
}

#[test]
fn misuse_is_an_error_not_a_state_change() {
    let mut h = H::new(H::custom().layer(Layer::new("file")));
    let id = h.expect_read(0);
    assert_eq!(
        h.r.handle_grant(h.now, id, Ok(grant("x", 60))),
        Err(MisuseError::WrongAnswer {
            id,
            expected: "a cache read answer"
        })
    );
    assert_eq!(
        h.r.handle_cache_read(h.now, EffectId(999), Ok(None)),
        Err(MisuseError::UnknownEffect(EffectId(999)))
    );
    // The real answer still works, once; a duplicate is ignored.
    h.read(id, None);
    let id = h.expect_fetch();
    assert_eq!(h.r.handle_cache_read(h.now, EffectId(0), Ok(None)), Ok(()));
    h.no_effect();
    assert!(h.r.status(h.now).fetch_in_flight);
    h.grant(id, Ok(grant("x", 60)));
    assert_eq!(h.access().as_deref(), Some("x"));
}

#[test]
fn shutdown_releases_leases_and_ignores_late_answers() {
    let mut h = H::new(leased());
    let id = h.expect_read(0);
    h.read(id, None);
    let lease = h.expect_lease(0);
    h.r.shutdown(h.now);
    h.drain();
    assert!(h.r.is_finished());
    assert!(matches!(h.events.last(), Some(Event::Stopped)));
    assert_eq!(h.r.poll_timeout(), None);
    // A lease granted after shutdown goes straight back.
    h.lease(lease, LeaseOutcome::Acquired);
    h.expect_release(0);
    h.advance(secs(100_000));
    h.no_effect();
    assert_eq!(h.r.refresh_now(h.now), RefreshNow::ShutDown);
}

#[test]
fn time_going_backwards_is_harmless() {
    let mut h = H::new(H::custom());
    let id = h.expect_fetch();
    h.grant(id, Ok(grant("a", 3600)));
    h.at(T0.saturating_sub(secs(86_400)));
    h.no_effect();
    assert_eq!(
        h.access().as_deref(),
        Some("a"),
        "a token is never stale before its issue"
    );
    assert_eq!(h.r.token().unwrap().state_at(h.now), TokenState::Fresh);
    // Back to normal: the refresh comes at its planned instant, once.
    h.at(T0.saturating_add(secs(2700)));
    let _ = h.expect_fetch();
    h.no_effect();
    assert_eq!(h.changed_count(), 1);
}

#[test]
fn an_expired_cached_record_still_supplies_its_newer_refresh_token() {
    let client = OAuth2Client::refresh_token(
        "https://auth.example/token",
        ClientId::new("c"),
        Some(ClientSecret::new("s")),
    )
    .unwrap();
    let config = RefresherConfig::oauth2(client)
        .initial_refresh_token(RefreshToken::new("rt-spent"))
        .layer(Layer::new("file"));
    let key = config.cache_key().clone();
    let mut h = H::new(config);
    let id = h.expect_read(0);
    let old = LifetimePolicy::default().record(
        grant("dead", 60).with_refresh_token(RefreshToken::new("rt-latest")),
        T0.saturating_sub(secs(3600)),
        None,
    );
    h.read(id, Some(encode_record(&key, &old).bytes().to_vec()));
    assert_eq!(h.access(), None, "the expired access token is not served");
    let Effect::SendRequest { request, .. } = h.next() else {
        panic!("expected a request")
    };
    let sent: Vec<(String, String)> = url::form_urlencoded::parse(request.as_http().body())
        .into_owned()
        .collect();
    assert!(
        sent.contains(&("refresh_token".into(), "rt-latest".into())),
        "{sent:?}"
    );
}

// ---- one entry point, deadlines, waits, draining shutdown ----

const URL: &str = "https://auth.example/token";

fn refresh_client() -> OAuth2Client {
    OAuth2Client::refresh_token(URL, ClientId::new("c"), Some(ClientSecret::new("s"))).unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

impl H {
    fn input(&mut self, input: Input) {
        self.r.handle(self.now, input).unwrap();
        self.drain();
    }

    fn expect_request(&mut self) -> (EffectId, String) {
        match self.next() {
            Effect::SendRequest { id, request, .. } => {
                let rt = url::form_urlencoded::parse(request.as_http().body())
                    .find(|(k, _)| k == "refresh_token")
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                (id, rt)
            }
            other => panic!("expected a request, got {other:?}"),
        }
    }

    fn respond(&mut self, id: EffectId, body: &str) {
        self.input(Input::Response {
            id,
            status: 200,
            headers: HeaderMap::new(),
            body: body.as_bytes().to_vec(),
        });
    }

    fn stopped(&self) -> bool {
        self.events.iter().any(|e| matches!(e, Event::Stopped))
    }
}

/// Drives one refresher through every kind of answer, either through
/// `handle(now, Input)` or through the `handle_*` methods, and logs all it
/// says.
fn scripted(via_input: bool) -> Vec<String> {
    struct S {
        r: Refresher,
        now: Timestamp,
        via_input: bool,
        log: Vec<String>,
        queue: VecDeque<Effect>,
    }
    impl S {
        fn give(&mut self, input: Input) {
            let now = self.now;
            let result = if self.via_input {
                self.r.handle(now, input)
            } else {
                match input {
                    Input::Timeout => {
                        self.r.handle_timeout(now);
                        Ok(())
                    }
                    Input::CacheRead { id, result } => self.r.handle_cache_read(now, id, result),
                    Input::CacheWritten { id, result } => {
                        self.r.handle_cache_written(now, id, result)
                    }
                    Input::Lease { id, outcome } => self.r.handle_lease(now, id, outcome),
                    Input::Response {
                        id,
                        status,
                        headers,
                        body,
                    } => self.r.handle_response(now, id, status, &headers, &body),
                    Input::FetchFailed { id, error } => self.r.handle_fetch_error(now, id, error),
                    Input::Grant { id, result } => self.r.handle_grant(now, id, result),
                    Input::CacheChanged { layer } => {
                        self.r.handle_cache_changed(now, layer);
                        Ok(())
                    }
                }
            };
            self.log.push(format!("{result:?}"));
            while let Some(e) = self.r.poll_effect() {
                self.log.push(format!("{e:?}"));
                self.queue.push_back(e);
            }
            while let Some(e) = self.r.poll_event() {
                self.log.push(format!("{e:?}"));
            }
            self.log.push(format!("{:?}", self.r.poll_wait()));
            self.log.push(format!("{:?}", self.r.status(self.now)));
        }
        fn id(&mut self) -> EffectId {
            match self.queue.pop_front() {
                Some(
                    Effect::ReadCache { id, .. }
                    | Effect::WriteCache { id, .. }
                    | Effect::AcquireLease { id, .. }
                    | Effect::SendRequest { id, .. }
                    | Effect::Fetch { id, .. },
                ) => id,
                other => panic!("{other:?}"),
            }
        }
        fn at(&mut self, t: Timestamp) {
            self.now = t;
            self.give(Input::Timeout);
        }
        fn wait(&mut self) {
            let t = self.r.poll_wait().deadline().unwrap();
            self.at(t);
        }
    }
    let config = RefresherConfig::oauth2(refresh_client())
        .initial_refresh_token(RefreshToken::new("rt-0"))
        .layer(Layer::new("shared").with_lease(LeaseSettings::default()));
    let mut s = S {
        r: Refresher::new(config, 7, T0),
        now: T0,
        via_input,
        log: Vec::new(),
        queue: VecDeque::new(),
    };
    s.give(Input::Timeout);
    let id = s.id();
    s.give(Input::CacheRead {
        id,
        result: Ok(None),
    });
    let id = s.id();
    s.give(Input::Lease {
        id,
        outcome: LeaseOutcome::HeldByOther,
    });
    s.give(Input::CacheChanged { layer: 0 });
    let id = s.id();
    let io = CacheError::new(CacheErrorKind::Io, "denied");
    s.give(Input::CacheRead {
        id,
        result: Err(io),
    });
    let id = s.id();
    s.give(Input::Lease {
        id,
        outcome: LeaseOutcome::Acquired,
    });
    let id = s.id();
    // Misuse, then the right answer.
    s.give(Input::Grant {
        id,
        result: Err(unavailable()),
    });
    s.give(Input::CacheRead {
        id: EffectId(9_999),
        result: Ok(None),
    });
    s.give(Input::CacheRead {
        id,
        result: Ok(None),
    });
    let id = s.id();
    let error = FetchError::Transport {
        message: "reset".into(),
    };
    s.give(Input::FetchFailed { id, error });
    s.wait();
    let id = s.id();
    s.give(Input::CacheRead {
        id,
        result: Ok(None),
    });
    let id = s.id();
    let mut headers = HeaderMap::new();
    headers.insert("retry-after", "7".parse().unwrap());
    s.give(Input::Response {
        id,
        status: 503,
        headers,
        body: b"busy".to_vec(),
    });
    s.wait();
    let id = s.id();
    s.give(Input::CacheRead {
        id,
        result: Ok(None),
    });
    let id = s.id();
    let body = br#"{"access_token":"a1","expires_in":600,"refresh_token":"rt-1"}"#;
    s.give(Input::Response {
        id,
        status: 200,
        headers: HeaderMap::new(),
        body: body.to_vec(),
    });
    let id = s.id();
    let down = CacheError::new(CacheErrorKind::Unavailable, "down");
    s.give(Input::CacheWritten {
        id,
        result: Err(down),
    });
    s.queue.clear(); // the release
    s.wait();
    let id = s.id();
    s.give(Input::Lease {
        id,
        outcome: LeaseOutcome::Acquired,
    });
    let id = s.id();
    s.give(Input::CacheRead {
        id,
        result: Ok(None),
    });
    let id = s.id();
    s.give(Input::Grant {
        id,
        result: Ok(grant("a2", 600)),
    });
    // The write goes unanswered and times out.
    s.wait();
    s.give(Input::CacheWritten { id, result: Ok(()) });
    s.log
}

#[test]
fn handle_with_inputs_does_what_the_handle_methods_do() {
    let via_input = scripted(true);
    let via_methods = scripted(false);
    assert_eq!(via_input, via_methods);
    let all = via_input.join("\n");
    for needle in [
        "LeaseBusy",
        "CacheProblem",
        "WrongAnswer",
        "UnknownEffect",
        "Transport",
        "status: 503",
        "TokenChanged",
        "ReleaseLease",
        "Timeout",
    ] {
        assert!(all.contains(needle), "{needle} missing from\n{all}");
    }
}

#[test]
fn input_debug_shows_no_secret() {
    let mut headers = HeaderMap::new();
    headers.insert("x-echo", "hunter2-header".parse().unwrap());
    let inputs = [
        Input::CacheRead {
            id: EffectId(1),
            result: Ok(Some(b"hunter2-record".to_vec())),
        },
        Input::Response {
            id: EffectId(2),
            status: 200,
            headers,
            body: br#"{"access_token":"hunter2-body"}"#.to_vec(),
        },
        Input::Grant {
            id: EffectId(3),
            result: Ok(
                grant("hunter2-grant", 60).with_refresh_token(RefreshToken::new("hunter2-refresh"))
            ),
        },
    ];
    let shown = format!("{inputs:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("<14 bytes>"), "{shown}");
    assert!(shown.contains("<31 bytes>"), "{shown}");
    assert!(shown.contains("x-echo"), "{shown}");
}

#[test]
fn an_unanswered_read_times_out_into_a_miss() {
    let mut h = H::new(H::custom().layer(Layer::new("slow")));
    assert_eq!(h.r.config().get_cache_timeout(), secs(10));
    let id = h.expect_read(0);
    let deadline = T0.saturating_add(secs(10));
    assert_eq!(h.r.effect_deadline(id), Some(deadline));
    assert_eq!(h.r.poll_wait(), Wait::Answer { deadline });
    h.at(deadline.saturating_sub(ms(1)));
    h.no_effect();
    assert!(h.events.is_empty(), "{:?}", h.events);
    h.at(deadline);
    assert!(
        matches!(
            &h.events[..],
            [Event::CacheProblem {
                layer: 0,
                problem: CacheProblem::Read(e),
            }] if e.kind == CacheErrorKind::Timeout
        ),
        "{:?}",
        h.events
    );
    assert_eq!(h.r.effect_deadline(id), None);
    let fetch = h.expect_fetch();
    // The late answer changes nothing, even with a token in it.
    assert_eq!(
        h.r.handle_cache_read(h.now, id, Ok(Some(encoded("late", T0, 3600)))),
        Ok(())
    );
    h.no_effect();
    assert_eq!(h.access(), None);
    h.grant(fetch, Ok(grant("fetched", 3600)));
    assert_eq!(h.access().as_deref(), Some("fetched"));
}

#[test]
fn an_unanswered_lease_times_out_and_the_cycle_goes_on() {
    let mut h = H::new(leased().cache_timeout(secs(2)));
    assert_eq!(h.r.config().get_cache_timeout(), secs(2));
    let id = h.expect_read(0);
    h.read(id, None);
    let lease = h.expect_lease(0);
    assert_eq!(h.r.effect_deadline(lease), Some(T0.saturating_add(secs(2))));
    h.advance(secs(2));
    assert!(
        matches!(
            h.events.last(),
            Some(Event::CacheProblem {
                layer: 0,
                problem: CacheProblem::Lease(e),
            }) if e.kind == CacheErrorKind::Timeout
        ),
        "{:?}",
        h.events
    );
    // On without the lease: re-read, fetch, write.
    let id = h.expect_read(0);
    h.read(id, None);
    let id = h.expect_fetch();
    h.grant(id, Ok(grant("mine", 3600)));
    let (id, _) = h.expect_write(0);
    h.written(id);
    h.no_effect();
    // The store grants the lease at last: it goes straight back.
    h.lease(lease, LeaseOutcome::Acquired);
    h.expect_release(0);
    h.no_effect();
    assert_eq!(h.access().as_deref(), Some("mine"));
}

#[test]
fn an_unanswered_write_times_out_and_the_lease_goes_back() {
    let mut h = H::new(leased());
    let id = h.expect_read(0);
    h.read(id, None);
    let id = h.expect_lease(0);
    h.lease(id, LeaseOutcome::Acquired);
    let id = h.expect_read(0);
    h.read(id, None);
    let id = h.expect_fetch();
    h.advance(secs(1));
    h.grant(id, Ok(grant("mine", 3600)));
    let (write, _) = h.expect_write(0);
    let deadline = h.now.saturating_add(secs(10));
    assert_eq!(h.r.poll_wait(), Wait::Answer { deadline });
    h.at(deadline);
    assert!(
        matches!(
            h.events.last(),
            Some(Event::CacheProblem {
                layer: 0,
                problem: CacheProblem::Write(e),
            }) if e.kind == CacheErrorKind::Timeout
        ),
        "{:?}",
        h.events
    );
    h.expect_release(0);
    let refresh_at = T0.saturating_add(secs(1 + 2700));
    assert_eq!(h.r.poll_wait(), Wait::Until(refresh_at));
    assert_eq!(h.r.status(h.now).next_attempt, Some(refresh_at));
    h.written(write);
    h.no_effect();
}

#[test]
fn an_unanswered_fetch_times_out_into_backoff() {
    let mut h = H::new(H::custom().fetch_timeout(secs(30)));
    assert_eq!(h.r.config().get_fetch_timeout(), secs(30));
    let id = h.expect_fetch();
    let deadline = T0.saturating_add(secs(30));
    assert_eq!(h.r.poll_wait(), Wait::Answer { deadline });
    h.at(deadline.saturating_sub(ms(1)));
    assert!(h.events.is_empty());
    assert!(h.r.status(h.now).fetch_in_flight);
    h.at(deadline);
    let Some(Event::FetchFailed {
        error,
        class,
        consecutive_failures,
        retry_at,
    }) = h.events.last().cloned()
    else {
        panic!("{:?}", h.events)
    };
    assert_eq!(error, FetchError::Timeout { after: secs(30) });
    assert_eq!(class, ErrorClass::Transient);
    assert_eq!(consecutive_failures, 1);
    assert!(retry_at > h.now && retry_at <= h.now.saturating_add(secs(1)));
    assert!(!h.r.status(h.now).fetch_in_flight);
    assert_eq!(h.r.poll_wait(), Wait::Until(retry_at));
    // The answer that comes too late is ignored.
    h.grant(id, Ok(grant("late", 3600)));
    assert_eq!(h.access(), None);
    assert_eq!(h.changed_count(), 0);
    h.at(retry_at);
    let id = h.expect_fetch();
    h.grant(id, Ok(grant("on time", 3600)));
    assert_eq!(h.access().as_deref(), Some("on time"));
    assert_eq!(h.r.status(h.now).consecutive_failures, 0);
}

#[test]
fn an_answer_in_hand_beats_its_own_deadline() {
    let mut h = H::new(H::custom());
    let id = h.expect_fetch();
    h.now = T0.saturating_add(secs(61));
    h.grant(id, Ok(grant("slow but here", 3600)));
    assert_eq!(h.access().as_deref(), Some("slow but here"));
    assert!(
        !h.events
            .iter()
            .any(|e| matches!(e, Event::FetchFailed { .. }))
    );
}

#[test]
fn late_and_duplicate_answers_are_ignored_unissued_ids_are_misuse() {
    let mut h = H::new(H::custom().layer(Layer::new("file")));
    let read = h.expect_read(0);
    h.advance(secs(10));
    let fetch = h.expect_fetch();
    // Late, and of the wrong kind: still misuse.
    assert_eq!(
        h.r.handle_grant(h.now, read, Ok(grant("x", 60))),
        Err(MisuseError::WrongAnswer {
            id: read,
            expected: "a cache read answer"
        })
    );
    // Late and right: ignored.
    assert_eq!(h.r.handle_cache_read(h.now, read, Ok(None)), Ok(()));
    // Twice: ignored too.
    assert_eq!(h.r.handle_cache_read(h.now, read, Ok(None)), Ok(()));
    h.no_effect();
    // Never issued.
    let unissued = EffectId(fetch.0 + 1);
    assert_eq!(
        h.r.handle(
            h.now,
            Input::Grant {
                id: unissued,
                result: Ok(grant("x", 60))
            }
        ),
        Err(MisuseError::UnknownEffect(unissued))
    );
    assert_eq!(h.r.effect_deadline(unissued), None);
    assert!(h.r.status(h.now).fetch_in_flight, "misuse changed nothing");
    h.grant(fetch, Ok(grant("real", 3600)));
    let (write, _) = h.expect_write(0);
    h.written(write);
    assert_eq!(
        h.r.handle_cache_written(h.now, write, Ok(())),
        Ok(()),
        "a duplicate is ignored"
    );
    assert_eq!(
        h.r.handle_grant(h.now, fetch, Ok(grant("again", 3600))),
        Ok(())
    );
    h.no_effect();
    assert_eq!(h.access().as_deref(), Some("real"));
    assert_eq!(h.changed_count(), 1);
}

#[test]
fn a_late_grant_still_hands_over_its_rotated_refresh_token() {
    let config = RefresherConfig::oauth2(refresh_client())
        .initial_refresh_token(RefreshToken::new("rt-0"))
        .jitter(Jitter::none());
    let mut h = H::new(config);
    let (id, sent) = h.expect_request();
    assert_eq!(sent, "rt-0");
    h.advance(secs(60));
    assert!(matches!(
        h.events.last(),
        Some(Event::FetchFailed {
            error: FetchError::Timeout { .. },
            ..
        })
    ));
    // The authority did rotate it; its answer arrives after the deadline.
    h.respond(
        id,
        r#"{"access_token":"a1","expires_in":600,"refresh_token":"rt-1"}"#,
    );
    assert_eq!(h.changed_count(), 0, "a late answer is not adopted");
    h.at(h.r.poll_timeout().unwrap());
    let (_, sent) = h.expect_request();
    assert_eq!(sent, "rt-1", "but its rotated refresh token is not lost");
}

#[test]
fn poll_wait_names_each_situation() {
    let mut h = H::new(leased());
    let id = h.expect_read(0);
    assert_eq!(
        h.r.poll_wait(),
        Wait::Answer {
            deadline: T0.saturating_add(secs(10))
        }
    );
    h.read(id, None);
    let id = h.expect_lease(0);
    h.lease(id, LeaseOutcome::HeldByOther);
    let Some(Event::LeaseBusy { retry_at, .. }) = h.events.last().cloned() else {
        panic!("{:?}", h.events)
    };
    assert_eq!(h.r.poll_wait(), Wait::Until(retry_at));
    assert_eq!(h.r.poll_timeout(), Some(retry_at));
    h.at(retry_at);
    let id = h.expect_read(0);
    h.read(id, Some(encoded("theirs", retry_at, 100)));
    // 100 s token: refreshed at 70 s, 30 s before it expires.
    let refresh_at = retry_at.saturating_add(secs(70));
    assert_eq!(h.r.poll_wait(), Wait::Until(refresh_at));
    h.at(refresh_at);
    let id = h.expect_lease(0);
    h.lease(id, LeaseOutcome::Acquired);
    let id = h.expect_read(0);
    h.read(id, None);
    let _fetch = h.expect_fetch();
    // The fetch may take 60 s, but the token expires in 30: that comes first.
    let expiry = retry_at.saturating_add(secs(100));
    assert_eq!(h.r.poll_wait(), Wait::Answer { deadline: expiry });
    h.at(expiry);
    assert!(matches!(h.events.last(), Some(Event::TokenExpired { .. })));
    assert_eq!(
        h.r.poll_wait(),
        Wait::Answer {
            deadline: refresh_at.saturating_add(secs(60))
        }
    );
    h.r.shutdown(h.now);
    assert_eq!(h.r.poll_wait(), Wait::Finished);
    assert_eq!(h.r.poll_wait().deadline(), None);
    assert_eq!(h.r.poll_timeout(), None);
}

#[test]
fn shutdown_during_a_refresh_token_fetch_keeps_the_rotated_token() {
    let config = RefresherConfig::oauth2(refresh_client())
        .initial_refresh_token(RefreshToken::new("rt-0"))
        .jitter(Jitter::none())
        .layer(Layer::new("shared").with_lease(LeaseSettings::default()));
    assert_eq!(config.get_shutdown_grace(), secs(5));
    let key = config.cache_key().clone();
    let mut h = H::new(config);
    let id = h.expect_read(0);
    h.read(id, None);
    let id = h.expect_lease(0);
    h.lease(id, LeaseOutcome::Acquired);
    let id = h.expect_read(0);
    h.read(id, None);
    let (request, _) = h.expect_request();
    h.r.shutdown(h.now);
    h.drain();
    assert!(h.r.is_stopping());
    assert!(!h.r.is_finished());
    assert!(!h.r.status(h.now).shut_down);
    assert!(!h.stopped());
    h.no_effect(); // the lease is kept while the request is out
    assert_eq!(
        h.r.poll_wait(),
        Wait::Answer {
            deadline: T0.saturating_add(secs(5))
        }
    );
    assert_eq!(h.r.refresh_now(h.now), RefreshNow::ShutDown);
    h.advance(secs(2));
    h.no_effect();
    assert!(!h.r.is_finished());
    h.respond(
        request,
        r#"{"access_token":"a1","expires_in":3600,"refresh_token":"rt-1"}"#,
    );
    let Some(Event::TokenChanged { token, .. }) = h.events.last() else {
        panic!("{:?}", h.events)
    };
    assert_eq!(
        token.refresh_token.as_ref().map(|t| t.expose_secret()),
        Some("rt-1")
    );
    let (write, record) = h.expect_write(0);
    let stored = crate::cache::decode_record(&key, record.bytes()).unwrap();
    assert_eq!(
        stored.refresh_token.as_ref().map(|t| t.expose_secret()),
        Some("rt-1")
    );
    assert!(!h.r.is_finished(), "the write is awaited");
    h.no_effect();
    h.written(write);
    h.expect_release(0);
    assert!(h.r.is_finished());
    assert!(matches!(h.events.last(), Some(Event::Stopped)));
    assert_eq!(h.r.poll_wait(), Wait::Finished);
    assert!(h.r.status(h.now).shut_down);
    h.advance(secs(100_000));
    h.no_effect();
}

#[test]
fn shutdown_without_an_answer_stops_at_the_end_of_the_grace() {
    // A custom source that spends a refresh token, with no answer at all.
    let config = H::custom()
        .initial_refresh_token(RefreshToken::new("rt-0"))
        .shutdown_grace(secs(3));
    let mut h = H::new(config);
    let Effect::Fetch {
        id,
        refresh_token: Some(_),
    } = h.next()
    else {
        panic!("expected a fetch spending a refresh token")
    };
    h.advance(secs(1));
    h.r.shutdown(h.now);
    h.r.shutdown(h.now); // twice: the grace does not move
    let end = T0.saturating_add(secs(4));
    assert_eq!(h.r.poll_wait(), Wait::Answer { deadline: end });
    h.at(end.saturating_sub(ms(1)));
    assert!(!h.r.is_finished());
    h.at(end);
    assert!(h.r.is_finished());
    assert!(h.stopped());
    h.grant(id, Ok(grant("too late", 3600)));
    assert_eq!(h.changed_count(), 0);
    h.no_effect();

    // An answer, then writes that never complete: the grace still ends it.
    let config = H::custom()
        .initial_refresh_token(RefreshToken::new("rt-0"))
        .layer(Layer::new("file"));
    let mut h = H::new(config);
    let id = h.expect_read(0);
    h.read(id, None);
    let id = h.expect_fetch();
    h.r.shutdown(h.now);
    h.grant(
        id,
        Ok(grant("a1", 3600).with_refresh_token(RefreshToken::new("rt-1"))),
    );
    let _ = h.expect_write(0);
    assert!(!h.r.is_finished());
    h.at(T0.saturating_add(secs(5)));
    assert!(h.r.is_finished());
    assert!(h.stopped());
}

#[test]
fn shutdown_while_a_rotated_token_is_written_waits_for_the_write() {
    let config = H::custom()
        .initial_refresh_token(RefreshToken::new("rt-0"))
        .layer(Layer::new("file"));
    let mut h = H::new(config);
    let id = h.expect_read(0);
    h.read(id, None);
    let id = h.expect_fetch();
    h.grant(
        id,
        Ok(grant("a1", 3600).with_refresh_token(RefreshToken::new("rt-1"))),
    );
    let (write, _) = h.expect_write(0);
    h.r.shutdown(h.now);
    h.drain();
    assert!(h.r.is_stopping() && !h.r.is_finished());
    h.written(write);
    assert!(h.r.is_finished());
    assert!(h.stopped());
}

#[test]
fn shutdown_during_a_client_credentials_fetch_finishes_at_once() {
    let client =
        OAuth2Client::client_credentials(URL, ClientId::new("c"), ClientSecret::new("s")).unwrap();
    let mut h = H::new(RefresherConfig::oauth2(client));
    let (id, _) = h.expect_request();
    h.r.shutdown(h.now);
    h.drain();
    assert!(h.r.is_finished());
    assert!(h.r.is_stopping());
    assert!(h.stopped());
    assert_eq!(h.r.poll_wait(), Wait::Finished);
    h.respond(id, r#"{"access_token":"late","expires_in":3600}"#);
    assert_eq!(h.changed_count(), 0);
    h.no_effect();

    // A custom fetch given no refresh token spends nothing either.
    let mut h = H::new(H::custom());
    let _ = h.expect_fetch();
    h.r.shutdown(h.now);
    assert!(h.r.is_finished());
}

/// The refresh token an `Effect::Fetch` hands the custom source.
fn fetch_with_rt(h: &mut H) -> (EffectId, Option<String>) {
    match h.next() {
        Effect::Fetch { id, refresh_token } => {
            (id, refresh_token.map(|t| t.expose_secret().to_owned()))
        }
        other => panic!("expected a fetch, got {other:?}"),
    }
}

fn rotating(name: &str, rt: &str) -> TokenGrant {
    grant(name, 3600).with_refresh_token(RefreshToken::new(rt))
}

#[test]
fn a_forward_clock_excursion_never_keeps_a_spent_refresh_token() {
    let mut h = H::new(H::custom().initial_refresh_token(RefreshToken::new("rt-0")));
    let (id, sent) = fetch_with_rt(&mut h);
    assert_eq!(sent.as_deref(), Some("rt-0"));
    h.grant(id, Ok(rotating("a1", "rt-1")));

    // The wall clock jumps ten years ahead; the next refresh rotates rt-1.
    h.at(T0.saturating_add(secs(10 * 365 * 86_400)));
    let (id, sent) = fetch_with_rt(&mut h);
    assert_eq!(sent.as_deref(), Some("rt-1"));
    h.grant(id, Ok(rotating("a2", "rt-2")));

    // Corrected; a forced refresh rotates rt-2.
    h.at(T0.saturating_add(secs(60)));
    assert_eq!(h.r.refresh_now(h.now), RefreshNow::Started);
    let (id, sent) = fetch_with_rt(&mut h);
    assert_eq!(sent.as_deref(), Some("rt-2"));
    h.grant(id, Ok(rotating("a3", "rt-3")));

    // The next refresh sends rt-3, the newest rotation, not spent rt-2.
    h.at(T0.saturating_add(secs(2 * 3600)));
    let (_, sent) = fetch_with_rt(&mut h);
    assert_eq!(sent.as_deref(), Some("rt-3"));
}

#[test]
fn a_cached_record_from_the_future_or_holding_a_spent_token_is_not_trusted() {
    let layered = H::custom()
        .initial_refresh_token(RefreshToken::new("rt-0"))
        .layer(Layer::new("memory"));
    let mut h = H::new(layered);
    // A planted record, issued ten years ahead, with a refresh token.
    let future = T0.saturating_add(secs(10 * 365 * 86_400));
    let planted = LifetimePolicy::default().record(
        grant("planted", 60).with_refresh_token(RefreshToken::new("rt-planted")),
        future,
        None,
    );
    let id = h.expect_read(0);
    h.read(id, Some(encode_record(&key(), &planted).bytes().to_vec()));
    assert!(h.access().is_none(), "a record from the future was served");
    assert!(h.events.iter().any(|e| matches!(
        e,
        Event::CacheProblem {
            problem: CacheProblem::FromTheFuture { .. },
            ..
        }
    )));
    let (id, sent) = fetch_with_rt(&mut h);
    assert_eq!(
        sent.as_deref(),
        Some("rt-0"),
        "the future record outranked ours"
    );
    h.grant(id, Ok(rotating("a1", "rt-1")));
    let (wid, _) = h.expect_write(0);
    h.written(wid);

    // Another process's record, issued now, holding a rotation we have not
    // seen: taken. One holding a token we already spent: ignored.
    let spent = LifetimePolicy::default().record(
        grant("old", 60).with_refresh_token(RefreshToken::new("rt-0")),
        T0.saturating_add(secs(30)),
        None,
    );
    h.at(T0.saturating_add(secs(3000)));
    let id = h.expect_read(0);
    h.read(id, Some(encode_record(&key(), &spent).bytes().to_vec()));
    let (_, sent) = fetch_with_rt(&mut h);
    assert_eq!(
        sent.as_deref(),
        Some("rt-1"),
        "a spent token came back from the cache"
    );
}

#[test]
fn the_token_held_read_back_from_a_store_is_not_adopted_again() {
    // The clocks of a real driver are read a millisecond apart: the record
    // just written can look a hair fresher than the token held. Reading it
    // back must not announce the same token again.
    let config = H::custom().layer(Layer::new("memory"));
    let mut h = H::new(config);
    let id = h.expect_read(0);
    h.read(id, None);
    let id = h.expect_fetch();
    h.grant(id, Ok(grant("a1", 3600)));
    let (wid, written) = h.expect_write(0);
    h.written(wid);
    assert_eq!(h.changed_count(), 1);
    // Refresh time: the cycle re-reads the store, which holds the same token,
    // seen with a wall clock one millisecond behind the monotonic schedule.
    let stale = h.r.token().unwrap().stale;
    let sched = stale.saturating_add(secs(1));
    let now = Now::new(
        sched.saturating_sub(Duration::from_millis(1001)),
        crate::Monotonic::from_millis(sched.duration_since(Timestamp::EPOCH).as_millis() as u64),
    );
    h.r.handle(now, Input::Timeout).unwrap();
    h.drain();
    let id = h.expect_read(0);
    h.r.handle(
        now,
        Input::CacheRead {
            id,
            result: Ok(Some(written.bytes().to_vec())),
        },
    )
    .unwrap();
    h.drain();
    assert_eq!(
        h.changed_count(),
        1,
        "the same token was announced twice: {:?}",
        h.events
    );
}
