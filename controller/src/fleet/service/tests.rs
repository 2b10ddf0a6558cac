//! [`Fleet`] against the in-memory store (and SQLite for encryption at rest) and the fake
//! registrar: selection, registration, rollout batches, halt, undo, healing, retirement.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::fleet::messages::{Ack, RunnerAssignment, RunnerEvent, RunnerEventKind, TokenRotated};
use crate::health::clock::Clock;
use crate::health::report::{RunnerStatus, UnitState};
use time::{Duration, OffsetDateTime};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::fleet::registrar::FakeRegistrar;
use crate::server::sessions::SessionGuard;
use crate::store::memory::MemoryStore;
use crate::store::{AgentRecord, Facts, RolloutState, Strategy, StrategyKind};
use crate::tokens::{self, TokenRecord};

const REG: &str = "GR1348941-registration-secret";

fn spec(image: &str, selector: &str) -> String {
    format!(
        r#"
[[runners]]
name = "lab-docker"
url = "https://gitlab.example.com"
registration_token = "{REG}"
executor = "docker"
[runners.selector]
{selector}
[runners.docker]
image = "{image}"
"#
    )
}

struct World {
    fleet: Fleet,
    store: Arc<dyn Store>,
    gitlab: Arc<FakeRegistrar>,
    sessions: Sessions,
    root: CancellationToken,
    guards: Vec<SessionGuard>,
}

fn world_with(store: Arc<dyn Store>) -> World {
    world_of(store, FakeRegistrar::new(REG))
}

fn world_of(store: Arc<dyn Store>, gitlab: FakeRegistrar) -> World {
    let gitlab = Arc::new(gitlab);
    let sessions = Sessions::default();
    let fleet = Fleet::new(
        store.clone(),
        Sealer::from_key([3; 32]),
        gitlab.clone(),
        sessions.clone(),
    );
    World {
        fleet,
        store,
        gitlab,
        sessions,
        root: CancellationToken::new(),
        guards: Vec::new(),
    }
}

fn world() -> World {
    world_with(Arc::new(MemoryStore::new()))
}

impl World {
    /// Enrolls and connects agent `id` with label `site`.
    fn agent(&mut self, id: &str, site: &str) {
        let now = OffsetDateTime::now_utc();
        let token_id = format!("{:016x}", self.guards.len() + 1);
        self.store
            .create_token(&TokenRecord {
                id: token_id.clone(),
                secret_hash: tokens::hash_secret("s"),
                labels: BTreeMap::from([("site".to_string(), site.to_string())]),
                created_at: now,
                expires_at: now + Duration::hours(1),
                uses_left: 1,
                revoked: false,
            })
            .unwrap();
        self.store
            .enroll(
                &token_id,
                &tokens::hash_secret("s"),
                now,
                AgentRecord {
                    id: id.into(),
                    labels: BTreeMap::new(),
                    facts: Facts {
                        hostname: format!("host-{id}"),
                        ..Facts::default()
                    },
                    enrolled_at: now,
                    last_seen: None,
                    cert_serial: "01".into(),
                    cert_not_after: now + Duration::days(1),
                    revoked_at: None,
                    applied_generation: 0,
                },
            )
            .unwrap();
        self.guards.push(self.sessions.register(id, &self.root));
    }

    async fn apply(
        &self,
        text: &str,
        strategy: Option<Strategy>,
    ) -> Result<ApplyOutcome, FleetError> {
        self.fleet
            .apply(ApplyRequest {
                file: "runners.toml".into(),
                text: text.into(),
                strategy,
                ..ApplyRequest::default()
            })
            .await
    }

    fn target(&self, id: &str) -> u64 {
        self.store
            .agent_rollouts()
            .unwrap()
            .into_iter()
            .find(|r| r.agent_id == id)
            .map(|r| r.target_generation)
            .unwrap_or(0)
    }

    async fn ack(&self, id: &str, generation: u64, error: Option<&str>) {
        self.fleet
            .on_ack(
                id,
                &Ack {
                    generation,
                    refused: error.map(str::to_string),
                },
            )
            .await;
    }

    fn state(&self) -> RolloutState {
        self.store.latest_generation().unwrap().unwrap().state
    }
}

