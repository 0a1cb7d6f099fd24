//! DPoP (RFC 9449): what a proof says, decided here; signing it is the
//! driver's (the core holds no key and does no cryptography).
//!
//! A client bound to a DPoP key (`OAuth2Client::bound_to_dpop_key`) sends a
//! proof with each token request. The refresher fills in the claims of each
//! request's proof ([`DpopClaims`]: method, URL, time, a unique id, and the
//! server's nonce once it gave one) and hands them to the driver with the
//! request ([`TokenRequest::dpop_claims`](super::TokenRequest::dpop_claims));
//! the driver signs them and sends the proof in the `DPoP` header. When the
//! token endpoint answers `use_dpop_nonce` with a `DPoP-Nonce`, the
//! refresher asks again at once with that nonce (once per attempt), which
//! is not a failure.

use serde_json::{Map, Value};
use url::Url;

/// The longest server nonce kept; longer ones are ignored.
const MAX_NONCE_CHARS: usize = 512;

/// The claims of one DPoP proof JWT (RFC 9449 §4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DpopClaims {
    /// The HTTP method of the request (`htm`).
    pub htm: String,
    /// The request URL without query and fragment (`htu`).
    pub htu: String,
    /// When the proof was made, in seconds since the epoch (`iat`).
    pub iat: u64,
    /// A unique id for this proof (`jti`). The refresher draws it from its
    /// seedable generator, so refreshers given the same seed draw the same
    /// ids: a signer that may run so puts an id of its own here (the
    /// driver's `DpopKey::sign_with_fresh_id` does).
    pub jti: String,
    /// The server's nonce, once it gave one (`nonce`).
    pub nonce: Option<String>,
    /// For a resource request: the base64url SHA-256 of the access token
    /// (`ath`), which the signer computes.
    pub ath: Option<String>,
}

impl DpopClaims {
    /// Claims for a request of `method` to `url` at `iat`, with the unique
    /// id `jti` and the server's `nonce`, if any.
    pub fn new(method: &str, url: &Url, iat: u64, jti: String, nonce: Option<String>) -> Self {
        DpopClaims {
            htm: method.to_owned(),
            htu: htu(url),
            iat,
            jti,
            nonce,
            ath: None,
        }
    }

    /// The claims as the JSON object of the proof's payload.
    pub fn to_json(&self) -> String {
        let mut map = Map::new();
        map.insert("jti".into(), Value::String(self.jti.clone()));
        map.insert("htm".into(), Value::String(self.htm.clone()));
        map.insert("htu".into(), Value::String(self.htu.clone()));
        map.insert("iat".into(), Value::from(self.iat));
        if let Some(nonce) = &self.nonce {
            map.insert("nonce".into(), Value::String(nonce.clone()));
        }
        if let Some(ath) = &self.ath {
            map.insert("ath".into(), Value::String(ath.clone()));
        }
        Value::Object(map).to_string()
    }
}

/// The `htu` of a URL: scheme, host, port and path, without query and
/// fragment (RFC 9449 §4.2).
pub fn htu(url: &Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.to_string()
}

/// The server's nonce from a `DPoP-Nonce` header, when it is usable: visible
/// ASCII (RFC 9449 §8.1 allows `NQCHAR`s), not empty, not overlong.
pub fn nonce_from(headers: &http::HeaderMap) -> Option<String> {
    let value = headers.get("dpop-nonce")?.to_str().ok()?.trim();
    let usable = !value.is_empty()
        && value.len() <= MAX_NONCE_CHARS
        && value
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\');
    usable.then(|| value.to_owned())
}

/// A 16-byte random id, hex, from the refresher's seeded generator.
pub(crate) fn jti(rng: &mut fastrand::Rng) -> String {
    format!("{:032x}", rng.u128(..))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_and_htu() {
        let url = Url::parse("https://auth.example/token?tenant=x#frag").unwrap();
        let claims = DpopClaims::new("POST", &url, 1_700_000_000, "id-1".into(), None);
        assert_eq!(claims.htu, "https://auth.example/token");
        let json: Value = serde_json::from_str(&claims.to_json()).unwrap();
        assert_eq!(json["htm"], "POST");
        assert_eq!(json["iat"], 1_700_000_000u64);
        assert!(json.get("nonce").is_none() && json.get("ath").is_none());
        let mut with = claims.clone();
        with.nonce = Some("n-1".into());
        with.ath = Some("hash".into());
        let json: Value = serde_json::from_str(&with.to_json()).unwrap();
        assert_eq!(
            (json["nonce"].as_str(), json["ath"].as_str()),
            (Some("n-1"), Some("hash"))
        );
    }

    #[test]
    fn nonces_are_checked() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(nonce_from(&headers), None);
        headers.insert("dpop-nonce", "eyJ7S_zG.eyJH0-Z.HX4w-7v".parse().unwrap());
        assert_eq!(
            nonce_from(&headers).as_deref(),
            Some("eyJ7S_zG.eyJH0-Z.HX4w-7v")
        );
        headers.insert("dpop-nonce", "two words".parse().unwrap());
        assert_eq!(nonce_from(&headers), None);
        headers.insert("dpop-nonce", "x".repeat(600).parse().unwrap());
        assert_eq!(nonce_from(&headers), None);
        let mut rng = fastrand::Rng::with_seed(7);
        let (a, b) = (jti(&mut rng), jti(&mut rng));
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
