//! The sections and their keys: which keys each section has, the
//! `[scheduler]`, `[http]`, `[notify]` and `[defaults]` sections, and the
//! jobs.

use super::*;

pub(super) const MAX_JOB_NAME_LEN: usize = 128;

pub(super) const HISTORY_RANGE: RangeInclusive<i64> = 1..=100_000;

pub(super) const DEFAULT_CATCHUP: Duration = Duration::from_secs(60);

pub(super) const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(10);

pub(super) const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_secs(10);

/// The cap of the doubling retry wait when `retry_backoff_max` is unset.
pub(super) const DEFAULT_RETRY_BACKOFF_MAX: Duration = Duration::from_secs(600);

/// Retries of one run, at most: more is a loop, not a retry policy.
pub(super) const RETRIES_RANGE: RangeInclusive<i64> = 0..=100;

/// The tables whose keys are checked, for unknown-key messages and for
/// pointing a key that is in the wrong table to the right one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Section {
    Top,
    Scheduler,
    Defaults,
    Job,
    Cluster,
    Http,
    Notify,
    Webhook,
    Group,
    Member,
}

/// Every key of every section, declared once: the declaration gives the
/// section's struct a field (the key's item, if the table has it) and puts
/// the name in the list that the unknown-key check, the suggestions and the
/// "belongs in" hints read. Adding a key is a line here plus its use where
/// the section is read. The job keys, which `[defaults]` shares, are
/// declared by [`job_keys!`] below.
macro_rules! keys {
    ($( $(#[$doc:meta])* $ty:ident ($section:ident) { $($key:ident),* $(,)? } )*) => {
        $(
            $(#[$doc])*
            #[derive(Default)]
            pub(super) struct $ty<'a, 'i> {
                $(pub(super) $key: Option<Item<'a, 'i>>,)*
            }

            impl<'a, 'i> $ty<'a, 'i> {
                pub(super) const KEYS: &'static [&'static str] = &[$(stringify!($key)),*];

                /// The known keys of `table`; each unknown one is reported
                /// here, so that no key is silently ignored.
                pub(super) fn of(r: &mut Report, table: &'a DeTable<'i>) -> Self {
                    let mut found = Self::default();
                    for (key, value) in table.iter() {
                        match key.get_ref().as_ref() {
                            $(stringify!($key) => found.$key = Some(Item::entry(key, value)),)*
                            _ => r.error(
                                key.span().start,
                                Section::$section.unknown_key(key.get_ref()),
                            ),
                        }
                    }
                    found
                }
            }
        )*
    };
}

keys! {
    /// The top level.
    TopKeys (Top) { scheduler, defaults, jobs, groups, cluster, http, notify, member }
    /// `[scheduler]`.
    SchedulerKeys (Scheduler) { state_dir, shutdown_grace, history }
    /// `[cluster]`.
    ClusterKeys (Cluster) {
        etcd, prefix, lease_ttl, max_clock_skew, ca_file, cert_file, key_file, user,
        password_env, password_file,
    }
    /// `[http]`.
    HttpKeys (Http) { listen, tokens_file, cert_file, key_file }
    /// `[notify]`.
    NotifyKeys (Notify) { webhook }
    /// `[[notify.webhook]]`.
    WebhookKeys (Webhook) { url, events, secret_file, timeout, retries }
    /// `[groups.<name>]`.
    GroupKeys (Group) { limit }
    /// `[member]`.
    MemberKeys (Member) { labels, max_runs }
}

/// The keys of a job, declared once. A key with a type is one `[defaults]`
/// can set for every job: its declaration also names its built-in default
/// and the `Item` method that reads it, which gives [`Defaults`] and
/// [`Inherited`] a field, `[defaults]` the key, and [`JobKeys::inherit`]
/// the rule "the job's own value, else `[defaults]`', else built in".
macro_rules! job_keys {
    ($( $key:ident $(: $ty:ty = $default:expr => $read:ident)? ),* $(,)?) => {
        keys! {
            /// `[jobs.<name>]`.
            JobKeys (Job) { $($key),* }
        }

        /// The name of an inheritable key (the reader only selects it).
        macro_rules! inheritable {
            ($name:ident $reader:ident) => {
                stringify!($name)
            };
        }

        /// `[defaults]`' keys, in the job table's order.
        pub(super) const DEFAULTS_KEYS: &[&str] = &[$($(inheritable!($key $read),)?)*];

        /// What every job inherits. A bad value here is reported once, at
        /// its place in `[defaults]`; jobs then fall back to the built-in
        /// default rather than each repeating the same error.
        pub(super) struct Defaults {
            $($(pub(super) $key: $ty,)?)*
        }

        impl Default for Defaults {
            fn default() -> Self {
                Defaults { $($($key: $default,)?)* }
            }
        }

        /// A job's inheritable settings; `None` where its own value is bad
        /// (and reported).
        pub(super) struct Inherited {
            $($(pub(super) $key: Option<$ty>,)?)*
        }

        impl JobKeys<'_, '_> {
            pub(super) fn inherit(&self, r: &mut Report, defaults: &Defaults) -> Inherited {
                Inherited {
                    $($($key: match self.$key.as_ref() {
                        Some(i) => i.$read(r),
                        None => Some(defaults.$key.clone()),
                    },)?)*
                }
            }
        }

        /// `built_in` is what applies where `[defaults]` does not say.
        pub(super) fn defaults(r: &mut Report, item: &Item, built_in: Defaults) -> Defaults {
            let mut d = built_in;
            let Some(table) = item.table(r) else {
                return d;
            };
            for (key, value) in table.iter() {
                let item = Item::entry(key, value);
                match key.get_ref().as_ref() {
                    $($(stringify!($key) => {
                        if let Some(v) = item.$read(r) {
                            d.$key = v;
                        }
                    })?)*
                    _ => r.error(key.span().start, Section::Defaults.unknown_key(key.get_ref())),
                }
            }
            d
        }
    };
}

job_keys! {
    description,
    schedule,
    timezone: Tz = Tz::UTC => timezone,
    command,
    shell,
    working_dir,
    env,
    timeout: Option<Duration> = None => timeout,
    enabled,
    overlap: Overlap = Overlap::Skip => overlap,
    catchup: Duration = DEFAULT_CATCHUP => duration,
    kill_grace: Duration = DEFAULT_KILL_GRACE => duration,
    retries: u32 = 0 => retries,
    retry_backoff: Duration = DEFAULT_RETRY_BACKOFF => positive_duration,
    retry_backoff_max: Option<Duration> = None => some_positive_duration,
    jitter: Duration = Duration::ZERO => duration,
    on_failure: Option<Vec<String>> = None => hook,
    params,
    active_from,
    active_until,
    group,
    after,
    after_all,
    run_on: RunOn = RunOn::Leader => run_on,
}

impl Section {
    pub(super) fn keys(self) -> &'static [&'static str] {
        match self {
            Section::Top => TopKeys::KEYS,
            Section::Scheduler => SchedulerKeys::KEYS,
            Section::Defaults => DEFAULTS_KEYS,
            Section::Job => JobKeys::KEYS,
            Section::Cluster => ClusterKeys::KEYS,
            Section::Http => HttpKeys::KEYS,
            Section::Notify => NotifyKeys::KEYS,
            Section::Webhook => WebhookKeys::KEYS,
            Section::Group => GroupKeys::KEYS,
            Section::Member => MemberKeys::KEYS,
        }
    }
}

pub(super) fn scheduler(r: &mut Report, item: &Item) -> SchedulerSettings {
    let mut settings = SchedulerSettings::default();
    let Some(table) = item.table(r) else {
        return settings;
    };
    let f = SchedulerKeys::of(r, table);
    settings.state_dir = f.state_dir.as_ref().and_then(|i| i.path(r));
    if let Some(d) = f.shutdown_grace.as_ref().and_then(|i| i.duration(r)) {
        settings.shutdown_grace = d;
    }
    if let Some(n) = f.history.as_ref().and_then(|i| i.history(r)) {
        settings.history_limit = n;
    }
    settings
}

pub(super) fn http(r: &mut Report, item: &Item, base: &Path) -> HttpSettings {
    let mut settings = HttpSettings::default();
    let Some(table) = item.table(r) else {
        return settings;
    };
    let f = HttpKeys::of(r, table);
    settings.listen = f.listen.as_ref().and_then(|i| i.listen(r));
    if let Some((path, tokens)) = f.tokens_file.as_ref().and_then(|i| i.tokens_file(r, base)) {
        settings.tokens_file = Some(path);
        settings.tokens = Some(tokens);
    }
    let cert = f
        .cert_file
        .as_ref()
        .and_then(|i| Some((i.value_at(), i.path(r)?)));
    let key = f
        .key_file
        .as_ref()
        .and_then(|i| Some((i.value_at(), i.path(r)?)));
    match (cert, key) {
        (Some((at, cert)), Some((_, key))) => {
            match crate::config::load_tls(&resolved(base, cert), &resolved(base, key)) {
                Ok(tls) => settings.tls = Some(tls),
                Err(why) => r.error(at, why),
            }
        }
        (Some((at, _)), None) => r.error(
            at,
            "cert_file needs key_file too (the certificate's private key)",
        ),
        (None, Some((at, _))) => r.error(
            at,
            "key_file needs cert_file too (the certificate it belongs to)",
        ),
        (None, None) => {}
    }
    settings
}

/// `max_runs` of `[member]`: placed runs at once on one member.
pub(super) const MAX_RUNS_RANGE: RangeInclusive<i64> = 1..=10_000;

/// `[member]`: what this replica offers the placement of `run_on` jobs.
pub(super) fn member(r: &mut Report, item: &Item) -> MemberSettings {
    let mut settings = MemberSettings::default();
    let hint = |v: &DeValue| match v {
        DeValue::Array(_) => " (write [member], not [[member]])",
        _ => "",
    };
    let Some(table) = item.expect(r, "a table", hint, |v| match v {
        DeValue::Table(t) => Some(t),
        _ => None,
    }) else {
        return settings;
    };
    let f = MemberKeys::of(r, table);
    if let Some(labels) = f.labels.as_ref().and_then(|i| i.labels(r)) {
        settings.labels = labels;
    }
    settings.max_runs = f.max_runs.as_ref().and_then(|i| i.max_runs(r));
    settings
}

/// The most runs a concurrency group may allow at once: each place is a
/// key (cluster) or lock file (standalone) that a claim tries in turn, one
/// nested transaction level each, and etcd gives each level a smaller
/// share of its 128 operations (`--max-txn-ops`).
pub(super) const GROUP_LIMIT_RANGE: RangeInclusive<i64> = 1..=16;

pub(super) fn groups(r: &mut Report, item: &Item) -> BTreeMap<String, Group> {
    let mut groups = BTreeMap::new();
    let Some(table) = item.table(r) else {
        return groups;
    };
    for (key, value) in table.iter() {
        let name: &str = key.get_ref();
        let entry = Item::entry(key, value);
        let name_ok = job_name(r, name, entry.key_at, "group");
        let Some(t) = entry.table(r) else { continue };
        let f = GroupKeys::of(r, t);
        let limit = match f.limit.as_ref() {
            Some(i) => i.integer_in(r, GROUP_LIMIT_RANGE, "runs of the group's jobs at once"),
            None => {
                r.error(
                    entry.key_at,
                    format!("group \"{name}\" needs a limit; add e.g. limit = 1"),
                );
                None
            }
        };
        // A bad limit is reported here; its jobs still find the group
        // (no config is built from a file with errors).
        if name_ok {
            groups.insert(
                name.to_owned(),
                Group {
                    name: name.to_owned(),
                    limit: limit.unwrap_or(1) as u32,
                },
            );
        }
    }
    groups
}

pub(super) fn jobs(
    r: &mut Report,
    item: &Item,
    defaults: &Defaults,
    groups: &Groups,
) -> BTreeMap<String, Job> {
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
    let mut edges: Vec<Edge> = Vec::new();
    for (key, value) in table.iter() {
        let name: &str = key.get_ref();
        let entry = Item::entry(key, value);
        if let Some(job) = r.in_job(name, |r| job(r, &entry, defaults, groups, &mut edges)) {
            jobs.insert(name.to_owned(), job);
        }
    }
    // The graph only once every job is known; a job with errors may be
    // named by others, so its name still counts as known.
    let known: BTreeSet<&str> = table.iter().map(|(k, _)| k.get_ref().as_ref()).collect();
    check_after(r, &edges, &known, &jobs);
    for edge in &edges {
        let all = jobs.get(&edge.from).is_some_and(|j| j.after_all);
        let on = edge.on;
        if let Some(up) = jobs.get_mut(&edge.to) {
            up.dependents.push(crate::model::Dependent {
                job: edge.from.clone(),
                on,
                all,
            });
        }
    }
    jobs
}

/// The most jobs that may run after one job: the requests for all of them
/// go into one etcd transaction (at most 128 operations).
const MAX_DEPENDENTS: usize = 100;

/// One `after` entry: job `from` runs after `to`'s runs end `on`; `at` is
/// where the entry is.
pub(super) struct Edge {
    pub(super) from: String,
    pub(super) to: String,
    pub(super) on: crate::model::On,
    pub(super) at: usize,
}

/// Unknown upstream jobs, services on either end, and cycles, each at the
/// `after` entry that closes it.
fn check_after(
    r: &mut Report,
    edges: &[Edge],
    known: &BTreeSet<&str>,
    jobs: &BTreeMap<String, Job>,
) {
    for e in edges {
        r.in_job(&e.from, |r| {
            if !known.contains(e.to.as_str()) {
                let hint = match did_you_mean(&e.to, known.iter().copied()) {
                    Some(close) => format!("; did you mean \"{close}\"?"),
                    None => String::new(),
                };
                r.error(e.at, format!("after names unknown job {}{hint}", quoted(&e.to)));
            } else if jobs.get(&e.to).is_some_and(|j| j.schedule.is_continuous()) {
                r.error(
                    e.at,
                    format!(
                        "after names \"{}\", an @continuous service: its runs end only to be restarted",
                        e.to
                    ),
                );
            }
        });
    }
    let mut fan_out: BTreeMap<&str, usize> = BTreeMap::new();
    for e in edges {
        let n = fan_out.entry(e.to.as_str()).or_default();
        *n += 1;
        // Their requests go into the upstream run's final transaction.
        if *n == MAX_DEPENDENTS + 1 {
            r.in_job(&e.from, |r| {
                r.error(
                    e.at,
                    format!(
                        "more than {MAX_DEPENDENTS} jobs run after \"{}\"; chain them through fewer jobs",
                        e.to
                    ),
                )
            });
        }
    }
    // A cycle among the edges read is one whatever else is wrong (a job
    // with errors can only have fewer edges), so it is reported with the
    // rest, as every other problem is.
    // Depth-first over the edges in file order: the first edge that leads
    // back to a job on the current path closes a cycle.
    let mut next: BTreeMap<&str, Vec<&Edge>> = BTreeMap::new();
    for e in edges {
        next.entry(e.from.as_str()).or_default().push(e);
    }
    let mut done: BTreeSet<&str> = BTreeSet::new();
    for e in edges {
        let mut path: Vec<&str> = Vec::new();
        if let Some((closing, cycle)) = find_cycle(e.from.as_str(), &next, &mut path, &mut done) {
            r.in_job(&closing.from, |r| {
                r.error(
                    closing.at,
                    format!(
                        "after makes a cycle: {}; no job of it would ever run",
                        cycle.join(" -> ")
                    ),
                )
            });
            return;
        }
    }
}

fn find_cycle<'e>(
    job: &'e str,
    next: &BTreeMap<&'e str, Vec<&'e Edge>>,
    path: &mut Vec<&'e str>,
    done: &mut BTreeSet<&'e str>,
) -> Option<(&'e Edge, Vec<String>)> {
    if done.contains(job) {
        return None;
    }
    path.push(job);
    for e in next.get(job).into_iter().flatten() {
        if let Some(start) = path.iter().position(|p| *p == e.to) {
            // Shown in the order the jobs run: upstream first.
            let mut cycle: Vec<String> =
                path[start..].iter().rev().map(|s| s.to_string()).collect();
            cycle.rotate_right(1);
            cycle.push(e.to.clone());
            return Some((e, cycle));
        }
        if let Some(found) = find_cycle(&e.to, next, path, done) {
            return Some(found);
        }
    }
    path.pop();
    done.insert(job);
    None
}

