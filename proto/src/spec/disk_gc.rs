//! `[runners.drover_gc]`: Drover's own table beside `[runners.docker]`, the disk budget of
//! the Docker objects an agent keeps between jobs (builds volumes, pulled images). Absent
//! keys take the defaults below, sized for a 32 GB box (an OS, the engine, 5 GiB of local
//! caches per runner, and room for a build). An agent serving several runners applies the
//! tightest value any of them sets (the disk is the box's, not a runner's).

use serde::{Deserialize, Serialize};

use super::GoDuration;

/// Default bound of the builds volumes this agent keeps: 4 GiB.
pub const DEFAULT_VOLUMES_MAX_SIZE: &str = "4GiB";
/// Default idle age after which a builds volume goes: 7 days.
pub const DEFAULT_VOLUMES_MAX_IDLE: &str = "168h";
/// Default bound of the job and service images this agent pulled: 6 GiB.
pub const DEFAULT_IMAGES_MAX_SIZE: &str = "6GiB";
/// Default idle age after which a pulled image goes: 14 days.
pub const DEFAULT_IMAGES_MAX_IDLE: &str = "336h";

/// `[runners.drover_gc]` as written (every key optional).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct DiskGcConfig {
    /// Size bound of the builds volumes (`4GiB`, Docker's size units).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volumes_max_size: Option<String>,
    /// A builds volume unused this long is removed (`"168h"`; `"0"`: never by age).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volumes_max_idle: Option<GoDuration>,
    /// Size bound of the images the agent pulled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub images_max_size: Option<String>,
    /// A pulled image unused this long is removed (`"336h"`; `"0"`: never by age).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub images_max_idle: Option<GoDuration>,
    /// Also remove unused images Drover did not pull (default false: left alone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remove_foreign_images: Option<bool>,
}
