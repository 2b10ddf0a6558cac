//! End-to-end, controller side of fleet runner management: the real `drover serve`, the
//! fake GitLab, and test-side agents that enroll through the real Enrollment RPC and speak
//! the Session stream by hand (so every DesiredState, Ack and event is visible).
//!
//! Checks: apply registers one GitLab runner per selected agent and pushes its token; a
//! bad spec is refused and changes nothing; acks show in `drover rollout status -o json`
//! and `drover agents -o json`; `token-invalid` re-registers, pushes the new token and
//! unregisters the old runner; deleting the spec unregisters; undo brings it back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use drover_controller::client::{self, ClientIdentity};
use drover_proto::v1;
use drover_proto::v1::agent_message::Kind as AgentKind;
use drover_proto::v1::controller_message::Kind as ControllerKind;
use drover_tests::fake_agent;
use drover_tests::fake_gitlab::FakeGitLab;
use drover_tests::harness::{Controller, stderr, stdout, wait_for};
use secrecy::SecretString;
use tokio::sync::mpsc;

use drover_tests::fleet_support::{init_crypto as init, json};

/// A test-side agent: enrolled identity, one open session, heartbeats every 300 ms.
struct FakeAgent {
    id: String,
    tx: mpsc::Sender<v1::AgentMessage>,
    inbound: tonic::Streaming<v1::ControllerMessage>,
    applied: Arc<AtomicU64>,
    runners: Arc<std::sync::Mutex<Vec<v1::RunnerStatus>>>,
}

impl FakeAgent {
    async fn enroll_and_connect(c: &Controller, token: &str, hostname: &str) -> FakeAgent {
        let enrolled = fake_agent::enroll(c, token, hostname).await.unwrap();
        let (tx, inbound) = fake_agent::open_session(&c.grpc_addr, &c.read("ca.crt"), &enrolled, 0)
            .await
            .unwrap();
        let applied = Arc::new(AtomicU64::new(0));
        let runners = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (hb_tx, hb_applied, hb_runners) = (tx.clone(), applied.clone(), runners.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let hb = v1::Heartbeat {
                    applied_generation: hb_applied.load(Ordering::SeqCst),
                    runners: hb_runners.lock().unwrap().clone(),
                    ips: vec!["10.0.0.7".into()],
                    ..Default::default()
                };
                let msg = v1::AgentMessage {
                    kind: Some(AgentKind::Heartbeat(hb)),
                };
                if hb_tx.send(msg).await.is_err() {
                    break;
                }
            }
        });
        FakeAgent {
            id: enrolled.id,
            tx,
            inbound,
            applied,
            runners,
        }
    }

    /// The next DesiredState pushed to this agent.
    async fn desired(&mut self) -> v1::DesiredState {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let msg = tokio::time::timeout_at(deadline, self.inbound.message())
                .await
                .unwrap_or_else(|_| panic!("agent {}: no desired state within 20 s", self.id))
                .unwrap()
                .unwrap();
            if let Some(ControllerKind::DesiredState(ds)) = msg.kind {
                return ds;
            }
        }
    }

    /// The first DesiredState of `generation` or newer (older pushes are skipped).
    async fn desired_at(&mut self, generation: u64) -> v1::DesiredState {
        loop {
            let ds = self.desired().await;
            if ds.generation >= generation {
                return ds;
            }
        }
    }

    async fn send(&self, kind: AgentKind) {
        self.tx
            .send(v1::AgentMessage { kind: Some(kind) })
            .await
            .unwrap();
    }

    async fn ack(&self, generation: u64, error: Option<&str>) {
        if error.is_none() {
            self.applied.store(generation, Ordering::SeqCst);
        }
        self.send(AgentKind::Ack(v1::Ack {
            generation,
            applied: error.is_none(),
            error: error.unwrap_or_default().into(),
        }))
        .await;
    }
}

