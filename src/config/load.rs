//! Reading and validating a config file.
//!
//! The file is parsed with toml's span-keeping document API ([`DeTable`])
//! instead of serde: serde stops at the first problem and forgets where things
//! were, while users need every mistake at once, each with line:column. So the
//! checks below walk the parsed tree themselves, keep going after a problem,
//! and only build a [`Config`] when nothing was found.

use super::{
    base_dir, ClusterSettings, Config, ConfigError, ConfigErrors, HttpSettings, Job, Overlap,
    Program, SchedulerSettings, Secret,
};
use crate::schedule::{duration_reason, quoted, shown, Schedule};
use chrono_tz::Tz;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::env::VarError;
use std::fs::File;
use std::io::Read;
use std::net::Ipv6Addr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use toml::de::{DeString, DeTable, DeValue};
use toml::Spanned;

/// Large enough for 100,000 jobs (about 20 MiB of TOML); anything bigger is
/// the wrong file, and refusing it early bounds the parser's memory.
const MAX_FILE_SIZE: usize = 32 * 1024 * 1024;

/// toml caps nesting at 80 levels per construct, but the caps multiply (80
/// nested inline tables, each with an 80-part dotted key, make ~6,400 nested
/// tables) and building and dropping that tree recurses: about 8 MiB of stack
/// in a debug build, more than a test thread or a tokio worker has. Parsing
/// runs on a thread of its own with this much headroom; only the pages
/// actually touched are committed.
const PARSE_STACK_SIZE: usize = 64 * 1024 * 1024;

const MAX_JOB_NAME_LEN: usize = 128;
const HISTORY_RANGE: RangeInclusive<i64> = 1..=100_000;
/// Longer than any sensible timeout or grace period; a larger value is a
/// typo (a missing unit separator, an extra digit), not an intent.
const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);
/// Past this, the file is most likely not a config at all.
const MAX_SYNTAX_ERRORS: usize = 20;

const DEFAULT_CATCHUP: Duration = Duration::from_secs(60);
const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(10);
const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_secs(10);
/// The cap of the doubling retry wait when `retry_backoff_max` is unset.
const DEFAULT_RETRY_BACKOFF_MAX: Duration = Duration::from_secs(600);
/// Retries of one run, at most: more is a loop, not a retry policy.
const RETRIES_RANGE: RangeInclusive<i64> = 0..=100;

const DEFAULT_PREFIX: &str = "/bgsched";
/// Every etcd key starts with the prefix; a longer one is a pasted mistake.
const MAX_PREFIX_LEN: usize = 256;
const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// A replica renews its lease several times per TTL and stops acting as
/// leader well before it expires: below 2s one slow round trip to etcd costs
/// the leadership; above 10m a crashed leader stalls every schedule that long.
const LEASE_TTL_RANGE: RangeInclusive<Duration> =
    Duration::from_secs(2)..=Duration::from_secs(10 * 60);
const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(1);
/// Skew is measured through etcd watch events, whose delivery takes a few
/// milliseconds and, on a loaded host, up to about a hundred: a tighter
/// bound would take correct clocks for skewed ones. A looser one than a
/// minute lets ticks fire a minute off, which no schedule means.
const MAX_CLOCK_SKEW_RANGE: RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(60);
/// In cluster mode the default catchup covers a failover: the next leader
/// takes over up to one lease TTL after the old one died, plus this much to
/// notice, start up and read the state.
const FAILOVER_MARGIN: Duration = Duration::from_secs(10);
const EXAMPLE_ENDPOINT: &str = "http://10.0.0.5:2379";
/// etcd's client port, suggested when an endpoint has none.
const ETCD_CLIENT_PORT: u16 = 2379;
/// A password file holds one line; anything this big is the wrong file
/// (or a device like /dev/zero, which would never end).
const MAX_PASSWORD_FILE_SIZE: u64 = 64 * 1024;

/// Read and validate the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_str(path, &read(path)?)
}

/// The bytes of the config file at `path`, refusing files over the size
/// limit; separate from [`load`] for callers that also hash them (reload).
pub fn read(path: &Path) -> Result<Vec<u8>, ConfigErrors> {
    let unreadable = |reason: String| {
        ConfigErrors(vec![ConfigError {
            file: path.display().to_string(),
            line: 0,
            column: 0,
            job: None,
            message: format!("cannot read config file: {reason}"),
        }])
    };
    let file = std::fs::File::open(path).map_err(|e| unreadable(e.to_string()))?;
    // One byte past the limit is enough to see it is too big.
    let mut bytes = Vec::new();
    (&file)
        .take(MAX_FILE_SIZE as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| unreadable(e.to_string()))?;
    if bytes.len() > MAX_FILE_SIZE {
        // What was read is only the limit plus one; the file's size is in its
        // metadata, unless it is a pipe or a device that has none.
        let size = file
            .metadata()
            .ok()
            .map(|m| m.len())
            .filter(|len| *len > MAX_FILE_SIZE as u64);
        return Err(ConfigErrors(vec![too_large(path, size)]));
    }
    Ok(bytes)
}

/// The error for a file over [`MAX_FILE_SIZE`], with its `size` in bytes if
/// known.
fn too_large(path: &Path, size: Option<u64>) -> ConfigError {
    let limit = MAX_FILE_SIZE / (1024 * 1024);
    let size = match size {
        Some(bytes) => format!("{bytes} bytes"),
        None => format!("more than {limit} MiB"),
    };
    ConfigError {
        file: path.display().to_string(),
        line: 0,
        column: 0,
        job: None,
        message: format!("file is too large ({size}; a config file may be at most {limit} MiB)"),
    }
}

/// Validate config text; `path` is used for error locations and as the base
/// directory of relative paths.
///
/// With a `[cluster]` table this also opens its TLS files and reads the etcd
/// password from its file or environment variable, so that a broken setup
/// is reported now, located, rather than at the first connect.
pub fn load_str(path: &Path, text: &[u8]) -> Result<Config, ConfigErrors> {
    if text.len() > MAX_FILE_SIZE {
        return Err(ConfigErrors(vec![too_large(path, Some(text.len() as u64))]));
    }
    let file = path.display().to_string();
    let text = match std::str::from_utf8(text) {
        Ok(text) => text,
        Err(e) => return Err(ConfigErrors(vec![not_utf8(file, text, e)])),
    };
    on_big_stack(|| check(path, text))
}

/// Nothing can be parsed reliably past a bad byte, so this is the only error
/// reported for such a file.
fn not_utf8(file: String, bytes: &[u8], e: std::str::Utf8Error) -> ConfigError {
    let valid = std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default();
    let (line, column) = Lines::new(valid).position(valid.len());
    let bad = bytes[e.valid_up_to()];
    let utf16 = if bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]) {
        "; it looks like UTF-16, save it as UTF-8"
    } else {
        ""
    };
    ConfigError {
        file,
        line,
        column,
        job: None,
        message: format!("file is not valid UTF-8 (byte 0x{bad:02X} here){utf16}"),
    }
}

/// Runs `f` on a thread with [`PARSE_STACK_SIZE`] of stack, or right here if
/// no thread can be started (better a possible overflow on absurd input than
/// no config at all).
fn on_big_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    // Shared by both paths; whichever runs first takes the closure.
    let slot = Mutex::new(Some(f));
    let run = || {
        let f = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        f.map(|f| f())
    };
    std::thread::scope(|scope| {
        let on_thread = std::thread::Builder::new()
            .name("config-load".into())
            .stack_size(PARSE_STACK_SIZE)
            .spawn_scoped(scope, run)
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p))
            });
        match on_thread {
            Ok(Some(result)) => result,
            _ => run().expect("the closure runs on the thread or here"),
        }
    })
}

fn check(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let mut r = Report::new(path, text);
    let (doc, syntax_errors) = DeTable::parse_recoverable(text);
    if !syntax_errors.is_empty() {
        // The recovered tree may lack whole tables, so checking it would
        // add bogus "missing schedule" errors: syntax comes first.
        r.syntax_errors(syntax_errors);
        return Err(r.into_errors());
    }

    let top = Fields::of(&mut r, doc.get_ref(), Section::Top);
    let scheduler = top
        .get("scheduler")
        .map(|item| scheduler(&mut r, item))
        .unwrap_or_default();
    let cluster = top
        .get("cluster")
        .and_then(|item| cluster(&mut r, item, base_dir(path)));
    let http = top
        .get("http")
        .map(|item| http(&mut r, item))
        .unwrap_or_default();
    let built_in = Defaults {
        catchup: default_catchup(cluster.as_ref()),
        ..Defaults::default()
    };
    let defaults = match top.get("defaults") {
        Some(item) => defaults(&mut r, item, built_in),
        None => built_in,
    };
    let jobs = top
        .get("jobs")
        .map(|item| jobs(&mut r, item, &defaults))
        .unwrap_or_default();

    if r.has_errors() {
        return Err(r.into_errors());
    }
    let mut config = Config {
        path: path.to_path_buf(),
        scheduler,
        jobs,
        cluster,
        http,
    };
    resolve_relative_paths(&mut config);
    Ok(config)
}

/// Paths are resolved here, once, so that nothing downstream depends on the
/// process's working directory or has to remember to do it. (The files of
/// `[cluster]` are resolved while they are checked, since they are read.)
fn resolve_relative_paths(config: &mut Config) {
    let base = config.base_dir().to_path_buf();
    let resolve = |p: &mut PathBuf| *p = resolved(&base, std::mem::take(p));
    if let Some(dir) = &mut config.scheduler.state_dir {
        resolve(dir);
    }
    for job in config.jobs.values_mut() {
        if let Some(dir) = &mut job.working_dir {
            resolve(dir);
        }
    }
}

fn resolved(base: &Path, path: PathBuf) -> PathBuf {
    if path.is_relative() {
        base.join(path)
    } else {
        path
    }
}

// ---------------------------------------------------------------------------
// Sections

/// The tables whose keys are checked, for unknown-key messages and for
/// pointing a key that is in the wrong table to the right one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Section {
    Top,
    Scheduler,
    Defaults,
    Job,
    Cluster,
    Http,
}

impl Section {
    fn keys(self) -> &'static [&'static str] {
        match self {
            Section::Top => &["scheduler", "defaults", "jobs", "cluster", "http"],
            Section::Scheduler => &["state_dir", "shutdown_grace", "history"],
            Section::Defaults => &[
                "timezone",
                "overlap",
                "timeout",
                "catchup",
                "kill_grace",
                "retries",
                "retry_backoff",
                "retry_backoff_max",
                "jitter",
                "on_failure",
            ],
            Section::Job => &[
                "description",
                "schedule",
                "timezone",
                "command",
                "shell",
                "working_dir",
                "env",
                "timeout",
                "enabled",
                "overlap",
                "catchup",
                "kill_grace",
                "retries",
                "retry_backoff",
                "retry_backoff_max",
                "jitter",
                "on_failure",
            ],
            Section::Cluster => &[
                "etcd",
                "prefix",
                "lease_ttl",
                "max_clock_skew",
                "ca_file",
                "cert_file",
                "key_file",
                "user",
                "password_env",
                "password_file",
            ],
            Section::Http => &["listen"],
        }
    }

    /// Names people bring along from elsewhere (mostly etcdctl's flags) that
    /// neither edit distance nor a shared prefix would map.
    fn alias(self, key: &str) -> Option<&'static str> {
        let aliases: &[(&str, &'static str)] = match self {
            Section::Cluster => &[
                ("endpoints", "etcd"),
                ("endpoint", "etcd"),
                ("ttl", "lease_ttl"),
                ("cacert", "ca_file"),
            ],
            Section::Http => &[
                ("address", "listen"),
                ("addr", "listen"),
                ("bind", "listen"),
                ("port", "listen"),
            ],
            _ => &[],
        };
        aliases
            .iter()
            .find(|(alias, _)| alias.eq_ignore_ascii_case(key))
            .map(|(_, known)| *known)
    }

    fn title(self) -> &'static str {
        match self {
            Section::Top => "the top level",
            Section::Scheduler => "[scheduler]",
            Section::Defaults => "[defaults]",
            Section::Job => "a job table ([jobs.<name>])",
            Section::Cluster => "[cluster]",
            Section::Http => "[http]",
        }
    }

    fn unknown_key(self, key: &str) -> String {
        let shown = shown(key);
        let what = match self {
            Section::Top => format!("unknown top-level key `{shown}`"),
            Section::Scheduler | Section::Defaults | Section::Cluster | Section::Http => {
                format!("unknown key `{shown}` in {}", self.title())
            }
            // The job is already named in the error's prefix.
            Section::Job => format!("unknown key `{shown}`"),
        };
        // `user` or `prefix` in a job most likely means something else
        // than the cluster settings of that name.
        let cluster_is_a_home = matches!(self, Section::Top | Section::Scheduler);
        let homes: Vec<&str> = [
            Section::Scheduler,
            Section::Defaults,
            Section::Job,
            Section::Cluster,
            Section::Http,
        ]
        .into_iter()
        .filter(|s| *s != self && (*s != Section::Cluster || cluster_is_a_home))
        .filter(|s| s.keys().contains(&key))
        .map(Section::title)
        .collect();
        if !homes.is_empty() {
            return format!("{what}; `{shown}` belongs in {}", homes.join(" or "));
        }
        if self == Section::Cluster && key.eq_ignore_ascii_case("password") {
            return format!(
                "{what}; keep the password out of the config: set password_env \
                 (the name of an environment variable holding it) or password_file \
                 (a file holding it)"
            );
        }
        if let Some(known) = self.alias(key) {
            return format!("{what}; did you mean `{known}`?");
        }
        if let Some(close) = did_you_mean(key, self.keys().iter().copied()) {
            return format!("{what}; did you mean `{close}`?");
        }
        format!("{what} (expected one of: {})", self.keys().join(", "))
    }
}

/// The known keys of one table. Unknown keys are reported while it is built,
/// so no key can be silently ignored.
struct Fields<'a, 'i> {
    known: Vec<Item<'a, 'i>>,
}

impl<'a, 'i> Fields<'a, 'i> {
    fn of(r: &mut Report, table: &'a DeTable<'i>, section: Section) -> Self {
        let mut known = Vec::new();
        for (key, value) in table.iter() {
            if section.keys().contains(&key.get_ref().as_ref()) {
                known.push(Item::entry(key, value));
            } else {
                r.error(key.span().start, section.unknown_key(key.get_ref()));
            }
        }
        Fields { known }
    }

    fn get(&self, name: &str) -> Option<&Item<'a, 'i>> {
        self.known.iter().find(|item| item.label == name)
    }
}

fn scheduler(r: &mut Report, item: &Item) -> SchedulerSettings {
    let mut settings = SchedulerSettings::default();
    let Some(table) = item.table(r) else {
        return settings;
    };
    let f = Fields::of(r, table, Section::Scheduler);
    settings.state_dir = f.get("state_dir").and_then(|i| i.path(r));
    if let Some(d) = f.get("shutdown_grace").and_then(|i| i.duration(r)) {
        settings.shutdown_grace = d;
    }
    if let Some(n) = f.get("history").and_then(|i| i.history(r)) {
        settings.history_limit = n;
    }
    settings
}

fn http(r: &mut Report, item: &Item) -> HttpSettings {
    let mut settings = HttpSettings::default();
    let Some(table) = item.table(r) else {
        return settings;
    };
    let f = Fields::of(r, table, Section::Http);
    settings.listen = f.get("listen").and_then(|i| i.listen(r));
    settings
}

/// What every job inherits. A bad value here is reported once, at its place
/// in `[defaults]`; jobs then fall back to the built-in default rather than
/// each repeating the same error.
struct Defaults {
    timezone: Tz,
    overlap: Overlap,
    timeout: Option<Duration>,
    catchup: Duration,
    kill_grace: Duration,
    retries: u32,
    retry_backoff: Duration,
    retry_backoff_max: Option<Duration>,
    jitter: Duration,
    on_failure: Option<Vec<String>>,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            timezone: Tz::UTC,
            overlap: Overlap::Skip,
            timeout: None,
            catchup: DEFAULT_CATCHUP,
            kill_grace: DEFAULT_KILL_GRACE,
            retries: 0,
            retry_backoff: DEFAULT_RETRY_BACKOFF,
            retry_backoff_max: None,
            jitter: Duration::ZERO,
            on_failure: None,
        }
    }
}

