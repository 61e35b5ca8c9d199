//! In-process emulator of the AWS IoT Core fleet provisioning MQTT API.
//!
//! The mosquitto plugin in `tests/plugin` forwards every PUBLISH on a
//! `$aws/` topic to this emulator over a Unix stream socket and publishes
//! the returned replies to the client id that sent the request, whether or
//! not that client subscribed. The emulator implements
//! CreateCertificateFromCsr and RegisterThing (JSON payload format), signs
//! certificates with the test CA and records what it issued so tests can
//! inspect it. Faults can be injected per API at any time.
//!
//! Wire format, all integers unsigned 32-bit big-endian:
//! request `len, client id, len, topic, len, payload`; response `count`,
//! then `count` times `delay_ms, len, topic, len, payload`.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use rcgen::{CertificateSigningRequestParams, DistinguishedName, DnType, Issuer, KeyPair};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{json, Map, Value};

use crate::pki::TestPki;

/// Request topic of CreateCertificateFromCsr (JSON payload format).
pub const CREATE_CERTIFICATE_TOPIC: &str = "$aws/certificates/create-from-csr/json";
/// Name of the only provisioning template that RegisterThing accepts.
pub const TEMPLATE_NAME: &str = "GGFleetProvisioningTemplate";
/// Template parameter that the thing name is made from.
pub const THING_NAME_PARAMETER: &str = "SerialNumber";
/// Prefix the template puts before [`THING_NAME_PARAMETER`] to form the thing name.
pub const THING_NAME_PREFIX: &str = "ggl-";
/// Maximum MQTT packet size that iotcored announces in CONNECT, in bytes.
/// A [`Fault::Oversized`] reply is built to exceed it.
pub const IOTCORED_MAX_PACKET_SIZE: usize = 5_000;

const TEMPLATE_TOPIC_PREFIX: &str = "$aws/provisioning-templates/";
const PROVISION_TOPIC_SUFFIX: &str = "/provision/json";
const MAX_FIELD_LEN: u32 = 1024 * 1024;
const OWNERSHIP_TOKEN_BYTES: usize = 160;
const SOCKET_IO_TIMEOUT: Duration = Duration::from_secs(5);
// sockaddr_un.sun_path on Linux is 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH_LEN: usize = 107;

/// Failure to start the emulator.
#[derive(Debug)]
pub enum EmulatorError {
    /// The CA certificate or key of the test PKI could not be loaded.
    LoadCa(rcgen::Error),
    /// The socket path does not fit in a Unix socket address.
    SocketPathTooLong(PathBuf),
    /// The Unix socket could not be bound.
    Bind {
        /// Path of the socket.
        path: PathBuf,
        /// Error from the operating system.
        source: io::Error,
    },
    /// The server thread could not be spawned.
    Spawn(io::Error),
}

impl fmt::Display for EmulatorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LoadCa(error) => write!(
                f,
                "failed to load the test CA for the emulator: {error}; regenerate the test PKI"
            ),
            Self::SocketPathTooLong(path) => write!(
                f,
                "emulator socket path {} is longer than {MAX_SOCKET_PATH_LEN} bytes; \
                 use a shorter directory",
                path.display()
            ),
            Self::Bind { path, source } => write!(
                f,
                "failed to bind the emulator socket {}: {source}; check that the directory \
                 exists and is writable",
                path.display()
            ),
            Self::Spawn(error) => write!(f, "failed to spawn the emulator thread: {error}"),
        }
    }
}

impl std::error::Error for EmulatorError {}

/// Fleet provisioning API that a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// `$aws/certificates/create-from-csr/json`.
    CreateCertificateFromCsr,
    /// `$aws/provisioning-templates/<name>/provision/json`.
    RegisterThing,
}

/// Misbehaviour injected into the replies of one API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Reply on the rejected topic with this error.
    Reject {
        /// HTTP-style status code, such as 400.
        status: u16,
        /// Error code, such as `InvalidCSR`.
        code: String,
        /// Human-readable error message.
        message: String,
    },
    /// Reject the next `times` requests with 429 `Throttling`, then behave normally.
    Throttle {
        /// Number of requests to reject.
        times: u32,
    },
    /// Send the normal reply after this many milliseconds. The broker plugin
    /// checks for due replies on every main loop pass, about every 100 ms.
    Delay {
        /// Delay in milliseconds.
        ms: u32,
    },
    /// Send no reply at all.
    Drop,
    /// Send invalid JSON on the accepted topic.
    Garble,
    /// Send an accepted reply larger than [`IOTCORED_MAX_PACKET_SIZE`], which
    /// the broker does not deliver to a client that announced that limit.
    Oversized,
    /// Send an accepted CreateCertificateFromCsr reply whose ownership token
    /// RegisterThing rejects. RegisterThing requests ignore this fault.
    WrongToken,
}

