//! EC P-256 key pairs and certificate signing requests (CSRs), built with
//! Mbed TLS.
//!
//! The private key leaves this module only inside [`Zeroizing`] buffers, so
//! the copies this module controls are overwritten when they are dropped.
//! No error or log message contains key material.

use std::fmt;
use std::sync::Arc;

use mbedtls::hash::Type as MdType;
use mbedtls::pk::{EcGroupId, Pk, Type as PkType};
use mbedtls::rng::{CtrDrbg, OsEntropy};
use mbedtls::x509::csr::Builder as CsrBuilder;
use mbedtls::x509::Certificate;
use zeroize::{Zeroize, Zeroizing};

/// Maximum length in bytes of a subject common name (X.509 `ub-common-name`).
pub const MAX_COMMON_NAME_LEN: usize = 64;

/// Buffer size for a PEM-encoded P-256 private key. A SEC1 P-256 key is
/// 121 bytes of DER, about 230 bytes of PEM.
const PRIVATE_KEY_PEM_BUFFER_LEN: usize = 1024;

/// Personalization string for the CTR_DRBG, so its seed differs from that
/// of other programs that use the same entropy source.
const DRBG_PERSONALIZATION: &[u8] = b"fleet-provisioning key generation";

/// A new private key and a CSR signed with it.
pub struct KeyAndCsr {
    /// Private key as SEC1 PEM (`-----BEGIN EC PRIVATE KEY-----`),
    /// overwritten with zeros when dropped.
    pub private_key_pem: Zeroizing<String>,
    /// CSR as PEM (`-----BEGIN CERTIFICATE REQUEST-----`).
    pub csr_pem: String,
}

impl fmt::Debug for KeyAndCsr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyAndCsr")
            .field("private_key_pem", &"<redacted>")
            .field("csr_pem", &self.csr_pem)
            .finish()
    }
}

/// Errors from key, CSR and certificate handling.
///
/// No variant contains key material.
#[derive(Debug)]
pub enum KeyError {
    /// The CSR common name cannot be used.
    InvalidCommonName {
        /// The rejected common name.
        common_name: String,
        /// Reason for the rejection.
        reason: &'static str,
    },
    /// Seeding the random number generator from the OS entropy source failed.
    RandomGenerator(mbedtls::Error),
    /// Generating the EC P-256 key pair failed.
    KeyGeneration(mbedtls::Error),
    /// Encoding the private key as PEM failed.
    KeyEncoding(mbedtls::Error),
    /// The private key PEM could not be parsed.
    InvalidPrivateKey(mbedtls::Error),
    /// The private key is not an EC P-256 key.
    UnsupportedKey {
        /// The key type that was found, as Mbed TLS names it.
        key_type: String,
    },
    /// Building or signing the CSR failed.
    CsrGeneration(mbedtls::Error),
    /// The certificate PEM could not be parsed.
    InvalidCertificate(mbedtls::Error),
    /// The certificate PEM contains no certificate.
    NoCertificate,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidCommonName {
                common_name,
                reason,
            } => write!(
                f,
                "invalid CSR common name {common_name:?}: {reason}; set csrCommonName \
                 to 1 to {MAX_COMMON_NAME_LEN} bytes without control characters or '\\'"
            ),
            Self::RandomGenerator(e) => write!(
                f,
                "failed to seed the random number generator from the OS entropy source \
                 ({}); check that /dev/urandom is readable",
                describe(e)
            ),
            Self::KeyGeneration(e) => {
                write!(f, "failed to generate an EC P-256 key: {}", describe(e))
            }
            Self::KeyEncoding(e) => {
                write!(
                    f,
                    "failed to encode the private key as PEM: {}",
                    describe(e)
                )
            }
            Self::InvalidPrivateKey(e) => write!(
                f,
                "invalid private key PEM: {}; remove the private key file to generate a new key",
                describe(e)
            ),
            Self::UnsupportedKey { key_type } => write!(
                f,
                "the private key is of type {key_type}, expected an EC P-256 key; \
                 remove the private key file to generate a new key"
            ),
            Self::CsrGeneration(e) => write!(
                f,
                "failed to build the certificate signing request: {}",
                describe(e)
            ),
            Self::InvalidCertificate(e) => {
                write!(f, "invalid certificate PEM: {}", describe(e))
            }
            Self::NoCertificate => write!(f, "the certificate PEM contains no certificate"),
        }
    }
}

