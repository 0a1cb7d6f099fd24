//! Every driver (tokio, async-std, smol, threads) and the `tokenkeeper`
//! command against independently written authorities:
//!
//! - `oauth2-mock-server` 8.2.3 (see `interop/authority.mjs` for what it
//!   does), over plain HTTP and over HTTPS with a certificate from a private
//!   test CA;
//! - `oidc-provider` 9 (see `interop/oidc-mtls.mjs`) over HTTPS, with RFC 8705
//!   mutual-TLS client authentication (`tls_client_auth` and
//!   `self_signed_tls_client_auth`) and certificate-bound JWT access tokens;
//! - `oidc-provider` 9 again (see `interop/oidc-dpop.mjs`) with its DPoP
//!   feature (RFC 9449), demanding a server nonce in every proof, and
//!   DPoP-bound JWT access tokens.
//!
//! `scripts/test-all.sh` makes the certificates (`interop/certificates.sh`),
//! starts the four servers and exports `TOKENKEEPER_TEST_INTEROP_TOKEN_URL`,
//! `TOKENKEEPER_TEST_INTEROP_TLS_TOKEN_URL`, `TOKENKEEPER_TEST_OIDC_MTLS_TOKEN_URL`,
//! `TOKENKEEPER_TEST_OIDC_DPOP_TOKEN_URL` and the variables that go with them (client ids and secret, CA file,
//! client certificates and keys). Under a plain `cargo test`, the tests start
//! what the environment does not name themselves (one process per server,
//! shared by the tests that run at the same time, stopped when the last of
//! them ends; certificates in a temporary folder, made with `openssl`) when
//! the npm packages are installed (`interop/node_modules`), and fail with a
//! hint otherwise.
//!
//! The command's tests build the `tokenkeeper` binary with cargo (it is in a
//! package of its own, so cargo does not hand this test its path): the first
//! run builds it from scratch, in a target folder of its own.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::Flavor;
use common::interop::{
    Node, base64url_decode, http_request, interop_dir, jwt_claims, sha256, shared, start_node,
    tokenkeeper_binary,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::Value;
use tokenkeeper_core::oauth2::{AuthMethod, GrantType, OAuth2Client, TokenUrl};
use tokenkeeper_core::{
    BackoffPolicy, ClientId, ClientSecret, ErrorClass, Event, FetchError, Jitter, RefreshNow,
    RefreshToken, TlsProblem,
};
use tokenkeeper_driver::dpop::DpopKey;
use tokenkeeper_driver::{HttpSettings, SpawnError, TokenWatcher, TokenWatcherBuilder};

const URL_VAR: &str = "TOKENKEEPER_TEST_INTEROP_TOKEN_URL";
const ID_VAR: &str = "TOKENKEEPER_TEST_INTEROP_CLIENT_ID";
const SECRET_VAR: &str = "TOKENKEEPER_TEST_INTEROP_CLIENT_SECRET";
const TLS_URL_VAR: &str = "TOKENKEEPER_TEST_INTEROP_TLS_TOKEN_URL";
const CA_FILE_VAR: &str = "TOKENKEEPER_TEST_INTEROP_CA_FILE";
const OIDC_URL_VAR: &str = "TOKENKEEPER_TEST_OIDC_MTLS_TOKEN_URL";
const OIDC_ID_VAR: &str = "TOKENKEEPER_TEST_OIDC_MTLS_CLIENT_ID";
const CLIENT_CERT_VAR: &str = "TOKENKEEPER_TEST_INTEROP_CLIENT_CERT";
const CLIENT_KEY_VAR: &str = "TOKENKEEPER_TEST_INTEROP_CLIENT_KEY";
const SELF_SIGNED_ID_VAR: &str = "TOKENKEEPER_TEST_OIDC_SELF_SIGNED_CLIENT_ID";
const SELF_SIGNED_CERT_VAR: &str = "TOKENKEEPER_TEST_INTEROP_SELF_SIGNED_CERT";
const SELF_SIGNED_KEY_VAR: &str = "TOKENKEEPER_TEST_INTEROP_SELF_SIGNED_KEY";
const DPOP_URL_VAR: &str = "TOKENKEEPER_TEST_OIDC_DPOP_TOKEN_URL";
const DPOP_ID_VAR: &str = "TOKENKEEPER_TEST_OIDC_DPOP_CLIENT_ID";
const DPOP_SECRET_VAR: &str = "TOKENKEEPER_TEST_OIDC_DPOP_CLIENT_SECRET";

/// The resource server oidc-mtls.mjs issues every token for (the JWT's `aud`).
const OIDC_RESOURCE: &str = "urn:tokenkeeper:interop";

fn var_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).map(PathBuf::from)
}

