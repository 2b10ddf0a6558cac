//! The disk collector on the engine: lists this agent's builds volumes and the images in its
//! ledger with their sizes, asks [`crate::disk::plan`] what goes, removes it (or, on a dry
//! run, only says so) and updates the ledger. See [`crate::disk`] for the rules.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::DockerExecutor;
use crate::disk::ledger::{ImageOrigin, RemovedEntry, VolumeEntry, pid_alive};
use crate::disk::{Candidate, DiskBudget, ItemKind, Ledger, LedgerError, plan};
use crate::executor::ExecutorError;
use crate::executor::names::{LABEL_AGENT, LABEL_KIND};

/// Volume kinds the collector manages: builds volumes (and cache volumes, should a runner
/// make them), kept between jobs on purpose.
const KEPT_KINDS: &[&str] = &["builds", "cache"];

/// One collection.
#[derive(Debug, Clone)]
pub struct GcRequest<'a> {
    pub agent_id: &'a str,
    pub budget: DiskBudget,
    /// Image references runner specs require (never removed).
    pub required_images: &'a [String],
    /// Bytes to free beyond the budget (free space below the threshold); 0 otherwise.
    pub need_bytes: u64,
    /// Say what would go; remove nothing, write nothing.
    pub dry_run: bool,
    /// Unix seconds.
    pub now: i64,
}

/// Use and bound of one kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindUsage {
    /// Objects counted (after the removals).
    pub count: u64,
    pub bytes: u64,
    pub max_bytes: u64,
    /// `0`: no age bound.
    pub max_idle_secs: u64,
    /// Of `count`, how many must stay (in use, required, delivered).
    pub protected: u64,
}

/// One removal (or, on a dry run, one that would be made).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    pub kind: ItemKind,
    /// Volume name, or the image's references (its id when it has none).
    pub name: String,
    pub bytes: u64,
    /// `idle`, `over budget`, `disk low`.
    pub why: String,
}

/// What a collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub removed: Vec<Removed>,
    /// Bytes freed (or that would be).
    pub freed_bytes: u64,
    pub volumes: KindUsage,
    pub images: KindUsage,
    /// Removals the engine refused, each naming the object.
    pub errors: Vec<String>,
}

/// Why a collection could not run.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Engine(#[from] ExecutorError),
    #[error("disk ledger {0}")]
    Ledger(#[from] LedgerError),
}

