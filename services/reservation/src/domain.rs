//! Reservations without I/O: normalising lines (same cell summed, B04), the body digest that
//! tells a retry from a reused id, and the status machine (a hold ends exactly once).
use sha2::{Digest, Sha256};

use mesh_counters::{Cell, CellUnits, ReservePolicy};

/// Where a reservation is in its life (stored codes are the proto enum values; 0 = being created).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Held,
    Confirmed,
    Released,
    Expired,
    Rejected,
}

impl Status {
    /// The stored code.
    pub fn code(self) -> i32 {
        match self {
            Self::Pending => 0,
            Self::Held => 1,
            Self::Confirmed => 2,
            Self::Released => 3,
            Self::Expired => 4,
            Self::Rejected => 5,
        }
    }

    /// Decodes a stored code.
    pub fn from_code(code: i32) -> Self {
        match code {
            1 => Self::Held,
            2 => Self::Confirmed,
            3 => Self::Released,
            4 => Self::Expired,
            5 => Self::Rejected,
            _ => Self::Pending,
        }
    }

    /// Tells whether the reservation has ended (no more transitions).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Released | Self::Expired | Self::Rejected)
    }
}

/// A validated reservation request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewReservation {
    pub reservation_id: String,
    pub order_id: String,
    pub channel_id: String,
    /// One entry per cell, in first-seen order, units summed.
    pub lines: Vec<CellUnits>,
    pub ttl_ms: u64,
    pub policy: ReservePolicy,
    /// The kit lines as asked for (`kit@loc x kits [component*units,...]`, components sorted),
    /// part of the body digest so another kit count or kit under the same id is another body;
    /// empty without kits.
    pub kits: String,
}

/// Sums lines naming the same cell, keeping first-seen order.
pub fn normalise_lines(lines: impl IntoIterator<Item = CellUnits>) -> Vec<CellUnits> {
    let mut out: Vec<CellUnits> = Vec::new();
    for line in lines {
        match out.iter_mut().find(|l| l.cell == line.cell) {
            Some(existing) => existing.units += line.units,
            None => out.push(line),
        }
    }
    out
}

impl NewReservation {
    /// Digest of everything that defines the reservation (a retry must match it exactly).
    pub fn body_hash(&self) -> String {
        let mut text = format!("{}|{}|{}", self.order_id, self.channel_id, self.ttl_ms);
        if self.policy == ReservePolicy::Partial {
            text.push_str("|partial");
        }
        for line in &self.lines {
            text.push_str(&format!("|{}@{}x{}", line.cell.sku, line.cell.location, line.units));
        }
        // Without kits the digest is what it always was, so stored answers still replay.
        if !self.kits.is_empty() {
            text.push_str("|kits");
            text.push_str(&self.kits);
        }
        hex::encode(Sha256::digest(text.as_bytes()))
    }

    /// The cells of the reservation.
    pub fn cells(&self) -> Vec<Cell> {
        self.lines.iter().map(|l| l.cell.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_naming_the_same_cell_are_summed_in_first_seen_order() {
        let lines = normalise_lines([
            CellUnits { cell: Cell::new("A", "L1"), units: 3 },
            CellUnits { cell: Cell::new("B", "L1"), units: 1 },
            CellUnits { cell: Cell::new("A", "L1"), units: 3 },
        ]);
        assert_eq!(
            lines,
            vec![
                CellUnits { cell: Cell::new("A", "L1"), units: 6 },
                CellUnits { cell: Cell::new("B", "L1"), units: 1 }
            ]
        );
    }

    #[test]
    fn body_hash_tells_a_different_quantity_apart() {
        let a = NewReservation {
            reservation_id: "r".into(),
            order_id: "o".into(),
            channel_id: String::new(),
            lines: vec![CellUnits { cell: Cell::new("A", "L1"), units: 4 }],
            ttl_ms: 1000,
            policy: ReservePolicy::AllOrNothing,
            kits: String::new(),
        };
        let mut b = a.clone();
        b.lines[0].units = 5;
        assert_ne!(a.body_hash(), b.body_hash());
        assert_eq!(a.body_hash(), a.clone().body_hash());
        let partial = NewReservation { policy: ReservePolicy::Partial, ..a.clone() };
        assert_ne!(a.body_hash(), partial.body_hash());
        // The same cells reached through a kit are another body.
        let kit = NewReservation { kits: "|K@L1x2[A*2]".into(), ..a.clone() };
        assert_ne!(a.body_hash(), kit.body_hash());
        // A digest without kits is the one stored before kits existed: sha256 of "o||1000|A@L1x4".
        assert_eq!(a.body_hash(), "19f1fb00c1094b0bd5012270e0b532e925c71340d1d37fe0d4cba901c32695c6");
    }

    #[test]
    fn status_codes_round_trip() {
        for s in [Status::Pending, Status::Held, Status::Confirmed, Status::Released, Status::Expired, Status::Rejected]
        {
            assert_eq!(Status::from_code(s.code()), s);
        }
        assert!(Status::Expired.is_final() && !Status::Confirmed.is_final());
    }
}
