//! Token exchange (RFC 8693): where the subject token (and the actor token)
//! come from. The core builds the request
//! ([`tokenkeeper_core::oauth2::exchange`]); the tokens, which are secrets,
//! are added here right before each request is sent, in the same step that
//! adds assertions:
//!
//! - [`ExchangeToken::file`]: a file read again before every request (a
//!   platform's identity token that is replaced underneath, as a kubelet
//!   does). A missing or empty file is transient; see
//!   [`assertion`](crate::assertion) for how each failure is classed. A
//!   token declared a JWT (`jwt`, `id_token`) whose `exp` is past is not
//!   sent: [`Expired`](crate::assertion::AssertionProblem::Expired),
//!   permanent, as for an assertion file.
//! - [`ExchangeToken::from_fn`]: a callback asked before every request.
//! - [`ExchangeToken::watcher`]: another watcher's current token, a chain
//!   (a platform token exchanged for the API token).
//!
//! # Chains
//!
//! Each exchange request presents the upstream watcher's current token. When
//! the upstream has none (it is starting, or its token expired), the request
//! waits for one, up to [`UPSTREAM_WAIT`], and is otherwise a transient
//! failure. When the authority refuses the exchange with `invalid_grant`
//! (the subject token expired or was revoked underneath), the upstream is
//! asked to replace exactly that token
//! ([`refresh_if_current`](crate::TokenWatcher::refresh_if_current)), and
//! once it has, the exchange is sent once more with the new one: the chain
//! refreshes in order, upstream first, within the same fetch. (A DPoP-bound
//! downstream is not re-sent, as its proof cannot be used twice; its next
//! attempt uses the new token.) The downstream keeps its own schedule:
//! tokens obtained by exchange usually live no longer than the token they
//! came from, so it refreshes before the upstream's token would expire
//! anyway.
//!
//! ```
//! use tokenkeeper_core::oauth2::OAuth2Client;
//! use tokenkeeper_core::oauth2::exchange::{TokenExchange, JWT_TOKEN_TYPE};
//! use tokenkeeper_core::ClientId;
//! use tokenkeeper_driver::Source;
//! use tokenkeeper_driver::token_exchange::ExchangeToken;
//!
//! let client = OAuth2Client::token_exchange(
//!     "https://auth.example/token",
//!     ClientId::new("gateway"),
//!     TokenExchange::new(JWT_TOKEN_TYPE),
//! )?
//! .audience("https://api.example");
//! let source = Source::oauth2(client)
//!     .subject_token(ExchangeToken::file("/var/run/secrets/tokens/platform"));
//! assert_eq!(
//!     source.oauth2_client().unwrap().get_token_exchange().unwrap().get_subject_label(),
//!     Some("file:/var/run/secrets/tokens/platform"),
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokenkeeper_core::{CacheKey, Timestamp, TokenRecord};
use zeroize::Zeroizing;

use crate::assertion::{AssertionError, check_expiry, read_secret_file};
use crate::error::WatcherStopped;
use crate::runtime::{BoxFuture, Runtime};
use crate::watcher::TokenWatcher;

/// How long an exchange waits for its upstream watcher to hold a token.
pub const UPSTREAM_WAIT: Duration = Duration::from_secs(30);

type TokenFn = dyn Fn() -> Result<String, AssertionError> + Send + Sync;

/// Where a token exchange's subject token (or actor token) comes from: a
/// file, a callback, or another watcher. Cheap to clone; `Debug` shows its
/// kind and label, never a token.
#[derive(Clone)]
pub struct ExchangeToken(Kind);

#[derive(Clone)]
enum Kind {
    File(PathBuf),
    Callback {
        label: String,
        callback: Arc<TokenFn>,
    },
    Watcher(Arc<dyn Upstream>),
}

