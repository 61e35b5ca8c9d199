//! Misuse and hostile surroundings: a daemon that stalls, bad values that
//! must fail before any side effect, files that are not the tool's, two
//! runs at once, and recoveries that must not need manual cleanup.

use fleet_provisioning_core::eventstream::crc32;
use fleet_provisioning_testbed::bed::{run_command, RunResult, TestBed};
use fleet_provisioning_testbed::config_standin::ConfigServer;
use fleet_provisioning_testbed::emulator::{Api, Fault};
use serde_json::{json, Value};
use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

fn start_bed(serial: &str) -> TestBed {
    TestBed::start(serial, Path::new(env!("CARGO_BIN_EXE_iotcored"))).expect("test bed starts")
}

fn run(bed: &TestBed, extra: &[&str]) -> RunResult {
    let mut command = bed.command();
    command.args(extra).args(["--retry-base-delay", "20"]);
    run_command(&mut command)
}

/// Serves `tree` on a second `gg_config` socket and returns its folder.
fn serve_config(bed: &TestBed, name: &str, tree: Value) -> (ConfigServer, PathBuf) {
    let socket_dir = bed.dir().join(name);
    let server = ConfigServer::start(&socket_dir, tree).expect("gg_config stand-in starts");
    (server, socket_dir)
}

fn component(tree: &mut Value) -> &mut Value {
    &mut tree["services"]["aws.greengrass.fleet_provisioning"]["configuration"]
}

fn run_with_config(bed: &TestBed, socket_dir: &Path, extra: &[&str]) -> RunResult {
    let mut command = bed.command();
    command.arg("--socket-dir").arg(socket_dir).args(extra);
    run_command(&mut command)
}

/// A `gg_config` server that accepts one connection, sends a valid prelude
/// announcing a 2,000-byte frame and then one byte every 200 ms: a daemon
/// that stalls without ever closing.
fn trickling_config_daemon(socket_dir: &Path) -> thread::JoinHandle<()> {
    std::fs::create_dir_all(socket_dir).unwrap();
    let listener = UnixListener::bind(socket_dir.join("gg_config")).unwrap();
    thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        let mut prelude = Vec::new();
        prelude.extend_from_slice(&2_000u32.to_be_bytes());
        prelude.extend_from_slice(&0u32.to_be_bytes());
        let crc = crc32(&prelude);
        prelude.extend_from_slice(&crc.to_be_bytes());
        if stream.write_all(&prelude).is_err() {
            return;
        }
        for _ in 0..300 {
            thread::sleep(Duration::from_millis(200));
            if stream.write_all(&[0]).is_err() {
                return;
            }
        }
    })
}

#[test]
fn stalling_config_daemon_honours_sigterm() {
    let bed = start_bed("STALL");
    let socket_dir = bed.dir().join("stall");
    let _daemon = trickling_config_daemon(&socket_dir);
    let mut command = bed.command();
    command
        .arg("--socket-dir")
        .arg(&socket_dir)
        .stderr(Stdio::piped());
    let child = command.spawn().unwrap();
    thread::sleep(Duration::from_millis(500));
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    let signalled = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let output = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(143), "log:\n{log}");
    // Not a speed target: ending before the call's 10 s deadline shows the
    // signal ended the wait, not the deadline.
    assert!(
        signalled.elapsed() < Duration::from_secs(8),
        "SIGTERM took {:?} to take effect",
        signalled.elapsed()
    );
    assert!(log.contains("stopped by signal 15"), "{log}");
}

#[test]
fn stalling_config_daemon_times_out() {
    let bed = start_bed("STALL2");
    let socket_dir = bed.dir().join("stall");
    let _daemon = trickling_config_daemon(&socket_dir);
    let result = run_with_config(&bed, &socket_dir, &[]);
    assert_eq!(result.code, Some(6), "log:\n{}", result.log);
    assert!(
        result.log.contains("sent no complete response within 10 s"),
        "{}",
        result.log
    );
}

/// A change to the configuration tree, for table-driven cases.
type ConfigChange<'a> = Box<dyn Fn(&mut Value) + 'a>;

#[test]
fn invalid_values_fail_before_side_effects() {
    let bed = start_bed("BADVALUES");
    let not_pem = bed.dir().join("not-pem.key");
    std::fs::write(&not_pem, "this is not a key\n").unwrap();
    let cases: Vec<(&str, ConfigChange, &str)> = vec![
        (
            "claim key not PEM",
            Box::new(|tree| component(tree)["claimKeyPath"] = json!(not_pem)),
            "claimKeyPath",
        ),
        (
            "root CA not PEM",
            Box::new(|tree| component(tree)["rootCaPath"] = json!(not_pem)),
            "rootCaPath",
        ),
        (
            "endpoint with port",
            Box::new(|tree| component(tree)["iotDataEndpoint"] = json!("localhost:8883")),
            "iotDataEndpoint",
        ),
        (
            "endpoint with leading hyphen",
            Box::new(|tree| component(tree)["iotDataEndpoint"] = json!("-localhost")),
            "iotDataEndpoint",
        ),
        (
            "common name with backslash",
            Box::new(|tree| component(tree)["csrCommonName"] = json!("a\\b")),
            "csrCommonName",
        ),
        (
            "negative max attempts",
            Box::new(|tree| component(tree)["maxAttempts"] = json!(-1)),
            "maxAttempts",
        ),
        (
            "certPath in a missing folder",
            Box::new(|tree| component(tree)["certPath"] = json!("/nonexistent-folder/cert.pem")),
            "certPath",
        ),
    ];
    for (index, (case, change, key)) in cases.into_iter().enumerate() {
        let mut tree = bed.config.tree();
        change(&mut tree);
        let (_server, socket_dir) = serve_config(&bed, &format!("bad-{index}"), tree);
        let output_dir = bed.dir().join(format!("out-{index}"));
        let result = run_with_config(&bed, &socket_dir, &["-o", output_dir.to_str().unwrap()]);
        assert_eq!(result.code, Some(2), "{case}: log:\n{}", result.log);
        assert!(result.log.contains(key), "{case}: log:\n{}", result.log);
        assert!(
            !result.log.contains("started iotcored"),
            "{case}: {}",
            result.log
        );
        assert!(!output_dir.exists(), "{case}: output folder created");
    }
    assert!(bed.emulator.clients_seen().is_empty());
}

