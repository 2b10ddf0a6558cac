//! `drover-agent enroll --controller https://HOST:PORT [--controller URL2 ...] --token TOKEN
//! [--state-dir DIR]`: enrolls with the first controller that answers; all addresses are
//! kept, in order, in `agent.json` (the agent fails over between them, see `control`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use drover_proto::v1;
use rustls_pki_types::pem::PemObject;
use secrecy::ExposeSecret;

use crate::host_facts::HostFacts;
use crate::identity::{AgentFile, StateDir, certs, tls, token};

/// Arguments of `drover-agent enroll`.
#[derive(Debug, clap::Args)]
pub struct EnrollArgs {
    /// A controller's gRPC address, `https://HOST:PORT`; repeat it for the replicas of one
    /// controller, preferred first.
    #[arg(long = "controller", required = true)]
    pub controllers: Vec<String>,
    /// A one-time enrollment token from `drover token create`.
    #[arg(long, env = "DROVER_ENROLL_TOKEN", hide_env_values = true)]
    pub token: secrecy::SecretString,
    /// Where the agent keeps its key, certificates and state.
    #[arg(
        long,
        default_value = "/var/lib/drover-agent",
        env = "DROVER_AGENT_STATE_DIR"
    )]
    pub state_dir: PathBuf,
}

/// Enrolls: pins the CA from the token, sends a CSR over a key made here, stores the result.
pub async fn run(args: EnrollArgs) -> anyhow::Result<()> {
    let state = StateDir::new(&args.state_dir);
    if state.is_enrolled() {
        bail!(
            "{} already holds an enrollment; remove it to enroll again",
            state.root().display()
        );
    }
    state.check_writable().with_context(|| {
        format!(
            "state dir {} cannot hold an enrollment; the token was not used",
            state.root().display()
        )
    })?;
    let pin = token::parse(args.token.expose_secret()).map_err(anyhow::Error::msg)?;
    let controllers = distinct(&args.controllers)?;

    let verifier = Arc::new(tls::PinnedCa::new(&pin.ca_fingerprint));
    let config = tls::pinned_config(verifier.clone())?;
    let key = certs::new_key_and_csr().context("generate key and csr")?;
    let facts = HostFacts::collect();

    let mismatch = |controller: &str, verifier: &tls::PinnedCa| -> Option<anyhow::Error> {
        let seen = verifier.mismatch.lock().ok()?.clone()?;
        Some(anyhow::anyhow!(
            "refusing controller {controller}: its CA (sha256 {}) does not match the token's \
             fingerprint {}; the token was made by another controller",
            if seen.is_empty() {
                "none presented".to_string()
            } else {
                seen.join(", ")
            },
            pin.ca_fingerprint
        ))
    };

    // The first controller that answers takes the enrollment; one that cannot be reached,
    // or a replica that is not serving (`unavailable`), passes it on to the next.
    let mut failures = Vec::new();
    let mut answer = None;
    for controller in &controllers {
        let channel = match tls::connect(controller, config.clone()).await {
            Ok(c) => c,
            Err(e) => {
                if let Some(e) = mismatch(controller, &verifier) {
                    return Err(e);
                }
                failures.push(format!("{e}"));
                continue;
            }
        };
        let resp = v1::enrollment_client::EnrollmentClient::new(channel)
            .enroll(v1::EnrollRequest {
                token: args.token.expose_secret().to_string(),
                csr_der: key.csr_der.clone(),
                facts: Some(v1::AgentFacts::from(&facts)),
            })
            .await;
        match resp {
            Ok(r) => {
                answer = Some(r.into_inner());
                break;
            }
            Err(status) => {
                if let Some(e) = mismatch(controller, &verifier) {
                    return Err(e);
                }
                if status.code() == tonic::Code::Unavailable {
                    failures.push(format!("{controller}: {}", status.message()));
                    continue;
                }
                bail!(
                    "controller {controller} refused enrollment with token {}: {} ({:?})",
                    pin.id,
                    status.message(),
                    status.code()
                );
            }
        }
    }
    let Some(resp) = answer else {
        bail!(
            "no controller answered; the token was not used: {}",
            failures.join("; ")
        );
    };

    let ca_der = rustls_pki_types::CertificateDer::from_pem_slice(resp.ca_pem.as_bytes())
        .context("controller sent an unreadable CA certificate")?;
    if certs::fingerprint(&ca_der) != pin.ca_fingerprint {
        bail!("controller sent a CA that does not match the token's fingerprint; nothing stored");
    }
    let info = certs::check_issued(
        &resp.certificate_pem,
        &resp.ca_pem,
        &key.public_key,
        &resp.agent_id,
    )
    .map_err(|e| anyhow::anyhow!("controller sent an unusable certificate: {e}; nothing stored"))?;

    state.create()?;
    state.write_ca(&resp.ca_pem)?;
    state.write_credentials(key.key_pem.expose_secret(), &resp.certificate_pem)?;
    state.write_agent_file(&AgentFile::new(resp.agent_id.clone(), controllers))?;
    if !resp.upgrade_public_key.is_empty() {
        crate::upgrade::key::pin(state.root(), &resp.upgrade_public_key)
            .context("pin the controller's upgrade signing key")?;
    }
    eprintln!(
        "enrolled as agent {} (certificate valid until {}); state in {}",
        resp.agent_id,
        certs::rfc3339(info.not_after),
        state.root().display()
    );
    drover_proto::stdout::line(&resp.agent_id)?;
    Ok(())
}

/// The controller addresses in the order given, each checked (`https://HOST[:PORT]`), a
/// repeated one kept once.
fn distinct(controllers: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for c in controllers {
        tls::dial_addr(c)?;
        if !out.contains(c) {
            out.push(c.clone());
        }
    }
    if out.is_empty() {
        bail!("--controller is required");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controllers_keep_their_order_once_each_and_are_checked() {
        let got = distinct(&[
            "https://b:1".to_string(),
            "https://a:1".to_string(),
            "https://b:1".to_string(),
        ])
        .unwrap();
        assert_eq!(got, ["https://b:1", "https://a:1"]);
        let e = distinct(&["https://a:1".to_string(), "a:1".to_string()]).unwrap_err();
        assert!(e.to_string().contains("\"a:1\""), "{e}");
    }
}
