//! Leases: keeping a session or run lease alive, and the spare run leases
//! granted ahead of claims.

use super::*;

/// Keep `lease` alive. A renewal counts from the moment its request was
/// sent, so the local deadline always precedes the server's.
///
/// Without `vouched`, the lease is given up (`alive` flips to false for
/// good) once no renewal was confirmed for `fence_after`: a run's lease,
/// whose job is killed then. With `vouched` (a session), that moment only
/// fences: `vouched` always holds the instant until which the lease is
/// vouched for (last confirmed renewal + `fence_after`), renewals go on, and
/// one that succeeds (an etcd leader election refreshes every lease) moves
/// the instant forward again. `alive` flips to false only when etcd says the
/// lease is gone.
pub async fn keep_lease_alive(
    client: Client,
    lease: i64,
    cfg: EtcdConfig,
    mut last_ok: Instant,
    alive: watch::Sender<bool>,
    vouched: Option<watch::Sender<Instant>>,
) {
    let mut client = client;
    let mut stream = None;
    let mut fenced = false;
    loop {
        let deadline = last_ok + cfg.fence_after();
        if !fenced && Instant::now() >= deadline {
            if vouched.is_none() {
                tracing::warn!(
                    lease,
                    "lease not renewed for {}: giving it up",
                    crate::observe::log::duration(cfg.fence_after())
                );
                let _ = alive.send(false);
                return;
            }
            tracing::warn!(
                lease,
                "lease not renewed for {}: fenced (acting on it no more) until a renewal succeeds",
                crate::observe::log::duration(cfg.fence_after())
            );
            fenced = true;
        }
        // Fenced, an attempt still may not hang: the stream may be stuck on
        // a member that lost its leader. But it gets a whole request's
        // time: on a loaded machine a renewal may be slow and still good.
        let until = if fenced {
            Instant::now() + cfg.request_deadline()
        } else {
            deadline
        };
        let sent = Instant::now();
        let attempt = async {
            if stream.is_none() {
                stream = Some(client.lease_keep_alive(lease).await?);
            }
            let (keeper, responses) = stream.as_mut().expect("stream just opened");
            keeper.keep_alive().await?;
            responses.message().await
        };
        match tokio::time::timeout_at(until, attempt).await {
            Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
                last_ok = sent;
                if let Some(v) = &vouched {
                    let _ = v.send(sent + cfg.fence_after());
                }
                if fenced {
                    tracing::info!(
                        lease,
                        ttl = resp.ttl(),
                        "lease renewed again: no longer fenced"
                    );
                    fenced = false;
                }
            }
            Ok(Ok(Some(_))) => {
                tracing::warn!(lease, "lease expired in etcd");
                let _ = alive.send(false);
                return;
            }
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(e))) if e.contains("not found") => {
                tracing::warn!(lease, "lease is gone in etcd: {e}");
                let _ = alive.send(false);
                return;
            }
            Ok(Ok(None)) | Ok(Err(_)) => {
                // Broken stream: the channel sends the next one to a
                // healthy member.
                stream = None;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(_) => {
                stream = None;
                continue;
            }
        }
        if alive.is_closed() {
            return;
        }
        tokio::time::sleep_until(sent + cfg.renew_every()).await;
    }
}

/// A supervisor's hold on its run's lease: connect (retrying until the
/// fencing deadline counted from `granted`; the client is shared with the
/// final record), then renew
/// the lease like any other. Opening the keepalive stream is what confirms
/// etcd still has the lease.
pub(super) async fn hold_run_lease(
    cfg: EtcdConfig,
    lease: i64,
    granted: Instant,
    alive: watch::Sender<bool>,
    shared: Arc<tokio::sync::OnceCell<Client>>,
) {
    let deadline = granted + cfg.fence_after();
    let mut delay = Duration::from_millis(50);
    let client = loop {
        let connected = shared.get_or_try_init(|| connect(&cfg));
        match tokio::time::timeout_at(deadline, connected).await {
            Ok(Ok(client)) => break client.clone(),
            Ok(Err(e)) if Instant::now() + delay < deadline => {
                tracing::warn!(lease, "etcd not reachable yet ({e}); retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            _ => {
                tracing::warn!(
                    lease,
                    "etcd not reachable before the run's lease could lapse"
                );
                let _ = alive.send(false);
                return;
            }
        }
    };
    keep_lease_alive(client, lease, cfg, granted, alive, None).await;
}

/// Run leases granted ahead of one tick, at most: a bound on what a
/// schedule with very many simultaneous jobs asks of etcd at once.
pub(super) const MAX_SPARE_LEASES: usize = 2048;

pub(super) fn revoke_later(mut client: Client, lease: i64) {
    tokio::spawn(async move {
        let _ = client.lease_revoke(lease).await;
    });
}

impl Etcd {
    /// A spare lease is only used while young: the supervisor trusts a run
    /// lease, unconfirmed, until 2/3 of the TTL after it was asked for.
    pub(super) fn spare_lease_max_age(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.cfg.cluster.lease_ttl / 4).unwrap_or_default()
    }

    /// Ask etcd for a run lease; the time goes before the request, so etcd
    /// keeps the lease at least until that time plus the TTL.
    pub(super) async fn grant_run_lease(&self) -> Result<(i64, DateTime<Utc>)> {
        let granted_at = Utc::now();
        let lease = self
            .client
            .clone()
            .lease_grant(self.cfg.ttl_secs(), None)
            .await
            .map_err(etcd_err("run lease"))?
            .id();
        Ok((lease, granted_at))
    }

    /// The youngest spare lease, if it is young enough (older ones wait for
    /// `prepare` to renew them, or expire on their own: no key is bound to
    /// them).
    pub(super) fn take_spare_lease(&self) -> Option<(i64, DateTime<Utc>)> {
        let oldest = Utc::now() - self.spare_lease_max_age();
        let mut spare = self.spare.lock().expect("spare lease lock");
        match spare.last() {
            Some((_, at)) if *at > oldest => spare.pop(),
            _ => None,
        }
    }

    /// Spares older than this are dropped: renewing them could come too late.
    pub(super) fn spare_lease_keep(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.cfg.cluster.lease_ttl / 2).unwrap_or_default()
    }

    /// Renew a spare lease once; when the renewal was sent, if etcd still
    /// has the lease.
    pub(super) async fn renew_lease(&self, lease: i64) -> Option<DateTime<Utc>> {
        let at = Utc::now();
        let mut client = self.client.clone();
        let (mut keeper, mut responses) = client.lease_keep_alive(lease).await.ok()?;
        keeper.keep_alive().await.ok()?;
        responses.message().await.ok()?.filter(|r| r.ttl() > 0)?;
        Some(at)
    }

    /// Keep a lease nothing is bound to (from a claim that started nothing,
    /// or handed back by a finished run) for a later claim.
    pub(super) fn give_back_lease(&self, lease: i64, granted_at: DateTime<Utc>) {
        if Utc::now() - granted_at < self.spare_lease_keep() {
            let mut spare = self.spare.lock().expect("spare lease lock");
            spare.push((lease, granted_at));
            spare.sort_by_key(|(_, at)| *at);
        }
    }
}
