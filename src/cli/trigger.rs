//! `bgsched trigger`: run a job once now, under its overlap policy.
//!
//! Standalone, this process supervises the run itself (or starts a detached
//! supervisor). In a cluster, it asks the leader through etcd, so the run is
//! claimed like any scheduled fire, and waits for the run's record.

use super::commands::{find_job, instance_id, load_config, Backend};
use super::{exit, Cli, CliError, LogFormat};
use crate::config::Job;
use crate::coordination::standalone::new_run_id;
use crate::coordination::{
    ClaimRejected, Coordinator, Etcd, Hold, Outcome, RunRecord, Standalone, Trigger, TriggerRequest,
};
use crate::executor::{self, exit_code_of, Echo, RunSpec};
use crate::observe::log::run_span;
use chrono::{SecondsFormat, Utc};
use std::time::Duration;
use tracing::Instrument;

pub async fn trigger(
    cli: &Cli,
    name: &str,
    detach: bool,
    instance: Option<String>,
    timeout: Duration,
) -> Result<i32, CliError> {
    let config = load_config(cli)?;
    let job = find_job(&config, name)?;
    let instance = instance_id(instance);
    match Backend::open(cli, &config).await? {
        Backend::Standalone(state) => locally(cli, &state, job, detach, instance).await,
        Backend::Cluster(etcd) => through_leader(&etcd, job, detach, instance, timeout).await,
    }
}

async fn locally(
    cli: &Cli,
    state: &Standalone,
    job: &Job,
    detach: bool,
    instance: String,
) -> Result<i32, CliError> {
    let now = crate::coordination::manual_tick(Utc::now());
    let (hold, turn) = match state.overlap_hold(&job.name, job.overlap) {
        Ok(held) => held,
        Err(rejected) if rejected.is_skip() => {
            let reason = match &rejected {
                ClaimRejected::StillRunning(active) => skip_reason(active.as_deref()),
                other => other.to_string(),
            };
            let mut rec = RunRecord::not_run(
                &job.name,
                now,
                Trigger::Manual,
                &instance,
                Outcome::Skipped,
                reason.clone(),
            );
            rec.term = 0;
            if let Err(e) = state.record_until_written(&rec).await {
                eprintln!("bgsched: could not record the skip: {e}");
            }
            return Ok(skipped(job, &reason));
        }
        Err(e) => return Err(anyhow::Error::from(e).into()),
    };
    let mut spec = RunSpec::new(
        job,
        new_run_id(),
        now,
        Trigger::Manual,
        state.backend_spec(),
    );
    spec.instance = instance;
    spec.term = state.leader()?.map_or(0, |l| l.term);
    spec.turn = turn;
    spec.log_json = cli.log_format == LogFormat::Json;
    if detach {
        let run_id = spec.run_id.clone();
        executor::spawn_supervisor(spec, hold, true).map_err(anyhow::Error::from)?;
        print_out(&format!("{run_id}\n"));
        return Ok(exit::OK);
    }
    let lock = match hold {
        Hold::Lock(fd) => Some(fd),
        _ => None,
    };
    let mut recorder = state.recorder(&job.name, &spec.run_id);
    let done = executor::supervise(&spec, &mut recorder, lock, Echo::Terminal)
        .instrument(run_span(&spec))
        .await;
    eprintln!("bgsched: {}", summary(&done.record));
    Ok(if done.interrupted {
        exit::FORCED_STOP
    } else {
        exit_code_of(&done.record)
    })
}

/// Say that the job was skipped because it runs; the exit code for it.
fn skipped(job: &Job, reason: &str) -> i32 {
    eprintln!(
        "bgsched: job \"{}\" is {reason}; skipped (overlap = \"{}\")",
        job.name, job.overlap
    );
    exit::SKIPPED
}

/// "already running since … on instance … (run …, pid …)".
fn skip_reason(active: Option<&RunRecord>) -> String {
    match active {
        Some(r) => format!(
            "already running since {} on instance {} (run {}{})",
            r.started_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            r.instance,
            r.run_id,
            r.pid.map(|p| format!(", pid {p}")).unwrap_or_default()
        ),
        None => "already running (its run is just starting)".to_string(),
    }
}