impl fmt::Debug for ExchangeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::File(path) => f.debug_tuple("ExchangeToken::File").field(path).finish(),
            Kind::Callback { label, .. } => f
                .debug_tuple("ExchangeToken::Callback")
                .field(label)
                .finish(),
            Kind::Watcher(upstream) => f
                .debug_tuple("ExchangeToken::Watcher")
                .field(&upstream.key().id())
                .finish(),
        }
    }
}

impl ExchangeToken {
    /// The token in the file at `path`, read whole (trimmed) before every
    /// request: a file replaced by an atomic rename is followed at once. A
    /// missing or empty file is transient (being replaced); a file that
    /// cannot be read for another reason is a misconfiguration.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        ExchangeToken(Kind::File(path.into()))
    }

    /// The token `callback` gives before every request. It runs where
    /// blocking is allowed; return [`AssertionError::unavailable`] for a
    /// failure worth retrying soon. `label` names the token's source (an
    /// account, a path) for cache keys: two callbacks for different
    /// subjects need different labels.
    pub fn from_fn(
        label: impl Into<String>,
        callback: impl Fn() -> Result<String, AssertionError> + Send + Sync + 'static,
    ) -> Self {
        ExchangeToken(Kind::Callback {
            label: label.into(),
            callback: Arc::new(callback),
        })
    }

    /// The current token of another watcher (on any runtime): see the
    /// [module documentation](self) for how the chain refreshes. The
    /// downstream keeps a handle, so the upstream runs as long as it does.
    pub fn watcher<R: Runtime>(upstream: &TokenWatcher<R>) -> Self {
        ExchangeToken(Kind::Watcher(Arc::new(upstream.clone())))
    }

    /// What names this source in cache keys: `file:<path>`, the callback's
    /// label, or `watcher:<the upstream's cache key id>`. Never a token.
    pub fn label(&self) -> String {
        match &self.0 {
            Kind::File(path) => format!("file:{}", path.display()),
            Kind::Callback { label, .. } => label.clone(),
            Kind::Watcher(upstream) => format!("watcher:{}", upstream.key().id()),
        }
    }

    /// Whether the token is another watcher's.
    pub fn is_watcher(&self) -> bool {
        matches!(self.0, Kind::Watcher(_))
    }
}

/// A watcher whose tokens another one exchanges, whatever its runtime.
trait Upstream: Send + Sync + 'static {
    fn key(&self) -> &CacheKey;
    /// Its usable token, waiting for one if it has none.
    fn usable(&self) -> BoxFuture<'_, Result<Arc<TokenRecord>, WatcherStopped>>;
    /// Asks it to replace `refused` (if still current) and waits until it
    /// holds another token.
    fn replace<'a>(
        &'a self,
        refused: &'a TokenRecord,
    ) -> BoxFuture<'a, Result<Arc<TokenRecord>, WatcherStopped>>;
}

impl<R: Runtime> Upstream for TokenWatcher<R> {
    fn key(&self) -> &CacheKey {
        self.cache_key()
    }

    fn usable(&self) -> BoxFuture<'_, Result<Arc<TokenRecord>, WatcherStopped>> {
        Box::pin(self.usable_token_async())
    }

    fn replace<'a>(
        &'a self,
        refused: &'a TokenRecord,
    ) -> BoxFuture<'a, Result<Arc<TokenRecord>, WatcherStopped>> {
        Box::pin(async move {
            self.refresh_if_current_async(refused).await?;
            self.changed_from_async(refused).await
        })
    }
}

/// The exchange tokens of one key's requests, as the driver holds them.
#[derive(Clone, Debug, Default)]
pub(crate) struct ExchangeTokens {
    pub(crate) subject: Option<ExchangeToken>,
    pub(crate) actor: Option<ExchangeToken>,
    /// Whether the subject (actor) token is declared a JWT (`jwt`,
    /// `id_token`): one read from a file or a callback is then refused
    /// when its `exp` is past, as an assertion made elsewhere is.
    pub(crate) subject_jwt: bool,
    pub(crate) actor_jwt: bool,
}

