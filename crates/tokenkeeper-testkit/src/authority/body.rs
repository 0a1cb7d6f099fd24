//! The response body type: a single buffer, or a large body produced chunk by chunk.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

/// Size of the frames of a streamed body.
const CHUNK: usize = 64 * 1024;

/// A response body with an exact, known length.
#[derive(Debug)]
pub(crate) enum ResponseBody {
    /// One buffer, sent as one frame.
    Full(Option<Bytes>),
    /// `head`, then `fill` filler bytes, then `tail`, in frames of at most [`CHUNK`] bytes.
    Streamed {
        head: Option<Bytes>,
        fill: usize,
        tail: Option<Bytes>,
        filler: Bytes,
    },
}

impl ResponseBody {
    /// An empty body.
    pub(crate) fn empty() -> ResponseBody {
        ResponseBody::Full(None)
    }

    /// A body holding these bytes.
    pub(crate) fn full(bytes: impl Into<Bytes>) -> ResponseBody {
        let bytes = bytes.into();
        if bytes.is_empty() {
            ResponseBody::Full(None)
        } else {
            ResponseBody::Full(Some(bytes))
        }
    }

    /// A JSON-looking token answer of exactly `size` bytes: a long `access_token` value made of
    /// `x` characters, streamed. Bodies too small for the frame are its truncated prefix.
    pub(crate) fn oversized(size: usize) -> ResponseBody {
        const HEAD: &[u8] = b"{\"access_token\":\"";
        const TAIL: &[u8] = b"\",\"token_type\":\"Bearer\",\"expires_in\":3600}";
        if size < HEAD.len() + TAIL.len() {
            let mut small = Vec::with_capacity(size);
            small.extend(HEAD.iter().chain(TAIL).take(size));
            return ResponseBody::full(small);
        }
        ResponseBody::Streamed {
            head: Some(Bytes::from_static(HEAD)),
            fill: size - HEAD.len() - TAIL.len(),
            tail: Some(Bytes::from_static(TAIL)),
            filler: Bytes::from(vec![b'x'; CHUNK]),
        }
    }

    /// The number of bytes still to be sent.
    pub(crate) fn remaining(&self) -> u64 {
        let len = |part: &Option<Bytes>| part.as_ref().map_or(0, Bytes::len);
        let total = match self {
            ResponseBody::Full(bytes) => len(bytes),
            ResponseBody::Streamed {
                head, fill, tail, ..
            } => len(head) + fill + len(tail),
        };
        total as u64
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = match self.get_mut() {
            ResponseBody::Full(bytes) => bytes.take(),
            ResponseBody::Streamed {
                head,
                fill,
                tail,
                filler,
            } => {
                if let Some(head) = head.take() {
                    Some(head)
                } else if *fill > 0 {
                    let n = (*fill).min(filler.len());
                    *fill -= n;
                    Some(filler.slice(..n))
                } else {
                    tail.take()
                }
            }
        };
        Poll::Ready(next.map(|bytes| Ok(Frame::data(bytes))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining() == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn collect(body: ResponseBody) -> Vec<u8> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime
            .block_on(body.collect())
            .map(|collected| collected.to_bytes().to_vec())
            .unwrap_or_else(|never| match never {})
    }

    #[test]
    fn oversized_bodies_have_the_exact_size() {
        for size in [0, 1, 10, 59, 60, 61, 1000, CHUNK, 3 * CHUNK + 7] {
            let body = ResponseBody::oversized(size);
            assert_eq!(body.remaining(), size as u64);
            let bytes = collect(body);
            assert_eq!(bytes.len(), size, "size {size}");
            if size >= 60 {
                assert!(bytes.starts_with(b"{\"access_token\":\"xx") || size == 60);
                assert!(bytes.ends_with(b"\"expires_in\":3600}"));
            }
        }
    }

    #[test]
    fn full_bodies() {
        assert_eq!(collect(ResponseBody::empty()), b"");
        assert_eq!(collect(ResponseBody::full("abc")), b"abc");
        assert!(ResponseBody::full("").is_end_stream());
    }
}
