//! Token exchange (RFC 8693) on every driver: the subject (and actor) token
//! is read from its file before every request, so a file replaced
//! atomically between refreshes is followed at once; a file briefly missing
//! is transient and the watcher recovers; a chain exchanges another
//! watcher's current token, follows its rotation, and when the authority
//! refuses a subject token that was revoked underneath, the upstream
//! refreshes first and the exchange is sent again with the new token; the
//! issued token type is kept in the record; configurations that cannot work
//! fail spawn before any request; cache keys tell exchanges apart and hold
//! no token; a `TokenPool` whose sources carry their subject tokens keeps an
//! exchanged token per subject.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Flavor, fast_backoff};
use tokenkeeper_core::oauth2::OAuth2Client;
use tokenkeeper_core::oauth2::assertion::AssertionProblem;
use tokenkeeper_core::oauth2::exchange::{
    ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT_TYPE, TokenExchange,
};
use tokenkeeper_core::{ClientId, ClientSecret, ErrorClass, FetchError, RefreshNow};
use tokenkeeper_driver::token_exchange::ExchangeToken;
use tokenkeeper_driver::{Source, SpawnError, TokenPool, TokenPoolBuilder};
use tokenkeeper_testkit::Authority;
use tokenkeeper_testkit::authority::{Client, RequestRecord};

per_driver!(
    a_subject_token_file_replaced_between_refreshes_is_followed,
    a_missing_subject_token_file_is_transient_and_the_watcher_recovers,
    a_chain_follows_the_upstream_and_refreshes_it_first_when_refused,
    configurations_that_cannot_work_fail_spawn_and_keys_hold_no_token,
    a_pool_keeps_an_exchanged_token_per_subject,
);

/// Replaces the file as a kubelet does: a new file renamed over the old.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn exchanges(authority: &Authority) -> Vec<RequestRecord> {
    authority
        .requests()
        .into_iter()
        .filter(|r| r.grant_type.as_deref() == Some(TOKEN_EXCHANGE_GRANT_TYPE))
        .collect()
}

fn subject_of(record: &RequestRecord) -> &str {
    record
        .subject_token
        .as_ref()
        .map(|(t, _)| t.as_str())
        .unwrap_or("")
}

fn gateway(authority: &Authority, exchange: TokenExchange) -> OAuth2Client {
    authority.register_client(Client::new("gateway", "gateway-secret"));
    OAuth2Client::token_exchange(authority.token_url(), ClientId::new("gateway"), exchange)
        .unwrap()
        .with_client_secret(ClientSecret::new("gateway-secret"))
        .audience("https://api.example")
        .resource("https://api.example/orders")
        .scope("orders:read")
}

