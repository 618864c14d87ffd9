//! Tests of cron expressions: crontab's fields and names, the conventions of the `cron`
//! crate that are translated, daylight saving in three zones, and 29 February.

#![allow(clippy::unwrap_used)]

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
