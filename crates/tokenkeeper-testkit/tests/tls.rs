//! The authority over HTTPS, driven by a plain rustls client (blocking, one request per
//! connection), so that the test kit depends on no client of the project: every server
//! certificate variant, TLS 1.2 only, client certificates and RFC 8705 client authentication,
//! and faults over TLS.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{CertificateError, ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::Value;
use tokenkeeper_testkit::pki::{Identity, Pki, ServerCert};
use tokenkeeper_testkit::{
    AuthMethod, Authority, Client, ClientAuth, Fault, Outcome, PresentedAuth, TlsSettings,
    TlsVersion,
};

const IO_TIMEOUT: Duration = Duration::from_secs(20);

const TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

// ----- a tiny HTTPS client -----

/// How the test client connects.
struct ClientSide {
    /// PEM of the roots to trust.
    roots: Vec<String>,
    /// A client certificate to present.
    identity: Option<Identity>,
    /// Which versions to offer.
    versions: &'static [&'static rustls::SupportedProtocolVersion],
}

impl ClientSide {
    fn trusting(pki: &Pki) -> ClientSide {
        ClientSide {
            roots: vec![pki.ca_pem().to_owned()],
            identity: None,
            versions: rustls::ALL_VERSIONS,
        }
    }

    fn identity(mut self, identity: Identity) -> ClientSide {
        self.identity = Some(identity);
        self
    }

    fn versions(mut self, versions: &'static [&'static rustls::SupportedProtocolVersion]) -> Self {
        self.versions = versions;
        self
    }

    fn config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for pem in &self.roots {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(cert.expect("a PEM certificate")).expect("a root");
            }
        }
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(self.versions)
                .expect("versions")
                .with_root_certificates(roots);
        let config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some(identity) => {
                let chain = CertificateDer::pem_slice_iter(identity.chain_pem().as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .expect("a chain");
                let key =
                    PrivateKeyDer::from_pem_slice(identity.key_pem().as_bytes()).expect("a key");
                builder
                    .with_client_auth_cert(chain, key)
                    .expect("a client identity")
            }
        };
        Arc::new(config)
    }
}

#[derive(Debug)]
struct HttpResponse {
    status: u16,
    body: Vec<u8>,
}

impl HttpResponse {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// Sends one POST with `Connection: close` over TLS to `localhost` and reads the answer. The
/// error is rustls's when the handshake fails.
fn post(
    authority: &Authority,
    client: &ClientSide,
    headers: &[(&str, &str)],
    body: &str,
) -> io::Result<HttpResponse> {
    let tcp = TcpStream::connect(authority.addr())?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    let name = ServerName::try_from("localhost").expect("a name");
    let connection = ClientConnection::new(client.config(), name).map_err(io::Error::other)?;
    let mut stream = StreamOwned::new(connection, tcp);
    let mut request = format!(
        "POST /token HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes())?;
    stream.flush()?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            // A server that closes without close_notify after a complete answer is fine here.
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof && !raw.is_empty() => break,
            Err(error) => return Err(error),
        }
    }
    parse(&raw).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no HTTP answer"))
}

fn parse(raw: &[u8]) -> Option<HttpResponse> {
    let end = raw.windows(4).position(|window| window == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some(HttpResponse {
        status,
        body: raw[end + 4..].to_vec(),
    })
}

fn form(pairs: &[(&str, &str)]) -> String {
    let mut serializer = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        serializer.append_pair(name, value);
    }
    serializer.finish()
}

/// `client_credentials` with `client_id` in the body and no secret: RFC 8705 client auth.
fn mtls_grant(client_id: &str) -> String {
    form(&[
        ("grant_type", "client_credentials"),
        ("client_id", client_id),
    ])
}

/// `client_credentials` with `client_secret_post`.
fn post_grant(client_id: &str, secret: &str) -> String {
    form(&[
        ("grant_type", "client_credentials"),
        ("client_id", client_id),
        ("client_secret", secret),
    ])
}

/// The certificate error inside an I/O error from rustls, if it is one.
fn certificate_error(error: &io::Error) -> Option<CertificateError> {
    let inner = error.get_ref()?.downcast_ref::<rustls::Error>()?;
    match inner {
        rustls::Error::InvalidCertificate(error) => Some(error.clone()),
        _ => None,
    }
}

