//! Why a fetch failed, and whether trying again soon can help.
//!
//! A failed fetch is an *input* to the engine, not a Rust error of its API:
//! drivers report transport failures with [`FetchError`], and the OAuth2
//! response parser turns bad answers into one.

use std::time::Duration;

use crate::text::escape_capped;
use crate::time::Timestamp;

/// Whether an error may go away by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorClass {
    /// Worth retrying with backoff: transport failures, timeouts, 408, 429,
    /// 5xx, unparseable bodies.
    Transient,
    /// The authority rejected the client or grant; retried only at the backoff
    /// cap, and reported as such.
    Permanent,
}

/// The OAuth2 error codes (RFC 6749 §5.2) that mean retrying cannot help.
pub const PERMANENT_OAUTH_ERRORS: [&str; 5] = [
    "invalid_client",
    "unauthorized_client",
    "invalid_grant",
    "invalid_scope",
    "unsupported_grant_type",
];

/// The most characters kept of an OAuth2 `error` code.
pub const MAX_ERROR_CODE_CHARS: usize = 100;
/// The most characters kept of an OAuth2 `error_description` or `error_uri`.
pub const MAX_ERROR_DESCRIPTION_CHARS: usize = 200;
/// The most characters of a [`FetchError::Status`] snippet.
pub const MAX_SNIPPET_CHARS: usize = 400;

/// An error answer in the format of RFC 6749 §5.2.
///
/// The authority writes these fields, and they reach logs: they are kept
/// with control characters (newlines, ANSI escapes) and invisible formatting
/// characters escaped, and cut to [`MAX_ERROR_CODE_CHARS`] and
/// [`MAX_ERROR_DESCRIPTION_CHARS`]. `Display` and `Debug` apply the same
/// rules again, in case a field was changed since.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OAuthError {
    /// The `error` code, such as `invalid_client`.
    pub error: String,
    /// The `error_description`, when given.
    pub description: Option<String>,
    /// The `error_uri`, when given.
    pub uri: Option<String>,
}

impl OAuthError {
    /// An error body with the given code and description, sanitised.
    pub fn new(error: impl Into<String>, description: Option<String>) -> Self {
        Self::sanitised(&error.into(), description.as_deref(), None)
    }

    /// An error body with every field escaped and capped.
    pub(crate) fn sanitised(error: &str, description: Option<&str>, uri: Option<&str>) -> Self {
        let long = |s: &str| escape_capped(s, MAX_ERROR_DESCRIPTION_CHARS);
        OAuthError {
            error: escape_capped(error, MAX_ERROR_CODE_CHARS),
            description: description.map(long),
            uri: uri.map(long),
        }
    }
}

impl std::fmt::Display for OAuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&escape_capped(&self.error, MAX_ERROR_CODE_CHARS))?;
        if let Some(d) = &self.description {
            write!(f, ": {}", escape_capped(d, MAX_ERROR_DESCRIPTION_CHARS))?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for OAuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let long = |s: &String| escape_capped(s, MAX_ERROR_DESCRIPTION_CHARS);
        f.debug_struct("OAuthError")
            .field("error", &escape_capped(&self.error, MAX_ERROR_CODE_CHARS))
            .field("description", &self.description.as_ref().map(long))
            .field("uri", &self.uri.as_ref().map(long))
            .finish()
    }
}

