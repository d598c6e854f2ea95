//! The reservation service's metrics (served at `/metrics` by `service-kit`): what the sweeper
//! recorded and what it noticed about the counter store's clock.
use std::sync::LazyLock;

use service_kit::metrics::{IntCounter, IntGauge, counter, gauge};

/// Holds (reservations, whatever their number of lines) the sweeper recorded as EXPIRED.
pub static HOLDS_EXPIRED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter("inventory_mesh_holds_expired_total", "Holds (reservations) the sweeper recorded as EXPIRED")
});

/// Sweeps that expired more than the mass-expiry share of all holds (MASS_EXPIRY alerts).
pub static MASS_EXPIRY_ALERTS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "inventory_mesh_mass_expiry_alerts_total",
        "Sweeps that expired more than the mass-expiry share of every hold (MASS_EXPIRY)",
    )
});

/// The counter store's clock minus this service's, as the last sweep measured it.
pub static CLOCK_SKEW_MS: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "inventory_mesh_counter_store_clock_skew_milliseconds",
        "The counter store's clock minus the reservation service's clock at the last sweep",
    )
});

/// Registers every metric so a scrape shows it (at 0) before its first change.
pub fn init() {
    LazyLock::force(&HOLDS_EXPIRED);
    LazyLock::force(&MASS_EXPIRY_ALERTS);
    LazyLock::force(&CLOCK_SKEW_MS);
}
