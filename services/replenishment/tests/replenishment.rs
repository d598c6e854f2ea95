//! Black-box tests of the replenishment service over gRPC, each run twice: on the embedded back end
//! (SQLite + in-process counter engine) and on Redis + PostgreSQL. They cover velocity from
//! recorded demand, idempotent demand ids, alerts raised once per crossing (STOCKOUT, LOW_STOCK,
//! OVERCOMMITTED after B26/B29 counts), reorder suggestions with the default settings (28-day
//! window, 7 days lead time, 14 days cover), the confirm → demand feed, and input validation.
//! Every test ends with the mesh-wide reconcile check (done by `backend_tests!`).
// Helpers outside #[test] functions panic on failure too, as the tests do.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mesh_proto::{
    availability::v1::{self as av, EventType},
    common::v1::CellRef,
    replenishment::v1::{self as rp, AlertKind},
    reservation::v1 as rv,
};
use test_support::{Backend, TestMesh, assert_invalid, backend_tests, cell, event, parts};
use tonic::{Code, Status};

const DAY_MS: i64 = 86_400_000;
/// The demand clock of these tests: 2024-06-01T00:00:00Z.
const T: i64 = 1_717_200_000_000;
/// Hold TTL of every reservation here: long enough never to expire during a test.
const TTL_MS: u64 = 600_000;

fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

fn demand(id: &str, sku: &str, location: &str, units: i64, at_ms: i64) -> rp::Demand {
    rp::Demand {
        demand_id: id.into(),
        cell: Some(cell(sku, location)),
        quantity_units: units,
        occurred_at: Some(timestamp(at_ms)),
    }
}

async fn record(mesh: &TestMesh, demands: Vec<rp::Demand>) -> Result<rp::RecordDemandResponse, Status> {
    mesh.replenishment.clone().record_demand(rp::RecordDemandRequest { demands }).await.map(tonic::Response::into_inner)
}

async fn velocity(mesh: &TestMesh, sku: &str, location: &str) -> rp::GetVelocityResponse {
    mesh.replenishment
        .clone()
        .get_velocity(rp::GetVelocityRequest { cell: Some(cell(sku, location)) })
        .await
        .expect("velocity")
        .into_inner()
}

/// (units_in_window, units_per_day, window_days, as_of ms) of a cell.
async fn velocity_parts(mesh: &TestMesh, sku: &str, location: &str) -> (i64, f64, u32, i64) {
    let v = velocity(mesh, sku, location).await;
    assert_eq!(v.cell, Some(cell(sku, location)));
    let as_of = v.as_of.expect("as_of");
    (v.units_in_window, v.units_per_day, v.window_days, as_of.seconds * 1000 + i64::from(as_of.nanos / 1_000_000))
}

async fn alerts(mesh: &TestMesh, include_closed: bool) -> Vec<rp::Alert> {
    mesh.replenishment
        .clone()
        .list_alerts(rp::ListAlertsRequest { include_closed })
        .await
        .expect("alerts")
        .into_inner()
        .alerts
}

async fn run(mesh: &TestMesh) -> rp::RunReplenishmentResponse {
    mesh.replenishment.clone().run_replenishment(rp::RunReplenishmentRequest {}).await.expect("run").into_inner()
}

/// (sku, location, kind, atp, is_closed) of an alert.
fn summary(alert: &rp::Alert) -> (String, String, AlertKind, i64, bool) {
    let CellRef { sku, location_id } = alert.cell.clone().expect("alert cell");
    assert!(alert.raised_at.is_some());
    (sku, location_id, AlertKind::try_from(alert.kind).expect("known kind"), alert.atp_units, alert.closed_at.is_some())
}

fn summaries(alerts: &[rp::Alert]) -> Vec<(String, String, AlertKind, i64, bool)> {
    alerts.iter().map(summary).collect()
}

fn open(sku: &str, location: &str, kind: AlertKind, atp: i64) -> (String, String, AlertKind, i64, bool) {
    (sku.to_owned(), location.to_owned(), kind, atp, false)
}

fn closed(sku: &str, location: &str, kind: AlertKind, atp: i64) -> (String, String, AlertKind, i64, bool) {
    (sku.to_owned(), location.to_owned(), kind, atp, true)
}

