//! Tests of the daemon stand-ins over real Unix sockets: the `gg_config`
//! server against requests from the core encoders and against the frames
//! captured from the C ggconfigd, and the `iotcored` binary with and without
//! a broker.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fleet_provisioning_core::corebus::{self, GgError, RequestType, Response};
use fleet_provisioning_core::eventstream;
use fleet_provisioning_testbed::broker::Broker;
use fleet_provisioning_testbed::config_standin::{object_to_json, read_frame, ConfigServer};
use fleet_provisioning_testbed::emulator::{Emulator, CREATE_CERTIFICATE_TOPIC};
use fleet_provisioning_testbed::pki::TestPki;
use rcgen::{CertificateParams, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use serde_json::{json, Value};

const IOTCORED: &str = env!("CARGO_BIN_EXE_iotcored");
const GGCONFIGD: &str = env!("CARGO_BIN_EXE_ggconfigd");
const FLEET_CONFIG: &[&str] = &[
    "services",
    "aws.greengrass.fleet_provisioning",
    "configuration",
];
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A decoded reply, owned so that it outlives the frame buffer.
#[derive(Debug, PartialEq)]
enum Reply {
    Error(i32),
    Accepted,
    Value(Value),
}

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/tests/vectors")
}

/// Returns the bytes of the golden vector whose file name starts with
/// `number` (such as "001").
fn vector(number: &str) -> Vec<u8> {
    let prefix = format!("{number}-");
    let entry = std::fs::read_dir(vectors_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(&prefix))
        })
        .unwrap_or_else(|| panic!("no vector {number}"));
    std::fs::read(entry).unwrap()
}

fn decode_reply(frame: &[u8]) -> Reply {
    let frame = eventstream::decode_frame(frame).unwrap();
    match corebus::parse_response(&frame).unwrap() {
        Response::Error(code) => Reply::Error(code),
        Response::Accepted => Reply::Accepted,
        Response::Value(object) => Reply::Value(object_to_json(&object).unwrap()),
    }
}

/// Sends one request frame on a new connection and returns the reply frame.
fn exchange(socket: &Path, request: &[u8]) -> Vec<u8> {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(EVENT_TIMEOUT)).unwrap();
    stream.write_all(request).unwrap();
    read_frame(&mut stream).unwrap()
}

fn call(socket: &Path, request: &[u8]) -> Reply {
    decode_reply(&exchange(socket, request))
}

fn encode(encoder: impl FnOnce(&mut [u8]) -> Result<usize, corebus::CoreBusError>) -> Vec<u8> {
    let mut buffer = vec![0; eventstream::MAX_FRAME_LEN];
    let len = encoder(&mut buffer).unwrap();
    buffer.truncate(len);
    buffer
}

fn fleet_path(key: &str) -> Vec<&str> {
    let mut path = FLEET_CONFIG.to_vec();
    path.push(key);
    path
}

fn sample_config() -> Value {
    json!({
        "services": {
            "aws.greengrass.fleet_provisioning": {
                "configuration": {
                    "claimCertPath": "/var/lib/greengrass/pki/claim.pem",
                    "templateParams": {"SerialNumber": "peer23156r0", "Count": 2},
                    "rootCaPath": "/var/lib/greengrass/pki/ca.pem"
                }
            }
        }
    })
}

#[test]
fn config_read_nested_map() {
    let dir = tempfile::tempdir().unwrap();
    let server = ConfigServer::start(dir.path(), sample_config()).unwrap();

    let reply = call(
        server.socket_path(),
        &encode(|out| corebus::encode_config_read(&fleet_path("templateParams"), out)),
    );
    assert_eq!(
        reply,
        Reply::Value(json!({"SerialNumber": "peer23156r0", "Count": 2}))
    );

    let reply = call(
        server.socket_path(),
        &encode(|out| corebus::encode_config_read(FLEET_CONFIG, out)),
    );
    let Reply::Value(Value::Object(configuration)) = reply else {
        panic!("expected a map, got {reply:?}");
    };
    let keys: Vec<&str> = configuration.keys().map(String::as_str).collect();
    assert_eq!(keys, ["claimCertPath", "templateParams", "rootCaPath"]);
}

