//! The environment variables a binary reads, as one table per binary: the `Environment:`
//! section of `--help` and the ENVIRONMENT section of the man page are both made from it,
//! so neither can forget one the other names.

/// One environment variable a binary reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvVar {
    /// Its name, e.g. `DROVER_LOG`.
    pub name: &'static str,
    /// What it sets, one line.
    pub meaning: &'static str,
}

/// The variables of the log filter, which both binaries read (`log.rs`).
pub const LOG_VARS: [EnvVar; 2] = [
    EnvVar {
        name: "DROVER_LOG",
        meaning: "log filter (to stderr), e.g. `debug` or `info,drover_agent=debug` \
                  (tracing EnvFilter syntax); default `info`",
    },
    EnvVar {
        name: "RUST_LOG",
        meaning: "the log filter when DROVER_LOG is unset",
    },
];

/// The `Environment:` section of `--help`: every variable with its meaning, the names in
/// one column.
/// The variables `cmd`'s flags read (clap's `env`), at any depth: what a binary's table must
/// list.
pub fn flag_variables(cmd: &clap::Command) -> Vec<String> {
    let mut out: Vec<String> = cmd
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .collect();
    for sub in cmd.get_subcommands() {
        out.extend(flag_variables(sub));
    }
    out
}

pub fn help_section(vars: &[EnvVar]) -> String {
    let width = vars.iter().map(|v| v.name.len()).max().unwrap_or(0);
    let mut text = String::from("Environment:");
    for v in vars {
        text.push_str(&format!("\n  {:width$}  {}", v.name, v.meaning));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_section_aligns_names_and_keeps_every_variable() {
        let text = help_section(&LOG_VARS);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "Environment:");
        assert!(lines[1].starts_with("  DROVER_LOG  log filter"), "{text}");
        assert!(
            lines[2].starts_with("  RUST_LOG    the log filter"),
            "{text}"
        );
        assert_eq!(lines.len(), 3);
    }
}
