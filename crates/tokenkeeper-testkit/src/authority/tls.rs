//! The authority over HTTPS: what to serve ([`TlsSettings`]), the rustls server built from it,
//! and what a connection's TLS session tells about the client.

use std::fmt;
use std::io;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ServerConnection, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, ProtocolVersion, RootCertStore};
use tokio_rustls::TlsAcceptor;

use super::record::{PresentedCertificate, TlsSession, TlsVersion};
use crate::der;
use crate::pki::{Pki, ServerCert, x5t_s256};

/// Whether and how the authority asks clients for a certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClientAuth {
    /// No client certificate is asked for (the default).
    #[default]
    None,
    /// A certificate is asked for but not required; one that is presented must chain to the
    /// [client CA](crate::pki::Pki::client_ca), or the handshake fails.
    Request,
    /// A certificate chaining to the client CA is required: without one the handshake fails.
    Require,
    /// A certificate is asked for but not required, and any certificate is accepted in the
    /// handshake, self-signed or not; the registrations decide (for
    /// `self_signed_tls_client_auth`, by thumbprint).
    AcceptAny,
    /// Like [`ClientAuth::AcceptAny`], but a certificate is required.
    RequireAny,
}

impl ClientAuth {
    fn offered(self) -> bool {
        self != ClientAuth::None
    }

    fn mandatory(self) -> bool {
        matches!(self, ClientAuth::Require | ClientAuth::RequireAny)
    }
}

/// How an [`Authority`](crate::Authority) serves HTTPS: which certificate of which
/// [`Pki`], which protocol versions, and whether it asks for client certificates.
///
/// ```
/// use tokenkeeper_testkit::pki::{Pki, ServerCert};
/// use tokenkeeper_testkit::{Authority, ClientAuth, TlsSettings};
///
/// let pki = Pki::shared();
/// let authority = Authority::builder()
///     .tls(
///         TlsSettings::new(&pki)
///             .certificate(ServerCert::Valid)
///             .tls12_only(true)
///             .client_auth(ClientAuth::Request),
///     )
///     .start();
/// assert!(authority.token_url().starts_with("https://localhost:"));
/// ```
#[derive(Clone, Debug)]
pub struct TlsSettings {
    pki: Pki,
    certificate: ServerCert,
    tls12_only: bool,
    client_auth: ClientAuth,
}

impl TlsSettings {
    /// Serves [`ServerCert::Valid`] of `pki` over TLS 1.2 and 1.3, without asking for client
    /// certificates.
    pub fn new(pki: &Pki) -> TlsSettings {
        TlsSettings {
            pki: pki.clone(),
            certificate: ServerCert::Valid,
            tls12_only: false,
            client_auth: ClientAuth::None,
        }
    }

    /// Which server certificate to present.
    pub fn certificate(mut self, certificate: ServerCert) -> TlsSettings {
        self.certificate = certificate;
        self
    }

    /// Whether to speak TLS 1.2 only (default: 1.2 and 1.3).
    pub fn tls12_only(mut self, yes: bool) -> TlsSettings {
        self.tls12_only = yes;
        self
    }

    /// Whether to ask for client certificates (default [`ClientAuth::None`]).
    pub fn client_auth(mut self, client_auth: ClientAuth) -> TlsSettings {
        self.client_auth = client_auth;
        self
    }

    /// The PKI.
    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// The server certificate presented.
    pub fn server_certificate(&self) -> ServerCert {
        self.certificate
    }

    /// Whether only TLS 1.2 is spoken.
    pub fn is_tls12_only(&self) -> bool {
        self.tls12_only
    }

    /// The client certificate policy.
    pub fn get_client_auth(&self) -> ClientAuth {
        self.client_auth
    }
}

/// The server side of TLS, ready to accept connections.
pub(crate) struct TlsServer {
    pub(crate) acceptor: TlsAcceptor,
    /// Checks, after the handshake, whether a presented certificate chains to the client CA.
    client_ca: Arc<dyn ClientCertVerifier>,
}

impl TlsServer {
    /// Builds the rustls server: *ring* provider on this configuration only (no process-wide
    /// default is installed), the chosen certificate, versions and client certificate policy.
    pub(crate) fn new(settings: &TlsSettings) -> io::Result<TlsServer> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut client_roots = RootCertStore::empty();
        client_roots
            .add(CertificateDer::from(
                settings.pki.client_ca().der().to_vec(),
            ))
            .map_err(io::Error::other)?;
        let client_roots = Arc::new(client_roots);
        let client_ca = WebPkiClientVerifier::builder_with_provider(
            Arc::clone(&client_roots),
            Arc::clone(&provider),
        )
        .build()
        .map_err(io::Error::other)?;

        let verifier: Arc<dyn ClientCertVerifier> = match settings.client_auth {
            ClientAuth::None => WebPkiClientVerifier::no_client_auth(),
            ClientAuth::Request => {
                WebPkiClientVerifier::builder_with_provider(client_roots, Arc::clone(&provider))
                    .allow_unauthenticated()
                    .build()
                    .map_err(io::Error::other)?
            }
            ClientAuth::Require => Arc::clone(&client_ca),
            ClientAuth::AcceptAny | ClientAuth::RequireAny => Arc::new(AnyClientCert {
                algorithms: provider.signature_verification_algorithms,
                mandatory: settings.client_auth.mandatory(),
            }),
        };
        debug_assert_eq!(verifier.offer_client_auth(), settings.client_auth.offered());

        let versions: &[&'static rustls::SupportedProtocolVersion] = if settings.tls12_only {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        };
        let identity = settings.pki.server(settings.certificate);
        let chain = identity
            .chain()
            .iter()
            .map(|certificate| CertificateDer::from(certificate.der().to_vec()))
            .collect();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key().der().to_vec()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(io::Error::other)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(io::Error::other)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsServer {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            client_ca,
        })
    }

    /// What an established connection tells about the client.
    pub(crate) fn session(&self, connection: &ServerConnection) -> TlsSession {
        let version = match connection.protocol_version() {
            Some(ProtocolVersion::TLSv1_2) => TlsVersion::Tls12,
            Some(ProtocolVersion::TLSv1_3) => TlsVersion::Tls13,
            _ => TlsVersion::Other,
        };
        let client_certificate = connection
            .peer_certificates()
            .and_then(|chain| chain.split_first())
            .map(|(end_entity, intermediates)| {
                let names = der::cert_names(end_entity).unwrap_or_default();
                let chains_to_client_ca = self
                    .client_ca
                    .verify_client_cert(end_entity, intermediates, UnixTime::now())
                    .is_ok();
                PresentedCertificate {
                    x5t_s256: x5t_s256(end_entity),
                    common_name: names.common_name,
                    alt_names: names.alt_names,
                    chains_to_client_ca,
                }
            });
        TlsSession {
            version,
            client_certificate,
        }
    }
}

/// Accepts any client certificate in the handshake (still checking that the client holds its
/// key), so that self-signed certificates get through and the registrations decide.
struct AnyClientCert {
    algorithms: WebPkiSupportedAlgorithms,
    mandatory: bool,
}

impl fmt::Debug for AnyClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnyClientCert")
            .field("mandatory", &self.mandatory)
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hint: a client should send whatever certificate it has.
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
