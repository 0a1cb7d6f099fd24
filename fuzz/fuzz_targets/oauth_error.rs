//! RFC 6749 §5.2 error bodies, read by
//! `tokenkeeper_core::oauth2::parse_token_response`, from a description of
//! the answer rather than raw bytes, so that every input is an error answer.
//!
//! Input: text lines `name: value` (others are ignored), e.g.
//!
//! ```text
//! status: 400
//! error: invalid_grant
//! error_description: "the refresh token was revoked"
//! error_uri: https://auth.example/errors#invalid_grant
//! retry-after: date 784111777 rfc850
//! plant: access_token refresh_token
//! member: {"ext_expires_in": 3599, "nested": {"a": [1, 2]}}
//! now: 1700000000
//! ```
//!
//! A value starting with `"` is read as a JSON string (so it can hold any
//! character), else as the rest of the line. `retry-after` is `delta N`,
//! `date SECS imf|rfc850|asctime` or `raw TEXT`. `plant` puts a secret-looking
//! value in the named members; `member` adds a JSON object's members.
//!
//! The target writes the answer's JSON body and checks:
//! - it is read as that OAuth2 error, with that status, code, description and
//!   URI (escaped and capped, as text from outside is kept), and classified as the design says (the five permanent codes at any
//!   status; else 408, 429 and 5xx transient, other 4xx permanent);
//! - `Retry-After` gives the instant it names (delta-seconds saturate);
//! - the error's `Display` and `Debug` never show the planted secrets.
#![no_main]

use http::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use tokenkeeper_core::backoff::parse_retry_after;
use tokenkeeper_core::oauth2::{DEFAULT_MAX_BODY_BYTES, parse_token_response};
use tokenkeeper_core::{
    ErrorClass, FetchError, MAX_ERROR_CODE_CHARS, MAX_ERROR_DESCRIPTION_CHARS,
    PERMANENT_OAUTH_ERRORS, Timestamp,
};
use tokenkeeper_fuzz::{
    PLANTED, after_secs, asctime_date, assert_no_leak, check_sanitised, civil, imf_fixdate,
    rfc850_date, whole_seconds,
};

/// A line's value: a JSON string when it starts with `"`, else the text.
fn text_value(raw: &str) -> String {
    if raw.starts_with('"')
        && let Ok(Value::String(s)) = serde_json::from_str::<Value>(raw)
    {
        return s;
    }
    raw.to_owned()
}

/// A `Retry-After` the input built from an instant or a delay.
enum Delta {
    Secs(u64),
    At(Timestamp),
}

fuzz_target!(|data: &[u8]| {
    let input = String::from_utf8_lossy(data);
    let mut status = 400u16;
    let mut code = "invalid_request".to_owned();
    let mut description = None;
    let mut uri = None;
    // The header's text, and the instant it names when the input built it.
    let mut retry_after: Option<(String, Option<Delta>)> = None;
    let mut plant: Vec<String> = Vec::new();
    let mut members = Map::new();
    let mut now = Timestamp::from_secs(1_700_000_000);

    for line in input.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.strip_prefix(' ').unwrap_or(value);
        match name {
            "status" => status = value.trim().parse().unwrap_or(status),
            "error" => code = text_value(value),
            "error_description" => description = Some(text_value(value)),
            "error_uri" => uri = Some(text_value(value)),
            "now" => now = Timestamp::from_secs(value.trim().parse().unwrap_or(0)),
            "plant" => plant.extend(value.split_whitespace().map(str::to_owned)),
            "member" => {
                if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(value) {
                    members.extend(map);
                }
            }
            "retry-after" => {
                let mut words = value.splitn(2, ' ');
                let (kind, rest) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                match kind {
                    "delta" => {
                        let secs = rest.trim().parse().unwrap_or(0u64);
                        retry_after = Some((secs.to_string(), Some(Delta::Secs(secs))));
                    }
                    "date" => {
                        let mut parts = rest.split_whitespace();
                        let secs: u64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                        let at = whole_seconds(Timestamp::from_secs(secs));
                        let c = civil(at);
                        let text = match parts.next() {
                            Some("rfc850") => rfc850_date(&c).unwrap_or_else(|| imf_fixdate(&c)),
                            Some("asctime") => asctime_date(&c),
                            _ => imf_fixdate(&c),
                        };
                        retry_after = Some((text, Some(Delta::At(at))));
                    }
                    _ => retry_after = Some((text_value(rest), None)),
                }
            }
            _ => {}
        }
    }

    let mut body = members;
    for name in &plant {
        body.insert(name.clone(), Value::from(format!("x-{PLANTED}-y")));
    }
    body.insert("error".into(), Value::from(code.as_str()));
    for (name, value) in [("error_description", &description), ("error_uri", &uri)] {
        match value {
            Some(v) => body.insert(name.into(), Value::from(v.as_str())),
            None => body.remove(name),
        };
    }
    let text = Value::Object(body).to_string();
    if text.len() > DEFAULT_MAX_BODY_BYTES {
        return;
    }

    let mut headers = HeaderMap::new();
    let mut expected = None;
    if let Some((value, built)) = &retry_after
        && let Ok(header) = HeaderValue::from_str(value)
    {
        let read = header.to_str().ok().and_then(|v| parse_retry_after(v, now));
        match built {
            Some(Delta::Secs(secs)) => assert_eq!(read, Some(after_secs(now, *secs)), "{value:?}"),
            Some(Delta::At(at)) => assert_eq!(read, Some(*at), "{value:?}"),
            None => {}
        }
        expected = read;
        headers.insert(RETRY_AFTER, header);
    }

    let result = parse_token_response(
        status,
        &headers,
        text.as_bytes(),
        now,
        DEFAULT_MAX_BODY_BYTES,
    );
    let Err(
        ref error @ FetchError::OAuth {
            status: s,
            error: ref oauth,
            retry_after,
        },
    ) = result
    else {
        panic!("an error body read as {result:?}: {text}");
    };
    assert_eq!(s, status);
    // Kept escaped and capped.
    check_sanitised(&code, &oauth.error, MAX_ERROR_CODE_CHARS);
    for (raw, kept) in [(&description, &oauth.description), (&uri, &oauth.uri)] {
        assert_eq!(raw.is_some(), kept.is_some());
        if let (Some(raw), Some(kept)) = (raw, kept) {
            check_sanitised(raw, kept, MAX_ERROR_DESCRIPTION_CHARS);
        }
    }
    assert_eq!(retry_after, expected);
    assert_eq!(error.retry_after(), retry_after);
    assert_eq!(error.oauth_error(), Some(oauth));

    let expected_class = if PERMANENT_OAUTH_ERRORS.contains(&code.as_str()) {
        ErrorClass::Permanent
    } else {
        match status {
            408 | 429 | 500..=599 => ErrorClass::Transient,
            400..=499 => ErrorClass::Permanent,
            _ => ErrorClass::Transient,
        }
    };
    assert_eq!(error.class(), expected_class, "{code} at {status}");
    assert_eq!(
        error.is_permanent(),
        expected_class == ErrorClass::Permanent
    );

    // What the error may show: its code, description and URI.
    let allowed = format!("{code} {description:?} {uri:?}");
    assert_no_leak("an OAuth2 error", &format!("{error} / {error:?}"), &allowed);
});
