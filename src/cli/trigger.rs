//! `bgsched trigger`: run a job once now, under its overlap policy.
//!
//! Standalone, this process supervises the run itself (or starts a detached
//! supervisor). In a cluster, it asks the leader through etcd, so the run is
//! claimed like any scheduled fire, and waits for the run's record.

use super::context::{find_job, instance_id, load_config, open_backend};
use super::{Cli, CliError, LogFormat};
use crate::config::Job;
use crate::coordination::etcd::{Asked, Seen};
use crate::coordination::{Backend, Etcd, Hold, Outcome, RunRecord, Standalone, Where};
use crate::executor::{self, run_span, Echo};
use crate::model::new_run_id;
use crate::signals::{Sig, Signals};
use chrono::Utc;
use std::collections::BTreeMap;
use std::time::Duration;
use tracing::Instrument;

/// How `trigger` asks for its run.
pub struct How {
    pub detach: bool,
    /// Cluster mode: how long to wait for a leader.
    pub timeout: Duration,
    /// `--on`, `--label`: where it runs, over the job's `run_on`.
    pub placement: Where,
}

/// `--on` and `--label` place a run on a member; standalone there is none.
fn needs_cluster(config: &crate::config::Config, placement: &Where) -> Result<(), CliError> {
    if config.cluster.is_none() && !placement.is_default() {
        return Err(CliError::Usage(
            "--on and --label choose a member of a cluster; without [cluster] every run starts here"
                .into(),
        ));
    }
    Ok(())
}

pub async fn trigger(
    cli: &Cli,
    name: &str,
    params: &BTreeMap<String, String>,
    instance: Option<String>,
    How {
        detach,
        timeout,
        placement,
    }: How,
) -> Result<(), CliError> {
    let config = load_config(cli)?;
    let job = find_job(&config, name)?;
    needs_cluster(&config, &placement)?;
    // Refused before anything is asked of the backend or recorded.
    let params = job
        .resolve_params(params)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let instance = instance_id(instance);
    let backend = open_backend(cli, &config).await?;
    if let Some(p) = backend
        .pause_now(&job.name)
        .await?
        .filter(|p| p.is_active(Utc::now()) && !p.manual)
    {
        return Err(CliError::Skipped(crate::coordination::paused_refusal(
            &job.name, &p,
        )));
    }
    match backend {
        Backend::Standalone(state) => {
            locally(
                cli,
                &state,
                job,
                config.group_of(job),
                params,
                detach,
                instance,
            )
            .await
        }
        Backend::Cluster(etcd) => {
            let how = How {
                detach,
                timeout,
                placement,
            };
            through_leader(&etcd, job, params, instance, how).await
        }
    }
}

/// `trigger --at`: keep the run as scheduled; the leader claims it at
/// its time, like a tick, so it fires once across restarts and failovers.
pub async fn at(
    cli: &Cli,
    name: &str,
    params: BTreeMap<String, String>,
    at: &str,
    instance: Option<String>,
    placement: Where,
) -> Result<(), CliError> {
    let config = load_config(cli)?;
    let job = find_job(&config, name)?;
    needs_cluster(&config, &placement)?;
    let at = crate::coordination::run_at(at, Utc::now())
        .map_err(|e| CliError::Usage(format!("--at: {e}")))?;
    let params = job
        .resolve_params(&params)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let req = crate::coordination::TriggerRequest {
        run_id: new_run_id(),
        job: job.name.clone(),
        requested_by: instance_id(instance),
        requested_at: Utc::now(),
        params,
        at: Some(at),
        upstream: None,
        placement,
        first_attempt: None,
    };
    open_backend(cli, &config).await?.schedule_run(&req).await?;
    print_out(&format!("{}\n", req.run_id));
    Ok(())
}

