//! Secrets are redacted where they enter: a marker planted in each channel an
//! authority, a cache file or a configuration can fill never shows up in any
//! `Debug`, `Display` or error text the engine produces.

use std::time::Duration;

use http::HeaderMap;
use http::header::CONTENT_TYPE;
use serde_json::Value;
use tokenkeeper_core::cache::{decode_record, encode_record, read_record};
use tokenkeeper_core::oauth2::{OAuth2Client, TokenUrl, parse_token_response};
use tokenkeeper_core::{
    AccessToken, CacheKey, ClientId, ClientSecret, Effect, Event, FetchError, Input, Layer,
    LifetimePolicy, OAuthError, RecordError, Refresher, RefresherConfig, Timestamp, TokenGrant,
};

const NOW: Timestamp = Timestamp::from_secs(1_700_000_000);
const LIMIT: usize = 1 << 20;

/// Asserts that none of `markers` appears in `shown`.
#[track_caller]
fn assert_hidden(shown: &str, markers: &[&str]) {
    for marker in markers {
        assert!(!shown.contains(marker), "{marker} leaked into: {shown}");
    }
}

/// Everything a `FetchError` prints, one piece per element.
fn pieces(e: &FetchError) -> Vec<String> {
    let mut out = vec![e.to_string(), format!("{e:?}")];
    if let FetchError::Status { snippet, .. } = e {
        out.push(snippet.clone());
    }
    if let Some(o) = e.oauth_error() {
        out.push(o.to_string());
        out.push(format!("{o:?}"));
    }
    out
}

/// Everything a `FetchError` prints, on separate lines.
fn all_text(e: &FetchError) -> String {
    pieces(e).join("\n")
}

fn response(status: u16, content_type: Option<&str>, body: &str) -> FetchError {
    let mut headers = HeaderMap::new();
    if let Some(ct) = content_type {
        headers.insert(CONTENT_TYPE, ct.parse().unwrap());
    }
    parse_token_response(status, &headers, body.as_bytes(), NOW, LIMIT).unwrap_err()
}

fn snippet_of(e: &FetchError) -> &str {
    match e {
        FetchError::Status { snippet, .. } => snippet,
        other => panic!("expected a status error, got {other:?}"),
    }
}

