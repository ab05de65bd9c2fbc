//! Observability of `bgsched run`: Prometheus metrics, the HTTP endpoints
//! (`/metrics`, `/healthz`, `/readyz`, `/status`), the status model shared
//! with `list --json`, and the JSON log format.

pub mod http;
pub mod log;
pub mod metrics;
pub mod status;

pub use metrics::Metrics;
