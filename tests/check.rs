//! `bgsched check`: every kind of bad config gets its own located message
//! and exit code 78, and no input makes it panic.

mod common;

use common::*;

/// (what, config text, expected error line without the file name prefix)
const BAD: &[(&str, &str, &str)] = &[
    (
        "toml syntax",
        "[jobs.a]\nschedule = \"@daily\"\ncommand = [\"true\"\n",
        ":3:",
    ),
    (
        "wrong type",
        "[jobs.a]\nschedule = 5\ncommand = [\"true\"]\n",
        ":2:12: job \"a\": schedule must be a string (or an array of strings for several schedules), found integer",
    ),
    (
        "unknown key with hint",
        "[jobs.a]\nschedul = \"@daily\"\ncommand = [\"true\"]\n",
        ":2:1: job \"a\": unknown key `schedul`; did you mean `schedule`?",
    ),
    (
        "bad cron",
        "[jobs.backup]\nschedule = \"61 * * * *\"\ncommand = [\"true\"]\n",
        ":2:12: job \"backup\": invalid schedule \"61 * * * *\": minute 61 out of range 0-59",
    ),
    (
        "bad time zone",
        "[jobs.a]\nschedule = \"@daily\"\ntimezone = \"Europe/Berln\"\ncommand = [\"true\"]\n",
        ":3:12: job \"a\": unknown time zone \"Europe/Berln\"; did you mean \"Europe/Berlin\"?",
    ),
    (
        "bad duration",
        "[jobs.a]\nschedule = \"@daily\"\ntimeout = \"5 minuts\"\ncommand = [\"true\"]\n",
        ":3:11: job \"a\": invalid duration \"5 minuts\" for timeout",
    ),
    (
        "empty command",
        "[jobs.a]\nschedule = \"@daily\"\ncommand = []\n",
        ":3:11: job \"a\": command must not be empty",
    ),
    (
        "empty shell",
        "[jobs.a]\nschedule = \"@daily\"\nshell = \"\"\n",
        ":3:9: job \"a\": shell must not be empty",
    ),
    (
        "both command and shell",
        "[jobs.a]\nschedule = \"@daily\"\ncommand = [\"true\"]\nshell = \"true\"\n",
        ":4:1: job \"a\": both command and shell are set",
    ),
    (
        "bad job name",
        "[jobs.\"no spaces\"]\nschedule = \"@daily\"\ncommand = [\"true\"]\n",
        ":1:7: job \"no spaces\": invalid job name: only ASCII letters, digits, '.', '_' and '-' are allowed, found ' '",
    ),
    (
        "missing schedule",
        "[jobs.a]\ncommand = [\"true\"]\n",
        ":1:7: job \"a\": missing schedule",
    ),
    (
        "bad overlap",
        "[jobs.a]\nschedule = \"@daily\"\noverlap = \"never\"\ncommand = [\"true\"]\n",
        ":3:11: job \"a\": overlap must be \"skip\", \"allow\", \"queue\" or \"replace\", found \"never\"",
    ),
    (
        "wrong field count",
        "[jobs.a]\nschedule = \"* * *\"\ncommand = [\"true\"]\n",
        ":2:12: job \"a\": invalid schedule \"* * *\": expected 5 fields",
    ),
    (
        "bad @every",
        "[jobs.a]\nschedule = \"@every 500ms\"\ncommand = [\"true\"]\n",
        ":2:12: job \"a\": invalid schedule \"@every 500ms\"",
    ),
    (
        "unknown key in defaults",
        "[defaults]\ntimzone = \"UTC\"\n",
        ":2:1: unknown key `timzone` in [defaults]; did you mean `timezone`?",
    ),
    (
        "job is not a table",
        "[jobs]\na = 1\n",
        ":2:5: job \"a\": each job must be a table like [jobs.a], found integer",
    ),
    (
        "zero timeout",
        "[jobs.a]\nschedule = \"@daily\"\ntimeout = \"0s\"\ncommand = [\"true\"]\n",
        ":3:11: job \"a\": timeout must be greater than zero",
    ),
    (
        "bad run_on",
        "[jobs.a]\nschedule = \"@daily\"\nrun_on = \"anywhere\"\ncommand = [\"true\"]\n",
        ":3:10: job \"a\": run_on must be \"leader\", \"any\" or a table like { labels = { zone = \"a\" } }, found \"anywhere\"",
    ),
    (
        "bad env name",
        "[jobs.a]\nschedule = \"@daily\"\nenv = { \"A=B\" = \"x\" }\ncommand = [\"true\"]\n",
        "job \"a\": env variable name \"A=B\" must not contain '='",
    ),
];

