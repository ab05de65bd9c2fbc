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
//! <any of these>.corrupt         a file that could not be read, set aside (see below)
//! ```
//!
//! Every file is replaced atomically (a temporary file renamed over it), so
//! a file under its final name is complete, whoever is writing. One that
//! cannot be read is therefore really corrupt (a crashed filesystem, a hand
//! edit, a directory where a file belongs): the scheduler (see
//! [`Standalone::repairing`]) renames it to `<name>.corrupt`, logs one
//! ERROR and counts it, and goes on; read-only commands show it as an
//! `unreadable` history entry and change nothing. A file standing where a
//! directory must be created is set aside by whichever process needs the
//! directory.

use super::fsutil::{
    atomic_write, io_err, lock_detached, open_lock_file, set_aside, try_lock, wrong_kind,
};
use super::{
    BackendSpec, Claim, ClaimRejected, ClaimRequest, CoordError, Coordinator, HistoryReader, Hold,
    LeaderInfo, Leadership, Outcome, Result, RunRecord, RunRecorder, Turn,
};
use crate::config::Overlap;
use crate::observe::Metrics;
use chrono::{DateTime, Utc};
use std::fs::{self, File};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Lost runs found at the start of a leadership, passed on for their hooks.
const LOST_BACKLOG: usize = 256;

/// The first wait before writing a run record again that could not be
/// written (e.g. a full disk); it doubles up to [`RECORD_RETRY_MAX`].
const RECORD_RETRY_FIRST: Duration = Duration::from_millis(100);
const RECORD_RETRY_MAX: Duration = Duration::from_secs(5);

/// A state directory.
#[derive(Debug, Clone)]
pub struct Standalone {
    root: PathBuf,
    history_limit: usize,
    /// Set for the scheduler: corrupt files it reads are set aside and counted.
    repair: Option<Repair>,
    /// Per job, held to read and move its `last_tick`, so that a claim and
    /// a `missed` entry of this process never move it back.
    last_locks: Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<std::sync::Mutex<()>>>>>,
}

/// Where set-aside files are counted.
#[derive(Clone)]
struct Repair(Arc<Metrics>);

impl std::fmt::Debug for Repair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Repair")
    }
}

/// One history file, read.
enum Loaded {
    Missing,
    Record(RunRecord),
    /// Not readable as a record: the entry that stands for it.
    Unreadable(RunRecord),
}

impl Standalone {
    /// Open (creating if needed) the state directory at `root`.
    pub fn open(root: &Path, history_limit: usize) -> Result<Self> {
        fs::create_dir_all(root.join("jobs")).map_err(io_err(root))?;
        Ok(Standalone {
            root: root.to_path_buf(),
            history_limit: history_limit.max(1),
            repair: None,
            last_locks: Arc::default(),
        })
    }

    /// The scheduler's view: a corrupt file it meets is renamed to
    /// `<name>.corrupt`, logged once and counted in `metrics`, so that one
    /// bad file never stops it. Only the scheduler does this, and only for
    /// files that are complete by construction (see the module doc), so a
    /// record being written is never mistaken for a corrupt one.
    pub fn repairing(mut self, metrics: Arc<Metrics>) -> Self {
        self.repair = Some(Repair(metrics));
        self
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
        self.ensure_dir(&dir)?;
        Ok(dir)
    }

    /// Create `dir` (and its parents in the state directory). A file that
    /// stands where one of them belongs is set aside first, by whoever
    /// needs the directory: nothing else can be written there until then.
    fn ensure_dir(&self, dir: &Path) -> Result<()> {
        let Err(e) = fs::create_dir_all(dir) else {
            return Ok(());
        };
        match self.blocker(dir) {
            Some(file) => {
                self.set_aside_logged(&file, "a file where a directory belongs", "");
                fs::create_dir_all(dir).map_err(io_err(dir))
            }
            None => Err(io_err(dir)(e)),
        }
    }

    /// The first path from the state directory down to `dir` that exists
    /// but is not a directory.
    fn blocker(&self, dir: &Path) -> Option<PathBuf> {
        let mut below: Vec<&Path> = dir
            .ancestors()
            .take_while(|p| p.starts_with(&self.root) && *p != self.root)
            .collect();
        below.reverse();
        below
            .into_iter()
            .find(|p| fs::symlink_metadata(p).is_ok_and(|m| !m.is_dir()))
            .map(Path::to_path_buf)
    }

