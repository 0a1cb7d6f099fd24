//! Just enough DER to read names out of an X.509 certificate: the subject's common name and the
//! subject alternative names. Written for certificates that clients present to the authority,
//! so every read is bounds-checked and malformed input gives `None`, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The names a certificate carries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CertNames {
    /// The first common name (OID 2.5.4.3) of the subject, if it is a readable string.
    pub(crate) common_name: Option<String>,
    /// The `rfc822Name`, `dNSName`, `uniformResourceIdentifier` and `iPAddress` entries of the
    /// subject alternative name extension, in order.
    pub(crate) alt_names: Vec<String>,
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const OCTET_STRING: u8 = 0x04;
const BOOLEAN: u8 = 0x01;
const INTEGER: u8 = 0x02;
/// `[0] EXPLICIT Version` of the TBS certificate.
const VERSION: u8 = 0xa0;
/// `[3] EXPLICIT Extensions` of the TBS certificate.
const EXTENSIONS: u8 = 0xa3;

/// 2.5.4.3, `id-at-commonName`.
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
/// 2.5.29.17, `id-ce-subjectAltName`.
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// One element: its tag, its content, and what follows it.
struct Element<'a> {
    tag: u8,
    content: &'a [u8],
    rest: &'a [u8],
}

/// Reads one element. Only single-byte tags and definite lengths up to four bytes (DER) are
/// accepted.
fn element(input: &[u8]) -> Option<Element<'_>> {
    let (&tag, after_tag) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, after_length) = after_tag.split_first()?;
    let (length, body) = if first < 0x80 {
        (usize::from(first), after_length)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || after_length.len() < count {
            return None;
        }
        let (bytes, body) = after_length.split_at(count);
        let length = bytes
            .iter()
            .fold(0usize, |acc, &byte| (acc << 8) | usize::from(byte));
        (length, body)
    };
    if body.len() < length {
        return None;
    }
    let (content, rest) = body.split_at(length);
    Some(Element { tag, content, rest })
}

/// Reads one element that must have `tag`.
fn expect(input: &[u8], tag: u8) -> Option<Element<'_>> {
    element(input).filter(|found| found.tag == tag)
}

/// Every element of a constructed value's content, stopping at the first malformed one.
fn elements(mut input: &[u8]) -> impl Iterator<Item = Element<'_>> {
    std::iter::from_fn(move || {
        if input.is_empty() {
            return None;
        }
        let found = element(input)?;
        input = found.rest;
        Some(found)
    })
}

/// Reads the names of a DER certificate; `None` if it is not a well-formed certificate as far as
/// this reader goes.
pub(crate) fn cert_names(der: &[u8]) -> Option<CertNames> {
    let certificate = expect(der, SEQUENCE)?;
    let tbs = expect(certificate.content, SEQUENCE)?;
    let mut input = tbs.content;
    if let Some(version) = element(input).filter(|found| found.tag == VERSION) {
        input = version.rest;
    }
    let serial = expect(input, INTEGER)?;
    let signature = expect(serial.rest, SEQUENCE)?;
    let issuer = expect(signature.rest, SEQUENCE)?;
    let validity = expect(issuer.rest, SEQUENCE)?;
    let subject = expect(validity.rest, SEQUENCE)?;
    let key_info = expect(subject.rest, SEQUENCE)?;

    let mut names = CertNames {
        common_name: common_name(subject.content),
        alt_names: Vec::new(),
    };
    // The optional unique identifiers ([1], [2]) come before the extensions ([3]).
    let extensions = elements(key_info.rest).find(|found| found.tag == EXTENSIONS);
    if let Some(extensions) = extensions {
        let list = expect(extensions.content, SEQUENCE)?;
        for extension in elements(list.content).filter(|found| found.tag == SEQUENCE) {
            let Some(oid) = expect(extension.content, OID) else {
                continue;
            };
            if oid.content != OID_SUBJECT_ALT_NAME {
                continue;
            }
            let mut value = oid.rest;
            if let Some(critical) = element(value).filter(|found| found.tag == BOOLEAN) {
                value = critical.rest;
            }
            let octets = expect(value, OCTET_STRING)?;
            let general_names = expect(octets.content, SEQUENCE)?;
            names
                .alt_names
                .extend(elements(general_names.content).filter_map(general_name));
        }
    }
    Some(names)
}

