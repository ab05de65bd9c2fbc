//! The one backend value: the local state directory or etcd, chosen once
//! from the config and the command line, and opened for every command
//! that reads or writes state. The scheduler itself is generic over
//! [`Coordinator`](super::Coordinator) instead and never sees this.

use super::etcd::EtcdConfig;
use super::{
    Cancel, CoordError, Coordinator, Etcd, HistoryReader, Pause, PauseChange, Result, RunRecord,
    Standalone, TriggerRequest, CANCELLED,
};
use crate::config::Job;
use chrono::Utc;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Which backend a command talks to.
#[derive(Debug)]
pub enum BackendChoice {
    /// The state directory.
    Standalone(PathBuf),
    Cluster(EtcdConfig),
}

/// An open backend.
#[derive(Clone)]
pub enum Backend {
    Standalone(Arc<Standalone>),
    Cluster(Arc<Etcd>),
}

impl Backend {
    /// Open the backend for a short-lived command: etcd must answer now.
    /// A connection failure names the endpoints.
    pub async fn open(choice: BackendChoice, history_limit: usize) -> Result<Backend> {
        match choice {
            BackendChoice::Standalone(dir) => Ok(Backend::Standalone(Arc::new(Standalone::open(
                &dir,
                history_limit,
            )?))),
            BackendChoice::Cluster(cfg) => {
                let endpoints = cfg.cluster.endpoints.join(",");
                match Etcd::connect(cfg).await {
                    Ok(etcd) => Ok(Backend::Cluster(Arc::new(etcd))),
                    Err(e @ CoordError::Auth { .. }) => Err(e),
                    // "etcd: " again after "cannot reach etcd" says nothing.
                    Err(CoordError::Etcd(why)) | Err(CoordError::Unreachable(why)) => Err(
                        CoordError::Unreachable(format!("cannot reach etcd at {endpoints}: {why}")),
                    ),
                    Err(e) => Err(CoordError::Unreachable(format!(
                        "cannot reach etcd at {endpoints}: {e}"
                    ))),
                }
            }
        }
    }
}

impl Backend {
    /// Ask the supervisor of run `run_id` of `job` to stop the job (SIGTERM
    /// to its group, SIGKILL after `kill_grace`) and record it
    /// `cancelled`, `by` naming who asked. Standalone the supervisor gets
    /// SIGUSR2; in a cluster, where it may run on another machine, a stop
    /// key bound to the run's own lease, which its supervisor watches.
    pub async fn cancel(&self, job: &str, run_id: &str, by: &str) -> Result<Cancel> {
        match self {
            Backend::Standalone(s) => {
                let active = s.active(job).await?;
                let Some(run) = active.iter().find(|r| r.key.run_id == run_id) else {
                    return Ok(Cancel::NotRunning);
                };
                Ok(if s.cancel(run, &format!("{CANCELLED} by {by}")) {
                    Cancel::Asked
                } else {
                    Cancel::NotRunning
                })
            }
            Backend::Cluster(e) => e.cancel(job, run_id, &format!("{CANCELLED} by {by}")).await,
        }
    }
}

/// One-off runs at a later time.
impl Backend {
    pub async fn schedule_run(&self, req: &TriggerRequest) -> Result<()> {
        match self {
            Backend::Standalone(s) => s.schedule_run(req),
            Backend::Cluster(e) => e.schedule_run(req).await,
        }
    }

    /// Cancel the run at a later time `run_id` before its time, as `by` on
    /// `instance`: its `cancelled` record, or `None` if it is not waiting
    /// for its time (any more: it may be starting).
    pub async fn cancel_scheduled(
        &self,
        run_id: &str,
        by: &str,
        instance: &str,
    ) -> Result<Option<RunRecord>> {
        let record = |req: &TriggerRequest| req.cancelled_before_its_time(by, instance);
        match self {
            Backend::Standalone(s) => s.cancel_scheduled(run_id, record),
            Backend::Cluster(e) => e.cancel_scheduled(run_id, record).await,
        }
    }

