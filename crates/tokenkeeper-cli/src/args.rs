//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Keeps OAuth2 access tokens fresh: prints one, keeps a token file fresh for
/// other programs, inspects a cache, runs a demo, simulates a fleet.
///
/// The client secret never travels on the command line: it comes from the
/// TOKENKEEPER_CLIENT_SECRET environment variable or from a file
/// (--client-secret-file).
#[derive(Debug, Parser)]
#[command(name = "tokenkeeper", version, max_term_width = 100)]
pub(crate) struct Cli {
    /// Say more on stderr (-v: debug, -vv: trace). Secrets are never shown.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub(crate) verbose: u8,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Print a usable access token, from the cache when it holds a good one.
    #[command(after_help = TOKEN_EXAMPLES)]
    Token(TokenArgs),
    /// Sign in as a person (device authorization grant): show a code to enter
    /// in a browser, wait for approval, cache the refresh token for `token`.
    #[command(after_help = LOGIN_EXAMPLES)]
    Login(LoginArgs),
    /// Show what a cache file holds (never the token itself unless --show-token).
    #[command(after_help = INSPECT_EXAMPLES)]
    Inspect(InspectArgs),
    /// Keep a file holding a usable token, refreshed in the background, until
    /// SIGINT or SIGTERM.
    #[command(after_help = WATCH_EXAMPLES)]
    Watch(WatchArgs),
    /// Run a live demonstration against an in-process test authority on loopback.
    #[command(after_help = DEMO_EXAMPLES)]
    Demo(DemoArgs),
    /// Simulate a fleet of instances sharing (or not) a token cache, in virtual time.
    #[command(after_help = SIMULATE_EXAMPLES)]
    Simulate(SimulateArgs),
    /// Print a shell completion script for bash, zsh or fish.
    #[command(after_help = COMPLETIONS_EXAMPLES)]
    Completions(CompletionsArgs),
    /// Print the manual page (roff), or write every page to a folder.
    #[command(after_help = MAN_EXAMPLES)]
    Man(ManArgs),
}

const TOKEN_EXAMPLES: &str = "\
Examples:
  export TOKENKEEPER_CLIENT_SECRET=...
  tokenkeeper token --token-url https://auth.example.com/oauth/token --client-id svc --scope read
  curl -H \"$(tokenkeeper token --profile prod --output header)\" https://api.example.com/things
  tokenkeeper token --profile prod --min-valid 300 --output json
  tokenkeeper token --profile prod --redis redis://cache.internal:6379/0   # one request per fleet";

const LOGIN_EXAMPLES: &str = "\
Examples:
  tokenkeeper login --device --profile me     # profile: grant = \"device_code\", device_authorization_url = ...
  tokenkeeper token --profile me              # later: refreshed with the cached refresh token, no browser
  tokenkeeper login --device --token-url https://auth.example.com/oauth/token \\
      --device-authorization-url https://auth.example.com/oauth/device --client-id cli --scope offline_access";

const INSPECT_EXAMPLES: &str = "\
Examples:
  tokenkeeper inspect --profile prod
  tokenkeeper inspect --cache /run/tokenkeeper/cache.json --output json";

const WATCH_EXAMPLES: &str = "\
Examples:
  tokenkeeper watch --profile prod --sink /run/tokenkeeper/token
  tokenkeeper watch --token-url https://auth.example.com/oauth/token --client-id svc \\
      --client-secret-file /etc/tokenkeeper/secret --sink /run/tokenkeeper/token.json --sink-format json";

const DEMO_EXAMPLES: &str = "\
Examples:
  tokenkeeper demo
  tokenkeeper demo --duration 60 --plot demo.svg";

const SIMULATE_EXAMPLES: &str = "\
Examples:
  tokenkeeper simulate --instances 1000 --hours 24 --ttl 3600
  tokenkeeper simulate --instances 1000 --no-shared-cache --jitter 360 --plot unshared.svg
  tokenkeeper simulate --instances 500 --hours 3 --outage 44m:8m --output json";