fn all() -> Option<Strategy> {
    Some(Strategy {
        kind: StrategyKind::All,
        max_unavailable: 1,
        gate: None,
    })
}

fn rolling(n: u32) -> Option<Strategy> {
    Some(Strategy {
        kind: StrategyKind::Rolling,
        max_unavailable: n,
        gate: None,
    })
}

#[tokio::test]
async fn apply_registers_for_selected_agents_and_builds_desired_state() {
    let mut w = world();
    w.agent("a1", "lab");
    w.agent("a2", "other");
    let out = w
        .apply(&spec("alpine:3.20", "site = \"lab\""), all())
        .await
        .unwrap();
    assert_eq!(out.generation, 1);
    assert_eq!(out.changes[0].kind, "added");
    let live = w.gitlab.live();
    assert_eq!(
        live.len(),
        1,
        "one GitLab runner, for the selected agent only"
    );
    let (token, reg) = live.values().next().unwrap().clone();
    assert_eq!(reg.description, "lab-docker on host-a1");

    let ds = w.fleet.desired_state("a1").await.unwrap().unwrap();
    assert_eq!(ds.generation, 1);
    assert_eq!(ds.runners.len(), 1);
    assert_eq!(ds.runners[0].runner_token.expose_secret(), token);
    assert_eq!(ds.runners[0].gitlab_runner_id, 1);
    assert!(
        !ds.runners[0].spec_json.contains(REG),
        "registration token never leaves"
    );
    let other = w.fleet.desired_state("a2").await.unwrap().unwrap();
    assert_eq!((other.generation, other.runners.len()), (1, 0));

    // Same file again: nothing new. A refused file: nothing changes.
    assert_eq!(
        w.apply(&spec("alpine:3.20", "site = \"lab\""), all())
            .await
            .unwrap()
            .generation,
        0
    );
    let err = w
        .apply(
            &spec("alpine:3.20", "site = \"lab\"").replace(
                "docker\"\n[runners.selector]",
                "shell\"\n[runners.selector]",
            ),
            all(),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("runners.toml:6:12: runners[0].executor"),
        "{err}"
    );
    assert_eq!(w.store.latest_generation().unwrap().unwrap().generation, 1);
    assert_eq!(w.gitlab.live().len(), 1);

    // A change that keeps the registration reuses the GitLab runner.
    let out = w
        .apply(&spec("alpine:3.21", "site = \"lab\""), all())
        .await
        .unwrap();
    assert_eq!(out.generation, 2);
    assert_eq!(
        out.changes[0].details,
        ["docker.image: \"alpine:3.20\" -> \"alpine:3.21\""]
    );
    assert_eq!(w.gitlab.live().len(), 1);
    assert_eq!(
        w.fleet.desired_state("a1").await.unwrap().unwrap().runners[0]
            .runner_token
            .expose_secret(),
        token
    );
}

#[tokio::test]
async fn rolling_rollout_halts_on_refusal_and_undo_restores() {
    let mut w = world();
    for id in ["a1", "a2", "a3"] {
        w.agent(id, "lab");
    }
    w.apply(&spec("alpine:3.20", "site = \"lab\""), all())
        .await
        .unwrap();
    for id in ["a1", "a2", "a3"] {
        w.ack(id, 1, None).await;
    }
    assert_eq!(w.state(), RolloutState::Complete);

    w.apply(&spec("alpine:broken", "site = \"lab\""), rolling(1))
        .await
        .unwrap();
    assert_eq!(
        (w.target("a1"), w.target("a2"), w.target("a3")),
        (2, 1, 1),
        "first batch only"
    );
    w.ack("a1", 2, Some("image alpine:broken not present"))
        .await;
    assert_eq!(w.state(), RolloutState::Halted);
    let g = w.store.latest_generation().unwrap().unwrap();
    assert!(
        g.reason.contains("agent a1 refused generation 2"),
        "{}",
        g.reason
    );
    w.fleet.reconcile().await;
    assert_eq!(
        (w.target("a2"), w.target("a3")),
        (1, 1),
        "halted: nobody else gets it"
    );
    assert_eq!(
        w.fleet
            .desired_state("a2")
            .await
            .unwrap()
            .unwrap()
            .generation,
        1
    );

    let out = w.fleet.undo(rolling(1)).await.unwrap();
    assert_eq!(out.generation, 3);
    let ds = w.fleet.desired_state("a1").await.unwrap().unwrap();
    assert_eq!(ds.generation, 3);
    assert!(ds.runners[0].spec_json.contains("alpine:3.20"));
    assert_eq!(w.target("a2"), 1);
    w.ack("a1", 3, None).await;
    assert_eq!(w.target("a2"), 3);
    w.ack("a2", 3, None).await;
    w.ack("a3", 3, None).await;
    assert_eq!(w.state(), RolloutState::Complete);
}

