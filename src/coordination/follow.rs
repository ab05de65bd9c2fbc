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
    /// Print the part of `text` (starting at offset `start`) not printed yet.
    fn take(&mut self, start: u64, text: &str, emit: &mut impl FnMut(&str)) {
        let end = start + text.len() as u64;
        if end <= self.next {
            return;
        }
        if start > self.next {
            emit(&format!(
                "\n[bgsched: {} bytes of output not kept]\n",
                start - self.next
            ));
            self.next = start;
        }
        let skip = (self.next - start) as usize;
        emit(&String::from_utf8_lossy(&text.as_bytes()[skip..]));
        self.next = end;
    }

    /// The end of a finished run, from its record.
    fn finish(&mut self, rec: &RunRecord, emit: &mut impl FnMut(&str)) {
        let tail = &rec.output_tail;
        match rec.output_bytes {
            Some(total) => self.take(total.saturating_sub(tail.len() as u64), tail, emit),
            None if self.next == 0 => emit(tail),
            None => {}
        }
    }
}

impl Backend {
    /// Pass the output of run `run_id` of `job` to `emit` as it comes,
    /// until the run has ended; returns its final record (None if it was
    /// never recorded).
    pub async fn follow_output(
        &self,
        job: &str,
        run_id: &str,
        mut emit: impl FnMut(&str),
    ) -> Result<Option<RunRecord>> {
        let mut seen = Seen { next: 0 };
        let _following = match self {
            Backend::Cluster(e) => Some(e.follow(run_id).await?),
            Backend::Standalone(_) => None,
        };
        let began = Instant::now();
        loop {
            let rec = self.find_run(&[job], run_id).await?;
            match self {
                Backend::Standalone(s) => {
                    if let Ok(bytes) = std::fs::read(s.live_path(job, run_id)) {
                        if (bytes.len() as u64) < seen.next {
                            // A retry's attempt starts its file anew.
                            seen.next = 0;
                        }
                        let new = &bytes[seen.next as usize..];
                        // Whole characters only; a half-written one comes next time.
                        let whole = match std::str::from_utf8(new) {
                            Ok(s) => s.len(),
                            Err(e) => e.valid_up_to(),
                        };
                        let text = String::from_utf8_lossy(&new[..whole]).into_owned();
                        seen.take(seen.next, &text, &mut emit);
                    }
                }
                Backend::Cluster(e) => {
                    for (start, text) in e.output_since(run_id, seen.next).await? {
                        seen.take(start, &text, &mut emit);
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
