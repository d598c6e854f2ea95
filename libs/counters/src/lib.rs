//! The counter engine: the live on_hand / held / committed / safety counters of every cell, the live
//! holds and the open commitments. Every change is one atomic step: a Redis Lua script
//! ([`redis_engine`]) or, on the embedded default, one critical section of the in-process engine
//! ([`memory`]) with exactly the same rules, proven by the conformance suite in `tests/`.
//!
//! Rules both engines enforce: a reserve holds every line or none, lines naming the same cell are
//! summed first (invariants 1, 6); an expired hold is never counted and never confirmable, because
//! expired holds are purged at the start of every step that touches their SKU (invariant 3);
//! holds and commitments only move between held, committed and free, never touching on_hand
//! (invariant 5).
pub mod memory;
pub mod metrics;
pub mod redis_engine;

use std::sync::Arc;

pub use memory::{Clock, ManualClock, MemoryEngine, SystemClock};
pub use redis_engine::{RedisEngine, key_slot, reserve_script_source};

/// One (SKU, location) pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cell {
    pub sku: String,
    pub location: String,
}

impl Cell {
    /// Builds a cell from its SKU and location.
    pub fn new(sku: impl Into<String>, location: impl Into<String>) -> Self {
        Self { sku: sku.into(), location: location.into() }
    }
}

/// The live counters of one cell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CellCounters {
    pub on_hand: i64,
    pub held: i64,
    pub committed: i64,
    pub safety: i64,
}

impl CellCounters {
    /// Returns ATP = on_hand − held − committed − safety, unclamped (saturating: inputs are bounded
    /// by validation, and no overflow may ever turn a shortage into plenty).
    pub fn atp(&self) -> i64 {
        self.on_hand.saturating_sub(self.held).saturating_sub(self.committed).saturating_sub(self.safety)
    }
}

/// Units of one cell in a multi-line request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellUnits {
    pub cell: Cell,
    pub units: i64,
}

/// A cell that could not cover its (summed) demand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortage {
    pub cell: Cell,
    pub requested: i64,
    pub available: i64,
}

/// How much of a reservation must be available for it to hold anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReservePolicy {
    /// Every line in full, or nothing (the default).
    #[default]
    AllOrNothing,
    /// Each line takes what its cell's ATP covers; nothing is held if that is 0 for every line.
    Partial,
}

/// What a reserve did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    /// Held until `expires_at_ms` (engine clock): `held` has one entry per distinct cell, in
    /// first-seen order, with the units actually held (the full demand unless the policy is
    /// partial; 0 for a partial line with nothing available).
    Held { expires_at_ms: i64, held: Vec<CellUnits> },
    /// This reservation id already holds or committed these cells: nothing changed.
    AlreadyExists { expires_at_ms: i64 },
    /// At least one cell is short: nothing changed.
    Insufficient { shortages: Vec<Shortage> },
}

/// What a confirm did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfirmOutcome {
    Confirmed {
        now_ms: i64,
    },
    AlreadyConfirmed {
        now_ms: i64,
    },
    /// No live hold: expired, released or lost. Nothing changed.
    HoldMissing {
        now_ms: i64,
    },
}

/// What a release takes back: the live hold, or the unshipped commitment (never both at once, so
/// a release cannot take a commitment made by a confirm it raced with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleasePart {
    Hold,
    Commitment,
}

/// Units a release returned to ATP.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Released {
    pub hold_units: i64,
    pub committed_units: i64,
    /// Units returned per cell, in the order the cells were given.
    pub per_cell: Vec<i64>,
}

/// What a reservation has on one cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CellHold {
    /// Units of its live hold (0 when none).
    pub held_units: i64,
    /// The live hold's deadline (0 when none).
    pub deadline_ms: i64,
    /// Units of its open commitment (0 when none).
    pub committed_units: i64,
}

/// What a reservation has left in the engine, one entry per cell asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldState {
    pub cells: Vec<CellHold>,
    /// The engine clock when it looked.
    pub now_ms: i64,
}

impl HoldState {
    /// Cells with a live hold.
    pub fn live_cells(&self) -> usize {
        self.cells.iter().filter(|c| c.held_units > 0).count()
    }

    /// Cells with an open commitment.
    pub fn committed_cells(&self) -> usize {
        self.cells.iter().filter(|c| c.committed_units > 0).count()
    }

    /// The earliest deadline of its live holds (0 when none is live).
    pub fn earliest_deadline_ms(&self) -> i64 {
        self.cells.iter().filter(|c| c.held_units > 0).map(|c| c.deadline_ms).min().unwrap_or(0)
    }
}

