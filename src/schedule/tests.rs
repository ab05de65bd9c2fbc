use super::*;
use chrono::{Datelike, NaiveDate, SecondsFormat};
use chrono_tz::America::{New_York, Santiago};
use chrono_tz::Australia::Lord_Howe;
use chrono_tz::Europe::Berlin;
use chrono_tz::UTC;
use std::collections::BTreeMap;
use std::str::FromStr;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .with_timezone(&Utc)
}

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn sched(expr: &str, tz: Tz) -> Schedule {
    Schedule::parse(expr, tz).unwrap_or_else(|e| panic!("{expr:?}: {e}"))
}

fn next(expr: &str, tz: Tz, after: &str) -> String {
    rfc(sched(expr, tz).next_after(at(after)).expect("a next tick"))
}

/// Ticks in `(from, until)`.
fn ticks(expr: &str, tz: Tz, from: &str, until: &str) -> Vec<String> {
    let until = at(until);
    sched(expr, tz)
        .iter_after(at(from))
        .take_while(|t| *t < until)
        .map(rfc)
        .collect()
}

fn error(expr: &str) -> String {
    match Schedule::parse(expr, UTC) {
        Ok(s) => panic!("{expr:?} parsed: {s:?}"),
        Err(e) => e.0,
    }
}

// ---- parsing -------------------------------------------------------

#[test]
fn five_six_and_seven_fields() {
    assert_eq!(
        next("30 2 * * *", UTC, "2026-05-01T12:00:00Z"),
        "2026-05-02T02:30:00Z"
    );
    assert_eq!(
        next("15 30 2 * * *", UTC, "2026-05-01T12:00:00Z"),
        "2026-05-02T02:30:15Z"
    );
    assert_eq!(
        ticks(
            "*/20 * * * * *",
            UTC,
            "2026-05-01T12:00:00Z",
            "2026-05-01T12:01:01Z"
        ),
        [
            "2026-05-01T12:00:20Z",
            "2026-05-01T12:00:40Z",
            "2026-05-01T12:01:00Z"
        ]
    );
    assert_eq!(
        ticks(
            "0 0 12 1 1 * 2030,2032",
            UTC,
            "2026-05-01T00:00:00Z",
            "2040-01-01T00:00:00Z"
        ),
        ["2030-01-01T12:00:00Z", "2032-01-01T12:00:00Z"]
    );
    assert_eq!(
        next("0 0 0 1 1 * */2", UTC, "2026-05-01T00:00:00Z"),
        "2028-01-01T00:00:00Z"
    );
}

#[test]
fn nicknames() {
    let after = "2026-01-15T10:00:00Z"; // a Thursday
    for (expr, expected) in [
        ("@yearly", "2027-01-01T00:00:00Z"),
        ("@annually", "2027-01-01T00:00:00Z"),
        ("@monthly", "2026-02-01T00:00:00Z"),
        ("@weekly", "2026-01-18T00:00:00Z"),
        ("@daily", "2026-01-16T00:00:00Z"),
        ("@midnight", "2026-01-16T00:00:00Z"),
        ("@hourly", "2026-01-15T11:00:00Z"),
        ("@DAILY", "2026-01-16T00:00:00Z"),
        ("  @Hourly  ", "2026-01-15T11:00:00Z"),
    ] {
        assert_eq!(next(expr, UTC, after), expected, "{expr}");
    }
    assert_eq!(next("@daily", New_York, after), "2026-01-16T05:00:00Z");
    for expr in [
        "@yearly",
        "@annually",
        "@monthly",
        "@weekly",
        "@daily",
        "@midnight",
    ] {
        assert!(sched(expr, UTC).is_fixed_time(), "{expr}");
    }
    assert!(!sched("@hourly", UTC).is_fixed_time());
}

#[test]
fn every_is_aligned_to_the_epoch() {
    let s = sched("@every 90s", UTC);
    assert_eq!(s.every(), Some(Duration::from_secs(90)));
    assert!(!s.is_fixed_time());
    assert_eq!(
        rfc(s.next_after(at("1970-01-01T00:00:05Z")).unwrap()),
        "1970-01-01T00:01:30Z"
    );
    assert_eq!(
        rfc(s.next_after(at("1970-01-01T00:01:30Z")).unwrap()),
        "1970-01-01T00:03:00Z"
    );

    let after = at("2026-03-08T12:34:56.789Z");
    let got: Vec<_> = s.iter_after(after).take(5).collect();
    assert!(got[0] > after && got[0] - after <= TimeDelta::seconds(90));
    for (i, t) in got.iter().enumerate() {
        assert_eq!(t.timestamp() % 90, 0, "{t}");
        assert_eq!(t.timestamp_subsec_nanos(), 0);
        if i > 0 {
            assert_eq!(*t - got[i - 1], TimeDelta::seconds(90));
        }
    }
    assert_eq!(rfc(got[0]), "2026-03-08T12:36:00Z");

    // The zone plays no part, not even across a DST change.
    let ny = sched("@every 90s", New_York);
    let from = at("2026-11-01T05:00:00Z");
    assert!(ny
        .iter_after(from)
        .take(200)
        .eq(s.iter_after(from).take(200)));

    let long = sched("@every 1h 30m", Berlin);
    assert_eq!(long.every(), Some(Duration::from_secs(5400)));
    assert_eq!(
        rfc(long.next_after(at("2026-01-01T00:00:00Z")).unwrap()),
        "2026-01-01T01:30:00Z"
    );
    assert_eq!(
        sched("@EVERY   2m", UTC).every(),
        Some(Duration::from_secs(120))
    );
    // Before the epoch too: still multiples of the interval.
    assert_eq!(
        next("@every 1h", UTC, "1969-12-31T22:10:00Z"),
        "1969-12-31T23:00:00Z"
    );
}

#[test]
fn whitespace_is_tolerated_and_source_kept() {
    let s = sched("  */15\t*  *   * *  ", UTC);
    assert_eq!(s.as_str(), "  */15\t*  *   * *  ");
    assert_eq!(s.to_string(), s.as_str());
    assert_eq!(s.timezone(), UTC);
    assert_eq!(
        rfc(s.next_after(at("2026-01-01T00:07:00Z")).unwrap()),
        "2026-01-01T00:15:00Z"
    );
    assert_eq!(
        sched("@every 1h  30m", UTC).every(),
        Some(Duration::from_secs(5400))
    );
    assert_eq!(sched("0 0 * * *", UTC), sched("0 0 * * *", UTC));
    assert_ne!(sched("0 0 * * *", UTC), sched("0 0 * * *", Berlin));
}

