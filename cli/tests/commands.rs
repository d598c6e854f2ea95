//! The `inventory-mesh` binary as users run it, against a mesh process on PostgreSQL and a private
//! Redis: idempotent answers survive a `kill -9` and restart, `load flash-sale` prints its JSON
//! last and exits 0, `reconcile` exits 0 on a clean mesh, 1 listing an injected difference and 2
//! when it cannot check.
// Helpers outside #[test] functions panic on failure too, as the tests do.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use mesh_counters::{Cell, CellUnits, CounterEngine, RedisEngine};
use mesh_proto::{availability::v1 as av, reservation::v1 as rv};
use test_support::{MeshProcess, RedisProcess};
use tonic::Code;

const BINARY: &str = env!("CARGO_BIN_EXE_inventory-mesh");

fn line(sku: &str, units: i64) -> rv::ReservationLine {
    rv::ReservationLine { sku: sku.into(), location_id: "L1".into(), quantity_units: units, ..Default::default() }
}

fn create(id: &str, lines: Vec<rv::ReservationLine>) -> rv::CreateReservationRequest {
    rv::CreateReservationRequest { reservation_id: id.into(), lines, ttl_ms: 600_000, ..Default::default() }
}

fn extend(id: &str, request_id: &str, ttl_ms: u64) -> rv::ExtendReservationRequest {
    rv::ExtendReservationRequest { reservation_id: id.into(), request_id: request_id.into(), ttl_ms }
}

