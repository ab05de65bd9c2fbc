//! The fire loop's bookkeeping: claim retries, failure streaks, and what
//! became of a fire.

use super::*;

/// How long a claim that failed on a backend error waits before the retry:
/// the first wait, doubling with each failure in a row up to the last.
/// A backend that stays broken (a full disk) then costs one claim every
/// few seconds, not a tight loop.
pub(super) const CLAIM_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(100);

pub(super) const CLAIM_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// A job's claims failing on backend errors, one after another.
pub(super) struct Streak {
    pub(super) failures: u32,
    /// No claim of the job before this.
    pub(super) next_try: DateTime<Utc>,
}

/// One planned fire: the tick and what triggers it.
pub(super) type Planned = (DateTime<Utc>, Trigger);

/// One fire: a tick of a job (or a manual request's), and what started it.
#[derive(Clone, Copy)]
pub(super) struct Fire<'a> {
    pub(super) job: &'a Job,
    pub(super) tick: DateTime<Utc>,
    pub(super) trigger: Trigger,
    /// The trigger request, for a manual run.
    pub(super) request: Option<&'a TriggerRequest>,
}

impl<'a> Fire<'a> {
    pub(super) fn scheduled(job: &'a Job, tick: DateTime<Utc>, trigger: Trigger) -> Self {
        Fire {
            job,
            tick,
            trigger,
            request: None,
        }
    }
}

/// What came of one attempt to fire.
pub(super) enum Fired {
    /// The supervisor, and the spec it runs.
    Started(Box<tokio::process::Child>, Box<RunSpec>),
    /// Skipped, not leader, or could not start: decided, and recorded.
    NotStarted,
    /// Claimed for another member, which starts it.
    Placed,
    /// The tick (or a later one) was already claimed.
    Superseded,
    /// The backend could not answer; the claim may be retried.
    Retry,
}

/// A fire to attempt again after a backend error.
pub(super) enum Retry {
    Tick {
        at: DateTime<Utc>,
        job: String,
        tick: DateTime<Utc>,
        trigger: Trigger,
    },
    Request {
        at: DateTime<Utc>,
        req: Box<TriggerRequest>,
        since: DateTime<Utc>,
    },
}

/// Counters and pending retries of one leadership term's fire loop.
#[derive(Default)]
pub(super) struct FireState {
    /// Skipped ticks per job (overlap = "skip").
    pub(super) skipped: HashMap<String, u64>,
    /// Rejected claims per reason (see `ClaimRejected::kind`).
    pub(super) rejected: HashMap<&'static str, u64>,
    pub(super) retries: Vec<Retry>,
    /// Jobs whose last claim failed on a backend error.
    pub(super) streaks: HashMap<String, Streak>,
    /// The stop requests, and their count when the loop began.
    pub(super) stop: Option<Stop>,
}

/// Whether a stop was requested since the fire loop began: checked between
/// claims and spawns, so a large batch of due work does not delay it.
#[derive(Clone)]
pub(super) struct Stop(pub(super) watch::Receiver<u32>, pub(super) u32);

/// Why the fire loop ended.
pub(super) enum LoopEnd {
    Stop,
    LostLeadership,
}

impl Retry {
    pub(super) fn at(&self) -> DateTime<Utc> {
        match self {
            Retry::Tick { at, .. } | Retry::Request { at, .. } => *at,
        }
    }
}

impl Stop {
    pub(super) fn requested(&self) -> bool {
        *self.0.borrow() != self.1
    }
}

impl FireState {
    /// Until when claims of `job` wait, after backend errors.
    pub(super) fn backoff(&self, job: &str) -> Option<DateTime<Utc>> {
        self.streaks.get(job).map(|s| s.next_try)
    }

    pub(super) fn stopping(&self) -> bool {
        self.stop.as_ref().is_some_and(Stop::requested)
    }

    pub(super) fn next_retry(&self) -> Option<DateTime<Utc>> {
        self.retries.iter().map(Retry::at).min()
    }

    /// Whether an earlier tick of `job` waits for its claim's retry (one
    /// that just failed undecided, say): a later tick must not be claimed
    /// before it, or the earlier one's retry finds its tick taken.
    pub(super) fn earlier_waits(&self, job: &str, tick: DateTime<Utc>) -> bool {
        self.retries
            .iter()
            .any(|r| matches!(r, Retry::Tick { job: j, tick: t, .. } if j == job && *t < tick))
    }

    pub(super) fn take_due_retries(&mut self, now: DateTime<Utc>) -> Vec<Retry> {
        let (due, later) = std::mem::take(&mut self.retries)
            .into_iter()
            .partition(|r| r.at() <= now);
        self.retries = later;
        due
    }
}
