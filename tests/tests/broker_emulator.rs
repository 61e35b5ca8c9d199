//! Loopback tests of the test bed itself: mosquitto with mutual TLS and the
//! IoT Core emulator plugin, driven by a plain MQTT 5 client that publishes
//! fleet provisioning requests without subscribing to the reply topics.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_provisioning_testbed::broker::Broker;
use fleet_provisioning_testbed::emulator::{
    Api, Emulator, Fault, CREATE_CERTIFICATE_TOPIC, IOTCORED_MAX_PACKET_SIZE, TEMPLATE_NAME,
};
use fleet_provisioning_testbed::pki::TestPki;
use rcgen::{CertificateParams, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use tokio::sync::mpsc;

const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
const NO_REPLY_WAIT: Duration = Duration::from_millis(1_500);
const CSR_ACCEPTED: &str = "$aws/certificates/create-from-csr/json/accepted";
const CSR_REJECTED: &str = "$aws/certificates/create-from-csr/json/rejected";

/// PKI, emulator and broker of one test. Fields drop in declaration order,
/// so the broker stops before the emulator and the directory goes last.
struct TestBed {
    broker: Broker,
    emulator: Emulator,
    pki: TestPki,
    dir: tempfile::TempDir,
}

impl TestBed {
    fn start() -> TestBed {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::generate(dir.path()).unwrap();
        let emulator = Emulator::start(&pki, dir.path()).unwrap();
        let broker = Broker::start(&pki, &emulator, dir.path()).unwrap();
        TestBed {
            broker,
            emulator,
            pki,
            dir,
        }
    }

    async fn connect_claim(&self, client_id: &str) -> TestClient {
        self.connect(client_id, &self.pki.claim_cert, &self.pki.claim_key, None)
            .await
            .unwrap()
    }

    async fn connect(
        &self,
        client_id: &str,
        cert: &Path,
        key: &Path,
        max_packet_size: Option<u32>,
    ) -> Result<TestClient, ConnectionError> {
        let tls = tls_config(&self.pki.ca_cert, cert, key);
        connect(self.broker.port(), client_id, tls, max_packet_size).await
    }
}

async fn connect(
    port: u16,
    client_id: &str,
    tls: rustls::ClientConfig,
    max_packet_size: Option<u32>,
) -> Result<TestClient, ConnectionError> {
    let mut options = MqttOptions::new(client_id, "localhost", port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(max_packet_size);
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(tls),
    )));
    let (client, mut event_loop) = AsyncClient::new(options, 16);
    wait_for_connack(&mut event_loop).await?;

    let (sender, publishes) = mpsc::unbounded_channel();
    let poller = tokio::spawn(async move {
        while let Ok(event) = event_loop.poll().await {
            if let Event::Incoming(Packet::Publish(publish)) = event {
                if sender.send(publish).is_err() {
                    return;
                }
            }
        }
    });
    Ok(TestClient {
        client,
        publishes,
        poller,
    })
}

/// Connected MQTT 5 client whose incoming PUBLISH packets go to a channel.
struct TestClient {
    client: AsyncClient,
    publishes: mpsc::UnboundedReceiver<Publish>,
    poller: tokio::task::JoinHandle<()>,
}