fn check(env: &Env) -> Out {
    let out = env.cmd(&["check"]).run();
    assert!(!out.stderr.contains("panicked"), "panic: {}", out.stderr);
    out
}

#[test]
fn each_kind_of_bad_config_gets_a_located_message_and_exit_78() {
    let mut kinds = 0;
    for (what, text, expected) in BAD {
        let env = Env::new().config(text);
        let out = check(&env);
        assert_eq!(
            out.code,
            Some(78),
            "{what}: exit code; stderr:\n{}",
            out.stderr
        );
        let file = env.path("jobs.toml").display().to_string();
        let located = out
            .stderr
            .lines()
            .any(|l| l.starts_with(&file) && l.contains(expected));
        assert!(
            located,
            "{what}: expected a line `{file}...{expected}`, got:\n{}",
            out.stderr
        );
        kinds += 1;
    }
    assert!(kinds >= 12);
}

#[test]
fn all_errors_are_reported_at_once_in_file_order() {
    Test::new()
        .config(
            "[jobs.one]\nschedule = \"61 * * * *\"\ncommand = [\"true\"]\n\n[jobs.two]\nschedule = \"@daily\"\ntimezone = \"Mars/Olympus\"\nshell = \"\"\n",
        )
        .args(&["check"])
        .status(78)
        .stderr(concat!(
            "{dir}/jobs.toml:2:12: job \"one\": invalid schedule \"61 * * * *\": minute 61 out of range 0-59\n",
            "{dir}/jobs.toml:7:12: job \"two\": unknown time zone \"Mars/Olympus\" (use an IANA name such as \"Europe/Berlin\" or \"UTC\")\n",
            "{dir}/jobs.toml:8:9: job \"two\": shell must not be empty; give a command line such as \"pg_dump shop | gzip > /backups/shop.gz\"\n",
            "bgsched: 3 errors in the config\n",
        ))
        .run();
}

#[test]
fn non_utf8_and_garbage_input_never_panics() {
    let env = Env::new();
    std::fs::write(
        env.path("jobs.toml"),
        b"[jobs.a]\nschedule = \"@daily\xff\xfe\"\n",
    )
    .unwrap();
    let out = check(&env).code(78);
    assert!(
        out.stderr.contains(":2:19: file is not valid UTF-8"),
        "{}",
        out.stderr
    );

    let mut seed: u64 = 0x9e3779b97f4a7c15;
    for _ in 0..40 {
        let bytes: Vec<u8> = (0..200)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                b"[]{}=\"'\n .,#@*0123456789abcjobs\xff"[(seed % 32) as usize]
            })
            .collect();
        std::fs::write(env.path("jobs.toml"), &bytes).unwrap();
        let out = check(&env);
        assert!(
            matches!(out.code, Some(0) | Some(78)),
            "exit {:?}: {}",
            out.code,
            out.stderr
        );
    }
    let deep = format!("a = {}{}", "[".repeat(20_000), "]".repeat(20_000));
    std::fs::write(env.path("jobs.toml"), deep).unwrap();
    check(&env).code(78);
}

#[test]
fn a_missing_config_file_is_a_config_error() {
    Test::new()
        .args(&["check"])
        .status(78)
        .stderr(concat!(
            "{dir}/jobs.toml: cannot read config file: No such file or directory (os error 2)\n",
            "bgsched: 1 error in the config\n",
        ))
        .run();
}

