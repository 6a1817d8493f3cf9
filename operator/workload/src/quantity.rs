//! Kubernetes resource quantities ("100m", "0.5", "128Mi", "1e3") as integers.

/// Parses a quantity into thousandths of its unit (millicores for CPU, millibytes for memory),
/// rounding up. `None` when the text is not a quantity or does not fit.
pub fn parse_milli(text: &str) -> Option<i128> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    if number.is_empty() || number == "." {
        return None;
    }
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if frac.contains('.') || frac.len() > 30 || whole.len() > 30 {
        return None;
    }
    // value = digits / 10^frac.len() * multiplier; everything kept as a fraction num/den.
    let digits: i128 = format!("{whole}{frac}").parse().ok()?;
    let mut den: i128 = 10i128.checked_pow(frac.len() as u32)?;
    let mut num = digits.checked_mul(1000)?;
    let (mul, div): (i128, i128) = match suffix {
        "" => (1, 1),
        "n" => (1, 1_000_000_000),
        "u" => (1, 1_000_000),
        "m" => (1, 1000),
        "k" => (1000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        exp => {
            let exp = exp.strip_prefix(['e', 'E'])?;
            let exp = exp.strip_prefix('+').unwrap_or(exp);
            let exp: u32 = exp.parse().ok()?;
            (10i128.checked_pow(exp)?, 1)
        }
    };
    num = num.checked_mul(mul)?;
    den = den.checked_mul(div)?;
    Some((num + den - 1) / den)
}

/// CPU quantity in millicores.
pub fn cpu_millis(text: &str) -> Option<i64> {
    parse_milli(text).and_then(|m| i64::try_from(m).ok())
}

/// Memory quantity in bytes (rounded up).
pub fn memory_bytes(text: &str) -> Option<i64> {
    parse_milli(text).and_then(|m| i64::try_from((m + 999) / 1000).ok())
}

/// Millicores as a short quantity ("250m", "2").
pub fn format_cpu(millis: i64) -> String {
    if millis % 1000 == 0 {
        format!("{}", millis / 1000)
    } else {
        format!("{millis}m")
    }
}

/// Bytes as a short binary quantity ("32Mi", "1536Ki", "100").
pub fn format_memory(bytes: i64) -> String {
    for (suffix, unit) in [("Gi", 1i64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if bytes != 0 && bytes % unit == 0 {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu() {
        for (text, want) in [
            ("100m", Some(100)),
            ("0.5", Some(500)),
            ("2", Some(2000)),
            (".25", Some(250)),
            ("1500m", Some(1500)),
            ("1e3", Some(1_000_000)),
            ("1E+1", Some(10_000)),
            ("1k", Some(1_000_000)),
            ("250u", Some(1)), // rounds up
            ("", None),
            ("abc", None),
            ("1.2.3", None),
            ("5X", None),
        ] {
            assert_eq!(cpu_millis(text), want, "{text}");
        }
    }

    #[test]
    fn parses_memory() {
        for (text, want) in [
            ("128Mi", Some(128 << 20)),
            ("4Gi", Some(4 << 30)),
            ("1G", Some(1_000_000_000)),
            ("1.5Ki", Some(1536)),
            ("100", Some(100)),
            ("1m", Some(1)), // a thousandth of a byte rounds up to one
        ] {
            assert_eq!(memory_bytes(text), want, "{text}");
        }
    }

    #[test]
    fn formats() {
        assert_eq!(format_cpu(100), "100m");
        assert_eq!(format_cpu(2000), "2");
        assert_eq!(format_memory(32 << 20), "32Mi");
        assert_eq!(format_memory(1536), "1536");
        assert_eq!(format_memory(3 << 10), "3Ki");
        assert_eq!(format_memory(0), "0");
    }
}
