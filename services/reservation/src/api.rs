//! The ReservationService gRPC handlers: decode and validate → [`Reservations`] → encode.
use std::collections::{BTreeMap, HashMap};

use mesh_counters::{Cell, CellUnits, ReservePolicy};
use mesh_proto::{
    common::v1::{CellRef, CounterDifference},
    reservation::v1::{self as pb, reservation_service_server::ReservationService},
};
use prost::Message;
use service_kit::{error::validate_id, invalid_argument, time::to_timestamp as timestamp};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status as GrpcStatus};

use crate::{
    domain::{NewReservation, Status, normalise_lines},
    error::{ReservationError, ReservationResult},
    service::Reservations,
    store::StoredReservation,
};

/// Most lines one reservation may have.
pub const MAX_LINES: usize = 100;
/// Most units one line (or one kit line's component) may ask for.
const MAX_UNITS: i64 = 1_000_000_000;
/// Most units of one component in one kit.
const MAX_UNITS_PER_KIT: i64 = 1_000;
/// Most components one kit may have.
const MAX_KIT_COMPONENTS: usize = 50;

/// The component cells of kit line `i` (quantity × units_per_kit of each component at the line's
/// location, in SKU order) and the kit as it goes into the request digest
/// (`|kit@loc x kits [component*units_per_kit,...]`).
fn kit_components(i: usize, line: &pb::ReservationLine) -> Result<(Vec<CellUnits>, String), GrpcStatus> {
    if line.components.len() > MAX_KIT_COMPONENTS {
        return Err(invalid_argument(
            &format!("lines[{i}].components"),
            &format!("a kit may have at most {MAX_KIT_COMPONENTS} components"),
        ));
    }
    let mut cells: Vec<CellUnits> = Vec::with_capacity(line.components.len());
    for (j, component) in line.components.iter().enumerate() {
        let field = format!("lines[{i}].components[{j}]");
        validate_id(&format!("{field}.sku"), &component.sku)?;
        if component.sku == line.sku {
            return Err(invalid_argument(&format!("{field}.sku"), "a kit cannot be its own component"));
        }
        if cells.iter().any(|c| c.cell.sku == component.sku) {
            return Err(invalid_argument(&format!("{field}.sku"), "names a component this kit already has"));
        }
        if !(1..=MAX_UNITS_PER_KIT).contains(&component.units_per_kit) {
            return Err(invalid_argument(
                &format!("{field}.units_per_kit"),
                &format!("must be between 1 and {MAX_UNITS_PER_KIT}"),
            ));
        }
        let units = line.quantity_units.saturating_mul(component.units_per_kit);
        if units > MAX_UNITS {
            return Err(invalid_argument(
                &format!("lines[{i}].quantity_units"),
                &format!("{} kits need {units} units of {}, more than {MAX_UNITS}", line.quantity_units, component.sku),
            ));
        }
        cells.push(CellUnits { cell: Cell::new(&component.sku, &line.location_id), units });
    }
    // Components are a set: in SKU order, the same kit is the same body whatever order it lists them.
    cells.sort_by(|a, b| a.cell.sku.cmp(&b.cell.sku));
    let parts: Vec<String> =
        cells.iter().map(|c| format!("{}*{}", c.cell.sku, c.units / line.quantity_units)).collect();
    let digest = format!("|{}@{}x{}[{}]", line.sku, line.location_id, line.quantity_units, parts.join(","));
    Ok((cells, digest))
}

/// The reservation service.
#[derive(Clone)]
pub struct ReservationApi {
    reservations: Reservations,
    default_ttl_ms: u64,
    max_ttl_ms: u64,
}

fn status_code(status: Status) -> i32 {
    match status {
        Status::Pending => pb::ReservationStatus::Unspecified as i32,
        Status::Held => pb::ReservationStatus::Held as i32,
        Status::Confirmed => pb::ReservationStatus::Confirmed as i32,
        Status::Released => pb::ReservationStatus::Released as i32,
        Status::Expired => pb::ReservationStatus::Expired as i32,
        Status::Rejected => pb::ReservationStatus::Rejected as i32,
    }
}