/// The interop authority over plain HTTP: the one the environment names, or
/// a `node` process of our own.
struct Interop {
    token_url: String,
    client_id: String,
    client_secret: String,
    _node: Option<Node>,
}

/// The interop authority, shared with the tests running at the same time.
fn interop() -> Arc<Interop> {
    static SHARED: Mutex<Weak<Interop>> = Mutex::new(Weak::new());
    shared(&SHARED, start_interop)
}

fn interop_client() -> (String, String) {
    (
        std::env::var(ID_VAR).unwrap_or_else(|_| "interop-client".into()),
        std::env::var(SECRET_VAR).unwrap_or_else(|_| "interop-secret".into()),
    )
}

fn start_interop() -> Interop {
    let (client_id, client_secret) = interop_client();
    let (node, token_url) = match std::env::var(URL_VAR) {
        Ok(url) => (None, url),
        Err(_) => {
            let (node, url) = start_node("authority.mjs", &[], URL_VAR);
            (Some(node), url)
        }
    };
    Interop {
        token_url,
        client_id,
        client_secret,
        _node: node,
    }
}

/// The test certificates made by `interop/certificates.sh` in a temporary
/// folder, for the servers this test process starts.
struct Certificates {
    dir: tempfile::TempDir,
}

impl Certificates {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn certificates() -> Arc<Certificates> {
    static SHARED: Mutex<Weak<Certificates>> = Mutex::new(Weak::new());
    shared(&SHARED, || {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let status = Command::new("bash")
            .arg(interop_dir().join("certificates.sh"))
            .arg(dir.path())
            .stdin(Stdio::null())
            .status()
            .expect("bash runs");
        assert!(
            status.success(),
            "interop/certificates.sh failed ({status}): it needs the `openssl` command; \
             `scripts/test-all.sh` installs it"
        );
        Certificates { dir }
    })
}

/// oauth2-mock-server over HTTPS (the same client and secret as [`Interop`]).
struct TlsInterop {
    token_url: String,
    /// The CA (PEM) that signed the server's certificate.
    ca_file: PathBuf,
    client_id: String,
    client_secret: String,
    _node: Option<Node>,
    _certificates: Option<Arc<Certificates>>,
}

fn tls_interop() -> Arc<TlsInterop> {
    static SHARED: Mutex<Weak<TlsInterop>> = Mutex::new(Weak::new());
    shared(&SHARED, start_tls_interop)
}

fn start_tls_interop() -> TlsInterop {
    let (client_id, client_secret) = interop_client();
    if let Ok(token_url) = std::env::var(TLS_URL_VAR) {
        let ca_file = var_path(CA_FILE_VAR)
            .unwrap_or_else(|| panic!("{TLS_URL_VAR} is set, so {CA_FILE_VAR} must be too"));
        return TlsInterop {
            token_url,
            ca_file,
            client_id,
            client_secret,
            _node: None,
            _certificates: None,
        };
    }
    let certs = certificates();
    let args = [
        "--cert".into(),
        certs.path("server.pem").into(),
        "--key".into(),
        certs.path("server.key").into(),
    ];
    let (node, token_url) = start_node("authority.mjs", &args, TLS_URL_VAR);
    TlsInterop {
        token_url,
        ca_file: certs.path("ca.pem"),
        client_id,
        client_secret,
        _node: Some(node),
        _certificates: Some(certs),
    }
}

/// A client registered with oidc-provider, and the certificate it holds.
struct MtlsClient {
    id: String,
    cert: PathBuf,
    key: PathBuf,
}

/// oidc-provider with mTLS client authentication.
struct Oidc {
    token_url: String,
    /// The CA (PEM) that signed the server's certificate.
    ca_file: PathBuf,
    /// Registered with `tls_client_auth`; its certificate comes from the
    /// client CA and names it.
    ca_signed: MtlsClient,
    /// Registered with `self_signed_tls_client_auth`.
    self_signed: MtlsClient,
    _node: Option<Node>,
    _certificates: Option<Arc<Certificates>>,
}

fn oidc() -> Arc<Oidc> {
    static SHARED: Mutex<Weak<Oidc>> = Mutex::new(Weak::new());
    shared(&SHARED, start_oidc)
}

fn start_oidc() -> Oidc {
    if let Ok(token_url) = std::env::var(OIDC_URL_VAR) {
        let given = |name: &str| {
            std::env::var_os(name)
                .unwrap_or_else(|| panic!("{OIDC_URL_VAR} is set, so {name} must be too"))
        };
        let client = |id: &str, cert: &str, key: &str| MtlsClient {
            id: given(id).into_string().expect("a UTF-8 client id"),
            cert: given(cert).into(),
            key: given(key).into(),
        };
        return Oidc {
            token_url,
            ca_file: given(CA_FILE_VAR).into(),
            ca_signed: client(OIDC_ID_VAR, CLIENT_CERT_VAR, CLIENT_KEY_VAR),
            self_signed: client(
                SELF_SIGNED_ID_VAR,
                SELF_SIGNED_CERT_VAR,
                SELF_SIGNED_KEY_VAR,
            ),
            _node: None,
            _certificates: None,
        };
    }
    let certs = certificates();
    let args = [
        "--cert".into(),
        certs.path("server.pem").into(),
        "--key".into(),
        certs.path("server.key").into(),
        "--client-ca".into(),
        certs.path("client-ca.pem").into(),
        "--self-signed-client".into(),
        certs.path("self-signed-client.pem").into(),
    ];
    let (node, token_url) = start_node("oidc-mtls.mjs", &args, OIDC_URL_VAR);
    // The client ids registered in oidc-mtls.mjs, for the certificates that
    // certificates.sh makes for them.
    Oidc {
        token_url,
        ca_file: certs.path("ca.pem"),
        ca_signed: MtlsClient {
            id: "interop-mtls-client".into(),
            cert: certs.path("client.pem"),
            key: certs.path("client.key"),
        },
        self_signed: MtlsClient {
            id: "interop-self-signed-client".into(),
            cert: certs.path("self-signed-client.pem"),
            key: certs.path("self-signed-client.key"),
        },
        _node: Some(node),
        _certificates: Some(certs),
    }
}

/// oidc-provider with DPoP and required nonces.
struct OidcDpop {
    token_url: String,
    client_id: String,
    client_secret: String,
    _node: Option<Node>,
}

fn oidc_dpop() -> Arc<OidcDpop> {
    static SHARED: Mutex<Weak<OidcDpop>> = Mutex::new(Weak::new());
    shared(&SHARED, || {
        // The client registered in oidc-dpop.mjs, unless told otherwise.
        let client_id = std::env::var(DPOP_ID_VAR).unwrap_or_else(|_| "interop-dpop-client".into());
        let client_secret =
            std::env::var(DPOP_SECRET_VAR).unwrap_or_else(|_| "interop-dpop-secret".into());
        let (node, token_url) = match std::env::var(DPOP_URL_VAR) {
            Ok(url) => (None, url),
            Err(_) => {
                let (node, url) = start_node("oidc-dpop.mjs", &[], DPOP_URL_VAR);
                (Some(node), url)
            }
        };
        OidcDpop {
            token_url,
            client_id,
            client_secret,
            _node: node,
        }
    })
}

/// A value no earlier test run has used: refresh tokens are single-use.
fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!(
        "{prefix}{}-{nanos:x}-{:x}",
        std::process::id(),
        fastrand::u64(..)
    )
}

