//! The status model: what is scheduled, what ran, what runs now. Built
//! from the backend alone, so `list --json` (any process) and `/status`
//! (the running scheduler) show the same document.

use super::log::local_rfc3339;
use crate::config::{Config, RunOn};
use crate::coordination::etcd::MemberInfo;
use crate::coordination::{
    Backend, CoordError, Coordinator, HistoryReader, LeaderInfo, Outcome, Pause, RunRecord,
    TriggerRequest,
};
use crate::model::LATE_TOLERANCE;
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::StreamExt;
use serde::Serialize;
use std::collections::BTreeMap;

/// The stable JSON document of `list --json` (documented in README).
#[derive(Debug, Serialize)]
pub struct ListView {
    /// `standalone` or `cluster`.
    pub mode: &'static str,
    /// Standalone: the state directory.
    pub state_dir: Option<String>,
    /// Cluster: the etcd key prefix.
    pub etcd_prefix: Option<String>,
    pub leader: Option<LeaderInfo>,
    /// Cluster: the live instances, each with the hash of its config.
    pub members: Vec<MemberInfo>,
    /// The content hash of the config this view was built from (`list`:
    /// the file it read; `/status`: the config in use).
    pub config_hash: String,
    /// Cluster: whether the live instances announce different config hashes.
    pub configs_differ: bool,
    /// Standalone: state files of the whole directory (`term`,
    /// `leader.json`) that cannot be read, each saying which and why.
    pub unreadable: Vec<String>,
    pub jobs: Vec<JobView>,
}

#[derive(Debug, Serialize)]
pub struct JobView {
    pub name: String,
    pub description: Option<String>,
    pub schedule: String,
    /// The schedule in words (see `Schedule::describe`).
    pub schedule_words: String,
    pub timezone: String,
    pub enabled: bool,
    pub overlap: String,
    /// Where its runs execute in a cluster: `"leader"`, `"any"` or
    /// `{"labels": {...}}`.
    pub run_on: RunOn,
    /// `running`, `idle` or `disabled`.
    pub state: &'static str,
    /// RFC 3339 in the job's time zone.
    pub next_run: Option<String>,
    /// Active runs (usually at most one).
    pub running: Vec<RunRecord>,
    /// The newest run that started a process (not a skip or a miss).
    pub last_run: Option<RunRecord>,
    /// Skipped ticks among the retained history.
    pub recent_skips: usize,
    /// Missed ticks among the retained history.
    pub recent_missed: u64,
    /// Standalone: the job's state files that cannot be read (each says
    /// which file, why, and where it was set aside); see `history`.
    pub unreadable: Vec<String>,
    /// The newest tick fired (claimed) for the job, if any.
    pub last_tick: Option<DateTime<Utc>>,
    /// Set when `last_tick` lies ahead of the clock of whoever built this
    /// view (beyond 1s): that clock went back, or a replica with a clock
    /// ahead fired it.
    pub last_tick_ahead: Option<String>,
    /// Set while the job is paused (`bgsched pause`): since when, until
    /// when, by whom, whether manual runs still run.
    pub paused: Option<Pause>,
    /// One-off runs at a later time (`trigger --at`), by time.
    pub scheduled: Vec<TriggerRequest>,
    /// The outcomes of the newest finished runs, newest first (at most
    /// [`RECENT_OUTCOMES`]), for a glance at how the job has been doing.
    pub recent_outcomes: Vec<Outcome>,
    /// The parameters the job declares (`[jobs.NAME.params]`).
    pub params: BTreeMap<String, ParamView>,
    /// The job's active range (`active_from`, `active_until`): no fire
    /// outside it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_from: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_until: Option<DateTime<Utc>>,
    /// `after` in words ("after extract"), if the job runs after others.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// The jobs that run after this one's runs end.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub then: Vec<String>,
    /// For an `@continuous` service: how long it has been up, and how
    /// often it was restarted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceView>,
}

#[derive(Debug, Serialize)]
pub struct ServiceView {
    /// When the running instance started; `None` while none runs.
    pub up_since: Option<DateTime<Utc>>,
    /// Its starts in the retained history that have ended: each was
    /// followed by a restart.
    pub restarts: usize,
}

