//! The cluster backend: replicas coordinate through etcd.
//!
//! Every key lives under the configured prefix `P`:
//!
//! ```text
//! P/leader                      the leader's LeaderInfo, bound to its session lease;
//!                               its create revision is the leader's term (fencing token)
//! P/members/<instance>          one per live instance, bound to its session lease;
//!                               its MemberInfo carries the hash of the config it
//!                               runs, rewritten on every reload
//! P/last/<job>                  the newest tick a leader claimed, recorded missed, or began the job's schedule at
//! P/active/<job>/<run-id>       a running marker, bound to the run's own lease,
//!                               which the run's supervisor keeps alive
//! P/history/<job>/<run-id>      run records (bounded per job)
//! P/requests/<run-id>           `bgsched trigger` requests, bound to the requester's lease
//!                               (a due scheduled run's, on none)
//! P/follow/<run-id>/<id>        a follower of the run's output, on its own lease
//! P/output/<run-id>/<offset>    the run's output while followed, on the run's lease
//! P/pause/<job>                 the job's newest pause (see `coordination::Pause`)
//! P/scheduled/<run-id>          a one-off run at a later time; a request once due
//! P/assign/<member>/<run-id>    a claimed run placed on another member (`run_on`),
//!                               on the run's lease, until that member takes it over
//! ```
//!
//! A fire is claimed in one transaction that succeeds only if the leader
//! key still has this leader's term, the job's `last` key is unchanged since
//! this leader read it (so the tick was not claimed before), and, for
//! `overlap = "skip"`, no marker exists under `P/active/<job>/`. It records
//! the new last tick and the run's marker atomically.
//!
//! One file per part: `config` (how to reach etcd, timings), `words`
//! (errors in words), `keys` (the layout above), `leadership` (session,
//! term, fencing), `clocks` (clock agreement), `leases` (session and run
//! leases, spares), `placement` (which member executes a `run_on` job's
//! run; a member's assignments), `claim` (the transaction above and its read-back),
//! `watches` (stop requests, ended markers, trigger requests), `records`
//! (entries, pruning, reads), `requests` (a `trigger` through the leader), `coordinator` (the `Coordinator` interface)
//! and `recorder` (a supervisor's side of its run).

use super::clock::{ClockVerdict, ClockWatch};
use super::{
    BackendSpec, Cancel, Claim, ClaimRejected, ClaimRequest, CoordError, Coordinator,
    HistoryReader, Hold, LeaderInfo, Leadership, Outcome, Result, RunRecord, RunRecorder,
    TriggerRequest, Turn,
};
use crate::config::Overlap;
use crate::model::new_run_id;
use chrono::{DateTime, Utc};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, KeyValue,
    PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

mod batch;
mod claim;
mod clocks;
mod config;
mod coordinator;
mod follow;
mod keys;
mod leadership;
mod leases;
mod pause;
mod placement;
mod recorder;
mod records;
mod requests;
mod watches;
mod words;
use claim::*;
use clocks::*;
pub use config::*;
pub use follow::{Following, FOLLOW_POLL};
pub use keys::*;
use leadership::*;
pub use leases::*;
pub use placement::Offer;
pub use recorder::*;
pub use requests::*;
use watches::*;
pub use words::*;

/// Connect to etcd (the connection itself is established lazily and
/// re-established by the client after failures).
pub async fn connect(cfg: &EtcdConfig) -> Result<Client> {
    // No client-side timeout: the channel bounds each request, failovers
    // to other members included.
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2))
        .with_keep_alive_while_idle(true)
        .with_require_leader(true);
    if let (Some(user), Some(password)) = (&cfg.cluster.user, &cfg.cluster.password) {
        opts = opts.with_user(user.clone(), password.expose());
    }
    if cfg
        .cluster
        .endpoints
        .iter()
        .any(|e| e.starts_with("https://"))
    {
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &cfg.cluster.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| CoordError::Etcd(format!("ca_file {}: {e}", ca.display())))?;
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(pem));
        }
        if let (Some(cert), Some(key)) = (&cfg.cluster.cert_file, &cfg.cluster.key_file) {
            let cert_pem = std::fs::read(cert)
                .map_err(|e| CoordError::Etcd(format!("cert_file {}: {e}", cert.display())))?;
            let key_pem = std::fs::read(key)
                .map_err(|e| CoordError::Etcd(format!("key_file {}: {e}", key.display())))?;
            tls = tls.identity(etcd_client::Identity::from_pem(cert_pem, key_pem));
        }
        opts = opts.with_tls(tls);
    }
    let channel = super::channel::Channel {
        deadline: cfg.request_deadline(),
        endpoints: cfg.cluster.endpoints.len(),
    };
    Client::connect_with_balanced_channel(&cfg.cluster.endpoints, Some(opts), channel)
        .await
        .map_err(|e| auth_failure(cfg, &e).unwrap_or_else(|| etcd_err("cannot connect")(e)))
}

