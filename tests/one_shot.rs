//! The one-shot `get_token` (`builder.get_token(OneShot::new()...)`), for
//! programs that run and exit, written once and run against every driver
//! (tokio, async-std, smol, threads) with the test kit's authority.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::Flavor;
use tokenkeeper_core::oauth2::OAuth2Client;
use tokenkeeper_core::{
    AccessToken, CacheKey, ClientId, ClientSecret, ErrorClass, FetchError, Origin, TokenGrant,
};
use tokenkeeper_driver::{
    GetTokenError, Obtained, OneShot, Source, SpawnError, TokenWatcherBuilder, Warning,
};
use tokenkeeper_testkit::{Authority, Client, Fault};

const ID: &str = "one-shot-client";
const SECRET: &str = "one-shot-secret-4b1d";

fn authority(lifetime: Duration) -> Authority {
    let authority = Authority::start();
    authority.register_client(Client::new(ID, SECRET).token_lifetime(lifetime));
    authority
}

fn client(authority: &Authority, secret: &str) -> OAuth2Client {
    OAuth2Client::client_credentials(
        authority.token_url(),
        ClientId::new(ID),
        ClientSecret::new(secret),
    )
    .unwrap()
}

fn get<F: Flavor>(
    builder: TokenWatcherBuilder<F::R>,
    options: OneShot,
) -> Result<Obtained, GetTokenError> {
    F::block_on(builder.get_token(options))
}

fn access(obtained: &Obtained) -> String {
    obtained.token.access_token.expose_secret().to_owned()
}

fn fetches_once_and_then_reads_the_cache<F: Flavor>() {
    let authority = authority(Duration::from_secs(300));
    let dir = tempfile::tempdir().unwrap();
    let cached = || F::builder(client(&authority, SECRET)).file_cache_in(dir.path());
    let first = get::<F>(cached(), OneShot::new()).expect("a token");
    assert_eq!(first.origin, Origin::Authority);
    assert!(first.warnings.is_empty(), "{:?}", first.warnings);
    assert_eq!(
        first.token.access_token.expose_secret(),
        authority.last_access_token().unwrap()
    );
    assert!(
        first
            .token
            .is_usable_at(tokenkeeper_core::Timestamp::from_system_time(
                std::time::SystemTime::now()
            ))
    );
    let second = get::<F>(cached(), OneShot::new()).expect("a token");
    assert!(
        matches!(second.origin, Origin::Cache { layer: 0 }),
        "{:?}",
        second.origin
    );
    assert!(second.warnings.is_empty(), "{:?}", second.warnings);
    assert_eq!(access(&first), access(&second));
    assert_eq!(authority.request_count(), 1, "{}", F::NAME);

    // Without a cache every call asks.
    get::<F>(F::builder(client(&authority, SECRET)), OneShot::new()).unwrap();
    get::<F>(F::builder(client(&authority, SECRET)), OneShot::new()).unwrap();
    assert_eq!(authority.request_count(), 3);
}

