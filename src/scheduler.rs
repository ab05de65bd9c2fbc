//! The scheduler core: a deadline loop that sleeps until the earliest due
//! tick across all jobs, claims it through the [`Coordinator`], and hands the
//! run to a supervisor process. It never knows which backend it runs on.

use crate::config::{Config, Job};
use crate::coordination::{
    Claim, ClaimRejected, ClaimRequest, CoordError, Coordinator, Leadership, Outcome, RunRecord,
    Trigger, TriggerRequest, Turn,
};
use crate::executor::report::{self, Report};
use crate::executor::{retry_backoff, spawn_supervisor, RunSpec};
use crate::observe::log::{record_span, run_span};
use crate::observe::Metrics;
use chrono::{DateTime, Utc};
use futures_util::stream::StreamExt;
use rustix::process::{kill_process, kill_process_group, Pid, Signal};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

/// A tick fired at most this late still counts as on time (trigger
/// `schedule`); a later one is missed and only fires within `catchup`.
pub const LATE_TOLERANCE: Duration = Duration::from_secs(1);
/// Upper bound on one sleep, so a wall-clock jump or a suspended machine is
/// noticed within this long.
pub const MAX_SLEEP: Duration = Duration::from_secs(60);
/// How long before a tick the backend is told how many claims follow
/// (`Coordinator::prepare`).
const PREPARE_AHEAD: chrono::Duration = chrono::Duration::milliseconds(250);
/// Jobs whose claims are in flight at once. More overlap round trips and
/// fsyncs no better, and under overload they only make every claim (and
/// the start after it) later: with a bound, the first claims return and
/// start in time while later ones wait their turn.
const CLAIMS_IN_FLIGHT: usize = 64;
/// Missed ticks counted one by one before the count is reported as a bound.
const MISSED_SCAN_LIMIT: u64 = 10_000;

/// What to do with the ticks of one job that are due now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuePlan {
    /// Ticks to fire, oldest first, and as what: at most one catch-up (the
    /// newest missed tick) and at most one on-time tick.
    pub fires: Vec<Fire>,
    /// Ticks passed over without a run: count, oldest, newest.
    pub missed: Option<(u64, DateTime<Utc>, DateTime<Utc>)>,
    /// The job's next tick after these.
    pub next: Option<DateTime<Utc>>,
}

/// Decide what to do when `first_due` (and maybe later ticks) of `job` are
/// due at `now`. A tick at most [`LATE_TOLERANCE`] late fires as scheduled.
/// Of the ticks before it (missed: the scheduler was down, stalled, or
/// leadership changed hands), the newest fires once as a catch-up if it is
/// within the job's `catchup` window; the others are recorded as missed.
pub fn plan_due(job: &Job, first_due: DateTime<Utc>, now: DateTime<Utc>) -> DuePlan {
    // The newest three due ticks (newest last) and how many there are.
    let mut tail = vec![first_due];
    let mut count: u64 = 1;
    let push = |tail: &mut Vec<DateTime<Utc>>, t| {
        if tail.len() == 3 {
            tail.remove(0);
        }
        tail.push(t);
    };
    for n in job.schedule.iter_after(first_due).take_while(|n| *n <= now) {
        if count >= MISSED_SCAN_LIMIT {
            // A long outage: jump to the ticks near `now` instead of walking
            // every tick in between.
            let window = chrono::Duration::from_std(job.catchup + LATE_TOLERANCE)
                .unwrap_or(chrono::Duration::zero());
            let from = now - window - chrono::Duration::seconds(1);
            for t in job.schedule.iter_after(from).take_while(|t| *t <= now) {
                push(&mut tail, t);
                count += 1;
            }
            break;
        }
        push(&mut tail, n);
        count += 1;
    }
    let latest = *tail.last().expect("at least one due tick");
    let late = |t: DateTime<Utc>| (now - t).to_std().unwrap_or_default();
    // `missed` holds the due ticks that will not fire on time, newest last.
    let (on_time, missed_ticks, missed_count) = if late(latest) <= LATE_TOLERANCE {
        (Some(latest), &tail[..tail.len() - 1], count - 1)
    } else {
        (None, &tail[..], count)
    };
    let mut fires = Vec::new();
    let mut missed = None;
    if let Some(&newest) = missed_ticks.last() {
        if late(newest) <= job.catchup {
            fires.push((newest, Trigger::Catchup));
            if let Some(&before) = missed_ticks.iter().rev().nth(1) {
                missed = Some((missed_count - 1, first_due, before));
            }
        } else {
            missed = Some((missed_count, first_due, newest));
        }
    }
    if let Some(t) = on_time {
        fires.push((t, Trigger::Schedule));
    }
    DuePlan {
        fires,
        missed,
        next: job.schedule.next_after(latest),
    }
}

/// The trigger a due fire still goes out as at `now`, or `None` if it is
/// too late for it: beyond the job's catch-up window. A scheduled tick
/// more than [`LATE_TOLERANCE`] late goes out as a catch-up.
fn in_time(
    job: &Job,
    tick: DateTime<Utc>,
    trigger: Trigger,
    now: DateTime<Utc>,
) -> Option<Trigger> {
    let late = (now - tick).to_std().unwrap_or_default();
    if late > job.catchup.max(LATE_TOLERANCE) {
        return None;
    }
    Some(if late > LATE_TOLERANCE && trigger == Trigger::Schedule {
        Trigger::Catchup
    } else {
        trigger
    })
}

/// Why ticks passed without a run (the wording of their `missed` entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MissedWhy {
    /// No leader was firing: none elected, or this one just took over.
    Idle,
    /// This leader held its fires back while fenced.
    HeldBack,
    /// This leader's claims kept failing on backend errors.
    ClaimFailing,
    /// A later tick was claimed first.
    Superseded,
    /// This leader was firing but could not start them in time.
    Overloaded,
}

impl MissedWhy {
    fn cause(self) -> &'static str {
        match self {
            MissedWhy::Idle => "while nothing was firing",
            MissedWhy::HeldBack => "while the leader held its fires back (the backend could not vouch for its leadership: etcd had not confirmed its session lease in time)",
            MissedWhy::ClaimFailing => "while the leader's claims kept failing on backend errors",
            MissedWhy::Superseded => "unfired: a later tick was claimed first",
            MissedWhy::Overloaded => "while this leader was busy with other due work and could not start them in time",
        }
    }
}

/// A `missed` entry's reason starts with this when the leader was overloaded.
pub const OVERLOADED: &str = "overloaded";

/// The scheduler of one instance.
pub struct Scheduler<C: Coordinator> {
    /// The config in use; a reload sends a new one (see `crate::reload`).
    config: watch::Receiver<Arc<Config>>,
    coord: Arc<C>,
    instance: String,
    log_json: bool,
    metrics: Arc<Metrics>,
    /// Per job, the newest tick this process recorded as missed. Missed
    /// ticks do not advance the backend's last fired tick, so a new term
    /// of this process resumes after these rather than count them again.
    missed_up_to: Arc<std::sync::Mutex<HashMap<String, DateTime<Utc>>>>,
}

/// A supervisor this scheduler started and has not yet reaped.
struct Tracked {
    job: String,
    run_id: String,
}

/// How long a claim that failed on a backend error waits before the retry:
/// the first wait, doubling with each failure in a row up to the last.
/// A backend that stays broken (a full disk) then costs one claim every
/// few seconds, not a tight loop.
const CLAIM_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(100);
const CLAIM_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// A job's claims failing on backend errors, one after another.
struct Streak {
    failures: u32,
    /// No claim of the job before this.
    next_try: DateTime<Utc>,
}

/// One planned fire: the tick and what triggers it.
type Fire = (DateTime<Utc>, Trigger);

