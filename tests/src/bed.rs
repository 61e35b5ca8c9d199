//! The whole loopback test bed in one value: test PKI, IoT Core emulator,
//! mosquitto with the emulator plugin, and the `gg_config` stand-in, plus a
//! way to run the real `fleet-provisioning` binary against them.
//!
//! Everything lives in one temporary folder and stops when the [`TestBed`]
//! is dropped.

use crate::broker::Broker;
use crate::config_standin::ConfigServer;
use crate::emulator::Emulator;
use crate::pki::TestPki;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Template name the emulator accepts; it names things `ggl-<SerialNumber>`.
pub const TEMPLATE_NAME: &str = "GGFleetProvisioningTemplate";

/// The environment variable that points the iotcored stand-in at the
/// broker's port (Greengrass Lite's iotcored always uses 8883).
pub const IOTCORED_PORT_ENV: &str = "IOTCORED_STANDIN_PORT";

/// A running test bed.
pub struct TestBed {
    /// PKI of this bed.
    pub pki: TestPki,
    /// The IoT Core emulator.
    pub emulator: Emulator,
    /// The broker.
    pub broker: Broker,
    /// The `gg_config` stand-in.
    pub config: ConfigServer,
    /// Folder of the core-bus sockets.
    pub socket_dir: PathBuf,
    /// Folder `fleet-provisioning` writes into.
    pub output_dir: PathBuf,
    /// The iotcored executable to run.
    pub iotcored: PathBuf,
    /// The `fleet-provisioning` executable to run.
    pub fleet_provisioning: PathBuf,
    /// Arguments added to every run, such as the transport.
    pub extra_args: Vec<String>,
    // Dropped last, so that the servers stop before their files go.
    dir: tempfile::TempDir,
}

/// The MQTT transport a test runs the tool with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `--transport iotcored`, the default: through the iotcored stand-in.
    Iotcored,
    /// `--transport direct`: MQTT from the tool itself.
    Direct,
}

/// Defines each test once per transport: `NAME::iotcored` and
/// `NAME::direct` run the same body with [`Via`] set accordingly. The
/// calling module must have `Via` in scope.
#[macro_export]
macro_rules! transport_tests {
    ($(fn $name:ident($via:ident) $body:block)*) => {
        $(
            mod $name {
                use super::*;

                fn body($via: Via) $body

                #[test]
                fn iotcored() {
                    body(Via::Iotcored)
                }

                #[test]
                fn direct() {
                    body(Via::Direct)
                }
            }
        )*
    };
}

/// What one run of `fleet-provisioning` did.
#[derive(Debug)]
pub struct RunResult {
    /// Exit code, or `None` when a signal ended it.
    pub code: Option<i32>,
    /// Everything it logged.
    pub log: String,
}

impl TestBed {
    /// Starts a bed with a realistic, complete configuration for serial
    /// number `serial`. `iotcored` is the stand-in executable to use.
    pub fn start(serial: &str, iotcored: &Path) -> Result<TestBed, String> {
        let dir = tempfile::Builder::new()
            .prefix("fp-bed")
            .tempdir()
            .map_err(|error| format!("creating the test bed folder failed: {error}"))?;
        let root = dir.path().to_path_buf();
        let pki_dir = root.join("pki");
        std::fs::create_dir_all(&pki_dir).map_err(|e| e.to_string())?;
        let pki = TestPki::generate(&pki_dir).map_err(|e| e.to_string())?;
        let emulator = Emulator::start(&pki, &root).map_err(|e| e.to_string())?;
        let broker = Broker::start(&pki, &emulator, &root).map_err(|e| e.to_string())?;
        let socket_dir = root.join("run");
        let output_dir = root.join("credentials");
        let config = ConfigServer::start(&socket_dir, initial_config(&pki, serial))
            .map_err(|error| format!("starting the gg_config stand-in failed: {error}"))?;
        Ok(TestBed {
            pki,
            emulator,
            broker,
            config,
            socket_dir,
            output_dir,
            iotcored: iotcored.to_path_buf(),
            fleet_provisioning: find_fleet_provisioning()?,
            extra_args: Vec::new(),
            dir,
        })
    }

