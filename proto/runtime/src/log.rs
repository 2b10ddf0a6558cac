//! Logging of both binaries: to stderr (colours on a terminal only), filtered by
//! `DROVER_LOG`, else `RUST_LOG` when `DROVER_LOG` is unset (tracing's `EnvFilter` syntax;
//! `info` when unset or unreadable), as both binaries' `--help` tells users
//! ([`crate::environment::LOG_VARS`]).
//!
//! A bare level above `info` (`DROVER_LOG=debug`, `trace`) applies to Drover's own code only:
//! every other crate stays at `info`. Dependencies log what they carry at debug and trace
//! (bollard logs a container's whole create request, `Env` included: masked variables and
//! `CI_JOB_TOKEN`; HTTP and TLS crates log headers), so their detail is shown only when a
//! directive names them (`DROVER_LOG=debug,bollard=debug`), never by a bare level.

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// Targets of Drover's own code, which a bare level applies to in full: a directive's target
/// matches every target it begins, so this one covers every `drover_*` crate.
pub const OWN_TARGETS: &[&str] = &["drover"];

/// The most a bare level lets through for any other target.
pub const DEPENDENCY_CAP: LevelFilter = LevelFilter::INFO;

/// Rewrites `spec` so a bare level above [`DEPENDENCY_CAP`] becomes the cap for everything
/// plus that level for each of [`OWN_TARGETS`] the spec does not name itself. Directives
/// that name a target are kept as written.
pub fn directives(spec: &str) -> String {
    let parts: Vec<&str> = spec
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    let named = |target: &str| {
        parts.iter().any(|d| {
            d.split(['=', '['])
                .next()
                .is_some_and(|t| t.trim() == target)
        })
    };
    let mut out = Vec::new();
    for d in &parts {
        match d.parse::<LevelFilter>() {
            Ok(level) if level > DEPENDENCY_CAP => {
                out.push(DEPENDENCY_CAP.to_string().to_lowercase());
                for own in OWN_TARGETS {
                    if !named(own) {
                        out.push(format!("{own}={}", level.to_string().to_lowercase()));
                    }
                }
            }
            _ => out.push((*d).to_string()),
        }
    }
    out.join(",")
}

/// The filter for a filter variable's value (`None`: unset); `info` when it cannot be parsed.
pub fn env_filter(value: Option<&str>) -> EnvFilter {
    value
        .and_then(|v| EnvFilter::try_new(directives(v)).ok())
        .unwrap_or_else(|| EnvFilter::new("info"))
}

/// The filter variable in force: `DROVER_LOG`, else `RUST_LOG` when `DROVER_LOG` is unset.
pub fn filter_value(
    drover_log: Option<String>,
    rust_log: impl FnOnce() -> Option<String>,
) -> Option<String> {
    drover_log.or_else(rust_log)
}

/// Installs the process's subscriber: the filter from the environment, lines on stderr,
/// and `extra` (a layer that sees the events the filter lets through).
pub fn init_with<L: Layer<Registry> + Send + Sync + 'static>(extra: L) {
    let value = filter_value(std::env::var("DROVER_LOG").ok(), || {
        std::env::var("RUST_LOG").ok()
    });
    tracing_subscriber::registry()
        .with(extra)
        .with(env_filter(value.as_deref()))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
}

/// [`init_with`] without an extra layer.
pub fn init() {
    init_with(tracing_subscriber::layer::Identity::new());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_levels_above_info_stop_at_drover_code() {
        assert_eq!(directives("debug"), "info,drover=debug");
        assert_eq!(directives(" TRACE "), "info,drover=trace");
        assert_eq!(directives("warn"), "warn");
        assert_eq!(
            directives("info,drover_agent=debug"),
            "info,drover_agent=debug"
        );
    }

    #[test]
    fn named_targets_are_kept_as_written() {
        assert_eq!(
            directives("trace,bollard=debug,drover_agent=info"),
            "info,drover=trace,bollard=debug,drover_agent=info"
        );
        assert_eq!(directives("debug,drover=info"), "info,drover=info");
        assert_eq!(directives("hyper[conn]=trace"), "hyper[conn]=trace");
    }

    #[test]
    fn drover_log_wins_over_rust_log() {
        let some = |s: &str| Some(s.to_string());
        assert_eq!(filter_value(some("debug"), || some("warn")), some("debug"));
        assert_eq!(filter_value(None, || some("warn")), some("warn"));
        assert_eq!(filter_value(None, || None), None);
        // Set but unreadable: `info`, not RUST_LOG.
        assert_eq!(filter_value(some("[bad"), || some("warn")), some("[bad"));
    }

    /// Whether `emit`'s event passes `env_filter(Some("trace"))`.
    fn passes_trace(emit: fn()) -> bool {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        use tracing_subscriber::layer::SubscriberExt;
        let seen = Arc::new(AtomicBool::new(false));
        let flag = seen.clone();
        let sub = tracing_subscriber::registry()
            .with(env_filter(Some("trace")))
            .with(Probe(move || flag.store(true, Ordering::SeqCst)));
        tracing::subscriber::with_default(sub, emit);
        seen.load(Ordering::SeqCst)
    }

    #[test]
    fn a_bare_level_keeps_dependencies_at_info() {
        assert!(!passes_trace(
            || tracing::debug!(target: "bollard::docker", "Env")
        ));
        assert!(passes_trace(
            || tracing::info!(target: "bollard::docker", "x")
        ));
        assert!(passes_trace(
            || tracing::trace!(target: "drover_job::executor", "x")
        ));
        assert!(passes_trace(
            || tracing::trace!(target: "drover_controller::server", "x")
        ));
        assert!(!passes_trace(|| tracing::debug!(target: "h2::codec", "x")));
        assert_eq!(
            env_filter(Some("not a [filter")).to_string(),
            EnvFilter::new("info").to_string()
        );
    }

    struct Probe<F>(F);

    impl<S: tracing::Subscriber, F: Fn() + 'static> tracing_subscriber::Layer<S> for Probe<F> {
        fn on_event(&self, _: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            (self.0)();
        }
    }
}
