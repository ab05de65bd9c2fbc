//! Parsing a schedule's text: nicknames, `@every`, and the cron fields
//! (names, ranges, steps), each error saying which field and why.

use super::*;

pub(super) const NICKNAMES: &str =
    "@yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly, @every <duration>, @continuous";

/// A schedule's kind, and for cron kinds the pattern as parsed by validation.
pub(super) type Parsed = (Kind, Option<Cron>);

pub(super) fn parse_nickname(text: &str) -> Result<Parsed, ScheduleError> {
    let (word, rest) = match text.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim()),
        None => (text, ""),
    };
    let fields = match word.to_ascii_lowercase().as_str() {
        "@every" => return parse_every(rest),
        "@continuous" if rest.is_empty() => return Ok((Kind::Continuous, None)),
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => {
            return Err(ScheduleError::new(format!(
                "unknown nickname {}; expected one of {NICKNAMES}",
                quoted(word)
            )))
        }
    };
    if !rest.is_empty() {
        return Err(ScheduleError::new(format!(
            "{} takes nothing after it, got {}",
            shown(word),
            quoted(rest)
        )));
    }
    parse_fields(fields)
}

pub(super) fn parse_every(duration: &str) -> Result<Parsed, ScheduleError> {
    if duration.is_empty() {
        return Err(ScheduleError::new(
            "@every needs a duration, e.g. \"@every 90s\"",
        ));
    }
    let interval = humantime::parse_duration(duration).map_err(|e| {
        ScheduleError::new(format!(
            "invalid @every duration {}: {}",
            quoted(duration),
            duration_reason(&e)
        ))
    })?;
    if interval < Duration::from_secs(1) {
        return Err(ScheduleError::new("@every interval must be at least 1s"));
    }
    if interval.subsec_nanos() != 0 {
        return Err(ScheduleError::new(format!(
            "@every interval must be a whole number of seconds, got {}",
            humantime::format_duration(interval)
        )));
    }
    let secs = i64::try_from(interval.as_secs()).map_err(|_| {
        ScheduleError::new(format!(
            "@every interval {} is too long: it never fires",
            humantime::format_duration(interval)
        ))
    })?;
    Ok((Kind::Every(secs), None))
}

/// One position of a cron expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Field {
    Second,
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
    Year,
}

pub(super) const MONTH_NAMES: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];

pub(super) const WEEKDAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

pub(super) const FIELDS_5: [Field; 5] = [
    Field::Minute,
    Field::Hour,
    Field::DayOfMonth,
    Field::Month,
    Field::DayOfWeek,
];

/// Validate and normalise a 5-, 6- or 7-field expression, then hand croner
/// an always-6-or-7-field pattern with numbers only, so croner never has to
/// guess which field a name belongs to (it replaces names across the whole
/// pattern, turning a month field `MON` into January).
pub(super) fn parse_fields(text: &str) -> Result<Parsed, ScheduleError> {
    let raw: Vec<&str> = text.split_whitespace().collect();
    let (second, rest, year) = match raw.len() {
        5 => ("0", &raw[..], None),
        6 => (raw[0], &raw[1..], None),
        7 => (raw[0], &raw[1..6], Some(raw[6])),
        n => {
            return Err(ScheduleError::new(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week) \
                 or 6 with leading seconds, got {n}"
            )))
        }
    };

    let mut normalized = vec![normalize_field(Field::Second, second)?];
    for (field, text) in FIELDS_5.iter().zip(rest) {
        normalized.push(normalize_field(*field, text)?);
    }
    if let Some(year) = year {
        normalized.push(normalize_field(Field::Year, year)?);
    }

    // crontab(5): a day field is "restricted" unless it starts with `*`.
    // croner ORs the two day fields unless one is exactly `*`; a field like
    // `*/2` must instead be ANDed with the other, which croner spells with a
    // leading `+` on day-of-week.
    let (dom, dow) = (rest[2], rest[4]);
    let unrestricted = |raw: &str| raw.starts_with('*') || raw == "?";
    if normalized[3] != "*" && normalized[5] != "*" && (unrestricted(dom) || unrestricted(dow)) {
        normalized[5].insert(0, '+');
    }

    let fixed = ![second, rest[0], rest[1]]
        .iter()
        .any(|field| field.contains('*'));

    let pattern = normalized.join(" ");
    let cron = croner_parser()
        .parse(&pattern)
        .map_err(|e| ScheduleError::new(croner_reason(&e)))?;
    // croner needs a search to year 5000 to give up on a date that never
    // occurs (tenths of a second); the usual culprit is caught here. It is
    // only conclusive when day-of-week cannot add days of its own: when it is
    // `*`, or ANDed with day-of-month (`+`, as in `0 0 30 2 */7`).
    let dow_adds_days = normalized[5] != "*" && !normalized[5].starts_with('+');
    if !dow_adds_days && !cron.pattern.days.has_modifiers() {
        let first_day = cron.pattern.days.values().first().copied();
        let longest_month = cron.pattern.months.values().into_iter().map(|m| match m {
            2 => 29,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        });
        if let (Some(day), Some(longest)) = (first_day, longest_month.max()) {
            if day > longest {
                return Err(ScheduleError::new(format!(
                    "never fires: no date matches it (no month in {} has a day {day})",
                    quoted(rest[3])
                )));
            }
        }
    }

    Ok((
        Kind::Cron {
            pattern: pattern.into(),
            fixed,
        },
        Some(cron),
    ))
}