    /// Open (creating) a lock file, setting aside whatever is not a file
    /// in its place.
    fn open_lock(&self, path: &Path) -> Result<File> {
        match open_lock_file(path) {
            Err(CoordError::Io { ref cause, .. }) if wrong_kind(cause) => {
                self.set_aside_logged(path, "a directory where a lock file belongs", "");
                open_lock_file(path)
            }
            other => other,
        }
    }

    /// Deal with a state file that cannot be read as what it should be:
    /// the scheduler sets it aside; anyone else leaves it. Returns how to
    /// describe it and where it is now.
    fn corrupt(&self, path: &Path, reason: &str, then: &str) -> (String, PathBuf) {
        match self.repair {
            Some(_) => self.set_aside_logged(path, reason, then),
            None => (
                format!("corrupt state file {}: {reason}", path.display()),
                path.to_path_buf(),
            ),
        }
    }

    /// Rename a corrupt file to `<name>.corrupt`, with one ERROR line and
    /// one count.
    fn set_aside_logged(&self, path: &Path, reason: &str, then: &str) -> (String, PathBuf) {
        let then = if then.is_empty() {
            String::new()
        } else {
            format!("; {then}")
        };
        match set_aside(path) {
            Ok(to) => {
                if let Some(Repair(metrics)) = &self.repair {
                    metrics.state_file_corrupt();
                }
                let text = format!(
                    "corrupt state file {}: {reason}; set aside as {}",
                    path.display(),
                    to.display()
                );
                tracing::error!(path = %path.display(), set_aside = %to.display(), "{text}{then}");
                (text, to)
            }
            Err(e) => {
                let text = format!(
                    "corrupt state file {}: {reason}; could not set it aside: {e}",
                    path.display()
                );
                tracing::error!(path = %path.display(), "{text}{then}");
                (text, path.to_path_buf())
            }
        }
    }

    /// Read one history file of `job`. Files are replaced whole (see the
    /// module doc), so one that does not parse is corrupt, not half-written.
    fn load(&self, job: &str, path: &Path) -> Loaded {
        let shown_only = |text: String| Loaded::Unreadable(unreadable_entry(job, path, text));
        let reason = match fs::read(path) {
            Ok(bytes) => match serde_json::from_slice::<RunRecord>(&bytes) {
                Ok(rec) => return Loaded::Record(rec),
                // Well-formed JSON of another shape may be a newer
                // bgsched's record: shown, never moved.
                Err(e) if e.classify() == serde_json::error::Category::Data => {
                    return shown_only(format!(
                        "{} is not a run record this bgsched can read: {e}",
                        path.display()
                    ));
                }
                Err(e) => e.to_string(),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::Missing,
            Err(e) if wrong_kind(&e) => e.to_string(),
            // Not the file's fault (e.g. permissions): shown, never moved.
            Err(e) => return shown_only(format!("cannot read {}: {e}", path.display())),
        };
        // A file a live supervisor holds is its run's, whatever it reads as.
        if supervisor_alive(path).unwrap_or(true) {
            return shown_only(format!(
                "corrupt state file {}: {reason} (held by a live supervisor)",
                path.display()
            ));
        }
        let (text, now_at) = self.corrupt(path, &reason, "shown as unreadable in its history");
        Loaded::Unreadable(unreadable_entry(job, &now_at, text))
    }

    /// Files of `job` set aside earlier, each as an unreadable entry.
    fn set_aside_entries(&self, job: &str) -> Vec<RunRecord> {
        let job_dir = self.job_dir(job);
        let mut out = Vec::new();
        let places = [
            (job_dir.join("runs"), None),
            (job_dir.clone(), None),
            (self.root.join("jobs"), Some(job)),
        ];
        for (dir, only) in places {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.filter_map(|e| e.ok()) {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(original) = original_name(&name) else {
                    continue;
                };
                if only.is_some_and(|j| j != original) {
                    continue;
                }
                let path = entry.path();
                // In the words it had when it was read under its name.
                let why = match (original, read_last_tick(&path)) {
                    ("last_tick", Ok(StateFile::Corrupt(reason))) => reason,
                    _ => match fs::read(&path) {
                        Ok(bytes) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
                            Ok(_) => "not what it should be".to_string(),
                            Err(e) => e.to_string(),
                        },
                        Err(e) => e.to_string(),
                    },
                };
                let text = format!(
                    "corrupt state file {}: {why}; set aside as {}",
                    dir.join(original).display(),
                    path.display()
                );
                out.push(unreadable_entry(job, &path, text));
            }
        }
        out
    }

