//! Running one job: a per-run supervisor that owns the child's process group,
//! its output, its timeout and its record.
//!
//! The scheduler never runs jobs itself. For every fire it starts a
//! supervisor (`bgsched` re-executed with the hidden `__supervise` command)
//! and hands it the run's [`RunSpec`] and the claim's lock. From then on the
//! run does not depend on the scheduler: if the scheduler is killed or
//! paused, the supervisor still enforces the timeout, keeps the job's run
//! lock (so `overlap = "skip"` holds) and records the outcome.
//! `bgsched trigger` runs the same supervisor code in the foreground.

mod attempt;
pub mod contain;
pub mod entry;
mod hooks;
pub mod manual;
pub mod output;
pub mod report;
mod spec;
mod supervisors;
pub mod waiting;

pub use attempt::*;
pub use entry::SUPERVISE_COMMAND;
pub use hooks::*;
pub use spec::*;
pub use supervisors::{watch as watch_supervisor, Reaped, Supervisors};
pub use waiting::WaitingSupervisors;

use crate::config::{Job, Overlap, Program};
use crate::coordination::{
    BackendSpec, GroupSeat, Hold, Outcome, RunRecord, RunRecorder, Seat, Trigger, Turn,
};
use crate::model::{duration_ms, RunKey};
use crate::signals::{Sig, Signals};
use chrono::{DateTime, Utc};
use output::{pump, Stream, Tail};
use rustix::process::{kill_process_group, Pid, Signal};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

/// Where a foreground supervisor echoes the job's output (for `trigger`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// Only tracing events (a background supervisor).
    Log,
    /// Copy the job's output lines to this process's stdout instead.
    Terminal,
}

