//! The embedded default backend: a local state directory and kernel file
//! locks. Nothing here relies on PID files: every "is it alive" question is
//! answered by whether a `flock` is held, which the kernel drops the moment
//! the holder dies, even by `kill -9`.
//!
//! ```text
//! <state>/leader.lock            flock held by the `bgsched run` that fires jobs
//! <state>/leader.json            who holds it (instance, term, since, pid)
//! <state>/term                   the last term handed out
//! <state>/jobs/<job>/run.lock    flock held by the active run's supervisor (overlap skip/queue/replace)
//! <state>/jobs/<job>/queue.lock  flock held by the one run waiting for run.lock (queue/replace)
//! <state>/jobs/<job>/last_tick   the newest tick fired by a scheduler
//! <state>/jobs/<job>/runs/<run-id>.json
//!                                history; a `running` entry is flocked by its supervisor
//! ```

use super::fsutil::{atomic_write, io_err, lock_blocking, open_lock_file, read_json, try_lock};
use super::{
    BackendSpec, Claim, ClaimRejected, ClaimRequest, Coordinator, HistoryReader, Hold, LeaderInfo,
    Leadership, Outcome, Result, RunRecord, RunRecorder, Turn,
};
use crate::config::Overlap;
use chrono::{DateTime, Utc};
use std::fs::{self, File};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// A state directory.
#[derive(Debug, Clone)]
pub struct Standalone {
    root: PathBuf,
    history_limit: usize,
}

impl Standalone {
    /// Open (creating if needed) the state directory at `root`.
    pub fn open(root: &Path, history_limit: usize) -> Result<Self> {
        fs::create_dir_all(root.join("jobs")).map_err(io_err(root))?;
        Ok(Standalone {
            root: root.to_path_buf(),
            history_limit: history_limit.max(1),
        })
    }

