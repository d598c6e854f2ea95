//! Black-box tests of the availability service over gRPC, each run twice: on the embedded back end
//! (SQLite + in-process counter engine) and on Redis + PostgreSQL. They cover every inventory event
//! kind and outcome, COUNT as-of semantics, event redelivery (B09), absolute syncs against open
//! commitments (B26, B27, B29), channel scoping (B32), safety stock and input validation. Every
//! test ends with the mesh-wide reconcile check (done by `backend_tests!`).
// Helpers outside #[test] functions panic on failure too, as the tests do.
#![allow(clippy::unwrap_used)]

use std::{sync::Arc, time::Duration};

use mesh_proto::{
    availability::v1::{self as av, EventOutcome, EventType},
    common::v1::{CellQuantities, GeoPoint},
    reservation::v1 as rv,
};
use test_support::{Backend, TestMesh, assert_invalid, backend_tests, cell, event, parts, reason};
use tokio::sync::Barrier;
use tonic::{Code, Status};

/// Hold TTL of every reservation here: long enough never to expire during a test.
const TTL_MS: u64 = 600_000;
/// 2024-01-01T09:00:00Z, the "09:00" of B09.
const NINE_AM_MS: i64 = 1_704_099_600_000;

fn outcome(result: &av::EventResult) -> EventOutcome {
    EventOutcome::try_from(result.outcome).expect("a known outcome")
}

/// (on_hand, held, committed, atp) of the cell an event result reports.
fn after(result: &av::EventResult) -> (i64, i64, i64, i64) {
    parts(result.cell.as_ref().expect("an event result carries its cell"))
}

fn shipment_of(
    reservation_id: &str,
    id: &str,
    sku: &str,
    location: &str,
    units: i64,
    at_ms: i64,
) -> av::InventoryEvent {
    av::InventoryEvent {
        reservation_id: reservation_id.into(),
        ..event(id, EventType::Shipment, sku, location, units, at_ms)
    }
}

async fn ingest(mesh: &TestMesh, events: Vec<av::InventoryEvent>) -> Result<Vec<av::EventResult>, Status> {
    mesh.availability.clone().ingest_events(av::IngestEventsRequest { events }).await.map(|r| r.into_inner().results)
}

async fn reserve_and_confirm(mesh: &TestMesh, id: &str, sku: &str, location: &str, units: i64) {
    mesh.reserve(id, &[(sku, location, units)], TTL_MS).await.expect("reserve");
    let confirmed = mesh.confirm(id).await.expect("confirm");
    assert!(!confirmed.already_confirmed);
}

async fn channel_atp(mesh: &TestMesh, channel_id: &str, sku: &str) -> i64 {
    let response = mesh
        .availability
        .clone()
        .get_channel_atp(av::GetChannelAtpRequest { channel_id: channel_id.into(), skus: vec![sku.into()] })
        .await
        .expect("channel ATP")
        .into_inner();
    assert_eq!(response.skus.len(), 1);
    assert_eq!(response.skus[0].sku, sku);
    response.skus[0].atp_units
}

async fn location_set_atp(mesh: &TestMesh, skus: &[&str], locations: &[&str]) -> Vec<av::SkuAtp> {
    mesh.availability
        .clone()
        .get_location_set_atp(av::GetLocationSetAtpRequest {
            skus: skus.iter().map(|s| (*s).to_owned()).collect(),
            location_ids: locations.iter().map(|l| (*l).to_owned()).collect(),
        })
        .await
        .expect("location set ATP")
        .into_inner()
        .skus
}

/// (location, on_hand, held, committed, atp) of each listed cell, by location.
fn cell_rows(cells: &[CellQuantities]) -> Vec<(String, i64, i64, i64, i64)> {
    let mut rows: Vec<_> = cells
        .iter()
        .map(|c| {
            let (on_hand, held, committed, atp) = parts(c);
            (c.cell.as_ref().expect("cell ref").location_id.clone(), on_hand, held, committed, atp)
        })
        .collect();
    rows.sort();
    rows
}

async fn set_safety(mesh: &TestMesh, sku: &str, location: &str, units: i64) -> CellQuantities {
    let mut cells = mesh
        .availability
        .clone()
        .set_safety_stock(av::SetSafetyStockRequest {
            cells: vec![av::SafetyStock { cell: Some(cell(sku, location)), safety_units: units }],
        })
        .await
        .expect("set safety")
        .into_inner()
        .cells;
    assert_eq!(cells.len(), 1);
    cells.remove(0)
}

/// Asserts FAILED_PRECONDITION INSUFFICIENT_STOCK with the shortage described exactly.
fn assert_insufficient<T: std::fmt::Debug>(result: Result<T, Status>, shortage: &str) {
    let status = result.expect_err("the reserve should fail");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(reason(&status), "INSUFFICIENT_STOCK");
    assert_eq!(status.message(), format!("INSUFFICIENT_STOCK: {shortage}"));
}

// ---------------------------------------------------------------------------------------------
// Event kinds and outcomes
// ---------------------------------------------------------------------------------------------

async fn each_event_kind_changes_on_hand_by_its_delta(mesh: &TestMesh) {
    let steps: Vec<(av::InventoryEvent, (i64, i64, i64, i64))> = vec![
        (event("k-rcv", EventType::Receipt, "A", "L1", 10, 1_000), (10, 0, 0, 10)),
        (event("k-shp", EventType::Shipment, "A", "L1", 3, 2_000), (7, 0, 0, 7)),
        (event("k-ret", EventType::Return, "A", "L1", 2, 3_000), (9, 0, 0, 9)),
        // A non-restockable return is recorded (APPLIED) but adds nothing to sellable stock.
        (
            av::InventoryEvent { restockable: false, ..event("k-ret-scrap", EventType::Return, "A", "L1", 4, 3_100) },
            (9, 0, 0, 9),
        ),
        (
            av::InventoryEvent {
                reason: "damaged".into(),
                ..event("k-adj-minus", EventType::Adjustment, "A", "L1", -5, 4_000)
            },
            (4, 0, 0, 4),
        ),
        (
            av::InventoryEvent {
                reason: "found".into(),
                ..event("k-adj-plus", EventType::Adjustment, "A", "L1", 1, 4_100)
            },
            (5, 0, 0, 5),
        ),
        (event("k-count", EventType::Count, "A", "L1", 12, 5_000), (12, 0, 0, 12)),
        // A delta after the count is added on top of it.
        (event("k-rcv-2", EventType::Receipt, "A", "L1", 1, 6_000), (13, 0, 0, 13)),
        // A COUNT of 0 on a cell never seen creates it at 0.
        (event("k-count-new", EventType::Count, "B", "L1", 0, 5_000), (0, 0, 0, 0)),
    ];
    for (event, expected) in steps {
        let id = event.event_id.clone();
        let result = mesh.event(event).await;
        assert_eq!(result.event_id, id);
        assert_eq!(outcome(&result), EventOutcome::Applied, "{id}");
        assert_eq!(result.reason, "", "{id}");
        assert_eq!(result.fulfilled_units, 0, "{id}");
        assert_eq!(after(&result), expected, "{id}");
    }
    assert_eq!(parts(&mesh.cell("A", "L1").await), (13, 0, 0, 13));
    assert_eq!(parts(&mesh.cell("B", "L1").await), (0, 0, 0, 0));
}
backend_tests!(each_event_kind_changes_on_hand_by_its_delta_test, each_event_kind_changes_on_hand_by_its_delta);

