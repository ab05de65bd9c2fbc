//! One `bgsched` command and everything expected of it, declared before it
//! runs (in the style of just's `Test`): exit status 0, empty stdout and
//! empty stderr unless said otherwise, and each compared exactly unless a
//! `_has` form asks for a part. `{dir}` in the config and in expectations
//! is the scratch directory.
//!
//! ```ignore
//! Test::new()
//!     .config("[jobs.a]\nschedule = 5\ncommand = [\"true\"]\n")
//!     .args(&["check"])
//!     .status(78)
//!     .stderr("{dir}/jobs.toml:2:12: job \"a\": schedule must be a string (or an array of strings for several schedules), found integer\nbgsched: 1 error in the config\n")
//!     .run();
//! ```

#![allow(dead_code)]

use super::{Env, Out};

enum Expect {
    Exactly(String),
    Contains(Vec<String>),
}

pub struct Test {
    env: Env,
    args: Vec<String>,
    vars: Vec<(String, String)>,
    status: i32,
    stdout: Expect,
    stderr: Expect,
}

impl Default for Test {
    fn default() -> Self {
        Self::new()
    }
}

impl Test {
    /// A fresh scratch directory (no config yet).
    pub fn new() -> Self {
        Test {
            env: Env::new(),
            args: Vec::new(),
            vars: vec![("BGSCHED_LOG".into(), "warn".into())],
            status: 0,
            stdout: Expect::Exactly(String::new()),
            stderr: Expect::Exactly(String::new()),
        }
    }

    pub fn config(mut self, toml: &str) -> Self {
        self.env = self.env.config(toml);
        self
    }

    /// The arguments after `--config` and `--state-dir`.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args = args.iter().map(|a| a.to_string()).collect();
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.vars.push((key.into(), value.into()));
        self
    }

    pub fn status(mut self, code: i32) -> Self {
        self.status = code;
        self
    }

    pub fn stdout(mut self, exactly: &str) -> Self {
        self.stdout = Expect::Exactly(exactly.into());
        self
    }

    /// Stdout contains `part` (and every other `stdout_has`).
    pub fn stdout_has(mut self, part: &str) -> Self {
        self.stdout = add(self.stdout, part);
        self
    }

    pub fn stderr(mut self, exactly: &str) -> Self {
        self.stderr = Expect::Exactly(exactly.into());
        self
    }

    /// Stderr contains `part` (and every other `stderr_has`).
    pub fn stderr_has(mut self, part: &str) -> Self {
        self.stderr = add(self.stderr, part);
        self
    }

    /// Run the command and check every expectation; the output, for more.
    #[track_caller]
    pub fn run(self) -> Out {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let mut cmd = self.env.cmd(&args);
        for (k, v) in &self.vars {
            cmd = cmd.env(k, v);
        }
        let out = cmd.run();
        let dir = self.env.dir().display().to_string();
        let shown = || {
            format!(
                "`bgsched {}`\n--- stdout:\n{}\n--- stderr:\n{}",
                self.args.join(" "),
                out.stdout,
                out.stderr
            )
        };
        assert_eq!(out.code, Some(self.status), "exit status of {}", shown());
        check("stdout", &self.stdout, &out.stdout, &dir, &shown);
        check("stderr", &self.stderr, &out.stderr, &dir, &shown);
        out
    }

    /// The scratch directory, to look at after `run`.
    pub fn dir(&self) -> &std::path::Path {
        self.env.dir()
    }
}

fn add(expect: Expect, part: &str) -> Expect {
    match expect {
        Expect::Contains(mut parts) => {
            parts.push(part.into());
            Expect::Contains(parts)
        }
        Expect::Exactly(_) => Expect::Contains(vec![part.into()]),
    }
}

#[track_caller]
fn check(stream: &str, expect: &Expect, got: &str, dir: &str, shown: &dyn Fn() -> String) {
    match expect {
        Expect::Exactly(want) => {
            let want = want.replace("{dir}", dir);
            assert!(
                got == want,
                "{stream} differs\n--- expected:\n{want}\n--- of {}",
                shown()
            );
        }
        Expect::Contains(parts) => {
            for part in parts {
                let part = part.replace("{dir}", dir);
                assert!(
                    got.contains(&part),
                    "{stream} lacks {part:?}\n--- of {}",
                    shown()
                );
            }
        }
    }
}
