//! What the client says about this runner: the `info` object of registration and job
//! requests, and the revision and architecture in the default user agent.

use serde_json::json;

use crate::features::features_json;

/// The build revision, from `DROVER_GIT_REVISION` at compile time.
pub(super) fn revision() -> &'static str {
    option_env!("DROVER_GIT_REVISION").unwrap_or("unknown")
}

/// This machine's architecture in Go's `GOARCH` spelling, as GitLab shows it.
pub fn architecture() -> &'static str {
    goarch(std::env::consts::ARCH)
}

fn goarch(rust_arch: &'static str) -> &'static str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// `info` sent with registration and job requests.
pub(super) fn runner_info() -> serde_json::Value {
    json!({
        "name": "drover-agent",
        "version": env!("CARGO_PKG_VERSION"),
        "revision": revision(),
        "platform": "linux",
        "architecture": architecture(),
        "executor": "docker",
        "shell": "bash",
        "features": features_json(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goarch_names() {
        assert_eq!(goarch("x86_64"), "amd64");
        assert_eq!(goarch("aarch64"), "arm64");
        assert_eq!(goarch("x86"), "386");
    }

    #[test]
    fn runner_info_shape() {
        let info = runner_info();
        assert_eq!(info["name"], "drover-agent");
        assert_eq!(info["platform"], "linux");
        assert_eq!(info["executor"], "docker");
        assert_eq!(info["shell"], "bash");
        assert_eq!(info["features"]["refspecs"], true);
    }
}
