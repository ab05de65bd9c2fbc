//! Property tests: config loading and schedule parsing never panic on
//! arbitrary input, and for cron expressions generated from a grammar of
//! valid 5- and 6-field crontab syntax (with `L` and `#` too),
//! `Schedule::next_after` agrees with an independent brute-force walker
//! written here, in UTC and in a few other zones without daylight saving
//! time (so cron(8)'s DST rules play no part).
//!
//! The runs are deterministic (fixed seed); a failing case is saved to
//! `proptest-regressions/properties.txt` and replayed first on later runs.

use std::collections::BTreeSet;
use std::path::Path;

use bgsched::config::load_str;
use bgsched::schedule::Schedule;
use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, Utc};
use chrono_tz::Tz;
use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, RngSeed};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(20_261_124),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/properties.txt",
        ))),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Config loading never panics

/// Pieces a config is made of, good and bad, so that random sequences of
/// them reach deep into the loader instead of stopping at the first byte.
const TOML_PIECES: &[&str] = &[
    "[jobs.a]\n",
    "[jobs.\"two words\"]\n",
    "[jobs.\"\"]\n",
    "[[jobs]]\n",
    "[[jobs.a]]\n",
    "[scheduler]\n",
    "[defaults]\n",
    "[cluster]\n",
    "[jobs.a.env]\n",
    "jobs.b.schedule = ",
    "schedule = ",
    "command = ",
    "shell = ",
    "timezone = ",
    "timeout = ",
    "catchup = ",
    "kill_grace = ",
    "overlap = ",
    "enabled = ",
    "working_dir = ",
    "env = ",
    "history = ",
    "state_dir = ",
    "shutdown_grace = ",
    "etcd = ",
    "prefix = ",
    "lease_ttl = ",
    "ca_file = ",
    "cert_file = ",
    "key_file = ",
    "user = ",
    "password_env = ",
    "password_file = ",
    "password = ",
    "\"@daily\"",
    "\"61 * * * *\"",
    "\"*/5 * * * * *\"",
    "\"0 0 30 2 *\"",
    "\"@every 90s\"",
    "\"@every 0s\"",
    "\"Europe/Berlin\"",
    "\"Mars/Olympus\"",
    "\"30s\"",
    "\"1000years\"",
    "\"none\"",
    "\"skip\"",
    "[\"true\"]",
    "[]",
    "[\"\"]",
    "[\"http://127.0.0.1:2379\"]",
    "[\"https://[::1]:2379\", \"http://x\"]",
    "\"/bgsched\"",
    "\"BGSCHED_PROPERTIES_UNSET\"",
    "\"/nonexistent/file\"",
    "{ A = \"1\" }",
    "{ \"A=B\" = 1 }",
    "-1",
    "0",
    "100000",
    "99999999999999999999",
    "1e400",
    "nan",
    "true",
    "1979-05-27T07:32:00Z",
    "\"\\u0000\"",
    "\"\\q\"",
    "'literal'",
    "\"\"\"multi\nline\"\"\"",
    "\n",
    "\r\n",
    "\r",
    " ",
    "\t",
    "=",
    "[",
    "]",
    "{",
    "}",
    ",",
    ".",
    "\"",
    "#",
    "\u{feff}",
    "é",
    "\u{1b}[31m",
];

fn tomlish_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        8 => prop::sample::select(TOML_PIECES).prop_map(str::to_string),
        1 => "[a-z_]{1,12}",
        1 => "\\PC{0,12}",
    ];
    prop::collection::vec(piece, 0..80).prop_map(|pieces| pieces.concat())
}

fn tomlish_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..1024),
        prop::collection::vec(
            prop::sample::select(
                b"[]{}=\"'\n\r\t .,#@*-0123456789abcjobs\\\xff\xfe\xc3\xa9\x00".to_vec()
            ),
            0..1024
        ),
        // Valid text with one byte broken somewhere.
        (tomlish_text(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(text, at, byte)| {
            let mut bytes = text.into_bytes();
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            bytes
        }),
    ]
}