#[test]
fn error_messages() {
    for (expr, message) in [
            ("* * *", "expected 5 fields (minute hour day-of-month month day-of-week) or 6 with leading seconds, got 3"),
            ("0 0 0 0 * * * *", "expected 5 fields (minute hour day-of-month month day-of-week) or 6 with leading seconds, got 8"),
            ("61 * * * *", "minute 61 out of range 0-59"),
            ("0 24 * * *", "hour 24 out of range 0-23"),
            ("0 0 0 * *", "day-of-month 0 out of range 1-31"),
            ("0 0 * 13 *", "month 13 out of range 1-12"),
            ("0 0 * * 8", "day-of-week 8 out of range 0-7"),
            ("60 * * * * *", "second 60 out of range 0-59"),
            ("0 0 0 1 1 * 1969", "year 1969 out of range 1970-4999"),
            ("0 0 0 1 1 * 5000", "year 5000 out of range 1970-4999"),
            ("0 0 0 1 1 * 2030-5000", "year 5000 out of range 1970-4999"),
            ("1-99 * * * *", "minute 99 out of range 0-59"),
            ("*/0 * * * *", "minute step 0 out of range 1-59"),
            ("0 0-30/2 * * *", "hour 30 out of range 0-23"),
            ("0 0 1,32 * *", "day-of-month 32 out of range 1-31"),
            ("99999999999 * * * *", "minute 99999999999 out of range 0-59"),
            ("@fortnightly", "unknown nickname \"@fortnightly\"; expected one of @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly, @every <duration>, @continuous"),
            ("@everyday", "unknown nickname \"@everyday\"; expected one of @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly, @every <duration>, @continuous"),
            ("@daily 5", "@daily takes nothing after it, got \"5\""),
            ("", "empty expression"),
            ("   \t ", "empty expression"),
            ("@every", "@every needs a duration, e.g. \"@every 90s\""),
            ("@every 0s", "@every interval must be at least 1s"),
            ("@every 500ms", "@every interval must be at least 1s"),
            ("@every 1500ms", "@every interval must be a whole number of seconds, got 1s 500ms"),
            ("@every 400000years", "@every interval 400000years is too long: it never fires"),
            ("0 0 30 2 *", "never fires: no date matches it (no month in \"2\" has a day 30)"),
            ("0 0 31 APR,JUN,SEP,NOV *", "never fires: no date matches it (no month in \"APR,JUN,SEP,NOV\" has a day 31)"),
            ("0 0 30 2 */7", "never fires: no date matches it (no month in \"2\" has a day 30)"),
            ("0 0 30 2 ?", "never fires: no date matches it (no month in \"2\" has a day 30)"),
            ("0 0 31W 2 *", "never fires: no date matches it"),
            ("0 0 0 29 2 * 2027", "never fires: no date matches it"),
            ("30-10 * * * *", "minute range 30-10 runs backwards; ranges cannot wrap around"),
            ("0 0 * * FRI-MON", "day-of-week range 5-1 runs backwards; ranges cannot wrap around"),
            ("0 0 * MON *", "unknown month name \"MON\"; expected JAN-DEC"),
            ("0 0 * * JAN", "unknown day-of-week name \"JAN\"; expected SUN-SAT"),
            ("0 0 * * 1#6", "invalid day-of-week \"1#6\": the number after # must be 1-5 or L"),
            ("0 0 1,,2 * *", "day-of-month \"1,,2\" has an empty list item"),
            ("0/10 * * * *", "invalid minute \"0/10\": a step needs \"*\" or a range before it, e.g. \"*/10\" or \"0-59/10\""),
            ("x * * * *", "invalid minute \"x\": expected a number 0-59, a range like 1-5, a step like */5 or 1-9/2"),
            ("-1 * * * *", "invalid minute \"-1\": expected a number 0-59, a range like 1-5, a step like */5 or 1-9/2"),
            ("? * * * *", "invalid minute \"?\": expected a number 0-59, a range like 1-5, a step like */5 or 1-9/2"),
            ("0 0 L * L", "day-of-week \"L\" needs a weekday before it, e.g. \"5L\" for the last Friday"),
            ("0 0 * * 1-5L", "invalid day-of-week \"1-5L\": expected a number 0-7, a range like 1-5, a step like */5 or 1-9/2, a name like MON, 5L (last Friday) or 5#2 (second Friday)"),
            ("0 0 5L * *", "invalid day-of-month \"5L\": expected a number 1-31, a range like 1-5, a step like */5 or 1-9/2, L, LW or 15W"),
            ("0 0 @ * *", "invalid day-of-month \"@\": expected a number 1-31, a range like 1-5, a step like */5 or 1-9/2, L, LW or 15W"),
        ] {
            assert_eq!(error(expr), message, "{expr:?}");
        }
    let bad_duration = error("@every 5 parsecs");
    assert!(
        bad_duration.starts_with("invalid @every duration \"5 parsecs\": "),
        "{bad_duration}"
    );
    assert!(
        bad_duration.contains("unknown time unit \"parsecs\""),
        "{bad_duration}"
    );
    assert_eq!(
        error("@every soon"),
        "invalid @every duration \"soon\": expected number at 0; \
             write durations like \"30s\", \"5m\" or \"1h 30m\""
    );
}

#[test]
fn echoed_text_is_escaped_and_shortened() {
    let long = "x".repeat(100_000);
    let cut = format!("\"{}…\"", "x".repeat(100));
    for (expr, message) in [
        (
            format!("{long} * * * *"),
            format!("invalid minute {cut}: expected a number 0-59"),
        ),
        (
            format!("@{long}"),
            format!("unknown nickname \"@{}…\"", "x".repeat(99)),
        ),
        (
            format!("@every 5{long}"),
            format!(
                "invalid @every duration \"5{}…\": unknown time unit {cut}",
                "x".repeat(99)
            ),
        ),
        (
            format!("@daily {long}"),
            format!("@daily takes nothing after it, got {cut}"),
        ),
        (
            format!("{} * * * *", "9".repeat(1000)),
            format!("minute {}… out of range 0-59", "9".repeat(100)),
        ),
        (
            format!("*/{} * * * *", "9".repeat(1000)),
            format!("minute step {}… out of range 1-59", "9".repeat(100)),
        ),
        (
            format!("0 0 * * {}", "X".repeat(1000)),
            format!("unknown day-of-week name \"{}…\"", "X".repeat(100)),
        ),
        (
            format!("0 0 1,,{long} * *"),
            format!(
                "day-of-month \"1,,{}…\" has an empty list item",
                "x".repeat(97)
            ),
        ),
    ] {
        let got = error(&expr);
        assert!(
            got.starts_with(&message),
            "{got:.300}\nexpected {message:.300}"
        );
        assert!(got.len() < 1_000, "{got:.300}");
    }
    for (expr, message) in [
        (
            "\u{1b}[31mRED * * * *",
            "invalid minute \"\\u{1b}[31mRED\": expected",
        ),
        ("\"x\" * * * *", "invalid minute \"\\\"x\\\"\": expected"),
        (
            "@daily \u{1b}[2J",
            "@daily takes nothing after it, got \"\\u{1b}[2J\"",
        ),
        ("@d\u{7}", "unknown nickname \"@d\\u{7}\""),
        (
            "@every 5\u{1b}[2J",
            "invalid @every duration \"5\\u{1b}[2J\": invalid character at 1",
        ),
        (
            "0 0 * * 1#\u{7}",
            "invalid day-of-week \"1#\\u{7}\": the number after #",
        ),
    ] {
        let got = error(expr);
        assert!(
            got.starts_with(message),
            "{expr:?}: {got}\nexpected {message}"
        );
        assert!(!got.chars().any(char::is_control), "{expr:?}: {got:?}");
    }
}