/// The first common name of a `Name` (the content of its SEQUENCE).
fn common_name(name: &[u8]) -> Option<String> {
    elements(name)
        .filter(|rdn| rdn.tag == SET)
        .flat_map(|rdn| elements(rdn.content))
        .filter(|attribute| attribute.tag == SEQUENCE)
        .find_map(|attribute| {
            let oid = expect(attribute.content, OID)?;
            if oid.content != OID_COMMON_NAME {
                return None;
            }
            directory_string(&element(oid.rest)?)
        })
}

/// A `DirectoryString` (or IA5String) as text; other string types are not read.
fn directory_string(value: &Element<'_>) -> Option<String> {
    match value.tag {
        // UTF8String, PrintableString, IA5String.
        0x0c | 0x13 | 0x16 => std::str::from_utf8(value.content).ok().map(str::to_owned),
        // BMPString: UTF-16BE.
        0x1e if value.content.len().is_multiple_of(2) => {
            let units: Vec<u16> = value
                .content
                .chunks_exact(2)
                .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

/// A `GeneralName` this reader understands, as text.
fn general_name(name: Element<'_>) -> Option<String> {
    match name.tag {
        // [1] rfc822Name, [2] dNSName, [6] uniformResourceIdentifier: IA5String, implicit.
        0x81 | 0x82 | 0x86 => std::str::from_utf8(name.content).ok().map(str::to_owned),
        // [7] iPAddress: four or sixteen octets, implicit.
        0x87 => match name.content.len() {
            4 => {
                let octets: [u8; 4] = name.content.try_into().ok()?;
                Some(IpAddr::V4(Ipv4Addr::from(octets)).to_string())
            }
            16 => {
                let octets: [u8; 16] = name.content.try_into().ok()?;
                Some(IpAddr::V6(Ipv6Addr::from(octets)).to_string())
            }
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(subject_alt_names: Vec<rcgen::SanType>, common_name: &str) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "tokenkeeper");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.subject_alt_names = subject_alt_names;
        let key = rcgen::KeyPair::generate().expect("a key");
        params
            .self_signed(&key)
            .expect("a certificate")
            .der()
            .to_vec()
    }

    #[test]
    fn reads_the_common_name_and_every_kind_of_alt_name() {
        let der = certificate(
            vec![
                rcgen::SanType::DnsName("svc.example".try_into().unwrap()),
                rcgen::SanType::URI("spiffe://example/svc".try_into().unwrap()),
                rcgen::SanType::Rfc822Name("svc@example.com".try_into().unwrap()),
                rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()),
                rcgen::SanType::IpAddress("::1".parse().unwrap()),
            ],
            "client-7",
        );
        let names = cert_names(&der).expect("names");
        assert_eq!(names.common_name.as_deref(), Some("client-7"));
        assert_eq!(
            names.alt_names,
            [
                "svc.example",
                "spiffe://example/svc",
                "svc@example.com",
                "127.0.0.1",
                "::1"
            ]
        );
    }

    #[test]
    fn a_certificate_without_alt_names_has_only_its_common_name() {
        let der = certificate(Vec::new(), "üñí-cödé");
        let names = cert_names(&der).expect("names");
        assert_eq!(names.common_name.as_deref(), Some("üñí-cödé"));
        assert!(names.alt_names.is_empty());
    }

    #[test]
    fn malformed_input_gives_none_and_never_panics() {
        let der = certificate(
            vec![rcgen::SanType::DnsName("a.example".try_into().unwrap())],
            "x",
        );
        assert!(cert_names(&[]).is_none());
        assert!(cert_names(b"not a certificate").is_none());
        assert!(cert_names(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_none());
        assert!(cert_names(&[0x1f, 0x01, 0x00]).is_none());
        // Every truncation, and every single-byte corruption, is read without a panic; the
        // truncations are all refused because the outer length no longer fits.
        for cut in 0..der.len() {
            assert!(cert_names(&der[..cut]).is_none(), "cut at {cut}");
        }
        for at in 0..der.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = der.clone();
                bad[at] ^= flip;
                let _ = cert_names(&bad);
            }
        }
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2_000 {
            let len = rng.usize(..64);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            if let Some(first) = bytes.first_mut() {
                *first = SEQUENCE;
            }
            let _ = cert_names(&bytes);
        }
    }
}
