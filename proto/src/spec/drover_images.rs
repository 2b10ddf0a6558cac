//! `[runners.drover_images]`: Drover's own table beside `[runners.docker]`, the images a
//! runner needs besides its default `image` and `services` (images its jobs name in
//! `image:`). An agent checks, before it acknowledges a generation, that each is present or
//! pullable under the runner's `pull_policy`, and its disk collector never removes them.

use serde::{Deserialize, Serialize};

/// Longest image reference accepted (Docker's own bound on a reference is 255 for the name
/// alone; a tag and digest add to it).
pub const MAX_IMAGE_REF_LEN: usize = 512;

/// `[runners.drover_images]` as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct DroverImagesConfig {
    /// Image references (`"app:1"`, `"registry.example/app@sha256:..."`).
    pub required: Vec<String>,
}

/// Why an image reference is refused, or `None` when it is acceptable: not blank, no
/// whitespace or control characters, at most [`MAX_IMAGE_REF_LEN`] bytes.
pub fn image_ref_problem(image: &str) -> Option<String> {
    if image.trim().is_empty() {
        return Some("an image reference is not blank".into());
    }
    if image.len() > MAX_IMAGE_REF_LEN {
        return Some(format!(
            "{} bytes; an image reference is at most {MAX_IMAGE_REF_LEN}",
            image.len()
        ));
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("an image reference holds no whitespace or control characters".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_refs_are_bounded() {
        assert_eq!(image_ref_problem("app:1"), None);
        assert_eq!(
            image_ref_problem("registry.example:5000/a/b@sha256:00"),
            None
        );
        assert!(image_ref_problem(" ").is_some());
        assert!(image_ref_problem("app 1").is_some());
        assert!(image_ref_problem(&"a".repeat(MAX_IMAGE_REF_LEN + 1)).is_some());
    }
}
