//! The provisioning state machine, free of I/O.
//!
//! The host calls [`Provisioner::handle`] with the current time and one
//! [`Event`], and carries out the [`Action`] it returns: generate a key, wait
//! for the MQTT connection, subscribe, publish, store the credentials. Time is
//! a monotonic millisecond count chosen by the host; the machine only compares
//! it with the deadlines it set itself. The same machine drives every MQTT
//! transport, because subscribing and publishing are actions, not calls.
//!
//! The order of the protocol is the one AWS IoT fleet provisioning defines:
//! CreateCertificateFromCsr, then RegisterThing with the ownership token from
//! the first reply. The reply filters (`<request topic>/+`) stay subscribed
//! until the run ends, because closing a virtual subscription makes
//! Greengrass Lite's iotcored drop its MQTT connection.

use crate::fleet::{
    self, CertificateIssued, FleetError, Rejection, ReplyKind, TemplateParameters, ThingRegistered,
    Topic, MAX_CSR_PEM_LEN, MAX_REQUEST_PAYLOAD_LEN,
};
use core::fmt;

/// Default time to wait for the MQTT connection, in milliseconds. It covers
/// a TLS handshake over a slow cellular link with margin.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 30_000;

/// Default time to wait for each fleet provisioning reply, in milliseconds.
/// The C tool waits 30 seconds; IoT Core replies in well under a second.
pub const DEFAULT_RESPONSE_TIMEOUT_MS: u64 = 30_000;

/// The two calls to AWS IoT, used to name the step that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Step {
    /// `CreateCertificateFromCsr`.
    CreateCertificate,
    /// `RegisterThing`.
    RegisterThing,
}

impl Step {
    /// Returns the AWS API name of the step.
    pub fn api_name(self) -> &'static str {
        match self {
            Step::CreateCertificate => "CreateCertificateFromCsr",
            Step::RegisterThing => "RegisterThing",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.api_name())
    }
}

/// Why a provisioning run stopped without success.
// The rejection is stored inline because the core has no allocator; the
// machine stores one `Failure`, so the size is paid once.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The MQTT connection did not come up in time.
    ConnectTimeout {
        /// How long the machine waited, in milliseconds.
        waited_ms: u64,
    },
    /// No reply to a request arrived in time.
    ResponseTimeout {
        /// The request that got no reply.
        step: Step,
        /// How long the machine waited, in milliseconds.
        waited_ms: u64,
    },
    /// AWS IoT replied on the `rejected` topic.
    Rejected {
        /// The request that was rejected.
        step: Step,
        /// The error AWS IoT returned.
        rejection: Rejection,
    },
    /// A reply arrived on the `accepted` or `rejected` topic but could not be
    /// parsed.
    InvalidReply {
        /// The request whose reply was invalid.
        step: Step,
        /// What was wrong with it.
        error: FleetError,
    },
    /// A request could not be encoded, because a value does not fit.
    InvalidRequest {
        /// The request that could not be encoded.
        step: Step,
        /// What did not fit.
        error: FleetError,
    },
    /// The MQTT connection dropped while a request was in flight and did
    /// not come back in time.
    ConnectionLost {
        /// The request in flight.
        step: Step,
        /// How long the machine waited for the connection, in milliseconds.
        waited_ms: u64,
    },
    /// The host fed an event the protocol cannot continue from, such as a
    /// CSR longer than the buffer.
    InvalidInput(FleetError),
}

