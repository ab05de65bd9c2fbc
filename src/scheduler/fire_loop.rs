//! The loop: sleep until the earliest due tick, fire what is due, react to
//! leadership, reloads, requests and reaped supervisors; drain on stop.

use super::*;
use crate::executor::waiting;

/// How long before a tick the backend is told how many claims follow
/// (`Coordinator::prepare`).
pub(super) const PREPARE_AHEAD: chrono::Duration = chrono::Duration::milliseconds(250);

/// Jobs whose claims are in flight at once. The backends make the claims
/// in flight durable together (one etcd transaction of at most 100 claims,
/// one fsync standalone); more in flight only make every claim (and the
/// start after it) later under overload: with a bound, the first claims
/// return and start in time while later ones wait their turn.
pub(super) const CLAIMS_IN_FLIGHT: usize = 100;

/// How long a stopping member still takes the runs placed on it before
/// the leader heard that it leaves.
const LATE_PLACEMENTS: std::time::Duration = std::time::Duration::from_secs(1);

/// The next config sent to a reloadable scheduler; never, if none can come.
pub(super) async fn next_config(rx: &mut watch::Receiver<Arc<Config>>) -> Arc<Config> {
    match rx.changed().await {
        Ok(()) => rx.borrow_and_update().clone(),
        Err(_) => std::future::pending().await,
    }
}

