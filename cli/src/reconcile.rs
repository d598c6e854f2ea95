//! The reconcile check against a running mesh: availability compares on_hand and safety with its
//! positions; reservation compares held and committed with the holds and commitments they are
//! made of and with its durable records. Any difference is listed.
use mesh_proto::{
    availability::v1::{
        ReconcileCountersRequest as AvailabilityReconcile, availability_service_client::AvailabilityServiceClient,
    },
    common::v1::CounterDifference,
    reservation::v1::{
        ReconcileCountersRequest as ReservationReconcile, reservation_service_client::ReservationServiceClient,
    },
};
use tonic::transport::Channel;

/// What a reconcile found.
#[derive(Debug, Default)]
pub struct ReconcileReport {
    pub cells_checked: u64,
    pub reservations_checked: u64,
    pub differences: Vec<CounterDifference>,
    /// "redis" or "embedded".
    pub counter_engine: String,
    /// "postgres" or "sqlite".
    pub durable_store: String,
}

impl ReconcileReport {
    /// Tells whether counters and records agree.
    pub fn is_clean(&self) -> bool {
        self.differences.is_empty()
    }
}

/// Runs both services' reconcile checks.
///
/// # Errors
/// A service could not be reached.
pub async fn reconcile(availability: Channel, reservation: Channel) -> Result<ReconcileReport, tonic::Status> {
    let a =
        AvailabilityServiceClient::new(availability).reconcile_counters(AvailabilityReconcile {}).await?.into_inner();
    let r = ReservationServiceClient::new(reservation).reconcile_counters(ReservationReconcile {}).await?.into_inner();
    let mut differences = a.differences;
    differences.extend(r.differences);
    Ok(ReconcileReport {
        cells_checked: a.cells_checked.max(r.cells_checked),
        reservations_checked: r.reservations_checked,
        differences,
        counter_engine: a.counter_engine,
        durable_store: a.durable_store,
    })
}
