//! The disk budget an agent applies, from its runners' `[runners.drover_gc]` tables.

use std::time::Duration;

use drover_proto::spec::{
    DEFAULT_IMAGES_MAX_IDLE, DEFAULT_IMAGES_MAX_SIZE, DEFAULT_VOLUMES_MAX_IDLE,
    DEFAULT_VOLUMES_MAX_SIZE, RunnerConfig, parse_go_duration, parse_size,
};
use serde::{Deserialize, Serialize};

/// Size and idle bounds of one kind of object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limit {
    pub max_bytes: u64,
    /// `0`: no bound by age.
    pub max_idle_secs: u64,
}

/// The bounds the collector applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskBudget {
    /// Builds volumes.
    pub volumes: Limit,
    /// Job and service images the agent pulled.
    pub images: Limit,
    /// Unused images Drover did not pull count and may go too.
    pub remove_foreign_images: bool,
}

impl Default for DiskBudget {
    fn default() -> Self {
        // The defaults are constants the tests below parse; a failure is a bug here.
        let size = |s: &str| parse_size(s).unwrap_or(u64::MAX);
        let idle = |s: &str| parse_go_duration(s).map(|d| d.as_secs()).unwrap_or(0);
        DiskBudget {
            volumes: Limit {
                max_bytes: size(DEFAULT_VOLUMES_MAX_SIZE),
                max_idle_secs: idle(DEFAULT_VOLUMES_MAX_IDLE),
            },
            images: Limit {
                max_bytes: size(DEFAULT_IMAGES_MAX_SIZE),
                max_idle_secs: idle(DEFAULT_IMAGES_MAX_IDLE),
            },
            remove_foreign_images: false,
        }
    }
}

/// The tighter of two idle bounds (`0` is none).
fn tighter_idle(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, x) | (x, 0) => x,
        (a, b) => a.min(b),
    }
}

impl DiskBudget {
    /// The budget of an agent serving `runners`: the defaults, tightened by every value a
    /// runner sets (the smallest size, the shortest age; foreign images go when any runner
    /// opts in). Values were validated by the spec parser; one that still does not parse
    /// keeps the default.
    pub fn from_runners<'a>(runners: impl IntoIterator<Item = &'a RunnerConfig>) -> Self {
        let mut b = DiskBudget::default();
        let mut set = [false; 4];
        for r in runners {
            let Some(g) = &r.drover_gc else { continue };
            let mut size = |slot: usize, v: &Option<String>, into: &mut u64| {
                if let Some(n) = v.as_deref().and_then(|v| parse_size(v).ok()) {
                    *into = if set[slot] { (*into).min(n) } else { n };
                    set[slot] = true;
                }
            };
            size(0, &g.volumes_max_size, &mut b.volumes.max_bytes);
            size(1, &g.images_max_size, &mut b.images.max_bytes);
            let mut idle = |slot: usize, v: Option<Duration>, into: &mut u64| {
                if let Some(d) = v {
                    *into = if set[slot] {
                        tighter_idle(*into, d.as_secs())
                    } else {
                        d.as_secs()
                    };
                    set[slot] = true;
                }
            };
            idle(
                2,
                g.volumes_max_idle.map(|d| d.0),
                &mut b.volumes.max_idle_secs,
            );
            idle(
                3,
                g.images_max_idle.map(|d| d.0),
                &mut b.images.max_idle_secs,
            );
            if g.remove_foreign_images == Some(true) {
                b.remove_foreign_images = true;
            }
        }
        b
    }
}

/// The images runner specs require (`[runners.docker] image`, `services` names and
/// `[runners.drover_images] required`): never removed, whoever pulled them.
pub fn required_images<'a>(runners: impl IntoIterator<Item = &'a RunnerConfig>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in runners {
        if let Some(images) = &r.drover_images {
            out.extend(
                images
                    .required
                    .iter()
                    .map(|i| i.trim())
                    .filter(|i| !i.is_empty())
                    .map(str::to_string),
            );
        }
        let Some(d) = &r.docker else { continue };
        if let Some(i) = d.image.as_deref().map(str::trim).filter(|i| !i.is_empty()) {
            out.push(i.to_string());
        }
        for s in &d.services {
            if let Some(n) = s.get("name").and_then(|n| n.as_str()).map(str::trim)
                && !n.is_empty()
            {
                out.push(n.to_string());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner(gc: &str, docker: &str) -> RunnerConfig {
        toml::from_str(&format!(
            "name = \"r\"\n[drover_gc]\n{gc}\n[docker]\n{docker}\n"
        ))
        .expect("runner toml")
    }

    #[test]
    fn defaults_fit_a_32_gb_box() {
        let b = DiskBudget::default();
        assert_eq!(b.volumes.max_bytes, 4 << 30);
        assert_eq!(b.images.max_bytes, 6 << 30);
        assert_eq!(b.volumes.max_idle_secs, 7 * 86400);
        assert_eq!(b.images.max_idle_secs, 14 * 86400);
        assert!(!b.remove_foreign_images);
        assert_eq!(DiskBudget::from_runners(&[runner("", "")]), b);
    }

    #[test]
    fn the_tightest_runner_value_wins() {
        let a = runner(
            "volumes_max_size = \"1g\"\nvolumes_max_idle = \"48h\"\nimages_max_idle = \"0\"",
            "",
        );
        let b = runner(
            "volumes_max_size = \"2g\"\nvolumes_max_idle = \"24h\"\nremove_foreign_images = true",
            "",
        );
        let got = DiskBudget::from_runners([&a, &b]);
        assert_eq!(got.volumes.max_bytes, 1 << 30);
        assert_eq!(got.volumes.max_idle_secs, 86400);
        // "0" is no age bound; the default image size stays.
        assert_eq!(got.images.max_idle_secs, 0);
        assert_eq!(got.images.max_bytes, 6 << 30);
        assert!(got.remove_foreign_images);
        // A larger value than the default, set alone, is taken as it is.
        let big = runner("volumes_max_size = \"20g\"", "");
        assert_eq!(DiskBudget::from_runners([&big]).volumes.max_bytes, 20 << 30);
    }

    #[test]
    fn required_images_are_the_default_image_and_services() {
        let a = runner(
            "",
            "image = \"alpine:3.20\"\n[[docker.services]]\nname = \"postgres:16\"\n",
        );
        let b = runner("", "image = \" alpine:3.20 \"");
        assert_eq!(
            required_images([&a, &b]),
            vec!["alpine:3.20".to_string(), "postgres:16".to_string()]
        );
        let c: RunnerConfig = toml::from_str(
            "name = \"c\"\n[drover_images]\nrequired = [\"app:1\", \"alpine:3.20\"]\n",
        )
        .expect("runner toml");
        assert_eq!(
            required_images([&a, &c]),
            vec![
                "alpine:3.20".to_string(),
                "app:1".to_string(),
                "postgres:16".to_string()
            ]
        );
    }
}
