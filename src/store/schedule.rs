//! Schedule ticks in SQLite: each tick recorded once under (rule, scheduled time), with
//! its event and job in the same transaction, and each rule's counts of skipped ticks.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Transaction, params};

use super::sqlite::{from_millis, insert_one, millis};
use super::{NewEvent, NewTick, Result, ScheduleState, TickAction, TickOutcome};

/// Ticks kept per rule; older ones are deleted as new ones are recorded. The rule's
/// `handled_through` keeps deleted ticks from being recorded again.
const TICKS_KEPT: i64 = 1_000;

/// Whether a scheduled job of the rule is pending or running.
fn unfinished_tick_job(tx: &rusqlite::Connection, rule: &str) -> Result<bool> {
    Ok(tx
        .prepare_cached(
            "SELECT 1 FROM jobs WHERE rule = ?1 AND serial = 1 AND state IN ('pending', 'running')
             LIMIT 1",
        )?
        .exists([rule])?)
}

/// A rule's state from a row of [`STATE_COLUMNS`].
pub(super) fn state(r: &rusqlite::Row<'_>) -> rusqlite::Result<ScheduleState> {
    let count = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)?.max(0) as u64) };
    Ok(ScheduleState {
        rule: r.get(0)?,
        handled_through: from_millis(r.get(1)?),
        fired: count(2)?,
        skipped_overlap: count(3)?,
        skipped_missed: count(4)?,
        last_tick: r.get::<_, Option<i64>>(5)?.map(from_millis),
        last_outcome: r.get(6)?,
    })
}

/// The columns of a rule's state, with its last tick, over `schedule_state s`.
pub(super) const STATE_COLUMNS: &str =
    "s.rule, s.handled_through, s.fired, s.skipped_overlap, s.skipped_missed,
    (SELECT t.scheduled_for FROM schedule_ticks t WHERE t.rule = s.rule
     ORDER BY t.scheduled_for DESC LIMIT 1),
    (SELECT t.outcome FROM schedule_ticks t WHERE t.rule = s.rule
     ORDER BY t.scheduled_for DESC LIMIT 1)";

/// Records a tick in an open IMMEDIATE transaction; the caller commits unless the
/// outcome is [`TickOutcome::AlreadyHandled`].
pub(super) fn record(
    tx: &Transaction<'_>,
    tick: &NewTick,
    missed_between: &dyn Fn(DateTime<Utc>, DateTime<Utc>) -> u64,
) -> Result<TickOutcome> {
    let now = millis(Utc::now());
    let at = millis(tick.scheduled_for);
    let through: Option<i64> = tx
        .query_row(
            "SELECT handled_through FROM schedule_state WHERE rule = ?1",
            [&tick.rule],
            |r| r.get(0),
        )
        .optional()?;
    // A tick at or before the last handled one is done, whoever did it.
    if through.is_some_and(|t| at <= t) {
        return Ok(TickOutcome::AlreadyHandled);
    }
    let inserted = tx.execute(
        "INSERT OR IGNORE INTO schedule_ticks (rule, scheduled_for, outcome, recorded_at)
         VALUES (?1, ?2, 'recording', ?3)",
        params![tick.rule, at, now],
    )?;
    if inserted == 0 {
        return Ok(TickOutcome::AlreadyHandled);
    }
    let missed = through.map_or(0, |t| missed_between(from_millis(t), tick.scheduled_for));

    let outcome = match &tick.action {
        TickAction::Fire {
            skip_while_unfinished: true,
            ..
        } if unfinished_tick_job(tx, &tick.rule)? => TickOutcome::Overlapped { missed },
        TickAction::Fire {
            event,
            max_attempts,
            ..
        } => {
            let item = NewEvent {
                event: event.as_ref().clone(),
                files: Vec::new(),
                jobs: Vec::new(),
                dedupe: None,
            };
            insert_one(tx, &item, now)?;
            tx.execute(
                "INSERT INTO jobs (event_id, rule, state, max_attempts, run_at, updated_at, serial)
                 VALUES (?1, ?2, 'pending', ?3, ?4, ?4, 1)",
                params![event.id, tick.rule, max_attempts, now],
            )?;
            TickOutcome::Fired {
                event_id: event.id.clone(),
                missed,
            }
        }
        TickAction::Miss => TickOutcome::Missed { missed },
    };
    let (name, event_id, fired, overlap, missed_total) = match &outcome {
        TickOutcome::Fired { event_id, .. } => ("fired", Some(event_id.as_str()), 1, 0, missed),
        TickOutcome::Overlapped { .. } => ("overlap", None, 0, 1, missed),
        TickOutcome::Missed { .. } => ("missed", None, 0, 0, missed + 1),
        TickOutcome::AlreadyHandled => return Ok(outcome),
    };
    let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    tx.execute(
        "UPDATE schedule_ticks SET outcome = ?3, event_id = ?4 WHERE rule = ?1 AND scheduled_for = ?2",
        params![tick.rule, at, name, event_id],
    )?;
    tx.execute(
        "INSERT INTO schedule_state (rule, handled_through, fired, skipped_overlap, skipped_missed)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (rule) DO UPDATE SET handled_through = excluded.handled_through,
             fired = fired + excluded.fired,
             skipped_overlap = skipped_overlap + excluded.skipped_overlap,
             skipped_missed = skipped_missed + excluded.skipped_missed",
        params![tick.rule, at, fired, overlap, as_i64(missed_total)],
    )?;
    tx.execute(
        "DELETE FROM schedule_ticks WHERE rule = ?1 AND scheduled_for < (
             SELECT scheduled_for FROM schedule_ticks WHERE rule = ?1
             ORDER BY scheduled_for DESC LIMIT 1 OFFSET ?2)",
        params![tick.rule, TICKS_KEPT - 1],
    )?;
    Ok(outcome)
}
