//! The state files: reading them, and setting aside the ones that are
//! corrupt so the rest can be used.

use super::*;
use crate::model::RunKey;

/// Where set-aside files are counted.
#[derive(Clone)]
pub(super) struct Repair(pub(super) Arc<Metrics>);

/// One history file, read.
pub(super) enum Loaded {
    Missing,
    Record(RunRecord),
    /// Not readable as a record: the entry that stands for it.
    Unreadable(RunRecord),
}

/// A state file other than a run record, read.
pub(super) enum StateFile<T> {
    Missing,
    Ok(T),
    /// Why it is not what it should be, in the words every reader uses
    /// (the scheduler's log, `list`, `history`).
    Corrupt(String),
}

/// A job's `last_tick`: the newest tick fired.
pub(super) fn read_last_tick(path: &Path) -> Result<StateFile<DateTime<Utc>>> {
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
pub(super) fn read_term(path: &Path) -> Result<StateFile<u64>> {
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
pub(super) fn read_leader(path: &Path) -> StateFile<LeaderInfo> {
    match fs::read(path) {
        Ok(bytes) => match serde_json::from_slice::<LeaderInfo>(&bytes) {
            Ok(info) => StateFile::Ok(info),
            Err(e) => StateFile::Corrupt(e.to_string()),
        },
        Err(e) if wrong_kind(&e) => StateFile::Corrupt(e.to_string()),
        Err(_) => StateFile::Missing,
    }
}

/// The entry that stands for an unreadable history file at `path`: its
/// name, its job, its modification time, and why it is unreadable.
pub(super) fn unreadable_entry(job: &str, path: &Path, reason: String) -> RunRecord {
    let when = fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .map(DateTime::<Utc>::from)
        .unwrap_or_else(|_| Utc::now());
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut rec = RunRecord::not_run(
        RunKey::new(job, when, crate::coordination::Trigger::Schedule, ""),
        Outcome::Unreadable,
        reason,
    );
    rec.key.run_id = name.split('.').next().unwrap_or_default().to_string();
    rec.started_at = when;
    rec.ended_at = None;
    rec.duration_ms = None;
    rec
}

/// The name a set-aside file had: `X` for `X.corrupt` or `X.<n>.corrupt`.
pub(super) fn original_name(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(".corrupt")?;
    Some(match stem.rsplit_once('.') {
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => stem,
    })
}

impl std::fmt::Debug for Repair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Repair")
    }
}

impl Standalone {
    /// Deal with a state file that cannot be read as what it should be:
    /// the scheduler sets it aside; anyone else leaves it. Returns how to
    /// describe it and where it is now.
    pub(super) fn corrupt(&self, path: &Path, reason: &str, then: &str) -> (String, PathBuf) {
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
    pub(super) fn set_aside_logged(
        &self,
        path: &Path,
        reason: &str,
        then: &str,
    ) -> (String, PathBuf) {
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
    pub(super) fn load(&self, job: &str, path: &Path) -> Loaded {
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
    pub(super) fn set_aside_entries(&self, job: &str) -> Vec<RunRecord> {
        let job_dir = self.job_dir(job);
        let mut out = Vec::new();
        let places = [
            (job_dir.join("runs"), None),
            (job_dir.clone(), None),
            (self.root.join("jobs"), Some(job)),
        ];
        for (dir, only) in places {
            // The jobs directory holds every job's: listing it for each job
            // made `list` of 10,000 jobs take 100 s. A job's directory set
            // aside is named `<job>.corrupt`, or `<job>.<n>.corrupt` once
            // that is taken (`set_aside` fills the first free name), so it
            // is listed only when one of the first two names is there.
            if let Some(job) = only {
                let first = [format!("{job}.corrupt"), format!("{job}.2.corrupt")];
                if !first
                    .iter()
                    .any(|n| fs::symlink_metadata(dir.join(n)).is_ok())
                {
                    continue;
                }
            }
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
    pub(super) fn clear_way(&self, path: &Path) {
        if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
            self.set_aside_logged(path, "a directory where a file belongs", "");
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

    /// The job's `last_tick` as a history entry when it cannot be read:
    /// read-only commands leave it in place, so they must show it there.
    pub(super) fn corrupt_last_tick_entry(&self, job: &str) -> Result<Option<RunRecord>> {
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
}
