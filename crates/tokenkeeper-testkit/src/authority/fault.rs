//! Scripted misbehaviour of the authority.

use std::time::{Duration, SystemTime};

use super::codec::format_http_date;

/// The value of a `Retry-After` response header (RFC 9110 §10.2.3).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryAfter {
    /// `Retry-After: <delta-seconds>`.
    Seconds(u64),
    /// `Retry-After: <HTTP-date>`, written as an IMF-fixdate (whole seconds, GMT).
    HttpDate(SystemTime),
    /// `Retry-After: <this text>`, sent as given: for values no well-behaved server writes
    /// (`Sun, 06 Nov 1000000000000 08:49:37 GMT`, a delta of forty digits, garbage). Text
    /// that is not a valid header value (a control character) leaves the header out.
    Raw(String),
}

impl RetryAfter {
    /// The header value as it is sent on the wire.
    pub fn header_value(&self) -> String {
        match self {
            RetryAfter::Seconds(secs) => secs.to_string(),
            RetryAfter::HttpDate(at) => format_http_date(*at),
            RetryAfter::Raw(text) => text.clone(),
        }
    }
}

/// One scripted misbehaviour, applied to the next request to the token endpoint.
///
/// Faults are queued ([`Authority::push_fault`](crate::Authority::push_fault),
/// [`Authority::script`](crate::Authority::script)) and consumed one per token request, in
/// order. Requests to other paths, and requests answered while the authority is
/// [down](crate::Authority::set_down), do not consume faults.
///
/// Faults that replace the answer (everything except [`Fault::Delay`],
/// [`Fault::MissingExpiresIn`] and [`Fault::UnknownTokenType`]) do not look at the request at
/// all: no client is authenticated, no token is issued and no refresh token is consumed. The
/// other three let the request be processed normally and only change when or how a successful
/// answer is written; if normal processing fails (for example a wrong secret), the error is
/// answered and the fault is spent all the same.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Answer with this status. With `oauth_error`, the body is an RFC 6749 §5.2 error
    /// document `{"error": .., "error_description": ..}` (`application/json`); without it the
    /// body is empty. A 401 also carries `WWW-Authenticate`.
    Status {
        /// The HTTP status code (100–999).
        status: u16,
        /// The `error` code and optional `error_description` of the JSON body.
        oauth_error: Option<(String, Option<String>)>,
        /// An optional `Retry-After` header.
        retry_after: Option<RetryAfter>,
    },
    /// Wait this long, then process the request normally. The wait does not hold up other
    /// connections. If the client hangs up during the wait the request is abandoned: nothing is
    /// issued, no refresh token is consumed, and the log says [`Outcome::Abandoned`].
    ///
    /// [`Outcome::Abandoned`]: crate::Outcome::Abandoned
    Delay(Duration),
    /// Close the TCP connection without writing any HTTP response.
    DropConnection,
    /// `200 OK`, `application/json`, with the truncated body
    /// `{"access_token": "abc", "expires_in": `.
    MalformedJson,
    /// An HTML error page such as a reverse proxy writes, with this status and `text/html`.
    HtmlErrorPage {
        /// The HTTP status code, for example 502.
        status: u16,
    },
    /// `200 OK`, `application/json`, with a JSON-looking body of exactly `bytes` bytes,
    /// streamed in chunks. The `Content-Length` header announces the full size.
    OversizedBody {
        /// The body size in bytes.
        bytes: usize,
    },
    /// A normal successful answer, but without `expires_in`.
    MissingExpiresIn,
    /// A normal successful answer, but with this `token_type` (for example `"MAC"`).
    UnknownTokenType(String),
    /// This status with an empty body (`Content-Length: 0`, `Content-Type: application/json`).
    EmptyBody {
        /// The HTTP status code.
        status: u16,
    },
    /// This status with exactly this body and, when given, this `Content-Type`: any answer a
    /// server could write (a token in a 500 page, a grant in a 400, an error document with
    /// hostile text).
    Body {
        /// The HTTP status code.
        status: u16,
        /// The `Content-Type` header, if any.
        content_type: Option<String>,
        /// The body, sent as given.
        body: String,
    },
    /// This status with a `text/plain` body echoing the request as a careless server's error
    /// page does: its form, re-encoded, and its `Authorization` header, if any, each on a line.
    EchoRequest {
        /// The HTTP status code.
        status: u16,
    },
}

impl Fault {
    /// `Fault::Status` with an empty body and no `Retry-After`.
    pub fn status(status: u16) -> Fault {
        Fault::Status {
            status,
            oauth_error: None,
            retry_after: None,
        }
    }

    /// `Fault::Status` with an RFC 6749 §5.2 error body.
    pub fn oauth_error(status: u16, error: impl Into<String>, description: Option<&str>) -> Fault {
        Fault::Status {
            status,
            oauth_error: Some((error.into(), description.map(str::to_owned))),
            retry_after: None,
        }
    }

    /// `Fault::Status` with an empty body and a `Retry-After` header.
    pub fn retry_after(status: u16, retry_after: RetryAfter) -> Fault {
        Fault::Status {
            status,
            oauth_error: None,
            retry_after: Some(retry_after),
        }
    }

    /// Whether the request is still processed normally under this fault.
    pub(crate) fn processes_request(&self) -> bool {
        matches!(
            self,
            Fault::Delay(_) | Fault::MissingExpiresIn | Fault::UnknownTokenType(_)
        )
    }

    /// The status code this fault carries, if any.
    pub(crate) fn status_code(&self) -> Option<u16> {
        match self {
            Fault::Status { status, .. }
            | Fault::HtmlErrorPage { status }
            | Fault::EmptyBody { status }
            | Fault::Body { status, .. }
            | Fault::EchoRequest { status } => Some(*status),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn retry_after_values() {
        assert_eq!(RetryAfter::Seconds(120).header_value(), "120");
        let at = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(
            RetryAfter::HttpDate(at).header_value(),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        let absurd = "Sun, 06 Nov 1000000000000 08:49:37 GMT";
        assert_eq!(RetryAfter::Raw(absurd.into()).header_value(), absurd);
    }
}
