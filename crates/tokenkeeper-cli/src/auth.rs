//! Client assertions (`private_key_jwt`, `client_secret_jwt`), the JWT
//! bearer grant and token exchange, from flags and profile keys: the
//! settings the core client needs (what makes its cache key), and the
//! sources of keys, assertions and tokens the watcher reads. Keys,
//! assertions and tokens come from files only, never from arguments.

use std::path::{Path, PathBuf};

use tokenkeeper_blocking::Source;
use tokenkeeper_blocking::assertion::{Algorithm, Assertion, ClientKey};
use tokenkeeper_blocking::token_exchange::ExchangeToken;
use tokenkeeper_core::oauth2::assertion::GrantAssertion;
use tokenkeeper_core::oauth2::exchange::{
    ACCESS_TOKEN_TYPE, ID_TOKEN_TYPE, JWT_TOKEN_TYPE, REFRESH_TOKEN_TYPE, TokenExchange,
};
use tokenkeeper_core::oauth2::{AuthMethod, GrantType, OAuth2Client};
use zeroize::Zeroizing;

use crate::args::AuthArgs;
use crate::error::CliError;
use crate::settings::Profile;

/// The flags, else the profile.
struct Merged {
    private_key: Option<PathBuf>,
    key_id: Option<String>,
    key_alg: Option<String>,
    client_assertion_file: Option<PathBuf>,
    assertion_file: Option<PathBuf>,
    assertion_issuer: Option<String>,
    assertion_subject: Option<String>,
    subject_token_file: Option<PathBuf>,
    subject_token_type: Option<String>,
    actor_token_file: Option<PathBuf>,
    actor_token_type: Option<String>,
    requested_token_type: Option<String>,
}

fn merge(args: &AuthArgs, profile: &Profile) -> Merged {
    fn pick<T: Clone>(flag: &Option<T>, key: &Option<T>) -> Option<T> {
        flag.clone().or_else(|| key.clone())
    }
    Merged {
        private_key: pick(&args.private_key, &profile.private_key),
        key_id: pick(&args.key_id, &profile.key_id),
        key_alg: pick(&args.key_alg, &profile.key_alg),
        client_assertion_file: pick(&args.client_assertion_file, &profile.client_assertion_file),
        assertion_file: pick(&args.assertion_file, &profile.assertion_file),
        assertion_issuer: pick(&args.assertion_issuer, &profile.assertion_issuer),
        assertion_subject: pick(&args.assertion_subject, &profile.assertion_subject),
        subject_token_file: pick(&args.subject_token_file, &profile.subject_token_file),
        subject_token_type: pick(&args.subject_token_type, &profile.subject_token_type),
        actor_token_file: pick(&args.actor_token_file, &profile.actor_token_file),
        actor_token_type: pick(&args.actor_token_type, &profile.actor_token_type),
        requested_token_type: pick(&args.requested_token_type, &profile.requested_token_type),
    }
}

/// Whether an assertion file was given for client authentication, which
/// makes `private_key_jwt` the method when none was chosen.
pub(crate) fn implies_private_key_jwt(args: &AuthArgs, profile: &Profile) -> bool {
    args.client_assertion_file.is_some() || profile.client_assertion_file.is_some()
}

/// A token type: a URI as is, or the short name of one of RFC 8693's
/// (`jwt`, `access_token`, `id_token`, `refresh_token`).
fn token_type(name: &str, flag: &str) -> Result<String, CliError> {
    Ok(match name {
        "jwt" => JWT_TOKEN_TYPE.to_owned(),
        "access_token" => ACCESS_TOKEN_TYPE.to_owned(),
        "id_token" => ID_TOKEN_TYPE.to_owned(),
        "refresh_token" => REFRESH_TOKEN_TYPE.to_owned(),
        uri if uri.contains(':') => uri.to_owned(),
        other => {
            return Err(CliError::usage(format!(
                "{flag} {other:?} is neither a token type URI nor one of jwt, access_token, id_token, refresh_token"
            )));
        }
    })
}

