//! The device authorization grant (RFC 8628) of the test authority: the device authorization
//! endpoint (`POST /device_authorization`), the device code grant at the token endpoint, and
//! the person, simulated by the test ([`Authority::approve_device`](crate::Authority::approve_device),
//! [`Authority::deny_device`](crate::Authority::deny_device)).
//!
//! Polls are answered as RFC 8628 §3.5 says: `authorization_pending` until the person answers,
//! `slow_down` to a client that polls sooner than the interval (which then grows by 5 s for
//! that code) or when the test forces it ([`Authority::force_slow_down`](crate::Authority::force_slow_down)),
//! `access_denied` once refused, `expired_token` after the codes' lifetime, and a token with a
//! refresh token once approved; a device code is redeemed once.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

/// The path of the device authorization endpoint.
pub(crate) const DEVICE_PATH: &str = "/device_authorization";
/// The path of the (pretend) verification page the person is sent to.
pub(crate) const VERIFICATION_PATH: &str = "/device";
/// The grant type of device code polls.
pub(crate) const DEVICE_CODE: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// The interval announced unless a test sets another.
pub const DEFAULT_DEVICE_INTERVAL: Duration = Duration::from_secs(5);
/// The lifetime of device codes unless a test sets another.
pub const DEFAULT_DEVICE_CODE_LIFETIME: Duration = Duration::from_secs(600);
/// How much `slow_down` adds to a code's interval (RFC 8628 §3.5).
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// How much sooner than the interval a poll may arrive before it counts as too fast: the
/// client measures from the answer it read, the authority from the request it received.
const TOO_FAST_TOLERANCE: Duration = Duration::from_millis(250);
/// The letters of user codes: no vowels, no look-alikes (RFC 8628 §6.1).
const USER_CODE_LETTERS: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";

/// Where a person's answer stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Pending,
    Approved,
    Denied,
    Redeemed,
}

#[derive(Debug)]
struct Entry {
    client_id: String,
    scope: Option<String>,
    user_code: String,
    status: Status,
    expires_at: SystemTime,
    interval: Duration,
    last_poll: Option<SystemTime>,
}

/// The device codes handed out, and the test's settings.
#[derive(Debug)]
pub(crate) struct Devices {
    by_code: HashMap<String, Entry>,
    pub(crate) interval: Duration,
    pub(crate) lifetime: Duration,
    pub(crate) forced_slow_downs: usize,
    pub(crate) include_complete_uri: bool,
}

impl Default for Devices {
    fn default() -> Self {
        Devices {
            by_code: HashMap::new(),
            interval: DEFAULT_DEVICE_INTERVAL,
            lifetime: DEFAULT_DEVICE_CODE_LIFETIME,
            forced_slow_downs: 0,
            include_complete_uri: true,
        }
    }
}

