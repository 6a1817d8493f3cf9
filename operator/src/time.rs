//! Time as the Kubernetes API writes it.

use chrono::{DateTime, SecondsFormat, Utc};

/// RFC 3339 at second precision, as `metav1.Time` is serialised.
pub(crate) fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}
