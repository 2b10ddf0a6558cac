//! Label selectors: a runner runs on the agents whose labels hold every `key = value` of its
//! `[runners.selector]`. An empty selector selects every agent.

use std::collections::BTreeMap;

/// Whether `labels` satisfy `selector`.
pub fn matches(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn all_labels_must_match() {
        let labels = map(&[("site", "lab"), ("arch", "arm64")]);
        for (selector, want) in [
            (map(&[]), true),
            (map(&[("site", "lab")]), true),
            (map(&[("site", "lab"), ("arch", "arm64")]), true),
            (map(&[("site", "lab"), ("arch", "amd64")]), false),
            (map(&[("site", "Lab")]), false),
            (map(&[("rack", "r1")]), false),
        ] {
            assert_eq!(matches(&selector, &labels), want, "{selector:?}");
        }
    }
}
