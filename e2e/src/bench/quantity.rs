//! `quantity`: how long DeCloud's quantity parser (`decloud_crds::quantity`, used by the
//! operator for placement and translation) takes on the worst strings the CRD still accepts
//! and on attacker strings the CRD refuses (which can still reach it from a plain Pod). No
//! cluster: a micro-benchmark of one function, which must answer in microseconds whatever the
//! exponent and grow linearly with the string's length.

use std::hint::black_box;
use std::time::{Duration, Instant};

use decloud_crds::quantity::{to_millis, to_units};
use serde_json::json;

use super::{
    harness::Opts,
    report::{Row, ScenarioReport},
};

/// A string the CRD accepts is parsed within this.
const TARGET_ACCEPTED: Duration = Duration::from_micros(10);
/// An attacker string of up to 1,000 characters is answered within this.
const TARGET_ATTACKER: Duration = Duration::from_micros(100);

/// Median and 99th percentile of one parse (both scales, halved) of `s`, over at least
/// `window` or `max_iters` parses. Percentiles rather than the slowest: on a shared machine the
/// slowest parse measures the scheduler.
fn time_parse(s: &str, window: Duration, max_iters: usize) -> (Duration, Duration) {
    let mut samples = Vec::new();
    let started = Instant::now();
    while samples.len() < max_iters && (samples.len() < 10 || started.elapsed() < window) {
        let t = Instant::now();
        black_box(to_units(black_box(s)).ok());
        black_box(to_millis(black_box(s)).ok());
        samples.push(t.elapsed() / 2);
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99))
}

fn show(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 10_000 {
        format!("{ns} ns")
    } else {
        format!("{:.1} µs", ns as f64 / 1000.0)
    }
}

/// Runs the scenario.
pub async fn run(opts: Opts) -> anyhow::Result<ScenarioReport> {
    // The parser under test is the linear one (the old one looped 2^31 times here).
    anyhow::ensure!(to_units("0e2147483647") == Ok(0), "0e2147483647 is not 0");
    anyhow::ensure!(
        to_millis("1e2147483647").is_err_and(|e| e.is_too_large()),
        "1e2147483647 is not too large"
    );
    let mut report = ScenarioReport::new("quantity");
    let window = Duration::from_millis(if opts.quick { 20 } else { 300 });
    let max_iters = if opts.quick { 20_000 } else { 200_000 };
    let accepted = [
        "999999999999999.999999999e+99",
        "999999999999999.999999999Ei",
        "123456789012345.123456789m",
        ".000000001",
        "1024",
        "64Ti",
    ];
    let nines = "9".repeat(1000);
    let frac_1k = format!("0.{}1", "0".repeat(998));
    let attackers = [
        "0e2147483647".to_string(),
        "1e2147483647".to_string(),
        "0E+99999999999999999999".to_string(),
        "1e999".to_string(),
        nines,
        frac_1k,
    ];
    let mut figures = Vec::new();
    for (kind, inputs, target) in [
        (
            "accepted by the CRD",
            accepted.map(String::from).to_vec(),
            TARGET_ACCEPTED,
        ),
        (
            "attacker (refused by the CRD)",
            attackers.to_vec(),
            TARGET_ATTACKER,
        ),
    ] {
        for s in inputs {
            let (p50, p99) = time_parse(&s, window, max_iters);
            let label: String = if s.len() > 32 {
                format!("{}… ({} chars)", &s[..12], s.len())
            } else {
                s.clone()
            };
            report.row(Row::target(
                format!("{kind}: {label:?}"),
                format!("p50 {}, p99 {}", show(p50), show(p99)),
                format!("p99 ≤ {}", show(target)),
                p99 <= target,
            ));
            figures.push(json!({"input": label, "kind": kind, "chars": s.len(),
                "p50_ns": p50.as_nanos() as u64, "p99_ns": p99.as_nanos() as u64}));
        }
    }
    // Linear in the length: the same shapes at 1 KB, 100 KB and 1 MB.
    let mut per_byte = Vec::new();
    for len in [1_000usize, 100_000, 1_000_000] {
        for (shape, s) in [
            ("digits", "9".repeat(len)),
            ("fraction", format!("0.{}1", "0".repeat(len - 3))),
            ("exponent", format!("1e{}", "9".repeat(len - 2))),
        ] {
            let (p50, _) = time_parse(&s, window, if len > 1000 { 200 } else { max_iters });
            let ns_per_byte = p50.as_nanos() as f64 / len as f64;
            per_byte.push(ns_per_byte);
            report.row(Row::info(
                format!("{shape}, {len} chars"),
                format!("p50 {} ({ns_per_byte:.2} ns/char)", show(p50)),
            ));
            figures.push(json!({"input": format!("{shape} x{len}"), "chars": len,
                "p50_ns": p50.as_nanos() as u64, "ns_per_char": ns_per_byte}));
        }
    }
    let (lo, hi) = per_byte
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    report.note(format!(
        "ns per character from 1 KB to 1 MB ranges {lo:.2}–{hi:.2}: linear, no term in the exponent's value"
    ));
    report.note(format!(
        "{} build",
        if cfg!(debug_assertions) {
            "DEBUG (unoptimised)"
        } else {
            "release"
        }
    ));
    report.set("figures", json!(figures));
    Ok(report)
}
