//! The run's side: a supervisor records its run and keeps its lease.

use super::*;

/// A supervisor's recorder in cluster mode: keeps the run's lease (and so
/// its marker) alive, fences itself when it cannot, and writes the record.
pub struct EtcdRecorder {
    pub(super) cfg: EtcdConfig,
    /// Set by the lease keeper once it has connected; `finished` connects
    /// itself if the keeper never did.
    pub(super) client: Arc<tokio::sync::OnceCell<Client>>,
    pub(super) keys: Keys,
    pub(super) job: String,
    pub(super) run_id: String,
    pub(super) history_limit: usize,
    pub(super) lease: i64,
    pub(super) alive: watch::Receiver<bool>,
    pub(super) keeper: tokio::task::JoinHandle<()>,
    /// Stop requests from a run replacing this one (`overlap = "replace"`).
    pub(super) stop: watch::Receiver<Option<String>>,
    pub(super) stop_watcher: Option<tokio::task::JoinHandle<()>>,
    /// The run's lease, renewed one last time after the final record and no
    /// longer renewed by this process: the next claim may bind to it.
    pub(super) spare: Option<(i64, DateTime<Utc>)>,
    /// The run's concurrency group: `finished` frees every place of it
    /// bound to the run's lease, whichever it took (or may have taken,
    /// when an answer was lost).
    pub(super) group: Option<crate::config::Group>,
    /// The runs its end starts (`after`), and the `after_all` jobs it marks.
    pub(super) next: Vec<crate::coordination::TriggerRequest>,
    pub(super) marks: Vec<String>,
}

impl Drop for EtcdRecorder {
    fn drop(&mut self) {
        self.keeper.abort();
        if let Some(w) = &self.stop_watcher {
            w.abort();
        }
    }
}

impl EtcdRecorder {
    /// Take over the run's lease and keep it alive. `granted_at` is when the
    /// scheduler asked for it (before the grant request went out), so etcd
    /// keeps it at least until `granted_at + lease_ttl`: the job may start
    /// at once, before this process has even connected, and the
    /// self-fencing deadline counts from there. A lease already too old to
    /// be trusted (the scheduler stalled between claim and spawn) means the
    /// job must not start at all.
    pub fn start(
        cfg: &EtcdConfig,
        job: &str,
        run_id: &str,
        lease: i64,
        granted_at: DateTime<Utc>,
    ) -> Result<Self> {
        let age = (Utc::now() - granted_at).to_std().unwrap_or_default();
        if age >= cfg.fence_after() {
            return Err(CoordError::Etcd(format!(
                "the run's lease was granted {} ago, too long to trust it; the job was not started",
                humantime::format_duration(Duration::from_millis(age.as_millis() as u64))
            )));
        }
        let granted = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        let (tx, alive) = watch::channel(true);
        let client = Arc::new(tokio::sync::OnceCell::new());
        // In the run's span: its warnings are about this run.
        let keeper = tokio::spawn(tracing::Instrument::in_current_span(hold_run_lease(
            cfg.clone(),
            lease,
            granted,
            tx,
            client.clone(),
        )));
        let keys = Keys::new(&cfg.cluster.prefix);
        let (stop_tx, stop) = watch::channel(None);
        // Every run can be cancelled, and a replaceable one replaced.
        let stop_watcher = Some({
            tokio::spawn(watch_stop_request(
                cfg.clone(),
                client.clone(),
                keys.stop_request(job, run_id),
                stop_tx,
            ))
        });
        Ok(EtcdRecorder {
            cfg: cfg.clone(),
            client,
            keys,
            job: job.to_string(),
            run_id: run_id.to_string(),
            history_limit: cfg.history_limit,
            lease,
            alive,
            keeper,
            stop,
            stop_watcher,
            spare: None,
            group: None,
            next: Vec::new(),
            marks: Vec::new(),
        })
    }

