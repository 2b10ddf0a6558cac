//! Pre-flight of runners before an agent takes them on: the engine answers, and every image
//! a runner names (`[runners.docker] image`, `services` names, `[runners.drover_images]
//! required`) is usable under the runner's `pull_policy`, tried in order as a job would:
//!
//! - `never`: the image is present locally;
//! - `if-not-present`: present, or pullable;
//! - `always`: pullable.
//!
//! "Pullable" is asked of the registry through the engine without pulling
//! (`GET /distribution/{name}/json`), bounded by [`REGISTRY_TIMEOUT`]. Only a definite
//! answer refuses: the registry has no such image, or refused access. A registry that
//! cannot be reached or does not answer in time is *unknown*: the image is accepted with a
//! warning, since a registry outage is not the spec's fault and refusing would halt a
//! rollout on a blip (the job meets the same registry when it pulls). Checks run in
//! parallel, so a generation waits at most about one bound beyond the engine's answers.

use std::time::Duration;

use drover_proto::spec::{DockerConfig, PullPolicy, RunnerConfig};

use super::DockerExecutor;
use super::api::{ContainerApi, RegistryAnswer};
use super::image::{policies_text, policy_name, pull_policies};

/// How long the registry is given to say whether it has an image.
pub const REGISTRY_TIMEOUT: Duration = Duration::from_secs(3);

/// Checks one image under `policies` (in order, the first that holds wins). `Ok(None)`:
/// usable; `Ok(Some(warning))`: usable as far as can be told (the registry is unknown);
/// `Err(why)`: not usable, the text naming the image and the policy.
pub async fn check_image(
    api: &dyn ContainerApi,
    image: &str,
    policies: &[PullPolicy],
    timeout: Duration,
) -> Result<Option<String>, String> {
    let mut present: Option<bool> = None;
    let mut reasons = Vec::new();
    for policy in policies {
        if matches!(policy, PullPolicy::Never | PullPolicy::IfNotPresent) {
            let here = match present {
                Some(p) => p,
                None => {
                    let p = api
                        .image_id(image)
                        .await
                        .map_err(|e| format!("image {image:?}: {e}"))?
                        .is_some();
                    present = Some(p);
                    p
                }
            };
            if here {
                return Ok(None);
            }
            if *policy == PullPolicy::Never {
                reasons.push("is not present".to_string());
                continue;
            }
        }
        match api.registry_answer(image, timeout).await {
            RegistryAnswer::Found => return Ok(None),
            RegistryAnswer::Unknown(why) => {
                return Ok(Some(format!(
                    "image {image:?}: cannot tell whether it is pullable under pull_policy {:?} ({why}); accepted",
                    policy_name(*policy)
                )));
            }
            RegistryAnswer::Missing(why) => {
                reasons.push(format!("is not pullable ({why})"));
            }
        }
    }
    match policies {
        [one] => Err(format!(
            "image {image:?} {} and pull_policy is {:?}",
            reasons.join(", "),
            policy_name(*one)
        )),
        _ => Err(format!(
            "image {image:?} {} under pull_policy {}",
            reasons.join(", then "),
            policies_text(policies)
        )),
    }
}

/// Checks every image `runner` names. `Ok(warnings)` when each is usable (or unknown),
/// else the first refusal, naming the runner and the image.
pub async fn check_runner(
    api: &dyn ContainerApi,
    runner: &RunnerConfig,
    timeout: Duration,
) -> Result<Vec<String>, String> {
    let who = format!("runner {:?}", runner.name);
    let default_docker = DockerConfig::default();
    let docker = runner.docker.as_ref().unwrap_or(&default_docker);
    let policies = pull_policies(docker, &[]).map_err(|e| format!("{who}: {e}"))?;
    let images = crate::disk::required_images(std::iter::once(runner));
    let checks = images
        .iter()
        .map(|image| check_image(api, image, &policies, timeout));
    let mut warnings = Vec::new();
    for r in futures::future::join_all(checks).await {
        match r {
            Ok(None) => {}
            Ok(Some(w)) => warnings.push(format!("{who}: {w}")),
            Err(e) => return Err(format!("{who}: {e}")),
        }
    }
    Ok(warnings)
}

