//! A test PKI generated at run time: a CA, server certificates for loopback signed by it (and
//! broken ones), a client CA and client certificates for mutual TLS (RFC 8705).
//!
//! Everything is made fresh by [`Pki::generate`] (ECDSA P-256 keys, with rcgen on *ring*), so no
//! key material lives in the repository. [`Pki::shared`] hands out one PKI per process for tests
//! that only need *a* CA.
//!
//! | [`ServerCert`] | what a client that trusts [`Pki::ca`] should make of it |
//! |---|---|
//! | `Valid` | accepted: signed by the CA, names `localhost`, `127.0.0.1` and `::1` |
//! | `Intermediate` | accepted: signed by an intermediate CA that the server sends along |
//! | `UnknownCa` | unknown issuer: signed by a CA nobody was told to trust |
//! | `WrongName` | name mismatch: names only `wrong.example` |
//! | `Expired` | expired a day ago |
//! | `NotYetValid` | valid from a month from now |
//! | `SelfSigned` | unknown issuer: a self-signed end-entity certificate (`CA:FALSE`) |
//! | `SelfSignedCa` | a self-signed certificate that is its own CA (`CA:TRUE`), as `openssl req -x509` makes by default |
//!
//! ```
//! use tokenkeeper_testkit::pki::{Pki, ServerCert};
//!
//! let pki = Pki::generate();
//! assert!(pki.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
//! let server = pki.server(ServerCert::Valid);
//! assert_eq!(server.chain().len(), 1);
//! // A client certificate for `tls_client_auth`: its subject CN is the client id.
//! let client = pki.client_identity("svc");
//! assert!(client.key_pem().contains("PRIVATE KEY"));
//! assert_eq!(client.x5t_s256().len(), 43);
//! // Keys never show in Debug output.
//! assert!(!format!("{client:?}").contains(client.key_pem()));
//! ```

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;
use zeroize::{Zeroize, Zeroizing};

use crate::authority::codec::base64url_encode;
use crate::der;

/// Which server certificate an HTTPS [`Authority`](crate::Authority) presents. See the
/// [module documentation](self) for what each one is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ServerCert {
    /// Signed by [`Pki::ca`] for `localhost`, `127.0.0.1` and `::1`.
    #[default]
    Valid,
    /// Signed by an intermediate CA (itself signed by [`Pki::ca`]) that the server sends in its
    /// chain.
    Intermediate,
    /// Signed by [`Pki::unknown_ca`], which no client is told to trust.
    UnknownCa,
    /// Signed by [`Pki::ca`], but for `wrong.example` only.
    WrongName,
    /// Signed by [`Pki::ca`]; expired a day ago.
    Expired,
    /// Signed by [`Pki::ca`]; valid only from thirty days from now.
    NotYetValid,
    /// A self-signed end-entity certificate (`CA:FALSE`) for the loopback names.
    SelfSigned,
    /// A self-signed certificate for the loopback names that is its own CA (`CA:TRUE`).
    SelfSignedCa,
}

impl ServerCert {
    /// Every variant, `Valid` first.
    pub const ALL: [ServerCert; 8] = [
        ServerCert::Valid,
        ServerCert::Intermediate,
        ServerCert::UnknownCa,
        ServerCert::WrongName,
        ServerCert::Expired,
        ServerCert::NotYetValid,
        ServerCert::SelfSigned,
        ServerCert::SelfSignedCa,
    ];

    /// A short name: `valid`, `intermediate`, `unknown-ca`, `wrong-name`, `expired`,
    /// `not-yet-valid`, `self-signed` or `self-signed-ca`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerCert::Valid => "valid",
            ServerCert::Intermediate => "intermediate",
            ServerCert::UnknownCa => "unknown-ca",
            ServerCert::WrongName => "wrong-name",
            ServerCert::Expired => "expired",
            ServerCert::NotYetValid => "not-yet-valid",
            ServerCert::SelfSigned => "self-signed",
            ServerCert::SelfSignedCa => "self-signed-ca",
        }
    }

    /// Whether a client that trusts [`Pki::ca`] accepts this certificate for `localhost`.
    pub fn is_trusted(self) -> bool {
        matches!(self, ServerCert::Valid | ServerCert::Intermediate)
    }
}

