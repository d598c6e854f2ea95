//! Layered settings of the whole mesh: the compiled-in `config/default.toml` → an optional file
//! named by `MESH_CONFIG` → environment `MESH__SECTION__KEY` (later layers win). `DATABASE_URL`,
//! `REDIS_URL` and `REDIS_KEY_PREFIX` are honoured as the conventional shortcuts. Settings are
//! validated before any port is bound or connection opened.
use std::{net::SocketAddr, time::Duration};

use serde::Deserialize;

const DEFAULTS: &str = include_str!("../../../config/default.toml");

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration: {0}")]
    Invalid(String),
}

/// Everything the mesh can be configured with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub availability: ServiceSettings,
    pub reservation: ReservationSettings,
    pub sourcing: SourcingSettings,
    pub replenishment: ReplenishmentSettings,
    pub peers: Peers,
    pub grpc: GrpcSettings,
    pub shutdown: ShutdownSettings,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub telemetry: TelemetrySettings,
}

/// Where one service listens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSettings {
    pub listen_addr: SocketAddr,
}

/// The reservation service's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReservationSettings {
    pub listen_addr: SocketAddr,
    /// Hold TTL when the request gives none.
    #[serde(with = "humantime_serde")]
    pub default_hold_ttl: Duration,
    /// Longest hold TTL a request may ask for.
    #[serde(with = "humantime_serde")]
    pub max_hold_ttl: Duration,
    /// How often the sweeper records expired holds durably.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// The longest a hold may last from its creation, extends included.
    #[serde(with = "humantime_serde")]
    pub max_hold_time: Duration,
    /// A reservation still being created after this long was abandoned (its process died, its
    /// store went away): the sweeper settles it from the counters.
    #[serde(with = "humantime_serde")]
    pub stale_claim_after: Duration,
}

/// The sourcing service's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcingSettings {
    pub listen_addr: SocketAddr,
    /// Most nodes one order may be split across.
    pub max_split_nodes: usize,
    /// Plans tried when a competing order wins the stock between plan and reserve.
    pub max_attempts: u32,
}

/// The replenishment service's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplenishmentSettings {
    pub listen_addr: SocketAddr,
    /// Days of demand the velocity averages over.
    pub velocity_window_days: u32,
    /// Supplier lead time used for reorder points.
    pub lead_time_days: f64,
    /// Days of demand an order should cover beyond the reorder point.
    pub order_cover_days: f64,
    /// ATP at or below this many units (plus the cell's safety) is LOW_STOCK.
    pub low_stock_units: i64,
    /// How often every cell with demand or an open alert is re-evaluated (crossings back up, expiries).
    #[serde(with = "humantime_serde")]
    pub evaluation_interval: Duration,
}

/// Addresses of the peers a service calls.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peers {
    pub availability: String,
    pub reservation: String,
    pub replenishment: String,
    /// Deadline of a peer call when the incoming call has none.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

/// Server settings shared by the four services.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcSettings {
    /// Ceiling on any request; a shorter client deadline still wins.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    pub max_concurrent_per_connection: usize,
}

/// Graceful shutdown timing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSettings {
    /// Time between NOT_SERVING and closing, so readiness probes notice.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// Time in-flight calls and background tasks get to finish.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

/// The relational store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://…` (embedded default) or `postgres://…`.
    pub url: String,
    pub max_connections: u32,
    /// Longest wait for a pooled connection (or a new one) before a call fails UNAVAILABLE.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
}

/// The counter store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// Empty: the in-process engine (embedded default, whole mesh in one process only).
    pub url: String,
    /// Prefix of every key (lets several meshes or tests share one Redis).
    pub key_prefix: String,
    /// The URL names one node of a Redis Cluster (the client finds the others).
    pub cluster: bool,
    /// How often a running service checks that Redis still holds its data (rebuilding it if not).
    #[serde(with = "humantime_serde")]
    pub origin_check_interval: Duration,
}

/// Logs and traces.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// `tracing` env-filter directives, overridden by `RUST_LOG`.
    pub log_filter: String,
    /// JSON lines (clusters) instead of human-readable logs.
    pub json_logs: bool,
}