fn a_subject_token_file_replaced_between_refreshes_is_followed<F: Flavor>() {
    let authority = Authority::start();
    authority.accept_exchange_token(JWT_TOKEN_TYPE, "platform-token-one", "workload");
    authority.accept_exchange_token(JWT_TOKEN_TYPE, "platform-token-two", "workload");
    authority.accept_exchange_token(ACCESS_TOKEN_TYPE, "actor-token", "deployer");
    let dir = tempfile::tempdir().unwrap();
    let (subject, actor) = (dir.path().join("subject"), dir.path().join("actor"));
    replace(&subject, "platform-token-one\n");
    replace(&actor, "actor-token");
    let client = gateway(
        &authority,
        TokenExchange::new(JWT_TOKEN_TYPE)
            .actor(ACCESS_TOKEN_TYPE)
            .requested_token_type(JWT_TOKEN_TYPE),
    );
    let watcher = F::block_on(
        F::builder(client)
            .subject_token_file(&subject)
            .actor_token_file(&actor)
            .refresh_now_min_interval(Duration::ZERO)
            .spawn(),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", F::NAME));
    let first = watcher.token().unwrap().into_arc();
    // What was asked for reached the authority, and the answer's type is kept.
    assert_eq!(
        first.issued_token_type(),
        Some(JWT_TOKEN_TYPE),
        "{}",
        F::NAME
    );
    assert_eq!(first.token_type, "N_A");
    let log = exchanges(&authority);
    assert_eq!(log.len(), 1, "{}", F::NAME);
    assert_eq!(
        log[0].subject_token,
        Some(("platform-token-one".into(), JWT_TOKEN_TYPE.into()))
    );
    assert_eq!(
        log[0].actor_token,
        Some(("actor-token".into(), ACCESS_TOKEN_TYPE.into()))
    );
    assert_eq!(log[0].requested_token_type.as_deref(), Some(JWT_TOKEN_TYPE));
    assert_eq!(log[0].audience, vec!["https://api.example".to_owned()]);
    assert_eq!(
        log[0].resource,
        vec!["https://api.example/orders".to_owned()]
    );
    assert_eq!(log[0].scope.as_deref(), Some("orders:read"));
    assert!(log[0].authenticated, "{}: client_secret_basic", F::NAME);

    // The platform rotates the token: the next request carries the new one.
    replace(&subject, "platform-token-two");
    authority.forget_exchange_token("platform-token-one");
    assert_eq!(
        F::block_on(watcher.refresh_now()).unwrap(),
        RefreshNow::Started
    );
    let second = F::block_on(watcher.changed_from(&first)).unwrap();
    assert_ne!(second.access_token, first.access_token);
    let log = exchanges(&authority);
    assert_eq!(log.len(), 2, "{}", F::NAME);
    assert_eq!(subject_of(&log[1]), "platform-token-two", "{}", F::NAME);
    assert_eq!(log[1].status, Some(200));
    F::block_on(watcher.shutdown());
}

fn a_missing_subject_token_file_is_transient_and_the_watcher_recovers<F: Flavor>() {
    let authority = Authority::start();
    authority.accept_exchange_token(JWT_TOKEN_TYPE, "late-token", "workload");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("subject");
    let client = gateway(&authority, TokenExchange::new(JWT_TOKEN_TYPE));
    // The file appears a moment after the start (a sidecar writing it).
    let writer = {
        let path = path.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(400));
            replace(&path, "late-token");
        })
    };
    let watcher = F::block_on(
        F::builder(client)
            .subject_token_file(&path)
            .backoff(fast_backoff())
            .refresh_now_min_interval(Duration::ZERO)
            .first_token_timeout(Duration::from_secs(10))
            .spawn(),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", F::NAME));
    writer.join().unwrap();
    let first = watcher.token().unwrap().into_arc();
    assert_eq!(first.issued_token_type(), Some(ACCESS_TOKEN_TYPE));
    assert_eq!(
        exchanges(&authority).len(),
        1,
        "{}: none before the file",
        F::NAME
    );

    // Gone while being replaced: a transient failure, the token still served.
    std::fs::remove_file(&path).unwrap();
    F::block_on(watcher.refresh_now()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let failure = loop {
        let status = watcher.status();
        if let Some(error) = status.last_error {
            break error;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}: no failure",
            F::NAME
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    match &failure {
        FetchError::Assertion { problem, message } => {
            assert_eq!(*problem, AssertionProblem::Unavailable);
            assert!(message.contains("subject token file"), "{message}");
        }
        other => panic!("{}: {other:?}", F::NAME),
    }
    assert_eq!(failure.class(), ErrorClass::Transient);
    assert_eq!(exchanges(&authority).len(), 1, "{}: nothing sent", F::NAME);
    assert_eq!(watcher.token().unwrap().access_token, first.access_token);

    // Back: the retry (fast backoff) gets a token.
    replace(&path, "late-token");
    let second = F::block_on(watcher.changed_from(&first)).unwrap();
    assert_ne!(second.access_token, first.access_token);
    F::block_on(watcher.shutdown());
}

fn a_chain_follows_the_upstream_and_refreshes_it_first_when_refused<F: Flavor>() {
    let authority = Authority::start();
    authority.register_client(Client::new("platform", "platform-secret"));
    let upstream_client = OAuth2Client::client_credentials(
        authority.token_url(),
        ClientId::new("platform"),
        ClientSecret::new("platform-secret"),
    )
    .unwrap();
    let upstream = F::block_on(
        F::builder(upstream_client)
            .refresh_now_min_interval(Duration::ZERO)
            .spawn(),
    )
    .unwrap();
    let client = gateway(&authority, TokenExchange::new(ACCESS_TOKEN_TYPE));
    let downstream = F::block_on(
        F::builder(client)
            .subject_token_from(&upstream)
            .refresh_now_min_interval(Duration::ZERO)
            .spawn(),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", F::NAME));
    let up1 = upstream.token().unwrap().into_arc();
    let log = exchanges(&authority);
    assert_eq!(log.len(), 1);
    assert_eq!(subject_of(&log[0]), up1.access_token.expose_secret());
    // The key names the upstream, not its token.
    let description = downstream.cache_key().description().to_owned();
    assert!(
        description.contains(upstream.cache_key().id()),
        "{description}"
    );
    assert!(!description.contains(up1.access_token.expose_secret()));

    // The upstream rotates: the downstream's next request carries the new token.
    F::block_on(upstream.refresh_now()).unwrap();
    let up2 = F::block_on(upstream.changed_from(&up1)).unwrap();
    let down1 = downstream.token().unwrap().into_arc();
    F::block_on(downstream.refresh_now()).unwrap();
    let down2 = F::block_on(downstream.changed_from(&down1)).unwrap();
    let log = exchanges(&authority);
    assert_eq!(log.len(), 2);
    assert_eq!(
        subject_of(&log[1]),
        up2.access_token.expose_secret(),
        "{}",
        F::NAME
    );

    // The upstream's token is revoked underneath: the exchange is refused,
    // the upstream refreshes first, and the exchange is sent again with the
    // new token, within the same refresh.
    assert!(authority.revoke(up2.access_token.expose_secret()));
    F::block_on(downstream.refresh_now()).unwrap();
    let down3 = F::block_on(downstream.changed_from(&down2)).unwrap();
    let up3 = upstream.token().unwrap().into_arc();
    assert_ne!(up3.access_token, up2.access_token, "{}", F::NAME);
    let log = exchanges(&authority);
    assert_eq!(log.len(), 4, "{}: {log:#?}", F::NAME);
    assert_eq!(subject_of(&log[2]), up2.access_token.expose_secret());
    assert_eq!(log[2].status, Some(400));
    assert_eq!(subject_of(&log[3]), up3.access_token.expose_secret());
    assert_eq!(log[3].status, Some(200));
    assert_eq!(down3.issued_token_type(), Some(ACCESS_TOKEN_TYPE));
    assert!(downstream.status().last_error.is_none(), "{}", F::NAME);
    // Upstream first: its refresh came between the refusal and the retry.
    let all = authority.requests();
    let seq = |token: &str| {
        all.iter()
            .find(|r| subject_of(r) == token)
            .map(|r| r.seq)
            .unwrap()
    };
    let upstream_refresh = all
        .iter()
        .filter(|r| r.grant_type.as_deref() == Some("client_credentials"))
        .map(|r| r.seq)
        .max()
        .unwrap();
    assert!(seq(up2.access_token.expose_secret()) < upstream_refresh);
    assert!(upstream_refresh < seq(up3.access_token.expose_secret()));
    F::block_on(downstream.shutdown());
    F::block_on(upstream.shutdown());
}

fn configurations_that_cannot_work_fail_spawn_and_keys_hold_no_token<F: Flavor>() {
    let authority = Authority::start();
    let problem = |error: SpawnError| match error {
        SpawnError::Assertion {
            error: FetchError::Assertion { problem, message },
        } => (problem, message),
        other => panic!("{}: {other:?}", F::NAME),
    };
    // No subject token source.
    let client = gateway(&authority, TokenExchange::new(JWT_TOKEN_TYPE));
    let (kind, message) = problem(F::block_on(F::builder(client.clone()).spawn()).unwrap_err());
    assert_eq!(kind, AssertionProblem::Misconfigured);
    assert!(message.contains("subject token"), "{message}");
    // An actor type without an actor source.
    let with_actor = gateway(
        &authority,
        TokenExchange::new(JWT_TOKEN_TYPE).actor(JWT_TOKEN_TYPE),
    );
    let (kind, _) = problem(
        F::block_on(
            F::builder(with_actor)
                .subject_token_file("/nonexistent/subject")
                .spawn(),
        )
        .unwrap_err(),
    );
    assert_eq!(kind, AssertionProblem::Misconfigured);
    // A subject token for a client that does not exchange.
    let plain = OAuth2Client::client_credentials(
        authority.token_url(),
        ClientId::new("gateway"),
        ClientSecret::new("gateway-secret"),
    )
    .unwrap();
    let (kind, _) = problem(
        F::block_on(
            F::builder(plain)
                .subject_token_file("/nonexistent/subject")
                .spawn(),
        )
        .unwrap_err(),
    );
    assert_eq!(kind, AssertionProblem::Misconfigured);
    assert_eq!(authority.request_count(), 0, "{}", F::NAME);

    // Keys: one per subject source, audience, resource and requested type;
    // none holds a token a callback gives.
    let builder = |client: OAuth2Client, label: &str| {
        F::builder(client).subject_token_fn(label, || Ok("callback-token-value".into()))
    };
    let base = gateway(&authority, TokenExchange::new(JWT_TOKEN_TYPE));
    let keys = [
        builder(base.clone(), "ci:job-1").cache_key().clone(),
        builder(base.clone(), "ci:job-2").cache_key().clone(),
        builder(base.clone().audience("https://other.example"), "ci:job-1")
            .cache_key()
            .clone(),
        builder(
            base.clone().resource("https://api.example/users"),
            "ci:job-1",
        )
        .cache_key()
        .clone(),
        builder(
            gateway(
                &authority,
                TokenExchange::new(JWT_TOKEN_TYPE).requested_token_type(JWT_TOKEN_TYPE),
            ),
            "ci:job-1",
        )
        .cache_key()
        .clone(),
        F::builder(base.clone())
            .subject_token_file("/run/a")
            .cache_key()
            .clone(),
        F::builder(base)
            .subject_token_file("/run/b")
            .cache_key()
            .clone(),
    ];
    for (i, a) in keys.iter().enumerate() {
        assert!(!a.description().contains("callback-token-value"));
        for b in &keys[i + 1..] {
            assert_ne!(a, b, "{} / {}", a.description(), b.description());
        }
    }
    assert!(keys[5].description().contains("file:/run/a"));
}

fn a_pool_keeps_an_exchanged_token_per_subject<F: Flavor>() {
    let authority = Authority::start();
    for user in ["alice", "bob"] {
        authority.accept_exchange_token(JWT_TOKEN_TYPE, &format!("{user}-platform-token"), user);
    }
    let url = authority.token_url();
    let pool: TokenPool<String, F::R> =
        TokenPoolBuilder::new(F::runtime(), move |user: &String| {
            let token = format!("{user}-platform-token");
            OAuth2Client::token_exchange(
                url.as_str(),
                ClientId::new("gateway"),
                TokenExchange::new(JWT_TOKEN_TYPE),
            )
            .map(|client| {
                Source::oauth2(client)
                    .subject_token(ExchangeToken::from_fn(format!("user:{user}"), move || {
                        Ok(token.clone())
                    }))
            })
        })
        .first_token_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let alice = F::block_on(pool.get(&"alice".to_owned())).unwrap();
    let bob = F::block_on(pool.get(&"bob".to_owned())).unwrap();
    assert_ne!(alice.access_token, bob.access_token);
    let issued = authority.issued_tokens();
    let subject = |token: &str| {
        issued
            .iter()
            .find(|t| t.access_token == token)
            .map(|t| t.subject.clone())
    };
    assert_eq!(
        subject(alice.access_token.expose_secret()).as_deref(),
        Some("alice")
    );
    assert_eq!(
        subject(bob.access_token.expose_secret()).as_deref(),
        Some("bob")
    );
    assert_eq!(alice.issued_token_type(), Some(ACCESS_TOKEN_TYPE));
    assert_eq!(exchanges(&authority).len(), 2, "{}", F::NAME);
    F::block_on(pool.shutdown());
}