impl fmt::Display for ServerCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The PKI could not be generated (an error of the certificate generator).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PkiError(String);

impl fmt::Display for PkiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot generate the test PKI: {}", self.0)
    }
}

impl std::error::Error for PkiError {}

impl From<rcgen::Error> for PkiError {
    fn from(error: rcgen::Error) -> PkiError {
        PkiError(error.to_string())
    }
}

/// A certificate, in DER and PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Certificate {
    der: Vec<u8>,
    pem: String,
}

impl Certificate {
    fn new(certificate: &rcgen::Certificate) -> Certificate {
        Certificate {
            der: certificate.der().to_vec(),
            pem: certificate.pem(),
        }
    }

    /// The DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The PEM encoding (one `CERTIFICATE` block).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The SHA-256 digest of the DER encoding.
    pub fn sha256(&self) -> [u8; 32] {
        sha256(&self.der)
    }

    /// The base64url (unpadded) SHA-256 thumbprint: what RFC 8705 calls `x5t#S256`.
    pub fn x5t_s256(&self) -> String {
        x5t_s256(&self.der)
    }

    /// The first common name of the subject.
    pub fn common_name(&self) -> Option<String> {
        der::cert_names(&self.der).and_then(|names| names.common_name)
    }
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("common_name", &self.common_name())
            .field("x5t#S256", &self.x5t_s256())
            .finish()
    }
}

/// A private key (PKCS#8), in DER and PEM. Both are wiped from memory when it is dropped, and
/// `Debug` never shows them.
#[derive(Clone)]
pub struct PrivateKey {
    der: Zeroizing<Vec<u8>>,
    pem: Zeroizing<String>,
}

impl PrivateKey {
    fn new(mut key: KeyPair) -> PrivateKey {
        let private = PrivateKey {
            der: Zeroizing::new(key.serialize_der()),
            pem: Zeroizing::new(key.serialize_pem()),
        };
        key.zeroize();
        private
    }

    /// The PKCS#8 DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The PEM encoding (one `PRIVATE KEY` block).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The key as the certificate generator wants it, for signing.
    fn key_pair(&self) -> Result<KeyPair, PkiError> {
        Ok(KeyPair::try_from(self.der.as_slice())?)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

/// A certificate chain (end entity first, without the root) and its private key: what a server
/// or a client presents in a TLS handshake.
#[derive(Clone)]
pub struct Identity {
    chain: Vec<Certificate>,
    key: PrivateKey,
}

impl Identity {
    /// The end-entity certificate.
    pub fn certificate(&self) -> &Certificate {
        // The chain is never empty: every constructor puts the end entity first.
        &self.chain[0]
    }

    /// The chain sent in the handshake: the end entity, then any intermediate CA.
    pub fn chain(&self) -> &[Certificate] {
        &self.chain
    }

    /// The end-entity certificate as PEM.
    pub fn cert_pem(&self) -> &str {
        self.certificate().pem()
    }

    /// The whole chain as one PEM text, end entity first.
    pub fn chain_pem(&self) -> String {
        self.chain.iter().map(Certificate::pem).collect()
    }

    /// The private key.
    pub fn key(&self) -> &PrivateKey {
        &self.key
    }

    /// The private key as PEM.
    pub fn key_pem(&self) -> &str {
        self.key.pem()
    }

    /// The `x5t#S256` thumbprint of the end-entity certificate (RFC 8705).
    pub fn x5t_s256(&self) -> String {
        self.certificate().x5t_s256()
    }

    /// Writes `<stem>.pem` (the chain) and `<stem>.key` (the key, readable by its owner only)
    /// into `dir`, replacing existing files.
    pub fn write_files(&self, dir: impl AsRef<Path>, stem: &str) -> io::Result<IdentityFiles> {
        let dir = dir.as_ref();
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, self.chain_pem())?;
        write_private(&key, self.key_pem().as_bytes())?;
        Ok(IdentityFiles { cert, key })
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("chain", &self.chain)
            .field("key", &self.key)
            .finish()
    }
}

/// Where [`Identity::write_files`] put an identity.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct IdentityFiles {
    /// The certificate chain, PEM.
    pub cert: PathBuf,
    /// The private key, PEM.
    pub key: PathBuf,
}

