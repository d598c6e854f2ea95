//! Wall-clock time and protobuf timestamps in Unix milliseconds (the unit every store uses).

/// Milliseconds since the Unix epoch by this process's clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Converts Unix milliseconds to a protobuf timestamp.
pub fn to_timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_milliseconds_keep_nanos_positive() {
        assert_eq!(to_timestamp(-1), prost_types::Timestamp { seconds: -1, nanos: 999_000_000 });
        assert_eq!(to_timestamp(1_500), prost_types::Timestamp { seconds: 1, nanos: 500_000_000 });
    }
}
