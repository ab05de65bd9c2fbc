//! Coordination: who may fire, which ticks were already fired, which runs are
//! active, and where run records live.
//!
//! The scheduler core talks to [`Coordinator`] only, so it does not know
//! whether it runs standalone (a local state directory, kernel file locks) or
//! as one replica of a cluster. Run *supervisors* (see `executor`) talk to the
//! same backend through [`RunRecorder`] to keep their run marked as active and
//! to write its record.

mod backend;
pub mod channel;
pub mod clock;
pub mod etcd;
mod follow;
mod fsutil;
mod pause;
pub mod standalone;

use crate::config::Overlap;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

// The vocabulary is the model's; the backends' callers find it here too.
pub use crate::model::{manual_tick, Outcome, RunKey, RunRecord, Trigger};

pub use backend::{Backend, BackendChoice};
pub use etcd::Etcd;
pub use pause::{pause_until, paused_refusal, run_at, Pause, PauseChange};
pub use standalone::Standalone;

/// Errors of the coordination layer.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    // The io error is part of the message and deliberately not a `source`:
    // a report that prints the chain (anyhow's `{:#}`) would say it twice.
    #[error("state directory {path}: {cause}")]
    Io { path: String, cause: std::io::Error },
    #[error("corrupt state file {path}: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("etcd: {0}")]
    Etcd(String),
    /// etcd does not answer at all; the message names the endpoints.
    #[error("{0}")]
    Unreachable(String),
    /// etcd refused the credentials (or lacks them): retrying cannot help.
    #[error("authentication failed at etcd {endpoints}{}: {cause}", user.as_deref().map(|u| format!(" as user \"{u}\"")).unwrap_or_default())]
    Auth {
        endpoints: String,
        user: Option<String>,
        cause: String,
    },
}

pub type Result<T, E = CoordError> = std::result::Result<T, E>;

/// How a cancel request's reason begins, in the etcd stop key of a run and
/// in its record (`cancelled by <who>`).
pub const CANCELLED: &str = "cancelled";

/// What came of asking to cancel a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    /// Its supervisor was told; it stops the job and records `cancelled`.
    Asked,
    /// It is not running (anymore).
    NotRunning,
}

/// Whether a job has an active run (see `Coordinator::job_activity`).
#[derive(Debug)]
pub enum Activity {
    Idle,
    /// Active; the run's record or marker, where it can be read yet.
    Active(Option<Box<RunRecord>>),
}

/// Who currently leads, as far as the backend knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    pub instance: String,
    pub term: u64,
    pub since: DateTime<Utc>,
    #[serde(default)]
    pub pid: Option<u32>,
}

/// A request to run a job now, made by `bgsched trigger` on any machine and
/// carried out by the leader (cluster mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerRequest {
    /// Chosen by the requester, so it can wait for this run's record.
    pub run_id: String,
    pub job: String,
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    /// As the requester gave them; the leader checks them against its own
    /// config before the run starts.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub params: std::collections::BTreeMap<String, String>,
    /// A run at a later time (`trigger --at`, the API's `at`): kept as a
    /// scheduled run until then, when the leader turns it into a request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
    /// A run started by the end of this upstream run (`after`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<crate::model::Upstream>,
    /// Where it runs, if not where the job's `run_on` says (`trigger
    /// --on`, the API's `on`; a retry of a lost run avoids the member
    /// that lost it).
    #[serde(default, skip_serializing_if = "Where::is_default")]
    pub placement: Where,
    /// The attempt the run starts at (a retry of a run lost on a member
    /// goes on counting its attempts); `None`: the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_attempt: Option<u32>,
}

/// A manual run's say in its placement, over the job's `run_on`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Where {
    /// Run on this member (its instance name) only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<String>,
    /// Run on a member with all of these labels.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Never on these members.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub avoid: Vec<String>,
}

impl Where {
    pub fn is_default(&self) -> bool {
        *self == Where::default()
    }
}

