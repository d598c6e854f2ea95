//! The ReplenishmentService gRPC handlers. Cell state is read from availability (with the caller's
//! deadline and trace context); alerts and demand live in this service's store. Evaluations are
//! serialised in the process so a crossing is raised once even when calls overlap.
use std::{sync::Arc, time::Duration};

use mesh_proto::{
    availability::v1::{GetCellAtpRequest, availability_service_client::AvailabilityServiceClient},
    common::v1::{CellQuantities, CellRef},
    replenishment::v1::{self as pb, replenishment_service_server::ReplenishmentService},
};
use service_kit::{
    CallContext,
    config::ReplenishmentSettings,
    error::validate_id,
    invalid_argument,
    time::{now_ms, to_timestamp as timestamp},
};
use tokio::sync::Mutex;
use tonic::{Request, Response, Status, transport::Channel};

use crate::{
    domain::{self, AlertKind},
    error::{ReplenishmentError, ReplenishmentResult},
    store::{AlertRecord, ReplenishmentStore},
};

const DAY_MS: i64 = 86_400_000;

/// The replenishment service.
#[derive(Clone)]
pub struct ReplenishmentApi {
    availability: AvailabilityServiceClient<Channel>,
    store: ReplenishmentStore,
    settings: ReplenishmentSettings,
    call_timeout: Duration,
    evaluation: Arc<Mutex<()>>,
}

fn to_wire(a: &AlertRecord) -> pb::Alert {
    pb::Alert {
        alert_id: a.id as u64,
        cell: Some(CellRef { sku: a.sku.clone(), location_id: a.location_id.clone() }),
        kind: match a.kind {
            AlertKind::LowStock => pb::AlertKind::LowStock,
            AlertKind::Stockout => pb::AlertKind::Stockout,
            AlertKind::Overcommitted => pb::AlertKind::Overcommitted,
        } as i32,
        atp_units: a.atp,
        raised_at: Some(timestamp(a.raised_at_ms)),
        closed_at: a.closed_at_ms.map(timestamp),
    }
}

impl ReplenishmentApi {
    /// Builds the handlers.
    pub fn new(
        availability: Channel,
        store: ReplenishmentStore,
        settings: ReplenishmentSettings,
        call_timeout: Duration,
    ) -> Self {
        Self {
            availability: AvailabilityServiceClient::new(availability),
            store,
            settings,
            call_timeout,
            evaluation: Arc::default(),
        }
    }

    async fn read_cells(
        &self,
        context: &CallContext,
        cells: &[(String, String)],
    ) -> ReplenishmentResult<Vec<CellQuantities>> {
        let mut out = Vec::with_capacity(cells.len());
        for chunk in cells.chunks(500) {
            let request = GetCellAtpRequest {
                cells: chunk
                    .iter()
                    .map(|(sku, location_id)| CellRef { sku: sku.clone(), location_id: location_id.clone() })
                    .collect(),
            };
            let peer_error = |status: Status| ReplenishmentError::Peer {
                peer: "availability",
                kind: service_kit::error::peer_status_kind(&status),
                message: format!("{:?}", status.code()),
            };
            let call = context.request(request, self.call_timeout).map_err(peer_error)?;
            out.extend(self.availability.clone().get_cell_atp(call).await.map_err(peer_error)?.into_inner().cells);
        }
        Ok(out)
    }