impl Settings {
    /// Loads defaults → `MESH_CONFIG` file → environment, then validates.
    ///
    /// # Errors
    /// A file that cannot be read or parsed, an unknown key, or an invalid value.
    pub fn load() -> Result<Self, SettingsError> {
        let mut builder =
            config::Config::builder().add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Ok(path) = std::env::var("MESH_CONFIG") {
            builder = builder.add_source(config::File::with_name(&path).required(true));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("MESH").prefix_separator("__").separator("__").try_parsing(true),
        );
        if let Ok(url) = std::env::var("DATABASE_URL") {
            builder = builder.set_override("database.url", url)?;
        }
        if let Ok(url) = std::env::var("REDIS_URL") {
            builder = builder.set_override("redis.url", url)?;
        }
        if let Ok(prefix) = std::env::var("REDIS_KEY_PREFIX") {
            builder = builder.set_override("redis.key_prefix", prefix)?;
        }
        if let Ok(cluster) = std::env::var("REDIS_CLUSTER") {
            let cluster = match cluster.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" => true,
                "" | "0" | "false" | "no" => false,
                other => {
                    return Err(SettingsError::Invalid(format!("REDIS_CLUSTER must be true or false, not {other:?}")));
                }
            };
            builder = builder.set_override("redis.cluster", cluster)?;
        }
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Loads only the compiled-in defaults (tests).
    pub fn defaults() -> Self {
        config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .expect("config/default.toml is compiled in and covered by a unit test")
    }

    /// Checks values a type cannot.
    ///
    /// # Errors
    /// The first invalid value, named.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |m: &str| Err(SettingsError::Invalid(m.to_owned()));
        if !(self.database.url.starts_with("sqlite:") || self.database.url.starts_with("postgres")) {
            return invalid("database.url must start with sqlite: or postgres://");
        }
        if self.redis.key_prefix.contains(['{', '}']) {
            return invalid("redis.key_prefix must not contain { or } (they would change the keys' cluster slot)");
        }
        if self.redis.cluster && self.redis.url.is_empty() {
            return invalid("redis.cluster needs redis.url (any one node of the cluster)");
        }
        if self.reservation.max_hold_ttl > self.reservation.max_hold_time {
            return invalid("reservation.max_hold_ttl must be <= reservation.max_hold_time");
        }
        if !self.redis.url.is_empty() && !self.redis.url.starts_with("redis") {
            return invalid("redis.url must be empty (embedded engine) or a redis:// URL");
        }
        if self.reservation.default_hold_ttl.is_zero()
            || self.reservation.default_hold_ttl > self.reservation.max_hold_ttl
        {
            return invalid("reservation.default_hold_ttl must be > 0 and <= reservation.max_hold_ttl");
        }
        if self.sourcing.max_split_nodes == 0 || self.sourcing.max_attempts == 0 {
            return invalid("sourcing.max_split_nodes and sourcing.max_attempts must be >= 1");
        }
        if self.replenishment.evaluation_interval.is_zero() {
            return invalid("replenishment.evaluation_interval must be > 0");
        }
        if self.replenishment.velocity_window_days == 0 {
            return invalid("replenishment.velocity_window_days must be >= 1");
        }
        if self.grpc.max_concurrent_per_connection == 0 || self.database.max_connections == 0 {
            return invalid("grpc.max_concurrent_per_connection and database.max_connections must be >= 1");
        }
        Ok(())
    }

    /// Tells whether the counters run in-process (no Redis configured).
    pub fn is_embedded_engine(&self) -> bool {
        self.redis.url.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_validate() {
        let settings = Settings::defaults();
        settings.validate().unwrap();
        assert_eq!(settings.availability.listen_addr.port(), 50051);
        assert_eq!(settings.reservation.listen_addr.port(), 50052);
        assert_eq!(settings.sourcing.listen_addr.port(), 50053);
        assert_eq!(settings.replenishment.listen_addr.port(), 50054);
        assert!(settings.is_embedded_engine());
    }
}
