//! Rebuilding the live counters from the durable store, and noticing when they need it.
//!
//! The durable store (SQLite / PostgreSQL) is the truth: physical positions in availability's
//! ledger, holds and commitments in reservation's records. Redis only mirrors them, so after Redis
//! loses data (FLUSHALL, a restart without persistence, a failover that dropped writes) or when it
//! holds another mesh's data, `rebuild` merges the durable state back in, one SKU per atomic script
//! (only what is missing is added, so it is idempotent and safe beside live traffic).
//!
//! Redis carries an origin marker (`{prefix}im:origin`) naming the durable store it was built from
//! (a random id kept in the `mesh_instance` table). At startup, and every few seconds while running,
//! [`ensure`] compares the two: a missing marker means an empty or flushed Redis, another id means a
//! foreign one (its SKUs are cleared first); either way the counters are rebuilt before the marker
//! is written. Until then a flushed cell refuses physical changes (COUNTERS_LOST) and holds nothing,
//! so nothing can be promised twice in between.
use std::{collections::BTreeMap, time::Duration};

use anyhow::Context;
use mesh_counters::{Cell, CounterEngine, Entry, Restored, SkuRestore};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use serde::Serialize;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// What a rebuild did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RebuildReport {
    /// Why it ran: "forced", "empty", "flushed" or "foreign".
    pub reason: String,
    pub skus: u64,
    pub cells_written: u64,
    pub holds_added: u64,
    pub commitments_added: u64,
    /// SKUs of a foreign instance that were cleared first.
    pub foreign_skus_cleared: u64,
}

/// The id of this durable store, created on first use.
///
/// # Errors
/// A database error.
pub async fn instance_id(db: &DatabaseConnection) -> anyhow::Result<String> {
    let backend = db.get_database_backend();
    db.execute_unprepared("CREATE TABLE IF NOT EXISTS mesh_instance (id VARCHAR(64) PRIMARY KEY)").await?;
    let select = Statement::from_string(backend, "SELECT id FROM mesh_instance");
    if let Some(row) = db.query_one_raw(select.clone()).await? {
        return Ok(row.try_get_by_index::<String>(0)?);
    }
    let id = uuid::Uuid::new_v4().to_string();
    // Two processes may race here: the primary key keeps one, and both read it back.
    let _ = db
        .execute_raw(Statement::from_sql_and_values(backend, "INSERT INTO mesh_instance (id) VALUES ($1)", [id.into()]))
        .await;
    let row = db.query_one_raw(select).await?.context("mesh_instance is empty after insert")?;
    Ok(row.try_get_by_index::<String>(0)?)
}

fn entry<'a>(by_sku: &'a mut BTreeMap<String, SkuRestore>, sku: &str) -> &'a mut SkuRestore {
    by_sku.entry(sku.to_owned()).or_insert_with(|| SkuRestore { sku: sku.to_owned(), ..SkuRestore::default() })
}

/// Merges every SKU's durable state into the engine.
///
/// # Errors
/// A store or counter error (the rebuild can simply be run again).
pub async fn rebuild(engine: &CounterEngine, db: &DatabaseConnection, reason: &str) -> anyhow::Result<RebuildReport> {
    let availability_store = availability::store::AvailabilityStore::new(db.clone());
    let mut by_sku: BTreeMap<String, SkuRestore> = BTreeMap::new();
    for (cell, position) in availability_store.all_positions().await? {
        entry(&mut by_sku, &cell.sku).cells.push((
            cell.location.clone(),
            position.on_hand,
            position.version,
            position.safety,
        ));
    }
    let mut fulfilled: BTreeMap<(String, Cell), i64> = BTreeMap::new();
    for (reservation_id, cell, units) in availability_store.fulfilled_by_reservation().await? {
        *fulfilled.entry((reservation_id, cell)).or_default() += units;
    }
    let store = reservation::store::ReservationStore::new(db.clone());
    let records =
        store.lines_in_status(&[reservation::domain::Status::Held, reservation::domain::Status::Confirmed]).await?;
    for (reservation_id, status, deadline, line) in records {
        let e = entry(&mut by_sku, &line.cell.sku);
        match status {
            reservation::domain::Status::Held => e.holds.push(Entry {
                reservation_id,
                location: line.cell.location.clone(),
                units: line.units,
                deadline_ms: deadline,
            }),
            _ => {
                let shipped = fulfilled.get(&(reservation_id.clone(), line.cell.clone())).copied().unwrap_or(0);
                e.commitments.push(Entry {
                    reservation_id,
                    location: line.cell.location.clone(),
                    units: line.units - shipped,
                    deadline_ms: 0,
                });
            }
        }
    }
    let mut total = Restored::default();
    for state in by_sku.values() {
        total += engine.restore(state).await.with_context(|| format!("restoring SKU {}", state.sku))?;
    }
    Ok(RebuildReport {
        reason: reason.to_owned(),
        skus: by_sku.len() as u64,
        cells_written: total.cells_written,
        holds_added: total.holds_added,
        commitments_added: total.commitments_added,
        foreign_skus_cleared: 0,
    })
}

/// Checks the origin marker and rebuilds when Redis is empty, flushed or foreign (`force` rebuilds
/// anyway). Returns None when nothing was needed. The embedded engine is rebuilt at every start
/// instead (it lives in the process).
///
/// # Errors
/// A store or counter error.
pub async fn ensure(
    engine: &CounterEngine,
    db: &DatabaseConnection,
    force: bool,
) -> anyhow::Result<Option<RebuildReport>> {
    let CounterEngine::Redis(redis) = engine else {
        return if force { Ok(Some(rebuild(engine, db, "forced").await?)) } else { Ok(None) };
    };
    let id = instance_id(db).await?;
    let origin = redis.origin().await?;
    let reason = match origin.as_deref() {
        Some(origin) if origin == id && !force => return Ok(None),
        Some(origin) if origin == id => "forced",
        Some(_) => "foreign",
        // No marker: a new Redis, or one that lost its data (told apart below by what the store has).
        None => "flushed",
    };
    let mut cleared = 0;
    if reason == "foreign" {
        for sku in engine.all_skus().await? {
            engine.clear_sku(&sku).await?;
            cleared += 1;
        }
    }
    let mut report = rebuild(engine, db, reason).await?;
    report.foreign_skus_cleared = cleared;
    if reason == "flushed" && report.skus == 0 {
        report.reason = "empty".into(); // nothing was lost: a first start
    }
    redis.set_origin(&id).await?;
    if report.reason != "empty" {
        tracing::warn!(?report, "counters rebuilt from the durable store");
    }
    Ok(Some(report))
}

/// Re-checks the origin marker every `interval` and rebuilds when Redis lost its data.
pub fn spawn_watchdog(
    engine: CounterEngine,
    db: DatabaseConnection,
    interval: Duration,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) {
    if !matches!(engine, CounterEngine::Redis(_)) {
        return;
    }
    tracker.spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = shutdown.cancelled() => break,
            }
            if let Err(error) = ensure(&engine, &db, false).await {
                tracing::warn!(error = %format!("{error:#}"), "counter origin check failed; retrying");
            }
        }
    });
}