impl Failure {
    /// Returns whether a later attempt may succeed: timeouts, a lost
    /// connection, and rejections AWS marks as temporary (throttling, 5xx).
    /// A rejected template, invalid parameters or an invalid reply fail the
    /// same way again.
    pub fn is_retryable(&self) -> bool {
        match self {
            Failure::ConnectTimeout { .. }
            | Failure::ResponseTimeout { .. }
            | Failure::ConnectionLost { .. } => true,
            Failure::Rejected { rejection, .. } => rejection.is_retryable(),
            Failure::InvalidReply { .. }
            | Failure::InvalidRequest { .. }
            | Failure::InvalidInput(_) => false,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::ConnectTimeout { waited_ms } => write!(
                f,
                "the MQTT connection with the claim certificate was not up after {} ms; \
                 check the endpoint, the claim certificate and key, and the network",
                waited_ms
            ),
            Failure::ResponseTimeout { step, waited_ms } => write!(
                f,
                "{step} got no reply within {waited_ms} ms; check that the claim \
                 certificate's policy allows the fleet provisioning topics, or retry"
            ),
            Failure::Rejected { step, rejection } => write!(
                f,
                "{step} was rejected: statusCode {}, errorCode {}, errorMessage {:?}",
                rejection.status_code,
                rejection.error_code.as_str(),
                rejection.error_message.as_str()
            ),
            Failure::InvalidReply { step, error } => {
                write!(f, "{step} returned an invalid reply: {error}")
            }
            Failure::InvalidRequest { step, error } => {
                write!(f, "the {step} request could not be built: {error}")
            }
            Failure::ConnectionLost { step, waited_ms } => write!(
                f,
                "the MQTT connection dropped during {step} and was not back within {waited_ms} ms"
            ),
            Failure::InvalidInput(error) => write!(f, "invalid input: {error}"),
        }
    }
}

/// Everything the host reports to the machine.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// The run starts. Feed this once, first.
    Start,
    /// Nothing happened before the deadline of the last [`Action::Wait`].
    Tick,
    /// The key and CSR of [`Action::GenerateKeyAndCsr`] are ready.
    KeyAndCsrReady {
        /// The CSR in PEM.
        csr_pem: &'a str,
    },
    /// The MQTT connection went up (`true`) or down (`false`).
    Connection(bool),
    /// The subscription of the last [`Action::Subscribe`] is in place.
    Subscribed,
    /// The publish of the last [`Action::Publish`] was handed to the
    /// connection.
    Published,
    /// An MQTT message arrived on one of the subscribed filters.
    Message {
        /// The topic it arrived on.
        topic: &'a str,
        /// Its payload.
        payload: &'a [u8],
    },
    /// The certificate of [`Action::RecordCertificate`] is recorded.
    CertificateRecorded,
    /// The credentials of [`Action::StoreCredentials`] are stored.
    CredentialsStored,
}

/// What the host must do next.
#[derive(Debug)]
pub enum Action<'m> {
    /// Generate a private key and a CSR, then feed
    /// [`Event::KeyAndCsrReady`].
    GenerateKeyAndCsr,
    /// Subscribe to `filter`, then feed [`Event::Subscribed`].
    Subscribe {
        /// The MQTT topic filter.
        filter: &'m str,
    },
    /// Publish `payload` to `topic` with QoS 1, then feed
    /// [`Event::Published`].
    Publish {
        /// The request topic.
        topic: &'m str,
        /// The JSON request.
        payload: &'m [u8],
        /// The request, for log lines.
        step: Step,
    },
    /// Wait for an event until the monotonic time `deadline_ms`, then feed
    /// [`Event::Tick`] if none came.
    Wait {
        /// Monotonic time at which to feed [`Event::Tick`], in milliseconds.
        deadline_ms: u64,
    },
    /// Record the issued certificate durably (it cannot be asked for
    /// again without issuing a second one), then feed
    /// [`Event::CertificateRecorded`].
    RecordCertificate {
        /// The issued certificate.
        certificate: &'m CertificateIssued,
    },
    /// Write the certificate and record the thing, then feed
    /// [`Event::CredentialsStored`].
    StoreCredentials {
        /// The issued certificate.
        certificate: &'m CertificateIssued,
        /// The registered thing.
        thing: &'m ThingRegistered,
    },
    /// The device is provisioned. Every later event returns this again.
    Done {
        /// The issued certificate.
        certificate: &'m CertificateIssued,
        /// The registered thing.
        thing: &'m ThingRegistered,
    },
    /// The run failed. Every later event returns this again.
    Failed(&'m Failure),
}

/// Timeouts of one run, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Time to wait for the MQTT connection after the start.
    pub connect_ms: u64,
    /// Time to wait for each reply after its publish was sent.
    pub response_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            response_ms: DEFAULT_RESPONSE_TIMEOUT_MS,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
