//! The scheduler core: a deadline loop that sleeps until the earliest due
//! tick across all jobs, claims it through the [`Coordinator`], and hands the
//! run to a supervisor process. It never knows which backend it runs on.

use crate::config::{Config, Job, Overlap};
use crate::coordination::standalone::new_run_id;
use crate::coordination::{
    ClaimRejected, ClaimRequest, Coordinator, Leadership, Outcome, RunRecord, Trigger,
};
use crate::executor::{spawn_supervisor, RunSpec};
use chrono::{DateTime, Utc};
use rustix::process::{kill_process, Pid, Signal};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A tick fired at most this late still counts as on time (trigger
/// `schedule`); a later one is missed and only fires within `catchup`.
pub const LATE_TOLERANCE: Duration = Duration::from_secs(1);
/// Upper bound on one sleep, so a wall-clock jump or a suspended machine is
/// noticed within this long.
pub const MAX_SLEEP: Duration = Duration::from_secs(60);
/// Missed ticks counted one by one before the count is reported as a bound.
const MISSED_SCAN_LIMIT: u64 = 10_000;

/// How supervisors are told where to record (backend specifics the core
/// passes through without interpreting).
#[derive(Debug, Clone)]
pub struct SupervisorSettings {
    pub state_dir: PathBuf,
    pub history_limit: usize,
    pub log_json: bool,
}

/// What to do with the ticks of one job that are due now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuePlan {
    /// The tick to fire, and as what.
    pub fire: Option<(DateTime<Utc>, Trigger)>,
    /// Ticks passed over without a run: count, oldest, newest.
    pub missed: Option<(u64, DateTime<Utc>, DateTime<Utc>)>,
    /// The job's next tick after these.
    pub next: Option<DateTime<Utc>>,
}

/// Decide what to do when `first_due` (and maybe later ticks) of `job` are
/// due at `now`: several due ticks coalesce into one fire of the newest; a
/// tick late by more than [`LATE_TOLERANCE`] fires as a catch-up only
/// within the job's `catchup` window; everything else is missed.
pub fn plan_due(job: &Job, first_due: DateTime<Utc>, now: DateTime<Utc>) -> DuePlan {
    let mut latest = first_due;
    let mut previous = None;
    let mut count: u64 = 1;
    while let Some(n) = job.schedule.next_after(latest).filter(|n| *n <= now) {
        if count >= MISSED_SCAN_LIMIT {
            // A long outage: jump to the last tick at or before `now` instead
            // of walking every tick in between.
            let window = chrono::Duration::from_std(job.catchup + LATE_TOLERANCE)
                .unwrap_or(chrono::Duration::zero());
            let mut t = job
                .schedule
                .next_after(now - window - chrono::Duration::seconds(1));
            while let Some(tt) = t.filter(|tt| *tt <= now) {
                previous = Some(latest);
                latest = tt;
                t = job.schedule.next_after(tt);
            }
            count += 1;
            break;
        }
        previous = Some(latest);
        latest = n;
        count += 1;
    }
    let late = (now - latest).to_std().unwrap_or_default();
    let fire = if late <= LATE_TOLERANCE {
        Some((latest, Trigger::Schedule))
    } else if late <= job.catchup {
        Some((latest, Trigger::Catchup))
    } else {
        None
    };
    let missed = match (&fire, previous) {
        (Some(_), None) => None,
        (Some(_), Some(prev)) => Some((count - 1, first_due, prev)),
        (None, _) => Some((count, first_due, latest)),
    };
    DuePlan {
        fire,
        missed,
        next: job.schedule.next_after(latest),
    }
}

/// The scheduler of one instance.
pub struct Scheduler<C: Coordinator> {
    config: Arc<Config>,
    coord: Arc<C>,
    instance: String,
    supervisors: SupervisorSettings,
}

/// A supervisor this scheduler started and has not yet reaped.
struct Tracked {
    job: String,
    run_id: String,
}

