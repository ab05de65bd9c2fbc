//! The supervisors a scheduler started: tracked by pid, reaped as they
//! exit, their two report lines read (see `report`) for the metrics and
//! notifications, and
//! what a supervisor that died left of its job killed.

use super::report::{self, Report};
use super::{run_span, RunSpec};
use crate::model::RunKey;
use crate::notify::Notifier;
use crate::observe::Metrics;
use rustix::process::{kill_process, kill_process_group, Pid, Signal};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::task::JoinSet;
use tracing::Instrument;

/// A supervisor started and not yet reaped.
struct Tracked {
    key: RunKey,
    /// Its reaper task, to know which supervisor a failed task was for.
    task: tokio::task::Id,
}

/// A supervisor that exited: its run, whether it exited cleanly (having
/// recorded its run), and what its run handed back.
pub struct Reaped {
    pub key: Option<RunKey>,
    pub clean: bool,
    pub handback: Option<String>,
}

/// The supervisors started by one scheduler.
pub struct Supervisors {
    by_pid: HashMap<u32, Tracked>,
    /// Per supervisor: its pid, whether it exited cleanly, and what its run
    /// handed back.
    reaper: JoinSet<(u32, bool, Option<String>)>,
    metrics: Arc<Metrics>,
    notifier: Arc<Notifier>,
}

impl Supervisors {
    pub fn new(metrics: Arc<Metrics>, notifier: Arc<Notifier>) -> Self {
        Supervisors {
            by_pid: HashMap::new(),
            reaper: JoinSet::new(),
            metrics,
            notifier,
        }
    }

    /// How many are running.
    pub fn len(&self) -> usize {
        self.by_pid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
    }

    /// The job and run id of each.
    pub fn runs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.by_pid
            .values()
            .map(|t| (t.key.job.as_str(), t.key.run_id.as_str()))
    }

    /// Send `sig` to every supervisor (not to their jobs: each supervisor
    /// ends its own job's group).
    pub fn signal_all(&self, sig: Signal) {
        for pid in self.by_pid.keys() {
            if let Some(p) = Pid::from_raw(*pid as i32) {
                let _ = kill_process(p, sig);
            }
        }
    }

    pub fn track(&mut self, child: tokio::process::Child, spec: &RunSpec) {
        let pid = child.id().unwrap_or(0);
        let reap = watch(child, spec, self.metrics.clone(), self.notifier.clone());
        let task = self.reaper.spawn(reap).id();
        self.by_pid.insert(
            pid,
            Tracked {
                key: spec.key.clone(),
                task,
            },
        );
    }

    /// Whether run `run_id` is one of these supervisors'.
    pub fn tracks(&self, run_id: &str) -> bool {
        self.by_pid.values().any(|t| t.key.run_id == run_id)
    }

    /// Send `sig` to the supervisors of the runs `which` picks.
    pub fn signal_where(&self, sig: Signal, which: impl Fn(&RunKey) -> bool) {
        for (pid, t) in &self.by_pid {
            if which(&t.key) {
                if let Some(p) = Pid::from_raw(*pid as i32) {
                    let _ = kill_process(p, sig);
                }
            }
        }
    }

    /// Resolves when a supervisor exits (never, if none runs).
    pub async fn reap_one(&mut self) -> Reaped {
        match self.reaper.join_next().await {
            Some(Ok((pid, clean, handback))) => Reaped {
                key: self.by_pid.remove(&pid).map(|t| t.key),
                clean,
                handback,
            },
            // Its reaper failed (a panic): forget the supervisor rather
            // than wait for it for ever. Whether it still runs is unknown,
            // so it is not taken for dead (its lock or lease says).
            Some(Err(e)) => {
                let pid = self
                    .by_pid
                    .iter()
                    .find(|(_, t)| t.task == e.id())
                    .map(|(pid, _)| *pid);
                Reaped {
                    key: pid.and_then(|p| self.by_pid.remove(&p)).map(|t| t.key),
                    clean: true,
                    handback: None,
                }
            }
            None => std::future::pending().await,
        }
    }
}

/// Follow one supervisor (started with `SupervisorOutput::Scheduler`) to
/// its end: its report lines for the metrics and the notifications, and,
/// if it died without cleaning up, what is left of its job killed.
/// Resolves to its pid, whether it exited cleanly, and what its run handed
/// back. For the scheduler's own supervisors and the API's alike.
pub fn watch(
    mut child: tokio::process::Child,
    spec: &RunSpec,
    metrics: Arc<Metrics>,
    notifier: Arc<Notifier>,
) -> impl std::future::Future<Output = (u32, bool, Option<String>)> + Send + 'static {
    let pid = child.id().unwrap_or(0);
    let job = spec.key.job.clone();
    let run_id = spec.key.run_id.clone();
    let (tick, trigger) = (spec.key.tick, spec.key.trigger);
    metrics.supervisor_started();
    let reap = async move {
        // The supervisor reports its job's pid (= process group), then
        // the run's outcome (see `executor::report`).
        let (mut group, mut ended, mut handback) = (None, None, None);
        if let Some(out) = child.stdout.take() {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match report::parse(&line) {
                    Some(Report::Started(pid)) => {
                        // A retry reports the pid of each attempt; only
                        // the first start is the fire's.
                        match group {
                            None => metrics.run_started(&job, tick, trigger),
                            Some(_) => metrics.retried(&job),
                        }
                        group = Pid::from_raw(pid);
                    }
                    Some(Report::Ended(outcome, took, held, record)) => {
                        ended = Some((outcome, took));
                        handback = held;
                        if let Some(record) = record {
                            notifier.entry(&record);
                        }
                    }
                    None => {}
                }
            }
        }
        let status = child.wait().await;
        metrics.run_ended(&job, ended);
        metrics.supervisor_ended();
        // A supervisor that died without cleaning up (kill -9, OOM
        // killer) took only its direct child along (PDEATHSIG); the
        // rest of the job's group must not run on unsupervised.
        let clean = status.as_ref().is_ok_and(|s| s.success());
        if let (false, Some(g)) = (clean, group) {
            if kill_process_group(g, Signal::KILL).is_ok() {
                tracing::warn!(job = %job, supervisor_pid = pid, "supervisor died: killed what was left of its job");
            }
        }
        if !clean {
            // What left the group is still in the run's cgroup, if it has one.
            super::contain::kill_run_cgroups(&run_id, pid).await;
        }
        (pid, clean, handback.filter(|_| clean))
    };
    reap.instrument(run_span(spec))
}