    /// Raises alerts for cells that entered a level and closes those that left it.
    async fn evaluate(
        &self,
        context: &CallContext,
        cells: &[(String, String)],
    ) -> ReplenishmentResult<(Vec<AlertRecord>, Vec<CellQuantities>)> {
        let quantities = self.read_cells(context, cells).await?;
        let _serialised = self.evaluation.lock().await;
        let now = now_ms();
        // Many cells: read every open alert in one query instead of one query per cell.
        let mut open_by_cell = if cells.len() > 20 { Some(self.store.open_alerts_by_cell().await?) } else { None };
        let mut raised = Vec::new();
        for q in &quantities {
            let Some(cell) = &q.cell else { continue };
            let level = domain::alert_level(
                q.on_hand_units,
                q.held_units,
                q.committed_units,
                q.safety_units,
                self.settings.low_stock_units,
            );
            let open = match open_by_cell.as_mut() {
                Some(all) => all.remove(&(cell.sku.clone(), cell.location_id.clone())).unwrap_or_default(),
                None => self.store.open_alerts(&cell.sku, &cell.location_id).await?,
            };
            for alert in open.iter().filter(|a| Some(a.kind) != level) {
                self.store.close(alert.id, now).await?;
            }
            if let Some(kind) = level
                && !open.iter().any(|a| a.kind == kind)
            {
                let alert = self.store.raise(&cell.sku, &cell.location_id, kind, q.atp_units, now).await?;
                tracing::info!(sku = %cell.sku, location = %cell.location_id, kind = ?kind, atp = q.atp_units, "alert raised");
                raised.push(alert);
            }
        }
        Ok((raised, quantities))
    }

    /// Re-evaluates every cell with demand or an open alert (the periodic loop and RunReplenishment).
    pub async fn evaluate_known_cells(
        &self,
        context: &CallContext,
    ) -> ReplenishmentResult<(Vec<AlertRecord>, Vec<CellQuantities>)> {
        let cells = self.store.known_cells().await?;
        self.evaluate(context, &cells).await
    }

    /// Velocity of every cell with demand in the window ending at the demand clock.
    async fn velocities(&self, cell: Option<(&str, &str)>) -> ReplenishmentResult<(i64, Vec<(String, String, i64)>)> {
        let as_of = self.store.latest_demand_ms().await?.unwrap_or_else(now_ms);
        let window_ms = i64::from(self.settings.velocity_window_days) * DAY_MS;
        Ok((as_of, self.store.demand_by_cell(as_of - window_ms, as_of, cell).await?))
    }
}