#[test]
fn empty_endpoint_flag_is_configuration_error() {
    let bed = start_bed("EMPTYEP");
    let result = run(&bed, &["-e", ""]);
    assert_eq!(result.code, Some(2), "log:\n{}", result.log);
    assert!(result.log.contains("iotDataEndpoint"), "{}", result.log);
}

#[test]
fn fixed_template_after_rejection_succeeds() {
    let bed = start_bed("TEMPLATE");
    let wrong = run(&bed, &["-t", "WrongTemplate"]);
    assert_eq!(wrong.code, Some(4), "log:\n{}", wrong.log);
    assert!(wrong.log.contains("ResourceNotFound"), "{}", wrong.log);
    let fixed = run(&bed, &[]);
    assert_eq!(fixed.code, Some(0), "log:\n{}", fixed.log);
    assert!(fixed.log.contains("keeping the key"), "{}", fixed.log);
    assert_eq!(
        bed.config_value("system/thingName"),
        Some(json!("ggl-TEMPLATE"))
    );
}

#[test]
fn spent_recorded_token_falls_back_in_same_run() {
    let bed = start_bed("SPENT");
    // RegisterThing succeeds at the emulator, but its reply comes after the
    // tool gave up: the recorded token is now spent.
    bed.emulator
        .set_fault(Api::RegisterThing, Fault::Delay { ms: 2_000 });
    let first = run(&bed, &["--response-timeout", "1", "--max-attempts", "1"]);
    assert_eq!(first.code, Some(5), "log:\n{}", first.log);
    bed.emulator.clear_fault(Api::RegisterThing);
    thread::sleep(Duration::from_millis(1_500));

    let rerun = run(&bed, &[]);
    assert_eq!(rerun.code, Some(0), "log:\n{}", rerun.log);
    assert!(
        rerun
            .log
            .contains("rejected the ownership token recorded by the last run"),
        "{}",
        rerun.log
    );
    assert_eq!(bed.emulator.issued_certificates().len(), 2);
}

#[test]
fn foreign_certificate_is_found_before_any_request() {
    let bed = start_bed("FOREIGNCERT");
    std::fs::create_dir_all(&bed.output_dir).unwrap();
    let cert = bed.output_dir.join("certificate.pem");
    std::fs::write(&cert, "someone else's certificate\n").unwrap();
    let result = run(&bed, &[]);
    assert_eq!(result.code, Some(6), "log:\n{}", result.log);
    assert!(result.log.contains("will not overwrite"), "{}", result.log);
    assert!(bed.emulator.issued_certificates().is_empty());
    assert_eq!(
        std::fs::read_to_string(&cert).unwrap(),
        "someone else's certificate\n"
    );
}

#[test]
fn csr_path_never_clobbers_other_file() {
    let bed = start_bed("CSRPATH");
    let precious = bed.dir().join("precious.txt");
    std::fs::write(&precious, "keep me\n").unwrap();
    let mut tree = bed.config.tree();
    component(&mut tree)["csrPath"] = json!(precious);
    let (_server, socket_dir) = serve_config(&bed, "csrpath", tree);
    let result = run_with_config(&bed, &socket_dir, &[]);
    assert_eq!(result.code, Some(6), "log:\n{}", result.log);
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me\n");
    assert!(bed.emulator.issued_certificates().is_empty());
}

#[test]
fn second_concurrent_run_is_rejected() {
    let bed = start_bed("CONCURRENT");
    bed.emulator
        .set_fault(Api::CreateCertificateFromCsr, Fault::Delay { ms: 1_500 });
    let mut first = bed.command();
    first.stderr(Stdio::piped());
    let first = first.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while bed.emulator.requests_seen() == 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    let second = run(&bed, &[]);
    assert_eq!(second.code, Some(6), "log:\n{}", second.log);
    assert!(
        second
            .log
            .contains("another fleet-provisioning run is using"),
        "{}",
        second.log
    );
    let first = first.wait_with_output().unwrap();
    assert_eq!(
        first.status.code(),
        Some(0),
        "log:\n{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(bed.emulator.issued_certificates().len(), 1);
    assert!(!bed
        .output_dir
        .join(".fleet-provisioning.checkpoint")
        .exists());
}

#[test]
fn relative_output_dir_is_recorded_absolute() {
    let bed = start_bed("RELATIVE");
    let mut command = bed.command();
    command.current_dir(bed.dir()).args(["-o", "relative-out"]);
    let result = run_command(&mut command);
    assert_eq!(result.code, Some(0), "log:\n{}", result.log);
    let recorded = bed
        .config_value("system/certificateFilePath")
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap();
    assert!(Path::new(&recorded).is_absolute(), "{recorded}");
    assert!(Path::new(&recorded).is_file(), "{recorded}");
}