#[tokio::test]
async fn token_invalid_re_registers_and_retires_the_old_runner() {
    let mut w = world();
    w.agent("a1", "lab");
    w.apply(&spec("alpine:3.20", ""), all()).await.unwrap();
    let old = w.fleet.desired_state("a1").await.unwrap().unwrap().runners[0].clone();
    // GitLab still takes the token: the claim is refused, nothing registered or deleted.
    let claim = w.fleet.on_runner_event("a1", &token_invalid()).await;
    assert!(
        matches!(&claim, Claim::Refused(why) if why.contains("gitlab accepts the token of gitlab runner 1")),
        "{claim:?}"
    );
    assert_eq!(w.gitlab.live().len(), 1);
    assert!(w.gitlab.unregistered().is_empty());
    // Attempts are spaced: at once again, it is not even checked.
    w.gitlab.revoke(old.gitlab_runner_id);
    w.fleet.on_runner_event("a1", &token_invalid()).await;
    assert_eq!(w.gitlab.live().len(), 1, "ignored within HEAL_INTERVAL");
    w.fleet.runtime().get_mut("a1").unwrap().healed.clear(); // HEAL_INTERVAL later
    w.fleet.on_runner_event("a1", &token_invalid()).await;
    let new = w.fleet.desired_state("a1").await.unwrap().unwrap().runners[0].clone();
    assert_ne!(
        new.runner_token.expose_secret(),
        old.runner_token.expose_secret()
    );
    assert_eq!(new.gitlab_runner_id, 2);
    // The old runner's own token is dead: nothing can unregister it (GitLab keeps it
    // listed; a runner_creation_token deletes it by id, see below), and it is not retried.
    assert!(w.gitlab.unregistered().is_empty());
    assert!(w.store.list_retired().unwrap().is_empty());
    // Repeated at once: not registered again.
    w.fleet
        .on_runner_event(
            "a1",
            &RunnerEvent {
                runner: "lab-docker".into(),
                kind: RunnerEventKind::TokenInvalid,
                message: "again".into(),
                at: None,
            },
        )
        .await;
    assert_eq!(w.gitlab.live().len(), 2);
    assert_eq!(
        w.fleet.desired_state("a1").await.unwrap().unwrap().runners[0]
            .runner_token
            .expose_secret(),
        new.runner_token.expose_secret()
    );

    // A rotation reported by the agent, checked with GitLab, is what later pushes carry,
    // with GitLab's expiry (not the one the agent claims).
    let expires = OffsetDateTime::from_unix_timestamp(2_000_000_000).unwrap();
    let rotated = w.gitlab.rotate(2, Some(expires)).unwrap();
    let claim = w
        .fleet
        .on_token_rotated("a1", &rotation(&rotated, 2, 2_100_000_000))
        .await;
    assert_eq!(claim, Claim::Accepted("verified with gitlab".into()));
    let ds = w.fleet.desired_state("a1").await.unwrap().unwrap();
    assert_eq!(ds.runners[0].runner_token.expose_secret(), rotated);
    assert_eq!(
        ds.runners[0].token_expires_at.unwrap().unix_timestamp(),
        2_000_000_000
    );
    assert_eq!(ds.runners[0].gitlab_runner_id, 2);
}

fn token_invalid() -> RunnerEvent {
    RunnerEvent {
        runner: "lab-docker".into(),
        kind: RunnerEventKind::TokenInvalid,
        message: "403 on job request".into(),
        at: None,
    }
}

