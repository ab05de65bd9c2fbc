//! Benchmark harness for bgsched.
//!
//! ```text
//! scripts/bench [--quick] [--out FILE] [--keep] [--burst-jobs N] [precision|failover|scale|burst ...]
//! cargo run --release --example bench -- ...   (needs target/release/bgsched; scripts/bench builds it)
//! ```
//!
//! Runs the scenarios one after another against the real `bgsched` binary
//! (`$BGSCHED_BIN`, else `bgsched` next to this example's directory, i.e.
//! `target/release/bgsched`) and a real local etcd (tests/common/etcd.rs:
//! `$BGSCHED_ETCD_BIN`, else `etcd` on PATH, else /usr/bin/etcd), prints one
//! markdown table per scenario and writes them all to `bench-results.md`.
//!
//! - **precision**: N jobs every second (`@every 1s`, then `* * * * * *`).
//!   Lateness is measured by the job itself: every variant runs the same
//!   child, `examples/bench_stamp.rs` (std only, so that it execs fast;
//!   this binary's hidden `stamp` command is the fallback), which reads
//!   CLOCK_REALTIME as its first act and appends one line (O_APPEND) with
//!   the tick it was fired for. Variants, interleaved in rounds (A B C D E,
//!   A B C D E, ...): bgsched standalone, bgsched cluster (one replica,
//!   local etcd), tokio-cron-scheduler 0.15, the floor (a minimal tokio
//!   loop sleeping until each tick), and the floor spawning the child as
//!   bgsched spawns a job (pipes, own process group, PDEATHSIG).
//! - **failover**: 3 replicas, `@every 1s`, lease_ttl 2s/5s/10s: kill -9 and
//!   SIGTERM of the leader, repeated; election observed through an etcd
//!   watch on `<prefix>/leader`, fires through the ledger.
//! - **scale**: generated configs of 1k/10k/100k rarely-firing jobs:
//!   start-up, RSS, idle CPU, `check` and `list` wall time.
//! - **burst**: 1,000 jobs (`--burst-jobs N`) due on the same second, standalone and cluster;
//!   in cluster mode, etcd requests per fire from etcd's `/metrics`.
//!
//! `--quick` shrinks every scenario for a CI smoke run. The harness never
//! fails on a timing: it exits non-zero only when a scenario could not run
//! or produced no numbers. Targets are printed as PASS/MISS next to figures.

#[path = "bench_stamp.rs"]
mod bench_stamp;
#[path = "../tests/common/etcd.rs"]
mod etcd;

use anyhow::{anyhow, bail, Context as _, Result};
use chrono::{DateTime, SecondsFormat, Timelike, Utc};
use clap::{Parser, ValueEnum};
use rustix::process::{Pid, Signal};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SEC: i128 = 1_000_000_000;
const MS: f64 = 1e6;

fn main() {
    // Fallback job command when bench_stamp is not built: `bench stamp <file> <tag>`.
    if std::env::args_os().nth(1).is_some_and(|a| a == "stamp") {
        std::process::exit(bench_stamp::stamp(2));
    }
    std::process::exit(match bench(Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bench: {e:#}");
            1
        }
    });
}

#[derive(Debug, Parser)]
#[command(about = "bgsched benchmark harness (see examples/bench.rs)")]
struct Args {
    /// CI smoke run: tiny parameters; checks only that every scenario runs and produces numbers.
    #[arg(long)]
    quick: bool,
    /// Markdown results file.
    #[arg(long, default_value = "bench-results.md")]
    out: PathBuf,
    /// Keep the scratch directory (configs, ledgers, logs) and print its path.
    #[arg(long)]
    keep: bool,
    /// Jobs due together in the burst scenario (default 1,000; 100 with --quick).
    #[arg(long)]
    burst_jobs: Option<usize>,
    /// Scenarios to run (default: all, in this order).
    #[arg(value_enum)]
    scenarios: Vec<Scenario>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Precision,
    Failover,
    Scale,
    Burst,
    Placement,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Precision => "precision",
            Scenario::Failover => "failover",
            Scenario::Scale => "scale",
            Scenario::Burst => "burst",
            Scenario::Placement => "placement",
        }
    }
}

fn bench(args: Args) -> Result<i32> {
    let scenarios = if args.scenarios.is_empty() {
        vec![
            Scenario::Precision,
            Scenario::Failover,
            Scenario::Scale,
            Scenario::Burst,
            Scenario::Placement,
        ]
    } else {
        args.scenarios.clone()
    };
    let work = tempfile::Builder::new()
        .prefix("bgsched-bench-")
        .tempdir()
        .context("scratch directory")?;
    let mut ctx = Ctx {
        quick: args.quick,
        burst_jobs: args.burst_jobs,
        bin: bgsched_bin()?,
        stamp: stamp_argv()?,
        work: work.path().to_path_buf(),
        etcd: None,
        rt: tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?,
    };
    let started = Instant::now();
    let mut doc = header(&ctx);
    println!("{doc}");
    let mut failed = Vec::new();
    for s in scenarios {
        let t = Instant::now();
        let load_before = loadavg();
        eprintln!("bench: running {} ...", s.name());
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match s {
            Scenario::Precision => precision(&mut ctx),
            Scenario::Failover => failover(&mut ctx),
            Scenario::Scale => scale(&mut ctx),
            Scenario::Burst => burst(&mut ctx),
            Scenario::Placement => placement(&mut ctx),
        }));
        let mut section = match result {
            Ok(Ok(text)) => text,
            Ok(Err(e)) => {
                failed.push(s.name());
                format!("## {}\n\n**FAILED**: {e:#}\n", s.name())
            }
            Err(panic) => {
                failed.push(s.name());
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                format!("## {}\n\n**FAILED** (panic): {msg}\n", s.name())
            }
        };
        let _ = writeln!(
            section,
            "\n_{} took {:.0} s; load average before {load_before}, after {}._\n",
            s.name(),
            t.elapsed().as_secs_f64(),
            loadavg()
        );
        println!("{section}");
        doc.push_str(&section);
        doc.push('\n');
        fs::write(&args.out, &doc).with_context(|| format!("write {}", args.out.display()))?;
    }
    drop(ctx.etcd.take());
    let _ = writeln!(doc, "_Total: {:.0} s._", started.elapsed().as_secs_f64());
    fs::write(&args.out, &doc).with_context(|| format!("write {}", args.out.display()))?;
    eprintln!(
        "bench: results in {} ({:.0} s)",
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    if args.keep || !failed.is_empty() {
        let kept = work.keep();
        eprintln!("bench: scratch directory kept: {}", kept.display());
    }
    if failed.is_empty() {
        Ok(0)
    } else {
        eprintln!("bench: scenario(s) failed: {}", failed.join(", "));
        Ok(1)
    }
}

/// Shared state of one bench invocation.
struct Ctx {
    quick: bool,
    burst_jobs: Option<usize>,
    bin: PathBuf,
    /// The job command up to its file and tag arguments.
    stamp: Vec<String>,
    work: PathBuf,
    /// One local etcd for all cluster measurements, started on first use;
    /// each scenario uses its own key prefix.
    etcd: Option<etcd::Etcd>,
    /// For etcd watches.
    rt: tokio::runtime::Runtime,
}

impl Ctx {
    fn etcd(&mut self) -> &etcd::Etcd {
        self.etcd.get_or_insert_with(etcd::Etcd::start)
    }

    fn endpoint(&mut self) -> String {
        self.etcd().endpoint()
    }

    fn scratch(&self, name: &str) -> Result<PathBuf> {
        let dir = self.work.join(name);
        fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        Ok(dir)
    }

    /// `command = [...]` running the stamp helper.
    fn stamp_cmd(&self, ledger: &Path, tag: &str) -> String {
        let mut argv: Vec<String> = self.stamp.iter().map(|a| toml_str(a)).collect();
        argv.push(toml_str(&ledger.display().to_string()));
        argv.push(toml_str(tag));
        format!("command = [{}]", argv.join(", "))
    }

    /// `bgsched --config <cfg> --log-format json <args>`, with a clean environment.
    fn bgsched(&self, cfg: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--config").arg(cfg).args(["--log-format", "json"]);
        c.args(args);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("BGSCHED_") {
                c.env_remove(k);
            }
        }
        c.env("BGSCHED_LOG", "info").stdin(Stdio::null());
        // Jobs inherit this working directory (scale configs use relative paths).
        if let Some(dir) = cfg.parent() {
            c.current_dir(dir);
        }
        c
    }

    /// Start `bgsched run` in the background, logging to `log` (appended).
    fn spawn_run(
        &self,
        cfg: &Path,
        state_dir: Option<&Path>,
        instance: &str,
        log: &Path,
    ) -> Result<Bg> {
        let mut args = Vec::new();
        let state = state_dir.map(|d| d.display().to_string());
        if let Some(s) = &state {
            args.extend(["--state-dir", s.as_str()]);
        }
        args.extend(["run", "--instance-id", instance]);
        let mut c = self.bgsched(cfg, &args);
        let file = fs::OpenOptions::new().create(true).append(true).open(log)?;
        let offset = file.metadata()?.len();
        c.stdout(file.try_clone()?).stderr(file);
        let started_ns = now_ns();
        let child = c.spawn().context("spawn bgsched run")?;
        Ok(Bg {
            child,
            log: log.to_path_buf(),
            offset,
            started_ns,
        })
    }
}

/// A background `bgsched run`; killed on drop.
struct Bg {
    child: Child,
    log: PathBuf,
    /// Log length when this process started (the log may be shared by restarts).
    offset: u64,
    started_ns: i128,
}