/// Runs the binary with `args` against the mesh at `target`.
fn tool(target: &MeshProcess, args: &[&str]) -> Output {
    Command::new(BINARY)
        .args(args)
        .args(["--target", &format!("127.0.0.1:{}", target.base_port)])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotent_answers_are_replayed_after_a_kill_9_and_restart() {
    let redis = RedisProcess::start(&[]).await;
    let database = test_support::fresh_postgres_database().await;
    let mut mesh = MeshProcess::start(BINARY, &database, &redis.url()).await;
    mesh.receive(&["A", "B"], "L1", 10).await;
    let mut client = mesh.reservation().await;
    let held = client.create_reservation(create("H1", vec![line("A", 2), line("B", 1)])).await.unwrap().into_inner();
    let extended = client.extend_reservation(extend("H1", "x1", 900_000)).await.unwrap().into_inner();
    client.create_reservation(create("C1", vec![line("A", 3)])).await.unwrap();
    let confirmed = client
        .confirm_reservation(rv::ConfirmReservationRequest { reservation_id: "C1".into(), occurred_at: None })
        .await
        .unwrap()
        .into_inner();
    client.create_reservation(create("R1", vec![line("B", 4)])).await.unwrap();
    let release = rv::ReleaseReservationRequest { reservation_id: "R1".into(), ..Default::default() };
    let released = client.release_reservation(release.clone()).await.unwrap().into_inner();
    assert_eq!(released.released_units, 4);

    mesh.restart().await; // kill -9, then start on the same stores
    let mut client = mesh.reservation().await;
    // The same id and body: the first answer again, and no second effect.
    // A create answers with the reservation as it stands (here: extended since), never a second hold.
    let again = client.create_reservation(create("H1", vec![line("A", 2), line("B", 1)])).await.unwrap();
    let again = again.into_inner().reservation.unwrap();
    let first = held.reservation.unwrap();
    assert_eq!((&again.status, &again.lines), (&first.status, &first.lines));
    assert_eq!(Some(again), extended.reservation);
    let again = client.extend_reservation(extend("H1", "x1", 900_000)).await.unwrap().into_inner();
    assert_eq!((again.reservation, again.capped), (extended.reservation.clone(), extended.capped));
    let again = client
        .confirm_reservation(rv::ConfirmReservationRequest { reservation_id: "C1".into(), occurred_at: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.already_confirmed, again.reservation), (true, confirmed.reservation));
    let again = client.release_reservation(release).await.unwrap().into_inner();
    assert_eq!((again.released_units, again.reservation), (0, released.reservation));
    // The same id with another body: ALREADY_EXISTS, and nothing changes.
    let changed = client.create_reservation(create("H1", vec![line("A", 5)])).await.unwrap_err();
    assert_eq!(changed.code(), Code::AlreadyExists, "{changed:?}");
    let changed = client.extend_reservation(extend("H1", "x1", 60_000)).await.unwrap_err();
    assert_eq!(changed.code(), Code::AlreadyExists, "{changed:?}");
    let now = client.get_reservation(rv::GetReservationRequest { reservation_id: "H1".into() }).await.unwrap();
    assert_eq!(now.into_inner().reservation, extended.reservation);
    let cells = mesh
        .availability()
        .await
        .get_cell_atp(av::GetCellAtpRequest {
            cells: vec![test_support::cell("A", "L1"), test_support::cell("B", "L1")],
        })
        .await
        .unwrap()
        .into_inner()
        .cells;
    // A: 10 on hand, 2 held (H1), 3 committed (C1); B: 1 held (H1), R1's 4 back.
    let got: Vec<_> = cells.iter().map(test_support::parts).collect();
    assert_eq!(got, vec![(10, 2, 3, 5), (10, 1, 0, 9)]);
    let output = tool(&mesh, &["reconcile"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_flash_sale_tool_prints_its_json_last_and_reconcile_lists_a_difference() {
    let redis = RedisProcess::start(&[]).await;
    let database = test_support::fresh_postgres_database().await;
    let mesh = MeshProcess::start(BINARY, &database, &redis.url()).await;
    for round in 0..3 {
        let output = tool(&mesh, &["load", "flash-sale", "--units", "50", "--buyers", "500", "--concurrency", "32"]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "round {round}: {stdout}");
        let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        let field = |name: &str| last[name].as_i64().unwrap_or_else(|| panic!("round {round}: no {name} in {last}"));
        assert_eq!(
            ["attempts", "accepted_units", "rejected", "errors", "oversold_units"].map(field),
            [500, 50, 450, 0, 0],
            "round {round}: {last}"
        );
        for timing in ["p50_ms", "p99_ms", "throughput_per_s"] {
            assert!(last[timing].as_f64().is_some_and(|v| v > 0.0), "round {round}: {timing} in {last}");
        }
    }
    let output = tool(&mesh, &["reconcile"]);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.ends_with(": 0 difference(s)\n"), "{stdout}");

    // A hold the records know nothing of (written to Redis behind the mesh's back).
    mesh.receive(&["G"], "L1", 5).await;
    let engine = CounterEngine::Redis(RedisEngine::connect(&redis.url(), "").await.unwrap());
    engine.reserve("ghost", &[CellUnits { cell: Cell::new("G", "L1"), units: 2 }], 600_000).await.unwrap();
    let output = tool(&mesh, &["reconcile"]);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    let differences: Vec<&str> = stdout.lines().filter(|l| l.starts_with("DIFFERENCE ")).collect();
    assert!(!differences.is_empty() && differences.iter().all(|l| l.starts_with("DIFFERENCE G@L1 ")), "{stdout}");
    assert!(stdout.contains(&format!(": {} difference(s)\n", differences.len())), "{stdout}");

    // A check that could not run exits 2, never 1 (differences): a bad target is refused before
    // anything is sent, and a mesh that is not there is named.
    let output = Command::new(BINARY).args(["reconcile", "--target", "127.0.0.1:x"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim(),
        "error: --target 127.0.0.1:x: the port must be a number below 65535"
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let output = Command::new(BINARY).args(["reconcile", "--target", &format!("127.0.0.1:{closed}")]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("error: ReconcileCounters: Unavailable"), "{stderr}");
}

#[test]
fn a_counter_service_alone_on_the_embedded_default_is_refused_before_anything_is_opened() {
    let dir = tempfile::tempdir().unwrap();
    for service in ["availability", "reservation"] {
        let output = Command::new(BINARY)
            .args(["serve", service])
            .current_dir(dir.path())
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env("MESH__RESERVATION__LISTEN_ADDR", "127.0.0.1:0")
            .env("MESH__AVAILABILITY__LISTEN_ADDR", "127.0.0.1:0")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{service}");
        assert_eq!(
            String::from_utf8_lossy(&output.stderr).trim(),
            "error: the embedded counter engine lives in one process: run availability and reservation together \
             (`inventory-mesh run`) or set REDIS_URL",
            "{service}"
        );
        // No SQLite file (or data/ folder) was left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "{service}");
    }
}
