//! Stand-in for Greengrass Lite's `iotcored`: one MQTT 5 connection over
//! mutual TLS, shared by the clients of the `aws_iot_mqtt` core-bus
//! interface (or the interface named with `-n`).
//!
//! It takes the C daemon's flags and serves its core-bus methods with the
//! same frames: `publish`, `subscribe` (with virtual subscriptions, which
//! send no MQTT SUBSCRIBE but still receive every matching PUBLISH) and
//! `connection_status`. Unlike the C daemon it reads nothing from
//! `ggconfigd`: every connection setting comes from the command line, the
//! broker port from `IOTCORED_STANDIN_PORT`, and it connects to loopback
//! addresses only.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use clap::Parser;
use fleet_provisioning_core::corebus::{self, GgError, RequestType, MAX_INTERFACE_NAME_LEN};
use fleet_provisioning_core::eventstream::{self, MAX_FRAME_LEN, PRELUDE_LEN};
use fleet_provisioning_core::object::{Map as ObjectMap, Object};
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, StateError};
use rumqttc::{TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{AlertDescription, ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, watch};

/// Environment variable with the folder of the core-bus sockets.
pub const SOCKET_DIR_ENV: &str = "GG_CORE_BUS_SOCKET_DIR";
/// Socket folder used when [`SOCKET_DIR_ENV`] is not set.
pub const DEFAULT_SOCKET_DIR: &str = "/run/greengrass";
/// Environment variable with the broker's TCP port.
pub const PORT_ENV: &str = "IOTCORED_STANDIN_PORT";
/// Broker port used when [`PORT_ENV`] is not set; the C iotcored always
/// uses it.
pub const DEFAULT_PORT: u16 = 8883;
/// Environment variable that makes the stand-in give up (exit status 1)
/// after this many connection attempts in a row failed. Unset means retry
/// forever, as the C iotcored does.
pub const CONNECT_ATTEMPTS_ENV: &str = "IOTCORED_STANDIN_CONNECT_ATTEMPTS";

/// Maximum packet size announced in CONNECT, the C iotcored's value.
const MAX_PACKET_SIZE: u32 = 5_000;
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Time for TCP, TLS and CONNACK together, in seconds.
const CONNECT_TIMEOUT_SECS: u64 = 10;
/// Reconnect backoff; shorter than the C daemon's 5 s to 5 min so that
/// tests recover quickly from a broker restart.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Incoming PUBLISHes buffered per subscriber before it misses some.
const INCOMING_CAPACITY: usize = 256;

/// Command line of the C iotcored. Every flag takes its value as
/// `-n NAME`, `-nNAME`, `--name NAME` or `--name=NAME`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "iotcored",
    about = "Stand-in for Greengrass Lite's iotcored: serves the aws_iot_mqtt core-bus interface over one MQTT 5 connection with mutual TLS"
)]
pub struct Args {
    /// Core-bus interface name, which is also the socket's file name.
    #[arg(short = 'n', long = "name", default_value = "aws_iot_mqtt")]
    pub name: String,
    /// Broker host name; it must resolve to loopback addresses and match
    /// the server certificate.
    #[arg(short = 'e', long = "endpoint")]
    pub endpoint: String,
    /// MQTT client identifier.
    #[arg(short = 'i', long = "id")]
    pub client_id: String,
    /// PEM file with the CA certificates that verify the broker.
    #[arg(short = 'r', long = "rootca")]
    pub root_ca: PathBuf,
    /// PEM file with the client certificate chain.
    #[arg(short = 'c', long = "cert")]
    pub cert: PathBuf,
    /// PEM file with the client private key.
    #[arg(short = 'k', long = "key")]
    pub key: PathBuf,
}