/// What came of one attempt to fire.
enum Fired {
    /// The supervisor, and the spec it runs.
    Started(Box<tokio::process::Child>, Box<RunSpec>),
    /// Skipped, not leader, or could not start: decided, and recorded.
    NotStarted,
    /// The tick (or a later one) was already claimed.
    Superseded,
    /// The backend could not answer; the claim may be retried.
    Retry,
}

/// A fire to attempt again after a backend error.
enum Retry {
    Tick {
        at: DateTime<Utc>,
        job: String,
        tick: DateTime<Utc>,
        trigger: Trigger,
    },
    Request {
        at: DateTime<Utc>,
        req: TriggerRequest,
        since: DateTime<Utc>,
    },
}

impl Retry {
    fn at(&self) -> DateTime<Utc> {
        match self {
            Retry::Tick { at, .. } | Retry::Request { at, .. } => *at,
        }
    }
}

/// Counters and pending retries of one leadership term's fire loop.
#[derive(Default)]
struct FireState {
    /// Skipped ticks per job (overlap = "skip").
    skipped: HashMap<String, u64>,
    /// Rejected claims per reason (see `ClaimRejected::kind`).
    rejected: HashMap<&'static str, u64>,
    retries: Vec<Retry>,
    /// Jobs whose last claim failed on a backend error.
    streaks: HashMap<String, Streak>,
    /// The stop requests, and their count when the loop began.
    stop: Option<Stop>,
}

/// Whether a stop was requested since the fire loop began: checked between
/// claims and spawns, so a large batch of due work does not delay it.
#[derive(Clone)]
struct Stop(watch::Receiver<u32>, u32);

impl Stop {
    fn requested(&self) -> bool {
        *self.0.borrow() != self.1
    }
}

impl FireState {
    /// Until when claims of `job` wait, after backend errors.
    fn backoff(&self, job: &str) -> Option<DateTime<Utc>> {
        self.streaks.get(job).map(|s| s.next_try)
    }

    fn stopping(&self) -> bool {
        self.stop.as_ref().is_some_and(Stop::requested)
    }

    fn next_retry(&self) -> Option<DateTime<Utc>> {
        self.retries.iter().map(Retry::at).min()
    }

    fn take_due_retries(&mut self, now: DateTime<Utc>) -> Vec<Retry> {
        let (due, later) = std::mem::take(&mut self.retries)
            .into_iter()
            .partition(|r| r.at() <= now);
        self.retries = later;
        due
    }
}

/// Why the fire loop ended.
enum LoopEnd {
    Stop,
    LostLeadership,
}

/// Supervisors started by this scheduler, reaped as they exit.
#[derive(Default)]
struct Running {
    by_pid: HashMap<u32, Tracked>,
    /// Per supervisor: its pid, whether it exited cleanly, and what its run
    /// handed back.
    reaper: JoinSet<(u32, bool, Option<String>)>,
    metrics: Arc<Metrics>,
}

impl Running {
    fn track(&mut self, mut child: tokio::process::Child, spec: &RunSpec) {
        let (job, run_id) = (spec.job.as_str(), spec.run_id.clone());
        let pid = child.id().unwrap_or(0);
        self.by_pid.insert(
            pid,
            Tracked {
                job: job.to_string(),
                run_id,
            },
        );
        let job = job.to_string();
        let run_id = spec.run_id.clone();
        let (tick, trigger) = (spec.tick, spec.trigger);
        let metrics = self.metrics.clone();
        metrics.supervisor_started();
        let reap = async move {
            // The supervisor reports its job's pid (= process group), then
            // the run's outcome (see `executor::report`).
            let (mut group, mut ended, mut handback) = (None, None, None);
            if let Some(out) = child.stdout.take() {
                use tokio::io::AsyncBufReadExt;
                let mut lines = tokio::io::BufReader::new(out).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match report::parse(&line) {
                        Some(Report::Started(pid)) => {
                            // A retry reports the pid of each attempt; only
                            // the first start is the fire's.
                            match group {
                                None => metrics.run_started(&job, tick, trigger),
                                Some(_) => metrics.retried(&job),
                            }
                            group = Pid::from_raw(pid);
                        }
                        Some(Report::Ended(outcome, took, held)) => {
                            ended = Some((outcome, took));
                            handback = held;
                        }
                        None => {}
                    }
                }
            }
            let status = child.wait().await;
            metrics.run_ended(&job, ended);
            metrics.supervisor_ended();
            // A supervisor that died without cleaning up (kill -9, OOM
            // killer) took only its direct child along (PDEATHSIG); the
            // rest of the job's group must not run on unsupervised.
            let clean = status.as_ref().is_ok_and(|s| s.success());
            if let (false, Some(g)) = (clean, group) {
                if kill_process_group(g, Signal::KILL).is_ok() {
                    tracing::warn!(job = %job, supervisor_pid = pid, "supervisor died: killed what was left of its job");
                }
            }
            if !clean {
                // What left the group is still in the run's cgroup, if it has one.
                crate::executor::contain::kill_run_cgroups(&run_id).await;
            }
            (pid, clean, handback.filter(|_| clean))
        };
        self.reaper.spawn(reap.instrument(run_span(spec)));
    }

    /// Resolves when a supervisor exits (never, if none runs), with its
    /// job if it did not exit cleanly, and what its run handed back.
    async fn reap_one(&mut self) -> (Option<String>, Option<String>) {
        match self.reaper.join_next().await {
            Some(Ok((pid, clean, handback))) => {
                let tracked = self.by_pid.remove(&pid);
                (tracked.filter(|_| !clean).map(|t| t.job), handback)
            }
            Some(Err(_)) => (None, None),
            None => std::future::pending().await,
        }
    }
}

impl<C: Coordinator> Scheduler<C> {
    /// A scheduler whose config never changes.
    pub fn new(config: Arc<Config>, coord: Arc<C>, instance: String, log_json: bool) -> Self {
        Self::reloadable(watch::channel(config).1, coord, instance, log_json)
    }

    /// A scheduler that applies every config `config` receives: new jobs
    /// are scheduled, removed ones no longer fire (their runs finish),
    /// changed schedules apply from their next tick, and any other change
    /// from a job's next run.
    pub fn reloadable(
        config: watch::Receiver<Arc<Config>>,
        coord: Arc<C>,
        instance: String,
        log_json: bool,
    ) -> Self {
        Scheduler {
            config,
            coord,
            instance,
            log_json,
            metrics: Arc::default(),
            missed_up_to: Default::default(),
        }
    }

    /// Record into `metrics` (by default a registry nobody reads).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Run until `stop` counts a stop request. Returns whether the stop was
    /// forced (a second request), in which case runs were killed at once.
    pub async fn run(&self, mut stop: watch::Receiver<u32>) -> anyhow::Result<bool> {
        let mut running = Running {
            metrics: self.metrics.clone(),
            ..Running::default()
        };
        loop {
            let jobs = self.config.borrow().jobs.len();
            tracing::info!(instance = %self.instance, jobs, "waiting for leadership");
            // Nothing else may cancel a campaign half-way (its win could be
            // lost with the future); supervisors are reaped by their own
            // tasks meanwhile and forgotten at the next `reap_one`.
            let campaign = self.coord.acquire_leadership(&self.instance);
            tokio::pin!(campaign);
            // A standby's loop is this wait: it beats so `/healthz` can tell
            // a waiting scheduler from a stuck one.
            let mut beat = tokio::time::interval(MAX_SLEEP / 4);
            let won = loop {
                tokio::select! {
                    l = &mut campaign => break Some(l?),
                    _ = stop.changed() => break None,
                    _ = beat.tick() => self.metrics.beat(),
                }
            };
            let Some(mut leadership) = won else {
                break;
            };
            self.metrics.leading(leadership.term);
            tracing::info!(instance = %self.instance, term = leadership.term, "leading: firing jobs");
            match self
                .fire_loop(&mut leadership, &mut stop, &mut running)
                .await?
            {
                LoopEnd::Stop => {
                    // Resign at once so a standby takes over while our runs
                    // finish; their supervisors keep them marked as active.
                    self.coord.resign(leadership).await;
                    self.metrics.not_leading("resigned");
                    break;
                }
                LoopEnd::LostLeadership => {
                    tracing::warn!(term = leadership.term, "leadership lost: stopped firing");
                    self.metrics.not_leading("lost");
                    drop(leadership);
                }
            }
        }
        tracing::info!(
            running = running.by_pid.len(),
            "stopping: no new fires; waiting for running jobs"
        );
        let forced = self.drain(&mut stop, &mut running).await;
        self.coord.shutdown().await;
        Ok(forced)
    }

