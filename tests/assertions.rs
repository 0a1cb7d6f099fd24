//! Client assertions and the JWT bearer grant (RFC 7523) beyond the
//! conformance scenarios, on every driver: the errors are typed and classed
//! as documented (a configuration that cannot work fails spawn at once,
//! before any request; an assertion file that is briefly missing is
//! transient and the watcher starts once it appears; an expired one is a
//! permanent `SpawnError::Assertion`), and a `TokenPool` keeps a JWT bearer
//! token per subject (its sources carry their assertions).

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Flavor, fast_backoff};
use tokenkeeper_core::oauth2::OAuth2Client;
use tokenkeeper_core::oauth2::assertion::{AssertionProblem, GrantAssertion};
use tokenkeeper_core::{ClientId, FetchError};
use tokenkeeper_driver::assertion::{Assertion, ClientKey};
use tokenkeeper_driver::{Source, SpawnError, TokenPool, TokenPoolBuilder};
use tokenkeeper_testkit::Authority;
use tokenkeeper_testkit::authority::assertion::{public_jwk_from_pem, sign_test_assertion};
use tokenkeeper_testkit::authority::dpop::{KeyAlgorithm, private_key_pem};

per_driver!(
    configurations_that_cannot_work_fail_spawn_before_any_request,
    a_missing_assertion_file_is_waited_for_and_an_expired_one_refused,
    a_pool_keeps_a_jwt_bearer_token_per_subject,
    the_jwt_bearer_grant_with_private_key_jwt_carries_both_assertions,
    a_signer_outside_signs_the_claims_the_core_decides,
);

fn assertion_problem(error: &SpawnError) -> Option<AssertionProblem> {
    match error {
        SpawnError::Assertion {
            error: FetchError::Assertion { problem, .. },
        } => Some(*problem),
        _ => None,
    }
}

fn configurations_that_cannot_work_fail_spawn_before_any_request<F: Flavor>() {
    let authority = Authority::start();
    let client =
        OAuth2Client::private_key_jwt(authority.token_url(), ClientId::new("svc")).unwrap();
    // No key at all.
    let error = F::block_on(F::builder(client.clone()).spawn()).unwrap_err();
    assert_eq!(
        assertion_problem(&error),
        Some(AssertionProblem::Misconfigured),
        "{}: {error:?}",
        F::NAME
    );
    assert!(error.is_permanent());
    assert!(error.to_string().contains("private_key_jwt"), "{error}");
    // An HMAC key for private_key_jwt.
    let hmac = ClientKey::hmac(b"not-a-private-key").unwrap();
    let error = F::block_on(
        F::builder(client)
            .client_assertion(Assertion::signed(hmac))
            .spawn(),
    )
    .unwrap_err();
    assert_eq!(
        assertion_problem(&error),
        Some(AssertionProblem::Misconfigured)
    );
    // A JWT bearer grant described as signed, given a file.
    let bearer = OAuth2Client::jwt_bearer(
        authority.token_url(),
        ClientId::new("svc"),
        GrantAssertion::signed("svc", "alice"),
    )
    .unwrap();
    let error = F::block_on(
        F::builder(bearer)
            .grant_assertion(Assertion::file("/nonexistent/token"))
            .spawn(),
    )
    .unwrap_err();
    assert_eq!(
        assertion_problem(&error),
        Some(AssertionProblem::Misconfigured)
    );
    assert_eq!(authority.request_count(), 0, "{}", F::NAME);
}

fn a_missing_assertion_file_is_waited_for_and_an_expired_one_refused<F: Flavor>() {
    let authority = Authority::start();
    let issuer = "https://platform.example";
    let pem = private_key_pem(KeyAlgorithm::Es256).unwrap();
    authority.register_assertion_issuer(issuer, public_jwk_from_pem(&pem).unwrap());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token_url = authority.token_url();
    let made = |jti: &str, exp: u64| {
        sign_test_assertion(
            &pem,
            None,
            &serde_json::json!({"iss": issuer, "sub": "workload", "aud": token_url,
                                "iat": now, "exp": exp, "jti": jti}),
        )
        .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let client = OAuth2Client::jwt_bearer(
        authority.token_url(),
        ClientId::new("workload-client"),
        GrantAssertion::external("platform-token"),
    )
    .unwrap();
    // The file appears a moment after the start (a sidecar writing it):
    // transient failures, then a token.
    let writer = {
        let (path, text) = (path.clone(), made("late-1", now + 600));
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(400));
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        })
    };
    let watcher = F::block_on(
        F::builder(Source::oauth2(client.clone()).grant_assertion(Assertion::file(&path)))
            .backoff(fast_backoff())
            .first_token_timeout(Duration::from_secs(10))
            .spawn(),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", F::NAME));
    writer.join().unwrap();
    assert!(watcher.token().is_ok());
    let log = authority.requests();
    assert_eq!(
        log.len(),
        1,
        "{}: no request before the file was there",
        F::NAME
    );
    assert_eq!(
        log[0]
            .grant_assertion
            .as_ref()
            .and_then(|a| a.jti.as_deref()),
        Some("late-1")
    );
    assert_eq!(authority.issued_tokens()[0].subject, "workload");
    F::block_on(watcher.shutdown());

    // Expired: permanent at once, typed, and no request.
    std::fs::write(&path, made("old-1", now - 3600)).unwrap();
    let error = F::block_on(
        F::builder(Source::oauth2(client).grant_assertion(Assertion::file(&path)))
            .backoff(fast_backoff())
            .first_token_timeout(Duration::from_secs(10))
            .spawn(),
    )
    .unwrap_err();
    assert_eq!(
        assertion_problem(&error),
        Some(AssertionProblem::Expired),
        "{}: {error:?}",
        F::NAME
    );
    assert!(error.is_permanent());
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
    assert_eq!(authority.request_count(), 1, "{}", F::NAME);
}

