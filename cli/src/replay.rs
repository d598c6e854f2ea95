//! The replay: drives a mesh through gRPC only with the real Olist orders, in event-time order and
//! without waiting on the wall clock. Sellers become locations (coordinates from their zip prefix;
//! those without are counted and skipped), products become items, and the initial stock of each
//! seller's product is the units that seller really sold in the replayed orders × the stock factor.
//! Each order is reserved at purchase (SourceOrder), confirmed at approval, shipped at carrier
//! hand-over, and released when cancelled or never approved. The replay keeps its own book of
//! accepted units per cell and checks it, and the services' reconcile checks, at the end.
use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use chrono::NaiveDateTime;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use mesh_proto::{
    availability::v1::{
        Channel as ChannelMsg, EventOutcome, EventType, GetCellAtpRequest, IngestEventsRequest, InventoryEvent, Item,
        Location, LocationType, UpsertChannelsRequest, UpsertItemsRequest, UpsertLocationsRequest,
        availability_service_client::AvailabilityServiceClient,
    },
    common::v1::{CellRef, GeoPoint},
    replenishment::v1::{
        ListAlertsRequest, RunReplenishmentRequest, replenishment_service_client::ReplenishmentServiceClient,
    },
    reservation::v1::{
        ConfirmReservationRequest, ReleaseReason, ReleaseReservationRequest,
        reservation_service_client::ReservationServiceClient,
    },
    sourcing::v1::{OrderLine, SourceOrderRequest, sourcing_service_client::SourcingServiceClient},
};
use serde::{Deserialize, Serialize};
use service_kit::time::to_timestamp as timestamp;
use tonic::{Code, transport::Channel};

/// The channel all replayed orders come from.
pub const CHANNEL_ID: &str = "olist";

/// Where the replay sends its calls.
#[derive(Debug, Clone)]
pub struct Targets {
    pub availability: Channel,
    pub reservation: Channel,
    pub sourcing: Channel,
    pub replenishment: Channel,
}

/// What to replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub dataset: PathBuf,
    pub stock_factor: f64,
    /// Replay only the first N orders (by purchase time).
    pub limit: Option<usize>,
    /// Prefix of SKU, order and event ids, so runs against one database never collide.
    pub run_id: String,
    pub show_progress: bool,
}

/// The replay's result; written as JSON to `target/replay/report.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReplayReport {
    pub orders_total: u64,
    /// Orders planned and reserved in full (no unit backordered).
    pub orders_fulfilled: u64,
    /// Of the orders with a plan: shipped from one node.
    pub orders_single_node: u64,
    /// Of the orders with a plan: split over several nodes.
    pub orders_split: u64,
    /// Orders with at least one unit backordered.
    pub orders_backordered: u64,
    /// Orders refused (insufficient stock without backorder, or an item no eligible node carries).
    pub orders_rejected: u64,
    /// Orders in the data with no item lines (nothing to source).
    pub orders_without_items: u64,
    /// Σ over cells of max(0, accepted units − supply), from the replay's own book.
    pub units_oversold: i64,
    /// Reconcile clean on both services, live counters equal to the replay's book, nothing oversold.
    pub invariants_ok: bool,
    pub invariant_differences: Vec<String>,
    /// Mean distance per unit of our plans, over orders where both distances are known.
    pub mean_distance_km: f64,
    /// Same orders: the mean distance to the seller Olist really used.
    pub baseline_mean_distance_km: f64,
    pub source_order_p50_ms: f64,
    pub source_order_p99_ms: f64,
    pub alerts_raised: u64,
    pub engine: String,
    pub store: String,
    pub stock_factor: f64,
    pub stock_rule: String,
    pub locations: u64,
    pub locations_skipped_no_coordinates: u64,
    pub items: u64,
    pub cells_stocked: u64,
    pub units_stocked: i64,
    pub confirms_failed: u64,
    pub shipments: u64,
    pub releases: u64,
    pub elapsed_s: f64,
}

#[derive(Debug, Deserialize)]
struct OrderRow {
    order_id: String,
    customer_id: String,
    order_status: String,
    order_purchase_timestamp: String,
    order_approved_at: String,
    order_delivered_carrier_date: String,
}

