//! The image-delivery families (images the controller pushes, `drover image push`):
//!
//! - `drover_agent_image_bytes_received_total`: blob bytes received from the controller
//!   and written to the state dir (a resumed download counts only its new bytes).
//! - `drover_agent_image_loads_total`: images loaded into the engine and reported delivered.
//! - `drover_agent_image_fetch_failures_total`: fetches given up (reported failed to the
//!   controller: refused, wrong id, state dir failing).
//! - `drover_agent_image_transfer_interruptions_total`: attempts cut short (link cut,
//!   controller away, a blob that did not match its digest, the engine away) and tried
//!   again.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

/// The image families' handles.
#[derive(Debug, Default)]
pub struct ImageMetrics {
    received: Counter,
    loads: Counter,
    failures: Counter,
    interruptions: Counter,
}

impl ImageMetrics {
    /// Registers the families in `registry`.
    pub(super) fn register(registry: &mut Registry) -> ImageMetrics {
        let m = ImageMetrics::default();
        registry.register(
            "drover_agent_image_bytes_received",
            "Image blob bytes received from the controller.",
            m.received.clone(),
        );
        registry.register(
            "drover_agent_image_loads",
            "Images delivered by the controller and loaded into the engine.",
            m.loads.clone(),
        );
        registry.register(
            "drover_agent_image_fetch_failures",
            "Image fetches given up and reported failed.",
            m.failures.clone(),
        );
        registry.register(
            "drover_agent_image_transfer_interruptions",
            "Image fetch attempts cut short and tried again.",
            m.interruptions.clone(),
        );
        m
    }

    /// `bytes` of blob arrived.
    pub fn received(&self, bytes: u64) {
        self.received.inc_by(bytes);
    }

    /// An image was loaded.
    pub fn loaded(&self) {
        self.loads.inc();
    }

    /// A fetch was given up.
    pub fn failed(&self) {
        self.failures.inc();
    }

    /// An attempt was cut short, to be tried again.
    pub fn interrupted(&self) {
        self.interruptions.inc();
    }
}