const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  tokenkeeper completions bash > ~/.local/share/bash-completion/completions/tokenkeeper
  tokenkeeper completions zsh > ~/.zfunc/_tokenkeeper        # with fpath+=(~/.zfunc)
  tokenkeeper completions fish > ~/.config/fish/completions/tokenkeeper.fish";

const MAN_EXAMPLES: &str = "\
Examples:
  tokenkeeper man | man -l -
  tokenkeeper man watch | man -l -
  tokenkeeper man --out-dir ~/.local/share/man/man1";

/// The `--auth-method` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AuthMethodArg {
    /// client_secret_basic: HTTP Basic authentication.
    #[value(alias = "client_secret_basic")]
    #[serde(alias = "client_secret_basic")]
    Basic,
    /// client_secret_post: credentials in the request body.
    #[value(alias = "client_secret_post")]
    #[serde(alias = "client_secret_post")]
    Post,
    /// Mutual TLS with a CA-issued client certificate (RFC 8705), no secret;
    /// needs --client-cert and --client-key.
    #[value(name = "tls_client_auth")]
    TlsClientAuth,
    /// Mutual TLS with a self-signed client certificate registered with the
    /// authority (RFC 8705), no secret; needs --client-cert and --client-key.
    #[value(name = "self_signed_tls_client_auth")]
    SelfSignedTlsClientAuth,
    /// A JWT signed with the client's private key (--private-key), or an
    /// assertion made elsewhere (--client-assertion-file), no secret.
    #[value(name = "private_key_jwt")]
    PrivateKeyJwt,
    /// A JWT signed with HMAC SHA-256 keyed by the client secret, which
    /// never travels.
    #[value(name = "client_secret_jwt")]
    ClientSecretJwt,
}

/// The `--grant` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub(crate) enum GrantArg {
    /// The client-credentials grant.
    ClientCredentials,
    /// The refresh-token grant (the refresh token is read from --refresh-token-file).
    RefreshToken,
    /// A person signs in once with `tokenkeeper login --device`; then the
    /// refresh-token grant, with the refresh token the login cached.
    DeviceCode,
    /// The JWT bearer grant (RFC 7523): an assertion from --assertion-file,
    /// or signed with --private-key, is exchanged for a token.
    #[value(alias = "jwt-bearer")]
    #[serde(alias = "jwt-bearer")]
    JwtBearer,
    /// Token exchange (RFC 8693): the token in --subject-token-file is
    /// exchanged for one for --audience / --resource.
    #[value(alias = "token-exchange")]
    #[serde(alias = "token-exchange")]
    TokenExchange,
}

