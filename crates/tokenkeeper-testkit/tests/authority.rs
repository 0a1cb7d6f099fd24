//! The authority tested over real HTTP on loopback, with a tiny raw-TCP HTTP/1.1 client so that
//! the test kit depends on no client of the project.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokenkeeper_testkit::{
    AuthMethod, Authority, Client, Fault, Outcome, PresentedAuth, RetryAfter,
};

// ----- a tiny HTTP/1.1 client -----

const IO_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug)]
struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "body is not JSON ({error}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts an RFC 6749 §5.2 error answer and returns the body.
    fn assert_oauth_error(&self, status: u16, error: &str) -> Value {
        assert_eq!(self.status, status, "body: {}", self.text());
        let body = self.json();
        assert_eq!(body["error"], error, "body: {body}");
        assert!(body["error_description"].is_string(), "body: {body}");
        body
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn form_encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// `Authorization` value for `client_secret_basic`, encoded as RFC 6749 §2.3.1 says.
fn basic(id: &str, secret: &str) -> String {
    let pair = format!("{}:{}", form_encode(id), form_encode(secret));
    format!("Basic {}", base64(pair.as_bytes()))
}

fn form(pairs: &[(&str, &str)]) -> String {
    let mut serializer = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        serializer.append_pair(name, value);
    }
    serializer.finish()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect to the authority");
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    stream.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    stream
}

fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Sends one request with `Connection: close` and returns everything read until the server
/// closed the connection (or the error that ended the read, if nothing was read).
fn exchange_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Vec<u8>> {
    let mut all_headers = vec![("Connection", "close")];
    all_headers.extend_from_slice(headers);
    let mut stream = connect(addr);
    stream.write_all(&request_bytes(method, path, &all_headers, body))?;
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => Ok(raw),
        Err(error) if raw.is_empty() => Err(error),
        Err(_) => Ok(raw),
    }
}

fn parse_head(raw: &[u8]) -> (u16, Vec<(String, String)>, usize) {
    let end = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {:?}", String::from_utf8_lossy(raw)));
    let head = std::str::from_utf8(&raw[..end]).expect("head is UTF-8");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let mut words = status_line.splitn(3, ' ');
    assert_eq!(words.next(), Some("HTTP/1.1"), "{status_line}");
    let status = words
        .next()
        .and_then(|code| code.parse().ok())
        .expect("status code");
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(':').expect("header line");
            (name.trim().to_owned(), value.trim().to_owned())
        })
        .collect();
    (status, headers, end + 4)
}

fn parse_response(raw: &[u8]) -> HttpResponse {
    let (status, headers, body_start) = parse_head(raw);
    let response = HttpResponse {
        status,
        headers,
        body: raw[body_start..].to_vec(),
    };
    let length: usize = response
        .header("content-length")
        .expect("every answer has a Content-Length")
        .parse()
        .expect("numeric Content-Length");
    assert_eq!(
        length,
        response.body.len(),
        "Content-Length matches the body"
    );
    response
}

fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let raw = exchange_raw(addr, method, path, headers, body).expect("an answer");
    parse_response(&raw)
}

const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

/// A token request authenticated with `client_secret_basic`.
fn post_basic(
    authority: &Authority,
    id: &str,
    secret: &str,
    params: &[(&str, &str)],
) -> HttpResponse {
    let authorization = basic(id, secret);
    exchange(
        authority.addr(),
        "POST",
        "/token",
        &[FORM, ("Authorization", &authorization)],
        form(params).as_bytes(),
    )
}

/// A token request authenticated with `client_secret_post`.
fn post_body(
    authority: &Authority,
    id: &str,
    secret: &str,
    params: &[(&str, &str)],
) -> HttpResponse {
    let mut all = vec![("client_id", id), ("client_secret", secret)];
    all.extend_from_slice(params);
    exchange(
        authority.addr(),
        "POST",
        "/token",
        &[FORM],
        form(&all).as_bytes(),
    )
}

/// A token request with no client authentication at all.
fn post_plain(authority: &Authority, params: &[(&str, &str)]) -> HttpResponse {
    exchange(
        authority.addr(),
        "POST",
        "/token",
        &[FORM],
        form(params).as_bytes(),
    )
}

const CC: (&str, &str) = ("grant_type", "client_credentials");

fn authority_with_clients() -> Authority {
    let authority = Authority::start();
    authority.register_client(
        Client::new("basic-client", "basic-secret")
            .auth_method(AuthMethod::Basic)
            .token_lifetime(Duration::from_secs(60)),
    );
    authority.register_client(
        Client::new("post-client", "post-secret")
            .auth_method(AuthMethod::Post)
            .token_lifetime(Duration::from_secs(120)),
    );
    authority
}

