//! Arbitrary bytes as an `EdgeMessage`, through the operator's handling of it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    decloud_operator::fuzzing::edge_message(data);
});
