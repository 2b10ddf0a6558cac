//! Agent binary upgrades (`drover agent upgrade`): binaries are stored content-addressed
//! and signed ([`signing`]), rolled out by the leader in batches ([`plan`]), sent to each
//! agent as an upgrade command, downloaded over the agent's mTLS channel, and followed by
//! what each agent reports ([`step`]).

pub mod plan;
pub mod signing;
pub mod step;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::fleet::Presence;
use crate::server::sessions::Sessions;
use crate::store::upgrades::{AgentUpgrade, BinaryRecord, UpgradeRecord, UpgradeState};
use crate::store::{self, Store, StoreError};
use signing::SigningKey;
use step::{Report, Step, UpgradeCommand};

/// Largest agent binary accepted.
pub const MAX_BINARY_BYTES: usize = 256 * 1024 * 1024;

/// Errors of an upgrade request.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(transparent)]
    Binary(#[from] drover_runtime::binary_file::BinaryFileError),
    #[error("binary {index} is larger than {MAX_BINARY_BYTES} bytes")]
    TooLarge { index: usize },
    #[error("binaries {first} and {second} are both for {arch}; give one binary per architecture")]
    DuplicateArch {
        arch: String,
        first: usize,
        second: usize,
    },
    #[error("no binary given")]
    NoBinary,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What `drover agent upgrade` asks for.
#[derive(Debug, Clone)]
pub struct NewUpgrade {
    pub selector: BTreeMap<String, String>,
    pub max_unavailable: u32,
    pub health_timeout_seconds: u64,
}

/// One agent in [`UpgradeStatus`].
#[derive(Debug, Clone)]
pub struct AgentStatus {
    pub agent_id: String,
    pub hostname: String,
    pub step: Step,
    pub detail: String,
    pub version: String,
}

/// The newest upgrade and where each agent it is for stands.
#[derive(Debug, Clone)]
pub struct UpgradeStatus {
    pub upgrade: UpgradeRecord,
    pub binaries: Vec<BinaryRecord>,
    pub agents: Vec<AgentStatus>,
}

/// The upgrade service.
pub struct Upgrades {
    store: Arc<dyn Store>,
    /// Leader-only writes (fenced with replicas).
    fenced: Arc<dyn Store>,
    key: Arc<SigningKey>,
    sessions: Sessions,
    live: Presence,
}

impl std::fmt::Debug for Upgrades {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgrades").field("key", &self.key).finish()
    }
}

impl Upgrades {
    pub fn new(
        store: Arc<dyn Store>,
        fenced: Arc<dyn Store>,
        key: Arc<SigningKey>,
        sessions: Sessions,
        live: Presence,
    ) -> Upgrades {
        Upgrades {
            store,
            fenced,
            key,
            sessions,
            live,
        }
    }

    /// The public key agents pin.
    pub fn public_key(&self) -> Vec<u8> {
        self.key.public_key()
    }

    /// Stores and signs the binaries (one per architecture, read from each file's ELF
    /// header and version stamp) and starts a new upgrade; a running one is halted as
    /// superseded. Refused whole, storing nothing, when a binary is refused.
    pub async fn create(
        &self,
        req: NewUpgrade,
        binaries: Vec<Vec<u8>>,
    ) -> Result<UpgradeStatus, UpgradeError> {
        if binaries.is_empty() {
            return Err(UpgradeError::NoBinary);
        }
        let now = OffsetDateTime::now_utc();
        let mut records: Vec<(BinaryRecord, Vec<u8>)> = Vec::new();
        let mut by_arch: BTreeMap<String, usize> = BTreeMap::new();
        for (index, content) in binaries.into_iter().enumerate() {
            if content.len() > MAX_BINARY_BYTES {
                return Err(UpgradeError::TooLarge { index });
            }
            let name = format!("binary {index}");
            let info = drover_runtime::binary_file::inspect_bytes(Path::new(&name), &content)?;
            if let Some(first) = by_arch.insert(info.arch.to_string(), index) {
                return Err(UpgradeError::DuplicateArch {
                    arch: info.arch.to_string(),
                    first,
                    second: index,
                });
            }
            let sha: [u8; 32] = Sha256::digest(&content).into();
            records.push((
                BinaryRecord {
                    sha256: hex::encode(sha),
                    arch: info.arch.to_string(),
                    version: info.version,
                    size: content.len() as u64,
                    signature: self.key.sign(&sha),
                    created_at: now,
                },
                content,
            ));
        }
        let upgrade = UpgradeRecord {
            id: 0,
            created_at: now,
            selector: req.selector,
            max_unavailable: req.max_unavailable.max(1),
            health_timeout_seconds: req.health_timeout_seconds,
            binaries: records
                .iter()
                .map(|(b, _)| (b.arch.clone(), b.sha256.clone()))
                .collect(),
            state: UpgradeState::Running,
            reason: String::new(),
        };
        let fenced = self.fenced.clone();
        store::blocking(&self.store, move |s| {
            for (b, content) in &records {
                s.add_binary(b, content)?;
            }
            if let Some(prev) = s.latest_upgrade()?
                && prev.state == UpgradeState::Running
            {
                fenced.set_upgrade_state(prev.id, UpgradeState::Halted, "superseded")?;
            }
            s.add_upgrade(&upgrade)
        })
        .await?;
        self.drive().await?;
        self.status()
            .await?
            .ok_or(UpgradeError::Store(StoreError::Interrupted(
                "upgrade vanished".into(),
            )))
    }

