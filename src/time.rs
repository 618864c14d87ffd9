//! Dates as form services send them, for the `time::` script module: parsing the
//! common formats into one written form, formatting, and counting days.
//!
//! A date without a time is written `2025-03-14`; a time is RFC 3339 with its offset
//! (`2025-03-14T09:30:00-06:00`, `Z` for UTC). Scripts pass these strings around, store
//! them in client fields, and compare two of the same kind as text.

use std::fmt::Write as _;

use chrono::format::{Item, StrftimeItems};
use chrono::{
    DateTime, Datelike, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, SecondsFormat, TimeZone,
    Utc,
};

/// A parsed date, or a date and time with its offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Date(NaiveDate),
    Time(DateTime<FixedOffset>),
}

impl When {
    /// The written form: `2025-03-14`, or RFC 3339 with the offset.
    pub fn to_text(&self) -> String {
        match self {
            When::Date(d) => d.format("%Y-%m-%d").to_string(),
            When::Time(t) => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        }
    }

    /// The instant, with a date read as its midnight in UTC.
    pub fn instant(&self) -> DateTime<Utc> {
        match self {
            When::Date(d) => Utc.from_utc_datetime(&d.and_time(NaiveTime::MIN)),
            When::Time(t) => t.with_timezone(&Utc),
        }
    }
}

/// Why a time could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("unknown time zone {0:?}; expected an IANA name such as America/Denver or UTC")]
    Zone(String),
    #[error("invalid format {0:?}; use strftime fields such as %Y-%m-%d, %B %-d, %Y or %H:%M")]
    Format(String),
}

/// The current time in UTC, to the second.
pub fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A time zone by IANA name (`America/Denver`, `UTC`).
pub fn zone(name: &str) -> Result<chrono_tz::Tz, TimeError> {
    name.trim()
        .parse::<chrono_tz::Tz>()
        .map_err(|_| TimeError::Zone(name.to_owned()))
}

/// Formats with a date and a time, tried in order after RFC 3339 and RFC 2822. Times
/// without an offset are local times of the zone given to [`parse`] (UTC by default).
const DATETIME_FORMATS: &[&str] = &[
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%d %H:%M",
    "%Y/%m/%d %H:%M:%S",
    "%Y/%m/%d %H:%M",
    "%m/%d/%Y %H:%M:%S",
    "%m/%d/%Y %H:%M",
    "%m/%d/%Y %I:%M:%S %p",
    "%m/%d/%Y %I:%M %p",
    "%m/%d/%Y %I:%M%p",
    "%m-%d-%Y %H:%M",
    "%m-%d-%Y %I:%M %p",
    "%B %d, %Y %I:%M %p",
    "%B %d, %Y %H:%M",
    "%B %d, %Y at %I:%M %p",
    "%b %d, %Y %I:%M %p",
    "%b %d, %Y %H:%M",
];

/// Formats of a date alone.
const DATE_FORMATS: &[&str] = &[
    "%Y-%m-%d",
    "%Y/%m/%d",
    "%m/%d/%Y",
    "%m-%d-%Y",
    "%m.%d.%Y",
    "%B %d, %Y",
    "%B %d %Y",
    "%b %d, %Y",
    "%b %d %Y",
    "%b. %d, %Y",
    "%d %B %Y",
    "%d %b %Y",
    "%Y%m%d",
];

