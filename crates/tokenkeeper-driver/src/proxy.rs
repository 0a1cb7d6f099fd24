//! Which proxy a token request goes through: the rules, written once for
//! every adapter. An adapter resolves its [`HttpSettings`](crate::HttpSettings)'
//! [`ProxyConfig`] into [`ProxyRules`] when its HTTP client is built, then asks
//! [`ProxyRules::proxy_for`] for each request.
//!
//! # The rules
//!
//! - **Loopback is never proxied**, whatever the settings say: `localhost`,
//!   any `*.localhost` name, `127.0.0.0/8` and `::1` always go direct, so a
//!   proxy never sees a request (nor the client secret it carries) meant
//!   for this machine.
//! - **An explicit proxy** ([`ProxyConfig::url`]) is used for every other
//!   `http` and `https` target, and the environment is not read at all.
//! - **From the environment** (the default, [`ProxyConfig::from_env`]), read
//!   once when the client is built, as curl reads it:
//!   - `https` targets: `https_proxy`, else `HTTPS_PROXY`, else `all_proxy`,
//!     else `ALL_PROXY`;
//!   - `http` targets: `http_proxy`, else `HTTP_PROXY`, else `all_proxy`,
//!     else `ALL_PROXY`. `HTTP_PROXY` (upper case) is ignored when
//!     `REQUEST_METHOD` is set: in a CGI program, a client's `Proxy:` request
//!     header arrives as the variable `HTTP_PROXY` ("httpoxy"), so honouring
//!     it would let any caller redirect the program's requests. curl never
//!     reads `HTTP_PROXY`; Go ignores it under CGI, as here.
//!   - `no_proxy`, else `NO_PROXY`: hosts that go direct (below).
//!
//!   Empty variables count as unset.
//! - **No proxy** at all: [`ProxyConfig::none`].
//!
//! `NO_PROXY` is a comma-separated list (spaces allowed). `*` alone means
//! every host. A name matches itself and every name below it, with or
//! without a leading dot (`example.com` and `.example.com` both match
//! `example.com` and `auth.example.com`; `*.example.com` is read as
//! `.example.com`). An IP address matches itself; `10.0.0.0/8` or
//! `fd00::/8` match a range. Ports are ignored (`auth.example.com:8443`
//! matches `auth.example.com` on any port). Matching ignores case and a
//! trailing dot. Entries that are none of these are ignored, as curl does.
//!
//! # Proxies
//!
//! Only `http://[user:password@]host[:port]` proxies are supported (a value
//! without a scheme is `http://`, and without a port uses 1080, as curl
//! does). Any other scheme (`https://`, `socks5://`, ...) is a setup error
//! naming it, rather than a request that silently bypasses the proxy. A
//! plain-http target goes to the proxy as an absolute-form request; an
//! `https` target goes through a `CONNECT host:port` tunnel, with TLS to the
//! target inside it (so the proxy sees the target's name and port, never
//! the request). Credentials in the proxy URL (percent-encoded) are sent as
//! `Proxy-Authorization: Basic`, and never appear in `Debug`, `Display`,
//! errors or logs.

use std::fmt;
use std::net::IpAddr;
use tokenkeeper_core::oauth2::is_loopback_host;

use http::{HeaderValue, Uri};
use zeroize::Zeroizing;

/// The variables [`ProxyConfig::from_vars`] and [`ProxyConfig::from_env`]
/// look at; any other name is ignored.
const VARIABLES: [&str; 9] = [
    "https_proxy",
    "HTTPS_PROXY",
    "http_proxy",
    "HTTP_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
    "REQUEST_METHOD",
];

/// The port of a proxy URL that names none (curl's choice).
const DEFAULT_PROXY_PORT: u16 = 1080;