    /// Best effort, for a run whose supervisor could not take it over:
    /// record why it did not start and end its marker.
    pub async fn record_unstarted(cfg: &EtcdConfig, record: &RunRecord) {
        let keys = Keys::new(&cfg.cluster.prefix);
        let Ok(mut client) = connect(cfg).await else {
            return;
        };
        let history = keys.history(&record.key.job, &record.key.run_id);
        let txn = Txn::new()
            .when([Compare::create_revision(
                history.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then([
                TxnOp::put(history, json(record), None),
                TxnOp::delete(keys.active(&record.key.job, &record.key.run_id), None),
            ]);
        let _ = client.txn(txn).await;
    }
}

impl EtcdRecorder {
    /// The connection the lease keeper made, or a new one if it has not yet.
    pub(super) async fn client(&self) -> Result<Client> {
        Ok(self
            .client
            .get_or_try_init(|| connect(&self.cfg))
            .await?
            .clone())
    }
}

impl RunRecorder for EtcdRecorder {
    async fn started(&mut self, _record: &RunRecord) -> Result<()> {
        // The claim already wrote the marker. Adding the pid would cost a
        // third etcd write per fire; the instance in the marker says where.
        Ok(())
    }

    async fn taken_over(&mut self, record: &RunRecord) -> Result<()> {
        // The claim's marker, now naming this supervisor; only while it
        // exists (an expired one stays gone).
        let active = self.keys.active(&self.job, &self.run_id);
        let mut marker = record.clone();
        marker.supervisor_pid = Some(std::process::id());
        let txn = Txn::new()
            .when([Compare::create_revision(
                active.clone(),
                CompareOp::Greater,
                0,
            )])
            .and_then([TxnOp::put(
                active,
                json(&marker),
                Some(PutOptions::new().with_lease(self.lease)),
            )]);
        // A few tries within the fencing window: without the mark, a
        // marker that expires later would have the run asked for again.
        let mut last = None;
        for _ in 0..5 {
            let sent = async {
                self.client()
                    .await?
                    .txn(txn.clone())
                    .await
                    .map_err(etcd_err("mark the run taken over"))
            };
            match sent.await {
                Ok(_) => return Ok(()),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(last.unwrap_or_else(|| CoordError::Etcd("mark the run taken over".into())))
    }

    async fn take_turn(&mut self, turn: &Turn, record: &RunRecord) -> Result<()> {
        let mut client = self.client().await?;
        let actives = self.keys.actives(&self.job);
        if let Turn::Replace { .. } = turn {
            // Whoever runs now, not whoever ran at claim time. The request
            // is bound to this run's lease: it goes away with this run.
            let running = client
                .get(actives.clone(), Some(GetOptions::new().with_prefix()))
                .await
                .map_err(etcd_err("read active runs"))?;
            for rec in running
                .kvs()
                .iter()
                .filter_map(|kv| parse::<RunRecord>(kv).ok())
            {
                let why = format!("replaced by run {}", self.run_id);
                client
                    .put(
                        self.keys.stop_request(&self.job, &rec.key.run_id),
                        why,
                        Some(PutOptions::new().with_lease(self.lease)),
                    )
                    .await
                    .map_err(etcd_err("ask the active run to stop"))?;
            }
        }
        let queued = self.keys.queued(&self.job);
        let lease_lost = lease_lost(self.alive.clone());
        tokio::pin!(lease_lost);
        loop {
            // Move from the waiting place to the running mark in one step,
            // once nothing runs; the place is ours while our lease lives.
            let txn = Txn::new()
                .when([
                    Compare::create_revision(actives.clone(), CompareOp::Equal, 0).with_prefix(),
                    Compare::lease(queued.clone(), CompareOp::Equal, self.lease),
                ])
                .and_then([
                    TxnOp::delete(queued.clone(), None),
                    // Stop requests (ours, if replacing) have done their work;
                    // none may stay bound to a lease that gets reused.
                    TxnOp::delete(
                        self.keys.stop_requests(&self.job),
                        Some(DeleteOptions::new().with_prefix()),
                    ),
                    TxnOp::put(
                        self.keys.active(&self.job, &self.run_id),
                        json(record),
                        Some(PutOptions::new().with_lease(self.lease)),
                    ),
                ]);
            let resp = tokio::select! {
                r = client.txn(txn) => r.map_err(etcd_err("take the run's turn"))?,
                () = &mut lease_lost => return Err(waited_too_long()),
            };
            if resp.succeeded() {
                return Ok(());
            }
            // Wait for a run to end; any change under the prefix since the
            // failed attempt's revision wakes us.
            let from = resp.header().map_or(0, |h| h.revision()) + 1;
            tokio::select! {
                () = a_delete_under(&mut client, &actives, from) => {}
                () = &mut lease_lost => return Err(waited_too_long()),
            }
        }
    }

    fn will_trigger(
        &mut self,
        requests: Vec<crate::coordination::TriggerRequest>,
        marks: Vec<String>,
    ) {
        self.next = requests;
        self.marks = marks;
    }

    fn seated(
        &mut self,
        seat: &crate::coordination::GroupSeat,
        _lock: Option<std::os::fd::OwnedFd>,
    ) {
        self.group = Some(crate::config::Group {
            name: seat.group.clone(),
            limit: seat.limit,
        });
    }

    async fn take_seat(
        &mut self,
        seat: &crate::coordination::GroupSeat,
        record: &RunRecord,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let group = crate::config::Group {
            name: seat.group.clone(),
            limit: seat.limit,
        };
        self.group = Some(group.clone());
        let seats = self.keys.seats(&group.name);
        let lease_lost = lease_lost(self.alive.clone());
        tokio::pin!(lease_lost);
        loop {
            let txn = claim::seat_chain(
                &self.keys,
                &group,
                self.lease,
                record,
                &|_| Vec::new(),
                Vec::new(),
            );
            let sent = tokio::select! {
                r = client.txn(txn) => r,
                () = &mut lease_lost => return Err(waited_too_long()),
            };
            let from = match sent {
                Ok(resp) => {
                    let from = resp.header().map_or(0, |h| h.revision()) + 1;
                    if claim::seat_taken_at_top(resp).is_ok() {
                        return Ok(());
                    }
                    from
                }
                Err(e) => {
                    // It may have gone through with its answer lost: a
                    // place bound to this run's lease is ours.
                    tracing::warn!(run_id = %self.run_id, "taking a place in group {}: {e}; looking again", group.name);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let held = client
                        .get(seats.clone(), Some(GetOptions::new().with_prefix()))
                        .await
                        .map_err(etcd_err("read the group's places"))?;
                    if held.kvs().iter().any(|kv| kv.lease() == self.lease) {
                        return Ok(());
                    }
                    continue;
                }
            };
            tokio::select! {
                () = a_delete_under(&mut client, &seats, from) => {}
                () = &mut lease_lost => return Err(waited_too_long()),
            }
        }
    }

    fn publish_live(
        &mut self,
        output: Arc<dyn crate::coordination::LiveOutput>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        Some(super::follow::publish(
            self.cfg.clone(),
            self.client.clone(),
            self.keys.clone(),
            self.run_id.clone(),
            self.lease,
            output,
        ))
    }

    fn replacements(&mut self) -> watch::Receiver<Option<String>> {
        self.stop.clone()
    }

    fn handback(&self) -> Option<String> {
        self.spare
            .map(|(lease, at)| format!("lease {lease} {}", at.timestamp_millis()))
    }

    async fn attempt_failed(&mut self, record: &RunRecord) -> Result<()> {
        let history = self.keys.history(&self.job, &record.key.run_id);
        let txn = Txn::new()
            .when([Compare::create_revision(
                history.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then([TxnOp::put(history, json(record), None)]);
        let mut client = self.client().await?;
        client.txn(txn).await.map_err(etcd_err("write record"))?;
        Ok(())
    }

    async fn finished(&mut self, record: &RunRecord) -> Result<()> {
        // The record and the end of the marker are one transaction, so no
        // reader ever sees the run neither active nor recorded. Keep trying
        // for a while: etcd may be briefly away, and the record matters.
        let mut delay = Duration::from_millis(100);
        let give_up = Instant::now() + Duration::from_secs(120);
        let history = self.keys.history(&self.job, &self.run_id);
        let next_ops: Vec<TxnOp> = self
            .next
            .iter()
            .map(|req| TxnOp::put(self.keys.request(&req.run_id), json(req), None))
            .chain(self.marks.iter().map(|job| {
                let up = crate::model::Upstream {
                    job: self.job.clone(),
                    run_id: self.run_id.clone(),
                    outcome: record.outcome,
                };
                TxnOp::put(self.keys.mark(job, &self.job), json(&up), None)
            }))
            .collect();
        // The runs its end starts, asked for in the same step as its
        // record, exactly once: unless the history already holds this very
        // record (a retry of this transaction after its answer was lost). A
        // `lost` record the leader wrote meanwhile, or an earlier attempt's,
        // is replaced and the runs asked for. (A value compare fails on a
        // missing key, hence the two branches.) Only where there are such
        // runs: the compare carries the whole record.
        let dependents = (!next_ops.is_empty()).then(|| {
            TxnOp::txn(
                Txn::new()
                    .when([Compare::create_revision(
                        history.clone(),
                        CompareOp::Equal,
                        0,
                    )])
                    .and_then(next_ops.clone())
                    .or_else([TxnOp::txn(
                        Txn::new()
                            .when([Compare::value(
                                history.clone(),
                                CompareOp::NotEqual,
                                json(record),
                            )])
                            .and_then(next_ops),
                    )]),
            )
        });
        // Its group places are free again: whichever it holds.
        let places = self.group.iter().flat_map(|g| {
            (0..g.limit).map(|i| {
                let place = self.keys.seat(&g.name, i);
                TxnOp::txn(
                    Txn::new()
                        .when([Compare::lease(place.clone(), CompareOp::Equal, self.lease)])
                        .and_then([TxnOp::delete(place, None)]),
                )
            })
        });
        let ops: Vec<TxnOp> = [
            TxnOp::put(history.clone(), json(record), None),
            TxnOp::delete(self.keys.active(&self.job, &self.run_id), None),
            // A placed run's assignment goes with it (its lease may live on
            // as a spare).
            TxnOp::delete(self.keys.assign(&record.key.instance, &self.run_id), None),
            // Published output goes with the run: the record has its tail.
            TxnOp::delete(
                self.keys.outputs(&self.run_id),
                Some(DeleteOptions::new().with_prefix()),
            ),
            // A run that never got its turn leaves the waiting place.
            TxnOp::txn(
                Txn::new()
                    .when([Compare::lease(
                        self.keys.queued(&self.job),
                        CompareOp::Equal,
                        self.lease,
                    )])
                    .and_then([TxnOp::delete(self.keys.queued(&self.job), None)]),
            ),
        ]
        .into_iter()
        .chain(dependents)
        .chain(places)
        .collect();
        let mut client = loop {
            let txn = Txn::new().and_then(ops.clone());
            let attempt = async {
                let mut client = self.client().await?;
                client.txn(txn).await.map_err(etcd_err("write record"))?;
                Ok::<_, CoordError>(client)
            };
            match attempt.await {
                Ok(client) => break client,
                Err(e) if Instant::now() < give_up => {
                    tracing::warn!(run_id = %self.run_id, "could not record the run yet ({e}); retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        };
        // The marker is gone with the record and nothing else is bound to
        // the lease now: renew it once more and hand it to the scheduler,
        // whose next claim can bind to it instead of granting a new one (a
        // write per fire saved). Unused, it simply expires.
        self.keeper.abort();
        if let Some(w) = &self.stop_watcher {
            w.abort();
        }
        let renewed_at = Utc::now();
        let renewed = async {
            let (mut keeper, mut responses) = client.lease_keep_alive(self.lease).await.ok()?;
            keeper.keep_alive().await.ok()?;
            responses.message().await.ok()?.filter(|r| r.ttl() > 0)
        };
        if tokio::time::timeout(Duration::from_secs(1), renewed)
            .await
            .ok()
            .flatten()
            .is_some()
        {
            self.spare = Some((self.lease, renewed_at));
        }
        Etcd::prune_or_warn(&mut client, &self.keys, &self.job, self.history_limit).await;
        Ok(())
    }

    async fn fenced(&mut self) -> String {
        while *self.alive.borrow_and_update() {
            if self.alive.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        "lost contact with etcd: the run's lease could not be renewed in time, so the job was killed before its running marker could expire".to_string()
    }
}

/// Resolves once the run's lease could not be renewed (`alive` false).
async fn lease_lost(mut alive: watch::Receiver<bool>) {
    while *alive.borrow_and_update() {
        if alive.changed().await.is_err() {
            break;
        }
    }
}

fn waited_too_long() -> CoordError {
    CoordError::Etcd("the run's lease could not be renewed while it waited".into())
}

/// Resolves at the first deletion under `prefix` from revision `from` on
/// (a run ended, a place was freed); after a short pause if the watch
/// cannot be set up, so the caller simply looks again.
async fn a_delete_under(client: &mut Client, prefix: &str, from: i64) {
    let opts = WatchOptions::new().with_prefix().with_start_revision(from);
    match client.watch(prefix.to_string(), Some(opts)).await {
        Ok(mut stream) => {
            while let Ok(Some(r)) = stream.message().await {
                if r.events()
                    .iter()
                    .any(|e| e.event_type() == EventType::Delete)
                {
                    break;
                }
            }
        }
        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
    }
}
