//! Reading token endpoint answers, tolerantly and without ever panicking.

use std::time::Duration;

use http::HeaderMap;
use http::header::{CONTENT_TYPE, LOCATION, RETRY_AFTER};
use serde_json::{Map, Value};

use crate::backoff::parse_retry_after;
use crate::error::{FetchError, MAX_ERROR_DESCRIPTION_CHARS, MAX_SNIPPET_CHARS, OAuthError};
use crate::secret::{AccessToken, IdToken, RefreshToken};
use crate::text::{escape_capped, names_a_credential};
use crate::time::Timestamp;
use crate::token::TokenGrant;

/// The default cap on a token response body: 256 KiB, room for large id tokens.
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;

/// The most characters shown of the start of a text error body.
const SNIPPET_CHARS: usize = 120;
/// The most characters shown of a `Content-Type` or `token_type` value.
const SHORT_VALUE_CHARS: usize = 64;

/// The `Content-Type` of an answer, escaped and capped.
fn content_type(headers: &HeaderMap) -> String {
    match headers.get(CONTENT_TYPE).map(|v| v.to_str()) {
        None => "no content type".to_owned(),
        Some(Ok(v)) => escape_capped(v.trim(), SHORT_VALUE_CHARS),
        Some(Err(_)) => "an unreadable content type".to_owned(),
    }
}

/// Why an answer shows the URL is not a token endpoint, if it does: a
/// redirect (token endpoints answer POSTs themselves), `404` or `405`
/// without an OAuth2 error body, or a web page sent as a success. A `5xx`
/// HTML page stays an outage (a proxy's error page), and other `4xx` pages
/// a refusal.
fn not_a_token_endpoint(status: u16, headers: &HeaderMap, body: &[u8]) -> Option<String> {
    let kind = content_type(headers);
    let html = kind.to_ascii_lowercase().starts_with("text/html")
        || body
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'<');
    match status {
        300..=399 => {
            let target = headers
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(|v| match url::Url::parse(v) {
                    Ok(url) => escape_capped(&super::redacted_url(&url), SNIPPET_CHARS),
                    // A relative target: its path, without a query.
                    Err(_) => {
                        escape_capped(v.split(['?', '#']).next().unwrap_or(""), SNIPPET_CHARS)
                    }
                });
            Some(match target {
                Some(target) => format!("HTTP {status}, a redirect to {target}"),
                None => format!("HTTP {status}, a redirect"),
            })
        }
        404 | 405 => Some(format!("HTTP {status} ({kind})")),
        200..=299 if html => Some(format!("HTTP {status} with a web page ({kind})")),
        _ => None,
    }
}

/// Whether a body is form-encoded: declared so, or shaped like
/// `name=value&name=value` (a form echoed back as plain text, say).
fn is_form(content_type: &str, text: &str) -> bool {
    if content_type
        .to_ascii_lowercase()
        .starts_with("application/x-www-form-urlencoded")
    {
        return true;
    }
    let text = text.trim_end();
    !text.is_empty()
        && text.split('&').all(|pair| {
            pair.split_once('=').is_some_and(|(name, value)| {
                !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.-%+[]".contains(&b))
                    && !value.contains(char::is_whitespace)
            })
        })
}