#[test]
fn names_and_special_characters() {
    let after = "2026-01-01T00:00:00Z"; // a Thursday
    assert_eq!(
        next("0 9 * JAN-MAR MON-FRI", UTC, after),
        "2026-01-01T09:00:00Z"
    );
    assert_eq!(next("0 9 * feb Mon", UTC, after), "2026-02-02T09:00:00Z");
    for sunday in ["0 0 * * 0", "0 0 * * 7", "0 0 * * SUN", "0 0 * * sun"] {
        assert_eq!(next(sunday, UTC, after), "2026-01-04T00:00:00Z", "{sunday}");
    }
    assert_eq!(
        ticks("0 0 * * SAT-SUN", UTC, after, "2026-01-12T00:00:00Z"),
        [
            "2026-01-03T00:00:00Z",
            "2026-01-04T00:00:00Z",
            "2026-01-10T00:00:00Z",
            "2026-01-11T00:00:00Z"
        ]
    );
    assert_eq!(next("0 0 * * MON-SUN", UTC, after), "2026-01-02T00:00:00Z");
    // `SUN` ends a range as 7 only when the range starts after Sunday.
    for sundays in [
        "0 0 * * SUN-SUN",
        "0 0 * * 0-SUN",
        "0 0 * * SUN-0",
        "0 0 * * sun-sun/3",
    ] {
        assert_eq!(
            ticks(sundays, UTC, after, "2026-01-19T00:00:00Z"),
            [
                "2026-01-04T00:00:00Z",
                "2026-01-11T00:00:00Z",
                "2026-01-18T00:00:00Z"
            ],
            "{sundays}"
        );
    }
    assert_eq!(
        ticks("0 0 * * FRI-SUN/2", UTC, after, "2026-01-12T00:00:00Z"),
        [
            "2026-01-02T00:00:00Z",
            "2026-01-04T00:00:00Z",
            "2026-01-09T00:00:00Z",
            "2026-01-11T00:00:00Z"
        ]
    );
    assert_eq!(
        ticks("0 0 * * 0-7/3", UTC, after, "2026-01-08T00:00:00Z"),
        [
            "2026-01-03T00:00:00Z",
            "2026-01-04T00:00:00Z",
            "2026-01-07T00:00:00Z"
        ]
    );
    // L, W, LW, #, nL, ?
    assert_eq!(next("0 0 L 2 *", UTC, after), "2026-02-28T00:00:00Z");
    assert_eq!(
        next("0 0 L 2 *", UTC, "2027-06-01T00:00:00Z"),
        "2028-02-29T00:00:00Z"
    );
    assert_eq!(next("0 0 15W 2 *", UTC, after), "2026-02-16T00:00:00Z"); // 15th is a Sunday
    assert_eq!(next("0 0 LW 1 *", UTC, after), "2026-01-30T00:00:00Z"); // 31st is a Saturday
    assert_eq!(next("0 0 * * 5#2", UTC, after), "2026-01-09T00:00:00Z");
    assert_eq!(next("0 0 * * FRI#2", UTC, after), "2026-01-09T00:00:00Z");
    assert_eq!(next("0 0 * * 5L", UTC, after), "2026-01-30T00:00:00Z");
    assert_eq!(next("0 0 * * FRI#L", UTC, after), "2026-01-30T00:00:00Z");
    assert_eq!(next("0 0 ? * 1", UTC, after), "2026-01-05T00:00:00Z");
    assert_eq!(next("0 0 1 * ?", UTC, after), "2026-02-01T00:00:00Z");
    assert_eq!(next("0 0 1,* * *", UTC, after), "2026-01-02T00:00:00Z");
    assert_eq!(next("10-20/5 3 * * *", UTC, after), "2026-01-01T03:10:00Z");
}

#[test]
fn crontab_or_rule_for_day_fields() {
    // croner ORs them by default; this pins that down.
    assert_eq!(
        ticks(
            "0 0 13 * 5",
            UTC,
            "2026-01-01T00:00:00Z",
            "2026-03-01T00:00:00Z"
        ),
        [
            "2026-01-02T00:00:00Z", // Fri
            "2026-01-09T00:00:00Z", // Fri
            "2026-01-13T00:00:00Z", // Tue 13th
            "2026-01-16T00:00:00Z",
            "2026-01-23T00:00:00Z",
            "2026-01-30T00:00:00Z",
            "2026-02-06T00:00:00Z",
            "2026-02-13T00:00:00Z", // Friday the 13th: once
            "2026-02-20T00:00:00Z",
            "2026-02-27T00:00:00Z",
        ]
    );
    // A day field starting with `*` is unrestricted: both must match.
    assert_eq!(
        ticks(
            "0 0 */2 * 1",
            UTC,
            "2026-01-01T00:00:00Z",
            "2026-03-01T00:00:00Z"
        ),
        [
            "2026-01-05T00:00:00Z",
            "2026-01-19T00:00:00Z",
            "2026-02-09T00:00:00Z",
            "2026-02-23T00:00:00Z"
        ]
    );
    assert_eq!(
        ticks(
            "0 0 1-10 * */7",
            UTC,
            "2026-01-01T00:00:00Z",
            "2026-03-01T00:00:00Z"
        ),
        [
            "2026-01-04T00:00:00Z",
            "2026-02-01T00:00:00Z",
            "2026-02-08T00:00:00Z"
        ]
    );
    // `*` in either field: just the other one.
    assert_eq!(
        next("0 0 13 * *", UTC, "2026-01-01T00:00:00Z"),
        "2026-01-13T00:00:00Z"
    );
    assert_eq!(
        next("0 0 * * 5", UTC, "2026-01-03T00:00:00Z"),
        "2026-01-09T00:00:00Z"
    );
}

#[test]
fn fixed_time_classification() {
    for (expr, fixed) in [
        ("30 2 * * *", true),
        ("0 1,13 * * *", true),
        ("45 0-3 * * *", true),
        ("0-59 2 * * *", true),
        ("0 0 1 1 *", true),
        ("0 30 2 * * *", true),
        ("0 * * * *", false),
        ("*/30 * * * *", false),
        ("30 * * * *", false),
        ("* 2 * * *", false),
        ("0 */2 * * *", false),
        ("*/10 30 2 * * *", false),
        ("1,* 2 * * *", false),
        ("@every 1h", false),
    ] {
        assert_eq!(sched(expr, UTC).is_fixed_time(), fixed, "{expr}");
    }
}

#[test]
fn schedule_is_cheap_to_share() {
    fn shareable<T: Send + Sync + Clone + 'static>() {}
    shareable::<Schedule>();
    let s = sched("0 0 * * *", UTC);
    let debug = format!("{:?}", s.clone());
    assert!(debug.len() < 300, "{debug}");
}

// ---- DST: America/New_York -----------------------------------------
// 2026-03-08 02:00 EST -> 03:00 EDT at 07:00Z; 2026-11-01 02:00 EDT ->
// 01:00 EST at 06:00Z.