/// Checks one job completely, even after its first problem, and returns it
/// only if it is fully valid.
pub(super) fn job(
    r: &mut Report,
    item: &Item,
    defaults: &Defaults,
    groups: &Groups,
    edges: &mut Vec<Edge>,
) -> Option<Job> {
    let name = item.label.as_ref();
    let name_ok = job_name(r, name, item.key_at, "job");
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
    let f = JobKeys::of(r, table);

    let own = f.inherit(r, defaults);

    let description = f.description.as_ref().and_then(|i| i.string(r));
    let after = match f.after.as_ref() {
        Some(i) => i.after(r, name),
        None => Some(Vec::new()),
    };
    let schedule = match f.schedule.as_ref() {
        // The cron syntax does not depend on the zone, so a bad zone still
        // lets the expression be checked.
        Some(i) => i.schedule(r, own.timezone.unwrap_or(Tz::UTC)),
        // A job that runs after others needs no schedule of its own.
        None if f.after.is_some() => Some(Schedule::none(own.timezone.unwrap_or(Tz::UTC))),
        None => {
            r.error(
                item.key_at,
                "missing schedule; add e.g. schedule = \"30 2 * * *\"",
            );
            None
        }
    };
    let zone = own.timezone.unwrap_or(Tz::UTC);
    let from = f.active_from.as_ref().map(|i| i.instant(r, zone, false));
    let until = f.active_until.as_ref().map(|i| i.instant(r, zone, true));
    // Outer `None`: not given; inner: given but bad (and reported).
    let mut active = match (from, until) {
        (Some(None), _) | (_, Some(None)) => None,
        (from, until) => Some(crate::schedule::Active {
            from: from.flatten(),
            until: until.flatten(),
        }),
    };
    if let (Some(Some(from)), Some(Some(until)), Some(at)) = (from, until, f.active_until.as_ref())
    {
        if until <= from {
            active = None;
            r.error(
                at.value_at(),
                format!(
                    "active_until ({}) is not after active_from ({}); the job would never fire",
                    until.to_rfc3339(),
                    from.to_rfc3339()
                ),
            );
        }
    }
    if let (Some(s), Some(range)) = (&schedule, active) {
        let at = f.active_until.as_ref().or(f.active_from.as_ref());
        let bounded = s.clone().within(range);
        let start = range.from.map_or(chrono::DateTime::UNIX_EPOCH, |f| {
            f - chrono::TimeDelta::nanoseconds(1)
        });
        if let Some(at) = at.filter(|_| !s.is_continuous() && bounded.next_after(start).is_none()) {
            r.error(
                at.value_at(),
                format!(
                    "no tick of schedule {} falls {}; the job would never fire",
                    quoted(&s.as_str()),
                    match (range.from, range.until) {
                        (Some(f), Some(u)) => format!(
                            "from {} (active_from) until {} (active_until)",
                            f.to_rfc3339(),
                            u.to_rfc3339()
                        ),
                        (Some(f), None) => format!("after {} (active_from)", f.to_rfc3339()),
                        (None, Some(u)) => format!("before {} (active_until)", u.to_rfc3339()),
                        (None, None) => "at all".to_string(),
                    }
                ),
            );
            active = None;
        }
    }
    if schedule.as_ref().is_some_and(Schedule::is_continuous) {
        // A service has no ticks to overlap, catch up or delay, and is
        // restarted whatever the outcome.
        let meaningless = [
            ("overlap", &f.overlap, "it never overlaps itself"),
            ("catchup", &f.catchup, "it has no ticks to catch up"),
            ("jitter", &f.jitter, "it has no ticks to delay"),
            ("retries", &f.retries, "it is restarted whenever it exits"),
            ("active_from", &f.active_from, "it has no ticks to bound"),
            ("active_until", &f.active_until, "it has no ticks to bound"),
        ];
        for (key, given, why) in meaningless {
            if let Some(i) = given {
                r.error(
                    i.key_at,
                    format!("{key} means nothing for an @continuous service ({why}); remove it"),
                );
            }
        }
    }
    let group = match f.group.as_ref() {
        Some(i) => i.group(r, groups, schedule.as_ref()),
        None => Some(None),
    };
    let after_all = f.after_all.as_ref().and_then(|i| i.boolean(r));
    if let (Some(true), Some(at)) = (after_all, f.after_all.as_ref()) {
        match (f.after.as_ref(), after.as_deref()) {
            (None, _) => r.error(at.key_at, "after_all needs after (the jobs to wait for)"),
            (Some(_), Some([_])) => r.error(
                at.key_at,
                "after_all means nothing with one upstream job; remove it",
            ),
            _ => {}
        }
    }
    if let (true, Some(i)) = (
        schedule.as_ref().is_some_and(Schedule::is_continuous),
        f.after.as_ref(),
    ) {
        r.error(
            i.key_at,
            "after means nothing for an @continuous service (it is always running); remove it",
        );
    }
    if let Some(list) = &after {
        for (a, at) in list {
            edges.push(Edge {
                from: name.to_owned(),
                to: a.job.clone(),
                on: a.on,
                at: *at,
            });
        }
    }
    let program = program(r, item.key_at, f.command.as_ref(), f.shell.as_ref());
    let working_dir = f.working_dir.as_ref().and_then(|i| i.path(r));
    let env = f.env.as_ref().and_then(|i| i.env(r)).unwrap_or_default();
    let enabled = f.enabled.as_ref().and_then(|i| i.boolean(r));
    let params = match f.params.as_ref() {
        Some(i) => i.params(r),
        None => Some(BTreeMap::new()),
    };
    if let (Some(i), Some(p)) = (f.after.as_ref(), params.as_ref()) {
        if let Some((name, _)) = p.iter().find(|(_, p)| p.required && p.default.is_none()) {
            r.error(
                i.key_at,
                format!(
                    "a run after another job gets no parameters, but params.{} is required \
                     without a default; give it a default",
                    shown(name)
                ),
            );
        }
    }
    let backoff = own.retry_backoff;
    let backoff_max = match (own.retry_backoff_max, f.retry_backoff_max.as_ref()) {
        // The job's own cap must hold; an inherited one, or the built-in
        // ten doublings, is raised to the job's first wait.
        (Some(max), Some(_)) => max,
        (Some(max), None) => Some(
            max.unwrap_or(DEFAULT_RETRY_BACKOFF_MAX)
                .max(backoff.unwrap_or_default()),
        ),
        (None, _) => None,
    };
    if let (Some(b), Some(max), Some(at)) = (backoff, backoff_max, f.retry_backoff_max.as_ref()) {
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
    let mut job = Job {
        name: name.to_owned(),
        description,
        schedule: schedule?.within(active?),
        timezone: own.timezone?,
        program: program?,
        working_dir,
        env,
        timeout: own.timeout?,
        overlap: own.overlap?,
        catchup: own.catchup?,
        kill_grace: own.kill_grace?,
        enabled: enabled.unwrap_or(true),
        retries: own.retries?,
        retry_backoff: backoff?,
        retry_backoff_max: backoff_max.filter(|max| *max >= backoff.unwrap_or_default())?,
        jitter: own.jitter?,
        on_failure: own.on_failure?,
        params: params?,
        group: group?,
        after: after?.into_iter().map(|(a, _)| a).collect(),
        after_all: after_all.unwrap_or(false),
        dependents: Vec::new(),
        run_on: own.run_on?,
    };
    if job.schedule.is_continuous() {
        // What `[defaults]` says about ticks does not apply to a service.
        job.overlap = Overlap::Skip;
        job.catchup = Duration::ZERO;
        job.jitter = Duration::ZERO;
        job.retries = 0;
    }
    Some(job)
}

/// Names become file names and CLI arguments, hence the narrow alphabet, and
/// no `.`/`..`, which would name a directory instead of a file.
pub(super) fn job_name(r: &mut Report, name: &str, at: usize, what: &str) -> bool {
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
    r.error(at, format!("invalid {what} name: {problem}"));
    false
}

/// `command` and `shell` are two spellings of one setting: exactly one must
/// be given, and each is still checked on its own so all problems show.
pub(super) fn program(
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

/// Without `[cluster]` the built-in one minute; with it, at least a lease
/// TTL plus [`FAILOVER_MARGIN`], so that the ticks a failover misses are
/// caught up by default instead of silently dropped.
pub(super) fn default_catchup(cluster: Option<&ClusterSettings>) -> Duration {
    cluster.map_or(DEFAULT_CATCHUP, |c| {
        DEFAULT_CATCHUP.max(c.lease_ttl + FAILOVER_MARGIN)
    })
}

impl Section {
    /// Names people bring along from elsewhere (mostly etcdctl's flags) that
    /// neither edit distance nor a shared prefix would map.
    pub(super) fn alias(self, key: &str) -> Option<&'static str> {
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
            Section::Webhook => &[("endpoint", "url"), ("uri", "url"), ("event", "events")],
            _ => &[],
        };
        aliases
            .iter()
            .find(|(alias, _)| alias.eq_ignore_ascii_case(key))
            .map(|(_, known)| *known)
    }

    pub(super) fn title(self) -> &'static str {
        match self {
            Section::Top => "the top level",
            Section::Scheduler => "[scheduler]",
            Section::Defaults => "[defaults]",
            Section::Job => "a job table ([jobs.<name>])",
            Section::Cluster => "[cluster]",
            Section::Http => "[http]",
            Section::Notify => "[notify]",
            Section::Webhook => "[[notify.webhook]]",
            Section::Group => "a group table ([groups.<name>])",
            Section::Member => "[member]",
        }
    }

    pub(super) fn unknown_key(self, key: &str) -> String {
        let shown = shown(key);
        let what = match self {
            Section::Top => format!("unknown top-level key `{shown}`"),
            Section::Scheduler
            | Section::Defaults
            | Section::Cluster
            | Section::Http
            | Section::Notify
            | Section::Webhook
            | Section::Group
            | Section::Member => {
                format!("unknown key `{shown}` in {}", self.title())
            }
            // The job is already named in the error's prefix.
            Section::Job => format!("unknown key `{shown}`"),
        };
        // In a job, labels are what it needs of a member, not its own.
        if matches!(self, Section::Job | Section::Defaults) && key == "labels" {
            return format!(
                "{what}; to run the job on members with these labels write \
                 run_on = {{ labels = {{ ... }} }} (a replica's own labels belong in [member])"
            );
        }
        // `user` or `prefix` in a job most likely means something else
        // than the cluster settings of that name.
        let cluster_is_a_home = matches!(self, Section::Top | Section::Scheduler);
        let homes: Vec<&str> = [
            Section::Scheduler,
            Section::Defaults,
            Section::Job,
            Section::Cluster,
            Section::Http,
            Section::Member,
        ]
        .into_iter()
        .filter(|s| *s != self && (*s != Section::Cluster || cluster_is_a_home))
        .filter(|s| s.keys().contains(&key))
        .map(Section::title)
        .collect();
        if !homes.is_empty() {
            return format!("{what}; `{shown}` belongs in {}", homes.join(" or "));
        }
        if self == Section::Webhook && key.eq_ignore_ascii_case("secret") {
            return format!(
                "{what}; keep the secret out of the config: set secret_file \
                 (a file holding it)"
            );
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
