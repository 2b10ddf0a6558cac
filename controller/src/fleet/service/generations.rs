//! Generations: a runner set applied (`runner apply`, `import`, `delete`, `rollout undo`)
//! is stored sealed as the next generation, and stored generations are unsealed once and kept.

use std::collections::BTreeMap;
use std::sync::Arc;

use drover_proto::spec::RunnerConfig;

use super::{Fleet, FleetError, SPECS, now};
use crate::fleet::rollout;
use crate::fleet::spec::{self, Change};
use crate::store::{self, GenerationRecord, RolloutState, Strategy, StrategyKind};

/// `drover runner apply` / `import`.
#[derive(Debug, Clone, Default)]
pub struct ApplyRequest {
    /// File name for messages.
    pub file: String,
    /// File content.
    pub text: String,
    /// Validate and diff only.
    pub dry_run: bool,
    /// Import: selector for runners without one.
    pub selector: BTreeMap<String, String>,
    /// Keep runners the file does not name.
    pub merge: bool,
    /// `None` = default strategy.
    pub strategy: Option<Strategy>,
}

/// What an apply did.
#[derive(Debug, Clone)]
pub struct ApplyOutcome {
    /// New generation, 0 when nothing was stored.
    pub generation: u64,
    /// Per-runner changes.
    pub changes: Vec<Change>,
    /// Ignored keys.
    pub warnings: Vec<String>,
}

/// How many unsealed generations [`Fleet`] keeps (the newest and the ones agents are
/// still being moved from).
const UNSEALED_KEPT: usize = 4;

impl Fleet {
    /// The runners of a stored generation, unsealed.
    pub fn runners_of(&self, g: &GenerationRecord) -> Result<Vec<RunnerConfig>, FleetError> {
        let plain = self.sealer.open(SPECS, &g.runners_sealed)?;
        serde_json::from_slice(&plain).map_err(|e| FleetError::Corrupt {
            generation: g.generation,
            detail: e.to_string(),
        })
    }

    /// The runners of generation `generation` (`None` when there is no such generation),
    /// unsealed once and then kept.
    pub(super) async fn generation_runners(
        &self,
        generation: u64,
    ) -> Result<Option<Arc<Vec<RunnerConfig>>>, FleetError> {
        if let Some(r) = self.unsealed_cache().get(&generation) {
            return Ok(Some(r.clone()));
        }
        match store::blocking(&self.store, move |s| s.get_generation(generation)).await? {
            Some(g) => Ok(Some(self.unsealed_runners(&g)?)),
            None => Ok(None),
        }
    }

    /// The runners of `g`, unsealed once and then kept.
    fn unsealed_runners(&self, g: &GenerationRecord) -> Result<Arc<Vec<RunnerConfig>>, FleetError> {
        if let Some(r) = self.unsealed_cache().get(&g.generation) {
            return Ok(r.clone());
        }
        let runners = Arc::new(self.runners_of(g)?);
        let mut cache = self.unsealed_cache();
        cache.insert(g.generation, runners.clone());
        while cache.len() > UNSEALED_KEPT {
            cache.pop_first();
        }
        Ok(runners)
    }

