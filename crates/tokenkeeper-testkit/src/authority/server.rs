//! The HTTP side of the authority: accepting connections, reading requests, writing answers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};

use super::body::ResponseBody;
use super::codec::{base64_decode, form_decode_component};
use super::fault::Fault;
use super::record::{Outcome, TlsFailure, TlsSession};
use super::state::{BasicCredentials, Decision, FormRequest, Reply, Shared, Summary};
use super::tls::TlsServer;

/// The path of the token endpoint.
pub(crate) const TOKEN_PATH: &str = "/token";

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections on every listener until `stop` fires (or its sender is dropped).
/// Connections are served over TLS when `tls` is set.
pub(crate) async fn serve(
    listeners: Vec<TcpListener>,
    shared: Arc<Shared>,
    tls: Option<Arc<TlsServer>>,
    mut stop: oneshot::Receiver<()>,
) {
    // Accept loops and connections are tasks of the authority's own runtime: returning from
    // here ends the runtime, which cancels them all and closes their sockets.
    for listener in listeners {
        tokio::spawn(accept_loop(listener, Arc::clone(&shared), tls.clone()));
    }
    let _ = (&mut stop).await;
    tracing::debug!("authority stopped accepting connections");
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tls: Option<Arc<TlsServer>>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tracing::trace!(%peer, "authority accepted a connection");
                // Best effort: small answers should leave at once.
                let _ = stream.set_nodelay(true);
                let shared = Arc::clone(&shared);
                match &tls {
                    None => {
                        tokio::spawn(connection(stream, shared, None));
                    }
                    Some(tls) => {
                        tokio::spawn(tls_connection(stream, peer, shared, Arc::clone(tls)));
                    }
                }
            }
            Err(error) => {
                // Typically out of file descriptors: back off a little instead of spinning.
                tracing::warn!(%error, "authority failed to accept a connection");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Completes the TLS handshake, then serves the connection; a failed handshake is logged.
async fn tls_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    tls: Arc<TlsServer>,
) {
    let error = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor.accept(stream)).await {
        Ok(Ok(stream)) => {
            let session = tls.session(stream.get_ref().1);
            connection(stream, shared, Some(session)).await;
            return;
        }
        Ok(Err(error)) => error.to_string(),
        Err(_) => "the TLS handshake timed out".to_owned(),
    };
    tracing::debug!(%peer, %error, "authority TLS handshake failed");
    shared.lock().tls_failures.push(TlsFailure {
        at: SystemTime::now(),
        peer,
        error,
    });
}

/// Serves one connection. A [`Fault::DropConnection`] fires `kill`, which drops the connection
/// (and so closes the socket) without writing anything.
async fn connection<S>(stream: S, shared: Arc<Shared>, tls: Option<TlsSession>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let kill = Arc::new(Notify::new());
    let tls = tls.map(Arc::new);
    let service = {
        let kill = Arc::clone(&kill);
        service_fn(move |request| {
            handle(Arc::clone(&shared), Arc::clone(&kill), tls.clone(), request)
        })
    };
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        result = served => {
            if let Err(error) = result {
                tracing::debug!(%error, "authority connection ended with an error");
            }
        }
        () = kill.notified() => {
            tracing::debug!("authority dropped a connection as scripted");
        }
    }
}

/// A problem with the request that normal processing answers before looking at the form.
struct Problem {
    status: u16,
    description: &'static str,
}

