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
        &["jobs.toml:2:12: job \"backup\": schedule must be a string (or an array of strings for several schedules), found integer"],
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
            &["jobs.toml:1:1: unknown top-level key `title` (expected one of: scheduler, defaults, jobs, groups, cluster, http, notify, member)"],
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
                "jobs.toml:7:1: job \"backup\": unknown key `color` (expected one of: description, schedule, timezone, command, shell, working_dir, env, timeout, enabled, overlap, catchup, kill_grace, retries, retry_backoff, retry_backoff_max, jitter, on_failure, params, active_from, active_until, group, after, after_all, run_on)",
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
    assert!(errs[0].starts_with("jobs.toml:2:12: job \"a\": unknown time zone \"Mars/Olympus\""));
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
    let config = valid("[cluster]\netcd = [\"http://etcd-1:2379/\", \"http://10.0.0.6:2379\"]\n");
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
        errs[0].starts_with("jobs.toml:4:1: job \"backup\": unknown key `user` (expected one of:"),
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
        cluster_with(&format!(
            "user = \"bgsched\"\n{env}\npassword_file = \"{file}\""
        )),
        cluster_with(env),
        cluster_with(&format!(
            "password_file = \"{file}\"\nprefix = \"x\"\nlease_ttl = \"1s\""
        )),
        format!(
            "[cluster]\netcd = [\"x\"]\nuser = \"u\"\n{env}\n[jobs.a]\nschedule = \"61 * * * *\"\n"
        ),
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

#[test]
fn parameter_declarations_are_checked_where_they_are_written() {
    assert_errors(
        "[jobs.a]\nschedule = \"@daily\"\nshell = \"true\"\n[jobs.a.params]\n\"9x\" = {}\nx = { pattern = \"(\" }\ny = { default = \"b\", pattern = \"a\" }\nz = { requird = true }\nQ = 3\nq = {}\nr = { required = true, default = \"1\" }\n",
        &[
            "jobs.toml:5:1: job \"a\": parameter name \"9x\" must be letters, digits and '_', not starting with a digit (it becomes the variable BGSCHED_PARAM_NAME)",
            "jobs.toml:6:17: job \"a\": params.x.pattern \"(\" is not a valid regular expression: unclosed group",
            "jobs.toml:7:17: job \"a\": params.y.default \"b\" does not match its pattern \"a\"",
            "jobs.toml:8:7: job \"a\": unknown key `requird` in params.z; did you mean `required`?",
            "jobs.toml:9:5: job \"a\": params.Q must be a table like { required = true, pattern = \"^[0-9]+$\", default = \"1\" }, found integer",
            "jobs.toml:10:1: job \"a\": parameters \"Q\" and \"q\" would both be the variable BGSCHED_PARAM_Q",
            "jobs.toml:11:34: job \"a\": params.r has a default, so it is never missing; drop `required` or the default",
        ],
    );
    let config = load_str(
        Path::new("jobs.toml"),
        b"[jobs.a]\nschedule = \"@daily\"\nshell = \"true\"\nparams = { n = { pattern = \"[0-9]+\", default = \"7\" } }\n",
    )
    .unwrap();
    let job = &config.jobs["a"];
    let none = BTreeMap::new();
    assert_eq!(job.resolve_params(&none).unwrap()["n"], "7");
    let given = BTreeMap::from([("n".to_string(), "12".to_string())]);
    assert_eq!(job.resolve_params(&given).unwrap()["n"], "12");
    let partial = BTreeMap::from([("n".to_string(), "12a".to_string())]);
    assert!(job.resolve_params(&partial).is_err());
}

#[test]
fn webhooks_take_their_defaults_and_their_secret_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hook.secret"), "s3cret-key\n").unwrap();
    let path = dir.path().join("jobs.toml");
    let text = "[[notify.webhook]]\nurl = \"https://hooks.example.com/a\"\nsecret_file = \"hook.secret\"\n\n[[notify.webhook]]\nurl = \"http://127.0.0.1:9/b\"\nevents = [\"succeeded\", \"failed\"]\ntimeout = \"2s\"\nretries = 0\n";
    let config = load_str(&path, text.as_bytes()).unwrap();
    let [first, second] = config.notify.webhooks.as_slice() else {
        panic!("two webhooks: {:?}", config.notify);
    };
    assert_eq!(first.url, "https://hooks.example.com/a");
    assert_eq!(first.events, Event::defaults());
    assert!(!first.events.contains(&Event::Succeeded));
    assert_eq!(
        first.secret.as_ref().map(|s| s.expose()),
        Some("s3cret-key")
    );
    assert_eq!(
        (first.timeout, first.retries),
        (DEFAULT_WEBHOOK_TIMEOUT, DEFAULT_WEBHOOK_RETRIES)
    );
    assert_eq!(
        second.events,
        BTreeSet::from([Event::Succeeded, Event::Failed])
    );
    assert_eq!(
        (second.timeout, second.retries),
        (Duration::from_secs(2), 0)
    );
    assert!(second.secret.is_none());
    assert!(!format!("{config:?}").contains("s3cret-key"));
}