#[test]
fn config_read_missing_key_is_noentry() {
    let dir = tempfile::tempdir().unwrap();
    let server = ConfigServer::start(dir.path(), sample_config()).unwrap();

    for key_path in [
        fleet_path("csrPath"),
        vec!["system", "certificateFilePath"],
        // A path through a leaf has no entry either.
        fleet_path("claimCertPath")
            .into_iter()
            .chain(["x"])
            .collect(),
    ] {
        let reply = call(
            server.socket_path(),
            &encode(|out| corebus::encode_config_read(&key_path, out)),
        );
        assert_eq!(reply, Reply::Error(GgError::Noentry.code()), "{key_path:?}");
    }
}

#[test]
fn config_write_then_read() {
    let dir = tempfile::tempdir().unwrap();
    let server = ConfigServer::start(dir.path(), sample_config()).unwrap();
    let thing_name = ["system", "thingName"];

    let reply = call(
        server.socket_path(),
        &encode(|out| corebus::encode_config_write_str(&thing_name, "ggl-peer", Some(3), out)),
    );
    assert_eq!(reply, Reply::Value(Value::Null));

    let reply = call(
        server.socket_path(),
        &encode(|out| corebus::encode_config_read(&thing_name, out)),
    );
    assert_eq!(reply, Reply::Value(json!("ggl-peer")));
    assert_eq!(server.tree()["system"]["thingName"], json!("ggl-peer"));
}

#[test]
fn config_map_write_merges() {
    let dir = tempfile::tempdir().unwrap();
    let server = ConfigServer::start(dir.path(), sample_config()).unwrap();

    let request = encode(|out| {
        corebus::encode_config_write(&fleet_path("templateParams"), None, out, |writer| {
            writer.map(2)?;
            writer.key(b"Count")?;
            writer.i64(7)?;
            writer.key(b"Site")?;
            writer.str("lab")
        })
    });
    assert_eq!(
        call(server.socket_path(), &request),
        Reply::Value(Value::Null)
    );

    let tree = server.tree();
    let params =
        &tree["services"]["aws.greengrass.fleet_provisioning"]["configuration"]["templateParams"];
    assert_eq!(
        params,
        &json!({"SerialNumber": "peer23156r0", "Count": 7, "Site": "lab"})
    );
}

#[test]
fn config_old_write_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let server = ConfigServer::start(dir.path(), sample_config()).unwrap();
    let root_ca = fleet_path("rootCaPath");

    let reply = call(
        server.socket_path(),
        &encode(|out| corebus::encode_config_write_str(&root_ca, "/tmp/other.pem", Some(3), out)),
    );
    // A write that loses on timestamp still succeeds, as in ggconfigd.
    assert_eq!(reply, Reply::Value(Value::Null));

    let reply = call(
        server.socket_path(),
        &encode(|out| corebus::encode_config_read(&root_ca, out)),
    );
    assert_eq!(reply, Reply::Value(json!("/var/lib/greengrass/pki/ca.pem")));

    // Without a timestamp the write counts as now and replaces the value.
    let reply = call(
        server.socket_path(),
        &encode(|out| corebus::encode_config_write_str(&root_ca, "/tmp/new.pem", None, out)),
    );
    assert_eq!(reply, Reply::Value(Value::Null));
    let reply = call(
        server.socket_path(),
        &encode(|out| corebus::encode_config_read(&root_ca, out)),
    );
    assert_eq!(reply, Reply::Value(json!("/tmp/new.pem")));
}

