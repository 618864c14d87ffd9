//! The next ticks of a scheduled rule as the `schedule` command shows them: each in the
//! rule's zone and in UTC, marked when it falls on a day whose clocks change.

use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use super::cron::{Shift, clocks_change_that_day};
use crate::rules::ScheduleTrigger;

/// One upcoming tick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Upcoming {
    pub rule: String,
    pub cron: String,
    pub timezone: String,
    /// The tick in the rule's zone, RFC 3339 with the offset in force.
    pub local: String,
    /// The tick in UTC, RFC 3339.
    pub utc: String,
    /// The wall time the expression names; it differs from `local` when a gap moved it.
    pub wall: String,
    /// Whether the zone's clocks change on the tick's local day.
    pub clocks_change: bool,
    /// `gap` when the named time is skipped by the change, `repeated` when it happens
    /// twice.
    pub shift: Option<&'static str>,
}

/// The next `n` ticks of a rule strictly after `from`.
pub fn upcoming(
    rule: &str,
    trigger: &ScheduleTrigger,
    from: DateTime<Utc>,
    n: usize,
) -> Vec<Upcoming> {
    let tz = trigger.timezone();
    trigger
        .schedule
        .fires_after(from)
        .take(n)
        .map(|fire| Upcoming {
            rule: rule.to_owned(),
            cron: trigger.cron().to_owned(),
            timezone: tz.name().to_owned(),
            local: fire
                .at
                .with_timezone(&tz)
                .to_rfc3339_opts(SecondsFormat::Secs, false),
            utc: fire.at.to_rfc3339_opts(SecondsFormat::Secs, true),
            wall: fire.wall.format("%Y-%m-%dT%H:%M:%S").to_string(),
            clocks_change: clocks_change_that_day(&tz, fire.at),
            shift: fire.shift.as_ref().map(Shift::as_str),
        })
        .collect()
}

/// The text form: a heading line for the rule, then one line a tick.
pub fn render(rule: &str, trigger: &ScheduleTrigger, ticks: &[Upcoming]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{rule}: `{}` in {} (overlap: {}, catch_up: {})",
        trigger.cron(),
        trigger.timezone().name(),
        policy(&trigger.overlap),
        policy(&trigger.catch_up),
    );
    if ticks.is_empty() {
        out.push_str("  no more ticks\n");
        return out;
    }
    let tz = trigger.timezone();
    for tick in ticks {
        let local = DateTime::parse_from_rfc3339(&tick.local)
            .map(|t| {
                t.with_timezone(&tz)
                    .format("%a %Y-%m-%d %H:%M:%S %:z")
                    .to_string()
            })
            .unwrap_or_else(|_| tick.local.clone());
        let _ = write!(out, "  {local}  {}", tick.utc);
        let wall_time = tick.wall.get(11..).unwrap_or(&tick.wall);
        match tick.shift {
            Some("gap") => {
                let _ = write!(
                    out,
                    "  clocks change: {wall_time} is skipped, fires when the gap ends"
                );
            }
            Some(_) => {
                let _ = write!(
                    out,
                    "  clocks change: {wall_time} happens twice, fires at the first"
                );
            }
            None if tick.clocks_change => out.push_str("  clocks change this day"),
            None => {}
        }
        out.push('\n');
    }
    out
}

/// A policy's word, as rule files write it.
fn policy(value: &impl Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::rules::{CatchUp, Overlap};
    use crate::triggers::cron::{Cron, Schedule, parse_timezone};

    fn trigger(cron: &str, tz: &str) -> ScheduleTrigger {
        ScheduleTrigger {
            schedule: Schedule::new(Cron::parse(cron).unwrap(), parse_timezone(tz).unwrap()),
            overlap: Overlap::Skip,
            catch_up: CatchUp::Latest,
        }
    }

    fn from(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn ticks_show_local_and_utc_and_mark_a_gap() {
        let t = trigger("30 2 * * *", "America/Denver");
        let ticks = upcoming("nightly", &t, from("2025-03-07T12:00:00Z"), 3);
        let pairs: Vec<(&str, &str)> = ticks
            .iter()
            .map(|t| (t.local.as_str(), t.utc.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("2025-03-08T02:30:00-07:00", "2025-03-08T09:30:00Z"),
                ("2025-03-09T03:00:00-06:00", "2025-03-09T09:00:00Z"),
                ("2025-03-10T02:30:00-06:00", "2025-03-10T08:30:00Z"),
            ]
        );
        assert_eq!(ticks[1].shift, Some("gap"));
        assert_eq!(ticks[1].wall, "2025-03-09T02:30:00");
        assert!(ticks[1].clocks_change);
        assert!(!ticks[0].clocks_change && !ticks[2].clocks_change);

        let text = render("nightly", &t, &ticks);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "nightly: `30 2 * * *` in America/Denver (overlap: skip, catch_up: latest)"
        );
        assert_eq!(
            lines[1],
            "  Sat 2025-03-08 02:30:00 -07:00  2025-03-08T09:30:00Z"
        );
        assert_eq!(
            lines[2],
            "  Sun 2025-03-09 03:00:00 -06:00  2025-03-09T09:00:00Z  clocks change: \
             02:30:00 is skipped, fires when the gap ends"
        );
    }

    #[test]
    fn a_repeated_time_and_an_unmoved_tick_on_a_change_day_are_marked() {
        let t = trigger("30 1 * * *", "America/New_York");
        let ticks = upcoming("early", &t, from("2024-11-02T12:00:00Z"), 1);
        assert_eq!(ticks[0].shift, Some("repeated"));
        assert!(render("early", &t, &ticks).contains("01:30:00 happens twice, fires at the first"));
        let t = trigger("0 12 * * *", "America/New_York");
        let ticks = upcoming("noon", &t, from("2024-11-02T18:00:00Z"), 2);
        assert_eq!(ticks[0].shift, None);
        assert!(ticks[0].clocks_change);
        assert!(!ticks[1].clocks_change);
        let text = render("noon", &t, &ticks);
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .ends_with("clocks change this day"),
            "{text}"
        );
    }

    #[test]
    fn a_schedule_that_ended_says_so() {
        let t = trigger("0 0 0 1 1 * 2026", "UTC");
        let ticks = upcoming("once", &t, from("2026-06-01T00:00:00Z"), 5);
        assert!(ticks.is_empty());
        assert!(render("once", &t, &ticks).contains("no more ticks"));
    }
}