/// A claimed run the leader placed on another member: what that member
/// needs, beside its own config's job, to start it (`P/assign/<member>/<run-id>`,
/// written by the claim transaction, bound to the run's lease).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// `instance` is the executing member.
    pub key: RunKey,
    pub turn: Turn,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupSeat>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub params: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<crate::model::Upstream>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_attempt: Option<u32>,
    /// The run's lease.
    pub lease: i64,
    /// Who placed it.
    pub leader: String,
    /// The member's process it is for (its `MemberInfo::process`).
    pub process: String,
}

impl TriggerRequest {
    /// The record of this run at a later time when `by` (who asks, as in
    /// `cancelled by <by>`) on `instance` cancels it before its time: it
    /// never starts.
    pub fn cancelled_before_its_time(&self, by: &str, instance: &str) -> RunRecord {
        let at = self.at.unwrap_or(self.requested_at);
        let mut key = RunKey::new(&self.job, at, Trigger::Manual, instance);
        key.run_id = self.run_id.clone();
        let mut rec = RunRecord::not_run(
            key,
            Outcome::Cancelled,
            format!(
                "{CANCELLED} by {by} before its time ({}): not started",
                at.to_rfc3339()
            ),
        );
        rec.params = self.params.clone();
        // It never ran.
        rec.duration_ms = None;
        rec
    }

    /// The request for a run of `job` after `upstream` ended; `why` says
    /// who asks (`after extract run …`, `after all of a, b`).
    pub fn after(job: &str, why: String, upstream: Option<crate::model::Upstream>) -> Self {
        TriggerRequest {
            run_id: crate::model::new_run_id(),
            job: job.to_string(),
            requested_by: why,
            requested_at: Utc::now(),
            params: Default::default(),
            at: None,
            upstream,
            placement: Where::default(),
            first_attempt: None,
        }
    }
}

/// Held while this instance leads.
pub struct Leadership {
    pub term: u64,
    /// `true` while leadership is confirmed; flips to `false` for good when
    /// the backend can no longer vouch for it (session lost, key gone).
    valid: watch::Receiver<bool>,
    /// Until when the backend vouches for leadership, if it bounds that
    /// (etcd: the session lease's last confirmed renewal + 2/3 TTL). Past
    /// it the leader is fenced: it must not start a claim, but leadership
    /// is not lost and resumes with the same term once the instant moves on.
    fence: Option<watch::Receiver<tokio::time::Instant>>,
    /// Manual trigger requests addressed to the leader, if the backend has any.
    pub requests: Option<mpsc::Receiver<TriggerRequest>>,
    /// Runs the backend recorded as `lost` on its own while this leadership
    /// lasts (their `on_failure` hooks are the leader's to run).
    pub lost: Option<mpsc::Receiver<RunRecord>>,
    /// Backend-specific resources that embody leadership (a locked file, a
    /// watch task); dropping them gives leadership up.
    _hold: Box<dyn Send + Sync>,
    /// Tasks that serve this leadership only (turning scheduled runs into
    /// requests); stopped with it.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Leadership {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Leadership {
    pub fn new(
        term: u64,
        valid: watch::Receiver<bool>,
        requests: Option<mpsc::Receiver<TriggerRequest>>,
        hold: Box<dyn Send + Sync>,
    ) -> Self {
        Leadership {
            term,
            valid,
            fence: None,
            requests,
            lost: None,
            _hold: hold,
            tasks: Vec::new(),
        }
    }

    /// Requests from a backend task that lives as long as this leadership.
    pub fn with_requests(
        mut self,
        requests: mpsc::Receiver<TriggerRequest>,
        task: tokio::task::JoinHandle<()>,
    ) -> Self {
        self.requests = Some(requests);
        self.tasks.push(task);
        self
    }

    /// A task that lives as long as this leadership.
    pub fn with_task(mut self, task: tokio::task::JoinHandle<()>) -> Self {
        self.tasks.push(task);
        self
    }

    pub fn with_lost_runs(mut self, lost: mpsc::Receiver<RunRecord>) -> Self {
        self.lost = Some(lost);
        self
    }

    pub fn with_fence(mut self, vouched: watch::Receiver<tokio::time::Instant>) -> Self {
        self.fence = Some(vouched);
        self
    }