/// Marks the request as abandoned if its future is dropped before an answer is decided
/// (the client hung up during a [`Fault::Delay`]).
struct AbandonGuard {
    shared: Arc<Shared>,
    seq: u64,
    armed: bool,
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        if self.armed {
            self.shared.abandon(self.seq);
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    kill: Arc<Notify>,
    tls: Option<Arc<TlsSession>>,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let _in_flight = super::state::InFlight::new(&shared);
    let (parts, body) = request.into_parts();
    let body = Limited::new(body, shared.max_request_body)
        .collect()
        .await
        .map(|collected| collected.to_bytes());
    let at = SystemTime::now();

    let is_form = has_form_content_type(&parts.headers);
    let problem = if parts.method != Method::POST {
        Some(Problem {
            status: 405,
            description: "the token endpoint only accepts POST",
        })
    } else {
        match &body {
            Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => Some(Problem {
                status: 413,
                description: "the request body is too large",
            }),
            Err(_) => Some(Problem {
                status: 400,
                description: "the request body could not be read",
            }),
            Ok(_) if !is_form => Some(Problem {
                status: 400,
                description: "the body must be application/x-www-form-urlencoded",
            }),
            Ok(_) => None,
        }
    };
    let params = match (&body, is_form) {
        (Ok(bytes), true) => url::form_urlencoded::parse(bytes).into_owned().collect(),
        _ => Vec::new(),
    };
    let form = FormRequest {
        params,
        basic: parse_authorization(&parts.headers),
        dpop: parts
            .headers
            .get_all("dpop")
            .iter()
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
            .collect(),
        url: request_url(&parts, tls.is_some()),
        tls: tls.as_deref().cloned(),
        path: parts.uri.path().to_owned(),
    };

    let path = parts.uri.path().to_owned();
    let metadata = parts.method == Method::GET && shared.discovery.is_metadata_path(&path);
    let token_endpoint =
        shared.discovery.is_token_path(&path) || path == super::device::DEVICE_PATH;
    let summary = Summary::new(parts.method.as_str().to_owned(), path.clone(), &form);
    let (seq, decision) = shared.begin(at, summary, token_endpoint);
    if metadata && !matches!(decision, Decision::Down) {
        return Ok(metadata_document(&shared, seq, &path));
    }
    tracing::debug!(seq, ?decision, method = %parts.method, "authority received a request");
    let mut guard = AbandonGuard {
        shared: Arc::clone(&shared),
        seq,
        armed: true,
    };

    let response = match decision {
        Decision::Down => {
            shared.finish(seq, Some(503), Outcome::Down);
            html_page(StatusCode::SERVICE_UNAVAILABLE)
        }
        Decision::NotFound => {
            shared.finish(seq, Some(404), Outcome::NotFound);
            respond(StatusCode::NOT_FOUND, None, ResponseBody::empty())
        }
        Decision::Normal => normal(&shared, seq, problem, &form, None),
        Decision::Fault(Fault::Delay(delay)) => {
            tokio::time::sleep(delay).await;
            normal(&shared, seq, problem, &form, None)
        }
        Decision::Fault(fault) if fault.processes_request() => {
            normal(&shared, seq, problem, &form, Some(&fault))
        }
        Decision::Fault(Fault::DropConnection) => {
            shared.finish(seq, None, Outcome::Dropped);
            guard.armed = false;
            kill.notify_one();
            // The connection is dropped from under this future; it never completes.
            return std::future::pending().await;
        }
        Decision::Fault(Fault::EchoRequest { status }) => {
            let response = echo_request(status_or_500(status), &form, &parts.headers);
            shared.finish(seq, Some(response.status().as_u16()), Outcome::Faulted);
            response
        }
        Decision::Fault(fault) => {
            let response = fault_response(&shared, &fault);
            shared.finish(seq, Some(response.status().as_u16()), Outcome::Faulted);
            response
        }
    };
    guard.armed = false;
    Ok(response)
}

/// The answer to a `GET` of a metadata location (see [`super::discovery`]).
fn metadata_document(shared: &Shared, seq: u64, path: &str) -> Response<ResponseBody> {
    match shared.discovery.document(path) {
        Some(document) => {
            shared.finish(seq, Some(200), Outcome::MetadataServed);
            json(StatusCode::OK, &document)
        }
        None => {
            shared.finish(seq, Some(404), Outcome::NotFound);
            respond(StatusCode::NOT_FOUND, None, ResponseBody::empty())
        }
    }
}

/// Normal processing of a token request.
fn normal(
    shared: &Shared,
    seq: u64,
    problem: Option<Problem>,
    form: &FormRequest,
    shape: Option<&Fault>,
) -> Response<ResponseBody> {
    if let Some(problem) = problem {
        shared.finish(
            seq,
            Some(problem.status),
            Outcome::Rejected {
                error: "invalid_request".to_owned(),
            },
        );
        let mut response = oauth_error(
            shared,
            status_or_500(problem.status),
            "invalid_request",
            Some(problem.description),
        );
        if problem.status == 405 {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
        }
        return response;
    }
    let (reply, dpop_nonce) = shared.process(seq, form, shape);
    let mut response = match reply {
        Reply::Token(body) => json(StatusCode::OK, &Value::Object(body)),
        Reply::Error {
            status,
            error,
            description,
        } => oauth_error(shared, status_or_500(status), error, Some(&description)),
    };
    if let Some(nonce) = dpop_nonce.and_then(|nonce| HeaderValue::from_str(&nonce).ok()) {
        response.headers_mut().insert("dpop-nonce", nonce);
    }
    response
}

/// The answer a replacing fault dictates.
fn fault_response(shared: &Shared, fault: &Fault) -> Response<ResponseBody> {
    let status = status_or_500(fault.status_code().unwrap_or(200));
    match fault {
        Fault::Status {
            oauth_error: error,
            retry_after,
            ..
        } => {
            let mut response = match error {
                Some((error, description)) => {
                    oauth_error(shared, status, error, description.as_deref())
                }
                None => {
                    let mut response = respond(status, None, ResponseBody::empty());
                    if status == StatusCode::UNAUTHORIZED {
                        insert_www_authenticate(shared, response.headers_mut());
                    }
                    response
                }
            };
            if let Some(retry_after) = retry_after
                && let Ok(value) = HeaderValue::from_str(&retry_after.header_value())
            {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
        Fault::MalformedJson => respond(
            StatusCode::OK,
            Some("application/json"),
            ResponseBody::full(Bytes::from_static(
                b"{\"access_token\": \"abc\", \"expires_in\": ",
            )),
        ),
        Fault::HtmlErrorPage { .. } => html_page(status),
        Fault::OversizedBody { bytes } => respond(
            StatusCode::OK,
            Some("application/json"),
            ResponseBody::oversized(*bytes),
        ),
        Fault::EmptyBody { .. } => respond(status, Some("application/json"), ResponseBody::empty()),
        Fault::Body {
            content_type, body, ..
        } => {
            let mut response = respond(
                status,
                None,
                ResponseBody::full(Bytes::from(body.clone().into_bytes())),
            );
            if let Some(value) = content_type
                .as_deref()
                .and_then(|c| HeaderValue::from_str(c).ok())
            {
                response.headers_mut().insert(header::CONTENT_TYPE, value);
            }
            response
        }
        // Delay, DropConnection and the shape faults are handled by the caller; should one
        // arrive here anyway, answer like a broken server rather than panic.
        _ => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            None,
            ResponseBody::empty(),
        ),
    }
}

/// A `text/plain` page echoing the request, as a careless server's error page does: the
/// form re-encoded on one line, then the `Authorization` header, if any.
fn echo_request(
    status: StatusCode,
    form: &FormRequest,
    headers: &HeaderMap,
) -> Response<ResponseBody> {
    let mut text = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form.params.iter())
        .finish();
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        text.push_str("\nAuthorization: ");
        text.push_str(&String::from_utf8_lossy(value.as_bytes()));
    }
    respond(
        status,
        Some("text/plain"),
        ResponseBody::full(Bytes::from(text.into_bytes())),
    )
}