/// The key-values of each get in a transaction's answer, in order.
fn kvs_of(resp: etcd_client::TxnResponse) -> Vec<Vec<KeyValue>> {
    resp.op_responses()
        .into_iter()
        .map(|r| match r {
            TxnOpResponse::Get(mut g) => g.take_kvs(),
            _ => Vec::new(),
        })
        .collect()
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("state serializes")
}

fn parse<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Result<T> {
    serde_json::from_slice(kv.value()).map_err(|e| CoordError::Corrupt {
        path: String::from_utf8_lossy(kv.key()).into_owned(),
        reason: e.to_string(),
    })
}

/// The etcd backend.
pub struct Etcd {
    /// The leader's watched copy of `P/pause/`: read for every due tick,
    /// so it must not cost a round trip.
    pauses: Arc<Mutex<HashMap<String, super::Pause>>>,
    cfg: EtcdConfig,
    client: Client,
    keys: Keys,
    session: tokio::sync::Mutex<Option<Session>>,
    /// The leader's view of `P/last/<job>`: (tick, mod revision). Only the
    /// leader writes these keys, so this saves a read per claim; a stale
    /// entry only makes the claim transaction fail and be retried.
    last: Mutex<HashMap<String, (DateTime<Utc>, i64)>>,
    /// Run leases granted ahead of their claims (`prepare`) or left over
    /// from claims that started nothing, with when each was asked for.
    spare: Mutex<Vec<(i64, DateTime<Utc>)>>,
    /// The config hash last announced, for the member key of every session.
    config_hash: Mutex<Option<String>>,
    /// The newest session's liveness, readable without the session lock
    /// (which a campaign holds across etcd round trips).
    live_session: Mutex<Option<(watch::Receiver<bool>, watch::Receiver<Instant>)>>,
    /// This clock against the members' (fed by `watch_member_clocks`,
    /// started with the first session).
    clock: Arc<ClockWatch>,
    clock_watch: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Running markers deleted lately, seen by every replica from its first
    /// session on (`watch_ended_markers`): a new leader checks these too,
    /// so a marker that expired before it won is not passed over.
    ended: Arc<EndedMarkers>,
    marker_watch: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Claims sent whose answer never came, per job and request: they may
    /// have committed, or may yet. The next claim of the same tick goes out
    /// under the same run id and lease, so it finds its own claim either
    /// way (its marker, its run id in `P/last/<job>`) instead of taking it
    /// for someone else's.
    uncertain: Mutex<HashMap<UncertainKey, Uncertain>>,
    /// Scheduled ticks whose claim transaction skipped them and wrote
    /// their entry itself (job, tick → the claim's run id), so that the
    /// scheduler's fuller entry replaces that one instead of adding a
    /// second (see `claim_once`).
    claimed_skips: Mutex<HashMap<(String, DateTime<Utc>), claim::ClaimedSkip>>,
    /// Claim transactions in flight at once go out as one (see `batch`).
    claim_batches: batch::ClaimBatches,
    /// The members and who runs what, for the leader's placement.
    placement: Arc<placement::Placement>,
    /// What this member offers placement.
    offer: Mutex<Offer>,
    /// This process among the members (see `MemberInfo::process`).
    process: String,
    /// Placed runs this process took over lately: a watch listed again
    /// must not start one twice.
    taken: Mutex<HashMap<String, Instant>>,
    /// Watches of this process: its assignments, the waiting places.
    watch_tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The scheduler's retry of a run recorded `lost` (see `record_lost`).
    lost_retry: Mutex<Option<super::LostRetry>>,
}