    /// Whether leadership is not lost (it may be fenced for now). Once
    /// false, false for good.
    pub fn is_held(&self) -> bool {
        *self.valid.borrow()
    }

    /// Why a claim may not start now: lost, or only fenced (checked in
    /// that order, so a fence that lifts meanwhile is still told apart
    /// from a loss).
    pub fn refusal(&self) -> ClaimRejected {
        match self.is_held() {
            true => ClaimRejected::Fenced,
            false => ClaimRejected::NotLeader,
        }
    }

    /// Whether this leader may start a claim now: not lost, not fenced.
    pub fn is_valid(&self) -> bool {
        *self.valid.borrow() && !self.is_fenced()
    }

    /// Whether the backend cannot vouch for leadership right now, though it
    /// has not been lost.
    pub fn is_fenced(&self) -> bool {
        self.fence
            .as_ref()
            .is_some_and(|f| tokio::time::Instant::now() >= *f.borrow())
    }

    /// Resolves once leadership is vouched for again (or lost).
    pub async fn vouched(&self) {
        let Some(mut fence) = self.fence.clone() else {
            return;
        };
        let mut valid = self.valid.clone();
        loop {
            if tokio::time::Instant::now() < *fence.borrow_and_update() || !*valid.borrow() {
                return;
            }
            tokio::select! {
                r = fence.changed() => if r.is_err() { std::future::pending::<()>().await },
                _ = valid.changed() => return,
            }
        }
    }

