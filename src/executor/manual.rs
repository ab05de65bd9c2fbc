//! A manual run started on this machine (standalone `trigger`, the API in
//! a standalone `bgsched run`): the job's overlap hold taken here, the
//! skip of a refused run recorded, and the spec its supervisor runs.

use super::RunSpec;
use crate::config::{Group, Job};
use crate::coordination::{
    manual_tick, ClaimRejected, Coordinator, GroupSeat, Hold, Outcome, RunRecord, Seat, Standalone,
    Trigger,
};
use crate::model::{new_run_id, RunKey};
use chrono::{SecondsFormat, Utc};
use std::collections::BTreeMap;

/// Why a manual run does not start.
pub enum Refused {
    /// The job runs and its overlap policy refuses another; recorded as a
    /// skip with this reason.
    Skipped {
        reason: String,
        active: Option<Box<RunRecord>>,
    },
    /// The state directory could not say.
    Backend(ClaimRejected),
}

/// Take `job`'s overlap hold for a manual run by `instance` with `params`
/// (already checked), and the spec of its run.
pub async fn prepare(
    state: &Standalone,
    job: &Job,
    group: Option<&Group>,
    instance: &str,
    params: BTreeMap<String, String>,
) -> Result<(RunSpec, Hold, Option<Seat>), Refused> {
    let now = manual_tick(Utc::now());
    let run_id = new_run_id();
    let (hold, turn, seat) = match state.overlap_hold(&job.name, &run_id, job.overlap, group) {
        Ok(held) => held,
        Err(rejected) if rejected.is_skip() => {
            let active = match &rejected {
                ClaimRejected::StillRunning(active) => active.clone(),
                _ => None,
            };
            let reason = match &rejected {
                ClaimRejected::StillRunning(_) => skip_reason(active.as_deref()),
                other => other.to_string(),
            };
            let mut rec = RunRecord::not_run(
                RunKey::new(&job.name, now, Trigger::Manual, instance),
                Outcome::Skipped,
                reason.clone(),
            );
            rec.key.term = 0;
            if let Err(e) = state.record_until_written(&rec).await {
                tracing::error!(job = %job.name, "could not record the skip: {e}");
            }
            return Err(Refused::Skipped { reason, active });
        }
        Err(e) => return Err(Refused::Backend(e)),
    };
    let mut spec = RunSpec::new(job, run_id, now, Trigger::Manual, state.backend_spec());
    spec.key.instance = instance.to_string();
    spec.key.term = state
        .leader()
        .map_err(|e| Refused::Backend(ClaimRejected::Backend(e)))?
        .map_or(0, |l| l.term);
    spec.turn = turn;
    spec.params = params;
    spec.group = group.map(|g| GroupSeat {
        group: g.name.clone(),
        limit: g.limit,
        index: seat.as_ref().map(|s| s.index),
    });
    Ok((spec, hold, seat))
}

/// "already running since … on instance … (run …, pid …)".
pub fn skip_reason(active: Option<&RunRecord>) -> String {
    match active {
        Some(r) => format!(
            "already running since {} on instance {} (run {}{})",
            r.started_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            r.key.instance,
            r.key.run_id,
            r.pid.map(|p| format!(", pid {p}")).unwrap_or_default()
        ),
        None => "already running (its run is just starting)".to_string(),
    }
}
