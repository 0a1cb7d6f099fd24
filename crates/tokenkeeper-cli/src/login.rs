//! `tokenkeeper login --device`: a person signs in with the device
//! authorization grant (RFC 8628), and the token, with its refresh token, is
//! cached where `tokenkeeper token` with the same settings finds it and
//! refreshes it without the person.

use std::time::Duration;

use tokenkeeper_blocking::device::{DeviceEndpoint, DeviceLoginError, DevicePrompt};
use tokenkeeper_blocking::{SpawnError, TokenWatcher};
use tokenkeeper_core::CacheKey;
use tokenkeeper_core::oauth2::TokenUrl;
use tokenkeeper_redis::BlockingRedisLayer;

use crate::args::{GrantArg, LoginArgs};
use crate::error::{CliError, Exit};
use crate::settings::{self, CacheChoice, NeedSecret};

/// The longest single request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) fn run(args: &LoginArgs) -> Result<(), CliError> {
    // The login stores a refresh token for the refresh-token grant of the
    // same settings: that is the grant `token` runs with afterwards.
    let mut source = args.source.clone();
    match source.grant {
        None => source.grant = Some(GrantArg::DeviceCode),
        Some(GrantArg::DeviceCode | GrantArg::RefreshToken) => {}
        Some(_) => {
            return Err(CliError::usage(
                "login --device signs in for the device_code grant: drop --grant, or give --grant device_code",
            ));
        }
    }
    let resolved = settings::resolve(&source, NeedSecret::Yes)?;
    if args.source.grant.is_none()
        && matches!(
            resolved.profile.grant,
            Some(grant) if grant != GrantArg::DeviceCode && grant != GrantArg::RefreshToken
        )
    {
        return Err(CliError::usage(
            "the profile's grant is not device_code: `tokenkeeper token` with it would not use this login; set grant = \"device_code\" in the profile",
        ));
    }
    let endpoint = match args
        .device_authorization_url
        .clone()
        .or_else(|| resolved.profile.device_authorization_url.clone())
    {
        Some(url) => {
            let insecure = args.source.allow_insecure_http || resolved.profile.allow_insecure_http;
            DeviceEndpoint::Url(
                TokenUrl::parse(&url, insecure)
                    .map_err(|e| CliError::usage(format!("bad device authorization URL: {e}")))?,
            )
        }
        // The issuer's metadata names it.
        None if resolved.client.issuer().is_some() => DeviceEndpoint::FromMetadata,
        None => {
            return Err(CliError::usage(
                "no device authorization endpoint: give --device-authorization-url URL (or TOKENKEEPER_DEVICE_AUTHORIZATION_URL, or device_authorization_url in the profile), or --issuer URL whose metadata names it",
            ));
        }
    };

    let mut builder = TokenWatcher::builder(resolved.client.clone())
        .http(resolved.http.clone().request_timeout(REQUEST_TIMEOUT));
    let cache = match &resolved.cache {
        CacheChoice::File(path) => {
            builder = builder.file_cache(path);
            path.clone()
        }
        CacheChoice::None if resolved.no_cache_dir => {
            return Err(CliError::usage(
                "no cache folder (neither XDG_CACHE_HOME nor HOME is set), and the login is kept in the cache: give --cache PATH",
            ));
        }
        CacheChoice::None => {
            return Err(CliError::usage(
                "the login is kept in the cache, for `tokenkeeper token` to refresh: drop --no-cache",
            ));
        }
    };
    if let Some(redis) = &resolved.redis {
        let key = CacheKey::for_client(&resolved.client);
        builder = builder.blocking_cache(BlockingRedisLayer::new(redis.clone(), &key));
    }

    let login = builder
        .device_login(endpoint, |prompt: &DevicePrompt| {
            eprint!("{}", prompt_text(prompt));
        })
        .map_err(login_error)?;
    for warning in &login.warnings {
        eprintln!("tokenkeeper: warning: {warning}");
    }
    if !login.warnings.is_empty() {
        return Err(CliError::other(
            "signed in, but the token could not be stored in every cache: later runs may need another login",
        ));
    }
    if login.token.refresh_token.is_none() {
        eprintln!(
            "tokenkeeper: warning: the authority issued no refresh token: `tokenkeeper token` works until this token expires, then needs another login (ask for the scope that grants one, often offline_access)"
        );
    }
    eprintln!(
        "tokenkeeper: signed in; the token is cached in {}: `tokenkeeper token` with the same settings uses it and refreshes it",
        cache.display()
    );
    Ok(())
}

/// What the person reads: where to go and the code, on stderr.
fn prompt_text(prompt: &DevicePrompt) -> String {
    let minutes = prompt.expires_in.as_secs().div_ceil(60);
    match &prompt.verification_uri_complete {
        Some(complete) => format!(
            "To sign in, open {complete}\nand check that it shows the code {}\n(or open {} and enter the code). The code expires in {minutes} min.\nWaiting for approval...\n",
            prompt.user_code, prompt.verification_uri
        ),
        None => format!(
            "To sign in, open {}\nand enter the code {}\nThe code expires in {minutes} min.\nWaiting for approval...\n",
            prompt.verification_uri, prompt.user_code
        ),
    }
}

fn login_error(error: DeviceLoginError) -> CliError {
    let message = error.to_string();
    match error {
        DeviceLoginError::Denied => CliError::new(
            Exit::Denied,
            "the sign-in was refused (access_denied): nothing was stored",
        ),
        DeviceLoginError::Expired => CliError::new(
            Exit::Expired,
            "the sign-in code expired before it was approved (expired_token): run tokenkeeper login --device again",
        ),
        DeviceLoginError::Rejected(e) | DeviceLoginError::Misconfigured(e) => {
            CliError::from_fetch(&e)
        }
        DeviceLoginError::Unavailable(e) => {
            CliError::new(Exit::Unavailable, message).detail(format!("kind: {e:?}"))
        }
        DeviceLoginError::NotADeviceEndpoint(e) => {
            CliError::new(Exit::NotATokenEndpoint, message).detail(format!("kind: {e:?}"))
        }
        DeviceLoginError::Unsupported(why) => CliError::usage(why),
        DeviceLoginError::Start(SpawnError::NoCacheDir) => {
            CliError::usage("no cache folder: give --cache PATH")
        }
        DeviceLoginError::Start(
            SpawnError::Assertion { error }
            | SpawnError::Rejected { error }
            | SpawnError::Misconfigured { error },
        ) => CliError::from_fetch(&error),
        DeviceLoginError::Start(other) => CliError::usage(other.to_string()),
        other => CliError::other(other.to_string()),
    }
}
