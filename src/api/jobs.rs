//! `GET /api/v1/jobs` and `GET /api/v1/jobs/{job}`: the model of
//! `list --json`.

use super::{allow, json_reply, Api, ApiError};
use axum::extract::{OriginalUri, Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use std::sync::Arc;

pub(super) async fn list(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
) -> Result<Response, ApiError> {
    allow(&api, &headers, &Method::GET, uri.path())?;
    let view = api
        .served
        .view(api.backend()?)
        .await
        .map_err(ApiError::backend)?;
    Ok(json_reply(StatusCode::OK, &to_json(&view)))
}

pub(super) async fn one(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
) -> Result<Response, ApiError> {
    allow(&api, &headers, &Method::GET, uri.path())?;
    let config = api.config();
    config
        .job_named(&name)
        .map_err(|why| ApiError::new(StatusCode::NOT_FOUND, "unknown_job", why))?;
    let mut view = api
        .served
        .view(api.backend()?)
        .await
        .map_err(ApiError::backend)?;
    let job = view
        .jobs
        .drain(..)
        .find(|j| j.name == name)
        .expect("the view has every job of the config");
    Ok(json_reply(StatusCode::OK, &to_json(&job)))
}

fn to_json(v: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(v).expect("the status model serializes")
}