#[test]
fn webhook_mistakes_are_reported_where_they_are_written() {
    assert_errors(
        "[[notify.webhook]]\nevents = [\"failed\", \"recoverd\", 3]\nsecret = \"x\"\n\n[[notify.webhook]]\nurl = \"ftp://example.com/x\"\nevents = []\n\n[[notify.webhook]]\nurl = \"hooks.example.com\"\nsecret_file = \"/nonexistent/hook.secret\"\ntimeout = \"0s\"\n\n[notify]\n",
        &[
            "jobs.toml:1:1: missing url; add e.g. url = \"https://hooks.example.com/bgsched\"",
            "jobs.toml:2:21: \"recoverd\" is not an event; did you mean \"recovered\"? events are failed, recovered, succeeded, missed, lost",
            "jobs.toml:2:33: events[2] must be a string, found integer",
            "jobs.toml:3:1: unknown key `secret` in [[notify.webhook]]; keep the secret out of the config: set secret_file (a file holding it)",
            "jobs.toml:6:7: url has the scheme \"ftp\"; only http and https are sent to; write e.g. \"https://hooks.example.com/bgsched\"",
            "jobs.toml:7:10: events must not be empty; name some of: failed, recovered, succeeded, missed, lost",
            "jobs.toml:10:7: url is not a URL (relative URL without a base); write e.g. \"https://hooks.example.com/bgsched\"",
            "jobs.toml:11:15: secret_file \"/nonexistent/hook.secret\" cannot be read: No such file or directory (os error 2)",
            "jobs.toml:12:11: timeout must be greater than zero",
        ],
    );
}

#[test]
fn an_active_range_is_read_in_the_jobs_zone_and_a_closing_date_still_fires_that_day() {
    let config = valid(
        r#"
[jobs.campaign]
schedule = ["0 9 * * *", "0 18 * * *"]
timezone = "Europe/Berlin"
active_from = "2027-03-01T09:00:00"
active_until = 2027-03-31
command = ["/usr/bin/mail"]

[jobs.exact]
schedule = "@daily"
active_from = 2027-03-01T00:00:00-05:00
command = ["/usr/bin/mail"]
"#,
    );
    let at = |s: &str| s.parse::<chrono::DateTime<chrono::Utc>>().unwrap();
    let campaign = &config.jobs["campaign"].schedule;
    assert_eq!(campaign.expressions().count(), 2);
    // Summer time begins on the 28th: the day ends at 22:00 UTC.
    assert_eq!(
        campaign.active(),
        crate::schedule::Active {
            from: Some(at("2027-03-01T08:00:00Z")),
            until: Some(at("2027-03-31T22:00:00Z")),
        }
    );
    assert_eq!(
        campaign.next_after(at("2027-01-01T00:00:00Z")),
        Some(at("2027-03-01T08:00:00Z"))
    );
    assert_eq!(
        campaign.next_after(at("2027-03-31T07:00:00Z")),
        Some(at("2027-03-31T16:00:00Z"))
    );
    assert_eq!(campaign.next_after(at("2027-03-31T16:00:00Z")), None);
    assert_eq!(
        config.jobs["exact"].schedule.active().from,
        Some(at("2027-03-01T05:00:00Z"))
    );
}

#[test]
fn more_than_100_jobs_after_one_job_is_an_error_at_the_101st() {
    let mut text = String::from("[jobs.up]\nschedule = \"@hourly\"\ncommand = [\"true\"]\n");
    for i in 0..101 {
        text.push_str(&format!(
            "[jobs.d{i:03}]\nafter = [\"up\"]\ncommand = [\"true\"]\n"
        ));
    }
    let errors = load_str(std::path::Path::new("jobs.toml"), text.as_bytes())
        .expect_err("101 dependents")
        .0;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].job.as_deref(), Some("d100"));
    assert!(
        errors[0]
            .message
            .contains("more than 100 jobs run after \"up\""),
        "{errors:?}"
    );
}