async fn confirm_at(mesh: &TestMesh, reservation_id: &str, at_ms: i64) -> rv::ConfirmReservationResponse {
    mesh.reservation
        .clone()
        .confirm_reservation(rv::ConfirmReservationRequest {
            reservation_id: reservation_id.into(),
            occurred_at: Some(timestamp(at_ms)),
        })
        .await
        .expect("confirm")
        .into_inner()
}

/// Polls `probe` every 25 ms until it returns Some (the demand feed is asynchronous); gives up
/// after 5 s, far beyond the feed's usual few milliseconds.
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Velocity and demand
// ---------------------------------------------------------------------------------------------

async fn velocity_is_units_in_the_window_over_window_days(mesh: &TestMesh) {
    let recorded = record(
        mesh,
        vec![
            demand("v1", "A", "L1", 7, T - 20 * DAY_MS),
            demand("v2", "A", "L1", 7, T),
            // Exactly 28 days before the clock: outside the window (it is (as_of − 28 d, as_of]).
            demand("v3", "A", "L1", 5, T - 28 * DAY_MS),
            demand("v4", "A", "L1", 3, T - 40 * DAY_MS),
            demand("v5", "B", "L1", 28, T - DAY_MS),
        ],
    )
    .await
    .expect("record");
    assert_eq!((recorded.recorded, recorded.duplicates), (5, 0));
    // Neither cell has stock: recording demand evaluates them and each enters STOCKOUT.
    assert_eq!(
        summaries(&recorded.alerts_raised),
        vec![open("A", "L1", AlertKind::Stockout, 0), open("B", "L1", AlertKind::Stockout, 0)]
    );

    // as_of is the latest demand time seen, for every cell.
    assert_eq!(velocity_parts(mesh, "A", "L1").await, (14, 0.5, 28, T));
    assert_eq!(velocity_parts(mesh, "B", "L1").await, (28, 1.0, 28, T));
    assert_eq!(velocity_parts(mesh, "C", "L1").await, (0, 0.0, 28, T));

    // Later demand anywhere moves the clock, and the window with it: v1 (T − 20 d) drops out.
    record(mesh, vec![demand("v6", "C", "L1", 1, T + 10 * DAY_MS)]).await.expect("record");
    assert_eq!(velocity_parts(mesh, "A", "L1").await, (7, 0.25, 28, T + 10 * DAY_MS));
    assert_eq!(velocity_parts(mesh, "B", "L1").await, (28, 1.0, 28, T + 10 * DAY_MS));
    assert_eq!(velocity_parts(mesh, "C", "L1").await, (1, 1.0 / 28.0, 28, T + 10 * DAY_MS));
}
backend_tests!(velocity_is_units_in_the_window_over_window_days_test, velocity_is_units_in_the_window_over_window_days);

async fn record_demand_is_idempotent_by_demand_id(mesh: &TestMesh) {
    mesh.receive("A", "L1", 100).await;
    let counts = |r: rp::RecordDemandResponse| (r.recorded, r.duplicates, r.alerts_raised.len());
    assert_eq!(
        counts(record(mesh, vec![demand("d1", "A", "L1", 3, T), demand("d2", "A", "L1", 4, T)]).await.expect("1")),
        (2, 0, 0)
    );
    assert_eq!(
        counts(record(mesh, vec![demand("d1", "A", "L1", 3, T), demand("d3", "A", "L1", 5, T)]).await.expect("2")),
        (1, 1, 0)
    );
    assert_eq!(
        counts(record(mesh, vec![demand("d3", "A", "L1", 5, T), demand("d3", "A", "L1", 5, T)]).await.expect("3")),
        (0, 2, 0)
    );
    // The same id twice in one batch counts once.
    assert_eq!(
        counts(record(mesh, vec![demand("d4", "A", "L1", 2, T), demand("d4", "A", "L1", 2, T)]).await.expect("4")),
        (1, 1, 0)
    );
    assert_eq!(velocity_parts(mesh, "A", "L1").await, (14, 0.5, 28, T));
    assert_eq!(alerts(mesh, true).await, vec![]);
}
backend_tests!(record_demand_is_idempotent_by_demand_id_test, record_demand_is_idempotent_by_demand_id);

