//! The sweeper driven directly (no gRPC), on SQLite and the in-process engine with a manual clock:
//! a clock jump on the counter store is reported (B18), a sweep that expires most holds at once
//! raises a mass-expiry alert (each counted in the service's metrics), and thousands of holds expiring together are recorded in one sweep.
// Helpers outside #[test] functions panic on failure too, as the tests do.
#![allow(clippy::unwrap_used)]

use std::{sync::Arc, time::Duration};

use mesh_counters::{Cell, CellUnits, CounterEngine, ManualClock, MemoryEngine, PhysicalChange, ReservePolicy};
use reservation::{
    domain::{NewReservation, Status},
    metrics,
    service::Reservations,
    store::ReservationStore,
};
use sea_orm_migration::MigratorTrait;

async fn reservations(clock: Arc<ManualClock>) -> (Reservations, CounterEngine, ReservationStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let settings = service_kit::config::DatabaseSettings {
        url: format!("sqlite://{}/r.sqlite?mode=rwc", dir.path().display()),
        max_connections: 1,
        acquire_timeout: Duration::from_secs(5),
    };
    let db = service_kit::db::connect(&settings).await.unwrap();
    reservation::migration::Migrator::up(&db, None).await.unwrap();
    let engine = CounterEngine::Memory(Arc::new(MemoryEngine::new(clock)));
    let store = ReservationStore::new(db);
    (Reservations::new(store.clone(), engine.clone(), None), engine, store, dir)
}

async fn stock(engine: &CounterEngine, sku: &str, units: i64) {
    engine
        .apply_physical(&PhysicalChange {
            cell: Cell::new(sku, "L1"),
            on_hand: units,
            version: 1,
            fulfil: None,
            event_id: String::new(),
        })
        .await
        .unwrap();
}

fn hold(id: &str, sku: &str, ttl_ms: u64) -> NewReservation {
    NewReservation {
        reservation_id: id.into(),
        order_id: String::new(),
        channel_id: String::new(),
        lines: vec![CellUnits { cell: Cell::new(sku, "L1"), units: 1 }],
        ttl_ms,
        policy: ReservePolicy::AllOrNothing,
        kits: String::new(),
    }
}

#[tokio::test]
async fn a_forward_clock_jump_on_the_counter_store_is_reported_and_holds_expire_by_its_clock_b18() {
    let clock = Arc::new(ManualClock::new(service_kit::time::now_ms()));
    let (reservations, engine, store, _dir) = reservations(clock.clone()).await;
    stock(&engine, "A", 100).await;
    for i in 0..100 {
        reservations.create(&hold(&format!("h{i}"), "A", 600_000)).await.unwrap();
    }
    assert_eq!(engine.read_cells(&[Cell::new("A", "L1")]).await.unwrap()[0].held, 100);
    let calm = reservations.sweep().await.unwrap();
    assert!(calm.clock_skew_ms.abs() < 1_000, "{calm:?}");
    // The counter store's clock jumps forward one hour.
    clock.advance_ms(3_600_000);
    let sweep = reservations.sweep().await.unwrap();
    assert!((3_599_000..3_601_000).contains(&sweep.clock_skew_ms), "{sweep:?}");
    assert_eq!(metrics::CLOCK_SKEW_MS.get(), sweep.clock_skew_ms);
    assert_eq!(metrics::MASS_EXPIRY_ALERTS.get(), 1);
    // Its clock decides: the holds are gone, recorded EXPIRED in that same sweep although this
    // service's clock is an hour short of their deadlines, and a confirm is refused as expired.
    assert_eq!(sweep.expired, 100, "{sweep:?}");
    assert_eq!(engine.read_cells(&[Cell::new("A", "L1")]).await.unwrap()[0].held, 0);
    assert_eq!(store.get("h0").await.unwrap().map(|r| r.status), Some(Status::Expired));
    let refused = reservations.confirm("h0", None).await.unwrap_err();
    assert_eq!(refused.to_string(), "HOLD_EXPIRED: hold h0 expired");
}

/// Moves both clocks past 100 ms holds (the service's by waiting, the counter store's by the
/// manual clock) and sweeps.
async fn sweep_past_short_deadlines(reservations: &Reservations, clock: &ManualClock) -> reservation::service::Sweep {
    tokio::time::sleep(Duration::from_millis(200)).await;
    clock.advance_ms(200);
    reservations.sweep().await.unwrap()
}

#[tokio::test]
async fn a_sweep_that_expires_most_holds_at_once_raises_a_mass_expiry_alert() {
    let clock = Arc::new(ManualClock::new(service_kit::time::now_ms()));
    let (reservations, engine, _, _dir) = reservations(clock.clone()).await;
    stock(&engine, "A", 200).await;
    for i in 0..100 {
        reservations.create(&hold(&format!("short{i}"), "A", 100)).await.unwrap();
    }
    for i in 0..10 {
        reservations.create(&hold(&format!("long{i}"), "A", 600_000)).await.unwrap();
    }
    let sweep = sweep_past_short_deadlines(&reservations, &clock).await;
    assert_eq!((sweep.expired, sweep.mass_expiry), (100, true), "{sweep:?}");
    let counted = || (metrics::HOLDS_EXPIRED.get(), metrics::MASS_EXPIRY_ALERTS.get());
    assert_eq!(counted(), (100, 1));
    // Ten holds of one TTL ending together while many more are held on another SKU: normal.
    stock(&engine, "B", 200).await;
    for i in 0..100 {
        reservations.create(&hold(&format!("other{i}"), "B", 600_000)).await.unwrap();
    }
    for i in 0..10 {
        reservations.create(&hold(&format!("batch{i}"), "A", 100)).await.unwrap();
    }
    let sweep = sweep_past_short_deadlines(&reservations, &clock).await;
    assert_eq!((sweep.expired, sweep.mass_expiry), (10, false), "{sweep:?}");
    assert_eq!(counted(), (110, 1));
    // A normal trickle raises nothing.
    reservations.create(&hold("one", "A", 100)).await.unwrap();
    let sweep = sweep_past_short_deadlines(&reservations, &clock).await;
    assert_eq!((sweep.expired, sweep.mass_expiry), (1, false), "{sweep:?}");
    assert_eq!(counted(), (111, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_holds_expiring_together_are_recorded_in_one_sweep_b16() {
    let clock = Arc::new(ManualClock::new(service_kit::time::now_ms()));
    let (reservations, engine, _, _dir) = reservations(clock.clone()).await;
    for sku in 0..10 {
        stock(&engine, &format!("S{sku}"), 1_000).await;
    }
    for i in 0..10_000 {
        reservations.create(&hold(&format!("h{i}"), &format!("S{}", i % 10), 150)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    clock.advance_ms(60_000);
    let sweep = reservations.sweep().await.unwrap();
    assert_eq!(sweep.expired, 10_000, "{sweep:?}");
    for sku in 0..10 {
        assert_eq!(engine.read_cells(&[Cell::new(format!("S{sku}"), "L1")]).await.unwrap()[0].held, 0);
    }
    let sample = reservations.confirm("h9999", None).await.unwrap_err();
    assert!(sample.to_string().starts_with("HOLD_EXPIRED"), "{sample}");
}
