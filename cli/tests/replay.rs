//! The replay of real Olist orders through the whole mesh, on both back ends: the first 2,000
//! orders by purchase time must end with nothing oversold and every invariant reconciled
//! (counters = durable records = the replay's own book). A stock factor below 1 must produce
//! backorders and alerts and still oversell nothing. Also: an embedded mesh restarted on the same
//! SQLite file rebuilds its in-process counters from the durable records.
// Helpers outside #[test] functions panic on failure too, as the tests do.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use inventory_mesh::{
    mesh::{self, ServiceKind},
    replay::{self, ReplayOptions, Targets},
};
use mesh_counters::CounterEngine;
use test_support::{Backend, TestMesh, parts};

fn dataset() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/olist-ecommerce-subset");
    assert!(
        path.join("orders.csv").exists(),
        "the Olist data is expected at {} (../shared beside the repository)",
        path.display()
    );
    path
}

fn targets(mesh: &TestMesh) -> Targets {
    let channel = |kind: ServiceKind| {
        tonic::transport::Endpoint::from_shared(format!("http://{}", mesh.addrs[&kind])).unwrap().connect_lazy()
    };
    Targets {
        availability: channel(ServiceKind::Availability),
        reservation: channel(ServiceKind::Reservation),
        sourcing: channel(ServiceKind::Sourcing),
        replenishment: channel(ServiceKind::Replenishment),
    }
}

async fn replay_first_orders(backend: Backend, stock_factor: f64) -> replay::ReplayReport {
    let mesh = TestMesh::start(backend).await;
    let options = ReplayOptions {
        dataset: dataset(),
        stock_factor,
        limit: Some(2_000),
        run_id: "t".into(),
        show_progress: false,
    };
    let report = replay::replay(&options, &targets(&mesh)).await.unwrap();
    mesh.stop().await;
    report
}

fn assert_sound(report: &replay::ReplayReport) {
    assert_eq!(report.units_oversold, 0, "{report:#?}");
    assert!(report.invariants_ok, "{:#?}", report.invariant_differences);
    assert_eq!(report.orders_total, 2_000);
    assert_eq!(report.orders_without_items, 24);
    assert_eq!(
        report.orders_fulfilled + report.orders_backordered + report.orders_rejected + report.orders_without_items,
        report.orders_total,
        "every order is accounted for once"
    );
    assert_eq!(report.locations + report.locations_skipped_no_coordinates, 3_095);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replaying_2000_real_orders_embedded_oversells_nothing() {
    let report = replay_first_orders(Backend::Embedded, 1.0).await;
    assert_sound(&report);
    assert_eq!((report.engine.as_str(), report.store.as_str()), ("embedded", "sqlite"));
    // With each seller stocked with what it really sold, every carried order is served in full.
    assert_eq!(report.orders_backordered, 0);
    assert_eq!(report.orders_fulfilled + report.orders_rejected, 1_976);
    assert_eq!(report.confirms_failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replaying_2000_real_orders_on_redis_and_postgres_oversells_nothing() {
    let report = replay_first_orders(Backend::External, 1.0).await;
    assert_sound(&report);
    assert_eq!((report.engine.as_str(), report.store.as_str()), ("redis", "postgres"));
    assert_eq!(report.orders_backordered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stock_factor_below_one_backorders_and_alerts_but_never_oversells() {
    let report = replay_first_orders(Backend::Embedded, 0.3).await;
    assert_sound(&report);
    assert!(report.orders_backordered > 0, "{report:#?}");
    assert!(report.orders_rejected > 4, "cells stocked with 0 units are not carried: {report:#?}");
    assert!(report.alerts_raised > 0, "{report:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_embedded_mesh_restarted_on_its_sqlite_file_rebuilds_its_counters() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = service_kit::config::Settings::defaults();
    settings.database.url = format!("sqlite://{}/mesh.sqlite?mode=rwc", dir.path().display());
    settings.shutdown.drain_delay = std::time::Duration::ZERO;
    let start = |settings: service_kit::config::Settings| async move {
        let db = service_kit::db::connect(&settings.database).await.unwrap();
        mesh::migrate(&db).await.unwrap();
        let mut listeners = Vec::new();
        for kind in ServiceKind::ALL {
            listeners.push((kind, tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()));
        }
        mesh::start(settings, listeners, db, None, None).await.unwrap()
    };
    let running = start(settings.clone()).await;
    let engine = running.engine.clone().unwrap();
    let cell = mesh_counters::Cell::new("A", "L1");
    let client = |kind: ServiceKind, running: &mesh::RunningMesh| {
        tonic::transport::Endpoint::from_shared(format!("http://{}", running.addrs[&kind])).unwrap().connect_lazy()
    };
    let mut availability = mesh_proto::availability::v1::availability_service_client::AvailabilityServiceClient::new(
        client(ServiceKind::Availability, &running),
    );
    let mut reservation = mesh_proto::reservation::v1::reservation_service_client::ReservationServiceClient::new(
        client(ServiceKind::Reservation, &running),
    );
    use mesh_proto::{availability::v1 as av, reservation::v1 as rv};
    availability
        .ingest_events(av::IngestEventsRequest {
            events: vec![test_support::event("r1", av::EventType::Receipt, "A", "L1", 10, 1_000)],
        })
        .await
        .unwrap();
    let line = |units| {
        vec![rv::ReservationLine {
            sku: "A".into(),
            location_id: "L1".into(),
            quantity_units: units,
            ..Default::default()
        }]
    };
    for (id, units) in [("held", 2), ("confirmed", 3), ("shipped", 4)] {
        reservation
            .create_reservation(rv::CreateReservationRequest {
                reservation_id: id.into(),
                lines: line(units),
                ttl_ms: 600_000,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    reservation
        .confirm_reservation(rv::ConfirmReservationRequest { reservation_id: "confirmed".into(), occurred_at: None })
        .await
        .unwrap();
    reservation
        .confirm_reservation(rv::ConfirmReservationRequest { reservation_id: "shipped".into(), occurred_at: None })
        .await
        .unwrap();
    let mut ship = test_support::event("s1", av::EventType::Shipment, "A", "L1", 1, 2_000);
    ship.reservation_id = "shipped".into();
    availability.ingest_events(av::IngestEventsRequest { events: vec![ship] }).await.unwrap();
    let before = engine.read_cells(std::slice::from_ref(&cell)).await.unwrap()[0];
    assert_eq!((before.on_hand, before.held, before.committed), (9, 2, 6));
    running.stop().await;

    let restarted = start(settings).await;
    let CounterEngine::Memory(_) = restarted.engine.clone().unwrap() else { panic!("embedded engine expected") };
    let after = restarted.engine.clone().unwrap().read_cells(std::slice::from_ref(&cell)).await.unwrap()[0];
    assert_eq!(after, before, "counters rebuilt from the durable records");
    let mut availability = mesh_proto::availability::v1::availability_service_client::AvailabilityServiceClient::new(
        client(ServiceKind::Availability, &restarted),
    );
    let cells = availability
        .get_cell_atp(av::GetCellAtpRequest { cells: vec![test_support::cell("A", "L1")] })
        .await
        .unwrap()
        .into_inner()
        .cells;
    assert_eq!(parts(&cells[0]), (9, 2, 6, 1));
    let report = inventory_mesh::reconcile::reconcile(
        client(ServiceKind::Availability, &restarted),
        client(ServiceKind::Reservation, &restarted),
    )
    .await
    .unwrap();
    assert!(report.is_clean(), "{:#?}", report.differences);
    restarted.stop().await;
}
