//! TLS as every HTTP stack of tokenkeeper uses it, written once: the rustls
//! client configuration (trust, client certificate), a server-certificate
//! verifier that tells a self-signed certificate from an unknown CA, and the
//! classification of rustls' errors into [`TlsProblem`]s that say what to do.

use std::error::Error as StdError;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{AlertDescription, CertificateError, DigitallySignedStruct, SignatureScheme};
use tokenkeeper_core::{FetchError, TlsProblem};
use zeroize::Zeroizing;

use crate::http::HttpSetupError;

/// Where a client certificate comes from: PEM text, or PEM files read when
/// the HTTP client is built.
#[derive(Clone)]
pub(crate) enum IdentitySource {
    Pem {
        chain: Vec<u8>,
        key: Zeroizing<Vec<u8>>,
    },
    Files {
        chain: PathBuf,
        key: PathBuf,
    },
}

impl fmt::Debug for IdentitySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentitySource::Pem { .. } => f.write_str("Pem { chain, key: <redacted> }"),
            IdentitySource::Files { chain, key } => f
                .debug_struct("Files")
                .field("chain", chain)
                .field("key", key)
                .finish(),
        }
    }
}

/// A client certificate chain and its key, loaded.
pub(crate) struct Identity {
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
}

impl IdentitySource {
    pub(crate) fn load(&self) -> Result<Identity, HttpSetupError> {
        let (chain_pem, key_pem, chain_name, key_name) = match self {
            IdentitySource::Pem { chain, key } => (
                chain.clone(),
                key.clone(),
                "the client certificate".to_owned(),
                "the client key".to_owned(),
            ),
            IdentitySource::Files { chain, key } => (
                read_file(chain, "client certificate")?,
                Zeroizing::new(read_file(key, "client key")?),
                format!("the client certificate file {}", chain.display()),
                format!("the client key file {}", key.display()),
            ),
        };
        let chain = CertificateDer::pem_slice_iter(&chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| HttpSetupError::new(format!("{chain_name} is not valid PEM")))?;
        if chain.is_empty() {
            return Err(HttpSetupError::new(format!(
                "{chain_name} holds no certificate (expected a PEM `CERTIFICATE` block)"
            )));
        }
        // PKCS#8, PKCS#1 (RSA) or SEC1 (EC); the error never quotes the key.
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
            HttpSetupError::new(format!(
                "{key_name} holds no usable private key (expected a PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` block)"
            ))
        })?;
        Ok(Identity { chain, key })
    }
}

impl Identity {
    /// The SHA-256 thumbprint of the leaf certificate, base64url without
    /// padding: RFC 8705's `x5t#S256`.
    pub(crate) fn thumbprint(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, self.chain[0].as_ref());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
    }
}

/// Reads a file the user named, with an error that names it.
pub(crate) fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, HttpSetupError> {
    std::fs::read(path).map_err(|e| {
        HttpSetupError::new(format!(
            "cannot read the {what} file {}: {e}",
            path.display()
        ))
    })
}

/// Every certificate in a PEM file; an error names the file.
pub(crate) fn pem_certificates(
    pem: &[u8],
    origin: &str,
) -> Result<Vec<CertificateDer<'static>>, HttpSetupError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| HttpSetupError::new(format!("{origin} is not valid PEM")))?;
    if certs.is_empty() {
        return Err(HttpSetupError::new(format!(
            "{origin} holds no certificate (expected PEM `CERTIFICATE` blocks)"
        )));
    }
    Ok(certs)
}

/// The certificates named by `SSL_CERT_FILE` and `SSL_CERT_DIR`, as
/// OpenSSL-based tools read them: a PEM bundle, and folders (separated by
/// `:`) whose files hold PEM certificates. A variable that is set but names
/// nothing readable is an error: a user who set it expects it to count.
pub(crate) fn ssl_cert_env(
    roots: &mut Vec<CertificateDer<'static>>,
    file: Option<std::ffi::OsString>,
    dirs: Option<std::ffi::OsString>,
) -> Result<(), HttpSetupError> {
    if let Some(file) = file.filter(|f| !f.is_empty()) {
        let path = PathBuf::from(file);
        let pem = read_file(&path, "SSL_CERT_FILE")?;
        roots.extend(pem_certificates(
            &pem,
            &format!("SSL_CERT_FILE ({})", path.display()),
        )?);
    }
    if let Some(dirs) = dirs.filter(|d| !d.is_empty()) {
        for dir in std::env::split_paths(&dirs) {
            let entries = std::fs::read_dir(&dir).map_err(|e| {
                HttpSetupError::new(format!(
                    "cannot read the SSL_CERT_DIR folder {}: {e}",
                    dir.display()
                ))
            })?;
            let mut paths: Vec<PathBuf> =
                entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            // Sorted, so that the trust list does not depend on the order
            // the file system lists a folder in.
            paths.sort();
            for path in paths.into_iter().filter(|p| p.is_file()) {
                // OpenSSL's hashed folders also hold CRLs and other files:
                // what holds no certificate is skipped, as OpenSSL does.
                if let Ok(pem) = std::fs::read(&path) {
                    roots.extend(CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok));
                }
            }
        }
    }
    Ok(())
}

/// The verifier of server certificates: webpki's, against the configured
/// roots, with one refinement: a certificate that signed itself is reported
/// as such, where webpki says only "unknown issuer" (or "CA used as end
/// entity"), since the fix differs (trust that very certificate, or give the
/// server a real one).
#[derive(Debug)]
pub(crate) struct ServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

