//! Schedules: parsing cron expressions, nicknames and `@every`, and computing
//! the next fire instant (the *tick*) in a job's time zone with cron(8)'s DST
//! rule.
//!
//! # Expressions
//!
//! * 5 fields `minute hour day-of-month month day-of-week`, 6 fields with a
//!   leading `second`, or 7 fields with a leading second and a trailing `year`
//!   (1970-4999). Lists, ranges, `*/n` and `a-b/n` steps, month and weekday
//!   names (`JAN`, `MON`; each only in its own field), `L`, `LW` and `15W` in
//!   day-of-month, `5L` and `5#2` in day-of-week, and `?` as a synonym of `*`
//!   in the two day fields. Day-of-week 0 and 7 are both Sunday; `SUN` is 0,
//!   except as the end of a range that starts later in the week (`MON-SUN`,
//!   `FRI-SUN/2`), where it is 7. So `SUN-SUN` and `0-SUN` are Sundays only.
//! * When day-of-month and day-of-week are both restricted (neither starts
//!   with `*`), a day matches if *either* matches, as crontab(5) specifies.
//!   When one of them starts with `*` (e.g. `*/2`), both must match.
//! * Nicknames `@yearly` `@annually` `@monthly` `@weekly` `@daily`
//!   `@midnight` `@hourly`.
//! * `@every <duration>` with a humantime duration (`90s`, `1h 30m`): a whole
//!   number of seconds, at least 1s. Its ticks are the instants that are
//!   whole multiples of the interval since 1970-01-01T00:00:00Z, so every
//!   replica computes the same ticks whenever it started; the time zone plays
//!   no part.
//!
//! Numbers are range-checked here, field by field, so that errors name the
//! field ("minute 61 out of range 0-59") instead of echoing croner's wording.
//! Every piece of the expression an error message repeats goes through
//! [`quoted`] (or [`shown`]), so that a control character cannot reach the
//! terminal raw and a pasted blob cannot make a 100 KB line.
//!
//! # Daylight saving time
//!
//! This follows Vixie/Debian cron(8). A cron job is *fixed-time* unless its
//! second, minute or hour field contains `*`; so `@hourly` is not, and the
//! other nicknames are. cron(8) has no seconds field; treating it like minute
//! and hour keeps `*/10 30 2 * * *` (every ten seconds of a minute) a wildcard
//! job, which it plainly is.
//!
//! * A fixed-time job whose wall time falls in a spring-forward gap fires
//!   once, right after the gap: its tick is the transition instant. Several
//!   gap times of one job on the same night share that one tick.
//! * A fixed-time job whose wall time repeats at fall-back fires once, at
//!   the first (earlier) occurrence.
//! * Any other job fires at every real instant whose wall time matches: twice
//!   in a repeated hour, never in a gap.
//!
//! croner classifies jobs itself (it counts an hour list such as `1,13` as a
//! wildcard) and resolves DST its own way, so croner is only asked for
//! *naive* wall-clock matches; turning those into instants is done here with
//! chrono-tz.
//!
//! # Cost
//!
//! [`Schedule::next_after`] runs once per fire of every job and once per job
//! at startup. With no DST transition at hand it is one croner lookup and a
//! few offset lookups. A fall-back within three hours (for wildcard jobs), or
//! a match that lands in a gap or a repeated hour, adds a binary search for
//! the transition instant (to the second, about 15 offset lookups) and one
//! more croner lookup.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, LocalResult, NaiveDateTime, Offset, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use croner::errors::CronError;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

mod fields;
mod search;
use fields::*;
use search::*;

/// Why a schedule expression was rejected. The message is meant to follow
/// `invalid schedule "<expr>": ` in a located config error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScheduleError(pub String);

impl ScheduleError {
    fn new(message: impl Into<String>) -> Self {
        ScheduleError(message.into())
    }
}

/// How many characters of a user's text a message repeats.
const MAX_SHOWN_CHARS: usize = 100;

/// A user's text in double quotes, for messages: see [`shown`].
pub(crate) fn quoted(s: &str) -> String {
    format!("\"{}\"", shown(s))
}

