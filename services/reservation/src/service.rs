//! The reservation rules with I/O: claim the id durably, run the counter step, record the outcome.
//! Order of writes: the PENDING claim (idempotency arbiter) → the atomic counter step → the final
//! status, all before the reply. A confirm, release or extend is recorded durably before it is
//! answered. Whatever a crash leaves between those steps, the sweeper settles from the engine's
//! state: a stale claim becomes HELD (its holds are all there) or is released and dropped.
use std::{collections::HashSet, time::Duration};

use mesh_counters::{
    Cell, CellUnits, ConfirmOutcome, CounterEngine, ExtendOutcome, ReleasePart, ReserveOutcome, ReservePolicy,
};

use crate::{
    demand::DemandSender,
    domain::{NewReservation, Status},
    error::{ReservationError, ReservationResult},
    metrics,
    store::{ReservationStore, StoredReservation},
};

/// Most held-past-deadline reservations one sweep step looks at (a sweep repeats its step until
/// fewer are due, so 10,000 holds expiring at once are recorded in one sweep of a few steps).
const SWEEP_BATCH: u64 = 5_000;
/// A counter-store clock this far from ours is reported (B18: a jump expires holds early).
const CLOCK_SKEW_ALERT_MS: i64 = 5_000;

/// The reservation service's logic, shared by the gRPC handlers and the sweeper.
#[derive(Clone)]
pub struct Reservations {
    pub(crate) store: ReservationStore,
    pub(crate) engine: CounterEngine,
    pub(crate) demand: Option<DemandSender>,
    /// The longest a hold may last from its creation, extends included.
    pub(crate) max_hold_time_ms: i64,
    /// A sweep that expires more than this share of the live holds (and at least 10) logs a
    /// mass-expiry alert (B18: a clock jump on the counter store expires everything at once).
    pub(crate) mass_expiry_ratio: f64,
    /// A PENDING claim older than this was abandoned; the sweeper settles it.
    pub(crate) stale_claim_ms: i64,
}

/// What a confirm found.
#[derive(Debug)]
pub struct Confirmed {
    pub reservation: StoredReservation,
    pub already_confirmed: bool,
}

/// What an extend did.
#[derive(Debug)]
pub struct Extended {
    pub reservation: StoredReservation,
    pub capped: bool,
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    pub expired: usize,
    pub recovered: usize,
    pub claims_settled: usize,
    /// True when this sweep raised a mass-expiry alert.
    pub mass_expiry: bool,
    /// The counter store's clock minus ours, in ms (it decides expiry).
    pub clock_skew_ms: i64,
    /// How long until the earliest deadline still recorded HELD (counter store's clock), if any:
    /// the sweeper wakes then rather than at its next tick, so a hold is recorded EXPIRED soon
    /// after its deadline whatever the interval.
    pub next_deadline_in_ms: Option<i64>,
}

impl Sweep {
    /// Reservations this sweep settled.
    pub fn settled(&self) -> usize {
        self.expired + self.recovered + self.claims_settled
    }
}

impl Reservations {
    /// Builds the logic over its store, the counters and an optional demand feed.
    pub fn new(store: ReservationStore, engine: CounterEngine, demand: Option<DemandSender>) -> Self {
        Self { store, engine, demand, max_hold_time_ms: 2 * 3_600_000, mass_expiry_ratio: 0.5, stale_claim_ms: 30_000 }
    }

    /// Sets the longest total hold time (extends included).
    pub fn with_max_hold_time(mut self, max_hold_time: Duration) -> Self {
        self.max_hold_time_ms = max_hold_time.as_millis() as i64;
        self
    }

    /// Sets how old a PENDING claim must be before the sweeper settles it.
    pub fn with_stale_claim_after(mut self, after: Duration) -> Self {
        self.stale_claim_ms = after.as_millis() as i64;
        self
    }

    async fn load(&self, reservation_id: &str) -> ReservationResult<StoredReservation> {
        self.store.get(reservation_id).await?.ok_or_else(|| ReservationError::NotFound(reservation_id.to_owned()))
    }

