//! Fuzzes the event-stream frame decoder and the core-bus message parsers.
//!
//! Each input is decoded twice: as is, and with its total length and both
//! CRCs rewritten to match, because random bytes almost never carry a valid
//! CRC and would otherwise never reach the header parser. A frame that
//! decodes must re-encode to the same bytes.
#![no_main]

use fleet_provisioning_core::corebus;
use fleet_provisioning_core::eventstream::{
    self, Header, FRAME_OVERHEAD, MAX_FRAME_LEN, PRELUDE_LEN,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check_frame(data);
    if let Some(patched) = with_valid_lengths_and_crcs(data) {
        check_frame(&patched);
    }
});

fn check_frame(bytes: &[u8]) {
    let declared = eventstream::frame_len(bytes);
    let Ok(frame) = eventstream::decode_frame(bytes) else {
        return;
    };
    assert_eq!(
        declared,
        Ok(bytes.len()),
        "frame_len disagrees with decode_frame"
    );
    assert!(bytes.len() <= MAX_FRAME_LEN);

    let headers: Vec<Header<'_>> = frame.headers().collect();
    let headers_len: usize = headers.iter().map(Header::encoded_len).sum();
    assert_eq!(
        headers_len,
        frame.header_bytes().len(),
        "the header iterator stopped early"
    );
    assert_eq!(
        FRAME_OVERHEAD + headers_len + frame.payload.len(),
        bytes.len()
    );
    for header in &headers {
        let first = headers
            .iter()
            .find(|candidate| candidate.name == header.name)
            .map(|candidate| candidate.value);
        assert_eq!(frame.header(header.name), first, "header lookup by name");
    }

    let mut encoded = vec![0u8; bytes.len()];
    let len = eventstream::encode_frame(&headers, frame.payload, &mut encoded)
        .expect("a decoded frame must re-encode");
    assert_eq!(&encoded[..len], bytes, "re-encoded frame differs");

    let _ = corebus::parse_request(&frame);
    if let Ok(corebus::Response::Value(value)) = corebus::parse_response(&frame) {
        let _ = corebus::parse_mqtt_event(&value);
    }
}

/// Returns `data` with the total length set to its size and both CRCs
/// recomputed, or `None` when it is too short or too long to be a frame.
fn with_valid_lengths_and_crcs(data: &[u8]) -> Option<Vec<u8>> {
    if data.len() < FRAME_OVERHEAD || data.len() > MAX_FRAME_LEN {
        return None;
    }
    let mut bytes = data.to_vec();
    let total = u32::try_from(bytes.len()).ok()?;
    bytes[..4].copy_from_slice(&total.to_be_bytes());
    let prelude_crc = eventstream::crc32(&bytes[..8]);
    bytes[8..PRELUDE_LEN].copy_from_slice(&prelude_crc.to_be_bytes());
    let crc_offset = bytes.len() - 4;
    let message_crc = eventstream::crc32(&bytes[..crc_offset]);
    bytes[crc_offset..].copy_from_slice(&message_crc.to_be_bytes());
    Some(bytes)
}
