//! Black-box gRPC tests of sourcing on both back ends: one node when it can ship everything, the
//! fewest nodes otherwise (B31), channel scoping (B32), backorders, dry runs, recorded decisions,
//! re-planning when a competing order wins, and trace context + shrinking deadlines on every hop.
// Helpers outside #[test] functions panic on failure too, as the tests do.
#![allow(clippy::unwrap_used)]

use std::{sync::Arc, time::Duration};

use mesh_proto::{
    common::v1::GeoPoint,
    sourcing::v1::{self as pb},
};
use service_kit::call::parse_grpc_timeout;
use test_support::{Backend, TestMesh, backend_tests, parts, reason};
use tokio::sync::Barrier;
use tonic::Code;

fn order(id: &str, channel: &str, lines: &[(&str, i64)], split: bool, backorder: bool) -> pb::SourceOrderRequest {
    pb::SourceOrderRequest {
        order_id: id.into(),
        lines: lines.iter().map(|(sku, units)| pb::OrderLine { sku: (*sku).into(), quantity_units: *units }).collect(),
        ship_to: Some(GeoPoint { lat: -23.55, lon: -46.63 }), // São Paulo
        channel_id: channel.into(),
        allow_split: split,
        allow_backorder: backorder,
        dry_run: false,
        hold_ttl_ms: 600_000,
    }
}

async fn source(mesh: &TestMesh, request: pb::SourceOrderRequest) -> Result<pb::SourceOrderResponse, tonic::Status> {
    mesh.sourcing.clone().source_order(request).await.map(tonic::Response::into_inner)
}

fn shipped(response: &pb::SourceOrderResponse) -> Vec<(String, String, i64)> {
    let mut out: Vec<(String, String, i64)> = response
        .shipments
        .iter()
        .flat_map(|s| s.lines.iter().map(|l| (s.location_id.clone(), l.sku.clone(), l.quantity_units)))
        .collect();
    out.sort();
    out
}

async fn network(mesh: &TestMesh) {
    mesh.location("SP", -23.55, -46.63, 1).await; // São Paulo
    mesh.location("RJ", -22.91, -43.17, 2).await; // Rio de Janeiro, ~360 km
    mesh.location("POA", -30.03, -51.23, 3).await; // Porto Alegre, ~850 km
    mesh.channel("web", &["SP", "RJ", "POA"], 0).await;
}

