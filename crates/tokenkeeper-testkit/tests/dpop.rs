//! The authority's DPoP checks (RFC 9449) over real HTTP on loopback: proofs signed here with
//! *ring* (ES256 and EdDSA), sent by a tiny raw-TCP client, so that the test kit is checked
//! without any client of the project.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
};
use serde_json::{Value, json};
use tokenkeeper_testkit::authority::dpop::jwk_thumbprint;
use tokenkeeper_testkit::{
    AuthMethod, Authority, Client, DpopError, DpopNonces, DpopVerdict, Outcome,
};

// ----- proofs -----

fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// A signing key of either kind, with its public JWK.
enum Key {
    Es256(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl Key {
    fn es256() -> Key {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        Key::Es256(
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                .unwrap(),
        )
    }

    fn ed25519() -> Key {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Key::Ed25519(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap())
    }

    fn alg(&self) -> &'static str {
        match self {
            Key::Es256(_) => "ES256",
            Key::Ed25519(_) => "EdDSA",
        }
    }

    fn jwk(&self) -> Value {
        match self {
            Key::Es256(pair) => {
                let point = pair.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "x": b64url(&point[1..33]), "y": b64url(&point[33..])})
            }
            Key::Ed25519(pair) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64url(pair.public_key().as_ref())})
            }
        }
    }

    /// The RFC 7638 thumbprint, computed here from the RFC's rules.
    fn jkt(&self) -> String {
        let jwk = self.jwk();
        let canonical = match self {
            Key::Es256(_) => format!(
                r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                jwk["x"].as_str().unwrap(),
                jwk["y"].as_str().unwrap()
            ),
            Key::Ed25519(_) => format!(
                r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
                jwk["x"].as_str().unwrap()
            ),
        };
        b64url(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()).as_ref())
    }

    fn sign_with(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let signature = match self {
            Key::Es256(pair) => pair
                .sign(&SystemRandom::new(), input.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec(),
            Key::Ed25519(pair) => pair.sign(input.as_bytes()).as_ref().to_vec(),
        };
        format!("{input}.{}", b64url(&signature))
    }

    fn header(&self) -> Value {
        json!({"typ": "dpop+jwt", "alg": self.alg(), "jwk": self.jwk()})
    }

    /// A proof for `POST url` now, with a fresh id and this nonce.
    fn proof(&self, url: &str, nonce: Option<&str>) -> String {
        self.sign_with(&self.header(), &claims(url, nonce))
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(url: &str, nonce: Option<&str>) -> Value {
    let mut claims = json!({
        "jti": format!("{:032x}", fastrand::u128(..)),
        "htm": "POST",
        "htu": url,
        "iat": now_secs(),
    });
    if let Some(nonce) = nonce {
        claims["nonce"] = json!(nonce);
    }
    claims
}

// ----- a tiny HTTP/1.1 client -----

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }
}

/// `POST /token` for the `client_credentials` grant of a `client_secret_post` client, with
/// these `DPoP` headers.
fn token_request(authority: &Authority, client: &str, dpop: &[&str]) -> Answer {
    let body = format!("grant_type=client_credentials&client_id={client}&client_secret=s3cret");
    let mut head = format!(
        "POST /token HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
        authority.addr(),
        body.len()
    );
    for proof in dpop {
        head.push_str(&format!("DPoP: {proof}\r\n"));
    }
    head.push_str("\r\n");
    let mut stream = TcpStream::connect(authority.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.trim().to_owned(), value.trim().to_owned())
        })
        .collect();
    Answer {
        status,
        headers,
        body: serde_json::from_str(body).unwrap(),
    }
}

fn authority_with(nonces: DpopNonces) -> Authority {
    let authority = Authority::builder().dpop_nonces(nonces).start();
    authority.register_client(Client::new("svc", "s3cret").auth_method(AuthMethod::Post));
    authority.register_client(
        Client::new("dpop-only", "s3cret")
            .auth_method(AuthMethod::Post)
            .require_dpop(true),
    );
    authority
}

fn last_verdict(authority: &Authority) -> DpopVerdict {
    let record = authority.requests().pop().unwrap();
    record.dpop.expect("the proof is logged").verdict
}

// ----- tests -----

