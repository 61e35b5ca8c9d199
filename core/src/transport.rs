//! The seams between the provisioning logic and a platform: an MQTT
//! [`Transport`], a [`Platform`] for time, keys and storage, and [`run`],
//! the one loop that drives [`Provisioner`] over them.
//!
//! Every transport (Greengrass Lite's iotcored over the core bus, a direct
//! MQTT connection, a firmware network stack) implements [`Transport`], so
//! the provisioning steps exist once, here and in [`crate::machine`].

use crate::fleet::{CertificateIssued, ThingRegistered, MAX_CSR_PEM_LEN};
use crate::machine::{Action, Event, Provisioner, Step};
use core::fmt;

/// Something that happened on the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportEvent<'a> {
    /// The MQTT connection went up (`true`) or down (`false`).
    Connection(bool),
    /// A message arrived on a subscribed filter.
    Message {
        /// The topic it arrived on.
        topic: &'a str,
        /// Its payload.
        payload: &'a [u8],
    },
}

/// An MQTT connection to AWS IoT Core, as the provisioning steps use it.
pub trait Transport {
    /// A failure that ends the run, such as a closed connection.
    type Error: fmt::Display;

    /// Subscribes to `filter` and returns once the subscription is in place.
    fn subscribe(&mut self, filter: &str) -> Result<(), Self::Error>;

    /// Publishes `payload` to `topic` with QoS 1 and returns once the
    /// connection took it.
    fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<(), Self::Error>;

    /// Waits for the next event until the monotonic time `deadline_ms` (the
    /// clock of [`Platform::now_ms`]) and returns `Ok(None)` when the
    /// deadline passes first. The first event after the start must report
    /// the connection state.
    fn next_event(&mut self, deadline_ms: u64) -> Result<Option<TransportEvent<'_>>, Self::Error>;
}

/// What the provisioning steps need from the device besides MQTT.
pub trait Platform {
    /// A failure that ends the run, such as a full disk.
    type Error: fmt::Display;

    /// Returns a monotonic time in milliseconds.
    fn now_ms(&mut self) -> u64;

    /// Generates a private key, stores it, and writes its CSR into
    /// `csr_pem`.
    fn generate_key_and_csr(
        &mut self,
        csr_pem: &mut heapless::String<MAX_CSR_PEM_LEN>,
    ) -> Result<(), Self::Error>;

    /// Records the issued certificate durably, so that a rerun after a
    /// crash registers the thing with it instead of asking for another.
    fn record_certificate(&mut self, certificate: &CertificateIssued) -> Result<(), Self::Error>;

    /// Called before each request is published, for log lines.
    fn on_request(&mut self, step: Step, topic: &str) {
        let _ = (step, topic);
    }

    /// Stores the certificate and records the thing. Provisioning is
    /// complete when this returns `Ok`.
    fn store_credentials(
        &mut self,
        certificate: &CertificateIssued,
        thing: &ThingRegistered,
    ) -> Result<(), Self::Error>;
}

/// Why [`run`] stopped without success.
#[derive(Debug)]
pub enum RunError<T, P> {
    /// The transport failed.
    Transport(T),
    /// The platform failed.
    Platform(P),
    /// The provisioning protocol failed: a rejection, a timeout, an invalid
    /// reply. [`Provisioner::failure`] returns the details, which stay in the
    /// machine so that this error stays small without an allocator.
    Failed,
}

impl<T: fmt::Display, P: fmt::Display> fmt::Display for RunError<T, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Transport(error) => write!(f, "{error}"),
            RunError::Platform(error) => write!(f, "{error}"),
            RunError::Failed => f.write_str("provisioning failed"),
        }
    }
}

/// Runs `machine` to the end over `transport` and `platform`. On success
/// the credentials are stored, and [`Provisioner::thing`] and
/// [`Provisioner::certificate`] return what was provisioned.
pub fn run<T: Transport, P: Platform>(
    machine: &mut Provisioner,
    transport: &mut T,
    platform: &mut P,
) -> Result<(), RunError<T::Error, P::Error>> {
    let mut csr_pem = heapless::String::<MAX_CSR_PEM_LEN>::new();
    let start = platform.now_ms();
    let mut action = machine.handle(start, Event::Start);
    loop {
        action = match action {
            Action::GenerateKeyAndCsr => {
                platform
                    .generate_key_and_csr(&mut csr_pem)
                    .map_err(RunError::Platform)?;
                let now = platform.now_ms();
                machine.handle(now, Event::KeyAndCsrReady { csr_pem: &csr_pem })
            }
            Action::Subscribe { filter } => {
                transport.subscribe(filter).map_err(RunError::Transport)?;
                let now = platform.now_ms();
                machine.handle(now, Event::Subscribed)
            }
            Action::Publish {
                topic,
                payload,
                step,
            } => {
                platform.on_request(step, topic);
                transport
                    .publish(topic, payload)
                    .map_err(RunError::Transport)?;
                let now = platform.now_ms();
                machine.handle(now, Event::Published)
            }
            Action::Wait { deadline_ms } => {
                let event = transport
                    .next_event(deadline_ms)
                    .map_err(RunError::Transport)?;
                let now = platform.now_ms();
                let event = match event {
                    None => Event::Tick,
                    Some(TransportEvent::Connection(up)) => Event::Connection(up),
                    Some(TransportEvent::Message { topic, payload }) => {
                        Event::Message { topic, payload }
                    }
                };
                machine.handle(now, event)
            }
            Action::RecordCertificate { certificate } => {
                platform
                    .record_certificate(certificate)
                    .map_err(RunError::Platform)?;
                let now = platform.now_ms();
                machine.handle(now, Event::CertificateRecorded)
            }
            Action::StoreCredentials { certificate, thing } => {
                platform
                    .store_credentials(certificate, thing)
                    .map_err(RunError::Platform)?;
                let now = platform.now_ms();
                machine.handle(now, Event::CredentialsStored)
            }
            Action::Done { .. } => return Ok(()),
            Action::Failed(_) => return Err(RunError::Failed),
        };
    }
}
