//! One fire: its claim, and acting on the answer (start the supervisor,
//! or record and log why not); manual triggers; retries.

use super::*;
use crate::model::RunKey;

impl<C: Coordinator> Scheduler<C> {
    pub(super) async fn fire_tick(
        &self,
        leadership: &Leadership,
        job: &Job,
        tick: DateTime<Utc>,
        trigger: Trigger,
        running: &mut Supervisors,
        state: &mut FireState,
    ) -> bool {
        let fire = Fire::scheduled(job, tick, trigger);
        let fired = self.fire(leadership, fire, state).await;
        self.track_fired(leadership.term, fired, fire, running, state)
    }

    /// Track a started supervisor or queue a retry. Returns whether the tick
    /// was superseded (a later one was claimed first).
    pub(super) fn track_fired(
        &self,
        term: u64,
        fired: Fired,
        Fire {
            job, tick, trigger, ..
        }: Fire<'_>,
        running: &mut Supervisors,
        state: &mut FireState,
    ) -> bool {
        match fired {
            Fired::Started(child, spec) => running.track(*child, &spec),
            Fired::NotStarted | Fired::Placed => {}
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
    pub(super) fn retry_later(
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
    pub(super) async fn answer_request(
        &self,
        config: &Config,
        leadership: &Leadership,
        req: TriggerRequest,
        since: DateTime<Utc>,
        running: &mut Supervisors,
        state: &mut FireState,
    ) {
        let Some(job) = config.jobs.get(&req.job) else {
            tracing::warn!(job = %req.job, run_id = %req.run_id, "trigger request for a job this instance does not know");
            let mut rec = RunRecord::not_run(
                RunKey::new(&req.job, Utc::now(), Trigger::Manual, &self.instance),
                Outcome::StartFailed,
                format!("no job named \"{}\" in the leader's config", req.job),
            );
            rec.key.run_id = req.run_id.clone();
            if let Ok(true) = self.coord.record(&rec).await {
                self.notifier.entry(&rec);
            }
            self.coord.finish_request(&req.run_id).await;
            return;
        };
        let now = Utc::now();
        let tick = crate::coordination::manual_tick(now);
        // A run after an upstream one stands for the job's own work like a
        // tick, so a pause holds it back even where manual runs still work.
        let trigger = match req.upstream {
            Some(_) => Trigger::After,
            None => Trigger::Manual,
        };
        let refused = if trigger == Trigger::After && !job.enabled {
            let up = req.upstream.as_ref().map_or("", |u| u.job.as_str());
            Some(format!("disabled: not run after {up}"))
        } else {
            // Checked by the requester too; the pause may be newer.
            self.coord
                .pause_of(&job.name)
                .filter(|p| p.is_active(now) && (!p.manual || trigger == Trigger::After))
                .map(|p| crate::coordination::paused_refusal(&job.name, &p))
        };
        if let Some(reason) = refused {
            let mut rec = self.entry(
                leadership.term,
                job,
                tick,
                trigger,
                Outcome::Skipped,
                reason.clone(),
            );
            rec.key.run_id = req.run_id.clone();
            rec.upstream = req.upstream.clone();
            tracing::warn!(job = %job.name, run_id = %req.run_id, "trigger request refused: {reason}");
            self.finish_claimed(rec, Some(&req.run_id)).await;
            return;
        }
        tracing::info!(
            job = %job.name, run_id = %req.run_id, tick = %tick.to_rfc3339(), instance = %self.instance,
            term = leadership.term, requested_by = %req.requested_by, "trigger request"
        );
        match self
            .fire(
                leadership,
                Fire {
                    job,
                    tick,
                    trigger,
                    request: Some(&req),
                },
                state,
            )
            .await
        {
            Fired::Started(child, spec) => {
                running.track(*child, &spec);
                // Its supervisor runs: standalone, the claimed request goes.
                self.coord.finish_request(&req.run_id).await;
            }
            Fired::Placed => {}
            Fired::NotStarted | Fired::Superseded => {}
            // The request key lives as long as its requester waits; keep
            // trying while the backend is in trouble.
            Fired::Retry if now - since < chrono::Duration::minutes(5) => {
                state.retries.push(Retry::Request {
                    at: state.backoff(&job.name).unwrap_or(now),
                    req: Box::new(req),
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
    pub(super) async fn fire(
        &self,
        leadership: &Leadership,
        fire: Fire<'_>,
        state: &mut FireState,
    ) -> Fired {
        let claimed = self.claim(leadership, fire).await;
        self.start(leadership, fire, claimed, state).await
    }

    pub(super) async fn claim(
        &self,
        leadership: &Leadership,
        Fire {
            job,
            tick,
            trigger,
            request,
        }: Fire<'_>,
    ) -> Result<Claim, ClaimRejected> {
        let group = self.group_of(job);
        // A run placed elsewhere takes its parameters along, checked here;
        // ones that fail the check are refused here, as before placement.
        let params = request.map(|r| job.resolve_params(&r.params));
        let (run_on, params) = match &params {
            // A service lives with the leader that keeps it running.
            _ if trigger == Trigger::Service => (&crate::config::RunOn::Leader, None),
            Some(Err(_)) => (&crate::config::RunOn::Leader, None),
            Some(Ok(p)) => (&job.run_on, Some(p)),
            None => (&job.run_on, None),
        };
        let req = ClaimRequest {
            job: &job.name,
            tick,
            trigger,
            instance: &self.instance,
            overlap: job.overlap,
            // A service's start is not a tick of a schedule: its instant
            // comes from the clock, which may step back; the overlap check
            // alone keeps it single.
            advances_schedule: request.is_none() && trigger != Trigger::Service,
            request: request.map(|r| r.run_id.as_str()),
            group: group.as_ref(),
            upstream: request.and_then(|r| r.upstream.as_ref()),
            run_on,
            placement: request.map(|r| &r.placement),
            params,
            first_attempt: request.and_then(|r| r.first_attempt),
        };
        self.coord.claim(leadership, req).await
    }

    /// The concurrency group `job` belongs to in the config in use.
    fn group_of(&self, job: &Job) -> Option<crate::config::Group> {
        self.config.borrow().group_of(job).cloned()
    }

    /// Act on a claim's result: start the supervisor, or record and log
    /// why not.
    #[tracing::instrument(name = "fire", target = "bgsched::span", level = "error", skip_all, fields(job = %fire.job.name, tick = %fire.tick.to_rfc3339(), trigger = %fire.trigger, instance = %self.instance, term = leadership.term))]
    pub(super) async fn start(
        &self,
        leadership: &Leadership,
        fire: Fire<'_>,
        claimed: Result<Claim, ClaimRejected>,
        state: &mut FireState,
    ) -> Fired {
        let Fire {
            job,
            tick,
            trigger,
            request,
        } = fire;
        let params = request.map(|r| job.resolve_params(&r.params));
        let upstream = request.and_then(|r| r.upstream.clone());
        let first_attempt = request.and_then(|r| r.first_attempt).unwrap_or(1);
        let request = request.map(|r| r.run_id.as_str());
        if let Err(e) = &claimed {
            self.metrics.claim_rejected(e.kind());
        }
        if !matches!(claimed, Err(ClaimRejected::Backend(_))) {
            if let Some(streak) = state.streaks.remove(&job.name) {
                tracing::info!(job = %job.name, failures = streak.failures, "claims work again after {} failed attempt(s)", streak.failures);
            }
        }
        let mut claim = match claimed {
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
                rec.upstream = upstream.clone();
                if let Some(id) = request {
                    // The requester waits for a record under its own run id.
                    rec.key.run_id = id.to_string();
                } else if let Some(id) = self.coord.claimed_skip(&job.name, tick) {
                    rec.key.run_id = id;
                }
                tracing::warn!(job = %job.name, run_id = %rec.key.run_id, tick = %tick.to_rfc3339(), skipped_total = *total, "tick skipped: {reason}");
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
                    // (`Fenced` even when the fence lifted since: a lost
                    // leadership says `NotLeader`.)
                    ClaimRejected::Fenced => {
                        tracing::debug!(job = %job.name, tick = %tick.to_rfc3339(), "fenced before the claim went out; holding the tick back");
                        return Fired::Retry;
                    }
                    ClaimRejected::NotLeader if leadership.is_fenced() => {
                        tracing::debug!(job = %job.name, tick = %tick.to_rfc3339(), "fenced before the claim went out; holding the tick back");
                        return Fired::Retry;
                    }
                    ClaimRejected::AlreadyFired(t) => {
                        tracing::debug!(job = %job.name, tick = %t.to_rfc3339(), reason, rejected_total = total, "tick already fired");
                        return Fired::Superseded;
                    }
                    // Nothing was claimed; the entry is the fire's trace
                    // (and, for a tick, moves its last tick on, as a
                    // plan's missed entry does).
                    ClaimRejected::NoMember(why) => {
                        let mut rec = self.entry(
                            leadership.term,
                            job,
                            tick,
                            trigger,
                            Outcome::Missed,
                            format!("not run: {why}"),
                        );
                        rec.upstream = upstream.clone();
                        rec.missed_ticks = Some(1);
                        if let Some(id) = request {
                            rec.key.run_id = id.to_string();
                        }
                        self.metrics.missed(&job.name, 1);
                        tracing::warn!(job = %job.name, run_id = %rec.key.run_id, tick = %tick.to_rfc3339(), "not run: {why}");
                        match request {
                            Some(_) => self.finish_claimed(rec, request).await,
                            // Not a claimed entry: written as a plan's
                            // missed entry is, under this term.
                            None => self.record_in_background_then(rec, false, || {}),
                        }
                        return Fired::NotStarted;
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
        if let Some(member) = &claim.placed_on {
            self.metrics.fired(&job.name, trigger);
            self.metrics.placed(member);
            tracing::info!(job = %job.name, run_id = %claim.run_id, on = %member, "fired: placed on member {member}");
            return Fired::Placed;
        }
        let not_starting = if state.stopping() {
            Some((
                MissedWhy::Idle,
                "not started: the scheduler was stopping when its claimed run's turn came"
                    .to_string(),
            ))
        } else {
            if self.coord.too_late_to_start(&claim.hold).is_some()
                && self.coord.refresh_hold(&mut claim.hold).await
            {
                tracing::info!(job = %job.name, run_id = %claim.run_id, "the claim took long: its run lease was renewed to start it");
            }
            self.coord.too_late_to_start(&claim.hold).map(|why| {
                (
                    MissedWhy::Overloaded,
                    format!("{OVERLOADED}: the scheduler could not start the claimed run in time ({why}); it was not started"),
                )
            })
        };
        let params = match params {
            None => Ok(Default::default()),
            Some(checked) => checked.map_err(|e| e.to_string()),
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
            rec.key.run_id = claim.run_id;
            rec.upstream = upstream.clone();
            rec.missed_ticks = Some(1);
            self.metrics.missed(&job.name, 1);
            if why == MissedWhy::Overloaded {
                self.metrics.overloaded(&job.name, 1);
            }
            tracing::warn!(job = %job.name, run_id = %rec.key.run_id, tick = %tick.to_rfc3339(), "tick missed: {reason}");
            self.finish_claimed(rec, request).await;
            return Fired::NotStarted;
        }
        let mut spec = RunSpec::new(
            job,
            claim.run_id.clone(),
            tick,
            trigger,
            self.coord.backend_spec(),
        );
        spec.key.instance = self.instance.clone();
        spec.key.term = claim.term;
        spec.upstream = upstream;
        spec.first_attempt = first_attempt;
        match &claim.turn {
            Turn::Now => {}
            Turn::Queued => {
                tracing::info!(job = %job.name, run_id = %claim.run_id, "queued: starts when the active run ends")
            }
            Turn::Replace { active } => {
                let of = active.as_ref().map_or("", |a| a.key.run_id.as_str());
                tracing::info!(job = %job.name, run_id = %claim.run_id, replaces = of, "replacing the active run")
            }
        }
        spec.turn = claim.turn;
        spec.group = claim.group.clone();
        spec.log_json = self.log_json;
        spec.params = match params {
            Ok(params) => params,
            Err(why) => {
                // Checked by the requester against its config; this
                // leader's may declare them otherwise.
                let mut rec = self.entry(
                    leadership.term,
                    job,
                    tick,
                    trigger,
                    Outcome::StartFailed,
                    format!("not started: {why}"),
                );
                rec.key.run_id = spec.key.run_id;
                tracing::warn!(job = %job.name, run_id = %rec.key.run_id, "trigger request refused: {why}");
                self.finish_claimed(rec, request).await;
                return Fired::NotStarted;
            }
        };
        if matches!(trigger, Trigger::Schedule | Trigger::Catchup) {
            // Decided here, from the job and tick alone, so whichever replica
            // fires the tick picks the same delay.
            spec.delay = job.jitter_for(tick);
        }
        let span = run_span(&spec);
        match self.waiting.start(spec.clone(), claim.hold, claim.seat) {
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
                rec.key.run_id = claim.run_id;
                tracing::error!(job = %job.name, "could not start a supervisor: {e}");
                self.record_in_background(rec);
                Fired::NotStarted
            }
        }
    }
}

impl<C: Coordinator> Scheduler<C> {
    /// Record the entry of a claimed run that did not start. A requester
    /// waits for it under its own run id, so it is written before the
    /// request is let go; a tick's entry goes out in the background.
    async fn finish_claimed(&self, rec: RunRecord, request: Option<&str>) {
        match request {
            Some(id) => {
                match self.coord.record_claimed(&rec).await {
                    Ok(true) => self.notifier.entry(&rec),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(job = %rec.key.job, "could not record the {} entry: {e}", rec.outcome)
                    }
                }
                self.coord.finish_request(id).await;
            }
            None => self.record_in_background(rec),
        }
    }
}