/// `built_in` is what applies where `[defaults]` does not say.
fn defaults(r: &mut Report, item: &Item, built_in: Defaults) -> Defaults {
    let mut d = built_in;
    let Some(table) = item.table(r) else {
        return d;
    };
    let f = Fields::of(r, table, Section::Defaults);
    if let Some(tz) = f.get("timezone").and_then(|i| i.timezone(r)) {
        d.timezone = tz;
    }
    if let Some(o) = f.get("overlap").and_then(|i| i.overlap(r)) {
        d.overlap = o;
    }
    if let Some(t) = f.get("timeout").and_then(|i| i.timeout(r)) {
        d.timeout = t;
    }
    if let Some(c) = f.get("catchup").and_then(|i| i.duration(r)) {
        d.catchup = c;
    }
    if let Some(k) = f.get("kill_grace").and_then(|i| i.duration(r)) {
        d.kill_grace = k;
    }
    if let Some(n) = f.get("retries").and_then(|i| i.retries(r)) {
        d.retries = n;
    }
    if let Some(b) = f.get("retry_backoff").and_then(|i| i.positive_duration(r)) {
        d.retry_backoff = b;
    }
    if let Some(b) = f
        .get("retry_backoff_max")
        .and_then(|i| i.positive_duration(r))
    {
        d.retry_backoff_max = Some(b);
    }
    if let Some(j) = f.get("jitter").and_then(|i| i.duration(r)) {
        d.jitter = j;
    }
    if let Some(h) = f.get("on_failure").and_then(|i| i.command(r)) {
        d.on_failure = Some(h);
    }
    d
}

fn jobs(r: &mut Report, item: &Item, defaults: &Defaults) -> BTreeMap<String, Job> {
    let mut jobs = BTreeMap::new();
    let table = match item.value() {
        DeValue::Table(table) => table,
        other => {
            let hint = if matches!(other, DeValue::Array(_)) {
                " (write [jobs.<name>], not [[jobs]])"
            } else {
                ""
            };
            r.error(
                item.value_at(),
                format!(
                    "jobs must be a table with one [jobs.<name>] table per job, found {}{hint}",
                    type_name(other)
                ),
            );
            return jobs;
        }
    };
    for (key, value) in table.iter() {
        let name: &str = key.get_ref();
        let entry = Item::entry(key, value);
        if let Some(job) = r.in_job(name, |r| job(r, &entry, defaults)) {
            jobs.insert(name.to_owned(), job);
        }
    }
    jobs
}

/// Checks one job completely, even after its first problem, and returns it
/// only if it is fully valid.
fn job(r: &mut Report, item: &Item, defaults: &Defaults) -> Option<Job> {
    let name = item.label.as_ref();
    let name_ok = job_name(r, name, item.key_at);
    let table = match item.value() {
        DeValue::Table(table) => table,
        other => {
            let hint = if matches!(other, DeValue::Array(_)) {
                " (write [jobs.<name>], not [[jobs.<name>]])"
            } else {
                ""
            };
            r.error(
                item.value_at(),
                format!(
                    "each job must be a table like [jobs.{}], found {}{hint}",
                    if name_ok { name } else { "<name>" },
                    type_name(other)
                ),
            );
            return None;
        }
    };
    let f = Fields::of(r, table, Section::Job);

    let description = f.get("description").and_then(|i| i.string(r));
    let timezone = match f.get("timezone") {
        Some(i) => i.timezone(r),
        None => Some(defaults.timezone),
    };
    let schedule = match f.get("schedule") {
        // The cron syntax does not depend on the zone, so a bad zone still
        // lets the expression be checked.
        Some(i) => i.schedule(r, timezone.unwrap_or(Tz::UTC)),
        None => {
            r.error(
                item.key_at,
                "missing schedule; add e.g. schedule = \"30 2 * * *\"",
            );
            None
        }
    };
    let program = program(r, item.key_at, f.get("command"), f.get("shell"));
    let working_dir = f.get("working_dir").and_then(|i| i.path(r));
    let env = f.get("env").and_then(|i| i.env(r)).unwrap_or_default();
    let timeout = match f.get("timeout") {
        Some(i) => i.timeout(r).unwrap_or(defaults.timeout),
        None => defaults.timeout,
    };
    let overlap = f.get("overlap").and_then(|i| i.overlap(r));
    let catchup = f.get("catchup").and_then(|i| i.duration(r));
    let kill_grace = f.get("kill_grace").and_then(|i| i.duration(r));
    let enabled = f.get("enabled").and_then(|i| i.boolean(r));
    let retries = f.get("retries").map(|i| i.retries(r));
    let retry_backoff = f.get("retry_backoff").map(|i| i.positive_duration(r));
    let retry_backoff_max = f.get("retry_backoff_max").map(|i| i.positive_duration(r));
    let jitter = f.get("jitter").map(|i| i.duration(r));
    let on_failure = f.get("on_failure").map(|i| i.command(r));
    let backoff = retry_backoff.unwrap_or(Some(defaults.retry_backoff));
    let backoff_max = match retry_backoff_max {
        Some(max) => max,
        // Unset: ten doublings, and never below the first wait.
        None => Some(
            defaults
                .retry_backoff_max
                .unwrap_or(DEFAULT_RETRY_BACKOFF_MAX)
                .max(backoff.unwrap_or_default()),
        ),
    };
    if let (Some(b), Some(max), Some(at)) = (backoff, backoff_max, f.get("retry_backoff_max")) {
        if max < b {
            r.error(
                at.value_at(),
                format!(
                    "retry_backoff_max ({}) is shorter than retry_backoff ({}); \
                     the cap must be at least the first wait",
                    humantime::format_duration(max),
                    humantime::format_duration(b)
                ),
            );
        }
    }

    if !name_ok {
        return None;
    }
    Some(Job {
        name: name.to_owned(),
        description,
        schedule: schedule?,
        timezone: timezone?,
        program: program?,
        working_dir,
        env,
        timeout,
        overlap: overlap.unwrap_or(defaults.overlap),
        catchup: catchup.unwrap_or(defaults.catchup),
        kill_grace: kill_grace.unwrap_or(defaults.kill_grace),
        enabled: enabled.unwrap_or(true),
        retries: retries.unwrap_or(Some(defaults.retries))?,
        retry_backoff: backoff?,
        retry_backoff_max: backoff_max.filter(|max| *max >= backoff.unwrap_or_default())?,
        jitter: jitter.unwrap_or(Some(defaults.jitter))?,
        on_failure: match on_failure {
            None => defaults.on_failure.clone(),
            Some(hook) => Some(hook?),
        },
    })
}

/// Names become file names and CLI arguments, hence the narrow alphabet, and
/// no `.`/`..`, which would name a directory instead of a file.
fn job_name(r: &mut Report, name: &str, at: usize) -> bool {
    let problem = if name.is_empty() {
        "the name must not be empty".to_string()
    } else if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        format!("only ASCII letters, digits, '.', '_' and '-' are allowed, found {bad:?}")
    } else if name.chars().count() > MAX_JOB_NAME_LEN {
        format!(
            "the name is {} characters long, at most {MAX_JOB_NAME_LEN} are allowed",
            name.chars().count()
        )
    } else if name == "." || name == ".." {
        "\".\" and \"..\" are not allowed".to_string()
    } else {
        return true;
    };
    r.error(at, format!("invalid job name: {problem}"));
    false
}

/// `command` and `shell` are two spellings of one setting: exactly one must
/// be given, and each is still checked on its own so all problems show.
fn program(
    r: &mut Report,
    job_at: usize,
    command: Option<&Item>,
    shell: Option<&Item>,
) -> Option<Program> {
    let argv = command.and_then(|i| i.command(r));
    let line = shell.and_then(|i| i.shell(r));
    match (command, shell) {
        (Some(c), Some(s)) => {
            r.error(
                c.key_at.max(s.key_at),
                "both command and shell are set; keep command (argv, run directly) \
                 or shell (run with /bin/sh -c), not both",
            );
            None
        }
        (None, None) => {
            r.error(
                job_at,
                "missing command; add command = [\"/path/to/program\", \"arg\"] \
                 or shell = \"a shell command line\"",
            );
            None
        }
        _ => argv.map(Program::Argv).or(line.map(Program::Shell)),
    }
}

// ---------------------------------------------------------------------------
// Cluster

/// Without `[cluster]` the built-in one minute; with it, at least a lease
/// TTL plus [`FAILOVER_MARGIN`], so that the ticks a failover misses are
/// caught up by default instead of silently dropped.
fn default_catchup(cluster: Option<&ClusterSettings>) -> Duration {
    cluster.map_or(DEFAULT_CATCHUP, |c| {
        DEFAULT_CATCHUP.max(c.lease_ttl + FAILOVER_MARGIN)
    })
}

/// Checks `[cluster]` completely, even after its first problem, and returns
/// it only if it is fully valid. `base` is the directory relative file
/// names are resolved against.
fn cluster(r: &mut Report, item: &Item, base: &Path) -> Option<ClusterSettings> {
    let hint = |v: &DeValue| match v {
        DeValue::Array(_) => " (write [cluster], not [[cluster]])",
        _ => "",
    };
    let table = item.expect(r, "a table", hint, |v| match v {
        DeValue::Table(t) => Some(t),
        _ => None,
    })?;
    let f = Fields::of(r, table, Section::Cluster);

    let endpoints = match f.get("etcd") {
        Some(i) => i.endpoints(r),
        None => {
            r.error(
                item.key_at,
                format!(
                    "missing etcd; add the etcd endpoints, e.g. etcd = [\"{EXAMPLE_ENDPOINT}\"]"
                ),
            );
            None
        }
    };
    let prefix = f
        .get("prefix")
        .map_or(Some(DEFAULT_PREFIX.to_owned()), |i| i.prefix(r));
    let lease_ttl = f
        .get("lease_ttl")
        .map_or(Some(DEFAULT_LEASE_TTL), |i| i.lease_ttl(r));
    let max_clock_skew = f
        .get("max_clock_skew")
        .map_or(Some(DEFAULT_MAX_CLOCK_SKEW), |i| i.max_clock_skew(r));

    // `Some(None)`: not set; `None`: set but invalid (already reported).
    let mut file = |name: &str| {
        f.get(name)
            .map_or(Some(None), |i| i.readable_file(r, base).map(Some))
    };
    let ca_file = file("ca_file");
    let cert_file = file("cert_file");
    let key_file = file("key_file");
    let tls_ok = tls_fits(
        r,
        [f.get("ca_file"), f.get("cert_file"), f.get("key_file")],
        endpoints.as_deref(),
    );

    let user = f.get("user").map_or(Some(None), |i| i.user(r).map(Some));
    let from_env = f
        .get("password_env")
        .map_or(Some(None), |i| i.password_env(r).map(Some));
    let from_file = f
        .get("password_file")
        .map_or(Some(None), |i| i.password_file(r, base).map(Some));
    let auth_ok = auth_fits(
        r,
        f.get("user"),
        f.get("password_env"),
        f.get("password_file"),
    );

    if !(tls_ok && auth_ok) {
        return None;
    }
    Some(ClusterSettings {
        endpoints: endpoints?,
        prefix: prefix?,
        lease_ttl: lease_ttl?,
        max_clock_skew: max_clock_skew?,
        ca_file: ca_file?,
        cert_file: cert_file?,
        key_file: key_file?,
        user: user?,
        password: from_env?.or(from_file?),
    })
}

/// How the TLS files fit together and with the endpoints; each file is
/// checked on its own by its accessor. `endpoints` is `None` when they are
/// not all valid, and then nothing is concluded from them.
fn tls_fits(
    r: &mut Report,
    [ca, cert, key]: [Option<&Item>; 3],
    endpoints: Option<&[String]>,
) -> bool {
    let mut ok = true;
    match (cert, key) {
        (Some(cert), None) => {
            r.error(
                cert.key_at,
                "cert_file is set but key_file is not; a client certificate needs its private key",
            );
            ok = false;
        }
        (None, Some(key)) => {
            r.error(
                key.key_at,
                "key_file is set but cert_file is not; a private key needs its client certificate",
            );
            ok = false;
        }
        _ => {}
    }
    let all_http = endpoints.is_some_and(|e| e.iter().all(|url| url.starts_with("http://")));
    let first_file = [ca, cert, key]
        .into_iter()
        .flatten()
        .map(|i| i.key_at)
        .min();
    if let Some(at) = first_file.filter(|_| all_http) {
        r.error(
            at,
            "TLS files are set but every etcd endpoint is http://; use https:// endpoints \
             or remove ca_file, cert_file and key_file",
        );
        ok = false;
    }
    ok
}

/// etcd authenticates a user with a password: both or neither, and the
/// password from exactly one source.
fn auth_fits(
    r: &mut Report,
    user: Option<&Item>,
    from_env: Option<&Item>,
    from_file: Option<&Item>,
) -> bool {
    let mut ok = true;
    if let (Some(env), Some(file)) = (from_env, from_file) {
        r.error(
            env.key_at.max(file.key_at),
            "both password_env and password_file are set; keep one of them",
        );
        ok = false;
    }
    match user {
        None => {
            for source in [from_env, from_file].into_iter().flatten() {
                r.error(
                    source.key_at,
                    format!(
                        "{} is set but user is not; add the etcd user name, e.g. user = \"bgsched\"",
                        source.label
                    ),
                );
                ok = false;
            }
        }
        Some(user) if from_env.is_none() && from_file.is_none() => {
            r.error(
                user.key_at,
                "user is set without a password; add password_env = \"NAME\" (an environment \
                 variable holding it) or password_file = \"/path/to/file\"",
            );
            ok = false;
        }
        Some(_) => {}
    }
    ok
}

const CREDENTIALS_IN_ENDPOINT: &str = "an etcd endpoint must not contain a user name or \
     password; set user and password_env or password_file instead";

/// An etcd endpoint in the form the client takes, `scheme://host:port`, or
/// the message saying why it is not one, with the closest URL that is.
fn endpoint(written: &str) -> Result<String, String> {
    // Every other message quotes the endpoint, and with it the password.
    if written.contains('@') {
        return Err(CREDENTIALS_IN_ENDPOINT.to_string());
    }
    let trimmed = written.trim();
    let (scheme, rest) = match trimmed.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, trimmed),
    };
    let known_scheme = scheme.filter(|s| matches!(*s, "http" | "https"));
    let (authority, path) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    let (host, port) = split_host_port(authority);
    let port_number = port
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|p| *p != 0);
    let unbracketed_v6 = !host.starts_with('[') && host.contains(':');
    let why = if trimmed.len() != written.len() {
        " (without spaces)"
    } else if scheme.is_some() && known_scheme.is_none() {
        " (only http:// and https:// are supported)"
    } else if unbracketed_v6 {
        " (an IPv6 address goes in brackets)"
    } else if !is_host(host) {
        " (with a host name or IP address)"
    } else if port.is_none() {
        " (with a port)"
    } else if port_number.is_none() {
        " (the port must be a number from 1 to 65535)"
    } else if !matches!(path, "" | "/") {
        " (without a path)"
    } else if let (Some(scheme), Some(port)) = (known_scheme, port_number) {
        return Ok(format!("{scheme}://{host}:{port}"));
    } else {
        // Only the scheme is missing; the example shows it.
        ""
    };
    let example = if unbracketed_v6 {
        "http://[fd00::5]:2379".to_string()
    } else if is_host(host) {
        format!(
            "{}://{host}:{}",
            known_scheme.unwrap_or("http"),
            port_number.unwrap_or(ETCD_CLIENT_PORT)
        )
    } else {
        EXAMPLE_ENDPOINT.to_string()
    };
    Err(format!(
        "etcd endpoint {} must be a URL like {}{why}",
        quoted(written),
        quoted(&example)
    ))
}

/// `host:port` or `[v6]:port`; the port is `None` when there is no `:`.
/// Junk after `]` is left in the host, which then fails [`is_host`].
fn split_host_port(authority: &str) -> (&str, Option<&str>) {
    if let Some(close) = authority.find(']').filter(|_| authority.starts_with('[')) {
        let (host, after) = authority.split_at(close + 1);
        if after.is_empty() {
            return (host, None);
        }
        if let Some(port) = after.strip_prefix(':') {
            return (host, Some(port));
        }
        return (authority, None);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    }
}

fn is_host(host: &str) -> bool {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        }
    }
}

/// A name `std::env::var` can look up, in the portable shape. Anything else
/// in `password_env` is likely the password itself, and is not echoed.
fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Opens a file the way its user will, refusing a directory (which Linux
/// opens fine), so that "cannot be read" is said now and not at use.
fn open_readable(path: &Path) -> Result<File, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    match file.metadata() {
        Ok(m) if m.is_dir() => Err("it is a directory".to_string()),
        Ok(_) => Ok(file),
        Err(e) => Err(e.to_string()),
    }
}

