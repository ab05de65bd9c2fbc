//! The commands behind the parsed command line.

use super::{exit, list, Cli, CliError, Command, LogFormat};
use crate::config::{self, Config, Job, Overlap};
use crate::coordination::standalone::new_run_id;
use crate::coordination::{Coordinator, Outcome, RunRecord, Standalone, Trigger};
use crate::executor::{self, exit_code_of, Echo, RunSpec, SPEC_ENV};
use crate::scheduler::{Scheduler, SupervisorSettings};
use chrono::{DateTime, SecondsFormat, Utc};
use std::path::PathBuf;
use std::sync::Arc;

pub fn dispatch(cli: Cli) -> Result<i32, CliError> {
    match &cli.command {
        Command::Supervise => return supervise(),
        Command::Check => return check(&cli),
        Command::Next {
            job,
            count,
            after,
            json,
        } => return next(&cli, job, *count, after.as_deref(), *json),
        _ => {}
    }
    init_logging(cli.log_format, "info");
    let runtime = tokio::runtime::Runtime::new().map_err(anyhow::Error::from)?;
    runtime.block_on(async {
        match &cli.command {
            Command::Run { instance_id } => run(&cli, instance_id.clone()).await,
            Command::List { json } => list::list(&cli, *json).map(|()| exit::OK),
            Command::Trigger {
                job,
                detach,
                instance_id,
            } => trigger(&cli, job, *detach, instance_id.clone()).await,
            Command::Check | Command::Next { .. } | Command::Supervise => unreachable!(),
        }
    })
}

/// Install the tracing subscriber: level from `$BGSCHED_LOG` (default
/// `default_level`), text or one JSON object per line, on stderr.
pub fn init_logging(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("BGSCHED_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

pub fn load_config(cli: &Cli) -> Result<Config, CliError> {
    Ok(config::load(&cli.config)?)
}

/// The state directory: `--state-dir`, then the config's, then the per-user default.
pub fn state_dir(cli: &Cli, config: &Config) -> PathBuf {
    cli.state_dir
        .clone()
        .or_else(|| config.scheduler.state_dir.clone())
        .unwrap_or_else(|| Standalone::default_dir(&config.path))
}

pub fn open_state(cli: &Cli, config: &Config) -> Result<Standalone, CliError> {
    Ok(Standalone::open(
        &state_dir(cli, config),
        config.scheduler.history_limit,
    )?)
}

fn instance_id(given: Option<String>) -> String {
    given.filter(|s| !s.is_empty()).unwrap_or_else(|| {
        format!(
            "{}-{}",
            gethostname::gethostname().to_string_lossy(),
            std::process::id()
        )
    })
}

/// Look a job up by name, suggesting close names when it is not there.
pub fn find_job<'c>(config: &'c Config, name: &str) -> Result<&'c Job, CliError> {
    if let Some(job) = config.jobs.get(name) {
        return Ok(job);
    }
    let mut close: Vec<(f64, &str)> = config
        .jobs
        .keys()
        .map(|k| (strsim::jaro_winkler(k, name), k.as_str()))
        .filter(|(score, _)| *score > 0.7)
        .collect();
    close.sort_by(|a, b| b.0.total_cmp(&a.0));
    let hint = match close.as_slice() {
        [] => format!(
            "; jobs in {}: {}",
            config.path.display(),
            config.jobs.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
        c => format!(
            "; did you mean {}?",
            c.iter()
                .take(3)
                .map(|(_, n)| format!("\"{n}\""))
                .collect::<Vec<_>>()
                .join(" or ")
        ),
    };
    Err(CliError::UnknownJob(format!(
        "no job named \"{name}\" in {}{hint}",
        config.path.display()
    )))
}

async fn run(cli: &Cli, instance: Option<String>) -> Result<i32, CliError> {
    let config = Arc::new(load_config(cli)?);
    let state = Arc::new(open_state(cli, &config)?);
    let instance = instance_id(instance);
    tracing::info!(
        config = %config.path.display(), state_dir = %state.root().display(), instance = %instance,
        "bgsched {} starting (standalone)", env!("CARGO_PKG_VERSION")
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(0u32);
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            let n = *stop_tx.borrow() + 1;
            tracing::info!("{name} received ({n})");
            let _ = stop_tx.send(n);
        }
    });
    let scheduler = Scheduler::new(
        config.clone(),
        state.clone(),
        instance,
        SupervisorSettings {
            state_dir: state.root().to_path_buf(),
            history_limit: state.history_limit(),
            log_json: cli.log_format == LogFormat::Json,
        },
    );
    let forced = scheduler.run(stop_rx).await?;
    tracing::info!("stopped");
    Ok(if forced { exit::FORCED_STOP } else { exit::OK })
}

