//! The direct MQTT transport: this process talks MQTT 5 to AWS IoT Core
//! itself, with minimq over an Mbed TLS 1.2 session authenticated by the
//! claim certificate, optionally through an HTTP CONNECT proxy. No iotcored
//! is started.
//!
//! minimq is async and borrows its packet buffers, so the session lives on
//! a worker thread that owns the buffers, the TLS stream and the
//! reconnection loop. [`DirectLink`] is the [`Transport`] the provisioning
//! run drives; it passes commands to the worker and receives its events
//! over channels, as the iotcored transport does with its reader threads.

mod proxy;
mod tls;
mod worker;

use worker::Worker;

use crate::provision::{check_signal, RunError};
use fleet_provisioning_core::fleet::MAX_REQUEST_PAYLOAD_LEN;
use fleet_provisioning_core::transport::{Transport, TransportEvent};
use std::future::Future;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub use tls::alpn_for_port;

/// Keep-alive interval sent in CONNECT, in seconds.
const KEEP_ALIVE_S: u16 = 30;

/// Largest inbound MQTT packet: a CreateCertificateFromCsr reply contains a
/// certificate of up to 4 KiB and an ownership token of up to 2 KiB, a
/// RegisterThing reply the template's device configuration. CONNECT
/// announces this size as Maximum Packet Size, so an MQTT 5 broker drops a
/// larger message instead of sending it.
// NOTE: a template whose deviceConfiguration makes the RegisterThing reply
// larger than this ends in a response timeout.
const RX_BUFFER_LEN: usize = 16 * 1024;

/// Outbound packets: the largest request plus topic, header and the
/// SUBSCRIBE packets kept until acknowledged.
const TX_BUFFER_LEN: usize = MAX_REQUEST_PAYLOAD_LEN + 4 * 1024;

/// Maximum wait of the run loop, so that a signal is noticed promptly.
const POLL_SLICE: Duration = Duration::from_millis(50);

/// Delay before the first reconnection attempt; it doubles up to
/// [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_secs(1);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(8);

/// Time the worker gets to send DISCONNECT when the run ends.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The time source minimq reads through embassy-time. Wake-ups are not
/// needed because every future here is polled again at least every
/// [`tls::READ_SLICE`], so `schedule_wake` does nothing.
mod clock {
    // `time_driver_impl!` exports the two driver functions with
    // `#[unsafe(no_mangle)]`, which is how embassy-time finds them.
    #![allow(unsafe_code)]

    use std::sync::OnceLock;
    use std::task::Waker;
    use std::time::Instant;

    struct MonotonicClock;

    fn start() -> Instant {
        static START: OnceLock<Instant> = OnceLock::new();
        *START.get_or_init(Instant::now)
    }

    impl embassy_time_driver::Driver for MonotonicClock {
        fn now(&self) -> u64 {
            let nanos = start().elapsed().as_nanos();
            let ticks =
                nanos.saturating_mul(u128::from(embassy_time_driver::TICK_HZ)) / 1_000_000_000;
            u64::try_from(ticks).unwrap_or(u64::MAX)
        }

        fn schedule_wake(&self, _at: u64, _waker: &Waker) {}
    }

    embassy_time_driver::time_driver_impl!(static CLOCK: MonotonicClock = MonotonicClock);
}

/// Builds a claim connection failure that another attempt would repeat,
/// such as a server certificate that fails verification.
fn fatal(reason: String) -> RunError {
    RunError::ClaimConnection {
        reason,
        retryable: false,
    }
}

/// Polls `future` once; futures here never rely on their waker.
fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

