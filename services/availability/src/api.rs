//! The AvailabilityService gRPC handlers: decode and validate → domain/store/engine → encode.
use mesh_counters::{Cell, CellCounters, CounterEngine, PhysicalChange};
use mesh_proto::{
    availability::v1::{self as pb, availability_service_server::AvailabilityService},
    common::v1::{CellQuantities, CellRef, CounterDifference, GeoPoint},
};
use service_kit::error::validate_id;
use tonic::{Request, Response, Status};

use crate::{
    domain::{EventKind, InventoryEvent, Outcome},
    error::{AvailabilityError, AvailabilityResult},
    store::{AvailabilityStore, ChannelRecord, LocationRecord},
};

/// Most events one IngestEvents call may carry.
pub const MAX_EVENTS_PER_BATCH: usize = 1000;
/// Most cells or SKUs one query may name.
pub const MAX_QUERY_SIZE: usize = 1000;
/// Largest quantity one event or safety setting may carry.
pub const MAX_UNITS: i64 = 1_000_000_000_000;

/// The availability service.
#[derive(Clone)]
pub struct AvailabilityApi {
    store: AvailabilityStore,
    engine: CounterEngine,
    alerts: Option<crate::alert_feed::AlertFeed>,
}

/// Encodes a cell's counters for the wire.
pub fn quantities(cell: &Cell, counters: &CellCounters) -> CellQuantities {
    CellQuantities {
        cell: Some(CellRef { sku: cell.sku.clone(), location_id: cell.location.clone() }),
        on_hand_units: counters.on_hand,
        held_units: counters.held,
        committed_units: counters.committed,
        safety_units: counters.safety,
        atp_units: counters.atp(),
    }
}

fn cell_from(field: &str, cell: Option<&CellRef>) -> Result<Cell, Status> {
    let cell = cell.ok_or_else(|| service_kit::invalid_argument(field, "is required"))?;
    validate_id(&format!("{field}.sku"), &cell.sku)?;
    validate_id(&format!("{field}.location_id"), &cell.location_id)?;
    Ok(Cell::new(&cell.sku, &cell.location_id))
}

fn check_size(field: &str, len: usize, max: usize) -> Result<(), Status> {
    if len == 0 {
        return Err(service_kit::invalid_argument(field, "must not be empty"));
    }
    if len > max {
        return Err(service_kit::invalid_argument(field, &format!("must hold at most {max} entries")));
    }
    Ok(())
}

fn valid_point(point: &GeoPoint) -> bool {
    (-90.0..=90.0).contains(&point.lat) && (-180.0..=180.0).contains(&point.lon)
}

fn event_from(index: usize, e: &pb::InventoryEvent) -> Result<InventoryEvent, Status> {
    let field = |name: &str| format!("events[{index}].{name}");
    validate_id(&field("event_id"), &e.event_id)?;
    let cell = cell_from(&field("cell"), e.cell.as_ref())?;
    let kind = match pb::EventType::try_from(e.r#type) {
        Ok(pb::EventType::Receipt) => EventKind::Receipt,
        Ok(pb::EventType::Shipment) => EventKind::Shipment,
        Ok(pb::EventType::Return) => EventKind::Return,
        Ok(pb::EventType::Adjustment) => EventKind::Adjustment,
        Ok(pb::EventType::Count) => EventKind::Count,
        _ => {
            return Err(service_kit::invalid_argument(
                &field("type"),
                "must be RECEIPT, SHIPMENT, RETURN, ADJUSTMENT or COUNT",
            ));
        }
    };
    let quantity_ok = match kind {
        EventKind::Adjustment => e.quantity_units != 0,
        EventKind::Count => e.quantity_units >= 0,
        _ => e.quantity_units > 0,
    };
    if !quantity_ok {
        let rule = match kind {
            EventKind::Adjustment => "must not be 0",
            EventKind::Count => "must be >= 0",
            _ => "must be > 0",
        };
        return Err(service_kit::invalid_argument(&field("quantity_units"), rule));
    }
    if e.quantity_units.abs() > MAX_UNITS {
        return Err(service_kit::invalid_argument(&field("quantity_units"), "is out of range"));
    }
    let occurred_at =
        e.occurred_at.as_ref().ok_or_else(|| service_kit::invalid_argument(&field("occurred_at"), "is required"))?;
    let occurred_at_ms = service_kit::error::past_timestamp_ms(&field("occurred_at"), occurred_at)?;
    let reservation_id = if e.reservation_id.is_empty() {
        None
    } else {
        if kind != EventKind::Shipment {
            return Err(service_kit::invalid_argument(&field("reservation_id"), "is allowed on SHIPMENT only"));
        }
        validate_id(&field("reservation_id"), &e.reservation_id)?;
        Some(e.reservation_id.clone())
    };
    if e.reason.len() > 256 {
        return Err(service_kit::invalid_argument(&field("reason"), "must be at most 256 characters"));
    }
    if e.source_system.len() > 128 {
        return Err(service_kit::invalid_argument(&field("source_system"), "must be at most 128 characters"));
    }
    Ok(InventoryEvent {
        event_id: e.event_id.clone(),
        kind,
        cell,
        quantity: e.quantity_units,
        occurred_at_ms,
        source_system: e.source_system.clone(),
        reservation_id,
        restockable: e.restockable,
        reason: e.reason.clone(),
    })
}

