//! `bgsched cancel <run-id>`: stop a running run and see it recorded
//! `cancelled`, from any machine in a cluster; a run at a later time is
//! cancelled before it starts.

use super::context::{instance_id, load_config, open_backend, run_id_arg, unknown_run};
use super::trigger::summary;
use super::{Cli, CliError};
use crate::coordination::{Cancel, HistoryReader, Outcome, RunRecord};
use std::time::{Duration, Instant};

/// Beyond the job's `kill_grace`: the supervisor's own reaction and the
/// record's write.
const RECORD_SLACK: Duration = Duration::from_secs(30);

pub async fn cancel(cli: &Cli, given: &str, no_wait: bool) -> Result<(), CliError> {
    let config = load_config(cli)?;
    let run_id = run_id_arg(given)?;
    let jobs: Vec<&str> = config.jobs.keys().map(String::as_str).collect();
    let backend = open_backend(cli, &config).await?;
    let by = format!("bgsched cancel on {}", instance_id(None));
    let rec = match backend.find_run(&jobs, &run_id).await? {
        Some(rec) => rec,
        None => {
            // A run at a later time: taken away before its time, it is
            // recorded cancelled at once.
            let scheduled = backend.scheduled_runs().await?;
            if !scheduled.iter().any(|r| r.run_id == run_id) {
                return Err(unknown_run(&run_id));
            }
            match backend
                .cancel_scheduled(&run_id, &by, &instance_id(None))
                .await?
            {
                Some(rec) => {
                    eprintln!("bgsched: {}", summary(&rec));
                    return Ok(());
                }
                // Its time came meanwhile.
                None => backend.find_run(&jobs, &run_id).await?.ok_or_else(|| {
                    CliError::Other(anyhow::anyhow!(
                        "run {run_id} is starting; try again shortly"
                    ))
                })?,
            }
        }
    };
    let ended = |rec: &RunRecord| {
        CliError::Other(anyhow::anyhow!(
            "run {run_id} of job \"{}\" already ended: {}",
            rec.key.job,
            rec.outcome
        ))
    };
    if rec.outcome != Outcome::Running {
        return Err(ended(&rec));
    }
    if backend.cancel(&rec.key.job, &run_id, &by).await? == Cancel::NotRunning {
        return Err(ended(&rec));
    }
    if no_wait {
        eprintln!(
            "bgsched: cancel of run {run_id} of \"{}\" asked",
            rec.key.job
        );
        return Ok(());
    }
    let grace = config
        .jobs
        .get(&rec.key.job)
        .map_or(Duration::ZERO, |j| j.kill_grace);
    let deadline = Instant::now() + grace + RECORD_SLACK;
    loop {
        let now = backend.find_run(&[&rec.key.job], &run_id).await?;
        match now {
            Some(r) if r.outcome == Outcome::Cancelled => {
                eprintln!("bgsched: {}", summary(&r));
                return Ok(());
            }
            Some(r) if r.outcome != Outcome::Running => {
                return Err(CliError::Other(anyhow::anyhow!(
                    "{} before the cancel took effect",
                    summary(&r)
                )))
            }
            _ if Instant::now() >= deadline => {
                return Err(CliError::Other(anyhow::anyhow!(
                    "cancel of run {run_id} asked, but it was not recorded ended within {}",
                    humantime::format_duration(grace + RECORD_SLACK)
                )))
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
