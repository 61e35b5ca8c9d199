//! The TLS 1.2 client of the direct transport: Mbed TLS with the claim
//! certificate as client credentials, the server verified against the
//! configured root CA and the endpoint's host name, and the byte stream
//! minimq reads and writes.

use mbedtls::error::codes;
use mbedtls::pk::Pk;
use mbedtls::rng::{CtrDrbg, OsEntropy};
use mbedtls::ssl::config::{AuthMode, Endpoint, NullTerminatedStrList, Preset, Transport};
use mbedtls::ssl::{Config, Context, Version};
use mbedtls::x509::{Certificate, VerifyError};
use nix::poll::{poll, PollFd, PollFlags};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// ALPN protocol name AWS IoT Core requires for MQTT with a client
/// certificate on port 443.
pub const AWS_IOT_MQTT_ALPN: &str = "x-amzn-mqtt-ca";

/// Port on which AWS IoT Core takes MQTT only with [`AWS_IOT_MQTT_ALPN`].
pub const HTTPS_PORT: u16 = 443;

/// Maximum time a read blocks before the caller gets control back, so that
/// signals, deadlines and commands are noticed promptly.
pub const READ_SLICE: Duration = Duration::from_millis(50);

/// Maximum time a write may block. A peer that takes no bytes for this
/// long is treated as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);

const DRBG_PERSONALIZATION: &[u8] = b"fleet-provisioning direct MQTT";

/// Returns the ALPN protocol to offer on `port`: AWS IoT Core serves MQTT
/// with client certificates on 443 only to clients that offer
/// `x-amzn-mqtt-ca`, and needs no ALPN on 8883.
pub fn alpn_for_port(port: u16) -> Option<&'static str> {
    (port == HTTPS_PORT).then_some(AWS_IOT_MQTT_ALPN)
}

/// The files the TLS client authenticates with, read into memory.
pub struct Credentials {
    /// Root CA path, for messages.
    pub root_ca_path: PathBuf,
    /// Root CA certificates, PEM or DER.
    pub root_ca: Vec<u8>,
    /// Claim certificate path, for messages.
    pub claim_cert_path: PathBuf,
    /// Claim certificate chain, PEM or DER.
    pub claim_cert: Vec<u8>,
    /// Claim key path, for messages.
    pub claim_key_path: PathBuf,
    /// Claim private key, PEM or DER; zeroed when dropped.
    pub claim_key: Zeroizing<Vec<u8>>,
}

impl Credentials {
    /// Reads the three files.
    pub fn read(root_ca: &Path, claim_cert: &Path, claim_key: &Path) -> Result<Self, TlsError> {
        let read = |what: &'static str, path: &Path| {
            std::fs::read(path).map_err(|error| TlsError::Credentials {
                what,
                path: path.to_owned(),
                reason: error.to_string(),
            })
        };
        Ok(Credentials {
            root_ca: read("root CA", root_ca)?,
            root_ca_path: root_ca.to_owned(),
            claim_cert: read("claim certificate", claim_cert)?,
            claim_cert_path: claim_cert.to_owned(),
            claim_key: Zeroizing::new(read("claim key", claim_key)?),
            claim_key_path: claim_key.to_owned(),
        })
    }
}

