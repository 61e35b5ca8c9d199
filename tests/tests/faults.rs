//! Fault suite: crashes at every step, every emulator fault mode, and
//! broken surroundings. Each case ends with either a provisioned device
//! (with exactly one certificate issued) or a clean, retryable state.

use fleet_provisioning_testbed::bed::{run_command, RunResult, TestBed, Via};
use fleet_provisioning_testbed::emulator::{Api, Fault};
use fleet_provisioning_testbed::transport_tests;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn start_bed(serial: &str, via: Via) -> TestBed {
    TestBed::start_via(serial, Path::new(env!("CARGO_BIN_EXE_iotcored")), via)
        .expect("test bed starts")
}

/// Flags that keep retries fast in tests.
const FAST_RETRY: &[&str] = &["--retry-base-delay", "20"];

fn run_with_env(bed: &TestBed, extra: &[&str], env: &[(&str, &str)]) -> RunResult {
    let mut command = bed.command();
    command.args(extra).args(FAST_RETRY);
    for (name, value) in env {
        command.env(name, value);
    }
    run_command(&mut command)
}

fn run(bed: &TestBed, extra: &[&str]) -> RunResult {
    run_with_env(bed, extra, &[])
}

fn text_at(bed: &TestBed, path: &str) -> Option<String> {
    bed.config_value(path)
        .and_then(|value| value.as_str().map(str::to_owned))
}

/// Files in the output folder other than the expected results: leftovers
/// of an interrupted atomic write would show up here.
fn stray_files(dir: &Path) -> Vec<String> {
    let expected = [
        "priv_key",
        "certificate.pem",
        "AmazonRootCA.pem",
        "cert_req.pem",
        ".fleet-provisioning.checkpoint",
    ];
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| !expected.contains(&name.as_str()))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Checks a fully provisioned device: config, files, key pair, no
/// checkpoint, and exactly one certificate issued.
fn assert_provisioned(bed: &TestBed, serial: &str) {
    let cert = bed.output_dir.join("certificate.pem");
    let key = bed.output_dir.join("priv_key");
    assert_eq!(
        text_at(bed, "system/thingName"),
        Some(format!("ggl-{serial}"))
    );
    assert_eq!(
        text_at(bed, "system/certificateFilePath").as_deref(),
        cert.to_str()
    );
    assert_eq!(
        text_at(bed, "system/privateKeyPath").as_deref(),
        key.to_str()
    );
    assert_eq!(
        text_at(
            bed,
            "services/aws.greengrass.NucleusLite/configuration/iotCredEndpoint"
        )
        .as_deref(),
        Some("localhost")
    );
    let cert_pub = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-pubkey"]);
    let key_pub = openssl(&["pkey", "-in", key.to_str().unwrap(), "-pubout"]);
    assert!(cert_pub.contains("BEGIN PUBLIC KEY"), "{cert_pub}");
    assert_eq!(cert_pub, key_pub, "certificate does not match priv_key");
    let issued = bed.emulator.issued_certificates();
    assert_eq!(issued.len(), 1, "certificates issued: {issued:?}");
    assert_eq!(
        std::fs::read_to_string(&cert).unwrap(),
        issued[0].pem,
        "certificate.pem is not the issued certificate"
    );
    assert_eq!(bed.emulator.registered_things().len(), 1);
    assert!(
        !bed.output_dir
            .join(".fleet-provisioning.checkpoint")
            .exists(),
        "checkpoint left behind"
    );
    assert!(
        stray_files(&bed.output_dir).is_empty(),
        "{:?}",
        stray_files(&bed.output_dir)
    );
}

/// Asserts nothing marks the device as provisioned.
fn assert_not_provisioned(bed: &TestBed) {
    assert_eq!(bed.config_value("system/certificateFilePath"), None);
    assert!(!bed.output_dir.join("certificate.pem").exists());
    assert!(
        stray_files(&bed.output_dir).is_empty(),
        "{:?}",
        stray_files(&bed.output_dir)
    );
}

