//! `GET /api/v1/jobs/{job}/runs`: a job's history, newest first, a page at
//! a time (what `history <job> --json` prints).

use super::{allow, json_reply, Api, ApiError};
use crate::coordination::{HistoryReader, RunRecord};
use crate::model::parse_run_id;
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

/// A page when `limit` is not given, and the most one may ask for.
const PAGE: usize = 50;
const MAX_PAGE: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Page {
    limit: Option<usize>,
    /// A run id: only entries older than it (the `next` of the page before).
    before: Option<String>,
    /// Only entries with this outcome (`failed`, `success`, ...).
    outcome: Option<String>,
}

pub(super) async fn list(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    allow(&api, &headers, &Method::GET, uri.path())?;
    let Query(page) = page.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let config = api.config();
    Api::job(&config, &name)?;
    let limit = page.limit.unwrap_or(PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_PAGE}, not {limit}"
        )));
    }
    let before = page
        .before
        .as_deref()
        .map(|b| {
            parse_run_id(b)
                .ok_or_else(|| ApiError::bad_request(format!("before must be a run id, not {b:?}")))
        })
        .transpose()?;
    let outcome = page
        .outcome
        .as_deref()
        .map(|o| {
            serde_json::from_value::<crate::model::Outcome>(json!(o))
                .map_err(|_| ApiError::bad_request(format!("{o:?} is not an outcome")))
        })
        .transpose()?;
    // Everything retained (bounded by `history`), filtered here: both
    // backends answer "the newest N" only.
    let all = api
        .backend()?
        .recent(&name, config.scheduler.history_limit.max(1) * 2)
        .await
        .map_err(ApiError::backend)?;
    let mut matching = all
        .into_iter()
        .filter(|r| before.as_ref().is_none_or(|b| r.key.run_id < *b))
        .filter(|r| outcome.is_none_or(|o| r.outcome == o));
    let runs: Vec<RunRecord> = matching
        .by_ref()
        .take(limit)
        .map(|mut r| {
            r.output_tail.clear();
            r
        })
        .collect();
    let next = match matching.next() {
        Some(_) => runs.last().map(|r| json!(r.key.run_id)),
        None => None,
    };
    Ok(json_reply(
        StatusCode::OK,
        &json!({ "job": name, "runs": runs, "next": next }),
    ))
}
