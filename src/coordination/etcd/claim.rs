//! The claim of one tick or request: one transaction, and reading it back
//! when its answer was lost.

use super::*;
use crate::coordination::{GroupSeat, Seat};
use crate::model::RunKey;

/// Which claim: job, request, and for a scheduled tick the tick (a
/// request's retries each compute a new manual tick; its id is its own).
pub(super) type UncertainKey = (String, Option<String>, Option<DateTime<Utc>>);

pub(super) fn uncertain_key(req: &ClaimRequest<'_>) -> UncertainKey {
    (
        req.job.to_string(),
        req.request.map(str::to_string),
        req.request.is_none().then_some(req.tick),
    )
}

/// What the read-back of a claim found: its turn and group place, or why
/// it did not start.
pub(super) type Settled = std::result::Result<(Turn, Option<u32>), ClaimRejected>;

/// A claim transaction with its answer lost.
pub(super) struct Uncertain {
    pub(super) run_id: String,
    pub(super) lease: i64,
    pub(super) granted_at: DateTime<Utc>,
    /// The member it placed the run on, and that member's process.
    pub(super) executor: String,
    pub(super) executor_process: Option<String>,
}

/// Moving `P/last/<job>` to `last`: the put, and the compare that it is
/// still at the `cached` revision (absent if nothing is cached).
pub(super) fn move_last(
    key: &str,
    cached: Option<(DateTime<Utc>, i64)>,
    last: &LastTick,
) -> (Compare, TxnOp) {
    (
        Compare::mod_revision(key, CompareOp::Equal, cached.map_or(0, |c| c.1)),
        TxnOp::put(key, json(last), None),
    )
}

/// The entry a claim transaction wrote for the tick it skipped.
#[derive(Clone)]
pub(super) struct ClaimedSkip {
    pub(super) run_id: String,
    /// Its mod revision: the one write that may replace it compares it.
    pub(super) rev: i64,
    /// When the claim was answered, to forget entries nobody replaced.
    at: DateTime<Utc>,
}

/// The reasons of the entries a claim transaction writes for the ticks it
/// skips (the scheduler's entry, naming the active run, replaces them).
const SKIPPED_RUNNING: &str = "already running";
const SKIPPED_WAITING: &str = "a run is already waiting for the active one to end";

/// Take the first free place of `group` (one nested transaction per
/// place, as etcd has no "count below"): each level runs `then` and puts
/// `seat` at its place, bound to `lease`; with every place held, `full`.
/// A level's `then` and the next level share keys, which etcd allows
/// between the two branches of one transaction.
pub(super) fn seat_chain(
    keys: &Keys,
    group: &crate::config::Group,
    lease: i64,
    seat: &RunRecord,
    then: &dyn Fn(u32) -> Vec<TxnOp>,
    full: Vec<TxnOp>,
) -> Txn {
    let mut otherwise = full;
    let mut level = Txn::new().and_then(otherwise.clone());
    for index in (0..group.limit).rev() {
        let key = keys.seat(&group.name, index);
        let mut ops = then(index);
        ops.push(TxnOp::put(
            key.clone(),
            json(seat),
            Some(PutOptions::new().with_lease(lease)),
        ));
        level = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then(ops)
            .or_else(otherwise);
        otherwise = vec![TxnOp::txn(level.clone())];
    }
    level
}

/// Which place a [`seat_chain`] took (`Ok`), or the responses of its
/// `full` branch. `resp` is the transaction that holds the chain.
pub(super) fn seat_taken(
    resp: etcd_client::TxnResponse,
) -> std::result::Result<u32, Vec<TxnOpResponse>> {
    match resp.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Txn(t) => Some(t),
        _ => None,
    }) {
        Some(t) => seat_taken_from(t, 0),
        None => Err(Vec::new()),
    }
}

