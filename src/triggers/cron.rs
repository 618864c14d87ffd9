//! Cron expressions with crontab's meaning, and their fire times in a time zone.
//!
//! The `cron` crate does the calendar arithmetic. Its conventions differ from crontab's,
//! so every expression is translated before it reaches the crate:
//!
//! - five fields are crontab's (minute hour day-of-month month day-of-week); six put
//!   seconds first and seven add a year last, as the crate reads them;
//! - day-of-week 0 and 7 are Sunday and 1 is Monday (the crate counts Sunday as 1);
//! - when day-of-month and day-of-week are both restricted (neither starts with `*`),
//!   a day matching either fires (the crate requires both): the expression becomes two
//!   crate schedules whose fire times are merged;
//! - `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`;
//! - fire times are computed on the wall clock and only then placed in the zone: a wall
//!   time skipped by a daylight-saving change fires at the first instant after the gap,
//!   and one that happens twice fires once, at the first (the crate, given a zone, drops
//!   the first kind and fires the second kind twice).

use std::collections::BTreeSet;
use std::iter::Peekable;
use std::str::FromStr;

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// A problem with a cron expression, with the byte offset of the part at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CronError {
    pub message: String,
    pub help: Option<String>,
    /// Where in the expression the problem starts.
    pub offset: usize,
}

impl CronError {
    fn new(offset: usize, message: impl Into<String>) -> CronError {
        CronError {
            message: message.into(),
            help: None,
            offset,
        }
    }

    fn with_help(mut self, help: impl Into<String>) -> CronError {
        self.help = Some(help.into());
        self
    }
}