    /// The one-off runs not claimed yet, by time.
    pub async fn scheduled_runs(&self) -> Result<Vec<TriggerRequest>> {
        match self {
            Backend::Standalone(s) => Ok(s.scheduled_runs()),
            Backend::Cluster(e) => e.scheduled_runs().await,
        }
    }
}

/// Pausing and resuming jobs: the same calls for the CLI and the API.
impl Backend {
    /// The job's newest pause, read now.
    pub async fn pause_now(&self, job: &str) -> Result<Option<Pause>> {
        Ok(match self {
            Backend::Standalone(s) => s.pause_of(job),
            Backend::Cluster(e) => e.read_pauses().await?.remove(job),
        })
    }

    /// Every job's newest pause (`list`, the API).
    pub async fn pauses(&self, jobs: &[&str]) -> Result<HashMap<String, Pause>> {
        match self {
            Backend::Standalone(s) => Ok(jobs
                .iter()
                .filter_map(|j| Some((j.to_string(), s.pause_of(j)?)))
                .collect()),
            Backend::Cluster(e) => e.read_pauses().await,
        }
    }

    /// Pause `job` with `pause`, unless it is paused already.
    pub async fn pause(&self, job: &Job, pause: Pause) -> Result<PauseChange> {
        // A pause that ended by itself may have no entry yet (the leader
        // writes it at the job's next tick): write it before the record
        // of that pause is replaced. Under the pause's own id, so once.
        if let Some(ended) = self
            .pause_now(&job.name)
            .await?
            .filter(|p| !p.is_active(Utc::now()))
        {
            let entry = ended.entry(job, "");
            match self {
                Backend::Standalone(s) => Coordinator::record(&**s, &entry).await?,
                Backend::Cluster(e) => Coordinator::record(&**e, &entry).await?,
            };
        }
        let job = job.name.as_str();
        let change = move |now: Option<Pause>| match now {
            Some(p) if p.is_active(Utc::now()) => PauseChange::Unchanged(Some(p)),
            _ => PauseChange::Done(pause),
        };
        match self {
            Backend::Standalone(s) => s.change_pause(job, change),
            Backend::Cluster(e) => e.change_pause(job, change).await,
        }
    }

    /// Resume `job` if it is paused, and write the pause's one history
    /// entry (how many ticks it held back).
    pub async fn resume(&self, job: &Job, by: &str, instance: &str) -> Result<PauseChange> {
        let now = Utc::now();
        let change = |current: Option<Pause>| match current {
            Some(mut p) if p.is_active(now) => {
                p.resumed_at = Some(now);
                p.resumed_by = Some(by.to_string());
                PauseChange::Done(p)
            }
            other => PauseChange::Unchanged(other),
        };
        let changed = match self {
            Backend::Standalone(s) => s.change_pause(&job.name, change)?,
            Backend::Cluster(e) => e.change_pause(&job.name, change).await?,
        };
        if let PauseChange::Done(p) = &changed {
            let entry = p.entry(job, instance);
            match self {
                Backend::Standalone(s) => Coordinator::record(&**s, &entry).await?,
                Backend::Cluster(e) => Coordinator::record(&**e, &entry).await?,
            };
        }
        Ok(changed)
    }
}

impl HistoryReader for Backend {
    async fn recent(&self, job: &str, limit: usize) -> Result<Vec<RunRecord>> {
        match self {
            Backend::Standalone(s) => s.recent(job, limit).await,
            Backend::Cluster(e) => e.recent(job, limit).await,
        }
    }

    async fn active(&self, job: &str) -> Result<Vec<RunRecord>> {
        match self {
            Backend::Standalone(s) => s.active(job).await,
            Backend::Cluster(e) => e.active(job).await,
        }
    }

    async fn find_run(&self, jobs: &[&str], run_id: &str) -> Result<Option<RunRecord>> {
        match self {
            Backend::Standalone(s) => s.find_run(jobs, run_id).await,
            Backend::Cluster(e) => e.find_run(jobs, run_id).await,
        }
    }
}
