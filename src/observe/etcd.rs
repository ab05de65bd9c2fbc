//! etcd request metrics, taken in one place: the client's gRPC channel.
//!
//! Every call the etcd backend makes goes through the channel built here,
//! so no call site needs instrumenting (and none can be forgotten). Only a
//! process that serves metrics installs them ([`record_into`]); elsewhere
//! (supervisors, `list`, `trigger`) the channel is tonic's own.

use super::Metrics;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tonic::transport::channel::Change;
use tonic::transport::Endpoint;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service};

static METRICS: OnceLock<Arc<Metrics>> = OnceLock::new();

/// Record the etcd calls of clients connected from now on into `metrics`.
/// Process-wide because the client is built deep inside the backend's
/// `connect`, which also serves processes that have no metrics.
pub fn record_into(metrics: Arc<Metrics>) {
    let _ = METRICS.set(metrics);
}

/// The channel builder for `Client::connect_with_balanced_channel`.
pub struct Channel;

impl etcd_client::BalancedChannelBuilder for Channel {
    type Error = tonic::transport::Error;

    fn balanced_channel(
        self,
        buffer_size: usize,
    ) -> Result<
        (
            etcd_client::Channel,
            tokio::sync::mpsc::Sender<Change<tonic::codegen::http::Uri, Endpoint>>,
        ),
        Self::Error,
    > {
        let (inner, tx) = tonic::transport::Channel::balance_channel(buffer_size);
        let channel = match METRICS.get() {
            Some(metrics) => etcd_client::Channel::Custom(BoxCloneSyncService::new(Metered {
                inner,
                metrics: metrics.clone(),
            })),
            None => etcd_client::Channel::Tonic(inner),
        };
        Ok((channel, tx))
    }
}

#[derive(Clone)]
struct Metered {
    inner: tonic::transport::Channel,
    metrics: Arc<Metrics>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl Service<Request<Body>> for Metered {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(BoxError::from)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // The path is /etcdserverpb.KV/Range: the method names the operation.
        let op = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string();
        // The instance polled ready is the one that must take the call.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let metrics = self.metrics.clone();
        let start = Instant::now();
        Box::pin(async move {
            let result = inner.call(req).await.map_err(BoxError::from);
            // etcd answers a failed unary call with its status in the
            // headers (a trailers-only response); a status that only comes
            // in the trailers is not seen here.
            let ok = result.as_ref().is_ok_and(|resp| {
                resp.headers()
                    .get("grpc-status")
                    .is_none_or(|status| status.as_bytes() == b"0")
            });
            metrics.etcd_request(&op, start.elapsed(), ok);
            result
        })
    }
}
