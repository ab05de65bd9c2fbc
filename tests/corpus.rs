//! The bad-input corpus: `bgsched check` on every config in
//! `tests/bad-config/` exits 78 with located messages, never panics and is
//! not killed by a signal; plus generated inputs too big to commit (a 50 MB
//! file, deep nesting, very long values, thousands of errors).
//!
//! Each `name.toml` there has a `name.expected` beside it: one expected
//! substring per line (blank lines and lines starting with `#` are
//! comments), each of which must appear on its own stderr line, in order.
//! A substring that starts with `:` must follow the config's path at the very
//! start of its line (`:3:12: job "backup": ...`), so the location is checked
//! too; `{dir}` stands for the corpus directory and `{*}` for any text on
//! the line.

mod common;

use common::BIN;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/bad-config");
/// So that the corpus cannot silently shrink.
const MIN_CORPUS_FILES: usize = 40;
/// The corpus's `password_env` files name this variable and expect it unset.
const UNSET_PASSWORD_VAR: &str = "BGSCHED_CORPUS_UNSET_PASSWORD";
/// The password written into corpus files that must never be echoed.
const PASSWORD: &str = "hunter2";
/// One `check` of a small file takes milliseconds; this only catches hangs.
const DEADLINE: Duration = Duration::from_secs(60);

struct Checked {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Checked {
    /// The problems every invalid config must avoid, whatever its message.
    fn basic_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(signal) = self.status.signal() {
            problems.push(format!("killed by signal {signal}"));
        }
        if self.status.code() != Some(78) {
            problems.push(format!("exit status {:?}, expected 78", self.status));
        }
        if self.stderr.contains("panicked") || self.stderr.contains("RUST_BACKTRACE") {
            problems.push("panicked".to_string());
        }
        if self.stderr.contains(PASSWORD) || self.stdout.contains(PASSWORD) {
            problems.push(format!("the password {PASSWORD:?} was echoed"));
        }
        problems
    }
}

/// `bgsched check --config <config>` in a clean environment.
fn check(config: &Path) -> Checked {
    check_within(config, DEADLINE)
}

/// [`check`], failing the test if it takes longer than `deadline`.
fn check_within(config: &Path, deadline: Duration) -> Checked {
    let start = Instant::now();
    let mut child = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(config)
        .env_remove("BGSCHED_CONFIG")
        .env_remove("BGSCHED_STATE_DIR")
        .env_remove("BGSCHED_ETCD_ENDPOINTS")
        .env_remove("BGSCHED_INSTANCE_ID")
        .env_remove(UNSET_PASSWORD_VAR)
        .env("BGSCHED_LOG", "info")
        .env(
            "XDG_STATE_HOME",
            std::env::temp_dir().join("bgsched-corpus-state"),
        )
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bgsched check");
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = reader(Box::new(child.stdout.take().unwrap()));
    let stderr = reader(Box::new(child.stderr.take().unwrap()));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for bgsched") {
            break status;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "bgsched check --config {} took more than {deadline:?}",
                config.display()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Checked {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
        took: start.elapsed(),
    }
}

/// Checks that each expected substring is on a stderr line of its own, in
/// order. `file` is the path the lines are prefixed with.
fn find_in_order(stderr: &str, file: &str, expected: &[String]) -> Result<(), String> {
    let lines: Vec<&str> = stderr.lines().collect();
    let mut next = 0;
    for want in expected {
        let hit = lines[next..]
            .iter()
            .position(|line| matches(line, file, want));
        match hit {
            Some(i) => next += i + 1,
            None => {
                let shown = if want.starts_with(':') {
                    format!("{file}{want}")
                } else {
                    want.clone()
                };
                return Err(format!(
                    "no line {} with {shown:?}",
                    if next == 0 {
                        "at all".to_string()
                    } else {
                        format!("after line {next}")
                    }
                ));
            }
        }
    }
    Ok(())
}

/// Whether `line` holds `want`: its `{*}`-separated pieces in order, the
/// first right after `file` at the start of the line if `want` starts with
/// `:`.
fn matches(line: &str, file: &str, want: &str) -> bool {
    let mut rest = line;
    for (i, piece) in want.split("{*}").enumerate() {
        if i == 0 && want.starts_with(':') {
            match line.strip_prefix(file).and_then(|r| r.strip_prefix(piece)) {
                Some(after) => rest = after,
                None => return false,
            }
            continue;
        }
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    true
}

fn expectations(path: &Path) -> Vec<String> {
    let text = fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e} (every corpus file needs one)", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.replace("{dir}", CORPUS))
        .collect()
}

fn corpus_files() -> Vec<PathBuf> {
    let mut configs: Vec<PathBuf> = fs::read_dir(CORPUS)
        .expect("tests/bad-config")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension() == Some(OsStr::new("toml")))
        .collect();
    configs.sort();
    configs
}