impl DockerExecutor {
    /// Pre-flight of `runners` (see the module doc): the engine answers, then each runner's
    /// images are checked, all in parallel. `Ok(warnings)` or the first refusal.
    pub async fn preflight(&self, runners: &[RunnerConfig]) -> Result<Vec<String>, String> {
        let Some(first) = runners.first() else {
            return Ok(Vec::new());
        };
        if let Err(e) = self.api.engine_info().await {
            return Err(format!(
                "runner {:?}: docker engine does not answer: {e}",
                first.name
            ));
        }
        let api = self.api.as_ref();
        let checks = runners
            .iter()
            .map(|r| check_runner(api, r, REGISTRY_TIMEOUT));
        let mut warnings = Vec::new();
        for r in futures::future::join_all(checks).await {
            warnings.extend(r?);
        }
        Ok(warnings)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::executor::fake::FakeApi;

    fn runner(toml_text: &str) -> RunnerConfig {
        toml::from_str(toml_text).expect("runner toml")
    }

    const T: Duration = Duration::from_millis(10);

    #[tokio::test]
    async fn never_needs_the_image_here() {
        let api = FakeApi::default();
        api.add_image("app:1", "sha256:1");
        let ok = runner("name = \"edge\"\n[docker]\nimage = \"app:1\"\npull_policy = \"never\"\n");
        assert_eq!(check_runner(&api, &ok, T).await, Ok(vec![]));
        let missing = runner(
            "name = \"edge\"\n[docker]\nimage = \"app:1\"\npull_policy = \"never\"\n\
             [drover_images]\nrequired = [\"app:9\"]\n",
        );
        assert_eq!(
            check_runner(&api, &missing, T).await,
            Err(
                "runner \"edge\": image \"app:9\" is not present and pull_policy is \"never\""
                    .into()
            )
        );
        // A service missing is refused the same way.
        let svc = runner(
            "name = \"edge\"\n[docker]\nimage = \"app:1\"\npull_policy = \"never\"\n\
             [[docker.services]]\nname = \"db:16\"\n",
        );
        let err = check_runner(&api, &svc, T).await.unwrap_err();
        assert!(err.contains("image \"db:16\" is not present"), "{err}");
    }

    #[tokio::test]
    async fn if_not_present_takes_present_or_pullable() {
        let api = FakeApi::default();
        api.add_image("here:1", "sha256:1");
        api.set_registry("pullable:1", RegistryAnswer::Found);
        api.set_registry("gone:1", RegistryAnswer::Missing("manifest unknown".into()));
        let r = |image: &str| {
            runner(&format!(
                "name = \"r\"\n[docker]\nimage = \"{image}\"\npull_policy = \"if-not-present\"\n"
            ))
        };
        assert_eq!(check_runner(&api, &r("here:1"), T).await, Ok(vec![]));
        assert_eq!(check_runner(&api, &r("pullable:1"), T).await, Ok(vec![]));
        let err = check_runner(&api, &r("gone:1"), T).await.unwrap_err();
        assert_eq!(
            err,
            "runner \"r\": image \"gone:1\" is not pullable (manifest unknown) and pull_policy is \"if-not-present\""
        );
        // No registry answer: accepted with a warning naming the image.
        let w = check_runner(&api, &r("nowhere:1"), T).await.unwrap();
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("image \"nowhere:1\": cannot tell"), "{w:?}");
    }

    #[tokio::test]
    async fn always_asks_the_registry_and_a_list_is_tried_in_order() {
        let api = FakeApi::default();
        api.add_image("app:1", "sha256:1");
        api.set_registry("app:1", RegistryAnswer::Missing("denied".into()));
        // `always` (the default) wants it pullable, even when present.
        let always = runner("name = \"r\"\n[docker]\nimage = \"app:1\"\n");
        let err = check_runner(&api, &always, T).await.unwrap_err();
        assert!(err.contains("pull_policy is \"always\""), "{err}");
        // always, then if-not-present: the local copy is used.
        let list = runner(
            "name = \"r\"\n[docker]\nimage = \"app:1\"\npull_policy = [\"always\", \"if-not-present\"]\n",
        );
        assert_eq!(check_runner(&api, &list, T).await, Ok(vec![]));
        api.set_registry("app:2", RegistryAnswer::Missing("denied".into()));
        let list = runner(
            "name = \"r\"\n[docker]\nimage = \"app:2\"\npull_policy = [\"always\", \"never\"]\n",
        );
        let err = check_runner(&api, &list, T).await.unwrap_err();
        assert_eq!(
            err,
            "runner \"r\": image \"app:2\" is not pullable (denied), then is not present under pull_policy [always never]"
        );
    }

    #[tokio::test]
    async fn a_silent_engine_refuses_naming_the_runner() {
        let api = Arc::new(FakeApi::default());
        let ex = DockerExecutor::with_api(api.clone());
        let ok = runner("name = \"edge\"\n");
        assert_eq!(ex.preflight(std::slice::from_ref(&ok)).await, Ok(vec![]));
        api.stop_daemon();
        let err = ex.preflight(&[ok]).await.unwrap_err();
        assert!(
            err.starts_with("runner \"edge\": docker engine does not answer"),
            "{err}"
        );
        assert_eq!(ex.preflight(&[]).await, Ok(vec![]));
    }
}
