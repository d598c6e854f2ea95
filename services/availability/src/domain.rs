//! Inventory events and their effect on a cell's physical position, without I/O.
//!
//! Rules: a delta event (RECEIPT, SHIPMENT, RETURN, ADJUSTMENT) adds its signed delta to on_hand
//! unless it occurred at or before the latest COUNT (then it is recorded as STALE: the count
//! already includes it). A COUNT as of T sets on_hand to the counted value plus every recorded
//! delta that occurred after T; a COUNT not newer than the latest COUNT is STALE. A shipment naming
//! a reservation always fulfils that commitment, stale or not (B26).
use sha2::{Digest, Sha256};

use mesh_counters::Cell;

/// The largest |on_hand| a position may reach (counters stay exact integers in Lua doubles).
pub const MAX_ON_HAND: i64 = 1_000_000_000_000_000;

/// The kind of an inventory event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Receipt,
    Shipment,
    Return,
    Adjustment,
    Count,
}

impl EventKind {
    /// The stored code (the proto enum value).
    pub fn code(self) -> i32 {
        match self {
            Self::Receipt => 1,
            Self::Shipment => 2,
            Self::Return => 3,
            Self::Adjustment => 4,
            Self::Count => 5,
        }
    }
}

/// A validated inventory event.
#[derive(Debug, Clone, PartialEq)]
pub struct InventoryEvent {
    pub event_id: String,
    pub kind: EventKind,
    pub cell: Cell,
    pub quantity: i64,
    pub occurred_at_ms: i64,
    pub source_system: String,
    pub reservation_id: Option<String>,
    pub restockable: bool,
    pub reason: String,
}

impl InventoryEvent {
    /// The signed change to on_hand of a delta event; None for COUNT.
    pub fn delta(&self) -> Option<i64> {
        match self.kind {
            EventKind::Receipt => Some(self.quantity),
            EventKind::Shipment => Some(-self.quantity),
            EventKind::Return if self.restockable => Some(self.quantity),
            EventKind::Return => Some(0),
            EventKind::Adjustment => Some(self.quantity),
            EventKind::Count => None,
        }
    }

    /// A digest of the body, so a reused id with a different body is told apart from a redelivery.
    pub fn body_hash(&self) -> String {
        let body = format!(
            "{}|{}|{}|{}|{}|{}|{}|{}|{}",
            self.kind.code(),
            self.cell.sku,
            self.cell.location,
            self.quantity,
            self.occurred_at_ms,
            self.source_system,
            self.reservation_id.as_deref().unwrap_or(""),
            self.restockable,
            self.reason
        );
        hex::encode(Sha256::digest(body.as_bytes()))
    }
}

/// What an event does to a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Duplicate,
    Stale,
    Rejected,
}

impl Outcome {
    /// The stored code (the proto enum value).
    pub fn code(self) -> i32 {
        match self {
            Self::Applied => 1,
            Self::Duplicate => 2,
            Self::Stale => 3,
            Self::Rejected => 4,
        }
    }
}

/// A cell's durable physical position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub on_hand: i64,
    pub safety: i64,
    pub version: i64,
    pub last_count_at_ms: Option<i64>,
}

/// The new position after an event, given the deltas recorded after a COUNT's as-of time.
pub fn apply_event(position: Position, event: &InventoryEvent, deltas_after_count: i64) -> (Outcome, Position) {
    let counted_at = position.last_count_at_ms;
    match event.delta() {
        None => {
            if counted_at.is_some_and(|at| at >= event.occurred_at_ms) {
                return (Outcome::Stale, position);
            }
            let on_hand = event.quantity.saturating_add(deltas_after_count);
            (
                Outcome::Applied,
                Position {
                    on_hand,
                    last_count_at_ms: Some(event.occurred_at_ms),
                    version: position.version + 1,
                    ..position
                },
            )
        }
        Some(delta) => {
            if counted_at.is_some_and(|at| event.occurred_at_ms <= at) {
                return (Outcome::Stale, position);
            }
            (
                Outcome::Applied,
                Position { on_hand: position.on_hand.saturating_add(delta), version: position.version + 1, ..position },
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, quantity: i64, at: i64) -> InventoryEvent {
        InventoryEvent {
            event_id: "e".into(),
            kind,
            cell: Cell::new("A", "L1"),
            quantity,
            occurred_at_ms: at,
            source_system: "erp".into(),
            reservation_id: None,
            restockable: true,
            reason: String::new(),
        }
    }

    #[test]
    fn count_replaces_on_hand_plus_later_deltas() {
        let start = Position { on_hand: 10, version: 3, ..Position::default() };
        let (outcome, after) = apply_event(start, &event(EventKind::Count, 7, 100), 2);
        assert_eq!(outcome, Outcome::Applied);
        assert_eq!(after, Position { on_hand: 9, version: 4, last_count_at_ms: Some(100), safety: 0 });
    }

    #[test]
    fn delta_older_than_latest_count_is_stale_and_changes_nothing() {
        let start = Position { on_hand: 9, version: 4, last_count_at_ms: Some(100), safety: 0 };
        let (outcome, after) = apply_event(start, &event(EventKind::Receipt, 5, 100), 0);
        assert_eq!(outcome, Outcome::Stale);
        assert_eq!(after, start);
        let (outcome, after) = apply_event(start, &event(EventKind::Receipt, 5, 101), 0);
        assert_eq!(outcome, Outcome::Applied);
        assert_eq!(after.on_hand, 14);
    }

    #[test]
    fn count_not_newer_than_latest_count_is_stale() {
        let start = Position { on_hand: 9, version: 4, last_count_at_ms: Some(100), safety: 0 };
        assert_eq!(apply_event(start, &event(EventKind::Count, 1, 100), 0).0, Outcome::Stale);
        assert_eq!(apply_event(start, &event(EventKind::Count, 1, 99), 0).0, Outcome::Stale);
    }

    #[test]
    fn non_restockable_return_is_recorded_without_changing_on_hand() {
        let mut returned = event(EventKind::Return, 3, 5);
        returned.restockable = false;
        assert_eq!(returned.delta(), Some(0));
        assert_eq!(event(EventKind::Shipment, 3, 5).delta(), Some(-3));
        assert_eq!(event(EventKind::Adjustment, -2, 5).delta(), Some(-2));
    }

    #[test]
    fn body_hash_differs_when_quantity_differs() {
        assert_ne!(event(EventKind::Shipment, 2, 5).body_hash(), event(EventKind::Shipment, 3, 5).body_hash());
        assert_eq!(event(EventKind::Shipment, 2, 5).body_hash(), event(EventKind::Shipment, 2, 5).body_hash());
    }
}