/// What one field of an expression may hold.
struct FieldKind {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [(&'static str, u32)],
}

const MONTH_NAMES: &[(&str, u32)] = &[
    ("jan", 1),
    ("feb", 2),
    ("mar", 3),
    ("apr", 4),
    ("may", 5),
    ("jun", 6),
    ("jul", 7),
    ("aug", 8),
    ("sep", 9),
    ("oct", 10),
    ("nov", 11),
    ("dec", 12),
];

const DAY_NAMES: &[(&str, u32)] = &[
    ("sun", 0),
    ("mon", 1),
    ("tue", 2),
    ("wed", 3),
    ("thu", 4),
    ("fri", 5),
    ("sat", 6),
];

const SECOND: FieldKind = FieldKind {
    name: "second",
    min: 0,
    max: 59,
    names: &[],
};
const MINUTE: FieldKind = FieldKind {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: FieldKind = FieldKind {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DAY_OF_MONTH: FieldKind = FieldKind {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: FieldKind = FieldKind {
    name: "month",
    min: 1,
    max: 12,
    names: MONTH_NAMES,
};
const DAY_OF_WEEK: FieldKind = FieldKind {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: DAY_NAMES,
};
const YEAR: FieldKind = FieldKind {
    name: "year",
    min: 1970,
    max: 2100,
    names: &[],
};

/// The five-field forms of the `@` macros.
const MACROS: &[(&str, &str)] = &[
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

/// One field as written, and the values it stands for.
#[derive(Debug, Clone)]
struct Field {
    /// Starts with `*` or `?`: crontab treats such a day field as unrestricted.
    star: bool,
    /// Exactly `*` or `?`: every value.
    all: bool,
    values: BTreeSet<u32>,
}

/// A parsed cron expression.
#[derive(Debug, Clone)]
pub struct Cron {
    source: String,
    /// One crate schedule, or two whose fire times are merged (crontab's day rule).
    parts: Vec<::cron::Schedule>,
    days_of_month: Field,
    months: Field,
    days_of_week: Field,
}

impl Cron {
    /// Parses an expression of 5, 6 or 7 fields, or an `@` macro.
    pub fn parse(text: &str) -> Result<Cron, CronError> {
        let trimmed = text.trim();
        let lead = text.len() - text.trim_start().len();
        if trimmed.is_empty() {
            return Err(CronError::new(0, "the cron expression is empty")
                .with_help("write five fields, such as \"30 2 * * *\" for 02:30 every day"));
        }
        let expanded;
        let (body, macro_offset) = if trimmed.starts_with('@') {
            let name = trimmed.to_ascii_lowercase();
            match MACROS.iter().find(|(m, _)| *m == name) {
                Some((_, fields)) => (*fields, Some(lead)),
                None => {
                    let known: Vec<&str> = MACROS.iter().map(|(m, _)| *m).collect();
                    let help = if name == "@reboot" {
                        "a rule cannot run at start-up; use a schedule such as @daily".to_owned()
                    } else {
                        format!("the macros are {}", known.join(", "))
                    };
                    return Err(
                        CronError::new(lead, format!("unknown cron macro `{trimmed}`"))
                            .with_help(help),
                    );
                }
            }
        } else {
            expanded = text;
            (expanded, None)
        };

        // Each field with its byte offset in the expression as written.
        let mut fields: Vec<(usize, &str)> = Vec::new();
        let mut start = None;
        for (i, c) in body.char_indices() {
            match (c.is_whitespace(), start) {
                (false, None) => start = Some(i),
                (true, Some(s)) => {
                    fields.push((s, &body[s..i]));
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            fields.push((s, &body[s..]));
        }
        // Offsets inside a macro's expansion point at the macro itself.
        let at = |offset: usize| macro_offset.unwrap_or(offset);

        let (second, rest) = match fields.len() {
            5 => ((at(0), "0"), &fields[..]),
            6 | 7 => (fields[0], &fields[1..]),
            n => {
                return Err(CronError::new(
                    lead,
                    format!(
                        "expected 5 fields (minute hour day-of-month month day-of-week), 6 \
                         with seconds first, or 7 with a year last; found {n}"
                    ),
                )
                .with_help("\"30 2 * * *\" is 02:30 every day; @daily, @hourly and the other macros work too"));
            }
        };
        let year = rest.get(5).copied().unwrap_or((at(0), "*"));
        let parse = |(offset, text): (usize, &str), kind: &FieldKind| {
            parse_field(text, kind).map_err(|(inner, message)| {
                let offset = macro_offset.unwrap_or(offset + inner);
                CronError::new(offset, message)
            })
        };
        let seconds = parse(second, &SECOND)?;
        let minutes = parse(rest[0], &MINUTE)?;
        let hours = parse(rest[1], &HOUR)?;
        let days_of_month = parse(rest[2], &DAY_OF_MONTH)?;
        let months = parse(rest[3], &MONTH)?;
        let days_of_week = parse(rest[4], &DAY_OF_WEEK)?;
        let years = parse(year, &YEAR)?;

        // The crate counts weekdays from Sunday = 1; crontab from Sunday = 0 (and 7).
        let crate_weekdays = Field {
            values: days_of_week.values.iter().map(|d| d % 7 + 1).collect(),
            ..days_of_week.clone()
        };
        let every = Field {
            star: true,
            all: true,
            values: BTreeSet::new(),
        };
        let expression = |dom: &Field, dow: &Field| {
            [&seconds, &minutes, &hours, dom, &months, dow, &years]
                .iter()
                .map(|f| crate_text(f))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let texts = if !days_of_month.star && !days_of_week.star {
            vec![
                expression(&days_of_month, &every),
                expression(&every, &crate_weekdays),
            ]
        } else {
            vec![expression(&days_of_month, &crate_weekdays)]
        };
        let mut parts = Vec::new();
        for t in texts {
            let schedule = ::cron::Schedule::from_str(&t).map_err(|e| {
                CronError::new(lead, format!("the cron expression is not valid: {e}"))
            })?;
            parts.push(schedule);
        }
        Ok(Cron {
            source: text.trim().to_owned(),
            parts,
            days_of_month,
            months,
            days_of_week,
        })
    }

    /// The expression as written, trimmed.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Wall-clock times strictly after `after`, in ascending order.
    pub fn wall_times_after(&self, after: NaiveDateTime) -> WallTimes {
        let start = Utc.from_utc_datetime(&after);
        WallTimes {
            parts: self
                .parts
                .iter()
                .map(|p| p.after_owned(start).peekable())
                .collect(),
        }
    }

    /// Why the expression has no fire time after `after`, or `None` when it has one.
    pub fn never_fires(&self, after: NaiveDateTime) -> Option<CronError> {
        if self.wall_times_after(after).next().is_some() {
            return None;
        }
        let impossible_day = self.days_of_week.star
            && !self.days_of_month.all
            && self.month_values().iter().all(|&m| {
                let longest = days_in_month(m);
                self.days_of_month.values.iter().all(|&d| d > longest)
            });
        let message = if impossible_day {
            let days: Vec<String> = self
                .days_of_month
                .values
                .iter()
                .map(u32::to_string)
                .collect();
            let months: Vec<&str> = self.month_values().iter().map(|&m| month_name(m)).collect();
            format!(
                "the schedule `{}` never fires: day {} never occurs in {}",
                self.source,
                days.join(", "),
                months.join(", ")
            )
        } else {
            format!(
                "the schedule `{}` never fires: no time matches it after {}",
                self.source,
                after.format("%Y-%m-%d")
            )
        };
        Some(CronError::new(0, message).with_help(
            "check the day-of-month, month and year fields; a schedule must fire at least once",
        ))
    }

    fn month_values(&self) -> Vec<u32> {
        if self.months.all {
            (1..=12).collect()
        } else {
            self.months.values.iter().copied().collect()
        }
    }
}

/// The longest a month can be, leap years included.
fn days_in_month(month: u32) -> u32 {
    match month {
        2 => 29,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn month_name(month: u32) -> &'static str {
    const NAMES: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    NAMES
        .get(month.saturating_sub(1) as usize)
        .copied()
        .unwrap_or("?")
}

/// The field as the crate reads it: `*`, or the explicit list of values.
fn crate_text(field: &Field) -> String {
    if field.all {
        return "*".into();
    }
    let values: Vec<String> = field.values.iter().map(u32::to_string).collect();
    values.join(",")
}

/// Parses one field into its values. Errors carry the offset inside the field.
fn parse_field(text: &str, kind: &FieldKind) -> Result<Field, (usize, String)> {
    let star = text.starts_with('*') || text.starts_with('?');
    let all = text == "*" || text == "?";
    let mut values = BTreeSet::new();
    let mut offset = 0;
    for item in text.split(',') {
        parse_item(item, kind, &mut values).map_err(|(inner, m)| (offset + inner, m))?;
        offset += item.len() + 1;
    }
    if kind.name == DAY_OF_WEEK.name {
        // 7 is Sunday too.
        if values.remove(&7) {
            values.insert(0);
        }
    }
    Ok(Field { star, all, values })
}

fn parse_item(
    item: &str,
    kind: &FieldKind,
    values: &mut BTreeSet<u32>,
) -> Result<(), (usize, String)> {
    if item.is_empty() {
        return Err((0, format!("the {} field has an empty item", kind.name)));
    }
    let (base, step) = match item.split_once('/') {
        Some((base, step)) => {
            let at = base.len() + 1;
            let n: u32 = step.parse().map_err(|_| {
                (
                    at,
                    format!(
                        "expected a step after `/` in the {} field, found `{step}`",
                        kind.name
                    ),
                )
            })?;
            if n == 0 {
                return Err((
                    at,
                    format!("a step in the {} field must be at least 1", kind.name),
                ));
            }
            (base, Some(n))
        }
        None => (item, None),
    };
    let (low, high) = if base == "*" || base == "?" {
        if base == "?" && kind.name != DAY_OF_MONTH.name && kind.name != DAY_OF_WEEK.name {
            return Err((
                0,
                format!("`?` is only for the day fields, not the {}", kind.name),
            ));
        }
        (kind.min, kind.max)
    } else if let Some((a, b)) = base.split_once('-') {
        let low = value(a, kind).map_err(|m| (0, m))?;
        let mut high = value(b, kind).map_err(|m| (a.len() + 1, m))?;
        // `fri-sun` reads as Friday to Sunday: a range of days may end on Sunday as 7.
        if kind.name == DAY_OF_WEEK.name && high == 0 && low > 0 {
            high = 7;
        }
        if low > high {
            return Err((
                0,
                format!(
                    "the range {base} in the {} field runs backwards; write it as two \
                     ranges, such as {a}-{},{}-{b}",
                    kind.name, kind.max, kind.min
                ),
            ));
        }
        (low, high)
    } else {
        let v = value(base, kind).map_err(|m| (0, m))?;
        // `5/15` counts from 5 to the end of the field.
        (v, if step.is_some() { kind.max } else { v })
    };
    let step = step.unwrap_or(1) as usize;
    values.extend((low..=high).step_by(step));
    Ok(())
}

/// One value of a field: a number in range, or a name where the field has names.
fn value(text: &str, kind: &FieldKind) -> Result<u32, String> {
    if let Ok(n) = text.parse::<u32>() {
        if n < kind.min || n > kind.max {
            return Err(format!(
                "{} {n} is out of range: expected {} to {}",
                kind.name, kind.min, kind.max
            ));
        }
        return Ok(n);
    }
    let lower = text.to_ascii_lowercase();
    if let Some((_, n)) = kind
        .names
        .iter()
        .find(|(name, _)| lower == *name || (lower.len() > 3 && full_name(name, &lower)))
    {
        return Ok(*n);
    }
    let names = if kind.names.is_empty() {
        String::new()
    } else {
        let list: Vec<&str> = kind.names.iter().map(|(n, _)| *n).collect();
        format!(" or one of {}", list.join(", "))
    };
    Err(format!(
        "expected a {} from {} to {}{names}, found `{text}`",
        kind.name, kind.min, kind.max
    ))
}

/// Whether `text` is the full English name of a day or month abbreviated as `short`.
fn full_name(short: &str, text: &str) -> bool {
    const FULL: &[&str] = &[
        "sunday",
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "january",
        "february",
        "march",
        "april",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
    ];
    FULL.iter().any(|f| *f == text && f.starts_with(short))
}

/// Wall-clock fire times, merged from the crate schedules of one expression.
pub struct WallTimes {
    parts: Vec<Peekable<::cron::OwnedScheduleIterator<Utc>>>,
}

impl std::fmt::Debug for WallTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WallTimes").finish_non_exhaustive()
    }
}

impl Iterator for WallTimes {
    type Item = NaiveDateTime;

    fn next(&mut self) -> Option<NaiveDateTime> {
        let next = self
            .parts
            .iter_mut()
            .filter_map(|p| p.peek().map(DateTime::naive_utc))
            .min()?;
        // A day matching both day fields comes from both parts: take it once.
        for part in &mut self.parts {
            if part.peek().map(DateTime::naive_utc) == Some(next) {
                part.next();
            }
        }
        Some(next)
    }
}

/// How a daylight-saving change moved a fire time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shift {
    /// The wall time does not exist that day; the tick fires when the gap ends.
    Gap,
    /// The wall time happens twice that day; the tick fires at the first.
    Repeated,
}

impl Shift {
    pub fn as_str(&self) -> &'static str {
        match self {
            Shift::Gap => "gap",
            Shift::Repeated => "repeated",
        }
    }
}

/// One fire time of a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fire {
    /// The instant the tick fires.
    pub at: DateTime<Utc>,
    /// The wall time the expression names, which differs from `at` in the zone when a
    /// daylight-saving gap moved it.
    pub wall: NaiveDateTime,
    pub shift: Option<Shift>,
}

/// A cron expression in a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub cron: Cron,
    pub timezone: Tz,
}

impl Schedule {
    pub fn new(cron: Cron, timezone: Tz) -> Schedule {
        Schedule { cron, timezone }
    }

    /// The first fire time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<Fire> {
        self.fires_after(after).next()
    }

    /// Fire times strictly after `after`, each instant once, ascending.
    pub fn fires_after(&self, after: DateTime<Utc>) -> Fires<'_> {
        // Wall times before the wall time of `after` map to instants before `after`, so
        // the search can start there.
        let wall = after.with_timezone(&self.timezone).naive_local();
        Fires {
            schedule: self,
            walls: self.cron.wall_times_after(wall),
            after,
            last: None,
        }
    }

    /// The last fire time in `(after, until]`, found by halving the interval: a few
    /// dozen steps however long the downtime and however often the schedule fires.
    pub fn latest_in(&self, after: DateTime<Utc>, until: DateTime<Utc>) -> Option<Fire> {
        let (mut low, mut high) = (after, until);
        // Invariant: `found` is the first fire after `low`, and it is at or before `high`.
        let mut found = self.next_after(low).filter(|f| f.at <= high)?;
        loop {
            if self.next_after(found.at).is_none_or(|f| f.at > high) {
                return Some(found);
            }
            let middle = low + (high - low) / 2;
            match self.next_after(middle).filter(|f| f.at <= high) {
                Some(later) => {
                    low = middle;
                    found = later;
                }
                // Nothing after the middle: `found` lies in the first half.
                None => high = middle,
            }
        }
    }

    /// How many fire times fall strictly between `after` and `before`, counting at most
    /// `cap` of them.
    pub fn count_between(&self, after: DateTime<Utc>, before: DateTime<Utc>, cap: u64) -> u64 {
        let cap = usize::try_from(cap).unwrap_or(usize::MAX);
        self.fires_after(after)
            .take_while(|f| f.at < before)
            .take(cap)
            .count() as u64
    }

    /// Places a wall time in the zone.
    pub fn resolve(&self, wall: NaiveDateTime) -> Option<(DateTime<Utc>, Option<Shift>)> {
        match self.timezone.from_local_datetime(&wall) {
            LocalResult::Single(t) => Some((t.with_timezone(&Utc), None)),
            LocalResult::Ambiguous(first, _) => {
                Some((first.with_timezone(&Utc), Some(Shift::Repeated)))
            }
            LocalResult::None => gap_end(&self.timezone, wall).map(|t| (t, Some(Shift::Gap))),
        }
    }
}

/// The first instant after the gap that swallows `wall`: when the clock jumps forward,
/// the wall time it lands on.
fn gap_end(tz: &Tz, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
    let valid = |t: NaiveDateTime| tz.from_local_datetime(&t).earliest();
    let mut minute = wall.with_second(0)?.with_nanosecond(0)? + Duration::minutes(1);
    // Gaps last an hour or half an hour; a few zones once skipped a whole day.
    for _ in 0..(48 * 60) {
        if valid(minute).is_some() {
            // Transitions fall on whole minutes but for ancient local mean times.
            let mut first = minute;
            for back in 1..60 {
                let candidate = minute - Duration::seconds(back);
                if candidate <= wall || valid(candidate).is_none() {
                    break;
                }
                first = candidate;
            }
            return valid(first).map(|t| t.with_timezone(&Utc));
        }
        minute += Duration::minutes(1);
    }
    None
}

/// The iterator of [`Schedule::fires_after`].
#[derive(Debug)]
pub struct Fires<'a> {
    schedule: &'a Schedule,
    walls: WallTimes,
    after: DateTime<Utc>,
    last: Option<DateTime<Utc>>,
}

impl Iterator for Fires<'_> {
    type Item = Fire;