/// Where [`Pki::write_files`] put the CA certificates.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PkiFiles {
    /// `ca.pem`: the CA that signs the server certificates (trust this one).
    pub ca: PathBuf,
    /// `client-ca.pem`: the CA that signs client certificates.
    pub client_ca: PathBuf,
    /// `unknown-ca.pem`: the CA of [`ServerCert::UnknownCa`].
    pub unknown_ca: PathBuf,
}

/// A CA: its certificate, its key, and the parameters it signs with.
struct Ca {
    certificate: Certificate,
    params: CertificateParams,
    key: PrivateKey,
}

impl Ca {
    fn root(name: &str) -> Result<Ca, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        (params.not_before, params.not_after) = validity(-1, 3650);
        let key = KeyPair::generate()?;
        let certificate = Certificate::new(&params.self_signed(&key)?);
        Ok(Ca {
            certificate,
            params,
            key: PrivateKey::new(key),
        })
    }

    fn intermediate(name: &str, parent: &Ca) -> Result<Ca, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.use_authority_key_identifier_extension = true;
        (params.not_before, params.not_after) = validity(-1, 3650);
        let key = KeyPair::generate()?;
        let certificate = Certificate::new(&parent.sign(&params, &key)?);
        Ok(Ca {
            certificate,
            params,
            key: PrivateKey::new(key),
        })
    }

    fn sign(
        &self,
        params: &CertificateParams,
        key: &KeyPair,
    ) -> Result<rcgen::Certificate, PkiError> {
        let mut signing_key = self.key.key_pair()?;
        let signed = params.signed_by(key, &Issuer::from_params(&self.params, &signing_key));
        signing_key.zeroize();
        Ok(signed?)
    }
}

/// The shared part of a [`Pki`].
struct Inner {
    ca: Ca,
    intermediate: Ca,
    unknown_ca: Ca,
    client_ca: Ca,
    servers: Vec<(ServerCert, Identity)>,
}

/// A test PKI: a CA with server certificates, and a client CA issuing client certificates.
///
/// Cloning is cheap (the PKI is shared). See the [module documentation](self).
#[derive(Clone)]
pub struct Pki {
    inner: Arc<Inner>,
}

impl fmt::Debug for Pki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pki")
            .field("ca", &self.inner.ca.certificate)
            .field("client_ca", &self.inner.client_ca.certificate)
            .finish_non_exhaustive()
    }
}

/// What the end-entity certificate is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Usage {
    Server,
    Client,
}

impl Pki {
    /// Generates a new PKI.
    ///
    /// # Panics
    ///
    /// If the certificate generator fails, which it does not with the fixed parameters used
    /// here; see [`Pki::try_generate`].
    #[track_caller]
    pub fn generate() -> Pki {
        match Pki::try_generate() {
            Ok(pki) => pki,
            Err(error) => panic!("{error}"),
        }
    }

    /// Like [`Pki::generate`], returning an error instead of panicking.
    pub fn try_generate() -> Result<Pki, PkiError> {
        // A tag in every CA name tells PKIs apart in messages and logs.
        let tag = format!("{:08x}", fastrand::u32(..));
        let ca = Ca::root(&format!("tokenkeeper-testkit CA {tag}"))?;
        let intermediate =
            Ca::intermediate(&format!("tokenkeeper-testkit intermediate CA {tag}"), &ca)?;
        let unknown_ca = Ca::root(&format!("tokenkeeper-testkit unknown CA {tag}"))?;
        let client_ca = Ca::root(&format!("tokenkeeper-testkit client CA {tag}"))?;

        let loopback = || {
            vec![
                SanType::DnsName("localhost".try_into().expect("an IA5 name")),
                SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
                SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
            ]
        };
        let mut servers = Vec::with_capacity(ServerCert::ALL.len());
        for variant in ServerCert::ALL {
            let identity = match variant {
                ServerCert::Valid => signed(
                    &ca,
                    "localhost",
                    loopback(),
                    Usage::Server,
                    validity(-1, 365),
                )?,
                ServerCert::Intermediate => {
                    let mut identity = signed(
                        &intermediate,
                        "localhost",
                        loopback(),
                        Usage::Server,
                        validity(-1, 365),
                    )?;
                    identity.chain.push(intermediate.certificate.clone());
                    identity
                }
                ServerCert::UnknownCa => signed(
                    &unknown_ca,
                    "localhost",
                    loopback(),
                    Usage::Server,
                    validity(-1, 365),
                )?,
                ServerCert::WrongName => signed(
                    &ca,
                    "wrong.example",
                    vec![SanType::DnsName(
                        "wrong.example".try_into().expect("an IA5 name"),
                    )],
                    Usage::Server,
                    validity(-1, 365),
                )?,
                ServerCert::Expired => signed(
                    &ca,
                    "localhost",
                    loopback(),
                    Usage::Server,
                    validity(-30, -1),
                )?,
                ServerCert::NotYetValid => signed(
                    &ca,
                    "localhost",
                    loopback(),
                    Usage::Server,
                    validity(30, 365),
                )?,
                ServerCert::SelfSigned => {
                    self_signed("localhost", loopback(), Usage::Server, false)?
                }
                ServerCert::SelfSignedCa => {
                    self_signed("localhost", loopback(), Usage::Server, true)?
                }
            };
            servers.push((variant, identity));
        }

        Ok(Pki {
            inner: Arc::new(Inner {
                ca,
                intermediate,
                unknown_ca,
                client_ca,
                servers,
            }),
        })
    }

