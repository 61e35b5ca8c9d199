//! One provisioning: the core state machine driven over a transport, with
//! retries, the resumable checkpoint, the key, files and configuration.

use crate::corebus_client::{CoreBus, CoreBusClientError};
#[cfg(feature = "direct")]
use crate::direct::{DirectLink, DirectOptions};
use crate::iotcored::{
    self, Iotcored, IotcoredArgs, IotcoredTransport, TransportEvent as IotcoredEvent,
};
use crate::keys::{self, KeyError};
use crate::output::{self, OutputError};
use crate::progress::{self, failpoint, Loaded};
use crate::settings::{Settings, TransportKind, CONFIG_INTERFACE, NUCLEUS_CONFIG};
use crate::signals;
use fleet_provisioning_core::checkpoint::{self, Checkpoint, IssuedRecord};
use fleet_provisioning_core::corebus;
use fleet_provisioning_core::fleet::{CertificateIssued, ThingRegistered};
use fleet_provisioning_core::fleet::{MAX_CSR_PEM_LEN, MAX_TEMPLATE_NAME_LEN};
use fleet_provisioning_core::machine::{Failure, Provisioner, Step};
use fleet_provisioning_core::transport::{
    self, Platform, RunError as CoreRunError, Transport, TransportEvent,
};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
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
    /// The MQTT connection with the claim certificate failed.
    ClaimConnection {
        /// What failed and how to fix it.
        reason: String,
        /// False when a retry cannot help, such as iotcored exiting before
        /// it ever connected, which is how it reports a claim certificate
        /// the endpoint does not accept.
        retryable: bool,
    },
    /// AWS IoT rejected a request.
    Rejected(Box<Failure>),
    /// AWS IoT sent no reply in time, or the connection dropped mid-request.
    Timeout(Box<Failure>),
    /// AWS IoT replied with something unusable.
    InvalidReply(String),
    /// A local file, socket or key operation failed.
    LocalIo(String),
    /// SIGINT or SIGTERM arrived.
    Interrupted(i32),
}

impl RunError {
    /// Returns a retryable claim connection failure.
    pub fn connection(reason: impl Into<String>) -> Self {
        RunError::ClaimConnection {
            reason: reason.into(),
            retryable: true,
        }
    }

    /// Returns whether a later attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            RunError::ClaimConnection { retryable, .. } => *retryable,
            RunError::Rejected(failure) | RunError::Timeout(failure) => failure.is_retryable(),
            RunError::InvalidReply(_) | RunError::LocalIo(_) | RunError::Interrupted(_) => false,
        }
    }
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::ClaimConnection { reason, .. } => {
                write!(f, "claim connection failed: {reason}")
            }
            RunError::Rejected(failure) | RunError::Timeout(failure) => write!(f, "{failure}"),
            RunError::InvalidReply(reason) => write!(f, "{reason}"),
            RunError::LocalIo(reason) => write!(f, "{reason}"),
            RunError::Interrupted(signal) => write!(
                f,
                "stopped by signal {signal}; nothing was recorded as provisioned, and a rerun \
                 resumes from the checkpoint"
            ),
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
        RunError::LocalIo(format!("key operation failed: {error}"))
    }
}

fn map_failure(failure: &Failure) -> RunError {
    match failure {
        Failure::ConnectTimeout { .. } => RunError::connection(failure.to_string()),
        Failure::ResponseTimeout { .. } | Failure::ConnectionLost { .. } => {
            RunError::Timeout(Box::new(failure.clone()))
        }
        Failure::Rejected { .. } => RunError::Rejected(Box::new(failure.clone())),
        Failure::InvalidReply { .. } => RunError::InvalidReply(failure.to_string()),
        Failure::InvalidRequest { .. } | Failure::InvalidInput(_) => {
            RunError::LocalIo(failure.to_string())
        }
    }
}

/// Fails with [`RunError::Interrupted`] once SIGINT or SIGTERM arrived.
pub fn check_signal() -> Result<(), RunError> {
    match signals::received() {
        None => Ok(()),
        Some(signal) => Err(RunError::Interrupted(signal)),
    }
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut file| file.read_exact(&mut bytes));
    match read {
        Ok(()) => u64::from_le_bytes(bytes),
        // Without the entropy device the jitter degrades to the clock,
        // which still differs between devices that booted together.
        Err(_) => {
            u64::from(Instant::now().elapsed().subsec_nanos()) ^ u64::from(std::process::id())
        }
    }
}

