//! Claims made durable together. A claim's tick must be on disk before its
//! run starts (a tick never fires twice, even across a power loss), and an
//! fsync per claim makes 1,000 claims due together take a quarter of a
//! second. So the claims in flight at once share one: each appends a line
//! `<tick> <job as a JSON string>` to `<state>/claims.journal`, and whichever
//! claim finds no write under way writes every line queued so far with one
//! `fdatasync` (group commit), then moves each job's `last_tick` (renamed
//! into place, not synced: the journal holds the tick until it is).
//!
//! The journal is folded into the `last_tick` files (those synced, then the
//! journal emptied) when a scheduler starts leading and once it holds
//! [`FOLD_AT`] lines; a line torn by a crash is ignored (its claim never
//! returned, so nothing ran for it).

use super::*;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::{Condvar, Mutex, OnceLock};

/// Lines after which the journal is folded into the `last_tick` files.
const FOLD_AT: usize = 4096;

/// One claim's line, and its answer once written.
struct Queued {
    job: String,
    tick: DateTime<Utc>,
    done: Arc<OnceLock<std::result::Result<(), String>>>,
}

#[derive(Default)]
struct State {
    file: Option<File>,
    queue: Vec<Queued>,
    writing: bool,
    lines: usize,
    /// Jobs with a line in the journal (whose `last_tick` is not synced).
    unsynced: HashSet<String>,
    /// Batches written (each one `fdatasync`).
    batches: u64,
}

/// The claims journal of one state directory.
#[derive(Default)]
pub(super) struct Journal {
    state: Mutex<State>,
    written: Condvar,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Journal")
    }
}

impl Standalone {
    fn journal_path(&self) -> PathBuf {
        self.root.join("claims.journal")
    }

    /// Make `tick` of `job` durable and move its `last_tick` to it. Called
    /// with the job's last-tick lock held.
    pub(super) fn commit_tick(&self, job: &str, tick: DateTime<Utc>) -> Result<()> {
        let done = Arc::new(OnceLock::new());
        let mut st = self.journal.state.lock().expect("journal lock");
        st.queue.push(Queued {
            job: job.to_string(),
            tick,
            done: done.clone(),
        });
        loop {
            if let Some(answer) = done.get() {
                return answer
                    .clone()
                    .map_err(|cause| io_err(&self.journal_path())(std::io::Error::other(cause)));
            }
            if st.writing {
                st = self.journal.written.wait(st).expect("journal lock");
                continue;
            }
            st.writing = true;
            let batch = std::mem::take(&mut st.queue);
            let mut file = st.file.take();
            let fold = st.lines >= FOLD_AT;
            let unsynced = if fold {
                std::mem::take(&mut st.unsynced)
            } else {
                HashSet::new()
            };
            drop(st);
            let written = self.write_batch(&mut file, &batch, &unsynced);
            st = self.journal.state.lock().expect("journal lock");
            st.file = file;
            st.writing = false;
            st.batches += 1;
            let answers = match written {
                Ok((folded, moved)) => {
                    if folded {
                        st.lines = 0;
                    }
                    st.lines += batch.len();
                    st.unsynced.extend(batch.iter().map(|q| q.job.clone()));
                    moved
                }
                Err(e) => {
                    // Whatever was to be folded is folded next time.
                    st.unsynced.extend(unsynced);
                    vec![Err(e.to_string()); batch.len()]
                }
            };
            for (q, answer) in batch.iter().zip(answers) {
                let _ = q.done.set(answer);
            }
            self.journal.written.notify_all();
        }
    }

    /// Fold (if `unsynced` is not empty), append the batch with one
    /// `fdatasync`, then move each job's `last_tick`. Returns whether it
    /// folded, and how each move went.
    fn write_batch(
        &self,
        file: &mut Option<File>,
        batch: &[Queued],
        unsynced: &HashSet<String>,
    ) -> std::io::Result<(bool, Vec<std::result::Result<(), String>>)> {
        let path = self.journal_path();
        let folded = !unsynced.is_empty();
        if folded {
            self.sync_last_ticks(unsynced)?;
            *file = None;
            let f = File::create(&path)?;
            f.sync_all()?;
        }
        let mut lines = String::new();
        let f = match file {
            Some(f) => f,
            None => {
                let mut f = fs::OpenOptions::new()
                    .read(true)
                    .append(true)
                    .create(true)
                    .open(&path)?;
                // After a write that failed half-way (a full disk), the
                // next line must not run on from the torn one.
                if ends_torn(&mut f)? {
                    lines.push('\n');
                }
                file.insert(f)
            }
        };
        for q in batch {
            let job = serde_json::to_string(&q.job).expect("a string serializes");
            lines.push_str(&format!("{} {job}\n", q.tick.to_rfc3339()));
        }
        if let Err(e) = f.write_all(lines.as_bytes()).and_then(|()| f.sync_data()) {
            // Opened again (and checked for a torn line) by the next batch.
            *file = None;
            return Err(e);
        }
        // Each on its own: a claim whose `last_tick` could not be moved
        // fails alone (its retry finds the tick unclaimed and journals it
        // again).
        let moved = batch
            .iter()
            .map(|q| {
                let last = self.job_dir(&q.job).join("last_tick");
                atomic_write(&last, q.tick.to_rfc3339().as_bytes(), false)
                    .map_err(|e| e.to_string())
            })
            .collect();
        Ok((folded, moved))
    }

