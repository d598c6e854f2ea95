//! Work cut off in the middle, on every back end (embedded, Redis + PostgreSQL, 3-master Redis
//! Cluster): clients that give up (deadline or cancel) in the middle of multi-line creates,
//! confirms and releases never leave half a change, and the state a crash leaves between the
//! claim, the slots of a multi-slot hold and the record is settled by the sweeper: released and
//! dropped when incomplete, recorded HELD when every slot was held.
// Helpers outside #[test] functions panic on failure too, as the tests do.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mesh_counters::{Cell, CellUnits, ReservePolicy, key_slot};
use mesh_proto::reservation::v1 as rv;
use reservation::{domain::NewReservation, store::ReservationStore};
use test_support::{Backend, Options, TestMesh, backend_tests, parts};
use tonic::Code;

const TTL: u64 = 600_000;

/// Three SKU names whose keys fall in three different thirds of the slot space, so that on a
/// 3-master cluster (slots split evenly) every line lives on another node.
fn three_slots(prefix: &str) -> Vec<String> {
    let mut found: [Option<String>; 3] = [None, None, None];
    for i in 0.. {
        let sku = format!("{prefix}{i}");
        let third = usize::from(key_slot(&sku)) * 3 / 16_384;
        found[third].get_or_insert(sku);
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    found.into_iter().flatten().collect()
}

fn lines(skus: &[String]) -> Vec<rv::ReservationLine> {
    skus.iter()
        .map(|sku| rv::ReservationLine {
            sku: sku.clone(),
            location_id: "L1".into(),
            quantity_units: 1,
            ..Default::default()
        })
        .collect()
}

/// Sends `request` and gives up after `micros`: by deadline (even rounds) or by dropping the call
/// (odd rounds, a cancel). Returns whether the caller saw an answer.
async fn hurried<T, F>(round: u64, micros: u64, call: F) -> bool
where
    F: std::future::Future<Output = Result<T, tonic::Status>>,
{
    if round % 2 == 1 {
        return matches!(tokio::time::timeout(Duration::from_micros(micros), call).await, Ok(Ok(_)));
    }
    match call.await {
        Ok(_) => true,
        Err(status) if status.code() == Code::DeadlineExceeded || status.code() == Code::Cancelled => false,
        Err(status) => panic!("round {round}: {status:?}"),
    }
}

/// Give-up times of round `round`: 50 µs … 2 ms, cycling, so some calls are abandoned before the
/// server sees them, some in the middle and some not at all.
fn spread(round: u64) -> u64 {
    50 + (round * 7 % 40) * 50
}

fn timed<T>(message: T, round: u64, micros: u64) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if round.is_multiple_of(2) {
        request.set_timeout(Duration::from_micros(micros));
    }
    request
}

async fn status_of(mesh: &TestMesh, id: &str) -> Option<rv::Reservation> {
    match mesh.reservation.clone().get_reservation(rv::GetReservationRequest { reservation_id: id.into() }).await {
        Ok(reply) => reply.into_inner().reservation,
        Err(status) if status.code() == Code::NotFound => None,
        Err(status) => panic!("{id}: {status:?}"),
    }
}

/// Every SKU of `skus` has exactly `(on_hand, held, committed, atp)`.
async fn assert_cells(mesh: &TestMesh, skus: &[String], expected: (i64, i64, i64, i64), step: &str) {
    for sku in skus {
        assert_eq!(parts(&mesh.cell(sku, "L1").await), expected, "{step}: {sku}");
    }
}