/// Where tokens come from and where they are cached.
#[derive(Debug, Clone, Args)]
pub(crate) struct SourceArgs {
    /// TOML file holding named profiles [default: the user's config folder,
    /// tokenkeeper/config.toml].
    #[arg(
        long,
        env = "TOKENKEEPER_CONFIG",
        value_name = "PATH",
        hide_env_values = true
    )]
    pub(crate) config: Option<PathBuf>,

    /// Take unset settings from this profile of the config file.
    #[arg(
        long,
        env = "TOKENKEEPER_PROFILE",
        value_name = "NAME",
        hide_env_values = true
    )]
    pub(crate) profile: Option<String>,

    /// The token endpoint (https, or http to loopback).
    #[arg(
        long,
        env = "TOKENKEEPER_TOKEN_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub(crate) token_url: Option<String>,

    /// The issuer, instead of --token-url: the token endpoint comes from
    /// its metadata (OpenID Connect discovery, RFC 8414), cached with the
    /// token.
    #[arg(
        long,
        env = "TOKENKEEPER_ISSUER",
        value_name = "URL",
        hide_env_values = true,
        conflicts_with = "token_url"
    )]
    pub(crate) issuer: Option<String>,

    /// The client id.
    #[arg(
        long,
        env = "TOKENKEEPER_CLIENT_ID",
        value_name = "ID",
        hide_env_values = true
    )]
    pub(crate) client_id: Option<String>,

    /// A file holding the client secret (else TOKENKEEPER_CLIENT_SECRET).
    #[arg(
        long,
        env = "TOKENKEEPER_CLIENT_SECRET_FILE",
        value_name = "PATH",
        hide_env_values = true
    )]
    pub(crate) client_secret_file: Option<PathBuf>,

    /// How the client authenticates [default: basic].
    #[arg(
        long,
        env = "TOKENKEEPER_AUTH_METHOD",
        value_enum,
        hide_env_values = true
    )]
    pub(crate) auth_method: Option<AuthMethodArg>,

    /// The scope to ask for (space-separated).
    #[arg(
        long,
        env = "TOKENKEEPER_SCOPE",
        value_name = "S",
        hide_env_values = true
    )]
    pub(crate) scope: Option<String>,

    /// The audience to ask for.
    #[arg(
        long,
        env = "TOKENKEEPER_AUDIENCE",
        value_name = "A",
        hide_env_values = true
    )]
    pub(crate) audience: Option<String>,

    /// A resource indicator (RFC 8707); may be repeated.
    #[arg(long = "resource", value_name = "R")]
    pub(crate) resources: Vec<String>,

    /// An extra form parameter; may be repeated.
    #[arg(long = "param", value_name = "K=V")]
    pub(crate) params: Vec<String>,

    /// The grant [default: client_credentials].
    #[arg(long, env = "TOKENKEEPER_GRANT", value_enum, hide_env_values = true)]
    pub(crate) grant: Option<GrantArg>,

    /// The file holding the refresh token (refresh_token grant); a rotated
    /// refresh token is written back to it.
    #[arg(
        long,
        env = "TOKENKEEPER_REFRESH_TOKEN_FILE",
        value_name = "PATH",
        hide_env_values = true
    )]
    pub(crate) refresh_token_file: Option<PathBuf>,

    /// The cache file [default: one per client in the user's cache folder].
    #[arg(
        long,
        env = "TOKENKEEPER_CACHE",
        value_name = "PATH",
        hide_env_values = true
    )]
    pub(crate) cache: Option<PathBuf>,

    /// Use no cache file.
    #[arg(long, conflicts_with = "cache")]
    pub(crate) no_cache: bool,

    /// Share tokens with a fleet through this Redis (redis://[user:password@]host:port/db,
    /// or rediss:// for TLS): one request to the authority per refresh, fleet-wide.
    #[arg(
        long,
        env = "TOKENKEEPER_REDIS_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub(crate) redis: Option<String>,

    /// How long a fleet member's Redis lease lives if it never gives it back
    /// (it crashed): the longest the others wait for it.
    #[arg(long, value_name = "SECS", default_value_t = 30, requires = "redis")]
    pub(crate) redis_lease_ttl: u64,

    /// Allow plain http to hosts other than loopback (the secret travels in clear).
    #[arg(long)]
    pub(crate) allow_insecure_http: bool,

    /// Also trust the CA certificates in this PEM file (a private CA; a
    /// bundle may hold several); may be repeated.
    #[arg(
        long = "ca-file",
        env = "TOKENKEEPER_CA_FILE",
        value_name = "PATH",
        hide_env_values = true
    )]
    pub(crate) ca_files: Vec<PathBuf>,

    /// Also trust the operating system's certificate store.
    #[arg(long)]
    pub(crate) native_roots: bool,

    /// Ignore SSL_CERT_FILE and SSL_CERT_DIR (honoured by default, as
    /// OpenSSL-based tools do).
    #[arg(long)]
    pub(crate) no_ssl_cert_env: bool,

    /// The client certificate (PEM, leaf first) for mutual TLS.
    #[arg(
        long,
        env = "TOKENKEEPER_CLIENT_CERT",
        value_name = "PATH",
        hide_env_values = true,
        requires = "client_key"
    )]
    pub(crate) client_cert: Option<PathBuf>,

    /// The client certificate's private key (PEM) for mutual TLS.
    #[arg(
        long,
        env = "TOKENKEEPER_CLIENT_KEY",
        value_name = "PATH",
        hide_env_values = true,
        requires = "client_cert"
    )]
    pub(crate) client_key: Option<PathBuf>,

    #[command(flatten)]
    pub(crate) auth: AuthArgs,
}

