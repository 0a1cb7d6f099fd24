//! Reading token endpoint answers, tolerantly and without ever panicking.

use std::time::Duration;

use http::HeaderMap;
use http::header::RETRY_AFTER;
use serde_json::{Map, Value};

use crate::backoff::parse_retry_after;
use crate::error::{FetchError, OAuthError};
use crate::secret::{AccessToken, IdToken, RefreshToken};
use crate::time::Timestamp;
use crate::token::TokenGrant;

/// The default cap on a token response body: 256 KiB, room for large id tokens.
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;

const SNIPPET_CHARS: usize = 120;

/// A short, printable start of an error body. Only ever taken from error
/// answers: a success body may hold a token.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(SNIPPET_CHARS * 4)]);
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(SNIPPET_CHARS)
        .collect();
    out = out.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() > SNIPPET_CHARS || body.len() > SNIPPET_CHARS * 4 {
        out.push('…');
    }
    out
}

fn string_field(map: &Map<String, Value>, name: &str) -> Option<String> {
    map.get(name).and_then(Value::as_str).map(str::to_owned)
}

/// A number of seconds given as a JSON number or a numeric string.
fn seconds_field(
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
    let error = string_field(map, "error")?;
    Some(OAuthError {
        error,
        description: string_field(map, "error_description"),
        uri: string_field(map, "error_uri"),
    })
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
    if !success {
        return Err(FetchError::Status {
            status,
            snippet: snippet(body),
            retry_after,
        });
    }
    let Some(mut map) = parsed else {
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
    if !token_type.eq_ignore_ascii_case("bearer") {
        return Err(FetchError::UnsupportedTokenType { token_type });
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
            (200, html),
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
                assert!(snippet.chars().count() <= SNIPPET_CHARS + 1);
                assert!(!snippet.contains('\n'));
            }
            other => panic!("{other:?}"),
        }
    }
}
