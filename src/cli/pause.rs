//! `bgsched pause <job>` and `bgsched resume <job>`: hold a job's ticks
//! back, durably, and let them fire again.

use super::context::{find_job, instance_id, load_config, open_backend};
use super::{Cli, CliError};
use crate::coordination::{pause_until, Pause, PauseChange};
use chrono::{SecondsFormat, Utc};

pub async fn pause(
    cli: &Cli,
    name: &str,
    until: Option<&str>,
    no_manual: bool,
) -> Result<(), CliError> {
    let config = load_config(cli)?;
    let job = find_job(&config, name)?;
    let until = until
        .map(|u| pause_until(u, Utc::now()))
        .transpose()
        .map_err(|e| CliError::Usage(format!("--until: {e}")))?;
    let backend = open_backend(cli, &config).await?;
    let by = format!("bgsched pause on {}", instance_id(None));
    match backend
        .pause(job, Pause::new(&by, until, !no_manual))
        .await?
    {
        PauseChange::Done(p) => {
            eprintln!(
                "bgsched: job \"{}\" paused{}{}",
                job.name,
                p.until
                    .map(|u| format!(" until {}", u.to_rfc3339_opts(SecondsFormat::Secs, true)))
                    .unwrap_or_default(),
                if p.manual {
                    ""
                } else {
                    "; manual runs are refused"
                }
            );
            Ok(())
        }
        PauseChange::Unchanged(p) => Err(CliError::Other(anyhow::anyhow!(
            "job \"{}\" is already paused{}",
            job.name,
            p.map(|p| format!(
                " since {} by {}",
                p.since.to_rfc3339_opts(SecondsFormat::Secs, true),
                p.by
            ))
            .unwrap_or_default()
        ))),
    }
}

pub async fn resume(cli: &Cli, name: &str) -> Result<(), CliError> {
    let config = load_config(cli)?;
    let job = find_job(&config, name)?;
    let backend = open_backend(cli, &config).await?;
    let by = format!("bgsched resume on {}", instance_id(None));
    match backend.resume(job, &by, &instance_id(None)).await? {
        PauseChange::Done(p) => {
            let held = p.entry(job, "").missed_ticks.unwrap_or(0);
            eprintln!(
                "bgsched: job \"{}\" resumed; {held} tick(s) were held back while paused",
                job.name
            );
            Ok(())
        }
        PauseChange::Unchanged(_) => Err(CliError::Other(anyhow::anyhow!(
            "job \"{}\" is not paused",
            job.name
        ))),
    }
}
