//! Proxies, written once and run against every driver (tokio, async-std,
//! smol, threads), with the test kit's recording proxy in front of its
//! authority (the proxy maps every host, such as `auth.test`, to the
//! authority):
//!
//! - a loopback token URL never goes through a proxy, whether it is set
//!   explicitly or with `HTTPS_PROXY`, `HTTP_PROXY` or `ALL_PROXY`: the proxy
//!   sees nothing (it used to see the client secret in clear with the thread
//!   driver, whose ureq read the environment by itself);
//! - a plain-http target elsewhere goes to the proxy in absolute form (the
//!   thread driver's ureq speaks only `CONNECT` to proxies, so there it goes
//!   through a tunnel), and `NO_PROXY` sends it direct;
//! - an `https` target goes through a `CONNECT` tunnel, inside which TLS
//!   starts with the target's name: the proxy never sees the request;
//! - proxy credentials reach the proxy as `Proxy-Authorization` and show in
//!   no `Debug` and no error.
//!
//! The proxy settings are given with `ProxyConfig::from_vars`, never by
//! changing this process's environment.

mod common;

use std::time::{Duration, Instant};

use common::Flavor;
use tokenkeeper_core::oauth2::{GrantType, OAuth2Client, TokenUrl};
use tokenkeeper_core::{BackoffPolicy, ClientId, ClientSecret, FetchError, Jitter};
use tokenkeeper_driver::{HttpSettings, ProxyConfig, SpawnError};
use tokenkeeper_testkit::{Authority, Client, ProxiedRequest, RecordingProxy};

const CLIENT_ID: &str = "proxied-client";
const SECRET: &str = "proxy-test-secret-5d2a91";
const PROXY_USER: &str = "tk-user";
const PROXY_PASSWORD: &str = "pr0xy-pa55-e7f3";
/// base64 of `tk-user:pr0xy-pa55-e7f3`.
const PROXY_BASIC: &str = "dGstdXNlcjpwcjB4eS1wYTU1LWU3ZjM=";

/// An authority with the client registered, and a proxy in front of it.
fn setup() -> (Authority, RecordingProxy) {
    let authority = Authority::start();
    authority.register_client(Client::new(CLIENT_ID, SECRET));
    let proxy = RecordingProxy::start(authority.addr());
    (authority, proxy)
}

fn client(url: &str, allow_insecure_http: bool) -> OAuth2Client {
    OAuth2Client::new(
        TokenUrl::parse(url, allow_insecure_http).unwrap(),
        ClientId::new(CLIENT_ID),
        Some(ClientSecret::new(SECRET)),
        GrantType::ClientCredentials,
    )
}

/// `http://auth.test:PORT/token`: not loopback, so proxied; the proxy maps
/// it to the authority, and without the proxy it does not resolve.
fn named_http_client(authority: &Authority) -> OAuth2Client {
    let url = format!("http://auth.test:{}/token", authority.addr().port());
    client(&url, true)
}

fn settings(proxy: ProxyConfig) -> HttpSettings {
    HttpSettings::new()
        .proxy(proxy)
        .connect_timeout(Duration::from_secs(3))
        .request_timeout(Duration::from_secs(5))
}

fn vars(pairs: &[(&str, &str)]) -> ProxyConfig {
    ProxyConfig::from_vars(pairs.iter().map(|(k, v)| (*k, v.to_string())))
}

/// A builder for `client` with `settings`, retrying quickly.
fn builder<F: Flavor>(
    client: OAuth2Client,
    settings: HttpSettings,
) -> tokenkeeper_driver::TokenWatcherBuilder<F::R> {
    F::builder(client)
        .http(settings)
        .jitter(Jitter::none())
        .backoff(
            BackoffPolicy::builder()
                .floor(Duration::from_millis(50))
                .initial(Duration::from_millis(100))
                .cap(Duration::from_millis(400))
                .build()
                .unwrap(),
        )
        .first_token_timeout(Duration::from_secs(15))
}

/// A token, through whatever the settings say.
fn token<F: Flavor>(client: OAuth2Client, settings: HttpSettings) -> String {
    let watcher = F::block_on(builder::<F>(client, settings).spawn())
        .unwrap_or_else(|e| panic!("{}: no token: {e}", F::NAME));
    let token = watcher
        .token()
        .unwrap()
        .access_token
        .expose_secret()
        .to_owned();
    F::block_on(watcher.shutdown());
    token
}

