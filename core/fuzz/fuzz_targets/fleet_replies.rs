//! Fuzzes the three fleet provisioning reply parsers on the same bytes, with
//! `serde_json` as the reference.
//!
//! Whatever a parser accepts, `serde_json` must deserialize into the
//! matching struct, with equal field values. Bytes that `serde_json` cannot
//! even skip as one JSON value must be `FleetError::InvalidJson` for every
//! parser. `serde_json::Value` is not the reference for validity, because it
//! also rejects valid JSON such as `1e400` and lone surrogate escapes.
#![no_main]

use fleet_provisioning_core::fleet::{
    self, FleetError, MAX_CERTIFICATE_ID_LEN, MAX_CERTIFICATE_PEM_LEN, MAX_ERROR_CODE_LEN,
    MAX_OWNERSHIP_TOKEN_LEN, MAX_THING_NAME_LEN,
};
use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CertificateReply {
    certificate_id: String,
    certificate_pem: String,
    certificate_ownership_token: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ThingReply {
    thing_name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RejectedReply {
    status_code: u16,
    error_code: String,
    error_message: Option<String>,
}

fuzz_target!(|data: &[u8]| {
    let certificate = fleet::parse_create_certificate_accepted(data);
    let thing = fleet::parse_register_thing_accepted(data);
    let rejection = fleet::parse_rejected(data);

    if serde_json::from_slice::<IgnoredAny>(data).is_err() {
        assert_eq!(certificate, Err(FleetError::InvalidJson));
        assert_eq!(thing, Err(FleetError::InvalidJson));
        assert_eq!(rejection, Err(FleetError::InvalidJson));
    }

    if let Ok(issued) = certificate {
        let reference: CertificateReply =
            serde_json::from_slice(data).expect("serde_json rejects an accepted certificate reply");
        assert_eq!(issued.certificate_id.as_str(), reference.certificate_id);
        assert_eq!(issued.certificate_pem.as_str(), reference.certificate_pem);
        assert_eq!(
            issued.ownership_token.as_str(),
            reference.certificate_ownership_token
        );
        assert!(!issued.certificate_id.is_empty());
        assert!(!issued.certificate_pem.is_empty());
        assert!(!issued.ownership_token.is_empty());
        assert!(issued.certificate_id.len() <= MAX_CERTIFICATE_ID_LEN);
        assert!(issued.certificate_pem.len() <= MAX_CERTIFICATE_PEM_LEN);
        assert!(issued.ownership_token.len() <= MAX_OWNERSHIP_TOKEN_LEN);
    }

    if let Ok(registered) = thing {
        let reference: ThingReply =
            serde_json::from_slice(data).expect("serde_json rejects an accepted thing reply");
        assert_eq!(registered.thing_name.as_str(), reference.thing_name);
        assert!(!registered.thing_name.is_empty());
        assert!(registered.thing_name.len() <= MAX_THING_NAME_LEN);
    }

    if let Ok(rejected) = rejection {
        let reference: RejectedReply =
            serde_json::from_slice(data).expect("serde_json rejects an accepted rejection");
        assert_eq!(rejected.status_code, reference.status_code);
        assert_eq!(rejected.error_code.as_str(), reference.error_code);
        assert!(!rejected.error_code.is_empty());
        assert!(rejected.error_code.len() <= MAX_ERROR_CODE_LEN);
        // A long message is cut to a prefix, and a missing one is empty.
        let message = reference.error_message.unwrap_or_default();
        assert!(
            message.starts_with(rejected.error_message.as_str()),
            "errorMessage {:?} is not a prefix of {message:?}",
            rejected.error_message
        );
    }
});
