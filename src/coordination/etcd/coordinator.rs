//! The `Coordinator` interface over etcd: what the scheduler calls.

use super::*;
use crate::coordination::{Activity, Cancel};

impl Coordinator for Etcd {
    async fn fan_in(
        &self,
        leadership: &Leadership,
        job: &str,
        upstreams: &[String],
    ) -> Result<bool> {
        let mut client = self.client.clone();
        let found = client
            .get(self.keys.marks(job), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(etcd_err("read the ends a job waits for"))?;
        let mut marks: Vec<(String, i64, Option<crate::model::Upstream>)> = Vec::new();
        for up in upstreams {
            let key = self.keys.mark(job, up);
            let Some(kv) = found.kvs().iter().find(|kv| kv.key() == key.as_bytes()) else {
                return Ok(false);
            };
            marks.push((
                key,
                kv.mod_revision(),
                parse::<crate::model::Upstream>(kv).ok(),
            ));
        }
        let newest = marks
            .iter()
            .filter_map(|(_, rev, up)| Some((*rev, up.clone()?)))
            .max_by_key(|(rev, _)| *rev)
            .map(|(_, up)| up);
        let why = format!("after all of {}", upstreams.join(", "));
        let req = TriggerRequest::after(job, why, newest);
        // Only while leading, and only the marks read: if a newer end
        // replaced one meanwhile, the next look uses that one.
        let when: Vec<Compare> = std::iter::once(Compare::create_revision(
            self.keys.leader(),
            CompareOp::Equal,
            leadership.term as i64,
        ))
        .chain(
            marks
                .iter()
                .map(|(key, rev, _)| Compare::mod_revision(key.clone(), CompareOp::Equal, *rev)),
        )
        .collect();
        let ops: Vec<TxnOp> = marks
            .iter()
            .map(|(key, _, _)| TxnOp::delete(key.clone(), None))
            .chain([TxnOp::put(self.keys.request(&req.run_id), json(&req), None)])
            .collect();
        let resp = client
            .txn(Txn::new().when(when).and_then(ops))
            .await
            .map_err(etcd_err("ask for the run after all of its upstream jobs"))?;
        Ok(resp.succeeded())
    }

    async fn acquire_leadership(&self, instance: &str) -> Result<Leadership> {
        let mut delay = Duration::from_millis(200);
        let mut announced = None;
        loop {
            let attempt = async {
                let (lease, alive, vouched) = self.session(instance).await?;
                self.wait_for_sound_clock().await;
                Ok::<_, CoordError>((
                    lease,
                    (alive, vouched),
                    self.try_lead(instance, lease).await?,
                ))
            };
            match attempt.await {
                Ok((_, (alive, vouched), Ok(term))) => {
                    // Without the last fired ticks this leader could neither
                    // catch up nor keep claims cheap. One failed read is no
                    // reason to give the term back (the channel already
                    // tried the other members): keep reading while the
                    // session lives, and resign only after a long outage.
                    if let Err(e) = self.load_last_ticks_retrying(term, &alive).await {
                        tracing::warn!(term, "won leadership but {e}; resigning and retrying");
                        self.resign_term(term).await;
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                        continue;
                    }
                    let (valid_tx, valid) = watch::channel(true);
                    let (key_tx, key_ok) = watch::channel(true);
                    let guard = self.guard_leadership(term, alive, key_tx);
                    let clock_guard = self.guard_clock(term, key_ok, valid_tx);
                    let pauses = match self.watch_pauses().await {
                        Ok(task) => task,
                        Err(e) => {
                            tracing::warn!(term, "won leadership but {e}; resigning and retrying");
                            self.resign_term(term).await;
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(5));
                            continue;
                        }
                    };
                    let (req_tx, req_rx) = mpsc::channel(256);
                    let requests = self.watch_requests(req_tx);
                    let (lost_tx, lost_rx) = mpsc::channel(256);
                    let lost_runs = self.record_lost_runs(lost_tx);
                    let scheduled = self.serve_scheduled();
                    let hold = AbortOnDrop(vec![
                        guard,
                        clock_guard,
                        requests,
                        lost_runs,
                        pauses,
                        scheduled,
                    ]);
                    return Ok(Leadership::new(term, valid, Some(req_rx), Box::new(hold))
                        .with_lost_runs(lost_rx)
                        .with_fence(vouched));
                }
                Ok((_, (mut alive, _), Err((rev, current)))) => {
                    delay = Duration::from_millis(200);
                    if let Some(c) = &current {
                        if announced.as_ref() != Some(&c.term) {
                            tracing::info!(leader = %c.instance, term = c.term, "standing by: another instance leads");
                            announced = Some(c.term);
                        }
                    }
                    self.wait_leader_gone(rev, &mut alive).await;
                }
                Err(e) => {
                    tracing::warn!(
                        "etcd: {e}; retrying in {}",
                        crate::observe::log::duration(delay)
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn resign(&self, leadership: Leadership) {
        let key = self.keys.leader();
        let txn = Txn::new()
            .when([Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                leadership.term as i64,
            )])
            .and_then([TxnOp::delete(key, None)]);
        match self.client.clone().txn(txn).await {
            Ok(r) if r.succeeded() => tracing::info!(term = leadership.term, "resigned leadership"),
            Ok(_) => {}
            Err(e) => tracing::warn!("could not resign leadership: {e}"),
        }
    }

    async fn last_fired(&self, job: &str) -> Result<Option<DateTime<Utc>>> {
        let cache = self.last.lock().expect("cache lock");
        Ok(cache
            .get(job)
            .map(|c| c.0)
            .filter(|t| *t > DateTime::<Utc>::MIN_UTC))
    }

    async fn resume_before(
        &self,
        job: &str,
        _last: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<String> {
        // Leading implies a measured clock, unless the members watch just
        // restarted: give it a few heartbeats.
        let mut verdict = self.clock.verdict();
        for _ in 0..15 {
            if verdict != ClockVerdict::Unknown {
                break;
            }
            tokio::time::sleep(self.cfg.renew_every() / 4).await;
            verdict = self.clock.verdict();
        }
        let why = match verdict {
            ClockVerdict::Agrees { others, skew_ms } => format!(
                "the clocks of the {others} other live member(s) agree with this one (skew {skew_ms}ms)"
            ),
            v @ ClockVerdict::Alone { .. } => format!("{}: trusting this one", v.describe()),
            ClockVerdict::Unknown | ClockVerdict::Skewed { .. } => return None,
        };
        // The claim transaction compares the key's revision, not its tick:
        // lowering the cached tick is all it takes to accept earlier ticks.
        if let Some(entry) = self.last.lock().expect("cache lock").get_mut(job) {
            entry.0 = now;
        }
        Some(why)
    }

    fn too_late_to_start(&self, hold: &Hold) -> Option<String> {
        let Hold::Lease { granted_at, .. } = hold else {
            return None;
        };
        // Three quarters of the window the supervisor trusts the lease in:
        // the rest is for it to start (it checks again, see
        // `EtcdRecorder::start`).
        let age = (Utc::now() - *granted_at).to_std().unwrap_or_default();
        (age >= self.cfg.fence_after() * 3 / 4).then(|| {
            format!(
                "its run lease was granted {} ago, too long to start it safely",
                humantime::format_duration(Duration::from_millis(age.as_millis() as u64))
            )
        })
    }

    async fn refresh_hold(&self, hold: &mut Hold) -> bool {
        // A claim slowed down by etcd (an election among the members) can
        // return with its lease too old to trust; renewed, it is as good
        // as a new one, and the claimed run still starts.
        let Hold::Lease { id, granted_at } = hold else {
            return false;
        };
        match self.renew_lease(*id).await {
            Some(at) => {
                *granted_at = at;
                true
            }
            None => false,
        }
    }

    async fn claim(
        &self,
        leadership: &Leadership,
        req: ClaimRequest<'_>,
    ) -> Result<Claim, ClaimRejected> {
        if !leadership.is_valid() {
            return Err(leadership.refusal());
        }
        let run_id = self.run_id_for(&req);
        let mut attempts = 0;
        loop {
            // The self-fencing rule holds for every attempt.
            if attempts > 0 && !leadership.is_valid() {
                return Err(leadership.refusal());
            }
            let claimed = self.claim_once(leadership, &req, &run_id).await;
            // Only a run started elsewhere keeps its place there until its
            // marker shows (a queued one counts once it runs).
            if !matches!(&claimed, Ok(c) if c.turn == Turn::Now) {
                self.placement.release(&run_id);
            }
            match claimed {
                Ok(claim) => return Ok(claim),
                Err((_, true)) if attempts < 3 => attempts += 1,
                Err((e, _)) => return Err(e),
            }
        }
    }

    async fn begin_schedules(&self, leadership: &Leadership, jobs: &[&str], at: DateTime<Utc>) {
        // One transaction per chunk, under this term; within it, one
        // conditional put per job, so a job that fired meanwhile keeps its
        // tick. Chunks stay under etcd's default limit of 128 operations.
        for chunk in jobs.chunks(50) {
            let puts: Vec<TxnOp> = chunk
                .iter()
                .map(|job| {
                    let key = self.keys.last(job);
                    let last = LastTick {
                        tick: at,
                        term: leadership.term,
                        run_id: String::new(),
                    };
                    TxnOp::txn(
                        Txn::new()
                            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                            .and_then([TxnOp::put(key, json(&last), None)]),
                    )
                })
                .collect();
            let txn = Txn::new()
                .when([Compare::create_revision(
                    self.keys.leader(),
                    CompareOp::Equal,
                    leadership.term as i64,
                )])
                .and_then(puts);
            let resp = match self.client.clone().txn(txn).await {
                Ok(r) if r.succeeded() => r,
                Ok(_) => return,
                Err(e) => {
                    tracing::debug!("could not write the jobs' first ticks: {e}");
                    return;
                }
            };
            let rev = resp.header().map_or(0, |h| h.revision());
            let mut cache = self.last.lock().expect("cache lock");
            for (job, r) in chunk.iter().zip(resp.op_responses()) {
                if matches!(r, TxnOpResponse::Txn(t) if t.succeeded()) {
                    cache.entry(job.to_string()).or_insert((at, rev));
                } else {
                    // Fired meanwhile: the next claim reads it afresh.
                    cache.remove(*job);
                }
            }
        }
    }

    fn take_back(&self, token: &str) {
        let mut words = token.split(' ');
        let (Some("lease"), Some(id), Some(at)) = (words.next(), words.next(), words.next()) else {
            return;
        };
        let (Ok(id), Some(at)) = (
            id.parse::<i64>(),
            at.parse().ok().and_then(DateTime::from_timestamp_millis),
        ) else {
            return;
        };
        self.give_back_lease(id, at);
    }

    async fn prepare(&self, fires: usize) {
        // Spares too old to hand out as they are, but surely still alive,
        // are renewed (a keepalive, not a write) rather than replaced.
        let now = Utc::now();
        let use_by = self.spare_lease_max_age() / 2;
        let (fresh, stale): (Vec<_>, Vec<_>) = {
            let mut spare = self.spare.lock().expect("spare lease lock");
            spare.retain(|(_, at)| now - *at < self.spare_lease_keep());
            std::mem::take(&mut *spare)
                .into_iter()
                .partition(|(_, at)| now - *at < use_by)
        };
        let renewed = futures_util::future::join_all(
            stale
                .into_iter()
                .map(|(lease, _)| async move { Some((lease, self.renew_lease(lease).await?)) }),
        )
        .await;
        let ready = fresh.len() + renewed.iter().flatten().count();
        let wanted = fires.min(MAX_SPARE_LEASES).saturating_sub(ready);
        let granted =
            futures_util::future::join_all((0..wanted).map(|_| self.grant_run_lease())).await;
        let mut spare = self.spare.lock().expect("spare lease lock");
        spare.extend(fresh);
        spare.extend(renewed.into_iter().flatten());
        spare.extend(granted.into_iter().flatten());
        spare.sort_by_key(|(_, at)| *at);
    }

    async fn record(&self, record: &RunRecord) -> Result<bool> {
        // Twice more at once: each retry follows a claim or entry of this
        // term that moved the job's last tick meanwhile.
        for _ in 0..3 {
            if let Some(written) = self.write_entry(record, false).await? {
                return Ok(written);
            }
        }
        // Not a final answer: the caller tries again later.
        Err(CoordError::Etcd(
            "write record: the job's last tick kept moving under it".into(),
        ))
    }

    fn pause_of(&self, job: &str) -> Option<crate::coordination::Pause> {
        self.cached_pause(job)
    }

    fn claimed_skip(&self, job: &str, tick: DateTime<Utc>) -> Option<String> {
        self.claimed_skip_of(job, tick, false).map(|s| s.run_id)
    }

    async fn record_claimed(&self, record: &RunRecord) -> Result<bool> {
        Ok(self.write_entry(record, true).await?.unwrap_or(false))
    }

    async fn reap_lost(&self, _job: &str) -> Vec<RunRecord> {
        // The leader records a run as lost once its marker expires (see
        // `record_lost_runs`); until then its lease may still be renewed.
        Vec::new()
    }

    async fn job_activity(&self, job: &str) -> Result<Activity> {
        let resp = self
            .client
            .clone()
            .get(
                self.keys.actives(job),
                Some(GetOptions::new().with_prefix().with_limit(1)),
            )
            .await
            .map_err(etcd_err("look up active runs"))?;
        Ok(match resp.kvs().first() {
            None => Activity::Idle,
            Some(kv) => Activity::Active(parse::<RunRecord>(kv).ok().map(Box::new)),
        })
    }

    async fn cancel_run(&self, run: &RunRecord, why: &str) -> Result<Cancel> {
        self.cancel(&run.key.job, &run.key.run_id, why).await
    }

    fn assignments(
        &self,
        instance: &str,
    ) -> Option<mpsc::Receiver<crate::coordination::Assignment>> {
        Some(self.watch_assignments(instance))
    }

    async fn take_assignment(&self, a: &crate::coordination::Assignment) -> Result<Option<Hold>> {
        self.take(a).await
    }

    fn retry_lost_with(&self, retry: crate::coordination::LostRetry) {
        *self.lost_retry.lock().expect("lost retry lock") = Some(retry);
    }

    async fn leave(&self) {
        self.mark_leaving().await;
    }

    async fn finish_request(&self, run_id: &str) {
        let _ = self
            .client
            .clone()
            .delete(self.keys.request(run_id), None)
            .await;
    }

    async fn announce_config(&self, instance: &str, hash: &str) -> Result<()> {
        *self.config_hash.lock().expect("hash lock") = Some(hash.to_string());
        // Held across the put so a session starting meanwhile cannot
        // register the old hash after it.
        let mut guard = self.session.lock().await;
        let Some(s) = guard.as_mut().filter(|s| *s.alive.borrow()) else {
            // The next session registers with the new hash.
            return Ok(());
        };
        let mut member = s.member.lock().expect("member lock").clone();
        member.config_hash = Some(hash.to_string());
        member.clock = Some(Utc::now());
        self.client
            .clone()
            .put(
                self.keys.member(instance),
                json(&member),
                Some(PutOptions::new().with_lease(s.lease)),
            )
            .await
            .map_err(etcd_err("announce config"))?;
        *s.member.lock().expect("member lock") = member;
        Ok(())
    }

    fn backend_spec(&self) -> BackendSpec {
        BackendSpec::Etcd(self.cfg.clone())
    }

    async fn shutdown(&self) {
        if let Some(s) = self.session.lock().await.take() {
            // Revoking the session lease removes the member key at once.
            let _ = self.client.clone().lease_revoke(s.lease).await;
        }
    }
}
