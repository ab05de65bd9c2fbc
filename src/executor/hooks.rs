//! The `on_failure` hook: run once a run has failed for good, bounded in
//! time and output.

use super::*;

/// Longest an `on_failure` hook may run before its group is killed.
pub(super) const HOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// Output of the run handed to a hook, at most (environment variables have
/// to stay small).
pub(super) const HOOK_OUTPUT_LIMIT: usize = 4096;

/// Run the job's `on_failure` hook for a finished run, in its own process
/// group, with the run's details in `BGSCHED_*` variables; its output goes
/// to the log.
pub async fn run_hook(hook: &[String], spec: &RunSpec, rec: &RunRecord) {
    let Some((program, args)) = hook.split_first() else {
        return;
    };
    let mut output = rec.output_tail.as_str();
    if output.len() > HOOK_OUTPUT_LIMIT {
        let mut cut = output.len() - HOOK_OUTPUT_LIMIT;
        while !output.is_char_boundary(cut) {
            cut += 1;
        }
        output = &output[cut..];
    }
    let rfc3339 = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut cmd = job_command(program, args, spec);
    cmd.env("BGSCHED_JOB", &rec.key.job)
        .env("BGSCHED_RUN_ID", &rec.key.run_id)
        .env("BGSCHED_OUTCOME", rec.outcome.to_string())
        .env("BGSCHED_SCHEDULED_AT", rfc3339(rec.key.tick))
        .env("BGSCHED_STARTED_AT", rfc3339(rec.started_at))
        .env("BGSCHED_TRIGGER", rec.key.trigger.to_string())
        .env("BGSCHED_INSTANCE", &rec.key.instance)
        .env("BGSCHED_ATTEMPT", rec.attempt.to_string())
        .env(
            "BGSCHED_EXIT_CODE",
            rec.exit_code.map(|c| c.to_string()).unwrap_or_default(),
        )
        .env(
            "BGSCHED_SIGNAL",
            rec.signal.map(|c| c.to_string()).unwrap_or_default(),
        )
        .env(
            "BGSCHED_DURATION_MS",
            rec.duration_ms.unwrap_or(0).to_string(),
        )
        .env("BGSCHED_REASON", rec.reason.as_deref().unwrap_or(""))
        .env("BGSCHED_OUTPUT_TAIL", output);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(job = %rec.key.job, run_id = %rec.key.run_id, "on_failure hook {program} could not start: {e}");
            return;
        }
    };
    let group = child.id().and_then(|p| Pid::from_raw(p as i32));
    match tokio::time::timeout(HOOK_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(out)) => {
            let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
            tracing::info!(job = %rec.key.job, run_id = %rec.key.run_id, status = %out.status, output = %text.trim_end(), "on_failure hook finished");
        }
        Ok(Err(e)) => {
            tracing::error!(job = %rec.key.job, run_id = %rec.key.run_id, "on_failure hook: {e}")
        }
        Err(_) => {
            tracing::error!(job = %rec.key.job, run_id = %rec.key.run_id, "on_failure hook still running after {}s: killed", HOOK_TIMEOUT.as_secs());
        }
    }
    // Whatever the hook left behind goes with it.
    if let Some(g) = group {
        let _ = kill_process_group(g, Signal::KILL);
    }
    contain::kill_descendants().await;
}