/// Sleeps `delay`, waking early with an error when a signal arrives.
fn sleep_unless_signalled(delay: Duration) -> Result<(), RunError> {
    let until = Instant::now() + delay;
    loop {
        check_signal()?;
        let now = Instant::now();
        if now >= until {
            return Ok(());
        }
        std::thread::sleep((until - now).min(POLL_SLICE));
    }
}

/// Provisions with `settings`, talking to the daemons in `bus`, and retries
/// what a later attempt may fix, with exponential backoff and full jitter.
/// Every attempt resumes from the checkpoint of the one before.
pub fn run(settings: &Settings, bus: &CoreBus) -> Result<Provisioned, RunError> {
    let started = Instant::now();
    output::create_output_dir(&settings.output_dir)?;
    let _lock = lock_output_dir(&settings.output_dir)?;
    preflight(settings)?;
    let mut failed_attempts = 0;
    loop {
        let error = match attempt(settings, bus) {
            Ok(provisioned) => return Ok(provisioned),
            Err(error) => error,
        };
        if !error.is_retryable() {
            return Err(error);
        }
        failed_attempts += 1;
        let delay =
            settings
                .retry
                .next_delay_ms(failed_attempts, elapsed_ms(started), random_u64());
        let Some(delay_ms) = delay else {
            log::error!(
                "giving up after {failed_attempts} {} in {} ms (at most {} attempts and {} s; \
                 see --max-attempts and --max-retry-time)",
                if failed_attempts == 1 {
                    "attempt"
                } else {
                    "attempts"
                },
                elapsed_ms(started),
                settings.retry.max_attempts,
                settings.retry.max_total_ms / 1000
            );
            return Err(error);
        };
        log::warn!(
            "attempt {failed_attempts} of {} failed: {error}; retrying in {delay_ms} ms",
            settings.retry.max_attempts
        );
        sleep_unless_signalled(Duration::from_millis(delay_ms))?;
    }
}

/// Takes an exclusive lock on the output folder for the whole run, so that
/// two runs never share a checkpoint or race on the same files. The lock
/// goes with the returned handle, and with the process if it dies.
fn lock_output_dir(dir: &Path) -> Result<Flock<std::fs::File>, RunError> {
    let folder = std::fs::File::open(dir).map_err(|source| OutputError::Read {
        path: dir.to_owned(),
        source,
    })?;
    Flock::lock(folder, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == Errno::EWOULDBLOCK {
            RunError::LocalIo(format!(
                "another fleet-provisioning run is using {}; wait for it to finish",
                dir.display()
            ))
        } else {
            RunError::LocalIo(format!("locking {} failed: {errno}", dir.display()))
        }
    })
}

/// Checks the files this run will write before anything is sent, so that a
/// problem found late does not waste an issued certificate: an existing
/// certificate must be the one the checkpoint recorded, and an existing CSR
/// file must hold a CSR.
fn preflight(settings: &Settings) -> Result<(), RunError> {
    if settings.cert_path.is_dir() {
        return Err(OutputError::NotOurs {
            path: settings.cert_path.clone(),
            what: "certificate (it is a folder)",
        }
        .into());
    }
    if let Ok(existing) = std::fs::read(&settings.cert_path) {
        let recorded = std::fs::read(progress::checkpoint_path(&settings.output_dir))
            .ok()
            .and_then(|bytes| checkpoint::decode(&bytes).ok())
            .and_then(|record| record.issued)
            .is_some_and(|issued| issued.certificate_pem.as_bytes() == existing.as_slice());
        if !recorded {
            return Err(OutputError::NotOurs {
                path: settings.cert_path.clone(),
                what: "certificate",
            }
            .into());
        }
    }
    if let Ok(existing) = std::fs::read(&settings.csr_path) {
        if !existing.starts_with(b"-----BEGIN CERTIFICATE REQUEST-----") {
            return Err(OutputError::NotOurs {
                path: settings.csr_path.clone(),
                what: "certificate signing request",
            }
            .into());
        }
    }
    Ok(())
}

/// What the checkpoint lets this attempt skip.
enum Resume {
    /// Nothing: generate a key and request a certificate.
    Fresh,
    /// The key on disk is this run's: make a new CSR for it.
    Key(Checkpoint),
    /// The certificate was issued and its token is still usable: register
    /// the thing with it.
    Issued(Checkpoint, IssuedRecord),
    /// The thing is registered: only the files and configuration remain.
    Registered(Checkpoint, IssuedRecord, ThingRegistered),
}