fn assert_token(response: &HttpResponse, expires_in: u64) -> Value {
    assert_eq!(response.status, 200, "body: {}", response.text());
    assert_eq!(response.header("cache-control"), Some("no-store"));
    assert!(
        response
            .header("content-type")
            .is_some_and(|value| value.starts_with("application/json")),
        "{:?}",
        response.headers
    );
    let body = response.json();
    assert!(
        body["access_token"]
            .as_str()
            .is_some_and(|token| token.starts_with("at-")),
        "{body}"
    );
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], expires_in);
    body
}

// ----- successful grants -----

#[test]
fn client_credentials_with_basic_authentication() {
    let authority = authority_with_clients();
    let response = post_basic(&authority, "basic-client", "basic-secret", &[CC]);
    let body = assert_token(&response, 60);
    assert!(body.get("refresh_token").is_none(), "{body}");
    assert!(body.get("scope").is_none(), "{body}");

    let access_token = body["access_token"].as_str().expect("token").to_owned();
    assert_eq!(
        authority.last_access_token().as_deref(),
        Some(access_token.as_str())
    );
    assert!(authority.token_is_active(&access_token));
    assert!(!authority.token_is_active("at-0-made-up"));

    let log = authority.requests();
    assert_eq!(log.len(), 1);
    let record = &log[0];
    assert_eq!(record.method, "POST");
    assert_eq!(record.path, "/token");
    assert_eq!(record.grant_type.as_deref(), Some("client_credentials"));
    assert_eq!(record.client_id.as_deref(), Some("basic-client"));
    assert_eq!(record.auth, PresentedAuth::Basic);
    assert!(record.authenticated);
    assert_eq!(record.status, Some(200));
    assert_eq!(record.fault, None);
    assert_eq!(
        record.outcome,
        Outcome::Issued {
            access_token: access_token.clone(),
            refresh_token: None
        }
    );
    assert!(record.at <= SystemTime::now());

    let issued = authority.issued_tokens();
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0].access_token, access_token);
    assert_eq!(issued[0].client_id, "basic-client");
    assert_eq!(issued[0].grant_type, "client_credentials");
    assert_eq!(issued[0].expires_in, 60);
}

#[test]
fn client_credentials_with_post_authentication_scope_audience_and_resource() {
    let authority = authority_with_clients();
    let response = post_body(
        &authority,
        "post-client",
        "post-secret",
        &[
            CC,
            ("scope", "read write"),
            ("audience", "https://api.example"),
            ("audience", "https://other.example"),
            ("resource", "https://rs.example/one"),
        ],
    );
    let body = assert_token(&response, 120);
    assert_eq!(body["scope"], "read write");

    let record = &authority.requests()[0];
    assert_eq!(record.auth, PresentedAuth::Post);
    assert_eq!(record.client_id.as_deref(), Some("post-client"));
    assert_eq!(record.scope.as_deref(), Some("read write"));
    assert_eq!(
        record.audience,
        ["https://api.example", "https://other.example"]
    );
    assert_eq!(record.resource, ["https://rs.example/one"]);
    assert_eq!(
        authority.issued_tokens()[0].scope.as_deref(),
        Some("read write")
    );
}

#[test]
fn access_tokens_are_unique() {
    let authority = authority_with_clients();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let body = assert_token(
            &post_basic(&authority, "basic-client", "basic-secret", &[CC]),
            60,
        );
        let token = body["access_token"].as_str().expect("token").to_owned();
        assert!(seen.insert(token), "token handed out twice");
    }
    assert_eq!(authority.issued_tokens().len(), 20);
}

#[test]
fn basic_credentials_are_form_urlencoded_before_base64() {
    let authority = Authority::start();
    let id = "weird:id+ 100%/ü";
    let secret = "p:a+s s%20é&=";
    authority.register_client(Client::new(id, secret));
    let response = post_basic(&authority, id, secret, &[CC]);
    assert_token(&response, 3600);
    assert_eq!(authority.requests()[0].client_id.as_deref(), Some(id));

    // Without the form-encoding step, '+' is read as a space and the client is unknown.
    authority.register_client(Client::new("a+b", "secret"));
    let raw = format!("Basic {}", base64(b"a+b:secret"));
    let response = exchange(
        authority.addr(),
        "POST",
        "/token",
        &[FORM, ("Authorization", &raw)],
        form(&[CC]).as_bytes(),
    );
    response.assert_oauth_error(401, "invalid_client");
    assert_eq!(authority.requests()[1].client_id.as_deref(), Some("a b"));
}