    async fn fire_loop(
        &self,
        leadership: &mut Leadership,
        stop: &mut watch::Receiver<u32>,
        running: &mut Running,
    ) -> anyhow::Result<LoopEnd> {
        let mut updates = self.config.clone();
        let mut config = updates.borrow_and_update().clone();
        let mut jobs = scheduled(&config);
        let mut due: Due = BinaryHeap::new();
        let now = Utc::now();
        let mut began = now;
        let mut first = Vec::new();
        for (i, job) in jobs.iter().enumerate() {
            // Resume after the last fired tick so ticks missed while no
            // scheduler ran are caught up (or recorded as missed).
            let from = match self.coord.last_fired(&job.name).await? {
                Some(last) if last - now > chrono_tolerance() => {
                    self.last_tick_ahead(job, last, now).await
                }
                Some(last) => last,
                None => {
                    first.push(job.name.as_str());
                    now
                }
            };
            let missed_up_to = self
                .missed_up_to
                .lock()
                .expect("missed lock")
                .get(&job.name)
                .copied();
            let from = missed_up_to.map_or(from, |m| m.max(from));
            if let Some(t) = job.schedule.next_after(from) {
                due.push(Reverse((t, i)));
            }
        }
        // A job that never fired counts from now, also for the next leader.
        self.coord.begin_schedules(leadership, &first, now).await;
        let mut requests = leadership.requests.take();
        let mut lost = leadership.lost.take();
        let mut state = FireState {
            stop: Some(Stop(stop.clone(), *stop.borrow())),
            ..FireState::default()
        };
        let mut prepared_for = None;
        // When fenced, since when; after, the last stretch held back, so the
        // ticks missed in it say why.
        let mut fenced_since: Option<DateTime<Utc>> = None;
        let mut held_back: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
        // The wall clock against the monotonic one, to notice it step back.
        let mut turned = (Utc::now(), tokio::time::Instant::now());
        loop {
            self.metrics.beat();
            let mut reloaded = None;
            let next_due = due.peek().map(|Reverse((t, _))| *t);
            if let Some(t) = next_due.filter(|t| prepared_for != Some(*t)) {
                if Utc::now() >= t - PREPARE_AHEAD {
                    prepared_for = Some(t);
                    let fires = due.iter().filter(|Reverse((tt, _))| *tt == t).count();
                    let coord = self.coord.clone();
                    tokio::spawn(async move { coord.prepare(fires).await });
                }
            }
            let prepare_at = next_due
                .filter(|t| prepared_for != Some(*t))
                .map(|t| t - PREPARE_AHEAD);
            let wake = [next_due, state.next_retry(), prepare_at]
                .into_iter()
                .flatten()
                .min();
            // Counted on the monotonic clock from the last turn, so a wall
            // clock that steps back meanwhile is noticed at the wake-up
            // (below), not only after a MAX_SLEEP.
            let projected =
                turned.0 + chrono::Duration::from_std(turned.1.elapsed()).unwrap_or_default();
            let wait = match wake {
                Some(t) => (t - projected).to_std().unwrap_or_default().min(MAX_SLEEP),
                None => MAX_SLEEP,
            };
            // Fenced (the backend cannot vouch for leadership right now, but
            // has not lost it): start nothing, take no requests, and wait to
            // be vouched for again; the ticks due meanwhile stay in `due` and
            // are planned (caught up, coalesced) once firing resumes.
            let fenced = leadership.is_fenced();
            if fenced && fenced_since.is_none() {
                fenced_since = Some(Utc::now());
                tracing::warn!(
                    term = leadership.term,
                    "fenced: the backend cannot vouch for leadership right now; holding fires back"
                );
            }
            tokio::select! {
                biased;
                _ = stop.changed() => return Ok(LoopEnd::Stop),
                () = leadership.lost() => return Ok(LoopEnd::LostLeadership),
                () = leadership.vouched(), if fenced => {
                    if let Some(since) = fenced_since.take() {
                        tracing::info!(term = leadership.term, held_back_ms = (Utc::now() - since).num_milliseconds(), "vouched for again: resuming with the same term");
                        held_back = Some((since, Utc::now()));
                    }
                    continue;
                }
                (died, handback) = running.reap_one() => {
                    if let Some(token) = handback {
                        self.coord.take_back(&token);
                    }
                    if let Some(job) = died {
                        for rec in self.coord.reap_lost(&job).await {
                            self.after_lost(rec);
                        }
                    }
                    continue;
                }
                Some(rec) = recv_from(&mut lost) => {
                    self.after_lost(rec);
                    continue;
                }
                Some(req) = recv_from(&mut requests), if !fenced => {
                    self.answer_request(&config, leadership, req, Utc::now(), running, &mut state).await;
                    continue;
                }
                // Applied below, after what is due under the old config.
                new = next_config(&mut updates), if !fenced => reloaded = Some(new),
                () = tokio::time::sleep(wait), if !fenced => {}
            }
            if leadership.is_fenced() && reloaded.is_none() {
                continue;
            }
            let now = Utc::now();
            let expected =
                turned.0 + chrono::Duration::from_std(turned.1.elapsed()).unwrap_or_default();
            if expected - now > chrono_tolerance() {
                let resumes = due.peek().map(|Reverse((t, _))| *t);
                self.clock_stepped_back(expected - now, expected, now, resumes);
            } else if now - expected > chrono_tolerance() {
                // Ticks skipped over by a jump are not an overload.
                tracing::warn!(
                    "the wall clock jumped forward by {} (or the machine was suspended)",
                    humantime::format_duration(
                        (now - expected).to_std().map(round_ms).unwrap_or_default()
                    )
                );
                began = now;
            }
            turned = (now, tokio::time::Instant::now());
            // Retries first: they are older than anything newly due.
            for retry in state.take_due_retries(now) {
                if state.stopping() {
                    break;
                }
                match retry {
                    Retry::Tick {
                        job, tick, trigger, ..
                    } => {
                        let Some(job) = config.jobs.get(&job) else {
                            continue;
                        };
                        let Some(trigger) = in_time(job, tick, trigger, now) else {
                            let why = if held_back.is_some() {
                                MissedWhy::HeldBack
                            } else {
                                MissedWhy::ClaimFailing
                            };
                            self.record_missed(leadership.term, job, (1, tick, tick), None, why);
                            continue;
                        };
                        let superseded = self
                            .fire_tick(leadership, job, tick, trigger, running, &mut state)
                            .await;
                        if superseded {
                            // A later tick was claimed first: this one is gone for good.
                            self.record_missed(
                                leadership.term,
                                job,
                                (1, tick, tick),
                                None,
                                MissedWhy::Superseded,
                            );
                        }
                    }
                    Retry::Request { req, since, .. } => {
                        self.answer_request(&config, leadership, req, since, running, &mut state)
                            .await;
                    }
                }
            }
            let mut batch: Vec<(&Job, Vec<Fire>, Option<MissedEntry>)> = Vec::new();
            while let Some(Reverse((tick, i))) = due.peek().copied() {
                if tick > now {
                    break;
                }
                due.pop();
                let job = jobs[i];
                let plan = plan_due(job, tick, now);
                let backoff = state.backoff(&job.name).filter(|t| *t > now);
                let missed = plan.missed.map(|m| {
                    let why = match held_back {
                        Some((since, _)) if m.2 + chrono_tolerance() >= since => {
                            MissedWhy::HeldBack
                        }
                        _ => missed_why(m, began),
                    };
                    (m, why)
                });
                let newest = plan.fires.first().map(|f| (f.0, false));
                match backoff {
                    // The job's claims are failing: the fire waits for the
                    // next try instead of adding a claim of its own.
                    Some(at) => {
                        if let Some((m, why)) = missed {
                            self.record_missed(leadership.term, job, m, newest, why);
                        }
                        for (tick, trigger) in plan.fires {
                            self.retry_later(leadership.term, job, tick, trigger, at, &mut state);
                        }
                    }
                    None if plan.fires.is_empty() => {
                        if let Some((m, why)) = missed {
                            self.record_missed(leadership.term, job, m, None, why);
                        }
                    }
                    None => batch.push((job, plan.fires, missed)),
                }
                if let Some(next) = plan.next {
                    due.push(Reverse((next, i)));
                }
            }
            // Claims of different jobs go out together (etcd round trips and
            // fsyncs overlap), and each job starts as soon as its own claims
            // return, not after the slowest; one job's fires stay in tick order.
            // A fire whose claim would go out too late is dropped instead,
            // and after a stop request nothing more is claimed (unclaimed
            // ticks are left to the next leader, which catches them up).
            let lead: &Leadership = leadership;
            let stopping = state.stop.clone();
            let stopping = &stopping;
            let mut claims = futures_util::stream::iter(batch.drain(..).map(
                |(job, fires, missed)| async move {
                    let mut results = Vec::with_capacity(fires.len());
                    let first = fires.first().map(|f| f.0);
                    for (tick, trigger) in fires {
                        if stopping.as_ref().is_some_and(Stop::requested) {
                            // Unclaimed, the tick is left to the next
                            // leader, and so are the missed ones before it:
                            // recording them here would count them twice.
                            return (job, None, first, results);
                        }
                        let claimed = match in_time(job, tick, trigger, Utc::now()) {
                            Some(trigger) => {
                                Some((trigger, self.claim(lead, job, tick, trigger, None).await))
                            }
                            None => None,
                        };
                        results.push((tick, claimed));
                    }
                    (job, missed, first, results)
                },
            ))
            .buffer_unordered(CLAIMS_IN_FLIGHT);
            while let Some((job, missed, first, results)) = claims.next().await {
                // Only a catch-up that started is announced as such.
                let mut newer = first.map(|tick| (tick, false));
                for (tick, claimed) in results {
                    let Some((trigger, claimed)) = claimed else {
                        self.record_missed(
                            lead.term,
                            job,
                            (1, tick, tick),
                            None,
                            MissedWhy::Overloaded,
                        );
                        continue;
                    };
                    let fired = self
                        .start(lead, job, tick, trigger, None, claimed, &mut state)
                        .await;
                    if trigger == Trigger::Catchup && matches!(fired, Fired::Started(..)) {
                        newer = Some((tick, true));
                    }
                    self.track_fired(lead.term, fired, job, tick, trigger, running, &mut state);
                }
                if let Some((missed, why)) = missed {
                    self.record_missed(lead.term, job, missed, newer, why);
                }
            }
            drop(claims);
            held_back = None;
            if let Some(new) = reloaded {
                let now = Utc::now();
                let new_due = reschedule(&jobs, &due, &scheduled(&new), now);
                // Jobs the reload added count from now, as at a term's start.
                let mut first = Vec::new();
                for job in scheduled(&new) {
                    if !config.jobs.contains_key(&job.name)
                        && matches!(self.coord.last_fired(&job.name).await, Ok(None))
                    {
                        first.push(job.name.as_str());
                    }
                }
                self.coord.begin_schedules(leadership, &first, now).await;
                tracing::info!(
                    jobs = new.jobs.len(),
                    scheduled = new_due.len(),
                    "firing from the reloaded config"
                );
                due = new_due;
                prepared_for = None;
                config = new;
                jobs = scheduled(&config);
            }
        }
    }

