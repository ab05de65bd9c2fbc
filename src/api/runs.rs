//! `POST /api/v1/jobs/{job}/runs`, `GET /api/v1/runs/{run_id}` (with a long
//! poll) and `GET /api/v1/runs/{run_id}/output`.

use super::{allow, body_of, json_reply, Api, ApiError};
use crate::config::Job;
use crate::coordination::etcd::{Asked, Seen};
use crate::coordination::{Backend, Cancel, HistoryReader, Outcome, RunRecord, TriggerRequest};
use crate::executor::manual::Refused;
use crate::executor::{spawn_supervisor, SupervisorOutput};
use crate::model::{new_run_id, parse_run_id};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a cluster replica waits for the leader to take a run request.
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest `?wait=` a caller may ask for.
const MAX_WAIT: Duration = Duration::from_secs(600);
/// How often a long poll looks at the run again.
const POLL: Duration = Duration::from_millis(100);
/// How long an accepted run whose record never appears stays `pending`.
const PENDING_FOR: Duration = Duration::from_secs(600);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    #[serde(default)]
    params: BTreeMap<String, String>,
    #[serde(default)]
    at: Option<String>,
    /// Cluster mode: the member (instance id) to run on.
    #[serde(default)]
    on: Option<String>,
    /// Cluster mode: labels a member must have to run it (at least one).
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

pub(super) async fn start(
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    allow(&api, &headers, &Method::POST, uri.path())?;
    let req: StartBody = body_of(body, r#"{"params": {"NAME": "value"}}"#)?;
    let config = api.config();
    let job = Api::job(&config, &name)?;
    let at = req
        .at
        .as_deref()
        .map(|t| crate::coordination::run_at(t, Utc::now()))
        .transpose()
        .map_err(ApiError::bad_request)?;
    let params = job
        .resolve_params(&req.params)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_params", e.to_string()))?;
    if req.on.is_some() && req.labels.is_some() {
        return Err(ApiError::bad_request("give either on or labels, not both"));
    }
    if req.on.as_deref().is_some_and(|m| m.trim().is_empty()) {
        return Err(ApiError::bad_request(
            "on: name a member (its instance id), not an empty string",
        ));
    }
    if req.labels.as_ref().is_some_and(BTreeMap::is_empty) {
        return Err(ApiError::bad_request(
            "labels: give at least one label, as {\"KEY\": \"value\"}",
        ));
    }
    let labels = req.labels.clone().unwrap_or_default();
    let placement = crate::coordination::Where {
        on: req.on.clone(),
        labels: labels.clone(),
        avoid: Vec::new(),
    };
    for (k, v) in &labels {
        for (what, word) in [("name", k), ("value", v)] {
            if let Some(problem) = crate::config::label_problem(word) {
                return Err(ApiError::bad_request(format!(
                    "labels: label {what} {word:?} {problem}"
                )));
            }
        }
    }
    if config.cluster.is_none() && !placement.is_default() {
        return Err(ApiError::bad_request(
            "on and labels choose a member of a cluster; without [cluster] every run starts here",
        ));
    }
    let backend = api.backend()?;
    if let Some(p) = backend
        .pause_now(&job.name)
        .await
        .map_err(ApiError::backend)?
        .filter(|p| p.is_active(Utc::now()) && !p.manual)
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "paused",
            crate::coordination::paused_refusal(&job.name, &p),
        )
        .with(
            "paused",
            serde_json::to_value(p).expect("a pause serializes"),
        ));
    }
    if let Some(at) = at {
        let req = TriggerRequest {
            run_id: new_run_id(),
            job: job.name.clone(),
            requested_by: format!("the API on instance {}", api.served.instance),
            requested_at: Utc::now(),
            params,
            at: Some(at),
            upstream: None,
            placement: placement.clone(),
            first_attempt: None,
        };
        backend
            .schedule_run(&req)
            .await
            .map_err(ApiError::backend)?;
        tracing::info!(job = %job.name, run_id = %req.run_id, at = %at.to_rfc3339(), "run scheduled through the API");
        let status_url = format!("/api/v1/runs/{}", req.run_id);
        return Ok(json_reply(
            StatusCode::ACCEPTED,
            &json!({ "run_id": req.run_id, "job": job.name, "status_url": status_url, "at": at }),
        ));
    }
    let run_id = match backend {
        Backend::Standalone(state) => {
            start_here(&api, state.clone(), job, config.group_of(job), params).await?
        }
        Backend::Cluster(etcd) => {
            let run_id = new_run_id();
            let asked = etcd
                .request_run(
                    &job.name,
                    &run_id,
                    (params, placement),
                    api.served.instance.clone(),
                    LEADER_TIMEOUT,
                    std::future::pending(),
                )
                .await
                .map_err(ApiError::backend)?;
            if asked != Asked::Taken {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no_leader",
                    format!(
                        "no leader accepted the run within {}",
                        humantime::format_duration(LEADER_TIMEOUT)
                    ),
                ));
            }
            // Until the run's marker or its skip entry exists.
            if let Seen::Recorded(rec) = etcd
                .wait_for_record(&job.name, &run_id, true)
                .await
                .map_err(ApiError::backend)?
            {
                if rec.outcome == Outcome::Skipped {
                    let active = etcd
                        .active(&job.name)
                        .await
                        .ok()
                        .and_then(|a| a.into_iter().next());
                    return Err(still_running(
                        job,
                        rec.reason.as_deref().unwrap_or("already running"),
                        active,
                    ));
                }
            }
            run_id
        }
    };
    api.accepted
        .lock()
        .expect("accepted lock poisoned")
        .insert(run_id.clone(), (job.name.clone(), Instant::now()));
    let status_url = format!("/api/v1/runs/{run_id}");
    let mut resp = json_reply(
        StatusCode::ACCEPTED,
        &json!({ "run_id": run_id, "job": job.name, "status_url": status_url }),
    );
    if let Ok(v) = header::HeaderValue::from_str(&status_url) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// Standalone: claim the job's overlap hold and start a supervisor here,
