//! `Enrollment.Enroll`: the one call open to clients without a certificate.

use drover_proto::v1;
use time::OffsetDateTime;
use tonic::{Request, Response, Status};

use super::attempts::AttemptLimiter;
use super::state::AppState;
use crate::pki::identity::Identity;
use crate::pki::policy;
use crate::store::{self, AgentRecord, Facts};
use crate::timefmt;
use crate::tokens::{self, Token, TokenRefusal};

/// The Enrollment service.
pub struct EnrollmentService {
    /// Shared state.
    pub state: AppState,
    /// Failed attempts per source address.
    pub attempts: AttemptLimiter,
}

#[tonic::async_trait]
impl v1::enrollment_server::Enrollment for EnrollmentService {
    async fn enroll(
        &self,
        req: Request<v1::EnrollRequest>,
    ) -> Result<Response<v1::EnrollResponse>, Status> {
        self.state.serving()?;
        let peer = req
            .extensions()
            .get::<super::tls::PeerInfo>()
            .and_then(|p| p.remote_addr);
        let ip = peer.map(|p| p.ip());
        if let Some(ip) = ip
            && let Err(wait) = self.attempts.check(ip, std::time::Instant::now())
        {
            self.state.metrics.enrollment(false);
            tracing::debug!(?peer, "enrollment refused: too many failed attempts");
            return Err(Status::resource_exhausted(format!(
                "too many failed enrollment attempts from {ip}; try again in {} s",
                wait.as_secs().max(1)
            )));
        }
        let r = req.into_inner();
        let now = OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap_or(OffsetDateTime::now_utc());
        let result = match self.admit(&r.token, now).await {
            Ok(token) => self.enroll(token, r, now).await,
            Err(e) => {
                if let Some(ip) = ip {
                    self.attempts.failed(ip, std::time::Instant::now());
                }
                Err(e)
            }
        };
        self.state.metrics.enrollment(result.is_ok());
        match &result {
            Ok(resp) => tracing::info!(agent = %resp.agent_id, ?peer, "agent enrolled"),
            Err(status) => tracing::warn!(?peer, error = %status.message(), "enrollment refused"),
        }
        result.map(Response::new)
    }
}

impl EnrollmentService {
    /// The token, checked before anything else is looked at (the CSR is neither parsed nor
    /// signed for a caller without a valid secret); the secret is compared in constant time
    /// ([`tokens::check`]). The store checks it again when it takes the use.
    async fn admit(&self, text: &str, now: OffsetDateTime) -> Result<Token, Status> {
        let token = Token::parse(text)?;
        if token.ca_fingerprint != self.state.ca.fingerprint() {
            return Err(Status::permission_denied(
                "enrollment token was made by another controller: its CA fingerprint differs",
            ));
        }
        let id = token.id.clone();
        let record = store::blocking(&self.state.store, move |s| s.get_token(&id))
            .await?
            .ok_or_else(|| TokenRefusal::Unknown(token.id.clone()))
            .map_err(|r| Status::permission_denied(r.to_string()))?;
        tokens::check(&record, &token.secret_hash(), now)
            .map_err(|r| Status::permission_denied(r.to_string()))?;
        Ok(token)
    }

    async fn enroll(
        &self,
        token: Token,
        r: v1::EnrollRequest,
        now: OffsetDateTime,
    ) -> Result<v1::EnrollResponse, Status> {
        let csr = policy::verify_csr(&r.csr_der)?;
        let id = hex::encode(rand::random::<[u8; 8]>());
        let issued = policy::sign_client(
            &self.state.ca,
            &csr,
            &Identity::Agent(id.clone()),
            now,
            self.state.cert_ttl,
        )?;
        let agent = AgentRecord {
            id: id.clone(),
            labels: Default::default(),
            facts: r.facts.as_ref().map(Facts::from).unwrap_or_default(),
            enrolled_at: now,
            last_seen: None,
            cert_serial: issued.serial.clone(),
            cert_not_after: issued.not_after,
            revoked_at: None,
            applied_generation: 0,
        };
        let (token_id, secret_hash) = (token.id.clone(), token.secret_hash());
        let agent = store::blocking(&self.state.store, move |s| {
            s.enroll(&token_id, &secret_hash, now, agent)
        })
        .await?;
        self.state.health.leases.load(std::slice::from_ref(&agent));
        let labels: Vec<String> = agent
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        self.state.health.agent_event(
            &agent.id,
            "agent-enrolled",
            "",
            format!(
                "enrolled: host {}, token {}, labels {}",
                agent.facts.hostname,
                token.id,
                if labels.is_empty() {
                    "none".to_string()
                } else {
                    labels.join(",")
                }
            ),
        );
        Ok(v1::EnrollResponse {
            agent_id: agent.id,
            certificate_pem: issued.pem,
            ca_pem: self.state.ca.cert_pem().to_string(),
            not_after: Some(timefmt::to_proto(issued.not_after)),
            labels: agent.labels.into_iter().collect(),
            upgrade_public_key: self.state.upgrades.public_key(),
        })
    }
}
