//! Reading and validating a config file.
//!
//! The file is parsed with toml's span-keeping document API ([`DeTable`])
//! instead of serde: serde stops at the first problem and forgets where things
//! were, while users need every mistake at once, each with line:column. So the
//! checks below walk the parsed tree themselves, keep going after a problem,
//! and only build a [`Config`] when nothing was found.

use super::{
    base_dir, After, ClusterSettings, Config, ConfigError, ConfigErrors, Event, Group, Groups,
    HttpSettings, Job, MemberSettings, NotifySettings, Overlap, Param, Pattern, Program, RunOn,
    SchedulerSettings, Secret, Tokens, Webhook, DEFAULT_WEBHOOK_RETRIES, DEFAULT_WEBHOOK_TIMEOUT,
};
use crate::schedule::{duration_reason, quoted, shown, Schedule};
use chrono_tz::Tz;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::env::VarError;
use std::fs::File;
use std::io::Read;
use std::net::Ipv6Addr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use toml::de::{DeArray, DeString, DeTable, DeValue};
use toml::Spanned;

mod cluster;
mod cluster_values;
mod job_values;
mod notify;
mod report;
mod sections;
mod values;
use cluster::*;
use notify::*;
use report::*;
use sections::*;
use values::*;

/// Large enough for 100,000 jobs (about 20 MiB of TOML); anything bigger is
/// the wrong file, and refusing it early bounds the parser's memory.
const MAX_FILE_SIZE: usize = 32 * 1024 * 1024;

/// toml caps nesting at 80 levels per construct, but the caps multiply (80
/// nested inline tables, each with an 80-part dotted key, make ~6,400 nested
/// tables) and building and dropping that tree recurses: about 8 MiB of stack
/// in a debug build, more than a test thread or a tokio worker has. Parsing
/// runs on a thread of its own with this much headroom; only the pages
/// actually touched are committed.
const PARSE_STACK_SIZE: usize = 64 * 1024 * 1024;

/// Read and validate the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_str(path, &read(path)?)
}

/// The bytes of the config file at `path`, refusing files over the size
/// limit; separate from [`load`] for callers that also hash them (reload).
pub fn read(path: &Path) -> Result<Vec<u8>, ConfigErrors> {
    let unreadable = |reason: String| {
        ConfigErrors(vec![ConfigError {
            file: path.display().to_string(),
            line: 0,
            column: 0,
            job: None,
            message: format!("cannot read config file: {reason}"),
        }])
    };
    let file = std::fs::File::open(path).map_err(|e| unreadable(e.to_string()))?;
    // One byte past the limit is enough to see it is too big.
    let mut bytes = Vec::new();
    (&file)
        .take(MAX_FILE_SIZE as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| unreadable(e.to_string()))?;
    if bytes.len() > MAX_FILE_SIZE {
        // What was read is only the limit plus one; the file's size is in its
        // metadata, unless it is a pipe or a device that has none.
        let size = file
            .metadata()
            .ok()
            .map(|m| m.len())
            .filter(|len| *len > MAX_FILE_SIZE as u64);
        return Err(ConfigErrors(vec![too_large(path, size)]));
    }
    Ok(bytes)
}

/// The error for a file over [`MAX_FILE_SIZE`], with its `size` in bytes if
/// known.
fn too_large(path: &Path, size: Option<u64>) -> ConfigError {
    let limit = MAX_FILE_SIZE / (1024 * 1024);
    let size = match size {
        Some(bytes) => format!("{bytes} bytes"),
        None => format!("more than {limit} MiB"),
    };
    ConfigError {
        file: path.display().to_string(),
        line: 0,
        column: 0,
        job: None,
        message: format!("file is too large ({size}; a config file may be at most {limit} MiB)"),
    }
}

/// Validate config text; `path` is used for error locations and as the base
/// directory of relative paths.
///
/// With a `[cluster]` table this also opens its TLS files and reads the etcd
/// password from its file or environment variable, so that a broken setup
/// is reported now, located, rather than at the first connect.
pub fn load_str(path: &Path, text: &[u8]) -> Result<Config, ConfigErrors> {
    if text.len() > MAX_FILE_SIZE {
        return Err(ConfigErrors(vec![too_large(path, Some(text.len() as u64))]));
    }
    let file = path.display().to_string();
    let text = match std::str::from_utf8(text) {
        Ok(text) => text,
        Err(e) => return Err(ConfigErrors(vec![not_utf8(file, text, e)])),
    };
    on_big_stack(|| check(path, text))
}

