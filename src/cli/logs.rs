//! `bgsched logs <run-id> [-f]`: a run's output; with `-f`, as it comes,
//! until the run ends (from any machine in a cluster).

use super::context::{load_config, open_backend, run_id_arg, unknown_run};
use super::trigger::summary;
use super::{Cli, CliError};
use crate::coordination::HistoryReader;
use std::io::Write;

/// How long `-f` waits for a run id that is not recorded yet.
const NOT_YET_FOR: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn logs(cli: &Cli, given: &str, follow: bool) -> Result<(), CliError> {
    let config = load_config(cli)?;
    let run_id = run_id_arg(given)?;
    let jobs: Vec<&str> = config.jobs.keys().map(String::as_str).collect();
    let backend = open_backend(cli, &config).await?;
    let mut found = backend.find_run(&jobs, &run_id).await?;
    // A run just accepted (`trigger --detach`, the API) is recorded within
    // moments of its id being handed out; give it those to follow it.
    let give_up = std::time::Instant::now() + NOT_YET_FOR;
    while follow && found.is_none() && std::time::Instant::now() < give_up {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        found = backend.find_run(&jobs, &run_id).await?;
    }
    let Some(rec) = found else {
        return Err(unknown_run(&run_id));
    };
    if !follow {
        if rec.outcome == crate::model::Outcome::Running {
            // Its record gets the output's tail when it ends; until then an
            // empty answer must not look like a run that printed nothing.
            eprintln!(
                "bgsched: run {run_id} of job \"{}\" is still running; its output so far: bgsched logs -f {run_id}",
                rec.key.job
            );
        }
        let mut out = std::io::stdout();
        let _ = out.write_all(rec.output_tail.as_bytes());
        let _ = out.flush();
        return Ok(());
    }
    let ended = backend
        .follow_output(&rec.key.job, &run_id, |text| {
            // A reader that went away ends the copy, not the run.
            let mut out = std::io::stdout();
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .is_ok()
        })
        .await?;
    if let Some(rec) = ended {
        eprintln!("bgsched: {}", summary(&rec));
    }
    Ok(())
}
