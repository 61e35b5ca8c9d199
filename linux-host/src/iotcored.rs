//! Starting, watching and stopping the provisioning run's own iotcored, and
//! the MQTT transport through it.

use crate::corebus_client::{read_frame, CoreBus, CoreBusClientError};
use fleet_provisioning_core::corebus::{self, Response};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::fmt;
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::{Duration, Instant};

/// Interface name of the iotcored this tool starts, as in Greengrass Lite.
pub const INTERFACE: &str = "iotcoredfleet";

/// Environment variable with the socket folder of the test bed's iotcored
/// stand-in. Greengrass Lite's iotcored ignores it.
pub const SOCKET_DIR_ENV: &str = "GG_CORE_BUS_SOCKET_DIR";

/// Time iotcored gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A failure to start iotcored.
#[derive(Debug)]
pub struct SpawnError {
    path: PathBuf,
    source: io::Error,
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot start iotcored at {}: {}; check --iotcored-path",
            self.path.display(),
            self.source
        )
    }
}

impl std::error::Error for SpawnError {}

/// Returns a random UUID (version 4) in its text form, used as the MQTT
/// client id so that no two runs share a session.
pub fn random_client_id() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

/// The arguments iotcored is started with.
pub struct IotcoredArgs<'a> {
    /// Executable.
    pub path: &'a Path,
    /// IoT Core endpoint.
    pub endpoint: &'a str,
    /// MQTT client id.
    pub client_id: &'a str,
    /// Root CA.
    pub root_ca: &'a Path,
    /// Claim certificate.
    pub claim_cert: &'a Path,
    /// Claim key.
    pub claim_key: &'a Path,
    /// Core-bus socket folder.
    pub socket_dir: &'a Path,
}

/// A running iotcored, stopped when dropped.
pub struct Iotcored {
    child: Option<Child>,
    exit_status: Option<ExitStatus>,
}

impl Iotcored {
    /// Starts iotcored as Greengrass Lite's C tool does:
    /// `-n iotcoredfleet -e ENDPOINT -i CLIENT_ID -r ROOT_CA -c CERT -k KEY`.
    pub fn spawn(args: &IotcoredArgs<'_>) -> Result<Self, SpawnError> {
        let mut command = Command::new(args.path);
        command
            .arg("-n")
            .arg(INTERFACE)
            .arg("-e")
            .arg(args.endpoint)
            .arg("-i")
            .arg(args.client_id)
            .arg("-r")
            .arg(args.root_ca)
            .arg("-c")
            .arg(args.claim_cert)
            .arg("-k")
            .arg(args.claim_key)
            .env(SOCKET_DIR_ENV, args.socket_dir)
            .stdin(Stdio::null())
            .process_group(0);
        set_parent_death_signal(&mut command);
        let child = command.spawn().map_err(|source| SpawnError {
            path: args.path.to_owned(),
            source,
        })?;
        Ok(Iotcored {
            child: Some(child),
            exit_status: None,
        })
    }