fn quick<F: Flavor>(client: OAuth2Client) -> TokenWatcherBuilder<F::R> {
    F::builder(client)
        .jitter(Jitter::none())
        .backoff(
            BackoffPolicy::builder()
                .floor(Duration::from_millis(50))
                .initial(Duration::from_millis(100))
                .cap(Duration::from_secs(2))
                .build()
                .unwrap(),
        )
        .first_token_timeout(Duration::from_secs(20))
}

fn spawn<F: Flavor>(builder: TokenWatcherBuilder<F::R>) -> TokenWatcher<F::R> {
    F::block_on(builder.spawn()).unwrap_or_else(|e| panic!("{}: spawn failed: {e:?}", F::NAME))
}

fn client_credentials(i: &Interop, secret: &str) -> OAuth2Client {
    OAuth2Client::client_credentials(
        &i.token_url,
        ClientId::new(i.client_id.clone()),
        ClientSecret::new(secret),
    )
    .unwrap()
}

fn refresh_token_client(i: &Interop) -> OAuth2Client {
    OAuth2Client::refresh_token(
        &i.token_url,
        ClientId::new(i.client_id.clone()),
        Some(ClientSecret::new(i.client_secret.clone())),
    )
    .unwrap()
}

/// Three non-empty dot-separated parts, as a signed JWT has.
fn looks_like_a_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3 && parts.iter().all(|p| !p.is_empty())
}

