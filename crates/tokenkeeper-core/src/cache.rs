//! Cache records: the versioned JSON document a cache layer stores, and the key
//! that says which tokens are interchangeable.
//!
//! A record looks like this (`version` 1):
//!
//! ```json
//! {"format":"tokenkeeper-cache-record","version":1,
//!  "key":"9f1c…","source":"[\"v1\",\"https://auth.example/token\",…]",
//!  "token":{"access_token":"…","token_type":"Bearer","refresh_token":null,"id_token":null,
//!           "scope":"read","issued_ms":…,"stale_ms":…,"expiry_ms":…,"extra":{}}}
//! ```
//!
//! Decoding never panics: corrupt, truncated, oversized, future-version and
//! foreign documents are typed [`RecordError`]s, which the refresher treats as
//! a miss.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::hash::fnv1a_128;
use crate::oauth2::OAuth2Client;
use crate::secret::{AccessToken, IdToken, RefreshToken};
use crate::text::escape_capped;
use crate::time::Timestamp;
use crate::token::TokenRecord;

/// The `format` marker of a record.
pub const RECORD_FORMAT: &str = "tokenkeeper-cache-record";
/// The record version this crate writes, and the newest it reads.
pub const RECORD_VERSION: u32 = 1;
/// Records larger than this are rejected unread.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;

/// Names a cache slot: everything that makes two tokens interchangeable.
///
/// Two clients share a key exactly when they have the same token URL, client
/// id, grant, scope (as a set), audience, resources (as a set) and extra
/// parameters (as a set). Secrets and the authentication method are not part
/// of it: they change how a token is asked for, not what it grants.
///
/// The [`id`](CacheKey::id) is derived from all of that, values included, so
/// clients whose extra parameters or URL query differ never share a token.
/// The [`description`](CacheKey::description), which every record stores and
/// tools print, names the extra parameters without their values and shows
/// the URL without its query: either may hold a credential (a
/// `client_assertion`, an API key).
// Shared, not copied: a watcher's refresher, handles and source, and each
// key of a pool, all hold it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(std::sync::Arc<KeyText>);

#[derive(PartialEq, Eq, Hash)]
struct KeyText {
    description: String,
    /// 32 lowercase hex digits, kept in place (one allocation less a key).
    id: [u8; 32],
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", self.id())
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

impl CacheKey {
    /// The key of an OAuth2 client.
    pub fn for_client(client: &OAuth2Client) -> Self {
        let mut scope: Vec<&str> = client
            .requested_scope()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        scope.sort_unstable();
        scope.dedup();
        let mut resources: Vec<&str> = client
            .requested_resources()
            .iter()
            .map(String::as_str)
            .collect();
        resources.sort_unstable();
        resources.dedup();
        let mut extra: Vec<(&str, &str)> = client
            .extra_params()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        extra.sort_unstable();
        let scope = scope.join(" ");
        let audience = client.requested_audience().unwrap_or_default();
        // The id hashes everything, values included (and so stays what
        // earlier versions derived: their cache slots remain this key's).
        // A client made from an issuer is keyed by its issuer: the token
        // endpoint is known only later, and may move.
        let url = match client.issuer() {
            Some(issuer) => issuer.as_str(),
            None => client.token_url().as_str(),
        };
        let shown_url = match client.issuer() {
            Some(issuer) => issuer.as_str().to_owned(),
            None => client.token_url().redacted(),
        };
        let mut full = serde_json::json!([
            "v1",
            url,
            client.client_id().as_str(),
            client.grant().as_str(),
            scope,
            audience,
            resources,
            extra,
        ]);
        let names: Vec<&str> = extra.iter().map(|(k, _)| *k).collect();
        let mut description = serde_json::json!([
            "v1",
            shown_url,
            client.client_id().as_str(),
            client.grant().as_str(),
            scope,
            audience,
            resources,
            names,
        ]);
        // Tokens bound to a client certificate (RFC 8705) serve only that
        // certificate's holder. Appended only when set, so that keys without
        // one stay what earlier versions derived. A thumbprint is public.
        let bindings = [
            client
                .certificate_thumbprint()
                .map(|t| serde_json::json!({ "x5t#S256": t })),
            client
                .dpop_key_thumbprint()
                .map(|t| serde_json::json!({ "jkt": t })),
        ];
        // An assertion-authenticated client, and whom a JWT bearer grant's
        // assertion is about (appended only when they apply; no secret).
        let assertion = client.assertion_key_parts();
        let discovered = client
            .issuer()
            .map(|_| serde_json::json!({ "endpoint": "discovered" }));
        for binding in bindings
            .into_iter()
            .flatten()
            .chain(assertion)
            .chain(discovered)
        {
            for key in [&mut full, &mut description] {
                if let Some(parts) = key.as_array_mut() {
                    parts.push(binding.clone());
                }
            }
        }
        CacheKey::with_id(description.to_string(), hash_id(&full.to_string()))
    }