/// Client assertions, the JWT bearer grant and token exchange: keys,
/// assertions and tokens come from files, never from arguments.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct AuthArgs {
    /// The private key (PEM: PKCS#8 or PKCS#1; or a JWK) that signs
    /// private_key_jwt assertions and JWT bearer grant assertions.
    #[arg(
        long,
        env = "TOKENKEEPER_PRIVATE_KEY",
        value_name = "PATH",
        hide_env_values = true
    )]
    pub(crate) private_key: Option<PathBuf>,

    /// The key id (`kid`) named in each assertion's header.
    #[arg(long, value_name = "KID")]
    pub(crate) key_id: Option<String>,

    /// The algorithm an RSA key signs with: RS256 (default) or PS256.
    #[arg(long, value_name = "ALG")]
    pub(crate) key_alg: Option<String>,

    /// A client assertion made elsewhere (a Kubernetes projected token),
    /// read again before every request; implies --auth-method private_key_jwt.
    #[arg(
        long,
        env = "TOKENKEEPER_CLIENT_ASSERTION_FILE",
        value_name = "PATH",
        hide_env_values = true
    )]
    pub(crate) client_assertion_file: Option<PathBuf>,

    /// The JWT bearer grant's assertion, made elsewhere, read again before
    /// every request (--grant jwt-bearer).
    #[arg(
        long,
        env = "TOKENKEEPER_ASSERTION_FILE",
        value_name = "PATH",
        hide_env_values = true
    )]
    pub(crate) assertion_file: Option<PathBuf>,

    /// The issuer (`iss`) of a JWT bearer assertion signed with
    /// --private-key [default: the client id].
    #[arg(long, value_name = "ISS")]
    pub(crate) assertion_issuer: Option<String>,

    /// Whom a JWT bearer assertion signed with --private-key is about
    /// (`sub`) [default: the client id].
    #[arg(long, value_name = "SUB")]
    pub(crate) assertion_subject: Option<String>,

    /// The token to exchange (--grant token-exchange), read again before
    /// every request.
    #[arg(
        long,
        env = "TOKENKEEPER_SUBJECT_TOKEN_FILE",
        value_name = "PATH",
        hide_env_values = true
    )]
    pub(crate) subject_token_file: Option<PathBuf>,

    /// Its type: a URI, or jwt, access_token, id_token, refresh_token.
    #[arg(long, value_name = "TYPE")]
    pub(crate) subject_token_type: Option<String>,

    /// An actor token to present too (delegation), read again before every
    /// request.
    #[arg(long, value_name = "PATH", requires = "actor_token_type")]
    pub(crate) actor_token_file: Option<PathBuf>,

    /// The actor token's type.
    #[arg(long, value_name = "TYPE", requires = "actor_token_file")]
    pub(crate) actor_token_type: Option<String>,

    /// The type of token to ask for (a URI, or a short name as above).
    #[arg(long, value_name = "TYPE")]
    pub(crate) requested_token_type: Option<String>,
}

/// Output formats of `token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum TokenOutput {
    /// The token and a newline.
    Plain,
    /// `Authorization: Bearer <token>`.
    Header,
    /// A JSON object: access token, token type, expiry, status.
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    #[command(flatten)]
    pub(crate) source: SourceArgs,

    /// A cached token with less than this many seconds left is refreshed first.
    #[arg(
        long,
        value_name = "SECS",
        env = "TOKENKEEPER_MIN_VALID",
        hide_env_values = true
    )]
    pub(crate) min_valid: Option<u64>,

    /// Give up after this many seconds without a usable token [default: 15].
    #[arg(
        long,
        value_name = "SECS",
        env = "TOKENKEEPER_TIMEOUT",
        hide_env_values = true
    )]
    pub(crate) timeout: Option<u64>,

    /// What to print.
    #[arg(long, value_enum, default_value = "plain")]
    pub(crate) output: TokenOutput,
}