impl AvailabilityApi {
    /// Builds the service over its store and the counter engine.
    pub fn new(store: AvailabilityStore, engine: CounterEngine, alerts: Option<crate::alert_feed::AlertFeed>) -> Self {
        Self { store, engine, alerts }
    }

    /// Sends a cell at or below zero ATP to alert evaluation.
    fn watch(&self, cell: &Cell, counters: &CellCounters) {
        if counters.atp() <= 0
            && let Some(alerts) = &self.alerts
        {
            alerts.send(cell);
        }
    }

    /// Records one event durably, then brings the live counters to the recorded position.
    async fn ingest(&self, event: &InventoryEvent) -> AvailabilityResult<pb::EventResult> {
        let mut attempt = 0;
        let recorded = loop {
            match self.store.record_event(event).await {
                Err(AvailabilityError::Conflict(_)) if attempt < 20 => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(1 << attempt.min(5))).await;
                }
                other => break other?,
            }
        };
        if recorded.outcome == Outcome::Rejected {
            // A reused id with another body changes nothing: no counter is touched (the recorded
            // position may even belong to another cell), only the named cell is reported.
            tracing::warn!(event_id = %event.event_id, reason = %recorded.reason, "inventory event rejected");
            let counters = self.engine.read_cells(std::slice::from_ref(&event.cell)).await?;
            return Ok(pb::EventResult {
                event_id: event.event_id.clone(),
                outcome: pb::EventOutcome::Rejected as i32,
                reason: recorded.reason,
                cell: Some(quantities(&event.cell, &counters[0])),
                fulfilled_units: 0,
            });
        }
        // A duplicate re-pushes the recorded position too (idempotent: absolute value + version), so
        // a redelivery after a failed counter update heals the counters.
        let fulfil = match (recorded.outcome, &event.reservation_id) {
            (Outcome::Applied | Outcome::Stale, Some(rid)) => Some((rid.clone(), event.quantity)),
            // A redelivered shipment whose first delivery was recorded but never reached the
            // counters (they were unavailable or lost): fulfil it now, once.
            // Only if the ledger never recorded what it fulfilled; the counters also apply a
            // fulfilment once per event id, so concurrent redeliveries take once.
            (Outcome::Duplicate, Some(rid))
                if event.kind == EventKind::Shipment
                    && self.store.was_applied(&event.event_id).await?
                    && self.store.fulfilled_units(&event.event_id).await? == 0 =>
            {
                Some((rid.clone(), event.quantity))
            }
            _ => None,
        };
        let outcome = self
            .engine
            .apply_physical(&PhysicalChange {
                cell: event.cell.clone(),
                on_hand: recorded.position.on_hand,
                version: recorded.position.version,
                fulfil: fulfil.clone(),
                event_id: event.event_id.clone(),
            })
            .await?;
        let mut reason = recorded.reason;
        let fulfilled_units = if let Some((reservation_id, units)) = &fulfil {
            if outcome.fulfilled_units > 0 {
                self.store.set_fulfilled(&event.event_id, outcome.fulfilled_units).await?;
            }
            if outcome.fulfilled_units < *units {
                let note = format!(
                    "reservation {reservation_id} had {} unshipped units at this cell; {} shipped units fulfilled no commitment",
                    outcome.fulfilled_units,
                    units - outcome.fulfilled_units
                );
                reason = if reason.is_empty() { note } else { format!("{reason}; {note}") };
            }
            outcome.fulfilled_units
        } else if recorded.outcome == Outcome::Duplicate {
            self.store.fulfilled_units(&event.event_id).await?
        } else {
            0
        };
        self.watch(&event.cell, &outcome.counters);
        if outcome.counters.atp() < 0 {
            tracing::warn!(sku = %event.cell.sku, location = %event.cell.location, atp = outcome.counters.atp(), "cell overcommitted by a physical correction");
        }
        Ok(pb::EventResult {
            event_id: event.event_id.clone(),
            outcome: match recorded.outcome {
                Outcome::Applied => pb::EventOutcome::Applied,
                Outcome::Duplicate => pb::EventOutcome::Duplicate,
                Outcome::Stale => pb::EventOutcome::Stale,
                Outcome::Rejected => pb::EventOutcome::Rejected,
            } as i32,
            reason,
            cell: Some(quantities(&event.cell, &outcome.counters)),
            fulfilled_units,
        })
    }

    /// Per-SKU ATP over the given locations: each cell clamped at 0 before the sum.
    async fn sku_atp(&self, skus: &[String], locations: &[String], buffer: i64) -> AvailabilityResult<Vec<pb::SkuAtp>> {
        let mut unique: Vec<String> = Vec::with_capacity(skus.len());
        let mut seen = std::collections::HashSet::with_capacity(skus.len());
        for sku in skus {
            if seen.insert(sku.as_str()) {
                unique.push(sku.clone());
            }
        }
        let locations: std::collections::HashSet<&str> = locations.iter().map(String::as_str).collect();
        let snapshots = self.engine.snapshot(&unique).await?;
        Ok(snapshots
            .into_iter()
            .map(|snapshot| {
                let cells: Vec<CellQuantities> = snapshot
                    .cells
                    .iter()
                    .filter(|(loc, _)| locations.contains(loc.as_str()))
                    .map(|(loc, counters)| quantities(&Cell::new(&snapshot.sku, loc), counters))
                    .collect();
                let total: i64 = cells.iter().map(|c| c.atp_units.max(0)).fold(0, i64::saturating_add);
                pb::SkuAtp { sku: snapshot.sku, atp_units: total.saturating_sub(buffer).max(0), cells }
            })
            .collect())
    }

    /// Compares live on_hand and safety with the durable positions.
    pub async fn reconcile(&self) -> AvailabilityResult<pb::ReconcileCountersResponse> {
        let positions = self.store.all_positions().await?;
        let mut differences = Vec::new();
        let cells: Vec<Cell> = positions.iter().map(|(c, _)| c.clone()).collect();
        let mut counters = Vec::with_capacity(cells.len());
        for chunk in cells.chunks(200) {
            counters.extend(self.engine.read_cells(chunk).await?);
        }
        for ((cell, position), live) in positions.iter().zip(&counters) {
            let cell_ref = Some(CellRef { sku: cell.sku.clone(), location_id: cell.location.clone() });
            for (field, counter_value, expected_value) in
                [("on_hand", live.on_hand, position.on_hand), ("safety", live.safety, position.safety)]
            {
                if counter_value != expected_value {
                    differences.push(CounterDifference {
                        cell: cell_ref.clone(),
                        field: field.into(),
                        counter_value,
                        expected_value,
                        detail: format!("live {field} differs from the durable position"),
                    });
                }
            }
        }
        Ok(pb::ReconcileCountersResponse {
            cells_checked: positions.len() as u64,
            differences,
            counter_engine: self.engine.kind().to_owned(),
            durable_store: self.store.backend_name().to_owned(),
        })
    }
}

