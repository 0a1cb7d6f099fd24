//! Building token requests.

use std::fmt;

use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request};
use url::form_urlencoded;
use zeroize::Zeroize;

use super::assertion::{AssertionTemplate, CLIENT_ASSERTION_TYPE};
use super::dpop::DpopClaims;
use super::{AuthMethod, GrantType, OAuth2Client, base64};
use crate::error::FetchError;
use crate::secret::RefreshToken;

/// A token request ready to send: `POST`, form-encoded, with client
/// authentication. Its `Debug` hides the body and the `Authorization` header,
/// and the body is zeroed on drop unless taken out with [`TokenRequest::into_http`].
pub struct TokenRequest {
    inner: Request<Vec<u8>>,
    dpop: Option<DpopClaims>,
    client_assertion: Option<AssertionTemplate>,
    grant_assertion: Option<AssertionTemplate>,
    /// A token exchange's needs: the subject token, and whether an actor
    /// token too.
    exchange: Option<ExchangeNeeds>,
}

/// What a token exchange request still needs from the driver.
#[derive(Debug, Clone, Copy)]
struct ExchangeNeeds {
    actor: bool,
}

impl TokenRequest {
    /// Whether the request is a token exchange (RFC 8693) that must carry a
    /// `subject_token`: the driver adds it with
    /// [`add_subject_token`](super::exchange::add_subject_token).
    pub fn subject_token_needed(&self) -> bool {
        self.exchange.is_some()
    }

    /// Whether the request must carry an `actor_token` too: the driver adds
    /// it with [`add_actor_token`](super::exchange::add_actor_token).
    pub fn actor_token_needed(&self) -> bool {
        self.exchange.is_some_and(|needs| needs.actor)
    }

    /// What the client assertion this request must carry claims, for a
    /// client that authenticates with one (`private_key_jwt`,
    /// `client_secret_jwt`): the body already holds `client_id` and
    /// `client_assertion_type`; the driver completes the claims
    /// ([`AssertionTemplate::claims_at`], with its clock and a random id),
    /// signs them (or takes an assertion made elsewhere) and adds it with
    /// [`add_client_assertion`](super::assertion::add_client_assertion).
    pub fn client_assertion(&self) -> Option<&AssertionTemplate> {
        self.client_assertion.as_ref()
    }

    /// What the JWT bearer grant's assertion claims (for an external one:
    /// only its audience and lifetime mean anything); the driver adds it
    /// with [`add_grant_assertion`](super::assertion::add_grant_assertion).
    pub fn grant_assertion(&self) -> Option<&AssertionTemplate> {
        self.grant_assertion.as_ref()
    }

    /// The claims of the DPoP proof this request must carry (RFC 9449), for
    /// a DPoP-bound client: the driver signs them and sends the proof in
    /// the `DPoP` header.
    pub fn dpop_claims(&self) -> Option<&DpopClaims> {
        self.dpop.as_ref()
    }

    pub(crate) fn with_dpop(mut self, claims: DpopClaims) -> Self {
        self.dpop = Some(claims);
        self
    }

    /// A request that carries no credentials and needs nothing added (a
    /// metadata `GET`, [`discovery`](super::discovery)).
    pub(crate) fn plain(inner: Request<Vec<u8>>) -> Self {
        TokenRequest {
            inner,
            dpop: None,
            client_assertion: None,
            grant_assertion: None,
            exchange: None,
        }
    }

    /// The request, for inspection.
    pub fn as_http(&self) -> &Request<Vec<u8>> {
        &self.inner
    }

    /// Takes the request out to send it. The body holds secrets.
    pub fn into_http(mut self) -> Request<Vec<u8>> {
        std::mem::replace(&mut self.inner, Request::new(Vec::new()))
    }
}

impl Drop for TokenRequest {
    fn drop(&mut self) {
        self.inner.body_mut().zeroize();
    }
}

impl fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRequest")
            .field("method", self.inner.method())
            .field("uri", &RedactedUri(self.inner.uri()))
            .field("body_len", &self.inner.body().len())
            .field("dpop", &self.dpop.is_some())
            .field("client_assertion", &self.client_assertion.is_some())
            .field("grant_assertion", &self.grant_assertion.is_some())
            .field("subject_token_needed", &self.subject_token_needed())
            .finish_non_exhaustive()
    }
}

