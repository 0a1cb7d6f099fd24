//! What a [`Refresher`](super::Refresher) is built from.

use std::time::Duration;

use crate::backoff::BackoffPolicy;
use crate::cache::CacheKey;
use crate::jitter::Jitter;
use crate::oauth2::OAuth2Client;
use crate::policy::LifetimePolicy;
use crate::secret::RefreshToken;

/// Where tokens come from.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Source {
    /// An OAuth2 token endpoint: the refresher builds the requests
    /// ([`Effect::SendRequest`](super::Effect::SendRequest)) and reads the answers.
    /// Boxed: a pool holds a refresher per key, and custom sources need none.
    OAuth2(Box<OAuth2Client>),
    /// Anything else: the refresher asks the driver for a grant
    /// ([`Effect::Fetch`](super::Effect::Fetch)).
    Custom,
}

/// Settings of a layer's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseSettings {
    /// How long a lease lives if its holder never releases it (default 30 s).
    /// Keep it longer than a fetch may take.
    pub ttl: Duration,
    /// How long to wait before re-reading the layer when another holds the
    /// lease (default 1 s; each wait is drawn from `[retry / 2, retry]`).
    pub retry: Duration,
    /// After a failed fetch, keep the lease until it expires (a retry that
    /// comes first reuses it) instead of releasing it at once (default
    /// `true`). Then a fleet facing a failing authority backs off as one: the
    /// others keep waiting and re-reading rather than each taking its turn at
    /// the authority.
    pub hold_through_backoff: bool,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        LeaseSettings {
            ttl: Duration::from_secs(30),
            retry: Duration::from_secs(1),
            hold_through_backoff: true,
        }
    }
}

/// A cache layer as the refresher sees it: a name for logs, and whether it
/// offers a lease. The driver owns the store itself and answers for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    name: String,
    lease: Option<LeaseSettings>,
}

impl Layer {
    /// A layer without a lease.
    pub fn new(name: impl Into<String>) -> Self {
        Layer {
            name: name.into(),
            lease: None,
        }
    }

    /// Offers a lease on this layer, so that only one of the refreshers
    /// sharing it fetches at a time.
    pub fn with_lease(mut self, settings: LeaseSettings) -> Self {
        self.lease = Some(settings);
        self
    }

    /// The layer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The lease settings, when the layer has a lease.
    pub fn lease(&self) -> Option<LeaseSettings> {
        self.lease
    }
}

/// The configuration of a [`Refresher`](super::Refresher).
#[derive(Debug, Clone)]
pub struct RefresherConfig {
    pub(crate) source: Source,
    pub(crate) key: CacheKey,
    pub(crate) layers: Vec<Layer>,
    pub(crate) initial_refresh_token: Option<RefreshToken>,
    /// Shared, not copied, between the keys of a pool
    /// ([`RefresherConfig::tuned_like`]).
    pub(crate) tuning: std::sync::Arc<Tuning>,
}

/// The settings of a refresher that do not depend on its source.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Tuning {
    pub(crate) policy: LifetimePolicy,
    pub(crate) jitter: Jitter,
    pub(crate) backoff: BackoffPolicy,
    pub(crate) refresh_now_min_interval: Duration,
    pub(crate) cache_timeout: Duration,
    pub(crate) fetch_timeout: Duration,
    pub(crate) shutdown_grace: Duration,
}

impl Tuning {
    /// The default tuning, one copy for every configuration made (a driver
    /// makes one per key, and most keep the defaults).
    fn default_shared() -> std::sync::Arc<Tuning> {
        static DEFAULT: std::sync::OnceLock<std::sync::Arc<Tuning>> = std::sync::OnceLock::new();
        std::sync::Arc::clone(DEFAULT.get_or_init(|| {
            std::sync::Arc::new(Tuning {
                policy: LifetimePolicy::default(),
                jitter: Jitter::default(),
                backoff: BackoffPolicy::default(),
                refresh_now_min_interval: Duration::from_secs(10),
                cache_timeout: Duration::from_secs(10),
                fetch_timeout: Duration::from_secs(60),
                shutdown_grace: Duration::from_secs(5),
            })
        }))
    }
}

