//! The one gRPC channel every etcd call goes through: endpoint health,
//! failover, the per-request deadline, and request metrics.
//!
//! tonic's balanced channel keeps handing requests to a member whose
//! connection fails, and the request then fails. This channel instead keeps
//! one lazily connected tonic channel per endpoint and a health mark on
//! each: a call goes to a healthy member, and if that member refuses it
//! (connection refused, "no leader", "not leader", unhealthy) or, for a
//! request that is safe to repeat, fails in any other way (timeout, broken
//! connection, unavailable), it is sent again at once to the next member,
//! all within one per-request deadline. A member that failed is marked down
//! and not used again until it accepts a connection (probed in the
//! background every [`PROBE_EVERY`]).
//!
//! Which requests are re-sent after they may have reached a server: every
//! request but `Txn`. Our puts, deletes and lease grants repeat harmlessly
//! (the same value again; a spare lease that expires unused). A
//! transaction may have committed with its answer lost, and only its
//! caller can tell (the claim looks for its run's marker), so a `Txn` is
//! re-sent only when it surely reached no server: a refused connection or
//! a member that refused it for want of a leader.
//!
//! Streams (`Watch`, `LeaseKeepAlive`) cannot be replayed: a new stream goes
//! to a healthy member, and its caller opens a new one when it breaks.
//!
//! Only a process that serves metrics installs them ([`record_into`]).

use crate::observe::Metrics;
use http_body_util::BodyExt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::codegen::http::{Request, Response, Uri};
use tonic::transport::channel::Change;
use tonic::transport::Endpoint;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceExt};

static METRICS: OnceLock<Arc<Metrics>> = OnceLock::new();

/// How often a member marked down is probed.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);

/// Record the etcd calls of clients connected from now on into `metrics`.
/// Process-wide because the client is built deep inside the backend's
/// `connect`, which also serves processes that have no metrics.
pub fn record_into(metrics: Arc<Metrics>) {
    let _ = METRICS.set(metrics);
}

/// The channel builder for `Client::connect_with_balanced_channel`;
/// `deadline` bounds each request, failovers included (for a stream: until
/// its response headers).
pub struct Channel {
    pub deadline: Duration,
    /// How many endpoints the client is about to add.
    pub endpoints: usize,
}

impl etcd_client::BalancedChannelBuilder for Channel {
    type Error = tonic::transport::Error;

    fn balanced_channel(
        self,
        buffer_size: usize,
    ) -> Result<
        (
            etcd_client::Channel,
            tokio::sync::mpsc::Sender<Change<Uri, Endpoint>>,
        ),
        Self::Error,
    > {
        let (tx, rx) = tokio::sync::mpsc::channel(buffer_size);
        let members = Arc::new(Members {
            list: RwLock::new(Vec::new()),
            next: AtomicUsize::new(0),
            added: tokio::sync::Notify::new(),
            expected: self.endpoints,
            created: Instant::now(),
        });
        tokio::spawn(maintain(Arc::downgrade(&members), rx));
        let channel = Failover {
            members,
            deadline: self.deadline,
            metrics: METRICS.get().cloned(),
        };
        Ok((
            etcd_client::Channel::Custom(BoxCloneSyncService::new(channel)),
            tx,
        ))
    }
}

struct Member {
    uri: Uri,
    channel: tonic::transport::Channel,
    down: AtomicBool,
    /// Whether it ever answered: the failure of a member that never did is
    /// no news (a one-shot command reports its own failure).
    answered: AtomicBool,
}

impl Member {
    fn mark_down(&self, why: &dyn std::fmt::Display) {
        if !self.down.swap(true, Ordering::SeqCst) {
            if self.answered.load(Ordering::SeqCst) {
                tracing::warn!(endpoint = %self.uri, "etcd member failed ({why}); using the others until it answers again");
            } else {
                tracing::debug!(endpoint = %self.uri, "etcd member failed ({why}); using the others until it answers");
            }
        }
    }
}

struct Members {
    list: RwLock<Vec<Arc<Member>>>,
    /// Round robin over the healthy members.
    next: AtomicUsize,
    added: tokio::sync::Notify,
    /// The endpoints the client adds (right after building the channel,
    /// through a queue); the first requests wait for all of them, briefly,
    /// or a request sent at once could find only a dead one to try.
    expected: usize,
    created: Instant,
}