#[tonic::async_trait]
impl AvailabilityService for AvailabilityApi {
    #[tracing::instrument(skip_all, fields(count = request.get_ref().locations.len()))]
    async fn upsert_locations(
        &self,
        request: Request<pb::UpsertLocationsRequest>,
    ) -> Result<Response<pb::UpsertLocationsResponse>, Status> {
        let request = request.into_inner();
        check_size("locations", request.locations.len(), 10_000)?;
        let mut records = Vec::with_capacity(request.locations.len());
        for (i, l) in request.locations.iter().enumerate() {
            validate_id(&format!("locations[{i}].location_id"), &l.location_id)?;
            let position = match &l.position {
                Some(p) if valid_point(p) => Some((p.lat, p.lon)),
                Some(_) => {
                    return Err(service_kit::invalid_argument(
                        &format!("locations[{i}].position"),
                        "lat must be in [-90, 90] and lon in [-180, 180]",
                    ));
                }
                None => None,
            };
            records.push(LocationRecord {
                location_id: l.location_id.clone(),
                kind: l.r#type,
                position,
                priority: l.priority,
            });
        }
        self.store.upsert_locations(&records).await?;
        Ok(Response::new(pb::UpsertLocationsResponse { upserted: records.len() as u32 }))
    }

    async fn list_locations(
        &self,
        _request: Request<pb::ListLocationsRequest>,
    ) -> Result<Response<pb::ListLocationsResponse>, Status> {
        let locations = self.store.list_locations().await?;
        Ok(Response::new(pb::ListLocationsResponse {
            locations: locations
                .into_iter()
                .map(|l| pb::Location {
                    location_id: l.location_id,
                    r#type: l.kind,
                    position: l.position.map(|(lat, lon)| GeoPoint { lat, lon }),
                    priority: l.priority,
                })
                .collect(),
        }))
    }

