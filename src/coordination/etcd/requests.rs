//! `bgsched trigger` in a cluster: a request under `P/requests/` that the
//! leader takes (claiming the run like any scheduled fire), and the record
//! the run then leaves.

use super::*;
use std::collections::BTreeMap;
use std::future::Future;

/// How asking the leader to run a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// A leader took the request.
    Taken,
    /// No leader took it in time; it was withdrawn.
    NoLeader,
    /// Interrupted before any leader took it; it was withdrawn.
    Withdrawn,
    /// Interrupted, but a leader had already taken it: the run goes on.
    TakenThenInterrupted,
}

/// What became of a request a leader took.
#[derive(Debug)]
pub enum Seen {
    Recorded(Box<RunRecord>),
    /// Not recorded yet (asked not to wait).
    NotYet,
    /// Neither running nor recorded for two lease TTLs: its leader died
    /// before starting it.
    Vanished,
}

impl Etcd {
    /// Ask the leader to run `job` as `run_id`: the request is bound to a
    /// lease of `timeout` plus a margin, so an unanswered request never
    /// fires later behind the requester's back. Waits until a leader takes
    /// it, `timeout` passes, or `interrupted` completes; withdraws it unless
    /// it was taken.
    pub async fn request_run(
        &self,
        job: &str,
        run_id: &str,
        (params, placement): (BTreeMap<String, String>, crate::coordination::Where),
        instance: String,
        timeout: Duration,
        interrupted: impl Future<Output = ()>,
    ) -> Result<Asked> {
        let keys = self.keys();
        let mut client = self.client();
        let req = TriggerRequest {
            run_id: run_id.to_string(),
            job: job.to_string(),
            requested_by: instance,
            requested_at: Utc::now(),
            params,
            at: None,
            upstream: None,
            placement,
            first_attempt: None,
        };
        let lease = client
            .lease_grant(timeout.as_secs().max(1) as i64 + 5, None)
            .await
            .map_err(unreachable)?
            .id();
        client
            .put(
                keys.request(run_id),
                json(&req),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(unreachable)?;
        let deadline = Instant::now() + timeout;
        let taken = async {
            loop {
                let pending = client
                    .get(keys.request(run_id), None)
                    .await
                    .map_err(unreachable)?;
                if pending.kvs().is_empty() {
                    return Ok(true);
                }
                if Instant::now() >= deadline {
                    return Ok(false);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let waited = tokio::select! {
            r = taken => r.map(|taken| if taken { Asked::Taken } else { Asked::NoLeader }),
            () = interrupted => Ok(Asked::Withdrawn),
        };
        let mut client = self.client();
        let waited = match waited {
            Ok(w) => w,
            Err(e) => {
                // Do not leave a request behind that could still fire later.
                let _ = client.delete(keys.request(run_id), None).await;
                return Err(e);
            }
        };
        if waited != Asked::Taken {
            // Withdraw, unless the leader took it in the meantime.
            let withdrawn = client
                .delete(keys.request(run_id), None)
                .await
                .map_err(unreachable)?;
            if withdrawn.deleted() > 0 {
                let _ = client.lease_revoke(lease).await;
                return Ok(waited);
            }
            if waited == Asked::Withdrawn {
                return Ok(Asked::TakenThenInterrupted);
            }
        }
        let _ = client.lease_revoke(lease).await;
        Ok(Asked::Taken)
    }

    /// Wait for the record of run `run_id` of `job`, taken by a leader.
    /// The claim that takes the request also writes the run's marker, or,
    /// for a skip, the leader records it right after; so with `detach`
    /// this waits until one of the two exists, and a run that is marked
    /// but not recorded yet is [`Seen::NotYet`].
    pub async fn wait_for_record(&self, job: &str, run_id: &str, detach: bool) -> Result<Seen> {
        let keys = self.keys();
        let mut client = self.client();
        let mut unseen_since = None;
        loop {
            let hist = client
                .get(keys.history(job, run_id), None)
                .await
                .map_err(unreachable)?;
            if let Some(kv) = hist.kvs().first() {
                let rec: RunRecord = parse(kv)?;
                if detach && rec.outcome != Outcome::Skipped {
                    return Ok(Seen::NotYet);
                }
                return Ok(Seen::Recorded(Box::new(rec)));
            }
            let active = client
                .get(keys.active(job, run_id), None)
                .await
                .map_err(unreachable)?;
            // A queued run waits under `P/queued/<job>` instead.
            let queued = client
                .get(keys.queued(job), None)
                .await
                .map_err(unreachable)?;
            let waits = queued
                .kvs()
                .first()
                .and_then(|kv| parse::<RunRecord>(kv).ok())
                .is_some_and(|r| r.key.run_id == run_id);
            let alive = waits || !active.kvs().is_empty();
            if detach && alive {
                return Ok(Seen::NotYet);
            }
            if alive {
                unseen_since = None;
            } else {
                // Between acceptance and the marker there is no gap (one
                // transaction), so a run that is neither active nor recorded
                // for two lease TTLs lost its leader before it started.
                let since = *unseen_since.get_or_insert_with(Instant::now);
                if since.elapsed() > self.config().cluster.lease_ttl * 2 {
                    return Ok(Seen::Vanished);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Etcd {
    /// Put the stop key of run `run_id`, bound to the lease of its running
    /// marker: it goes away with the run, however the run ends.
    pub async fn cancel(&self, job: &str, run_id: &str, why: &str) -> Result<Cancel> {
        let keys = self.keys();
        let mut client = self.client();
        let marker = client
            .get(keys.active(job, run_id), None)
            .await
            .map_err(unreachable)?;
        let Some(kv) = marker.kvs().first() else {
            return Ok(Cancel::NotRunning);
        };
        let put = Txn::new()
            .when([Compare::create_revision(
                keys.active(job, run_id),
                CompareOp::Equal,
                kv.create_revision(),
            )])
            .and_then([TxnOp::put(
                keys.stop_request(job, run_id),
                why,
                Some(PutOptions::new().with_lease(kv.lease())),
            )]);
        let done = client.txn(put).await.map_err(unreachable)?;
        Ok(if done.succeeded() {
            Cancel::Asked
        } else {
            Cancel::NotRunning
        })
    }
}

/// A request etcd did not answer: exit 69, as for an unreachable etcd.
fn unreachable(e: etcd_client::Error) -> CoordError {
    CoordError::Unreachable(format!("etcd: {}", in_words(&e)))
}

/// How often the leader looks for scheduled runs it has not seen yet.
const SCHEDULED_LOOK_EVERY: Duration = Duration::from_secs(1);

impl Etcd {
    /// Keep `req` (with its `at`) under `P/scheduled/` until it is due.
    pub async fn schedule_run(&self, req: &TriggerRequest) -> Result<()> {
        self.client()
            .put(self.keys().scheduled(&req.run_id), json(req), None)
            .await
            .map_err(unreachable)?;
        Ok(())
    }

    /// Take the run at a later time `run_id` away before its time and
    /// record it cancelled (`record` makes the entry of the request), in
    /// one transaction against the leader's turning it into a request;
    /// `None` if it is not waiting for its time (any more).
    pub async fn cancel_scheduled(
        &self,
        run_id: &str,
        record: impl FnOnce(&TriggerRequest) -> RunRecord,
    ) -> Result<Option<RunRecord>> {
        let keys = self.keys();
        let mut client = self.client();
        let key = keys.scheduled(run_id);
        let got = client.get(key.clone(), None).await.map_err(unreachable)?;
        let Some(kv) = got.kvs().first() else {
            return Ok(None);
        };
        let rec = record(&parse::<TriggerRequest>(kv)?);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                kv.mod_revision(),
            )])
            .and_then([
                TxnOp::delete(key, None),
                TxnOp::put(keys.history(&rec.key.job, run_id), json(&rec), None),
            ]);
        let done = client.txn(txn).await.map_err(unreachable)?;
        Ok(done.succeeded().then_some(rec))
    }

    /// The one-off runs not claimed yet: scheduled, or due and waiting.
    pub async fn scheduled_runs(&self) -> Result<Vec<TriggerRequest>> {
        let mut client = self.client();
        let mut all = Vec::new();
        for prefix in [self.keys().scheduleds(), self.keys().requests()] {
            let resp = client
                .get(prefix, Some(GetOptions::new().with_prefix()))
                .await
                .map_err(unreachable)?;
            all.extend(
                resp.kvs()
                    .iter()
                    .filter_map(|kv| parse::<TriggerRequest>(kv).ok())
                    .filter(|r| r.at.is_some()),
            );
        }
        all.sort_by(|a, b| (a.at, &a.run_id).cmp(&(b.at, &b.run_id)));
        Ok(all)
    }

    /// The leader's side: at its time, each scheduled run becomes a
    /// request (one transaction, so only once), which the leader then
    /// claims like any other: the claim takes the request away, so the
    /// run fires once, whichever leader gets to it.
    pub(super) fn serve_scheduled(&self) -> tokio::task::JoinHandle<()> {
        let mut client = self.client.clone();
        let keys = self.keys.clone();
        tokio::spawn(async move {
            loop {
                let now = Utc::now();
                let mut next =
                    now + chrono::Duration::from_std(SCHEDULED_LOOK_EVERY).unwrap_or_default();
                if let Ok(resp) = client
                    .get(keys.scheduleds(), Some(GetOptions::new().with_prefix()))
                    .await
                {
                    for kv in resp.kvs() {
                        let Ok(req) = parse::<TriggerRequest>(kv) else {
                            continue;
                        };
                        match req.at {
                            Some(at) if at > now => next = next.min(at),
                            _ => {
                                let sched = keys.scheduled(&req.run_id);
                                let txn = Txn::new()
                                    .when([Compare::mod_revision(
                                        sched.clone(),
                                        CompareOp::Equal,
                                        kv.mod_revision(),
                                    )])
                                    .and_then([
                                        TxnOp::delete(sched, None),
                                        TxnOp::put(keys.request(&req.run_id), json(&req), None),
                                    ]);
                                if let Err(e) = client.txn(txn).await {
                                    tracing::warn!(job = %req.job, run_id = %req.run_id, "could not hand a scheduled run to the leader yet: {}", in_words(&e));
                                }
                            }
                        }
                    }
                }
                let wait = (next - Utc::now()).to_std().unwrap_or_default();
                tokio::time::sleep(wait.min(SCHEDULED_LOOK_EVERY)).await;
            }
        })
    }
}
