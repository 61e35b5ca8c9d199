//! Fuzzes the provisioning state machine with arbitrary sequences of events
//! and times built from the input.
//!
//! Messages come from a small set of real topics and replies as well as
//! arbitrary bytes, so that runs reach every state, including `Done`.
//! Checked invariants:
//! - `handle` never panics;
//! - once an action is `Done` or `Failed`, every later event returns the
//!   same action, and `is_finished` is true exactly then;
//! - a certificate to record or store is the one `certificate` returns;
//! - every publish is valid JSON on a request topic, within
//!   `MAX_REQUEST_PAYLOAD_LEN`, and RegisterThing carries the parameters
//!   the machine was given;
//! - `Done` comes only after `StoreCredentials` and `CredentialsStored`.
#![no_main]

use std::collections::BTreeMap;

use fleet_provisioning_core::fleet::{
    self, CertificateIssued, TemplateParameters, ThingRegistered, CREATE_CERTIFICATE_FILTER,
    CREATE_CERTIFICATE_TOPIC, MAX_REQUEST_PAYLOAD_LEN,
};
use fleet_provisioning_core::machine::{Action, Event, Failure, Provisioner, Step, Timeouts};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;

const TEMPLATE: &str = "FleetTemplate";
const CSR: &str = "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n";
const CREATE_ACCEPTED: &str = "$aws/certificates/create-from-csr/json/accepted";
const CREATE_REJECTED: &str = "$aws/certificates/create-from-csr/json/rejected";
const REGISTER_TOPIC: &str = "$aws/provisioning-templates/FleetTemplate/provision/json";
const REGISTER_FILTER: &str = "$aws/provisioning-templates/FleetTemplate/provision/json/+";
const REGISTER_ACCEPTED: &str = "$aws/provisioning-templates/FleetTemplate/provision/json/accepted";
const REGISTER_REJECTED: &str = "$aws/provisioning-templates/FleetTemplate/provision/json/rejected";
const TOPICS: [&str; 6] = [
    CREATE_ACCEPTED,
    CREATE_REJECTED,
    REGISTER_ACCEPTED,
    REGISTER_REJECTED,
    CREATE_CERTIFICATE_TOPIC,
    "$aws/things/other/shadow/update/accepted",
];
const PAYLOADS: [&[u8]; 4] = [
    br#"{"certificateId":"abc123","certificatePem":"-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n","certificateOwnershipToken":"token-1"}"#,
    br#"{"thingName":"ggl-0001","deviceConfiguration":{}}"#,
    br#"{"statusCode":400,"errorCode":"InvalidCSR","errorMessage":"bad"}"#,
    b"{}",
];

/// An owned copy of an action, kept while the machine is fed again.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    GenerateKeyAndCsr,
    Subscribe(String),
    Publish(String, Vec<u8>, Step),
    Wait(u64),
    RecordCertificate(CertificateIssued),
    StoreCredentials(CertificateIssued, ThingRegistered),
    Done(CertificateIssued, ThingRegistered),
    Failed(Failure),
}

impl Outcome {
    fn of(action: Action<'_>) -> Self {
        match action {
            Action::GenerateKeyAndCsr => Outcome::GenerateKeyAndCsr,
            Action::Subscribe { filter } => Outcome::Subscribe(filter.to_owned()),
            Action::Publish {
                topic,
                payload,
                step,
            } => Outcome::Publish(topic.to_owned(), payload.to_vec(), step),
            Action::Wait { deadline_ms } => Outcome::Wait(deadline_ms),
            Action::RecordCertificate { certificate } => {
                Outcome::RecordCertificate(certificate.clone())
            }
            Action::StoreCredentials { certificate, thing } => {
                Outcome::StoreCredentials(certificate.clone(), thing.clone())
            }
            Action::Done { certificate, thing } => {
                Outcome::Done(certificate.clone(), thing.clone())
            }
            Action::Failed(failure) => Outcome::Failed(failure.clone()),
        }
    }

    fn is_final(&self) -> bool {
        matches!(self, Outcome::Done(..) | Outcome::Failed(_))
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});