    fn next(&mut self) -> Option<Fire> {
        loop {
            let wall = self.walls.next()?;
            let Some((at, shift)) = self.schedule.resolve(wall) else {
                continue;
            };
            // Wall times in a repeated hour's second pass are already behind; wall times
            // inside one gap all land on its end, which fires once.
            if at <= self.after || Some(at) == self.last {
                continue;
            }
            self.last = Some(at);
            return Some(Fire { at, wall, shift });
        }
    }
}

/// Parses an IANA zone name exactly, with the nearest names as help when it is unknown.
pub fn parse_timezone(name: &str) -> Result<Tz, CronError> {
    let name = name.trim();
    if let Ok(tz) = Tz::from_str(name) {
        return Ok(tz);
    }
    let lower = name.to_ascii_lowercase();
    if let Some(tz) = chrono_tz::TZ_VARIANTS
        .iter()
        .find(|tz| tz.name().to_ascii_lowercase() == lower)
    {
        return Err(
            CronError::new(0, format!("unknown time zone `{name}`")).with_help(format!(
                "time zone names are case-sensitive: `{}`",
                tz.name()
            )),
        );
    }
    let mut close: Vec<(usize, &str)> = chrono_tz::TZ_VARIANTS
        .iter()
        .map(|tz| {
            let candidate = tz.name();
            let city = candidate.rsplit('/').next().unwrap_or(candidate);
            let whole = strsim::damerau_levenshtein(&lower, &candidate.to_ascii_lowercase());
            let part = strsim::damerau_levenshtein(&lower, &city.to_ascii_lowercase());
            (whole.min(part), candidate)
        })
        .filter(|(d, _)| *d <= 3)
        .collect();
    close.sort();
    let help = match close.first() {
        Some((_, best)) => {
            format!("did you mean `{best}`? zones are IANA names such as America/Denver")
        }
        None => "zones are IANA names such as America/Denver, Europe/London or UTC".to_owned(),
    };
    Err(CronError::new(0, format!("unknown time zone `{name}`")).with_help(help))
}

