//! Configuration: the job model, loading from TOML, and validation that
//! reports every problem at once with file, line:column and job name.

mod load;
mod notify;
mod tls;
mod tokens;

use crate::schedule::Schedule;
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use load::{load, load_str, read};
pub use notify::{
    Event, NotifySettings, Webhook, DEFAULT_WEBHOOK_RETRIES, DEFAULT_WEBHOOK_TIMEOUT,
};
pub use tls::{load_tls, ListenerTls};
pub use tokens::{Scope, Tokens};

/// Retention of run records per job when the config does not say.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;

/// A validated configuration file.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file the config was read from, as given.
    pub path: PathBuf,
    pub scheduler: SchedulerSettings,
    /// Jobs by name, sorted by name.
    pub jobs: BTreeMap<String, Job>,
    /// `[groups.<name>]`: concurrency groups, by name.
    pub groups: Groups,
    /// `[cluster]`: replicas coordinate through etcd instead of a local
    /// state directory. `None` means standalone.
    pub cluster: Option<ClusterSettings>,
    /// `[http]`: the observability endpoints of `bgsched run`.
    pub http: HttpSettings,
    /// `[notify]`: who is told when runs fail, recover or do not happen.
    pub notify: NotifySettings,
    /// `[member]` (and `run --label`): what this replica offers the
    /// leader's placement of `run_on` jobs.
    pub member: MemberSettings,
}

/// `[member]`: this replica as a place to run jobs whose `run_on` is not
/// `"leader"`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MemberSettings {
    /// `labels = { zone = "a" }`, merged with `bgsched run --label k=v`
    /// (the command line wins).
    pub labels: BTreeMap<String, String>,
    /// At most this many placed runs at once on this member; `None`: no bound.
    pub max_runs: Option<u32>,
}

impl MemberSettings {
    /// `labels` (from `bgsched run --label`) over these: each replaces the
    /// file's value of its key.
    pub fn merge_labels(&mut self, labels: &[(String, String)]) {
        self.labels.extend(labels.iter().cloned());
    }
}

/// Why `s` cannot be a label's name or value, if it cannot: labels are
/// matched exactly and shown in `check` and logs, so they are plain words
/// of `[A-Za-z0-9._-]`.
pub fn label_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("must not be empty".to_string());
    }
    let bad = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))?;
    Some(format!(
        "may hold only ASCII letters, digits, '.', '_' and '-', found {bad:?}"
    ))
}

/// `run_on`: which replica executes a job's runs (the leader always claims).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOn {
    /// The leader itself, as before placement existed.
    #[default]
    Leader,
    /// Any live member, the one with the fewest active runs.
    Any,
    /// A live member whose labels include all of these.
    Labels(BTreeMap<String, String>),
}

impl RunOn {
    /// Whether a member with `labels` may run the job.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            RunOn::Leader | RunOn::Any => true,
            RunOn::Labels(want) => want.iter().all(|(k, v)| labels.get(k) == Some(v)),
        }
    }
}

/// Labels in words, as `check`, `list` and the missed entries show them:
/// `gpu=true,zone=a`.
pub fn label_words(labels: &BTreeMap<String, String>) -> String {
    let words: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    words.join(",")
}

impl fmt::Display for RunOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunOn::Leader => f.write_str("leader"),
            RunOn::Any => f.write_str("any"),
            RunOn::Labels(l) => write!(f, "labels {}", label_words(l)),
        }
    }
}

/// Concurrency groups by name.
pub type Groups = BTreeMap<String, Group>;

/// `[groups.<name>]`: at most `limit` runs of the jobs that name this group
/// run at once, across all of them (and across the cluster).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub limit: u32,
}

impl Config {
    /// The group `job` belongs to, if any.
    pub fn group_of(&self, job: &Job) -> Option<&Group> {
        self.groups.get(job.group.as_deref()?)
    }

