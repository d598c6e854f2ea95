//! The flash-sale tool against every back end (embedded, standalone Redis, 3-master cluster), repeated, all buyers released from one barrier:
//! exactly the stock is accepted, the rest refused, nothing oversold, no errors.
// Helpers outside #[test] functions panic on failure too, as the tests do.
#![allow(clippy::unwrap_used)]

use inventory_mesh::{
    load::{FlashSale, flash_sale},
    mesh::ServiceKind,
};
use test_support::{Backend, TestMesh};

async fn run_sales(backend: Backend) {
    let mesh = TestMesh::start(backend).await;
    let channel = |kind: ServiceKind| {
        tonic::transport::Endpoint::from_shared(format!("http://{}", mesh.addrs[&kind])).unwrap().connect_lazy()
    };
    for round in 0..3 {
        let sale = FlashSale { units: 50, buyers: 500, concurrency: 32, lines: 1, run_id: format!("fs{round}") };
        let report =
            flash_sale(&sale, channel(ServiceKind::Availability), channel(ServiceKind::Reservation)).await.unwrap();
        assert_eq!(
            (report.attempts, report.accepted_units, report.rejected, report.errors, report.oversold_units),
            (500, 50, 450, 0, 0),
            "round {round}: {report:?}"
        );
    }
    // Three SKUs per buyer: a buyer gets all three units or none.
    let sale = FlashSale { units: 20, buyers: 120, concurrency: 16, lines: 3, run_id: "fs-multi".into() };
    let report =
        flash_sale(&sale, channel(ServiceKind::Availability), channel(ServiceKind::Reservation)).await.unwrap();
    assert_eq!(
        (report.accepted_units, report.rejected, report.errors, report.oversold_units),
        (60, 100, 0, 0),
        "{report:?}"
    );
    mesh.assert_reconciled().await;
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flash_sale_on_the_embedded_engine_accepts_exactly_the_stock() {
    run_sales(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flash_sale_on_redis_and_postgres_accepts_exactly_the_stock() {
    run_sales(Backend::External).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flash_sale_on_a_redis_cluster_accepts_exactly_the_stock() {
    run_sales(Backend::Cluster).await;
}
