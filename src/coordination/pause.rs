//! Paused jobs (`bgsched pause`, the API): the durable record of a pause,
//! kept in the state directory or etcd, so it holds across restarts,
//! failovers and reloads (the config does not know about it).

use super::{RunKey, RunRecord, Trigger};
use crate::config::Job;
use crate::model::Outcome;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Paused ticks counted for the entry at most; beyond, "at least".
const COUNT_LIMIT: u64 = 100_000;

/// A job's newest pause. After a resume (or once `until` has passed) it
/// is kept as the last pause, so a leader that starts later does not take
/// the paused ticks for missed ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    /// The run id of the pause's history entry.
    pub id: String,
    pub since: DateTime<Utc>,
    /// Resumes by itself at this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// Whether manual runs (`trigger`, the API) still run while paused.
    pub manual: bool,
    /// Who paused it, e.g. `bgsched pause on host-123`.
    pub by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_by: Option<String>,
}

impl Pause {
    pub fn new(by: &str, until: Option<DateTime<Utc>>, manual: bool) -> Pause {
        Pause {
            id: crate::model::new_run_id(),
            since: Utc::now(),
            until,
            manual,
            by: by.to_string(),
            resumed_at: None,
            resumed_by: None,
        }
    }

    /// When it ended or ends: resumed, or its `until`.
    pub fn end(&self) -> Option<DateTime<Utc>> {
        match (self.resumed_at, self.until) {
            (Some(r), Some(u)) => Some(r.min(u)),
            (r, u) => r.or(u),
        }
    }

    /// Whether the job is paused at `now`.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        now >= self.since && self.end().is_none_or(|e| now < e)
    }

    /// Whether `tick` came due while paused.
    pub fn covers(&self, tick: DateTime<Utc>) -> bool {
        tick >= self.since && self.end().is_none_or(|e| tick < e)
    }

    /// The one history entry of an ended pause: how many ticks of `job`
    /// it held back, from when to when, by whom.
    pub fn entry(&self, job: &Job, instance: &str) -> RunRecord {
        let end = self.end().unwrap_or_else(Utc::now);
        let mut count = 0u64;
        let mut newest = None;
        for t in job
            .schedule
            .iter_after(self.since - chrono::Duration::milliseconds(1))
        {
            if t >= end || count >= COUNT_LIMIT {
                break;
            }
            count += 1;
            newest = Some(t);
        }
        let at_least = if count >= COUNT_LIMIT {
            "at least "
        } else {
            ""
        };
        let ended = match (&self.resumed_by, self.resumed_at) {
            (Some(who), Some(_)) if self.end() == self.resumed_at => format!("resumed by {who}"),
            _ => "its pause ended by itself".to_string(),
        };
        let reason = format!(
            "paused by {} from {} to {}; {ended}: {at_least}{count} tick(s) not fired",
            self.by,
            self.since.to_rfc3339(),
            end.to_rfc3339()
        );
        let mut rec = RunRecord::not_run(
            RunKey::new(
                &job.name,
                newest.unwrap_or(self.since),
                Trigger::Schedule,
                instance,
            ),
            Outcome::Paused,
            reason,
        );
        rec.key.run_id = self.id.clone();
        rec.key.term = 0;
        rec.started_at = self.since;
        rec.ended_at = Some(end);
        rec.duration_ms = Some(crate::model::duration_ms(self.since, end));
        rec.missed_ticks = Some(count);
        rec
    }
}

/// The `until` of a pause as given (RFC 3339): in the future, within a year.
pub fn pause_until(given: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    future_instant("until", given, now)
}

/// The `at` of a one-off run as given (RFC 3339): in the future, within a year.
pub fn run_at(given: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    future_instant("at", given, now)
}

fn future_instant(what: &str, given: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let t = DateTime::parse_from_rfc3339(given.trim())
        .map_err(|e| {
            format!(
                "{what} {given:?} is not an RFC 3339 instant such as 2026-12-24T18:00:00Z ({e})"
            )
        })?
        .with_timezone(&Utc);
    if t <= now {
        return Err(format!("{what} {given} is not in the future"));
    }
    if t > now + chrono::Duration::days(366) {
        return Err(format!("{what} {given} is more than a year ahead"));
    }
    Ok(t)
}

/// Why a manual run of a paused job is refused (a pause without manual runs).
pub fn paused_refusal(job: &str, p: &Pause) -> String {
    format!(
        "job \"{job}\" is paused since {} by {}{}, with manual runs off",
        p.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        p.by,
        p.until
            .map(|u| format!(
                " until {}",
                u.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ))
            .unwrap_or_default()
    )
}

/// What came of a pause or resume request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PauseChange {
    Done(Pause),
    /// Pause of a paused job; resume of a job that is not paused.
    Unchanged(Option<Pause>),
}