impl Members {
    /// Every member, healthy ones first (rotating, so load spreads), then
    /// the ones marked down: when all are down, each is still worth a try.
    fn order(&self) -> Vec<Arc<Member>> {
        let list = self.list.read().expect("member list lock");
        let n = list.len();
        if n == 0 {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let rotated = (0..n).map(|i| list[(start + i) % n].clone());
        let (up, down): (Vec<_>, Vec<_>) = rotated.partition(|m| !m.down.load(Ordering::SeqCst));
        up.into_iter().chain(down).collect()
    }
}

/// Take endpoints from the client as it adds them, and probe the members
/// marked down until they accept a connection again.
async fn maintain(
    members: Weak<Members>,
    mut changes: tokio::sync::mpsc::Receiver<Change<Uri, Endpoint>>,
) {
    let mut probe = tokio::time::interval(PROBE_EVERY);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut open = true;
    loop {
        tokio::select! {
            change = changes.recv(), if open => {
                let Some(members) = members.upgrade() else { return };
                match change {
                    Some(Change::Insert(uri, endpoint)) => {
                        let member = Arc::new(Member { uri: uri.clone(), channel: endpoint.connect_lazy(), down: AtomicBool::new(false), answered: AtomicBool::new(false) });
                        let mut list = members.list.write().expect("member list lock");
                        list.retain(|m| m.uri != uri);
                        list.push(member);
                        drop(list);
                        members.added.notify_waiters();
                    }
                    Some(Change::Remove(uri)) => {
                        members.list.write().expect("member list lock").retain(|m| m.uri != uri);
                    }
                    // The client is gone; keep probing while channels live.
                    None => open = false,
                }
            }
            _ = probe.tick() => {
                let Some(members) = members.upgrade() else { return };
                let down: Vec<_> = members.list.read().expect("member list lock").iter().filter(|m| m.down.load(Ordering::SeqCst)).cloned().collect();
                drop(members);
                for member in down {
                    if answers(&member).await {
                        tracing::info!(endpoint = %member.uri, "etcd member answers again");
                        member.down.store(false, Ordering::SeqCst);
                    }
                }
            }
        }
    }
}

/// Whether the member answers a gRPC call (any answer: a TCP accept alone
/// may be a proxy in front of a dead member). `Status` is the cheapest call
/// etcd has and needs no leader.
async fn answers(member: &Member) -> bool {
    let req = probe_request(&member.uri);
    let until = Instant::now() + Duration::from_secs(1);
    matches!(attempt_on(member, req, until).await, Attempt::Done(Ok(_)))
}

/// `Maintenance/Status` with an empty request message.
fn probe_request(uri: &Uri) -> Request<Body> {
    let path = format!(
        "{}/etcdserverpb.Maintenance/Status",
        uri.to_string().trim_end_matches('/')
    );
    let mut req = Request::new(Body::new(http_body_util::Full::new(
        tonic::codegen::Bytes::from_static(&[0, 0, 0, 0, 0]),
    )));
    *req.method_mut() = tonic::codegen::http::Method::POST;
    *req.uri_mut() = path.parse().unwrap_or_else(|_| uri.clone());
    let headers = req.headers_mut();
    headers.insert(
        "content-type",
        tonic::codegen::http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert(
        "te",
        tonic::codegen::http::HeaderValue::from_static("trailers"),
    );
    req
}

#[derive(Clone)]
struct Failover {
    members: Arc<Members>,
    deadline: Duration,
    metrics: Option<Arc<Metrics>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Client- or bidirectional-streaming methods: their request body is a
/// stream that cannot be buffered and replayed.
fn is_stream(path: &str) -> bool {
    path.ends_with("/Watch") || path.ends_with("/LeaseKeepAlive")
}

/// What one attempt on one member came to.
enum Attempt {
    Done(Result<Response<Body>, BoxError>),
    /// The request surely reached no server: send it elsewhere.
    Refused(Result<Response<Body>, BoxError>, String),
    /// It may have been executed: only a request safe to repeat goes on.
    Ambiguous(Result<Response<Body>, BoxError>, String),
}

impl Service<Request<Body>> for Failover {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness is per member, awaited in `call` on the member chosen.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            // The path is /etcdserverpb.KV/Range: the method names the operation.
            let path = req.uri().path().to_string();
            let op = path.rsplit('/').next().unwrap_or("").to_string();
            let start = Instant::now();
            let result = if is_stream(&path) {
                this.send_stream(req, start + this.deadline).await
            } else {
                this.send_unary(req, op != "Txn", start + this.deadline)
                    .await
            };
            if let Some(metrics) = &this.metrics {
                metrics.etcd_request(&op, start.elapsed(), result.as_ref().is_ok_and(is_ok));
            }
            result
        })
    }
}