impl std::error::Error for KeyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::RandomGenerator(e)
            | Self::KeyGeneration(e)
            | Self::KeyEncoding(e)
            | Self::InvalidPrivateKey(e)
            | Self::CsrGeneration(e)
            | Self::InvalidCertificate(e) => Some(e),
            Self::InvalidCommonName { .. } | Self::UnsupportedKey { .. } | Self::NoCertificate => {
                None
            }
        }
    }
}

/// Formats an Mbed TLS error with its numeric code, which the Mbed TLS
/// documentation and `programs/util/strerror` look up.
fn describe(error: &mbedtls::Error) -> String {
    format!(
        "{error} (Mbed TLS error -0x{:04X})",
        error.to_int().unsigned_abs()
    )
}

/// Generates an EC P-256 (secp256r1) key pair and a CSR with subject
/// `CN=<common_name>` signed with ECDSA-SHA256.
pub fn generate_key_and_csr(common_name: &str) -> Result<KeyAndCsr, KeyError> {
    let subject = subject_for_common_name(common_name)?;
    let mut rng = new_rng()?;

    let mut key =
        Pk::generate_ec(&mut rng, EcGroupId::SecP256R1).map_err(KeyError::KeyGeneration)?;
    let private_key_pem = write_private_key_pem(&mut key)?;
    let csr_pem = write_csr_pem(&mut key, &subject, &mut rng)?;

    Ok(KeyAndCsr {
        private_key_pem,
        csr_pem,
    })
}

/// Builds a CSR with subject `CN=<common_name>` for an existing EC P-256
/// private key, so a run that stopped after writing the key can resume with it.
pub fn generate_csr_for_key(private_key_pem: &[u8], common_name: &str) -> Result<String, KeyError> {
    let subject = subject_for_common_name(common_name)?;
    let mut key = parse_private_key(private_key_pem)?;
    let mut rng = new_rng()?;
    write_csr_pem(&mut key, &subject, &mut rng)
}

/// Checks whether the public key in `certificate_pem` (the first certificate
/// when it contains a chain) belongs to the private key in `private_key_pem`.
///
/// Returns `Ok(false)` when the keys differ, including when they are of
/// different types.
pub fn public_key_matches(
    private_key_pem: &[u8],
    certificate_pem: &[u8],
) -> Result<bool, KeyError> {
    let key = parse_private_key(private_key_pem)?;

    // Mbed TLS takes PEM input only with a terminating NUL byte.
    let mut certificate_pem_nul = Vec::with_capacity(certificate_pem.len() + 1);
    certificate_pem_nul.extend_from_slice(certificate_pem);
    certificate_pem_nul.push(0);
    let certificates = Certificate::from_pem_multiple(&certificate_pem_nul)
        .map_err(KeyError::InvalidCertificate)?;
    let certificate = certificates.iter().next().ok_or(KeyError::NoCertificate)?;

    Ok(Pk::check_pair(certificate.public_key(), &key))
}

/// Checks that `common_name` can be a CSR subject common name.
pub fn validate_common_name(common_name: &str) -> Result<(), KeyError> {
    subject_for_common_name(common_name).map(drop)
}

