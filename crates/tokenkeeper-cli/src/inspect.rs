//! `tokenkeeper inspect`: what a cache file holds.

use std::path::PathBuf;

use serde_json::{Value, json};
use tokenkeeper_core::cache::{decode_record, read_record};
use tokenkeeper_core::{CacheKey, TokenState};
use tokenkeeper_fs::{FileCache, FileLayer};

use crate::args::{InspectArgs, ReportOutput};
use crate::error::CliError;
use crate::settings::{self, NeedSecret};
use crate::time::{human, now};

pub(crate) fn run(args: &InspectArgs) -> Result<(), CliError> {
    // With --cache alone the file is read whatever client it belongs to;
    // with source flags the client's own file is found and checked.
    let source_given = args.source.token_url.is_some()
        || args.source.issuer.is_some()
        || args.source.client_id.is_some()
        || args.source.profile.is_some()
        || args.source.config.is_some();
    let (path, key): (PathBuf, Option<CacheKey>) = match (&args.source.cache, source_given) {
        (Some(path), false) => (path.clone(), None),
        _ => {
            let resolved = settings::resolve(&args.source, NeedSecret::No)?;
            let key = CacheKey::for_client(&resolved.client);
            let path = match resolved.cache {
                settings::CacheChoice::File(path) => path,
                settings::CacheChoice::None => match FileLayer::default_dir() {
                    Some(dir) if !args.source.no_cache => {
                        FileLayer::in_dir(dir, &key).cache().path().to_path_buf()
                    }
                    _ => {
                        return Err(CliError::usage(
                            "no cache to inspect: give --cache PATH, or the source flags of a cached client",
                        ));
                    }
                },
            };
            (path, Some(key))
        }
    };
    let bytes = FileCache::new(&path)
        .load()
        .map_err(|e| CliError::other(format!("cannot read the cache: {e}")))?
        .ok_or_else(|| CliError::other(format!("no token is cached at {}", path.display())))?;
    let stored = read_record(&bytes).map_err(|e| {
        CliError::other(format!(
            "the cache file {} is unusable: {e}",
            path.display()
        ))
    })?;
    if let Some(key) = &key {
        decode_record(key, &bytes).map_err(|e| {
            CliError::other(format!(
                "the cache file {} is not this client's: {e}",
                path.display()
            ))
        })?;
    }
    drop(bytes);
    let token = &stored.token;
    let now = now();
    let state = token.state_at(now);
    let source: Value = serde_json::from_str(&stored.source).unwrap_or(Value::Null);
    match args.output {
        ReportOutput::Json => {
            let mut doc = json!({
                "path": path.display().to_string(),
                "status": state.as_str(),
                "issued_at": token.issued.to_rfc3339(),
                "stale_at": token.stale.to_rfc3339(),
                "expires_at": token.expiry.to_rfc3339(),
                "expires_in": token.expiry.duration_since(now).as_secs(),
                "token_type": token.token_type,
                "scope": token.scope,
                "fingerprint": token.access_token.fingerprint().to_string(),
                "refresh_token": token.refresh_token.as_ref().map(|t| t.fingerprint().to_string()),
                "key": stored.key_id,
                "source": source,
            });
            if args.show_token {
                doc["access_token"] = Value::from(token.access_token.expose_secret());
            }
            println!("{doc:#}");
        }
        ReportOutput::Text => {
            let when = match state {
                TokenState::Fresh => format!(
                    "fresh: stale in {}, expires in {}",
                    human(token.stale.duration_since(now)),
                    human(token.expiry.duration_since(now))
                ),
                TokenState::Stale => format!(
                    "stale (due for refresh): expires in {}",
                    human(token.expiry.duration_since(now))
                ),
                _ => format!("expired {} ago", human(now.duration_since(token.expiry))),
            };
            println!("cache:          {}", path.display());
            println!("source:         {}", describe_source(&source));
            println!("status:         {when}");
            println!("issued:         {}", token.issued);
            println!("stale:          {}", token.stale);
            println!("expires:        {}", token.expiry);
            println!("token type:     {}", token.token_type);
            println!(
                "scope:          {}",
                token.scope.as_deref().unwrap_or("(not stated)")
            );
            println!("fingerprint:    {}", token.access_token.fingerprint());
            println!(
                "refresh token:  {}",
                token
                    .refresh_token
                    .as_ref()
                    .map_or("none".to_owned(), |t| format!("held ({})", t.fingerprint()))
            );
            if args.show_token {
                println!("access token:   {}", token.access_token.expose_secret());
            }
        }
    }
    Ok(())
}

/// The cache key's description (`["v1", url, client id, grant, scope, audience,
/// resources, params]`) in words.
fn describe_source(source: &Value) -> String {
    let Some(parts) = source.as_array() else {
        return "(unknown)".to_owned();
    };
    let text = |i: usize| parts.get(i).and_then(Value::as_str).unwrap_or_default();
    if text(0) != "v1" {
        return source.to_string();
    }
    let mut out = format!("{} · client {} · {}", text(1), text(2), text(3));
    if !text(4).is_empty() {
        out.push_str(&format!(" · scope {:?}", text(4)));
    }
    if !text(5).is_empty() {
        out.push_str(&format!(" · audience {}", text(5)));
    }
    if let Some(resources) = parts
        .get(6)
        .and_then(Value::as_array)
        .filter(|r| !r.is_empty())
    {
        let list: Vec<&str> = resources.iter().filter_map(Value::as_str).collect();
        out.push_str(&format!(" · resource {}", list.join(", ")));
    }
    out
}
