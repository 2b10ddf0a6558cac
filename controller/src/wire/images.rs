//! Images on the wire: the `FetchImage` command out, the agent's image reports in, and
//! `drover image ls`'s deliveries out.

use drover_proto::v1;

use super::WireError;
use crate::images::{DeliveryState, Manifest, archive::valid_digest};
use crate::store::{DeliveryRecord, ImageRecord};
use crate::timefmt;

/// What an agent says of one of its image fetches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageReport {
    Progress {
        image_id: String,
        bytes_total: u64,
        bytes_done: u64,
        layers_present: u32,
    },
    Loaded {
        image_id: String,
        /// `Err(reason)` when the agent gave up.
        outcome: Result<(), String>,
        layers_present: u32,
    },
}

impl ImageReport {
    pub fn image_id(&self) -> &str {
        match self {
            ImageReport::Progress { image_id, .. } | ImageReport::Loaded { image_id, .. } => {
                image_id
            }
        }
    }
}

fn image_id(v: String) -> Result<String, WireError> {
    if valid_digest(&v) {
        Ok(v)
    } else {
        Err(WireError::new(
            "image_id",
            format!("{v:?} is not a sha256 digest"),
        ))
    }
}

/// Longest failure reason kept from an agent.
const MAX_REASON: usize = 1000;

impl TryFrom<v1::ImageProgress> for ImageReport {
    type Error = WireError;
    fn try_from(p: v1::ImageProgress) -> Result<ImageReport, WireError> {
        Ok(ImageReport::Progress {
            image_id: image_id(p.image_id)?,
            bytes_total: p.bytes_total,
            bytes_done: p.bytes_done.min(p.bytes_total),
            layers_present: p.layers_present,
        })
    }
}

impl TryFrom<v1::ImageLoaded> for ImageReport {
    type Error = WireError;
    fn try_from(l: v1::ImageLoaded) -> Result<ImageReport, WireError> {
        let id = image_id(l.image_id)?;
        let outcome = if !l.error.is_empty() {
            Err(l.error.chars().take(MAX_REASON).collect())
        } else if l.loaded_id != id {
            Err(format!(
                "the engine loaded {:?}, not {id}",
                l.loaded_id.chars().take(100).collect::<String>()
            ))
        } else {
            Ok(())
        };
        Ok(ImageReport::Loaded {
            image_id: id,
            outcome,
            layers_present: l.layers_present,
        })
    }
}

/// The command telling an agent to fetch `image`.
pub fn fetch_image(image: &ImageRecord, manifest: &Manifest) -> v1::Command {
    v1::Command {
        kind: Some(v1::command::Kind::FetchImage(v1::FetchImage {
            image_id: image.id.clone(),
            reference: image.reference.clone(),
            config_size: manifest.config_size,
            layers: manifest
                .layers
                .iter()
                .map(|l| v1::ImageLayer {
                    digest: l.digest.clone(),
                    diff_id: l.diff_id.clone(),
                    size: l.size,
                })
                .collect(),
        })),
    }
}

/// A delivery for `drover image ls`.
pub fn delivery(d: &DeliveryRecord) -> v1::ImageDelivery {
    let state = match DeliveryState::parse(&d.state) {
        Some(DeliveryState::Pending) => v1::ImageDeliveryState::Pending,
        Some(DeliveryState::Fetching) => v1::ImageDeliveryState::Fetching,
        Some(DeliveryState::Delivered) => v1::ImageDeliveryState::Delivered,
        Some(DeliveryState::Failed) => v1::ImageDeliveryState::Failed,
        None => v1::ImageDeliveryState::Unspecified,
    };
    v1::ImageDelivery {
        agent_id: d.agent_id.clone(),
        image_id: d.image_id.clone(),
        reference: d.reference.clone(),
        state: state as i32,
        bytes_total: d.bytes_total,
        bytes_done: d.bytes_done,
        bytes_sent: d.bytes_sent,
        error: d.error.clone(),
        updated_at: d.updated_at.map(timefmt::to_proto),
        layers_present: d.layers_present,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";

    #[test]
    fn a_load_of_another_id_is_a_failure_and_a_bad_id_is_refused() {
        let ok = v1::ImageLoaded {
            image_id: ID.into(),
            loaded_id: ID.into(),
            ..Default::default()
        };
        assert!(matches!(
            ImageReport::try_from(ok.clone()),
            Ok(ImageReport::Loaded {
                outcome: Ok(()),
                ..
            })
        ));
        let other = v1::ImageLoaded {
            loaded_id: "sha256:ff".into(),
            ..ok.clone()
        };
        assert!(matches!(
            ImageReport::try_from(other),
            Ok(ImageReport::Loaded { outcome: Err(e), .. }) if e.contains("sha256:ff")
        ));
        let bad = v1::ImageLoaded {
            image_id: "../x".into(),
            ..ok
        };
        assert_eq!(
            ImageReport::try_from(bad).unwrap_err().field,
            "image_id".to_string()
        );
        let p = v1::ImageProgress {
            image_id: ID.into(),
            bytes_total: 5,
            bytes_done: 9,
            layers_present: 1,
        };
        assert!(matches!(
            ImageReport::try_from(p),
            Ok(ImageReport::Progress { bytes_done: 5, .. })
        ));
    }
}