fn client_credentials_with_basic_authentication<F: Flavor>() {
    let i = interop();
    let client = client_credentials(&i, &i.client_secret).scope("read write");
    let watcher = spawn::<F>(quick::<F>(client));
    let token = watcher.token().unwrap();
    assert!(looks_like_a_jwt(token.access_token.expose_secret()));
    assert_eq!(token.token_type.to_ascii_lowercase(), "bearer");
    assert_eq!(token.lifetime(), Duration::from_secs(3600));
    assert_eq!(token.scope.as_deref(), Some("read write"));
    drop(token);
    F::block_on(watcher.shutdown());
}

fn client_credentials_with_post_authentication<F: Flavor>() {
    let i = interop();
    let client = client_credentials(&i, &i.client_secret)
        .auth_method(AuthMethod::ClientSecretPost)
        .extra_param("interop_expires_in", "120")
        .unwrap();
    let watcher = spawn::<F>(quick::<F>(client));
    let token = watcher.token().unwrap();
    assert!(looks_like_a_jwt(token.access_token.expose_secret()));
    assert_eq!(token.lifetime(), Duration::from_secs(120));
    drop(token);
    F::block_on(watcher.shutdown());
}

fn refresh_tokens_rotate_over_several_refreshes<F: Flavor>() {
    let i = interop();
    let seed = unique(&format!("interop-seed-{}-", F::NAME));
    let client = refresh_token_client(&i)
        .extra_param("interop_expires_in", "2")
        .unwrap();
    let watcher =
        spawn::<F>(quick::<F>(client).initial_refresh_token(RefreshToken::new(seed.clone())));
    let mut seen = vec![watcher.token().unwrap().into_arc()];
    // 2 s tokens go stale at 1 s: three refreshes take about 3 s.
    for _ in 0..3 {
        let last = seen.last().unwrap().clone();
        let next = F::block_on(watcher.changed_within(Duration::from_secs(6)))
            .unwrap_or_else(|e| panic!("{}: no refresh: {e}", F::NAME));
        assert_ne!(next.access_token, last.access_token);
        seen.push(next);
    }
    // The authority refuses a used refresh token, so any reuse would have
    // shown as a failure.
    let status = watcher.status();
    assert!(status.last_error.is_none(), "{}: {status:?}", F::NAME);
    let refresh_tokens: Vec<&str> = seen
        .iter()
        .map(|t| t.refresh_token.as_ref().unwrap().expose_secret())
        .collect();
    for (n, rt) in refresh_tokens.iter().enumerate() {
        assert_ne!(*rt, seed, "the seed was kept");
        assert!(
            !refresh_tokens[..n].contains(rt),
            "a refresh token came back: {n}"
        );
    }
    let accesses: Vec<&str> = seen
        .iter()
        .map(|t| t.access_token.expose_secret())
        .collect();
    for (n, at) in accesses.iter().enumerate() {
        assert!(!accesses[..n].contains(at));
    }
    F::block_on(watcher.shutdown());

    // The seed is spent: starting from it again is refused for good.
    let error = F::block_on(
        quick::<F>(refresh_token_client(&i))
            .initial_refresh_token(RefreshToken::new(seed))
            .spawn(),
    )
    .unwrap_err();
    assert!(error.is_permanent(), "{error:?}");
    let fetch = error.fetch_error().unwrap();
    assert_eq!(fetch.oauth_error().unwrap().error, "invalid_grant");
}

fn a_wrong_secret_is_a_permanent_error<F: Flavor>() {
    let i = interop();
    for method in [AuthMethod::ClientSecretBasic, AuthMethod::ClientSecretPost] {
        let client = client_credentials(&i, "not-the-interop-secret").auth_method(method);
        let started = Instant::now();
        let error = F::block_on(quick::<F>(client).spawn()).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        match &error {
            SpawnError::Rejected { error } => {
                assert_eq!(error.class(), ErrorClass::Permanent);
                assert_eq!(error.oauth_error().unwrap().error, "invalid_client");
            }
            other => panic!("{}: {method:?}: {other:?}", F::NAME),
        }
        assert!(!error.to_string().contains("not-the-interop-secret"));
    }
}

// --- over TLS ------------------------------------------------------------------

/// The certificate's SHA-256 thumbprint (RFC 8705 §3.1), decoded.
fn thumbprint_of(cert_file: &Path) -> Vec<u8> {
    let der = CertificateDer::from_pem_file(cert_file)
        .unwrap_or_else(|e| panic!("{}: {e:?}", cert_file.display()));
    sha256(&der)
}