/// How the HTTP client picks a proxy; set with
/// [`HttpSettings::proxy`](crate::HttpSettings::proxy). See the
/// [rules](self#the-rules): loopback targets are never proxied, whatever
/// this says.
///
/// ```
/// use tokenkeeper_driver::{HttpSettings, ProxyConfig};
///
/// // The default: the proxy variables, read when the client is built.
/// let from_env = HttpSettings::new();
/// // This proxy, whatever the environment says, except for two hosts.
/// let explicit = HttpSettings::new().proxy(
///     ProxyConfig::url("http://proxy.internal:3128")?.no_proxy("sts.internal,.corp.example"),
/// );
/// // Variables given here rather than read from the process.
/// let given = HttpSettings::new().proxy(ProxyConfig::from_vars([
///     ("HTTPS_PROXY", "http://proxy.internal:3128"),
///     ("NO_PROXY", "localhost,10.0.0.0/8"),
/// ]));
/// // Never a proxy.
/// let direct = HttpSettings::new().proxy(ProxyConfig::none());
/// # let _ = (from_env, explicit, given, direct);
/// # Ok::<(), tokenkeeper_driver::ProxyError>(())
/// ```
#[derive(Clone, Default)]
pub struct ProxyConfig {
    kind: Kind,
    /// Hosts added with [`ProxyConfig::no_proxy`], as given.
    no_proxy: Vec<String>,
}

#[derive(Clone, Default)]
enum Kind {
    #[default]
    Environment,
    Vars(Vec<(&'static str, String)>),
    None,
    Url(ProxyTarget),
}

impl fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("ProxyConfig");
        match &self.kind {
            Kind::Environment => s.field("from", &"environment"),
            // Values may hold credentials: only their names are shown.
            Kind::Vars(vars) => s.field(
                "from_vars",
                &vars.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
            ),
            Kind::None => s.field("from", &"none"),
            Kind::Url(target) => s.field("url", target),
        };
        s.field("no_proxy", &self.no_proxy).finish()
    }
}

impl ProxyConfig {
    /// The proxy variables of the process's environment, read when the HTTP
    /// client is built (the default).
    pub fn from_env() -> Self {
        Self::default()
    }

    /// No proxy, whatever the environment says.
    pub fn none() -> Self {
        ProxyConfig {
            kind: Kind::None,
            no_proxy: Vec::new(),
        }
    }

    /// This proxy, `http://[user:password@]host[:port]`, for every target
    /// that is not loopback; the environment is not read. Credentials are
    /// percent-decoded and sent as `Proxy-Authorization: Basic`.
    ///
    /// Errors: a scheme other than `http`, or a URL that is not one (the
    /// error never holds the URL, which may hold a password).
    pub fn url(url: &str) -> Result<Self, ProxyError> {
        Ok(ProxyConfig {
            kind: Kind::Url(ProxyTarget::parse(url, "the proxy setting")?),
            no_proxy: Vec::new(),
        })
    }

    /// The rules the environment would give if it held exactly these
    /// variables (names as in the environment, such as `HTTPS_PROXY` or
    /// `no_proxy`; others are ignored): for tests, and for programs that
    /// take proxy settings from elsewhere. Nothing is read from the process.
    /// Bad values show when the client is built, as
    /// [`ProxyConfig::resolve`] reports them.
    pub fn from_vars<I, K, V>(vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Into<String>,
    {
        let mut known = Vec::new();
        for (name, value) in vars {
            if let Some(name) = VARIABLES.iter().find(|known| **known == name.as_ref()) {
                known.retain(|(n, _)| n != name);
                known.push((*name, value.into()));
            }
        }
        ProxyConfig {
            kind: Kind::Vars(known),
            no_proxy: Vec::new(),
        }
    }

    /// Also sends these hosts direct: a `NO_PROXY` list, added to the one
    /// from the environment or the variables, if any.
    pub fn no_proxy(mut self, list: impl Into<String>) -> Self {
        self.no_proxy.push(list.into());
        self
    }

    /// The rules this configuration gives now (for
    /// [`from_env`](Self::from_env), from the environment as it is now).
    ///
    /// Errors: a proxy variable that would be used names a scheme other than
    /// `http`, or is not a URL.
    pub fn resolve(&self) -> Result<ProxyRules, ProxyError> {
        let mut rules = match &self.kind {
            Kind::None => ProxyRules::default(),
            Kind::Url(target) => ProxyRules {
                http: Some(target.clone()),
                https: Some(target.clone()),
                no_proxy: NoProxy::default(),
            },
            Kind::Vars(vars) => ProxyRules::from_lookup(|name| {
                vars.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.clone())
            })?,
            Kind::Environment => {
                let rules = ProxyRules::from_lookup(|name| std::env::var(name).ok())?;
                tracing::debug!(
                    http = rules.http.as_ref().map(tracing::field::display),
                    https = rules.https.as_ref().map(tracing::field::display),
                    "proxies from the environment"
                );
                rules
            }
        };
        for list in &self.no_proxy {
            rules.no_proxy.extend(list);
        }
        Ok(rules)
    }
}