impl<C: Coordinator> Scheduler<C> {
    pub fn new(
        config: Arc<Config>,
        coord: Arc<C>,
        instance: String,
        supervisors: SupervisorSettings,
    ) -> Self {
        Scheduler {
            config,
            coord,
            instance,
            supervisors,
        }
    }

    /// Run until `stop` counts a stop request. Returns whether the stop was
    /// forced (a second request), in which case runs were killed at once.
    pub async fn run(&self, mut stop: watch::Receiver<u32>) -> anyhow::Result<bool> {
        tracing::info!(instance = %self.instance, jobs = self.config.jobs.len(), "waiting for leadership");
        let leadership = tokio::select! {
            l = self.coord.acquire_leadership(&self.instance) => l?,
            _ = stop.changed() => return Ok(false),
        };
        tracing::info!(instance = %self.instance, term = leadership.term, "leading: firing jobs");
        let mut running: HashMap<u32, Tracked> = HashMap::new();
        let mut reaper: JoinSet<u32> = JoinSet::new();
        self.fire_loop(&leadership, &mut stop, &mut running, &mut reaper)
            .await?;
        // Resign at once so a standby can take over while our runs finish;
        // their supervisors keep holding the run locks.
        drop(leadership);
        tracing::info!(
            running = running.len(),
            "stopping: no new fires; waiting for running jobs"
        );
        Ok(self.drain(&mut stop, &mut running, &mut reaper).await)
    }

    async fn fire_loop(
        &self,
        leadership: &Leadership,
        stop: &mut watch::Receiver<u32>,
        running: &mut HashMap<u32, Tracked>,
        reaper: &mut JoinSet<u32>,
    ) -> anyhow::Result<()> {
        let jobs: Vec<&Job> = self.config.jobs.values().filter(|j| j.enabled).collect();
        let mut due: BinaryHeap<Reverse<(DateTime<Utc>, usize)>> = BinaryHeap::new();
        let now = Utc::now();
        for (i, job) in jobs.iter().enumerate() {
            // Resume after the last fired tick so ticks missed while no
            // scheduler ran are caught up (or recorded as missed).
            let from = match self.coord.last_fired(&job.name).await? {
                Some(last) => last,
                None => now,
            };
            if let Some(t) = job.schedule.next_after(from) {
                due.push(Reverse((t, i)));
            }
        }
        let mut skipped: HashMap<&str, u64> = HashMap::new();
        loop {
            let wait = match due.peek() {
                Some(Reverse((t, _))) => (*t - Utc::now())
                    .to_std()
                    .unwrap_or_default()
                    .min(MAX_SLEEP),
                None => MAX_SLEEP,
            };
            tokio::select! {
                biased;
                _ = stop.changed() => return Ok(()),
                Some(Ok(pid)) = reaper.join_next() => { running.remove(&pid); continue; }
                () = tokio::time::sleep(wait) => {}
            }
            let now = Utc::now();
            while let Some(Reverse((tick, i))) = due.peek().copied() {
                if tick > now {
                    break;
                }
                due.pop();
                let job = jobs[i];
                let plan = plan_due(job, tick, now);
                if let Some((count, oldest, newest)) = plan.missed {
                    self.record_missed(job, count, oldest, newest, plan.fire.map(|f| f.0));
                }
                if let Some((tick, trigger)) = plan.fire {
                    if let Some((mut child, run_id)) = self
                        .fire(leadership, job, tick, trigger, &mut skipped)
                        .await
                    {
                        let pid = child.id().unwrap_or(0);
                        let job = job.name.clone();
                        running.insert(pid, Tracked { job, run_id });
                        reaper.spawn(async move {
                            let _ = child.wait().await;
                            pid
                        });
                    }
                }
                if let Some(next) = plan.next {
                    due.push(Reverse((next, i)));
                }
            }
        }
    }

