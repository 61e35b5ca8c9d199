//! Command-line flags, the `aws.greengrass.fleet_provisioning` configuration
//! read from `gg_config`, and their validation.
//!
//! Everything here runs before the first side effect: a missing, empty or
//! mistyped value is reported here, before iotcored starts or a file is
//! written.

use crate::corebus_client::{response_value, CoreBus, CoreBusClientError};
use crate::keys;
use crate::output::{resolve_owner, Owner};
use clap::Parser;
use fleet_provisioning_core::corebus::{self, GgError};
use fleet_provisioning_core::fleet::{self, TemplateParameters};
use fleet_provisioning_core::machine::Timeouts;
use fleet_provisioning_core::object::Object;
use fleet_provisioning_core::retry::{self, RetryPolicy};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Interface name of the Greengrass Lite configuration daemon.
pub const CONFIG_INTERFACE: &str = "gg_config";
/// Key path of this component's configuration.
pub const COMPONENT_CONFIG: [&str; 3] = [
    "services",
    "aws.greengrass.fleet_provisioning",
    "configuration",
];
/// Key path of the nucleus configuration that receives the endpoints.
pub const NUCLEUS_CONFIG: [&str; 3] = ["services", "aws.greengrass.NucleusLite", "configuration"];
/// Default output folder, as in Greengrass Lite.
pub const DEFAULT_OUTPUT_DIR: &str = "/var/lib/greengrass/credentials";
/// Default endpoint port of the direct transport, AWS IoT Core's MQTT port.
pub const DIRECT_PORT: u16 = 8883;
/// Default CSR subject common name, as in Greengrass Lite.
pub const DEFAULT_CSR_COMMON_NAME: &str = "aws-greengrass-nucleus-lite";

/// Command line. The first seven flags are those of Greengrass Lite's C
/// `fleet-provisioning`; each accepts `-k PATH`, `-kPATH`, `--claim-key PATH`
/// and `--claim-key=PATH`.
#[derive(Debug, Parser)]
#[command(
    name = "fleet-provisioning",
    version,
    about = "Provision this AWS IoT Greengrass Lite device from its claim certificate",
    args_override_self = true
)]
pub struct Cli {
    /// Claim certificate (PEM); overrides claimCertPath
    #[arg(short = 'c', long = "claim-cert", value_name = "PATH")]
    pub claim_cert: Option<PathBuf>,
    /// Claim certificate private key (PEM); overrides claimKeyPath
    #[arg(short = 'k', long = "claim-key", value_name = "PATH")]
    pub claim_key: Option<PathBuf>,
    /// Fleet provisioning template name; overrides templateName
    #[arg(short = 't', long = "template-name", value_name = "NAME")]
    pub template_name: Option<String>,
    /// Template parameters as a JSON object; overrides templateParams
    #[arg(short = 'p', long = "template-params", value_name = "JSON")]
    pub template_params: Option<String>,
    /// AWS IoT Core data endpoint host name; overrides iotDataEndpoint
    #[arg(short = 'e', long = "endpoint", value_name = "HOST")]
    pub endpoint: Option<String>,
    /// Root CA of the endpoint's certificate (PEM); overrides rootCaPath
    #[arg(short = 'r', long = "root-ca-path", value_name = "PATH")]
    pub root_ca_path: Option<PathBuf>,
    /// Folder for the key, certificate and root CA
    #[arg(short = 'o', long = "output-dir", value_name = "PATH")]
    pub output_dir: Option<PathBuf>,
    /// iotcored executable [default: iotcored beside this executable]
    #[arg(long = "iotcored-path", value_name = "PATH")]
    pub iotcored_path: Option<PathBuf>,
    /// Folder of the Greengrass core-bus sockets
    #[arg(
        long = "socket-dir",
        value_name = "PATH",
        default_value = "/run/greengrass"
    )]
    pub socket_dir: PathBuf,
    /// Owner given to the written files, as USER:GROUP
    #[arg(
        long = "owner",
        value_name = "USER:GROUP",
        default_value = "ggcore:ggcore"
    )]
    pub owner: String,
    /// MQTT transport: iotcored (start Greengrass Lite's MQTT daemon) or
    /// direct (connect from this process); overrides transport [default: iotcored]
    #[arg(long = "transport", value_name = "NAME")]
    pub transport: Option<TransportKind>,
    /// TCP port of the endpoint for --transport direct: 8883, or 443 (sent
    /// with ALPN x-amzn-mqtt-ca); overrides port [default: 8883]
    #[arg(long = "port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Time to wait for the MQTT connection, in seconds
    #[arg(long = "connect-timeout", value_name = "SECONDS", default_value_t = 30)]
    pub connect_timeout: u64,
    /// Time to wait for each AWS IoT reply, in seconds
    #[arg(
        long = "response-timeout",
        value_name = "SECONDS",
        default_value_t = 30
    )]
    pub response_timeout: u64,
    /// Attempts in all before giving up on a failure a retry may fix
    /// (throttling, 5xx replies, timeouts, a lost connection); overrides
    /// maxAttempts [default: 5]
    #[arg(long = "max-attempts", value_name = "COUNT")]
    pub max_attempts: Option<u32>,
    /// Latest start of a retry after the first attempt, in seconds;
    /// overrides maxRetryTimeSeconds [default: 300]
    #[arg(long = "max-retry-time", value_name = "SECONDS")]
    pub max_retry_time: Option<u64>,
    /// Delay cap of the first retry in milliseconds; it doubles with each
    /// retry up to 60 s, and the delay is drawn at random below the cap
    #[arg(long = "retry-base-delay", value_name = "MILLISECONDS", default_value_t = retry::DEFAULT_BASE_DELAY_MS)]
    pub retry_base_delay: u64,
    /// Log more (-v debug, -vv trace)
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// How the run reaches AWS IoT Core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportKind {
    /// Through the run's own iotcored, as Greengrass Lite's C tool does.
    Iotcored,
    /// MQTT over TLS from this process, without iotcored.
    Direct,
}

