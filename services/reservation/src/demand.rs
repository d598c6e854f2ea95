//! The demand feed: after a confirm, the confirmed lines go to the replenishment service in the
//! background (batched, idempotent by demand id), so confirm latency never waits on replenishment.
use std::time::Duration;

use mesh_proto::{
    common::v1::CellRef,
    replenishment::v1::{Demand, RecordDemandRequest, replenishment_service_client::ReplenishmentServiceClient},
};
use service_kit::{CallContext, feed::BatchFeed};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::Channel;

use crate::store::StoredReservation;

/// Queues confirmed demand for the replenishment service.
#[derive(Clone)]
pub struct DemandSender {
    feed: BatchFeed<Demand>,
}

impl DemandSender {
    /// Starts the background sender on `tracker`; it stops on `shutdown`.
    pub fn start(channel: Channel, call_timeout: Duration, tracker: &TaskTracker, shutdown: CancellationToken) -> Self {
        let client = ReplenishmentServiceClient::new(channel);
        let feed = BatchFeed::start("demand", 200, tracker, shutdown, move |demands| {
            let mut client = client.clone();
            async move {
                let request = CallContext::background().request(RecordDemandRequest { demands }, call_timeout)?;
                client.record_demand(request).await.map(|_| ())
            }
        });
        Self { feed }
    }

    /// Queues the lines of a confirmed reservation.
    pub async fn send(&self, reservation: &StoredReservation, occurred_at_ms: Option<i64>) {
        let at_ms = occurred_at_ms.unwrap_or_else(service_kit::time::now_ms);
        for (position, line) in reservation.lines.iter().enumerate().filter(|(_, l)| l.reserved > 0) {
            self.feed
                .send(Demand {
                    // Unique per reservation line and short enough for an id (≤ 128 characters).
                    demand_id: format!("{}/{position}", reservation.reservation_id),
                    cell: Some(CellRef { sku: line.cell.sku.clone(), location_id: line.cell.location.clone() }),
                    quantity_units: line.reserved,
                    occurred_at: Some(service_kit::time::to_timestamp(at_ms)),
                })
                .await;
        }
    }
}
