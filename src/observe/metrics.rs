//! The metrics of one `bgsched run`, in a prometheus-client registry.
//!
//! Everything is observed in the scheduler process. Runs end in their
//! supervisors (separate processes), which report the outcome on their
//! stdout (see `executor::report`); the scheduler observes it when it reaps
//! them, so no metric depends on a process that `/metrics` cannot see.

use crate::model::{Outcome, Trigger};
use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    job: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabels {
    job: String,
    trigger: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SkipLabels {
    job: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChangeLabels {
    change: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    event: String,
    webhook: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabels {
    member: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn run_buckets() -> Histogram {
    // Jobs run from milliseconds to hours.
    Histogram::new([
        0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
    ])
}

fn lateness_buckets() -> Histogram {
    // On time is a few milliseconds to a few hundred; catch-up fires are
    // up to `catchup` late, a minute by default.
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ])
}

fn etcd_buckets() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ])
}

/// The metrics of one scheduler process, shared by handle (`Arc<Metrics>`).
pub struct Metrics {
    registry: Registry,
    runs: Family<OutcomeLabels, Counter>,
    run_duration: Histograms<JobLabels>,
    lateness: Histograms<TriggerLabels>,
    skipped: Family<SkipLabels, Counter>,
    missed: Family<JobLabels, Counter>,
    catchup: Family<JobLabels, Counter>,
    retries: Family<JobLabels, Counter>,
    is_leader: Gauge,
    term: Gauge,
    leadership_changes: Family<ChangeLabels, Counter>,
    claims_rejected: Family<ReasonLabels, Counter>,
    running: Gauge,
    etcd_latency: Histograms<OpLabels>,
    etcd_errors: Family<OpLabels, Counter>,
    config_generation: Gauge,
    config_reload_ok: Gauge,
    state_files_corrupt: Counter,
    overloaded: Family<JobLabels, Counter>,
    clock_skew: Gauge<f64, AtomicU64>,
    clock_steps_back: Counter,
    last_tick_ahead: Family<JobLabels, Counter>,
    webhook_attempts: Family<WebhookLabels, Counter>,
    webhooks_undelivered: Family<WebhookLabels, Counter>,
    member_active_runs: Family<MemberLabels, Gauge>,
    placements: Family<MemberLabels, Counter>,
    /// Milliseconds after `born` of the scheduler loop's last turn.
    heartbeat: AtomicU64,
    born: Instant,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("bgsched"),
            runs: Family::default(),
            run_duration: Family::new_with_constructor(run_buckets),
            lateness: Family::new_with_constructor(lateness_buckets),
            skipped: Family::default(),
            missed: Family::default(),
            catchup: Family::default(),
            retries: Family::default(),
            is_leader: Gauge::default(),
            term: Gauge::default(),
            leadership_changes: Family::default(),
            claims_rejected: Family::default(),
            running: Gauge::default(),
            etcd_latency: Family::new_with_constructor(etcd_buckets),
            etcd_errors: Family::default(),
            config_generation: Gauge::default(),
            config_reload_ok: Gauge::default(),
            state_files_corrupt: Counter::default(),
            overloaded: Family::default(),
            clock_skew: Gauge::default(),
            clock_steps_back: Counter::default(),
            last_tick_ahead: Family::default(),
            webhook_attempts: Family::default(),
            webhooks_undelivered: Family::default(),
            member_active_runs: Family::default(),
            placements: Family::default(),
            heartbeat: AtomicU64::new(0),
            born: Instant::now(),
        };
        let r = &mut m.registry;
        r.register(
            "runs",
            "Finished runs started by this instance, by job and outcome",
            m.runs.clone(),
        );
        r.register_with_unit(
            "run_duration",
            "Duration of finished runs (the supervisor's measure), by job",
            Unit::Seconds,
            m.run_duration.clone(),
        );
        r.register_with_unit(
            "fire_lateness",
            "From the tick to the moment the job's process had started, by job and trigger",
            Unit::Seconds,
            m.lateness.clone(),
        );
        r.register(
            "skipped_ticks",
            "Ticks not run because of the overlap policy, by job and reason",
            m.skipped.clone(),
        );
        r.register(
            "missed_ticks",
            "Ticks that passed while nothing fired and were not caught up, by job",
            m.missed.clone(),
        );
        r.register(
            "catchup_fires",
            "Late fires of the newest missed tick (trigger catchup), by job",
            m.catchup.clone(),
        );
        r.register(
            "retries",
            "Attempts after the first of failed runs (retries = N), by job",
            m.retries.clone(),
        );
        r.register(
            "member_active_runs",
            "Cluster: the active runs each member executes, as this instance sees the running markers",
            m.member_active_runs.clone(),
        );
        r.register(
            "placements",
            "Cluster: runs this instance's claims placed on another member (run_on), by member",
            m.placements.clone(),
        );
        r.register(
            "is_leader",
            "1 while this instance leads (fires jobs), else 0",
            m.is_leader.clone(),
        );
        r.register(
            "leader_term",
            "The leadership term this instance holds (the fencing token), 0 while standing by",
            m.term.clone(),
        );
        r.register(
            "leadership_changes",
            "This instance gaining (acquired) or giving up (lost, resigned) leadership",
            m.leadership_changes.clone(),
        );
        r.register(
            "claims_rejected",
            "Fire claims refused, by reason",
            m.claims_rejected.clone(),
        );
        r.register(
            "running_jobs",
            "Runs whose supervisor this instance started and that have not ended",
            m.running.clone(),
        );
        r.register_with_unit(
            "etcd_request_duration",
            "etcd gRPC calls by operation, to the response headers (for streams: opening them)",
            Unit::Seconds,
            m.etcd_latency.clone(),
        );
        r.register(
            "etcd_request_errors",
            "etcd gRPC calls that failed (transport error or non-OK status), by operation",
            m.etcd_errors.clone(),
        );
        r.register(
            "config_generation",
            "How many times a config was loaded (1 at start)",
            m.config_generation.clone(),
        );
        r.register(
            "config_last_reload_success",
            "1 if the last config load succeeded, else 0",
            m.config_reload_ok.clone(),
        );
        r.register(
            "state_files_corrupt",
            "Unreadable files of the standalone state directory this scheduler set aside as *.corrupt",
            m.state_files_corrupt.clone(),
        );
        r.register(
            "overloaded_ticks",
            "Ticks this leader could not start in time and recorded missed (reason overloaded), by job; also counted in missed_ticks",
            m.overloaded.clone(),
        );
        r.register_with_unit(
            "clock_skew",
            "Cluster: this replica's wall clock minus the median of the live members' clocks (0 until measured)",
            Unit::Seconds,
            m.clock_skew.clone(),
        );
        r.register(
            "clock_steps_back",
            "Times the fire loop found the wall clock stepped back (beyond 1s) since its previous turn",
            m.clock_steps_back.clone(),
        );
        r.register(
            "last_tick_ahead",
            "Times a job's last fired tick was found ahead of this instance's clock (beyond the tolerance), by job",
            m.last_tick_ahead.clone(),
        );
        r.register(
            "webhook_attempts",
            "Webhook delivery attempts ([notify]), by event, webhook (scheme://host:port) and result (delivered, failed)",
            m.webhook_attempts.clone(),
        );
        r.register(
            "webhooks_undelivered",
            "Webhook notifications given up, by event, webhook and result (retries_exhausted, refused, queue_full, no_client)",
            m.webhooks_undelivered.clone(),
        );
        m.set_config(1, true);
        m.beat();
        m
    }

    /// The registry in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The registry in the Prometheus text format 0.0.4, for scrapers
    /// that do not ask for OpenMetrics (promtool, older Prometheus, most
    /// agents). prometheus-client writes only OpenMetrics, whose counter
    /// families are named without `_total`; 0.0.4 names the samples' metric
    /// in HELP and TYPE and has no UNIT or EOF lines.
    pub fn encode_prometheus(&self) -> String {
        openmetrics_to_prometheus(&self.encode())
    }

    /// One delivery attempt for `event` to `webhook` (as logs show it)
    /// ended: `delivered` or `failed`.
    pub fn webhook_attempt(&self, event: &str, webhook: &str, result: &str) {
        self.webhook_attempts
            .get_or_create(&WebhookLabels {
                event: event.to_string(),
                webhook: webhook.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    /// A notification for `event` to `webhook` will not be delivered, and why.
    pub fn webhook_undelivered(&self, event: &str, webhook: &str, result: &str) {
        self.webhooks_undelivered
            .get_or_create(&WebhookLabels {
                event: event.to_string(),
                webhook: webhook.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    /// A fire's job process is running (its supervisor reported its pid).
    pub fn run_started(&self, job: &str, tick: DateTime<Utc>, trigger: Trigger) {
        let late = (Utc::now() - tick).to_std().unwrap_or_default();
        self.lateness
            .get_or_create(&TriggerLabels {
                job: job.to_string(),
                trigger: trigger.to_string(),
            })
            .observe(late.as_secs_f64());
    }

    /// A run ended; `None`: its supervisor died without reporting, so the
    /// run is lost.
    pub fn run_ended(&self, job: &str, ended: Option<(Outcome, Duration)>) {
        let outcome = ended.map_or(Outcome::Lost, |e| e.0);
        self.runs
            .get_or_create(&OutcomeLabels {
                job: job.to_string(),
                outcome: outcome_label(outcome),
            })
            .inc();
        if let Some((_, took)) = ended {
            self.run_duration
                .get_or_create(&JobLabels {
                    job: job.to_string(),
                })
                .observe(took.as_secs_f64());
        }
    }

    pub fn is_leader(&self) -> bool {
        self.is_leader.get() == 1
    }

    /// A supervisor was started for a fire.
    pub fn fired(&self, job: &str, trigger: Trigger) {
        if trigger == Trigger::Catchup {
            self.catchup
                .get_or_create(&JobLabels {
                    job: job.to_string(),
                })
                .inc();
        }
    }

    /// A failed run's supervisor started another attempt.
    pub fn retried(&self, job: &str) {
        self.retries
            .get_or_create(&JobLabels {
                job: job.to_string(),
            })
            .inc();
    }

    pub fn skipped(&self, job: &str, reason: &str) {
        self.skipped
            .get_or_create(&SkipLabels {
                job: job.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn missed(&self, job: &str, ticks: u64) {
        self.missed
            .get_or_create(&JobLabels {
                job: job.to_string(),
            })
            .inc_by(ticks);
    }

    /// Ticks dropped for overload (already counted by [`Self::missed`]).
    pub fn overloaded(&self, job: &str, ticks: u64) {
        self.overloaded
            .get_or_create(&JobLabels {
                job: job.to_string(),
            })
            .inc_by(ticks);
    }

    /// Per member: its active runs (read from the backend when scraped).
    pub fn set_members(&self, members: &[(String, usize)]) {
        self.member_active_runs.clear();
        for (member, active) in members {
            self.member_active_runs
                .get_or_create(&MemberLabels {
                    member: member.clone(),
                })
                .set(i64::try_from(*active).unwrap_or(i64::MAX));
        }
    }

    /// A claim of this instance placed a run on `member`.
    pub fn placed(&self, member: &str) {
        self.placements
            .get_or_create(&MemberLabels {
                member: member.to_string(),
            })
            .inc();
    }

    pub fn set_clock_skew(&self, seconds: f64) {
        self.clock_skew.set(seconds);
    }

    pub fn clock_stepped_back(&self) {
        self.clock_steps_back.inc();
    }

    pub fn last_tick_ahead(&self, job: &str) {
        self.last_tick_ahead
            .get_or_create(&JobLabels {
                job: job.to_string(),
            })
            .inc();
    }

    pub fn claim_rejected(&self, reason: &str) {
        self.claims_rejected
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn leading(&self, term: u64) {
        self.is_leader.set(1);
        self.term.set(i64::try_from(term).unwrap_or(i64::MAX));
        self.leadership_change("acquired");
    }

    /// Leadership ended: `how` is `lost` or `resigned`.
    pub fn not_leading(&self, how: &str) {
        self.is_leader.set(0);
        self.term.set(0);
        self.leadership_change(how);
    }

    fn leadership_change(&self, change: &str) {
        self.leadership_changes
            .get_or_create(&ChangeLabels {
                change: change.to_string(),
            })
            .inc();
    }

    /// A corrupt state file was set aside (standalone).
    pub fn state_file_corrupt(&self) {
        self.state_files_corrupt.inc();
    }

    pub fn supervisor_started(&self) {
        self.running.inc();
    }

    pub fn supervisor_ended(&self) {
        self.running.dec();
    }

    /// One etcd call, `op` being its gRPC method (`Range`, `Txn`, ...).
    pub fn etcd_request(&self, op: &str, took: Duration, ok: bool) {
        let labels = OpLabels { op: op.to_string() };
        self.etcd_latency
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if !ok {
            self.etcd_errors.get_or_create(&labels).inc();
        }
    }

    /// For the config loader: which load is in force and whether the last
    /// attempt to load one succeeded.
    pub fn set_config(&self, generation: u64, last_load_ok: bool) {
        self.config_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        self.config_reload_ok.set(i64::from(last_load_ok));
    }

    /// The scheduler loop turned.
    pub fn beat(&self) {
        let ms = self.born.elapsed().as_millis();
        self.heartbeat
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// How long ago the scheduler loop last turned.
    pub fn since_beat(&self) -> Duration {
        let at = Duration::from_millis(self.heartbeat.load(Ordering::Relaxed));
        self.born.elapsed().saturating_sub(at)
    }
}

/// Rewrite OpenMetrics text (as prometheus-client writes it: HELP, TYPE
/// and UNIT before each family's samples) into text format 0.0.4.
fn openmetrics_to_prometheus(text: &str) -> String {
    // Each family's metadata lines, held until its TYPE says how to name it.
    let mut pending: Vec<&str> = Vec::new();
    let mut out = String::with_capacity(text.len());
    let flush = |pending: &mut Vec<&str>, out: &mut String| {
        let is_counter = pending
            .iter()
            .any(|l| l.starts_with("# TYPE ") && l.ends_with(" counter"));
        for line in pending.drain(..) {
            let mut parts = line.splitn(4, ' ');
            let (hash, kind, name, rest) = (
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
                parts.next(),
            );
            let rest = match (kind, rest) {
                // 0.0.4 has no `unknown` type, only `untyped`.
                ("TYPE", Some("unknown")) => "untyped",
                (_, Some(rest)) => rest,
                (_, None) => "",
            };
            let suffix = if is_counter && !name.ends_with("_total") {
                "_total"
            } else {
                ""
            };
            out.push_str(&format!("{hash} {kind} {name}{suffix} {rest}\n"));
        }
    };
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            pending.push(line);
            continue;
        }
        flush(&mut pending, &mut out);
        out.push_str(line);
        out.push('\n');
    }
    flush(&mut pending, &mut out);
    out
}

/// An outcome as a label value: the snake_case name records use.
pub fn outcome_label(outcome: Outcome) -> String {
    match serde_json::to_value(outcome) {
        Ok(serde_json::Value::String(s)) => s,
        _ => outcome.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_labels_show_in_the_text_format() {
        let m = Metrics::new();
        m.run_ended("a", Some((Outcome::TimedOut, Duration::from_millis(1500))));
        m.run_ended("a", None);
        m.skipped("a", "still_running");
        m.missed("a", 3);
        m.overloaded("a", 2);
        m.set_clock_skew(-0.25);
        m.clock_stepped_back();
        m.last_tick_ahead("a");
        m.leading(42);
        m.etcd_request("Txn", Duration::from_millis(3), false);
        let text = m.encode();
        for want in [
            r#"bgsched_runs_total{job="a",outcome="timed_out"} 1"#,
            r#"bgsched_runs_total{job="a",outcome="lost"} 1"#,
            r#"bgsched_run_duration_seconds_count{job="a"} 1"#,
            r#"bgsched_skipped_ticks_total{job="a",reason="still_running"} 1"#,
            r#"bgsched_missed_ticks_total{job="a"} 3"#,
            r#"bgsched_overloaded_ticks_total{job="a"} 2"#,
            "bgsched_clock_skew_seconds -0.25",
            "bgsched_clock_steps_back_total 1",
            r#"bgsched_last_tick_ahead_total{job="a"} 1"#,
            "bgsched_is_leader 1",
            "bgsched_leader_term 42",
            r#"bgsched_leadership_changes_total{change="acquired"} 1"#,
            r#"bgsched_etcd_request_errors_total{op="Txn"} 1"#,
            "bgsched_config_generation 1",
            "bgsched_config_last_reload_success 1",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
    }

    #[test]
    fn the_prometheus_text_names_counters_with_total_and_has_no_openmetrics_lines() {
        let m = Metrics::new();
        m.run_ended("a", Some((Outcome::Success, Duration::from_millis(5))));
        let text = m.encode_prometheus();
        for want in [
            "# HELP bgsched_runs_total Finished runs started by this instance, by job and outcome.\n\
             # TYPE bgsched_runs_total counter\n\
             bgsched_runs_total{job=\"a\",outcome=\"success\"} 1\n",
            "# TYPE bgsched_run_duration_seconds histogram\n",
            "# TYPE bgsched_is_leader gauge\nbgsched_is_leader 0\n",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
    }

    #[test]
    fn the_heartbeat_ages() {
        let m = Metrics::new();
        assert!(m.since_beat() < Duration::from_secs(5));
    }
}