fn min_valid_forces_one_refresh<F: Flavor>() {
    let authority = authority(Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap();
    let cached = || F::builder(client(&authority, SECRET)).file_cache_in(dir.path());
    let first = get::<F>(cached(), OneShot::new()).unwrap();
    std::thread::sleep(Duration::from_millis(1_100));

    // Enough left: the cached token, no request.
    let same = get::<F>(cached(), OneShot::new().min_valid(Duration::from_secs(30))).unwrap();
    assert_eq!(access(&same), access(&first));
    assert!(matches!(same.origin, Origin::Cache { .. }));
    assert_eq!(authority.request_count(), 1);

    // Not enough left: one forced refresh.
    let newer = get::<F>(cached(), OneShot::new().min_valid(Duration::from_secs(59))).unwrap();
    assert_ne!(access(&newer), access(&first));
    assert_eq!(newer.origin, Origin::Authority);
    assert!(newer.warnings.is_empty(), "{:?}", newer.warnings);
    assert_eq!(authority.request_count(), 2);

    // More than the authority ever grants: one fetch, and a warning.
    let short = get::<F>(
        cached(),
        OneShot::new().min_valid(Duration::from_secs(3_600)),
    )
    .unwrap();
    assert_ne!(access(&short), access(&newer));
    match short.warnings.as_slice() {
        [Warning::ShortLived { remaining }] => {
            assert!(*remaining <= Duration::from_secs(60), "{remaining:?}")
        }
        other => panic!("{}: {other:?}", F::NAME),
    }
    assert_eq!(authority.request_count(), 3, "{}", F::NAME);
}

fn serves_a_stale_token_when_its_refresh_fails<F: Flavor>() {
    // 2 s tokens go stale at 1 s.
    let authority = authority(Duration::from_secs(2));
    let dir = tempfile::tempdir().unwrap();
    let cached = || F::builder(client(&authority, SECRET)).file_cache_in(dir.path());
    let first = get::<F>(cached(), OneShot::new()).unwrap();
    std::thread::sleep(Duration::from_millis(1_100));
    authority.push_fault(Fault::status(503));
    let stale = get::<F>(cached(), OneShot::new()).unwrap();
    assert_eq!(access(&stale), access(&first));
    assert!(matches!(stale.origin, Origin::Cache { .. }));
    assert!(
        matches!(
            stale.warnings.as_slice(),
            [Warning::RefreshFailed(FetchError::Status {
                status: 503,
                ..
            })]
        ),
        "{}: {:?}",
        F::NAME,
        stale.warnings
    );
    assert!(
        stale.warnings[0]
            .to_string()
            .contains("using the cached token")
    );
    assert_eq!(authority.request_count(), 2);
}

fn errors_are_typed<F: Flavor>() {
    let authority = authority(Duration::from_secs(60));
    let started = Instant::now();
    let rejected = get::<F>(
        F::builder(client(&authority, "wrong-secret-e1")),
        OneShot::new(),
    )
    .expect_err("a wrong secret");
    assert!(started.elapsed() < Duration::from_secs(5));
    match &rejected {
        GetTokenError::Rejected(error) => {
            assert_eq!(error.class(), ErrorClass::Permanent);
            assert_eq!(error.oauth_error().unwrap().error, "invalid_client");
        }
        other => panic!("{}: {other:?}", F::NAME),
    }
    let shown = format!("{rejected} {rejected:?}");
    assert!(shown.contains("invalid_client"), "{shown}");
    assert!(!shown.contains("wrong-secret-e1"), "{shown}");
    assert_eq!(
        authority.request_count(),
        1,
        "permanent errors are not retried"
    );

    authority.set_down(true);
    let started = Instant::now();
    let down = get::<F>(
        F::builder(client(&authority, SECRET)),
        OneShot::new().max_wait(Duration::from_millis(1_500)),
    )
    .expect_err("the authority is down");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1_400) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    match &down {
        GetTokenError::Unavailable {
            last_error: Some(FetchError::Status { status: 503, .. }),
            ..
        } => {}
        other => panic!("{}: {other:?}", F::NAME),
    }
    assert!(down.to_string().contains("503"), "{down}");
    let count = authority.request_count();
    assert!(count >= 3, "transient errors are retried: {count}");
    // Nothing is left running.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(authority.request_count(), count, "{}", F::NAME);
}

fn works_with_a_custom_source<F: Flavor>() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let source = Source::from_blocking_fn(CacheKey::custom("test", &["one-shot"]), move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        if n == 1 {
            return Err(FetchError::Source {
                message: "warming up".into(),
                class: ErrorClass::Transient,
            });
        }
        Ok(TokenGrant::bearer(
            AccessToken::new(format!("custom-{n}")),
            Some(Duration::from_secs(600)),
        ))
    });
    let obtained = get::<F>(F::builder(source), OneShot::new()).unwrap();
    assert_eq!(access(&obtained), "custom-2");
    assert_eq!(obtained.origin, Origin::Authority);
    assert!(obtained.warnings.is_empty(), "{:?}", obtained.warnings);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "{}", F::NAME);
}

per_driver!(
    fetches_once_and_then_reads_the_cache,
    min_valid_forces_one_refresh,
    serves_a_stale_token_when_its_refresh_fails,
    errors_are_typed,
    works_with_a_custom_source,
);

/// tokio only: the one-shot binds the runtime it runs in, so it can be built
/// anywhere; polled outside a runtime it says so.
#[test]
fn tokio_binds_the_runtime_it_is_polled_in() {
    type Builder = TokenWatcherBuilder<tokenkeeper_tokio::TokioRuntime>;
    let authority = authority(Duration::from_secs(60));
    let outside = futures_lite::future::block_on(
        Builder::new(Default::default(), client(&authority, SECRET)).get_token(OneShot::new()),
    );
    assert!(
        matches!(outside, Err(GetTokenError::Start(SpawnError::NoRuntime))),
        "{outside:?}"
    );
    assert_eq!(authority.request_count(), 0);

    let runtime = ::tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let future =
        Builder::new(Default::default(), client(&authority, SECRET)).get_token(OneShot::new());
    let obtained = runtime.block_on(future).unwrap();
    assert_eq!(access(&obtained), authority.last_access_token().unwrap());
    assert_eq!(authority.request_count(), 1);
}