/// The `x5t#S256` an access token is bound to, decoded; None when unbound.
fn bound_thumbprint(claims: &Value) -> Option<Vec<u8>> {
    let text = claims.get("cnf")?.get("x5t#S256")?.as_str()?;
    Some(base64url_decode(text).expect("a base64url thumbprint"))
}

/// `https://host:port` of a token URL.
fn origin(token_url: &str) -> &str {
    let after_scheme = token_url.find("://").expect("an absolute URL") + 3;
    let end = token_url[after_scheme..]
        .find('/')
        .map_or(token_url.len(), |i| after_scheme + i);
    &token_url[..end]
}

fn seconds(claims: &Value, name: &str) -> i64 {
    claims[name]
        .as_i64()
        .unwrap_or_else(|| panic!("no numeric {name}: {claims}"))
}

fn trusting(ca_file: &Path) -> HttpSettings {
    HttpSettings::default()
        .ssl_cert_env(false)
        .add_root_certificates_file(ca_file)
}

fn mtls_client_of(oidc: &Oidc, client: &MtlsClient, method: AuthMethod) -> OAuth2Client {
    OAuth2Client::new(
        TokenUrl::parse(&oidc.token_url, false).unwrap(),
        ClientId::new(client.id.clone()),
        None,
        GrantType::ClientCredentials,
    )
    .auth_method(method)
}

fn with_certificate(oidc: &Oidc, client: &MtlsClient) -> HttpSettings {
    trusting(&oidc.ca_file).client_certificate_files(&client.cert, &client.key)
}

fn client_credentials_over_https_trusting_a_ca_file<F: Flavor>() {
    let i = tls_interop();
    assert!(i.token_url.starts_with("https://"), "{}", i.token_url);
    let client = OAuth2Client::client_credentials(
        &i.token_url,
        ClientId::new(i.client_id.clone()),
        ClientSecret::new(i.client_secret.clone()),
    )
    .unwrap()
    .scope("read write")
    .extra_param("interop_expires_in", "240")
    .unwrap();
    let watcher = spawn::<F>(quick::<F>(client).http(trusting(&i.ca_file)));
    let token = watcher.token().unwrap();
    assert_eq!(token.token_type.to_ascii_lowercase(), "bearer");
    assert_eq!(token.lifetime(), Duration::from_secs(240));
    assert_eq!(token.scope.as_deref(), Some("read write"));
    // What the authority signed: the scope and lifetime it was sent, and its
    // own https issuer (it knows it serves TLS).
    let claims = jwt_claims(token.access_token.expose_secret());
    assert_eq!(claims["scope"], "read write", "{claims}");
    assert_eq!(seconds(&claims, "exp") - seconds(&claims, "iat"), 240);
    assert_eq!(claims["iss"], origin(&i.token_url), "{claims}");
    drop(token);
    F::block_on(watcher.shutdown());
}

fn an_untrusted_certificate_fails_fast_and_names_the_fix<F: Flavor>() {
    let i = tls_interop();
    let client = OAuth2Client::client_credentials(
        &i.token_url,
        ClientId::new(i.client_id.clone()),
        ClientSecret::new(i.client_secret.clone()),
    )
    .unwrap();
    let started = Instant::now();
    // The bundled web roots only: the test CA is not among them.
    let error = F::block_on(
        quick::<F>(client)
            .http(HttpSettings::default().ssl_cert_env(false))
            .spawn(),
    )
    .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{}: {:?}",
        F::NAME,
        started.elapsed()
    );
    assert!(error.is_permanent(), "{}: {error:?}", F::NAME);
    match error.fetch_error() {
        Some(FetchError::Tls { host, problem }) => {
            assert_eq!(*problem, TlsProblem::UnknownIssuer, "{}", F::NAME);
            assert_eq!(host, "localhost");
        }
        other => panic!("{}: {other:?}", F::NAME),
    }
    let message = error.to_string();
    assert!(message.contains("add_root_certificates_file"), "{message}");
}