impl TestClient {
    async fn publish(&self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    async fn publish_json(&self, topic: &str, body: &Value) {
        self.publish(topic, body.to_string().into_bytes()).await;
    }

    async fn next_publish(&mut self, timeout: Duration) -> Option<Publish> {
        tokio::time::timeout(timeout, self.publishes.recv())
            .await
            .ok()
            .flatten()
    }

    /// Returns the next reply as (topic, JSON body), failing the test if
    /// none arrives in time or the body is not JSON.
    async fn next_reply(&mut self) -> (String, Value) {
        let publish = self
            .next_publish(REPLY_TIMEOUT)
            .await
            .expect("no reply arrived in time");
        let topic = String::from_utf8(publish.topic.to_vec()).unwrap();
        let body = serde_json::from_slice(&publish.payload).unwrap();
        (topic, body)
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

fn tls_config(ca: &Path, cert: &Path, key: &Path) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for ca_cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(ca_cert.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap()
}

async fn wait_for_connack(event_loop: &mut EventLoop) -> Result<(), ConnectionError> {
    loop {
        match tokio::time::timeout(REPLY_TIMEOUT, event_loop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(error),
            Err(elapsed) => return Err(ConnectionError::Timeout(elapsed)),
        }
    }
}

/// Returns a new device key and a PEM CSR for it.
fn new_csr() -> (KeyPair, String) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "fleet-provisioning test device");
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    (key, csr)
}

fn provision_topic(template: &str) -> String {
    format!("$aws/provisioning-templates/{template}/provision/json")
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn openssl(args: &[&str]) -> std::process::Output {
    Command::new("openssl").args(args).output().unwrap()
}

/// Requests a certificate and returns the accepted body.
async fn create_certificate(client: &mut TestClient) -> Value {
    let (_, csr) = new_csr();
    client
        .publish_json(
            CREATE_CERTIFICATE_TOPIC,
            &json!({ "certificateSigningRequest": csr }),
        )
        .await;
    let (topic, body) = client.next_reply().await;
    assert_eq!(topic, CSR_ACCEPTED);
    body
}

#[tokio::test]
async fn csr_reply_reaches_unsubscribed_client() {
    let bed = TestBed::start();
    let mut client = bed.connect_claim("device-1").await;
    let (device_key, csr) = new_csr();

    client
        .publish_json(
            CREATE_CERTIFICATE_TOPIC,
            &json!({ "certificateSigningRequest": csr }),
        )
        .await;
    let (topic, body) = client.next_reply().await;

    assert_eq!(topic, CSR_ACCEPTED);
    let certificate_pem = body["certificatePem"].as_str().unwrap();
    let certificate_id = body["certificateId"].as_str().unwrap();
    let token = body["certificateOwnershipToken"].as_str().unwrap();
    assert!(token.len() >= 200, "token is only {} chars", token.len());

    let certificate_der = CertificateDer::from_pem_slice(certificate_pem.as_bytes()).unwrap();
    assert_eq!(certificate_id, sha256_hex(&certificate_der));

    let certificate_path = bed.dir.path().join("device.pem");
    std::fs::write(&certificate_path, certificate_pem).unwrap();
    let ca = bed.pki.ca_cert.to_str().unwrap();
    let certificate = certificate_path.to_str().unwrap();
    let verify = openssl(&["verify", "-CAfile", ca, certificate]);
    assert!(
        verify.status.success(),
        "openssl verify failed: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let public_key = openssl(&["x509", "-in", certificate, "-noout", "-pubkey"]);
    assert_eq!(
        String::from_utf8_lossy(&public_key.stdout).trim(),
        device_key.public_key_pem().trim()
    );

    let issued = bed.emulator.issued_certificates();
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0].id, certificate_id);
    assert_eq!(issued[0].client_id, "device-1");
    assert_eq!(bed.emulator.clients_seen(), vec!["device-1".to_owned()]);
}

#[tokio::test]
async fn register_thing_with_issued_token() {
    let bed = TestBed::start();
    let mut client = bed.connect_claim("device-2").await;
    let accepted = create_certificate(&mut client).await;
    let token = accepted["certificateOwnershipToken"].as_str().unwrap();
    let request = json!({
        "certificateOwnershipToken": token,
        "parameters": { "SerialNumber": "0042" },
    });

    client
        .publish_json(&provision_topic(TEMPLATE_NAME), &request)
        .await;
    let (topic, body) = client.next_reply().await;

    assert_eq!(
        topic,
        format!("{}/accepted", provision_topic(TEMPLATE_NAME))
    );
    assert_eq!(body["thingName"], "ggl-0042");
    assert_eq!(body["deviceConfiguration"], json!({}));
    let certificate_id = accepted["certificateId"].as_str().unwrap().to_owned();
    assert_eq!(
        bed.emulator.registered_things(),
        vec![("ggl-0042".to_owned(), certificate_id)]
    );

    // A token works once.
    client
        .publish_json(&provision_topic(TEMPLATE_NAME), &request)
        .await;
    let (topic, body) = client.next_reply().await;
    assert_eq!(
        topic,
        format!("{}/rejected", provision_topic(TEMPLATE_NAME))
    );
    assert_eq!(body["statusCode"], 400);
    assert_eq!(body["errorCode"], "InvalidCertificateOwnershipToken");
    assert_eq!(bed.emulator.registered_things().len(), 1);
}

#[tokio::test]
async fn register_thing_rejects_bad_requests() {
    let bed = TestBed::start();
    let mut client = bed.connect_claim("device-3").await;
    let accepted = create_certificate(&mut client).await;
    let token = accepted["certificateOwnershipToken"].as_str().unwrap();
    let cases = [
        (
            "unknown template",
            provision_topic("NoSuchTemplate"),
            json!({ "certificateOwnershipToken": token, "parameters": { "SerialNumber": "1" } }),
            404,
            "ResourceNotFound",
        ),
        (
            "unknown token",
            provision_topic(TEMPLATE_NAME),
            json!({ "certificateOwnershipToken": "forged", "parameters": { "SerialNumber": "1" } }),
            400,
            "InvalidCertificateOwnershipToken",
        ),
        (
            "missing serial number",
            provision_topic(TEMPLATE_NAME),
            json!({ "certificateOwnershipToken": token, "parameters": {} }),
            400,
            "InvalidParameters",
        ),
        (
            "non-string parameter",
            provision_topic(TEMPLATE_NAME),
            json!({ "certificateOwnershipToken": token, "parameters": { "SerialNumber": 7 } }),
            400,
            "InvalidParameters",
        ),
    ];

    for (case, topic, request, status, code) in cases {
        client.publish_json(&topic, &request).await;
        let (reply_topic, body) = client.next_reply().await;
        assert_eq!(reply_topic, format!("{topic}/rejected"), "{case}");
        assert_eq!(body["statusCode"], status, "{case}");
        assert_eq!(body["errorCode"], code, "{case}");
    }
    assert!(bed.emulator.registered_things().is_empty());
}

#[tokio::test]
async fn invalid_csr_is_rejected() {
    let bed = TestBed::start();
    let mut client = bed.connect_claim("device-4").await;
    let (_, csr) = new_csr();
    // Changing a byte of the signed subject keeps the CSR parseable but
    // invalidates its signature.
    let mut der = pem::parse(&csr).unwrap();
    let subject = b"test device";
    let contents = der.contents().to_vec();
    let at = contents
        .windows(subject.len())
        .position(|window| window == subject)
        .unwrap();
    let mut tampered_contents = contents;
    tampered_contents[at] = b'T';
    der = pem::Pem::new(der.tag(), tampered_contents);
    let tampered = pem::encode(&der);

    for payload in [
        json!({ "certificateSigningRequest": "not a CSR" }),
        json!({ "certificateSigningRequest": tampered }),
    ] {
        client
            .publish_json(CREATE_CERTIFICATE_TOPIC, &payload)
            .await;
        let (topic, body) = client.next_reply().await;
        assert_eq!(topic, CSR_REJECTED);
        assert_eq!(body["statusCode"], 400);
        assert_eq!(body["errorCode"], "InvalidCSR");
    }
    assert!(bed.emulator.issued_certificates().is_empty());
}

#[tokio::test]
async fn reply_goes_only_to_requester() {
    let bed = TestBed::start();
    let mut requester = bed.connect_claim("requester").await;
    let mut bystander = bed.connect_claim("bystander").await;
    bystander
        .client
        .subscribe(CSR_ACCEPTED, QoS::AtLeastOnce)
        .await
        .unwrap();
    // Gives the SUBSCRIBE time to reach the broker before the request.
    tokio::time::sleep(Duration::from_millis(200)).await;

    create_certificate(&mut requester).await;

    assert!(bystander.next_publish(NO_REPLY_WAIT).await.is_none());
}

#[tokio::test]
async fn untrusted_claim_is_rejected() {
    let bed = TestBed::start();

    let result = bed
        .connect(
            "untrusted",
            &bed.pki.untrusted_claim_cert,
            &bed.pki.untrusted_claim_key,
            None,
        )
        .await;

    assert!(result.is_err(), "broker accepted an untrusted claim");
    assert_eq!(bed.emulator.requests_seen(), 0);
}

#[tokio::test]
async fn other_aws_topics_get_no_reply() {
    let bed = TestBed::start();
    let mut client = bed.connect_claim("device-5").await;

    client
        .publish_json("$aws/things/x/shadow/get", &json!({}))
        .await;

    assert!(client.next_publish(NO_REPLY_WAIT).await.is_none());
    assert_eq!(bed.emulator.requests_seen(), 1);
}

#[tokio::test]
async fn fault_reject_and_throttle() {
    let bed = TestBed::start();
    let mut client = bed.connect_claim("device-6").await;
    let (_, csr) = new_csr();
    let request = json!({ "certificateSigningRequest": csr });

    bed.emulator.set_fault(
        Api::CreateCertificateFromCsr,
        Fault::Reject {
            status: 403,
            code: "AccessDenied".into(),
            message: "not allowed".into(),
        },
    );
    client
        .publish_json(CREATE_CERTIFICATE_TOPIC, &request)
        .await;
    let (topic, body) = client.next_reply().await;
    assert_eq!(topic, CSR_REJECTED);
    assert_eq!(body["statusCode"], 403);
    assert_eq!(body["errorCode"], "AccessDenied");
    assert_eq!(body["errorMessage"], "not allowed");

    bed.emulator
        .set_fault(Api::CreateCertificateFromCsr, Fault::Throttle { times: 2 });
    for _ in 0..2 {
        client
            .publish_json(CREATE_CERTIFICATE_TOPIC, &request)
            .await;
        let (topic, body) = client.next_reply().await;
        assert_eq!(topic, CSR_REJECTED);
        assert_eq!(body["statusCode"], 429);
        assert_eq!(body["errorCode"], "Throttling");
    }
    client
        .publish_json(CREATE_CERTIFICATE_TOPIC, &request)
        .await;
    let (topic, _) = client.next_reply().await;
    assert_eq!(topic, CSR_ACCEPTED);
    assert_eq!(bed.emulator.issued_certificates().len(), 1);
}

#[tokio::test]
async fn fault_delay_drop_and_garble() {
    let bed = TestBed::start();
    let mut client = bed.connect_claim("device-7").await;
    let (_, csr) = new_csr();
    let request = json!({ "certificateSigningRequest": csr });

    bed.emulator
        .set_fault(Api::CreateCertificateFromCsr, Fault::Delay { ms: 800 });
    let started = Instant::now();
    client
        .publish_json(CREATE_CERTIFICATE_TOPIC, &request)
        .await;
    let (topic, _) = client.next_reply().await;
    assert_eq!(topic, CSR_ACCEPTED);
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "delayed reply came after {:?}",
        started.elapsed()
    );