/// Checks that `pem` contains at least one X.509 certificate Mbed TLS can
/// parse.
pub fn check_certificate_pem(pem: &[u8]) -> Result<(), KeyError> {
    let mut with_nul = Vec::with_capacity(pem.len() + 1);
    with_nul.extend_from_slice(pem);
    with_nul.push(0);
    let certificates =
        Certificate::from_pem_multiple(&with_nul).map_err(KeyError::InvalidCertificate)?;
    match certificates.iter().next() {
        Some(_) => Ok(()),
        None => Err(KeyError::NoCertificate),
    }
}

/// Checks that `pem` contains an unencrypted private key of any type Mbed TLS
/// can parse (claim keys are often RSA).
pub fn check_private_key_pem(pem: &[u8]) -> Result<(), KeyError> {
    let mut with_nul = Zeroizing::new(Vec::with_capacity(pem.len() + 1));
    with_nul.extend_from_slice(pem);
    with_nul.push(0);
    Pk::from_private_key(&with_nul, None)
        .map(drop)
        .map_err(KeyError::InvalidPrivateKey)
}

/// Returns the SHA-256 of the public key of `private_key_pem` in DER, which
/// identifies the key in the progress checkpoint without storing it there.
pub fn public_key_fingerprint(private_key_pem: &[u8]) -> Result<[u8; 32], KeyError> {
    let mut key = parse_private_key(private_key_pem)?;
    let der = key.write_public_der_vec().map_err(KeyError::KeyEncoding)?;
    let mut fingerprint = [0u8; 32];
    mbedtls::hash::Md::hash(MdType::Sha256, &der, &mut fingerprint)
        .map_err(KeyError::KeyEncoding)?;
    Ok(fingerprint)
}

/// Validates `common_name` and returns the Mbed TLS subject string for it.
///
/// Mbed TLS 2.28 (`mbedtls_x509_string_to_names`) splits the subject string
/// at ',' and accepts only "\," as an escape sequence. Other characters in a
/// value, '=', '+', '"', '<', '>' and ';' among them, are stored literally,
/// so this escapes ',' and rejects '\', which that parser cannot represent.
fn subject_for_common_name(common_name: &str) -> Result<String, KeyError> {
    let reject = |reason| KeyError::InvalidCommonName {
        common_name: common_name.to_owned(),
        reason,
    };

    if common_name.is_empty() {
        return Err(reject("it is empty"));
    }
    if common_name.len() > MAX_COMMON_NAME_LEN {
        return Err(reject("it is longer than 64 bytes (X.509 ub-common-name)"));
    }
    if common_name.chars().any(char::is_control) {
        return Err(reject("it contains a control character"));
    }
    if common_name.contains('\\') {
        return Err(reject(
            "it contains '\\', which Mbed TLS cannot encode in a subject name",
        ));
    }

    let mut subject = String::with_capacity(3 + 2 * common_name.len());
    subject.push_str("CN=");
    for character in common_name.chars() {
        if character == ',' {
            subject.push('\\');
        }
        subject.push(character);
    }
    Ok(subject)
}

/// Creates a CTR_DRBG seeded from the OS entropy source (`getrandom` or
/// `/dev/urandom`, as Mbed TLS's platform entropy poll chooses).
fn new_rng() -> Result<CtrDrbg, KeyError> {
    let entropy = Arc::new(OsEntropy::new());
    CtrDrbg::new(entropy, Some(DRBG_PERSONALIZATION)).map_err(KeyError::RandomGenerator)
}

/// Parses a PEM or DER private key and checks that it is an EC P-256 key.
fn parse_private_key(private_key_pem: &[u8]) -> Result<Pk, KeyError> {
    // Mbed TLS takes PEM input only with a terminating NUL byte. The copy
    // contains the key, so it is zeroed when dropped.
    let mut key_nul = Zeroizing::new(Vec::with_capacity(private_key_pem.len() + 1));
    key_nul.extend_from_slice(private_key_pem);
    key_nul.push(0);

    let key = Pk::from_private_key(&key_nul, None).map_err(KeyError::InvalidPrivateKey)?;

    let is_p256 = matches!(key.pk_type(), PkType::Eckey | PkType::Ecdsa)
        && matches!(key.curve(), Ok(EcGroupId::SecP256R1));
    if !is_p256 {
        let key_type = match key.curve() {
            Ok(curve) => format!("{:?} on curve {curve:?}", key.pk_type()),
            Err(_) => format!("{:?}", key.pk_type()),
        };
        return Err(KeyError::UnsupportedKey { key_type });
    }
    Ok(key)
}