async fn locally(
    cli: &Cli,
    state: &Standalone,
    job: &Job,
    group: Option<&crate::config::Group>,
    params: BTreeMap<String, String>,
    detach: bool,
    instance: String,
) -> Result<(), CliError> {
    let (mut spec, hold, seat) =
        match executor::manual::prepare(state, job, group, &instance, params).await {
            Ok(prepared) => prepared,
            Err(executor::manual::Refused::Skipped { reason, .. }) => {
                return Err(skipped(job, &reason))
            }
            Err(executor::manual::Refused::Backend(e)) => return Err(anyhow::Error::from(e).into()),
        };
    spec.log_json = cli.log_format == LogFormat::Json;
    executor::contain::sweep_stale_cgroups();
    if detach {
        let run_id = spec.key.run_id.clone();
        executor::spawn_supervisor(spec, hold, seat, executor::SupervisorOutput::Nothing)
            .map_err(anyhow::Error::from)?;
        print_out(&format!("{run_id}\n"));
        return Ok(());
    }
    let lock = match hold {
        Hold::Lock(fd) => Some(fd),
        _ => None,
    };
    let mut recorder = state.recorder(&job.name, &spec.key.run_id);
    let seat = seat.and_then(|s| s.lock);
    let done = executor::supervise(&spec, &mut recorder, lock, seat, Echo::Terminal)
        .instrument(run_span(&spec))
        .await;
    eprintln!("bgsched: {}", summary(&done.record));
    if done.interrupted {
        return Err(CliError::Interrupted);
    }
    CliError::of_run(&done.record)
}

/// The job was skipped because it runs.
fn skipped(job: &Job, reason: &str) -> CliError {
    CliError::Skipped(format!(
        "job \"{}\" skipped (overlap = \"{}\"): {reason}",
        job.name, job.overlap
    ))
}

/// Ask the leader to run the job, wait until it accepts (or `timeout`
/// passes with no leader), then wait for the run's record.
async fn through_leader(
    etcd: &Etcd,
    job: &Job,
    params: BTreeMap<String, String>,
    instance: String,
    How {
        detach,
        timeout,
        placement,
    }: How,
) -> Result<(), CliError> {
    let run_id = new_run_id();
    let mut ctrl_c = Signals::listen(&[Sig::Int]).map_err(anyhow::Error::from)?;
    let interrupted = async move {
        ctrl_c.next().await;
    };
    match etcd
        .request_run(
            &job.name,
            &run_id,
            (params, placement),
            instance,
            timeout,
            interrupted,
        )
        .await?
    {
        Asked::Taken => {}
        Asked::Withdrawn => {
            eprintln!("bgsched: interrupted; the request was withdrawn before any leader took it");
            return Err(CliError::Interrupted);
        }
        Asked::TakenThenInterrupted => {
            eprintln!(
                "bgsched: interrupted; run {run_id} was already accepted and goes on on the leader"
            );
            return Err(CliError::Interrupted);
        }
        Asked::NoLeader => {
            return Err(CliError::Unavailable(format!(
                "no leader accepted the request within {}; is a `bgsched run` up for this cluster (prefix {})?",
                humantime::format_duration(timeout),
                etcd.config().cluster.prefix
            )))
        }
    }
    match etcd.wait_for_record(&job.name, &run_id, detach).await? {
        Seen::Recorded(rec) if rec.outcome == Outcome::Skipped => Err(skipped(
            job,
            rec.reason.as_deref().unwrap_or("already running"),
        )),
        Seen::Recorded(rec) => {
            print_out(&rec.output_tail);
            eprintln!(
                "bgsched: {} on instance {}",
                summary(&rec),
                rec.key.instance
            );
            CliError::of_run(&rec)
        }
        Seen::NotYet => {
            print_out(&format!("{run_id}\n"));
            Ok(())
        }
        Seen::Vanished => Err(CliError::Other(anyhow::anyhow!(
            "run {run_id} was accepted but never started or recorded (its leader died)"
        ))),
    }
}

/// One line about a finished run, e.g. `run 0190… of "backup": failed (exit 3) after 1.2s`.
pub fn summary(rec: &RunRecord) -> String {
    let detail = match (rec.outcome, rec.exit_code, rec.signal) {
        (Outcome::Failed, Some(code), _) => format!(" (exit {code})"),
        (Outcome::Killed, _, Some(sig)) => format!(" (signal {sig})"),
        // The outcome already says "timed out": name the limit only.
        (Outcome::TimedOut, ..) => match rec
            .reason
            .as_deref()
            .and_then(|r| r.strip_prefix("timed out after "))
        {
            Some(limit) => format!(" (timeout {limit})"),
            None => rec
                .reason
                .as_ref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default(),
        },
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
                humantime::format_duration(Duration::from_millis(ms))
            )
        })
        .unwrap_or_default();
    format!(
        "run {} of \"{}\": {}{took}{detail}",
        rec.key.run_id, rec.key.job, rec.outcome
    )
}

/// Print to stdout; `trigger` ignores SIGPIPE (see `cli::main`), and a
/// reader that went away changes nothing about the run or the exit code.
fn print_out(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}
