//! Golden-vector tests: whole core-bus frames captured from the C Greengrass
//! Lite programs must decode, re-encode to the same bytes, and be reproduced
//! byte for byte by the request and response builders.

use std::fs;
use std::path::PathBuf;

use fleet_provisioning_core::corebus::{self, CoreBusError, GgError, RequestType, Response};
use fleet_provisioning_core::eventstream::{self, Header, HeaderValue, MAX_FRAME_LEN};
use fleet_provisioning_core::object::{self, Object};

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

/// Returns the names of all `.bin` vectors, sorted.
fn vector_names() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(vectors_dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".bin"))
        .collect();
    names.sort();
    names
}

/// Reads the vector whose name starts with `number` and a dash, e.g. "001".
fn vector(number: &str) -> Vec<u8> {
    let prefix = format!("{number}-");
    let name = vector_names()
        .into_iter()
        .find(|name| name.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no vector {number}"));
    fs::read(vectors_dir().join(name)).unwrap()
}

fn key_path_of<'a>(params: &object::Map<'a>) -> Vec<&'a str> {
    params
        .get("key_path")
        .unwrap()
        .as_list()
        .unwrap()
        .iter()
        .map(|item| item.as_str().unwrap())
        .collect()
}

#[test]
fn every_vector_round_trips() {
    let names = vector_names();
    assert_eq!(names.len(), 117);
    for name in &names {
        let bytes = fs::read(vectors_dir().join(name)).unwrap();
        assert!(bytes.len() <= MAX_FRAME_LEN, "{name}");
        assert_eq!(
            eventstream::frame_len(&bytes).unwrap(),
            bytes.len(),
            "{name}"
        );
        let frame =
            eventstream::decode_frame(&bytes).unwrap_or_else(|error| panic!("{name}: {error}"));

        let mut payload = vec![0u8; frame.payload.len()];
        if !frame.payload.is_empty() {
            let object =
                object::decode(frame.payload).unwrap_or_else(|error| panic!("{name}: {error}"));
            let len = object::encode(&object, &mut payload).unwrap();
            assert_eq!(len, frame.payload.len(), "{name}");
            assert_eq!(payload, frame.payload, "{name}");
        }

        let headers: Vec<Header<'_>> = frame.headers().collect();
        let mut out = vec![0u8; MAX_FRAME_LEN];
        let len = eventstream::encode_frame(&headers, &payload, &mut out).unwrap();
        assert_eq!(&out[..len], &bytes[..], "{name}");
    }
}

#[test]
fn every_request_parses_and_rebuilds() {
    let mut rebuilt_count = 0;
    for name in vector_names() {
        let bytes = fs::read(vectors_dir().join(&name)).unwrap();
        let frame = eventstream::decode_frame(&bytes).unwrap();
        if frame.header("method").is_none() {
            continue;
        }
        let request =
            corebus::parse_request(&frame).unwrap_or_else(|error| panic!("{name}: {error}"));
        let params = request.params;
        let mut out = vec![0u8; MAX_FRAME_LEN];
        let len = match request.method {
            "read" => corebus::encode_config_read(&key_path_of(&params), &mut out),
            "list" => corebus::encode_config_list(&key_path_of(&params), &mut out),
            "write" => {
                let value = params.get("value").unwrap();
                let timestamp = params.get("timestamp").and_then(|t| t.as_i64());
                corebus::encode_config_write(&key_path_of(&params), timestamp, &mut out, |w| {
                    w.object(&value)
                })
            }
            "publish" => corebus::encode_mqtt_publish(
                params.get("topic").unwrap().as_str().unwrap(),
                params.get("payload").unwrap().as_buf().unwrap(),
                params.get("qos").unwrap().as_i64().unwrap() as u8,
                &mut out,
            ),
            "subscribe" => {
                let filters: Vec<&str> = params
                    .get("topic_filter")
                    .unwrap()
                    .as_list()
                    .unwrap()
                    .iter()
                    .map(|item| item.as_str().unwrap())
                    .collect();
                corebus::encode_mqtt_subscribe(
                    &filters,
                    params.get("qos").unwrap().as_i64().unwrap() as u8,
                    params.get("virtual").unwrap().as_bool().unwrap(),
                    &mut out,
                )
            }
            "connection_status" => corebus::encode_connection_status(&mut out),
            other => corebus::encode_request(other, request.kind, &mut out, |w| w.map(0)),
        }
        .unwrap_or_else(|error| panic!("{name}: {error}"));
        assert_eq!(&out[..len], &bytes[..], "{name}");
        rebuilt_count += 1;
    }
    assert_eq!(rebuilt_count, 56);
}