#[test]
fn every_corpus_config_is_refused_with_its_located_messages() {
    let configs = corpus_files();
    assert!(
        configs.len() >= MIN_CORPUS_FILES,
        "only {} configs in {CORPUS}, expected at least {MIN_CORPUS_FILES}",
        configs.len()
    );
    // Every .expected belongs to a config (a renamed config must not leave
    // its expectations behind, unchecked).
    for entry in fs::read_dir(CORPUS).unwrap() {
        let path = entry.unwrap().path();
        if path.extension() == Some(OsStr::new("expected")) {
            assert!(
                path.with_extension("toml").exists(),
                "{} has no config beside it",
                path.display()
            );
        }
    }

    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let slowest = Mutex::new((Duration::ZERO, PathBuf::new()));
    std::thread::scope(|scope| {
        for _ in 0..3 {
            scope.spawn(|| {
                while let Some(config) = configs.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let expected = expectations(&config.with_extension("expected"));
                    let out = check(config);
                    let file = config.display().to_string();
                    let mut problems = out.basic_problems();
                    if let Err(e) = find_in_order(&out.stderr, &file, &expected) {
                        problems.push(e);
                    }
                    // Every line is an error located in this file, or the summary.
                    for line in out.stderr.lines() {
                        if !(line.starts_with(&format!("{file}:")) || line.starts_with("bgsched: "))
                        {
                            problems.push(format!("stray stderr line {line:?}"));
                        }
                    }
                    if !problems.is_empty() {
                        let name = config.file_name().unwrap().to_string_lossy();
                        failures.lock().unwrap().push(format!(
                            "{name}: {}\n  expected: {expected:?}\n  stderr:\n{}",
                            problems.join("; "),
                            out.stderr
                        ));
                    }
                    let mut slowest = slowest.lock().unwrap();
                    if out.took > slowest.0 {
                        *slowest = (out.took, config.clone());
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} corpus configs failed:\n\n{}",
        failures.len(),
        configs.len(),
        failures.join("\n")
    );
    let (took, path) = slowest.into_inner().unwrap();
    eprintln!(
        "{} corpus configs checked; slowest {} in {took:?}",
        configs.len(),
        path.display()
    );
}

// ---------------------------------------------------------------------------
// Generated inputs

/// A scratch directory; dropped (and removed) at the end of the test.
fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("bgsched-corpus-")
        .tempdir()
        .expect("tempdir")
}

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, bytes).expect("write config");
    path
}

/// Runs `check` on generated `bytes` and applies the same rules as to the
/// corpus files.
fn check_generated(name: &str, bytes: impl AsRef<[u8]>, expected: &[&str]) -> Checked {
    let dir = scratch();
    let path = write(dir.path(), name, bytes);
    let out = check(&path);
    let problems = out.basic_problems();
    assert!(problems.is_empty(), "{name}: {problems:?}\n{}", out.stderr);
    let expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    if let Err(e) = find_in_order(&out.stderr, &path.display().to_string(), &expected) {
        panic!("{name}: {e}; stderr:\n{}", truncated(&out.stderr));
    }
    out
}

fn truncated(s: &str) -> String {
    let head: String = s.chars().take(4000).collect();
    if head.len() < s.len() {
        format!("{head}… ({} bytes in all)", s.len())
    } else {
        head
    }
}

const VALID_JOB: &str = "[jobs.ok]\nschedule = \"@daily\"\ncommand = [\"true\"]\n";

#[test]
fn a_50_mb_file_is_refused_up_front() {
    // Valid TOML throughout, so only its size can be the problem.
    let mut text = String::from(VALID_JOB);
    while text.len() < 50 * 1024 * 1024 {
        text.push_str("# filler filler filler filler filler filler filler filler filler\n");
    }
    let out = check_generated(
        "huge.toml",
        &text,
        &[": file is too large", "bgsched: 1 error in the config"],
    );
    assert!(out.took < Duration::from_secs(20), "took {:?}", out.took);
}

#[test]
fn a_big_file_under_the_limit_is_checked_to_its_end() {
    // 9 MiB of comments, then one mistake on line 1 + 9 * 2^20 / 64.
    let filler = "# ............................................................\n";
    let lines = 9 * 1024 * 1024 / filler.len();
    let mut text = filler.repeat(lines);
    text.push_str("[jobs.late]\nschedule = \"61 * * * *\"\ncommand = [\"true\"]\n");
    let at = format!(
        ":{}:12: job \"late\": invalid schedule \"61 * * * *\": minute 61 out of range 0-59",
        lines + 2
    );
    check_generated("big.toml", text, &[&at, "bgsched: 1 error in the config"]);
}

#[test]
fn deeply_nested_arrays_and_tables_are_refused_located() {
    let n = 20_000;
    let arrays = format!("a = {}{}\n", "[".repeat(n), "]".repeat(n));
    let tables = format!("a = {}1{}\n", "{ b = ".repeat(n), " }".repeat(n));
    let unclosed = format!("{VALID_JOB}x = {}\n", "[".repeat(1_000_000));
    let mixed = format!("a = {}\n", "[{ b = ".repeat(n / 2));
    let deep = ": invalid TOML: arrays or inline tables are nested too deeply";
    for (name, text, line) in [
        ("arrays.toml", arrays, 1),
        ("tables.toml", tables, 1),
        ("unclosed.toml", unclosed, 4),
        ("mixed.toml", mixed, 1),
    ] {
        check_generated(name, text, &[&format!(":{line}:{{*}}{deep}")]);
    }
}

#[test]
fn keys_and_table_names_with_thousands_of_parts_are_refused() {
    let n = 20_000;
    let dotted = format!("{VALID_JOB}{} = 1\n", vec!["k"; n].join("."));
    let header = format!("{VALID_JOB}[{}]\n", vec!["jobs"; n].join("."));
    let arrays = format!("{VALID_JOB}[[{}]]\n", vec!["t"; n].join("."));
    for (name, text) in [
        ("dotted.toml", dotted),
        ("header.toml", header),
        ("arrays.toml", arrays),
    ] {
        check_generated(
            name,
            text,
            &[":4:{*}: invalid TOML: a dotted key or table name has too many parts"],
        );
    }
}

#[test]
fn nesting_the_parser_accepts_does_not_overflow_the_stack() {
    // 79 inline tables deep, each with a 79-part dotted key: the tree is
    // about 6,000 tables deep, which the loader's big stack must absorb.
    let key = vec!["k"; 79].join(".");
    let text = format!(
        "x = {}1{}\n{VALID_JOB}",
        format!("{{ {key} = ").repeat(79),
        " }".repeat(79)
    );
    check_generated(
        "deep.toml",
        text,
        &[
            ":1:1: unknown top-level key `x`",
            "bgsched: 1 error in the config",
        ],
    );
}

#[test]
fn thousands_of_bad_jobs_are_all_reported_in_file_order() {
    let n = 2_000;
    let text: String = (0..n)
        .map(|i| {
            format!(
                "[jobs.j{i}]\nschedule = \"{} * * * *\"\ncommand = [\"true\"]\n",
                60 + i % 40
            )
        })
        .collect();
    let expected: Vec<String> = (0..n)
        .map(|i| {
            format!(
                ":{}:12: job \"j{i}\": invalid schedule \"{m} * * * *\": minute {m} out of range 0-59",
                3 * i + 2,
                m = 60 + i % 40
            )
        })
        .chain([format!("bgsched: {n} errors in the config")])
        .collect();
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    let out = check_generated("many.toml", text, &expected);
    assert_eq!(out.stderr.lines().count(), n + 1, "one line per error");
}

/// Values far longer than anyone types, in every place a value is echoed.
fn long_value_configs(len: usize) -> Vec<(&'static str, String, &'static str)> {
    let long = "x".repeat(len);
    vec![
        (
            "schedule",
            format!("[jobs.a]\nschedule = \"{long} * * * *\"\ncommand = [\"true\"]\n"),
            ":2:12: job \"a\": invalid schedule \"xxx",
        ),
        (
            "nickname",
            format!("[jobs.a]\nschedule = \"@{long}\"\ncommand = [\"true\"]\n"),
            ":2:12: job \"a\": invalid schedule \"@xxx",
        ),
        (
            "every",
            format!("[jobs.a]\nschedule = \"@every 5{long}\"\ncommand = [\"true\"]\n"),
            ":2:12: job \"a\": invalid schedule \"@every 5xxx",
        ),
        (
            "duration",
            format!("[jobs.a]\nschedule = \"@daily\"\ncommand = [\"true\"]\ntimeout = \"5{long}\"\n"),
            ":4:11: job \"a\": invalid duration \"5xxx",
        ),
        (
            "key",
            format!("[jobs.a]\nschedule = \"@daily\"\ncommand = [\"true\"]\n{long} = 1\n"),
            ":4:1: job \"a\": unknown key `xxx",
        ),
        (
            "time zone",
            format!("[jobs.a]\nschedule = \"@daily\"\ncommand = [\"true\"]\ntimezone = \"{long}\"\n"),
            ":4:12: job \"a\": unknown time zone \"xxx",
        ),
        (
            "job name",
            format!("[jobs.\"{long} \"]\nschedule = \"@daily\"\ncommand = [\"true\"]\n"),
            ":1:7: job \"xxx",
        ),
        (
            "endpoint",
            format!("[cluster]\netcd = [\"http://{long}\"]\n"),
            ":2:9: etcd endpoint \"http://xxx",
        ),
        (
            "env name",
            format!("[jobs.a]\nschedule = \"@daily\"\ncommand = [\"true\"]\nenv = {{ \"={long}\" = \"v\" }}\n"),
            ":4:9: job \"a\": env variable name \"=xxx",
        ),
    ]
}

#[test]
fn long_values_are_refused_located() {
    // 1,000 characters: long enough to matter, and checked like any
    // other value (the 100,000-character ones are below).
    for (what, text, expected) in long_value_configs(1_000) {
        let out = check_generated(
            &format!("{}.toml", what.replace(' ', "-")),
            text,
            &[expected],
        );
        assert!(
            out.took < Duration::from_secs(10),
            "{what}: took {:?}",
            out.took
        );
    }
}

#[test]
fn long_values_are_shortened_in_messages() {
    let mut long_lines = Vec::new();
    for (what, text, expected) in long_value_configs(100_000) {
        if what == "time zone" {
            continue; // see a_very_long_time_zone_name_is_refused_quickly
        }
        let out = check_generated(
            &format!("{}.toml", what.replace(' ', "-")),
            text,
            &[expected],
        );
        if let Some(longest) = out.stderr.lines().map(str::len).max() {
            if longest > 1_000 {
                long_lines.push(format!("{what}: a {longest}-byte line"));
            }
        }
    }
    assert!(long_lines.is_empty(), "{long_lines:#?}");
}

#[test]
fn a_very_long_time_zone_name_is_refused_quickly() {
    let (_, text, expected) = long_value_configs(100_000)
        .into_iter()
        .find(|(what, _, _)| *what == "time zone")
        .unwrap();
    let dir = scratch();
    let path = write(dir.path(), "tz.toml", text);
    let out = check_within(&path, Duration::from_secs(5));
    assert!(
        out.basic_problems().is_empty(),
        "{:?}",
        out.basic_problems()
    );
    let file = path.display().to_string();
    assert!(out.stderr.lines().any(|l| matches(l, &file, expected)));
}

#[test]
fn control_characters_in_schedules_are_escaped() {
    for (name, schedule) in [
        ("item", "\\u001b[31mRED * * * *"),
        ("nickname", "@daily \\u001b[2J"),
        ("every", "@every 5\\u001b[2J"),
        ("quote", "\\\"x\\\" * * * *"),
    ] {
        let text = format!("[jobs.a]\nschedule = \"{schedule}\"\ncommand = [\"true\"]\n");
        let out = check_generated(
            &format!("{name}.toml"),
            text,
            &[":2:12: job \"a\": invalid schedule "],
        );
        assert!(
            !out.stderr.contains('\u{1b}'),
            "{name}: raw ESC in {:?}",
            out.stderr
        );
        assert!(
            !out.stderr.contains("\"\"x\"\""),
            "{name}: unescaped quotes in {:?}",
            out.stderr
        );
    }
}

#[test]
fn the_too_large_message_does_not_state_a_wrong_size() {
    let text = "#\n".repeat(25 * 1024 * 1024);
    let out = check_generated(
        "huge.toml",
        text,
        &[": file is too large (52428800 bytes; a config file may be at most 32 MiB)"],
    );
    assert!(!out.stderr.contains("(10485761 bytes"), "{}", out.stderr);
}

#[test]
fn too_many_key_parts_is_located() {
    let text = format!("{VALID_JOB}{} = 1\n", vec!["k"; 200].join("."));
    check_generated(
        "dotted.toml",
        text,
        &[":4:{*}: invalid TOML: a dotted key or table name has too many parts"],
    );
    // Dots in strings, comments and values are no key's; the long key is
    // found after them, quoted parts and spaces around dots included.
    let text = format!(
        "{VALID_JOB}# {comment}\nx = \"{string}\"\ny = '''\n{string}\n'''\nz = 1.5\n\
         [a . \"b.c\" . {key}]\n",
        comment = ".".repeat(200),
        string = vec!["s"; 200].join("."),
        key = vec!["'k'"; 100].join("."),
    );
    check_generated(
        "mixed.toml",
        text,
        &[":10:2: invalid TOML: a dotted key or table name has too many parts"],
    );
}

#[test]
fn a_nul_byte_is_named() {
    for (name, text, at) in [
        ("header", "[jobs.a]\0\n", ":1:9:"),
        ("string", "[jobs.a]\nschedule = \"@da\0ily\"\n", ":2:16:"),
        ("comment", "[jobs.a] # \0\n", ":1:12:"),
        ("key", "[jobs.a]\nsch\0edule = 1\n", ":2:4:"),
    ] {
        check_generated(
            &format!("{name}.toml"),
            format!("{text}command = [\"true\"]\n"),
            &[&format!(
                "{at} invalid TOML: NUL byte (\\0) is not allowed in a TOML file"
            )],
        );
    }
}