/// Which proxy each request goes through, resolved from a [`ProxyConfig`];
/// what an adapter's exchange consults for each request. The default sends
/// everything direct.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ProxyRules {
    http: Option<ProxyTarget>,
    https: Option<ProxyTarget>,
    no_proxy: NoProxy,
}

impl fmt::Debug for ProxyRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyRules")
            .field("http", &self.http)
            .field("https", &self.https)
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

impl ProxyRules {
    /// The rules of a set of variables, looked up by name.
    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ProxyError> {
        let first = |names: &[&'static str]| -> Option<(&'static str, String)> {
            names.iter().find_map(|name| {
                get(name)
                    .filter(|value| !value.trim().is_empty())
                    .map(|value| (*name, value))
            })
        };
        let parse = |found: Option<(&'static str, String)>| {
            found
                .map(|(name, value)| ProxyTarget::parse(&value, &format!("the {name} variable")))
                .transpose()
        };
        let cgi = get("REQUEST_METHOD").is_some_and(|v| !v.is_empty());
        let http_names: &[&'static str] = if cgi {
            &["http_proxy", "all_proxy", "ALL_PROXY"]
        } else {
            &["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"]
        };
        let mut no_proxy = NoProxy::default();
        if let Some((_, list)) = first(&["no_proxy", "NO_PROXY"]) {
            no_proxy.extend(&list);
        }
        Ok(ProxyRules {
            http: parse(first(http_names))?,
            https: parse(first(&[
                "https_proxy",
                "HTTPS_PROXY",
                "all_proxy",
                "ALL_PROXY",
            ]))?,
            no_proxy,
        })
    }

    /// The proxy a request to `uri` goes through, or `None` to go direct:
    /// loopback hosts, hosts `NO_PROXY` lists, schemes other than `http` and
    /// `https`, and targets of a scheme no proxy is set for go direct.
    pub fn proxy_for(&self, uri: &Uri) -> Option<&ProxyTarget> {
        let proxy = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("https") => self.https.as_ref(),
            Some(s) if s.eq_ignore_ascii_case("http") => self.http.as_ref(),
            _ => None,
        }?;
        let host = normalise_host(uri.host()?);
        if is_loopback_host(&host) || self.no_proxy.matches(&host) {
            return None;
        }
        Some(proxy)
    }

    /// Every proxy these rules may use (at most two, each once).
    pub fn targets(&self) -> impl Iterator<Item = &ProxyTarget> {
        let https = self
            .https
            .as_ref()
            .filter(|t| self.http.as_ref() != Some(*t));
        self.http.iter().chain(https)
    }
}

/// An HTTP proxy: where to connect, and the credentials to present. `Debug`
/// and `Display` show its host and port only.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyTarget {
    host: String,
    port: u16,
    credentials: Option<Credentials>,
}

/// Proxy credentials, decoded; zeroed on drop.
#[derive(Clone, PartialEq, Eq)]
struct Credentials {
    user: Zeroizing<String>,
    password: Zeroizing<String>,
    /// `Basic base64(user:password)`, marked sensitive.
    header: HeaderValue,
}

impl fmt::Debug for ProxyTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// `http://host:port`, never the credentials.
impl fmt::Display for ProxyTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.authority())
    }
}

