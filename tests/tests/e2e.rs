//! End-to-end runs of the real `fleet-provisioning` binary against the
//! loopback test bed: mosquitto with mutual TLS, the IoT Core emulator, the
//! `gg_config` and iotcored stand-ins.

use fleet_provisioning_testbed::bed::{run_command, TestBed, Via, TEMPLATE_NAME};
use fleet_provisioning_testbed::emulator::{Api, Fault};
use fleet_provisioning_testbed::transport_tests;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

fn start_bed(serial: &str, via: Via) -> TestBed {
    TestBed::start_via(serial, Path::new(env!("CARGO_BIN_EXE_iotcored")), via)
        .expect("test bed starts")
}

fn openssl(args: &[&str]) -> (bool, String) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

fn assert_no_secret_in_log(bed: &TestBed, log: &str) {
    assert!(
        !log.contains("PRIVATE KEY"),
        "log shows a private key:\n{log}"
    );
    assert!(
        !log.contains("BEGIN CERTIFICATE"),
        "log shows a certificate body:\n{log}"
    );
    for certificate in bed.emulator.issued_certificates() {
        let body_line = certificate.pem.lines().nth(1).unwrap_or_default();
        assert!(
            !log.contains(body_line),
            "log shows certificate bytes:\n{log}"
        );
    }
}