#[test]
fn sub_second_lifetimes_string_expires_in_and_extra_fields() {
    let authority = Authority::builder()
        .default_token_lifetime(Duration::from_secs(900))
        .start();
    authority.register_client(Client::new("default", "s"));
    authority
        .register_client(Client::new("short", "s").token_lifetime(Duration::from_millis(1500)));
    authority.register_client(
        Client::new("stringly", "s")
            .token_lifetime(Duration::from_secs(60))
            .expires_in_as_string(true)
            .extra_field("refresh_in", 30)
            .extra_field("ext", "value"),
    );
    assert_token(&post_basic(&authority, "default", "s", &[CC]), 900);
    assert_token(&post_basic(&authority, "short", "s", &[CC]), 1);

    let response = post_basic(&authority, "stringly", "s", &[CC]);
    assert_eq!(response.status, 200);
    let body = response.json();
    assert_eq!(body["expires_in"], "60");
    assert_eq!(body["refresh_in"], 30);
    assert_eq!(body["ext"], "value");

    authority.set_token_lifetime("short", Duration::from_secs(5));
    assert_token(&post_basic(&authority, "short", "s", &[CC]), 5);
    assert_eq!(
        authority.client("short").map(|client| client.method()),
        Some(AuthMethod::Basic)
    );
}

#[test]
#[should_panic(expected = "no client")]
fn set_token_lifetime_of_an_unknown_client_panics() {
    let authority = Authority::start();
    authority.set_token_lifetime("nobody", Duration::from_secs(1));
}

// ----- client authentication failures -----

#[test]
fn wrong_secret_and_unknown_client_are_invalid_client() {
    let authority = Authority::builder().realm("test realm").start();
    authority.register_client(Client::new("basic-client", "basic-secret"));

    let response = post_basic(&authority, "basic-client", "wrong", &[CC]);
    response.assert_oauth_error(401, "invalid_client");
    assert_eq!(
        response.header("www-authenticate"),
        Some("Basic realm=\"test realm\"")
    );

    let response = post_basic(&authority, "nobody", "basic-secret", &[CC]);
    response.assert_oauth_error(401, "invalid_client");
    assert!(response.header("www-authenticate").is_some());

    let log = authority.requests();
    assert_eq!(log.len(), 2);
    assert!(log.iter().all(|record| !record.authenticated));
    assert_eq!(
        log[0].outcome,
        Outcome::Rejected {
            error: "invalid_client".into()
        }
    );
    assert_eq!(log[1].client_id.as_deref(), Some("nobody"));
    assert!(authority.issued_tokens().is_empty());
}

#[test]
fn credentials_presented_with_the_wrong_method_are_refused() {
    let authority = authority_with_clients();
    post_body(&authority, "basic-client", "basic-secret", &[CC])
        .assert_oauth_error(401, "invalid_client");
    post_basic(&authority, "post-client", "post-secret", &[CC])
        .assert_oauth_error(401, "invalid_client");
    // No credentials at all.
    post_plain(&authority, &[CC, ("client_id", "basic-client")])
        .assert_oauth_error(401, "invalid_client");
    post_plain(&authority, &[CC]).assert_oauth_error(401, "invalid_client");

    // Both methods at once.
    let authorization = basic("basic-client", "basic-secret");
    let both = form(&[
        CC,
        ("client_id", "basic-client"),
        ("client_secret", "basic-secret"),
    ]);
    exchange(
        authority.addr(),
        "POST",
        "/token",
        &[FORM, ("Authorization", &authorization)],
        both.as_bytes(),
    )
    .assert_oauth_error(400, "invalid_request");

    let auths: Vec<_> = authority.requests().iter().map(|r| r.auth).collect();
    assert_eq!(
        auths,
        [
            PresentedAuth::Post,
            PresentedAuth::Basic,
            PresentedAuth::None,
            PresentedAuth::None,
            PresentedAuth::Both
        ]
    );
    assert!(authority.issued_tokens().is_empty());
}

#[test]
fn malformed_authorization_headers_are_invalid_client() {
    let authority = authority_with_clients();
    for header in [
        "Basic !!!not-base64",
        "Bearer abc",
        "Basic",
        // Decodes, but has no ':'.
        &format!("Basic {}", base64(b"no-colon")),
        // Decodes, but the id has a broken percent escape.
        &format!("Basic {}", base64(b"bad%zz:secret")),
    ] {
        let response = exchange(
            authority.addr(),
            "POST",
            "/token",
            &[FORM, ("Authorization", header)],
            form(&[CC]).as_bytes(),
        );
        response.assert_oauth_error(401, "invalid_client");
    }
    assert_eq!(
        authority.count_where(|record| record.auth == PresentedAuth::Malformed),
        5
    );
}

// ----- malformed requests -----

