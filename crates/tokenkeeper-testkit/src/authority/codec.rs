//! Small hand-written codecs the authority needs: base64 for the `Authorization: Basic` header,
//! `application/x-www-form-urlencoded` decoding of a single component, and IMF-fixdate
//! formatting for `Retry-After`.

use std::time::{SystemTime, UNIX_EPOCH};

/// Decodes standard base64 (RFC 4648 §4). Padding is optional; whitespace is not allowed.
/// Returns `None` on any malformed input.
pub(crate) fn base64_decode(input: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }

    let bytes = input.as_bytes();
    // Strip up to two trailing '=' and check that padding, if present, is complete.
    let unpadded_len = bytes.iter().rev().take_while(|&&c| c == b'=').count();
    if unpadded_len > 2 {
        return None;
    }
    let data = &bytes[..bytes.len() - unpadded_len];
    if unpadded_len > 0 && !bytes.len().is_multiple_of(4) {
        return None;
    }
    if data.len() % 4 == 1 {
        return None;
    }

    let mut out = Vec::with_capacity(data.len() / 4 * 3 + 2);
    for chunk in data.chunks(4) {
        let mut acc: u32 = 0;
        for &c in chunk {
            acc = (acc << 6) | value(c)?;
        }
        match chunk.len() {
            4 => {
                out.push((acc >> 16) as u8);
                out.push((acc >> 8) as u8);
                out.push(acc as u8);
            }
            3 => {
                // 18 bits: two bytes and two zero bits.
                if acc & 0b11 != 0 {
                    return None;
                }
                out.push((acc >> 10) as u8);
                out.push((acc >> 2) as u8);
            }
            2 => {
                // 12 bits: one byte and four zero bits.
                if acc & 0b1111 != 0 {
                    return None;
                }
                out.push((acc >> 4) as u8);
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Encodes bytes as base64url without padding (RFC 4648 §5), as JOSE thumbprints such as
/// `x5t#S256` are written.
pub(crate) fn base64url_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let group = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        // One input byte gives two characters, two give three, three give four.
        for index in 0..=chunk.len() {
            let sextet = (group >> (18 - 6 * index)) & 0x3f;
            out.push(char::from(ALPHABET[sextet as usize]));
        }
    }
    out
}

/// Decodes one `application/x-www-form-urlencoded` component: `+` is a space and `%XX` is a
/// byte. A `%` not followed by two hex digits, or a result that is not UTF-8, is an error.
pub(crate) fn form_decode_component(input: &str) -> Option<String> {
    fn hex(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }

    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hi = hex(*bytes.get(i + 1)?)?;
                let lo = hex(*bytes.get(i + 2)?)?;
                out.push((hi << 4) | lo);
                i += 3;
            }
            other => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Formats a time as an HTTP date in the IMF-fixdate form of RFC 9110 §5.6.7, for example
/// `Sun, 06 Nov 1994 08:49:37 GMT`. Sub-second parts are truncated; times before the Unix
/// epoch are formatted as the epoch.
pub fn format_http_date(time: SystemTime) -> String {
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];

    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (hour, minute, second) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday.
    let weekday = WEEKDAYS[(days % 7) as usize];
    let month_name = MONTHS[(month - 1) as usize];
    format!("{weekday}, {day:02} {month_name} {year:04} {hour:02}:{minute:02}:{second:02} GMT")
}

/// Converts a count of days since 1970-01-01 into a proleptic Gregorian (year, month, day),
/// month and day starting at 1. Works in 400-year eras, each of which has exactly 146 097 days.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the origin to 0000-03-01 so that the leap day is the last day of a "year".
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn base64_round_trips_known_vectors() {
        let cases: [(&str, &[u8]); 7] = [
            ("", b""),
            ("Zg==", b"f"),
            ("Zm8=", b"fo"),
            ("Zm9v", b"foo"),
            ("Zm9vYg==", b"foob"),
            ("Zm9vYmE=", b"fooba"),
            ("Zm9vYmFy", b"foobar"),
        ];
        for (encoded, decoded) in cases {
            assert_eq!(
                base64_decode(encoded).as_deref(),
                Some(decoded),
                "{encoded}"
            );
        }
        assert_eq!(base64_decode("Zm9vYg").as_deref(), Some(&b"foob"[..]));
        assert_eq!(
            base64_decode("+/+/").as_deref(),
            Some(&[0xfb, 0xff, 0xbf][..])
        );
    }

    #[test]
    fn base64url_encodes_known_vectors_without_padding() {
        let cases: [(&[u8], &str); 8] = [
            (b"", ""),
            (b"f", "Zg"),
            (b"fo", "Zm8"),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg"),
            (b"fooba", "Zm9vYmE"),
            (b"foobar", "Zm9vYmFy"),
            (&[0xfb, 0xff, 0xbf], "-_-_"),
        ];
        for (decoded, encoded) in cases {
            assert_eq!(base64url_encode(decoded), encoded);
        }
    }

    #[test]
    fn base64_rejects_garbage() {
        for bad in [
            "Z", "Zg=", "Z===", "Zm9v!", "Zh==", "Zm9=", "Zg==Zg==", " Zg==",
        ] {
            assert_eq!(base64_decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn form_component_decoding() {
        assert_eq!(
            form_decode_component("a+b%2B%3A%25").as_deref(),
            Some("a b+:%")
        );
        assert_eq!(
            form_decode_component("%C3%A9t%C3%A9").as_deref(),
            Some("été")
        );
        assert_eq!(form_decode_component("plain").as_deref(), Some("plain"));
        assert_eq!(form_decode_component("bad%2"), None);
        assert_eq!(form_decode_component("bad%zz"), None);
        assert_eq!(form_decode_component("%FF"), None);
    }

    #[test]
    fn http_dates() {
        let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(
            format_http_date(at(784_111_777)),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(format_http_date(at(0)), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            format_http_date(at(951_782_400)),
            "Tue, 29 Feb 2000 00:00:00 GMT"
        );
        assert_eq!(
            format_http_date(at(1_709_251_199)),
            "Thu, 29 Feb 2024 23:59:59 GMT"
        );
        assert_eq!(
            format_http_date(at(4_102_444_800)),
            "Fri, 01 Jan 2100 00:00:00 GMT"
        );
        assert_eq!(
            format_http_date(UNIX_EPOCH - Duration::from_secs(5)),
            "Thu, 01 Jan 1970 00:00:00 GMT"
        );
    }
}
