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
//! ```
//!
//! A fire is claimed in one transaction that succeeds only if the leader
//! key still has this leader's term, the job's `last` key is unchanged since
//! this leader read it (so the tick was not claimed before), and, for
//! `overlap = "skip"`, no marker exists under `P/active/<job>/`. It records
//! the new last tick and the run's marker atomically.

use super::clock::{ClockVerdict, ClockWatch};
use super::standalone::new_run_id;
use super::{
    BackendSpec, Claim, ClaimRejected, ClaimRequest, CoordError, Coordinator, HistoryReader, Hold,
    LeaderInfo, Leadership, Outcome, Result, RunRecord, RunRecorder, TriggerRequest, Turn,
};
use crate::config::Overlap;
use chrono::{DateTime, Utc};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, KeyValue,
    PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// The key prefix when the config names none.
pub const DEFAULT_PREFIX: &str = "/bgsched";
/// The session lease TTL when the config names none.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// The clock skew bound when the config names none.
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(1);

fn default_max_clock_skew() -> Duration {
    DEFAULT_MAX_CLOCK_SKEW
}

/// How to reach etcd; also handed to run supervisors.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub lease_ttl: Duration,
    /// How far this replica's clock may be off the members' median.
    #[serde(default = "default_max_clock_skew")]
    pub max_clock_skew: Duration,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub history_limit: usize,
}

impl fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("lease_ttl", &self.lease_ttl)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

impl EtcdConfig {
    /// The session/run lease TTL in whole seconds, as etcd takes it.
    fn ttl_secs(&self) -> i64 {
        self.lease_ttl.as_secs().max(1) as i64
    }

    /// Renew leases this often: three tries before the self-fencing deadline.
    fn renew_every(&self) -> Duration {
        self.lease_ttl / 4
    }

    /// One etcd request, failovers to other members included.
    fn request_deadline(&self) -> Duration {
        self.lease_ttl.max(Duration::from_secs(2)) / 2
    }

    /// Stop acting on a lease this long after its last confirmed renewal,
    /// which leaves a third of the TTL between giving up and expiry.
    fn fence_after(&self) -> Duration {
        self.lease_ttl * 2 / 3
    }
}

fn etcd_err(context: &str) -> impl FnOnce(etcd_client::Error) -> CoordError + '_ {
    move |e| CoordError::Etcd(format!("{context}: {}", in_words(&e)))
}

/// An etcd client error as a sentence: the cause (connection refused,
/// timed out, name not resolved, ...) rather than tonic's nested Debug
/// dump, which goes to the debug log for whoever needs it.
pub fn in_words(e: &etcd_client::Error) -> String {
    tracing::debug!("etcd error in detail: {e:?}");
    let mut status = None;
    let mut texts = Vec::new();
    // etcd_client's Error has no source(): start from what it wraps.
    let mut cause: Option<&(dyn std::error::Error + 'static)> = match e {
        etcd_client::Error::GRpcStatus(s) => Some(s),
        etcd_client::Error::TransportError(t) => Some(t),
        etcd_client::Error::IoError(io) => Some(io),
        _ => None,
    };
    while let Some(err) = cause {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(words) = io_in_words(io) {
                return words.to_string();
            }
        }
        if let Some(s) = err.downcast_ref::<tonic::Status>() {
            status.get_or_insert(s);
        } else {
            texts.push(err.to_string());
        }
        cause = err.source();
    }
    // Causes without an io::Error: a name lookup (its error is a
    // message), a connect timeout (tower's Elapsed), or an error status
    // from etcd itself.
    let all = texts.join(" ").to_lowercase();
    if all.contains("failed to lookup address") || all.contains("dns error") {
        return "name not resolved".into();
    }
    if all.contains("timed out") || all.contains("deadline has elapsed") {
        return "timed out connecting".into();
    }
    match status {
        Some(s) if s.code() == tonic::Code::DeadlineExceeded => {
            "timed out waiting for an answer".into()
        }
        Some(s) if s.message().is_empty() => s.code().description().to_lowercase(),
        Some(s) => format!(
            "{} ({})",
            s.message(),
            s.code().description().to_lowercase()
        ),
        None if texts.is_empty() => e.to_string(),
        None => texts.join(": "),
    }
}

fn io_in_words(io: &std::io::Error) -> Option<&'static str> {
    use std::io::ErrorKind::*;
    Some(match io.kind() {
        ConnectionRefused => "connection refused",
        TimedOut => "timed out connecting",
        HostUnreachable | NetworkUnreachable => "no route to host",
        ConnectionReset => "connection reset",
        ConnectionAborted => "connection aborted",
        BrokenPipe | UnexpectedEof => "connection closed",
        AddrNotAvailable => "address not available",
        _ => return None,
    })
}

/// etcd's answer when it refuses the user, the password, or a request
/// without them (auth enabled, no user configured): in words, not as a
/// connection problem, since no retry can fix it.
fn auth_failure(cfg: &EtcdConfig, e: &etcd_client::Error) -> Option<CoordError> {
    let etcd_client::Error::GRpcStatus(status) = e else {
        return None;
    };
    let message = status.message().trim_start_matches("etcdserver: ");
    let refused = matches!(
        status.code(),
        tonic::Code::InvalidArgument | tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
    ) && [
        "authentication failed",
        "user name is empty",
        "permission denied",
        "invalid auth token",
    ]
    .iter()
    .any(|m| message.contains(m));
    let cause = match (&cfg.user, message) {
        (None, m) if m.contains("user name is empty") => {
            "etcd requires authentication; set user and password_env or password_file in [cluster]"
                .to_string()
        }
        (_, m) => m.trim_start_matches("authentication failed, ").to_string(),
    };
    refused.then(|| CoordError::Auth {
        endpoints: cfg.endpoints.join(","),
        user: cfg.user.clone(),
        cause,
    })
}

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
    if let (Some(user), Some(password)) = (&cfg.user, &cfg.password) {
        opts = opts.with_user(user.clone(), password.clone());
    }
    if cfg.endpoints.iter().any(|e| e.starts_with("https://")) {
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| CoordError::Etcd(format!("ca_file {}: {e}", ca.display())))?;
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(pem));
        }
        if let (Some(cert), Some(key)) = (&cfg.cert_file, &cfg.key_file) {
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
        endpoints: cfg.endpoints.len(),
    };
    Client::connect_with_balanced_channel(&cfg.endpoints, Some(opts), channel)
        .await
        .map_err(|e| auth_failure(cfg, &e).unwrap_or_else(|| etcd_err("cannot connect")(e)))
}