#[test]
fn grant_type_problems() {
    let authority = authority_with_clients();
    post_basic(
        &authority,
        "basic-client",
        "basic-secret",
        &[("grant_type", "password")],
    )
    .assert_oauth_error(400, "unsupported_grant_type");
    post_basic(
        &authority,
        "basic-client",
        "basic-secret",
        &[("scope", "x")],
    )
    .assert_oauth_error(400, "invalid_request");
    post_basic(
        &authority,
        "basic-client",
        "basic-secret",
        &[CC, ("scope", "a"), ("scope", "b")],
    )
    .assert_oauth_error(400, "invalid_request");
    post_basic(
        &authority,
        "basic-client",
        "basic-secret",
        &[("grant_type", "refresh_token")],
    )
    .assert_oauth_error(400, "invalid_request");
    assert_eq!(authority.count_by_status(400), 4);
    assert_eq!(authority.count_by_grant("password"), 1);
}

#[test]
fn malformed_http_requests_get_oauth_errors() {
    let authority = Authority::builder().max_request_body(1024).start();
    authority.register_client(Client::new("c", "s"));
    let authorization = basic("c", "s");
    let addr = authority.addr();

    let response = exchange(
        addr,
        "GET",
        "/token",
        &[("Authorization", &authorization)],
        b"",
    );
    response.assert_oauth_error(405, "invalid_request");
    assert_eq!(response.header("allow"), Some("POST"));

    let response = exchange(
        addr,
        "POST",
        "/token",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &authorization),
        ],
        br#"{"grant_type":"client_credentials"}"#,
    );
    response.assert_oauth_error(400, "invalid_request");

    let big = format!("grant_type=client_credentials&pad={}", "x".repeat(2000));
    let response = exchange(
        addr,
        "POST",
        "/token",
        &[FORM, ("Authorization", &authorization)],
        big.as_bytes(),
    );
    response.assert_oauth_error(413, "invalid_request");

    // Form with charset parameter is fine; invalid UTF-8 in the body does not panic.
    let response = exchange(
        addr,
        "POST",
        "/token",
        &[
            (
                "Content-Type",
                "application/x-www-form-urlencoded; charset=UTF-8",
            ),
            ("Authorization", &authorization),
        ],
        b"grant_type=client_credentials&scope=%FF%FE\xff",
    );
    assert_eq!(response.status, 200, "{}", response.text());

    let response = exchange(
        addr,
        "POST",
        "/elsewhere",
        &[FORM],
        b"grant_type=client_credentials",
    );
    assert_eq!(response.status, 404);
    assert_eq!(
        authority.requests().last().map(|r| r.outcome.clone()),
        Some(Outcome::NotFound)
    );

    // Not HTTP at all: hyper answers 400 and closes; nothing is logged, nothing breaks.
    let mut stream = connect(addr);
    stream.write_all(b"\x00\x01garbage\r\n\r\n").expect("write");
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    assert!(raw.is_empty() || raw.starts_with(b"HTTP/1.1 4"), "{raw:?}");

    let response = post_basic(&authority, "c", "s", &[CC]);
    assert_eq!(response.status, 200);
}

// ----- refresh tokens -----

#[test]
fn refresh_tokens_rotate_and_reuse_is_invalid_grant() {
    let authority = authority_with_clients();
    let first = authority.issue_refresh_token("basic-client");
    assert!(authority.refresh_token_is_live(&first));

    let refresh = |token: &str| {
        post_basic(
            &authority,
            "basic-client",
            "basic-secret",
            &[("grant_type", "refresh_token"), ("refresh_token", token)],
        )
    };

    let body = assert_token(&refresh(&first), 60);
    let second = body["refresh_token"].as_str().expect("rotated").to_owned();
    assert_ne!(second, first);
    assert!(!authority.refresh_token_is_live(&first));
    assert!(authority.refresh_token_is_live(&second));
    assert_eq!(
        authority.live_refresh_tokens("basic-client"),
        vec![second.clone()]
    );
    assert_eq!(authority.refresh_token_reuses(), 0);

    // Reusing the spent one.
    refresh(&first).assert_oauth_error(400, "invalid_grant");
    let record = authority.requests().pop().expect("logged");
    assert!(record.refresh_token_reused);
    assert_eq!(record.refresh_token.as_deref(), Some(first.as_str()));
    assert_eq!(authority.refresh_token_reuses(), 1);
    // A reuse does not spend the current one.
    let body = assert_token(&refresh(&second), 60);
    let third = body["refresh_token"].as_str().expect("rotated").to_owned();

    // Unknown and revoked tokens are invalid_grant but not reuses.
    refresh("rt-0-unknown").assert_oauth_error(400, "invalid_grant");
    assert!(authority.revoke_refresh_token(&third));
    assert!(!authority.revoke_refresh_token(&third));
    refresh(&third).assert_oauth_error(400, "invalid_grant");
    assert_eq!(authority.refresh_token_reuses(), 1);

    // Another client's refresh token.
    let foreign = authority.issue_refresh_token("post-client");
    refresh(&foreign).assert_oauth_error(400, "invalid_grant");
    assert!(authority.refresh_token_is_live(&foreign));

    assert_eq!(authority.count_by_grant("refresh_token"), 6);
    assert_eq!(
        authority
            .issued_tokens()
            .iter()
            .filter(|token| token.grant_type == "refresh_token")
            .count(),
        2
    );
}