impl TransportKind {
    fn parse(key: &str, text: &str) -> Result<Self, SettingsError> {
        match text {
            "iotcored" => Ok(TransportKind::Iotcored),
            "direct" => Ok(TransportKind::Direct),
            other => Err(invalid(
                key,
                format!("{other:?} is not a transport; use \"iotcored\" or \"direct\""),
            )),
        }
    }
}

/// Everything one provisioning run needs, validated.
#[derive(Debug)]
pub struct Settings {
    /// Claim certificate path.
    pub claim_cert: PathBuf,
    /// Claim key path.
    pub claim_key: PathBuf,
    /// Root CA path, as configured.
    pub root_ca: PathBuf,
    /// IoT Core data endpoint.
    pub endpoint: String,
    /// IoT credentials endpoint, copied to the nucleus configuration.
    pub cred_endpoint: String,
    /// Provisioning template name.
    pub template_name: String,
    /// Template parameters, all as strings.
    pub parameters: TemplateParameters,
    /// CSR subject common name.
    pub csr_common_name: String,
    /// Output folder.
    pub output_dir: PathBuf,
    /// Where the private key goes.
    pub key_path: PathBuf,
    /// Where the certificate goes.
    pub cert_path: PathBuf,
    /// Where the CSR goes while the run lasts.
    pub csr_path: PathBuf,
    /// Where the root CA is copied.
    pub root_ca_copy: PathBuf,
    /// Owner of the written files.
    pub owner: Owner,
    /// iotcored executable; unused by the direct transport.
    pub iotcored_path: PathBuf,
    /// MQTT transport.
    pub transport: TransportKind,
    /// Endpoint TCP port of the direct transport.
    #[cfg_attr(not(feature = "direct"), allow(dead_code))]
    pub port: u16,
    /// Timeouts of the run.
    pub timeouts: Timeouts,
    /// When to retry.
    pub retry: RetryPolicy,
}

