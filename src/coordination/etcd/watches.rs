//! Watches every replica or the leader keeps: stop requests, ended
//! markers (lost runs), trigger requests.

use super::*;

/// A replaceable run's supervisor: wait for a newer run's request to stop
/// (a key under `P/stop/`) and pass its reason on.
pub(super) async fn watch_stop_request(
    cfg: EtcdConfig,
    shared: Arc<tokio::sync::OnceCell<Client>>,
    key: String,
    stop: watch::Sender<Option<String>>,
) {
    loop {
        let attempt = async {
            let mut client = shared.get_or_try_init(|| connect(&cfg)).await?.clone();
            // Watch first, then look: a request put in between is not missed.
            let mut stream = client
                .watch(key.clone(), None)
                .await
                .map_err(etcd_err("watch stop requests"))?;
            let now = client
                .get(key.clone(), None)
                .await
                .map_err(etcd_err("read stop request"))?;
            if let Some(kv) = now.kvs().first() {
                return Ok(Some(kv.value_str().unwrap_or("replaced").to_string()));
            }
            while let Ok(Some(resp)) = stream.message().await {
                if let Some(kv) = resp
                    .events()
                    .iter()
                    .filter(|e| e.event_type() == EventType::Put)
                    .find_map(|e| e.kv())
                {
                    return Ok(Some(kv.value_str().unwrap_or("replaced").to_string()));
                }
            }
            Ok::<_, CoordError>(None)
        };
        if let Ok(Some(why)) = attempt.await {
            let _ = stop.send(Some(why));
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Feed `clock` from the members' heartbeats until the process ends.
/// Every deleted running marker under `prefix`, into `ended`; resumed
/// after the last revision seen when the watch breaks, so none is missed.
pub(super) async fn watch_ended_markers(
    mut client: Client,
    prefix: String,
    ended: Arc<EndedMarkers>,
    placement: Option<Arc<super::placement::Placement>>,
    keep: Duration,
) {
    let mut next: Option<i64> = None;
    loop {
        if next.is_none() {
            // Who runs what now, for placement; then every change.
            let Ok(now) = client
                .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
                .await
            else {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            if let Some(p) = &placement {
                p.markers_are(
                    now.kvs()
                        .iter()
                        .filter_map(|kv| parse::<RunRecord>(kv).ok()),
                );
            }
            next = now.header().map(|h| h.revision() + 1);
        }
        let mut opts = WatchOptions::new().with_prefix().with_prev_key();
        if let Some(rev) = next {
            opts = opts.with_start_revision(rev);
        }
        let Ok(mut stream) = client.watch(prefix.clone(), Some(opts)).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        while let Ok(Some(resp)) = stream.message().await {
            if resp.canceled() {
                // Compacted past `next`: go on from now.
                next = None;
                break;
            }
            if let Some(h) = resp.header() {
                next = Some(h.revision() + 1);
            }
            for event in resp.events() {
                if event.event_type() != EventType::Delete {
                    if let (Some(p), Some(Ok(rec))) =
                        (&placement, event.kv().map(parse::<RunRecord>))
                    {
                        p.marker_put(&rec);
                    }
                    continue;
                }
                if let Some(Ok(rec)) = event.prev_kv().map(parse::<RunRecord>) {
                    if let Some(p) = &placement {
                        p.marker_gone(&rec.key.run_id);
                    }
                    ended.push(rec, keep);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Send every value under `prefix` into `tx`: those there now, then each
/// one put; listed again after a compaction or a broken watch (the
/// receiver tells repeats apart), until `tx` closes.
pub(super) async fn stream_puts<T: serde::de::DeserializeOwned>(
    mut client: Client,
    prefix: String,
    tx: mpsc::Sender<T>,
) {
    loop {
        let Ok(resp) = client
            .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        for kv in resp.kvs() {
            if let Ok(value) = parse::<T>(kv) {
                if tx.send(value).await.is_err() {
                    return;
                }
            }
        }
        let rev = resp.header().map_or(0, |h| h.revision());
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(rev + 1);
        let Ok(mut stream) = client.watch(prefix.clone(), Some(opts)).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while let Ok(Some(resp)) = stream.message().await {
            if resp.canceled() {
                break;
            }
            for event in resp.events() {
                if event.event_type() != EventType::Put {
                    continue;
                }
                if let Some(Ok(value)) = event.kv().map(parse::<T>) {
                    if tx.send(value).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Markers deleted (a run recorded, or its lease expired), newest last.
#[derive(Default)]
pub(super) struct EndedMarkers {
    pub(super) list: Mutex<std::collections::VecDeque<(Instant, RunRecord)>>,
    pub(super) added: tokio::sync::Notify,
}

impl EndedMarkers {
    /// Kept this long while nobody takes them (a standby): longer than a
    /// marker can outlive the leader that claimed it plus a campaign.
    pub(super) fn keep(ttl: Duration) -> Duration {
        ttl * 3 + Duration::from_secs(5)
    }

    pub(super) fn push(&self, rec: RunRecord, keep: Duration) {
        let mut list = self.list.lock().expect("ended markers lock");
        while list.front().is_some_and(|(at, _)| at.elapsed() > keep) || list.len() >= 50_000 {
            list.pop_front();
        }
        list.push_back((Instant::now(), rec));
        drop(list);
        self.added.notify_one();
    }

    pub(super) fn take(&self) -> Vec<RunRecord> {
        let mut list = self.list.lock().expect("ended markers lock");
        list.drain(..).map(|(_, rec)| rec).collect()
    }
}

impl Etcd {
    /// Stream trigger requests to the leader: the pending ones, then new ones.
    pub(super) fn watch_requests(
        &self,
        tx: mpsc::Sender<TriggerRequest>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(stream_puts(self.client.clone(), self.keys.requests(), tx))
    }

    /// Record runs whose marker expired without a final record (their
    /// supervisor died or was cut off for good) as `lost`, so every run
    /// leaves a record. Runs on the leader only. One etcd cannot take now
    /// (a member down, a leader election) is tried again, with a backoff,
    /// and one this term could not finish is left to the next.
    pub(super) fn record_lost_runs(
        &self,
        recorded: mpsc::Sender<RunRecord>,
    ) -> tokio::task::JoinHandle<()> {
        let client = self.client.clone();
        let keys = self.keys.clone();
        let ended = self.ended.clone();
        let retry = self.lost_retry.lock().expect("lost retry lock").clone();
        let keep = EndedMarkers::keep(self.cfg.cluster.lease_ttl);
        tokio::spawn(async move {
            let mut client = client;
            let mut backoff = LOST_RETRY_FIRST;
            // Runs whose last try this term failed (see `record_lost`).
            let mut failed = std::collections::HashSet::new();
            loop {
                // What every replica saw lately, the leader's predecessors'
                // term included, then each deletion as it comes.
                let added = ended.added.notified();
                let mut batch = Unrecorded {
                    ended: ended.clone(),
                    keep,
                    left: ended.take().into(),
                    again: Vec::new(),
                };
                let mut why = None;
                while let Some(rec) = batch.left.front().cloned() {
                    let tried_before = failed.contains(&rec.key.run_id);
                    let done =
                        record_lost(&mut client, &keys, retry.as_ref(), rec, tried_before).await;
                    let rec = batch.left.pop_front().expect("the entry just tried");
                    match done {
                        // Waited for: the leader retries and hooks each one.
                        Ok(Some(lost)) => {
                            failed.remove(&rec.key.run_id);
                            let _ = recorded.send(lost).await;
                        }
                        Ok(None) => {
                            failed.remove(&rec.key.run_id);
                        }
                        Err(e) => {
                            why = Some(e);
                            failed.insert(rec.key.run_id.clone());
                            batch.again.push(rec);
                        }
                    }
                }
                let Some(e) = why else {
                    backoff = LOST_RETRY_FIRST;
                    drop(batch);
                    added.await;
                    continue;
                };
                // Once per outage: the next tries only if they succeed.
                if backoff == LOST_RETRY_FIRST {
                    tracing::warn!(
                        runs = batch.again.len(),
                        "lost runs cannot be recorded yet, trying again: {e}"
                    );
                }
                drop(batch);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(LOST_RETRY_MOST);
            }
        })
    }
}

/// The first wait before a lost run's record etcd did not take is tried
/// again, and the longest.
const LOST_RETRY_FIRST: Duration = Duration::from_millis(500);
const LOST_RETRY_MOST: Duration = Duration::from_secs(5);

/// Ended markers taken off the list to be recorded: those not recorded
/// yet go back on it when this goes, also when the task is aborted
/// mid-way (leadership lost), so the next term records them.
struct Unrecorded {
    ended: Arc<EndedMarkers>,
    keep: Duration,
    left: std::collections::VecDeque<RunRecord>,
    again: Vec<RunRecord>,
}

impl Drop for Unrecorded {
    fn drop(&mut self) {
        for rec in self.again.drain(..).chain(self.left.drain(..)) {
            self.ended.push(rec, self.keep);
        }
    }
}

/// Record `rec`, a run whose marker ended, as `lost` unless its supervisor
/// recorded it: the record written, `None` if there was nothing to write.
/// A run after another job's that never started, or one `retry` asks for
/// again, has its next run asked for in the same transaction, so no leader
/// dying in between can leave it recorded but never retried.
async fn record_lost(
    client: &mut Client,
    keys: &Keys,
    retry: Option<&crate::coordination::LostRetry>,
    mut rec: RunRecord,
    tried_before: bool,
) -> Result<Option<RunRecord>> {
    // A supervisor that finished wrote the record in the same transaction
    // that deleted the marker.
    let key = keys.history(&rec.key.job, &rec.key.run_id);
    // Only whether it exists: the record itself may be large.
    let counted = client
        .get(key.clone(), Some(GetOptions::new().with_count_only()))
        .await
        .map_err(etcd_err("look up a lost run's record"))?;
    if counted.count() > 0 {
        // An earlier try of this term whose answer was lost may have
        // written it: then it is this leader's to hook, as if answered
        // (another leader writing it in that very window would hook it
        // twice; one lost answer must not leave it unhooked).
        if tried_before {
            let stored = client
                .get(key, None)
                .await
                .map_err(etcd_err("read a lost run's record"))?;
            let ours = stored
                .kvs()
                .first()
                .and_then(|kv| serde_json::from_slice::<RunRecord>(kv.value()).ok())
                .filter(|r| r.outcome == Outcome::Lost);
            return Ok(ours);
        }
        return Ok(None);
    }
    let now = Utc::now();
    rec.outcome = Outcome::Lost;
    rec.reason = Some(
        "its running marker expired: the supervisor died or lost etcd before recording the run"
            .into(),
    );
    rec.duration_ms = Some((now - rec.started_at).num_milliseconds().max(0) as u64);
    rec.ended_at = Some(now);
    // A run after another job's that no supervisor took over (its leader
    // died between claim and start) never began: it is asked for again.
    let never_began =
        rec.key.trigger == crate::model::Trigger::After && rec.supervisor_pid.is_none();
    let again = if never_began {
        let req = TriggerRequest::after(
            &rec.key.job,
            format!(
                "again: run {} was claimed but never started",
                rec.key.run_id
            ),
            rec.upstream.clone(),
        );
        rec.reason = Some(format!(
            "claimed, but its leader stopped before starting it; asked for again as run {}",
            req.run_id
        ));
        Some(req)
    } else {
        let req = retry.and_then(|retry| retry(&rec));
        if let Some(req) = &req {
            rec.reason = Some(format!(
                "{}; its retry is run {}",
                rec.reason.as_deref().unwrap_or_default(),
                req.run_id
            ));
        }
        req
    };
    // Only if the supervisor did not record it meanwhile, and (for a
    // waiting run's place) it did not move on to its running mark.
    let marker = keys.active(&rec.key.job, &rec.key.run_id);
    let txn = Txn::new()
        .when([
            Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            Compare::create_revision(marker, CompareOp::Equal, 0),
        ])
        .and_then(
            std::iter::once(TxnOp::put(key, json(&rec), None))
                .chain(
                    again
                        .iter()
                        .map(|req| TxnOp::put(keys.request(&req.run_id), json(req), None)),
                )
                .collect::<Vec<_>>(),
        );
    let done = client
        .txn(txn)
        .await
        .map_err(etcd_err("record a lost run"))?;
    if !done.succeeded() {
        return Ok(None);
    }
    tracing::warn!(job = %rec.key.job, run_id = %rec.key.run_id, instance = %rec.key.instance, retry = again.as_ref().map_or("none", |r| r.run_id.as_str()), "run lost");
    Ok(Some(rec))
}
