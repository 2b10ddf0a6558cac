//! Every environment variable `drover-agent` reads: the `Environment:` section of
//! `--help` and the ENVIRONMENT section of `drover-agent(1)`. A flag's own variable also
//! shows as `[env: X=]` beside the flag; a test checks each of those is listed here too.

use drover_runtime::environment::{EnvVar, LOG_VARS, help_section};

/// The variables, flags' ones first.
pub const VARS: [EnvVar; 14] = [
    EnvVar {
        name: "DROVER_AGENT_STATE_DIR",
        meaning: "the agent's state dir (--state-dir); default /var/lib/drover-agent",
    },
    EnvVar {
        name: "DROVER_ENROLL_TOKEN",
        meaning: "enroll: the one-time enrollment token (--token), kept out of argv",
    },
    EnvVar {
        name: "DROVER_AGENT_FAILBACK_SECONDS",
        meaning: "run: MIN-MAX seconds before moving back to the preferred controller; default 300-900",
    },
    LOG_VARS[0],
    LOG_VARS[1],
    EnvVar {
        name: "DOCKER_HOST",
        meaning: "the Docker engine (unix://... or tcp://...) when the runner sets no `host`; \
                  default unix:///var/run/docker.sock",
    },
    EnvVar {
        name: "NOTIFY_SOCKET",
        meaning: "set by systemd (Type=notify): READY/STOPPING/STATUS go there",
    },
    EnvVar {
        name: "WATCHDOG_USEC",
        meaning: "set by systemd (WatchdogSec=): the watchdog interval",
    },
    EnvVar {
        name: "WATCHDOG_PID",
        meaning: "set by systemd: the process the watchdog belongs to",
    },
    EnvVar {
        name: "HTTPS_PROXY",
        meaning: "proxy for GitLab requests (jobs, traces, artifacts); also HTTP_PROXY",
    },
    EnvVar {
        name: "ALL_PROXY",
        meaning: "proxy for GitLab requests when HTTPS_PROXY/HTTP_PROXY is unset",
    },
    EnvVar {
        name: "NO_PROXY",
        meaning: "hosts reached without the proxy",
    },
    EnvVar {
        name: "SSL_CERT_FILE",
        meaning: "CA bundle trusted for GitLab instead of the system's (besides tls-ca-file)",
    },
    EnvVar {
        name: "SSL_CERT_DIR",
        meaning: "CA directory trusted for GitLab instead of the system's",
    },
];

/// The `Environment:` section of `drover-agent --help`.
pub fn help() -> String {
    help_section(&VARS)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_flag_variable_is_listed() {
        let found = drover_runtime::environment::flag_variables(&super::super::Cli::command());
        assert!(
            found.contains(&"DROVER_AGENT_STATE_DIR".to_string()),
            "{found:?}"
        );
        for name in &found {
            assert!(
                super::VARS.iter().any(|v| v.name == name),
                "{name} is read through a flag but missing from cli/environment.rs"
            );
        }
    }

    #[test]
    fn help_names_every_variable() {
        let help = super::super::Cli::command().render_long_help().to_string();
        for v in super::VARS {
            assert!(help.contains(v.name), "--help lacks {}: {help}", v.name);
        }
        let run = super::super::Cli::command()
            .find_subcommand_mut("run")
            .map(|c| c.render_long_help().to_string())
            .unwrap_or_default();
        assert!(run.contains("[env: DROVER_AGENT_STATE_DIR="), "{run}");
    }
}