    /// A key for a custom token source: a namespace and any distinguishing parts.
    pub fn custom(namespace: &str, parts: &[&str]) -> Self {
        // Serialized as it stands, with no JSON tree built first: a pool may
        // make a key per tenant. The text is what `json!` would make, into
        // a buffer of its length when nothing needs escaping (the usual
        // case), which then needs no shrinking: `["custom","NS",["P",...]]`.
        let mut text = Vec::with_capacity(custom_text_len(namespace, parts));
        let description = serde_json::to_writer(&mut text, &("custom", namespace, parts))
            .ok()
            .and_then(|()| String::from_utf8(text).ok())
            .unwrap_or_else(|| serde_json::json!(["custom", namespace, parts]).to_string());
        Self::from_description(description)
    }

    fn from_description(description: String) -> Self {
        let id = hash_id(&description);
        Self::with_id(description, id)
    }

    fn with_id(mut description: String, id: [u8; 32]) -> Self {
        // Writers leave room to grow (serde_json's starts at 128 bytes); a
        // key keeps its text for life, and a pool holds many keys.
        description.shrink_to_fit();
        CacheKey(std::sync::Arc::new(KeyText { description, id }))
    }

    /// A 32-character hex name, fit for a file name or a Redis key.
    pub fn id(&self) -> &str {
        // Hex digits: always UTF-8.
        std::str::from_utf8(&self.0.id).unwrap_or_default()
    }

    /// The canonical description of the key, stored in every record and fit
    /// to print: for an OAuth2 client, the token URL without its query, the
    /// client id, grant, scope, audience, resources and the *names* of the
    /// extra parameters. The id is derived from the same parts with the
    /// query and the parameter values in.
    pub fn description(&self) -> &str {
        &self.0.description
    }

    /// Whether a record stored with `source` is this key's: its description,
    /// or (a record written before descriptions were redacted) the full
    /// description this key's id was derived from.
    fn owns_source(&self, source: &str) -> bool {
        source == self.0.description || hash_id(source) == self.0.id
    }
}

/// The length of a custom key's text when nothing in it needs escaping.
fn custom_text_len(namespace: &str, parts: &[&str]) -> usize {
    // `["custom","",[]]` is 16; each part adds its quotes and a comma, but
    // the first has no comma.
    16 + namespace.len() + parts.iter().map(|part| part.len() + 3).sum::<usize>()
        - usize::from(!parts.is_empty())
}

/// The 32-character hex id of a full key description.
fn hash_id(full: &str) -> [u8; 32] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let hash = fnv1a_128(full.as_bytes());
    // Most significant nibble first, as `{:032x}` writes it.
    std::array::from_fn(|i| DIGITS[((hash >> (4 * (31 - i))) & 0xf) as usize])
}

