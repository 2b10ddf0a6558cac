//! Semantic checks of a parsed file: what Drover cannot run is refused with the path of the
//! offending key (the parser turns it into a line).

use secrecy::ExposeSecret;

use super::locate::TomlPath;
use super::parse::ParseMode;
use super::{Config, RunnerConfig};

/// Highest `concurrent` / `limit` accepted: far above what one box runs, low enough to catch
/// typos such as a byte count.
pub const MAX_JOBS: u32 = 1000;

/// One refusal: the key and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub path: TomlPath,
    pub message: String,
}

fn bad(path: TomlPath, message: impl Into<String>) -> Violation {
    Violation {
        path,
        message: message.into(),
    }
}

const LOG_LEVELS: &[&str] = &[
    "debug", "info", "warn", "warning", "error", "fatal", "panic",
];

/// Checks `config` for `mode`; the first violation in file order wins.
pub fn validate(config: &Config, mode: ParseMode) -> Result<(), Violation> {
    let root = TomlPath::default();
    if let Some(c) = config.concurrent
        && !(1..=MAX_JOBS).contains(&c)
    {
        return Err(bad(
            root.key("concurrent"),
            format!("concurrent = {c}: must be between 1 and {MAX_JOBS}"),
        ));
    }
    if let Some(i) = config.check_interval
        && i > 3600
    {
        return Err(bad(
            root.key("check_interval"),
            format!("check_interval = {i}: must be at most 3600 seconds"),
        ));
    }
    if let Some(l) = &config.log_level
        && !LOG_LEVELS.contains(&l.as_str())
    {
        return Err(bad(
            root.key("log_level"),
            format!(
                "log_level = {l:?}: expected one of {}",
                LOG_LEVELS.join(", ")
            ),
        ));
    }
    if mode == ParseMode::Standalone && config.runners.is_empty() {
        return Err(bad(
            root.key("runners"),
            "no [[runners]] table: nothing to serve",
        ));
    }
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, r) in config.runners.iter().enumerate() {
        validate_runner(r, i, mode)?;
        // A fleet tells runners apart by name: any text, but present and unique. (In a
        // standalone `config.toml` the name is informational only, as in gitlab-runner.)
        if mode == ParseMode::Spec {
            let path = TomlPath::runner(i).key("name");
            if r.name.trim().is_empty() {
                return Err(bad(
                    path,
                    format!(
                        "runner #{}: name missing; every runner needs a unique name",
                        i + 1
                    ),
                ));
            }
            if let Some(first) = seen.insert(&r.name, i) {
                return Err(bad(
                    path,
                    format!("name {:?} is also used by runners[{first}]", r.name),
                ));
            }
        }
    }
    Ok(())
}

fn runner_label(r: &RunnerConfig, index: usize) -> String {
    if r.name.is_empty() {
        format!("runner #{}", index + 1)
    } else {
        format!("runner {:?}", r.name)
    }
}

