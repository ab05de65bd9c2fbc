//! The scheduler core: a deadline loop that sleeps until the earliest due
//! tick across all jobs, claims it through the [`Coordinator`], and hands the
//! run to a supervisor process. It never knows which backend it runs on.

use crate::config::{Config, Job};
use crate::coordination::{
    Claim, ClaimRejected, ClaimRequest, CoordError, Coordinator, Leadership, Outcome, RunRecord,
    Trigger, TriggerRequest, Turn,
};
use crate::executor::{retry_backoff, RunSpec, Supervisors, WaitingSupervisors};
pub use crate::model::{LATE_TOLERANCE, MAX_SLEEP, OVERLOADED};

use crate::executor::run_span;
use crate::notify::Notifier;
use crate::observe::log::record_span;
use crate::observe::Metrics;
use chrono::{DateTime, Utc};
use futures_util::stream::StreamExt;
use rustix::process::Signal;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::Instrument;

mod after;
mod fire;
mod fire_loop;
mod missed;
mod placed;
mod plan;
mod services;
mod state;
mod timer;
pub use plan::*;
use state::*;

/// The scheduler of one instance.
pub struct Scheduler<C: Coordinator> {
    /// The config in use; a reload sends a new one (see `crate::reload`).
    config: watch::Receiver<Arc<Config>>,
    coord: Arc<C>,
    instance: String,
    log_json: bool,
    metrics: Arc<Metrics>,
    /// Told of every entry this scheduler writes or sees a run end with.
    notifier: Arc<Notifier>,
    /// Per job, the newest tick this process recorded as missed. Missed
    /// ticks do not advance the backend's last fired tick, so a new term
    /// of this process resumes after these rather than count them again.
    missed_up_to: Arc<std::sync::Mutex<HashMap<String, DateTime<Utc>>>>,
    /// Missed entries still being written: a new term waits for them (a
    /// moment) before it reads `missed_up_to`, or it would record their
    /// ticks missed a second time.
    missed_pending: Arc<std::sync::atomic::AtomicUsize>,
    /// Pauses that ended by their `until` whose entry this process wrote.
    recorded_pauses: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Supervisors started ahead of the next tick, waiting for its runs.
    waiting: WaitingSupervisors,
    /// Runs placed here lately (see `placed`).
    placed_lately: std::sync::Mutex<placed::Recent>,
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
        let waiting = WaitingSupervisors::new(log_json, &coord.backend_spec());
        coord.retry_lost_with(placed::lost_retry(config.clone()));
        Scheduler {
            config,
            coord,
            instance,
            log_json,
            metrics: Arc::default(),
            notifier: Notifier::off(),
            missed_up_to: Default::default(),
            missed_pending: Default::default(),
            recorded_pauses: Default::default(),
            waiting,
            placed_lately: Default::default(),
        }
    }

    /// Record into `metrics` (by default a registry nobody reads).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Send `[notify]`'s webhooks through `notifier` (by default nobody is told).
    pub fn with_notifier(mut self, notifier: Arc<Notifier>) -> Self {
        self.notifier = notifier;
        self
    }

    /// Run until `stop` counts a stop request. Returns whether the stop was
    /// forced (a second request), in which case runs were killed at once.
    pub async fn run(&self, mut stop: watch::Receiver<u32>) -> anyhow::Result<bool> {
        let mut running = Supervisors::new(self.metrics.clone(), self.notifier.clone());
        // Runs the leader places here, leader or not.
        let mut assigned = self.coord.assignments(&self.instance);
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
                    Some(a) = fire_loop::recv_from(&mut assigned) => self.run_assigned(a, &mut assigned, &mut running).await,
                    reaped = running.reap_one() => self.reaped(reaped, None).await,
                }
            };
            let Some(mut leadership) = won else {
                break;
            };
            self.metrics.leading(leadership.term);
            tracing::info!(instance = %self.instance, term = leadership.term, "leading: firing jobs");
            match self
                .fire_loop(&mut leadership, &mut stop, &mut running, &mut assigned)
                .await?
            {
                LoopEnd::Stop => {
                    // Leaving first, so the next leader places nothing here.
                    self.coord.leave().await;
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
                    self.waiting.clear();
                }
            }
        }
        // No more placements here; the runs here may finish.
        self.coord.leave().await;
        tracing::info!(
            running = running.len(),
            "stopping: no new fires; waiting for running jobs"
        );
        self.waiting.clear();
        let forced = self.drain(&mut stop, &mut running, &mut assigned).await;
        self.coord.shutdown().await;
        Ok(forced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What every mock backend below answers alike: no lost runs, no
    /// requests, no fan-in, a standalone spec nobody opens.
    macro_rules! mock_backend_rest {
        () => {
            async fn reap_lost(&self, _: &str) -> Vec<RunRecord> {
                Vec::new()
            }
            async fn fan_in(
                &self,
                _: &Leadership,
                _: &str,
                _: &[String],
            ) -> crate::coordination::Result<bool> {
                Ok(false)
            }
            async fn finish_request(&self, _: &str) {}
            fn backend_spec(&self) -> crate::coordination::BackendSpec {
                crate::coordination::BackendSpec::Standalone {
                    state_dir: "/nonexistent".into(),
                    history_limit: 10,
                }
            }
            async fn shutdown(&self) {}
        };
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
        mock_backend_rest!();
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
                let tick = r.key.tick - chrono::Duration::seconds(k);
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

    /// A backend whose first `undecided` claims fail undecided (as ones
    /// whose answer was lost) and whose later claims are skips; the ticks
    /// claimed, in order.
    struct FirstClaimUndecided {
        last: DateTime<Utc>,
        undecided: usize,
        /// Each claim's tick, and when it came.
        claimed: std::sync::Mutex<Vec<(DateTime<Utc>, DateTime<Utc>)>>,
    }

    impl Coordinator for FirstClaimUndecided {
        async fn acquire_leadership(&self, _: &str) -> crate::coordination::Result<Leadership> {
            let (_tx, rx) = watch::channel(true);
            std::mem::forget(_tx);
            Ok(Leadership::new(1, rx, None, Box::new(())))
        }
        async fn resign(&self, _: Leadership) {}
        async fn last_fired(&self, _: &str) -> crate::coordination::Result<Option<DateTime<Utc>>> {
            Ok(Some(self.last))
        }
        async fn claim(
            &self,
            _: &Leadership,
            req: ClaimRequest<'_>,
        ) -> Result<Claim, ClaimRejected> {
            let mut claimed = self.claimed.lock().unwrap();
            claimed.push((req.tick, Utc::now()));
            if claimed.len() <= self.undecided {
                return Err(ClaimRejected::Backend(CoordError::Etcd(
                    "claim: connection reset".into(),
                )));
            }
            Err(ClaimRejected::StillRunning(None))
        }
        async fn record(&self, _: &RunRecord) -> crate::coordination::Result<bool> {
            Ok(true)
        }
        mock_backend_rest!();
    }

    /// Run a job `@every 1s` last fired 10 s ago (so its first plan holds a
    /// catch-up and an on-time tick) on a backend whose first `undecided`
    /// claims fail undecided; the ticks claimed, in order, once there are
    /// `claims` of them. All within one second of the wall clock, so that
    /// no newer tick comes due meanwhile (the job's waiting ticks would be
    /// coalesced, as they should): a run that strays over a second, on a
    /// slow machine, is tried again.
    async fn claims_after_undecided(undecided: usize, claims: usize) -> Vec<DateTime<Utc>> {
        let text = "[jobs.j]\nschedule = \"@every 1s\"\ncatchup = \"1m\"\ncommand = [\"true\"]\n";
        let config = Arc::new(
            crate::config::load_str(std::path::Path::new("t.toml"), text.as_bytes())
                .expect("valid config"),
        );
        for _ in 0..5 {
            // Start just after a second begins.
            let into = Utc::now().timestamp_subsec_millis() as u64;
            tokio::time::sleep(Duration::from_millis((1_020 - into) % 1_000)).await;
            let coord = Arc::new(FirstClaimUndecided {
                last: Utc::now() - chrono::Duration::seconds(10),
                undecided,
                claimed: Default::default(),
            });
            let scheduler = Scheduler::new(config.clone(), coord.clone(), "t".into(), false);
            let (stop_tx, stop) = watch::channel(0u32);
            let stopper = async {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                while coord.claimed.lock().unwrap().len() < claims {
                    assert!(tokio::time::Instant::now() < deadline, "too few claims");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let _ = stop_tx.send(1);
            };
            let (ran, ()) = tokio::join!(scheduler.run(stop), stopper);
            ran.unwrap();
            let claimed = coord.claimed.lock().unwrap()[..claims].to_vec();
            let second = |at: DateTime<Utc>| at.timestamp();
            if claimed
                .iter()
                .all(|(_, at)| second(*at) == second(claimed[0].1))
            {
                return claimed.into_iter().map(|(tick, _)| tick).collect();
            }
        }
        panic!("five runs in a row strayed over a second");
    }

    /// A catch-up claim that fails undecided may yet have gone through;
    /// the on-time tick planned with it must not be claimed before the
    /// catch-up is retried, or the retry finds its own tick taken.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_undecided_claim_is_retried_before_a_later_tick_of_its_job_is_claimed() {
        let claimed = claims_after_undecided(1, 3).await;
        assert_eq!(
            claimed[1], claimed[0],
            "a later tick was claimed before the undecided one was retried: {claimed:?}"
        );
        assert!(
            claimed.windows(2).all(|w| w[0] <= w[1]),
            "claims out of tick order: {claimed:?}"
        );
    }

    /// The same when the retry fails undecided too: the later tick waits
    /// for the next retry, not only for the first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retry_that_fails_undecided_again_still_comes_before_later_ticks() {
        let claimed = claims_after_undecided(2, 4).await;
        assert_eq!(
            &claimed[..3],
            &[claimed[0]; 3],
            "a later tick was claimed between two retries of the undecided one: {claimed:?}"
        );
        assert!(
            claimed.windows(2).all(|w| w[0] <= w[1]),
            "claims out of tick order: {claimed:?}"
        );
    }

    /// A backend that answers every claim of job `ended` with "the claim
    /// went through as a run that ended unseen" and every claim of job
    /// `skipped` with a skip; the entries written.
    #[derive(Default)]
    struct EndedOrSkipped {
        records: std::sync::Mutex<Vec<RunRecord>>,
    }

    impl Coordinator for EndedOrSkipped {
        async fn acquire_leadership(&self, _: &str) -> crate::coordination::Result<Leadership> {
            let (tx, rx) = watch::channel(true);
            std::mem::forget(tx);
            Ok(Leadership::new(1, rx, None, Box::new(())))
        }
        async fn resign(&self, _: Leadership) {}
        async fn last_fired(&self, _: &str) -> crate::coordination::Result<Option<DateTime<Utc>>> {
            Ok(None)
        }
        async fn claim(
            &self,
            _: &Leadership,
            req: ClaimRequest<'_>,
        ) -> Result<Claim, ClaimRejected> {
            match req.job {
                "ended" => Err(ClaimRejected::Ended("0190-run".into())),
                _ => Err(ClaimRejected::StillRunning(None)),
            }
        }
        /// As the etcd backend does: the skip's claim wrote an entry.
        fn claimed_skip(&self, job: &str, tick: DateTime<Utc>) -> Option<String> {
            Some(format!("claimed-{job}-{}", tick.timestamp()))
        }
        async fn record(&self, record: &RunRecord) -> crate::coordination::Result<bool> {
            self.records.lock().unwrap().push(record.clone());
            Ok(true)
        }
        mock_backend_rest!();
    }

    /// README "A transaction whose answer was lost": a run whose read-back
    /// came after its marker expired is recorded `lost` (by the backend)
    /// and nothing else: the scheduler writes no entry of its own for the
    /// tick, where a skip gets one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_claim_that_ended_unseen_gets_no_entry_from_the_scheduler() {
        let text = "[jobs.ended]\nschedule = \"@every 1s\"\ncommand = [\"true\"]\n\n\
                    [jobs.skipped]\nschedule = \"@every 1s\"\ncommand = [\"true\"]\n";
        let config = crate::config::load_str(std::path::Path::new("t.toml"), text.as_bytes())
            .expect("valid config");
        let coord = Arc::new(EndedOrSkipped::default());
        let scheduler = Scheduler::new(Arc::new(config), coord.clone(), "t".into(), false);
        let (stop_tx, stop) = watch::channel(0u32);
        let skips = || {
            coord
                .records
                .lock()
                .unwrap()
                .iter()
                .filter(|r| r.key.job == "skipped" && r.outcome == Outcome::Skipped)
                .count()
        };
        let stopper = async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            // The skips of the tick after the first, written like any
            // entry of the other job would be.
            while skips() < 2 {
                assert!(tokio::time::Instant::now() < deadline, "no skips recorded");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = stop_tx.send(1);
        };
        let (ran, ()) = tokio::join!(scheduler.run(stop), stopper);
        ran.unwrap();
        let records = coord.records.lock().unwrap().clone();
        let of_ended: Vec<&RunRecord> = records.iter().filter(|r| r.key.job == "ended").collect();
        assert!(
            of_ended.is_empty(),
            "entries for ticks that ended unseen: {of_ended:#?}"
        );
        // A skip's entry goes under the id of the entry its claim wrote, so
        // that it replaces that one.
        for r in records.iter().filter(|r| r.key.job == "skipped") {
            assert_eq!(
                r.key.run_id,
                format!("claimed-skipped-{}", r.key.tick.timestamp()),
                "{r:#?}"
            );
        }
    }
}
