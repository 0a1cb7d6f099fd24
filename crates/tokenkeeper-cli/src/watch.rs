//! `tokenkeeper watch`: keep a file holding a usable token until SIGINT or
//! SIGTERM.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::json;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tokenkeeper_blocking::{ChangedError, Token, TokenError, TokenWatcher};
use tokenkeeper_core::oauth2::GrantType;
use tokenkeeper_core::{CacheKey, Event, RefreshToken, TokenRecord};
use tokenkeeper_fs::FileCache;
use tokenkeeper_redis::BlockingRedisLayer;
use zeroize::Zeroizing;

use crate::args::{SinkFormat, WatchArgs};
use crate::error::{CliError, describe};
use crate::settings::{self, CacheChoice, NeedSecret};
use crate::time::{human, now};

pub(crate) fn run(args: &WatchArgs) -> Result<(), CliError> {
    let resolved = settings::resolve(&args.source, NeedSecret::Yes)?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut signals = Signals::new([SIGINT, SIGTERM])
        .map_err(|e| CliError::other(format!("cannot listen for signals: {e}")))?;
    let signal_handle = signals.handle();

    // The last token the watcher published, even during its shutdown (a
    // refresh-token request allowed to finish may rotate the refresh token).
    let latest: Arc<Mutex<Option<Arc<TokenRecord>>>> = Arc::default();
    let seen = Arc::clone(&latest);
    let mut builder = TokenWatcher::builder(resolved.source.clone())
        .http(resolved.http.clone())
        .on_event(move |event| {
            if let Event::TokenChanged { token, .. } = event {
                *seen.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(token));
            }
            if let Event::FetchFailed {
                error,
                consecutive_failures,
                retry_at,
                ..
            } = event
            {
                eprintln!(
                    "tokenkeeper: warning: refresh failed ({}), {} in a row; next try in {}",
                    describe(error),
                    consecutive_failures,
                    human(retry_at.duration_since(now()))
                );
            }
        });
    match &resolved.cache {
        CacheChoice::File(path) => builder = builder.file_cache(path),
        CacheChoice::None if resolved.no_cache_dir => eprintln!(
            "tokenkeeper: warning: no cache folder (neither XDG_CACHE_HOME nor HOME is set): not caching"
        ),
        CacheChoice::None => {}
    }
    if let Some(redis) = &resolved.redis {
        tracing::debug!(server = %redis.server(), "sharing tokens through redis");
        let key = CacheKey::for_client(&resolved.client);
        builder = builder.blocking_cache(BlockingRedisLayer::new(redis.clone(), &key));
    }
    let rt_file = resolved
        .refresh_token_file
        .clone()
        .filter(|_| resolved.client.grant() == GrantType::RefreshToken);
    let mut saved_rt: Option<RefreshToken> = None;
    if let Some(path) = &rt_file {
        let token = settings::read_refresh_token(path)?;
        builder = builder.initial_refresh_token(token.clone());
        saved_rt = Some(token);
    }
    let watcher = builder
        .start()
        .map_err(|e| CliError::other(format!("cannot start: {e}")))?;

    // Signals end the wait below: the flag is set, then the watcher stops,
    // which wakes `changed`.
    let stopper = watcher.clone();
    let flag = Arc::clone(&stop);
    let signal_thread = std::thread::Builder::new()
        .name("tokenkeeper-signals".to_owned())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                tracing::debug!(signal, "signal received; stopping");
                flag.store(true, Ordering::SeqCst);
                stopper.shutdown();
            }
        })
        .map_err(|e| CliError::other(format!("cannot start the signal thread: {e}")))?;

    let mut out = Publisher {
        sink: FileCache::new(&args.sink),
        sink_path: &args.sink,
        format: args.sink_format,
        rt_file: rt_file.as_deref(),
        saved_rt,
        written: None,
    };
    let mut first = true;
    let result = loop {
        if stop.load(Ordering::SeqCst) {
            break Ok(());
        }
        let current = if first {
            first = false;
            watcher
                .token()
                .map(Token::into_arc)
                .map_err(|_| ChangedError::TimedOut)
        } else {
            watcher.changed_within(Duration::from_millis(500))
        };
        match current {
            Ok(token) => out.publish(&token),
            Err(ChangedError::TimedOut) => match watcher.token() {
                Ok(_) => {}
                // Expired unreplaced (withdrawn by the watcher).
                Err(TokenError::Unavailable { .. }) if out.written.is_some() => out.expired(),
                Err(_) if out.written.is_none() => {
                    let status = watcher.status();
                    if let Some(error) = status.last_error.filter(|e| e.is_permanent()) {
                        break Err(CliError::from_fetch(&error));
                    }
                }
                Err(_) => {}
            },
            Err(_) => break Ok(()),
        }
    };
    watcher.shutdown();
    // A fetch that finished during the shutdown may have rotated the refresh
    // token: keep what the watcher ended with.
    let last = latest.lock().unwrap_or_else(PoisonError::into_inner).take();
    if result.is_ok()
        && let Some(token) = last
        && token.is_usable_at(now())
    {
        out.publish(&token);
    }
    signal_handle.close();
    let _ = signal_thread.join();
    result
}

/// Writes tokens to the sink (and rotated refresh tokens to their file).
struct Publisher<'a> {
    sink: FileCache,
    sink_path: &'a Path,
    format: SinkFormat,
    rt_file: Option<&'a Path>,
    saved_rt: Option<RefreshToken>,
    written: Option<Arc<TokenRecord>>,
}

impl Publisher<'_> {
    fn publish(&mut self, token: &Arc<TokenRecord>) {
        if let (Some(path), Some(rt)) = (self.rt_file, &token.refresh_token)
            && self.saved_rt.as_ref() != Some(rt)
        {
            match settings::write_refresh_token(path, rt) {
                Ok(()) => self.saved_rt = Some(rt.clone()),
                Err(e) => eprintln!("tokenkeeper: error: {e}"),
            }
        }
        if self
            .written
            .as_ref()
            .is_some_and(|w| w.access_token == token.access_token)
        {
            return;
        }
        if let Err(e) = self.sink.store(&render(token, self.format)) {
            eprintln!("tokenkeeper: error: cannot write the sink: {e}");
            return;
        }
        eprintln!(
            "tokenkeeper: wrote token {} to {} (expires in {})",
            token.access_token.fingerprint(),
            self.sink_path.display(),
            human(token.expiry.duration_since(now()))
        );
        self.written = Some(Arc::clone(token));
    }

    fn expired(&mut self) {
        if self.written.take().is_some() {
            // The last token expired unreplaced: to a reader, an expired
            // token is worse than none.
            eprintln!(
                "tokenkeeper: warning: the token expired and no new one could be had; removed {}",
                self.sink_path.display()
            );
            if let Err(e) = self.sink.remove() {
                eprintln!("tokenkeeper: error: cannot remove the sink: {e}");
            }
        }
    }
}

/// The sink's contents.
fn render(token: &TokenRecord, format: SinkFormat) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(match format {
        SinkFormat::Plain => format!("{}\n", token.access_token.expose_secret()).into_bytes(),
        SinkFormat::Json => {
            let doc = json!({
                "access_token": token.access_token.expose_secret(),
                "token_type": token.token_type,
                "expires_at": token.expiry.to_rfc3339(),
                "issued_at": token.issued.to_rfc3339(),
                "stale_at": token.stale.to_rfc3339(),
                "scope": token.scope,
            });
            format!("{doc}\n").into_bytes()
        }
    })
}
