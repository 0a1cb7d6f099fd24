//! What the authority remembers: the request log and the tokens it handed out.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use super::assertion::PresentedAssertion;
use super::dpop::{DpopError, DpopProof};
use super::fault::Fault;

/// How a request presented client credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PresentedAuth {
    /// No credentials: no `Authorization` header and no `client_secret` in the body.
    None,
    /// `Authorization: Basic ..` (`client_secret_basic`).
    Basic,
    /// `client_secret` in the form body (`client_secret_post`).
    Post,
    /// Both at once, which RFC 6749 §2.3 forbids (answered with `invalid_request`).
    Both,
    /// An `Authorization` header with another scheme, or one that could not be decoded.
    Malformed,
    /// No secret, but the connection presented a client certificate (RFC 8705 mutual TLS);
    /// [`TlsSession::client_certificate`] tells which.
    Certificate,
    /// A `client_assertion` (RFC 7523 §2.2: `private_key_jwt`, `client_secret_jwt`);
    /// [`RequestRecord::client_assertion`] tells what it said.
    Assertion,
}

/// The TLS protocol version of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TlsVersion {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
    /// Another version (the server never negotiates one).
    Other,
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsVersion::Tls12 => "TLSv1.2",
            TlsVersion::Tls13 => "TLSv1.3",
            TlsVersion::Other => "TLS (other)",
        })
    }
}

/// A client certificate presented on a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PresentedCertificate {
    /// Its base64url SHA-256 thumbprint, which RFC 8705 calls `x5t#S256`: what a token bound to
    /// it carries in `cnf`.
    pub x5t_s256: String,
    /// The first common name of its subject.
    pub common_name: Option<String>,
    /// Its DNS, URI, e-mail and IP subject alternative names.
    pub alt_names: Vec<String>,
    /// Whether it (with the intermediates sent along) chains to the client CA of the
    /// authority's [`Pki`](crate::pki::Pki) and is valid now.
    pub chains_to_client_ca: bool,
}

/// The TLS side of a connection over which a request arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsSession {
    /// The negotiated protocol version.
    pub version: TlsVersion,
    /// The client certificate, if one was presented.
    pub client_certificate: Option<PresentedCertificate>,
}

/// A TLS connection that failed before any request: the handshake failed or timed out.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsFailure {
    /// When it failed.
    pub at: SystemTime,
    /// The client's address.
    pub peer: SocketAddr,
    /// What went wrong, as the server's TLS library tells it (for example an alert the client
    /// sent because it did not trust the certificate).
    pub error: String,
}

/// What the authority answered to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The answer has not been decided yet (a [`Fault::Delay`] is running).
    Pending,
    /// A token was issued (`200`), possibly with a changed shape (see
    /// [`RequestRecord::fault`]).
    Issued {
        /// The access token handed out.
        access_token: String,
        /// The refresh token handed out, if any.
        refresh_token: Option<String>,
    },
    /// The device authorization endpoint handed out codes (RFC 8628); the person has not
    /// answered yet.
    DeviceCodeIssued {
        /// The user code handed out.
        user_code: String,
    },
    /// The request was refused by normal processing with this OAuth `error` code
    /// (`invalid_request`, `invalid_client`, `invalid_grant`, `unsupported_grant_type`, ...).
    Rejected {
        /// The `error` field of the answer.
        error: String,
    },
    /// A scripted [`Fault`] chose the answer; [`RequestRecord::fault`] tells which.
    Faulted,
    /// The connection was closed without an answer ([`Fault::DropConnection`]).
    Dropped,
    /// The authority was [down](crate::Authority::set_down) and answered `503`.
    Down,
    /// The request was not for the token endpoint and was answered `404`.
    NotFound,
    /// A metadata document was served (`GET` of a well-known location, `200`).
    MetadataServed,
    /// The client went away before the answer was decided; nothing was issued.
    Abandoned,
}