#[derive(Debug, Deserialize)]
struct ItemRow {
    order_id: String,
    product_id: String,
    seller_id: String,
}

#[derive(Debug, Deserialize)]
struct GeoRow {
    zip_code_prefix: String,
    lat_median: String,
    lng_median: String,
}

#[derive(Debug, Deserialize)]
struct SellerRow {
    seller_id: String,
    seller_zip_code_prefix: String,
}

#[derive(Debug, Deserialize)]
struct CustomerRow {
    customer_id: String,
    customer_zip_code_prefix: String,
}

#[derive(Debug, Deserialize)]
struct ProductRow {
    product_id: String,
}

fn read_csv<T: for<'de> Deserialize<'de>>(dir: &Path, name: &str) -> anyhow::Result<Vec<T>> {
    let path = dir.join(name);
    let mut reader = csv::Reader::from_path(&path).with_context(|| format!("cannot read {}", path.display()))?;
    reader.deserialize().collect::<Result<Vec<T>, _>>().with_context(|| format!("cannot parse {}", path.display()))
}

fn parse_time(value: &str) -> Option<i64> {
    NaiveDateTime::parse_from_str(value, "%Y-%m-%d %H:%M:%S").ok().map(|t| t.and_utc().timestamp_millis())
}

/// Coordinates inside Brazil's bounding box (the data README says to treat others as missing).
fn in_brazil(lat: f64, lng: f64) -> bool {
    (-33.8..=5.3).contains(&lat) && (-74.0..=-34.7).contains(&lng)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Source,
    Confirm,
    Ship,
    Release,
}

struct Order {
    id: String,
    customer: Option<(f64, f64)>,
    /// (product, units) in first-seen order.
    lines: Vec<(String, i64)>,
    /// Sellers Olist used, one per line.
    sellers: Vec<String>,
}

#[derive(Default)]
struct CellBook {
    supply: i64,
    held: i64,
    committed: i64,
    shipped: i64,
}

#[derive(Default)]
struct OrderState {
    reservation_id: String,
    /// (location, sku, units)
    planned: Vec<(String, String, i64)>,
    confirmed: bool,
    shipped: bool,
}

/// Replays the dataset against `targets`.
///
/// # Errors
/// The dataset cannot be read or a service fails in a way the replay cannot account for.
/// Runs a gRPC call again while it fails UNAVAILABLE (a store restarting or being rebuilt), as any
/// well-behaved client would; every call the replay makes is idempotent by its id.
macro_rules! retry_unavailable {
    ($call:expr) => {{
        let mut attempt = 0;
        loop {
            match $call {
                Err(status) if status.code() == Code::Unavailable && attempt < 100 => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                other => break other,
            }
        }
    }};
}

