//! Every environment variable `drover` reads: the `Environment:` section of `--help` and
//! the ENVIRONMENT section of `drover(1)`. A flag's own variable also shows as `[env: X=]`
//! beside the flag; a test checks each of those is listed here too.

use drover_runtime::environment::{EnvVar, LOG_VARS, help_section};

/// The variables, flags' ones first.
pub const VARS: [EnvVar; 16] = [
    EnvVar {
        name: "DROVER_DATA_DIR",
        meaning: "the controller's data dir (--data-dir); default ./drover-data",
    },
    EnvVar {
        name: "DROVER_LISTEN",
        meaning: "serve: gRPC listener (--listen)",
    },
    EnvVar {
        name: "DROVER_HTTP_LISTEN",
        meaning: "serve: status page and /metrics listener (--http-listen)",
    },
    EnvVar {
        name: "DROVER_HTTP_TOKEN",
        meaning: "serve: token for the status page and /metrics (--http-token)",
    },
    EnvVar {
        name: "DROVER_DATABASE_URL",
        meaning: "serve: the store on PostgreSQL, postgres://... (--database)",
    },
    EnvVar {
        name: "DROVER_SECRETS_KEY_FILE",
        meaning: "serve with --database: the key-encryption key shared by replicas (--secrets-key-file)",
    },
    EnvVar {
        name: "DROVER_CERT_TTL",
        meaning: "serve: lifetime of agent certificates, default 7d (tests shorten it)",
    },
    EnvVar {
        name: "DROVER_HEARTBEAT_INTERVAL",
        meaning: "serve: heartbeat interval asked of agents, default 10s (tests)",
    },
    LOG_VARS[0],
    LOG_VARS[1],
    EnvVar {
        name: "NO_COLOR",
        meaning: "set and not empty: no colours in tables, even on a terminal",
    },
    EnvVar {
        name: "HTTPS_PROXY",
        meaning: "serve: proxy for GitLab requests (registration); also HTTP_PROXY",
    },
    EnvVar {
        name: "ALL_PROXY",
        meaning: "serve: proxy for GitLab requests when HTTPS_PROXY/HTTP_PROXY is unset",
    },
    EnvVar {
        name: "NO_PROXY",
        meaning: "serve: hosts reached without the proxy",
    },
    EnvVar {
        name: "SSL_CERT_FILE",
        meaning: "serve: CA bundle trusted for GitLab instead of the system's",
    },
    EnvVar {
        name: "SSL_CERT_DIR",
        meaning: "serve: CA directory trusted for GitLab instead of the system's",
    },
];

/// The `Environment:` section of `drover --help`.
pub fn help() -> String {
    help_section(&VARS)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_flag_variable_is_listed() {
        let found = drover_runtime::environment::flag_variables(&super::super::Cli::command());
        assert!(found.contains(&"DROVER_DATA_DIR".to_string()), "{found:?}");
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
        assert!(help.contains("[env: DROVER_DATA_DIR="), "{help}");
    }
}