async fn count_as_of_adds_later_deltas_and_older_events_are_stale(mesh: &TestMesh) {
    assert_eq!(after(&mesh.event(event("c-e1", EventType::Receipt, "A", "L1", 10, 1_000)).await), (10, 0, 0, 10));
    assert_eq!(after(&mesh.event(event("c-e2", EventType::Receipt, "A", "L1", 5, 3_000)).await), (15, 0, 0, 15));

    // COUNT 7 as of t=2000: the receipt of t=3000 is not in the count, so it is added on top.
    let count = mesh.event(event("c-count-1", EventType::Count, "A", "L1", 7, 2_000)).await;
    assert_eq!((outcome(&count), count.reason.as_str(), after(&count)), (EventOutcome::Applied, "", (12, 0, 0, 12)));

    // Deltas that occurred at or before the latest COUNT are already in it: STALE, no change.
    for (id, at) in [("c-late-before", 1_500), ("c-late-same-instant", 2_000)] {
        let stale = mesh.event(event(id, EventType::Receipt, "A", "L1", 4, at)).await;
        assert_eq!(outcome(&stale), EventOutcome::Stale, "{id}");
        assert_eq!(stale.reason, "occurred before the latest COUNT, which already includes it");
        assert_eq!(after(&stale), (12, 0, 0, 12), "{id}");
    }
    let stale_shipment = mesh.event(event("c-late-ship", EventType::Shipment, "A", "L1", 3, 1_999)).await;
    assert_eq!((outcome(&stale_shipment), after(&stale_shipment)), (EventOutcome::Stale, (12, 0, 0, 12)));

    // A COUNT not newer than the latest COUNT is STALE.
    for (id, at) in [("c-count-older", 1_999), ("c-count-same", 2_000)] {
        let stale = mesh.event(event(id, EventType::Count, "A", "L1", 100, at)).await;
        assert_eq!(outcome(&stale), EventOutcome::Stale, "{id}");
        assert_eq!(stale.reason, "a newer COUNT is already applied");
        assert_eq!(after(&stale), (12, 0, 0, 12), "{id}");
    }

    // A delta after the count that arrives late is applied.
    let late = mesh.event(event("c-ship-after", EventType::Shipment, "A", "L1", 2, 2_500)).await;
    assert_eq!((outcome(&late), after(&late)), (EventOutcome::Applied, (10, 0, 0, 10)));

    // A newer COUNT as of t=2600 adds only the deltas after 2600 (the receipt of t=3000: +5).
    let recount = mesh.event(event("c-count-2", EventType::Count, "A", "L1", 20, 2_600)).await;
    assert_eq!((outcome(&recount), after(&recount)), (EventOutcome::Applied, (25, 0, 0, 25)));

    // Redelivery of an applied event: DUPLICATE, acknowledged, no second effect.
    let duplicate = mesh.event(event("c-e2", EventType::Receipt, "A", "L1", 5, 3_000)).await;
    assert_eq!(
        (outcome(&duplicate), duplicate.reason.as_str(), after(&duplicate)),
        (EventOutcome::Duplicate, "", (25, 0, 0, 25))
    );
    // Redelivery of a stale event is a duplicate too.
    let duplicate_stale = mesh.event(event("c-late-before", EventType::Receipt, "A", "L1", 4, 1_500)).await;
    assert_eq!((outcome(&duplicate_stale), after(&duplicate_stale)), (EventOutcome::Duplicate, (25, 0, 0, 25)));

    // The same id with a different body: REJECTED with a reason, nothing changes.
    let rejected = mesh.event(event("c-e2", EventType::Receipt, "A", "L1", 6, 3_000)).await;
    assert_eq!(outcome(&rejected), EventOutcome::Rejected);
    assert_eq!(rejected.reason, "event id already used with a different body");
    assert_eq!(after(&rejected), (25, 0, 0, 25));
    assert_eq!(parts(&mesh.cell("A", "L1").await), (25, 0, 0, 25));
}
backend_tests!(
    count_as_of_adds_later_deltas_and_older_events_are_stale_test,
    count_as_of_adds_later_deltas_and_older_events_are_stale
);

async fn shipment_naming_a_reservation_moves_committed_to_shipped(mesh: &TestMesh) {
    mesh.receive("A", "L1", 10).await;
    reserve_and_confirm(mesh, "R1", "A", "L1", 5).await;
    assert_eq!(parts(&mesh.cell("A", "L1").await), (10, 0, 5, 5));

    let first = mesh.event(shipment_of("R1", "ship-1", "A", "L1", 3, 2_000)).await;
    assert_eq!((outcome(&first), first.fulfilled_units, after(&first)), (EventOutcome::Applied, 3, (7, 0, 2, 5)));
    // A redelivered shipment reports what it fulfilled the first time and fulfils nothing more.
    let again = mesh.event(shipment_of("R1", "ship-1", "A", "L1", 3, 2_000)).await;
    assert_eq!((outcome(&again), again.fulfilled_units, after(&again)), (EventOutcome::Duplicate, 3, (7, 0, 2, 5)));
    // Shipping more than is still committed fulfils only the remainder; on_hand takes the whole shipment.
    let rest = mesh.event(shipment_of("R1", "ship-2", "A", "L1", 4, 3_000)).await;
    assert_eq!((outcome(&rest), rest.fulfilled_units, after(&rest)), (EventOutcome::Applied, 2, (3, 0, 0, 3)));
    // A shipment naming an unknown reservation still ships; it fulfils nothing.
    let unknown = mesh.event(shipment_of("R-unknown", "ship-3", "A", "L1", 1, 4_000)).await;
    assert_eq!((outcome(&unknown), unknown.fulfilled_units, after(&unknown)), (EventOutcome::Applied, 0, (2, 0, 0, 2)));

    // Nothing is left to release once the reservation has fully shipped.
    let status = mesh.release("R1").await.expect_err("fully shipped");
    assert_eq!((status.code(), reason(&status)), (Code::FailedPrecondition, "FULLY_SHIPPED".to_owned()));
    assert_eq!(parts(&mesh.cell("A", "L1").await), (2, 0, 0, 2));
}
backend_tests!(
    shipment_naming_a_reservation_moves_committed_to_shipped_test,
    shipment_naming_a_reservation_moves_committed_to_shipped
);

// ---------------------------------------------------------------------------------------------
// B09 event redelivery
// ---------------------------------------------------------------------------------------------