/// A stored description as it may be shown: the values of extra parameters
/// and the URL query, which records written before descriptions were
/// redacted still hold, are taken out. Any other description, current ones
/// included, is returned unchanged, byte for byte.
fn redact_source(source: &str) -> String {
    let Ok(Value::Array(mut parts)) = serde_json::from_str::<Value>(source) else {
        return source.to_owned();
    };
    if parts.len() != 8 || parts[0] != "v1" {
        return source.to_owned();
    }
    let mut changed = false;
    if let Some(url) = parts[1].as_str()
        && url.contains('?')
        && !url.ends_with("?<redacted>")
    {
        let shown = match url::Url::parse(url) {
            Ok(parsed) => crate::oauth2::redacted_url(&parsed),
            Err(_) => format!("{}?<redacted>", url.split('?').next().unwrap_or_default()),
        };
        parts[1] = Value::from(shown);
        changed = true;
    }
    if let Value::Array(extra) = &mut parts[7] {
        for param in extra.iter_mut() {
            // A `[name, value]` pair becomes its name.
            if let Value::Array(pair) = param
                && let Some(name) = pair.first().cloned()
            {
                *param = name;
                changed = true;
            }
        }
    }
    if changed {
        Value::Array(parts).to_string()
    } else {
        source.to_owned()
    }
}

/// Why a stored record cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Larger than [`MAX_RECORD_BYTES`].
    #[error("the cache record is {size} bytes, more than the {max} allowed")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The document ends early (a torn write from another tool, say).
    #[error("the cache record is truncated")]
    Truncated,
    /// Not JSON, or not the shape of a record.
    #[error("the cache record is corrupt: {0}")]
    Corrupt(String),
    /// Written by a newer tokenkeeper.
    #[error("the cache record has version {found}; this version reads up to {supported}")]
    FutureVersion {
        /// The version found.
        found: u64,
        /// The newest version this crate reads.
        supported: u32,
    },
    /// Not a tokenkeeper record, or one for another client.
    #[error("the cache record belongs to something else: {0}")]
    Foreign(String),
    /// The instants are out of order.
    #[error("the cache record's times are inconsistent")]
    InconsistentTimes,
}

/// An encoded record, ready to store. Its bytes hold secrets: they are zeroed
/// on drop and hidden from `Debug`.
#[derive(Clone)]
pub struct EncodedRecord {
    bytes: Zeroizing<Vec<u8>>,
    expiry: Timestamp,
}

impl fmt::Debug for EncodedRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncodedRecord")
            .field("len", &self.bytes.len())
            .field("expiry", &self.expiry)
            .finish()
    }
}

impl EncodedRecord {
    /// The bytes to store.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// When the token expires: a store may drop the record then (a Redis TTL).
    pub fn expiry(&self) -> Timestamp {
        self.expiry
    }
}

#[derive(Serialize, Deserialize)]
struct TokenWire {
    access_token: String,
    token_type: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    issued_ms: u64,
    stale_ms: u64,
    expiry_ms: u64,
    #[serde(default)]
    extra: Map<String, Value>,
}

/// Encodes `record` for the slot named by `key`.
pub fn encode_record(key: &CacheKey, record: &TokenRecord) -> EncodedRecord {
    encode_record_with(key, record, None)
}

/// Encodes `record` with the issuer's metadata beside it (member
/// `discovery`, which readers that do not know it ignore).
pub(crate) fn encode_record_with(
    key: &CacheKey,
    record: &TokenRecord,
    metadata: Option<&crate::oauth2::discovery::Metadata>,
) -> EncodedRecord {
    let token = TokenWire {
        access_token: record.access_token.expose_secret().to_owned(),
        token_type: record.token_type.clone(),
        refresh_token: record
            .refresh_token
            .as_ref()
            .map(|t| t.expose_secret().to_owned()),
        id_token: record
            .id_token
            .as_ref()
            .map(|t| t.expose_secret().to_owned()),
        scope: record.scope.clone(),
        issued_ms: record.issued.as_millis(),
        stale_ms: record.stale.as_millis(),
        expiry_ms: record.expiry.as_millis(),
        extra: record.extra.clone(),
    };
    let mut doc = serde_json::json!({
        "format": RECORD_FORMAT,
        "version": RECORD_VERSION,
        "key": key.id(),
        "source": key.description(),
        "token": token,
    });
    if let (Some(metadata), Value::Object(map)) = (metadata, &mut doc) {
        map.insert("discovery".into(), metadata.to_stored());
    }
    // Serialising a `Value` cannot fail.
    let bytes = serde_json::to_vec(&doc).unwrap_or_default();
    // The strings copied into `doc` are dropped here without zeroing; the
    // bytes that live on are zeroed.
    EncodedRecord {
        bytes: Zeroizing::new(bytes),
        expiry: record.expiry,
    }
}