/// Run the job described by `spec` to completion (with its jitter delay
/// and retries) and record it through `recorder`. `hold` (the claim's lock)
/// is kept until the record is final.
pub async fn supervise<R: RunRecorder>(
    spec: &RunSpec,
    recorder: &mut R,
    hold: Option<OwnedFd>,
    seat: Option<OwnedFd>,
    echo: Echo,
) -> Supervised {
    let mut signals = stop_signals();
    if spec.key.trigger == Trigger::After && spec.turn == Turn::Now {
        let marked = recorder
            .taken_over(&spec.record(Outcome::Running, Utc::now()))
            .await;
        if let Err(e) = marked {
            // Not started rather than perhaps run twice.
            let reason = format!("not started: could not mark the run taken over ({e})");
            return not_started(spec, recorder, reason, false).await;
        }
    }
    if let Some(group) = &spec.group {
        recorder.seated(group, seat);
    }
    contain::become_subreaper();
    if !spec.delay.is_zero() {
        tracing::info!(job = %spec.key.job, run_id = %spec.key.run_id, delay_ms = spec.delay.as_millis() as u64, "jitter: starting later");
        let mut stops = recorder.replacements();
        let stopped = tokio::select! {
            () = tokio::time::sleep(spec.delay) => None,
            why = stop_requested(&mut signals) => Some(match why {
                StopReason::Cancelled => cancelled(recorder.cancelled_by(), "during the jitter delay: not started"),
                why => format!("supervisor {} during the jitter delay: not started", why.word()),
            }),
            why = attempt::replaced(&mut stops) => Some(format!("{why} during the jitter delay: not started")),
            why = recorder.fenced() => Some(why),
        };
        if let Some(reason) = stopped {
            let mut rec = spec.unstarted(reason);
            if rec
                .reason
                .as_deref()
                .is_some_and(|r| r.starts_with(crate::coordination::CANCELLED))
            {
                rec.outcome = Outcome::Cancelled;
            }
            let written = finish(spec, &mut rec, recorder).await;
            return Supervised {
                record: rec,
                written,
                interrupted: true,
            };
        }
    }
    let hold = if spec.turn == Turn::Now {
        hold
    } else {
        let waiting = spec.record(Outcome::Running, Utc::now());
        tracing::info!(job = %spec.key.job, run_id = %spec.key.run_id, "waiting for the active run to end");
        let stopped = tokio::select! {
            taken = recorder.take_turn(&spec.turn, &waiting) => taken.err().map(|e| (format!("could not take its turn: {e}"), false)),
            why = stop_requested(&mut signals) => Some((format!("supervisor {} while waiting for the active run: not started", why.word()), true)),
        };
        if let Some((reason, interrupted)) = stopped {
            return not_started(spec, recorder, reason, interrupted).await;
        }
        // The waiting place is free for the next run; the run lock is the
        // recorder's now.
        drop(hold);
        None
    };
    if let Some(group) = spec.group.as_ref().filter(|g| g.index.is_none()) {
        tracing::info!(job = %spec.key.job, run_id = %spec.key.run_id, group = %group.group, "waiting for a place in its group");
        let waiting = spec.record(Outcome::Running, Utc::now());
        let stopped = tokio::select! {
            taken = recorder.take_seat(group, &waiting) => taken.err().map(|e| (format!("could not take a place in group {}: {e}", group.group), false)),
            why = stop_requested(&mut signals) => Some((format!("supervisor {} while waiting for a place in group {}: not started", why.word(), group.group), true)),
        };
        if let Some((reason, interrupted)) = stopped {
            return not_started(spec, recorder, reason, interrupted).await;
        }
    }
    let params = match ParamsFile::write(spec) {
        Ok(file) => file,
        Err(e) => {
            let mut rec = spec.unstarted(format!("could not write its parameters file: {e}"));
            let written = finish(spec, &mut rec, recorder).await;
            return Supervised {
                record: rec,
                written,
                interrupted: false,
            };
        }
    };
    let mut attempt = spec.first_attempt.max(1);
    // Output offsets run on across attempts (see `Tail::with_live`).
    let mut printed = 0;
    let (rec, stopped_because) = loop {
        let (mut rec, stopped_because) =
            run_attempt(spec, attempt, recorder, &mut signals, echo, printed).await;
        printed = rec.output_bytes.unwrap_or(printed);
        let failed = matches!(
            rec.outcome,
            Outcome::Failed | Outcome::TimedOut | Outcome::Killed
        );
        // Only the job's own failure is retried, not a stop we asked for.
        let ours = matches!(stopped_because, Some(why) if why != StopReason::Timeout);
        if !failed || ours || attempt > spec.retries {
            break (rec, stopped_because);
        }
        let wait = retry_backoff(spec.retry_backoff, spec.retry_backoff_max, attempt);
        tracing::warn!(
            job = %spec.key.job, run_id = %spec.key.run_id, attempt, outcome = %rec.outcome,
            retry_in_ms = wait.as_millis() as u64, "attempt failed: retrying"
        );
        let mut stops = recorder.replacements();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            // Cancelled (or replaced) while waiting: not retried.
            why = attempt::replaced(&mut stops) => {
                let because = if why.starts_with(crate::coordination::CANCELLED) {
                    rec.outcome = Outcome::Cancelled;
                    StopReason::Cancelled
                } else {
                    StopReason::Replaced
                };
                rec.reason = Some(format!("{why} before retry {attempt}: not retried"));
                break (rec, Some(because));
            }
            // Stopped while waiting: the failed attempt is the run's result.
            why = stop_requested(&mut signals) => {
                if why == StopReason::Cancelled {
                    rec.outcome = Outcome::Cancelled;
                    rec.reason = Some(cancelled(recorder.cancelled_by(), &format!("before retry {attempt}: not retried")));
                } else {
                    rec.reason = Some(format!("{}; not retried: supervisor {}", rec.reason.unwrap_or_else(|| rec.outcome.to_string()), why.word()));
                }
                break (rec, Some(why));
            }
            why = recorder.fenced() => {
                rec.reason = Some(format!("{}; not retried: {why}", rec.reason.unwrap_or_else(|| rec.outcome.to_string())));
                break (rec, Some(StopReason::Fenced));
            }
        }
        // The failed attempt becomes an entry of its own; the run's id (and
        // its running mark) carries on with the next attempt.
        rec.key.run_id = crate::model::new_run_id();
        rec.retried = true;
        if let Err(e) = recorder.attempt_failed(&rec).await {
            tracing::error!(job = %spec.key.job, run_id = %spec.key.run_id, attempt, "could not record the failed attempt: {e}");
        }
        attempt += 1;
    };
    drop(params);
    let mut rec = rec;
    let written = finish(spec, &mut rec, recorder).await;
    drop(hold);
    tracing::info!(
        job = %spec.key.job, run_id = %spec.key.run_id, outcome = %rec.outcome,
        exit_code = rec.exit_code, signal = rec.signal, duration_ms = rec.duration_ms,
        attempt = rec.attempt, "run finished"
    );
    let interrupted = stopped_because.is_some_and(StopReason::is_interruption);
    if !interrupted && stopped_because != Some(StopReason::Replaced) && rec.outcome.is_failure() {
        if let Some(hook) = &spec.on_failure {
            run_hook(hook, spec, &rec).await;
        }
    }
    Supervised {
        record: rec,
        written,
        interrupted,
    }
}