/// A user's text as a message repeats it: escaped like a Rust string
/// (`\u{1b}`, `\"`, `\n`), so that it stays on one line and cannot drive the
/// terminal, and cut after [`MAX_SHOWN_CHARS`] characters with a `…`, so
/// that a pasted blob does not drown the message.
pub(crate) fn shown(s: &str) -> String {
    let mut chars = s.chars();
    let head: String = chars.by_ref().take(MAX_SHOWN_CHARS).collect();
    let more = if chars.next().is_some() { "…" } else { "" };
    format!("{}{more}", head.escape_debug())
}

/// humantime's reason for refusing a duration, with the unit it repeats cut
/// like any other user text and, where the reason is only a position
/// ("expected number at 0"), an example of what a duration looks like.
pub(crate) fn duration_reason(error: &humantime::DurationError) -> String {
    use humantime::DurationError as E;
    const EXAMPLE: &str = "write durations like \"30s\", \"5m\" or \"1h 30m\"";
    match error {
        E::InvalidCharacter(_) | E::NumberExpected(_) => format!("{error}; {EXAMPLE}"),
        E::UnknownUnit { unit, .. } if !unit.is_empty() => format!(
            "unknown time unit {}, supported units: ns, us/µs, ms, sec, min, hours, days, \
             weeks, months, years (and few variations)",
            quoted(unit)
        ),
        _ => error.to_string(),
    }
}

/// A job's schedule: one or more expressions in the job's time zone, whose
/// ticks are the union of theirs (an instant two of them share is one
/// tick), within the job's active range.
#[derive(Debug, Clone)]
pub struct Schedule {
    parts: Box<[Expr]>,
    active: Active,
    /// [`Schedule::describe`], made on first use: it parses the patterns,
    /// and a status page asks for every job's each time.
    words: std::sync::OnceLock<String>,
}

/// When a job may fire: no tick before `from`, none at or after `until`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Active {
    pub from: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// One parsed expression bound to its time zone.
#[derive(Debug, Clone)]
struct Expr {
    source: String,
    tz: Tz,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    /// Interval in whole seconds, at least 1.
    Every(i64),
    /// The validated pattern in croner's syntax, parsed again for each
    /// search: a parsed `Cron` carries a 5,000-entry year table (5 KiB), which
    /// would dominate the memory of a scheduler with many jobs, while a parse
    /// costs microseconds and happens once per fire. `fixed` is the cron(8)
    /// DST class, decided from the expression's text.
    Cron { pattern: Box<str>, fixed: bool },
    /// `@continuous`: no ticks; a service the leader keeps running.
    Continuous,
    /// No ticks at all: a job that runs only after other jobs (`after`)
    /// or when triggered.
    Never,
}

fn croner_parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Required)
        .year(Year::Optional)
        .build()
}

/// Two schedules are equal when written identically for the same zone and
/// range; used to tell whether a reloaded job's schedule changed.
impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.active == other.active
            && self.parts.len() == other.parts.len()
            && self
                .parts
                .iter()
                .zip(other.parts.iter())
                .all(|(a, b)| a.source == b.source && a.tz == b.tz)
    }
}

impl Eq for Schedule {}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

/// Between the expressions of a schedule as one line shows them (a comma
/// belongs to cron's lists).
pub const SEPARATOR: &str = " | ";

impl Schedule {
    /// Parse `expr` (5-field, 6-field with leading seconds, 7-field with
    /// seconds and year, nickname, or `@every <duration>`) for a job in time
    /// zone `tz`. Expressions that can never match are rejected, since a job
    /// that silently never runs is a config mistake. One whose years are
    /// over is not: it was valid and still is, it has just ended (see
    /// [`Schedule::ended`]); refusing it would stop every other job of the
    /// file at the next restart.
    pub fn parse(expr: &str, tz: Tz) -> Result<Schedule, ScheduleError> {
        Ok(Schedule {
            parts: Box::new([Expr::parse(expr, tz)?]),
            active: Active::default(),
            words: std::sync::OnceLock::new(),
        })
    }

    /// The union of `schedules` (at least one, all of one zone).
    pub fn any_of(schedules: Vec<Schedule>) -> Schedule {
        assert!(!schedules.is_empty(), "a schedule has an expression");
        Schedule {
            parts: schedules
                .into_iter()
                .flat_map(|s| s.parts.into_vec())
                .collect(),
            active: Active::default(),
            words: std::sync::OnceLock::new(),
        }
    }