    fn unsealed_cache(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Vec<RunnerConfig>>>> {
        self.unsealed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest generation and its runners (`None` before the first apply).
    pub async fn current(
        &self,
    ) -> Result<Option<(GenerationRecord, Vec<RunnerConfig>)>, FleetError> {
        match store::blocking(&self.store, |s| s.latest_generation()).await? {
            Some(g) => {
                let r = self.unsealed_runners(&g)?.as_ref().clone();
                Ok(Some((g, r)))
            }
            None => Ok(None),
        }
    }

    async fn default_strategy(&self) -> Result<Strategy, FleetError> {
        let agents = store::blocking(&self.store, |s| s.list_agents())
            .await?
            .iter()
            .filter(|a| a.revoked_at.is_none())
            .count();
        Ok(Strategy {
            kind: StrategyKind::Rolling,
            max_unavailable: rollout::default_max_unavailable(agents),
            gate: None,
        })
    }

    /// Stores `runners` as the next generation (unless identical to the newest) and starts
    /// its rollout.
    async fn store_generation(
        &self,
        runners: Vec<RunnerConfig>,
        strategy: Option<Strategy>,
        reason: String,
        force: bool,
    ) -> Result<(u64, Vec<Change>), FleetError> {
        let generation = {
            let _g = self.lock.lock().await;
            self.add_generation_locked(runners, strategy, reason, force)
                .await?
        };
        self.reconcile().await;
        Ok(generation)
    }

    /// Stores `runners` as the next generation (unless identical to the newest and not
    /// `force`); the caller holds `lock`.
    pub(super) async fn add_generation_locked(
        &self,
        runners: Vec<RunnerConfig>,
        strategy: Option<Strategy>,
        reason: String,
        force: bool,
    ) -> Result<(u64, Vec<Change>), FleetError> {
        let current = self.current().await?;
        let old = current.as_ref().map(|c| c.1.clone()).unwrap_or_default();
        let changes = spec::diff(&old, &runners);
        if !force && changes.iter().all(|c| c.kind == "unchanged") && current.is_some() {
            return Ok((0, changes));
        }
        let strategy = match strategy {
            Some(s) => s,
            None => self.default_strategy().await?,
        };
        // RunnerConfig serializes its tokens in clear: that is what gets sealed.
        let json = serde_json::to_vec(&runners)
            .map_err(|e| FleetError::Invalid(format!("serialize runners: {e}")))?;
        let g = GenerationRecord {
            generation: current.map(|c| c.0.generation).unwrap_or(0) + 1,
            created_at: now(),
            runners_sealed: self.sealer.seal(SPECS, &json),
            strategy,
            state: RolloutState::Progressing,
            reason,
        };
        let generation = g.generation;
        store::blocking(&self.store, move |s| s.add_generation(&g)).await?;
        tracing::info!(generation, "runner specs stored");
        Ok((generation, changes))
    }

    /// `drover runner apply` / `import`: validates everything first; a refusal changes
    /// nothing.
    pub async fn apply(&self, req: ApplyRequest) -> Result<ApplyOutcome, FleetError> {
        let file = spec::parse_spec(&req.text, &req.file, &req.selector)?;
        let mut runners = file.runners;
        if req.merge
            && let Some((_, current)) = self.current().await?
        {
            let named: Vec<String> = runners.iter().map(|r| r.name.clone()).collect();
            let mut kept: Vec<RunnerConfig> = current
                .into_iter()
                .filter(|r| !named.contains(&r.name))
                .collect();
            kept.append(&mut runners);
            runners = kept;
        }
        crate::wire::fits::check_runner_set(&runners)
            .map_err(|e| FleetError::Invalid(format!("{}: {e}", req.file)))?;
        if req.dry_run {
            let old = self.current().await?.map(|c| c.1).unwrap_or_default();
            return Ok(ApplyOutcome {
                generation: 0,
                changes: spec::diff(&old, &runners),
                warnings: file.warnings,
            });
        }
        let (generation, changes) = self
            .store_generation(
                runners,
                req.strategy,
                format!("applied {}", req.file),
                false,
            )
            .await?;
        Ok(ApplyOutcome {
            generation,
            changes,
            warnings: file.warnings,
        })
    }

    /// `drover runner delete NAME`: a new generation without it.
    pub async fn delete_runner(
        &self,
        name: &str,
        strategy: Option<Strategy>,
    ) -> Result<ApplyOutcome, FleetError> {
        let current = self.current().await?.map(|c| c.1).unwrap_or_default();
        if !current.iter().any(|r| r.name == name) {
            return Err(FleetError::NoRunner(name.to_string()));
        }
        let runners = current.into_iter().filter(|r| r.name != name).collect();
        let (generation, changes) = self
            .store_generation(runners, strategy, format!("deleted runner {name}"), false)
            .await?;
        Ok(ApplyOutcome {
            generation,
            changes,
            warnings: Vec::new(),
        })
    }

    /// `drover rollout undo`: a new generation with the runners of the one before the
    /// newest.
    pub async fn undo(&self, strategy: Option<Strategy>) -> Result<ApplyOutcome, FleetError> {
        let latest = store::blocking(&self.store, |s| s.latest_generation())
            .await?
            .map(|g| g.generation)
            .unwrap_or(0);
        let previous = match latest.checked_sub(1).filter(|p| *p > 0) {
            Some(p) => p,
            None => return Err(FleetError::NothingToUndo(latest)),
        };
        let g = store::blocking(&self.store, move |s| s.get_generation(previous))
            .await?
            .ok_or(FleetError::NothingToUndo(latest))?;
        let runners = self.runners_of(&g)?;
        let (generation, changes) = self
            .store_generation(
                runners,
                strategy,
                format!("undo: runners of generation {previous}"),
                true,
            )
            .await?;
        Ok(ApplyOutcome {
            generation,
            changes,
            warnings: Vec::new(),
        })
    }
}