// ---------------------------------------------------------------------------
// Located values

/// A value together with the name it is reported under and where it is in
/// the file. Every typed accessor reports its own problem at the right place
/// and returns `None`, so callers just chain and move on.
struct Item<'a, 'i> {
    /// The key as written, or a path like `command[1]` / `env.HOME`.
    label: Cow<'a, str>,
    /// Byte offset of the key (of the value itself for array elements).
    key_at: usize,
    value: &'a Spanned<DeValue<'i>>,
}

impl<'a, 'i> Item<'a, 'i> {
    fn entry(key: &'a Spanned<DeString<'i>>, value: &'a Spanned<DeValue<'i>>) -> Self {
        Item {
            label: Cow::Borrowed(key.get_ref().as_ref()),
            key_at: key.span().start,
            value,
        }
    }

    fn value(&self) -> &'a DeValue<'i> {
        self.value.get_ref()
    }

    fn value_at(&self) -> usize {
        self.value.span().start
    }

    /// The value if `pick` accepts its type; otherwise reports
    /// `<label> must be <what>, found <type><hint>`.
    fn expect<T>(
        &self,
        r: &mut Report,
        what: &str,
        hint: impl FnOnce(&DeValue) -> &'static str,
        pick: impl FnOnce(&'a DeValue<'i>) -> Option<T>,
    ) -> Option<T> {
        let value = self.value();
        let picked = pick(value);
        if picked.is_none() {
            r.error(
                self.value_at(),
                format!(
                    "{} must be {what}, found {}{}",
                    self.label,
                    type_name(value),
                    hint(value)
                ),
            );
        }
        picked
    }

    fn str(&self, r: &mut Report) -> Option<&'a str> {
        self.expect(r, "a string", |_| "", as_str)
    }

    fn string(&self, r: &mut Report) -> Option<String> {
        self.str(r).map(str::to_owned)
    }

    fn boolean(&self, r: &mut Report) -> Option<bool> {
        let hint = |v: &DeValue| match v {
            DeValue::String(_) => " (write it without quotes)",
            _ => "",
        };
        self.expect(r, "true or false", hint, |v| match v {
            DeValue::Boolean(b) => Some(*b),
            _ => None,
        })
    }

    fn table(&self, r: &mut Report) -> Option<&'a DeTable<'i>> {
        self.expect(
            r,
            "a table",
            |_| "",
            |v| match v {
                DeValue::Table(t) => Some(t),
                _ => None,
            },
        )
    }

    /// A string that will reach the OS (argv, env, paths), where a NUL byte
    /// cannot be represented.
    fn os_str(&self, r: &mut Report) -> Option<&'a str> {
        let s = self.str(r)?;
        if s.contains('\0') {
            r.error(
                self.value_at(),
                format!("{} must not contain a NUL byte (\\u0000)", self.label),
            );
            return None;
        }
        Some(s)
    }

    fn path(&self, r: &mut Report) -> Option<PathBuf> {
        let s = self.os_str(r)?;
        if s.is_empty() {
            r.error(
                self.value_at(),
                format!(
                    "{} must not be empty (leave it out to use the default)",
                    self.label
                ),
            );
            return None;
        }
        Some(PathBuf::from(s))
    }

    fn duration(&self, r: &mut Report) -> Option<Duration> {
        let s = self.expect(
            r,
            "a duration string like \"30s\" or \"1h 30m\"",
            |_| "",
            as_str,
        )?;
        let d = match humantime::parse_duration(s) {
            Ok(d) => d,
            Err(e) => {
                let message = format!(
                    "invalid duration {} for {}: {}",
                    quoted(s),
                    self.label,
                    duration_reason(&e)
                );
                r.error(self.value_at(), message);
                return None;
            }
        };
        if d > MAX_DURATION {
            r.error(
                self.value_at(),
                format!(
                    "{} {} is longer than 100 years; use a shorter duration",
                    self.label,
                    quoted(s)
                ),
            );
            return None;
        }
        Some(d)
    }

    /// `Some(None)` is an explicit "no limit", so a job can lift a timeout it
    /// would otherwise inherit from `[defaults]`.
    fn timeout(&self, r: &mut Report) -> Option<Option<Duration>> {
        if matches!(self.value(), DeValue::String(s) if s.eq_ignore_ascii_case("none")) {
            return Some(None);
        }
        let d = self.duration(r)?;
        if d.is_zero() {
            r.error(
                self.value_at(),
                format!(
                    "{} must be greater than zero (use \"none\" or leave it out for no time limit)",
                    self.label
                ),
            );
            return None;
        }
        Some(Some(d))
    }

    fn history(&self, r: &mut Report) -> Option<usize> {
        let n = self.integer_in(r, HISTORY_RANGE, "run records kept per job")?;
        usize::try_from(n).ok()
    }

    fn retries(&self, r: &mut Report) -> Option<u32> {
        let n = self.integer_in(r, RETRIES_RANGE, "retries after a failed attempt")?;
        u32::try_from(n).ok()
    }

    /// An integer within `range`; `meaning` explains it in the message.
    fn integer_in(&self, r: &mut Report, range: RangeInclusive<i64>, meaning: &str) -> Option<i64> {
        let n = self.expect(
            r,
            "an integer",
            |_| "",
            |v| match v {
                DeValue::Integer(n) => Some(n),
                _ => None,
            },
        )?;
        match i64::from_str_radix(n.as_str(), n.radix()) {
            Ok(v) if range.contains(&v) => Some(v),
            _ => {
                r.error(
                    self.value_at(),
                    format!(
                        "{} must be between {} and {} ({meaning}), found {}",
                        self.label,
                        range.start(),
                        range.end(),
                        shown(&n.to_string())
                    ),
                );
                None
            }
        }
    }

    fn positive_duration(&self, r: &mut Report) -> Option<Duration> {
        let d = self.duration(r)?;
        if d.is_zero() {
            r.error(
                self.value_at(),
                format!("{} must be greater than zero", self.label),
            );
            return None;
        }
        Some(d)
    }

    fn overlap(&self, r: &mut Report) -> Option<Overlap> {
        let s = self.expect(
            r,
            "\"skip\", \"allow\", \"queue\" or \"replace\"",
            |_| "",
            as_str,
        )?;
        match s {
            "skip" => Some(Overlap::Skip),
            "allow" => Some(Overlap::Allow),
            "queue" => Some(Overlap::Queue),
            "replace" => Some(Overlap::Replace),
            other => {
                r.error(
                    self.value_at(),
                    format!(
                        "{} must be \"skip\", \"allow\", \"queue\" or \"replace\", found {}",
                        self.label,
                        quoted(other)
                    ),
                );
                None
            }
        }
    }

    fn timezone(&self, r: &mut Report) -> Option<Tz> {
        let name = self.str(r)?;
        if let Ok(tz) = name.parse::<Tz>() {
            return Some(tz);
        }
        let hint = match closest_time_zone(name) {
            Some(close) => format!("; did you mean \"{close}\"?"),
            None => " (use an IANA name such as \"Europe/Berlin\" or \"UTC\")".to_string(),
        };
        r.error(
            self.value_at(),
            format!("unknown time zone {}{hint}", quoted(name)),
        );
        None
    }

    fn schedule(&self, r: &mut Report, tz: Tz) -> Option<Schedule> {
        let expr = self.str(r)?;
        if expr.trim().is_empty() {
            r.error(
                self.value_at(),
                "schedule must not be empty; use a cron expression like \"30 2 * * *\"",
            );
            return None;
        }
        match Schedule::parse(expr, tz) {
            Ok(schedule) => Some(schedule),
            Err(e) => {
                r.error(
                    self.value_at(),
                    format!("invalid schedule {}: {e}", quoted(expr)),
                );
                None
            }
        }
    }

    fn command(&self, r: &mut Report) -> Option<Vec<String>> {
        let is_hook = self.label == "on_failure";
        let hint = |v: &DeValue| match v {
            DeValue::String(_) if is_hook => {
                "; for a shell command line use [\"/bin/sh\", \"-c\", \"...\"]"
            }
            DeValue::String(_) => "; for a shell command line use shell = \"...\" instead",
            _ => "",
        };
        let array = self.expect(
            r,
            "an array of strings like [\"/usr/bin/backup\", \"--full\"]",
            hint,
            |v| match v {
                DeValue::Array(a) => Some(a),
                _ => None,
            },
        )?;
        if array.is_empty() {
            r.error(
                self.value_at(),
                format!(
                    "{} must not be empty; give the program and its arguments, \
                     e.g. [\"/usr/bin/backup\", \"--full\"]",
                    self.label
                ),
            );
            return None;
        }
        let mut argv = Some(Vec::with_capacity(array.len()));
        for (index, element) in array.iter().enumerate() {
            let item = Item {
                label: Cow::Owned(format!("{}[{index}]", self.label)),
                key_at: element.span().start,
                value: element,
            };
            let arg = item.os_str(r);
            // Later arguments may legitimately be empty (`-N ""`); the
            // program may not.
            if index == 0 && arg.is_some_and(|a| a.trim().is_empty()) {
                r.error(
                    item.value_at(),
                    format!("{} (the program to run) must not be empty", item.label),
                );
                argv = None;
            }
            match (arg, &mut argv) {
                (Some(arg), Some(argv)) => argv.push(arg.to_owned()),
                _ => argv = None,
            }
        }
        argv
    }

    fn shell(&self, r: &mut Report) -> Option<String> {
        let hint = |v: &DeValue| match v {
            DeValue::Array(_) => "; for an argv list use command = [...] instead",
            _ => "",
        };
        let line = self.expect(r, "a string (a command line for /bin/sh -c)", hint, as_str)?;
        if line.trim().is_empty() {
            r.error(
                self.value_at(),
                "shell must not be empty; give a command line such as \"pg_dump shop | gzip > /backups/shop.gz\"",
            );
            return None;
        }
        self.os_str(r).map(str::to_owned)
    }

    fn env(&self, r: &mut Report) -> Option<BTreeMap<String, String>> {
        let table = self.expect(
            r,
            "a table of strings like { NAME = \"value\" }",
            |_| "",
            |v| match v {
                DeValue::Table(t) => Some(t),
                _ => None,
            },
        )?;
        let mut env = Some(BTreeMap::new());
        for (key, value) in table.iter() {
            let name: &str = key.get_ref();
            let problem = if name.is_empty() {
                Some("env variable name must not be empty".to_string())
            } else if name.contains('=') {
                Some(format!(
                    "env variable name {} must not contain '='",
                    quoted(name)
                ))
            } else if name.contains('\0') {
                Some(format!(
                    "env variable name {} must not contain a NUL byte",
                    quoted(name)
                ))
            } else {
                None
            };
            if let Some(problem) = problem {
                r.error(key.span().start, problem);
                env = None;
            }
            let item = Item {
                label: Cow::Owned(format!("env.{}", shown(name))),
                key_at: key.span().start,
                value,
            };
            let quote_hint = |v: &DeValue| match v {
                DeValue::Integer(_) | DeValue::Float(_) | DeValue::Boolean(_) => {
                    " (put the value in quotes)"
                }
                _ => "",
            };
            let value = item
                .expect(r, "a string", quote_hint, as_str)
                .and_then(|_| item.os_str(r));
            match (value, &mut env) {
                (Some(value), Some(env)) => {
                    env.insert(name.to_owned(), value.to_owned());
                }
                _ => env = None,
            }
        }
        env
    }

    /// `etcd`: every endpoint checked, each problem at its element.
    fn endpoints(&self, r: &mut Report) -> Option<Vec<String>> {
        let hint = |v: &DeValue| match v {
            DeValue::String(_) => " (put it in brackets, even a single one)",
            _ => "",
        };
        let array = self.expect(
            r,
            &format!("an array of URLs like [\"{EXAMPLE_ENDPOINT}\"]"),
            hint,
            |v| match v {
                DeValue::Array(a) => Some(a),
                _ => None,
            },
        )?;
        if array.is_empty() {
            r.error(
                self.value_at(),
                format!("etcd must list at least one endpoint, e.g. [\"{EXAMPLE_ENDPOINT}\"]"),
            );
            return None;
        }
        let mut all_valid = true;
        // (normalized, as written, where)
        let mut valid: Vec<(String, &str, usize)> = Vec::with_capacity(array.len());
        for (index, element) in array.iter().enumerate() {
            let item = Item {
                label: Cow::Owned(format!("etcd[{index}]")),
                key_at: element.span().start,
                value: element,
            };
            let Some(written) = item.str(r) else {
                all_valid = false;
                continue;
            };
            match endpoint(written) {
                Ok(url) if valid.iter().any(|(seen, _, _)| *seen == url) => {
                    r.error(
                        item.value_at(),
                        format!("etcd endpoint {} is listed twice", quoted(written)),
                    );
                    all_valid = false;
                }
                Ok(url) => valid.push((url, written, item.value_at())),
                Err(message) => {
                    r.error(item.value_at(), message);
                    all_valid = false;
                }
            }
        }
        // The client speaks TLS to every endpoint or to none.
        let tls = |url: &str| url.starts_with("https://");
        if let Some((first, rest)) = valid.split_first() {
            if let Some((url, written, at)) =
                rest.iter().find(|(url, _, _)| tls(url) != tls(&first.0))
            {
                let scheme = |url: &str| if tls(url) { "https://" } else { "http://" };
                r.error(
                    *at,
                    format!(
                        "etcd endpoint {} uses {} but {} uses {}; use the same scheme for every endpoint",
                        quoted(written),
                        scheme(url),
                        quoted(first.1),
                        scheme(&first.0)
                    ),
                );
                return None;
            }
        }
        all_valid.then(|| valid.into_iter().map(|(url, _, _)| url).collect())
    }

    /// `listen`: a socket address, not a host name: the server binds
    /// before anything is resolved, and a name with several addresses
    /// would leave it unclear which one is served.
    fn listen(&self, r: &mut Report) -> Option<std::net::SocketAddr> {
        let s = self.str(r)?;
        if let Ok(addr) = s.trim().parse() {
            return Some(addr);
        }
        let hint = match s.trim() {
            "" => String::new(),
            t if t.parse::<std::net::IpAddr>().is_ok() => {
                format!("; add a port, e.g. {}", quoted(&example_listen(t)))
            }
            t if t.starts_with(':') && t[1..].parse::<u16>().is_ok() => {
                format!(
                    "; name the address too, e.g. {}",
                    quoted(&format!("0.0.0.0{t}"))
                )
            }
            t => match t.rsplit_once(':') {
                Some((_, port)) if port.parse::<u16>().is_err() && port.parse::<u64>().is_ok() => {
                    "; the port must be at most 65535".to_string()
                }
                Some(("localhost", port)) if port.parse::<u16>().is_ok() => {
                    format!(
                        "; for localhost write {}",
                        quoted(&format!("127.0.0.1:{port}"))
                    )
                }
                _ => String::new(),
            },
        };
        r.error(
            self.value_at(),
            format!(
                "{} {} is not an IP address and port like \"127.0.0.1:9187\" or \"[::1]:9187\"{hint}",
                self.label,
                quoted(s)
            ),
        );
        None
    }

    /// `prefix`: keys are built as `{prefix}/...`.
    fn prefix(&self, r: &mut Report) -> Option<String> {
        let s = self.str(r)?;
        let like = || match s.trim_matches('/') {
            "" => quoted(DEFAULT_PREFIX),
            inner => quoted(&format!("/{inner}")),
        };
        let problem = if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            format!(
                "prefix {} must not contain whitespace or control characters",
                quoted(s)
            )
        } else if !s.starts_with('/') {
            format!("prefix {} must start with '/', like {}", quoted(s), like())
        } else if s.ends_with('/') {
            format!(
                "prefix {} must not end with '/', like {}",
                quoted(s),
                like()
            )
        } else if s.chars().count() > MAX_PREFIX_LEN {
            format!(
                "prefix is {} characters long, at most {MAX_PREFIX_LEN} are allowed",
                s.chars().count()
            )
        } else {
            return Some(s.to_owned());
        };
        r.error(self.value_at(), problem);
        None
    }

    fn lease_ttl(&self, r: &mut Report) -> Option<Duration> {
        let d = self.duration(r)?;
        let written = quoted(as_str(self.value()).unwrap_or_default());
        let problem = if !LEASE_TTL_RANGE.contains(&d) {
            format!(
                "{} must be between {} and {} (how long a failover waits for a crashed leader), found {written}",
                self.label,
                humantime::format_duration(*LEASE_TTL_RANGE.start()),
                humantime::format_duration(*LEASE_TTL_RANGE.end()),
            )
        } else if d.subsec_nanos() != 0 {
            // Rounded silently, the lease would expire before the replica
            // expects it to.
            format!(
                "{} must be a whole number of seconds (etcd grants leases in seconds), found {written}",
                self.label
            )
        } else {
            return Some(d);
        };
        r.error(self.value_at(), problem);
        None
    }

    fn max_clock_skew(&self, r: &mut Report) -> Option<Duration> {
        let d = self.duration(r)?;
        if MAX_CLOCK_SKEW_RANGE.contains(&d) {
            return Some(d);
        }
        r.error(
            self.value_at(),
            format!(
                "{} must be between {} and {} (how far a replica's clock may be off the others' before it stops leading), found {}",
                self.label,
                humantime::format_duration(*MAX_CLOCK_SKEW_RANGE.start()),
                humantime::format_duration(*MAX_CLOCK_SKEW_RANGE.end()),
                quoted(as_str(self.value()).unwrap_or_default()),
            ),
        );
        None
    }

    /// A file the etcd client will read, resolved against `base` and opened
    /// now so that a wrong path is reported here, located.
    fn readable_file(&self, r: &mut Report, base: &Path) -> Option<PathBuf> {
        let path = resolved(base, self.path(r)?);
        if let Err(reason) = open_readable(&path) {
            r.error(
                self.value_at(),
                format!(
                    "{} {} cannot be read: {reason}",
                    self.label,
                    quoted(&path.display().to_string())
                ),
            );
            return None;
        }
        Some(path)
    }

    fn user(&self, r: &mut Report) -> Option<String> {
        let user = self.str(r)?;
        if user.is_empty() {
            r.error(
                self.value_at(),
                "user must not be empty (leave it out to connect without authentication)",
            );
            return None;
        }
        Some(user.to_owned())
    }

    /// The password itself never reaches a message; only the variable's
    /// name does, and only when it looks like one.
    fn password_env(&self, r: &mut Report) -> Option<Secret> {
        let name = self.str(r)?;
        if !is_env_name(name) {
            r.error(
                self.value_at(),
                format!(
                    "{} must be the name of an environment variable, like \"BGSCHED_ETCD_PASSWORD\", \
                     not the password itself",
                    self.label
                ),
            );
            return None;
        }
        let problem = match std::env::var(name) {
            Ok(password) if !password.is_empty() => return Some(Secret::new(password)),
            Ok(_) => "is set but empty",
            Err(VarError::NotPresent) => "is not set in the environment",
            Err(VarError::NotUnicode(_)) => "holds a value that is not valid UTF-8",
        };
        r.error(
            self.value_at(),
            format!("{} {} {problem}", self.label, quoted(name)),
        );
        None
    }

    /// The file's content without its trailing line break; the content
    /// never reaches a message, only the file's name does.
    fn password_file(&self, r: &mut Report, base: &Path) -> Option<Secret> {
        let path = resolved(base, self.path(r)?);
        let mut bytes = Vec::new();
        let read = open_readable(&path).and_then(|file| {
            file.take(MAX_PASSWORD_FILE_SIZE + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| e.to_string())
        });
        let problem = match read {
            Err(reason) => format!("cannot be read: {reason}"),
            Ok(_) if bytes.len() as u64 > MAX_PASSWORD_FILE_SIZE => format!(
                "is larger than {} KiB; it should hold only the password",
                MAX_PASSWORD_FILE_SIZE / 1024
            ),
            Ok(_) => match String::from_utf8(bytes) {
                Err(_) => "is not valid UTF-8".to_string(),
                Ok(mut password) => {
                    password.truncate(password.trim_end_matches(['\n', '\r']).len());
                    if !password.is_empty() {
                        return Some(Secret::new(password));
                    }
                    "is empty".to_string()
                }
            },
        };
        r.error(
            self.value_at(),
            format!(
                "{} {} {problem}",
                self.label,
                quoted(&path.display().to_string())
            ),
        );
        None
    }
}