/// Reads the checkpoint and decides how much of it this attempt can trust.
fn resume_point(settings: &Settings) -> Result<Resume, RunError> {
    let path = progress::checkpoint_path(&settings.output_dir);
    let mut record = match progress::load(&path)? {
        Loaded::Valid(record) => *record,
        Loaded::Absent => return Ok(Resume::Fresh),
        Loaded::Damaged => return adopt_key(settings, &path),
    };
    let key_matches = match std::fs::read(&settings.key_path) {
        Ok(key_pem) => {
            let key_pem = zeroize::Zeroizing::new(key_pem);
            keys::public_key_fingerprint(&key_pem).ok() == Some(record.key_fingerprint)
        }
        Err(_) => false,
    };
    if !key_matches {
        log::warn!(
            "{} does not hold the key the checkpoint recorded; starting over",
            settings.key_path.display()
        );
        output::remove_file_if_exists(&path)?;
        return Ok(Resume::Fresh);
    }
    if record.template_name.as_str() != settings.template_name {
        // A certificate or thing of the old template is of no use, but the
        // key is this tool's own and stays.
        log::warn!(
            "the checkpoint {} is for template {}, not {}; keeping the key and requesting \
             a new certificate",
            path.display(),
            record.template_name.as_str(),
            settings.template_name
        );
        record.template_name = checkpoint_template_name(settings)?;
        record.issued = None;
        record.thing_name = None;
        progress::save(&path, &record)?;
        return Ok(Resume::Key(record));
    }
    let Some(issued) = record.issued.clone() else {
        log::info!("resuming with the key in {}", settings.key_path.display());
        return Ok(Resume::Key(record));
    };
    if let Some(thing) = record.thing() {
        log::info!(
            "resuming: certificate {} was issued and thing {} registered before the last \
             run stopped",
            issued.certificate_id.as_str(),
            thing.thing_name.as_str()
        );
        return Ok(Resume::Registered(record, issued, thing));
    }
    if issued.token_usable_at(progress::unix_now_s()) {
        log::info!(
            "resuming: certificate {} was issued before the last run stopped; registering \
             the thing with its ownership token",
            issued.certificate_id.as_str()
        );
        return Ok(Resume::Issued(record, issued));
    }
    log::warn!(
        "the ownership token of certificate {} has expired; requesting a new certificate \
         with a fresh CSR",
        issued.certificate_id.as_str()
    );
    record.issued = None;
    progress::save(&path, &record)?;
    Ok(Resume::Key(record))
}

fn checkpoint_template_name(
    settings: &Settings,
) -> Result<heapless::String<MAX_TEMPLATE_NAME_LEN>, RunError> {
    heapless::String::try_from(settings.template_name.as_str()).map_err(|_| {
        RunError::LocalIo(format!(
            "template name {:?} is longer than {MAX_TEMPLATE_NAME_LEN} bytes",
            settings.template_name
        ))
    })
}

/// Continues after a damaged checkpoint. The checkpoint shows that this
/// tool wrote the key beside it, so a valid EC P-256 key there is reused
/// with a fresh CSR; without one the run starts from nothing.
fn adopt_key(settings: &Settings, path: &Path) -> Result<Resume, RunError> {
    let key_pem = match std::fs::read(&settings.key_path) {
        Ok(key_pem) => zeroize::Zeroizing::new(key_pem),
        Err(_) => return Ok(Resume::Fresh),
    };
    let Ok(key_fingerprint) = keys::public_key_fingerprint(&key_pem) else {
        return Ok(Resume::Fresh);
    };
    let template_name = checkpoint_template_name(settings)?;
    let record = Checkpoint {
        key_fingerprint,
        template_name,
        issued: None,
        thing_name: None,
    };
    progress::save(path, &record)?;
    log::info!(
        "reusing the key in {} that the damaged checkpoint was about",
        settings.key_path.display()
    );
    Ok(Resume::Key(record))
}