/// Names the JSON file that holds all of a run's parameters.
pub const PARAMS_FILE_ENV: &str = "BGSCHED_PARAMS_FILE";

/// Where a run's parameters file lives while the run does.
fn params_path(spec: &RunSpec) -> PathBuf {
    std::env::temp_dir().join(format!("bgsched-params-{}.json", spec.key.run_id))
}

/// A run's parameters as one JSON object, readable by the job only
/// (mode 0600), removed when the run ends.
struct ParamsFile(Option<PathBuf>);

impl ParamsFile {
    fn write(spec: &RunSpec) -> std::io::Result<ParamsFile> {
        use std::os::unix::fs::OpenOptionsExt;
        if spec.params.is_empty() {
            return Ok(ParamsFile(None));
        }
        let path = params_path(spec);
        let body = serde_json::to_vec_pretty(&spec.params).expect("strings serialize");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            // Never through a name someone else put there first.
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(&body)?;
        Ok(ParamsFile(Some(path)))
    }
}

impl Drop for ParamsFile {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The reason of a run cancelled `when` (and what became of it), as the
/// canceller said who it is.
fn cancelled(by: Option<String>, when: &str) -> String {
    format!(
        "{} {when}",
        by.unwrap_or_else(|| crate::coordination::CANCELLED.to_string())
    )
}

/// The wait before retry number `retry` (1 for the first): `first`,
/// doubling each time, at most `max`.
pub fn retry_backoff(first: Duration, max: Duration, retry: u32) -> Duration {
    let factor = 2u32.saturating_pow(retry.saturating_sub(1));
    first.checked_mul(factor).unwrap_or(max).min(max)
}

/// Write the final record; whether it was written.
/// The end of a run stopped before its job started: recorded `start_failed`.
async fn not_started<R: RunRecorder>(
    spec: &RunSpec,
    recorder: &mut R,
    reason: String,
    interrupted: bool,
) -> Supervised {
    tracing::warn!(job = %spec.key.job, run_id = %spec.key.run_id, "{reason}");
    let mut rec = spec.unstarted(reason);
    let written = finish(spec, &mut rec, recorder).await;
    Supervised {
        record: rec,
        written,
        interrupted,
    }
}

async fn finish<R: RunRecorder>(spec: &RunSpec, rec: &mut RunRecord, recorder: &mut R) -> bool {
    let ended = *rec.ended_at.get_or_insert_with(Utc::now);
    rec.duration_ms = Some(duration_ms(rec.started_at, ended));
    // The runs this end starts go out with the record (see `after`).
    let next = dependent_runs(spec, rec);
    let marks: Vec<String> = spec
        .dependents
        .iter()
        .filter(|d| d.all && d.on.matches(rec.outcome))
        .map(|d| d.job.clone())
        .collect();
    if !next.is_empty() || !marks.is_empty() {
        recorder.will_trigger(next, marks);
    }
    match recorder.finished(rec).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(job = %rec.key.job, run_id = %rec.key.run_id, "could not write the run record: {e}");
            false
        }
    }
}

/// The requests for the dependents of `spec`'s run (`after`) that its end,
/// `rec`, starts: one each, its run id chosen here, so that writing them
/// again (a retried record) asks for the same runs.
fn dependent_runs(spec: &RunSpec, rec: &RunRecord) -> Vec<crate::coordination::TriggerRequest> {
    let upstream = crate::model::Upstream {
        job: spec.key.job.clone(),
        run_id: spec.key.run_id.clone(),
        outcome: rec.outcome,
    };
    spec.dependents
        .iter()
        .filter(|d| !d.all && d.on.matches(rec.outcome))
        .map(|d| {
            let why = format!("after {} run {}", spec.key.job, spec.key.run_id);
            crate::coordination::TriggerRequest::after(&d.job, why, Some(upstream.clone()))
        })
        .collect()
}