fn rotation(token: &str, gitlab_runner_id: i64, expires: i64) -> TokenRotated {
    TokenRotated {
        runner: "lab-docker".into(),
        token: token.into(),
        token_expires_at: Some(OffsetDateTime::from_unix_timestamp(expires).unwrap()),
        gitlab_runner_id,
    }
}

/// What a pushed runner says, secret exposed, to compare two pushes.
fn plain(r: &RunnerAssignment) -> (String, String, String, i64, Option<OffsetDateTime>) {
    (
        r.name.clone(),
        r.spec_json.clone(),
        r.runner_token.expose_secret().to_string(),
        r.gitlab_runner_id,
        r.token_expires_at,
    )
}

/// Issue 15 item 1: an agent's certificate (cloned or stolen) sends another runner's id or
/// token. The controller keeps its own record, never deletes the foreign runner, and the
/// agent's own runner is the one retired after a (true) `token-invalid`.
#[tokio::test]
async fn agent_claims_of_foreign_runners_are_refused_and_never_acted_on() {
    const ACCESS: &str = "glpat-creation-secret";
    let mut w = world_of(
        Arc::new(MemoryStore::new()),
        FakeRegistrar::new(REG).with_access_token(ACCESS),
    );
    w.agent("a1", "lab");
    w.agent("a2", "lab");
    let text = format!(
        r#"
[[runners]]
name = "lab-docker"
url = "https://gitlab.example.com"
runner_creation_token = "{ACCESS}"
executor = "docker"
[runners.docker]
image = "alpine:3.20"
"#
    );
    w.apply(&text, all()).await.unwrap();
    let own = w.fleet.desired_state("a1").await.unwrap().unwrap().runners[0].clone();
    let foreign = w.fleet.desired_state("a2").await.unwrap().unwrap().runners[0].clone();
    assert_ne!(own.gitlab_runner_id, foreign.gitlab_runner_id);

    // A foreign runner id: refused, nothing recorded.
    let claim = w
        .fleet
        .on_token_rotated(
            "a1",
            &rotation("glrt-made-up", foreign.gitlab_runner_id, 2_000_000_000),
        )
        .await;
    assert!(
        matches!(&claim, Claim::Refused(why) if why.contains(&format!("names gitlab runner {}", foreign.gitlab_runner_id))),
        "{claim:?}"
    );
    // The foreign runner's own token, without an id: GitLab says whose it is; refused.
    let claim = w
        .fleet
        .on_token_rotated(
            "a1",
            &rotation(foreign.runner_token.expose_secret(), 0, 2_000_000_000),
        )
        .await;
    assert!(
        matches!(&claim, Claim::Refused(why) if why.contains("belongs to gitlab runner")),
        "{claim:?}"
    );
    // A token GitLab does not know: refused.
    let claim = w
        .fleet
        .on_token_rotated("a1", &rotation("glrt-made-up", 0, 2_000_000_000))
        .await;
    assert_eq!(
        claim,
        Claim::Refused("gitlab does not accept the reported token".into())
    );
    // A runner this agent does not have: refused.
    let mut other = rotation("glrt-made-up", 0, 2_000_000_000);
    other.runner = "elsewhere".into();
    assert!(matches!(
        w.fleet.on_token_rotated("a1", &other).await,
        Claim::Refused(_)
    ));
    let kept = w.fleet.desired_state("a1").await.unwrap().unwrap().runners[0].clone();
    assert_eq!(plain(&kept), plain(&own), "the record is unchanged");

    // The agent's own token is revoked and it says so: its own runner is the one deleted.
    w.gitlab.revoke(own.gitlab_runner_id);
    let claim = w.fleet.on_runner_event("a1", &token_invalid()).await;
    assert_eq!(claim, Claim::Accepted("re-registered".into()));
    assert_eq!(w.gitlab.unregistered(), [own.gitlab_runner_id]);
    let new = w.fleet.desired_state("a1").await.unwrap().unwrap().runners[0].clone();
    let mut live: Vec<i64> = w.gitlab.live().keys().copied().collect();
    live.sort();
    assert_eq!(live, [foreign.gitlab_runner_id, new.gitlab_runner_id]);
}

