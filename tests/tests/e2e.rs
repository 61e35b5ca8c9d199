//! End-to-end runs of the real `fleet-provisioning` binary against the
//! loopback test bed: mosquitto with mutual TLS, the IoT Core emulator, the
//! `gg_config` and iotcored stand-ins.

use fleet_provisioning_testbed::bed::{TestBed, TEMPLATE_NAME};
use fleet_provisioning_testbed::emulator::{Api, Fault};
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn start_bed(serial: &str) -> TestBed {
    TestBed::start(serial, Path::new(env!("CARGO_BIN_EXE_iotcored"))).expect("test bed starts")
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

#[test]
fn provisions_device_end_to_end() {
    let bed = start_bed("E2E-0001");
    let result = bed.run(&[]);
    assert_eq!(result.code, Some(0), "log:\n{}", result.log);
    assert!(result
        .log
        .contains("Process Complete, Your device is now provisioned"));

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

#[test]
fn config_writes_follow_reference_order() {
    let bed = start_bed("E2E-ORDER");
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

#[test]
fn second_run_does_not_contact_broker() {
    let bed = start_bed("E2E-0002");
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

#[test]
fn rejected_csr_exits_with_error_code() {
    let bed = start_bed("E2E-0003");
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

#[test]
fn rejected_register_thing_exits_with_error_code() {
    let bed = start_bed("E2E-0004");
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

#[test]
fn untrusted_claim_certificate_fails_clearly() {
    let bed = start_bed("E2E-0005");
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
    assert!(bed.emulator.issued_certificates().is_empty());
    assert!(!bed.output_dir.join("certificate.pem").exists());
}

#[test]
fn unconfigured_device_exits_without_work() {
    let bed = start_bed("E2E-0006");
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

#[test]
fn missing_template_name_is_configuration_error() {
    let bed = start_bed("E2E-0007");
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

#[test]
fn nested_template_parameter_is_configuration_error() {
    let bed = start_bed("E2E-0008");
    let result = bed.run(&["-p", r#"{"SerialNumber":{"nested":"x"}}"#]);
    assert_eq!(result.code, Some(2), "log:\n{}", result.log);
    assert!(result.log.contains("SerialNumber"), "log:\n{}", result.log);
    assert!(bed.emulator.clients_seen().is_empty());
}

#[test]
fn numeric_template_parameter_is_sent_as_string() {
    let bed = start_bed("unused");
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

#[test]
fn dropped_reply_times_out() {
    let bed = start_bed("E2E-0009");
    bed.emulator
        .set_fault(Api::CreateCertificateFromCsr, Fault::Drop);
    let result = bed.run(&["--response-timeout", "1"]);
    assert_eq!(result.code, Some(5), "log:\n{}", result.log);
    assert!(
        result.log.contains("CreateCertificateFromCsr got no reply"),
        "log:\n{}",
        result.log
    );
    assert!(!bed.output_dir.join("certificate.pem").exists());
}

#[test]
fn garbled_reply_is_invalid_reply() {
    let bed = start_bed("E2E-0010");
    bed.emulator
        .set_fault(Api::CreateCertificateFromCsr, Fault::Garble);
    let result = bed.run(&[]);
    assert_eq!(result.code, Some(7), "log:\n{}", result.log);
    assert!(result.log.contains("invalid reply"), "log:\n{}", result.log);
}

#[test]
fn output_dir_flag_accepts_separate_value() {
    let bed = start_bed("E2E-0011");
    let other = bed.dir().join("other-credentials");
    let result = bed.run(&["-o", other.to_str().unwrap()]);
    assert_eq!(result.code, Some(0), "log:\n{}", result.log);
    assert!(other.join("certificate.pem").is_file());
}