#[test]
fn new_york_single_hour_fixed_job() {
    assert_eq!(
        ticks(
            "30 2 * * *",
            New_York,
            "2026-03-06T12:00:00Z",
            "2026-03-10T00:00:00Z"
        ),
        [
            "2026-03-07T07:30:00Z",
            "2026-03-08T07:00:00Z",
            "2026-03-09T06:30:00Z"
        ]
    );
    assert_eq!(
        ticks(
            "30 2 * * *",
            New_York,
            "2026-10-30T12:00:00Z",
            "2026-11-03T00:00:00Z"
        ),
        [
            "2026-10-31T06:30:00Z",
            "2026-11-01T07:30:00Z",
            "2026-11-02T07:30:00Z"
        ]
    );
    assert_eq!(
        ticks(
            "30 1 * * *",
            New_York,
            "2026-10-30T12:00:00Z",
            "2026-11-03T00:00:00Z"
        ),
        [
            "2026-10-31T05:30:00Z",
            "2026-11-01T05:30:00Z",
            "2026-11-02T06:30:00Z"
        ]
    );
    // Two gap times of one job collapse into one tick.
    assert_eq!(
        ticks(
            "0,30 2 * * *",
            New_York,
            "2026-03-07T12:00:00Z",
            "2026-03-09T12:00:00Z"
        ),
        [
            "2026-03-08T07:00:00Z",
            "2026-03-09T06:00:00Z",
            "2026-03-09T06:30:00Z"
        ]
    );
    // 03:00 EDT is both the gap's tick and a real match: still one tick.
    assert_eq!(
        ticks(
            "0 2,3 * * *",
            New_York,
            "2026-03-08T00:00:00Z",
            "2026-03-09T00:00:00Z"
        ),
        ["2026-03-08T07:00:00Z"]
    );
}

#[test]
fn new_york_hour_list_fixed_job() {
    assert_eq!(
        ticks(
            "0 1,13 * * *",
            New_York,
            "2026-03-07T12:00:00Z",
            "2026-03-09T12:00:00Z"
        ),
        [
            "2026-03-07T18:00:00Z",
            "2026-03-08T06:00:00Z",
            "2026-03-08T17:00:00Z",
            "2026-03-09T05:00:00Z"
        ]
    );
    assert_eq!(
        ticks(
            "0 1,13 * * *",
            New_York,
            "2026-10-31T12:00:00Z",
            "2026-11-02T12:00:00Z"
        ),
        [
            "2026-10-31T17:00:00Z",
            "2026-11-01T05:00:00Z",
            "2026-11-01T18:00:00Z",
            "2026-11-02T06:00:00Z"
        ]
    );
    assert_eq!(
        ticks(
            "30 1,2 * * *",
            New_York,
            "2026-03-08T00:00:00Z",
            "2026-03-09T12:00:00Z"
        ),
        [
            "2026-03-08T06:30:00Z",
            "2026-03-08T07:00:00Z",
            "2026-03-09T05:30:00Z",
            "2026-03-09T06:30:00Z"
        ]
    );
    assert_eq!(
        ticks(
            "30 1,2 * * *",
            New_York,
            "2026-11-01T00:00:00Z",
            "2026-11-02T12:00:00Z"
        ),
        [
            "2026-11-01T05:30:00Z",
            "2026-11-01T07:30:00Z",
            "2026-11-02T06:30:00Z",
            "2026-11-02T07:30:00Z"
        ]
    );
}

#[test]
fn new_york_hour_range_fixed_job() {
    assert_eq!(
        ticks(
            "45 0-3 * * *",
            New_York,
            "2026-03-08T00:00:00Z",
            "2026-03-08T12:00:00Z"
        ),
        [
            "2026-03-08T05:45:00Z",
            "2026-03-08T06:45:00Z",
            "2026-03-08T07:00:00Z",
            "2026-03-08T07:45:00Z"
        ]
    );
    assert_eq!(
        ticks(
            "45 0-3 * * *",
            New_York,
            "2026-11-01T00:00:00Z",
            "2026-11-01T12:00:00Z"
        ),
        [
            "2026-11-01T04:45:00Z",
            "2026-11-01T05:45:00Z",
            "2026-11-01T07:45:00Z",
            "2026-11-01T08:45:00Z"
        ]
    );
}

#[test]
fn new_york_wildcard_jobs() {
    // Fall back: 01:00 fires at 05:00Z (EDT) and again at 06:00Z (EST).
    assert_eq!(
        ticks(
            "0 * * * *",
            New_York,
            "2026-11-01T03:30:00Z",
            "2026-11-01T08:30:00Z"
        ),
        [
            "2026-11-01T04:00:00Z",
            "2026-11-01T05:00:00Z",
            "2026-11-01T06:00:00Z",
            "2026-11-01T07:00:00Z",
            "2026-11-01T08:00:00Z"
        ]
    );
    // Spring forward: 02:00 does not exist; 03:00 EDT is 07:00Z.
    assert_eq!(
        ticks(
            "0 * * * *",
            New_York,
            "2026-03-08T04:30:00Z",
            "2026-03-08T08:30:00Z"
        ),
        [
            "2026-03-08T05:00:00Z",
            "2026-03-08T06:00:00Z",
            "2026-03-08T07:00:00Z",
            "2026-03-08T08:00:00Z"
        ]
    );
    assert_eq!(
        ticks(
            "*/30 * * * *",
            New_York,
            "2026-11-01T04:45:00Z",
            "2026-11-01T07:15:00Z"
        ),
        [
            "2026-11-01T05:00:00Z",
            "2026-11-01T05:30:00Z",
            "2026-11-01T06:00:00Z",
            "2026-11-01T06:30:00Z",
            "2026-11-01T07:00:00Z"
        ]
    );
    assert_eq!(
        ticks(
            "*/30 * * * *",
            New_York,
            "2026-03-08T05:45:00Z",
            "2026-03-08T08:15:00Z"
        ),
        [
            "2026-03-08T06:00:00Z",
            "2026-03-08T06:30:00Z",
            "2026-03-08T07:00:00Z",
            "2026-03-08T07:30:00Z",
            "2026-03-08T08:00:00Z"
        ]
    );
    assert_eq!(
        ticks(
            "30 * * * *",
            New_York,
            "2026-11-01T04:00:00Z",
            "2026-11-01T08:00:00Z"
        ),
        [
            "2026-11-01T04:30:00Z",
            "2026-11-01T05:30:00Z",
            "2026-11-01T06:30:00Z",
            "2026-11-01T07:30:00Z"
        ]
    );
    assert_eq!(
        ticks(
            "30 * * * *",
            New_York,
            "2026-03-08T05:00:00Z",
            "2026-03-08T09:00:00Z"
        ),
        [
            "2026-03-08T05:30:00Z",
            "2026-03-08T06:30:00Z",
            "2026-03-08T07:30:00Z",
            "2026-03-08T08:30:00Z"
        ]
    );
    // Starting inside the repeated hour, in either pass.
    assert_eq!(
        next("30 * * * *", New_York, "2026-11-01T05:40:00Z"),
        "2026-11-01T06:30:00Z"
    );
    assert_eq!(
        next("30 * * * *", New_York, "2026-11-01T06:10:00Z"),
        "2026-11-01T06:30:00Z"
    );
    assert_eq!(
        next("0 1 * * *", New_York, "2026-11-01T05:40:00Z"),
        "2026-11-02T06:00:00Z"
    );
}