/// Why a token could not be had from the authority.
///
/// No variant ever holds a secret, and none carries raw text from the
/// authority: a [`FetchError::Status`] snippet describes the body without
/// showing a credential, and OAuth2 error fields are escaped and capped
/// ([`OAuthError`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The connection could not be made or broke (DNS, refused, reset, TLS).
    #[error("could not reach the token endpoint: {message}")]
    Transport {
        /// What went wrong.
        message: String,
    },
    /// No complete answer within the time allowed.
    #[error("the token endpoint did not answer within {after:?}")]
    Timeout {
        /// The time allowed.
        after: Duration,
    },
    /// The authority answered with an OAuth2 error.
    #[error("the authority refused the token request (HTTP {status}): {error}")]
    OAuth {
        /// The HTTP status.
        status: u16,
        /// The parsed error body.
        error: OAuthError,
        /// When the authority asked us to come back, if it did.
        retry_after: Option<Timestamp>,
    },
    /// An error status without an OAuth2 error body.
    #[error("the token endpoint answered {}", status_text(*.status, .snippet))]
    Status {
        /// The HTTP status.
        status: u16,
        /// What the answer was, without its secrets: the status, the content
        /// type, the body size, and then the OAuth2 `error` and
        /// `error_description` of a form-encoded body, or a short escaped
        /// start of a text body that names no credential field (`Display`
        /// escapes and caps it again, to [`MAX_SNIPPET_CHARS`]). The values
        /// of a JSON or form body are never shown.
        snippet: String,
        /// When the authority asked us to come back, if it did.
        retry_after: Option<Timestamp>,
    },
    /// A success status whose body is not a usable token response.
    #[error("the token endpoint sent an unusable answer (HTTP {status}): {reason}")]
    InvalidBody {
        /// The HTTP status.
        status: u16,
        /// What is wrong with it (never the body itself).
        reason: String,
    },
    /// The body exceeded the size cap.
    #[error("the token endpoint's answer exceeded {limit} bytes")]
    BodyTooLarge {
        /// The cap.
        limit: usize,
    },
    /// The token is not a bearer token.
    #[error("the authority issued a token of unsupported type {token_type:?}")]
    UnsupportedTokenType {
        /// The type received.
        token_type: String,
    },
    /// The refresh-token grant has no refresh token to send.
    #[error("no refresh token is available for the refresh_token grant")]
    NoRefreshToken,
    /// The TLS connection to the token endpoint could not be set up: the
    /// server's certificate could not be verified, or the two sides could
    /// not agree. Permanent: retrying cannot help until the configuration
    /// (trusted roots, client certificate) or the server changes.
    #[error("TLS with {host} failed: {problem} ({})", problem.remedy())]
    Tls {
        /// The host name the client connected to.
        host: String,
        /// What went wrong.
        problem: TlsProblem,
    },
    /// The URL answered, but not as a token endpoint does: `404`, `405`, a
    /// redirect, or an HTML page. Permanent: the token URL is wrong.
    #[error(
        "the token URL is not a token endpoint: it answered {reason}; check the URL's path, or take it from the issuer's metadata (`token_endpoint` in /.well-known/openid-configuration)"
    )]
    NotATokenEndpoint {
        /// The HTTP status.
        status: u16,
        /// What the answer was: its status and content type, and for a
        /// redirect where it pointed (scheme, host and path only).
        reason: String,
    },
    /// The JWT assertion the request needs (a client assertion, or the JWT
    /// bearer grant's) could not be made or read; the request was not sent.
    /// The message says which key or file and why; it never holds a key or
    /// an assertion.
    #[error("no assertion for the token request: {message}")]
    Assertion {
        /// What kind of problem, and so its class.
        problem: crate::oauth2::assertion::AssertionProblem,
        /// What went wrong.
        message: String,
    },
    /// The token endpoint could not be had from the issuer's metadata
    /// (OpenID Connect Discovery, RFC 8414): the document is not served,
    /// names another issuer, is unusable, or could not be fetched. Classed
    /// as [`DiscoveryError::class`](crate::oauth2::discovery::DiscoveryError::class)
    /// says: a document that does not match the issuer is permanent, a 5xx
    /// or a connection failure transient.
    #[error("could not discover the token endpoint from the issuer's metadata at {url}: {error}")]
    Discovery {
        /// The metadata URL asked last (scheme, host, port and path).
        url: String,
        /// What went wrong.
        error: crate::oauth2::discovery::DiscoveryError,
    },
    /// A custom token source failed.
    #[error("the token source failed: {message}")]
    Source {
        /// What went wrong.
        message: String,
        /// Whether retrying soon can help.
        class: ErrorClass,
    },
}

/// `HTTP 502`, then the snippet, which the response parser starts with the
/// status itself.
fn status_text(status: u16, snippet: &str) -> String {
    let head = format!("HTTP {status}");
    let snippet = escape_capped(snippet, MAX_SNIPPET_CHARS);
    if snippet.is_empty() {
        head
    } else if snippet.starts_with(&head) {
        snippet
    } else {
        format!("{head}: {snippet}")
    }
}

fn status_class(status: u16) -> ErrorClass {
    match status {
        408 | 429 | 500..=599 => ErrorClass::Transient,
        400..=499 => ErrorClass::Permanent,
        _ => ErrorClass::Transient,
    }
}

