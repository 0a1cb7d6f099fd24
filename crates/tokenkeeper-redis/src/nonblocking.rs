//! Async connections (multiplexed), for the tokio and async-std/smol adapters.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use tokenkeeper_core::{CacheError, CacheErrorKind, CacheKey, EncodedRecord, LeaseOutcome};

use crate::{
    ACQUIRE_SCRIPT, Keys, RELEASE_SCRIPT, RedisSettings, WRITE_SCRIPT, cache_error, ms, owner_id,
    ttl_ms,
};

#[derive(Default)]
struct Conn {
    conn: Option<MultiplexedConnection>,
    failed_at: Option<Instant>,
}

/// A Redis cache layer over a multiplexed async connection, for one cache key.
///
/// Runs on tokio (feature `tokio`) or on async-std/smol (feature `smol`);
/// with both, it uses tokio inside a tokio runtime and smol elsewhere.
pub struct AsyncRedisLayer {
    settings: RedisSettings,
    keys: Keys,
    owner: String,
    conn: Mutex<Conn>,
}

impl std::fmt::Debug for AsyncRedisLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncRedisLayer")
            .field("server", &self.settings.server())
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl AsyncRedisLayer {
    /// A layer for `key`. Connects lazily, on first use.
    pub fn new(settings: RedisSettings, key: &CacheKey) -> Self {
        AsyncRedisLayer {
            keys: Keys::new(&settings.prefix, key),
            settings,
            owner: owner_id(),
            conn: Mutex::new(Conn::default()),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    /// The Redis names used.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    async fn connection(&self) -> Result<MultiplexedConnection, CacheError> {
        {
            let guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = &guard.conn {
                return Ok(c.clone());
            }
            if guard
                .failed_at
                .is_some_and(|at| at.elapsed() < self.settings.reconnect_delay)
            {
                return Err(CacheError::new(
                    CacheErrorKind::Unavailable,
                    "redis: not reachable (waiting before reconnecting)",
                ));
            }
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.settings.connect_timeout))
            .set_response_timeout(Some(self.settings.op_timeout));
        let result = self
            .settings
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await;
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(c) => {
                guard.conn = Some(c.clone());
                guard.failed_at = None;
                Ok(c)
            }
            Err(e) => {
                guard.failed_at = Some(Instant::now());
                tracing::debug!(server = %self.settings.server(), error = %e, "redis connection failed");
                Err(cache_error(&e))
            }
        }
    }

    fn forget(&self) {
        self.conn.lock().unwrap_or_else(|p| p.into_inner()).conn = None;
    }

    async fn run<T>(
        &self,
        op: impl AsyncFnOnce(&mut MultiplexedConnection) -> redis::RedisResult<T>,
    ) -> Result<T, CacheError> {
        let mut conn = self.connection().await?;
        match op(&mut conn).await {
            Ok(v) => Ok(v),
            Err(e) => {
                self.forget();
                Err(cache_error(&e))
            }
        }
    }

    /// Reads the record's bytes.
    pub async fn read(&self) -> Result<Option<Vec<u8>>, CacheError> {
        let key = &self.keys.record;
        self.run(async |c| {
            redis::cmd("HGET")
                .arg(key)
                .arg("record")
                .query_async::<Option<Vec<u8>>>(c)
                .await
        })
        .await
    }

    /// Stores a record (unless a later-expiring one is there) and announces it.
    pub async fn write(&self, record: &EncodedRecord) -> Result<(), CacheError> {
        let Some(ttl) = ttl_ms(record.expiry()) else {
            return Ok(());
        };
        let keys = &self.keys;
        self.run(async |c| {
            redis::Script::new(WRITE_SCRIPT)
                .key(&keys.record)
                .key(&keys.channel)
                .arg(record.bytes())
                .arg(record.expiry().as_millis())
                .arg(ttl)
                .invoke_async::<i64>(c)
                .await
                .map(|_| ())
        })
        .await
    }

    /// Tries to take (or renew) the lease for `ttl`.
    pub async fn try_acquire(&self, ttl: Duration) -> LeaseOutcome {
        let (key, owner) = (&self.keys.lease, &self.owner);
        let result = self
            .run(async |c| {
                redis::Script::new(ACQUIRE_SCRIPT)
                    .key(key)
                    .arg(owner)
                    .arg(ms(ttl))
                    .invoke_async::<i64>(c)
                    .await
            })
            .await;
        match result {
            Ok(1) => LeaseOutcome::Acquired,
            Ok(_) => LeaseOutcome::HeldByOther,
            Err(e) => LeaseOutcome::Failed(e),
        }
    }

    /// Releases the lease if this layer holds it.
    pub async fn release(&self) -> Result<(), CacheError> {
        let (key, owner) = (&self.keys.lease, &self.owner);
        self.run(async |c| {
            redis::Script::new(RELEASE_SCRIPT)
                .key(key)
                .arg(owner)
                .invoke_async::<i64>(c)
                .await
                .map(|_| ())
        })
        .await
    }

    /// Calls `on_change` each time a record for this key is stored by anyone,
    /// forever: spawn it on your runtime and abort it to stop. After a lost
    /// subscription it waits with `sleep` (your runtime's timer) for the
    /// reconnect delay and subscribes again.
    pub async fn watch_changes<S, F>(&self, on_change: impl Fn(), sleep: S)
    where
        S: Fn(Duration) -> F,
        F: Future<Output = ()>,
    {
        loop {
            let result: redis::RedisResult<()> = async {
                let mut pubsub = self.settings.client.get_async_pubsub().await?;
                pubsub.subscribe(&self.keys.channel).await?;
                let mut messages = pubsub.into_on_message();
                while messages.next().await.is_some() {
                    on_change();
                }
                Ok(())
            }
            .await;
            if let Err(e) = result {
                tracing::debug!(error = %e, "redis subscription lost; reconnecting");
            }
            sleep(self.settings.reconnect_delay).await;
        }
    }
}