// Placement: run_on and [member]

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn run_on_is_the_leader_unless_said_and_takes_each_form() {
    assert_eq!(valid(&job_with("")).jobs["backup"].run_on, RunOn::Leader);
    for (line, want) in [
        ("run_on = \"leader\"", RunOn::Leader),
        ("run_on = \"any\"", RunOn::Any),
        (
            "run_on = { labels = { zone = \"a\", gpu = \"true\" } }",
            RunOn::Labels(labels(&[("gpu", "true"), ("zone", "a")])),
        ),
        (
            "run_on.labels.rack = \"r-1.2_x\"",
            RunOn::Labels(labels(&[("rack", "r-1.2_x")])),
        ),
        (
            "[jobs.backup.run_on.labels]\nzone = \"b\"",
            RunOn::Labels(labels(&[("zone", "b")])),
        ),
    ] {
        // No [cluster]: standalone runs everything here, and accepts it.
        let config = valid(&job_with(line));
        assert!(config.cluster.is_none());
        assert_eq!(config.jobs["backup"].run_on, want, "{line}");
    }
}

#[test]
fn run_on_is_inherited_from_defaults_unless_the_job_says() {
    let src = "[defaults]\nrun_on = { labels = { zone = \"a\" } }\n\n\
               [jobs.one]\nschedule = \"@daily\"\ncommand = [\"true\"]\n\n\
               [jobs.two]\nschedule = \"@daily\"\ncommand = [\"true\"]\nrun_on = \"leader\"\n\n\
               [jobs.three]\nschedule = \"@daily\"\ncommand = [\"true\"]\nrun_on = \"any\"\n";
    let config = valid(src);
    assert_eq!(
        config.jobs["one"].run_on,
        RunOn::Labels(labels(&[("zone", "a")]))
    );
    assert_eq!(config.jobs["two"].run_on, RunOn::Leader);
    assert_eq!(config.jobs["three"].run_on, RunOn::Any);
    let config = valid(&format!("[defaults]\nrun_on = \"any\"\n{}", job_with("")));
    assert_eq!(config.jobs["backup"].run_on, RunOn::Any);
}

#[test]
fn bad_run_on_values_are_located_and_name_the_job() {
    let label_chars = "may hold only ASCII letters, digits, '.', '_' and '-', found";
    let cases: &[(&str, String)] = &[
        (
            "run_on = \"anyy\"",
            "4:10: job \"backup\": run_on must be \"leader\", \"any\" or a table like { labels = { zone = \"a\" } }, found \"anyy\"; did you mean \"any\"?".into(),
        ),
        (
            "run_on = \"Leader\"",
            "4:10: job \"backup\": run_on must be \"leader\", \"any\" or a table like { labels = { zone = \"a\" } }, found \"Leader\"; did you mean \"leader\"?".into(),
        ),
        (
            "run_on = \"somewhere\"",
            "4:10: job \"backup\": run_on must be \"leader\", \"any\" or a table like { labels = { zone = \"a\" } }, found \"somewhere\"".into(),
        ),
        (
            "run_on = [\"any\"]",
            "4:10: job \"backup\": run_on must be \"leader\", \"any\" or a table like { labels = { zone = \"a\" } }, found array".into(),
        ),
        (
            "run_on = {}",
            "4:10: job \"backup\": run_on needs labels, e.g. run_on = { labels = { zone = \"a\" } }".into(),
        ),
        (
            "run_on = { labels = { zone = \"a\" }, max = 1 }",
            "4:37: job \"backup\": unknown key `max` in run_on (its only key is labels: run_on = { labels = { zone = \"a\" } })".into(),
        ),
        (
            "run_on = { zone = \"a\" }",
            "4:12: job \"backup\": unknown key `zone` in run_on (its only key is labels: run_on = { labels = { zone = \"a\" } })".into(),
        ),
        (
            "run_on = { label = { zone = \"a\" } }",
            "4:12: job \"backup\": unknown key `label` in run_on; did you mean `labels`?".into(),
        ),
        (
            "run_on = { labels = {} }",
            "4:21: job \"backup\": run_on.labels must not be empty; name the labels a member needs, e.g. { zone = \"a\" } (or write run_on = \"any\")".into(),
        ),
        (
            "run_on = { labels = \"zone=a\" }",
            "4:21: job \"backup\": run_on.labels must be a table of strings like { zone = \"a\" }, found string".into(),
        ),
        (
            "run_on = { labels = { gpu = true } }",
            "4:29: job \"backup\": run_on.labels.gpu must be a string, found boolean (put the value in quotes)".into(),
        ),
        (
            "run_on = { labels = { \"my zone\" = \"a\" } }",
            format!("4:23: job \"backup\": run_on.labels: label name \"my zone\" {label_chars} ' '"),
        ),
        (
            "run_on = { labels = { zone = \"eu/west\" } }",
            format!("4:30: job \"backup\": run_on.labels.zone: label value \"eu/west\" {label_chars} '/'"),
        ),
        (
            "run_on = { labels = { zone = \"\" } }",
            "4:30: job \"backup\": run_on.labels.zone: label value \"\" must not be empty".into(),
        ),
        (
            "run_on = { labels = { \"\" = \"a\" } }",
            "4:23: job \"backup\": run_on.labels: label name \"\" must not be empty".into(),
        ),
        (
            "labels = { zone = \"a\" }",
            "4:1: job \"backup\": unknown key `labels`; to run the job on members with these labels write run_on = { labels = { ... } } (a replica's own labels belong in [member])".into(),
        ),
    ];
    for (line, expected) in cases {
        assert_errors(&job_with(line), &[&format!("jobs.toml:{expected}")]);
    }
    // In [defaults]: once, at its place, with no job named.
    assert_errors(
        &format!("[defaults]\nrun_on = \"everywhere\"\n{}", job_with("")),
        &["jobs.toml:2:10: run_on must be \"leader\", \"any\" or a table like { labels = { zone = \"a\" } }, found \"everywhere\""],
    );
    // Every problem of one table at once.
    assert_errors(
        &job_with("run_on = { labels = { \"a b\" = \"x\", c = \"d/e\", f = 1 }, zone = \"a\" }"),
        &[
            &format!("jobs.toml:4:23: job \"backup\": run_on.labels: label name \"a b\" {label_chars} ' '"),
            &format!("jobs.toml:4:40: job \"backup\": run_on.labels.c: label value \"d/e\" {label_chars} '/'"),
            "jobs.toml:4:51: job \"backup\": run_on.labels.f must be a string, found integer (put the value in quotes)",
            "jobs.toml:4:56: job \"backup\": unknown key `zone` in run_on (its only key is labels: run_on = { labels = { zone = \"a\" } })",
        ],
    );
}

