//! HTTPS for real, in every driver (tokio, async-std, smol, threads): the
//! test kit's authority over TLS with certificates of a generated PKI.
//!
//! - Each certificate failure is a typed [`FetchError::Tls`] whose message
//!   names the host and the fix, and `spawn` fails with it at once
//!   ([`SpawnError::Misconfigured`]) instead of waiting out its timeout.
//! - A URL that is not a token endpoint (404, 405, a redirect, a web page)
//!   is [`FetchError::NotATokenEndpoint`], also at once.
//! - The same CA file and the same client certificate work the same way in
//!   every driver (the command: crates/tokenkeeper-cli/tests/tls.rs).
//! - A running watcher that meets a bad certificate keeps serving its token
//!   and tries again, and recovers when the certificate is fixed.

mod common;

use std::time::{Duration, Instant};

use common::Flavor;
use tokenkeeper_core::oauth2::{AuthMethod, GrantType, OAuth2Client, TokenUrl};
use tokenkeeper_core::{BackoffPolicy, ClientId, ClientSecret, FetchError, Jitter, TlsProblem};
use tokenkeeper_driver::{HttpSettings, SpawnError, TokenWatcher, TokenWatcherBuilder};
use tokenkeeper_testkit::pki::{Pki, ServerCert};
use tokenkeeper_testkit::{Authority, Client, ClientAuth, Fault, PresentedAuth, TlsSettings};

const SECRET: &str = "tls-secret-never-shown-41ad";

/// Long enough that a spawn that waits it out is unmistakable.
const FIRST_TOKEN_TIMEOUT: Duration = Duration::from_secs(120);

fn https_authority(tls: TlsSettings) -> Authority {
    let authority = Authority::builder().tls(tls).start();
    authority.register_client(Client::new("svc", SECRET));
    authority.register_client(Client::tls_client_auth("mtls-svc"));
    authority
}

fn secret_client(authority: &Authority) -> OAuth2Client {
    OAuth2Client::client_credentials(
        authority.token_url(),
        ClientId::new("svc"),
        ClientSecret::new(SECRET),
    )
    .expect("an https URL")
}

fn mtls_client(authority: &Authority, id: &str) -> OAuth2Client {
    OAuth2Client::new(
        TokenUrl::parse(&authority.token_url(), false).expect("an https URL"),
        ClientId::new(id),
        None,
        GrantType::ClientCredentials,
    )
    .auth_method(AuthMethod::TlsClientAuth)
}

/// Trusts the PKI's CA through a PEM file, as a user with a private CA does.
fn trusting(pki: &Pki, dir: &tempfile::TempDir) -> HttpSettings {
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pki.ca_pem()).expect("write the CA file");
    HttpSettings::new()
        .native_roots(false)
        .ssl_cert_env(false)
        .request_timeout(Duration::from_secs(5))
        .add_root_certificates_file(ca)
}

fn builder<F: Flavor>(client: OAuth2Client, http: HttpSettings) -> TokenWatcherBuilder<F::R> {
    F::builder(client)
        .http(http)
        .jitter(Jitter::none())
        .first_token_timeout(FIRST_TOKEN_TIMEOUT)
        .backoff(
            BackoffPolicy::builder()
                .floor(Duration::from_millis(50))
                .initial(Duration::from_millis(100))
                .cap(Duration::from_millis(500))
                .build()
                .expect("a backoff policy"),
        )
}

/// Spawns, expecting a misconfiguration; returns the error and how long
/// spawn took.
fn spawn_fails<F: Flavor>(builder: TokenWatcherBuilder<F::R>) -> (FetchError, Duration) {
    let started = Instant::now();
    let result = F::block_on(builder.spawn());
    let took = started.elapsed();
    match result {
        Err(SpawnError::Misconfigured { error }) => (error, took),
        Err(other) => panic!("{}: expected a misconfiguration, got {other:?}", F::NAME),
        Ok(_) => panic!("{}: spawn succeeded", F::NAME),
    }
}

/// Each bad server certificate: the problem, and a word of its fix.
const BAD_CERTIFICATES: [(ServerCert, TlsProblem, &str); 6] = [
    (
        ServerCert::UnknownCa,
        TlsProblem::UnknownIssuer,
        "add_root_certificates_file",
    ),
    (ServerCert::WrongName, TlsProblem::NameMismatch, "host name"),
    (ServerCert::Expired, TlsProblem::Expired, "clock"),
    (ServerCert::NotYetValid, TlsProblem::NotYetValid, "clock"),
    (ServerCert::SelfSigned, TlsProblem::SelfSigned, "--ca-file"),
    (
        ServerCert::SelfSignedCa,
        TlsProblem::SelfSigned,
        "--ca-file",
    ),
];