/// Whatever happens, the result is a config or a list of one-line errors
/// for this file, in file order.
fn check_load(bytes: &[u8]) -> Result<(), TestCaseError> {
    let path = Path::new("/nonexistent/bgsched-properties/jobs.toml");
    if let Err(errors) = load_str(path, bytes) {
        prop_assert!(!errors.0.is_empty(), "Err without any error");
        let mut last_line = 0;
        for e in &errors.0 {
            prop_assert_eq!(&e.file, "/nonexistent/bgsched-properties/jobs.toml");
            prop_assert!(!e.message.is_empty(), "empty message: {:?}", e);
            let shown = e.to_string();
            prop_assert!(
                !shown.contains('\n') && !shown.contains('\r'),
                "an error must be one line: {:?}",
                shown
            );
            prop_assert!(e.line >= last_line, "errors out of file order: {}", errors);
            prop_assert!(e.line == 0 || e.column >= 1, "column 0 on a line: {:?}", e);
            last_line = e.line;
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn loading_tomlish_text_never_panics(text in tomlish_text()) {
        check_load(text.as_bytes())?;
    }

    #[test]
    fn loading_random_bytes_never_panics(bytes in tomlish_bytes()) {
        check_load(&bytes)?;
    }
}

// ---------------------------------------------------------------------------
// Schedule parsing never panics

const CRON_TOKENS: &[&str] = &[
    "*",
    "*/",
    "/",
    "-",
    ",",
    " ",
    "  ",
    "\t",
    "?",
    "L",
    "W",
    "LW",
    "#",
    "0",
    "1",
    "5",
    "7",
    "12",
    "23",
    "29",
    "30",
    "31",
    "59",
    "60",
    "99",
    "4294967296",
    "99999999999999999999",
    "MON",
    "sun",
    "JAN",
    "dec",
    "FRI-MON",
    "@",
    "@every",
    "@daily",
    "@hourly",
    "@yearly",
    "s",
    "ms",
    "1h",
    "90",
    "years",
    "-5",
    "1970",
    "4999",
    "5000",
    "5001",
    "é",
    "\u{0}",
    "\u{1b}",
];

fn cronish() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::collection::vec(prop::sample::select(CRON_TOKENS), 0..24).prop_map(|t| t.concat()),
        1 => "[0-9*/,LW#? -]{0,30}",
        1 => "[0-9A-Za-z*/,#?@ -]{0,30}",
    ]
}

fn zone() -> impl Strategy<Value = Tz> {
    prop::sample::select(vec![
        Tz::UTC,
        chrono_tz::America::New_York,
        chrono_tz::Europe::Berlin,
        chrono_tz::Australia::Lord_Howe,
        chrono_tz::America::Santiago,
        chrono_tz::Asia::Kolkata,
    ])
}