#[test]
fn config_write_keeps_kinds_apart() {
    let dir = tempfile::tempdir().unwrap();
    let server = ConfigServer::start(dir.path(), sample_config()).unwrap();
    let failure = Reply::Error(GgError::Failure.code());

    // A leaf cannot replace a map.
    let request = encode(|out| corebus::encode_config_write_str(FLEET_CONFIG, "flat", None, out));
    assert_eq!(call(server.socket_path(), &request), failure);

    // A leaf cannot get children.
    let through_leaf: Vec<&str> = fleet_path("rootCaPath")
        .into_iter()
        .chain(["child"])
        .collect();
    let request = encode(|out| corebus::encode_config_write_str(&through_leaf, "x", None, out));
    assert_eq!(call(server.socket_path(), &request), failure);

    // An empty map cannot replace a leaf.
    let request = encode(|out| {
        corebus::encode_config_write(&fleet_path("rootCaPath"), None, out, |writer| writer.map(0))
    });
    assert_eq!(call(server.socket_path(), &request), failure);

    assert_eq!(server.tree(), sample_config());
}

#[test]
fn config_subscribe_reports_changed_keys() {
    let dir = tempfile::tempdir().unwrap();
    let server = ConfigServer::start(dir.path(), sample_config()).unwrap();

    let mut subscription = UnixStream::connect(server.socket_path()).unwrap();
    subscription.set_read_timeout(Some(EVENT_TIMEOUT)).unwrap();
    let request = encode(|out| {
        corebus::encode_request("subscribe", RequestType::Subscribe, out, |writer| {
            writer.map(1)?;
            writer.key(b"key_path")?;
            writer.str_list(FLEET_CONFIG)
        })
    });
    subscription.write_all(&request).unwrap();
    assert_eq!(
        decode_reply(&read_frame(&mut subscription).unwrap()),
        Reply::Accepted
    );

    // An unchanged value and a key elsewhere produce no event, so the first
    // event is the changed serial number.
    let request = encode(|out| {
        corebus::encode_config_write_str(
            &fleet_path("rootCaPath"),
            "/var/lib/greengrass/pki/ca.pem",
            None,
            out,
        )
    });
    assert_eq!(
        call(server.socket_path(), &request),
        Reply::Value(Value::Null)
    );
    let request = encode(|out| corebus::encode_config_write_str(&["system", "x"], "1", None, out));
    assert_eq!(
        call(server.socket_path(), &request),
        Reply::Value(Value::Null)
    );
    let serial_path = [FLEET_CONFIG, &["templateParams", "SerialNumber"]].concat();
    let request =
        encode(|out| corebus::encode_config_write_str(&serial_path, "new-serial", None, out));
    assert_eq!(
        call(server.socket_path(), &request),
        Reply::Value(Value::Null)
    );

    assert_eq!(
        decode_reply(&read_frame(&mut subscription).unwrap()),
        Reply::Value(json!(serial_path))
    );

    // A subscription to a missing key is rejected.
    let mut missing = UnixStream::connect(server.socket_path()).unwrap();
    missing.set_read_timeout(Some(EVENT_TIMEOUT)).unwrap();
    let request = encode(|out| {
        corebus::encode_request("subscribe", RequestType::Subscribe, out, |writer| {
            writer.map(1)?;
            writer.key(b"key_path")?;
            writer.str_list(&["nothing"])
        })
    });
    missing.write_all(&request).unwrap();
    assert_eq!(
        decode_reply(&read_frame(&mut missing).unwrap()),
        Reply::Error(GgError::Noentry.code())
    );
}

#[test]
fn config_list_returns_child_names() {
    let dir = tempfile::tempdir().unwrap();
    let server = ConfigServer::start(dir.path(), sample_config()).unwrap();

    let reply = call(
        server.socket_path(),
        &encode(|out| corebus::encode_config_list(FLEET_CONFIG, out)),
    );
    assert_eq!(
        reply,
        Reply::Value(json!(["claimCertPath", "templateParams", "rootCaPath"]))
    );
    let reply = call(
        server.socket_path(),
        &encode(|out| corebus::encode_config_list(&["nothing"], out)),
    );
    assert_eq!(reply, Reply::Error(GgError::Noentry.code()));
}

#[test]
fn config_delete_removes_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = ConfigServer::start(dir.path(), sample_config()).unwrap();

    let reply = call(
        server.socket_path(),
        &encode(|out| corebus::encode_config_delete(&fleet_path("templateParams"), out)),
    );
    assert_eq!(reply, Reply::Value(Value::Null));
    let reply = call(
        server.socket_path(),
        &encode(|out| corebus::encode_config_read(&fleet_path("templateParams"), out)),
    );
    assert_eq!(reply, Reply::Error(GgError::Noentry.code()));
}