/// as `bgsched trigger --detach` does; the skip of a refused run is
/// recorded as the CLI's is.
async fn start_here(
    api: &Api,
    state: Arc<crate::coordination::Standalone>,
    job: &Job,
    group: Option<&crate::config::Group>,
    params: BTreeMap<String, String>,
) -> Result<String, ApiError> {
    let (mut spec, hold, seat) = match crate::executor::manual::prepare(
        state.as_ref(),
        job,
        group,
        &api.served.instance,
        params,
    )
    .await
    {
        Ok(prepared) => prepared,
        Err(Refused::Skipped { reason, active }) => {
            return Err(still_running(job, &reason, active.map(|a| *a)))
        }
        Err(Refused::Backend(e)) => return Err(ApiError::backend(e)),
    };
    spec.log_json = api.log_json;
    let run_id = spec.key.run_id.clone();
    // Reported to this process like the scheduler's own supervisors, so
    // that the run counts in the metrics, its end is notified, and a
    // supervisor that dies does not leave its job running unsupervised.
    let watched = spec.clone();
    let child = spawn_supervisor(spec, hold, seat, SupervisorOutput::Scheduler).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "start_failed",
            format!("could not start the run's supervisor: {e}"),
        )
    })?;
    tracing::info!(job = %job.name, run_id = %run_id, "run started through the API");
    let notifier = api
        .served
        .notifier
        .get()
        .cloned()
        .unwrap_or_else(crate::notify::Notifier::off);
    let reap = crate::executor::watch_supervisor(
        child,
        &watched,
        api.served.metrics.clone(),
        notifier.clone(),
    );
    tokio::spawn(async move {
        let (_, clean, _) = reap.await;
        if clean {
            return;
        }
        // Recorded `lost` now rather than at the scheduler's next look.
        for rec in crate::coordination::reap_after_death(state.as_ref(), &watched.key).await {
            notifier.entry(&rec);
        }
    });
    Ok(run_id)
}