/// What an extend did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtendOutcome {
    /// Every cell's hold now lasts until at least `expires_at_ms` (the earliest of them).
    Extended { expires_at_ms: i64, now_ms: i64 },
    /// A cell has no live hold (expired, released, confirmed or lost): nothing changed.
    HoldMissing { now_ms: i64 },
}

/// A physical change computed by the durable ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhysicalChange {
    pub cell: Cell,
    /// The cell's new absolute on_hand.
    pub on_hand: i64,
    /// The ledger position's version; an older version never overwrites a newer one.
    pub version: i64,
    /// A shipment fulfilling this reservation's commitment by up to this many units.
    pub fulfil: Option<(String, i64)>,
    /// The event's id: a fulfilment is applied at most once per event id.
    pub event_id: String,
}

/// The counters after a physical change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhysicalOutcome {
    pub counters: CellCounters,
    pub fulfilled_units: i64,
}

/// A live hold or open commitment of one reservation on one cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub reservation_id: String,
    pub location: String,
    pub units: i64,
    /// Holds only: the absolute deadline (engine clock, ms).
    pub deadline_ms: i64,
}

/// Everything the engine knows about one SKU (after purging expired holds).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SkuSnapshot {
    pub sku: String,
    pub cells: Vec<(String, CellCounters)>,
    pub holds: Vec<Entry>,
    pub commitments: Vec<Entry>,
}

/// One SKU's durable state, merged into the engine by a rebuild (only what is missing is added).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SkuRestore {
    pub sku: String,
    /// (location, on_hand, position version, safety) per cell.
    pub cells: Vec<(String, i64, i64, i64)>,
    /// Live holds of HELD records (deadline on the engine clock).
    pub holds: Vec<Entry>,
    /// Unshipped units of CONFIRMED records.
    pub commitments: Vec<Entry>,
}

/// What a rebuild step added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Restored {
    pub cells_written: u64,
    pub holds_added: u64,
    pub commitments_added: u64,
}

impl std::ops::AddAssign for Restored {
    fn add_assign(&mut self, other: Self) {
        self.cells_written += other.cells_written;
        self.holds_added += other.holds_added;
        self.commitments_added += other.commitments_added;
    }
}