#[test]
fn a_valid_proof_of_either_algorithm_gets_a_token_bound_to_its_key() {
    let authority = authority_with(DpopNonces::NotRequired);
    for key in [Key::es256(), Key::ed25519()] {
        let proof = key.proof(&authority.token_url(), None);
        let answer = token_request(&authority, "svc", &[&proof]);
        assert_eq!(answer.status, 200, "{}: {}", key.alg(), answer.body);
        assert_eq!(answer.body["token_type"], "DPoP");
        // No nonce is asked for, so none is handed out.
        assert_eq!(answer.header("dpop-nonce"), None);
        let token = answer.body["access_token"].as_str().unwrap();
        assert_eq!(authority.dpop_binding(token), Some(key.jkt()));
        assert_eq!(jwk_thumbprint(&key.jwk()).unwrap(), key.jkt());
        let issued = authority.last_issued().unwrap();
        assert_eq!(issued.dpop_jkt, Some(key.jkt()));
        assert_eq!(issued.bound_to, None);
        let record = authority.requests().pop().unwrap();
        let check = record.dpop.unwrap();
        assert_eq!(check.verdict, DpopVerdict::Accepted);
        let seen = check.proof.unwrap();
        assert_eq!((seen.alg.as_str(), seen.jkt), (key.alg(), key.jkt()));
        assert_eq!(seen.htu, authority.token_url());
    }
}

#[test]
fn without_a_proof_a_token_is_bearer_unless_the_client_must_use_dpop() {
    let authority = authority_with(DpopNonces::NotRequired);
    let answer = token_request(&authority, "svc", &[]);
    assert_eq!(answer.body["token_type"], "Bearer");
    let token = answer.body["access_token"].as_str().unwrap();
    assert_eq!(authority.dpop_binding(token), None);
    assert_eq!(authority.requests()[0].dpop, None);

    let answer = token_request(&authority, "dpop-only", &[]);
    assert_eq!(
        (answer.status, answer.error()),
        (400, "invalid_dpop_proof"),
        "{}",
        answer.body
    );
    assert_eq!(authority.issued_tokens().len(), 1);
    let key = Key::es256();
    let answer = token_request(
        &authority,
        "dpop-only",
        &[&key.proof(&authority.token_url(), None)],
    );
    assert_eq!(answer.body["token_type"], "DPoP", "{}", answer.body);
}

/// Whether a refusal is the one a case expects.
type Expected = fn(&DpopError) -> bool;

