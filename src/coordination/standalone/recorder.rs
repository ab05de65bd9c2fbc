//! The run's side: a supervisor records its run in the state directory.

use super::*;

/// Keeps one run's entry; holds an exclusive flock on it while the run lives.
pub struct StandaloneRecorder {
    pub(super) state: Standalone,
    pub(super) job: String,
    pub(super) path: PathBuf,
    pub(super) held: Option<File>,
    /// The run lock, when this run took its turn after waiting for it.
    pub(super) run_lock: Option<File>,
}

/// Ask an active run to stop so a newer one can replace it: its supervisor
/// takes SIGUSR1 as "replaced" and stops the job gracefully. A record
/// without a supervisor pid (written by an older bgsched) only names the
/// job's group, which then gets SIGTERM.
pub(super) fn stop_for_replacement(active: &RunRecord) {
    use rustix::process::{kill_process, kill_process_group, Pid, Signal};
    let pid = |p: u32| Pid::from_raw(p as i32);
    match (
        active.supervisor_pid.and_then(pid),
        active.pid.and_then(pid),
    ) {
        (Some(supervisor), _) => {
            let _ = kill_process(supervisor, Signal::USR1);
        }
        (None, Some(group)) => {
            let _ = kill_process_group(group, Signal::TERM);
        }
        (None, None) => {}
    }
}

impl Standalone {
    /// The recorder a run's supervisor uses.
    pub fn recorder(&self, job: &str, run_id: &str) -> StandaloneRecorder {
        StandaloneRecorder {
            state: self.clone(),
            job: job.to_string(),
            path: self
                .job_dir(job)
                .join("runs")
                .join(format!("{run_id}.json")),
            held: None,
            run_lock: None,
        }
    }
}

impl RunRecorder for StandaloneRecorder {
    async fn started(&mut self, record: &RunRecord) -> Result<()> {
        let dir = self.state.runs_dir(&self.job)?;
        // Lock the file before it appears under its final name, so no reader
        // ever sees a `running` entry without a live lock on it.
        let tmp = dir.join(format!(".{}.start.tmp", record.key.run_id));
        let file = open_lock_file(&tmp)?;
        let json = serde_json::to_vec_pretty(record).expect("run record serializes");
        let written = try_lock(&file)
            .and_then(|_| std::io::Write::write_all(&mut &file, &json))
            .map_err(io_err(&tmp))
            .and_then(|()| fs::rename(&tmp, &self.path).map_err(io_err(&self.path)));
        if written.is_err() {
            // E.g. a full disk: leave no partial file taking up room.
            let _ = fs::remove_file(&tmp);
        }
        written?;
        self.held = Some(file);
        Ok(())
    }

    async fn take_turn(&mut self, turn: &Turn, _record: &RunRecord) -> Result<()> {
        if let Turn::Replace { .. } = turn {
            // Whoever runs now, not whoever ran at claim time.
            for active in self.state.active_runs(&self.job)? {
                stop_for_replacement(&active);
            }
        }
        let path = self.state.job_dir(&self.job).join("run.lock");
        let file = self.state.open_lock(&path)?;
        // Detached, so that a stop request while waiting ends this process.
        let file = lock_detached(file).await.map_err(io_err(&path))?;
        self.run_lock = Some(file);
        Ok(())
    }

    fn replacements(&mut self) -> tokio::sync::watch::Receiver<Option<String>> {
        // Standalone, a replacement arrives as SIGUSR1 (see `take_turn`).
        tokio::sync::watch::channel(None).1
    }

    async fn attempt_failed(&mut self, record: &RunRecord) -> Result<()> {
        self.state.record_until_written(record).await
    }

    async fn finished(&mut self, record: &RunRecord) -> Result<()> {
        // The run's locks are kept meanwhile, so it still counts as active.
        let result = self.state.write_until_written(&self.path, record).await;
        self.held = None;
        self.run_lock = None;
        result
    }

    async fn fenced(&mut self) -> String {
        // A kernel lock cannot be lost while this process lives.
        std::future::pending().await
    }
}