/// A URI as `scheme://authority/path`, its query (which may hold a key)
/// shown only as `?<redacted>`.
struct RedactedUri<'a>(&'a http::Uri);

impl fmt::Debug for RedactedUri<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let uri = self.0;
        if let Some(scheme) = uri.scheme_str() {
            write!(f, "{scheme}://")?;
        }
        if let Some(authority) = uri.authority() {
            // A token URL carries no user info; should one, show the host only.
            f.write_str(authority.host())?;
            if let Some(port) = authority.port_u16() {
                write!(f, ":{port}")?;
            }
        }
        f.write_str(uri.path())?;
        if uri.query().is_some() {
            f.write_str("?<redacted>")?;
        }
        Ok(())
    }
}

/// RFC 6749 §2.3.1: the id and secret are form-urlencoded before base64.
fn form_encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

pub(super) fn build(
    client: &OAuth2Client,
    refresh_token: Option<&RefreshToken>,
) -> Result<TokenRequest, FetchError> {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", client.grant.as_str());
    if client.grant == GrantType::RefreshToken {
        let rt = refresh_token.ok_or(FetchError::NoRefreshToken)?;
        form.append_pair("refresh_token", rt.expose_secret());
    }
    let grant_assertion = match (client.grant, &client.grant_assertion) {
        (GrantType::JwtBearer, Some(assertion)) => {
            Some(assertion.template(client.token_url.as_str()))
        }
        (GrantType::JwtBearer, None) => {
            return Err(FetchError::Assertion {
                problem: super::assertion::AssertionProblem::Misconfigured,
                message: "the JWT bearer grant needs a GrantAssertion".into(),
            });
        }
        _ => None,
    };
    let exchange = match (client.grant, &client.token_exchange) {
        (GrantType::TokenExchange, Some(exchange)) => {
            exchange.append_to(&mut form);
            Some(ExchangeNeeds {
                actor: exchange.actor_token_type().is_some(),
            })
        }
        (GrantType::TokenExchange, None) => {
            return Err(FetchError::Assertion {
                problem: super::assertion::AssertionProblem::Misconfigured,
                message:
                    "the token exchange grant needs a TokenExchange (the subject token's type)"
                        .into(),
            });
        }
        _ => None,
    };
    append_parameters(client, &mut form);
    let mut request = authenticated(client, form, client.token_url.as_str())?;
    request.grant_assertion = grant_assertion;
    request.exchange = exchange;
    Ok(request)
}

/// Adds what the client asks for: scope, audience, resources and extra
/// parameters.
pub(super) fn append_parameters(
    client: &OAuth2Client,
    form: &mut form_urlencoded::Serializer<'_, String>,
) {
    if let Some(scope) = &client.scope {
        form.append_pair("scope", scope);
    }
    if let Some(audience) = &client.audience {
        form.append_pair("audience", audience);
    }
    for resource in &client.resources {
        form.append_pair("resource", resource);
    }
    for (k, v) in &client.extra_params {
        form.append_pair(k, v);
    }
}

