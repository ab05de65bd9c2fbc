//! The supervisors this scheduler started, reaped as they exit.

use super::*;

/// A supervisor this scheduler started and has not yet reaped.
pub(super) struct Tracked {
    pub(super) job: String,
    pub(super) run_id: String,
}

/// Supervisors started by this scheduler, reaped as they exit.
#[derive(Default)]
pub(super) struct Running {
    pub(super) by_pid: HashMap<u32, Tracked>,
    /// Per supervisor: its pid, whether it exited cleanly, and what its run
    /// handed back.
    pub(super) reaper: JoinSet<(u32, bool, Option<String>)>,
    pub(super) metrics: Arc<Metrics>,
}

pub(super) fn signal_all(running: &HashMap<u32, Tracked>, sig: Signal) {
    for pid in running.keys() {
        if let Some(p) = Pid::from_raw(*pid as i32) {
            let _ = kill_process(p, sig);
        }
    }
}

impl Running {
    pub(super) fn track(&mut self, mut child: tokio::process::Child, spec: &RunSpec) {
        let (job, run_id) = (spec.job.as_str(), spec.run_id.clone());
        let pid = child.id().unwrap_or(0);
        self.by_pid.insert(
            pid,
            Tracked {
                job: job.to_string(),
                run_id,
            },
        );
        let job = job.to_string();
        let run_id = spec.run_id.clone();
        let (tick, trigger) = (spec.tick, spec.trigger);
        let metrics = self.metrics.clone();
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
                        Some(Report::Ended(outcome, took, held)) => {
                            ended = Some((outcome, took));
                            handback = held;
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
                crate::executor::contain::kill_run_cgroups(&run_id).await;
            }
            (pid, clean, handback.filter(|_| clean))
        };
        self.reaper.spawn(reap.instrument(run_span(spec)));
    }

    /// Resolves when a supervisor exits (never, if none runs), with its
    /// job if it did not exit cleanly, and what its run handed back.
    pub(super) async fn reap_one(&mut self) -> (Option<String>, Option<String>) {
        match self.reaper.join_next().await {
            Some(Ok((pid, clean, handback))) => {
                let tracked = self.by_pid.remove(&pid);
                (tracked.filter(|_| !clean).map(|t| t.job), handback)
            }
            Some(Err(_)) => (None, None),
            None => std::future::pending().await,
        }
    }
}