backend_tests!(one_node_that_ships_everything_wins_and_every_node_is_explained, |mesh: &TestMesh| async move {
    network(mesh).await;
    for (loc, sku, units) in [("SP", "A", 5), ("RJ", "A", 5), ("RJ", "B", 5), ("POA", "A", 5), ("POA", "B", 5)] {
        mesh.receive(sku, loc, units).await;
    }
    let plan = source(mesh, order("o1", "web", &[("A", 2), ("B", 1)], true, false)).await.unwrap();
    assert_eq!(shipped(&plan), vec![("RJ".into(), "A".into(), 2), ("RJ".into(), "B".into(), 1)]);
    assert!((plan.shipments[0].distance_km - 357.0).abs() < 15.0, "{}", plan.shipments[0].distance_km);
    let verdicts: Vec<(String, String)> =
        plan.explanations.iter().map(|e| (e.location_id.clone(), e.verdict.clone())).collect();
    assert_eq!(
        verdicts,
        vec![("RJ".into(), "chosen".into()), ("SP".into(), "not needed".into()), ("POA".into(), "not needed".into())]
    );
    assert_eq!(plan.reservation_id, "o1");
    assert_eq!(plan.attempts, 1);
    assert_eq!(parts(&mesh.cell("A", "RJ").await), (5, 2, 0, 3));
    assert_eq!(parts(&mesh.cell("B", "RJ").await), (5, 1, 0, 4));
    // The decision is recorded, and a retry of the same order replays it without a second hold.
    let again = source(mesh, order("o1", "web", &[("A", 2), ("B", 1)], true, false)).await.unwrap();
    assert_eq!(again, plan);
    let recorded = mesh
        .sourcing
        .clone()
        .get_sourcing_decision(pb::GetSourcingDecisionRequest { order_id: "o1".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(recorded.decision.unwrap(), plan);
    assert_eq!(parts(&mesh.cell("A", "RJ").await), (5, 2, 0, 3));
});

backend_tests!(split_sourcing_subtracts_commitments_and_splits_when_allowed_b31, |mesh: &TestMesh| async move {
    mesh.location("L1", -23.55, -46.63, 2).await;
    mesh.location("L2", -22.91, -43.17, 1).await;
    mesh.channel("web", &["L1", "L2"], 0).await;
    // Step 1: L1 on_hand 10 with 6 committed, L2 on_hand 9 → A×13 = L1:4 + L2:9.
    mesh.receive("A", "L1", 10).await;
    mesh.reserve("prior", &[("A", "L1", 6)], 600_000).await.unwrap();
    mesh.confirm("prior").await.unwrap();
    mesh.receive("A", "L2", 9).await;
    let plan = source(mesh, order("O17", "web", &[("A", 13)], true, false)).await.unwrap();
    assert_eq!(shipped(&plan), vec![("L1".into(), "A".into(), 4), ("L2".into(), "A".into(), 9)]);
    // Step 2: one unit at each node, A×2.
    mesh.receive("B", "L1", 1).await;
    mesh.receive("B", "L2", 1).await;
    let no_split = source(mesh, order("O18-nosplit", "web", &[("B", 2)], false, false)).await.unwrap_err();
    assert_eq!((no_split.code(), reason(&no_split).as_str()), (Code::FailedPrecondition, "INSUFFICIENT_STOCK"));
    assert!(no_split.message().contains("B short by 1"), "{}", no_split.message());
    let backordered = source(mesh, order("O18-backorder", "web", &[("B", 2)], false, true)).await.unwrap();
    assert_eq!(shipped(&backordered).iter().map(|s| s.2).sum::<i64>(), 1);
    assert_eq!(backordered.backordered, vec![pb::BackorderedLine { sku: "B".into(), quantity_units: 1 }]);
    mesh.release(&backordered.reservation_id).await.unwrap();
    let split = source(mesh, order("O18", "web", &[("B", 2)], true, false)).await.unwrap();
    assert_eq!(shipped(&split), vec![("L1".into(), "B".into(), 1), ("L2".into(), "B".into(), 1)]);
    // Step 3: A only at L1 and C only at L2 → two shipments.
    mesh.receive("C", "L2", 1).await;
    mesh.receive("D", "L1", 1).await;
    let two = source(mesh, order("O19", "web", &[("D", 1), ("C", 1)], true, false)).await.unwrap();
    assert_eq!(two.shipments.len(), 2);
});

backend_tests!(channels_see_only_their_locations_b32, |mesh: &TestMesh| async move {
    for (loc, lat) in [("LX", -23.5), ("LY", -22.9), ("LZ", -30.0)] {
        mesh.location(loc, lat, -46.6, 0).await;
    }
    mesh.channel("X", &["LX", "LY"], 0).await;
    mesh.channel("Y", &["LY"], 0).await;
    mesh.channel("Z", &["LZ"], 0).await;
    mesh.receive("A", "LX", 10).await;
    mesh.receive("A", "LY", 5).await;
    let plan = source(mesh, order("x15", "X", &[("A", 15)], true, false)).await.unwrap();
    assert_eq!(shipped(&plan), vec![("LX".into(), "A".into(), 10), ("LY".into(), "A".into(), 5)]);
    let refused = source(mesh, order("y1", "Y", &[("A", 1)], true, false)).await.unwrap_err();
    assert_eq!(reason(&refused), "INSUFFICIENT_STOCK");
    let not_carried = source(mesh, order("z1", "Z", &[("A", 1)], true, true)).await.unwrap_err();
    assert_eq!(reason(&not_carried), "NOT_CARRIED");
    let unknown = source(mesh, order("w1", "nope", &[("A", 1)], true, true)).await.unwrap_err();
    assert_eq!(unknown.code(), Code::InvalidArgument);
    assert!(unknown.message().contains("channel_id"), "{}", unknown.message());
});

backend_tests!(a_dry_run_explains_and_reserves_nothing, |mesh: &TestMesh| async move {
    network(mesh).await;
    mesh.receive("A", "POA", 3).await;
    let mut request = order("dry", "web", &[("A", 5)], true, true);
    request.dry_run = true;
    let plan = source(mesh, request).await.unwrap();
    assert!(plan.dry_run);
    assert_eq!(shipped(&plan), vec![("POA".into(), "A".into(), 3)]);
    assert_eq!(plan.backordered, vec![pb::BackorderedLine { sku: "A".into(), quantity_units: 2 }]);
    assert_eq!(plan.reservation_id, "");
    assert_eq!(parts(&mesh.cell("A", "POA").await), (3, 0, 0, 3));
    let missing = mesh
        .sourcing
        .clone()
        .get_sourcing_decision(pb::GetSourcingDecisionRequest { order_id: "dry".into() })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
});

backend_tests!(bad_orders_name_the_field, |mesh: &TestMesh| async move {
    network(mesh).await;
    for (request, field) in [
        (order("", "web", &[("A", 1)], true, true), "order_id"),
        (order("o", "", &[("A", 1)], true, true), "channel_id"),
        (order("o", "web", &[], true, true), "lines"),
        (order("o", "web", &[("A", 0)], true, true), "lines[0].quantity_units"),
        (order("o", "web", &[("A", 1), ("", 1)], true, true), "lines[1].sku"),
        (
            pb::SourceOrderRequest {
                ship_to: Some(GeoPoint { lat: 91.0, lon: 0.0 }),
                ..order("o", "web", &[("A", 1)], true, true)
            },
            "ship_to",
        ),
    ] {
        let error = source(mesh, request).await.unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{field}");
        assert!(error.message().starts_with(field), "{field}: {}", error.message());
    }
});

backend_tests!(a_competing_order_that_wins_the_stock_triggers_a_replan, |mesh: &TestMesh| async move {
    network(mesh).await;
    for round in 0..30 {
        let sku = format!("R{round}");
        mesh.receive(&sku, "SP", 1).await; // the nearest node has the last unit
        mesh.receive(&sku, "POA", 1).await; // a farther node has another
        let barrier = Arc::new(Barrier::new(2));
        let calls: Vec<_> = (0..2)
            .map(|i| {
                let (mut client, barrier, request) = (
                    mesh.sourcing.clone(),
                    barrier.clone(),
                    order(&format!("r{round}-{i}"), "web", &[(&sku, 1)], true, false),
                );
                tokio::spawn(async move {
                    barrier.wait().await;
                    client.source_order(request).await.map(tonic::Response::into_inner)
                })
            })
            .collect();
        let mut nodes = Vec::new();
        for call in calls {
            let plan = call.await.unwrap().unwrap();
            assert!(plan.attempts <= 2, "round {round}");
            nodes.push(plan.shipments[0].location_id.clone());
        }
        nodes.sort();
        assert_eq!(nodes, vec!["POA".to_owned(), "SP".to_owned()], "round {round}: both orders served, each unit once");
        assert_eq!(parts(&mesh.cell(&sku, "SP").await), (1, 1, 0, 0));
        assert_eq!(parts(&mesh.cell(&sku, "POA").await), (1, 1, 0, 0));
    }
});

/// Every internal hop carries the caller's trace id and a deadline no longer than what the caller
/// has left (B24).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trace_context_and_shrinking_deadlines_pass_along_every_hop_b24() {
    let mesh = TestMesh::start(Backend::Embedded).await;
    network(&mesh).await;
    mesh.receive("A", "SP", 2).await;
    let before = mesh.recorder.calls().len();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = tonic::Request::new(order("traced", "web", &[("A", 1)], true, false));
    request.metadata_mut().insert("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01").parse().unwrap());
    request.set_timeout(Duration::from_millis(300));
    mesh.sourcing.clone().source_order(request).await.unwrap();
    let calls: Vec<_> = mesh.recorder.calls().into_iter().skip(before).collect();
    let hops: Vec<&str> = calls.iter().map(|c| c.path.as_str()).collect();
    assert!(hops.contains(&"/availability.v1.AvailabilityService/GetChannelAtp"), "{hops:?}");
    assert!(hops.contains(&"/reservation.v1.ReservationService/CreateReservation"), "{hops:?}");
    for call in &calls {
        let traceparent = call.traceparent.as_deref().unwrap_or_else(|| panic!("{} has no traceparent", call.path));
        assert_eq!(traceparent.split('-').nth(1), Some(trace_id), "{}", call.path);
        let timeout = parse_grpc_timeout(
            call.grpc_timeout.as_deref().unwrap_or_else(|| panic!("{} has no grpc-timeout", call.path)),
        )
        .unwrap();
        assert!(timeout <= Duration::from_millis(300), "{}: {timeout:?}", call.path);
    }
    // A caller with no time left gets DEADLINE_EXCEEDED, and nothing is reserved.
    let mut hurried = tonic::Request::new(order("hurried", "web", &[("A", 1)], true, false));
    hurried.set_timeout(Duration::from_micros(1));
    let error = mesh.sourcing.clone().source_order(hurried).await.unwrap_err();
    assert!(matches!(error.code(), Code::DeadlineExceeded | Code::Cancelled), "{error:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(parts(&mesh.cell("A", "SP").await).1, 1, "only the traced order holds a unit");
    mesh.assert_reconciled().await;
    mesh.stop().await;
}

backend_tests!(a_reservation_left_by_an_earlier_attempt_is_adopted_not_duplicated, |mesh: &TestMesh| async move {
    network(mesh).await;
    mesh.receive("A", "SP", 2).await;
    mesh.receive("A", "POA", 2).await;
    // An earlier attempt reserved at POA under the order id, then its caller gave up.
    mesh.reserve("o-adopt", &[("A", "POA", 2)], 600_000).await.unwrap();
    let plan = source(mesh, order("o-adopt", "web", &[("A", 2)], true, false)).await.unwrap();
    assert_eq!(shipped(&plan), vec![("POA".into(), "A".into(), 2)]);
    assert_eq!(plan.reservation_id, "o-adopt");
    assert_eq!(parts(&mesh.cell("A", "SP").await), (2, 0, 0, 2), "no second hold");
    assert_eq!(parts(&mesh.cell("A", "POA").await), (2, 2, 0, 0));
    // The adopted decision is recorded and replayed.
    assert_eq!(source(mesh, order("o-adopt", "web", &[("A", 2)], true, false)).await.unwrap(), plan);
});

backend_tests!(an_order_id_reused_with_another_request_is_already_exists, |mesh: &TestMesh| async move {
    network(mesh).await;
    mesh.receive("A", "SP", 5).await;
    mesh.receive("D", "SP", 5).await;
    let first = source(mesh, order("O0", "web", &[("A", 4)], true, false)).await.unwrap();
    let changed = source(mesh, order("O0", "web", &[("D", 1)], true, false)).await.unwrap_err();
    assert_eq!(changed.code(), Code::AlreadyExists);
    assert_eq!(source(mesh, order("O0", "web", &[("A", 4)], true, false)).await.unwrap(), first);
    assert_eq!(parts(&mesh.cell("D", "SP").await), (5, 0, 0, 5));
    // Concurrent attempts of one order: one plan, one hold; different bodies get ALREADY_EXISTS.
    for round in 0..10 {
        let (id, sku) = (format!("C{round}"), format!("D{round}"));
        mesh.receive(&sku, "SP", 5).await;
        let barrier = Arc::new(Barrier::new(8));
        let calls: Vec<_> = (0..8)
            .map(|i| {
                let units = if i % 2 == 0 { 1 } else { 2 };
                let (mut client, barrier, request) =
                    (mesh.sourcing.clone(), barrier.clone(), order(&id, "web", &[(&sku, units)], true, false));
                tokio::spawn(async move {
                    barrier.wait().await;
                    (units, client.source_order(request).await.map(tonic::Response::into_inner))
                })
            })
            .collect();
        let mut winners = std::collections::BTreeSet::new();
        for call in calls {
            let (units, result) = call.await.unwrap();
            match result {
                Ok(plan) => {
                    winners.insert(units);
                    assert_eq!(plan.reservation_id, id);
                }
                Err(status) => assert_eq!(status.code(), Code::AlreadyExists, "round {round}: {status:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: one body wins");
    }
});