fn status_or_500(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Builds a response with the headers every answer carries.
fn respond(
    status: StatusCode,
    content_type: Option<&'static str>,
    body: ResponseBody,
) -> Response<ResponseBody> {
    let length = body.remaining();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    if let Some(content_type) = content_type {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    response
}

fn json(status: StatusCode, value: &Value) -> Response<ResponseBody> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    respond(
        status,
        Some("application/json;charset=UTF-8"),
        ResponseBody::full(body),
    )
}

/// An RFC 6749 §5.2 error answer; a 401 also carries `WWW-Authenticate`.
fn oauth_error(
    shared: &Shared,
    status: StatusCode,
    error: &str,
    description: Option<&str>,
) -> Response<ResponseBody> {
    let mut body = Map::new();
    body.insert("error".into(), error.into());
    if let Some(description) = description {
        body.insert("error_description".into(), description.into());
    }
    let mut response = json(status, &Value::Object(body));
    if status == StatusCode::UNAUTHORIZED {
        insert_www_authenticate(shared, response.headers_mut());
    }
    response
}

fn insert_www_authenticate(shared: &Shared, headers: &mut HeaderMap) {
    let realm = shared.realm.replace('\\', "\\\\").replace('"', "\\\"");
    if let Ok(value) = HeaderValue::from_str(&format!("Basic realm=\"{realm}\"")) {
        headers.insert(header::WWW_AUTHENTICATE, value);
    }
}

/// An HTML error page as a reverse proxy would write it.
fn html_page(status: StatusCode) -> Response<ResponseBody> {
    let reason = status.canonical_reason().unwrap_or("Error");
    let code = status.as_u16();
    let page = format!(
        "<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n\
         <center><h1>{code} {reason}</h1></center>\r\n<hr><center>tokenkeeper-testkit</center>\r\n\
         </body>\r\n</html>\r\n"
    );
    respond(status, Some("text/html"), ResponseBody::full(page))
}

/// The URL a request was sent to, as the client named it: scheme, `Host` (or the authority of
/// an absolute-form target) and path, without query. What a DPoP proof's `htu` must match.
fn request_url(parts: &hyper::http::request::Parts, tls: bool) -> String {
    let host = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        });
    let scheme = if tls { "https" } else { "http" };
    format!(
        "{scheme}://{}{}",
        host.unwrap_or_default(),
        parts.uri.path()
    )
}

/// Whether the body is declared as `application/x-www-form-urlencoded` (parameters such as
/// `charset` are allowed).
fn has_form_content_type(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| {
            media
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// Reads `Authorization: Basic` credentials as RFC 6749 §2.3.1 encodes them: base64 of
/// `urlencode(id) ":" urlencode(secret)`.
fn parse_authorization(headers: &HeaderMap) -> BasicCredentials {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return BasicCredentials::Absent;
    };
    if values.next().is_some() {
        return BasicCredentials::Malformed;
    }
    let decoded = value
        .to_str()
        .ok()
        .and_then(|value| value.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .and_then(|(_, encoded)| base64_decode(encoded.trim()))
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|pair| {
            let (id, secret) = pair.split_once(':')?;
            Some((form_decode_component(id)?, form_decode_component(secret)?))
        });
    match decoded {
        Some((id, secret)) => BasicCredentials::Present { id, secret },
        None => BasicCredentials::Malformed,
    }
}
