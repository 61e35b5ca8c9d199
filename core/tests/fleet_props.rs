//! Property tests of the fleet provisioning JSON codecs, with `serde_json` as
//! the independent reference. The parsers never panic, accept only JSON that
//! `serde_json` accepts and return the same values as `serde_json`. Encoded
//! requests parse back with `serde_json`.

use fleet_provisioning_core::fleet::{
    self, encode_create_certificate_request, encode_register_thing_request,
    parse_create_certificate_accepted, parse_register_thing_accepted, parse_rejected,
    parse_template_parameters_json, FleetError, TemplateParameters, MAX_ERROR_MESSAGE_LEN,
    MAX_REQUEST_PAYLOAD_LEN,
};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Text made of JSON punctuation, literals and escapes, so random input
/// reaches past the first byte of the parsers.
fn json_like_text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("{".to_string()),
            Just("}".to_string()),
            Just("[".to_string()),
            Just("]".to_string()),
            Just(",".to_string()),
            Just(":".to_string()),
            Just("\"".to_string()),
            Just("\\".to_string()),
            Just("\\u".to_string()),
            Just("D83D".to_string()),
            Just("true".to_string()),
            Just("null".to_string()),
            Just(" ".to_string()),
            Just("\"thingName\"".to_string()),
            Just("\"statusCode\"".to_string()),
            Just("\"errorCode\"".to_string()),
            Just("\"certificateId\"".to_string()),
            "[-+.eE0-9]{1,4}",
            "[a-z\\n\u{1}é]{1,3}",
        ],
        0..40,
    )
    .prop_map(|parts| parts.concat())
}

/// Any string, including control characters, quotes, backslashes and
/// characters outside the Basic Multilingual Plane.
fn any_text(max_chars: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            any::<char>(),
            Just('"'),
            Just('\\'),
            Just('\n'),
            Just('\u{1f}'),
            Just('😀'),
        ],
        0..max_chars,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

fn byte_len_at_most(text: &str, max: usize) -> bool {
    text.len() <= max
}

fn serde_json_accepts(payload: &[u8]) -> bool {
    serde_json::from_slice::<Value>(payload).is_ok()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn parsers_never_panic_on_bytes(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_create_certificate_accepted(&payload);
        let _ = parse_register_thing_accepted(&payload);
        let _ = parse_rejected(&payload);
        if let Ok(text) = std::str::from_utf8(&payload) {
            let _ = parse_template_parameters_json(text);
        }
    }

    #[test]
    fn parsers_accept_only_valid_json(text in json_like_text()) {
        let payload = text.as_bytes();
        if parse_create_certificate_accepted(payload).is_ok() {
            prop_assert!(serde_json_accepts(payload), "accepted {text:?}");
        }
        if parse_register_thing_accepted(payload).is_ok() {
            prop_assert!(serde_json_accepts(payload), "accepted {text:?}");
        }
        if parse_rejected(payload).is_ok() {
            prop_assert!(serde_json_accepts(payload), "accepted {text:?}");
        }
        if parse_template_parameters_json(&text).is_ok() {
            prop_assert!(serde_json_accepts(payload), "accepted {text:?}");
        }
        // A payload that is not JSON at all must be rejected as such.
        if !serde_json_accepts(payload) {
            prop_assert_eq!(parse_rejected(payload), Err(FleetError::InvalidJson));
        }
    }

    #[test]
    fn register_request_parses_back(
        token in any_text(64).prop_filter("token must not be empty", |t| !t.is_empty()),
        entries in proptest::collection::vec((any_text(16), any_text(32)), 0..8),
    ) {
        let mut parameters = TemplateParameters::new();
        for (key, value) in &entries {
            if !key.is_empty() && parameters.get(key).is_none() {
                parameters.push(key, value).unwrap();
            }
        }
        let mut out = vec![0u8; MAX_REQUEST_PAYLOAD_LEN];
        let len = encode_register_thing_request(&token, &parameters, &mut out).unwrap();
        let decoded: Value = serde_json::from_slice(&out[..len]).unwrap();

        let expected_parameters: serde_json::Map<String, Value> = parameters
            .iter()
            .map(|(key, value)| (key.to_string(), Value::String(value.to_string())))
            .collect();
        let expected = json!({
            "certificateOwnershipToken": token,
            "parameters": expected_parameters,
        });
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn csr_request_parses_back(csr in any_text(200).prop_filter("CSR must not be empty", |c| !c.is_empty())) {
        let mut out = vec![0u8; MAX_REQUEST_PAYLOAD_LEN];
        let len = encode_create_certificate_request(&csr, &mut out).unwrap();
        let decoded: Value = serde_json::from_slice(&out[..len]).unwrap();
        prop_assert_eq!(decoded, json!({ "certificateSigningRequest": csr }));
    }

    #[test]
    fn certificate_accepted_matches_serde_json(
        id in any_text(16).prop_filter("non-empty", |t| !t.is_empty()),
        pem in any_text(300).prop_filter("non-empty", |t| !t.is_empty()),
        token in any_text(100).prop_filter("non-empty", |t| !t.is_empty()),
        pretty in any::<bool>(),
    ) {
        prop_assume!(byte_len_at_most(&id, fleet::MAX_CERTIFICATE_ID_LEN));
        let value = json!({
            "certificateId": id,
            "certificatePem": pem,
            "certificateOwnershipToken": token,
            "unknown": { "nested": [1, 2.5, null, "x"] },
        });
        let payload = if pretty {
            serde_json::to_vec_pretty(&value).unwrap()
        } else {
            serde_json::to_vec(&value).unwrap()
        };
        let issued = parse_create_certificate_accepted(&payload).unwrap();
        prop_assert_eq!(issued.certificate_id.as_str(), id.as_str());
        prop_assert_eq!(issued.certificate_pem.as_str(), pem.as_str());
        prop_assert_eq!(issued.ownership_token.as_str(), token.as_str());
    }

    #[test]
    fn rejected_matches_serde_json(
        status_code in any::<u16>(),
        error_code in "[A-Za-z]{1,40}",
        message in any_text(700),
    ) {
        let payload = serde_json::to_vec(&json!({
            "statusCode": status_code,
            "errorCode": error_code,
            "errorMessage": message,
        }))
        .unwrap();
        let rejection = parse_rejected(&payload).unwrap();
        prop_assert_eq!(rejection.status_code, status_code);
        prop_assert_eq!(rejection.error_code.as_str(), error_code.as_str());
        prop_assert!(message.starts_with(rejection.error_message.as_str()));
        if message.len() <= MAX_ERROR_MESSAGE_LEN {
            prop_assert_eq!(rejection.error_message.as_str(), message.as_str());
        } else {
            // Truncated to the longest char-boundary prefix that fits.
            prop_assert!(rejection.error_message.len() > MAX_ERROR_MESSAGE_LEN - 4);
        }
    }

    #[test]
    fn template_parameters_match_serde_json(
        entries in proptest::collection::btree_map(
            "[A-Za-z][A-Za-z0-9_]{0,15}",
            prop_oneof![
                any_text(20).prop_map(Value::String),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
                any::<bool>().prop_map(Value::Bool),
            ],
            0..10,
        ),
    ) {
        let object: serde_json::Map<String, Value> = entries.clone().into_iter().collect();
        let text = serde_json::to_string(&Value::Object(object)).unwrap();
        let parameters = parse_template_parameters_json(&text).unwrap();
        prop_assert_eq!(parameters.len(), entries.len());
        for (key, value) in &entries {
            let expected = match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            prop_assert_eq!(parameters.get(key), Some(expected.as_str()), "key {}", key);
        }
    }
}
