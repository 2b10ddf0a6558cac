//! RFC 3339 formatting and protobuf timestamp conversion at the edges.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `t` as RFC 3339 (UTC).
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// `t` as a protobuf timestamp.
pub fn to_proto(t: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: 0,
    }
}

/// A protobuf timestamp as `OffsetDateTime` (None when out of range).
pub fn from_proto(t: &prost_types::Timestamp) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(t.seconds).ok()
}

/// A protobuf timestamp as `OffsetDateTime`, clamped to the range `time` can hold: a filter
/// bound far in the past or the future still filters (everything, or nothing) instead of
/// being dropped.
pub fn from_proto_clamped(t: &prost_types::Timestamp) -> OffsetDateTime {
    from_proto(t).unwrap_or(if t.seconds < 0 {
        time::PrimitiveDateTime::MIN.assume_utc()
    } else {
        time::PrimitiveDateTime::MAX.assume_utc()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn clamps_out_of_range_timestamps() {
        let at = |seconds| prost_types::Timestamp { seconds, nanos: 0 };
        assert_eq!(super::from_proto_clamped(&at(0)).unix_timestamp(), 0);
        let far = super::from_proto_clamped(&at(i64::MAX));
        assert!(far > time::OffsetDateTime::now_utc() + time::Duration::days(365 * 1000));
        let past = super::from_proto_clamped(&at(i64::MIN));
        assert!(past < time::OffsetDateTime::UNIX_EPOCH - time::Duration::days(365 * 1000));
    }
}