/// toml messages about array or inline table contents.
/// `ip` with the default metrics port, bracketed if it is IPv6.
fn example_listen(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]:9187")
    } else {
        format!("{ip}:9187")
    }
}

fn in_brackets(message: &str) -> bool {
    ["array", "inline table", "key-value pairs"]
        .iter()
        .any(|m| message.contains(m))
}

fn as_str<'a>(v: &'a DeValue<'_>) -> Option<&'a str> {
    match v {
        DeValue::String(s) => Some(s),
        _ => None,
    }
}

fn type_name(v: &DeValue) -> &'static str {
    match v {
        DeValue::String(_) => "string",
        DeValue::Integer(_) => "integer",
        DeValue::Float(_) => "float",
        DeValue::Boolean(_) => "boolean",
        DeValue::Datetime(_) => "datetime",
        DeValue::Array(_) => "array",
        DeValue::Table(_) => "table",
    }
}

// ---------------------------------------------------------------------------
// Suggestions

/// Suggestions are only looked for when the input is at most this long:
/// longer than any key or zone name, it is no typo of one, and the edit
/// distance, which takes time and memory in the product of the lengths,
/// would make a pasted blob take minutes to check.
const MAX_SUGGESTION_INPUT: usize = 64;

/// The candidate a typo most likely meant: a small edit distance (scaled to
/// the length), ignoring case, or one name being a prefix of the other
/// (`working_directory` for `working_dir`).
fn did_you_mean<'c>(input: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    if input.chars().count() > MAX_SUGGESTION_INPUT {
        return None;
    }
    let input = input.to_lowercase();
    let allowed = match input.chars().count() {
        0..=3 => 1,
        4..=8 => 2,
        _ => 3,
    };
    candidates
        .into_iter()
        .filter_map(|c| {
            let lower = c.to_lowercase();
            let distance = strsim::damerau_levenshtein(&input, &lower);
            let (short, long) = if input.len() < lower.len() {
                (&input, &lower)
            } else {
                (&lower, &input)
            };
            let prefix = short.len() >= 3 && long.starts_with(short.as_str());
            (distance <= allowed || prefix).then_some((distance, c))
        })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| c)
}

/// Besides typos, people often write just the city (`Berlin`) or get the
/// case wrong (`europe/berlin`), which plain edit distance ranks poorly.
fn closest_time_zone(input: &str) -> Option<&'static str> {
    if input.chars().count() > MAX_SUGGESTION_INPUT {
        return None;
    }
    let names = || chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name());
    if let Some(exact) = names().find(|n| n.eq_ignore_ascii_case(input)) {
        return Some(exact);
    }
    let city = input.replace(' ', "_");
    if let Some(by_city) = names().find(|n| {
        n.contains('/')
            && n.rsplit('/')
                .next()
                .is_some_and(|c| c.eq_ignore_ascii_case(&city))
    }) {
        return Some(by_city);
    }
    let input_lower = input.to_lowercase();
    let allowed = (input.chars().count() / 5).clamp(1, 3);
    names()
        .map(|n| {
            (
                strsim::damerau_levenshtein(&input_lower, &n.to_lowercase()),
                n,
            )
        })
        .filter(|(distance, _)| *distance <= allowed)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, n)| n)
}

// ---------------------------------------------------------------------------
// Reporting

/// Collects errors as byte offsets while the tree is walked (in whatever
/// order the table maps yield keys), then sorts them into file order and
/// converts to line:column once at the end.
struct Report<'t> {
    file: String,
    text: &'t str,
    /// The job the errors being reported belong to, if any.
    job: Option<String>,
    found: Vec<Found>,
}

struct Found {
    /// `None` when the parser could not say where (sorted first).
    at: Option<usize>,
    job: Option<String>,
    message: String,
}

impl<'t> Report<'t> {
    fn new(path: &Path, text: &'t str) -> Self {
        Report {
            file: path.display().to_string(),
            text,
            job: None,
            found: Vec::new(),
        }
    }

    fn error(&mut self, at: usize, message: impl Into<String>) {
        self.error_at(Some(at), message);
    }

    fn error_at(&mut self, at: Option<usize>, message: impl Into<String>) {
        self.found.push(Found {
            at,
            job: self.job.clone(),
            message: message.into(),
        });
    }

    /// Runs `f` with errors attributed to job `name`. The name is escaped,
    /// since an invalid one may hold quotes or control characters, and
    /// shortened like any other user string.
    fn in_job<T>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> T) -> T {
        let shown = quoted(name);
        self.job = Some(shown[1..shown.len() - 1].to_string());
        let result = f(self);
        self.job = None;
        result
    }

    fn has_errors(&self) -> bool {
        !self.found.is_empty()
    }

    /// Syntax errors in file order, up to the first one inside an array or
    /// inline table: those may span lines, so after an unclosed bracket
    /// toml's recovery reads the rest of the file as its contents and
    /// complains about every later line.
    fn syntax_errors(&mut self, errors: Vec<toml::de::Error>) {
        // toml gives a key of too many parts no position: such errors take
        // the places of the long keys, one each, in file order.
        let mut long_keys = None;
        let mut last_long_key = None;
        let mut found: Vec<(Option<usize>, &toml::de::Error)> = errors
            .iter()
            .map(|e| {
                let at = e.span().map(|s| s.start).or_else(|| {
                    if e.message() != TOO_MANY_PARTS {
                        return None;
                    }
                    let next = long_keys
                        .get_or_insert_with(|| long_dotted_keys(self.text).into_iter())
                        .next();
                    last_long_key = next.or(last_long_key);
                    last_long_key
                });
                (at, e)
            })
            .collect();
        // toml reports parser errors before document errors (duplicates).
        found.sort_by_key(|(at, _)| *at);
        let mut reported = Vec::new();
        for (at, e) in found {
            let reason = self.syntax_reason(e);
            if reported.contains(&(at, reason.clone())) {
                continue;
            }
            if reported.len() == MAX_SYNTAX_ERRORS {
                self.error_at(at, "too many TOML syntax errors; fix the ones above first");
                break;
            }
            self.error_at(at, format!("invalid TOML: {reason}"));
            reported.push((at, reason));
            if in_brackets(e.message()) {
                break;
            }
        }
    }

    /// toml's `Display` draws a multi-line snippet; the message alone is the
    /// reason, to which the offending text is added where toml leaves it out.
    fn syntax_reason(&self, e: &toml::de::Error) -> String {
        let reason = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
        let snippet = e
            .span()
            .and_then(|s| self.text.get(s))
            .filter(|s| !s.is_empty());
        let at = e.span().map_or(0, |s| s.start);
        let line_start = self
            .text
            .get(..at)
            .and_then(|b| b.rfind('\n'))
            .map_or(0, |i| i + 1);
        let in_header = self
            .text
            .get(line_start..)
            .is_some_and(|line| line.trim_start().starts_with('['));
        let at_line_start = self
            .text
            .get(line_start..at)
            .is_some_and(|before| before.trim().is_empty());
        let rest_of_line = self
            .text
            .get(at..)
            .and_then(|rest| rest.lines().next())
            .unwrap_or("")
            .trim();
        // Raw control characters are allowed nowhere but tab and line ends;
        // toml stops at one with a reason about what it expected instead.
        let control = e
            .span()
            .and_then(|s| self.text.get(s.start..))
            .and_then(|rest| rest.chars().next())
            .filter(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'));
        match control {
            Some('\0') => return "NUL byte (\\0) is not allowed in a TOML file".to_string(),
            Some(c) => {
                return format!(
                    "control character U+{:04X} is not allowed in a TOML file \
                     (in a string, write it as \\u{:04X})",
                    u32::from(c),
                    u32::from(c)
                )
            }
            None => {}
        }
        match (reason.as_str(), snippet) {
            ("duplicate key", Some(key)) if in_header => {
                format!("duplicate table: `{}` is already defined above", shown(key))
            }
            ("duplicate key", Some(key)) => {
                format!(
                    "duplicate key `{}`; a key may appear only once in a table",
                    shown(key)
                )
            }
            (r, _) if r.starts_with("string values must be quoted") && rest_of_line.is_empty() => {
                "missing value after `=`".to_string()
            }
            (TOO_MANY_PARTS, _) => "a dotted key or table name has too many parts".to_string(),
            (r, _) if in_brackets(r) && at_line_start => {
                format!("{r} (or is the `]` or `}}` closing an earlier line missing?)")
            }
            (r, _) if r.starts_with("cannot recurse further") => {
                "arrays or inline tables are nested too deeply".to_string()
            }
            _ => reason,
        }
    }

    fn into_errors(mut self) -> ConfigErrors {
        // Stable: errors at one spot keep the order they were checked in.
        self.found.sort_by_key(|f| f.at);
        self.found
            .dedup_by(|a, b| a.at == b.at && a.message == b.message);
        let lines = Lines::new(self.text);
        let file = self.file;
        ConfigErrors(
            self.found
                .into_iter()
                .map(|f| {
                    let (line, column) = f.at.map_or((0, 0), |at| lines.position(at));
                    ConfigError {
                        file: file.clone(),
                        line,
                        column,
                        job: f.job,
                        message: f.message,
                    }
                })
                .collect(),
        )
    }
}

/// toml's message for a dotted key or table name of more parts than
/// [`MAX_KEY_DOTS`] allows; it comes without a position.
const TOO_MANY_PARTS: &str = "recursion limit";
/// toml refuses a dotted key or table name with this many dots (81 parts).
const MAX_KEY_DOTS: usize = 80;

/// Where each dotted key or table name of [`MAX_KEY_DOTS`] dots or more
/// starts, in file order: a dot-separated run of bare or quoted keys outside
/// strings and comments, which is what such a key is. Other uses of dots
/// (floats, times, strings) never reach that many in one run.
fn long_dotted_keys(text: &str) -> Vec<usize> {
    let bytes = text.as_bytes();
    let mut starts = Vec::new();
    // The start of the current run of keys, and the dots in it so far.
    let mut run: Option<(usize, usize)> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'#' => {
                run = None;
                i = text[i..].find('\n').map_or(bytes.len(), |n| i + n);
                continue;
            }
            b'"' | b'\'' if bytes[i..].starts_with(&[b, b, b]) => {
                // A multi-line string is a value, never a key.
                run = None;
                i += 3;
                while i < bytes.len() && !bytes[i..].starts_with(&[b, b, b]) {
                    i += if b == b'"' && bytes[i] == b'\\' { 2 } else { 1 };
                }
                // Up to two quotes may close the content before the three.
                i += 3;
                while i < bytes.len() && bytes[i] == b {
                    i += 1;
                }
                continue;
            }
            b'"' | b'\'' => {
                run.get_or_insert((i, 0));
                i += 1;
                while i < bytes.len() && bytes[i] != b && bytes[i] != b'\n' {
                    i += if b == b'"' && bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'.' => {
                if let Some((start, dots)) = &mut run {
                    *dots += 1;
                    if *dots == MAX_KEY_DOTS {
                        starts.push(*start);
                    }
                }
            }
            b' ' | b'\t' => {}
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | 0x80.. => {
                run.get_or_insert((i, 0));
            }
            _ => run = None,
        }
        i += 1;
    }
    starts
}

/// Byte offset to 1-based line:column, the column counted in characters as
/// editors do. A leading byte-order mark is not a column.
struct Lines<'t> {
    text: &'t str,
    starts: Vec<usize>,
}

impl<'t> Lines<'t> {
    fn new(text: &'t str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Lines { text, starts }
    }