/// Settings of the direct transport's connection.
pub struct DirectOptions<'a> {
    /// AWS IoT Core data endpoint host name.
    pub endpoint: &'a str,
    /// TCP port: 8883, or 443 with ALPN.
    pub port: u16,
    /// MQTT client id.
    pub client_id: &'a str,
    /// Root CA the server certificate must chain to.
    pub root_ca: &'a Path,
    /// Claim certificate.
    pub claim_cert: &'a Path,
    /// Claim private key.
    pub claim_key: &'a Path,
    /// Limit of each connection attempt (TCP, proxy, TLS, CONNACK).
    pub connect_timeout: Duration,
    /// Limit of a subscription's SUBACK.
    pub response_timeout: Duration,
}

/// Channel for a command's result: `Err` contains a fatal reason.
type Answer = Sender<Result<(), String>>;

enum Command {
    Subscribe {
        filter: String,
        done: Answer,
    },
    Publish {
        topic: String,
        payload: Vec<u8>,
        done: Answer,
    },
}

enum WorkerEvent {
    Connection(bool),
    Message {
        topic: String,
        payload: Vec<u8>,
    },
    /// The worker stopped for good. The text states the reason and the fix.
    Fatal(String),
}

/// MQTT straight to AWS IoT Core, driven by a worker thread.
pub struct DirectLink {
    commands: Sender<Command>,
    /// Write end of the worker's wake socket: a byte makes the worker look
    /// at its commands and stop flag at once instead of after its read
    /// slice.
    wake: UnixStream,
    events: Receiver<WorkerEvent>,
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
    target: String,
    started: Instant,
    response_timeout: Duration,
    message: Option<(String, Vec<u8>)>,
}

impl DirectLink {
    /// Reads the credentials and the proxy settings and starts connecting
    /// in the background. `started` is the run's time origin.
    pub fn start(options: &DirectOptions<'_>, started: Instant) -> Result<DirectLink, RunError> {
        let credentials =
            tls::Credentials::read(options.root_ca, options.claim_cert, options.claim_key)
                .map_err(|error| RunError::LocalIo(error.to_string()))?;
        let proxy = proxy::from_env(options.endpoint).map_err(|error| fatal(error.to_string()))?;
        let target = format!("{}:{}", options.endpoint, options.port);
        match &proxy {
            Some(proxy) => log::info!(
                "connecting to {target} through the HTTP proxy {proxy} as client id {}",
                options.client_id
            ),
            None => log::info!("connecting to {target} as client id {}", options.client_id),
        }

        let (wake, wake_reader) = UnixStream::pair()
            .and_then(|(writer, reader)| {
                writer.set_nonblocking(true)?;
                reader.set_nonblocking(true)?;
                Ok((writer, reader))
            })
            .map_err(|error| {
                RunError::LocalIo(format!("creating a socket pair failed: {error}"))
            })?;
        let (commands_tx, commands_rx) = mpsc::channel();
        let (events_tx, events_rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            endpoint: options.endpoint.to_owned(),
            port: options.port,
            target: target.clone(),
            client_id: options.client_id.to_owned(),
            credentials,
            proxy,
            connect_timeout: options.connect_timeout,
            stop: Arc::clone(&stop),
            commands: commands_rx,
            wake: Arc::new(wake_reader),
            events: events_tx,
            filters: Vec::new(),
            waiting_subscribes: Vec::new(),
        };
        let handle = thread::Builder::new()
            .name("mqtt-direct".to_owned())
            .spawn(move || worker.run())
            .map_err(|error| {
                RunError::LocalIo(format!("starting the MQTT thread failed: {error}"))
            })?;
        Ok(DirectLink {
            commands: commands_tx,
            wake,
            events: events_rx,
            stop,
            worker: Some(handle),
            target,
            started,
            response_timeout: options.response_timeout,
            message: None,
        })
    }

    fn wake_worker(&self) {
        // A full socket buffer already contains a wake-up.
        let _ = (&self.wake).write(&[1]);
    }