/// A refusal of a poll: the OAuth2 error code and its description.
pub(crate) type Refusal = (&'static str, String);

impl Devices {
    /// Hands out codes to `client_id`, answering a request that arrived at `url` (for the
    /// verification URI's scheme and host). Returns the answer's JSON object and the user code.
    pub(crate) fn issue(
        &mut self,
        rng: &mut fastrand::Rng,
        client_id: &str,
        scope: Option<String>,
        url: &str,
        now: SystemTime,
    ) -> (Map<String, Value>, String) {
        let device_code = format!("dc-{:016x}{:016x}", rng.u64(..), rng.u64(..));
        let letter = |rng: &mut fastrand::Rng| {
            char::from(USER_CODE_LETTERS[rng.usize(..USER_CODE_LETTERS.len())])
        };
        let user_code: String = loop {
            let code: String = (0..9)
                .map(|i| if i == 4 { '-' } else { letter(rng) })
                .collect();
            if self.by_code.values().all(|entry| entry.user_code != code) {
                break code;
            }
        };
        let base = url
            .find("://")
            .and_then(|start| {
                url[start + 3..]
                    .find('/')
                    .map(|end| &url[..start + 3 + end])
            })
            .unwrap_or(url);
        let verification_uri = format!("{base}{VERIFICATION_PATH}");
        let mut body = Map::new();
        body.insert("device_code".into(), device_code.clone().into());
        body.insert("user_code".into(), user_code.clone().into());
        body.insert("verification_uri".into(), verification_uri.clone().into());
        if self.include_complete_uri {
            body.insert(
                "verification_uri_complete".into(),
                format!("{verification_uri}?user_code={user_code}").into(),
            );
        }
        body.insert("expires_in".into(), self.lifetime.as_secs().into());
        body.insert("interval".into(), self.interval.as_secs().into());
        self.by_code.insert(
            device_code,
            Entry {
                client_id: client_id.to_owned(),
                scope,
                user_code: user_code.clone(),
                status: Status::Pending,
                expires_at: now + self.lifetime,
                interval: self.interval,
                last_poll: None,
            },
        );
        (body, user_code)
    }

    /// The person's answer to `user_code`: whether a pending code was found.
    pub(crate) fn answer(&mut self, user_code: &str, approve: bool) -> bool {
        match self
            .by_code
            .values_mut()
            .find(|entry| entry.user_code == user_code && entry.status == Status::Pending)
        {
            Some(entry) => {
                entry.status = if approve {
                    Status::Approved
                } else {
                    Status::Denied
                };
                true
            }
            None => false,
        }
    }

    /// Makes the codes of `user_code` expire now: whether they were found.
    pub(crate) fn expire(&mut self, user_code: &str, now: SystemTime) -> bool {
        match self
            .by_code
            .values_mut()
            .find(|entry| entry.user_code == user_code)
        {
            Some(entry) => {
                entry.expires_at = now;
                true
            }
            None => false,
        }
    }

    /// The device code handed out with `user_code`.
    pub(crate) fn code_of(&self, user_code: &str) -> Option<String> {
        self.by_code
            .iter()
            .find(|(_, entry)| entry.user_code == user_code)
            .map(|(code, _)| code.clone())
    }

    /// The user codes waiting for the person, in no particular order.
    pub(crate) fn pending_user_codes(&self) -> Vec<String> {
        self.by_code
            .values()
            .filter(|entry| entry.status == Status::Pending)
            .map(|entry| entry.user_code.clone())
            .collect()
    }

    /// A poll by `client_id` with `device_code` at `now`: the scope to issue a token for once
    /// approved, or why not.
    pub(crate) fn redeem(
        &mut self,
        device_code: Option<&str>,
        client_id: &str,
        now: SystemTime,
    ) -> Result<Option<String>, Refusal> {
        let Some(device_code) = device_code else {
            return Err(("invalid_request", "missing device_code".into()));
        };
        let Some(entry) = self.by_code.get_mut(device_code) else {
            return Err(("invalid_grant", "unknown device code".into()));
        };
        if entry.client_id != client_id {
            return Err((
                "invalid_grant",
                "the device code was issued to another client".into(),
            ));
        }
        if entry.status == Status::Redeemed {
            return Err(("invalid_grant", "the device code was already used".into()));
        }
        if now >= entry.expires_at {
            return Err(("expired_token", "the device code has expired".into()));
        }
        let too_fast = entry.last_poll.is_some_and(|last| {
            now.duration_since(last).unwrap_or_default() + TOO_FAST_TOLERANCE < entry.interval
        });
        entry.last_poll = Some(now);
        if self.forced_slow_downs > 0 || too_fast {
            self.forced_slow_downs = self.forced_slow_downs.saturating_sub(1);
            entry.interval += SLOW_DOWN_STEP;
            return Err((
                "slow_down",
                format!("poll at most every {} s", entry.interval.as_secs()),
            ));
        }
        match entry.status {
            Status::Pending => Err((
                "authorization_pending",
                "the user has not answered yet".into(),
            )),
            Status::Denied => Err(("access_denied", "the user refused".into())),
            Status::Approved | Status::Redeemed => {
                entry.status = Status::Redeemed;
                Ok(entry.scope.clone())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_goes_from_pending_to_one_redemption() {
        let mut devices = Devices {
            interval: Duration::from_secs(1),
            ..Devices::default()
        };
        let mut rng = fastrand::Rng::with_seed(7);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let (body, user_code) = devices.issue(
            &mut rng,
            "cli",
            Some("offline_access".into()),
            "http://127.0.0.1:9/device_authorization",
            t0,
        );
        assert_eq!(body["verification_uri"], "http://127.0.0.1:9/device");
        assert_eq!(body["interval"], 1);
        assert_eq!(user_code.len(), 9);
        let code = body["device_code"].as_str().unwrap().to_owned();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(
            devices.redeem(Some(&code), "cli", at(1)).unwrap_err().0,
            "authorization_pending"
        );
        // Too soon: slow down, and the interval grows.
        assert_eq!(
            devices.redeem(Some(&code), "cli", at(1)).unwrap_err().0,
            "slow_down"
        );
        assert_eq!(
            devices.redeem(Some(&code), "cli", at(3)).unwrap_err().0,
            "slow_down"
        );
        assert_eq!(
            devices.redeem(Some(&code), "cli", at(14)).unwrap_err().0,
            "authorization_pending"
        );
        assert_eq!(
            devices.redeem(Some(&code), "other", at(30)).unwrap_err().0,
            "invalid_grant"
        );
        assert!(devices.answer(&user_code, true));
        assert_eq!(
            devices.redeem(Some(&code), "cli", at(40)),
            Ok(Some("offline_access".into()))
        );
        assert_eq!(
            devices.redeem(Some(&code), "cli", at(60)).unwrap_err().0,
            "invalid_grant"
        );
        assert!(!devices.answer(&user_code, true));
    }

    #[test]
    fn denial_and_expiry() {
        let mut devices = Devices::default();
        let mut rng = fastrand::Rng::with_seed(8);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let (a, ua) = devices.issue(&mut rng, "cli", None, "http://h/x", t0);
        let (b, _) = devices.issue(&mut rng, "cli", None, "http://h/x", t0);
        assert_eq!(devices.pending_user_codes().len(), 2);
        assert!(devices.answer(&ua, false));
        let code = |v: &Map<String, Value>| v["device_code"].as_str().unwrap().to_owned();
        assert_eq!(
            devices.redeem(Some(&code(&a)), "cli", t0).unwrap_err().0,
            "access_denied"
        );
        let late = t0 + DEFAULT_DEVICE_CODE_LIFETIME;
        assert_eq!(
            devices.redeem(Some(&code(&b)), "cli", late).unwrap_err().0,
            "expired_token"
        );
    }
}
