//! Every driver (tokio, async-std, smol, threads) against an independently
//! written authority, `oauth2-mock-server` 8.2.3 (see `interop/authority.mjs`
//! for what it does).
//!
//! `scripts/test-all.sh` starts it and exports
//! `TOKENKEEPER_TEST_INTEROP_TOKEN_URL` (and the client id and secret). Under a
//! plain `cargo test`, the tests start `node interop/authority.mjs` themselves
//! (one process, shared by the tests that run at the same time, stopped when
//! the last of them ends) when the npm packages are installed
//! (`interop/node_modules`), and fail with a hint otherwise.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError, Weak, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::Flavor;
use tokenkeeper_core::oauth2::{AuthMethod, OAuth2Client};
use tokenkeeper_core::{BackoffPolicy, ClientId, ClientSecret, ErrorClass, Jitter, RefreshToken};
use tokenkeeper_driver::{SpawnError, TokenWatcher, TokenWatcherBuilder};

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

/// The interop authority, shared with the tests running at the same time.
fn interop() -> Arc<Interop> {
    static SHARED: Mutex<Weak<Interop>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(running) = shared.upgrade() {
        return running;
    }
    let started = Arc::new(start_interop());
    *shared = Arc::downgrade(&started);
    started
}

fn start_interop() -> Interop {
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
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop");
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

per_driver!(
    client_credentials_with_basic_authentication,
    client_credentials_with_post_authentication,
    refresh_tokens_rotate_over_several_refreshes,
    a_wrong_secret_is_a_permanent_error,
);
