//! The HTTP endpoints of `bgsched run` (`[http] listen`, `--http`):
//! `/metrics`, `/healthz`, `/readyz` and `/status`.

use super::status;
use super::Metrics;
use crate::config::Config;
use crate::coordination::{Backend, CoordError};
use crate::model::MAX_SLEEP;
use crate::reload::ReloadStatus;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::watch;

/// The scheduler loop turns at least every [`MAX_SLEEP`]; twice that
/// without a turn means it is stuck, not idle.
pub const HEALTHY_WITHIN: Duration = Duration::from_secs(2 * MAX_SLEEP.as_secs());

/// What the endpoints need from the running scheduler.
pub struct Served {
    /// The config in use, and how it came to be (see `crate::reload`).
    pub config: watch::Receiver<Arc<Config>>,
    pub reload: watch::Receiver<ReloadStatus>,
    pub metrics: Arc<Metrics>,
    pub instance: String,
    /// Set once the backend is open: in a cluster, `run` serves while it
    /// is still connecting, so that probes can tell "starting" from "dead".
    pub backend: OnceLock<Backend>,
    /// Set with the backend: told how the runs the API starts here end.
    pub notifier: OnceLock<Arc<crate::notify::Notifier>>,
}

/// A bound listener, so that a bad address fails `run` before it starts
/// scheduling.
pub struct Listener(tokio::net::TcpListener);

impl Served {
    /// The status model of the config in use (as `list --json` builds it).
    pub async fn view(&self, backend: &Backend) -> Result<status::ListView, CoordError> {
        let now = chrono::Utc::now();
        let config = self.config.borrow().clone();
        let hash = self.reload.borrow().config_hash.clone();
        match backend {
            // Reading the state directory blocks (a file per history entry):
            // let the runtime move the fire loop off this worker meanwhile.
            Backend::Standalone(_) => tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current()
                    .block_on(status::build(&config, &hash, backend, now))
            }),
            Backend::Cluster(_) => status::build(&config, &hash, backend, now).await,
        }
    }
}

impl Listener {
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Listener> {
        tokio::net::TcpListener::bind(addr).await.map(Listener)
    }

    /// The address actually bound (port 0 picks one).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }

    /// Serve on the current runtime until the process ends, with `more`
    /// routes (the API's) beside the endpoints here; over TLS with `tls`.
    pub fn serve(
        self,
        served: Arc<Served>,
        more: Router,
        tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    ) {
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/status", get(status))
            .fallback(not_found)
            .with_state(served)
            .merge(more);
        let Some(tls) = tls else {
            tokio::spawn(async move {
                if let Err(e) = axum::serve(self.0, app).await {
                    tracing::error!("http server stopped: {e}");
                }
            });
            return;
        };
        let listener = TlsListener::start(self.0, tls);
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("https server stopped: {e}");
            }
        });
    }
}

/// How long a client may take over its TLS handshake.
const HANDSHAKE_WITHIN: Duration = Duration::from_secs(10);

/// Connections whose TLS handshake is done. Handshakes run beside each
/// other, so a slow or silent client holds up nobody else.
struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
    addr: SocketAddr,
}

impl TlsListener {
    fn start(tcp: tokio::net::TcpListener, tls: Arc<tokio_rustls::rustls::ServerConfig>) -> Self {
        let addr = tcp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // E.g. out of file descriptors: wait, do not spin.
                        tracing::warn!("https: cannot accept a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_WITHIN, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "https: TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "https: TLS handshake timed out"),
                    }
                });
            }
        });
        TlsListener { ready, addr }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accepting task only ends with the runtime.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

type Shared = State<Arc<Served>>;

fn json_reply(code: StatusCode, body: serde_json::Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response()
}

/// OpenMetrics for a client that asks for it (Prometheus does), else the
/// Prometheus text format 0.0.4, which every scraper and promtool reads.
async fn metrics(State(s): Shared, headers: axum::http::HeaderMap) -> Response {
    if let Some(Backend::Cluster(e)) = s.backend.get() {
        // Measured by the backend; read when scraped.
        s.metrics
            .set_clock_skew(e.clock_verdict().skew_secs().unwrap_or_default());
        s.metrics.set_members(&e.active_per_member());
    }
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let (content_type, body) = if accept.into_iter().any(wants_openmetrics) {
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            s.metrics.encode(),
        )
    } else {
        (
            "text/plain; version=0.0.4; charset=utf-8",
            s.metrics.encode_prometheus(),
        )
    };
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Whether an Accept header lists `application/openmetrics-text` with a
/// weight above 0.
fn wants_openmetrics(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let mut params = range.split(';').map(str::trim);
        let media = params.next().unwrap_or("");
        let refused = params.any(|p| {
            p.strip_prefix("q=")
                .and_then(|q| q.parse::<f64>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
    })
}

async fn healthz(State(s): Shared) -> Response {
    let since = s.metrics.since_beat();
    let healthy = since <= HEALTHY_WITHIN;
    json_reply(
        if healthy {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        json!({
            "status": if healthy { "ok" } else { "stalled" },
            "last_loop_ms_ago": u64::try_from(since.as_millis()).unwrap_or(u64::MAX),
        }),
    )
}

/// Ready once the config is loaded (it is before this serves) and, in a
/// cluster, while etcd confirms the session and this clock is not skewed:
/// a standby is ready too, since readiness is about being able to take
/// over, not about leading, and a skewed replica cannot take over.
async fn readyz(State(s): Shared) -> Response {
    let mut clock = None;
    let (ready, etcd) = match s.backend.get() {
        None => (false, Some("connecting")),
        Some(Backend::Standalone(_)) => (true, None),
        Some(Backend::Cluster(e)) => {
            let confirmed = e.session_confirmed();
            let verdict = e.clock_verdict();
            clock = Some(verdict.describe());
            (
                confirmed && !verdict.is_skewed(),
                Some(if confirmed {
                    "session confirmed"
                } else {
                    "no confirmed session"
                }),
            )
        }
    };
    let mut body = json!({
        "status": if ready { "ready" } else { "not ready" },
        "config": "loaded",
    });
    if let Some(etcd) = etcd {
        body["etcd"] = json!(etcd);
    }
    if let Some(clock) = clock {
        body["clock"] = json!(clock);
    }
    json_reply(
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        body,
    )
}

async fn status(State(s): Shared) -> Response {
    let Some(backend) = s.backend.get() else {
        return json_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "error": "not connected to etcd yet" }),
        );
    };
    match s.view(backend).await {
        Ok(view) => {
            let mut body = json!({
                "instance": s.instance,
                "is_leader": s.metrics.is_leader(),
            });
            if let (Some(body), Ok(serde_json::Value::Object(view))) =
                (body.as_object_mut(), serde_json::to_value(&view))
            {
                body.extend(view);
            }
            json_reply(StatusCode::OK, body)
        }
        Err(e) => json_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "error": e.to_string() }),
        ),
    }
}

async fn not_found() -> Response {
    json_reply(
        StatusCode::NOT_FOUND,
        json!({
            "error": "not found",
            "endpoints": ["/metrics", "/healthz", "/readyz", "/status"],
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::wants_openmetrics;

    #[test]
    fn openmetrics_only_when_asked_for() {
        // What Prometheus 2.x/3.x sends.
        assert!(wants_openmetrics(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ));
        assert!(wants_openmetrics("Application/OpenMetrics-Text"));
        assert!(!wants_openmetrics("text/plain"));
        assert!(!wants_openmetrics("*/*"));
        assert!(!wants_openmetrics(
            "application/openmetrics-text;q=0, text/plain"
        ));
    }
}