impl DockerExecutor {
    /// Runs the collector once (see [`crate::disk`]).
    pub async fn collect_garbage(
        &self,
        ledger: &Ledger,
        req: &GcRequest<'_>,
    ) -> Result<GcReport, GcError> {
        let usage = self.api.disk_usage().await?;
        let data = match ledger.read() {
            Ok(d) => d,
            Err(LedgerError::Io { path, source }) => {
                return Err(LedgerError::Io { path, source }.into());
            }
            Err(e) => {
                tracing::warn!(error = %e, "disk ledger unreadable; every object counts as first seen");
                Default::default()
            }
        };
        let (held_volumes, held_images) = data.held(pid_alive);
        let mut required: BTreeSet<String> = BTreeSet::new();
        for r in req.required_images {
            if let Some(id) = self.api.image_id(r).await? {
                required.insert(id);
            }
        }
        let engine_images: BTreeSet<&str> = usage.images.iter().map(|i| i.id.as_str()).collect();
        let engine_volumes: BTreeSet<&str> =
            usage.volumes.iter().map(|v| v.name.as_str()).collect();

        let mut cands: Vec<Candidate> = Vec::new();
        // Image id -> the references to remove it by.
        let mut image_refs: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut first_seen_volumes: Vec<String> = Vec::new();
        let mut first_seen_images: Vec<(String, Vec<String>)> = Vec::new();
        for v in &usage.volumes {
            let ours = v.labels.get(LABEL_AGENT).map(String::as_str) == Some(req.agent_id)
                && v.labels
                    .get(LABEL_KIND)
                    .is_some_and(|k| KEPT_KINDS.contains(&k.as_str()));
            if !ours {
                continue;
            }
            let last_used = match data.volumes.get(&v.name) {
                Some(e) => e.last_used,
                None => {
                    first_seen_volumes.push(v.name.clone());
                    req.now
                }
            };
            let protected = if held_volumes.contains(&v.name) {
                Some("a running job uses it".to_string())
            } else if v.containers.unwrap_or(0) > 0 {
                Some("a container mounts it".to_string())
            } else {
                None
            };
            cands.push(Candidate {
                kind: ItemKind::Volume,
                name: v.name.clone(),
                bytes: v.size_bytes.unwrap_or(0),
                last_used,
                protected,
            });
        }
        for i in &usage.images {
            let entry = data.images.get(&i.id);
            let origin = entry.map(|e| e.origin);
            let managed = matches!(origin, Some(ImageOrigin::Pulled | ImageOrigin::Delivered));
            if !managed && !req.budget.remove_foreign_images {
                continue;
            }
            let last_used = match entry {
                Some(e) => e.last_used,
                None => {
                    first_seen_images.push((i.id.clone(), i.tags.clone()));
                    req.now
                }
            };
            let protected = if origin == Some(ImageOrigin::Delivered) {
                Some("delivered to this box by drover".to_string())
            } else if required.contains(&i.id) {
                Some("a runner spec requires it".to_string())
            } else if held_images.contains(&i.id) {
                Some("a running job uses it".to_string())
            } else if i.containers.unwrap_or(0) > 0 {
                Some("a container uses it".to_string())
            } else {
                None
            };
            image_refs.insert(i.id.clone(), i.tags.clone());
            cands.push(Candidate {
                kind: ItemKind::Image,
                name: i.id.clone(),
                bytes: i.size_bytes,
                last_used,
                protected,
            });
        }

        let decisions = plan(&cands, &req.budget, req.now, req.need_bytes);
        let mut report = GcReport {
            dry_run: req.dry_run,
            ..Default::default()
        };
        let mut gone: BTreeSet<usize> = BTreeSet::new();
        let mut removed_volumes: Vec<(String, String)> = Vec::new();
        let mut removed_images: Vec<String> = Vec::new();
        for d in &decisions {
            let c = &cands[d.index];
            let refs = image_refs.get(&c.name).cloned().unwrap_or_default();
            let shown = match c.kind {
                ItemKind::Volume => c.name.clone(),
                ItemKind::Image if refs.is_empty() => c.name.clone(),
                ItemKind::Image => refs.join(", "),
            };
            if !req.dry_run {
                let result = match c.kind {
                    ItemKind::Volume => self.api.remove_volume(&c.name).await,
                    ItemKind::Image => self.remove_image_refs(&c.name, &refs).await,
                };
                if let Err(e) = result {
                    report.errors.push(e.to_string());
                    continue;
                }
                match c.kind {
                    ItemKind::Volume => {
                        removed_volumes.push((c.name.clone(), d.why.as_str().to_string()))
                    }
                    ItemKind::Image => removed_images.push(c.name.clone()),
                }
            }
            gone.insert(d.index);
            report.freed_bytes = report.freed_bytes.saturating_add(c.bytes);
            report.removed.push(Removed {
                kind: c.kind,
                name: shown,
                bytes: c.bytes,
                why: d.why.as_str().to_string(),
            });
        }
        for (kind, limit, usage) in [
            (ItemKind::Volume, req.budget.volumes, &mut report.volumes),
            (ItemKind::Image, req.budget.images, &mut report.images),
        ] {
            usage.max_bytes = limit.max_bytes;
            usage.max_idle_secs = limit.max_idle_secs;
            for (i, c) in cands.iter().enumerate() {
                if c.kind != kind || gone.contains(&i) {
                    continue;
                }
                usage.count += 1;
                usage.bytes = usage.bytes.saturating_add(c.bytes);
                if c.protected.is_some() {
                    usage.protected += 1;
                }
            }
        }

        if !req.dry_run {
            let now = req.now;
            ledger.update(|d| {
                for name in &first_seen_volumes {
                    d.volumes
                        .entry(name.clone())
                        .or_insert(VolumeEntry { last_used: now });
                }
                for (id, tags) in &first_seen_images {
                    d.images
                        .entry(id.clone())
                        .or_insert_with(|| crate::disk::ledger::ImageEntry {
                            refs: tags.iter().cloned().collect(),
                            last_used: now,
                            origin: ImageOrigin::Seen,
                        });
                }
                for (name, why) in &removed_volumes {
                    d.volumes.remove(name);
                    d.removed.insert(
                        name.clone(),
                        RemovedEntry {
                            at: now,
                            why: why.clone(),
                        },
                    );
                }
                for id in &removed_images {
                    d.images.remove(id);
                }
                // Objects gone from the engine (removed by hand) leave the ledger; a
                // running job's volume may not exist yet and is kept.
                let held: BTreeSet<String> = d.held(pid_alive).0;
                d.volumes
                    .retain(|n, _| engine_volumes.contains(n.as_str()) || held.contains(n));
                d.images.retain(|id, e| {
                    engine_images.contains(id.as_str()) || e.origin == ImageOrigin::Delivered
                });
            })?;
        }
        Ok(report)
    }

    /// Removes image `id` by each of its references (an image with several is untagged one
    /// at a time, the last removal deleting it), or by id when it has none.
    async fn remove_image_refs(&self, id: &str, refs: &[String]) -> Result<(), ExecutorError> {
        if refs.is_empty() {
            return self.api.remove_image(id).await;
        }
        for r in refs {
            self.api.remove_image(r).await?;
        }
        Ok(())
    }
}