fn a_pool_keeps_a_jwt_bearer_token_per_subject<F: Flavor>() {
    let authority = Authority::start();
    let issuer = "reports-service";
    let pem = private_key_pem(KeyAlgorithm::EdDsa).unwrap();
    authority.register_assertion_issuer(issuer, public_jwk_from_pem(&pem).unwrap());
    let key = ClientKey::from_pem(pem.as_bytes()).unwrap();
    let url = authority.token_url();
    let pool: TokenPool<String, F::R> =
        TokenPoolBuilder::new(F::runtime(), move |user: &String| {
            OAuth2Client::jwt_bearer(
                url.as_str(),
                ClientId::new(issuer),
                GrantAssertion::signed(issuer, user.as_str()),
            )
            .map(|client| Source::oauth2(client).grant_assertion(Assertion::signed(key.clone())))
        })
        .first_token_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let alice = F::block_on(pool.get(&"alice".to_owned())).unwrap();
    let bob = F::block_on(pool.get(&"bob".to_owned())).unwrap();
    assert_ne!(
        alice.access_token.expose_secret(),
        bob.access_token.expose_secret()
    );
    let issued = authority.issued_tokens();
    let subject_of = |token: &str| {
        issued
            .iter()
            .find(|t| t.access_token == token)
            .map(|t| t.subject.clone())
    };
    assert_eq!(
        subject_of(alice.access_token.expose_secret()).as_deref(),
        Some("alice")
    );
    assert_eq!(
        subject_of(bob.access_token.expose_secret()).as_deref(),
        Some("bob")
    );
    assert_eq!(authority.request_count(), 2, "{}", F::NAME);
    F::block_on(pool.shutdown());
}

fn the_jwt_bearer_grant_with_private_key_jwt_carries_both_assertions<F: Flavor>() {
    use tokenkeeper_core::oauth2::AuthMethod;
    use tokenkeeper_testkit::{Client, PresentedAuth};
    let authority = Authority::start();
    let client_pem = private_key_pem(KeyAlgorithm::Es256).unwrap();
    let issuer_pem = private_key_pem(KeyAlgorithm::EdDsa).unwrap();
    authority.register_client(Client::private_key_jwt(
        "gateway",
        public_jwk_from_pem(&client_pem).unwrap(),
    ));
    authority.register_assertion_issuer("idp", public_jwk_from_pem(&issuer_pem).unwrap());
    let client = OAuth2Client::jwt_bearer(
        authority.token_url(),
        ClientId::new("gateway"),
        GrantAssertion::signed("idp", "carol"),
    )
    .unwrap()
    .auth_method(AuthMethod::PrivateKeyJwt);
    let watcher = F::block_on(
        F::builder(client)
            .client_assertion(Assertion::signed(
                ClientKey::from_pem(client_pem.as_bytes()).unwrap(),
            ))
            .grant_assertion(Assertion::signed(
                ClientKey::from_pem(issuer_pem.as_bytes()).unwrap(),
            ))
            .spawn(),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", F::NAME));
    let log = authority.requests();
    let record = &log[0];
    assert_eq!(record.auth, PresentedAuth::Assertion, "{record:?}");
    assert!(record.authenticated, "{record:?}");
    let (auth, grant) = (
        record.client_assertion.as_ref().unwrap(),
        record.grant_assertion.as_ref().unwrap(),
    );
    assert_eq!(
        (auth.alg.as_str(), auth.sub.as_deref()),
        ("ES256", Some("gateway"))
    );
    assert_eq!(
        (grant.alg.as_str(), grant.sub.as_deref()),
        ("EdDSA", Some("carol"))
    );
    assert_eq!(authority.issued_tokens()[0].subject, "carol");
    F::block_on(watcher.shutdown());
}

fn a_signer_outside_signs_the_claims_the_core_decides<F: Flavor>() {
    use std::sync::{Arc, Mutex};
    use tokenkeeper_testkit::Client;
    let authority = Authority::start();
    let pem = private_key_pem(KeyAlgorithm::Es256).unwrap();
    authority.register_client(Client::private_key_jwt(
        "kms-client",
        public_jwk_from_pem(&pem).unwrap(),
    ));
    // A key "in a KMS": the signer sees only claims, and returns the JWS.
    let kms = ClientKey::from_pem(pem.as_bytes()).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let signer = {
        let seen = Arc::clone(&seen);
        Assertion::signed_by(move |claims| {
            seen.lock().unwrap().push(claims.clone());
            kms.sign(claims)
        })
    };
    let client =
        OAuth2Client::private_key_jwt(authority.token_url(), ClientId::new("kms-client")).unwrap();
    let watcher = F::block_on(
        F::builder(client)
            .client_assertion(signer)
            .refresh_now_min_interval(Duration::ZERO)
            .spawn(),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", F::NAME));
    let first = watcher.token().unwrap().into_arc();
    let _ = F::block_on(watcher.refresh_now());
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while watcher.token().unwrap().into_arc() == first && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    F::block_on(watcher.shutdown());
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2, "{}", F::NAME);
    assert_eq!(
        (seen[0].iss.as_str(), seen[0].sub.as_str()),
        ("kms-client", "kms-client")
    );
    assert_eq!(seen[0].aud, authority.token_url());
    assert_eq!(seen[0].exp - seen[0].iat, 60);
    assert_ne!(seen[0].jti, seen[1].jti);
    let log = authority.requests();
    assert_eq!(log.len(), 2);
    assert!(log.iter().all(|r| r.authenticated), "{log:?}");
}