    /// One PKI for the whole process, generated on first use.
    ///
    /// # Panics
    ///
    /// As [`Pki::generate`].
    #[track_caller]
    pub fn shared() -> Pki {
        static SHARED: OnceLock<Pki> = OnceLock::new();
        SHARED.get_or_init(Pki::generate).clone()
    }

    /// The CA that signs the server certificates: the one clients should trust.
    pub fn ca(&self) -> &Certificate {
        &self.inner.ca.certificate
    }

    /// [`Pki::ca`] as PEM.
    pub fn ca_pem(&self) -> &str {
        self.ca().pem()
    }

    /// The intermediate CA of [`ServerCert::Intermediate`] (signed by [`Pki::ca`]).
    pub fn intermediate_ca(&self) -> &Certificate {
        &self.inner.intermediate.certificate
    }

    /// The CA of [`ServerCert::UnknownCa`]: nobody trusts it unless told to.
    pub fn unknown_ca(&self) -> &Certificate {
        &self.inner.unknown_ca.certificate
    }

    /// The CA that signs client certificates, which an authority asking for client
    /// certificates verifies them against.
    pub fn client_ca(&self) -> &Certificate {
        &self.inner.client_ca.certificate
    }

    /// A server certificate and key.
    pub fn server(&self, variant: ServerCert) -> &Identity {
        self.inner
            .servers
            .iter()
            .find(|(candidate, _)| *candidate == variant)
            .map(|(_, identity)| identity)
            // Every variant is generated; the first one is a safe answer all the same.
            .unwrap_or(&self.inner.servers[0].1)
    }

    /// A new client certificate signed by [`Pki::client_ca`], with subject CN `client_id` and no
    /// alternative names: what RFC 8705 `tls_client_auth` uses.
    ///
    /// # Panics
    ///
    /// If the certificate generator fails; see [`Pki::try_client_identity`].
    #[track_caller]
    pub fn client_identity(&self, client_id: &str) -> Identity {
        match self.try_client_identity(client_id) {
            Ok(identity) => identity,
            Err(error) => panic!("{error}"),
        }
    }

    /// Like [`Pki::client_identity`], returning an error instead of panicking.
    pub fn try_client_identity(&self, client_id: &str) -> Result<Identity, PkiError> {
        signed(
            &self.inner.client_ca,
            client_id,
            Vec::new(),
            Usage::Client,
            validity(-1, 365),
        )
    }

    /// A new client certificate signed by [`Pki::client_ca`] with this subject CN and these
    /// subject alternative names (RFC 8705 lets a registration name a SAN instead of the
    /// subject). Each name is read as an IP address if it parses as one, a URI if it holds
    /// `://`, an e-mail address if it holds `@`, and a DNS name otherwise.
    ///
    /// # Panics
    ///
    /// If a name is not ASCII, or the certificate generator fails.
    #[track_caller]
    pub fn client_identity_with_names(&self, common_name: &str, alt_names: &[&str]) -> Identity {
        let identity = alt_names
            .iter()
            .map(|name| alt_name(name))
            .collect::<Result<Vec<_>, _>>()
            .and_then(|names| {
                signed(
                    &self.inner.client_ca,
                    common_name,
                    names,
                    Usage::Client,
                    validity(-1, 365),
                )
            });
        match identity {
            Ok(identity) => identity,
            Err(error) => panic!("{error}"),
        }
    }