    /// Waits (up to `attempts` × 10 ms) for a concurrent call to record its transition out of HELD,
    /// returning the record once it has moved, or None if it is still held.
    async fn wait_while_held(
        &self,
        reservation_id: &str,
        attempts: u32,
    ) -> ReservationResult<Option<StoredReservation>> {
        for _ in 0..attempts {
            let current = self.load(reservation_id).await?;
            if current.status != Status::Held {
                return Ok(Some(current));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(None)
    }

    /// Replays the first answer for an existing reservation id.
    fn replay(existing: StoredReservation, new: &NewReservation) -> ReservationResult<StoredReservation> {
        if existing.body_hash != new.body_hash() {
            return Err(ReservationError::AlreadyExists(new.reservation_id.clone()));
        }
        match existing.status {
            Status::Pending => Err(ReservationError::InProgress(new.reservation_id.clone())),
            Status::Rejected => Err(ReservationError::refused("INSUFFICIENT_STOCK", existing.detail)),
            _ => Ok(existing),
        }
    }

    /// Holds the lines under the request's policy; idempotent by reservation id.
    pub async fn create(&self, new: &NewReservation) -> ReservationResult<StoredReservation> {
        let claimed_at = service_kit::time::now_ms();
        if !self.store.claim(new, claimed_at).await? {
            // Someone owns this id: wait briefly for its answer, then replay it.
            for _ in 0..50 {
                let Some(existing) = self.store.get(&new.reservation_id).await? else {
                    // The claim was just dropped (its reserve failed and was settled): retry.
                    return Err(ReservationError::InProgress(new.reservation_id.clone()));
                };
                if existing.status != Status::Pending || existing.body_hash != new.body_hash() {
                    return Self::replay(existing, new);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            return Err(ReservationError::InProgress(new.reservation_id.clone()));
        }
        let outcome = match self.engine.reserve_with(&new.reservation_id, &new.lines, new.ttl_ms, new.policy).await {
            Ok(outcome) => outcome,
            Err(error) => {
                self.abandon_claim(new).await;
                return Err(error.into());
            }
        };
        let (expires_at_ms, held) = match outcome {
            ReserveOutcome::Held { expires_at_ms, held } => (expires_at_ms, held),
            ReserveOutcome::AlreadyExists { .. } => {
                // An earlier attempt with this id (whose claim was dropped) left its holds: adopt
                // what is live, as the engine says.
                let state = self.engine.hold_state(&new.reservation_id, &new.cells()).await?;
                let held = new
                    .lines
                    .iter()
                    .zip(&state.cells)
                    .map(|(line, cell)| CellUnits { cell: line.cell.clone(), units: cell.held_units })
                    .collect();
                (state.earliest_deadline_ms(), held)
            }
            ReserveOutcome::Insufficient { shortages } => {
                // The record lists every short line; the reply names the first few.
                let detail = crate::error::describe_shortages(&shortages, usize::MAX);
                let detail = detail.trim_start_matches("INSUFFICIENT_STOCK: ");
                let error = ReservationError::InsufficientStock(shortages);
                self.store.reject(&new.reservation_id, "insufficient stock", detail).await?;
                tracing::debug!(reservation_id = %new.reservation_id, %detail, "reservation rejected");
                return Err(error);
            }
        };
        let hold_limit_ms = expires_at_ms - new.ttl_ms as i64 + self.max_hold_time_ms;
        let short: i64 = new.lines.iter().zip(&held).map(|(l, h)| l.units - h.units).sum();
        let reason = if short > 0 { format!("held ({short} units short)") } else { "held".to_owned() };
        let held_at = service_kit::time::now_ms();
        if !self.store.hold(&new.reservation_id, expires_at_ms, hold_limit_ms, &held, &reason, held_at).await? {
            return self.load(&new.reservation_id).await; // settled meanwhile: answer what is recorded
        }
        // The record is exactly this: answer without reading it back.
        Ok(StoredReservation {
            reservation_id: new.reservation_id.clone(),
            body_hash: new.body_hash(),
            order_id: new.order_id.clone(),
            channel_id: new.channel_id.clone(),
            status: Status::Held,
            expires_at_ms,
            released_units: 0,
            detail: String::new(),
            created_at_ms: claimed_at,
            ttl_ms: new.ttl_ms as i64,
            policy: new.policy,
            hold_limit_ms,
            lines: new
                .lines
                .iter()
                .zip(&held)
                .map(|(line, h)| crate::store::StoredLine {
                    cell: line.cell.clone(),
                    requested: line.units,
                    reserved: h.units,
                    released_units: 0,
                    released: false,
                })
                .collect(),
            history: vec![(Status::Held, held_at, reason)],
        })
    }

    /// After a failed counter step (its effect unknown: the script may have run before the
    /// connection broke), gives back whatever it may hold; only then is the claim dropped, so a
    /// retry starts fresh. If even that fails, the claim stays for the sweeper to settle.
    async fn abandon_claim(&self, new: &NewReservation) {
        match self.engine.release(&new.reservation_id, ReleasePart::Hold, &new.cells()).await {
            Ok(_) => {
                if let Err(error) = self.store.drop_claim(&new.reservation_id).await {
                    tracing::warn!(%error, "could not drop the claim of a failed reserve; the sweeper will");
                }
            }
            Err(error) => {
                tracing::warn!(%error, reservation_id = %new.reservation_id, "failed reserve left its claim for the sweeper")
            }
        }
    }

    /// Turns a live hold into a commitment; a second confirm is answered as already confirmed.
    pub async fn confirm(&self, reservation_id: &str, occurred_at_ms: Option<i64>) -> ReservationResult<Confirmed> {
        let mut reservation = self.load(reservation_id).await?;
        'attempts: for attempt in 0..3 {
            match reservation.status {
                Status::Confirmed => return Ok(Confirmed { reservation, already_confirmed: true }),
                Status::Held => {}
                Status::Pending => return Err(ReservationError::InProgress(reservation_id.to_owned())),
                status => return Err(ended(reservation_id, status)),
            }
            let cells = reservation.cells();
            if cells.is_empty() {
                // Read between a concurrent release's status and line updates: wait for its record.
                if let Some(current) = self.wait_while_held(reservation_id, 10).await? {
                    reservation = current;
                    continue;
                }
                return Err(ReservationError::InProgress(reservation_id.to_owned()));
            }
            let outcome = self.engine.confirm(reservation_id, &cells).await?;
            match outcome {
                ConfirmOutcome::Confirmed { .. } => return self.record_confirm(reservation, occurred_at_ms).await,
                ConfirmOutcome::AlreadyConfirmed { .. } => {
                    // A concurrent confirm won the counter step: let it record the transition (and
                    // the demand); only if it never does (it crashed) record it here.
                    if let Some(current) = self.wait_while_held(reservation_id, 100).await? {
                        return Ok(Confirmed { reservation: current, already_confirmed: true });
                    }
                    self.store
                        .transition(reservation_id, &[Status::Held], Status::Confirmed, "confirmed (recovered)", None)
                        .await?;
                    return Ok(Confirmed { reservation: self.load(reservation_id).await?, already_confirmed: true });
                }
                ConfirmOutcome::HoldMissing { now_ms } => {
                    if now_ms >= reservation.expires_at_ms {
                        if self.settle_ended_hold(&reservation, "expired before confirm").await? == Status::Confirmed {
                            return Ok(Confirmed {
                                reservation: self.load(reservation_id).await?,
                                already_confirmed: true,
                            });
                        }
                        return Err(ReservationError::refused(
                            "HOLD_EXPIRED",
                            format!("hold {reservation_id} expired before it was confirmed"),
                        ));
                    }
                    // Released (in whole or in part) by a concurrent call whose record may trail
                    // by a moment, or lost with the counter store's data.
                    let current = self.load(reservation_id).await?;
                    if current.status == Status::Held
                        && !current.cells().is_empty()
                        && current.cells() != cells
                        && attempt < 2
                    {
                        reservation = current; // some lines were released meanwhile: confirm the rest
                        continue;
                    }
                    if attempt < 2 && self.engine.hold_state(reservation_id, &cells).await?.live_cells() > 0 {
                        // Part of the hold is live: a concurrent release of some lines took the
                        // rest and its record trails by a moment. Confirm what it leaves.
                        for _ in 0..50 {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            let current = self.load(reservation_id).await?;
                            if current.status != Status::Held || current.cells() != cells {
                                reservation = current;
                                continue 'attempts;
                            }
                        }
                        return Err(ReservationError::InProgress(reservation_id.to_owned()));
                    }
                    if let Some(current) = self.wait_while_held(reservation_id, 10).await? {
                        return match current.status {
                            Status::Confirmed => Ok(Confirmed { reservation: current, already_confirmed: true }),
                            status => Err(ended(reservation_id, status)),
                        };
                    }
                    return Err(ReservationError::refused(
                        "HOLD_LOST",
                        format!(
                            "hold {reservation_id} is not in the counter store (its data was lost); it cannot be confirmed"
                        ),
                    ));
                }
            }
        }
        Err(ReservationError::InProgress(reservation_id.to_owned()))
    }

    async fn record_confirm(
        &self,
        reservation: StoredReservation,
        occurred_at_ms: Option<i64>,
    ) -> ReservationResult<Confirmed> {
        let reservation_id = reservation.reservation_id.as_str();
        // The counters hold the commitment now; a release can no longer take it (it only releases
        // holds of held records), so this transition is ours unless a duplicate confirm recorded it.
        let moved =
            self.store.transition(reservation_id, &[Status::Held], Status::Confirmed, "confirmed", None).await?;
        let mut current = self.load(reservation_id).await?;
        let confirmed_at = current.history.iter().rposition(|(status, _, _)| *status == Status::Confirmed);
        let Some(confirmed_at) = confirmed_at else {
            // The record ended first (the sweeper saw the deadline pass while this confirm was in
            // flight): it stays ended, and the commitment this call made is given back.
            tracing::warn!(%reservation_id, status = ?current.status, "confirm lost the race with the record's end; giving its commitment back");
            self.engine.release(reservation_id, ReleasePart::Commitment, &reservation.cells()).await?;
            return Err(ended(reservation_id, current.status));
        };
        if current.status != Status::Confirmed {
            // A racing release cancelled it right after: answer with the state the confirm made.
            current.status = Status::Confirmed;
            current.history.truncate(confirmed_at + 1);
        }
        if moved && let Some(demand) = &self.demand {
            demand.send(&reservation, occurred_at_ms).await;
        }
        Ok(Confirmed { reservation: current, already_confirmed: !moved })
    }

    /// Settles a HELD record whose hold is no longer whole in the counters. If every cell is
    /// committed, a confirm got there (perhaps still recording it, perhaps crashed): it is recorded
    /// CONFIRMED. Otherwise whatever is left (a hold a later deadline kept alive on another slot, a
    /// commitment a confirm that failed halfway left) is given back and the record is EXPIRED, so
    /// an ended record never leaves units held or committed. Returns the status it recorded.
    async fn settle_ended_hold(&self, reservation: &StoredReservation, reason: &str) -> ReservationResult<Status> {
        let (reservation_id, cells) = (&reservation.reservation_id, reservation.cells());
        let state = self.engine.hold_state(reservation_id, &cells).await?;
        if !cells.is_empty() && state.committed_cells() == cells.len() {
            self.store
                .transition(reservation_id, &[Status::Held], Status::Confirmed, "confirmed (recovered)", None)
                .await?;
            return Ok(Status::Confirmed);
        }
        self.engine.release(reservation_id, ReleasePart::Hold, &cells).await?;
        if state.committed_cells() > 0 {
            self.engine.release(reservation_id, ReleasePart::Commitment, &cells).await?;
        }
        self.store.transition(reservation_id, &[Status::Held], Status::Expired, reason, None).await?;
        Ok(Status::Expired)
    }

    /// Releases some lines (`lines` non-empty) or the whole reservation: a live hold returns its
    /// units, a confirmed one its unshipped units. Releasing what is already released changes
    /// nothing and returns 0 units.
    pub async fn release(
        &self,
        reservation_id: &str,
        reason: &str,
        lines: &[Cell],
    ) -> ReservationResult<(StoredReservation, i64)> {
        let reservation = self.load(reservation_id).await?;
        for (i, cell) in lines.iter().enumerate() {
            if !reservation.lines.iter().any(|l| l.cell == *cell) {
                return Err(ReservationError::invalid(
                    format!("lines[{i}]"),
                    format!("{}@{} is not a line of reservation {reservation_id}", cell.sku, cell.location),
                ));
            }
        }
        let active = reservation.cells();
        let chosen: Vec<Cell> = if lines.is_empty() {
            active.clone()
        } else {
            let named: HashSet<&Cell> = lines.iter().collect();
            active.iter().filter(|c| named.contains(c)).cloned().collect()
        };
        match reservation.status {
            Status::Pending => Err(ReservationError::InProgress(reservation_id.to_owned())),
            Status::Held | Status::Confirmed if !lines.is_empty() && chosen.is_empty() => Ok((reservation, 0)),
            Status::Held | Status::Confirmed if chosen.len() < active.len() => {
                self.release_some(reservation, &chosen, reason).await
            }
            Status::Held => self.release_hold(reservation, reason).await,
            Status::Confirmed => self.cancel_commitment(reservation, reason).await,
            // A repeated release: nothing more to give back.
            Status::Released => Ok((reservation, 0)),
            status @ (Status::Expired | Status::Rejected) => Err(ended(reservation_id, status)),
        }
    }

    /// Gives back some lines of a held or confirmed reservation; it stays in its status.
    async fn release_some(
        &self,
        reservation: StoredReservation,
        cells: &[Cell],
        reason: &str,
    ) -> ReservationResult<(StoredReservation, i64)> {
        let reservation_id = reservation.reservation_id.clone();
        let part = if reservation.status == Status::Held { ReleasePart::Hold } else { ReleasePart::Commitment };
        let released = self.engine.release(&reservation_id, part, cells).await?;
        let mut total = released.hold_units + released.committed_units;
        let mut per_line: Vec<(Cell, i64)> = cells.iter().cloned().zip(released.per_cell.iter().copied()).collect();
        let mut committed_meanwhile = Vec::new();
        if part == ReleasePart::Hold && per_line.iter().any(|(_, units)| *units == 0) {
            // A hold that was not there: expired (nothing to give back), or turned into a
            // commitment by a confirm racing this call; the latter is cancelled once recorded.
            let zero: Vec<Cell> = per_line.iter().filter(|(_, u)| *u == 0).map(|(c, _)| c.clone()).collect();
            let state = self.engine.hold_state(&reservation_id, &zero).await?;
            committed_meanwhile = zero
                .iter()
                .zip(&state.cells)
                .filter(|(_, c)| c.committed_units > 0)
                .map(|(cell, _)| cell.clone())
                .collect();
            per_line.retain(|(cell, _)| !committed_meanwhile.contains(cell));
        }
        if !per_line.is_empty()
            && !self.store.release_lines(&reservation_id, reservation.status, &per_line, false, reason).await?
        {
            // It moved on meanwhile (confirmed, released, expired): the counters already tell the
            // truth; say what the record says now.
            tracing::warn!(%reservation_id, "lines released while the reservation changed status");
        }
        if !committed_meanwhile.is_empty() {
            match self.wait_while_held(&reservation_id, 100).await? {
                Some(current) if current.status == Status::Confirmed => {
                    let (_, units) = Box::pin(self.release_some(current, &committed_meanwhile, reason)).await?;
                    total += units;
                }
                Some(_) => {}
                None => return Err(ReservationError::InProgress(reservation_id)),
            }
        }
        Ok((self.load(&reservation_id).await?, total))
    }

    /// Releases a held reservation's hold. Only the hold is touched: if a racing confirm turned it
    /// into a commitment first, the release becomes a cancel of that commitment once it is recorded.
    async fn release_hold(
        &self,
        reservation: StoredReservation,
        reason: &str,
    ) -> ReservationResult<(StoredReservation, i64)> {
        let reservation_id = reservation.reservation_id.clone();
        let cells = reservation.cells();
        let released = self.engine.release(&reservation_id, ReleasePart::Hold, &cells).await?;
        if released.hold_units > 0 {
            let per_line: Vec<(Cell, i64)> = cells.iter().cloned().zip(released.per_cell.iter().copied()).collect();
            let moved = self.store.release_lines(&reservation_id, Status::Held, &per_line, true, reason).await?;
            if !moved {
                // Only the caller that removed the hold can end it this way; say so if it differs.
                tracing::error!(%reservation_id, "released a hold whose record had already moved on");
            }
            return Ok((self.load(&reservation_id).await?, released.hold_units));
        }
        let state = self.engine.hold_state(&reservation_id, &cells).await?;
        if state.committed_cells() > 0 {
            // A confirm won the race in the counters; wait for its record, then cancel it.
            return match self.wait_while_held(&reservation_id, 100).await? {
                Some(current) if current.status == Status::Confirmed => self.cancel_commitment(current, reason).await,
                Some(current) => Ok((current, 0)),
                None => Err(ReservationError::InProgress(reservation_id)),
            };
        }
        if state.now_ms < reservation.expires_at_ms {
            // Not expired: a concurrent release took the hold (its record follows in a moment), or
            // the counter store lost it (B23). Either way the reservation ends released.
            if let Some(current) = self.wait_while_held(&reservation_id, 50).await? {
                return Ok((current, 0));
            }
            let per_line: Vec<(Cell, i64)> = cells.iter().map(|c| (c.clone(), 0)).collect();
            self.store
                .release_lines(&reservation_id, Status::Held, &per_line, true, "released (the hold was lost)")
                .await?;
            return Ok((self.load(&reservation_id).await?, 0));
        }
        // Nothing live, nothing committed, deadline passed: the hold expired.
        self.store
            .transition(&reservation_id, &[Status::Held], Status::Expired, "expired before release", None)
            .await?;
        Ok((self.load(&reservation_id).await?, 0))
    }

    /// Cancels a confirmed reservation: only its unshipped units return.
    async fn cancel_commitment(
        &self,
        reservation: StoredReservation,
        reason: &str,
    ) -> ReservationResult<(StoredReservation, i64)> {
        let reservation_id = reservation.reservation_id.clone();
        let cells = reservation.cells();
        let released = self.engine.release(&reservation_id, ReleasePart::Commitment, &cells).await?;
        if released.committed_units == 0 {
            let current = self.load(&reservation_id).await?;
            if current.status != Status::Confirmed {
                return Ok((current, 0)); // cancelled concurrently: a second cancel does nothing
            }
            return Err(ReservationError::refused(
                "FULLY_SHIPPED",
                format!("reservation {reservation_id} has no unshipped units to release"),
            ));
        }
        let per_line: Vec<(Cell, i64)> = cells.iter().cloned().zip(released.per_cell.iter().copied()).collect();
        self.store.release_lines(&reservation_id, Status::Confirmed, &per_line, true, reason).await?;
        Ok((self.load(&reservation_id).await?, released.committed_units))
    }

    /// Moves a live hold's deadline to now + `ttl_ms` (never earlier), capped at its hold limit.
    pub async fn extend(&self, reservation_id: &str, ttl_ms: u64) -> ReservationResult<Extended> {
        let reservation = self.load(reservation_id).await?;
        match reservation.status {
            Status::Held => {}
            Status::Pending => return Err(ReservationError::InProgress(reservation_id.to_owned())),
            status => return Err(ended(reservation_id, status)),
        }
        let cells = reservation.cells();
        if cells.is_empty() {
            return Err(ReservationError::InProgress(reservation_id.to_owned()));
        }
        match self.engine.extend(reservation_id, &cells, ttl_ms, reservation.hold_limit_ms).await? {
            ExtendOutcome::Extended { expires_at_ms, now_ms } => {
                let capped = now_ms.saturating_add(ttl_ms as i64) > reservation.hold_limit_ms;
                if capped && expires_at_ms <= reservation.expires_at_ms {
                    return Err(ReservationError::refused(
                        "HOLD_LIMIT_REACHED",
                        format!(
                            "hold {reservation_id} already lasts until its limit ({} ms after it was created)",
                            self.max_hold_time_ms
                        ),
                    ));
                }
                if expires_at_ms != reservation.expires_at_ms {
                    let until = service_kit::time::to_timestamp(expires_at_ms);
                    let reason = format!("extended to {until}{}", if capped { " (capped)" } else { "" });
                    self.store.set_deadline(reservation_id, expires_at_ms, &reason).await?;
                }
                Ok(Extended { reservation: self.load(reservation_id).await?, capped })
            }
            ExtendOutcome::HoldMissing { now_ms } => {
                if now_ms >= reservation.expires_at_ms {
                    if self.settle_ended_hold(&reservation, "expired before extend").await? == Status::Confirmed {
                        return Err(ended(reservation_id, Status::Confirmed));
                    }
                    return Err(ReservationError::refused(
                        "HOLD_EXPIRED",
                        format!("hold {reservation_id} expired before it was extended"),
                    ));
                }
                if let Some(current) = self.wait_while_held(reservation_id, 10).await? {
                    return Err(ended(reservation_id, current.status));
                }
                Err(ReservationError::refused(
                    "HOLD_LOST",
                    format!("hold {reservation_id} is not in the counter store (its data was lost)"),
                ))
            }
        }
    }

    /// After a restart, settles HELD records a crash left behind their counters: a confirm that
    /// reached the counters but not the record is recorded CONFIRMED; a hold the counters no longer
    /// have (a release that crashed before its record, or data lost with the counter store) is
    /// recorded EXPIRED. Returns how many it settled.
    pub async fn recover_after_restart(&self, started_ms: i64) -> ReservationResult<usize> {
        let mut settled = 0;
        let mut after = String::new();
        loop {
            let (ids, last) = self.store.held_changed_before(started_ms, &after, 500).await?;
            let Some(last) = last else { break };
            after = last;
            for reservation_id in ids {
                let Some(reservation) = self.store.get(&reservation_id).await? else { continue };
                let cells = reservation.cells();
                let state = self.engine.hold_state(&reservation_id, &cells).await?;
                if cells.is_empty() || state.live_cells() == cells.len() {
                    continue;
                }
                self.settle_ended_hold(&reservation, "hold lost (recovered after restart)").await?;
                settled += 1;
            }
        }
        Ok(settled)
    }

    /// Records holds whose deadline passed as EXPIRED (in batches: one snapshot per SKU slot and one
    /// transaction per batch, so 10,000 holds expiring at once are settled in one or two sweeps),
    /// recovers confirms a crash left unrecorded, and settles stale claims.
    pub async fn sweep(&self) -> ReservationResult<Sweep> {
        let now = crate::store::now_ms();
        // Deadlines are on the counter store's clock (the engine sets them), so that clock says
        // which are due; claims carry this service's clock.
        let store_now = self.engine.hold_state("clock", &[]).await?.now_ms;
        let mut sweep = Sweep { clock_skew_ms: store_now - now, ..Sweep::default() };
        if sweep.clock_skew_ms.abs() > CLOCK_SKEW_ALERT_MS {
            tracing::error!(
                skew_ms = sweep.clock_skew_ms,
                "CLOCK_SKEW: the counter store's clock differs from this service's; holds expire by the counter store's clock"
            );
        }
        // Batch after batch in deadline order; the next batch is read while this one is settled.
        let mut live_on_swept_skus = 0usize;
        let mut due = self.store.held_past_deadline_with_lines(store_now, None, SWEEP_BATCH).await?;
        for _ in 0..10 {
            if due.is_empty() {
                break;
            }
            // A full batch may have more behind it: read on from its last (deadline, id).
            let after = due.last().filter(|_| due.len() == SWEEP_BATCH as usize).map(|(id, e, _)| (*e, id.clone()));
            let next = async {
                match after {
                    Some(after) => self.store.held_past_deadline_with_lines(store_now, Some(after), SWEEP_BATCH).await,
                    None => Ok(Vec::new()),
                }
            };
            let (next, settled) = tokio::join!(next, self.settle_due(due, &mut sweep));
            live_on_swept_skus += settled?;
            due = next?;
        }
        // The share of every hold the mesh had (all SKUs), not only of those on the SKUs that
        // had holds due: a batch of same-TTL holds ending together is normal, all of them is not.
        // The SKUs the sweep looked at decide first (free), the count of every hold only then.
        let expired = sweep.expired;
        let mass = |still_held: usize| {
            expired >= 10 && expired as f64 / (expired + still_held).max(1) as f64 > self.mass_expiry_ratio
        };
        let mut still_held = live_on_swept_skus;
        if mass(still_held) {
            still_held = self.store.count_held().await?;
        }
        metrics::HOLDS_EXPIRED.inc_by(expired as u64);
        metrics::CLOCK_SKEW_MS.set(sweep.clock_skew_ms);
        if mass(still_held) {
            sweep.mass_expiry = true;
            metrics::MASS_EXPIRY_ALERTS.inc();
            tracing::error!(
                expired = sweep.expired,
                still_held,
                "MASS_EXPIRY: one sweep expired more than {:.0}% of the holds it saw; check the counter store's clock",
                self.mass_expiry_ratio * 100.0
            );
        }
        self.settle_stale_claims(now, &mut sweep).await?;
        sweep.next_deadline_in_ms = self.store.earliest_held_deadline().await?.map(|d| d - store_now);
        Ok(sweep)
    }

    /// Settles one batch of held-past-deadline records; returns how many holds the counters still
    /// have on the batch's SKUs.
    async fn settle_due(&self, due: Vec<(String, i64, Vec<Cell>)>, sweep: &mut Sweep) -> ReservationResult<usize> {
        let mut live_on_skus = 0;
        let mut skus: Vec<String> = due.iter().flat_map(|(_, _, cells)| cells.iter().map(|c| c.sku.clone())).collect();
        skus.sort();
        skus.dedup();
        let mut live: HashSet<(String, Cell)> = HashSet::new();
        let mut committed: HashSet<(String, Cell)> = HashSet::new();
        for chunk in skus.chunks(200) {
            for snapshot in self.engine.snapshot(chunk).await? {
                live_on_skus += snapshot.holds.len();
                for hold in snapshot.holds {
                    live.insert((hold.reservation_id, Cell::new(&snapshot.sku, hold.location)));
                }
                for commitment in snapshot.commitments {
                    committed.insert((commitment.reservation_id, Cell::new(&snapshot.sku, commitment.location)));
                }
            }
        }
        let mut expired = Vec::new();
        for (reservation_id, _, cells) in &due {
            let key = |c: &Cell| (reservation_id.clone(), c.clone());
            let live_now = cells.iter().any(|c| live.contains(&key(c)));
            let any_committed = cells.iter().any(|c| committed.contains(&key(c)));
            if !live_now && !any_committed {
                expired.push(reservation_id.clone()); // the common case, settled in one batch
                continue;
            }
            // Live (extended, or the counters' clock is behind ours), or committed (a confirm
            // in flight, crashed or half done): decide from a fresh look, one by one.
            let state = self.engine.hold_state(reservation_id, cells).await?;
            if state.live_cells() > 0 && state.committed_cells() == 0 {
                self.store.set_deadline(reservation_id, state.earliest_deadline_ms(), "deadline caught up").await?;
                continue;
            }
            let Some(reservation) = self.store.get(reservation_id).await? else { continue };
            match self.settle_ended_hold(&reservation, "expired").await? {
                Status::Confirmed => sweep.recovered += 1,
                _ => sweep.expired += 1,
            }
        }
        // In four statements at once: PostgreSQL spreads them over its cores.
        let chunk = expired.len().div_ceil(4).max(1);
        let moved = futures::future::try_join_all(expired.chunks(chunk).map(|c| self.store.expire_many(c))).await?;
        sweep.expired += moved.iter().sum::<usize>();
        Ok(live_on_skus)
    }

    /// Settles PENDING claims older than `stale_claim_after`.
    async fn settle_stale_claims(&self, now: i64, sweep: &mut Sweep) -> ReservationResult<()> {
        for reservation_id in self.store.stale_claims(now - self.stale_claim_ms, 100).await? {
            let Some(reservation) = self.store.get(&reservation_id).await? else { continue };
            let cells = reservation.all_cells();
            let state = self.engine.hold_state(&reservation_id, &cells).await?;
            let complete = match reservation.policy {
                ReservePolicy::AllOrNothing => state.live_cells() == cells.len(),
                ReservePolicy::Partial => state.live_cells() > 0,
            };
            if complete {
                let held: Vec<CellUnits> = cells
                    .iter()
                    .zip(&state.cells)
                    .map(|(cell, c)| CellUnits { cell: cell.clone(), units: c.held_units })
                    .collect();
                let deadline = state.earliest_deadline_ms();
                let limit = deadline - reservation.ttl_ms + self.max_hold_time_ms;
                self.store.hold(&reservation_id, deadline, limit, &held, "held (recovered)", now).await?;
            } else {
                // A reserve that crashed between slots, or whose counter step never ran.
                self.engine.release(&reservation_id, ReleasePart::Hold, &cells).await?;
                self.store.drop_claim(&reservation_id).await?;
            }
            sweep.claims_settled += 1;
        }
        Ok(())
    }
}

fn ended(reservation_id: &str, status: Status) -> ReservationError {
    match status {
        Status::Released => {
            ReservationError::refused("ALREADY_RELEASED", format!("reservation {reservation_id} was released"))
        }
        Status::Expired => ReservationError::refused("HOLD_EXPIRED", format!("hold {reservation_id} expired")),
        Status::Rejected => {
            ReservationError::refused("NOT_HELD", format!("reservation {reservation_id} was rejected; nothing is held"))
        }
        Status::Confirmed => {
            ReservationError::refused("ALREADY_CONFIRMED", format!("reservation {reservation_id} is confirmed"))
        }
        Status::Held | Status::Pending => ReservationError::InProgress(reservation_id.to_owned()),
    }
}
