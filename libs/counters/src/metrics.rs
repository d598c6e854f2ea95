//! The counter engine's metrics, in the process's Prometheus registry (served at `/metrics` on
//! every gRPC port by `service-kit`).
use std::sync::LazyLock;

use prometheus::{IntCounterVec, register_int_counter_vec};

static SCRIPT_RELOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "inventory_mesh_script_reloads_total",
        "Script calls that met NOSCRIPT (restart, SCRIPT FLUSH, failover, moved slot) and were loaded and \
         sent again",
        &["script"]
    )
    .expect("registered once, from this LazyLock")
});

/// Registers the metrics with a zero series per script (a Redis engine calls it when it connects,
/// so a scrape shows 0 rather than nothing).
pub(crate) fn init(scripts: &[&str]) {
    for script in scripts {
        SCRIPT_RELOADS.with_label_values(&[*script]);
    }
}

/// Counts one NOSCRIPT fallback of `script`.
pub(crate) fn script_reloaded(script: &str) {
    SCRIPT_RELOADS.with_label_values(&[script]).inc();
}

/// How many NOSCRIPT fallbacks `script` has had in this process.
pub fn script_reloads(script: &str) -> u64 {
    SCRIPT_RELOADS.with_label_values(&[script]).get()
}