/// The shortest effect timeout: a deadline always lies after the instant the
/// effect was asked for.
const MIN_TIMEOUT: Duration = Duration::from_millis(1);

impl RefresherConfig {
    /// Tokens from an OAuth2 endpoint, cached under the client's key.
    pub fn oauth2(client: OAuth2Client) -> Self {
        let key = CacheKey::for_client(&client);
        Self::with_source(Source::OAuth2(Box::new(client)), key)
    }

    /// Tokens from a custom source, cached under `key`.
    pub fn custom(key: CacheKey) -> Self {
        Self::with_source(Source::Custom, key)
    }

    /// For an OAuth2 source: the HTTP client presents the certificate with
    /// this thumbprint ([`OAuth2Client::bound_to_certificate`]); the cache
    /// key is derived again to include it. Drivers call this when a client
    /// certificate is configured. No effect on a custom source.
    pub fn bound_to_certificate(mut self, thumbprint: impl Into<String>) -> Self {
        if let Source::OAuth2(client) = &mut self.source {
            let bound = client.clone().bound_to_certificate(thumbprint);
            self.key = CacheKey::for_client(&bound);
            **client = bound;
        }
        self
    }

    /// For an OAuth2 source: tokens are DPoP-bound to the key with this
    /// JWK thumbprint ([`OAuth2Client::bound_to_dpop_key`]); the cache key is
    /// derived again to include it. No effect on a custom source.
    pub fn bound_to_dpop_key(mut self, jkt: impl Into<String>) -> Self {
        if let Source::OAuth2(client) = &mut self.source {
            let bound = client.clone().bound_to_dpop_key(jkt);
            self.key = CacheKey::for_client(&bound);
            **client = bound;
        }
        self
    }

    /// For an OAuth2 source: what its token exchange presents and asks for
    /// ([`OAuth2Client::with_token_exchange`]), as completed by a driver
    /// that labels the subject token's source; the cache key is derived
    /// again. No effect on a custom source.
    pub fn with_token_exchange(mut self, exchange: crate::oauth2::exchange::TokenExchange) -> Self {
        if let Source::OAuth2(client) = &mut self.source {
            let completed = client.clone().with_token_exchange(exchange);
            self.key = CacheKey::for_client(&completed);
            **client = completed;
        }
        self
    }

    /// The OAuth2 client, for an OAuth2 source.
    pub fn oauth2_client(&self) -> Option<&OAuth2Client> {
        match &self.source {
            Source::OAuth2(client) => Some(client),
            Source::Custom => None,
        }
    }

    fn with_source(source: Source, key: CacheKey) -> Self {
        RefresherConfig {
            source,
            key,
            layers: Vec::new(),
            initial_refresh_token: None,
            tuning: Tuning::default_shared(),
        }
    }

    /// Sets the lifetime policy.
    pub fn lifetime_policy(self, policy: LifetimePolicy) -> Self {
        self.tune(|t| t.policy = policy)
    }

    /// Sets the refresh jitter.
    pub fn jitter(self, jitter: Jitter) -> Self {
        self.tune(|t| t.jitter = jitter)
    }

    /// Sets the error backoff.
    pub fn backoff(self, backoff: BackoffPolicy) -> Self {
        self.tune(|t| t.backoff = backoff)
    }

    /// Appends a cache layer; layers are read in the order they are added.
    pub fn layer(mut self, layer: Layer) -> Self {
        self.layers.push(layer);
        self
    }

    /// The shortest time between two refreshes asked for with
    /// [`Refresher::refresh_now`](super::Refresher::refresh_now) (default 10 s).
    pub fn refresh_now_min_interval(self, interval: Duration) -> Self {
        self.tune(|t| t.refresh_now_min_interval = interval)
    }

