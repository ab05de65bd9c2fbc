//! Run records on disk: writing them until they are written, reading,
//! pruning, and finding lost runs.

use super::*;
use crate::signals::{Sig, Signals};

/// Lost runs found at the start of a leadership, passed on for their hooks.
pub(super) const LOST_BACKLOG: usize = 256;

/// The first wait before writing a run record again that could not be
/// written (e.g. a full disk); it doubles up to [`RECORD_RETRY_MAX`].
pub(super) const RECORD_RETRY_FIRST: Duration = Duration::from_millis(100);

pub(super) const RECORD_RETRY_MAX: Duration = Duration::from_secs(5);

pub(super) fn write_record(path: &Path, record: &RunRecord) -> Result<()> {
    let json = serde_json::to_vec_pretty(record).expect("run record serializes");
    atomic_write(path, &json, true)
}

/// Whether a supervisor holds the lock on the entry at `path`.
pub(super) fn supervisor_alive(path: &Path) -> Result<bool> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err(path)(e)),
    };
    Ok(!try_lock(&file).map_err(io_err(path))?)
}

impl Standalone {
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
        out.sort_by(|a, b| b.key.run_id.cmp(&a.key.run_id));
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
    pub(super) fn record_paths(&self, job: &str) -> Result<Vec<PathBuf>> {
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
    pub(super) fn read_record(&self, job: &str, path: &Path) -> Result<Option<RunRecord>> {
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
    pub(super) fn prune(&self, job: &str) -> Result<()> {
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
}

impl Standalone {
    /// Write `record` as `job`'s entry, trying again while the filesystem
    /// refuses (a full disk, say), the wait doubling up to 5 s, until it is
    /// written or this process is told to stop (SIGTERM, SIGINT): every
    /// run leaves its record. Then prune the job's history.
    pub async fn record_until_written(&self, record: &RunRecord) -> Result<()> {
        let path = self
            .job_dir(&record.key.job)
            .join("runs")
            .join(format!("{}.json", record.key.run_id));
        self.write_until_written(&path, record).await
    }

    pub(super) async fn write_until_written(&self, path: &Path, record: &RunRecord) -> Result<()> {
        let what = if record.outcome.is_run() {
            "run record".to_string()
        } else {
            format!("{} entry", record.outcome)
        };
        until_written(&what, &record.key.job, &record.key.run_id, || {
            self.runs_dir(&record.key.job)
                .and_then(|_| write_record(path, record))
        })
        .await?;
        self.prune(&record.key.job)
    }
}

/// Run `write` until it succeeds (a full disk may free up), doubling the
/// wait; a stop request ends the retrying (the caller says it is not
/// written) instead of the process.
pub(super) async fn until_written(
    what: &str,
    job: &str,
    run_id: &str,
    mut write: impl FnMut() -> Result<()>,
) -> Result<()> {
    let mut stop = Signals::listen(&[Sig::Term, Sig::Int]).unwrap_or_default();
    let mut wait = RECORD_RETRY_FIRST;
    let mut failures = 0u32;
    loop {
        let e = match write() {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(
                        job,
                        run_id,
                        failures,
                        "{what} written after {failures} failed attempt(s)"
                    );
                }
                return Ok(());
            }
            Err(e) => e,
        };
        failures += 1;
        if failures == 1 {
            tracing::error!(
                job,
                run_id,
                "could not write the {what} ({e}); trying again until it is written"
            );
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.next() => return Err(e),
        }
        wait = (wait * 2).min(RECORD_RETRY_MAX);
    }
}
