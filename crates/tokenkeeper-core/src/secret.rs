//! Secret strings: tokens and client secrets that never show up in logs.
//!
//! Each type holds its value in memory that is zeroed on drop, prints only a
//! short fingerprint in `Debug` and `Display`, and gives the value out only
//! through the explicitly named `expose_secret`. Serialising one is left to the
//! cache record codec, which does it deliberately.

use std::fmt;

use zeroize::Zeroizing;

use crate::hash::fnv1a_64;

/// A short, stable, non-reversible tag that tells two secrets apart in logs,
/// e.g. `fp:3a9c1e07`. Equal secrets have equal fingerprints.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(u32);

impl Fingerprint {
    fn of(value: &str) -> Self {
        let h = fnv1a_64(value.as_bytes());
        Fingerprint((h >> 32) as u32 ^ h as u32)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fp:{:08x}", self.0)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

macro_rules! secret_string {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq)]
        pub struct $name(Zeroizing<String>);

        impl $name {
            /// Wraps a secret value.
            pub fn new(value: impl Into<String>) -> Self {
                Self(Zeroizing::new(value.into()))
            }

            /// The secret value. Named loudly so that every use is easy to audit.
            pub fn expose_secret(&self) -> &str {
                &self.0
            }

            /// A short tag for logs that does not reveal the value.
            pub fn fingerprint(&self) -> Fingerprint {
                Fingerprint::of(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.fingerprint())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.fingerprint())
            }
        }
    };
}

secret_string!(
    /// An OAuth2 access token (the bearer credential sent to resource servers).
    AccessToken
);
secret_string!(
    /// An OAuth2 refresh token.
    RefreshToken
);
secret_string!(
    /// An OpenID Connect id token.
    IdToken
);
secret_string!(
    /// The client secret used to authenticate to the token endpoint.
    ClientSecret
);
secret_string!(
    /// The `device_code` of the device authorization grant (RFC 8628 §3.2):
    /// whoever holds it while the person approves gets their tokens.
    DeviceCode
);

/// An OAuth2 client identifier. Not a secret: it is printed as is.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct ClientId(String);

impl ClientId {
    /// Wraps a client id.
    pub fn new(value: impl Into<String>) -> Self {
        ClientId(value.into())
    }

    /// The client id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let t = AccessToken::new("super-secret-value-123");
        let shown = format!(
            "{t:?} {t} {:?}",
            ClientSecret::new("super-secret-value-123")
        );
        assert!(!shown.contains("super-secret"), "{shown}");
        assert!(shown.starts_with("AccessToken(fp:"), "{shown}");
        assert_eq!(t.expose_secret(), "super-secret-value-123");
    }

    #[test]
    fn fingerprints_tell_secrets_apart() {
        assert_eq!(
            RefreshToken::new("a").fingerprint(),
            RefreshToken::new("a").fingerprint()
        );
        assert_ne!(
            RefreshToken::new("a").fingerprint(),
            RefreshToken::new("b").fingerprint()
        );
    }
}