/// Reads a time or a date in the formats forms send: RFC 3339 and ISO 8601
/// (`2025-03-14T09:30:00Z`, `2025-03-14 09:30`, `2025-03-14`), US dates (`03/14/2025`,
/// `3/14/2025 9:30 AM`), written months (`March 14, 2025`, `Mar 14 2025`, with or
/// without a weekday before), RFC 2822, and Unix timestamps in seconds or milliseconds.
/// Times without an offset are read in `zone`. `None` when the text is none of these.
pub fn parse(text: &str, zone: chrono_tz::Tz) -> Option<When> {
    let text = text.trim();
    if text.is_empty() || text.len() > 100 {
        return None;
    }
    if let Some(when) = parse_timestamp(text) {
        return Some(when);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(When::Time(t));
    }
    // ISO 8601 with an offset but another separator or no seconds.
    for format in [
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%dT%H:%M%:z",
        "%Y-%m-%d %H:%M%:z",
    ] {
        if let Ok(t) = DateTime::parse_from_str(text, format) {
            return Some(When::Time(t));
        }
    }
    if let Some(t) = text
        .strip_suffix(" UTC")
        .or_else(|| text.strip_suffix(" GMT"))
        .and_then(|rest| parse(rest, chrono_tz::UTC))
    {
        return Some(t);
    }
    if let Ok(t) = DateTime::parse_from_rfc2822(text) {
        return Some(When::Time(t));
    }
    let text = without_weekday(text);
    let text = text.replace(['\u{a0}', '\u{202f}'], " ");
    let text = text.trim();
    // `%Y` takes a year of any length: a two-digit year is left to the last format.
    let plausible = |date: NaiveDate| (1000..=9999).contains(&date.year());
    for format in DATETIME_FORMATS {
        if let Ok(naive) = NaiveDateTime::parse_from_str(text, format)
            && plausible(naive.date())
        {
            return localize(naive, zone).map(When::Time);
        }
    }
    for format in DATE_FORMATS {
        if let Ok(date) = NaiveDate::parse_from_str(text, format)
            && plausible(date)
        {
            return Some(When::Date(date));
        }
    }
    // Two-digit years: 3/14/25.
    if let Ok(date) = NaiveDate::parse_from_str(text, "%m/%d/%y")
        && text.rsplit('/').next().is_some_and(|y| y.len() == 2)
    {
        return Some(When::Date(date));
    }
    None
}

/// A date given as its parts, as Jotform's date field sends it:
/// `{"month": "03", "day": "14", "year": "2025"}`.
pub fn from_parts(year: &str, month: &str, day: &str) -> Option<When> {
    let year: i32 = year.trim().parse().ok()?;
    let month: u32 = month.trim().parse().ok()?;
    let day: u32 = day.trim().parse().ok()?;
    NaiveDate::from_ymd_opt(year, month, day).map(When::Date)
}

/// Seconds (10 digits) or milliseconds (13 digits) since 1970.
fn parse_timestamp(text: &str) -> Option<When> {
    // Eight digits are a date (20250314); a timestamp of a recent time has ten.
    if text.len() < 9 || !text.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let n: i64 = text.parse().ok()?;
    from_timestamp(n)
}

/// A Unix timestamp in seconds, or in milliseconds when it is too large for seconds.
pub fn from_timestamp(n: i64) -> Option<When> {
    // Ten digits of seconds reach the year 2286; more digits are milliseconds.
    let t = if n.unsigned_abs() < 10_000_000_000 {
        DateTime::from_timestamp(n, 0)?
    } else {
        DateTime::from_timestamp_millis(n)?
    };
    Some(When::Time(t.fixed_offset()))
}

/// "Friday, March 14, 2025" and "Fri Mar 14 2025" without the weekday.
fn without_weekday(text: &str) -> &str {
    const DAYS: &[&str] = &[
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
        "mon",
        "tue",
        "tues",
        "wed",
        "thu",
        "thur",
        "thurs",
        "fri",
        "sat",
        "sun",
    ];
    let Some((first, rest)) = text.split_once(' ') else {
        return text;
    };
    let word = first.trim_end_matches([',', '.']).to_lowercase();
    if DAYS.contains(&word.as_str()) {
        rest.trim_start()
    } else {
        text
    }
}

