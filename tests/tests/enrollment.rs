//! End-to-end: controller, tokens, enrollment, the control stream and every refusal,
//! with the real `drover` and `drover-agent` binaries on loopback.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use drover_controller::client::{self, ClientIdentity};
use drover_proto::v1;
use drover_tests::fleet_support::csr_der;
use drover_tests::harness::{Agent, Controller, stderr, stdout, wait_for};
use secrecy::SecretString;
use tonic::Code;

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn agent_identity(agent: &Agent) -> ClientIdentity {
    ClientIdentity {
        cert_pem: agent.read("agent.crt"),
        key_pem: SecretString::from(agent.read("agent.key")),
    }
}

fn admin_identity(c: &Controller) -> ClientIdentity {
    ClientIdentity {
        cert_pem: c.read("admin.crt"),
        key_pem: SecretString::from(c.read("admin.key")),
    }
}

/// The README walk-through: serve, token, enroll, list, delete, refused.
#[tokio::test(flavor = "multi_thread")]
async fn enroll_list_delete_and_refuse() {
    init();
    let c = Controller::start();
    // First start: data dir 0700, CA key 0600, ca.crt as PEM, admin key 0600.
    assert_eq!(mode(&c.data_dir()), 0o700);
    assert_eq!(mode(&c.data_dir().join("ca.key")), 0o600);
    assert_eq!(mode(&c.data_dir().join("admin.key")), 0o600);
    assert!(c.read("ca.crt").starts_with("-----BEGIN CERTIFICATE-----"));
    let health_text = http_get(&c.http_addr, "/healthz");
    assert!(
        health_text.starts_with("HTTP/1.1 200") && health_text.ends_with("ok\n"),
        "{health_text}"
    );

    let token = c.create_token(&["--label", "site=lab", "--label", "rack=r1"]);
    assert!(token.starts_with("drover1."), "{token}");
    let fp = token.rsplit('.').next().unwrap();
    let ca_der = rustls_pem_der(&c.read("ca.crt"));
    assert_eq!(fp, hex_sha256(&ca_der), "token embeds the CA fingerprint");

    let mut agent = Agent::new();
    let id = agent.enroll_ok(&c.url(), &token);
    assert_eq!(mode(&agent.state_dir()), 0o700);
    assert_eq!(mode(&agent.state_dir().join("agent.key")), 0o600);
    assert_eq!(agent.read("ca.crt"), c.read("ca.crt"));

    // Enrolled, not yet connected.
    let a = c.agent(&id).expect("agent listed after enrollment");
    assert_eq!(a["state"], "lost");

    agent.run();
    let a = wait_for(Duration::from_secs(20), "agent healthy", || {
        c.agent(&id).filter(|a| a["state"] == "healthy")
    });
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(a["hostname"], host.trim());
    assert_eq!(a["labels"]["site"], "lab");
    assert_eq!(a["labels"]["rack"], "r1");
    assert_eq!(a["arch"], std::env::consts::ARCH);
    assert!(a["version"].as_str().is_some_and(|v| !v.is_empty()));
    assert!(a["ips"].is_array());
    assert!(a["reasons"].as_array().unwrap().is_empty());
    assert_eq!(a["runners"], serde_json::json!([]));
    assert_eq!(a["applied_generation"], 0);
    let first_seen = a["last_seen"].as_str().unwrap().to_string();
    assert!(
        time::OffsetDateTime::parse(&first_seen, &time::format_description::well_known::Rfc3339)
            .is_ok()
    );
    // Heartbeats move last_seen.
    wait_for(Duration::from_secs(20), "a heartbeat", || {
        c.agent(&id)
            .filter(|a| a["last_seen"].as_str() != Some(first_seen.as_str()))
    });
    let table = stdout(&c.drover(&["agents"]));
    assert!(
        table.contains(&id) && table.contains("healthy") && table.contains("site=lab"),
        "{table}"
    );

    // Delete: the running agent's stream is closed at once; the agent stops with the reason.
    let out = c.drover(&["agent", "delete", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = agent.proc().wait_exit(Duration::from_secs(20));
    assert!(!status.success());
    assert!(
        agent.proc().log_text().contains("revoked"),
        "{}",
        agent.proc().log_text()
    );
    assert_eq!(c.agent(&id).unwrap()["state"], "revoked");

    // Its certificate is refused from then on: a new run, and a raw call.
    let mut again = std::process::Command::new(drover_tests::harness::agent_bin())
        .args(["run", "--state-dir"])
        .arg(agent.state_dir())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_for(Duration::from_secs(20), "revoked agent run to exit", || {
        again.try_wait().unwrap()
    });
    assert!(!out.success());
    let mut err = String::new();
    std::io::Read::read_to_string(again.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("revoked"), "{err}");

    let channel = client::connect(
        &c.grpc_addr,
        &c.read("ca.crt"),
        Some(&agent_identity(&agent)),
    )
    .await
    .unwrap();
    let status = v1::agent_control_client::AgentControlClient::new(channel)
        .renew_certificate(v1::RenewRequest { csr_der: csr_der() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("revoked"));
}

/// Expired, reused, revoked and malformed tokens are refused and change nothing.
#[tokio::test(flavor = "multi_thread")]
async fn bad_tokens_are_refused() {
    init();
    let c = Controller::start();

    // Reused: single-use by default.
    let token = c.create_token(&[]);
    Agent::new().enroll_ok(&c.url(), &token);
    let second = Agent::new();
    let out = second.enroll(&c.url(), &token);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already used"), "{}", stderr(&out));
    assert!(!second.state_dir().join("agent.json").exists());

    // Revoked.
    let token = c.create_token(&["--uses", "3"]);
    let id = token.split('.').nth(1).unwrap();
    let out = c.drover(&["token", "revoke", id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = Agent::new().enroll(&c.url(), &token);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("revoked"), "{}", stderr(&out));
    let listed = c.tokens().into_iter().find(|t| t["id"] == id).unwrap();
    assert_eq!(listed["revoked"], true);
    assert_eq!(listed["uses_left"], 3, "a refused enrollment takes no use");
    let out = c.drover(&["token", "revoke", "ffffffffffffffff"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no enrollment token"),
        "{}",
        stderr(&out)
    );

    // Expired.
    let token = c.create_token(&["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(2100));
    let out = Agent::new().enroll(&c.url(), &token);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));

    // Malformed: refused by the agent before dialing, and by the controller.
    let out = Agent::new().enroll(&c.url(), "drover1.nope");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("malformed enrollment token"),
        "{}",
        stderr(&out)
    );
    let channel = client::connect(&c.grpc_addr, &c.read("ca.crt"), None)
        .await
        .unwrap();
    let status = v1::enrollment_client::EnrollmentClient::new(channel)
        .enroll(v1::EnrollRequest {
            token: "drover1.0011223344556677.x.y".into(),
            csr_der: csr_der(),
            facts: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("malformed enrollment token"));

    // Bad CLI input names the value.
    let out = c.drover(&["token", "create", "--ttl", "1y"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("1y"), "{}", stderr(&out));
    let out = c.drover(&["token", "create", "--label", "novalue"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("novalue"), "{}", stderr(&out));

    assert_eq!(
        c.agents().len(),
        1,
        "only the first enrollment stored an agent"
    );
}

/// A state dir that cannot hold an enrollment (here a file) is refused before the token is
/// sent: the token keeps its use and no agent is stored, so it works once the dir is fixed.
#[tokio::test(flavor = "multi_thread")]
async fn unusable_state_dir_is_refused_before_the_token_is_used() {
    init();
    let c = Controller::start();
    let token = c.create_token(&[]);
    let agent = Agent::new();
    std::fs::write(agent.state_dir(), "not a dir").unwrap();
    let out = agent.enroll(&c.url(), &token);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("not a directory") && err.contains("the token was not used"),
        "{err}"
    );
    assert_eq!(c.tokens()[0]["uses_left"], 1, "{:?}", c.tokens());
    assert!(c.agents().is_empty(), "no ghost agent: {:?}", c.agents());

    std::fs::remove_file(agent.state_dir()).unwrap();
    agent.enroll_ok(&c.url(), &token);
    assert_eq!(c.agents().len(), 1);
}

/// A token from another controller is refused by the agent (CA mismatch); nothing stored.
#[tokio::test(flavor = "multi_thread")]
async fn token_for_another_controller_is_refused() {
    init();
    let a = Controller::start();
    let b = Controller::start();
    let token_b = b.create_token(&[]);
    let agent = Agent::new();
    let out = agent.enroll(&a.url(), &token_b);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("does not match the token's fingerprint"),
        "{err}"
    );
    assert!(!agent.state_dir().exists(), "nothing stored on the agent");
    assert!(a.agents().is_empty());
    assert_eq!(b.tokens()[0]["uses_left"], 1);

    // The controller refuses it as well, should a client skip the pin.
    let channel = client::connect(&a.grpc_addr, &a.read("ca.crt"), None)
        .await
        .unwrap();
    let status = v1::enrollment_client::EnrollmentClient::new(channel)
        .enroll(v1::EnrollRequest {
            token: token_b,
            csr_der: csr_der(),
            facts: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("another controller"),
        "{status:?}"
    );
}

/// No certificate, a certificate from another CA, a bad CSR signature, and an agent
/// asking for another agent's state.
#[tokio::test(flavor = "multi_thread")]
async fn unauthenticated_and_foreign_callers_are_refused() {
    init();
    let c = Controller::start();
    let other = Controller::start();
    let ca = c.read("ca.crt");

    // No certificate: only Enrollment answers.
    let channel = client::connect(&c.grpc_addr, &ca, None).await.unwrap();
    let s = v1::admin_client::AdminClient::new(channel.clone())
        .list_agents(v1::ListAgentsRequest {})
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    let s = v1::admin_client::AdminClient::new(channel.clone())
        .create_token(v1::CreateTokenRequest::default())
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    let s = v1::agent_control_client::AgentControlClient::new(channel.clone())
        .renew_certificate(v1::RenewRequest { csr_der: csr_der() })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");

    // A certificate from another CA: the handshake or the first call fails.
    let foreign = admin_identity(&other);
    let refused = match client::connect(&c.grpc_addr, &ca, Some(&foreign)).await {
        Err(_) => true,
        Ok(ch) => v1::admin_client::AdminClient::new(ch)
            .list_agents(v1::ListAgentsRequest {})
            .await
            .is_err(),
    };
    assert!(refused, "a certificate from another CA must be refused");
    assert!(c.tokens().is_empty(), "nothing created");

    // A CSR with a bad signature: refused, the token keeps its use.
    let token = c.create_token(&[]);
    let mut bad = csr_der();
    let last = bad.len() - 1;
    bad[last] ^= 0x5a;
    let s = v1::enrollment_client::EnrollmentClient::new(channel.clone())
        .enroll(v1::EnrollRequest {
            token: token.clone(),
            csr_der: bad,
            facts: None,
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("csr signature"), "{s:?}");
    assert!(c.agents().is_empty());
    assert_eq!(c.tokens()[0]["uses_left"], 1);

    // The token still works; two agents now.
    let first = Agent::new();
    let first_id = first.enroll_ok(&c.url(), &token);
    let second = Agent::new();
    let second_id = second.enroll_ok(&c.url(), &c.create_token(&[]));

    // An agent may not read another agent's state (nor any admin call).
    let ch = client::connect(&c.grpc_addr, &ca, Some(&agent_identity(&first)))
        .await
        .unwrap();
    let s = v1::admin_client::AdminClient::new(ch.clone())
        .get_agent(v1::GetAgentRequest {
            id: second_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    let s = v1::admin_client::AdminClient::new(ch.clone())
        .delete_agent(v1::DeleteAgentRequest {
            id: second_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert_eq!(
        c.agent(&second_id).unwrap()["state"],
        "lost",
        "nothing changed"
    );
    // Its own renewal works, and names only itself.
    let renewed = v1::agent_control_client::AgentControlClient::new(ch)
        .renew_certificate(v1::RenewRequest { csr_der: csr_der() })
        .await
        .unwrap()
        .into_inner();
    assert!(!renewed.certificate_pem.contains(&second_id));
    let _ = first_id;
}

/// Short-lived certificates: a running agent renews at ~2/3 of the lifetime; an expired
/// certificate is refused.
#[tokio::test(flavor = "multi_thread")]
async fn renewal_and_expired_certificates() {
    init();
    let c = Controller::start_with(&["--heartbeat-interval", "1s", "--cert-ttl", "6s"]);
    let mut running = Agent::new();
    let id = running.enroll_ok(&c.url(), &c.create_token(&[]));
    let idle = Agent::new();
    idle.enroll_ok(&c.url(), &c.create_token(&[]));
    let first_cert = running.read("agent.crt");
    running.run();
    wait_for(Duration::from_secs(20), "certificate renewal", || {
        (running.read("agent.crt") != first_cert).then_some(())
    });
    wait_for(
        Duration::from_secs(20),
        "agent healthy after renewal",
        || c.agent(&id).filter(|a| a["state"] == "healthy"),
    );
    assert_eq!(mode(&running.state_dir().join("agent.key")), 0o600);
    // Still connected well past the first certificate's expiry.
    std::thread::sleep(Duration::from_secs(7));
    assert!(
        running.proc().try_exit().is_none(),
        "{}",
        running.proc().log_text()
    );
    assert_eq!(c.agent(&id).unwrap()["state"], "healthy");

    // The idle agent's certificate has expired: the controller refuses it.
    let ch = client::connect(
        &c.grpc_addr,
        &c.read("ca.crt"),
        Some(&agent_identity(&idle)),
    )
    .await;
    let refused = match ch {
        Err(_) => true,
        Ok(ch) => v1::agent_control_client::AgentControlClient::new(ch)
            .renew_certificate(v1::RenewRequest { csr_der: csr_der() })
            .await
            .is_err(),
    };
    assert!(refused, "an expired certificate must be refused");
    let out = std::process::Command::new(drover_tests::harness::agent_bin())
        .args(["run", "--state-dir"])
        .arg(idle.state_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));
}

/// The agent reconnects (backoff with jitter) when the controller comes back.
#[tokio::test(flavor = "multi_thread")]
async fn agent_reconnects_after_controller_restart() {
    init();
    let mut c = Controller::start();
    let mut agent = Agent::new();
    let id = agent.enroll_ok(&c.url(), &c.create_token(&[]));
    agent.run();
    wait_for(Duration::from_secs(20), "agent healthy", || {
        c.agent(&id).filter(|a| a["state"] == "healthy")
    });
    c.stop();
    wait_for(Duration::from_secs(20), "agent to notice", || {
        agent
            .proc()
            .log_text()
            .contains("controller connection failed")
            .then_some(())
    });
    c.restart();
    wait_for(Duration::from_secs(90), "agent reconnected", || {
        c.agent(&id).filter(|a| a["state"] == "healthy")
    });
    assert!(agent.proc().try_exit().is_none());
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn rustls_pem_der(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

fn hex_sha256(der: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(der))
}

/// A remote admin reaches the controller with `--config FILE` (address + admin cert/key +
/// CA) instead of the data dir; without credentials nothing is reachable.
#[tokio::test(flavor = "multi_thread")]
async fn remote_admin_config_file() {
    init();
    let c = Controller::start();
    let remote = tempfile::tempdir().unwrap();
    for f in ["ca.crt", "admin.crt", "admin.key"] {
        std::fs::copy(c.data_dir().join(f), remote.path().join(f)).unwrap();
    }
    let cfg = remote.path().join("drover.toml");
    std::fs::write(
        &cfg,
        format!(
            "address = \"{}\"\nca = \"ca.crt\"\ncert = \"admin.crt\"\nkey = \"admin.key\"\n",
            c.grpc_addr
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(drover_tests::harness::drover_bin())
            .arg("--data-dir")
            .arg(remote.path().join("no-such-dir"))
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["token", "create", "--label", "site=remote"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&["token", "list", "-o", "json"]);
    let tokens: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tokens[0]["labels"]["site"], "remote");

    // A data dir without a running controller gives an error naming it.
    let out = std::process::Command::new(drover_tests::harness::drover_bin())
        .arg("--data-dir")
        .arg(remote.path().join("no-such-dir"))
        .arg("agents")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no-such-dir"), "{}", stderr(&out));
}
