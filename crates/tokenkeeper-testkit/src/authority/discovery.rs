//! The authority's metadata (OpenID Connect Discovery 1.0, RFC 8414), with knobs for tests.
//!
//! A `GET` of `{issuer}/.well-known/openid-configuration` or of
//! `/.well-known/oauth-authorization-server{issuer path}` answers a document whose `issuer` is
//! the authority's [`discovery_issuer`](crate::Authority::discovery_issuer) (its base URL, plus
//! the path set with [`set_issuer_path`](crate::Authority::set_issuer_path)) and whose
//! `token_endpoint` is where tokens are issued now (see
//! [`move_token_endpoint`](crate::Authority::move_token_endpoint)). Tests can make the document
//! name another issuer ([`set_metadata_issuer`](crate::Authority::set_metadata_issuer)) or
//! serve only one of the two documents ([`serve_metadata`](crate::Authority::serve_metadata)).
//! Metadata requests are logged like every other request (method `GET`, their path, outcome
//! [`Outcome::MetadataServed`](super::Outcome::MetadataServed) or `NotFound`).

use std::sync::{Mutex, MutexGuard};

use serde_json::{Value, json};

use super::device::DEVICE_PATH;
use super::server::TOKEN_PATH;

/// The OpenID Connect well-known suffix, appended to the issuer.
pub(crate) const OPENID_CONFIGURATION: &str = "/.well-known/openid-configuration";
/// The RFC 8414 well-known prefix, inserted before the issuer's path.
pub(crate) const OAUTH_AUTHORIZATION_SERVER: &str = "/.well-known/oauth-authorization-server";

/// What the metadata says and where it is served; changed by tests.
#[derive(Debug)]
pub(crate) struct Discovery(Mutex<Knobs>);

#[derive(Debug, Clone)]
struct Knobs {
    /// `scheme://host:port`, set once the server is bound.
    base_url: String,
    /// The path of the issuer (empty, or `/tenant`), without a trailing `/`.
    issuer_path: String,
    /// Where the token endpoint is now.
    token_path: String,
    /// The `issuer` the document names instead of the real one.
    issuer_override: Option<String>,
    serve_openid: bool,
    serve_oauth: bool,
}

impl Default for Discovery {
    fn default() -> Self {
        Discovery(Mutex::new(Knobs {
            base_url: String::new(),
            issuer_path: String::new(),
            token_path: TOKEN_PATH.to_owned(),
            issuer_override: None,
            serve_openid: true,
            serve_oauth: true,
        }))
    }
}

impl Discovery {
    fn lock(&self) -> MutexGuard<'_, Knobs> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn set_base_url(&self, base_url: String) {
        self.lock().base_url = base_url;
    }

    /// Whether `path` is the token endpoint's now.
    pub(crate) fn is_token_path(&self, path: &str) -> bool {
        self.lock().token_path == path
    }

    pub(crate) fn token_path(&self) -> String {
        self.lock().token_path.clone()
    }

    pub(crate) fn set_token_path(&self, path: &str) {
        self.lock().token_path = path.to_owned();
    }

    pub(crate) fn set_issuer_path(&self, path: &str) {
        self.lock().issuer_path = path.trim_end_matches('/').to_owned();
    }

    pub(crate) fn set_issuer_override(&self, issuer: Option<String>) {
        self.lock().issuer_override = issuer;
    }

    pub(crate) fn serve(&self, openid: bool, oauth: bool) {
        let mut knobs = self.lock();
        knobs.serve_openid = openid;
        knobs.serve_oauth = oauth;
    }

    /// The issuer identifier: the base URL and the issuer path.
    pub(crate) fn issuer(&self) -> String {
        let knobs = self.lock();
        format!("{}{}", knobs.base_url, knobs.issuer_path)
    }

    /// Whether `path` is one of the two metadata locations (served or not).
    pub(crate) fn is_metadata_path(&self, path: &str) -> bool {
        let knobs = self.lock();
        path == format!("{}{OPENID_CONFIGURATION}", knobs.issuer_path)
            || path == format!("{OAUTH_AUTHORIZATION_SERVER}{}", knobs.issuer_path)
    }

    /// The document a `GET` of `path` answers, when that location is served.
    pub(crate) fn document(&self, path: &str) -> Option<Value> {
        let knobs = self.lock().clone();
        let served = (knobs.serve_openid
            && path == format!("{}{OPENID_CONFIGURATION}", knobs.issuer_path))
            || (knobs.serve_oauth
                && path == format!("{OAUTH_AUTHORIZATION_SERVER}{}", knobs.issuer_path));
        if !served {
            return None;
        }
        let issuer = knobs
            .issuer_override
            .clone()
            .unwrap_or_else(|| format!("{}{}", knobs.base_url, knobs.issuer_path));
        Some(json!({
            "issuer": issuer,
            "token_endpoint": format!("{}{}", knobs.base_url, knobs.token_path),
            "device_authorization_endpoint": format!("{}{DEVICE_PATH}", knobs.base_url),
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "private_key_jwt",
                "client_secret_jwt",
                "tls_client_auth",
                "self_signed_tls_client_auth",
            ],
            "token_endpoint_auth_signing_alg_values_supported": [
                "RS256", "PS256", "ES256", "EdDSA", "HS256",
            ],
            "grant_types_supported": [
                "client_credentials",
                "refresh_token",
                "urn:ietf:params:oauth:grant-type:jwt-bearer",
                "urn:ietf:params:oauth:grant-type:token-exchange",
                "urn:ietf:params:oauth:grant-type:device_code",
            ],
            "dpop_signing_alg_values_supported": ["ES256", "RS256", "EdDSA"],
        }))
    }
}
