//! Settings: flags and environment variables first, then the named profile of
//! the config file, then defaults. Builds the OAuth2 client and finds the
//! secret, which never comes from the command line.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tokenkeeper_blocking::HttpSettings;
use tokenkeeper_core::LeaseSettings;
use tokenkeeper_core::oauth2::discovery::Issuer;
use tokenkeeper_core::oauth2::{AuthMethod, GrantType, OAuth2Client, TokenUrl};
use tokenkeeper_core::{CacheKey, ClientId, ClientSecret, RefreshToken};
use tokenkeeper_fs::{FileCache, FileLayer};
use tokenkeeper_redis::RedisSettings;
use zeroize::Zeroizing;

use crate::args::{AuthMethodArg, GrantArg, SourceArgs};
use crate::error::{CliError, Exit};

/// The environment variable holding the client secret.
pub(crate) const SECRET_ENV: &str = "TOKENKEEPER_CLIENT_SECRET";

/// Secret and refresh-token files larger than this are refused.
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// The config file: named profiles.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    profiles: BTreeMap<String, Profile>,
}

/// One profile: any setting a flag can give, except the secret itself.
/// Relative paths are taken from the config file's folder.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Profile {
    token_url: Option<String>,
    /// Instead of `token_url`: the issuer whose metadata names it.
    issuer: Option<String>,
    client_id: Option<String>,
    client_secret_file: Option<PathBuf>,
    auth_method: Option<AuthMethodArg>,
    scope: Option<String>,
    audience: Option<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    params: BTreeMap<String, String>,
    pub(crate) grant: Option<GrantArg>,
    refresh_token_file: Option<PathBuf>,
    /// The device authorization endpoint, for `login --device`.
    pub(crate) device_authorization_url: Option<String>,
    cache: Option<PathBuf>,
    #[serde(default)]
    no_cache: bool,
    redis: Option<String>,
    #[serde(default)]
    pub(crate) allow_insecure_http: bool,
    /// One CA file, or a list of them.
    ca_file: Option<OneOrMany>,
    #[serde(default)]
    native_roots: bool,
    #[serde(default)]
    no_ssl_cert_env: bool,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    pub(crate) min_valid: Option<u64>,
    pub(crate) timeout: Option<u64>,
    /// Keys, assertions and token exchange ([`crate::auth`]).
    pub(crate) private_key: Option<PathBuf>,
    pub(crate) key_id: Option<String>,
    pub(crate) key_alg: Option<String>,
    pub(crate) client_assertion_file: Option<PathBuf>,
    pub(crate) assertion_file: Option<PathBuf>,
    pub(crate) assertion_issuer: Option<String>,
    pub(crate) assertion_subject: Option<String>,
    pub(crate) subject_token_file: Option<PathBuf>,
    pub(crate) subject_token_type: Option<String>,
    pub(crate) actor_token_file: Option<PathBuf>,
    pub(crate) actor_token_type: Option<String>,
    pub(crate) requested_token_type: Option<String>,
}

/// A profile value given as one path or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<PathBuf> {
        match self {
            OneOrMany::One(path) => vec![path],
            OneOrMany::Many(paths) => paths,
        }
    }
}

/// Where the cache lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CacheChoice {
    /// This file.
    File(PathBuf),
    /// No cache.
    None,
}

/// Everything resolved.
#[derive(Debug)]
pub(crate) struct Resolved {
    pub(crate) client: OAuth2Client,
    /// The client with its keys, assertions and exchanged tokens: what a
    /// watcher is built from.
    pub(crate) source: tokenkeeper_blocking::Source,
    pub(crate) refresh_token_file: Option<PathBuf>,
    pub(crate) cache: CacheChoice,
    /// Set when the default cache folder was wanted but does not exist.
    pub(crate) no_cache_dir: bool,
    /// The shared Redis layer, when one was given.
    pub(crate) redis: Option<RedisSettings>,
    /// Trust and client certificate; the commands add their timeouts.
    pub(crate) http: HttpSettings,
    pub(crate) profile: Profile,
}

