//! Kubernetes resource quantities ("100m", "1.5", "128Mi", "1e3") to integers and back.
//!
//! Parsing is exact (integer arithmetic on the decimal digits) and rounds up, as Kubernetes'
//! own `MilliValue`/`Value` do, so a request is never silently shrunk.

/// A string that is not a valid non-negative Kubernetes quantity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuantityError(pub String);

impl std::fmt::Display for QuantityError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} is not a valid resource quantity", self.0)
    }
}

impl std::error::Error for QuantityError {}

type Result<T> = std::result::Result<T, QuantityError>;

/// A parsed quantity: `digits * 10^exp10 * 2^exp2`, always non-negative.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Parsed {
    digits: u128,
    exp10: i32,
    exp2: u32,
}

fn parse(s: &str) -> Result<Parsed> {
    let bad = || QuantityError(s.to_string());
    let t = s.trim();
    let t = t.strip_prefix('+').unwrap_or(t);
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return Err(bad());
    }
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    let mut digits: u128 = 0;
    for c in int.chars().chain(frac.chars()) {
        digits = digits
            .checked_mul(10)
            .and_then(|d| d.checked_add(u128::from(c as u8 - b'0')))
            .ok_or_else(bad)?;
    }
    let mut exp10 = -(frac.len() as i32);
    let mut exp2 = 0;
    match suffix {
        "" => {}
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        "Ki" => exp2 = 10,
        "Mi" => exp2 = 20,
        "Gi" => exp2 = 30,
        "Ti" => exp2 = 40,
        "Pi" => exp2 = 50,
        "Ei" => exp2 = 60,
        e if e.starts_with(['e', 'E']) => {
            let n = e[1..].strip_prefix('+').unwrap_or(&e[1..]);
            if n.is_empty() || !n.chars().all(|c| c.is_ascii_digit()) {
                return Err(bad());
            }
            exp10 += n.parse::<i32>().map_err(|_| bad())?;
        }
        _ => return Err(bad()),
    }
    Ok(Parsed {
        digits,
        exp10,
        exp2,
    })
}

/// `value * scale`, rounded up, as an i64.
fn scaled_ceil(s: &str, scale_exp10: i32) -> Result<i64> {
    let bad = || QuantityError(s.to_string());
    let p = parse(s)?;
    let mut num = p.digits.checked_shl(p.exp2).ok_or_else(bad)?;
    if p.exp2 > 0 && num >> p.exp2 != p.digits {
        return Err(bad());
    }
    let exp = p.exp10 + scale_exp10;
    let value = if exp >= 0 {
        for _ in 0..exp {
            num = num.checked_mul(10).ok_or_else(bad)?;
        }
        num
    } else {
        let div = 10u128.checked_pow((-exp) as u32).ok_or_else(bad);
        match div {
            Ok(div) => num.div_ceil(div),
            // Dividing by more than u128 can hold: anything non-zero rounds up to 1.
            Err(_) => u128::from(num > 0),
        }
    };
    i64::try_from(value).map_err(|_| bad())
}

/// CPU quantity in millicores, rounded up ("100m" → 100, "0.5" → 500, "2" → 2000).
pub fn to_millis(s: &str) -> Result<i64> {
    scaled_ceil(s, 3)
}

/// Memory (or any plain) quantity in units, rounded up ("128Mi" → 134217728, "1k" → 1000).
pub fn to_units(s: &str) -> Result<i64> {
    scaled_ceil(s, 0)
}

/// CPU quantity in millicores, or `None` when invalid.
pub fn cpu_millis(s: &str) -> Option<i64> {
    to_millis(s).ok()
}

/// Memory quantity in bytes (rounded up), or `None` when invalid.
pub fn memory_bytes(s: &str) -> Option<i64> {
    to_units(s).ok()
}

/// Millicores as a canonical quantity ("2000" → "2", "1500" → "1500m").
pub fn format_millis(millis: i64) -> String {
    if millis % 1000 == 0 {
        (millis / 1000).to_string()
    } else {
        format!("{millis}m")
    }
}

/// Bytes as a canonical quantity, using the largest exact binary suffix ("134217728" → "128Mi").
pub fn format_bytes(bytes: i64) -> String {
    const SUFFIXES: [(&str, u32); 5] = [("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)];
    if bytes > 0 {
        for (suffix, shift) in SUFFIXES {
            let unit = 1i64 << shift;
            if bytes % unit == 0 {
                return format!("{}{suffix}", bytes / unit);
            }
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_to_millis() {
        let cases = [
            ("100m", 100),
            ("0.5", 500),
            ("2", 2000),
            ("1.5", 1500),
            (".25", 250),
            ("1", 1000),
            ("250000u", 250),
            ("1n", 1), // rounds up
            ("0", 0),
            ("1e3", 1_000_000),
            ("1k", 1_000_000),
            ("+3", 3000),
            ("1E+1", 10_000),
        ];
        for (input, want) in cases {
            assert_eq!(to_millis(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn parses_memory_to_bytes() {
        let cases = [
            ("128Mi", 134_217_728),
            ("1Gi", 1 << 30),
            ("1.5Gi", 3 << 29),
            ("1k", 1000),
            ("1M", 1_000_000),
            ("64", 64),
            ("1e6", 1_000_000),
            ("1E2", 100),
            ("100m", 1), // 0.1 byte rounds up
            ("0.5Ki", 512),
        ];
        for (input, want) in cases {
            assert_eq!(to_units(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn rejects_garbage() {
        for input in [
            "",
            "abc",
            "-1",
            "1.2.3",
            "1Xi",
            "1e",
            "m",
            ".",
            "1 Gi",
            "99999999999E",
        ] {
            assert!(to_units(input).is_err(), "{input}");
        }
    }

    #[test]
    fn formats_round_trip() {
        assert_eq!(format_millis(2000), "2");
        assert_eq!(format_millis(1500), "1500m");
        assert_eq!(format_bytes(134_217_728), "128Mi");
        assert_eq!(format_bytes(16 << 30), "16Gi");
        assert_eq!(format_bytes(1000), "1000");
        assert_eq!(format_bytes(0), "0");
        for q in ["128Mi", "1Gi", "1000"] {
            assert_eq!(format_bytes(to_units(q).unwrap()), q);
        }
    }
}