impl Bg {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn signal(&self, sig: Signal) {
        if let Some(p) = Pid::from_raw(self.pid()) {
            let _ = rustix::process::kill_process(p, sig);
        }
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, wait up to 30 s, then SIGKILL.
    fn stop(&mut self) {
        if !self.running() {
            return;
        }
        self.signal(Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill9();
    }

    /// The JSON-log timestamp of the first line of this process containing
    /// `needle`, waiting up to `within`.
    fn wait_log(&mut self, needle: &str, within: Duration) -> Result<i128> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(ts) = log_line_time(&self.log, self.offset, needle) {
                return Ok(ts);
            }
            if !self.running() {
                bail!(
                    "bgsched exited before logging {needle:?}; log {}:\n{}",
                    self.log.display(),
                    tail(&self.log, 3000)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "no {needle:?} within {within:?}; log {}:\n{}",
                    self.log.display(),
                    tail(&self.log, 3000)
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// utime + stime in clock ticks.
    fn cpu_ticks(&self) -> Option<u64> {
        proc_cpu_ticks(self.pid())
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if self.running() {
            self.signal(Signal::CONT);
            self.kill9();
        }
    }
}

// ---------------------------------------------------------------- helpers

fn bgsched_bin() -> Result<PathBuf> {
    if let Some(b) = std::env::var_os("BGSCHED_BIN").filter(|b| !b.is_empty()) {
        return Ok(PathBuf::from(b));
    }
    // target/<profile>/examples/bench -> target/<profile>/bgsched
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("bgsched"))
        .ok_or_else(|| anyhow!("cannot locate bgsched next to {}", exe.display()))?;
    if !bin.is_file() {
        bail!(
            "{} does not exist: build it (cargo build --release) or set BGSCHED_BIN",
            bin.display()
        );
    }
    Ok(bin)
}

/// `bench_stamp` next to this binary, else this binary's `stamp` command.
fn stamp_argv() -> Result<Vec<String>> {
    let exe = std::env::current_exe().context("own path")?;
    let helper = exe.with_file_name("bench_stamp");
    Ok(if helper.is_file() {
        vec![helper.display().to_string()]
    } else {
        eprintln!(
            "bench: {} not built; using `{} stamp` as the job (slower to exec)",
            helper.display(),
            exe.display()
        );
        vec![exe.display().to_string(), "stamp".into()]
    })
}

/// Exec cost of the job command: spawn (posix_spawn from this process) to
/// its first clock reading, p50 and max over 30 runs.
fn stamp_exec_cost(ctx: &Ctx) -> Result<(f64, f64)> {
    let file = ctx.scratch("calibrate")?.join("ledger");
    let mut lat = Vec::new();
    for _ in 0..30 {
        let _ = fs::remove_file(&file);
        let t = now_ns();
        let status = Command::new(&ctx.stamp[0])
            .args(&ctx.stamp[1..])
            .arg(&file)
            .arg("c")
            .status()?;
        if !status.success() {
            bail!("the stamp helper failed: {status}");
        }
        let s = read_ledger(&file);
        let at = s
            .first()
            .ok_or_else(|| anyhow!("the stamp helper wrote nothing"))?
            .at;
        lat.push((at - t) as f64 / MS);
    }
    lat.sort_by(f64::total_cmp);
    Ok((pct(&lat, 50.0), max_of(&lat)))
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

fn ceil_sec(ns: i128) -> i128 {
    (ns + SEC - 1).div_euclid(SEC) * SEC
}

fn sleep_until_ns(t: i128) {
    let d = t - now_ns();
    if d > 0 {
        std::thread::sleep(Duration::from_nanos(d as u64));
    }
}

fn rfc3339_of(ns: i128) -> String {
    DateTime::from_timestamp((ns.div_euclid(SEC)) as i64, (ns.rem_euclid(SEC)) as u32)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn parse_ns(s: &str) -> Option<i128> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .map(i128::from)
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("string serializes")
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn tail(path: &Path, bytes: usize) -> String {
    let text = fs::read(path).unwrap_or_default();
    let from = text.len().saturating_sub(bytes);
    String::from_utf8_lossy(&text[from..]).into_owned()
}

/// Timestamp (ns) of the first JSON log line at or after `offset` that contains `needle`.
fn log_line_time(log: &Path, offset: u64, needle: &str) -> Option<i128> {
    let text = fs::read(log).ok()?;
    let text = String::from_utf8_lossy(text.get(offset as usize..)?);
    text.lines().filter(|l| l.contains(needle)).find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        parse_ns(v["timestamp"].as_str()?)
    })
}

fn proc_cpu_ticks(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15 (1-based).
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// A `/proc/<pid>/status` field in kB (VmRSS, VmHWM).
fn proc_status_kb(pid: i32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn clock_ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// One line of a stamp ledger.
#[derive(Debug, Clone)]
struct Stamp {
    tag: String,
    at: i128,
    tick: Option<i128>,
    instance: String,
    trigger: String,
}

fn read_ledger(path: &Path) -> Vec<Stamp> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            if f.len() != 5 {
                return None;
            }
            Some(Stamp {
                tag: f[0].to_string(),
                at: f[1].parse().ok()?,
                tick: parse_ns(f[2]),
                instance: f[3].to_string(),
                trigger: f[4].to_string(),
            })
        })
        .collect()
}

fn ledger_lines(path: &Path) -> usize {
    fs::read(path).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    pct(&s, 50.0)
}

fn max_of(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

fn ms(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0} ms")
    } else if v.abs() >= 10.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.2} ms")
    }
}