/// The per-user config file: `$XDG_CONFIG_HOME/tokenkeeper/config.toml`, or
/// `$HOME/.config/tokenkeeper/config.toml`.
fn default_config_path() -> Option<PathBuf> {
    let from = |var: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    from("XDG_CONFIG_HOME")
        .or_else(|| from("HOME").map(|h| h.join(".config")))
        .map(|d| d.join("tokenkeeper").join("config.toml"))
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Reads the profile named by `--profile` (or the `default` profile when only
/// `--config` is given). Relative paths in it are made absolute.
fn load_profile(args: &SourceArgs) -> Result<Profile, CliError> {
    let name = match (&args.profile, &args.config) {
        (Some(name), _) => name.clone(),
        (None, Some(_)) => "default".to_owned(),
        (None, None) => return Ok(Profile::default()),
    };
    let path = match &args.config {
        Some(path) => path.clone(),
        None => default_config_path().ok_or_else(|| {
            CliError::usage(format!(
                "profile {name:?} asked for, but there is no config folder (set HOME or use --config)"
            ))
        })?,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        CliError::usage(format!(
            "cannot read the config file {}: {e}",
            path.display()
        ))
    })?;
    let file: ConfigFile = toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|s| line_of(&text, s.start));
        let message = e.message().trim().to_owned();
        CliError::usage(match line {
            Some(line) => format!("bad config file {}, line {line}: {message}", path.display()),
            None => format!("bad config file {}: {message}", path.display()),
        })
    })?;
    let mut profile = file.profiles.get(&name).cloned().ok_or_else(|| {
        let known: Vec<&str> = file.profiles.keys().map(String::as_str).collect();
        CliError::usage(format!(
            "the config file {} has no profile {name:?} (it has: {})",
            path.display(),
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        ))
    })?;
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let absolute = |p: &mut Option<PathBuf>| {
        if let Some(path) = p.as_mut()
            && path.is_relative()
        {
            *path = base.join(&*path);
        }
    };
    absolute(&mut profile.client_secret_file);
    absolute(&mut profile.refresh_token_file);
    absolute(&mut profile.cache);
    absolute(&mut profile.client_cert);
    absolute(&mut profile.client_key);
    absolute(&mut profile.private_key);
    absolute(&mut profile.client_assertion_file);
    absolute(&mut profile.assertion_file);
    absolute(&mut profile.subject_token_file);
    absolute(&mut profile.actor_token_file);
    if let Some(files) = profile.ca_file.take() {
        let mut files = files.into_vec();
        for file in &mut files {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
        profile.ca_file = Some(OneOrMany::Many(files));
    }
    Ok(profile)
}

/// Reads a small secret file, without its final line break.
pub(crate) fn read_secret_file(path: &Path, what: &str) -> Result<Zeroizing<String>, CliError> {
    let file = std::fs::File::open(path).map_err(|e| {
        CliError::usage(format!(
            "cannot read the {what} file {}: {e}",
            path.display()
        ))
    })?;
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_SECRET_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| {
            CliError::usage(format!(
                "cannot read the {what} file {}: {e}",
                path.display()
            ))
        })?;
    if bytes.len() as u64 > MAX_SECRET_FILE {
        return Err(CliError::usage(format!(
            "the {what} file {} is larger than {} KiB",
            path.display(),
            MAX_SECRET_FILE / 1024
        )));
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        CliError::usage(format!(
            "the {what} file {} is not UTF-8 text",
            path.display()
        ))
    })?;
    let trimmed = text.trim_end_matches(['\n', '\r']);
    if trimmed.is_empty() {
        return Err(CliError::usage(format!(
            "the {what} file {} is empty",
            path.display()
        )));
    }
    Ok(Zeroizing::new(trimmed.to_owned()))
}

/// Whether the secret is needed: to ask for tokens (`token`, `watch`), but
/// not to find a cache (`inspect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NeedSecret {
    Yes,
    No,
}