backend_tests!(
    a_client_that_gives_up_mid_request_never_leaves_half_a_multi_line_change,
    cluster,
    |mesh: &TestMesh| async move {
        const ROUNDS: u64 = 120;
        let skus = three_slots("G");
        for sku in &skus {
            mesh.receive(sku, "L1", 1_000).await;
        }
        let id = |round: u64| format!("G-{round}");
        let mut gave_up = [0; 3];
        // Creates of three lines (three slots on the cluster), each abandoned after 50 µs … 6 ms.
        for round in 0..ROUNDS {
            let request = rv::CreateReservationRequest {
                reservation_id: id(round),
                lines: lines(&skus),
                ttl_ms: TTL,
                ..Default::default()
            };
            let micros = spread(round);
            if !hurried(round, micros, mesh.reservation.clone().create_reservation(timed(request, round, micros))).await
            {
                gave_up[0] += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await; // abandoned work runs to its end
        let mut held = Vec::new();
        for round in 0..ROUNDS {
            match status_of(mesh, &id(round)).await {
                None => {}
                Some(r) => {
                    assert_eq!(r.status, rv::ReservationStatus::Held as i32, "round {round}: {r:?}");
                    assert!(r.lines.iter().all(|l| l.reserved_units == 1), "round {round}: {r:?}");
                    held.push(round);
                }
            }
        }
        let n = held.len() as i64;
        assert_cells(mesh, &skus, (1_000, n, 0, 1_000 - n), "after the creates").await;
        // Confirms of half of those holds, abandoned the same way: each is confirmed on every line or
        // not at all.
        for &round in held.iter().filter(|r| *r / 2 % 2 == 0) {
            let request = rv::ConfirmReservationRequest { reservation_id: id(round), occurred_at: None };
            let micros = spread(round);
            if !hurried(round, micros, mesh.reservation.clone().confirm_reservation(timed(request, round, micros)))
                .await
            {
                gave_up[1] += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut confirmed = 0;
        let mut still_held = Vec::new();
        for &round in &held {
            let r = status_of(mesh, &id(round)).await.unwrap();
            if r.status == rv::ReservationStatus::Confirmed as i32 {
                confirmed += 1;
            } else {
                assert_eq!(r.status, rv::ReservationStatus::Held as i32, "round {round}: {r:?}");
                still_held.push(round);
            }
        }
        assert_cells(mesh, &skus, (1_000, n - confirmed, confirmed, 1_000 - n), "after the confirms").await;
        // Releases of two of the three lines of the other half, abandoned the same way.
        let mut released_two = 0;
        for &round in &still_held {
            let request = rv::ReleaseReservationRequest {
                reservation_id: id(round),
                lines: skus[..2].iter().map(|sku| rv::LineRef { sku: sku.clone(), location_id: "L1".into() }).collect(),
                ..Default::default()
            };
            let micros = spread(round);
            if !hurried(round, micros, mesh.reservation.clone().release_reservation(timed(request, round, micros)))
                .await
            {
                gave_up[2] += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        for &round in &still_held {
            let r = status_of(mesh, &id(round)).await.unwrap();
            let released: Vec<i64> = r.lines.iter().map(|l| l.released_units).collect();
            match released.as_slice() {
                [1, 1, 0] => released_two += 1,
                [0, 0, 0] => {}
                other => panic!("round {round}: half a release {other:?}"),
            }
        }
        let open = n - confirmed;
        assert_cells(
            mesh,
            &skus[..2],
            (1_000, open - released_two, confirmed, 1_000 - n + released_two),
            "released lines",
        )
        .await;
        assert_cells(mesh, &skus[2..], (1_000, open, confirmed, 1_000 - n), "kept line").await;
        // Each phase had callers that gave up (else this test proves nothing) and work that got done.
        assert!(gave_up.iter().all(|g| *g > 0), "gave up {gave_up:?}");
        assert!(n > 0 && confirmed > 0 && released_two > 0, "held {n}, confirmed {confirmed}, released {released_two}");
    }
);

/// Leaves what a reservation process killed at each point of a reserve would leave, then lets the
/// sweeper find it: a claim alone, a claim with the first slot held, a claim with every slot held.
async fn crash_leftovers_are_settled(backend: Backend) {
    let options = Options {
        configure: Some(Box::new(|s| s.reservation.stale_claim_after = Duration::from_millis(500))),
        ..Default::default()
    };
    let mesh = TestMesh::start_with(backend, options).await;
    let skus = three_slots("X");
    for sku in &skus {
        mesh.receive(sku, "L1", 10).await;
    }
    let store = ReservationStore::new(service_kit::db::connect(&mesh.settings.database).await.unwrap());
    let cell_units: Vec<CellUnits> =
        skus.iter().map(|sku| CellUnits { cell: Cell::new(sku, "L1"), units: 2 }).collect();
    let now = service_kit::time::now_ms();
    for (id, slots_held) in [("claim-only", 0), ("first-slot", 1), ("all-slots", 3)] {
        let new = NewReservation {
            reservation_id: id.into(),
            order_id: String::new(),
            channel_id: String::new(),
            lines: cell_units.clone(),
            ttl_ms: TTL,
            policy: ReservePolicy::AllOrNothing,
            kits: String::new(),
        };
        assert!(store.claim(&new, now).await.unwrap(), "{id}");
        if slots_held > 0 {
            mesh.engine.reserve(id, &cell_units[..slots_held], TTL).await.unwrap();
        }
    }
    // Reconcile, before the sweeper gets to them, says what the leftovers are.
    let report = mesh.reservation.clone().reconcile_counters(rv::ReconcileCountersRequest {}).await.unwrap();
    let details: Vec<String> = report.into_inner().differences.into_iter().map(|d| d.detail).collect();
    assert!(details.iter().any(|d| d.starts_with("live hold first-slot belongs to a PENDING claim")), "{details:?}");
    // First slot: 2 + 2 held; other slots: 2 held (all-slots only).
    assert_eq!(parts(&mesh.cell(&skus[0], "L1").await), (10, 4, 0, 6));
    assert_eq!(parts(&mesh.cell(&skus[1], "L1").await), (10, 2, 0, 8));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while status_of(&mesh, "claim-only").await.is_some()
        || status_of(&mesh, "first-slot").await.is_some()
        || status_of(&mesh, "all-slots").await.is_none_or(|r| r.status != rv::ReservationStatus::Held as i32)
    {
        assert!(std::time::Instant::now() < deadline, "the sweeper did not settle the claims");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Incomplete: released and gone; complete: recorded HELD with what each slot holds.
    let recovered = status_of(&mesh, "all-slots").await.unwrap();
    assert_eq!(recovered.lines.iter().map(|l| l.reserved_units).collect::<Vec<_>>(), vec![2, 2, 2]);
    assert_eq!(recovered.history.last().map(|h| h.reason.as_str()), Some("held (recovered)"));
    assert_cells(&mesh, &skus, (10, 2, 0, 8), "after the sweep").await;
    // The recovered hold confirms; the dropped ids are free for a fresh request.
    mesh.confirm("all-slots").await.unwrap();
    assert_cells(&mesh, &skus, (10, 0, 2, 8), "after the confirm").await;
    let again = mesh.reserve("first-slot", &[(&skus[0], "L1", 8)], TTL).await.unwrap();
    assert_eq!(again.status, rv::ReservationStatus::Held as i32);
    assert_eq!(parts(&mesh.cell(&skus[0], "L1").await), (10, 8, 2, 0));
    mesh.assert_reconciled().await;
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_leftovers_are_settled_by_the_sweeper_embedded() {
    crash_leftovers_are_settled(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_leftovers_are_settled_by_the_sweeper_redis_postgres() {
    crash_leftovers_are_settled(Backend::External).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_leftovers_are_settled_by_the_sweeper_redis_cluster_postgres() {
    crash_leftovers_are_settled(Backend::Cluster).await;
}