#[test]
fn config_records_requests_and_injects_failures() {
    let dir = tempfile::tempdir().unwrap();
    let server = ConfigServer::start(dir.path(), sample_config()).unwrap();
    server.set_fail_next("read", GgError::Failure);

    let request = encode(|out| corebus::encode_config_read(&fleet_path("rootCaPath"), out));
    assert_eq!(
        call(server.socket_path(), &request),
        Reply::Error(GgError::Failure.code())
    );
    assert_eq!(
        call(server.socket_path(), &request),
        Reply::Value(json!("/var/lib/greengrass/pki/ca.pem"))
    );

    let expected_path: Vec<String> = fleet_path("rootCaPath")
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        server.requests(),
        vec![
            ("read".to_owned(), expected_path.clone()),
            ("read".to_owned(), expected_path)
        ]
    );
}

#[test]
fn config_rejects_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let server = ConfigServer::start(dir.path(), sample_config()).unwrap();

    // An unknown method, as in the captured iotcored reply.
    let request = encode(|out| {
        corebus::encode_request("no_such_method", RequestType::Call, out, |writer| {
            writer.map(0)
        })
    });
    assert_eq!(
        call(server.socket_path(), &request),
        Reply::Error(GgError::Noentry.code())
    );

    // A key path that is not a list of buffers.
    let request = encode(|out| {
        corebus::encode_request("read", RequestType::Call, out, |writer| {
            writer.map(1)?;
            writer.key(b"key_path")?;
            writer.i64(5)
        })
    });
    assert_eq!(
        call(server.socket_path(), &request),
        Reply::Error(GgError::Invalid.code())
    );

    // A value buffer that is not UTF-8 cannot be stored as JSON.
    let request = encode(|out| {
        corebus::encode_config_write(&["system", "bad"], None, out, |writer| {
            writer.buf(&[0xff, 0xfe])
        })
    });
    assert_eq!(
        call(server.socket_path(), &request),
        Reply::Error(GgError::Invalid.code())
    );

    // A corrupted message CRC is a parse error.
    let mut request = vector("001");
    let last = request.len() - 1;
    request[last] ^= 0xff;
    assert_eq!(
        call(server.socket_path(), &request),
        Reply::Error(GgError::Parse.code())
    );
}

#[test]
fn config_drops_oversized_frame() {
    let dir = tempfile::tempdir().unwrap();
    let server = ConfigServer::start(dir.path(), sample_config()).unwrap();

    let mut stream = UnixStream::connect(server.socket_path()).unwrap();
    stream.set_read_timeout(Some(EVENT_TIMEOUT)).unwrap();
    let mut prelude = Vec::new();
    prelude.extend_from_slice(&10_001_u32.to_be_bytes());
    prelude.extend_from_slice(&0_u32.to_be_bytes());
    prelude.extend_from_slice(&eventstream::crc32(&prelude).to_be_bytes());
    stream.write_all(&prelude).unwrap();

    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "got a reply: {rest:?}");
}

/// Configuration matching what the C ggconfigd held during the captured
/// provisioning run.
fn captured_run_config() -> Value {
    json!({
        "services": {
            "aws.greengrass.fleet_provisioning": {
                "configuration": {
                    "claimCertPath": "/var/lib/greengrass/pki/claim.pem",
                    "claimKeyPath": "/var/lib/greengrass/pki/claim.key",
                    "rootCaPath": "/var/lib/greengrass/pki/ca.pem",
                    "templateName": "GGFleetProvisioningTemplate",
                    "iotDataEndpoint": "localhost",
                    "iotCredEndpoint": "localhost",
                    "csrCommonName": "aws-greengrass-nucleus-lite",
                    "templateParams": {"SerialNumber": "peer23156r0"}
                }
            }
        }
    })
}

