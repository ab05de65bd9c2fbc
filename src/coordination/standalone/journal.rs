//! Claims made durable together. A claim's tick must be on disk before its
//! run starts (a tick never fires twice, even across a power loss), and an
//! fsync per claim makes 1,000 claims due together take a quarter of a
//! second. So the claims in flight at once share one: each appends a line
//! `<tick> <job as a JSON string>` to `<state>/claims.journal`, and whichever
//! claim finds no write under way writes every line queued so far with one
//! `fdatasync` (group commit). Then each claim moves its job's `last_tick`
//! (renamed into place, not synced: the journal holds the tick until it
//! is) on its own thread: that is a file created per claim, and one writer
//! creating 50 in a row took 15 ms of every tick with 50 jobs due.
//!
//! Claims of one tick reach the journal a few milliseconds apart (each on a
//! blocking thread of its own), and a writer that took only those already
//! queued wrote them in several batches, each waiting for the disk behind
//! the previous one: with 50 jobs due together, the last claim returned
//! 55 ms after the first. So a claim counts as arriving from the moment the
//! scheduler makes it ([`Arrival`]) until it is queued here. Of a tick's
//! claims (the backend's `prepare` says a tick is next), the first is
//! written at once, so one job's start waits for nobody; the next writer
//! waits until no claim is arriving, or [`LINGER`] at most.
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

/// The longest a writer waits for the rest of the claims it expects.
const LINGER: std::time::Duration = std::time::Duration::from_millis(5);

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
    /// Claims made and not yet queued (see [`Arrival`]).
    arriving: usize,
    /// Whether the first claim since the last `claims_ahead` went out.
    first_written: bool,
    /// [`LINGER`], unless a test needs it longer.
    linger: Option<std::time::Duration>,
    /// Claims whose line is written but whose `last_tick` is not moved
    /// yet; a fold waits for them (it must not empty the journal of a tick
    /// that is not in its `last_tick`).
    moving: usize,
}

/// A claim under way to the journal; dropped without reaching it (the
/// tick was fired already, an error), it stops counting.
pub(super) struct Arrival {
    journal: Option<Arc<Journal>>,
}

impl Arrival {
    /// For a claim that does not journal (a manual run).
    pub(super) fn none() -> Arrival {
        Arrival { journal: None }
    }
}

impl Drop for Arrival {
    fn drop(&mut self) {
        if let Some(journal) = self.journal.take() {
            journal.state.lock().expect("journal lock").arriving -= 1;
            journal.arrived.notify_one();
        }
    }
}

/// The claims journal of one state directory.
#[derive(Default)]
pub(super) struct Journal {
    state: Mutex<State>,
    written: Condvar,
    /// A claim was queued (for a writer waiting for the ones it expects).
    arrived: Condvar,
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

    /// The claims of a new tick follow: the first is written at once.
    pub(super) fn claims_ahead(&self) {
        self.journal
            .state
            .lock()
            .expect("journal lock")
            .first_written = false;
    }

    /// A claim that will reach [`Standalone::commit_tick`] is under way
    /// (counted until it is queued there, or dropped).
    pub(super) fn arrival(&self) -> Arrival {
        self.journal.state.lock().expect("journal lock").arriving += 1;
        Arrival {
            journal: Some(self.journal.clone()),
        }
    }