    /// Harmless oddities `check` and `run` mention: a group no job or only
    /// one job names limits nothing across jobs.
    pub fn group_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for g in self.groups.values() {
            let members: Vec<&str> = self
                .jobs
                .values()
                .filter(|j| j.group.as_deref() == Some(&g.name))
                .map(|j| j.name.as_str())
                .collect();
            match members.as_slice() {
                [] => out.push(format!("group \"{}\" has no jobs", g.name)),
                [one] => out.push(format!(
                    "group \"{}\" has one job (\"{one}\"); it limits only that job's own runs",
                    g.name
                )),
                _ => {}
            }
        }
        out
    }

    /// The job called `name`, or why not in words, with the closest names.
    pub fn job_named(&self, name: &str) -> Result<&Job, String> {
        if let Some(job) = self.jobs.get(name) {
            return Ok(job);
        }
        let mut close: Vec<(f64, &str)> = self
            .jobs
            .keys()
            .map(|k| (strsim::jaro_winkler(k, name), k.as_str()))
            .filter(|(score, _)| *score > 0.7)
            .collect();
        close.sort_by(|a, b| b.0.total_cmp(&a.0));
        let hint = match close.as_slice() {
            [] => format!(
                "; jobs in {}: {}",
                self.path.display(),
                self.jobs.keys().cloned().collect::<Vec<_>>().join(", ")
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
        Err(format!(
            "no job named \"{name}\" in {}{hint}",
            self.path.display()
        ))
    }
}

/// The `[http]` table. Off unless `listen` is set: an open port is a
/// decision for whoever deploys bgsched, not a default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpSettings {
    /// `listen`: an IP address and port, e.g. `127.0.0.1:9187`; port 0
    /// picks a free one (the bound address is logged).
    pub listen: Option<std::net::SocketAddr>,
    /// `tokens_file`, read at load time: who may call `/api/v1`. Without
    /// it the API is open and read-only.
    pub tokens: Option<Tokens>,
    /// The file the tokens came from, for messages.
    pub tokens_file: Option<PathBuf>,
    /// `cert_file` and `key_file`: serve HTTPS instead of HTTP.
    pub tls: Option<ListenerTls>,
}

/// The `[scheduler]` table: settings of the scheduler process itself.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerSettings {
    /// `state_dir`: where the standalone backend keeps locks and records.
    /// A relative path in the file has already been resolved against the
    /// config file's directory by [`load()`]; do not join it again.
    pub state_dir: Option<PathBuf>,
    /// `shutdown_grace` (default 30s): how long SIGTERM waits for running jobs.
    pub shutdown_grace: Duration,
    /// `history` (default 100): run records kept per job.
    pub history_limit: usize,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        SchedulerSettings {
            state_dir: None,
            shutdown_grace: Duration::from_secs(30),
            history_limit: DEFAULT_HISTORY_LIMIT,
        }
    }
}

/// The `[cluster]` table: how replicas reach etcd. Everything here has been
/// checked by [`load()`], including that the TLS files and the password
/// source can be read, so that a replica with a broken setup fails at start
/// with a located message instead of at its first connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSettings {
    /// `etcd`: never empty, each `http://host:port` or `https://host:port`
    /// (no trailing `/`), all with the same scheme because the client uses
    /// TLS for every endpoint or for none.
    pub endpoints: Vec<String>,
    /// `prefix` (default `/bgsched`): starts with `/` and does not end with
    /// one, so that keys are built as `{prefix}/...` and several
    /// deployments can share one etcd without seeing each other's keys.
    pub prefix: String,
    /// `lease_ttl` (default 10s, 2s to 10m, whole seconds as etcd grants
    /// them): how long a replica that stops renewing keeps leadership and
    /// its run locks, i.e. how long a failover takes. A replica renews
    /// several times per TTL and stops acting as leader before it expires,
    /// so the TTL must leave room for a few round trips to etcd.
    pub lease_ttl: Duration,
    /// `max_clock_skew` (default 1s, 100ms to 1m): how far this replica's
    /// wall clock may be from the median of the live members' clocks
    /// before it refuses to lead (see `coordination::etcd::ClockWatch`).
    pub max_clock_skew: Duration,
    /// `ca_file`: the CA that signed the servers' certificates, for a
    /// private CA; without it https endpoints are verified against the
    /// system roots. Like the other two files it has been resolved against
    /// the config file's directory; do not join it again.
    pub ca_file: Option<PathBuf>,
    /// `cert_file`: client certificate for etcd's mutual TLS; set exactly
    /// when `key_file` is.
    pub cert_file: Option<PathBuf>,
    /// `key_file`: the private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// `user`: the etcd user to authenticate as; set exactly when
    /// `password` is.
    pub user: Option<String>,
    /// Read from `password_env` or `password_file` at load time, because
    /// a password must not be written into a config file that is usually
    /// world-readable and kept in version control.
    pub password: Option<Secret>,
}

/// `prefix` when the config names none.
pub const DEFAULT_PREFIX: &str = "/bgsched";

/// `lease_ttl` when the config names none.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

/// `max_clock_skew` when the config names none.
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(1);