    /// Returns the process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Returns the exit status if iotcored has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit_status.is_none() {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.exit_status = Some(status);
                }
            }
        }
        self.exit_status
    }

    /// Stops iotcored: SIGTERM, then SIGKILL after a grace period. Safe to
    /// call more than once.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if self.exit_status.is_some() {
            return;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        let pid = i32::try_from(child.id()).ok().map(Pid::from_raw);
        if let Some(pid) = pid {
            if let Err(error) = kill(pid, Signal::SIGTERM) {
                log::warn!("sending SIGTERM to iotcored (pid {pid}) failed: {error}");
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(status)) => {
                    log::debug!("iotcored stopped: {status}");
                    return;
                }
                // Each run waits up to one poll interval past iotcored's
                // exit, so the interval is short; polling is cheap.
                Ok(None) => thread::sleep(Duration::from_millis(1)),
                Err(_) => break,
            }
        }
        log::warn!("iotcored did not stop within {STOP_GRACE:?} of SIGTERM; killing it");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Iotcored {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Makes the kernel send SIGTERM to iotcored if this process dies first, so
/// that a killed run never leaves iotcored connected with the claim
/// certificate.
#[allow(unsafe_code)]
fn set_parent_death_signal(command: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes the prctl system call, which is async-signal-safe.
    unsafe {
        command
            .pre_exec(|| nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(io::Error::from));
    }
}

/// What the transport reports to the run loop.
#[derive(Debug)]
pub enum TransportEvent {
    /// The MQTT connection went up or down.
    Connection(bool),
    /// A message arrived on a subscribed filter.
    Message {
        /// The topic.
        topic: String,
        /// The payload.
        payload: Vec<u8>,
    },
    /// A subscription ended: iotcored closed it or sent something invalid.
    SubscriptionEnded {
        /// The filter, or `connection_status`.
        subscription: String,
        /// Why, if it was an error.
        error: Option<String>,
    },
}

/// MQTT through iotcored's `aws_iot_mqtt` interface.
pub struct IotcoredTransport {
    bus: CoreBus,
    events_tx: Sender<TransportEvent>,
    events_rx: Receiver<TransportEvent>,
    open_streams: Vec<UnixStream>,
}

impl IotcoredTransport {
    /// Returns a transport over the iotcored socket in `bus`'s folder.
    pub fn new(bus: CoreBus) -> Self {
        let (events_tx, events_rx) = mpsc::channel();
        IotcoredTransport {
            bus,
            events_tx,
            events_rx,
            open_streams: Vec::new(),
        }
    }

    /// Subscribes to `connection_status`. It stays open until iotcored
    /// stops, because closing it early can deadlock Greengrass Lite 2.6.0's
    /// iotcored.
    pub fn watch_connection(&mut self) -> Result<(), CoreBusClientError> {
        let (stream, path) = self
            .bus
            .subscribe(INTERFACE, corebus::encode_connection_status)?;
        self.spawn_reader(stream, path, "connection_status".to_owned(), true)
    }

    /// Subscribes to `filter` virtually: iotcored sends no MQTT SUBSCRIBE,
    /// as AWS IoT Core delivers fleet provisioning replies to the requesting
    /// connection anyway.
    pub fn subscribe(&mut self, filter: &str) -> Result<(), CoreBusClientError> {
        let (stream, path) = self.bus.subscribe(INTERFACE, |out| {
            corebus::encode_mqtt_subscribe(&[filter], 1, true, out)
        })?;
        self.spawn_reader(stream, path, filter.to_owned(), false)
    }

    /// Publishes with QoS 1 and returns once iotcored took the message.
    pub fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<(), CoreBusClientError> {
        self.bus.call(INTERFACE, |out| {
            corebus::encode_mqtt_publish(topic, payload, 1, out)
        })?;
        Ok(())
    }

    /// Waits up to `timeout` for the next event.
    pub fn next_event(&self, timeout: Duration) -> Option<TransportEvent> {
        // Disconnected cannot happen while `self` owns a sender; both
        // errors mean no event.
        self.events_rx.recv_timeout(timeout).ok()
    }

    fn spawn_reader(
        &mut self,
        stream: UnixStream,
        path: PathBuf,
        subscription: String,
        connection_status: bool,
    ) -> Result<(), CoreBusClientError> {
        let reader = stream
            .try_clone()
            .map_err(|source| CoreBusClientError::Io {
                path: path.clone(),
                source,
            })?;
        self.open_streams.push(stream);
        let events = self.events_tx.clone();
        thread::spawn(move || read_events(reader, path, subscription, connection_status, events));
        Ok(())
    }
}

impl Drop for IotcoredTransport {
    fn drop(&mut self) {
        for stream in &self.open_streams {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

fn read_events(
    mut stream: UnixStream,
    path: PathBuf,
    subscription: String,
    connection_status: bool,
    events: Sender<TransportEvent>,
) {
    let error = loop {
        let frame = match read_frame(&mut stream, &path, None) {
            Ok(Some(frame)) => frame,
            Ok(None) => break None,
            Err(error) => break Some(error.to_string()),
        };
        let event = match frame.response() {
            Ok(Response::Value(value)) if connection_status => match value.as_bool() {
                Some(up) => TransportEvent::Connection(up),
                None => {
                    break Some(format!(
                        "connection_status event is a {}",
                        value.type_name()
                    ))
                }
            },
            Ok(Response::Value(value)) => match corebus::parse_mqtt_event(&value) {
                Ok(message) => TransportEvent::Message {
                    topic: message.topic.to_owned(),
                    payload: message.payload.to_vec(),
                },
                Err(error) => break Some(format!("invalid subscription event: {error}")),
            },
            Ok(Response::Error(code)) => break Some(format!("iotcored sent error {code}")),
            Ok(Response::Accepted) => continue,
            Err(error) => break Some(format!("invalid frame: {error}")),
        };
        if events.send(event).is_err() {
            return;
        }
    };
    let _ = events.send(TransportEvent::SubscriptionEnded {
        subscription,
        error,
    });
}
