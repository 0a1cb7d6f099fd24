//! The device authorization grant (RFC 8628) on arbitrary answers:
//! `OAuth2Client::read_device_authorization` and `DevicePoll::handle_response`.
//!
//! Input: one byte picks the HTTP status, one the body size limit, one what
//! is read (even: the device authorization endpoint's answer; odd: a poll's
//! answer, the state before it shaped by the byte's higher bits: slow-downs
//! and failures already seen); the rest is the body.
//!
//! Invariants beyond "no panic":
//! - the result is deterministic and a body over the limit is refused as such;
//! - a device authorization comes only from a 2xx JSON object, with the
//!   body's `device_code`, a printable non-empty `user_code`, http(s)
//!   verification URIs, a positive `expires_in` and an interval of at least
//!   `MIN_INTERVAL`;
//! - a poll answer never shortens the interval; `slow_down` adds exactly
//!   `SLOW_DOWN_STEP`; a retry waits at least the interval and at most
//!   `MAX_FAILURE_WAIT` (or the interval, when longer); after an answer that
//!   does not end the flow, the next poll is due within the codes' lifetime;
//! - the device code (of 8 characters or more) is never shown by `Debug` or
//!   `Display` (of the authorization, the poll, its outcome or an error)
//!   unless the input also put it in a field that may be shown.
#![no_main]

use std::time::Duration;

use http::HeaderMap;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use tokenkeeper_core::oauth2::device::{
    DeviceAuthorization, DevicePoll, MAX_FAILURE_WAIT, MIN_INTERVAL, PollOutcome, PollStep,
    SLOW_DOWN_STEP,
};
use tokenkeeper_core::oauth2::{DEFAULT_MAX_BODY_BYTES, OAuth2Client};
use tokenkeeper_core::{ClientId, FetchError, Monotonic, Now, Timestamp};
use tokenkeeper_fuzz::take_u8;

const STATUSES: [u16; 12] = [200, 201, 299, 400, 401, 403, 404, 429, 500, 503, 302, 0];

const NOW: Timestamp = Timestamp::from_secs(1_700_000_000);

/// The device code of the poll path: letters and digits, never made by
/// escaping or by the `<redacted>` replacement.
const DEVICE_CODE: &str = "DEVCODEq7Zk2Lw9";

/// Panics when `shown` holds `secret` (of 8 characters or more) but
/// `allowed` does not.
fn assert_hidden(what: &str, shown: &str, secret: &str, allowed: &str) {
    assert!(
        // A short code (a letter) is found in any text: only codes that
        // could be told apart are looked for.
        secret.len() < 8 || !shown.contains(secret) || allowed.contains(secret),
        "{what} shows the device code: {shown}"
    );
}

fn client_of(limit: usize) -> OAuth2Client {
    OAuth2Client::refresh_token("https://auth.example/token", ClientId::new("tv"), None)
        .expect("a valid client")
        .max_body_bytes(limit)
}

