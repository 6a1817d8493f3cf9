//! Arbitrary bytes as a Pod (JSON), through the pod bridge's checks and translation.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    decloud_operator::fuzzing::pod_spec(data);
});