fn https(settings: TlsSettings) -> Authority {
    let authority = Authority::builder().tls(settings).start();
    authority.register_client(Client::new("svc", "s3cret").auth_method(AuthMethod::Post));
    authority
}

// ----- server certificates -----

#[test]
fn https_serves_tokens_on_localhost_and_logs_the_session() {
    let pki = Pki::shared();
    let authority = https(TlsSettings::new(&pki));
    assert!(authority.is_https());
    assert_eq!(
        authority.token_url(),
        format!("https://localhost:{}/token", authority.addr().port())
    );
    let answer = post(
        &authority,
        &ClientSide::trusting(&pki),
        &[],
        &post_grant("svc", "s3cret"),
    )
    .expect("an answer");
    assert_eq!(answer.status, 200, "{answer:?}");
    let token = answer.json()["access_token"].as_str().unwrap().to_owned();
    assert!(authority.token_is_active(&token));
    let record = &authority.requests()[0];
    let tls = record.tls.as_ref().expect("a TLS session");
    assert_eq!(tls.version, TlsVersion::Tls13);
    assert_eq!(tls.client_certificate, None);
    assert_eq!(record.auth, PresentedAuth::Post);
    assert!(record.authenticated);
    // A token from a secret is bound to nothing.
    assert_eq!(authority.token_binding(&token), None);
    assert!(authority.tls_failures().is_empty());
}

#[test]
fn every_server_certificate_variant_is_judged_as_documented() {
    let pki = Pki::shared();
    for variant in ServerCert::ALL {
        let authority = https(TlsSettings::new(&pki).certificate(variant));
        let result = post(
            &authority,
            &ClientSide::trusting(&pki),
            &[],
            &post_grant("svc", "s3cret"),
        );
        if variant.is_trusted() {
            assert_eq!(result.expect("an answer").status, 200, "{variant}");
            continue;
        }
        let error = result.expect_err(variant.as_str());
        let found = certificate_error(&error);
        let expected = match (variant, &found) {
            (
                ServerCert::UnknownCa | ServerCert::SelfSigned,
                Some(CertificateError::UnknownIssuer),
            ) => true,
            (
                ServerCert::WrongName,
                Some(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                ),
            ) => true,
            (
                ServerCert::Expired,
                Some(CertificateError::Expired | CertificateError::ExpiredContext { .. }),
            ) => true,
            (
                ServerCert::NotYetValid,
                Some(CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }),
            ) => true,
            // webpki refuses a CA certificate as an end entity before looking for its issuer.
            (ServerCert::SelfSignedCa, Some(CertificateError::Other(other))) => {
                format!("{other:?}").contains("CaUsedAsEndEntity")
            }
            _ => false,
        };
        assert!(expected, "{variant}: {error} ({found:?})");
        // The client's alert reaches the server, which logs the failed handshake and no request.
        assert!(
            wait_for(|| !authority.tls_failures().is_empty()),
            "{variant}: no TLS failure logged"
        );
        assert_eq!(authority.request_count(), 0);
    }
}

#[test]
fn a_client_trusting_the_unknown_ca_or_the_self_signed_certificate_gets_through() {
    let pki = Pki::shared();
    for (variant, root) in [
        (ServerCert::UnknownCa, pki.unknown_ca().pem().to_owned()),
        (
            ServerCert::SelfSigned,
            pki.server(ServerCert::SelfSigned).cert_pem().to_owned(),
        ),
    ] {
        let authority = https(TlsSettings::new(&pki).certificate(variant));
        let client = ClientSide {
            roots: vec![root],
            identity: None,
            versions: rustls::ALL_VERSIONS,
        };
        let answer = post(&authority, &client, &[], &post_grant("svc", "s3cret"))
            .unwrap_or_else(|error| panic!("{variant}: {error}"));
        assert_eq!(answer.status, 200, "{variant}");
    }
    // And a client of another PKI does not trust this one.
    let other = Pki::generate();
    let authority = https(TlsSettings::new(&pki));
    let error = post(
        &authority,
        &ClientSide::trusting(&other),
        &[],
        &post_grant("svc", "s3cret"),
    )
    .expect_err("another PKI's CA");
    assert_eq!(
        certificate_error(&error),
        Some(CertificateError::UnknownIssuer)
    );
}

