//! A member's side of placement: runs the leader placed on this instance
//! (`run_on`), taken over and started here; and a run lost on a member,
//! retried on another.

use super::*;
use crate::coordination::{Assignment, Hold, LostRetry, Seat, Where};

/// Assignments taken over together, at most (as many claims go out in one
/// transaction).
const MAX_TAKEN_AT_ONCE: usize = 100;

/// Placed runs taken within this window size the pool of supervisors kept
/// waiting for the next ones.
const RECENT: std::time::Duration = std::time::Duration::from_secs(2);

/// The placed runs this instance took lately, to keep as many supervisors
/// ready for the next ones.
#[derive(Default)]
pub(super) struct Recent(std::collections::VecDeque<tokio::time::Instant>);

impl Recent {
    fn took(&mut self) -> usize {
        let now = tokio::time::Instant::now();
        while self.0.front().is_some_and(|t| now - *t > RECENT) {
            self.0.pop_front();
        }
        self.0.push_back(now);
        self.0.len()
    }
}

impl<C: Coordinator> Scheduler<C> {
    /// Take `first` over, with every assignment already waiting behind it
    /// (the runs of one tick come together), all at once, and start their
    /// supervisors here.
    pub(super) async fn run_assigned(
        &self,
        first: Assignment,
        more: &mut Option<tokio::sync::mpsc::Receiver<Assignment>>,
        running: &mut Supervisors,
    ) {
        let mut batch = vec![first];
        if let Some(rx) = more {
            while batch.len() < MAX_TAKEN_AT_ONCE {
                match rx.try_recv() {
                    Ok(a) => batch.push(a),
                    Err(_) => break,
                }
            }
        }
        // Listed again after a broken watch: already ours.
        batch.retain(|a| !running.tracks(&a.key.run_id));
        // Each starts as soon as its own take-over is done.
        let mut taking: futures_util::stream::FuturesUnordered<_> = batch
            .into_iter()
            .map(|a| async move {
                let taken = self.coord.take_assignment(&a).await;
                (a, taken)
            })
            .collect();
        while let Some((a, taken)) = taking.next().await {
            match taken {
                Ok(Some(hold)) => self.start_assigned(a, hold, running).await,
                Ok(None) => {
                    tracing::debug!(job = %a.key.job, run_id = %a.key.run_id, "placed run already taken over, or its lease is gone")
                }
                Err(e) => {
                    tracing::warn!(job = %a.key.job, run_id = %a.key.run_id, "could not take over a run placed here (its lease runs out and the leader records it lost): {e}")
                }
            }
        }
    }

    /// Start the supervisor of `a`, taken over with `hold`. Whatever goes
    /// wrong before the start is recorded under the run's id, which ends
    /// its marker; a run never taken over is recorded `lost` by the leader.
    async fn start_assigned(&self, a: Assignment, mut hold: Hold, running: &mut Supervisors) {
        let config = self.config.borrow().clone();
        let refused = |reason: String| {
            let mut rec = RunRecord::not_run(a.key.clone(), Outcome::StartFailed, reason);
            rec.upstream = a.upstream.clone();
            rec
        };
        let Some(job) = config.jobs.get(&a.key.job) else {
            let rec = refused(format!(
                "not started: member {} has no job named \"{}\" in its config",
                self.instance, a.key.job
            ));
            tracing::error!(job = %a.key.job, run_id = %a.key.run_id, "a run placed here is of a job this member's config does not have");
            self.record_placed(rec).await;
            return;
        };
        if self.coord.too_late_to_start(&hold).is_some() {
            self.coord.refresh_hold(&mut hold).await;
        }
        if let Some(why) = self.coord.too_late_to_start(&hold) {
            let mut rec = refused(format!(
                "{OVERLOADED}: member {} could not start the run placed on it in time ({why}); it was not started",
                self.instance
            ));
            rec.outcome = Outcome::Missed;
            rec.missed_ticks = Some(1);
            self.record_placed(rec).await;
            return;
        }
        let mut spec = RunSpec::new(
            job,
            a.key.run_id.clone(),
            a.key.tick,
            a.key.trigger,
            self.coord.backend_spec(),
        );
        spec.key = a.key.clone();
        spec.upstream = a.upstream.clone();
        spec.turn = a.turn.clone();
        spec.group = a.group.clone();
        spec.params = a.params.clone();
        spec.log_json = self.log_json;
        spec.first_attempt = a.first_attempt.unwrap_or(1);
        if matches!(a.key.trigger, Trigger::Schedule | Trigger::Catchup) {
            spec.delay = job.jitter_for(a.key.tick);
        }
        let seat = a
            .group
            .as_ref()
            .and_then(|g| g.index)
            .map(|index| Seat { index, lock: None });
        let span = run_span(&spec);
        match self.waiting.start(spec.clone(), hold, seat) {
            Ok(child) => {
                let pid = child.id().unwrap_or(0);
                span.in_scope(|| tracing::debug!(supervisor_pid = pid, placed_by = %a.leader, "started a run placed here"));
                self.metrics.fired(&job.name, a.key.trigger);
                running.track(child, &spec);
                let ready = self.placed_lately.lock().expect("recent lock").took();
                self.waiting.prepare(ready);
            }
            Err(e) => {
                tracing::error!(job = %job.name, "could not start a supervisor: {e}");
                self.record_placed(refused(format!("could not start its supervisor: {e}")))
                    .await;
            }
        }
    }

    async fn record_placed(&self, rec: RunRecord) {
        match self.coord.record_claimed(&rec).await {
            Ok(true) => self.notifier.entry(&rec),
            Ok(false) => {}
            Err(e) => {
                tracing::error!(job = %rec.key.job, run_id = %rec.key.run_id, "could not record the {} entry: {e}", rec.outcome)
            }
        }
    }
}

/// The retry of a placed job's run recorded `lost` with retries left, from
/// the newest config: its next attempt as a request that avoids the lost
/// member (the leader writes it with the `lost` record and answers it as
/// any other, so it is claimed once).
pub(super) fn lost_retry(config: watch::Receiver<Arc<Config>>) -> LostRetry {
    Arc::new(move |rec: &RunRecord| {
        let config = config.borrow().clone();
        let job = config.jobs.get(&rec.key.job)?;
        if job.run_on == crate::config::RunOn::Leader || rec.outcome != Outcome::Lost {
            return None;
        }
        let attempt = rec.attempt.max(1);
        if attempt > job.retries {
            return None;
        }
        let lost_on = rec.key.instance.clone();
        let mut req = TriggerRequest::after(
            &job.name,
            format!(
                "retry {} of run {}, lost on member {lost_on}",
                attempt + 1,
                rec.key.run_id
            ),
            rec.upstream.clone(),
        );
        req.params = rec.params.clone();
        req.first_attempt = Some(attempt + 1);
        req.placement = Where {
            avoid: vec![lost_on],
            ..Where::default()
        };
        Some(req)
    })
}