/// DESIGN invariant 4: the same id with a different body is an error (ALREADY_EXISTS), never
/// silently taken for a redelivery.
async fn demand_id_reused_with_another_body_is_already_exists(mesh: &TestMesh) {
    mesh.receive("A", "L1", 100).await;
    record(mesh, vec![demand("d1", "A", "L1", 3, T)]).await.expect("first");
    let status =
        record(mesh, vec![demand("d1", "A", "L1", 30, T)]).await.expect_err("a different body under a used id");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert_eq!(velocity_parts(mesh, "A", "L1").await, (3, 3.0 / 28.0, 28, T));
}
mod demand_id_reused_with_another_body_is_already_exists_test {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn embedded() {
        let mesh = TestMesh::start(Backend::Embedded).await;
        demand_id_reused_with_another_body_is_already_exists(&mesh).await;
        mesh.assert_reconciled().await;
        mesh.stop().await;
    }
}

async fn confirm_feeds_demand_to_replenishment(mesh: &TestMesh) {
    mesh.receive("A", "L1", 10).await;
    mesh.reserve("R1", &[("A", "L1", 4)], TTL_MS).await.expect("R1");
    assert!(!confirm_at(mesh, "R1", T).await.already_confirmed);
    let first = eventually("R1's demand", move || async move {
        let v = velocity_parts(mesh, "A", "L1").await;
        (v.0 == 4).then_some(v)
    })
    .await;
    assert_eq!(first, (4, 4.0 / 28.0, 28, T));
    assert_eq!(alerts(mesh, true).await, vec![]); // ATP 6: no level

    // The second order takes the last units: the feed's evaluation raises STOCKOUT.
    mesh.reserve("R2", &[("A", "L1", 6)], TTL_MS).await.expect("R2");
    assert!(!confirm_at(mesh, "R2", T + 3_600_000).await.already_confirmed);
    let raised = eventually("the STOCKOUT alert", move || async move {
        let all = alerts(mesh, true).await;
        (!all.is_empty()).then_some(all)
    })
    .await;
    assert_eq!(summaries(&raised), vec![open("A", "L1", AlertKind::Stockout, 0)]);
    assert_eq!(velocity_parts(mesh, "A", "L1").await, (10, 10.0 / 28.0, 28, T + 3_600_000));

    // A duplicate confirm sends no second demand.
    assert!(confirm_at(mesh, "R2", T + 3_600_000).await.already_confirmed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(velocity_parts(mesh, "A", "L1").await, (10, 10.0 / 28.0, 28, T + 3_600_000));
    assert_eq!(summaries(&alerts(mesh, true).await), vec![open("A", "L1", AlertKind::Stockout, 0)]);

    // 10/28 per day: reorder point ⌈2.5⌉ = 3, order-up-to ⌈7.5⌉ = 8, ATP 0 → order 8.
    let report = run(mesh).await;
    assert_eq!(report.cells_evaluated, 1);
    assert_eq!(report.alerts_raised, vec![]);
    let s = &report.suggestions;
    assert_eq!(s.len(), 1);
    assert_eq!(
        (s[0].cell.clone(), s[0].quantity_units, s[0].reorder_point_units, s[0].order_up_to_units, s[0].atp_units),
        (Some(cell("A", "L1")), 8, 3, 8, 0)
    );
    assert_eq!(parts(&mesh.cell("A", "L1").await), (10, 0, 10, 0));
}
backend_tests!(confirm_feeds_demand_to_replenishment_test, confirm_feeds_demand_to_replenishment);

// ---------------------------------------------------------------------------------------------
// Alerts: once per crossing
// ---------------------------------------------------------------------------------------------

async fn stockout_alert_is_raised_once_per_crossing(mesh: &TestMesh) {
    mesh.receive("A", "L1", 2).await;
    // Demand makes the cell known to replenishment; ATP 2 is no level.
    assert_eq!(record(mesh, vec![demand("s1", "A", "L1", 1, T)]).await.expect("s1").alerts_raised, vec![]);
    let report = run(mesh).await;
    assert_eq!((report.cells_evaluated, report.alerts_raised.len()), (1, 0));

    // Holds (not confirmed, so no demand feed) drive ATP to 0.
    mesh.reserve("H1", &[("A", "L1", 2)], TTL_MS).await.expect("H1");
    let report = run(mesh).await;
    assert_eq!(summaries(&report.alerts_raised), vec![open("A", "L1", AlertKind::Stockout, 0)]);
    let first_id = report.alerts_raised[0].alert_id;
    assert_eq!(alerts(mesh, false).await, report.alerts_raised);

    // Still in the same crossing: evaluating again (either way) raises nothing.
    assert_eq!(run(mesh).await.alerts_raised, vec![]);
    assert_eq!(record(mesh, vec![demand("s2", "A", "L1", 1, T)]).await.expect("s2").alerts_raised, vec![]);
    let still_open = alerts(mesh, false).await;
    assert_eq!((still_open.len(), still_open[0].alert_id), (1, first_id));

    // A receipt ends the crossing: the run closes the alert.
    mesh.receive("A", "L1", 5).await;
    assert_eq!(run(mesh).await.alerts_raised, vec![]);
    assert_eq!(alerts(mesh, false).await, vec![]);
    assert_eq!(summaries(&alerts(mesh, true).await), vec![closed("A", "L1", AlertKind::Stockout, 0)]);

    // Dropping to 0 again is a new crossing: a second alert.
    mesh.reserve("H2", &[("A", "L1", 5)], TTL_MS).await.expect("H2");
    let report = run(mesh).await;
    assert_eq!(summaries(&report.alerts_raised), vec![open("A", "L1", AlertKind::Stockout, 0)]);
    assert_ne!(report.alerts_raised[0].alert_id, first_id);
    assert_eq!(run(mesh).await.alerts_raised, vec![]);
    assert_eq!(
        summaries(&alerts(mesh, true).await),
        vec![closed("A", "L1", AlertKind::Stockout, 0), open("A", "L1", AlertKind::Stockout, 0)]
    );
    assert_eq!(parts(&mesh.cell("A", "L1").await), (7, 7, 0, 0));
}
backend_tests!(stockout_alert_is_raised_once_per_crossing_test, stockout_alert_is_raised_once_per_crossing);

async fn low_stock_alert_when_only_the_safety_buffer_is_left(mesh: &TestMesh) {
    mesh.receive("A", "L1", 5).await;
    mesh.availability
        .clone()
        .set_safety_stock(av::SetSafetyStockRequest {
            cells: vec![av::SafetyStock { cell: Some(cell("A", "L1")), safety_units: 2 }],
        })
        .await
        .expect("safety");
    assert_eq!(record(mesh, vec![demand("s1", "A", "L1", 1, T)]).await.expect("s1").alerts_raised, vec![]);

    // ATP 0 with 2 units still free (the buffer): LOW_STOCK, not STOCKOUT.
    mesh.reserve("H1", &[("A", "L1", 3)], TTL_MS).await.expect("H1");
    assert_eq!(parts(&mesh.cell("A", "L1").await), (5, 3, 0, 0));
    let report = run(mesh).await;
    assert_eq!(summaries(&report.alerts_raised), vec![open("A", "L1", AlertKind::LowStock, 0)]);
    assert_eq!(run(mesh).await.alerts_raised, vec![]);
    assert_eq!(summaries(&alerts(mesh, false).await), vec![open("A", "L1", AlertKind::LowStock, 0)]);

    // Releasing the hold ends the crossing.
    mesh.release("H1").await.expect("release");
    assert_eq!(run(mesh).await.alerts_raised, vec![]);
    assert_eq!(alerts(mesh, false).await, vec![]);
    assert_eq!(summaries(&alerts(mesh, true).await), vec![closed("A", "L1", AlertKind::LowStock, 0)]);
}
backend_tests!(
    low_stock_alert_when_only_the_safety_buffer_is_left_test,
    low_stock_alert_when_only_the_safety_buffer_is_left
);

async fn b29_count_below_holds_raises_exactly_one_overcommitted_alert(mesh: &TestMesh) {
    mesh.receive("A", "L1", 5).await;
    mesh.reserve("H1", &[("A", "L1", 2)], TTL_MS).await.expect("H1");
    mesh.reserve("H2", &[("A", "L1", 2)], TTL_MS).await.expect("H2");
    assert_eq!(record(mesh, vec![demand("s1", "A", "L1", 1, T)]).await.expect("s1").alerts_raised, vec![]);

    mesh.event(event("b29-count", EventType::Count, "A", "L1", 2, 2_000)).await;
    assert_eq!(parts(&mesh.cell("A", "L1").await), (2, 4, 0, -2));
    // The alert feed or this run raises it (whichever evaluates first); never both.
    run(mesh).await;
    assert_eq!(run(mesh).await.alerts_raised, vec![]);
    assert_eq!(summaries(&alerts(mesh, true).await), vec![open("A", "L1", AlertKind::Overcommitted, -2)]);

    // Release H1: ATP 0 with nothing free → the crossing moves to STOCKOUT.
    mesh.release("H1").await.expect("release H1");
    run(mesh).await;
    assert_eq!(
        summaries(&alerts(mesh, true).await),
        vec![closed("A", "L1", AlertKind::Overcommitted, -2), open("A", "L1", AlertKind::Stockout, 0)]
    );
}
backend_tests!(
    b29_count_below_holds_raises_exactly_one_overcommitted_alert_test,
    b29_count_below_holds_raises_exactly_one_overcommitted_alert
);

async fn b26b_count_of_a_lost_committed_unit_raises_one_overcommitted_alert(mesh: &TestMesh) {
    mesh.receive("A", "L1", 1).await;
    mesh.reserve("O11", &[("A", "L1", 1)], TTL_MS).await.expect("O11");
    confirm_at(mesh, "O11", T).await;
    // The confirm's demand reaches replenishment, whose evaluation sees ATP 0: STOCKOUT.
    eventually("O11's STOCKOUT alert", move || async move { (!alerts(mesh, true).await.is_empty()).then_some(()) })
        .await;
    assert_eq!(summaries(&alerts(mesh, true).await), vec![open("A", "L1", AlertKind::Stockout, 0)]);

    mesh.event(event("b26b-count", EventType::Count, "A", "L1", 0, 3_000)).await;
    assert_eq!(parts(&mesh.cell("A", "L1").await), (0, 0, 1, -1));
    run(mesh).await;
    assert_eq!(run(mesh).await.alerts_raised, vec![]);
    assert_eq!(
        summaries(&alerts(mesh, true).await),
        vec![closed("A", "L1", AlertKind::Stockout, 0), open("A", "L1", AlertKind::Overcommitted, -1)]
    );

    // The later shipment is accepted (on_hand −1, committed 0): ATP stays −1, same crossing.
    let shipped = mesh
        .event(av::InventoryEvent {
            reservation_id: "O11".into(),
            ..event("b26b-ship", EventType::Shipment, "A", "L1", 1, 4_000)
        })
        .await;
    assert_eq!(shipped.fulfilled_units, 1);
    assert_eq!(parts(&mesh.cell("A", "L1").await), (-1, 0, 0, -1));
    assert_eq!(run(mesh).await.alerts_raised, vec![]);
    assert_eq!(
        summaries(&alerts(mesh, true).await),
        vec![closed("A", "L1", AlertKind::Stockout, 0), open("A", "L1", AlertKind::Overcommitted, -1)]
    );
}
backend_tests!(
    b26b_count_of_a_lost_committed_unit_raises_one_overcommitted_alert_test,
    b26b_count_of_a_lost_committed_unit_raises_one_overcommitted_alert
);

// ---------------------------------------------------------------------------------------------
// Reorder suggestions
// ---------------------------------------------------------------------------------------------

async fn reorder_suggestions_follow_velocity_lead_time_and_cover(mesh: &TestMesh) {
    for (sku, units) in [("A", 3), ("B", 5), ("D", 4), ("E", 1), ("F", 2)] {
        mesh.receive(sku, "L1", units).await;
    }
    let recorded = record(
        mesh,
        vec![
            demand("a1", "A", "L1", 7, T - 20 * DAY_MS),
            demand("a2", "A", "L1", 7, T),
            demand("b1", "B", "L1", 14, T - DAY_MS),
            demand("d1", "D", "L1", 28, T - 27 * DAY_MS),
            demand("e1", "E", "L1", 5, T - 28 * DAY_MS),
            demand("e2", "E", "L1", 3, T - 40 * DAY_MS),
            demand("f1", "F", "L1", 14, T),
        ],
    )
    .await
    .expect("record");
    assert_eq!((recorded.recorded, recorded.alerts_raised.len()), (7, 0));
    // F goes below zero through a physical correction under a hold.
    mesh.reserve("HF", &[("F", "L1", 2)], TTL_MS).await.expect("HF");
    mesh.event(av::InventoryEvent {
        reason: "damaged".into(),
        ..event("f-adj", EventType::Adjustment, "F", "L1", -3, 2_000)
    })
    .await;
    assert_eq!(parts(&mesh.cell("F", "L1").await), (-1, 2, 0, -3));

    // (sku, quantity, reorder point, order-up-to, atp, units per day, reason)
    let expected = vec![
        // 0.5/day: reorder point ⌈3.5⌉ = 4, order-up-to ⌈10.5⌉ = 11; ATP 3 ≤ 4 → 11 − 3 = 8.
        (
            "A".to_owned(),
            8,
            4,
            11,
            3,
            0.5,
            "ATP 3 is at or below the reorder point 4 (0.50/day × 7 days lead time); order up to 11 (14 more days of cover)".to_owned(),
        ),
        // B: 0.5/day but ATP 5 > 4: nothing. 1/day: reorder point 7, order-up-to 21; 21 − 4 = 17.
        (
            "D".to_owned(),
            17,
            7,
            21,
            4,
            1.0,
            "ATP 4 is at or below the reorder point 7 (1.00/day × 7 days lead time); order up to 21 (14 more days of cover)".to_owned(),
        ),
        // E: no demand inside the window, so no velocity and no suggestion.
        // F: negative ATP counts as 0 stock: 11 − 0 = 11.
        (
            "F".to_owned(),
            11,
            4,
            11,
            -3,
            0.5,
            "ATP -3 is at or below the reorder point 4 (0.50/day × 7 days lead time); order up to 11 (14 more days of cover)".to_owned(),
        ),
    ];
    let rows = |report: &rp::RunReplenishmentResponse| {
        let mut rows: Vec<_> = report
            .suggestions
            .iter()
            .map(|s| {
                let cell = s.cell.clone().expect("cell");
                assert_eq!(cell.location_id, "L1");
                (
                    cell.sku,
                    s.quantity_units,
                    s.reorder_point_units,
                    s.order_up_to_units,
                    s.atp_units,
                    s.units_per_day,
                    s.reason.clone(),
                )
            })
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    };
    let report = run(mesh).await;
    assert_eq!(report.cells_evaluated, 5);
    let f_alerts: Vec<_> =
        alerts(mesh, true).await.into_iter().filter(|a| a.cell.as_ref().is_some_and(|c| c.sku == "F")).collect();
    assert_eq!(summaries(&f_alerts), vec![open("F", "L1", AlertKind::Overcommitted, -3)]);
    assert_eq!(rows(&report), expected);

    // Running again with no change suggests exactly the same, raising nothing (B10's kind).
    let again = run(mesh).await;
    assert_eq!((again.cells_evaluated, again.alerts_raised.len()), (5, 0));
    assert_eq!(rows(&again), expected);

    // A receipt that lifts A above its reorder point ends its suggestion.
    mesh.receive("A", "L1", 10).await;
    let after_receipt = rows(&run(mesh).await);
    assert_eq!(after_receipt.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), vec!["D", "F"]);
}
backend_tests!(
    reorder_suggestions_follow_velocity_lead_time_and_cover_test,
    reorder_suggestions_follow_velocity_lead_time_and_cover
);