#[test]
fn tls12_only_negotiates_tls12_and_refuses_a_tls13_only_client() {
    let pki = Pki::shared();
    let authority = https(TlsSettings::new(&pki).tls12_only(true));
    let answer = post(
        &authority,
        &ClientSide::trusting(&pki),
        &[],
        &post_grant("svc", "s3cret"),
    )
    .expect("an answer");
    assert_eq!(answer.status, 200);
    assert_eq!(
        authority.requests()[0].tls.as_ref().map(|tls| tls.version),
        Some(TlsVersion::Tls12)
    );
    let error = post(
        &authority,
        &ClientSide::trusting(&pki).versions(TLS13_ONLY),
        &[],
        &post_grant("svc", "s3cret"),
    )
    .expect_err("no common version");
    assert!(certificate_error(&error).is_none(), "{error}");
    assert!(wait_for(|| authority.tls_failures().len() == 1));
    assert_eq!(authority.request_count(), 1);
}

#[test]
fn plain_http_to_an_https_authority_is_a_failed_handshake() {
    let pki = Pki::shared();
    let authority = https(TlsSettings::new(&pki));
    let mut tcp = TcpStream::connect(authority.addr()).expect("connect");
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    tcp.write_all(b"POST /token HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");
    assert!(wait_for(|| authority.tls_failures().len() == 1));
    assert_eq!(authority.request_count(), 0);
}

// ----- faults over TLS -----

#[test]
fn faults_and_outages_work_the_same_over_tls() {
    let pki = Pki::shared();
    let authority = https(TlsSettings::new(&pki));
    let client = ClientSide::trusting(&pki);
    let grant = post_grant("svc", "s3cret");

    authority.push_fault(Fault::status(503));
    assert_eq!(post(&authority, &client, &[], &grant).unwrap().status, 503);

    authority.push_fault(Fault::DropConnection);
    let dropped = post(&authority, &client, &[], &grant);
    assert!(dropped.is_err(), "{dropped:?}");

    authority.set_down(true);
    assert_eq!(post(&authority, &client, &[], &grant).unwrap().status, 503);
    authority.set_down(false);

    assert_eq!(post(&authority, &client, &[], &grant).unwrap().status, 200);
    let outcomes: Vec<Outcome> = authority
        .requests()
        .into_iter()
        .map(|record| record.outcome)
        .collect();
    assert!(
        matches!(
            outcomes.as_slice(),
            [
                Outcome::Faulted,
                Outcome::Dropped,
                Outcome::Down,
                Outcome::Issued { .. }
            ]
        ),
        "{outcomes:?}"
    );
}

// ----- client certificates -----

#[test]
fn tls_client_auth_authenticates_by_a_certificate_of_the_client_ca() {
    let pki = Pki::shared();
    let authority = https(TlsSettings::new(&pki).client_auth(ClientAuth::Require));
    authority.register_client(Client::tls_client_auth("mtls-client"));
    let identity = pki.client_identity("mtls-client");
    let client = ClientSide::trusting(&pki).identity(identity.clone());

    let answer = post(&authority, &client, &[], &mtls_grant("mtls-client")).expect("an answer");
    assert_eq!(
        answer.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&answer.body)
    );
    let token = answer.json()["access_token"].as_str().unwrap().to_owned();
    // RFC 8705 puts `cnf` in the token's introspection, not in the token answer.
    assert!(answer.json().get("cnf").is_none());

    let record = &authority.requests()[0];
    assert_eq!(record.auth, PresentedAuth::Certificate);
    assert!(record.authenticated);
    assert_eq!(record.client_id.as_deref(), Some("mtls-client"));
    let presented = record
        .tls
        .as_ref()
        .and_then(|tls| tls.client_certificate.clone())
        .expect("a presented certificate");
    assert_eq!(presented.x5t_s256, identity.x5t_s256());
    assert_eq!(presented.common_name.as_deref(), Some("mtls-client"));
    assert!(presented.chains_to_client_ca);
    assert_eq!(authority.token_binding(&token), Some(identity.x5t_s256()));
    assert_eq!(
        authority.last_issued().and_then(|issued| issued.bound_to),
        Some(identity.x5t_s256())
    );

    // A certificate of the client CA for another id does not authenticate this client.
    let other = ClientSide::trusting(&pki).identity(pki.client_identity("someone-else"));
    let refused = post(&authority, &other, &[], &mtls_grant("mtls-client")).unwrap();
    assert_eq!(refused.status, 401);
    assert_eq!(refused.json()["error"], "invalid_client");

    // A secret is not accepted from a client registered for tls_client_auth.
    let refused = post(&authority, &client, &[], &post_grant("mtls-client", "")).unwrap();
    assert_eq!(refused.status, 401);
    assert_eq!(refused.json()["error"], "invalid_client");

    // A secret client is still served on a connection with a client certificate, and its
    // token is bound to nothing.
    let answer = post(&authority, &client, &[], &post_grant("svc", "s3cret")).unwrap();
    assert_eq!(answer.status, 200);
    let last = authority.requests().pop().unwrap();
    assert_eq!(last.auth, PresentedAuth::Post);
    assert!(last.tls.unwrap().client_certificate.is_some());
    assert_eq!(authority.last_issued().unwrap().bound_to, None);

    // Without a certificate the handshake fails: it is required.
    let without = post(
        &authority,
        &ClientSide::trusting(&pki),
        &[],
        &mtls_grant("mtls-client"),
    );
    assert!(without.is_err(), "{without:?}");
    assert!(wait_for(|| authority.tls_failures().len() == 1));
}

