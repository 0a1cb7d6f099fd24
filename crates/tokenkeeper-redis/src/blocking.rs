//! Sync connections, for the blocking adapter.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokenkeeper_core::{CacheError, CacheErrorKind, CacheKey, EncodedRecord, LeaseOutcome};

use crate::{
    ACQUIRE_SCRIPT, Keys, RELEASE_SCRIPT, RedisSettings, WRITE_SCRIPT, cache_error, ms, owner_id,
    ttl_ms,
};

struct Conn {
    conn: Option<redis::Connection>,
    failed_at: Option<Instant>,
}

/// A Redis cache layer over a sync connection, for one cache key.
pub struct BlockingRedisLayer {
    settings: RedisSettings,
    keys: Keys,
    owner: String,
    conn: Mutex<Conn>,
}

impl std::fmt::Debug for BlockingRedisLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingRedisLayer")
            .field("server", &self.settings.server())
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl BlockingRedisLayer {
    /// A layer for `key`. Connects lazily, on first use.
    pub fn new(settings: RedisSettings, key: &CacheKey) -> Self {
        BlockingRedisLayer {
            keys: Keys::new(&settings.prefix, key),
            settings,
            owner: owner_id(),
            conn: Mutex::new(Conn {
                conn: None,
                failed_at: None,
            }),
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

    /// Runs `op` on a connection, connecting first if needed. Any error drops
    /// the connection; a failed connection attempt makes the next ones fail
    /// fast for the reconnect delay.
    fn with_conn<T>(
        &self,
        op: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, CacheError> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if guard.conn.is_none() {
            if let Some(at) = guard.failed_at
                && at.elapsed() < self.settings.reconnect_delay
            {
                return Err(CacheError::new(
                    CacheErrorKind::Unavailable,
                    "redis: not reachable (waiting before reconnecting)",
                ));
            }
            let conn = self
                .settings
                .client
                .get_connection_with_timeout(self.settings.connect_timeout)
                .and_then(|c| {
                    c.set_read_timeout(Some(self.settings.op_timeout))?;
                    c.set_write_timeout(Some(self.settings.op_timeout))?;
                    Ok(c)
                });
            match conn {
                Ok(c) => {
                    guard.conn = Some(c);
                    guard.failed_at = None;
                }
                Err(e) => {
                    guard.failed_at = Some(Instant::now());
                    tracing::debug!(server = %self.settings.server(), error = %e, "redis connection failed");
                    return Err(cache_error(&e));
                }
            }
        }
        let Some(conn) = guard.conn.as_mut() else {
            return Err(CacheError::new(
                CacheErrorKind::Unavailable,
                "redis: no connection",
            ));
        };
        match op(conn) {
            Ok(v) => Ok(v),
            Err(e) => {
                guard.conn = None;
                Err(cache_error(&e))
            }
        }
    }

    /// Reads the record's bytes.
    pub fn read(&self) -> Result<Option<Vec<u8>>, CacheError> {
        self.with_conn(|c| {
            redis::cmd("HGET")
                .arg(&self.keys.record)
                .arg("record")
                .query::<Option<Vec<u8>>>(c)
        })
    }

    /// Stores a record (unless a later-expiring one is there) and announces it.
    pub fn write(&self, record: &EncodedRecord) -> Result<(), CacheError> {
        let Some(ttl) = ttl_ms(record.expiry()) else {
            return Ok(());
        };
        self.with_conn(|c| {
            redis::Script::new(WRITE_SCRIPT)
                .key(&self.keys.record)
                .key(&self.keys.channel)
                .arg(record.bytes())
                .arg(record.expiry().as_millis())
                .arg(ttl)
                .invoke::<i64>(c)
                .map(|_| ())
        })
    }

    /// Tries to take (or renew) the lease for `ttl`.
    pub fn try_acquire(&self, ttl: Duration) -> LeaseOutcome {
        let result = self.with_conn(|c| {
            redis::Script::new(ACQUIRE_SCRIPT)
                .key(&self.keys.lease)
                .arg(&self.owner)
                .arg(ms(ttl))
                .invoke::<i64>(c)
        });
        match result {
            Ok(1) => LeaseOutcome::Acquired,
            Ok(_) => LeaseOutcome::HeldByOther,
            Err(e) => LeaseOutcome::Failed(e),
        }
    }

    /// Releases the lease if this layer holds it.
    pub fn release(&self) -> Result<(), CacheError> {
        self.with_conn(|c| {
            redis::Script::new(RELEASE_SCRIPT)
                .key(&self.keys.lease)
                .arg(&self.owner)
                .invoke::<i64>(c)
                .map(|_| ())
        })
    }

    /// Starts a thread that calls `on_change` each time a record for this key
    /// is stored by anyone. It reconnects after failures and stops when the
    /// returned [`Subscription`] is dropped.
    pub fn subscribe(&self, on_change: impl Fn() + Send + 'static) -> Subscription {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let client = self.settings.client.clone();
        let channel = self.keys.channel.clone();
        let poll = self.settings.op_timeout.max(Duration::from_millis(100));
        let connect_timeout = self.settings.connect_timeout;
        let delay = self.settings.reconnect_delay;
        let thread = std::thread::Builder::new()
            .name("tokenkeeper-redis-sub".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    let result = (|| -> redis::RedisResult<()> {
                        let mut conn = client.get_connection_with_timeout(connect_timeout)?;
                        let mut pubsub = conn.as_pubsub();
                        pubsub.set_read_timeout(Some(poll))?;
                        pubsub.subscribe(&channel)?;
                        while !flag.load(Ordering::Relaxed) {
                            match pubsub.get_message() {
                                Ok(_) => on_change(),
                                Err(e) if e.is_timeout() => {}
                                Err(e) => return Err(e),
                            }
                        }
                        Ok(())
                    })();
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "redis subscription lost; reconnecting");
                        let until = Instant::now() + delay;
                        while Instant::now() < until && !flag.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
            });
        Subscription {
            stop,
            thread: thread.ok(),
        }
    }
}

/// A running change subscription; dropping it stops the thread.
#[derive(Debug)]
pub struct Subscription {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // The thread notices within one read timeout; don't wait for it here.
        drop(self.thread.take());
    }
}

#[cfg(feature = "blocking")]
#[cfg_attr(docsrs, doc(cfg(feature = "blocking")))]
impl tokenkeeper_driver::BlockingCacheLayer for BlockingRedisLayer {
    fn layer(&self) -> tokenkeeper_core::Layer {
        self.settings.core_layer()
    }

    fn read(&self) -> Result<Option<Vec<u8>>, CacheError> {
        BlockingRedisLayer::read(self)
    }

    fn write(&self, record: &EncodedRecord) -> Result<(), CacheError> {
        BlockingRedisLayer::write(self, record)
    }

    fn try_acquire_lease(&self, ttl: Duration) -> LeaseOutcome {
        BlockingRedisLayer::try_acquire(self, ttl)
    }

    fn release_lease(&self) {
        if let Err(error) = BlockingRedisLayer::release(self) {
            // The lease expires by itself; others wait at most its TTL.
            tracing::debug!(%error, "could not release the redis lease");
        }
    }

    fn subscribe(&self, notify: Box<dyn Fn() + Send + Sync>) -> Option<Box<dyn Send>> {
        Some(Box::new(BlockingRedisLayer::subscribe(self, notify)))
    }
}
