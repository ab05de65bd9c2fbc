//! Sessions and leadership: the campaign, the term, renewal and fencing,
//! and the last ticks a new leader reads.

use super::*;

/// One instance's session: a lease everything of the instance is bound to.
pub(super) struct Session {
    pub(super) lease: i64,
    /// What `P/members/<instance>` holds (the heartbeat rewrites it).
    pub(super) member: Arc<Mutex<MemberInfo>>,
    pub(super) alive: watch::Receiver<bool>,
    /// Until when the lease is vouched for (see `keep_lease_alive`).
    pub(super) vouched: watch::Receiver<Instant>,
    pub(super) task: tokio::task::JoinHandle<()>,
    pub(super) heartbeat: tokio::task::JoinHandle<()>,
}

/// A session's lease, whether etcd still has it, and until when it is
/// vouched for.
pub(super) type SessionView = (i64, watch::Receiver<bool>, watch::Receiver<Instant>);

/// How long a new leader keeps trying to read the last fired ticks before
/// it gives its term back.
pub(super) const LOAD_LAST_TICKS_FOR: Duration = Duration::from_secs(10);

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
        self.heartbeat.abort();
    }
}

impl Etcd {
    /// The live session, creating (and registering this instance under
    /// `P/members/`) a new one if there is none or the old one died.
    pub(super) async fn session(&self, instance: &str) -> Result<SessionView> {
        let mut guard = self.session.lock().await;
        if let Some(s) = guard.as_ref() {
            // A fenced session is kept: it may be renewed yet.
            if *s.alive.borrow() {
                return Ok((s.lease, s.alive.clone(), s.vouched.clone()));
            }
            // We gave it up locally; etcd may still keep it (and our leader
            // key) alive for a while, e.g. after refreshing leases on restart.
            revoke_later(self.client.clone(), s.lease);
        }
        let mut client = self.client.clone();
        let granted = Instant::now();
        let lease = client
            .lease_grant(self.cfg.ttl_secs(), None)
            .await
            .map_err(etcd_err("lease grant"))?
            .id();
        let member = MemberInfo {
            instance: instance.to_string(),
            host: gethostname::gethostname().to_string_lossy().into_owned(),
            pid: std::process::id(),
            since: Utc::now(),
            config_hash: self.config_hash.lock().expect("hash lock").clone(),
            clock: Some(Utc::now()),
            offer: self.offer.lock().expect("offer lock").clone(),
            process: Some(self.process.clone()),
        };
        client
            .put(
                self.keys.member(instance),
                json(&member),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(etcd_err("register member"))?;
        {
            let mut markers = self.marker_watch.lock().expect("marker watch lock");
            if markers.is_none() {
                *markers = Some(tokio::spawn(watch_ended_markers(
                    self.client.clone(),
                    self.keys.all_actives(),
                    self.ended.clone(),
                    Some(self.placement.clone()),
                    EndedMarkers::keep(self.cfg.cluster.lease_ttl),
                )));
                // A waiting run's place that expires (its supervisor gone
                // before its turn, or a placed run never taken over) is a
                // lost run too.
                self.watch_tasks
                    .lock()
                    .expect("watch tasks lock")
                    .push(tokio::spawn(watch_ended_markers(
                        self.client.clone(),
                        self.keys.all_queued(),
                        self.ended.clone(),
                        None,
                        EndedMarkers::keep(self.cfg.cluster.lease_ttl),
                    )));
            }
        }
        {
            let mut watcher = self.clock_watch.lock().expect("clock watch lock");
            if watcher.is_none() {
                *watcher = Some(tokio::spawn(watch_member_clocks(
                    self.client.clone(),
                    self.keys.clone(),
                    instance.to_string(),
                    self.clock.clone(),
                    self.placement.clone(),
                )));
            }
        }
        let member = Arc::new(Mutex::new(member));
        let heartbeat = tokio::spawn(publish_clock(
            client.clone(),
            self.keys.member(instance),
            lease,
            member.clone(),
            self.cfg.renew_every(),
        ));
        let (tx, alive) = watch::channel(true);
        let (vouched_tx, vouched) = watch::channel(granted + self.cfg.fence_after());
        let task = tokio::spawn(keep_lease_alive(
            client,
            lease,
            self.cfg.clone(),
            granted,
            tx,
            Some(vouched_tx),
        ));
        tracing::info!(lease, ttl = %crate::observe::log::duration(self.cfg.cluster.lease_ttl), "etcd session started");
        *self.live_session.lock().expect("session lock") = Some((alive.clone(), vouched.clone()));
        *guard = Some(Session {
            lease,
            member,
            alive: alive.clone(),
            vouched: vouched.clone(),
            task,
            heartbeat,
        });
        Ok((lease, alive, vouched))
    }

    /// One attempt to become leader. `Ok(Err(rev))`: someone else leads as
    /// of revision `rev`.
    pub(super) async fn try_lead(
        &self,
        instance: &str,
        lease: i64,
    ) -> Result<std::result::Result<u64, (i64, Option<LeaderInfo>)>> {
        let key = self.keys.leader();
        let info = LeaderInfo {
            instance: instance.to_string(),
            term: 0,
            since: Utc::now(),
            pid: Some(std::process::id()),
        };
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                json(&info),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key, None)]);
        let resp = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(etcd_err("campaign"))?;
        let rev = resp.header().map_or(0, |h| h.revision());
        if resp.succeeded() {
            return Ok(Ok(rev as u64));
        }
        let current = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(mut g) => g.take_kvs().into_iter().next(),
            _ => None,
        });
        if let Some(kv) = &current {
            // Bound to our own session: an earlier campaign of ours committed
            // but its answer was lost (an ambiguous error). It is ours.
            if kv.lease() == lease {
                return Ok(Ok(kv.create_revision() as u64));
            }
        }
        let info = current.and_then(|kv| {
            let mut info: LeaderInfo = parse(&kv).ok()?;
            info.term = kv.create_revision() as u64;
            Some(info)
        });
        Ok(Err((rev, info)))
    }

    /// Wait (bounded) until the leader key is deleted after revision `rev`.
    pub(super) async fn wait_leader_gone(
        &self,
        rev: i64,
        session_alive: &mut watch::Receiver<bool>,
    ) {
        let opts = WatchOptions::new().with_start_revision(rev + 1);
        let watch = async {
            let Ok(mut stream) = self
                .client
                .clone()
                .watch(self.keys.leader(), Some(opts))
                .await
            else {
                tokio::time::sleep(Duration::from_millis(500)).await;
                return;
            };
            while let Ok(Some(resp)) = stream.message().await {
                if resp.canceled()
                    || resp
                        .events()
                        .iter()
                        .any(|e| e.event_type() == EventType::Delete)
                {
                    return;
                }
            }
            // The stream broke: do not spin on a failing etcd.
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        tokio::select! {
            () = watch => {}
            _ = session_alive.changed() => {}
            // A safety net against a watch that silently stalls.
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }

    /// Fill the last-tick cache from etcd (after winning leadership).
    pub(super) async fn load_last_ticks(&self) -> Result<()> {
        let lasts = self.read_last_ticks().await?;
        let mut cache = self.last.lock().expect("cache lock");
        cache.clear();
        cache.extend(lasts.into_iter().map(|(job, tick, rev)| (job, (tick, rev))));
        Ok(())
    }

    /// `load_last_ticks`, tried again for up to [`LOAD_LAST_TICKS_FOR`]
    /// while the session lives.
    pub(super) async fn load_last_ticks_retrying(
        &self,
        term: u64,
        alive: &watch::Receiver<bool>,
    ) -> Result<()> {
        let give_up = Instant::now() + LOAD_LAST_TICKS_FOR;
        let mut delay = Duration::from_millis(100);
        loop {
            match self.load_last_ticks().await {
                Ok(()) => return Ok(()),
                Err(e) if *alive.borrow() && Instant::now() + delay < give_up => {
                    tracing::warn!(term, "won leadership but {e}; reading again");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Watch the leader key; invalidate leadership when it goes or changes hands.
    pub(super) fn guard_leadership(
        &self,
        term: u64,
        mut session_alive: watch::Receiver<bool>,
        valid: watch::Sender<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let client = self.client.clone();
        let key = self.keys.leader();
        tokio::spawn(async move {
            let mut client = client;
            let watch_key = async {
                let mut from = term as i64;
                loop {
                    let opts = WatchOptions::new().with_start_revision(from);
                    if let Ok(mut stream) = client.watch(key.clone(), Some(opts)).await {
                        while let Ok(Some(resp)) = stream.message().await {
                            if resp.compact_revision() > 0 {
                                from = resp.compact_revision();
                                break;
                            }
                            for e in resp.events() {
                                let gone = e.event_type() == EventType::Delete
                                    || e.kv().is_some_and(|kv| kv.create_revision() as u64 != term);
                                if gone {
                                    return;
                                }
                                if let Some(kv) = e.kv() {
                                    from = kv.mod_revision() + 1;
                                }
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            };
            tokio::select! {
                () = watch_key => tracing::warn!(term, "leader key is gone or taken over"),
                _ = async { while *session_alive.borrow_and_update() { if session_alive.changed().await.is_err() { break; } } } => {
                    tracing::warn!(term, "session lost");
                }
            }
            let _ = valid.send(false);
        })
    }

    /// Delete the leader key if it is still ours, so a standby takes over now.
    pub(super) async fn resign_term(&self, term: u64) {
        let key = self.keys.leader();
        let txn = Txn::new()
            .when([Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                term as i64,
            )])
            .and_then([TxnOp::delete(key, None)]);
        match self.client.clone().txn(txn).await {
            Ok(r) if r.succeeded() => tracing::info!(term, "resigned leadership"),
            Ok(_) => {}
            Err(e) => tracing::warn!("could not resign leadership: {e}"),
        }
    }
}