/// Resolves the source settings.
pub(crate) fn resolve(args: &SourceArgs, need: NeedSecret) -> Result<Resolved, CliError> {
    let profile = load_profile(args)?;
    // A flag beats the profile; a profile names one or the other.
    let issuer = match (&args.token_url, &args.issuer) {
        (Some(_), _) => None,
        (None, Some(issuer)) => Some(issuer.clone()),
        (None, None) if profile.token_url.is_some() && profile.issuer.is_some() => {
            return Err(CliError::usage(
                "the profile gives both token_url and issuer: keep one",
            ));
        }
        (None, None) if profile.token_url.is_none() => profile.issuer.clone(),
        (None, None) => None,
    };
    let token_url = args
        .token_url
        .clone()
        .or_else(|| profile.token_url.clone())
        .or_else(|| issuer.clone())
        .ok_or_else(|| {
            CliError::usage(
                "no token URL: give --token-url URL or --issuer URL (or TOKENKEEPER_TOKEN_URL, TOKENKEEPER_ISSUER)",
            )
        })?;
    let client_id = args
        .client_id
        .clone()
        .or_else(|| profile.client_id.clone())
        .ok_or_else(|| {
            CliError::usage("no client id: give --client-id ID (or TOKENKEEPER_CLIENT_ID)")
        })?;
    let grant = match args.grant.or(profile.grant) {
        // A device login's refresh token comes from the cache it wrote.
        Some(GrantArg::RefreshToken | GrantArg::DeviceCode) => GrantType::RefreshToken,
        Some(GrantArg::JwtBearer) => GrantType::JwtBearer,
        Some(GrantArg::TokenExchange) => GrantType::TokenExchange,
        Some(GrantArg::ClientCredentials) | None => GrantType::ClientCredentials,
    };
    let insecure = args.allow_insecure_http || profile.allow_insecure_http;
    let url = TokenUrl::parse(&token_url, insecure)
        .map_err(|e| CliError::usage(format!("bad token URL: {e}")))?;
    let issuer = issuer
        .map(|issuer| Issuer::parse(&issuer, insecure))
        .transpose()
        .map_err(|e| CliError::usage(format!("bad issuer: {e}")))?;

    let secret = if need == NeedSecret::Yes {
        let from_file = args
            .client_secret_file
            .clone()
            .or_else(|| profile.client_secret_file.clone());
        match from_file {
            Some(path) => Some(read_secret_file(&path, "client secret")?),
            None => match std::env::var(SECRET_ENV) {
                Ok(value) if !value.is_empty() => Some(Zeroizing::new(value)),
                _ => None,
            },
        }
    } else {
        None
    };
    let auth_method = match args.auth_method.or(profile.auth_method) {
        None if crate::auth::implies_private_key_jwt(&args.auth, &profile) => {
            AuthMethod::PrivateKeyJwt
        }
        Some(AuthMethodArg::PrivateKeyJwt) => AuthMethod::PrivateKeyJwt,
        Some(AuthMethodArg::ClientSecretJwt) => AuthMethod::ClientSecretJwt,
        Some(AuthMethodArg::Post) => AuthMethod::ClientSecretPost,
        Some(AuthMethodArg::Basic) | None => AuthMethod::ClientSecretBasic,
        Some(AuthMethodArg::TlsClientAuth) => AuthMethod::TlsClientAuth,
        Some(AuthMethodArg::SelfSignedTlsClientAuth) => AuthMethod::SelfSignedTlsClientAuth,
    };
    let http = http_settings(args, &profile)?;
    if auth_method.uses_client_certificate() && !http.has_client_certificate() {
        return Err(CliError::usage(format!(
            "--auth-method {} needs a client certificate: give --client-cert PATH and --client-key PATH",
            auth_method.as_str()
        )));
    }
    if need == NeedSecret::Yes
        && secret.is_none()
        && (grant == GrantType::ClientCredentials || auth_method == AuthMethod::ClientSecretJwt)
        && !auth_method.uses_client_certificate()
        && auth_method != AuthMethod::PrivateKeyJwt
    {
        return Err(CliError::usage(format!(
            "no client secret: set {SECRET_ENV}, or give --client-secret-file PATH"
        )));
    }
    let secret = secret.map(|s| ClientSecret::new(s.as_str()));
    let mut client =
        OAuth2Client::new(url, ClientId::new(client_id), secret, grant).auth_method(auth_method);
    if let Some(issuer) = issuer {
        client = client.with_issuer(issuer);
        // A method given by flag or profile (or implied by an assertion
        // file) is kept; else the metadata's.
        if args.auth_method.or(profile.auth_method).is_some()
            || crate::auth::implies_private_key_jwt(&args.auth, &profile)
        {
            client = client.auth_method(auth_method);
        }
    }
    // Tokens may be bound to the client certificate: the cache key (and so
    // the cache file's name) includes its thumbprint, as the watcher's does.
    if let Some(thumbprint) = http
        .client_certificate_thumbprint()
        .map_err(|e| CliError::usage(e.to_string()))?
    {
        client = client.bound_to_certificate(thumbprint);
    }
    if let Some(scope) = args.scope.clone().or_else(|| profile.scope.clone()) {
        client = client.scope(scope);
    }
    if let Some(audience) = args.audience.clone().or_else(|| profile.audience.clone()) {
        client = client.audience(audience);
    }
    let resources = if args.resources.is_empty() {
        profile.resources.clone()
    } else {
        args.resources.clone()
    };
    for resource in resources {
        client = client.resource(resource);
    }
    let mut params: Vec<(String, String)> = profile
        .params
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for param in &args.params {
        let (k, v) = param
            .split_once('=')
            .ok_or_else(|| CliError::usage(format!("--param wants NAME=VALUE, got {param:?}")))?;
        if k.is_empty() {
            return Err(CliError::usage(format!(
                "--param has an empty name: {param:?}"
            )));
        }
        params.retain(|(name, _)| name != k);
        params.push((k.to_owned(), v.to_owned()));
    }
    for (k, v) in params {
        client = client
            .extra_param(k, v)
            .map_err(|e| CliError::usage(format!("bad --param: {e}")))?;
    }

    let refresh_token_file = args
        .refresh_token_file
        .clone()
        .or_else(|| profile.refresh_token_file.clone());
    if grant == GrantType::RefreshToken
        && refresh_token_file.is_none()
        && need == NeedSecret::Yes
        && args.grant.or(profile.grant) != Some(GrantArg::DeviceCode)
    {
        return Err(CliError::usage(
            "the refresh_token grant needs --refresh-token-file PATH",
        ));
    }
    let (client, source) =
        crate::auth::complete(client, &args.auth, &profile, need == NeedSecret::Yes)?;
    let key = CacheKey::for_client(&client);
    let mut no_cache_dir = false;
    let cache = if args.no_cache || (profile.no_cache && args.cache.is_none()) {
        CacheChoice::None
    } else if let Some(path) = args.cache.clone().or_else(|| profile.cache.clone()) {
        CacheChoice::File(path)
    } else {
        match FileLayer::default_dir() {
            Some(dir) => {
                CacheChoice::File(FileLayer::in_dir(dir, &key).cache().path().to_path_buf())
            }
            None => {
                no_cache_dir = true;
                CacheChoice::None
            }
        }
    };
    let redis = match args.redis.clone().or_else(|| profile.redis.clone()) {
        // The URL may hold a password: the message never quotes it.
        Some(url) => {
            let settings = RedisSettings::new(&url).map_err(|e| CliError::usage(e.to_string()))?;
            let default = settings.core_layer().lease().unwrap_or_default();
            Some(settings.lease(LeaseSettings {
                ttl: Duration::from_secs(args.redis_lease_ttl.max(1)),
                ..default
            }))
        }
        None => None,
    };
    Ok(Resolved {
        client,
        source,
        refresh_token_file,
        cache,
        no_cache_dir,
        redis,
        http,
        profile,
    })
}