/// Certificate that the emulator issued through CreateCertificateFromCsr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// Certificate id: lowercase hex SHA-256 of the certificate DER.
    pub id: String,
    /// Certificate as PEM.
    pub pem: String,
    /// MQTT client id that requested it.
    pub client_id: String,
}

/// Handle of a running emulator. Dropping it stops the server thread and
/// removes the socket.
pub struct Emulator {
    socket_path: PathBuf,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    ca: Issuer<'static, KeyPair>,
    random: SystemRandom,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    issued: Vec<IssuedCertificate>,
    /// Ownership token to (certificate id, already used).
    tokens: HashMap<String, (String, bool)>,
    things: Vec<(String, String)>,
    requests_seen: usize,
    clients_seen: Vec<String>,
    faults: HashMap<Api, Fault>,
}

/// Reply the plugin publishes to the requesting client.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reply {
    delay_ms: u32,
    topic: String,
    payload: Vec<u8>,
}

impl Emulator {
    /// Starts the emulator on a Unix socket `emulator.sock` in `dir`,
    /// signing certificates with the CA of `pki`.
    pub fn start(pki: &TestPki, dir: &Path) -> Result<Emulator, EmulatorError> {
        let ca_key = KeyPair::from_pem(pki.ca_key_pem()).map_err(EmulatorError::LoadCa)?;
        let ca =
            Issuer::from_ca_cert_pem(pki.ca_cert_pem(), ca_key).map_err(EmulatorError::LoadCa)?;

        let socket_path = dir.join("emulator.sock");
        if socket_path.as_os_str().len() > MAX_SOCKET_PATH_LEN {
            return Err(EmulatorError::SocketPathTooLong(socket_path));
        }
        // A socket file left by an earlier run would make bind fail.
        let _ = fs::remove_file(&socket_path);
        let listener = UnixListener::bind(&socket_path).map_err(|source| EmulatorError::Bind {
            path: socket_path.clone(),
            source,
        })?;

        let shared = Arc::new(Shared {
            ca,
            random: SystemRandom::new(),
            state: Mutex::new(State::default()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let shared = Arc::clone(&shared);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("iot-core-emulator".into())
                .spawn(move || serve(&listener, &shared, &stop))
                .map_err(EmulatorError::Spawn)?
        };
        Ok(Emulator {
            socket_path,
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// Returns the path of the Unix socket the broker plugin connects to.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// Injects `fault` into every later request of `api`, replacing any
    /// earlier fault of that API.
    pub fn set_fault(&self, api: Api, fault: Fault) {
        self.shared.lock().faults.insert(api, fault);
    }

    /// Removes the fault of `api`, so it behaves normally again.
    pub fn clear_fault(&self, api: Api) {
        self.shared.lock().faults.remove(&api);
    }

    /// Returns the certificates issued so far, oldest first.
    pub fn issued_certificates(&self) -> Vec<IssuedCertificate> {
        self.shared.lock().issued.clone()
    }

    /// Returns the registered things as (thing name, certificate id), oldest first.
    pub fn registered_things(&self) -> Vec<(String, String)> {
        self.shared.lock().things.clone()
    }

    /// Returns the number of `$aws/` requests received, including ignored ones.
    pub fn requests_seen(&self) -> usize {
        self.shared.lock().requests_seen
    }

    /// Returns the distinct client ids that sent `$aws/` requests, in order
    /// of first appearance.
    pub fn clients_seen(&self) -> Vec<String> {
        self.shared.lock().clients_seen.clone()
    }

    /// Stops the server thread and removes the socket.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking accept so the thread checks the stop flag.
        let _ = UnixStream::connect(&self.socket_path);
        let _ = thread.join();
        let _ = fs::remove_file(&self.socket_path);
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind, so the
        // state is still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Returns a random opaque ownership token, or `None` if the operating
    /// system random generator failed.
    fn new_ownership_token(&self) -> Option<String> {
        let mut bytes = [0u8; OWNERSHIP_TOKEN_BYTES];
        self.random.fill(&mut bytes).ok()?;
        Some(to_hex(&bytes))
    }
}

fn serve(listener: &UnixListener, shared: &Shared, stop: &AtomicBool) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match stream {
            Ok(stream) => {
                if let Err(error) = handle_connection(stream, shared) {
                    eprintln!("emulator: connection from the broker plugin failed: {error}");
                }
            }
            Err(error) => {
                eprintln!("emulator: accept failed: {error}");
                // Keeps a persistent failure such as EMFILE from spinning.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn handle_connection(mut stream: UnixStream, shared: &Shared) -> io::Result<()> {
    stream.set_read_timeout(Some(SOCKET_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(SOCKET_IO_TIMEOUT))?;
    let client_id = read_string(&mut stream)?;
    let topic = read_string(&mut stream)?;
    let payload = read_field(&mut stream)?;

    let replies = handle_request(shared, &client_id, &topic, &payload);

    let mut response = Vec::new();
    push_u32(&mut response, len_u32(replies.len())?);
    for reply in &replies {
        push_u32(&mut response, reply.delay_ms);
        push_u32(&mut response, len_u32(reply.topic.len())?);
        response.extend_from_slice(reply.topic.as_bytes());
        push_u32(&mut response, len_u32(reply.payload.len())?);
        response.extend_from_slice(&reply.payload);
    }
    stream.write_all(&response)
}

fn read_field(stream: &mut UnixStream) -> io::Result<Vec<u8>> {
    let mut length = [0u8; 4];
    stream.read_exact(&mut length)?;
    let length = u32::from_be_bytes(length);
    if length > MAX_FIELD_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("field of {length} bytes exceeds the maximum of {MAX_FIELD_LEN}"),
        ));
    }
    let mut field = vec![0u8; length as usize];
    stream.read_exact(&mut field)?;
    Ok(field)
}

fn read_string(stream: &mut UnixStream) -> io::Result<String> {
    String::from_utf8(read_field(stream)?)
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))
}

fn push_u32(buffer: &mut Vec<u8>, value: u32) {
    buffer.extend_from_slice(&value.to_be_bytes());
}

fn len_u32(length: usize) -> io::Result<u32> {
    u32::try_from(length).map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))
}