/// Failure to set up or use a TLS session.
#[derive(Debug)]
pub enum TlsError {
    /// A credential file is unreadable or invalid.
    Credentials {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The problem found.
        reason: String,
    },
    /// Mbed TLS could not be set up.
    Setup(mbedtls::Error),
    /// The server's certificate failed verification.
    Verify {
        /// Endpoint host name.
        host: String,
        /// Endpoint port.
        port: u16,
        /// The root CA the chain was checked against.
        root_ca: PathBuf,
        /// Mbed TLS's verification flags.
        flags: VerifyError,
    },
    /// The server ended the handshake with a fatal alert, which usually
    /// means that it rejected the claim certificate.
    Alert {
        /// Endpoint host name.
        host: String,
        /// Endpoint port.
        port: u16,
        /// The alert's description code, when it was read off the socket
        /// after the server closed the connection.
        description: Option<u8>,
    },
    /// The handshake failed for another reason.
    Handshake {
        /// Endpoint host name.
        host: String,
        /// Endpoint port.
        port: u16,
        /// The Mbed TLS error.
        error: mbedtls::Error,
    },
    /// The socket could not be configured.
    Socket {
        /// Endpoint host name.
        host: String,
        /// Endpoint port.
        port: u16,
        /// The socket error.
        source: io::Error,
    },
    /// The handshake did not finish before the deadline.
    TimedOut {
        /// Endpoint host name.
        host: String,
        /// Endpoint port.
        port: u16,
    },
    /// The run is stopping.
    Stopped,
}

impl TlsError {
    /// Returns whether another attempt cannot succeed without a change of
    /// configuration.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            TlsError::Credentials { .. }
                | TlsError::Setup(_)
                | TlsError::Verify { .. }
                | TlsError::Alert { .. }
        )
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Credentials { what, path, reason } => write!(
                f,
                "the {what} {} cannot be used: {reason}; check the file",
                path.display()
            ),
            TlsError::Setup(error) => write!(f, "setting up Mbed TLS failed: {error}"),
            TlsError::Verify {
                host,
                port,
                root_ca,
                flags,
            } => {
                write!(
                    f,
                    "the TLS server certificate of {host}:{port} failed verification"
                )?;
                if flags.contains(VerifyError::CERT_NOT_TRUSTED) {
                    write!(
                        f,
                        "; it does not chain to the root CA {}; check --root-ca-path / \
                         rootCaPath (AWS IoT Core needs Amazon Root CA 1) and any TLS-inspecting proxy",
                        root_ca.display()
                    )?;
                }
                if flags.contains(VerifyError::CERT_CN_MISMATCH) {
                    write!(
                        f,
                        "; it is not issued for the host name {host}; check --endpoint / \
                         iotDataEndpoint (the account's ATS data endpoint, \
                         PREFIX-ats.iot.REGION.amazonaws.com)"
                    )?;
                }
                if flags.intersects(VerifyError::CERT_EXPIRED | VerifyError::CERT_FUTURE) {
                    write!(
                        f,
                        "; it is outside its validity period; check the system clock"
                    )?;
                }
                if !flags.intersects(
                    VerifyError::CERT_NOT_TRUSTED
                        | VerifyError::CERT_CN_MISMATCH
                        | VerifyError::CERT_EXPIRED
                        | VerifyError::CERT_FUTURE,
                ) {
                    write!(f, " (Mbed TLS flags {:#x})", flags.bits())?;
                }
                Ok(())
            }
            TlsError::Alert {
                host,
                port,
                description,
            } => {
                write!(
                    f,
                    "the TLS server {host}:{port} ended the handshake with a fatal alert"
                )?;
                if let Some(code) = description {
                    write!(f, " ({})", alert_name(*code))?;
                }
                write!(
                    f,
                    "; it rejected the claim certificate: check that the claim certificate \
                     and key belong together and that the claim certificate is registered \
                     and active in AWS IoT"
                )
            }
            TlsError::Handshake { host, port, error } => write!(
                f,
                "the TLS handshake with {host}:{port} failed: {error}; check the endpoint, \
                 the port and the network"
            ),
            TlsError::Socket { host, port, source } => {
                write!(
                    f,
                    "configuring the socket to {host}:{port} failed: {source}"
                )
            }
            TlsError::TimedOut { host, port } => write!(
                f,
                "the TLS handshake with {host}:{port} did not finish in time; check the \
                 network and the port"
            ),
            TlsError::Stopped => f.write_str("stopped during the TLS handshake"),
        }
    }
}

impl std::error::Error for TlsError {}

