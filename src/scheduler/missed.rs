//! Entries for ticks that did not run, lost runs, and records written in
//! the background.

use super::*;
use crate::model::RunKey;

impl<C: Coordinator> Scheduler<C> {
    pub(super) fn record_missed(
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
            job = %job.name, run_id = %rec.key.run_id, tick = %newest.to_rfc3339(),
            instance = %self.instance, term, missed = count, "ticks missed: {reason}"
        );
        rec.missed_ticks = Some(count);
        // A new term of this process resumes after these ticks only once
        // their entry is written: an entry refused because this term ended
        // leaves them to the next term, which records them itself.
        let up_to = self.missed_up_to.clone();
        let job_name = job.name.clone();
        let pending = Pending::new(&self.missed_pending);
        self.record_in_background_then(rec, false, move || {
            // Counted as pending until `up_to` says so (or, unwritten,
            // until the task drops this closure).
            let _pending = pending;
            let mut up_to = up_to.lock().expect("missed lock");
            let newest_known = up_to.entry(job_name).or_insert(newest);
            *newest_known = (*newest_known).max(newest);
        });
    }

    /// Wait, at most a second, for the missed entries still being written
    /// (a term that just ended may have one in flight).
    pub(super) async fn missed_written(&self) {
        let until = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
        while self
            .missed_pending
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0
            && tokio::time::Instant::now() < until
        {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Take a paused job's ticks out of `plan`: while it is paused none
    /// fires and none counts as missed, and neither do the ticks of its
    /// last pause after it ended (a leader that starts later finds them
    /// unfired). A pause that ended by its `until` has nobody to write its
    /// entry but the scheduler; under the pause's own id, so written once
    /// however many replicas try.
    pub(super) fn hold_back_paused(
        &self,
        job: &Job,
        pause: &crate::coordination::Pause,
        plan: &mut DuePlan,
        now: DateTime<Utc>,
    ) {
        if pause.is_active(now) {
            if !plan.fires.is_empty() {
                tracing::debug!(job = %job.name, paused_since = %pause.since.to_rfc3339(), "paused: the tick does not fire");
            }
            plan.fires.clear();
            plan.missed = None;
            return;
        }
        plan.fires.retain(|(t, _)| !pause.covers(*t));
        if plan
            .missed
            .is_some_and(|(_, oldest, newest)| pause.covers(oldest) && pause.covers(newest))
        {
            plan.missed = None;
        }
        // Resumed, its entry was written by whoever resumed it, unless that
        // write failed; ended by itself, nobody else writes it. Written
        // under the pause's id, so at most once however often this is.
        if self
            .recorded_pauses
            .lock()
            .expect("pauses lock")
            .insert(pause.id.clone())
        {
            if pause.resumed_at.is_none() {
                tracing::info!(job = %job.name, "pause ended by itself: the job fires again");
            }
            self.record_in_background_then(pause.entry(job, &self.instance), false, || {});
        }
    }

    /// `job`'s last fired tick, `last`, is ahead of this clock: say so, and
    /// resume from this clock if the backend vouches for it, else from
    /// `last` (at most once). Returns the tick to resume after.
    pub(super) async fn last_tick_ahead(
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
    pub(super) fn clock_stepped_back(
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
    pub(super) fn entry(
        &self,
        term: u64,
        job: &Job,
        tick: DateTime<Utc>,
        trigger: Trigger,
        outcome: Outcome,
        reason: String,
    ) -> RunRecord {
        let mut rec = RunRecord::not_run(
            RunKey::new(&job.name, tick, trigger, &self.instance),
            outcome,
            reason,
        );
        rec.key.term = term;
        rec
    }

    /// A run was recorded `lost` (its supervisor is gone): its `on_failure`
    /// hook is ours to run, as nobody else is left to.
    pub(super) fn after_lost(&self, rec: RunRecord) {
        self.notifier.entry(&rec);
        // The newest config: the hook as it is now configured, none for a
        // job removed since.
        let config = self.config.borrow().clone();
        let Some(job) = config.jobs.get(&rec.key.job) else {
            return;
        };
        let Some(hook) = job.on_failure.clone() else {
            return;
        };
        let spec = RunSpec::new(
            job,
            rec.key.run_id.clone(),
            rec.key.tick,
            rec.key.trigger,
            self.coord.backend_spec(),
        );
        tokio::spawn(async move { crate::executor::run_hook(&hook, &spec, &rec).await });
    }

    /// History entries for ticks that did not run are written off the fire path.
    /// Retried for a while: these entries are the only trace of a tick
    /// that did not run, and etcd may be briefly away.
    /// This one for the entries of claimed ticks (`Coordinator::record_claimed`).
    pub(super) fn record_in_background(&self, rec: RunRecord) {
        self.record_in_background_then(rec, true, || {});
    }

    /// [`Self::record_in_background`], calling `written` once the entry is.
    pub(super) fn record_in_background_then(
        &self,
        rec: RunRecord,
        claimed: bool,
        written: impl FnOnce() + Send + 'static,
    ) {
        let coord = self.coord.clone();
        let notifier = self.notifier.clone();
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
                    Ok(true) => {
                        notifier.entry(&rec);
                        return written();
                    }
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
                            tracing::warn!(job = %rec.key.job, run_id = %rec.key.run_id, "could not record {} yet ({e}); retrying", rec.outcome);
                        }
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(std::time::Duration::from_secs(5));
                    }
                    Err(e) => {
                        tracing::error!(job = %rec.key.job, run_id = %rec.key.run_id, "could not record {}: {e}", rec.outcome);
                        return;
                    }
                }
            }
        }
        .instrument(span));
    }
}

/// One missed entry being written (see `Scheduler::missed_pending`).
struct Pending(Arc<std::sync::atomic::AtomicUsize>);

impl Pending {
    fn new(count: &Arc<std::sync::atomic::AtomicUsize>) -> Pending {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Pending(count.clone())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}