transport_tests! {
    fn provisions_device_end_to_end(via) {
        let bed = start_bed("E2E-0001", via);
        // Trace level, so that the secret check below covers every log line.
        let result = bed.run(&["-vv"]);
        assert_eq!(result.code, Some(0), "log:\n{}", result.log);
        assert!(result
            .log
            .contains("Process Complete, Your device is now provisioned"));
        let direct_line = format!("INFO: connecting to localhost:{}", bed.broker.port());
        match via {
            Via::Iotcored => {
                assert!(result.log.contains("started iotcored"), "log:\n{}", result.log);
                assert!(!result.log.contains(&direct_line), "log:\n{}", result.log);
            }
            Via::Direct => {
                assert!(result.log.contains(&direct_line), "log:\n{}", result.log);
                assert!(!result.log.contains("started iotcored"), "log:\n{}", result.log);
            }
        }

        let cert = bed.output_dir.join("certificate.pem");
        let key = bed.output_dir.join("priv_key");
        let root_ca = bed.output_dir.join("AmazonRootCA.pem");
        let ca = bed.pki.ca_cert.to_str().unwrap();

        let (verified, text) = openssl(&["verify", "-CAfile", ca, cert.to_str().unwrap()]);
        assert!(
            verified,
            "certificate does not chain to the test CA: {text}"
        );
        let (_, cert_pub) = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-pubkey"]);
        let (_, key_pub) = openssl(&["pkey", "-in", key.to_str().unwrap(), "-pubout"]);
        assert!(cert_pub.contains("BEGIN PUBLIC KEY"));
        assert_eq!(
            cert_pub, key_pub,
            "certificate public key differs from priv_key"
        );

        let key_mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(key_mode, 0o600, "priv_key mode is {key_mode:o}");
        assert_eq!(
            std::fs::read(&root_ca).unwrap(),
            std::fs::read(&bed.pki.ca_cert).unwrap(),
            "AmazonRootCA.pem is not a copy of the root CA"
        );
        assert!(
            !bed.output_dir.join("cert_req.pem").exists(),
            "the CSR file was left behind"
        );

        let text_at = |path: &str| {
            bed.config_value(path)
                .and_then(|v| v.as_str().map(str::to_owned))
        };
        assert_eq!(text_at("system/thingName").as_deref(), Some("ggl-E2E-0001"));
        assert_eq!(
            text_at("system/certificateFilePath").as_deref(),
            cert.to_str()
        );
        assert_eq!(text_at("system/privateKeyPath").as_deref(), key.to_str());
        assert_eq!(text_at("system/rootCaPath").as_deref(), root_ca.to_str());
        assert_eq!(
            text_at("services/aws.greengrass.NucleusLite/configuration/iotDataEndpoint").as_deref(),
            Some("localhost")
        );
        assert_eq!(
            text_at("services/aws.greengrass.NucleusLite/configuration/iotCredEndpoint").as_deref(),
            Some("localhost")
        );

        assert_eq!(bed.emulator.issued_certificates().len(), 1);
        assert_eq!(bed.emulator.registered_things().len(), 1);
        assert_no_secret_in_log(&bed, &result.log);
    }

    fn config_writes_follow_reference_order(via) {
        let bed = start_bed("E2E-ORDER", via);
        let result = bed.run(&[]);
        assert_eq!(result.code, Some(0), "log:\n{}", result.log);
        let writes: Vec<String> = bed
            .config
            .requests()
            .into_iter()
            .filter(|(method, _)| method == "write")
            .map(|(_, key_path)| key_path.join("/"))
            .collect();
        assert_eq!(
            writes,
            [
                "system/rootCaPath",
                "system/privateKeyPath",
                "system/thingName",
                "services/aws.greengrass.NucleusLite/configuration/iotDataEndpoint",
                "services/aws.greengrass.NucleusLite/configuration/iotCredEndpoint",
                "system/certificateFilePath",
            ]
        );
    }

    fn second_run_does_not_contact_broker(via) {
        let bed = start_bed("E2E-0002", via);
        let first = bed.run(&[]);
        assert_eq!(first.code, Some(0), "log:\n{}", first.log);
        let clients_before = bed.emulator.clients_seen().len();
        let requests_before = bed.emulator.requests_seen();

        let second = bed.run(&[]);
        assert_eq!(second.code, Some(0), "log:\n{}", second.log);
        assert!(
            second.log.contains("already provisioned"),
            "log:\n{}",
            second.log
        );
        assert!(
            !second.log.contains("started iotcored"),
            "log:\n{}",
            second.log
        );
        assert_eq!(bed.emulator.clients_seen().len(), clients_before);
        assert_eq!(bed.emulator.requests_seen(), requests_before);
        assert_eq!(bed.emulator.issued_certificates().len(), 1);
    }

    fn rejected_csr_exits_with_error_code(via) {
        let bed = start_bed("E2E-0003", via);
        bed.emulator.set_fault(
            Api::CreateCertificateFromCsr,
            Fault::Reject {
                status: 400,
                code: "InvalidCSR".to_owned(),
                message: "The CSR could not be parsed".to_owned(),
            },
        );
        let result = bed.run(&[]);
        assert_eq!(result.code, Some(4), "log:\n{}", result.log);
        assert!(
            result.log.contains("CreateCertificateFromCsr"),
            "log:\n{}",
            result.log
        );
        assert!(
            result.log.contains("statusCode 400"),
            "log:\n{}",
            result.log
        );
        assert!(result.log.contains("InvalidCSR"), "log:\n{}", result.log);
        assert!(
            result.log.contains("The CSR could not be parsed"),
            "log:\n{}",
            result.log
        );
        assert!(!bed.output_dir.join("certificate.pem").exists());
        assert_eq!(bed.config_value("system/certificateFilePath"), None);
        assert_eq!(bed.config_value("system/thingName"), None);
    }

    fn rejected_register_thing_exits_with_error_code(via) {
        let bed = start_bed("E2E-0004", via);
        bed.emulator.set_fault(
            Api::RegisterThing,
            Fault::Reject {
                status: 400,
                code: "InvalidParameters".to_owned(),
                message: "Parameter SerialNumber is not allowed".to_owned(),
            },
        );
        let result = bed.run(&[]);
        assert_eq!(result.code, Some(4), "log:\n{}", result.log);
        assert!(result.log.contains("RegisterThing"), "log:\n{}", result.log);
        assert!(
            result.log.contains("InvalidParameters"),
            "log:\n{}",
            result.log
        );
        assert!(!bed.output_dir.join("certificate.pem").exists());
        assert_eq!(bed.config_value("system/certificateFilePath"), None);
        assert_no_secret_in_log(&bed, &result.log);
    }

    fn untrusted_claim_certificate_fails_clearly(via) {
        let bed = start_bed("E2E-0005", via);
        let cert = bed.pki.untrusted_claim_cert.to_str().unwrap().to_owned();
        let key = bed.pki.untrusted_claim_key.to_str().unwrap().to_owned();
        let result = bed.run(&[
            "-c",
            &cert,
            &format!("--claim-key={key}"),
            "--connect-timeout",
            "5",
        ]);
        assert_eq!(result.code, Some(3), "log:\n{}", result.log);
        assert!(
            result.log.contains("claim connection failed"),
            "log:\n{}",
            result.log
        );
        if via == Via::Direct {
            // The broker's alert is read even though it closes the
            // connection while the client still sends its handshake.
            assert!(
                result.log.contains("fatal alert (unknown_ca)"),
                "log:\n{}",
                result.log
            );
        }
        assert!(bed.emulator.issued_certificates().is_empty());
        assert!(!bed.output_dir.join("certificate.pem").exists());
    }

    fn unconfigured_device_exits_without_work(via) {
        let bed = start_bed("E2E-0006", via);
        let mut tree = bed.config.tree();
        tree["services"]["aws.greengrass.fleet_provisioning"]["configuration"]
            .as_object_mut()
            .unwrap()
            .remove("claimCertPath");
        let socket_dir = bed.dir().join("run-unconfigured");
        let _config =
            fleet_provisioning_testbed::config_standin::ConfigServer::start(&socket_dir, tree).unwrap();
        let output = bed
            .command()
            .arg("--socket-dir")
            .arg(&socket_dir)
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "log:\n{log}");
        assert!(log.contains("not configured"), "log:\n{log}");
        assert!(bed.emulator.clients_seen().is_empty());
    }

    fn missing_template_name_is_configuration_error(via) {
        let bed = start_bed("E2E-0007", via);
        let mut tree = bed.config.tree();
        tree["services"]["aws.greengrass.fleet_provisioning"]["configuration"]["templateName"] =
            json!("");
        let socket_dir = bed.dir().join("run-missing");
        let _config =
            fleet_provisioning_testbed::config_standin::ConfigServer::start(&socket_dir, tree).unwrap();
        let output = bed
            .command()
            .arg("--socket-dir")
            .arg(&socket_dir)
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "log:\n{log}");
        assert!(log.contains("templateName"), "log:\n{log}");
        assert!(!log.contains("started iotcored"), "log:\n{log}");
        assert!(
            !bed.output_dir.exists(),
            "output folder created before validation"
        );
        assert!(bed.emulator.clients_seen().is_empty());
    }

    fn nested_template_parameter_is_configuration_error(via) {
        let bed = start_bed("E2E-0008", via);
        let result = bed.run(&["-p", r#"{"SerialNumber":{"nested":"x"}}"#]);
        assert_eq!(result.code, Some(2), "log:\n{}", result.log);
        assert!(result.log.contains("SerialNumber"), "log:\n{}", result.log);
        assert!(bed.emulator.clients_seen().is_empty());
    }

    fn numeric_template_parameter_is_sent_as_string(via) {
        let bed = start_bed("unused", via);
        let result = bed.run(&[
            &format!("--template-name={TEMPLATE_NAME}"),
            "-p",
            r#"{"SerialNumber": 4242}"#,
        ]);
        assert_eq!(result.code, Some(0), "log:\n{}", result.log);
        assert_eq!(
            bed.config_value("system/thingName"),
            Some(json!("ggl-4242"))
        );
    }

    fn dropped_reply_times_out(via) {
        let bed = start_bed("E2E-0009", via);
        bed.emulator
            .set_fault(Api::CreateCertificateFromCsr, Fault::Drop);
        let result = bed.run(&["--response-timeout", "1", "--max-attempts", "1"]);
        assert_eq!(result.code, Some(5), "log:\n{}", result.log);
        assert!(
            result.log.contains("CreateCertificateFromCsr got no reply"),
            "log:\n{}",
            result.log
        );
        assert!(!bed.output_dir.join("certificate.pem").exists());
    }

    fn garbled_reply_is_invalid_reply(via) {
        let bed = start_bed("E2E-0010", via);
        bed.emulator
            .set_fault(Api::CreateCertificateFromCsr, Fault::Garble);
        let result = bed.run(&[]);
        assert_eq!(result.code, Some(7), "log:\n{}", result.log);
        assert!(result.log.contains("invalid reply"), "log:\n{}", result.log);
    }

    fn output_dir_flag_accepts_separate_value(via) {
        let bed = start_bed("E2E-0011", via);
        let other = bed.dir().join("other-credentials");
        let result = bed.run(&["-o", other.to_str().unwrap()]);
        assert_eq!(result.code, Some(0), "log:\n{}", result.log);
        assert!(other.join("certificate.pem").is_file());
    }
}

/// Accepts one TLS connection on 127.0.0.1 with `cert` and `key` and runs
/// the server side of the handshake; returns the port.
fn tls_server_once(cert: &Path, key: &Path) -> (u16, thread::JoinHandle<()>) {
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let server = thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Err(_) => return,
            }
        };
        stream.set_nonblocking(false).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut connection = rustls::ServerConnection::new(Arc::new(config)).unwrap();
        while connection.is_handshaking() {
            if connection.complete_io(&mut stream).is_err() {
                return;
            }
        }
    });
    (port, server)
}