#[test]
fn check_prints_each_job_with_its_next_fire() {
    let env = Env::new().config(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/jobs.toml.example"))
            .unwrap(),
    );
    let out = check(&env).success();
    for job in [
        "heartbeat",
        "slow-sync",
        "nightly-cleanup",
        "monthly-report",
        "extract",
        "load",
        "vacuum",
    ] {
        assert!(out.stdout.contains(job), "{}", out.stdout);
    }
    assert!(out.stdout.contains("after extract"), "{}", out.stdout);
    assert!(out.stdout.contains("Europe/Berlin"));
    assert!(out.stdout.contains("disabled"));
}

#[test]
fn run_list_and_trigger_refuse_a_bad_config_with_78() {
    for args in [&["run"][..], &["list"], &["trigger", "a"], &["next", "a"]] {
        Test::new()
            .config("[jobs.a]\nschedule = \"@daily\"\n")
            .args(args)
            .status(78)
            .stderr(concat!(
                "{dir}/jobs.toml:1:7: job \"a\": missing command; add command = [\"/path/to/program\", \"arg\"] or shell = \"a shell command line\"\n",
                "bgsched: 1 error in the config\n",
            ))
            .run();
    }
}

/// README "Concurrency groups": a group no job or only one job names is
/// harmless, so `check` warns about it and accepts the file.
#[test]
fn a_group_with_one_job_or_none_is_a_warning() {
    let env = Env::new().config(
        "[groups.db]\nlimit = 1\n\n[groups.spare]\nlimit = 2\n\n\
         [jobs.load]\nschedule = \"@daily\"\ngroup = \"db\"\ncommand = [\"true\"]\n",
    );
    let out = env.cmd(&["check"]).run().success();
    assert_eq!(
        out.stderr,
        "bgsched: warning: group \"db\" has one job (\"load\"); it limits only that job's own runs\n\
         bgsched: warning: group \"spare\" has no jobs\n"
    );
}

/// README "Configuration reference": a bad `run_on` is a config error,
/// located at its value and naming the job, like every other key's.
#[test]
fn a_bad_run_on_label_is_located_and_names_the_job() {
    Test::new()
        .config("[jobs.a]\nschedule = \"@daily\"\ncommand = [\"true\"]\nrun_on = { labels = { zone = \"eu west\" } }\n")
        .args(&["check"])
        .status(78)
        .stderr(concat!(
            "{dir}/jobs.toml:4:30: job \"a\": run_on.labels.zone: label value \"eu west\" may hold only ASCII letters, digits, '.', '_' and '-', found ' '\n",
            "bgsched: 1 error in the config\n",
        ))
        .run();
}

/// Standalone everything runs here, so `run_on` without `[cluster]` is
/// valid; `check` says where the job would run in a cluster.
#[test]
fn check_accepts_run_on_without_a_cluster_and_says_it() {
    let out = Test::new()
        .config("[member]\nlabels = { zone = \"a\" }\nmax_runs = 2\n\n\
                 [jobs.a]\nschedule = \"@daily\"\ncommand = [\"true\"]\nrun_on = { labels = { zone = \"a\", gpu = \"yes\" } }\n\n\
                 [jobs.b]\nschedule = \"@daily\"\ncommand = [\"true\"]\nrun_on = \"any\"\n\n\
                 [jobs.c]\nschedule = \"@daily\"\ncommand = [\"true\"]\n\n\
                 [jobs.svc]\nschedule = \"@continuous\"\ncommand = [\"true\"]\nrun_on = \"any\"\n")
        .args(&["check"])
        .stdout_has("ok, 4 job(s)")
        .run();
    let line = |job: &str| {
        out.stdout
            .lines()
            .find(|l| l.trim_start().starts_with(job))
            .unwrap_or_else(|| panic!("no line of {job}: {}", out.stdout))
            .to_string()
    };
    assert!(
        line("a ").ends_with("  run_on labels gpu=yes,zone=a"),
        "{}",
        out.stdout
    );
    assert!(line("b ").ends_with("  run_on any"), "{}", out.stdout);
    assert!(!line("c ").contains("run_on"), "{}", out.stdout);
    assert!(
        line("svc ").ends_with("  (run_on does not apply: a service runs on the leader)"),
        "{}",
        out.stdout
    );
}