/// Ask the leader to run the job, wait until it accepts (or `timeout`
/// passes with no leader), then wait for the run's record.
async fn through_leader(
    etcd: &Etcd,
    job: &Job,
    detach: bool,
    instance: String,
    timeout: Duration,
) -> Result<i32, CliError> {
    use etcd_client::PutOptions;
    let keys = etcd.keys();
    let mut client = etcd.client();
    let etcd_failed = |e: etcd_client::Error| {
        CliError::Unavailable(format!("etcd: {}", crate::coordination::etcd::in_words(&e)))
    };
    let run_id = new_run_id();
    let req = TriggerRequest {
        run_id: run_id.clone(),
        job: job.name.clone(),
        requested_by: instance,
        requested_at: Utc::now(),
    };
    // The request dies with this lease, so an unanswered request never
    // fires later behind the requester's back.
    let lease = client
        .lease_grant(timeout.as_secs().max(1) as i64 + 5, None)
        .await
        .map_err(etcd_failed)?
        .id();
    let body = serde_json::to_vec(&req).expect("request serializes");
    client
        .put(
            keys.request(&run_id),
            body,
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .map_err(etcd_failed)?;
    let deadline = tokio::time::Instant::now() + timeout;
    let accepted = async {
        loop {
            let pending = client
                .get(keys.request(&run_id), None)
                .await
                .map_err(etcd_failed)?;
            if pending.kvs().is_empty() {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let outcome = tokio::select! {
        r = accepted => r.map(|a| if a { Waited::Accepted } else { Waited::TimedOut }),
        _ = tokio::signal::ctrl_c() => Ok(Waited::Interrupted),
    };
    let mut client = etcd.client();
    let outcome = match outcome {
        Ok(w) => w,
        Err(e) => {
            // Do not leave a request behind that could still fire later.
            let _ = client.delete(keys.request(&run_id), None).await;
            return Err(e);
        }
    };
    if outcome != Waited::Accepted {
        // Withdraw, unless the leader took it in the meantime.
        let withdrawn = client
            .delete(keys.request(&run_id), None)
            .await
            .map_err(etcd_failed)?;
        if withdrawn.deleted() > 0 {
            let _ = client.lease_revoke(lease).await;
            if outcome == Waited::Interrupted {
                eprintln!(
                    "bgsched: interrupted; the request was withdrawn before any leader took it"
                );
                return Ok(exit::FORCED_STOP);
            }
            return Err(CliError::Unavailable(format!(
                "no leader accepted the request within {}; is a `bgsched run` up for this cluster (prefix {})?",
                humantime::format_duration(timeout),
                etcd.config().prefix
            )));
        }
        if outcome == Waited::Interrupted {
            eprintln!(
                "bgsched: interrupted; run {run_id} was already accepted and goes on on the leader"
            );
            return Ok(exit::FORCED_STOP);
        }
    }
    let _ = client.lease_revoke(lease).await;
    // Accepted: the leader has claimed it, or recorded why not. A skip is
    // recorded before the request is taken away, so it is known by now.
    let mut unseen_since = None;
    loop {
        let hist = client
            .get(keys.history(&job.name, &run_id), None)
            .await
            .map_err(etcd_failed)?;
        let rec = match hist.kvs().first() {
            Some(kv) => {
                Some(serde_json::from_slice::<RunRecord>(kv.value()).map_err(anyhow::Error::from)?)
            }
            None => None,
        };
        match rec {
            Some(rec) if rec.outcome == Outcome::Skipped => {
                return Ok(skipped(
                    job,
                    rec.reason.as_deref().unwrap_or("already running"),
                ));
            }
            Some(rec) if !detach => {
                print_out(&rec.output_tail);
                eprintln!("bgsched: {} on instance {}", summary(&rec), rec.instance);
                return Ok(exit_code_of(&rec));
            }
            _ if detach => {
                print_out(&format!("{run_id}\n"));
                return Ok(exit::OK);
            }
            _ => {}
        }
        let active = client
            .get(keys.active(&job.name, &run_id), None)
            .await
            .map_err(etcd_failed)?;
        if active.kvs().is_empty() {
            // Between acceptance and the marker there is no gap (one
            // transaction), so a run that is neither active nor recorded
            // for a whole lease lost its leader before it started.
            let since = *unseen_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() > etcd.config().lease_ttl * 2 {
                return Err(CliError::Other(anyhow::anyhow!(
                    "run {run_id} was accepted but never started or recorded (its leader died)"
                )));
            }
        } else {
            unseen_since = None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How waiting for a leader to take a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waited {
    Accepted,
    TimedOut,
    Interrupted,
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
        rec.run_id, rec.job, rec.outcome
    )
}

/// Print to stdout; `trigger` ignores SIGPIPE (see `cli::main`), and a
/// reader that went away changes nothing about the run or the exit code.
fn print_out(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}
