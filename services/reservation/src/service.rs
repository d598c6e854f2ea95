//! The reservation rules with I/O: claim the id durably, run the counter step, record the outcome.
//! Order of writes: the PENDING claim (idempotency arbiter) → the atomic counter step → the final
//! status, all before the reply. A confirm or release is recorded durably before it is answered.
use std::time::Duration;

use mesh_counters::{Cell, ConfirmOutcome, CounterEngine, ReleasePart, ReserveOutcome};

use crate::{
    demand::DemandSender,
    domain::{NewReservation, Status},
    error::{ReservationError, ReservationResult},
    store::{ReservationStore, StoredReservation},
};

/// The reservation service's logic, shared by the gRPC handlers and the sweeper.
#[derive(Clone)]
pub struct Reservations {
    pub(crate) store: ReservationStore,
    pub(crate) engine: CounterEngine,
    pub(crate) demand: Option<DemandSender>,
}

/// What a confirm found.
pub struct Confirmed {
    pub reservation: StoredReservation,
    pub already_confirmed: bool,
}

impl Reservations {
    /// Builds the logic over its store, the counters and an optional demand feed.
    pub fn new(store: ReservationStore, engine: CounterEngine, demand: Option<DemandSender>) -> Self {
        Self { store, engine, demand }
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

    /// Holds every line or none; idempotent by reservation id.
    pub async fn create(&self, new: &NewReservation) -> ReservationResult<StoredReservation> {
        if !self.store.claim(new).await? {
            // Someone owns this id: wait briefly for its answer, then replay it.
            for _ in 0..50 {
                let existing = self.load(&new.reservation_id).await?;
                if existing.status != Status::Pending || existing.body_hash != new.body_hash() {
                    return Self::replay(existing, new);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            return Err(ReservationError::InProgress(new.reservation_id.clone()));
        }
        let outcome = match self.engine.reserve(&new.reservation_id, &new.lines, new.ttl_ms).await {
            Ok(outcome) => outcome,
            Err(error) => {
                // The counter step did not run (or its effect is unknown: the sweeper then finds
                // the stale claim and settles it from the engine's state).
                if let Err(drop_error) = self.store.drop_claim(&new.reservation_id).await {
                    tracing::warn!(error = %drop_error, "could not drop the claim of a failed reserve");
                }
                return Err(error.into());
            }
        };
        match outcome {
            ReserveOutcome::Held { expires_at_ms } | ReserveOutcome::AlreadyExists { expires_at_ms } => {
                self.store
                    .transition(
                        &new.reservation_id,
                        &[Status::Pending],
                        Status::Held,
                        "held",
                        Some(expires_at_ms),
                        0,
                        None,
                    )
                    .await?;
                self.load(&new.reservation_id).await
            }
            ReserveOutcome::Insufficient { shortages } => {
                let error = ReservationError::InsufficientStock(shortages);
                let detail = error.to_string();
                let detail = detail.trim_start_matches("INSUFFICIENT_STOCK: ");
                self.store
                    .transition(
                        &new.reservation_id,
                        &[Status::Pending],
                        Status::Rejected,
                        "insufficient stock",
                        None,
                        0,
                        Some(detail),
                    )
                    .await?;
                tracing::info!(reservation_id = %new.reservation_id, %detail, "reservation rejected");
                Err(error)
            }
        }
    }

    /// Turns a live hold into a commitment; a second confirm is answered as already confirmed.
    pub async fn confirm(&self, reservation_id: &str, occurred_at_ms: Option<i64>) -> ReservationResult<Confirmed> {
        let reservation = self.load(reservation_id).await?;
        match reservation.status {
            Status::Confirmed => return Ok(Confirmed { reservation, already_confirmed: true }),
            Status::Held => {}
            Status::Pending => return Err(ReservationError::InProgress(reservation_id.to_owned())),
            status => return Err(ended(reservation_id, status)),
        }
        let outcome = self.engine.confirm(reservation_id, &reservation.cells()).await?;
        match outcome {
            ConfirmOutcome::Confirmed { .. } => {
                // The counters hold the commitment now; a release can no longer take it (it only
                // releases holds of held records), so this transition is ours unless a duplicate
                // confirm recorded it first.
                let moved = self
                    .store
                    .transition(reservation_id, &[Status::Held], Status::Confirmed, "confirmed", None, 0, None)
                    .await?;
                let mut current = self.load(reservation_id).await?;
                let confirmed_at = current.history.iter().rposition(|(status, _, _)| *status == Status::Confirmed);
                let Some(confirmed_at) = confirmed_at else {
                    tracing::error!(%reservation_id, status = ?current.status, "confirmed in the counters but recorded otherwise");
                    return Err(ReservationError::InProgress(reservation_id.to_owned()));
                };
                if current.status != Status::Confirmed {
                    // A racing release cancelled it right after: answer with the state the confirm made.
                    current.status = Status::Confirmed;
                    current.history.truncate(confirmed_at + 1);
                }
                if moved {
                    if let Some(demand) = &self.demand {
                        demand.send(&reservation, occurred_at_ms).await;
                    }
                }
                Ok(Confirmed { reservation: current, already_confirmed: !moved })
            }
            ConfirmOutcome::AlreadyConfirmed { .. } => {
                // A concurrent confirm won the counter step: let it record the transition (and
                // the demand); only if it never does (it crashed) record it here.
                if let Some(current) = self.wait_while_held(reservation_id, 100).await? {
                    return Ok(Confirmed { reservation: current, already_confirmed: true });
                }
                self.store
                    .transition(
                        reservation_id,
                        &[Status::Held],
                        Status::Confirmed,
                        "confirmed (recovered)",
                        None,
                        0,
                        None,
                    )
                    .await?;
                Ok(Confirmed { reservation: self.load(reservation_id).await?, already_confirmed: true })
            }
            ConfirmOutcome::HoldMissing { now_ms } => {
                if now_ms >= reservation.expires_at_ms {
                    self.store
                        .transition(
                            reservation_id,
                            &[Status::Held],
                            Status::Expired,
                            "expired before confirm",
                            None,
                            0,
                            None,
                        )
                        .await?;
                    return Err(ReservationError::refused(
                        "HOLD_EXPIRED",
                        format!("hold {reservation_id} expired before it was confirmed"),
                    ));
                }
                // Released by a concurrent call (its record may trail by a moment), or lost with
                // the counter store's data: either way, never confirmable.
                if let Some(current) = self.wait_while_held(reservation_id, 10).await? {
                    return match current.status {
                        Status::Confirmed => Ok(Confirmed { reservation: current, already_confirmed: true }),
                        status => Err(ended(reservation_id, status)),
                    };
                }
                Err(ReservationError::refused(
                    "HOLD_LOST",
                    format!("hold {reservation_id} is not in the counter store"),
                ))
            }
        }
    }

    /// Ends a reservation: a live hold returns its units, a confirmed one its unshipped units.
    /// Releasing an ended reservation changes nothing and returns 0 units.
    pub async fn release(&self, reservation_id: &str, reason: &str) -> ReservationResult<(StoredReservation, i64)> {
        let reservation = self.load(reservation_id).await?;
        match reservation.status {
            Status::Held => self.release_hold(reservation, reason).await,
            Status::Confirmed => self.cancel_commitment(reservation, reason).await,
            Status::Pending => Err(ReservationError::InProgress(reservation_id.to_owned())),
            _ => Ok((reservation, 0)),
        }
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
            let moved = self
                .store
                .transition(&reservation_id, &[Status::Held], Status::Released, reason, None, released.hold_units, None)
                .await?;
            if !moved {
                // Only the caller that removed the hold can end it this way; say so if it differs.
                tracing::error!(%reservation_id, "released a hold whose record had already moved on");
            }
            return Ok((self.load(&reservation_id).await?, released.hold_units));
        }
        let state = self.engine.hold_state(&reservation_id, &cells).await?;
        if state.committed_cells > 0 {
            // A confirm won the race in the counters; wait for its record, then cancel it.
            return match self.wait_while_held(&reservation_id, 100).await? {
                Some(current) if current.status == Status::Confirmed => self.cancel_commitment(current, reason).await,
                Some(current) => Ok((current, 0)),
                None => Err(ReservationError::InProgress(reservation_id)),
            };
        }
        if state.now_ms < reservation.expires_at_ms {
            // Not expired: a concurrent release took the hold; its record follows in a moment.
            return match self.wait_while_held(&reservation_id, 100).await? {
                Some(current) => Ok((current, 0)),
                None => Err(ReservationError::InProgress(reservation_id)),
            };
        }
        // Nothing live, nothing committed, deadline passed: the hold expired.
        self.store
            .transition(&reservation_id, &[Status::Held], Status::Expired, "expired before release", None, 0, None)
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
        let released = self.engine.release(&reservation_id, ReleasePart::Commitment, &reservation.cells()).await?;
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
        self.store
            .transition(
                &reservation_id,
                &[Status::Confirmed],
                Status::Released,
                reason,
                None,
                released.committed_units,
                None,
            )
            .await?;
        Ok((self.load(&reservation_id).await?, released.committed_units))
    }

    /// Records holds whose deadline passed as EXPIRED and settles stale claims. Returns how many
    /// reservations it settled.
    pub async fn sweep(&self) -> ReservationResult<usize> {
        let now = crate::store::now_ms();
        let mut settled = 0;
        for reservation_id in self.store.held_past_deadline(now, 500).await? {
            let Some(reservation) = self.store.get(&reservation_id).await? else { continue };
            let cells: Vec<Cell> = reservation.cells();
            let state = self.engine.hold_state(&reservation_id, &cells).await?;
            if state.live_cells > 0 {
                continue; // not expired yet by the counter store's clock
            }
            if state.committed_cells == cells.len() {
                // Confirmed in the counters but the record was not written (crash): record it.
                self.store
                    .transition(
                        &reservation_id,
                        &[Status::Held],
                        Status::Confirmed,
                        "confirmed (recovered)",
                        None,
                        0,
                        None,
                    )
                    .await?;
            } else {
                self.store
                    .transition(&reservation_id, &[Status::Held], Status::Expired, "expired", None, 0, None)
                    .await?;
            }
            settled += 1;
        }
        for reservation_id in self.store.stale_claims(now - 30_000, 100).await? {
            let Some(reservation) = self.store.get(&reservation_id).await? else { continue };
            let state = self.engine.hold_state(&reservation_id, &reservation.cells()).await?;
            if state.live_cells == reservation.lines.len() {
                self.store
                    .transition(
                        &reservation_id,
                        &[Status::Pending],
                        Status::Held,
                        "held (recovered)",
                        Some(state.earliest_deadline_ms),
                        0,
                        None,
                    )
                    .await?;
            } else {
                self.engine.release(&reservation_id, ReleasePart::Hold, &reservation.cells()).await?;
                self.store.drop_claim(&reservation_id).await?;
            }
            settled += 1;
        }
        Ok(settled)
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