/// Key layout under the prefix.
#[derive(Debug, Clone)]
pub struct Keys(String);

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys(prefix.trim_end_matches('/').to_string())
    }
    pub fn leader(&self) -> String {
        format!("{}/leader", self.0)
    }
    pub fn members(&self) -> String {
        format!("{}/members/", self.0)
    }
    pub fn member(&self, instance: &str) -> String {
        format!("{}/members/{instance}", self.0)
    }
    pub fn lasts(&self) -> String {
        format!("{}/last/", self.0)
    }
    pub fn last(&self, job: &str) -> String {
        format!("{}/last/{job}", self.0)
    }
    /// Running markers of every job.
    pub fn all_actives(&self) -> String {
        format!("{}/active/", self.0)
    }
    pub fn actives(&self, job: &str) -> String {
        format!("{}/active/{job}/", self.0)
    }
    pub fn active(&self, job: &str, run_id: &str) -> String {
        format!("{}/active/{job}/{run_id}", self.0)
    }
    pub fn histories(&self, job: &str) -> String {
        format!("{}/history/{job}/", self.0)
    }
    pub fn history(&self, job: &str, run_id: &str) -> String {
        format!("{}/history/{job}/{run_id}", self.0)
    }
    pub fn requests(&self) -> String {
        format!("{}/requests/", self.0)
    }
    pub fn request(&self, run_id: &str) -> String {
        format!("{}/requests/{run_id}", self.0)
    }
    /// The single run of `job` waiting for the active one to end.
    pub fn queued(&self, job: &str) -> String {
        format!("{}/queued/{job}", self.0)
    }
    pub fn stop_requests(&self, job: &str) -> String {
        format!("{}/stop/{job}/", self.0)
    }
    /// Put by a run that replaces `run_id`: asks that run to stop.
    pub fn stop_request(&self, job: &str, run_id: &str) -> String {
        format!("{}/stop/{job}/{run_id}", self.0)
    }
}

/// The value of `P/last/<job>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LastTick {
    tick: DateTime<Utc>,
    term: u64,
    run_id: String,
}

