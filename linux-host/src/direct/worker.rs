//! The worker thread of the direct transport: it owns the MQTT session's
//! buffers and TLS stream, connects and reconnects, and serves the
//! commands of [`super::DirectLink`].

use super::{
    alpn_for_port, poll_once, proxy, tls, Answer, Command, WorkerEvent, FIRST_RETRY_DELAY,
    KEEP_ALIVE_S, MAX_RETRY_DELAY, POLL_SLICE, RX_BUFFER_LEN, STOP_GRACE, TX_BUFFER_LEN,
};
use minimq::{
    Buffers, ConfigBuilder, Connection, Op, PeerError, Publication, QoS, Session,
    SubscriptionOptions, TopicFilter,
};
use std::future::Future;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::task::Poll;
use std::thread;
use std::time::{Duration, Instant};

/// A SUBSCRIBE sent and not yet acknowledged.
struct PendingSubscribe {
    op: Op,
    filter: String,
    done: Answer,
}

/// End of one connection attempt or session.
enum Outcome {
    /// The run is ending.
    Stopped,
    /// Another attempt may succeed.
    Retry(String),
    /// No attempt can succeed without a configuration change, which the
    /// text names.
    Fatal(String),
}

type TlsConnection<'s, 'b> = Connection<'s, 'b, tls::TlsStream>;

/// The thread that owns the MQTT session.
pub(super) struct Worker {
    pub(super) endpoint: String,
    pub(super) port: u16,
    pub(super) target: String,
    pub(super) client_id: String,
    pub(super) credentials: tls::Credentials,
    pub(super) proxy: Option<proxy::Proxy>,
    pub(super) connect_timeout: Duration,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) commands: Receiver<Command>,
    /// Read end of the wake socket, given to each TLS stream.
    pub(super) wake: Arc<UnixStream>,
    pub(super) events: Sender<WorkerEvent>,
    /// Filters subscribed or requested; they are subscribed again after a
    /// reconnection.
    pub(super) filters: Vec<String>,
    /// Subscribe requests made while disconnected.
    pub(super) waiting_subscribes: Vec<Answer>,
}

