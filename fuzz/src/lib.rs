//! Helpers shared by the fuzz targets in `fuzz_targets/`.
//!
//! The targets check more than "no panic": each states invariants of the code
//! it drives. Those about secrets use [`PLANTED`]: the seed corpora put this
//! marker in secret-bearing positions (an `access_token`, a refresh token, a
//! password in a URL, an extra parameter's value), and a target fails when the
//! marker shows up in a `Debug` or `Display` text without also appearing
//! somewhere in the input that the text is allowed to quote.

use std::time::Duration;

use serde_json::{Map, Value};
use tokenkeeper_core::Timestamp;

/// A secret-looking value that must never be shown unless the input also put
/// it somewhere that may be shown.
///
/// Letters and digits only, so escaping leaves it as it is, and starting with
/// a letter that ends no escape (`\t`, `\n`, `\0`, `\u{..}`, `\"`): an escaped
/// character just before the text `PLANTEDs3cr3t` cannot form the marker.
pub const PLANTED: &str = "QPLANTEDs3cr3t";

/// The names of the token fields whose values are secrets.
pub const SECRET_FIELDS: [&str; 3] = ["access_token", "refresh_token", "id_token"];

/// The JSON text of `map` without its secret fields: everything in it may be
/// shown in logs, errors or `Debug`.
pub fn shown_part_of(map: &Map<String, Value>) -> String {
    let mut public = map.clone();
    for name in SECRET_FIELDS {
        public.remove(name);
    }
    // Whatever the JSON escaping, `PLANTED` (ASCII letters and digits) is
    // written as is, so a `contains` on this text finds it.
    Value::Object(public).to_string()
}

/// Panics when `shown` holds [`PLANTED`] but `allowed` does not.
#[track_caller]
pub fn assert_no_leak(what: &str, shown: &str, allowed: &str) {
    assert!(
        !shown.contains(PLANTED) || allowed.contains(PLANTED),
        "{what} shows a secret value that the input only held in a secret position: {shown}"
    );
}

const WEEKDAYS: [&str; 7] = [
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// A civil date and time of day, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    /// The year (any number of digits).
    pub year: i64,
    /// 1 to 12.
    pub month: u32,
    /// 1 to 31.
    pub day: u32,
    /// 0 to 23.
    pub hour: u64,
    /// 0 to 59.
    pub minute: u64,
    /// 0 to 59.
    pub second: u64,
    /// 0 (Thursday, as 1970-01-01 was) to 6.
    pub weekday: usize,
}

/// The civil date of an instant (whole seconds), written independently of the
/// core's own calendar code (Howard Hinnant's `civil_from_days`), so that a
/// round trip through both checks one against the other.
pub fn civil(t: Timestamp) -> Civil {
    let secs = t.as_millis() / 1000;
    let days = (secs / 86_400) as i64;
    let sod = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    Civil {
        year,
        month,
        day,
        hour: sod / 3600,
        minute: sod / 60 % 60,
        second: sod % 60,
        weekday: (days % 7) as usize,
    }
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn imf_fixdate(c: &Civil) -> String {
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        &WEEKDAYS[c.weekday][..3],
        c.day,
        MONTHS[c.month as usize - 1],
        c.year,
        c.hour,
        c.minute,
        c.second
    )
}

/// `Sunday, 06-Nov-94 08:49:37 GMT` (two-digit year: 1970 to 2069 only).
pub fn rfc850_date(c: &Civil) -> Option<String> {
    (1970..2070).contains(&c.year).then(|| {
        format!(
            "{}, {:02}-{}-{:02} {:02}:{:02}:{:02} GMT",
            WEEKDAYS[c.weekday],
            c.day,
            MONTHS[c.month as usize - 1],
            c.year % 100,
            c.hour,
            c.minute,
            c.second
        )
    })
}

/// `Sun Nov  6 08:49:37 1994`.
pub fn asctime_date(c: &Civil) -> String {
    format!(
        "{} {} {:>2} {:02}:{:02}:{:02} {}",
        &WEEKDAYS[c.weekday][..3],
        MONTHS[c.month as usize - 1],
        c.day,
        c.hour,
        c.minute,
        c.second,
        c.year
    )
}

/// The instant truncated to whole seconds, as HTTP dates carry it.
pub fn whole_seconds(t: Timestamp) -> Timestamp {
    Timestamp::from_millis(t.as_millis() / 1000 * 1000)
}

/// `now + secs`, as `Retry-After: <delta-seconds>` should give it.
pub fn after_secs(now: Timestamp, secs: u64) -> Timestamp {
    now.saturating_add(Duration::from_secs(secs))
}

/// Reads a little-endian `u64` from the front of `data`, padding with zeros.
pub fn take_u64(data: &mut &[u8]) -> u64 {
    let n = data.len().min(8);
    let mut bytes = [0u8; 8];
    bytes[..n].copy_from_slice(&data[..n]);
    *data = &data[n..];
    u64::from_le_bytes(bytes)
}

/// Reads one byte from the front of `data` (zero when empty).
pub fn take_u8(data: &mut &[u8]) -> u8 {
    match data.split_first() {
        Some((&b, rest)) => {
            *data = rest;
            b
        }
        None => 0,
    }
}

/// Characters that text from outside may not carry into logs as they are:
/// control characters, and the formatting characters that reorder, hide or
/// break lines (bidirectional controls, zero-width characters, line and
/// paragraph separators, the byte-order mark).
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}'
        )
}

/// Characters that the core may escape (a superset of [`is_unsafe_char`]):
/// text without any is kept as it is when it is short enough.
fn may_be_escaped(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{0600}'..='\u{06ff}' | '\u{1800}'..='\u{18ff}' | '\u{2000}'..='\u{206f}' | '\u{fe00}'..='\u{ffff}'
        )
}

/// Checks that `kept` is `raw` as the core keeps text from outside: at most
/// `max` characters, nothing unsafe to print, and `raw` itself (or its start
/// and `…`) when `raw` held nothing that needs escaping.
#[track_caller]
pub fn check_sanitised(raw: &str, kept: &str, max: usize) {
    assert!(
        kept.chars().count() <= max,
        "{kept:?} is over {max} characters"
    );
    assert!(
        !kept.chars().any(is_unsafe_char),
        "{kept:?} holds a character unsafe to print"
    );
    if !raw.chars().any(may_be_escaped) {
        if raw.chars().count() <= max {
            assert_eq!(kept, raw);
        } else {
            let start: String = raw.chars().take(max - 1).collect();
            assert_eq!(kept, format!("{start}…"));
        }
    }
}