async fn b09_sequential_redelivery_applies_once_and_reused_id_is_rejected(mesh: &TestMesh) {
    mesh.receive("A", "STORE1", 20).await;
    let sale = || event("E7", EventType::Shipment, "A", "STORE1", 2, NINE_AM_MS);

    // (a) twice, 1 s apart.
    let first = mesh.event(sale()).await;
    assert_eq!((outcome(&first), after(&first)), (EventOutcome::Applied, (18, 0, 0, 18)));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = mesh.event(sale()).await;
    assert_eq!(
        (outcome(&second), second.reason.as_str(), after(&second)),
        (EventOutcome::Duplicate, "", (18, 0, 0, 18))
    );
    // Twice in one batch: still one effect.
    let batch = ingest(mesh, vec![sale(), sale()]).await.expect("batch");
    assert_eq!(batch.iter().map(outcome).collect::<Vec<_>>(), vec![EventOutcome::Duplicate, EventOutcome::Duplicate]);
    assert_eq!(parts(&mesh.cell("A", "STORE1").await), (18, 0, 0, 18));

    // (b) concurrently: see b09_concurrent_redelivery_applies_once.
    // (c) after a restart: TestMesh cannot restart a mesh on the same stores, so this step is not
    // run here. Dedup is durable by construction: the event id is the primary key of
    // availability_events, written in the same transaction as the position it changes (store.rs),
    // so a restarted service sees the id and answers DUPLICATE.

    // Step 3: E7 again with quantity 3 is rejected and changes nothing.
    let reused = mesh.event(event("E7", EventType::Shipment, "A", "STORE1", 3, NINE_AM_MS)).await;
    assert_eq!(outcome(&reused), EventOutcome::Rejected);
    assert_eq!(reused.reason, "event id already used with a different body");
    assert_eq!(after(&reused), (18, 0, 0, 18));
    // Any other difference in the body is a different body too.
    let moved = mesh.event(event("E7", EventType::Shipment, "A", "STORE1", 2, NINE_AM_MS + 60_000)).await;
    assert_eq!((outcome(&moved), after(&moved)), (EventOutcome::Rejected, (18, 0, 0, 18)));
    assert_eq!(parts(&mesh.cell("A", "STORE1").await), (18, 0, 0, 18));
}
backend_tests!(
    b09_sequential_redelivery_applies_once_and_reused_id_is_rejected_test,
    b09_sequential_redelivery_applies_once_and_reused_id_is_rejected
);

async fn b09_concurrent_redelivery_applies_once(mesh: &TestMesh) {
    const DELIVERIES: usize = 20;
    const ROUNDS: i64 = 20;
    mesh.receive("A", "STORE2", 100).await;
    for round in 0..ROUNDS {
        let event_id = format!("E7-round-{round}");
        let barrier = Arc::new(Barrier::new(DELIVERIES));
        let mut deliveries = Vec::with_capacity(DELIVERIES);
        for _ in 0..DELIVERIES {
            let mut client = mesh.availability.clone();
            let barrier = barrier.clone();
            let sale = event(&event_id, EventType::Shipment, "A", "STORE2", 2, NINE_AM_MS);
            deliveries.push(tokio::spawn(async move {
                barrier.wait().await;
                client
                    .ingest_events(av::IngestEventsRequest { events: vec![sale] })
                    .await
                    .map(|r| r.into_inner().results)
            }));
        }
        let (mut applied, mut duplicates) = (0, 0);
        for delivery in deliveries {
            let results = delivery
                .await
                .expect("task")
                .unwrap_or_else(|status| panic!("round {round}: a delivery failed: {status:?}"));
            assert_eq!(results.len(), 1);
            match outcome(&results[0]) {
                EventOutcome::Applied => applied += 1,
                EventOutcome::Duplicate => duplicates += 1,
                other => panic!("round {round}: unexpected outcome {other:?}"),
            }
        }
        assert_eq!((applied, duplicates), (1, DELIVERIES - 1), "round {round}");
        let on_hand = 100 - 2 * (round + 1);
        assert_eq!(parts(&mesh.cell("A", "STORE2").await), (on_hand, 0, 0, on_hand), "round {round}");
    }
}
backend_tests!(b09_concurrent_redelivery_applies_once_test, b09_concurrent_redelivery_applies_once);

