//! The in-process counter engine of the embedded default: the same data and the same rules as the
//! Lua scripts, each operation one critical section under a `std::sync::Mutex` (never held across
//! an await, so a plain mutex is right). Its clock is injectable so tests can move time.
use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use crate::{
    Cell, CellCounters, CellHold, CellUnits, ConfirmOutcome, Entry, ExtendOutcome, HoldState, PhysicalChange,
    PhysicalOutcome, ReleasePart, Released, ReserveOutcome, ReservePolicy, Shortage, SkuSnapshot,
};

/// Milliseconds since the Unix epoch, as the engine sees them.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default()
    }
}

/// A clock that moves only when told (tests).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// Starts the clock at `start_ms`.
    pub fn new(start_ms: i64) -> Self {
        Self(AtomicI64::new(start_ms))
    }

    /// Moves the clock forward.
    pub fn advance_ms(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

struct CellState {
    counters: CellCounters,
    /// Version of the ledger position on_hand came from; -1 before the first physical change.
    version: i64,
}

impl Default for CellState {
    fn default() -> Self {
        Self { counters: CellCounters::default(), version: -1 }
    }
}

#[derive(Default)]
struct SkuState {
    cells: BTreeMap<String, CellState>,
    /// (reservation id, location) → (units, deadline ms)
    holds: BTreeMap<(String, String), (i64, i64)>,
    /// (reservation id, location) → units still committed
    commitments: BTreeMap<(String, String), i64>,
    /// Shipment event id → units it fulfilled (a fulfilment applies once per event).
    fulfilled_events: HashMap<String, i64>,
}

impl SkuState {
    fn purge_expired(&mut self, now: i64) {
        let expired: Vec<(String, String)> =
            self.holds.iter().filter(|(_, (_, deadline))| *deadline <= now).map(|(k, _)| k.clone()).collect();
        for key in expired {
            if let Some((units, _)) = self.holds.remove(&key) {
                self.cells.entry(key.1.clone()).or_default().counters.held -= units;
            }
        }
    }

    fn counters(&self, loc: &str) -> CellCounters {
        self.cells.get(loc).map(|c| c.counters).unwrap_or_default()
    }

    fn cell_mut(&mut self, loc: &str) -> &mut CellState {
        self.cells.entry(loc.to_owned()).or_default()
    }
}

/// The in-process engine.
pub struct MemoryEngine {
    clock: Arc<dyn Clock>,
    skus: Mutex<HashMap<String, SkuState>>,
}

impl MemoryEngine {
    /// Builds an empty engine on the given clock.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self { clock, skus: Mutex::new(HashMap::new()) }
    }

    fn with_skus<T>(&self, skus: &[&str], f: impl FnOnce(&mut HashMap<String, SkuState>, i64) -> T) -> T {
        // A poisoned lock means a panic inside a critical section; the data is plain counters
        // updated only after every check, so continuing with it is safe.
        let mut state = self.skus.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = self.clock.now_ms();
        for sku in skus {
            state.entry((*sku).to_owned()).or_default().purge_expired(now);
        }
        f(&mut state, now)
    }

    pub(crate) fn snapshot(&self, skus: &[String]) -> Vec<SkuSnapshot> {
        let names: Vec<&str> = skus.iter().map(String::as_str).collect();
        self.with_skus(&names, |state, _| {
            skus.iter()
                .map(|sku| {
                    let s = &state[sku];
                    SkuSnapshot {
                        sku: sku.clone(),
                        cells: s.cells.iter().map(|(loc, c)| (loc.clone(), c.counters)).collect(),
                        holds: s
                            .holds
                            .iter()
                            .map(|((rid, loc), (units, deadline))| Entry {
                                reservation_id: rid.clone(),
                                location: loc.clone(),
                                units: *units,
                                deadline_ms: *deadline,
                            })
                            .collect(),
                        commitments: s
                            .commitments
                            .iter()
                            .map(|((rid, loc), units)| Entry {
                                reservation_id: rid.clone(),
                                location: loc.clone(),
                                units: *units,
                                deadline_ms: 0,
                            })
                            .collect(),
                    }
                })
                .collect()
        })
    }

    pub(crate) fn apply_physical(&self, change: &PhysicalChange) -> crate::CounterResult<PhysicalOutcome> {
        self.with_skus(&[change.cell.sku.as_str()], |state, _| {
            let sku = state.entry(change.cell.sku.clone()).or_default();
            let loc = change.cell.location.as_str();
            if sku.cells.get(loc).is_none_or(|c| c.version < 0) && change.version > 1 {
                return Err(crate::CounterError::Lost(format!(
                    "COUNTERS_LOST cell {loc} has no counters; run inventory-mesh rebuild"
                )));
            }
            let cell = sku.cell_mut(loc);
            if change.version > cell.version {
                cell.counters.on_hand = change.on_hand;
                cell.version = change.version;
            }
            let mut fulfilled = 0;
            let done =
                (!change.event_id.is_empty()).then(|| sku.fulfilled_events.get(&change.event_id).copied()).flatten();
            if let Some(done) = done {
                fulfilled = done;
            } else if let Some((rid, units)) = &change.fulfil {
                let key = (rid.clone(), loc.to_owned());
                let remaining = sku.commitments.get(&key).copied().unwrap_or(0);
                fulfilled = remaining.min(*units).max(0);
                if fulfilled > 0 {
                    sku.cell_mut(loc).counters.committed -= fulfilled;
                    if remaining == fulfilled {
                        sku.commitments.remove(&key);
                    } else {
                        sku.commitments.insert(key, remaining - fulfilled);
                    }
                }
                if !change.event_id.is_empty() {
                    sku.fulfilled_events.insert(change.event_id.clone(), fulfilled);
                }
            }
            Ok(PhysicalOutcome { counters: sku.counters(loc), fulfilled_units: fulfilled })
        })
    }

    pub(crate) fn set_safety(&self, cell: &Cell, safety: i64) -> CellCounters {
        self.with_skus(&[cell.sku.as_str()], |state, _| {
            let sku = state.entry(cell.sku.clone()).or_default();
            sku.cell_mut(&cell.location).counters.safety = safety;
            sku.counters(&cell.location)
        })
    }

    pub(crate) fn reserve(
        &self,
        reservation_id: &str,
        lines: &[CellUnits],
        ttl_ms: u64,
        policy: ReservePolicy,
    ) -> ReserveOutcome {
        let names: Vec<&str> = lines.iter().map(|l| l.cell.sku.as_str()).collect();
        self.with_skus(&names, |state, now| {
            // Sum demand per cell before any check (B04).
            let mut demand: Vec<(Cell, i64)> = Vec::new();
            for line in lines {
                match demand.iter_mut().find(|(cell, _)| *cell == line.cell) {
                    Some((_, units)) => *units += line.units,
                    None => demand.push((line.cell.clone(), line.units)),
                }
            }
            for (cell, _) in &demand {
                let sku = &state[&cell.sku];
                let key = (reservation_id.to_owned(), cell.location.clone());
                if let Some((_, deadline)) = sku.holds.get(&key) {
                    return ReserveOutcome::AlreadyExists { expires_at_ms: *deadline };
                }
                if sku.commitments.contains_key(&key) {
                    return ReserveOutcome::AlreadyExists { expires_at_ms: 0 };
                }
            }
            let shortages: Vec<Shortage> = demand
                .iter()
                .filter_map(|(cell, units)| {
                    let available = state[&cell.sku].counters(&cell.location).atp();
                    (available < *units).then(|| Shortage { cell: cell.clone(), requested: *units, available })
                })
                .collect();
            let take: Vec<CellUnits> = demand
                .iter()
                .map(|(cell, units)| {
                    let available = state[&cell.sku].counters(&cell.location).atp();
                    CellUnits { cell: cell.clone(), units: (*units).min(available.max(0)) }
                })
                .collect();
            let total: i64 = take.iter().map(|t| t.units).sum();
            if (policy == ReservePolicy::AllOrNothing && !shortages.is_empty()) || total == 0 {
                return ReserveOutcome::Insufficient { shortages };
            }
            let deadline = now + ttl_ms as i64;
            for line in take.iter().filter(|t| t.units > 0) {
                let sku = state.entry(line.cell.sku.clone()).or_default();
                sku.cell_mut(&line.cell.location).counters.held += line.units;
                sku.holds.insert((reservation_id.to_owned(), line.cell.location.clone()), (line.units, deadline));
            }
            ReserveOutcome::Held { expires_at_ms: deadline, held: take }
        })
    }

    pub(crate) fn confirm(&self, reservation_id: &str, cells: &[Cell]) -> ConfirmOutcome {
        let names: Vec<&str> = cells.iter().map(|c| c.sku.as_str()).collect();
        self.with_skus(&names, |state, now| {
            let key = |cell: &Cell| (reservation_id.to_owned(), cell.location.clone());
            if cells.is_empty() {
                return ConfirmOutcome::HoldMissing { now_ms: now };
            }
            let live = cells.iter().filter(|c| state[&c.sku].holds.contains_key(&key(c))).count();
            let committed = cells.iter().filter(|c| state[&c.sku].commitments.contains_key(&key(c))).count();
            if live < cells.len() {
                if live == 0 && committed == cells.len() {
                    return ConfirmOutcome::AlreadyConfirmed { now_ms: now };
                }
                return ConfirmOutcome::HoldMissing { now_ms: now };
            }
            for cell in cells {
                let sku = state.entry(cell.sku.clone()).or_default();
                if let Some((units, _)) = sku.holds.remove(&key(cell)) {
                    let counters = &mut sku.cell_mut(&cell.location).counters;
                    counters.held -= units;
                    counters.committed += units;
                    sku.commitments.insert(key(cell), units);
                }
            }
            ConfirmOutcome::Confirmed { now_ms: now }
        })
    }

    pub(crate) fn release(&self, reservation_id: &str, part: ReleasePart, cells: &[Cell]) -> Released {
        let names: Vec<&str> = cells.iter().map(|c| c.sku.as_str()).collect();
        self.with_skus(&names, |state, _| {
            let mut released = Released::default();
            for cell in cells {
                let key = (reservation_id.to_owned(), cell.location.clone());
                let sku = state.entry(cell.sku.clone()).or_default();
                let mut cell_units = 0;
                if part == ReleasePart::Hold {
                    if let Some((units, _)) = sku.holds.remove(&key) {
                        sku.cell_mut(&cell.location).counters.held -= units;
                        released.hold_units += units;
                        cell_units = units;
                    }
                } else if let Some(units) = sku.commitments.remove(&key) {
                    sku.cell_mut(&cell.location).counters.committed -= units;
                    released.committed_units += units;
                    cell_units = units;
                }
                released.per_cell.push(cell_units);
            }
            released
        })
    }

    pub(crate) fn hold_state(&self, reservation_id: &str, cells: &[Cell]) -> HoldState {
        let names: Vec<&str> = cells.iter().map(|c| c.sku.as_str()).collect();
        self.with_skus(&names, |state, now| HoldState {
            cells: cells
                .iter()
                .map(|cell| {
                    let key = (reservation_id.to_owned(), cell.location.clone());
                    let sku = &state[&cell.sku];
                    let (held_units, deadline_ms) = sku.holds.get(&key).copied().unwrap_or((0, 0));
                    CellHold {
                        held_units,
                        deadline_ms,
                        committed_units: sku.commitments.get(&key).copied().unwrap_or(0),
                    }
                })
                .collect(),
            now_ms: now,
        })
    }

    pub(crate) fn extend(&self, reservation_id: &str, cells: &[Cell], ttl_ms: u64, cap_ms: i64) -> ExtendOutcome {
        let names: Vec<&str> = cells.iter().map(|c| c.sku.as_str()).collect();
        self.with_skus(&names, |state, now| {
            let key = |cell: &Cell| (reservation_id.to_owned(), cell.location.clone());
            if cells.is_empty() || cells.iter().any(|c| !state[&c.sku].holds.contains_key(&key(c))) {
                return ExtendOutcome::HoldMissing { now_ms: now };
            }
            let wanted = now.saturating_add(ttl_ms as i64).min(cap_ms);
            let mut earliest = i64::MAX;
            for cell in cells {
                if let Some((_, deadline)) = state.entry(cell.sku.clone()).or_default().holds.get_mut(&key(cell)) {
                    *deadline = (*deadline).max(wanted);
                    earliest = earliest.min(*deadline);
                }
            }
            ExtendOutcome::Extended { expires_at_ms: earliest, now_ms: now }
        })
    }

    pub(crate) fn all_skus(&self) -> Vec<String> {
        let state = self.skus.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut skus: Vec<String> = state.iter().filter(|(_, s)| !s.cells.is_empty()).map(|(k, _)| k.clone()).collect();
        skus.sort();
        skus
    }
}

