//! The progress record that makes a provisioning run resumable.
//!
//! A run records each step the cloud remembers: the key it generated, the
//! certificate AWS IoT issued for it, the thing it registered. A rerun after
//! a crash or power cut reads the record and continues, so that it reuses
//! the key and the issued certificate instead of asking for a second one.
//!
//! Layout: the magic bytes `FPCK`, a format version byte, the postcard
//! encoding of [`Checkpoint`], and a CRC-32 (IEEE, little endian) of
//! everything before it. A record with another version, a bad CRC or bytes
//! postcard cannot decode is [`CheckpointError`], never a panic.

use crate::eventstream::crc32;
use crate::fleet::{
    CertificateIssued, ThingRegistered, MAX_CERTIFICATE_ID_LEN, MAX_CERTIFICATE_PEM_LEN,
    MAX_OWNERSHIP_TOKEN_LEN, MAX_TEMPLATE_NAME_LEN, MAX_THING_NAME_LEN,
};
use core::fmt;
use heapless::String;
use serde::{Deserialize, Serialize};

/// First bytes of every checkpoint.
pub const MAGIC: [u8; 4] = *b"FPCK";

/// Format version written by this build. A record of another version is
/// ignored: the run starts over, which is always safe.
pub const VERSION: u8 = 1;

/// Largest encoded checkpoint: the magic, version and CRC, plus the largest
/// postcard encoding of every field (strings at their capacity with a
/// 2-byte length prefix, an 8-byte time and a 32-byte fingerprint), with
/// margin for postcard's variable-length integers.
pub const MAX_CHECKPOINT_LEN: usize = 4
    + 1
    + 4
    + 32
    + 3 * MAX_TEMPLATE_NAME_LEN
    + MAX_CERTIFICATE_ID_LEN
    + MAX_CERTIFICATE_PEM_LEN
    + MAX_OWNERSHIP_TOKEN_LEN
    + MAX_THING_NAME_LEN
    + 64;

/// Time AWS IoT accepts a certificate ownership token, in seconds: one hour,
/// as the fleet provisioning documentation states.
pub const OWNERSHIP_TOKEN_LIFETIME_S: u64 = 3_600;

/// Safety margin before the token expires, in seconds, so that a resumed
/// RegisterThing does not race the expiry.
pub const OWNERSHIP_TOKEN_MARGIN_S: u64 = 300;

/// A certificate that was issued but whose thing is not registered yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedRecord {
    /// AWS IoT certificate id.
    pub certificate_id: String<MAX_CERTIFICATE_ID_LEN>,
    /// The certificate in PEM.
    pub certificate_pem: String<MAX_CERTIFICATE_PEM_LEN>,
    /// The ownership token RegisterThing needs.
    pub ownership_token: String<MAX_OWNERSHIP_TOKEN_LEN>,
    /// Unix time the certificate was issued, in seconds.
    pub issued_at_s: u64,
}

impl IssuedRecord {
    /// Records `certificate`, issued at Unix time `issued_at_s`.
    pub fn new(certificate: &CertificateIssued, issued_at_s: u64) -> Self {
        IssuedRecord {
            certificate_id: certificate.certificate_id.clone(),
            certificate_pem: certificate.certificate_pem.clone(),
            ownership_token: certificate.ownership_token.clone(),
            issued_at_s,
        }
    }

    /// Returns the certificate as the state machine takes it.
    pub fn certificate(&self) -> CertificateIssued {
        CertificateIssued {
            certificate_id: self.certificate_id.clone(),
            certificate_pem: self.certificate_pem.clone(),
            ownership_token: self.ownership_token.clone(),
        }
    }

    /// Returns whether the ownership token can still be used at Unix time
    /// `now_s`, with [`OWNERSHIP_TOKEN_MARGIN_S`] to spare. A clock that
    /// went backwards counts as expired, because the age is then unknown.
    pub fn token_usable_at(&self, now_s: u64) -> bool {
        match now_s.checked_sub(self.issued_at_s) {
            Some(age) => age + OWNERSHIP_TOKEN_MARGIN_S < OWNERSHIP_TOKEN_LIFETIME_S,
            None => false,
        }
    }
}