/// Computes the replies to one request, applying the fault of its API.
fn handle_request(shared: &Shared, client_id: &str, topic: &str, payload: &[u8]) -> Vec<Reply> {
    let api = {
        let mut state = shared.lock();
        state.requests_seen += 1;
        if !state.clients_seen.iter().any(|seen| seen == client_id) {
            state.clients_seen.push(client_id.to_owned());
        }
        if topic == CREATE_CERTIFICATE_TOPIC {
            Api::CreateCertificateFromCsr
        } else if template_name(topic).is_some() {
            Api::RegisterThing
        } else {
            return Vec::new();
        }
    };

    let fault = take_fault(shared, api);
    let accepted_topic = format!("{topic}/accepted");
    let rejected_topic = format!("{topic}/rejected");
    let immediate = |topic: String, body: Vec<u8>| {
        vec![Reply {
            delay_ms: 0,
            topic,
            payload: body,
        }]
    };

    match &fault {
        Some(Fault::Drop) => return Vec::new(),
        Some(Fault::Reject {
            status,
            code,
            message,
        }) => return immediate(rejected_topic, error_body(*status, code, message)),
        Some(Fault::Throttle { .. }) => {
            return immediate(
                rejected_topic,
                error_body(429, "Throttling", "Rate exceeded"),
            )
        }
        Some(Fault::Garble) => {
            return immediate(accepted_topic, b"{\"certificateId\": \"truncated".to_vec())
        }
        _ => {}
    }

    let outcome = match api {
        Api::CreateCertificateFromCsr => {
            create_certificate(shared, client_id, payload, fault == Some(Fault::WrongToken))
        }
        Api::RegisterThing => register_thing(shared, topic, payload),
    };
    let (reply_topic, mut body) = match outcome {
        Ok(body) => (accepted_topic, body),
        Err(body) => (rejected_topic, body),
    };
    if fault == Some(Fault::Oversized) {
        if let Value::Object(fields) = &mut body {
            fields.insert(
                "padding".into(),
                Value::String("x".repeat(IOTCORED_MAX_PACKET_SIZE + 1_000)),
            );
        }
    }
    let delay_ms = match fault {
        Some(Fault::Delay { ms }) => ms,
        _ => 0,
    };
    vec![Reply {
        delay_ms,
        topic: reply_topic,
        payload: body.to_string().into_bytes(),
    }]
}

/// Returns the fault that applies to this request, counting down a throttle.
fn take_fault(shared: &Shared, api: Api) -> Option<Fault> {
    let mut state = shared.lock();
    let fault = state.faults.get(&api).cloned();
    if let Some(Fault::Throttle { times }) = fault {
        if times == 0 {
            state.faults.remove(&api);
            return None;
        }
        state
            .faults
            .insert(api, Fault::Throttle { times: times - 1 });
    }
    fault
}

