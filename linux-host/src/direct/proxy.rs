//! HTTP CONNECT tunnels through the proxy named in `https_proxy` or
//! `HTTPS_PROXY`, skipped for hosts listed in `no_proxy` or `NO_PROXY`, as
//! Greengrass Lite's iotcored honours them.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;

/// Maximum length of the proxy's response header, in bytes.
const MAX_RESPONSE_HEADER_LEN: usize = 8192;

/// Port of a proxy URL that names none, as curl and iotcored assume.
const DEFAULT_PROXY_PORT: u16 = 80;

/// An HTTP proxy that tunnels with CONNECT.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    /// Host name or IP address of the proxy.
    pub host: String,
    /// TCP port of the proxy.
    pub port: u16,
    /// `Proxy-Authorization` value from the URL's user and password.
    authorization: Option<String>,
}

// The authorization contains a password, so it is never printed.
impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("host", &self.host)
            .field("port", &self.port)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<hidden>"),
            )
            .finish()
    }
}

impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Failure to use a proxy.
#[derive(Debug)]
pub enum ProxyError {
    /// The proxy URL in the environment is invalid.
    InvalidUrl {
        /// The environment variable.
        variable: &'static str,
        /// The problem found.
        reason: String,
    },
    /// Writing to or reading from the proxy failed.
    Io {
        /// The proxy.
        proxy: String,
        /// The socket error.
        source: io::Error,
    },
    /// The proxy responded to CONNECT with a status other than 2xx.
    Refused {
        /// The proxy.
        proxy: String,
        /// The response's status line.
        status_line: String,
    },
    /// The proxy's response to CONNECT is not HTTP.
    InvalidResponse {
        /// The proxy.
        proxy: String,
    },
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::InvalidUrl { variable, reason } => write!(
                f,
                "the proxy URL in {variable} is invalid: {reason}; use http://HOST:PORT"
            ),
            ProxyError::Io { proxy, source } => write!(
                f,
                "talking to the HTTP proxy {proxy} failed: {source}; check https_proxy"
            ),
            ProxyError::Refused { proxy, status_line } => write!(
                f,
                "the HTTP proxy {proxy} refused the CONNECT tunnel ({status_line}); check that \
                 it allows CONNECT to the endpoint's port and any proxy credentials"
            ),
            ProxyError::InvalidResponse { proxy } => write!(
                f,
                "the HTTP proxy {proxy} sent an invalid response to CONNECT; check that \
                 https_proxy names an HTTP proxy"
            ),
        }
    }
}

impl std::error::Error for ProxyError {}

/// Returns the proxy to reach `host` through: `https_proxy` (or
/// `HTTPS_PROXY`) unless `no_proxy` (or `NO_PROXY`) lists `host`.
pub fn from_env(host: &str) -> Result<Option<Proxy>, ProxyError> {
    let lookup = |lower: &'static str, upper: &'static str| {
        [lower, upper].into_iter().find_map(|name| {
            std::env::var(name)
                .ok()
                .filter(|value| !value.trim().is_empty())
                .map(|value| (name, value))
        })
    };
    let Some((variable, url)) = lookup("https_proxy", "HTTPS_PROXY") else {
        return Ok(None);
    };
    if let Some((_, no_proxy)) = lookup("no_proxy", "NO_PROXY") {
        if bypasses_proxy(&no_proxy, host) {
            return Ok(None);
        }
    }
    parse_proxy_url(&url)
        .map(Some)
        .map_err(|reason| ProxyError::InvalidUrl { variable, reason })
}

/// Returns whether the `no_proxy` list `no_proxy` names `host`: `*`, the
/// host itself, or a domain it is in (`example.com` and `.example.com` both
/// match `a.example.com`). Ports in the list are ignored.
pub fn bypasses_proxy(no_proxy: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    no_proxy.split(',').any(|entry| {
        let entry = entry.trim().to_ascii_lowercase();
        if entry == "*" {
            return true;
        }
        let entry = strip_port(&entry);
        let domain = entry.trim_start_matches("*.").trim_start_matches('.');
        !domain.is_empty()
            && (host == domain
                || host
                    .strip_suffix(domain)
                    .is_some_and(|rest| rest.ends_with('.')))
    })
}

/// Removes a `:port` suffix from a host, keeping IPv6 literals whole.
fn strip_port(entry: &str) -> &str {
    if let Some(rest) = entry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match entry.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => entry,
    }
}

