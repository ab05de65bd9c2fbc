//! `bgsched history`: recent runs of one job or of all, and the output of one run.

use super::context::{find_job, load_config, open_backend};
use super::{Cli, CliError};
use crate::coordination::{HistoryReader, Outcome, RunRecord};
use chrono::{SecondsFormat, Utc};
use std::io::Write;
use std::time::Duration;

pub async fn history(
    cli: &Cli,
    job: Option<&str>,
    count: usize,
    output: Option<&str>,
    json: bool,
) -> Result<(), CliError> {
    let config = load_config(cli)?;
    let jobs: Vec<&str> = match job {
        Some(name) => vec![find_job(&config, name)?.name.as_str()],
        None => config.jobs.keys().map(String::as_str).collect(),
    };
    // Checked before anything is opened: the id becomes part of a path or key.
    let run_id = output.map(parse_run_id).transpose()?;
    let backend = open_backend(cli, &config).await?;
    if let Some(run_id) = run_id {
        let Some(rec) = backend.find_run(&jobs, &run_id).await? else {
            let place = match job {
                Some(name) => format!("job \"{name}\""),
                None => "any job".to_string(),
            };
            return Err(CliError::UnknownRun(format!(
                "no run {run_id} in the history of {place} (pruned, or never existed); `bgsched history` lists recent runs"
            )));
        };
        print_output(&rec, json);
        return Ok(());
    }
    let mut runs = Vec::new();
    for job in &jobs {
        runs.extend(backend.recent(job, count).await?);
    }
    // Newest first by start, across jobs; the time-ordered run id breaks ties.
    runs.sort_by(|a, b| {
        b.started_at
            .cmp(&a.started_at)
            .then_with(|| b.key.run_id.cmp(&a.key.run_id))
    });
    runs.truncate(count);
    if json {
        for rec in &mut runs {
            rec.output_tail.clear();
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&runs).expect("run records serialize")
        );
    } else {
        print_table(&runs);
    }
    Ok(())
}

/// Run ids are UUIDs; any spelling the uuid crate accepts is taken, and
/// turned into the canonical one records are stored under.
fn parse_run_id(given: &str) -> Result<String, CliError> {
    crate::model::parse_run_id(given).ok_or_else(|| {
            CliError::Usage(format!(
                "--output {given:?} is not a run id (a UUID such as 019ab6f2-5c1e-7d3a-9f4b-2c8e1a0d6b37, as `bgsched history` shows)"
            ))
        })
}

fn print_output(rec: &RunRecord, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(rec).expect("run record serializes")
        );
        return;
    }
    // Notes go to stderr, so stdout is exactly the job's output.
    if rec.outcome == Outcome::Unreadable {
        eprintln!(
            "bgsched: entry {} of \"{}\" is unreadable: {}",
            rec.key.run_id,
            rec.key.job,
            rec.reason.as_deref().unwrap_or("corrupt state file")
        );
    } else if rec.outcome == Outcome::Running {
        eprintln!(
            "bgsched: run {} of \"{}\" is still running; its output tail is kept when it ends (until then it streams into the log of the scheduler that started it)",
            rec.key.run_id, rec.key.job
        );
    } else if !rec.outcome.is_run() {
        eprintln!(
            "bgsched: run {} of \"{}\" is a {} entry: no process ran{}",
            rec.key.run_id,
            rec.key.job,
            rec.outcome,
            rec.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
    } else if rec.output_tail.is_empty() {
        eprintln!(
            "bgsched: run {} of \"{}\" printed nothing",
            rec.key.run_id, rec.key.job
        );
    }
    // Byte for byte: a newline the job did not print is not added.
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(rec.output_tail.as_bytes());
    let _ = out.flush();
}

fn print_table(runs: &[RunRecord]) {
    let mut table = comfy_table::Table::new();
    let mut header = vec![
        "RUN ID", "JOB", "TICK", "TRIGGER", "INSTANCE", "TERM", "STARTED", "DURATION", "OUTCOME",
    ];
    // Only where a run had any, so that jobs without parameters keep the
    // narrower table.
    let with_params = runs.iter().any(|r| !r.params.is_empty());
    if with_params {
        header.push("PARAMS");
    }
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_header(header);
    let now = Utc::now();
    for rec in runs {
        if rec.outcome == Outcome::Unreadable {
            // Nothing in it can be trusted but its name and its time.
            let dash = || "-".to_string();
            table.add_row([
                rec.key.run_id.clone(),
                rec.key.job.clone(),
                dash(),
                dash(),
                dash(),
                dash(),
                rec.started_at.to_rfc3339_opts(SecondsFormat::Secs, true),
                dash(),
                outcome_detail(rec),
            ]);
            continue;
        }
        let duration = match (rec.outcome, rec.duration_ms) {
            // Skips and misses carry a zero duration; nothing ran.
            (outcome, _) if !outcome.is_run() => "-".to_string(),
            (Outcome::Running, _) => format!(
                "{} so far",
                duration((now - rec.started_at).num_milliseconds().max(0) as u64)
            ),
            (_, Some(ms)) => duration(ms),
            (_, None) => "-".to_string(),
        };
        let mut row = vec![
            rec.key.run_id.clone(),
            rec.key.job.clone(),
            // Milliseconds only where the tick has them (manual runs).
            rec.key.tick.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            rec.key.trigger.to_string(),
            rec.key.instance.clone(),
            // Entries written outside a leadership term (skips, standalone
            // triggers without a scheduler) carry term 0.
            if rec.key.term == 0 {
                "-".to_string()
            } else {
                rec.key.term.to_string()
            },
            rec.started_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            duration,
            outcome_detail(rec),
        ];
        if with_params {
            row.push(params_shown(rec));
        }
        table.add_row(row);
    }
    println!("{table}");
}

/// `mode=fast order_id=42`; a value with anything but plain characters
/// (spaces, quotes, control characters) is shown as a JSON string, and a
/// long one cut short (`--json` has them whole).
fn params_shown(rec: &RunRecord) -> String {
    const LONG: usize = 40;
    if rec.params.is_empty() {
        return "-".to_string();
    }
    let plain = |v: &str| {
        !v.is_empty()
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-./:@,+%=".contains(c))
    };
    rec.params
        .iter()
        .map(|(name, value)| {
            let short: String = value.chars().take(LONG).collect();
            let cut = if short.len() < value.len() { "…" } else { "" };
            if plain(&short) {
                format!("{name}={short}{cut}")
            } else {
                format!("{name}={}{cut}", serde_json::Value::String(short))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// As every duration prints (README "Output forms"): "250ms", "1m 3s 12ms".
fn duration(ms: u64) -> String {
    crate::observe::log::duration(Duration::from_millis(ms)).to_string()
}

/// "failed (exit 3)", "killed (signal 9)", "missed (12 ticks)".
fn outcome_detail(rec: &RunRecord) -> String {
    match (rec.outcome, rec.exit_code, rec.signal, rec.missed_ticks) {
        (Outcome::Failed, Some(code), _, _) => format!("failed (exit {code})"),
        (Outcome::Killed, _, Some(sig), _) => format!("killed (signal {sig})"),
        (Outcome::Missed, _, _, Some(n)) => {
            format!("missed ({n} tick{})", if n == 1 { "" } else { "s" })
        }
        (Outcome::Unreadable, ..) => format!(
            "unreadable ({})",
            rec.reason.as_deref().unwrap_or("corrupt state file")
        ),
        (outcome, ..) => outcome.to_string(),
    }
}
