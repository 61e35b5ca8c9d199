//! Fuzzes the template parameters JSON parser, with `serde_json` as the
//! reference, and feeds what it accepts through the `RegisterThing` request
//! encoder.
//!
//! Accepted parameters must match `serde_json`'s reading key for key: a
//! string value unescaped, a number or boolean as its source text. The
//! encoded request must parse back with `serde_json` to the same pairs.
#![no_main]

use std::collections::BTreeMap;

use fleet_provisioning_core::fleet::{
    self, FleetError, MAX_PARAMETERS, MAX_PARAMETER_KEY_LEN, MAX_PARAMETER_VALUE_LEN,
    MAX_REQUEST_PAYLOAD_LEN,
};
use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = fleet::parse_template_parameters_json(text);
    if serde_json::from_str::<IgnoredAny>(text).is_err() {
        assert_eq!(parsed, Err(FleetError::InvalidJson));
    }
    let Ok(parameters) = parsed else {
        return;
    };

    let reference: BTreeMap<String, &RawValue> =
        serde_json::from_str(text).expect("serde_json rejects accepted template parameters");
    assert_eq!(parameters.len(), reference.len(), "parameter count");
    assert!(parameters.len() <= MAX_PARAMETERS);
    for (key, value) in parameters.iter() {
        assert!(!key.is_empty());
        assert!(key.len() <= MAX_PARAMETER_KEY_LEN);
        assert!(value.len() <= MAX_PARAMETER_VALUE_LEN);
        let raw = reference
            .get(key)
            .unwrap_or_else(|| panic!("key {key:?} missing in serde_json's reading"))
            .get();
        if raw.starts_with('"') {
            let expected: String = serde_json::from_str(raw).expect("string value");
            assert_eq!(value, expected, "string value of {key:?}");
        } else {
            assert_eq!(value, raw, "scalar text of {key:?}");
        }
    }

    let mut request = vec![0u8; MAX_REQUEST_PAYLOAD_LEN];
    let len = fleet::encode_register_thing_request("token", &parameters, &mut request)
        .expect("accepted parameters must encode");
    let decoded: RegisterThingRequest =
        serde_json::from_slice(&request[..len]).expect("request is valid JSON");
    assert_eq!(decoded.certificate_ownership_token, "token");
    assert_eq!(decoded.parameters.len(), parameters.len());
    for (key, value) in parameters.iter() {
        assert_eq!(
            decoded.parameters.get(key).map(String::as_str),
            Some(value),
            "encoded value of {key:?}"
        );
    }
});

/// The request as `serde_json` reads it. A typed struct, not
/// `serde_json::Value`, because with the `raw_value` feature `Value` treats
/// the key `$serde_json::private::RawValue` as a marker, which a template
/// parameter may legitimately be named.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegisterThingRequest {
    certificate_ownership_token: String,
    parameters: BTreeMap<String, String>,
}