    /// Returns the reason the worker gave for stopping, or a generic one.
    /// The worker sends its reason just before it exits, so this waits for
    /// the event channel to close.
    fn worker_failure(&self) -> RunError {
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(remaining) {
                Ok(WorkerEvent::Fatal(reason)) => return fatal(reason),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        RunError::connection(format!(
            "the MQTT connection to {} stopped unexpectedly",
            self.target
        ))
    }

    /// Sends `command` and waits at most `limit` for its result.
    fn request(
        &self,
        command: Command,
        answer: &Receiver<Result<(), String>>,
        what: &str,
        limit: Duration,
    ) -> Result<(), RunError> {
        if self.commands.send(command).is_err() {
            return Err(self.worker_failure());
        }
        self.wake_worker();
        let deadline = Instant::now() + limit;
        loop {
            check_signal()?;
            match answer.recv_timeout(POLL_SLICE) {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(reason)) => return Err(fatal(reason)),
                Err(RecvTimeoutError::Timeout) if Instant::now() >= deadline => {
                    return Err(RunError::connection(format!(
                        "{what} at {} got no response within {} s; check the network",
                        self.target,
                        limit.as_secs()
                    )))
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err(self.worker_failure()),
            }
        }
    }
}

impl Drop for DirectLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake_worker();
        let Some(worker) = self.worker.take() else {
            return;
        };
        let deadline = Instant::now() + STOP_GRACE;
        while !worker.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        if worker.is_finished() {
            let _ = worker.join();
        } else {
            // A DNS lookup or TCP connect cannot be interrupted; the thread
            // ends with the process.
            log::debug!("the MQTT thread did not stop within {STOP_GRACE:?}; leaving it");
        }
    }
}

impl Transport for DirectLink {
    type Error = RunError;

    /// Subscribes for real and returns once the broker sent SUBACK.
    fn subscribe(&mut self, filter: &str) -> Result<(), RunError> {
        log::debug!("subscribing to {filter}");
        let (done, answer) = mpsc::channel();
        let command = Command::Subscribe {
            filter: filter.to_owned(),
            done,
        };
        let what = format!("subscribing to {filter}");
        self.request(command, &answer, &what, self.response_timeout)
    }

    /// Publishes with QoS 1 and returns once the packet is written; a
    /// PUBACK with an error code ends the run from the worker.
    fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<(), RunError> {
        let (done, answer) = mpsc::channel();
        let command = Command::Publish {
            topic: topic.to_owned(),
            payload: payload.to_vec(),
            done,
        };
        let what = format!("publishing to {topic}");
        self.request(command, &answer, &what, self.response_timeout)
    }

    fn next_event(&mut self, deadline_ms: u64) -> Result<Option<TransportEvent<'_>>, RunError> {
        let deadline = self.started + Duration::from_millis(deadline_ms);
        loop {
            check_signal()?;
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            match self.events.recv_timeout(POLL_SLICE.min(deadline - now)) {
                Ok(WorkerEvent::Connection(up)) => {
                    let level = if up {
                        log::Level::Info
                    } else {
                        log::Level::Warn
                    };
                    log::log!(
                        level,
                        "MQTT connection to {} is {} after {} ms",
                        self.target,
                        if up { "up" } else { "down" },
                        self.started.elapsed().as_millis()
                    );
                    return Ok(Some(TransportEvent::Connection(up)));
                }
                Ok(WorkerEvent::Message { topic, payload }) => {
                    log::debug!("message on {topic} ({} bytes)", payload.len());
                    let (topic, payload) = self.message.insert((topic, payload));
                    return Ok(Some(TransportEvent::Message { topic, payload }));
                }
                Ok(WorkerEvent::Fatal(reason)) => return Err(fatal(reason)),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err(self.worker_failure()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn clock_driver_advances_in_ticks() {
        let before = embassy_time_driver::now();
        std::thread::sleep(Duration::from_millis(20));
        let elapsed_ticks = embassy_time_driver::now() - before;
        let elapsed_ms = elapsed_ticks * 1000 / embassy_time_driver::TICK_HZ;
        assert!(
            (20..1000).contains(&elapsed_ms),
            "the clock advanced {elapsed_ms} ms during a 20 ms sleep"
        );
    }
}