/// [`seat_taken`] from the chain's level `index`, answered as `level`.
fn seat_taken_from(
    level: etcd_client::TxnResponse,
    mut index: u32,
) -> std::result::Result<u32, Vec<TxnOpResponse>> {
    let mut level = Some(level);
    while let Some(t) = level {
        if t.succeeded() {
            return Ok(index);
        }
        let mut responses = t.op_responses();
        match responses
            .iter()
            .position(|r| matches!(r, TxnOpResponse::Txn(_)))
        {
            Some(i) => {
                let TxnOpResponse::Txn(next) = responses.swap_remove(i) else {
                    unreachable!("position matched a Txn")
                };
                level = Some(next);
                index += 1;
            }
            None => return Err(responses),
        }
    }
    Err(Vec::new())
}

/// Which place a [`seat_chain`] sent as a transaction of its own took.
pub(super) fn seat_taken_at_top(resp: etcd_client::TxnResponse) -> std::result::Result<u32, ()> {
    if resp.succeeded() {
        return Ok(0);
    }
    let next = resp.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Txn(t) => Some(t),
        _ => None,
    });
    match next {
        Some(t) => seat_taken_from(t, 1).map_err(|_| ()),
        None => Err(()),
    }
}

/// The runs a `full` branch's read of the group's places found.
fn holders_of(responses: Vec<TxnOpResponse>) -> Vec<RunRecord> {
    responses
        .into_iter()
        .filter_map(|r| match r {
            TxnOpResponse::Get(mut g) => Some(g.take_kvs()),
            _ => None,
        })
        .flatten()
        .filter_map(|kv| parse::<RunRecord>(&kv).ok())
        .collect()
}

/// The tick stored in a `P/last/<job>` key. An unreadable value must not
/// stop the job for good: treat it as "long ago" (the claim's revision
/// check still protects the tick) and say so loudly.
pub(super) fn last_tick_of(kv: &KeyValue) -> DateTime<Utc> {
    match parse::<LastTick>(kv) {
        Ok(last) => last.tick,
        Err(e) => {
            tracing::error!("{e}; treating it as never fired");
            DateTime::<Utc>::MIN_UTC
        }
    }
}

