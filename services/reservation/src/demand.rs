//! The demand feed: after a confirm, the confirmed lines go to the replenishment service in the
//! background (batched, idempotent by demand id, a few retries), so confirm latency never waits
//! on replenishment.
use std::time::Duration;

use mesh_proto::{
    common::v1::CellRef,
    replenishment::v1::{Demand, RecordDemandRequest, replenishment_service_client::ReplenishmentServiceClient},
};
use service_kit::CallContext;
use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::Channel;

use crate::store::StoredReservation;

/// Queues confirmed demand for the replenishment service.
#[derive(Clone)]
pub struct DemandSender {
    queue: mpsc::Sender<Demand>,
}

impl DemandSender {
    /// Starts the background sender on `tracker`; it drains the queue and stops on `shutdown`.
    pub fn start(channel: Channel, call_timeout: Duration, tracker: &TaskTracker, shutdown: CancellationToken) -> Self {
        let (queue, mut receiver) = mpsc::channel::<Demand>(10_000);
        let mut client = ReplenishmentServiceClient::new(channel);
        tracker.spawn(async move {
            loop {
                let first = tokio::select! {
                    demand = receiver.recv() => demand,
                    () = shutdown.cancelled() => None,
                };
                let Some(first) = first else { break };
                let mut batch = vec![first];
                while batch.len() < 200 {
                    match receiver.try_recv() {
                        Ok(demand) => batch.push(demand),
                        Err(_) => break,
                    }
                }
                for attempt in 0..3u32 {
                    let request = match CallContext::background().request(RecordDemandRequest { demands: batch.clone() }, call_timeout) {
                        Ok(request) => request,
                        Err(_) => break,
                    };
                    match client.record_demand(request).await {
                        Ok(_) => break,
                        Err(status) if status.code() == tonic::Code::InvalidArgument => {
                            tracing::error!(message = status.message(), count = batch.len(), "demand rejected by replenishment");
                            break;
                        }
                        Err(status) => {
                            tracing::warn!(code = ?status.code(), attempt, count = batch.len(), "demand not delivered to replenishment");
                            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                        }
                    }
                }
            }
        });
        Self { queue }
    }

    /// Queues the lines of a confirmed reservation.
    pub async fn send(&self, reservation: &StoredReservation, occurred_at_ms: Option<i64>) {
        let at_ms = occurred_at_ms.unwrap_or_else(crate::store::now_ms);
        for (position, line) in reservation.lines.iter().enumerate() {
            let demand = Demand {
                // Unique per reservation line and short enough for an id (≤ 128 characters).
                demand_id: format!("{}/{position}", reservation.reservation_id),
                cell: Some(CellRef { sku: line.cell.sku.clone(), location_id: line.cell.location.clone() }),
                quantity_units: line.units,
                occurred_at: Some(prost_types::Timestamp {
                    seconds: at_ms.div_euclid(1000),
                    nanos: (at_ms.rem_euclid(1000) * 1_000_000) as i32,
                }),
            };
            if self.queue.send(demand).await.is_err() {
                tracing::warn!("demand feed stopped; confirmed demand not forwarded");
            }
        }
    }
}
