//! A Redis (or Valkey) cache layer for tokenkeeper: one token per fleet.
//!
//! A fleet of short-lived instances that each fetched their own token would
//! multiply the load on the authority by the fleet's size. Sharing one Redis
//! layer, the fleet asks the authority once per refresh period, and an
//! instance that starts cold gets its token in one round trip.
//!
//! # What each key holds
//!
//! For a cache key `K` (the core's [`CacheKey::id`]) and the prefix `P`
//! (default `tokenkeeper:`):
//!
//! | key | type | holds | expires |
//! |---|---|---|---|
//! | `P K` | hash | `record`: the core's cache record (JSON); `expiry`: its expiry in ms | at the token's expiry |
//! | `P K :lease` | string | the owner id of the instance fetching now | after the lease TTL |
//! | `P K :changed` | pub/sub channel | a message each time a record is stored | — |
//!
//! A record is only replaced by one that expires later, so a slow writer never
//! puts an older token over a newer one. The lease is `SET … NX PX` holding a
//! random owner id, released only by its owner (compare-and-delete in Lua),
//! and expiring by itself so that a crashed holder delays the others by at
//! most the lease TTL.
//!
//! # Failure is a cache miss
//!
//! Every operation has a timeout. Redis unreachable, slow or answering garbage
//! is reported as a [`CacheError`]; the refresher treats it as a miss, fetches
//! for itself and keeps serving its token. After a connection failure the
//! layer waits a short while before trying to connect again, so a dead Redis
//! costs nothing per operation; when it comes back the layer is used again.
//!
//! The layer comes in two forms: [`BlockingRedisLayer`] (sync connections, for
//! `tokenkeeper-blocking`) and [`AsyncRedisLayer`] (multiplexed async
//! connections, for tokio and for async-std/smol, chosen by cargo feature).
//! With the `async-layer` feature, `AsyncRedisLayer` is a
//! `tokenkeeper_driver::CacheLayer`, the cache layer of both async watchers
//! (`tokenkeeper-tokio`, `tokenkeeper-async-std`); its change notifications
//! wake a watcher waiting for another instance's lease. The record format is
//! the same everywhere, so blocking, tokio and async-std instances share one
//! token.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

mod blocking;
#[cfg(any(feature = "tokio", feature = "smol"))]
mod nonblocking;

pub use blocking::{BlockingRedisLayer, Subscription};
#[cfg(any(feature = "tokio", feature = "smol"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "tokio", feature = "smol"))))]
pub use nonblocking::AsyncRedisLayer;

use std::fmt;
use std::time::{Duration, SystemTime};

use tokenkeeper_core::{CacheError, CacheErrorKind, CacheKey, Layer, LeaseSettings, Timestamp};

/// Errors in the layer's configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisConfigError {
    /// The URL is not a valid Redis URL.
    #[error("invalid Redis URL: {0}")]
    InvalidUrl(String),
}

/// How to reach Redis and how long to wait for it.
#[derive(Clone)]
pub struct RedisSettings {
    client: redis::Client,
    display: String,
    prefix: String,
    op_timeout: Duration,
    connect_timeout: Duration,
    reconnect_delay: Duration,
    lease: LeaseSettings,
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("server", &self.display)
            .field("prefix", &self.prefix)
            .field("op_timeout", &self.op_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("lease", &self.lease)
            .finish()
    }
}

impl RedisSettings {
    /// Settings for the server at `url`: `redis://[user[:password]@]host[:port][/db]`,
    /// or `rediss://` for TLS (verified against the webpki roots). The
    /// password never appears in `Debug`, logs or errors.
    pub fn new(url: &str) -> Result<Self, RedisConfigError> {
        let client = redis::Client::open(url).map_err(|e| {
            // The redis error may quote the URL; describe it without.
            let _ = e;
            RedisConfigError::InvalidUrl(
                "expected redis://[user[:password]@]host[:port][/db] or rediss://…".into(),
            )
        })?;
        let display = client.get_connection_info().addr().to_string();
        Ok(RedisSettings {
            client,
            display,
            prefix: "tokenkeeper:".to_owned(),
            op_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(1),
            reconnect_delay: Duration::from_secs(1),
            lease: LeaseSettings {
                ttl: Duration::from_secs(30),
                retry: Duration::from_millis(500),
                hold_through_backoff: true,
            },
        })
    }

    /// The prefix of every key (default `tokenkeeper:`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Timeout of each operation (default 500 ms).
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// Timeout of each connection attempt (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// After a failed connection, operations fail at once for this long
    /// before the next attempt (default 1 s).
    pub fn reconnect_delay(mut self, delay: Duration) -> Self {
        self.reconnect_delay = delay;
        self
    }

    /// Lease settings (default: 30 s TTL, re-read every 0.25–0.5 s while
    /// another instance holds it, held through backoff).
    pub fn lease(mut self, lease: LeaseSettings) -> Self {
        self.lease = lease;
        self
    }

    /// The server address (host and port; never the password).
    pub fn server(&self) -> &str {
        &self.display
    }

    /// The layer to configure the refresher with: named `redis`, with a lease.
    pub fn core_layer(&self) -> Layer {
        Layer::new("redis").with_lease(self.lease)
    }
}

/// The Redis names for one cache key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// The hash holding the record.
    pub record: String,
    /// The lease.
    pub lease: String,
    /// The change notification channel.
    pub channel: String,
}

impl Keys {
    /// The names for `key` under `prefix`.
    pub fn new(prefix: &str, key: &CacheKey) -> Self {
        let base = format!("{prefix}{}", key.id());
        Keys {
            lease: format!("{base}:lease"),
            channel: format!("{base}:changed"),
            record: base,
        }
    }
}

/// Stores a record unless a later-expiring one is there; replaces garbage of
/// any type; sets the key's TTL; announces the change.
const WRITE_SCRIPT: &str = r"
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then redis.call('DEL', KEYS[1]) end
local cur = tonumber(redis.call('HGET', KEYS[1], 'expiry'))
if cur and cur > tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'record', ARGV[1], 'expiry', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', KEYS[2], ARGV[2])
return 1
";

/// Takes the lease if free, or renews it if already ours.
const ACQUIRE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
";

/// Deletes the lease only if we own it.
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

fn owner_id() -> String {
    format!("{}-{:016x}", std::process::id(), fastrand::u64(..))
}

fn cache_error(e: &redis::RedisError) -> CacheError {
    let kind = if e.is_timeout() {
        CacheErrorKind::Timeout
    } else if e.is_connection_refusal() || e.is_io_error() || e.is_connection_dropped() {
        CacheErrorKind::Unavailable
    } else {
        CacheErrorKind::Other
    };
    // Redis errors name the command and the server's reply, never the URL.
    CacheError::new(kind, format!("redis: {e}"))
}

/// Milliseconds from now until `expiry`, or `None` when already expired.
fn ttl_ms(expiry: Timestamp) -> Option<u64> {
    let now = Timestamp::from_system_time(SystemTime::now());
    let ms = expiry.duration_since(now).as_millis() as u64;
    (ms > 0).then_some(ms)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
