//! Mosquitto broker with mutual TLS and the IoT Core emulator plugin, run
//! as a child process on a free loopback port.

use std::env;
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::emulator::Emulator;
use crate::pki::TestPki;

/// Path of the emulator plugin that build.rs compiles.
pub const PLUGIN_PATH: &str = env!("FP_EMULATOR_PLUGIN");

const PORT_ATTEMPTS: u32 = 5;
const READY_POLLS: u32 = 200;
const READY_POLL_INTERVAL: Duration = Duration::from_millis(25);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
// Debian installs the broker in /usr/sbin, which is not on the PATH of
// every user.
const FALLBACK_MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// Failure to start the broker.
#[derive(Debug)]
pub enum BrokerError {
    /// The `mosquitto` executable was not found.
    NotInstalled,
    /// A file in the broker directory could not be written or opened.
    File {
        /// Path of the file.
        path: PathBuf,
        /// Error from the file system.
        source: io::Error,
    },
    /// No free loopback port could be reserved.
    FreePort(io::Error),
    /// The broker process could not be spawned.
    Spawn(io::Error),
    /// The broker exited before it accepted connections.
    Exited {
        /// Exit status of the broker.
        status: ExitStatus,
        /// Path of the broker log.
        log: PathBuf,
    },
    /// The broker did not accept connections in time.
    NotReady {
        /// Listener port in the broker configuration.
        port: u16,
        /// Path of the broker log.
        log: PathBuf,
    },
}

impl fmt::Display for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotInstalled => write!(
                f,
                "mosquitto is not installed (not on PATH nor at {FALLBACK_MOSQUITTO}); \
                 run `apt-get install mosquitto mosquitto-dev`"
            ),
            Self::File { path, source } => write!(
                f,
                "failed to write {}: {source}; check that the directory exists and is writable",
                path.display()
            ),
            Self::FreePort(error) => {
                write!(f, "failed to reserve a free port on 127.0.0.1: {error}")
            }
            Self::Spawn(error) => write!(f, "failed to start mosquitto: {error}"),
            Self::Exited { status, log } => write!(
                f,
                "mosquitto exited before accepting connections ({status}); see {}",
                log.display()
            ),
            Self::NotReady { port, log } => write!(
                f,
                "mosquitto did not accept connections on 127.0.0.1:{port} in time; see {}",
                log.display()
            ),
        }
    }
}

impl std::error::Error for BrokerError {}

/// Running mosquitto child process. Dropping it kills and reaps the child.
pub struct Broker {
    child: Option<Child>,
    port: u16,
    log_path: PathBuf,
}

impl Broker {
    /// Starts mosquitto with a generated configuration in `dir`: one TLS
    /// listener on 127.0.0.1 that requires a client certificate signed by
    /// the test CA, no persistence, and the emulator plugin connected to
    /// `emulator`. Returns once the listener accepts TCP connections.
    pub fn start(pki: &TestPki, emulator: &Emulator, dir: &Path) -> Result<Broker, BrokerError> {
        let executable = find_mosquitto().ok_or(BrokerError::NotInstalled)?;
        let config_path = dir.join("mosquitto.conf");
        let log_path = dir.join("mosquitto.log");

        // The port is free when reserved but may be taken before mosquitto
        // binds it, so a broker that exits early is retried on a new port.
        let mut attempt = 1;
        loop {
            let port = free_port()?;
            let config = render_config(pki, emulator, port);
            fs::write(&config_path, config).map_err(|source| BrokerError::File {
                path: config_path.clone(),
                source,
            })?;
            let log = File::create(&log_path).map_err(|source| BrokerError::File {
                path: log_path.clone(),
                source,
            })?;
            let log_for_stdout = log.try_clone().map_err(|source| BrokerError::File {
                path: log_path.clone(),
                source,
            })?;
            let child = Command::new(&executable)
                .arg("-c")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log_for_stdout)
                .stderr(log)
                .spawn()
                .map_err(BrokerError::Spawn)?;
            let mut broker = Broker {
                child: Some(child),
                port,
                log_path: log_path.clone(),
            };
            match broker.wait_ready() {
                Ok(()) => return Ok(broker),
                Err(BrokerError::Exited { .. }) if attempt < PORT_ATTEMPTS => attempt += 1,
                Err(error) => return Err(error),
            }
        }
    }

    /// Returns the TLS port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Returns the path of the broker log.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Kills the broker and waits for it to exit.
    pub fn stop(mut self) {
        self.kill();
    }

    fn wait_ready(&mut self) -> Result<(), BrokerError> {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        for _ in 0..READY_POLLS {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(BrokerError::Exited {
                        status,
                        log: self.log_path.clone(),
                    });
                }
            }
            if TcpStream::connect_timeout(&address, CONNECT_TIMEOUT).is_ok() {
                return Ok(());
            }
            std::thread::sleep(READY_POLL_INTERVAL);
        }
        Err(BrokerError::NotReady {
            port: self.port,
            log: self.log_path.clone(),
        })
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Child::kill signals this child's PID only.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn find_mosquitto() -> Option<PathBuf> {
    let on_path = env::var_os("PATH").and_then(|paths| {
        env::split_paths(&paths)
            .map(|dir| dir.join("mosquitto"))
            .find(|candidate| candidate.is_file())
    });
    on_path.or_else(|| {
        let fallback = PathBuf::from(FALLBACK_MOSQUITTO);
        fallback.is_file().then_some(fallback)
    })
}

fn free_port() -> Result<u16, BrokerError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(BrokerError::FreePort)?;
    let port = listener.local_addr().map_err(BrokerError::FreePort)?.port();
    Ok(port)
}

fn render_config(pki: &TestPki, emulator: &Emulator, port: u16) -> String {
    // `user root` keeps a broker started by root from switching to the
    // `mosquitto` user (mosquitto 2.0 does that by default), which could not
    // read the test files. A broker started by another user ignores it.
    // `set_tcp_nodelay true`: with Nagle's algorithm on, a reply PUBLISH
    // written right after a PUBACK waits for the client's delayed ACK,
    // which adds about 40 ms to every round trip on loopback.
    format!(
        "per_listener_settings false\n\
         persistence false\n\
         set_tcp_nodelay true\n\
         user root\n\
         log_dest stderr\n\
         log_type all\n\
         connection_messages true\n\
         allow_anonymous true\n\
         plugin {plugin}\n\
         plugin_opt_socket {socket}\n\
         \n\
         listener {port} 127.0.0.1\n\
         protocol mqtt\n\
         cafile {ca}\n\
         certfile {cert}\n\
         keyfile {key}\n\
         require_certificate true\n\
         use_identity_as_username false\n",
        plugin = PLUGIN_PATH,
        socket = emulator.socket_path().display(),
        ca = pki.ca_cert.display(),
        cert = pki.server_cert.display(),
        key = pki.server_key.display(),
    )
}