/// Runs one attempt: resume from the checkpoint, connect, and provision. When
/// RegisterThing rejects an ownership token recorded by an earlier run (it
/// may have been used by a RegisterThing whose reply was lost), the attempt
/// starts once more from a fresh CSR.
fn attempt(settings: &Settings, bus: &CoreBus) -> Result<Provisioned, RunError> {
    match attempt_once(settings, bus) {
        Err(AttemptError::RecordedTokenRejected(error)) => {
            log::warn!(
                "RegisterThing rejected the ownership token recorded by the last run \
                 ({error}); requesting a new certificate with a fresh CSR"
            );
            attempt_once(settings, bus).map_err(AttemptError::into_run_error)
        }
        result => result.map_err(AttemptError::into_run_error),
    }
}

/// How one attempt failed.
enum AttemptError {
    /// Any failure but the next.
    Run(RunError),
    /// RegisterThing rejected a token that this attempt took from the
    /// checkpoint; the checkpoint no longer contains it.
    RecordedTokenRejected(RunError),
}

impl AttemptError {
    fn into_run_error(self) -> RunError {
        match self {
            AttemptError::Run(error) | AttemptError::RecordedTokenRejected(error) => error,
        }
    }
}

impl From<RunError> for AttemptError {
    fn from(error: RunError) -> Self {
        AttemptError::Run(error)
    }
}

fn attempt_once(settings: &Settings, bus: &CoreBus) -> Result<Provisioned, AttemptError> {
    let started = Instant::now();
    let resume = resume_point(settings)?;
    let resumed_with_token = matches!(resume, Resume::Issued(..));
    let mut machine = Provisioner::new(
        &settings.template_name,
        settings.parameters.clone(),
        settings.timeouts,
    )
    .map_err(|error| RunError::LocalIo(error.to_string()))?;
    let checkpoint = match resume {
        Resume::Fresh => None,
        Resume::Key(record) => Some(record),
        Resume::Issued(record, issued) => {
            machine = machine.with_issued_certificate(issued.certificate());
            Some(record)
        }
        Resume::Registered(record, issued, thing) => {
            // The cloud has done its part; no MQTT connection is needed.
            let mut platform = LinuxPlatform::new(settings, bus, started, Some(record));
            let certificate = issued.certificate();
            platform.finish(&certificate, &thing)?;
            return Ok(Provisioned {
                thing_name: thing.thing_name.as_str().to_owned(),
                certificate_id: certificate.certificate_id.as_str().to_owned(),
            });
        }
    };
    let mut platform = LinuxPlatform::new(settings, bus, started, checkpoint);
    let result = match settings.transport {
        TransportKind::Iotcored => {
            provision_over_iotcored(settings, bus, &mut machine, &mut platform)
        }
        #[cfg(feature = "direct")]
        TransportKind::Direct => provision_over_direct(settings, &mut machine, &mut platform),
        // The settings reject this transport in such a build.
        #[cfg(not(feature = "direct"))]
        TransportKind::Direct => Err(RunError::LocalIo(
            "this build has no direct transport".to_owned(),
        )),
    };
    if let Err(RunError::Rejected(failure)) = &result {
        if platform.forget_rejected_token(failure)? && resumed_with_token {
            return result.map_err(AttemptError::RecordedTokenRejected);
        }
    }
    Ok(result?)
}

/// Starts iotcored with the claim certificate and provisions through it.
fn provision_over_iotcored(
    settings: &Settings,
    bus: &CoreBus,
    machine: &mut Provisioner,
    platform: &mut LinuxPlatform<'_>,
) -> Result<Provisioned, RunError> {
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
    .map_err(|error| RunError::ClaimConnection {
        reason: error.to_string(),
        retryable: false,
    })?;
    log::info!(
        "started iotcored (pid {}) as {} with client id {client_id}",
        iotcored.pid().unwrap_or(0),
        iotcored::INTERFACE
    );
    let mut link = IotcoredLink {
        iotcored: &mut iotcored,
        transport: IotcoredTransport::new(bus.clone()),
        watching_connection: false,
        connected_once: false,
        started: platform.started,
        message: None,
    };
    let result = provision_over(&mut link, machine, platform);
    // iotcored stops before the subscriptions close: closing a virtual
    // subscription first makes Greengrass Lite's iotcored send an UNSUBSCRIBE
    // that the broker rejects.
    link.iotcored.stop();
    drop(link);
    result
}