/// A declared parameter, as the dashboard's trigger form needs it.
#[derive(Debug, Serialize)]
pub struct ParamView {
    pub required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

/// How many outcomes `recent_outcomes` holds at most.
pub const RECENT_OUTCOMES: usize = 20;

/// Transactions reading jobs' history in flight at once (each covers many
/// jobs; see `Etcd::recent_and_active`).
const READS_IN_FLIGHT: usize = 8;

/// Each job's retained history (newest first) and its active runs, in the
/// order of `jobs`.
async fn read_jobs(
    backend: &Backend,
    jobs: Vec<String>,
    limit: usize,
) -> Result<Vec<(Vec<RunRecord>, Vec<RunRecord>)>, CoordError> {
    match backend {
        Backend::Standalone(s) => {
            let mut out = Vec::with_capacity(jobs.len());
            for job in jobs {
                out.push((s.recent(&job, limit).await?, s.active(&job).await?));
            }
            Ok(out)
        }
        Backend::Cluster(e) => {
            // Owned chunks: a closure over borrowed names trips rustc's
            // higher-ranked lifetime check where the future must be Send
            // (the /status handler).
            let chunks: Vec<Vec<String>> =
                jobs.chunks(JOBS_PER_READ).map(<[String]>::to_vec).collect();
            let parts: Vec<_> = futures_util::stream::iter(chunks)
                .map(|chunk| e.recent_and_active(chunk, limit))
                .buffered(READS_IN_FLIGHT)
                .collect()
                .await;
            let mut out = Vec::with_capacity(jobs.len());
            for part in parts {
                out.extend(part?);
            }
            Ok(out)
        }
    }
}

/// Jobs per concurrent read in a cluster.
const JOBS_PER_READ: usize = 200;

/// Read the status of every job in `config` (whose content hash is
/// `config_hash`) from `backend`.
pub async fn build(
    config: &Config,
    config_hash: &str,
    backend: &Backend,
    now: DateTime<Utc>,
) -> Result<ListView, CoordError> {
    let limit = config.scheduler.history_limit;
    // In a cluster every job costs round trips to etcd: keep several in
    // flight (in job order) instead of paying for them one after another.
    let names: Vec<String> = config.jobs.keys().cloned().collect();
    let last_ticks = match backend {
        Backend::Standalone(s) => {
            let mut ticks = std::collections::HashMap::new();
            for name in &names {
                if let Some(t) = Coordinator::last_fired(s.as_ref(), name).await? {
                    ticks.insert(name.clone(), t);
                }
            }
            ticks
        }
        Backend::Cluster(e) => e.last_ticks().await?,
    };
    let pauses = {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        backend.pauses(&names).await?
    };
    let mut scheduled = backend.scheduled_runs().await?;
    let reads = read_jobs(backend, names, limit).await?;
    let mut jobs = Vec::new();
    for (job, (history, running)) in config.jobs.values().zip(reads) {
        let paused = pauses.get(&job.name).filter(|p| p.is_active(now)).cloned();
        // A retried attempt's entry has an id of its own, newer than its
        // run's, so it comes first; the run's final record is the last run.
        let last_run = history
            .iter()
            .find(|r| r.outcome.is_run() && r.outcome != Outcome::Running && !r.retried)
            .cloned();
        let view_running_since = running.first().map(|r| r.started_at);
        jobs.push(JobView {
            name: job.name.clone(),
            description: job.description.clone(),
            schedule: job.when_words(),
            schedule_words: match (job.schedule.is_none(), job.after_words()) {
                (true, Some(after)) => after,
                (false, Some(after)) => format!("{}; {after}", job.schedule.describe()),
                (_, None) => job.schedule.describe().to_string(),
            },
            timezone: job.timezone.name().to_string(),
            enabled: job.enabled,
            overlap: job.overlap.to_string(),
            run_on: job.run_on.clone(),
            state: match (job.enabled, running.is_empty(), &paused) {
                (_, false, _) => "running",
                (false, true, _) => "disabled",
                (true, true, Some(_)) => "paused",
                (true, true, None) => "idle",
            },
            // A paused job's next run is its first tick after the pause;
            // none while paused without an end.
            next_run: match (&paused, job.enabled) {
                (_, false) | (Some(Pause { until: None, .. }), _) => None,
                (Some(Pause { until: Some(u), .. }), true) => Some((*u).max(now)),
                (None, true) => Some(now),
            }
            .and_then(|after| job.schedule.next_after(after))
                .map(|t| local_rfc3339(job, t)),
            running,
            last_run,
            recent_skips: history
                .iter()
                .filter(|r| r.outcome == Outcome::Skipped)
                .count(),
            recent_missed: history.iter().filter_map(|r| r.missed_ticks).sum(),
            unreadable: history
                .iter()
                .filter(|r| r.outcome == Outcome::Unreadable)
                .filter_map(|r| r.reason.clone())
                .collect(),
            last_tick: last_ticks.get(&job.name).copied(),
            last_tick_ahead: last_ticks
                .get(&job.name)
                .filter(|t| **t - now > chrono::Duration::from_std(LATE_TOLERANCE).unwrap_or_default())
                .map(|t| {
                    let ahead = (*t - now).to_std().unwrap_or_default();
                    let ahead = std::time::Duration::from_secs(ahead.as_secs());
                    format!(
                        "its last fired tick, {}, is {} ahead of this clock: the clock went back, or a replica with a clock ahead fired it; ticks up to it count as fired",
                        t.to_rfc3339_opts(SecondsFormat::Secs, true),
                        humantime::format_duration(ahead)
                    )
                }),
            paused,
            scheduled: {
                let (mine, rest) = scheduled.drain(..).partition(|r| r.job == job.name);
                scheduled = rest;
                mine
            },
            recent_outcomes: history
                .iter()
                .filter(|r| r.outcome.is_run() && r.outcome != Outcome::Running)
                .take(RECENT_OUTCOMES)
                .map(|r| r.outcome)
                .collect(),
            params: job
                .params
                .iter()
                .map(|(name, p)| {
                    let view = ParamView {
                        required: p.required,
                        pattern: p.pattern.as_ref().map(|p| p.source.clone()),
                        default: p.default.clone(),
                    };
                    (name.clone(), view)
                })
                .collect(),
            active_from: job.schedule.active().from,
            active_until: job.schedule.active().until,
            after: job.after_words(),
            then: job.dependents.iter().map(|d| d.job.clone()).collect(),
            service: job.schedule.is_continuous().then(|| ServiceView {
                up_since: view_running_since,
                restarts: history
                    .iter()
                    .filter(|r| {
                        r.key.trigger == crate::model::Trigger::Service
                            && r.outcome.is_run()
                            && r.outcome != Outcome::Running
                    })
                    .count(),
            }),
        });
    }
    let view = match backend {
        Backend::Standalone(s) => ListView {
            mode: "standalone",
            state_dir: Some(s.root().display().to_string()),
            etcd_prefix: None,
            leader: s.leader()?,
            members: Vec::new(),
            config_hash: config_hash.to_string(),
            configs_differ: false,
            unreadable: s.unreadable_state_files()?,
            jobs,
        },
        Backend::Cluster(e) => ListView {
            mode: "cluster",
            state_dir: None,
            etcd_prefix: Some(e.config().cluster.prefix.clone()),
            leader: e.leader().await?,
            members: e.members().await?,
            config_hash: config_hash.to_string(),
            configs_differ: false,
            unreadable: Vec::new(),
            jobs,
        },
    };
    Ok(ListView {
        configs_differ: config_groups(&view.members).len() > 1,
        ..view
    })
}

/// Shown for a member that announces no config hash (an older bgsched).
pub const UNKNOWN_HASH: &str = "unknown";

/// Member names by announced config hash, in hash order.
pub fn config_groups(members: &[MemberInfo]) -> Vec<(&str, Vec<&str>)> {
    let mut groups: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for m in members {
        groups
            .entry(m.config_hash.as_deref().unwrap_or(UNKNOWN_HASH))
            .or_default()
            .push(&m.instance);
    }
    groups.into_iter().collect()
}