#[test]
fn config_replays_captured_provisioning_run() {
    let dir = tempfile::tempdir().unwrap();
    let server = ConfigServer::start(dir.path(), captured_run_config()).unwrap();

    // Every gg_config request of the run with the C ggconfigd's reply.
    let pairs = [
        ("001", "002"),
        ("003", "004"),
        ("005", "006"),
        ("007", "008"),
        ("009", "010"),
        ("011", "012"),
        ("013", "014"),
        ("015", "016"),
        ("017", "018"),
        ("019", "020"),
        ("021", "022"),
        ("023", "024"),
        ("025", "026"),
        ("037", "038"),
        ("039", "040"),
        ("041", "042"),
        ("043", "044"),
        ("045", "046"),
        ("047", "048"),
        ("049", "050"),
    ];
    for (request, expected) in pairs {
        let reply = exchange(server.socket_path(), &vector(request));
        assert_eq!(reply, vector(expected), "reply to vector {request}");
    }
    assert_eq!(
        server.tree()["system"],
        json!({
            "rootCaPath": "/var/lib/greengrass/credentials/AmazonRootCA.pem",
            "privateKeyPath": "/var/lib/greengrass/credentials/priv_key",
            "thingName": "ggl-peer-peer23156r0",
            "certificateFilePath": "/var/lib/greengrass/credentials/certificate.pem"
        })
    );
}

#[test]
fn config_replays_captured_edge_cases() {
    let dir = tempfile::tempdir().unwrap();
    let server = ConfigServer::start(dir.path(), json!({})).unwrap();

    // 121-124 and 127-128 are left out: the C ggconfigd refuses i64::MIN
    // and corrupts i64::MAX, and the stand-in stores both correctly.
    let mut numbers: Vec<u32> = (101..=119).step_by(2).collect();
    numbers.push(125);
    numbers.extend((129..=159).step_by(2));
    for request in numbers {
        let request_name = format!("{request:03}");
        let expected_name = format!("{:03}", request + 1);
        let reply = exchange(server.socket_path(), &vector(&request_name));
        assert_eq!(
            reply,
            vector(&expected_name),
            "reply to vector {request_name}"
        );
    }
}

#[test]
fn ggconfigd_binary_serves_file() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("config.json");
    std::fs::write(&config_path, captured_run_config().to_string()).unwrap();
    let socket_dir = dir.path().join("run");
    let child = Command::new(GGCONFIGD)
        .arg("--socket-dir")
        .arg(&socket_dir)
        .arg("--config")
        .arg(&config_path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut daemon = Daemon { child };
    let socket = socket_dir.join("gg_config");
    wait_for_socket(&socket, &mut daemon.child);

    assert_eq!(exchange(&socket, &vector("001")), vector("002"));

    terminate(&daemon.child);
    let status = wait_exit(&mut daemon.child);
    let log = stderr_of(&mut daemon.child);
    assert_eq!(status.code(), Some(0), "log: {log}");
    assert!(!socket.exists(), "the socket was not removed");
}

/// A child process that is killed if a test fails before it exits.
struct Daemon {
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn terminate(child: &Child) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the process did not exit in time; log: {}",
                stderr_of(child)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(stderr) = child.stderr.as_mut() {
        stderr.read_to_string(&mut text).unwrap();
    }
    text
}