    /// Sync the `last_tick` files of `jobs` (their renames included).
    fn sync_last_ticks(&self, jobs: &HashSet<String>) -> std::io::Result<()> {
        for job in jobs {
            let dir = self.job_dir(job);
            match File::open(dir.join("last_tick")) {
                Ok(f) => f.sync_all()?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
            File::open(&dir)?.sync_all()?;
        }
        Ok(())
    }

    /// The newest tick per job in the journal; torn or unreadable lines
    /// are passed over.
    fn journal_ticks(&self) -> HashMap<String, DateTime<Utc>> {
        let mut ticks: HashMap<String, DateTime<Utc>> = HashMap::new();
        let Ok(text) = fs::read(self.journal_path()) else {
            return ticks;
        };
        for line in String::from_utf8_lossy(&text).lines() {
            let Some((tick, job)) = line.split_once(' ') else {
                continue;
            };
            let (Ok(tick), Ok(job)) = (
                DateTime::parse_from_rfc3339(tick),
                serde_json::from_str::<String>(job),
            ) else {
                continue;
            };
            let tick = tick.with_timezone(&Utc);
            let newest = ticks.entry(job).or_insert(tick);
            *newest = (*newest).max(tick);
        }
        ticks
    }

    /// At the start of a leadership: move every `last_tick` the journal is
    /// ahead of (a crash lost its rename), sync them all, empty it.
    pub(super) fn fold_journal(&self) -> Result<()> {
        let path = self.journal_path();
        let ticks = self.journal_ticks();
        for (job, tick) in &ticks {
            let lock = self.last_lock(job);
            let _last = lock.lock().expect("last tick lock");
            if self.last_fired_sync(job)?.is_none_or(|last| last < *tick) {
                self.ensure_dir(&self.job_dir(job))?;
                atomic_write(
                    &self.job_dir(job).join("last_tick"),
                    tick.to_rfc3339().as_bytes(),
                    false,
                )?;
            }
        }
        // No claim is in flight: a leadership is only starting.
        let mut st = self.journal.state.lock().expect("journal lock");
        let mut jobs: HashSet<String> = ticks.into_keys().collect();
        jobs.extend(std::mem::take(&mut st.unsynced));
        self.sync_last_ticks(&jobs).map_err(io_err(&path))?;
        if path.exists() {
            st.file = None;
            File::create(&path)
                .and_then(|f| f.sync_all())
                .map_err(io_err(&path))?;
        }
        st.lines = 0;
        Ok(())
    }
}

/// Whether `f` is not empty and does not end with a newline.
fn ends_torn(f: &mut File) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    if f.metadata()?.len() == 0 {
        return Ok(false);
    }
    f.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    f.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_queued_behind_a_write_go_out_together_in_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        let state = Standalone::open(dir.path(), 10).unwrap();
        let tick: DateTime<Utc> = "2026-12-01T10:00:00Z".parse().unwrap();
        // A write under way: the claims arriving meanwhile queue up.
        state.journal.state.lock().unwrap().writing = true;
        let claims: Vec<_> = (0..8)
            .map(|i| {
                let state = state.clone();
                std::thread::spawn(move || {
                    let job = format!("job {i}");
                    state.ensure_dir(&state.job_dir(&job)).unwrap();
                    state.commit_tick(&job, tick)
                })
            })
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while state.journal.state.lock().unwrap().queue.len() < 8 {
            assert!(std::time::Instant::now() < deadline, "claims queued");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        {
            let mut st = state.journal.state.lock().unwrap();
            st.writing = false;
            state.journal.written.notify_all();
        }
        for c in claims {
            c.join().unwrap().unwrap();
        }
        assert_eq!(state.journal.state.lock().unwrap().batches, 1);
        let journal = fs::read_to_string(dir.path().join("claims.journal")).unwrap();
        assert_eq!(journal.lines().count(), 8, "{journal}");
        for i in 0..8 {
            assert_eq!(
                state.last_fired_sync(&format!("job {i}")).unwrap(),
                Some(tick)
            );
        }
        assert_eq!(state.journal_ticks().len(), 8);
    }

    #[test]
    fn a_torn_last_line_is_passed_over_and_the_next_batch_starts_a_new_line() {
        let dir = tempfile::tempdir().unwrap();
        let state = Standalone::open(dir.path(), 10).unwrap();
        let tick: DateTime<Utc> = "2026-12-01T10:00:00Z".parse().unwrap();
        fs::write(
            dir.path().join("claims.journal"),
            "2026-12-01T09:00:00+00:00 \"a",
        )
        .unwrap();
        state.ensure_dir(&state.job_dir("b")).unwrap();
        state.commit_tick("b", tick).unwrap();
        let ticks = state.journal_ticks();
        assert_eq!(ticks.get("b"), Some(&tick));
        assert_eq!(ticks.len(), 1, "{ticks:?}");
    }
}