enum State {
    Idle,
    GeneratingKey,
    WaitingForConnection,
    SubscribingCreate,
    PublishingCreate,
    AwaitingCreateReply,
    RecordingCertificate,
    SubscribingRegister,
    PublishingRegister,
    AwaitingRegisterReply,
    Reconnecting(Step),
    Storing,
    Done,
    Failed,
}

/// The provisioning state machine. Its size is fixed at compile time; see
/// the capacities in [`crate::fleet`].
#[derive(Debug)]
pub struct Provisioner {
    state: State,
    timeouts: Timeouts,
    connected: bool,
    started_ms: u64,
    deadline_ms: u64,
    register_topic: Topic,
    register_filter: Topic,
    parameters: TemplateParameters,
    csr_pem: heapless::String<MAX_CSR_PEM_LEN>,
    request: heapless::Vec<u8, MAX_REQUEST_PAYLOAD_LEN>,
    certificate: Option<CertificateIssued>,
    thing: Option<ThingRegistered>,
    failure: Option<Failure>,
}

impl Provisioner {
    /// Creates a machine for one run with template `template_name` and its
    /// `parameters`. Fails when the template name is not a valid AWS
    /// provisioning template name.
    pub fn new(
        template_name: &str,
        parameters: TemplateParameters,
        timeouts: Timeouts,
    ) -> Result<Self, FleetError> {
        Ok(Provisioner {
            state: State::Idle,
            timeouts,
            connected: false,
            started_ms: 0,
            deadline_ms: 0,
            register_topic: fleet::register_thing_topic(template_name)?,
            register_filter: fleet::register_thing_filter(template_name)?,
            parameters,
            csr_pem: heapless::String::new(),
            request: heapless::Vec::new(),
            certificate: None,
            thing: None,
            failure: None,
        })
    }

    /// Resumes a run whose certificate was already issued: the machine
    /// skips key generation and CreateCertificateFromCsr and registers the
    /// thing with `certificate`'s ownership token.
    pub fn with_issued_certificate(mut self, certificate: CertificateIssued) -> Self {
        self.certificate = Some(certificate);
        self
    }

    /// Returns the issued certificate once CreateCertificateFromCsr was
    /// accepted.
    pub fn certificate(&self) -> Option<&CertificateIssued> {
        self.certificate.as_ref()
    }

    /// Returns the registered thing once RegisterThing was accepted.
    pub fn thing(&self) -> Option<&ThingRegistered> {
        self.thing.as_ref()
    }

