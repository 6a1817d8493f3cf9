//! Kubernetes resource quantities ("100m", "1.5", "128Mi", "1e3") to integers and back.
//!
//! Parsing is exact (integer arithmetic on the decimal digits) and rounds up, as Kubernetes'
//! own `MilliValue`/`Value` do, so a request is never silently shrunk. It is also total and
//! linear in the string's length, whatever the string: one pass over the bytes, checked
//! arithmetic, no loop per unit of exponent ("0e2147483647" is 0 at once, "1e2147483647" is
//! too large at once), a value beyond `i64` is an error and never wraps.

/// At most this many characters of a refused input are kept in the error, so an error about a
/// megabyte-long string is not itself a megabyte in a log, an Event or a condition.
const SHOWN_CHARS: usize = 64;

/// Largest power of ten below `i64::MAX` (10^18); a value with more integer digits overflows.
const I64_DIGITS: i128 = 19;

/// A string that is not a valid non-negative Kubernetes quantity, or one too large for `i64`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuantityError {
    /// The input, cut to [`SHOWN_CHARS`] characters.
    shown: String,
    /// Whether the input was a valid quantity whose value does not fit.
    too_large: bool,
}

impl QuantityError {
    fn new(input: &str, too_large: bool) -> Self {
        let mut shown: String = input.chars().take(SHOWN_CHARS).collect();
        if shown.len() < input.len() {
            shown.push('…');
        }
        Self { shown, too_large }
    }

    /// Whether the input is a well-formed quantity whose value exceeds `i64` (callers that
    /// must not under-count may treat it as `i64::MAX`).
    pub fn is_too_large(&self) -> bool {
        self.too_large
    }
}

impl std::fmt::Display for QuantityError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.too_large {
            write!(f, "resource quantity {:?} is too large", self.shown)
        } else {
            write!(f, "{:?} is not a valid resource quantity", self.shown)
        }
    }
}

impl std::error::Error for QuantityError {}

type Result<T> = std::result::Result<T, QuantityError>;

/// A parsed quantity: `digits * 10^exp10 * 2^exp2`, always non-negative.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Parsed {
    /// The significant decimal digits (integer part then fraction, leading zeros removed), as
    /// values 0–9; empty means the quantity is zero.
    digits: Vec<u8>,
    /// Power of ten; an exponent with more digits than an `i64` holds saturates, which changes
    /// nothing: such a value is zero or too large either way.
    exp10: i128,
    /// Power of two from a binary suffix (0–60).
    exp2: u32,
}

/// Cap on a parsed exponent: far beyond anything that fits, far inside `i128`.
const EXPONENT_CAP: i128 = 1 << 80;

fn parse(s: &str) -> Result<Parsed> {
    let bad = || QuantityError::new(s, false);
    let t = s.trim();
    let t = t.strip_prefix('+').unwrap_or(t).as_bytes();
    let int_len = t.iter().take_while(|b| b.is_ascii_digit()).count();
    let (int, rest) = t.split_at(int_len);
    let (frac, suffix) = match rest.strip_prefix(b".") {
        Some(after) => {
            let n = after.iter().take_while(|b| b.is_ascii_digit()).count();
            after.split_at(n)
        }
        None => (&rest[..0], rest),
    };
    if int.is_empty() && frac.is_empty() {
        return Err(bad());
    }
    let digits: Vec<u8> = int
        .iter()
        .chain(frac)
        .skip_while(|&&b| b == b'0')
        .map(|b| b - b'0')
        .collect();
    // frac.len() <= isize::MAX, so this cannot overflow an i128.
    let mut exp10 = -(frac.len() as i128);
    let mut exp2 = 0;
    match suffix {
        b"" => {}
        b"n" => exp10 -= 9,
        b"u" => exp10 -= 6,
        b"m" => exp10 -= 3,
        b"k" => exp10 += 3,
        b"M" => exp10 += 6,
        b"G" => exp10 += 9,
        b"T" => exp10 += 12,
        b"P" => exp10 += 15,
        b"E" => exp10 += 18,
        b"Ki" => exp2 = 10,
        b"Mi" => exp2 = 20,
        b"Gi" => exp2 = 30,
        b"Ti" => exp2 = 40,
        b"Pi" => exp2 = 50,
        b"Ei" => exp2 = 60,
        [b'e' | b'E', e @ ..] => {
            let e = e.strip_prefix(b"+").unwrap_or(e);
            if e.is_empty() || !e.iter().all(u8::is_ascii_digit) {
                return Err(bad());
            }
            let exponent = e.iter().fold(0i128, |acc, d| {
                (acc * 10 + i128::from(d - b'0')).min(EXPONENT_CAP)
            });
            exp10 += exponent;
        }
        _ => return Err(bad()),
    }
    Ok(Parsed {
        digits,
        exp10,
        exp2,
    })
}