/// Why the engine could not answer.
#[derive(Debug, thiserror::Error)]
pub enum CounterError {
    #[error("counter store unavailable: {0}")]
    Unavailable(#[from] redis::RedisError),
    #[error("counter script returned an unexpected reply: {0}")]
    Protocol(String),
    /// The counter store lost data the durable store has (FLUSHALL, restart without persistence):
    /// nothing was written; a rebuild restores it.
    #[error("counter store lost its data: {0}")]
    Lost(String),
}

impl CounterError {
    /// Classifies a Redis error (a script's COUNTERS_LOST refusal is not a connection problem).
    pub(crate) fn from_redis(error: redis::RedisError) -> Self {
        let text = error.to_string();
        if text.contains("COUNTERS_LOST") { Self::Lost(text) } else { Self::Unavailable(error) }
    }
}

pub type CounterResult<T> = Result<T, CounterError>;

/// The engine a service talks to: Redis in production, in-process on the embedded default.
#[derive(Clone)]
pub enum CounterEngine {
    Memory(Arc<MemoryEngine>),
    Redis(RedisEngine),
}

impl CounterEngine {
    /// Returns "embedded", "redis" or "redis-cluster".
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Memory(_) => "embedded",
            Self::Redis(r) if r.is_cluster() => "redis-cluster",
            Self::Redis(_) => "redis",
        }
    }

    /// Reads cells (expired holds purged first).
    pub async fn read_cells(&self, cells: &[Cell]) -> CounterResult<Vec<CellCounters>> {
        let skus = unique_skus(cells.iter().map(|c| &c.sku));
        let snapshots = self.snapshot(&skus).await?;
        Ok(cells
            .iter()
            .map(|cell| {
                snapshots
                    .iter()
                    .find(|s| s.sku == cell.sku)
                    .and_then(|s| s.cells.iter().find(|(loc, _)| *loc == cell.location))
                    .map(|(_, counters)| *counters)
                    .unwrap_or_default()
            })
            .collect())
    }

    /// Returns cells, holds and commitments of each SKU (expired holds purged first).
    pub async fn snapshot(&self, skus: &[String]) -> CounterResult<Vec<SkuSnapshot>> {
        match self {
            Self::Memory(m) => Ok(m.snapshot(skus)),
            Self::Redis(r) => r.snapshot(skus).await,
        }
    }

    /// Applies a physical change computed by the ledger.
    pub async fn apply_physical(&self, change: &PhysicalChange) -> CounterResult<PhysicalOutcome> {
        match self {
            Self::Memory(m) => m.apply_physical(change),
            Self::Redis(r) => r.apply_physical(change).await,
        }
    }

    /// Sets a cell's safety units.
    pub async fn set_safety(&self, cell: &Cell, safety: i64) -> CounterResult<CellCounters> {
        match self {
            Self::Memory(m) => Ok(m.set_safety(cell, safety)),
            Self::Redis(r) => r.set_safety(cell, safety).await,
        }
    }

    /// Holds every line for `ttl_ms` or nothing.
    pub async fn reserve(
        &self,
        reservation_id: &str,
        lines: &[CellUnits],
        ttl_ms: u64,
    ) -> CounterResult<ReserveOutcome> {
        self.reserve_with(reservation_id, lines, ttl_ms, ReservePolicy::AllOrNothing).await
    }

    /// Holds the lines for `ttl_ms` under `policy`.
    pub async fn reserve_with(
        &self,
        reservation_id: &str,
        lines: &[CellUnits],
        ttl_ms: u64,
        policy: ReservePolicy,
    ) -> CounterResult<ReserveOutcome> {
        match self {
            Self::Memory(m) => Ok(m.reserve(reservation_id, lines, ttl_ms, policy)),
            Self::Redis(r) => r.reserve(reservation_id, lines, ttl_ms, policy).await,
        }
    }

    /// Moves the deadline of the live hold on every cell to min(now + `ttl_ms`, `cap_ms`), never
    /// earlier than it is, or changes nothing when a cell's hold is not live.
    pub async fn extend(
        &self,
        reservation_id: &str,
        cells: &[Cell],
        ttl_ms: u64,
        cap_ms: i64,
    ) -> CounterResult<ExtendOutcome> {
        match self {
            Self::Memory(m) => Ok(m.extend(reservation_id, cells, ttl_ms, cap_ms)),
            Self::Redis(r) => r.extend(reservation_id, cells, ttl_ms, cap_ms).await,
        }
    }

    /// Turns a live hold on every cell into a commitment, or changes nothing.
    pub async fn confirm(&self, reservation_id: &str, cells: &[Cell]) -> CounterResult<ConfirmOutcome> {
        match self {
            Self::Memory(m) => Ok(m.confirm(reservation_id, cells)),
            Self::Redis(r) => r.confirm(reservation_id, cells).await,
        }
    }

    /// Returns the reservation's live hold units, or its unshipped commitment units, on these cells.
    pub async fn release(&self, reservation_id: &str, part: ReleasePart, cells: &[Cell]) -> CounterResult<Released> {
        match self {
            Self::Memory(m) => Ok(m.release(reservation_id, part, cells)),
            Self::Redis(r) => r.release(reservation_id, part, cells).await,
        }
    }

    /// Tells what the reservation still has on these cells (expired holds purged first).
    pub async fn hold_state(&self, reservation_id: &str, cells: &[Cell]) -> CounterResult<HoldState> {
        match self {
            Self::Memory(m) => Ok(m.hold_state(reservation_id, cells)),
            Self::Redis(r) => r.hold_state(reservation_id, cells).await,
        }
    }

    /// Merges one SKU's durable state (rebuild after data loss).
    pub async fn restore(&self, state: &SkuRestore) -> CounterResult<Restored> {
        match self {
            Self::Memory(m) => Ok(m.restore(state)),
            Self::Redis(r) => r.restore(state).await,
        }
    }

    /// Removes every counter, hold and commitment of a SKU (clearing a foreign instance's data).
    pub async fn clear_sku(&self, sku: &str) -> CounterResult<()> {
        match self {
            Self::Memory(m) => {
                m.clear_sku(sku);
                Ok(())
            }
            Self::Redis(r) => r.clear_sku(sku).await,
        }
    }

    /// Lists every SKU that has counters.
    pub async fn all_skus(&self) -> CounterResult<Vec<String>> {
        match self {
            Self::Memory(m) => Ok(m.all_skus()),
            Self::Redis(r) => r.all_skus().await,
        }
    }
}

/// Sums lines naming the same cell, keeping first-seen order.
pub fn sum_cells(lines: &[CellUnits]) -> Vec<CellUnits> {
    let mut out: Vec<CellUnits> = Vec::new();
    for line in lines {
        match out.iter_mut().find(|l| l.cell == line.cell) {
            Some(existing) => existing.units += line.units,
            None => out.push(line.clone()),
        }
    }
    out
}

/// Returns the distinct SKUs in first-seen order.
pub(crate) fn unique_skus<'a>(skus: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for sku in skus {
        if !out.contains(sku) {
            out.push(sku.clone());
        }
    }
    out
}