/// A token an exchange request needs, from the source configured.
#[derive(Clone)]
pub(crate) struct Needed {
    source: ExchangeToken,
    what: &'static str,
    jwt: bool,
}

impl Needed {
    pub(crate) fn new(source: ExchangeToken, what: &'static str, jwt: bool) -> Self {
        Needed { source, what, jwt }
    }

    pub(crate) fn is_watcher(&self) -> bool {
        self.source.is_watcher()
    }
}

/// The upstream tokens a request presented: what a refusal asks to replace.
pub(crate) type Presented = Arc<Mutex<Vec<Arc<TokenRecord>>>>;

/// Takes the upstream tokens (awaited: this is async) of `needed`; the
/// other kinds are made by [`make_blocking`]. Remembers what was taken in
/// `presented`.
pub(crate) async fn take_upstream<R: Runtime>(
    runtime: &R,
    needed: &[&Needed],
    presented: &Presented,
) -> Result<Vec<Option<Arc<TokenRecord>>>, AssertionError> {
    let mut out = Vec::with_capacity(needed.len());
    for need in needed {
        let Kind::Watcher(upstream) = &need.source.0 else {
            out.push(None);
            continue;
        };
        let token = crate::runtime::timeout(runtime, UPSTREAM_WAIT, upstream.usable())
            .await
            .ok_or_else(|| {
                AssertionError::unavailable(format!(
                    "the {} comes from watcher {}, which has had no token for {} s",
                    need.what,
                    upstream.key().id(),
                    UPSTREAM_WAIT.as_secs()
                ))
            })?
            .map_err(|_| {
                AssertionError::misconfigured(format!(
                    "the {} comes from watcher {}, which has stopped",
                    need.what,
                    upstream.key().id()
                ))
            })?;
        presented
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::clone(&token));
        out.push(Some(token));
    }
    Ok(out)
}

/// Makes a file's or a callback's token (blocking work: run it off async
/// tasks); `upstream` is the watcher's token taken before, for that kind.
/// A token declared a JWT whose `exp` is before `now` is refused
/// ([`AssertionProblem::Expired`](crate::assertion::AssertionProblem::Expired),
/// permanent): whatever issues it is not renewing it.
pub(crate) fn make_blocking(
    need: &Needed,
    upstream: Option<Arc<TokenRecord>>,
    now: Timestamp,
) -> Result<Zeroizing<String>, AssertionError> {
    let made = match (&need.source.0, upstream) {
        (Kind::File(path), _) => {
            let text = read_secret_file(path, need.what)?;
            (text, format!("the {} in {}", need.what, path.display()))
        }
        (Kind::Callback { label, callback }, _) => {
            let text = Zeroizing::new(callback()?.trim().to_owned());
            if text.is_empty() {
                return Err(AssertionError::unavailable(format!(
                    "the {} callback {label:?} gave an empty token",
                    need.what
                )));
            }
            (text, format!("the {} from callback {label:?}", need.what))
        }
        (Kind::Watcher(_), Some(token)) => {
            return Ok(Zeroizing::new(
                token.access_token.expose_secret().to_owned(),
            ));
        }
        (Kind::Watcher(upstream), None) => {
            return Err(AssertionError::unavailable(format!(
                "no token was taken from watcher {}",
                upstream.key().id()
            )));
        }
    };
    let (text, what) = made;
    // Only a token that reads as a JWT is checked: the authority judges the rest.
    if need.jwt
        && let Ok(claims) = crate::jws::unverified_claims(&text)
    {
        check_expiry(&claims, now, &what)?;
    }
    Ok(text)
}