#[derive(Debug, Args)]
pub(crate) struct LoginArgs {
    #[command(flatten)]
    pub(crate) source: SourceArgs,

    /// Sign in with the device authorization grant (RFC 8628): the only way
    /// `login` signs in for now.
    #[arg(long, required = true)]
    pub(crate) device: bool,

    /// The authority's device authorization endpoint (its metadata's
    /// device_authorization_endpoint).
    #[arg(
        long,
        env = "TOKENKEEPER_DEVICE_AUTHORIZATION_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub(crate) device_authorization_url: Option<String>,
}

/// Output formats of `inspect` and `simulate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ReportOutput {
    /// Readable text.
    Text,
    /// A JSON object.
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    #[command(flatten)]
    pub(crate) source: SourceArgs,

    /// Print the access token too.
    #[arg(long)]
    pub(crate) show_token: bool,

    /// What to print.
    #[arg(long, value_enum, default_value = "text")]
    pub(crate) output: ReportOutput,
}

/// Formats of the `watch` sink file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SinkFormat {
    /// The token and a newline.
    Plain,
    /// A JSON object: access token, token type, expiry.
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    #[command(flatten)]
    pub(crate) source: SourceArgs,

    /// The file to keep holding a usable token (mode 0600, replaced atomically).
    #[arg(long, value_name = "PATH")]
    pub(crate) sink: PathBuf,

    /// What the sink file holds.
    #[arg(long, value_enum, default_value = "plain")]
    pub(crate) sink_format: SinkFormat,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// How long the demo runs, in seconds (at least 10).
    #[arg(long, value_name = "SECS", default_value_t = 36)]
    pub(crate) duration: u64,

    /// Also draw the timeline into this SVG file: requests per second, reads
    /// fresh, stale or with nothing, the outage, the tokens' lifetimes.
    #[arg(long, value_name = "FILE.svg")]
    pub(crate) plot: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct SimulateArgs {
    /// Number of instances.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub(crate) instances: usize,

    /// Simulated hours.
    #[arg(long, value_name = "H", default_value_t = 24.0)]
    pub(crate) hours: f64,

    /// Token lifetime in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    pub(crate) ttl: u64,

    /// Largest refresh jitter in seconds [default: 60].
    #[arg(long, value_name = "SECS")]
    pub(crate) jitter: Option<u64>,

    /// Instances keep their tokens to themselves (no shared cache, no lease).
    #[arg(long)]
    pub(crate) no_shared_cache: bool,

    /// An authority outage, START:DURATION from the beginning (seconds, or
    /// with a unit: 90s, 30m, 2h); may be repeated.
    #[arg(long, value_name = "START:DURATION")]
    pub(crate) outage: Vec<String>,

    /// Instances start at random moments within this many seconds [default: 0].
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub(crate) start_spread: u64,

    /// Seed of the run; the same seed gives the same report.
    #[arg(long, value_name = "S", default_value_t = 1)]
    pub(crate) seed: u64,

    /// What to print.
    #[arg(long, value_enum, default_value = "text")]
    pub(crate) output: ReportOutput,

    /// Also draw the run's timeline into this SVG file: authority requests
    /// per second, reads fresh, stale or with nothing, outages, and the
    /// lifetimes of the first instance's tokens.
    #[arg(long, value_name = "FILE.svg")]
    pub(crate) plot: Option<PathBuf>,
}

/// The shells `completions` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ShellArg {
    /// Bash.
    Bash,
    /// Zsh.
    Zsh,
    /// Fish.
    Fish,
}

#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub(crate) shell: ShellArg,
}

#[derive(Debug, Args)]
pub(crate) struct ManArgs {
    /// The subcommand whose page to print [default: the command's own page].
    #[arg(value_name = "SUBCOMMAND", conflicts_with = "out_dir")]
    pub(crate) subcommand: Option<String>,

    /// Write every page (tokenkeeper.1, tokenkeeper-token.1, ...) into this
    /// folder instead of printing one.
    #[arg(long, value_name = "DIR")]
    pub(crate) out_dir: Option<PathBuf>,
}