/// Decodes a stored record and checks that it belongs to `key`.
pub fn decode_record(key: &CacheKey, bytes: &[u8]) -> Result<TokenRecord, RecordError> {
    let mut doc = parse_document(bytes)?;
    if doc.get("key").and_then(Value::as_str) != Some(key.id())
        || !doc
            .get("source")
            .and_then(Value::as_str)
            .is_some_and(|source| key.owns_source(source))
    {
        return Err(RecordError::Foreign("a record for another client".into()));
    }
    parse_token(&mut doc)
}

/// The issuer's metadata a record of `key` keeps beside its token, checked
/// against `issuer` as a fetched document is; `None` when there is none, or
/// it is unusable, or the record is not `key`'s.
pub(crate) fn decode_metadata(
    key: &CacheKey,
    issuer: &crate::oauth2::discovery::Issuer,
    bytes: &[u8],
) -> Option<crate::oauth2::discovery::Metadata> {
    let doc = parse_document(bytes).ok()?;
    if doc.get("key").and_then(Value::as_str) != Some(key.id()) {
        return None;
    }
    crate::oauth2::discovery::Metadata::from_stored(issuer, doc.get("discovery")?)
}

/// A record read without knowing which key it belongs to, as
/// [`read_record`] returns it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct StoredRecord {
    /// The id of the key it was stored under ([`CacheKey::id`]).
    pub key_id: String,
    /// The key's canonical description ([`CacheKey::description`]): token URL
    /// without its query, client id, grant, scope, audience, resources, the
    /// names of the extra parameters. No secrets: a record written before
    /// descriptions were redacted has its values taken out here.
    pub source: String,
    /// The token.
    pub token: TokenRecord,
}

/// Decodes a stored record whatever key it belongs to: for tools that inspect
/// a cache file. A driver reading a layer uses [`decode_record`], which also
/// checks that the record is its own.
pub fn read_record(bytes: &[u8]) -> Result<StoredRecord, RecordError> {
    let mut doc = parse_document(bytes)?;
    let field = |doc: &Map<String, Value>, name: &str| {
        doc.get(name)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| RecordError::Corrupt(format!("no {name}")))
    };
    let key_id = field(&doc, "key")?;
    let source = redact_source(&field(&doc, "source")?);
    let token = parse_token(&mut doc)?;
    Ok(StoredRecord {
        key_id,
        source,
        token,
    })
}