    async fn upsert_items(
        &self,
        request: Request<pb::UpsertItemsRequest>,
    ) -> Result<Response<pb::UpsertItemsResponse>, Status> {
        let request = request.into_inner();
        check_size("items", request.items.len(), 10_000)?;
        let mut items = Vec::with_capacity(request.items.len());
        for (i, item) in request.items.iter().enumerate() {
            validate_id(&format!("items[{i}].sku"), &item.sku)?;
            for (j, substitute) in item.substitute_skus.iter().enumerate() {
                validate_id(&format!("items[{i}].substitute_skus[{j}]"), substitute)?;
                if *substitute == item.sku {
                    return Err(service_kit::invalid_argument(
                        &format!("items[{i}].substitute_skus[{j}]"),
                        "an item cannot substitute itself",
                    ));
                }
            }
            items.push((item.sku.clone(), item.substitute_skus.clone()));
        }
        self.store.upsert_items(&items).await?;
        Ok(Response::new(pb::UpsertItemsResponse { upserted: items.len() as u32 }))
    }

    async fn get_item(&self, request: Request<pb::GetItemRequest>) -> Result<Response<pb::GetItemResponse>, Status> {
        let sku = request.into_inner().sku;
        validate_id("sku", &sku)?;
        let substitutes =
            self.store.get_item(&sku).await?.ok_or_else(|| AvailabilityError::NotFound(format!("item {sku}")))?;
        Ok(Response::new(pb::GetItemResponse { item: Some(pb::Item { sku, substitute_skus: substitutes }) }))
    }

    async fn upsert_channels(
        &self,
        request: Request<pb::UpsertChannelsRequest>,
    ) -> Result<Response<pb::UpsertChannelsResponse>, Status> {
        let request = request.into_inner();
        check_size("channels", request.channels.len(), 1000)?;
        let mut records = Vec::with_capacity(request.channels.len());
        for (i, c) in request.channels.iter().enumerate() {
            validate_id(&format!("channels[{i}].channel_id"), &c.channel_id)?;
            check_size(&format!("channels[{i}].location_ids"), c.location_ids.len(), 100_000)?;
            for (j, l) in c.location_ids.iter().enumerate() {
                validate_id(&format!("channels[{i}].location_ids[{j}]"), l)?;
            }
            if c.buffer_units < 0 {
                return Err(service_kit::invalid_argument(&format!("channels[{i}].buffer_units"), "must be >= 0"));
            }
            records.push(ChannelRecord {
                channel_id: c.channel_id.clone(),
                location_ids: c.location_ids.clone(),
                buffer_units: c.buffer_units,
            });
        }
        self.store.upsert_channels(&records).await?;
        Ok(Response::new(pb::UpsertChannelsResponse { upserted: records.len() as u32 }))
    }

    async fn get_channel(
        &self,
        request: Request<pb::GetChannelRequest>,
    ) -> Result<Response<pb::GetChannelResponse>, Status> {
        let channel_id = request.into_inner().channel_id;
        validate_id("channel_id", &channel_id)?;
        let channel = self
            .store
            .get_channel(&channel_id)
            .await?
            .ok_or_else(|| AvailabilityError::NotFound(format!("channel {channel_id}")))?;
        Ok(Response::new(pb::GetChannelResponse {
            channel: Some(pb::Channel {
                channel_id: channel.channel_id,
                location_ids: channel.location_ids,
                buffer_units: channel.buffer_units,
            }),
        }))
    }