    /// The newest upgrade, with every agent it is for.
    pub async fn status(&self) -> Result<Option<UpgradeStatus>, StoreError> {
        store::blocking(&self.store, |s| {
            let Some(upgrade) = s.latest_upgrade()? else {
                return Ok(None);
            };
            let mut binaries = Vec::new();
            for sha in upgrade.binaries.values() {
                binaries.extend(s.get_binary(sha)?);
            }
            let progress: BTreeMap<String, AgentUpgrade> = s
                .agent_upgrades(upgrade.id)?
                .into_iter()
                .map(|p| (p.agent_id.clone(), p))
                .collect();
            let agents = s
                .list_agents()?
                .into_iter()
                .filter(|a| {
                    a.revoked_at.is_none()
                        && crate::fleet::selector::matches(&upgrade.selector, &a.labels)
                        || progress.contains_key(&a.id)
                })
                .map(|a| {
                    let p = progress.get(&a.id);
                    AgentStatus {
                        step: p
                            .and_then(|p| Step::parse(&p.state))
                            .unwrap_or(Step::Pending),
                        detail: p.map(|p| p.detail.clone()).unwrap_or_default(),
                        agent_id: a.id,
                        hostname: a.facts.hostname,
                        version: a.facts.agent_version,
                    }
                })
                .collect();
            Ok(Some(UpgradeStatus {
                upgrade,
                binaries,
                agents,
            }))
        })
        .await
    }

    /// One leader pass over the running upgrade: record, send, end (see [`plan`]).
    pub async fn drive(&self) -> Result<(), StoreError> {
        let live = (self.live)();
        let fenced = self.fenced.clone();
        let send = store::blocking(&self.store, move |s| {
            let Some(up) = s.latest_upgrade()? else {
                return Ok(Vec::new());
            };
            if up.state != UpgradeState::Running {
                return Ok(Vec::new());
            }
            let mut versions = BTreeMap::new();
            for (arch, sha) in &up.binaries {
                if let Some(b) = s.get_binary(sha)? {
                    versions.insert(arch.clone(), b.version);
                }
            }
            let agents: Vec<plan::Candidate> = s
                .list_agents()?
                .into_iter()
                .filter(|a| {
                    a.revoked_at.is_none()
                        && crate::fleet::selector::matches(&up.selector, &a.labels)
                })
                .map(|a| plan::Candidate {
                    id: a.id,
                    arch: a.facts.arch,
                    version: a.facts.agent_version,
                })
                .collect();
            let progress = s
                .agent_upgrades(up.id)?
                .into_iter()
                .map(|p| (p.agent_id.clone(), p))
                .collect();
            let d = plan::plan(
                &up,
                &versions,
                &agents,
                &live,
                &progress,
                OffsetDateTime::now_utc(),
            );
            if !d.writes.is_empty() {
                fenced.set_agent_upgrades(&d.writes)?;
            }
            if let Some((state, reason)) = &d.end {
                fenced.set_upgrade_state(up.id, *state, reason)?;
                tracing::info!(upgrade = up.id, state = state.as_str(), %reason, "upgrade ended");
            }
            Ok(d.send)
        })
        .await?;
        for agent in send {
            tracing::info!(%agent, "sending agent upgrade");
            self.sessions.kick(&agent);
        }
        Ok(())
    }