    /// Resolves once leadership is lost.
    pub async fn lost(&self) {
        let mut valid = self.valid.clone();
        while *valid.borrow_and_update() {
            if valid.changed().await.is_err() {
                // The backend dropped its side: nothing can revoke us any more.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// A request to fire `job` once for `tick`.
#[derive(Debug, Clone)]
pub struct ClaimRequest<'a> {
    pub job: &'a str,
    pub tick: DateTime<Utc>,
    pub trigger: Trigger,
    pub instance: &'a str,
    /// What an active run of the job means for this claim.
    pub overlap: Overlap,
    /// Whether `tick` becomes the job's last fired tick (scheduled and
    /// catch-up fires; not manual triggers).
    pub advances_schedule: bool,
    /// The run id chosen by a [`TriggerRequest`] this claim answers.
    pub request: Option<&'a str>,
    /// The concurrency group the job belongs to: the claim also takes one
    /// of its places, or follows `overlap` when all are held.
    pub group: Option<&'a crate::config::Group>,
    /// For a run after another job's: the upstream run, which its marker
    /// (and so a `lost` record of it) names.
    pub upstream: Option<&'a crate::model::Upstream>,
    /// Where the run executes (a backend without members runs it here).
    pub run_on: &'a crate::config::RunOn,
    /// A manual run's say in its placement.
    pub placement: Option<&'a Where>,
    /// A run placed elsewhere starts with these (checked) parameters.
    pub params: Option<&'a std::collections::BTreeMap<String, String>>,
    /// The attempt the run starts at, if not the first.
    pub first_attempt: Option<u32>,
}

/// A run's concurrency group, as its supervisor knows it: the group, its
/// limit, and the place its claim took (`None`: it waits for one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSeat {
    pub group: String,
    pub limit: u32,
    pub index: Option<u32>,
}

impl GroupSeat {
    /// `group` with the place `seat` took in it, if any.
    pub fn of(group: Option<&crate::config::Group>, seat: Option<&Seat>) -> Option<GroupSeat> {
        group.map(|g| GroupSeat {
            group: g.name.clone(),
            limit: g.limit,
            index: seat.map(|s| s.index),
        })
    }
}

/// A place in a concurrency group, taken by a claim: which one, and
/// (standalone) the lock that holds it, handed to the run's supervisor
/// like the run lock.
#[derive(Debug)]
pub struct Seat {
    pub index: u32,
    pub lock: Option<OwnedFd>,
}

/// What a run's supervisor must keep for as long as the run is alive, so
/// that the run counts as active everywhere.
#[derive(Debug)]
pub enum Hold {
    None,
    /// Standalone: the job's locked run-lock file.
    Lock(OwnedFd),
    /// Cluster: the lease the run's marker is bound to, and when it was granted.
    Lease {
        id: i64,
        granted_at: DateTime<Utc>,
    },
}

/// A successful claim: the right to start exactly one run.
#[derive(Debug)]
pub struct Claim {
    pub run_id: String,
    pub term: u64,
    pub hold: Hold,
    pub turn: Turn,
    /// The group place the claim took. `None` for a job in a group means
    /// its supervisor waits for one after its turn (`overlap = "queue"`
    /// or `"replace"` with the group full).
    pub seat: Option<Seat>,
    /// The group the claim counted the run in, as its supervisor must
    /// know it (the config may be reloaded before the run starts).
    pub group: Option<GroupSeat>,
    /// The member the claim placed the run on, when that is not this
    /// instance: its supervisor starts there, and nothing starts here.
    pub placed_on: Option<String>,
}

/// When a claimed run may start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Turn {
    /// At once: no run of the job is active (or the job allows overlap).
    #[default]
    Now,
    /// After the active run ends (`overlap = "queue"`): the claim took the
    /// job's single waiting place, and the supervisor waits in it.
    Queued,
    /// After stopping the active run (`overlap = "replace"`): the supervisor
    /// asks it to stop, then waits for it like a queued run.
    Replace { active: Option<Box<RunRecord>> },
}

/// Why a claim was refused.
#[derive(Debug, thiserror::Error)]
pub enum ClaimRejected {
    #[error("already running: {}", describe_running(.0.as_deref()))]
    StillRunning(Option<Box<RunRecord>>),
    #[error("a run is already waiting for the active one to end (the active one: {})", describe_running(.0.as_deref()))]
    AlreadyQueued(Option<Box<RunRecord>>),
    #[error("group {group} full: {}", describe_holders(.holders))]
    GroupFull {
        group: String,
        holders: Vec<RunRecord>,
    },
    #[error("tick {0} was already fired")]
    AlreadyFired(DateTime<Utc>),
    #[error("this instance is not the leader")]
    NotLeader,
    /// The leader could not vouch for its leadership when the claim was to
    /// go out: nothing was sent, and the fire waits to be vouched for.
    #[error(
        "fenced: the backend could not vouch for this leadership when the claim was to go out"
    )]
    Fenced,
    #[error("trigger request {0} was already handled or withdrawn")]
    RequestGone(String),
    /// No live member may take the run (`run_on`): why, in words.
    #[error("{0}")]
    NoMember(String),
    /// An unanswered claim went through as run `{0}`, whose marker ended
    /// before the answer came: that run's own record tells.
    #[error(
        "the claim went through as run {0}, which ended before its answer came; its record tells"
    )]
    Ended(String),
    #[error(transparent)]
    Backend(#[from] CoordError),
}

impl ClaimRejected {
    /// A refusal under the job's overlap policy: the tick is skipped.
    pub fn is_skip(&self) -> bool {
        matches!(
            self,
            ClaimRejected::StillRunning(_)
                | ClaimRejected::AlreadyQueued(_)
                | ClaimRejected::GroupFull { .. }
        )
    }

    /// A short label for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            ClaimRejected::StillRunning(_) => "still_running",
            ClaimRejected::AlreadyQueued(_) => "already_queued",
            ClaimRejected::GroupFull { .. } => "group_full",
            ClaimRejected::AlreadyFired(_) => "already_fired",
            ClaimRejected::NotLeader => "not_leader",
            ClaimRejected::Fenced => "fenced",
            ClaimRejected::RequestGone(_) => "request_gone",
            ClaimRejected::NoMember(_) => "no_member",
            ClaimRejected::Ended(_) => "ended",
            ClaimRejected::Backend(_) => "backend_error",
        }
    }
}

/// The start of a skip's reason when the job's group was full; the read
/// back of a claim whose answer was lost knows its skip by it.
pub const GROUP_FULL: &str = "group ";