/// Connects to AWS IoT Core from this process, without iotcored, and
/// provisions over that connection.
#[cfg(feature = "direct")]
fn provision_over_direct(
    settings: &Settings,
    machine: &mut Provisioner,
    platform: &mut LinuxPlatform<'_>,
) -> Result<Provisioned, RunError> {
    let client_id = iotcored::random_client_id()
        .map_err(|error| RunError::LocalIo(format!("reading /dev/urandom failed: {error}")))?;
    let options = DirectOptions {
        endpoint: &settings.endpoint,
        port: settings.port,
        client_id: &client_id,
        root_ca: &settings.root_ca,
        claim_cert: &settings.claim_cert,
        claim_key: &settings.claim_key,
        connect_timeout: Duration::from_millis(settings.timeouts.connect_ms),
        response_timeout: Duration::from_millis(settings.timeouts.response_ms),
    };
    let mut link = DirectLink::start(&options, platform.started)?;
    provision_over(&mut link, machine, platform)
}

/// Runs the core state machine over `transport`; shared by every transport.
fn provision_over<T: Transport<Error = RunError>>(
    transport: &mut T,
    machine: &mut Provisioner,
    platform: &mut LinuxPlatform<'_>,
) -> Result<Provisioned, RunError> {
    match transport::run(machine, transport, platform) {
        Ok(()) => {}
        Err(CoreRunError::Transport(error) | CoreRunError::Platform(error)) => return Err(error),
        Err(CoreRunError::Failed) => {
            return Err(match machine.failure() {
                Some(failure) => map_failure(failure),
                None => RunError::LocalIo("provisioning failed without a reason".to_owned()),
            })
        }
    }
    match (machine.certificate(), machine.thing()) {
        (Some(certificate), Some(thing)) => Ok(Provisioned {
            thing_name: thing.thing_name.as_str().to_owned(),
            certificate_id: certificate.certificate_id.as_str().to_owned(),
        }),
        _ => Err(RunError::LocalIo(
            "the provisioning state machine finished without a thing".to_owned(),
        )),
    }
}

/// Time, keys, the checkpoint and storage on Linux.
struct LinuxPlatform<'a> {
    settings: &'a Settings,
    bus: &'a CoreBus,
    started: Instant,
    checkpoint_path: PathBuf,
    checkpoint: Option<Checkpoint>,
}

impl<'a> LinuxPlatform<'a> {
    fn new(
        settings: &'a Settings,
        bus: &'a CoreBus,
        started: Instant,
        checkpoint: Option<Checkpoint>,
    ) -> Self {
        LinuxPlatform {
            settings,
            bus,
            started,
            checkpoint_path: progress::checkpoint_path(&settings.output_dir),
            checkpoint,
        }
    }

    fn save_checkpoint(&self) -> Result<(), RunError> {
        match &self.checkpoint {
            Some(record) => Ok(progress::save(&self.checkpoint_path, record)?),
            None => Ok(()),
        }
    }

    /// Drops the recorded certificate after RegisterThing rejected its
    /// ownership token, so that the next run requests a new certificate
    /// instead of presenting the same token again.
    /// Returns whether it dropped one.
    fn forget_rejected_token(&mut self, failure: &Failure) -> Result<bool, RunError> {
        let Failure::Rejected {
            step: Step::RegisterThing,
            rejection,
        } = failure
        else {
            return Ok(false);
        };
        // NOTE: AWS documents no error code list for RegisterThing; a code
        // that names the token (InvalidCertificateOwnershipToken and the
        // like) is taken to mean the token is spent or invalid.
        if !rejection.error_code.as_str().contains("Token") {
            return Ok(false);
        }
        if let Some(record) = self.checkpoint.as_mut() {
            record.issued = None;
        }
        self.save_checkpoint()?;
        Ok(true)
    }

    /// Generates a new key, records its fingerprint before the key reaches
    /// the disk, then writes it; a key file that no checkpoint claims is
    /// never overwritten.
    fn new_key(&mut self) -> Result<String, RunError> {
        let settings = self.settings;
        if settings.key_path.exists() {
            return Err(OutputError::NotOurs {
                path: settings.key_path.clone(),
                what: "private key",
            }
            .into());
        }
        let generated = keys::generate_key_and_csr(&settings.csr_common_name)?;
        let template_name = checkpoint_template_name(settings)?;
        self.checkpoint = Some(Checkpoint {
            key_fingerprint: keys::public_key_fingerprint(generated.private_key_pem.as_bytes())?,
            template_name,
            issued: None,
            thing_name: None,
        });
        self.save_checkpoint()?;
        failpoint("key-recorded");
        output::write_file_atomic(
            &settings.key_path,
            generated.private_key_pem.as_bytes(),
            0o600,
        )?;
        log::info!(
            "generated an EC P-256 key at {} and a CSR with common name {:?}",
            settings.key_path.display(),
            settings.csr_common_name
        );
        Ok(generated.csr_pem)
    }

