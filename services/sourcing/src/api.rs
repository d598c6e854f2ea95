//! The SourcingService gRPC handlers: validate → read candidate cells from availability → plan →
//! reserve the plan through reservation (re-planning when a competing order won) → record.
//! Every peer call carries the caller's remaining deadline and trace context.
use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use mesh_proto::{
    availability::v1::{
        GetChannelAtpRequest, ListLocationsRequest, availability_service_client::AvailabilityServiceClient,
    },
    reservation::v1::{
        CreateReservationRequest, GetReservationRequest, ReservationLine, ReservationStatus, ReservePolicy,
        reservation_service_client::ReservationServiceClient,
    },
    sourcing::v1::{self as pb, sourcing_service_server::SourcingService},
};
use prost::Message;
use service_kit::{CallContext, error::validate_id, invalid_argument};
use tokio::sync::RwLock;
use tonic::{Code, Request, Response, Status, transport::Channel};
use tracing::Instrument;

use crate::{
    domain::{self, Candidate, PlanError},
    error::{SourcingError, SourcingResult},
    store::{Claim, SourcingStore},
};

/// Most lines one order may have.
pub const MAX_LINES: usize = 100;
/// How long the location directory is trusted before it is read again.
const LOCATIONS_TTL: Duration = Duration::from_secs(10);

#[derive(Clone, Copy)]
struct LocationInfo {
    position: Option<(f64, f64)>,
    priority: i32,
}

#[derive(Default)]
struct LocationCache {
    loaded_at: Option<Instant>,
    locations: HashMap<String, LocationInfo>,
}

/// The sourcing service.
#[derive(Clone)]
pub struct SourcingApi {
    availability: AvailabilityServiceClient<Channel>,
    reservation: ReservationServiceClient<Channel>,
    store: SourcingStore,
    locations: Arc<RwLock<LocationCache>>,
    call_timeout: Duration,
    max_split_nodes: usize,
    max_attempts: u32,
}

struct ValidOrder {
    /// Digest of everything that defines the order (not dry_run): a retry must match it.
    request_hash: String,
    order_id: String,
    demand: Vec<(String, i64)>,
    ship_to: Option<(f64, f64)>,
    channel_id: String,
}

fn validate(request: &pb::SourceOrderRequest) -> Result<ValidOrder, Status> {
    validate_id("order_id", &request.order_id)?;
    if request.order_id.len() > 120 {
        // Re-plans reserve under `<order_id>:retryN`, which must stay a valid id.
        return Err(invalid_argument("order_id", "must be at most 120 characters"));
    }
    validate_id("channel_id", &request.channel_id)?;
    if request.lines.is_empty() {
        return Err(invalid_argument("lines", "must not be empty"));
    }
    if request.lines.len() > MAX_LINES {
        return Err(invalid_argument("lines", &format!("must hold at most {MAX_LINES} lines")));
    }
    let mut demand: Vec<(String, i64)> = Vec::new();
    for (i, line) in request.lines.iter().enumerate() {
        validate_id(&format!("lines[{i}].sku"), &line.sku)?;
        if !(1..=1_000_000_000).contains(&line.quantity_units) {
            return Err(invalid_argument(&format!("lines[{i}].quantity_units"), "must be between 1 and 1000000000"));
        }
        match demand.iter_mut().find(|(sku, _)| *sku == line.sku) {
            Some((_, units)) => *units += line.quantity_units,
            None => demand.push((line.sku.clone(), line.quantity_units)),
        }
    }
    let ship_to = match &request.ship_to {
        Some(p) if (-90.0..=90.0).contains(&p.lat) && (-180.0..=180.0).contains(&p.lon) => Some((p.lat, p.lon)),
        Some(_) => return Err(invalid_argument("ship_to", "lat must be in [-90, 90] and lon in [-180, 180]")),
        None => None,
    };
    let body = format!(
        "{}|{:?}|{:?}|{}|{}|{}|{}",
        request.channel_id,
        demand,
        ship_to,
        request.allow_split,
        request.allow_backorder,
        request.hold_ttl_ms,
        request.order_id
    );
    let request_hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body.as_bytes()));
    Ok(ValidOrder {
        request_hash,
        order_id: request.order_id.clone(),
        demand,
        ship_to,
        channel_id: request.channel_id.clone(),
    })
}