/// "held by run … of backup (since …), …" for a full group's message.
fn describe_holders(holders: &[RunRecord]) -> String {
    if holders.is_empty() {
        return "all its places are held".to_string();
    }
    let runs: Vec<String> = holders
        .iter()
        .map(|r| {
            format!(
                "run {} of {} (since {})",
                r.key.run_id,
                r.key.job,
                r.started_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )
        })
        .collect();
    format!("held by {}", runs.join(", "))
}

fn describe_running(active: Option<&RunRecord>) -> String {
    match active {
        Some(r) => format!(
            "run {} since {} on instance {}{}",
            r.key.run_id,
            r.started_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            r.key.instance,
            r.pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
        ),
        None => "a run is starting".to_string(),
    }
}

/// How a supervisor reaches the backend to record its run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendSpec {
    Standalone {
        state_dir: std::path::PathBuf,
        history_limit: usize,
    },
    Etcd(etcd::EtcdConfig),
}

/// See [`Coordinator::retry_lost_with`]: the next attempt of a run
/// recorded `lost`, if its job has one left.
pub type LostRetry = Arc<dyn Fn(&RunRecord) -> Option<TriggerRequest> + Send + Sync>;

/// The scheduler's view of the backend.
pub trait Coordinator: Send + Sync + 'static {
    /// Wait until this instance leads. Standbys block here.
    fn acquire_leadership(&self, instance: &str)
        -> impl Future<Output = Result<Leadership>> + Send;

    /// Give leadership up at once (graceful handoff).
    fn resign(&self, leadership: Leadership) -> impl Future<Output = ()> + Send;

    /// The newest tick fired for `job` by any leader, if any.
    fn last_fired(&self, job: &str) -> impl Future<Output = Result<Option<DateTime<Utc>>>> + Send;

    /// Atomically check leadership and the overlap policy and mark the tick
    /// as fired; only a successful claim may start a run.
    fn claim(
        &self,
        leadership: &Leadership,
        req: ClaimRequest<'_>,
    ) -> impl Future<Output = Result<Claim, ClaimRejected>> + Send;

    /// `jobs` have never fired: make `at` their last fired tick, unless one
    /// fired meanwhile, so that a later leader (or a restart) resumes their
    /// schedule from when it began here instead of from its own start, and
    /// catches up or records the ticks due in between. Best effort: where
    /// it is not written, a job starts from the next leader's start.
    fn begin_schedules(
        &self,
        leadership: &Leadership,
        jobs: &[&str],
        at: DateTime<Utc>,
    ) -> impl Future<Output = ()> + Send {
        let _ = (leadership, jobs, at);
        async {}
    }

    /// A hint, shortly before a tick, that about `fires` claims follow: a
    /// backend may do ahead of time what each claim needs (the etcd backend
    /// grants run leases), so that work is off the path from tick to start.
    fn prepare(&self, fires: usize) -> impl Future<Output = ()> + Send {
        let _ = fires;
        std::future::ready(())
    }

    /// Take back what a finished run handed back (see `RunRecorder::handback`).
    fn take_back(&self, token: &str) {
        let _ = token;
    }

    /// `job`'s last fired tick, `last`, lies ahead of this instance's clock,
    /// `now`. `Some(why)` if the backend vouches for this clock (the other
    /// replicas' clocks agree with it), and then claims of ticks from `now`
    /// on are accepted; `None` keeps at-most-once: ticks up to `last` count
    /// as fired, and the job waits for the clock to pass `last`.
    fn resume_before(
        &self,
        job: &str,
        last: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Option<String>> + Send {
        let _ = (job, last, now);
        std::future::ready(None)
    }

    /// The run id of the entry the claim of `job`'s scheduled `tick` wrote
    /// itself when it skipped the tick, if the backend does that (etcd): the
    /// scheduler's entry for the skip then goes under that id and replaces
    /// the claim's, instead of adding a second entry for the tick.
    fn claimed_skip(&self, job: &str, tick: DateTime<Utc>) -> Option<String> {
        let _ = (job, tick);
        None
    }

    /// The job's newest pause, if it has one (active or not): asked for
    /// every due tick, so answered from what the backend already holds.
    fn pause_of(&self, job: &str) -> Option<Pause> {
        let _ = job;
        None
    }

    /// Whether a claimed run is too late to start (its hold can no longer be
    /// trusted for long enough), and why.
    fn too_late_to_start(&self, hold: &Hold) -> Option<String> {
        let _ = hold;
        None
    }

    /// Make a claim's hold that became [`Self::too_late_to_start`] fresh
    /// again if it still holds (a run lease renewed: its marker lives on).
    /// Returns whether it did.
    fn refresh_hold(&self, hold: &mut Hold) -> impl Future<Output = bool> + Send {
        let _ = hold;
        async { false }
    }

    /// Append a history entry that no supervisor writes (skips, missed ticks).
    /// `Ok(false)`: not written, and never will be (an entry of that id
    /// exists, or the entry's leadership term is over).
    fn record(&self, record: &RunRecord) -> impl Future<Output = Result<bool>> + Send;

    /// [`Self::record`] for the entry of a claimed tick or request (skipped,
    /// not started, start failed): the claim consumed it under its term, so
    /// the entry is its only trace and is written even when that term has
    /// ended since (a leader paused or cut off between claim and start).
    fn record_claimed(&self, record: &RunRecord) -> impl Future<Output = Result<bool>> + Send {
        self.record(record)
    }

    /// `job` runs after all of `upstreams` (`after_all`): once each has
    /// marked an end since the job's last such run, turn the marks into
    /// one request for its run (exactly once, as one step under this
    /// leadership; the request then goes as any other). Whether it did.
    fn fan_in(
        &self,
        leadership: &Leadership,
        job: &str,
        upstreams: &[String],
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Record runs of `job` whose supervisor died without finishing them.
    /// Returns the records it wrote.
    fn reap_lost(&self, job: &str) -> impl Future<Output = Vec<RunRecord>> + Send;

    /// Record as lost the run `key` whose supervisor died before writing
    /// any record of it (killed in its first milliseconds), if it has none
    /// still. Returns the record written. A backend whose claim leaves a
    /// trace of the run of its own (etcd's marker, which expires into a
    /// `lost` record) needs nothing more.
    fn reap_unrecorded(
        &self,
        key: &crate::model::RunKey,
    ) -> impl Future<Output = Option<RunRecord>> + Send {
        let _ = key;
        async { None }
    }

    /// Mark a trigger request as answered without a run (e.g. skipped).
    fn finish_request(&self, run_id: &str) -> impl Future<Output = ()> + Send;

    /// Whether a run of `job` is active, on any instance. A service's start
    /// asks first, every second while it runs elsewhere, so that costs a
    /// read instead of a claim. `Idle` where unknown: the claim decides.
    fn job_activity(&self, job: &str) -> impl Future<Output = Result<Activity>> + Send {
        let _ = job;
        std::future::ready(Ok(Activity::Idle))
    }

    /// Ask the supervisor of the active `run` to stop its job (recorded
    /// `cancelled`, with `why`), as `bgsched cancel` does.
    fn cancel_run(
        &self,
        run: &RunRecord,
        why: &str,
    ) -> impl Future<Output = Result<Cancel>> + Send {
        let _ = (run, why);
        std::future::ready(Ok(Cancel::NotRunning))
    }

    /// Tell the other instances which config (content hash) this one uses
    /// from now on. Backends without peers have no one to tell.
    fn announce_config(
        &self,
        instance: &str,
        hash: &str,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (instance, hash);
        std::future::ready(Ok(()))
    }

    /// The runs the leader places on `instance` (see [`Assignment`]), for
    /// as long as this process lives; `None` for a backend without members.
    fn assignments(&self, instance: &str) -> Option<mpsc::Receiver<Assignment>> {
        let _ = instance;
        None
    }

    /// Take `assignment` over to start it here: exactly one taker wins
    /// (`None`: another did, or its lease is gone and the leader records
    /// the run `lost`), and its hold is then fresh.
    fn take_assignment(
        &self,
        assignment: &Assignment,
    ) -> impl Future<Output = Result<Option<Hold>>> + Send {
        let _ = assignment;
        std::future::ready(Ok(None))
    }

    /// What a run this backend records `lost` is asked for again as (the
    /// scheduler's answer from its config): the leader writes that request
    /// in the transaction of the `lost` record itself. Only a backend that
    /// places runs on other members records such losses.
    fn retry_lost_with(&self, retry: LostRetry) {
        let _ = retry;
    }

    /// This instance is stopping: take no more placements.
    fn leave(&self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }

    /// Where this backend's supervisors record.
    fn backend_spec(&self) -> BackendSpec;

    /// Leave for good: release anything held for this instance.
    fn shutdown(&self) -> impl Future<Output = ()> + Send;
}

/// The run of `key`, whose supervisor died without recording its end,
/// recorded `lost` (with the other runs of its job that are gone too):
/// what the scheduler does when one of its supervisors dies uncleanly, and
/// the API when one of its own does.
pub async fn reap_after_death<C: Coordinator>(
    coord: &C,
    key: &crate::model::RunKey,
) -> Vec<RunRecord> {
    let mut lost = coord.reap_lost(&key.job).await;
    if !lost.iter().any(|r| r.key.run_id == key.run_id) {
        lost.extend(coord.reap_unrecorded(key).await);
    }
    lost
}

/// Reading run history, for `list` and `history`: the same questions asked
/// of either backend, so no command needs to know where records live.
pub trait HistoryReader: Sync {
    /// Entries of `job`, newest first (by run id, i.e. by creation), at most
    /// `limit`, active runs included.
    fn recent(
        &self,
        job: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RunRecord>>> + Send;

    /// Runs of `job` active right now, oldest first.
    fn active(&self, job: &str) -> impl Future<Output = Result<Vec<RunRecord>>> + Send;

    /// The entry with this run id, looked for among the entries of `jobs`
    /// (a record's place depends on its job, which the caller may not know).
    /// `run_id` must already be a valid run id: it becomes part of a path or key.
    fn find_run(
        &self,
        jobs: &[&str],
        run_id: &str,
    ) -> impl Future<Output = Result<Option<RunRecord>>> + Send;
}

/// A running attempt's output as far as it is kept (the executor's tail).
pub trait LiveOutput: Send + Sync {
    /// (the offset the text starts at, which is later than `from` when
    /// that part is no longer kept, the text from there to now).
    fn since(&self, from: u64) -> (u64, String);
}

/// The supervisor's view of the backend: keeps one run's record current.
pub trait RunRecorder: Send {
    /// Store `record` (outcome `running`) and mark the run active.
    fn started(&mut self, record: &RunRecord) -> impl Future<Output = Result<()>> + Send;
    /// Before anything else, for a run after another job's (`after`): say
    /// that a supervisor took the claimed run over, so that a claim whose
    /// leader died before handing it over is told apart from a run that
    /// was under way, and is asked for again (etcd; standalone the claimed
    /// request file tells).
    fn taken_over(&mut self, record: &RunRecord) -> impl Future<Output = Result<()>> + Send {
        let _ = record;
        std::future::ready(Ok(()))
    }
    /// For a queued or replacing run (see [`Turn`]): wait until the job's
    /// active run has ended (asking it to stop first, for `Replace`), then
    /// mark `record`'s run as the active one.
    fn take_turn(
        &mut self,
        turn: &Turn,
        record: &RunRecord,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Where a newer run's request to stop this one arrives (`overlap =
    /// "replace"`): the reason, once there is one. A backend that delivers
    /// the request otherwise (standalone: SIGUSR1) never sends.
    fn replacements(&mut self) -> watch::Receiver<Option<String>>;
    /// The run counts in `seat.group`, holding the place `seat.index`
    /// since its claim if that took one (standalone: by `lock`); `finished`
    /// gives up whatever place it holds then.
    fn seated(&mut self, seat: &GroupSeat, lock: Option<OwnedFd>);
    /// After its turn, for a run whose claim found its group full: wait
    /// until one of the group's places is free and take it.
    /// `record` is the run's, which the place names (for whoever finds
    /// the group full).
    fn take_seat(
        &mut self,
        seat: &GroupSeat,
        record: &RunRecord,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The runs this run's end starts (`after`), and the `after_all`
    /// dependents whose wait it marks done: written with its final record
    /// by `finished`, so that they are asked for exactly when the run is
    /// recorded.
    fn will_trigger(&mut self, requests: Vec<TriggerRequest>, marks: Vec<String>);
    /// After `finished`: what the run held and the next claim may reuse, as
    /// a token for `Coordinator::take_back` on the scheduler's side.
    fn handback(&self) -> Option<String> {
        None
    }
    /// Who cancelled the run, once its supervisor got the signal to
    /// (standalone: the canceller leaves it in a file, since a signal
    /// carries no words; in etcd the stop key's value says it).
    fn cancelled_by(&mut self) -> Option<String> {
        None
    }
    /// Where attempt `attempt` copies its output as it comes, for
    /// followers (standalone: a file; etcd publishes instead).
    fn live_file(&mut self, attempt: u32) -> Option<std::fs::File> {
        let _ = attempt;
        None
    }
    /// Publish `tail` while someone follows the run (etcd), until the
    /// returned task is stopped.
    fn publish_live(
        &mut self,
        output: std::sync::Arc<dyn LiveOutput>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let _ = output;
        None
    }
    /// Store the record of a failed attempt that is about to be retried,
    /// as an entry of its own; the run stays active.
    fn attempt_failed(&mut self, record: &RunRecord) -> impl Future<Output = Result<()>> + Send;
    /// Replace the active record with the final one; the run stops counting
    /// as active.
    fn finished(&mut self, record: &RunRecord) -> impl Future<Output = Result<()>> + Send;
    /// Resolves (with the reason) if the run can no longer be kept marked as
    /// active, so the supervisor must stop it before anyone else may start
    /// the job. Never resolves for backends that cannot lose the mark.
    fn fenced(&mut self) -> impl Future<Output = String> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::{Duration, Instant};

    #[tokio::test]
    async fn a_fenced_leader_may_not_claim_until_vouched_for_again_and_is_not_lost() {
        let (_valid_tx, valid) = watch::channel(true);
        let (fence_tx, fence) = watch::channel(Instant::now() + Duration::from_millis(100));
        let leadership = Leadership::new(7, valid, None, Box::new(())).with_fence(fence);
        assert!(leadership.is_valid());
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(leadership.is_fenced());
        assert!(
            !leadership.is_valid(),
            "past the vouched-for instant no claim may start"
        );
        assert!(
            matches!(leadership.refusal(), ClaimRejected::Fenced),
            "a fenced claim is held back, not refused as by a lost leader"
        );
        let lost = tokio::time::timeout(Duration::from_millis(200), leadership.lost()).await;
        assert!(lost.is_err(), "fenced is not lost");
        let renewed = Instant::now() + Duration::from_secs(60);
        let vouched = async {
            tokio::task::yield_now().await;
            fence_tx.send(renewed).unwrap();
        };
        tokio::join!(leadership.vouched(), vouched);
        assert!(leadership.is_valid());
        assert_eq!(leadership.term, 7, "the same term resumes");
    }

    #[tokio::test]
    async fn a_lost_leadership_is_neither_valid_nor_waited_for() {
        let (valid_tx, valid) = watch::channel(true);
        let (_fence_tx, fence) = watch::channel(Instant::now() - Duration::from_millis(1));
        let leadership = Leadership::new(3, valid, None, Box::new(())).with_fence(fence);
        valid_tx.send(false).unwrap();
        assert!(!leadership.is_valid());
        assert!(matches!(leadership.refusal(), ClaimRejected::NotLeader));
        // `vouched` returns for a lost leadership too, so the fire loop sees
        // the loss instead of waiting for a renewal that never comes.
        tokio::time::timeout(Duration::from_secs(1), leadership.vouched())
            .await
            .expect("vouched returns once lost");
        tokio::time::timeout(Duration::from_secs(1), leadership.lost())
            .await
            .expect("lost resolves");
    }
}
