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
    /// The run's place in its concurrency group.
    pub(super) seat: Option<File>,
    /// The runs its end starts (`after`), and the `after_all` jobs it marks.
    pub(super) next: Vec<crate::coordination::TriggerRequest>,
    pub(super) marks: Vec<String>,
}

/// Ask an active run's supervisor to stop its job gracefully: SIGUSR1 is
/// "replaced by a newer run", SIGUSR2 "cancelled". A record without a
/// supervisor pid (written by an older bgsched) only names the job's group,
/// which then gets SIGTERM. Returns whether anyone was signalled.
pub fn ask_to_stop(active: &RunRecord, why: rustix::process::Signal) -> bool {
    use rustix::process::{kill_process, kill_process_group, Pid, Signal};
    let pid = |p: u32| Pid::from_raw(p as i32);
    match (
        active.supervisor_pid.and_then(pid),
        active.pid.and_then(pid),
    ) {
        (Some(supervisor), _) => kill_process(supervisor, why).is_ok(),
        (None, Some(group)) => kill_process_group(group, Signal::TERM).is_ok(),
        (None, None) => false,
    }
}

impl StandaloneRecorder {
    /// The record's file is named after the run id.
    fn run_id(&self) -> Option<String> {
        Some(self.path.file_stem()?.to_str()?.to_string())
    }
}

impl Standalone {
    /// Where a running attempt's output grows, for `logs -f`.
    pub fn live_path(&self, job: &str, run_id: &str) -> PathBuf {
        self.job_dir(job).join("live").join(format!("{run_id}.out"))
    }

    /// Where whoever asks a run to stop (a canceller, a replacing run)
    /// says who it is, for the run's record.
    pub(super) fn stop_note(&self, job: &str, run_id: &str) -> PathBuf {
        self.job_dir(job).join(format!("cancel.{run_id}"))
    }

    /// Cancel `run` (active): note who asks, then signal its supervisor.
    pub fn cancel(&self, run: &RunRecord, why: &str) -> bool {
        self.ask_with_note(run, why, rustix::process::Signal::USR2)
    }

    /// Leave `why` in `run`'s stop note, then signal its supervisor; the
    /// note goes again if nobody was signalled. Best effort: without the
    /// note the record gives the signal's plain reason.
    fn ask_with_note(&self, run: &RunRecord, why: &str, signal: rustix::process::Signal) -> bool {
        let note = self.stop_note(&run.key.job, &run.key.run_id);
        let _ = fs::write(&note, why);
        let asked = ask_to_stop(run, signal);
        if !asked {
            let _ = fs::remove_file(&note);
        }
        asked
    }

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
            seat: None,
            next: Vec::new(),
            marks: Vec::new(),
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
            // Whoever runs now, not whoever ran at claim time. The note
            // names this run in the replaced one's record, as a cancel's
            // names who cancelled.
            let why = format!("replaced by run {}", self.run_id().unwrap_or_default());
            for active in self.state.active_runs(&self.job)? {
                self.state
                    .ask_with_note(&active, &why, rustix::process::Signal::USR1);
            }
        }
        let path = self.state.job_dir(&self.job).join("run.lock");
        let file = self.state.open_lock(&path)?;
        // Detached, so that a stop request while waiting ends this process.
        let file = lock_detached(file).await.map_err(io_err(&path))?;
        self.run_lock = Some(file);
        Ok(())
    }

    fn will_trigger(
        &mut self,
        requests: Vec<crate::coordination::TriggerRequest>,
        marks: Vec<String>,
    ) {
        self.next = requests;
        self.marks = marks;
    }

    fn seated(&mut self, _seat: &GroupSeat, lock: Option<OwnedFd>) {
        self.seat = lock.map(File::from);
    }

    async fn take_seat(&mut self, seat: &GroupSeat, _record: &RunRecord) -> Result<()> {
        let group = crate::config::Group {
            name: seat.group.clone(),
            limit: seat.limit,
        };
        let run_id = self.run_id().unwrap_or_default();
        // A lone place is waited for by the kernel; with several, any may
        // free first, so look again every 100 ms.
        if seat.limit == 1 {
            let path = self.state.seat_path(&group.name, 0);
            let file = self.state.open_lock(&path)?;
            let file = lock_detached(file).await.map_err(io_err(&path))?;
            super::leadership::name_holder(&file, &self.job, &run_id);
            self.seat = Some(file);
            return Ok(());
        }
        loop {
            if let Some(taken) = self.state.try_seat(&group, &self.job, &run_id)? {
                self.seat = taken.lock.map(File::from);
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn cancelled_by(&mut self) -> Option<String> {
        let run_id = self.run_id()?;
        let path = self.state.stop_note(&self.job, &run_id);
        let why = fs::read_to_string(&path).ok()?;
        let _ = fs::remove_file(&path);
        Some(why.trim().to_string()).filter(|w| !w.is_empty())
    }

    fn replacements(&mut self) -> tokio::sync::watch::Receiver<Option<String>> {
        // Standalone, a replacement arrives as SIGUSR1 (see `take_turn`).
        tokio::sync::watch::channel(None).1
    }

    async fn attempt_failed(&mut self, record: &RunRecord) -> Result<()> {
        self.state.record_until_written(record).await
    }

    async fn finished(&mut self, record: &RunRecord) -> Result<()> {
        // The runs its end starts are asked for first: should this process
        // die before the record is written, the leader finds the run
        // recorded lost and lets them go (see `serve_requests`); the other
        // way round, a crash in between would lose them unseen.
        let run_id = self.run_id().unwrap_or_default();
        // A stop note nobody read (the run was stopped while it waited for
        // a retry, say) goes with the run.
        let _ = fs::remove_file(self.state.stop_note(&self.job, &run_id));
        for req in std::mem::take(&mut self.next) {
            let what = format!("request for the run of {} after this one", req.job);
            super::records::until_written(&what, &self.job, &run_id, || self.state.ask_for(&req))
                .await?;
        }
        let upstream = crate::model::Upstream {
            job: self.job.clone(),
            run_id: run_id.clone(),
            outcome: record.outcome,
        };
        for job in std::mem::take(&mut self.marks) {
            let what = format!("mark of this run's end for {job}");
            super::records::until_written(&what, &self.job, &run_id, || {
                self.state.mark_upstream(&job, &upstream)
            })
            .await?;
        }
        // The run's locks are kept meanwhile, so it still counts as active.
        let result = self.state.write_until_written(&self.path, record).await;
        // Followers finish from the record's tail now.
        if let Some(run_id) = self.run_id() {
            let _ = fs::remove_file(self.state.live_path(&self.job, &run_id));
        }
        self.held = None;
        self.run_lock = None;
        self.seat = None;
        result
    }

    fn live_file(&mut self, attempt: u32) -> Option<File> {
        let run_id = self.run_id()?;
        let path = self.state.live_path(&self.job, &run_id);
        fs::create_dir_all(path.parent()?).ok()?;
        // One stream for the whole run: retries append to it.
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .truncate(false)
            .open(&path)
            .ok()
            .filter(|f| attempt > 1 || f.set_len(0).is_ok())
    }

    async fn fenced(&mut self) -> String {
        // A kernel lock cannot be lost while this process lives.
        std::future::pending().await
    }
}