/// The marker error for a self-signed server certificate.
#[derive(Debug)]
struct SelfSignedCertificate;

impl fmt::Display for SelfSignedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("self-signed certificate")
    }
}

impl StdError for SelfSignedCertificate {}

impl ServerVerifier {
    pub(crate) fn new(inner: Arc<WebPkiServerVerifier>) -> Self {
        ServerVerifier { inner }
    }
}

fn is_self_signed(cert: &CertificateDer<'_>) -> bool {
    webpki::EndEntityCert::try_from(cert).is_ok_and(|c| c.issuer() == c.subject())
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|error| match &error {
                rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer | CertificateError::Other(_),
                ) if intermediates.is_empty() && is_self_signed(end_entity) => {
                    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                        Arc::new(SelfSignedCertificate),
                    )))
                }
                _ => error,
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// What a rustls error means for the user.
pub fn classify(error: &rustls::Error, sent_client_certificate: bool) -> TlsProblem {
    use rustls::Error as E;
    match error {
        E::InvalidCertificate(e) => match e {
            CertificateError::UnknownIssuer => TlsProblem::UnknownIssuer,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                TlsProblem::NameMismatch
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                TlsProblem::Expired
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                TlsProblem::NotYetValid
            }
            CertificateError::Revoked => TlsProblem::Revoked,
            CertificateError::Other(other) if other.0.is::<SelfSignedCertificate>() => {
                TlsProblem::SelfSigned
            }
            _ => TlsProblem::BadCertificate,
        },
        E::AlertReceived(alert) => match alert {
            AlertDescription::CertificateRequired => TlsProblem::ClientCertificateRequired,
            AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::DecryptError => {
                if sent_client_certificate {
                    TlsProblem::ClientCertificateRejected
                } else {
                    TlsProblem::ClientCertificateRequired
                }
            }
            AlertDescription::ProtocolVersion => TlsProblem::ProtocolMismatch,
            _ => TlsProblem::HandshakeFailure,
        },
        // Something other than TLS answered (a plain-http server).
        E::InvalidMessage(_)
        | E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. } => TlsProblem::ProtocolMismatch,
        E::PeerIncompatible(_) => TlsProblem::HandshakeFailure,
        _ => TlsProblem::HandshakeFailure,
    }
}

/// The [`FetchError::Tls`] behind `error`, if a rustls error is among its
/// causes (looked for through `std::io::Error`s, which hide their inner
/// error from `source()`). Each HTTP stack calls this on its failures.
pub fn tls_fetch_error(
    host: &str,
    error: &(dyn StdError + 'static),
    sent_client_certificate: bool,
) -> Option<FetchError> {
    find_rustls(error).map(|e| FetchError::Tls {
        host: host.to_owned(),
        problem: classify(e, sent_client_certificate),
    })
}

fn find_rustls<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    let mut depth = 0;
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(found) = find_rustls(inner)
        {
            return Some(found);
        }
        depth += 1;
        // Error chains are short; a cycle must not hang a fetch.
        if depth > 16 {
            return None;
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustls_errors_found_through_io_errors() {
        let rustls = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, rustls);
        let e = tls_fetch_error("auth.example", &io, false).unwrap();
        assert_eq!(e.tls_problem(), Some(TlsProblem::UnknownIssuer));
        assert!(e.is_permanent() && e.is_misconfiguration());
        let text = e.to_string();
        assert!(
            text.contains("auth.example") && text.contains("--ca-file"),
            "{text}"
        );
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(tls_fetch_error("auth.example", &plain, false).is_none());
    }

    #[test]
    fn alerts_depend_on_whether_a_certificate_was_sent() {
        let alert = rustls::Error::AlertReceived(AlertDescription::BadCertificate);
        assert_eq!(
            classify(&alert, true),
            TlsProblem::ClientCertificateRejected
        );
        assert_eq!(
            classify(&alert, false),
            TlsProblem::ClientCertificateRequired
        );
        let required = rustls::Error::AlertReceived(AlertDescription::CertificateRequired);
        assert_eq!(
            classify(&required, false),
            TlsProblem::ClientCertificateRequired
        );
        let version = rustls::Error::AlertReceived(AlertDescription::ProtocolVersion);
        assert_eq!(classify(&version, false), TlsProblem::ProtocolMismatch);
    }

    #[test]
    fn ssl_cert_env_reads_files_and_folders() {
        let dir = tempfile::tempdir().unwrap();
        let mut roots = Vec::new();
        // Unset or empty: nothing, no error.
        ssl_cert_env(&mut roots, None, Some("".into())).unwrap();
        assert!(roots.is_empty());
        // Named but missing: an error naming the variable.
        let missing = dir.path().join("missing.pem");
        let e = ssl_cert_env(&mut roots, Some(missing.into_os_string()), None).unwrap_err();
        assert!(e.to_string().contains("SSL_CERT_FILE"), "{e}");
        // A folder with a non-certificate file: skipped.
        std::fs::write(dir.path().join("crl.r0"), b"not a certificate").unwrap();
        ssl_cert_env(&mut roots, None, Some(dir.path().as_os_str().to_owned())).unwrap();
        assert!(roots.is_empty());
        // A file with no certificate: an error.
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, b"").unwrap();
        let e = ssl_cert_env(&mut roots, Some(empty.into_os_string()), None).unwrap_err();
        assert!(e.to_string().contains("holds no certificate"), "{e}");
    }
}
