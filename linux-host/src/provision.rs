//! One provisioning run: the core state machine driven over iotcored, with
//! the key, files and configuration handled here.

use crate::corebus_client::{CoreBus, CoreBusClientError};
use crate::iotcored::{self, Iotcored, IotcoredArgs, IotcoredTransport, TransportEvent};
use crate::keys::{self, KeyError};
use crate::output::{self, OutputError};
use crate::settings::{Settings, CONFIG_INTERFACE, NUCLEUS_CONFIG};
use fleet_provisioning_core::corebus;
use fleet_provisioning_core::fleet::{CertificateIssued, ThingRegistered};
use fleet_provisioning_core::machine::{Action, Event, Failure, Provisioner};
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Timestamp of every configuration write. Greengrass Lite's C tool writes
/// with 3, an old time on purpose, so that values from the user's own
/// configuration file win over the provisioned ones.
pub const CONFIG_WRITE_TIMESTAMP: i64 = 3;

/// Longest single wait of the run loop, so that a signal or an exited
/// iotcored is noticed promptly.
const POLL_SLICE: Duration = Duration::from_millis(50);

/// What a successful run provisioned.
#[derive(Debug, Clone)]
pub struct Provisioned {
    /// The registered thing name.
    pub thing_name: String,
    /// The issued certificate's id.
    pub certificate_id: String,
}

/// Why a run failed, grouped by exit status.
#[derive(Debug)]
pub enum RunError {
    /// iotcored could not start, exited, or never connected.
    ClaimConnection(String),
    /// AWS IoT rejected a request.
    Rejected(Box<Failure>),
    /// AWS IoT did not answer in time.
    Timeout(Box<Failure>),
    /// AWS IoT answered with something unusable.
    InvalidReply(String),
    /// A local file, socket or key operation failed.
    LocalIo(String),
    /// SIGINT or SIGTERM arrived.
    Interrupted(i32),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::ClaimConnection(reason) => write!(f, "claim connection failed: {reason}"),
            RunError::Rejected(failure) | RunError::Timeout(failure) => write!(f, "{failure}"),
            RunError::InvalidReply(reason) => write!(f, "{reason}"),
            RunError::LocalIo(reason) => write!(f, "{reason}"),
            RunError::Interrupted(signal) => {
                write!(
                    f,
                    "stopped by signal {signal}; nothing was recorded as provisioned"
                )
            }
        }
    }
}

impl From<OutputError> for RunError {
    fn from(error: OutputError) -> Self {
        RunError::LocalIo(error.to_string())
    }
}

impl From<KeyError> for RunError {
    fn from(error: KeyError) -> Self {
        RunError::LocalIo(format!("key generation failed: {error}"))
    }
}

fn map_failure(failure: &Failure) -> RunError {
    match failure {
        Failure::ConnectTimeout { .. } => RunError::ClaimConnection(failure.to_string()),
        Failure::ResponseTimeout { .. } => RunError::Timeout(Box::new(failure.clone())),
        Failure::Rejected { .. } => RunError::Rejected(Box::new(failure.clone())),
        Failure::InvalidReply { .. } => RunError::InvalidReply(failure.to_string()),
        Failure::InvalidRequest { .. } | Failure::InvalidInput(_) => {
            RunError::LocalIo(failure.to_string())
        }
    }
}

/// The next event for the machine, owning its data.
enum Pending {
    Start,
    Tick,
    KeyReady,
    Connection(bool),
    Subscribed,
    Published,
    Message { topic: String, payload: Vec<u8> },
    Stored,
}

/// Returns the number of the signal that stopped the run, or 0. The
/// SIGINT and SIGTERM handlers store into it.
pub fn stop_signal() -> &'static Arc<AtomicUsize> {
    static STOP_SIGNAL: OnceLock<Arc<AtomicUsize>> = OnceLock::new();
    STOP_SIGNAL.get_or_init(|| Arc::new(AtomicUsize::new(0)))
}

fn check_signal() -> Result<(), RunError> {
    match stop_signal().load(Ordering::Relaxed) {
        0 => Ok(()),
        signal => Err(RunError::Interrupted(
            i32::try_from(signal).unwrap_or(i32::MAX),
        )),
    }
}