/// A rotation GitLab cannot be asked about is kept (the old token is dead at GitLab), and
/// retiring the runner later checks the token first: a token that turns out to be another
/// runner's never unregisters that runner.
#[tokio::test]
async fn an_unverified_token_never_unregisters_another_runner() {
    let mut w = world();
    w.agent("a1", "lab");
    w.agent("a2", "lab");
    w.apply(&spec("alpine:3.20", ""), all()).await.unwrap();
    let foreign = w.fleet.desired_state("a2").await.unwrap().unwrap().runners[0].clone();
    w.gitlab.set_down(true);
    let claim = w
        .fleet
        .on_token_rotated(
            "a1",
            &rotation(foreign.runner_token.expose_secret(), 0, 2_000_000_000),
        )
        .await;
    assert!(
        matches!(&claim, Claim::Accepted(how) if how.starts_with("kept unverified")),
        "{claim:?}"
    );
    w.gitlab.set_down(false);
    // The runner is deleted from the spec; a1 moves on: its retired runner is checked.
    w.apply(&spec("alpine:3.20", "site = \"elsewhere\""), all())
        .await
        .unwrap();
    w.ack("a1", 2, None).await;
    w.fleet.reconcile().await;
    assert!(
        !w.gitlab.unregistered().contains(&foreign.gitlab_runner_id),
        "{:?}",
        w.gitlab.unregistered()
    );
    assert!(w.gitlab.live().contains_key(&foreign.gitlab_runner_id));
}

#[tokio::test]
async fn deleted_spec_unregisters_once_the_agent_moved_on_and_deleted_agent_at_once() {
    let mut w = world();
    w.agent("a1", "lab");
    w.agent("a2", "lab");
    w.apply(&spec("alpine:3.20", ""), all()).await.unwrap();
    w.ack("a1", 1, None).await;
    w.ack("a2", 1, None).await;
    assert_eq!(w.gitlab.live().len(), 2);

    let out = w.fleet.delete_runner("lab-docker", all()).await.unwrap();
    assert_eq!(out.generation, 2);
    assert_eq!(
        w.fleet
            .desired_state("a1")
            .await
            .unwrap()
            .unwrap()
            .runners
            .len(),
        0
    );
    assert!(
        w.gitlab.unregistered().is_empty(),
        "old units keep running until acked"
    );
    w.ack("a1", 2, None).await;
    assert_eq!(w.gitlab.unregistered(), [1]);
    assert!(matches!(
        w.fleet.delete_runner("lab-docker", None).await,
        Err(FleetError::NoRunner(_))
    ));

    w.fleet.undo(all()).await.unwrap();
    // Both registered anew; a2's first runner (2) still waits for a2 to run generation 2.
    assert_eq!(w.gitlab.live().len(), 3);
    w.store
        .revoke_agent("a2", OffsetDateTime::now_utc())
        .unwrap();
    w.fleet.on_agent_deleted("a2").await;
    assert_eq!(
        w.gitlab.unregistered(),
        [1, 2, 4],
        "a deleted agent's runners go at once"
    );
    assert_eq!(w.gitlab.live().len(), 1);
}

#[tokio::test]
async fn gitlab_outage_blocks_the_agent_and_is_retried() {
    let mut w = world();
    w.agent("a1", "lab");
    w.gitlab.set_down(true);
    w.apply(&spec("alpine:3.20", ""), all()).await.unwrap();
    assert_eq!(w.target("a1"), 0);
    assert!(
        w.fleet
            .agent_error("a1")
            .unwrap()
            .contains("connection refused")
    );
    assert!(w.fleet.desired_state("a1").await.unwrap().is_none());
    w.gitlab.set_down(false);
    w.fleet.reconcile().await;
    assert_eq!(w.target("a1"), 1);
    assert_eq!(w.fleet.agent_error("a1"), None);
}