/// Outcome of reading the configuration.
#[derive(Debug)]
pub enum Plan {
    /// `claimCertPath` is absent or empty and no `--claim-cert` was given.
    NotConfigured,
    /// `system/certificateFilePath` is set.
    AlreadyProvisioned {
        /// Its value.
        certificate_path: String,
    },
    /// Provision with these settings.
    Provision(Box<Settings>),
}

/// Why the settings could not be loaded.
#[derive(Debug)]
pub enum SettingsError {
    /// A value is missing, empty, of the wrong type or invalid.
    Invalid {
        /// The configuration key or flag.
        key: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The configuration daemon could not be asked.
    ConfigDaemon {
        /// The key being read.
        key: String,
        /// The core-bus failure.
        source: CoreBusClientError,
    },
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SettingsError::Invalid { key, reason } => write!(f, "configuration {key}: {reason}"),
            SettingsError::ConfigDaemon { key, source } => {
                write!(f, "reading configuration {key} failed: {source}")
            }
        }
    }
}

impl std::error::Error for SettingsError {}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// Reads configuration values through `gg_config`.
struct ConfigReader<'a> {
    bus: &'a CoreBus,
}

/// A configuration value copied out of its response frame.
enum ConfigValue {
    Absent,
    Text(String),
    Parameters(Box<TemplateParameters>),
}

impl ConfigReader<'_> {
    fn component_key(name: &str) -> String {
        format!("{}/{}", COMPONENT_CONFIG.join("/"), name)
    }

    /// Reads `key_path`; NOENTRY is `Ok(None)`.
    fn read<T>(
        &self,
        key_path: &[&str],
        convert: impl FnOnce(Object<'_>) -> Result<T, SettingsError>,
    ) -> Result<Option<T>, SettingsError> {
        let key = key_path.join("/");
        log::debug!("reading configuration {key}");
        let result = self.bus.call(CONFIG_INTERFACE, |out| {
            corebus::encode_config_read(key_path, out)
        });
        match result {
            Ok(frame) => match response_value(&frame) {
                Some(value) => convert(value).map(Some),
                None => Err(invalid(key, "the configuration daemon returned no value")),
            },
            Err(error) if error.remote_error() == Some(GgError::Noentry) => Ok(None),
            Err(source) => Err(SettingsError::ConfigDaemon { key, source }),
        }
    }

    /// Reads a string value; absent and empty both give `None`.
    fn read_text(&self, key_path: &[&str]) -> Result<Option<String>, SettingsError> {
        let key = key_path.join("/");
        let value = self.read(key_path, |value| text_value(&key, value))?;
        Ok(value.filter(|text| !text.is_empty()))
    }

    fn component_text(&self, name: &str) -> Result<Option<String>, SettingsError> {
        let mut key_path = COMPONENT_CONFIG.to_vec();
        key_path.push(name);
        self.read_text(&key_path)
    }

    /// Reads a required string; `flag` is the flag that can stand in for
    /// it, if there is one.
    fn required_text(&self, name: &str, flag: Option<&str>) -> Result<String, SettingsError> {
        self.component_text(name)?.ok_or_else(|| {
            let fix = match flag {
                Some(flag) => format!(
                    "is missing or empty; set it in the Greengrass configuration or pass {flag}"
                ),
                None => "is missing or empty; set it in the Greengrass configuration".to_owned(),
            };
            invalid(Self::component_key(name), fix)
        })
    }

    /// Reads a non-negative whole number, given as a number or as text.
    fn component_number(&self, name: &str) -> Result<Option<u64>, SettingsError> {
        let mut key_path = COMPONENT_CONFIG.to_vec();
        key_path.push(name);
        let key = Self::component_key(name);
        self.read(&key_path, |value| {
            let number = match value {
                Object::I64(number) => u64::try_from(number).ok(),
                Object::F64(number) if number >= 0.0 && number.fract() == 0.0 => {
                    Some(number as u64)
                }
                Object::Buf(text) => std::str::from_utf8(text)
                    .ok()
                    .and_then(|text| text.trim().parse().ok()),
                _ => None,
            };
            number.ok_or_else(|| {
                let found = match value {
                    Object::I64(number) => format!("{number}"),
                    Object::F64(number) => format!("{number}"),
                    other => describe_type(&other).to_owned(),
                };
                invalid(
                    key.as_str(),
                    format!("must be a whole number of 0 or more, but it is {found}"),
                )
            })
        })
    }

    fn template_parameters(&self) -> Result<ConfigValue, SettingsError> {
        let mut key_path = COMPONENT_CONFIG.to_vec();
        key_path.push("templateParams");
        let key = Self::component_key("templateParams");
        let value = self.read(&key_path, |value| match value {
            Object::Map(_) => {
                parameters_from_map(&key, value).map(|p| ConfigValue::Parameters(Box::new(p)))
            }
            other => text_value(&key, other).map(ConfigValue::Text),
        })?;
        Ok(value.unwrap_or(ConfigValue::Absent))
    }
}