    /// Records the thing, then writes the files and configuration and
    /// removes the checkpoint.
    fn finish(
        &mut self,
        certificate: &CertificateIssued,
        thing: &ThingRegistered,
    ) -> Result<(), RunError> {
        if let Some(record) = self.checkpoint.as_mut() {
            record.thing_name = Some(thing.thing_name.clone());
        }
        self.save_checkpoint()?;
        failpoint("thing-recorded");
        store_credentials(self.settings, self.bus, certificate, thing)?;
        output::remove_file_if_exists(&self.checkpoint_path)?;
        Ok(())
    }

    fn csr_for_existing_key(&self) -> Result<String, RunError> {
        let settings = self.settings;
        let key_pem =
            zeroize::Zeroizing::new(std::fs::read(&settings.key_path).map_err(|source| {
                OutputError::Read {
                    path: settings.key_path.clone(),
                    source,
                }
            })?);
        let csr_pem = keys::generate_csr_for_key(&key_pem, &settings.csr_common_name)?;
        log::info!(
            "made a new CSR for the existing key at {}",
            settings.key_path.display()
        );
        Ok(csr_pem)
    }
}

impl Platform for LinuxPlatform<'_> {
    type Error = RunError;

    fn now_ms(&mut self) -> u64 {
        elapsed_ms(self.started)
    }

    /// Writes the key (or reuses the checkpoint's) and the CSR before
    /// anything is sent, so that the key of an issued certificate is on
    /// disk.
    fn generate_key_and_csr(
        &mut self,
        csr_pem: &mut heapless::String<MAX_CSR_PEM_LEN>,
    ) -> Result<(), RunError> {
        let csr = match self.checkpoint {
            Some(_) => self.csr_for_existing_key()?,
            None => self.new_key()?,
        };
        output::write_file_atomic(&self.settings.csr_path, csr.as_bytes(), 0o644)?;
        failpoint("key-written");
        csr_pem.clear();
        csr_pem.push_str(&csr).map_err(|_| {
            RunError::LocalIo(format!(
                "the CSR is {} bytes, more than the {MAX_CSR_PEM_LEN} bytes reserved for it",
                csr.len()
            ))
        })
    }

    fn record_certificate(&mut self, certificate: &CertificateIssued) -> Result<(), RunError> {
        log::info!(
            "AWS IoT issued certificate {}",
            certificate.certificate_id.as_str()
        );
        check_certificate_key(self.settings, certificate)?;
        if let Some(record) = self.checkpoint.as_mut() {
            record.issued = Some(IssuedRecord::new(certificate, progress::unix_now_s()));
        }
        self.save_checkpoint()?;
        failpoint("certificate-recorded");
        Ok(())
    }

    fn on_request(&mut self, step: Step, topic: &str) {
        log::info!("sending {step} request to {topic}");
    }

    fn store_credentials(
        &mut self,
        certificate: &CertificateIssued,
        thing: &ThingRegistered,
    ) -> Result<(), RunError> {
        log::info!("AWS IoT registered thing {}", thing.thing_name.as_str());
        self.finish(certificate, thing)
    }
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// MQTT through the run's own iotcored, which it also watches: an exited
/// iotcored or a signal ends the wait at once.
struct IotcoredLink<'a> {
    iotcored: &'a mut Iotcored,
    transport: IotcoredTransport,
    watching_connection: bool,
    connected_once: bool,
    started: Instant,
    message: Option<(String, Vec<u8>)>,
}