    fn position(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.starts.partition_point(|&start| start <= offset);
        let start = self.starts[line - 1];
        let before = &self.text[start..offset];
        let before = if start == 0 {
            before.strip_prefix('\u{feff}').unwrap_or(before)
        } else {
            before
        };
        (line, before.chars().count() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(src: &str) -> Result<Config, ConfigErrors> {
        load_str(Path::new("jobs.toml"), src.as_bytes())
    }

    fn valid(src: &str) -> Config {
        load_text(src).unwrap_or_else(|e| panic!("expected a valid config, got:\n{e}"))
    }

    /// Every error as the user sees it.
    fn errors(src: &str) -> Vec<String> {
        match load_text(src) {
            Ok(_) => panic!("expected errors, the config was accepted:\n{src}"),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    fn assert_errors(src: &str, expected: &[&str]) {
        assert_eq!(errors(src), expected, "for input:\n{src}");
    }

    /// A valid job with `line` added as its line 4.
    fn job_with(line: &str) -> String {
        format!("[jobs.backup]\nschedule = \"0 3 * * *\"\ncommand = [\"/bin/backup\"]\n{line}\n")
    }

    const FULL: &str = r#"
[scheduler]
state_dir = "state"
shutdown_grace = "45s"
history = 500

[defaults]
timezone = "America/New_York"
overlap = "allow"
timeout = "1h"
catchup = "5m"
kill_grace = "20s"

[jobs.nightly-report]
description = "Build the daily sales report"
schedule = "30 2 * * *"
timezone = "Europe/Berlin"
command = ["/usr/local/bin/report", "--full", ""]
working_dir = "reports"
env = { REPORT_BUCKET = "s3://reports", EMPTY = "" }
timeout = "20m"
enabled = false
overlap = "skip"
catchup = "0s"
kill_grace = "1m 30s"

[jobs.backup]
schedule = "0 3 * * *"
shell = "pg_dump shop | gzip > /backups/shop.gz"
working_dir = "/srv/backup"

[jobs.no-limit]
schedule = "*/5 * * * *"
command = ["/bin/true"]
timeout = "none"
"#;

    #[test]
    fn full_config_applies_defaults_and_overrides() {
        let config = load_str(Path::new("/etc/bgsched/jobs.toml"), FULL.as_bytes()).unwrap();
        assert_eq!(config.path, Path::new("/etc/bgsched/jobs.toml"));
        assert_eq!(
            config.scheduler,
            SchedulerSettings {
                state_dir: Some(PathBuf::from("/etc/bgsched/state")),
                shutdown_grace: Duration::from_secs(45),
                history_limit: 500,
            }
        );
        assert_eq!(
            config.jobs.keys().collect::<Vec<_>>(),
            ["backup", "nightly-report", "no-limit"]
        );

        let report = &config.jobs["nightly-report"];
        assert_eq!(report.name, "nightly-report");
        assert_eq!(
            report.description.as_deref(),
            Some("Build the daily sales report")
        );
        assert_eq!(report.timezone, chrono_tz::Europe::Berlin);
        assert_eq!(
            report.program,
            Program::Argv(vec![
                "/usr/local/bin/report".into(),
                "--full".into(),
                "".into()
            ])
        );
        assert_eq!(
            report.working_dir.as_deref(),
            Some(Path::new("/etc/bgsched/reports"))
        );
        assert_eq!(
            report.env,
            BTreeMap::from([
                ("EMPTY".to_string(), String::new()),
                ("REPORT_BUCKET".to_string(), "s3://reports".to_string()),
            ])
        );
        assert_eq!(report.timeout, Some(Duration::from_secs(20 * 60)));
        assert!(!report.enabled);
        assert_eq!(report.overlap, Overlap::Skip);
        assert_eq!(report.catchup, Duration::ZERO);
        assert_eq!(report.kill_grace, Duration::from_secs(90));

        // Everything not set on the job comes from [defaults].
        let backup = &config.jobs["backup"];
        assert_eq!(backup.description, None);
        assert_eq!(backup.timezone, chrono_tz::America::New_York);
        assert_eq!(
            backup.program,
            Program::Shell("pg_dump shop | gzip > /backups/shop.gz".into())
        );
        assert_eq!(
            backup.working_dir.as_deref(),
            Some(Path::new("/srv/backup"))
        );
        assert!(backup.env.is_empty());
        assert_eq!(backup.timeout, Some(Duration::from_secs(3600)));
        assert!(backup.enabled);
        assert_eq!(backup.overlap, Overlap::Allow);
        assert_eq!(backup.catchup, Duration::from_secs(300));
        assert_eq!(backup.kill_grace, Duration::from_secs(20));

        // "none" lifts the inherited timeout.
        assert_eq!(config.jobs["no-limit"].timeout, None);
    }

    #[test]
    fn http_listen_is_off_by_default_and_takes_ip_and_port() {
        assert_eq!(valid("").http.listen, None);
        let c = valid("[http]\nlisten = \"[::1]:0\"\n");
        assert_eq!(c.http.listen, Some("[::1]:0".parse().unwrap()));
        assert_errors(
            "[http]\nlisten = \"0.0.0.0\"\n",
            &["jobs.toml:2:10: listen \"0.0.0.0\" is not an IP address and port like \"127.0.0.1:9187\" or \"[::1]:9187\"; add a port, e.g. \"0.0.0.0:9187\""],
        );
    }

    #[test]
    fn built_in_defaults_apply_when_nothing_is_set() {
        let config = valid("[jobs.tick]\nschedule = \"* * * * *\"\ncommand = [\"/bin/true\"]\n");
        assert_eq!(config.scheduler, SchedulerSettings::default());
        assert_eq!(config.scheduler.shutdown_grace, Duration::from_secs(30));
        assert_eq!(config.scheduler.history_limit, 100);
        let job = &config.jobs["tick"];
        assert_eq!(job.timezone, Tz::UTC);
        assert_eq!(job.overlap, Overlap::Skip);
        assert_eq!(job.timeout, None);
        assert_eq!(job.catchup, Duration::from_secs(60));
        assert_eq!(job.kill_grace, Duration::from_secs(10));
        assert!(job.enabled);
        assert_eq!(job.working_dir, None);
    }

    #[test]
    fn config_without_jobs_is_valid() {
        for src in [
            "",
            "# nothing yet\n",
            "[jobs]\n",
            "[scheduler]\nhistory = 1\n",
        ] {
            assert!(valid(src).jobs.is_empty(), "{src:?}");
        }
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let src = "[scheduler]\nstate_dir = \"state\"\n[jobs.a]\nschedule = \"* * * * *\"\ncommand = [\"x\"]\nworking_dir = \"work\"\n";
        let config = load_str(Path::new("conf/jobs.toml"), src.as_bytes()).unwrap();
        assert_eq!(
            config.scheduler.state_dir,
            Some(PathBuf::from("conf/state"))
        );
        assert_eq!(
            config.jobs["a"].working_dir,
            Some(PathBuf::from("conf/work"))
        );
        let config = load_str(Path::new("jobs.toml"), src.as_bytes()).unwrap();
        assert_eq!(config.jobs["a"].working_dir, Some(PathBuf::from("./work")));
    }

    #[test]
    fn missing_file_reports_the_os_reason_without_position() {
        let e = load(Path::new("/nonexistent/bgsched/jobs.toml")).unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert_eq!((e.0[0].line, e.0[0].column), (0, 0));
        assert_eq!(
            e.to_string(),
            "/nonexistent/bgsched/jobs.toml: cannot read config file: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn load_reads_the_file() {
        let dir = std::env::temp_dir().join(format!("bgsched-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("jobs.toml");
        std::fs::write(&path, FULL).unwrap();
        let config = load(&path).unwrap();
        assert_eq!(config.jobs.len(), 3);
        assert_eq!(config.scheduler.state_dir, Some(dir.join("state")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    // 1. TOML syntax

    #[test]
    fn syntax_errors_are_one_line_and_located() {
        assert_errors(
            "[jobs.backup]\nschedule = \"0 3 * * *\ncommand = [\"x\"]\n",
            &["jobs.toml:2:22: invalid TOML: invalid basic string, expected `\"`"],
        );
        assert_errors(
            "[jobs.backup]\nschedule \"0 3 * * *\"\n",
            &["jobs.toml:2:10: invalid TOML: key with no value, expected `=`"],
        );
        assert_errors(
            "[jobs.backup]\nschedule =\n",
            &["jobs.toml:2:11: invalid TOML: missing value after `=`"],
        );
        assert_errors(
            "[jobs.a]\nschedule = \"1 * * * *\"\nschedule = \"2 * * * *\"\n",
            &["jobs.toml:3:1: invalid TOML: duplicate key `schedule`; a key may appear only once in a table"],
        );
        assert_errors(
            "[jobs.a]\n[jobs.a]\n",
            &["jobs.toml:2:7: invalid TOML: duplicate table: `a` is already defined above"],
        );
    }

    #[test]
    fn several_syntax_errors_are_all_reported() {
        assert_errors(
            "a = 'x\nb = 1\n[jobs\n",
            &[
                "jobs.toml:1:7: invalid TOML: invalid literal string, expected `'`",
                "jobs.toml:3:6: invalid TOML: unclosed table, expected `]`",
            ],
        );
    }

    #[test]
    fn an_unclosed_bracket_does_not_flood_the_rest_of_the_file() {
        let src = "[jobs.a]\nschedule = \"* * * * *\"\ncommand = [\"/bin/x\", \"--full\"\nenabled = true\n\n[jobs.b]\nschedule = 5\n";
        assert_errors(
            src,
            &["jobs.toml:4:1: invalid TOML: missing comma between array elements, expected `,` (or is the `]` or `}` closing an earlier line missing?)"],
        );
    }

    #[test]
    fn a_file_that_is_not_toml_gives_a_bounded_list() {
        let src = "This is a README, not a config.\n".repeat(100);
        let errors = errors(&src);
        assert_eq!(errors.len(), MAX_SYNTAX_ERRORS + 1);
        assert_eq!(
            errors[0],
            "jobs.toml:1:6: invalid TOML: key with no value, expected `=`"
        );
        assert_eq!(
            errors[MAX_SYNTAX_ERRORS],
            "jobs.toml:21:6: too many TOML syntax errors; fix the ones above first"
        );
    }

    #[test]
    fn columns_count_characters_and_skip_a_byte_order_mark() {
        assert_errors(
            "[jobs.\"ä\"]\nschedule = \"* * * * *\"\ncommand = [\"x\"]\n",
            &["jobs.toml:1:7: job \"ä\": invalid job name: only ASCII letters, digits, '.', '_' and '-' are allowed, found 'ä'"],
        );
        assert_errors(
            &job_with("env = { \"größe\" = \"x\", B = 1 }"),
            &["jobs.toml:4:28: job \"backup\": env.B must be a string, found integer (put the value in quotes)"],
        );
        let src = "\u{feff}history = 1\r\n";
        assert_errors(
            src,
            &["jobs.toml:1:1: unknown top-level key `history`; `history` belongs in [scheduler]"],
        );
        let src = "[scheduler]\r\nhistory = 0\r\n";
        assert_errors(
            src,
            &["jobs.toml:2:11: history must be between 1 and 100000 (run records kept per job), found 0"],
        );
    }

    // 2. Types

    #[test]
    fn wrong_types_name_the_expected_and_found_type() {
        assert_errors(
            "[jobs.backup]\nschedule = 5\ncommand = [\"x\"]\n",
            &["jobs.toml:2:12: job \"backup\": schedule must be a string, found integer"],
        );
        assert_errors(
            "[jobs.backup]\nschedule = \"* * * * *\"\ncommand = \"ls -l\"\n",
            &["jobs.toml:3:11: job \"backup\": command must be an array of strings like [\"/usr/bin/backup\", \"--full\"], found string; for a shell command line use shell = \"...\" instead"],
        );
        assert_errors(
            "[jobs.backup]\nschedule = \"* * * * *\"\nshell = [\"ls\", \"-l\"]\n",
            &["jobs.toml:3:9: job \"backup\": shell must be a string (a command line for /bin/sh -c), found array; for an argv list use command = [...] instead"],
        );
        assert_errors(
            &job_with("enabled = \"yes\""),
            &["jobs.toml:4:11: job \"backup\": enabled must be true or false, found string (write it without quotes)"],
        );
        assert_errors(
            &job_with("description = [\"a\"]"),
            &["jobs.toml:4:15: job \"backup\": description must be a string, found array"],
        );
        assert_errors(
            &job_with("working_dir = 1979-05-27"),
            &["jobs.toml:4:15: job \"backup\": working_dir must be a string, found datetime"],
        );
        assert_errors(
            &job_with("env = { PORT = 8080, DEBUG = true, NAME = \"ok\", LIST = [] }"),
            &[
                "jobs.toml:4:16: job \"backup\": env.PORT must be a string, found integer (put the value in quotes)",
                "jobs.toml:4:30: job \"backup\": env.DEBUG must be a string, found boolean (put the value in quotes)",
                "jobs.toml:4:56: job \"backup\": env.LIST must be a string, found array",
            ],
        );
        assert_errors(
            &job_with("env = [\"A=1\"]"),
            &["jobs.toml:4:7: job \"backup\": env must be a table of strings like { NAME = \"value\" }, found array"],
        );
        assert_errors(
            "[jobs.backup]\nschedule = \"* * * * *\"\ncommand = [\"/bin/x\", 2]\n",
            &["jobs.toml:3:22: job \"backup\": command[1] must be a string, found integer"],
        );
        assert_errors(
            &job_with("timeout = 30"),
            &["jobs.toml:4:11: job \"backup\": timeout must be a duration string like \"30s\" or \"1h 30m\", found integer"],
        );
        assert_errors(
            "[scheduler]\nhistory = \"100\"\n",
            &["jobs.toml:2:11: history must be an integer, found string"],
        );
    }

    #[test]
    fn jobs_and_sections_must_be_tables() {
        assert_errors(
            "[jobs]\nx = 1\n",
            &["jobs.toml:2:5: job \"x\": each job must be a table like [jobs.x], found integer"],
        );
        assert_errors(
            "[[jobs.x]]\nschedule = \"* * * * *\"\n",
            &["jobs.toml:1:1: job \"x\": each job must be a table like [jobs.x], found array (write [jobs.<name>], not [[jobs.<name>]])"],
        );
        assert_errors(
            "jobs = 5\n",
            &["jobs.toml:1:8: jobs must be a table with one [jobs.<name>] table per job, found integer"],
        );
        assert_errors(
            "[[jobs]]\nname = \"x\"\n",
            &["jobs.toml:1:1: jobs must be a table with one [jobs.<name>] table per job, found array (write [jobs.<name>], not [[jobs]])"],
        );
        assert_errors(
            "scheduler = \"x\"\ndefaults = []\n",
            &[
                "jobs.toml:1:13: scheduler must be a table, found string",
                "jobs.toml:2:12: defaults must be a table, found array",
            ],
        );
    }

    // 3. Unknown keys

    #[test]
    fn unknown_keys_at_every_level_suggest_the_closest_key() {
        assert_errors(
            "[job.backup]\n",
            &["jobs.toml:1:2: unknown top-level key `job`; did you mean `jobs`?"],
        );
        assert_errors(
            "title = \"x\"\n",
            &["jobs.toml:1:1: unknown top-level key `title` (expected one of: scheduler, defaults, jobs, cluster, http)"],
        );
        assert_errors(
            "[scheduler]\nhistroy = 5\nstate = \"x\"\n",
            &[
                "jobs.toml:2:1: unknown key `histroy` in [scheduler]; did you mean `history`?",
                "jobs.toml:3:1: unknown key `state` in [scheduler]; did you mean `state_dir`?",
            ],
        );
        assert_errors(
            "[defaults]\ntimzone = \"UTC\"\nschedule = \"* * * * *\"\n",
            &[
                "jobs.toml:2:1: unknown key `timzone` in [defaults]; did you mean `timezone`?",
                "jobs.toml:3:1: unknown key `schedule` in [defaults]; `schedule` belongs in a job table ([jobs.<name>])",
            ],
        );
        assert_errors(
            "[jobs.backup]\nschedul = \"* * * * *\"\ncomand = [\"x\"]\ntime_out = \"1s\"\nworking_directory = \"/\"\nhistory = 3\ncolor = \"red\"\n",
            &[
                "jobs.toml:1:7: job \"backup\": missing schedule; add e.g. schedule = \"30 2 * * *\"",
                "jobs.toml:1:7: job \"backup\": missing command; add command = [\"/path/to/program\", \"arg\"] or shell = \"a shell command line\"",
                "jobs.toml:2:1: job \"backup\": unknown key `schedul`; did you mean `schedule`?",
                "jobs.toml:3:1: job \"backup\": unknown key `comand`; did you mean `command`?",
                "jobs.toml:4:1: job \"backup\": unknown key `time_out`; did you mean `timeout`?",
                "jobs.toml:5:1: job \"backup\": unknown key `working_directory`; did you mean `working_dir`?",
                "jobs.toml:6:1: job \"backup\": unknown key `history`; `history` belongs in [scheduler]",
                "jobs.toml:7:1: job \"backup\": unknown key `color` (expected one of: description, schedule, timezone, command, shell, working_dir, env, timeout, enabled, overlap, catchup, kill_grace, retries, retry_backoff, retry_backoff_max, jitter, on_failure)",
            ],
        );
    }

    // 4. Schedules

    #[test]
    fn bad_schedule_is_located_at_its_value() {
        let src = "[defaults]\ntimezone = \"UTC\"\n\n[jobs.nightly]\nschedule = \"30 2 * * *\"\ncommand = [\"x\"]\n\n\n\n\n\n\n[jobs.backup]\nschedule = \"61 * * * *\"\ncommand = [\"/bin/backup\"]\n";
        assert_errors(
            src,
            &["jobs.toml:14:12: job \"backup\": invalid schedule \"61 * * * *\": minute 61 out of range 0-59"],
        );
        assert_errors(
            "[jobs.backup]\nschedule = \"  \"\ncommand = [\"x\"]\n",
            &["jobs.toml:2:12: job \"backup\": schedule must not be empty; use a cron expression like \"30 2 * * *\""],
        );
    }

    #[test]
    fn bad_schedule_is_still_checked_when_the_zone_is_bad() {
        let errs = errors(
            "[jobs.a]\ntimezone = \"Mars/Olympus\"\nschedule = \"61 * * * *\"\ncommand = [\"x\"]\n",
        );
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(
            errs[0].starts_with("jobs.toml:2:12: job \"a\": unknown time zone \"Mars/Olympus\"")
        );
        assert!(errs[1].starts_with("jobs.toml:3:12: job \"a\": invalid schedule"));
    }

    // 5. Time zones

    #[test]
    fn unknown_time_zone_suggests_a_real_one() {
        assert_errors(
            "[defaults]\ntimezone = \"Europe/Berln\"\n",
            &["jobs.toml:2:12: unknown time zone \"Europe/Berln\"; did you mean \"Europe/Berlin\"?"],
        );
        assert_errors(
            &job_with("timezone = \"europe/paris\""),
            &["jobs.toml:4:12: job \"backup\": unknown time zone \"europe/paris\"; did you mean \"Europe/Paris\"?"],
        );
        assert_errors(
            &job_with("timezone = \"Tokyo\""),
            &["jobs.toml:4:12: job \"backup\": unknown time zone \"Tokyo\"; did you mean \"Asia/Tokyo\"?"],
        );
        assert_errors(
            &job_with("timezone = \"Middle Earth\""),
            &["jobs.toml:4:12: job \"backup\": unknown time zone \"Middle Earth\" (use an IANA name such as \"Europe/Berlin\" or \"UTC\")"],
        );
    }

    // 6. Durations

    #[test]
    fn bad_durations_give_the_reason() {
        assert_errors(
            &job_with("timeout = \"5 minuts\""),
            &["jobs.toml:4:11: job \"backup\": invalid duration \"5 minuts\" for timeout: unknown time unit \"minuts\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)"],
        );
        assert_errors(
            "[scheduler]\nshutdown_grace = \"30\"\n",
            &["jobs.toml:2:18: invalid duration \"30\" for shutdown_grace: time unit needed, for example 30sec or 30ms"],
        );
        assert_errors(
            &job_with("timeout = \"0s\""),
            &["jobs.toml:4:11: job \"backup\": timeout must be greater than zero (use \"none\" or leave it out for no time limit)"],
        );
        assert_errors(
            "[defaults]\ntimeout = \"0\"\n",
            &["jobs.toml:2:11: timeout must be greater than zero (use \"none\" or leave it out for no time limit)"],
        );
        assert_errors(
            &job_with("kill_grace = \"101 years\""),
            &["jobs.toml:4:14: job \"backup\": kill_grace \"101 years\" is longer than 100 years; use a shorter duration"],
        );
        assert_errors(
            "[defaults]\ncatchup = \"99999999999999999999s\"\n",
            &["jobs.toml:2:11: invalid duration \"99999999999999999999s\" for catchup: number is too large or cannot be represented without a lack of precision (values below 1ns are not supported)"],
        );
        // Zero is fine where it means "off" or "immediately".
        let config = valid(&job_with("catchup = \"0s\"\nkill_grace = \"0s\""));
        assert_eq!(config.jobs["backup"].catchup, Duration::ZERO);
    }

    // 7, 8. Command and shell

    #[test]
    fn empty_command_or_shell_is_rejected() {
        assert_errors(
            "[jobs.backup]\nschedule = \"* * * * *\"\ncommand = []\n",
            &["jobs.toml:3:11: job \"backup\": command must not be empty; give the program and its arguments, e.g. [\"/usr/bin/backup\", \"--full\"]"],
        );
        assert_errors(
            "[jobs.backup]\nschedule = \"* * * * *\"\ncommand = [\"\", \"--full\"]\n",
            &["jobs.toml:3:12: job \"backup\": command[0] (the program to run) must not be empty"],
        );
        assert_errors(
            "[jobs.backup]\nschedule = \"* * * * *\"\nshell = \" \"\n",
            &["jobs.toml:3:9: job \"backup\": shell must not be empty; give a command line such as \"pg_dump shop | gzip > /backups/shop.gz\""],
        );
    }

    #[test]
    fn exactly_one_of_command_and_shell() {
        assert_errors(
            "[jobs.backup]\nschedule = \"* * * * *\"\ncommand = [\"x\"]\nshell = \"x\"\n",
            &["jobs.toml:4:1: job \"backup\": both command and shell are set; keep command (argv, run directly) or shell (run with /bin/sh -c), not both"],
        );
        assert_errors(
            "\n[jobs.backup]\nschedule = \"* * * * *\"\n",
            &["jobs.toml:2:7: job \"backup\": missing command; add command = [\"/path/to/program\", \"arg\"] or shell = \"a shell command line\""],
        );
    }

    // 9. Job names

    #[test]
    fn bad_job_names_are_located_at_the_header() {
        let job = "schedule = \"* * * * *\"\ncommand = [\"x\"]\n";
        assert_errors(
            &format!("[jobs.\"nightly report\"]\n{job}"),
            &["jobs.toml:1:7: job \"nightly report\": invalid job name: only ASCII letters, digits, '.', '_' and '-' are allowed, found ' '"],
        );
        assert_errors(
            &format!("[jobs.\"\"]\n{job}"),
            &["jobs.toml:1:7: job \"\": invalid job name: the name must not be empty"],
        );
        assert_errors(
            &format!("[jobs.\"a\\\"b\\n\"]\n{job}"),
            &["jobs.toml:1:7: job \"a\\\"b\\n\": invalid job name: only ASCII letters, digits, '.', '_' and '-' are allowed, found '\"'"],
        );
        assert_errors(
            &format!("[jobs.\"..\"]\n{job}"),
            &["jobs.toml:1:7: job \"..\": invalid job name: \".\" and \"..\" are not allowed"],
        );
        let long = "a".repeat(129);
        let errs = errors(&format!("[jobs.{long}]\n{job}"));
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with("jobs.toml:1:7: job \"aaaa")
                && errs[0].ends_with(
                    "…\": invalid job name: the name is 129 characters long, at most 128 are allowed"
                ),
            "{errs:?}"
        );
        let longest = "a".repeat(128);
        assert!(valid(&format!("[jobs.{longest}]\n{job}"))
            .jobs
            .contains_key(&longest));
        assert_eq!(
            valid(&format!("[jobs.\"Nightly_report-2.0\"]\n{job}"))
                .jobs
                .len(),
            1
        );
    }

    // 10. Missing schedule

    #[test]
    fn missing_schedule_is_located_at_the_job() {
        assert_errors(
            "[jobs.backup]\ncommand = [\"x\"]\n",
            &["jobs.toml:1:7: job \"backup\": missing schedule; add e.g. schedule = \"30 2 * * *\""],
        );
        // Also when the job only exists through a sub-table.
        assert_errors(
            "[jobs.backup.env]\nA = \"1\"\n",
            &[
                "jobs.toml:1:7: job \"backup\": missing schedule; add e.g. schedule = \"30 2 * * *\"",
                "jobs.toml:1:7: job \"backup\": missing command; add command = [\"/path/to/program\", \"arg\"] or shell = \"a shell command line\"",
            ],
        );
    }

    // 11. Overlap

    #[test]
    fn bad_overlap_value() {
        assert_errors(
            &job_with("overlap = \"never\""),
            &["jobs.toml:4:11: job \"backup\": overlap must be \"skip\", \"allow\", \"queue\" or \"replace\", found \"never\""],
        );
        assert_errors(
            "[defaults]\noverlap = false\n",
            &["jobs.toml:2:11: overlap must be \"skip\", \"allow\", \"queue\" or \"replace\", found boolean"],
        );
    }

    // 12. Encoding

    #[test]
    fn invalid_utf8_is_located_at_the_first_bad_byte() {
        let mut src = b"[jobs.backup]\nschedule = \"* * * * *\"\ndescription = \"gr".to_vec();
        src.extend_from_slice(&[0xF6, 0xDF, b'e', b'"', b'\n']);
        let e = load_str(Path::new("jobs.toml"), &src).unwrap_err();
        assert_eq!(
            e.to_string(),
            "jobs.toml:3:18: file is not valid UTF-8 (byte 0xF6 here)"
        );
        let e = load_str(Path::new("jobs.toml"), b"\xFF\xFEa\0").unwrap_err();
        assert_eq!(
            e.to_string(),
            "jobs.toml:1:1: file is not valid UTF-8 (byte 0xFF here); it looks like UTF-16, save it as UTF-8"
        );
        let mut src = "é = 1\néé".as_bytes().to_vec();
        src.push(0xC3);
        let e = load_str(Path::new("jobs.toml"), &src).unwrap_err();
        assert_eq!(
            e.to_string(),
            "jobs.toml:2:3: file is not valid UTF-8 (byte 0xC3 here)"
        );
    }

    // 13. Strings that reach the OS

    #[test]
    fn nul_bytes_and_bad_env_names_are_rejected() {
        assert_errors(
            "[jobs.backup]\nschedule = \"* * * * *\"\ncommand = [\"/bin/x\", \"a\\u0000b\"]\n",
            &["jobs.toml:3:22: job \"backup\": command[1] must not contain a NUL byte (\\u0000)"],
        );
        assert_errors(
            "[jobs.backup]\nschedule = \"* * * * *\"\nshell = \"ls\\u0000\"\n",
            &["jobs.toml:3:9: job \"backup\": shell must not contain a NUL byte (\\u0000)"],
        );
        assert_errors(
            &job_with("working_dir = \"/srv\\u0000\""),
            &["jobs.toml:4:15: job \"backup\": working_dir must not contain a NUL byte (\\u0000)"],
        );
        assert_errors(
            "[scheduler]\nstate_dir = \"\"\n",
            &["jobs.toml:2:13: state_dir must not be empty (leave it out to use the default)"],
        );
        assert_errors(
            &job_with(
                "env = { \"\" = \"x\", \"A=B\" = \"x\", \"N\\u0000\" = \"x\", V = \"\\u0000\" }",
            ),
            &[
                "jobs.toml:4:9: job \"backup\": env variable name must not be empty",
                "jobs.toml:4:19: job \"backup\": env variable name \"A=B\" must not contain '='",
                "jobs.toml:4:32: job \"backup\": env variable name \"N\\0\" must not contain a NUL byte",
                "jobs.toml:4:53: job \"backup\": env.V must not contain a NUL byte (\\u0000)",
            ],
        );
        // Relative working directories are fine.
        let config = valid(&job_with("working_dir = \"sub/dir\""));
        assert_eq!(
            config.jobs["backup"].working_dir.as_deref(),
            Some(Path::new("./sub/dir"))
        );
    }

    #[test]
    fn raw_control_characters_are_named_where_they_are() {
        let nul = "invalid TOML: NUL byte (\\0) is not allowed in a TOML file";
        for (src, at) in [
            ("[jobs.a]\0\n", "1:9"),
            ("[jobs.a]\nschedule = \"@da\0ily\"\n", "2:16"),
            ("[jobs.a]\nschedule = '@da\0ily'\n", "2:16"),
            ("[jobs.a]\nschedule = \"\"\"@da\0ily\"\"\"\n", "2:18"),
            ("[jobs.a] # \0\n", "1:12"),
            ("[jobs.a]\nsch\0edule = 1\n", "2:4"),
        ] {
            assert_eq!(errors(src)[0], format!("jobs.toml:{at}: {nul}"), "{src:?}");
        }
        assert_errors(
            "[jobs.a]\nschedule = \"@da\u{1b}ily\"\n",
            &[
                "jobs.toml:2:16: invalid TOML: control character U+001B is not allowed in a TOML \
               file (in a string, write it as \\u001B)",
            ],
        );
    }

    #[test]
    fn long_keys_and_values_are_shortened_and_checked_quickly() {
        let long = "x".repeat(100_000);
        let cut = format!("{}…", "x".repeat(100));
        let start = std::time::Instant::now();
        for (src, expected) in [
            (
                format!("{long} = 1\n"),
                format!("jobs.toml:1:1: unknown top-level key `{cut}` (expected one of"),
            ),
            (
                job_with(&format!("\"\\u001b{long}\" = 1")),
                format!("jobs.toml:4:1: job \"backup\": unknown key `\\u{{1b}}{}…` (expected one of", "x".repeat(99)),
            ),
            (
                job_with(&format!("timezone = \"{long}\"")),
                format!("jobs.toml:4:12: job \"backup\": unknown time zone \"{cut}\" (use an IANA name"),
            ),
            (
                job_with(&format!("timeout = \"5{long}\"")),
                format!(
                    "jobs.toml:4:11: job \"backup\": invalid duration \"5{}…\" for timeout: \
                     unknown time unit \"{cut}\", supported units:",
                    "x".repeat(99)
                ),
            ),
            (
                job_with(&format!("env = {{ {long} = 1 }}")),
                format!("jobs.toml:4:100012: job \"backup\": env.{cut} must be a string, found integer"),
            ),
            (
                format!("[scheduler]\nhistory = {}\n", "9".repeat(100_000)),
                format!(
                    "jobs.toml:2:11: history must be between 1 and 100000 (run records kept per job), found {}…",
                    "9".repeat(100)
                ),
            ),
            (
                format!("{long} = 1\n{long} = 2\n"),
                format!("jobs.toml:2:1: invalid TOML: duplicate key `{cut}`; a key may appear only once"),
            ),
        ] {
            let errors = errors(&src);
            assert!(errors[0].starts_with(&expected), "{:.300}\nexpected {expected:.300}", errors[0]);
            assert!(errors.iter().all(|e| e.len() < 1_000), "{errors:.300?}");
        }
        // Without the suggestion search over every zone and key name, which
        // takes about a minute for a 100,000-character name in a debug build.
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn long_dotted_keys_are_found_outside_strings_and_comments() {
        let key = |n: usize| vec!["k"; n].join(".");
        assert_eq!(long_dotted_keys(&format!("{} = 1\n", key(80))), [0; 0]);
        assert_eq!(long_dotted_keys(&format!("{} = 1\n", key(81))), [0]);
        let src = format!(
            "# {dots}\nx = \"{k}\" # {k}\ny = \"\"\"\n{k}\n\"\"\"\"\nz = '{k}'\nw = '''{k}'''\n\
             v = [1.5, 2.5]\n[ a . \"b.\\\"c\" . {k} ]\nq = {{ {k} = 1 }}\n",
            dots = ".".repeat(200),
            k = key(100),
        );
        let header = src.find("[ a").unwrap() + 2;
        let inline = src.find("q = {").unwrap() + 6;
        assert_eq!(long_dotted_keys(&src), [header, inline]);
    }

    #[test]
    fn a_file_over_the_limit_states_its_real_size() {
        let dir = std::env::temp_dir().join(format!("bgsched-size-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("jobs.toml");
        std::fs::write(&path, "#\n".repeat(20 * 1024 * 1024)).unwrap();
        let e = load(&path).unwrap_err();
        assert_eq!(
            e.0[0].message,
            "file is too large (41943040 bytes; a config file may be at most 32 MiB)"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        // A device has no size to state.
        let e = load(Path::new("/dev/zero")).unwrap_err();
        assert_eq!(
            e.0[0].message,
            "file is too large (more than 32 MiB; a config file may be at most 32 MiB)"
        );
    }

    // 14. Numbers

    #[test]
    fn history_must_be_in_range() {
        for value in ["0", "-5", "100001", "0x7fffffffffffffff"] {
            assert_errors(
                &format!("[scheduler]\nhistory = {value}\n"),
                &[&format!(
                    "jobs.toml:2:11: history must be between 1 and 100000 (run records kept per job), found {value}"
                )],
            );
        }
        assert_errors(
            "[scheduler]\nhistory = 1.5\n",
            &["jobs.toml:2:11: history must be an integer, found float"],
        );
        let config = valid("[scheduler]\nhistory = 100_000\n");
        assert_eq!(config.scheduler.history_limit, 100_000);
        assert_eq!(
            valid("[scheduler]\nhistory = 1\n").scheduler.history_limit,
            1
        );
    }

    // 15. Cluster

    /// A directory of its own under the system temp dir, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("bgsched-cluster-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn file(&self, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, content).unwrap();
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// `[cluster]` with one valid endpoint and `lines` from line 3 on.
    fn cluster_with(lines: &str) -> String {
        format!("[cluster]\netcd = [\"http://10.0.0.5:2379\"]\n{lines}\n")
    }

    #[test]
    fn full_cluster_section_is_parsed_with_tls_paths_resolved() {
        let dir = Scratch::new("full");
        std::fs::create_dir(dir.0.join("tls")).unwrap();
        dir.file("ca.pem", "CA");
        dir.file("tls/client.pem", "CERT");
        let key = dir.file("client.key", "KEY");
        dir.file("etcd-password", "s3cret\n");
        let src = format!(
            r#"[cluster]
etcd = ["https://10.0.0.5:2379", "https://etcd-2.internal:2379/", "https://[fd00::7]:12379"]
prefix = "/bgsched/prod"
lease_ttl = "15s"
max_clock_skew = "250ms"
ca_file = "ca.pem"
cert_file = "tls/client.pem"
key_file = "{}"
user = "bgsched"
password_file = "etcd-password"

[jobs.tick]
schedule = "* * * * *"
command = ["/bin/true"]
"#,
            key.display()
        );
        let path = dir.file("jobs.toml", &src);
        let config = load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.cluster,
            Some(ClusterSettings {
                endpoints: vec![
                    "https://10.0.0.5:2379".into(),
                    "https://etcd-2.internal:2379".into(),
                    "https://[fd00::7]:12379".into(),
                ],
                prefix: "/bgsched/prod".into(),
                lease_ttl: Duration::from_secs(15),
                max_clock_skew: Duration::from_millis(250),
                ca_file: Some(dir.0.join("ca.pem")),
                cert_file: Some(dir.0.join("tls/client.pem")),
                key_file: Some(key),
                user: Some("bgsched".into()),
                password: Some(Secret::new("s3cret")),
            })
        );
        // A relative config path gives relative, but resolved, file paths.
        let src = "[cluster]\netcd = [\"https://etcd:2379\"]\nca_file = \"ca.pem\"\n";
        let config = load_str(&dir.0.join("jobs.toml"), src.as_bytes()).unwrap();
        assert_eq!(config.cluster.unwrap().ca_file, Some(dir.0.join("ca.pem")));
    }

    #[test]
    fn cluster_defaults_apply_when_only_etcd_is_set() {
        let config =
            valid("[cluster]\netcd = [\"http://etcd-1:2379/\", \"http://10.0.0.6:2379\"]\n");
        assert_eq!(
            config.cluster,
            Some(ClusterSettings {
                endpoints: vec!["http://etcd-1:2379".into(), "http://10.0.0.6:2379".into()],
                prefix: "/bgsched".into(),
                lease_ttl: Duration::from_secs(10),
                max_clock_skew: Duration::from_secs(1),
                ca_file: None,
                cert_file: None,
                key_file: None,
                user: None,
                password: None,
            })
        );
        assert_eq!(valid("").cluster, None);
        // https without ca_file verifies against the system roots.
        let config = valid("[cluster]\netcd = [\"https://etcd.example.com:2379\"]\n");
        assert_eq!(config.cluster.unwrap().ca_file, None);
    }

    #[test]
    fn password_env_is_read_at_load_time() {
        std::env::set_var("BGSCHED_TEST_ETCD_PASSWORD_READ", "from-env\n");
        let config = valid(&cluster_with(
            "user = \"bgsched\"\npassword_env = \"BGSCHED_TEST_ETCD_PASSWORD_READ\"",
        ));
        let cluster = config.cluster.unwrap();
        assert_eq!(cluster.user.as_deref(), Some("bgsched"));
        // Taken as is: only a file's trailing line break is trimmed.
        assert_eq!(cluster.password.unwrap().expose(), "from-env\n");
    }

    #[test]
    fn cluster_must_be_a_table() {
        assert_errors(
            "cluster = \"http://etcd:2379\"\n",
            &["jobs.toml:1:11: cluster must be a table, found string"],
        );
        assert_errors(
            "[[cluster]]\netcd = [\"http://etcd:2379\"]\n",
            &["jobs.toml:1:1: cluster must be a table, found array (write [cluster], not [[cluster]])"],
        );
    }

    #[test]
    fn unknown_cluster_keys_suggest_the_right_key() {
        assert_errors(
            "[cluster]\nendpoints = [\"http://etcd:2379\"]\nttl = \"10s\"\nprefx = \"/x\"\ncacert = \"ca.pem\"\npassword = \"hunter2\"\ncolour = \"blue\"\n",
            &[
                "jobs.toml:1:2: missing etcd; add the etcd endpoints, e.g. etcd = [\"http://10.0.0.5:2379\"]",
                "jobs.toml:2:1: unknown key `endpoints` in [cluster]; did you mean `etcd`?",
                "jobs.toml:3:1: unknown key `ttl` in [cluster]; did you mean `lease_ttl`?",
                "jobs.toml:4:1: unknown key `prefx` in [cluster]; did you mean `prefix`?",
                "jobs.toml:5:1: unknown key `cacert` in [cluster]; did you mean `ca_file`?",
                "jobs.toml:6:1: unknown key `password` in [cluster]; keep the password out of the config: set password_env (the name of an environment variable holding it) or password_file (a file holding it)",
                "jobs.toml:7:1: unknown key `colour` in [cluster] (expected one of: etcd, prefix, lease_ttl, max_clock_skew, ca_file, cert_file, key_file, user, password_env, password_file)",
            ],
        );
        assert_errors(
            "etcd = [\"http://etcd:2379\"]\n[scheduler]\nlease_ttl = \"10s\"\n",
            &[
                "jobs.toml:1:1: unknown top-level key `etcd`; `etcd` belongs in [cluster]",
                "jobs.toml:3:1: unknown key `lease_ttl` in [scheduler]; `lease_ttl` belongs in [cluster]",
            ],
        );
        // A job's `user` is not the etcd user.
        let errs = errors(&job_with("user = \"postgres\""));
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0]
                .starts_with("jobs.toml:4:1: job \"backup\": unknown key `user` (expected one of:"),
            "{errs:?}"
        );
        assert_errors(
            &cluster_with("timezone = \"UTC\""),
            &["jobs.toml:3:1: unknown key `timezone` in [cluster]; `timezone` belongs in [defaults] or a job table ([jobs.<name>])"],
        );
    }

    #[test]
    fn etcd_must_be_a_non_empty_array_of_strings() {
        assert_errors(
            "[cluster]\nprefix = \"/x\"\n",
            &["jobs.toml:1:2: missing etcd; add the etcd endpoints, e.g. etcd = [\"http://10.0.0.5:2379\"]"],
        );
        assert_errors(
            "[cluster]\netcd = \"http://etcd:2379\"\n",
            &["jobs.toml:2:8: etcd must be an array of URLs like [\"http://10.0.0.5:2379\"], found string (put it in brackets, even a single one)"],
        );
        assert_errors(
            "[cluster]\netcd = []\n",
            &["jobs.toml:2:8: etcd must list at least one endpoint, e.g. [\"http://10.0.0.5:2379\"]"],
        );
        assert_errors(
            "[cluster]\netcd = [\"http://a:2379\", 2379]\n",
            &["jobs.toml:2:26: etcd[1] must be a string, found integer"],
        );
    }

    #[test]
    fn each_etcd_endpoint_must_be_an_http_url_with_a_port() {
        let cases = [
            ("10.0.0.5:2379", "\"http://10.0.0.5:2379\""),
            ("etcd", "\"http://etcd:2379\" (with a port)"),
            ("http://etcd", "\"http://etcd:2379\" (with a port)"),
            (
                "https://etcd:",
                "\"https://etcd:2379\" (the port must be a number from 1 to 65535)",
            ),
            (
                "https://etcd:0",
                "\"https://etcd:2379\" (the port must be a number from 1 to 65535)",
            ),
            (
                "http://etcd:65536",
                "\"http://etcd:2379\" (the port must be a number from 1 to 65535)",
            ),
            (
                "http://etcd:+1",
                "\"http://etcd:2379\" (the port must be a number from 1 to 65535)",
            ),
            (
                "http://etcd:2379/v3",
                "\"http://etcd:2379\" (without a path)",
            ),
            (
                "http://etcd:2379?x=1",
                "\"http://etcd:2379\" (without a path)",
            ),
            (
                "grpc://etcd:2379",
                "\"http://etcd:2379\" (only http:// and https:// are supported)",
            ),
            (
                "HTTPS://etcd:2379",
                "\"http://etcd:2379\" (only http:// and https:// are supported)",
            ),
            (
                "unix:///run/etcd.sock",
                "\"http://10.0.0.5:2379\" (only http:// and https:// are supported)",
            ),
            (
                " https://etcd:2379",
                "\"https://etcd:2379\" (without spaces)",
            ),
            (
                "http://:2379",
                "\"http://10.0.0.5:2379\" (with a host name or IP address)",
            ),
            (
                "http://et cd:2379",
                "\"http://10.0.0.5:2379\" (with a host name or IP address)",
            ),
            (
                "http://[::1]x:2379",
                "\"http://10.0.0.5:2379\" (with a host name or IP address)",
            ),
            (
                "http://[::g]:2379",
                "\"http://10.0.0.5:2379\" (with a host name or IP address)",
            ),
            (
                "http://::1:2379",
                "\"http://[fd00::5]:2379\" (an IPv6 address goes in brackets)",
            ),
        ];
        for (written, like) in cases {
            assert_errors(
                &format!("[cluster]\netcd = ['{written}']\n"),
                &[&format!(
                    "jobs.toml:2:9: etcd endpoint \"{written}\" must be a URL like {like}"
                )],
            );
        }
        for ok in [
            "http://10.0.0.5:2379",
            "https://etcd-1.example.com:2379/",
            "http://etcd_1:1",
            "http://localhost:65535",
            "http://[::1]:2379",
        ] {
            let config = valid(&format!("[cluster]\netcd = ['{ok}']\n"));
            assert_eq!(
                config.cluster.unwrap().endpoints,
                [ok.trim_end_matches('/')]
            );
        }
    }

    #[test]
    fn etcd_endpoints_must_be_distinct_and_share_a_scheme() {
        assert_errors(
            "[cluster]\netcd = [\"http://a:2379\", \"http://a:2379/\"]\n",
            &["jobs.toml:2:26: etcd endpoint \"http://a:2379/\" is listed twice"],
        );
        assert_errors(
            "[cluster]\netcd = [\"http://a:2379\", \"https://b:2379\", \"http://c:2379\", \"https://d:2379\"]\n",
            &["jobs.toml:2:26: etcd endpoint \"https://b:2379\" uses https:// but \"http://a:2379\" uses http://; use the same scheme for every endpoint"],
        );
        // Credentials are refused without repeating them.
        assert_errors(
            "[cluster]\netcd = [\"http://root:pa/ss@etcd:2379\"]\n",
            &["jobs.toml:2:9: an etcd endpoint must not contain a user name or password; set user and password_env or password_file instead"],
        );
    }

    #[test]
    fn prefix_is_an_absolute_key_prefix() {
        let cases = [
            (
                "bgsched/prod",
                "prefix \"bgsched/prod\" must start with '/', like \"/bgsched/prod\"",
            ),
            ("", "prefix \"\" must start with '/', like \"/bgsched\""),
            (
                "/bgsched/",
                "prefix \"/bgsched/\" must not end with '/', like \"/bgsched\"",
            ),
            ("/", "prefix \"/\" must not end with '/', like \"/bgsched\""),
            (
                "/bg sched",
                "prefix \"/bg sched\" must not contain whitespace or control characters",
            ),
            (
                "/bg\\u0000",
                "prefix \"/bg\\0\" must not contain whitespace or control characters",
            ),
            (
                "/bg\\t",
                "prefix \"/bg\\t\" must not contain whitespace or control characters",
            ),
        ];
        for (written, message) in cases {
            assert_errors(
                &cluster_with(&format!("prefix = \"{written}\"")),
                &[&format!("jobs.toml:3:10: {message}")],
            );
        }
        let long = format!("/{}", "a".repeat(256));
        assert_errors(
            &cluster_with(&format!("prefix = \"{long}\"")),
            &["jobs.toml:3:10: prefix is 257 characters long, at most 256 are allowed"],
        );
        assert_errors(
            &cluster_with("prefix = 1"),
            &["jobs.toml:3:10: prefix must be a string, found integer"],
        );
        let longest = format!("/{}", "a".repeat(255));
        let config = valid(&cluster_with(&format!("prefix = \"{longest}\"")));
        assert_eq!(config.cluster.unwrap().prefix, longest);
        let config = valid(&cluster_with("prefix = \"/a/b-c/d_e.f\""));
        assert_eq!(config.cluster.unwrap().prefix, "/a/b-c/d_e.f");
    }

    #[test]
    fn lease_ttl_must_be_a_duration_from_2s_to_10m() {
        for value in ["1s", "1999ms", "0s", "10m 1s", "1h"] {
            assert_errors(
                &cluster_with(&format!("lease_ttl = \"{value}\"")),
                &[&format!("jobs.toml:3:13: lease_ttl must be between 2s and 10m (how long a failover waits for a crashed leader), found \"{value}\"")],
            );
        }
        assert_errors(
            &cluster_with("lease_ttl = \"10 sekunden\""),
            &["jobs.toml:3:13: invalid duration \"10 sekunden\" for lease_ttl: unknown time unit \"sekunden\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)"],
        );
        assert_errors(
            &cluster_with("lease_ttl = 10"),
            &["jobs.toml:3:13: lease_ttl must be a duration string like \"30s\" or \"1h 30m\", found integer"],
        );
        assert_errors(
            &cluster_with("lease_ttl = \"2500ms\""),
            &["jobs.toml:3:13: lease_ttl must be a whole number of seconds (etcd grants leases in seconds), found \"2500ms\""],
        );
        for (value, secs) in [("2s", 2), ("10m", 600), ("1m 30s", 90), ("3000ms", 3)] {
            let config = valid(&cluster_with(&format!("lease_ttl = \"{value}\"")));
            assert_eq!(config.cluster.unwrap().lease_ttl, Duration::from_secs(secs));
        }
    }

    #[test]
    fn tls_files_must_be_readable_and_fit_the_endpoints() {
        let dir = Scratch::new("tls");
        let ca = dir.file("ca.pem", "CA").display().to_string();
        let https = |lines: &str| format!("[cluster]\netcd = [\"https://etcd:2379\"]\n{lines}\n");
        assert_errors(
            &https("ca_file = \"/nonexistent/bgsched/ca.pem\""),
            &["jobs.toml:3:11: ca_file \"/nonexistent/bgsched/ca.pem\" cannot be read: No such file or directory (os error 2)"],
        );
        // Shown resolved, i.e. where it was looked for.
        assert_errors(
            &https("cert_file = \"client.pem\"\nkey_file = \"client.key\""),
            &[
                "jobs.toml:3:13: cert_file \"./client.pem\" cannot be read: No such file or directory (os error 2)",
                "jobs.toml:4:12: key_file \"./client.key\" cannot be read: No such file or directory (os error 2)",
            ],
        );
        assert_errors(
            &https(&format!("ca_file = \"{}\"", dir.0.display())),
            &[&format!(
                "jobs.toml:3:11: ca_file \"{}\" cannot be read: it is a directory",
                dir.0.display()
            )],
        );
        assert_errors(
            &https("ca_file = \"\""),
            &["jobs.toml:3:11: ca_file must not be empty (leave it out to use the default)"],
        );
        assert_errors(
            &https(&format!("cert_file = \"{ca}\"")),
            &["jobs.toml:3:1: cert_file is set but key_file is not; a client certificate needs its private key"],
        );
        assert_errors(
            &https(&format!("ca_file = \"{ca}\"\nkey_file = \"{ca}\"")),
            &["jobs.toml:4:1: key_file is set but cert_file is not; a private key needs its client certificate"],
        );
        assert_errors(
            &cluster_with(&format!("cert_file = \"{ca}\"\nkey_file = \"{ca}\"\nca_file = \"{ca}\"")),
            &["jobs.toml:3:1: TLS files are set but every etcd endpoint is http://; use https:// endpoints or remove ca_file, cert_file and key_file"],
        );
        let config = valid(&https(&format!(
            "ca_file = \"{ca}\"\ncert_file = \"{ca}\"\nkey_file = \"{ca}\""
        )));
        assert_eq!(config.cluster.unwrap().key_file, Some(PathBuf::from(&ca)));
    }

    #[test]
    fn etcd_user_and_password_come_together_from_one_source() {
        let dir = Scratch::new("auth");
        let file = dir.file("password", "pw\r\n").display().to_string();
        std::env::set_var("BGSCHED_TEST_ETCD_PASSWORD_AUTH", "pw");
        let env = "password_env = \"BGSCHED_TEST_ETCD_PASSWORD_AUTH\"";
        assert_errors(
            &cluster_with(&format!(
                "user = \"bgsched\"\n{env}\npassword_file = \"{file}\""
            )),
            &["jobs.toml:5:1: both password_env and password_file are set; keep one of them"],
        );
        assert_errors(
            &cluster_with(env),
            &["jobs.toml:3:1: password_env is set but user is not; add the etcd user name, e.g. user = \"bgsched\""],
        );
        assert_errors(
            &cluster_with(&format!("password_file = \"{file}\"")),
            &["jobs.toml:3:1: password_file is set but user is not; add the etcd user name, e.g. user = \"bgsched\""],
        );
        assert_errors(
            &cluster_with("user = \"bgsched\""),
            &["jobs.toml:3:1: user is set without a password; add password_env = \"NAME\" (an environment variable holding it) or password_file = \"/path/to/file\""],
        );
        assert_errors(
            &cluster_with(&format!("user = \"\"\n{env}")),
            &["jobs.toml:3:8: user must not be empty (leave it out to connect without authentication)"],
        );
        let config = valid(&cluster_with(&format!(
            "user = \"bgsched\"\npassword_file = \"{file}\""
        )));
        assert_eq!(config.cluster.unwrap().password.unwrap().expose(), "pw");
    }

    #[test]
    fn password_sources_must_be_readable() {
        let dir = Scratch::new("sources");
        std::env::set_var("BGSCHED_TEST_ETCD_PASSWORD_EMPTY", "");
        let with = |line: &str| cluster_with(&format!("user = \"bgsched\"\n{line}"));
        assert_errors(
            &with("password_env = \"BGSCHED_TEST_ETCD_PASSWORD_UNSET\""),
            &["jobs.toml:4:16: password_env \"BGSCHED_TEST_ETCD_PASSWORD_UNSET\" is not set in the environment"],
        );
        assert_errors(
            &with("password_env = \"BGSCHED_TEST_ETCD_PASSWORD_EMPTY\""),
            &["jobs.toml:4:16: password_env \"BGSCHED_TEST_ETCD_PASSWORD_EMPTY\" is set but empty"],
        );
        for not_a_name in ["", "9LIVES", "BGSCHED-PASSWORD", "$BGSCHED_PASSWORD"] {
            assert_errors(
                &with(&format!("password_env = \"{not_a_name}\"")),
                &["jobs.toml:4:16: password_env must be the name of an environment variable, like \"BGSCHED_ETCD_PASSWORD\", not the password itself"],
            );
        }
        assert_errors(
            &with("password_file = \"/nonexistent/bgsched/etcd-password\""),
            &["jobs.toml:4:17: password_file \"/nonexistent/bgsched/etcd-password\" cannot be read: No such file or directory (os error 2)"],
        );
        let empty = dir.file("empty", "\n").display().to_string();
        assert_errors(
            &with(&format!("password_file = \"{empty}\"")),
            &[&format!(
                "jobs.toml:4:17: password_file \"{empty}\" is empty"
            )],
        );
        let binary = dir.file("binary", b"pw\xFF\n").display().to_string();
        assert_errors(
            &with(&format!("password_file = \"{binary}\"")),
            &[&format!(
                "jobs.toml:4:17: password_file \"{binary}\" is not valid UTF-8"
            )],
        );
        let big = dir
            .file("big", "x".repeat(64 * 1024 + 1))
            .display()
            .to_string();
        assert_errors(
            &with(&format!("password_file = \"{big}\"")),
            &[&format!("jobs.toml:4:17: password_file \"{big}\" is larger than 64 KiB; it should hold only the password")],
        );
        assert_errors(
            &with(&format!("password_file = \"{}\"", dir.0.display())),
            &[&format!(
                "jobs.toml:4:17: password_file \"{}\" cannot be read: it is a directory",
                dir.0.display()
            )],
        );
    }

    #[test]
    fn the_password_never_shows_in_debug_output_or_errors() {
        const SENTINEL: &str = "SENTINEL-pa55w0rd-7f3a";
        let dir = Scratch::new("secret");
        std::env::set_var("BGSCHED_TEST_ETCD_PASSWORD_SENTINEL", SENTINEL);
        let file = dir
            .file("password", format!("{SENTINEL}\n"))
            .display()
            .to_string();
        let env = "password_env = \"BGSCHED_TEST_ETCD_PASSWORD_SENTINEL\"";

        for source in [env.to_string(), format!("password_file = \"{file}\"")] {
            let config = valid(&cluster_with(&format!("user = \"bgsched\"\n{source}")));
            let debug = format!("{config:?} {config:#?}");
            assert!(!debug.contains(SENTINEL), "{debug}");
            assert!(debug.contains("Secret(***)"), "{debug}");
            let password = config.cluster.unwrap().password.unwrap();
            assert_eq!(password.expose(), SENTINEL);
            assert_eq!(format!("{password} {password:?}"), "*** Secret(***)");
        }

        let big = dir
            .file("big", SENTINEL.repeat(64 * 1024 / SENTINEL.len() + 1))
            .display()
            .to_string();
        let mut binary = SENTINEL.as_bytes().to_vec();
        binary.push(0xFF);
        let binary = dir.file("binary", binary).display().to_string();
        let broken = [
            // Read fine, but rejected for other reasons.
            cluster_with(&format!("user = \"bgsched\"\n{env}\npassword_file = \"{file}\"")),
            cluster_with(env),
            cluster_with(&format!("password_file = \"{file}\"\nprefix = \"x\"\nlease_ttl = \"1s\"")),
            format!("[cluster]\netcd = [\"x\"]\nuser = \"u\"\n{env}\n[jobs.a]\nschedule = \"61 * * * *\"\n"),
            // Unreadable as a password.
            cluster_with(&format!("user = \"u\"\npassword_file = \"{big}\"")),
            cluster_with(&format!("user = \"u\"\npassword_file = \"{binary}\"")),
            // Written where it does not belong.
            cluster_with(&format!("user = \"u\"\npassword_env = \"{SENTINEL}\"")),
            cluster_with(&format!("password = \"{SENTINEL}\"")),
            format!("[cluster]\netcd = [\"http://u:{SENTINEL}@etcd:2379\"]\n"),
            format!("[cluster]\netcd = [\"http://u:{SENTINEL}/x@etcd\"]\n"),
        ];
        for src in broken {
            let e = load_text(&src).expect_err(&src);
            let text = format!("{e} {e:?}");
            assert!(!text.contains(SENTINEL), "{text}");
        }
    }

    #[test]
    fn cluster_mode_raises_the_default_catchup_to_cover_a_failover() {
        let job = "[jobs.a]\nschedule = \"* * * * *\"\ncommand = [\"x\"]\n";
        let catchup = |src: String| valid(&src).jobs["a"].catchup;
        let etcd = "[cluster]\netcd = [\"http://etcd:2379\"]\n";
        assert_eq!(catchup(job.to_string()), Duration::from_secs(60));
        // max(1m, 10s + 10s)
        assert_eq!(catchup(format!("{etcd}{job}")), Duration::from_secs(60));
        assert_eq!(
            catchup(format!("{etcd}lease_ttl = \"50s\"\n{job}")),
            Duration::from_secs(60)
        );
        assert_eq!(
            catchup(format!("{etcd}lease_ttl = \"2m\"\n{job}")),
            Duration::from_secs(130)
        );
        assert_eq!(
            catchup(format!("{etcd}lease_ttl = \"10m\"\n{job}")),
            Duration::from_secs(610)
        );
        // What is configured is kept, even when shorter than a failover.
        assert_eq!(
            catchup(format!(
                "{etcd}lease_ttl = \"2m\"\n[defaults]\ncatchup = \"30s\"\n{job}"
            )),
            Duration::from_secs(30)
        );
        assert_eq!(
            catchup(format!("{etcd}lease_ttl = \"2m\"\n{job}catchup = \"0s\"\n")),
            Duration::ZERO
        );
        // [defaults] without catchup still gets the cluster default.
        assert_eq!(
            catchup(format!(
                "{etcd}lease_ttl = \"2m\"\n[defaults]\noverlap = \"allow\"\n{job}"
            )),
            Duration::from_secs(130)
        );
    }

    #[test]
    fn every_cluster_error_is_reported_in_file_order() {
        let src = r#"[jobs.a]
schedule = "61 * * * *"
command = ["x"]

[cluster]
etcd = ["10.0.0.5:2379", "http://10.0.0.6"]
prefix = "bgsched"
lease_ttl = "1s"
cert_file = "/nonexistent/client.pem"
user = "bgsched"
ttl = "5s"
"#;
        assert_errors(
            src,
            &[
                "jobs.toml:2:12: job \"a\": invalid schedule \"61 * * * *\": minute 61 out of range 0-59",
                "jobs.toml:6:9: etcd endpoint \"10.0.0.5:2379\" must be a URL like \"http://10.0.0.5:2379\"",
                "jobs.toml:6:26: etcd endpoint \"http://10.0.0.6\" must be a URL like \"http://10.0.0.6:2379\" (with a port)",
                "jobs.toml:7:10: prefix \"bgsched\" must start with '/', like \"/bgsched\"",
                "jobs.toml:8:13: lease_ttl must be between 2s and 10m (how long a failover waits for a crashed leader), found \"1s\"",
                "jobs.toml:9:1: cert_file is set but key_file is not; a client certificate needs its private key",
                "jobs.toml:9:13: cert_file \"/nonexistent/client.pem\" cannot be read: No such file or directory (os error 2)",
                "jobs.toml:10:1: user is set without a password; add password_env = \"NAME\" (an environment variable holding it) or password_file = \"/path/to/file\"",
                "jobs.toml:11:1: unknown key `ttl` in [cluster]; did you mean `lease_ttl`?",
            ],
        );
    }

    // All at once

    #[test]
    fn every_error_is_reported_in_file_order() {
        let src = r#"[scheduler]
history = 0
colour = "blue"

[jobs.zeta]
schedule = "61 * * * *"
command = ["/bin/z"]

[defaults]
timezone = "Europe/Berln"

[jobs.alpha]
schedule = "* * * * *"
shell = ""
overlap = "never"
"#;
        assert_errors(
            src,
            &[
                "jobs.toml:2:11: history must be between 1 and 100000 (run records kept per job), found 0",
                "jobs.toml:3:1: unknown key `colour` in [scheduler] (expected one of: state_dir, shutdown_grace, history)",
                "jobs.toml:6:12: job \"zeta\": invalid schedule \"61 * * * *\": minute 61 out of range 0-59",
                "jobs.toml:10:12: unknown time zone \"Europe/Berln\"; did you mean \"Europe/Berlin\"?",
                "jobs.toml:14:9: job \"alpha\": shell must not be empty; give a command line such as \"pg_dump shop | gzip > /backups/shop.gz\"",
                "jobs.toml:15:11: job \"alpha\": overlap must be \"skip\", \"allow\", \"queue\" or \"replace\", found \"never\"",
            ],
        );
        let e = load_text(src).unwrap_err();
        assert_eq!(e.0[2].job.as_deref(), Some("zeta"));
        assert_eq!((e.0[2].line, e.0[2].column), (6, 12));
        assert_eq!(e.0[0].job, None);
    }

    // Robustness

    /// A small deterministic generator, so that a failure reproduces.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) % n as u64) as usize
        }
    }

    #[test]
    fn random_inputs_never_panic() {
        const PIECES: &[&str] = &[
            "[",
            "]",
            "[[",
            "]]",
            "{",
            "}",
            "=",
            ",",
            ".",
            "\"",
            "'",
            "\"\"\"",
            "'''",
            "\n",
            " ",
            "#",
            "\\",
            "\\u0000",
            "jobs",
            "scheduler",
            "defaults",
            "cluster",
            "x",
            "schedule",
            "command",
            "shell",
            "env",
            "timeout",
            "timezone",
            "overlap",
            "history",
            "1",
            "-1",
            "1.5",
            "true",
            "1979-05-27",
            "\"61 * * * *\"",
            "\"5 minuts\"",
            "\"Europe/Berln\"",
            "é",
            "\u{feff}",
            "\r",
            "\t",
        ];
        const ASCII: &[u8] = b" \n=[]{}\",.'#abc0123";
        let mut rng = Lcg(0x5eed);
        for round in 0..3000 {
            let input: Vec<u8> = match round % 3 {
                // Raw bytes: mostly the UTF-8 check, sometimes the parser.
                0 => (0..rng.below(200))
                    .map(|_| match rng.below(4) {
                        0 => rng.below(256) as u8,
                        _ => ASCII[rng.below(ASCII.len())],
                    })
                    .collect(),
                // Token soup: valid UTF-8, so it reaches the parser.
                1 => (0..rng.below(60))
                    .flat_map(|_| PIECES[rng.below(PIECES.len())].bytes())
                    .collect(),
                // A valid config with a few bytes changed: reaches the checks.
                _ => {
                    let mut bytes = FULL.as_bytes().to_vec();
                    for _ in 0..1 + rng.below(4) {
                        let at = rng.below(bytes.len());
                        match rng.below(3) {
                            0 => bytes[at] = PIECES[rng.below(PIECES.len())].as_bytes()[0],
                            1 => {
                                bytes.remove(at);
                            }
                            _ => bytes.insert(at, rng.below(128) as u8),
                        }
                    }
                    bytes
                }
            };
            if let Err(errors) = load_str(Path::new("fuzz.toml"), &input) {
                assert!(!errors.0.is_empty(), "Err without errors for {input:?}");
                for e in &errors.0 {
                    assert!(!e.to_string().contains('\n'), "multi-line message: {e}");
                }
            }
        }
    }

    /// Runs on an ordinary (2 MiB) test thread on purpose: loading must not
    /// need more stack than that from its caller.
    #[test]
    fn deeply_nested_input_is_rejected_without_overflowing_the_stack() {
        let n = 10_000;
        let cases = [
            format!("a = {}{}\n", "[".repeat(n), "]".repeat(n)),
            format!("a = {}1{}\n", "{b = ".repeat(n), "}".repeat(n)),
            format!("{} = 1\n", vec!["a"; n].join(".")),
            format!("[{}]\n", vec!["a"; n].join(".")),
            format!("[jobs.x]\nenv = {}\n", "[".repeat(n)),
        ];
        let expected = [
            "jobs.toml:1:85: invalid TOML: arrays or inline tables are nested too deeply",
            "jobs.toml:1:405: invalid TOML: arrays or inline tables are nested too deeply",
            "jobs.toml:1:1: invalid TOML: a dotted key or table name has too many parts",
            "jobs.toml:1:2: invalid TOML: a dotted key or table name has too many parts",
            "jobs.toml:2:87: invalid TOML: arrays or inline tables are nested too deeply",
        ];
        for (src, expected) in cases.iter().zip(expected) {
            let errors = errors(src);
            assert_eq!(errors[0], expected);
            assert!(errors.len() <= 2, "{errors:#?}");
        }
        // Within toml's limit for each kind of nesting, but the kinds
        // multiply: ~6,400 nested tables, too deep for a 2 MiB stack.
        let key: Vec<String> = (0..79).map(|i| format!("k{i}")).collect();
        let level = format!("{{{} = ", key.join("."));
        let src = format!("x = {}1{}\n", level.repeat(79), "}".repeat(79));
        let e = load_text(&src).unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert!(
            e.0[0].message.starts_with("unknown top-level key `x`"),
            "{e}"
        );
    }

    #[test]
    fn oversized_input_is_refused_up_front() {
        let mut src = "# padding\n".repeat(MAX_FILE_SIZE / 10);
        src.push_str("x = 1\n");
        let e = load_text(&src).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "jobs.toml: file is too large ({} bytes; a config file may be at most 32 MiB)",
                src.len()
            )
        );
    }
}
