//! This replica's clock against the members': publishing it, watching the
//! others, and refusing to lead on a clock found off.

use super::*;

/// Rewrite the member key with this instance's clock every `every`, so the
/// other members can measure their offset from it (see `clock`).
pub(super) async fn publish_clock(
    mut client: Client,
    key: String,
    lease: i64,
    member: Arc<Mutex<MemberInfo>>,
    every: Duration,
) {
    loop {
        tokio::time::sleep(every).await;
        let value = {
            let mut m = member.lock().expect("member lock");
            m.clock = Some(Utc::now());
            json(&*m)
        };
        if let Err(e) = client
            .put(
                key.clone(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
        {
            tracing::debug!("member heartbeat not written: {e}");
        }
    }
}

pub(super) async fn watch_member_clocks(
    client: Client,
    keys: Keys,
    me: String,
    clock: Arc<ClockWatch>,
    placement: Arc<super::placement::Placement>,
) {
    let prefix = keys.members();
    let name_of = |key: &[u8]| String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
    loop {
        let attempt = async {
            let mut client = client.clone();
            let now = client
                .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
                .await?;
            let rev = now.header().map_or(0, |h| h.revision());
            placement.members_are(
                now.kvs()
                    .iter()
                    .filter_map(|kv| parse::<MemberInfo>(kv).ok()),
            );
            // Values read now were written up to a heartbeat ago: only
            // writes seen as they happen measure an offset.
            clock.expect(
                now.kvs()
                    .iter()
                    .map(|kv| name_of(kv.key()))
                    .filter(|n| *n != me),
            );
            let opts = WatchOptions::new()
                .with_prefix()
                .with_start_revision(rev + 1);
            let mut stream = client.watch(prefix.clone(), Some(opts)).await?;
            while let Some(resp) = stream.message().await? {
                let received = Utc::now();
                if resp.canceled() {
                    break;
                }
                for e in resp.events() {
                    let Some(kv) = e.kv() else { continue };
                    let name = name_of(kv.key());
                    match e.event_type() {
                        EventType::Delete => placement.member_gone(&name),
                        EventType::Put => {
                            if let Ok(m) = parse::<MemberInfo>(kv) {
                                placement.member_put(m);
                            }
                        }
                    }
                    if name == me {
                        continue;
                    }
                    match e.event_type() {
                        EventType::Delete => clock.gone(&name),
                        EventType::Put => {
                            if let Some(at) = parse::<MemberInfo>(kv).ok().and_then(|m| m.clock) {
                                clock.observed(&name, (at - received).num_milliseconds());
                            }
                        }
                    }
                }
            }
            Ok::<_, etcd_client::Error>(())
        };
        if let Err(e) = attempt.await {
            tracing::debug!("members watch: {e}; restarting it");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

impl Etcd {
    /// Wait until this clock may lead: measured, and not skewed. Says so at
    /// ERROR, with the figures, whenever it is skewed.
    pub(super) async fn wait_for_sound_clock(&self) {
        let mut said = None;
        loop {
            match self.clock.verdict() {
                ClockVerdict::Unknown => {}
                v @ ClockVerdict::Skewed { .. } => {
                    // Once per second of change: the skew drifts by
                    // milliseconds with each heartbeat.
                    let key = v.skew_secs().map(|s| s.round() as i64);
                    if said != key {
                        tracing::error!(
                            skew_seconds = v.skew_secs().unwrap_or_default(),
                            "not leading: this replica's clock is {}; fix its time sync (NTP)",
                            v.describe()
                        );
                        said = key;
                    }
                }
                _ => {
                    if said.is_some() {
                        tracing::info!("clock agrees with the other members again; campaigning");
                    }
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// While leading: when this clock turns out skewed, give the term up
    /// (delete the leader key, then invalidate) so a replica with a sound
    /// clock takes over; otherwise pass `inner` (the key and session guard)
    /// on to `valid`.
    pub(super) fn guard_clock(
        &self,
        term: u64,
        mut inner: watch::Receiver<bool>,
        valid: watch::Sender<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let clock = self.clock.clone();
        let mut client = self.client.clone();
        let key = self.keys.leader();
        tokio::spawn(async move {
            loop {
                if !*inner.borrow_and_update() {
                    let _ = valid.send(false);
                    return;
                }
                let v = clock.verdict();
                if v.is_skewed() {
                    tracing::error!(
                        term,
                        skew_seconds = v.skew_secs().unwrap_or_default(),
                        "giving up leadership: this replica's clock is {}",
                        v.describe()
                    );
                    let txn = Txn::new()
                        .when([Compare::create_revision(
                            key.clone(),
                            CompareOp::Equal,
                            term as i64,
                        )])
                        .and_then([TxnOp::delete(key.clone(), None)]);
                    // Invalid first: nothing may fire from here on. The
                    // delete runs on its own task, as this one is aborted
                    // when the invalidated leadership is dropped; the
                    // session would keep an undeleted key alive for good.
                    let _ = valid.send(false);
                    tokio::spawn(async move {
                        if let Err(e) = client.txn(txn).await {
                            tracing::warn!(term, "could not give the leader key up: {e}");
                        }
                    });
                    return;
                }
                tokio::select! {
                    r = inner.changed() => if r.is_err() { return },
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        })
    }
}