/// The next message of a channel the backend may not have.
pub(super) async fn recv_from<T>(rx: &mut Option<tokio::sync::mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl<C: Coordinator> Scheduler<C> {
    /// After a supervisor exited: take back what its run handed back, and
    /// record its run lost if it died without recording it.
    pub(super) async fn reaped(
        &self,
        reaped: crate::executor::Reaped,
        services: Option<(&Config, &mut services::Services)>,
    ) {
        if let Some(token) = &reaped.handback {
            self.coord.take_back(token);
        }
        let Some(key) = &reaped.key else { return };
        if let Some((config, services)) = services {
            if let Some(job) = config
                .jobs
                .get(&key.job)
                .filter(|_| services.is_service(&key.job))
            {
                services.ended(job, &key.run_id, Utc::now());
            }
        }
        if !reaped.clean {
            for rec in crate::coordination::reap_after_death(&*self.coord, key).await {
                self.after_lost(rec);
            }
        }
    }

    pub(super) async fn fire_loop(
        &self,
        leadership: &mut Leadership,
        stop: &mut watch::Receiver<u32>,
        running: &mut Supervisors,
        assigned: &mut Option<tokio::sync::mpsc::Receiver<crate::coordination::Assignment>>,
    ) -> anyhow::Result<LoopEnd> {
        let mut updates = self.config.clone();
        let mut config = updates.borrow_and_update().clone();
        let mut jobs = scheduled(&config);
        let mut due: Due = BinaryHeap::new();
        self.missed_written().await;
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
        let mut services = services::Services::default();
        services.follow(&config, now);
        let mut fan_in = super::after::FanIn::default();
        let mut requests = leadership.requests.take();
        let mut lost = leadership.lost.take();
        let mut state = FireState {
            stop: Some(Stop(stop.clone(), *stop.borrow())),
            ..FireState::default()
        };
        let mut prepared_for = None;
        // The next tick due and how many fires it has.
        let mut due_at = (DateTime::<Utc>::MIN_UTC, 0);
        // When fenced, since when; after, the last stretch held back, so the
        // ticks missed in it say why.
        let mut fenced_since: Option<DateTime<Utc>> = None;
        let mut held_back: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
        // The wall clock against the monotonic one, to notice it step back.
        let mut turned = (Utc::now(), tokio::time::Instant::now());
        let mut timer = super::timer::Timer::new();
        loop {
            self.metrics.beat();
            let mut reloaded = None;
            let next_due = due.peek().map(|Reverse((t, _))| *t);
            if next_due.is_some_and(|t| due_at.0 != t) {
                let t = next_due.expect("checked");
                due_at = (t, due.iter().filter(|Reverse((tt, _))| *tt == t).count());
            }
            // The backend readies its claims and supervisors start ahead of
            // the tick, early enough for as many as are due.
            let (t, fires) = due_at;
            let ahead = chrono::Duration::from_std(waiting::lead_time(
                fires,
                PREPARE_AHEAD.to_std().expect("positive"),
            ))
            .unwrap_or(PREPARE_AHEAD);
            if next_due.is_some() && prepared_for != Some(t) && Utc::now() >= t - ahead {
                prepared_for = Some(t);
                self.waiting.prepare(fires);
                let coord = self.coord.clone();
                tokio::spawn(async move { coord.prepare(fires).await });
            }
            let prepare_at = next_due
                .filter(|t| prepared_for != Some(*t))
                .map(|t| t - ahead);
            let wake = [
                next_due,
                state.next_retry(),
                prepare_at,
                services.next_wake(),
                fan_in.next_wake(&config),
            ]
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
                reaped = running.reap_one() => {
                    self.reaped(reaped, Some((&config, &mut services))).await;
                    continue;
                }
                Some(a) = recv_from(assigned) => {
                    self.run_assigned(a, assigned, running).await;
                    continue;
                }
                Some(rec) = recv_from(&mut lost) => {
                    self.after_lost(rec);
                    continue;
                }
                // A stopping scheduler takes no more: the next leader will.
                Some(req) = recv_from(&mut requests), if !fenced && !state.stopping() => {
                    self.answer_request(&config, leadership, req, Utc::now(), running, &mut state).await;
                    continue;
                }
                // Applied below, after what is due under the old config.
                new = next_config(&mut updates), if !fenced => reloaded = Some(new),
                () = timer.sleep(wait), if !fenced => {}
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
                        if self
                            .coord
                            .pause_of(&job.name)
                            .is_some_and(|p| p.covers(tick) || p.is_active(now))
                        {
                            // Paused since the claim failed: held back, not missed.
                            continue;
                        }
                        let Some(trigger) = in_time(job, tick, trigger, now) else {
                            let why = if held_back.is_some() {
                                MissedWhy::HeldBack
                            } else {
                                MissedWhy::ClaimFailing
                            };
                            self.record_missed(leadership.term, job, (1, tick, tick), None, why);
                            continue;
                        };
                        if state.earlier_waits(&job.name, tick) {
                            let at = state.backoff(&job.name).unwrap_or(now);
                            self.retry_later(leadership.term, job, tick, trigger, at, &mut state);
                            continue;
                        }
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
                        self.answer_request(&config, leadership, *req, since, running, &mut state)
                            .await;
                    }
                }
            }
            let mut batch: Vec<(&Job, Vec<Planned>, Option<MissedEntry>)> = Vec::new();
            while let Some(Reverse((tick, i))) = due.peek().copied() {
                if tick > now {
                    break;
                }
                due.pop();
                let job = jobs[i];
                let mut plan = plan_due(job, tick, now);
                if let Some(pause) = self.coord.pause_of(&job.name) {
                    self.hold_back_paused(job, &pause, &mut plan, now);
                }
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
                    let mut fires = fires.into_iter();
                    while let Some((tick, trigger)) = fires.next() {
                        if stopping.as_ref().is_some_and(Stop::requested) {
                            // Unclaimed, the tick is left to the next
                            // leader, and so are the missed ones before it:
                            // recording them here would count them twice.
                            return (job, None, first, results, Vec::new());
                        }
                        let claimed = match in_time(job, tick, trigger, Utc::now()) {
                            Some(trigger) => Some((
                                trigger,
                                self.claim(lead, Fire::scheduled(job, tick, trigger)).await,
                            )),
                            None => None,
                        };
                        let undecided =
                            matches!(&claimed, Some((_, Err(ClaimRejected::Backend(_)))));
                        results.push((tick, claimed));
                        if undecided {
                            // That claim may have gone through with its
                            // answer lost: a later tick claimed first would
                            // hide it. The later ones wait for its retry.
                            return (job, missed, first, results, fires.collect());
                        }
                    }
                    (job, missed, first, results, Vec::new())
                },
            ))
            .buffer_unordered(CLAIMS_IN_FLIGHT);
            while let Some((job, missed, first, results, deferred)) = claims.next().await {
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
                        .start(
                            lead,
                            Fire::scheduled(job, tick, trigger),
                            claimed,
                            &mut state,
                        )
                        .await;
                    if trigger == Trigger::Catchup && matches!(fired, Fired::Started(..)) {
                        newer = Some((tick, true));
                    }
                    self.track_fired(
                        lead.term,
                        fired,
                        Fire::scheduled(job, tick, trigger),
                        running,
                        &mut state,
                    );
                }
                for (tick, trigger) in deferred {
                    let at = state.backoff(&job.name).unwrap_or_else(Utc::now);
                    self.retry_later(lead.term, job, tick, trigger, at, &mut state);
                }
                if let Some((missed, why)) = missed {
                    self.record_missed(lead.term, job, missed, newer, why);
                }
            }
            drop(claims);
            held_back = None;
            // After the ticks due: a service running elsewhere costs a read
            // per turn, which must not make a tick late.
            self.keep_services(&config, leadership, &mut services, running, &mut state)
                .await;
            if !state.stopping() {
                self.fan_in(&config, leadership, &mut fan_in).await;
            }
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
                services.follow(&new, now);
                // A service the reload removed or disabled is stopped (it
                // would never end); a changed one runs on and starts with
                // its new config next time.
                running.signal_where(Signal::TERM, |key| {
                    key.trigger == Trigger::Service && !services.is_service(&key.job)
                });
                config = new;
                jobs = scheduled(&config);
            }
        }
    }

    /// Let running jobs finish for up to `shutdown_grace`, then stop their
    /// supervisors. Returns whether a second stop request forced it.
    pub(super) async fn drain(
        &self,
        stop: &mut watch::Receiver<u32>,
        running: &mut Supervisors,
        assigned: &mut Option<tokio::sync::mpsc::Receiver<crate::coordination::Assignment>>,
    ) -> bool {
        // A run placed here just before the leader heard that this member
        // leaves is still started, not left to expire as lost.
        let late = tokio::time::sleep(match assigned {
            Some(_) => LATE_PLACEMENTS,
            None => std::time::Duration::ZERO,
        });
        tokio::pin!(late);
        let mut late_over = assigned.is_none();
        let shutdown_grace = self.config.borrow().scheduler.shutdown_grace;
        let grace = tokio::time::sleep(shutdown_grace);
        tokio::pin!(grace);
        let mut forced = *stop.borrow() >= 2;
        let mut terminated = false;
        // Draining is the loop turning too (`shutdown_grace` may be long).
        let mut beat = tokio::time::interval(MAX_SLEEP / 4);
        // A service never ends by itself: it is stopped at once, with its
        // kill grace, while other runs may finish within the grace.
        {
            let config = self.config.borrow();
            running.signal_where(Signal::TERM, |key| {
                key.trigger == Trigger::Service
                    || config
                        .jobs
                        .get(&key.job)
                        .is_some_and(|j| j.schedule.is_continuous())
            });
        }
        while !running.is_empty() || !late_over {
            if forced && !terminated {
                // SIGTERM starts the supervisor's stop; the SIGINT after it
                // tells it to skip the grace period and SIGKILL the group.
                running.signal_all(Signal::TERM);
                running.signal_all(Signal::INT);
                terminated = true;
            }
            tokio::select! {
                _ = running.reap_one() => {}
                _ = beat.tick() => self.metrics.beat(),
                () = &mut late, if !late_over => late_over = true,
                Some(a) = recv_from(assigned), if !late_over && !forced => {
                    self.run_assigned(a, assigned, running).await;
                }
                () = &mut grace, if !terminated => {
                    tracing::warn!(running = running.len(), "shutdown grace over: terminating running jobs");
                    for (job, run_id) in running.runs() {
                        tracing::warn!(job, run_id, "terminating");
                    }
                    running.signal_all(Signal::TERM);
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