impl Worker {
    pub(super) fn run(mut self) {
        let config = match tls::client_config(&self.credentials, alpn_for_port(self.port)) {
            Ok(config) => Arc::new(config),
            Err(error) => {
                let _ = self.events.send(WorkerEvent::Fatal(error.to_string()));
                return;
            }
        };
        let mut rx = vec![0u8; RX_BUFFER_LEN];
        let mut tx = vec![0u8; TX_BUFFER_LEN];
        let mut retry_delay = FIRST_RETRY_DELAY;
        loop {
            let mut was_up = false;
            let outcome = match self.open_stream(&config) {
                Ok(stream) => self.run_session(&mut rx, &mut tx, stream, &mut was_up),
                Err(outcome) => outcome,
            };
            if was_up {
                retry_delay = FIRST_RETRY_DELAY;
            }
            match outcome {
                Outcome::Stopped => return,
                Outcome::Fatal(reason) => {
                    let _ = self.events.send(WorkerEvent::Fatal(reason));
                    return;
                }
                Outcome::Retry(reason) => {
                    if was_up && self.events.send(WorkerEvent::Connection(false)).is_err() {
                        return;
                    }
                    log::warn!("{reason}; retrying in {} s", retry_delay.as_secs());
                    if !self.wait_offline(retry_delay) {
                        return;
                    }
                    retry_delay = (retry_delay * 2).min(MAX_RETRY_DELAY);
                }
            }
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Waits `delay` while disconnected, handling commands. Returns false
    /// when the run is ending.
    fn wait_offline(&mut self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        while Instant::now() < until {
            if self.stopping() {
                return false;
            }
            match self.commands.recv_timeout(POLL_SLICE) {
                Ok(command) => self.handle_offline_command(command),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
        true
    }

    fn handle_offline_command(&mut self, command: Command) {
        match command {
            Command::Subscribe { filter, done } => {
                if !self.filters.contains(&filter) {
                    self.filters.push(filter);
                }
                self.waiting_subscribes.push(done);
            }
            // The connection is down, so the provisioning run publishes
            // again once it is back; the message is dropped here.
            Command::Publish { topic, done, .. } => {
                log::debug!("not connected; dropped the publish to {topic}");
                let _ = done.send(Ok(()));
            }
        }
    }

    /// Connects TCP, through the proxy if any, and runs the TLS handshake.
    fn open_stream(&self, config: &Arc<mbedtls::ssl::Config>) -> Result<tls::TlsStream, Outcome> {
        let deadline = Instant::now() + self.connect_timeout;
        let (host, port) = match &self.proxy {
            Some(proxy) => (proxy.host.as_str(), proxy.port),
            None => (self.endpoint.as_str(), self.port),
        };
        let addresses = (host, port).to_socket_addrs().map_err(|error| {
            Outcome::Retry(format!(
                "resolving {host} failed: {error}; check the host name and DNS"
            ))
        })?;
        let mut last_error = None;
        let mut tcp = None;
        for address in addresses {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() || self.stopping() {
                break;
            }
            match TcpStream::connect_timeout(&address, remaining) {
                Ok(stream) => {
                    tcp = Some(stream);
                    break;
                }
                Err(error) => last_error = Some(format!("{address}: {error}")),
            }
        }
        if self.stopping() {
            return Err(Outcome::Stopped);
        }
        let Some(mut tcp) = tcp else {
            let reason = last_error.unwrap_or_else(|| "no address".to_owned());
            return Err(Outcome::Retry(format!(
                "connecting to {host}:{port} failed ({reason}); check the {}, the port and \
                 the network",
                if self.proxy.is_some() {
                    "proxy in https_proxy"
                } else {
                    "endpoint"
                }
            )));
        };

        if let Some(proxy) = &self.proxy {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let tunnel = tcp
                .set_read_timeout(Some(remaining.max(Duration::from_millis(1))))
                .map_err(|source| proxy::ProxyError::Io {
                    proxy: proxy.to_string(),
                    source,
                })
                .and_then(|()| proxy::open_tunnel(&mut tcp, proxy, &self.endpoint, self.port));
            match tunnel {
                Ok(()) => log::debug!("the proxy {proxy} opened a tunnel to {}", self.target),
                Err(error @ proxy::ProxyError::Refused { .. }) => {
                    return Err(Outcome::Fatal(error.to_string()))
                }
                Err(error) => return Err(Outcome::Retry(error.to_string())),
            }
        }

        let mut stream = tls::TlsStream::handshake(
            Arc::clone(config),
            tcp,
            &self.endpoint,
            self.port,
            &self.credentials.root_ca_path,
            deadline,
            &self.stop,
        )
        .map_err(|error| match error {
            tls::TlsError::Stopped => Outcome::Stopped,
            error if error.is_permanent() => Outcome::Fatal(error.to_string()),
            error => Outcome::Retry(error.to_string()),
        })?;
        stream.set_wake(Arc::clone(&self.wake));
        log::debug!(
            "TLS 1.2 session with {} up (cipher suite {:#06x}, ALPN {})",
            self.target,
            stream.cipher_suite().unwrap_or(0),
            stream.alpn_protocol().as_deref().unwrap_or("none")
        );
        Ok(stream)
    }

    /// Polls `future` until it finishes, the deadline passes or the run
    /// stops. Reads block for at most [`tls::READ_SLICE`] and writes finish
    /// or fail; a poll that returns at once is followed by a 1 ms sleep, so
    /// this does not spin.
    fn run_until<F: Future>(&self, future: F, deadline: Instant) -> Option<F::Output> {
        let mut future = pin!(future);
        loop {
            let polled_at = Instant::now();
            if let Poll::Ready(output) = poll_once(future.as_mut()) {
                return Some(output);
            }
            if self.stopping() || Instant::now() >= deadline {
                return None;
            }
            if polled_at.elapsed() < Duration::from_millis(1) {
                thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Runs one MQTT session over `stream`: CONNECT, the subscriptions
    /// made before, then commands and inbound messages until it ends.
    fn run_session(
        &mut self,
        rx: &mut [u8],
        tx: &mut [u8],
        stream: tls::TlsStream,
        was_up: &mut bool,
    ) -> Outcome {
        // A fresh session per connection: clean start, nothing to resume.
        let config = match ConfigBuilder::new(Buffers::new(rx, tx)).client_id(&self.client_id) {
            Ok(config) => config.keepalive_interval(KEEP_ALIVE_S),
            Err(error) => {
                return Outcome::Fatal(format!(
                    "the MQTT client id {:?} is invalid: {error}",
                    self.client_id
                ))
            }
        };
        let mut session = Session::new(config);
        let deadline = Instant::now() + self.connect_timeout;
        let mut connection = match self.run_until(session.connect(stream), deadline) {
            None if self.stopping() => return Outcome::Stopped,
            None => {
                return Outcome::Retry(format!(
                    "{} sent no MQTT CONNACK within {} s",
                    self.target,
                    self.connect_timeout.as_secs()
                ))
            }
            Some(Ok(connection)) => connection,
            Some(Err(minimq::Error::Peer(PeerError::Rejected(code)))) => {
                return Outcome::Fatal(format!(
                    "{} rejected the MQTT connection ({code:?}); check that the claim \
                     certificate's policy allows iot:Connect for any client id",
                    self.target
                ))
            }
            Some(Err(error)) => {
                return Outcome::Retry(format!(
                    "the MQTT connection to {} failed: {error}",
                    self.target
                ))
            }
        };

        if let Some(outcome) = self.resubscribe(&mut connection) {
            return outcome;
        }
        if self.events.send(WorkerEvent::Connection(true)).is_err() {
            return Outcome::Stopped;
        }
        *was_up = true;
        self.serve(&mut connection)
    }

    /// Subscribes again to every known filter and replies to the subscribe
    /// requests made while disconnected. Returns how the session ended if
    /// it did.
    fn resubscribe(&mut self, connection: &mut TlsConnection<'_, '_>) -> Option<Outcome> {
        if self.filters.is_empty() {
            return None;
        }
        let filters: Vec<TopicFilter<'_>> = self
            .filters
            .iter()
            .map(|filter| TopicFilter::new(filter).options(qos1()))
            .collect();
        let deadline = Instant::now() + self.connect_timeout;
        let op = match self.run_until(connection.subscribe(&filters, &[]), deadline) {
            Some(Ok(op)) => op,
            Some(Err(error)) => return Some(self.session_error(&error, "subscribing")),
            None => return Some(Outcome::Stopped),
        };
        let joined = self.filters.join(", ");
        if let Some(outcome) = self.wait_for(connection, &op, &joined, deadline) {
            return Some(outcome);
        }
        log::debug!("subscribed again to {joined}");
        for done in self.waiting_subscribes.drain(..) {
            let _ = done.send(Ok(()));
        }
        None
    }

    /// Polls `connection` until `op` is acknowledged, forwarding messages.
    fn wait_for(
        &mut self,
        connection: &mut TlsConnection<'_, '_>,
        op: &Op,
        what: &str,
        deadline: Instant,
    ) -> Option<Outcome> {
        while connection.is_pending(op) {
            if self.stopping() {
                return Some(Outcome::Stopped);
            }
            if Instant::now() >= deadline {
                return Some(Outcome::Retry(format!(
                    "{} did not acknowledge the subscription to {what}",
                    self.target
                )));
            }
            if let Err(outcome) = self.poll_slice(connection, what) {
                return Some(outcome);
            }
        }
        None
    }

    /// Reads for one slice and forwards a message if one arrived.
    /// `context` names the operation in flight for error messages.
    fn poll_slice(
        &mut self,
        connection: &mut TlsConnection<'_, '_>,
        context: &str,
    ) -> Result<(), Outcome> {
        let polled = {
            let future = pin!(connection.poll());
            match poll_once(future) {
                Poll::Pending => Ok(None),
                Poll::Ready(Ok(None)) => Ok(None),
                Poll::Ready(Ok(Some(message))) => Ok(Some((
                    message.topic().to_owned(),
                    message.payload().to_vec(),
                ))),
                Poll::Ready(Err(error)) => Err(error),
            }
        };
        match polled {
            Ok(Some((topic, payload))) => {
                if self
                    .events
                    .send(WorkerEvent::Message { topic, payload })
                    .is_err()
                {
                    return Err(Outcome::Stopped);
                }
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(error) => Err(self.session_error(&error, context)),
        }
    }

    /// Classifies a failure of the live session.
    fn session_error(&self, error: &minimq::Error<std::io::Error>, context: &str) -> Outcome {
        match error {
            minimq::Error::Peer(PeerError::Rejected(code)) => Outcome::Fatal(format!(
                "{} rejected {context} ({code:?}); check that the claim certificate's policy \
                 allows iot:Publish, iot:Subscribe and iot:Receive on the fleet provisioning \
                 topics",
                self.target
            )),
            minimq::Error::Disconnected => {
                Outcome::Retry(format!("{} closed the MQTT connection", self.target))
            }
            minimq::Error::Transport(source) => Outcome::Retry(format!(
                "the connection to {} failed: {source}",
                self.target
            )),
            other => Outcome::Fatal(format!(
                "the MQTT session with {} failed while {context}: {other}",
                self.target
            )),
        }
    }

    /// Serves commands and inbound messages until the session ends.
    fn serve(&mut self, connection: &mut TlsConnection<'_, '_>) -> Outcome {
        let mut subscribing: Vec<PendingSubscribe> = Vec::new();
        let outcome = self.serve_until_end(connection, &mut subscribing);
        for pending in subscribing {
            match &outcome {
                // The filter is in `filters`, so the next connection
                // subscribes to it and replies to the request then.
                Outcome::Retry(_) => self.waiting_subscribes.push(pending.done),
                Outcome::Fatal(reason) => {
                    let _ = pending.done.send(Err(reason.clone()));
                }
                Outcome::Stopped => {}
            }
        }
        outcome
    }

    fn serve_until_end(
        &mut self,
        connection: &mut TlsConnection<'_, '_>,
        subscribing: &mut Vec<PendingSubscribe>,
    ) -> Outcome {
        let mut publishing: Vec<(Op, String)> = Vec::new();
        loop {
            if self.stopping() {
                let deadline = Instant::now() + STOP_GRACE;
                if let Some(Err(error)) = self.run_until(connection.disconnect(), deadline) {
                    log::debug!("sending DISCONNECT to {} failed: {error}", self.target);
                }
                return Outcome::Stopped;
            }
            loop {
                let command = match self.commands.try_recv() {
                    Ok(command) => command,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return Outcome::Stopped,
                };
                let handled = match command {
                    Command::Subscribe { filter, done } => {
                        self.start_subscribe(connection, filter, done, subscribing)
                    }
                    Command::Publish {
                        topic,
                        payload,
                        done,
                    } => self.start_publish(connection, topic, &payload, done, &mut publishing),
                };
                if let Err(outcome) = handled {
                    return outcome;
                }
            }

            let context = match (subscribing.first(), publishing.last()) {
                (Some(pending), _) => format!("the subscription to {}", pending.filter),
                (None, Some((_, topic))) => format!("the publish to {topic}"),
                (None, None) => "a request".to_owned(),
            };
            if let Err(outcome) = self.poll_slice(connection, &context) {
                return outcome;
            }
            subscribing.retain(|pending| {
                if connection.is_pending(&pending.op) {
                    return true;
                }
                log::debug!(
                    "the broker acknowledged the subscription to {}",
                    pending.filter
                );
                let _ = pending.done.send(Ok(()));
                false
            });
            publishing.retain(|(op, _)| connection.is_pending(op));
        }
    }

    fn start_subscribe(
        &mut self,
        connection: &mut TlsConnection<'_, '_>,
        filter: String,
        done: Answer,
        subscribing: &mut Vec<PendingSubscribe>,
    ) -> Result<(), Outcome> {
        if self.filters.contains(&filter) {
            let _ = done.send(Ok(()));
            return Ok(());
        }
        let topic_filter = [TopicFilter::new(&filter).options(qos1())];
        let deadline = Instant::now() + self.connect_timeout;
        match self.run_until(connection.subscribe(&topic_filter, &[]), deadline) {
            Some(Ok(op)) => {
                self.filters.push(filter.clone());
                subscribing.push(PendingSubscribe { op, filter, done });
                Ok(())
            }
            Some(Err(error)) => {
                let outcome = self.session_error(&error, &format!("subscribing to {filter}"));
                if let Outcome::Fatal(reason) = &outcome {
                    let _ = done.send(Err(reason.clone()));
                } else {
                    // Subscribed again after reconnecting.
                    self.filters.push(filter);
                    self.waiting_subscribes.push(done);
                }
                Err(outcome)
            }
            None => Err(Outcome::Stopped),
        }
    }

    fn start_publish(
        &mut self,
        connection: &mut TlsConnection<'_, '_>,
        topic: String,
        payload: &[u8],
        done: Answer,
        publishing: &mut Vec<(Op, String)>,
    ) -> Result<(), Outcome> {
        let publication = Publication::bytes(&topic, payload).qos(QoS::AtLeastOnce);
        let deadline = Instant::now() + self.connect_timeout;
        match self.run_until(connection.publish(publication), deadline) {
            Some(Ok(op)) => {
                if let Some(op) = op {
                    publishing.push((op, topic));
                }
                let _ = done.send(Ok(()));
                Ok(())
            }
            Some(Err(minimq::PubError::Session(error))) => {
                let outcome = self.session_error(&error, &format!("the publish to {topic}"));
                match &outcome {
                    Outcome::Fatal(reason) => {
                        let _ = done.send(Err(reason.clone()));
                    }
                    // The run publishes again once the connection is back.
                    _ => {
                        let _ = done.send(Ok(()));
                    }
                }
                Err(outcome)
            }
            Some(Err(minimq::PubError::Payload(()))) => {
                let reason = format!(
                    "the request to {topic} ({} bytes) does not fit the MQTT buffer of {} bytes",
                    payload.len(),
                    TX_BUFFER_LEN
                );
                let _ = done.send(Err(reason.clone()));
                Err(Outcome::Fatal(reason))
            }
            None => Err(Outcome::Stopped),
        }
    }
}

fn qos1() -> SubscriptionOptions {
    SubscriptionOptions::default().maximum_qos(QoS::AtLeastOnce)
}