    /// The upgrade command for `agent_id`, while it is on its way in a running upgrade;
    /// `latest` is the newest upgrade (read once for a batch of sessions): nothing more is
    /// read unless it is running.
    pub async fn command_for(
        &self,
        latest: Option<UpgradeRecord>,
        agent_id: &str,
    ) -> Result<Option<UpgradeCommand>, StoreError> {
        let Some(up) = latest.filter(|u| u.state == UpgradeState::Running) else {
            return Ok(None);
        };
        let agent_id = agent_id.to_string();
        store::blocking(&self.store, move |s| {
            let on_its_way = s
                .agent_upgrade(up.id, &agent_id)?
                .is_some_and(|p| Step::parse(&p.state).is_some_and(Step::in_flight));
            let Some(agent) = s.get_agent(&agent_id)?.filter(|_| on_its_way) else {
                return Ok(None);
            };
            let Some(sha) = up.binaries.get(&agent.facts.arch) else {
                return Ok(None);
            };
            Ok(s.get_binary(sha)?.map(|b| UpgradeCommand {
                upgrade_id: up.id,
                sha256: b.sha256,
                size: b.size,
                signature: b.signature,
                version: b.version,
                health_timeout_seconds: up.health_timeout_seconds,
            }))
        })
        .await
    }

    /// Records what an agent reports of an upgrade (only the newest one's, only for an
    /// agent it was sent to, and only when it changes something).
    pub async fn report(&self, agent_id: &str, report: Report) -> Result<(), StoreError> {
        let agent_id = agent_id.to_string();
        let changed = store::blocking(&self.store, move |s| {
            let Some(up) = s.latest_upgrade()? else {
                return Ok(false);
            };
            if up.id != report.upgrade_id {
                return Ok(false);
            }
            let Some(old) = s.agent_upgrade(up.id, &agent_id)? else {
                return Ok(false);
            };
            if old.state == report.step.as_str() && old.detail == report.detail {
                return Ok(false);
            }
            let since = if old.state == report.step.as_str() {
                old.since
            } else {
                OffsetDateTime::now_utc()
            };
            s.set_agent_upgrades(&[AgentUpgrade {
                state: report.step.as_str().to_string(),
                detail: report.detail,
                since,
                ..old
            }])?;
            Ok(true)
        })
        .await?;
        if changed {
            self.drive_if_leading().await;
        }
        Ok(())
    }

    async fn drive_if_leading(&self) {
        if let Err(e) = self.drive().await {
            tracing::debug!(error = %e, "upgrade pass after a report");
        }
    }

    /// The binary `sha256` when the running upgrade sends it to `agent_id` (else `None`:
    /// the controller serves a binary only to an agent it upgrades with it).
    pub async fn downloadable(
        &self,
        agent_id: &str,
        sha256: &str,
    ) -> Result<Option<BinaryRecord>, StoreError> {
        let (agent_id, sha256) = (agent_id.to_string(), sha256.to_string());
        store::blocking(&self.store, move |s| {
            let Some(up) = s.latest_upgrade()? else {
                return Ok(None);
            };
            let sent = s.agent_upgrade(up.id, &agent_id)?.is_some();
            let arch = s.get_agent(&agent_id)?.map(|a| a.facts.arch);
            let addressed = arch.is_some_and(|arch| up.binaries.get(&arch) == Some(&sha256));
            if !(sent && addressed && up.state == UpgradeState::Running) {
                return Ok(None);
            }
            s.get_binary(&sha256)
        })
        .await
    }

    /// Bytes of a stored binary from `offset` (one chunk at most).
    pub async fn chunk(&self, sha256: &str, offset: u64) -> Result<Vec<u8>, StoreError> {
        let sha256 = sha256.to_string();
        store::blocking(&self.store, move |s| s.binary_chunk(&sha256, offset)).await
    }

    /// Agents per reported version (not revoked), most common first.
    pub fn versions(agents: &[crate::store::AgentRecord]) -> Vec<(String, u32)> {
        let mut by: BTreeMap<String, u32> = BTreeMap::new();
        for a in agents.iter().filter(|a| a.revoked_at.is_none()) {
            let v = if a.facts.agent_version.is_empty() {
                "unknown".to_string()
            } else {
                a.facts.agent_version.clone()
            };
            *by.entry(v).or_default() += 1;
        }
        let mut out: Vec<_> = by.into_iter().collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }
}