fn each_bad_certificate_fails_spawn_at_once_with_a_typed_error<F: Flavor>() {
    let pki = Pki::shared();
    let dir = tempfile::tempdir().expect("a folder");
    for (variant, problem, fix) in BAD_CERTIFICATES {
        let authority = https_authority(TlsSettings::new(&pki).certificate(variant));
        let (error, took) = spawn_fails::<F>(builder::<F>(
            secret_client(&authority),
            trusting(&pki, &dir),
        ));
        let what = format!("{} with a {variant} certificate", F::NAME);
        assert_eq!(error.tls_problem(), Some(problem), "{what}: {error:?}");
        assert!(
            matches!(&error, FetchError::Tls { host, .. } if host == "localhost"),
            "{what}"
        );
        let text = error.to_string();
        assert!(
            text.contains("localhost") && text.contains(fix),
            "{what}: {text}"
        );
        assert!(!text.contains(SECRET), "{what}: {text}");
        // At once: well inside the first-token timeout (the old drivers
        // retried a TLS failure as an outage until it ran out).
        assert!(
            took < FIRST_TOKEN_TIMEOUT / 4,
            "{what}: spawn took {took:?}"
        );
        // No request reached the authority: the handshake failed first.
        assert_eq!(authority.request_count(), 0, "{what}");
        // The server logs the failed handshake once it sees the client's
        // alert, which may be after the client has reported.
        let logged = eventually(Duration::from_secs(5), || {
            !authority.tls_failures().is_empty()
        });
        assert!(logged, "{what}");
    }
}

fn client_certificate_problems_are_typed<F: Flavor>() {
    let pki = Pki::shared();
    let dir = tempfile::tempdir().expect("a folder");
    let authority = https_authority(TlsSettings::new(&pki).client_auth(ClientAuth::Require));
    // None configured, but required.
    let (error, _) = spawn_fails::<F>(builder::<F>(
        secret_client(&authority),
        trusting(&pki, &dir),
    ));
    assert_eq!(
        error.tls_problem(),
        Some(TlsProblem::ClientCertificateRequired),
        "{}: {error:?}",
        F::NAME
    );
    assert!(
        error.to_string().contains("client_certificate_files"),
        "{error}"
    );
    // One from a CA the server does not trust.
    let stranger = pki.untrusted_client_identity("mtls-svc");
    let http = trusting(&pki, &dir)
        .client_certificate_pem(stranger.chain_pem(), stranger.key_pem().to_owned());
    let (error, _) = spawn_fails::<F>(builder::<F>(mtls_client(&authority, "mtls-svc"), http));
    assert_eq!(
        error.tls_problem(),
        Some(TlsProblem::ClientCertificateRejected),
        "{}: {error:?}",
        F::NAME
    );
    assert_eq!(authority.request_count(), 0);
}

fn https_to_a_plain_http_server_is_a_protocol_mismatch<F: Flavor>() {
    let pki = Pki::shared();
    let dir = tempfile::tempdir().expect("a folder");
    let plain = Authority::start();
    plain.register_client(Client::new("svc", SECRET));
    let url = plain
        .token_url()
        .replace("http://127.0.0.1", "https://localhost");
    let client =
        OAuth2Client::client_credentials(url, ClientId::new("svc"), ClientSecret::new(SECRET))
            .expect("an https URL");
    let (error, _) = spawn_fails::<F>(builder::<F>(client, trusting(&pki, &dir)));
    assert_eq!(
        error.tls_problem(),
        Some(TlsProblem::ProtocolMismatch),
        "{}: {error:?}",
        F::NAME
    );
    assert!(error.to_string().contains("scheme and port"), "{error}");
}

fn a_url_that_is_not_a_token_endpoint_fails_spawn_at_once<F: Flavor>() {
    let pki = Pki::shared();
    let dir = tempfile::tempdir().expect("a folder");
    let authority = https_authority(TlsSettings::new(&pki));
    let wrong_path = OAuth2Client::client_credentials(
        authority.token_url().replace("/token", "/oauth/v2/token"),
        ClientId::new("svc"),
        ClientSecret::new(SECRET),
    )
    .expect("an https URL");
    let (error, took) = spawn_fails::<F>(builder::<F>(wrong_path, trusting(&pki, &dir)));
    assert!(
        matches!(error, FetchError::NotATokenEndpoint { status: 404, .. }),
        "{}: {error:?}",
        F::NAME
    );
    assert!(
        error.to_string().contains("check the URL's path"),
        "{error}"
    );
    assert!(took < FIRST_TOKEN_TIMEOUT / 4, "{took:?}");
    // A redirect (never followed) is the same mistake.
    authority.push_fault(Fault::status(302));
    let (error, _) = spawn_fails::<F>(builder::<F>(
        secret_client(&authority),
        trusting(&pki, &dir),
    ));
    assert!(
        matches!(error, FetchError::NotATokenEndpoint { status: 302, .. }),
        "{}: {error:?}",
        F::NAME
    );
}