#[tokio::test]
async fn secrets_are_encrypted_at_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::store::sqlite::SqliteStore::open(&dir.path().join("drover.db")).unwrap();
    let mut w = world_with(Arc::new(store));
    w.agent("a1", "lab");
    w.apply(&spec("alpine:3.20", ""), all()).await.unwrap();
    let token = w.fleet.desired_state("a1").await.unwrap().unwrap().runners[0]
        .runner_token
        .expose_secret()
        .to_string();
    assert!(token.starts_with("glrt-fake-"));
    let rotated = w.gitlab.rotate(1, None).unwrap();
    let claim = w
        .fleet
        .on_token_rotated(
            "a1",
            &TokenRotated {
                runner: "lab-docker".into(),
                token: rotated.clone().into(),
                token_expires_at: None,
                gitlab_runner_id: 0,
            },
        )
        .await;
    assert!(matches!(claim, Claim::Accepted(_)), "{claim:?}");
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    assert!(
        bytes
            .windows(b"alpine:3.20".len())
            .all(|w| w != b"alpine:3.20"),
        "specs are sealed"
    );
    for secret in [REG, &token, &rotated] {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} found in the database files"
        );
    }
}

#[tokio::test]
async fn runner_creation_token_creates_runners_and_deletes_dead_ones_by_id() {
    const ACCESS: &str = "glpat-creation-secret";
    let mut w = world_of(
        Arc::new(MemoryStore::new()),
        FakeRegistrar::new(REG).with_access_token(ACCESS),
    );
    w.agent("a1", "lab");
    let text = format!(
        r#"
[[runners]]
name = "lab-docker"
url = "https://gitlab.example.com"
runner_creation_token = "{ACCESS}"
runner_type = "group_type"
group_id = 42
executor = "docker"
[runners.docker]
image = "alpine:3.20"
"#
    );
    w.apply(&text, all()).await.unwrap();
    let ds = w.fleet.desired_state("a1").await.unwrap().unwrap();
    let old = ds.runners[0].clone();
    assert_eq!(w.gitlab.live().len(), 1);
    assert!(
        !old.spec_json.contains(ACCESS),
        "the access token stays home"
    );
    // GitLab revoked the runner's token: its own token cannot unregister it any more, the
    // access token deletes it by id.
    w.gitlab.revoke(old.gitlab_runner_id);
    w.fleet
        .on_runner_event(
            "a1",
            &RunnerEvent {
                runner: "lab-docker".into(),
                kind: RunnerEventKind::TokenInvalid,
                message: "403 on job request".into(),
                at: None,
            },
        )
        .await;
    let new = w.fleet.desired_state("a1").await.unwrap().unwrap().runners[0].clone();
    assert_ne!(new.gitlab_runner_id, old.gitlab_runner_id);
    assert_eq!(w.gitlab.unregistered(), [old.gitlab_runner_id]);
    assert_eq!(
        w.gitlab.live().keys().copied().collect::<Vec<_>>(),
        [new.gitlab_runner_id]
    );
    // A bad runner_type is refused with the field named.
    let bad = text.replace("group_type", "galaxy_type");
    let e = w.apply(&bad, all()).await.unwrap_err().to_string();
    assert!(
        e.contains("runner_type") && e.contains("galaxy_type"),
        "{e}"
    );
    let no_group = text.replace("group_id = 42\n", "");
    let e = w.apply(&no_group, all()).await.unwrap_err().to_string();
    assert!(e.contains("needs group_id"), "{e}");
}

#[tokio::test]
async fn runner_statuses_take_identity_from_assignments_and_state_from_heartbeats() {
    let mut w = world();
    w.agent("a1", "lab");
    w.apply(&spec("alpine:3.20", ""), all()).await.unwrap();
    let current = w.fleet.desired_state("a1").await.unwrap().unwrap().runners[0].gitlab_runner_id;
    // Before any heartbeat: the assignment, state unknown.
    let before = w.fleet.runner_statuses("a1").await;
    assert_eq!(before.len(), 1);
    assert_eq!(before[0].gitlab_runner_id, current);
    assert_eq!(before[0].state, None);
    // A heartbeat sent while the retired unit was still stopping and the new one running.
    w.fleet.on_heartbeat(
        "a1",
        &[
            RunnerStatus {
                name: "lab-docker".into(),
                state: Some(UnitState::Stopped),
                gitlab_runner_id: current + 100,
                ..Default::default()
            },
            RunnerStatus {
                name: "lab-docker".into(),
                state: Some(UnitState::Running),
                gitlab_runner_id: current,
                jobs_succeeded: 3,
                ..Default::default()
            },
        ],
    );
    let got = w.fleet.runner_statuses("a1").await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].gitlab_runner_id, current);
    assert_eq!(got[0].state, Some(UnitState::Running));
    assert_eq!(got[0].jobs_succeeded, 3);
    assert_eq!(got[1].gitlab_runner_id, current + 100);
    assert_eq!(got[1].state, Some(UnitState::Stopped));
}

