//! Cache record decoding: `tokenkeeper_core::cache::decode_record` and
//! `read_record` on arbitrary bytes, for the key of one fixed client (the one
//! the seed records were written for), whose token URL query and extra
//! parameter value hold a planted secret.
//!
//! Invariants beyond "no panic":
//! - a decoded record has ordered instants and a non-empty access token; it
//!   re-encodes and decodes to exactly the same record (numbers in `extra`
//!   included: the core reads JSON with serde_json's `float_roundtrip`), and
//!   `read_record` reads the
//!   same token, with this key's id and (redacted) description;
//! - `decode_record` refuses only what `read_record` refuses or what is not
//!   this key's;
//! - an encoded record holds the key's secrets nowhere but in the hash of
//!   its id: the stored description names the parameter and hides the query;
//! - no error, record or stored description shows a secret in `Debug` or
//!   `Display` unless the input also put it where it may be shown: never a
//!   token field's value, an extra field's value, the query of the source's
//!   URL or the value of one of its parameters.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tokenkeeper_core::cache::{decode_record, encode_record, read_record};
use tokenkeeper_core::oauth2::OAuth2Client;
use tokenkeeper_core::{CacheKey, ClientId, ClientSecret, TokenRecord};
use tokenkeeper_fuzz::{PLANTED, assert_no_leak, shown_part_of};

/// The key the seeds were written for (see fuzz/seeds/generate.py).
fn key() -> &'static CacheKey {
    static KEY: OnceLock<CacheKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let client = OAuth2Client::client_credentials(
            format!("https://auth.example/token?tenant=t1&key={PLANTED}"),
            ClientId::new("fuzz-client"),
            ClientSecret::new("fuzz-secret"),
        )
        .expect("a valid client")
        .scope("read write")
        .extra_param("signed_request", format!("jwt-{PLANTED}"))
        .expect("not reserved");
        assert!(!key_description(&client).contains(PLANTED));
        CacheKey::for_client(&client)
    })
}

fn key_description(client: &OAuth2Client) -> String {
    CacheKey::for_client(client).description().to_owned()
}

/// `scheme://host:port/path`, as the core shows a URL without its query.
fn without_query(url: &url::Url) -> String {
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    let host = url.host_str().unwrap_or("");
    format!("{}://{host}{port}{}", url.scheme(), url.path())
}

/// What a stored description (`source`) may show: all of it, but for a
/// key description (`["v1", url, ..., params]`) the URL without its query
/// and the parameters' names without their values.
fn shown_part_of_source(source: &str) -> String {
    let Ok(Value::Array(mut parts)) = serde_json::from_str::<Value>(source) else {
        return source.to_owned();
    };
    if parts.len() != 8 || parts[0] != "v1" {
        return source.to_owned();
    }
    if let Some(url) = parts[1].as_str()
        && url.contains('?')
        && !url.ends_with("?<redacted>")
    {
        let before = url.split('?').next().unwrap_or_default();
        let parsed = url::Url::parse(url)
            .map(|u| without_query(&u))
            .unwrap_or_default();
        parts[1] = Value::from(format!("{before} {parsed}"));
    }
    if let Value::Array(params) = &mut parts[7] {
        for param in params.iter_mut() {
            if let Value::Array(pair) = param {
                *param = pair.first().cloned().unwrap_or(Value::Null);
            }
        }
    }
    Value::Array(parts).to_string()
}

/// The same record, to the last bit of every number in `extra`.
#[track_caller]
fn assert_same(again: &TokenRecord, record: &TokenRecord) {
    assert_eq!(again, record, "the record changed in a round trip");
}

fuzz_target!(|data: &[u8]| {
    let key = key();
    let decoded = decode_record(key, data);
    let read = read_record(data);
    let raw_source = match serde_json::from_slice::<Value>(data) {
        Ok(Value::Object(doc)) => doc.get("source").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    };

    // What may be shown: the document's other members, the source as above,
    // and of the token the names of its fields and its non-secret values.
    let allowed = match serde_json::from_slice::<Value>(data) {
        Ok(Value::Object(mut doc)) => {
            let token = match doc.remove("token") {
                Some(Value::Object(mut token)) => {
                    let extra = token.remove("extra");
                    let names = match &extra {
                        Some(Value::Object(extra)) => extra.keys().cloned().collect(),
                        Some(other) => vec![other.to_string()],
                        None => Vec::new(),
                    };
                    format!("{} {}", shown_part_of(&token), names.join(" "))
                }
                Some(other) => other.to_string(),
                None => String::new(),
            };
            let source = match doc.remove("source") {
                Some(Value::String(s)) => shown_part_of_source(&s),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            format!("{} {source} {token}", Value::Object(doc))
        }
        _ => String::new(),
    };

    match &decoded {
        Ok(record) => {
            assert!(record.issued <= record.stale && record.stale <= record.expiry);
            assert!(!record.access_token.expose_secret().is_empty());
            let stored = read
                .as_ref()
                .expect("decode_record took what read_record refused");
            assert_eq!(&stored.token, record);
            assert_eq!(stored.key_id, key.id());
            assert_eq!(stored.source, key.description());

            let encoded = encode_record(key, record);
            assert_eq!(encoded.expiry(), record.expiry);
            let again = decode_record(key, encoded.bytes()).expect("a re-encoded record decodes");
            assert_same(&again, record);
            let Ok(Value::Object(mut doc)) = serde_json::from_slice::<Value>(encoded.bytes())
            else {
                panic!("an encoded record is no JSON object");
            };
            doc.remove("token");
            let outside = Value::Object(doc).to_string();
            assert!(
                !outside.contains(PLANTED),
                "the key's secret is stored: {outside}"
            );
            assert_no_leak("a record's Debug", &format!("{record:?}"), &allowed);
            assert_no_leak("an encoded record's Debug", &format!("{encoded:?}"), "");
        }
        Err(error) => {
            assert_no_leak("a record error", &format!("{error} / {error:?}"), &allowed);
            if let Ok(stored) = &read {
                // Readable, but not ours: another id, or a description that
                // is neither this key's nor the full one of its id (which
                // records written before descriptions were redacted hold).
                let ours =
                    stored.key_id == key.id() && raw_source.as_deref() == Some(key.description());
                assert!(!ours, "our record refused: {error}");
            }
        }
    }
    match &read {
        Ok(stored) => {
            let record = &stored.token;
            assert!(record.issued <= record.stale && record.stale <= record.expiry);
            let again = decode_record(key, encode_record(key, record).bytes())
                .expect("a record read without its key re-encodes under another");
            assert_same(&again, record);
            assert_no_leak("a stored record's Debug", &format!("{stored:?}"), &allowed);
            assert_no_leak("a stored description", &stored.source, &allowed);
        }
        Err(error) => {
            assert_no_leak("a record error", &format!("{error} / {error:?}"), &allowed);
        }
    }
});