    /// No schedule of its own: a job with `after` and no `schedule`.
    pub fn none(tz: Tz) -> Schedule {
        Schedule {
            parts: Box::new([Expr {
                source: "-".to_string(),
                tz,
                kind: Kind::Never,
            }]),
            active: Active::default(),
            words: std::sync::OnceLock::new(),
        }
    }

    /// Whether this is [`Schedule::none`].
    pub fn is_none(&self) -> bool {
        matches!(&*self.parts, [one] if matches!(one.kind, Kind::Never))
    }

    /// This schedule with no tick outside `active`.
    pub fn within(mut self, active: Active) -> Schedule {
        self.active = active;
        self.words = std::sync::OnceLock::new();
        self
    }

    pub fn active(&self) -> Active {
        self.active
    }

    /// The expressions as written.
    pub fn expressions(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().map(|p| p.source.as_str())
    }

    /// The patterns parsed for a walk, one per expression.
    fn crons(&self) -> Vec<Option<Cron>> {
        self.parts.iter().map(Expr::cron).collect()
    }

    /// The first tick strictly after `after`: the earliest of the
    /// expressions' within the active range.
    fn next_in(&self, crons: &[Option<Cron>], after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let after = match self.active.from {
            // A tick at `from` itself counts.
            Some(from) if after < from => from - TimeDelta::nanoseconds(1),
            _ => after,
        };
        let next = self
            .parts
            .iter()
            .zip(crons)
            .filter_map(|(p, c)| p.next_with(c.as_ref(), after))
            .min()?;
        match self.active.until {
            Some(until) if next >= until => None,
            _ => Some(next),
        }
    }

    /// When the schedule has no fire after `now` (its years or its active
    /// range are over): its last fire.
    pub fn ended(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let crons = self.crons();
        if self.next_in(&crons, now).is_some() {
            return None;
        }
        // Some fire follows every instant before the last one and none
        // follows it: bisect on that, to the second.
        let (mut lo, mut hi) = (DateTime::UNIX_EPOCH, now);
        self.next_in(&crons, lo)?;
        while hi - lo > chrono::Duration::seconds(1) {
            let mid = lo + (hi - lo) / 2;
            match self.next_in(&crons, mid) {
                Some(_) => lo = mid,
                None => hi = mid,
            }
        }
        self.next_in(&crons, lo)
    }

    /// The first fire instant (tick) strictly after `after`, or `None` if the
    /// schedule never fires again.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.next_in(&self.crons(), after)
    }

    /// Successive ticks strictly after `after`, strictly increasing. The
    /// patterns are parsed once for the whole walk.
    pub fn iter_after(&self, after: DateTime<Utc>) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        let crons = self.crons();
        let first = self.next_in(&crons, after);
        std::iter::successors(first, move |tick| self.next_in(&crons, *tick))
    }

    /// The schedule in words, for people ("Every 10 seconds", croner's
    /// English description of a cron pattern), in the job's zone, with its
    /// active range.
    pub fn describe(&self) -> &str {
        self.words.get_or_init(|| {
            let mut words: Vec<String> = self
                .parts
                .iter()
                .map(|p| p.describe().trim_end_matches('.').to_string())
                .collect();
            let fmt = |t: DateTime<Utc>| {
                t.with_timezone(&self.timezone())
                    .format("%Y-%m-%d %H:%M %Z")
                    .to_string()
            };
            match (self.active.from, self.active.until) {
                (None, None) => {}
                (Some(f), None) => words.push(format!("from {}", fmt(f))),
                (None, Some(u)) => words.push(format!("until {}", fmt(u))),
                (Some(f), Some(u)) => words.push(format!("from {} until {}", fmt(f), fmt(u))),
            }
            words.join("; ")
        })
    }

    /// The expressions as the user wrote them, on one line.
    pub fn as_str(&self) -> std::borrow::Cow<'_, str> {
        match &*self.parts {
            [one] => std::borrow::Cow::Borrowed(&one.source),
            many => many
                .iter()
                .map(|p| p.source.as_str())
                .collect::<Vec<_>>()
                .join(SEPARATOR)
                .into(),
        }
    }

    pub fn timezone(&self) -> Tz {
        self.parts[0].tz
    }

    /// `Some(interval)` for a single `@every` schedule.
    pub fn every(&self) -> Option<Duration> {
        match &*self.parts {
            [one] => one.every(),
            _ => None,
        }
    }

    /// `@continuous`: a service, with no ticks, that the leader keeps
    /// running (see `scheduler::services`).
    pub fn is_continuous(&self) -> bool {
        matches!(&*self.parts, [one] if matches!(one.kind, Kind::Continuous))
    }

    /// Whether cron(8) would treat a single-expression job as fixed-time for
    /// DST (see the module docs): gap times run once after the gap, repeated
    /// times once.
    pub fn is_fixed_time(&self) -> bool {
        matches!(&*self.parts, [one] if one.is_fixed_time())
    }
}