impl FetchError {
    /// The error with every occurrence of `values` (the credentials the
    /// request carried: the client secret, the refresh token) in its free
    /// text replaced by `<redacted>`: an authority that quotes what it was
    /// sent in an `error_description` or a page must not put a secret in
    /// logs. Values shorter than 4 characters are left alone (they would
    /// redact ordinary words, and hide nothing).
    pub(crate) fn without_values(mut self, values: &[&str]) -> Self {
        let scrub = |text: &mut String| {
            for value in values.iter().filter(|v| v.len() >= 4) {
                if text.contains(value) {
                    *text = text.replace(value, "<redacted>");
                }
            }
        };
        match &mut self {
            FetchError::OAuth { error, .. } => {
                scrub(&mut error.error);
                if let Some(description) = &mut error.description {
                    scrub(description);
                }
                if let Some(uri) = &mut error.uri {
                    scrub(uri);
                }
            }
            FetchError::Status { snippet, .. } => scrub(snippet),
            FetchError::Transport { message } | FetchError::Assertion { message, .. } => {
                scrub(message)
            }
            FetchError::InvalidBody { reason, .. }
            | FetchError::NotATokenEndpoint { reason, .. } => scrub(reason),
            FetchError::UnsupportedTokenType { token_type } => scrub(token_type),
            _ => {}
        }
        self
    }

    /// Whether retrying soon can help.
    ///
    /// OAuth2 errors listed in [`PERMANENT_OAUTH_ERRORS`] are permanent
    /// whatever the status; otherwise 408, 429 and 5xx are transient and
    /// other 4xx statuses permanent (the request itself is wrong).
    pub fn class(&self) -> ErrorClass {
        match self {
            FetchError::Transport { .. }
            | FetchError::Timeout { .. }
            | FetchError::InvalidBody { .. }
            | FetchError::BodyTooLarge { .. } => ErrorClass::Transient,
            FetchError::OAuth { status, error, .. } => {
                if PERMANENT_OAUTH_ERRORS.contains(&error.error.as_str()) {
                    ErrorClass::Permanent
                } else if error.error == "use_dpop_nonce" {
                    // The next attempt carries the server's new nonce.
                    ErrorClass::Transient
                } else {
                    status_class(*status)
                }
            }
            FetchError::Status { status, .. } => status_class(*status),
            FetchError::UnsupportedTokenType { .. }
            | FetchError::NoRefreshToken
            | FetchError::Tls { .. }
            | FetchError::NotATokenEndpoint { .. } => ErrorClass::Permanent,
            FetchError::Source { class, .. } => *class,
            FetchError::Assertion { problem, .. } => problem.class(),
            FetchError::Discovery { error, .. } => error.class(),
        }
    }

    /// Whether this error is permanent.
    pub fn is_permanent(&self) -> bool {
        self.class() == ErrorClass::Permanent
    }

