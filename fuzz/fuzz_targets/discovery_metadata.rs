//! Reading an issuer's metadata document,
//! `tokenkeeper_core::oauth2::discovery::Metadata::parse`, and the lookup
//! that walks the well-known locations (`Lookup`).
//!
//! Input: one byte (its low two bits pick the issuer: https without a path,
//! https with a path, loopback http, https allowing insecure http; the next
//! bits the HTTP status: 200, 404, 503 or 200 with a tiny body cap), then
//! the body.
//!
//! Invariants beyond "no panic":
//! - a document is accepted only if its `issuer` is the configured issuer
//!   exactly, and its token endpoint passes the token URL rules (https, or
//!   http to loopback, or anywhere when the issuer allows insecure http);
//! - a refusal is classed: a document of another issuer or with an unusable
//!   endpoint is permanent, a body that is not JSON or too large transient;
//! - the lookup asks the RFC 8414 location only after a 4xx of the first,
//!   and never a third;
//! - no refusal's text shows the planted marker unless the document put it
//!   in its `issuer` (which the mismatch error names).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenkeeper_core::oauth2::TokenUrl;
use tokenkeeper_core::oauth2::discovery::{DiscoveryError, Issuer, Lookup, LookupStep, Metadata};
use tokenkeeper_core::{ErrorClass, Timestamp};
use tokenkeeper_fuzz::{assert_no_leak, take_u8};

const ISSUERS: [(&str, bool); 4] = [
    ("https://idp.example", false),
    ("https://idp.example/tenants/t1", false),
    ("http://127.0.0.1:8080", false),
    ("https://idp.example/", true),
];

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let flags = take_u8(&mut data);
    let (text, insecure) = ISSUERS[usize::from(flags & 3)];
    let issuer = Issuer::parse(text, insecure).expect("a valid issuer");
    let (status, cap) = match (flags >> 2) & 3 {
        0 => (200, 64 * 1024),
        1 => (404, 64 * 1024),
        2 => (503, 64 * 1024),
        _ => (200, 16),
    };
    let now = Timestamp::from_secs(1_700_000_000);
    match Metadata::parse(&issuer, status, data, cap, now) {
        Ok(metadata) => {
            assert_eq!(status, 200);
            assert_eq!(metadata.issuer(), issuer.as_str());
            let endpoint = metadata.token_endpoint();
            assert_eq!(
                TokenUrl::parse(endpoint.as_str(), insecure).as_ref(),
                Ok(endpoint),
                "an endpoint the token URL rules refuse"
            );
            assert_eq!(metadata.fetched(), now);
        }
        Err(error) => {
            let class = error.class();
            match &error {
                DiscoveryError::IssuerMismatch { .. } | DiscoveryError::Invalid { .. } => {
                    assert_eq!(class, ErrorClass::Permanent)
                }
                DiscoveryError::Unparseable { .. } | DiscoveryError::TooLarge { .. } => {
                    assert_eq!(class, ErrorClass::Transient)
                }
                DiscoveryError::Status { status: s } => assert_eq!(*s, status),
                other => panic!("unexpected refusal {other:?}"),
            }
            let allowed = match &error {
                DiscoveryError::IssuerMismatch { found, .. } => found.clone(),
                _ => String::new(),
            };
            assert_no_leak(
                "a metadata refusal",
                &format!("{error} / {error:?}"),
                &allowed,
            );
        }
    }

    // The lookup: whatever the first location answers, at most two requests.
    let mut lookup = Lookup::new(issuer.clone());
    let first = lookup.url();
    match lookup.handle_response(status, data, cap, now) {
        LookupStep::TryNext => {
            assert!((400..500).contains(&status));
            assert_ne!(lookup.url(), first);
            match lookup.handle_response(status, data, cap, now) {
                LookupStep::TryNext => panic!("a third location"),
                LookupStep::Failed(error) => assert!(error.is_permanent(), "{error:?}"),
                _ => {}
            }
        }
        LookupStep::Failed(error) => {
            assert!(!(400..500).contains(&status) || status == 200, "{error:?}")
        }
        _ => {}
    }
});