/// The same CA file and the same client certificate files, in every driver:
/// a token bound to the certificate, cached apart from tokens of others.
fn ca_file_and_client_certificate_files_work<F: Flavor>() {
    let pki = Pki::shared();
    let dir = tempfile::tempdir().expect("a folder");
    let authority = https_authority(TlsSettings::new(&pki).client_auth(ClientAuth::Request));
    let identity = pki.client_identity("mtls-svc");
    let files = identity
        .write_files(dir.path(), "client")
        .expect("identity files");
    let http = trusting(&pki, &dir).client_certificate_files(&files.cert, &files.key);
    let watcher: TokenWatcher<F::R> = F::block_on(
        builder::<F>(mtls_client(&authority, "mtls-svc"), http)
            .file_cache(dir.path().join("cache.json"))
            .spawn(),
    )
    .unwrap_or_else(|e| panic!("{}: {e:?}", F::NAME));
    let token = watcher.token().expect("a token");
    let requests = authority.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    // Authenticated by the certificate: no secret, no Basic header.
    assert_eq!(requests[0].auth, PresentedAuth::Certificate, "{}", F::NAME);
    assert!(requests[0].authenticated);
    assert_eq!(requests[0].client_id.as_deref(), Some("mtls-svc"));
    let thumbprint = identity.x5t_s256();
    assert_eq!(
        authority.token_binding(token.access_token.expose_secret()),
        Some(thumbprint.clone()),
        "{}",
        F::NAME
    );
    // The record keeps the binding; the cache key names the certificate.
    assert_eq!(token.extra["cnf"]["x5t#S256"], thumbprint.as_str());
    assert!(watcher.cache_key().description().contains(&thumbprint));
    F::block_on(watcher.shutdown());
}

/// Over TLS 1.2 only, everything works as over 1.3.
fn a_tls12_only_server_works<F: Flavor>() {
    let pki = Pki::shared();
    let dir = tempfile::tempdir().expect("a folder");
    let authority = https_authority(TlsSettings::new(&pki).tls12_only(true));
    let watcher =
        F::block_on(builder::<F>(secret_client(&authority), trusting(&pki, &dir)).spawn())
            .unwrap_or_else(|e| panic!("{}: {e:?}", F::NAME));
    assert!(watcher.token().is_ok());
    assert_eq!(authority.request_count(), 1);
    F::block_on(watcher.shutdown());
}

/// A running watcher whose authority turns up with a certificate it cannot
/// verify keeps serving its token, keeps trying (at the backoff cap), and
/// recovers once the certificate is fixed.
fn a_running_watcher_survives_a_bad_certificate<F: Flavor>() {
    let pki = Pki::shared();
    let dir = tempfile::tempdir().expect("a folder");
    let good = Authority::builder().tls(TlsSettings::new(&pki)).start();
    good.register_client(Client::new("svc", SECRET).token_lifetime(Duration::from_secs(60)));
    let port = good.addr().port();
    let watcher = F::block_on(builder::<F>(secret_client(&good), trusting(&pki, &dir)).spawn())
        .unwrap_or_else(|e| panic!("{}: {e:?}", F::NAME));
    let first = watcher.token().expect("a token").access_token.clone();
    drop(good);

    let bad = Authority::builder()
        .port(port)
        .tls(TlsSettings::new(&pki).certificate(ServerCert::UnknownCa))
        .start();
    bad.register_client(Client::new("svc", SECRET));
    F::block_on(watcher.refresh_now()).expect("a running watcher");
    let tried_twice = eventually(Duration::from_secs(20), || bad.tls_failures().len() >= 2);
    assert!(tried_twice, "{}: {:?}", F::NAME, bad.tls_failures());
    // At the backoff cap (500 ms here), as a permanent error is retried; a
    // transient one would have come back within the 100 ms initial backoff.
    let failures = bad.tls_failures();
    let gap = failures[1]
        .at
        .duration_since(failures[0].at)
        .unwrap_or_default();
    assert!(
        gap >= Duration::from_millis(400),
        "{}: retried after {gap:?}",
        F::NAME
    );
    assert_eq!(watcher.token().expect("still served").access_token, first);
    let status = watcher.status();
    assert_eq!(
        status.last_error.as_ref().and_then(FetchError::tls_problem),
        Some(TlsProblem::UnknownIssuer),
        "{status:?}"
    );
    drop(bad);

    let fixed = Authority::builder()
        .port(port)
        .tls(TlsSettings::new(&pki))
        .start();
    fixed.register_client(Client::new("svc", SECRET));
    let recovered = eventually(Duration::from_secs(20), || fixed.request_count() >= 1);
    assert!(recovered, "{}", F::NAME);
    assert!(eventually(Duration::from_secs(5), || {
        watcher.token().is_ok_and(|t| t.access_token != first)
    }));
    F::block_on(watcher.shutdown());
}

/// Waits until `condition` holds, checking every 20 ms, for at most `limit`.
fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

per_driver!(
    each_bad_certificate_fails_spawn_at_once_with_a_typed_error,
    client_certificate_problems_are_typed,
    https_to_a_plain_http_server_is_a_protocol_mismatch,
    a_url_that_is_not_a_token_endpoint_fails_spawn_at_once,
    ca_file_and_client_certificate_files_work,
    a_tls12_only_server_works,
    a_running_watcher_survives_a_bad_certificate,
);