impl SourcingApi {
    /// Builds the handlers over the peers' channels and the store.
    pub fn new(
        availability: Channel,
        reservation: Channel,
        store: SourcingStore,
        call_timeout: Duration,
        max_split_nodes: usize,
        max_attempts: u32,
    ) -> Self {
        Self {
            availability: AvailabilityServiceClient::new(availability),
            reservation: ReservationServiceClient::new(reservation),
            store,
            locations: Arc::default(),
            call_timeout,
            max_split_nodes,
            max_attempts,
        }
    }

    /// Returns the location directory, reading it again when stale or when `needed` has an unknown id.
    async fn locations(
        &self,
        context: &CallContext,
        needed: &[String],
    ) -> SourcingResult<HashMap<String, LocationInfo>> {
        {
            let cache = self.locations.read().await;
            let fresh = cache.loaded_at.is_some_and(|at| at.elapsed() < LOCATIONS_TTL);
            if fresh && needed.iter().all(|id| cache.locations.contains_key(id)) {
                return Ok(cache.locations.clone());
            }
        }
        let request = context
            .request(ListLocationsRequest {}, self.call_timeout)
            .map_err(|s| SourcingError::peer("availability", &s))?;
        let response = self
            .availability
            .clone()
            .list_locations(request)
            .await
            .map_err(|s| SourcingError::peer("availability", &s))?;
        let locations: HashMap<String, LocationInfo> = response
            .into_inner()
            .locations
            .into_iter()
            .map(|l| {
                (l.location_id, LocationInfo { position: l.position.map(|p| (p.lat, p.lon)), priority: l.priority })
            })
            .collect();
        let mut cache = self.locations.write().await;
        cache.loaded_at = Some(Instant::now());
        cache.locations = locations.clone();
        Ok(locations)
    }

    /// Reads candidate nodes for the order from availability (channel view, ATP > 0 per cell).
    async fn candidates(
        &self,
        context: &CallContext,
        order: &ValidOrder,
    ) -> SourcingResult<(Vec<Candidate>, Vec<String>)> {
        let skus: Vec<String> = order.demand.iter().map(|(sku, _)| sku.clone()).collect();
        let request = context
            .request(GetChannelAtpRequest { channel_id: order.channel_id.clone(), skus }, self.call_timeout)
            .map_err(|s| SourcingError::peer("availability", &s))?;
        let response = match self.availability.clone().get_channel_atp(request).await {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == Code::NotFound => {
                return Err(SourcingError::InvalidArgument {
                    field: "channel_id".into(),
                    description: format!("channel {} does not exist", order.channel_id),
                });
            }
            Err(status) => return Err(SourcingError::peer("availability", &status)),
        };
        let mut carried = Vec::new();
        let mut atp_by_node: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
        for sku in response.skus {
            if !sku.cells.is_empty() {
                carried.push(sku.sku.clone());
            }
            for cell in sku.cells {
                let Some(cell_ref) = cell.cell else { continue };
                if cell.atp_units > 0 {
                    atp_by_node.entry(cell_ref.location_id).or_default().insert(sku.sku.clone(), cell.atp_units);
                }
            }
        }
        let node_ids: Vec<String> = atp_by_node.keys().cloned().collect();
        let locations = self.locations(context, &node_ids).await?;
        let candidates = atp_by_node
            .into_iter()
            .map(|(location_id, atp)| {
                let info = locations.get(&location_id).copied();
                let position = info.and_then(|i| i.position);
                Candidate {
                    distance_km: order.ship_to.zip(position).map(|(a, b)| domain::distance_km(a, b)),
                    priority: info.map_or(0, |i| i.priority),
                    location_id,
                    atp,
                }
            })
            .collect();
        Ok((candidates, carried))
    }