async fn trigger(
    cli: &Cli,
    name: &str,
    detach: bool,
    instance: Option<String>,
) -> Result<i32, CliError> {
    let config = load_config(cli)?;
    let job = find_job(&config, name)?;
    let state = open_state(cli, &config)?;
    let instance = instance_id(instance);
    let now = Utc::now();
    let hold = match job.overlap {
        Overlap::Skip => match state.try_run_lock(&job.name)? {
            Some(fd) => Some(fd),
            None => return Ok(report_skip(&state, job, now, &instance).await),
        },
        Overlap::Allow => None,
    };
    let mut spec = RunSpec::new(job, new_run_id(), now, Trigger::Manual);
    spec.instance = instance;
    spec.term = state.leader()?.map_or(0, |l| l.term);
    spec.state_dir = state.root().to_path_buf();
    spec.history_limit = state.history_limit();
    spec.log_json = cli.log_format == LogFormat::Json;
    if detach {
        let run_id = spec.run_id.clone();
        executor::spawn_supervisor(spec, hold, true).map_err(anyhow::Error::from)?;
        println!("{run_id}");
        return Ok(exit::OK);
    }
    let mut recorder = state.recorder(&job.name, &spec.run_id);
    let rec = executor::supervise(&spec, &mut recorder, hold, Echo::Terminal).await;
    eprintln!("bgsched: {}", summary(&rec));
    Ok(exit_code_of(&rec))
}

async fn report_skip(state: &Standalone, job: &Job, now: DateTime<Utc>, instance: &str) -> i32 {
    let active = state
        .active_runs(&job.name)
        .ok()
        .and_then(|r| r.into_iter().next());
    let detail = match &active {
        Some(r) => format!(
            "since {} on instance {} (run {}, pid {})",
            r.started_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            r.instance,
            r.run_id,
            r.pid.map_or("?".into(), |p| p.to_string())
        ),
        None => "(its run is just starting)".to_string(),
    };
    eprintln!(
        "bgsched: job \"{}\" is already running {detail}; skipped (overlap = \"skip\")",
        job.name
    );
    let rec = RunRecord {
        run_id: new_run_id(),
        job: job.name.clone(),
        tick: now,
        trigger: Trigger::Manual,
        instance: instance.to_string(),
        term: 0,
        outcome: Outcome::Skipped,
        started_at: now,
        ended_at: Some(now),
        duration_ms: Some(0),
        exit_code: None,
        signal: None,
        reason: Some(format!("already running {detail}")),
        pid: None,
        missed_ticks: None,
        output_tail: String::new(),
    };
    if let Err(e) = state.record(&rec).await {
        eprintln!("bgsched: could not record the skip: {e}");
    }
    exit::SKIPPED
}

/// One line about a finished run, e.g. `run 0190… of "backup": failed (exit 3) after 1.2s`.
pub fn summary(rec: &RunRecord) -> String {
    let detail = match (rec.outcome, rec.exit_code, rec.signal) {
        (Outcome::Failed, Some(code), _) => format!(" (exit {code})"),
        (Outcome::Killed, _, Some(sig)) => format!(" (signal {sig})"),
        _ => rec
            .reason
            .as_ref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default(),
    };
    let took = rec
        .duration_ms
        .map(|ms| {
            format!(
                " after {}",
                humantime::format_duration(std::time::Duration::from_millis(ms))
            )
        })
        .unwrap_or_default();
    format!(
        "run {} of \"{}\": {}{detail}{took}",
        rec.run_id, rec.job, rec.outcome
    )
}

fn check(cli: &Cli) -> Result<i32, CliError> {
    let config = load_config(cli)?;
    let now = Utc::now();
    println!(
        "{}: ok, {} job(s)",
        config.path.display(),
        config.jobs.len()
    );
    for job in config.jobs.values() {
        let next = match (job.enabled, job.schedule.next_after(now)) {
            (false, _) => "disabled".to_string(),
            (true, Some(t)) => format!("next {}", local_rfc3339(job, t)),
            (true, None) => "never fires again".to_string(),
        };
        println!(
            "  {:<24} {:<20} {:<16} {next}",
            job.name,
            job.schedule.as_str(),
            job.timezone.name()
        );
    }
    Ok(exit::OK)
}

fn next(
    cli: &Cli,
    name: &str,
    count: usize,
    after: Option<&str>,
    json: bool,
) -> Result<i32, CliError> {
    let config = load_config(cli)?;
    let job = find_job(&config, name)?;
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
    Ok(exit::OK)
}

/// An instant in the job's time zone with its UTC offset, e.g. `2026-03-29T03:00:00+02:00`.
pub fn local_rfc3339(job: &Job, t: DateTime<Utc>) -> String {
    t.with_timezone(&job.timezone)
        .to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

/// The hidden `__supervise` command: one run, started by a scheduler.
fn supervise() -> Result<i32, CliError> {
    let json = std::env::var(SPEC_ENV).map_err(|_| {
        CliError::Usage(format!(
            "__supervise is internal to bgsched ({SPEC_ENV} is not set)"
        ))
    })?;
    let spec: RunSpec =
        serde_json::from_str(&json).map_err(|e| CliError::Usage(format!("bad {SPEC_ENV}: {e}")))?;
    // Remove it so the job does not see it (the executor also strips it).
    // SAFETY: single-threaded at this point; no runtime has started yet.
    unsafe { std::env::remove_var(SPEC_ENV) };
    let hold = executor::adopt_hold(spec.hold_fd);
    init_logging(
        if spec.log_json {
            LogFormat::Json
        } else {
            LogFormat::Text
        },
        "info",
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)?;
    let state = Standalone::open(&spec.state_dir, spec.history_limit)?;
    let mut recorder = state.recorder(&spec.job, &spec.run_id);
    runtime.block_on(executor::supervise(&spec, &mut recorder, hold, Echo::Log));
    Ok(exit::OK)
}