    /// A new client certificate with subject CN `client_id` signed by [`Pki::unknown_ca`]:
    /// it does not chain to the client CA.
    ///
    /// # Panics
    ///
    /// If the certificate generator fails.
    #[track_caller]
    pub fn untrusted_client_identity(&self, client_id: &str) -> Identity {
        let identity = signed(
            &self.inner.unknown_ca,
            client_id,
            Vec::new(),
            Usage::Client,
            validity(-1, 365),
        );
        match identity {
            Ok(identity) => identity,
            Err(error) => panic!("{error}"),
        }
    }

    /// A new self-signed client certificate with subject CN `client_id`, for RFC 8705
    /// `self_signed_tls_client_auth` (register its [`Identity::x5t_s256`]).
    ///
    /// # Panics
    ///
    /// If the certificate generator fails.
    #[track_caller]
    pub fn self_signed_client_identity(&self, client_id: &str) -> Identity {
        match self_signed(client_id, Vec::new(), Usage::Client, false) {
            Ok(identity) => identity,
            Err(error) => panic!("{error}"),
        }
    }

    /// Writes `ca.pem`, `client-ca.pem` and `unknown-ca.pem` into `dir`, replacing existing
    /// files.
    pub fn write_files(&self, dir: impl AsRef<Path>) -> io::Result<PkiFiles> {
        let dir = dir.as_ref();
        let files = PkiFiles {
            ca: dir.join("ca.pem"),
            client_ca: dir.join("client-ca.pem"),
            unknown_ca: dir.join("unknown-ca.pem"),
        };
        std::fs::write(&files.ca, self.ca_pem())?;
        std::fs::write(&files.client_ca, self.client_ca().pem())?;
        std::fs::write(&files.unknown_ca, self.unknown_ca().pem())?;
        Ok(files)
    }
}

/// The SHA-256 digest of some bytes.
pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The `x5t#S256` thumbprint of a DER certificate: base64url (unpadded) of its SHA-256.
pub(crate) fn x5t_s256(der: &[u8]) -> String {
    base64url_encode(&sha256(der))
}

/// A subject alternative name of the kind its text suggests.
fn alt_name(name: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let text = name.to_owned().try_into()?;
    Ok(if name.contains("://") {
        SanType::URI(text)
    } else if name.contains('@') {
        SanType::Rfc822Name(text)
    } else {
        SanType::DnsName(text)
    })
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "tokenkeeper-testkit");
    name.push(DnType::CommonName, common_name);
    name
}

/// `(now + from days, now + to days)`, at whole seconds.
fn validity(from_days: i64, to_days: i64) -> (OffsetDateTime, OffsetDateTime) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let now = i64::try_from(now).unwrap_or(0);
    let at = |days: i64| {
        OffsetDateTime::from_unix_timestamp(now.saturating_add(days.saturating_mul(86_400)))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    };
    (at(from_days), at(to_days))
}

