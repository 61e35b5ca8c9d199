//! The provisioning state machine driven through whole runs with scripted
//! events, as a host would feed them.

use fleet_provisioning_core::fleet::{
    parse_create_certificate_accepted, TemplateParameters, CREATE_CERTIFICATE_FILTER,
};
use fleet_provisioning_core::machine::{Action, Event, Failure, Provisioner, Step, Timeouts};

const TEMPLATE: &str = "GGFleetProvisioningTemplate";
const CSR: &str = "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n";
const CSR_ACCEPTED: &str = "$aws/certificates/create-from-csr/json/accepted";
const CSR_REJECTED: &str = "$aws/certificates/create-from-csr/json/rejected";
const REGISTER_ACCEPTED: &str =
    "$aws/provisioning-templates/GGFleetProvisioningTemplate/provision/json/accepted";
const REGISTER_REJECTED: &str =
    "$aws/provisioning-templates/GGFleetProvisioningTemplate/provision/json/rejected";
const CERTIFICATE_REPLY: &[u8] = br#"{"certificateId":"abc123","certificatePem":"-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n","certificateOwnershipToken":"token-1"}"#;
const THING_REPLY: &[u8] = br#"{"deviceConfiguration":{"k":[1,2]},"thingName":"ggl-0001"}"#;

fn timeouts() -> Timeouts {
    Timeouts {
        connect_ms: 1_000,
        response_ms: 2_000,
    }
}

fn machine() -> Provisioner {
    let mut parameters = TemplateParameters::new();
    parameters.push("SerialNumber", "0001").unwrap();
    Provisioner::new(TEMPLATE, parameters, timeouts()).unwrap()
}