fn wait_for_socket(socket: &Path, child: &mut Child) {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while !socket.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the daemon exited with {status}: {}", stderr_of(child));
        }
        assert!(
            Instant::now() < deadline,
            "{} did not appear",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Returns a loopback port on which nothing listens.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

struct IotcoredRun {
    daemon: Daemon,
    socket: PathBuf,
}

fn start_iotcored(
    socket_dir: &Path,
    port: u16,
    cert: &Path,
    key: &Path,
    ca: &Path,
    extra_env: &[(&str, &str)],
) -> IotcoredRun {
    let mut command = Command::new(IOTCORED);
    command
        .args([
            "-n",
            "iotcoredfleet",
            "-e",
            "localhost",
            "-i",
            "standin-test",
        ])
        .arg("-r")
        .arg(ca)
        .arg(format!("--cert={}", cert.display()))
        .arg(format!("-k{}", key.display()))
        .env("GG_CORE_BUS_SOCKET_DIR", socket_dir)
        .env("IOTCORED_STANDIN_PORT", port.to_string())
        .stderr(Stdio::piped());
    for (name, value) in extra_env {
        command.env(name, value);
    }
    let child = command.spawn().unwrap();
    IotcoredRun {
        daemon: Daemon { child },
        socket: socket_dir.join("iotcoredfleet"),
    }
}

#[test]
fn iotcored_gives_up_when_broker_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path()).unwrap();
    let mut run = start_iotcored(
        &dir.path().join("run"),
        closed_port(),
        &pki.claim_cert,
        &pki.claim_key,
        &pki.ca_cert,
        &[("IOTCORED_STANDIN_CONNECT_ATTEMPTS", "3")],
    );

    let status = wait_exit(&mut run.daemon.child);
    let log = stderr_of(&mut run.daemon.child);
    assert_eq!(status.code(), Some(1), "log: {log}");
    assert!(
        log.contains("unreachable after 3 connection attempts"),
        "log: {log}"
    );
    assert!(log.contains("attempt 1"), "log: {log}");
    assert!(!run.socket.exists(), "the socket was not removed");
}

#[test]
fn iotcored_rejects_non_loopback_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path()).unwrap();
    // Rejected after parsing the address literal, before any connection.
    let output = Command::new(IOTCORED)
        .args(["-e", "192.0.2.1", "-i", "standin-test"])
        .arg("-r")
        .arg(&pki.ca_cert)
        .arg("-c")
        .arg(&pki.claim_cert)
        .arg("-k")
        .arg(&pki.claim_key)
        .env("GG_CORE_BUS_SOCKET_DIR", dir.path())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "log: {log}");
    assert!(log.contains("not only loopback"), "log: {log}");
}

#[test]
fn iotcored_rejects_missing_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path()).unwrap();
    let missing = dir.path().join("missing.pem");
    let mut run = start_iotcored(
        dir.path(),
        closed_port(),
        &missing,
        &pki.claim_key,
        &pki.ca_cert,
        &[],
    );

    let status = wait_exit(&mut run.daemon.child);
    let log = stderr_of(&mut run.daemon.child);
    assert_eq!(status.code(), Some(1), "log: {log}");
    assert!(log.contains("missing.pem"), "log: {log}");
}

#[test]
fn iotcored_reports_disconnected_status() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path()).unwrap();
    let mut run = start_iotcored(
        dir.path(),
        closed_port(),
        &pki.claim_cert,
        &pki.claim_key,
        &pki.ca_cert,
        &[],
    );
    wait_for_socket(&run.socket, &mut run.daemon.child);

    // The captured connection_status request gets the captured acceptance
    // and the captured `false` event, byte for byte.
    let mut status = UnixStream::connect(&run.socket).unwrap();
    status.set_read_timeout(Some(EVENT_TIMEOUT)).unwrap();
    status.write_all(&vector("161")).unwrap();
    assert_eq!(read_frame(&mut status).unwrap(), vector("162"));
    assert_eq!(read_frame(&mut status).unwrap(), vector("163"));

    // An unknown method gets the captured NOENTRY frame.
    assert_eq!(exchange(&run.socket, &vector("166")), vector("167"));

    // Publishing without a connection fails with NOCONN.
    let publish = encode(|out| corebus::encode_mqtt_publish("test/topic", b"{}", 1, out));
    assert_eq!(
        call(&run.socket, &publish),
        Reply::Error(GgError::Noconn.code())
    );

    // Still no broker after several retries: no further status event.
    status
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut byte = [0; 1];
    let read = status.read(&mut byte);
    assert!(read.is_err(), "unexpected status data: {read:?}");

    terminate(&run.daemon.child);
    let exit = wait_exit(&mut run.daemon.child);
    let log = stderr_of(&mut run.daemon.child);
    assert_eq!(exit.code(), Some(0), "log: {log}");
    assert!(log.contains("connecting to localhost"), "log: {log}");
    assert!(!run.socket.exists(), "the socket was not removed");
}

