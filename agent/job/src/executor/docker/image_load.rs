//! Images delivered by the controller (`drover image push`): which layers the engine
//! already holds, and loading a `docker save` archive the agent assembled.
//!
//! Docker's layer store keys a layer by its chain id (the layer and every layer below it),
//! and `docker load` reads a layer's file only when the store lacks that chain id (moby
//! `image/tarexport/load.go`), so an archive may leave out the files of layers present.

use std::collections::HashSet;
use std::path::Path;

use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::DockerExecutor;
use crate::executor::ExecutorError;

/// The chain ids of `diff_ids` (base first): the first is its diff id, each next one
/// `sha256(previous + " " + diff id)`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{prev} {d}").as_bytes()))
            ),
        };
        out.push(next);
    }
    out
}

impl DockerExecutor {
    /// The chain id of every layer of every image in the engine.
    pub async fn layer_chains(&self) -> Result<HashSet<String>, ExecutorError> {
        Ok(self
            .api
            .image_layers()
            .await?
            .iter()
            .flat_map(|layers| chain_ids(layers))
            .collect())
    }

    /// Loads the `docker save` archive at `path` and returns the id `reference` then has.
    pub async fn load_image_archive(
        &self,
        path: &Path,
        reference: &str,
    ) -> Result<String, ExecutorError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| ExecutorError::docker(format!("open {}", path.display()), e))?;
        let body = tokio_util::io::ReaderStream::new(file).boxed();
        let said = self.api.load_image(body).await?;
        tracing::info!(reference, output = %said.trim(), "image archive loaded");
        self.api.image_id(reference).await?.ok_or_else(|| {
            ExecutorError::docker(
                format!("load image {reference}"),
                std::io::Error::other(format!(
                    "the engine loaded the archive but has no image {reference}: {}",
                    said.trim()
                )),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::executor::fake::FakeApi;

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let ids = chain_ids(&[d('a'), d('b')]);
        assert_eq!(ids[0], d('a'));
        let want = hex::encode(Sha256::digest(format!("{} {}", d('a'), d('b')).as_bytes()));
        assert_eq!(ids[1], format!("sha256:{want}"));
        // The same layer on another base is another chain.
        assert_ne!(chain_ids(&[d('c'), d('b')])[1], ids[1]);
    }

    #[tokio::test]
    async fn chains_of_every_image_and_a_load_gives_the_tagged_id() {
        let api = FakeApi::default();
        api.set_image_layers("sha256:1", &["sha256:a", "sha256:b"]);
        let exec = DockerExecutor::with_api(Arc::new(api.clone()));
        let chains = exec.layer_chains().await.unwrap();
        assert_eq!(chains.len(), 2);
        assert!(chains.contains("sha256:a"));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("load.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
        let manifest = br#"[{"Config":"abc.json","RepoTags":["app:1"],"Layers":[]}]"#;
        let mut h = tar::Header::new_gnu();
        h.set_size(manifest.len() as u64);
        h.set_cksum();
        b.append_data(&mut h, "manifest.json", &manifest[..])
            .unwrap();
        b.finish().unwrap();
        drop(b);
        let id = exec.load_image_archive(&path, "app:1").await.unwrap();
        assert_eq!(id, "sha256:abc");
        assert_eq!(api.loads(), vec![vec!["manifest.json".to_string()]]);
        let err = exec.load_image_archive(&path, "other:1").await.unwrap_err();
        assert!(err.to_string().contains("has no image other:1"), "{err}");
    }
}
