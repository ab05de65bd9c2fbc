//! Typed reads of one value, each saying what was expected where: the
//! generic kinds (strings, durations, integers in a range, paths).

use super::*;

/// Longer than any sensible timeout or grace period; a larger value is a
/// typo (a missing unit separator, an extra digit), not an intent.
pub(super) const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// A value together with the name it is reported under and where it is in
/// the file. Every typed accessor reports its own problem at the right place
/// and returns `None`, so callers just chain and move on.
pub(super) struct Item<'a, 'i> {
    /// The key as written, or a path like `command[1]` / `env.HOME`.
    pub(super) label: Cow<'a, str>,
    /// Byte offset of the key (of the value itself for array elements).
    pub(super) key_at: usize,
    pub(super) value: &'a Spanned<DeValue<'i>>,
}

pub(super) fn in_brackets(message: &str) -> bool {
    ["array", "inline table", "key-value pairs"]
        .iter()
        .any(|m| message.contains(m))
}

pub(super) fn as_str<'a>(v: &'a DeValue<'_>) -> Option<&'a str> {
    match v {
        DeValue::String(s) => Some(s),
        _ => None,
    }
}

pub(super) fn type_name(v: &DeValue) -> &'static str {
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

impl<'a, 'i> Item<'a, 'i> {
    pub(super) fn entry(key: &'a Spanned<DeString<'i>>, value: &'a Spanned<DeValue<'i>>) -> Self {
        Item {
            label: Cow::Borrowed(key.get_ref().as_ref()),
            key_at: key.span().start,
            value,
        }
    }

    /// The `index`th element of this array item, labelled `label[index]`.
    pub(super) fn element(&self, index: usize, value: &'a Spanned<DeValue<'i>>) -> Self {
        Item {
            label: Cow::Owned(format!("{}[{index}]", self.label)),
            key_at: value.span().start,
            value,
        }
    }

    pub(super) fn value(&self) -> &'a DeValue<'i> {
        self.value.get_ref()
    }

    pub(super) fn value_at(&self) -> usize {
        self.value.span().start
    }

    /// The value if `pick` accepts its type; otherwise reports
    /// `<label> must be <what>, found <type><hint>`.
    pub(super) fn expect<T>(
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

    /// An array with at least one element; `empty` says what to give.
    pub(super) fn non_empty_array(
        &self,
        r: &mut Report,
        what: &str,
        hint: impl FnOnce(&DeValue) -> &'static str,
        empty: impl FnOnce() -> String,
    ) -> Option<&'a DeArray<'i>> {
        let array = self.expect(r, what, hint, |v| match v {
            DeValue::Array(a) => Some(a),
            _ => None,
        })?;
        if array.is_empty() {
            r.error(self.value_at(), empty());
            return None;
        }
        Some(array)
    }

    pub(super) fn str(&self, r: &mut Report) -> Option<&'a str> {
        self.expect(r, "a string", |_| "", as_str)
    }

    pub(super) fn string(&self, r: &mut Report) -> Option<String> {
        self.str(r).map(str::to_owned)
    }

    pub(super) fn boolean(&self, r: &mut Report) -> Option<bool> {
        let hint = |v: &DeValue| match v {
            DeValue::String(_) => " (write it without quotes)",
            _ => "",
        };
        self.expect(r, "true or false", hint, |v| match v {
            DeValue::Boolean(b) => Some(*b),
            _ => None,
        })
    }

    pub(super) fn table(&self, r: &mut Report) -> Option<&'a DeTable<'i>> {
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
    pub(super) fn os_str(&self, r: &mut Report) -> Option<&'a str> {
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

    pub(super) fn path(&self, r: &mut Report) -> Option<PathBuf> {
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

    pub(super) fn duration(&self, r: &mut Report) -> Option<Duration> {
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
    pub(super) fn timeout(&self, r: &mut Report) -> Option<Option<Duration>> {
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

    pub(super) fn history(&self, r: &mut Report) -> Option<usize> {
        let n = self.integer_in(r, HISTORY_RANGE, "run records kept per job")?;
        usize::try_from(n).ok()
    }

    pub(super) fn retries(&self, r: &mut Report) -> Option<u32> {
        let n = self.integer_in(r, RETRIES_RANGE, "retries after a failed attempt")?;
        u32::try_from(n).ok()
    }

    /// An integer within `range`; `meaning` explains it in the message.
    pub(super) fn integer_in(
        &self,
        r: &mut Report,
        range: RangeInclusive<i64>,
        meaning: &str,
    ) -> Option<i64> {
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

    pub(super) fn positive_duration(&self, r: &mut Report) -> Option<Duration> {
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

    /// A positive duration that may also be left unset (`retry_backoff_max`).
    pub(super) fn some_positive_duration(&self, r: &mut Report) -> Option<Option<Duration>> {
        self.positive_duration(r).map(Some)
    }
}