#[test]
fn a_client_alt_name_equal_to_the_client_id_authenticates_too() {
    // RFC 8705 lets a registration name a SAN instead of the subject; the authority accepts a
    // subject CN or any SAN equal to the client id.
    let pki = Pki::shared();
    let authority = https(TlsSettings::new(&pki).client_auth(ClientAuth::AcceptAny));
    for (id, names) in [
        ("svc.example", &["svc.example"][..]),
        (
            "spiffe://example/svc",
            &["other.example", "spiffe://example/svc"][..],
        ),
    ] {
        authority.register_client(Client::tls_client_auth(id));
        let identity = pki.client_identity_with_names("not-the-id", names);
        let client = ClientSide::trusting(&pki).identity(identity);
        let answer = post(&authority, &client, &[], &mtls_grant(id)).unwrap();
        assert_eq!(
            answer.status,
            200,
            "{id}: {:?}",
            String::from_utf8_lossy(&answer.body)
        );
        let record = authority.requests().pop().unwrap();
        let presented = record.tls.unwrap().client_certificate.unwrap();
        assert_eq!(presented.alt_names, names);
        assert_eq!(presented.common_name.as_deref(), Some("not-the-id"));
    }

    // A certificate naming `localhost` that does not chain to the client CA (a server
    // certificate of the CA) is refused for that reason, although its name matches.
    authority.register_client(Client::tls_client_auth("localhost"));
    let client = ClientSide::trusting(&pki).identity(pki.server(ServerCert::Valid).clone());
    let refused = post(&authority, &client, &[], &mtls_grant("localhost")).unwrap();
    assert_eq!(refused.status, 401);
    let record = authority.requests().pop().unwrap();
    let presented = record.tls.unwrap().client_certificate.unwrap();
    assert_eq!(presented.alt_names, ["localhost", "127.0.0.1", "::1"]);
    assert!(!presented.chains_to_client_ca);
}

#[test]
fn request_mode_serves_clients_without_a_certificate_and_refuses_unknown_issuers() {
    let pki = Pki::shared();
    let authority = https(TlsSettings::new(&pki).client_auth(ClientAuth::Request));
    authority.register_client(Client::tls_client_auth("mtls-client"));

    // No certificate: the connection is served, a secret client authenticates, and an mTLS
    // client gets invalid_client.
    let plain = ClientSide::trusting(&pki);
    assert_eq!(
        post(&authority, &plain, &[], &post_grant("svc", "s3cret"))
            .unwrap()
            .status,
        200
    );
    let refused = post(&authority, &plain, &[], &mtls_grant("mtls-client")).unwrap();
    assert_eq!(refused.status, 401);
    assert_eq!(refused.json()["error"], "invalid_client");
    assert_eq!(authority.requests()[1].auth, PresentedAuth::None);

    // A certificate from a CA the authority does not know fails the handshake.
    let untrusted = plain.identity(pki.untrusted_client_identity("mtls-client"));
    let result = post(&authority, &untrusted, &[], &mtls_grant("mtls-client"));
    assert!(result.is_err(), "{result:?}");
    assert!(wait_for(|| authority.tls_failures().len() == 1));
    assert_eq!(authority.request_count(), 2);
}

