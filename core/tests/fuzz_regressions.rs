//! Inputs found by the fuzz targets in `core/fuzz`, kept as tests so that
//! they are checked on every `cargo test`.

use std::collections::BTreeMap;

use fleet_provisioning_core::fleet::{
    encode_register_thing_request, parse_template_parameters_json, MAX_REQUEST_PAYLOAD_LEN,
};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegisterThingRequest {
    certificate_ownership_token: String,
    parameters: BTreeMap<String, String>,
}

/// Found by `template_parameters`: a parameter named like `serde_json`'s
/// private raw-value marker, next to escapes. The core handled it correctly.
/// The fuzz target's reference reader did not, because `serde_json::Value`
/// with the `raw_value` feature treats that key as a marker.
#[test]
fn parameter_named_like_serde_marker() {
    let input = r#"{"$serde_json::private::RawValue":true,"Name":"caf\u00e9 ote\"uqd\"\n"}"#;
    let parameters = parse_template_parameters_json(input).unwrap();
    assert_eq!(parameters.len(), 2);
    assert_eq!(
        parameters.get("$serde_json::private::RawValue"),
        Some("true")
    );
    assert_eq!(parameters.get("Name"), Some("café ote\"uqd\"\n"));

    let mut request = vec![0u8; MAX_REQUEST_PAYLOAD_LEN];
    let len = encode_register_thing_request("token", &parameters, &mut request).unwrap();
    let decoded: RegisterThingRequest = serde_json::from_slice(&request[..len]).unwrap();
    assert_eq!(decoded.certificate_ownership_token, "token");
    assert_eq!(decoded.parameters.len(), 2);
    assert_eq!(
        decoded
            .parameters
            .get("$serde_json::private::RawValue")
            .map(String::as_str),
        Some("true")
    );
    assert_eq!(
        decoded.parameters.get("Name").map(String::as_str),
        Some("café ote\"uqd\"\n")
    );
}