/// Parses `http://[USER[:PASSWORD]@]HOST[:PORT][/]`; the scheme may be
/// left out.
pub fn parse_proxy_url(url: &str) -> Result<Proxy, String> {
    let url = url.trim();
    let rest = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "the scheme {scheme:?} is not supported; only http:// proxies are"
            ))
        }
        None => url,
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let (userinfo, host_port) = match authority.rsplit_once('@') {
        Some((userinfo, host_port)) => (Some(userinfo), host_port),
        None => (None, authority),
    };
    let (host, port) = split_host_port(host_port)?;
    if host.is_empty() {
        return Err("the host is missing".to_owned());
    }
    let authorization = match userinfo {
        Some(userinfo) => {
            let decoded = percent_decode(userinfo)?;
            Some(format!("Basic {}", base64_encode(&decoded)))
        }
        None => None,
    };
    Ok(Proxy {
        host: host.to_owned(),
        port,
        authorization,
    })
}

fn split_host_port(host_port: &str) -> Result<(&str, u16), String> {
    let (host, port) = if let Some(rest) = host_port.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or("an IPv6 address misses its closing bracket")?;
        (host, after.strip_prefix(':'))
    } else {
        match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    let port = match port {
        Some(text) => match text.parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => return Err(format!("the port {text:?} is not a number from 1 to 65535")),
        },
        None => DEFAULT_PROXY_PORT,
    };
    Ok((host, port))
}