/// Names the type of a configuration value in the words of JSON, which is
/// how users write the configuration.
fn describe_type(value: &Object<'_>) -> &'static str {
    match value {
        Object::Null => "null",
        Object::Bool(_) => "a boolean",
        Object::I64(_) | Object::F64(_) => "a number",
        Object::Buf(_) => "a string",
        Object::List(_) => "a list",
        Object::Map(_) => "a map",
    }
}

fn text_value(key: &str, value: Object<'_>) -> Result<String, SettingsError> {
    match value {
        Object::Buf(bytes) => {
            String::from_utf8(bytes.to_vec()).map_err(|_| invalid(key, "is not valid UTF-8 text"))
        }
        other => Err(invalid(
            key,
            format!("must be a string, but it is {}", describe_type(&other)),
        )),
    }
}

/// Converts a `templateParams` map: strings as they are, numbers and
/// booleans as their text, because AWS takes every parameter as a string.
fn parameters_from_map(key: &str, value: Object<'_>) -> Result<TemplateParameters, SettingsError> {
    let Some(map) = value.as_map() else {
        return Err(invalid(key, "must be a map"));
    };
    let mut parameters = TemplateParameters::new();
    for (name_bytes, value) in map.iter() {
        let name = std::str::from_utf8(name_bytes)
            .map_err(|_| invalid(key, "has a parameter name that is not UTF-8"))?;
        let text = match value {
            Object::Buf(bytes) => std::str::from_utf8(bytes)
                .map_err(|_| invalid(format!("{key}/{name}"), "is not valid UTF-8 text"))?
                .to_owned(),
            Object::I64(number) => number.to_string(),
            Object::F64(number) if number.is_finite() => number.to_string(),
            Object::Bool(flag) => flag.to_string(),
            other => {
                return Err(invalid(
                    format!("{key}/{name}"),
                    format!(
                        "is {}; template parameters must be strings, numbers or booleans",
                        describe_type(&other)
                    ),
                ))
            }
        };
        parameters
            .push(name, &text)
            .map_err(|error| invalid(format!("{key}/{name}"), error.to_string()))?;
    }
    Ok(parameters)
}

fn check_readable_file(key: &str, path: &Path) -> Result<(), SettingsError> {
    if path.as_os_str().to_string_lossy().starts_with("handle:") {
        return Err(invalid(
            key,
            format!(
                "{} is a TPM handle; this build reads keys from PEM files only",
                path.display()
            ),
        ));
    }
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => File::open(path)
            .map(drop)
            .map_err(|error| invalid(key, format!("cannot open {}: {error}", path.display()))),
        Ok(_) => Err(invalid(
            key,
            format!("{} is not a regular file", path.display()),
        )),
        Err(error) => Err(invalid(
            key,
            format!("cannot read {}: {error}", path.display()),
        )),
    }
}

