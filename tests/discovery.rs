//! Discovery (OpenID Connect Discovery, RFC 8414) on every driver: a client
//! made from an issuer gets its token endpoint from the issuer's metadata
//! (one metadata request, then tokens), through the same effects as token
//! requests; a document naming another issuer is a permanent, typed error
//! and no token is asked for; a moved token endpoint is looked up again after
//! the failure and tokens flow from the new one; the metadata is cached with
//! the token record, so a restart sharing the file cache asks for none; an
//! issuer with a path is found at the RFC 8414 location (path inserted) when
//! it publishes no OpenID Connect document; metadata older than the
//! client's `discovery_max_age` is fetched again before the next token
//! request.

mod common;

use std::time::{Duration, Instant};

use common::{Flavor, fast_backoff};
use tokenkeeper_core::oauth2::AuthMethod;
use tokenkeeper_core::oauth2::OAuth2Client;
use tokenkeeper_core::oauth2::discovery::{DiscoveryError, Issuer};
use tokenkeeper_core::{ClientId, ClientSecret, FetchError, Jitter, RefreshNow};
use tokenkeeper_driver::{SpawnError, TokenWatcher, TokenWatcherBuilder};
use tokenkeeper_testkit::{Authority, Client, Outcome};

per_driver!(
    the_token_endpoint_comes_from_the_metadata,
    a_document_naming_another_issuer_is_a_permanent_typed_error,
    a_moved_token_endpoint_is_looked_up_again_after_the_failure,
    a_restart_with_a_file_cache_asks_for_no_metadata,
    an_issuer_with_a_path_is_found_at_the_rfc_8414_location,
    metadata_older_than_its_max_age_is_fetched_again,
);

const SECRET: &str = "discovery-secret-4f0a";

fn authority() -> Authority {
    let authority = Authority::start();
    authority.register_client(Client::new("svc", SECRET));
    authority
}

fn client(issuer: &str) -> OAuth2Client {
    OAuth2Client::from_issuer(
        issuer,
        ClientId::new("svc"),
        Some(ClientSecret::new(SECRET)),
    )
    .unwrap()
}

fn quick<F: Flavor>(client: OAuth2Client) -> TokenWatcherBuilder<F::R> {
    F::builder(client)
        .jitter(Jitter::none())
        .backoff(fast_backoff())
        .first_token_timeout(Duration::from_secs(10))
}

fn spawn<F: Flavor>(builder: TokenWatcherBuilder<F::R>) -> TokenWatcher<F::R> {
    F::block_on(builder.spawn()).unwrap_or_else(|e| panic!("{}: spawn failed: {e}", F::NAME))
}