impl ProxyTarget {
    /// Parses `http://[user:password@]host[:port][/]`; `from` says where the
    /// URL came from, for errors.
    fn parse(url: &str, from: &str) -> Result<Self, ProxyError> {
        let invalid = |problem: &'static str| ProxyError::InvalidUrl {
            from: from.to_owned(),
            problem,
        };
        let url = url.trim();
        let rest = match url.split_once("://") {
            Some((scheme, rest)) => {
                let readable = !scheme.is_empty()
                    && scheme.len() <= 16
                    && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
                if !readable {
                    return Err(invalid("its scheme is not readable"));
                }
                if !scheme.eq_ignore_ascii_case("http") {
                    return Err(ProxyError::UnsupportedScheme {
                        from: from.to_owned(),
                        scheme: scheme.to_ascii_lowercase(),
                    });
                }
                rest
            }
            None => url,
        };
        // The authority ends where a path, query or fragment starts; the
        // rest is ignored, as curl ignores it.
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..end];
        let (userinfo, host_port) = match authority.rsplit_once('@') {
            Some((userinfo, host_port)) => (Some(userinfo), host_port),
            None => (None, authority),
        };
        let (host, port) = split_host_port(host_port)
            .ok_or_else(|| invalid("its port is not a number from 1 to 65535"))?;
        if host.is_empty() {
            return Err(invalid("it has no host"));
        }
        let host_ok = match host.parse::<IpAddr>() {
            Ok(_) => true,
            Err(_) => host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')),
        };
        if !host_ok {
            return Err(invalid("its host is not a name or an IP address"));
        }
        let credentials = match userinfo {
            None => None,
            Some(userinfo) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                let user = percent_decode(user)
                    .ok_or_else(|| invalid("its user name is not percent-encoded UTF-8"))?;
                let password = percent_decode(password)
                    .ok_or_else(|| invalid("its password is not percent-encoded UTF-8"))?;
                let pair = Zeroizing::new(format!("{}:{}", *user, *password));
                let mut header =
                    HeaderValue::from_str(&format!("Basic {}", base64(pair.as_bytes())))
                        .map_err(|_| invalid("its credentials cannot be sent"))?;
                header.set_sensitive(true);
                Some(Credentials {
                    user,
                    password,
                    header,
                })
            }
        };
        Ok(ProxyTarget {
            host: host.to_ascii_lowercase(),
            port: port.unwrap_or(DEFAULT_PROXY_PORT),
            credentials,
        })
    }

    /// The proxy's host: a name, or an IP address without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port`, with brackets around an IPv6 address.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Whether credentials are presented to the proxy.
    pub fn has_credentials(&self) -> bool {
        self.credentials.is_some()
    }

    /// The user name presented to the proxy, if any.
    pub fn user(&self) -> Option<&str> {
        self.credentials.as_ref().map(|c| c.user.as_str())
    }

    /// The password presented to the proxy, if any (empty when the URL gave
    /// a user only). For an HTTP stack that takes credentials apart; never
    /// log it.
    pub fn password(&self) -> Option<&str> {
        self.credentials.as_ref().map(|c| c.password.as_str())
    }

    /// The value of the `Proxy-Authorization` header to send, if any
    /// (`Basic ...`, marked sensitive so that `Debug` of a header map hides it).
    pub fn authorization(&self) -> Option<&HeaderValue> {
        self.credentials.as_ref().map(|c| &c.header)
    }
}

/// A proxy setting that cannot be used. It never holds the proxy URL (which
/// may hold a password), only where it came from and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The proxy URL names a scheme other than `http`.
    #[error(
        "the proxy in {from} uses {scheme}://, which is not supported: give an http:// proxy, or none"
    )]
    UnsupportedScheme {
        /// Where the URL came from: `the HTTPS_PROXY variable`, `the proxy setting`.
        from: String,
        /// The scheme, in lower case.
        scheme: String,
    },
    /// The proxy URL is not one.
    #[error("the proxy in {from} is not an http://[user:password@]host[:port] URL: {problem}")]
    InvalidUrl {
        /// Where the URL came from.
        from: String,
        /// What is wrong with it.
        problem: &'static str,
    },
}

/// Hosts that go direct.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct NoProxy {
    all: bool,
    /// Lower case, without leading or trailing dots.
    names: Vec<String>,
    /// Addresses and prefix lengths.
    nets: Vec<(IpAddr, u8)>,
}

