//! Typed reads of the values only jobs have: schedules, commands, shells,
//! environments, overlap policies, time zones, placement (`run_on`, and
//! the labels and bound of `[member]` it is matched against).

use super::*;
use chrono::{DateTime, TimeZone, Utc};

impl<'a, 'i> Item<'a, 'i> {
    /// `after = ["extract"]` or `[{ job = "extract", on = "failure" }]`,
    /// each entry with where it is; `job` is the job being read.
    pub(super) fn after(&self, r: &mut Report, job: &str) -> Option<Vec<(After, usize)>> {
        let array = self.non_empty_array(
            r,
            "an array of job names like [\"extract\"], or of tables like [{ job = \"extract\", on = \"success\" }]",
            |_| "",
            || "after must not be empty; name the jobs this one runs after".to_string(),
        )?;
        let mut out = Some(Vec::new());
        let mut seen = BTreeSet::new();
        for (index, element) in array.iter().enumerate() {
            let item = self.element(index, element);
            let entry = match item.value() {
                DeValue::String(s) => Some(After {
                    job: s.to_string(),
                    on: crate::model::On::Success,
                }),
                DeValue::Table(t) => item.after_table(r, t),
                other => {
                    r.error(
                        item.value_at(),
                        format!(
                            "{} must be a job name or a table like {{ job = \"extract\", on = \"success\" }}, found {}",
                            item.label,
                            type_name(other)
                        ),
                    );
                    None
                }
            };
            let Some(entry) = entry else {
                out = None;
                continue;
            };
            if entry.job == job {
                r.error(item.value_at(), "a job cannot run after itself");
                out = None;
            } else if !seen.insert(entry.job.clone()) {
                r.error(
                    item.value_at(),
                    format!("after names \"{}\" twice", shown(&entry.job)),
                );
                out = None;
            } else if let Some(list) = out.as_mut() {
                list.push((entry, item.value_at()));
            }
        }
        out
    }

    fn after_table(&self, r: &mut Report, t: &'a DeTable<'i>) -> Option<After> {
        let (mut job, mut on, mut ok) = (None, crate::model::On::Success, true);
        for (key, value) in t.iter() {
            let item = Item::entry(key, value);
            match key.get_ref().as_ref() {
                "job" => job = item.string(r),
                "on" => match item.str(r) {
                    Some("success") => on = crate::model::On::Success,
                    Some("failure") => on = crate::model::On::Failure,
                    Some("always") => on = crate::model::On::Always,
                    Some(other) => {
                        r.error(
                            item.value_at(),
                            format!(
                                "on must be \"success\", \"failure\" or \"always\", found {}",
                                quoted(other)
                            ),
                        );
                        ok = false;
                    }
                    None => ok = false,
                },
                other => {
                    r.error(
                        key.span().start,
                        format!(
                            "unknown key `{}` in an after entry (expected job, on)",
                            shown(other)
                        ),
                    );
                    ok = false;
                }
            }
        }
        if job.is_none() {
            r.error(self.value_at(), "an after entry needs job = \"<name>\"");
        }
        Some(After { job: job?, on }).filter(|_| ok)
    }

