//! Errors of the command: one clear line, an exit code, and details for `-v`.

use std::fmt;

use tokenkeeper_blocking::GetTokenError;
use tokenkeeper_core::{FetchError, TlsProblem};

/// The exit codes of the `tokenkeeper` command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Anything else (1).
    Other = 1,
    /// Usage or configuration error (2).
    Usage = 2,
    /// The authority rejected the credentials or grant (3).
    Rejected = 3,
    /// The authority could not be reached or kept failing, and no usable
    /// token was at hand (4).
    Unavailable = 4,
    /// TLS with the token endpoint failed: its certificate cannot be
    /// verified, or the handshake failed (5).
    Tls = 5,
    /// The token URL is not a token endpoint: 404, 405, a redirect or a web
    /// page; or the issuer's metadata cannot be used: not served, another
    /// issuer's, no token endpoint (6).
    NotATokenEndpoint = 6,
    /// `login --device`: the person refused the sign-in (7).
    Denied = 7,
    /// `login --device`: the code expired before the person approved (8).
    Expired = 8,
}

/// A failure of a command. Its texts never hold a secret.
#[derive(Debug)]
pub(crate) struct CliError {
    pub(crate) exit: Exit,
    pub(crate) message: String,
    /// More lines, shown with `-v`.
    pub(crate) details: Vec<String>,
}

impl CliError {
    pub(crate) fn new(exit: Exit, message: impl Into<String>) -> Self {
        CliError {
            exit,
            message: message.into(),
            details: Vec::new(),
        }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }

    pub(crate) fn other(message: impl Into<String>) -> Self {
        Self::new(Exit::Other, message)
    }

    pub(crate) fn detail(mut self, line: impl Into<String>) -> Self {
        self.details.push(line.into());
        self
    }

    /// The error of a fetch that left no usable token.
    pub(crate) fn from_fetch(error: &FetchError) -> Self {
        if let FetchError::Tls { host, problem } = error {
            return CliError::new(
                Exit::Tls,
                format!(
                    "TLS with {host} failed: {problem}; {}",
                    tls_remedy(*problem)
                ),
            )
            .detail(format!("kind: {error:?}"));
        }
        if matches!(error, FetchError::Discovery { .. }) && error.is_permanent() {
            return CliError::new(Exit::NotATokenEndpoint, error.to_string())
                .detail(format!("kind: {error:?}"));
        }
        if let FetchError::NoRefreshToken = error {
            return CliError::new(
                Exit::Rejected,
                "no refresh token to refresh with: sign in first with `tokenkeeper login --device` (grant device_code), or give --refresh-token-file PATH",
            );
        }
        if let FetchError::NotATokenEndpoint { .. } = error {
            return CliError::new(Exit::NotATokenEndpoint, error.to_string())
                .detail(format!("kind: {error:?}"));
        }
        if error.is_permanent() {
            let mut e = CliError::new(
                Exit::Rejected,
                format!("the authority rejected the request: {}", describe(error)),
            );
            if let Some(oauth) = error.oauth_error() {
                e = e.detail(format!("error: {}", oauth.error));
                if let Some(d) = &oauth.description {
                    e = e.detail(format!("error_description: {d}"));
                }
                if let Some(uri) = &oauth.uri {
                    e = e.detail(format!("error_uri: {uri}"));
                }
            }
            e.detail(format!("kind: {error:?}"))
        } else {
            CliError::new(Exit::Unavailable, format!("no token: {error}"))
                .detail(format!("kind: {error:?}"))
        }
    }
}

/// What to do about a TLS problem, in the command's terms.
fn tls_remedy(problem: TlsProblem) -> &'static str {
    match problem {
        TlsProblem::UnknownIssuer => {
            "trust the CA that issued it with --ca-file PATH (PEM), or the system's store with --native-roots"
        }
        TlsProblem::SelfSigned => {
            "trust that certificate itself with --ca-file PATH (PEM), or give the server one from a CA"
        }
        TlsProblem::ClientCertificateRequired => {
            "give a client certificate with --client-cert PATH and --client-key PATH"
        }
        other => other.remedy(),
    }
}

/// A fetch error as one line, leading with the OAuth2 `error` and
/// `error_description` when the authority sent them.
pub(crate) fn describe(error: &FetchError) -> String {
    match error {
        FetchError::OAuth { status, error, .. } => match &error.description {
            Some(d) => format!("{} ({d}) [HTTP {status}]", error.error),
            None => format!("{} [HTTP {status}]", error.error),
        },
        other => other.to_string(),
    }
}

impl From<GetTokenError> for CliError {
    fn from(error: GetTokenError) -> Self {
        match &error {
            GetTokenError::Rejected(e) | GetTokenError::Misconfigured(e) => CliError::from_fetch(e),
            GetTokenError::Unavailable { waited, last_error } => {
                let mut e = CliError::new(
                    Exit::Unavailable,
                    match last_error {
                        Some(last) => format!(
                            "no token: the authority kept failing for {} s: {last}",
                            waited.as_secs()
                        ),
                        None => format!(
                            "no token within {} s (another process may be fetching one)",
                            waited.as_secs()
                        ),
                    },
                );
                if let Some(last) = last_error {
                    e = e.detail(format!("last error: {last:?}"));
                }
                e
            }
            GetTokenError::NoCacheDir => CliError::usage(format!(
                "{error}; name a cache file with --cache PATH, or use --no-cache"
            )),
            _ => CliError::other(error.to_string()),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}
