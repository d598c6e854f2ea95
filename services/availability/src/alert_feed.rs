//! The alert feed: after a physical change leaves a cell at or below zero ATP (a count below the
//! promised units, a negative adjustment, a safety increase), the cell goes to the replenishment
//! service in the background, so an OVERCOMMITTED cell raises its alert instead of going unnoticed
//! (invariant 1). Never on the caller's path.
use std::time::Duration;

use mesh_counters::Cell;
use mesh_proto::{
    common::v1::CellRef,
    replenishment::v1::{EvaluateCellsRequest, replenishment_service_client::ReplenishmentServiceClient},
};
use service_kit::{CallContext, feed::BatchFeed};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::Channel;

/// Queues cells for alert evaluation.
#[derive(Clone)]
pub struct AlertFeed {
    feed: BatchFeed<CellRef>,
}

impl AlertFeed {
    /// Starts the background sender on `tracker`; it stops on `shutdown`.
    pub fn start(channel: Channel, call_timeout: Duration, tracker: &TaskTracker, shutdown: CancellationToken) -> Self {
        let client = ReplenishmentServiceClient::new(channel);
        let feed = BatchFeed::start("alert cells", 500, tracker, shutdown, move |cells| {
            let mut client = client.clone();
            async move {
                let request = CallContext::background().request(EvaluateCellsRequest { cells }, call_timeout)?;
                client.evaluate_cells(request).await.map(|_| ())
            }
        });
        Self { feed }
    }

    /// Queues a cell without waiting (when the queue is full it is dropped with a warning: the
    /// periodic evaluation and RunReplenishment still see it once it has an alert or demand).
    pub fn send(&self, cell: &Cell) {
        self.feed.try_send(CellRef { sku: cell.sku.clone(), location_id: cell.location.clone() });
    }
}
