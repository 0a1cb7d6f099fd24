//! Making text from outside safe to print: escaped, short, and without
//! credentials.
//!
//! Whatever an authority or a file sends (an error description, a body, a
//! header) may reach a log line or a terminal. Before it is kept in an error
//! or printed, control characters (newlines, ANSI escapes) and invisible
//! formatting characters (bidirectional overrides, line separators) are
//! written as `\u{..}` escapes, and the length is capped, so one answer can
//! neither forge log lines nor flood them.

/// The marker that ends a cut text.
const ELLIPSIS: char = '…';

/// Whether `c` must not reach a log or terminal as it is: control
/// characters, and the formatting characters that reorder, hide or break
/// lines (bidirectional controls, zero-width characters, line and paragraph
/// separators, the byte-order mark).
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
        )
}

/// Appends `c` to `out`, escaped when it must be.
fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if needs_escape(c) => {
            use std::fmt::Write;
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
        c => out.push(c),
    }
}

/// `text` with control and formatting characters escaped, cut to at most
/// `max_chars` characters (a cut text ends with `…`, which counts).
///
/// Applying it twice with the same cap changes nothing more, so a value
/// sanitised when it was received can be sanitised again when printed.
pub(crate) fn escape_capped(text: &str, max_chars: usize) -> String {
    let max_chars = max_chars.max(1);
    let mut out = String::new();
    let mut len = 0usize;
    // Where to cut (a byte index in `out`) if what follows does not fit:
    // the longest prefix that leaves room for the ellipsis.
    let mut cut = 0usize;
    let mut piece = String::new();
    for c in text.chars() {
        piece.clear();
        push_escaped(&mut piece, c);
        let n = piece.chars().count();
        if len + n > max_chars {
            out.truncate(cut);
            out.push(ELLIPSIS);
            return out;
        }
        out.push_str(&piece);
        len += n;
        if len < max_chars {
            cut = out.len();
        }
    }
    out
}

/// The words that make a field name a credential's: a field whose name
/// contains one of them holds a value that must never be shown.
const CREDENTIAL_WORDS: [&str; 7] = [
    "token",
    "secret",
    "password",
    "passwd",
    "assertion",
    // An echo of a token request: its form always has a grant type, and
    // its `Authorization` header carries the client's credentials (Basic)
    // while the form may hold extra parameters and nothing else that names
    // a credential.
    "grant_type",
    "authorization",
];

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Whether free text (an HTML or plain-text body) names a credential field,
/// so that no part of it may be shown: it mentions `token`, `secret`,
/// `password`, `passwd` or `assertion` anywhere (`access_token`,
/// `client_secret`, `client_assertion`, `subject_token`, ... included),
/// `grant_type` or `authorization` (an echo of a token request: a `Basic`
/// header and extra parameters), or uses a name containing `code` as a key
/// (`code=`, `"device_code":`).
pub(crate) fn names_a_credential(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    if CREDENTIAL_WORDS.iter().any(|w| lower.contains(w)) {
        return true;
    }
    let bytes = lower.as_bytes();
    let mut from = 0;
    while let Some(at) = lower[from..].find("code") {
        let start = from + at;
        // The end of the name that holds this `code` (`code_verifier`, say).
        let mut end = start + 4;
        while end < bytes.len() && is_name_char(bytes[end]) {
            end += 1;
        }
        // Skip a closing quote and blanks: `"code" :`, `code =`.
        let mut next = end;
        while next < bytes.len() && matches!(bytes[next], b'"' | b'\'' | b' ' | b'\t') {
            next += 1;
        }
        if next < bytes.len() && matches!(bytes[next], b'=' | b':') {
            return true;
        }
        from = start + 4;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_formatting_characters_are_escaped() {
        assert_eq!(
            escape_capped("a\nb\r\tc\u{1b}[31md\u{202e}e\u{2028}f\u{7f}", 200),
            "a\\nb\\r\\tc\\u{1b}[31md\\u{202e}e\\u{2028}f\\u{7f}"
        );
        assert_eq!(escape_capped("plain, ünïcode ✓", 200), "plain, ünïcode ✓");
    }

    #[test]
    fn long_text_is_cut_with_a_marker_and_never_mid_escape() {
        let cut = escape_capped(&"x".repeat(1_000), 10);
        assert_eq!(cut, format!("{}…", "x".repeat(9)));
        assert_eq!(escape_capped("0123456789", 10), "0123456789");
        let cut = escape_capped("abcdefgh\n\n", 10);
        assert_eq!(cut, "abcdefgh…");
        for text in ["a\nb".repeat(500), "\u{1b}".repeat(500), "é".repeat(500)] {
            let once = escape_capped(&text, 50);
            assert!(once.chars().count() <= 50, "{once}");
            assert_eq!(escape_capped(&once, 50), once, "idempotent");
        }
    }

    #[test]
    fn credential_field_names_are_recognised() {
        for text in [
            "access_token=x",
            "{\"refresh_token\": \"x\"}",
            "Client-Secret: x",
            "client_assertion=x",
            "Password: x",
            "code=x",
            "\"device_code\" : \"x\"",
            "code_verifier=x",
            "the token was rejected",
            // An echoed client-credentials request with `Basic` credentials:
            // no other word of the list, an extra parameter's value.
            "grant_type=client_credentials&tenant=x\nAuthorization: Basic eDp5",
            "AUTHORIZATION: Bearer x",
        ] {
            assert!(names_a_credential(text), "{text}");
        }
        for text in [
            "<html><title>502 Bad Gateway</title></html>",
            "<code>nginx</code>",
            "Service Unavailable",
            "unicode barcodes",
        ] {
            assert!(!names_a_credential(text), "{text}");
        }
    }
}