    async fn fire_tick(
        &self,
        leadership: &Leadership,
        job: &Job,
        tick: DateTime<Utc>,
        trigger: Trigger,
        running: &mut Running,
        state: &mut FireState,
    ) -> bool {
        let fired = self.fire(leadership, job, tick, trigger, None, state).await;
        self.track_fired(leadership.term, fired, job, tick, trigger, running, state)
    }

    /// Track a started supervisor or queue a retry. Returns whether the tick
    /// was superseded (a later one was claimed first).
    #[allow(clippy::too_many_arguments)]
    fn track_fired(
        &self,
        term: u64,
        fired: Fired,
        job: &Job,
        tick: DateTime<Utc>,
        trigger: Trigger,
        running: &mut Running,
        state: &mut FireState,
    ) -> bool {
        match fired {
            Fired::Started(child, spec) => running.track(*child, &spec),
            Fired::NotStarted => {}
            Fired::Superseded => return true,
            Fired::Retry => {
                let at = state.backoff(&job.name).unwrap_or_else(Utc::now);
                self.retry_later(term, job, tick, trigger, at, state);
            }
        }
        false
    }

    /// Claim `tick` of `job` again at `at`. As `plan_due` does for due
    /// ticks, a job keeps at most two such pending fires: the newest tick
    /// that is already late (to catch up) and the newest one after it; an
    /// older one is coalesced into them and recorded as missed now.
    fn retry_later(
        &self,
        term: u64,
        job: &Job,
        tick: DateTime<Utc>,
        trigger: Trigger,
        at: DateTime<Utc>,
        state: &mut FireState,
    ) {
        let mut pending: Vec<(DateTime<Utc>, Trigger)> = Vec::new();
        state.retries.retain(|r| match r {
            Retry::Tick {
                job: j,
                tick,
                trigger,
                ..
            } if *j == job.name => {
                pending.push((*tick, *trigger));
                false
            }
            _ => true,
        });
        pending.push((tick, trigger));
        pending.sort_by_key(|(t, _)| *t);
        pending.dedup_by_key(|(t, _)| *t);
        let kept = pending.split_off(pending.len().saturating_sub(2));
        if let (Some(&(oldest, _)), Some(&(newest, _))) = (pending.first(), pending.last()) {
            self.record_missed(
                term,
                job,
                (pending.len() as u64, oldest, newest),
                Some((kept[0].0, false)),
                MissedWhy::ClaimFailing,
            );
        }
        for (tick, trigger) in kept {
            state.retries.push(Retry::Tick {
                at,
                job: job.name.clone(),
                tick,
                trigger,
            });
        }
    }

