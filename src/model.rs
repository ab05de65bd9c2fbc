//! The shared vocabulary: what started a run, how it ended, and the
//! record every run (and every tick that did not run) leaves. Every layer
//! speaks it; it depends on nothing above it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// A tick fired at most this late still counts as on time (trigger
/// `schedule`); a later one is missed and only fires within `catchup`.
pub const LATE_TOLERANCE: Duration = Duration::from_secs(1);

/// Upper bound on one sleep of the scheduler loop, so a wall-clock jump or
/// a suspended machine is noticed within this long (and a loop that has
/// not turned for longer is stuck).
pub const MAX_SLEEP: Duration = Duration::from_secs(60);

/// A `missed` entry's reason starts with this when the leader was overloaded.
pub const OVERLOADED: &str = "overloaded";

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Schedule,
    Catchup,
    Manual,
    /// A start of an `@continuous` service (the first, or a restart).
    Service,
    /// Started by the end of an upstream run (`after`).
    After,
}

/// Which ends of an upstream run start a dependent job (`after`'s `on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum On {
    #[default]
    Success,
    /// Failed, timed out, killed, or could not start.
    Failure,
    /// Any of those, success, or cancelled.
    Always,
}

impl On {
    /// Whether a run that ended `outcome` (recorded by its own
    /// supervisor) starts the dependent.
    pub fn matches(self, outcome: Outcome) -> bool {
        let failure = matches!(
            outcome,
            Outcome::Failed | Outcome::TimedOut | Outcome::Killed | Outcome::StartFailed
        );
        match self {
            On::Success => outcome == Outcome::Success,
            On::Failure => failure,
            On::Always => failure || matches!(outcome, Outcome::Success | Outcome::Cancelled),
        }
    }
}

impl fmt::Display for On {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            On::Success => "success",
            On::Failure => "failure",
            On::Always => "always",
        })
    }
}

/// A job that runs after another one's runs end (the reverse of its
/// `after`), as the upstream's supervisor knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependent {
    pub job: String,
    pub on: On,
    /// `after_all`: it runs once every upstream has ended so since its
    /// last run; each end only marks its upstream done.
    #[serde(default)]
    pub all: bool,
}

/// The upstream run whose end started a run (`after`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    pub job: String,
    pub run_id: String,
    /// What the upstream's supervisor recorded it as.
    pub outcome: Outcome,
}

/// The tick of a manual run accepted at `now`: `now` to the millisecond, in
/// both backends (the precision of `BGSCHED_SCHEDULED_AT`).
pub fn manual_tick(now: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Trigger::Schedule => "schedule",
            Trigger::Catchup => "catchup",
            Trigger::Manual => "manual",
            Trigger::Service => "service",
            Trigger::After => "after",
        })
    }
}

/// The state or result of one entry in a job's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Still running (or its supervisor died; see [`RunRecord::outcome`] readers).
    Running,
    Success,
    /// Exited with a non-zero code.
    Failed,
    /// Ended by a signal not sent for a timeout.
    Killed,
    TimedOut,
    /// The command could not be started (not found, not executable, bad working_dir).
    StartFailed,
    /// Its supervisor vanished (e.g. `kill -9` of the supervisor, host crash).
    Lost,
    /// The tick came while an earlier run was active (overlap = "skip").
    Skipped,
    /// Ticks that passed while nothing was scheduling, beyond the catch-up window.
    Missed,
    /// Not a run but a state file of the job's history that cannot be read
    /// (standalone); `reason` names the file and says why.
    Unreadable,
    /// Stopped because a caller cancelled it (`bgsched cancel`, the API).
    Cancelled,
    /// Not a run: the stretch a job was paused, with how many ticks it held back.
    Paused,
}

impl Outcome {
    /// Whether this entry describes a run that actually started a process.
    pub fn is_run(self) -> bool {
        !matches!(
            self,
            Outcome::Skipped | Outcome::Missed | Outcome::Unreadable | Outcome::Paused
        )
    }

    /// A run that ended badly: what `retries` retries and `on_failure`
    /// reports (a job that could not start at all is neither retried nor
    /// reported; its config needs fixing).
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Outcome::Failed | Outcome::TimedOut | Outcome::Killed | Outcome::Lost
        )
    }
}