pub async fn replay(options: &ReplayOptions, targets: &Targets) -> anyhow::Result<ReplayReport> {
    let started = Instant::now();
    let dir = &options.dataset;
    eprintln!("replay: reading {}", dir.display());
    let geo: HashMap<String, (f64, f64)> = read_csv::<GeoRow>(dir, "geolocation_by_zip_prefix.csv")?
        .into_iter()
        .filter_map(|g| {
            let (lat, lng) = (g.lat_median.parse::<f64>().ok()?, g.lng_median.parse::<f64>().ok()?);
            in_brazil(lat, lng).then_some((g.zip_code_prefix, (lat, lng)))
        })
        .collect();
    let sellers: Vec<SellerRow> = read_csv(dir, "sellers.csv")?;
    let customers: HashMap<String, String> = read_csv::<CustomerRow>(dir, "customers.csv")?
        .into_iter()
        .map(|c| (c.customer_id, c.customer_zip_code_prefix))
        .collect();
    let products: Vec<ProductRow> = read_csv(dir, "products.csv")?;
    let mut orders_rows: Vec<OrderRow> = read_csv(dir, "orders.csv")?;
    orders_rows.sort_by(|a, b| {
        (a.order_purchase_timestamp.as_str(), a.order_id.as_str())
            .cmp(&(b.order_purchase_timestamp.as_str(), b.order_id.as_str()))
    });
    if let Some(limit) = options.limit {
        orders_rows.truncate(limit);
    }
    let mut items_by_order: HashMap<String, Vec<ItemRow>> = HashMap::new();
    for item in read_csv::<ItemRow>(dir, "order_items.csv")? {
        items_by_order.entry(item.order_id.clone()).or_default().push(item);
    }
    let sku = |product: &str| format!("{}:{product}", options.run_id);

    // Locations: sellers with coordinates.
    let mut seller_position: HashMap<String, (f64, f64)> = HashMap::new();
    let mut skipped_sellers = 0u64;
    for seller in &sellers {
        match geo.get(&seller.seller_zip_code_prefix) {
            Some(position) => {
                seller_position.insert(seller.seller_id.clone(), *position);
            }
            None => skipped_sellers += 1,
        }
    }
    let mut availability = AvailabilityServiceClient::new(targets.availability.clone());
    let mut location_ids: Vec<String> = seller_position.keys().cloned().collect();
    location_ids.sort();
    for chunk in location_ids.chunks(1000) {
        let locations = chunk
            .iter()
            .map(|id| Location {
                location_id: id.clone(),
                r#type: LocationType::ThreePl as i32,
                position: seller_position.get(id).map(|(lat, lon)| GeoPoint { lat: *lat, lon: *lon }),
                priority: 0,
            })
            .collect();
        availability.upsert_locations(UpsertLocationsRequest { locations }).await.context("UpsertLocations")?;
    }
    availability
        .upsert_channels(UpsertChannelsRequest {
            channels: vec![ChannelMsg {
                channel_id: CHANNEL_ID.into(),
                location_ids: location_ids.clone(),
                buffer_units: 0,
            }],
        })
        .await
        .context("UpsertChannels")?;
    for chunk in products.chunks(5000) {
        let items = chunk.iter().map(|p| Item { sku: sku(&p.product_id), substitute_skus: Vec::new() }).collect();
        availability.upsert_items(UpsertItemsRequest { items }).await.context("UpsertItems")?;
    }

    // Orders and the units each seller really sold in them.
    let mut orders = Vec::new();
    let mut sold: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut timeline: Vec<(i64, Step, usize)> = Vec::new();
    let mut without_items = 0u64;
    for row in &orders_rows {
        let Some(items) = items_by_order.get(&row.order_id) else {
            without_items += 1;
            continue;
        };
        let Some(purchase) = parse_time(&row.order_purchase_timestamp) else { continue };
        let mut lines: Vec<(String, i64)> = Vec::new();
        for item in items {
            *sold.entry((item.seller_id.clone(), item.product_id.clone())).or_default() += 1;
            match lines.iter_mut().find(|(p, _)| *p == item.product_id) {
                Some((_, units)) => *units += 1,
                None => lines.push((item.product_id.clone(), 1)),
            }
        }
        let index = orders.len();
        let customer = customers.get(&row.customer_id).and_then(|zip| geo.get(zip)).copied();
        orders.push(Order {
            id: format!("{}:{}", options.run_id, row.order_id),
            customer,
            lines,
            sellers: items.iter().map(|i| i.seller_id.clone()).collect(),
        });
        timeline.push((purchase, Step::Source, index));
        let cancelled = matches!(row.order_status.as_str(), "canceled" | "unavailable");
        match parse_time(&row.order_approved_at).map(|t| t.max(purchase)) {
            Some(approved) => {
                timeline.push((approved, Step::Confirm, index));
                if cancelled {
                    timeline.push((approved + 1000, Step::Release, index));
                } else if let Some(carrier) = parse_time(&row.order_delivered_carrier_date) {
                    timeline.push((carrier.max(approved + 1), Step::Ship, index));
                }
            }
            // Never approved: the hold is released (abandoned) a day after purchase.
            None => timeline.push((purchase + 86_400_000, Step::Release, index)),
        }
    }
    timeline.sort();

    // Initial stock.
    let first_time = timeline.first().map_or(0, |t| t.0);
    let mut book: BTreeMap<(String, String), CellBook> = BTreeMap::new();
    let mut receipts = Vec::new();
    for ((seller, product), units) in &sold {
        if !seller_position.contains_key(seller) {
            continue;
        }
        let stock = (*units as f64 * options.stock_factor).round() as i64;
        if stock <= 0 {
            continue;
        }
        book.entry((sku(product), seller.clone())).or_default().supply = stock;
        receipts.push(InventoryEvent {
            event_id: format!("{}:init:{seller}:{product}", options.run_id),
            r#type: EventType::Receipt as i32,
            cell: Some(CellRef { sku: sku(product), location_id: seller.clone() }),
            quantity_units: stock,
            occurred_at: Some(timestamp(first_time - 86_400_000)),
            source_system: "replay".into(),
            ..InventoryEvent::default()
        });
    }
    let units_stocked: i64 = book.values().map(|c| c.supply).sum();
    let stock_rule = format!(
        "initial stock of each (seller, product) = units that seller sold in the {} replayed orders x STOCK_FACTOR {} (rounded)",
        orders_rows.len(),
        options.stock_factor
    );
    eprintln!("replay: {stock_rule}");
    eprintln!(
        "replay: {} locations ({} sellers skipped: no coordinates), {} items, {} cells stocked with {} units, {} orders ({} without items)",
        location_ids.len(),
        skipped_sellers,
        products.len(),
        receipts.len(),
        units_stocked,
        orders_rows.len(),
        without_items
    );
    for chunk in receipts.chunks(500) {
        let results = availability
            .ingest_events(IngestEventsRequest { events: chunk.to_vec() })
            .await
            .context("IngestEvents (initial stock)")?;
        for result in results.into_inner().results {
            if result.outcome != EventOutcome::Applied as i32 {
                bail!("initial stock event {} was not applied: {}", result.event_id, result.reason);
            }
        }
    }

    // Replay.
    let mut sourcing = SourcingServiceClient::new(targets.sourcing.clone());
    let mut reservation = ReservationServiceClient::new(targets.reservation.clone());
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram")?;
    let mut states: Vec<OrderState> = (0..orders.len()).map(|_| OrderState::default()).collect();
    let (mut fulfilled, mut single, mut split, mut backordered, mut rejected) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut confirms_failed, mut shipments, mut releases) = (0u64, 0u64, 0u64);
    let (mut our_distance, mut baseline_distance, mut distance_orders) = (0.0f64, 0.0f64, 0u64);
    let progress = if options.show_progress { ProgressBar::new(timeline.len() as u64) } else { ProgressBar::hidden() };
    progress.set_style(
        ProgressStyle::with_template(
            "{spinner} replay [{elapsed_precise}] {bar:40} {pos}/{len} steps ({per_sec}, eta {eta}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    // Without a terminal the bar is hidden; print a line every 10 % instead.
    let plain_progress = options.show_progress && progress.is_hidden();
    let tenth = (timeline.len() / 10).max(1);
    for (done, (at, step, index)) in timeline.iter().enumerate() {
        progress.inc(1);
        if plain_progress && done % tenth == 0 && done > 0 {
            eprintln!(
                "replay: {}% ({done}/{} steps, {:.0} s)",
                done * 100 / timeline.len(),
                timeline.len(),
                started.elapsed().as_secs_f64()
            );
        }
        let order = &orders[*index];
        let state = &mut states[*index];
        match step {
            Step::Source => {
                let request = SourceOrderRequest {
                    order_id: order.id.clone(),
                    lines: order
                        .lines
                        .iter()
                        .map(|(p, units)| OrderLine { sku: sku(p), quantity_units: *units })
                        .collect(),
                    ship_to: order.customer.map(|(lat, lon)| GeoPoint { lat, lon }),
                    channel_id: CHANNEL_ID.into(),
                    allow_split: true,
                    allow_backorder: true,
                    dry_run: false,
                    hold_ttl_ms: 7_200_000,
                };
                let call_started = Instant::now();
                let result = retry_unavailable!(sourcing.source_order(request.clone()).await);
                latency.saturating_record(call_started.elapsed().as_micros() as u64);
                let plan = match result {
                    Ok(response) => response.into_inner(),
                    Err(status) if status.code() == Code::FailedPrecondition => {
                        rejected += 1;
                        continue;
                    }
                    Err(status) => bail!("SourceOrder {} failed: {status}", order.id),
                };
                if plan.backordered.is_empty() {
                    fulfilled += 1;
                } else {
                    backordered += 1;
                }
                match plan.shipments.len() {
                    0 => {}
                    1 => single += 1,
                    _ => split += 1,
                }
                state.reservation_id = plan.reservation_id.clone();
                let (mut units_total, mut weighted) = (0i64, 0.0f64);
                for shipment in &plan.shipments {
                    for line in &shipment.lines {
                        state.planned.push((shipment.location_id.clone(), line.sku.clone(), line.quantity_units));
                        book.entry((line.sku.clone(), shipment.location_id.clone())).or_default().held +=
                            line.quantity_units;
                        units_total += line.quantity_units;
                        weighted += shipment.distance_km * line.quantity_units as f64;
                    }
                }
                let baseline: Vec<f64> = order
                    .sellers
                    .iter()
                    .filter_map(|s| Some(sourcing::domain::distance_km(order.customer?, *seller_position.get(s)?)))
                    .collect();
                if order.customer.is_some() && units_total > 0 && baseline.len() == order.sellers.len() {
                    our_distance += weighted / units_total as f64;
                    baseline_distance += baseline.iter().sum::<f64>() / baseline.len() as f64;
                    distance_orders += 1;
                }
            }
            Step::Confirm if !state.reservation_id.is_empty() => {
                let request = ConfirmReservationRequest {
                    reservation_id: state.reservation_id.clone(),
                    occurred_at: Some(timestamp(*at)),
                };
                match retry_unavailable!(reservation.confirm_reservation(request.clone()).await) {
                    Ok(_) => {
                        state.confirmed = true;
                        for (location, sku, units) in &state.planned {
                            let cell = book.entry((sku.clone(), location.clone())).or_default();
                            cell.held -= units;
                            cell.committed += units;
                        }
                    }
                    Err(status) if status.code() == Code::FailedPrecondition => {
                        confirms_failed += 1;
                        progress.println(format!(
                            "replay: confirm of {} refused: {}",
                            state.reservation_id,
                            status.message()
                        ));
                    }
                    Err(status) => bail!("ConfirmReservation {} failed: {status}", state.reservation_id),
                }
            }
            Step::Ship if state.confirmed && !state.shipped => {
                let events: Vec<InventoryEvent> = state
                    .planned
                    .iter()
                    .enumerate()
                    .map(|(n, (location, sku, units))| InventoryEvent {
                        event_id: format!("{}:ship{n}", order.id),
                        r#type: EventType::Shipment as i32,
                        cell: Some(CellRef { sku: sku.clone(), location_id: location.clone() }),
                        quantity_units: *units,
                        occurred_at: Some(timestamp(*at)),
                        source_system: "replay".into(),
                        reservation_id: state.reservation_id.clone(),
                        ..InventoryEvent::default()
                    })
                    .collect();
                let results = retry_unavailable!(
                    availability.ingest_events(IngestEventsRequest { events: events.clone() }).await
                )
                .context("IngestEvents (shipment)")?
                .into_inner()
                .results;
                for (result, (location, sku, units)) in results.iter().zip(&state.planned) {
                    let applied = result.outcome == EventOutcome::Applied as i32
                        || result.outcome == EventOutcome::Duplicate as i32; // a retry after UNAVAILABLE
                    if !applied || result.fulfilled_units != *units {
                        bail!("shipment {} was not applied in full: {:?}", result.event_id, result);
                    }
                    let cell = book.entry((sku.clone(), location.clone())).or_default();
                    cell.committed -= units;
                    cell.shipped += units;
                }
                state.shipped = true;
                shipments += 1;
            }
            Step::Release if !state.reservation_id.is_empty() && !state.shipped => {
                let request = ReleaseReservationRequest {
                    reservation_id: state.reservation_id.clone(),
                    reason: if state.confirmed { ReleaseReason::Cancelled } else { ReleaseReason::Abandoned } as i32,
                    lines: Vec::new(),
                };
                retry_unavailable!(reservation.release_reservation(request.clone()).await)
                    .with_context(|| format!("ReleaseReservation {}", state.reservation_id))?;
                for (location, sku, units) in &state.planned {
                    let cell = book.entry((sku.clone(), location.clone())).or_default();
                    if state.confirmed {
                        cell.committed -= units;
                    } else {
                        cell.held -= units;
                    }
                }
                state.reservation_id.clear();
                releases += 1;
            }
            _ => {}
        }
    }
    progress.finish_and_clear();

    // Alerts: let the demand feed drain, then evaluate every known cell once more.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut replenishment = ReplenishmentServiceClient::new(targets.replenishment.clone());
    replenishment.run_replenishment(RunReplenishmentRequest {}).await.context("RunReplenishment")?;
    let alerts = replenishment
        .list_alerts(ListAlertsRequest { include_closed: true })
        .await
        .context("ListAlerts")?
        .into_inner()
        .alerts;
    let alerts_raised = alerts
        .iter()
        .filter(|a| a.cell.as_ref().is_some_and(|c| c.sku.starts_with(&format!("{}:", options.run_id))))
        .count() as u64;

    // Invariants: the book, the live counters and the services' own reconcile.
    let units_oversold: i64 = book.values().map(|c| (c.held + c.committed + c.shipped - c.supply).max(0)).sum();
    let mut differences = Vec::new();
    let cells: Vec<(&(String, String), &CellBook)> = book.iter().collect();
    for chunk in cells.chunks(500) {
        let request = GetCellAtpRequest {
            cells: chunk.iter().map(|((sku, loc), _)| CellRef { sku: sku.clone(), location_id: loc.clone() }).collect(),
        };
        let live = availability.get_cell_atp(request).await.context("GetCellAtp")?.into_inner().cells;
        for (((sku, loc), expected), got) in chunk.iter().zip(live) {
            let expected_on_hand = expected.supply - expected.shipped;
            if (got.on_hand_units, got.held_units, got.committed_units)
                != (expected_on_hand, expected.held, expected.committed)
            {
                differences.push(format!(
                    "{sku}@{loc}: live on_hand/held/committed {}/{}/{} but the replay's book says {}/{}/{}",
                    got.on_hand_units,
                    got.held_units,
                    got.committed_units,
                    expected_on_hand,
                    expected.held,
                    expected.committed
                ));
            }
        }
    }
    let reconcile = crate::reconcile::reconcile(targets.availability.clone(), targets.reservation.clone())
        .await
        .context("ReconcileCounters")?;
    for d in &reconcile.differences {
        differences.push(format!(
            "reconcile: {:?} {}: counter {} expected {} ({})",
            d.cell, d.field, d.counter_value, d.expected_value, d.detail
        ));
    }
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    let report = ReplayReport {
        orders_total: orders_rows.len() as u64,
        orders_fulfilled: fulfilled,
        orders_single_node: single,
        orders_split: split,
        orders_backordered: backordered,
        orders_rejected: rejected,
        orders_without_items: without_items,
        units_oversold,
        invariants_ok: differences.is_empty() && units_oversold == 0,
        invariant_differences: differences.into_iter().take(50).collect(),
        mean_distance_km: if distance_orders > 0 { our_distance / distance_orders as f64 } else { 0.0 },
        baseline_mean_distance_km: if distance_orders > 0 { baseline_distance / distance_orders as f64 } else { 0.0 },
        source_order_p50_ms: ms(0.5),
        source_order_p99_ms: ms(0.99),
        alerts_raised,
        engine: reconcile.counter_engine,
        store: reconcile.durable_store,
        stock_factor: options.stock_factor,
        stock_rule,
        locations: location_ids.len() as u64,
        locations_skipped_no_coordinates: skipped_sellers,
        items: products.len() as u64,
        cells_stocked: receipts.len() as u64,
        units_stocked,
        confirms_failed,
        shipments,
        releases,
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    Ok(report)
}

/// Writes the report as pretty JSON, creating the folder.
///
/// # Errors
/// The file cannot be written.
pub fn write_report(report: &ReplayReport, path: &Path) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(report)?)?;
    Ok(())
}