/// Returns the TLS name of alert description `code` (RFC 5246, 7.2).
fn alert_name(code: u8) -> String {
    let name = match code {
        40 => "handshake_failure",
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "certificate_revoked",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        47 => "illegal_parameter",
        48 => "unknown_ca",
        49 => "access_denied",
        51 => "decrypt_error",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        112 => "unrecognized_name",
        116 => "certificate_required",
        120 => "no_application_protocol",
        _ => return format!("alert {code}"),
    };
    name.to_owned()
}

/// The TCP stream under Mbed TLS. A server that rejects the client
/// certificate sends a fatal alert and closes the connection while the
/// client is still writing its handshake flight, so Mbed TLS gets only a
/// failed send. On such a failure this reads the alert the server left in
/// the receive queue, so that the error can say the certificate was
/// rejected.
struct AlertWatch {
    tcp: TcpStream,
    /// `0x100 | description` of a fatal alert found, or 0.
    alert: Arc<AtomicU16>,
}

impl AlertWatch {
    fn look_for_alert(&mut self) {
        // An alert record: type 21, version 3.x, length 2, level, description.
        let mut record = [0u8; 7];
        let mut filled = 0;
        while filled < record.len() {
            let Some(rest) = record.get_mut(filled..) else {
                return;
            };
            match self.tcp.read(rest) {
                Ok(0) | Err(_) => break,
                Ok(count) => filled += count,
            }
        }
        if let [21, 3, _, 0, 2, 2, description] = record {
            if filled == record.len() {
                self.alert
                    .store(0x100 | u16::from(description), Ordering::Relaxed);
            }
        }
    }
}

impl Read for AlertWatch {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tcp.read(buf)
    }
}

impl Write for AlertWatch {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let result = self.tcp.write(buf);
        if let Err(error) = &result {
            if matches!(
                error.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) {
                self.look_for_alert();
            }
        }
        result
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// Mbed TLS parses PEM only with a terminating NUL byte, and DER without.
fn pem_with_nul(bytes: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut copy = Zeroizing::new(Vec::with_capacity(bytes.len() + 1));
    copy.extend_from_slice(bytes);
    if bytes.windows(10).any(|window| window == b"-----BEGIN") {
        copy.push(0);
    }
    copy
}

/// Builds the client configuration: TLS 1.2, server verification required
/// against the root CA, the claim certificate and key, and `alpn` if set.
pub fn client_config(credentials: &Credentials, alpn: Option<&str>) -> Result<Config, TlsError> {
    let invalid = |what: &'static str, path: &Path, error: mbedtls::Error| TlsError::Credentials {
        what,
        path: path.to_owned(),
        reason: error.to_string(),
    };
    let root_ca = Certificate::from_pem_multiple(&pem_with_nul(&credentials.root_ca))
        .map_err(|error| invalid("root CA", &credentials.root_ca_path, error))?;
    let claim_cert = Certificate::from_pem_multiple(&pem_with_nul(&credentials.claim_cert))
        .map_err(|error| invalid("claim certificate", &credentials.claim_cert_path, error))?;
    let claim_key = Pk::from_private_key(&pem_with_nul(&credentials.claim_key), None)
        .map_err(|error| invalid("claim key", &credentials.claim_key_path, error))?;

    let entropy = Arc::new(OsEntropy::new());
    let rng = CtrDrbg::new(entropy, Some(DRBG_PERSONALIZATION)).map_err(TlsError::Setup)?;
    let mut config = Config::new(Endpoint::Client, Transport::Stream, Preset::Default);
    config.set_rng(Arc::new(rng));
    config.set_authmode(AuthMode::Required);
    config
        .set_min_version(Version::Tls1_2)
        .map_err(TlsError::Setup)?;
    config.set_ca_list(Arc::new(root_ca), None);
    config
        .push_cert(Arc::new(claim_cert), Arc::new(claim_key))
        .map_err(TlsError::Setup)?;
    if let Some(protocol) = alpn {
        let protocols = NullTerminatedStrList::new(&[protocol]).map_err(TlsError::Setup)?;
        config
            .set_alpn_protocols(Arc::new(protocols))
            .map_err(TlsError::Setup)?;
    }
    Ok(config)
}