impl NoProxy {
    /// Adds the entries of a `NO_PROXY` list.
    fn extend(&mut self, list: &str) {
        for entry in list
            .split(|c: char| c == ',' || c.is_ascii_whitespace())
            .filter(|e| !e.is_empty())
        {
            self.add(entry);
        }
    }

    fn add(&mut self, entry: &str) {
        if entry == "*" {
            self.all = true;
            return;
        }
        if let Some((address, bits)) = entry.split_once('/') {
            let address = address.trim_start_matches('[').trim_end_matches(']');
            if let (Ok(ip), Ok(bits)) = (address.parse::<IpAddr>(), bits.parse::<u8>()) {
                let max = if ip.is_ipv4() { 32 } else { 128 };
                if bits <= max {
                    self.nets.push((ip, bits));
                }
            }
            return;
        }
        let host = if let Some(bracketed) = entry.strip_prefix('[') {
            // `[v6]` or `[v6]:port`
            match bracketed.split_once(']') {
                Some((v6, _)) => v6,
                None => return,
            }
        } else if entry.parse::<IpAddr>().is_ok() {
            entry
        } else {
            // `host:port`: the port is ignored.
            match entry.rsplit_once(':') {
                Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
                Some(_) => return,
                None => entry,
            }
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            let bits = if ip.is_ipv4() { 32 } else { 128 };
            self.nets.push((ip, bits));
            return;
        }
        let name = host
            .strip_prefix("*.")
            .unwrap_or(host)
            .trim_start_matches('.')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        if valid {
            self.names.push(name);
        }
    }

    /// Whether `host` (normalised) goes direct.
    fn matches(&self, host: &str) -> bool {
        if self.all {
            return true;
        }
        match host.parse::<IpAddr>() {
            Ok(ip) => self.nets.iter().any(|(net, bits)| in_net(ip, *net, *bits)),
            Err(_) => self.names.iter().any(|name| {
                host == name
                    || (host.len() > name.len()
                        && host.ends_with(name.as_str())
                        && host.as_bytes()[host.len() - name.len() - 1] == b'.')
            }),
        }
    }
}

