//! `bgsched check`: validate the config; each job's next fire.

use super::context::load_config;
use super::{Cli, CliError};
use crate::config::RunOn;
use crate::observe::log::local_rfc3339;
use crate::reload;
use chrono::Utc;

pub fn check(cli: &Cli) -> Result<(), CliError> {
    let config = load_config(cli)?;
    let now = Utc::now();
    println!(
        "{}: ok, {} job(s)",
        config.path.display(),
        config.jobs.len()
    );
    // Not an error: the file is valid and runs its other jobs.
    for (_, text) in reload::ended_jobs(&config, now) {
        eprintln!("bgsched: warning: {text}");
    }
    for text in config.group_warnings() {
        eprintln!("bgsched: warning: {text}");
    }
    for job in config.jobs.values() {
        let next = match (job.enabled, job.schedule.next_after(now)) {
            (false, _) => "disabled".to_string(),
            (true, _) if job.schedule.is_continuous() => "service: always running".to_string(),
            (true, None) if job.schedule.is_none() => {
                "runs only after its upstream jobs".to_string()
            }
            (true, Some(t)) => format!("next {}", local_rfc3339(job, t)),
            (true, None) => "never fires again".to_string(),
        };
        // In a cluster, where its runs go; said only when not the leader.
        let placed = match &job.run_on {
            RunOn::Leader => String::new(),
            _ if job.schedule.is_continuous() => {
                "  (run_on does not apply: a service runs on the leader)".to_string()
            }
            other => format!("  run_on {other}"),
        };
        println!(
            "  {:<24} {:<20} {:<16} {next}{placed}",
            job.name,
            job.when_words(),
            job.timezone.name()
        );
    }
    Ok(())
}