/// croner's message without its "Component error:"-style prefix. Only
/// reachable for inputs the validation here lets through by mistake.
pub(super) fn croner_reason(error: &CronError) -> String {
    let text = match error {
        CronError::InvalidPattern(m)
        | CronError::IllegalCharacters(m)
        | CronError::ComponentError(m) => m.clone(),
        other => other.to_string(),
    };
    let text = text.trim().trim_end_matches('.');
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => "invalid expression".to_string(),
    }
}

pub(super) fn normalize_field(field: Field, text: &str) -> Result<String, ScheduleError> {
    let day_field = matches!(field, Field::DayOfMonth | Field::DayOfWeek);
    if text == "*" || (text == "?" && day_field) {
        return Ok("*".to_string());
    }
    let items = text
        .split(',')
        .map(|item| {
            if item.is_empty() {
                Err(ScheduleError::new(format!(
                    "{} {} has an empty list item",
                    field.name(),
                    quoted(text)
                )))
            } else {
                normalize_item(field, item)
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(items.join(","))
}

pub(super) fn normalize_item(field: Field, item: &str) -> Result<String, ScheduleError> {
    let invalid = || field.invalid(item);
    let (lo, hi) = field.range();
    let upper = item.to_ascii_uppercase();

    if let Some((base, step)) = upper.split_once('/') {
        let step = parse_step(field, step).ok_or_else(invalid)??;
        return if base == "*" {
            // croner starts `*` of the year field at year 1.
            Ok(if field == Field::Year {
                format!("{lo}-{hi}/{step}")
            } else {
                format!("*/{step}")
            })
        } else if let Some((start, end)) = base.split_once('-') {
            let (start, end) = parse_range(field, item, start, end)?;
            Ok(format!("{start}-{end}/{step}"))
        } else {
            let start = parse_value(field, base, false).ok_or_else(invalid)??;
            Err(ScheduleError::new(format!(
                "invalid {} {}: a step needs \"*\" or a range before it, \
                 e.g. \"*/{step}\" or \"{start}-{hi}/{step}\"",
                field.name(),
                quoted(item)
            )))
        };
    }

    if upper == "*" {
        return Ok(format!("{lo}-{hi}"));
    }
    if let Some((start, end)) = upper.split_once('-') {
        let (start, end) = parse_range(field, item, start, end)?;
        return Ok(format!("{start}-{end}"));
    }
    match field {
        Field::DayOfMonth if upper == "L" || upper == "LW" => return Ok(upper),
        Field::DayOfWeek if upper == "L" => {
            return Err(ScheduleError::new(
                "day-of-week \"L\" needs a weekday before it, e.g. \"5L\" for the last Friday",
            ))
        }
        Field::DayOfMonth if upper.len() > 1 && upper.ends_with('W') => {
            let day =
                parse_value(field, &upper[..upper.len() - 1], false).ok_or_else(invalid)??;
            return Ok(format!("{day}W"));
        }
        Field::DayOfWeek if upper.len() > 1 && upper.ends_with('L') && !upper.contains('#') => {
            let day =
                parse_value(field, &upper[..upper.len() - 1], false).ok_or_else(invalid)??;
            return Ok(format!("{day}L"));
        }
        Field::DayOfWeek if upper.contains('#') => {
            let (day, nth) = upper.split_once('#').unwrap_or_default();
            let day = parse_value(field, day, false).ok_or_else(invalid)??;
            return match nth {
                "1" | "2" | "3" | "4" | "5" => Ok(format!("{day}#{nth}")),
                "L" => Ok(format!("{day}L")),
                _ => Err(ScheduleError::new(format!(
                    "invalid day-of-week {}: the number after # must be 1-5 or L",
                    quoted(item)
                ))),
            };
        }
        _ => {}
    }
    let value = parse_value(field, &upper, false).ok_or_else(invalid)??;
    Ok(value.to_string())
}

pub(super) fn parse_range(
    field: Field,
    item: &str,
    start: &str,
    end: &str,
) -> Result<(u32, u32), ScheduleError> {
    let invalid = || field.invalid(item);
    let start = parse_value(field, start, false).ok_or_else(invalid)??;
    // `SUN` ends a range as 7 only where 0 would make it run backwards.
    let end = parse_value(field, end, start > 0).ok_or_else(invalid)??;
    if start > end {
        return Err(ScheduleError::new(format!(
            "{} range {start}-{end} runs backwards; ranges cannot wrap around",
            field.name()
        )));
    }
    Ok((start, end))
}

/// `None` when `token` is not a number or a name at all (the caller words
/// that error with the whole item); `Some(Err)` when it is one but invalid.
/// With `sunday_is_7` (the end of a range that starts after Sunday) `SUN`
/// means 7, so that `MON-SUN` is not backwards; otherwise it is 0, so that
/// `SUN-SUN` is Sunday only and not 0-7, every day.
pub(super) fn parse_value(
    field: Field,
    token: &str,
    sunday_is_7: bool,
) -> Option<Result<u32, ScheduleError>> {
    let (lo, hi) = field.range();
    if !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit()) {
        return Some(match token.parse::<u32>() {
            Ok(value) if (lo..=hi).contains(&value) => Ok(value),
            _ => Err(ScheduleError::new(format!(
                "{} {} out of range {lo}-{hi}",
                field.name(),
                shown(token)
            ))),
        });
    }
    if !token.is_empty() && token.bytes().all(|b| b.is_ascii_alphabetic()) {
        let value = field.value_of_name(token);
        let known = match field {
            Field::Month => "JAN-DEC",
            Field::DayOfWeek => "SUN-SAT",
            _ => return None,
        };
        return Some(match value {
            Some(0) if sunday_is_7 => Ok(7),
            Some(value) => Ok(value),
            None => Err(ScheduleError::new(format!(
                "unknown {} name {}; expected {known}",
                field.name(),
                quoted(token)
            ))),
        });
    }
    None
}

pub(super) fn parse_step(field: Field, step: &str) -> Option<Result<u32, ScheduleError>> {
    if step.is_empty() || !step.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (_, hi) = field.range();
    Some(match step.parse::<u32>() {
        Ok(value) if (1..=hi).contains(&value) => Ok(value),
        _ => Err(ScheduleError::new(format!(
            "{} step {} out of range 1-{hi}",
            field.name(),
            shown(step)
        ))),
    })
}

impl Field {
    /// An item of this field that is not what it must be.
    pub(super) fn invalid(self, item: &str) -> ScheduleError {
        ScheduleError::new(format!(
            "invalid {} {}: expected {}",
            self.name(),
            quoted(item),
            self.expected()
        ))
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Field::Second => "second",
            Field::Minute => "minute",
            Field::Hour => "hour",
            Field::DayOfMonth => "day-of-month",
            Field::Month => "month",
            Field::DayOfWeek => "day-of-week",
            Field::Year => "year",
        }
    }

    pub(super) fn range(self) -> (u32, u32) {
        match self {
            Field::Second | Field::Minute => (0, 59),
            Field::Hour => (0, 23),
            Field::DayOfMonth => (1, 31),
            Field::Month => (1, 12),
            Field::DayOfWeek => (0, 7),
            // croner's own limits are 1-5000, but its search stops at the
            // start of 5000, so only 5000-01-01T00:00:00 could fire in that
            // year. Years before the epoch can never fire for a scheduler.
            Field::Year => (1970, 4999),
        }
    }

    pub(super) fn value_of_name(self, token: &str) -> Option<u32> {
        let upper = token.to_ascii_uppercase();
        let position = |names: &[&str]| names.iter().position(|n| *n == upper);
        match self {
            Field::Month => position(&MONTH_NAMES).map(|i| i as u32 + 1),
            Field::DayOfWeek => position(&WEEKDAY_NAMES).map(|i| i as u32),
            _ => None,
        }
    }

    /// What an item of this field may look like, for error messages.
    pub(super) fn expected(self) -> String {
        let (lo, hi) = self.range();
        let extra = match self {
            Field::DayOfMonth => ", L, LW or 15W",
            Field::Month => " or a name like JAN",
            Field::DayOfWeek => ", a name like MON, 5L (last Friday) or 5#2 (second Friday)",
            _ => "",
        };
        format!("a number {lo}-{hi}, a range like 1-5, a step like */5 or 1-9/2{extra}")
    }
}