// ---------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------

async fn bad_demand_is_invalid_argument_naming_the_field_and_records_nothing(mesh: &TestMesh) {
    assert_invalid(record(mesh, vec![]).await, "demands");
    let too_many: Vec<_> = (0..1001).map(|i| demand(&format!("m{i}"), "A", "L1", 1, T)).collect();
    assert_invalid(record(mesh, too_many).await, "demands");

    // One bad demand in a batch: none of it is recorded.
    assert_invalid(
        record(mesh, vec![demand("good", "A", "L1", 2, T), demand("bad", "A", "L1", 0, T)]).await,
        "demands[1].quantity_units",
    );
    let base = || demand("b1", "A", "L1", 1, T);
    let cases: Vec<(rp::Demand, &str)> = vec![
        (rp::Demand { demand_id: String::new(), ..base() }, "demands[0].demand_id"),
        (rp::Demand { demand_id: "R1#0".into(), ..base() }, "demands[0].demand_id"),
        (rp::Demand { cell: None, ..base() }, "demands[0].cell"),
        (rp::Demand { cell: Some(cell("", "L1")), ..base() }, "demands[0].cell.sku"),
        (rp::Demand { cell: Some(cell("A", "L 1")), ..base() }, "demands[0].cell.location_id"),
        (rp::Demand { quantity_units: -1, ..base() }, "demands[0].quantity_units"),
        (rp::Demand { occurred_at: None, ..base() }, "demands[0].occurred_at"),
    ];
    for (bad, field) in cases {
        assert_invalid(record(mesh, vec![bad]).await, field);
    }

    let mut client = mesh.replenishment.clone();
    assert_invalid(client.get_velocity(rp::GetVelocityRequest { cell: None }).await, "cell");
    assert_invalid(client.get_velocity(rp::GetVelocityRequest { cell: Some(cell("", "L1")) }).await, "cell.sku");
    assert_invalid(
        client.get_velocity(rp::GetVelocityRequest { cell: Some(cell("A", "L{1}")) }).await,
        "cell.location_id",
    );

    // Nothing was recorded or evaluated.
    assert_eq!(velocity(mesh, "A", "L1").await.units_in_window, 0);
    assert_eq!(alerts(mesh, true).await, vec![]);
    assert_eq!(run(mesh).await.cells_evaluated, 0);
    let good =
        record(mesh, vec![demand("good", "A", "L1", 2, T), demand("b1", "A", "L1", 1, T)]).await.expect("now valid");
    assert_eq!((good.recorded, good.duplicates), (2, 0));
}
backend_tests!(
    bad_demand_is_invalid_argument_naming_the_field_and_records_nothing_test,
    bad_demand_is_invalid_argument_naming_the_field_and_records_nothing
);