#[test]
fn direct_rejects_server_outside_root_ca() {
    let bed = start_bed("E2E-TLS-CA", Via::Direct);
    let other_ca = bed.pki.untrusted_ca_cert.to_str().unwrap().to_owned();
    let started = Instant::now();
    let result = bed.run(&["-r", &other_ca]);
    assert_eq!(result.code, Some(3), "log:\n{}", result.log);
    assert!(
        result.log.contains("claim connection failed"),
        "log:\n{}",
        result.log
    );
    assert!(
        result.log.contains("does not chain to the root CA"),
        "log:\n{}",
        result.log
    );
    assert!(result.log.contains(&other_ca), "log:\n{}", result.log);
    assert!(
        result
            .log
            .contains(&format!("localhost:{}", bed.broker.port())),
        "log:\n{}",
        result.log
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "a certificate that fails verification was retried: {:?}",
        started.elapsed()
    );
    assert!(bed.emulator.clients_seen().is_empty());
    assert!(!bed.output_dir.join("certificate.pem").exists());
}

#[test]
fn direct_rejects_server_for_other_host() {
    let bed = start_bed("E2E-TLS-NAME", Via::Direct);
    let (port, server) = tls_server_once(&bed.pki.other_host_cert, &bed.pki.other_host_key);
    let result = bed.run(&["--port", &port.to_string()]);
    server.join().unwrap();
    assert_eq!(result.code, Some(3), "log:\n{}", result.log);
    assert!(
        result
            .log
            .contains("is not issued for the host name localhost"),
        "log:\n{}",
        result.log
    );
    assert!(
        !result.log.contains("does not chain"),
        "the certificate does chain to the root CA:\n{}",
        result.log
    );
    assert!(!bed.output_dir.join("certificate.pem").exists());
}