/// Whether `ip` is within `net/bits` (an IPv4-mapped IPv6 address counts as
/// its IPv4 address).
fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip.to_canonical(), net.to_canonical()) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let bits = u32::from(bits.min(32));
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let bits = u32::from(bits.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// A URI's host as the rules compare it: no brackets, lower case, no
/// trailing dot.
fn normalise_host(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`; `None` for a bad port.
fn split_host_port(host_port: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let (v6, after) = bracketed.split_once(']')?;
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return None;
        }
        match after {
            "" => (v6, None),
            _ => (v6, Some(after.strip_prefix(':')?)),
        }
    } else {
        match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    let port = match port {
        None | Some("") => None,
        Some(port) => Some(port.parse::<u16>().ok().filter(|p| *p != 0)?),
    };
    Some((host, port))
}

/// Decodes `%XX` escapes; `None` for a bad escape or bytes that are not UTF-8.
fn percent_decode(text: &str) -> Option<Zeroizing<String>> {
    let bytes = text.as_bytes();
    let mut out = Zeroizing::new(Vec::with_capacity(bytes.len()));
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let text = std::str::from_utf8(&out).ok()?;
    Some(Zeroizing::new(text.to_owned()))
}

/// Standard base64 with padding.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextet = |shift: u32| char::from(ALPHABET[((n >> shift) & 63) as usize]);
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(text: &str) -> Uri {
        text.parse().unwrap()
    }

    fn via(rules: &ProxyRules, target: &str) -> Option<String> {
        rules.proxy_for(&uri(target)).map(ProxyTarget::authority)
    }

    fn vars(pairs: &[(&str, &str)]) -> ProxyRules {
        ProxyConfig::from_vars(pairs.iter().copied())
            .resolve()
            .unwrap()
    }

    #[test]
    fn each_scheme_reads_its_variables_in_curls_order() {
        let rules = vars(&[
            ("https_proxy", "http://lower-s:1"),
            ("HTTPS_PROXY", "http://upper-s:2"),
            ("http_proxy", "http://lower:3"),
            ("HTTP_PROXY", "http://upper:4"),
            ("ALL_PROXY", "http://all:5"),
        ]);
        assert_eq!(via(&rules, "https://a.example/t").unwrap(), "lower-s:1");
        assert_eq!(via(&rules, "http://a.example/t").unwrap(), "lower:3");

        let rules = vars(&[
            ("HTTPS_PROXY", "http://upper-s:2"),
            ("HTTP_PROXY", "http://upper:4"),
        ]);
        assert_eq!(via(&rules, "https://a.example/t").unwrap(), "upper-s:2");
        assert_eq!(via(&rules, "http://a.example/t").unwrap(), "upper:4");

        // all_proxy before ALL_PROXY, for whatever has no variable of its own.
        let rules = vars(&[
            ("ALL_PROXY", "http://upper-all:6"),
            ("all_proxy", "http://all:5"),
        ]);
        assert_eq!(via(&rules, "https://a.example/t").unwrap(), "all:5");
        assert_eq!(via(&rules, "http://a.example/t").unwrap(), "all:5");
        let rules = vars(&[
            ("ALL_PROXY", "http://upper-all:6"),
            ("HTTPS_PROXY", "http://s:7"),
        ]);
        assert_eq!(via(&rules, "https://a.example/t").unwrap(), "s:7");
        assert_eq!(via(&rules, "http://a.example/t").unwrap(), "upper-all:6");

        // Empty counts as unset; nothing set means direct.
        let rules = vars(&[("https_proxy", ""), ("HTTPS_PROXY", "http://s:7")]);
        assert_eq!(via(&rules, "https://a.example/t").unwrap(), "s:7");
        assert_eq!(via(&rules, "http://a.example/t"), None);
        assert_eq!(via(&vars(&[]), "https://a.example/t"), None);
        // Other names are ignored, and the last of a name wins.
        let rules = vars(&[
            ("SOCKS_PROXY", "socks5://x"),
            ("HTTPS_PROXY", "http://a:1"),
            ("HTTPS_PROXY", "http://b:2"),
        ]);
        assert_eq!(via(&rules, "https://a.example/t").unwrap(), "b:2");
    }

    #[test]
    fn cgi_programs_ignore_upper_case_http_proxy() {
        let rules = vars(&[
            ("HTTP_PROXY", "http://injected:1"),
            ("REQUEST_METHOD", "GET"),
        ]);
        assert_eq!(via(&rules, "http://a.example/t"), None);
        let rules = vars(&[
            ("HTTP_PROXY", "http://injected:1"),
            ("http_proxy", "http://mine:2"),
            ("REQUEST_METHOD", "GET"),
        ]);
        assert_eq!(via(&rules, "http://a.example/t").unwrap(), "mine:2");
        let rules = vars(&[
            ("HTTP_PROXY", "http://injected:1"),
            ("ALL_PROXY", "http://all:3"),
            ("REQUEST_METHOD", "POST"),
        ]);
        assert_eq!(via(&rules, "http://a.example/t").unwrap(), "all:3");
        // HTTPS_PROXY cannot be set by a request header (there is no `Proxy:` for it).
        let rules = vars(&[("HTTPS_PROXY", "http://s:1"), ("REQUEST_METHOD", "GET")]);
        assert_eq!(via(&rules, "https://a.example/t").unwrap(), "s:1");
    }

    #[test]
    fn loopback_is_never_proxied() {
        let everything = [
            ("HTTPS_PROXY", "http://p:1"),
            ("HTTP_PROXY", "http://p:1"),
            ("ALL_PROXY", "http://p:1"),
        ];
        let explicit = ProxyConfig::url("http://p:1").unwrap().resolve().unwrap();
        for rules in [vars(&everything), explicit] {
            for target in [
                "http://127.0.0.1:8080/token",
                "https://127.0.0.1/token",
                "http://127.1.2.3/token",
                "http://[::1]:9000/token",
                "https://[::ffff:127.0.0.1]/token",
                "http://localhost:8080/token",
                "https://LOCALHOST./token",
                "http://auth.localhost/token",
            ] {
                assert_eq!(via(&rules, target), None, "{target}");
            }
            for target in [
                "http://128.0.0.1/t",
                "https://localhost.example.com/t",
                "https://mylocalhost/t",
                "http://[::2]/t",
            ] {
                assert_eq!(via(&rules, target).as_deref(), Some("p:1"), "{target}");
            }
        }
    }

    #[test]
    fn no_proxy_matches_like_curl() {
        let rules = |list: &str| vars(&[("HTTPS_PROXY", "http://p:1"), ("NO_PROXY", list)]);
        let direct =
            |list: &str, host: &str| via(&rules(list), &format!("https://{host}/t")).is_none();

        assert!(direct("*", "anything.example"));
        assert!(direct("*", "10.1.2.3"));
        // Names: the name itself and what is below it, leading dot or not.
        for list in [
            "example.com",
            ".example.com",
            "*.example.com",
            "EXAMPLE.COM.",
            "example.com:8443",
        ] {
            assert!(direct(list, "example.com"), "{list}");
            assert!(direct(list, "auth.example.com"), "{list}");
            assert!(direct(list, "a.b.Example.COM"), "{list}");
            assert!(!direct(list, "notexample.com"), "{list}");
            assert!(!direct(list, "example.com.evil"), "{list}");
        }
        // Lists: commas and spaces, empty entries and junk ignored.
        let list =
            " a.example , ,b.example,,bad/entry, 192.168.1.7 10.0.0.0/8,[2001:db8::1],fd00::/8";
        assert!(direct(list, "a.example"));
        assert!(direct(list, "x.b.example"));
        assert!(!direct(list, "c.example"));
        assert!(direct(list, "192.168.1.7"));
        assert!(!direct(list, "192.168.1.8"));
        assert!(direct(list, "10.200.3.4"));
        assert!(!direct(list, "11.0.0.1"));
        assert!(direct(list, "[2001:db8::1]"));
        assert!(!direct(list, "[2001:db8::2]"));
        assert!(direct(list, "[fd12::1]"));
        assert!(!direct(list, "[fe80::1]"));
        // A name entry never matches an address, nor an address entry a name.
        assert!(!direct("10.0.0.1", "ten.example"));
        assert!(!direct("example", "10.0.0.1"));
        // Ports are ignored, on either side.
        assert!(direct("192.168.1.7:443", "192.168.1.7:8443"));
        assert!(direct("[2001:db8::1]:443", "[2001:db8::1]:8443"));
        assert!(direct("auth.example", "auth.example:8443"));
        // Lower case before upper case.
        let rules = vars(&[
            ("HTTPS_PROXY", "http://p:1"),
            ("no_proxy", "a.example"),
            ("NO_PROXY", "b.example"),
        ]);
        assert_eq!(via(&rules, "https://a.example/t"), None);
        assert!(via(&rules, "https://b.example/t").is_some());
        // Bad prefix lengths are ignored.
        assert!(!direct("10.0.0.0/33", "10.0.0.1"));
        assert!(direct("0.0.0.0/0", "10.0.0.1"));
    }

    #[test]
    fn an_explicit_proxy_overrides_the_environment() {
        let rules = ProxyConfig::url("http://explicit:3128")
            .unwrap()
            .no_proxy("skip.example")
            .resolve()
            .unwrap();
        assert_eq!(via(&rules, "https://a.example/t").unwrap(), "explicit:3128");
        assert_eq!(via(&rules, "http://a.example/t").unwrap(), "explicit:3128");
        assert_eq!(via(&rules, "https://skip.example/t"), None);
        assert_eq!(rules.targets().count(), 1);
        let none = ProxyConfig::none().resolve().unwrap();
        assert_eq!(none, ProxyRules::default());
        assert_eq!(via(&none, "https://a.example/t"), None);
        // Extra NO_PROXY entries add to those of the variables.
        let rules =
            ProxyConfig::from_vars([("HTTPS_PROXY", "http://p:1"), ("NO_PROXY", "a.example")])
                .no_proxy("b.example")
                .resolve()
                .unwrap();
        assert_eq!(via(&rules, "https://a.example/t"), None);
        assert_eq!(via(&rules, "https://b.example/t"), None);
        assert!(via(&rules, "https://c.example/t").is_some());
    }

    #[test]
    fn proxy_urls_are_read_like_curl() {
        let target = |url: &str| ProxyTarget::parse(url, "a test").unwrap();
        assert_eq!(
            target("http://proxy.example:3128").authority(),
            "proxy.example:3128"
        );
        assert_eq!(
            target("HTTP://Proxy.Example:3128/").authority(),
            "proxy.example:3128"
        );
        assert_eq!(
            target("proxy.example:3128").authority(),
            "proxy.example:3128"
        );
        assert_eq!(target("proxy.example").authority(), "proxy.example:1080");
        assert_eq!(target("http://proxy.example:").port(), 1080);
        assert_eq!(
            target("http://[fd00::1]:8080").authority(),
            "[fd00::1]:8080"
        );
        assert_eq!(target("http://[fd00::1]:8080").host(), "fd00::1");
        assert_eq!(
            target("http://10.0.0.1:8080/ignored?x#y").authority(),
            "10.0.0.1:8080"
        );

        for (url, scheme) in [
            ("https://proxy:443", "https"),
            ("socks5://proxy:1080", "socks5"),
            ("SOCKS5H://u:p@proxy", "socks5h"),
        ] {
            match ProxyTarget::parse(url, "the ALL_PROXY variable") {
                Err(ProxyError::UnsupportedScheme { from, scheme: s }) => {
                    assert_eq!(
                        (from.as_str(), s.as_str()),
                        ("the ALL_PROXY variable", scheme)
                    );
                }
                other => panic!("{url}: {other:?}"),
            }
        }
        for url in [
            "http://",
            "http://:8080",
            "http://proxy:0",
            "http://proxy:99999",
            "http://pro xy:1",
            "://x",
            "http://[nope]:1",
            "http://u:%zz@p:1",
        ] {
            let error = ProxyTarget::parse(url, "a test").unwrap_err();
            assert!(
                matches!(error, ProxyError::InvalidUrl { .. }),
                "{url}: {error:?}"
            );
        }
    }

    #[test]
    fn credentials_become_basic_auth_and_never_show() {
        let target =
            ProxyTarget::parse("http://us%40er:p%3Ass+w0rd@proxy.example:3128", "x").unwrap();
        assert_eq!(target.user(), Some("us@er"));
        assert_eq!(target.password(), Some("p:ss+w0rd"));
        let header = target.authorization().unwrap();
        assert_eq!(
            header.to_str().unwrap(),
            format!("Basic {}", base64(b"us@er:p:ss+w0rd"))
        );
        assert!(header.is_sensitive());
        let config = ProxyConfig::url("http://us%40er:p%3Ass+w0rd@proxy.example:3128").unwrap();
        let vars = ProxyConfig::from_vars([("HTTPS_PROXY", "http://user:hunter2@proxy:1")]);
        let rules = vars.resolve().unwrap();
        for shown in [
            format!("{target:?}"),
            format!("{target}"),
            format!("{config:?}"),
            format!("{vars:?}"),
            format!("{rules:?}"),
        ] {
            for secret in ["p%3Ass", "p:ss", "w0rd", "hunter2", "dXNl"] {
                assert!(!shown.contains(secret), "{shown}");
            }
        }
        assert_eq!(target.to_string(), "http://proxy.example:3128");
        // A user without a password is `user:`.
        let user_only = ProxyTarget::parse("http://user@p:1", "x").unwrap();
        assert_eq!(
            user_only.authorization().unwrap().to_str().unwrap(),
            format!("Basic {}", base64(b"user:"))
        );
        // Errors never hold the URL.
        let error = ProxyConfig::url("socks5://user:hunter2@proxy:1").unwrap_err();
        assert!(!error.to_string().contains("hunter2"), "{error}");
        let error = ProxyConfig::from_vars([("HTTPS_PROXY", "http://user:hunter2@proxy:99999")])
            .resolve()
            .unwrap_err();
        assert!(error.to_string().contains("HTTPS_PROXY"), "{error}");
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }

    #[test]
    fn base64_is_standard() {
        for (input, output) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("Aladdin:open sesame", "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
        ] {
            assert_eq!(base64(input.as_bytes()), output);
        }
    }
}
