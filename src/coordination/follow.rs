//! Following a run's output while it goes on (`bgsched logs -f`, the
//! API's `?follow=true`): from the live file a standalone supervisor
//! writes, or from what a cluster run's supervisor publishes while it is
//! followed; the end comes from the run's record, so nothing printed is
//! lost however the two meet.

use super::{Backend, HistoryReader, Outcome, Result, RunRecord};
use std::time::{Duration, Instant};

/// How long a run that is not recorded yet (just accepted) is waited for.
const NOT_YET_FOR: Duration = Duration::from_secs(30);

/// What a follower has printed: the offset of the next byte.
struct Seen {
    next: u64,
}

impl Seen {
    /// Print the part of `text` (starting at offset `start`) not printed
    /// yet. False once the reader has gone away.
    fn take(&mut self, start: u64, text: &str, emit: &mut impl FnMut(&str) -> bool) -> bool {
        let end = start + text.len() as u64;
        if end <= self.next {
            return true;
        }
        if start > self.next {
            if !emit(&format!(
                "\n[bgsched: {} bytes of output not kept]\n",
                start - self.next
            )) {
                return false;
            }
            self.next = start;
        }
        let skip = (self.next - start) as usize;
        self.next = end;
        emit(&String::from_utf8_lossy(&text.as_bytes()[skip..]))
    }

    /// The end of a finished run, from its record.
    fn finish(&mut self, rec: &RunRecord, emit: &mut impl FnMut(&str) -> bool) {
        let tail = &rec.output_tail;
        match rec.output_bytes {
            Some(total) => {
                self.take(total.saturating_sub(tail.len() as u64), tail, emit);
            }
            None if self.next == 0 => {
                emit(tail);
            }
            None => {}
        }
    }
}

impl Backend {
    /// Pass the output of run `run_id` of `job` to `emit` as it comes,
    /// until the run has ended or `emit` says its reader is gone; returns
    /// the run's final record (None if it was never recorded, or the
    /// reader went first).
    pub async fn follow_output(
        &self,
        job: &str,
        run_id: &str,
        mut emit: impl FnMut(&str) -> bool,
    ) -> Result<Option<RunRecord>> {
        let mut seen = Seen { next: 0 };
        let _following = match self {
            Backend::Cluster(e) => Some(e.follow(run_id).await?),
            Backend::Standalone(_) => None,
        };
        let began = Instant::now();
        loop {
            // Asked with nothing to say: is the reader still there?
            if !emit("") {
                return Ok(None);
            }
            let rec = self.find_run(&[job], run_id).await?;
            match self {
                Backend::Standalone(s) => {
                    if let Ok(bytes) = std::fs::read(s.live_path(job, run_id)) {
                        let from = (seen.next as usize).min(bytes.len());
                        let new = &bytes[from..];
                        // Whole characters only; a half-written one comes next time.
                        let whole = match std::str::from_utf8(new) {
                            Ok(s) => s.len(),
                            Err(e) => e.valid_up_to(),
                        };
                        let text = String::from_utf8_lossy(&new[..whole]).into_owned();
                        if !seen.take(seen.next, &text, &mut emit) {
                            return Ok(None);
                        }
                    }
                }
                Backend::Cluster(e) => {
                    for (start, text) in e.output_since(run_id, seen.next).await? {
                        if !seen.take(start, &text, &mut emit) {
                            return Ok(None);
                        }
                    }
                }
            }
            match rec {
                Some(r) if r.outcome != Outcome::Running => {
                    seen.finish(&r, &mut emit);
                    return Ok(Some(r));
                }
                None if began.elapsed() > NOT_YET_FOR => return Ok(None),
                _ => tokio::time::sleep(super::etcd::FOLLOW_POLL).await,
            }
        }
    }
}
