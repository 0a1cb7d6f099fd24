//! Token exchange (RFC 8693): a token the client holds (the *subject
//! token*: a platform's identity token, another authority's access token)
//! is exchanged for one for another audience or resource.
//!
//! The core decides the request (`grant_type`, the token types, the
//! requested type; `audience`, `resource` and `scope` are the client's
//! usual [`audience`](super::OAuth2Client::audience),
//! [`resource`](super::OAuth2Client::resource) and
//! [`scope`](super::OAuth2Client::scope)); the subject token itself (and the
//! actor token) are secrets it never holds: the request says it needs them
//! ([`TokenRequest::subject_token_needed`](super::TokenRequest::subject_token_needed)),
//! and the driver adds them right before sending ([`add_subject_token`],
//! [`add_actor_token`]), from a file, a callback or another watcher's token.
//!
//! ```
//! use tokenkeeper_core::oauth2::OAuth2Client;
//! use tokenkeeper_core::oauth2::exchange::{TokenExchange, JWT_TOKEN_TYPE, ACCESS_TOKEN_TYPE};
//! use tokenkeeper_core::ClientId;
//!
//! let exchange = TokenExchange::new(JWT_TOKEN_TYPE)
//!     .subject_label("file:/var/run/secrets/tokens/platform")
//!     .requested_token_type(ACCESS_TOKEN_TYPE);
//! let client = OAuth2Client::token_exchange(
//!     "https://auth.example/token",
//!     ClientId::new("api-gateway"),
//!     exchange,
//! )?
//! .audience("https://api.example");
//! let request = client.build_request(None)?;
//! assert!(request.subject_token_needed());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The issued token's type (`issued_token_type`) is kept in the record
//! ([`TokenRecord::issued_token_type`](crate::TokenRecord::issued_token_type)).
//! Cache keys name the token types, the requested type and the labels of
//! the subject and actor sources, never a token.

use serde_json::{Map, Value};

/// The `grant_type` of token exchange (RFC 8693 §2.1).
pub const TOKEN_EXCHANGE_GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// An OAuth 2.0 access token (RFC 8693 §3).
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// An OAuth 2.0 refresh token (RFC 8693 §3).
pub const REFRESH_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:refresh_token";
/// An OpenID Connect ID token (RFC 8693 §3).
pub const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
/// A JWT (RFC 8693 §3): a platform's identity token, say.
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// The response field that says what was issued (RFC 8693 §2.2.1).
pub const ISSUED_TOKEN_TYPE_FIELD: &str = "issued_token_type";

/// One token a token exchange presents: its type, and a label naming where
/// it comes from (a file's path, the watcher it is taken from), which tells
/// cache slots apart. Neither is secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Presented {
    token_type: String,
    label: Option<String>,
}

impl Presented {
    fn key_part(&self, map: &mut Map<String, Value>, prefix: &str) {
        map.insert(
            format!("{prefix}_type"),
            Value::String(self.token_type.clone()),
        );
        if let Some(label) = &self.label {
            map.insert(prefix.to_owned(), Value::String(label.clone()));
        }
    }
}

/// What a token exchange (RFC 8693) presents and asks for, less the tokens
/// themselves: the subject token's type, an optional actor token's type,
/// and the type of token wanted. Nothing in it is secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenExchange {
    subject: Presented,
    actor: Option<Presented>,
    requested: Option<String>,
}

impl TokenExchange {
    /// An exchange of a subject token of type `subject_token_type` (a URI
    /// such as [`JWT_TOKEN_TYPE`] or [`ACCESS_TOKEN_TYPE`]).
    pub fn new(subject_token_type: impl Into<String>) -> Self {
        TokenExchange {
            subject: Presented {
                token_type: subject_token_type.into(),
                label: None,
            },
            actor: None,
            requested: None,
        }
    }

    /// Names where the subject token comes from (not the token): tokens
    /// exchanged for different subjects never share a cache slot. The
    /// drivers set it from the subject token's source when it is not set.
    pub fn subject_label(mut self, label: impl Into<String>) -> Self {
        self.subject.label = Some(label.into());
        self
    }

    /// Presents an actor token of type `actor_token_type` too (delegation,
    /// RFC 8693 §1.1).
    pub fn actor(mut self, actor_token_type: impl Into<String>) -> Self {
        self.actor = Some(Presented {
            token_type: actor_token_type.into(),
            label: self.actor.and_then(|a| a.label),
        });
        self
    }

