//! What the authority remembers: the request log and the tokens it handed out.

use std::time::{Duration, SystemTime};

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
}

impl IssuedToken {
    /// When the token stops being valid: `issued_at + expires_in`.
    pub fn expires_at(&self) -> SystemTime {
        self.issued_at + Duration::from_secs(self.expires_in)
    }
}
