//! `Admin`: tokens and agents, for callers with the admin certificate only.

use std::collections::BTreeMap;

use drover_proto::v1;
use secrecy::ExposeSecret;
use time::{Duration, OffsetDateTime};
use tonic::{Request, Response, Status, Streaming};

use super::state::AppState;
use crate::fleet::progress::{AgentProgress, AgentRolloutState, RolloutStatus};
use crate::fleet::{ApplyOutcome, ApplyRequest, FleetError};
use crate::health::report::RunnerStatus;
use crate::health::{AgentView, State};
use crate::store::{self, EventFilter, JobFilter, Strategy};
use crate::tokens::{self, TokenRecord};
use crate::wire;

impl From<FleetError> for Status {
    fn from(e: FleetError) -> Status {
        match e {
            FleetError::Spec(_) | FleetError::Invalid(_) => Status::invalid_argument(e.to_string()),
            FleetError::NoRunner(_) => Status::not_found(e.to_string()),
            FleetError::NothingToUndo(_) => Status::failed_precondition(e.to_string()),
            FleetError::Store(s) => s.into(),
            FleetError::Secrets(_) | FleetError::Corrupt { .. } => {
                tracing::error!(error = %e, "fleet");
                Status::internal(
                    "controller could not read its runner specs; see the controller log",
                )
            }
        }
    }
}