// ---- DST: Europe/Berlin --------------------------------------------
// 2026-03-29 02:00 CET -> 03:00 CEST at 01:00Z; 2026-10-25 03:00 CEST ->
// 02:00 CET at 01:00Z.

#[test]
fn berlin_fixed_jobs() {
    assert_eq!(
        ticks(
            "30 2 * * *",
            Berlin,
            "2026-03-27T12:00:00Z",
            "2026-03-31T00:00:00Z"
        ),
        [
            "2026-03-28T01:30:00Z",
            "2026-03-29T01:00:00Z",
            "2026-03-30T00:30:00Z"
        ]
    );
    assert_eq!(
        ticks(
            "30 2 * * *",
            Berlin,
            "2026-10-23T12:00:00Z",
            "2026-10-27T00:00:00Z"
        ),
        [
            "2026-10-24T00:30:00Z",
            "2026-10-25T00:30:00Z",
            "2026-10-26T01:30:00Z"
        ]
    );
    assert_eq!(
        ticks(
            "30 1,2 * * *",
            Berlin,
            "2026-03-28T12:00:00Z",
            "2026-03-30T12:00:00Z"
        ),
        [
            "2026-03-29T00:30:00Z",
            "2026-03-29T01:00:00Z",
            "2026-03-29T23:30:00Z",
            "2026-03-30T00:30:00Z"
        ]
    );
    assert_eq!(
        ticks(
            "30 1,2 * * *",
            Berlin,
            "2026-10-24T12:00:00Z",
            "2026-10-26T12:00:00Z"
        ),
        [
            "2026-10-24T23:30:00Z",
            "2026-10-25T00:30:00Z",
            "2026-10-26T00:30:00Z",
            "2026-10-26T01:30:00Z"
        ]
    );
    assert_eq!(
        ticks(
            "45 0-3 * * *",
            Berlin,
            "2026-03-28T20:00:00Z",
            "2026-03-29T06:00:00Z"
        ),
        [
            "2026-03-28T23:45:00Z",
            "2026-03-29T00:45:00Z",
            "2026-03-29T01:00:00Z",
            "2026-03-29T01:45:00Z"
        ]
    );
    assert_eq!(
        ticks(
            "45 0-3 * * *",
            Berlin,
            "2026-10-24T20:00:00Z",
            "2026-10-25T06:00:00Z"
        ),
        [
            "2026-10-24T22:45:00Z",
            "2026-10-24T23:45:00Z",
            "2026-10-25T00:45:00Z",
            "2026-10-25T02:45:00Z"
        ]
    );
}

#[test]
fn berlin_wildcard_jobs() {
    assert_eq!(
        ticks(
            "0 * * * *",
            Berlin,
            "2026-10-24T22:30:00Z",
            "2026-10-25T02:30:00Z"
        ),
        [
            "2026-10-24T23:00:00Z",
            "2026-10-25T00:00:00Z",
            "2026-10-25T01:00:00Z",
            "2026-10-25T02:00:00Z"
        ]
    );
    assert_eq!(
        ticks(
            "*/30 * * * *",
            Berlin,
            "2026-03-28T23:45:00Z",
            "2026-03-29T02:15:00Z"
        ),
        [
            "2026-03-29T00:00:00Z",
            "2026-03-29T00:30:00Z",
            "2026-03-29T01:00:00Z",
            "2026-03-29T01:30:00Z",
            "2026-03-29T02:00:00Z"
        ]
    );
    assert_eq!(
        ticks(
            "30 * * * *",
            Berlin,
            "2026-10-24T22:00:00Z",
            "2026-10-25T03:00:00Z"
        ),
        [
            "2026-10-24T22:30:00Z",
            "2026-10-24T23:30:00Z",
            "2026-10-25T00:30:00Z",
            "2026-10-25T01:30:00Z",
            "2026-10-25T02:30:00Z"
        ]
    );
}

// ---- DST: Australia/Lord_Howe (30-minute shifts) ---------------------
// 2026-04-05 02:00 +11 -> 01:30 +10:30 at 2026-04-04T15:00Z;
// 2026-10-04 02:00 +10:30 -> 02:30 +11 at 2026-10-03T15:30Z.

#[test]
fn lord_howe_dates_are_as_documented() {
    let before = at("2026-04-04T14:59:59Z").with_timezone(&Lord_Howe);
    let after = at("2026-04-04T15:00:00Z").with_timezone(&Lord_Howe);
    assert_eq!(before.to_rfc3339(), "2026-04-05T01:59:59+11:00");
    assert_eq!(after.to_rfc3339(), "2026-04-05T01:30:00+10:30");
    let before = at("2026-10-03T15:29:59Z").with_timezone(&Lord_Howe);
    let after = at("2026-10-03T15:30:00Z").with_timezone(&Lord_Howe);
    assert_eq!(before.to_rfc3339(), "2026-10-04T01:59:59+10:30");
    assert_eq!(after.to_rfc3339(), "2026-10-04T02:30:00+11:00");
}

#[test]
fn lord_howe_fixed_jobs() {
    assert_eq!(
        ticks(
            "30 2 * * *",
            Lord_Howe,
            "2026-04-03T12:00:00Z",
            "2026-04-06T12:00:00Z"
        ),
        [
            "2026-04-03T15:30:00Z",
            "2026-04-04T16:00:00Z",
            "2026-04-05T16:00:00Z"
        ]
    );
    assert_eq!(
        ticks(
            "30 2 * * *",
            Lord_Howe,
            "2026-10-02T12:00:00Z",
            "2026-10-05T12:00:00Z"
        ),
        [
            "2026-10-02T16:00:00Z",
            "2026-10-03T15:30:00Z",
            "2026-10-04T15:30:00Z"
        ]
    );
    assert_eq!(
        ticks(
            "15 2 * * *",
            Lord_Howe,
            "2026-10-02T12:00:00Z",
            "2026-10-05T12:00:00Z"
        ),
        [
            "2026-10-02T15:45:00Z",
            "2026-10-03T15:30:00Z",
            "2026-10-04T15:15:00Z"
        ]
    );
    assert_eq!(
        ticks(
            "45 1 * * *",
            Lord_Howe,
            "2026-04-03T12:00:00Z",
            "2026-04-06T12:00:00Z"
        ),
        [
            "2026-04-03T14:45:00Z",
            "2026-04-04T14:45:00Z",
            "2026-04-05T15:15:00Z"
        ]
    );
    assert_eq!(
        ticks(
            "15,45 1,2 * * *",
            Lord_Howe,
            "2026-04-04T12:00:00Z",
            "2026-04-05T12:00:00Z"
        ),
        [
            "2026-04-04T14:15:00Z",
            "2026-04-04T14:45:00Z",
            "2026-04-04T15:45:00Z",
            "2026-04-04T16:15:00Z"
        ]
    );
    assert_eq!(
        ticks(
            "15,45 1,2 * * *",
            Lord_Howe,
            "2026-10-03T12:00:00Z",
            "2026-10-04T12:00:00Z"
        ),
        [
            "2026-10-03T14:45:00Z",
            "2026-10-03T15:15:00Z",
            "2026-10-03T15:30:00Z",
            "2026-10-03T15:45:00Z"
        ]
    );
    assert_eq!(
        ticks(
            "45 0-3 * * *",
            Lord_Howe,
            "2026-04-04T12:00:00Z",
            "2026-04-04T20:00:00Z"
        ),
        [
            "2026-04-04T13:45:00Z",
            "2026-04-04T14:45:00Z",
            "2026-04-04T16:15:00Z",
            "2026-04-04T17:15:00Z"
        ]
    );
    assert_eq!(
        ticks(
            "15 0-3 * * *",
            Lord_Howe,
            "2026-10-03T12:00:00Z",
            "2026-10-03T20:00:00Z"
        ),
        [
            "2026-10-03T13:45:00Z",
            "2026-10-03T14:45:00Z",
            "2026-10-03T15:30:00Z",
            "2026-10-03T16:15:00Z"
        ]
    );
}