impl ClusterSettings {
    /// A cluster named on the command line only (`--etcd`): these
    /// endpoints, every other key at its default.
    pub fn with_defaults(endpoints: Vec<String>) -> Self {
        ClusterSettings {
            endpoints,
            prefix: DEFAULT_PREFIX.to_string(),
            lease_ttl: DEFAULT_LEASE_TTL,
            max_clock_skew: DEFAULT_MAX_CLOCK_SKEW,
            ca_file: None,
            cert_file: None,
            key_file: None,
            user: None,
            password: None,
        }
    }
}

/// A secret that never shows up in Debug/Display/logs/errors: configs are
/// printed with `{:?}` in logs and bug reports, and whoever needs the
/// value has to ask for it with [`Secret::expose`], where it is easy to
/// review.
/// It is serialized only into the spec a supervisor reads from its memfd.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(secret.into())
    }

    /// The secret itself, for handing to the etcd client; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// What to do when a tick comes while a run of the same job is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    /// The tick is recorded as skipped.
    #[default]
    Skip,
    /// Runs may overlap freely.
    Allow,
    /// At most one run waits for the active one to end, then starts; ticks
    /// beyond that are skipped.
    Queue,
    /// The active run is stopped (SIGTERM to its group, then SIGKILL after
    /// its `kill_grace`), then the new one starts.
    Replace,
}

impl fmt::Display for Overlap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Overlap::Skip => "skip",
            Overlap::Allow => "allow",
            Overlap::Queue => "queue",
            Overlap::Replace => "replace",
        })
    }
}

/// How the job's process is started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Program {
    /// `command = [...]`: argv, executed directly.
    Argv(Vec<String>),
    /// `shell = "..."`: run with `/bin/sh -c`.
    Shell(String),
}

impl Program {
    /// The argv actually executed.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Program::Argv(v) => v.clone(),
            Program::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
        }
    }
}

/// One validated job, with `[defaults]` already applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub name: String,
    pub description: Option<String>,
    pub schedule: Schedule,
    pub timezone: Tz,
    pub program: Program,
    /// A relative path in the file has already been resolved against the
    /// config file's directory by [`load()`]; do not join it again.
    pub working_dir: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
    pub timeout: Option<Duration>,
    pub overlap: Overlap,
    /// A tick missed by at most this much still fires once, late. Zero disables.
    pub catchup: Duration,
    pub kill_grace: Duration,
    pub enabled: bool,
    /// Failed or timed-out attempts retried after this run's first attempt.
    pub retries: u32,
    /// Wait before the first retry; doubles for each further one.
    pub retry_backoff: Duration,
    /// Upper bound of the doubling wait.
    pub retry_backoff_max: Duration,
    /// Scheduled runs start up to this much after their tick, by a delay
    /// derived from the job and the tick (see [`Job::jitter_for`]).
    pub jitter: Duration,
    /// argv run after a run ends failed, timed out, killed or lost.
    pub on_failure: Option<Vec<String>>,
    /// `[jobs.<name>.params]`: what a manual run may be given, by name.
    pub params: BTreeMap<String, Param>,
    /// The concurrency group (`group = "<name>"`) whose limit its runs count against.
    pub group: Option<String>,
    /// `after`: the upstream jobs whose runs' ends start this job.
    pub after: Vec<After>,
    /// `after_all`: it runs once all of `after` have ended so since its
    /// last run, instead of after each.
    pub after_all: bool,
    /// The jobs whose `after` names this job (computed at load).
    pub dependents: Vec<crate::model::Dependent>,
    /// `run_on`: where its runs execute in a cluster (standalone: here).
    pub run_on: RunOn,
}

/// One upstream job of `after`, and which of its ends count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct After {
    pub job: String,
    pub on: crate::model::On,
}

impl Job {
    /// `after` in words: "after extract", "after extract (on failure)",
    /// "after all of extract, transform".
    pub fn after_words(&self) -> Option<String> {
        if self.after.is_empty() {
            return None;
        }
        let names: Vec<String> = self
            .after
            .iter()
            .map(|a| match a.on {
                crate::model::On::Success => a.job.clone(),
                on => format!("{} (on {on})", a.job),
            })
            .collect();
        Some(match self.after_all {
            true => format!("after all of {}", names.join(", ")),
            false => format!("after {}", names.join(", ")),
        })
    }

    /// When the job runs, in one line: its schedule, its `after`, or both.
    pub fn when_words(&self) -> String {
        match (self.schedule.is_none(), self.after_words()) {
            (true, Some(after)) => after,
            (false, Some(after)) => format!("{}; {after}", self.schedule.as_str()),
            (_, None) => self.schedule.as_str().into_owned(),
        }
    }