#[tonic::async_trait]
impl ReplenishmentService for ReplenishmentApi {
    #[tracing::instrument(skip_all, fields(count = request.get_ref().demands.len()))]
    async fn record_demand(
        &self,
        request: Request<pb::RecordDemandRequest>,
    ) -> Result<Response<pb::RecordDemandResponse>, Status> {
        let context = CallContext::from_request(&request);
        let request = request.into_inner();
        if request.demands.is_empty() || request.demands.len() > 1000 {
            return Err(invalid_argument("demands", "must hold between 1 and 1000 entries"));
        }
        let mut parsed = Vec::with_capacity(request.demands.len());
        for (i, d) in request.demands.iter().enumerate() {
            validate_id(&format!("demands[{i}].demand_id"), &d.demand_id)?;
            let cell = d.cell.as_ref().ok_or_else(|| invalid_argument(&format!("demands[{i}].cell"), "is required"))?;
            validate_id(&format!("demands[{i}].cell.sku"), &cell.sku)?;
            validate_id(&format!("demands[{i}].cell.location_id"), &cell.location_id)?;
            if d.quantity_units <= 0 {
                return Err(invalid_argument(&format!("demands[{i}].quantity_units"), "must be > 0"));
            }
            let at = d
                .occurred_at
                .as_ref()
                .ok_or_else(|| invalid_argument(&format!("demands[{i}].occurred_at"), "is required"))?;
            let at_ms = service_kit::error::past_timestamp_ms(&format!("demands[{i}].occurred_at"), at)?;
            parsed.push((d.demand_id.clone(), cell.sku.clone(), cell.location_id.clone(), d.quantity_units, at_ms));
        }
        // A demand id already recorded with another body is refused before anything is recorded.
        for (i, (id, sku, location_id, quantity, at)) in parsed.iter().enumerate() {
            if let Some(existing) = self.store.demand(id).await?
                && existing != (sku.clone(), location_id.clone(), *quantity, *at)
            {
                return Err(Status::already_exists(format!(
                    "demands[{i}].demand_id: {id} was recorded with a different body"
                )));
            }
        }
        let (mut recorded, mut duplicates) = (0u32, 0u32);
        let mut cells = Vec::new();
        for (id, sku, location_id, quantity, at) in parsed {
            if self.store.record_demand(&id, &sku, &location_id, quantity, at).await? {
                recorded += 1;
            } else {
                duplicates += 1;
            }
            cells.push((sku, location_id));
        }
        cells.sort();
        cells.dedup();
        let (raised, _) = self.evaluate(&context, &cells).await?;
        Ok(Response::new(pb::RecordDemandResponse {
            recorded,
            duplicates,
            alerts_raised: raised.iter().map(to_wire).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(count = request.get_ref().cells.len()))]
    async fn evaluate_cells(
        &self,
        request: Request<pb::EvaluateCellsRequest>,
    ) -> Result<Response<pb::EvaluateCellsResponse>, Status> {
        let context = CallContext::from_request(&request);
        let request = request.into_inner();
        if request.cells.is_empty() || request.cells.len() > 1000 {
            return Err(invalid_argument("cells", "must hold between 1 and 1000 entries"));
        }
        let mut cells = Vec::with_capacity(request.cells.len());
        for (i, cell) in request.cells.iter().enumerate() {
            validate_id(&format!("cells[{i}].sku"), &cell.sku)?;
            validate_id(&format!("cells[{i}].location_id"), &cell.location_id)?;
            cells.push((cell.sku.clone(), cell.location_id.clone()));
        }
        cells.sort();
        cells.dedup();
        let (raised, _) = self.evaluate(&context, &cells).await?;
        Ok(Response::new(pb::EvaluateCellsResponse { alerts_raised: raised.iter().map(to_wire).collect() }))
    }

    async fn get_velocity(
        &self,
        request: Request<pb::GetVelocityRequest>,
    ) -> Result<Response<pb::GetVelocityResponse>, Status> {
        let cell = request.into_inner().cell.ok_or_else(|| invalid_argument("cell", "is required"))?;
        validate_id("cell.sku", &cell.sku)?;
        validate_id("cell.location_id", &cell.location_id)?;
        let (as_of, rows) = self.velocities(Some((&cell.sku, &cell.location_id))).await?;
        let units: i64 = rows.iter().map(|r| r.2).sum();
        let window_days = self.settings.velocity_window_days;
        Ok(Response::new(pb::GetVelocityResponse {
            cell: Some(cell),
            units_per_day: units as f64 / f64::from(window_days),
            window_days,
            as_of: Some(timestamp(as_of)),
            units_in_window: units,
        }))
    }

    async fn list_alerts(
        &self,
        request: Request<pb::ListAlertsRequest>,
    ) -> Result<Response<pb::ListAlertsResponse>, Status> {
        let alerts = self.store.alerts(request.into_inner().include_closed).await?;
        Ok(Response::new(pb::ListAlertsResponse { alerts: alerts.iter().map(to_wire).collect() }))
    }

    #[tracing::instrument(skip_all)]
    async fn run_replenishment(
        &self,
        request: Request<pb::RunReplenishmentRequest>,
    ) -> Result<Response<pb::RunReplenishmentResponse>, Status> {
        let context = CallContext::from_request(&request);
        let (raised, quantities) = self.evaluate_known_cells(&context).await?;
        let (_, velocities) = self.velocities(None).await?;
        let window_days = f64::from(self.settings.velocity_window_days);
        let mut suggestions = Vec::new();
        for q in &quantities {
            let Some(cell) = &q.cell else { continue };
            let units = velocities.iter().find(|(s, l, _)| *s == cell.sku && *l == cell.location_id).map_or(0, |r| r.2);
            let per_day = units as f64 / window_days;
            if let Some(s) =
                domain::suggest(q.atp_units, per_day, self.settings.lead_time_days, self.settings.order_cover_days)
            {
                suggestions.push(pb::ReorderSuggestion {
                    cell: Some(cell.clone()),
                    quantity_units: s.quantity,
                    reorder_point_units: s.reorder_point,
                    order_up_to_units: s.order_up_to,
                    atp_units: q.atp_units,
                    units_per_day: per_day,
                    reason: s.reason,
                });
            }
        }
        Ok(Response::new(pb::RunReplenishmentResponse {
            cells_evaluated: quantities.len() as u32,
            alerts_raised: raised.iter().map(to_wire).collect(),
            suggestions,
        }))
    }
}