/// Drives a machine to the point where the CreateCertificateFromCsr request
/// was published at time 10.
fn published_create(machine: &mut Provisioner) {
    assert!(matches!(
        machine.handle(0, Event::Start),
        Action::GenerateKeyAndCsr
    ));
    assert!(matches!(
        machine.handle(1, Event::KeyAndCsrReady { csr_pem: CSR }),
        Action::Wait { deadline_ms: 1_000 }
    ));
    match machine.handle(5, Event::Connection(true)) {
        Action::Subscribe { filter } => assert_eq!(filter, CREATE_CERTIFICATE_FILTER),
        other => panic!("expected a subscribe, got {other:?}"),
    }
    match machine.handle(6, Event::Subscribed) {
        Action::Publish {
            topic,
            payload,
            step,
        } => {
            assert_eq!(topic, "$aws/certificates/create-from-csr/json");
            assert_eq!(step, Step::CreateCertificate);
            let text = core::str::from_utf8(payload).unwrap();
            assert!(
                text.starts_with(r#"{"certificateSigningRequest":"-----BEGIN"#),
                "{text}"
            );
            // Greengrass Lite's JSON encoder escapes a newline as \u000A.
            assert!(text.contains(r"\u000A"), "newlines are not escaped: {text}");
            assert!(!text.contains('\n'), "raw newline in JSON: {text}");
        }
        other => panic!("expected a publish, got {other:?}"),
    }
    assert!(matches!(
        machine.handle(10, Event::Published),
        Action::Wait { deadline_ms: 2_010 }
    ));
}

#[test]
fn full_run_reaches_done() {
    let mut machine = machine();
    published_create(&mut machine);
    match machine.handle(
        20,
        Event::Message {
            topic: CSR_ACCEPTED,
            payload: CERTIFICATE_REPLY,
        },
    ) {
        Action::RecordCertificate { certificate } => {
            assert_eq!(certificate.ownership_token.as_str(), "token-1")
        }
        other => panic!("expected a record, got {other:?}"),
    }
    match machine.handle(20, Event::CertificateRecorded) {
        Action::Subscribe { filter } => assert_eq!(
            filter,
            "$aws/provisioning-templates/GGFleetProvisioningTemplate/provision/json/+"
        ),
        other => panic!("expected a subscribe, got {other:?}"),
    }
    match machine.handle(21, Event::Subscribed) {
        Action::Publish {
            topic,
            payload,
            step,
        } => {
            assert_eq!(step, Step::RegisterThing);
            assert_eq!(
                topic,
                "$aws/provisioning-templates/GGFleetProvisioningTemplate/provision/json"
            );
            assert_eq!(
                core::str::from_utf8(payload).unwrap(),
                r#"{"certificateOwnershipToken":"token-1","parameters":{"SerialNumber":"0001"}}"#
            );
        }
        other => panic!("expected a publish, got {other:?}"),
    }
    assert!(matches!(
        machine.handle(22, Event::Published),
        Action::Wait { .. }
    ));
    match machine.handle(
        30,
        Event::Message {
            topic: REGISTER_ACCEPTED,
            payload: THING_REPLY,
        },
    ) {
        Action::StoreCredentials { certificate, thing } => {
            assert_eq!(certificate.certificate_id.as_str(), "abc123");
            assert!(certificate
                .certificate_pem
                .starts_with("-----BEGIN CERTIFICATE-----\n"));
            assert_eq!(thing.thing_name.as_str(), "ggl-0001");
        }
        other => panic!("expected store, got {other:?}"),
    }
    match machine.handle(31, Event::CredentialsStored) {
        Action::Done { certificate, thing } => {
            assert_eq!(certificate.certificate_id.as_str(), "abc123");
            assert_eq!(thing.thing_name.as_str(), "ggl-0001");
        }
        other => panic!("expected done, got {other:?}"),
    }
    assert!(machine.is_finished());
    assert!(matches!(
        machine.handle(40, Event::Tick),
        Action::Done { .. }
    ));
}

#[test]
fn connection_before_key_skips_waiting() {
    let mut machine = machine();
    machine.handle(0, Event::Start);
    // The connection came up while the key was being generated.
    assert!(matches!(
        machine.handle(1, Event::Connection(true)),
        Action::GenerateKeyAndCsr
    ));
    assert!(matches!(
        machine.handle(2, Event::KeyAndCsrReady { csr_pem: CSR }),
        Action::Subscribe { .. }
    ));
}

#[test]
fn connection_timeout_fails() {
    let mut machine = machine();
    machine.handle(0, Event::Start);
    machine.handle(1, Event::KeyAndCsrReady { csr_pem: CSR });
    assert!(matches!(
        machine.handle(999, Event::Tick),
        Action::Wait { .. }
    ));
    match machine.handle(1_000, Event::Tick) {
        Action::Failed(Failure::ConnectTimeout { waited_ms }) => assert_eq!(*waited_ms, 1_000),
        other => panic!("expected a connect timeout, got {other:?}"),
    }
}

#[test]
fn response_timeout_names_step() {
    let mut machine = machine();
    published_create(&mut machine);
    assert!(matches!(
        machine.handle(2_009, Event::Tick),
        Action::Wait { .. }
    ));
    match machine.handle(2_010, Event::Tick) {
        Action::Failed(Failure::ResponseTimeout { step, .. }) => {
            assert_eq!(*step, Step::CreateCertificate)
        }
        other => panic!("expected a response timeout, got {other:?}"),
    }
}

#[test]
fn rejection_carries_aws_error() {
    let mut machine = machine();
    published_create(&mut machine);
    let payload = br#"{"statusCode":400,"errorCode":"InvalidCSR","errorMessage":"bad CSR"}"#;
    match machine.handle(
        20,
        Event::Message {
            topic: CSR_REJECTED,
            payload,
        },
    ) {
        Action::Failed(failure @ Failure::Rejected { step, rejection }) => {
            assert_eq!(*step, Step::CreateCertificate);
            assert_eq!(rejection.status_code, 400);
            assert_eq!(rejection.error_code.as_str(), "InvalidCSR");
            let text = failure.to_string();
            assert!(text.contains("statusCode 400"), "{text}");
            assert!(text.contains("InvalidCSR"), "{text}");
            assert!(text.contains("bad CSR"), "{text}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn register_rejection_names_register_thing() {
    let mut machine = machine();
    published_create(&mut machine);
    machine.handle(
        20,
        Event::Message {
            topic: CSR_ACCEPTED,
            payload: CERTIFICATE_REPLY,
        },
    );
    machine.handle(20, Event::CertificateRecorded);
    machine.handle(21, Event::Subscribed);
    machine.handle(22, Event::Published);
    let payload = br#"{"statusCode":400,"errorCode":"InvalidParameters","errorMessage":"x"}"#;
    match machine.handle(
        23,
        Event::Message {
            topic: REGISTER_REJECTED,
            payload,
        },
    ) {
        Action::Failed(Failure::Rejected { step, .. }) => assert_eq!(*step, Step::RegisterThing),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn garbled_reply_is_invalid() {
    let mut machine = machine();
    published_create(&mut machine);
    match machine.handle(
        20,
        Event::Message {
            topic: CSR_ACCEPTED,
            payload: b"{not json",
        },
    ) {
        Action::Failed(Failure::InvalidReply { step, .. }) => {
            assert_eq!(*step, Step::CreateCertificate)
        }
        other => panic!("expected an invalid reply, got {other:?}"),
    }
}

#[test]
fn unrelated_message_is_ignored() {
    let mut machine = machine();
    published_create(&mut machine);
    assert!(matches!(
        machine.handle(
            20,
            Event::Message {
                topic: REGISTER_ACCEPTED,
                payload: THING_REPLY,
            },
        ),
        Action::Wait { deadline_ms: 2_010 }
    ));
    assert!(matches!(
        machine.handle(
            21,
            Event::Message {
                topic: "$aws/certificates/create-from-csr/json/other",
                payload: b"{}",
            },
        ),
        Action::Wait { .. }
    ));
}

#[test]
fn oversized_csr_fails_without_panic() {
    let mut machine = machine();
    machine.handle(0, Event::Start);
    let huge = "A".repeat(10_000);
    assert!(matches!(
        machine.handle(1, Event::KeyAndCsrReady { csr_pem: &huge }),
        Action::Failed(Failure::InvalidInput(_))
    ));
}

#[test]
fn invalid_template_name_is_rejected() {
    assert!(Provisioner::new("bad/name", TemplateParameters::new(), timeouts()).is_err());
    assert!(Provisioner::new("", TemplateParameters::new(), timeouts()).is_err());
}

#[test]
fn resume_with_certificate_registers_only() {
    let certificate = parse_create_certificate_accepted(CERTIFICATE_REPLY).unwrap();
    let mut machine = machine().with_issued_certificate(certificate);
    assert!(matches!(
        machine.handle(0, Event::Start),
        Action::Wait { deadline_ms: 1_000 }
    ));
    match machine.handle(5, Event::Connection(true)) {
        Action::Subscribe { filter } => assert!(filter.starts_with("$aws/provisioning-templates/")),
        other => panic!("expected the RegisterThing subscription, got {other:?}"),
    }
    match machine.handle(6, Event::Subscribed) {
        Action::Publish { step, .. } => assert_eq!(step, Step::RegisterThing),
        other => panic!("expected a publish, got {other:?}"),
    }
}

#[test]
fn lost_connection_republishes_request() {
    let mut machine = machine();
    published_create(&mut machine);
    assert!(matches!(
        machine.handle(100, Event::Connection(false)),
        Action::Wait { deadline_ms: 1_100 }
    ));
    match machine.handle(200, Event::Connection(true)) {
        Action::Publish { step, .. } => assert_eq!(step, Step::CreateCertificate),
        other => panic!("expected the request again, got {other:?}"),
    }
}

#[test]
fn connection_not_back_fails_retryably() {
    let mut machine = machine();
    published_create(&mut machine);
    machine.handle(100, Event::Connection(false));
    match machine.handle(1_100, Event::Tick) {
        Action::Failed(failure @ Failure::ConnectionLost { step, .. }) => {
            assert_eq!(*step, Step::CreateCertificate);
            assert!(failure.is_retryable());
        }
        other => panic!("expected a lost connection, got {other:?}"),
    }
}

#[test]
fn reply_during_reconnect_is_used() {
    let mut machine = machine();
    published_create(&mut machine);
    machine.handle(100, Event::Connection(false));
    assert!(matches!(
        machine.handle(
            101,
            Event::Message {
                topic: CSR_ACCEPTED,
                payload: CERTIFICATE_REPLY,
            },
        ),
        Action::RecordCertificate { .. }
    ));
}

#[test]
fn retryable_failures() {
    let rejected = |payload: &[u8]| {
        let mut machine = machine();
        published_create(&mut machine);
        match machine.handle(
            20,
            Event::Message {
                topic: CSR_REJECTED,
                payload,
            },
        ) {
            Action::Failed(failure) => failure.is_retryable(),
            other => panic!("expected a failure, got {other:?}"),
        }
    };
    assert!(rejected(
        br#"{"statusCode":429,"errorCode":"Throttling","errorMessage":"slow down"}"#
    ));
    assert!(rejected(
        br#"{"statusCode":503,"errorCode":"ServiceUnavailable","errorMessage":"x"}"#
    ));
    assert!(!rejected(
        br#"{"statusCode":400,"errorCode":"InvalidCSR","errorMessage":"x"}"#
    ));
    assert!(!rejected(
        br#"{"statusCode":404,"errorCode":"ResourceNotFound","errorMessage":"x"}"#
    ));
    assert!(Failure::ConnectTimeout { waited_ms: 1 }.is_retryable());
}