/// The wire strategy as a domain one; `None` = the default.
fn strategy(s: Option<&v1::RolloutStrategy>) -> Result<Option<Strategy>, Status> {
    wire::admin::strategy_in(s).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn apply_response(o: ApplyOutcome) -> v1::ApplyRunnersResponse {
    v1::ApplyRunnersResponse {
        generation: o.generation,
        changes: o
            .changes
            .into_iter()
            .map(|c| v1::RunnerChange {
                name: c.name,
                change: c.kind.to_string(),
                details: c.details,
            })
            .collect(),
        warnings: o.warnings,
    }
}

/// The Admin service.
pub struct AdminService {
    /// Shared state.
    pub state: AppState,
}

/// Longest file name an apply may carry (it is quoted in every message about the file).
const MAX_FILE_NAME: usize = 4096;

#[tonic::async_trait]
impl v1::admin_server::Admin for AdminService {
    async fn create_token(
        &self,
        req: Request<v1::CreateTokenRequest>,
    ) -> Result<Response<v1::CreateTokenResponse>, Status> {
        let admin = self.state.admin(&req)?;
        let r = req.into_inner();
        drover_proto::spec::validate_labels(r.labels.iter()).map_err(Status::invalid_argument)?;
        let labels: BTreeMap<String, String> = r.labels.into_iter().collect();
        let now = OffsetDateTime::now_utc();
        let ttl = match r.ttl_seconds {
            0 => tokens::DEFAULT_TTL,
            s => i64::try_from(s)
                .ok()
                .map(Duration::seconds)
                .filter(|d| *d <= tokens::MAX_DURATION)
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "ttl_seconds {s} is too long (at most {} = 36500d)",
                        tokens::MAX_DURATION.whole_seconds()
                    ))
                })?,
        };
        let expires_at = now.checked_add(ttl).ok_or_else(|| {
            Status::invalid_argument(format!(
                "ttl_seconds {}: expiry out of range",
                r.ttl_seconds
            ))
        })?;
        let uses = match r.uses {
            0 => tokens::DEFAULT_USES,
            n => n,
        };
        let (text, token) = tokens::generate(&self.state.ca.fingerprint());
        let record = TokenRecord {
            id: token.id.clone(),
            secret_hash: token.secret_hash(),
            labels,
            created_at: now,
            expires_at,
            uses_left: uses,
            revoked: false,
        };
        let stored = record.clone();
        store::blocking(&self.state.store, move |s| s.create_token(&stored)).await?;
        tracing::info!(token = %record.id, %admin, uses, "enrollment token created");
        Ok(Response::new(v1::CreateTokenResponse {
            token: text.expose_secret().to_string(),
            info: Some(wire::token_info(&record)),
        }))
    }

    async fn list_tokens(
        &self,
        req: Request<v1::ListTokensRequest>,
    ) -> Result<Response<v1::ListTokensResponse>, Status> {
        self.state.admin(&req)?;
        let tokens = store::blocking(&self.state.store, |s| s.list_tokens()).await?;
        Ok(Response::new(v1::ListTokensResponse {
            tokens: tokens.iter().map(wire::token_info).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        req: Request<v1::RevokeTokenRequest>,
    ) -> Result<Response<v1::RevokeTokenResponse>, Status> {
        let admin = self.state.admin(&req)?;
        let id = &req.get_ref().id;
        let owned = id.clone();
        if !store::blocking(&self.state.store, move |s| s.revoke_token(&owned)).await? {
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
        self.state.admin(&req)?;
        let agents = self.state.health.views().await?;
        let ids: Vec<String> = agents.iter().map(|v| v.record.id.clone()).collect();
        let statuses = self.state.fleet.runner_statuses_of(&ids).await;
        let upgrade = self.state.upgrades.status().await?;
        Ok(Response::new(v1::ListAgentsResponse {
            agents: agents
                .iter()
                .zip(statuses)
                .map(|(v, runners)| {
                    let mut info = wire::agent_info(v, runners);
                    wire::upgrade::annotate(&mut info, upgrade.as_ref());
                    info
                })
                .collect(),
        }))
    }

    async fn get_agent(
        &self,
        req: Request<v1::GetAgentRequest>,
    ) -> Result<Response<v1::AgentInfo>, Status> {
        self.state.admin(&req)?;
        let id = &req.get_ref().id;
        let view = self
            .state
            .health
            .view(id)
            .await?
            .ok_or_else(|| Status::not_found(format!("no agent with id {id:?}")))?;
        let mut info = wire::agent_info(&view, self.state.fleet.runner_statuses(id).await);
        let upgrade = self.state.upgrades.status().await?;
        wire::upgrade::annotate(&mut info, upgrade.as_ref());
        Ok(Response::new(info))
    }

    async fn delete_agent(
        &self,
        req: Request<v1::DeleteAgentRequest>,
    ) -> Result<Response<v1::DeleteAgentResponse>, Status> {
        let admin = self.state.admin(&req)?;
        let id = &req.get_ref().id;
        let owned = id.clone();
        let now = OffsetDateTime::now_utc();
        if !store::blocking(&self.state.store, move |s| s.revoke_agent(&owned, now)).await? {
            return Err(Status::not_found(format!("no agent with id {id:?}")));
        }
        self.state.sessions.close(id);
        self.state.health.leases.revoked(id);
        self.state
            .health
            .agent_event(id, "agent-deleted", "", format!("deleted by admin {admin}"));
        tracing::info!(agent = %id, %admin, "agent revoked");
        self.state.fleet.on_agent_deleted(id).await;
        Ok(Response::new(v1::DeleteAgentResponse {}))
    }

    async fn drain_agents(
        &self,
        req: Request<v1::DrainAgentsRequest>,
    ) -> Result<Response<v1::DrainAgentsResponse>, Status> {
        let admin = self.state.admin(&req)?;
        let r = req.into_inner();
        let sel = wire::drains::selection_in(r.agents.as_ref())?;
        let out = super::drains::drain(&self.state, &admin, &sel, r.deadline_seconds).await?;
        Ok(Response::new(wire::drains::drained_out(&out)))
    }

    async fn undrain_agents(
        &self,
        req: Request<v1::UndrainAgentsRequest>,
    ) -> Result<Response<v1::DrainAgentsResponse>, Status> {
        let admin = self.state.admin(&req)?;
        let sel = wire::drains::selection_in(req.get_ref().agents.as_ref())?;
        let out = super::drains::undrain(&self.state, &admin, &sel).await?;
        Ok(Response::new(wire::drains::drained_out(&out)))
    }

    async fn apply_runners(
        &self,
        req: Request<v1::ApplyRunnersRequest>,
    ) -> Result<Response<v1::ApplyRunnersResponse>, Status> {
        let admin = self.state.admin(&req)?;
        let r = req.into_inner();
        drover_proto::spec::validate_labels(r.selector.iter())
            .map_err(|e| Status::invalid_argument(format!("selector: {e}")))?;
        if r.file_name.len() > MAX_FILE_NAME || r.file_name.chars().any(char::is_control) {
            return Err(Status::invalid_argument(format!(
                "file name must be at most {MAX_FILE_NAME} bytes without control characters"
            )));
        }
        let selector: BTreeMap<String, String> = r.selector.into_iter().collect();
        let outcome = self
            .state
            .fleet
            .apply(ApplyRequest {
                file: r.file_name.clone(),
                text: r.text,
                dry_run: r.dry_run,
                selector,
                merge: r.merge,
                strategy: strategy(r.strategy.as_ref())?,
            })
            .await?;
        if outcome.generation > 0 {
            tracing::info!(%admin, file = %r.file_name, generation = outcome.generation, "runner specs applied");
        }
        Ok(Response::new(apply_response(outcome)))
    }

    async fn list_runners(
        &self,
        req: Request<v1::ListRunnersRequest>,
    ) -> Result<Response<v1::ListRunnersResponse>, Status> {
        self.state.admin(&req)?;
        let Some((g, runners)) = self.state.fleet.current().await? else {
            return Ok(Response::new(v1::ListRunnersResponse::default()));
        };
        // Paged so that no answer exceeds the message limit, however many runners and
        // placements there are.
        let token = &req.get_ref().page_token;
        let start = if token.is_empty() {
            0
        } else {
            match wire::fits::parse_page_token(token) {
                Some((gen_, i)) if gen_ == g.generation => i,
                Some((gen_, _)) => {
                    return Err(Status::failed_precondition(format!(
                        "runner specs changed while listing (generation {gen_} -> {}); list again",
                        g.generation
                    )));
                }
                None => {
                    return Err(Status::invalid_argument(format!(
                        "page token {token:?} is not one this controller issued"
                    )));
                }
            }
        };
        let assignments = store::blocking(&self.state.store, |s| s.all_assignments()).await?;
        let statuses = self.state.fleet.statuses_by_agent(&assignments);
        let infos = runners
            .iter()
            .skip(start)
            .map(|r| runner_info(r, g.generation, &assignments, &statuses))
            .collect::<Result<Vec<_>, Status>>()?;
        let (page, next) = wire::fits::page(g.generation, &infos, 0);
        let next = start + next;
        Ok(Response::new(v1::ListRunnersResponse {
            generation: g.generation,
            runners: page,
            next_page_token: if next < runners.len() {
                wire::fits::page_token(g.generation, next)
            } else {
                String::new()
            },
        }))
    }

    async fn get_runner(
        &self,
        req: Request<v1::GetRunnerRequest>,
    ) -> Result<Response<v1::RunnerInfo>, Status> {
        self.state.admin(&req)?;
        let name = &req.get_ref().name;
        let (g, runners) = self
            .state
            .fleet
            .current()
            .await?
            .ok_or_else(|| Status::not_found(format!("no runner named {name:?}")))?;
        let r = runners
            .iter()
            .find(|r| &r.name == name)
            .ok_or_else(|| Status::not_found(format!("no runner named {name:?}")))?;
        let assignments = store::blocking(&self.state.store, |s| s.all_assignments()).await?;
        let statuses = self.state.fleet.statuses_by_agent(&assignments);
        Ok(Response::new(runner_info(
            r,
            g.generation,
            &assignments,
            &statuses,
        )?))
    }

    async fn delete_runner(
        &self,
        req: Request<v1::DeleteRunnerRequest>,
    ) -> Result<Response<v1::ApplyRunnersResponse>, Status> {
        let admin = self.state.admin(&req)?;
        let r = req.into_inner();
        let outcome = self
            .state
            .fleet
            .delete_runner(&r.name, strategy(r.strategy.as_ref())?)
            .await?;
        tracing::info!(%admin, runner = %r.name, generation = outcome.generation, "runner deleted");
        Ok(Response::new(apply_response(outcome)))
    }

    async fn upgrade_agents(
        &self,
        req: Request<Streaming<v1::UpgradeAgentsRequest>>,
    ) -> Result<Response<v1::UpgradeStatusResponse>, Status> {
        let admin = self.state.admin(&req)?;
        let mut inbound = req.into_inner();
        let Some(v1::UpgradeAgentsRequest {
            kind: Some(v1::upgrade_agents_request::Kind::Plan(plan)),
        }) = inbound.message().await?
        else {
            return Err(Status::invalid_argument(
                "the first message of an upgrade must be its plan",
            ));
        };
        let count = usize::try_from(plan.binaries).unwrap_or(usize::MAX);
        if count == 0 || count > drover_runtime::binary_file::ARCHES.len() {
            return Err(Status::invalid_argument(format!(
                "binaries: {count}; give 1 to {} (one per architecture)",
                drover_runtime::binary_file::ARCHES.len()
            )));
        }
        let selector: BTreeMap<String, String> = plan.selector.into_iter().collect();
        drover_proto::spec::validate_labels(selector.iter())
            .map_err(|e| Status::invalid_argument(format!("selector: {e}")))?;
        let mut binaries: Vec<Vec<u8>> = vec![Vec::new(); count];
        while let Some(m) = inbound.message().await? {
            let Some(v1::upgrade_agents_request::Kind::Part(part)) = m.kind else {
                return Err(Status::invalid_argument(
                    "only binary parts follow the plan",
                ));
            };
            let index = usize::try_from(part.index).unwrap_or(usize::MAX);
            let Some(b) = binaries.get_mut(index) else {
                return Err(Status::invalid_argument(format!(
                    "binary part for binary {index}; the plan has {count}"
                )));
            };
            if b.len() + part.data.len() > crate::upgrade::MAX_BINARY_BYTES {
                return Err(Status::invalid_argument(format!(
                    "binary {index} is larger than {} MiB",
                    crate::upgrade::MAX_BINARY_BYTES >> 20
                )));
            }
            b.extend_from_slice(&part.data);
        }
        let status = self
            .state
            .upgrades
            .create(
                crate::upgrade::NewUpgrade {
                    selector,
                    max_unavailable: plan.max_unavailable,
                    health_timeout_seconds: plan.health_timeout_seconds,
                },
                binaries,
            )
            .await
            .map_err(|e| match e {
                crate::upgrade::UpgradeError::Store(s) => Status::from(s),
                other => Status::invalid_argument(other.to_string()),
            })?;
        tracing::info!(%admin, upgrade = status.upgrade.id, "agent upgrade started");
        Ok(Response::new(wire::upgrade::status_out(Some(status))))
    }

    async fn upgrade_status(
        &self,
        req: Request<v1::UpgradeStatusRequest>,
    ) -> Result<Response<v1::UpgradeStatusResponse>, Status> {
        self.state.admin(&req)?;
        let status = self.state.upgrades.status().await?;
        Ok(Response::new(wire::upgrade::status_out(status)))
    }

    async fn rollout_status(
        &self,
        req: Request<v1::RolloutStatusRequest>,
    ) -> Result<Response<v1::RolloutStatusResponse>, Status> {
        self.state.admin(&req)?;
        Ok(Response::new(rollout_status(&self.state).await?.into()))
    }

    async fn fleet_status(
        &self,
        req: Request<v1::FleetStatusRequest>,
    ) -> Result<Response<v1::FleetStatusResponse>, Status> {
        self.state.admin(&req)?;
        let views = self.state.health.views().await?;
        let mut status = fleet_status(
            &views,
            self.state.health.leases.connected(),
            rollout_status(&self.state).await?.into(),
        );
        let agents = store::blocking(&self.state.store, |s| s.list_agents()).await?;
        status.versions = crate::upgrade::Upgrades::versions(&agents)
            .into_iter()
            .map(|(state, agents)| v1::StateCount {
                state,
                agents,
                ..Default::default()
            })
            .collect();
        status.upgrade = self
            .state
            .upgrades
            .status()
            .await?
            .map(|s| wire::upgrade::status_out(Some(s)));
        Ok(Response::new(status))
    }

    async fn list_events(
        &self,
        req: Request<v1::ListEventsRequest>,
    ) -> Result<Response<v1::ListEventsResponse>, Status> {
        self.state.admin(&req)?;
        let r = req.into_inner();
        // Bring state changes up to now and write what is buffered, so the answer agrees
        // with `drover agents`.
        self.state.health.sweep().await;
        let filter = EventFilter {
            agent_id: r.agent_id,
            kind: r.kind,
            since: r.since.as_ref().map(crate::timefmt::from_proto_clamped),
            after_id: r.after_id,
            limit: match r.limit {
                0 => 100,
                n => n.min(1000) as usize,
            },
        };
        let events = store::blocking(&self.state.store, move |s| s.list_events(&filter)).await?;
        Ok(Response::new(v1::ListEventsResponse {
            events: events.iter().map(wire::event).collect(),
        }))
    }

    async fn list_jobs(
        &self,
        req: Request<v1::ListJobsRequest>,
    ) -> Result<Response<v1::ListJobsResponse>, Status> {
        self.state.admin(&req)?;
        let r = req.into_inner();
        let state = wire::job_state_filter(r.job_state)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // Write what is buffered, so a job an agent just reported is listed.
        self.state.health.flush_events().await;
        let filter = JobFilter {
            agent_id: r.agent_id,
            runner: r.runner,
            state,
            since: r.since.as_ref().map(crate::timefmt::from_proto_clamped),
            limit: match r.limit {
                0 => 100,
                n => n.min(1000) as usize,
            },
        };
        let jobs = store::blocking(&self.state.store, move |s| s.list_jobs(&filter)).await?;
        Ok(Response::new(v1::ListJobsResponse {
            jobs: jobs.iter().map(wire::job).collect(),
        }))
    }

    async fn push_image(
        &self,
        req: Request<tonic::Streaming<v1::PushImageChunk>>,
    ) -> Result<Response<v1::PushImageResponse>, Status> {
        let admin = self.state.admin(&req)?;
        super::images::push(&self.state, &admin, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_images(
        &self,
        req: Request<v1::ListImagesRequest>,
    ) -> Result<Response<v1::ListImagesResponse>, Status> {
        self.state.admin(&req)?;
        super::images::list(&self.state).await.map(Response::new)
    }

    async fn rollout_undo(
        &self,
        req: Request<v1::RolloutUndoRequest>,
    ) -> Result<Response<v1::ApplyRunnersResponse>, Status> {
        let admin = self.state.admin(&req)?;
        let s = strategy(req.get_ref().strategy.as_ref())?;
        let outcome = self.state.fleet.undo(s).await?;
        tracing::info!(%admin, generation = outcome.generation, "rollout undone");
        Ok(Response::new(apply_response(outcome)))
    }
}

/// Per-agent progress of the newest generation (`drover rollout status`, `drover status`).
pub async fn rollout_status(state: &AppState) -> Result<RolloutStatus, Status> {
    let read = store::blocking(&state.store, |s| {
        let Some(g) = s.latest_generation()? else {
            return Ok(None);
        };
        Ok(Some((g, s.agent_rollouts()?, s.list_agents()?)))
    });
    let Some((g, rollouts, all_agents)) = read.await? else {
        return Ok(RolloutStatus::default());
    };
    let progress: std::collections::HashMap<String, crate::store::AgentRollout> = rollouts
        .into_iter()
        .map(|r| (r.agent_id.clone(), r))
        .collect();
    let mut agents = Vec::new();
    if state.cluster.is_replica() {
        // Agents on other replicas, by the last contacts those write.
        state.health.leases.merge_stored(&all_agents);
    }
    let live = state.fleet.connected_agents();
    for a in all_agents.into_iter().filter(|a| a.revoked_at.is_none()) {
        let p = progress.get(&a.id).cloned().unwrap_or_default();
        let connected = live.contains(&a.id);
        let fleet_error = state.fleet.agent_error(&a.id);
        let (state, error) = if p.ack_generation == p.target_generation
            && p.target_generation > 0
            && p.ack_error.is_some()
        {
            (
                AgentRolloutState::Refused,
                p.ack_error.clone().unwrap_or_default(),
            )
        } else if p.target_generation == g.generation && p.ack_generation >= g.generation {
            (AgentRolloutState::Applied, String::new())
        } else if p.target_generation < g.generation && fleet_error.is_some() {
            (AgentRolloutState::Failed, fleet_error.unwrap_or_default())
        } else if !connected {
            (AgentRolloutState::Offline, String::new())
        } else if p.target_generation == g.generation {
            (AgentRolloutState::Pushed, String::new())
        } else {
            (AgentRolloutState::Waiting, String::new())
        };
        agents.push(AgentProgress {
            agent_id: a.id.clone(),
            hostname: a.facts.hostname.clone(),
            target_generation: p.target_generation,
            applied_generation: a.applied_generation,
            state,
            error,
            connected,
        });
    }
    Ok(RolloutStatus {
        generation: g.generation,
        state: Some(g.state),
        reason: g.reason,
        strategy: Some(g.strategy),
        agents,
        created_at: Some(g.created_at),
    })
}

/// A runner spec with its placements; `statuses` are the runner statuses by agent
/// ([`crate::fleet::service::Fleet::statuses_by_agent`]).
fn runner_info(
    r: &drover_proto::spec::RunnerConfig,
    generation: u64,
    assignments: &[crate::store::Assignment],
    statuses: &std::collections::HashMap<String, Vec<RunnerStatus>>,
) -> Result<v1::RunnerInfo, Status> {
    let placements = assignments
        .iter()
        .filter(|a| a.runner == r.name)
        .cloned()
        .map(|a| {
            let status = statuses
                .get(&a.agent_id)
                .and_then(|v| v.iter().find(|s| s.name == r.name));
            wire::admin::placement(a, status)
        })
        .collect();
    Ok(v1::RunnerInfo {
        name: r.name.clone(),
        url: r.url.clone(),
        selector: r.selector.clone().into_iter().collect(),
        tag_list: r.tag_list.clone(),
        token_source: if r.token.is_some() {
            "token".into()
        } else if r.runner_creation_token.is_some() {
            "runner_creation_token".into()
        } else {
            "registration_token".into()
        },
        spec_json: crate::fleet::spec::redacted_json(r).to_string(),
        generation,
        placements,
    })
}

/// The fleet summary from agent views: counts per state, problems (lost first, at most
/// 20) and the most common kinds of reason.
pub fn fleet_status(
    views: &[AgentView],
    connected: usize,
    rollout: v1::RolloutStatusResponse,
) -> v1::FleetStatusResponse {
    let counts = State::ALL
        .iter()
        .map(|s| {
            let agents = views.iter().filter(|v| v.eval.state == *s).count() as u32;
            wire::admin::state_count(*s, agents)
        })
        .collect();
    let mut bad: Vec<&AgentView> = views
        .iter()
        .filter(|v| matches!(v.eval.state, State::Lost | State::Degraded))
        .collect();
    bad.sort_by(|a, b| {
        b.eval
            .state
            .cmp(&a.eval.state)
            .then(a.record.id.cmp(&b.record.id))
    });
    let mut kinds: BTreeMap<String, u32> = BTreeMap::new();
    for v in &bad {
        let mut seen = std::collections::BTreeSet::new();
        for r in &v.eval.reasons {
            let k = r.split(':').next().unwrap_or(r).trim().to_string();
            if seen.insert(k.clone()) {
                *kinds.entry(k).or_default() += 1;
            }
        }
    }
    let mut top: Vec<(String, u32)> = kinds.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    // Disk budgets summed over the connected agents that report them.
    let mut disk = crate::health::report::DiskBudgets::default();
    for b in views
        .iter()
        .filter(|v| v.connected)
        .filter_map(|v| v.host.as_ref().and_then(|h| h.disk_budgets.as_ref()))
    {
        disk.add(b);
    }
    v1::FleetStatusResponse {
        versions: Vec::new(),
        upgrade: None,
        disk: (disk.agents > 0).then(|| wire::report::disk_budgets_out(&disk)),
        counts,
        connected: connected as u32,
        rollout: Some(rollout),
        problems: bad
            .iter()
            .take(20)
            .map(|v| wire::admin::problem(v))
            .collect(),
        top_reasons: top
            .into_iter()
            .take(10)
            .map(|(state, agents)| v1::StateCount {
                state,
                agents,
                ..Default::default()
            })
            .collect(),
    }
}