    /// `group = "<name>"`: a group declared in `[groups]`. `Some(None)` is
    /// no group; `None` a bad value (reported).
    pub(super) fn group(
        &self,
        r: &mut Report,
        groups: &Groups,
        schedule: Option<&Schedule>,
    ) -> Option<Option<String>> {
        let name = self.str(r)?;
        if schedule.is_some_and(Schedule::is_continuous) {
            r.error(
                self.key_at,
                "group means nothing for an @continuous service (it would hold a place \
                 of the group for good); remove it",
            );
            return None;
        }
        if groups.contains_key(name) {
            return Some(Some(name.to_owned()));
        }
        let hint = match did_you_mean(name, groups.keys().map(String::as_str)) {
            Some(close) => format!("; did you mean \"{close}\"?"),
            None if groups.is_empty() => format!(
                "; declare it, e.g. [groups.{}] limit = 1",
                if name.is_empty() { "<name>" } else { name }
            ),
            None => format!(
                " (declared groups: {})",
                groups.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        };
        r.error(
            self.value_at(),
            format!("unknown group {}{hint}", quoted(name)),
        );
        None
    }

    pub(super) fn overlap(&self, r: &mut Report) -> Option<Overlap> {
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

    /// `run_on = "leader"`, `"any"` or `{ labels = { zone = "a" } }`.
    pub(super) fn run_on(&self, r: &mut Report) -> Option<RunOn> {
        const WHAT: &str = "\"leader\", \"any\" or a table like { labels = { zone = \"a\" } }";
        match self.value() {
            DeValue::Table(t) => self.run_on_table(r, t),
            DeValue::String(s) => match s.as_ref() {
                "leader" => Some(RunOn::Leader),
                "any" => Some(RunOn::Any),
                other => {
                    let hint = match did_you_mean(other, ["leader", "any"]) {
                        Some(close) => format!("; did you mean \"{close}\"?"),
                        None => String::new(),
                    };
                    r.error(
                        self.value_at(),
                        format!(
                            "{} must be {WHAT}, found {}{hint}",
                            self.label,
                            quoted(other)
                        ),
                    );
                    None
                }
            },
            other => {
                r.error(
                    self.value_at(),
                    format!("{} must be {WHAT}, found {}", self.label, type_name(other)),
                );
                None
            }
        }
    }

    /// `{ labels = { ... } }`: `labels`, non-empty, is its only key.
    fn run_on_table(&self, r: &mut Report, t: &'a DeTable<'i>) -> Option<RunOn> {
        let example = format!("{} = {{ labels = {{ zone = \"a\" }} }}", self.label);
        let (mut labels, mut given, mut ok) = (None, false, true);
        for (key, value) in t.iter() {
            match key.get_ref().as_ref() {
                "labels" => {
                    given = true;
                    let item = Item {
                        label: Cow::Owned(format!("{}.labels", self.label)),
                        key_at: key.span().start,
                        value,
                    };
                    labels = item.labels(r);
                    if labels.as_ref().is_some_and(BTreeMap::is_empty) {
                        r.error(
                            item.value_at(),
                            format!(
                                "{} must not be empty; name the labels a member needs, \
                                 e.g. {{ zone = \"a\" }} (or write {} = \"any\")",
                                item.label, self.label
                            ),
                        );
                        labels = None;
                    }
                }
                other => {
                    ok = false;
                    let hint = match did_you_mean(other, ["labels"]) {
                        Some(close) => format!("; did you mean `{close}`?"),
                        None => format!(" (its only key is labels: {example})"),
                    };
                    r.error(
                        key.span().start,
                        format!("unknown key `{}` in {}{hint}", shown(other), self.label),
                    );
                }
            }
        }
        // An unknown key already said what to write.
        if !given && ok {
            r.error(
                self.value_at(),
                format!("{} needs labels, e.g. {example}", self.label),
            );
        }
        labels.filter(|_| ok).map(RunOn::Labels)
    }

    /// A table of label names to values, each a plain word
    /// ([`crate::config::label_problem`]); it may be empty.
    pub(super) fn labels(&self, r: &mut Report) -> Option<BTreeMap<String, String>> {
        let table = self.expect(
            r,
            "a table of strings like { zone = \"a\" }",
            |_| "",
            |v| match v {
                DeValue::Table(t) => Some(t),
                _ => None,
            },
        )?;
        let mut labels = Some(BTreeMap::new());
        for (key, value) in table.iter() {
            let name: &str = key.get_ref();
            if let Some(problem) = crate::config::label_problem(name) {
                r.error(
                    key.span().start,
                    format!("{}: label name {} {problem}", self.label, quoted(name)),
                );
                labels = None;
            }
            let item = Item {
                label: Cow::Owned(format!("{}.{}", self.label, shown(name))),
                key_at: key.span().start,
                value,
            };
            let quote_hint = |v: &DeValue| match v {
                DeValue::Integer(_) | DeValue::Float(_) | DeValue::Boolean(_) => {
                    " (put the value in quotes)"
                }
                _ => "",
            };
            let value = item.expect(r, "a string", quote_hint, as_str).filter(|v| {
                let problem = crate::config::label_problem(v);
                if let Some(problem) = &problem {
                    r.error(
                        item.value_at(),
                        format!("{}: label value {} {problem}", item.label, quoted(v)),
                    );
                }
                problem.is_none()
            });
            match (value, &mut labels) {
                (Some(value), Some(labels)) => {
                    labels.insert(name.to_owned(), value.to_owned());
                }
                _ => labels = None,
            }
        }
        labels
    }

    /// `[member] max_runs`: at least 1 (unset is no bound).
    pub(super) fn max_runs(&self, r: &mut Report) -> Option<u32> {
        let zero = matches!(self.value(), DeValue::Integer(n)
            if i64::from_str_radix(n.as_str(), n.radix()) == Ok(0));
        if zero {
            r.error(
                self.value_at(),
                format!(
                    "{} must be at least 1: with 0 no run could be placed on this member; \
                     leave it out for no bound",
                    self.label
                ),
            );
            return None;
        }
        let n = self.integer_in(r, MAX_RUNS_RANGE, "placed runs at once on this member")?;
        u32::try_from(n).ok()
    }

    pub(super) fn timezone(&self, r: &mut Report) -> Option<Tz> {
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

    /// One expression, or an array of them (the union of their ticks).
    pub(super) fn schedule(&self, r: &mut Report, tz: Tz) -> Option<Schedule> {
        let DeValue::Array(items) = self.value() else {
            return self.one_schedule(
                r,
                tz,
                "a string (or an array of strings for several schedules)",
            );
        };
        if items.is_empty() {
            r.error(
                self.value_at(),
                "schedule must list at least one expression, \
                 e.g. schedule = [\"0 9 * * 1-5\", \"0 12 * * 6,0\"]",
            );
            return None;
        }
        let mut parts = Some(Vec::with_capacity(items.len()));
        let mut seen: Vec<String> = Vec::new();
        for (index, element) in items.iter().enumerate() {
            let item = self.element(index, element);
            let one = item.one_schedule(r, tz, "a string");
            if let Some(text) = as_str(element.get_ref()) {
                // Written alike but for spacing or case: the same ticks.
                let same = text
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_lowercase();
                if let Some(first) = seen.iter().position(|s| *s == same) {
                    r.error(
                        item.value_at(),
                        format!(
                            "{} repeats {}[{first}] ({}); list each schedule once",
                            item.label,
                            self.label,
                            quoted(text)
                        ),
                    );
                    parts = None;
                }
                seen.push(same);
            }
            if one.as_ref().is_some_and(Schedule::is_continuous) {
                r.error(
                    item.value_at(),
                    "@continuous is a schedule of its own: write schedule = \"@continuous\", \
                     not in a list",
                );
                parts = None;
            }
            match (one, &mut parts) {
                (Some(s), Some(all)) => all.push(s),
                (None, _) => parts = None,
                _ => {}
            }
        }
        parts.map(Schedule::any_of)
    }

    fn one_schedule(&self, r: &mut Report, tz: Tz, what: &str) -> Option<Schedule> {
        let expr = self.expect(r, what, |_| "", as_str)?;
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

    /// `active_from` / `active_until`: an RFC 3339 time, a local date and
    /// time, or a date, the last two in the job's zone. A date is the start
    /// of that day, or for `until` (`end_of_day`) the end of it, so
    /// `active_until = 2027-03-31` still fires on the 31st.
    pub(super) fn instant(
        &self,
        r: &mut Report,
        tz: Tz,
        end_of_day: bool,
    ) -> Option<DateTime<Utc>> {
        let text = match self.value() {
            DeValue::String(s) => s.to_string(),
            DeValue::Datetime(d) => d.to_string(),
            _ => String::new(),
        };
        let text = text.trim();
        let local = |naive: chrono::NaiveDateTime| {
            // In a spring-forward gap: the instant the gap ends.
            (0..=180).find_map(|m| {
                tz.from_local_datetime(&(naive + chrono::TimeDelta::minutes(m)))
                    .earliest()
            })
        };
        let parsed = DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .ok()
            .or_else(|| {
                [
                    "%Y-%m-%dT%H:%M:%S",
                    "%Y-%m-%d %H:%M:%S",
                    "%Y-%m-%dT%H:%M",
                    "%Y-%m-%d %H:%M",
                ]
                .iter()
                .find_map(|f| chrono::NaiveDateTime::parse_from_str(text, f).ok())
                .and_then(local)
                .map(|t| t.with_timezone(&Utc))
            })
            .or_else(|| {
                let day = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
                let day = if end_of_day { day.succ_opt()? } else { day };
                local(day.and_time(chrono::NaiveTime::MIN)).map(|t| t.with_timezone(&Utc))
            });
        if parsed.is_none() {
            r.error(
                self.value_at(),
                format!(
                    "{} must be a time like 2027-01-31T09:00:00Z (or without the offset, in the \
                     job's time zone) or a date like 2027-01-31, found {}",
                    self.label,
                    match self.value() {
                        DeValue::String(s) => quoted(s),
                        DeValue::Datetime(d) if d.date.is_none() =>
                            format!("{d} (a time of day with no date)"),
                        other => type_name(other).to_string(),
                    }
                ),
            );
        }
        parsed
    }

    /// A hook command, which is unset unless given (`on_failure`).
    pub(super) fn hook(&self, r: &mut Report) -> Option<Option<Vec<String>>> {
        self.command(r).map(Some)
    }

    pub(super) fn command(&self, r: &mut Report) -> Option<Vec<String>> {
        let is_hook = self.label == "on_failure";
        let hint = |v: &DeValue| match v {
            DeValue::String(_) if is_hook => {
                "; for a shell command line use [\"/bin/sh\", \"-c\", \"...\"]"
            }
            DeValue::String(_) => "; for a shell command line use shell = \"...\" instead",
            _ => "",
        };
        let array = self.non_empty_array(
            r,
            "an array of strings like [\"/usr/bin/backup\", \"--full\"]",
            hint,
            || {
                format!(
                    "{} must not be empty; give the program and its arguments, \
                     e.g. [\"/usr/bin/backup\", \"--full\"]",
                    self.label
                )
            },
        )?;
        let mut argv = Some(Vec::with_capacity(array.len()));
        for (index, element) in array.iter().enumerate() {
            let item = self.element(index, element);
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

    pub(super) fn shell(&self, r: &mut Report) -> Option<String> {
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

    pub(super) fn env(&self, r: &mut Report) -> Option<BTreeMap<String, String>> {
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

    /// `[jobs.<name>.params]`: `NAME = { required, pattern, default }`.
    pub(super) fn params(&self, r: &mut Report) -> Option<BTreeMap<String, Param>> {
        let table = self.table(r)?;
        let mut params = Some(BTreeMap::new());
        let mut upper: BTreeMap<String, String> = BTreeMap::new();
        for (key, value) in table.iter() {
            let name: &str = key.get_ref();
            let label = format!("params.{}", shown(name));
            let valid_name = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid_name {
                r.error(
                    key.span().start,
                    format!(
                        "parameter name {} must be letters, digits and '_', not starting with a digit \
                         (it becomes the variable {})",
                        quoted(name),
                        crate::config::param_env_name("NAME")
                    ),
                );
                params = None;
            } else if let Some(other) = upper.insert(name.to_ascii_uppercase(), name.to_owned()) {
                r.error(
                    key.span().start,
                    format!(
                        "parameters \"{other}\" and \"{name}\" would both be the variable {}",
                        crate::config::param_env_name(name)
                    ),
                );
                params = None;
            }
            let item = Item {
                label: Cow::Owned(label),
                key_at: key.span().start,
                value,
            };
            let param = item.param(r);
            match (param, &mut params) {
                (Some(p), Some(params)) => {
                    params.insert(name.to_owned(), p);
                }
                _ => params = None,
            }
        }
        params
    }

    /// One parameter's declaration.
    fn param(&self, r: &mut Report) -> Option<Param> {
        let table = self.expect(
            r,
            "a table like { required = true, pattern = \"^[0-9]+$\", default = \"1\" }",
            |_| "",
            |v| match v {
                DeValue::Table(t) => Some(t),
                _ => None,
            },
        )?;
        let mut param = Param::default();
        let mut ok = true;
        let mut default_at = None;
        for (key, value) in table.iter() {
            let item = Item {
                label: Cow::Owned(format!("{}.{}", self.label, shown(key.get_ref()))),
                key_at: key.span().start,
                value,
            };
            match key.get_ref().as_ref() {
                "required" => match item.boolean(r) {
                    Some(b) => param.required = b,
                    None => ok = false,
                },
                "description" => ok &= item.string(r).is_some(),
                "pattern" => match item.str(r) {
                    Some(src) => match Pattern::new(src) {
                        Ok(p) => param.pattern = Some(p),
                        Err(e) => {
                            let why = e.to_string();
                            let why = why.lines().last().unwrap_or("").trim();
                            let why = why.strip_prefix("error: ").unwrap_or(why);
                            r.error(
                                item.value_at(),
                                format!(
                                    "{} {} is not a valid regular expression: {why}",
                                    item.label,
                                    quoted(src)
                                ),
                            );
                            ok = false;
                        }
                    },
                    None => ok = false,
                },
                "default" => match item.os_str(r) {
                    Some(d) => {
                        default_at = Some(item.value_at());
                        param.default = Some(d.to_owned());
                    }
                    None => ok = false,
                },
                other => {
                    let hint =
                        did_you_mean(other, ["required", "pattern", "default", "description"])
                            .map(|k| format!("; did you mean `{k}`?"))
                            .unwrap_or_else(|| {
                                " (expected one of: required, pattern, default, description)"
                                    .to_string()
                            });
                    r.error(
                        key.span().start,
                        format!("unknown key `{}` in {}{hint}", shown(other), self.label),
                    );
                    ok = false;
                }
            }
        }
        if let (Some(d), Some(p), Some(at)) = (&param.default, &param.pattern, default_at) {
            if !p.matches(d) {
                r.error(
                    at,
                    format!(
                        "{}.default {} does not match its pattern {}",
                        self.label,
                        quoted(d),
                        quoted(&p.source)
                    ),
                );
                ok = false;
            }
        }
        if param.required && param.default.is_some() {
            if let Some(at) = default_at {
                r.error(
                    at,
                    format!(
                        "{} has a default, so it is never missing; drop `required` or the default",
                        self.label
                    ),
                );
            }
            ok = false;
        }
        ok.then_some(param)
    }
}