/// The checks common to both mTLS methods: the token oidc-provider issued is
/// for this client, was authenticated by the certificate, and is bound to it.
fn certificate_bound_token_by<F: Flavor>(method: AuthMethod) {
    let o = oidc();
    let holder = match method {
        AuthMethod::TlsClientAuth => &o.ca_signed,
        _ => &o.self_signed,
    };
    let client = mtls_client_of(&o, holder, method).scope("read");
    let watcher = spawn::<F>(quick::<F>(client).http(with_certificate(&o, holder)));
    let token = watcher.token().unwrap();
    assert_eq!(token.token_type.to_ascii_lowercase(), "bearer");
    // oidc-mtls.mjs's resource server: 300 s JWTs.
    assert_eq!(token.lifetime(), Duration::from_secs(300));
    assert_eq!(token.scope.as_deref(), Some("read"));

    let claims = jwt_claims(token.access_token.expose_secret());
    assert_eq!(claims["client_id"], holder.id.as_str(), "{claims}");
    assert_eq!(claims["sub"], holder.id.as_str(), "{claims}");
    assert_eq!(claims["aud"], OIDC_RESOURCE, "{claims}");
    assert_eq!(claims["scope"], "read", "{claims}");
    assert_eq!(claims["iss"], origin(&o.token_url), "{claims}");
    // Bound to the certificate the server saw on the connection, which is
    // the one in the file.
    let expected = thumbprint_of(&holder.cert);
    assert_eq!(
        bound_thumbprint(&claims).as_deref(),
        Some(&expected[..]),
        "{}: {claims}",
        F::NAME
    );
    // And the record keeps the binding.
    let kept = token
        .extra
        .get("cnf")
        .and_then(|cnf| cnf.get("x5t#S256"))
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{}: no cnf in the record: {:?}", F::NAME, token.extra));
    assert_eq!(base64url_decode(kept).unwrap(), expected);
    drop(token);
    F::block_on(watcher.shutdown());
}

fn tls_client_auth_gets_a_certificate_bound_token<F: Flavor>() {
    certificate_bound_token_by::<F>(AuthMethod::TlsClientAuth);
}

fn self_signed_tls_client_auth_gets_a_certificate_bound_token<F: Flavor>() {
    certificate_bound_token_by::<F>(AuthMethod::SelfSignedTlsClientAuth);
}

/// The server, not the client, decides: a certificate from outside the
/// client CA does not authenticate the tls_client_auth client, and the CA's
/// certificate does not authenticate the self-signed client (its thumbprint
/// is not the registered one).
fn the_wrong_client_certificate_is_invalid_client<F: Flavor>() {
    let o = oidc();
    for (client, method, presented) in [
        (&o.ca_signed, AuthMethod::TlsClientAuth, &o.self_signed),
        (
            &o.self_signed,
            AuthMethod::SelfSignedTlsClientAuth,
            &o.ca_signed,
        ),
    ] {
        let started = Instant::now();
        let error = F::block_on(
            quick::<F>(mtls_client_of(&o, client, method))
                .http(with_certificate(&o, presented))
                .spawn(),
        )
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        match &error {
            SpawnError::Rejected { error } => {
                assert_eq!(error.class(), ErrorClass::Permanent);
                assert_eq!(error.oauth_error().unwrap().error, "invalid_client");
            }
            other => panic!("{}: {method:?}: {other:?}", F::NAME),
        }
    }
}

// --- DPoP ----------------------------------------------------------------------