/// Encodes a stored reservation.
pub fn to_wire(r: &StoredReservation) -> pb::Reservation {
    pb::Reservation {
        reservation_id: r.reservation_id.clone(),
        order_id: r.order_id.clone(),
        status: status_code(r.status),
        lines: r
            .lines
            .iter()
            .map(|l| {
                // A PENDING or REJECTED reservation has reserved nothing.
                let reserved = if matches!(r.status, Status::Pending | Status::Rejected) { 0 } else { l.reserved };
                pb::ReservationLine {
                    sku: l.cell.sku.clone(),
                    location_id: l.cell.location.clone(),
                    quantity_units: l.requested,
                    reserved_units: reserved,
                    short_units: l.requested - reserved,
                    released_units: l.released_units,
                    // Kits are recorded as their component cells.
                    components: Vec::new(),
                }
            })
            .collect(),
        policy: match r.policy {
            ReservePolicy::AllOrNothing => pb::ReservePolicy::AllOrNothing as i32,
            ReservePolicy::Partial => pb::ReservePolicy::Partial as i32,
        },
        hold_limit: (r.hold_limit_ms > 0).then(|| timestamp(r.hold_limit_ms)),
        expires_at: (r.expires_at_ms > 0).then(|| timestamp(r.expires_at_ms)),
        channel_id: r.channel_id.clone(),
        released_units: r.released_units,
        history: r
            .history
            .iter()
            .map(|(status, at, reason)| pb::StatusChange {
                status: status_code(*status),
                at: Some(timestamp(*at)),
                reason: reason.clone(),
            })
            .collect(),
    }
}

impl ReservationApi {
    /// Builds the handlers.
    pub fn new(reservations: Reservations, default_ttl_ms: u64, max_ttl_ms: u64) -> Self {
        Self { reservations, default_ttl_ms, max_ttl_ms }
    }

    fn parse_create(&self, request: &pb::CreateReservationRequest) -> Result<NewReservation, GrpcStatus> {
        validate_id("reservation_id", &request.reservation_id)?;
        if !request.order_id.is_empty() {
            validate_id("order_id", &request.order_id)?;
        }
        if !request.channel_id.is_empty() {
            validate_id("channel_id", &request.channel_id)?;
        }
        if request.lines.is_empty() {
            return Err(invalid_argument("lines", "must not be empty"));
        }
        if request.lines.len() > MAX_LINES {
            return Err(invalid_argument("lines", &format!("must hold at most {MAX_LINES} lines")));
        }
        let policy = match pb::ReservePolicy::try_from(request.policy) {
            Ok(pb::ReservePolicy::Partial) => ReservePolicy::Partial,
            Ok(pb::ReservePolicy::AllOrNothing | pb::ReservePolicy::Unspecified) => ReservePolicy::AllOrNothing,
            Err(_) => return Err(invalid_argument("policy", "must be a ReservePolicy value")),
        };
        let mut lines = Vec::with_capacity(request.lines.len());
        let mut kits = String::new();
        for (i, line) in request.lines.iter().enumerate() {
            validate_id(&format!("lines[{i}].sku"), &line.sku)?;
            validate_id(&format!("lines[{i}].location_id"), &line.location_id)?;
            if !(1..=MAX_UNITS).contains(&line.quantity_units) {
                return Err(invalid_argument(
                    &format!("lines[{i}].quantity_units"),
                    &format!("must be between 1 and {MAX_UNITS}"),
                ));
            }
            if line.components.is_empty() {
                lines.push(CellUnits { cell: Cell::new(&line.sku, &line.location_id), units: line.quantity_units });
            } else {
                if policy == ReservePolicy::Partial {
                    return Err(invalid_argument(
                        &format!("lines[{i}].components"),
                        "a kit needs the all-or-nothing policy (a partial kit cannot ship)",
                    ));
                }
                let (components, digest) = kit_components(i, line)?;
                kits.push_str(&digest);
                lines.extend(components);
            }
        }
        let lines = normalise_lines(lines);
        if lines.len() > MAX_LINES {
            return Err(invalid_argument("lines", &format!("must name at most {MAX_LINES} cells with kits expanded")));
        }
        if let Some(cell) = lines.iter().find(|l| l.units > MAX_UNITS) {
            return Err(invalid_argument(
                "lines",
                &format!(
                    "{}@{} sums to {} units, more than {MAX_UNITS}",
                    cell.cell.sku, cell.cell.location, cell.units
                ),
            ));
        }
        let ttl_ms = self.parse_ttl(request.ttl_ms)?;
        Ok(NewReservation {
            reservation_id: request.reservation_id.clone(),
            order_id: request.order_id.clone(),
            channel_id: request.channel_id.clone(),
            lines,
            ttl_ms,
            policy,
            kits,
        })
    }

