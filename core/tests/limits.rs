//! The limits the Greengrass Lite core-bus daemons enforce, each checked
//! through the whole receive path (frame decoder, then the core-bus
//! parsers) and each reported as its own error with its own message.

use fleet_provisioning_core::corebus::{self, CoreBusError};
use fleet_provisioning_core::eventstream::{
    self, FrameError, FRAME_OVERHEAD, MAX_FRAME_LEN, PRELUDE_LEN,
};
use fleet_provisioning_core::object::{ObjectError, MAX_DEPTH};

/// Event-stream value type of an int32 header.
const HEADER_TYPE_INT32: u8 = 4;
/// Event-stream value type of a string header.
const HEADER_TYPE_STRING: u8 = 7;
/// Core-bus object tags.
const TAG_NULL: u8 = 0;
const TAG_BUF: u8 = 4;
const TAG_LIST: u8 = 5;

/// Builds a frame around raw header and payload bytes, with a correct
/// total length and correct CRCs.
fn frame(raw_headers: &[u8], payload: &[u8]) -> Vec<u8> {
    let total = FRAME_OVERHEAD + raw_headers.len() + payload.len();
    let mut bytes = Vec::with_capacity(total);
    bytes.extend_from_slice(&(total as u32).to_be_bytes());
    bytes.extend_from_slice(&(raw_headers.len() as u32).to_be_bytes());
    let prelude_crc = eventstream::crc32(&bytes);
    bytes.extend_from_slice(&prelude_crc.to_be_bytes());
    bytes.extend_from_slice(raw_headers);
    bytes.extend_from_slice(payload);
    let message_crc = eventstream::crc32(&bytes);
    bytes.extend_from_slice(&message_crc.to_be_bytes());
    bytes
}

/// Encodes one header: name length, name, value type, value.
fn raw_header(name: &str, value_type: u8, value: &[u8]) -> Vec<u8> {
    let mut bytes = vec![name.len() as u8];
    bytes.extend_from_slice(name.as_bytes());
    bytes.push(value_type);
    bytes.extend_from_slice(value);
    bytes
}

/// Headers of a `read` call with request type `kind`.
fn request_headers(kind: i32) -> Vec<u8> {
    let mut bytes = raw_header("method", HEADER_TYPE_STRING, &[0, 4]);
    bytes.extend_from_slice(b"read");
    bytes.extend(raw_header("type", HEADER_TYPE_INT32, &kind.to_be_bytes()));
    bytes
}

/// Runs the receive path of a response: decode the frame, then parse it.
fn receive_response(bytes: &[u8]) -> Result<(), CoreBusError> {
    let frame = eventstream::decode_frame(bytes)?;
    corebus::parse_response(&frame).map(|_| ())
}

/// Runs the receive path of a request: decode the frame, then parse it.
fn receive_request(bytes: &[u8]) -> Result<(), CoreBusError> {
    let frame = eventstream::decode_frame(bytes)?;
    corebus::parse_request(&frame).map(|_| ())
}

/// `levels` single-item lists around a null: depth `levels + 1`.
fn nested_lists(levels: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    for _ in 0..levels {
        bytes.push(TAG_LIST);
        bytes.extend_from_slice(&1u32.to_le_bytes());
    }
    bytes.push(TAG_NULL);
    bytes
}