impl Failover {
    /// The members to try, waiting (within the deadline) for the client to
    /// have handed over its endpoints.
    async fn members(&self, deadline: Instant) -> Vec<Arc<Member>> {
        // Duplicate endpoints are added once: wait for all only so long.
        let settled = self.members.created + Duration::from_millis(500);
        loop {
            let added = self.members.added.notified();
            let order = self.members.order();
            let all = order.len() >= self.members.expected || Instant::now() >= settled;
            if (!order.is_empty() && all) || Instant::now() >= deadline {
                return order;
            }
            let wait = if order.is_empty() {
                deadline
            } else {
                settled.min(deadline)
            };
            let _ = tokio::time::timeout_at(wait, added).await;
        }
    }

    async fn send_unary(
        &self,
        req: Request<Body>,
        repeatable: bool,
        deadline: Instant,
    ) -> Result<Response<Body>, BoxError> {
        let (parts, body) = req.into_parts();
        // A unary request is one message: keep it to send it again.
        let bytes = body.collect().await?.to_bytes();
        let members = self.members(deadline).await;
        let tries = members.len();
        let mut last: Option<Result<Response<Body>, BoxError>> = None;
        for (i, member) in members.into_iter().enumerate() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            // A member that hangs must leave time for the others, when
            // giving up on it is safe.
            let left = tries - i;
            let until = if repeatable && left > 1 {
                now + ((deadline - now) / 2).max(Duration::from_millis(200))
            } else {
                deadline
            };
            let mut attempt = Request::new(Body::new(http_body_util::Full::new(bytes.clone())));
            *attempt.method_mut() = parts.method.clone();
            *attempt.uri_mut() = parts.uri.clone();
            *attempt.version_mut() = parts.version;
            *attempt.headers_mut() = parts.headers.clone();
            *attempt.extensions_mut() = parts.extensions.clone();
            match attempt_on(&member, attempt, until.min(deadline)).await {
                Attempt::Done(r) => return r,
                Attempt::Refused(r, why) => {
                    member.mark_down(&why);
                    last = Some(r);
                }
                Attempt::Ambiguous(r, why) => {
                    member.mark_down(&why);
                    if !repeatable {
                        return r;
                    }
                    last = Some(r);
                }
            }
        }
        last.unwrap_or_else(|| Err("no etcd endpoint answered in time".into()))
    }

    async fn send_stream(
        &self,
        req: Request<Body>,
        deadline: Instant,
    ) -> Result<Response<Body>, BoxError> {
        let Some(member) = self.members(deadline).await.into_iter().next() else {
            return Err("no etcd endpoint configured".into());
        };
        match attempt_on(&member, req, deadline).await {
            Attempt::Done(r) => r,
            Attempt::Refused(r, why) => {
                member.mark_down(&why);
                r
            }
            Attempt::Ambiguous(r, why) => {
                member.mark_down(&why);
                r
            }
        }
    }
}

