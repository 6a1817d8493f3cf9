//! `--schedule`: weekly windows in the owner's time zone during which the machine is lent.
//!
//! Grammar (case-insensitive): entries separated by `,`; each entry is `DAYS HH:MM-HH:MM`,
//! where DAYS is a day (`Mon`), a range (`Mon-Fri`, `Fri-Mon` wraps) or `Daily`; an end at or
//! before the start runs into the next day (`Mon-Fri 19:00-07:00` lends each weeknight until
//! 07:00 the next morning); `24:00` is the end of the day. Minute resolution.

use std::fmt;
use std::time::Duration;

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// Minutes in a week.
const WEEK: u32 = 7 * 24 * 60;
/// Most entries one schedule may have.
const MAX_ENTRIES: usize = 32;

/// Why a `--schedule` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--schedule {text:?}: {why} (expected e.g. \"Mon-Fri 19:00-07:00,Sat-Sun 00:00-24:00\")")]
pub struct ScheduleError {
    text: String,
    why: String,
}

/// A weekly lending schedule in one time zone.
#[derive(Clone)]
pub struct Schedule {
    text: String,
    tz: TimeZone,
    tz_name: String,
    /// Whether each minute of the week (Monday 00:00 = 0) is inside a window.
    open: Vec<bool>,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({})", self.describe())
    }
}

const DAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

impl Schedule {
    /// Parses `text` for the time zone `tz_name` (an IANA name such as `Europe/Paris`, or
    /// `UTC`; empty: the system's).
    pub fn parse(text: &str, tz_name: &str) -> Result<Self, ScheduleError> {
        let err = |why: String| ScheduleError {
            text: text.chars().take(80).collect(),
            why,
        };
        if text.len() > decloud_proto::MAX_SCHEDULE_BYTES {
            return Err(err(format!(
                "longer than {} bytes",
                decloud_proto::MAX_SCHEDULE_BYTES
            )));
        }
        let (tz, tz_name) = if tz_name.is_empty() {
            let tz = TimeZone::system();
            let name = tz.iana_name().unwrap_or("local").to_string();
            (tz, name)
        } else {
            let tz = TimeZone::get(tz_name)
                .map_err(|e| err(format!("unknown time zone {tz_name:?}: {e}")))?;
            (tz, tz_name.to_string())
        };
        let entries: Vec<&str> = text
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        if entries.is_empty() {
            return Err(err("no window".into()));
        }
        if entries.len() > MAX_ENTRIES {
            return Err(err(format!("more than {MAX_ENTRIES} windows")));
        }
        let mut open = vec![false; WEEK as usize];
        for entry in entries {
            let (days, hours) = entry
                .split_once(char::is_whitespace)
                .ok_or_else(|| err(format!("{entry:?} is not DAYS HH:MM-HH:MM")))?;
            let days = parse_days(days.trim()).map_err(|w| err(format!("{entry:?}: {w}")))?;
            let (from, to) = hours
                .trim()
                .split_once('-')
                .ok_or_else(|| err(format!("{entry:?}: hours are HH:MM-HH:MM")))?;
            let from = parse_hhmm(from).map_err(|w| err(format!("{entry:?}: {w}")))?;
            let to = parse_hhmm(to).map_err(|w| err(format!("{entry:?}: {w}")))?;
            if from == 24 * 60 {
                return Err(err(format!("{entry:?}: a window cannot start at 24:00")));
            }
            let length = if to > from {
                to - from
            } else {
                to + 24 * 60 - from
            };
            for day in days {
                let start = day * 24 * 60 + from;
                for m in start..start + length {
                    open[(m % WEEK) as usize] = true;
                }
            }
        }
        Ok(Self {
            text: text.trim().to_string(),
            tz,
            tz_name,
            open,
        })
    }

    /// The schedule as the Provider status shows it: `<windows> (<time zone>)`.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.text, self.tz_name)
    }

    fn minute_of_week(dt: DateTime) -> u32 {
        let day = u32::from(dt.weekday().to_monday_zero_offset().unsigned_abs());
        day * 24 * 60
            + u32::from(dt.hour().unsigned_abs()) * 60
            + u32::from(dt.minute().unsigned_abs())
    }

    /// Whether the machine is lent at `now`, `margin` before each window closes counting as
    /// closed (so a drain has that long to finish), and when that next changes (None: never,
    /// e.g. `Daily 00:00-24:00`).
    pub fn at(&self, now: Timestamp, margin: Duration) -> (bool, Option<Timestamp>) {
        let margin_min = usize::try_from(margin.as_secs().div_ceil(60))
            .unwrap_or(usize::MAX)
            .min(WEEK as usize);
        // lent[m]: every minute from m to m + margin is inside a window.
        let week = WEEK as usize;
        let lent: Vec<bool> = (0..week)
            .map(|m| (0..=margin_min).all(|d| self.open[(m + d) % week]))
            .collect();
        // Whole minutes of local civil time; DST gaps and folds are settled on the way back.
        let local = now.to_zoned(self.tz.clone()).datetime();
        let start = local
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .unwrap_or(local);
        let m0 = Self::minute_of_week(start) as usize;
        let now_lent = lent[m0];
        let next = (1..=week)
            .find(|k| lent[(m0 + k) % week] != now_lent)
            .and_then(|k| start.checked_add((k as i64).minutes()).ok())
            .and_then(|dt| dt.to_zoned(self.tz.clone()).ok())
            .map(|z| z.timestamp());
        (now_lent, next)
    }
}