#[test]
fn refresh_scope_and_client_credentials_refresh_tokens() {
    let authority = Authority::start();
    authority.register_client(
        Client::new("c", "s")
            .auth_method(AuthMethod::Post)
            .issue_refresh_tokens(true),
    );
    let body = assert_token(
        &post_body(&authority, "c", "s", &[CC, ("scope", "a b")]),
        3600,
    );
    let refresh_token = body["refresh_token"].as_str().expect("issued").to_owned();

    // The refresh grant keeps the original scope when none is asked for.
    let body = assert_token(
        &post_body(
            &authority,
            "c",
            "s",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &refresh_token),
            ],
        ),
        3600,
    );
    assert_eq!(body["scope"], "a b");
    assert!(body["refresh_token"].is_string());

    let scoped = authority.issue_refresh_token_with_scope("c", "narrow");
    let body = assert_token(
        &post_body(
            &authority,
            "c",
            "s",
            &[("grant_type", "refresh_token"), ("refresh_token", &scoped)],
        ),
        3600,
    );
    assert_eq!(body["scope"], "narrow");
}

// ----- faults -----

#[test]
fn status_faults_with_oauth_errors_and_retry_after() {
    let authority = authority_with_clients();
    let date = UNIX_EPOCH + Duration::from_secs(784_111_777);
    authority.push_faults([
        Fault::Status {
            status: 429,
            oauth_error: Some(("slow_down".into(), Some("too many requests".into()))),
            retry_after: Some(RetryAfter::Seconds(7)),
        },
        Fault::retry_after(503, RetryAfter::HttpDate(date)),
        Fault::oauth_error(400, "invalid_grant", None),
        Fault::status(401),
    ]);
    assert_eq!(authority.pending_faults(), 4);

    let response = post_basic(&authority, "basic-client", "basic-secret", &[CC]);
    let body = response.assert_oauth_error(429, "slow_down");
    assert_eq!(body["error_description"], "too many requests");
    assert_eq!(response.header("retry-after"), Some("7"));
    assert_eq!(response.header("cache-control"), Some("no-store"));

    let response = post_basic(&authority, "basic-client", "basic-secret", &[CC]);
    assert_eq!(response.status, 503);
    assert!(response.body.is_empty());
    assert_eq!(
        response.header("retry-after"),
        Some("Sun, 06 Nov 1994 08:49:37 GMT")
    );

    let response = post_basic(&authority, "basic-client", "basic-secret", &[CC]);
    assert_eq!(response.status, 400);
    assert_eq!(
        response.json(),
        serde_json::json!({"error": "invalid_grant"})
    );

    let response = post_basic(&authority, "basic-client", "basic-secret", &[CC]);
    assert_eq!(response.status, 401);
    assert!(response.header("www-authenticate").is_some());

    assert_eq!(authority.pending_faults(), 0);
    assert_token(
        &post_basic(&authority, "basic-client", "basic-secret", &[CC]),
        60,
    );

    let log = authority.requests();
    let statuses: Vec<_> = log.iter().map(|record| record.status).collect();
    assert_eq!(
        statuses,
        [Some(429), Some(503), Some(400), Some(401), Some(200)]
    );
    assert!(
        log[..4]
            .iter()
            .all(|record| record.outcome == Outcome::Faulted)
    );
    assert!(log[..4].iter().all(|record| !record.authenticated));
    assert_eq!(
        log[1].fault,
        Some(Fault::retry_after(503, RetryAfter::HttpDate(date)))
    );
    assert_eq!(log[4].fault, None);
    assert_eq!(authority.issued_tokens().len(), 1);
}