/// Reads frames from `stream` until one decodes to a value.
fn next_event(stream: &mut UnixStream) -> Value {
    match decode_reply(&read_frame(stream).unwrap()) {
        Reply::Value(value) => value,
        other => panic!("expected an event, got {other:?}"),
    }
}

fn wait_connected(socket: &Path) -> UnixStream {
    let mut status = UnixStream::connect(socket).unwrap();
    status.set_read_timeout(Some(EVENT_TIMEOUT)).unwrap();
    status
        .write_all(&encode(corebus::encode_connection_status))
        .unwrap();
    assert_eq!(
        decode_reply(&read_frame(&mut status).unwrap()),
        Reply::Accepted
    );
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while next_event(&mut status) != Value::Bool(true) {
        assert!(Instant::now() < deadline, "iotcored did not connect");
    }
    status
}

fn subscribe(socket: &Path, filter: &str, virtual_subscription: bool) -> UnixStream {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(EVENT_TIMEOUT)).unwrap();
    stream
        .write_all(&encode(|out| {
            corebus::encode_mqtt_subscribe(&[filter], 1, virtual_subscription, out)
        }))
        .unwrap();
    assert_eq!(
        decode_reply(&read_frame(&mut stream).unwrap()),
        Reply::Accepted
    );
    stream
}

fn new_csr() -> String {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "iotcored stand-in test");
    params.serialize_request(&key).unwrap().pem().unwrap()
}

#[test]
fn iotcored_delivers_replies_through_broker() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path()).unwrap();
    let emulator = Emulator::start(&pki, dir.path()).unwrap();
    let broker = Broker::start(&pki, &emulator, dir.path()).unwrap();
    let mut run = start_iotcored(
        &dir.path().join("run"),
        broker.port(),
        &pki.claim_cert,
        &pki.claim_key,
        &pki.ca_cert,
        &[],
    );
    wait_for_socket(&run.socket, &mut run.daemon.child);
    let mut status = wait_connected(&run.socket);

    // The fleet provisioning reply arrives on a virtual subscription.
    let reply_filter = format!("{CREATE_CERTIFICATE_TOPIC}/+");
    let mut replies = subscribe(&run.socket, &reply_filter, true);
    let request = json!({ "certificateSigningRequest": new_csr() }).to_string();
    let publish = encode(|out| {
        corebus::encode_mqtt_publish(CREATE_CERTIFICATE_TOPIC, request.as_bytes(), 1, out)
    });
    assert_eq!(call(&run.socket, &publish), Reply::Value(Value::Null));

    let event = next_event(&mut replies);
    assert_eq!(
        event["topic"],
        json!(format!("{CREATE_CERTIFICATE_TOPIC}/accepted"))
    );
    let body: Value = serde_json::from_str(event["payload"].as_str().unwrap()).unwrap();
    assert!(
        body["certificatePem"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----"),
        "reply: {body}"
    );
    assert_eq!(emulator.issued_certificates().len(), 1);

    // A real subscription receives the broker's copy of our own PUBLISH,
    // and a second filter on the same connection does not see it.
    let mut echo = subscribe(&run.socket, "standin/+/echo", false);
    let mut other = subscribe(&run.socket, "standin/other", false);
    // The SUBSCRIBE goes out asynchronously; retry the publish until the
    // broker has it.
    let publish = encode(|out| corebus::encode_mqtt_publish("standin/a/echo", b"hello", 1, out));
    echo.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let event = loop {
        assert_eq!(call(&run.socket, &publish), Reply::Value(Value::Null));
        if let Ok(frame) = read_frame(&mut echo) {
            break decode_reply(&frame);
        }
        assert!(Instant::now() < deadline, "the echo never arrived");
    };
    assert_eq!(
        event,
        Reply::Value(json!({"topic": "standin/a/echo", "payload": "hello"}))
    );
    other
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(
        read_frame(&mut other).is_err(),
        "the other filter got an event"
    );

    // A notify publish gets no reply but is still sent.
    let notify = encode(|out| {
        corebus::encode_request("publish", RequestType::Notify, out, |writer| {
            writer.map(3)?;
            writer.key(b"topic")?;
            writer.str("standin/b/echo")?;
            writer.key(b"payload")?;
            writer.buf(b"quiet")?;
            writer.key(b"qos")?;
            writer.i64(0)
        })
    });
    let mut notify_stream = UnixStream::connect(&run.socket).unwrap();
    notify_stream.write_all(&notify).unwrap();
    notify_stream.shutdown(std::net::Shutdown::Write).unwrap();
    notify_stream.set_read_timeout(Some(EVENT_TIMEOUT)).unwrap();
    let mut unexpected = Vec::new();
    notify_stream.read_to_end(&mut unexpected).unwrap();
    assert!(unexpected.is_empty(), "notify got a reply: {unexpected:?}");
    echo.set_read_timeout(Some(EVENT_TIMEOUT)).unwrap();
    assert_eq!(
        next_event(&mut echo),
        json!({"topic": "standin/b/echo", "payload": "quiet"})
    );

    // Losing the broker becomes a `false` status event.
    broker.stop();
    assert_eq!(next_event(&mut status), Value::Bool(false));

    terminate(&run.daemon.child);
    let exit = wait_exit(&mut run.daemon.child);
    let log = stderr_of(&mut run.daemon.child);
    assert_eq!(exit.code(), Some(0), "log: {log}");
    assert!(log.contains("connected to localhost"), "log: {log}");
}

