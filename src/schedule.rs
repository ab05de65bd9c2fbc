//! Schedules: parsing cron expressions, nicknames and `@every`, and computing
//! the next fire instant in a job's time zone with cron(8)'s DST rule.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use std::time::Duration;

/// Why a schedule expression was rejected. The message is meant to follow
/// `invalid schedule "<expr>": ` in a located config error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScheduleError(pub String);

/// A parsed schedule bound to its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    source: String,
    tz: Tz,
}

impl Schedule {
    /// Parse `expr` (5-field, 6-field with leading seconds, nickname, or
    /// `@every <duration>`) for a job in time zone `tz`.
    pub fn parse(expr: &str, tz: Tz) -> Result<Schedule, ScheduleError> {
        let _ = (expr, tz);
        todo!()
    }

    /// The first fire instant (tick) strictly after `after`, or `None` if the
    /// expression never matches again.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let _ = after;
        todo!()
    }

    /// The expression as the user wrote it.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// `Some(interval)` for `@every` schedules.
    pub fn every(&self) -> Option<Duration> {
        todo!()
    }
}