    fn parse_ttl(&self, ttl_ms: u64) -> Result<u64, GrpcStatus> {
        let ttl_ms = if ttl_ms == 0 { self.default_ttl_ms } else { ttl_ms };
        if ttl_ms > self.max_ttl_ms {
            return Err(invalid_argument(
                "ttl_ms",
                &format!("must be at most {} (the configured maximum hold)", self.max_ttl_ms),
            ));
        }
        Ok(ttl_ms)
    }

    /// Extends once per request id: the first answer is stored and replayed to retries (also after
    /// a restart); a failed attempt is forgotten so its retry runs afresh.
    async fn extend_once(
        reservations: Reservations,
        request: pb::ExtendReservationRequest,
        ttl_ms: u64,
    ) -> ReservationResult<pb::ExtendReservationResponse> {
        let body_hash = hex::encode(Sha256::digest(format!("{}|{}", request.reservation_id, ttl_ms).as_bytes()));
        let store = &reservations.store;
        for attempt in 0..100 {
            match store.claim_request(&request.request_id, &request.reservation_id, "extend", &body_hash).await? {
                None => break,
                Some(first) if first.body_hash != body_hash || first.kind != "extend" => {
                    return Err(ReservationError::AlreadyExists(format!("request {}", request.request_id)));
                }
                Some(first) if !first.response.is_empty() => {
                    return pb::ExtendReservationResponse::decode(first.response.as_slice())
                        .map_err(|e| ReservationError::refused("CORRUPT_REQUEST", e.to_string()));
                }
                Some(first) if service_kit::time::now_ms() - first.created_at_ms > 30_000 => {
                    // Its first attempt died before answering: take the request over.
                    store.drop_request(&request.request_id).await?;
                }
                Some(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await, // first one running
            }
            if attempt == 99 {
                return Err(ReservationError::InProgress(format!("request {}", request.request_id)));
            }
        }
        let outcome = reservations.extend(&request.reservation_id, ttl_ms).await;
        match outcome {
            Ok(extended) => {
                let response = pb::ExtendReservationResponse {
                    reservation: Some(to_wire(&extended.reservation)),
                    capped: extended.capped,
                };
                store.finish_request(&request.request_id, response.encode_to_vec()).await?;
                Ok(response)
            }
            Err(error) => {
                store.drop_request(&request.request_id).await?;
                Err(error)
            }
        }
    }

    /// Compares the counters with the holds and commitments they are made of, and both with the
    /// durable records. Run it while the mesh is quiet: a reservation between its counter step and
    /// its record shows up as a difference.
    pub async fn reconcile(&self) -> ReservationResult<pb::ReconcileCountersResponse> {
        let engine = &self.reservations.engine;
        let skus = engine.all_skus().await?;
        let mut differences = Vec::new();
        let mut cells_checked = 0u64;
        let mut live_holds: BTreeMap<(String, Cell), i64> = BTreeMap::new();
        let mut commitments: BTreeMap<(String, Cell), i64> = BTreeMap::new();
        let mut diff = |cell: &Cell, field: &str, counter_value: i64, expected_value: i64, detail: String| {
            differences.push(CounterDifference {
                cell: Some(CellRef { sku: cell.sku.clone(), location_id: cell.location.clone() }),
                field: field.into(),
                counter_value,
                expected_value,
                detail,
            });
        };
        for chunk in skus.chunks(100) {
            for snapshot in engine.snapshot(chunk).await? {
                for (location, counters) in &snapshot.cells {
                    cells_checked += 1;
                    let cell = Cell::new(&snapshot.sku, location);
                    let held: i64 = snapshot.holds.iter().filter(|h| h.location == *location).map(|h| h.units).sum();
                    let committed: i64 =
                        snapshot.commitments.iter().filter(|c| c.location == *location).map(|c| c.units).sum();
                    if counters.held != held {
                        diff(
                            &cell,
                            "held",
                            counters.held,
                            held,
                            "held counter differs from the sum of live holds".into(),
                        );
                    }
                    if counters.committed != committed {
                        diff(
                            &cell,
                            "committed",
                            counters.committed,
                            committed,
                            "committed counter differs from the sum of open commitments".into(),
                        );
                    }
                    if counters.held < 0 || counters.committed < 0 {
                        diff(
                            &cell,
                            "negative",
                            counters.held.min(counters.committed),
                            0,
                            "a demand counter is negative".into(),
                        );
                    }
                }
                for hold in &snapshot.holds {
                    live_holds
                        .insert((hold.reservation_id.clone(), Cell::new(&snapshot.sku, &hold.location)), hold.units);
                }
                for commitment in &snapshot.commitments {
                    commitments.insert(
                        (commitment.reservation_id.clone(), Cell::new(&snapshot.sku, &commitment.location)),
                        commitment.units,
                    );
                }
            }
        }
        let now = engine.hold_state("reconcile", &[]).await?.now_ms;
        let records =
            self.reservations.store.lines_in_status(&[Status::Held, Status::Confirmed, Status::Pending]).await?;
        let mut reservations_checked: HashMap<String, ()> = HashMap::new();
        for (reservation_id, status, deadline, line) in &records {
            reservations_checked.insert(reservation_id.clone(), ());
            let key = (reservation_id.clone(), line.cell.clone());
            match status {
                // Holds within a second of their deadline may expire while we look.
                Status::Held if (deadline - now).abs() < 1000 => {
                    live_holds.remove(&key);
                }
                Status::Held if *deadline > now => match live_holds.remove(&key) {
                    Some(units) if units == line.units => {}
                    found => diff(
                        &line.cell,
                        "hold_record",
                        found.unwrap_or(0),
                        line.units,
                        format!("held reservation {reservation_id} differs from its live hold"),
                    ),
                },
                Status::Confirmed => {
                    if let Some(units) = commitments.remove(&key)
                        && units > line.units
                    {
                        diff(
                            &line.cell,
                            "commitment_record",
                            units,
                            line.units,
                            format!("commitment of {reservation_id} exceeds its confirmed line"),
                        );
                    }
                }
                _ => {}
            }
        }
        let pending: std::collections::HashSet<&String> =
            records.iter().filter(|(_, status, _, _)| *status == Status::Pending).map(|(id, _, _, _)| id).collect();
        for ((reservation_id, cell), units) in live_holds {
            let detail = if pending.contains(&reservation_id) {
                format!(
                    "live hold {reservation_id} belongs to a PENDING claim (a reserve cut off before its record; \
                     the sweeper settles it after reservation.stale_claim_after)"
                )
            } else {
                format!("live hold {reservation_id} has no held record")
            };
            diff(&cell, "hold_record", units, 0, detail);
        }
        for ((reservation_id, cell), units) in commitments {
            diff(&cell, "commitment_record", units, 0, format!("commitment {reservation_id} has no confirmed record"));
        }
        Ok(pb::ReconcileCountersResponse {
            cells_checked,
            reservations_checked: reservations_checked.len() as u64,
            differences,
        })
    }
}

/// Runs a state change on its own task, so a caller that gives up (deadline, cancel) cannot stop
/// it halfway: once started, the claim, the counter step and the record all happen, and a retry
/// with the same id replays the answer.
async fn run_to_completion<T: Send + 'static>(
    work: impl std::future::Future<Output = ReservationResult<T>> + Send + 'static,
) -> Result<T, GrpcStatus> {
    match tokio::spawn(work).await {
        Ok(result) => result.map_err(GrpcStatus::from),
        Err(error) => {
            tracing::error!(%error, "reservation task failed");
            Err(GrpcStatus::internal("internal error"))
        }
    }
}