    /// The refresh token to start from (refresh-token grant). A newer one found
    /// in a cache wins.
    pub fn initial_refresh_token(mut self, token: RefreshToken) -> Self {
        self.initial_refresh_token = Some(token);
        self
    }

    /// How long a cache effect ([`Effect::ReadCache`](super::Effect::ReadCache),
    /// [`Effect::WriteCache`](super::Effect::WriteCache),
    /// [`Effect::AcquireLease`](super::Effect::AcquireLease)) may go
    /// unanswered before the refresher takes it as failed (default 10 s, at
    /// least 1 ms): an unanswered read is a miss, an unanswered write a
    /// [`CacheProblem::Write`](super::CacheProblem::Write), an unanswered
    /// lease [`LeaseOutcome::Failed`](super::LeaseOutcome::Failed). Read it
    /// back with [`RefresherConfig::get_cache_timeout`].
    pub fn cache_timeout(self, timeout: Duration) -> Self {
        self.tune(|t| t.cache_timeout = timeout.max(MIN_TIMEOUT))
    }

    /// How long a fetch ([`Effect::SendRequest`](super::Effect::SendRequest),
    /// [`Effect::Fetch`](super::Effect::Fetch)) may go unanswered before the
    /// refresher takes it as failed with [`FetchError::Timeout`] and backs off
    /// (default 60 s, at least 1 ms). Drivers should time their requests out
    /// sooner, and say why. Read it back with
    /// [`RefresherConfig::get_fetch_timeout`].
    ///
    /// [`FetchError::Timeout`]: crate::FetchError::Timeout
    pub fn fetch_timeout(self, timeout: Duration) -> Self {
        self.tune(|t| t.fetch_timeout = timeout.max(MIN_TIMEOUT))
    }

    /// [`fetch_timeout`](Self::fetch_timeout), then
    /// [`share_tuning_with`](Self::share_tuning_with) `template`, with no
    /// copy of the tuning made in between: what a driver does for each key
    /// it builds.
    pub fn fetch_timeout_shared_with(self, timeout: Duration, template: &RefresherConfig) -> Self {
        self.tune_like(Some(template), |t| {
            t.fetch_timeout = timeout.max(MIN_TIMEOUT)
        })
    }

    /// How long [`Refresher::shutdown`](super::Refresher::shutdown) waits for
    /// an outstanding fetch that spends a refresh token, and for the writes of
    /// the rotated token it brings, before stopping anyway (default 5 s; zero
    /// stops at once). Read it back with
    /// [`RefresherConfig::get_shutdown_grace`].
    pub fn shutdown_grace(self, grace: Duration) -> Self {
        self.tune(|t| t.shutdown_grace = grace)
    }

    /// The cache effect timeout (set with [`RefresherConfig::cache_timeout`]).
    pub fn get_cache_timeout(&self) -> Duration {
        self.tuning.cache_timeout
    }

    /// The fetch timeout (set with [`RefresherConfig::fetch_timeout`]).
    pub fn get_fetch_timeout(&self) -> Duration {
        self.tuning.fetch_timeout
    }

    /// The shutdown grace (set with [`RefresherConfig::shutdown_grace`]).
    pub fn get_shutdown_grace(&self) -> Duration {
        self.tuning.shutdown_grace
    }

    /// Takes the lifetime policy, jitter, backoff, rate limit and timeouts
    /// of `template`, shared rather than copied: the keys of a pool have
    /// the same, and a pool holds many.
    pub fn tuned_like(mut self, template: &RefresherConfig) -> Self {
        self.tuning = std::sync::Arc::clone(&template.tuning);
        self
    }

    /// Takes `template`'s tuning if it is the same as this one's, shared
    /// rather than copied: watchers built alike then hold one copy between
    /// them instead of one each. A different tuning is kept as it is.
    pub fn share_tuning_with(mut self, template: &RefresherConfig) -> Self {
        if *self.tuning == *template.tuning {
            self.tuning = std::sync::Arc::clone(&template.tuning);
        }
        self
    }

