//! `drover-agent enroll --controller https://HOST:PORT --token TOKEN [--state-dir DIR]`.

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
    /// The controller's gRPC address, `https://HOST:PORT`.
    #[arg(long)]
    pub controller: String,
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
    tls::dial_addr(&args.controller)?;

    let verifier = Arc::new(tls::PinnedCa::new(&pin.ca_fingerprint));
    let config = tls::pinned_config(verifier.clone())?;
    let key = certs::new_key_and_csr().context("generate key and csr")?;
    let facts = HostFacts::collect();

    let mismatch = |verifier: &tls::PinnedCa| -> Option<anyhow::Error> {
        let seen = verifier.mismatch.lock().ok()?.clone()?;
        Some(anyhow::anyhow!(
            "refusing controller {}: its CA (sha256 {}) does not match the token's fingerprint {}; \
             the token was made by another controller",
            args.controller,
            if seen.is_empty() {
                "none presented".to_string()
            } else {
                seen.join(", ")
            },
            pin.ca_fingerprint
        ))
    };

    let channel = match tls::connect(&args.controller, config).await {
        Ok(c) => c,
        Err(e) => return Err(mismatch(&verifier).unwrap_or_else(|| e.into())),
    };
    let resp = v1::enrollment_client::EnrollmentClient::new(channel)
        .enroll(v1::EnrollRequest {
            token: args.token.expose_secret().to_string(),
            csr_der: key.csr_der.clone(),
            facts: Some(v1::AgentFacts::from(&facts)),
        })
        .await;
    let resp = match resp {
        Ok(r) => r.into_inner(),
        Err(status) => {
            if let Some(e) = mismatch(&verifier) {
                return Err(e);
            }
            bail!(
                "controller refused enrollment with token {}: {} ({:?})",
                pin.id,
                status.message(),
                status.code()
            );
        }
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
    state.write_agent_file(&AgentFile {
        agent_id: resp.agent_id.clone(),
        controller: args.controller.clone(),
    })?;
    eprintln!(
        "enrolled as agent {} (certificate valid until {}); state in {}",
        resp.agent_id,
        certs::rfc3339(info.not_after),
        state.root().display()
    );
    drover_proto::stdout::line(&resp.agent_id)?;
    Ok(())
}