/// A TLS session over TCP, read in slices of [`READ_SLICE`].
pub struct TlsStream {
    context: Context<AlertWatch>,
    /// Read end of a socket pair: a byte on it ends a read wait early, so
    /// that a waiting reader notices a new command at once.
    wake: Option<Arc<UnixStream>>,
}

/// Result of a read wait.
enum Readiness {
    /// Bytes are buffered or the socket is readable (or failed).
    Data,
    /// The wake socket received a byte.
    Woken,
    /// The slice passed with nothing to read.
    Idle,
}

impl TlsStream {
    /// Runs the TLS handshake with `host` (the SNI and the name the server
    /// certificate must carry) over `tcp` until `deadline`, checking `stop`
    /// between slices.
    pub fn handshake(
        config: Arc<Config>,
        tcp: TcpStream,
        host: &str,
        port: u16,
        root_ca: &Path,
        deadline: Instant,
        stop: &AtomicBool,
    ) -> Result<TlsStream, TlsError> {
        let socket_error = |source: io::Error| TlsError::Socket {
            host: host.to_owned(),
            port,
            source,
        };
        tcp.set_read_timeout(Some(READ_SLICE))
            .map_err(socket_error)?;
        tcp.set_write_timeout(Some(WRITE_TIMEOUT))
            .map_err(socket_error)?;
        tcp.set_nodelay(true).map_err(socket_error)?;

        let server_alert = Arc::new(AtomicU16::new(0));
        let watched = AlertWatch {
            tcp,
            alert: Arc::clone(&server_alert),
        };
        let mut context = Context::new(config);
        let mut result = context.establish(watched, Some(host));
        loop {
            let error = match result {
                Ok(()) => {
                    return Ok(TlsStream {
                        context,
                        wake: None,
                    })
                }
                Err(error) => error,
            };
            let want_more = matches!(
                error.high_level(),
                Some(codes::SslWantRead | codes::SslWantWrite)
            );
            if !want_more {
                let alert = match server_alert.load(Ordering::Relaxed) {
                    0 => None,
                    value => u8::try_from(value & 0xff).ok(),
                };
                return Err(classify_handshake_error(
                    &context, alert, error, host, port, root_ca,
                ));
            }
            if stop.load(Ordering::Relaxed) {
                return Err(TlsError::Stopped);
            }
            if Instant::now() >= deadline {
                return Err(TlsError::TimedOut {
                    host: host.to_owned(),
                    port,
                });
            }
            result = context.handshake();
        }
    }

    /// Makes a byte on `wake` end a read wait early.
    pub fn set_wake(&mut self, wake: Arc<UnixStream>) {
        self.wake = Some(wake);
    }

    /// Waits up to [`READ_SLICE`] for TLS bytes or a wake-up.
    fn wait_readable(&mut self) -> Readiness {
        if self.context.bytes_available() > 0 {
            return Readiness::Data;
        }
        let Some(watch) = self.context.io() else {
            return Readiness::Data;
        };
        let mut fds = vec![PollFd::new(watch.tcp.as_fd(), PollFlags::POLLIN)];
        if let Some(wake) = &self.wake {
            fds.push(PollFd::new(wake.as_fd(), PollFlags::POLLIN));
        }
        let slice_ms = u16::try_from(READ_SLICE.as_millis()).unwrap_or(u16::MAX);
        match poll(&mut fds, slice_ms) {
            Ok(0) => Readiness::Idle,
            Ok(_) => {
                let woken = fds.get(1).and_then(PollFd::any).unwrap_or(false);
                if woken {
                    if let Some(wake) = &self.wake {
                        drain(wake);
                    }
                    Readiness::Woken
                } else {
                    Readiness::Data
                }
            }
            Err(nix::errno::Errno::EINTR) => Readiness::Idle,
            // The read that follows reports the socket's error.
            Err(_) => Readiness::Data,
        }
    }