#[test]
fn member_takes_labels_and_a_bound() {
    assert_eq!(valid("").member, MemberSettings::default());
    let config = valid("[member]\nlabels = { zone = \"a\", gpu = \"true\" }\nmax_runs = 4\n");
    assert_eq!(
        config.member,
        MemberSettings {
            labels: labels(&[("gpu", "true"), ("zone", "a")]),
            max_runs: Some(4),
        }
    );
    // No labels is no labels; no bound is no bound.
    let config = valid("[member]\nlabels = {}\n");
    assert_eq!(config.member, MemberSettings::default());
}

#[test]
fn member_mistakes_are_located() {
    let label_chars = "may hold only ASCII letters, digits, '.', '_' and '-', found";
    assert_errors(
        "[member]\nlabels = { zone = \"a b\", gpu = true }\nmax_runs = 0\nlable = \"x\"\n",
        &[
            &format!("jobs.toml:2:19: labels.zone: label value \"a b\" {label_chars} ' '"),
            "jobs.toml:2:32: labels.gpu must be a string, found boolean (put the value in quotes)",
            "jobs.toml:3:12: max_runs must be at least 1: with 0 no run could be placed on this member; leave it out for no bound",
            "jobs.toml:4:1: unknown key `lable` in [member]; did you mean `labels`?",
        ],
    );
    assert_errors(
        "[member]\nlabels = \"zone=a\"\nmax_runs = -2\n",
        &[
            "jobs.toml:2:10: labels must be a table of strings like { zone = \"a\" }, found string",
            "jobs.toml:3:12: max_runs must be between 1 and 10000 (placed runs at once on this member), found -2",
        ],
    );
    assert_errors(
        "[member]\nmax_runs = \"2\"\n",
        &["jobs.toml:2:12: max_runs must be an integer, found string"],
    );
    assert_errors(
        "[[member]]\n",
        &["jobs.toml:1:1: member must be a table, found array (write [member], not [[member]])"],
    );
    assert_errors(
        "max_runs = 2\n",
        &["jobs.toml:1:1: unknown top-level key `max_runs`; `max_runs` belongs in [member]"],
    );
    assert_errors(
        &job_with("max_runs = 2"),
        &["jobs.toml:4:1: job \"backup\": unknown key `max_runs`; `max_runs` belongs in [member]"],
    );
}