/// Encodes the private key as SEC1 PEM into a buffer that is zeroed on drop.
fn write_private_key_pem(key: &mut Pk) -> Result<Zeroizing<String>, KeyError> {
    let mut buffer = Zeroizing::new(vec![0_u8; PRIVATE_KEY_PEM_BUFFER_LEN]);

    // `mbedtls_pk_write_key_pem` writes a NUL-terminated string at the start
    // of the buffer and returns 0, so the slice that the Rust wrapper returns
    // (counted from the end of the buffer) is empty and is not used here.
    match key.write_private_pem(&mut buffer) {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Err(KeyError::KeyEncoding(
                mbedtls::error::codes::Base64BufferTooSmall.into(),
            ))
        }
        Err(e) => return Err(KeyError::KeyEncoding(e)),
    }

    let pem_len = buffer
        .iter()
        .position(|&byte| byte == 0)
        .unwrap_or(buffer.len());
    buffer.truncate(pem_len);

    // Moving the bytes into the String keeps the same allocation, which the
    // returned Zeroizing<String> zeroes, including its spare capacity.
    let bytes = std::mem::take(&mut *buffer);
    match String::from_utf8(bytes) {
        Ok(pem) => Ok(Zeroizing::new(pem)),
        Err(e) => {
            e.into_bytes().zeroize();
            Err(KeyError::KeyEncoding(mbedtls::Error::Utf8Error(None)))
        }
    }
}