    /// Claim one fire and start its supervisor. Returns the supervisor and
    /// the run id.
    async fn fire<'j>(
        &self,
        leadership: &Leadership,
        job: &'j Job,
        tick: DateTime<Utc>,
        trigger: Trigger,
        skipped: &mut HashMap<&'j str, u64>,
    ) -> Option<(tokio::process::Child, String)> {
        let req = ClaimRequest {
            job: &job.name,
            tick,
            trigger,
            exclusive: job.overlap == Overlap::Skip,
            advances_schedule: true,
        };
        let claim = match self.coord.claim(leadership, req).await {
            Ok(claim) => claim,
            Err(ClaimRejected::StillRunning(active)) => {
                let total = skipped.entry(job.name.as_str()).or_default();
                *total += 1;
                let reason = ClaimRejected::StillRunning(active).to_string();
                tracing::warn!(job = %job.name, tick = %tick.to_rfc3339(), skipped_total = *total, "tick skipped: {reason}");
                self.record_in_background(self.entry(job, tick, trigger, Outcome::Skipped, reason));
                return None;
            }
            Err(ClaimRejected::AlreadyFired(t)) => {
                tracing::debug!(job = %job.name, tick = %t.to_rfc3339(), "tick already fired");
                return None;
            }
            Err(e) => {
                tracing::error!(job = %job.name, tick = %tick.to_rfc3339(), "claim failed: {e}");
                return None;
            }
        };
        let mut spec = RunSpec::new(job, claim.run_id.clone(), tick, trigger);
        spec.instance = self.instance.clone();
        spec.term = claim.term;
        spec.state_dir = self.supervisors.state_dir.clone();
        spec.history_limit = self.supervisors.history_limit;
        spec.log_json = self.supervisors.log_json;
        match spawn_supervisor(spec, claim.hold, false) {
            Ok(child) => {
                let pid = child.id().unwrap_or(0);
                tracing::debug!(job = %job.name, run_id = %claim.run_id, supervisor_pid = pid, "fired");
                Some((child, claim.run_id))
            }
            Err(e) => {
                let mut rec = self.entry(
                    job,
                    tick,
                    trigger,
                    Outcome::StartFailed,
                    format!("could not start its supervisor: {e}"),
                );
                rec.run_id = claim.run_id;
                tracing::error!(job = %job.name, "could not start a supervisor: {e}");
                self.record_in_background(rec);
                None
            }
        }
    }

    fn record_missed(
        &self,
        job: &Job,
        count: u64,
        oldest: DateTime<Utc>,
        newest: DateTime<Utc>,
        fired: Option<DateTime<Utc>>,
    ) {
        let at_least = if count >= MISSED_SCAN_LIMIT {
            "at least "
        } else {
            ""
        };
        let reason = match fired {
            Some(t) => format!(
                "{at_least}{count} tick(s) from {} to {} passed while nothing was firing; coalesced into the run for {}",
                oldest.to_rfc3339(), newest.to_rfc3339(), t.to_rfc3339()
            ),
            None => format!(
                "{at_least}{count} tick(s) from {} to {} passed while nothing was firing, beyond the catch-up window of {}",
                oldest.to_rfc3339(), newest.to_rfc3339(), humantime::format_duration(job.catchup)
            ),
        };
        tracing::warn!(job = %job.name, missed = count, "ticks missed: {reason}");
        let mut rec = self.entry(job, newest, Trigger::Schedule, Outcome::Missed, reason);
        rec.missed_ticks = Some(count);
        self.record_in_background(rec);
    }

    fn entry(
        &self,
        job: &Job,
        tick: DateTime<Utc>,
        trigger: Trigger,
        outcome: Outcome,
        reason: String,
    ) -> RunRecord {
        let now = Utc::now();
        RunRecord {
            run_id: new_run_id(),
            job: job.name.clone(),
            tick,
            trigger,
            instance: self.instance.clone(),
            term: 0,
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
        }
    }

    /// History entries for ticks that did not run are written off the fire path.
    fn record_in_background(&self, rec: RunRecord) {
        let coord = self.coord.clone();
        tokio::spawn(async move {
            if let Err(e) = coord.record(&rec).await {
                tracing::error!(job = %rec.job, "could not record {}: {e}", rec.outcome);
            }
        });
    }

    /// Let running jobs finish for up to `shutdown_grace`, then stop their
    /// supervisors. Returns whether a second stop request forced it.
    async fn drain(
        &self,
        stop: &mut watch::Receiver<u32>,
        running: &mut HashMap<u32, Tracked>,
        reaper: &mut JoinSet<u32>,
    ) -> bool {
        let grace = tokio::time::sleep(self.config.scheduler.shutdown_grace);
        tokio::pin!(grace);
        let mut forced = *stop.borrow() >= 2;
        let mut terminated = false;
        while !running.is_empty() {
            if forced && !terminated {
                signal_all(running, Signal::TERM);
                signal_all(running, Signal::INT);
                terminated = true;
            }
            tokio::select! {
                Some(Ok(pid)) = reaper.join_next() => { running.remove(&pid); }
                () = &mut grace, if !terminated => {
                    tracing::warn!(running = running.len(), "shutdown grace over: terminating running jobs");
                    for t in running.values() {
                        tracing::warn!(job = %t.job, run_id = %t.run_id, "terminating");
                    }
                    signal_all(running, Signal::TERM);
                    terminated = true;
                }
                r = stop.changed(), if !forced => {
                    if r.is_err() || *stop.borrow() >= 2 {
                        tracing::warn!("second stop request: killing running jobs now");
                        forced = true;
                        terminated = false;
                    }
                }
                else => break,
            }
        }
        forced
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
        assert_eq!(plan.fire, Some((at(10), Trigger::Schedule)));
        assert_eq!(plan.missed, None);
        assert_eq!(plan.next, Some(at(20)));
    }

    #[test]
    fn several_missed_ticks_coalesce_into_one_catchup_of_the_newest() {
        let j = job("@every 10s", "1m");
        let plan = plan_due(&j, at(10), at(45));
        assert_eq!(plan.fire, Some((at(40), Trigger::Catchup)));
        assert_eq!(plan.missed, Some((3, at(10), at(30))));
        assert_eq!(plan.next, Some(at(50)));
    }

    #[test]
    fn ticks_older_than_catchup_are_only_missed() {
        let j = job("@every 10s", "3s");
        let plan = plan_due(&j, at(10), at(45));
        assert_eq!(plan.fire, None);
        assert_eq!(plan.missed, Some((4, at(10), at(40))));
        assert_eq!(plan.next, Some(at(50)));
    }

    #[test]
    fn catchup_zero_still_fires_a_tick_that_is_only_slightly_late() {
        let j = job("@every 10s", "0s");
        let plan = plan_due(&j, at(10), at(10) + chrono::Duration::milliseconds(400));
        assert_eq!(plan.fire, Some((at(10), Trigger::Schedule)));
        let plan = plan_due(&j, at(10), at(12));
        assert_eq!(plan.fire, None);
    }

    #[test]
    fn an_on_time_newest_tick_covers_the_missed_ones_before_it() {
        let j = job("@every 10s", "1m");
        let plan = plan_due(&j, at(10), at(30));
        assert_eq!(plan.fire, Some((at(30), Trigger::Schedule)));
        assert_eq!(plan.missed, Some((2, at(10), at(20))));
    }

    #[test]
    fn a_long_outage_is_not_walked_tick_by_tick() {
        let j = job("@every 1s", "1m");
        let start = at(0) + chrono::Duration::seconds(1);
        let now = start + chrono::Duration::days(30);
        let t = std::time::Instant::now();
        let plan = plan_due(&j, start, now);
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(plan.fire, Some((now, Trigger::Schedule)));
        let (count, oldest, _) = plan.missed.unwrap();
        assert!(count >= MISSED_SCAN_LIMIT);
        assert_eq!(oldest, start);
        assert_eq!(plan.next, Some(now + chrono::Duration::seconds(1)));
    }
}