#[test]
fn bad_proofs_are_invalid_dpop_proof_and_issue_nothing() {
    let authority = authority_with(DpopNonces::NotRequired);
    let key = Key::es256();
    let other = Key::ed25519();
    let url = authority.token_url();
    let with = |change: &dyn Fn(&mut Value, &mut Value)| {
        let (mut header, mut claims) = (key.header(), claims(&url, None));
        change(&mut header, &mut claims);
        key.sign_with(&header, &claims)
    };
    let cases: Vec<(&str, String, Expected)> = vec![
        ("htm GET", with(&|_, c| c["htm"] = json!("GET")), |e| {
            matches!(e, DpopError::WrongMethod { .. })
        }),
        (
            "another path",
            with(&|_, c| c["htu"] = json!(url.replace("/token", "/other"))),
            |e| matches!(e, DpopError::WrongUrl { .. }),
        ),
        (
            "another port",
            with(&|_, c| c["htu"] = json!("http://127.0.0.1:1/token")),
            |e| matches!(e, DpopError::WrongUrl { .. }),
        ),
        (
            "made an hour ago",
            with(&|_, c| c["iat"] = json!(now_secs() - 3600)),
            |e| matches!(e, DpopError::OutOfWindow { .. }),
        ),
        (
            "made in an hour",
            with(&|_, c| c["iat"] = json!(now_secs() + 3600)),
            |e| matches!(e, DpopError::OutOfWindow { .. }),
        ),
        ("typ jwt", with(&|h, _| h["typ"] = json!("JWT")), |e| {
            matches!(e, DpopError::WrongType(_))
        }),
        (
            "another key in the header",
            with(&|h, _| h["jwk"] = Key::es256().jwk()),
            |e| *e == DpopError::BadSignature,
        ),
        (
            "an Ed25519 key for ES256",
            with(&|h, _| h["jwk"] = other.jwk()),
            |e| matches!(e, DpopError::BadKey(_)),
        ),
        ("alg none", with(&|h, _| h["alg"] = json!("none")), |e| {
            matches!(e, DpopError::UnsupportedAlgorithm(_))
        }),
        (
            "no jti",
            with(&|_, c| {
                c.as_object_mut().unwrap().remove("jti");
            }),
            |e| matches!(e, DpopError::Malformed(_)),
        ),
        ("not a JWT", "not-a-jwt".to_owned(), |e| {
            matches!(e, DpopError::Malformed(_))
        }),
    ];
    for (name, proof, expected) in cases {
        let answer = token_request(&authority, "svc", &[&proof]);
        assert_eq!(
            (answer.status, answer.error()),
            (400, "invalid_dpop_proof"),
            "{name}: {}",
            answer.body
        );
        match last_verdict(&authority) {
            DpopVerdict::Refused(error) => assert!(expected(&error), "{name}: {error:?}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    // Two proofs in one request, each fine by itself.
    let (a, b) = (key.proof(&url, None), key.proof(&url, None));
    let answer = token_request(&authority, "svc", &[&a, &b]);
    assert_eq!((answer.status, answer.error()), (400, "invalid_dpop_proof"));
    assert_eq!(
        last_verdict(&authority),
        DpopVerdict::Refused(DpopError::Multiple)
    );
    assert!(authority.issued_tokens().is_empty());
    // A wrong secret is answered as such, whatever the proof.
    authority.register_client(Client::new("svc", "other").auth_method(AuthMethod::Post));
    let answer = token_request(&authority, "svc", &[&a]);
    assert_eq!((answer.status, answer.error()), (401, "invalid_client"));
    assert_eq!(last_verdict(&authority), DpopVerdict::NotChecked);
}

#[test]
fn a_replayed_proof_is_refused() {
    let authority = authority_with(DpopNonces::NotRequired);
    let key = Key::ed25519();
    let proof = key.proof(&authority.token_url(), None);
    assert_eq!(token_request(&authority, "svc", &[&proof]).status, 200);
    let again = token_request(&authority, "svc", &[&proof]);
    assert_eq!(
        (again.status, again.error()),
        (400, "invalid_dpop_proof"),
        "{}",
        again.body
    );
    assert!(matches!(
        last_verdict(&authority),
        DpopVerdict::Refused(DpopError::Replayed { .. })
    ));
    // A new proof of the same key is fine.
    let fresh = key.proof(&authority.token_url(), None);
    assert_eq!(token_request(&authority, "svc", &[&fresh]).status, 200);
    assert_eq!(authority.issued_tokens().len(), 2);
}

#[test]
fn a_required_nonce_is_handed_out_and_then_demanded() {
    let authority = authority_with(DpopNonces::Required);
    let key = Key::es256();
    let url = authority.token_url();
    let nonce = authority.dpop_nonce().expect("a nonce");

    let answer = token_request(&authority, "svc", &[&key.proof(&url, None)]);
    assert_eq!(
        (answer.status, answer.error()),
        (400, "use_dpop_nonce"),
        "{}",
        answer.body
    );
    assert_eq!(answer.header("dpop-nonce"), Some(nonce.as_str()));
    assert_eq!(
        last_verdict(&authority),
        DpopVerdict::Refused(DpopError::NonceRequired { presented: None })
    );

    let answer = token_request(&authority, "svc", &[&key.proof(&url, Some(&nonce))]);
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["token_type"], "DPoP");
    assert_eq!(answer.header("dpop-nonce"), Some(nonce.as_str()));
    // The nonce stays until it is rotated, then the old one is refused.
    assert_eq!(
        token_request(&authority, "svc", &[&key.proof(&url, Some(&nonce))]).status,
        200
    );
    let rotated = authority.rotate_dpop_nonce().unwrap();
    assert_ne!(rotated, nonce);
    let answer = token_request(&authority, "svc", &[&key.proof(&url, Some(&nonce))]);
    assert_eq!((answer.status, answer.error()), (400, "use_dpop_nonce"));
    assert_eq!(answer.header("dpop-nonce"), Some(rotated.as_str()));
    // A client without DPoP is not asked for anything.
    let answer = token_request(&authority, "svc", &[]);
    assert_eq!(answer.body["token_type"], "Bearer");
    assert_eq!(answer.header("dpop-nonce"), None);
    assert_eq!(authority.issued_tokens().len(), 3);
}

#[test]
fn fresh_per_token_nonces_are_used_up_by_each_token() {
    let authority = authority_with(DpopNonces::FreshPerToken);
    let key = Key::es256();
    let url = authority.token_url();
    let first = authority.dpop_nonce().unwrap();
    let answer = token_request(&authority, "svc", &[&key.proof(&url, Some(&first))]);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let second = answer.header("dpop-nonce").unwrap().to_owned();
    assert_ne!(second, first);
    assert_eq!(authority.dpop_nonce(), Some(second.clone()));
    let answer = token_request(&authority, "svc", &[&key.proof(&url, Some(&first))]);
    assert_eq!((answer.status, answer.error()), (400, "use_dpop_nonce"));
    assert_eq!(answer.header("dpop-nonce"), Some(second.as_str()));
    let answer = token_request(&authority, "svc", &[&key.proof(&url, Some(&second))]);
    assert_eq!(answer.status, 200);
    assert!(matches!(
        authority.requests().last().unwrap().outcome,
        Outcome::Issued { .. }
    ));
    // Without nonces, nothing rotates.
    let plain = authority_with(DpopNonces::NotRequired);
    assert_eq!(
        (plain.dpop_nonce(), plain.rotate_dpop_nonce()),
        (None, None)
    );
}