    /// Run a job for a `bgsched trigger` request, under its overlap policy.
    async fn answer_request(
        &self,
        config: &Config,
        leadership: &Leadership,
        req: TriggerRequest,
        since: DateTime<Utc>,
        running: &mut Running,
        state: &mut FireState,
    ) {
        let Some(job) = config.jobs.get(&req.job) else {
            tracing::warn!(job = %req.job, run_id = %req.run_id, "trigger request for a job this instance does not know");
            let mut rec = RunRecord::not_run(
                &req.job,
                Utc::now(),
                Trigger::Manual,
                &self.instance,
                Outcome::StartFailed,
                format!("no job named \"{}\" in the leader's config", req.job),
            );
            rec.run_id = req.run_id.clone();
            let _ = self.coord.record(&rec).await;
            self.coord.finish_request(&req.run_id).await;
            return;
        };
        let now = Utc::now();
        let tick = crate::coordination::manual_tick(now);
        tracing::info!(
            job = %job.name, run_id = %req.run_id, tick = %tick.to_rfc3339(), instance = %self.instance,
            term = leadership.term, requested_by = %req.requested_by, "trigger request"
        );
        match self
            .fire(
                leadership,
                job,
                tick,
                Trigger::Manual,
                Some(&req.run_id),
                state,
            )
            .await
        {
            Fired::Started(child, spec) => running.track(*child, &spec),
            Fired::NotStarted | Fired::Superseded => {}
            // The request key lives as long as its requester waits; keep
            // trying while the backend is in trouble.
            Fired::Retry if now - since < chrono::Duration::minutes(5) => {
                state.retries.push(Retry::Request {
                    at: state.backoff(&job.name).unwrap_or(now),
                    req,
                    since,
                })
            }
            Fired::Retry => {
                tracing::error!(job = %job.name, run_id = %req.run_id, "giving up on a trigger request")
            }
        }
    }

    /// Claim one fire and start its supervisor. Returns the supervisor and
    /// the run id.
    async fn fire(
        &self,
        leadership: &Leadership,
        job: &Job,
        tick: DateTime<Utc>,
        trigger: Trigger,
        request: Option<&str>,
        state: &mut FireState,
    ) -> Fired {
        let claimed = self.claim(leadership, job, tick, trigger, request).await;
        self.start(leadership, job, tick, trigger, request, claimed, state)
            .await
    }

    async fn claim(
        &self,
        leadership: &Leadership,
        job: &Job,
        tick: DateTime<Utc>,
        trigger: Trigger,
        request: Option<&str>,
    ) -> Result<Claim, ClaimRejected> {
        let req = ClaimRequest {
            job: &job.name,
            tick,
            trigger,
            instance: &self.instance,
            overlap: job.overlap,
            advances_schedule: request.is_none(),
            request,
        };
        self.coord.claim(leadership, req).await
    }