fn parse_days(s: &str) -> Result<Vec<u32>, String> {
    let day = |d: &str| {
        let d = d.to_ascii_lowercase();
        DAYS.iter()
            .position(|n| d == n[..3] || d == *n)
            .map(|i| i as u32)
            .ok_or_else(|| format!("{d:?} is not a day (Mon, Tue, … Sun, or Daily)"))
    };
    if s.eq_ignore_ascii_case("daily") {
        return Ok((0..7).collect());
    }
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (day(a)?, day(b)?);
            let mut out = vec![a];
            let mut d = a;
            while d != b {
                d = (d + 1) % 7;
                out.push(d);
            }
            Ok(out)
        }
        None => Ok(vec![day(s)?]),
    }
}

fn parse_hhmm(s: &str) -> Result<u32, String> {
    let s = s.trim();
    let (h, m) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not HH:MM"))?;
    let h: u32 = h.parse().map_err(|_| format!("{s:?} is not HH:MM"))?;
    let m: u32 = m.parse().map_err(|_| format!("{s:?} is not HH:MM"))?;
    if m >= 60 || h > 24 || (h == 24 && m != 0) || s.len() > 5 {
        return Err(format!("{s:?} is not a time of day (00:00 to 24:00)"));
    }
    Ok(h * 60 + m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn weeknights_and_weekends() {
        let s = Schedule::parse("Mon-Fri 19:00-07:00,Sat-Sun 00:00-24:00", "UTC").unwrap();
        // 2030-01-07 is a Monday.
        let m = Duration::ZERO;
        assert_eq!(
            s.at(ts("2030-01-07T12:00:00Z"), m),
            (false, Some(ts("2030-01-07T19:00:00Z")))
        );
        assert_eq!(
            s.at(ts("2030-01-07T20:00:00Z"), m),
            (true, Some(ts("2030-01-08T07:00:00Z")))
        );
        // Friday night runs into the weekend, which runs to Monday 00:00, then Sunday→Monday
        // is not a weeknight window (Sunday's 19:00 start is not listed): closed at Monday 00:00.
        assert_eq!(
            s.at(ts("2030-01-11T20:00:00Z"), m),
            (true, Some(ts("2030-01-14T00:00:00Z")))
        );
        // A margin closes it early.
        assert_eq!(
            s.at(ts("2030-01-08T06:55:00Z"), Duration::from_secs(600)),
            (false, Some(ts("2030-01-08T19:00:00Z")))
        );
    }

    #[test]
    fn in_the_owners_time_zone() {
        let s = Schedule::parse("Daily 09:00-10:00", "Europe/Paris").unwrap();
        assert!(s.at(ts("2030-01-07T08:30:00Z"), Duration::ZERO).0);
        assert!(!s.at(ts("2030-01-07T09:30:00Z"), Duration::ZERO).0);
        assert_eq!(s.describe(), "Daily 09:00-10:00 (Europe/Paris)");
        let always = Schedule::parse("daily 00:00-24:00", "UTC").unwrap();
        assert_eq!(
            always.at(ts("2030-01-07T08:30:00Z"), Duration::ZERO),
            (true, None)
        );
    }

    #[test]
    fn refusals_say_why() {
        for (text, tz, why) in [
            ("", "UTC", "no window"),
            ("Mon", "UTC", "not DAYS HH:MM-HH:MM"),
            ("Funday 10:00-11:00", "UTC", "not a day"),
            ("Mon 25:00-26:00", "UTC", "not a time of day"),
            ("Mon 10:60-11:00", "UTC", "not a time of day"),
            ("Mon 24:00-01:00", "UTC", "cannot start at 24:00"),
            ("Mon 10:00", "UTC", "HH:MM-HH:MM"),
            ("Mon 10:00-11:00", "Mars/Olympus", "unknown time zone"),
        ] {
            let e = Schedule::parse(text, tz).unwrap_err().to_string();
            assert!(e.contains(why), "{text:?}: {e}");
        }
        let long = vec!["Mon 10:00-11:00"; 40].join(",");
        assert!(
            Schedule::parse(&long, "UTC")
                .unwrap_err()
                .to_string()
                .contains("longer than")
        );
        let many = vec!["Mon 1:00-2:00"; 33].join(",");
        assert!(Schedule::parse(&many, "UTC").is_err());
    }
}