/// Imports that each fit their bounds but add up past what a fleet can carry are refused,
/// dry run included, and nothing is stored.
#[tokio::test]
async fn merged_imports_are_bounded_before_a_generation_is_stored() {
    let w = world();
    let file = |from: usize, image_len: usize| -> String {
        (from..from + 100)
            .map(|i| {
                spec(&"a".repeat(image_len), "site = \"lab\"")
                    .replace("lab-docker", &format!("r{i}"))
                    .replace(
                        "[runners.docker]",
                        &format!(
                            "[runners.docker]\nallowed_images = [{}]",
                            vec![format!("\"{}\"", "b".repeat(image_len)); 8].join(",")
                        ),
                    )
            })
            .collect()
    };
    let import = |text: String, dry_run: bool| ApplyRequest {
        file: "config.toml".into(),
        text,
        merge: true,
        dry_run,
        ..ApplyRequest::default()
    };
    let mut stored = 0;
    let mut refused = None;
    for n in 0..10 {
        match w.fleet.apply(import(file(n * 100, 400), false)).await {
            Ok(o) => stored = o.generation,
            Err(e) => {
                refused = Some((n, e.to_string()));
                break;
            }
        }
    }
    let (n, e) = refused.expect("ten imports of 100 large runners were all accepted");
    assert!(n >= 5, "refused too early, at import {n}: {e}");
    assert!(
        e.starts_with("config.toml: runners: an agent that matches every selector would receive"),
        "{e}"
    );
    assert_eq!(
        w.store.latest_generation().unwrap().unwrap().generation,
        stored
    );
    let dry = w.fleet.apply(import(file(n * 100, 400), true)).await;
    assert!(dry.is_err(), "a dry run says the same");
}

fn gated(canary: u32, window_secs: u64, auto_rollback: bool) -> Option<Strategy> {
    Some(Strategy {
        kind: StrategyKind::Rolling,
        max_unavailable: 1,
        gate: Some(crate::store::Gate {
            canary,
            window_secs,
            max_failure_permille: 0,
            auto_rollback,
        }),
    })
}

/// Agents a1 and a2 (site lab) on generation 1, the fleet judging gates on a fake clock.
async fn gated_world() -> (World, Arc<crate::health::clock::FakeClock>) {
    let clock = Arc::new(crate::health::clock::FakeClock::new(
        OffsetDateTime::now_utc(),
    ));
    let mut w = world();
    w.fleet = w.fleet.with_gate_clock(clock.clone());
    for id in ["a1", "a2"] {
        w.agent(id, "lab");
    }
    w.apply(&spec("alpine:3.20", "site = \"lab\""), all())
        .await
        .unwrap();
    w.ack("a1", 1, None).await;
    w.ack("a2", 1, None).await;
    (w, clock)
}

fn system_failure(agent: &str, job_id: i64, at: OffsetDateTime) -> crate::store::JobRecord {
    crate::store::JobRecord {
        agent_id: agent.into(),
        job_id,
        runner: "lab-docker".into(),
        state: "failed".into(),
        failure_reason: "runner_system_failure".into(),
        started_at: Some(at),
        finished_at: Some(at),
        duration_ms: Some(10),
        queue_wait_ms: None,
        updated_at: at,
    }
}

#[tokio::test]
async fn a_gated_rollout_holds_each_batch_for_its_window() {
    let (w, clock) = gated_world().await;
    w.apply(&spec("alpine:3.21", "site = \"lab\""), gated(1, 60, false))
        .await
        .unwrap();
    assert_eq!((w.target("a1"), w.target("a2")), (2, 1), "the canary only");
    w.ack("a1", 2, None).await;
    clock.advance(Duration::seconds(59));
    w.fleet.reconcile().await;
    assert_eq!(w.target("a2"), 1, "held for the window");
    // A script failure is the job's own: it does not count.
    let mut script = system_failure("a1", 7, clock.now());
    script.failure_reason = "script_failure".into();
    w.store.upsert_jobs(&[script]).unwrap();
    clock.advance(Duration::seconds(1));
    w.fleet.reconcile().await;
    assert_eq!(w.target("a2"), 2, "the window passed");
    w.ack("a2", 2, None).await;
    assert_eq!(
        w.state(),
        RolloutState::Progressing,
        "the last batch is watched too"
    );
    clock.advance(Duration::seconds(60));
    w.fleet.reconcile().await;
    assert_eq!(w.state(), RolloutState::Complete);
}