/// Any instant chrono can represent, most of them in a plausible range.
fn instant() -> impl Strategy<Value = DateTime<Utc>> {
    let min = DateTime::<Utc>::MIN_UTC.timestamp();
    let max = DateTime::<Utc>::MAX_UTC.timestamp();
    prop_oneof![
        4 => (0i64..8_000_000_000, 0u32..1_000_000_000),
        1 => (min..=max, 0u32..1_000_000_000),
    ]
    .prop_map(|(secs, nanos)| DateTime::from_timestamp(secs, nanos).expect("in range"))
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn parsing_cronish_strings_never_panics(expr in cronish(), tz in zone(), after in instant()) {
        if let Ok(schedule) = Schedule::parse(&expr, tz) {
            let mut last = after;
            for tick in schedule.iter_after(after).take(3) {
                prop_assert!(tick > last, "{:?}: {} after {}", expr, tick, last);
                last = tick;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// next_after agrees with a brute-force walker

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Second,
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

impl Field {
    fn range(self) -> (u32, u32) {
        match self {
            Field::Second | Field::Minute => (0, 59),
            Field::Hour => (0, 23),
            Field::DayOfMonth => (1, 31),
            Field::Month => (1, 12),
            Field::DayOfWeek => (0, 7),
        }
    }
}

/// One comma-separated item of a field, before rendering.
#[derive(Debug, Clone)]
enum Item {
    Value(u32),
    Range(u32, u32),
    /// `*/n`
    Step(u32),
    /// `a-b/n`
    RangeStep(u32, u32, u32),
    /// `*` inside a list, like `1,*`
    Star,
    /// Day-of-month `L`: the last day of the month.
    Last,
    /// Day-of-week `5L`: the last Friday of the month.
    LastOf(u32),
    /// Day-of-week `5#2`: the second Friday of the month.
    Nth(u32, u32),
}

/// What `L` and `#` items match, besides plain values.
#[derive(Debug, Clone, Copy)]
enum Special {
    LastDay,
    LastWeekday(u32),
    NthWeekday(u32, u32),
}

/// A generated field: its text and the values it matches (day-of-week 7
/// already folded onto 0).
#[derive(Debug, Clone)]
struct FieldSpec {
    text: String,
    values: BTreeSet<u32>,
    specials: Vec<Special>,
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

fn name_of(field: Field, value: u32, range_end: bool, lower: bool) -> Option<String> {
    let name = match field {
        Field::Month => MONTHS[value as usize - 1],
        // As the end of a range that starts after Sunday `SUN` means 7, so
        // that MON-SUN is not backwards; ending a range that starts on
        // Sunday it means 0 (`SUN-SUN` is Sundays only), and 0-7 is written
        // with numbers (see `render`).
        Field::DayOfWeek if value == 7 && !range_end => return None,
        Field::DayOfWeek if value == 7 || (value == 0 && range_end) => "SUN",
        Field::DayOfWeek => WEEKDAYS[value as usize],
        _ => return None,
    };
    Some(if lower {
        name.to_ascii_lowercase()
    } else {
        name.to_string()
    })
}

fn item(field: Field, sparse: bool) -> BoxedStrategy<Item> {
    let (lo, hi) = field.range();
    // Small days of the month keep most schedules firing every month.
    let value = move || {
        if field == Field::DayOfMonth {
            prop_oneof![4 => 1u32..=28, 1 => 29u32..=31].boxed()
        } else {
            (lo..=hi).boxed()
        }
    };
    let pair = move || (value(), value()).prop_map(|(a, b)| if a <= b { (a, b) } else { (b, a) });
    let mut choices: Vec<(u32, BoxedStrategy<Item>)> = if sparse {
        // Few values, so that 50 ticks span months or years.
        vec![
            (8, value().prop_map(Item::Value).boxed()),
            (
                2,
                pair()
                    .prop_map(|(a, b)| Item::Range(a, b.min(a + 2)))
                    .boxed(),
            ),
        ]
    } else {
        vec![
            (8, value().prop_map(Item::Value).boxed()),
            (3, pair().prop_map(|(a, b)| Item::Range(a, b)).boxed()),
            (3, (1..=hi).prop_map(Item::Step).boxed()),
            (
                2,
                (pair(), 1..=hi)
                    .prop_map(|((a, b), n)| Item::RangeStep(a, b, n))
                    .boxed(),
            ),
            (1, Just(Item::Star).boxed()),
        ]
    };
    match field {
        Field::DayOfMonth => choices.push((1, Just(Item::Last).boxed())),
        Field::DayOfWeek => {
            choices.push((1, (0..=7u32).prop_map(Item::LastOf).boxed()));
            choices.push((
                1,
                (0..=7u32, 1..=5u32)
                    .prop_map(|(d, k)| Item::Nth(d, k))
                    .boxed(),
            ));
        }
        _ => {}
    }
    proptest::strategy::Union::new_weighted(choices).boxed()
}

fn render(field: Field, item: &Item, names: bool, lower: bool) -> String {
    let show = |v: u32, end: bool| {
        names
            .then(|| name_of(field, v, end, lower))
            .flatten()
            .unwrap_or_else(|| v.to_string())
    };
    // `SUN-SUN` is Sunday only (see `sun_to_sun_is_sundays_only`), so a
    // range from Sunday to Sunday a week later ends in a 7.
    let end = |a: u32, b: u32| {
        if field == Field::DayOfWeek && a == 0 && b == 7 {
            b.to_string()
        } else {
            show(b, true)
        }
    };
    match item {
        Item::Value(v) => show(*v, false),
        Item::Range(a, b) => format!("{}-{}", show(*a, false), end(*a, *b)),
        Item::Step(n) => format!("*/{n}"),
        Item::RangeStep(a, b, n) => format!("{}-{}/{n}", show(*a, false), end(*a, *b)),
        Item::Star => "*".to_string(),
        Item::Last => "L".to_string(),
        Item::LastOf(d) => format!("{d}L"),
        Item::Nth(d, k) => format!("{}#{k}", show(*d, false)),
    }
}

fn values(field: Field, item: &Item) -> Vec<u32> {
    let (lo, hi) = field.range();
    let stepped = |a: u32, b: u32, n: u32| (a..=b).step_by(n as usize).collect();
    match item {
        Item::Value(v) => vec![*v],
        Item::Range(a, b) => (*a..=*b).collect(),
        Item::Step(n) => stepped(lo, hi, *n),
        Item::RangeStep(a, b, n) => stepped(*a, *b, *n),
        Item::Star => (lo..=hi).collect(),
        Item::Last | Item::LastOf(_) | Item::Nth(..) => vec![],
    }
}

fn special(item: &Item) -> Option<Special> {
    match item {
        Item::Last => Some(Special::LastDay),
        Item::LastOf(d) => Some(Special::LastWeekday(d % 7)),
        Item::Nth(d, k) => Some(Special::NthWeekday(d % 7, *k)),
        _ => None,
    }
}

fn field(field: Field, sparse: bool) -> BoxedStrategy<FieldSpec> {
    let (lo, hi) = field.range();
    let day = matches!(field, Field::DayOfMonth | Field::DayOfWeek);
    let fold = move |v: u32| {
        if field == Field::DayOfWeek {
            v % 7
        } else {
            v
        }
    };
    let star = prop_oneof![
        4 => Just("*".to_string()),
        1 => Just(if day { "?" } else { "*" }.to_string()),
    ]
    .prop_map(move |text| FieldSpec {
        text,
        values: (lo..=hi).map(fold).collect(),
        specials: vec![],
    });
    let list = (
        prop::collection::vec(item(field, sparse), 1..=if sparse { 2 } else { 3 }),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(move |(items, names, lower)| FieldSpec {
            text: items
                .iter()
                .map(|i| render(field, i, names, lower))
                .collect::<Vec<_>>()
                .join(","),
            values: items
                .iter()
                .flat_map(|i| values(field, i))
                .map(fold)
                .collect(),
            specials: items.iter().filter_map(special).collect(),
        });
    match (sparse, field) {
        (true, Field::DayOfWeek) => prop_oneof![3 => star, 1 => list].boxed(),
        (true, _) => list.boxed(),
        (false, _) => prop_oneof![1 => star, 2 => list].boxed(),
    }
}

/// A generated expression with the sets it should match.
#[derive(Debug, Clone)]
struct Cron {
    text: String,
    seconds: Option<FieldSpec>,
    minute: FieldSpec,
    hour: FieldSpec,
    dom: FieldSpec,
    month: FieldSpec,
    dow: FieldSpec,
}

/// Mostly dense expressions (many ticks a day), some sparse ones (a few a
/// year), 5 or 6 fields.
fn cron() -> impl Strategy<Value = Cron> {
    prop_oneof![3 => Just(false), 1 => Just(true)]
        .prop_flat_map(|sparse| {
            (
                prop::option::weighted(0.3, field(Field::Second, sparse)),
                field(Field::Minute, sparse),
                field(Field::Hour, sparse),
                field(Field::DayOfMonth, sparse),
                field(Field::Month, sparse),
                field(Field::DayOfWeek, sparse),
            )
        })
        .prop_map(|(seconds, minute, hour, dom, month, dow)| {
            let text = seconds
                .iter()
                .chain([&minute, &hour, &dom, &month, &dow])
                .map(|f| f.text.as_str())
                .collect::<Vec<_>>()
                .join(" ");
            Cron {
                text,
                seconds,
                minute,
                hour,
                dom,
                month,
                dow,
            }
        })
}

impl Cron {
    /// crontab(5): a day field is unrestricted when it starts with `*`
    /// (`?` is the same as `*`); when either is, a day must match both,
    /// otherwise either.
    fn day_matches(&self, day: NaiveDate) -> bool {
        let unrestricted = |f: &FieldSpec| f.text.starts_with('*') || f.text == "?";
        let weekday = day.weekday().num_days_from_sunday();
        let month_days = days_in_month(day);
        let special = |f: &FieldSpec| {
            f.specials.iter().any(|s| match *s {
                Special::LastDay => day.day() == month_days,
                Special::LastWeekday(d) => weekday == d && day.day() + 7 > month_days,
                Special::NthWeekday(d, k) => weekday == d && (day.day() - 1) / 7 + 1 == k,
            })
        };
        let dom = self.dom.values.contains(&day.day()) || special(&self.dom);
        let dow = self.dow.values.contains(&weekday) || special(&self.dow);
        self.month.values.contains(&day.month())
            && if unrestricted(&self.dom) || unrestricted(&self.dow) {
                dom && dow
            } else {
                dom || dow
            }
    }

    /// Every matching instant in `(after, until)`, at most `max`, found by
    /// walking day by day and, on matching days, through every minute of
    /// every matching hour (and every second of a matching minute).
    ///
    /// The zone has the fixed UTC offset `offset` (seconds east): its wall
    /// times are walked, each mapped to the one instant it names.
    fn brute_force(
        &self,
        offset: i64,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        max: usize,
    ) -> Vec<DateTime<Utc>> {
        let offset = TimeDelta::seconds(offset);
        let mut found = Vec::new();
        let seconds: Vec<u32> = match &self.seconds {
            Some(f) => (0..60).filter(|s| f.values.contains(s)).collect(),
            None => vec![0],
        };
        let mut day = (after + offset).date_naive();
        while day <= (until + offset).date_naive() {
            if self.day_matches(day) {
                for hour in (0..24).filter(|h| self.hour.values.contains(h)) {
                    for minute in 0..60 {
                        if !self.minute.values.contains(&minute) {
                            continue;
                        }
                        for &second in &seconds {
                            let wall = day.and_hms_opt(hour, minute, second).unwrap();
                            let t = wall.and_utc() - offset;
                            if t > after && t < until {
                                found.push(t);
                                if found.len() == max {
                                    return found;
                                }
                            }
                        }
                    }
                }
            }
            day = day.succ_opt().unwrap();
        }
        found
    }
}

/// Zones without daylight saving time (since 1987), where a wall time
/// names exactly one instant: (zone, its UTC offset in seconds).
const FIXED_ZONES: &[(Tz, i64)] = &[
    (Tz::UTC, 0),
    (Tz::UTC, 0),
    (chrono_tz::Asia::Kolkata, 19_800),
    (chrono_tz::Asia::Kathmandu, 20_700),
    (chrono_tz::Etc::GMTPlus5, -18_000),
];
const FIXED_SINCE: i64 = 567_993_600; // 1988-01-01T00:00:00Z

fn days_in_month(day: NaiveDate) -> u32 {
    let first = day.with_day(1).unwrap();
    let next = first.checked_add_months(chrono::Months::new(1)).unwrap();
    (next - first).num_days() as u32
}

/// Long enough for Feb 29 and for a fifth weekday in any month.
const WINDOW: TimeDelta = TimeDelta::days(8 * 366);
const CHAIN: usize = 50;

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn next_after_agrees_with_a_brute_force_walk(
        cron in cron(),
        (tz, offset) in prop::sample::select(FIXED_ZONES),
        secs in 0i64..7_000_000_000,
        nanos in prop_oneof![3 => Just(0u32), 1 => 0u32..1_000_000_000],
    ) {
        let secs = if offset == 0 { secs } else { secs.max(FIXED_SINCE) };
        let after = DateTime::from_timestamp(secs, nanos).unwrap();
        let until = after + WINDOW;
        let expected = cron.brute_force(offset, after, until, CHAIN);
        let schedule = match Schedule::parse(&cron.text, tz) {
            Ok(schedule) => schedule,
            Err(e) => {
                // The grammar only makes valid syntax, so the only reason
                // to refuse one is that no date can ever match.
                prop_assert!(
                    e.0.starts_with("never fires"),
                    "{:?} refused: {}",
                    cron.text,
                    e
                );
                prop_assert!(
                    expected.is_empty(),
                    "{:?} refused as never firing, but it matches {:?}",
                    cron.text,
                    expected
                );
                return Ok(());
            }
        };

        let mut chain = Vec::with_capacity(CHAIN);
        let mut last = after;
        for _ in 0..CHAIN {
            let Some(tick) = schedule.next_after(last) else { break };
            prop_assert!(
                tick > last,
                "{:?}: next_after({}) = {} is not later",
                cron.text,
                last,
                tick
            );
            chain.push(tick);
            last = tick;
        }
        let in_window: Vec<_> = chain.iter().copied().filter(|t| *t < until).collect();
        prop_assert_eq!(
            &in_window,
            &expected,
            "{:?} in {} after {}: next_after chain vs brute force",
            cron.text,
            tz,
            after
        );
        // Just before a tick, that tick is next.
        for tick in expected.iter().take(3) {
            let just_before = *tick - TimeDelta::nanoseconds(1);
            prop_assert_eq!(schedule.next_after(just_before), Some(*tick));
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Any valid expression, any zone, any instant chrono can represent
    /// (croner gives up past the year 5000): no panic, and a tick is later.
    #[test]
    fn next_after_never_panics_at_any_instant(
        cron in cron(),
        every in 1u64..100_000_000,
        tz in zone(),
        after in instant(),
    ) {
        let every = format!("@every {every}s");
        for expr in [cron.text.as_str(), every.as_str()] {
            if let Ok(schedule) = Schedule::parse(expr, tz) {
                if let Some(tick) = schedule.next_after(after) {
                    prop_assert!(tick > after, "{:?}: {} after {}", expr, tick, after);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Bugs found by the properties above and by probing; see the report.

#[test]
fn sun_to_sun_is_sundays_only() {
    let after = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    for expr in ["0 0 * * SUN-SUN", "0 0 * * 0-SUN", "0 0 * * SUN-SUN/3"] {
        let schedule = Schedule::parse(expr, Tz::UTC).unwrap();
        for tick in schedule.iter_after(after).take(5) {
            assert_eq!(
                tick.weekday(),
                chrono::Weekday::Sun,
                "{expr} fired on {tick}"
            );
        }
    }
}

/// croner searches no further than the start of 5000, so the year field
/// stops at 4999 and every date up to its end can fire.
#[test]
fn every_date_of_the_last_accepted_year_can_fire() {
    for expr in [
        "0 0 0 1 1 * 5000",
        "0 0 0 31 12 * 5000",
        "0 0 0 1 1 * 4000-5000/2",
    ] {
        let e = Schedule::parse(expr, Tz::UTC).expect_err(expr).to_string();
        assert_eq!(e, "year 5000 out of range 1970-4999", "{expr}");
    }
    for (expr, first) in [
        ("0 0 0 2 1 * 4999", "4999-01-02T00:00:00Z"),
        ("0 0 0 31 12 * 4999", "4999-12-31T00:00:00Z"),
        ("59 59 23 31 12 * 4999", "4999-12-31T23:59:59Z"),
    ] {
        let schedule =
            Schedule::parse(expr, Tz::UTC).unwrap_or_else(|e| panic!("{expr} refused: {e}"));
        assert_eq!(
            schedule.next_after(Utc::now()).map(|t| t.to_rfc3339()),
            Some(
                DateTime::parse_from_rfc3339(first)
                    .unwrap()
                    .with_timezone(&Utc)
                    .to_rfc3339()
            ),
            "{expr}"
        );
    }
}
