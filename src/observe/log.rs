//! `--log-format json`: one JSON object per line, with the fields of the
//! event and of every span it is in at the top level.
//!
//! tracing-subscriber's own JSON format nests span fields under `span` and
//! `spans`; log pipelines filter on top-level keys, and run-related events
//! get `job`, `run_id`, `tick`, `instance` and `term` from the span they
//! run in ([`run_span`]) rather than each repeating them.

use crate::config::Job;
use crate::model::{RunKey, RunRecord};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use std::fmt;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The target of the spans that carry run fields. Their level is ERROR so
/// that they are enabled at every log level; `init` turns them
/// off for the text format, whose events name their run themselves.
pub const SPAN_TARGET: &str = "bgsched::span";

/// The span of the events about writing a history entry.
pub fn record_span(rec: &RunRecord) -> tracing::Span {
    span(&rec.key)
}

/// The span of the events about one run, from its fields.
pub fn span(key: &RunKey) -> tracing::Span {
    let RunKey {
        run_id,
        job,
        tick,
        trigger,
        instance,
        term,
    } = key;
    tracing::span!(
        target: SPAN_TARGET,
        tracing::Level::ERROR,
        "run",
        job = %job,
        run_id = %run_id,
        tick = %tick.to_rfc3339(),
        trigger = %trigger,
        instance = %instance,
        // Outside a leadership term (`history` shows `-`): no field at all.
        term = (*term != 0).then_some(*term),
    )
}

/// A duration as logs and messages print it: humantime, to the millisecond
/// (`6s 667ms`, not `6.666666666s`).
pub fn duration(d: std::time::Duration) -> humantime::FormattedDuration {
    let ms = (d.as_nanos() + 500_000) / 1_000_000;
    humantime::format_duration(std::time::Duration::from_millis(
        u64::try_from(ms).unwrap_or(u64::MAX),
    ))
}

/// The event format of `--log-format json` (use with [`JsonFields`]).
pub struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            Value::String(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        );
        line.insert("level".into(), Value::String(meta.level().to_string()));
        // Outermost span first, so inner spans and then the event itself
        // win when they name the same field.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<N>>() else {
                    continue;
                };
                if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(fields) {
                    line.extend(fields);
                }
            }
        }
        event.record(&mut Fields(&mut line));
        line.insert("target".into(), Value::String(meta.target().to_string()));
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// The field formatter spans need for [`FlatJson`] to read them back.
pub fn span_fields() -> JsonFields {
    JsonFields::new()
}

struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().into(), Value::String(value.to_string()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().into(), Value::String(value.to_string()));
    }
}

/// Install the tracing subscriber: level from `$BGSCHED_LOG` (default
/// `default_level`), text or (`json`) one JSON object per line, on stderr.
pub fn init(json: bool, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("BGSCHED_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    // The run spans feed JSON's top-level fields whatever the level; text
    // events already name their run, and a span prefix would repeat it.
    let spans = if json { "error" } else { "off" };
    let filter = match format!("{SPAN_TARGET}={spans}").parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour_stderr())
        .with_writer(std::io::stderr);
    let _ = if json {
        builder
            .fmt_fields(span_fields())
            .event_format(FlatJson)
            .try_init()
    } else {
        builder.try_init()
    };
}

/// Colour only for a person at a terminal: captured output, files and
/// journald get plain text, and a non-empty `$NO_COLOR` (no-color.org)
/// turns it off everywhere.
fn colour_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// An instant in the job's time zone with its UTC offset, e.g. `2026-03-29T03:00:00+02:00`.
pub fn local_rfc3339(job: &Job, t: DateTime<Utc>) -> String {
    t.with_timezone(&job.timezone)
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
}

#[cfg(test)]
mod tests {
    use super::duration;
    use std::time::Duration;

    #[test]
    fn durations_are_humantime_to_the_millisecond() {
        let d = |s: f64| duration(Duration::from_secs_f64(s)).to_string();
        assert_eq!(d(20.0 / 3.0), "6s 667ms");
        assert_eq!(d(1.6), "1s 600ms");
        assert_eq!(d(0.0004), "0s");
        assert_eq!(d(90.0), "1m 30s");
    }
}