    /// Returns why the run failed, once it has.
    pub fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref()
    }

    /// Returns true once the run ended, with success or failure.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Done | State::Failed)
    }

    /// Feeds one event at monotonic time `now_ms` and returns what the host
    /// must do next.
    pub fn handle(&mut self, now_ms: u64, event: Event<'_>) -> Action<'_> {
        if let Event::Connection(up) = event {
            self.connected = up;
        }
        self.advance(now_ms, event);
        self.action()
    }

    fn advance(&mut self, now_ms: u64, event: Event<'_>) {
        match (self.state, event) {
            (State::Idle, Event::Start) => {
                self.started_ms = now_ms;
                if self.certificate.is_some() {
                    self.deadline_ms = now_ms.saturating_add(self.timeouts.connect_ms);
                    self.state = State::WaitingForConnection;
                    self.check_connection(now_ms);
                } else {
                    self.state = State::GeneratingKey;
                }
            }
            (State::GeneratingKey, Event::KeyAndCsrReady { csr_pem }) => {
                self.csr_pem.clear();
                if self.csr_pem.push_str(csr_pem).is_err() {
                    self.fail(Failure::InvalidInput(FleetError::FieldTooLong {
                        field: "certificateSigningRequest",
                        max: MAX_CSR_PEM_LEN,
                    }));
                    return;
                }
                self.deadline_ms = self.started_ms.saturating_add(self.timeouts.connect_ms);
                self.state = State::WaitingForConnection;
                self.check_connection(now_ms);
            }
            (State::WaitingForConnection, _) => self.check_connection(now_ms),
            (State::SubscribingCreate, Event::Subscribed) => {
                self.request.clear();
                let _ = self.request.resize(MAX_REQUEST_PAYLOAD_LEN, 0);
                match fleet::encode_create_certificate_request(&self.csr_pem, &mut self.request) {
                    Ok(len) => {
                        self.request.truncate(len);
                        self.state = State::PublishingCreate;
                    }
                    Err(error) => self.fail(Failure::InvalidRequest {
                        step: Step::CreateCertificate,
                        error,
                    }),
                }
            }
            (State::PublishingCreate, Event::Published) => {
                self.deadline_ms = now_ms.saturating_add(self.timeouts.response_ms);
                self.state = State::AwaitingCreateReply;
            }
            (State::AwaitingCreateReply, Event::Message { topic, payload }) => {
                self.on_create_reply(topic, payload)
            }
            (State::SubscribingRegister, Event::Subscribed) => self.encode_register_request(),
            (State::PublishingRegister, Event::Published) => {
                self.deadline_ms = now_ms.saturating_add(self.timeouts.response_ms);
                self.state = State::AwaitingRegisterReply;
            }
            (State::AwaitingRegisterReply, Event::Message { topic, payload }) => {
                self.on_register_reply(topic, payload)
            }
            (State::AwaitingCreateReply, Event::Tick) if now_ms >= self.deadline_ms => {
                self.fail(Failure::ResponseTimeout {
                    step: Step::CreateCertificate,
                    waited_ms: self.timeouts.response_ms,
                })
            }
            (State::AwaitingRegisterReply, Event::Tick) if now_ms >= self.deadline_ms => {
                self.fail(Failure::ResponseTimeout {
                    step: Step::RegisterThing,
                    waited_ms: self.timeouts.response_ms,
                })
            }
            (State::RecordingCertificate, Event::CertificateRecorded) => {
                self.state = State::SubscribingRegister
            }
            (State::AwaitingCreateReply, Event::Connection(false)) => {
                self.lose_connection(now_ms, Step::CreateCertificate)
            }
            (State::AwaitingRegisterReply, Event::Connection(false)) => {
                self.lose_connection(now_ms, Step::RegisterThing)
            }
            // The reply to the request in flight may have been lost with the
            // connection, so the same request goes out again.
            (State::Reconnecting(step), Event::Connection(true)) => {
                self.state = match step {
                    Step::CreateCertificate => State::PublishingCreate,
                    Step::RegisterThing => State::PublishingRegister,
                }
            }
            (State::Reconnecting(Step::CreateCertificate), Event::Message { topic, payload }) => {
                self.on_create_reply(topic, payload)
            }
            (State::Reconnecting(Step::RegisterThing), Event::Message { topic, payload }) => {
                self.on_register_reply(topic, payload)
            }
            (State::Reconnecting(step), Event::Tick) if now_ms >= self.deadline_ms => {
                self.fail(Failure::ConnectionLost {
                    step,
                    waited_ms: self.timeouts.connect_ms,
                })
            }
            (State::Storing, Event::CredentialsStored) => self.state = State::Done,
            // Anything else (a message on an unrelated topic, a connection
            // change while a request is in flight, an early tick) leaves the
            // state as it is; the deadlines bound every wait.
            _ => {}
        }
    }

    fn check_connection(&mut self, now_ms: u64) {
        if self.connected {
            self.state = if self.certificate.is_some() {
                State::SubscribingRegister
            } else {
                State::SubscribingCreate
            };
        } else if now_ms >= self.deadline_ms {
            self.fail(Failure::ConnectTimeout {
                waited_ms: self.timeouts.connect_ms,
            });
        }
    }

    fn lose_connection(&mut self, now_ms: u64, step: Step) {
        self.deadline_ms = now_ms.saturating_add(self.timeouts.connect_ms);
        self.state = State::Reconnecting(step);
    }

    fn on_create_reply(&mut self, topic: &str, payload: &[u8]) {
        let step = Step::CreateCertificate;
        match fleet::reply_kind(fleet::CREATE_CERTIFICATE_TOPIC, topic) {
            Some(ReplyKind::Accepted) => match fleet::parse_create_certificate_accepted(payload) {
                Ok(certificate) => {
                    self.certificate = Some(certificate);
                    self.state = State::RecordingCertificate;
                }
                Err(error) => self.fail(Failure::InvalidReply { step, error }),
            },
            Some(ReplyKind::Rejected) => self.on_rejected(step, payload),
            None => {}
        }
    }

    fn encode_register_request(&mut self) {
        let step = Step::RegisterThing;
        let Some(certificate) = self.certificate.as_ref() else {
            self.fail(Failure::InvalidRequest {
                step,
                error: FleetError::MissingField("certificateOwnershipToken"),
            });
            return;
        };
        self.request.clear();
        let _ = self.request.resize(MAX_REQUEST_PAYLOAD_LEN, 0);
        match fleet::encode_register_thing_request(
            &certificate.ownership_token,
            &self.parameters,
            &mut self.request,
        ) {
            Ok(len) => {
                self.request.truncate(len);
                self.state = State::PublishingRegister;
            }
            Err(error) => self.fail(Failure::InvalidRequest { step, error }),
        }
    }

    fn on_register_reply(&mut self, topic: &str, payload: &[u8]) {
        let step = Step::RegisterThing;
        match fleet::reply_kind(&self.register_topic, topic) {
            Some(ReplyKind::Accepted) => match fleet::parse_register_thing_accepted(payload) {
                Ok(thing) => {
                    self.thing = Some(thing);
                    self.state = State::Storing;
                }
                Err(error) => self.fail(Failure::InvalidReply { step, error }),
            },
            Some(ReplyKind::Rejected) => self.on_rejected(step, payload),
            None => {}
        }
    }

    fn on_rejected(&mut self, step: Step, payload: &[u8]) {
        match fleet::parse_rejected(payload) {
            Ok(rejection) => self.fail(Failure::Rejected { step, rejection }),
            Err(error) => self.fail(Failure::InvalidReply { step, error }),
        }
    }

    fn fail(&mut self, failure: Failure) {
        self.failure = Some(failure);
        self.state = State::Failed;
    }

    fn action(&self) -> Action<'_> {
        match self.state {
            State::Idle | State::GeneratingKey => Action::GenerateKeyAndCsr,
            State::WaitingForConnection
            | State::AwaitingCreateReply
            | State::AwaitingRegisterReply
            | State::Reconnecting(_) => Action::Wait {
                deadline_ms: self.deadline_ms,
            },
            State::SubscribingCreate => Action::Subscribe {
                filter: fleet::CREATE_CERTIFICATE_FILTER,
            },
            State::PublishingCreate => Action::Publish {
                topic: fleet::CREATE_CERTIFICATE_TOPIC,
                payload: &self.request,
                step: Step::CreateCertificate,
            },
            State::RecordingCertificate => match &self.certificate {
                Some(certificate) => Action::RecordCertificate { certificate },
                None => Action::Failed(&MISSING_STATE),
            },
            State::SubscribingRegister => Action::Subscribe {
                filter: &self.register_filter,
            },
            State::PublishingRegister => Action::Publish {
                topic: &self.register_topic,
                payload: &self.request,
                step: Step::RegisterThing,
            },
            State::Storing => match (&self.certificate, &self.thing) {
                (Some(certificate), Some(thing)) => Action::StoreCredentials { certificate, thing },
                _ => Action::Failed(&MISSING_STATE),
            },
            State::Done => match (&self.certificate, &self.thing) {
                (Some(certificate), Some(thing)) => Action::Done { certificate, thing },
                _ => Action::Failed(&MISSING_STATE),
            },
            State::Failed => match &self.failure {
                Some(failure) => Action::Failed(failure),
                None => Action::Failed(&MISSING_STATE),
            },
        }
    }
}

/// Returned only if the machine's own bookkeeping is broken; every path that
/// enters a state also stores what that state needs.
static MISSING_STATE: Failure = Failure::InvalidInput(FleetError::MissingField("internal state"));