#[test]
fn lord_howe_wildcard_jobs() {
    assert_eq!(
        ticks(
            "0 * * * *",
            Lord_Howe,
            "2026-04-04T12:30:00Z",
            "2026-04-04T17:00:00Z"
        ),
        [
            "2026-04-04T13:00:00Z",
            "2026-04-04T14:00:00Z",
            "2026-04-04T15:30:00Z",
            "2026-04-04T16:30:00Z"
        ]
    );
    assert_eq!(
        ticks(
            "0 * * * *",
            Lord_Howe,
            "2026-10-03T13:00:00Z",
            "2026-10-03T17:00:00Z"
        ),
        [
            "2026-10-03T13:30:00Z",
            "2026-10-03T14:30:00Z",
            "2026-10-03T16:00:00Z"
        ]
    );
    assert_eq!(
        ticks(
            "30 * * * *",
            Lord_Howe,
            "2026-04-04T13:00:00Z",
            "2026-04-04T17:00:00Z"
        ),
        [
            "2026-04-04T13:30:00Z",
            "2026-04-04T14:30:00Z",
            "2026-04-04T15:00:00Z",
            "2026-04-04T16:00:00Z"
        ]
    );
    assert_eq!(
        ticks(
            "30 * * * *",
            Lord_Howe,
            "2026-10-03T13:00:00Z",
            "2026-10-03T17:00:00Z"
        ),
        [
            "2026-10-03T14:00:00Z",
            "2026-10-03T15:00:00Z",
            "2026-10-03T15:30:00Z",
            "2026-10-03T16:30:00Z"
        ]
    );
    assert_eq!(
        ticks(
            "*/30 * * * *",
            Lord_Howe,
            "2026-04-04T13:45:00Z",
            "2026-04-04T16:15:00Z"
        ),
        [
            "2026-04-04T14:00:00Z",
            "2026-04-04T14:30:00Z",
            "2026-04-04T15:00:00Z",
            "2026-04-04T15:30:00Z",
            "2026-04-04T16:00:00Z"
        ]
    );
    assert_eq!(
        ticks(
            "*/30 * * * *",
            Lord_Howe,
            "2026-10-03T14:15:00Z",
            "2026-10-03T16:15:00Z"
        ),
        [
            "2026-10-03T14:30:00Z",
            "2026-10-03T15:00:00Z",
            "2026-10-03T15:30:00Z",
            "2026-10-03T16:00:00Z"
        ]
    );
}

#[test]
fn fixed_jobs_fire_once_per_local_day() {
    for tz in [New_York, Berlin, Lord_Howe, Santiago] {
        for expr in [
            "30 2 * * *",
            "30 1 * * *",
            "15 2 * * *",
            "45 1 * * *",
            "0 2 * * *",
            "59 1 * * *",
            "0 0 * * *",
            "0 3 * * *",
        ] {
            let from = at("2026-01-01T00:00:00Z");
            let until = at("2027-01-01T00:00:00Z");
            let mut per_day = BTreeMap::<NaiveDate, usize>::new();
            for tick in sched(expr, tz).iter_after(from).take_while(|t| *t < until) {
                *per_day
                    .entry(tick.with_timezone(&tz).date_naive())
                    .or_default() += 1;
            }
            let first = from.with_timezone(&tz).date_naive().succ_opt().unwrap();
            let last = until.with_timezone(&tz).date_naive().pred_opt().unwrap();
            for day in first.iter_days().take_while(|d| *d <= last) {
                assert_eq!(per_day.get(&day), Some(&1), "{expr} in {tz} on {day}");
            }
        }
    }
}

#[test]
fn a_schedule_whose_years_are_over_loads_and_knows_its_last_fire() {
    let at = |t: &str| DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc);
    let s = Schedule::parse("0 0 12 1 1 * 2030,2032", Berlin).unwrap();
    assert_eq!(s.ended(at("2032-01-01T10:00:00Z")), None);
    assert_eq!(
        s.ended(at("2033-01-01T00:00:00Z")),
        Some(at("2032-01-01T11:00:00Z"))
    );
    let s = Schedule::parse("* * * * * * 2020", UTC).unwrap();
    assert_eq!(s.ended(Utc::now()), Some(at("2020-12-31T23:59:59Z")));
    assert_eq!(
        Schedule::parse("@daily", UTC).unwrap().ended(Utc::now()),
        None
    );
}

#[test]
fn iter_after_strictly_increases_over_a_year() {
    let zones = [
        UTC,
        New_York,
        Berlin,
        Lord_Howe,
        Santiago,
        chrono_tz::Asia::Kolkata,
        chrono_tz::Europe::Dublin,
    ];
    let exprs = [
        "*/30 * * * *",
        "0 * * * *",
        "30 2 * * *",
        "45 0-3 * * *",
        "15,45 1,2 * * *",
        "@hourly",
        "@daily",
        "0 0 L * *",
        "*/30 */20 1-2 * * *",
        "@every 7m",
    ];
    let from = at("2026-01-01T00:00:00Z");
    let until = at("2027-01-01T00:00:00Z");
    for tz in zones {
        for expr in exprs {
            let mut previous = from;
            let mut count = 0;
            for tick in sched(expr, tz).iter_after(from).take_while(|t| *t < until) {
                assert!(tick > previous, "{expr} in {tz}: {tick} after {previous}");
                previous = tick;
                count += 1;
            }
            assert!(count > 0, "{expr} in {tz}");
            if expr == "0 * * * *" && tz != Lord_Howe && tz != chrono_tz::Asia::Kolkata {
                // Whole-hour shifts: a wildcard hourly job keeps elapsed
                // time (8760 hours, less the excluded start).
                assert_eq!(count, 8759, "{expr} in {tz}");
            }
        }
    }
}

// ---- cross-checks against brute force --------------------------------

/// Every instant in `(from, until)` on a `step` grid that croner matches
/// in UTC, by walking the grid.
fn utc_walk(
    expr: &str,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    step: TimeDelta,
) -> Vec<DateTime<Utc>> {
    let cron = CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(expr)
        .unwrap();
    let mut out = Vec::new();
    let mut t = from + step;
    while t < until {
        if cron.is_time_matching(&t.naive_utc()).unwrap() {
            out.push(t);
        }
        t += step;
    }
    out
}

