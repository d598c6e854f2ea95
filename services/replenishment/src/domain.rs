//! Replenishment rules without I/O: the alert level of a cell, velocity, and the reorder
//! suggestion.
//!
//! Alert levels, from a cell's counters (free = on_hand − held − committed, ATP = free − safety):
//! OVERCOMMITTED when ATP < 0 (only a physical correction can do that); STOCKOUT when ATP ≤ 0 and
//! nothing is physically free; LOW_STOCK when ATP ≤ the low-stock margin while units are still
//! free (the buffer, or the margin, is all that is left). An alert is raised when a cell enters a
//! level and closed when it leaves it, so each crossing raises exactly one alert.

/// Alert kinds (stored codes are the proto enum values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertKind {
    LowStock,
    Stockout,
    Overcommitted,
}

impl AlertKind {
    /// The stored code.
    pub fn code(self) -> i32 {
        match self {
            Self::LowStock => 1,
            Self::Stockout => 2,
            Self::Overcommitted => 3,
        }
    }

    /// Decodes a stored code.
    pub fn from_code(code: i32) -> Option<Self> {
        match code {
            1 => Some(Self::LowStock),
            2 => Some(Self::Stockout),
            3 => Some(Self::Overcommitted),
            _ => None,
        }
    }
}

/// The level a cell is at, if any.
pub fn alert_level(on_hand: i64, held: i64, committed: i64, safety: i64, low_stock_units: i64) -> Option<AlertKind> {
    let free = on_hand - held - committed;
    let atp = free - safety;
    if atp < 0 {
        Some(AlertKind::Overcommitted)
    } else if free <= 0 {
        Some(AlertKind::Stockout)
    } else if atp <= low_stock_units {
        Some(AlertKind::LowStock)
    } else {
        None
    }
}

/// A suggested purchase for one cell.
#[derive(Debug, Clone, PartialEq)]
pub struct Suggestion {
    pub quantity: i64,
    pub reorder_point: i64,
    pub order_up_to: i64,
    pub reason: String,
}

/// Reorder point = ⌈velocity × lead time⌉; order-up-to = ⌈velocity × (lead time + cover)⌉.
/// Suggests order-up-to − ATP when ATP is at or below the reorder point and there is demand.
pub fn suggest(atp: i64, units_per_day: f64, lead_time_days: f64, cover_days: f64) -> Option<Suggestion> {
    if units_per_day <= 0.0 {
        return None;
    }
    let reorder_point = (units_per_day * lead_time_days).ceil() as i64;
    let order_up_to = (units_per_day * (lead_time_days + cover_days)).ceil() as i64;
    if atp > reorder_point {
        return None;
    }
    let quantity = order_up_to - atp.max(0);
    (quantity > 0).then(|| Suggestion {
        quantity,
        reorder_point,
        order_up_to,
        reason: format!(
            "ATP {atp} is at or below the reorder point {reorder_point} ({units_per_day:.2}/day × {lead_time_days} days lead time); order up to {order_up_to} ({cover_days} more days of cover)"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_levels_follow_atp_and_free_units() {
        assert_eq!(alert_level(10, 0, 0, 0, 0), None);
        assert_eq!(alert_level(10, 4, 6, 0, 0), Some(AlertKind::Stockout));
        assert_eq!(alert_level(10, 4, 4, 2, 0), Some(AlertKind::LowStock)); // the buffer is all that is left
        assert_eq!(alert_level(2, 2, 2, 0, 0), Some(AlertKind::Overcommitted)); // B29: 2 − 4 = −2
        assert_eq!(alert_level(10, 0, 7, 0, 3), Some(AlertKind::LowStock));
        assert_eq!(alert_level(10, 0, 6, 0, 3), None);
    }

    #[test]
    fn suggestion_orders_up_to_cover_when_at_the_reorder_point() {
        let s = suggest(3, 0.5, 7.0, 14.0).unwrap();
        assert_eq!((s.reorder_point, s.order_up_to, s.quantity), (4, 11, 8));
        assert_eq!(suggest(5, 0.5, 7.0, 14.0), None);
        assert_eq!(suggest(0, 0.0, 7.0, 14.0), None);
        assert_eq!(suggest(-2, 1.0, 7.0, 14.0).unwrap().quantity, 21);
    }
}