/// Why the stand-in could not start or had to stop.
#[derive(Debug)]
pub enum IotcoredError {
    /// `-n` is empty, too long or contains a `/`.
    InvalidName(String),
    /// A PEM file could not be read or contains no usable item.
    Pem {
        /// The file.
        path: PathBuf,
        /// What the file must contain.
        expected: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// rustls rejected the certificates or key.
    Tls(rustls::Error),
    /// The endpoint did not resolve.
    Resolve {
        /// Host and port.
        address: String,
        /// The resolver's error.
        error: io::Error,
    },
    /// The endpoint resolved to an address off this machine.
    NotLoopback {
        /// Host and port.
        address: String,
        /// What it resolved to.
        resolved: Vec<SocketAddr>,
    },
    /// `IOTCORED_STANDIN_PORT` or `IOTCORED_STANDIN_CONNECT_ATTEMPTS` is not
    /// a number.
    InvalidEnv {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
    },
    /// The core-bus socket could not be created.
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The system error.
        error: io::Error,
    },
    /// The broker rejected this client's credentials.
    AuthenticationFailed(String),
    /// Every allowed connection attempt failed.
    Unreachable {
        /// Host and port.
        address: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last_error: String,
    },
    /// The async runtime or signal handlers could not be set up.
    Runtime(io::Error),
}

impl fmt::Display for IotcoredError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IotcoredError::InvalidName(name) => write!(
                f,
                "invalid interface name {name:?}: use 1 to {MAX_INTERFACE_NAME_LEN} bytes without '/'"
            ),
            IotcoredError::Pem { path, expected, reason } => write!(
                f,
                "cannot load {expected} from {}: {reason}; pass a PEM file",
                path.display()
            ),
            IotcoredError::Tls(error) => {
                write!(f, "invalid TLS credentials: {error}; check -r, -c and -k")
            }
            IotcoredError::Resolve { address, error } => {
                write!(f, "cannot resolve endpoint {address}: {error}; use -e localhost")
            }
            IotcoredError::NotLoopback { address, resolved } => write!(
                f,
                "endpoint {address} resolves to {resolved:?}, which is not only loopback; \
                 this stand-in connects to loopback brokers only (use -e localhost)"
            ),
            IotcoredError::InvalidEnv { name, value } => {
                write!(f, "invalid {name}={value:?}: expected a positive integer")
            }
            IotcoredError::Socket { path, error } => write!(
                f,
                "cannot listen on {}: {error}; check {SOCKET_DIR_ENV} and that the folder is writable",
                path.display()
            ),
            IotcoredError::AuthenticationFailed(reason) => write!(
                f,
                "MQTT connection rejected, authentication failed: {reason}; check the client certificate, key and root CA"
            ),
            IotcoredError::Unreachable { address, attempts, last_error } => write!(
                f,
                "broker at {address} unreachable after {attempts} connection attempts, last error: {last_error}; \
                 start the broker or set {PORT_ENV}"
            ),
            IotcoredError::Runtime(error) => write!(f, "cannot start the async runtime: {error}"),
        }
    }
}

impl std::error::Error for IotcoredError {}

/// Settings taken from the environment.
#[derive(Debug, Clone)]
pub struct Environment {
    /// Folder of the core-bus sockets.
    pub socket_dir: PathBuf,
    /// Broker TCP port.
    pub port: u16,
    /// Consecutive failed connection attempts before giving up; `None`
    /// retries forever.
    pub max_connect_attempts: Option<u32>,
}

impl Environment {
    /// Reads [`SOCKET_DIR_ENV`], [`PORT_ENV`] and [`CONNECT_ATTEMPTS_ENV`].
    pub fn from_env() -> Result<Environment, IotcoredError> {
        let socket_dir = std::env::var_os(SOCKET_DIR_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET_DIR));
        let port = match std::env::var(PORT_ENV) {
            Ok(value) => parse_env(PORT_ENV, &value)?,
            Err(_) => DEFAULT_PORT,
        };
        let max_connect_attempts = match std::env::var(CONNECT_ATTEMPTS_ENV) {
            Ok(value) => Some(parse_env(CONNECT_ATTEMPTS_ENV, &value)?),
            Err(_) => None,
        };
        Ok(Environment {
            socket_dir,
            port,
            max_connect_attempts,
        })
    }
}