fn authorization(client: &OAuth2Client) -> DeviceAuthorization {
    let body = format!(
        r#"{{"device_code":"{DEVICE_CODE}","user_code":"WDJB-MJHT","verification_uri":"https://auth.example/device","expires_in":600,"interval":5}}"#
    );
    client
        .read_device_authorization(200, &HeaderMap::new(), body.as_bytes(), NOW)
        .expect("a good answer")
}

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let status = STATUSES[usize::from(take_u8(&mut data)) % STATUSES.len()];
    let limit = match take_u8(&mut data) {
        b @ 224.. => usize::from(b - 224) * 32,
        _ => DEFAULT_MAX_BODY_BYTES,
    };
    let mode = take_u8(&mut data);
    let body = data;
    let client = client_of(limit);
    let headers = HeaderMap::new();
    let object: Option<Map<String, Value>> = match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    };

    if mode & 1 == 0 {
        let result = client.read_device_authorization(status, &headers, body, NOW);
        assert_eq!(
            format!("{result:?}"),
            format!(
                "{:?}",
                client.read_device_authorization(status, &headers, body, NOW)
            ),
            "not deterministic"
        );
        if body.len() > limit {
            assert!(matches!(result, Err(FetchError::BodyTooLarge { .. })));
            return;
        }
        let secret = object
            .as_ref()
            .and_then(|m| m.get("device_code"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let allowed = object
            .as_ref()
            .map(|m| {
                let mut shown = m.clone();
                shown.remove("device_code");
                Value::Object(shown).to_string()
            })
            .unwrap_or_default();
        match &result {
            Ok(a) => {
                assert!((200..300).contains(&status), "codes from HTTP {status}");
                assert_eq!(a.device_code.expose_secret(), secret);
                assert!(!secret.is_empty());
                assert!(!a.user_code.trim().is_empty());
                assert!(!a.user_code.chars().any(char::is_control));
                for uri in
                    std::iter::once(&a.verification_uri).chain(a.verification_uri_complete.as_ref())
                {
                    let url = url::Url::parse(uri).expect("a URL");
                    assert!(matches!(url.scheme(), "http" | "https"));
                }
                assert!(a.expires_in > Duration::ZERO);
                assert_eq!(a.expires_at, NOW.saturating_add(a.expires_in));
                assert!(a.interval >= MIN_INTERVAL);
                assert_hidden("an authorization", &format!("{a:?}"), &secret, &allowed);
            }
            Err(error) => {
                assert_hidden(
                    "an error",
                    &format!("{error} / {error:?}"),
                    &secret,
                    &allowed,
                );
            }
        }
        return;
    }

    // A poll's answer, after some slow-downs and failures.
    let mut poll = DevicePoll::new(
        authorization(&client_of(DEFAULT_MAX_BODY_BYTES)),
        Monotonic::from_millis(0),
    );
    let mut at = 5_000u64;
    for i in 0..(mode >> 1) % 8 {
        let now = Now::new(
            NOW.saturating_add(Duration::from_millis(at)),
            Monotonic::from_millis(at),
        );
        let _ = if i % 2 == 0 {
            poll.handle_response(&client, 400, &headers, br#"{"error":"slow_down"}"#, now)
        } else {
            poll.handle_failure(
                FetchError::Transport {
                    message: "refused".into(),
                },
                now,
            )
        };
        at += 1_000;
    }
    let now = Now::new(
        NOW.saturating_add(Duration::from_millis(at)),
        Monotonic::from_millis(at),
    );
    let before = poll.interval();
    let mut again = poll.clone();
    let outcome = poll.handle_response(&client, status, &headers, body, now);
    assert_eq!(
        format!("{outcome:?}"),
        format!(
            "{:?}",
            again.handle_response(&client, status, &headers, body, now)
        ),
        "not deterministic"
    );
    assert!(poll.interval() >= before);
    match &outcome {
        PollOutcome::SlowDown { interval } => {
            assert_eq!(*interval, before + SLOW_DOWN_STEP);
            assert_eq!(poll.interval(), *interval);
        }
        PollOutcome::Retry { after, .. } => {
            assert!(*after >= before, "{after:?} < {before:?}");
            assert!(*after <= MAX_FAILURE_WAIT.max(before), "{after:?}");
        }
        _ => assert_eq!(poll.interval(), before),
    }
    if outcome.is_final() {
        assert_eq!(poll.next(now.mono), PollStep::Finished);
    } else {
        match poll.next(now.mono) {
            PollStep::Wait(wait) => assert!(
                now.mono.as_millis() + wait.as_millis() as u64 <= poll.expires_at().as_millis()
            ),
            PollStep::Expired => {}
            other => panic!("after {outcome:?}: {other:?}"),
        }
    }
    // The device code never shows: not in the poll, not in an error (an
    // answer that quotes it has it redacted), and not in a grant unless the
    // answer put it in a field a grant shows (its scope, an extra field's
    // name).
    assert!(!format!("{poll:?}").contains(DEVICE_CODE), "{poll:?}");
    let quoted = String::from_utf8_lossy(body).contains(DEVICE_CODE);
    match &outcome {
        PollOutcome::Failed(error) | PollOutcome::Retry { error, .. } => {
            let shown = format!("{error} / {error:?}");
            assert!(
                !shown.contains(DEVICE_CODE),
                "the device code shows: {shown}"
            );
        }
        other if !quoted => {
            let shown = format!("{other:?}");
            assert!(
                !shown.contains(DEVICE_CODE),
                "the device code shows: {shown}"
            );
        }
        _ => {}
    }
});
