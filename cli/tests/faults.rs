//! Faults the mesh must survive, each injected for real: Redis losing all its data in the middle
//! of a replay (FLUSHALL) and at startup (empty or foreign), `kill -9` of the process during a
//! burst of reserves and confirms, Redis or PostgreSQL becoming unreachable and coming back, and
//! failovers to replicas (lagging, without the scripts, or read from directly).
//! Every test breaks a private redis-server (or a proxy in front of a store), never the shared one.
// Helpers outside #[test] functions panic on failure too, as the tests do.
#![allow(clippy::unwrap_used)]

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use inventory_mesh::{
    mesh::ServiceKind,
    rebuild,
    replay::{self, ReplayOptions, Targets},
};
use mesh_proto::{availability::v1 as av, reservation::v1 as rv};
use test_support::{Backend, FaultProxy, MeshProcess, Options, RedisProcess, TestMesh, parts};
use tonic::Code;

fn dataset() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/olist-ecommerce-subset")
}

fn channel(mesh: &TestMesh, kind: ServiceKind) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", mesh.addrs[&kind])).unwrap().connect_lazy()
}

fn fast_checks(s: &mut service_kit::config::Settings) {
    s.redis.origin_check_interval = Duration::from_millis(200);
    s.reservation.stale_claim_after = Duration::from_millis(1_500);
    s.database.acquire_timeout = Duration::from_secs(1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flushall_in_the_middle_of_a_replay_is_rebuilt_and_nothing_is_oversold() {
    let redis = RedisProcess::start(&[]).await;
    let options =
        Options { redis_url: Some(redis.url()), configure: Some(Box::new(fast_checks)), ..Options::default() };
    let mesh = TestMesh::start_with(Backend::External, options).await;
    let targets = Targets {
        availability: channel(&mesh, ServiceKind::Availability),
        reservation: channel(&mesh, ServiceKind::Reservation),
        sourcing: channel(&mesh, ServiceKind::Sourcing),
        replenishment: channel(&mesh, ServiceKind::Replenishment),
    };
    let done = Arc::new(AtomicBool::new(false));
    let flusher = {
        let (done, url) = (done.clone(), redis.url());
        tokio::spawn(async move {
            // Wait until orders are flowing (holds and commitments exist), then lose everything.
            let client = redis::Client::open(url).unwrap();
            let mut connection = client.get_multiplexed_async_connection().await.unwrap();
            let started = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let keys: i64 = redis::cmd("DBSIZE").query_async(&mut connection).await.unwrap();
                if done.load(Ordering::SeqCst) {
                    return None;
                }
                if keys > 200 && started.elapsed() > Duration::from_secs(4) {
                    let _: () = redis::cmd("FLUSHALL").query_async(&mut connection).await.unwrap();
                    return Some(keys);
                }
            }
        })
    };
    let options = ReplayOptions {
        dataset: dataset(),
        stock_factor: 1.0,
        limit: Some(800),
        run_id: "f".into(),
        show_progress: false,
    };
    let report = replay::replay(&options, &targets).await.unwrap();
    done.store(true, Ordering::SeqCst);
    let flushed_keys = flusher.await.unwrap();
    assert!(flushed_keys.is_some(), "the replay ended before the FLUSHALL: make it longer");
    assert_eq!(report.units_oversold, 0, "{report:#?}");
    assert!(report.invariants_ok, "{:#?}", report.invariant_differences);
    mesh.assert_reconciled().await;
    mesh.stop().await;
}

/// Builds a small state: stock of A and B, a live hold, a confirmed order partly shipped.
async fn seed(mesh: &TestMesh) {
    mesh.receive("A", "L1", 10).await;
    mesh.receive("B", "L1", 4).await;
    mesh.reserve("hold", &[("A", "L1", 2)], 600_000).await.unwrap();
    mesh.reserve("order", &[("A", "L1", 3), ("B", "L1", 1)], 600_000).await.unwrap();
    mesh.confirm("order").await.unwrap();
    let mut shipment =
        test_support::event("ship-1", av::EventType::Shipment, "A", "L1", 1, service_kit::time::now_ms());
    shipment.reservation_id = "order".into();
    mesh.event(shipment).await;
}

async fn view(mesh: &TestMesh) -> Vec<(i64, i64, i64, i64)> {
    vec![parts(&mesh.cell("A", "L1").await), parts(&mesh.cell("B", "L1").await)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_empty_flushed_or_foreign_redis_is_rebuilt_from_the_durable_store() {
    let redis = RedisProcess::start(&[]).await;
    let options = Options { redis_url: Some(redis.url()), ..Options::default() };
    let mesh = TestMesh::start_with(Backend::External, options).await;
    seed(&mesh).await;
    let expected = view(&mesh).await;
    assert_eq!(expected, vec![(9, 2, 2, 5), (4, 0, 1, 3)]);
    let db = service_kit::db::connect(&mesh.settings.database).await.unwrap();
    // Nothing to do while Redis holds what the store says.
    assert_eq!(rebuild::ensure(&mesh.engine, &db, false).await.unwrap(), None);
    // FLUSHALL: every position, hold and commitment comes back.
    let _: () = redis.command(&redis::cmd("FLUSHALL")).await;
    assert_eq!(view(&mesh).await, vec![(0, 0, 0, 0), (0, 0, 0, 0)]);
    let report = rebuild::ensure(&mesh.engine, &db, false).await.unwrap().unwrap();
    assert_eq!(
        (report.reason.as_str(), report.skus, report.cells_written, report.holds_added, report.commitments_added),
        ("flushed", 2, 2, 1, 2)
    );
    assert_eq!(view(&mesh).await, expected);
    mesh.assert_reconciled().await;
    // A foreign instance's data: its SKUs are cleared, ours rebuilt.
    let _: () =
        redis.command(redis::cmd("SET").arg(format!("{}im:origin", mesh.settings.redis.key_prefix)).arg("other")).await;
    let _: () = redis
        .command(redis::cmd("SADD").arg(format!("{}im:skus", mesh.settings.redis.key_prefix)).arg("FOREIGN"))
        .await;
    let report = rebuild::ensure(&mesh.engine, &db, false).await.unwrap().unwrap();
    assert_eq!((report.reason.as_str(), report.foreign_skus_cleared), ("foreign", 3));
    assert_eq!(view(&mesh).await, expected);
    // The command users run does the same against a running mesh, whatever it finds.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_inventory-mesh"))
        .arg("rebuild")
        .env("DATABASE_URL", &mesh.settings.database.url)
        .env("REDIS_URL", redis.url())
        .env("REDIS_KEY_PREFIX", &mesh.settings.redis.key_prefix)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let line: serde_json::Value = serde_json::from_slice(output.stdout.trim_ascii()).unwrap();
    assert_eq!(
        (line["reason"].as_str(), line["skus"].as_u64(), line["holds_added"].as_u64()),
        (Some("forced"), Some(2), Some(0))
    );
    assert_eq!(view(&mesh).await, expected);
    mesh.assert_reconciled().await;
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_unreachable_fails_fast_changes_nothing_and_recovers_by_itself() {
    let redis = RedisProcess::start(&[]).await;
    let proxy = FaultProxy::start(redis.addr()).await;
    let options = Options {
        redis_url: Some(format!("redis://{}", proxy.addr)),
        configure: Some(Box::new(fast_checks)),
        ..Options::default()
    };
    let mesh = TestMesh::start_with(Backend::External, options).await;
    mesh.receive("A", "L1", 5).await;
    mesh.reserve("before", &[("A", "L1", 1)], 600_000).await.unwrap();
    proxy.cut().await;
    let started = Instant::now();
    let mut request = tonic::Request::new(rv::CreateReservationRequest {
        reservation_id: "during".into(),
        lines: vec![rv::ReservationLine {
            sku: "A".into(),
            location_id: "L1".into(),
            quantity_units: 2,
            ..Default::default()
        }],
        ttl_ms: 600_000,
        ..Default::default()
    });
    request.set_timeout(Duration::from_secs(3));
    let error = mesh.reservation.clone().create_reservation(request).await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    let confirm = mesh.confirm("before").await.unwrap_err();
    assert_eq!(confirm.code(), Code::Unavailable, "{confirm:?}");
    // Back: the same calls work without a restart, the failed reserve left nothing behind and its
    // retry (same id) holds exactly once.
    proxy.restore();
    let mut held = None;
    for _ in 0..50 {
        match mesh.reserve("during", &[("A", "L1", 2)], 600_000).await {
            Ok(r) => {
                held = Some(r);
                break;
            }
            Err(e) if matches!(e.code(), Code::Unavailable | Code::Aborted) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(held.expect("recovered").status, rv::ReservationStatus::Held as i32);
    mesh.confirm("before").await.unwrap();
    assert_eq!(parts(&mesh.cell("A", "L1").await), (5, 2, 1, 2));
    mesh.assert_reconciled().await;
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_unreachable_fails_fast_changes_nothing_and_recovers_by_itself() {
    let database = test_support::fresh_postgres_database().await;
    let proxy = FaultProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let via_proxy = database.replace("127.0.0.1:5432", &proxy.addr.to_string());
    assert_ne!(via_proxy, database, "DATABASE_URL must point at 127.0.0.1:5432 for this test");
    let options = Options {
        configure: Some(Box::new(move |s: &mut service_kit::config::Settings| {
            fast_checks(s);
            s.database.url = via_proxy;
        })),
        ..Options::default()
    };
    let mesh = TestMesh::start_with(Backend::External, options).await;
    mesh.receive("A", "L1", 5).await;
    proxy.cut().await;
    let started = Instant::now();
    let mut request = tonic::Request::new(rv::CreateReservationRequest {
        reservation_id: "during".into(),
        lines: vec![rv::ReservationLine {
            sku: "A".into(),
            location_id: "L1".into(),
            quantity_units: 2,
            ..Default::default()
        }],
        ttl_ms: 600_000,
        ..Default::default()
    });
    request.set_timeout(Duration::from_secs(3));
    let error = mesh.reservation.clone().create_reservation(request).await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    // Nothing was held: the claim could not be written, so the counter step never ran.
    assert_eq!(mesh.engine.read_cells(&[mesh_counters::Cell::new("A", "L1")]).await.unwrap()[0].held, 0);
    proxy.restore();
    let mut held = None;
    for _ in 0..50 {
        match mesh.reserve("during", &[("A", "L1", 2)], 600_000).await {
            Ok(r) => {
                held = Some(r);
                break;
            }
            Err(e) if matches!(e.code(), Code::Unavailable | Code::Aborted) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(held.expect("recovered").status, rv::ReservationStatus::Held as i32);
    assert_eq!(parts(&mesh.cell("A", "L1").await), (5, 2, 0, 3));
    mesh.assert_reconciled().await;
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_a_burst_loses_no_acknowledged_confirm_and_leaves_no_orphan_hold() {
    let redis = RedisProcess::start(&[]).await;
    let database = test_support::fresh_postgres_database().await;
    let mut process = MeshProcess::start(env!("CARGO_BIN_EXE_inventory-mesh"), &database, &redis.url()).await;
    let reservation = process.reservation().await;
    let skus: Vec<String> = (0..8).map(|i| format!("K{i}")).collect();
    process.receive(&skus, "L1", 1_000).await;
    // 32 clients reserve 2 SKUs and confirm, until the process dies under them.
    let confirmed = Arc::new(Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..32)
        .map(|c| {
            let (mut client, confirmed, skus) = (reservation.clone(), confirmed.clone(), skus.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    let id = format!("c{c}-{i}");
                    let lines = [&skus[(c + i) % 8], &skus[(c + i + 3) % 8]]
                        .iter()
                        .map(|sku| rv::ReservationLine {
                            sku: (*sku).clone(),
                            location_id: "L1".into(),
                            quantity_units: 1,
                            ..Default::default()
                        })
                        .collect();
                    let create = rv::CreateReservationRequest {
                        reservation_id: id.clone(),
                        lines,
                        ttl_ms: 600_000,
                        ..Default::default()
                    };
                    if client.create_reservation(create).await.is_err() {
                        return;
                    }
                    let confirm = rv::ConfirmReservationRequest { reservation_id: id.clone(), occurred_at: None };
                    if client.confirm_reservation(confirm).await.is_err() {
                        return;
                    }
                    confirmed.lock().unwrap().push(id);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    process.kill(); // SIGKILL
    for client in clients {
        client.await.unwrap();
    }
    let acknowledged = confirmed.lock().unwrap().clone();
    assert!(acknowledged.len() > 10, "the burst was too short: {}", acknowledged.len());
    // Restart on the same stores; every acknowledged confirm is there, every unit is held by a
    // recorded hold or free (the sweeper settles claims the crash left), reconcile is clean.
    process.restart().await;
    let mut reservation = process.reservation().await;
    for id in &acknowledged {
        let got = reservation.get_reservation(rv::GetReservationRequest { reservation_id: id.clone() }).await.unwrap();
        assert_eq!(got.into_inner().reservation.unwrap().status, rv::ReservationStatus::Confirmed as i32, "{id}");
    }
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let report = inventory_mesh::reconcile::reconcile(
        process.channel(process.base_port).await,
        process.channel(process.base_port + 1).await,
    )
    .await
    .unwrap();
    assert!(report.is_clean(), "{:#?}", report.differences);
}

/// Debian's libfaketime, put into .tools/ by `make tools` (scripts/install-tools.sh).
fn libfaketime() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/faketime/libfaketime.so.1");
    assert!(path.exists(), "{} is missing: run `make tools` (or `bash scripts/install-tools.sh`)", path.display());
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holds_expire_by_the_redis_server_clock_when_the_services_clock_is_an_hour_off_b18() {
    let faketime = libfaketime();
    for offset in ["+1h", "-1h"] {
        let redis = RedisProcess::start(&[]).await;
        let database = test_support::fresh_postgres_database().await;
        // The mesh's wall clock is an hour off; its timers (monotonic) and Redis's clock are not.
        let env = [("LD_PRELOAD", faketime.as_str()), ("FAKETIME", offset), ("DONT_FAKE_MONOTONIC", "1")];
        let mesh =
            MeshProcess::start_with_env(env!("CARGO_BIN_EXE_inventory-mesh"), &database, &redis.url(), &env).await;
        mesh.receive(&["A"], "L1", 10).await;
        let mut reservation = mesh.reservation().await;
        let create = |id: &str| rv::CreateReservationRequest {
            reservation_id: id.into(),
            lines: vec![rv::ReservationLine {
                sku: "A".into(),
                location_id: "L1".into(),
                quantity_units: 1,
                ..Default::default()
            }],
            ttl_ms: 2_000,
            ..Default::default()
        };
        let created_at = service_kit::time::now_ms();
        let held = reservation.create_reservation(create("H")).await.unwrap().into_inner().reservation.unwrap();
        reservation.create_reservation(create("C")).await.unwrap();
        // The deadline is Redis's now + TTL, not the service's.
        let expires = held.expires_at.unwrap();
        let expires_ms = expires.seconds * 1_000 + i64::from(expires.nanos) / 1_000_000;
        assert!((expires_ms - (created_at + 2_000)).abs() < 500, "{offset}: deadline {expires_ms}, now {created_at}");
        // The service's own clock (its history timestamps) really is an hour off.
        let at = held.history[0].at.unwrap().seconds * 1_000;
        let shift = if offset == "+1h" { 3_600_000 } else { -3_600_000 };
        assert!((at - (created_at + shift)).abs() < 5_000, "{offset}: history at {at}, now {created_at}");
        // A second in, the hold is live by Redis's clock: it confirms.
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let confirm = rv::ConfirmReservationRequest { reservation_id: "C".into(), occurred_at: None };
        reservation.confirm_reservation(confirm).await.unwrap_or_else(|e| panic!("{offset}: {e:?}"));
        // Within TTL + 1 s, the other hold is recorded EXPIRED and its unit is back.
        loop {
            let got = reservation.get_reservation(rv::GetReservationRequest { reservation_id: "H".into() }).await;
            if got.unwrap().into_inner().reservation.unwrap().status == rv::ReservationStatus::Expired as i32 {
                break;
            }
            let late = service_kit::time::now_ms() - created_at;
            assert!(late < 3_000, "{offset}: not recorded EXPIRED within TTL + 1 s ({late} ms)");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let cells = mesh
            .availability()
            .await
            .get_cell_atp(av::GetCellAtpRequest { cells: vec![test_support::cell("A", "L1")] })
            .await
            .unwrap()
            .into_inner()
            .cells;
        assert_eq!(parts(&cells[0]), (10, 0, 1, 9), "{offset}");
        let report = inventory_mesh::reconcile::reconcile(
            mesh.channel(mesh.base_port).await,
            mesh.channel(mesh.base_port + 1).await,
        )
        .await
        .unwrap();
        assert!(report.is_clean(), "{offset}: {:#?}", report.differences);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_holds_expiring_at_once_among_a_million_keys_are_recorded_within_a_second_b16() {
    use sea_orm::{ConnectionTrait, Statement};
    let redis = RedisProcess::start(&["--enable-debug-command", "yes"]).await;
    let _: () = redis.command(redis::cmd("DEBUG").arg("POPULATE").arg(1_000_000).arg("unrelated")).await;
    let options = Options {
        redis_url: Some(redis.url()),
        configure: Some(Box::new(|s: &mut service_kit::config::Settings| {
            s.reservation.sweep_interval = Duration::from_millis(200);
        })),
        ..Options::default()
    };
    let mesh = TestMesh::start_with(Backend::External, options).await;
    for sku in 0..10 {
        mesh.receive(&format!("S{sku}"), "L1", 1_000).await;
    }
    mesh.receive("OTHER", "L1", 100_000).await;
    // Every hold gets the same absolute deadline: each asks for the time left until it.
    let deadline_ms = service_kit::time::now_ms() + 40_000;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let creators: Vec<_> = (0..32)
        .map(|_| {
            let (mut client, next) = (mesh.reservation.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= 10_000 {
                        return;
                    }
                    let ttl_ms = (deadline_ms - service_kit::time::now_ms()) as u64;
                    let line = rv::ReservationLine {
                        sku: format!("S{}", i % 10),
                        location_id: "L1".into(),
                        quantity_units: 1,
                        ..Default::default()
                    };
                    let request = rv::CreateReservationRequest {
                        reservation_id: format!("h{i}"),
                        lines: vec![line],
                        ttl_ms,
                        ..Default::default()
                    };
                    client.create_reservation(request).await.unwrap();
                }
            })
        })
        .collect();
    for creator in creators {
        creator.await.unwrap();
    }
    assert!(service_kit::time::now_ms() < deadline_ms - 1_000, "creating the holds took too long for this test");
    // Buyers keep reserving another SKU across the expiry instant: no error, bounded latency.
    let stop_at = deadline_ms + 3_000;
    let buyers: Vec<_> = (0..8)
        .map(|b| {
            let mut client = mesh.reservation.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut i = 0;
                while service_kit::time::now_ms() < stop_at {
                    let line = rv::ReservationLine {
                        sku: "OTHER".into(),
                        location_id: "L1".into(),
                        quantity_units: 1,
                        ..Default::default()
                    };
                    let request = rv::CreateReservationRequest {
                        reservation_id: format!("b{b}-{i}"),
                        lines: vec![line],
                        ttl_ms: 600_000,
                        ..Default::default()
                    };
                    let started = Instant::now();
                    client.create_reservation(request).await.unwrap();
                    latencies.push(started.elapsed());
                    i += 1;
                }
                latencies
            })
        })
        .collect();
    let db = service_kit::db::connect(&mesh.settings.database).await.unwrap();
    let count = Statement::from_string(
        db.get_database_backend(),
        "SELECT COUNT(*) FROM reservation_reservations WHERE status = 4",
    );
    let mut recorded_at = None;
    while service_kit::time::now_ms() < deadline_ms + 5_000 {
        let expired: i64 = db.query_one_raw(count.clone()).await.unwrap().unwrap().try_get_by_index(0).unwrap();
        if expired == 10_000 {
            recorded_at = Some(service_kit::time::now_ms() - deadline_ms);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut latencies: Vec<Duration> = Vec::new();
    for buyer in buyers {
        latencies.extend(buyer.await.unwrap());
    }
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    eprintln!(
        "b16 scale: EXPIRED recorded {recorded_at:?} ms after the deadline; concurrent reserves p99 {p99:?} over {}",
        latencies.len()
    );
    let recorded_at = recorded_at.expect("all 10,000 holds recorded EXPIRED");
    assert!(recorded_at <= 1_000, "recorded {recorded_at} ms after the deadline");
    assert!(p99 < Duration::from_secs(1), "reserves stalled during the mass expiry: p99 {p99:?}");
    for sku in 0..10 {
        assert_eq!(parts(&mesh.cell(&format!("S{sku}"), "L1").await), (1_000, 0, 0, 1_000));
    }
    mesh.assert_reconciled().await;
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_first_reserve_after_a_failover_to_a_replica_without_scripts_succeeds_once_b19() {
    let primary = RedisProcess::start(&["--repl-diskless-sync-delay", "0"]).await;
    let replica = RedisProcess::start(&["--replicaof", "127.0.0.1", &primary.port.to_string()]).await;
    let proxy = FaultProxy::start(primary.addr()).await;
    let options = Options { redis_url: Some(format!("redis://{}", proxy.addr)), ..Options::default() };
    let mesh = TestMesh::start_with(Backend::External, options).await;
    mesh.receive("A", "L1", 5).await;
    mesh.reserve("before", &[("A", "L1", 1)], 600_000).await.unwrap();
    // Wait until the replica has the hold, then promote it and send every connection there.
    let held_key = format!("{}im:{{A}}:cells", mesh.settings.redis.key_prefix);
    for _ in 0..250 {
        let held: Option<String> = replica.command(redis::cmd("HGET").arg(&held_key).arg("h:L1")).await;
        if held.as_deref() == Some("1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let synced: Option<String> = replica.command(redis::cmd("HGET").arg(&held_key).arg("h:L1")).await;
    assert_eq!(synced.as_deref(), Some("1"), "the replica never caught up");
    let _: () = replica.command(redis::cmd("REPLICAOF").arg("NO").arg("ONE")).await;
    let scripts: Vec<bool> =
        replica.command(redis::cmd("SCRIPT").arg("EXISTS").arg("0000000000000000000000000000000000000000")).await;
    assert_eq!(scripts, vec![false]);
    proxy.switch_to(replica.addr()).await;
    const RELOADS: &str = r#"inventory_mesh_script_reloads_total{script="reserve"}"#;
    let reloads_before = test_support::metric(&mesh.metrics().await, RELOADS).expect("the reload counter is served");
    // The replica never loaded the scripts: the call meets NOSCRIPT, loads them, and holds once.
    let after = mesh.reserve("after", &[("A", "L1", 1)], 600_000).await.unwrap();
    assert_eq!(after.status, rv::ReservationStatus::Held as i32);
    assert_eq!(parts(&mesh.cell("A", "L1").await), (5, 2, 0, 3));
    // The fallback is counted once, on /metrics as Prometheus scrapes it.
    assert_eq!(test_support::metric(&mesh.metrics().await, RELOADS), Some(reloads_before + 1.0));
    mesh.assert_reconciled().await;
    mesh.stop().await;
}

/// Waits (at most `within`) until `replica` has `value` in field `field` of `key`.
async fn replicated(replica: &RedisProcess, key: &str, field: &str, value: &str, within: Duration) {
    let start = Instant::now();
    loop {
        let seen: Option<String> = replica.command(redis::cmd("HGET").arg(key).arg(field)).await;
        if seen.as_deref() == Some(value) {
            return;
        }
        assert!(start.elapsed() < within, "the replica has {key} {field} = {seen:?}, not {value}, after {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hold_that_reached_a_lagging_replica_late_still_ends_at_its_deadline_after_failover_b18() {
    // The replica follows the primary through a link the test can cut: cutting it is replication
    // lag. The mesh talks to the primary through a second proxy, switched at the failover.
    let primary = RedisProcess::start(&["--repl-diskless-sync-delay", "0"]).await;
    let link = FaultProxy::start(primary.addr()).await;
    let replica = RedisProcess::start(&["--replicaof", "127.0.0.1", &link.addr.port().to_string()]).await;
    let front = FaultProxy::start(primary.addr()).await;
    let options = Options { redis_url: Some(format!("redis://{}", front.addr)), ..Options::default() };
    let mesh = TestMesh::start_with(Backend::External, options).await;
    let prefix = mesh.settings.redis.key_prefix.clone();
    mesh.receive("A", "L1", 5).await;
    let cells = format!("{prefix}im:{{A}}:cells");
    replicated(&replica, &cells, "oh:L1", "5", Duration::from_secs(5)).await;
    // t0: the hold (TTL 6 s) is taken while the replica lags; the link comes back 1.5 s later.
    link.cut().await;
    let created = Instant::now();
    let hold = mesh.reserve("H", &[("A", "L1", 1)], 6_000).await.unwrap();
    let deadline_ms = hold.expires_at.as_ref().map(|t| t.seconds * 1_000 + i64::from(t.nanos) / 1_000_000).unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    link.restore();
    replicated(&replica, &cells, "h:L1", "1", Duration::from_secs(3)).await;
    let lag = created.elapsed();
    // What reached the replica is the absolute deadline, not a TTL that restarts on arrival.
    let score: Option<f64> =
        replica.command(redis::cmd("ZSCORE").arg(format!("{prefix}im:{{A}}:hx")).arg("H|L1")).await;
    assert_eq!(score.map(|s| s as i64), Some(deadline_ms), "replicated {lag:?} after the hold was taken");
    // Fail over to the replica; the hold is live there until its deadline, not deadline + lag.
    let _: () = replica.command(redis::cmd("REPLICAOF").arg("NO").arg("ONE")).await;
    front.switch_to(replica.addr()).await;
    assert!(created.elapsed() < Duration::from_millis(5_500), "the failover came too late: {:?}", created.elapsed());
    assert_eq!(parts(&mesh.cell("A", "L1").await), (5, 1, 0, 4));
    tokio::time::sleep(Duration::from_millis(6_100).saturating_sub(created.elapsed())).await;
    // Past the deadline (though the hold arrived late): ATP is back and Confirm is refused.
    assert_eq!(parts(&mesh.cell("A", "L1").await), (5, 0, 0, 5));
    let refused = mesh.confirm("H").await.unwrap_err();
    assert_eq!((refused.code(), test_support::reason(&refused).as_str()), (Code::FailedPrecondition, "HOLD_EXPIRED"));
    // And the record says EXPIRED within TTL + 1 s of the hold being taken.
    tokio::time::sleep(Duration::from_millis(7_000).saturating_sub(created.elapsed())).await;
    let record = mesh.record("H").await;
    assert_eq!(record.status, rv::ReservationStatus::Expired as i32);
    mesh.assert_reconciled().await;
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_never_serves_an_expired_hold_as_held_and_never_decides_a_reserve_b18() {
    use mesh_counters::{Cell, CellUnits, CounterEngine, RedisEngine, ReservePolicy};
    let primary = RedisProcess::start(&["--repl-diskless-sync-delay", "0"]).await;
    let link = FaultProxy::start(primary.addr()).await;
    let replica = RedisProcess::start(&["--replicaof", "127.0.0.1", &link.addr.port().to_string()]).await;
    let options = Options { redis_url: Some(primary.url()), ..Options::default() };
    let mesh = TestMesh::start_with(Backend::External, options).await;
    let prefix = mesh.settings.redis.key_prefix.clone();
    mesh.receive("A", "L1", 5).await;
    mesh.receive("B", "L1", 5).await;
    mesh.reserve("short", &[("A", "L1", 1)], 1_000).await.unwrap();
    mesh.reserve("long", &[("A", "L1", 1), ("B", "L1", 1)], 600_000).await.unwrap();
    replicated(&replica, &format!("{prefix}im:{{A}}:cells"), "h:L1", "2", Duration::from_secs(5)).await;
    replicated(&replica, &format!("{prefix}im:{{B}}:cells"), "h:L1", "1", Duration::from_secs(5)).await;
    // Replication stops; "short" passes its deadline. The primary stops counting it; the replica
    // still has it in its data, as an old replica would.
    link.cut().await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(parts(&mesh.cell("A", "L1").await), (5, 1, 0, 4));
    let stale: Option<String> =
        replica.command(redis::cmd("HGET").arg(format!("{prefix}im:{{A}}:cells")).arg("h:L1")).await;
    assert_eq!(stale.as_deref(), Some("2"));
    let through_replica = CounterEngine::Redis(RedisEngine::connect(&replica.url(), &prefix).await.unwrap());
    // Every read checks deadlines against the server clock: B, with only a live hold, reads right
    // through the replica; A's expired hold is never counted: the read refuses (READONLY) instead.
    let b = through_replica.read_cells(&[Cell::new("B", "L1")]).await.unwrap();
    assert_eq!((b[0].on_hand, b[0].held), (5, 1));
    let a = through_replica.read_cells(&[Cell::new("A", "L1")]).await.unwrap_err();
    assert!(a.to_string().contains("read only replica"), "{a}");
    // A reserve through the replica decides nothing, and changes nothing anywhere.
    let line = CellUnits { cell: Cell::new("B", "L1"), units: 1 };
    let reserve = through_replica.reserve_with("via-replica", &[line], 60_000, ReservePolicy::AllOrNothing).await;
    assert!(reserve.as_ref().is_err_and(|e| e.to_string().contains("read only replica")), "{reserve:?}");
    assert_eq!(parts(&mesh.cell("B", "L1").await), (5, 1, 0, 4));
    link.restore();
    mesh.assert_reconciled().await;
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_url_of_one_node_and_redis_cluster_true_select_the_cluster() {
    let node = test_support::cluster_url();
    let database = test_support::fresh_postgres_database().await;
    let prefix = format!("cfg{}:", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let rebuild = |cluster: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_inventory-mesh"))
            .arg("rebuild")
            .env("DATABASE_URL", &database)
            .env("REDIS_URL", &node)
            .env("REDIS_CLUSTER", cluster)
            .env("REDIS_KEY_PREFIX", &prefix)
            .env("RUST_LOG", "error")
            .output()
            .unwrap()
    };
    // As a cluster: it connects and finds this empty store's counters missing (a first start).
    let output = rebuild("true");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let line: serde_json::Value = serde_json::from_slice(output.stdout.trim_ascii()).unwrap();
    assert_eq!((line["reason"].as_str(), line["skus"].as_u64()), (Some("empty"), Some(0)));
    // Run again it finds its own marker on the cluster: a forced rebuild.
    let output = rebuild("true");
    let line: serde_json::Value = serde_json::from_slice(output.stdout.trim_ascii()).unwrap();
    assert_eq!(line["reason"].as_str(), Some("forced"));
    // A bad value is named, and nothing starts.
    let output = rebuild("maybe");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("REDIS_CLUSTER must be true or false, not \"maybe\""),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
