//! What an authority grants, and the timed record the engine keeps of it.

use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::secret::{AccessToken, IdToken, RefreshToken};
use crate::text::escape_capped;
use crate::time::Timestamp;

/// A token as the authority handed it out, before any lifetime policy applies.
///
/// Produced by the OAuth2 response parser, or by a custom token source. Its
/// `Debug` shows the secrets as fingerprints and the extra fields by name
/// only: an authority may put anything in them.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct TokenGrant {
    /// The access token.
    pub access_token: AccessToken,
    /// The token type as sent (compare with [`TokenGrant::is_bearer`]).
    pub token_type: String,
    /// Lifetime from receipt, when the authority said.
    pub expires_in: Option<Duration>,
    /// The authority's hint of when to refresh, from receipt, when it gave one.
    pub refresh_in: Option<Duration>,
    /// A new refresh token; `None` keeps the one in use.
    pub refresh_token: Option<RefreshToken>,
    /// An OpenID Connect id token.
    pub id_token: Option<IdToken>,
    /// The granted scope, when the authority said.
    pub scope: Option<String>,
    /// Every other field of the response, kept as sent.
    pub extra: Map<String, Value>,
}

impl TokenGrant {
    /// A bearer grant with the given lifetime and nothing else.
    pub fn bearer(access_token: AccessToken, expires_in: Option<Duration>) -> Self {
        TokenGrant {
            access_token,
            token_type: "Bearer".to_owned(),
            expires_in,
            refresh_in: None,
            refresh_token: None,
            id_token: None,
            scope: None,
            extra: Map::new(),
        }
    }

    /// Whether `token_type` is `Bearer`, compared case-insensitively (RFC 6749 §5.1).
    pub fn is_bearer(&self) -> bool {
        self.token_type.eq_ignore_ascii_case("bearer")
    }

    /// What a token exchange issued (RFC 8693 `issued_token_type`, kept in
    /// [`extra`](Self::extra)), when the authority said.
    pub fn issued_token_type(&self) -> Option<&str> {
        issued_token_type(&self.extra)
    }

    /// Sets the rotated refresh token.
    pub fn with_refresh_token(mut self, refresh_token: RefreshToken) -> Self {
        self.refresh_token = Some(refresh_token);
        self
    }

    /// Sets the authority's refresh hint.
    pub fn with_refresh_in(mut self, refresh_in: Duration) -> Self {
        self.refresh_in = Some(refresh_in);
        self
    }
}

/// A token together with the instants that govern its use.
///
/// Invariant: `issued <= stale <= expiry`. Its `Debug` shows the secrets as
/// fingerprints and the extra fields by name only.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct TokenRecord {
    /// The access token.
    pub access_token: AccessToken,
    /// The token type as sent by the authority.
    pub token_type: String,
    /// The refresh token to use next, when the grant has one.
    pub refresh_token: Option<RefreshToken>,
    /// An OpenID Connect id token.
    pub id_token: Option<IdToken>,
    /// The granted scope.
    pub scope: Option<String>,
    /// When the response arrived.
    pub issued: Timestamp,
    /// From this instant on the token should be replaced.
    pub stale: Timestamp,
    /// From this instant on the token must not be used.
    pub expiry: Timestamp,
    /// Every other field of the response, kept as sent.
    pub extra: Map<String, Value>,
}

fn issued_token_type(extra: &Map<String, Value>) -> Option<&str> {
    extra
        .get(crate::oauth2::exchange::ISSUED_TOKEN_TYPE_FIELD)
        .and_then(Value::as_str)
}

/// The most characters shown of an extra field's name.
const FIELD_NAME_CHARS: usize = 64;

/// Shows the names of extra response fields, never their values (which may
/// be credentials: an `issued_token`, a `session_secret`, ...).
struct FieldNames<'a>(&'a Map<String, Value>);

impl fmt::Debug for FieldNames<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.keys().map(|k| escape_capped(k, FIELD_NAME_CHARS)))
            .finish()
    }
}

impl fmt::Debug for TokenGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenGrant")
            .field("access_token", &self.access_token)
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("refresh_in", &self.refresh_in)
            .field("refresh_token", &self.refresh_token)
            .field("id_token", &self.id_token)
            .field("scope", &self.scope)
            .field("extra", &FieldNames(&self.extra))
            .finish()
    }
}

impl fmt::Debug for TokenRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRecord")
            .field("access_token", &self.access_token)
            .field("token_type", &self.token_type)
            .field("refresh_token", &self.refresh_token)
            .field("id_token", &self.id_token)
            .field("scope", &self.scope)
            .field("issued", &self.issued)
            .field("stale", &self.stale)
            .field("expiry", &self.expiry)
            .field("extra", &FieldNames(&self.extra))
            .finish()
    }
}

/// Where a token stands at a given instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenState {
    /// Usable, and not yet due for replacement.
    Fresh,
    /// Usable, but due for replacement.
    Stale,
    /// Must not be used.
    Expired,
}

impl TokenState {
    /// Fresh or stale.
    pub fn is_usable(self) -> bool {
        matches!(self, TokenState::Fresh | TokenState::Stale)
    }

    /// A lowercase name: `fresh`, `stale` or `expired`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenState::Fresh => "fresh",
            TokenState::Stale => "stale",
            TokenState::Expired => "expired",
        }
    }
}

impl TokenRecord {
    /// The token's state at `now`. A token is never stale before it was issued
    /// (a clock that stepped back does not age it) and always expired at its expiry.
    pub fn state_at(&self, now: Timestamp) -> TokenState {
        if now >= self.expiry {
            TokenState::Expired
        } else if now >= self.stale && now >= self.issued {
            TokenState::Stale
        } else {
            TokenState::Fresh
        }
    }

    /// Whether the token may be used at `now`.
    pub fn is_usable_at(&self, now: Timestamp) -> bool {
        self.state_at(now).is_usable()
    }

    /// The token's whole lifetime.
    pub fn lifetime(&self) -> Duration {
        self.expiry.duration_since(self.issued)
    }

    /// Time left before expiry at `now`.
    pub fn remaining_at(&self, now: Timestamp) -> Duration {
        self.expiry.duration_since(now)
    }

    /// What a token exchange issued (RFC 8693 `issued_token_type`: an
    /// access token, a JWT, an ID token, ...), when the authority said. Kept
    /// in [`extra`](Self::extra), so cache records of every version carry
    /// it.
    pub fn issued_token_type(&self) -> Option<&str> {
        issued_token_type(&self.extra)
    }

    /// The value of an `Authorization` header for this token, `Bearer <token>`.
    /// The result holds the secret: do not log it.
    pub fn authorization_header_value(&self) -> String {
        format!("Bearer {}", self.access_token.expose_secret())
    }
}
