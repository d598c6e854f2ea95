//! The conformance suite: every counter rule runs against the in-process engine and against real
//! Redis (the Lua scripts), with the same expected values. Redis comes from REDIS_URL (default
//! redis://127.0.0.1:6379) under a fresh key prefix; a missing Redis fails with how to start it.
// Helpers outside #[test] functions panic on failure too, as the tests do.
#![allow(clippy::unwrap_used)]

use std::{sync::Arc, time::Duration};

use mesh_counters::{
    Cell, CellCounters, CellUnits, ConfirmOutcome, CounterEngine, Entry, ExtendOutcome, ManualClock, MemoryEngine,
    PhysicalChange, RedisEngine, ReleasePart, Released, ReserveOutcome, ReservePolicy, Restored, Shortage, SkuRestore,
    key_slot,
};
use tokio::sync::Barrier;

struct Subject {
    name: &'static str,
    engine: CounterEngine,
    clock: Option<Arc<ManualClock>>,
}

impl Subject {
    async fn pass_ms(&self, ms: i64) {
        match &self.clock {
            Some(clock) => clock.advance_ms(ms),
            None => tokio::time::sleep(Duration::from_millis(ms as u64)).await,
        }
    }
}

async fn redis() -> RedisEngine {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("c{}:", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    match tokio::time::timeout(Duration::from_secs(5), RedisEngine::connect(&url, &prefix)).await {
        Ok(Ok(engine)) => engine,
        _ => panic!(
            "Redis is needed at {url}; start it with: redis-server --daemonize yes --port 6379 --save \"\" --appendonly no (or set REDIS_URL)"
        ),
    }
}

async fn cluster() -> RedisEngine {
    let url = test_support::cluster_url();
    let prefix = format!("c{}:", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    RedisEngine::connect_cluster(&url, &prefix).await.expect("the test Redis Cluster")
}

/// The in-process engine, standalone Redis and a 3-master Redis Cluster.
async fn subjects() -> Vec<Subject> {
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    vec![
        Subject {
            name: "embedded",
            engine: CounterEngine::Memory(Arc::new(MemoryEngine::new(clock.clone()))),
            clock: Some(clock),
        },
        Subject { name: "redis", engine: CounterEngine::Redis(redis().await), clock: None },
        Subject { name: "redis-cluster", engine: CounterEngine::Redis(cluster().await), clock: None },
    ]
}

fn cell(sku: &str) -> Cell {
    Cell::new(sku, "L1")
}

fn line(sku: &str, units: i64) -> CellUnits {
    CellUnits { cell: cell(sku), units }
}

/// Sets on_hand as the ledger would: version 1 for a cell's first position, then any higher one.
async fn stock(engine: &CounterEngine, sku: &str, on_hand: i64) {
    let snapshot = engine.snapshot(&[sku.to_owned()]).await.unwrap();
    let known = snapshot[0].cells.iter().find(|(loc, _)| loc == "L1").map(|(_, c)| c.on_hand);
    let version = match known {
        None => 1,
        Some(current) => current + on_hand + 1_000,
    };
    engine
        .apply_physical(&PhysicalChange { cell: cell(sku), on_hand, version, fulfil: None, event_id: String::new() })
        .await
        .unwrap();
}

async fn counters(engine: &CounterEngine, sku: &str) -> CellCounters {
    engine.read_cells(&[cell(sku)]).await.unwrap()[0]
}

fn released_nothing() -> Released {
    Released { per_cell: vec![0], ..Released::default() }
}

fn counts(held: i64, committed: i64, on_hand: i64) -> CellCounters {
    CellCounters { on_hand, held, committed, safety: 0 }
}

#[tokio::test]
async fn a_multi_line_reserve_holds_every_line_or_none_b21() {
    for s in subjects().await {
        let e = &s.engine;
        stock(e, "A", 5).await;
        stock(e, "B", 5).await;
        let outcome = e.reserve("r1", &[line("A", 2), line("B", 2), line("C", 1)], 60_000).await.unwrap();
        assert_eq!(
            outcome,
            ReserveOutcome::Insufficient { shortages: vec![Shortage { cell: cell("C"), requested: 1, available: 0 }] },
            "{}",
            s.name
        );
        assert_eq!(counters(e, "A").await, counts(0, 0, 5), "{}", s.name);
        assert_eq!(counters(e, "B").await, counts(0, 0, 5), "{}", s.name);
        let snapshot = e.snapshot(&["A".into(), "B".into()]).await.unwrap();
        assert!(snapshot.iter().all(|s| s.holds.is_empty()), "{}", s.name);
    }
}

#[tokio::test]
async fn lines_naming_the_same_cell_are_summed_before_the_check_b04() {
    for s in subjects().await {
        let e = &s.engine;
        stock(e, "A", 5).await;
        let outcome = e.reserve("r1", &[line("A", 3), line("A", 3)], 60_000).await.unwrap();
        assert_eq!(
            outcome,
            ReserveOutcome::Insufficient { shortages: vec![Shortage { cell: cell("A"), requested: 6, available: 5 }] },
            "{}",
            s.name
        );
        assert_eq!(counters(e, "A").await, counts(0, 0, 5), "{}", s.name);
        assert!(
            matches!(
                e.reserve("r2", &[line("A", 2), line("A", 3)], 60_000).await.unwrap(),
                ReserveOutcome::Held { .. }
            ),
            "{}",
            s.name
        );
        let after = counters(e, "A").await;
        assert_eq!((after.held, after.atp()), (5, 0), "{}", s.name);
    }
}

#[tokio::test]
async fn an_expired_hold_is_never_counted_and_never_confirmable() {
    for s in subjects().await {
        let e = &s.engine;
        stock(e, "A", 1).await;
        assert!(matches!(e.reserve("h", &[line("A", 1)], 300).await.unwrap(), ReserveOutcome::Held { .. }));
        assert_eq!(counters(e, "A").await.held, 1, "{}", s.name);
        s.pass_ms(450).await;
        assert_eq!(counters(e, "A").await, counts(0, 0, 1), "{}: no sweeper ran, the read purges", s.name);
        assert!(
            matches!(e.confirm("h", &[cell("A")]).await.unwrap(), ConfirmOutcome::HoldMissing { .. }),
            "{}",
            s.name
        );
        assert!(
            matches!(e.reserve("other", &[line("A", 1)], 60_000).await.unwrap(), ReserveOutcome::Held { .. }),
            "{}",
            s.name
        );
        assert_eq!(counters(e, "A").await, counts(1, 0, 1), "{}", s.name);
    }
}

#[tokio::test]
async fn confirm_moves_a_live_hold_to_committed_once() {
    for s in subjects().await {
        let e = &s.engine;
        stock(e, "A", 4).await;
        e.reserve("h", &[line("A", 3)], 60_000).await.unwrap();
        assert!(matches!(e.confirm("h", &[cell("A")]).await.unwrap(), ConfirmOutcome::Confirmed { .. }), "{}", s.name);
        assert_eq!(counters(e, "A").await, counts(0, 3, 4), "{}", s.name);
        assert!(
            matches!(e.confirm("h", &[cell("A")]).await.unwrap(), ConfirmOutcome::AlreadyConfirmed { .. }),
            "{}",
            s.name
        );
        assert_eq!(counters(e, "A").await, counts(0, 3, 4), "{}", s.name);
        assert!(
            matches!(e.reserve("h", &[line("A", 3)], 60_000).await.unwrap(), ReserveOutcome::AlreadyExists { .. }),
            "{}",
            s.name
        );
    }
}

#[tokio::test]
async fn release_returns_units_exactly_once() {
    for s in subjects().await {
        let e = &s.engine;
        stock(e, "A", 5).await;
        e.reserve("h", &[line("A", 2)], 60_000).await.unwrap();
        assert_eq!(
            e.release("h", ReleasePart::Hold, &[cell("A")]).await.unwrap(),
            Released { hold_units: 2, committed_units: 0, per_cell: vec![2] },
            "{}",
            s.name
        );
        assert_eq!(e.release("h", ReleasePart::Hold, &[cell("A")]).await.unwrap(), released_nothing(), "{}", s.name);
        assert_eq!(counters(e, "A").await, counts(0, 0, 5), "{}", s.name);
    }
}

#[tokio::test]
async fn a_hold_release_never_takes_a_commitment_and_vice_versa() {
    for s in subjects().await {
        let e = &s.engine;
        stock(e, "A", 5).await;
        e.reserve("h", &[line("A", 2)], 60_000).await.unwrap();
        assert_eq!(
            e.release("h", ReleasePart::Commitment, &[cell("A")]).await.unwrap(),
            released_nothing(),
            "{}",
            s.name
        );
        e.confirm("h", &[cell("A")]).await.unwrap();
        // A release that saw the record still held, racing the confirm: the commitment stays.
        assert_eq!(e.release("h", ReleasePart::Hold, &[cell("A")]).await.unwrap(), released_nothing(), "{}", s.name);
        assert_eq!(counters(e, "A").await, counts(0, 2, 5), "{}", s.name);
        assert_eq!(
            e.release("h", ReleasePart::Commitment, &[cell("A")]).await.unwrap(),
            Released { hold_units: 0, committed_units: 2, per_cell: vec![2] },
            "{}",
            s.name
        );
        assert_eq!(counters(e, "A").await, counts(0, 0, 5), "{}", s.name);
    }
}

#[tokio::test]
async fn large_values_are_stored_as_exact_integers() {
    for s in subjects().await {
        let e = &s.engine;
        let big = 1_000_000_000_000_000; // 1e15, the largest on_hand the ledger allows
        e.apply_physical(&PhysicalChange {
            cell: cell("A"),
            on_hand: big,
            version: 1,
            fulfil: None,
            event_id: String::new(),
        })
        .await
        .unwrap();
        e.set_safety(&cell("A"), big - 1).await.unwrap();
        assert_eq!(
            counters(e, "A").await,
            CellCounters { on_hand: big, held: 0, committed: 0, safety: big - 1 },
            "{}",
            s.name
        );
        assert_eq!(counters(e, "A").await.atp(), 1, "{}", s.name);
    }
}

#[tokio::test]
async fn shipments_fulfil_commitments_and_cancel_releases_only_the_unshipped_units_b12() {
    for s in subjects().await {
        let e = &s.engine;
        e.apply_physical(&PhysicalChange {
            cell: cell("B"),
            on_hand: 100,
            version: 1,
            fulfil: None,
            event_id: String::new(),
        })
        .await
        .unwrap();
        e.reserve("o6", &[line("B", 10)], 60_000).await.unwrap();
        e.confirm("o6", &[cell("B")]).await.unwrap();
        let shipped = e
            .apply_physical(&PhysicalChange {
                cell: cell("B"),
                on_hand: 93,
                version: 2,
                fulfil: Some(("o6".into(), 7)),
                event_id: "ship-o6".into(),
            })
            .await
            .unwrap();
        assert_eq!((shipped.fulfilled_units, shipped.counters), (7, counts(0, 3, 93)), "{}", s.name);
        assert_eq!(shipped.counters.atp(), 90, "{}", s.name);
        assert_eq!(
            e.release("o6", ReleasePart::Commitment, &[cell("B")]).await.unwrap(),
            Released { hold_units: 0, committed_units: 3, per_cell: vec![3] },
            "{}",
            s.name
        );
        let after = counters(e, "B").await;
        assert_eq!((after, after.atp()), (counts(0, 0, 93), 93), "{}", s.name);
        // A shipment naming more than remains fulfils only what remains.
        e.reserve("o7", &[line("B", 2)], 60_000).await.unwrap();
        e.confirm("o7", &[cell("B")]).await.unwrap();
        let over = e
            .apply_physical(&PhysicalChange {
                cell: cell("B"),
                on_hand: 88,
                version: 3,
                fulfil: Some(("o7".into(), 5)),
                event_id: "ship-o7".into(),
            })
            .await
            .unwrap();
        assert_eq!((over.fulfilled_units, over.counters.committed), (2, 0), "{}", s.name);
    }
}

#[tokio::test]
async fn an_older_position_version_never_overwrites_a_newer_one() {
    for s in subjects().await {
        let e = &s.engine;
        e.apply_physical(&PhysicalChange {
            cell: cell("A"),
            on_hand: 3,
            version: 1,
            fulfil: None,
            event_id: String::new(),
        })
        .await
        .unwrap();
        e.apply_physical(&PhysicalChange {
            cell: cell("A"),
            on_hand: 10,
            version: 5,
            fulfil: None,
            event_id: String::new(),
        })
        .await
        .unwrap();
        let late = e
            .apply_physical(&PhysicalChange {
                cell: cell("A"),
                on_hand: 7,
                version: 4,
                fulfil: None,
                event_id: String::new(),
            })
            .await
            .unwrap();
        assert_eq!(late.counters.on_hand, 10, "{}", s.name);
        let newer = e
            .apply_physical(&PhysicalChange {
                cell: cell("A"),
                on_hand: 7,
                version: 6,
                fulfil: None,
                event_id: String::new(),
            })
            .await
            .unwrap();
        assert_eq!(newer.counters.on_hand, 7, "{}", s.name);
    }
}

#[tokio::test]
async fn safety_is_never_promised() {
    for s in subjects().await {
        let e = &s.engine;
        stock(e, "A", 5).await;
        assert_eq!(
            e.set_safety(&cell("A"), 2).await.unwrap(),
            CellCounters { on_hand: 5, held: 0, committed: 0, safety: 2 },
            "{}",
            s.name
        );
        assert_eq!(
            e.reserve("r", &[line("A", 4)], 60_000).await.unwrap(),
            ReserveOutcome::Insufficient { shortages: vec![Shortage { cell: cell("A"), requested: 4, available: 3 }] },
            "{}",
            s.name
        );
        assert!(
            matches!(e.reserve("r2", &[line("A", 3)], 60_000).await.unwrap(), ReserveOutcome::Held { .. }),
            "{}",
            s.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reserves_at_a_barrier_never_oversell_b01() {
    for s in subjects().await {
        for round in 0..25 {
            let sku = format!("HOT{round}");
            stock(&s.engine, &sku, 10).await;
            let barrier = Arc::new(Barrier::new(64));
            let tasks: Vec<_> = (0..64)
                .map(|i| {
                    let (engine, barrier, sku) = (s.engine.clone(), barrier.clone(), sku.clone());
                    tokio::spawn(async move {
                        barrier.wait().await;
                        engine
                            .reserve(&format!("r{i}"), &[CellUnits { cell: Cell::new(sku, "L1"), units: 1 }], 60_000)
                            .await
                            .unwrap()
                    })
                })
                .collect();
            let mut held = 0;
            for task in tasks {
                if matches!(task.await.unwrap(), ReserveOutcome::Held { .. }) {
                    held += 1;
                }
            }
            assert_eq!(held, 10, "{} round {round}", s.name);
            let snapshot = &s.engine.snapshot(std::slice::from_ref(&sku)).await.unwrap()[0];
            assert_eq!(snapshot.cells[0].1.held, 10, "{} round {round}", s.name);
            assert_eq!(snapshot.holds.iter().map(|h| h.units).sum::<i64>(), 10, "{} round {round}", s.name);
        }
    }
}

#[tokio::test]
async fn a_script_error_in_the_middle_leaves_no_trace_b21() {
    let engine = redis().await;
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut raw = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let e = CounterEngine::Redis(engine.clone());
    stock(&e, "A", 5).await;
    stock(&e, "B", 5).await;
    // C's counters key has the wrong type: the script fails while validating C.
    let _: () = redis::cmd("RPUSH").arg(engine.cells_key("C")).arg("junk").query_async(&mut raw).await.unwrap();
    let error = e.reserve("r", &[line("A", 2), line("B", 2), line("C", 1)], 60_000).await;
    assert!(error.is_err(), "the script must fail: {error:?}");
    assert_eq!(counters(&e, "A").await, counts(0, 0, 5));
    assert_eq!(counters(&e, "B").await, counts(0, 0, 5));
}

#[tokio::test]
async fn scripts_survive_script_flush_b19() {
    let engine = redis().await;
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut raw = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let e = CounterEngine::Redis(engine);
    stock(&e, "A", 3).await;
    e.reserve("before", &[line("A", 1)], 60_000).await.unwrap();
    let reloads = mesh_counters::metrics::script_reloads("reserve");
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut raw).await.unwrap();
    assert!(matches!(e.reserve("after", &[line("A", 1)], 60_000).await.unwrap(), ReserveOutcome::Held { .. }));
    assert_eq!(counters(&e, "A").await.held, 2);
    // The fallback is counted: exactly one reload for the one call that met NOSCRIPT.
    assert_eq!(mesh_counters::metrics::script_reloads("reserve"), reloads + 1);
}

#[tokio::test]
async fn a_cell_whose_counters_were_lost_refuses_physical_changes_until_rebuilt() {
    for s in subjects().await {
        let e = &s.engine;
        // The ledger is at version 3 for this cell, but the engine has never seen it (flushed).
        let lost = e
            .apply_physical(&PhysicalChange {
                cell: cell("A"),
                on_hand: 9,
                version: 3,
                fulfil: None,
                event_id: String::new(),
            })
            .await;
        assert!(matches!(lost, Err(mesh_counters::CounterError::Lost(_))), "{}: {lost:?}", s.name);
        assert_eq!(counters(e, "A").await, counts(0, 0, 0), "{}", s.name);
        // A rebuild restores the position (and the holds and commitments of the records).
        let restored = e
            .restore(&SkuRestore {
                sku: "A".into(),
                cells: vec![("L1".into(), 9, 3, 1)],
                holds: vec![Entry {
                    reservation_id: "h".into(),
                    location: "L1".into(),
                    units: 2,
                    deadline_ms: 4_000_000_000_000,
                }],
                commitments: vec![Entry {
                    reservation_id: "c".into(),
                    location: "L1".into(),
                    units: 3,
                    deadline_ms: 0,
                }],
            })
            .await
            .unwrap();
        assert_eq!(restored, Restored { cells_written: 1, holds_added: 1, commitments_added: 1 }, "{}", s.name);
        assert_eq!(counters(e, "A").await, CellCounters { on_hand: 9, held: 2, committed: 3, safety: 1 }, "{}", s.name);
        // Restoring again adds nothing (merge, idempotent), and later changes apply normally.
        let again = e
            .restore(&SkuRestore {
                sku: "A".into(),
                cells: vec![("L1".into(), 9, 3, 1)],
                holds: vec![Entry {
                    reservation_id: "h".into(),
                    location: "L1".into(),
                    units: 2,
                    deadline_ms: 4_000_000_000_000,
                }],
                commitments: vec![Entry {
                    reservation_id: "c".into(),
                    location: "L1".into(),
                    units: 3,
                    deadline_ms: 0,
                }],
            })
            .await
            .unwrap();
        assert_eq!(again, Restored::default(), "{}", s.name);
        e.apply_physical(&PhysicalChange {
            cell: cell("A"),
            on_hand: 8,
            version: 4,
            fulfil: None,
            event_id: String::new(),
        })
        .await
        .unwrap();
        assert_eq!(counters(e, "A").await.on_hand, 8, "{}", s.name);
        assert!(matches!(e.confirm("h", &[cell("A")]).await.unwrap(), ConfirmOutcome::Confirmed { .. }), "{}", s.name);
    }
}

#[tokio::test]
async fn the_partial_policy_holds_what_is_there_and_says_what_is_short() {
    for s in subjects().await {
        let e = &s.engine;
        stock(e, "A", 5).await;
        stock(e, "B", 1).await;
        // C has nothing at all.
        let outcome = e
            .reserve_with("p", &[line("A", 3), line("B", 4), line("C", 2)], 60_000, ReservePolicy::Partial)
            .await
            .unwrap();
        let ReserveOutcome::Held { held, .. } = outcome else { panic!("{}: {outcome:?}", s.name) };
        assert_eq!(held, vec![line("A", 3), line("B", 1), line("C", 0)], "{}", s.name);
        assert_eq!(counters(e, "A").await, counts(3, 0, 5), "{}", s.name);
        assert_eq!(counters(e, "B").await, counts(1, 0, 1), "{}", s.name);
        assert_eq!(counters(e, "C").await, counts(0, 0, 0), "{}", s.name);
        // Nothing available anywhere: nothing held, every line short.
        let none = e.reserve_with("q", &[line("B", 1), line("C", 1)], 60_000, ReservePolicy::Partial).await.unwrap();
        assert_eq!(
            none,
            ReserveOutcome::Insufficient {
                shortages: vec![
                    Shortage { cell: cell("B"), requested: 1, available: 0 },
                    Shortage { cell: cell("C"), requested: 1, available: 0 }
                ]
            },
            "{}",
            s.name
        );
    }
}

#[tokio::test]
async fn extend_moves_the_deadline_never_the_units_and_never_past_the_cap_b17() {
    for s in subjects().await {
        let e = &s.engine;
        stock(e, "A", 1).await;
        let ReserveOutcome::Held { expires_at_ms: first, .. } = e.reserve("h3", &[line("A", 1)], 1_000).await.unwrap()
        else {
            panic!("{}: not held", s.name)
        };
        s.pass_ms(300).await;
        let extended = e.extend("h3", &[cell("A")], 2_000, first + 60_000).await.unwrap();
        let ExtendOutcome::Extended { expires_at_ms, now_ms } = extended else { panic!("{}: {extended:?}", s.name) };
        assert_eq!(expires_at_ms, now_ms + 2_000, "{}", s.name);
        assert_eq!(counters(e, "A").await, counts(1, 0, 1), "{} extending never changes held", s.name);
        // Past the original deadline the hold is still live and confirmable.
        s.pass_ms(1_000).await;
        assert_eq!(counters(e, "A").await.held, 1, "{}", s.name);
        // The cap wins over the asked TTL; a shorter TTL never moves the deadline back.
        let capped = e.extend("h3", &[cell("A")], 600_000, expires_at_ms + 500).await.unwrap();
        assert!(
            matches!(capped, ExtendOutcome::Extended { expires_at_ms: d, .. } if d == expires_at_ms + 500),
            "{}: {capped:?}",
            s.name
        );
        let shorter = e.extend("h3", &[cell("A")], 1, expires_at_ms + 500).await.unwrap();
        assert!(
            matches!(shorter, ExtendOutcome::Extended { expires_at_ms: d, .. } if d == expires_at_ms + 500),
            "{}: {shorter:?}",
            s.name
        );
        assert!(matches!(e.confirm("h3", &[cell("A")]).await.unwrap(), ConfirmOutcome::Confirmed { .. }), "{}", s.name);
        // An expired hold cannot be extended.
        stock(e, "B", 1).await;
        e.reserve("gone", &[line("B", 1)], 200).await.unwrap();
        s.pass_ms(400).await;
        let missing = e.extend("gone", &[cell("B")], 10_000, i64::MAX / 2).await.unwrap();
        assert!(matches!(missing, ExtendOutcome::HoldMissing { .. }), "{}: {missing:?}", s.name);
        assert_eq!(counters(e, "B").await, counts(0, 0, 1), "{}", s.name);
    }
}

/// Two SKUs whose keys are in different cluster slots (and on different masters).
fn skus_in_other_slots() -> (String, String, String) {
    let names: Vec<String> = (0..200).map(|i| format!("X{i}")).collect();
    let a = names[0].clone();
    let b = names.iter().find(|n| key_slot(n) / 5461 != key_slot(&a) / 5461).unwrap().clone();
    let c = names
        .iter()
        .find(|n| key_slot(n) / 5461 != key_slot(&a) / 5461 && key_slot(n) / 5461 != key_slot(&b) / 5461)
        .unwrap()
        .clone();
    (a, b, c)
}

#[tokio::test]
async fn a_multi_slot_reserve_gives_back_earlier_slots_when_a_later_one_is_short_b20() {
    let (a, b, c) = skus_in_other_slots();
    for s in subjects().await {
        let e = &s.engine;
        for sku in [&a, &b] {
            stock(e, sku, 1).await;
        }
        stock(e, &c, 1).await;
        let lines = [
            CellUnits { cell: Cell::new(&a, "L1"), units: 1 },
            CellUnits { cell: Cell::new(&b, "L1"), units: 1 },
            CellUnits { cell: Cell::new(&c, "L2"), units: 1 },
        ];
        // C@L2 has nothing (the stock is at L1): the whole reserve fails, nothing stays held.
        let outcome = e.reserve("o8", &lines, 60_000).await.unwrap();
        assert_eq!(
            outcome,
            ReserveOutcome::Insufficient {
                shortages: vec![Shortage { cell: Cell::new(&c, "L2"), requested: 1, available: 0 }]
            },
            "{}",
            s.name
        );
        for sku in [&a, &b, &c] {
            assert_eq!(e.read_cells(&[Cell::new(sku, "L1")]).await.unwrap()[0].held, 0, "{} {sku}", s.name);
        }
        // With C@L1 instead it holds all three, each in its own slot's script, and confirms them all.
        let lines = [
            CellUnits { cell: Cell::new(&a, "L1"), units: 1 },
            CellUnits { cell: Cell::new(&b, "L1"), units: 1 },
            CellUnits { cell: Cell::new(&c, "L1"), units: 1 },
        ];
        assert!(matches!(e.reserve("o8b", &lines, 60_000).await.unwrap(), ReserveOutcome::Held { .. }), "{}", s.name);
        let cells: Vec<Cell> = lines.iter().map(|l| l.cell.clone()).collect();
        assert!(matches!(e.confirm("o8b", &cells).await.unwrap(), ConfirmOutcome::Confirmed { .. }), "{}", s.name);
        let state = e.hold_state("o8b", &cells).await.unwrap();
        assert_eq!((state.live_cells(), state.committed_cells()), (0, 3), "{}", s.name);
    }
}

#[tokio::test]
async fn a_multi_slot_confirm_with_one_slot_lost_puts_the_others_back_as_they_were() {
    let (a, b, _) = skus_in_other_slots();
    for s in subjects().await {
        let e = &s.engine;
        stock(e, &a, 1).await;
        stock(e, &b, 1).await;
        let cells = [Cell::new(&a, "L1"), Cell::new(&b, "L1")];
        let lines: Vec<CellUnits> = cells.iter().map(|c| CellUnits { cell: c.clone(), units: 1 }).collect();
        e.reserve("lost", &lines, 60_000).await.unwrap();
        // B's hold disappears (a failover that lost the write, simulated by releasing it).
        e.release("lost", ReleasePart::Hold, &cells[1..]).await.unwrap();
        assert!(matches!(e.confirm("lost", &cells).await.unwrap(), ConfirmOutcome::HoldMissing { .. }), "{}", s.name);
        let state = e.hold_state("lost", &cells).await.unwrap();
        assert_eq!(state.committed_cells(), 0, "{}: nothing stays committed", s.name);
        // A's hold is back as it was (a concurrent release of B must not cost the buyer A).
        assert_eq!((state.live_cells(), state.cells[0].held_units), (1, 1), "{}", s.name);
        e.release("lost", ReleasePart::Hold, &cells[..1]).await.unwrap();
        assert_eq!(e.read_cells(&cells).await.unwrap().iter().map(|c| c.committed).sum::<i64>(), 0, "{}", s.name);
    }
}

#[test]
fn key_slots_match_redis() {
    // Values from CLUSTER KEYSLOT on Redis 7.
    assert_eq!(key_slot("A"), 6373);
    assert_eq!(key_slot("123456789"), 12739);
    assert_eq!(key_slot("foo"), 12182);
}

#[tokio::test]
async fn a_redelivered_shipment_fulfils_its_commitment_once() {
    for s in subjects().await {
        let e = &s.engine;
        e.apply_physical(&PhysicalChange {
            cell: cell("A"),
            on_hand: 10,
            version: 1,
            fulfil: None,
            event_id: "r".into(),
        })
        .await
        .unwrap();
        e.reserve("o", &[line("A", 10)], 60_000).await.unwrap();
        e.confirm("o", &[cell("A")]).await.unwrap();
        let ship = PhysicalChange {
            cell: cell("A"),
            on_hand: 6,
            version: 2,
            fulfil: Some(("o".into(), 4)),
            event_id: "ship-1".into(),
        };
        for _ in 0..3 {
            let outcome = e.apply_physical(&ship).await.unwrap();
            assert_eq!((outcome.fulfilled_units, outcome.counters), (4, counts(0, 6, 6)), "{}", s.name);
        }
        // Another shipment event fulfils again.
        let next = PhysicalChange {
            cell: cell("A"),
            on_hand: 4,
            version: 3,
            fulfil: Some(("o".into(), 2)),
            event_id: "ship-2".into(),
        };
        assert_eq!(e.apply_physical(&next).await.unwrap().counters, counts(0, 4, 4), "{}", s.name);
        // Fulfilment records are not cells.
        assert_eq!(e.snapshot(&["A".to_owned()]).await.unwrap()[0].cells.len(), 1, "{}", s.name);
    }
}

/// Moves one slot of the test cluster to another master (keys included), as a reshard does.
async fn move_slot(slot: u16, to_port: u16) -> u16 {
    let connect = |port: u16| async move {
        redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    };
    let ports = [7101u16, 7102, 7103];
    let mut ids = std::collections::HashMap::new();
    for port in ports {
        let id: String = redis::cmd("CLUSTER").arg("MYID").query_async(&mut connect(port).await).await.unwrap();
        ids.insert(port, id);
    }
    let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(&mut connect(7101).await).await.unwrap();
    let mut from_port = 0;
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let port: u16 = fields[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
        for range in &fields[8..] {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            if let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>())
                && (a..=b).contains(&slot)
            {
                from_port = port;
            }
        }
    }
    assert_ne!(from_port, 0, "slot {slot} has no owner");
    if from_port == to_port {
        return from_port;
    }
    let (mut from, mut to) = (connect(from_port).await, connect(to_port).await);
    let _: () = redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg("IMPORTING")
        .arg(&ids[&from_port])
        .query_async(&mut to)
        .await
        .unwrap();
    let _: () = redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg("MIGRATING")
        .arg(&ids[&to_port])
        .query_async(&mut from)
        .await
        .unwrap();
    loop {
        let keys: Vec<String> =
            redis::cmd("CLUSTER").arg("GETKEYSINSLOT").arg(slot).arg(100).query_async(&mut from).await.unwrap();
        if keys.is_empty() {
            break;
        }
        let _: () = redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(to_port)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(&keys)
            .query_async(&mut from)
            .await
            .unwrap();
    }
    for port in ports {
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("NODE")
            .arg(&ids[&to_port])
            .query_async(&mut connect(port).await)
            .await
            .unwrap();
    }
    from_port
}

#[tokio::test]
async fn a_reserve_after_its_slot_moved_to_a_node_without_the_scripts_holds_once_b19() {
    let e = CounterEngine::Redis(cluster().await);
    let sku = format!("B19{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let slot = key_slot(&sku);
    stock(&e, &sku, 5).await;
    e.reserve("before", &[CellUnits { cell: Cell::new(&sku, "L1"), units: 1 }], 60_000).await.unwrap();
    // Move the slot to another master and empty that master's script cache.
    let owner = move_slot(slot, 7101).await;
    let target = if owner == 7101 { 7102 } else { 7101 };
    if owner == 7101 {
        move_slot(slot, target).await;
    }
    let mut node = redis::Client::open(format!("redis://127.0.0.1:{target}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut node).await.unwrap();
    let reloads = mesh_counters::metrics::script_reloads("reserve");
    // The first call meets MOVED, then NOSCRIPT, and still holds exactly one more unit.
    let after = e.reserve("after", &[CellUnits { cell: Cell::new(&sku, "L1"), units: 1 }], 60_000).await.unwrap();
    assert!(matches!(after, ReserveOutcome::Held { .. }), "{after:?}");
    assert_eq!(mesh_counters::metrics::script_reloads("reserve"), reloads + 1);
    assert_eq!(
        e.read_cells(&[Cell::new(&sku, "L1")]).await.unwrap()[0],
        CellCounters { on_hand: 5, held: 2, committed: 0, safety: 0 }
    );
    // Put the slot back where it was.
    move_slot(slot, owner).await;
}