    /// The instant before which the authority asked not to be asked again.
    pub fn retry_after(&self) -> Option<Timestamp> {
        match self {
            FetchError::OAuth { retry_after, .. } | FetchError::Status { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    /// The TLS problem, when the connection's TLS failed.
    pub fn tls_problem(&self) -> Option<TlsProblem> {
        match self {
            FetchError::Tls { problem, .. } => Some(*problem),
            _ => None,
        }
    }

    /// Whether the token endpoint is misconfigured rather than refusing:
    /// its certificate cannot be verified ([`FetchError::Tls`]) or the URL
    /// is not a token endpoint ([`FetchError::NotATokenEndpoint`]), or the
    /// client's assertion cannot be made as configured
    /// ([`AssertionProblem::Misconfigured`](crate::oauth2::assertion::AssertionProblem::Misconfigured)).
    pub fn is_misconfiguration(&self) -> bool {
        matches!(
            self,
            FetchError::Tls { .. }
                | FetchError::NotATokenEndpoint { .. }
                | FetchError::Assertion {
                    problem: crate::oauth2::assertion::AssertionProblem::Misconfigured,
                    ..
                }
        ) || matches!(self, FetchError::Discovery { error, .. } if error.class() == ErrorClass::Permanent)
    }

    /// The OAuth2 error body, when the authority sent one.
    pub fn oauth_error(&self) -> Option<&OAuthError> {
        match self {
            FetchError::OAuth { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Why a TLS connection to the token endpoint failed, as the HTTP stacks of
/// the adapters classify rustls' errors. Each says what to do in
/// [`remedy`](Self::remedy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TlsProblem {
    /// The server's certificate chains to no trusted root: a private CA.
    UnknownIssuer,
    /// The server presented a certificate it signed itself.
    SelfSigned,
    /// The certificate is not valid for the host name connected to.
    NameMismatch,
    /// The certificate has expired (or the clock here is wrong).
    Expired,
    /// The certificate is not valid yet (or the clock here is wrong).
    NotYetValid,
    /// The certificate was revoked.
    Revoked,
    /// The certificate is unusable for another reason (wrong key usage,
    /// a malformed or unsupported certificate).
    BadCertificate,
    /// The server asked for a client certificate and none was configured.
    ClientCertificateRequired,
    /// The server refused the client certificate presented.
    ClientCertificateRejected,
    /// No protocol version in common (a server that speaks only TLS 1.0 or
    /// 1.1, say), or something other than TLS answered (plain http).
    ProtocolMismatch,
    /// The handshake failed for another reason (no cipher suite in common,
    /// the server aborted).
    HandshakeFailure,
}

impl TlsProblem {
    /// What went wrong, in a few words.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsProblem::UnknownIssuer => {
                "its certificate is signed by a CA this client does not trust"
            }
            TlsProblem::SelfSigned => "its certificate is self-signed",
            TlsProblem::NameMismatch => "its certificate is not valid for this host name",
            TlsProblem::Expired => "its certificate has expired",
            TlsProblem::NotYetValid => "its certificate is not valid yet",
            TlsProblem::Revoked => "its certificate was revoked",
            TlsProblem::BadCertificate => "its certificate is unusable",
            TlsProblem::ClientCertificateRequired => {
                "it requires a client certificate and none is configured"
            }
            TlsProblem::ClientCertificateRejected => "it refused the client certificate",
            TlsProblem::ProtocolMismatch => {
                "no TLS version in common, or it does not speak TLS on this port"
            }
            TlsProblem::HandshakeFailure => "the TLS handshake failed",
        }
    }

    /// What to do about it, naming the library's setting and the command's
    /// flag.
    pub fn remedy(self) -> &'static str {
        match self {
            TlsProblem::UnknownIssuer | TlsProblem::SelfSigned => {
                "trust the CA that issued it: HttpSettings::add_root_certificates_file, or --ca-file for the command; \
                 or the system's store: native_roots, --native-roots"
            }
            TlsProblem::NameMismatch => {
                "use the host name the certificate names in the token URL, or have the server's certificate include this name"
            }
            TlsProblem::Expired | TlsProblem::NotYetValid => {
                "check this machine's clock; otherwise the server needs a valid certificate"
            }
            TlsProblem::Revoked | TlsProblem::BadCertificate => {
                "the server needs a valid certificate"
            }
            TlsProblem::ClientCertificateRequired => {
                "configure a client certificate: HttpSettings::client_certificate_files, or --client-cert and --client-key for the command"
            }
            TlsProblem::ClientCertificateRejected => {
                "check that the client certificate is the one registered with the authority, and not expired"
            }
            TlsProblem::ProtocolMismatch => {
                "check the token URL's scheme and port (http:// for a plain-text server); the server must speak TLS 1.2 or 1.3"
            }
            TlsProblem::HandshakeFailure => {
                "the server and this client share no TLS parameters; the server must offer TLS 1.2 or 1.3 with modern cipher suites"
            }
        }
    }
}

impl std::fmt::Display for TlsProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A cache layer that could not be read or written, as reported by a driver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct CacheError {
    /// What sort of failure.
    pub kind: CacheErrorKind,
    /// A human-readable account, without secrets.
    pub message: String,
}

impl CacheError {
    /// A cache error of the given kind.
    pub fn new(kind: CacheErrorKind, message: impl Into<String>) -> Self {
        CacheError {
            kind,
            message: message.into(),
        }
    }
}

/// The sort of a [`CacheError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CacheErrorKind {
    /// The store could not be reached (a Redis server down, say).
    Unavailable,
    /// The store did not answer in time.
    Timeout,
    /// Reading or writing failed (permissions, disk full, ...).
    Io,
    /// Anything else.
    Other,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oauth(status: u16, code: &str) -> FetchError {
        FetchError::OAuth {
            status,
            error: OAuthError {
                error: code.into(),
                description: None,
                uri: None,
            },
            retry_after: None,
        }
    }

    #[test]
    fn classification_follows_the_design() {
        for code in PERMANENT_OAUTH_ERRORS {
            assert_eq!(oauth(400, code).class(), ErrorClass::Permanent, "{code}");
            assert_eq!(oauth(503, code).class(), ErrorClass::Permanent, "{code}");
        }
        assert_eq!(
            oauth(503, "temporarily_unavailable").class(),
            ErrorClass::Transient
        );
        assert_eq!(oauth(400, "invalid_request").class(), ErrorClass::Permanent);
        for status in [408, 429, 500, 502, 503, 504] {
            let e = FetchError::Status {
                status,
                snippet: String::new(),
                retry_after: None,
            };
            assert_eq!(e.class(), ErrorClass::Transient, "{status}");
        }
        assert_eq!(
            FetchError::Timeout {
                after: Duration::from_secs(1)
            }
            .class(),
            ErrorClass::Transient
        );
        assert_eq!(
            FetchError::InvalidBody {
                status: 200,
                reason: "x".into()
            }
            .class(),
            ErrorClass::Transient
        );
    }
}