fn end_entity_params(
    common_name: &str,
    alt_names: Vec<SanType>,
    usage: Usage,
    (not_before, not_after): (OffsetDateTime, OffsetDateTime),
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(common_name);
    params.subject_alt_names = alt_names;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![match usage {
        Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
        Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    params.not_before = not_before;
    params.not_after = not_after;
    params
}

/// An end-entity identity signed by a CA.
fn signed(
    ca: &Ca,
    common_name: &str,
    alt_names: Vec<SanType>,
    usage: Usage,
    validity: (OffsetDateTime, OffsetDateTime),
) -> Result<Identity, PkiError> {
    let mut params = end_entity_params(common_name, alt_names, usage, validity);
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate()?;
    let certificate = Certificate::new(&ca.sign(&params, &key)?);
    Ok(Identity {
        chain: vec![certificate],
        key: PrivateKey::new(key),
    })
}

/// A self-signed identity; `is_ca` makes it its own CA (`CA:TRUE`, may sign certificates).
fn self_signed(
    common_name: &str,
    alt_names: Vec<SanType>,
    usage: Usage,
    is_ca: bool,
) -> Result<Identity, PkiError> {
    let mut params = end_entity_params(common_name, alt_names, usage, validity(-1, 365));
    if is_ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
    }
    let key = KeyPair::generate()?;
    let certificate = Certificate::new(&params.self_signed(&key)?);
    Ok(Identity {
        chain: vec![certificate],
        key: PrivateKey::new(key),
    })
}

/// Writes a file that only its owner can read (on Unix), replacing an existing one.
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let _ = std::fs::remove_file(path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprints_are_base64url_sha256_of_the_der() {
        let pki = Pki::generate();
        let client = pki.client_identity("svc");
        let thumbprint = client.x5t_s256();
        assert_eq!(thumbprint.len(), 43);
        assert!(
            thumbprint
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{thumbprint}"
        );
        // SHA-256 of "abc" (FIPS 180-2), as a check of the digest and the encoding.
        assert_eq!(
            x5t_s256(b"abc"),
            "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0"
        );
        assert_ne!(thumbprint, pki.client_identity("svc").x5t_s256());
    }

    #[test]
    fn names_and_chains() {
        let pki = Pki::generate();
        assert_eq!(
            pki.client_identity("client-1")
                .certificate()
                .common_name()
                .as_deref(),
            Some("client-1")
        );
        let names =
            der::cert_names(pki.server(ServerCert::Valid).certificate().der()).expect("names");
        assert_eq!(names.alt_names, ["localhost", "127.0.0.1", "::1"]);
        let names =
            der::cert_names(pki.server(ServerCert::WrongName).certificate().der()).expect("names");
        assert_eq!(names.alt_names, ["wrong.example"]);
        let intermediate = pki.server(ServerCert::Intermediate);
        assert_eq!(intermediate.chain().len(), 2);
        assert_eq!(&intermediate.chain()[1], pki.intermediate_ca());
        assert!(
            intermediate
                .chain_pem()
                .matches("BEGIN CERTIFICATE")
                .count()
                == 2
        );
        for variant in ServerCert::ALL {
            assert!(std::ptr::eq(pki.server(variant), pki.server(variant)));
            assert_eq!(
                pki.server(variant).chain().len(),
                if variant == ServerCert::Intermediate {
                    2
                } else {
                    1
                }
            );
        }
        // Two PKIs share nothing.
        assert_ne!(pki.ca(), Pki::generate().ca());
        assert_eq!(Pki::shared().ca(), Pki::shared().ca());
    }

    #[test]
    fn debug_never_shows_keys() {
        let pki = Pki::generate();
        let identity = pki.server(ServerCert::Valid);
        let key_body: String = identity
            .key_pem()
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .collect();
        for text in [
            format!("{pki:?}"),
            format!("{identity:?}"),
            format!("{:?}", identity.key()),
        ] {
            assert!(!text.contains(&key_body), "{text}");
            assert!(!text.contains("PRIVATE KEY"), "{text}");
        }
        assert!(format!("{identity:?}").contains("<redacted>"));
    }

    #[test]
    fn files_are_written_and_keys_are_private() {
        let pki = Pki::generate();
        let dir = tempfile::tempdir().expect("a folder");
        let files = pki.write_files(dir.path()).expect("written");
        assert_eq!(std::fs::read_to_string(&files.ca).unwrap(), pki.ca_pem());
        assert_eq!(
            std::fs::read_to_string(&files.client_ca).unwrap(),
            pki.client_ca().pem()
        );
        assert_eq!(
            std::fs::read_to_string(&files.unknown_ca).unwrap(),
            pki.unknown_ca().pem()
        );
        let identity = pki.client_identity("svc");
        let written = identity.write_files(dir.path(), "svc").expect("written");
        assert_eq!(
            std::fs::read_to_string(&written.cert).unwrap(),
            identity.chain_pem()
        );
        assert_eq!(
            std::fs::read_to_string(&written.key).unwrap(),
            identity.key_pem()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&written.key)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Writing again replaces the files.
        let other = pki.client_identity("svc");
        other.write_files(dir.path(), "svc").expect("rewritten");
        assert_eq!(
            std::fs::read_to_string(&written.key).unwrap(),
            other.key_pem()
        );
    }
}