// Finding B1: non-2xx bodies were shown in full in `FetchError::Status`.
#[test]
fn status_snippets_never_show_token_or_secret_values() {
    // A 500 whose JSON body holds a token.
    let e = response(
        500,
        Some("application/json"),
        r#"{"access_token":"B1-AT-MARKER","refresh_token":"B1-RT-MARKER","note":"B1-NOTE-MARKER"}"#,
    );
    let text = all_text(&e);
    assert_hidden(&text, &["B1-AT-MARKER", "B1-RT-MARKER", "B1-NOTE-MARKER"]);
    let s = snippet_of(&e);
    assert!(s.contains("500"), "{s}");
    assert!(s.contains("application/json"), "{s}");
    assert!(s.contains("bytes"), "{s}");

    // A 400 echoing the request form, with no content type or a text one.
    let echo = "grant_type=refresh_token&refresh_token=B1-ECHO-RT&client_secret=B1-ECHO-CS\
                &client_assertion=B1-ECHO-CA&password=B1-ECHO-PW&code=B1-ECHO-CODE\
                &device_code=B1-ECHO-DC&subject_token=B1-ECHO-ST&my_api_secret_x=B1-ECHO-X";
    let markers = [
        "B1-ECHO-RT",
        "B1-ECHO-CS",
        "B1-ECHO-CA",
        "B1-ECHO-PW",
        "B1-ECHO-CODE",
        "B1-ECHO-DC",
        "B1-ECHO-ST",
        "B1-ECHO-X",
    ];
    for ct in [
        None,
        Some("application/x-www-form-urlencoded"),
        Some("text/plain"),
        Some("text/html"),
    ] {
        let e = response(400, ct, echo);
        assert_hidden(&all_text(&e), &markers);
    }

    // A form-encoded OAuth2 error keeps its error and description, escaped.
    let e = response(
        400,
        Some("application/x-www-form-urlencoded"),
        "error=invalid_request&error_description=bad+thing%0A%1B%5B31mred&client_secret=B1-FORM-CS",
    );
    let s = snippet_of(&e);
    assert_hidden(&all_text(&e), &["B1-FORM-CS"]);
    assert!(s.contains("invalid_request"), "{s}");
    assert!(s.contains("bad thing"), "{s}");
    assert!(!s.contains('\n') && !s.contains('\u{1b}'), "{s:?}");

    // HTML and text that name a credential field are described, not shown.
    for (ct, body) in [
        (
            "text/html",
            "<html><body>Bad request: access_token=B1-HTML-MARKER</body></html>",
        ),
        (
            "text/plain",
            r#"upstream said {"id_token": "B1-TEXT-MARKER"}"#,
        ),
        ("text/plain", "Password: B1-PW-MARKER"),
        ("text/plain", "the code: B1-CODE-MARKER was rejected"),
        ("text/plain", "Client-Assertion B1-CA-MARKER invalid"),
    ] {
        let e = response(502, Some(ct), body);
        assert_hidden(
            &all_text(&e),
            &[
                "B1-HTML-MARKER",
                "B1-TEXT-MARKER",
                "B1-PW-MARKER",
                "B1-CODE-MARKER",
                "B1-CA-MARKER",
            ],
        );
        let s = snippet_of(&e);
        assert!(s.contains(ct), "{s}");
    }

    // An ordinary error page keeps a short, escaped, one-line start.
    let page = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\x1b[2J\u{202e}gone</body></html>";
    let e = response(502, Some("text/html"), page);
    let s = snippet_of(&e);
    assert!(s.contains("502 Bad Gateway"), "{s}");
    assert!(!s.contains(['\r', '\n', '\u{1b}', '\u{202e}']), "{s:?}");
    let long = format!("<html>{}</html>", "x".repeat(100_000));
    let e = response(503, Some("text/html"), &long);
    assert!(snippet_of(&e).chars().count() <= 300, "{e}");
    assert!(e.to_string().chars().count() <= 400, "{e}");
    // A hostile content type is escaped and capped too.
    let e = response(503, Some(&format!("text/{}", "y".repeat(5_000))), "oops");
    assert!(snippet_of(&e).chars().count() <= 300, "{e}");
}

// Finding B2: OAuth2 error codes and descriptions passed newlines and ANSI
// escapes through, with no length cap.
#[test]
fn oauth_errors_are_escaped_and_capped() {
    let body = serde_json::json!({
        "error": "invalid_grant\n2026-01-01 INFO forged log line",
        "error_description": "token \x1b[31mrevoked\x1b[0m\r\nERROR forged\u{2028}line\u{202e}",
        "error_uri": "https://x.example/\u{7}bell",
    })
    .to_string();
    let e = response(400, Some("application/json"), &body);
    for text in pieces(&e) {
        for bad in ['\n', '\r', '\u{1b}', '\u{7}', '\u{2028}', '\u{202e}'] {
            assert!(!text.contains(bad), "{bad:?} got through: {text:?}");
        }
    }
    assert!(all_text(&e).contains("revoked"), "{e}");

    // A 200 KB code and description give a short message.
    let huge = serde_json::json!({
        "error": "e".repeat(200_000),
        "error_description": "d".repeat(200_000),
    })
    .to_string();
    let e = response(400, Some("application/json"), &huge);
    let oauth = e.oauth_error().unwrap();
    assert!(oauth.error.chars().count() <= 200, "{}", oauth.error.len());
    assert!(
        oauth.description.as_ref().unwrap().chars().count() <= 200,
        "{}",
        oauth.description.as_ref().unwrap().len()
    );
    assert!(
        e.to_string().chars().count() <= 600,
        "{}",
        e.to_string().len()
    );
    // The permanent codes are still recognised.
    let e = response(400, None, r#"{"error":"invalid_client"}"#);
    assert!(e.is_permanent());
    // `OAuthError::new` and `Display` apply the same rules.
    let made = OAuthError::new("x\ny".repeat(1000), Some("\x1b[1m".repeat(1000)));
    let shown = format!("{made} {made:?}");
    assert!(!shown.contains(['\n', '\u{1b}']), "{shown:?}");
    assert!(shown.chars().count() <= 1_500, "{}", shown.len());
    let mut mutated = OAuthError::new("x", None);
    mutated.description = Some("a\nb".repeat(10_000));
    let shown = mutated.to_string();
    assert!(
        !shown.contains('\n') && shown.chars().count() <= 600,
        "{shown}"
    );
}

fn client_with(assertion: &str) -> OAuth2Client {
    OAuth2Client::client_credentials(
        "https://auth.example/token?tenant=t1&sig=B3-URL-MARKER",
        ClientId::new("c"),
        ClientSecret::new("B3-SECRET-MARKER"),
    )
    .unwrap()
    .extra_param("signed_request", assertion)
    .unwrap()
    .extra_param("tenant", "B3-TENANT-VALUE")
    .unwrap()
}

fn record() -> tokenkeeper_core::TokenRecord {
    LifetimePolicy::default().record(
        TokenGrant::bearer(AccessToken::new("at"), Some(Duration::from_secs(3600))),
        NOW,
        None,
    )
}

// Finding B3: `CacheKey::description()` held extra-parameter values, and so
// did every record and `inspect --output json`.
#[test]
fn cache_key_descriptions_name_parameters_without_their_values() {
    let markers = [
        "B3-ASSERTION-ONE",
        "B3-TENANT-VALUE",
        "B3-URL-MARKER",
        "B3-SECRET-MARKER",
    ];
    let one = CacheKey::for_client(&client_with("B3-ASSERTION-ONE"));
    let two = CacheKey::for_client(&client_with("B3-ASSERTION-TWO"));
    let desc = one.description();
    assert_hidden(desc, &markers);
    assert!(desc.contains("signed_request"), "{desc}");
    assert!(desc.contains("tenant"), "{desc}");
    assert!(desc.contains("https://auth.example/token"), "{desc}");
    assert_hidden(&format!("{one:?} {one}"), &markers);

    // The id still tells the values apart: different parameters never share a token.
    assert_ne!(one.id(), two.id());
    assert_ne!(one, two);
    let mut other_url = client_with("B3-ASSERTION-ONE");
    other_url = OAuth2Client::new(
        TokenUrl::parse("https://auth.example/token?tenant=t2", false).unwrap(),
        other_url.client_id().clone(),
        None,
        other_url.grant(),
    )
    .extra_param("signed_request", "B3-ASSERTION-ONE")
    .unwrap()
    .extra_param("tenant", "B3-TENANT-VALUE")
    .unwrap();
    assert_ne!(CacheKey::for_client(&other_url).id(), one.id());
    assert_eq!(
        CacheKey::for_client(&client_with("B3-ASSERTION-ONE")),
        one,
        "the same client, the same key"
    );

    // Nothing of the values is stored, and a record is only its own key's.
    let encoded = encode_record(&one, &record());
    let stored = String::from_utf8(encoded.bytes().to_vec()).unwrap();
    assert_hidden(&stored, &markers);
    assert_eq!(decode_record(&one, encoded.bytes()).unwrap(), record());
    assert!(matches!(
        decode_record(&two, encoded.bytes()),
        Err(RecordError::Foreign(_))
    ));
    let read = read_record(encoded.bytes()).unwrap();
    assert_hidden(&format!("{} {read:?}", read.source), &markers);
    let source: Value = serde_json::from_str(&read.source).unwrap();
    assert!(source.is_array(), "{source}");
}

// Records written before descriptions were redacted still decode (so a
// fleet's cache survives the upgrade), and tools that read them see the
// redacted description.
#[test]
fn records_with_legacy_descriptions_still_decode_redacted() {
    let key = CacheKey::for_client(&client_with("B3-LEGACY-ASSERTION"));
    let legacy = serde_json::json!([
        "v1",
        "https://auth.example/token?tenant=t1&sig=B3-URL-MARKER",
        "c",
        "client_credentials",
        "",
        "",
        [],
        [
            ["signed_request", "B3-LEGACY-ASSERTION"],
            ["tenant", "B3-TENANT-VALUE"]
        ],
    ])
    .to_string();
    let encoded = encode_record(&key, &record());
    let mut doc: Value = serde_json::from_slice(encoded.bytes()).unwrap();
    doc["source"] = Value::from(legacy);
    let bytes = serde_json::to_vec(&doc).unwrap();
    assert_eq!(decode_record(&key, &bytes).unwrap(), record());
    let other = CacheKey::for_client(&client_with("B3-OTHER"));
    assert!(decode_record(&other, &bytes).is_err());
    let read = read_record(&bytes).unwrap();
    assert_hidden(
        &format!("{} {read:?}", read.source),
        &["B3-LEGACY-ASSERTION", "B3-TENANT-VALUE", "B3-URL-MARKER"],
    );
    assert!(read.source.contains("signed_request"), "{}", read.source);
}

// Finding B4: `Debug` of grants, records, stored records and
// `Event::TokenChanged` printed the server's extra response fields raw.
#[test]
fn debug_shows_extra_response_fields_by_name_only() {
    let body = r#"{"access_token":"B4-AT","expires_in":3600,"scope":"read",
        "issued_token_type":"B4-EXTRA-ONE","nested":{"secret":"B4-EXTRA-TWO"},"ext_expires_in":3599}"#;
    let grant = parse_token_response(200, &HeaderMap::new(), body.as_bytes(), NOW, LIMIT).unwrap();
    let markers = ["B4-AT", "B4-EXTRA-ONE", "B4-EXTRA-TWO"];
    let shown = format!("{grant:?}");
    assert_hidden(&shown, &markers);
    assert!(
        shown.contains("issued_token_type") && shown.contains("nested"),
        "{shown}"
    );
    let rec = LifetimePolicy::default().record(grant.clone(), NOW, None);
    let shown = format!("{rec:?}");
    assert_hidden(&shown, &markers);
    assert!(shown.contains("ext_expires_in"), "{shown}");
    let key = CacheKey::custom("b4", &[]);
    let stored = read_record(encode_record(&key, &rec).bytes()).unwrap();
    assert_hidden(&format!("{stored:?}"), &markers);

    // Through a refresher: the grant input, the event, the status.
    let mut r = Refresher::new(RefresherConfig::custom(key), 1, NOW);
    let Some(Effect::Fetch { id, .. }) = r.poll_effect() else {
        panic!("expected a fetch")
    };
    let input = Input::Grant {
        id,
        result: Ok(grant),
    };
    assert_hidden(&format!("{input:?}"), &markers);
    r.handle(NOW, input).unwrap();
    let mut seen = false;
    while let Some(event) = r.poll_event() {
        seen |= matches!(event, Event::TokenChanged { .. });
        assert_hidden(&format!("{event:?}"), &markers);
    }
    assert!(seen);
    assert_hidden(&format!("{:?} {r:?}", r.status(NOW)), &markers);
}

// Finding B5: `Debug` of `TokenUrl` and `OAuth2Client` printed the URL's query.
#[test]
fn debug_of_token_urls_and_clients_hides_the_query() {
    let url = "https://auth.example:8443/oauth/token?api_key=B5-QUERY-MARKER&x=1";
    let parsed = TokenUrl::parse(url, false).unwrap();
    let shown = format!("{parsed:?} {parsed}");
    assert_hidden(&shown, &["B5-QUERY-MARKER", "api_key"]);
    assert!(
        shown.contains("https://auth.example:8443/oauth/token"),
        "{shown}"
    );
    // The full URL is still what requests go to.
    assert_eq!(parsed.as_str(), url);
    let client =
        OAuth2Client::client_credentials(url, ClientId::new("c"), ClientSecret::new("s")).unwrap();
    let shown = format!("{client:?}");
    assert_hidden(&shown, &["B5-QUERY-MARKER"]);
    assert!(shown.contains("auth.example:8443/oauth/token"), "{shown}");
    let request = client.build_request(None).unwrap();
    assert_eq!(
        request.as_http().uri().query(),
        Some("api_key=B5-QUERY-MARKER&x=1")
    );
    assert_hidden(&format!("{request:?}"), &["B5-QUERY-MARKER"]);
    // Nor through a refresher's configuration or its effects.
    let config = RefresherConfig::oauth2(client).layer(Layer::new("m"));
    assert_hidden(&format!("{config:?}"), &["B5-QUERY-MARKER"]);
    let mut r = Refresher::new(config, 1, NOW);
    while let Some(effect) = r.poll_effect() {
        assert_hidden(&format!("{effect:?}"), &["B5-QUERY-MARKER"]);
    }
    assert_hidden(&format!("{r:?}"), &["B5-QUERY-MARKER"]);
}

/// Every channel at once, through a refresher's whole life: what it logs,
/// reports and stores for inspection never carries a planted marker.
#[test]
fn no_planted_marker_reaches_any_output() {
    let markers = [
        "ALL-URL-Q",
        "ALL-ASSERTION",
        "ALL-SECRET",
        "ALL-500-AT",
        "ALL-400-ECHO",
        "ALL-EXTRA",
        "ALL-AT",
        "ALL-RT",
    ];
    let client = OAuth2Client::client_credentials(
        "https://auth.example/token?k=ALL-URL-Q",
        ClientId::new("c"),
        ClientSecret::new("ALL-SECRET"),
    )
    .unwrap()
    .extra_param("signed_request", "ALL-ASSERTION")
    .unwrap();
    let config = RefresherConfig::oauth2(client).layer(Layer::new("m"));
    let mut r = Refresher::new(config, 9, NOW);
    let mut out = String::new();
    let mut now = NOW;
    let answers: [(u16, &str, &str); 4] = [
        (500, "application/json", r#"{"access_token":"ALL-500-AT"}"#),
        (
            400,
            "text/plain",
            "client_assertion=ALL-ASSERTION&client_secret=ALL-SECRET&x=ALL-400-ECHO",
        ),
        (
            400,
            "application/json",
            r#"{"error":"invalid_request","error_description":"\u001b[31mno\nthanks"}"#,
        ),
        (
            200,
            "application/json",
            r#"{"access_token":"ALL-AT","refresh_token":"ALL-RT","expires_in":60,"x":"ALL-EXTRA"}"#,
        ),
    ];
    let success = answers[3];
    let mut answers = answers.iter();
    let mut store = None;
    for _ in 0..200 {
        while let Some(effect) = r.poll_effect() {
            out.push_str(&format!("{effect:?}\n"));
            let input = match effect {
                Effect::ReadCache { id, .. } => Input::CacheRead {
                    id,
                    result: Ok(None),
                },
                Effect::WriteCache { id, record, .. } => {
                    store = Some(record.bytes().to_vec());
                    Input::CacheWritten { id, result: Ok(()) }
                }
                Effect::SendRequest { id, .. } => {
                    // The last answer, a token, is repeated from then on.
                    let (status, ct, body) = answers.next().unwrap_or(&success);
                    let mut headers = HeaderMap::new();
                    headers.insert(CONTENT_TYPE, ct.parse().unwrap());
                    Input::Response {
                        id,
                        status: *status,
                        headers,
                        body: body.as_bytes().to_vec(),
                    }
                }
                _ => continue,
            };
            out.push_str(&format!("{input:?}\n"));
            r.handle(now, input).unwrap();
        }
        while let Some(event) = r.poll_event() {
            out.push_str(&format!("{event:?}\n"));
            if let Event::FetchFailed { error, .. } = &event {
                out.push_str(&all_text(error));
            }
        }
        out.push_str(&format!("{:?}\n{r:?}\n", r.status(now)));
        match r.poll_wait().deadline() {
            Some(t) => {
                now = t.max(now);
                r.handle(now, Input::Timeout).unwrap();
            }
            None => break,
        }
    }
    assert!(r.token().is_some(), "the last answer gave a token");
    let stored = read_record(&store.unwrap()).unwrap();
    out.push_str(&format!("{}\n{stored:?}\n", stored.source));
    assert_hidden(&out, &markers);
    assert!(!out.contains('\u{1b}'), "an escape got through");
}