fn parse_env<T: std::str::FromStr + PartialEq + From<u8>>(
    name: &'static str,
    value: &str,
) -> Result<T, IotcoredError> {
    match value.trim().parse::<T>() {
        Ok(number) if number != T::from(0) => Ok(number),
        _ => Err(IotcoredError::InvalidEnv {
            name,
            value: value.to_owned(),
        }),
    }
}

/// Runs the stand-in until SIGTERM or SIGINT (`Ok`) or a fatal error.
/// Removes its socket either way.
pub fn run(args: Args, env: Environment) -> Result<(), IotcoredError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(IotcoredError::Runtime)?;
    runtime.block_on(run_async(args, env))
}

async fn run_async(args: Args, env: Environment) -> Result<(), IotcoredError> {
    validate_name(&args.name)?;
    let tls = load_tls_config(&args)?;
    let address = format!("{}:{}", args.endpoint, env.port);
    check_loopback(&address)?;

    // Handlers go in before the socket appears, because a client may send
    // SIGTERM as soon as the socket exists.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(IotcoredError::Runtime)?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(IotcoredError::Runtime)?;
    let socket_path = env.socket_dir.join(&args.name);
    let listener = bind_socket(&socket_path)?;

    let mut options = MqttOptions::new(args.client_id.clone(), args.endpoint.clone(), env.port);
    options
        .set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(tls))))
        .set_clean_start(true)
        .set_keep_alive(KEEP_ALIVE)
        .set_connection_timeout(CONNECT_TIMEOUT_SECS)
        .set_max_packet_size(Some(MAX_PACKET_SIZE));
    let (client, eventloop) = AsyncClient::new(options, 64);
    let (connected, _) = watch::channel(false);
    let (incoming, _) = broadcast::channel(INCOMING_CAPACITY);
    let daemon = Arc::new(Daemon {
        client,
        connected,
        incoming,
        mqtt_filters: Mutex::new(HashMap::new()),
    });
    eprintln!(
        "iotcored stand-in: serving {} on {}, connecting to {address} as {:?}",
        args.name,
        socket_path.display(),
        args.client_id
    );

    let (fatal_sender, mut fatal_receiver) = mpsc::channel(1);
    tokio::spawn(run_mqtt(
        eventloop,
        Arc::clone(&daemon),
        address,
        env.max_connect_attempts,
        fatal_sender,
    ));
    tokio::spawn(accept_loop(listener, Arc::clone(&daemon)));

    let result = tokio::select! {
        _ = terminate.recv() => Ok(()),
        _ = interrupt.recv() => Ok(()),
        fatal = fatal_receiver.recv() => match fatal {
            Some(error) => Err(error),
            None => Ok(()),
        },
    };
    let _ = std::fs::remove_file(&socket_path);
    eprintln!(
        "iotcored stand-in: stopped, removed {}",
        socket_path.display()
    );
    result
}

fn validate_name(name: &str) -> Result<(), IotcoredError> {
    if name.is_empty() || name.len() > MAX_INTERFACE_NAME_LEN || name.contains('/') {
        return Err(IotcoredError::InvalidName(name.to_owned()));
    }
    Ok(())
}

fn pem_error(path: &Path, expected: &'static str, reason: impl fmt::Display) -> IotcoredError {
    IotcoredError::Pem {
        path: path.to_owned(),
        expected,
        reason: reason.to_string(),
    }
}

fn load_certificates(
    path: &Path,
    expected: &'static str,
) -> Result<Vec<CertificateDer<'static>>, IotcoredError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|error| pem_error(path, expected, error))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| pem_error(path, expected, error))?;
    if certificates.is_empty() {
        return Err(pem_error(path, expected, "no CERTIFICATE block found"));
    }
    Ok(certificates)
}