    bed.emulator
        .set_fault(Api::CreateCertificateFromCsr, Fault::Drop);
    client
        .publish_json(CREATE_CERTIFICATE_TOPIC, &request)
        .await;
    assert!(client.next_publish(NO_REPLY_WAIT).await.is_none());

    bed.emulator
        .set_fault(Api::CreateCertificateFromCsr, Fault::Garble);
    client
        .publish_json(CREATE_CERTIFICATE_TOPIC, &request)
        .await;
    let garbled = client.next_publish(REPLY_TIMEOUT).await.unwrap();
    assert_eq!(&garbled.topic[..], CSR_ACCEPTED.as_bytes());
    assert!(serde_json::from_slice::<Value>(&garbled.payload).is_err());

    bed.emulator.clear_fault(Api::CreateCertificateFromCsr);
    client
        .publish_json(CREATE_CERTIFICATE_TOPIC, &request)
        .await;
    let (topic, _) = client.next_reply().await;
    assert_eq!(topic, CSR_ACCEPTED);
}

#[tokio::test]
async fn fault_oversized_exceeds_max_packet_size() {
    let bed = TestBed::start();
    let max_packet_size = u32::try_from(IOTCORED_MAX_PACKET_SIZE).unwrap();
    let mut limited = bed
        .connect(
            "limited",
            &bed.pki.claim_cert,
            &bed.pki.claim_key,
            Some(max_packet_size),
        )
        .await
        .unwrap();
    let mut unlimited = bed.connect_claim("unlimited").await;
    let (_, csr) = new_csr();
    let request = json!({ "certificateSigningRequest": csr });
    bed.emulator
        .set_fault(Api::CreateCertificateFromCsr, Fault::Oversized);

    limited
        .publish_json(CREATE_CERTIFICATE_TOPIC, &request)
        .await;
    assert!(limited.next_publish(NO_REPLY_WAIT).await.is_none());

    unlimited
        .publish_json(CREATE_CERTIFICATE_TOPIC, &request)
        .await;
    let reply = unlimited.next_publish(REPLY_TIMEOUT).await.unwrap();
    assert!(reply.payload.len() > IOTCORED_MAX_PACKET_SIZE);
    assert_eq!(&reply.topic[..], CSR_ACCEPTED.as_bytes());
}

