//! Links `fleet-provisioning-core` into a `#![no_std]` static library.
//!
//! This crate defines its own panic handler and no global allocator. If the
//! core or any dependency it enables links `std`, the build fails with a
//! duplicate `panic_impl` lang item. If one links `alloc`, it fails because no
//! global allocator is defined. `cargo xtask nostd` builds it for x86_64 and
//! for 32-bit armv7.
//!
//! The exported functions call the decoders, the encoders and the state
//! machine, so that their code (and the generic code they instantiate from
//! `heapless`) is compiled for the target, and so that firmware written in C
//! could link the result.
#![no_std]
#![deny(unsafe_code)]
#![deny(missing_docs)]

// Canaries that `cargo xtask nostd` enables one at a time, expecting the
// build to fail: a dependency that links std or alloc fails the same way.
#[cfg(feature = "canary-alloc")]
extern crate alloc;
#[cfg(feature = "canary-std")]
extern crate std;

use core::panic::PanicInfo;

use fleet_provisioning_core::eventstream::{self, MAX_FRAME_LEN};
use fleet_provisioning_core::fleet::{self, TemplateParameters};
use fleet_provisioning_core::machine::{Action, Event, Provisioner, Timeouts};
use fleet_provisioning_core::object::{self, Object};
use fleet_provisioning_core::{corebus, machine};

/// Stops on a panic. A bare library cannot report it, so firmware that
/// links it decides what happens next, for example with a watchdog reset.
#[panic_handler]
fn panic(_info: &PanicInfo<'_>) -> ! {
    loop {
        core::hint::spin_loop();
    }
}

/// Returns the bytes of `buffer` that a C caller declared valid, or `None`
/// when `len` exceeds the buffer.
fn prefix(buffer: &[u8; MAX_FRAME_LEN], len: usize) -> Option<&[u8]> {
    buffer.get(..len)
}

/// Visits every item of a decoded object and returns whether each list and
/// map yielded as many items as it declares.
fn walk(value: &Object<'_>, depth: usize) -> bool {
    if depth > object::MAX_DEPTH {
        return false;
    }
    match value {
        Object::List(list) => {
            list.iter().count() == list.len() && list.iter().all(|item| walk(&item, depth + 1))
        }
        Object::Map(map) => {
            map.iter().count() == map.len() && map.iter().all(|(_, item)| walk(&item, depth + 1))
        }
        _ => true,
    }
}

/// Decodes the first `len` bytes of `bytes` as one core-bus frame, parses it
/// as a response and decodes its payload object. Returns true when all of
/// that succeeds.
// `no_mangle` is an unsafe attribute because exported names must be unique
// in the final link. The `fpc_` prefix keeps these unique.
#[allow(unsafe_code)]
#[no_mangle]
pub extern "C" fn fpc_check_frame(bytes: &[u8; MAX_FRAME_LEN], len: usize) -> bool {
    let Some(bytes) = prefix(bytes, len) else {
        return false;
    };
    let Ok(frame) = eventstream::decode_frame(bytes) else {
        return false;
    };
    match corebus::parse_response(&frame) {
        Ok(corebus::Response::Value(value)) => walk(&value, 1),
        Ok(_) => true,
        Err(_) => false,
    }
}

/// Parses the first `len` bytes of `payload` as a fleet provisioning reply:
/// `kind` 0 is a CreateCertificateFromCsr acceptance, 1 a RegisterThing
/// acceptance, 2 a rejection, 3 template parameters JSON. Returns true when
/// the payload parses.
#[allow(unsafe_code)]
#[no_mangle]
pub extern "C" fn fpc_check_reply(kind: u8, payload: &[u8; MAX_FRAME_LEN], len: usize) -> bool {
    let Some(payload) = prefix(payload, len) else {
        return false;
    };
    match kind {
        0 => fleet::parse_create_certificate_accepted(payload).is_ok(),
        1 => fleet::parse_register_thing_accepted(payload).is_ok(),
        2 => fleet::parse_rejected(payload).is_ok(),
        3 => core::str::from_utf8(payload)
            .is_ok_and(|text| fleet::parse_template_parameters_json(text).is_ok()),
        _ => false,
    }
}

const TEMPLATE_NAME: &str = "GGFleetProvisioningTemplate";
const CSR_PEM: &str =
    "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n";
const CERTIFICATE_ACCEPTED_TOPIC: &str = "$aws/certificates/create-from-csr/json/accepted";
const CERTIFICATE_REPLY: &[u8] = br#"{"certificateId":"abc123","certificatePem":"-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n","certificateOwnershipToken":"token-1"}"#;
const THING_REPLY: &[u8] = br#"{"thingName":"ggl-0001"}"#;

/// Upper bound on the events of the self-test run, so that a machine that
/// stops making progress ends the loop. A whole run takes about a dozen.
const MAX_SELFTEST_EVENTS: usize = 64;

/// Runs one provisioning through the state machine as a host would, feeding
/// canned replies, and wraps each request in a core-bus publish frame.
/// Returns true when the run reaches `Done` with the expected thing name.
#[allow(unsafe_code)]
#[no_mangle]
pub extern "C" fn fpc_provision_selftest() -> bool {
    let mut parameters = TemplateParameters::new();
    if parameters.push("SerialNumber", "0001").is_err() {
        return false;
    }
    let Ok(mut provisioner) = Provisioner::new(TEMPLATE_NAME, parameters, Timeouts::default())
    else {
        return false;
    };
    let Ok(mut register_accepted) = fleet::register_thing_topic(TEMPLATE_NAME) else {
        return false;
    };
    if register_accepted.push_str("/accepted").is_err() {
        return false;
    }

    let mut frame = [0u8; MAX_FRAME_LEN];
    let mut connected = false;
    let mut step_in_flight = None;
    let mut now_ms = 0;
    let mut event = Event::Start;
    for _ in 0..MAX_SELFTEST_EVENTS {
        now_ms += 1;
        event = match provisioner.handle(now_ms, event) {
            Action::GenerateKeyAndCsr => Event::KeyAndCsrReady { csr_pem: CSR_PEM },
            Action::Subscribe { .. } => Event::Subscribed,
            Action::Publish {
                topic,
                payload,
                step,
            } => {
                if corebus::encode_mqtt_publish(topic, payload, 1, &mut frame).is_err() {
                    return false;
                }
                step_in_flight = Some(step);
                Event::Published
            }
            Action::Wait { .. } if !connected => {
                connected = true;
                Event::Connection(true)
            }
            Action::Wait { .. } => match step_in_flight.take() {
                Some(machine::Step::CreateCertificate) => Event::Message {
                    topic: CERTIFICATE_ACCEPTED_TOPIC,
                    payload: CERTIFICATE_REPLY,
                },
                Some(machine::Step::RegisterThing) => Event::Message {
                    topic: &register_accepted,
                    payload: THING_REPLY,
                },
                None => return false,
            },
            Action::RecordCertificate { .. } => Event::CertificateRecorded,
            Action::StoreCredentials { .. } => Event::CredentialsStored,
            Action::Done { thing, .. } => return thing.thing_name.as_str() == "ggl-0001",
            _ => return false,
        };
    }
    false
}