#[test]
fn config_reads_match_c_client() {
    let prefix = [
        "services",
        "aws.greengrass.fleet_provisioning",
        "configuration",
    ];
    let cases: [(&str, &[&str]); 12] = [
        ("001", &["claimCertPath"]),
        ("005", &["claimCertPath"]),
        ("007", &["claimKeyPath"]),
        ("009", &["rootCaPath"]),
        ("011", &["templateName"]),
        ("013", &["iotDataEndpoint"]),
        ("015", &["csrCommonName"]),
        ("017", &["csrPath"]),
        ("019", &["certPath"]),
        ("021", &["keyPath"]),
        ("023", &["templateParams"]),
        ("045", &["iotCredEndpoint"]),
    ];
    let mut out = [0u8; 1024];
    for (number, leaf) in cases {
        let key_path: Vec<&str> = prefix.iter().chain(leaf.iter()).copied().collect();
        let len = corebus::encode_config_read(&key_path, &mut out).unwrap();
        assert_eq!(&out[..len], &vector(number)[..], "vector {number}");
    }

    let len = corebus::encode_config_read(&["system", "certificateFilePath"], &mut out).unwrap();
    assert_eq!(&out[..len], &vector("003")[..]);

    let len = corebus::encode_config_read(
        &[
            "services",
            "aws.greengrass.NucleusLite",
            "configuration",
            "networkProxy",
            "proxy",
            "url",
        ],
        &mut out,
    )
    .unwrap();
    assert_eq!(&out[..len], &vector("025")[..]);
}

#[test]
fn config_writes_match_c_client() {
    let nucleus = ["services", "aws.greengrass.NucleusLite", "configuration"];
    let data_endpoint: Vec<&str> = nucleus.iter().copied().chain(["iotDataEndpoint"]).collect();
    let cred_endpoint: Vec<&str> = nucleus.iter().copied().chain(["iotCredEndpoint"]).collect();
    let cases: [(&str, &[&str], &str); 6] = [
        (
            "037",
            &["system", "rootCaPath"],
            "/var/lib/greengrass/credentials/AmazonRootCA.pem",
        ),
        (
            "039",
            &["system", "privateKeyPath"],
            "/var/lib/greengrass/credentials/priv_key",
        ),
        ("041", &["system", "thingName"], "ggl-peer-peer23156r0"),
        ("043", &data_endpoint, "localhost"),
        ("047", &cred_endpoint, "localhost"),
        (
            "049",
            &["system", "certificateFilePath"],
            "/var/lib/greengrass/credentials/certificate.pem",
        ),
    ];
    let mut out = [0u8; 1024];
    for (number, key_path, value) in cases {
        let len = corebus::encode_config_write_str(key_path, value, Some(3), &mut out).unwrap();
        assert_eq!(&out[..len], &vector(number)[..], "vector {number}");

        let len =
            corebus::encode_config_write(key_path, Some(3), &mut out, |w| w.str(value)).unwrap();
        assert_eq!(&out[..len], &vector(number)[..], "vector {number}");
    }
}

#[test]
fn config_list_matches_vector() {
    let mut out = [0u8; 256];
    let len = corebus::encode_config_list(&["vectors"], &mut out).unwrap();
    assert_eq!(&out[..len], &vector("155")[..]);
}