impl Expr {
    fn parse(expr: &str, tz: Tz) -> Result<Expr, ScheduleError> {
        let text = expr.trim();
        if text.is_empty() {
            return Err(ScheduleError::new("empty expression"));
        }
        let (kind, cron) = if text.starts_with('@') {
            parse_nickname(text)?
        } else {
            parse_fields(text)?
        };
        let expr = Expr {
            source: expr.to_string(),
            tz,
            kind,
        };
        expr.check_fires(cron.as_ref())?;
        Ok(expr)
    }

    fn check_fires(&self, cron: Option<&Cron>) -> Result<(), ScheduleError> {
        if matches!(self.kind, Kind::Continuous | Kind::Never)
            || self.next_with(cron, DateTime::UNIX_EPOCH).is_some()
        {
            return Ok(());
        }
        Err(ScheduleError::new(match self.kind {
            Kind::Every(secs) => format!(
                "@every interval {} is too long: it never fires",
                humantime::format_duration(Duration::from_secs(secs.unsigned_abs()))
            ),
            Kind::Cron { .. } | Kind::Continuous | Kind::Never => {
                "never fires: no date matches it".to_string()
            }
        }))
    }

    /// The pattern parsed for a search (`None` for `@every`).
    fn cron(&self) -> Option<Cron> {
        match &self.kind {
            Kind::Every(_) | Kind::Continuous | Kind::Never => None,
            Kind::Cron { pattern, .. } => Some(
                croner_parser()
                    .parse(pattern)
                    .expect("a validated pattern parses again"),
            ),
        }
    }

    /// `next_after` with the pattern already parsed (`cron` is `Some` for
    /// cron kinds).
    fn next_with(&self, cron: Option<&Cron>, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match (&self.kind, cron) {
            (Kind::Every(secs), _) => {
                let periods = after.timestamp().div_euclid(*secs).checked_add(1)?;
                DateTime::from_timestamp(periods.checked_mul(*secs)?, 0)
            }
            (Kind::Cron { fixed, .. }, Some(cron)) => Search {
                cron,
                tz: self.tz,
                fixed: *fixed,
                after,
            }
            .next(),
            (Kind::Cron { .. }, None) | (Kind::Continuous | Kind::Never, _) => None,
        }
    }

    fn describe(&self) -> String {
        match &self.kind {
            Kind::Every(secs) => format!(
                "Every {}",
                humantime::format_duration(Duration::from_secs(secs.unsigned_abs()))
            ),
            Kind::Cron { .. } => self.cron().map_or_else(String::new, |c| c.describe()),
            Kind::Continuous => "Always running, restarted when it exits".to_string(),
            Kind::Never => "No schedule of its own".to_string(),
        }
    }

    fn every(&self) -> Option<Duration> {
        match self.kind {
            Kind::Every(secs) => Some(Duration::from_secs(secs.unsigned_abs())),
            Kind::Cron { .. } | Kind::Continuous | Kind::Never => None,
        }
    }

    fn is_fixed_time(&self) -> bool {
        matches!(self.kind, Kind::Cron { fixed: true, .. })
    }
}

#[cfg(test)]
thread_local! {
    /// croner lookups made on this thread, to test the fast path's cost.
    static CRONER_LOOKUPS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

#[cfg(test)]
mod tests;
