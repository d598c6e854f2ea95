//! `inventory-mesh load flash-sale`: a flash sale against a running mesh, as a contention proof
//! users can run. U units of K fresh SKUs at one location, N buyers each reserving one unit of every
//! SKU, C of them in flight at a time, all released from one barrier. It counts what was accepted,
//! refused and failed, then reads the live counters back: `oversold_units` is what was accepted
//! (or is held) beyond the stock, and must be 0.
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use mesh_proto::{
    availability::v1::{
        EventType, GetCellAtpRequest, IngestEventsRequest, InventoryEvent, Location, LocationType,
        UpsertLocationsRequest, availability_service_client::AvailabilityServiceClient,
    },
    common::v1::CellRef,
    reservation::v1::{
        CreateReservationRequest, ReservationLine, reservation_service_client::ReservationServiceClient,
    },
};
use serde::Serialize;
use tokio::sync::{Barrier, Mutex};
use tonic::{Code, transport::Channel};

/// The sale to run.
#[derive(Debug, Clone)]
pub struct FlashSale {
    pub units: i64,
    pub buyers: u64,
    pub concurrency: usize,
    pub lines: usize,
    /// Prefix of the SKUs and reservation ids (fresh per run).
    pub run_id: String,
}

/// What the sale did; printed as one JSON line.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FlashSaleReport {
    pub attempts: u64,
    pub accepted_units: i64,
    pub rejected: u64,
    pub errors: u64,
    pub oversold_units: i64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub throughput_per_s: f64,
    /// The first error a buyer got (code and message), for the tool to show; not in the JSON line.
    #[serde(skip)]
    pub first_error: Option<String>,
}

/// Runs the sale against the availability (setup, read-back) and reservation services.
///
/// # Errors
/// The setup failed or the counters could not be read back.
pub async fn flash_sale(
    sale: &FlashSale,
    availability: Channel,
    reservation: Channel,
) -> anyhow::Result<FlashSaleReport> {
    anyhow::ensure!(
        sale.units >= 0 && sale.buyers > 0 && sale.concurrency > 0 && sale.lines > 0,
        "units >= 0, buyers, concurrency and lines > 0"
    );
    let mut availability = AvailabilityServiceClient::new(availability);
    let location = format!("{}-L", sale.run_id);
    let skus: Vec<String> = (0..sale.lines).map(|k| format!("{}-S{k}", sale.run_id)).collect();
    availability
        .upsert_locations(UpsertLocationsRequest {
            locations: vec![Location {
                location_id: location.clone(),
                r#type: LocationType::Dc as i32,
                position: None,
                priority: 0,
            }],
        })
        .await
        .map_err(|status| crate::rpc_error("UpsertLocations", &status))?;
    if sale.units > 0 {
        let events = skus
            .iter()
            .map(|sku| InventoryEvent {
                event_id: format!("{sku}-stock"),
                r#type: EventType::Receipt as i32,
                cell: Some(CellRef { sku: sku.clone(), location_id: location.clone() }),
                quantity_units: sale.units,
                occurred_at: Some(prost_types::Timestamp { seconds: 1, nanos: 0 }),
                source_system: "flash-sale".into(),
                ..InventoryEvent::default()
            })
            .collect();
        availability
            .ingest_events(IngestEventsRequest { events })
            .await
            .map_err(|status| crate::rpc_error("IngestEvents", &status))?;
    }

    let next_buyer = Arc::new(AtomicU64::new(0));
    let (accepted, rejected, errors) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let latency = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let barrier = Arc::new(Barrier::new(sale.concurrency + 1));
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let mut workers = Vec::with_capacity(sale.concurrency);
    for _ in 0..sale.concurrency {
        let (next_buyer, accepted, rejected, errors, latency, barrier) =
            (next_buyer.clone(), accepted.clone(), rejected.clone(), errors.clone(), latency.clone(), barrier.clone());
        let first_error = first_error.clone();
        let mut client = ReservationServiceClient::new(reservation.clone());
        let (skus, location, sale) = (skus.clone(), location.clone(), sale.clone());
        workers.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("static bounds are valid");
            barrier.wait().await;
            loop {
                let buyer = next_buyer.fetch_add(1, Ordering::SeqCst);
                if buyer >= sale.buyers {
                    break;
                }
                let request = CreateReservationRequest {
                    reservation_id: format!("{}-b{buyer}", sale.run_id),
                    order_id: String::new(),
                    lines: skus
                        .iter()
                        .map(|sku| ReservationLine {
                            sku: sku.clone(),
                            location_id: location.clone(),
                            quantity_units: 1,
                            ..Default::default()
                        })
                        .collect(),
                    ttl_ms: 600_000,
                    ..Default::default()
                };
                let started = Instant::now();
                let result = client.create_reservation(request).await;
                local.saturating_record(started.elapsed().as_micros() as u64);
                match result {
                    Ok(_) => accepted.fetch_add(1, Ordering::SeqCst),
                    Err(status) if status.code() == Code::FailedPrecondition => rejected.fetch_add(1, Ordering::SeqCst),
                    Err(status) => {
                        first_error
                            .lock()
                            .await
                            .get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
                        errors.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
            latency.lock().await.add(&local).ok();
        }));
    }
    barrier.wait().await;
    let started = Instant::now();
    for worker in workers {
        worker.await.context("a buyer task failed")?;
    }
    let elapsed = started.elapsed();

    let accepted_buyers = accepted.load(Ordering::SeqCst) as i64;
    let cells = skus.iter().map(|sku| CellRef { sku: sku.clone(), location_id: location.clone() }).collect();
    let counters = availability
        .get_cell_atp(GetCellAtpRequest { cells })
        .await
        .map_err(|status| crate::rpc_error("GetCellAtp", &status))?
        .into_inner()
        .cells;
    let oversold_units = counters.iter().map(|c| (accepted_buyers.max(c.held_units) - sale.units).max(0)).sum();
    let latency = latency.lock().await;
    Ok(FlashSaleReport {
        attempts: sale.buyers,
        accepted_units: accepted_buyers * sale.lines as i64,
        rejected: rejected.load(Ordering::SeqCst),
        errors: errors.load(Ordering::SeqCst),
        oversold_units,
        p50_ms: latency.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: latency.value_at_quantile(0.99) as f64 / 1000.0,
        throughput_per_s: sale.buyers as f64 / elapsed.max(Duration::from_micros(1)).as_secs_f64(),
        first_error: first_error.lock().await.take(),
    })
}