async fn attempt_on(member: &Member, req: Request<Body>, until: Instant) -> Attempt {
    let mut channel = member.channel.clone();
    let sent = async {
        channel
            .ready()
            .await
            .map_err(BoxError::from)?
            .call(req)
            .await
            .map_err(BoxError::from)
    };
    let result = match tokio::time::timeout_at(until, sent).await {
        Ok(r) => r,
        Err(_) => {
            let why = format!("no answer from {} in time", member.uri);
            return Attempt::Ambiguous(Err(why.clone().into()), why);
        }
    };
    match result {
        Err(e) if never_sent(&*e) => {
            let why = format!("{}: {}", member.uri, chain(&*e));
            Attempt::Refused(Err(e), why)
        }
        Err(e) => {
            let why = format!("{}: {}", member.uri, chain(&*e));
            Attempt::Ambiguous(Err(e), why)
        }
        Ok(resp) => match status_of(&resp) {
            None => {
                member.answered.store(true, Ordering::SeqCst);
                Attempt::Done(Ok(resp))
            }
            Some((code, message)) => {
                member.answered.store(true, Ordering::SeqCst);
                let why = format!("{}: {message}", member.uri);
                if refused_before_execution(&message) {
                    Attempt::Refused(Ok(resp), why)
                } else if code == UNAVAILABLE {
                    Attempt::Ambiguous(Ok(resp), why)
                } else {
                    Attempt::Done(Ok(resp))
                }
            }
        },
    }
}

/// gRPC's `Unavailable`.
const UNAVAILABLE: u32 = 14;

/// A member without a leader (`with_require_leader`), or a member asked
/// for what only the leader does, answers before executing anything.
fn refused_before_execution(message: &str) -> bool {
    message.contains("etcdserver: no leader")
        || message.contains("etcdserver: not leader")
        || message.contains("etcdserver: unhealthy cluster")
}

/// A failed call's status, when etcd answered it in the headers (a
/// trailers-only response, which is how etcd answers a failed unary call);
/// a status that only comes in the trailers is not seen here.
fn status_of(resp: &Response<Body>) -> Option<(u32, String)> {
    let code = resp.headers().get("grpc-status")?.to_str().ok()?;
    let code: u32 = code.parse().ok()?;
    if code == 0 {
        return None;
    }
    let message = resp
        .headers()
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .map(percent_decode)
        .unwrap_or_default();
    Some((code, message))
}

fn is_ok(resp: &Response<Body>) -> bool {
    status_of(resp).is_none()
}

/// gRPC percent-encodes `grpc-message`.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The error and its causes, in one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    text
}

/// Whether the call failed before any byte of it could reach the server:
/// the connection could not be made.
fn never_sent(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::AddrNotAvailable
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
            ) {
                return true;
            }
        }
        // hyper-util's connector error, and tonic's connect timeout.
        let text = err.to_string();
        if text.contains("tcp connect error")
            || text.contains("dns error")
            || text == "timeout expired"
        {
            return true;
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_messages_are_percent_decoded() {
        assert_eq!(
            percent_decode("etcdserver:%20no%20leader"),
            "etcdserver: no leader"
        );
        assert_eq!(percent_decode("100%"), "100%");
    }

    #[test]
    fn only_refusals_for_want_of_a_leader_count_as_never_executed() {
        assert!(refused_before_execution("etcdserver: no leader"));
        assert!(refused_before_execution("etcdserver: not leader"));
        assert!(!refused_before_execution("etcdserver: request timed out"));
        assert!(!refused_before_execution("etcdserver: leader changed"));
    }
}

#[cfg(test)]
mod wire_tests {
    use super::*;

    /// A member behind a proxy whose upstream is down: the connection is
    /// accepted, then reset before a byte of HTTP/2.
    #[tokio::test]
    async fn a_connection_reset_before_the_handshake_counts_as_never_sent() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                s.set_zero_linger().unwrap();
                drop(s);
            }
        });
        let uri: Uri = format!("http://127.0.0.1:{port}").parse().unwrap();
        let member = Member {
            uri: uri.clone(),
            channel: Endpoint::from(uri).connect_lazy(),
            down: AtomicBool::new(false),
            answered: AtomicBool::new(false),
        };
        let req = probe_request(&member.uri);
        match attempt_on(&member, req, Instant::now() + Duration::from_secs(2)).await {
            Attempt::Refused(..) => {}
            Attempt::Done(r) => panic!("done: {:?}", r.map(|r| r.status())),
            Attempt::Ambiguous(_, why) => panic!("ambiguous: {why}"),
        }
    }
}
