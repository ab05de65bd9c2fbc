//! `GET /api/v1/jobs` and `GET /api/v1/jobs/{job}`: the model of
//! `list --json`.

use super::{allow, allow_scope, body_of, json_reply, Api, ApiError};
use crate::config::Scope;
use crate::coordination::{pause_until, Pause, PauseChange};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;
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

/// Ticks listed by `GET /api/v1/jobs/{job}` as `next_runs`.
const NEXT_RUNS: usize = 5;

pub(super) async fn one(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
) -> Result<Response, ApiError> {
    allow(&api, &headers, &Method::GET, uri.path())?;
    let config = api.config();
    let settled = Api::job(&config, &name)?;
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
    let mut reply = to_json(&job);
    // The next few ticks, for a person planning around them; the list has
    // only the next one of each job.
    if job.enabled {
        let schedule = &settled.schedule;
        let after = match &job.paused {
            Some(p) => p.until.map(|u| u.max(chrono::Utc::now())),
            None => Some(chrono::Utc::now()),
        };
        let next: Vec<String> = after
            .into_iter()
            .flat_map(|after| {
                schedule
                    .iter_after(after)
                    .take(NEXT_RUNS)
                    .collect::<Vec<_>>()
            })
            .map(|t| crate::observe::log::local_rfc3339(settled, t))
            .collect();
        reply["next_runs"] = json!(next);
    }
    reply["config"] = settings(settled);
    Ok(json_reply(StatusCode::OK, &reply))
}

/// The job's settings as the config gives them (with `[defaults]`
/// applied), for a person reading the job page. Of `env`, the names
/// only: values are often credentials.
fn settings(job: &crate::config::Job) -> serde_json::Value {
    let human = |d: std::time::Duration| humantime::format_duration(d).to_string();
    let mut v = json!({
        "timeout": job.timeout.map(human),
        "catchup": human(job.catchup),
        "kill_grace": human(job.kill_grace),
        "retries": job.retries,
        "retry_backoff": human(job.retry_backoff),
        "retry_backoff_max": human(job.retry_backoff_max),
        "jitter": human(job.jitter),
        "working_dir": job.working_dir.as_ref().map(|d| d.display().to_string()),
        "env": job.env.keys().collect::<Vec<_>>(),
        "on_failure": job.on_failure,
    });
    match &job.program {
        crate::config::Program::Argv(argv) => v["command"] = json!(argv),
        crate::config::Program::Shell(line) => v["shell"] = json!(line),
    }
    v
}

fn to_json(v: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(v).expect("the status model serializes")
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PauseBody {
    until: Option<String>,
    manual: Option<bool>,
}

pub(super) async fn pause(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    allow_scope(&api, &headers, Scope::Admin, &Method::POST, uri.path())?;
    let req: PauseBody = body_of(
        body,
        r#"{"until": "2026-12-24T18:00:00Z", "manual": false}"#,
    )?;
    let config = api.config();
    let job = Api::job(&config, &name)?;
    let until = req
        .until
        .as_deref()
        .map(|u| pause_until(u, chrono::Utc::now()))
        .transpose()
        .map_err(ApiError::bad_request)?;
    let by = format!("the API on instance {}", api.served.instance);
    let pause = Pause::new(&by, until, req.manual.unwrap_or(true));
    match api
        .backend()?
        .pause(job, pause)
        .await
        .map_err(ApiError::backend)?
    {
        PauseChange::Done(p) => {
            tracing::info!(job = %job.name, by = %p.by, "job paused");
            Ok(json_reply(
                StatusCode::OK,
                &json!({ "job": job.name, "paused": p }),
            ))
        }
        PauseChange::Unchanged(p) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_paused",
            format!("job \"{}\" is already paused", job.name),
        )
        .with("paused", json!(p))),
    }
}

pub(super) async fn resume(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
) -> Result<Response, ApiError> {
    allow_scope(&api, &headers, Scope::Admin, &Method::POST, uri.path())?;
    let config = api.config();
    let job = Api::job(&config, &name)?;
    let by = format!("the API on instance {}", api.served.instance);
    match api
        .backend()?
        .resume(job, &by, &api.served.instance)
        .await
        .map_err(ApiError::backend)?
    {
        PauseChange::Done(p) => {
            tracing::info!(job = %job.name, by = %by, "job resumed");
            Ok(json_reply(
                StatusCode::OK,
                &json!({ "job": job.name, "resumed": p }),
            ))
        }
        PauseChange::Unchanged(_) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_paused",
            format!("job \"{}\" is not paused", job.name),
        )),
    }
}