/// Builds the rustls client configuration: ring provider, TLS 1.2 and 1.3,
/// the broker verified against the root CA, and the client certificate.
fn load_tls_config(args: &Args) -> Result<ClientConfig, IotcoredError> {
    let mut roots = RootCertStore::empty();
    for certificate in load_certificates(&args.root_ca, "root CA certificates")? {
        roots.add(certificate).map_err(IotcoredError::Tls)?;
    }
    let chain = load_certificates(&args.cert, "the client certificate")?;
    let key = PrivateKeyDer::from_pem_file(&args.key)
        .map_err(|error| pem_error(&args.key, "the client private key", error))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(IotcoredError::Tls)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(IotcoredError::Tls)
}

/// Resolves `address` and requires every result to be a loopback address,
/// because this stand-in must never reach another machine.
fn check_loopback(address: &str) -> Result<(), IotcoredError> {
    let resolved: Vec<SocketAddr> = address
        .to_socket_addrs()
        .map_err(|error| IotcoredError::Resolve {
            address: address.to_owned(),
            error,
        })?
        .collect();
    if resolved.is_empty() || !resolved.iter().all(|addr| addr.ip().is_loopback()) {
        return Err(IotcoredError::NotLoopback {
            address: address.to_owned(),
            resolved,
        });
    }
    Ok(())
}

fn bind_socket(path: &Path) -> Result<UnixListener, IotcoredError> {
    let socket_error = |error| IotcoredError::Socket {
        path: path.to_owned(),
        error,
    };
    if let Some(folder) = path.parent() {
        std::fs::create_dir_all(folder).map_err(socket_error)?;
    }
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(socket_error(error)),
        _ => {}
    }
    UnixListener::bind(path).map_err(socket_error)
}

/// One PUBLISH received from the broker.
#[derive(Debug)]
struct IncomingMessage {
    topic: String,
    payload: Vec<u8>,
}

/// State shared by the MQTT task and the core-bus connections.
struct Daemon {
    client: AsyncClient,
    connected: watch::Sender<bool>,
    incoming: broadcast::Sender<Arc<IncomingMessage>>,
    /// Filters subscribed on the broker, with their QoS and the number of
    /// core-bus subscriptions using each.
    mqtt_filters: Mutex<HashMap<String, (QoS, usize)>>,
}