#[test]
fn matches_brute_force_in_utc() {
    let from = at("2026-02-26T00:00:00Z");
    let until = at("2026-03-03T00:00:00Z");
    for expr in [
        "* * * * *",
        "*/7 * * * *",
        "0 */3 * * *",
        "15,45 9-17 * * 1-5",
        "0 0 13 * 5",
        "0 0 L * *",
        "0 12 1W * *",
        "0 0 * * 0#1",
        "30 4 1,28 * *",
        "5-10/2 22-23 * * *",
        "0 0 * FEB-MAR SUN",
    ] {
        let expected = utc_walk(expr, from, until, TimeDelta::minutes(1));
        let got: Vec<_> = sched(expr, UTC)
            .iter_after(from)
            .take_while(|t| *t < until)
            .collect();
        assert_eq!(got, expected, "{expr}");
    }
    let until = from + TimeDelta::days(1);
    for expr in ["*/13 * * * * *", "0,30 */7 2-5 * * *", "59 59 23 * * *"] {
        let expected = utc_walk(expr, from, until, TimeDelta::seconds(1));
        let got: Vec<_> = sched(expr, UTC)
            .iter_after(from)
            .take_while(|t| *t < until)
            .collect();
        assert_eq!(got, expected, "{expr}");
    }
}

/// The DST rule stated from first principles, step by step: a
/// wildcard job fires at each instant whose wall time matches; a
/// fixed-time job at the first instant with a matching wall time, and at
/// a transition that skips a matching wall time.
fn dst_oracle(
    expr: &str,
    tz: Tz,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    step: TimeDelta,
) -> Vec<DateTime<Utc>> {
    let cron = Cron::from_str(expr).unwrap();
    let fixed = sched(expr, tz).is_fixed_time();
    let minute = step;
    let mut out = Vec::new();
    let mut t = from + minute;
    while t < until {
        let local = t.with_timezone(&tz).naive_local();
        let matches = |naive: &NaiveDateTime| cron.is_time_matching(naive).unwrap();
        let fires = if !fixed {
            matches(&local)
        } else {
            let first_pass =
                tz.from_local_datetime(&local).earliest() == Some(t.with_timezone(&tz));
            let previous = (t - minute).with_timezone(&tz).naive_local();
            let mut skipped = previous + minute;
            let mut gap_match = false;
            while skipped < local {
                gap_match |= matches(&skipped);
                skipped += minute;
            }
            (matches(&local) && first_pass) || gap_match
        };
        if fires {
            out.push(t);
        }
        t += minute;
    }
    out
}

#[test]
fn matches_dst_oracle_around_transitions() {
    let transitions = [
        (New_York, ["2026-03-08T07:00:00Z", "2026-11-01T06:00:00Z"]),
        (Berlin, ["2026-03-29T01:00:00Z", "2026-10-25T01:00:00Z"]),
        (Lord_Howe, ["2026-04-04T15:00:00Z", "2026-10-03T15:30:00Z"]),
        (Santiago, ["2026-04-05T03:00:00Z", "2026-09-06T04:00:00Z"]),
    ];
    let exprs = [
        "30 2 * * *",
        "0,30 2 * * *",
        "0 1,13 * * *",
        "30 1,2 * * *",
        "45 0-3 * * *",
        "15,45 1,2 * * *",
        "0 0 * * *",
        "59 23 * * *",
        "0-59/10 2 * * *",
        "0 * * * *",
        "*/30 * * * *",
        "30 * * * *",
        "*/7 * * * *",
        "15 */2 * * *",
        "* 1 * * *",
        "0 0 * * 0",
    ];
    for (tz, instants) in transitions {
        for transition in instants {
            let transition = at(transition);
            let from = transition - TimeDelta::hours(30);
            let until = transition + TimeDelta::hours(30);
            for expr in exprs {
                let expected = dst_oracle(expr, tz, from, until, TimeDelta::minutes(1));
                let schedule = sched(expr, tz);
                let got: Vec<_> = schedule
                    .iter_after(from)
                    .take_while(|t| *t < until)
                    .collect();
                assert_eq!(
                    got.iter().map(|t| rfc(*t)).collect::<Vec<_>>(),
                    expected.iter().map(|t| rfc(*t)).collect::<Vec<_>>(),
                    "{expr} in {tz} around {transition}"
                );
                // Starting from any minute gives the same continuation.
                let mut start = from;
                while start < until {
                    let want = expected.iter().find(|t| **t > start).copied();
                    let have = schedule.next_after(start).filter(|t| *t < until);
                    assert_eq!(have, want, "{expr} in {tz} after {start}");
                    start += TimeDelta::minutes(13);
                }
            }
        }
    }
}

#[test]
fn matches_dst_oracle_to_the_second() {
    let transitions = [
        (New_York, "2026-11-01T06:00:00Z"),
        (New_York, "2026-03-08T07:00:00Z"),
        (Lord_Howe, "2026-04-04T15:00:00Z"),
        (Lord_Howe, "2026-10-03T15:30:00Z"),
    ];
    let exprs = [
        "*/15 * * * * *",
        "0 */20 * * * *",
        "30 30 1,2 * * *",
        "*/20 45 1 * * *",
        "10-15 0 2 * * *",
    ];
    for (tz, transition) in transitions {
        let transition = at(transition);
        let from = transition - TimeDelta::minutes(90);
        let until = transition + TimeDelta::minutes(90);
        for expr in exprs {
            let expected = dst_oracle(expr, tz, from, until, TimeDelta::seconds(1));
            let schedule = sched(expr, tz);
            let got: Vec<_> = schedule
                .iter_after(from)
                .take_while(|t| *t < until)
                .collect();
            assert_eq!(got, expected, "{expr} in {tz} around {transition}");
            let mut start = from;
            while start < until {
                let want = expected.iter().find(|t| **t > start).copied();
                let have = schedule.next_after(start).filter(|t| *t < until);
                assert_eq!(have, want, "{expr} in {tz} after {start}");
                start += TimeDelta::seconds(7 * 60 + 13);
            }
        }
    }
}

#[test]
fn fast_path_is_one_croner_lookup() {
    let lookups = |expr: &str, tz: Tz, after: &str| {
        let s = sched(expr, tz);
        CRONER_LOOKUPS.with(|n| n.set(0));
        s.next_after(at(after)).unwrap();
        CRONER_LOOKUPS.with(|n| n.get())
    };
    assert_eq!(lookups("30 2 * * *", New_York, "2026-06-15T12:00:00Z"), 1);
    assert_eq!(lookups("*/30 * * * *", Berlin, "2026-06-15T12:00:00Z"), 1);
    assert_eq!(lookups("0 0 1 1 *", Lord_Howe, "2026-06-15T12:00:00Z"), 1);
    // A daily job whose next run is across a transition: still one.
    assert_eq!(lookups("30 2 * * *", New_York, "2026-03-07T12:00:00Z"), 1);
}

#[test]
fn sub_second_after_and_extreme_instants() {
    assert_eq!(
        next("* * * * * *", UTC, "2026-01-01T00:00:00.999Z"),
        "2026-01-01T00:00:01Z"
    );
    assert_eq!(
        next("* * * * *", Berlin, "2026-01-01T00:00:59.5Z"),
        "2026-01-01T00:01:00Z"
    );
    for expr in ["* * * * *", "@every 1s", "0 0 1 1 *", "30 2 * * *"] {
        let s = sched(expr, New_York);
        assert_eq!(s.next_after(DateTime::<Utc>::MAX_UTC), None, "{expr}");
        let _ = s.next_after(DateTime::<Utc>::MIN_UTC);
        let _ = s.next_after(at("4999-12-31T23:59:59Z"));
    }
}