    /// Act on a claim's result: start the supervisor, or record and log
    /// why not.
    #[allow(clippy::too_many_arguments)]
    #[tracing::instrument(name = "fire", target = "bgsched::span", level = "error", skip_all, fields(job = %job.name, tick = %tick.to_rfc3339(), trigger = %trigger, instance = %self.instance, term = leadership.term))]
    async fn start(
        &self,
        leadership: &Leadership,
        job: &Job,
        tick: DateTime<Utc>,
        trigger: Trigger,
        request: Option<&str>,
        claimed: Result<Claim, ClaimRejected>,
        state: &mut FireState,
    ) -> Fired {
        if let Err(e) = &claimed {
            self.metrics.claim_rejected(e.kind());
        }
        if !matches!(claimed, Err(ClaimRejected::Backend(_))) {
            if let Some(streak) = state.streaks.remove(&job.name) {
                tracing::info!(job = %job.name, failures = streak.failures, "claims work again after {} failed attempt(s)", streak.failures);
            }
        }
        let claim = match claimed {
            Ok(claim) => claim,
            Err(rejected) if rejected.is_skip() => {
                let total = state.skipped.entry(job.name.clone()).or_default();
                *total += 1;
                self.metrics.skipped(&job.name, rejected.kind());
                let reason = rejected.to_string();
                let mut rec = self.entry(
                    leadership.term,
                    job,
                    tick,
                    trigger,
                    Outcome::Skipped,
                    reason.clone(),
                );
                if let Some(id) = request {
                    // The requester waits for a record under its own run id.
                    rec.run_id = id.to_string();
                }
                tracing::warn!(job = %job.name, run_id = %rec.run_id, tick = %tick.to_rfc3339(), skipped_total = *total, "tick skipped: {reason}");
                if let Some(id) = request {
                    if let Err(e) = self.coord.record_claimed(&rec).await {
                        tracing::error!(job = %job.name, "could not record the skip: {e}");
                    }
                    self.coord.finish_request(id).await;
                } else {
                    self.record_in_background(rec);
                }
                return Fired::NotStarted;
            }
            Err(e) => {
                let total = state.rejected.entry(e.kind()).or_default();
                *total += 1;
                let total = *total;
                let reason = e.kind();
                match e {
                    // Fenced between plan and claim: the tick is held back
                    // with the others and planned again once vouched for.
                    ClaimRejected::NotLeader if leadership.is_fenced() => {
                        tracing::debug!(job = %job.name, tick = %tick.to_rfc3339(), "fenced before the claim went out; holding the tick back");
                        return Fired::Retry;
                    }
                    ClaimRejected::AlreadyFired(t) => {
                        tracing::debug!(job = %job.name, tick = %t.to_rfc3339(), reason, rejected_total = total, "tick already fired");
                        return Fired::Superseded;
                    }
                    ClaimRejected::Backend(e) => {
                        // Not decided either way: try again shortly, so a
                        // brief etcd hiccup does not cost the tick, and
                        // less often while it keeps failing. Logged once
                        // per streak of failures.
                        let streak = state.streaks.entry(job.name.clone()).or_insert(Streak {
                            failures: 0,
                            next_try: Utc::now(),
                        });
                        streak.failures += 1;
                        let wait =
                            retry_backoff(CLAIM_RETRY_FIRST, CLAIM_RETRY_MAX, streak.failures);
                        streak.next_try = Utc::now()
                            + chrono::Duration::from_std(wait)
                                .unwrap_or(chrono::Duration::seconds(5));
                        if streak.failures == 1 {
                            tracing::error!(job = %job.name, tick = %tick.to_rfc3339(), reason, rejected_total = total, "claim failed, will retry (waiting {} ms, doubling up to {} s while it keeps failing): {e}", CLAIM_RETRY_FIRST.as_millis(), CLAIM_RETRY_MAX.as_secs());
                        } else {
                            tracing::debug!(job = %job.name, tick = %tick.to_rfc3339(), reason, rejected_total = total, failures = streak.failures, "claim failed again: {e}");
                        }
                        return Fired::Retry;
                    }
                    e => {
                        tracing::warn!(job = %job.name, tick = %tick.to_rfc3339(), reason, rejected_total = total, "claim rejected: {e}")
                    }
                }
                return Fired::NotStarted;
            }
        };
        let not_starting = if state.stopping() {
            Some((
                MissedWhy::Idle,
                "not started: the scheduler was stopping when its claimed run's turn came"
                    .to_string(),
            ))
        } else {
            self.coord.too_late_to_start(&claim.hold).map(|why| {
                (
                    MissedWhy::Overloaded,
                    format!("{OVERLOADED}: the scheduler could not start the claimed run in time ({why}); it was not started"),
                )
            })
        };
        if let Some((why, reason)) = not_starting {
            // The claim consumed the tick: its entry (under the claim's run
            // id, which also ends a cluster marker) is the tick's only trace.
            let mut rec = self.entry(
                leadership.term,
                job,
                tick,
                trigger,
                Outcome::Missed,
                reason.clone(),
            );
            rec.run_id = claim.run_id;
            rec.missed_ticks = Some(1);
            self.metrics.missed(&job.name, 1);
            if why == MissedWhy::Overloaded {
                self.metrics.overloaded(&job.name, 1);
            }
            tracing::warn!(job = %job.name, run_id = %rec.run_id, tick = %tick.to_rfc3339(), "tick missed: {reason}");
            match request {
                Some(id) => {
                    if let Err(e) = self.coord.record_claimed(&rec).await {
                        tracing::error!(job = %job.name, "could not record the missed run: {e}");
                    }
                    self.coord.finish_request(id).await;
                }
                None => self.record_in_background(rec),
            }
            return Fired::NotStarted;
        }
        let mut spec = RunSpec::new(
            job,
            claim.run_id.clone(),
            tick,
            trigger,
            self.coord.backend_spec(),
        );
        spec.instance = self.instance.clone();
        spec.term = claim.term;
        match &claim.turn {
            Turn::Now => {}
            Turn::Queued => {
                tracing::info!(job = %job.name, run_id = %claim.run_id, "queued: starts when the active run ends")
            }
            Turn::Replace { active } => {
                let of = active.as_ref().map_or("", |a| a.run_id.as_str());
                tracing::info!(job = %job.name, run_id = %claim.run_id, replaces = of, "replacing the active run")
            }
        }
        spec.turn = claim.turn;
        spec.log_json = self.log_json;
        if trigger != Trigger::Manual {
            // Decided here, from the job and tick alone, so whichever replica
            // fires the tick picks the same delay.
            spec.delay = job.jitter_for(tick);
        }
        let span = run_span(&spec);
        match spawn_supervisor(spec.clone(), claim.hold, false) {
            Ok(child) => {
                let pid = child.id().unwrap_or(0);
                span.in_scope(|| tracing::debug!(supervisor_pid = pid, "fired"));
                self.metrics.fired(&job.name, trigger);
                Fired::Started(Box::new(child), Box::new(spec))
            }
            Err(e) => {
                let mut rec = self.entry(
                    leadership.term,
                    job,
                    tick,
                    trigger,
                    Outcome::StartFailed,
                    format!("could not start its supervisor: {e}"),
                );
                rec.run_id = claim.run_id;
                tracing::error!(job = %job.name, "could not start a supervisor: {e}");
                self.record_in_background(rec);
                Fired::NotStarted
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn record_missed(
        &self,
        term: u64,
        job: &Job,
        (count, oldest, newest): Missed,
        newer: Option<(DateTime<Utc>, bool)>,
        why: MissedWhy,
    ) {
        let cause = why.cause();
        let at_least = if count >= MISSED_SCAN_LIMIT {
            "at least "
        } else {
            ""
        };
        let (from, to) = (oldest.to_rfc3339(), newest.to_rfc3339());
        let what = match why {
            MissedWhy::Overloaded => format!(
                "{OVERLOADED}: {at_least}{count} tick(s) from {from} to {to} came due while this leader was busy with other due work and could not be started in time"
            ),
            _ => format!("{at_least}{count} tick(s) from {from} to {to} passed {cause}"),
        };
        let reason = match newer {
            Some((t, true)) => format!(
                "{what}; only the newest missed tick, {}, was caught up",
                t.to_rfc3339()
            ),
            Some((t, false)) => format!(
                "{what}; they were coalesced into the newer tick {}, which has its own entry",
                t.to_rfc3339()
            ),
            None if matches!(why, MissedWhy::Superseded | MissedWhy::Overloaded) => what,
            None => format!(
                "{what}, beyond the catch-up window of {}",
                humantime::format_duration(job.catchup)
            ),
        };
        self.metrics.missed(&job.name, count);
        if why == MissedWhy::Overloaded {
            self.metrics.overloaded(&job.name, count);
        }
        let mut rec = self.entry(
            term,
            job,
            newest,
            Trigger::Schedule,
            Outcome::Missed,
            reason.clone(),
        );
        tracing::warn!(
            job = %job.name, run_id = %rec.run_id, tick = %newest.to_rfc3339(),
            instance = %self.instance, term, missed = count, "ticks missed: {reason}"
        );
        rec.missed_ticks = Some(count);
        // A new term of this process resumes after these ticks only once
        // their entry is written: an entry refused because this term ended
        // leaves them to the next term, which records them itself.
        let up_to = self.missed_up_to.clone();
        let job_name = job.name.clone();
        self.record_in_background_then(rec, false, move || {
            let mut up_to = up_to.lock().expect("missed lock");
            let newest_known = up_to.entry(job_name).or_insert(newest);
            *newest_known = (*newest_known).max(newest);
        });
    }

    /// `job`'s last fired tick, `last`, is ahead of this clock: say so, and
    /// resume from this clock if the backend vouches for it, else from
    /// `last` (at most once). Returns the tick to resume after.
    async fn last_tick_ahead(
        &self,
        job: &Job,
        last: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> DateTime<Utc> {
        self.metrics.last_tick_ahead(&job.name);
        let ahead =
            humantime::format_duration((last - now).to_std().map(round_ms).unwrap_or_default());
        let (last_s, now_s) = (last.to_rfc3339(), now.to_rfc3339());
        match self.coord.resume_before(&job.name, last, now).await {
            Some(why) => {
                tracing::error!(
                    job = %job.name, last_tick = %last_s, now = %now_s, ahead = %ahead,
                    "the job's last fired tick is {ahead} ahead of this clock (a replica with a clock ahead fired it); {why}: resuming from this clock"
                );
                now
            }
            None => {
                tracing::error!(
                    job = %job.name, last_tick = %last_s, now = %now_s, ahead = %ahead,
                    "the job's last fired tick is {ahead} ahead of this clock (the clock went back, or was ahead when it fired); ticks up to it count as fired and do not fire again: firing of this job waits until {last_s}"
                );
                last
            }
        }
    }

    /// The wall clock went back by `back` since the loop's previous turn.
    fn clock_stepped_back(
        &self,
        back: chrono::Duration,
        expected: DateTime<Utc>,
        now: DateTime<Utc>,
        resumes: Option<DateTime<Utc>>,
    ) {
        self.metrics.clock_stepped_back();
        let back = humantime::format_duration(back.to_std().map(round_ms).unwrap_or_default());
        let until = resumes.map_or("no tick is pending".to_string(), |t| {
            let wait =
                humantime::format_duration((t - now).to_std().map(round_ms).unwrap_or_default());
            format!("firing waits until {} (in {wait})", t.to_rfc3339())
        });
        tracing::error!(
            back = %back, expected = %expected.to_rfc3339(), now = %now.to_rfc3339(),
            "the wall clock went back by {back} (it reads {} where {} was due): ticks already fired do not fire again, so {until}",
            now.to_rfc3339(), expected.to_rfc3339()
        );
    }

    /// A history entry written by the scheduler; `term` fences it, so a
    /// deposed leader cannot write it.
    fn entry(
        &self,
        term: u64,
        job: &Job,
        tick: DateTime<Utc>,
        trigger: Trigger,
        outcome: Outcome,
        reason: String,
    ) -> RunRecord {
        let mut rec = RunRecord::not_run(&job.name, tick, trigger, &self.instance, outcome, reason);
        rec.term = term;
        rec
    }

    /// A run was recorded `lost` (its supervisor is gone): its `on_failure`
    /// hook is ours to run, as nobody else is left to.
    fn after_lost(&self, rec: RunRecord) {
        // The newest config: the hook as it is now configured, none for a
        // job removed since.
        let config = self.config.borrow().clone();
        let Some(job) = config.jobs.get(&rec.job) else {
            return;
        };
        let Some(hook) = job.on_failure.clone() else {
            return;
        };
        let spec = RunSpec::new(
            job,
            rec.run_id.clone(),
            rec.tick,
            rec.trigger,
            self.coord.backend_spec(),
        );
        tokio::spawn(async move { crate::executor::run_hook(&hook, &spec, &rec).await });
    }

    /// History entries for ticks that did not run are written off the fire path.
    /// Retried for a while: these entries are the only trace of a tick
    /// that did not run, and etcd may be briefly away.
    /// This one for the entries of claimed ticks (`Coordinator::record_claimed`).
    fn record_in_background(&self, rec: RunRecord) {
        self.record_in_background_then(rec, true, || {});
    }

    /// [`Self::record_in_background`], calling `written` once the entry is.
    fn record_in_background_then(
        &self,
        rec: RunRecord,
        claimed: bool,
        written: impl FnOnce() + Send + 'static,
    ) {
        let coord = self.coord.clone();
        let span = record_span(&rec);
        tokio::spawn(async move {
            let mut delay = std::time::Duration::from_millis(100);
            let give_up = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
            let mut failures = 0u32;
            loop {
                let result = if claimed {
                    coord.record_claimed(&rec).await
                } else {
                    coord.record(&rec).await
                };
                match result {
                    Ok(true) => return written(),
                    Ok(false) => return,
                    // A local filesystem error (a full disk) is waited out
                    // however long it lasts: the entry is the tick's only
                    // trace. Anything else is given up after a while.
                    Err(e)
                        if matches!(e, CoordError::Io { .. })
                            || tokio::time::Instant::now() + delay < give_up =>
                    {
                        failures += 1;
                        if failures == 1 {
                            tracing::warn!(job = %rec.job, run_id = %rec.run_id, "could not record {} yet ({e}); retrying", rec.outcome);
                        }
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(std::time::Duration::from_secs(5));
                    }
                    Err(e) => {
                        tracing::error!(job = %rec.job, run_id = %rec.run_id, "could not record {}: {e}", rec.outcome);
                        return;
                    }
                }
            }
        }
        .instrument(span));
    }

    /// Let running jobs finish for up to `shutdown_grace`, then stop their
    /// supervisors. Returns whether a second stop request forced it.
    async fn drain(&self, stop: &mut watch::Receiver<u32>, running: &mut Running) -> bool {
        let shutdown_grace = self.config.borrow().scheduler.shutdown_grace;
        let grace = tokio::time::sleep(shutdown_grace);
        tokio::pin!(grace);
        let mut forced = *stop.borrow() >= 2;
        let mut terminated = false;
        // Draining is the loop turning too (`shutdown_grace` may be long).
        let mut beat = tokio::time::interval(MAX_SLEEP / 4);
        while !running.by_pid.is_empty() {
            if forced && !terminated {
                // SIGTERM starts the supervisor's stop; the SIGINT after it
                // tells it to skip the grace period and SIGKILL the group.
                signal_all(&running.by_pid, Signal::TERM);
                signal_all(&running.by_pid, Signal::INT);
                terminated = true;
            }
            tokio::select! {
                _ = running.reap_one() => {}
                _ = beat.tick() => self.metrics.beat(),
                () = &mut grace, if !terminated => {
                    tracing::warn!(running = running.by_pid.len(), "shutdown grace over: terminating running jobs");
                    for t in running.by_pid.values() {
                        tracing::warn!(job = %t.job, run_id = %t.run_id, "terminating");
                    }
                    signal_all(&running.by_pid, Signal::TERM);
                    terminated = true;
                }
                r = stop.changed(), if !forced => {
                    if r.is_err() || *stop.borrow() >= 2 {
                        tracing::warn!("second stop request: killing running jobs now");
                        forced = true;
                        terminated = false;
                    }
                }
            }
        }
        forced
    }
}

/// Ticks passed over: count, oldest, newest.
type Missed = (u64, DateTime<Utc>, DateTime<Utc>);

/// Missed ticks with why, to record once the job's claims are done.
type MissedEntry = (Missed, MissedWhy);

/// Ticks of a plan that came due after this leader began firing were missed
/// because it could not keep up, not because nothing was firing.
fn missed_why((_, oldest, _): Missed, began: DateTime<Utc>) -> MissedWhy {
    if oldest > began {
        MissedWhy::Overloaded
    } else {
        MissedWhy::Idle
    }
}

/// The clock may be this far off between turns (or a last tick ahead)
/// before it is reported: the same second that counts a tick on time.
fn chrono_tolerance() -> chrono::Duration {
    chrono::Duration::from_std(LATE_TOLERANCE).unwrap_or_default()
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// Pending ticks: (next tick, index into the scheduled jobs).
type Due = BinaryHeap<Reverse<(DateTime<Utc>, usize)>>;

/// The jobs that fire on their schedule, in a stable order for [`Due`].
fn scheduled(config: &Config) -> Vec<&Job> {
    config.jobs.values().filter(|j| j.enabled).collect()
}

/// The pending ticks after a reload from the jobs `old` to `new`. A job
/// whose schedule (and time zone) is unchanged keeps its pending tick; a
/// new, re-enabled or rescheduled job starts at its first tick after
/// `now`, so ticks of a new schedule that lie before the reload are
/// neither caught up nor recorded missed, and a tick already fired (all
/// are at most `now`) cannot come again.
fn reschedule(old: &[&Job], due: &Due, new: &[&Job], now: DateTime<Utc>) -> Due {
    let pending: HashMap<&str, (DateTime<Utc>, &Job)> = due
        .iter()
        .map(|Reverse((t, i))| (old[*i].name.as_str(), (*t, old[*i])))
        .collect();
    new.iter()
        .enumerate()
        .filter_map(|(i, job)| {
            let next = match pending.get(job.name.as_str()) {
                Some((t, was)) if was.schedule == job.schedule => Some(*t),
                _ => job.schedule.next_after(now),
            };
            next.map(|t| Reverse((t, i)))
        })
        .collect()
}

/// The next config sent to a reloadable scheduler; never, if none can come.
async fn next_config(rx: &mut watch::Receiver<Arc<Config>>) -> Arc<Config> {
    match rx.changed().await {
        Ok(()) => rx.borrow_and_update().clone(),
        Err(_) => std::future::pending().await,
    }
}

/// The next message of a channel the backend may not have.
async fn recv_from<T>(rx: &mut Option<tokio::sync::mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn signal_all(running: &HashMap<u32, Tracked>, sig: Signal) {
    for pid in running.keys() {
        if let Some(p) = Pid::from_raw(*pid as i32) {
            let _ = kill_process(p, sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn job(schedule: &str, catchup: &str) -> Job {
        let text = format!(
            "[jobs.j]\nschedule = \"{schedule}\"\ncatchup = \"{catchup}\"\ncommand = [\"true\"]\n"
        );
        let config = crate::config::load_str(std::path::Path::new("t.toml"), text.as_bytes())
            .expect("valid config");
        config.jobs["j"].clone()
    }

    fn at(s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::seconds(s.into())
    }

    #[test]
    fn an_on_time_tick_fires_as_scheduled() {
        let j = job("@every 10s", "1m");
        let plan = plan_due(&j, at(10), at(10) + chrono::Duration::milliseconds(3));
        assert_eq!(plan.fires, vec![(at(10), Trigger::Schedule)]);
        assert_eq!(plan.missed, None);
        assert_eq!(plan.next, Some(at(20)));
    }

    #[test]
    fn several_missed_ticks_coalesce_into_one_catchup_of_the_newest() {
        let j = job("@every 10s", "1m");
        let plan = plan_due(&j, at(10), at(45));
        assert_eq!(plan.fires, vec![(at(40), Trigger::Catchup)]);
        assert_eq!(plan.missed, Some((3, at(10), at(30))));
        assert_eq!(plan.next, Some(at(50)));
    }

    #[test]
    fn ticks_older_than_catchup_are_only_missed() {
        let j = job("@every 10s", "3s");
        let plan = plan_due(&j, at(10), at(45));
        assert_eq!(plan.fires, vec![]);
        assert_eq!(plan.missed, Some((4, at(10), at(40))));
        assert_eq!(plan.next, Some(at(50)));
    }

    #[test]
    fn catchup_zero_still_fires_a_tick_that_is_only_slightly_late() {
        let j = job("@every 10s", "0s");
        let plan = plan_due(&j, at(10), at(10) + chrono::Duration::milliseconds(400));
        assert_eq!(plan.fires, vec![(at(10), Trigger::Schedule)]);
        let plan = plan_due(&j, at(10), at(12));
        assert_eq!(plan.fires, vec![]);
        assert_eq!(plan.missed, Some((1, at(10), at(10))));
    }

    #[test]
    fn missed_ticks_before_an_on_time_tick_are_caught_up_once_then_it_fires() {
        let j = job("@every 10s", "1m");
        let plan = plan_due(&j, at(10), at(30));
        assert_eq!(
            plan.fires,
            vec![(at(20), Trigger::Catchup), (at(30), Trigger::Schedule)]
        );
        assert_eq!(plan.missed, Some((1, at(10), at(10))));
        let plan = plan_due(&j, at(20), at(30));
        assert_eq!(
            plan.fires,
            vec![(at(20), Trigger::Catchup), (at(30), Trigger::Schedule)]
        );
        assert_eq!(plan.missed, None);
    }

    #[test]
    fn a_reload_keeps_unchanged_ticks_and_starts_new_and_rescheduled_jobs_from_now() {
        let config = |text: &str| {
            crate::config::load_str(std::path::Path::new("t.toml"), text.as_bytes())
                .expect("valid config")
        };
        let old = config(
            "[jobs.same]\nschedule = \"@every 10s\"\ncommand = [\"true\"]\n\
             [jobs.moved]\nschedule = \"@every 10s\"\ncommand = [\"true\"]\n\
             [jobs.gone]\nschedule = \"@every 10s\"\ncommand = [\"true\"]\n",
        );
        let new = config(
            "[jobs.same]\nschedule = \"@every 10s\"\ncommand = [\"false\"]\n\
             [jobs.moved]\nschedule = \"@every 7s\"\ncommand = [\"true\"]\n\
             [jobs.added]\nschedule = \"@every 10s\"\ncommand = [\"true\"]\n\
             [jobs.off]\nschedule = \"@every 1s\"\nenabled = false\ncommand = [\"true\"]\n",
        );
        let (old_jobs, new_jobs) = (scheduled(&old), scheduled(&new));
        // `same` still has its tick at 20 pending though `now` is past 10:
        // it is kept, not recomputed.
        let due: Due = old_jobs
            .iter()
            .enumerate()
            .map(|(i, _)| Reverse((at(20), i)))
            .collect();
        let now = at(12);
        let rebuilt = reschedule(&old_jobs, &due, &new_jobs, now);
        let mut got: Vec<(&str, DateTime<Utc>)> = rebuilt
            .iter()
            .map(|Reverse((t, i))| (new_jobs[*i].name.as_str(), *t))
            .collect();
        got.sort();
        let seven = |t: DateTime<Utc>| new.jobs["moved"].schedule.next_after(t).unwrap();
        assert_eq!(
            got,
            vec![("added", at(20)), ("moved", seven(now)), ("same", at(20))]
        );
    }

    /// A backend whose last fired tick stays where it was (missed ticks do
    /// not move it) and whose first leadership ends right after the first
    /// `missed` entry is written, as when an overloaded leader misses a
    /// renewal and wins again.
    struct Flapping {
        last: DateTime<Utc>,
        terms: std::sync::atomic::AtomicU64,
        valid: std::sync::Mutex<Option<watch::Sender<bool>>>,
        records: std::sync::Mutex<Vec<RunRecord>>,
    }

    impl Coordinator for Flapping {
        async fn acquire_leadership(&self, _: &str) -> crate::coordination::Result<Leadership> {
            let term = self.terms.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            if term > 2 {
                std::future::pending::<()>().await;
            }
            let (tx, rx) = watch::channel(true);
            *self.valid.lock().unwrap() = Some(tx);
            Ok(Leadership::new(term, rx, None, Box::new(())))
        }
        async fn resign(&self, _: Leadership) {}
        async fn last_fired(&self, _: &str) -> crate::coordination::Result<Option<DateTime<Utc>>> {
            Ok(Some(self.last))
        }
        async fn claim(&self, _: &Leadership, _: ClaimRequest<'_>) -> Result<Claim, ClaimRejected> {
            Err(ClaimRejected::NotLeader)
        }
        async fn record(&self, record: &RunRecord) -> crate::coordination::Result<bool> {
            self.records.lock().unwrap().push(record.clone());
            if record.outcome == Outcome::Missed {
                if let Some(tx) = self.valid.lock().unwrap().take() {
                    let _ = tx.send(false);
                }
            }
            Ok(true)
        }
        async fn reap_lost(&self, _: &str) -> Vec<RunRecord> {
            Vec::new()
        }
        async fn finish_request(&self, _: &str) {}
        fn backend_spec(&self) -> crate::coordination::BackendSpec {
            crate::coordination::BackendSpec::Standalone {
                state_dir: "/nonexistent".into(),
                history_limit: 10,
            }
        }
        async fn shutdown(&self) {}
    }

    /// Run a job `@every 1s` last fired 10 s ago, with `catchup`, on a
    /// [`Flapping`] backend through two terms; the entries it wrote.
    async fn two_flapping_terms(catchup: &str) -> Vec<RunRecord> {
        let text = format!(
            "[jobs.j]\nschedule = \"@every 1s\"\ncatchup = \"{catchup}\"\ncommand = [\"true\"]\n"
        );
        let config = crate::config::load_str(std::path::Path::new("t.toml"), text.as_bytes())
            .expect("valid config");
        let coord = Arc::new(Flapping {
            last: Utc::now() - chrono::Duration::seconds(10),
            terms: Default::default(),
            valid: Default::default(),
            records: Default::default(),
        });
        let scheduler = Scheduler::new(Arc::new(config), coord.clone(), "t".into(), false);
        let (stop_tx, stop) = watch::channel(0u32);
        let stopper = async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while coord.terms.load(std::sync::atomic::Ordering::SeqCst) < 2 {
                assert!(tokio::time::Instant::now() < deadline, "no second term");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // A moment for the second term's entries, if any.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let _ = stop_tx.send(1);
        };
        let (ran, ()) = tokio::join!(scheduler.run(stop), stopper);
        ran.unwrap();
        let records = coord.records.lock().unwrap().clone();
        records
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ticks_recorded_missed_in_one_term_are_not_missed_again_in_the_next() {
        let records = two_flapping_terms("0s").await;
        let mut covered = std::collections::HashSet::new();
        for r in records.iter().filter(|r| r.outcome == Outcome::Missed) {
            for k in 0..r.missed_ticks.unwrap_or(1) as i64 {
                let tick = r.tick - chrono::Duration::seconds(k);
                assert!(
                    covered.insert(tick),
                    "tick {tick} missed twice: {records:#?}"
                );
            }
        }
        assert!(!covered.is_empty(), "nothing recorded missed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_missed_entry_announces_a_catch_up_only_if_it_started() {
        // Every claim is refused, so no catch-up runs.
        let records = two_flapping_terms("1m").await;
        let missed: Vec<&RunRecord> = records
            .iter()
            .filter(|r| r.outcome == Outcome::Missed)
            .collect();
        assert!(!missed.is_empty(), "nothing recorded missed");
        for r in missed {
            let reason = r.reason.as_deref().unwrap_or_default();
            assert!(!reason.contains("caught up"), "{reason}");
        }
    }

    #[test]
    fn a_long_outage_is_not_walked_tick_by_tick() {
        let j = job("@every 1s", "1m");
        let start = at(0) + chrono::Duration::seconds(1);
        let now = start + chrono::Duration::days(30);
        let t = std::time::Instant::now();
        let plan = plan_due(&j, start, now);
        assert!(t.elapsed() < Duration::from_secs(5));
        let second = chrono::Duration::seconds(1);
        assert_eq!(
            plan.fires,
            vec![(now - second, Trigger::Catchup), (now, Trigger::Schedule)]
        );
        let (count, oldest, newest) = plan.missed.unwrap();
        assert!(count >= MISSED_SCAN_LIMIT);
        assert_eq!(oldest, start);
        assert_eq!(newest, now - second * 2);
        assert_eq!(plan.next, Some(now + second));
    }
}