/// Whether the zone's clocks change during the local day of `at`: its UTC offset just
/// before the day starts differs from the offset at its last second. A change at
/// midnight belongs to the day it starts.
pub fn clocks_change_that_day(tz: &Tz, at: DateTime<Utc>) -> bool {
    use chrono::Offset;
    let day = at.with_timezone(tz).date_naive();
    let (Some(start), Some(end)) = (
        day_start(tz, day),
        day.succ_opt().and_then(|d| day_start(tz, d)),
    ) else {
        return false;
    };
    let offset = |t: DateTime<Utc>| t.with_timezone(tz).offset().fix();
    let second = Duration::seconds(1);
    offset(start - second) != offset(end - second)
}

/// The first instant of a local day: its midnight, or when midnight is skipped by a
/// change, the end of that gap.
fn day_start(tz: &Tz, day: chrono::NaiveDate) -> Option<DateTime<Utc>> {
    let midnight = day.and_hms_opt(0, 0, 0)?;
    match tz.from_local_datetime(&midnight).earliest() {
        Some(t) => Some(t.with_timezone(&Utc)),
        None => gap_end(tz, midnight),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::{Datelike, SecondsFormat, Weekday};

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn zone(name: &str) -> Tz {
        parse_timezone(name).unwrap()
    }

    fn schedule(expression: &str, tz: &str) -> Schedule {
        Schedule::new(Cron::parse(expression).unwrap(), zone(tz))
    }

    /// The next `n` fire times after `from`, in UTC.
    fn next(expression: &str, tz: &str, from: &str, n: usize) -> Vec<String> {
        schedule(expression, tz)
            .fires_after(utc(from))
            .take(n)
            .map(|f| f.at.to_rfc3339_opts(SecondsFormat::Secs, true))
            .collect()
    }

    /// The next `n` fire times after `from`, as local wall times with their offset.
    fn next_local(expression: &str, tz: &str, from: &str, n: usize) -> Vec<String> {
        let tz_ = zone(tz);
        schedule(expression, tz)
            .fires_after(utc(from))
            .take(n)
            .map(|f| {
                f.at.with_timezone(&tz_)
                    .to_rfc3339_opts(SecondsFormat::Secs, false)
            })
            .collect()
    }

    fn error(expression: &str) -> CronError {
        Cron::parse(expression).unwrap_err()
    }

    // Crontab's weekday and day-field rules.

    #[test]
    fn weekday_numbers_count_from_sunday_0_and_7_is_sunday_too() {
        // 2024-06-02 is a Sunday.
        let from = "2024-06-01T12:00:00Z";
        for sunday in [
            "0 9 * * 0",
            "0 9 * * 7",
            "0 9 * * sun",
            "0 9 * * SUN",
            "0 9 * * Sunday",
        ] {
            assert_eq!(
                next(sunday, "UTC", from, 2),
                ["2024-06-02T09:00:00Z", "2024-06-09T09:00:00Z"],
                "{sunday}"
            );
        }
        assert_eq!(
            next("0 9 * * 1", "UTC", from, 1),
            ["2024-06-03T09:00:00Z"],
            "1 is Monday"
        );
        assert_eq!(
            next("0 9 * * 6", "UTC", from, 1),
            ["2024-06-08T09:00:00Z"],
            "6 is Saturday"
        );
    }

    #[test]
    fn one_to_five_and_mon_fri_are_monday_to_friday() {
        let expected = [
            "2024-06-03T09:00:00Z",
            "2024-06-04T09:00:00Z",
            "2024-06-05T09:00:00Z",
            "2024-06-06T09:00:00Z",
            "2024-06-07T09:00:00Z",
            "2024-06-10T09:00:00Z",
        ];
        // From a Saturday morning.
        for text in [
            "0 9 * * 1-5",
            "0 9 * * mon-fri",
            "0 9 * * MON-FRI",
            "0 9 * * 1,2,3,4,5",
        ] {
            assert_eq!(
                next(text, "UTC", "2024-06-01T10:00:00Z", 6),
                expected,
                "{text}"
            );
        }
    }

    #[test]
    fn weekday_ranges_may_end_on_sunday() {
        // Friday to Sunday, from a Thursday.
        let expected = [
            "2024-06-07T08:00:00Z",
            "2024-06-08T08:00:00Z",
            "2024-06-09T08:00:00Z",
            "2024-06-14T08:00:00Z",
        ];
        for text in ["0 8 * * 5-7", "0 8 * * fri-sun", "0 8 * * 5-0"] {
            assert_eq!(
                next(text, "UTC", "2024-06-06T00:00:00Z", 4),
                expected,
                "{text}"
            );
        }
    }

    #[test]
    fn weekday_steps_follow_crontab() {
        // */2 is 0,2,4,6: Sunday, Tuesday, Thursday, Saturday.
        let days: Vec<Weekday> = schedule("0 0 * * */2", "UTC")
            .fires_after(utc("2024-06-01T12:00:00Z"))
            .take(4)
            .map(|f| f.at.weekday())
            .collect();
        assert_eq!(
            days,
            [Weekday::Sun, Weekday::Tue, Weekday::Thu, Weekday::Sat]
        );
    }

    #[test]
    fn both_day_fields_restricted_means_either_matches() {
        // The 13th of each month, and every Friday; 2024-09-13 is both and fires once.
        assert_eq!(
            next("0 0 13 * 5", "UTC", "2024-09-01T00:00:00Z", 7),
            [
                "2024-09-06T00:00:00Z",
                "2024-09-13T00:00:00Z",
                "2024-09-20T00:00:00Z",
                "2024-09-27T00:00:00Z",
                "2024-10-04T00:00:00Z",
                "2024-10-11T00:00:00Z",
                "2024-10-13T00:00:00Z",
            ]
        );
    }

    #[test]
    fn a_day_field_starting_with_a_star_means_both_must_match() {
        // Odd days of the month that are Mondays: September 2024's Mondays are the 2nd,
        // 9th, 16th, 23rd and 30th.
        assert_eq!(
            next("0 0 */2 * 1", "UTC", "2024-09-01T00:00:00Z", 2),
            ["2024-09-09T00:00:00Z", "2024-09-23T00:00:00Z"]
        );
        // One day field alone restricts alone.
        assert_eq!(
            next("0 0 1 * *", "UTC", "2024-09-01T00:00:00Z", 2),
            ["2024-10-01T00:00:00Z", "2024-11-01T00:00:00Z"]
        );
        assert_eq!(
            next("0 0 ? * 1", "UTC", "2024-09-01T00:00:00Z", 1),
            ["2024-09-02T00:00:00Z"]
        );
    }

    #[test]
    fn month_names_and_full_day_names_work() {
        assert_eq!(
            next("0 0 1 jan,Jul *", "UTC", "2024-02-01T00:00:00Z", 2),
            ["2024-07-01T00:00:00Z", "2025-01-01T00:00:00Z"]
        );
        assert_eq!(
            next("0 0 * * Monday", "UTC", "2024-09-01T00:00:00Z", 1),
            ["2024-09-02T00:00:00Z"]
        );
        assert_eq!(
            next("0 0 1 january *", "UTC", "2024-09-01T00:00:00Z", 1),
            ["2025-01-01T00:00:00Z"]
        );
    }

    #[test]
    fn steps_ranges_and_lists() {
        assert_eq!(
            next("*/20 * * * *", "UTC", "2024-01-01T00:05:00Z", 3),
            [
                "2024-01-01T00:20:00Z",
                "2024-01-01T00:40:00Z",
                "2024-01-01T01:00:00Z"
            ]
        );
        // `5/20` counts from 5 to the end of the field.
        assert_eq!(
            next("5/20 * * * *", "UTC", "2024-01-01T00:00:00Z", 3),
            [
                "2024-01-01T00:05:00Z",
                "2024-01-01T00:25:00Z",
                "2024-01-01T00:45:00Z"
            ]
        );
        assert_eq!(
            next("0 8-17/3 * * *", "UTC", "2024-01-01T00:00:00Z", 4),
            [
                "2024-01-01T08:00:00Z",
                "2024-01-01T11:00:00Z",
                "2024-01-01T14:00:00Z",
                "2024-01-01T17:00:00Z"
            ]
        );
    }

    #[test]
    fn six_fields_put_seconds_first_and_seven_add_a_year() {
        assert_eq!(
            next("30 0 12 * * *", "UTC", "2024-01-01T00:00:00Z", 1),
            ["2024-01-01T12:00:30Z"]
        );
        assert_eq!(
            next("0 0 12 1 1 * 2027", "UTC", "2024-01-01T00:00:00Z", 2),
            ["2027-01-01T12:00:00Z"],
            "a year field ends the schedule after that year"
        );
    }

    #[test]
    fn every_macro_means_its_crontab_expression() {
        // From Wednesday 2024-05-15 10:20 UTC.
        let from = "2024-05-15T10:20:00Z";
        let cases = [
            ("@yearly", "2025-01-01T00:00:00Z"),
            ("@annually", "2025-01-01T00:00:00Z"),
            ("@monthly", "2024-06-01T00:00:00Z"),
            ("@weekly", "2024-05-19T00:00:00Z"),
            ("@daily", "2024-05-16T00:00:00Z"),
            ("@midnight", "2024-05-16T00:00:00Z"),
            ("@hourly", "2024-05-15T11:00:00Z"),
        ];
        for (name, first) in cases {
            assert_eq!(next(name, "UTC", from, 1), [first], "{name}");
            let upper = name.to_uppercase();
            assert_eq!(
                next(&format!("  {upper} "), "UTC", from, 1),
                [first],
                "{upper}"
            );
        }
        assert_eq!(
            next("@weekly", "UTC", from, 2)[1],
            "2024-05-26T00:00:00Z",
            "@weekly is every Sunday"
        );
        assert_eq!(next("@hourly", "UTC", from, 2)[1], "2024-05-15T12:00:00Z");
        // A macro is read in the rule's zone like any expression.
        assert_eq!(
            next("@daily", "America/New_York", from, 1),
            ["2024-05-16T04:00:00Z"]
        );
    }

    #[test]
    fn unknown_macros_are_errors_that_list_the_known_ones() {
        let e = error("@fortnightly");
        assert!(
            e.message.contains("unknown cron macro `@fortnightly`"),
            "{e:?}"
        );
        assert!(e.help.unwrap().contains("@daily"));
        let e = error("@reboot");
        assert!(e.help.unwrap().contains("start-up"));
        let e = error("@daily 5");
        assert!(e.message.contains("unknown cron macro"), "{e:?}");
    }

    // What the `cron` crate does on its own, pinned so that an upgrade that changes any
    // of it shows here: each is a convention this module translates.

    #[test]
    fn the_crate_counts_weekdays_from_sunday_as_1() {
        let raw = ::cron::Schedule::from_str("0 0 0 * * 1").unwrap();
        let first = raw.after(&utc("2024-06-01T12:00:00Z")).next().unwrap();
        assert_eq!(first.weekday(), Weekday::Sun, "the crate reads 1 as Sunday");
        let ours = schedule("0 0 * * 1", "UTC");
        let first = ours.next_after(utc("2024-06-01T12:00:00Z")).unwrap();
        assert_eq!(
            first.at.weekday(),
            Weekday::Mon,
            "crontab reads 1 as Monday"
        );
        assert!(
            ::cron::Schedule::from_str("0 0 0 * * 0").is_err(),
            "the crate has no weekday 0"
        );
    }

    #[test]
    fn the_crate_requires_both_day_fields_where_crontab_takes_either() {
        let raw = ::cron::Schedule::from_str("0 0 0 13 * 6").unwrap();
        let first = raw.after(&utc("2024-09-01T00:00:00Z")).next().unwrap();
        // Friday the 13th: crate weekday 6 is Friday, and both must match.
        assert_eq!(first, utc("2024-09-13T00:00:00Z"));
        let second = raw.after(&first).next().unwrap();
        assert_eq!(second, utc("2024-12-13T00:00:00Z"));
        assert_eq!(
            next("0 0 13 * 5", "UTC", "2024-09-13T00:00:00Z", 1),
            ["2024-09-20T00:00:00Z"],
            "crontab also fires on the other Fridays"
        );
    }

    #[test]
    fn the_crate_needs_seconds_and_reads_five_fields_as_an_error() {
        assert!(::cron::Schedule::from_str("30 2 * * *").is_err());
        assert!(Cron::parse("30 2 * * *").is_ok());
    }

    #[test]
    fn the_crate_in_a_zone_drops_skipped_times_and_repeats_doubled_ones() {
        let tz = zone("America/New_York");
        // 02:30 does not exist on 2024-03-10: the crate goes on to the next day.
        let raw = ::cron::Schedule::from_str("0 30 2 * * *").unwrap();
        let from = utc("2024-03-09T12:00:00Z").with_timezone(&tz);
        let first = raw.after(&from).next().unwrap();
        assert_eq!(first.with_timezone(&Utc), utc("2024-03-11T06:30:00Z"));
        assert_eq!(
            next("30 2 * * *", "America/New_York", "2024-03-09T12:00:00Z", 1),
            ["2024-03-10T07:00:00Z"],
            "crontab fires at the end of the gap"
        );
        // 01:30 happens twice on 2024-11-03: the crate fires at both.
        let raw = ::cron::Schedule::from_str("0 30 1 * * *").unwrap();
        let from = utc("2024-11-03T00:00:00Z").with_timezone(&tz);
        let fires: Vec<DateTime<Utc>> = raw
            .after(&from)
            .take(2)
            .map(|t| t.with_timezone(&Utc))
            .collect();
        assert_eq!(
            fires,
            [utc("2024-11-03T05:30:00Z"), utc("2024-11-03T06:30:00Z")]
        );
        assert_eq!(
            next("30 1 * * *", "America/New_York", "2024-11-03T00:00:00Z", 2),
            ["2024-11-03T05:30:00Z", "2024-11-04T06:30:00Z"],
            "crontab fires once, at the first"
        );
    }

    // Daylight saving.

    #[test]
    fn new_york_spring_forward_fires_skipped_times_when_the_gap_ends() {
        // 2024-03-10: 02:00 EST becomes 03:00 EDT.
        assert_eq!(
            next_local("30 2 * * *", "America/New_York", "2024-03-09T00:00:00Z", 3),
            [
                "2024-03-09T02:30:00-05:00",
                "2024-03-10T03:00:00-04:00",
                "2024-03-11T02:30:00-04:00",
            ]
        );
        // Hourly: the skipped 02:00 and the real 03:00 are the same instant, fired once.
        assert_eq!(
            next("0 * * * *", "America/New_York", "2024-03-10T04:30:00Z", 4),
            [
                "2024-03-10T05:00:00Z",
                "2024-03-10T06:00:00Z",
                "2024-03-10T07:00:00Z",
                "2024-03-10T08:00:00Z",
            ]
        );
        let fire = schedule("30 2 * * *", "America/New_York")
            .next_after(utc("2024-03-10T00:00:00Z"))
            .unwrap();
        assert_eq!(fire.shift, Some(Shift::Gap));
        assert_eq!(fire.wall.to_string(), "2024-03-10 02:30:00");
    }

    #[test]
    fn new_york_fall_back_fires_repeated_times_once_at_the_first() {
        // 2024-11-03: 02:00 EDT becomes 01:00 EST; 01:00 to 01:59 happen twice.
        assert_eq!(
            next_local("30 1 * * *", "America/New_York", "2024-11-02T12:00:00Z", 3),
            [
                "2024-11-03T01:30:00-04:00",
                "2024-11-04T01:30:00-05:00",
                "2024-11-05T01:30:00-05:00",
            ]
        );
        assert_eq!(
            next(
                "*/30 * * * *",
                "America/New_York",
                "2024-11-03T03:59:00Z",
                6
            ),
            [
                "2024-11-03T04:00:00Z",
                "2024-11-03T04:30:00Z",
                "2024-11-03T05:00:00Z",
                "2024-11-03T05:30:00Z",
                "2024-11-03T07:00:00Z",
                "2024-11-03T07:30:00Z",
            ]
        );
        let fire = schedule("30 1 * * *", "America/New_York")
            .next_after(utc("2024-11-03T00:00:00Z"))
            .unwrap();
        assert_eq!(fire.shift, Some(Shift::Repeated));
        // Starting inside the second pass finds nothing until the hour is over.
        assert_eq!(
            next(
                "*/30 * * * *",
                "America/New_York",
                "2024-11-03T06:10:00Z",
                1
            ),
            ["2024-11-03T07:00:00Z"]
        );
    }

    #[test]
    fn london_spring_forward_and_fall_back() {
        // 2024-03-31: 01:00 GMT becomes 02:00 BST.
        assert_eq!(
            next_local("30 1 * * *", "Europe/London", "2024-03-30T00:00:00Z", 3),
            [
                "2024-03-30T01:30:00+00:00",
                "2024-03-31T02:00:00+01:00",
                "2024-04-01T01:30:00+01:00",
            ]
        );
        // 2024-10-27: 02:00 BST becomes 01:00 GMT.
        assert_eq!(
            next("30 1 * * *", "Europe/London", "2024-10-26T12:00:00Z", 2),
            ["2024-10-27T00:30:00Z", "2024-10-28T01:30:00Z"]
        );
    }

    #[test]
    fn lord_howe_shifts_by_thirty_minutes() {
        // 2024-10-06: 02:00 +10:30 becomes 02:30 +11:00; 02:15 does not exist.
        assert_eq!(
            next_local(
                "15 2 * * *",
                "Australia/Lord_Howe",
                "2024-10-04T00:00:00Z",
                3
            ),
            [
                "2024-10-05T02:15:00+10:30",
                "2024-10-06T02:30:00+11:00",
                "2024-10-07T02:15:00+11:00",
            ]
        );
        // 02:45 is after the gap and fires as written.
        assert_eq!(
            next(
                "45 2 * * *",
                "Australia/Lord_Howe",
                "2024-10-05T12:00:00Z",
                1
            ),
            ["2024-10-05T15:45:00Z"]
        );
        // 2025-04-06: 02:00 +11:00 becomes 01:30 +10:30; 01:45 happens twice.
        assert_eq!(
            next(
                "45 1 * * *",
                "Australia/Lord_Howe",
                "2025-04-05T00:00:00Z",
                2
            ),
            ["2025-04-05T14:45:00Z", "2025-04-06T15:15:00Z"]
        );
        // Every 15 minutes across the fall back: the repeated half hour fires once.
        assert_eq!(
            next(
                "*/15 * * * *",
                "Australia/Lord_Howe",
                "2025-04-05T14:20:00Z",
                5
            ),
            [
                "2025-04-05T14:30:00Z",
                "2025-04-05T14:45:00Z",
                "2025-04-05T15:30:00Z",
                "2025-04-05T15:45:00Z",
                "2025-04-05T16:00:00Z",
            ]
        );
    }

    #[test]
    fn a_zone_that_skips_midnight_fires_at_one() {
        // Chile moves from 00:00 to 01:00 on 2024-09-08.
        assert_eq!(
            next_local("0 0 * * *", "America/Santiago", "2024-09-06T12:00:00Z", 3),
            [
                "2024-09-07T00:00:00-04:00",
                "2024-09-08T01:00:00-03:00",
                "2024-09-09T00:00:00-03:00",
            ]
        );
    }

    #[test]
    fn clocks_change_on_the_transition_days_only() {
        let ny = zone("America/New_York");
        assert!(clocks_change_that_day(&ny, utc("2024-03-10T15:00:00Z")));
        assert!(!clocks_change_that_day(&ny, utc("2024-03-09T15:00:00Z")));
        assert!(!clocks_change_that_day(&ny, utc("2024-03-11T15:00:00Z")));
        assert!(clocks_change_that_day(&ny, utc("2024-11-03T15:00:00Z")));
        // 2024-11-04T02:00Z is still 3 November in New York.
        assert!(clocks_change_that_day(&ny, utc("2024-11-04T02:00:00Z")));
        let lh = zone("Australia/Lord_Howe");
        assert!(clocks_change_that_day(&lh, utc("2024-10-05T20:00:00Z")));
        assert!(!clocks_change_that_day(&lh, utc("2024-10-06T20:00:00Z")));
        let london = zone("Europe/London");
        assert!(clocks_change_that_day(&london, utc("2024-03-31T12:00:00Z")));
        assert!(clocks_change_that_day(&london, utc("2024-10-27T12:00:00Z")));
        // A change at midnight belongs to the day it starts, not the day before.
        let santiago = zone("America/Santiago");
        assert!(clocks_change_that_day(
            &santiago,
            utc("2024-09-08T15:00:00Z")
        ));
        assert!(!clocks_change_that_day(
            &santiago,
            utc("2024-09-07T15:00:00Z")
        ));
        assert!(!clocks_change_that_day(
            &zone("UTC"),
            utc("2024-03-10T15:00:00Z")
        ));
    }

    // February 29.

    #[test]
    fn february_29_fires_only_in_leap_years() {
        assert_eq!(
            next("0 12 29 2 *", "UTC", "2023-06-01T00:00:00Z", 4),
            [
                "2024-02-29T12:00:00Z",
                "2028-02-29T12:00:00Z",
                "2032-02-29T12:00:00Z",
                "2036-02-29T12:00:00Z",
            ]
        );
        // From just after one, the next is four years on, in the zone's own calendar.
        assert_eq!(
            next_local(
                "30 23 29 2 *",
                "America/New_York",
                "2024-03-01T05:00:00Z",
                2
            ),
            ["2028-02-29T23:30:00-05:00", "2032-02-29T23:30:00-05:00"]
        );
        // 2100 is not a leap year: the last 29 February before the crate's end is 2096.
        let last = schedule("0 0 29 2 *", "UTC")
            .fires_after(utc("2090-01-01T00:00:00Z"))
            .last()
            .unwrap();
        assert_eq!(last.at, utc("2096-02-29T00:00:00Z"));
    }

    #[test]
    fn february_29_or_a_weekday_fires_on_both() {
        // 2028-02-29 is a Tuesday; the Mondays around it fire too.
        assert_eq!(
            next("0 0 29 2 mon", "UTC", "2028-02-20T00:00:00Z", 3),
            [
                "2028-02-21T00:00:00Z",
                "2028-02-28T00:00:00Z",
                "2028-02-29T00:00:00Z",
            ]
        );
    }

    // Schedules that never fire.

    #[test]
    fn impossible_days_never_fire_and_say_why() {
        let after = utc("2024-01-01T00:00:00Z").naive_utc();
        let e = Cron::parse("0 0 30 2 *")
            .unwrap()
            .never_fires(after)
            .unwrap();
        assert!(
            e.message.contains("day 30 never occurs in February"),
            "{}",
            e.message
        );
        let e = Cron::parse("0 0 31 4,jun *")
            .unwrap()
            .never_fires(after)
            .unwrap();
        assert!(e.message.contains("April, June"), "{}", e.message);
        let e = Cron::parse("0 0 0 1 1 * 2020")
            .unwrap()
            .never_fires(after)
            .unwrap();
        assert!(
            e.message.contains("no time matches it after 2024-01-01"),
            "{}",
            e.message
        );
        assert!(
            Cron::parse("0 0 29 2 *")
                .unwrap()
                .never_fires(after)
                .is_none()
        );
        assert!(
            Cron::parse("0 0 31 * *")
                .unwrap()
                .never_fires(after)
                .is_none()
        );
        // Either day field: Mondays fire even though 30 February does not exist.
        assert!(
            Cron::parse("0 0 30 2 1")
                .unwrap()
                .never_fires(after)
                .is_none()
        );
    }

    // Errors point into the expression.

    #[test]
    fn errors_carry_the_offset_of_the_part_at_fault() {
        let e = error("0 0 32 * *");
        assert_eq!(e.offset, 4);
        assert!(
            e.message
                .contains("day-of-month 32 is out of range: expected 1 to 31")
        );
        let e = error("61 * * * *");
        assert_eq!(e.offset, 0);
        assert!(e.message.contains("minute 61"), "{e:?}");
        let e = error("0 0 * * mon-fry");
        assert_eq!(e.offset, 12, "{e:?}");
        assert!(e.message.contains("found `fry`"), "{e:?}");
        assert!(e.message.contains("mon, tue"), "{e:?}");
        let e = error("*/0 * * * *");
        assert_eq!(e.offset, 2);
        assert!(e.message.contains("at least 1"));
        let e = error("0 0,,5 * * *");
        assert_eq!(e.offset, 4);
        assert!(e.message.contains("empty item"));
        let e = error("0 18-9 * * *");
        assert_eq!(e.offset, 2);
        assert!(e.message.contains("runs backwards"), "{e:?}");
        let e = error("  0 0 * * * * * *");
        assert_eq!(e.offset, 2);
        assert!(e.message.contains("found 8"), "{e:?}");
        let e = error("0 0 * *");
        assert!(e.message.contains("expected 5 fields"), "{e:?}");
        let e = error("   ");
        assert!(e.message.contains("empty"));
        let e = error("? * * * *");
        assert!(e.message.contains("only for the day fields"), "{e:?}");
        let e = error("0 0 L * *");
        assert!(e.message.contains("found `L`"), "{e:?}");
        let e = error("0 0 1 1 * * 1969");
        assert!(e.message.contains("year 1969"), "{e:?}");
        let e = error("0 0 * * */x");
        assert_eq!(e.offset, 10);
    }

    #[test]
    fn no_input_panics() {
        let inputs = [
            "",
            "*",
            "@",
            "@@",
            "-",
            "1-",
            "-1 * * * *",
            "*/",
            "/5 * * * *",
            "1/2/3 * * * *",
            "9999999999999 * * * *",
            "é * * * *",
            "0 0 * * 7-1",
            "0 0 31-1 * *",
            "\t0\t0\t*\t*\t*",
            "0 0 * * sun-sat",
            "0 0 * * sat-sun",
        ];
        for input in inputs {
            let _ = Cron::parse(input).map(|c| {
                let s = Schedule::new(c, Tz::UTC);
                s.fires_after(utc("2024-01-01T00:00:00Z")).take(3).count()
            });
        }
    }

    // Time zones.

    #[test]
    fn time_zones_are_exact_iana_names_with_suggestions() {
        assert_eq!(
            parse_timezone(" Europe/London ").unwrap(),
            Tz::Europe__London
        );
        assert_eq!(parse_timezone("UTC").unwrap(), Tz::UTC);
        let e = parse_timezone("america/denver").unwrap_err();
        assert!(e.message.contains("unknown time zone `america/denver`"));
        assert!(e.help.unwrap().contains("case-sensitive: `America/Denver`"));
        let e = parse_timezone("America/Denvr").unwrap_err();
        assert!(e.help.unwrap().contains("did you mean `America/Denver`?"));
        let e = parse_timezone("Mountain Standard Time Zone").unwrap_err();
        assert!(e.help.unwrap().contains("IANA names"));
    }

    // What the scheduler relies on.

    #[test]
    fn latest_in_finds_the_last_tick_of_a_long_downtime() {
        let s = schedule("*/5 * * * *", "UTC");
        let fire = s
            .latest_in(utc("2024-01-01T00:00:00Z"), utc("2024-06-01T10:17:30Z"))
            .unwrap();
        assert_eq!(fire.at, utc("2024-06-01T10:15:00Z"));
        // The end is inclusive, the start exclusive.
        let fire = s
            .latest_in(utc("2024-06-01T10:10:00Z"), utc("2024-06-01T10:15:00Z"))
            .unwrap();
        assert_eq!(fire.at, utc("2024-06-01T10:15:00Z"));
        assert!(
            s.latest_in(utc("2024-06-01T10:15:00Z"), utc("2024-06-01T10:19:59Z"))
                .is_none()
        );
        // Every second, but only on Mondays, over years.
        let s = schedule("* * * * * mon", "UTC");
        let fire = s
            .latest_in(utc("2020-01-01T00:00:00Z"), utc("2024-06-05T12:00:00Z"))
            .unwrap();
        assert_eq!(fire.at, utc("2024-06-03T23:59:59Z"));
        // A yearly schedule over a century.
        let fire = schedule("@yearly", "Australia/Lord_Howe")
            .latest_in(utc("1975-01-01T00:00:00Z"), utc("2075-06-01T00:00:00Z"))
            .unwrap();
        assert_eq!(
            fire.at
                .with_timezone(&zone("Australia/Lord_Howe"))
                .to_rfc3339(),
            "2075-01-01T00:00:00+11:00"
        );
    }

    #[test]
    fn count_between_is_exclusive_and_capped() {
        let s = schedule("0 * * * *", "UTC");
        let (a, b) = (utc("2024-01-01T00:00:00Z"), utc("2024-01-02T00:00:00Z"));
        assert_eq!(s.count_between(a, b, 1_000), 23);
        assert_eq!(s.count_between(a, b, 10), 10);
        // Across a spring-forward day in New York, one hour is skipped: 23 in all.
        let s = schedule("0 * * * *", "America/New_York");
        let (a, b) = (utc("2024-03-10T05:00:00Z"), utc("2024-03-11T04:00:00Z"));
        assert_eq!(s.count_between(a, b, 1_000), 22);
    }
}