/// xorshift: deterministic and dependency-free.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

#[test]
fn random_input_never_panics() {
    let alphabet: Vec<char> =
        "0123456789012345678901234567890123456789**///--,,,  \t LWl#?@abceFJMNOSUveryhodé→\u{3000}"
            .chars()
            .collect();
    let words = [
        "@every", "@daily", "@hourly", "@weekly", "1h", "90s", "1.5s", "0", "MON",
    ];
    let fields = [
        "*",
        "*",
        "*",
        "?",
        "0",
        "1",
        "5",
        "7",
        "12",
        "23",
        "29",
        "31",
        "59",
        "*/5",
        "*/2",
        "1-5",
        "1,15",
        "0-23/3",
        "L",
        "LW",
        "15W",
        "5L",
        "5#2",
        "MON",
        "jan",
        "MON-FRI",
        "2026-2030",
        "1969",
        "61",
        "x",
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let now = Utc::now();
    let mut parsed = 0;
    for i in 0..4000 {
        let expr: String = match i % 3 {
            0 => (0..rng.below(24))
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect(),
            1 => (0..rng.below(4))
                .map(|_| words[rng.below(words.len())])
                .collect::<Vec<_>>()
                .join(" "),
            _ => (0..4 + rng.below(4))
                .map(|_| fields[rng.below(fields.len())])
                .collect::<Vec<_>>()
                .join(" "),
        };
        let tz = [UTC, New_York, Lord_Howe][rng.below(3)];
        match Schedule::parse(&expr, tz) {
            Ok(s) => {
                parsed += 1;
                let t = s.next_after(now).expect("parse guarantees a future tick");
                assert!(t > now, "{expr:?}");
                assert!(s.next_after(t).is_none_or(|u| u > t), "{expr:?}");
            }
            Err(e) => {
                assert!(!e.0.is_empty());
                for leak in [
                    "Component error",
                    "CronScheduler",
                    "CronPattern",
                    "Pattern must",
                ] {
                    assert!(!e.0.contains(leak), "{expr:?}: {e}");
                }
            }
        }
    }
    assert!(parsed > 50, "only {parsed} random expressions parsed");
}

#[test]
fn santiago_midnight_gap() {
    // Chile springs forward at 24:00: 2026-09-06 00:00 -> 01:00 at 04:00Z,
    // so @daily runs at 01:00 that day.
    assert_eq!(
        ticks(
            "@daily",
            Santiago,
            "2026-09-04T12:00:00Z",
            "2026-09-07T12:00:00Z"
        ),
        [
            "2026-09-05T04:00:00Z",
            "2026-09-06T04:00:00Z",
            "2026-09-07T03:00:00Z"
        ]
    );
    let tick = sched("@daily", Santiago)
        .next_after(at("2026-09-05T12:00:00Z"))
        .unwrap();
    let local = tick.with_timezone(&Santiago);
    assert_eq!(
        (local.day(), local.format("%H:%M").to_string()),
        (6, "01:00".to_string())
    );
}

#[test]
fn a_schedule_is_described_in_words() {
    let described = |expr: &str| Schedule::parse(expr, UTC).unwrap().describe().to_string();
    assert_eq!(described("@every 90s"), "Every 1m 30s");
    let daily = described("30 2 * * *");
    assert!(daily.contains("02:30"), "{daily}");
    assert_eq!(described("@daily"), described("0 0 * * *"));
    let weekly = described("0 9 * * MON-FRI");
    assert!(
        weekly.contains("Monday") && weekly.contains("Friday"),
        "{weekly}"
    );
}

// ---- several schedules, active ranges --------------------------------

fn walk(s: &Schedule, from: &str, n: usize) -> Vec<String> {
    s.iter_after(at(from)).take(n).map(rfc).collect()
}

#[test]
fn several_schedules_fire_the_union_and_a_shared_instant_once() {
    let s = Schedule::any_of(vec![
        sched("*/2 * * * * *", UTC),
        sched("*/3 * * * * *", UTC),
    ]);
    let got: Vec<String> = walk(&s, "2027-01-01T00:00:00Z", 8);
    let want: Vec<String> = [2, 3, 4, 6, 8, 9, 10, 12]
        .iter()
        .map(|s| format!("2027-01-01T00:00:{s:02}Z"))
        .collect();
    assert_eq!(got, want);
    assert_eq!(s.as_str(), "*/2 * * * * * | */3 * * * * *");
    assert_eq!(s.expressions().count(), 2);
    // Weekdays at 9, weekends at noon, in the job's zone.
    let s = Schedule::any_of(vec![
        sched("0 9 * * 1-5", Berlin),
        sched("0 12 * * 6,0", Berlin),
    ]);
    assert_eq!(
        walk(&s, "2027-01-08T00:00:00Z", 4), // a Friday
        [
            "2027-01-08T08:00:00Z",
            "2027-01-09T11:00:00Z",
            "2027-01-10T11:00:00Z",
            "2027-01-11T08:00:00Z"
        ]
    );
    assert_ne!(s, sched("0 9 * * 1-5", Berlin));
}

#[test]
fn no_tick_falls_outside_the_active_range() {
    let range = Active {
        from: Some(at("2027-01-01T00:00:20Z")),
        until: Some(at("2027-01-01T00:00:50Z")),
    };
    let s = sched("@every 10s", UTC).within(range);
    // `from` is a tick itself; `until` is not.
    assert_eq!(
        walk(&s, "2027-01-01T00:00:00Z", 10),
        [
            "2027-01-01T00:00:20Z",
            "2027-01-01T00:00:30Z",
            "2027-01-01T00:00:40Z"
        ]
    );
    assert_eq!(s.next_after(at("2027-01-01T00:00:40Z")), None);
    assert_eq!(
        s.ended(at("2027-01-01T01:00:00Z")),
        Some(at("2027-01-01T00:00:40Z"))
    );
    assert_eq!(s.ended(at("2027-01-01T00:00:35Z")), None);
    assert_ne!(s, sched("@every 10s", UTC), "a new range is a new schedule");
    assert!(
        s.describe()
            .starts_with("Every 10s; from 2027-01-01 00:00 UTC until"),
        "{}",
        s.describe()
    );
    // Only a start, only an end.
    let from = sched("@hourly", UTC).within(Active {
        from: Some(at("2027-06-01T10:30:00Z")),
        until: None,
    });
    assert_eq!(
        next_of(&from, "2020-01-01T00:00:00Z"),
        "2027-06-01T11:00:00Z"
    );
    let until = sched("@hourly", UTC).within(Active {
        from: None,
        until: Some(at("2027-06-01T10:30:00Z")),
    });
    assert_eq!(
        next_of(&until, "2027-06-01T09:10:00Z"),
        "2027-06-01T10:00:00Z"
    );
    assert_eq!(until.next_after(at("2027-06-01T10:00:00Z")), None);
}

fn next_of(s: &Schedule, after: &str) -> String {
    rfc(s.next_after(at(after)).expect("a next tick"))
}