    /// Make `tick` of `job` durable and move its `last_tick` to it. Called
    /// with the job's last-tick lock held.
    pub(super) fn commit_tick(
        &self,
        job: &str,
        tick: DateTime<Utc>,
        arrival: &mut Arrival,
    ) -> Result<()> {
        let done = Arc::new(OnceLock::new());
        let mut st = self.journal.state.lock().expect("journal lock");
        st.queue.push(Queued {
            job: job.to_string(),
            tick,
            done: done.clone(),
        });
        if arrival.journal.take().is_some() {
            st.arriving -= 1;
            // A writer may be waiting for this one.
            self.journal.arrived.notify_one();
        }
        loop {
            if let Some(answer) = done.get() {
                if let Err(cause) = answer {
                    return Err(io_err(&self.journal_path())(std::io::Error::other(
                        cause.clone(),
                    )));
                }
                drop(st);
                // A claim whose `last_tick` could not be moved fails alone
                // (its retry finds the tick unclaimed and journals it again).
                let moved = self.move_last_tick(job, tick);
                let mut st = self.journal.state.lock().expect("journal lock");
                st.moving -= 1;
                if st.moving == 0 {
                    self.journal.written.notify_all();
                }
                return moved;
            }
            if st.writing {
                st = self.journal.written.wait(st).expect("journal lock");
                continue;
            }
            st.writing = true;
            let linger_until = std::time::Instant::now() + st.linger.unwrap_or(LINGER);
            while st.first_written && st.arriving > 0 {
                let left = linger_until.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                st = self
                    .journal
                    .arrived
                    .wait_timeout(st, left)
                    .expect("journal lock")
                    .0;
            }
            let batch = std::mem::take(&mut st.queue);
            st.first_written = true;
            let mut file = st.file.take();
            let fold = st.lines >= FOLD_AT;
            if fold {
                while st.moving > 0 {
                    st = self.journal.written.wait(st).expect("journal lock");
                }
            }
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
            let answer = match written {
                Ok(folded) => {
                    if folded {
                        st.lines = 0;
                    }
                    st.lines += batch.len();
                    st.unsynced.extend(batch.iter().map(|q| q.job.clone()));
                    st.moving += batch.len();
                    Ok(())
                }
                Err(e) => {
                    // Whatever was to be folded is folded next time.
                    st.unsynced.extend(unsynced);
                    Err(e.to_string())
                }
            };
            for q in &batch {
                let _ = q.done.set(answer.clone());
            }
            self.journal.written.notify_all();
        }
    }

    /// Fold (if `unsynced` is not empty) and append the batch with one
    /// `fdatasync`. Returns whether it folded.
    fn write_batch(
        &self,
        file: &mut Option<File>,
        batch: &[Queued],
        unsynced: &HashSet<String>,
    ) -> std::io::Result<bool> {
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
        Ok(folded)
    }

    /// Replace `job`'s `last_tick` with `tick`, not synced (the journal
    /// holds the tick until a fold syncs it).
    fn move_last_tick(&self, job: &str, tick: DateTime<Utc>) -> Result<()> {
        let last = self.job_dir(job).join("last_tick");
        atomic_write(&last, tick.to_rfc3339().as_bytes(), false)
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
                self.move_last_tick(job, *tick)?;
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
                    state.commit_tick(&job, tick, &mut Arrival::none())
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
    fn of_a_ticks_claims_the_first_goes_out_alone_then_all_the_rest_together() {
        let dir = tempfile::tempdir().unwrap();
        let state = Standalone::open(dir.path(), 10).unwrap();
        let tick: DateTime<Utc> = "2026-12-01T10:00:00Z".parse().unwrap();
        // Long enough that however slowly the claims below arrive on a busy
        // machine, the writer waits for all of them.
        state.journal.state.lock().unwrap().linger = Some(std::time::Duration::from_secs(60));
        state.claims_ahead();
        // As the scheduler does: all eight are made at once, then reach
        // the journal one by one.
        let mut arrivals: Vec<Arrival> = (0..8).map(|_| state.arrival()).collect();
        let claim = |i: usize, mut arrival: Arrival| {
            let state = state.clone();
            std::thread::spawn(move || {
                let job = format!("job {i}");
                state.ensure_dir(&state.job_dir(&job)).unwrap();
                state.commit_tick(&job, tick, &mut arrival)
            })
        };
        claim(0, arrivals.remove(0)).join().unwrap().unwrap();
        assert_eq!(
            state.journal.state.lock().unwrap().batches,
            1,
            "the first goes out at once"
        );
        // One never comes (its tick was fired already): dropping it ends
        // the wait as its arrival would.
        drop(arrivals.pop());
        // The rest arrive 20 ms apart: without the wait, each would be a
        // batch (and an fsync) of its own.
        let rest: Vec<_> = (1..)
            .zip(arrivals)
            .map(|(i, arrival)| {
                std::thread::sleep(std::time::Duration::from_millis(20));
                claim(i, arrival)
            })
            .collect();
        for c in rest {
            c.join().unwrap().unwrap();
        }
        let st = state.journal.state.lock().unwrap();
        assert_eq!(st.batches, 2, "the other six in one batch");
        assert_eq!((st.arriving, st.moving), (0, 0));
        drop(st);
        for i in 0..7 {
            assert_eq!(
                state.last_fired_sync(&format!("job {i}")).unwrap(),
                Some(tick)
            );
        }
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
        state.commit_tick("b", tick, &mut Arrival::none()).unwrap();
        let ticks = state.journal_ticks();
        assert_eq!(ticks.get("b"), Some(&tick));
        assert_eq!(ticks.len(), 1, "{ticks:?}");
    }
}