/// Builds the CSR for `subject` and signs it with `key` using ECDSA-SHA256.
fn write_csr_pem(key: &mut Pk, subject: &str, rng: &mut CtrDrbg) -> Result<String, KeyError> {
    let mut builder = CsrBuilder::new();
    builder
        .subject(subject)
        .map_err(KeyError::CsrGeneration)?
        .key(key)
        .signature_hash(MdType::Sha256);
    builder
        .write_pem_string(rng)
        .map_err(KeyError::CsrGeneration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mbedtls::x509::csr::Csr;
    use std::path::Path;
    use std::process::{Command, Output};

    /// Runs `openssl` with `args` in `dir` and returns its output, failing
    /// the test when it cannot be started.
    fn openssl(dir: &Path, args: &[&str]) -> Output {
        Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the openssl command-line tool must be installed to run this test")
    }

    fn assert_success(output: &Output, step: &str) {
        assert!(
            output.status.success(),
            "{step} failed: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn with_nul(pem: &str) -> Vec<u8> {
        let mut bytes = pem.as_bytes().to_vec();
        bytes.push(0);
        bytes
    }

    /// Creates a throwaway CA in `dir` and returns the PEM of a certificate
    /// that it issues for the CSR in `csr_pem`.
    fn issue_certificate(dir: &Path, csr_pem: &str) -> String {
        let ca = openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-subj",
                "/CN=Test CA",
                "-days",
                "1",
            ],
        );
        assert_success(&ca, "creating the test CA");

        std::fs::write(dir.join("device.csr"), csr_pem).unwrap();
        let signed = openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "device.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "device.pem",
                "-days",
                "1",
                "-sha256",
            ],
        );
        assert_success(&signed, "signing the CSR with the test CA");
        std::fs::read_to_string(dir.join("device.pem")).unwrap()
    }

    #[test]
    fn generated_pem_headers() {
        let generated = generate_key_and_csr("aws-greengrass-nucleus-lite").unwrap();

        assert!(generated
            .private_key_pem
            .starts_with("-----BEGIN EC PRIVATE KEY-----\n"));
        assert!(generated
            .private_key_pem
            .trim_end()
            .ends_with("-----END EC PRIVATE KEY-----"));
        assert!(generated
            .csr_pem
            .starts_with("-----BEGIN CERTIFICATE REQUEST-----\n"));
        assert!(generated
            .csr_pem
            .trim_end()
            .ends_with("-----END CERTIFICATE REQUEST-----"));
    }

    #[test]
    fn generated_pair_parses_with_mbedtls() {
        let generated = generate_key_and_csr("device-1").unwrap();

        let key = Pk::from_private_key(&with_nul(&generated.private_key_pem), None).unwrap();
        assert_eq!(key.curve().unwrap(), EcGroupId::SecP256R1);

        let csr = Csr::from_pem(&with_nul(&generated.csr_pem)).unwrap();
        assert_eq!(csr.subject().unwrap(), "CN=device-1");
        assert!(Pk::check_pair(csr.public_key(), &key));
    }

    #[test]
    fn generated_keys_differ() {
        let first = generate_key_and_csr("device-1").unwrap();
        let second = generate_key_and_csr("device-1").unwrap();

        assert_ne!(*first.private_key_pem, *second.private_key_pem);
        assert_ne!(first.csr_pem, second.csr_pem);
    }

    #[test]
    fn openssl_verifies_csr() {
        let dir = tempfile::tempdir().unwrap();
        let generated = generate_key_and_csr("aws-greengrass-nucleus-lite").unwrap();
        std::fs::write(dir.path().join("req.pem"), &generated.csr_pem).unwrap();

        let output = openssl(
            dir.path(),
            &["req", "-in", "req.pem", "-verify", "-noout", "-text"],
        );
        assert_success(&output, "openssl req -verify");

        let text = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("verify OK") || text.contains("verify OK"),
            "openssl did not report verify OK: {stderr}"
        );
        assert!(
            text.contains("Subject: CN = aws-greengrass-nucleus-lite"),
            "{text}"
        );
        assert!(text.contains("ecdsa-with-SHA256"), "{text}");
        assert!(text.contains("prime256v1"), "{text}");
    }

    #[test]
    fn openssl_checks_private_key() {
        let dir = tempfile::tempdir().unwrap();
        let generated = generate_key_and_csr("device-1").unwrap();
        std::fs::write(dir.path().join("key.pem"), &*generated.private_key_pem).unwrap();

        let output = openssl(
            dir.path(),
            &["ec", "-in", "key.pem", "-check", "-noout", "-text"],
        );
        assert_success(&output, "openssl ec -check");

        let text = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("EC Key valid."), "{stderr}");
        assert!(text.contains("prime256v1"), "{text}");
    }

    #[test]
    fn csr_for_existing_key_round_trip() {
        let generated = generate_key_and_csr("device-1").unwrap();

        let csr_pem =
            generate_csr_for_key(generated.private_key_pem.as_bytes(), "device-2").unwrap();

        let csr = Csr::from_pem(&with_nul(&csr_pem)).unwrap();
        assert_eq!(csr.subject().unwrap(), "CN=device-2");
        let key = Pk::from_private_key(&with_nul(&generated.private_key_pem), None).unwrap();
        assert!(Pk::check_pair(csr.public_key(), &key));
    }

    #[test]
    fn csr_for_existing_key_openssl_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let generated = generate_key_and_csr("device-1").unwrap();
        let csr_pem =
            generate_csr_for_key(generated.private_key_pem.as_bytes(), "device-1").unwrap();
        std::fs::write(dir.path().join("req.pem"), &csr_pem).unwrap();
        std::fs::write(dir.path().join("key.pem"), &*generated.private_key_pem).unwrap();

        let verify = openssl(dir.path(), &["req", "-in", "req.pem", "-verify", "-noout"]);
        assert_success(&verify, "openssl req -verify");

        let csr_key = openssl(dir.path(), &["req", "-in", "req.pem", "-noout", "-pubkey"]);
        assert_success(&csr_key, "openssl req -pubkey");
        let key_public = openssl(dir.path(), &["ec", "-in", "key.pem", "-pubout"]);
        assert_success(&key_public, "openssl ec -pubout");
        assert_eq!(csr_key.stdout, key_public.stdout);
    }

    #[test]
    fn csr_for_key_accepts_openssl_key() {
        let dir = tempfile::tempdir().unwrap();
        let output = openssl(
            dir.path(),
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                "pkcs8.pem",
            ],
        );
        assert_success(&output, "openssl genpkey");
        let key_pem = std::fs::read(dir.path().join("pkcs8.pem")).unwrap();
        assert!(key_pem.starts_with(b"-----BEGIN PRIVATE KEY-----"));

        let csr_pem = generate_csr_for_key(&key_pem, "device-1").unwrap();

        let csr = Csr::from_pem(&with_nul(&csr_pem)).unwrap();
        assert_eq!(csr.subject().unwrap(), "CN=device-1");
    }

    #[test]
    fn csr_for_key_rejects_garbage() {
        let error = generate_csr_for_key(b"not a key", "device-1").unwrap_err();
        assert!(matches!(error, KeyError::InvalidPrivateKey(_)), "{error:?}");
        assert!(error.to_string().contains("invalid private key PEM"));
    }

    #[test]
    fn csr_for_key_rejects_p384() {
        let dir = tempfile::tempdir().unwrap();
        let output = openssl(
            dir.path(),
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
                "-out",
                "p384.pem",
            ],
        );
        assert_success(&output, "openssl genpkey");
        let key_pem = std::fs::read(dir.path().join("p384.pem")).unwrap();

        let error = generate_csr_for_key(&key_pem, "device-1").unwrap_err();

        assert!(
            matches!(error, KeyError::UnsupportedKey { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("expected an EC P-256 key"));
    }

    #[test]
    fn public_key_matches_issued_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let generated = generate_key_and_csr("device-1").unwrap();
        let certificate_pem = issue_certificate(dir.path(), &generated.csr_pem);

        let matches = public_key_matches(
            generated.private_key_pem.as_bytes(),
            certificate_pem.as_bytes(),
        )
        .unwrap();

        assert!(matches);
    }

    #[test]
    fn public_key_matches_rejects_other_key() {
        let dir = tempfile::tempdir().unwrap();
        let generated = generate_key_and_csr("device-1").unwrap();
        let other = generate_key_and_csr("device-1").unwrap();
        let certificate_pem = issue_certificate(dir.path(), &generated.csr_pem);

        let matches =
            public_key_matches(other.private_key_pem.as_bytes(), certificate_pem.as_bytes())
                .unwrap();

        assert!(!matches);
    }

    #[test]
    fn public_key_matches_uses_first_of_chain() {
        let dir = tempfile::tempdir().unwrap();
        let generated = generate_key_and_csr("device-1").unwrap();
        let certificate_pem = issue_certificate(dir.path(), &generated.csr_pem);
        let ca_pem = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
        let chain = format!("{certificate_pem}{ca_pem}");

        let matches =
            public_key_matches(generated.private_key_pem.as_bytes(), chain.as_bytes()).unwrap();

        assert!(matches);
    }

    #[test]
    fn public_key_matches_rejects_bad_certificate() {
        let generated = generate_key_and_csr("device-1").unwrap();

        let error = public_key_matches(
            generated.private_key_pem.as_bytes(),
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap_err();

        assert!(
            matches!(error, KeyError::InvalidCertificate(_)),
            "{error:?}"
        );
    }

    /// Characters that are special in RFC 4514 subject strings, all in one
    /// common name.
    const SPECIAL_COMMON_NAME: &str = "a,b=c+d\"e<f>g;h #i";

    #[test]
    fn common_name_special_characters_mbedtls() {
        let generated = generate_key_and_csr(SPECIAL_COMMON_NAME).unwrap();

        // `mbedtls_x509_dn_gets` escapes the RFC 4514 special characters
        // with '\', so one CN attribute holding them all reads like this.
        let csr = Csr::from_pem(&with_nul(&generated.csr_pem)).unwrap();
        assert_eq!(
            csr.subject().unwrap(),
            "CN=a\\,b\\=c\\+d\\\"e\\<f\\>g\\;h \\#i"
        );
    }

    #[test]
    fn common_name_special_characters_openssl() {
        let dir = tempfile::tempdir().unwrap();
        let generated = generate_key_and_csr(SPECIAL_COMMON_NAME).unwrap();
        std::fs::write(dir.path().join("req.pem"), &generated.csr_pem).unwrap();

        // Without escaping options, openssl prints each attribute value as
        // stored, so the whole name must come back as one CN value.
        let output = openssl(
            dir.path(),
            &[
                "req",
                "-in",
                "req.pem",
                "-noout",
                "-subject",
                "-nameopt",
                "sep_multiline,sname",
            ],
        );
        assert_success(&output, "openssl req -subject");
        let subject = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            subject.trim_end(),
            format!("subject=\n    CN={SPECIAL_COMMON_NAME}")
        );
    }

    #[test]
    fn common_name_utf8_openssl() {
        let dir = tempfile::tempdir().unwrap();
        let generated = generate_key_and_csr("gerät-ü").unwrap();
        std::fs::write(dir.path().join("req.pem"), &generated.csr_pem).unwrap();

        let output = openssl(
            dir.path(),
            &[
                "req",
                "-in",
                "req.pem",
                "-noout",
                "-subject",
                "-nameopt",
                "RFC2253,-esc_msb",
            ],
        );
        assert_success(&output, "openssl req -subject");
        let subject = String::from_utf8_lossy(&output.stdout);
        assert_eq!(subject.trim_end(), "subject=CN=gerät-ü");
    }

    #[test]
    fn common_name_max_length_accepted() {
        let common_name = "n".repeat(MAX_COMMON_NAME_LEN);

        let generated = generate_key_and_csr(&common_name).unwrap();

        let csr = Csr::from_pem(&with_nul(&generated.csr_pem)).unwrap();
        assert_eq!(csr.subject().unwrap(), format!("CN={common_name}"));
    }

    #[test]
    fn common_name_invalid_rejected() {
        let too_long = "n".repeat(MAX_COMMON_NAME_LEN + 1);
        let cases: [(&str, &str); 6] = [
            ("", "empty"),
            (&too_long, "longer than 64 bytes"),
            ("a\\b", "'\\'"),
            ("a\nb", "control character"),
            ("a\0b", "control character"),
            ("a\u{7f}b", "control character"),
        ];

        for (common_name, expected_reason) in cases {
            let error = generate_key_and_csr(common_name).unwrap_err();
            let message = error.to_string();
            assert!(
                matches!(error, KeyError::InvalidCommonName { .. }),
                "{common_name:?}: {error:?}"
            );
            assert!(
                message.contains(expected_reason),
                "{common_name:?}: {message}"
            );
            assert!(message.contains("csrCommonName"), "{message}");
        }
    }

    #[test]
    fn csr_for_key_validates_common_name() {
        let generated = generate_key_and_csr("device-1").unwrap();

        let error = generate_csr_for_key(generated.private_key_pem.as_bytes(), "").unwrap_err();

        assert!(
            matches!(error, KeyError::InvalidCommonName { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn debug_output_hides_private_key() {
        let generated = generate_key_and_csr("device-1").unwrap();

        let debug = format!("{generated:?}");

        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
        assert!(debug.contains("<redacted>"));
    }
}