/// Returns the iotcored beside this executable, as Greengrass Lite does.
fn default_iotcored_path() -> Result<PathBuf, SettingsError> {
    let exe = std::env::current_exe().map_err(|error| {
        invalid(
            "--iotcored-path",
            format!("cannot locate this executable ({error}); pass --iotcored-path"),
        )
    })?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    Ok(dir.join("iotcored"))
}

fn check_executable(key: &str, path: &Path) -> Result<(), SettingsError> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => Ok(()),
        Ok(_) => Err(invalid(
            key,
            format!("{} is not an executable file", path.display()),
        )),
        Err(error) => Err(invalid(
            key,
            format!(
                "cannot use iotcored at {}: {error}; pass --iotcored-path",
                path.display()
            ),
        )),
    }
}

/// Checks a DNS host name as RFC 1123 defines it: dot-separated labels of 1
/// to 63 letters, digits and hyphens, no hyphen at either end of a label,
/// 253 bytes at most. A port or a trailing dot is not part of a host name.
fn check_host_name(key: &str, host: &str) -> Result<(), SettingsError> {
    let valid_label = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if !host.is_empty() && host.len() <= 253 && host.split('.').all(valid_label) {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("{host:?} is not a valid host name (give the name alone, without a port)"),
        ))
    }
}

/// Checks flags that need no configuration, before the daemon is asked.
fn check_flags(cli: &Cli) -> Result<(), SettingsError> {
    if cli.connect_timeout == 0 || cli.response_timeout == 0 {
        return Err(invalid(
            "--connect-timeout / --response-timeout",
            "must be at least 1 second",
        ));
    }
    if let Some(count) = cli.max_attempts {
        if !(1..=1000).contains(&count) {
            return Err(invalid("--max-attempts", "must be 1 to 1000"));
        }
    }
    Ok(())
}

/// Reads the PEM file at `path` and checks it with `check`.
fn check_pem<E: fmt::Display>(
    key: &str,
    path: &Path,
    check: impl FnOnce(&[u8]) -> Result<(), E>,
) -> Result<(), SettingsError> {
    let pem = zeroize::Zeroizing::new(
        std::fs::read(path)
            .map_err(|error| invalid(key, format!("cannot read {}: {error}", path.display())))?,
    );
    check(&pem).map_err(|error| invalid(key, format!("{} is not usable: {error}", path.display())))
}

/// Returns `path` made absolute, and fails unless it is UTF-8, because the
/// configuration stores it as text.
fn output_path(key: &str, path: &Path) -> Result<PathBuf, SettingsError> {
    let absolute = std::path::absolute(path)
        .map_err(|error| invalid(key, format!("{} is not usable: {error}", path.display())))?;
    if absolute.to_str().is_none() {
        return Err(invalid(
            key,
            format!(
                "{} is not UTF-8, and the configuration stores paths as text",
                absolute.display()
            ),
        ));
    }
    Ok(absolute)
}

/// Fails unless the folder of `path` exists, or is the output folder, which
/// the run creates.
fn check_parent_folder(key: &str, path: &Path, output_dir: &Path) -> Result<(), SettingsError> {
    match path.parent() {
        Some(parent) if parent == output_dir || parent.is_dir() => Ok(()),
        Some(parent) => Err(invalid(
            key,
            format!("the folder {} does not exist", parent.display()),
        )),
        None => Err(invalid(
            key,
            format!("{} is not a file path", path.display()),
        )),
    }
}