/// The layer as the async watchers (`tokenkeeper-tokio`, `tokenkeeper-async-std`)
/// take it: the lease is the Redis lease, and the change notifications are
/// the key's pub/sub channel, so that a watcher waiting for another
/// instance's lease re-reads as soon as that instance stores its token.
#[cfg(feature = "async-layer")]
#[cfg_attr(docsrs, doc(cfg(feature = "async-layer")))]
impl tokenkeeper_driver::CacheLayer for AsyncRedisLayer {
    fn layer(&self) -> tokenkeeper_core::Layer {
        self.settings.core_layer()
    }

    fn read(&self) -> tokenkeeper_driver::BoxFuture<'_, Result<Option<Vec<u8>>, CacheError>> {
        Box::pin(AsyncRedisLayer::read(self))
    }

    fn write<'a>(
        &'a self,
        record: &'a EncodedRecord,
    ) -> tokenkeeper_driver::BoxFuture<'a, Result<(), CacheError>> {
        Box::pin(AsyncRedisLayer::write(self, record))
    }

    fn try_acquire_lease(&self, ttl: Duration) -> tokenkeeper_driver::BoxFuture<'_, LeaseOutcome> {
        Box::pin(self.try_acquire(ttl))
    }

    fn release_lease(&self) -> tokenkeeper_driver::BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(error) = self.release().await {
                tracing::warn!(%error, "could not release the redis lease");
            }
        })
    }

    fn changes(
        self: std::sync::Arc<Self>,
        sleeper: tokenkeeper_driver::Sleeper,
    ) -> Option<tokenkeeper_driver::BoxStream<'static, ()>> {
        Some(tokenkeeper_driver::change_feed(
            move |notifier| async move {
                self.watch_changes(move || notifier.notify(), move |d| sleeper.sleep(d))
                    .await;
            },
        ))
    }
}
