//! The driver written from `docs/embedding.md` alone (`examples/embedding.rs`)
//! gets, refreshes and shuts down against the test authority.

#[path = "../examples/embedding.rs"]
mod embedding;

use std::time::Duration;

use tokenkeeper_core::cache::decode_record;
use tokenkeeper_core::oauth2::OAuth2Client;
use tokenkeeper_core::{CacheKey, ClientId, ClientSecret, LeaseOutcome};
use tokenkeeper_fs::{FileCache, FileLayer};
use tokenkeeper_testkit::{Authority, Client};

#[test]
fn a_hand_written_driver_gets_refreshes_caches_and_shuts_down() {
    let authority = Authority::start();
    authority
        .register_client(Client::new("embedded", "s3cret").token_lifetime(Duration::from_secs(6)));
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("token.json");

    let outcome = embedding::run(&authority.token_url(), "embedded", "s3cret", &cache, 3).unwrap();
    assert!(outcome.finished, "{outcome:?}");
    assert_eq!(outcome.requests, 3, "{outcome:?}");
    assert_eq!(authority.request_count(), 3);
    assert_eq!(outcome.tokens.len(), 3);
    assert!(
        outcome.tokens[0] != outcome.tokens[1] && outcome.tokens[1] != outcome.tokens[2],
        "each refresh brought a new token"
    );

    // The last token is in the cache, and the lease was given back.
    let client = OAuth2Client::client_credentials(
        authority.token_url(),
        ClientId::new("embedded"),
        ClientSecret::new("s3cret"),
    )
    .unwrap();
    let stored = FileCache::new(&cache).load().unwrap().expect("a record");
    let record = decode_record(&CacheKey::for_client(&client), &stored).unwrap();
    assert_eq!(record.access_token.expose_secret(), outcome.tokens[2]);
    let other = FileLayer::new(FileCache::new(&cache));
    assert_eq!(other.try_acquire(), LeaseOutcome::Acquired);
    other.release();

    // The next run is served by the cache, without a request.
    let again = embedding::run(&authority.token_url(), "embedded", "s3cret", &cache, 1).unwrap();
    assert_eq!(again.requests, 0, "{again:?}");
    assert_eq!(again.tokens, vec![outcome.tokens[2].clone()]);
    assert_eq!(authority.request_count(), 3);
}