    /// Returns the negotiated ALPN protocol, if any.
    pub fn alpn_protocol(&self) -> Option<String> {
        self.context
            .get_alpn_protocol()
            .ok()
            .flatten()
            .map(str::to_owned)
    }

    /// Returns the negotiated cipher suite's IANA number, if known.
    pub fn cipher_suite(&self) -> Option<u16> {
        self.context.ciphersuite().ok()
    }
}

fn classify_handshake_error(
    context: &Context<AlertWatch>,
    server_alert: Option<u8>,
    error: mbedtls::Error,
    host: &str,
    port: u16,
    root_ca: &Path,
) -> TlsError {
    let verify_flags = context.verify_result().err();
    match (error.high_level(), verify_flags) {
        (Some(codes::X509CertVerifyFailed), Some(flags)) => TlsError::Verify {
            host: host.to_owned(),
            port,
            root_ca: root_ca.to_owned(),
            flags,
        },
        (Some(codes::SslFatalAlertMessage), _) => TlsError::Alert {
            host: host.to_owned(),
            port,
            description: None,
        },
        _ if server_alert.is_some() => TlsError::Alert {
            host: host.to_owned(),
            port,
            description: server_alert,
        },
        _ => TlsError::Handshake {
            host: host.to_owned(),
            port,
            error,
        },
    }
}

impl embedded_io_async::ErrorType for TlsStream {
    type Error = io::Error;
}

impl embedded_io_async::Read for TlsStream {
    /// Reads what arrived. A wake-up, or no data within [`READ_SLICE`],
    /// leaves the future pending (it wakes itself), so the executor regains
    /// control.
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, io::Error> {
        std::future::poll_fn(|cx| {
            if !matches!(self.wait_readable(), Readiness::Data) {
                cx.waker().wake_by_ref();
                return std::task::Poll::Pending;
            }
            self.read_now(cx, buf)
        })
        .await
    }
}

impl TlsStream {
    fn read_now(
        &mut self,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<Result<usize, io::Error>> {
        match self.context.read(buf) {
            Ok(count) => std::task::Poll::Ready(Ok(count)),
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            }
            Err(error) => std::task::Poll::Ready(Err(error)),
        }
    }
}

/// Reads every byte waiting on the nonblocking `wake` socket.
fn drain(mut wake: &UnixStream) {
    let mut bytes = [0u8; 64];
    while matches!(wake.read(&mut bytes), Ok(count) if count > 0) {}
}