    /// Plans (and unless dry-run, reserves) one order.
    async fn source(
        &self,
        context: &CallContext,
        request: &pb::SourceOrderRequest,
        order: ValidOrder,
    ) -> SourcingResult<pb::SourceOrderResponse> {
        if !request.dry_run {
            match self.store.claim(&order.order_id, &order.request_hash).await? {
                Claim::Decided(encoded) => {
                    return pb::SourceOrderResponse::decode(encoded.as_slice()).map_err(|_| {
                        SourcingError::AlreadyExists(format!("order {} has an unreadable decision", order.order_id))
                    });
                }
                Claim::Conflict => {
                    return Err(SourcingError::AlreadyExists(format!(
                        "order {} was sourced with a different request",
                        order.order_id
                    )));
                }
                // An earlier attempt of this same request may have reserved before its caller gave up.
                Claim::Pending => {
                    if let Some(adopted) = self.adopt(context, &order).await? {
                        return Ok(adopted);
                    }
                }
                Claim::New => {}
            }
        }
        let max_nodes = if request.allow_split { self.max_split_nodes } else { 1 };
        for attempt in 1..=self.max_attempts {
            let (candidates, carried) = self.candidates(context, &order).await?;
            let plan = domain::plan(&order.demand, &candidates, &carried, max_nodes, request.allow_backorder)
                .map_err(refusal)?;
            let mut response = pb::SourceOrderResponse {
                order_id: order.order_id.clone(),
                shipments: plan
                    .shipments
                    .iter()
                    .map(|s| pb::Shipment {
                        location_id: s.location_id.clone(),
                        lines: s
                            .lines
                            .iter()
                            .map(|(sku, units)| pb::ShipmentLine { sku: sku.clone(), quantity_units: *units })
                            .collect(),
                        distance_km: s.distance_km.unwrap_or(0.0),
                    })
                    .collect(),
                backordered: plan
                    .backordered
                    .iter()
                    .map(|(sku, units)| pb::BackorderedLine { sku: sku.clone(), quantity_units: *units })
                    .collect(),
                explanations: plan
                    .explanations
                    .iter()
                    .map(|e| pb::Explanation {
                        location_id: e.location_id.clone(),
                        verdict: e.verdict.to_owned(),
                        reason: e.reason.clone(),
                    })
                    .collect(),
                reservation_id: String::new(),
                attempts: attempt,
                dry_run: request.dry_run,
            };
            if request.dry_run {
                return Ok(response);
            }
            if !response.shipments.is_empty() {
                let reservation_id =
                    if attempt == 1 { order.order_id.clone() } else { format!("{}:retry{attempt}", order.order_id) };
                let lines = response
                    .shipments
                    .iter()
                    .flat_map(|s| {
                        s.lines.iter().map(|l| ReservationLine {
                            sku: l.sku.clone(),
                            location_id: s.location_id.clone(),
                            quantity_units: l.quantity_units,
                            ..Default::default()
                        })
                    })
                    .collect();
                let create = CreateReservationRequest {
                    reservation_id: reservation_id.clone(),
                    order_id: order.order_id.clone(),
                    lines,
                    ttl_ms: request.hold_ttl_ms,
                    channel_id: order.channel_id.clone(),
                    // The plan was made from availability: hold all of it or re-plan.
                    policy: ReservePolicy::AllOrNothing as i32,
                };
                let call =
                    context.request(create, self.call_timeout).map_err(|s| SourcingError::peer("reservation", &s))?;
                match self.reservation.clone().create_reservation(call).await {
                    Ok(_) => response.reservation_id = reservation_id,
                    // A concurrent attempt of this order reserved under this id with another plan.
                    Err(status) if status.code() == Code::AlreadyExists => {
                        if let Some(adopted) = self.adopt(context, &order).await? {
                            return Ok(adopted);
                        }
                        return Err(SourcingError::peer("reservation", &status));
                    }
                    Err(status) if status.code() == Code::FailedPrecondition && attempt < self.max_attempts => {
                        tracing::info!(order_id = %order.order_id, attempt, "stock taken by a competing order; re-planning");
                        continue;
                    }
                    Err(status) if status.code() == Code::FailedPrecondition => {
                        return Err(SourcingError::Refused {
                            reason: "INSUFFICIENT_STOCK",
                            message: format!("competing orders took the stock in each of {attempt} plans"),
                            metadata: HashMap::new(),
                        });
                    }
                    Err(status) => return Err(SourcingError::peer("reservation", &status)),
                }
            }
            self.store.record(&order.order_id, &response.reservation_id, &response.encode_to_vec()).await?;
            return Ok(response);
        }
        Err(SourcingError::Refused {
            reason: "INSUFFICIENT_STOCK",
            message: "no plan could be reserved".into(),
            metadata: HashMap::new(),
        })
    }
}