#[test]
fn config_delete_request_shape() {
    let mut out = [0u8; 256];
    let len = corebus::encode_config_delete(&["system", "thingName"], &mut out).unwrap();
    let frame = eventstream::decode_frame(&out[..len]).unwrap();
    let request = corebus::parse_request(&frame).unwrap();
    assert_eq!(request.method, "delete");
    assert_eq!(request.kind, RequestType::Call);
    assert_eq!(request.params.len(), 1);
    assert_eq!(key_path_of(&request.params), ["system", "thingName"]);
}

#[test]
fn mqtt_subscribes_match_c_client() {
    let mut out = [0u8; 1024];
    let len = corebus::encode_mqtt_subscribe(
        &["$aws/certificates/create-from-csr/json/+"],
        1,
        true,
        &mut out,
    )
    .unwrap();
    assert_eq!(&out[..len], &vector("027")[..]);

    let len = corebus::encode_mqtt_subscribe(
        &["$aws/provisioning-templates/GGFleetProvisioningTemplate/provision/json/+"],
        1,
        true,
        &mut out,
    )
    .unwrap();
    assert_eq!(&out[..len], &vector("032")[..]);
}

#[test]
fn mqtt_publishes_match_c_client() {
    for number in ["030", "035"] {
        let bytes = vector(number);
        let frame = eventstream::decode_frame(&bytes).unwrap();
        let params = object::decode(frame.payload).unwrap().as_map().unwrap();
        let topic = params.get("topic").unwrap().as_str().unwrap();
        let payload = params.get("payload").unwrap().as_buf().unwrap();
        let mut out = [0u8; 2048];
        let len = corebus::encode_mqtt_publish(topic, payload, 1, &mut out).unwrap();
        assert_eq!(&out[..len], &bytes[..], "vector {number}");
    }
}

#[test]
fn connection_status_matches_vector() {
    let mut out = [0u8; 128];
    let len = corebus::encode_connection_status(&mut out).unwrap();
    assert_eq!(&out[..len], &vector("161")[..]);
}

#[test]
fn response_encoders_match_servers() {
    let mut out = [0u8; 64];
    let len = corebus::encode_error_response(GgError::Noentry.code(), &mut out).unwrap();
    assert_eq!(len, 27);
    assert_eq!(&out[..len], &vector("004")[..]);

    let len = corebus::encode_accepted_response(&mut out).unwrap();
    assert_eq!(len, 30);
    assert_eq!(&out[..len], &vector("028")[..]);

    let len = corebus::encode_value_response(&mut out, |w| w.null()).unwrap();
    assert_eq!(len, 17);
    assert_eq!(&out[..len], &vector("031")[..]);

    let len = corebus::encode_value_response(&mut out, |w| w.bool(true)).unwrap();
    assert_eq!(&out[..len], &vector("164")[..]);
}

fn parse_vector_response(bytes: &[u8]) -> Response<'_> {
    let frame = eventstream::decode_frame(bytes).unwrap();
    corebus::parse_response(&frame).unwrap()
}

#[test]
fn responses_parse() {
    let bytes = vector("002");
    assert_eq!(
        parse_vector_response(&bytes),
        Response::Value(Object::Buf(b"/var/lib/greengrass/pki/claim.pem"))
    );

    let bytes = vector("004");
    let Response::Error(code) = parse_vector_response(&bytes) else {
        panic!("004 is not an error response");
    };
    assert_eq!(code, 12);
    assert_eq!(GgError::from_code(code), Some(GgError::Noentry));
    assert_eq!(GgError::from_code(code).unwrap().name(), "NOENTRY");

    let bytes = vector("024");
    let Response::Value(value) = parse_vector_response(&bytes) else {
        panic!("024 is not a value response");
    };
    let map = value.as_map().unwrap();
    assert_eq!(map.len(), 1);
    assert_eq!(
        map.get("SerialNumber").unwrap().as_str(),
        Some("peer23156r0")
    );

    let bytes = vector("028");
    assert_eq!(parse_vector_response(&bytes), Response::Accepted);

    let bytes = vector("029");
    let Response::Value(value) = parse_vector_response(&bytes) else {
        panic!("029 is not a value response");
    };
    let message = corebus::parse_mqtt_event(&value).unwrap();
    assert_eq!(
        message.topic,
        "$aws/certificates/create-from-csr/json/accepted"
    );
    assert!(message.payload.starts_with(b"{\"certificateId\""));

    let bytes = vector("031");
    assert_eq!(parse_vector_response(&bytes), Response::Value(Object::Null));

    let bytes = vector("122");
    assert_eq!(parse_vector_response(&bytes), Response::Error(9));

    let bytes = vector("163");
    assert_eq!(
        parse_vector_response(&bytes),
        Response::Value(Object::Bool(false))
    );
    let bytes = vector("164");
    assert_eq!(
        parse_vector_response(&bytes),
        Response::Value(Object::Bool(true))
    );
}