impl Etcd {
    /// Connect, retrying with backoff until etcd answers (or forever, with
    /// a log line per attempt) — a scheduler without etcd has nothing to do.
    /// A refused login is returned at once: waiting does not fix a password.
    pub async fn connect_retrying(cfg: EtcdConfig) -> Result<Etcd> {
        let mut delay = Duration::from_millis(200);
        loop {
            match Self::connect(cfg.clone()).await {
                Ok(etcd) => return Ok(etcd),
                Err(e @ CoordError::Auth { .. }) => return Err(e),
                Err(e) => {
                    // The line names etcd already; its error's "etcd: " would say it twice.
                    let cause = match &e {
                        CoordError::Etcd(cause) => cause.clone(),
                        other => other.to_string(),
                    };
                    tracing::warn!(
                        "etcd at {} unreachable ({cause}); retrying in {}",
                        cfg.cluster.endpoints.join(","),
                        crate::observe::log::duration(delay)
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    pub async fn connect(cfg: EtcdConfig) -> Result<Etcd> {
        let mut client = connect(&cfg).await?;
        // Prove the cluster answers before declaring the connection usable.
        client
            .status()
            .await
            .map_err(|e| auth_failure(&cfg, &e).unwrap_or_else(|| etcd_err("status request")(e)))?;
        // `status` needs no login; a read of a key every command reads tells
        // now, not at the first real request, that etcd wants one or
        // refuses this user.
        let probe = etcd_client::GetOptions::new().with_count_only();
        let leader = Keys::new(&cfg.cluster.prefix).leader();
        if let Err(e) = client.get(leader, Some(probe)).await {
            if let Some(refused) = auth_failure(&cfg, &e) {
                return Err(refused);
            }
        }
        Ok(Etcd {
            keys: Keys::new(&cfg.cluster.prefix),
            client,
            session: tokio::sync::Mutex::new(None),
            last: Mutex::new(HashMap::new()),
            spare: Mutex::new(Vec::new()),
            config_hash: Mutex::new(None),
            live_session: Mutex::new(None),
            clock: Arc::new(ClockWatch::new(
                cfg.cluster.max_clock_skew,
                cfg.renew_every(),
            )),
            clock_watch: Mutex::new(None),
            ended: Arc::default(),
            marker_watch: Mutex::new(None),
            uncertain: Mutex::new(HashMap::new()),
            claimed_skips: Mutex::new(HashMap::new()),
            claim_batches: Default::default(),
            pauses: Arc::default(),
            placement: Arc::default(),
            offer: Mutex::default(),
            process: new_run_id(),
            taken: Mutex::default(),
            watch_tasks: Mutex::default(),
            lost_retry: Mutex::default(),
            cfg,
        })
    }

    /// This replica's clock against the other live members' clocks.
    pub fn clock_verdict(&self) -> ClockVerdict {
        self.clock.verdict()
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub fn config(&self) -> &EtcdConfig {
        &self.cfg
    }

    /// Whether this instance has a session whose lease etcd confirmed
    /// within the fencing window (2/3 of `lease_ttl`).
    pub fn session_confirmed(&self) -> bool {
        let live = self.live_session.lock().expect("session lock");
        live.as_ref()
            .is_some_and(|(alive, vouched)| *alive.borrow() && Instant::now() < *vouched.borrow())
    }
}

/// A few random bits without a dependency: the sub-second part of the clock.
fn rand_bits() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() >> 10)
        .unwrap_or(0)
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(t) = self.clock_watch.lock().expect("clock watch lock").take() {
            t.abort();
        }
        if let Some(t) = self.marker_watch.lock().expect("marker watch lock").take() {
            t.abort();
        }
        for t in self.watch_tasks.lock().expect("watch tasks lock").drain(..) {
            t.abort();
        }
    }
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}