/// The value of `P/members/<instance>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub instance: String,
    pub host: String,
    pub pid: u32,
    pub since: DateTime<Utc>,
    /// The content hash of the config the instance uses (announced again
    /// on every reload), so replicas running different configs show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// The instance's wall clock when it wrote this value: rewritten at
    /// every heartbeat, so the members can compare clocks (`clock`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<DateTime<Utc>>,
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
async fn hold_run_lease(
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

/// A replaceable run's supervisor: wait for a newer run's request to stop
/// (a key under `P/stop/`) and pass its reason on.
async fn watch_stop_request(
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

/// One instance's session: a lease everything of the instance is bound to.
struct Session {
    lease: i64,
    /// What `P/members/<instance>` holds (the heartbeat rewrites it).
    member: Arc<Mutex<MemberInfo>>,
    alive: watch::Receiver<bool>,
    /// Until when the lease is vouched for (see `keep_lease_alive`).
    vouched: watch::Receiver<Instant>,
    task: tokio::task::JoinHandle<()>,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
        self.heartbeat.abort();
    }
}

/// Rewrite the member key with this instance's clock every `every`, so the
/// other members can measure their offset from it (see `clock`).
async fn publish_clock(
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

/// Feed `clock` from the members' heartbeats until the process ends.
/// Every deleted running marker under `prefix`, into `ended`; resumed
/// after the last revision seen when the watch breaks, so none is missed.
async fn watch_ended_markers(
    mut client: Client,
    prefix: String,
    ended: Arc<EndedMarkers>,
    keep: Duration,
) {
    let mut next: Option<i64> = None;
    loop {
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
                    continue;
                }
                if let Some(Ok(rec)) = event.prev_kv().map(parse::<RunRecord>) {
                    ended.push(rec, keep);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn watch_member_clocks(client: Client, keys: Keys, me: String, clock: Arc<ClockWatch>) {
    let prefix = keys.members();
    let name_of = |key: &[u8]| String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
    loop {
        let attempt = async {
            let mut client = client.clone();
            let now = client
                .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
                .await?;
            let rev = now.header().map_or(0, |h| h.revision());
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

/// A session's lease, whether etcd still has it, and until when it is
/// vouched for.
type SessionView = (i64, watch::Receiver<bool>, watch::Receiver<Instant>);

/// The etcd backend.
pub struct Etcd {
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
}

/// Which claim: job, request, and for a scheduled tick the tick (a
/// request's retries each compute a new manual tick; its id is its own).
type UncertainKey = (String, Option<String>, Option<DateTime<Utc>>);

fn uncertain_key(req: &ClaimRequest<'_>) -> UncertainKey {
    (
        req.job.to_string(),
        req.request.map(str::to_string),
        req.request.is_none().then_some(req.tick),
    )
}

/// A claim transaction with its answer lost.
struct Uncertain {
    run_id: String,
    lease: i64,
    granted_at: DateTime<Utc>,
}

/// Markers deleted (a run recorded, or its lease expired), newest last.
#[derive(Default)]
struct EndedMarkers {
    list: Mutex<std::collections::VecDeque<(Instant, RunRecord)>>,
    added: tokio::sync::Notify,
}

impl EndedMarkers {
    /// Kept this long while nobody takes them (a standby): longer than a
    /// marker can outlive the leader that claimed it plus a campaign.
    fn keep(ttl: Duration) -> Duration {
        ttl * 3 + Duration::from_secs(5)
    }

    fn push(&self, rec: RunRecord, keep: Duration) {
        let mut list = self.list.lock().expect("ended markers lock");
        while list.front().is_some_and(|(at, _)| at.elapsed() > keep) || list.len() >= 50_000 {
            list.pop_front();
        }
        list.push_back((Instant::now(), rec));
        drop(list);
        self.added.notify_one();
    }

    fn take(&self) -> Vec<RunRecord> {
        let mut list = self.list.lock().expect("ended markers lock");
        list.drain(..).map(|(_, rec)| rec).collect()
    }
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
                        cfg.endpoints.join(","),
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
        let leader = Keys::new(&cfg.prefix).leader();
        if let Err(e) = client.get(leader, Some(probe)).await {
            if let Some(refused) = auth_failure(&cfg, &e) {
                return Err(refused);
            }
        }
        Ok(Etcd {
            keys: Keys::new(&cfg.prefix),
            client,
            session: tokio::sync::Mutex::new(None),
            last: Mutex::new(HashMap::new()),
            spare: Mutex::new(Vec::new()),
            config_hash: Mutex::new(None),
            live_session: Mutex::new(None),
            clock: Arc::new(ClockWatch::new(cfg.max_clock_skew, cfg.renew_every())),
            clock_watch: Mutex::new(None),
            ended: Arc::default(),
            marker_watch: Mutex::new(None),
            uncertain: Mutex::new(HashMap::new()),
            cfg,
        })
    }

    /// This replica's clock against the other live members' clocks.
    pub fn clock_verdict(&self) -> ClockVerdict {
        self.clock.verdict()
    }

    /// Wait until this clock may lead: measured, and not skewed. Says so at
    /// ERROR, with the figures, whenever it is skewed.
    async fn wait_for_sound_clock(&self) {
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
    fn guard_clock(
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

    /// The live session, creating (and registering this instance under
    /// `P/members/`) a new one if there is none or the old one died.
    async fn session(&self, instance: &str) -> Result<SessionView> {
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
                    EndedMarkers::keep(self.cfg.lease_ttl),
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
        tracing::info!(lease, ttl = %crate::observe::log::duration(self.cfg.lease_ttl), "etcd session started");
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
    async fn try_lead(
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
    async fn wait_leader_gone(&self, rev: i64, session_alive: &mut watch::Receiver<bool>) {
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
    async fn load_last_ticks(&self) -> Result<()> {
        let resp = self
            .client
            .clone()
            .get(self.keys.lasts(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(etcd_err("read last ticks"))?;
        let mut cache = self.last.lock().expect("cache lock");
        cache.clear();
        let prefix_len = self.keys.lasts().len();
        for kv in resp.kvs() {
            let job = String::from_utf8_lossy(&kv.key()[prefix_len..]).into_owned();
            cache.insert(job, (last_tick_of(kv), kv.mod_revision()));
        }
        Ok(())
    }

    /// `load_last_ticks`, tried again for up to [`LOAD_LAST_TICKS_FOR`]
    /// while the session lives.
    async fn load_last_ticks_retrying(
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

    /// Every job's last fired tick (`P/last/<job>`).
    pub async fn last_ticks(&self) -> Result<HashMap<String, DateTime<Utc>>> {
        let resp = self
            .client
            .clone()
            .get(self.keys.lasts(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(etcd_err("read last ticks"))?;
        let prefix_len = self.keys.lasts().len();
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| {
                let job = String::from_utf8_lossy(&kv.key()[prefix_len..]).into_owned();
                (job, last_tick_of(kv))
            })
            .collect())
    }

    /// Leader info with the term read from the key's create revision.
    pub async fn leader(&self) -> Result<Option<LeaderInfo>> {
        let resp = self
            .client
            .clone()
            .get(self.keys.leader(), None)
            .await
            .map_err(etcd_err("read leader"))?;
        Ok(resp.kvs().first().and_then(|kv| {
            let mut info: LeaderInfo = parse(kv).ok()?;
            info.term = kv.create_revision() as u64;
            Some(info)
        }))
    }

    pub async fn members(&self) -> Result<Vec<MemberInfo>> {
        let resp = self
            .client
            .clone()
            .get(self.keys.members(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(etcd_err("read members"))?;
        Ok(resp.kvs().iter().filter_map(|kv| parse(kv).ok()).collect())
    }

    /// Active runs of `job` anywhere in the cluster, oldest first.
    pub async fn active_runs(&self, job: &str) -> Result<Vec<RunRecord>> {
        let resp = self
            .client
            .clone()
            .get(
                self.keys.actives(job),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .map_err(etcd_err("read active runs"))?;
        Ok(resp.kvs().iter().filter_map(|kv| parse(kv).ok()).collect())
    }

    /// History of `job`, newest first (run ids sort by time).
    pub async fn history(&self, job: &str, limit: usize) -> Result<Vec<RunRecord>> {
        let opts = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_limit(limit as i64);
        let resp = self
            .client
            .clone()
            .get(self.keys.histories(job), Some(opts))
            .await
            .map_err(etcd_err("read history"))?;
        Ok(resp.kvs().iter().filter_map(|kv| parse(kv).ok()).collect())
    }

    /// Run the gets in one transaction, so that they see one revision: a
    /// run that ends in between is then either active or recorded, never
    /// both and never neither (its final record and the removal of its
    /// marker are one transaction too).
    async fn get_together(&self, what: &str, gets: Vec<TxnOp>) -> Result<Vec<Vec<KeyValue>>> {
        let resp = self
            .client
            .clone()
            .txn(Txn::new().and_then(gets))
            .await
            .map_err(etcd_err(what))?;
        Ok(resp
            .op_responses()
            .into_iter()
            .map(|r| match r {
                TxnOpResponse::Get(mut g) => g.take_kvs(),
                _ => Vec::new(),
            })
            .collect())
    }

    /// Pruning is housekeeping: its failure must not look like a lost record.
    async fn prune_or_warn(client: &mut Client, keys: &Keys, job: &str, limit: usize) {
        // Counting on every record would add a read per fire; pruning in
        // batches only needs to look now and then: about one record in eight.
        if !rand_bits().is_multiple_of(8) {
            return;
        }
        if let Err(e) = Self::prune(client, keys, job, limit).await {
            tracing::warn!(
                job,
                "could not prune history (will retry with the next record): {e}"
            );
        }
    }

    /// Drop history entries of `job` beyond the retention limit.
    async fn prune(client: &mut Client, keys: &Keys, job: &str, limit: usize) -> Result<()> {
        let prefix = keys.histories(job);
        let count = client
            .get(
                prefix.clone(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .map_err(etcd_err("count history"))?
            .count() as usize;
        // Prune in batches, not on every record.
        if count <= limit + limit / 10 {
            return Ok(());
        }
        let opts = GetOptions::new()
            .with_prefix()
            .with_keys_only()
            .with_sort(SortTarget::Key, SortOrder::Ascend)
            .with_limit((count - limit + 1) as i64);
        let resp = client
            .get(prefix, Some(opts))
            .await
            .map_err(etcd_err("list history"))?;
        if let (Some(first), Some(cut)) = (resp.kvs().first(), resp.kvs().get(count - limit)) {
            client
                .delete(
                    first.key().to_vec(),
                    Some(DeleteOptions::new().with_range(cut.key().to_vec())),
                )
                .await
                .map_err(etcd_err("prune history"))?;
        }
        Ok(())
    }

    /// Stream trigger requests to the leader: the pending ones, then new ones.
    fn watch_requests(&self, tx: mpsc::Sender<TriggerRequest>) -> tokio::task::JoinHandle<()> {
        let client = self.client.clone();
        let prefix = self.keys.requests();
        tokio::spawn(async move {
            let mut client = client;
            loop {
                let Ok(resp) = client
                    .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
                    .await
                else {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                };
                for kv in resp.kvs() {
                    if let Ok(req) = parse::<TriggerRequest>(kv) {
                        if tx.send(req).await.is_err() {
                            return;
                        }
                    }
                }
                let rev = resp.header().map_or(0, |h| h.revision());
                let opts = WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(rev + 1);
                let Ok(mut stream) = client.watch(prefix.clone(), Some(opts)).await else {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                };
                // On compaction, cancellation or a broken stream: list again and rewatch.
                while let Ok(Some(resp)) = stream.message().await {
                    if resp.canceled() {
                        break;
                    }
                    for event in resp.events() {
                        if event.event_type() != EventType::Put {
                            continue;
                        }
                        if let Some(Ok(req)) = event.kv().map(parse::<TriggerRequest>) {
                            if tx.send(req).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        })
    }

    /// Watch the leader key; invalidate leadership when it goes or changes hands.
    fn guard_leadership(
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
    async fn resign_term(&self, term: u64) {
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

    /// Record runs whose marker expired without a final record (their
    /// supervisor died or was cut off for good) as `lost`, so every run
    /// leaves a record. Runs on the leader only.
    fn record_lost_runs(&self, recorded: mpsc::Sender<RunRecord>) -> tokio::task::JoinHandle<()> {
        let client = self.client.clone();
        let keys = self.keys.clone();
        let ended = self.ended.clone();
        tokio::spawn(async move {
            let mut client = client;
            loop {
                // What every replica saw lately, the leader's predecessors'
                // term included, then each deletion as it comes.
                let added = ended.added.notified();
                for mut rec in ended.take() {
                    // A supervisor that finished wrote the record in the
                    // same transaction that deleted the marker.
                    let key = keys.history(&rec.job, &rec.run_id);
                    // Only whether it exists: the record itself may be large.
                    let counted = client
                        .get(key.clone(), Some(GetOptions::new().with_count_only()))
                        .await;
                    match counted {
                        Ok(r) if r.count() == 0 => {}
                        _ => continue,
                    }
                    let now = Utc::now();
                    rec.outcome = Outcome::Lost;
                    rec.reason = Some("its running marker expired: the supervisor died or lost etcd before recording the run".into());
                    rec.duration_ms = Some((now - rec.started_at).num_milliseconds().max(0) as u64);
                    rec.ended_at = Some(now);
                    tracing::warn!(job = %rec.job, run_id = %rec.run_id, instance = %rec.instance, "run lost");
                    // Only if the supervisor did not record it meanwhile.
                    let txn = Txn::new()
                        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(key, json(&rec), None)]);
                    if client.txn(txn).await.is_ok_and(|r| r.succeeded()) {
                        let _ = recorded.try_send(rec);
                    }
                }
                added.await;
            }
        })
    }

    /// A spare lease is only used while young: the supervisor trusts a run
    /// lease, unconfirmed, until 2/3 of the TTL after it was asked for.
    fn spare_lease_max_age(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.cfg.lease_ttl / 4).unwrap_or_default()
    }

    /// Ask etcd for a run lease; the time goes before the request, so etcd
    /// keeps the lease at least until that time plus the TTL.
    async fn grant_run_lease(&self) -> Result<(i64, DateTime<Utc>)> {
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
    fn take_spare_lease(&self) -> Option<(i64, DateTime<Utc>)> {
        let oldest = Utc::now() - self.spare_lease_max_age();
        let mut spare = self.spare.lock().expect("spare lease lock");
        match spare.last() {
            Some((_, at)) if *at > oldest => spare.pop(),
            _ => None,
        }
    }

    /// Spares older than this are dropped: renewing them could come too late.
    fn spare_lease_keep(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.cfg.lease_ttl / 2).unwrap_or_default()
    }

    /// Renew a spare lease once; when the renewal was sent, if etcd still
    /// has the lease.
    async fn renew_lease(&self, lease: i64) -> Option<DateTime<Utc>> {
        let at = Utc::now();
        let mut client = self.client.clone();
        let (mut keeper, mut responses) = client.lease_keep_alive(lease).await.ok()?;
        keeper.keep_alive().await.ok()?;
        responses.message().await.ok()?.filter(|r| r.ttl() > 0)?;
        Some(at)
    }

    /// Keep a lease nothing is bound to (from a claim that started nothing,
    /// or handed back by a finished run) for a later claim.
    fn give_back_lease(&self, lease: i64, granted_at: DateTime<Utc>) {
        if Utc::now() - granted_at < self.spare_lease_keep() {
            let mut spare = self.spare.lock().expect("spare lease lock");
            spare.push((lease, granted_at));
            spare.sort_by_key(|(_, at)| *at);
        }
    }

    async fn claim_once(
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
                Ok(Some(found)) => return self.settled(found, term, run_id, &[u]),
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
        let mut client = self.client.clone();
        // The earlier attempt's lease, while young enough to trust: should
        // that attempt commit after all, it wrote the same marker, bound to
        // the same lease.
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
        };
        let mut marker = RunRecord::not_run(
            req.job,
            req.tick,
            req.trigger,
            req.instance,
            Outcome::Running,
            String::new(),
        );
        marker.run_id = run_id.to_string();
        marker.term = term;
        marker.ended_at = None;
        marker.duration_ms = None;
        marker.reason = None;
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
        let get_active = || {
            TxnOp::get(
                actives.clone(),
                Some(GetOptions::new().with_prefix().with_limit(1)),
            )
        };
        let no_active =
            || Compare::create_revision(actives.clone(), CompareOp::Equal, 0).with_prefix();
        let no_queued = || Compare::create_revision(queued_key.clone(), CompareOp::Equal, 0);
        let inner = match req.overlap {
            Overlap::Allow => Txn::new().and_then([put_marker(&marker_key)]),
            Overlap::Skip => Txn::new()
                .when([no_active()])
                .and_then([put_marker(&marker_key)])
                .or_else([get_active()]),
            // Start now only if nothing runs and nothing waits (a run
            // waiting for its turn must not be overtaken); else take the
            // single waiting place if it is free.
            Overlap::Queue | Overlap::Replace => Txn::new()
                .when([no_active(), no_queued()])
                .and_then([put_marker(&marker_key)])
                .or_else([TxnOp::txn(
                    Txn::new()
                        .when([no_queued()])
                        .and_then([put_marker(&queued_key), get_active()])
                        .or_else([get_active()]),
                )]),
        };
        ops.push(TxnOp::txn(inner));
        let txn = Txn::new().when(when).and_then(ops).or_else([
            TxnOp::get(leader_key, None),
            TxnOp::get(last_key.clone(), None),
            TxnOp::get(self.keys.request(req.request.unwrap_or("-")), None),
        ]);
        let claim = |turn| Claim {
            run_id: run_id.to_string(),
            term,
            hold: Hold::Lease {
                id: lease,
                granted_at,
            },
            turn,
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
            return Err((ClaimRejected::NotLeader, false));
        }
        let resp = match client.txn(txn).await {
            Ok(r) => r,
            Err(e) => {
                // The transaction may have committed with its answer lost,
                // or may commit yet: read back what it would have written.
                // Until that is known, the next attempt reuses its run id
                // and lease.
                return match self.settle(req, run_id).await {
                    Ok(Some(found)) => self.settled(found, term, run_id, &[&this]),
                    Ok(None) => {
                        self.keep_uncertain(req, this);
                        Err(backend(etcd_err("claim")(e)))
                    }
                    Err(_) => {
                        self.forget_last(req.job);
                        self.keep_uncertain(req, this);
                        Err(backend(etcd_err("claim")(e)))
                    }
                };
            }
        };
        if resp.succeeded() {
            if req.advances_schedule {
                let rev = resp.header().map_or(0, |h| h.revision());
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
                return Ok(claim(Turn::Now));
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
                    return Ok(claim(match req.overlap {
                        Overlap::Replace => Turn::Replace { active },
                        _ => Turn::Queued,
                    }));
                }
                self.give_back_lease(lease, granted_at);
                return Err((ClaimRejected::AlreadyQueued(active), false));
            }
            self.give_back_lease(lease, granted_at);
            return Err((ClaimRejected::StillRunning(first_active(responses)), false));
        }
        let gets: Vec<Vec<KeyValue>> = resp
            .op_responses()
            .into_iter()
            .map(|r| match r {
                TxnOpResponse::Get(mut g) => g.take_kvs(),
                _ => Vec::new(),
            })
            .collect();
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
                Ok(Some(found)) => self.settled(found, term, run_id, &[&this]),
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

    /// Write `record` once: `None` when its job's last tick moved under a
    /// `missed` entry, which is then worth writing again. `claimed`: see
    /// `Coordinator::record_claimed`.
    async fn write_entry(&self, record: &RunRecord, claimed: bool) -> Result<Option<bool>> {
        let mut client = self.client.clone();
        let history = self.keys.history(&record.job, &record.run_id);
        // Never overwrite a record (a deposed leader's late skip must not
        // replace the real run's), and a record written for a leadership
        // term only while that term lasts, but for a claimed tick (a skip,
        // a run not started): the claim committed under that term, so the
        // entry is the tick's only trace even when the term ended right
        // after (a resign, a skewed clock giving up, a pause).
        let claimed = claimed || record.outcome == Outcome::Skipped;
        let mut when = vec![Compare::create_revision(
            history.clone(),
            CompareOp::Equal,
            0,
        )];
        if record.term > 0 && !claimed {
            when.push(Compare::create_revision(
                self.keys.leader(),
                CompareOp::Equal,
                record.term as i64,
            ));
        }
        // A final record ends the run's marker, if it has one (a claimed run
        // whose supervisor could not be started).
        let mut ops = vec![
            TxnOp::put(history, json(record), None),
            TxnOp::delete(self.keys.active(&record.job, &record.run_id), None),
        ];
        // A `missed` entry consumes its ticks as a claim does: it moves the
        // job's last tick up to its newest one in the same transaction, so
        // a later leader resumes after them instead of recording them
        // missed a second time. Only the term's own leader writes it.
        let last_key = self.keys.last(&record.job);
        let mut advance = None;
        if record.outcome == Outcome::Missed && record.term > 0 && !claimed {
            let cached = self
                .last
                .lock()
                .expect("cache lock")
                .get(&record.job)
                .copied();
            let cached = match cached {
                Some(c) => Some(c),
                None => client
                    .get(last_key.clone(), None)
                    .await
                    .map_err(etcd_err("read last tick"))?
                    .kvs()
                    .first()
                    .map(|kv| (last_tick_of(kv), kv.mod_revision())),
            };
            if cached.is_none_or(|(tick, _)| tick < record.tick) {
                let last = LastTick {
                    tick: record.tick,
                    term: record.term,
                    run_id: record.run_id.clone(),
                };
                let (unchanged, put) = move_last(&last_key, cached, &last);
                when.push(unchanged);
                ops.push(put);
                advance = Some((record.tick, cached.map_or(0, |c| c.1)));
            }
        }
        let txn = Txn::new()
            .when(when)
            .and_then(ops)
            .or_else([TxnOp::get(last_key, None)]);
        let resp = client.txn(txn).await.map_err(etcd_err("write record"))?;
        if !resp.succeeded() {
            if let Some((_, compared)) = advance {
                // If the last tick moved since it was read (a claim or
                // another entry of this term got there first, or the cache
                // was stale), write the entry again against what is there
                // now; judged by this attempt's own compare, not the cache,
                // which the winner may have updated already.
                let seen = resp.op_responses().into_iter().find_map(|r| match r {
                    TxnOpResponse::Get(mut g) => g.take_kvs().into_iter().next(),
                    _ => None,
                });
                let seen = seen.map(|kv| (last_tick_of(&kv), kv.mod_revision()));
                let mut cache = self.last.lock().expect("cache lock");
                match seen {
                    Some(s) => cache.insert(record.job.clone(), s),
                    None => cache.remove(&record.job),
                };
                if seen.map_or(0, |s| s.1) != compared {
                    return Ok(None);
                }
            }
            tracing::debug!(job = %record.job, run_id = %record.run_id, "record not written: already recorded, or no longer leader");
            return Ok(Some(false));
        }
        if let Some((tick, _)) = advance {
            let rev = resp.header().map_or(0, |h| h.revision());
            self.last
                .lock()
                .expect("cache lock")
                .insert(record.job.clone(), (tick, rev));
        }
        Self::prune_or_warn(&mut client, &self.keys, &record.job, self.cfg.history_limit).await;
        Ok(Some(true))
    }

    /// Read back whether a claim sent as `run_id` committed: `None` if it
    /// did not (or not yet), else its turn or refusal and the lease its
    /// marker is bound to. One read transaction, so the keys agree.
    async fn settle(
        &self,
        req: &ClaimRequest<'_>,
        run_id: &str,
    ) -> std::result::Result<
        Option<(std::result::Result<Turn, ClaimRejected>, i64)>,
        etcd_client::Error,
    > {
        let get = |key: String| TxnOp::get(key, None);
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
        ]);
        let resp = self.client.clone().txn(read).await?;
        let gets: Vec<Vec<KeyValue>> = resp
            .op_responses()
            .into_iter()
            .map(|r| match r {
                TxnOpResponse::Get(mut g) => g.take_kvs(),
                _ => Vec::new(),
            })
            .collect();
        let Ok([marker, queued, last, request, active, history]) =
            <[Vec<KeyValue>; 6]>::try_from(gets)
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
            return Ok(Some((Ok(Turn::Now), kv.lease())));
        }
        let active = active
            .first()
            .and_then(|kv| parse::<RunRecord>(kv).ok())
            .map(Box::new);
        if let Some(kv) = queued.first() {
            if parse::<RunRecord>(kv).is_ok_and(|r| r.run_id == run_id) {
                let turn = match req.overlap {
                    Overlap::Replace => Turn::Replace { active },
                    _ => Turn::Queued,
                };
                return Ok(Some((Ok(turn), kv.lease())));
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
        let ended = !history.is_empty()
            || self
                .ended
                .list
                .lock()
                .expect("ended markers lock")
                .iter()
                .any(|(_, r)| r.run_id == run_id);
        let rejected = match req.overlap {
            _ if ended => ClaimRejected::Ended(run_id.to_string()),
            Overlap::Allow => ClaimRejected::Ended(run_id.to_string()),
            Overlap::Skip => ClaimRejected::StillRunning(active),
            Overlap::Queue | Overlap::Replace => ClaimRejected::AlreadyQueued(active),
        };
        Ok(Some((Err(rejected), 0)))
    }

    /// The claim an earlier attempt made, from what `settle` found; `sent`
    /// are the leases that attempt may have used (one is bound to the
    /// marker; the others are free again).
    fn settled(
        &self,
        (found, bound): (std::result::Result<Turn, ClaimRejected>, i64),
        term: u64,
        run_id: &str,
        sent: &[&Uncertain],
    ) -> std::result::Result<Claim, (ClaimRejected, bool)> {
        for u in sent.iter().filter(|u| u.lease != bound) {
            self.give_back_lease(u.lease, u.granted_at);
        }
        let turn = found.map_err(|rejected| (rejected, false))?;
        // A lease of unknown age is not trusted: the run is refused at start.
        let granted_at = sent
            .iter()
            .find(|u| u.lease == bound)
            .map_or(DateTime::<Utc>::MIN_UTC, |u| u.granted_at);
        tracing::info!(run_id, "a claim whose answer was lost had gone through");
        Ok(Claim {
            run_id: run_id.to_string(),
            term,
            hold: Hold::Lease {
                id: bound,
                granted_at,
            },
            turn,
        })
    }

    /// The unanswered earlier attempt of this claim, if the tick is the same.
    fn take_uncertain(&self, req: &ClaimRequest<'_>, run_id: &str) -> Option<Uncertain> {
        let mut map = self.uncertain.lock().expect("uncertain claims lock");
        let key = uncertain_key(req);
        if map.get(&key)?.run_id != run_id {
            return None;
        }
        map.remove(&key)
    }

    fn keep_uncertain(&self, req: &ClaimRequest<'_>, u: Uncertain) {
        let key = uncertain_key(req);
        let mut map = self.uncertain.lock().expect("uncertain claims lock");
        // Claims nobody retries (given up, or a request withdrawn) must not
        // pile up.
        let old = Utc::now() - chrono::Duration::minutes(10);
        map.retain(|_, u| u.granted_at > old);
        map.insert(key, u);
    }

    /// The run id for a claim of `tick`: an unanswered earlier attempt's.
    fn run_id_for(&self, req: &ClaimRequest<'_>) -> String {
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
    fn forget_last(&self, job: &str) {
        self.last.lock().expect("cache lock").remove(job);
    }
}

/// Moving `P/last/<job>` to `last`: the put, and the compare that it is
/// still at the `cached` revision (absent if nothing is cached).
fn move_last(key: &str, cached: Option<(DateTime<Utc>, i64)>, last: &LastTick) -> (Compare, TxnOp) {
    (
        Compare::mod_revision(key, CompareOp::Equal, cached.map_or(0, |c| c.1)),
        TxnOp::put(key, json(last), None),
    )
}

/// The tick stored in a `P/last/<job>` key. An unreadable value must not
/// stop the job for good: treat it as "long ago" (the claim's revision
/// check still protects the tick) and say so loudly.
fn last_tick_of(kv: &KeyValue) -> DateTime<Utc> {
    match parse::<LastTick>(kv) {
        Ok(last) => last.tick,
        Err(e) => {
            tracing::error!("{e}; treating it as never fired");
            DateTime::<Utc>::MIN_UTC
        }
    }
}

/// A few random bits without a dependency: the sub-second part of the clock.
fn rand_bits() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() >> 10)
        .unwrap_or(0)
}

/// How long a new leader keeps trying to read the last fired ticks before
/// it gives its term back.
const LOAD_LAST_TICKS_FOR: Duration = Duration::from_secs(10);

/// Run leases granted ahead of one tick, at most: a bound on what a
/// schedule with very many simultaneous jobs asks of etcd at once.
const MAX_SPARE_LEASES: usize = 2048;

fn revoke_later(mut client: Client, lease: i64) {
    tokio::spawn(async move {
        let _ = client.lease_revoke(lease).await;
    });
}

/// etcd refuses transactions of more than 128 operations by default
/// (`--max-txn-ops`); two per job stays well below.
const JOBS_PER_TXN: usize = 50;

impl Etcd {
    /// For each of `jobs`: its retained history, newest first and at most
    /// `limit` entries (active runs included), and its active runs. Many
    /// jobs per transaction, for `list` and `/status` over many jobs.
    pub async fn recent_and_active(
        &self,
        jobs: Vec<String>,
        limit: usize,
    ) -> Result<Vec<(Vec<RunRecord>, Vec<RunRecord>)>> {
        let mut out = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(JOBS_PER_TXN) {
            let newest = GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Key, SortOrder::Descend)
                .with_limit(limit as i64);
            let gets = chunk
                .iter()
                .flat_map(|job| {
                    [
                        TxnOp::get(
                            self.keys.actives(job),
                            Some(GetOptions::new().with_prefix()),
                        ),
                        TxnOp::get(self.keys.histories(job), Some(newest.clone())),
                    ]
                })
                .collect();
            let found = self.get_together("read history", gets).await?;
            for pair in found.chunks(2) {
                let parse_all = |kvs: &[KeyValue]| -> Vec<RunRecord> {
                    kvs.iter().filter_map(|kv| parse(kv).ok()).collect()
                };
                let active = parse_all(&pair[0]);
                let mut history = active.clone();
                history.extend(parse_all(pair.get(1).map_or(&[][..], |v| &v[..])));
                history.sort_by(|a, b| b.run_id.cmp(&a.run_id));
                history.truncate(limit);
                out.push((history, active));
            }
        }
        Ok(out)
    }
}

impl HistoryReader for Etcd {
    async fn recent(&self, job: &str, limit: usize) -> Result<Vec<RunRecord>> {
        let newest = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_limit(limit as i64);
        let found = self
            .get_together(
                "read history",
                vec![
                    TxnOp::get(
                        self.keys.actives(job),
                        Some(GetOptions::new().with_prefix()),
                    ),
                    TxnOp::get(self.keys.histories(job), Some(newest)),
                ],
            )
            .await?;
        let mut runs: Vec<RunRecord> = found
            .iter()
            .flatten()
            .filter_map(|kv| parse(kv).ok())
            .collect();
        runs.sort_by(|a, b| b.run_id.cmp(&a.run_id));
        runs.truncate(limit);
        Ok(runs)
    }

    async fn active(&self, job: &str) -> Result<Vec<RunRecord>> {
        self.active_runs(job).await
    }

    async fn find_run(&self, jobs: &[&str], run_id: &str) -> Result<Option<RunRecord>> {
        for chunk in jobs.chunks(JOBS_PER_TXN) {
            let gets = chunk
                .iter()
                .flat_map(|job| {
                    [
                        TxnOp::get(self.keys.history(job, run_id), None),
                        TxnOp::get(self.keys.active(job, run_id), None),
                    ]
                })
                .collect();
            let found = self.get_together("look up run", gets).await?;
            if let Some(kv) = found.iter().flatten().next() {
                return parse(kv).map(Some);
            }
        }
        Ok(None)
    }
}

impl Coordinator for Etcd {
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
                    let (req_tx, req_rx) = mpsc::channel(256);
                    let requests = self.watch_requests(req_tx);
                    let (lost_tx, lost_rx) = mpsc::channel(256);
                    let lost_runs = self.record_lost_runs(lost_tx);
                    let hold = AbortOnDrop(vec![guard, clock_guard, requests, lost_runs]);
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

    async fn claim(
        &self,
        leadership: &Leadership,
        req: ClaimRequest<'_>,
    ) -> Result<Claim, ClaimRejected> {
        if !leadership.is_valid() {
            return Err(ClaimRejected::NotLeader);
        }
        let run_id = self.run_id_for(&req);
        let mut attempts = 0;
        loop {
            // The self-fencing rule holds for every attempt.
            if attempts > 0 && !leadership.is_valid() {
                return Err(ClaimRejected::NotLeader);
            }
            match self.claim_once(leadership, &req, &run_id).await {
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

    async fn record_claimed(&self, record: &RunRecord) -> Result<bool> {
        Ok(self.write_entry(record, true).await?.unwrap_or(false))
    }

    async fn reap_lost(&self, _job: &str) -> Vec<RunRecord> {
        // The leader records a run as lost once its marker expires (see
        // `record_lost_runs`); until then its lease may still be renewed.
        Vec::new()
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

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(t) = self.clock_watch.lock().expect("clock watch lock").take() {
            t.abort();
        }
        if let Some(t) = self.marker_watch.lock().expect("marker watch lock").take() {
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

/// A supervisor's recorder in cluster mode: keeps the run's lease (and so
/// its marker) alive, fences itself when it cannot, and writes the record.
pub struct EtcdRecorder {
    cfg: EtcdConfig,
    /// Set by the lease keeper once it has connected; `finished` connects
    /// itself if the keeper never did.
    client: Arc<tokio::sync::OnceCell<Client>>,
    keys: Keys,
    job: String,
    run_id: String,
    history_limit: usize,
    lease: i64,
    alive: watch::Receiver<bool>,
    keeper: tokio::task::JoinHandle<()>,
    /// Stop requests from a run replacing this one (`overlap = "replace"`).
    stop: watch::Receiver<Option<String>>,
    stop_watcher: Option<tokio::task::JoinHandle<()>>,
    /// The run's lease, renewed one last time after the final record and no
    /// longer renewed by this process: the next claim may bind to it.
    spare: Option<(i64, DateTime<Utc>)>,
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
        stoppable: bool,
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
        let keys = Keys::new(&cfg.prefix);
        let (stop_tx, stop) = watch::channel(None);
        let stop_watcher = stoppable.then(|| {
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
        })
    }

    /// Best effort, for a run whose supervisor could not take it over:
    /// record why it did not start and end its marker.
    pub async fn record_unstarted(cfg: &EtcdConfig, record: &RunRecord) {
        let keys = Keys::new(&cfg.prefix);
        let Ok(mut client) = connect(cfg).await else {
            return;
        };
        let history = keys.history(&record.job, &record.run_id);
        let txn = Txn::new()
            .when([Compare::create_revision(
                history.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then([
                TxnOp::put(history, json(record), None),
                TxnOp::delete(keys.active(&record.job, &record.run_id), None),
            ]);
        let _ = client.txn(txn).await;
    }
}

impl EtcdRecorder {
    /// The connection the lease keeper made, or a new one if it has not yet.
    async fn client(&self) -> Result<Client> {
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
                        self.keys.stop_request(&self.job, &rec.run_id),
                        why,
                        Some(PutOptions::new().with_lease(self.lease)),
                    )
                    .await
                    .map_err(etcd_err("ask the active run to stop"))?;
            }
        }
        let queued = self.keys.queued(&self.job);
        let mut alive = self.alive.clone();
        let lease_lost = async move {
            while *alive.borrow_and_update() {
                if alive.changed().await.is_err() {
                    break;
                }
            }
        };
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
                () = &mut lease_lost => return Err(CoordError::Etcd("the run's lease could not be renewed while it waited".into())),
            };
            if resp.succeeded() {
                return Ok(());
            }
            // Wait for a run to end; any change under the prefix since the
            // failed attempt's revision wakes us.
            let from = resp.header().map_or(0, |h| h.revision()) + 1;
            let opts = WatchOptions::new().with_prefix().with_start_revision(from);
            let ended = async {
                match client.watch(actives.clone(), Some(opts)).await {
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
            };
            tokio::select! {
                () = ended => {}
                () = &mut lease_lost => return Err(CoordError::Etcd("the run's lease could not be renewed while it waited".into())),
            }
        }
    }

    fn replacements(&mut self) -> watch::Receiver<Option<String>> {
        self.stop.clone()
    }

    fn handback(&self) -> Option<String> {
        self.spare
            .map(|(lease, at)| format!("lease {lease} {}", at.timestamp_millis()))
    }

    async fn attempt_failed(&mut self, record: &RunRecord) -> Result<()> {
        let history = self.keys.history(&self.job, &record.run_id);
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
        let mut client = loop {
            let txn = Txn::new().and_then([
                TxnOp::put(
                    self.keys.history(&self.job, &self.run_id),
                    json(record),
                    None,
                ),
                TxnOp::delete(self.keys.active(&self.job, &self.run_id), None),
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
            ]);
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

#[cfg(test)]
mod words_tests {
    use super::in_words;
    use std::io::{Error, ErrorKind};

    #[test]
    fn io_causes_are_said_in_words() {
        for (kind, words) in [
            (ErrorKind::ConnectionRefused, "connection refused"),
            (ErrorKind::TimedOut, "timed out connecting"),
            (ErrorKind::HostUnreachable, "no route to host"),
            (ErrorKind::NetworkUnreachable, "no route to host"),
        ] {
            let e = etcd_client::Error::IoError(Error::new(kind, "os detail"));
            assert_eq!(in_words(&e), words);
        }
        let lookup = etcd_client::Error::IoError(Error::other(
            "failed to lookup address information: Name or service not known",
        ));
        assert_eq!(in_words(&lookup), "name not resolved");
        let status =
            etcd_client::Error::GRpcStatus(tonic::Status::unavailable("etcdserver: no leader"));
        assert_eq!(
            in_words(&status),
            "etcdserver: no leader (the service is currently unavailable)"
        );
    }
}
