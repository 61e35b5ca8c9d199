//! Throwaway public key infrastructure for loopback tests.
//!
//! Every key is EC P-256 and stored as PKCS#8 PEM, a format that OpenSSL
//! (and so mosquitto) and rustls both read.

use std::fmt;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};

/// The only host name in [`TestPki::other_host_cert`].
pub const OTHER_HOST_NAME: &str = "not-the-endpoint.example";

/// Failure to create or store the test PKI.
#[derive(Debug)]
pub enum PkiError {
    /// rcgen failed to generate a key or to sign a certificate.
    Generate {
        /// Name of the item being generated.
        item: &'static str,
        /// Error from rcgen.
        source: rcgen::Error,
    },
    /// A PEM file could not be written.
    Write {
        /// Path of the file.
        path: PathBuf,
        /// Error from the file system.
        source: io::Error,
    },
}

impl fmt::Display for PkiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Generate { item, source } => {
                write!(f, "failed to generate the test {item}: {source}")
            }
            Self::Write { path, source } => write!(
                f,
                "failed to write {}: {source}; check that the directory exists and is writable",
                path.display()
            ),
        }
    }
}

impl std::error::Error for PkiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Generate { source, .. } => Some(source),
            Self::Write { source, .. } => Some(source),
        }
    }
}

/// Paths of the PEM files of a generated test PKI, plus the CA material the
/// IoT Core emulator signs with.
pub struct TestPki {
    /// Test CA certificate: the broker trusts clients signed by it, and
    /// clients verify the broker against it.
    pub ca_cert: PathBuf,
    /// Test CA private key (PKCS#8).
    pub ca_key: PathBuf,
    /// Broker certificate with SAN DNS `localhost` and IP `127.0.0.1`.
    pub server_cert: PathBuf,
    /// Broker private key (PKCS#8).
    pub server_key: PathBuf,
    /// Claim certificate signed by the test CA.
    pub claim_cert: PathBuf,
    /// Claim private key (PKCS#8).
    pub claim_key: PathBuf,
    /// Claim certificate signed by a second CA that the broker does not trust.
    pub untrusted_claim_cert: PathBuf,
    /// Private key of the untrusted claim certificate (PKCS#8).
    pub untrusted_claim_key: PathBuf,
    /// The second CA, which signed nothing the broker presents: a root CA
    /// that a client must not accept the broker with.
    pub untrusted_ca_cert: PathBuf,
    /// Server certificate signed by the test CA for the host name
    /// [`OTHER_HOST_NAME`] only, to test host name verification.
    pub other_host_cert: PathBuf,
    /// Private key of [`TestPki::other_host_cert`] (PKCS#8).
    pub other_host_key: PathBuf,
    ca_cert_pem: String,
    ca_key_pem: String,
}

impl TestPki {
    /// Generates a test CA, a broker certificate, a trusted claim
    /// certificate, an untrusted claim certificate with its CA, and a server
    /// certificate for another host name, and writes them as PEM files into
    /// `dir`.
    pub fn generate(dir: &Path) -> Result<TestPki, PkiError> {
        let ca_key = new_key("CA key")?;
        let ca = CertifiedIssuer::self_signed(ca_params("Fleet provisioning test CA"), ca_key)
            .map_err(|source| PkiError::Generate { item: "CA", source })?;

        let server_key = new_key("broker key")?;
        let mut server_params = leaf_params("localhost", ExtendedKeyUsagePurpose::ServerAuth);
        server_params.subject_alt_names = vec![
            SanType::DnsName(
                "localhost"
                    .try_into()
                    .map_err(|source| PkiError::Generate {
                        item: "broker SAN",
                        source,
                    })?,
            ),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ];
        let server_cert = server_params
            .signed_by(&server_key, &ca)
            .map_err(|source| PkiError::Generate {
                item: "broker certificate",
                source,
            })?;

        let claim_key = new_key("claim key")?;
        let claim_cert = leaf_params("claim", ExtendedKeyUsagePurpose::ClientAuth)
            .signed_by(&claim_key, &ca)
            .map_err(|source| PkiError::Generate {
                item: "claim certificate",
                source,
            })?;

        let other_ca_key = new_key("untrusted CA key")?;
        let other_ca = CertifiedIssuer::self_signed(ca_params("Untrusted test CA"), other_ca_key)
            .map_err(|source| PkiError::Generate {
            item: "untrusted CA",
            source,
        })?;
        let untrusted_key = new_key("untrusted claim key")?;
        let untrusted_cert = leaf_params("untrusted-claim", ExtendedKeyUsagePurpose::ClientAuth)
            .signed_by(&untrusted_key, &other_ca)
            .map_err(|source| PkiError::Generate {
                item: "untrusted claim certificate",
                source,
            })?;

        let other_host_key = new_key("other host key")?;
        let mut other_host_params =
            leaf_params(OTHER_HOST_NAME, ExtendedKeyUsagePurpose::ServerAuth);
        other_host_params.subject_alt_names =
            vec![SanType::DnsName(OTHER_HOST_NAME.try_into().map_err(
                |source| PkiError::Generate {
                    item: "other host SAN",
                    source,
                },
            )?)];
        let other_host_cert =
            other_host_params
                .signed_by(&other_host_key, &ca)
                .map_err(|source| PkiError::Generate {
                    item: "other host certificate",
                    source,
                })?;

        let pki = TestPki {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            claim_cert: dir.join("claim.pem"),
            claim_key: dir.join("claim.key"),
            untrusted_claim_cert: dir.join("untrusted-claim.pem"),
            untrusted_claim_key: dir.join("untrusted-claim.key"),
            untrusted_ca_cert: dir.join("untrusted-ca.pem"),
            other_host_cert: dir.join("other-host.pem"),
            other_host_key: dir.join("other-host.key"),
            ca_cert_pem: ca.pem(),
            ca_key_pem: ca.key().serialize_pem(),
        };
        write_pem(&pki.ca_cert, &pki.ca_cert_pem)?;
        write_pem(&pki.ca_key, &pki.ca_key_pem)?;
        write_pem(&pki.server_cert, &server_cert.pem())?;
        write_pem(&pki.server_key, &server_key.serialize_pem())?;
        write_pem(&pki.claim_cert, &claim_cert.pem())?;
        write_pem(&pki.claim_key, &claim_key.serialize_pem())?;
        write_pem(&pki.untrusted_claim_cert, &untrusted_cert.pem())?;
        write_pem(&pki.untrusted_claim_key, &untrusted_key.serialize_pem())?;
        write_pem(&pki.untrusted_ca_cert, &other_ca.pem())?;
        write_pem(&pki.other_host_cert, &other_host_cert.pem())?;
        write_pem(&pki.other_host_key, &other_host_key.serialize_pem())?;
        Ok(pki)
    }

    /// Returns the test CA certificate as PEM.
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// Returns the test CA private key as PKCS#8 PEM.
    pub fn ca_key_pem(&self) -> &str {
        &self.ca_key_pem
    }
}

fn new_key(item: &'static str) -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|source| PkiError::Generate { item, source })
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name_dn(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn leaf_params(common_name: &str, usage: ExtendedKeyUsagePurpose) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name_dn(common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params
}

fn common_name_dn(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

fn write_pem(path: &Path, pem: &str) -> Result<(), PkiError> {
    fs::write(path, pem).map_err(|source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    })
}
