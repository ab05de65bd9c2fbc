//! A paused job's record in the state directory.

use super::*;
use crate::coordination::{Pause, PauseChange};

/// Standalone: `jobs/<job>/pause.json`, changed under `pause.lock`.
impl Standalone {
    fn pause_path(&self, job: &str) -> std::path::PathBuf {
        self.job_dir(job).join("pause.json")
    }

    /// The job's newest pause. A file that cannot be read is said once per
    /// read and taken as no pause: firing on is the safer guess than
    /// holding a job back for good on a torn file.
    pub fn pause_of(&self, job: &str) -> Option<Pause> {
        let path = self.pause_path(job);
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::error!(job, path = %path.display(), "the pause file cannot be read ({e}); the job is taken as not paused");
                    None
                }
            },
            Err(_) => None,
        }
    }

    /// Change the job's pause with `change` (given the newest one), under
    /// a lock that other processes on this state directory take too.
    pub fn change_pause(
        &self,
        job: &str,
        change: impl FnOnce(Option<Pause>) -> PauseChange,
    ) -> Result<PauseChange> {
        let dir = self.job_dir(job);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let lock_path = dir.join("pause.lock");
        let lock = self.open_lock(&lock_path)?;
        crate::coordination::fsutil::lock_blocking(&lock).map_err(io_err(&lock_path))?;
        let changed = change(self.pause_of(job));
        if let PauseChange::Done(p) = &changed {
            let json = serde_json::to_vec_pretty(p).expect("a pause serializes");
            atomic_write(&self.pause_path(job), &json, true)?;
        }
        Ok(changed)
    }
}
