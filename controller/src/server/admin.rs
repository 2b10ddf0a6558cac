//! `Admin`: tokens and agents, for callers with the admin certificate only.

use std::collections::BTreeMap;

use drover_proto::v1;
use secrecy::ExposeSecret;
use time::{Duration, OffsetDateTime};
use tonic::{Request, Response, Status};

use super::auth;
use super::convert;
use super::state::AppState;
use crate::tokens::{self, TokenRecord};

/// The Admin service.
pub struct AdminService {
    /// Shared state.
    pub state: AppState,
}

#[tonic::async_trait]
impl v1::admin_server::Admin for AdminService {
    async fn create_token(
        &self,
        req: Request<v1::CreateTokenRequest>,
    ) -> Result<Response<v1::CreateTokenResponse>, Status> {
        let admin = auth::admin(&req)?;
        let r = req.into_inner();
        let mut labels = BTreeMap::new();
        for (k, v) in r.labels {
            tokens::validate_label(&k, &v).map_err(Status::invalid_argument)?;
            labels.insert(k, v);
        }
        let ttl =
            match r.ttl_seconds {
                0 => tokens::DEFAULT_TTL,
                s => Duration::seconds(i64::try_from(s).map_err(|_| {
                    Status::invalid_argument(format!("ttl_seconds {s} is too large"))
                })?),
            };
        let uses = match r.uses {
            0 => tokens::DEFAULT_USES,
            n => n,
        };
        let now = OffsetDateTime::now_utc();
        let (text, token) = tokens::generate(&self.state.ca.fingerprint());
        let record = TokenRecord {
            id: token.id.clone(),
            secret_hash: token.secret_hash(),
            labels,
            created_at: now,
            expires_at: now + ttl,
            uses_left: uses,
            revoked: false,
        };
        self.state.store.create_token(&record)?;
        tracing::info!(token = %record.id, %admin, uses, "enrollment token created");
        Ok(Response::new(v1::CreateTokenResponse {
            token: text.expose_secret().to_string(),
            info: Some(convert::token_info(&record)),
        }))
    }

    async fn list_tokens(
        &self,
        req: Request<v1::ListTokensRequest>,
    ) -> Result<Response<v1::ListTokensResponse>, Status> {
        auth::admin(&req)?;
        let tokens = self.state.store.list_tokens()?;
        Ok(Response::new(v1::ListTokensResponse {
            tokens: tokens.iter().map(convert::token_info).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        req: Request<v1::RevokeTokenRequest>,
    ) -> Result<Response<v1::RevokeTokenResponse>, Status> {
        let admin = auth::admin(&req)?;
        let id = &req.get_ref().id;
        if !self.state.store.revoke_token(id)? {
            return Err(Status::not_found(format!(
                "no enrollment token with id {id:?}"
            )));
        }
        tracing::info!(token = %id, %admin, "enrollment token revoked");
        Ok(Response::new(v1::RevokeTokenResponse {}))
    }

    async fn list_agents(
        &self,
        req: Request<v1::ListAgentsRequest>,
    ) -> Result<Response<v1::ListAgentsResponse>, Status> {
        auth::admin(&req)?;
        let agents = self.state.store.list_agents()?;
        Ok(Response::new(v1::ListAgentsResponse {
            agents: agents
                .iter()
                .map(|a| convert::agent_info(a, &self.state.sessions))
                .collect(),
        }))
    }

    async fn get_agent(
        &self,
        req: Request<v1::GetAgentRequest>,
    ) -> Result<Response<v1::AgentInfo>, Status> {
        auth::admin(&req)?;
        let id = &req.get_ref().id;
        let agent = self
            .state
            .store
            .get_agent(id)?
            .ok_or_else(|| Status::not_found(format!("no agent with id {id:?}")))?;
        Ok(Response::new(convert::agent_info(
            &agent,
            &self.state.sessions,
        )))
    }

    async fn delete_agent(
        &self,
        req: Request<v1::DeleteAgentRequest>,
    ) -> Result<Response<v1::DeleteAgentResponse>, Status> {
        let admin = auth::admin(&req)?;
        let id = &req.get_ref().id;
        if !self
            .state
            .store
            .revoke_agent(id, OffsetDateTime::now_utc())?
        {
            return Err(Status::not_found(format!("no agent with id {id:?}")));
        }
        self.state.sessions.close(id);
        tracing::info!(agent = %id, %admin, "agent revoked");
        Ok(Response::new(v1::DeleteAgentResponse {}))
    }
}