/// A minimal HTTP CONNECT proxy on 127.0.0.1 that tunnels only to
/// loopback and records each request line.
struct ConnectProxy {
    port: u16,
    request_lines: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl ConnectProxy {
    fn start() -> ConnectProxy {
        ConnectProxy::start_cutting_first_tunnel(None)
    }

    /// Starts a proxy that closes its first tunnel `cut_after` after
    /// opening it, as a dropped network link would.
    fn start_cutting_first_tunnel(cut_after: Option<Duration>) -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let request_lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (lines, stopping) = (Arc::clone(&request_lines), Arc::clone(&stop));
        thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let first = lines.lock().unwrap().is_empty();
                        let cut_after = if first { cut_after } else { None };
                        let lines = Arc::clone(&lines);
                        thread::spawn(move || tunnel(client, &lines, cut_after));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        ConnectProxy {
            port,
            request_lines,
            stop,
        }
    }

    fn request_lines(&self) -> Vec<String> {
        self.request_lines.lock().unwrap().clone()
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn tunnel(mut client: TcpStream, lines: &Mutex<Vec<String>>, cut_after: Option<Duration>) {
    client.set_nonblocking(false).unwrap();
    let mut header = Vec::new();
    let mut byte = [0u8; 1];
    while !header.ends_with(b"\r\n\r\n") {
        if client.read_exact(&mut byte).is_err() {
            return;
        }
        header.push(byte[0]);
    }
    let header = String::from_utf8_lossy(&header).into_owned();
    let request_line = header.lines().next().unwrap_or_default().to_owned();
    lines.lock().unwrap().push(request_line.clone());
    let target = request_line.split_whitespace().nth(1).unwrap_or_default();
    let (host, port) = target.rsplit_once(':').unwrap_or_default();
    // Loopback only: the test network has no other address.
    let upstream = match (host, port.parse::<u16>()) {
        ("localhost" | "127.0.0.1", Ok(port)) => TcpStream::connect(("127.0.0.1", port)),
        _ => {
            let _ = client.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n");
            return;
        }
    };
    let Ok(upstream) = upstream else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
        return;
    };
    client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .unwrap();
    if let Some(delay) = cut_after {
        let (client, upstream) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
        thread::spawn(move || {
            thread::sleep(delay);
            let _ = client.shutdown(Shutdown::Both);
            let _ = upstream.shutdown(Shutdown::Both);
        });
    }
    let (mut client_reader, mut upstream_writer) =
        (client.try_clone().unwrap(), upstream.try_clone().unwrap());
    let forward = thread::spawn(move || {
        let _ = io::copy(&mut client_reader, &mut upstream_writer);
        let _ = upstream_writer.shutdown(Shutdown::Write);
    });
    let (mut upstream_reader, mut client_writer) = (upstream, client);
    let _ = io::copy(&mut upstream_reader, &mut client_writer);
    let _ = client_writer.shutdown(Shutdown::Write);
    let _ = forward.join();
}

#[test]
fn direct_provisions_through_https_proxy() {
    let bed = start_bed("E2E-PROXY", Via::Direct);
    let proxy = ConnectProxy::start();
    let mut command = bed.command();
    command.env("https_proxy", format!("http://127.0.0.1:{}", proxy.port));
    let result = run_command(&mut command);
    assert_eq!(result.code, Some(0), "log:\n{}", result.log);
    assert_eq!(
        proxy.request_lines(),
        [format!("CONNECT localhost:{} HTTP/1.1", bed.broker.port())]
    );
    assert!(
        result
            .log
            .contains(&format!("through the HTTP proxy 127.0.0.1:{}", proxy.port)),
        "log:\n{}",
        result.log
    );
    assert_eq!(
        bed.config_value("system/thingName"),
        Some(json!("ggl-E2E-PROXY"))
    );
}

#[test]
fn direct_reconnects_and_resubscribes_after_drop() {
    let bed = start_bed("E2E-RECONNECT", Via::Direct);
    // The first reply comes after the link drops, so the request must go
    // out again on a new connection with the subscription restored.
    bed.emulator
        .set_fault(Api::CreateCertificateFromCsr, Fault::Delay { ms: 1500 });
    let proxy = ConnectProxy::start_cutting_first_tunnel(Some(Duration::from_millis(500)));
    let mut command = bed.command();
    command
        .arg("-v")
        .env("https_proxy", format!("http://127.0.0.1:{}", proxy.port));
    let result = run_command(&mut command);
    assert_eq!(result.code, Some(0), "log:\n{}", result.log);
    assert_eq!(proxy.request_lines().len(), 2, "log:\n{}", result.log);
    assert!(result.log.contains("is down after"), "log:\n{}", result.log);
    let up_lines = result.log.matches("is up after").count();
    assert_eq!(up_lines, 2, "log:\n{}", result.log);
    assert_eq!(
        bed.config_value("system/thingName"),
        Some(json!("ggl-E2E-RECONNECT"))
    );
}

#[test]
fn direct_proxy_refusal_fails_clearly() {
    let bed = start_bed("E2E-PROXY-403", Via::Direct);
    let proxy = ConnectProxy::start();
    let mut command = bed.command();
    // The test proxy tunnels only to loopback, so it refuses this host
    // without any lookup or connection.
    command
        .args(["-e", "iot.example.invalid"])
        .env("https_proxy", format!("http://127.0.0.1:{}", proxy.port));
    let started = Instant::now();
    let result = run_command(&mut command);
    assert_eq!(result.code, Some(3), "log:\n{}", result.log);
    assert!(
        result
            .log
            .contains("refused the CONNECT tunnel (HTTP/1.1 403 Forbidden)"),
        "log:\n{}",
        result.log
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "a proxy refusal was retried: {:?}",
        started.elapsed()
    );
    assert_eq!(
        proxy.request_lines(),
        [format!(
            "CONNECT iot.example.invalid:{} HTTP/1.1",
            bed.broker.port()
        )]
    );
}

#[test]
fn direct_skips_proxy_for_no_proxy_host() {
    let bed = start_bed("E2E-NOPROXY", Via::Direct);
    let proxy = ConnectProxy::start();
    let mut command = bed.command();
    command
        .env("HTTPS_PROXY", format!("http://127.0.0.1:{}", proxy.port))
        .env("NO_PROXY", "example.com,localhost");
    let result = run_command(&mut command);
    assert_eq!(result.code, Some(0), "log:\n{}", result.log);
    assert!(proxy.request_lines().is_empty(), "the proxy was used");
}

#[test]
fn direct_transport_from_configuration() {
    let bed = start_bed("E2E-CONFIG", Via::Iotcored);
    let mut tree = bed.config.tree();
    let component = &mut tree["services"]["aws.greengrass.fleet_provisioning"]["configuration"];
    component["transport"] = json!("direct");
    component["port"] = json!(bed.broker.port());
    let socket_dir = bed.dir().join("run-direct");
    let _config =
        fleet_provisioning_testbed::config_standin::ConfigServer::start(&socket_dir, tree).unwrap();
    let mut command = bed.command();
    command.arg("--socket-dir").arg(&socket_dir);
    let result = run_command(&mut command);
    assert_eq!(result.code, Some(0), "log:\n{}", result.log);
    assert!(
        result
            .log
            .contains(&format!("connecting to localhost:{}", bed.broker.port())),
        "log:\n{}",
        result.log
    );
    assert!(
        !result.log.contains("started iotcored"),
        "log:\n{}",
        result.log
    );
}

#[test]
fn invalid_transport_is_configuration_error() {
    let bed = start_bed("E2E-BADTRANSPORT", Via::Iotcored);
    let mut tree = bed.config.tree();
    tree["services"]["aws.greengrass.fleet_provisioning"]["configuration"]["transport"] =
        json!("carrier-pigeon");
    let socket_dir = bed.dir().join("run-bad-transport");
    let _config =
        fleet_provisioning_testbed::config_standin::ConfigServer::start(&socket_dir, tree).unwrap();
    let mut command = bed.command();
    command.arg("--socket-dir").arg(&socket_dir);
    let result = run_command(&mut command);
    assert_eq!(result.code, Some(2), "log:\n{}", result.log);
    assert!(
        result.log.contains("carrier-pigeon"),
        "log:\n{}",
        result.log
    );
    assert!(bed.emulator.clients_seen().is_empty());

    let result = bed.run(&["--port", "443"]);
    assert_eq!(result.code, Some(2), "log:\n{}", result.log);
    assert!(
        result.log.contains("applies only to --transport direct"),
        "log:\n{}",
        result.log
    );
}

#[test]
fn direct_stops_promptly_on_sigterm() {
    let bed = start_bed("E2E-SIGTERM", Via::Direct);
    // A server that accepts TCP and never responds keeps the TLS handshake
    // waiting.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let mut child = bed
        .command()
        .args(["--port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    silent.set_nonblocking(true).unwrap();
    let connected_by = Instant::now() + Duration::from_secs(20);
    let _accepted = loop {
        match silent.accept() {
            Ok((stream, _)) => break stream,
            Err(_) if Instant::now() < connected_by => thread::sleep(Duration::from_millis(10)),
            Err(error) => {
                let _ = child.kill();
                panic!("fleet-provisioning never connected: {error}");
            }
        }
    };
    let signalled = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(128 + 15), "log:\n{log}");
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "took {:?} to stop after SIGTERM",
        signalled.elapsed()
    );
    assert!(log.contains("stopped by signal 15"), "log:\n{log}");
}