/// The name records, metrics and `BGSCHED_OUTCOME` use, so that logs and
/// tables say the same word.
impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Running => "running",
            Outcome::Success => "success",
            Outcome::Failed => "failed",
            Outcome::Killed => "killed",
            Outcome::TimedOut => "timed_out",
            Outcome::StartFailed => "start_failed",
            Outcome::Lost => "lost",
            Outcome::Skipped => "skipped",
            Outcome::Missed => "missed",
            Outcome::Unreadable => "unreadable",
            Outcome::Cancelled => "cancelled",
            Outcome::Paused => "paused",
        })
    }
}

/// What names one run wherever it goes: the spec its supervisor is handed,
/// every record of it, its log span. An entry that is no run (skipped,
/// missed) has a key of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunKey {
    pub run_id: String,
    pub job: String,
    /// The nominal instant this run or entry is for (for `missed`: the
    /// newest missed tick).
    pub tick: DateTime<Utc>,
    pub trigger: Trigger,
    pub instance: String,
    /// The leadership term that claimed the fire (the fencing token); 0
    /// for an entry written outside a term, which JSON shows as `null`
    /// (as the tables show `-`): no token is not token 0.
    #[serde(
        default,
        serialize_with = "zero_as_null",
        deserialize_with = "null_as_zero"
    )]
    pub term: u64,
}

impl RunKey {
    /// A new run (or entry) of `job` outside any term.
    pub fn new(job: &str, tick: DateTime<Utc>, trigger: Trigger, instance: &str) -> RunKey {
        RunKey {
            run_id: new_run_id(),
            job: job.to_string(),
            tick,
            trigger,
            instance: instance.to_string(),
            term: 0,
        }
    }
}

/// One entry in a job's history: a run, a skipped tick, or a stretch of missed
/// ticks. Serialized as JSON in the state directory and by `list --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    #[serde(flatten)]
    pub key: RunKey,
    pub outcome: Outcome,
    pub started_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Human-readable detail: why it could not start, why it was skipped, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// PID of the job's process (and its process group id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// For `missed`: how many ticks this entry stands for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed_ticks: Option<u64>,
    /// The last bytes of the run's combined stdout and stderr.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output_tail: String,
    /// How many bytes of output the run's (last) attempt printed in all,
    /// of which `output_tail` is the end: a follower that saw the first
    /// ones prints the rest from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_bytes: Option<u64>,
    /// Which attempt of its run this is: 1, or more for a job with `retries`.
    #[serde(default = "first_attempt", skip_serializing_if = "is_first_attempt")]
    pub attempt: u32,
    /// The run's supervisor, which stops the run when a newer one replaces
    /// it (`overlap = "replace"`, standalone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisor_pid: Option<u32>,
    /// The parameters a manual run was given (and the defaults it took).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
    /// A failed attempt that was retried: an entry of its own, not the
    /// run's result (which is the entry under the run's id).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retried: bool,
    /// For a run after another job's (`after`): the upstream run whose end
    /// started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Upstream>,
}

fn zero_as_null<S: serde::Serializer>(term: &u64, s: S) -> Result<S::Ok, S::Error> {
    match term {
        0 => s.serialize_none(),
        t => s.serialize_some(t),
    }
}

fn null_as_zero<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(Option::<u64>::deserialize(d)?.unwrap_or(0))
}

fn first_attempt() -> u32 {
    1
}

fn is_first_attempt(attempt: &u32) -> bool {
    *attempt == 1
}

impl RunRecord {
    /// A history entry for a tick or request that started no process
    /// (skipped, missed, or refused before it could start).
    pub fn not_run(key: RunKey, outcome: Outcome, reason: String) -> RunRecord {
        let now = Utc::now();
        RunRecord {
            key,
            outcome,
            started_at: now,
            ended_at: Some(now),
            duration_ms: Some(0),
            exit_code: None,
            signal: None,
            reason: Some(reason),
            pid: None,
            missed_ticks: None,
            output_tail: String::new(),
            output_bytes: None,
            attempt: 1,
            supervisor_pid: None,
            params: BTreeMap::new(),
            upstream: None,
            retried: false,
        }
    }
}

/// A unique, time-ordered run id (UUIDv7), so that file names and keys
/// sort by start.
pub fn new_run_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// `given` as a run id in its canonical form, if it is one. Checked before
/// it is used: a run id becomes part of a path or key.
pub fn parse_run_id(given: &str) -> Option<String> {
    uuid::Uuid::parse_str(given.trim())
        .ok()
        .map(|id| id.hyphenated().to_string())
}

/// Milliseconds from `from` to `to`, never negative.
pub fn duration_ms(from: DateTime<Utc>, to: DateTime<Utc>) -> u64 {
    (to - from).num_milliseconds().max(0) as u64
}