/// After the authority refused an exchange that presented `presented`
/// upstream tokens with `invalid_grant`: asks each upstream to replace the
/// token it gave and waits (up to [`UPSTREAM_WAIT`]) until it has. `true`
/// when every one did, so that sending again can help.
pub(crate) async fn replace_refused<R: Runtime>(
    runtime: &R,
    needed: &[&Needed],
    presented: &Presented,
) -> bool {
    let tokens: Vec<Arc<TokenRecord>> =
        std::mem::take(&mut *presented.lock().unwrap_or_else(PoisonError::into_inner));
    let upstreams = needed.iter().filter_map(|need| match &need.source.0 {
        Kind::Watcher(upstream) => Some(upstream),
        _ => None,
    });
    let mut replaced_any = false;
    for (upstream, refused) in upstreams.zip(tokens.iter()) {
        match crate::runtime::timeout(runtime, UPSTREAM_WAIT, upstream.replace(refused)).await {
            Some(Ok(_)) => replaced_any = true,
            _ => return false,
        }
    }
    replaced_any
}

/// Whether an answer is the refusal of the grant (RFC 6749 §5.2
/// `invalid_grant`): for an exchange, the subject or actor token was not
/// accepted.
pub(crate) fn is_invalid_grant(status: u16, body: &[u8]) -> bool {
    status == 400
        && serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| {
                v.get("error")
                    .and_then(|e| e.as_str())
                    .map(|e| e == "invalid_grant")
            })
            .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_debug_name_the_source_never_a_token() {
        let file = ExchangeToken::file("/run/token");
        assert_eq!(file.label(), "file:/run/token");
        let callback = ExchangeToken::from_fn("platform:ci", || Ok("tok-secret-value".into()));
        assert_eq!(callback.label(), "platform:ci");
        let shown = format!("{callback:?}");
        assert!(
            shown.contains("platform:ci") && !shown.contains("tok-secret"),
            "{shown}"
        );
        let need = Needed::new(callback, "subject token", true);
        let now = Timestamp::from_secs(1_700_000_000);
        assert_eq!(
            &*make_blocking(&need, None, now).unwrap(),
            "tok-secret-value",
            "not a JWT: passed on as it is"
        );
        let empty = Needed::new(
            ExchangeToken::from_fn("x", || Ok("  ".into())),
            "subject token",
            false,
        );
        assert_eq!(
            make_blocking(&empty, None, now).unwrap_err().problem(),
            crate::assertion::AssertionProblem::Unavailable
        );
    }

    #[test]
    fn a_jwt_subject_token_past_its_exp_is_refused_as_expired() {
        use base64::Engine as _;
        let jwt = |exp: u64| {
            let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
            format!(
                "{}.{}.c2ln",
                b64(r#"{"alg":"RS256"}"#),
                b64(&format!(r#"{{"sub":"workload","exp":{exp}}}"#))
            )
        };
        let now = Timestamp::from_secs(1_700_000_000);
        let (old, fresh) = (jwt(1_699_990_000), jwt(1_700_000_600));
        let source = |token: String| ExchangeToken::from_fn("platform", move || Ok(token.clone()));
        let expired = make_blocking(
            &Needed::new(source(old.clone()), "subject token", true),
            None,
            now,
        )
        .unwrap_err();
        assert_eq!(
            expired.problem(),
            crate::assertion::AssertionProblem::Expired
        );
        assert!(expired.message().contains("subject token"), "{expired}");
        assert!(!expired.message().contains(&old), "{expired}");
        assert!(
            make_blocking(
                &Needed::new(source(fresh), "subject token", true),
                None,
                now
            )
            .is_ok()
        );
        // Declared an access token: not read, the authority judges it.
        assert!(
            make_blocking(&Needed::new(source(old), "subject token", false), None, now).is_ok()
        );
    }

    #[test]
    fn only_invalid_grant_refusals_count() {
        assert!(is_invalid_grant(400, br#"{"error":"invalid_grant"}"#));
        assert!(!is_invalid_grant(400, br#"{"error":"invalid_client"}"#));
        assert!(!is_invalid_grant(500, br#"{"error":"invalid_grant"}"#));
        assert!(!is_invalid_grant(400, b"<html>"));
    }
}
