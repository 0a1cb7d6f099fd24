//! The token URL rules, `tokenkeeper_core::oauth2::TokenUrl::parse`.
//!
//! Input: one byte (its low bit: allow insecure http), then the URL text.
//!
//! Invariants beyond "no panic":
//! - an accepted URL is https, or http to a loopback host (or anywhere when
//!   allowed), has a host, no user name, password or fragment;
//! - parsing is idempotent (the accepted URL's text parses to the same URL)
//!   and allowing insecure http never refuses what was accepted without it;
//! - `Display` and `Debug` of the URL (`TokenUrl::redacted`), `Debug` of a
//!   client built on it (holding a planted client secret and extra parameter)
//!   and of its token request, the client's cache key description, and the
//!   text of any refusal never show the planted secret unless it is in the
//!   URL's host or path, which they may show.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use tokenkeeper_core::oauth2::{ConfigError, OAuth2Client, TokenUrl};
use tokenkeeper_core::{CacheKey, ClientId, ClientSecret, FetchError};
use tokenkeeper_fuzz::{PLANTED, assert_no_leak, take_u8};

/// Loopback, written independently of the core's `is_loopback_host`: the
/// last DNS label is `localhost` (RFC 6761), or the address is in
/// 127.0.0.0/8, `::1`, or `::ffff:127.0.0.0/104`.
fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.octets()[0] == 127,
        Ok(IpAddr::V6(v6)) => {
            let s = v6.segments();
            v6 == std::net::Ipv6Addr::LOCALHOST
                || (s[..5] == [0; 5] && s[5] == 0xffff && s[6] >> 8 == 127)
        }
        Err(_) => bare
            .strip_suffix('.')
            .unwrap_or(bare)
            .rsplit('.')
            .next()
            .is_some_and(|last| last.eq_ignore_ascii_case("localhost")),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let allow_insecure = take_u8(&mut data) & 1 == 1;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let result = TokenUrl::parse(text, allow_insecure);
    match &result {
        Ok(url) => {
            let u = url.as_url();
            let host = u.host_str().unwrap_or_default();
            assert!(!host.is_empty());
            match u.scheme() {
                "https" => {}
                "http" => assert!(allow_insecure || is_loopback(host), "{url}"),
                other => panic!("scheme {other} accepted"),
            }
            assert!(u.username().is_empty() && u.password().is_none(), "{url}");
            assert!(u.fragment().is_none(), "{url}");
            assert_eq!(url.as_str(), u.as_str());

            assert_eq!(
                TokenUrl::parse(url.as_str(), allow_insecure).as_ref(),
                Ok(url),
                "not idempotent: {text:?} became {url}"
            );
            if !allow_insecure {
                assert_eq!(TokenUrl::parse(text, true).as_ref(), Ok(url));
            }

            let allowed = format!("{host} {}", u.path());
            let redacted = url.redacted();
            assert_eq!(url.to_string(), redacted);
            assert_eq!(format!("{url:?}"), format!("TokenUrl({redacted})"));
            assert_no_leak("a token URL's Display", &redacted, &allowed);
            assert_eq!(
                u.query().is_some(),
                redacted.ends_with("?<redacted>"),
                "{redacted}"
            );
            let client = OAuth2Client::client_credentials(
                url.as_str(),
                ClientId::new("c"),
                ClientSecret::new(PLANTED),
            );
            // Built from an http URL that was allowed only insecurely, the
            // client (which does not allow it) refuses; otherwise it accepts.
            if let Ok(client) = client {
                let client = client
                    .extra_param("signed_request", PLANTED)
                    .expect("not a reserved name");
                assert_no_leak("a client's Debug", &format!("{client:?}"), &allowed);
                let key = CacheKey::for_client(&client);
                assert_no_leak("a cache key's description", key.description(), &allowed);
                assert_no_leak("a cache key", &format!("{key:?} {key}"), "");
                // The request is built unless the http crate refuses the URL
                // (it is stricter than the url crate about some characters of
                // a host, such as '`'): then every fetch fails, as a
                // transport error.
                match client.build_request(None) {
                    Ok(request) => {
                        assert_no_leak(
                            "a token request's Debug",
                            &format!("{request:?}"),
                            &allowed,
                        );
                        let sent = request.as_http();
                        assert_eq!(sent.method(), http::Method::POST);
                        assert_eq!(sent.uri().to_string(), url.as_str(), "sent elsewhere");
                    }
                    Err(error) => {
                        assert!(
                            http::Uri::try_from(url.as_str()).is_err(),
                            "no request to {url}: {error}"
                        );
                        assert!(matches!(error, FetchError::Transport { .. }), "{error:?}");
                        assert_no_leak("a request error", &format!("{error} {error:?}"), &allowed);
                    }
                }
            } else {
                assert!(allow_insecure && u.scheme() == "http");
            }
        }
        Err(error) => {
            if allow_insecure {
                assert!(!matches!(error, ConfigError::InsecureUrl { .. }));
            }
            let allowed = match error {
                ConfigError::InsecureUrl { host } => host.clone(),
                ConfigError::UnsupportedScheme(scheme) => scheme.clone(),
                _ => String::new(),
            };
            assert_no_leak(
                "a refused URL's error",
                &format!("{error} / {error:?}"),
                &allowed,
            );
        }
    }
});