#[tokio::test]
async fn a_system_failure_halts_at_the_canary_and_auto_rollback_undoes() {
    let (w, clock) = gated_world().await;

    // Without auto-rollback: halted with the reason, nobody else gets it.
    w.apply(&spec("alpine:bad", "site = \"lab\""), gated(1, 60, false))
        .await
        .unwrap();
    w.ack("a1", 2, None).await;
    clock.advance(Duration::seconds(5));
    w.store
        .upsert_jobs(&[system_failure("a1", 8, clock.now())])
        .unwrap();
    w.fleet.reconcile().await;
    let g = w.store.latest_generation().unwrap().unwrap();
    assert_eq!((g.generation, g.state), (2, RolloutState::Halted));
    assert!(
        g.reason.contains("1 of 1 jobs ended with a system failure")
            && g.reason.contains("agent a1"),
        "{}",
        g.reason
    );
    clock.advance(Duration::seconds(120));
    w.fleet.reconcile().await;
    assert_eq!(w.target("a2"), 1, "halted at the canary");

    // With auto-rollback: undone to the newest generation that did not halt (1).
    w.apply(&spec("alpine:worse", "site = \"lab\""), gated(1, 60, true))
        .await
        .unwrap();
    assert_eq!((w.target("a1"), w.target("a2")), (3, 1));
    w.ack("a1", 3, None).await;
    clock.advance(Duration::seconds(5));
    w.store
        .upsert_jobs(&[system_failure("a1", 9, clock.now())])
        .unwrap();
    w.fleet.reconcile().await;
    let halted = w.store.get_generation(3).unwrap().unwrap();
    assert_eq!(halted.state, RolloutState::Halted);
    let back = w.store.latest_generation().unwrap().unwrap();
    assert_eq!(back.generation, 4);
    assert!(
        back.reason
            .starts_with("auto-rollback of generation 3: runners of generation 1 (health gate:"),
        "{}",
        back.reason
    );
    assert_eq!(
        (w.target("a1"), w.target("a2")),
        (4, 4),
        "every agent at once"
    );
    let ds = w.fleet.desired_state("a1").await.unwrap().unwrap();
    assert!(ds.runners[0].spec_json.contains("alpine:3.20"));
}

/// On a replica that does not lead, acks arriving together are written by one writer in
/// a few rounds (each asking the leader for a pass), none lost.
#[tokio::test]
async fn a_follower_writes_acks_arriving_together_in_a_few_rounds() {
    let w = world();
    let (_role_tx, role) = tokio::sync::watch::channel(crate::replicas::Role::Follower);
    let (publisher, mut published) = crate::replicas::fanout::Publisher::new();
    let cluster = crate::replicas::Cluster::replica(role, publisher);
    let fleet = Arc::new(w.fleet.in_cluster(cluster, w.store.clone(), None));
    let ids: Vec<String> = (0..50).map(|i| format!("a{i:02}")).collect();
    // Each session's worker is a task of its own.
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| {
            let (fleet, id) = (fleet.clone(), id.clone());
            tokio::spawn(async move {
                let ack = Ack {
                    generation: 3,
                    refused: None,
                };
                fleet.on_ack(&id, &ack).await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let written: Vec<(String, u64)> = w
        .store
        .agent_rollouts()
        .unwrap()
        .into_iter()
        .map(|r| (r.agent_id, r.ack_generation))
        .collect();
    assert_eq!(
        written,
        ids.iter().map(|id| (id.clone(), 3)).collect::<Vec<_>>()
    );
    let rounds = std::iter::from_fn(|| published.try_recv().ok()).count();
    assert!((1..=3).contains(&rounds), "{rounds} rounds for 50 acks");
}