/// Progress of one provisioning run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// SHA-256 of the public key in DER, so that a rerun reuses the key
    /// only if the file still contains the key this record describes.
    pub key_fingerprint: [u8; 32],
    /// Template the run provisions with; a rerun with another template
    /// starts over.
    pub template_name: String<MAX_TEMPLATE_NAME_LEN>,
    /// Set once CreateCertificateFromCsr was accepted.
    pub issued: Option<IssuedRecord>,
    /// Set once RegisterThing was accepted.
    pub thing_name: Option<String<MAX_THING_NAME_LEN>>,
}

impl Checkpoint {
    /// Returns the registered thing, if the record has one.
    pub fn thing(&self) -> Option<ThingRegistered> {
        self.thing_name.as_ref().map(|thing_name| ThingRegistered {
            thing_name: thing_name.clone(),
        })
    }
}

/// Why a checkpoint could not be read or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointError {
    /// Shorter than the fixed header and CRC.
    TooShort {
        /// Its length.
        len: usize,
    },
    /// The first bytes are not [`MAGIC`].
    BadMagic,
    /// Written by another format version.
    UnsupportedVersion {
        /// The version found.
        version: u8,
    },
    /// The CRC does not match: the record is damaged.
    BadCrc {
        /// CRC stored in the record.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// The body is not a valid record.
    Invalid,
    /// The output buffer is too small.
    BufferTooSmall,
}

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckpointError::TooShort { len } => {
                write!(f, "checkpoint is {len} bytes, too short to be valid")
            }
            CheckpointError::BadMagic => f.write_str("checkpoint does not start with FPCK"),
            CheckpointError::UnsupportedVersion { version } => write!(
                f,
                "checkpoint has format version {version}; this build reads version {VERSION}"
            ),
            CheckpointError::BadCrc { stored, computed } => write!(
                f,
                "checkpoint CRC is {stored:#010x} but its bytes give {computed:#010x}: it is damaged"
            ),
            CheckpointError::Invalid => f.write_str("checkpoint body is not a valid record"),
            CheckpointError::BufferTooSmall => f.write_str("checkpoint does not fit its buffer"),
        }
    }
}

const HEADER_LEN: usize = MAGIC.len() + 1;
const CRC_LEN: usize = 4;

/// Encodes `checkpoint` into `out` and returns the length.
pub fn encode(checkpoint: &Checkpoint, out: &mut [u8]) -> Result<usize, CheckpointError> {
    if out.len() < HEADER_LEN + CRC_LEN {
        return Err(CheckpointError::BufferTooSmall);
    }
    let (header, rest) = out.split_at_mut(HEADER_LEN);
    header[..MAGIC.len()].copy_from_slice(&MAGIC);
    header[MAGIC.len()] = VERSION;
    let body_room = rest.len() - CRC_LEN;
    let body_len = postcard::to_slice(checkpoint, &mut rest[..body_room])
        .map_err(|_| CheckpointError::BufferTooSmall)?
        .len();
    let crc_at = HEADER_LEN + body_len;
    let crc = crc32(&out[..crc_at]);
    out[crc_at..crc_at + CRC_LEN].copy_from_slice(&crc.to_le_bytes());
    Ok(crc_at + CRC_LEN)
}