/// 409: the job runs and `overlap = "skip"` refuses another run.
fn still_running(job: &Job, reason: &str, active: Option<RunRecord>) -> ApiError {
    let mut message = format!(
        "job \"{}\" skipped (overlap = \"{}\"): {reason}",
        job.name, job.overlap
    );
    if let Some(a) = &active {
        message = format!(
            "job \"{}\" is already running since {} on instance {} (run {}); skipped (overlap = \"{}\")",
            job.name,
            a.started_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            a.key.instance,
            a.key.run_id,
            job.overlap
        );
    }
    ApiError::new(StatusCode::CONFLICT, "still_running", message).with(
        "active",
        serde_json::to_value(active).expect("records serialize"),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GetQuery {
    wait: Option<String>,
}

/// What a run id names right now.
enum Found {
    Record(Box<RunRecord>),
    /// Accepted here; its supervisor has not written a record yet.
    Pending(String),
    /// A one-off run at a later time, not due yet (or not claimed yet).
    Scheduled(Box<TriggerRequest>),
}

impl Api {
    /// The run's newest entry, looked for in `job`'s history if known.
    async fn find(&self, run_id: &str, job: Option<&str>) -> Result<Option<Found>, ApiError> {
        let backend = self.backend()?;
        let config = self.config();
        let accepted = {
            let mut accepted = self.accepted.lock().expect("accepted lock poisoned");
            accepted.retain(|_, (_, at)| at.elapsed() < PENDING_FOR);
            accepted.get(run_id).map(|(job, _)| job.clone())
        };
        let jobs: Vec<&str> = match job.or(accepted.as_deref()) {
            Some(job) => vec![job],
            None => config.jobs.keys().map(String::as_str).collect(),
        };
        let record = || async {
            match backend {
                Backend::Standalone(s) => tokio::task::block_in_place(|| {
                    tokio::runtime::Handle::current().block_on(s.find_run(&jobs, run_id))
                }),
                Backend::Cluster(e) => e.find_run(&jobs, run_id).await,
            }
            .map_err(ApiError::backend)
        };
        let found = record().await?;
        Ok(match (found, accepted.clone()) {
            (Some(rec), _) => {
                self.accepted
                    .lock()
                    .expect("accepted lock poisoned")
                    .remove(run_id);
                Some(Found::Record(Box::new(rec)))
            }
            (None, Some(job)) => Some(Found::Pending(job)),
            (None, None) => {
                let scheduled = backend
                    .scheduled_runs()
                    .await
                    .map_err(ApiError::backend)?
                    .into_iter()
                    .find(|r| r.run_id == run_id);
                match scheduled {
                    Some(r) => Some(Found::Scheduled(Box::new(r))),
                    // It may have left the scheduled runs for its record
                    // between the two looks.
                    None => record().await?.map(|rec| Found::Record(Box::new(rec))),
                }
            }
        })
    }
}

fn run_id_of(given: &str) -> Result<String, ApiError> {
    parse_run_id(given).ok_or_else(|| {
        ApiError::bad_request(format!(
            "{given:?} is not a run id (a UUID, as POST .../runs and `bgsched history` give them)"
        ))
    })
}

fn unknown_run(run_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_run",
        format!("no run {run_id} in the history of any job (pruned, or never existed)"),
    )
}

pub(super) async fn get(
    State(api): State<Arc<Api>>,
    Path(given): Path<String>,
    query: Result<Query<GetQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
) -> Result<Response, ApiError> {
    allow(&api, &headers, &Method::GET, uri.path())?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let run_id = run_id_of(&given)?;
    let wait = match query.wait.as_deref() {
        None => Duration::ZERO,
        Some(w) => match humantime::parse_duration(w) {
            Ok(d) if d <= MAX_WAIT => d,
            Ok(_) => {
                return Err(ApiError::bad_request(format!(
                    "wait={w} is longer than {}",
                    humantime::format_duration(MAX_WAIT)
                )))
            }
            Err(e) => {
                return Err(ApiError::bad_request(format!(
                    "wait={w:?} is not a duration such as 30s or 2m ({e})"
                )))
            }
        },
    };
    let deadline = Instant::now() + wait;
    let mut job = None;
    loop {
        let found = api
            .find(&run_id, job.as_deref())
            .await?
            .ok_or_else(|| unknown_run(&run_id))?;
        let done = Instant::now() >= deadline;
        match found {
            Found::Record(rec) if rec.outcome != Outcome::Running || done => {
                return Ok(json_reply(
                    StatusCode::OK,
                    &serde_json::to_value(&rec).expect("records serialize"),
                ));
            }
            Found::Pending(j) if done => {
                return Ok(json_reply(
                    StatusCode::OK,
                    &json!({ "run_id": run_id, "job": j, "outcome": "pending" }),
                ));
            }
            Found::Scheduled(req) if done => {
                return Ok(json_reply(
                    StatusCode::OK,
                    &json!({ "run_id": run_id, "job": req.job, "outcome": "scheduled", "at": req.at, "params": req.params }),
                ));
            }
            Found::Record(rec) => job = Some(rec.key.job),
            Found::Pending(j) => job = Some(j),
            Found::Scheduled(_) => {}
        }
        tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OutputQuery {
    follow: Option<bool>,
}

pub(super) async fn output(
    State(api): State<Arc<Api>>,
    Path(given): Path<String>,
    query: Result<Query<OutputQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
) -> Result<Response, ApiError> {
    allow(&api, &headers, &Method::GET, uri.path())?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let run_id = run_id_of(&given)?;
    let found = api
        .find(&run_id, None)
        .await?
        .ok_or_else(|| unknown_run(&run_id))?;
    let text_plain = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    let follow = query.follow.unwrap_or(false);
    let job = match found {
        Found::Record(rec) if !follow => {
            return Ok((StatusCode::OK, text_plain, rec.output_tail).into_response())
        }
        Found::Pending(_) | Found::Scheduled(_) if !follow => {
            return Ok((StatusCode::OK, text_plain, String::new()).into_response())
        }
        Found::Record(rec) => rec.key.job,
        Found::Pending(job) => job,
        Found::Scheduled(req) => req.job,
    };
    // Streamed (chunked) as the run goes on; ends when it has ended.
    let backend = api.backend()?.clone();
    // Unbounded: the copy must not drop output for a slow reader; it is
    // bounded by what the run prints while the request lasts.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let sent = tx.clone();
        let followed = backend
            .follow_output(&job, &run_id, move |text| {
                // A reader that disconnected ends the follow.
                if text.is_empty() {
                    return !sent.is_closed();
                }
                sent.send(text.to_string()).is_ok()
            })
            .await;
        if let Err(e) = followed {
            let _ = tx.send(format!("\n[bgsched: following stopped: {e}]\n"));
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|text| (Ok::<_, std::convert::Infallible>(Bytes::from(text)), rx))
    });
    Ok((
        StatusCode::OK,
        text_plain,
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

pub(super) async fn cancel(
    State(api): State<Arc<Api>>,
    Path(given): Path<String>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
) -> Result<Response, ApiError> {
    allow(&api, &headers, &Method::POST, uri.path())?;
    let run_id = run_id_of(&given)?;
    let not_running = |why: String| ApiError::new(StatusCode::CONFLICT, "not_running", why);
    let by = format!("the API on instance {}", api.served.instance);
    let mut found = api.find(&run_id, None).await?;
    if matches!(found, Some(Found::Scheduled(_))) {
        let cancelled = api
            .backend()?
            .cancel_scheduled(&run_id, &by, &api.served.instance)
            .await
            .map_err(ApiError::backend)?;
        match cancelled {
            Some(rec) => {
                tracing::info!(job = %rec.key.job, run_id = %run_id, "run at a later time cancelled through the API");
                return Ok(json_reply(
                    StatusCode::OK,
                    &serde_json::to_value(&rec).expect("records serialize"),
                ));
            }
            // Its time came meanwhile: it is (about to be) a run now.
            None => found = api.find(&run_id, None).await?,
        }
    }
    let rec = match found {
        None => return Err(unknown_run(&run_id)),
        Some(Found::Pending(job)) => {
            return Err(not_running(format!(
                "run {run_id} of job \"{job}\" has not started yet; try again shortly"
            )))
        }
        Some(Found::Scheduled(req)) => {
            return Err(not_running(format!(
                "run {run_id} of job \"{}\" is starting; try again shortly",
                req.job
            )))
        }
        Some(Found::Record(rec)) => rec,
    };
    let ended = |rec: &RunRecord| {
        not_running(format!(
            "run {run_id} of job \"{}\" already ended: {}",
            rec.key.job, rec.outcome
        ))
    };
    if rec.outcome != Outcome::Running {
        return Err(ended(&rec));
    }
    match api
        .backend()?
        .cancel(&rec.key.job, &run_id, &by)
        .await
        .map_err(ApiError::backend)?
    {
        Cancel::Asked => {
            tracing::info!(job = %rec.key.job, run_id = %run_id, "cancel asked through the API");
            Ok(json_reply(
                StatusCode::ACCEPTED,
                &json!({ "run_id": run_id, "job": rec.key.job, "status_url": format!("/api/v1/runs/{run_id}") }),
            ))
        }
        Cancel::NotRunning => Err(ended(&rec)),
    }
}