/// Reads and checks everything a run needs. The order of the reads follows
/// Greengrass Lite's C tool: `claimCertPath`, then `system/certificateFilePath`.
pub fn load(cli: &Cli, bus: &CoreBus) -> Result<Plan, SettingsError> {
    check_flags(cli)?;
    let reader = ConfigReader { bus };

    let configured_claim_cert = reader.component_text("claimCertPath")?;
    if cli.claim_cert.is_none() && configured_claim_cert.is_none() {
        return Ok(Plan::NotConfigured);
    }
    if let Some(certificate_path) = reader.read_text(&["system", "certificateFilePath"])? {
        return Ok(Plan::AlreadyProvisioned { certificate_path });
    }

    let claim_cert = match &cli.claim_cert {
        Some(path) => path.clone(),
        None => configured_claim_cert.map(PathBuf::from).unwrap_or_default(),
    };
    let claim_key = match &cli.claim_key {
        Some(path) => path.clone(),
        None => PathBuf::from(reader.required_text("claimKeyPath", Some("--claim-key"))?),
    };
    let root_ca = match &cli.root_ca_path {
        Some(path) => path.clone(),
        None => PathBuf::from(reader.required_text("rootCaPath", Some("--root-ca-path"))?),
    };
    let template_name = match &cli.template_name {
        Some(name) => name.clone(),
        None => reader.required_text("templateName", Some("--template-name"))?,
    };
    let endpoint = match &cli.endpoint {
        Some(host) => host.clone(),
        None => reader.required_text("iotDataEndpoint", Some("--endpoint"))?,
    };
    let csr_common_name = reader
        .component_text("csrCommonName")?
        .unwrap_or_else(|| DEFAULT_CSR_COMMON_NAME.to_owned());
    let csr_path = reader.component_text("csrPath")?;
    let cert_path = reader.component_text("certPath")?;
    let key_path = reader.component_text("keyPath")?;

    let parameters = match &cli.template_params {
        Some(json) => fleet::parse_template_parameters_json(json)
            .map_err(|error| invalid("--template-params", error.to_string()))?,
        None => match reader.template_parameters()? {
            ConfigValue::Parameters(parameters) => *parameters,
            ConfigValue::Text(json) => {
                fleet::parse_template_parameters_json(&json).map_err(|error| {
                    invalid(
                        ConfigReader::component_key("templateParams"),
                        error.to_string(),
                    )
                })?
            }
            ConfigValue::Absent => {
                log::info!("templateParams is not set; sending RegisterThing with no parameters");
                TemplateParameters::new()
            }
        },
    };
    let cred_endpoint = reader.required_text("iotCredEndpoint", None)?;
    let max_attempts = match cli.max_attempts {
        Some(count) => u64::from(count),
        None => reader
            .component_number("maxAttempts")?
            .unwrap_or(u64::from(retry::DEFAULT_MAX_ATTEMPTS)),
    };
    let max_retry_time_s = match cli.max_retry_time {
        Some(seconds) => seconds,
        None => reader
            .component_number("maxRetryTimeSeconds")?
            .unwrap_or(retry::DEFAULT_MAX_TOTAL_MS / 1000),
    };
    let max_attempts = u32::try_from(max_attempts)
        .ok()
        .filter(|count| (1..=1000).contains(count))
        .ok_or_else(|| invalid("--max-attempts / maxAttempts", "must be 1 to 1000"))?;

    // Checks that need no daemon, all before any side effect.
    for (key, value) in [
        ("--claim-cert / claimCertPath", &claim_cert),
        ("--claim-key / claimKeyPath", &claim_key),
        ("--root-ca-path / rootCaPath", &root_ca),
    ] {
        if value.as_os_str().is_empty() {
            return Err(invalid(key, "is empty"));
        }
        check_readable_file(key, value)?;
    }
    check_pem(
        "--claim-cert / claimCertPath",
        &claim_cert,
        keys::check_certificate_pem,
    )?;
    check_pem(
        "--claim-key / claimKeyPath",
        &claim_key,
        keys::check_private_key_pem,
    )?;
    check_pem(
        "--root-ca-path / rootCaPath",
        &root_ca,
        keys::check_certificate_pem,
    )?;
    fleet::register_thing_topic(&template_name)
        .map_err(|error| invalid("--template-name / templateName", error.to_string()))?;
    check_host_name("--endpoint / iotDataEndpoint", &endpoint)?;
    check_host_name("iotCredEndpoint", &cred_endpoint)?;
    keys::validate_common_name(&csr_common_name).map_err(|error| {
        invalid(
            ConfigReader::component_key("csrCommonName"),
            error.to_string(),
        )
    })?;

    let output_dir = cli
        .output_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_OUTPUT_DIR));
    if output_dir.as_os_str().is_empty() {
        return Err(invalid("--output-dir", "is empty"));
    }
    if output_dir.exists() && !output_dir.is_dir() {
        return Err(invalid(
            "--output-dir",
            format!("{} exists and is not a folder", output_dir.display()),
        ));
    }
    let owner = resolve_owner(&cli.owner).map_err(|error| invalid("--owner", error.to_string()))?;
    let transport = match cli.transport {
        Some(kind) => kind,
        None => match reader.component_text("transport")? {
            Some(text) => TransportKind::parse(&ConfigReader::component_key("transport"), &text)?,
            None => TransportKind::Iotcored,
        },
    };
    let port = match cli.port {
        Some(port) => Some(port),
        None => reader
            .component_number("port")?
            .map(|number| {
                u16::try_from(number)
                    .ok()
                    .filter(|port| *port != 0)
                    .ok_or_else(|| {
                        invalid(
                            ConfigReader::component_key("port"),
                            "must be a TCP port number from 1 to 65535",
                        )
                    })
            })
            .transpose()?,
    };
    if transport == TransportKind::Direct && !cfg!(feature = "direct") {
        return Err(invalid(
            "--transport / transport",
            "this build has no direct transport (the `direct` cargo feature is off); \
             use iotcored or rebuild with the feature",
        ));
    }
    if transport == TransportKind::Iotcored && port.is_some_and(|port| port != DIRECT_PORT) {
        return Err(invalid(
            "--port / port",
            "applies only to --transport direct; iotcored always connects to port 8883",
        ));
    }
    let iotcored_path = match &cli.iotcored_path {
        Some(path) => path.clone(),
        None => default_iotcored_path()?,
    };
    if transport == TransportKind::Iotcored {
        check_executable("--iotcored-path", &iotcored_path)?;
    }
    // The configuration records these paths for other daemons, whose working
    // folder differs, so they are made absolute, and they must be text.
    let output_dir = output_path("--output-dir", &output_dir)?;
    let key_path = output_path(
        "keyPath",
        &key_path.map_or_else(|| output_dir.join("priv_key"), PathBuf::from),
    )?;
    let cert_path = output_path(
        "certPath",
        &cert_path.map_or_else(|| output_dir.join("certificate.pem"), PathBuf::from),
    )?;
    let csr_path = output_path(
        "csrPath",
        &csr_path.map_or_else(|| output_dir.join("cert_req.pem"), PathBuf::from),
    )?;
    let root_ca_copy = output_dir.join("AmazonRootCA.pem");
    for (key, path) in [
        ("keyPath", &key_path),
        ("certPath", &cert_path),
        ("csrPath", &csr_path),
    ] {
        check_parent_folder(key, path, &output_dir)?;
    }

    Ok(Plan::Provision(Box::new(Settings {
        key_path,
        cert_path,
        csr_path,
        root_ca_copy,
        output_dir,
        claim_cert,
        claim_key,
        root_ca,
        endpoint,
        cred_endpoint,
        template_name,
        parameters,
        csr_common_name,
        owner,
        iotcored_path,
        transport,
        port: port.unwrap_or(DIRECT_PORT),
        timeouts: Timeouts {
            connect_ms: cli.connect_timeout.saturating_mul(1000),
            response_ms: cli.response_timeout.saturating_mul(1000),
        },
        retry: RetryPolicy {
            max_attempts,
            base_delay_ms: cli.retry_base_delay,
            max_delay_ms: retry::DEFAULT_MAX_DELAY_MS,
            max_total_ms: max_retry_time_s.saturating_mul(1000),
        },
    })))
}