#[test]
fn self_signed_tls_client_auth_matches_the_registered_thumbprint() {
    let pki = Pki::shared();
    let authority = https(TlsSettings::new(&pki).client_auth(ClientAuth::RequireAny));
    let identity = pki.self_signed_client_identity("device-1");
    authority.register_client(Client::self_signed_tls_client_auth(
        "device-1",
        identity.x5t_s256(),
    ));
    let client = ClientSide::trusting(&pki).identity(identity.clone());
    let answer = post(&authority, &client, &[], &mtls_grant("device-1")).expect("an answer");
    assert_eq!(
        answer.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&answer.body)
    );
    let token = answer.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(authority.token_binding(&token), Some(identity.x5t_s256()));
    let record = &authority.requests()[0];
    let presented = record
        .tls
        .as_ref()
        .unwrap()
        .client_certificate
        .clone()
        .unwrap();
    assert!(!presented.chains_to_client_ca);
    assert_eq!(presented.common_name.as_deref(), Some("device-1"));

    // Another self-signed certificate with the same name is refused...
    let impostor = ClientSide::trusting(&pki).identity(pki.self_signed_client_identity("device-1"));
    let refused = post(&authority, &impostor, &[], &mtls_grant("device-1")).unwrap();
    assert_eq!(refused.status, 401);
    assert_eq!(refused.json()["error"], "invalid_client");

    // ...and is accepted once its thumbprint is registered as well.
    let second = pki.self_signed_client_identity("device-1");
    authority.register_client(
        Client::self_signed_tls_client_auth("device-1", identity.x5t_s256())
            .certificate_thumbprint(second.x5t_s256()),
    );
    let client = ClientSide::trusting(&pki).identity(second);
    assert_eq!(
        post(&authority, &client, &[], &mtls_grant("device-1"))
            .unwrap()
            .status,
        200
    );

    // A certificate is required in this mode.
    let without = post(
        &authority,
        &ClientSide::trusting(&pki),
        &[],
        &mtls_grant("device-1"),
    );
    assert!(without.is_err(), "{without:?}");
}

#[test]
fn self_signed_client_certificates_fail_the_handshake_where_the_client_ca_is_required() {
    let pki = Pki::shared();
    let authority = https(TlsSettings::new(&pki).client_auth(ClientAuth::Require));
    let identity = pki.self_signed_client_identity("device-1");
    authority.register_client(Client::self_signed_tls_client_auth(
        "device-1",
        identity.x5t_s256(),
    ));
    let client = ClientSide::trusting(&pki).identity(identity);
    let result = post(&authority, &client, &[], &mtls_grant("device-1"));
    assert!(result.is_err(), "{result:?}");
    assert!(wait_for(|| authority.tls_failures().len() == 1));
    assert_eq!(authority.request_count(), 0);
}

#[test]
fn mtls_clients_of_a_plain_http_authority_get_invalid_client() {
    let authority = Authority::start();
    authority.register_client(Client::tls_client_auth("mtls-client"));
    let mut tcp = TcpStream::connect(authority.addr()).expect("connect");
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let body = mtls_grant("mtls-client");
    let request = format!(
        "POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).unwrap();
    let answer = parse(&raw).expect("an answer");
    assert_eq!(answer.status, 401);
    assert_eq!(answer.json()["error"], "invalid_client");
    let record = &authority.requests()[0];
    assert_eq!(record.tls, None);
    assert_eq!(record.auth, PresentedAuth::None);
}

#[test]
fn https_authorities_can_restart_on_a_fixed_port() {
    let pki = Pki::shared();
    let first = https(TlsSettings::new(&pki));
    let port = first.addr().port();
    drop(first);
    let again = Authority::builder()
        .port(port)
        .tls(TlsSettings::new(&pki))
        .start();
    again.register_client(Client::new("svc", "s3cret").auth_method(AuthMethod::Post));
    assert_eq!(
        post(
            &again,
            &ClientSide::trusting(&pki),
            &[],
            &post_grant("svc", "s3cret")
        )
        .unwrap()
        .status,
        200
    );
}

/// Waits up to five seconds for a condition on the authority (a handshake failure is logged
/// by the server a moment after the client has seen it).
fn wait_for(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    condition()
}
