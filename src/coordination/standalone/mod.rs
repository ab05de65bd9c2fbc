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
//! <state>/claims.journal         ticks claimed since the last_tick files were synced (see `journal`)
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
    BackendSpec, Claim, ClaimRejected, ClaimRequest, CoordError, Coordinator, GroupSeat,
    HistoryReader, Hold, LeaderInfo, Leadership, Outcome, Result, RunRecord, RunRecorder, Seat,
    Turn,
};
use crate::config::Overlap;
use crate::observe::Metrics;
use chrono::{DateTime, Utc};
use std::fs::{self, File};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

mod coordinator;
mod files;
mod journal;
mod leadership;
mod pause;
mod recorder;
mod records;
mod requests;
use files::*;
pub use recorder::*;
use records::*;

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
    /// Claims made durable together (see `journal`).
    journal: Arc<journal::Journal>,
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
            journal: Arc::default(),
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
}

impl Standalone {}

pub use crate::model::{duration_ms, new_run_id};

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