/// What oidc-dpop.mjs saw of the token requests whose proof was signed by the
/// key of this thumbprint (`GET /interop/token-requests` there): each as
/// (whether the proof carried a nonce, "ok" or the OAuth error).
fn dpop_requests_seen(o: &OidcDpop, jkt: &str) -> Vec<(bool, String)> {
    let url = format!("{}/interop/token-requests", origin(&o.token_url));
    assert!(
        url.starts_with("http://"),
        "{DPOP_URL_VAR} is not an http URL: {}",
        o.token_url
    );
    let (status, body) = http_request("GET", &url);
    assert_eq!(
        status, 200,
        "{DPOP_URL_VAR} must name interop/oidc-dpop.mjs, which logs token requests: {body}"
    );
    let log: Vec<Value> = serde_json::from_str(&body).expect("a JSON log");
    log.iter()
        .filter(|entry| entry["jkt"] == jkt)
        .map(|entry| {
            (
                entry["nonce"] == true,
                entry["result"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn oidc_dpop_client(o: &OidcDpop) -> OAuth2Client {
    OAuth2Client::client_credentials(
        &o.token_url,
        ClientId::new(o.client_id.clone()),
        ClientSecret::new(o.client_secret.clone()),
    )
    .unwrap()
    .scope("read")
}

fn dpop_bound_token_from_oidc_provider_after_its_nonce<F: Flavor>() {
    let o = oidc_dpop();
    let keys = [
        DpopKey::generate_es256().unwrap(),
        DpopKey::generate_ed25519().unwrap(),
    ];
    for key in keys {
        let name = format!("{} {}", F::NAME, key.algorithm());
        let failures = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&failures);
        let watcher = spawn::<F>(
            quick::<F>(oidc_dpop_client(&o))
                .dpop(key.clone())
                .refresh_now_min_interval(Duration::from_millis(10))
                .on_event(move |event| {
                    if let Event::FetchFailed { error, .. } = event {
                        seen.lock().unwrap().push(error.to_string());
                    }
                }),
        );
        let token = watcher.token().unwrap().into_arc();
        assert_eq!(token.token_type, "DPoP", "{name}");
        assert_eq!(token.lifetime(), Duration::from_secs(300), "{name}");
        // What oidc-provider signed: the token is bound to the thumbprint it
        // computed of the key in our proof.
        let claims = jwt_claims(token.access_token.expose_secret());
        assert_eq!(claims["cnf"]["jkt"], key.thumbprint(), "{name}: {claims}");
        assert_eq!(
            claims["client_id"],
            o.client_id.as_str(),
            "{name}: {claims}"
        );
        assert_eq!(claims["aud"], OIDC_RESOURCE, "{name}: {claims}");
        assert_eq!(claims["scope"], "read", "{name}: {claims}");
        assert_eq!(
            token.extra.get("cnf").and_then(|cnf| cnf.get("jkt")),
            Some(&Value::from(key.thumbprint())),
            "{name}"
        );
        // It asked for its nonce once, and got it at once.
        let ok = (true, "ok".to_owned());
        let dance = vec![(false, "use_dpop_nonce".to_owned()), ok.clone()];
        assert_eq!(dpop_requests_seen(&o, key.thumbprint()), dance, "{name}");

        // A forced refresh sends the nonce it holds: one request.
        let started = F::block_on(watcher.refresh_now());
        assert!(
            matches!(started, Ok(RefreshNow::Started | RefreshNow::Joined)),
            "{name}: {started:?}"
        );
        let end = Instant::now() + Duration::from_secs(20);
        let refreshed = loop {
            let current = watcher.token().unwrap().into_arc();
            if current.access_token != token.access_token {
                break current;
            }
            assert!(
                Instant::now() < end,
                "{name}: no refresh: {:?}",
                watcher.status()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let claims = jwt_claims(refreshed.access_token.expose_secret());
        assert_eq!(claims["cnf"]["jkt"], key.thumbprint(), "{name}: {claims}");
        let mut expected = dance;
        expected.push(ok);
        assert_eq!(dpop_requests_seen(&o, key.thumbprint()), expected, "{name}");
        assert!(failures.lock().unwrap().is_empty(), "{name}: {failures:?}");
        F::block_on(watcher.shutdown());
    }

    // The client is registered for DPoP-bound tokens only: without a key,
    // oidc-provider refuses it for good.
    let error = F::block_on(quick::<F>(oidc_dpop_client(&o)).spawn()).unwrap_err();
    assert!(error.is_permanent(), "{}: {error:?}", F::NAME);
    let fetch = error.fetch_error().unwrap();
    assert_eq!(fetch.oauth_error().unwrap().error, "invalid_grant");
}

per_driver!(
    client_credentials_with_basic_authentication,
    client_credentials_with_post_authentication,
    refresh_tokens_rotate_over_several_refreshes,
    a_wrong_secret_is_a_permanent_error,
    client_credentials_over_https_trusting_a_ca_file,
    an_untrusted_certificate_fails_fast_and_names_the_fix,
    tls_client_auth_gets_a_certificate_bound_token,
    self_signed_tls_client_auth_gets_a_certificate_bound_token,
    the_wrong_client_certificate_is_invalid_client,
    dpop_bound_token_from_oidc_provider_after_its_nonce,
);

// --- the command ---------------------------------------------------------------

/// One finished run of the command.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `tokenkeeper token` with these arguments in a clean environment (a
/// home folder of its own, with `secret` as TOKENKEEPER_CLIENT_SECRET when
/// given), and checks that no secret shows where it must not.
fn run_token_command(home: &Path, secret: Option<&str>, args: &[&OsStr]) -> Run {
    let mut cmd = Command::new(tokenkeeper_binary());
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .arg("token")
        .args(args)
        .stdin(Stdio::null());
    if let Some(secret) = secret {
        cmd.env("TOKENKEEPER_CLIENT_SECRET", secret);
    }
    let out = cmd.output().expect("the command runs");
    let run = Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    if let Some(secret) = secret {
        assert!(
            !run.stdout.contains(secret) && !run.stderr.contains(secret),
            "the client secret leaked"
        );
    }
    let token = run.stdout.trim();
    assert!(
        token.is_empty() || !run.stderr.contains(token),
        "the access token leaked on stderr"
    );
    run
}

#[test]
fn command_gets_a_token_over_https_with_a_ca_file_or_exits_5() {
    let i = tls_interop();
    let home = tempfile::tempdir().unwrap();
    let url = i.token_url.as_str();
    let id = i.client_id.as_str();
    let secret = Some(i.client_secret.as_str());
    let base: Vec<&OsStr> = [
        "--token-url",
        url,
        "--client-id",
        id,
        "--scope",
        "read write",
        "--no-cache",
        "--no-ssl-cert-env",
    ]
    .into_iter()
    .map(OsStr::new)
    .collect();

    // Without the CA: exit 5 at once, naming the host and the flag.
    tokenkeeper_binary(); // built before the clock starts
    let started = Instant::now();
    let refused = run_token_command(home.path(), secret, &base);
    assert_eq!(refused.code, Some(5), "{}", refused.stderr);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(refused.stdout.is_empty());
    assert!(refused.stderr.contains("localhost"), "{}", refused.stderr);
    assert!(refused.stderr.contains("--ca-file"), "{}", refused.stderr);

    let mut args = base.clone();
    args.extend([OsStr::new("--ca-file"), i.ca_file.as_os_str()]);
    let run = run_token_command(home.path(), secret, &args);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let claims = jwt_claims(run.stdout.trim());
    assert_eq!(claims["scope"], "read write", "{claims}");
    assert_eq!(claims["iss"], origin(url), "{claims}");
}

/// `tokenkeeper token` arguments for an oidc-provider client authenticating
/// with `method`, presenting the certificate `presented` holds.
fn mtls_command_args<'a>(
    o: &'a Oidc,
    client: &'a MtlsClient,
    method: &'a str,
    presented: &'a MtlsClient,
    cache: Option<&'a Path>,
) -> Vec<&'a OsStr> {
    let mut args: Vec<&OsStr> = vec![
        "--token-url".as_ref(),
        o.token_url.as_ref(),
        "--client-id".as_ref(),
        client.id.as_ref(),
        "--auth-method".as_ref(),
        method.as_ref(),
        "--client-cert".as_ref(),
        presented.cert.as_ref(),
        "--client-key".as_ref(),
        presented.key.as_ref(),
        "--ca-file".as_ref(),
        o.ca_file.as_ref(),
        "--scope".as_ref(),
        "write".as_ref(),
    ];
    match cache {
        Some(path) => args.extend(["--cache".as_ref(), path.as_os_str()]),
        None => args.push("--no-cache".as_ref()),
    }
    args
}

#[test]
fn command_authenticates_by_client_certificate_without_a_secret() {
    let o = oidc();
    let home = tempfile::tempdir().unwrap();
    for (holder, method, other) in [
        (&o.ca_signed, "tls_client_auth", &o.self_signed),
        (&o.self_signed, "self_signed_tls_client_auth", &o.ca_signed),
    ] {
        let cache = home.path().join(format!("{method}.json"));
        let args = mtls_command_args(&o, holder, method, holder, Some(&cache));
        let run = run_token_command(home.path(), None, &args);
        assert_eq!(run.code, Some(0), "{method}: {}", run.stderr);
        let claims = jwt_claims(run.stdout.trim());
        assert_eq!(claims["client_id"], holder.id.as_str(), "{claims}");
        assert_eq!(claims["aud"], OIDC_RESOURCE, "{claims}");
        assert_eq!(claims["scope"], "write", "{claims}");
        assert_eq!(
            bound_thumbprint(&claims).as_deref(),
            Some(&thumbprint_of(&holder.cert)[..]),
            "{method}: {claims}"
        );
        // The cached record notes the binding the authority made.
        let record: Value = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
        assert_eq!(
            record["token"]["extra"]["cnf"]["x5t#S256"], claims["cnf"]["x5t#S256"],
            "{method}: the record's extra fields: {}",
            record["token"]["extra"]
        );

        // The other client's certificate does not authenticate this one:
        // the authority refuses (exit 3, its error shown).
        let args = mtls_command_args(&o, holder, method, other, None);
        let refused = run_token_command(home.path(), None, &args);
        assert_eq!(refused.code, Some(3), "{method}: {}", refused.stderr);
        assert!(
            refused.stderr.contains("invalid_client"),
            "{method}: {}",
            refused.stderr
        );
    }
}
