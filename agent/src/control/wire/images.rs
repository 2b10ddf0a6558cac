//! Images on the wire: `FetchImage` in (digests checked: they name files in the state
//! dir), the fetcher's reports out.

use drover_proto::v1;
use drover_proto::v1::agent_message::Kind as AgentKind;

use super::WireError;
use crate::images::{FetchImage, ImageReport, LayerSpec};

/// Most layers an image may have (Docker's own limit is 127 on overlay2).
const MAX_LAYERS: usize = 256;

fn digest(field: &str, d: String) -> Result<String, WireError> {
    let ok = d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if ok {
        Ok(d)
    } else {
        Err(WireError {
            field: field.into(),
            problem: format!(
                "{:?} is not a sha256 digest",
                d.chars().take(80).collect::<String>()
            ),
        })
    }
}

impl TryFrom<v1::FetchImage> for FetchImage {
    type Error = WireError;

    fn try_from(f: v1::FetchImage) -> Result<FetchImage, WireError> {
        let image_id = digest("fetch_image.image_id", f.image_id)?;
        let r = &f.reference;
        if r.is_empty() || r.len() > 255 || r.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(WireError {
                field: "fetch_image.reference".into(),
                problem: format!(
                    "{:?} is not an image name",
                    r.chars().take(80).collect::<String>()
                ),
            });
        }
        if f.layers.len() > MAX_LAYERS {
            return Err(WireError {
                field: "fetch_image.layers".into(),
                problem: format!("{} layers, more than {MAX_LAYERS}", f.layers.len()),
            });
        }
        let layers = f
            .layers
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                Ok(LayerSpec {
                    digest: digest(&format!("fetch_image.layers[{i}].digest"), l.digest)?,
                    diff_id: digest(&format!("fetch_image.layers[{i}].diff_id"), l.diff_id)?,
                    size: l.size,
                })
            })
            .collect::<Result<Vec<_>, WireError>>()?;
        Ok(FetchImage {
            image_id,
            reference: f.reference,
            config_size: f.config_size,
            layers,
        })
    }
}

/// A fetcher's report as an agent message kind.
pub fn report(r: ImageReport) -> AgentKind {
    match r {
        ImageReport::Progress {
            image_id,
            bytes_total,
            bytes_done,
            layers_present,
        } => AgentKind::ImageProgress(v1::ImageProgress {
            image_id,
            bytes_total,
            bytes_done,
            layers_present,
        }),
        ImageReport::Loaded {
            image_id,
            reference,
            outcome,
            layers_present,
        } => {
            let (loaded_id, error) = match outcome {
                Ok(id) => (id, String::new()),
                Err(e) => (String::new(), e),
            };
            AgentKind::ImageLoaded(v1::ImageLoaded {
                image_id,
                reference,
                error,
                loaded_id,
                layers_present,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn digests_that_would_leave_the_blob_dir_are_refused() {
        let ok = v1::FetchImage {
            image_id: d('a'),
            reference: "app:1".into(),
            config_size: 3,
            layers: vec![v1::ImageLayer {
                digest: d('b'),
                diff_id: d('c'),
                size: 5,
            }],
        };
        let f = FetchImage::try_from(ok.clone()).unwrap();
        assert_eq!(f.layers[0].digest, d('b'));
        let mut bad = ok.clone();
        bad.layers[0].digest = "sha256:../../etc".into();
        assert_eq!(
            FetchImage::try_from(bad).unwrap_err().field,
            "fetch_image.layers[0].digest"
        );
        let mut bad = ok;
        bad.reference = "a b".into();
        assert_eq!(
            FetchImage::try_from(bad).unwrap_err().field,
            "fetch_image.reference"
        );
    }
}