fn percent_decode(text: &str) -> Result<Vec<u8>, String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        if byte == b'%' {
            let hex = bytes
                .get(index + 1..index + 3)
                .and_then(|pair| std::str::from_utf8(pair).ok())
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or("the user name or password has an invalid %-escape")?;
            decoded.push(hex);
            index += 3;
        } else {
            decoded.push(byte);
            index += 1;
        }
    }
    Ok(decoded)
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b0 = u32::from(chunk.first().copied().unwrap_or(0));
        let b1 = u32::from(chunk.get(1).copied().unwrap_or(0));
        let b2 = u32::from(chunk.get(2).copied().unwrap_or(0));
        let triple = (b0 << 16) | (b1 << 8) | b2;
        for (position, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if position <= chunk.len() {
                let index = usize::try_from((triple >> shift) & 0x3f).unwrap_or(0);
                out.push(char::from(ALPHABET.get(index).copied().unwrap_or(b'=')));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Asks `proxy`, connected as `stream`, for a tunnel to `host:port` and
/// returns once the proxy responded with 2xx; the stream then carries the
/// tunnel. The stream's read timeout bounds the wait.
pub fn open_tunnel(
    stream: &mut TcpStream,
    proxy: &Proxy,
    host: &str,
    port: u16,
) -> Result<(), ProxyError> {
    let io_error = |source| ProxyError::Io {
        proxy: proxy.to_string(),
        source,
    };
    let target = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(authorization) = &proxy.authorization {
        request.push_str("Proxy-Authorization: ");
        request.push_str(authorization);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).map_err(io_error)?;

    // Read byte by byte up to the blank line: the TLS bytes that follow
    // belong to the tunnel, not to this header.
    let mut header = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !header.ends_with(b"\r\n\r\n") {
        if header.len() >= MAX_RESPONSE_HEADER_LEN {
            return Err(ProxyError::InvalidResponse {
                proxy: proxy.to_string(),
            });
        }
        match stream.read(&mut byte) {
            Ok(0) => {
                return Err(io_error(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the proxy closed the connection",
                )))
            }
            Ok(_) => header.extend_from_slice(&byte),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(io_error(error)),
        }
    }
    let status_line = header
        .split(|&b| b == b'\n')
        .next()
        .map(|line| String::from_utf8_lossy(line).trim().to_owned())
        .unwrap_or_default();
    let mut words = status_line.split_whitespace();
    let version = words.next().unwrap_or_default();
    let status = words.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") || status.len() != 3 {
        return Err(ProxyError::InvalidResponse {
            proxy: proxy.to_string(),
        });
    }
    if !status.starts_with('2') {
        return Err(ProxyError::Refused {
            proxy: proxy.to_string(),
            status_line,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    #[test]
    fn proxy_url_forms_parse() {
        let proxy = parse_proxy_url("http://proxy.local:3128").unwrap();
        assert_eq!((proxy.host.as_str(), proxy.port), ("proxy.local", 3128));
        assert_eq!(proxy.authorization, None);

        let proxy = parse_proxy_url("proxy.local:8080/").unwrap();
        assert_eq!((proxy.host.as_str(), proxy.port), ("proxy.local", 8080));

        let proxy = parse_proxy_url("http://proxy.local").unwrap();
        assert_eq!(proxy.port, 80);

        let proxy = parse_proxy_url("http://[::1]:3128").unwrap();
        assert_eq!((proxy.host.as_str(), proxy.port), ("::1", 3128));
        assert_eq!(proxy.to_string(), "[::1]:3128");

        let proxy = parse_proxy_url("http://user:p%40ss@proxy.local:3128").unwrap();
        assert_eq!(proxy.authorization.as_deref(), Some("Basic dXNlcjpwQHNz"));
    }

    #[test]
    fn invalid_proxy_urls_are_rejected() {
        assert!(parse_proxy_url("https://proxy.local:3128").is_err());
        assert!(parse_proxy_url("socks5://proxy.local:1080").is_err());
        assert!(parse_proxy_url("http://proxy.local:99999").is_err());
        assert!(parse_proxy_url("http://:3128").is_err());
        assert!(parse_proxy_url("http://a:%zz@proxy.local").is_err());
    }

    #[test]
    fn proxy_debug_hides_password() {
        let proxy = parse_proxy_url("http://user:secret@proxy.local:3128").unwrap();
        let text = format!("{proxy:?} {proxy}");
        assert!(!text.contains("secret"), "{text}");
        assert!(!text.contains("dXNlcjpzZWNyZXQ"), "{text}");
    }

    #[test]
    fn no_proxy_matching() {
        let list = "localhost, .internal.example,example.org:8883";
        assert!(bypasses_proxy(list, "localhost"));
        assert!(bypasses_proxy(list, "a.internal.example"));
        assert!(bypasses_proxy(list, "internal.example"));
        assert!(bypasses_proxy(list, "example.org"));
        assert!(bypasses_proxy(list, "iot.EXAMPLE.org"));
        assert!(!bypasses_proxy(list, "notexample.org"));
        assert!(!bypasses_proxy(
            list,
            "a1b2-ats.iot.eu-west-1.amazonaws.com"
        ));
        assert!(bypasses_proxy("*", "anything.example"));
        assert!(!bypasses_proxy("", "anything.example"));
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(input.as_bytes()), expected, "input {input:?}");
        }
    }

    fn proxy_answering(answer: &'static str) -> (Proxy, thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") {
                stream.read_exact(&mut byte).unwrap();
                request.push(byte[0]);
            }
            stream.write_all(answer.as_bytes()).unwrap();
            String::from_utf8(request).unwrap()
        });
        let proxy = parse_proxy_url(&format!("http://u:p@127.0.0.1:{port}")).unwrap();
        (proxy, server)
    }

    #[test]
    fn tunnel_sends_connect_and_accepts_200() {
        let (proxy, server) =
            proxy_answering("HTTP/1.1 200 Connection established\r\n\r\nTLS-BYTES");
        let mut stream = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        open_tunnel(&mut stream, &proxy, "iot.example", 8883).unwrap();
        let request = server.join().unwrap();
        assert!(
            request.starts_with("CONNECT iot.example:8883 HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains("Host: iot.example:8883\r\n"), "{request}");
        assert!(
            request.contains("Proxy-Authorization: Basic dTpw\r\n"),
            "{request}"
        );
        // The bytes after the header stay in the stream for TLS.
        let mut rest = [0u8; 9];
        stream.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"TLS-BYTES");
    }

    #[test]
    fn tunnel_refusal_names_status() {
        let (proxy, server) = proxy_answering("HTTP/1.1 403 Forbidden\r\n\r\n");
        let mut stream = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        let error = open_tunnel(&mut stream, &proxy, "iot.example", 443).unwrap_err();
        server.join().unwrap();
        let text = error.to_string();
        assert!(text.contains("403 Forbidden"), "{text}");
        assert!(matches!(error, ProxyError::Refused { .. }));
    }

    #[test]
    fn tunnel_rejects_non_http_answer() {
        let (proxy, server) = proxy_answering("SSH-2.0-OpenSSH\r\n\r\n");
        let mut stream = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        let error = open_tunnel(&mut stream, &proxy, "iot.example", 443).unwrap_err();
        server.join().unwrap();
        assert!(matches!(error, ProxyError::InvalidResponse { .. }));
    }
}
