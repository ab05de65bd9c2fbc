//! `bgsched next`: a job's next fire instants.

use super::context::{find_job, load_config};
use super::{Cli, CliError};
use crate::observe::log::local_rfc3339;
use chrono::{DateTime, SecondsFormat, Utc};

pub fn next(
    cli: &Cli,
    name: &str,
    count: usize,
    after: Option<&str>,
    json: bool,
) -> Result<(), CliError> {
    let config = load_config(cli)?;
    let job = find_job(&config, name)?;
    if job.schedule.is_continuous() {
        eprintln!(
            "bgsched: job \"{}\" is a service (@continuous): it has no fire times; the leader keeps it running",
            job.name
        );
        if json {
            println!("[]");
        }
        return Ok(());
    }
    if job.schedule.is_none() {
        eprintln!(
            "bgsched: job \"{}\" has no schedule of its own: it runs {}",
            job.name,
            job.after_words().unwrap_or_default()
        );
        if json {
            println!("[]");
        }
        return Ok(());
    }
    let after = match after {
        Some(s) => DateTime::parse_from_rfc3339(s)
            .map_err(|e| CliError::Usage(format!("--after {s:?} is not an RFC 3339 instant: {e}")))?
            .with_timezone(&Utc),
        None => Utc::now(),
    };
    let mut ticks = Vec::with_capacity(count);
    let mut t = after;
    while ticks.len() < count {
        match job.schedule.next_after(t) {
            Some(n) => {
                ticks.push(n);
                t = n;
            }
            None => break,
        }
    }
    let active = job.schedule.active();
    if let Some(from) = active.from.filter(|f| *f > after) {
        // The first line is not simply the schedule's next match.
        eprintln!(
            "bgsched: job \"{}\" is active from {}: no fire before it",
            job.name,
            local_rfc3339(job, from)
        );
    }
    if ticks.len() < count {
        // Fewer lines than asked for must not look like a cut-off listing.
        let last = ticks
            .last()
            .copied()
            .unwrap_or_else(|| chrono::SubsecRound::trunc_subsecs(after, 0));
        let exprs: Vec<&str> = job.schedule.expressions().collect();
        let fields: Vec<&str> = exprs[0].split_whitespace().collect();
        let why = match (active.until, fields.as_slice()) {
            (Some(until), _)
                if job.schedule.next_after(last).is_none() && {
                    // Ended by the range, not by the expressions.
                    let open = job.schedule.clone().within(crate::schedule::Active {
                        from: active.from,
                        until: None,
                    });
                    open.next_after(last).is_some()
                } =>
            {
                let verb = if until <= Utc::now() { "ended" } else { "ends" };
                format!("its active range {verb} at {}", local_rfc3339(job, until))
            }
            (_, [_, _, _, _, _, _, years]) if exprs.len() == 1 => {
                format!("its years ({years}) are over")
            }
            _ => "its schedule matches no later date".to_string(),
        };
        eprintln!(
            "bgsched: job \"{}\" has no fire after {}: {why}",
            job.name,
            local_rfc3339(job, last)
        );
    }
    if json {
        let out: Vec<_> = ticks
            .iter()
            .map(|t| serde_json::json!({ "tick": t.to_rfc3339_opts(SecondsFormat::AutoSi, true), "local": local_rfc3339(job, *t) }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&out).expect("json"));
    } else {
        for t in &ticks {
            println!("{}", local_rfc3339(job, *t));
        }
    }
    Ok(())
}