/// Describes an error answer without any secret it may hold. Only ever
/// taken from error answers: a success body holds a token.
///
/// Kept: the status, the content type and the body size; for a form-encoded
/// body, its OAuth2 `error` and `error_description`; for a text body (HTML,
/// plain text), a short escaped start, and only when the body names no
/// credential field. Never kept: any value of a JSON body (one without an
/// OAuth2 `error` may be a token response sent with the wrong status), any
/// other form value (an echo of the request holds its credentials).
fn snippet(status: u16, headers: &HeaderMap, body: &[u8], json: bool) -> String {
    let ctype = content_type(headers);
    let mut out = format!("HTTP {status}, {ctype}, {} bytes", body.len());
    if body.is_empty() {
        return out;
    }
    let text = String::from_utf8_lossy(body);
    if json {
        out.push_str(", JSON without an OAuth2 error (not shown)");
    } else if is_form(&ctype, &text) {
        let mut error = None;
        let mut description = None;
        for (name, value) in url::form_urlencoded::parse(body) {
            match &*name {
                "error" if error.is_none() => error = Some(value),
                "error_description" if description.is_none() => description = Some(value),
                _ => {}
            }
        }
        match error {
            Some(e) => {
                out.push_str(", error ");
                out.push_str(&escape_capped(&e, SHORT_VALUE_CHARS));
                if let Some(d) = description {
                    out.push_str(": ");
                    out.push_str(&escape_capped(&d, MAX_ERROR_DESCRIPTION_CHARS));
                }
            }
            None => out.push_str(", form fields not shown"),
        }
    } else if names_a_credential(&text) {
        out.push_str(", not shown: it names a credential field");
    } else {
        // One line: runs of blanks and line breaks become one space.
        let start: String = text
            .chars()
            .take(SNIPPET_CHARS * 4)
            .collect::<String>()
            .split(|c: char| c.is_ascii_whitespace())
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        let cut = text.chars().nth(SNIPPET_CHARS * 4).is_some();
        let mut shown = escape_capped(&start, SNIPPET_CHARS);
        if cut && !shown.ends_with('…') {
            shown.push('…');
        }
        out.push_str(": ");
        out.push_str(&shown);
    }
    escape_capped(&out, MAX_SNIPPET_CHARS)
}

/// Whether the body is JSON of any shape.
fn is_json(body: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
}

/// A number of seconds given as a JSON number or a numeric string.
pub(super) fn seconds_field(
    map: &Map<String, Value>,
    name: &str,
    status: u16,
) -> Result<Option<Duration>, FetchError> {
    let bad = |why: &str| FetchError::InvalidBody {
        status,
        reason: format!("`{name}` {why}"),
    };
    let secs = match map.get(name) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        Some(_) => return Err(bad("is neither a number nor a numeric string")),
    };
    match secs {
        Some(s) if s.is_finite() && s >= 0.0 => {
            // Whole seconds; absurdly large values saturate to ~292 years.
            Ok(Some(Duration::from_secs(s.min(9.2e9) as u64)))
        }
        _ => Err(bad("is not a non-negative number of seconds")),
    }
}

fn oauth_error(map: &Map<String, Value>) -> Option<OAuthError> {
    let error = map.get("error").and_then(Value::as_str)?;
    let text = |name| map.get(name).and_then(Value::as_str);
    Some(OAuthError::sanitised(
        error,
        text("error_description"),
        text("error_uri"),
    ))
}

/// Reads a token endpoint's answer received at `now`.
///
/// - 2xx with a JSON object holding `access_token` → a [`TokenGrant`];
///   `expires_in` may be a number, a numeric string or absent; `token_type`
///   is compared case-insensitively and must be `Bearer` (absent is taken as
///   Bearer); other fields are kept in `extra`.
/// - An RFC 6749 §5.2 error body, at any status → [`FetchError::OAuth`].
/// - Other error statuses → [`FetchError::Status`] with a short snippet.
/// - Bodies over `limit`, empty, HTML or malformed → typed transient errors.
///
/// `Retry-After` is read from the headers of error answers.
pub fn parse_token_response(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    now: Timestamp,
    limit: usize,
) -> Result<TokenGrant, FetchError> {
    parse(status, headers, body, now, limit, false, false)
}