/// A local time in a zone; in a gap of a daylight-saving change, the first instant
/// after it; in a repeated hour, the first of the two.
fn localize(naive: NaiveDateTime, zone: chrono_tz::Tz) -> Option<DateTime<FixedOffset>> {
    use chrono::offset::LocalResult;
    match zone.from_local_datetime(&naive) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Some(t.fixed_offset()),
        LocalResult::None => {
            // Skipped by the clock change: move forward until the clock exists.
            (1..=4 * 60).find_map(|minutes| {
                let later = naive + chrono::Duration::minutes(minutes);
                zone.from_local_datetime(&later)
                    .earliest()
                    .map(|t| t.fixed_offset())
            })
        }
    }
}

/// Writes a time with strftime fields, in `zone` when one is given (else in its own
/// offset). A date alone is written as its midnight.
pub fn format(
    when: &When,
    pattern: &str,
    zone: Option<chrono_tz::Tz>,
) -> Result<String, TimeError> {
    if pattern.len() > 200 || StrftimeItems::new(pattern).any(|item| matches!(item, Item::Error)) {
        return Err(TimeError::Format(pattern.to_owned()));
    }
    let mut out = String::new();
    // Writing a format chrono cannot fill (a time field of a date) is an error, not a
    // panic: `write!` reports it instead of `to_string`, which would panic.
    let written = match (when, zone) {
        (When::Date(d), _) => write!(
            out,
            "{}",
            d.and_time(NaiveTime::MIN)
                .format_with_items(StrftimeItems::new(pattern))
        ),
        (When::Time(t), Some(zone)) => write!(
            out,
            "{}",
            t.with_timezone(&zone)
                .format_with_items(StrftimeItems::new(pattern))
        ),
        (When::Time(t), None) => {
            write!(out, "{}", t.format_with_items(StrftimeItems::new(pattern)))
        }
    };
    written.map_err(|_| TimeError::Format(pattern.to_owned()))?;
    Ok(out)
}

