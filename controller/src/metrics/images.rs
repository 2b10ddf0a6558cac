//! The image-delivery families (`drover image push`):
//!
//! - `drover_image_pushes_total`: pushes accepted (archive checked, deliveries recorded).
//! - `drover_image_push_stored_bytes_total`: blob bytes those pushes added to the store
//!   (a blob already stored adds nothing).
//! - `drover_image_push_bytes_sent_total`: blob bytes this process sent agents over
//!   `DownloadBlob` (what crossed the links; a resumed transfer counts only its new bytes).
//! - `drover_image_deliveries{state}`: deliveries per state (`pending`, `fetching`,
//!   `delivered`, `failed`), read from the store at each scrape; every state always present.
//! - `drover_image_deliveries_finished_total{state}`: deliveries this process saw end,
//!   `delivered` or `failed`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::images::DeliveryState;
use crate::store::DeliveryRecord;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    state: String,
}

/// Every delivery state, in the order exported.
const STATES: [DeliveryState; 4] = [
    DeliveryState::Pending,
    DeliveryState::Fetching,
    DeliveryState::Delivered,
    DeliveryState::Failed,
];

/// The image families' handles.
pub struct ImageMetrics {
    pushes: Counter,
    stored: Counter,
    sent: Counter,
    deliveries: Family<DeliveryLabels, Gauge>,
    finished: Family<DeliveryLabels, Counter>,
}

impl ImageMetrics {
    /// Registers the families in `registry`.
    pub(super) fn register(registry: &mut Registry) -> ImageMetrics {
        let m = ImageMetrics {
            pushes: Counter::default(),
            stored: Counter::default(),
            sent: Counter::default(),
            deliveries: Family::default(),
            finished: Family::default(),
        };
        registry.register(
            "drover_image_pushes",
            "Image pushes accepted (archive checked, deliveries recorded).",
            m.pushes.clone(),
        );
        registry.register(
            "drover_image_push_stored_bytes",
            "Blob bytes image pushes added to the store.",
            m.stored.clone(),
        );
        registry.register(
            "drover_image_push_bytes_sent",
            "Image blob bytes sent to agents (DownloadBlob).",
            m.sent.clone(),
        );
        registry.register(
            "drover_image_deliveries",
            "Image deliveries per state (pending, fetching, delivered, failed).",
            m.deliveries.clone(),
        );
        registry.register(
            "drover_image_deliveries_finished",
            "Image deliveries this controller saw end, by state (delivered, failed).",
            m.finished.clone(),
        );
        // Both ends present from the start, so a rate over them has a first point.
        for s in STATES.into_iter().filter(|s| !s.open()) {
            m.finished
                .get_or_create(&DeliveryLabels {
                    state: s.as_str().into(),
                })
                .inc_by(0);
        }
        m
    }

    /// A push was accepted, adding `stored_bytes` of new blobs.
    pub fn push(&self, stored_bytes: u64) {
        self.pushes.inc();
        self.stored.inc_by(stored_bytes);
    }

    /// `bytes` of blob were sent to an agent.
    pub fn sent(&self, bytes: u64) {
        self.sent.inc_by(bytes);
    }

    /// A delivery ended in `state` (an open state is not an end and is ignored).
    pub fn finished(&self, state: DeliveryState) {
        if state.open() {
            return;
        }
        self.finished
            .get_or_create(&DeliveryLabels {
                state: state.as_str().into(),
            })
            .inc();
    }

    /// Sets the per-state gauge from every delivery `rows` (an unknown state is not
    /// counted).
    pub(super) fn set_deliveries(&self, rows: &[DeliveryRecord]) {
        for s in STATES {
            let n = rows.iter().filter(|d| d.state == s.as_str()).count();
            self.deliveries
                .get_or_create(&DeliveryLabels {
                    state: s.as_str().into(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}