/// Waits up to 10 s for a token other than `old`.
fn next_token<F: Flavor>(watcher: &TokenWatcher<F::R>, old: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(token) = watcher.token()
            && token.access_token.expose_secret() != old
        {
            return token.access_token.expose_secret().to_owned();
        }
        assert!(Instant::now() < deadline, "{}: no new token", F::NAME);
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The method and path of every request, in order.
fn requests(authority: &Authority) -> Vec<(String, String)> {
    authority
        .requests()
        .into_iter()
        .map(|r| (r.method, r.path))
        .collect()
}

fn the_token_endpoint_comes_from_the_metadata<F: Flavor>() {
    let authority = authority();
    // The token endpoint is not where a client would guess it.
    let token_url = authority.move_token_endpoint("/oauth2/v2.0/token");
    let watcher = spawn::<F>(quick::<F>(client(&authority.discovery_issuer())));
    let token = watcher.token().unwrap();
    assert_eq!(
        Some(token.access_token.expose_secret().to_owned()),
        authority.last_access_token()
    );
    assert_eq!(
        requests(&authority),
        [
            (
                "GET".to_owned(),
                "/.well-known/openid-configuration".to_owned()
            ),
            ("POST".to_owned(), "/oauth2/v2.0/token".to_owned()),
        ],
        "{}",
        F::NAME
    );
    assert!(token_url.ends_with("/oauth2/v2.0/token"));
    // The answer was logged as a served document, and the token request
    // authenticated as the client.
    assert_eq!(authority.requests()[0].outcome, Outcome::MetadataServed);
    assert_eq!(authority.count_by_grant("client_credentials"), 1);
    assert_eq!(authority.metadata_request_count(), 1);
    F::block_on(watcher.shutdown());
}

fn a_document_naming_another_issuer_is_a_permanent_typed_error<F: Flavor>() {
    let authority = authority();
    authority.set_metadata_issuer(Some("https://impostor.example"));
    let issuer = authority.discovery_issuer();
    let started = Instant::now();
    let error = F::block_on(quick::<F>(client(&issuer)).spawn()).unwrap_err();
    // Permanent: spawn gives up at once rather than at its timeout.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(error.is_permanent(), "{}: {error:?}", F::NAME);
    let SpawnError::Misconfigured {
        error: FetchError::Discovery { url, error: cause },
    } = &error
    else {
        panic!("{}: not a discovery misconfiguration: {error:?}", F::NAME)
    };
    assert_eq!(
        cause,
        &DiscoveryError::IssuerMismatch {
            expected: issuer.clone(),
            found: "https://impostor.example".into()
        }
    );
    assert!(url.ends_with("/.well-known/openid-configuration"), "{url}");
    let shown = error.to_string();
    assert!(
        shown.contains("https://impostor.example") && shown.contains(&issuer),
        "{shown}"
    );
    // No token was asked for from an endpoint the document named.
    assert_eq!(authority.count_by_grant("client_credentials"), 0);
    assert_eq!(authority.metadata_request_count(), 1);
}

fn a_moved_token_endpoint_is_looked_up_again_after_the_failure<F: Flavor>() {
    let authority = authority();
    let watcher = spawn::<F>(
        quick::<F>(client(&authority.discovery_issuer()))
            .refresh_now_min_interval(Duration::from_millis(1)),
    );
    let first = watcher
        .token()
        .unwrap()
        .access_token
        .expose_secret()
        .to_owned();
    assert_eq!(authority.metadata_request_count(), 1);

    authority.move_token_endpoint("/v2/token");
    assert_eq!(
        F::block_on(watcher.refresh_now()),
        Ok(RefreshNow::Started),
        "{}",
        F::NAME
    );
    let second = next_token::<F>(&watcher, &first);
    assert_eq!(Some(second), authority.last_access_token());
    let log = requests(&authority);
    assert_eq!(
        log[2..],
        [
            ("POST".to_owned(), "/token".to_owned()),
            (
                "GET".to_owned(),
                "/.well-known/openid-configuration".to_owned()
            ),
            ("POST".to_owned(), "/v2/token".to_owned()),
        ],
        "{}: {log:?}",
        F::NAME
    );
    assert_eq!(authority.requests()[2].status, Some(404));
    // The failure that was cured is not left as the watcher's error.
    assert_eq!(watcher.status().consecutive_failures, 0, "{}", F::NAME);
    F::block_on(watcher.shutdown());
}

fn a_restart_with_a_file_cache_asks_for_no_metadata<F: Flavor>() {
    let authority = authority();
    authority.move_token_endpoint("/tenant/token");
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("token.json");
    let issuer = authority.discovery_issuer();
    let first = spawn::<F>(quick::<F>(client(&issuer)).file_cache(&cache));
    let token = first
        .token()
        .unwrap()
        .access_token
        .expose_secret()
        .to_owned();
    F::block_on(first.shutdown());
    assert_eq!(authority.metadata_request_count(), 1);
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
    assert_eq!(
        stored["discovery"]["token_endpoint"],
        format!("{}/tenant/token", authority.base_url())
    );

    // A restart: the cached token, then a forced refresh that goes
    // straight to the token endpoint the record remembers.
    let again = spawn::<F>(
        quick::<F>(client(&issuer))
            .file_cache(&cache)
            .refresh_now_min_interval(Duration::from_millis(1)),
    );
    assert_eq!(again.token().unwrap().access_token.expose_secret(), token);
    assert_eq!(
        authority.request_count(),
        2,
        "{}: served from the cache",
        F::NAME
    );
    assert_eq!(F::block_on(again.refresh_now()), Ok(RefreshNow::Started));
    let renewed = next_token::<F>(&again, &token);
    assert_eq!(Some(renewed), authority.last_access_token());
    assert_eq!(
        authority.metadata_request_count(),
        1,
        "{}: {:?}",
        F::NAME,
        requests(&authority)
    );
    assert_eq!(authority.count_by_grant("client_credentials"), 2);
    F::block_on(again.shutdown());
}

fn an_issuer_with_a_path_is_found_at_the_rfc_8414_location<F: Flavor>() {
    let authority = authority();
    authority.set_issuer_path("/tenants/t1");
    authority.serve_metadata(false, true);
    let issuer = authority.discovery_issuer();
    assert!(issuer.ends_with("/tenants/t1"));
    // A private_key_jwt client too: its assertion's audience is the token
    // endpoint the metadata named.
    let key = tokenkeeper_testkit::authority::dpop::private_key_pem(
        tokenkeeper_testkit::authority::dpop::KeyAlgorithm::Es256,
    )
    .unwrap();
    let jwk = tokenkeeper_testkit::authority::assertion::public_jwk_from_pem(&key).unwrap();
    authority.register_client(Client::private_key_jwt("signer", jwk));
    let signer = OAuth2Client::private_key_jwt(&issuer, ClientId::new("signer"))
        .unwrap()
        .with_issuer(Issuer::parse(&issuer, false).unwrap());
    assert_eq!(signer.get_auth_method(), AuthMethod::PrivateKeyJwt);

    let watcher = spawn::<F>(quick::<F>(client(&issuer)));
    let signed = spawn::<F>(quick::<F>(signer).client_assertion(
        tokenkeeper_driver::assertion::Assertion::signed(
            tokenkeeper_driver::assertion::ClientKey::from_pem(key.as_bytes()).unwrap(),
        ),
    ));
    assert!(watcher.token().is_ok() && signed.token().is_ok());
    let log = requests(&authority);
    assert_eq!(
        log[..3],
        [
            (
                "GET".to_owned(),
                "/tenants/t1/.well-known/openid-configuration".to_owned()
            ),
            (
                "GET".to_owned(),
                "/.well-known/oauth-authorization-server/tenants/t1".to_owned()
            ),
            ("POST".to_owned(), "/token".to_owned()),
        ],
        "{}: {log:?}",
        F::NAME
    );
    assert_eq!(authority.requests()[0].status, Some(404));
    assert_eq!(authority.metadata_request_count(), 4);
    assert_eq!(authority.count_by_client("signer"), 1);
    F::block_on(watcher.shutdown());
    F::block_on(signed.shutdown());
}

fn metadata_older_than_its_max_age_is_fetched_again<F: Flavor>() {
    let authority = authority();
    let watcher = spawn::<F>(
        quick::<F>(
            client(&authority.discovery_issuer()).discovery_max_age(Duration::from_millis(300)),
        )
        .refresh_now_min_interval(Duration::from_millis(1)),
    );
    let first = watcher
        .token()
        .unwrap()
        .access_token
        .expose_secret()
        .to_owned();
    // Young metadata: a refresh asks for none.
    assert_eq!(F::block_on(watcher.refresh_now()), Ok(RefreshNow::Started));
    let second = next_token::<F>(&watcher, &first);
    assert_eq!(authority.metadata_request_count(), 1, "{}", F::NAME);
    // Old metadata, and an endpoint that moved meanwhile: asked for again
    // before the token request, which goes to the new endpoint at once.
    std::thread::sleep(Duration::from_millis(400));
    authority.move_token_endpoint("/v3/token");
    assert_eq!(F::block_on(watcher.refresh_now()), Ok(RefreshNow::Started));
    next_token::<F>(&watcher, &second);
    let log = requests(&authority);
    assert_eq!(
        log[log.len() - 2..],
        [
            (
                "GET".to_owned(),
                "/.well-known/openid-configuration".to_owned()
            ),
            ("POST".to_owned(), "/v3/token".to_owned()),
        ],
        "{}: {log:?}",
        F::NAME
    );
    assert_eq!(authority.count_by_status(404), 0, "no failed request");
    F::block_on(watcher.shutdown());
}
