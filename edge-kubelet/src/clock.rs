//! Wall-clock time as the edge protocol carries it.

/// Now, in Unix milliseconds.
pub(crate) fn now_millis() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Now, in Unix seconds.
pub(crate) fn now_unix_secs() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// Now.
pub(crate) fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}