/// The HTTP settings of the flags and profile: the roots to trust and the
/// client certificate. Files are read (and so checked) here, so that a
/// missing CA or key file is a usage error before any request.
fn http_settings(args: &SourceArgs, profile: &Profile) -> Result<HttpSettings, CliError> {
    let ca_files = if args.ca_files.is_empty() {
        profile
            .ca_file
            .clone()
            .map(OneOrMany::into_vec)
            .unwrap_or_default()
    } else {
        args.ca_files.clone()
    };
    let mut http = HttpSettings::default()
        .native_roots(args.native_roots || profile.native_roots)
        .ssl_cert_env(!(args.no_ssl_cert_env || profile.no_ssl_cert_env));
    for file in ca_files {
        http = http.add_root_certificates_file(file);
    }
    let cert = args
        .client_cert
        .clone()
        .or_else(|| profile.client_cert.clone());
    let key = args
        .client_key
        .clone()
        .or_else(|| profile.client_key.clone());
    match (cert, key) {
        (Some(cert), Some(key)) => http = http.client_certificate_files(cert, key),
        (None, None) => {}
        _ => {
            return Err(CliError::usage(
                "a client certificate needs both --client-cert PATH and --client-key PATH",
            ));
        }
    }
    // Reads every file named, with errors that name the file.
    http.rustls_config()
        .map_err(|e| CliError::usage(e.to_string()))?;
    Ok(http)
}

/// Reads the refresh token from its file.
pub(crate) fn read_refresh_token(path: &Path) -> Result<RefreshToken, CliError> {
    let text = read_secret_file(path, "refresh token")?;
    Ok(RefreshToken::new(text.as_str()))
}

/// Writes a rotated refresh token back to its file: atomically, mode 0600.
pub(crate) fn write_refresh_token(path: &Path, token: &RefreshToken) -> Result<(), CliError> {
    let mut bytes = Zeroizing::new(Vec::with_capacity(token.expose_secret().len() + 1));
    bytes.extend_from_slice(token.expose_secret().as_bytes());
    bytes.push(b'\n');
    FileCache::new(path).store(&bytes).map_err(|e| {
        CliError::new(
            Exit::Other,
            format!("could not save the rotated refresh token: {e}"),
        )
    })
}