#[tokio::test]
async fn fault_wrong_token_fails_registration() {
    let bed = TestBed::start();
    let mut client = bed.connect_claim("device-8").await;
    bed.emulator
        .set_fault(Api::CreateCertificateFromCsr, Fault::WrongToken);

    let accepted = create_certificate(&mut client).await;
    let request = json!({
        "certificateOwnershipToken": accepted["certificateOwnershipToken"],
        "parameters": { "SerialNumber": "9" },
    });
    client
        .publish_json(&provision_topic(TEMPLATE_NAME), &request)
        .await;
    let (topic, body) = client.next_reply().await;

    assert_eq!(
        topic,
        format!("{}/rejected", provision_topic(TEMPLATE_NAME))
    );
    assert_eq!(body["errorCode"], "InvalidCertificateOwnershipToken");
    assert!(bed.emulator.registered_things().is_empty());
}

#[tokio::test]
async fn broker_survives_stopped_emulator() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path()).unwrap();
    let emulator = Emulator::start(&pki, dir.path()).unwrap();
    let broker = Broker::start(&pki, &emulator, dir.path()).unwrap();
    emulator.stop();
    let claim_tls = || tls_config(&pki.ca_cert, &pki.claim_cert, &pki.claim_key);
    let mut client = connect(broker.port(), "device-9", claim_tls(), None)
        .await
        .unwrap();
    let (_, csr) = new_csr();

    client
        .publish_json(
            CREATE_CERTIFICATE_TOPIC,
            &json!({ "certificateSigningRequest": csr }),
        )
        .await;

    assert!(client.next_publish(NO_REPLY_WAIT).await.is_none());
    let log = std::fs::read_to_string(broker.log_path()).unwrap();
    assert!(
        log.contains("fp_emulator: connect to"),
        "broker log:\n{log}"
    );
    // The broker still accepts connections after dropping the request.
    let second = connect(broker.port(), "device-10", claim_tls(), None).await;
    assert!(
        second.is_ok(),
        "second connection failed: {:?}",
        second.err()
    );
    broker.stop();
}