/// Whole days from `a` to `b`: negative when `b` is earlier, rounded toward zero.
pub fn days_between(a: &When, b: &When) -> i64 {
    match (a, b) {
        (When::Date(a), When::Date(b)) => (*b - *a).num_days(),
        _ => (b.instant() - a.instant()).num_days(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn text(input: &str) -> Option<String> {
        parse(input, chrono_tz::UTC).map(|w| w.to_text())
    }

    #[test]
    fn reads_iso_and_rfc_3339() {
        assert_eq!(
            text("2025-03-14T09:30:00Z").as_deref(),
            Some("2025-03-14T09:30:00Z")
        );
        assert_eq!(
            text("2025-03-14T09:30:00.000000Z").as_deref(),
            Some("2025-03-14T09:30:00Z")
        );
        assert_eq!(
            text("2025-03-14T09:30:00-06:00").as_deref(),
            Some("2025-03-14T09:30:00-06:00")
        );
        assert_eq!(
            text("2025-03-14 09:30:00").as_deref(),
            Some("2025-03-14T09:30:00Z")
        );
        assert_eq!(
            text("2025-03-14T09:30").as_deref(),
            Some("2025-03-14T09:30:00Z")
        );
        assert_eq!(text("2025-03-14").as_deref(), Some("2025-03-14"));
        assert_eq!(text("2025/03/14").as_deref(), Some("2025-03-14"));
    }

    #[test]
    fn reads_us_dates_and_written_months() {
        assert_eq!(text("03/14/2025").as_deref(), Some("2025-03-14"));
        assert_eq!(text("3/14/2025").as_deref(), Some("2025-03-14"));
        assert_eq!(text("3/14/25").as_deref(), Some("2025-03-14"));
        assert_eq!(text("03-14-2025").as_deref(), Some("2025-03-14"));
        assert_eq!(text("March 14, 2025").as_deref(), Some("2025-03-14"));
        assert_eq!(text("Mar 14 2025").as_deref(), Some("2025-03-14"));
        assert_eq!(
            text("Friday, March 14, 2025").as_deref(),
            Some("2025-03-14")
        );
        assert_eq!(text("14 March 2025").as_deref(), Some("2025-03-14"));
        assert_eq!(
            text("3/14/2025 9:30 AM").as_deref(),
            Some("2025-03-14T09:30:00Z")
        );
        assert_eq!(
            text("03/14/2025 2:05 pm").as_deref(),
            Some("2025-03-14T14:05:00Z")
        );
        assert_eq!(
            text("Fri, 14 Mar 2025 09:30:00 +0000").as_deref(),
            Some("2025-03-14T09:30:00Z")
        );
        assert_eq!(
            text("2025-03-14 09:30:00 UTC").as_deref(),
            Some("2025-03-14T09:30:00Z")
        );
    }

    #[test]
    fn reads_unix_timestamps() {
        assert_eq!(text("1741944600").as_deref(), Some("2025-03-14T09:30:00Z"));
        assert_eq!(
            text("1741944600000").as_deref(),
            Some("2025-03-14T09:30:00Z")
        );
        assert!(from_timestamp(i64::MAX).is_none());
    }

    #[test]
    fn local_times_take_the_zone_given() {
        let denver = zone("America/Denver").unwrap();
        let t = parse("2025-03-14 09:30", denver).unwrap();
        assert_eq!(t.to_text(), "2025-03-14T09:30:00-06:00");
        // 02:30 on 9 March 2025 does not exist in Denver: the clock jumps to 03:00.
        let t = parse("2025-03-09 02:30", denver).unwrap();
        assert_eq!(t.to_text(), "2025-03-09T03:00:00-06:00");
        assert!(zone("Mars/Olympus").is_err());
    }

    #[test]
    fn odd_text_is_none() {
        for odd in [
            "",
            " ",
            "soon",
            "13/45/2025",
            "02/30/2025",
            "2025-13-01",
            "0",
            "-1",
            "25:00",
            "March 32, 2025",
            "99999999999999999999999",
            "2025-03-14T25:00:00Z",
        ] {
            assert_eq!(text(odd), None, "{odd:?}");
        }
    }

    #[test]
    fn formats_and_refuses_bad_patterns() {
        let t = parse("2025-03-14T15:30:00Z", chrono_tz::UTC).unwrap();
        assert_eq!(format(&t, "%B %-d, %Y", None).unwrap(), "March 14, 2025");
        let denver = zone("America/Denver").unwrap();
        assert_eq!(format(&t, "%H:%M %Z", Some(denver)).unwrap(), "09:30 MDT");
        let d = parse("2025-03-14", chrono_tz::UTC).unwrap();
        assert_eq!(format(&d, "%m/%d/%Y", None).unwrap(), "03/14/2025");
        assert!(format(&t, "%Q", None).is_err());
        assert!(format(&t, "%", None).is_err());
        // A date has no offset to print: an error, never a panic.
        assert!(format(&d, "%z", None).is_err());
    }

    #[test]
    fn counts_days() {
        let p = |s: &str| parse(s, chrono_tz::UTC).unwrap();
        assert_eq!(days_between(&p("2025-03-01"), &p("2025-03-14")), 13);
        assert_eq!(days_between(&p("2025-03-14"), &p("2025-03-01")), -13);
        assert_eq!(
            days_between(&p("2025-03-14T23:00:00Z"), &p("2025-03-15T22:00:00Z")),
            0
        );
        assert_eq!(days_between(&p("2024-03-14"), &p("2025-03-14")), 365);
        assert_eq!(
            days_between(&p("2025-03-01"), &p("2025-03-02T12:00:00Z")),
            1
        );
        assert_eq!(
            from_parts("2025", "03", "14"),
            Some(When::Date(p("2025-03-14").date()))
        );
        assert_eq!(from_parts("2025", "02", "30"), None);
        assert_eq!(from_parts("x", "1", "1"), None);
    }

    impl When {
        fn date(&self) -> NaiveDate {
            match self {
                When::Date(d) => *d,
                When::Time(t) => t.date_naive(),
            }
        }
    }
}