/// Finishes a form into a `POST` to `url` with the client's authentication
/// (the one way every request of a client authenticates: the token
/// endpoint's, and the device authorization endpoint's).
pub(super) fn authenticated(
    client: &OAuth2Client,
    mut form: form_urlencoded::Serializer<'_, String>,
    url: &str,
) -> Result<TokenRequest, FetchError> {
    let mut client_assertion = None;
    let mut authorization = None;
    match (&client.client_secret, client.auth_method) {
        // The TLS connection authenticates; the secret, if any, stays here.
        (_, AuthMethod::TlsClientAuth | AuthMethod::SelfSignedTlsClientAuth) => {
            form.append_pair("client_id", client.client_id.as_str());
        }
        // A JWT authenticates, which the driver adds; the secret (the HMAC
        // key of client_secret_jwt) never travels.
        (_, AuthMethod::PrivateKeyJwt | AuthMethod::ClientSecretJwt) => {
            form.append_pair("client_id", client.client_id.as_str());
            form.append_pair("client_assertion_type", CLIENT_ASSERTION_TYPE);
            client_assertion = Some(
                client
                    .client_assertion
                    .template(client.client_id.as_str(), client.token_url.as_str()),
            );
        }
        (Some(secret), AuthMethod::ClientSecretBasic) => {
            let mut pair = format!(
                "{}:{}",
                form_encode(client.client_id.as_str()),
                form_encode(secret.expose_secret())
            );
            let mut value = format!("Basic {}", base64::encode(pair.as_bytes()));
            pair.zeroize();
            let header = HeaderValue::from_str(&value);
            value.zeroize();
            let mut header = header.map_err(|_| FetchError::Transport {
                message: "the client credentials do not fit in a header".into(),
            })?;
            header.set_sensitive(true);
            authorization = Some(header);
        }
        (Some(secret), AuthMethod::ClientSecretPost) => {
            form.append_pair("client_id", client.client_id.as_str());
            form.append_pair("client_secret", secret.expose_secret());
        }
        // A public client identifies itself in the body (RFC 6749 §3.2.1).
        (None, _) => {
            form.append_pair("client_id", client.client_id.as_str());
        }
    }
    let body = form.finish().into_bytes();
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(url)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(ACCEPT, "application/json");
    if let Some(h) = authorization {
        builder = builder.header(AUTHORIZATION, h);
    }
    let inner = builder.body(body).map_err(|e| FetchError::Transport {
        message: format!("could not build the request: {e}"),
    })?;
    Ok(TokenRequest {
        inner,
        dpop: None,
        client_assertion,
        grant_assertion: None,
        exchange: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::{ClientId, ClientSecret};

    fn form(req: &TokenRequest) -> Vec<(String, String)> {
        form_urlencoded::parse(req.as_http().body())
            .into_owned()
            .collect()
    }

    #[test]
    fn basic_auth_encodes_before_base64() {
        let client = OAuth2Client::client_credentials(
            "https://a.example/token",
            ClientId::new("my client:1"),
            ClientSecret::new("p@ss+wörd"),
        )
        .unwrap();
        let req = client.build_request(None).unwrap();
        let auth = req.as_http().headers()[AUTHORIZATION].to_str().unwrap();
        // "my+client%3A1:p%40ss%2Bw%C3%B6rd", base64-encoded.
        assert_eq!(
            auth,
            format!(
                "Basic {}",
                base64::encode(b"my+client%3A1:p%40ss%2Bw%C3%B6rd")
            )
        );
        assert!(req.as_http().headers()[AUTHORIZATION].is_sensitive());
        assert_eq!(
            form(&req),
            vec![("grant_type".into(), "client_credentials".into())]
        );
        assert_eq!(req.as_http().method(), Method::POST);
        assert_eq!(
            req.as_http().headers()[CONTENT_TYPE],
            "application/x-www-form-urlencoded"
        );
    }

    #[test]
    fn post_auth_and_all_parameters() {
        let client = OAuth2Client::client_credentials(
            "https://a.example/token",
            ClientId::new("cid"),
            ClientSecret::new("a&b=c"),
        )
        .unwrap()
        .auth_method(AuthMethod::ClientSecretPost)
        .scope("read write")
        .audience("https://api.example")
        .resource("https://r1.example")
        .resource("https://r2.example")
        .extra_param("tenant", "t 1")
        .unwrap();
        let req = client.build_request(None).unwrap();
        assert!(req.as_http().headers().get(AUTHORIZATION).is_none());
        let pairs = form(&req);
        let expect = |k: &str, v: &str| {
            assert!(
                pairs.contains(&(k.to_owned(), v.to_owned())),
                "{k}={v} missing"
            );
        };
        expect("grant_type", "client_credentials");
        expect("client_id", "cid");
        expect("client_secret", "a&b=c");
        expect("scope", "read write");
        expect("audience", "https://api.example");
        expect("resource", "https://r1.example");
        expect("resource", "https://r2.example");
        expect("tenant", "t 1");
    }

    #[test]
    fn refresh_grant_needs_and_sends_the_refresh_token() {
        let client =
            OAuth2Client::refresh_token("https://a.example/token", ClientId::new("public"), None)
                .unwrap();
        assert_eq!(
            client.build_request(None).unwrap_err(),
            FetchError::NoRefreshToken
        );
        let req = client
            .build_request(Some(&RefreshToken::new("rt-1")))
            .unwrap();
        let pairs = form(&req);
        assert!(pairs.contains(&("grant_type".into(), "refresh_token".into())));
        assert!(pairs.contains(&("refresh_token".into(), "rt-1".into())));
        assert!(pairs.contains(&("client_id".into(), "public".into())));
        let shown = format!("{req:?}");
        assert!(!shown.contains("rt-1"), "{shown}");
    }
}