/// [`parse_token_response`], accepting the `DPoP` token type too when the
/// client asked for DPoP-bound tokens, and `N_A` (RFC 8693 §2.2.1: the
/// issued token is not an access token) for a token exchange.
pub(crate) fn parse(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    now: Timestamp,
    limit: usize,
    dpop: bool,
    exchange: bool,
) -> Result<TokenGrant, FetchError> {
    let mut map = read_object(status, headers, body, now, limit)?;
    let access_token = match map.remove("access_token") {
        Some(Value::String(s)) if !s.is_empty() => AccessToken::new(s),
        Some(_) => {
            return Err(FetchError::InvalidBody {
                status,
                reason: "`access_token` is not a non-empty string".into(),
            });
        }
        None => {
            return Err(FetchError::InvalidBody {
                status,
                reason: "`access_token` is missing".into(),
            });
        }
    };
    let token_type = match map.remove("token_type") {
        Some(Value::String(s)) => s,
        None | Some(Value::Null) => "Bearer".to_owned(),
        Some(_) => {
            return Err(FetchError::InvalidBody {
                status,
                reason: "`token_type` is not a string".into(),
            });
        }
    };
    if !(token_type.eq_ignore_ascii_case("bearer")
        || dpop && token_type.eq_ignore_ascii_case("dpop")
        || exchange && token_type.eq_ignore_ascii_case("n_a"))
    {
        return Err(FetchError::UnsupportedTokenType {
            token_type: escape_capped(&token_type, SHORT_VALUE_CHARS),
        });
    }
    let expires_in = seconds_field(&map, "expires_in", status)?;
    if expires_in == Some(Duration::ZERO) {
        return Err(FetchError::InvalidBody {
            status,
            reason: "`expires_in` is zero: the token is already expired".into(),
        });
    }
    let refresh_in = seconds_field(&map, "refresh_in", status)?;
    map.remove("expires_in");
    map.remove("refresh_in");
    let refresh_token = match map.remove("refresh_token") {
        Some(Value::String(s)) if !s.is_empty() => Some(RefreshToken::new(s)),
        _ => None,
    };
    let id_token = match map.remove("id_token") {
        Some(Value::String(s)) if !s.is_empty() => Some(IdToken::new(s)),
        _ => None,
    };
    let scope = match map.remove("scope") {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    Ok(TokenGrant {
        access_token,
        token_type,
        expires_in,
        refresh_in,
        refresh_token,
        id_token,
        scope,
        extra: map,
    })
}

/// Reads an answer of an authority's endpoint that must be a JSON object:
/// the object of a `2xx` answer, or the typed error any other answer is
/// (an RFC 6749 §5.2 error at any status, an error status, a page, an
/// oversized, empty or malformed body). The one reader of error answers,
/// for the token endpoint and the device authorization endpoint alike.
pub(super) fn read_object(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    now: Timestamp,
    limit: usize,
) -> Result<Map<String, Value>, FetchError> {
    if body.len() > limit {
        return Err(FetchError::BodyTooLarge { limit });
    }
    let retry_after = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, now));
    let success = (200..300).contains(&status);
    let parsed: Option<Map<String, Value>> = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    };
    if let Some(error) = parsed.as_ref().and_then(oauth_error) {
        return Err(FetchError::OAuth {
            status,
            error,
            retry_after,
        });
    }
    if let Some(reason) = not_a_token_endpoint(status, headers, body) {
        return Err(FetchError::NotATokenEndpoint { status, reason });
    }
    if !success {
        return Err(FetchError::Status {
            status,
            snippet: snippet(status, headers, body, parsed.is_some() || is_json(body)),
            retry_after,
        });
    }
    let Some(map) = parsed else {
        let reason = if body.iter().all(u8::is_ascii_whitespace) {
            "the body is empty".to_owned()
        } else {
            match serde_json::from_slice::<Value>(body) {
                Err(e) if e.is_eof() => {
                    format!("the JSON body is truncated ({} bytes)", body.len())
                }
                Err(e) => format!(
                    "the body is not JSON (line {}, column {}; {} bytes)",
                    e.line(),
                    e.column(),
                    body.len()
                ),
                Ok(_) => "the body is JSON but not an object".to_owned(),
            }
        };
        return Err(FetchError::InvalidBody { status, reason });
    };
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;

    const NOW: Timestamp = Timestamp::from_secs(1_000_000);

    fn parse(status: u16, body: &str) -> Result<TokenGrant, FetchError> {
        parse_token_response(status, &HeaderMap::new(), body.as_bytes(), NOW, 4096)
    }

    #[test]
    fn a_plain_answer() {
        let g = parse(
            200,
            r#"{"access_token":"abc","token_type":"bearer","expires_in":3600,"scope":"a b"}"#,
        )
        .unwrap();
        assert_eq!(g.access_token.expose_secret(), "abc");
        assert!(g.is_bearer());
        assert_eq!(g.expires_in, Some(Duration::from_secs(3600)));
        assert_eq!(g.scope.as_deref(), Some("a b"));
        assert!(g.refresh_token.is_none());
    }

    #[test]
    fn tolerant_fields() {
        let g = parse(
            200,
            r#"{"access_token":"a\"b\\c\u00e9","expires_in":"120","refresh_token":"r2","id_token":"i","ext_expires_in":3599,"foo":{"bar":1}}"#,
        )
        .unwrap();
        assert_eq!(g.access_token.expose_secret(), "a\"b\\cé");
        assert_eq!(g.token_type, "Bearer");
        assert_eq!(g.expires_in, Some(Duration::from_secs(120)));
        assert_eq!(g.refresh_token.unwrap().expose_secret(), "r2");
        assert_eq!(g.id_token.unwrap().expose_secret(), "i");
        assert_eq!(g.extra["ext_expires_in"], 3599);
        assert_eq!(g.extra["foo"]["bar"], 1);
        let g = parse(200, r#"{"access_token":"a","expires_in":null}"#).unwrap();
        assert_eq!(g.expires_in, None);
        let g = parse(200, r#"{"access_token":"a","expires_in":59.9}"#).unwrap();
        assert_eq!(g.expires_in, Some(Duration::from_secs(59)));
    }

    #[test]
    fn rfc6749_error_bodies() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "30".parse().unwrap());
        let e = parse_token_response(
            400,
            &headers,
            br#"{"error":"invalid_grant","error_description":"refresh token reused","error_uri":"https://x"}"#,
            NOW,
            4096,
        )
        .unwrap_err();
        let oauth = e.oauth_error().unwrap();
        assert_eq!(oauth.error, "invalid_grant");
        assert_eq!(oauth.description.as_deref(), Some("refresh token reused"));
        assert_eq!(e.class(), ErrorClass::Permanent);
        assert_eq!(e.retry_after(), Some(Timestamp::from_secs(1_000_030)));
        // An error object sent with 200 is still an error.
        let e = parse(200, r#"{"error":"invalid_client"}"#).unwrap_err();
        assert!(e.is_permanent());
    }

    #[test]
    fn bad_bodies_are_typed_transient_errors() {
        let html = "<html><body><h1>502 Bad Gateway</h1></body></html>";
        match parse(502, html).unwrap_err() {
            FetchError::Status {
                status: 502,
                snippet,
                ..
            } => {
                assert!(snippet.contains("502 Bad Gateway"), "{snippet}");
            }
            other => panic!("{other:?}"),
        }
        for (status, body) in [
            (200, ""),
            (200, "   "),
            (200, r#"{"access_token": "abc", "expires_in": "#),
            (200, "[1,2]"),
            (200, r#"{"token_type":"Bearer"}"#),
            (200, r#"{"access_token":""}"#),
            (200, r#"{"access_token":"a","expires_in":-1}"#),
            (200, r#"{"access_token":"a","expires_in":"soon"}"#),
            (200, r#"{"access_token":"a","expires_in":0}"#),
            (200, "\u{0}\u{1}garbage"),
        ] {
            let e = parse(status, body).unwrap_err();
            assert_eq!(e.class(), ErrorClass::Transient, "{body:?} gave {e:?}");
            assert!(
                matches!(e, FetchError::InvalidBody { .. }),
                "{body:?} gave {e:?}"
            );
        }
        let e = parse(200, r#"{"access_token": "secret-token", "expires_in": "#).unwrap_err();
        assert!(!e.to_string().contains("secret-token"), "{e}");
        assert!(e.to_string().contains("truncated"), "{e}");
        let e = parse(500, "").unwrap_err();
        assert_eq!(e.class(), ErrorClass::Transient);
    }

    fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> FetchError {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(
                http::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        parse_token_response(status, &map, body.as_bytes(), NOW, 4096).unwrap_err()
    }

    #[test]
    fn answers_that_are_not_from_a_token_endpoint() {
        let html = [("content-type", "text/html; charset=utf-8")];
        let page = "<!doctype html><html><title>Not Found</title></html>";
        for (status, headers, body, says) in [
            (404, &html[..], page, "HTTP 404 (text/html; charset=utf-8)"),
            (404, &[][..], "", "HTTP 404 (no content type)"),
            (405, &[("allow", "GET")][..], "", "HTTP 405"),
            (200, &html[..], page, "HTTP 200 with a web page"),
            // No content type, but a page all the same.
            (
                200,
                &[][..],
                "  <html><body>sign in</body></html>",
                "a web page",
            ),
            (
                302,
                &[("location", "https://login.example/sso?SAMLRequest=s3cret#x")][..],
                "",
                "HTTP 302, a redirect to https://login.example/sso?<redacted>",
            ),
            (
                301,
                &[("location", "/oauth2/token?k=s3cret")][..],
                "",
                "a redirect to /oauth2/token",
            ),
            (307, &[][..], "", "HTTP 307, a redirect"),
        ] {
            let e = answer(status, headers, body);
            let FetchError::NotATokenEndpoint { status: s, reason } = &e else {
                panic!("{status} {body:?} gave {e:?}");
            };
            assert_eq!(*s, status);
            assert!(reason.contains(says), "{reason}");
            assert!(e.is_permanent() && e.is_misconfiguration(), "{e:?}");
            let text = e.to_string();
            assert!(text.contains("check the URL's path"), "{text}");
            assert!(!text.contains("s3cret"), "{text}");
        }
        // An OAuth2 error body is the authority speaking, whatever the status.
        let e = answer(404, &[], r#"{"error":"invalid_client"}"#);
        assert!(matches!(e, FetchError::OAuth { .. }), "{e:?}");
        // A proxy's error page is an outage; another 4xx page a refusal.
        let e = answer(502, &html, page);
        assert!(
            matches!(e, FetchError::Status { .. }) && !e.is_permanent(),
            "{e:?}"
        );
        let e = answer(403, &html, page);
        assert!(
            matches!(e, FetchError::Status { .. }) && !e.is_misconfiguration(),
            "{e:?}"
        );
    }

    #[test]
    fn oversized_and_unknown_type() {
        let big = vec![b' '; 5000];
        assert_eq!(
            parse_token_response(200, &HeaderMap::new(), &big, NOW, 4096).unwrap_err(),
            FetchError::BodyTooLarge { limit: 4096 }
        );
        let e = parse(200, r#"{"access_token":"a","token_type":"MAC"}"#).unwrap_err();
        assert_eq!(
            e,
            FetchError::UnsupportedTokenType {
                token_type: "MAC".into()
            }
        );
    }

    #[test]
    fn snippets_are_short_and_printable() {
        let long = format!("<html>{}\n\t</html>", "x".repeat(10_000));
        match parse_token_response(503, &HeaderMap::new(), long.as_bytes(), NOW, 1 << 20)
            .unwrap_err()
        {
            FetchError::Status { snippet, .. } => {
                // The start of the body is cut to SNIPPET_CHARS; the status,
                // type and size come before it.
                let (head, start) = snippet.split_once(": ").unwrap();
                assert_eq!(head, "HTTP 503, no content type, 10015 bytes");
                assert!(start.chars().count() <= SNIPPET_CHARS, "{start}");
                assert!(start.ends_with('…'), "{start}");
                assert!(snippet.chars().count() <= MAX_SNIPPET_CHARS);
                assert!(!snippet.contains('\n'));
            }
            other => panic!("{other:?}"),
        }
    }
}
