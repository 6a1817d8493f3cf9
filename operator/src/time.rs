//! Time as the Kubernetes API writes it.

use jiff::Timestamp;

/// RFC 3339 at second precision, as `metav1.Time` is serialised (fractions cut, not rounded).
pub(crate) fn rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// RFC 3339 at microsecond precision, as `metav1.MicroTime` is serialised.
pub(crate) fn rfc3339_micros(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_as_the_api_server_does() {
        let t: Timestamp = "2026-11-22T12:00:05.987654321Z".parse().unwrap();
        assert_eq!(rfc3339(t), "2026-11-22T12:00:05Z");
        assert_eq!(rfc3339_micros(t), "2026-11-22T12:00:05.987654Z");
        assert_eq!(
            rfc3339(Timestamp::from_second(0).unwrap()),
            "1970-01-01T00:00:00Z"
        );
    }
}