fn openssl(args: &[&str]) -> String {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Waits until the iotcored stand-in removed its socket, which it does when
/// it stops; a killed tool must not leave it running.
fn assert_iotcored_stops(bed: &TestBed) {
    let socket = bed.socket_dir.join("iotcoredfleet");
    let deadline = Instant::now() + Duration::from_secs(10);
    while socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !socket.exists(),
        "iotcored still serves {}",
        socket.display()
    );
}

fn crash_then_resume(point: &str, via: Via) {
    let serial = format!("CRASH-{point}");
    let bed = start_bed(&serial, via);
    let crashed = run_with_env(&bed, &[], &[("FLEET_PROVISIONING_FAILPOINT", point)]);
    assert_eq!(
        crashed.code, None,
        "expected SIGKILL at {point}; log:\n{}",
        crashed.log
    );
    assert!(
        crashed.log.contains(&format!("crash point {point}")),
        "{}",
        crashed.log
    );
    assert_iotcored_stops(&bed);

    let resumed = run(&bed, &[]);
    assert_eq!(resumed.code, Some(0), "log:\n{}", resumed.log);
    assert_provisioned(&bed, &serial);
}

/// Returns a loopback port with no listener, other than `avoid`.
fn closed_port(avoid: u16) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    assert_ne!(port, avoid);
    port
}

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` with `options`, or returns `None` (with the
    /// reason printed) where this process may not mount, such as a
    /// developer machine without root.
    fn mount(path: PathBuf, size: &str, options: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(&path).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}{options}"),
                "tmpfs",
            ])
            .arg(&path)
            .status();
        match status {
            Ok(status) if status.success() => Some(Tmpfs { path }),
            other => {
                eprintln!("skipped: cannot mount a tmpfs here ({other:?}); CI runs this as root");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

transport_tests! {
    fn crash_after_key_recorded(via) {
        crash_then_resume("key-recorded", via);
    }

    fn crash_after_key_written(via) {
        crash_then_resume("key-written", via);
    }

    fn crash_after_certificate_recorded(via) {
        crash_then_resume("certificate-recorded", via);
    }

    fn crash_after_thing_recorded(via) {
        crash_then_resume("thing-recorded", via);
    }

    fn crash_after_files_written(via) {
        crash_then_resume("files-written", via);
    }

    fn crash_after_partial_config(via) {
        crash_then_resume("config-partial", via);
    }

    fn resume_after_thing_recorded_needs_no_broker(via) {
        let bed = start_bed("NOBROKER", via);
        let crashed = run_with_env(
            &bed,
            &[],
            &[("FLEET_PROVISIONING_FAILPOINT", "thing-recorded")],
        );
        assert_eq!(crashed.code, None, "log:\n{}", crashed.log);
        let clients = bed.emulator.clients_seen().len();
        let resumed = run(&bed, &[]);
        assert_eq!(resumed.code, Some(0), "log:\n{}", resumed.log);
        assert!(!resumed.log.contains("started iotcored"), "{}", resumed.log);
        assert_eq!(bed.emulator.clients_seen().len(), clients);
        assert_provisioned(&bed, "NOBROKER");
    }

    fn throttled_csr_is_retried(via) {
        let bed = start_bed("THROTTLE1", via);
        bed.emulator
            .set_fault(Api::CreateCertificateFromCsr, Fault::Throttle { times: 2 });
        let result = run(&bed, &[]);
        assert_eq!(result.code, Some(0), "log:\n{}", result.log);
        assert_eq!(
            result.log.matches("retrying in").count(),
            2,
            "{}",
            result.log
        );
        assert!(result.log.contains("Throttling"), "{}", result.log);
        assert_provisioned(&bed, "THROTTLE1");
    }

    fn throttled_register_reuses_certificate(via) {
        let bed = start_bed("THROTTLE2", via);
        bed.emulator
            .set_fault(Api::RegisterThing, Fault::Throttle { times: 2 });
        let result = run(&bed, &[]);
        assert_eq!(result.code, Some(0), "log:\n{}", result.log);
        assert!(
            result
                .log
                .contains("registering the thing with its ownership token"),
            "{}",
            result.log
        );
        assert_provisioned(&bed, "THROTTLE2");
    }

    fn throttling_beyond_attempts_exits_rejected(via) {
        let bed = start_bed("THROTTLE3", via);
        bed.emulator
            .set_fault(Api::CreateCertificateFromCsr, Fault::Throttle { times: 10 });
        let result = run(&bed, &["--max-attempts", "3"]);
        assert_eq!(result.code, Some(4), "log:\n{}", result.log);
        assert!(
            result.log.contains("giving up after 3 attempts"),
            "{}",
            result.log
        );
        assert!(result.log.contains("statusCode 429"), "{}", result.log);
        assert_not_provisioned(&bed);
    }

    fn delay_past_timeout_exits_timeout(via) {
        let bed = start_bed("DELAY", via);
        bed.emulator
            .set_fault(Api::CreateCertificateFromCsr, Fault::Delay { ms: 2_500 });
        let result = run(&bed, &["--response-timeout", "1", "--max-attempts", "2"]);
        assert_eq!(result.code, Some(5), "log:\n{}", result.log);
        assert!(
            result.log.contains("got no reply within 1000 ms"),
            "{}",
            result.log
        );
        assert_not_provisioned(&bed);
    }

    fn delay_within_timeout_succeeds(via) {
        let bed = start_bed("SLOW", via);
        bed.emulator
            .set_fault(Api::RegisterThing, Fault::Delay { ms: 300 });
        let result = run(&bed, &["--response-timeout", "5"]);
        assert_eq!(result.code, Some(0), "log:\n{}", result.log);
        assert_provisioned(&bed, "SLOW");
    }

    fn dropped_register_reply_times_out_then_resumes(via) {
        let bed = start_bed("DROP2", via);
        bed.emulator.set_fault(Api::RegisterThing, Fault::Drop);
        let result = run(&bed, &["--response-timeout", "1", "--max-attempts", "2"]);
        assert_eq!(result.code, Some(5), "log:\n{}", result.log);
        assert_not_provisioned(&bed);
        assert_eq!(bed.emulator.issued_certificates().len(), 1);

        bed.emulator.clear_fault(Api::RegisterThing);
        let rerun = run(&bed, &[]);
        assert_eq!(rerun.code, Some(0), "log:\n{}", rerun.log);
        assert_provisioned(&bed, "DROP2");
    }

    fn garbled_reply_exits_invalid_reply(via) {
        let bed = start_bed("GARBLE", via);
        bed.emulator.set_fault(Api::RegisterThing, Fault::Garble);
        let result = run(&bed, &[]);
        assert_eq!(result.code, Some(7), "log:\n{}", result.log);
        assert!(
            result
                .log
                .contains("RegisterThing returned an invalid reply"),
            "{}",
            result.log
        );
        assert_not_provisioned(&bed);
    }

    fn oversized_reply_outcome(via) {
        let bed = start_bed("OVERSIZE", via);
        bed.emulator
            .set_fault(Api::CreateCertificateFromCsr, Fault::Oversized);
        let result = run(&bed, &["--response-timeout", "1", "--max-attempts", "1"]);
        match via {
            // iotcored announces a maximum packet size of 5,000 bytes, so
            // the broker drops the reply and the request times out.
            Via::Iotcored => {
                assert_eq!(result.code, Some(5), "log:\n{}", result.log);
                assert_not_provisioned(&bed);
            }
            // The direct transport takes replies up to its 16 KiB buffer.
            Via::Direct => {
                assert_eq!(result.code, Some(0), "log:\n{}", result.log);
                assert_provisioned(&bed, "OVERSIZE");
            }
        }
    }

    fn wrong_token_is_rejected_and_rerun_starts_over(via) {
        let bed = start_bed("TOKEN", via);
        bed.emulator
            .set_fault(Api::CreateCertificateFromCsr, Fault::WrongToken);
        let result = run(&bed, &[]);
        assert_eq!(result.code, Some(4), "log:\n{}", result.log);
        assert!(
            result.log.contains("RegisterThing was rejected"),
            "{}",
            result.log
        );
        assert_not_provisioned(&bed);

        bed.emulator.clear_fault(Api::CreateCertificateFromCsr);
        let rerun = run(&bed, &[]);
        assert_eq!(rerun.code, Some(0), "log:\n{}", rerun.log);
        assert!(!rerun
            .log
            .contains("registering the thing with its ownership token"));
        assert_eq!(bed.emulator.issued_certificates().len(), 2);
        assert_eq!(bed.emulator.registered_things().len(), 1);
    }

    fn config_daemon_down_is_local_error(via) {
        let mut bed = start_bed("NOCONFIG", via);
        bed.config.stop();
        let result = run(&bed, &[]);
        assert_eq!(result.code, Some(6), "log:\n{}", result.log);
        assert!(result.log.contains("gg_config"), "{}", result.log);
        assert!(
            result.log.contains("is the daemon running"),
            "{}",
            result.log
        );
        assert!(!bed.output_dir.exists());
        assert!(bed.emulator.clients_seen().is_empty());
    }

    fn broker_down_exits_claim_connection(via) {
        let bed = start_bed("NOBROKER2", via);
        let closed = closed_port(bed.broker.port()).to_string();
        let mut command = bed.command();
        // Point the connection at a port where nothing listens: the broker
        // is down.
        command
            .env("IOTCORED_STANDIN_PORT", &closed)
            .args(["--connect-timeout", "1", "--max-attempts", "2"])
            .args(FAST_RETRY);
        if via == Via::Direct {
            command.args(["--port", &closed]);
        }
        let output = command.output().unwrap();
        let log = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(3), "log:\n{log}");
        assert!(log.contains("claim connection failed"), "{log}");
        assert!(log.contains("retrying in"), "{log}");
        assert!(log.contains("giving up after 2 attempts"), "{log}");
        assert_not_provisioned(&bed);
    }

    fn read_only_output_folder_is_local_error(via) {
        let bed = start_bed("READONLY", via);
        let Some(mount) = Tmpfs::mount(bed.dir().join("ro"), "1m", ",ro") else {
            return;
        };
        let result = run(&bed, &["-o", mount.path.to_str().unwrap()]);
        assert_eq!(result.code, Some(6), "log:\n{}", result.log);
        assert!(
            result.log.contains("Read-only file system"),
            "{}",
            result.log
        );
        assert!(bed.emulator.issued_certificates().is_empty());
        assert_eq!(bed.config_value("system/certificateFilePath"), None);
    }

    fn full_disk_is_local_error_and_leaves_nothing(via) {
        let bed = start_bed("DISKFULL", via);
        let Some(mount) = Tmpfs::mount(bed.dir().join("full"), "16k", "") else {
            return;
        };
        // Fill the file system so that the first write of the run fails.
        let filler = mount.path.join("filler");
        let _ = std::fs::write(&filler, vec![0u8; 64 * 1024]);
        let result = run(&bed, &["-o", mount.path.to_str().unwrap()]);
        assert_eq!(result.code, Some(6), "log:\n{}", result.log);
        assert!(result.log.contains("free disk space"), "{}", result.log);
        let left: Vec<String> = std::fs::read_dir(&mount.path)
            .unwrap()
            .filter_map(Result::ok)
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name != "filler")
            .collect();
        assert!(left.is_empty(), "half-written files left: {left:?}");
        assert!(bed.emulator.issued_certificates().is_empty());
    }

    fn foreign_key_is_not_overwritten(via) {
        let bed = start_bed("FOREIGN", via);
        std::fs::create_dir_all(&bed.output_dir).unwrap();
        let key = bed.output_dir.join("priv_key");
        std::fs::write(&key, b"someone else's key\n").unwrap();
        let result = run(&bed, &[]);
        assert_eq!(result.code, Some(6), "log:\n{}", result.log);
        assert!(result.log.contains("will not overwrite"), "{}", result.log);
        assert_eq!(std::fs::read(&key).unwrap(), b"someone else's key\n");
    }

    fn damaged_checkpoint_starts_over(via) {
        let bed = start_bed("DAMAGED", via);
        let crashed = run_with_env(
            &bed,
            &[],
            &[("FLEET_PROVISIONING_FAILPOINT", "key-written")],
        );
        assert_eq!(crashed.code, None, "log:\n{}", crashed.log);
        let checkpoint = bed.output_dir.join(".fleet-provisioning.checkpoint");
        let mut bytes = std::fs::read(&checkpoint).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&checkpoint, bytes).unwrap();
        let key_before = std::fs::read(bed.output_dir.join("priv_key")).unwrap();
        let result = run(&bed, &[]);
        assert_eq!(result.code, Some(0), "log:\n{}", result.log);
        assert!(
            result.log.contains("ignoring the checkpoint"),
            "{}",
            result.log
        );
        assert!(result.log.contains("reusing the key"), "{}", result.log);
        assert_eq!(
            std::fs::read(bed.output_dir.join("priv_key")).unwrap(),
            key_before,
            "the key was replaced"
        );
        assert_provisioned(&bed, "DAMAGED");
    }

    fn sigterm_stops_run_cleanly(via) {
        let bed = start_bed("SIGTERM", via);
        bed.emulator
            .set_fault(Api::CreateCertificateFromCsr, Fault::Drop);
        let child = bed
            .command()
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Signal once the request is out, so the run is mid-wait.
        let deadline = Instant::now() + Duration::from_secs(10);
        while bed.emulator.requests_seen() == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(bed.emulator.requests_seen(), 1, "the request never arrived");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let output = child.wait_with_output().unwrap();
        let log = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(143), "log:\n{log}");
        assert!(log.contains("stopped by signal 15"), "{log}");
        assert_iotcored_stops(&bed);
        assert_not_provisioned(&bed);
    }

    fn expired_token_requests_new_certificate(via) {
        use fleet_provisioning_core::checkpoint;
        let bed = start_bed("EXPIRED", via);
        let crashed = run_with_env(
            &bed,
            &[],
            &[("FLEET_PROVISIONING_FAILPOINT", "certificate-recorded")],
        );
        assert_eq!(crashed.code, None, "log:\n{}", crashed.log);
        let path = bed.output_dir.join(".fleet-provisioning.checkpoint");
        let mut record = checkpoint::decode(&std::fs::read(&path).unwrap()).unwrap();
        let issued = record.issued.as_mut().expect("certificate recorded");
        // Issued two hours ago: the one-hour ownership token has expired.
        issued.issued_at_s -= 7_200;
        let mut buffer = vec![0u8; checkpoint::MAX_CHECKPOINT_LEN];
        let len = checkpoint::encode(&record, &mut buffer).unwrap();
        std::fs::write(&path, &buffer[..len]).unwrap();

        let resumed = run(&bed, &[]);
        assert_eq!(resumed.code, Some(0), "log:\n{}", resumed.log);
        assert!(resumed.log.contains("has expired"), "{}", resumed.log);
        assert_eq!(bed.emulator.issued_certificates().len(), 2);
        assert_eq!(bed.emulator.registered_things().len(), 1);
        let key = bed.output_dir.join("priv_key");
        let cert = bed.output_dir.join("certificate.pem");
        let cert_pub = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-pubkey"]);
        let key_pub = openssl(&["pkey", "-in", key.to_str().unwrap(), "-pubout"]);
        assert_eq!(cert_pub, key_pub);
    }
}
