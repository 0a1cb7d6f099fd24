//! No secret in `Debug`, `Display`, errors or the `tracing` output.
//!
//! The watcher runs on a smol executor that this test's thread drives
//! itself (`executor.run`), with no file layer and an IP token URL, so that
//! every span and event is recorded on this thread, by its default
//! subscriber.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::FutureExt;
use tokenkeeper_async_std::{AsyncIoRuntime, BoxFuture, CacheLayer, Source, TokenWatcher};
use tokenkeeper_core::oauth2::OAuth2Client;
use tokenkeeper_core::{
    BackoffPolicy, CacheError, ClientId, ClientSecret, EncodedRecord, Jitter, Layer, RefreshToken,
};
use tokenkeeper_testkit::{Authority, Client, Fault};

const SECRET: &str = "s3cret-never-logged-e93b";

/// A writer into a shared buffer, for capturing tracing output.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A cache layer in memory.
#[derive(Clone, Default)]
struct Memory(Arc<Mutex<Option<Vec<u8>>>>);

impl CacheLayer for Memory {
    fn layer(&self) -> Layer {
        Layer::new("memory")
    }
    fn read(&self) -> BoxFuture<'_, Result<Option<Vec<u8>>, CacheError>> {
        Box::pin(async move { Ok(self.0.lock().unwrap().clone()) })
    }
    fn write<'a>(&'a self, record: &'a EncodedRecord) -> BoxFuture<'a, Result<(), CacheError>> {
        Box::pin(async move {
            *self.0.lock().unwrap() = Some(record.bytes().to_vec());
            Ok(())
        })
    }
}

#[test]
fn no_secret_in_debug_display_errors_or_traces() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);

    let authority = Authority::start();
    authority.register_client(Client::new("svc", SECRET).token_lifetime(Duration::from_secs(2)));
    let initial = authority.issue_refresh_token("svc");
    let client = OAuth2Client::refresh_token(
        &authority.token_url(),
        ClientId::new("svc"),
        Some(ClientSecret::new(SECRET)),
    )
    .unwrap();
    authority.push_fault(Fault::status(503));
    let memory = Memory::default();
    let executor = Arc::new(smol::Executor::new());
    let runtime = AsyncIoRuntime::smol_on(Arc::clone(&executor));
    let backoff = BackoffPolicy::builder()
        .floor(Duration::from_millis(50))
        .initial(Duration::from_millis(100))
        .cap(Duration::from_secs(1))
        .build()
        .unwrap();

    let shown = smol::block_on(executor.run(async {
        let builder = TokenWatcher::builder(client.clone())
            .runtime(runtime.clone())
            .jitter(Jitter::none())
            .backoff(backoff.clone())
            .initial_refresh_token(RefreshToken::new(initial.clone()))
            .cache(memory.clone())
            .name("svc-watcher");
        let mut shown = format!("{builder:?}");
        let watcher = builder.spawn().await.unwrap();
        let changed = async { Some(watcher.changed().await) }
            .or(async {
                smol::Timer::after(Duration::from_secs(5)).await;
                None
            })
            .await;
        assert!(matches!(changed, Some(Ok(_))), "no refresh");
        assert!(watcher.refresh_now().await.is_ok());
        let token = watcher.token().unwrap();
        shown.push_str(&format!(
            "{watcher:?} {token:?} {:?} {:?} {runtime:?}",
            watcher.status(),
            Source::from(client.clone())
        ));
        drop(token);
        watcher.shutdown().await;
        shown.push_str(&format!(
            "{:?} {}",
            watcher.token(),
            watcher.token().unwrap_err()
        ));

        // A refusal, shown every way.
        let wrong = OAuth2Client::client_credentials(
            &authority.token_url(),
            ClientId::new("svc"),
            ClientSecret::new("wrong-secret-77ef"),
        )
        .unwrap();
        let refused = TokenWatcher::builder(wrong)
            .runtime(runtime.clone())
            .spawn()
            .await
            .unwrap_err();
        shown.push_str(&format!("{refused} {refused:?}"));
        shown
    }));

    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(logs.contains("tokenkeeper.watcher"), "{logs}");
    assert!(logs.contains("runtime=\"smol\""), "{logs}");
    assert!(logs.contains("tokenkeeper.fetch"), "{logs}");
    assert!(logs.contains("tokenkeeper.cache.write"), "{logs}");
    assert!(logs.contains("new token"), "{logs}");
    assert!(logs.contains("fp:"), "{logs}");
    assert!(memory.0.lock().unwrap().is_some());

    let mut secrets = vec![SECRET.to_owned(), "wrong-secret-77ef".to_owned(), initial];
    for issued in authority.issued_tokens() {
        secrets.push(issued.access_token);
        secrets.extend(issued.refresh_token);
    }
    assert!(secrets.len() >= 5, "{secrets:?}");
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "{secret} in the logs:\n{logs}"
        );
        assert!(!shown.contains(secret.as_str()), "{secret} shown:\n{shown}");
    }
}