    /// Make room to write the file `path`: a directory in its place is set aside.
    fn clear_way(&self, path: &Path) {
        if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
            self.set_aside_logged(path, "a directory where a file belongs", "");
        }
    }

    /// The leader file, if it can be read.
    fn leader_file(&self) -> Option<LeaderInfo> {
        let path = self.root.join("leader.json");
        match read_leader(&path) {
            StateFile::Ok(info) => Some(info),
            StateFile::Missing => None,
            StateFile::Corrupt(reason) => {
                self.corrupt(&path, &reason, "its leader is shown as unknown");
                None
            }
        }
    }

    /// The state files of the whole directory (`term`, `leader.json`) that
    /// cannot be read, where they lie or set aside earlier, each saying
    /// which file and why (as the scheduler's log does). They belong to
    /// no job's history, so `list` shows them.
    pub fn unreadable_state_files(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let term = |path: &Path| match read_term(path) {
            Ok(StateFile::Corrupt(reason)) => Some(reason),
            _ => None,
        };
        let leader = |path: &Path| match read_leader(path) {
            StateFile::Corrupt(reason) => Some(reason),
            _ => None,
        };
        for (name, why) in [
            ("term", &term as &dyn Fn(&Path) -> Option<String>),
            ("leader.json", &leader),
        ] {
            let path = self.root.join(name);
            if let Some(reason) = why(&path) {
                out.push(format!("corrupt state file {}: {reason}", path.display()));
            }
        }
        let Ok(entries) = fs::read_dir(&self.root) else {
            return Ok(out);
        };
        let mut aside: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        aside.sort();
        for path in aside {
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let why = match original_name(&name) {
                Some("term") => term(&path),
                Some("leader.json") => leader(&path),
                _ => continue,
            };
            let original = self.root.join(original_name(&name).unwrap_or_default());
            out.push(format!(
                "corrupt state file {}: {}; set aside as {}",
                original.display(),
                why.unwrap_or_else(|| "not what it should be".to_string()),
                path.display()
            ));
        }
        Ok(out)
    }

    /// The highest term any record on disk was fired under.
    fn highest_recorded_term(&self) -> Result<u64> {
        let mut highest = 0;
        for job in self.known_jobs()? {
            for path in self.record_paths(&job)? {
                if let Loaded::Record(rec) = self.load(&job, &path) {
                    highest = highest.max(rec.term);
                }
            }
        }
        Ok(highest)
    }

    /// The instance currently firing jobs on this state directory, if any.
    pub fn leader(&self) -> Result<Option<LeaderInfo>> {
        let lock_path = self.root.join("leader.lock");
        if !lock_path.exists() {
            return Ok(None);
        }
        let file = match open_lock_file(&lock_path) {
            // Nobody can lead until the scheduler sets it aside.
            Err(CoordError::Io { ref cause, .. }) if wrong_kind(cause) => return Ok(None),
            other => other?,
        };
        // Taking the lock proves nobody holds it; closing the file drops it again.
        if try_lock(&file).map_err(io_err(&lock_path))? {
            return Ok(None);
        }
        Ok(self.leader_file())
    }

    /// History of `job`, newest first, at most `limit` entries; files
    /// that cannot be read (or were set aside) come as `unreadable` entries.
    pub fn history(&self, job: &str, limit: usize) -> Result<Vec<RunRecord>> {
        let mut out = Vec::new();
        for path in self.record_paths(job)?.into_iter().rev() {
            if out.len() >= limit {
                break;
            }
            if let Some(rec) = self.read_record(job, &path)? {
                out.push(rec);
            }
        }
        out.extend(self.corrupt_last_tick_entry(job)?);
        // Newest first by run id (= file name), as the records come; a set
        // aside record keeps its place.
        out.extend(self.set_aside_entries(job));
        out.sort_by(|a, b| b.run_id.cmp(&a.run_id));
        out.truncate(limit);
        Ok(out)
    }

    /// Runs of `job` whose supervisor is alive right now, oldest first.
    pub fn active_runs(&self, job: &str) -> Result<Vec<RunRecord>> {
        let mut out = Vec::new();
        for path in self.record_paths(job)? {
            if let Some(rec) = self.read_record(job, &path)? {
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
            .filter(|n| !n.starts_with('.') && original_name(n).is_none())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Rewrite entries whose supervisor died without finishing them as `lost`.
    pub fn reap_lost(&self, job: &str) -> Result<Vec<RunRecord>> {
        let mut reaped = Vec::new();
        for path in self.record_paths(job)? {
            let Loaded::Record(mut rec) = self.load(job, &path) else {
                continue;
            };
            if rec.outcome != Outcome::Running || supervisor_alive(&path)? {
                continue;
            }
            // The supervisor may have finished between the read and the lock check.
            match self.load(job, &path) {
                Loaded::Record(again) if again.outcome == Outcome::Running => {}
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
            // A file where the job's directory or its runs belong: that
            // file is the one entry, which reads as unreadable.
            Err(e) if wrong_kind(&e) => return Ok(self.blocker(&dir).into_iter().collect()),
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
    fn read_record(&self, job: &str, path: &Path) -> Result<Option<RunRecord>> {
        let mut rec = match self.load(job, path) {
            Loaded::Missing => return Ok(None),
            Loaded::Unreadable(entry) => return Ok(Some(entry)),
            Loaded::Record(rec) => rec,
        };
        if rec.outcome == Outcome::Running && !supervisor_alive(path)? {
            match self.load(job, path) {
                Loaded::Record(again) if again.outcome != Outcome::Running => {
                    return Ok(Some(again))
                }
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
            match self.load(job, &path) {
                Loaded::Record(rec)
                    if rec.outcome == Outcome::Running && supervisor_alive(&path)? =>
                {
                    continue
                }
                // Set aside (the scheduler), or kept for the scheduler to.
                Loaded::Unreadable(_) => continue,
                _ => {}
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
        self.ensure_dir(&dir)?;
        let path = dir.join(name);
        let file = self.open_lock(&path)?;
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
        self.ensure_dir(&dir)?;
        let lock = self.last_lock(req.job);
        let _last = lock.lock().expect("last tick lock");
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

    fn last_lock(&self, job: &str) -> Arc<std::sync::Mutex<()>> {
        let mut locks = self.last_locks.lock().expect("last tick locks");
        locks.entry(job.to_string()).or_default().clone()
    }

    fn last_fired_sync(&self, job: &str) -> Result<Option<DateTime<Utc>>> {
        let path = self.job_dir(job).join("last_tick");
        match read_last_tick(&path)? {
            StateFile::Missing => Ok(None),
            StateFile::Ok(t) => Ok(Some(t)),
            StateFile::Corrupt(reason) => {
                // Unreadable (e.g. emptied by a crash of the filesystem):
                // better to start afresh from now than to refuse to schedule.
                self.corrupt(&path, &reason, "the job counts as never fired");
                Ok(None)
            }
        }
    }

    /// The job's `last_tick` as a history entry when it cannot be read:
    /// read-only commands leave it in place, so they must show it there.
    fn corrupt_last_tick_entry(&self, job: &str) -> Result<Option<RunRecord>> {
        let path = self.job_dir(job).join("last_tick");
        match read_last_tick(&path)? {
            StateFile::Corrupt(reason) => {
                let (text, now_at) = self.corrupt(&path, &reason, "the job counts as never fired");
                // The scheduler set it aside: `set_aside_entries` shows it.
                Ok((now_at == path).then(|| unreadable_entry(job, &path, text)))
            }
            _ => Ok(None),
        }
    }

    /// The last term handed out on this state directory. The fencing token
    /// must never go down, so when the term file is missing or corrupt the
    /// term is recovered from everything else that carries one.
    fn last_term(&self) -> Result<u64> {
        let term_path = self.root.join("term");
        let stored = match read_term(&term_path)? {
            StateFile::Ok(t) => Some(t),
            StateFile::Missing => None,
            StateFile::Corrupt(reason) => {
                self.corrupt(
                    &term_path,
                    &reason,
                    "the term is recovered from the leader file and the run records",
                );
                None
            }
        };
        let from_leader = self.leader_file().map_or(0, |l| l.term);
        Ok(match stored {
            Some(t) => t.max(from_leader),
            None => from_leader.max(self.highest_recorded_term()?),
        })
    }

    fn lead_with(&self, file: File, instance: &str) -> Result<Leadership> {
        let term = self.last_term()? + 1;
        let term_path = self.root.join("term");
        self.clear_way(&term_path);
        atomic_write(&term_path, term.to_string().as_bytes(), true)?;
        let info = LeaderInfo {
            instance: instance.to_string(),
            term,
            since: Utc::now(),
            pid: Some(std::process::id()),
        };
        let json = serde_json::to_vec_pretty(&info).expect("leader info serializes");
        let leader_path = self.root.join("leader.json");
        self.clear_way(&leader_path);
        atomic_write(&leader_path, &json, true)?;
        let (lost_tx, lost) = tokio::sync::mpsc::channel(LOST_BACKLOG);
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
                // Beyond the backlog, a lost run keeps its record but not
                // its hook: a crash that left that many runs behind is
                // reported better by one log line than by a storm of hooks.
                let _ = lost_tx.try_send(rec);
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
        // A standby waits here, on a thread the process does not wait for
        // at exit, so that a stop request ends it at once.
        let lock_path = self.root.join("leader.lock");
        let file = self.open_lock(&lock_path)?;
        let file = lock_detached(file).await.map_err(io_err(&lock_path))?;
        let this = self.clone();
        let instance = instance.to_string();
        tokio::task::spawn_blocking(move || this.lead_with(file, &instance))
            .await
            .expect("leader task panicked")
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

    async fn begin_schedules(&self, _: &Leadership, jobs: &[&str], at: DateTime<Utc>) {
        // Not made durable: losing it only means the job starts from the
        // next start, as it would without it; thousands of fsyncs would
        // slow every first start down.
        let this = self.clone();
        let jobs: Vec<String> = jobs.iter().map(|j| j.to_string()).collect();
        let written = tokio::task::spawn_blocking(move || -> Result<()> {
            for job in jobs {
                let dir = this.job_dir(&job);
                this.ensure_dir(&dir)?;
                let path = dir.join("last_tick");
                let lock = this.last_lock(&job);
                let _last = lock.lock().expect("last tick lock");
                if !path.exists() {
                    atomic_write(&path, at.to_rfc3339().as_bytes(), false)?;
                }
            }
            Ok(())
        })
        .await;
        if let Ok(Err(e)) = written {
            tracing::debug!("could not write the jobs' first ticks: {e}");
        }
    }

    async fn record(&self, record: &RunRecord) -> Result<bool> {
        let dir = self.runs_dir(&record.job)?;
        write_record(&dir.join(format!("{}.json", record.run_id)), record)?;
        if record.outcome == Outcome::Missed && record.term > 0 {
            // As in etcd, the entry consumes its ticks; written after it, so
            // a crash in between records them twice rather than not at all.
            let lock = self.last_lock(&record.job);
            let _last = lock.lock().expect("last tick lock");
            if self
                .last_fired_sync(&record.job)?
                .is_none_or(|last| last < record.tick)
            {
                let path = self.job_dir(&record.job).join("last_tick");
                atomic_write(&path, record.tick.to_rfc3339().as_bytes(), true)?;
            }
        }
        self.prune(&record.job)?;
        Ok(true)
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
            if let Some(rec) = self.read_record(job, &path)? {
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

impl Standalone {
    /// Write `record` as `job`'s entry, trying again while the filesystem
    /// refuses (a full disk, say), the wait doubling up to 5 s, until it is
    /// written or this process is told to stop (SIGTERM, SIGINT): every
    /// run leaves its record. Then prune the job's history.
    pub async fn record_until_written(&self, record: &RunRecord) -> Result<()> {
        let path = self
            .job_dir(&record.job)
            .join("runs")
            .join(format!("{}.json", record.run_id));
        self.write_until_written(&path, record).await
    }

    async fn write_until_written(&self, path: &Path, record: &RunRecord) -> Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let (mut term, mut int) = (
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::interrupt()).ok(),
        );
        let mut wait = RECORD_RETRY_FIRST;
        let mut failures = 0u32;
        let what = if record.outcome.is_run() {
            "run record".to_string()
        } else {
            format!("{} entry", record.outcome)
        };
        loop {
            let written = self
                .runs_dir(&record.job)
                .and_then(|_| write_record(path, record));
            let e = match written {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(job = %record.job, run_id = %record.run_id, failures, "{what} written after {failures} failed attempt(s)");
                    }
                    return self.prune(&record.job);
                }
                Err(e) => e,
            };
            failures += 1;
            if failures == 1 {
                tracing::error!(job = %record.job, run_id = %record.run_id, "could not write the {what} ({e}); trying again until it is written");
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                Some(()) = recv(&mut term) => return Err(e),
                Some(()) = recv(&mut int) => return Err(e),
            }
            wait = (wait * 2).min(RECORD_RETRY_MAX);
        }
    }
}

async fn recv(sig: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match sig {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

impl RunRecorder for StandaloneRecorder {
    async fn started(&mut self, record: &RunRecord) -> Result<()> {
        let dir = self.state.runs_dir(&self.job)?;
        // Lock the file before it appears under its final name, so no reader
        // ever sees a `running` entry without a live lock on it.
        let tmp = dir.join(format!(".{}.start.tmp", record.run_id));
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

/// A state file other than a run record, read.
enum StateFile<T> {
    Missing,
    Ok(T),
    /// Why it is not what it should be, in the words every reader uses
    /// (the scheduler's log, `list`, `history`).
    Corrupt(String),
}

/// A job's `last_tick`: the newest tick fired.
fn read_last_tick(path: &Path) -> Result<StateFile<DateTime<Utc>>> {
    Ok(match fs::read_to_string(path) {
        Ok(s) => match DateTime::parse_from_rfc3339(s.trim()) {
            Ok(t) => StateFile::Ok(t.with_timezone(&Utc)),
            Err(e) => StateFile::Corrupt(format!("not an RFC 3339 instant ({e})")),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateFile::Missing,
        Err(e) if wrong_kind(&e) || e.kind() == std::io::ErrorKind::InvalidData => {
            StateFile::Corrupt(e.to_string())
        }
        Err(e) => return Err(io_err(path)(e)),
    })
}

/// The `term` file: the last term handed out.
fn read_term(path: &Path) -> Result<StateFile<u64>> {
    Ok(match fs::read_to_string(path) {
        Ok(s) => match s.trim().parse::<u64>() {
            Ok(t) => StateFile::Ok(t),
            Err(e) => StateFile::Corrupt(format!("not a term number ({e})")),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateFile::Missing,
        Err(e) if wrong_kind(&e) || e.kind() == std::io::ErrorKind::InvalidData => {
            StateFile::Corrupt(e.to_string())
        }
        // Without the term no token can be known to be new: refuse to lead.
        Err(e) => return Err(io_err(path)(e)),
    })
}

/// `leader.json`: who leads. Any other trouble reading it (e.g.
/// permissions) leaves the leader unknown, as a missing file does.
fn read_leader(path: &Path) -> StateFile<LeaderInfo> {
    match fs::read(path) {
        Ok(bytes) => match serde_json::from_slice::<LeaderInfo>(&bytes) {
            Ok(info) => StateFile::Ok(info),
            Err(e) => StateFile::Corrupt(e.to_string()),
        },
        Err(e) if wrong_kind(&e) => StateFile::Corrupt(e.to_string()),
        Err(_) => StateFile::Missing,
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

/// The entry that stands for an unreadable history file at `path`: its
/// name, its job, its modification time, and why it is unreadable.
fn unreadable_entry(job: &str, path: &Path, reason: String) -> RunRecord {
    let when = fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .map(DateTime::<Utc>::from)
        .unwrap_or_else(|_| Utc::now());
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut rec = RunRecord::not_run(
        job,
        when,
        super::Trigger::Schedule,
        "",
        Outcome::Unreadable,
        reason,
    );
    rec.run_id = name.split('.').next().unwrap_or_default().to_string();
    rec.started_at = when;
    rec.ended_at = None;
    rec.duration_ms = None;
    rec
}

/// The name a set-aside file had: `X` for `X.corrupt` or `X.<n>.corrupt`.
fn original_name(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(".corrupt")?;
    Some(match stem.rsplit_once('.') {
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => stem,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_aside_names_lead_back_to_the_original() {
        assert_eq!(original_name("term.corrupt"), Some("term"));
        assert_eq!(original_name("term.2.corrupt"), Some("term"));
        assert_eq!(
            original_name("0190c5a8-0000-7000-8000-000000000001.json.corrupt"),
            Some("0190c5a8-0000-7000-8000-000000000001.json")
        );
        assert_eq!(original_name("last_tick"), None);
        assert_eq!(original_name("run.lock"), None);
    }

    #[test]
    fn a_second_corrupt_file_of_one_name_does_not_replace_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("term");
        fs::write(&path, "first").unwrap();
        assert_eq!(set_aside(&path).unwrap(), dir.path().join("term.corrupt"));
        fs::write(&path, "second").unwrap();
        assert_eq!(set_aside(&path).unwrap(), dir.path().join("term.2.corrupt"));
        assert_eq!(
            fs::read_to_string(dir.path().join("term.corrupt")).unwrap(),
            "first"
        );
        assert!(!path.exists());
    }
}