/// The first error of a watcher that cannot get a token, checked (with the
/// watcher's status) to show neither the client secret nor the proxy
/// password.
fn failure<F: Flavor>(client: OAuth2Client, settings: HttpSettings) -> FetchError {
    let watcher = builder::<F>(client, settings)
        .start()
        .unwrap_or_else(|e| panic!("{}: not started: {e}", F::NAME));
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        let status = watcher.status();
        if status.last_error.is_some() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "{}: no failure: {status:?}",
            F::NAME
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    F::block_on(watcher.shutdown());
    assert!(watcher.token().is_err(), "{}: a token arrived", F::NAME);
    let error = status.last_error.clone().unwrap();
    for shown in [
        error.to_string(),
        format!("{error:?}"),
        format!("{status:?}"),
    ] {
        for secret in [SECRET, PROXY_PASSWORD, PROXY_BASIC] {
            assert!(!shown.contains(secret), "{}: {shown}", F::NAME);
        }
    }
    error
}

/// TLS ran inside the tunnel, to the plain-http authority behind the proxy:
/// the handshake meets no TLS there, which is a typed TLS error for the
/// target (not the proxy).
fn assert_tls_to_the_plain_target(error: &FetchError, context: &str) {
    assert!(
        matches!(
            error,
            FetchError::Tls { host, problem: tokenkeeper_core::TlsProblem::ProtocolMismatch }
                if host == "auth.test"
        ),
        "{context}: {error:?}"
    );
}

fn assert_transport(error: &FetchError, context: &str) {
    assert!(
        matches!(
            error,
            FetchError::Transport { .. } | FetchError::Timeout { .. }
        ),
        "{context}: {error:?}"
    );
}

