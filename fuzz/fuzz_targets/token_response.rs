//! `tokenkeeper_core::oauth2::parse_token_response` on arbitrary answers.
//!
//! Input: one byte picks the HTTP status, one the body size limit, one the
//! `Content-Type` (its low 3 bits; from a table) and the length of a
//! `Retry-After` value (its high 5 bits) that follows; the rest is the body.
//!
//! Invariants beyond "no panic":
//! - the result is deterministic and a body over the limit is refused as such;
//! - a grant comes only from a 2xx answer, holds the body's non-empty
//!   `access_token`, a bearer type, never `expires_in: 0`, and keeps in `extra`
//!   none of the fields it read;
//! - a redirect, a 404 or 405, or a web page sent as a success is "not a
//!   token endpoint", permanent, and shows nothing of the body;
//! - an OAuth2 error carries the body's `error` (escaped, capped); error
//!   statuses and `Retry-After` are the ones given; snippets are capped,
//!   printable and start with the status;
//! - no `Debug` or `Display` text shows a secret field's value (access, refresh
//!   or id token) unless the input also put it in a field that may be shown:
//!   a grant shows the names of extra fields, not their values; a snippet
//!   never shows a value of a JSON body, and of a body that names a credential
//!   field only a form's `error` and `error_description`.
#![no_main]

