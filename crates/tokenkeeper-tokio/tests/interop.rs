//! The tokio watcher against an independently written authority,
//! `oauth2-mock-server` 8.2.3 (see `interop/authority.mjs` for what it does).
//!
//! `scripts/test-all.sh` starts it and exports
//! `TOKENKEEPER_TEST_INTEROP_TOKEN_URL` (and the client id and secret). Under a
//! plain `cargo test`, each test starts `node interop/authority.mjs` itself
//! when the npm packages are installed (`interop/node_modules`), and fails with
//! a hint otherwise.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokenkeeper_core::oauth2::{AuthMethod, OAuth2Client};
use tokenkeeper_core::{BackoffPolicy, ClientId, ClientSecret, ErrorClass, Jitter, RefreshToken};
use tokenkeeper_tokio::{SpawnError, TokenWatcher, TokenWatcherBuilder};

const URL_VAR: &str = "TOKENKEEPER_TEST_INTEROP_TOKEN_URL";
const ID_VAR: &str = "TOKENKEEPER_TEST_INTEROP_CLIENT_ID";
const SECRET_VAR: &str = "TOKENKEEPER_TEST_INTEROP_CLIENT_SECRET";

/// The interop authority: the one the environment names, or a `node`
/// process of our own, stopped on drop.
struct Interop {
    token_url: String,
    client_id: String,
    client_secret: String,
    child: Option<Child>,
}

impl Drop for Interop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn interop() -> Interop {
    let client_id = std::env::var(ID_VAR).unwrap_or_else(|_| "interop-client".into());
    let client_secret = std::env::var(SECRET_VAR).unwrap_or_else(|_| "interop-secret".into());
    if let Ok(token_url) = std::env::var(URL_VAR) {
        return Interop {
            token_url,
            client_id,
            client_secret,
            child: None,
        };
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../interop");
    assert!(
        dir.join("node_modules").is_dir(),
        "{URL_VAR} is not set and {} has no node_modules: run the interop tests through \
         `scripts/test-all.sh`, which installs and starts the interop authority",
        dir.display()
    );
    let mut child = Command::new("node")
        .arg(dir.join("authority.mjs"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start `node interop/authority.mjs` ({e}); run `scripts/test-all.sh`")
        });
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(url) = line.strip_prefix("READY ") {
                let _ = tx.send(url.trim().to_owned());
            }
        }
    });
    let mut guard = Interop {
        token_url: String::new(),
        client_id,
        client_secret,
        child: Some(child),
    };
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(url) => guard.token_url = url,
        Err(_) => panic!("the interop authority did not print READY within 30 s"),
    }
    guard
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

fn quick(client: OAuth2Client) -> TokenWatcherBuilder {
    TokenWatcher::builder(client)
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

fn client_credentials(i: &Interop, secret: &str) -> OAuth2Client {
    OAuth2Client::client_credentials(
        &i.token_url,
        ClientId::new(i.client_id.clone()),
        ClientSecret::new(secret),
    )
    .unwrap()
}

/// Three non-empty dot-separated parts, as a signed JWT has.
fn looks_like_a_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3 && parts.iter().all(|p| !p.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_with_basic_authentication() {
    let i = interop();
    let client = client_credentials(&i, &i.client_secret).scope("read write");
    let watcher = quick(client).spawn().await.unwrap();
    let token = watcher.token().unwrap();
    assert!(looks_like_a_jwt(token.access_token.expose_secret()));
    assert_eq!(token.token_type.to_ascii_lowercase(), "bearer");
    assert_eq!(token.lifetime(), Duration::from_secs(3600));
    assert_eq!(token.scope.as_deref(), Some("read write"));
    drop(token);
    watcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_with_post_authentication() {
    let i = interop();
    let client = client_credentials(&i, &i.client_secret)
        .auth_method(AuthMethod::ClientSecretPost)
        .extra_param("interop_expires_in", "120")
        .unwrap();
    let watcher = quick(client).spawn().await.unwrap();
    let token = watcher.token().unwrap();
    assert!(looks_like_a_jwt(token.access_token.expose_secret()));
    assert_eq!(token.lifetime(), Duration::from_secs(120));
    drop(token);
    watcher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_tokens_rotate_over_several_refreshes() {
    let i = interop();
    let seed = unique("interop-seed-tokio-");
    let client = OAuth2Client::refresh_token(
        &i.token_url,
        ClientId::new(i.client_id.clone()),
        Some(ClientSecret::new(i.client_secret.clone())),
    )
    .unwrap()
    .extra_param("interop_expires_in", "2")
    .unwrap();
    let watcher = quick(client)
        .initial_refresh_token(RefreshToken::new(seed.clone()))
        .spawn()
        .await
        .unwrap();
    let mut seen = vec![watcher.token().unwrap().into_arc()];
    // 2 s tokens go stale at 1 s: three refreshes take about 3 s.
    for _ in 0..3 {
        let last = seen.last().unwrap().clone();
        let next = tokio::time::timeout(Duration::from_secs(6), watcher.changed_from(&last))
            .await
            .expect("a refresh")
            .unwrap();
        seen.push(next);
    }
    // The authority refuses a used refresh token, so any reuse would have
    // shown as a failure.
    let status = watcher.status();
    assert!(status.last_error.is_none(), "{status:?}");
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
    watcher.shutdown().await;

    // The seed is spent: starting from it again is refused for good.
    let client = OAuth2Client::refresh_token(
        &i.token_url,
        ClientId::new(i.client_id.clone()),
        Some(ClientSecret::new(i.client_secret.clone())),
    )
    .unwrap();
    let error = quick(client)
        .initial_refresh_token(RefreshToken::new(seed))
        .spawn()
        .await
        .unwrap_err();
    assert!(error.is_permanent(), "{error:?}");
    let fetch = error.fetch_error().unwrap();
    assert_eq!(fetch.oauth_error().unwrap().error, "invalid_grant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_a_permanent_error() {
    let i = interop();
    for method in [AuthMethod::ClientSecretBasic, AuthMethod::ClientSecretPost] {
        let client = client_credentials(&i, "not-the-interop-secret").auth_method(method);
        let started = std::time::Instant::now();
        let error = quick(client).spawn().await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        match &error {
            SpawnError::Rejected { error } => {
                assert_eq!(error.class(), ErrorClass::Permanent);
                assert_eq!(error.oauth_error().unwrap().error, "invalid_client");
            }
            other => panic!("{method:?}: {other:?}"),
        }
        assert!(!error.to_string().contains("not-the-interop-secret"));
    }
}
