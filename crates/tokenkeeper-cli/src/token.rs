//! `tokenkeeper token`: print a usable access token.

use std::io::Write;
use std::time::Duration;

use serde_json::json;
use tokenkeeper_blocking::{OneShot, TokenWatcher, Warning};
use tokenkeeper_core::oauth2::GrantType;
use tokenkeeper_core::{CacheKey, Origin, TokenRecord};
use tokenkeeper_fs::FileCache;
use tokenkeeper_redis::BlockingRedisLayer;
use zeroize::Zeroizing;

use crate::args::{TokenArgs, TokenOutput};
use crate::error::{CliError, Exit, describe};
use crate::settings::{self, CacheChoice, NeedSecret};
use crate::time::{now, secs_until};

/// The default `--timeout`.
const DEFAULT_TIMEOUT: u64 = 15;
/// Longest single request.
const MAX_REQUEST: Duration = Duration::from_secs(30);

pub(crate) fn run(args: &TokenArgs) -> Result<(), CliError> {
    let resolved = settings::resolve(&args.source, NeedSecret::Yes)?;
    let timeout = Duration::from_secs(
        args.timeout
            .or(resolved.profile.timeout)
            .unwrap_or(DEFAULT_TIMEOUT)
            .max(1),
    );
    let min_valid = Duration::from_secs(args.min_valid.or(resolved.profile.min_valid).unwrap_or(0));
    let options = OneShot::new().min_valid(min_valid).max_wait(timeout);
    let mut config = TokenWatcher::builder(resolved.source.clone()).http(
        resolved
            .http
            .clone()
            .request_timeout(timeout.min(MAX_REQUEST)),
    );
    match &resolved.cache {
        CacheChoice::File(path) => {
            tracing::debug!(cache = %path.display(), "using the cache file");
            config = config.file_cache(path);
        }
        CacheChoice::None if resolved.no_cache_dir => {
            warn(
                "no cache folder (neither XDG_CACHE_HOME nor HOME is set): not caching; use --cache PATH",
            );
        }
        CacheChoice::None => {}
    }
    if let Some(redis) = &resolved.redis {
        tracing::debug!(server = %redis.server(), "sharing tokens through redis");
        let key = CacheKey::for_client(&resolved.client);
        config = config.blocking_cache(BlockingRedisLayer::new(redis.clone(), &key));
    }

    // With a refresh token, the whole read-use-write-back runs under the
    // refresh token file's own lock: two runs sharing the file never send the
    // same refresh token, cache or no cache.
    let mut _rt_lock = None;
    let mut initial = None;
    let rt_file = resolved
        .refresh_token_file
        .clone()
        .filter(|_| resolved.client.grant() == GrantType::RefreshToken);
    if let Some(path) = &rt_file {
        let lock = FileCache::new(path)
            .lock_timeout(timeout)
            .map_err(|e| CliError::other(format!("cannot lock the refresh token file: {e}")))?;
        _rt_lock = Some(lock.ok_or_else(|| {
            CliError::new(
                Exit::Unavailable,
                format!(
                    "another tokenkeeper run held the lock of the refresh token file {} for {} s",
                    path.display(),
                    timeout.as_secs()
                ),
            )
        })?);
        let token = settings::read_refresh_token(path)?;
        config = config.initial_refresh_token(token.clone());
        initial = Some(token);
    }

    let obtained = config.get_token(options)?;
    for warning in &obtained.warnings {
        warn(&describe_warning(warning));
    }
    if let (Some(path), Some(rotated)) = (&rt_file, &obtained.token.refresh_token)
        && Some(rotated) != initial.as_ref()
    {
        settings::write_refresh_token(path, rotated)?;
        tracing::debug!(
            file = %path.display(),
            refresh_token = %rotated.fingerprint(),
            "saved the rotated refresh token"
        );
    }
    drop(_rt_lock);

    let token = &obtained.token;
    let from = match obtained.origin {
        Origin::Cache { .. } => "cache",
        _ => "authority",
    };
    tracing::debug!(
        from,
        token = %token.access_token.fingerprint(),
        expires_in_s = secs_until(token.expiry),
        "token obtained"
    );
    let out = render(token, args.output, from);
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| CliError::other(format!("cannot write the token: {e}")))
}

/// The token as the user asked to see it.
fn render(token: &TokenRecord, output: TokenOutput, from: &str) -> Zeroizing<String> {
    let now = now();
    Zeroizing::new(match output {
        TokenOutput::Plain => format!("{}\n", token.access_token.expose_secret()),
        TokenOutput::Header => format!("Authorization: {}\n", token.authorization_header_value()),
        TokenOutput::Json => {
            let doc = json!({
                "access_token": token.access_token.expose_secret(),
                "token_type": token.token_type,
                "expires_at": token.expiry.to_rfc3339(),
                "expires_in": secs_until(token.expiry),
                "issued_at": token.issued.to_rfc3339(),
                "stale_at": token.stale.to_rfc3339(),
                "status": token.state_at(now).as_str(),
                "scope": token.scope,
                "issued_token_type": token.issued_token_type(),
                "source": from,
            });
            format!("{doc:#}\n")
        }
    })
}

fn describe_warning(warning: &Warning) -> String {
    match warning {
        Warning::RefreshFailed(error) => format!(
            "refreshing the cached token failed ({}); printing the cached token, still valid",
            describe(error)
        ),
        other => other.to_string(),
    }
}

fn warn(message: &str) {
    eprintln!("tokenkeeper: warning: {message}");
}