impl MemoryEngine {
    /// Merges one SKU's durable state with the same rules as `restore.lua`.
    pub(crate) fn restore(&self, restore: &crate::SkuRestore) -> crate::Restored {
        self.with_skus(&[restore.sku.as_str()], |state, now| {
            let sku = state.entry(restore.sku.clone()).or_default();
            let mut done = crate::Restored::default();
            for (loc, on_hand, version, safety) in &restore.cells {
                let cell = sku.cell_mut(loc);
                if *version > cell.version {
                    cell.counters.on_hand = *on_hand;
                    cell.counters.safety = *safety;
                    cell.version = *version;
                    done.cells_written += 1;
                }
            }
            for hold in &restore.holds {
                let key = (hold.reservation_id.clone(), hold.location.clone());
                if hold.deadline_ms > now && !sku.holds.contains_key(&key) && !sku.commitments.contains_key(&key) {
                    sku.cell_mut(&hold.location).counters.held += hold.units;
                    sku.holds.insert(key, (hold.units, hold.deadline_ms));
                    done.holds_added += 1;
                }
            }
            for commitment in &restore.commitments {
                let key = (commitment.reservation_id.clone(), commitment.location.clone());
                if commitment.units > 0 && !sku.commitments.contains_key(&key) && !sku.holds.contains_key(&key) {
                    sku.cell_mut(&commitment.location).counters.committed += commitment.units;
                    sku.commitments.insert(key, commitment.units);
                    done.commitments_added += 1;
                }
            }
            done
        })
    }

    pub(crate) fn clear_sku(&self, sku: &str) {
        self.skus.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(sku);
    }
}