impl embedded_io_async::Write for TlsStream {
    /// Writes one TLS record, bounded by the socket's write timeout. A
    /// timed-out write is an error, because Mbed TLS would then need a
    /// second call with the same bytes, which a cancelled future cannot
    /// promise.
    async fn write(&mut self, buf: &[u8]) -> Result<usize, io::Error> {
        loop {
            match self.context.write(buf) {
                Ok(count) => return Ok(count),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the peer took no data for {WRITE_TIMEOUT:?}"),
                    ))
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn flush(&mut self) -> Result<(), io::Error> {
        self.context.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::process::Command;
    use std::thread;

    /// Writes a self-signed EC certificate and its key with openssl and
    /// returns credentials that use it as root CA and claim certificate.
    fn self_signed_credentials(dir: &Path) -> Credentials {
        let output = Command::new("openssl")
            .current_dir(dir)
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "key.pem",
                "-out",
                "cert.pem",
                "-subj",
                "/CN=alpn-test",
                "-days",
                "1",
            ])
            .output()
            .expect("openssl runs");
        assert!(
            output.status.success(),
            "openssl req failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let cert = dir.join("cert.pem");
        Credentials::read(&cert, &cert, &dir.join("key.pem")).unwrap()
    }

    /// Returns the protocol names of the ALPN extension of a ClientHello
    /// record, or `None` when it has no such extension.
    fn offered_alpn(record: &[u8]) -> Option<Vec<String>> {
        let u16_at = |at: usize| usize::from(u16::from_be_bytes([record[at], record[at + 1]]));
        assert_eq!(record[0], 22, "not a handshake record");
        assert_eq!(record[5], 1, "not a ClientHello");
        // Record header 5, handshake header 4, version 2, random 32.
        let mut at = 5 + 4 + 2 + 32;
        at += 1 + usize::from(record[at]); // session id
        at += 2 + u16_at(at); // cipher suites
        at += 1 + usize::from(record[at]); // compression methods
        let end = at + 2 + u16_at(at);
        at += 2;
        while at < end {
            let (kind, len) = (u16_at(at), u16_at(at + 2));
            let data = &record[at + 4..at + 4 + len];
            if kind == 16 {
                let mut names = Vec::new();
                let mut index = 2;
                while index < data.len() {
                    let name_len = usize::from(data[index]);
                    names.push(
                        String::from_utf8(data[index + 1..index + 1 + name_len].to_vec()).unwrap(),
                    );
                    index += 1 + name_len;
                }
                return Some(names);
            }
            at += 4 + len;
        }
        None
    }

    /// Starts a handshake as the direct transport does for `port` against
    /// a listener that only records the ClientHello, and returns that.
    fn client_hello_for_port(port: u16) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let credentials = self_signed_credentials(dir.path());
        let config = Arc::new(client_config(&credentials, alpn_for_port(port)).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut header = [0u8; 5];
            stream.read_exact(&mut header).unwrap();
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            let mut body = vec![0u8; len];
            stream.read_exact(&mut body).unwrap();
            [header.to_vec(), body].concat()
        });
        let tcp = TcpStream::connect(address).unwrap();
        let stop = AtomicBool::new(false);
        let result = TlsStream::handshake(
            config,
            tcp,
            "example-ats.iot.eu-west-1.amazonaws.com",
            port,
            &credentials.root_ca_path,
            Instant::now() + Duration::from_secs(5),
            &stop,
        );
        assert!(
            result.is_err(),
            "the recording server cannot finish a handshake"
        );
        server.join().unwrap()
    }

    #[test]
    fn client_hello_offers_alpn_on_443() {
        let hello = client_hello_for_port(443);
        assert_eq!(
            offered_alpn(&hello),
            Some(vec![AWS_IOT_MQTT_ALPN.to_owned()])
        );
    }

    #[test]
    fn client_hello_has_no_alpn_on_8883() {
        let hello = client_hello_for_port(8883);
        assert_eq!(offered_alpn(&hello), None);
    }

    #[test]
    fn client_hello_names_endpoint_in_sni() {
        let hello = client_hello_for_port(8883);
        let name = b"example-ats.iot.eu-west-1.amazonaws.com";
        assert!(
            hello.windows(name.len()).any(|window| window == name),
            "the ClientHello carries no SNI with the endpoint"
        );
    }

    #[test]
    fn alpn_decision_follows_port() {
        assert_eq!(alpn_for_port(443), Some(AWS_IOT_MQTT_ALPN));
        assert_eq!(alpn_for_port(8883), None);
        assert_eq!(alpn_for_port(8443), None);
    }

    #[test]
    fn invalid_claim_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut credentials = self_signed_credentials(dir.path());
        credentials.claim_key = Zeroizing::new(
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_vec(),
        );
        let error = client_config(&credentials, None).err().unwrap();
        let text = error.to_string();
        assert!(text.contains("claim key"), "{text}");
        assert!(text.contains("key.pem"), "{text}");
        assert!(!text.contains("AAAA"), "{text}");
        assert!(error.is_permanent());
    }

    #[test]
    fn alert_names_are_tls_names() {
        assert_eq!(alert_name(48), "unknown_ca");
        assert_eq!(alert_name(42), "bad_certificate");
        assert_eq!(alert_name(200), "alert 200");
    }
}