#[test]
fn empty_value_payload_is_null() {
    let mut out = [0u8; 32];
    let len = eventstream::encode_frame(&[], &[], &mut out).unwrap();
    assert_eq!(
        parse_vector_response(&out[..len]),
        Response::Value(Object::Null)
    );
}

#[test]
fn nested_vector_decodes_all_types() {
    let bytes = vector("104");
    let Response::Value(value) = parse_vector_response(&bytes) else {
        panic!("104 is not a value response");
    };
    let map = value.as_map().unwrap();
    assert_eq!(map.get("i"), Some(Object::I64(-2)));
    assert_eq!(map.get("f"), Some(Object::F64(1.0)));
    assert_eq!(map.get("g"), Some(Object::F64(-0.25)));
    assert_eq!(map.get("t"), Some(Object::Bool(true)));
    assert_eq!(map.get("fa"), Some(Object::Bool(false)));
    assert_eq!(map.get("n"), Some(Object::Null));
    let list = map.get("l").unwrap().as_list().unwrap();
    assert_eq!(list.len(), 7);
    assert_eq!(list.get(1).unwrap().as_str(), Some("x"));
    assert!(map.get("em").unwrap().as_map().unwrap().is_empty());
    assert!(map.get("el").unwrap().as_list().unwrap().is_empty());
    let deep = map
        .get("sub")
        .and_then(|sub| sub.as_map()?.get("deep"))
        .and_then(|deep| deep.as_map()?.get("k"));
    assert_eq!(deep.unwrap().as_str(), Some("v"));
}

#[test]
fn request_with_trace_headers_parses() {
    let headers = [
        Header {
            name: "method",
            value: HeaderValue::String("read"),
        },
        Header {
            name: "type",
            value: HeaderValue::Int32(1),
        },
        Header {
            name: "T",
            value: HeaderValue::Int32(5),
        },
        Header {
            name: "S",
            value: HeaderValue::Int32(6),
        },
        Header {
            name: "P",
            value: HeaderValue::Int32(7),
        },
    ];
    let mut out = [0u8; 128];
    let len = eventstream::encode_frame(&headers, &[6, 0, 0, 0, 0], &mut out).unwrap();
    let frame = eventstream::decode_frame(&out[..len]).unwrap();
    let request = corebus::parse_request(&frame).unwrap();
    assert_eq!(request.method, "read");
    assert_eq!(request.kind, RequestType::Call);
    assert!(request.params.is_empty());
}

#[test]
fn request_without_map_is_rejected() {
    let bytes = vector("002");
    let frame = eventstream::decode_frame(&bytes).unwrap();
    assert_eq!(
        corebus::parse_request(&frame).map(|_| ()),
        Err(CoreBusError::MissingHeader("method"))
    );
    let headers = [
        Header {
            name: "method",
            value: HeaderValue::String("read"),
        },
        Header {
            name: "type",
            value: HeaderValue::Int32(1),
        },
    ];
    let mut out = [0u8; 128];
    let len = eventstream::encode_frame(&headers, &[0], &mut out).unwrap();
    let frame = eventstream::decode_frame(&out[..len]).unwrap();
    assert_eq!(
        corebus::parse_request(&frame).map(|_| ()),
        Err(CoreBusError::NotAMap)
    );
}