    /// Names where the actor token comes from, as
    /// [`subject_label`](Self::subject_label). Only with [`actor`](Self::actor).
    pub fn actor_label(mut self, label: impl Into<String>) -> Self {
        if let Some(actor) = &mut self.actor {
            actor.label = Some(label.into());
        }
        self
    }

    /// Asks for a token of this type (`requested_token_type`).
    pub fn requested_token_type(mut self, token_type: impl Into<String>) -> Self {
        self.requested = Some(token_type.into());
        self
    }

    /// The subject token's type.
    pub fn subject_token_type(&self) -> &str {
        &self.subject.token_type
    }

    /// The label of the subject token's source, if set.
    pub fn get_subject_label(&self) -> Option<&str> {
        self.subject.label.as_deref()
    }

    /// The actor token's type, when one is presented.
    pub fn actor_token_type(&self) -> Option<&str> {
        self.actor.as_ref().map(|a| a.token_type.as_str())
    }

    /// The label of the actor token's source, if set.
    pub fn get_actor_label(&self) -> Option<&str> {
        self.actor.as_ref().and_then(|a| a.label.as_deref())
    }

    /// The requested token type, if any.
    pub fn get_requested_token_type(&self) -> Option<&str> {
        self.requested.as_deref()
    }

    /// The form parameters the core sets (the tokens are the driver's).
    pub(crate) fn append_to(&self, form: &mut url::form_urlencoded::Serializer<'_, String>) {
        form.append_pair("subject_token_type", &self.subject.token_type);
        if let Some(actor) = &self.actor {
            form.append_pair("actor_token_type", &actor.token_type);
        }
        if let Some(requested) = &self.requested {
            form.append_pair("requested_token_type", requested);
        }
    }

    /// The part of the cache key that tells this exchange's tokens apart.
    pub(crate) fn key_part(&self) -> Value {
        let mut part = Map::new();
        self.subject.key_part(&mut part, "subject");
        if let Some(actor) = &self.actor {
            actor.key_part(&mut part, "actor");
        }
        if let Some(requested) = &self.requested {
            part.insert("requested".into(), Value::String(requested.clone()));
        }
        serde_json::json!({ "exchange": part })
    }
}

/// Adds the subject token to a token exchange request
/// ([`TokenRequest::subject_token_needed`](super::TokenRequest::subject_token_needed)):
/// the `subject_token` form parameter. The old body is zeroed.
pub fn add_subject_token(request: &mut http::Request<Vec<u8>>, token: &str) {
    super::assertion::append_pair(request, "subject_token", token);
}