    /// The per-user default state directory for a config file: under the XDG
    /// state directory, keyed by the config's absolute path so that two
    /// configs never share state by accident.
    pub fn default_dir(config_path: &Path) -> PathBuf {
        let abs = std::path::absolute(config_path).unwrap_or_else(|_| config_path.to_path_buf());
        let base = directories::ProjectDirs::from("", "", "bgsched")
            .and_then(|d| d.state_dir().map(Path::to_path_buf))
            .unwrap_or_else(|| std::env::temp_dir().join("bgsched"));
        let stem: String = abs
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        base.join(format!(
            "{stem}-{:016x}",
            crate::config::fnv1a(abs.as_os_str().as_encoded_bytes())
        ))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn history_limit(&self) -> usize {
        self.history_limit
    }

    fn job_dir(&self, job: &str) -> PathBuf {
        self.root.join("jobs").join(job)
    }

    fn runs_dir(&self, job: &str) -> Result<PathBuf> {
        let dir = self.job_dir(job).join("runs");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(dir)
    }

    /// The instance currently firing jobs on this state directory, if any.
    pub fn leader(&self) -> Result<Option<LeaderInfo>> {
        let lock_path = self.root.join("leader.lock");
        if !lock_path.exists() {
            return Ok(None);
        }
        let file = open_lock_file(&lock_path)?;
        // Taking the lock proves nobody holds it; closing the file drops it again.
        if try_lock(&file).map_err(io_err(&lock_path))? {
            return Ok(None);
        }
        read_json(&self.root.join("leader.json"))
    }

    /// History of `job`, newest first, at most `limit` entries.
    pub fn history(&self, job: &str, limit: usize) -> Result<Vec<RunRecord>> {
        let mut out = Vec::new();
        for path in self.record_paths(job)?.into_iter().rev() {
            if out.len() >= limit {
                break;
            }
            if let Some(rec) = self.read_record(&path)? {
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// Runs of `job` whose supervisor is alive right now, oldest first.
    pub fn active_runs(&self, job: &str) -> Result<Vec<RunRecord>> {
        let mut out = Vec::new();
        for path in self.record_paths(job)? {
            if let Some(rec) = self.read_record(&path)? {
                if rec.outcome == Outcome::Running {
                    out.push(rec);
                }
            }
        }
        Ok(out)
    }

    /// Names of jobs that have state here (including ones no longer configured).
    pub fn known_jobs(&self) -> Result<Vec<String>> {
        let dir = self.root.join("jobs");
        let mut names: Vec<String> = fs::read_dir(&dir)
            .map_err(io_err(&dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Rewrite entries whose supervisor died without finishing them as `lost`.
    pub fn reap_lost(&self, job: &str) -> Result<Vec<RunRecord>> {
        let mut reaped = Vec::new();
        for path in self.record_paths(job)? {
            let Some(mut rec) = read_json::<RunRecord>(&path)? else {
                continue;
            };
            if rec.outcome != Outcome::Running || supervisor_alive(&path)? {
                continue;
            }
            // The supervisor may have finished between the read and the lock check.
            match read_json::<RunRecord>(&path)? {
                Some(again) if again.outcome == Outcome::Running => {}
                _ => continue,
            }
            let now = Utc::now();
            rec.outcome = Outcome::Lost;
            rec.reason = Some("its supervisor process vanished before the run finished".into());
            rec.duration_ms = Some(duration_ms(rec.started_at, now));
            rec.ended_at = Some(now);
            write_record(&path, &rec)?;
            reaped.push(rec);
        }
        Ok(reaped)
    }

    /// Entry paths of `job`, oldest first (run ids are time-ordered).
    fn record_paths(&self, job: &str) -> Result<Vec<PathBuf>> {
        let dir = self.job_dir(job).join("runs");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|x| x == "json")
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        paths.sort();
        Ok(paths)
    }

    /// Read one entry, presenting a `running` entry whose supervisor is gone as `lost`.
    fn read_record(&self, path: &Path) -> Result<Option<RunRecord>> {
        let Some(mut rec) = read_json::<RunRecord>(path)? else {
            return Ok(None);
        };
        if rec.outcome == Outcome::Running && !supervisor_alive(path)? {
            match read_json::<RunRecord>(path)? {
                Some(again) if again.outcome != Outcome::Running => return Ok(Some(again)),
                _ => {
                    rec.outcome = Outcome::Lost;
                    rec.reason = Some("its supervisor process vanished".into());
                }
            }
        }
        Ok(Some(rec))
    }

    /// Drop the oldest entries beyond the retention limit, never a live run.
    fn prune(&self, job: &str) -> Result<()> {
        let paths = self.record_paths(job)?;
        let excess = paths.len().saturating_sub(self.history_limit);
        for path in paths.into_iter().take(excess) {
            if let Some(rec) = read_json::<RunRecord>(&path)? {
                if rec.outcome == Outcome::Running && supervisor_alive(&path)? {
                    continue;
                }
            }
            let _ = fs::remove_file(&path);
        }
        Ok(())
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
        }
    }

    /// Try to take `job`'s run lock: `Ok(None)` when a run holds it.
    pub fn try_run_lock(&self, job: &str) -> Result<Option<OwnedFd>> {
        self.try_job_lock(job, "run.lock")
    }

    fn try_job_lock(&self, job: &str, name: &str) -> Result<Option<OwnedFd>> {
        let dir = self.job_dir(job);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = dir.join(name);
        let file = open_lock_file(&path)?;
        if try_lock(&file).map_err(io_err(&path))? {
            Ok(Some(file.into()))
        } else {
            Ok(None)
        }
    }

    /// What a new run of `job` holds under its overlap policy, and when it
    /// may start; or why it may not run at all.
    pub fn overlap_hold(&self, job: &str, overlap: Overlap) -> Result<(Hold, Turn), ClaimRejected> {
        let active = || -> Result<Option<Box<RunRecord>>, ClaimRejected> {
            Ok(self.active_runs(job)?.into_iter().next().map(Box::new))
        };
        match overlap {
            Overlap::Allow => Ok((Hold::None, Turn::Now)),
            Overlap::Skip => match self.try_run_lock(job)? {
                Some(fd) => Ok((Hold::Lock(fd), Turn::Now)),
                None => Err(ClaimRejected::StillRunning(active()?)),
            },
            Overlap::Queue | Overlap::Replace => {
                // The waiting place first: a run that finds it taken must not
                // start in front of the one waiting there.
                let Some(place) = self.try_job_lock(job, "queue.lock")? else {
                    return Err(ClaimRejected::AlreadyQueued(active()?));
                };
                match self.try_run_lock(job)? {
                    Some(fd) => Ok((Hold::Lock(fd), Turn::Now)),
                    None if overlap == Overlap::Queue => Ok((Hold::Lock(place), Turn::Queued)),
                    None => Ok((Hold::Lock(place), Turn::Replace { active: active()? })),
                }
            }
        }
    }

    fn claim_sync(&self, term: u64, req: &ClaimRequest<'_>) -> Result<Claim, ClaimRejected> {
        let dir = self.job_dir(req.job);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        if req.advances_schedule {
            if let Some(last) = self.last_fired_sync(req.job)? {
                if last >= req.tick {
                    return Err(ClaimRejected::AlreadyFired(req.tick));
                }
            }
            // The tick counts as fired even if it is then skipped, so no
            // later start catches it up. Made durable before anything runs:
            // a tick must not fire twice even across a power loss.
            let path = dir.join("last_tick");
            atomic_write(&path, req.tick.to_rfc3339().as_bytes(), true)?;
        }
        let (hold, turn) = self.overlap_hold(req.job, req.overlap)?;
        Ok(Claim {
            run_id: req.request.map_or_else(new_run_id, str::to_string),
            term,
            hold,
            turn,
        })
    }

    fn last_fired_sync(&self, job: &str) -> Result<Option<DateTime<Utc>>> {
        let path = self.job_dir(job).join("last_tick");
        match fs::read_to_string(&path) {
            Ok(s) => match DateTime::parse_from_rfc3339(s.trim()) {
                Ok(t) => Ok(Some(t.with_timezone(&Utc))),
                // Unreadable (e.g. emptied by a crash of the filesystem):
                // better to start afresh than to refuse to schedule.
                Err(e) => {
                    tracing::error!("{}: {e}; treating the job as never fired", path.display());
                    Ok(None)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    fn lead_blocking(&self, instance: &str) -> Result<Leadership> {
        let lock_path = self.root.join("leader.lock");
        let file = open_lock_file(&lock_path)?;
        lock_blocking(&file).map_err(io_err(&lock_path))?;
        let term_path = self.root.join("term");
        let term = match fs::read_to_string(&term_path) {
            Ok(s) => s.trim().parse::<u64>().unwrap_or(0) + 1,
            Err(_) => 1,
        };
        atomic_write(&term_path, term.to_string().as_bytes(), true)?;
        let info = LeaderInfo {
            instance: instance.to_string(),
            term,
            since: Utc::now(),
            pid: Some(std::process::id()),
        };
        let json = serde_json::to_vec_pretty(&info).expect("leader info serializes");
        atomic_write(&self.root.join("leader.json"), &json, true)?;
        let (lost_tx, lost) = tokio::sync::mpsc::unbounded_channel();
        for job in self.known_jobs()? {
            let reaped = self.reap_lost(&job)?;
            if !reaped.is_empty() {
                tracing::warn!(
                    job,
                    reaped = reaped.len(),
                    "recorded runs whose supervisor vanished as lost"
                );
            }
            for rec in reaped {
                let _ = lost_tx.send(rec);
            }
        }
        // A held flock cannot be taken away, so this leadership stays valid
        // until it is dropped; the sender lives (and is dropped) with it.
        let (valid_tx, valid) = tokio::sync::watch::channel(true);
        Ok(Leadership::new(term, valid, None, Box::new((file, valid_tx))).with_lost_runs(lost))
    }
}

impl Coordinator for Standalone {
    async fn acquire_leadership(&self, instance: &str) -> Result<Leadership> {
        let this = self.clone();
        let instance = instance.to_string();
        tokio::task::spawn_blocking(move || this.lead_blocking(&instance))
            .await
            .expect("leader lock task panicked")
    }

    async fn resign(&self, leadership: Leadership) {
        drop(leadership);
    }

    async fn last_fired(&self, job: &str) -> Result<Option<DateTime<Utc>>> {
        self.last_fired_sync(job)
    }

    async fn claim(
        &self,
        leadership: &Leadership,
        req: ClaimRequest<'_>,
    ) -> Result<Claim, ClaimRejected> {
        // On a blocking thread: the claim fsyncs, and the claims of jobs due
        // together then overlap instead of queueing behind each other.
        let this = self.clone();
        let term = leadership.term;
        let (job, instance) = (req.job.to_string(), req.instance.to_string());
        let request = req.request.map(str::to_string);
        let (tick, trigger, overlap, advances_schedule) =
            (req.tick, req.trigger, req.overlap, req.advances_schedule);
        tokio::task::spawn_blocking(move || {
            let req = ClaimRequest {
                job: &job,
                tick,
                trigger,
                instance: &instance,
                overlap,
                advances_schedule,
                request: request.as_deref(),
            };
            this.claim_sync(term, &req)
        })
        .await
        .expect("claim task panicked")
    }

    async fn record(&self, record: &RunRecord) -> Result<()> {
        let dir = self.runs_dir(&record.job)?;
        write_record(&dir.join(format!("{}.json", record.run_id)), record)?;
        self.prune(&record.job)
    }

    async fn reap_lost(&self, job: &str) -> Vec<RunRecord> {
        Standalone::reap_lost(self, job).unwrap_or_else(|e| {
            tracing::error!(job, "could not record lost runs: {e}");
            Vec::new()
        })
    }

    async fn finish_request(&self, _run_id: &str) {}

    fn backend_spec(&self) -> BackendSpec {
        BackendSpec::Standalone {
            state_dir: self.root.clone(),
            history_limit: self.history_limit,
        }
    }

    async fn shutdown(&self) {}
}

impl HistoryReader for Standalone {
    async fn recent(&self, job: &str, limit: usize) -> Result<Vec<RunRecord>> {
        self.history(job, limit)
    }

    async fn active(&self, job: &str) -> Result<Vec<RunRecord>> {
        self.active_runs(job)
    }

    async fn find_run(&self, jobs: &[&str], run_id: &str) -> Result<Option<RunRecord>> {
        for job in jobs {
            let path = self
                .job_dir(job)
                .join("runs")
                .join(format!("{run_id}.json"));
            if let Some(rec) = self.read_record(&path)? {
                return Ok(Some(rec));
            }
        }
        Ok(None)
    }
}

/// Keeps one run's entry; holds an exclusive flock on it while the run lives.
pub struct StandaloneRecorder {
    state: Standalone,
    job: String,
    path: PathBuf,
    held: Option<File>,
    /// The run lock, when this run took its turn after waiting for it.
    run_lock: Option<File>,
}

impl RunRecorder for StandaloneRecorder {
    async fn started(&mut self, record: &RunRecord) -> Result<()> {
        let dir = self.state.runs_dir(&self.job)?;
        // Lock the file before it appears under its final name, so no reader
        // ever sees a `running` entry without a live lock on it.
        let tmp = dir.join(format!(".{}.start.tmp", record.run_id));
        let file = open_lock_file(&tmp)?;
        try_lock(&file).map_err(io_err(&tmp))?;
        let json = serde_json::to_vec_pretty(record).expect("run record serializes");
        std::io::Write::write_all(&mut &file, &json).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &self.path).map_err(io_err(&self.path))?;
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
        let file = open_lock_file(&path)?;
        let file = tokio::task::spawn_blocking(move || lock_blocking(&file).map(|()| file))
            .await
            .expect("lock task panicked")
            .map_err(io_err(&path))?;
        self.run_lock = Some(file);
        Ok(())
    }

    fn replacements(&mut self) -> tokio::sync::watch::Receiver<Option<String>> {
        // Standalone, a replacement arrives as SIGUSR1 (see `take_turn`).
        tokio::sync::watch::channel(None).1
    }

    async fn attempt_failed(&mut self, record: &RunRecord) -> Result<()> {
        Coordinator::record(&self.state, record).await
    }

    async fn finished(&mut self, record: &RunRecord) -> Result<()> {
        // A run that could not start was never `started`.
        let result = self
            .state
            .runs_dir(&self.job)
            .and_then(|_| write_record(&self.path, record));
        self.held = None;
        self.run_lock = None;
        result?;
        self.state.prune(&self.job)
    }

    async fn fenced(&mut self) -> String {
        // A kernel lock cannot be lost while this process lives.
        std::future::pending().await
    }
}

fn write_record(path: &Path, record: &RunRecord) -> Result<()> {
    let json = serde_json::to_vec_pretty(record).expect("run record serializes");
    atomic_write(path, &json, true)
}

/// Whether a supervisor holds the lock on the entry at `path`.
fn supervisor_alive(path: &Path) -> Result<bool> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err(path)(e)),
    };
    Ok(!try_lock(&file).map_err(io_err(path))?)
}

/// A unique, time-ordered run id (UUIDv7), so that file names sort by start.
pub fn new_run_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Ask an active run to stop so a newer one can replace it: its supervisor
/// takes SIGUSR1 as "replaced" and stops the job gracefully. A record
/// without a supervisor pid (written by an older bgsched) only names the
/// job's group, which then gets SIGTERM.
fn stop_for_replacement(active: &RunRecord) {
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

pub fn duration_ms(from: DateTime<Utc>, to: DateTime<Utc>) -> u64 {
    (to - from).num_milliseconds().max(0) as u64
}