    /// Changes the tuning; a change that changes nothing keeps it shared.
    fn tune(self, change: impl FnOnce(&mut Tuning)) -> Self {
        self.tune_like(None, change)
    }

    /// Changes the tuning, then shares `template`'s if they are the same.
    /// Worked out on a copy on the stack: a new tuning is allocated only
    /// when it is one (or changed in place when not shared).
    fn tune_like(
        mut self,
        template: Option<&RefresherConfig>,
        change: impl FnOnce(&mut Tuning),
    ) -> Self {
        let mut tuning = (*self.tuning).clone();
        change(&mut tuning);
        match template {
            Some(template) if tuning == *template.tuning => {
                self.tuning = std::sync::Arc::clone(&template.tuning);
            }
            _ if tuning == *self.tuning => {}
            _ => match std::sync::Arc::get_mut(&mut self.tuning) {
                Some(own) => *own = tuning,
                None => self.tuning = std::sync::Arc::new(tuning),
            },
        }
        self
    }

    /// The key under which records are cached.
    pub fn cache_key(&self) -> &CacheKey {
        &self.key
    }

    /// The layers, in read order.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// The source.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The lifetime policy.
    pub fn policy(&self) -> &LifetimePolicy {
        &self.tuning.policy
    }

    /// The backoff policy.
    pub fn backoff_policy(&self) -> &BackoffPolicy {
        &self.tuning.backoff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alike_tunings_are_shared_and_others_kept() {
        let template = RefresherConfig::custom(CacheKey::custom("template", &[]))
            .fetch_timeout(Duration::from_secs(35));
        let alike = RefresherConfig::custom(CacheKey::custom("a", &[]))
            .fetch_timeout(Duration::from_secs(35))
            .share_tuning_with(&template);
        assert!(std::sync::Arc::ptr_eq(&alike.tuning, &template.tuning));
        assert_eq!(alike.cache_key(), &CacheKey::custom("a", &[]));
        let other = RefresherConfig::custom(CacheKey::custom("b", &[]))
            .fetch_timeout(Duration::from_secs(36))
            .share_tuning_with(&template);
        assert!(!std::sync::Arc::ptr_eq(&other.tuning, &template.tuning));
        assert_eq!(other.get_fetch_timeout(), Duration::from_secs(36));
    }

    #[test]
    fn a_fetch_timeout_shared_with_a_template_takes_its_tuning_or_keeps_its_own() {
        // Fresh configurations share the default tuning until changed.
        let fresh = RefresherConfig::custom(CacheKey::custom("a", &[]));
        let also_fresh = RefresherConfig::custom(CacheKey::custom("b", &[]));
        assert!(std::sync::Arc::ptr_eq(&fresh.tuning, &also_fresh.tuning));
        let template = RefresherConfig::custom(CacheKey::custom("template", &[]))
            .fetch_timeout(Duration::from_secs(35));
        assert!(!std::sync::Arc::ptr_eq(&template.tuning, &fresh.tuning));
        let alike = fresh.fetch_timeout_shared_with(Duration::from_secs(35), &template);
        assert!(std::sync::Arc::ptr_eq(&alike.tuning, &template.tuning));
        let other = also_fresh
            .jitter(Jitter::none())
            .fetch_timeout_shared_with(Duration::from_secs(35), &template);
        assert!(!std::sync::Arc::ptr_eq(&other.tuning, &template.tuning));
        assert_eq!(other.get_fetch_timeout(), Duration::from_secs(35));
        assert_eq!(other.tuning.jitter, Jitter::none());
        // The default itself is never changed by a change to a copy.
        let untouched = RefresherConfig::custom(CacheKey::custom("c", &[]));
        assert_eq!(untouched.get_fetch_timeout(), Duration::from_secs(60));
    }
}
