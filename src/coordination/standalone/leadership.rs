//! Leading and claiming through file locks: the run lock, per-job locks,
//! the term, and the last tick of each job.

use super::*;

impl Standalone {
    /// The first path from the state directory down to `dir` that exists
    /// but is not a directory.
    pub(super) fn blocker(&self, dir: &Path) -> Option<PathBuf> {
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
    pub(super) fn open_lock(&self, path: &Path) -> Result<File> {
        match open_lock_file(path) {
            Err(CoordError::Io { ref cause, .. }) if wrong_kind(cause) => {
                self.set_aside_logged(path, "a directory where a lock file belongs", "");
                open_lock_file(path)
            }
            other => other,
        }
    }

    /// The leader file, if it can be read.
    pub(super) fn leader_file(&self) -> Option<LeaderInfo> {
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

    /// The highest term any record on disk was fired under.
    pub(super) fn highest_recorded_term(&self) -> Result<u64> {
        let mut highest = 0;
        for job in self.known_jobs()? {
            for path in self.record_paths(&job)? {
                if let Loaded::Record(rec) = self.load(&job, &path) {
                    highest = highest.max(rec.key.term);
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

    /// Try to take `job`'s run lock: `Ok(None)` when a run holds it.
    pub fn try_run_lock(&self, job: &str) -> Result<Option<OwnedFd>> {
        self.try_job_lock(job, "run.lock")
    }

    pub(super) fn try_job_lock(&self, job: &str, name: &str) -> Result<Option<OwnedFd>> {
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

    /// What a new run `run_id` of `job` holds under its overlap policy and
    /// its group's limit, and when it may start; or why it may not run.
    pub fn overlap_hold(
        &self,
        job: &str,
        run_id: &str,
        overlap: Overlap,
        group: Option<&crate::config::Group>,
    ) -> Result<(Hold, Turn, Option<Seat>), ClaimRejected> {
        let (hold, turn) = self.own_hold(job, overlap)?;
        let Some(group) = group.filter(|_| turn == Turn::Now) else {
            // A queued run takes its group place after its turn.
            return Ok((hold, turn, None));
        };
        if let Some(seat) = self.try_seat(group, job, run_id)? {
            return Ok((hold, turn, Some(seat)));
        }
        match overlap {
            // It waits for a place once it has its turn (it holds the
            // job's own lock meanwhile, so the job's next ticks skip).
            Overlap::Queue | Overlap::Replace => Ok((hold, turn, None)),
            Overlap::Skip | Overlap::Allow => Err(ClaimRejected::GroupFull {
                group: group.name.clone(),
                holders: self.seat_holders(group),
            }),
        }
    }

    fn own_hold(&self, job: &str, overlap: Overlap) -> Result<(Hold, Turn), ClaimRejected> {
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

    /// The lock file of place `index` of `group`.
    pub(super) fn seat_path(&self, group: &str, index: u32) -> PathBuf {
        self.root
            .join("groups")
            .join(group)
            .join(format!("{index}.lock"))
    }

    /// Take a free place of `group` for run `run_id` of `job`, if one is:
    /// its lock, with the run named in the file for whoever finds the
    /// group full.
    pub(super) fn try_seat(
        &self,
        group: &crate::config::Group,
        job: &str,
        run_id: &str,
    ) -> Result<Option<Seat>> {
        let dir = self.root.join("groups").join(&group.name);
        self.ensure_dir(&dir)?;
        for index in 0..group.limit {
            let path = self.seat_path(&group.name, index);
            let file = self.open_lock(&path)?;
            if try_lock(&file).map_err(io_err(&path))? {
                name_holder(&file, job, run_id);
                return Ok(Some(Seat {
                    index,
                    lock: Some(file.into()),
                }));
            }
        }
        Ok(None)
    }

    /// The active runs holding `group`'s places, as far as their files say.
    pub(super) fn seat_holders(&self, group: &crate::config::Group) -> Vec<RunRecord> {
        let mut holders = Vec::new();
        for index in 0..group.limit {
            let path = self.seat_path(&group.name, index);
            let Ok(text) = fs::read_to_string(&path) else {
                continue;
            };
            let Some((job, run_id)) = text.trim().split_once(' ') else {
                continue;
            };
            let found = self
                .active_runs(job)
                .ok()
                .and_then(|a| a.into_iter().find(|r| r.key.run_id == run_id));
            // A run claimed a moment ago has no record yet: it is named by
            // its place's file, since it was written.
            let holder = found.unwrap_or_else(|| {
                let since = fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .map_or_else(|_| Utc::now(), DateTime::<Utc>::from);
                let mut key =
                    crate::model::RunKey::new(job, since, crate::model::Trigger::Schedule, "");
                key.run_id = run_id.to_string();
                let mut r = RunRecord::not_run(key, Outcome::Running, String::new());
                r.started_at = since;
                r
            });
            holders.push(holder);
        }
        holders
    }

    pub(super) fn claim_sync(
        &self,
        term: u64,
        req: &ClaimRequest<'_>,
        arrival: &mut super::journal::Arrival,
    ) -> Result<Claim, ClaimRejected> {
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
            // later start catches it up. Made durable before anything runs
            // (a tick must not fire twice even across a power loss), with
            // the claims in flight beside it.
            self.commit_tick(req.job, req.tick, arrival)?;
        }
        if let Some(id) = req.request {
            // Taken whatever follows (a skip included), as a tick is.
            if !self.take_request(id)? {
                return Err(ClaimRejected::RequestGone(id.to_string()));
            }
        }
        let run_id = req.request.map_or_else(new_run_id, str::to_string);
        let (hold, turn, seat) = self.overlap_hold(req.job, &run_id, req.overlap, req.group)?;
        Ok(Claim {
            run_id,
            term,
            hold,
            turn,
            group: super::super::GroupSeat::of(req.group, seat.as_ref()),
            seat,
            placed_on: None,
        })
    }

    pub(super) fn last_lock(&self, job: &str) -> Arc<std::sync::Mutex<()>> {
        let mut locks = self.last_locks.lock().expect("last tick locks");
        locks.entry(job.to_string()).or_default().clone()
    }

    pub(super) fn last_fired_sync(&self, job: &str) -> Result<Option<DateTime<Utc>>> {
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

    /// The last term handed out on this state directory. The fencing token
    /// must never go down, so when the term file is missing or corrupt the
    /// term is recovered from everything else that carries one.
    pub(super) fn last_term(&self) -> Result<u64> {
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

    pub(super) fn lead_with(&self, file: File, instance: &str) -> Result<Leadership> {
        // Ticks the last leader claimed whose `last_tick` a crash undid.
        self.fold_journal()?;
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

/// Write who holds a group place into its (locked) file. Best effort: it
/// only feeds the message of a claim that finds the group full.
pub(super) fn name_holder(file: &File, job: &str, run_id: &str) {
    use std::io::{Seek, Write};
    let mut f = file;
    let _ = f
        .set_len(0)
        .and_then(|()| f.seek(std::io::SeekFrom::Start(0)))
        .and_then(|_| f.write_all(format!("{job} {run_id}\n").as_bytes()));
}