/// Completes `client` with what its grant needs described (the JWT bearer
/// grant's assertion, a token exchange's types and the labels of its
/// sources: all part of the cache key), and, when tokens are to be asked
/// for (`load`), makes the source with its keys, assertions and tokens.
/// Checks every combination that cannot work, naming the flag to give.
pub(crate) fn complete(
    mut client: OAuth2Client,
    args: &AuthArgs,
    profile: &Profile,
    load: bool,
) -> Result<(OAuth2Client, Source), CliError> {
    let m = merge(args, profile);
    let client_id = client.client_id().as_str().to_owned();
    let method = client.get_auth_method();
    let key = match (&m.private_key, load) {
        (Some(path), true) => Some(load_key(path, m.key_id.as_deref(), m.key_alg.as_deref())?),
        _ => None,
    };
    if m.client_assertion_file.is_some() && method != AuthMethod::PrivateKeyJwt {
        return Err(CliError::usage(format!(
            "--client-assertion-file authenticates with private_key_jwt, not --auth-method {}",
            method.as_str()
        )));
    }
    // What the grant needs described.
    let mut grant_assertion = None;
    match client.grant() {
        GrantType::JwtBearer => {
            let described = match (&m.assertion_file, &m.private_key) {
                (Some(path), _) => {
                    grant_assertion = Some(Assertion::file(path));
                    GrantAssertion::external(format!("file:{}", path.display()))
                }
                (None, Some(_)) => {
                    grant_assertion = key.clone().map(Assertion::signed);
                    GrantAssertion::signed(
                        m.assertion_issuer
                            .clone()
                            .unwrap_or_else(|| client_id.clone()),
                        m.assertion_subject
                            .clone()
                            .unwrap_or_else(|| client_id.clone()),
                    )
                }
                (None, None) => {
                    return Err(CliError::usage(
                        "--grant jwt-bearer needs its assertion: --assertion-file PATH, or --private-key PATH to sign one",
                    ));
                }
            };
            client = client.grant_assertion(described);
        }
        GrantType::TokenExchange => {
            let subject_type = m.subject_token_type.as_deref().ok_or_else(|| {
                CliError::usage("--grant token-exchange needs --subject-token-type TYPE")
            })?;
            let subject_file = m.subject_token_file.as_ref().ok_or_else(|| {
                CliError::usage("--grant token-exchange needs --subject-token-file PATH")
            })?;
            let mut exchange =
                TokenExchange::new(token_type(subject_type, "--subject-token-type")?)
                    .subject_label(ExchangeToken::file(subject_file).label());
            match (&m.actor_token_file, &m.actor_token_type) {
                (Some(file), Some(actor_type)) => {
                    exchange = exchange
                        .actor(token_type(actor_type, "--actor-token-type")?)
                        .actor_label(ExchangeToken::file(file).label());
                }
                (None, None) => {}
                _ => {
                    return Err(CliError::usage(
                        "an actor token needs both --actor-token-file PATH and --actor-token-type TYPE",
                    ));
                }
            }
            if let Some(requested) = &m.requested_token_type {
                exchange =
                    exchange.requested_token_type(token_type(requested, "--requested-token-type")?);
            }
            client = client.with_token_exchange(exchange);
        }
        _ => {
            let stray = [
                ("--assertion-file", m.assertion_file.is_some()),
                ("--subject-token-file", m.subject_token_file.is_some()),
                ("--actor-token-file", m.actor_token_file.is_some()),
            ];
            if let Some((flag, _)) = stray.iter().find(|(_, given)| *given) {
                return Err(CliError::usage(format!(
                    "{flag} is for --grant {}",
                    if *flag == "--assertion-file" {
                        "jwt-bearer"
                    } else {
                        "token-exchange"
                    }
                )));
            }
        }
    }
    if method == AuthMethod::PrivateKeyJwt
        && m.client_assertion_file.is_none()
        && m.private_key.is_none()
    {
        return Err(CliError::usage(
            "--auth-method private_key_jwt needs --private-key PATH (PEM or JWK) or --client-assertion-file PATH",
        ));
    }
    let mut source = Source::oauth2(client.clone());
    if !load {
        return Ok((client, source));
    }
    if method == AuthMethod::PrivateKeyJwt {
        source = match (&m.client_assertion_file, &key) {
            (Some(path), _) => source.client_assertion(Assertion::file(path)),
            (None, Some(key)) => source.client_assertion(Assertion::signed(key.clone())),
            (None, None) => source,
        };
    }
    if let Some(assertion) = grant_assertion {
        source = source.grant_assertion(assertion);
    }
    if client.grant() == GrantType::TokenExchange {
        if let Some(path) = &m.subject_token_file {
            source = source.subject_token(ExchangeToken::file(path));
        }
        if let (Some(path), Some(_)) = (&m.actor_token_file, &m.actor_token_type) {
            source = source.actor_token(ExchangeToken::file(path));
        }
    }
    Ok((client, source))
}

/// Reads a private key: a JWK when the file holds a JSON object, else PEM.
/// The errors name the file, never what it holds.
fn load_key(path: &Path, kid: Option<&str>, alg: Option<&str>) -> Result<ClientKey, CliError> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| {
        CliError::usage(format!(
            "cannot read the private key file {}: {e}",
            path.display()
        ))
    })?);
    let json = bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{');
    let loaded = if json {
        std::str::from_utf8(&bytes)
            .map_err(|_| {
                tokenkeeper_blocking::assertion::AssertionError::misconfigured(
                    "the JWK is not UTF-8",
                )
            })
            .and_then(ClientKey::from_jwk)
    } else {
        ClientKey::from_pem(&bytes)
    };
    let in_file = |e: tokenkeeper_blocking::assertion::AssertionError| {
        CliError::usage(format!("the private key file {}: {e}", path.display()))
    };
    let mut key = loaded.map_err(in_file)?;
    if let Some(alg) = alg {
        key = Algorithm::from_name(alg)
            .and_then(|alg| key.with_algorithm(alg))
            .map_err(in_file)?;
    }
    if let Some(kid) = kid {
        key = key.with_key_id(kid);
    }
    Ok(key)
}