use http::header::{CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use tokenkeeper_core::backoff::parse_retry_after;
use tokenkeeper_core::oauth2::{DEFAULT_MAX_BODY_BYTES, parse_token_response};
use tokenkeeper_core::{FetchError, MAX_ERROR_CODE_CHARS, MAX_SNIPPET_CHARS, Timestamp};
use tokenkeeper_fuzz::{PLANTED, assert_no_leak, check_sanitised, shown_part_of, take_u8};

const STATUSES: [u16; 24] = [
    200, 201, 203, 204, 299, 400, 401, 403, 404, 408, 409, 429, 500, 502, 503, 504, 599, 0, 99,
    100, 199, 300, 302, 65535,
];

const CONTENT_TYPES: [Option<&str>; 8] = [
    None,
    Some("application/json"),
    Some("application/json; charset=utf-8"),
    Some("application/x-www-form-urlencoded"),
    Some("text/html; charset=iso-8859-1"),
    Some("text/plain"),
    Some("APPLICATION/X-WWW-FORM-URLENCODED;charset=UTF-8"),
    Some("application/problem+json"),
];

/// Words that make free text name a credential field (the core's list may
/// be longer: this only decides when the check below applies).
const CREDENTIAL_WORDS: [&str; 5] = ["token", "secret", "password", "passwd", "assertion"];

const NOW: Timestamp = Timestamp::from_secs(1_700_000_000);

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let status = STATUSES[usize::from(take_u8(&mut data)) % STATUSES.len()];
    let limit = match take_u8(&mut data) {
        // Mostly the real default, sometimes a small cap to reach the refusal.
        b @ 224.. => usize::from(b - 224) * 32,
        _ => DEFAULT_MAX_BODY_BYTES,
    };
    let header_byte = take_u8(&mut data);
    let content_type = CONTENT_TYPES[usize::from(header_byte & 7)];
    let header_len = usize::from(header_byte >> 3).min(data.len());
    let (header, body) = data.split_at(header_len);
    let mut headers = HeaderMap::new();
    if let Some(ct) = content_type {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    let header_value = HeaderValue::from_bytes(header).ok();
    if let Some(value) = &header_value {
        headers.insert(RETRY_AFTER, value.clone());
    }
    let expected_retry_after = header_value
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, NOW));

    let result = parse_token_response(status, &headers, body, NOW, limit);
    assert_eq!(
        result,
        parse_token_response(status, &headers, body, NOW, limit),
        "not deterministic"
    );

    if body.len() > limit {
        assert_eq!(result, Err(FetchError::BodyTooLarge { limit }));
        return;
    }
    let object: Option<Map<String, Value>> = match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    };
    let mut allowed = object.as_ref().map(shown_part_of).unwrap_or_default();
    let success = (200..300).contains(&status);

    match &result {
        Ok(grant) => {
            assert!(success, "a grant from HTTP {status}");
            let map = object
                .as_ref()
                .expect("a grant from a body that is no JSON object");
            assert!(!map.get("error").is_some_and(Value::is_string));
            let token = grant.access_token.expose_secret();
            assert!(!token.is_empty());
            assert_eq!(map.get("access_token").and_then(Value::as_str), Some(token));
            assert!(grant.token_type.eq_ignore_ascii_case("bearer"));
            assert_ne!(grant.expires_in, Some(std::time::Duration::ZERO));
            for read in [
                "access_token",
                "token_type",
                "expires_in",
                "refresh_in",
                "refresh_token",
                "id_token",
                "scope",
            ] {
                assert!(!grant.extra.contains_key(read), "{read} left in extra");
            }
            // A grant's Debug names extra fields without their values.
            let mut shown_fields: Vec<&str> = map.keys().map(String::as_str).collect();
            shown_fields.extend(
                ["token_type", "scope"]
                    .iter()
                    .filter_map(|f| map.get(*f)?.as_str()),
            );
            assert_no_leak(
                "a grant's Debug",
                &format!("{grant:?}"),
                &shown_fields.join(" "),
            );
        }
        Err(error) => {
            match error {
                FetchError::OAuth {
                    status: s,
                    error: oauth,
                    retry_after,
                } => {
                    assert_eq!(*s, status);
                    let map = object
                        .as_ref()
                        .expect("an OAuth2 error from no JSON object");
                    let raw = map.get("error").and_then(Value::as_str);
                    let raw = raw.expect("an OAuth2 error without an error code");
                    check_sanitised(raw, &oauth.error, MAX_ERROR_CODE_CHARS);
                    // Display sanitises again, which changes nothing more.
                    let mut display = oauth.error.clone();
                    if let Some(d) = &oauth.description {
                        display = format!("{display}: {d}");
                    }
                    assert_eq!(oauth.to_string(), display);
                    assert_eq!(*retry_after, expected_retry_after);
                }
                FetchError::Status {
                    status: s,
                    snippet,
                    retry_after,
                } => {
                    assert_eq!(*s, status);
                    assert!(!success, "a bare status error for HTTP {status}");
                    assert!(snippet.chars().count() <= MAX_SNIPPET_CHARS, "{snippet:?}");
                    assert!(!snippet.chars().any(char::is_control), "{snippet:?}");
                    assert!(
                        snippet.starts_with(&format!("HTTP {status}")),
                        "{snippet:?}"
                    );
                    assert_eq!(*retry_after, expected_retry_after);
                    // A snippet quotes text bodies on purpose, but never a
                    // JSON value, and of a body that names a credential field
                    // only a form's error and description.
                    let json = serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok();
                    let lower = String::from_utf8_lossy(body).to_ascii_lowercase();
                    if json {
                        allowed.clear();
                    } else if CREDENTIAL_WORDS.iter().any(|w| lower.contains(w)) {
                        allowed = url::form_urlencoded::parse(body)
                            .filter(|(name, _)| name == "error" || name == "error_description")
                            .map(|(_, value)| value.into_owned())
                            .collect::<Vec<_>>()
                            .join(" ");
                    } else {
                        allowed = PLANTED.to_owned();
                    }
                }
                FetchError::InvalidBody { status: s, .. } => {
                    assert_eq!(*s, status);
                    assert!(success);
                }
                FetchError::UnsupportedTokenType { token_type } => {
                    assert!(success);
                    assert!(!token_type.eq_ignore_ascii_case("bearer"));
                }
                FetchError::NotATokenEndpoint { status: s, reason } => {
                    // A redirect, 404 or 405, or a web page sent as a
                    // success; never an answer carrying an OAuth2 error.
                    assert_eq!(*s, status);
                    let html = content_type
                        .is_some_and(|c| c.to_ascii_lowercase().starts_with("text/html"))
                        || body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'<');
                    assert!(
                        (300..400).contains(&status)
                            || status == 404
                            || status == 405
                            || (success && html),
                        "HTTP {status}: {reason}"
                    );
                    assert!(
                        !object
                            .as_ref()
                            .is_some_and(|m| m.get("error").is_some_and(Value::is_string))
                    );
                    assert!(error.is_permanent() && error.is_misconfiguration());
                    // It shows nothing of the body.
                    allowed.clear();
                }
                other => panic!("unexpected error kind: {other:?}"),
            }
            assert_no_leak(
                "an error",
                &format!("{error} / {error:?} / {:?}", error.class()),
                &allowed,
            );
        }
    }
});