impl Daemon {
    fn filters(&self) -> MutexGuard<'_, HashMap<String, (QoS, usize)>> {
        self.mqtt_filters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Drives the MQTT connection: reconnects with backoff, publishes the
/// connection state, fans incoming PUBLISHes out to subscribers, and
/// reports fatal failures on `fatal`.
async fn run_mqtt(
    mut eventloop: EventLoop,
    daemon: Arc<Daemon>,
    address: String,
    max_attempts: Option<u32>,
    fatal: mpsc::Sender<IotcoredError>,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut failed_attempts = 0_u32;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                eprintln!("iotcored stand-in: connected to {address}");
                backoff = FIRST_BACKOFF;
                failed_attempts = 0;
                daemon.connected.send_replace(true);
                resubscribe(&daemon);
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let message = IncomingMessage {
                    topic: String::from_utf8_lossy(&publish.topic).into_owned(),
                    payload: publish.payload.to_vec(),
                };
                // Sending fails only when no subscriber exists.
                let _ = daemon.incoming.send(Arc::new(message));
            }
            Ok(Event::Incoming(Packet::Disconnect(disconnect))) => {
                eprintln!(
                    "iotcored stand-in: broker sent DISCONNECT, reason {:?}",
                    disconnect.reason_code
                );
            }
            Ok(_) => {}
            Err(error) => {
                let was_connected = daemon.connected.send_replace(false);
                if let Some(reason) = authentication_failure(&error) {
                    eprintln!("iotcored stand-in: authentication with {address} failed: {reason}");
                    let _ = fatal
                        .send(IotcoredError::AuthenticationFailed(reason))
                        .await;
                    return;
                }
                if was_connected {
                    eprintln!("iotcored stand-in: connection to {address} lost: {error}");
                } else {
                    failed_attempts = failed_attempts.saturating_add(1);
                    eprintln!(
                        "iotcored stand-in: connecting to {address} failed (attempt {failed_attempts}): {error}"
                    );
                    if max_attempts.is_some_and(|max| failed_attempts >= max) {
                        let _ = fatal
                            .send(IotcoredError::Unreachable {
                                address,
                                attempts: failed_attempts,
                                last_error: error.to_string(),
                            })
                            .await;
                        return;
                    }
                }
                eprintln!("iotcored stand-in: reconnecting in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Renews the broker subscriptions after a clean-start reconnect.
fn resubscribe(daemon: &Arc<Daemon>) {
    let filters: Vec<(String, QoS)> = daemon
        .filters()
        .iter()
        .map(|(filter, (qos, _))| (filter.clone(), *qos))
        .collect();
    if filters.is_empty() {
        return;
    }
    let daemon = Arc::clone(daemon);
    // Sent from another task because the event loop must keep polling
    // while the request channel fills.
    tokio::spawn(async move {
        for (filter, qos) in filters {
            if let Err(error) = daemon.client.subscribe(filter.clone(), qos).await {
                eprintln!("iotcored stand-in: resubscribing to {filter} failed: {error}");
            }
        }
    });
}

/// Returns the reason when `error` means that the broker or this client
/// rejected a certificate, or that the broker refused the credentials. The C
/// iotcored exits on such failures instead of retrying.
fn authentication_failure(error: &ConnectionError) -> Option<String> {
    if let ConnectionError::ConnectionRefused(code) = error {
        return match code {
            ConnectReturnCode::NotAuthorized
            | ConnectReturnCode::BadUserNamePassword
            | ConnectReturnCode::Banned
            | ConnectReturnCode::BadAuthenticationMethod => {
                Some(format!("CONNACK refused with {code:?}"))
            }
            _ => None,
        };
    }
    // NOTE: with TLS 1.3 the broker checks the client certificate after the
    // client finished its handshake. If the broker closes the socket before
    // its alert is read, the failure looks like a plain disconnect and is
    // retried.
    // StateError does not expose its deserialization error as a source, so
    // that layer is unwrapped by hand.
    let tls_error = match error {
        ConnectionError::MqttState(StateError::Deserialization(inner)) => find_rustls_error(inner),
        other => find_rustls_error(other),
    };
    match tls_error? {
        rustls::Error::InvalidCertificate(reason) => {
            Some(format!("the broker's certificate is invalid: {reason:?}"))
        }
        rustls::Error::AlertReceived(alert) if is_certificate_alert(*alert) => Some(format!(
            "the broker rejected the client certificate with alert {alert:?}"
        )),
        _ => None,
    }
}

fn is_certificate_alert(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::CertificateRequired
    )
}

/// Finds a rustls error in the source chain, including inside `io::Error`s,
/// which is how tokio-rustls reports TLS failures.
fn find_rustls_error<'e>(
    error: &'e (dyn std::error::Error + 'static),
) -> Option<&'e rustls::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(layer) = current {
        if let Some(tls) = layer.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = layer
            .downcast_ref::<io::Error>()
            .and_then(|io_error| io_error.get_ref())
        {
            if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                return Some(tls);
            }
        }
        current = layer.source();
    }
    None
}