#[test]
fn a_delay_delays_and_does_not_block_other_connections() {
    let authority = authority_with_clients();
    let delay = Duration::from_secs(2);
    authority.push_fault(Fault::Delay(delay));

    let addr = authority.addr();
    let authorization = basic("basic-client", "basic-secret");
    let (done_tx, done_rx) = mpsc::channel();
    let slow = std::thread::spawn(move || {
        let started = Instant::now();
        let response = exchange(
            addr,
            "POST",
            "/token",
            &[FORM, ("Authorization", &authorization)],
            form(&[CC]).as_bytes(),
        );
        let _ = done_tx.send(());
        (response, started.elapsed())
    });

    // Once the slow request is being held, another connection is served at once.
    assert!(authority.wait_until(Duration::from_secs(10), |log| {
        log.first()
            .is_some_and(|record| record.outcome == Outcome::Pending)
    }));
    assert_token(
        &post_basic(&authority, "basic-client", "basic-secret", &[CC]),
        60,
    );
    assert!(
        done_rx.try_recv().is_err(),
        "the delayed request finished before the undelayed one"
    );

    let (response, elapsed) = slow.join().expect("slow client");
    assert_token(&response, 60);
    assert!(elapsed >= delay, "answered after {elapsed:?}");
    let log = authority.requests();
    assert_eq!(log[0].fault, Some(Fault::Delay(delay)));
    assert!(matches!(log[0].outcome, Outcome::Issued { .. }));
    assert_eq!(authority.issued_tokens().len(), 2);
}

#[test]
fn a_client_that_gives_up_during_a_delay_is_abandoned() {
    let authority = authority_with_clients();
    let refresh_token = authority.issue_refresh_token("basic-client");
    authority.push_fault(Fault::Delay(Duration::from_secs(30)));

    let authorization = basic("basic-client", "basic-secret");
    let body = form(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", &refresh_token),
    ]);
    let mut stream = connect(authority.addr());
    stream
        .write_all(&request_bytes(
            "POST",
            "/token",
            &[FORM, ("Authorization", &authorization)],
            body.as_bytes(),
        ))
        .expect("write");
    assert!(authority.wait_for_requests(1, Duration::from_secs(10)));
    drop(stream);

    assert!(authority.wait_until(Duration::from_secs(10), |log| {
        log[0].outcome == Outcome::Abandoned
    }));
    assert!(authority.issued_tokens().is_empty());
    assert!(authority.refresh_token_is_live(&refresh_token));
    assert_eq!(authority.requests()[0].status, None);
}

#[test]
fn drop_connection_closes_without_an_answer() {
    let authority = authority_with_clients();
    let refresh_token = authority.issue_refresh_token("basic-client");
    authority.push_fault(Fault::DropConnection);

    let authorization = basic("basic-client", "basic-secret");
    let raw = exchange_raw(
        authority.addr(),
        "POST",
        "/token",
        &[FORM, ("Authorization", &authorization)],
        form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh_token),
        ])
        .as_bytes(),
    );
    match raw {
        Ok(bytes) => assert!(
            bytes.is_empty(),
            "got {:?}",
            String::from_utf8_lossy(&bytes)
        ),
        Err(error) => assert_ne!(error.kind(), io::ErrorKind::WouldBlock, "read timed out"),
    }

    let record = &authority.requests()[0];
    assert_eq!(record.status, None);
    assert_eq!(record.outcome, Outcome::Dropped);
    assert_eq!(record.fault, Some(Fault::DropConnection));
    assert!(authority.refresh_token_is_live(&refresh_token));
    assert!(authority.issued_tokens().is_empty());

    // The next request is answered normally.
    assert_token(
        &post_basic(&authority, "basic-client", "basic-secret", &[CC]),
        60,
    );
}