fn release_reason(reason: i32) -> Result<&'static str, GrpcStatus> {
    match pb::ReleaseReason::try_from(reason) {
        Ok(pb::ReleaseReason::PaymentFailed) => Ok("payment failed"),
        Ok(pb::ReleaseReason::RefundedBeforeShip) => Ok("refunded before ship"),
        Ok(pb::ReleaseReason::Abandoned) => Ok("abandoned"),
        Ok(pb::ReleaseReason::Cancelled | pb::ReleaseReason::Unspecified) => Ok("cancelled"),
        Err(_) => Err(invalid_argument("reason", "must be a ReleaseReason value")),
    }
}

#[tonic::async_trait]
impl ReservationService for ReservationApi {
    #[tracing::instrument(skip_all, fields(reservation_id = %request.get_ref().reservation_id))]
    async fn create_reservation(
        &self,
        request: Request<pb::CreateReservationRequest>,
    ) -> Result<Response<pb::CreateReservationResponse>, GrpcStatus> {
        let new = self.parse_create(request.get_ref())?;
        let reservations = self.reservations.clone();
        let reservation = run_to_completion(async move { reservations.create(&new).await }).await?;
        Ok(Response::new(pb::CreateReservationResponse { reservation: Some(to_wire(&reservation)) }))
    }