/// Runs one provisioning with `settings`, talking to the daemons in `bus`.
pub fn run(settings: &Settings, bus: &CoreBus) -> Result<Provisioned, RunError> {
    let started = Instant::now();
    output::create_output_dir(&settings.output_dir)?;

    let client_id = iotcored::random_client_id()
        .map_err(|error| RunError::LocalIo(format!("reading /dev/urandom failed: {error}")))?;
    let mut iotcored = Iotcored::spawn(&IotcoredArgs {
        path: &settings.iotcored_path,
        endpoint: &settings.endpoint,
        client_id: &client_id,
        root_ca: &settings.root_ca,
        claim_cert: &settings.claim_cert,
        claim_key: &settings.claim_key,
        socket_dir: bus.socket_dir(),
    })
    .map_err(|error| RunError::ClaimConnection(error.to_string()))?;
    log::info!(
        "started iotcored (pid {}) as {} with client id {client_id}",
        iotcored.pid().unwrap_or(0),
        iotcored::INTERFACE
    );

    let mut transport = IotcoredTransport::new(bus.clone());
    let result = drive(settings, bus, &mut iotcored, &mut transport, started);
    // iotcored stops before the subscriptions close: closing a virtual
    // subscription first makes Greengrass Lite's iotcored send an UNSUBSCRIBE
    // that the broker refuses.
    iotcored.stop();
    drop(transport);
    result
}

fn drive(
    settings: &Settings,
    bus: &CoreBus,
    iotcored: &mut Iotcored,
    transport: &mut IotcoredTransport,
    started: Instant,
) -> Result<Provisioned, RunError> {
    let mut machine = Provisioner::new(
        &settings.template_name,
        settings.parameters.clone(),
        settings.timeouts,
    )
    .map_err(|error| RunError::LocalIo(error.to_string()))?;
    let mut watching_connection = false;
    let mut csr_pem = String::new();
    let mut pending = Pending::Start;

    loop {
        check_signal()?;
        let now_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let event = match &pending {
            Pending::Start => Event::Start,
            Pending::Tick => Event::Tick,
            Pending::KeyReady => Event::KeyAndCsrReady { csr_pem: &csr_pem },
            Pending::Connection(up) => Event::Connection(*up),
            Pending::Subscribed => Event::Subscribed,
            Pending::Published => Event::Published,
            Pending::Message { topic, payload } => Event::Message { topic, payload },
            Pending::Stored => Event::CredentialsStored,
        };
        pending = match machine.handle(now_ms, event) {
            Action::GenerateKeyAndCsr => {
                csr_pem = generate_key(settings)?;
                Pending::KeyReady
            }
            Action::Subscribe { filter } => {
                log::debug!("subscribing to {filter}");
                transport
                    .subscribe(filter)
                    .map_err(|error| local_bus_error(&error))?;
                Pending::Subscribed
            }
            Action::Publish {
                topic,
                payload,
                step,
            } => {
                log::info!("sending {step} request to {topic}");
                transport.publish(topic, payload).map_err(|error| {
                    RunError::ClaimConnection(format!(
                        "publishing the {step} request failed: {error}"
                    ))
                })?;
                Pending::Published
            }
            Action::Wait { deadline_ms } => {
                let deadline = started + Duration::from_millis(deadline_ms);
                wait_for_event(
                    iotcored,
                    transport,
                    &mut watching_connection,
                    deadline,
                    started,
                )?
            }
            Action::StoreCredentials { certificate, thing } => {
                log::info!(
                    "AWS IoT issued certificate {} and registered thing {}",
                    certificate.certificate_id.as_str(),
                    thing.thing_name.as_str()
                );
                store_credentials(settings, bus, certificate, thing)?;
                Pending::Stored
            }
            Action::Done { certificate, thing } => {
                return Ok(Provisioned {
                    thing_name: thing.thing_name.as_str().to_owned(),
                    certificate_id: certificate.certificate_id.as_str().to_owned(),
                });
            }
            Action::Failed(failure) => return Err(map_failure(failure)),
        };
    }
}

fn local_bus_error(error: &CoreBusClientError) -> RunError {
    RunError::ClaimConnection(format!("iotcored request failed: {error}"))
}

/// Generates the key and CSR and writes both before anything is sent, so
/// that the key of an issued certificate is on disk.
fn generate_key(settings: &Settings) -> Result<String, RunError> {
    let generated = keys::generate_key_and_csr(&settings.csr_common_name)?;
    output::write_file_atomic(
        &settings.key_path,
        generated.private_key_pem.as_bytes(),
        0o600,
    )?;
    output::write_file_atomic(&settings.csr_path, generated.csr_pem.as_bytes(), 0o644)?;
    log::info!(
        "generated an EC P-256 key at {} and a CSR with common name {:?}",
        settings.key_path.display(),
        settings.csr_common_name
    );
    Ok(generated.csr_pem)
}