fn validate_runner(r: &RunnerConfig, index: usize, mode: ParseMode) -> Result<(), Violation> {
    let base = TomlPath::runner(index);
    let who = runner_label(r, index);
    match r.executor.as_str() {
        "docker" => {}
        "" => {
            return Err(bad(
                base.key("executor"),
                format!("{who}: executor missing; only \"docker\" is supported"),
            ));
        }
        other => {
            return Err(bad(
                base.key("executor"),
                format!("{who}: executor {other:?} is not supported; only \"docker\" is"),
            ));
        }
    }
    if r.url.is_empty() {
        return Err(bad(base.key("url"), format!("{who}: url missing")));
    }
    if let Err(e) = check_url(&r.url) {
        return Err(bad(base.key("url"), format!("{who}: url {:?}: {e}", r.url)));
    }
    if let Some(c) = &r.cache {
        super::cache::validate_cache(c, &base, &who)?;
    }
    let present = |t: &Option<secrecy::SecretString>| {
        t.as_ref()
            .is_some_and(|t| !t.expose_secret().trim().is_empty())
    };
    let has_token = present(&r.token);
    if !has_token {
        match mode {
            ParseMode::Standalone => {
                return Err(bad(base.key("token"), format!("{who}: token missing")));
            }
            ParseMode::Spec
                if !present(&r.registration_token) && !present(&r.runner_creation_token) =>
            {
                return Err(bad(
                    base.key("token"),
                    format!("{who}: token, registration_token or runner_creation_token required"),
                ));
            }
            ParseMode::Spec => {}
        }
    }
    if let Some(t) = r.runner_type.as_deref() {
        let needs = match t {
            "instance_type" => None,
            "group_type" => Some(("group_id", r.group_id)),
            "project_type" => Some(("project_id", r.project_id)),
            other => {
                return Err(bad(
                    base.key("runner_type"),
                    format!(
                        "{who}: runner_type {other:?}: expected instance_type, group_type or project_type"
                    ),
                ));
            }
        };
        if let Some((key, None)) = needs {
            return Err(bad(
                base.key("runner_type"),
                format!("{who}: runner_type {t:?} needs {key}"),
            ));
        }
    }
    if let Some(l) = r.limit
        && l > MAX_JOBS
    {
        return Err(bad(
            base.key("limit"),
            format!("{who}: limit = {l}: must be between 0 (no limit) and {MAX_JOBS}"),
        ));
    }
    if let Some(rc) = r.request_concurrency
        && !(1..=MAX_JOBS).contains(&rc)
    {
        return Err(bad(
            base.key("request_concurrency"),
            format!("{who}: request_concurrency = {rc}: must be between 1 and {MAX_JOBS}"),
        ));
    }
    if r.output_limit == Some(0) {
        return Err(bad(
            base.key("output_limit"),
            format!("{who}: output_limit must be at least 1 (KiB)"),
        ));
    }
    if r.name.chars().count() > super::limits::MAX_NAME_CHARS {
        return Err(bad(
            base.key("name"),
            format!(
                "name of {} characters; at most {} are accepted",
                r.name.chars().count(),
                super::limits::MAX_NAME_CHARS
            ),
        ));
    }
    if mode == ParseMode::Spec {
        if r.selector.len() > super::limits::MAX_LABELS {
            return Err(bad(
                base.key("selector"),
                format!(
                    "{who}: {} selector entries; at most {} are accepted",
                    r.selector.len(),
                    super::limits::MAX_LABELS
                ),
            ));
        }
        // GitLab reads `tag_list` with `CommaSeparatedToArray` (lib/api/ci/runner.rb and
        // lib/api/user_runners.rb in gitlabhq/gitlabhq): a comma splits a tag in two, and
        // Drover, like gitlab-runner, sends the list joined with commas.
        for (j, t) in r.tag_list.iter().enumerate() {
            if t.trim().is_empty() || t.contains(',') {
                let mut p = base.key("tag_list");
                p.0.push(super::locate::Segment::Index(j));
                return Err(bad(
                    p,
                    format!("{who}: tag {t:?}: a tag is not blank and holds no comma"),
                ));
            }
        }
        for (k, v) in &r.selector {
            if let Err(e) = super::validate_label(k, v) {
                return Err(bad(base.key("selector").key(k), format!("{who}: {e}")));
            }
        }
    }
    if let Some(g) = &r.drover_gc {
        let gp = base.key("drover_gc");
        for (k, v) in [
            ("volumes_max_size", &g.volumes_max_size),
            ("images_max_size", &g.images_max_size),
        ] {
            if let Some(v) = v
                && let Err(e) = super::parse_size(v)
            {
                return Err(bad(gp.key(k), format!("{who}: {k} = {v:?}: {e}")));
            }
        }
    }
    if let Some(images) = &r.drover_images {
        let ip = base.key("drover_images").key("required");
        for (j, image) in images.required.iter().enumerate() {
            if let Some(problem) = super::image_ref_problem(image) {
                let mut p = ip.clone();
                p.0.push(super::locate::Segment::Index(j));
                return Err(bad(p, format!("{who}: image {image:?}: {problem}")));
            }
        }
    }
    if let Some(d) = &r.docker {
        let dp = base.key("docker");
        if let Some(s) = d.shm_size
            && s < 0
        {
            return Err(bad(
                dp.key("shm_size"),
                format!("{who}: shm_size = {s}: must not be negative"),
            ));
        }
        if let Some(p) = &d.pull_policy
            && p.policies().is_empty()
        {
            return Err(bad(
                dp.key("pull_policy"),
                format!("{who}: pull_policy is an empty list"),
            ));
        }
        for (k, v) in [
            ("memory", &d.memory),
            ("memory_swap", &d.memory_swap),
            ("memory_reservation", &d.memory_reservation),
        ] {
            if let Some(v) = v
                && let Err(e) = super::parse_size(v)
            {
                return Err(bad(dp.key(k), format!("{who}: {k} = {v:?}: {e}")));
            }
        }
        if let Some(c) = &d.cpus
            && !c.parse::<f64>().is_ok_and(|f| f > 0.0 && f.is_finite())
        {
            return Err(bad(
                dp.key("cpus"),
                format!("{who}: cpus = {c:?}: expected a positive number like 1.5"),
            ));
        }
        for (j, v) in d.volumes.iter().enumerate() {
            if v.trim().is_empty() || v.split(':').count() > 3 {
                let mut p = dp.key("volumes");
                p.0.push(super::locate::Segment::Index(j));
                return Err(bad(
                    p,
                    format!("{who}: volume {v:?}: expected PATH or HOST:CONTAINER[:MODE]"),
                ));
            }
        }
    }
    Ok(())
}

/// `http(s)://host[:port][/path]`, no whitespace.
fn check_url(url: &str) -> Result<(), &'static str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("must start with http:// or https://")?;
    if url.chars().any(char::is_whitespace) {
        return Err("must not contain spaces");
    }
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit_once('@').map(|(_, h)| h).unwrap_or(host);
    if host.is_empty() || host.starts_with(':') {
        return Err("has no host");
    }
    if let Some((_, port)) = host.rsplit_once(':')
        && !host.ends_with(']')
        && port.parse::<u16>().is_err()
    {
        return Err("has an invalid port");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(check_url("https://gitlab.com").is_ok());
        assert!(check_url("http://127.0.0.1:8080/").is_ok());
        assert!(check_url("http://[::1]:80").is_ok());
        assert!(check_url("gitlab.com").is_err());
        assert!(check_url("https://").is_err());
        assert!(check_url("https://host:99999").is_err());
        assert!(check_url("https://a b").is_err());
    }
}
