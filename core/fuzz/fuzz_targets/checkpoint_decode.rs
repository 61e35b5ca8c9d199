//! Fuzzes the checkpoint decoder, which reads a file that a crash or a
//! full disk may have cut short or damaged.
//!
//! Each input is decoded as is, and also as the body of a record with a
//! valid header and CRC, because random bytes almost never carry a valid
//! CRC and would otherwise never reach the postcard decoder. A record that
//! decodes must encode within `MAX_CHECKPOINT_LEN` and decode back equal.
#![no_main]

use fleet_provisioning_core::checkpoint::{self, MAGIC, MAX_CHECKPOINT_LEN, VERSION};
use fleet_provisioning_core::eventstream::crc32;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check_record(data);

    let mut framed = Vec::with_capacity(data.len() + 9);
    framed.extend_from_slice(&MAGIC);
    framed.push(VERSION);
    framed.extend_from_slice(data);
    let crc = crc32(&framed);
    framed.extend_from_slice(&crc.to_le_bytes());
    check_record(&framed);
});

fn check_record(bytes: &[u8]) {
    let Ok(record) = checkpoint::decode(bytes) else {
        return;
    };
    let mut encoded = [0u8; MAX_CHECKPOINT_LEN];
    let len = checkpoint::encode(&record, &mut encoded)
        .expect("a decoded checkpoint must fit MAX_CHECKPOINT_LEN");
    assert_eq!(
        checkpoint::decode(&encoded[..len]),
        Ok(record.clone()),
        "checkpoint does not survive a round trip"
    );
    if let Some(issued) = &record.issued {
        let certificate = issued.certificate();
        assert_eq!(certificate.certificate_id, issued.certificate_id);
        let _ = issued.token_usable_at(issued.issued_at_s.saturating_add(60));
    }
    let _ = record.thing();
}