    /// The jitter delay of the run for `tick`: the same on every replica
    /// and every retry of the claim, spread evenly over `[0, jitter]`.
    pub fn jitter_for(&self, tick: chrono::DateTime<chrono::Utc>) -> Duration {
        let range = self.jitter.as_millis() as u64;
        if range == 0 {
            return Duration::ZERO;
        }
        let mut key = self.name.as_bytes().to_vec();
        key.push(0);
        key.extend(tick.timestamp_millis().to_le_bytes());
        Duration::from_millis(fnv1a(&key) % (range + 1))
    }
}

/// One declared parameter of a job (`[jobs.<name>.params]`). A manual run
/// may carry only declared parameters, each matching its pattern, so a
/// caller cannot set arbitrary environment variables of the job.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Param {
    /// A run without it is refused (unless it has a default).
    pub required: bool,
    /// The whole value must match.
    pub pattern: Option<Pattern>,
    /// Taken when a run does not give the parameter.
    pub default: Option<String>,
}

/// A parameter's pattern: a regular expression the whole value must match.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// As written in the config, for messages.
    pub source: String,
    anchored: regex::Regex,
}

impl Pattern {
    pub fn new(source: &str) -> Result<Pattern, regex::Error> {
        // Anchored whatever the config wrote: "[0-9]+" must not let
        // "1; rm -rf /" through because it contains a digit.
        let anchored = regex::Regex::new(&format!("^(?:{source})$"))?;
        Ok(Pattern {
            source: source.to_string(),
            anchored,
        })
    }

    pub fn matches(&self, value: &str) -> bool {
        self.anchored.is_match(value)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// The longest value a parameter may have: it becomes an environment
/// variable, and the whole record travels through etcd.
pub const MAX_PARAM_VALUE: usize = 16 * 1024;

/// The environment variable that carries parameter `name` to the job.
pub fn param_env_name(name: &str) -> String {
    format!("BGSCHED_PARAM_{}", name.to_ascii_uppercase())
}

/// Why the parameters given to a manual run are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParamError(pub String);

impl Job {
    /// The parameters of a manual run given `given`: each declared, each
    /// matching its pattern, required ones present, defaults filled in.
    pub fn resolve_params(
        &self,
        given: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, ParamError> {
        for name in given.keys() {
            if !self.params.contains_key(name) {
                let declared = if self.params.is_empty() {
                    "it declares none ([jobs.NAME.params])".to_string()
                } else {
                    let names: Vec<&str> = self.params.keys().map(String::as_str).collect();
                    format!("it declares {}", names.join(", "))
                };
                return Err(ParamError(format!(
                    "job \"{}\" has no parameter \"{name}\"; {declared}",
                    self.name
                )));
            }
        }
        let mut out = BTreeMap::new();
        for (name, param) in &self.params {
            let value = match (given.get(name), &param.default) {
                (Some(v), _) => v.clone(),
                (None, Some(d)) => d.clone(),
                (None, None) if param.required => {
                    return Err(ParamError(format!(
                        "job \"{}\" requires parameter \"{name}\"",
                        self.name
                    )))
                }
                (None, None) => continue,
            };
            if value.len() > MAX_PARAM_VALUE {
                return Err(ParamError(format!(
                    "parameter \"{name}\" is {} bytes long; at most {MAX_PARAM_VALUE} are allowed",
                    value.len()
                )));
            }
            if value.contains('\0') {
                return Err(ParamError(format!(
                    "parameter \"{name}\" must not contain a NUL byte"
                )));
            }
            if let Some(p) = &param.pattern {
                if !p.matches(&value) {
                    return Err(ParamError(format!(
                        "parameter \"{name}\" = {value:?} does not match its pattern {:?}",
                        p.source
                    )));
                }
            }
            out.insert(name.clone(), value);
        }
        Ok(out)
    }
}

/// FNV-1a: a hash that stays the same across Rust releases and machines, for
/// directory names and for values every replica must derive alike.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

/// One problem in a config file, located as precisely as the input allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based; 0 when the problem has no position (e.g. the file is missing).
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub job: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        write!(f, ": ")?;
        if let Some(job) = &self.job {
            write!(f, "job \"{job}\": ")?;
        }
        write!(f, "{}", self.message)
    }
}

/// Every problem found in one config file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// The directory relative paths in the config are resolved against.
    pub fn base_dir(&self) -> &Path {
        base_dir(&self.path)
    }
}

/// [`Config::base_dir`] for a config file at `path`, for use while the
/// [`Config`] is still being built.
fn base_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}
