//! What the driver reports: every event of the refresher becomes a change of
//! the shared state (a token published or withdrawn), a log line with safe
//! fields only, and a call of the user's event hook.

use std::sync::Arc;

use tokenkeeper_core::{ErrorClass, Event, Origin, Status};
use tracing::{debug, error, info, warn};

use crate::shared::Shared;

/// A user's hook, called with every event of the refresher.
pub(crate) type EventHook = Arc<dyn Fn(&Event) + Send + Sync>;

/// Publishes what the refresher reports to the handles. Dropping it (when the
/// driver ends, even by a panic, or when its runtime drops it) marks the
/// watcher stopped.
pub(crate) struct Publisher {
    shared: Arc<Shared>,
    hook: Option<EventHook>,
    /// Whether [`status`](Self::status) has a use, fixed when made.
    wants_status: bool,
    #[cfg(feature = "metrics")]
    metrics: crate::metrics::WatcherMetrics,
}

impl Publisher {
    pub(crate) fn new(shared: Arc<Shared>, hook: Option<EventHook>) -> Self {
        Publisher {
            #[cfg(feature = "metrics")]
            metrics: crate::metrics::WatcherMetrics::new(shared.name()),
            wants_status: cfg!(feature = "metrics") || shared.keeps_status(),
            shared,
            hook,
        }
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    fn layer_name(&self, layer: usize) -> &str {
        self.shared.layer_name(layer)
    }

    /// Whether [`status`](Self::status) has a use: a watcher's key keeps a
    /// status snapshot, a pool's does not (but its metrics, when on, count
    /// from every status).
    pub(crate) fn wants_status(&self) -> bool {
        self.wants_status
    }

    pub(crate) fn status(&mut self, status: Status) {
        #[cfg(feature = "metrics")]
        self.metrics.status(&self.shared, &status);
        self.shared.set_status(status);
    }

    pub(crate) fn event(&mut self, event: Event) {
        #[cfg(feature = "metrics")]
        self.metrics.event(&event);
        if let Some(hook) = &self.hook {
            // A hook that panics must not take the driver down.
            let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(&event)));
            if called.is_err() {
                error!("the event hook panicked");
            }
        }
        match event {
            Event::TokenChanged { token, origin } => {
                let from = match origin {
                    Origin::Cache { layer } => self.layer_name(layer),
                    _ => "authority",
                };
                info!(
                    token = %token.access_token.fingerprint(),
                    refresh_token = ?token.refresh_token.as_ref().map(|t| t.fingerprint()),
                    from,
                    issued = %token.issued,
                    stale = %token.stale,
                    expiry = %token.expiry,
                    "new token"
                );
                self.shared.publish(token);
            }
            Event::TokenExpired { expiry } => {
                warn!(%expiry, "the token expired before it could be replaced");
                self.shared.withdraw(expiry);
            }
            Event::FetchFailed {
                error,
                class,
                consecutive_failures,
                retry_at,
            } => {
                if class == ErrorClass::Permanent {
                    error!(%error, consecutive_failures, %retry_at, "the token source refused");
                    if self.shared.current().is_none() {
                        // Ends the wait for a first token.
                        self.shared.refuse(error);
                    }
                } else {
                    warn!(%error, consecutive_failures, %retry_at, "fetching a token failed");
                }
            }
            Event::CacheProblem { layer, problem } => {
                warn!(
                    layer,
                    name = self.layer_name(layer),
                    ?problem,
                    "cache layer problem"
                );
            }
            Event::LeaseBusy { layer, retry_at } => {
                debug!(layer, name = self.layer_name(layer), %retry_at, "lease held elsewhere; will re-read");
            }
            Event::Stopped => info!("stopped"),
            other => debug!(event = ?other, "refresher event"),
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        if std::thread::panicking() {
            error!("the token watcher's driver panicked; the watcher has stopped");
        }
        self.shared.close();
    }
}