fn spec(gitlab: &str, image: &str, executor: &str) -> String {
    format!(
        r#"# e2e runner spec
[[runners]]
name = "lab-docker"
url = "{gitlab}"
registration_token = "GR1348941-e2e-secret"
description = "{{name}} on {{hostname}} ({{agent_id}})"
tag_list = ["edge"]
limit = 2
executor = "{executor}"
[runners.selector]
site = "lab"
[runners.docker]
image = "{image}"
pull_policy = "if-not-present"
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_ack_heal_delete_undo() {
    init();
    let gitlab = FakeGitLab::start().await;
    gitlab.add_registration_token("GR1348941-e2e-secret");
    let c = Controller::start();
    let lab_token = c.create_token(&["--label", "site=lab"]);
    let other_token = c.create_token(&["--label", "site=other"]);
    let mut lab = FakeAgent::enroll_and_connect(&c, &lab_token, "box-lab").await;
    let mut other = FakeAgent::enroll_and_connect(&c, &other_token, "box-other").await;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("runners.toml");
    let file_arg = file.to_str().unwrap();

    // Dry run: the diff, nothing stored, nothing registered.
    std::fs::write(&file, spec(gitlab.url(), "alpine:3.20", "docker")).unwrap();
    let out = c.drover(&["runner", "apply", "-f", file_arg, "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("+ lab-docker (added)"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        json(&c.drover(&["rollout", "status", "-o", "json"]))["state"],
        "none"
    );
    assert!(gitlab.runners().is_empty());

    // Apply: one GitLab runner for the selected agent; its token pushed to it only.
    let out = c.drover(&["runner", "apply", "-f", file_arg, "--strategy", "all"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("+ lab-docker (added)"),
        "{}",
        stdout(&out)
    );
    let ds = lab.desired().await;
    assert_eq!(ds.generation, 1);
    assert_eq!(ds.runners.len(), 1);
    let first = ds.runners[0].clone();
    assert!(
        first.runner_token.starts_with("glrt-"),
        "{}",
        first.runner_token
    );
    assert!(
        !first.spec_json.contains("GR1348941"),
        "registration token stays home"
    );
    let spec_back: drover_proto::spec::RunnerConfig =
        serde_json::from_str(&first.spec_json).unwrap();
    assert_eq!(
        spec_back.docker.unwrap().image.as_deref(),
        Some("alpine:3.20")
    );
    let registered = gitlab.runners();
    assert_eq!(registered.len(), 1);
    assert_eq!(registered[0].token, first.runner_token);
    assert_eq!(registered[0].id, first.gitlab_runner_id);
    assert_eq!(registered[0].tag_list, ["edge"]);
    assert_eq!(
        registered[0].description,
        format!("lab-docker on box-lab ({})", lab.id)
    );
    let ds_other = other.desired().await;
    assert_eq!((ds_other.generation, ds_other.runners.len()), (1, 0));

    // A bad spec is refused with file, line and field; nothing changes.
    std::fs::write(&file, spec(gitlab.url(), "alpine:3.20", "shell")).unwrap();
    let out = c.drover(&["runner", "apply", "-f", file_arg]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{file_arg}:9:12: runners[0].executor")) && err.contains("shell"),
        "{err}"
    );
    let runners = json(&c.drover(&["runner", "list", "-o", "json"]));
    assert_eq!(runners[0]["generation"], 1);
    assert_eq!(runners[0]["spec"]["executor"], "docker");
    assert_eq!(runners[0]["spec"]["registration_token"], "<redacted>");
    assert_eq!(gitlab.runners().len(), 1);

    // Acks and heartbeats show in rollout status and agents.
    lab.ack(1, None).await;
    other.ack(1, None).await;
    *lab.runners.lock().unwrap() = vec![v1::RunnerStatus {
        name: "lab-docker".into(),
        state: "running".into(),
        gitlab_runner_id: first.gitlab_runner_id,
        ..Default::default()
    }];
    let status = wait_for(Duration::from_secs(20), "rollout complete", || {
        let s = json(&c.drover(&["rollout", "status", "-o", "json"]));
        (s["state"] == "complete").then_some(s)
    });
    assert_eq!(status["generation"], 1);
    for a in status["agents"].as_array().unwrap() {
        assert_eq!(a["state"], "applied", "{a}");
        assert_eq!(a["applied_generation"], 1);
    }
    let agent = wait_for(Duration::from_secs(20), "heartbeat runners", || {
        c.agent(&lab.id)
            .filter(|a| a["runners"][0]["state"] == "running")
    });
    assert_eq!(agent["applied_generation"], 1);
    assert_eq!(
        agent["ips"],
        serde_json::json!(["10.0.0.7"]),
        "ips from heartbeats"
    );
    assert_eq!(agent["runners"][0]["name"], "lab-docker");
    assert_eq!(
        agent["runners"][0]["gitlab_runner_id"],
        first.gitlab_runner_id
    );
    let got = json(&c.drover(&["runner", "get", "lab-docker", "-o", "json"]));
    assert_eq!(got["agents"][0]["agent_id"], lab.id.as_str());

    // token-invalid (GitLab revoked the token): a new registration, the new token pushed.
    // The old runner's own token is dead, so nothing can unregister it: it stays, revoked.
    assert!(gitlab.revoke_token(&first.runner_token));
    // As an agent before the enum fields says it: the kind by name only.
    lab.send(AgentKind::RunnerEvent(v1::RunnerEvent {
        runner: "lab-docker".into(),
        kind: "token-invalid".into(),
        message: "job request: forbidden (403)".into(),
        at: None,
        event_kind: 0,
    }))
    .await;
    let ds = lab.desired().await;
    assert_eq!(ds.generation, 1);
    let healed = ds.runners[0].clone();
    assert_ne!(healed.runner_token, first.runner_token);
    assert_ne!(healed.gitlab_runner_id, first.gitlab_runner_id);
    let ids: Vec<i64> = live(&gitlab).iter().map(|r| r.id).collect();
    assert_eq!(ids, [healed.gitlab_runner_id]);

    // Delete the spec: pushed without it; unregistered once the agent runs generation 2.
    let out = c.drover(&["runner", "delete", "lab-docker", "--strategy", "all"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ds = lab.desired().await;
    assert_eq!((ds.generation, ds.runners.len()), (2, 0));
    assert_eq!(live(&gitlab).len(), 1, "kept until the agent moved on");
    lab.ack(2, None).await;
    wait_for(Duration::from_secs(20), "runner unregistered", || {
        live(&gitlab).is_empty().then_some(())
    });

    // Undo: generation 3 brings the runner back with a fresh registration.
    let out = c.drover(&["rollout", "undo", "--strategy", "all"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ds = lab.desired().await;
    assert_eq!((ds.generation, ds.runners.len()), (3, 1));
    assert_eq!(live(&gitlab).len(), 1);
    assert_eq!(live(&gitlab)[0].token, ds.runners[0].runner_token);

    // A refusal halts the rollout and `rollout status --wait` says so.
    lab.ack(3, Some("image alpine:3.20 not present")).await;
    let out = c.drover(&["rollout", "status", "--wait", "--timeout", "20s"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("halted") && stderr(&out).contains("not present"),
        "{}",
        stderr(&out)
    );

    // Import an existing gitlab-runner config.toml: its token used as is, on the agents the
    // selector picks; the runners already there stay (import adds or replaces by name).
    let imported_id = gitlab.add_runner("glrt-imported-secret");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "concurrent = 4\n\n[[runners]]\nname = \"old-box\"\nurl = \"{}\"\nid = {imported_id}\ntoken = \"glrt-imported-secret\"\nexecutor = \"docker\"\n[runners.docker]\nimage = \"alpine:3.20\"\n",
            gitlab.url()
        ),
    )
    .unwrap();
    let out = c.drover(&[
        "runner",
        "import",
        config.to_str().unwrap(),
        "--selector",
        "site=other",
        "--strategy",
        "all",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("+ old-box (added)"),
        "{}",
        stdout(&out)
    );
    let ds = other.desired_at(4).await;
    assert_eq!(ds.generation, 4);
    assert_eq!(ds.runners.len(), 1);
    assert_eq!(ds.runners[0].runner_token, "glrt-imported-secret");
    assert_eq!(ds.runners[0].gitlab_runner_id, imported_id);
    let names: Vec<String> = json(&c.drover(&["runner", "list", "-o", "json"]))
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["lab-docker", "old-box"]);
    assert_eq!(
        live(&gitlab).len(),
        2,
        "no registration for a token used as is"
    );

    // Deleting an agent unregisters the runners registered for it (not a token given as is).
    let out = c.drover(&["agent", "delete", &lab.id]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for(
        Duration::from_secs(20),
        "deleted agent's runner unregistered",
        || {
            let ids: Vec<i64> = live(&gitlab).iter().map(|r| r.id).collect();
            (ids == [imported_id]).then_some(())
        },
    );
    let out = c.drover(&["agent", "delete", &other.id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        live(&gitlab).len(),
        1,
        "the imported runner is the operator's"
    );

    // Nothing secret in the database files.
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(c.data_dir()).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("drover.db"))
        {
            bytes.extend(std::fs::read(p).unwrap());
        }
    }
    for secret in [
        "GR1348941-e2e-secret",
        "glrt-imported-secret",
        healed.runner_token.as_str(),
        ds.runners[0].runner_token.as_str(),
    ] {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} stored in clear"
        );
    }
}

/// Rolling, one agent at a time: the first agent refuses, the rollout halts and the second
/// never receives the generation; undo rolls the previous runners out again. A rotated
/// token is recorded and shown.
#[tokio::test(flavor = "multi_thread")]
async fn rolling_rollout_halts_on_first_batch_and_undo_works() {
    init();
    let gitlab = FakeGitLab::start().await;
    gitlab.add_registration_token("GR1348941-e2e-secret");
    let c = Controller::start();
    let token = c.create_token(&["--label", "site=lab", "--uses", "2"]);
    let mut agents = [
        FakeAgent::enroll_and_connect(&c, &token, "box-1").await,
        FakeAgent::enroll_and_connect(&c, &token, "box-2").await,
    ];
    // The controller goes through agents by id.
    agents.sort_by(|a, b| a.id.cmp(&b.id));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("runners.toml");
    let file_arg = file.to_str().unwrap();

    std::fs::write(&file, spec(gitlab.url(), "alpine:3.20", "docker")).unwrap();
    let out = c.drover(&["runner", "apply", "-f", file_arg, "--strategy", "all"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for a in agents.iter_mut() {
        assert_eq!(a.desired().await.generation, 1);
        a.ack(1, None).await;
    }
    let out = c.drover(&["rollout", "status", "--wait", "--timeout", "20s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(gitlab.runners().len(), 2);

    // The agent rotated its token: the controller keeps the new one and its expiry.
    let first_token = agents[0].desired_token_after_rotation(&gitlab).await;
    let got = wait_for(Duration::from_secs(20), "rotated expiry", || {
        let g = json(&c.drover(&["runner", "get", "lab-docker", "-o", "json"]));
        g["agents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["token_expires_at"] == "2033-05-18T03:33:20Z")
            .then_some(g)
    });
    assert_eq!(got["agents"].as_array().unwrap().len(), 2);

    std::fs::write(&file, spec(gitlab.url(), "alpine:broken", "docker")).unwrap();
    let out = c.drover(&[
        "runner",
        "apply",
        "-f",
        file_arg,
        "--strategy",
        "rolling",
        "--max-unavailable",
        "1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("docker.image: \"alpine:3.20\" -> \"alpine:broken\""));
    let ds = agents[0].desired().await;
    assert_eq!(ds.generation, 2);
    assert_eq!(
        ds.runners[0].runner_token, first_token,
        "same registration kept"
    );
    agents[0]
        .ack(2, Some("image alpine:broken is not present"))
        .await;
    let out = c.drover(&["rollout", "status", "--wait", "--timeout", "20s"]);
    assert!(!out.status.success(), "a halted rollout fails --wait");
    let status = json(&c.drover(&["rollout", "status", "-o", "json"]));
    assert_eq!(status["state"], "halted");
    assert_eq!(status["strategy"]["kind"], "rolling");
    let by_id = |id: &str| {
        status["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(by_id(&agents[0].id)["state"], "refused");
    assert!(
        by_id(&agents[0].id)["error"]
            .as_str()
            .unwrap()
            .contains("not present")
    );
    assert_eq!(by_id(&agents[1].id)["target_generation"], 1);
    assert_eq!(by_id(&agents[1].id)["applied_generation"], 1);

    let out = c.drover(&[
        "rollout",
        "undo",
        "--strategy",
        "rolling",
        "--max-unavailable",
        "1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("alpine:broken\" -> \"alpine:3.20\""),
        "{}",
        stdout(&out)
    );
    for a in agents.iter_mut() {
        let ds = a.desired_at(3).await;
        assert_eq!(ds.generation, 3);
        let spec: drover_proto::spec::RunnerConfig =
            serde_json::from_str(&ds.runners[0].spec_json).unwrap();
        assert_eq!(spec.docker.unwrap().image.as_deref(), Some("alpine:3.20"));
        a.ack(3, None).await;
    }
    let out = c.drover(&[
        "rollout",
        "status",
        "--wait",
        "--timeout",
        "20s",
        "-o",
        "json",
    ]);
    let status = json(&out);
    assert_eq!(status["state"], "complete");
    assert_eq!(status["generation"], 3);
    assert_eq!(gitlab.runners().len(), 2, "no registration churn");
}

impl FakeAgent {
    /// Rotates its runner token at GitLab (`reset_authentication_token`, expiry set to
    /// 2033-05-18T03:33:20Z) and reports it; returns the new token.
    async fn desired_token_after_rotation(&self, gitlab: &FakeGitLab) -> String {
        use drover_gitlab::{ClientOptions, GitLab, HttpGitLab};
        use secrecy::ExposeSecret;
        let old = gitlab
            .runners()
            .into_iter()
            .find(|r| r.description.contains(&self.id))
            .expect("this agent's runner")
            .token;
        let client = HttpGitLab::new(gitlab.url(), ClientOptions::default()).unwrap();
        let token = client
            .reset_token(&SecretString::from(old))
            .await
            .unwrap()
            .token
            .expose_secret()
            .to_string();
        let expires = time::OffsetDateTime::from_unix_timestamp(2_000_000_000).unwrap();
        assert!(gitlab.set_token_expiry(&token, Some(expires)));
        self.send(AgentKind::TokenRotated(v1::TokenRotated {
            runner: "lab-docker".into(),
            token: token.clone(),
            token_expires_at: Some(prost_types::Timestamp {
                seconds: 2_000_000_000,
                nanos: 0,
            }),
            gitlab_runner_id: 0,
        }))
        .await;
        token
    }
}

/// A gitlab-runner fixture shared with the parser's tests.
fn gitlab_runner_fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../proto/tests/fixtures/gitlab-runner")
        .join(name)
}

/// `config.toml` files as gitlab-runner's docs and `register` write them (free-text names,
/// sections Drover ignores) import; every refusal names file:line:col and the key path;
/// selectors get the same validation as `--selector`; sizes are bounded by the CLI and again
/// by the controller.
#[tokio::test(flavor = "multi_thread")]
async fn gitlab_runner_files_import_and_refusals_name_the_key() {
    init();
    let c = Controller::start();
    let lab_token = c.create_token(&["--label", "site=lab"]);
    let mut lab = FakeAgent::enroll_and_connect(&c, &lab_token, "box-lab").await;

    for name in [
        "register_free_text_names.toml",
        "advanced_configuration.toml",
    ] {
        let path = gitlab_runner_fixture(name);
        let out = c.drover(&[
            "runner",
            "import",
            path.to_str().unwrap(),
            "--selector",
            "site=lab",
            "--strategy",
            "all",
        ]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
    }
    let list = json(&c.drover(&["runner", "list", "-o", "json"]));
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "gitlab runner for ci",
            "Bob's runner: build/test (prod) #2 — 本番 🚀",
            "terraform/openstack ../../etc",
            "ruby-2.7-docker"
        ]
    );
    let ds = lab.desired_at(2).await;
    let pushed: Vec<&str> = ds.runners.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(pushed, names);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    let file_arg = file.to_str().unwrap();
    let base =
        std::fs::read_to_string(gitlab_runner_fixture("register_free_text_names.toml")).unwrap();
    let refused = |text: &str| {
        std::fs::write(&file, text).unwrap();
        let out = c.drover(&["runner", "apply", "-f", file_arg]);
        assert!(!out.status.success(), "accepted:\n{text}");
        stderr(&out)
    };
    // A value of the wrong kind, and a rule of Drover's: both name the key path.
    let err = refused(&base.replace(
        "image = \"docker:24.0.5\"",
        "image = \"docker:24.0.5\"\n    pull_policy = \"sometimes\"",
    ));
    assert!(
        err.contains(&format!(
            "{file_arg}:58:19: runners[1].docker.pull_policy: unknown pull policy \"sometimes\", expected one of: always, if-not-present, never"
        )),
        "{err}"
    );
    let err = refused(&base.replace(
        "  executor = \"docker\"\n  [runners.custom_build_dir]",
        "  executor = \"shell\"\n  [runners.custom_build_dir]",
    ));
    assert!(
        err.contains(&format!(
            "{file_arg}:23:14: runners[0].executor: runner \"gitlab runner for ci\""
        )),
        "{err}"
    );
    // A newline in an image name; a selector key `import --selector` would refuse.
    let err = refused(&base.replace("image = \"alpine:latest\"", "image = \"alpine:latest\\nx\""));
    assert!(
        err.contains(&format!(
            "{file_arg}:32:13: runners[0].docker.image: value holds the control character '\\n'"
        )),
        "{err}"
    );
    let err = refused(&format!(
        "{base}  [runners.selector]\n    \"<script>\" = \"x\"\n"
    ));
    assert!(
        err.contains("runners[2].selector.\"<script>\": runner \"terraform/openstack ../../etc\": label key \"<script>\" must be"),
        "{err}"
    );
    let out = c.drover(&[
        "runner",
        "import",
        path_str(&gitlab_runner_fixture("advanced_configuration.toml")),
        "--selector",
        "<script>=x",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("label key \"<script>\" must be"),
        "{}",
        stderr(&out)
    );

    // Label sets are bounded: agent labels and selectors alike.
    let many: Vec<String> = (0..65).map(|i| format!("k{i}=v")).collect();
    let mut args = vec!["token", "create"];
    for l in &many {
        args.extend(["--label", l.as_str()]);
    }
    let out = c.drover(&args);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("65 labels; at most 64 are accepted"),
        "{}",
        stderr(&out)
    );

    // Too large: the CLI refuses before sending; the controller refuses on its own too.
    let big = format!("{base}#{}\n", "x".repeat(2 << 20));
    let err = refused(&big);
    assert!(
        err.contains(&format!(
            "{file_arg}: file is {} bytes; at most 1048576 bytes (1 MiB) are accepted",
            big.len()
        )),
        "{err}"
    );
    let ca = c.read("ca.crt");
    let identity = ClientIdentity {
        cert_pem: c.read("admin.crt"),
        key_pem: SecretString::from(c.read("admin.key")),
    };
    let channel = client::connect(&c.grpc_addr, &ca, Some(&identity))
        .await
        .unwrap();
    let status = v1::admin_client::AdminClient::new(channel)
        .apply_runners(v1::ApplyRunnersRequest {
            file_name: "big.toml".into(),
            text: big.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("big.toml: file is"),
        "{}",
        status.message()
    );

    // Nothing of the refusals was stored.
    let rollout = json(&c.drover(&["rollout", "status", "-o", "json"]));
    assert_eq!(rollout["generation"], 2);
}

fn path_str(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// The fake GitLab's runners whose token was not revoked by the test.
fn live(gitlab: &FakeGitLab) -> Vec<drover_tests::fake_gitlab::RunnerRecord> {
    gitlab
        .runners()
        .into_iter()
        .filter(|r| !r.revoked)
        .collect()
}

/// Issue 15 item 1: a hand-made session from one agent's certificate claims another
/// agent's GitLab runner (by id, and by that runner's token). The controller refuses both
/// (events say so), no `DELETE /runners/:id` of the foreign runner reaches GitLab, and
/// after a true `token-invalid` the agent's own runner is the one deleted (not orphaned).
#[tokio::test(flavor = "multi_thread")]
async fn agent_claims_of_foreign_runners_change_nothing_in_gitlab() {
    use drover_tests::fake_gitlab::Endpoint;
    init();
    let gitlab = FakeGitLab::start().await;
    gitlab.add_access_token("glpat-e2e-creation");
    let c = Controller::start();
    let token = c.create_token(&["--label", "site=lab", "--uses", "2"]);
    let mut a = FakeAgent::enroll_and_connect(&c, &token, "box-a").await;
    let mut b = FakeAgent::enroll_and_connect(&c, &token, "box-b").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("runners.toml");
    let text = spec(gitlab.url(), "alpine:3.20", "docker").replace(
        "registration_token = \"GR1348941-e2e-secret\"",
        "runner_creation_token = \"glpat-e2e-creation\"",
    );
    std::fs::write(&file, text).unwrap();
    let out = c.drover(&[
        "runner",
        "apply",
        "-f",
        file.to_str().unwrap(),
        "--strategy",
        "all",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let own = a.desired().await.runners[0].clone();
    let foreign = b.desired().await.runners[0].clone();
    assert_ne!(own.gitlab_runner_id, foreign.gitlab_runner_id);

    let rotated = |token: &str, id: i64| {
        AgentKind::TokenRotated(v1::TokenRotated {
            runner: "lab-docker".into(),
            token: token.into(),
            token_expires_at: None,
            gitlab_runner_id: id,
        })
    };
    a.send(rotated("glrt-made-up", foreign.gitlab_runner_id))
        .await;
    a.send(rotated(&foreign.runner_token, 0)).await;
    // GitLab revokes a's token; a says so.
    assert!(gitlab.revoke_token(&own.runner_token));
    // As a current agent says it: the enum, with the name for older controllers.
    a.send(AgentKind::RunnerEvent(v1::RunnerEvent {
        runner: "lab-docker".into(),
        kind: "token-invalid".into(),
        message: "job request: forbidden (403)".into(),
        at: None,
        event_kind: v1::RunnerEventKind::TokenInvalid.into(),
    }))
    .await;
    let healed = a.desired().await.runners[0].clone();
    assert_ne!(healed.gitlab_runner_id, own.gitlab_runner_id);
    assert_ne!(healed.gitlab_runner_id, foreign.gitlab_runner_id);
    wait_for(
        Duration::from_secs(20),
        "a's old runner deleted by id",
        || gitlab.runner(own.gitlab_runner_id).is_none().then_some(()),
    );
    assert!(
        gitlab.runner(foreign.gitlab_runner_id).is_some(),
        "the foreign runner is untouched"
    );
    let deletes: u64 = gitlab
        .request_counts()
        .iter()
        .filter(|((e, _), _)| *e == Endpoint::DeleteRunner)
        .map(|(_, n)| *n)
        .sum();
    assert_eq!(
        deletes,
        1,
        "only a's own old runner: {:?}",
        gitlab.request_counts()
    );
    // Both refusals are events of agent a, saying why.
    let refused = wait_for(Duration::from_secs(20), "refusal events", || {
        let events = json(&c.drover(&["events", "--agent", &a.id, "-o", "json"]));
        let refused: Vec<String> = events
            .as_array()?
            .iter()
            .filter(|e| e["kind"] == "agent-claim-refused")
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
            .collect();
        (refused.len() == 2).then_some(refused)
    });
    assert!(
        refused
            .iter()
            .any(|m| m.contains(&format!("names gitlab runner {}", foreign.gitlab_runner_id)))
            && refused
                .iter()
                .any(|m| m.contains("belongs to gitlab runner")),
        "{refused:?}"
    );
}