    #[tracing::instrument(skip_all, fields(reservation_id = %request.get_ref().reservation_id))]
    async fn confirm_reservation(
        &self,
        request: Request<pb::ConfirmReservationRequest>,
    ) -> Result<Response<pb::ConfirmReservationResponse>, GrpcStatus> {
        let request = request.into_inner();
        validate_id("reservation_id", &request.reservation_id)?;
        let occurred_at_ms = request
            .occurred_at
            .as_ref()
            .map(|t| service_kit::error::past_timestamp_ms("occurred_at", t))
            .transpose()?;
        let reservations = self.reservations.clone();
        let confirmed =
            run_to_completion(async move { reservations.confirm(&request.reservation_id, occurred_at_ms).await })
                .await?;
        Ok(Response::new(pb::ConfirmReservationResponse {
            reservation: Some(to_wire(&confirmed.reservation)),
            already_confirmed: confirmed.already_confirmed,
        }))
    }

    #[tracing::instrument(skip_all, fields(reservation_id = %request.get_ref().reservation_id))]
    async fn release_reservation(
        &self,
        request: Request<pb::ReleaseReservationRequest>,
    ) -> Result<Response<pb::ReleaseReservationResponse>, GrpcStatus> {
        let request = request.into_inner();
        validate_id("reservation_id", &request.reservation_id)?;
        let reservations = self.reservations.clone();
        let reason = release_reason(request.reason)?;
        let mut lines = Vec::with_capacity(request.lines.len());
        for (i, line) in request.lines.iter().enumerate() {
            validate_id(&format!("lines[{i}].sku"), &line.sku)?;
            validate_id(&format!("lines[{i}].location_id"), &line.location_id)?;
            lines.push(Cell::new(&line.sku, &line.location_id));
        }
        let (reservation, released_units) =
            run_to_completion(async move { reservations.release(&request.reservation_id, reason, &lines).await })
                .await?;
        Ok(Response::new(pb::ReleaseReservationResponse { reservation: Some(to_wire(&reservation)), released_units }))
    }

    #[tracing::instrument(skip_all, fields(reservation_id = %request.get_ref().reservation_id))]
    async fn extend_reservation(
        &self,
        request: Request<pb::ExtendReservationRequest>,
    ) -> Result<Response<pb::ExtendReservationResponse>, GrpcStatus> {
        let request = request.into_inner();
        validate_id("reservation_id", &request.reservation_id)?;
        validate_id("request_id", &request.request_id)?;
        let ttl_ms = self.parse_ttl(request.ttl_ms)?;
        let reservations = self.reservations.clone();
        let response = run_to_completion(Self::extend_once(reservations, request, ttl_ms)).await?;
        Ok(Response::new(response))
    }

    async fn get_reservation(
        &self,
        request: Request<pb::GetReservationRequest>,
    ) -> Result<Response<pb::GetReservationResponse>, GrpcStatus> {
        let request = request.into_inner();
        validate_id("reservation_id", &request.reservation_id)?;
        let reservation = self
            .reservations
            .store
            .get(&request.reservation_id)
            .await?
            .ok_or_else(|| ReservationError::NotFound(request.reservation_id.clone()))?;
        Ok(Response::new(pb::GetReservationResponse { reservation: Some(to_wire(&reservation)) }))
    }

    async fn reconcile_counters(
        &self,
        _request: Request<pb::ReconcileCountersRequest>,
    ) -> Result<Response<pb::ReconcileCountersResponse>, GrpcStatus> {
        Ok(Response::new(self.reconcile().await?))
    }
}