#[test]
fn body_faults() {
    let authority = authority_with_clients();
    let ten_mib = 10 * 1024 * 1024;
    authority.push_faults([
        Fault::MalformedJson,
        Fault::HtmlErrorPage { status: 502 },
        Fault::OversizedBody { bytes: ten_mib },
        Fault::EmptyBody { status: 500 },
        Fault::EmptyBody { status: 200 },
    ]);
    let request = || post_basic(&authority, "basic-client", "basic-secret", &[CC]);

    let response = request();
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), r#"{"access_token": "abc", "expires_in": "#);
    assert!(serde_json::from_slice::<Value>(&response.body).is_err());

    let response = request();
    assert_eq!(response.status, 502);
    assert_eq!(response.header("content-type"), Some("text/html"));
    assert!(
        response.text().contains("<h1>502 Bad Gateway</h1>"),
        "{}",
        response.text()
    );

    let response = request();
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), ten_mib);
    assert_eq!(
        response.header("content-length"),
        Some(ten_mib.to_string().as_str())
    );
    assert!(response.body.starts_with(br#"{"access_token":"xxxx"#));

    for status in [500, 200] {
        let response = request();
        assert_eq!(response.status, status);
        assert!(response.body.is_empty());
        assert_eq!(response.header("content-length"), Some("0"));
    }

    assert!(authority.issued_tokens().is_empty());
    let log = authority.requests();
    assert!(log.iter().all(|record| record.outcome == Outcome::Faulted));
    assert_eq!(authority.count_by_status(200), 3);
}

#[test]
fn shape_faults_issue_a_token_with_a_changed_body() {
    let authority = authority_with_clients();
    authority.push_faults([
        Fault::MissingExpiresIn,
        Fault::UnknownTokenType("MAC".into()),
        Fault::MissingExpiresIn,
    ]);

    let response = post_basic(&authority, "basic-client", "basic-secret", &[CC]);
    assert_eq!(response.status, 200);
    let body = response.json();
    assert!(body.get("expires_in").is_none(), "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["access_token"].is_string());

    let response = post_basic(&authority, "basic-client", "basic-secret", &[CC]);
    let body = response.json();
    assert_eq!(body["token_type"], "MAC");
    assert_eq!(body["expires_in"], 60);

    // A shape fault does not turn a bad request into a good one, and is spent anyway.
    post_basic(&authority, "basic-client", "wrong", &[CC])
        .assert_oauth_error(401, "invalid_client");
    assert_eq!(authority.pending_faults(), 0);

    assert_eq!(authority.issued_tokens().len(), 2);
    let log = authority.requests();
    assert!(matches!(log[0].outcome, Outcome::Issued { .. }));
    assert_eq!(log[1].fault, Some(Fault::UnknownTokenType("MAC".into())));
}

#[test]
fn replacing_faults_do_not_spend_refresh_tokens_and_other_paths_do_not_spend_faults() {
    let authority = authority_with_clients();
    let refresh_token = authority.issue_refresh_token("basic-client");
    authority.script(Fault::status(503), 2);

    let response = exchange(authority.addr(), "GET", "/health", &[], b"");
    assert_eq!(response.status, 404);
    assert_eq!(authority.pending_faults(), 2);

    let params = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token.as_str()),
    ];
    for _ in 0..2 {
        let response = post_basic(&authority, "basic-client", "basic-secret", &params);
        assert_eq!(response.status, 503);
        assert!(authority.refresh_token_is_live(&refresh_token));
    }
    assert_token(
        &post_basic(&authority, "basic-client", "basic-secret", &params),
        60,
    );
    assert!(!authority.refresh_token_is_live(&refresh_token));
    assert_eq!(authority.refresh_token_reuses(), 0);

    authority.script(Fault::MalformedJson, 3);
    authority.clear_faults();
    assert_eq!(authority.pending_faults(), 0);
}

#[test]
#[should_panic(expected = "not an HTTP status code")]
fn impossible_fault_statuses_are_refused() {
    let authority = Authority::start();
    authority.push_fault(Fault::status(42));
}

// ----- outages and the log -----

#[test]
fn set_down_answers_503_without_spending_faults() {
    let authority = authority_with_clients();
    authority.push_fault(Fault::status(500));
    authority.set_down(true);
    assert!(authority.is_down());

    for _ in 0..3 {
        let response = post_basic(&authority, "basic-client", "basic-secret", &[CC]);
        assert_eq!(response.status, 503);
        assert_eq!(response.header("content-type"), Some("text/html"));
    }
    assert_eq!(exchange(authority.addr(), "GET", "/", &[], b"").status, 503);
    assert_eq!(authority.pending_faults(), 1);
    assert_eq!(
        authority.count_where(|record| record.outcome == Outcome::Down),
        4
    );

    authority.set_down(false);
    assert_eq!(
        post_basic(&authority, "basic-client", "basic-secret", &[CC]).status,
        500
    );
    assert_token(
        &post_basic(&authority, "basic-client", "basic-secret", &[CC]),
        60,
    );
    assert_eq!(authority.count_by_status(503), 4);
}

#[test]
fn the_request_log_counts() {
    let authority = authority_with_clients();
    let refresh_token = authority.issue_refresh_token("post-client");
    post_basic(&authority, "basic-client", "basic-secret", &[CC]);
    post_basic(&authority, "basic-client", "basic-secret", &[CC]);
    post_basic(&authority, "basic-client", "nope", &[CC]);
    post_body(&authority, "post-client", "post-secret", &[CC]);
    post_body(
        &authority,
        "post-client",
        "post-secret",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh_token),
        ],
    );
    post_body(
        &authority,
        "post-client",
        "post-secret",
        &[("grant_type", "password")],
    );

    assert_eq!(authority.request_count(), 6);
    assert_eq!(authority.count_by_grant("client_credentials"), 4);
    assert_eq!(authority.count_by_grant("refresh_token"), 1);
    assert_eq!(authority.count_by_status(200), 4);
    assert_eq!(authority.count_by_status(401), 1);
    assert_eq!(authority.count_by_status(400), 1);
    assert_eq!(authority.count_by_client("basic-client"), 3);
    assert_eq!(authority.count_by_client("post-client"), 3);
    assert_eq!(authority.count_by_client("nobody"), 0);
    let seqs: Vec<u64> = authority
        .requests()
        .iter()
        .map(|record| record.seq)
        .collect();
    assert_eq!(seqs, [0, 1, 2, 3, 4, 5]);
    let times: Vec<SystemTime> = authority
        .requests()
        .iter()
        .map(|record| record.at)
        .collect();
    assert!(times.windows(2).all(|pair| pair[0] <= pair[1]));

    authority.clear_requests();
    assert_eq!(authority.request_count(), 0);
    assert_eq!(authority.issued_tokens().len(), 4);
}