async fn accept_loop(listener: UnixListener, daemon: Arc<Daemon>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_connection(stream, Arc::clone(&daemon)));
            }
            Err(error) => {
                eprintln!("iotcored stand-in: accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads one whole frame: the 12-byte prelude, then the rest it announces.
/// Returns `None` (after logging why) when the frame cannot be read.
async fn read_frame(stream: &mut (impl AsyncRead + Unpin)) -> Option<Vec<u8>> {
    let mut frame = vec![0; PRELUDE_LEN];
    if let Err(error) = stream.read_exact(&mut frame).await {
        if error.kind() != io::ErrorKind::UnexpectedEof {
            eprintln!("iotcored stand-in: reading a request failed: {error}");
        }
        return None;
    }
    let total = match eventstream::frame_len(&frame) {
        Ok(total) if (PRELUDE_LEN..=MAX_FRAME_LEN).contains(&total) => total,
        Ok(total) => {
            eprintln!("iotcored stand-in: rejected a {total}-byte frame; the limit is {MAX_FRAME_LEN} bytes");
            return None;
        }
        Err(error) => {
            eprintln!("iotcored stand-in: rejected a frame with an invalid prelude: {error:?}");
            return None;
        }
    };
    frame.resize(total, 0);
    if let Err(error) = stream.read_exact(&mut frame[PRELUDE_LEN..]).await {
        eprintln!("iotcored stand-in: reading a request failed: {error}");
        return None;
    }
    Some(frame)
}

/// A request decoded into owned values, so no borrow of the frame is held
/// across awaits.
enum Command {
    Publish {
        topic: String,
        payload: Vec<u8>,
        qos: QoS,
    },
    Subscribe {
        filters: Vec<String>,
        qos: QoS,
        virtual_subscription: bool,
    },
    ConnectionStatus,
}

async fn send_frame(
    stream: &mut UnixStream,
    frame: Result<usize, corebus::CoreBusError>,
    buffer: &[u8],
) -> bool {
    let len = match frame {
        Ok(len) => len,
        Err(error) => {
            eprintln!("iotcored stand-in: encoding a reply failed: {error:?}");
            return false;
        }
    };
    match buffer.get(..len) {
        Some(bytes) => stream.write_all(bytes).await.is_ok(),
        None => false,
    }
}

async fn send_error(stream: &mut UnixStream, error: GgError) {
    let mut buffer = [0; 64];
    let frame = corebus::encode_error_response(error.code(), &mut buffer);
    send_frame(stream, frame, &buffer).await;
}

async fn serve_connection(mut stream: UnixStream, daemon: Arc<Daemon>) {
    let Some(frame) = read_frame(&mut stream).await else {
        return;
    };
    let decoded = decode_command(&frame);
    let (kind, command) = match decoded {
        Ok(decoded) => decoded,
        Err(error) => {
            send_error(&mut stream, error).await;
            return;
        }
    };
    match command {
        Command::Publish {
            topic,
            payload,
            qos,
        } => {
            let result = publish(&daemon, topic, payload, qos).await;
            if kind == RequestType::Notify {
                return;
            }
            match result {
                Ok(()) => {
                    let mut buffer = [0; 32];
                    let frame = corebus::encode_value_response(&mut buffer, |writer| writer.null());
                    send_frame(&mut stream, frame, &buffer).await;
                }
                Err(error) => send_error(&mut stream, error).await,
            }
        }
        Command::Subscribe {
            filters,
            qos,
            virtual_subscription,
        } => serve_subscription(stream, &daemon, filters, qos, virtual_subscription).await,
        Command::ConnectionStatus => serve_connection_status(stream, &daemon).await,
    }
}

fn decode_command(frame: &[u8]) -> Result<(RequestType, Command), GgError> {
    let frame = eventstream::decode_frame(frame).map_err(|error| {
        eprintln!("iotcored stand-in: malformed request frame: {error:?}");
        GgError::Parse
    })?;
    let request = corebus::parse_request(&frame).map_err(|error| {
        eprintln!("iotcored stand-in: malformed core-bus request: {error:?}");
        GgError::Parse
    })?;
    let command = match request.method {
        "publish" => decode_publish(&request.params),
        "subscribe" => decode_subscribe(&request.params),
        "connection_status" => Ok(Command::ConnectionStatus),
        other => {
            eprintln!("iotcored stand-in: unknown method {other:?}");
            Err(GgError::Noentry)
        }
    }?;
    Ok((request.kind, command))
}

fn invalid(reason: &str) -> GgError {
    eprintln!("iotcored stand-in: invalid request: {reason}");
    GgError::Invalid
}

fn decode_qos(params: &ObjectMap<'_>) -> Result<QoS, GgError> {
    match params.get("qos") {
        None => Ok(QoS::AtMostOnce),
        Some(qos) => match qos.as_i64() {
            Some(0) => Ok(QoS::AtMostOnce),
            Some(1) => Ok(QoS::AtLeastOnce),
            _ => Err(invalid("qos must be the integer 0 or 1")),
        },
    }
}

fn decode_publish(params: &ObjectMap<'_>) -> Result<Command, GgError> {
    let topic = params
        .get("topic")
        .and_then(|topic| topic.as_str().map(str::to_owned))
        .ok_or_else(|| invalid("publish needs a UTF-8 buffer `topic`"))?;
    if topic.is_empty() || topic.contains(['+', '#']) {
        return Err(invalid(
            "a publish topic must be non-empty and contain no wildcard",
        ));
    }
    let payload = match params.get("payload") {
        None => Vec::new(),
        Some(payload) => payload
            .as_buf()
            .ok_or_else(|| invalid("publish `payload` must be a buffer"))?
            .to_vec(),
    };
    Ok(Command::Publish {
        topic,
        payload,
        qos: decode_qos(params)?,
    })
}

fn decode_subscribe(params: &ObjectMap<'_>) -> Result<Command, GgError> {
    let filters: Vec<String> = match params.get("topic_filter") {
        Some(Object::List(list)) => list
            .iter()
            .map(|filter| filter.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| invalid("every `topic_filter` entry must be a UTF-8 buffer"))?,
        Some(filter) => vec![filter
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| invalid("`topic_filter` must be a buffer or a list of buffers"))?],
        None => return Err(invalid("subscribe needs `topic_filter`")),
    };
    if filters.is_empty() || !filters.iter().all(|filter| is_valid_filter(filter)) {
        return Err(invalid(
            "`topic_filter` holds an empty or malformed MQTT topic filter",
        ));
    }
    let virtual_subscription = match params.get("virtual") {
        None => false,
        Some(flag) => flag
            .as_bool()
            .ok_or_else(|| invalid("`virtual` must be a boolean"))?,
    };
    Ok(Command::Subscribe {
        filters,
        qos: decode_qos(params)?,
        virtual_subscription,
    })
}

async fn publish(
    daemon: &Daemon,
    topic: String,
    payload: Vec<u8>,
    qos: QoS,
) -> Result<(), GgError> {
    if !*daemon.connected.borrow() {
        eprintln!("iotcored stand-in: publish to {topic} rejected: not connected");
        return Err(GgError::Noconn);
    }
    daemon
        .client
        .publish(topic.clone(), qos, false, payload)
        .await
        .map_err(|error| {
            eprintln!("iotcored stand-in: publish to {topic} failed: {error}");
            GgError::Failure
        })
}

/// Checks the MQTT rules for a topic filter: `#` only as the whole last
/// level, `+` only as a whole level.
pub fn is_valid_filter(filter: &str) -> bool {
    if filter.is_empty() {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    let last = levels.len() - 1;
    levels
        .iter()
        .enumerate()
        .all(|(index, level)| match *level {
            "#" => index == last,
            "+" => true,
            other => !other.contains(['+', '#']),
        })
}

/// Matches `topic` against an MQTT topic filter. A filter that starts with a
/// wildcard does not match topics that start with `$`.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(expected), Some(level)) if expected == level => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

async fn serve_subscription(
    mut stream: UnixStream,
    daemon: &Arc<Daemon>,
    filters: Vec<String>,
    qos: QoS,
    virtual_subscription: bool,
) {
    // Taken before the acceptance so that no PUBLISH can slip in between.
    let mut messages = daemon.incoming.subscribe();
    if !virtual_subscription {
        add_mqtt_filters(daemon, &filters, qos).await;
    }
    let mut buffer = vec![0; MAX_FRAME_LEN];
    let accepted = corebus::encode_accepted_response(&mut buffer);
    if send_frame(&mut stream, accepted, &buffer).await {
        let (mut reader, mut writer) = stream.into_split();
        let mut scratch = [0; 64];
        loop {
            tokio::select! {
                // The client sends nothing more; EOF or any byte ends it.
                _ = reader.read(&mut scratch) => break,
                received = messages.recv() => match received {
                    Ok(message) => {
                        if !filters.iter().any(|filter| topic_matches(filter, &message.topic)) {
                            continue;
                        }
                        let event = corebus::encode_value_response(&mut buffer, |w| {
                            w.map(2)?;
                            w.key(b"topic")?;
                            w.str(&message.topic)?;
                            w.key(b"payload")?;
                            w.buf(&message.payload)
                        });
                        match event {
                            Ok(len) => {
                                let Some(bytes) = buffer.get(..len) else { break };
                                if writer.write_all(bytes).await.is_err() {
                                    break;
                                }
                            }
                            Err(error) => eprintln!(
                                "iotcored stand-in: dropped a message on {} that does not fit a frame: {error:?}",
                                message.topic
                            ),
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        eprintln!("iotcored stand-in: a slow subscriber missed {missed} messages");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            }
        }
    }
    if !virtual_subscription {
        remove_mqtt_filters(daemon, &filters).await;
    }
}

async fn add_mqtt_filters(daemon: &Daemon, filters: &[String], qos: QoS) {
    let new_filters: Vec<String> = {
        let mut subscribed = daemon.filters();
        filters
            .iter()
            .filter(|filter| {
                let entry = subscribed.entry((*filter).clone()).or_insert((qos, 0));
                entry.1 += 1;
                entry.1 == 1
            })
            .cloned()
            .collect()
    };
    for filter in new_filters {
        if let Err(error) = daemon.client.subscribe(filter.clone(), qos).await {
            eprintln!("iotcored stand-in: subscribing to {filter} failed: {error}");
        }
    }
}

async fn remove_mqtt_filters(daemon: &Daemon, filters: &[String]) {
    let unused: Vec<String> = {
        let mut subscribed = daemon.filters();
        filters
            .iter()
            .filter(|filter| match subscribed.get_mut(filter.as_str()) {
                Some(entry) if entry.1 > 1 => {
                    entry.1 -= 1;
                    false
                }
                Some(_) => {
                    subscribed.remove(filter.as_str());
                    true
                }
                None => false,
            })
            .cloned()
            .collect()
    };
    for filter in unused {
        if let Err(error) = daemon.client.unsubscribe(filter.clone()).await {
            eprintln!("iotcored stand-in: unsubscribing from {filter} failed: {error}");
        }
    }
}

async fn serve_connection_status(mut stream: UnixStream, daemon: &Daemon) {
    let mut state = daemon.connected.subscribe();
    let mut buffer = [0; 64];
    let accepted = corebus::encode_accepted_response(&mut buffer);
    if !send_frame(&mut stream, accepted, &buffer).await {
        return;
    }
    let (mut reader, mut writer) = stream.into_split();
    let mut scratch = [0; 64];
    let mut current = *state.borrow_and_update();
    let mut send_event = true;
    loop {
        if send_event {
            let event = corebus::encode_value_response(&mut buffer, |writer| writer.bool(current));
            let Ok(len) = event else { return };
            let Some(bytes) = buffer.get(..len) else {
                return;
            };
            if writer.write_all(bytes).await.is_err() {
                return;
            }
        }
        tokio::select! {
            // The client sends nothing more; EOF or any byte ends it.
            _ = reader.read(&mut scratch) => return,
            changed = state.changed() => if changed.is_err() {
                return;
            },
        }
        let next = *state.borrow_and_update();
        // send_replace notifies even when the value stays the same, so only
        // real changes become events.
        send_event = next != current;
        current = next;
    }
}