fn secs(v_ms: f64) -> String {
    if v_ms.is_nan() {
        "n/a".into()
    } else if v_ms < 1000.0 {
        ms(v_ms)
    } else {
        format!("{:.2} s", v_ms / 1000.0)
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

/// A markdown table.
struct Table {
    head: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(head: &[&str]) -> Self {
        Table {
            head: head.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let mut out = format!("| {} |\n", self.head.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(self.head.len()));
        for r in &self.rows {
            let _ = writeln!(out, "| {} |", r.join(" | "));
        }
        out
    }
}

/// What `c a...` printed, trimmed; empty if it could not run.
fn cmd(c: &str, a: &[&str]) -> String {
    Command::new(c)
        .args(a)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn header(ctx: &Ctx) -> String {
    let rev = cmd("git", &["rev-parse", "--short", "HEAD"]);
    let dirty = if cmd("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty() {
        ""
    } else {
        " (with uncommitted changes)"
    };
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_default();
    let etcd_version = cmd(&etcd::etcd_bin().display().to_string(), &["--version"])
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    let exec = match stamp_exec_cost(ctx) {
        Ok((p50, max)) => format!("{} p50, {} max", ms(p50), ms(max)),
        Err(e) => format!("not measured ({e:#})"),
    };
    format!(
        "# bgsched benchmark results{}\n\n\
         - date: {}\n- bgsched: {} at {rev}{dirty}\n- machine: {} cores ({cpu}), kernel {}, {etcd_version}\n\
         - load average at start: {}\n- scratch (state dirs, etcd data; `$TMPDIR` picks where): {} ({})\n\
         - job command: `{}`; its exec cost (spawn to its first clock reading, from this harness): {exec}\n\n",
        if ctx.quick { " (--quick: smoke run, figures not meaningful)" } else { "" },
        Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
        ctx.bin.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cmd("uname", &["-r"]),
        loadavg(),
        ctx.work.display(),
        filesystem(&ctx.work),
        ctx.stamp.join(" "),
    )
}

/// The scratch directory's filesystem in words, for ext4 with or without
/// a journal: without one, ext4's inode allocator passes over every inode
/// freed in the last minutes, and the runs' record files cost far more
/// (README, Performance).
fn filesystem(dir: &std::path::Path) -> String {
    let dir = dir.display().to_string();
    let found = cmd("findmnt", &["-no", "SOURCE,FSTYPE", "--target", &dir]);
    let mut words = found.split_whitespace();
    let (Some(source), Some(fstype)) = (words.next(), words.next()) else {
        return cmd("stat", &["-f", "-c", "%T", &dir]);
    };
    if fstype != "ext4" {
        return format!("{fstype} on {source}");
    }
    let dev = source.trim_start_matches("/dev/");
    let journal = std::fs::read_dir("/proc/fs/jbd2").is_ok_and(|mut d| {
        d.any(|e| {
            e.is_ok_and(|e| {
                e.file_name()
                    .to_string_lossy()
                    .strip_prefix(dev)
                    .is_some_and(|rest| rest.starts_with('-'))
            })
        })
    });
    format!(
        "ext4 on {source}, {}",
        if journal {
            "with a journal"
        } else {
            "without a journal"
        }
    )
}

// ---------------------------------------------------------------- precision

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sched {
    Every,
    Six,
}

impl Sched {
    fn bgsched(self) -> &'static str {
        match self {
            Sched::Every => "@every 1s",
            Sched::Six => "* * * * * *",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Sched::Every => "every",
            Sched::Six => "sixfield",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Variant {
    Standalone,
    Cluster,
    Tcs,
    Floor,
    FloorSetup,
}

/// The precision variants, in the order of each round.
const VARIANTS: [Variant; 5] = [
    Variant::Standalone,
    Variant::Cluster,
    Variant::Tcs,
    Variant::Floor,
    Variant::FloorSetup,
];

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Standalone => "bgsched standalone",
            Variant::Cluster => "bgsched cluster (1 replica)",
            Variant::Tcs => "tokio-cron-scheduler 0.15",
            Variant::Floor => "floor (tokio sleep + spawn)",
            Variant::FloorSetup => {
                "floor with bgsched's child set-up (pipes, own group, PDEATHSIG)"
            }
        }
    }
    fn slug(self) -> &'static str {
        match self {
            Variant::Standalone => "standalone",
            Variant::Cluster => "cluster",
            Variant::Tcs => "tcs",
            Variant::Floor => "floor",
            Variant::FloorSetup => "floor-setup",
        }
    }
}

struct Precision {
    variant: Variant,
    ticks: usize,
    expected: usize,
    fired: usize,
    missed: usize,
    dups: usize,
    /// Sorted lateness in ms.
    lat: Vec<f64>,
    /// Sorted lateness of the first child of each tick, in ms.
    first: Vec<f64>,
}

impl Precision {
    fn p50(&self) -> f64 {
        pct(&self.lat, 50.0)
    }
    fn p99(&self) -> f64 {
        pct(&self.lat, 99.0)
    }
}

fn precision(ctx: &mut Ctx) -> Result<String> {
    let (jobs, secs) = if ctx.quick { (5, 4) } else { (50, 60) };
    // A B C D E, A B C D E, ...: a drift of the machine's load over the run
    // falls on every variant alike instead of on the one that ran last.
    let rounds: i128 = if ctx.quick { 2 } else { 6 };
    let per = (secs / rounds).max(2);
    let scheds: &[Sched] = if ctx.quick {
        &[Sched::Every]
    } else {
        &[Sched::Every, Sched::Six]
    };
    let mut out = format!(
        "## precision\n\n{jobs} jobs firing every second, {} ticks per variant, interleaved: {rounds} rounds of {per} ticks, \
         each round running every variant once in turn. \
         Lateness = the child's own CLOCK_REALTIME reading (its first act) minus the nominal tick. \
         Every variant runs the same child (`bench_stamp`, a std-only helper that appends one line with O_APPEND). \
         The floor is a minimal tokio program: one task per job sleeping until each whole second, then spawning the child; \
         the second floor spawns it as bgsched spawns a job (stdout and stderr piped and drained, its own process group, \
         PDEATHSIG), without a supervisor in between. \
         tokio-cron-scheduler: `Job::new_repeated_async(1s)` for `@every 1s`, `Job::new_async(\"* * * * * *\")` for the 6-field variant, \
         spawning the child from the callback; its nominal tick is the whole second the callback runs in \
         (it polls every 500 ms, so it is always less than 1 s late); since its lateness depends on the phase of that poll loop, \
         each of its rounds starts at another phase, evenly spread. \
         \"first child of a tick\" is the earliest child of each tick: the fixed cost of one fire without the queueing behind the others.\n\n",
        rounds * per
    );
    let tags: Vec<String> = (0..jobs).map(|i| format!("p{i:03}")).collect();
    let mut produced = true;
    for &sched in scheds {
        let mut segments: HashMap<Variant, Vec<Segment>> = HashMap::new();
        for round in 0..rounds {
            for variant in VARIANTS {
                eprintln!(
                    "bench: precision {} {} (round {}/{rounds})",
                    sched.bgsched(),
                    variant.label(),
                    round + 1
                );
                let segment = precision_run(ctx, variant, sched, &tags, per, (round, rounds))
                    .with_context(|| format!("{} on {:?}", variant.label(), sched.bgsched()))?;
                segments.entry(variant).or_default().push(segment);
            }
        }
        let results: Vec<Precision> = VARIANTS
            .iter()
            .map(|v| analyze_precision(*v, &segments[v], &tags))
            .collect();
        produced &= results.iter().all(|r| !r.lat.is_empty());
        let find = |v| results.iter().find(|r| r.variant == v).expect("ran");
        let (tcs, floor, setup) = (
            find(Variant::Tcs),
            find(Variant::Floor),
            find(Variant::FloorSetup),
        );
        let _ = writeln!(
            out,
            "### `{}` ({} for tokio-cron-scheduler)\n",
            sched.bgsched(),
            match sched {
                Sched::Every => "Job::new_repeated_async(1s)",
                Sched::Six => "\"* * * * * *\"",
            }
        );
        let mut t = Table::new(&[
            "variant",
            "fires / expected",
            "missed",
            "dup",
            "p50",
            "p99",
            "max",
            "first child of a tick: p50 / p99",
            "p50 ÷ tcs",
            "p99 ÷ tcs",
            "p50 ÷ floor",
            "p99 ÷ floor",
            "p50 ÷ floor with set-up",
            "targets",
        ]);
        for r in &results {
            let bg = matches!(r.variant, Variant::Standalone | Variant::Cluster);
            let ratio = |a: f64, b: f64| {
                if bg {
                    format!("{:.3}", a / b)
                } else {
                    "".into()
                }
            };
            let targets = match r.variant {
                Variant::Standalone | Variant::Cluster => {
                    let (limit, over_floor) = if r.variant == Variant::Standalone {
                        (5.0, 15.0)
                    } else {
                        (15.0, 25.0)
                    };
                    let faster = tcs.p50() / r.p50();
                    let mut said = format!(
                        "p99 ≤ {limit} ms: {}; p50 ≥ 50× lower than tcs ({faster:.0}×): {}; p50 ≤ floor + 2 ms ({:+.2} ms): {}",
                        verdict(r.p99() <= limit),
                        verdict(faster >= 50.0),
                        r.p50() - floor.p50(),
                        verdict(r.p50() - floor.p50() <= 2.0),
                    );
                    if r.variant == Variant::Standalone {
                        let _ = write!(
                            said,
                            "; p50 ≤ 2× floor ({:.2}×): {}",
                            r.p50() / floor.p50(),
                            verdict(r.p50() <= 2.0 * floor.p50())
                        );
                    }
                    let _ = write!(
                        said,
                        "; p99 ≤ floor p99 + {over_floor} ms ({:+.1} ms): {}",
                        r.p99() - floor.p99(),
                        verdict(r.p99() - floor.p99() <= over_floor)
                    );
                    said
                }
                _ => String::new(),
            };
            t.row(vec![
                r.variant.label().into(),
                format!("{} / {} ({} ticks)", r.fired, r.expected, r.ticks),
                r.missed.to_string(),
                r.dups.to_string(),
                ms(r.p50()),
                ms(r.p99()),
                ms(max_of(&r.lat)),
                format!("{} / {}", ms(pct(&r.first, 50.0)), ms(pct(&r.first, 99.0))),
                ratio(r.p50(), tcs.p50()),
                ratio(r.p99(), tcs.p99()),
                ratio(r.p50(), floor.p50()),
                ratio(r.p99(), floor.p99()),
                ratio(r.p50(), setup.p50()),
                targets,
            ]);
        }
        out.push_str(&t.render());
        out.push('\n');
    }
    if !produced {
        bail!("a precision variant recorded no fires:\n{out}");
    }
    Ok(out)
}

/// One variant's stretch of a precision round: its ledger and the ticks
/// measured in it.
struct Segment {
    ledger: PathBuf,
    window: (i128, i128),
}

fn precision_run(
    ctx: &mut Ctx,
    variant: Variant,
    sched: Sched,
    tags: &[String],
    secs: i128,
    (round, rounds): (i128, i128),
) -> Result<Segment> {
    let dir = ctx.scratch(&format!(
        "precision-{}-{}-{round}",
        sched.label(),
        variant.slug()
    ))?;
    let ledger = dir.join("ledger");
    let jobs = tags.len();
    let window = match variant {
        Variant::Standalone | Variant::Cluster => {
            let mut cfg = String::new();
            if variant == Variant::Cluster {
                let ep = ctx.endpoint();
                // A prefix per round: no last tick from the round before.
                let _ = writeln!(
                    cfg,
                    "[cluster]\netcd = [\"{ep}\"]\nprefix = \"/bench/precision-{}-{round}\"\n",
                    sched.label()
                );
            }
            for tag in tags {
                let _ = writeln!(
                    cfg,
                    "[jobs.{tag}]\nschedule = \"{}\"\n{}\n",
                    sched.bgsched(),
                    ctx.stamp_cmd(&ledger, tag)
                );
            }
            let cfg_path = dir.join("jobs.toml");
            fs::write(&cfg_path, cfg)?;
            let state = dir.join("state");
            let mut run = ctx.spawn_run(
                &cfg_path,
                (variant == Variant::Standalone).then_some(state.as_path()),
                "p",
                &dir.join("run.log"),
            )?;
            let lead = run.wait_log("leading: firing jobs", Duration::from_secs(30))?;
            let t0 = ceil_sec(lead.max(now_ns()) + SEC / 2);
            let t1 = t0 + (secs - 1) * SEC;
            wait_for_stamps(&ledger, jobs * secs as usize, t0, t1);
            run.stop();
            (t0, t1)
        }
        Variant::Floor | Variant::FloorSetup => {
            let t0 = ceil_sec(now_ns() + SEC + SEC / 2);
            let t1 = t0 + (secs - 1) * SEC;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.spawn(floor_loop(
                ctx.stamp.clone(),
                ledger.clone(),
                tags.to_vec(),
                (t0 - SEC, t1 + SEC),
                variant == Variant::FloorSetup,
            ));
            wait_for_stamps(&ledger, jobs * secs as usize, t0, t1);
            rt.shutdown_timeout(Duration::from_secs(5));
            (t0, t1)
        }
        Variant::Tcs => {
            // Its lateness depends on where its 500 ms poll loop falls
            // relative to the second, which is fixed when it starts (and
            // drifts by its processing time per round). Each round starts
            // it at another phase, evenly spread, so the figures are not
            // an accident of when the variant before it ended.
            let phase = round * (SEC / 2) / rounds + SEC / 40;
            let mut retried = false;
            loop {
                sleep_until_ns(ceil_sec(now_ns()) + phase);
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()?;
                let mut scheduler = rt.block_on(tcs_start(
                    ctx.stamp.clone(),
                    ledger.clone(),
                    tags.to_vec(),
                    sched,
                ))?;
                let t0 = ceil_sec(now_ns() + SEC + SEC / 2);
                let t1 = t0 + (secs - 1) * SEC;
                wait_for_stamps(&ledger, jobs * secs as usize, t0, t1);
                rt.block_on(scheduler.shutdown())
                    .map_err(|e| anyhow!("tokio-cron-scheduler shutdown: {e:?}"))?;
                rt.shutdown_timeout(Duration::from_secs(5));
                let fired = read_ledger(&ledger)
                    .iter()
                    .any(|s| s.tick.is_some_and(|t| (t0..=t1).contains(&t)));
                if !fired && !retried {
                    // Seen once on a loaded machine: a segment that fired
                    // nothing in its window. Give it one more chance.
                    eprintln!(
                        "bench: tokio-cron-scheduler fired nothing in a segment; retrying it"
                    );
                    retried = true;
                    continue;
                }
                break (t0, t1);
            }
        }
    };
    Ok(Segment { ledger, window })
}

/// A remote start (`run_on` placing the run on another member) against a
/// leader-local one: two replicas on this machine, the leader unlabelled
/// and the other `role = "worker"`, the jobs either `run_on = "leader"` or
/// `run_on = { labels = { role = "worker" } }`, interleaved by rounds.
fn placement(ctx: &mut Ctx) -> Result<String> {
    let (jobs, secs, rounds) = if ctx.quick { (3, 3, 1) } else { (10, 10, 4) };
    let tags: Vec<String> = (0..jobs).map(|i| format!("q{i:02}")).collect();
    let variants = [
        ("leader-local", "\"leader\""),
        (
            "remote (placed on the other member)",
            "{ labels = { role = \"worker\" } }",
        ),
    ];
    let mut lat: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut first: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut elsewhere = vec![0usize; variants.len()];
    let mut expected = 0;
    for round in 0..rounds {
        for (v, (label, run_on)) in variants.iter().enumerate() {
            eprintln!("bench: placement {label} (round {}/{rounds})", round + 1);
            let dir = ctx.scratch(&format!("placement-{v}-{round}"))?;
            let ledger = dir.join("ledger");
            let ep = ctx.endpoint();
            let mut cfg = format!(
                "[cluster]\netcd = [\"{ep}\"]\nprefix = \"/bench/placement-{v}-{round}\"\n\n"
            );
            for tag in &tags {
                let _ = writeln!(
                    cfg,
                    "[jobs.{tag}]\nschedule = \"@every 1s\"\nrun_on = {run_on}\n{}\n",
                    ctx.stamp_cmd(&ledger, tag)
                );
            }
            let lead_cfg = dir.join("lead.toml");
            fs::write(&lead_cfg, &cfg)?;
            let work_cfg = dir.join("worker.toml");
            fs::write(
                &work_cfg,
                format!("[member]\nlabels = {{ role = \"worker\" }}\n\n{cfg}"),
            )?;
            let mut lead = ctx.spawn_run(&lead_cfg, None, "lead", &dir.join("lead.log"))?;
            let at = lead.wait_log("leading: firing jobs", Duration::from_secs(30))?;
            let mut worker = ctx.spawn_run(&work_cfg, None, "worker", &dir.join("worker.log"))?;
            let joined = worker.wait_log("etcd session started", Duration::from_secs(30))?;
            // Two ticks for the leader to see the member and for its pool
            // of waiting supervisors to fill.
            let t0 = ceil_sec(at.max(joined).max(now_ns()) + 2 * SEC);
            let t1 = t0 + (secs - 1) * SEC;
            wait_for_stamps(&ledger, jobs * secs as usize, t0, t1);
            worker.stop();
            lead.stop();
            expected += jobs * secs as usize;
            let mut per_tick: HashMap<i128, f64> = HashMap::new();
            for s in read_ledger(&ledger) {
                let Some(tick) = s.tick.filter(|t| (t0..=t1).contains(t)) else {
                    continue;
                };
                let wanted = if v == 0 { "lead" } else { "worker" };
                if s.instance != wanted {
                    elsewhere[v] += 1;
                }
                let late = (s.at - tick) as f64 / MS;
                lat[v].push(late);
                let f = per_tick.entry(tick).or_insert(late);
                *f = f.min(late);
            }
            first[v].extend(per_tick.into_values());
        }
    }
    for v in lat.iter_mut().chain(first.iter_mut()) {
        v.sort_by(f64::total_cmp);
    }
    if lat.iter().any(|l| l.is_empty()) {
        bail!("a placement variant recorded no fires");
    }
    let mut out = format!(
        "## placement\n\n{jobs} jobs firing every second on two replicas on this machine, {rounds} interleaved rounds of {secs} ticks per variant. \
         Lateness = the child's own clock reading minus the tick, as in precision. Remote: the leader's claim places the run on the \
         other member, which sees its assignment through an etcd watch, renews the run's lease (a keepalive) \
         and hands it to a waiting supervisor.\n\n"
    );
    let mut t = Table::new(&[
        "variant",
        "fires / expected",
        "ran on the wrong member",
        "p50",
        "p99",
        "first child of a tick: p50 / p99",
        "p50 over leader-local",
        "target",
    ]);
    for (v, (label, _)) in variants.iter().enumerate() {
        let extra = pct(&lat[v], 50.0) - pct(&lat[0], 50.0);
        t.row(vec![
            (*label).into(),
            format!("{} / {}", lat[v].len(), expected / variants.len()),
            elsewhere[v].to_string(),
            ms(pct(&lat[v], 50.0)),
            ms(pct(&lat[v], 99.0)),
            format!(
                "{} / {}",
                ms(pct(&first[v], 50.0)),
                ms(pct(&first[v], 99.0))
            ),
            if v == 0 {
                String::new()
            } else {
                format!("{extra:+.2} ms")
            },
            if v == 0 {
                String::new()
            } else {
                format!("p50 ≤ +5 ms: {}", verdict(extra <= 5.0))
            },
        ]);
    }
    out.push_str(&t.render());
    out.push('\n');
    Ok(out)
}

/// Wait until `want` stamps with a tick in [t0, t1] are in, or t1 + 3 s.
fn wait_for_stamps(ledger: &Path, want: usize, t0: i128, t1: i128) {
    sleep_until_ns(t1 + SEC / 2);
    while now_ns() < t1 + 3 * SEC {
        let got = read_ledger(ledger)
            .iter()
            .filter(|s| s.tick.is_some_and(|t| (t0..=t1).contains(&t)))
            .count();
        if got >= want {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn analyze_precision(variant: Variant, segments: &[Segment], tags: &[String]) -> Precision {
    let ticks: usize = segments
        .iter()
        .map(|s| ((s.window.1 - s.window.0) / SEC + 1) as usize)
        .sum();
    let mut per: HashMap<(String, i128), usize> = HashMap::new();
    let mut first: HashMap<i128, f64> = HashMap::new();
    let mut lat = Vec::new();
    for segment in segments {
        let (t0, t1) = segment.window;
        for s in read_ledger(&segment.ledger) {
            let Some(tick) = s.tick.filter(|t| (t0..=t1).contains(t)) else {
                continue;
            };
            if !tags.contains(&s.tag) {
                continue;
            }
            *per.entry((s.tag, tick)).or_default() += 1;
            let late = (s.at - tick) as f64 / MS;
            lat.push(late);
            let f = first.entry(tick).or_insert(late);
            *f = f.min(late);
        }
    }
    lat.sort_by(f64::total_cmp);
    let mut first: Vec<f64> = first.into_values().collect();
    first.sort_by(f64::total_cmp);
    let expected = tags.len() * ticks;
    Precision {
        variant,
        ticks,
        expected,
        fired: lat.len(),
        missed: expected - per.len(),
        dups: per.values().map(|n| n - 1).sum(),
        lat,
        first,
    }
}

fn stamp_child(stamp: &[String], ledger: &Path, tag: &str, tick: i128) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(&stamp[0]);
    c.args(&stamp[1..])
        .arg(ledger)
        .arg(tag)
        .env("BGSCHED_SCHEDULED_AT", rfc3339_of(tick))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// The child as bgsched's supervisor spawns a job (`executor::attempt`):
/// output piped, a process group of its own, killed with its parent.
fn stamp_child_with_setup(
    stamp: &[String],
    ledger: &Path,
    tag: &str,
    tick: i128,
) -> tokio::process::Command {
    let mut c = stamp_child(stamp, ledger, tag, tick);
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: prctl is async-signal-safe and the closure allocates nothing.
    unsafe {
        c.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            Ok(())
        });
    }
    c
}

/// The floor: per job, sleep until each whole second and spawn the child
/// (`setup`: as bgsched spawns a job, draining its output).
async fn floor_loop(
    stamp: Vec<String>,
    ledger: PathBuf,
    tags: Vec<String>,
    (from, until): (i128, i128),
    setup: bool,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for tag in tags {
        let (stamp, ledger) = (stamp.clone(), ledger.clone());
        tasks.spawn(async move {
            let mut tick = ceil_sec(now_ns()).max(from);
            while tick <= until {
                let wait = tick - now_ns();
                if wait > 0 {
                    tokio::time::sleep(Duration::from_nanos(wait as u64)).await;
                }
                let mut cmd = if setup {
                    stamp_child_with_setup(&stamp, &ledger, &tag, tick)
                } else {
                    stamp_child(&stamp, &ledger, &tag, tick)
                };
                if let Ok(child) = cmd.spawn() {
                    tokio::spawn(child.wait_with_output());
                }
                tick += SEC;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

async fn tcs_start(
    stamp: Vec<String>,
    ledger: PathBuf,
    tags: Vec<String>,
    sched: Sched,
) -> Result<tokio_cron_scheduler::JobScheduler> {
    use tokio_cron_scheduler::{Job, JobScheduler};
    let err = |e: tokio_cron_scheduler::JobSchedulerError| anyhow!("tokio-cron-scheduler: {e:?}");
    let scheduler = JobScheduler::new().await.map_err(err)?;
    for tag in tags {
        let (stamp, ledger) = (stamp.clone(), ledger.clone());
        let run = move |_id, _sched| {
            let (stamp, ledger, tag) = (stamp.clone(), ledger.clone(), tag.clone());
            Box::pin(async move {
                // The tick it aimed at: the whole second it fires in.
                let tick = now_ns().div_euclid(SEC) * SEC;
                if let Ok(mut child) = stamp_child(&stamp, &ledger, &tag, tick).spawn() {
                    let _ = child.wait().await;
                }
            }) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        };
        let job = match sched {
            Sched::Every => Job::new_repeated_async(Duration::from_secs(1), run),
            Sched::Six => Job::new_async("* * * * * *", run),
        }
        .map_err(err)?;
        scheduler.add(job).await.map_err(err)?;
    }
    scheduler.start().await.map_err(err)?;
    Ok(scheduler)
}

// ---------------------------------------------------------------- failover

/// A change of `<prefix>/leader` as seen by an etcd watch from this process.
#[derive(Debug, Clone)]
struct LeaderEvent {
    at: i128,
    put: bool,
    /// The term (create revision) of a put; 0 for a delete.
    term: i64,
    instance: String,
}

/// Watches the leader key and records every change with the time it arrived.
struct LeaderWatch {
    events: Arc<Mutex<Vec<LeaderEvent>>>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaderWatch {
    fn start(rt: &tokio::runtime::Runtime, endpoint: String, key: String) -> Result<Self> {
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let task = rt.spawn(async move {
            let watch = async {
                let mut client = etcd_client::Client::connect([endpoint], None).await?;
                client.watch(key, None).await
            };
            let mut stream = match watch.await {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            while let Ok(Some(resp)) = stream.message().await {
                let at = now_ns();
                let mut sink = sink.lock().unwrap_or_else(|e| e.into_inner());
                for e in resp.events() {
                    let put = e.event_type() == etcd_client::EventType::Put;
                    let kv = e.kv();
                    let instance = kv
                        .and_then(|kv| serde_json::from_slice::<serde_json::Value>(kv.value()).ok())
                        .and_then(|v| v["instance"].as_str().map(str::to_string))
                        .unwrap_or_default();
                    sink.push(LeaderEvent {
                        at,
                        put,
                        term: if put {
                            kv.map_or(0, |kv| kv.create_revision())
                        } else {
                            0
                        },
                        instance,
                    });
                }
            }
        });
        match ready_rx.recv_timeout(Duration::from_secs(15)) {
            Ok(Ok(())) => Ok(LeaderWatch { events, task }),
            Ok(Err(e)) => bail!("etcd watch: {e}"),
            Err(_) => bail!("etcd watch did not start within 15 s"),
        }
    }

    fn events(&self) -> Vec<LeaderEvent> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The current leader, if the latest event is a put.
    fn current(&self) -> Option<LeaderEvent> {
        self.events().last().filter(|e| e.put).cloned()
    }
}

impl Drop for LeaderWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Poll `f` every 5 ms until it returns Some, for at most `within`.
fn poll<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

struct KillRep {
    elected_ms: f64,
    first_fire_ms: f64,
    caught_up: usize,
    missed: usize,
}

struct TermRep {
    resigned_ms: f64,
    elected_ms: f64,
    first_fire_ms: f64,
    missed: usize,
    exit_ms: f64,
}

fn failover(ctx: &mut Ctx) -> Result<String> {
    let (ttls, reps): (&[u64], usize) = if ctx.quick {
        (&[2], 2)
    } else {
        (&[2, 5, 10], 10)
    };
    let mut out = format!(
        "## failover\n\n3 replicas (`bgsched run`), one job `@every 1s`, local etcd; {reps} repetitions per case \
         (the stopped replica is restarted, and the new leader fires on time, before the next). \
         Election = arrival of the new `<prefix>/leader` put at an etcd watch in the harness; \
         fires from the job's ledger (the child's own clock). \
         Ticks in the gap between the old leader's last fire and the new leader's first on-time fire \
         are either caught up (one `catchup` run) or missed.\n\n"
    );
    let mut kill_t = Table::new(&[
        "lease_ttl",
        "kill -9 → new leader elected (median / max)",
        "kill -9 → first fire (median / max)",
        "target ≤ ttl + 1 s (max)",
        "ticks caught up per failover",
        "ticks missed per failover (median / max)",
        "duplicate fires",
    ]);
    let mut term_t = Table::new(&[
        "lease_ttl",
        "SIGTERM → leader key deleted (median / max)",
        "SIGTERM → new leader elected (median / max)",
        "target ≤ 250 ms (max)",
        "SIGTERM → first fire (median / max)",
        "ticks missed (total)",
        "SIGTERM → old leader exited (median)",
    ]);
    let mut details = String::new();
    for &ttl in ttls {
        eprintln!("bench: failover lease_ttl {ttl}s");
        let (kills, terms, dups) = failover_ttl(ctx, ttl, reps)?;
        if kills.is_empty() || terms.is_empty() {
            bail!("failover with lease_ttl {ttl}s produced no measurements");
        }
        let col = |f: &dyn Fn(&KillRep) -> f64| kills.iter().map(f).collect::<Vec<_>>();
        let elected = col(&|k| k.elected_ms);
        let first = col(&|k| k.first_fire_ms);
        let caught = col(&|k| k.caught_up as f64);
        let missed = col(&|k| k.missed as f64);
        kill_t.row(vec![
            format!("{ttl}s"),
            format!("{} / {}", secs(median(&elected)), secs(max_of(&elected))),
            format!("{} / {}", secs(median(&first)), secs(max_of(&first))),
            verdict(max_of(&first) <= (ttl as f64 + 1.0) * 1000.0).to_string(),
            format!(
                "{:.0}–{:.0}",
                caught.iter().copied().fold(f64::NAN, f64::min),
                max_of(&caught)
            ),
            format!("{:.0} / {:.0}", median(&missed), max_of(&missed)),
            dups.to_string(),
        ]);
        let tcol = |f: &dyn Fn(&TermRep) -> f64| terms.iter().map(f).collect::<Vec<_>>();
        let resigned = tcol(&|t| t.resigned_ms);
        let t_elected = tcol(&|t| t.elected_ms);
        let t_first = tcol(&|t| t.first_fire_ms);
        term_t.row(vec![
            format!("{ttl}s"),
            format!("{} / {}", secs(median(&resigned)), secs(max_of(&resigned))),
            format!(
                "{} / {}",
                secs(median(&t_elected)),
                secs(max_of(&t_elected))
            ),
            verdict(max_of(&t_elected) <= 250.0).to_string(),
            format!("{} / {}", secs(median(&t_first)), secs(max_of(&t_first))),
            terms.iter().map(|t| t.missed).sum::<usize>().to_string(),
            secs(median(&tcol(&|t| t.exit_ms))),
        ]);
        let _ = writeln!(
            details,
            "- ttl {ttl}s, kill -9 (elected / first fire / caught up / missed): {}",
            kills
                .iter()
                .map(|k| format!(
                    "{:.0}/{:.0} ms/{}/{}",
                    k.elected_ms, k.first_fire_ms, k.caught_up, k.missed
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(
            details,
            "- ttl {ttl}s, SIGTERM (deleted / elected / first fire, ms): {}",
            terms
                .iter()
                .map(|t| format!(
                    "{:.0}/{:.0}/{:.0}",
                    t.resigned_ms, t.elected_ms, t.first_fire_ms
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let _ = write!(
        out,
        "### kill -9 of the leader\n\n{}\n### SIGTERM of the leader (graceful handoff)\n\n{}\nFirst fire after SIGTERM waits for the next whole-second tick when no tick was missed.\n\nPer repetition:\n\n{details}",
        kill_t.render(),
        term_t.render()
    );
    Ok(out)
}

fn failover_ttl(
    ctx: &mut Ctx,
    ttl: u64,
    reps: usize,
) -> Result<(Vec<KillRep>, Vec<TermRep>, usize)> {
    let dir = ctx.scratch(&format!("failover-ttl{ttl}"))?;
    let ledger = dir.join("ledger");
    let prefix = format!("/bench/failover-ttl{ttl}");
    let ep = ctx.endpoint();
    let cfg = dir.join("jobs.toml");
    fs::write(
        &cfg,
        format!(
            "[cluster]\netcd = [\"{ep}\"]\nprefix = \"{prefix}\"\nlease_ttl = \"{ttl}s\"\n\n[jobs.beat]\nschedule = \"@every 1s\"\n{}\n",
            ctx.stamp_cmd(&ledger, "beat")
        ),
    )?;
    let watch = LeaderWatch::start(&ctx.rt, ep, format!("{prefix}/leader"))?;
    let log = |name: &str| dir.join(format!("{name}.log"));
    let mut replicas: BTreeMap<String, Bg> = BTreeMap::new();
    for name in ["a", "b", "c"] {
        replicas.insert(name.into(), ctx.spawn_run(&cfg, None, name, &log(name))?);
    }
    let patience = Duration::from_secs(ttl + 20);
    // A steady leader: elected, and two on-time fires of its own since.
    let steady = |watch: &LeaderWatch| -> Result<LeaderEvent> {
        poll(patience, || {
            let cur = watch.current()?;
            let fired = read_ledger(&ledger)
                .iter()
                .filter(|s| s.instance == cur.instance && s.trigger == "schedule" && s.at > cur.at)
                .count();
            (fired >= 2).then_some(cur)
        })
        .ok_or_else(|| anyhow!("no steady leader within {patience:?}"))
    };
    let mut kills = Vec::new();
    for rep in 0..reps {
        let cur = steady(&watch)?;
        let old = cur.instance.clone();
        let t = now_ns();
        replicas
            .get_mut(&old)
            .ok_or_else(|| anyhow!("leader {old:?} is not one of ours"))?
            .kill9();
        let elected = poll(patience, || {
            watch
                .events()
                .into_iter()
                .find(|e| e.at > t && e.put && e.term > cur.term)
        })
        .ok_or_else(|| anyhow!("kill -9 rep {rep}: no new leader within {patience:?}"))?;
        let first = poll(patience, || {
            read_ledger(&ledger)
                .into_iter()
                .find(|s| s.at > t && s.instance != old)
        })
        .ok_or_else(|| anyhow!("kill -9 rep {rep}: no fire by another replica"))?;
        let on_time = poll(Duration::from_secs(10), || {
            read_ledger(&ledger)
                .into_iter()
                .find(|s| s.at > t && s.instance == elected.instance && s.trigger == "schedule")
        })
        .ok_or_else(|| anyhow!("kill -9 rep {rep}: the new leader fired nothing on time"))?;
        let stamps = read_ledger(&ledger);
        let last_old = stamps
            .iter()
            .filter(|s| s.instance == old)
            .filter_map(|s| s.tick)
            .max()
            .unwrap_or(0);
        let f = on_time.tick.unwrap_or(0);
        let in_gap = |s: &&Stamp| s.tick.is_some_and(|x| x > last_old && x < f);
        let caught_up = stamps
            .iter()
            .filter(in_gap)
            .filter(|s| s.instance == elected.instance)
            .count();
        let gap = ((f - last_old) / SEC - 1).max(0) as usize;
        kills.push(KillRep {
            elected_ms: (elected.at - t) as f64 / MS,
            first_fire_ms: (first.at - t) as f64 / MS,
            caught_up,
            missed: gap.saturating_sub(caught_up),
        });
        let mut again = ctx.spawn_run(&cfg, None, &old, &log(&old))?;
        again.wait_log("standing by", patience)?;
        replicas.insert(old, again);
    }
    let mut terms = Vec::new();
    for rep in 0..reps {
        let cur = steady(&watch)?;
        let old = cur.instance.clone();
        let t = now_ns();
        replicas
            .get(&old)
            .ok_or_else(|| anyhow!("leader {old:?} is not one of ours"))?
            .signal(Signal::TERM);
        let events = poll(patience, || {
            let ev = watch.events();
            ev.iter()
                .any(|e| e.at > t && e.put && e.term > cur.term)
                .then_some(ev)
        })
        .ok_or_else(|| anyhow!("SIGTERM rep {rep}: no new leader within {patience:?}"))?;
        let deleted = events
            .iter()
            .find(|e| e.at > t && !e.put)
            .map_or(f64::NAN, |e| (e.at - t) as f64 / MS);
        let elected = events
            .iter()
            .find(|e| e.at > t && e.put && e.term > cur.term)
            .cloned()
            .expect("just found");
        let first = poll(patience, || {
            read_ledger(&ledger)
                .into_iter()
                .find(|s| s.at > t && s.instance != old)
        })
        .ok_or_else(|| anyhow!("SIGTERM rep {rep}: no fire by another replica"))?;
        let bg = replicas.get_mut(&old).expect("checked above");
        let exited = poll(Duration::from_secs(35), || (!bg.running()).then(now_ns));
        bg.stop();
        let stamps = read_ledger(&ledger);
        let last_old = stamps
            .iter()
            .filter(|s| s.instance == old)
            .filter_map(|s| s.tick)
            .max()
            .unwrap_or(0);
        let f = first.tick.unwrap_or(0);
        terms.push(TermRep {
            resigned_ms: deleted,
            elected_ms: (elected.at - t) as f64 / MS,
            first_fire_ms: (first.at - t) as f64 / MS,
            missed: ((f - last_old) / SEC - 1).max(0) as usize,
            exit_ms: exited.map_or(f64::NAN, |e| (e - t) as f64 / MS),
        });
        let mut again = ctx.spawn_run(&cfg, None, &old, &log(&old))?;
        again.wait_log("standing by", patience)?;
        replicas.insert(old, again);
    }
    for r in replicas.values_mut() {
        r.stop();
    }
    let mut per_tick: HashMap<i128, usize> = HashMap::new();
    for s in read_ledger(&ledger) {
        if let Some(t) = s.tick {
            *per_tick.entry(t).or_default() += 1;
        }
    }
    let dups = per_tick.values().map(|n| n - 1).sum();
    Ok((kills, terms, dups))
}

// ---------------------------------------------------------------- scale

const ZONES: [&str; 20] = [
    "UTC",
    "Europe/Berlin",
    "Europe/London",
    "Europe/Moscow",
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Los_Angeles",
    "America/Sao_Paulo",
    "Pacific/Honolulu",
    "Pacific/Auckland",
    "Australia/Sydney",
    "Australia/Lord_Howe",
    "Asia/Tokyo",
    "Asia/Shanghai",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Asia/Dubai",
    "Africa/Cairo",
    "Africa/Johannesburg",
];

/// `n` jobs: yearly, monthly and weekly 5-field crons, daily 6-field crons
/// and `@every` of 2 h to 2 days, over 20 time zones. None is due within
/// the next two hours (the hour is picked relative to the zone's current
/// hour; `@every` intervals are bumped until their next tick is an hour
/// away or more), so the measurement sees an idle scheduler. Compact (one
/// inline table per job, ~90 bytes: 100,000 jobs in 9 MiB), with a
/// relative command: `./s` (a link to the stamp helper) appending to `l`
/// in the config's directory, which the harness runs bgsched from.
fn scale_jobs(n: usize) -> String {
    let now = Utc::now();
    let now_s = now.timestamp();
    let hours: Vec<u32> = ZONES
        .iter()
        .map(|z| {
            let tz: chrono_tz::Tz = z.parse().expect("known zone");
            now.with_timezone(&tz).hour()
        })
        .collect();
    let mut out = String::with_capacity(n * 100);
    out.push_str("[jobs]\n");
    for i in 0..n {
        let z = i % ZONES.len();
        let h = (hours[z] + 3 + (i / ZONES.len() % 18) as u32) % 24;
        let (m, s, d, mon, dow) = (i * 7 % 60, i * 13 % 60, 1 + i % 28, 1 + i % 12, i % 7);
        let schedule = match i % 5 {
            0 => format!("{m} {h} {d} {mon} *"),
            1 => format!("{m} {h} {d} * *"),
            2 => format!("{s} {m} {h} * * *"),
            3 => format!("{m} {h} * * {dow}"),
            _ => {
                let mut p = 7200 + (i as i64 * 7919) % 165_600;
                while (now_s / p + 1) * p - now_s < 3600 {
                    p += 61;
                }
                format!("@every {p}s")
            }
        };
        let _ = writeln!(
            out,
            "j{i:06} = {{ schedule = \"{schedule}\", timezone = \"{}\", command = [\"./s\", \"l\"] }}",
            ZONES[z]
        );
    }
    out
}

struct Startup {
    lead_ms: f64,
    ready_ms: f64,
    rss_kb: u64,
    hwm_kb: u64,
    threads: u64,
}

/// Start `run`, wait for the leading line, then until its CPU time stops
/// growing (unchanged for 500 ms): that is when it is ready and idle.
fn start_and_settle(run: &mut Bg) -> Result<Startup> {
    let lead = run.wait_log("leading: firing jobs", Duration::from_secs(300))?;
    let mut last = run.cpu_ticks().unwrap_or(0);
    let mut changed = now_ns();
    let deadline = Instant::now() + Duration::from_secs(300);
    while now_ns() - changed < SEC / 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        let c = run
            .cpu_ticks()
            .ok_or_else(|| anyhow!("bgsched run exited: {}", tail(&run.log, 2000)))?;
        if c != last {
            last = c;
            changed = now_ns();
        }
    }
    let ready = changed.max(lead);
    let pid = run.pid();
    Ok(Startup {
        lead_ms: (lead - run.started_ns) as f64 / MS,
        ready_ms: (ready - run.started_ns) as f64 / MS,
        rss_kb: proc_status_kb(pid, "VmRSS:").unwrap_or(0),
        hwm_kb: proc_status_kb(pid, "VmHWM:").unwrap_or(0),
        threads: proc_status_kb(pid, "Threads:").unwrap_or(0),
    })
}

/// Wall time of a command (output discarded); error on failure or timeout.
fn timed(mut cmd: Command, within: Duration) -> Result<f64> {
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let t = Instant::now();
    let mut child = cmd.spawn()?;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if t.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(f64::INFINITY);
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let elapsed = t.elapsed().as_secs_f64() * 1000.0;
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        bail!("{cmd:?} failed ({status}): {err}");
    }
    Ok(elapsed)
}

fn mib(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}

fn wall(v_ms: f64, limit: Duration) -> String {
    if v_ms.is_infinite() {
        format!("> {} s (timed out)", limit.as_secs())
    } else {
        secs(v_ms)
    }
}

fn scale(ctx: &mut Ctx) -> Result<String> {
    let (sizes, idle): (&[usize], u64) = if ctx.quick {
        (&[1000], 5)
    } else {
        (&[1000, 10_000, 100_000], 60)
    };
    let list_limit = Duration::from_secs(if ctx.quick { 60 } else { 300 });
    let tck = clock_ticks_per_sec();
    let mut t = Table::new(&[
        "jobs",
        "config",
        "check",
        "start-up → \"leading\" line",
        "start-up → idle (ready)",
        "RSS after start",
        "peak RSS",
        "threads",
        "idle CPU",
        "list",
        "list --json",
        "cluster: start-up → idle",
        "cluster: RSS",
        "cluster: list",
        "fires during test",
    ]);
    let mut rows = Vec::new();
    for &n in sizes {
        eprintln!("bench: scale {n} jobs");
        let dir = ctx.scratch(&format!("scale-{n}"))?;
        let ledger = dir.join("l");
        let link = dir.join("s");
        if !link.exists() {
            std::os::unix::fs::symlink(&ctx.stamp[0], &link)?;
        }
        let jobs = scale_jobs(n);
        let cfg = dir.join("jobs.toml");
        fs::write(&cfg, &jobs)?;
        let ep = ctx.endpoint();
        let ccfg = dir.join("cluster.toml");
        fs::write(
            &ccfg,
            format!("[cluster]\netcd = [\"{ep}\"]\nprefix = \"/bench/scale-{n}\"\n\n{jobs}"),
        )?;
        let cfg_bytes = jobs.len();
        let state = dir.join("state");
        let state_arg = state.display().to_string();
        let check_ms = timed(ctx.bgsched(&cfg, &["check"]), list_limit)?;

        let mut run = ctx.spawn_run(&cfg, Some(&state), "s", &dir.join("run.log"))?;
        let st = start_and_settle(&mut run)?;
        let c0 = run.cpu_ticks().unwrap_or(0);
        std::thread::sleep(Duration::from_secs(idle));
        let c1 = run.cpu_ticks().unwrap_or(0);
        let idle_pct = (c1.saturating_sub(c0)) as f64 / tck / idle as f64 * 100.0;
        let list_ms = timed(
            ctx.bgsched(&cfg, &["--state-dir", &state_arg, "list"]),
            list_limit,
        )?;
        let json_ms = timed(
            ctx.bgsched(&cfg, &["--state-dir", &state_arg, "list", "--json"]),
            list_limit,
        )?;
        run.stop();

        let mut crun = ctx.spawn_run(&ccfg, None, "s", &dir.join("cluster.log"))?;
        let cst = start_and_settle(&mut crun)?;
        let clist_ms = timed(ctx.bgsched(&ccfg, &["list"]), list_limit)?;
        crun.stop();
        let fires = ledger_lines(&ledger);
        t.row(vec![
            format!("{n}"),
            mib(cfg_bytes as u64 / 1024),
            secs(check_ms),
            secs(st.lead_ms),
            secs(st.ready_ms),
            mib(st.rss_kb),
            mib(st.hwm_kb),
            st.threads.to_string(),
            format!("{idle_pct:.2} % of a core"),
            wall(list_ms, list_limit),
            wall(json_ms, list_limit),
            secs(cst.ready_ms),
            mib(cst.rss_kb),
            wall(clist_ms, list_limit),
            fires.to_string(),
        ]);
        rows.push((n, st, idle_pct, list_ms, check_ms, cst, clist_ms));
    }
    let mut out = format!(
        "## scale\n\nGenerated configs: yearly, monthly and weekly 5-field crons, daily 6-field crons and `@every` 2 h–2 d, \
         over 20 time zones, one inline table per job (~90 bytes); none due during the test. Standalone `run` on a fresh state directory; \
         start-up is from spawning the process; \"idle (ready)\" is when its CPU time stopped growing for 500 ms \
         (the \"leading\" line is logged before the per-job start-up work of the fire loop). \
         Idle CPU over {idle} s from /proc/<pid>/stat (utime+stime, {tck} ticks/s). \
         `check`/`list` output goes to /dev/null; `list` runs while the scheduler runs. \
         Cluster columns: the same jobs with `[cluster]` on the local etcd (empty prefix).\n\n{}\n",
        t.render()
    );
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        if last.0 > first.0 {
            let k = last.0 as f64 / first.0 as f64;
            let _ = writeln!(
                out,
                "Growth {}→{} jobs ({k:.0}× the jobs): check {:.1}×, start-up to idle {:.1}×, RSS {:.1}×, list {:.1}×, cluster list {:.1}×. \
                 Per job at {}: start-up {:.1} µs, RSS {:.2} KiB, list {:.1} µs, cluster list {:.1} µs.\n",
                first.0,
                last.0,
                last.4 / first.4,
                last.1.ready_ms / first.1.ready_ms,
                last.1.rss_kb as f64 / first.1.rss_kb as f64,
                last.3 / first.3,
                last.6 / first.6,
                last.0,
                last.1.ready_ms * 1000.0 / last.0 as f64,
                last.1.rss_kb as f64 / last.0 as f64,
                last.3 * 1000.0 / last.0 as f64,
                last.6 * 1000.0 / last.0 as f64,
            );
        }
    }
    if let Some(r) = rows.iter().find(|r| r.0 == 10_000) {
        let _ = writeln!(
            out,
            "Targets at 10,000 jobs: start-up ≤ 1 s: {} (\"leading\" line {}), {} (idle/ready {}); RSS ≤ 64 MiB: {} ({}); \
             idle CPU ≤ 1 %: {} ({:.2} %); `list` ≤ 1 s: {} ({}; cluster `list` {}).\n",
            verdict(r.1.lead_ms <= 1000.0),
            secs(r.1.lead_ms),
            verdict(r.1.ready_ms <= 1000.0),
            secs(r.1.ready_ms),
            verdict(r.1.rss_kb <= 64 * 1024),
            mib(r.1.rss_kb),
            verdict(r.2 <= 1.0),
            r.2,
            verdict(r.3 <= 1000.0),
            secs(r.3),
            wall(r.6, list_limit),
        );
    }
    Ok(out)
}

// ---------------------------------------------------------------- burst

struct Burst {
    cluster: bool,
    n: usize,
    lat: Vec<f64>,
    /// Tick → every supervisor exited (records written).
    done_ms: f64,
    /// Scheduler CPU during the burst, ms.
    cpu_ms: f64,
    /// etcd metric deltas (cluster only).
    metrics: BTreeMap<String, f64>,
}

fn burst(ctx: &mut Ctx) -> Result<String> {
    let n = ctx.burst_jobs.unwrap_or(if ctx.quick { 100 } else { 1000 });
    let mut out = format!(
        "## burst\n\n{n} jobs due on the same second (a 6-field cron naming that second), fired once. \
         Lateness per job as in precision (the child's own clock minus the tick). \
         \"records written\" = every run's supervisor has exited.\n\n"
    );
    let runs = [burst_run(ctx, n, false)?, burst_run(ctx, n, true)?];
    let mut t = Table::new(&[
        "mode",
        "started / jobs",
        "first child",
        "p50",
        "p99",
        "last child started",
        "target ≤ 1 s",
        "records written",
        "scheduler CPU",
    ]);
    for r in &runs {
        if r.lat.is_empty() {
            bail!(
                "burst ({}) started nothing",
                if r.cluster { "cluster" } else { "standalone" }
            );
        }
        let last = max_of(&r.lat);
        t.row(vec![
            if r.cluster { "cluster" } else { "standalone" }.into(),
            format!("{} / {}", r.lat.len(), r.n),
            secs(r.lat[0]),
            secs(pct(&r.lat, 50.0)),
            secs(pct(&r.lat, 99.0)),
            secs(last),
            verdict(last <= 1000.0 && r.lat.len() == r.n).into(),
            secs(r.done_ms),
            secs(r.cpu_ms),
        ]);
    }
    out.push_str(&t.render());
    let c = &runs[1];
    let per = |k: &str| c.metrics.get(k).copied().unwrap_or(0.0) / c.n as f64;
    let write_methods = ["Put", "DeleteRange", "Txn", "LeaseGrant", "LeaseRevoke"];
    let writes = write_methods
        .iter()
        .map(|m| per(&format!("rpc {m}")))
        .sum::<f64>();
    let breakdown = write_methods
        .iter()
        .map(|m| (m, per(&format!("rpc {m}"))))
        .filter(|(_, v)| *v > 0.0)
        .map(|(m, v)| format!("{m} {v:.2}"))
        .collect::<Vec<_>>()
        .join(" + ");
    let _ = writeln!(
        out,
        "\n### etcd requests per fire (cluster, from etcd's /metrics, {n} fires)\n"
    );
    let mut m = Table::new(&["metric", "total", "per fire"]);
    for (k, v) in c.metrics.iter().filter(|(k, _)| !k.ends_with("_sum")) {
        m.row(vec![
            format!("`{k}`"),
            format!("{v:.0}"),
            format!("{:.2}", v / c.n as f64),
        ]);
    }
    out.push_str(&m.render());
    let _ = writeln!(
        out,
        "\nWrite RPCs per fire: {writes:.2} ({breakdown}); \
         raft proposals per fire: {:.2}. Target ≤ 2 etcd write round trips per fire: {}.\n\
         (`rpc X` = `grpc_server_started_total` by method; streams such as LeaseKeepAlive and Watch count once per stream. \
         The counts include the background traffic of the one replica during the burst.)\n",
        per("etcd_server_proposals_committed_total"),
        verdict(writes <= 2.0)
    );
    let avg = |sum: &str, count: &str| {
        let n = c.metrics.get(count).copied().unwrap_or(0.0);
        c.metrics.get(sum).copied().unwrap_or(0.0) / n * 1000.0
    };
    let _ = writeln!(
        out,
        "etcd's own disk time during the burst: WAL fsync {} on average, backend commit {} on average.\n",
        ms(avg(
            "etcd_disk_wal_fsync_duration_seconds_sum",
            "etcd_disk_wal_fsync_duration_seconds_count"
        )),
        ms(avg(
            "etcd_disk_backend_commit_duration_seconds_sum",
            "etcd_disk_backend_commit_duration_seconds_count"
        )),
    );
    out.push_str(&etcd_round_trips(ctx)?);
    Ok(out)
}

/// Sequential round trips of the requests on bgsched's fire path, from a
/// client on this machine to the local etcd: what one fire costs at least.
fn etcd_round_trips(ctx: &mut Ctx) -> Result<String> {
    use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
    let ep = ctx.endpoint();
    let n = if ctx.quick { 10 } else { 100 };
    let rows = ctx.rt.block_on(async move {
        let mut c = Client::connect([ep.clone()], None).await?;
        let key = "/bench/rtt/key";
        let mut m: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        let mut time = |name, t: Instant| {
            m.entry(name)
                .or_default()
                .push(t.elapsed().as_secs_f64() * 1000.0)
        };
        for i in 0..n {
            let t = Instant::now();
            let lease = c.lease_grant(10, None).await?.id();
            time("LeaseGrant (scheduler, per fire)", t);
            let t = Instant::now();
            let txn = Txn::new()
                .when([Compare::version(key, CompareOp::Greater, -1)])
                .and_then([
                    TxnOp::put(
                        key,
                        format!("{i}"),
                        Some(PutOptions::new().with_lease(lease)),
                    ),
                    TxnOp::put(format!("{key}-2"), format!("{i}"), None),
                ]);
            c.txn(txn).await?;
            time("Txn with two puts (raw, for reference)", t);
            let t = Instant::now();
            let mut fresh = Client::connect([ep.clone()], None).await?;
            fresh.lease_keep_alive(lease).await?;
            time(
                "new connection + LeaseKeepAlive (supervisor, before the job starts)",
                t,
            );
            let t = Instant::now();
            c.put(key, "x", Some(PutOptions::new().with_lease(lease)))
                .await?;
            time("Put", t);
            let t = Instant::now();
            c.get(key, None).await?;
            time("Range", t);
            let t = Instant::now();
            c.lease_revoke(lease).await?;
            time("LeaseRevoke", t);
        }
        claim_round_trips(&ep, n, &mut m).await?;
        Ok::<_, anyhow::Error>(m)
    })?;
    let mut t = Table::new(&["request", "p50", "p99"]);
    for (name, mut v) in rows {
        v.sort_by(f64::total_cmp);
        t.row(vec![name.to_string(), ms(pct(&v, 50.0)), ms(pct(&v, 99.0))]);
    }
    Ok(format!(
        "### etcd round trips on this machine ({n} sequential requests each, same local etcd)\n\n{}",
        t.render()
    ))
}

/// The claim as the scheduler makes it: bgsched's etcd backend claiming
/// `n` fires in turn (each a job of its own, so each one fires), with a
/// spare run lease granted ahead as `Coordinator::prepare` does before a
/// tick.
async fn claim_round_trips(ep: &str, n: usize, m: &mut BTreeMap<&str, Vec<f64>>) -> Result<()> {
    use bgsched::config::{ClusterSettings, Overlap};
    use bgsched::coordination::etcd::EtcdConfig;
    use bgsched::coordination::{ClaimRequest, Coordinator, Etcd, Trigger};
    let mut cluster = ClusterSettings::with_defaults(vec![ep.to_string()]);
    cluster.prefix = "/bench/claims".into();
    let etcd = Etcd::connect(EtcdConfig::from_settings(&cluster, 10)).await?;
    let lead = etcd.acquire_leadership("bench").await?;
    let tick = Utc::now();
    let mut claims = Vec::with_capacity(n);
    for i in 0..n {
        etcd.prepare(1).await;
        let job = format!("claim-{i}");
        let t = Instant::now();
        let claim = etcd
            .claim(
                &lead,
                ClaimRequest {
                    job: &job,
                    tick,
                    trigger: Trigger::Schedule,
                    instance: "bench",
                    overlap: Overlap::Skip,
                    advances_schedule: true,
                    request: None,
                    group: None,
                    upstream: None,
                    run_on: &bgsched::config::RunOn::Leader,
                    placement: None,
                    params: None,
                    first_attempt: None,
                },
            )
            .await
            .map_err(|e| anyhow!("claim of {job}: {e:?}"))?;
        m.entry("the claim (bgsched's claim transaction, a spare lease ready)")
            .or_default()
            .push(t.elapsed().as_secs_f64() * 1000.0);
        claims.push(claim);
    }
    drop(claims);
    etcd.resign(lead).await;
    Ok(())
}

fn burst_run(ctx: &mut Ctx, n: usize, cluster: bool) -> Result<Burst> {
    let mode = if cluster { "cluster" } else { "standalone" };
    eprintln!("bench: burst {mode} ({n} jobs)");
    let dir = ctx.scratch(&format!("burst-{mode}"))?;
    let ledger = dir.join("ledger");
    let lead_time = if ctx.quick { 2 } else { 5 };
    let tick = ceil_sec(now_ns() + lead_time * SEC);
    let at = DateTime::from_timestamp((tick / SEC) as i64, 0).expect("valid time");
    let schedule = format!("{} {} {} * * *", at.second(), at.minute(), at.hour());
    let mut cfg = String::new();
    let port = if cluster {
        let ep = ctx.endpoint();
        let _ = writeln!(
            cfg,
            "[cluster]\netcd = [\"{ep}\"]\nprefix = \"/bench/burst\"\n"
        );
        Some(ctx.etcd().client_port())
    } else {
        None
    };
    let tags: Vec<String> = (0..n).map(|i| format!("b{i:04}")).collect();
    for tag in &tags {
        let _ = writeln!(
            cfg,
            "[jobs.{tag}]\nschedule = \"{schedule}\"\ntimezone = \"UTC\"\n{}\n",
            ctx.stamp_cmd(&ledger, tag)
        );
    }
    let cfg_path = dir.join("jobs.toml");
    fs::write(&cfg_path, cfg)?;
    let state = dir.join("state");
    let mut run = ctx.spawn_run(
        &cfg_path,
        (!cluster).then_some(state.as_path()),
        "burst",
        &dir.join("run.log"),
    )?;
    let lead = run.wait_log("leading: firing jobs", Duration::from_secs(30))?;
    if lead > tick - SEC / 2 {
        bail!(
            "the scheduler led only {} ms before the burst tick",
            (tick - lead) / 1_000_000
        );
    }
    sleep_until_ns(tick - SEC / 3);
    let before = match port {
        Some(p) => scrape_metrics(p)?,
        None => BTreeMap::new(),
    };
    let cpu0 = run.cpu_ticks().unwrap_or(0);
    poll(Duration::from_secs(60), || {
        (ledger_lines(&ledger) >= n).then_some(())
    });
    let pid = run.pid();
    let done = poll(Duration::from_secs(120), || {
        (children_of(pid) == 0).then(now_ns)
    });
    let done_ms = done.map_or(f64::NAN, |d| (d - tick) as f64 / MS);
    let cpu1 = run.cpu_ticks().unwrap_or(cpu0);
    let metrics = match port {
        Some(p) => {
            // Records are written by the supervisors; give the leader's
            // background tasks a moment to settle, then read the counters.
            std::thread::sleep(Duration::from_millis(300));
            let after = scrape_metrics(p)?;
            after
                .iter()
                .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
                .filter(|(_, d)| *d != 0.0)
                .collect()
        }
        None => BTreeMap::new(),
    };
    run.stop();
    let mut lat: Vec<f64> = read_ledger(&ledger)
        .iter()
        .filter(|s| s.tick == Some(tick))
        .map(|s| (s.at - tick) as f64 / MS)
        .collect();
    lat.sort_by(f64::total_cmp);
    Ok(Burst {
        cluster,
        n,
        lat,
        done_ms,
        cpu_ms: (cpu1.saturating_sub(cpu0)) as f64 / clock_ticks_per_sec() * 1000.0,
        metrics,
    })
}

/// Live child processes of `pid` (its supervisors).
fn children_of(pid: i32) -> usize {
    let Ok(dir) = fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| {
            fs::read_to_string(e.path().join("stat")).is_ok_and(|s| {
                s.rsplit_once(')').is_some_and(|(_, rest)| {
                    let f: Vec<&str> = rest.split_whitespace().collect();
                    f.first() != Some(&"Z")
                        && f.get(1).and_then(|p| p.parse::<i32>().ok()) == Some(pid)
                })
            })
        })
        .count()
}

/// Selected counters from etcd's /metrics; gRPC calls summed per method.
fn scrape_metrics(port: u16) -> Result<BTreeMap<String, f64>> {
    let (status, body) = etcd::http(port, "GET", "/metrics", None)?;
    if status != 200 {
        bail!("etcd /metrics: HTTP {status}");
    }
    const KEEP: [&str; 9] = [
        "etcd_server_proposals_committed_total",
        "etcd_debugging_mvcc_txn_total",
        "etcd_debugging_mvcc_put_total",
        "etcd_debugging_mvcc_delete_total",
        "etcd_debugging_mvcc_range_total",
        "etcd_disk_wal_fsync_duration_seconds_count",
        "etcd_disk_wal_fsync_duration_seconds_sum",
        "etcd_disk_backend_commit_duration_seconds_count",
        "etcd_disk_backend_commit_duration_seconds_sum",
    ];
    let mut out = BTreeMap::new();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if let Some(labels) = name.strip_prefix("grpc_server_started_total{") {
            if let Some(method) = labels
                .split(',')
                .find_map(|l| l.strip_prefix("grpc_method=\""))
                .map(|m| m.trim_end_matches(['"', '}']))
            {
                *out.entry(format!("rpc {method}")).or_insert(0.0) += value;
            }
        } else if KEEP.contains(&name) {
            *out.entry(name.to_string()).or_insert(0.0) += value;
        }
    }
    Ok(out)
}