/// One request the authority received, as recorded in its log.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestRecord {
    /// A sequence number, unique for this authority, in order of arrival.
    pub seq: u64,
    /// When the request (headers and body) had been received.
    pub at: SystemTime,
    /// The TLS session of the connection, for an HTTPS authority.
    pub tls: Option<TlsSession>,
    /// The HTTP method.
    pub method: String,
    /// The request path, without query.
    pub path: String,
    /// The `grant_type` parameter, if present.
    pub grant_type: Option<String>,
    /// The client id the request claimed, from the `Authorization: Basic` header or else the
    /// `client_id` body parameter, whether or not it authenticated.
    pub client_id: Option<String>,
    /// Whether the client authenticated successfully.
    pub authenticated: bool,
    /// How credentials were presented.
    pub auth: PresentedAuth,
    /// The `scope` parameter, if present.
    pub scope: Option<String>,
    /// Every `audience` parameter, in order.
    pub audience: Vec<String>,
    /// Every `resource` parameter (RFC 8707), in order.
    pub resource: Vec<String>,
    /// The `refresh_token` parameter, if present.
    pub refresh_token: Option<String>,
    /// Whether the request presented a refresh token that had already been used.
    pub refresh_token_reused: bool,
    /// The DPoP proof the request carried (RFC 9449), if any, and what became of it.
    pub dpop: Option<DpopCheck>,
    /// The `client_assertion` the request carried (RFC 7523 §2.2), if any: its `alg`, `kid`,
    /// `jti`, `iss`, `sub`, `exp`, and why it was refused, if it was.
    pub client_assertion: Option<PresentedAssertion>,
    /// The `assertion` of a JWT bearer grant (RFC 7523 §2.1), if any, likewise.
    pub grant_assertion: Option<PresentedAssertion>,
    /// The `subject_token` of a token exchange (RFC 8693) and its `subject_token_type`, if
    /// present: which subject token each request carried.
    pub subject_token: Option<(String, String)>,
    /// The `actor_token` and its `actor_token_type`, if present.
    pub actor_token: Option<(String, String)>,
    /// The `requested_token_type`, if present.
    pub requested_token_type: Option<String>,
    /// The scripted fault applied to this request, if any.
    pub fault: Option<Fault>,
    /// The HTTP status answered; `None` while pending, or when no answer was written.
    pub status: Option<u16>,
    /// What was answered.
    pub outcome: Outcome,
}

/// A token the authority handed out in a successful answer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct IssuedToken {
    /// The access token.
    pub access_token: String,
    /// The client it was issued to.
    pub client_id: String,
    /// The grant that produced it (`client_credentials` or `refresh_token`).
    pub grant_type: String,
    /// The scope echoed in the answer, if any.
    pub scope: Option<String>,
    /// The lifetime announced in `expires_in` (whole seconds). It is announced even when a
    /// [`Fault::MissingExpiresIn`] left it out of the body.
    pub expires_in: u64,
    /// The refresh token handed out with it, if any.
    pub refresh_token: Option<String>,
    /// When it was issued.
    pub issued_at: SystemTime,
    /// The `x5t#S256` thumbprint of the client certificate the token is bound to (RFC 8705
    /// §3): set when the client authenticated with a certificate. The authority keeps the
    /// binding (as it would put it in the `cnf` claim of a JWT or an introspection answer);
    /// the token answer does not carry it.
    pub bound_to: Option<String>,
    /// The JWK thumbprint (`jkt`, RFC 7638) of the DPoP key the token is bound to (RFC 9449):
    /// set when the request carried a valid proof, and the answer's `token_type` was `DPoP`.
    pub dpop_jkt: Option<String>,
    /// Whom the token is for: the `sub` of a JWT bearer grant's assertion, else the client id.
    pub subject: String,
}

impl IssuedToken {
    /// When the token stops being valid: `issued_at + expires_in`.
    pub fn expires_at(&self) -> SystemTime {
        self.issued_at + Duration::from_secs(self.expires_in)
    }
}

/// A DPoP proof a request carried, as the log keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DpopCheck {
    /// What the (first) proof says, when it could be read at all, even if it was refused:
    /// its `jti`, `nonce`, key thumbprint, ...
    pub proof: Option<DpopProof>,
    /// What the token endpoint made of it.
    pub verdict: DpopVerdict,
}

/// What the token endpoint made of a DPoP proof.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DpopVerdict {
    /// Not looked at: a fault replaced the answer, the authority was down, the client did not
    /// authenticate, or the request was not for the token endpoint.
    NotChecked,
    /// Valid: the token issued is bound to its key.
    Accepted,
    /// Refused, with this reason (answered `invalid_dpop_proof` or `use_dpop_nonce`).
    Refused(DpopError),
}