fn run(input: &mut Unstructured<'_>) -> Result<()> {
    let mut parameters = TemplateParameters::new();
    for _ in 0..input.int_in_range(0..=3)? {
        // Rejected keys or values are fine here: the machine gets whatever
        // was accepted.
        let _ = parameters.push(input.arbitrary()?, input.arbitrary()?);
    }
    let timeouts = Timeouts {
        connect_ms: input.int_in_range(0..=100)?,
        response_ms: input.int_in_range(0..=100)?,
    };
    let expected_parameters: BTreeMap<String, String> = parameters
        .iter()
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
    let mut machine =
        Provisioner::new(TEMPLATE, parameters, timeouts).expect("the template name is valid");
    if input.ratio(1, 8)? {
        // A host that resumes a run whose certificate was issued before.
        let issued = fleet::parse_create_certificate_accepted(PAYLOADS[0])
            .expect("the canned certificate reply parses");
        machine = machine.with_issued_certificate(issued);
    }

    let mut now_ms: u64 = 0;
    let mut final_outcome: Option<Outcome> = None;
    let mut stored_credentials = false;
    let mut previous: Option<Outcome> = None;
    while !input.is_empty() {
        now_ms = next_time(input, now_ms)?;
        let csr_pem;
        let topic;
        let payload;
        let event = match input.int_in_range(0..=9u8)? {
            0 => Event::Start,
            1 => Event::Tick,
            2 => {
                csr_pem = if input.ratio(3, 4)? {
                    CSR
                } else {
                    input.arbitrary::<&str>()?
                };
                Event::KeyAndCsrReady { csr_pem }
            }
            3 => Event::Connection(input.arbitrary()?),
            4 => Event::Subscribed,
            5 => Event::Published,
            6 => Event::CredentialsStored,
            7 => Event::CertificateRecorded,
            _ => {
                topic = if input.ratio(7, 8)? {
                    *input.choose(&TOPICS)?
                } else {
                    input.arbitrary::<&str>()?
                };
                payload = if input.ratio(3, 4)? {
                    *input.choose(&PAYLOADS)?
                } else {
                    input.arbitrary::<&[u8]>()?
                };
                Event::Message { topic, payload }
            }
        };
        let is_credentials_stored = matches!(event, Event::CredentialsStored);
        let outcome = Outcome::of(machine.handle(now_ms, event));

        assert_eq!(
            machine.is_finished(),
            outcome.is_final(),
            "is_finished disagrees with {outcome:?}"
        );
        if let Some(expected) = &final_outcome {
            assert_eq!(&outcome, expected, "a finished run changed its action");
        }
        match &outcome {
            Outcome::Subscribe(filter) => {
                assert!(
                    filter == CREATE_CERTIFICATE_FILTER || filter == REGISTER_FILTER,
                    "unexpected filter {filter}"
                );
            }
            Outcome::Publish(topic, payload, step) => {
                check_publish(topic, payload, *step, &expected_parameters)
            }
            Outcome::RecordCertificate(certificate) => {
                assert_eq!(machine.certificate(), Some(certificate));
            }
            Outcome::StoreCredentials(certificate, _) => {
                stored_credentials = true;
                assert_eq!(machine.certificate(), Some(certificate));
            }
            Outcome::Done(certificate, thing) => {
                assert!(stored_credentials, "Done without StoreCredentials");
                if final_outcome.is_none() {
                    assert!(is_credentials_stored, "Done without CredentialsStored");
                    assert!(
                        matches!(previous, Some(Outcome::StoreCredentials(ref c, ref t)) if c == certificate && t == thing),
                        "Done after {previous:?}"
                    );
                }
                assert_eq!(machine.certificate(), Some(certificate));
            }
            _ => {}
        }
        if outcome.is_final() && final_outcome.is_none() {
            final_outcome = Some(outcome.clone());
        }
        previous = Some(outcome);
    }
    Ok(())
}

/// Returns the next time: usually a small step forward, sometimes an
/// arbitrary value (including a step back or `u64::MAX`), which a host must
/// not send but which still must not panic the machine.
fn next_time(input: &mut Unstructured<'_>, now_ms: u64) -> Result<u64> {
    if input.ratio(15, 16)? {
        Ok(now_ms.saturating_add(u64::from(input.int_in_range(0..=60u8)?)))
    } else {
        input.arbitrary()
    }
}

/// The `CreateCertificateFromCsr` request as `serde_json` reads it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateCertificateRequest {
    certificate_signing_request: String,
}

/// The `RegisterThing` request as `serde_json` reads it. Typed structs, not
/// `serde_json::Value`, read the requests, because with the `raw_value`
/// feature `Value` treats the key `$serde_json::private::RawValue` as a
/// marker, which a template parameter may legitimately be named.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RegisterThingRequest {
    certificate_ownership_token: String,
    parameters: BTreeMap<String, String>,
}

fn check_publish(
    topic: &str,
    payload: &[u8],
    step: Step,
    expected_parameters: &BTreeMap<String, String>,
) {
    assert!(payload.len() <= MAX_REQUEST_PAYLOAD_LEN);
    match step {
        Step::CreateCertificate => {
            assert_eq!(topic, CREATE_CERTIFICATE_TOPIC);
            let request: CreateCertificateRequest =
                serde_json::from_slice(payload).expect("the request is valid JSON");
            assert!(!request.certificate_signing_request.is_empty());
        }
        Step::RegisterThing => {
            assert_eq!(topic, REGISTER_TOPIC);
            assert_eq!(
                topic,
                fleet::register_thing_topic(TEMPLATE)
                    .expect("valid template")
                    .as_str()
            );
            let request: RegisterThingRequest =
                serde_json::from_slice(payload).expect("the request is valid JSON");
            assert!(!request.certificate_ownership_token.is_empty());
            assert_eq!(&request.parameters, expected_parameters);
        }
    }
}
