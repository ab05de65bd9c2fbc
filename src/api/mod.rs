//! The HTTP API under `/api/v1` (README "HTTP API"): jobs, runs with
//! parameters and their results. Every call does what the CLI verb of the
//! same name does, through the same engine calls; in a cluster a run is
//! asked of the leader through etcd, so any replica answers.

mod auth;
mod history;
mod jobs;
mod runs;

use crate::config::{Config, Scope};
use crate::coordination::Backend;
use crate::observe::http::Served;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The largest request body taken; a bigger one is refused with 413.
pub const MAX_BODY: usize = 1024 * 1024;

/// What the API handlers share.
pub struct Api {
    served: Arc<Served>,
    /// Runs this process accepted, by run id, with their job, until their
    /// supervisor's first record exists (a run looked up in that gap is
    /// `pending`, not unknown).
    accepted: Mutex<HashMap<String, (String, Instant)>>,
    /// The supervisors of runs started here log as the scheduler does.
    log_json: bool,
}

impl Api {
    pub fn new(served: Arc<Served>, log_json: bool) -> Arc<Api> {
        Arc::new(Api {
            served,
            accepted: Mutex::new(HashMap::new()),
            log_json,
        })
    }

    fn config(&self) -> Arc<Config> {
        self.served.config.borrow().clone()
    }

    /// The job called `name` in the config in use, or 404 `unknown_job`
    /// with the closest names.
    fn job<'c>(config: &'c Config, name: &str) -> Result<&'c crate::config::Job, ApiError> {
        config
            .job_named(name)
            .map_err(|why| ApiError::new(StatusCode::NOT_FOUND, "unknown_job", why))
    }

    fn backend(&self) -> Result<&Backend, ApiError> {
        self.served.backend.get().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "starting",
                "the scheduler is still connecting to its backend; try again shortly",
            )
        })
    }
}

/// The routes of `/api/v1`, ready to merge into the listener's router.
pub fn routes(api: Arc<Api>) -> Router {
    Router::new()
        .route("/api/v1/auth", get(auth::whoami))
        .route("/api/v1/jobs", get(jobs::list))
        .route("/api/v1/jobs/{job}", get(jobs::one))
        .route(
            "/api/v1/jobs/{job}/runs",
            post(runs::start).get(history::list),
        )
        .route("/api/v1/jobs/{job}/pause", post(jobs::pause))
        .route("/api/v1/jobs/{job}/resume", post(jobs::resume))
        .route("/api/v1/runs/{run_id}", get(runs::get))
        .route("/api/v1/runs/{run_id}/output", get(runs::output))
        .route("/api/v1/runs/{run_id}/cancel", post(runs::cancel))
        .route("/api/v1/{*rest}", axum::routing::any(unknown_endpoint))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(api)
}

/// An API error: its status and `{"error": {"code", "message"}}`, with
/// more fields beside `error` where a caller needs them (the active run of
/// a refused trigger).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    extra: Option<(&'static str, serde_json::Value)>,
    bearer_challenge: bool,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: None,
            bearer_challenge: false,
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn with(mut self, key: &'static str, value: serde_json::Value) -> ApiError {
        self.extra = Some((key, value));
        self
    }

    /// A backend that could not answer: the cause in words, 503.
    fn backend(e: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": { "code": self.code, "message": self.message } });
        if let Some((key, value)) = self.extra {
            body[key] = value;
        }
        let mut resp = json_reply(self.status, &body);
        if self.bearer_challenge {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"bgsched\""),
            );
        }
        resp
    }
}

fn json_reply(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response()
}

/// Check the caller may call `method path`: `GET` needs `read`, other
/// methods `trigger`, except where the route asks for more.
fn allow(api: &Api, headers: &HeaderMap, method: &Method, path: &str) -> Result<(), ApiError> {
    let need = if method == Method::GET {
        Scope::Read
    } else {
        Scope::Trigger
    };
    allow_scope(api, headers, need, method, path)
}

fn allow_scope(
    api: &Api,
    headers: &HeaderMap,
    need: Scope,
    method: &Method,
    path: &str,
) -> Result<(), ApiError> {
    auth::check(
        &api.config().http,
        headers,
        need,
        &format!("{method} {path}"),
    )
}

/// A JSON request body of type `T`: empty means `T::default()`; anything
/// else that is not `T` is a 400 saying why, a body over [`MAX_BODY`] 413.
fn body_of<T: serde::de::DeserializeOwned + Default>(
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
    example: &str,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the body is larger than {} KiB", MAX_BODY / 1024),
            )
        } else {
            ApiError::bad_request(format!("cannot read the body: {e}"))
        }
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be a JSON object like {example}: {e}"
        ))
    })
}

/// An `/api/v1` path nothing answers.
pub async fn unknown_endpoint(method: Method, uri: axum::http::Uri) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no endpoint {method} {}; see README \"HTTP API\"",
            uri.path()
        ),
    )
    .into_response()
}