impl Etcd {
    pub(super) async fn claim_once(
        &self,
        leadership: &Leadership,
        req: &ClaimRequest<'_>,
        run_id: &str,
    ) -> Result<Claim, (ClaimRejected, bool)> {
        let term = leadership.term;
        let backend = |e: CoordError| (ClaimRejected::Backend(e), false);
        // An earlier attempt of this claim went unanswered: find out first
        // whether it went through.
        let earlier = self.take_uncertain(req, run_id);
        let earlier_sent = earlier.is_some();
        if let Some(u) = &earlier {
            match self.settle(req, run_id).await {
                Ok(Some(found)) => {
                    return self.settled(req.group, found, term, run_id, &[u], req.instance)
                }
                Ok(None) => {}
                Err(e) => {
                    self.keep_uncertain(req, earlier.expect("matched Some"));
                    return Err(backend(etcd_err("claim")(e)));
                }
            }
        }
        let cached = self.last.lock().expect("cache lock").get(req.job).copied();
        if req.advances_schedule {
            if let Some((last, _)) = cached {
                if last >= req.tick {
                    return Err((ClaimRejected::AlreadyFired(req.tick), false));
                }
            }
        }
        // The earlier attempt's lease, while young enough to trust: should
        // that attempt commit after all, it wrote the same marker, bound to
        // the same lease.
        // Where the run executes: an unanswered earlier attempt's choice
        // (it may have committed with it).
        let me = req.instance;
        let (executor, executor_process) = match &earlier {
            Some(u) => (u.executor.clone(), u.executor_process.clone()),
            None => match self.placement.choose(me, req.run_on, req.placement, run_id) {
                Ok(m) => m,
                Err(why) => return Err((ClaimRejected::NoMember(why), false)),
            },
        };
        let young = Utc::now() - self.spare_lease_max_age();
        let (lease, granted_at) = match &earlier {
            Some(u) if u.granted_at > young => (u.lease, u.granted_at),
            _ => match self.take_spare_lease() {
                Some(spare) => spare,
                None => match self.grant_run_lease().await {
                    Ok(lease) => lease,
                    Err(e) => {
                        if let Some(u) = earlier {
                            self.keep_uncertain(req, u);
                        }
                        return Err(backend(e));
                    }
                },
            },
        };
        let this = Uncertain {
            run_id: run_id.to_string(),
            lease,
            granted_at,
            executor: executor.clone(),
            executor_process: executor_process.clone(),
        };
        // The run's marker and a skip's entry name the same claim.
        let key = RunKey {
            run_id: run_id.to_string(),
            job: req.job.to_string(),
            tick: req.tick,
            trigger: req.trigger,
            instance: executor.clone(),
            term,
        };
        let mut marker = RunRecord::not_run(key.clone(), Outcome::Running, String::new());
        marker.upstream = req.upstream.cloned();
        // A retry of a lost run that is lost again before its supervisor
        // rewrites the marker still counts its attempt.
        marker.attempt = req.first_attempt.unwrap_or(1);
        marker.ended_at = None;
        marker.duration_ms = None;
        marker.reason = None;
        // A skipped scheduled tick's entry goes into the claim itself: a
        // leader killed right after the claim would otherwise leave the
        // tick consumed with no trace. It names no active run (the
        // transaction cannot); the scheduler's entry, written moments
        // later under the same run id, replaces it with the one it found.
        // (A trigger's requester is waiting and reads the entry at once, so
        // its skip is written by the scheduler alone.)
        let skip_entry = |reason: &str| {
            let entry = RunRecord::not_run(key.clone(), Outcome::Skipped, reason.to_string());
            TxnOp::put(self.keys.history(req.job, run_id), json(&entry), None)
        };
        // A service's start found it running elsewhere: nothing to record
        // (it is asked again every second while it runs there).
        // (A run after an upstream one is like a tick: nobody waits for
        // it, and its skip must survive the leader.)
        let own_entry = (req.request.is_none() || req.trigger == crate::model::Trigger::After)
            && req.trigger != crate::model::Trigger::Service;
        let leader_key = self.keys.leader();
        let last_key = self.keys.last(req.job);
        let actives = self.keys.actives(req.job);
        let marker_key = self.keys.active(req.job, run_id);

        // Outer: is this the leader, is the tick (or request) still unclaimed?
        // If so the tick is consumed whatever happens next. Inner: may a run
        // start under the overlap policy? A skipped tick thus still counts
        // as fired, so no later leader catches it up.
        let mut when = vec![Compare::create_revision(
            leader_key.clone(),
            CompareOp::Equal,
            term as i64,
        )];
        let mut ops = Vec::new();
        if req.advances_schedule {
            let last = LastTick {
                tick: req.tick,
                term,
                run_id: run_id.to_string(),
            };
            let (unchanged, put) = move_last(&last_key, cached, &last);
            when.push(unchanged);
            ops.push(put);
        }
        if let Some(id) = req.request {
            when.push(Compare::create_revision(
                self.keys.request(id),
                CompareOp::Greater,
                0,
            ));
            ops.push(TxnOp::delete(self.keys.request(id), None));
        }
        let queued_key = self.keys.queued(req.job);
        let put_marker = |key: &str| {
            TxnOp::put(
                key.to_string(),
                json(&marker),
                Some(PutOptions::new().with_lease(lease)),
            )
        };
        // Placed on another member: the branch that starts (or queues) the
        // run also tells that member, in the same transaction.
        let remote = executor != me;
        let assign = |turn: Turn, seat: Option<u32>| -> Vec<TxnOp> {
            if !remote {
                return Vec::new();
            }
            let a = crate::coordination::Assignment {
                key: key.clone(),
                turn,
                group: GroupSeat::of(
                    req.group,
                    seat.map(|index| Seat { index, lock: None }).as_ref(),
                ),
                params: req.params.cloned().unwrap_or_default(),
                upstream: req.upstream.cloned(),
                first_attempt: req.first_attempt,
                lease,
                leader: me.to_string(),
                process: executor_process.clone().unwrap_or_default(),
            };
            vec![TxnOp::put(
                self.keys.assign(&executor, run_id),
                json(&a),
                Some(PutOptions::new().with_lease(lease)),
            )]
        };
        let with_marker = |seat: Option<u32>| -> Vec<TxnOp> {
            std::iter::once(put_marker(&marker_key))
                .chain(assign(Turn::Now, seat))
                .collect()
        };
        let get_active = || {
            TxnOp::get(
                actives.clone(),
                Some(GetOptions::new().with_prefix().with_limit(1)),
            )
        };
        let no_active =
            || Compare::create_revision(actives.clone(), CompareOp::Equal, 0).with_prefix();
        let no_queued = || Compare::create_revision(queued_key.clone(), CompareOp::Equal, 0);
        // In a group, the start also takes a place of the group; with all
        // held, a skipping job skips (its entry in the claim, as for a
        // running job) and a queueing one starts waiting for a place.
        let group_full = req.group.map(|g| {
            format!(
                "group {} full: all its {} place(s) are held",
                g.name, g.limit
            )
        });
        let start = |full: Vec<TxnOp>| -> Vec<TxnOp> {
            match req.group {
                None => with_marker(None),
                Some(g) => vec![TxnOp::txn(seat_chain(
                    &self.keys,
                    g,
                    lease,
                    &marker,
                    &|index| with_marker(Some(index)),
                    full,
                ))],
            }
        };
        let full_skip = || -> Vec<TxnOp> {
            let Some(g) = req.group else {
                return Vec::new();
            };
            [TxnOp::get(
                self.keys.seats(&g.name),
                Some(GetOptions::new().with_prefix()),
            )]
            .into_iter()
            .chain(own_entry.then(|| skip_entry(group_full.as_deref().unwrap_or_default())))
            .collect()
        };
        let inner = match req.overlap {
            Overlap::Allow => Txn::new().and_then(start(full_skip())),
            Overlap::Skip => Txn::new()
                .when([no_active()])
                .and_then(start(full_skip()))
                .or_else(
                    [get_active()]
                        .into_iter()
                        .chain(own_entry.then(|| skip_entry(SKIPPED_RUNNING)))
                        .collect::<Vec<_>>(),
                ),
            // Start now only if nothing runs and nothing waits (a run
            // waiting for its turn must not be overtaken); else take the
            // single waiting place if it is free.
            Overlap::Queue | Overlap::Replace => Txn::new()
                .when([no_active(), no_queued()])
                .and_then(start(with_marker(None)))
                .or_else([TxnOp::txn(
                    Txn::new()
                        .when([no_queued()])
                        .and_then(
                            [put_marker(&queued_key), get_active()]
                                .into_iter()
                                .chain(assign(
                                    match req.overlap {
                                        Overlap::Replace => Turn::Replace { active: None },
                                        _ => Turn::Queued,
                                    },
                                    None,
                                ))
                                .collect::<Vec<_>>(),
                        )
                        .or_else(
                            [get_active()]
                                .into_iter()
                                .chain(own_entry.then(|| skip_entry(SKIPPED_WAITING)))
                                .collect::<Vec<_>>(),
                        ),
                )]),
        };
        ops.push(TxnOp::txn(inner));
        let txn = Txn::new().when(when).and_then(ops).or_else([
            TxnOp::get(leader_key, None),
            TxnOp::get(last_key.clone(), None),
            TxnOp::get(self.keys.request(req.request.unwrap_or("-")), None),
        ]);
        let claim = |turn, seat: Option<u32>| Claim {
            run_id: run_id.to_string(),
            term,
            hold: Hold::Lease {
                id: lease,
                granted_at,
            },
            turn,
            seat: seat.map(|index| Seat { index, lock: None }),
            group: GroupSeat::of(
                req.group,
                seat.map(|index| Seat { index, lock: None }).as_ref(),
            ),
            placed_on: remote.then(|| executor.clone()),
        };
        // The lease grant may have taken a while: the self-fencing rule is
        // about when the claim is sent.
        if !leadership.is_valid() {
            // The earlier attempt may still commit, bound to its lease.
            match earlier {
                Some(u) => {
                    if u.lease != lease {
                        self.give_back_lease(lease, granted_at);
                    }
                    self.keep_uncertain(req, u);
                }
                None => self.give_back_lease(lease, granted_at),
            }
            return Err((leadership.refusal(), false));
        }
        let (resp, rev) = match self
            .claim_batches
            .txn(
                &self.client,
                txn,
                req.group.map(|g| (g.name.as_str(), g.limit)),
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                // The transaction may have committed with its answer lost,
                // or may commit yet: read back what it would have written.
                // Until that is known, the next attempt reuses its run id
                // and lease.
                return match self.settle(req, run_id).await {
                    Ok(Some(found)) => {
                        self.settled(req.group, found, term, run_id, &[&this], req.instance)
                    }
                    Ok(None) => {
                        self.keep_uncertain(req, this);
                        Err(backend(e))
                    }
                    Err(_) => {
                        self.forget_last(req.job);
                        self.keep_uncertain(req, this);
                        Err(backend(e))
                    }
                };
            }
        };
        if resp.succeeded() {
            // `rev`: of every key this transaction wrote (a skip's entry too).
            if req.advances_schedule {
                self.last
                    .lock()
                    .expect("cache lock")
                    .insert(req.job.to_string(), (req.tick, rev));
            }
            let inner = resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Txn(t) => Some(t),
                _ => None,
            });
            let Some(inner) = inner else {
                return Err(backend(CoordError::Etcd(
                    "unexpected claim response".into(),
                )));
            };
            if inner.succeeded() {
                let Some(g) = req.group else {
                    return Ok(claim(Turn::Now, None));
                };
                return match seat_taken(inner) {
                    Ok(index) => Ok(claim(Turn::Now, Some(index))),
                    // Started without a place: it waits for one.
                    Err(_) if matches!(req.overlap, Overlap::Queue | Overlap::Replace) => {
                        Ok(claim(Turn::Now, None))
                    }
                    Err(full) => {
                        self.give_back_lease(lease, granted_at);
                        self.skipped_by_claim(req, run_id, rev);
                        Err((
                            ClaimRejected::GroupFull {
                                group: g.name.clone(),
                                holders: holders_of(full),
                            },
                            false,
                        ))
                    }
                };
            }
            let first_active = |responses: Vec<TxnOpResponse>| {
                responses
                    .into_iter()
                    .find_map(|r| match r {
                        TxnOpResponse::Get(mut g) => g.take_kvs().into_iter().next(),
                        _ => None,
                    })
                    .and_then(|kv| parse::<RunRecord>(&kv).ok())
                    .map(Box::new)
            };
            let mut responses = inner.op_responses();
            let waiting = responses
                .iter()
                .position(|r| matches!(r, TxnOpResponse::Txn(_)));
            if let Some(i) = waiting {
                let TxnOpResponse::Txn(place) = responses.swap_remove(i) else {
                    unreachable!("position matched a Txn")
                };
                let took_place = place.succeeded();
                let active = first_active(place.op_responses());
                if took_place {
                    return Ok(claim(
                        match req.overlap {
                            Overlap::Replace => Turn::Replace { active },
                            _ => Turn::Queued,
                        },
                        None,
                    ));
                }
                self.give_back_lease(lease, granted_at);
                self.skipped_by_claim(req, run_id, rev);
                return Err((ClaimRejected::AlreadyQueued(active), false));
            }
            self.give_back_lease(lease, granted_at);
            self.skipped_by_claim(req, run_id, rev);
            return Err((ClaimRejected::StillRunning(first_active(responses)), false));
        }
        let gets = kvs_of(resp);
        let [leader, last, request] = <[Vec<KeyValue>; 3]>::try_from(gets)
            .map_err(|_| backend(CoordError::Etcd("unexpected claim response".into())))?;
        // The tick or request is taken, by an earlier attempt of this very
        // claim whose answer was lost (it wrote our run id): find out how
        // that attempt went.
        let ours = if req.advances_schedule {
            last.first()
                .and_then(|kv| parse::<LastTick>(kv).ok())
                .is_some_and(|l| l.tick == req.tick && l.run_id == run_id)
        } else {
            earlier_sent && request.is_empty()
        };
        if ours {
            return match self.settle(req, run_id).await {
                Ok(Some(found)) => {
                    self.settled(req.group, found, term, run_id, &[&this], req.instance)
                }
                _ => {
                    self.forget_last(req.job);
                    self.keep_uncertain(req, this);
                    Err(backend(CoordError::Etcd(
                        "claim: an earlier attempt went through, but how is not known yet".into(),
                    )))
                }
            };
        }
        self.give_back_lease(lease, granted_at);
        if leader
            .first()
            .is_none_or(|kv| kv.create_revision() as u64 != term)
        {
            return Err((ClaimRejected::NotLeader, false));
        }
        if let Some(id) = req.request {
            if request.is_empty() {
                return Err((ClaimRejected::RequestGone(id.to_string()), false));
            }
        }
        if req.advances_schedule {
            let seen = last.first().map(|kv| (last_tick_of(kv), kv.mod_revision()));
            let mut cache = self.last.lock().expect("cache lock");
            match seen {
                Some(s) => cache.insert(req.job.to_string(), s),
                None => cache.remove(req.job),
            };
            if seen.is_some_and(|(t, _)| t >= req.tick) {
                return Err((ClaimRejected::AlreadyFired(req.tick), false));
            }
            // Our cached revision was stale, nothing else: try again.
            return Err((ClaimRejected::AlreadyFired(req.tick), true));
        }
        Err(backend(CoordError::Etcd(
            "claim failed for no known reason".into(),
        )))
    }

    /// Read back whether a claim sent as `run_id` committed: `None` if it
    /// did not (or not yet), else its turn or refusal and the lease its
    /// marker is bound to. One read transaction, so the keys agree.
    pub(super) async fn settle(
        &self,
        req: &ClaimRequest<'_>,
        run_id: &str,
    ) -> std::result::Result<Option<(Settled, i64)>, etcd_client::Error> {
        let get = |key: String| TxnOp::get(key, None);
        let seats = req
            .group
            .map_or_else(|| self.keys.seats("-"), |g| self.keys.seats(&g.name));
        let read = Txn::new().and_then([
            get(self.keys.active(req.job, run_id)),
            get(self.keys.queued(req.job)),
            get(self.keys.last(req.job)),
            get(self.keys.request(req.request.unwrap_or("-"))),
            TxnOp::get(
                self.keys.actives(req.job),
                Some(GetOptions::new().with_prefix().with_limit(1)),
            ),
            get(self.keys.history(req.job, run_id)),
            TxnOp::get(seats, Some(GetOptions::new().with_prefix())),
        ]);
        let resp = self.client.clone().txn(read).await?;
        let gets = kvs_of(resp);
        let Ok([marker, queued, last, request, active, history, seats]) =
            <[Vec<KeyValue>; 7]>::try_from(gets)
        else {
            return Ok(None);
        };
        if req.advances_schedule {
            let mut cache = self.last.lock().expect("cache lock");
            match last.first() {
                Some(kv) => {
                    cache.insert(req.job.to_string(), (last_tick_of(kv), kv.mod_revision()))
                }
                None => cache.remove(req.job),
            };
        }
        if let Some(kv) = marker.first() {
            // Its place, if it took one: the one bound to the same lease.
            let seat = seats
                .iter()
                .filter(|s| s.lease() == kv.lease())
                .find_map(|s| s.key_str().ok()?.rsplit('/').next()?.parse().ok());
            return Ok(Some((Ok((Turn::Now, seat)), kv.lease())));
        }
        let active = active
            .first()
            .and_then(|kv| parse::<RunRecord>(kv).ok())
            .map(Box::new);
        if let Some(kv) = queued.first() {
            if parse::<RunRecord>(kv).is_ok_and(|r| r.key.run_id == run_id) {
                let turn = match req.overlap {
                    Overlap::Replace => Turn::Replace { active },
                    _ => Turn::Queued,
                };
                return Ok(Some((Ok((turn, None)), kv.lease())));
            }
        }
        // Taken, but no marker and no waiting place of ours: the claim
        // committed as a skip under the overlap policy.
        let taken = if req.advances_schedule {
            last.first()
                .and_then(|kv| parse::<LastTick>(kv).ok())
                .is_some_and(|l| l.tick == req.tick && l.run_id == run_id)
        } else {
            req.request.is_some() && request.is_empty()
        };
        if !taken {
            return Ok(None);
        }
        // Or it claimed a run whose marker is gone already (expired while
        // unanswered): that run is recorded `lost` under its own id, so the
        // tick needs no other record.
        let own_skip_entry = history
            .first()
            .and_then(|kv| Some((parse::<RunRecord>(kv).ok()?, kv.mod_revision())))
            .filter(|(r, _)| r.outcome == Outcome::Skipped);
        let own_skip = own_skip_entry.as_ref().map(|(_, rev)| *rev);
        let group_full = own_skip_entry.as_ref().and_then(|(r, _)| {
            let g = req.group?;
            r.reason
                .as_deref()
                .is_some_and(|why| why.starts_with(&format!("group {} full", g.name)))
                .then(|| g.name.clone())
        });
        let ended = (!history.is_empty() && own_skip.is_none())
            || self
                .ended
                .list
                .lock()
                .expect("ended markers lock")
                .iter()
                .any(|(_, r)| r.key.run_id == run_id);
        let rejected = match req.overlap {
            _ if ended => ClaimRejected::Ended(run_id.to_string()),
            _ if group_full.is_some() => ClaimRejected::GroupFull {
                group: group_full.unwrap_or_default(),
                holders: seats.iter().filter_map(|kv| parse(kv).ok()).collect(),
            },
            Overlap::Allow => ClaimRejected::Ended(run_id.to_string()),
            // A scheduled skip writes its entry in the claim: without one,
            // the claim went through as a run whose marker has ended since
            // (its `lost` record may still be on its way).
            Overlap::Skip
                if (req.request.is_none() || req.trigger == crate::model::Trigger::After)
                    && own_skip.is_none() =>
            {
                ClaimRejected::Ended(run_id.to_string())
            }
            Overlap::Skip => ClaimRejected::StillRunning(active),
            Overlap::Queue | Overlap::Replace => ClaimRejected::AlreadyQueued(active),
        };
        if let Some(rev) = own_skip {
            self.skipped_by_claim(req, run_id, rev);
        }
        Ok(Some((Err(rejected), 0)))
    }

    /// The claim an earlier attempt made, from what `settle` found; `sent`
    /// are the leases that attempt may have used (one is bound to the
    /// marker; the others are free again).
    pub(super) fn settled(
        &self,
        group: Option<&crate::config::Group>,
        (found, bound): (Settled, i64),
        term: u64,
        run_id: &str,
        sent: &[&Uncertain],
        me: &str,
    ) -> std::result::Result<Claim, (ClaimRejected, bool)> {
        for u in sent.iter().filter(|u| u.lease != bound) {
            self.give_back_lease(u.lease, u.granted_at);
        }
        let (turn, seat) = found.map_err(|rejected| (rejected, false))?;
        // A lease of unknown age is not trusted: the run is refused at start.
        let granted_at = sent
            .iter()
            .find(|u| u.lease == bound)
            .map_or(DateTime::<Utc>::MIN_UTC, |u| u.granted_at);
        tracing::info!(run_id, "a claim whose answer was lost had gone through");
        // Every attempt of one claim places on the same member (a retry
        // reuses the first attempt's choice), whichever lease committed.
        let placed_on = sent.first().map(|u| u.executor.clone()).filter(|e| e != me);
        Ok(Claim {
            placed_on,
            run_id: run_id.to_string(),
            term,
            hold: Hold::Lease {
                id: bound,
                granted_at,
            },
            turn,
            seat: seat.map(|index| Seat { index, lock: None }),
            group: GroupSeat::of(group, seat.map(|index| Seat { index, lock: None }).as_ref()),
        })
    }

    /// The unanswered earlier attempt of this claim, if the tick is the same.
    pub(super) fn take_uncertain(&self, req: &ClaimRequest<'_>, run_id: &str) -> Option<Uncertain> {
        let mut map = self.uncertain.lock().expect("uncertain claims lock");
        let key = uncertain_key(req);
        if map.get(&key)?.run_id != run_id {
            return None;
        }
        map.remove(&key)
    }

    pub(super) fn keep_uncertain(&self, req: &ClaimRequest<'_>, u: Uncertain) {
        let key = uncertain_key(req);
        let mut map = self.uncertain.lock().expect("uncertain claims lock");
        // Claims nobody retries (given up, or a request withdrawn) must not
        // pile up.
        let old = Utc::now() - chrono::Duration::minutes(10);
        map.retain(|_, u| u.granted_at > old);
        map.insert(key, u);
    }

    /// The claim of a scheduled tick skipped it and wrote its entry at
    /// revision `rev`.
    fn skipped_by_claim(&self, req: &ClaimRequest<'_>, run_id: &str, rev: i64) {
        let after = req.trigger == crate::model::Trigger::After;
        if (req.request.is_some() && !after) || req.trigger == crate::model::Trigger::Service {
            return;
        }
        let now = Utc::now();
        let mut map = self.claimed_skips.lock().expect("claimed skips lock");
        // Entries the scheduler never replaced (it could not write) must
        // not pile up.
        let old = now - chrono::Duration::minutes(10);
        map.retain(|_, s| s.at > old);
        map.insert(
            (req.job.to_string(), req.tick),
            ClaimedSkip {
                run_id: run_id.to_string(),
                rev,
                at: now,
            },
        );
    }

    /// The entry the claim of `job`'s `tick` wrote, if it skipped the tick;
    /// `take` for the one write that replaces it.
    pub(super) fn claimed_skip_of(
        &self,
        job: &str,
        tick: DateTime<Utc>,
        take: bool,
    ) -> Option<ClaimedSkip> {
        let mut map = self.claimed_skips.lock().expect("claimed skips lock");
        let key = (job.to_string(), tick);
        if take {
            map.remove(&key)
        } else {
            map.get(&key).cloned()
        }
    }

    /// The run id for a claim of `tick`: an unanswered earlier attempt's.
    pub(super) fn run_id_for(&self, req: &ClaimRequest<'_>) -> String {
        if let Some(id) = req.request {
            return id.to_string();
        }
        let map = self.uncertain.lock().expect("uncertain claims lock");
        match map.get(&uncertain_key(req)) {
            Some(u) => u.run_id.clone(),
            None => new_run_id(),
        }
    }

    /// Drop the cached last tick of `job`, so the next claim re-reads it.
    pub(super) fn forget_last(&self, job: &str) {
        self.last.lock().expect("cache lock").remove(job);
    }
}