fn template_name(topic: &str) -> Option<&str> {
    let name = topic
        .strip_prefix(TEMPLATE_TOPIC_PREFIX)?
        .strip_suffix(PROVISION_TOPIC_SUFFIX)?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

fn error_body(status: u16, code: &str, message: &str) -> Vec<u8> {
    error_value(status, code, message).to_string().into_bytes()
}

fn error_value(status: u16, code: &str, message: &str) -> Value {
    json!({ "statusCode": status, "errorCode": code, "errorMessage": message })
}

fn parse_object(payload: &[u8]) -> Result<Map<String, Value>, Value> {
    match serde_json::from_slice(payload) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(_) => Err(error_value(
            400,
            "InvalidPayload",
            "request payload is not a JSON object",
        )),
        Err(error) => Err(error_value(
            400,
            "InvalidPayload",
            &format!("request payload is not valid JSON: {error}"),
        )),
    }
}

/// Handles CreateCertificateFromCsr. Returns the accepted body, or the
/// rejected body as the error.
fn create_certificate(
    shared: &Shared,
    client_id: &str,
    payload: &[u8],
    wrong_token: bool,
) -> Result<Value, Value> {
    let request = parse_object(payload)?;
    let Some(Value::String(csr_pem)) = request.get("certificateSigningRequest") else {
        return Err(error_value(
            400,
            "InvalidCSR",
            "certificateSigningRequest is missing or not a string",
        ));
    };
    // NOTE: rcgen rejects CSRs with extensions other than SAN, key usage,
    // extended key usage and basic constraints, which AWS IoT may accept.
    let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|error| {
        error_value(
            400,
            "InvalidCSR",
            &format!("certificate signing request is invalid: {error}"),
        )
    })?;
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, "AWS IoT Certificate");
    csr.params.distinguished_name = subject;
    let certificate = csr.signed_by(&shared.ca).map_err(|error| {
        error_value(
            500,
            "InternalFailure",
            &format!("signing the certificate failed: {error}"),
        )
    })?;

    let id = to_hex(ring::digest::digest(&ring::digest::SHA256, certificate.der()).as_ref());
    let pem = certificate.pem();
    let random_failed = || error_value(500, "InternalFailure", "random generator failed");
    let token = shared.new_ownership_token().ok_or_else(random_failed)?;
    let wrong_token = if wrong_token {
        Some(shared.new_ownership_token().ok_or_else(random_failed)?)
    } else {
        None
    };
    let mut state = shared.lock();
    state.issued.push(IssuedCertificate {
        id: id.clone(),
        pem: pem.clone(),
        client_id: client_id.to_owned(),
    });
    state.tokens.insert(token.clone(), (id.clone(), false));
    // With a wrong token the real one stays unsent, so RegisterThing only
    // receives a token that it did not issue.
    let reply_token = wrong_token.unwrap_or(token);
    Ok(json!({
        "certificateId": id,
        "certificatePem": pem,
        "certificateOwnershipToken": reply_token,
    }))
}

/// Handles RegisterThing. Returns the accepted body, or the rejected body
/// as the error.
fn register_thing(shared: &Shared, topic: &str, payload: &[u8]) -> Result<Value, Value> {
    let name = template_name(topic).unwrap_or_default();
    if name != TEMPLATE_NAME {
        return Err(error_value(
            404,
            "ResourceNotFound",
            &format!("provisioning template {name} does not exist"),
        ));
    }
    let request = parse_object(payload)?;
    let Some(Value::String(token)) = request.get("certificateOwnershipToken") else {
        return Err(error_value(
            400,
            "InvalidCertificateOwnershipToken",
            "certificateOwnershipToken is missing or not a string",
        ));
    };

    let parameters = match request.get("parameters") {
        None => Map::new(),
        Some(Value::Object(parameters)) => parameters.clone(),
        Some(_) => {
            return Err(error_value(
                400,
                "InvalidParameters",
                "parameters is not a JSON object",
            ))
        }
    };
    if let Some((key, _)) = parameters.iter().find(|(_, value)| !value.is_string()) {
        return Err(error_value(
            400,
            "InvalidParameters",
            &format!("parameter {key} is not a string"),
        ));
    }
    let Some(Value::String(serial_number)) = parameters.get(THING_NAME_PARAMETER) else {
        return Err(error_value(
            400,
            "InvalidParameters",
            &format!("parameter {THING_NAME_PARAMETER} is missing"),
        ));
    };
    let thing_name = format!("{THING_NAME_PREFIX}{serial_number}");

    let mut state = shared.lock();
    let certificate_id = match state.tokens.get_mut(token) {
        Some((certificate_id, used)) if !*used => {
            *used = true;
            certificate_id.clone()
        }
        Some(_) => {
            return Err(error_value(
                400,
                "InvalidCertificateOwnershipToken",
                "certificate ownership token was already used",
            ))
        }
        None => {
            return Err(error_value(
                400,
                "InvalidCertificateOwnershipToken",
                "certificate ownership token is unknown",
            ))
        }
    };
    state.things.push((thing_name.clone(), certificate_id));
    Ok(json!({ "deviceConfiguration": {}, "thingName": thing_name }))
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