/// Every limit: its name, the receive result and the error it must be.
fn cases() -> Vec<(&'static str, Result<(), CoreBusError>, CoreBusError)> {
    let oversized = frame(&[], &vec![0u8; MAX_FRAME_LEN + 1 - FRAME_OVERHEAD]);
    let mut bad_prelude_crc = frame(&[], &[TAG_NULL]);
    bad_prelude_crc[PRELUDE_LEN - 1] ^= 0x01;
    let mut bad_message_crc = frame(&[], &[TAG_NULL]);
    let last = bad_message_crc.len() - 1;
    bad_message_crc[last] ^= 0x01;
    let mut headers_past_end = frame(&[], &[TAG_NULL]);
    headers_past_end[4..8].copy_from_slice(&2u32.to_be_bytes());
    let prelude_crc = eventstream::crc32(&headers_past_end[..8]);
    headers_past_end[8..12].copy_from_slice(&prelude_crc.to_be_bytes());

    vec![
        (
            "frame over 10,000 bytes",
            receive_response(&oversized),
            CoreBusError::Frame(FrameError::TooLarge {
                len: MAX_FRAME_LEN + 1,
            }),
        ),
        (
            "nesting deeper than 15",
            receive_response(&frame(&[], &nested_lists(MAX_DEPTH))),
            CoreBusError::Object(ObjectError::TooDeep),
        ),
        (
            "bytes after the object",
            receive_response(&frame(&[], &[TAG_NULL, TAG_NULL])),
            CoreBusError::Object(ObjectError::TrailingBytes { count: 1 }),
        ),
        (
            "buffer length past the end",
            receive_response(&frame(&[], &[TAG_BUF, 5, 0, 0, 0, b'a'])),
            CoreBusError::Object(ObjectError::LengthOverrun),
        ),
        (
            "headers length past the end",
            receive_response(&headers_past_end),
            CoreBusError::Frame(FrameError::HeadersOverrun),
        ),
        (
            "unknown object tag",
            receive_response(&frame(&[], &[7])),
            CoreBusError::Object(ObjectError::UnknownTag(7)),
        ),
        (
            "header of unknown value type",
            receive_response(&frame(&raw_header("x", 10, &[]), &[])),
            CoreBusError::Frame(FrameError::UnknownHeaderType(10)),
        ),
        (
            "unknown request type",
            receive_request(&frame(&request_headers(3), &[6, 0, 0, 0, 0])),
            CoreBusError::UnknownRequestType(3),
        ),
        (
            "bad prelude CRC",
            receive_response(&bad_prelude_crc),
            CoreBusError::Frame(FrameError::PreludeCrc {
                expected: eventstream::crc32(&bad_prelude_crc[..8]) ^ 0x01,
                actual: eventstream::crc32(&bad_prelude_crc[..8]),
            }),
        ),
        (
            "bad message CRC",
            receive_response(&bad_message_crc),
            CoreBusError::Frame(FrameError::MessageCrc {
                expected: eventstream::crc32(&bad_message_crc[..last - 3]) ^ 0x01,
                actual: eventstream::crc32(&bad_message_crc[..last - 3]),
            }),
        ),
    ]
}

#[test]
fn each_limit_has_its_error() {
    for (name, result, expected) in cases() {
        assert_eq!(result, Err(expected), "{name}");
    }
}

#[test]
fn limit_errors_are_distinct() {
    let errors: Vec<(&str, String)> = cases()
        .into_iter()
        .map(|(name, _, expected)| (name, expected.to_string()))
        .collect();
    for (index, (name, message)) in errors.iter().enumerate() {
        for (other_name, other_message) in &errors[index + 1..] {
            assert_ne!(message, other_message, "{name} and {other_name}");
        }
    }
}

#[test]
fn limits_are_inclusive() {
    // The largest frame and the deepest object are accepted.
    let largest = frame(&[], &vec![0u8; MAX_FRAME_LEN - FRAME_OVERHEAD]);
    assert_eq!(largest.len(), MAX_FRAME_LEN);
    assert!(eventstream::decode_frame(&largest).is_ok());
    let deepest = frame(&[], &nested_lists(MAX_DEPTH - 1));
    assert_eq!(receive_response(&deepest), Ok(()));
}

#[test]
fn declared_oversize_is_rejected_from_prelude() {
    // A reader learns the length from the prelude, before reading the rest,
    // so the limit applies without buffering an oversized frame.
    let oversized = frame(&[], &vec![0u8; MAX_FRAME_LEN + 1 - FRAME_OVERHEAD]);
    assert_eq!(
        eventstream::frame_len(&oversized[..PRELUDE_LEN]),
        Err(FrameError::TooLarge {
            len: MAX_FRAME_LEN + 1
        })
    );
}