/// The digits as an integer; the caller guarantees at most 19 of them (< 10^19 < 2^64).
fn integer(digits: &[u8]) -> u128 {
    debug_assert!(digits.len() as i128 <= I64_DIGITS);
    digits
        .iter()
        .fold(0u128, |acc, &d| acc * 10 + u128::from(d))
}

/// `value * 10^scale_exp10`, rounded up, as an i64: O(length of `s`), never panics or wraps.
fn scaled_ceil(s: &str, scale_exp10: i32) -> Result<i64> {
    let too_large = || QuantityError::new(s, true);
    let p = parse(s)?;
    if p.digits.is_empty() {
        return Ok(0);
    }
    let n = p.digits.len() as i128;
    let exp = p.exp10 + i128::from(scale_exp10);
    let pow2 = 1u128 << p.exp2; // exp2 <= 60
    let value = if exp >= 0 {
        // digits >= 10^(n-1), so the value is >= 10^(n-1+exp): more than 19 digits overflow.
        if n + exp > I64_DIGITS {
            return Err(too_large());
        }
        // n + exp <= 19: the product is < 10^19 * 2^60 < 2^124.
        integer(&p.digits) * 10u128.pow(exp as u32) * pow2
    } else {
        // value = digits / 10^m * 2^exp2 = (int + frac) * 2^exp2, with frac in [0, 1).
        let m = -exp;
        let int_len = (n - m).max(0);
        if int_len > I64_DIGITS {
            return Err(too_large());
        }
        let (int, frac) = p.digits.split_at(int_len as usize);
        // frac * 2^exp2 by long multiplication from the last digit: its carry out of the
        // units place is the integer part, any non-zero digit left behind means "round up".
        // Then the (m - frac.len()) implied leading zeros: they only shift the carry on and
        // stop mattering once it is zero, so this stays linear in the string.
        let mut carry = 0u128;
        let mut inexact = false;
        for &d in frac.iter().rev() {
            let t = u128::from(d) * pow2 + carry; // < 10 * 2^60 + 2^60
            inexact |= !t.is_multiple_of(10);
            carry = t / 10;
        }
        let mut zeros = m - frac.len() as i128;
        while carry != 0 && zeros > 0 {
            inexact |= !carry.is_multiple_of(10);
            carry /= 10;
            zeros -= 1;
        }
        integer(int)
            .checked_mul(pow2)
            .and_then(|v| v.checked_add(carry))
            .and_then(|v| v.checked_add(u128::from(inexact)))
            .ok_or_else(too_large)?
    };
    i64::try_from(value).map_err(|_| too_large())
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
    fn rejects_garbage_more() {
        for input in [
            "1e+", "1e-3", "1ee3", "1.5.Gi", "+", "++1", "1Ki5", "１", "1\u{0}",
        ] {
            assert!(to_units(input).is_err(), "{input:?}");
        }
    }

    #[test]
    fn attacker_quantities_are_answered_at_once() {
        let long9 = "9".repeat(1000);
        let long_frac = format!("0.{}1", "0".repeat(100_000));
        let long_zero_exp = format!("0e{}", "9".repeat(100_000));
        let big_exp = format!("1e{}", "9".repeat(100_000));
        let leading_zeros = format!("{}1", "0".repeat(100_000));
        let started = std::time::Instant::now();
        assert_eq!(to_units("0e2147483647"), Ok(0));
        assert_eq!(to_millis("0e2147483647"), Ok(0));
        assert_eq!(to_millis("0E+2147483647"), Ok(0));
        assert_eq!(to_units(&long_zero_exp), Ok(0));
        assert!(to_units("1e2147483647").unwrap_err().is_too_large());
        assert!(to_millis("1e2147483647").unwrap_err().is_too_large());
        assert!(to_units("1e999").unwrap_err().is_too_large());
        assert!(to_units(&big_exp).unwrap_err().is_too_large());
        assert!(to_units(&long9).unwrap_err().is_too_large());
        assert!(to_units("1e19").unwrap_err().is_too_large());
        assert!(to_units("8Ei").unwrap_err().is_too_large());
        assert_eq!(to_units(&long_frac), Ok(1));
        assert_eq!(to_millis(&long_frac), Ok(1));
        assert_eq!(to_units(&leading_zeros), Ok(1));
        assert_eq!(to_units("7Ei"), Ok(7 << 60));
        assert_eq!(to_units("9223372036854775807"), Ok(i64::MAX));
        assert!(to_units("9223372036854775808").unwrap_err().is_too_large());
        assert_eq!(to_millis("9223372036854775.807"), Ok(i64::MAX));
        assert!(to_millis("9223372036854775.8071").is_err());
        // The old parser looped once per unit of exponent: seconds to minutes here.
        let took = started.elapsed();
        assert!(took < std::time::Duration::from_secs(1), "took {took:?}");
    }

    #[test]
    fn errors_do_not_carry_the_whole_input() {
        let e = to_units(&"x".repeat(1_000_000)).unwrap_err();
        assert!(e.to_string().len() < 128, "{e}");
        assert!(!e.is_too_large());
    }

    /// A small deterministic generator (xorshift64*), so the property tests need no crate.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn digits(&mut self, max: usize) -> String {
            (0..self.below(max + 1))
                .map(|_| char::from(b'0' + self.below(10) as u8))
                .collect()
        }
    }

    /// The reference: exact rational arithmetic the slow way, for inputs small enough to
    /// hold in u128 (`None` when they are not).
    fn reference(int: &str, frac: &str, suffix: &str, scale: i32) -> Option<i128> {
        let digits: u128 = format!("{int}{frac}0").parse::<u128>().ok()? / 10;
        let (mut exp10, mut exp2) = (-(frac.len() as i32) + scale, 0u32);
        match suffix {
            "" => {}
            "m" => exp10 -= 3,
            "k" => exp10 += 3,
            "G" => exp10 += 9,
            "n" => exp10 -= 9,
            "Ki" => exp2 = 10,
            "Gi" => exp2 = 30,
            "Ei" => exp2 = 60,
            e => exp10 += e[1..].trim_start_matches('+').parse::<i32>().ok()?,
        }
        let num = digits.checked_mul(1u128.checked_shl(exp2)?)?;
        let v = if exp10 >= 0 {
            num.checked_mul(10u128.checked_pow(exp10 as u32)?)?
        } else {
            num.div_ceil(10u128.checked_pow((-exp10) as u32)?)
        };
        i128::try_from(v).ok()
    }

    #[test]
    fn random_well_formed_quantities_match_the_reference() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let suffixes = [
            "", "m", "k", "G", "n", "Ki", "Gi", "Ei", "e3", "E+2", "e20", "e0",
        ];
        let mut compared = 0;
        for _ in 0..20_000 {
            let int = rng.digits(22);
            let frac = rng.digits(12);
            let dot = rng.below(3) > 0 || int.is_empty();
            if int.is_empty() && frac.is_empty() {
                continue;
            }
            let suffix = suffixes[rng.below(suffixes.len())];
            let s = format!("{int}{}{frac}{suffix}", if dot { "." } else { "" });
            let frac = if dot { frac.as_str() } else { "" };
            let int = if dot {
                int.as_str()
            } else {
                &s[..s.len() - suffix.len()]
            };
            for (scale, got) in [(0, to_units(&s)), (3, to_millis(&s))] {
                match reference(int, frac, suffix, scale) {
                    Some(want) if want <= i128::from(i64::MAX) => {
                        assert_eq!(got.map(i128::from), Ok(want), "{s} (scale {scale})");
                        compared += 1;
                    }
                    Some(_) => {
                        assert!(got.unwrap_err().is_too_large(), "{s} (scale {scale})")
                    }
                    None => {} // beyond the reference; totality is checked below
                }
            }
        }
        assert!(compared > 10_000, "only {compared} compared");
    }

    #[test]
    fn random_strings_never_panic_and_stay_linear() {
        let mut rng = Rng(42);
        let alphabet = b"0123456789.eE+-kmunMGTPEi \t";
        for _ in 0..50_000 {
            let len = rng.below(65);
            let s: String = (0..len)
                .map(|_| char::from(alphabet[rng.below(alphabet.len())]))
                .collect();
            let units = to_units(&s);
            let millis = to_millis(&s);
            // Well-formed or not is the same question for both scales.
            assert_eq!(
                units.is_ok() || units.as_ref().is_err_and(|e| e.is_too_large()),
                millis.is_ok() || millis.as_ref().is_err_and(|e| e.is_too_large()),
                "{s:?}"
            );
            if let (Ok(u), Ok(m)) = (&units, &millis) {
                assert!(*u >= 0 && *m >= 0, "{s:?}");
                // Rounding up: a thousand times the units is never below the millis.
                assert!(i128::from(*u) * 1000 >= i128::from(*m), "{s:?}");
            }
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