#[test]
fn seeded_authorities_hand_out_the_same_tokens() {
    let tokens = || {
        let authority = Authority::builder().seed(7).start();
        authority.register_client(Client::new("c", "s"));
        (0..3)
            .map(|_| post_basic(&authority, "c", "s", &[CC]).json()["access_token"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(tokens(), tokens());
}

// ----- lifecycle -----

#[test]
fn works_from_a_thread_without_a_runtime() {
    let handle = std::thread::spawn(|| {
        let authority = Authority::start();
        authority.register_client(Client::new("c", "s"));
        let response = post_basic(&authority, "c", "s", &[CC]);
        response.status
    });
    assert_eq!(handle.join().expect("thread"), 200);
}

#[test]
fn works_inside_and_is_dropped_inside_a_tokio_runtime() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let status = runtime.block_on(async {
        let authority = Authority::start();
        authority.register_client(Client::new("c", "s"));
        let addr = authority.addr();
        let authorization = basic("c", "s");
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = request_bytes(
            "POST",
            "/token",
            &[
                ("Connection", "close"),
                FORM,
                ("Authorization", &authorization),
            ],
            form(&[CC]).as_bytes(),
        );
        tokio::io::AsyncWriteExt::write_all(&mut stream, &request)
            .await
            .expect("write");
        let mut raw = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut raw)
            .await
            .expect("read");
        drop(authority);
        parse_response(&raw).status
    });
    assert_eq!(status, 200);
}

#[test]
fn dropping_the_authority_frees_the_port_and_closes_connections() {
    let authority = authority_with_clients();
    let addr = authority.addr();

    // A keep-alive connection that has been served once.
    let mut stream = connect(addr);
    let authorization = basic("basic-client", "basic-secret");
    stream
        .write_all(&request_bytes(
            "POST",
            "/token",
            &[FORM, ("Authorization", &authorization)],
            form(&[CC]).as_bytes(),
        ))
        .expect("write");
    let mut raw = Vec::new();
    let mut buffer = [0u8; 4096];
    let answered = loop {
        let n = stream.read(&mut buffer).expect("read");
        assert!(n > 0, "closed before answering");
        raw.extend_from_slice(&buffer[..n]);
        if raw.windows(4).any(|window| window == b"\r\n\r\n") {
            let (_, headers, body_start) = parse_head(&raw);
            let length: usize = headers
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, value)| value.parse().ok())
                .expect("Content-Length");
            if raw.len() >= body_start + length {
                break raw;
            }
        }
    };
    assert!(answered.starts_with(b"HTTP/1.1 200"));

    drop(authority);

    // The open connection is closed ...
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty()),
        Err(error) => assert_ne!(error.kind(), io::ErrorKind::WouldBlock, "still open"),
    }
    // ... and nobody listens any more.
    assert!(
        TcpStream::connect(addr).is_err(),
        "the port is still accepting"
    );
}

#[test]
fn shutdown_is_idempotent() {
    let authority = Authority::start();
    let addr = authority.addr();
    authority.shutdown();
    authority.shutdown();
    assert!(TcpStream::connect(addr).is_err());
    // The handle still answers questions about what happened.
    assert_eq!(authority.request_count(), 0);
}

#[test]
fn a_fixed_port_can_be_reused_after_shutdown() {
    let first = Authority::start();
    let port = first.addr().port();
    drop(first);
    let second = Authority::builder().port(port).start();
    assert_eq!(second.addr().port(), port);
    assert_eq!(second.token_url(), format!("http://127.0.0.1:{port}/token"));
    assert_eq!(second.base_url(), format!("http://127.0.0.1:{port}"));
}

#[test]
fn the_handle_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Authority>();
    let authority = std::sync::Arc::new(authority_with_clients());
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let authority = std::sync::Arc::clone(&authority);
            std::thread::spawn(move || {
                post_basic(&authority, "basic-client", "basic-secret", &[CC]).status
            })
        })
        .collect();
    for thread in threads {
        assert_eq!(thread.join().expect("thread"), 200);
    }
    assert_eq!(authority.count_by_status(200), 4);
}