/// Decodes a checkpoint that fills `bytes` exactly.
pub fn decode(bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
    if bytes.len() < HEADER_LEN + CRC_LEN {
        return Err(CheckpointError::TooShort { len: bytes.len() });
    }
    if bytes[..MAGIC.len()] != MAGIC {
        return Err(CheckpointError::BadMagic);
    }
    let version = bytes[MAGIC.len()];
    if version != VERSION {
        return Err(CheckpointError::UnsupportedVersion { version });
    }
    let (covered, stored) = bytes.split_at(bytes.len() - CRC_LEN);
    let stored = u32::from_le_bytes([stored[0], stored[1], stored[2], stored[3]]);
    let computed = crc32(covered);
    if stored != computed {
        return Err(CheckpointError::BadCrc { stored, computed });
    }
    match postcard::take_from_bytes::<Checkpoint>(&covered[HEADER_LEN..]) {
        Ok((checkpoint, [])) => Ok(checkpoint),
        _ => Err(CheckpointError::Invalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            key_fingerprint: [7; 32],
            template_name: String::try_from("GGFleetProvisioningTemplate").unwrap(),
            issued: Some(IssuedRecord {
                certificate_id: String::try_from("ab12").unwrap(),
                certificate_pem: String::try_from("-----BEGIN CERTIFICATE-----\nMIIC\n").unwrap(),
                ownership_token: String::try_from("token").unwrap(),
                issued_at_s: 1_700_000_000,
            }),
            thing_name: Some(String::try_from("ggl-0001").unwrap()),
        }
    }

    #[test]
    fn round_trip() {
        let mut buf = [0u8; MAX_CHECKPOINT_LEN];
        let len = encode(&sample(), &mut buf).unwrap();
        assert_eq!(&buf[..4], b"FPCK");
        assert_eq!(decode(&buf[..len]).unwrap(), sample());
    }

    #[test]
    fn largest_record_fits() {
        let full = |n: usize| {
            let mut text = String::<MAX_CERTIFICATE_PEM_LEN>::new();
            for _ in 0..n {
                text.push('x').unwrap();
            }
            text
        };
        let checkpoint = Checkpoint {
            key_fingerprint: [0xff; 32],
            template_name: String::try_from(full(MAX_TEMPLATE_NAME_LEN).as_str()).unwrap(),
            issued: Some(IssuedRecord {
                certificate_id: String::try_from(full(MAX_CERTIFICATE_ID_LEN).as_str()).unwrap(),
                certificate_pem: full(MAX_CERTIFICATE_PEM_LEN),
                ownership_token: String::try_from(full(MAX_OWNERSHIP_TOKEN_LEN).as_str()).unwrap(),
                issued_at_s: u64::MAX,
            }),
            thing_name: Some(String::try_from(full(MAX_THING_NAME_LEN).as_str()).unwrap()),
        };
        let mut buf = [0u8; MAX_CHECKPOINT_LEN];
        let len = encode(&checkpoint, &mut buf).unwrap();
        assert_eq!(decode(&buf[..len]).unwrap(), checkpoint);
    }

    #[test]
    fn every_damage_is_an_error() {
        let mut buf = [0u8; MAX_CHECKPOINT_LEN];
        let len = encode(&sample(), &mut buf).unwrap();
        for cut in 0..len {
            assert!(decode(&buf[..cut]).is_err(), "truncation at {cut} accepted");
        }
        for at in 0..len {
            let mut damaged = buf;
            damaged[at] ^= 0x01;
            assert!(decode(&damaged[..len]).is_err(), "flip at {at} accepted");
        }
    }

    #[test]
    fn other_version_is_rejected() {
        let mut buf = [0u8; MAX_CHECKPOINT_LEN];
        let len = encode(&sample(), &mut buf).unwrap();
        buf[4] = 2;
        assert_eq!(
            decode(&buf[..len]),
            Err(CheckpointError::UnsupportedVersion { version: 2 })
        );
    }

    #[test]
    fn token_expiry() {
        let record = sample().issued.unwrap();
        assert!(record.token_usable_at(1_700_000_000));
        assert!(record.token_usable_at(1_700_000_000 + 3_299));
        assert!(!record.token_usable_at(1_700_000_000 + 3_300));
        assert!(
            !record.token_usable_at(1_699_999_999),
            "clock went backwards"
        );
    }
}