/// Nothing can be parsed reliably past a bad byte, so this is the only error
/// reported for such a file.
fn not_utf8(file: String, bytes: &[u8], e: std::str::Utf8Error) -> ConfigError {
    let valid = std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default();
    let (line, column) = Lines::new(valid).position(valid.len());
    let bad = bytes[e.valid_up_to()];
    let utf16 = if bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]) {
        "; it looks like UTF-16, save it as UTF-8"
    } else {
        ""
    };
    ConfigError {
        file,
        line,
        column,
        job: None,
        message: format!("file is not valid UTF-8 (byte 0x{bad:02X} here){utf16}"),
    }
}

/// Runs `f` on a thread with [`PARSE_STACK_SIZE`] of stack, or right here if
/// no thread can be started (better a possible overflow on absurd input than
/// no config at all).
fn on_big_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    // Shared by both paths; whichever runs first takes the closure.
    let slot = Mutex::new(Some(f));
    let run = || {
        let f = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        f.map(|f| f())
    };
    std::thread::scope(|scope| {
        let on_thread = std::thread::Builder::new()
            .name("config-load".into())
            .stack_size(PARSE_STACK_SIZE)
            .spawn_scoped(scope, run)
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p))
            });
        match on_thread {
            Ok(Some(result)) => result,
            _ => run().expect("the closure runs on the thread or here"),
        }
    })
}

fn check(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let mut r = Report::new(path, text);
    let (doc, syntax_errors) = DeTable::parse_recoverable(text);
    if !syntax_errors.is_empty() {
        // The recovered tree may lack whole tables, so checking it would
        // add bogus "missing schedule" errors: syntax comes first.
        r.syntax_errors(syntax_errors);
        return Err(r.into_errors());
    }

    let top = TopKeys::of(&mut r, doc.get_ref());
    let scheduler = top
        .scheduler
        .as_ref()
        .map(|item| scheduler(&mut r, item))
        .unwrap_or_default();
    let cluster = top
        .cluster
        .as_ref()
        .and_then(|item| cluster(&mut r, item, base_dir(path)));
    let http = top
        .http
        .as_ref()
        .map(|item| http(&mut r, item, base_dir(path)))
        .unwrap_or_default();
    let notify = top
        .notify
        .as_ref()
        .map(|item| notify(&mut r, item, base_dir(path)))
        .unwrap_or_default();
    let member = top
        .member
        .as_ref()
        .map(|item| member(&mut r, item))
        .unwrap_or_default();
    let built_in = Defaults {
        catchup: default_catchup(cluster.as_ref()),
        ..Defaults::default()
    };
    let defaults = match top.defaults.as_ref() {
        Some(item) => defaults(&mut r, item, built_in),
        None => built_in,
    };
    let groups = top
        .groups
        .as_ref()
        .map(|item| groups(&mut r, item))
        .unwrap_or_default();
    let jobs = top
        .jobs
        .as_ref()
        .map(|item| jobs(&mut r, item, &defaults, &groups))
        .unwrap_or_default();

    if r.has_errors() {
        return Err(r.into_errors());
    }
    let mut config = Config {
        path: path.to_path_buf(),
        scheduler,
        jobs,
        groups,
        cluster,
        http,
        notify,
        member,
    };
    resolve_relative_paths(&mut config);
    Ok(config)
}

/// Paths are resolved here, once, so that nothing downstream depends on the
/// process's working directory or has to remember to do it. (The files of
/// `[cluster]` are resolved while they are checked, since they are read.)
fn resolve_relative_paths(config: &mut Config) {
    let base = config.base_dir().to_path_buf();
    let resolve = |p: &mut PathBuf| *p = resolved(&base, std::mem::take(p));
    if let Some(dir) = &mut config.scheduler.state_dir {
        resolve(dir);
    }
    for job in config.jobs.values_mut() {
        if let Some(dir) = &mut job.working_dir {
            resolve(dir);
        }
    }
}

fn resolved(base: &Path, path: PathBuf) -> PathBuf {
    if path.is_relative() {
        base.join(path)
    } else {
        path
    }
}

// ---------------------------------------------------------------------------
// Sections

// ---------------------------------------------------------------------------
// Cluster

// ---------------------------------------------------------------------------
// Located values

impl<'a, 'i> Item<'a, 'i> {}

// ---------------------------------------------------------------------------
// Suggestions

// ---------------------------------------------------------------------------
// Reporting

#[cfg(test)]
mod tests;