    async fn set_safety_stock(
        &self,
        request: Request<pb::SetSafetyStockRequest>,
    ) -> Result<Response<pb::SetSafetyStockResponse>, Status> {
        let request = request.into_inner();
        check_size("cells", request.cells.len(), MAX_QUERY_SIZE)?;
        let mut parsed = Vec::with_capacity(request.cells.len());
        for (i, s) in request.cells.iter().enumerate() {
            let cell = cell_from(&format!("cells[{i}].cell"), s.cell.as_ref())?;
            if !(0..=MAX_UNITS).contains(&s.safety_units) {
                return Err(service_kit::invalid_argument(
                    &format!("cells[{i}].safety_units"),
                    "must be between 0 and 1000000000000",
                ));
            }
            parsed.push((cell, s.safety_units));
        }
        let mut cells = Vec::with_capacity(parsed.len());
        for (cell, safety) in parsed {
            self.store.set_safety(&cell, safety).await?;
            let counters = self.engine.set_safety(&cell, safety).await.map_err(AvailabilityError::from)?;
            self.watch(&cell, &counters);
            cells.push(quantities(&cell, &counters));
        }
        Ok(Response::new(pb::SetSafetyStockResponse { cells }))
    }

    #[tracing::instrument(skip_all, fields(count = request.get_ref().events.len()))]
    async fn ingest_events(
        &self,
        request: Request<pb::IngestEventsRequest>,
    ) -> Result<Response<pb::IngestEventsResponse>, Status> {
        let request = request.into_inner();
        check_size("events", request.events.len(), MAX_EVENTS_PER_BATCH)?;
        // Validate the whole batch before applying any of it: bad input changes nothing.
        let events = request.events.iter().enumerate().map(|(i, e)| event_from(i, e)).collect::<Result<Vec<_>, _>>()?;
        // Run on its own task: a caller that gives up cannot stop a batch between the ledger write
        // and the counter update; a redelivery then sees duplicates.
        let api = self.clone();
        let results = tokio::spawn(async move {
            let mut results = Vec::with_capacity(events.len());
            for event in &events {
                results.push(api.ingest(event).await?);
            }
            Ok::<_, AvailabilityError>(results)
        })
        .await
        .map_err(|error| {
            tracing::error!(%error, "ingestion task failed");
            Status::internal("internal error")
        })??;
        Ok(Response::new(pb::IngestEventsResponse { results }))
    }

    async fn get_cell_atp(
        &self,
        request: Request<pb::GetCellAtpRequest>,
    ) -> Result<Response<pb::GetCellAtpResponse>, Status> {
        let request = request.into_inner();
        check_size("cells", request.cells.len(), MAX_QUERY_SIZE)?;
        let cells = request
            .cells
            .iter()
            .enumerate()
            .map(|(i, c)| cell_from(&format!("cells[{i}]"), Some(c)))
            .collect::<Result<Vec<_>, _>>()?;
        let counters = self.engine.read_cells(&cells).await.map_err(AvailabilityError::from)?;
        Ok(Response::new(pb::GetCellAtpResponse {
            cells: cells.iter().zip(&counters).map(|(c, n)| quantities(c, n)).collect(),
        }))
    }

    async fn get_location_set_atp(
        &self,
        request: Request<pb::GetLocationSetAtpRequest>,
    ) -> Result<Response<pb::GetLocationSetAtpResponse>, Status> {
        let request = request.into_inner();
        check_size("skus", request.skus.len(), MAX_QUERY_SIZE)?;
        check_size("location_ids", request.location_ids.len(), 100_000)?;
        for (i, sku) in request.skus.iter().enumerate() {
            validate_id(&format!("skus[{i}]"), sku)?;
        }
        for (i, l) in request.location_ids.iter().enumerate() {
            validate_id(&format!("location_ids[{i}]"), l)?;
        }
        let skus = self.sku_atp(&request.skus, &request.location_ids, 0).await?;
        Ok(Response::new(pb::GetLocationSetAtpResponse { skus }))
    }

    async fn get_channel_atp(
        &self,
        request: Request<pb::GetChannelAtpRequest>,
    ) -> Result<Response<pb::GetChannelAtpResponse>, Status> {
        let request = request.into_inner();
        validate_id("channel_id", &request.channel_id)?;
        check_size("skus", request.skus.len(), MAX_QUERY_SIZE)?;
        for (i, sku) in request.skus.iter().enumerate() {
            validate_id(&format!("skus[{i}]"), sku)?;
        }
        let channel = self
            .store
            .get_channel(&request.channel_id)
            .await?
            .ok_or_else(|| AvailabilityError::NotFound(format!("channel {}", request.channel_id)))?;
        let skus = self.sku_atp(&request.skus, &channel.location_ids, channel.buffer_units).await?;
        Ok(Response::new(pb::GetChannelAtpResponse { skus }))
    }

    async fn reconcile_counters(
        &self,
        _request: Request<pb::ReconcileCountersRequest>,
    ) -> Result<Response<pb::ReconcileCountersResponse>, Status> {
        Ok(Response::new(self.reconcile().await?))
    }
}