/// Adds the actor token to a token exchange request
/// ([`TokenRequest::actor_token_needed`](super::TokenRequest::actor_token_needed)):
/// the `actor_token` form parameter. The old body is zeroed.
pub fn add_actor_token(request: &mut http::Request<Vec<u8>>, token: &str) {
    super::assertion::append_pair(request, "actor_token", token);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth2::{AuthMethod, ConfigError, GrantType, OAuth2Client};
    use crate::{CacheKey, ClientId, ClientSecret, Timestamp, TokenRecord};

    fn form(request: &crate::oauth2::TokenRequest) -> Vec<(String, String)> {
        url::form_urlencoded::parse(request.as_http().body())
            .into_owned()
            .collect()
    }

    fn client(exchange: TokenExchange) -> OAuth2Client {
        OAuth2Client::token_exchange("https://a.example/token", ClientId::new("gw"), exchange)
            .unwrap()
    }

    #[test]
    fn requests_carry_the_types_and_leave_the_tokens_to_the_driver() {
        let c = client(
            TokenExchange::new(JWT_TOKEN_TYPE)
                .actor(ACCESS_TOKEN_TYPE)
                .requested_token_type(ACCESS_TOKEN_TYPE),
        )
        .with_client_secret(ClientSecret::new("gw-secret"))
        .auth_method(AuthMethod::ClientSecretPost)
        .audience("https://api.example")
        .resource("https://r1.example")
        .resource("https://r2.example")
        .scope("read");
        assert_eq!(c.grant(), GrantType::TokenExchange);
        assert_eq!(c.grant().as_str(), TOKEN_EXCHANGE_GRANT_TYPE);
        let request = c.build_request(None).unwrap();
        assert!(request.subject_token_needed());
        assert!(request.actor_token_needed());
        let pairs = form(&request);
        for (k, v) in [
            ("grant_type", TOKEN_EXCHANGE_GRANT_TYPE),
            ("subject_token_type", JWT_TOKEN_TYPE),
            ("actor_token_type", ACCESS_TOKEN_TYPE),
            ("requested_token_type", ACCESS_TOKEN_TYPE),
            ("audience", "https://api.example"),
            ("resource", "https://r1.example"),
            ("resource", "https://r2.example"),
            ("scope", "read"),
            ("client_id", "gw"),
        ] {
            assert!(
                pairs.contains(&(k.into(), v.into())),
                "{k}={v} in {pairs:?}"
            );
        }
        assert!(!pairs.iter().any(|(k, _)| k == "subject_token"));
        let mut http = request.into_http();
        add_subject_token(&mut http, "sub.jwt+x");
        add_actor_token(&mut http, "act");
        let body = String::from_utf8(http.body().clone()).unwrap();
        assert!(
            body.ends_with("&subject_token=sub.jwt%2Bx&actor_token=act"),
            "{body}"
        );

        // Without an actor: no actor parameters, no actor needed.
        let plain = client(TokenExchange::new(ACCESS_TOKEN_TYPE));
        let request = plain.build_request(None).unwrap();
        assert!(request.subject_token_needed() && !request.actor_token_needed());
        assert!(!form(&request).iter().any(|(k, _)| k.starts_with("actor")));
        // Other grants need neither.
        let cc = OAuth2Client::client_credentials(
            "https://a.example/token",
            ClientId::new("gw"),
            ClientSecret::new("s"),
        )
        .unwrap();
        assert!(!cc.build_request(None).unwrap().subject_token_needed());
    }

    #[test]
    fn token_parameters_are_reserved() {
        for name in [
            "subject_token",
            "subject_token_type",
            "actor_token",
            "actor_token_type",
            "requested_token_type",
        ] {
            assert_eq!(
                client(TokenExchange::new(JWT_TOKEN_TYPE))
                    .extra_param(name, "x")
                    .unwrap_err(),
                ConfigError::ReservedParameter(name.into())
            );
        }
    }

    #[test]
    fn keys_name_every_parameter_that_matters_and_no_token() {
        let base = TokenExchange::new(JWT_TOKEN_TYPE).subject_label("file:/a");
        let clients = [
            client(base.clone()),
            client(base.clone()).audience("https://one"),
            client(base.clone()).audience("https://two"),
            client(base.clone()).resource("https://r"),
            client(base.clone()).scope("read"),
            client(base.clone().requested_token_type(ID_TOKEN_TYPE)),
            client(base.clone().actor(ACCESS_TOKEN_TYPE)),
            client(
                base.clone()
                    .actor(ACCESS_TOKEN_TYPE)
                    .actor_label("file:/actor"),
            ),
            client(TokenExchange::new(ACCESS_TOKEN_TYPE).subject_label("file:/a")),
            client(TokenExchange::new(JWT_TOKEN_TYPE).subject_label("file:/b")),
        ];
        let keys: Vec<CacheKey> = clients.iter().map(CacheKey::for_client).collect();
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b, "{} vs {}", a.description(), b.description());
            }
        }
        assert!(
            keys[0].description().contains("file:/a"),
            "{}",
            keys[0].description()
        );
        assert!(keys[0].description().contains(JWT_TOKEN_TYPE));
        // The same settings, the same slot.
        assert_eq!(keys[0], CacheKey::for_client(&client(base)));
    }

    #[test]
    fn issued_token_types_are_kept_and_n_a_is_accepted() {
        let c = client(TokenExchange::new(JWT_TOKEN_TYPE).requested_token_type(JWT_TOKEN_TYPE));
        let body = format!(
            r#"{{"access_token":"j.w.t","token_type":"N_A","expires_in":60,"issued_token_type":"{JWT_TOKEN_TYPE}"}}"#
        );
        let now = Timestamp::from_secs(1_000);
        let grant = c
            .read_response(200, &http::HeaderMap::new(), body.as_bytes(), now)
            .unwrap();
        assert_eq!(grant.issued_token_type(), Some(JWT_TOKEN_TYPE));
        let record: TokenRecord = crate::LifetimePolicy::default().record(grant, now, None);
        assert_eq!(record.issued_token_type(), Some(JWT_TOKEN_TYPE));
        // N_A is for token exchange only.
        let cc = OAuth2Client::client_credentials(
            "https://a.example/token",
            ClientId::new("gw"),
            ClientSecret::new("s"),
        )
        .unwrap();
        assert!(
            cc.read_response(200, &http::HeaderMap::new(), body.as_bytes(), now)
                .is_err()
        );
    }
}