impl SourcingApi {
    /// Finds a live reservation an earlier attempt of this order made (under the order id or a
    /// re-plan id), records it as the order's decision and returns it.
    async fn adopt(
        &self,
        context: &CallContext,
        order: &ValidOrder,
    ) -> SourcingResult<Option<pb::SourceOrderResponse>> {
        for attempt in 1..=self.max_attempts {
            let reservation_id =
                if attempt == 1 { order.order_id.clone() } else { format!("{}:retry{attempt}", order.order_id) };
            let request = context
                .request(GetReservationRequest { reservation_id: reservation_id.clone() }, self.call_timeout)
                .map_err(|s| SourcingError::peer("reservation", &s))?;
            let reservation = match self.reservation.clone().get_reservation(request).await {
                Ok(response) => response.into_inner().reservation,
                Err(status) if status.code() == Code::NotFound => continue,
                Err(status) => return Err(SourcingError::peer("reservation", &status)),
            };
            let Some(reservation) = reservation else { continue };
            let live = [ReservationStatus::Held as i32, ReservationStatus::Confirmed as i32];
            if !live.contains(&reservation.status) {
                continue;
            }
            let locations: Vec<String> = reservation.lines.iter().map(|l| l.location_id.clone()).collect();
            let directory = self.locations(context, &locations).await?;
            let mut shipments: Vec<pb::Shipment> = Vec::new();
            let mut reserved: BTreeMap<String, i64> = BTreeMap::new();
            for line in &reservation.lines {
                *reserved.entry(line.sku.clone()).or_default() += line.quantity_units;
                let position = shipments.iter().position(|s| s.location_id == line.location_id);
                let index = position.unwrap_or_else(|| {
                    let at = directory.get(&line.location_id).and_then(|i| i.position);
                    shipments.push(pb::Shipment {
                        location_id: line.location_id.clone(),
                        lines: Vec::new(),
                        distance_km: order.ship_to.zip(at).map_or(0.0, |(a, b)| domain::distance_km(a, b)),
                    });
                    shipments.len() - 1
                });
                shipments[index]
                    .lines
                    .push(pb::ShipmentLine { sku: line.sku.clone(), quantity_units: line.quantity_units });
            }
            let backordered = order
                .demand
                .iter()
                .filter_map(|(sku, units)| {
                    let short = units - reserved.get(sku).copied().unwrap_or(0);
                    (short > 0).then(|| pb::BackorderedLine { sku: sku.clone(), quantity_units: short })
                })
                .collect();
            let response = pb::SourceOrderResponse {
                order_id: order.order_id.clone(),
                explanations: shipments
                    .iter()
                    .map(|s| pb::Explanation {
                        location_id: s.location_id.clone(),
                        verdict: "chosen".into(),
                        reason: format!("reserved as {reservation_id} by an earlier attempt of this order"),
                    })
                    .collect(),
                shipments,
                backordered,
                reservation_id,
                attempts: attempt,
                dry_run: false,
            };
            self.store.record(&order.order_id, &response.reservation_id, &response.encode_to_vec()).await?;
            return Ok(Some(response));
        }
        Ok(None)
    }
}

fn refusal(error: PlanError) -> SourcingError {
    match error {
        PlanError::Insufficient(short) => SourcingError::Refused {
            reason: "INSUFFICIENT_STOCK",
            message: short.iter().map(|(sku, units)| format!("{sku} short by {units}")).collect::<Vec<_>>().join("; "),
            metadata: short.iter().map(|(sku, units)| (sku.clone(), format!("short={units}"))).collect(),
        },
        PlanError::NotCarried(skus) => SourcingError::Refused {
            reason: "NOT_CARRIED",
            message: format!("no eligible location carries {}", skus.join(", ")),
            metadata: skus.iter().map(|sku| (sku.clone(), "not carried".to_owned())).collect(),
        },
    }
}

#[tonic::async_trait]
impl SourcingService for SourcingApi {
    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn source_order(
        &self,
        request: Request<pb::SourceOrderRequest>,
    ) -> Result<Response<pb::SourceOrderResponse>, Status> {
        let context = CallContext::from_request(&request);
        let order = validate(request.get_ref())?;
        // Once reserving has started it runs to completion (and is recorded) even if the caller
        // gives up, so a retry of the order gets the recorded decision instead of a second plan.
        let (api, request) = (self.clone(), request.into_inner());
        let span = tracing::Span::current();
        let decision = tokio::spawn(async move { api.source(&context, &request, order).instrument(span).await })
            .await
            .map_err(|error| {
                tracing::error!(%error, "sourcing task failed");
                Status::internal("internal error")
            })??;
        Ok(Response::new(decision))
    }

    async fn get_sourcing_decision(
        &self,
        request: Request<pb::GetSourcingDecisionRequest>,
    ) -> Result<Response<pb::GetSourcingDecisionResponse>, Status> {
        let order_id = request.into_inner().order_id;
        validate_id("order_id", &order_id)?;
        let encoded = self
            .store
            .get(&order_id)
            .await?
            .ok_or_else(|| SourcingError::NotFound(format!("decision for order {order_id}")))?;
        let decision =
            pb::SourceOrderResponse::decode(encoded.as_slice()).map_err(|_| Status::internal("internal error"))?;
        Ok(Response::new(pb::GetSourcingDecisionResponse { decision: Some(decision) }))
    }
}