impl Transport for IotcoredLink<'_> {
    type Error = RunError;

    fn subscribe(&mut self, filter: &str) -> Result<(), RunError> {
        log::debug!("subscribing to {filter}");
        self.transport
            .subscribe(filter)
            .map_err(|error| local_bus_error(&error))
    }

    fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<(), RunError> {
        self.transport.publish(topic, payload).map_err(|error| {
            RunError::connection(format!(
                "publishing to {topic} through iotcored failed: {error}"
            ))
        })
    }

    fn next_event(&mut self, deadline_ms: u64) -> Result<Option<TransportEvent<'_>>, RunError> {
        let deadline = self.started + Duration::from_millis(deadline_ms);
        loop {
            check_signal()?;
            if let Some(status) = self.iotcored.exit_status() {
                // Before the first connection, an exit is how iotcored
                // reports a claim certificate or endpoint it cannot use,
                // which a retry would meet again.
                let when = if self.connected_once {
                    "after it had connected"
                } else {
                    "before it connected"
                };
                return Err(RunError::ClaimConnection {
                    reason: format!(
                        "iotcored exited ({status}) {when}; its log above gives the reason (often: \
                         the endpoint rejected the claim certificate, or the endpoint or root \
                         CA is wrong)"
                    ),
                    retryable: self.connected_once,
                });
            }
            if !self.watching_connection {
                match self.transport.watch_connection() {
                    Ok(()) => {
                        self.watching_connection = true;
                        log::debug!("iotcored socket is up after {:?}", self.started.elapsed());
                    }
                    Err(CoreBusClientError::Connect { .. }) => {}
                    Err(error) => return Err(local_bus_error(&error)),
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let slice = if self.watching_connection {
                POLL_SLICE
            } else {
                // Poll the socket often: iotcored creates it a few
                // milliseconds after it starts.
                Duration::from_millis(5)
            };
            match self.transport.next_event(slice.min(deadline - now)) {
                Some(IotcoredEvent::Connection(up)) => {
                    self.connected_once |= up;
                    let level = if up {
                        log::Level::Info
                    } else {
                        log::Level::Debug
                    };
                    log::log!(
                        level,
                        "MQTT connection through iotcored is {} after {} ms",
                        if up { "up" } else { "down" },
                        self.started.elapsed().as_millis()
                    );
                    return Ok(Some(TransportEvent::Connection(up)));
                }
                Some(IotcoredEvent::Message { topic, payload }) => {
                    log::debug!("message on {topic} ({} bytes)", payload.len());
                    let (topic, payload) = self.message.insert((topic, payload));
                    return Ok(Some(TransportEvent::Message { topic, payload }));
                }
                Some(IotcoredEvent::SubscriptionEnded {
                    subscription,
                    error,
                }) => {
                    return Err(RunError::connection(format!(
                        "iotcored ended the {subscription} subscription{}",
                        error.map(|e| format!(": {e}")).unwrap_or_default()
                    )));
                }
                None => {}
            }
        }
    }
}

fn local_bus_error(error: &CoreBusClientError) -> RunError {
    RunError::connection(format!("iotcored request failed: {error}"))
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
/// Fails unless the issued certificate holds the public key of this
/// device's private key.
fn check_certificate_key(
    settings: &Settings,
    certificate: &CertificateIssued,
) -> Result<(), RunError> {
    let key_pem = zeroize::Zeroizing::new(std::fs::read(&settings.key_path).map_err(|source| {
        OutputError::Read {
            path: settings.key_path.clone(),
            source,
        }
    })?);
    let matches = keys::public_key_matches(&key_pem, certificate.certificate_pem.as_bytes())
        .map_err(|error| {
            RunError::InvalidReply(format!("the issued certificate is invalid: {error}"))
        })?;
    if matches {
        Ok(())
    } else {
        Err(RunError::InvalidReply(format!(
            "certificate {} does not hold the public key of {}",
            certificate.certificate_id.as_str(),
            settings.key_path.display()
        )))
    }
}

/// Fails with [`OutputError::NotOurs`] when `path` exists with other
/// contents than `contents`: a run overwrites only what it wrote itself.
fn ensure_absent_or_same(path: &Path, contents: &[u8], what: &'static str) -> Result<(), RunError> {
    match std::fs::read(path) {
        Ok(existing) if existing == contents => Ok(()),
        Ok(_) => Err(OutputError::NotOurs {
            path: path.to_owned(),
            what,
        }
        .into()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(OutputError::Read {
            path: path.to_owned(),
            source,
        }
        .into()),
    }
}

fn store_credentials(
    settings: &Settings,
    bus: &CoreBus,
    certificate: &CertificateIssued,
    thing: &ThingRegistered,
) -> Result<(), RunError> {
    check_certificate_key(settings, certificate)?;
    ensure_absent_or_same(
        &settings.cert_path,
        certificate.certificate_pem.as_bytes(),
        "certificate",
    )?;
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
    failpoint("files-written");
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
    failpoint("config-partial");
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
