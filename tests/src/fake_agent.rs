//! A test-side agent speaking the controller's gRPC API by hand: enrollment through the
//! real Enrollment RPC and a Session stream whose every message the test sees. Errors are
//! returned, not unwrapped, so a test can kill the controller in the middle.

use anyhow::Context;
use drover_controller::client::{self, ClientIdentity};
use drover_proto::v1;
use drover_proto::v1::agent_message::Kind as AgentKind;
use drover_proto::v1::controller_message::Kind as ControllerKind;
use secrecy::SecretString;
use tokio::sync::mpsc;

use crate::harness::Controller;

/// An agent identity got through the real Enrollment RPC.
#[derive(Debug)]
pub struct Enrolled {
    /// The id the controller chose.
    pub id: String,
    /// Its certificate and key.
    pub identity: ClientIdentity,
    /// The facts it enrolled with (sent again in Hello).
    pub facts: v1::AgentFacts,
}

/// Enrolls `hostname` with `token`.
pub async fn enroll(c: &Controller, token: &str, hostname: &str) -> anyhow::Result<Enrolled> {
    let ca = c.read("ca.crt");
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)?
        .der()
        .to_vec();
    let facts = v1::AgentFacts {
        hostname: hostname.into(),
        arch: "x86_64".into(),
        os: "linux".into(),
        agent_version: "test".into(),
        system_id: "s_0123456789ab".into(),
        ..Default::default()
    };
    let channel = client::connect(&c.grpc_addr, &ca, None).await?;
    let enrolled = v1::enrollment_client::EnrollmentClient::new(channel)
        .enroll(v1::EnrollRequest {
            token: token.into(),
            csr_der: csr,
            facts: Some(facts.clone()),
        })
        .await
        .with_context(|| format!("enroll {hostname}"))?
        .into_inner();
    Ok(Enrolled {
        id: enrolled.agent_id,
        identity: ClientIdentity {
            cert_pem: enrolled.certificate_pem,
            key_pem: SecretString::from(key.serialize_pem()),
        },
        facts,
    })
}

/// The two ends of an open Session.
pub type Session = (
    mpsc::Sender<v1::AgentMessage>,
    tonic::Streaming<v1::ControllerMessage>,
);

/// Opens a Session as `e` to the controller at `addr` (CA `ca_pem`): Hello (saying
/// `applied` is the applied generation), then waits for Welcome.
pub async fn open_session(
    addr: &str,
    ca_pem: &str,
    e: &Enrolled,
    applied: u64,
) -> anyhow::Result<Session> {
    let channel = client::connect(addr, ca_pem, Some(&e.identity)).await?;
    let (tx, rx) = mpsc::channel::<v1::AgentMessage>(64);
    tx.send(v1::AgentMessage {
        kind: Some(AgentKind::Hello(v1::Hello {
            facts: Some(e.facts.clone()),
            applied_generation: applied,
            instance: format!("test-{}", e.facts.hostname),
            upgrade: None,
        })),
    })
    .await?;
    let outbound =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut inbound = v1::agent_control_client::AgentControlClient::new(channel)
        .session(outbound)
        .await
        .with_context(|| format!("session of {}", e.id))?
        .into_inner();
    let welcome = inbound.message().await?;
    anyhow::ensure!(
        matches!(
            welcome,
            Some(v1::ControllerMessage {
                kind: Some(ControllerKind::Welcome(_))
            })
        ),
        "controller did not answer hello with welcome"
    );
    Ok((tx, inbound))
}