/// A timestamp outside the protobuf Timestamp range is bad input; it must not crash the handler.
async fn demand_occurred_at_out_of_range_is_invalid_argument(mesh: &TestMesh) {
    let far = rp::Demand {
        occurred_at: Some(prost_types::Timestamp { seconds: i64::MAX / 10, nanos: 0 }),
        ..demand("t1", "A", "L1", 1, 0)
    };
    assert_invalid(record(mesh, vec![far]).await, "demands[0].occurred_at");
    assert_eq!(alerts(mesh, true).await, vec![]);
}
mod demand_occurred_at_out_of_range_is_invalid_argument_test {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn embedded() {
        let mesh = TestMesh::start(Backend::Embedded).await;
        demand_occurred_at_out_of_range_is_invalid_argument(&mesh).await;
        mesh.assert_reconciled().await;
        mesh.stop().await;
    }
}

/// A physical correction that leaves a never-sold cell overcommitted raises OVERCOMMITTED without
/// anyone calling RunReplenishment, and a recovery closes it by itself (invariant 1).
async fn alerts_follow_physical_changes_without_being_asked(mesh: &TestMesh) {
    mesh.receive("Q", "L1", 3).await;
    mesh.reserve("q-hold", &[("Q", "L1", 3)], TTL_MS).await.unwrap();
    mesh.event(event("q-count", EventType::Count, "Q", "L1", 1, 5_000)).await;
    let raised = eventually("the OVERCOMMITTED alert", move || async move {
        let open = alerts(mesh, false).await;
        (!open.is_empty()).then_some(open)
    })
    .await;
    assert_eq!(raised.len(), 1);
    assert_eq!(raised[0].kind, rp::AlertKind::Overcommitted as i32);
    assert_eq!(raised[0].atp_units, -2);
    mesh.release("q-hold").await.unwrap();
    let open = eventually("the alert closed", move || async move {
        let open = alerts(mesh, false).await;
        open.iter().all(|a| a.kind != rp::AlertKind::Overcommitted as i32).then_some(open)
    })
    .await;
    assert!(open.is_empty(), "ATP 1 leaves no level: {open:?}");
    assert_eq!(alerts(mesh, true).await.len(), 1, "one crossing, one alert");
}
backend_tests!(
    alerts_follow_physical_changes_without_being_asked_test,
    alerts_follow_physical_changes_without_being_asked
);