/// Checks the size, the JSON, the format marker and the version.
fn parse_document(bytes: &[u8]) -> Result<Map<String, Value>, RecordError> {
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(RecordError::TooLarge {
            size: bytes.len(),
            max: MAX_RECORD_BYTES,
        });
    }
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| {
        if e.is_eof() {
            RecordError::Truncated
        } else {
            RecordError::Corrupt(format!(
                "not JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        }
    })?;
    let Value::Object(doc) = doc else {
        return Err(RecordError::Corrupt("not a JSON object".into()));
    };
    match doc.get("format").and_then(Value::as_str) {
        Some(RECORD_FORMAT) => {}
        Some(other) => {
            let other = escape_capped(other, 64);
            return Err(RecordError::Foreign(format!("format {other:?}")));
        }
        None => return Err(RecordError::Foreign("no format marker".into())),
    }
    match doc.get("version").and_then(Value::as_u64) {
        Some(v) if v == u64::from(RECORD_VERSION) => {}
        Some(v) if v > u64::from(RECORD_VERSION) => {
            return Err(RecordError::FutureVersion {
                found: v,
                supported: RECORD_VERSION,
            });
        }
        _ => return Err(RecordError::Corrupt("missing or unknown version".into())),
    }
    Ok(doc)
}

/// Reads the `token` member of a checked document.
fn parse_token(doc: &mut Map<String, Value>) -> Result<TokenRecord, RecordError> {
    let token = doc
        .remove("token")
        .ok_or_else(|| RecordError::Corrupt("no token".into()))?;
    let t: TokenWire = serde_json::from_value(token).map_err(|e| {
        // serde's message can quote the offending value, which may be a
        // secret: report only where the problem is.
        RecordError::Corrupt(format!(
            "bad token fields ({:?} error at line {}, column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    if t.access_token.is_empty() {
        return Err(RecordError::Corrupt("empty access token".into()));
    }
    if !(t.issued_ms <= t.stale_ms && t.stale_ms <= t.expiry_ms) {
        return Err(RecordError::InconsistentTimes);
    }
    Ok(TokenRecord {
        access_token: AccessToken::new(t.access_token),
        token_type: t.token_type,
        refresh_token: t.refresh_token.map(RefreshToken::new),
        id_token: t.id_token.map(IdToken::new),
        scope: t.scope,
        issued: Timestamp::from_millis(t.issued_ms),
        stale: Timestamp::from_millis(t.stale_ms),
        expiry: Timestamp::from_millis(t.expiry_ms),
        extra: t.extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::LifetimePolicy;
    use crate::secret::{ClientId, ClientSecret};
    use crate::token::TokenGrant;
    use std::time::Duration;

    fn client(scope: &str) -> OAuth2Client {
        OAuth2Client::client_credentials(
            "https://a.example/token",
            ClientId::new("c"),
            ClientSecret::new("s"),
        )
        .unwrap()
        .scope(scope)
    }

    fn record() -> TokenRecord {
        let mut grant = TokenGrant::bearer(AccessToken::new("at-1"), Some(Duration::from_secs(60)))
            .with_refresh_token(RefreshToken::new("rt-1"));
        grant.extra.insert("x".into(), Value::from(1));
        LifetimePolicy::default().record(grant, Timestamp::from_secs(5), None)
    }

    #[test]
    fn custom_keys_are_what_earlier_versions_derived() {
        // Files and Redis entries written by earlier versions stay this
        // key's: the text is `json!`'s, the id the 128-bit FNV-1a of it in
        // 32 lowercase hex digits, most significant first.
        let parts = ["tenant \"7\"", "ü", ""];
        let key = CacheKey::custom("billing", &parts);
        let earlier = serde_json::json!(["custom", "billing", parts]).to_string();
        assert_eq!(key.description(), earlier);
        let hash = crate::hash::fnv1a_128(earlier.as_bytes());
        assert_eq!(key.id(), format!("{hash:032x}"));
        // Without escapes the text is as long as worked out beforehand.
        for parts in [&["tenant-0000001"][..], &["a", "bc", ""], &[]] {
            let key = CacheKey::custom("bench", parts);
            assert_eq!(
                key.description(),
                serde_json::json!(["custom", "bench", parts]).to_string()
            );
            assert_eq!(custom_text_len("bench", parts), key.description().len());
        }
        let small = CacheKey::custom("", &[]);
        assert_eq!(small.description(), r#"["custom","",[]]"#);
        assert_eq!(small.id().len(), 32);
        assert_eq!(
            small.id(),
            format!("{:032x}", crate::hash::fnv1a_128(br#"["custom","",[]]"#))
        );
    }

    #[test]
    fn round_trip() {
        let key = CacheKey::for_client(&client("a b"));
        let rec = record();
        let enc = encode_record(&key, &rec);
        assert!(!format!("{enc:?}").contains("at-1"));
        assert_eq!(enc.expiry(), rec.expiry);
        assert_eq!(decode_record(&key, enc.bytes()).unwrap(), rec);
    }

    #[test]
    fn records_can_be_read_without_their_key() {
        let key = CacheKey::for_client(&client("a b"));
        let rec = record();
        let enc = encode_record(&key, &rec);
        let stored = read_record(enc.bytes()).unwrap();
        assert_eq!(stored.key_id, key.id());
        assert_eq!(stored.source, key.description());
        assert_eq!(stored.token, rec);
        assert_eq!(read_record(&enc.bytes()[..10]), Err(RecordError::Truncated));
        assert!(matches!(
            read_record(br#"{"format":"tokenkeeper-cache-record","version":1}"#),
            Err(RecordError::Corrupt(_))
        ));
    }

    #[test]
    fn keys_identify_interchangeable_tokens() {
        assert_eq!(
            CacheKey::for_client(&client("a b")),
            CacheKey::for_client(&client("b  a"))
        );
        assert_ne!(
            CacheKey::for_client(&client("a")),
            CacheKey::for_client(&client("b"))
        );
        let other_secret = OAuth2Client::client_credentials(
            "https://a.example/token",
            ClientId::new("c"),
            ClientSecret::new("other"),
        )
        .unwrap()
        .scope("a");
        assert_eq!(
            CacheKey::for_client(&other_secret),
            CacheKey::for_client(&client("a"))
        );
        let with_audience = client("a").audience("x");
        assert_ne!(
            CacheKey::for_client(&with_audience),
            CacheKey::for_client(&client("a"))
        );
        assert_eq!(CacheKey::for_client(&client("a")).id().len(), 32);
    }

    #[test]
    fn errors_never_quote_record_contents() {
        let key = CacheKey::for_client(&client("a"));
        let text = String::from_utf8(encode_record(&key, &record()).bytes().to_vec()).unwrap();
        let bad = text.replace(
            "\"issued_ms\":5000",
            "\"issued_ms\":\"secret-in-wrong-field\"",
        );
        let err = decode_record(&key, bad.as_bytes()).unwrap_err();
        assert!(matches!(err, RecordError::Corrupt(_)), "{err}");
        assert!(!err.to_string().contains("secret-in-wrong-field"), "{err}");
    }

    #[test]
    fn bad_records_are_typed_errors() {
        let key = CacheKey::for_client(&client("a"));
        let good = encode_record(&key, &record());
        let bytes = good.bytes();
        for cut in [1, 10, bytes.len() / 2, bytes.len() - 1] {
            assert_eq!(
                decode_record(&key, &bytes[..cut]),
                Err(RecordError::Truncated),
                "{cut}"
            );
        }
        assert!(matches!(
            decode_record(&key, b"\xff\xfe garbage"),
            Err(RecordError::Corrupt(_))
        ));
        assert!(matches!(
            decode_record(&key, b"[]"),
            Err(RecordError::Corrupt(_))
        ));
        assert!(matches!(
            decode_record(&key, br#"{"format":"other"}"#),
            Err(RecordError::Foreign(_))
        ));
        let other = CacheKey::for_client(&client("b"));
        assert!(matches!(
            decode_record(&other, bytes),
            Err(RecordError::Foreign(_))
        ));
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let future = text.replace("\"version\":1", "\"version\":7");
        assert_eq!(
            decode_record(&key, future.as_bytes()),
            Err(RecordError::FutureVersion {
                found: 7,
                supported: 1
            })
        );
        let bad_times = text.replace("\"issued_ms\":5000", "\"issued_ms\":999999999");
        assert_eq!(
            decode_record(&key, bad_times.as_bytes()),
            Err(RecordError::InconsistentTimes)
        );
        let huge = vec![b' '; MAX_RECORD_BYTES + 1];
        assert!(matches!(
            decode_record(&key, &huge),
            Err(RecordError::TooLarge { .. })
        ));
    }
}