/// Waits for one transport event until `deadline`, watching iotcored and
/// opening the `connection_status` subscription once its socket is up.
fn wait_for_event(
    iotcored: &mut Iotcored,
    transport: &mut IotcoredTransport,
    watching_connection: &mut bool,
    deadline: Instant,
    started: Instant,
) -> Result<Pending, RunError> {
    loop {
        check_signal()?;
        if let Some(status) = iotcored.exit_status() {
            return Err(RunError::ClaimConnection(format!(
                "iotcored exited ({status}) before provisioning finished; its log above \
                 says why (often: the broker rejected the claim certificate, or the \
                 endpoint or root CA is wrong)"
            )));
        }
        if !*watching_connection {
            match transport.watch_connection() {
                Ok(()) => {
                    *watching_connection = true;
                    log::debug!("iotcored socket is up after {:?}", started.elapsed());
                }
                Err(CoreBusClientError::Connect { .. }) => {}
                Err(error) => return Err(local_bus_error(&error)),
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(Pending::Tick);
        }
        let slice = if *watching_connection {
            POLL_SLICE
        } else {
            // Poll the socket often: iotcored creates it a few milliseconds
            // after it starts.
            Duration::from_millis(5)
        };
        match transport.next_event(slice.min(deadline - now)) {
            Some(TransportEvent::Connection(up)) => {
                log::info!(
                    "MQTT connection through iotcored is {} after {} ms",
                    if up { "up" } else { "down" },
                    started.elapsed().as_millis()
                );
                return Ok(Pending::Connection(up));
            }
            Some(TransportEvent::Message { topic, payload }) => {
                log::debug!("message on {topic} ({} bytes)", payload.len());
                return Ok(Pending::Message { topic, payload });
            }
            Some(TransportEvent::SubscriptionEnded {
                subscription,
                error,
            }) => {
                return Err(RunError::ClaimConnection(format!(
                    "iotcored ended the {subscription} subscription{}",
                    error.map(|e| format!(": {e}")).unwrap_or_default()
                )));
            }
            None => {}
        }
    }
}

fn config_write(bus: &CoreBus, key_path: &[&str], value: &str) -> Result<(), RunError> {
    log::debug!("writing configuration {}", key_path.join("/"));
    bus.call(CONFIG_INTERFACE, |out| {
        corebus::encode_config_write_str(key_path, value, Some(CONFIG_WRITE_TIMESTAMP), out)
    })
    .map_err(|error| {
        RunError::LocalIo(format!(
            "writing configuration {} failed: {error}",
            key_path.join("/")
        ))
    })?;
    Ok(())
}

fn path_text(path: &Path) -> Result<&str, RunError> {
    path.to_str()
        .ok_or_else(|| RunError::LocalIo(format!("path {} is not UTF-8", path.display())))
}

/// Writes the certificate and root CA, hands the files to the Greengrass
/// user, and records the result in the configuration with
/// `system/certificateFilePath` last, because its presence marks the device
/// as provisioned.
fn store_credentials(
    settings: &Settings,
    bus: &CoreBus,
    certificate: &CertificateIssued,
    thing: &ThingRegistered,
) -> Result<(), RunError> {
    let key_pem = std::fs::read(&settings.key_path).map_err(|error| {
        RunError::LocalIo(format!(
            "reading {} failed: {error}",
            settings.key_path.display()
        ))
    })?;
    let matches = keys::public_key_matches(&key_pem, certificate.certificate_pem.as_bytes())
        .map_err(|error| {
            RunError::InvalidReply(format!("the issued certificate is invalid: {error}"))
        })?;
    if !matches {
        return Err(RunError::InvalidReply(
            "the issued certificate does not hold this device's public key".to_owned(),
        ));
    }

    output::write_file_atomic(
        &settings.cert_path,
        certificate.certificate_pem.as_bytes(),
        0o644,
    )?;
    output::copy_file_atomic(&settings.root_ca, &settings.root_ca_copy, 0o644)?;
    for path in [
        &settings.key_path,
        &settings.cert_path,
        &settings.root_ca_copy,
        &settings.output_dir,
    ] {
        output::chown_path(path, &settings.owner)?;
    }
    log::info!(
        "wrote {} and {}, owned by {}:{}",
        settings.cert_path.display(),
        settings.root_ca_copy.display(),
        settings.owner.user,
        settings.owner.group
    );

    config_write(
        bus,
        &["system", "rootCaPath"],
        path_text(&settings.root_ca_copy)?,
    )?;
    config_write(
        bus,
        &["system", "privateKeyPath"],
        path_text(&settings.key_path)?,
    )?;
    config_write(bus, &["system", "thingName"], thing.thing_name.as_str())?;
    let mut data_endpoint = NUCLEUS_CONFIG.to_vec();
    data_endpoint.push("iotDataEndpoint");
    config_write(bus, &data_endpoint, &settings.endpoint)?;
    let mut cred_endpoint = NUCLEUS_CONFIG.to_vec();
    cred_endpoint.push("iotCredEndpoint");
    config_write(bus, &cred_endpoint, &settings.cred_endpoint)?;
    config_write(
        bus,
        &["system", "certificateFilePath"],
        path_text(&settings.cert_path)?,
    )?;

    output::remove_file_if_exists(&settings.csr_path)?;
    Ok(())
}