fn lines(seen: &[ProxiedRequest]) -> Vec<String> {
    seen.iter().map(ProxiedRequest::line).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether `request` is how this driver hands the proxy a plain-http token
/// request for `auth.test:PORT`: in absolute form, as curl does (hyper), or
/// as a `CONNECT` tunnel (ureq, which speaks only `CONNECT` to proxies; the
/// request then goes through the tunnel in origin form).
fn is_plain_http_through_proxy<F: Flavor>(
    request: &ProxiedRequest,
    port: u16,
    received: &[u8],
) -> bool {
    let host = format!("auth.test:{port}");
    if F::NAME == "threads" {
        request.line() == format!("CONNECT {host}")
            && request.header("host") == Some(host.as_str())
            && contains(received, b"POST /token HTTP/1.1\r\n")
    } else {
        request.line() == format!("POST http://{host}/token")
            && request.header("host") == Some(host.as_str())
    }
}

/// (1) A loopback token URL is never proxied, however the proxy is set.
fn loopback_is_never_proxied<F: Flavor>() {
    let (authority, proxy) = setup();
    let url = proxy.url();
    let configs = [
        ProxyConfig::url(&url).unwrap(),
        ProxyConfig::url(&proxy.url_with_credentials(PROXY_USER, PROXY_PASSWORD)).unwrap(),
        vars(&[("HTTPS_PROXY", &url)]),
        vars(&[("HTTP_PROXY", &url)]),
        vars(&[("ALL_PROXY", &url)]),
        vars(&[
            ("http_proxy", &url),
            ("https_proxy", &url),
            ("all_proxy", &url),
        ]),
        vars(&[
            ("HTTPS_PROXY", &url),
            ("HTTP_PROXY", &url),
            ("ALL_PROXY", &url),
        ]),
    ];
    let loopback = client(&authority.token_url(), false);
    let mut tokens = 0;
    for config in configs {
        let context = format!("{}: {config:?}", F::NAME);
        let token = token::<F>(loopback.clone(), settings(config));
        assert!(authority.token_is_active(&token), "{context}");
        tokens += 1;
        assert_eq!(authority.request_count(), tokens, "{context}");
        assert!(proxy.seen().is_empty(), "{context}: {:?}", proxy.seen());
    }
    // `localhost` is loopback too.
    let localhost = format!("http://localhost:{}/token", authority.addr().port());
    token::<F>(
        client(&localhost, false),
        settings(vars(&[("HTTP_PROXY", &url), ("ALL_PROXY", &url)])),
    );
    assert_eq!(authority.request_count(), tokens + 1);
    assert!(proxy.seen().is_empty(), "{:?}", proxy.seen());
    assert!(proxy.received().is_empty(), "{}", F::NAME);
}

/// (2) A plain-http target elsewhere goes to the proxy in absolute form.
fn plain_http_goes_to_the_proxy_in_absolute_form<F: Flavor>() {
    let (authority, proxy) = setup();
    let url = proxy.url();
    let port = authority.addr().port();
    let configs = [
        ProxyConfig::url(&url).unwrap(),
        vars(&[("HTTP_PROXY", &url)]),
        vars(&[("http_proxy", &url), ("NO_PROXY", "other.test")]),
        vars(&[("ALL_PROXY", &url)]),
    ];
    for (i, config) in configs.into_iter().enumerate() {
        let context = format!("{}: {config:?}", F::NAME);
        let token = token::<F>(named_http_client(&authority), settings(config));
        assert!(authority.token_is_active(&token), "{context}");
        let seen = proxy.seen();
        assert_eq!(seen.len(), i + 1, "{context}: {:?}", lines(&seen));
        let request = &seen[i];
        assert!(
            is_plain_http_through_proxy::<F>(request, port, &proxy.received()),
            "{context}: {request:?}"
        );
        assert_eq!(request.header("proxy-authorization"), None, "{context}");
    }
    assert_eq!(authority.request_count(), 4);
}

/// (2) `NO_PROXY` (or the explicit setting's exceptions) sends a listed host
/// direct: here it does not resolve, a transport error.
fn no_proxy_sends_a_listed_host_direct<F: Flavor>() {
    let (authority, proxy) = setup();
    let url = proxy.url();
    let configs = [
        vars(&[("HTTP_PROXY", &url), ("NO_PROXY", "auth.test")]),
        vars(&[("ALL_PROXY", &url), ("no_proxy", "localhost, .test")]),
        vars(&[("HTTP_PROXY", &url), ("NO_PROXY", "*")]),
        ProxyConfig::url(&url).unwrap().no_proxy("auth.test:8080"),
        // Only a proxy for https: http goes direct.
        vars(&[("HTTPS_PROXY", &url)]),
    ];
    for config in configs {
        let context = format!("{}: {config:?}", F::NAME);
        let error = failure::<F>(named_http_client(&authority), settings(config));
        assert_transport(&error, &context);
        assert!(proxy.seen().is_empty(), "{context}: {:?}", proxy.seen());
    }
    assert_eq!(authority.request_count(), 0);
}

/// (3) An `https` target goes through a `CONNECT` tunnel; TLS to the target
/// starts inside it (here it meets the plain-http authority and fails), and
/// the proxy never sees the request.
fn https_is_tunnelled_with_connect<F: Flavor>() {
    let (authority, proxy) = setup();
    let url = proxy.url();
    let https = client("https://auth.test/token", false);
    for config in [
        ProxyConfig::url(&url).unwrap(),
        vars(&[("HTTPS_PROXY", &url), ("HTTP_PROXY", "http://127.0.0.1:9")]),
        vars(&[("ALL_PROXY", &url)]),
    ] {
        let context = format!("{}: {config:?}", F::NAME);
        proxy.clear();
        let error = failure::<F>(https.clone(), settings(config));
        assert_tls_to_the_plain_target(&error, &context);
        let seen = proxy.seen();
        assert!(!seen.is_empty(), "{context}");
        for request in &seen {
            assert_eq!(request.line(), "CONNECT auth.test:443", "{context}");
            assert_eq!(request.header("host"), Some("auth.test:443"), "{context}");
        }
        let received = proxy.received();
        // TLS started inside the tunnel: a handshake record, with the
        // target's name (SNI) in its hello.
        let head_end = received
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a CONNECT head")
            + 4;
        assert_eq!(
            received.get(head_end),
            Some(&0x16),
            "{context}: no TLS record"
        );
        assert!(
            contains(&received[head_end..], b"auth.test"),
            "{context}: no SNI"
        );
        for clear in [
            SECRET.as_bytes(),
            b"grant_type",
            b"client_credentials",
            b"POST ",
        ] {
            assert!(!contains(&received, clear), "{context}");
        }
    }
    assert_eq!(authority.count_by_grant("client_credentials"), 0);
}

/// (4) Proxy credentials reach the proxy as `Proxy-Authorization`, and
/// nothing shows them.
fn proxy_credentials_reach_the_proxy_only<F: Flavor>() {
    let authority = Authority::start();
    authority.register_client(Client::new(CLIENT_ID, SECRET));
    let proxy = RecordingProxy::builder(authority.addr())
        .require_basic(PROXY_USER, PROXY_PASSWORD)
        .start();
    let with_credentials = proxy.url_with_credentials(PROXY_USER, PROXY_PASSWORD);
    let explicit = settings(ProxyConfig::url(&with_credentials).unwrap());
    let from_vars = settings(vars(&[("ALL_PROXY", &with_credentials)]));
    for shown in [format!("{explicit:?}"), format!("{from_vars:?}")] {
        assert!(!shown.contains(PROXY_PASSWORD), "{shown}");
        assert!(!shown.contains(PROXY_BASIC), "{shown}");
    }

    // Plain http: on the forwarded request.
    for settings in [explicit.clone(), from_vars] {
        token::<F>(named_http_client(&authority), settings);
    }
    let seen = proxy.seen();
    assert_eq!(seen.len(), 2, "{:?}", lines(&seen));
    for request in &seen {
        let port = authority.addr().port();
        assert!(
            is_plain_http_through_proxy::<F>(request, port, &proxy.received()),
            "{request:?}"
        );
        assert_eq!(
            request.header("proxy-authorization"),
            Some(format!("Basic {PROXY_BASIC}").as_str())
        );
    }

    // https: on the CONNECT, and in no error.
    proxy.clear();
    let error = failure::<F>(client("https://auth.test/token", false), explicit);
    assert_tls_to_the_plain_target(&error, F::NAME);
    let seen = proxy.seen();
    assert!(!seen.is_empty());
    for request in &seen {
        assert_eq!(request.line(), "CONNECT auth.test:443");
        assert_eq!(
            request.header("proxy-authorization"),
            Some(format!("Basic {PROXY_BASIC}").as_str())
        );
    }

    // Wrong credentials: the tunnel is refused with a 407, which the error
    // says, without the password.
    let wrong = proxy.url_with_credentials(PROXY_USER, "wrong-pa55");
    let error = failure::<F>(
        client("https://auth.test/token", false),
        settings(ProxyConfig::url(&wrong).unwrap()),
    );
    assert_transport(&error, F::NAME);
    let shown = error.to_string();
    assert!(shown.contains("407"), "{}: {shown}", F::NAME);
    assert!(!shown.contains("wrong-pa55"), "{}: {shown}", F::NAME);
    assert_eq!(authority.count_by_grant("client_credentials"), 2);
}

/// A proxy URL of another scheme fails the watcher's setup, naming it.
fn unsupported_proxies_fail_the_setup<F: Flavor>() {
    let (authority, _proxy) = setup();
    for (config, scheme) in [
        (
            vars(&[("HTTPS_PROXY", "socks5://127.0.0.1:1080")]),
            "socks5",
        ),
        (
            vars(&[("ALL_PROXY", "https://u:hunter2@127.0.0.1:3128")]),
            "https",
        ),
    ] {
        let error = F::block_on(
            builder::<F>(client(&authority.token_url(), false), settings(config)).spawn(),
        )
        .map(|_| ())
        .unwrap_err();
        let SpawnError::Http(setup) = &error else {
            panic!("{}: {error:?}", F::NAME)
        };
        assert!(setup.proxy_error().is_some(), "{}: {error:?}", F::NAME);
        let shown = error.to_string();
        assert!(shown.contains(&format!("{scheme}://")), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
    assert_eq!(authority.request_count(), 0);
}

per_driver!(
    loopback_is_never_proxied,
    plain_http_goes_to_the_proxy_in_absolute_form,
    no_proxy_sends_a_listed_host_direct,
    https_is_tunnelled_with_connect,
    proxy_credentials_reach_the_proxy_only,
    unsupported_proxies_fail_the_setup,
);
