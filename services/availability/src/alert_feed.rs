//! The alert feed: after a physical change leaves a cell at or below zero ATP (a count below the
//! promised units, a negative adjustment, a safety increase), the cell goes to the replenishment
//! service in the background, so an OVERCOMMITTED cell raises its alert instead of going unnoticed
//! (invariant 1). Batched, a few retries, never on the caller's path.
use std::time::Duration;

use mesh_counters::Cell;
use mesh_proto::{
    common::v1::CellRef,
    replenishment::v1::{EvaluateCellsRequest, replenishment_service_client::ReplenishmentServiceClient},
};
use service_kit::CallContext;
use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::Channel;

/// Queues cells for alert evaluation.
#[derive(Clone)]
pub struct AlertFeed {
    queue: mpsc::Sender<CellRef>,
}

impl AlertFeed {
    /// Starts the background sender on `tracker`; it stops on `shutdown`.
    pub fn start(channel: Channel, call_timeout: Duration, tracker: &TaskTracker, shutdown: CancellationToken) -> Self {
        let (queue, mut receiver) = mpsc::channel::<CellRef>(10_000);
        let mut client = ReplenishmentServiceClient::new(channel);
        tracker.spawn(async move {
            loop {
                let first = tokio::select! {
                    cell = receiver.recv() => cell,
                    () = shutdown.cancelled() => None,
                };
                let Some(first) = first else { break };
                let mut cells = vec![first];
                while cells.len() < 500 {
                    match receiver.try_recv() {
                        Ok(cell) => cells.push(cell),
                        Err(_) => break,
                    }
                }
                for attempt in 0..3u32 {
                    let Ok(request) = CallContext::background().request(EvaluateCellsRequest { cells: cells.clone() }, call_timeout)
                    else {
                        break;
                    };
                    match client.evaluate_cells(request).await {
                        Ok(_) => break,
                        Err(status) => {
                            tracing::warn!(code = ?status.code(), attempt, count = cells.len(), "cells not delivered to replenishment");
                            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                        }
                    }
                }
            }
        });
        Self { queue }
    }

    /// Queues a cell (dropped with a warning when the queue is full: the periodic evaluation and
    /// RunReplenishment still see it once it has an alert or demand).
    pub fn send(&self, cell: &Cell) {
        let cell = CellRef { sku: cell.sku.clone(), location_id: cell.location.clone() };
        if self.queue.try_send(cell).is_err() {
            tracing::warn!("alert feed full or stopped; a cell was not forwarded");
        }
    }
}