    /// Starts a bed as [`TestBed::start`] does, with every run going
    /// through the transport `via`.
    pub fn start_via(serial: &str, iotcored: &Path, via: Via) -> Result<TestBed, String> {
        let mut bed = TestBed::start(serial, iotcored)?;
        if via == Via::Direct {
            bed.use_direct_transport();
        }
        Ok(bed)
    }

    /// Makes every later run connect to the broker itself
    /// (`--transport direct`) instead of through the iotcored stand-in.
    pub fn use_direct_transport(&mut self) {
        self.extra_args = vec![
            "--transport".to_owned(),
            "direct".to_owned(),
            "--port".to_owned(),
            self.broker.port().to_string(),
        ];
    }

    /// Returns the bed's temporary folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Returns a command that runs `fleet-provisioning` against this bed,
    /// writing into [`TestBed::output_dir`] and giving files to the current
    /// user.
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.fleet_provisioning);
        command
            .arg("--socket-dir")
            .arg(&self.socket_dir)
            .arg("--iotcored-path")
            .arg(&self.iotcored)
            .arg("--output-dir")
            .arg(&self.output_dir)
            .arg("--owner")
            .arg(current_owner())
            .args(&self.extra_args)
            .env(IOTCORED_PORT_ENV, self.broker.port().to_string());
        // Runs use a proxy only when a test sets one.
        for variable in ["https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY"] {
            command.env_remove(variable);
        }
        command
    }

    /// Runs `fleet-provisioning` with `extra` arguments and waits for it.
    pub fn run(&self, extra: &[&str]) -> RunResult {
        let mut command = self.command();
        command.args(extra);
        run_command(&mut command)
    }

    /// Returns the configuration value at `path` (slash-separated).
    pub fn config_value(&self, path: &str) -> Option<Value> {
        let tree = self.config.tree();
        let mut node = &tree;
        for key in path.split('/') {
            node = node.get(key)?;
        }
        Some(node.clone())
    }
}

/// Runs `command` and waits for it. With `E2E_SHOW_LOG` set, the run's
/// log is printed too (see it with `cargo test -- --nocapture`).
pub fn run_command(command: &mut Command) -> RunResult {
    let output = command
        .output()
        .expect("fleet-provisioning could not be started");
    let result = run_result(&output);
    if std::env::var_os("E2E_SHOW_LOG").is_some() {
        eprintln!("{}", result.log);
    }
    result
}

fn run_result(output: &Output) -> RunResult {
    RunResult {
        code: output.status.code(),
        log: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// The configuration of a factory image: the fleet provisioning component
/// configured, nothing provisioned yet.
pub fn initial_config(pki: &TestPki, serial: &str) -> Value {
    json!({
        "services": {
            "aws.greengrass.fleet_provisioning": {
                "configuration": {
                    "claimCertPath": pki.claim_cert,
                    "claimKeyPath": pki.claim_key,
                    "rootCaPath": pki.ca_cert,
                    "templateName": TEMPLATE_NAME,
                    "iotDataEndpoint": "localhost",
                    "iotCredEndpoint": "localhost",
                    "csrCommonName": "aws-greengrass-nucleus-lite",
                    "templateParams": { "SerialNumber": serial }
                }
            },
            "aws.greengrass.NucleusLite": {
                "configuration": { "runWithDefault": { "posixUser": "ggcore:ggcore" } }
            }
        },
        "system": { "rootPath": "/var/lib/greengrass" }
    })
}

/// `uid:gid` of this process, so that the tool's ownership change works
/// without a `ggcore` user.
pub fn current_owner() -> String {
    let id = |flag: &str| {
        Command::new("id")
            .arg(flag)
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
            .unwrap_or_else(|_| "0".to_owned())
    };
    format!("{}:{}", id("-u"), id("-g"))
}

/// Finds the `fleet-provisioning` binary: `FLEET_PROVISIONING_BIN`, or the
/// one cargo built into the same target folder as the running executable.
pub fn find_fleet_provisioning() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("FLEET_PROVISIONING_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join("fleet-provisioning");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(
        "fleet-provisioning is not built; run `cargo build -p fleet-provisioning` \
         or set FLEET_PROVISIONING_BIN"
            .to_owned(),
    )
}