#[test]
fn iotcored_exits_on_untrusted_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path()).unwrap();
    let emulator = Emulator::start(&pki, dir.path()).unwrap();
    let broker = Broker::start(&pki, &emulator, dir.path()).unwrap();
    let mut run = start_iotcored(
        &dir.path().join("run"),
        broker.port(),
        &pki.untrusted_claim_cert,
        &pki.untrusted_claim_key,
        &pki.ca_cert,
        &[],
    );

    let status = wait_exit(&mut run.daemon.child);
    let log = stderr_of(&mut run.daemon.child);
    assert_eq!(status.code(), Some(1), "log: {log}");
    assert!(log.contains("authentication failed"), "log: {log}");
}

#[test]
fn topic_filter_matching() {
    use fleet_provisioning_testbed::iotcored_standin::{is_valid_filter, topic_matches};
    let cases = [
        ("a/b", "a/b", true),
        ("a/+", "a/b", true),
        ("a/+", "a/b/c", false),
        ("a/#", "a", true),
        ("a/#", "a/b/c", true),
        ("#", "a/b", true),
        ("#", "$aws/things", false),
        ("+/things", "$aws/things", false),
        (
            "$aws/certificates/create-from-csr/json/+",
            "$aws/certificates/create-from-csr/json/accepted",
            true,
        ),
        (
            "$aws/certificates/create-from-csr/json/+",
            "$aws/certificates/create-from-csr/json",
            false,
        ),
        ("a/+/c", "a//c", true),
        ("a/b", "a/b/", false),
    ];
    for (filter, topic, expected) in cases {
        assert_eq!(
            topic_matches(filter, topic),
            expected,
            "{filter} vs {topic}"
        );
    }
    for (filter, expected) in [
        ("a/#", true),
        ("+/+", true),
        ("a/#/b", false),
        ("a/b#", false),
        ("a+/b", false),
        ("", false),
    ] {
        assert_eq!(is_valid_filter(filter), expected, "{filter}");
    }
}

#[test]
fn iotcored_exits_on_untrusted_broker() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path()).unwrap();
    let emulator = Emulator::start(&pki, dir.path()).unwrap();
    let broker = Broker::start(&pki, &emulator, dir.path()).unwrap();
    // The claim certificate did not issue the broker's certificate.
    let mut run = start_iotcored(
        &dir.path().join("run"),
        broker.port(),
        &pki.claim_cert,
        &pki.claim_key,
        &pki.claim_cert,
        &[],
    );

    let status = wait_exit(&mut run.daemon.child);
    let log = stderr_of(&mut run.daemon.child);
    assert_eq!(status.code(), Some(1), "log: {log}");
    assert!(
        log.contains("the broker's certificate is invalid"),
        "log: {log}"
    );
}