/// A reused event id naming another cell must be rejected without touching either cell.
async fn event_id_reused_for_another_cell_changes_nothing(mesh: &TestMesh) {
    for (id, at) in [("x-e1", 1_000), ("x-e2", 1_001), ("x-e3", 1_002)] {
        mesh.event(event(id, EventType::Receipt, "A", "L1", 10, at)).await;
    }
    mesh.event(event("x-e4", EventType::Receipt, "A", "L2", 5, 1_000)).await;
    let reused = mesh.event(event("x-e1", EventType::Receipt, "A", "L2", 7, 1_000)).await;
    assert_eq!(outcome(&reused), EventOutcome::Rejected);
    assert_eq!(reused.reason, "event id already used with a different body");
    assert_eq!(parts(&mesh.cell("A", "L1").await), (30, 0, 0, 30));
    assert_eq!(parts(&mesh.cell("A", "L2").await), (5, 0, 0, 5));
    // Never seen before: a rejected event must not create it either.
    let reused_new_cell = mesh.event(event("x-e2", EventType::Receipt, "A", "L3", 7, 1_001)).await;
    assert_eq!(outcome(&reused_new_cell), EventOutcome::Rejected);
    assert_eq!(parts(&mesh.cell("A", "L3").await), (0, 0, 0, 0));
}
mod event_id_reused_for_another_cell_changes_nothing_test {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn embedded() {
        let mesh = TestMesh::start(Backend::Embedded).await;
        event_id_reused_for_another_cell_changes_nothing(&mesh).await;
        mesh.assert_reconciled().await;
        mesh.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn redis_postgres() {
        let mesh = TestMesh::start(Backend::External).await;
        event_id_reused_for_another_cell_changes_nothing(&mesh).await;
        mesh.assert_reconciled().await;
        mesh.stop().await;
    }
}

// ---------------------------------------------------------------------------------------------
// B26, B27, B29: absolute counts against open demand
// ---------------------------------------------------------------------------------------------

async fn b26a_count_and_shipment_deduct_once_in_either_order(mesh: &TestMesh) {
    // T0 = 2000 (shipment), T1 = 3000 (count as-of); the receipt is at 1000.
    for sku in ["A", "B"] {
        mesh.receive(sku, "L1", 1).await;
        reserve_and_confirm(mesh, &format!("O11-{sku}"), sku, "L1", 1).await;
        assert_eq!(parts(&mesh.cell(sku, "L1").await), (1, 0, 1, 0));
    }

    // A: the shipment arrives first, then the count that already reflects it.
    let shipped = mesh.event(shipment_of("O11-A", "b26a-ship-A", "A", "L1", 1, 2_000)).await;
    assert_eq!((outcome(&shipped), shipped.fulfilled_units, after(&shipped)), (EventOutcome::Applied, 1, (0, 0, 0, 0)));
    let counted = mesh.event(event("b26a-count-A", EventType::Count, "A", "L1", 0, 3_000)).await;
    assert_eq!((outcome(&counted), after(&counted)), (EventOutcome::Applied, (0, 0, 0, 0)));

    // B: the count arrives first (ATP −1 for a moment), then the shipment that occurred before it:
    // STALE for on_hand (the count has it), but it still fulfils the commitment.
    let counted = mesh.event(event("b26a-count-B", EventType::Count, "B", "L1", 0, 3_000)).await;
    assert_eq!((outcome(&counted), after(&counted)), (EventOutcome::Applied, (0, 0, 1, -1)));
    let shipped = mesh.event(shipment_of("O11-B", "b26a-ship-B", "B", "L1", 1, 2_000)).await;
    assert_eq!(outcome(&shipped), EventOutcome::Stale);
    assert_eq!(shipped.reason, "occurred before the latest COUNT, which already includes it");
    assert_eq!((shipped.fulfilled_units, after(&shipped)), (1, (0, 0, 0, 0)));

    for sku in ["A", "B"] {
        assert_eq!(parts(&mesh.cell(sku, "L1").await), (0, 0, 0, 0), "{sku}");
    }
}
backend_tests!(
    b26a_count_and_shipment_deduct_once_in_either_order_test,
    b26a_count_and_shipment_deduct_once_in_either_order
);

async fn b26b_count_of_a_lost_unit_keeps_the_commitment_and_the_later_shipment_is_accepted(mesh: &TestMesh) {
    mesh.receive("A", "L1", 1).await;
    reserve_and_confirm(mesh, "O11", "A", "L1", 1).await;
    let counted = mesh.event(event("b26b-count", EventType::Count, "A", "L1", 0, 3_000)).await;
    assert_eq!((outcome(&counted), after(&counted)), (EventOutcome::Applied, (0, 0, 1, -1)));
    assert_eq!(parts(&mesh.cell("A", "L1").await), (0, 0, 1, -1));

    // The shipment after the count is accepted without error: it fulfils the commitment and, as a
    // delta after the count, takes on_hand to −1 (what the code does; the scenario allows either
    // this or an explicit shortage, never a crash).
    let shipped = mesh.event(shipment_of("O11", "b26b-ship", "A", "L1", 1, 4_000)).await;
    assert_eq!((outcome(&shipped), shipped.reason.as_str()), (EventOutcome::Applied, ""));
    assert_eq!((shipped.fulfilled_units, after(&shipped)), (1, (-1, 0, 0, -1)));
    assert_eq!(parts(&mesh.cell("A", "L1").await), (-1, 0, 0, -1));
}
backend_tests!(
    b26b_count_of_a_lost_unit_keeps_the_commitment_test,
    b26b_count_of_a_lost_unit_keeps_the_commitment_and_the_later_shipment_is_accepted
);

async fn b27_published_atp_subtracts_commitments_after_receipt_and_resync(mesh: &TestMesh) {
    mesh.channel("web", &["L1"], 0).await;
    mesh.channel("marketplace", &["L1"], 0).await;
    mesh.receive("A", "L1", 30).await;
    reserve_and_confirm(mesh, "O12", "A", "L1", 29).await;
    assert_eq!(parts(&mesh.cell("A", "L1").await), (30, 0, 29, 1));
    assert_eq!(channel_atp(mesh, "web", "A").await, 1);

    let receipt = mesh.event(event("E9", EventType::Receipt, "A", "L1", 50, 2_000)).await;
    assert_eq!((outcome(&receipt), after(&receipt)), (EventOutcome::Applied, (80, 0, 29, 51)));
    assert_eq!(channel_atp(mesh, "web", "A").await, 51);
    assert_eq!(channel_atp(mesh, "marketplace", "A").await, 51);

    // The nightly full resync reports on_hand 80 (newer than everything): ATP stays 51.
    let resync = mesh.event(event("nightly-resync", EventType::Count, "A", "L1", 80, 3_000)).await;
    assert_eq!((outcome(&resync), after(&resync)), (EventOutcome::Applied, (80, 0, 29, 51)));
    assert_eq!(channel_atp(mesh, "web", "A").await, 51);
    assert_eq!(channel_atp(mesh, "marketplace", "A").await, 51);

    assert_insufficient(mesh.reserve("O13", &[("A", "L1", 52)], TTL_MS).await, "A@L1 requested 52, available 51");
    assert_eq!(parts(&mesh.cell("A", "L1").await), (80, 0, 29, 51));
    let held = mesh.reserve("O14", &[("A", "L1", 51)], TTL_MS).await.expect("51 fits");
    assert_eq!(held.status, rv::ReservationStatus::Held as i32);
    assert_eq!(parts(&mesh.cell("A", "L1").await), (80, 51, 29, 0));
    assert_eq!(channel_atp(mesh, "web", "A").await, 0);
}
backend_tests!(
    b27_published_atp_subtracts_commitments_test,
    b27_published_atp_subtracts_commitments_after_receipt_and_resync
);

async fn b29_count_below_holds_goes_negative_and_reductions_still_work(mesh: &TestMesh) {
    mesh.receive("A", "L1", 5).await;
    mesh.reserve("H1", &[("A", "L1", 2)], TTL_MS).await.expect("H1");
    mesh.reserve("H2", &[("A", "L1", 2)], TTL_MS).await.expect("H2");
    assert_eq!(parts(&mesh.cell("A", "L1").await), (5, 4, 0, 1));

    // Step 2: the count is physical truth.
    let counted = mesh.event(event("b29-count", EventType::Count, "A", "L1", 2, 2_000)).await;
    assert_eq!((outcome(&counted), after(&counted)), (EventOutcome::Applied, (2, 4, 0, -2)));

    // Step 3: releasing is never refused because ATP is negative.
    let released = mesh.release("H1").await.expect("release H1");
    assert_eq!(released.released_units, 2);
    assert_eq!(parts(&mesh.cell("A", "L1").await), (2, 2, 0, 0));

    // Step 4 (Amend H2 to 1) is not implemented by the reservation service: skipped.

    // Step 5: nothing is available for a new reserve (0 here, since the amend did not run).
    assert_insufficient(mesh.reserve("N1", &[("A", "L1", 2)], TTL_MS).await, "A@L1 requested 2, available 0");
    assert_eq!(parts(&mesh.cell("A", "L1").await), (2, 2, 0, 0));

    // Confirming the remaining hold is a reduction of nothing: allowed, then releasing it frees 2.
    mesh.confirm("H2").await.expect("confirm H2");
    assert_eq!(parts(&mesh.cell("A", "L1").await), (2, 0, 2, 0));
    assert_eq!(mesh.release("H2").await.expect("release H2").released_units, 2);
    assert_eq!(parts(&mesh.cell("A", "L1").await), (2, 0, 0, 2));
}
backend_tests!(
    b29_count_below_holds_goes_negative_and_reductions_still_work_test,
    b29_count_below_holds_goes_negative_and_reductions_still_work
);

// ---------------------------------------------------------------------------------------------
// B32 channels, location sets, buffers, safety
// ---------------------------------------------------------------------------------------------

async fn b32_channels_see_only_their_locations(mesh: &TestMesh) {
    mesh.channel("X", &["LX", "LY"], 0).await;
    mesh.channel("Y", &["LY"], 0).await;
    mesh.channel("Z", &["LZ"], 0).await;
    mesh.receive("A", "LX", 10).await;
    mesh.receive("A", "LY", 5).await;
    mesh.event(event("lz-count", EventType::Count, "A", "LZ", 0, 1_000)).await;

    assert_eq!(channel_atp(mesh, "X", "A").await, 15);
    assert_eq!(channel_atp(mesh, "Y", "A").await, 5);
    assert_eq!(channel_atp(mesh, "Z", "A").await, 0);
    let x = mesh
        .availability
        .clone()
        .get_channel_atp(av::GetChannelAtpRequest { channel_id: "X".into(), skus: vec!["A".into()] })
        .await
        .expect("channel X")
        .into_inner();
    assert_eq!(cell_rows(&x.skus[0].cells), vec![("LX".to_owned(), 10, 0, 0, 10), ("LY".to_owned(), 5, 0, 0, 5)]);

    // Step 2: reserve 15 on X takes LX:10 + LY:5, and Y sees 0 at once.
    mesh.reserve("OX", &[("A", "LX", 10), ("A", "LY", 5)], TTL_MS).await.expect("15 on X");
    assert_eq!(channel_atp(mesh, "X", "A").await, 0);
    assert_eq!(channel_atp(mesh, "Y", "A").await, 0);
    // Step 3.
    assert_insufficient(mesh.reserve("OY", &[("A", "LY", 1)], TTL_MS).await, "A@LY requested 1, available 0");
    // Step 4.
    assert_eq!(channel_atp(mesh, "Z", "A").await, 0);
    assert_insufficient(mesh.reserve("OZ", &[("A", "LZ", 1)], TTL_MS).await, "A@LZ requested 1, available 0");
    assert_eq!(parts(&mesh.cell("A", "LX").await), (10, 10, 0, 0));
    assert_eq!(parts(&mesh.cell("A", "LY").await), (5, 5, 0, 0));
    assert_eq!(parts(&mesh.cell("A", "LZ").await), (0, 0, 0, 0));
}
backend_tests!(b32_channels_see_only_their_locations_test, b32_channels_see_only_their_locations);

async fn network_atp_clamps_each_cell_at_zero_before_summing(mesh: &TestMesh) {
    mesh.channel("X", &["LX", "LY"], 0).await;
    mesh.receive("B", "LX", 2).await;
    mesh.receive("B", "LY", 3).await;
    mesh.reserve("HB", &[("B", "LY", 3)], TTL_MS).await.expect("hold");
    let adjusted = mesh
        .event(av::InventoryEvent {
            reason: "damaged".into(),
            ..event("b-adj", EventType::Adjustment, "B", "LY", -2, 2_000)
        })
        .await;
    assert_eq!((outcome(&adjusted), after(&adjusted)), (EventOutcome::Applied, (1, 3, 0, -2)));

    // LY's −2 does not eat LX's 2.
    assert_eq!(channel_atp(mesh, "X", "B").await, 2);
    let both = location_set_atp(mesh, &["B"], &["LX", "LY"]).await;
    assert_eq!((both.len(), both[0].sku.as_str(), both[0].atp_units), (1, "B", 2));
    // The cells show the unclamped parts.
    assert_eq!(cell_rows(&both[0].cells), vec![("LX".to_owned(), 2, 0, 0, 2), ("LY".to_owned(), 1, 3, 0, -2)]);
    assert_eq!(location_set_atp(mesh, &["B"], &["LY"]).await[0].atp_units, 0);

    // A location set sums only the named locations.
    mesh.receive("A", "LX", 10).await;
    mesh.receive("A", "LY", 5).await;
    mesh.receive("A", "LZ", 7).await;
    let sums = |skus: Vec<av::SkuAtp>| skus.into_iter().map(|s| (s.sku, s.atp_units)).collect::<Vec<_>>();
    assert_eq!(sums(location_set_atp(mesh, &["A"], &["LY", "LZ"]).await), vec![("A".to_owned(), 12)]);
    assert_eq!(sums(location_set_atp(mesh, &["A"], &["LX"]).await), vec![("A".to_owned(), 10)]);
    assert_eq!(sums(location_set_atp(mesh, &["A"], &["LX", "LY", "LZ"]).await), vec![("A".to_owned(), 22)]);
    assert_eq!(
        sums(location_set_atp(mesh, &["A", "B"], &["LX", "LY"]).await),
        vec![("A".to_owned(), 15), ("B".to_owned(), 2)]
    );
    let nowhere = location_set_atp(mesh, &["A"], &["L-none"]).await;
    assert_eq!((nowhere[0].atp_units, nowhere[0].cells.len()), (0, 0));
    let unknown_sku = location_set_atp(mesh, &["Q"], &["LX"]).await;
    assert_eq!((unknown_sku[0].sku.as_str(), unknown_sku[0].atp_units, unknown_sku[0].cells.len()), ("Q", 0, 0));
}
backend_tests!(
    network_atp_clamps_each_cell_at_zero_before_summing_test,
    network_atp_clamps_each_cell_at_zero_before_summing
);

async fn channel_buffer_is_subtracted_and_floored_at_zero(mesh: &TestMesh) {
    mesh.receive("A", "L1", 10).await;
    mesh.receive("A", "L2", 5).await;
    mesh.channel("plain", &["L1", "L2"], 0).await;
    mesh.channel("buffered", &["L1", "L2"], 4).await;
    mesh.channel("over-buffered", &["L2"], 10).await;
    assert_eq!(channel_atp(mesh, "plain", "A").await, 15);
    assert_eq!(channel_atp(mesh, "buffered", "A").await, 11);
    assert_eq!(channel_atp(mesh, "over-buffered", "A").await, 0);

    mesh.reserve("R1", &[("A", "L1", 8)], TTL_MS).await.expect("reserve 8");
    assert_eq!(channel_atp(mesh, "plain", "A").await, 7);
    assert_eq!(channel_atp(mesh, "buffered", "A").await, 3);
    mesh.reserve("R2", &[("A", "L2", 4)], TTL_MS).await.expect("reserve 4");
    assert_eq!(channel_atp(mesh, "plain", "A").await, 3);
    assert_eq!(channel_atp(mesh, "buffered", "A").await, 0);
    // The buffer is the channel's view only: the cells still hold 3 units.
    assert_eq!(parts(&mesh.cell("A", "L1").await), (10, 8, 0, 2));
    assert_eq!(parts(&mesh.cell("A", "L2").await), (5, 4, 0, 1));
}
backend_tests!(channel_buffer_is_subtracted_and_floored_at_zero_test, channel_buffer_is_subtracted_and_floored_at_zero);

async fn safety_stock_lowers_atp_and_cannot_be_reserved(mesh: &TestMesh) {
    mesh.channel("web", &["L1"], 0).await;
    mesh.receive("A", "L1", 10).await;
    let set = set_safety(mesh, "A", "L1", 3).await;
    assert_eq!((parts(&set), set.safety_units), ((10, 0, 0, 7), 3));
    let read = mesh.cell("A", "L1").await;
    assert_eq!((parts(&read), read.safety_units), ((10, 0, 0, 7), 3));
    assert_eq!(channel_atp(mesh, "web", "A").await, 7);

    assert_insufficient(mesh.reserve("R1", &[("A", "L1", 8)], TTL_MS).await, "A@L1 requested 8, available 7");
    mesh.reserve("R2", &[("A", "L1", 7)], TTL_MS).await.expect("7 fits");
    let read = mesh.cell("A", "L1").await;
    assert_eq!((parts(&read), read.safety_units), ((10, 7, 0, 0), 3));
    assert_eq!(channel_atp(mesh, "web", "A").await, 0);

    // Lowering safety frees the units again.
    let lowered = set_safety(mesh, "A", "L1", 1).await;
    assert_eq!((parts(&lowered), lowered.safety_units), ((10, 7, 0, 2), 1));
    assert_eq!(channel_atp(mesh, "web", "A").await, 2);

    // Safety on a cell with no stock: ATP is stored unclamped (−2) and published as 0.
    let empty = set_safety(mesh, "B", "L1", 2).await;
    assert_eq!((parts(&empty), empty.safety_units), ((0, 0, 0, -2), 2));
    assert_eq!(channel_atp(mesh, "web", "B").await, 0);
}
backend_tests!(safety_stock_lowers_atp_and_cannot_be_reserved_test, safety_stock_lowers_atp_and_cannot_be_reserved);

// ---------------------------------------------------------------------------------------------
// Bad input, not found, round trips, reconcile
// ---------------------------------------------------------------------------------------------

async fn bad_event_batch_is_rejected_whole_naming_the_field(mesh: &TestMesh) {
    // A batch with one bad event applies none of them.
    let good = event("good-1", EventType::Receipt, "A", "L1", 5, 1_000);
    let bad = event("bad-1", EventType::Receipt, "A", "L1", 0, 1_000);
    assert_invalid(ingest(mesh, vec![good.clone(), bad]).await, "events[1].quantity_units");
    assert_eq!(parts(&mesh.cell("A", "L1").await), (0, 0, 0, 0));
    // The good event's id was not recorded: sent alone it is APPLIED, not a duplicate.
    assert_eq!(outcome(&mesh.event(good).await), EventOutcome::Applied);
    assert_eq!(parts(&mesh.cell("A", "L1").await), (5, 0, 0, 5));

    let base = || event("b-1", EventType::Receipt, "A", "L1", 1, 2_000);
    let cases: Vec<(av::InventoryEvent, &str)> = vec![
        (av::InventoryEvent { event_id: String::new(), ..base() }, "events[0].event_id"),
        (av::InventoryEvent { event_id: "has space".into(), ..base() }, "events[0].event_id"),
        (av::InventoryEvent { event_id: "x".repeat(129), ..base() }, "events[0].event_id"),
        (av::InventoryEvent { cell: None, ..base() }, "events[0].cell"),
        (av::InventoryEvent { cell: Some(cell("", "L1")), ..base() }, "events[0].cell.sku"),
        (av::InventoryEvent { cell: Some(cell("A", "L|1")), ..base() }, "events[0].cell.location_id"),
        (av::InventoryEvent { r#type: EventType::Unspecified as i32, ..base() }, "events[0].type"),
        (av::InventoryEvent { r#type: 99, ..base() }, "events[0].type"),
        (event("b-1", EventType::Shipment, "A", "L1", -3, 2_000), "events[0].quantity_units"),
        (event("b-1", EventType::Return, "A", "L1", 0, 2_000), "events[0].quantity_units"),
        (event("b-1", EventType::Adjustment, "A", "L1", 0, 2_000), "events[0].quantity_units"),
        (event("b-1", EventType::Count, "A", "L1", -1, 2_000), "events[0].quantity_units"),
        (event("b-1", EventType::Receipt, "A", "L1", 1_000_000_000_001, 2_000), "events[0].quantity_units"),
        (av::InventoryEvent { occurred_at: None, ..base() }, "events[0].occurred_at"),
        (av::InventoryEvent { reservation_id: "R1".into(), ..base() }, "events[0].reservation_id"),
        (shipment_of("R#1", "b-1", "A", "L1", 1, 2_000), "events[0].reservation_id"),
        (av::InventoryEvent { reason: "r".repeat(257), ..base() }, "events[0].reason"),
    ];
    for (bad, field) in cases {
        assert_invalid(ingest(mesh, vec![bad]).await, field);
    }
    assert_invalid(ingest(mesh, vec![]).await, "events");
    let too_many: Vec<_> =
        (0..1001).map(|i| event(&format!("many-{i}"), EventType::Receipt, "A", "L1", 1, 2_000)).collect();
    assert_invalid(ingest(mesh, too_many).await, "events");

    assert_eq!(parts(&mesh.cell("A", "L1").await), (5, 0, 0, 5));
    // None of the rejected bodies recorded "b-1".
    assert_eq!(outcome(&mesh.event(base()).await), EventOutcome::Applied);
    assert_eq!(parts(&mesh.cell("A", "L1").await), (6, 0, 0, 6));
}
backend_tests!(
    bad_event_batch_is_rejected_whole_naming_the_field_test,
    bad_event_batch_is_rejected_whole_naming_the_field
);

/// The length check of `source_system` must name that field, not `reason`.
async fn overlong_source_system_names_source_system(mesh: &TestMesh) {
    let bad =
        av::InventoryEvent { source_system: "s".repeat(129), ..event("s-1", EventType::Receipt, "A", "L1", 1, 1_000) };
    assert_invalid(ingest(mesh, vec![bad]).await, "events[0].source_system");
}
mod overlong_source_system_names_source_system_test {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn embedded() {
        let mesh = TestMesh::start(Backend::Embedded).await;
        overlong_source_system_names_source_system(&mesh).await;
        mesh.assert_reconciled().await;
        mesh.stop().await;
    }
}

/// A timestamp outside the protobuf Timestamp range is bad input, not an event in year 292 million
/// (and with large nanos it overflowed `seconds * 1000 + nanos / 1e6` in a debug build).
async fn occurred_at_out_of_range_is_invalid_argument(mesh: &TestMesh) {
    let far = av::InventoryEvent {
        occurred_at: Some(prost_types::Timestamp { seconds: i64::MAX, nanos: 999_000_000 }),
        ..event("t-1", EventType::Receipt, "A", "L1", 1, 0)
    };
    assert_invalid(ingest(mesh, vec![far]).await, "events[0].occurred_at");
    // Year 10000 is past the Timestamp range (0001-01-01 .. 9999-12-31) too.
    let year_10000 = av::InventoryEvent {
        occurred_at: Some(prost_types::Timestamp { seconds: 253_402_300_800, nanos: 0 }),
        ..event("t-2", EventType::Count, "A", "L1", 1, 0)
    };
    assert_invalid(ingest(mesh, vec![year_10000]).await, "events[0].occurred_at");
    assert_eq!(parts(&mesh.cell("A", "L1").await), (0, 0, 0, 0));
}
mod occurred_at_out_of_range_is_invalid_argument_test {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn embedded() {
        let mesh = TestMesh::start(Backend::Embedded).await;
        occurred_at_out_of_range_is_invalid_argument(&mesh).await;
        mesh.assert_reconciled().await;
        mesh.stop().await;
    }
}

async fn bad_queries_and_upserts_name_the_field_and_change_nothing(mesh: &TestMesh) {
    let mut client = mesh.availability.clone();
    mesh.receive("A", "L1", 5).await;

    assert_invalid(client.get_cell_atp(av::GetCellAtpRequest { cells: vec![] }).await, "cells");
    assert_invalid(
        client.get_cell_atp(av::GetCellAtpRequest { cells: vec![cell("A", "L1"), cell("", "L1")] }).await,
        "cells[1].sku",
    );
    assert_invalid(
        client.get_cell_atp(av::GetCellAtpRequest { cells: vec![cell("A", "")] }).await,
        "cells[0].location_id",
    );

    let safety = |sku: &str, location: &str, units: i64| av::SafetyStock {
        cell: Some(cell(sku, location)),
        safety_units: units,
    };
    assert_invalid(client.set_safety_stock(av::SetSafetyStockRequest { cells: vec![] }).await, "cells");
    assert_invalid(
        client
            .set_safety_stock(av::SetSafetyStockRequest {
                cells: vec![av::SafetyStock { cell: None, safety_units: 1 }],
            })
            .await,
        "cells[0].cell",
    );
    // The first entry is valid, the second is not: neither is applied.
    assert_invalid(
        client
            .set_safety_stock(av::SetSafetyStockRequest { cells: vec![safety("A", "L1", 3), safety("A", "L2", -1)] })
            .await,
        "cells[1].safety_units",
    );
    let unchanged = mesh.cell("A", "L1").await;
    assert_eq!((parts(&unchanged), unchanged.safety_units), ((5, 0, 0, 5), 0));

    let channel = |id: &str, locations: &[&str], buffer: i64| av::Channel {
        channel_id: id.into(),
        location_ids: locations.iter().map(|l| (*l).to_owned()).collect(),
        buffer_units: buffer,
    };
    let upsert_channels = |channels: Vec<av::Channel>| av::UpsertChannelsRequest { channels };
    assert_invalid(client.upsert_channels(upsert_channels(vec![])).await, "channels");
    assert_invalid(
        client.upsert_channels(upsert_channels(vec![channel("", &["L1"], 0)])).await,
        "channels[0].channel_id",
    );
    assert_invalid(
        client.upsert_channels(upsert_channels(vec![channel("web", &[], 0)])).await,
        "channels[0].location_ids",
    );
    assert_invalid(
        client.upsert_channels(upsert_channels(vec![channel("web", &["L1", ""], 0)])).await,
        "channels[0].location_ids[1]",
    );
    assert_invalid(
        client.upsert_channels(upsert_channels(vec![channel("web", &["L1"], 0), channel("pos", &["L1"], -1)])).await,
        "channels[1].buffer_units",
    );
    // Neither channel of the rejected batch exists.
    for id in ["web", "pos"] {
        let status = client.get_channel(av::GetChannelRequest { channel_id: id.into() }).await.expect_err("not stored");
        assert_eq!(status.code(), Code::NotFound, "{id}");
    }

    let location = |id: &str, lat: f64, lon: f64| av::Location {
        location_id: id.into(),
        r#type: av::LocationType::Dc as i32,
        position: Some(GeoPoint { lat, lon }),
        priority: 0,
    };
    let upsert_locations = |locations: Vec<av::Location>| av::UpsertLocationsRequest { locations };
    assert_invalid(client.upsert_locations(upsert_locations(vec![])).await, "locations");
    assert_invalid(
        client.upsert_locations(upsert_locations(vec![location("", 0.0, 0.0)])).await,
        "locations[0].location_id",
    );
    assert_invalid(
        client.upsert_locations(upsert_locations(vec![location("L1", 0.0, 0.0), location("L2", 91.0, 0.0)])).await,
        "locations[1].position",
    );
    assert_invalid(
        client.upsert_locations(upsert_locations(vec![location("L1", 0.0, -180.5)])).await,
        "locations[0].position",
    );
    assert_eq!(client.list_locations(av::ListLocationsRequest {}).await.expect("list").into_inner().locations, vec![]);

    let item = |sku: &str, substitutes: &[&str]| av::Item {
        sku: sku.into(),
        substitute_skus: substitutes.iter().map(|s| (*s).to_owned()).collect(),
    };
    assert_invalid(client.upsert_items(av::UpsertItemsRequest { items: vec![] }).await, "items");
    assert_invalid(client.upsert_items(av::UpsertItemsRequest { items: vec![item("", &[])] }).await, "items[0].sku");
    assert_invalid(
        client.upsert_items(av::UpsertItemsRequest { items: vec![item("A", &["B", "A"])] }).await,
        "items[0].substitute_skus[1]",
    );
    assert_invalid(
        client.upsert_items(av::UpsertItemsRequest { items: vec![item("A", &["B{x}"])] }).await,
        "items[0].substitute_skus[0]",
    );
    assert_invalid(client.get_item(av::GetItemRequest { sku: String::new() }).await, "sku");
    assert_eq!(
        client.get_item(av::GetItemRequest { sku: "A".into() }).await.expect_err("not stored").code(),
        Code::NotFound
    );

    assert_invalid(client.get_channel(av::GetChannelRequest { channel_id: String::new() }).await, "channel_id");
    let channel_atp_request = |channel_id: &str, skus: &[&str]| av::GetChannelAtpRequest {
        channel_id: channel_id.into(),
        skus: skus.iter().map(|s| (*s).to_owned()).collect(),
    };
    assert_invalid(client.get_channel_atp(channel_atp_request("", &["A"])).await, "channel_id");
    assert_invalid(client.get_channel_atp(channel_atp_request("web", &[])).await, "skus");
    assert_invalid(client.get_channel_atp(channel_atp_request("web", &["A", ""])).await, "skus[1]");

    let set_atp = |skus: &[&str], locations: &[&str]| av::GetLocationSetAtpRequest {
        skus: skus.iter().map(|s| (*s).to_owned()).collect(),
        location_ids: locations.iter().map(|l| (*l).to_owned()).collect(),
    };
    assert_invalid(client.get_location_set_atp(set_atp(&[], &["L1"])).await, "skus");
    assert_invalid(client.get_location_set_atp(set_atp(&["A"], &[])).await, "location_ids");
    assert_invalid(client.get_location_set_atp(set_atp(&["A"], &["L1", "L 2"])).await, "location_ids[1]");
    assert_invalid(client.get_location_set_atp(set_atp(&["A b"], &["L1"])).await, "skus[0]");

    assert_eq!(parts(&mesh.cell("A", "L1").await), (5, 0, 0, 5));
}
backend_tests!(
    bad_queries_and_upserts_name_the_field_and_change_nothing_test,
    bad_queries_and_upserts_name_the_field_and_change_nothing
);

async fn unknown_channel_and_item_are_not_found(mesh: &TestMesh) {
    let mut client = mesh.availability.clone();
    let status = client
        .get_channel_atp(av::GetChannelAtpRequest { channel_id: "nope".into(), skus: vec!["A".into()] })
        .await
        .expect_err("unknown");
    assert_eq!((status.code(), status.message()), (Code::NotFound, "channel nope not found"));
    let status = client.get_channel(av::GetChannelRequest { channel_id: "nope".into() }).await.expect_err("unknown");
    assert_eq!((status.code(), status.message()), (Code::NotFound, "channel nope not found"));
    let status = client.get_item(av::GetItemRequest { sku: "nope".into() }).await.expect_err("unknown");
    assert_eq!((status.code(), status.message()), (Code::NotFound, "item nope not found"));
}
backend_tests!(unknown_channel_and_item_are_not_found_test, unknown_channel_and_item_are_not_found);

async fn items_round_trip_with_substitutes(mesh: &TestMesh) {
    let mut client = mesh.availability.clone();
    let item = |sku: &str, substitutes: &[&str]| av::Item {
        sku: sku.into(),
        substitute_skus: substitutes.iter().map(|s| (*s).to_owned()).collect(),
    };
    let get = |sku: &str| av::GetItemRequest { sku: sku.into() };

    let upserted = client
        .upsert_items(av::UpsertItemsRequest { items: vec![item("A", &["B", "C"]), item("B", &[])] })
        .await
        .expect("upsert");
    assert_eq!(upserted.into_inner().upserted, 2);
    assert_eq!(client.get_item(get("A")).await.expect("A").into_inner().item, Some(item("A", &["B", "C"])));
    assert_eq!(client.get_item(get("B")).await.expect("B").into_inner().item, Some(item("B", &[])));

    // An upsert replaces the substitutes.
    client.upsert_items(av::UpsertItemsRequest { items: vec![item("A", &["C"])] }).await.expect("replace");
    assert_eq!(client.get_item(get("A")).await.expect("A").into_inner().item, Some(item("A", &["C"])));
    client.upsert_items(av::UpsertItemsRequest { items: vec![item("A", &[])] }).await.expect("clear");
    assert_eq!(client.get_item(get("A")).await.expect("A").into_inner().item, Some(item("A", &[])));
}
backend_tests!(items_round_trip_with_substitutes_test, items_round_trip_with_substitutes);

async fn locations_and_channels_round_trip(mesh: &TestMesh) {
    let mut client = mesh.availability.clone();
    let location = |id: &str, kind: av::LocationType, position: Option<(f64, f64)>, priority: i32| av::Location {
        location_id: id.into(),
        r#type: kind as i32,
        position: position.map(|(lat, lon)| GeoPoint { lat, lon }),
        priority,
    };
    let l1 = location("L1", av::LocationType::Dc, Some((52.52, 13.405)), 1);
    let l2 = location("L2", av::LocationType::Store, Some((-23.5505, -46.6333)), 3);
    let l3 = location("L3", av::LocationType::ThreePl, None, 0);
    let upserted = client
        .upsert_locations(av::UpsertLocationsRequest { locations: vec![l2.clone(), l3.clone(), l1.clone()] })
        .await
        .expect("upsert");
    assert_eq!(upserted.into_inner().upserted, 3);
    let listed = client.list_locations(av::ListLocationsRequest {}).await.expect("list").into_inner().locations;
    assert_eq!(listed, vec![l1, l2.clone(), l3.clone()]);

    // An upsert replaces every field.
    let l1_moved = location("L1", av::LocationType::Supplier, Some((0.0, 180.0)), 9);
    client.upsert_locations(av::UpsertLocationsRequest { locations: vec![l1_moved.clone()] }).await.expect("replace");
    let listed = client.list_locations(av::ListLocationsRequest {}).await.expect("list").into_inner().locations;
    assert_eq!(listed, vec![l1_moved, l2, l3]);

    let x = av::Channel { channel_id: "X".into(), location_ids: vec!["LX".into(), "LY".into()], buffer_units: 4 };
    let upserted =
        client.upsert_channels(av::UpsertChannelsRequest { channels: vec![x.clone()] }).await.expect("upsert");
    assert_eq!(upserted.into_inner().upserted, 1);
    assert_eq!(
        client.get_channel(av::GetChannelRequest { channel_id: "X".into() }).await.expect("X").into_inner().channel,
        Some(x)
    );
    let x_moved = av::Channel { channel_id: "X".into(), location_ids: vec!["LZ".into()], buffer_units: 0 };
    client.upsert_channels(av::UpsertChannelsRequest { channels: vec![x_moved.clone()] }).await.expect("replace");
    assert_eq!(
        client.get_channel(av::GetChannelRequest { channel_id: "X".into() }).await.expect("X").into_inner().channel,
        Some(x_moved)
    );
}
backend_tests!(locations_and_channels_round_trip_test, locations_and_channels_round_trip);

async fn reconcile_reports_engine_and_store_without_differences(mesh: &TestMesh) {
    mesh.receive("A", "L1", 10).await;
    mesh.receive("A", "L2", 4).await;
    set_safety(mesh, "B", "L1", 2).await;
    reserve_and_confirm(mesh, "R1", "A", "L1", 3).await;
    mesh.reserve("R2", &[("A", "L2", 1)], TTL_MS).await.expect("hold");
    mesh.event(shipment_of("R1", "ship-1", "A", "L1", 1, 2_000)).await;
    mesh.event(event("count-1", EventType::Count, "A", "L2", 1, 3_000)).await;

    let report = mesh
        .availability
        .clone()
        .reconcile_counters(av::ReconcileCountersRequest {})
        .await
        .expect("reconcile")
        .into_inner();
    let (engine, store) = match mesh.backend {
        Backend::Embedded => ("embedded", "sqlite"),
        Backend::External => ("redis", "postgres"),
        Backend::Cluster => ("redis-cluster", "postgres"),
    };
    assert_eq!(report.differences, vec![]);
    assert_eq!(
        (report.cells_checked, report.counter_engine.as_str(), report.durable_store.as_str()),
        (3, engine, store)
    );
    assert_eq!(parts(&mesh.cell("A", "L1").await), (9, 0, 2, 7));
    assert_eq!(parts(&mesh.cell("A", "L2").await), (1, 1, 0, 0));
}
backend_tests!(
    reconcile_reports_engine_and_store_without_differences_test,
    reconcile_reports_engine_and_store_without_differences
);

async fn values_beyond_the_supported_range_are_refused(mesh: &TestMesh) {
    let mut client = mesh.availability.clone();
    ingest(mesh, vec![event("ov-1", EventType::Adjustment, "OV", "L1", -2, 1_000)]).await.unwrap();
    let huge = av::SetSafetyStockRequest {
        cells: vec![av::SafetyStock { cell: Some(cell("OV", "L1")), safety_units: i64::MAX }],
    };
    assert_invalid(client.set_safety_stock(huge).await, "cells[0].safety_units");
    assert_eq!(parts(&mesh.cell("OV", "L1").await), (-2, 0, 0, -2));
    // Many large receipts cannot push on_hand past ±10^15: the one that would is REJECTED.
    let mut last = None;
    for i in 0..1001 {
        let result =
            mesh.event(event(&format!("ov-r{i}"), EventType::Receipt, "OV", "L2", 1_000_000_000_000, 1_000)).await;
        last = Some(result);
    }
    let last = last.unwrap();
    assert_eq!(last.outcome, EventOutcome::Rejected as i32, "{last:?}");
    assert_eq!(mesh.cell("OV", "L2").await.on_hand_units, 1_000_000_000_000_000);
    // Duplicated SKUs in one query are answered once.
    let atp = client
        .get_location_set_atp(av::GetLocationSetAtpRequest {
            skus: vec!["OV".into(), "OV".into()],
            location_ids: vec!["L2".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(atp.skus.len(), 1);
    assert_eq!(atp.skus[0].atp_units, 1_000_000_000_000_000);
}
backend_tests!(values_beyond_the_supported_range_are_refused_test, values_beyond_the_supported_range_are_refused);
