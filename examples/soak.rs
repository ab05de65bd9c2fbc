//! Fault-injection soak for bgsched's cluster mode.
//!
//! ```text
//! scripts/soak [--duration 2m] [--seed N] [--replicas 3] [--etcd single|cluster|both] [--keep]
//! cargo run --example soak -- ...      (needs target/debug/bgsched built; scripts/soak builds it)
//! ```
//!
//! Starts real etcd (one server, a 3-member cluster, or first one then the
//! other: `--etcd both`, the default, splits `--duration` in two halves) and
//! N real `bgsched run` replicas (`$BGSCHED_BIN`, else `target/debug/bgsched`
//! next to this example's binary). Every replica reaches etcd only through
//! its own TCP proxy in this process (one listening port per etcd member),
//! which can pass, blackhole (forward nothing either way, keep and accept
//! sockets) or reset (RST every connection, old and new).
//!
//! While the soak runs, faults are injected one at a time at random
//! intervals from a seeded RNG (the seed is printed first; `--seed` replays
//! the same sequence of fault choices, though not the timing of the system
//! under test): kill -9 of the leader or of a follower (restarted after
//! 0.5-4 s), SIGTERM of the leader (restarted once it exited), SIGSTOP of the
//! leader for lease_ttl + 1-3 s, a proxy blackhole or reset of one replica
//! for 1-6 s, and etcd faults (single: stop, restart after 2-6 s; cluster:
//! kill a follower member or the raft leader, restart after 2-6 s; the two
//! others keep a quorum).
//!
//! The jobs (the same config for every replica, lease_ttl 2s) append to one
//! ledger per phase, one `echo >>` (O_APPEND, atomic for short lines) per event:
//!
//! ```text
//! start <job> <tick> <run_id> <trigger> <instance> <token> <unix_ns> <pid>
//! end   <job> <tick> <run_id> <instance> <token> <unix_ns> <exit|killed>
//! ```
//!
//! Every other scheduled job (`beat`, `long`, and `ga` of the group) has
//! `run_on = "any"`: the leader places its runs on a live member, so
//! `<instance>` is the member that executed the run and `<token>` the term
//! of the leader that claimed it. The others (`cron6`, `slowpoke`, `gb`)
//! and the service stay with the leader, so their instance is the leader of
//! their term. `<unix_ns>` (and the times of the other ledgers) is the true
//! clock, also on the skewed replica (`date` runs without its libfaketime).
//!
//! A monitor thread tails the ledger and polls `/proc/<pid>` of every run's
//! job process (the leader of the job's process group) every 20 ms, so runs
//! that die without an `end` line (SIGKILL by self-fencing) still have an
//! observed end.
//!
//! # Verifier rules
//!
//! - **Due ticks**: the schedules are fixed (every 1 s, every even second,
//!   every 1 s, every multiple of 3 s, all epoch-aligned), counted from 2 s
//!   after the first leader was elected to 1 s before the final SIGTERM.
//! - **Fired twice** (must be 0): two `start` lines with the same (job, tick),
//!   anywhere in the ledger.
//! - **Overlaps** (must be 0): all four jobs have `overlap = "skip"` (the
//!   default; `long` explicitly). A run's end is at least max(its `end` line,
//!   the last moment the monitor saw its process alive); a run starting
//!   before that of an earlier-started run of the same job is a definite
//!   overlap. A run whose end is unknown (no `end` line, never seen alive and
//!   never seen dead) is reported separately.
//! - **Stale term** (must be 0): per job, runs ordered by tick; the fencing
//!   token never decreases.
//! - **Missed ticks**: a due tick is fired (a `start` line), skipped (a
//!   bgsched `skipped` record for it), or unfired. Consecutive unfired ticks
//!   form an outage; it was caught up if the next tick was fired or skipped
//!   with trigger `catchup`. Every unfired tick must be covered by a
//!   bgsched `missed` record (or a record of a claimed run that never ran);
//!   no tick may be covered by two `missed`/`skipped` records, and no tick
//!   that ran may be recorded `missed` (all must be 0).
//! - **etcd member faults that keep quorum** (`etcd follower kill`, `etcd
//!   leader kill` of one member of three, must be 0): no tick from 1 s
//!   before the kill to `lease_ttl` after the member is back may go unfired,
//!   except, for a leader kill, ticks up to `lease_ttl` after the survivors
//!   had a raft leader, and those only when their outage was caught up.
//!   A tick that also falls inside a fault of another kind (the leader
//!   paused, killed or cut off just after the member came back) is left to
//!   that fault; it must still be accounted for by a record.
//! - **Who led a term**: only what stays with the leader names it: the
//!   runs and records of the jobs kept on the leader (their instance), the
//!   service's records, and etcd's leader key read at each fault. **Terms
//!   with two leaders** (must be 0): a term named with two instances by
//!   these (a job kept on the leader ran elsewhere).
//! - **Skewed clock**: with 3 or more replicas, the last one runs with its
//!   wall clock `--skew` off (default +1h, through libfaketime) and is
//!   started once a leader is elected. It may execute placed runs (their
//!   ticks come from the leader; the times of the records it writes are
//!   put back by `--skew` for the checks), but it must never lead: **terms
//!   led by the skewed replica** must be 0.
//! - **Placement**: the runs of the `run_on = "any"` jobs per executing
//!   member, and the time two or more members were up (not killed,
//!   stopped, cut off from etcd, nor all of them by an etcd outage). The
//!   soak fails if over the whole soak those jobs ran on fewer than two
//!   members while two or more were up more than half of the time.
//! - **Failover gaps**: per fault, injection to the first `start` after it
//!   of a run claimed after it (a larger token than the leader's before the
//!   fault, or a tick after the injection: a run the leader placed just
//!   before may start on another member after the leader's fault), and for
//!   leader faults to the first `start` carrying a larger fencing token
//!   than any before the fault (a new term).
//! - **Service** (`svc`, `@continuous`, must be 0): its instances, told
//!   apart by (pid, run id) in its heartbeat ledger (`beat <pid> <run_id>
//!   <instance> <unix_ns>` every 0.1 s), never beat at the same time: each
//!   one's first beat comes after the previous one's last. It must also
//!   have run at all; the longest gap between instances is reported.
//! - **Concurrency group** (`ga`, `gb`, `@every 1s` each, 0.4 s of work,
//!   in `[groups.gsoak] limit = 1`, must be 0): by their own ledger
//!   (`gstart`/`gend <job> <run_id> <instance> <unix_ns>`, the end also
//!   written on SIGTERM), no run of the group starts before the one before
//!   it ended; a run with no end line (SIGKILLed) is reported apart. The
//!   group must also have run.
//! - **Orphans** (must be 0): after all replicas exited (plus 2 s), any live
//!   process whose environment carries this phase's `SOAK_TAG` or whose
//!   command line names the phase directory.
//! - **History cross-check** (`<prefix>/history/` via the etcd HTTP gateway):
//!   every ledger run has a record with its run id, tick, term, instance and
//!   trigger, and outcome success (timed_out for slowpoke); a lost/killed
//!   outcome is "explained" when a proxy cut of the replica that executed
//!   it or an etcd fault overlaps the run. Every success record has a ledger
//!   start line. Records of runs that never started (a placed run whose
//!   member did not take it over is recorded `lost` by the leader when its
//!   marker expires, as a claimed run the leader never started) are
//!   classified as explained (a fault hit the member it was placed on, the
//!   leader that claimed it, or etcd around then) or not; the tick rules
//!   count them as records of their ticks either way.
//!
//! Exit status: 0 when every must-be-0 figure is 0 and something fired; 1
//! otherwise; 130 on Ctrl-C. The temp dir is kept (and printed) on failure
//! or with `--keep`.

#[path = "../tests/common/etcd.rs"]
mod etcd;

use clap::{Parser, ValueEnum};
use rustix::process::{Pid, Signal};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The replicas' `lease_ttl`.
const TTL: Duration = Duration::from_secs(2);
/// Quiet time at the end of each phase before the replicas are stopped.
const SETTLE: Duration = Duration::from_secs(5);
/// Due ticks are counted from this long after the first leader...
const MARGIN_START_S: i64 = 2;
/// ...to this long before the final SIGTERM.
const MARGIN_END_S: i64 = 1;
/// How often the monitor polls the job processes.
const MONITOR_EVERY: Duration = Duration::from_millis(20);
/// No fault is started unless this much time is left before the settle.
const LONGEST_FAULT: Duration = Duration::from_secs(9);
const NS: i64 = 1_000_000_000;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

#[derive(Parser, Debug)]
#[command(about = "Fault-injection soak for bgsched's cluster mode")]
struct Args {
    /// Total soak time (split in halves with --etcd both).
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// RNG seed (printed at start; default: random).
    #[arg(long)]
    seed: Option<u64>,
    /// Number of `bgsched run` replicas.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Which etcd setup to soak against.
    #[arg(long, value_enum, default_value_t = EtcdMode::Both)]
    etcd: EtcdMode,
    /// Keep the temp dir (ledgers, configs, replica logs) even on success.
    #[arg(long)]
    keep: bool,
    /// BGSCHED_LOG for the replicas.
    #[arg(long, default_value = "info")]
    log: String,
    /// libfaketime offset of the last replica's wall clock (with 3 or more
    /// replicas), e.g. "+1h"; "none" for none. That replica is started
    /// once a leader is elected and must never lead.
    #[arg(long, default_value = "+1h")]
    skew: String,
}

/// Debian's `faketime` package.
const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum EtcdMode {
    Single,
    Cluster,
    Both,
}

// ---------------------------------------------------------------- jobs

struct JobDef {
    name: &'static str,
    /// Seconds between ticks (all four schedules are epoch-aligned).
    period: i64,
    /// Extra TOML lines of the job table.
    toml: &'static str,
    /// Seconds the job sleeps.
    sleep: &'static str,
    /// The outcome bgsched should record when nothing interferes.
    expect: &'static str,
    /// `run_on = "any"`: the leader places its runs on any live member
    /// (else they run on the leader, the default).
    placed: bool,
}

const JOBS: [JobDef; 4] = [
    JobDef {
        name: "beat",
        period: 1,
        toml: "schedule = \"@every 1s\"\n",
        sleep: "0",
        expect: "success",
        placed: true,
    },
    JobDef {
        name: "cron6",
        period: 2,
        toml: "schedule = \"*/2 * * * * *\"\n",
        sleep: "0",
        expect: "success",
        placed: false,
    },
    JobDef {
        name: "long",
        period: 1,
        toml: "schedule = \"@every 1s\"\noverlap = \"skip\"\n",
        sleep: "3",
        expect: "success",
        placed: true,
    },
    JobDef {
        name: "slowpoke",
        period: 3,
        toml: "schedule = \"@every 3s\"\ntimeout = \"1s\"\nkill_grace = \"1s\"\n",
        sleep: "5",
        expect: "timed_out",
        placed: false,
    },
];

fn job_def(name: &str) -> Option<&'static JobDef> {
    JOBS.iter().find(|j| j.name == name)
}

/// Every time in the ledgers is the machine's true clock: `date` runs
/// without the skewed replica's libfaketime (which its supervisors and
/// jobs inherit), so runs placed on that replica compare with the others'.
const JOB_SCRIPT: &str = r#"#!/bin/sh
# bgsched soak job: $1 = seconds to sleep. One appended line per event.
trap 'echo "end $BGSCHED_JOB $BGSCHED_SCHEDULED_AT $BGSCHED_RUN_ID $BGSCHED_INSTANCE $BGSCHED_FENCING_TOKEN $(env -u LD_PRELOAD date +%s%N) killed" >> "$SOAK_LEDGER"; exit 143' TERM
echo "start $BGSCHED_JOB $BGSCHED_SCHEDULED_AT $BGSCHED_RUN_ID $BGSCHED_TRIGGER $BGSCHED_INSTANCE $BGSCHED_FENCING_TOKEN $(env -u LD_PRELOAD date +%s%N) $$" >> "$SOAK_LEDGER"
if [ "$1" != 0 ]; then sleep "$1"; fi
echo "end $BGSCHED_JOB $BGSCHED_SCHEDULED_AT $BGSCHED_RUN_ID $BGSCHED_INSTANCE $BGSCHED_FENCING_TOKEN $(env -u LD_PRELOAD date +%s%N) 0" >> "$SOAK_LEDGER"
"#;

/// The `@continuous` service every phase also runs: one heartbeat line
/// (`beat <pid> <run_id> <instance> <unix_ns>`) every 0.1 s to its own
/// ledger, while it runs.
const SERVICE: &str = "svc";
const SERVICE_SCRIPT: &str = r#"#!/bin/sh
# bgsched soak service: a heartbeat every 0.1 s while it runs.
while :; do
  echo "beat $$ $BGSCHED_RUN_ID $BGSCHED_INSTANCE $(env -u LD_PRELOAD date +%s%N)" >> "$SOAK_SERVICE_LEDGER"
  sleep 0.1
done
"#;

/// The jobs of the soak's concurrency group, which never run together:
/// (name, `run_on = "any"`).
const GROUP_JOBS: [(&str, bool); 2] = [("ga", true), ("gb", false)];
const GROUP_SCRIPT: &str = r#"#!/bin/sh
# bgsched soak group job: 0.4 s of work between a start and an end line.
trap 'echo "gend $BGSCHED_JOB $BGSCHED_RUN_ID $BGSCHED_INSTANCE $(env -u LD_PRELOAD date +%s%N)" >> "$SOAK_GROUP_LEDGER"; exit 143' TERM
echo "gstart $BGSCHED_JOB $BGSCHED_RUN_ID $BGSCHED_INSTANCE $(env -u LD_PRELOAD date +%s%N)" >> "$SOAK_GROUP_LEDGER"
sleep 0.4
echo "gend $BGSCHED_JOB $BGSCHED_RUN_ID $BGSCHED_INSTANCE $(env -u LD_PRELOAD date +%s%N)" >> "$SOAK_GROUP_LEDGER"
"#;

/// The `run_on` line of a job: `"any"` when placed, none (the leader) else.
fn run_on(placed: bool) -> &'static str {
    if placed {
        "run_on = \"any\"\n"
    } else {
        ""
    }
}

fn config_text(
    ports: &[u16],
    prefix: &str,
    script: &Path,
    ledger: &Path,
    service: (&Path, &Path),
    group: (&Path, &Path),
) -> String {
    let endpoints = ports
        .iter()
        .map(|p| format!("\"http://127.0.0.1:{p}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut text = format!(
        "# written by the bgsched soak\n[scheduler]\nshutdown_grace = \"10s\"\nhistory = 100000\n\n\
         [cluster]\netcd = [{endpoints}]\nprefix = \"{prefix}\"\nlease_ttl = \"{}s\"\n\n\
         [defaults]\ntimezone = \"UTC\"\n",
        TTL.as_secs()
    );
    for job in &JOBS {
        let _ = write!(
            text,
            "\n[jobs.{}]\n{}{}command = [\"/bin/sh\", \"{}\", \"{}\"]\nenv = {{ SOAK_LEDGER = \"{}\" }}\n",
            job.name,
            job.toml,
            run_on(job.placed),
            script.display(),
            job.sleep,
            ledger.display()
        );
    }
    let _ = write!(
        text,
        "\n[jobs.{SERVICE}]\nschedule = \"@continuous\"\nretry_backoff = \"1s\"\nkill_grace = \"1s\"\n\
         command = [\"/bin/sh\", \"{}\"]\nenv = {{ SOAK_SERVICE_LEDGER = \"{}\" }}\n",
        service.0.display(),
        service.1.display()
    );
    let _ = write!(text, "\n[groups.gsoak]\nlimit = 1\n");
    for (job, placed) in GROUP_JOBS {
        let _ = write!(
            text,
            "\n[jobs.{job}]\nschedule = \"@every 1s\"\ngroup = \"gsoak\"\nkill_grace = \"1s\"\n{}\
             command = [\"/bin/sh\", \"{}\"]\nenv = {{ SOAK_GROUP_LEDGER = \"{}\" }}\n",
            run_on(placed),
            group.0.display(),
            group.1.display()
        );
    }
    text
}

// ---------------------------------------------------------------- small helpers

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as i64
}

fn secs(ns: i64) -> f64 {
    ns as f64 / NS as f64
}

/// Sleep, but give up (by panicking, so that every guard cleans up) on Ctrl-C.
fn pause(d: Duration) {
    let end = Instant::now() + d;
    loop {
        if INTERRUPTED.load(Ordering::SeqCst) {
            panic!("interrupted");
        }
        let now = Instant::now();
        if now >= end {
            return;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

fn pause_until(t: Instant) {
    pause(t.saturating_duration_since(Instant::now()));
}

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn secs(&mut self, lo: f64, hi: f64) -> Duration {
        Duration::from_secs_f64(lo + (hi - lo) * self.unit())
    }
}

fn signal(pid: i32, sig: Signal) {
    if let Some(p) = Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// (state, starttime) of a process, from /proc.
fn proc_state(pid: i32) -> Option<(char, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// Live processes whose environment has `SOAK_TAG=<tag>...` (prefix match)
/// or whose command line mentions `path`: (pid, ppid, command line).
fn tagged_processes(tag: &str, path: &Path) -> Vec<(i32, i32, String)> {
    let needle = format!("SOAK_TAG={tag}");
    let path = path.display().to_string();
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rsplit_once(')').map(|r| r.1) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        if f.next() == Some("Z") {
            continue;
        }
        let ppid: i32 = f.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .replace('\0', " ")
                    .trim()
                    .to_string()
            })
            .unwrap_or_default();
        let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let tagged = environ
            .split(|&b| b == 0)
            .any(|v| v.starts_with(needle.as_bytes()));
        if tagged || cmdline.contains(&path) {
            found.push((pid, ppid, cmdline));
        }
    }
    found
}

/// Kills every process of this soak that is still around, by pid, when dropped.
struct Reaper {
    tag: String,
    root: PathBuf,
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for _ in 0..3 {
            let left = tagged_processes(&self.tag, &self.root);
            if left.is_empty() {
                return;
            }
            for (pid, _, _) in left {
                signal(pid, Signal::CONT);
                signal(pid, Signal::KILL);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

// ---------------------------------------------------------------- etcd access

enum Store {
    Single(etcd::Etcd),
    Cluster(etcd::EtcdCluster),
}

impl Store {
    fn ports(&self) -> Vec<u16> {
        match self {
            Store::Single(e) => vec![e.client_port()],
            Store::Cluster(c) => c.members().iter().map(|m| m.client_port()).collect(),
        }
    }

    fn live_ports(&mut self) -> Vec<u16> {
        match self {
            Store::Single(e) => {
                if e.running() {
                    vec![e.client_port()]
                } else {
                    vec![]
                }
            }
            Store::Cluster(c) => (0..c.members().len())
                .filter_map(|i| {
                    let m = c.member(i);
                    m.running().then(|| m.client_port())
                })
                .collect(),
        }
    }

    /// Range over `key` (or every key under it) through the first live
    /// member that answers.
    fn range(&mut self, key: &str, prefix: bool, timeout: Duration) -> io::Result<Vec<KeyValue>> {
        let mut last = io::Error::other("no etcd member is running");
        for port in self.live_ports() {
            match gw_range(port, key, prefix, timeout) {
                Ok(kvs) => return Ok(kvs),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The `instance` in `<prefix>/leader` and its term (the key's create
    /// revision), if readable and present.
    fn leader(&mut self, prefix: &str) -> Option<(String, u64)> {
        let kvs = self
            .range(&format!("{prefix}/leader"), false, Duration::from_secs(2))
            .ok()?;
        let kv = kvs.first()?;
        let json: serde_json::Value = serde_json::from_slice(&kv.value).ok()?;
        Some((json["instance"].as_str()?.to_string(), kv.create_revision))
    }
}

struct KeyValue {
    key: String,
    value: Vec<u8>,
    create_revision: u64,
}

/// A minimal HTTP/1.0 POST to 127.0.0.1:`port`: (status, body).
fn http_post(port: u16, path: &str, body: &str, timeout: Duration) -> io::Result<(u16, String)> {
    etcd::http_within(port, "POST", path, Some(body), timeout)
}

/// `POST /v3/kv/range` through etcd's HTTP/JSON gateway.
fn gw_range(port: u16, key: &str, prefix: bool, timeout: Duration) -> io::Result<Vec<KeyValue>> {
    let mut body = format!(r#"{{"key":"{}""#, etcd::base64_encode(key.as_bytes()));
    if prefix {
        let mut end = key.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let _ = write!(body, r#","range_end":"{}""#, etcd::base64_encode(&end));
    }
    body.push('}');
    let (status, reply) = http_post(port, "/v3/kv/range", &body, timeout)?;
    if status != 200 {
        return Err(io::Error::other(format!("HTTP {status}: {reply}")));
    }
    let json: serde_json::Value = serde_json::from_str(&reply)
        .map_err(|e| io::Error::other(format!("range reply is not JSON ({e})")))?;
    let mut out = Vec::new();
    for kv in json["kvs"].as_array().into_iter().flatten() {
        let key = etcd::base64_decode(kv["key"].as_str().unwrap_or(""))
            .ok_or_else(|| io::Error::other("bad base64 key"))?;
        let value = etcd::base64_decode(kv["value"].as_str().unwrap_or(""))
            .ok_or_else(|| io::Error::other("bad base64 value"))?;
        // int64 fields come as JSON strings from the gateway.
        let create_revision = match &kv["create_revision"] {
            serde_json::Value::String(s) => s.parse().unwrap_or(0),
            v => v.as_u64().unwrap_or(0),
        };
        out.push(KeyValue {
            key: String::from_utf8_lossy(&key).into_owned(),
            value,
            create_revision,
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------- proxies

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Pass,
    /// Forward nothing, in either direction; keep (and accept) connections.
    Blackhole,
    /// Reset every connection, current and new.
    Reset,
}

/// One listening port forwarding to one etcd member.
struct Proxy {
    port: u16,
    mode: tokio::sync::watch::Sender<Mode>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    fn start(rt: &tokio::runtime::Runtime, upstream: u16) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a proxy port");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let port = listener.local_addr().expect("proxy address").port();
        let (mode, rx) = tokio::sync::watch::channel(Mode::Pass);
        let accept = rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            loop {
                let client = match listener.accept().await {
                    Ok((client, _)) => client,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                if *rx.borrow() == Mode::Reset {
                    let _ = client.set_zero_linger();
                    continue;
                }
                tokio::spawn(proxy_connection(client, upstream, rx.clone()));
            }
        });
        Proxy { port, mode, accept }
    }

    fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.mode.send_replace(Mode::Reset);
        self.accept.abort();
    }
}

async fn proxy_connection(
    client: tokio::net::TcpStream,
    upstream: u16,
    mode: tokio::sync::watch::Receiver<Mode>,
) {
    let connect = tokio::net::TcpStream::connect(("127.0.0.1", upstream));
    let server = match tokio::time::timeout(Duration::from_secs(2), connect).await {
        Ok(Ok(server)) => server,
        _ => {
            // Upstream is down: the client sees its connection reset.
            let _ = client.set_zero_linger();
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    // When either direction ends, the connection ends (both sockets drop).
    tokio::select! {
        () = pump(cr, sw, mode.clone()) => {}
        () = pump(sr, cw, mode) => {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: tokio::sync::watch::Receiver<Mode>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let reset = |from: &tokio::net::tcp::OwnedReadHalf, to: &tokio::net::tcp::OwnedWriteHalf| {
        // Closing with SO_LINGER 0 sends RST on both sockets.
        let _ = from.as_ref().set_zero_linger();
        let _ = to.as_ref().set_zero_linger();
    };
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        if !passing(&mut mode).await {
            return reset(&from, &to);
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            () = until_reset(&mut mode) => return reset(&from, &to),
        };
        // Data read just before a blackhole is held until it heals.
        if !passing(&mut mode).await {
            return reset(&from, &to);
        }
        tokio::select! {
            r = to.write_all(&buf[..n]) => if r.is_err() { return },
            () = until_reset(&mut mode) => return reset(&from, &to),
        }
    }
}

/// Wait while blackholed; true for pass, false for reset (or proxy gone).
async fn passing(mode: &mut tokio::sync::watch::Receiver<Mode>) -> bool {
    match mode.wait_for(|m| *m != Mode::Blackhole).await {
        Ok(m) => *m == Mode::Pass,
        Err(_) => false,
    }
}

async fn until_reset(mode: &mut tokio::sync::watch::Receiver<Mode>) {
    let _ = mode.wait_for(|m| *m == Mode::Reset).await;
}

// ---------------------------------------------------------------- replicas

struct Replica {
    instance: String,
    config: PathBuf,
    log: PathBuf,
    state_dir: PathBuf,
    tag: String,
    child: Option<Child>,
    /// A libfaketime offset for its wall clock (timers keep the monotonic one).
    fake_clock: Option<String>,
}

impl Replica {
    fn spawn(&mut self, ctx: &Ctx) {
        assert!(self.child.is_none(), "{} already running", self.instance);
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("replica log");
        let _ = writeln!(
            log,
            "--- soak: starting {} at {:.3} ---",
            self.instance,
            secs(now_ns())
        );
        let mut cmd = Command::new(&ctx.bin);
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(["run", "--instance-id", &self.instance]);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("BGSCHED_") {
                cmd.env_remove(key);
            }
        }
        if let Some(offset) = &self.fake_clock {
            // Its supervisors and jobs inherit it, as on a host whose clock
            // is off.
            cmd.env("LD_PRELOAD", FAKETIME_LIB)
                .env("FAKETIME", offset)
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        cmd.env("BGSCHED_LOG", &ctx.log_level)
            .env("SOAK_TAG", &self.tag)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("replica log"))
            .stderr(log)
            // Its own group: a Ctrl-C at the terminal reaches only the soak,
            // which then stops everything itself.
            .process_group(0);
        // SAFETY: prctl is async-signal-safe and the closure does nothing else.
        // Spawned from the main thread, so the replica dies with the soak.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", ctx.bin.display()));
        self.child = Some(child);
    }

    fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    fn signal(&self, sig: Signal) {
        if let Some(pid) = self.pid() {
            signal(pid, sig);
        }
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Wait up to `within` for the process to exit; None if it did not.
    fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + within;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Some(status) if it exited on its own.
    fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(status)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id() as i32, Signal::CONT);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------- process monitor

#[derive(Debug, Clone, Default)]
struct Watch {
    pid: i32,
    starttime: Option<u64>,
    /// Last poll that found the job process alive (taken before the poll).
    last_alive: Option<i64>,
    /// First poll that found it gone (taken after the poll).
    dead_at: Option<i64>,
}

/// Tails a ledger and follows the job process of every `start` line.
struct Monitor {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<HashMap<String, Watch>>>,
}

impl Monitor {
    fn start(ledger: PathBuf) -> Monitor {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut watches: HashMap<String, Watch> = HashMap::new();
            let mut offset = 0u64;
            let mut partial: Vec<u8> = Vec::new();
            loop {
                let stopping = flag.load(Ordering::SeqCst);
                if let Ok(mut f) = fs::File::open(&ledger) {
                    if f.seek(SeekFrom::Start(offset)).is_ok() {
                        let mut fresh = Vec::new();
                        if f.read_to_end(&mut fresh).is_ok() {
                            offset += fresh.len() as u64;
                            partial.extend_from_slice(&fresh);
                        }
                    }
                }
                while let Some(i) = partial.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = partial.drain(..=i).collect();
                    let line = String::from_utf8_lossy(&line);
                    if let Some(s) = parse_start(line.trim_end()) {
                        watches.entry(s.run_id).or_insert(Watch {
                            pid: s.pid,
                            ..Watch::default()
                        });
                    }
                }
                let before = now_ns();
                for w in watches.values_mut().filter(|w| w.dead_at.is_none()) {
                    match proc_state(w.pid) {
                        Some((state, start))
                            if state != 'Z' && w.starttime.is_none_or(|s| s == start) =>
                        {
                            w.starttime = Some(start);
                            w.last_alive = Some(before);
                        }
                        _ => w.dead_at = Some(now_ns()),
                    }
                }
                if stopping {
                    return watches;
                }
                std::thread::sleep(MONITOR_EVERY);
            }
        });
        Monitor {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> HashMap<String, Watch> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------- ledger and history

#[derive(Debug, Clone)]
struct Start {
    job: String,
    tick: i64,
    run_id: String,
    trigger: String,
    instance: String,
    token: u64,
    at: i64,
    pid: i32,
}

#[derive(Debug, Clone)]
struct End {
    at: i64,
    exit: String,
}

fn rfc3339_ns(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()?
        .timestamp_nanos_opt()
}

fn parse_start(line: &str) -> Option<Start> {
    let f: Vec<&str> = line.split(' ').collect();
    if f.len() != 9 || f[0] != "start" {
        return None;
    }
    Some(Start {
        job: f[1].to_string(),
        tick: rfc3339_ns(f[2])? / NS,
        run_id: f[3].to_string(),
        trigger: f[4].to_string(),
        instance: f[5].to_string(),
        token: f[6].parse().ok()?,
        at: f[7].parse().ok()?,
        pid: f[8].parse().ok()?,
    })
}

fn parse_end(line: &str) -> Option<(String, End)> {
    let f: Vec<&str> = line.split(' ').collect();
    if f.len() != 8 || f[0] != "end" {
        return None;
    }
    Some((
        f[3].to_string(),
        End {
            at: f[6].parse().ok()?,
            exit: f[7].to_string(),
        },
    ))
}

/// One bgsched history record (the fields the verifier uses).
#[derive(Debug, Clone)]
struct Rec {
    run_id: String,
    job: String,
    tick: i64,
    trigger: String,
    instance: String,
    term: u64,
    outcome: String,
    started_at: Option<i64>,
    ended_at: Option<i64>,
    missed_ticks: u64,
    reason: String,
}

/// A libfaketime relative offset (`+1h`, `-30m`, `+90`: seconds unless
/// suffixed m, h, d or y), in ns.
fn faketime_offset(s: &str) -> Option<i64> {
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1.0, &s[1..]),
        b'-' => (-1.0, &s[1..]),
        _ => return None,
    };
    let (number, unit) = match rest.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&rest[..i], c),
        _ => (rest, 's'),
    };
    let scale = match unit {
        's' => 1.0,
        'm' => 60.0,
        'h' => 3600.0,
        'd' => 86_400.0,
        'y' => 365.0 * 86_400.0,
        _ => return None,
    };
    let n: f64 = number.parse().ok()?;
    Some((sign * n * scale * NS as f64) as i64)
}

/// A record's times on the true clock. A record the skewed replica wrote
/// (of a run placed on it) has its times `offset` off, while the leader's
/// records of such runs (`lost` when their marker expired) have the true
/// clock: a time nearer the run's tick without the offset had it.
fn unskew(x: &mut Rec, offset: i64) {
    let tick = x.tick * NS;
    for t in [&mut x.started_at, &mut x.ended_at].into_iter().flatten() {
        if (*t - offset - tick).abs() < (*t - tick).abs() {
            *t -= offset;
        }
    }
}

fn parse_rec(v: &serde_json::Value) -> Option<Rec> {
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    Some(Rec {
        run_id: s("run_id"),
        job: s("job"),
        tick: rfc3339_ns(v["tick"].as_str()?)? / NS,
        trigger: s("trigger"),
        instance: s("instance"),
        term: v["term"].as_u64().unwrap_or(0),
        outcome: s("outcome"),
        started_at: v["started_at"].as_str().and_then(rfc3339_ns),
        ended_at: v["ended_at"].as_str().and_then(rfc3339_ns),
        missed_ticks: v["missed_ticks"].as_u64().unwrap_or(0),
        reason: s("reason"),
    })
}

// ---------------------------------------------------------------- faults

#[derive(Debug, Clone)]
struct Fault {
    id: usize,
    phase: &'static str,
    kind: &'static str,
    /// Replica instance or etcd member name.
    target: String,
    /// The replica it hit, if any.
    instance: Option<String>,
    /// It hit the bgsched leader.
    on_leader: bool,
    /// It cut the target's (or everyone's) etcd connectivity.
    cuts_etcd: bool,
    /// It hit etcd itself (affects every replica).
    on_etcd: bool,
    leader_before: Option<String>,
    /// The leader's term when the fault was injected.
    term_before: Option<u64>,
    injected: i64,
    healed: i64,
    /// An etcd member fault that kept a quorum: no tick may be lost to it.
    quorum_kept: bool,
    /// For an etcd leader kill: when the survivors had a raft leader (ns).
    elected: Option<i64>,
    note: String,
}

impl Fault {
    fn affects(&self, instance: &str) -> bool {
        self.on_etcd || self.instance.as_deref() == Some(instance)
    }

    fn overlaps(&self, from: i64, to: i64) -> bool {
        self.injected - NS <= to && from <= self.healed + 2 * TTL.as_nanos() as i64
    }
}

// ---------------------------------------------------------------- the soak

struct Ctx {
    bin: PathBuf,
    root: PathBuf,
    run_tag: String,
    rng: Rng,
    rt: tokio::runtime::Runtime,
    replicas: usize,
    log_level: String,
    /// The last replica's clock offset, if any (see `Args::skew`).
    skew: Option<String>,
    epoch: i64,
    next_fault: usize,
}

impl Ctx {
    fn rel(&self, ns: i64) -> f64 {
        secs(ns - self.epoch)
    }

    fn say(&self, msg: &str) {
        println!("[{:>7.2}s] {msg}", self.rel(now_ns()));
        let _ = io::stdout().flush();
    }
}

struct Phase {
    name: &'static str,
    dir: PathBuf,
    prefix: String,
    tag: String,
    store: Store,
    proxies: Vec<Vec<Proxy>>,
    replicas: Vec<Replica>,
    faults: Vec<Fault>,
    anomalies: Vec<String>,
}

/// Everything the verifier looks at, for one phase.
/// One run of a job of the soak's concurrency group.
#[derive(Debug, Clone)]
struct GroupRun {
    job: String,
    run_id: String,
    instance: String,
    start: i64,
    /// Its end line (`None`: SIGKILLed, or still running at the end).
    end: Option<i64>,
}

struct PhaseData {
    name: &'static str,
    /// The service's heartbeats: (pid, run id, instance, unix ns).
    beats: Vec<(i32, String, String, i64)>,
    /// Its records.
    service_records: Vec<Rec>,
    /// The concurrency group's runs, by its ledger.
    group_runs: Vec<GroupRun>,
    /// The group's records (checked by its ledger; those of the job kept on
    /// the leader name the leader of their term).
    group_records: Vec<Rec>,
    /// The replicas' instances.
    members: Vec<String>,
    /// The replica whose wall clock is off (`--skew`), if any.
    skewed: Option<String>,
    /// From when the first leader was elected to the final SIGTERM (unix ns).
    span: (i64, i64),
    /// Due ticks are counted in [lo, hi] (unix seconds).
    window: (i64, i64),
    starts: Vec<Start>,
    ends: HashMap<String, End>,
    malformed: Vec<String>,
    watches: HashMap<String, Watch>,
    history: Option<Vec<Rec>>,
    history_error: String,
    faults: Vec<Fault>,
    anomalies: Vec<String>,
    orphans: Vec<String>,
    /// etcd's overload warnings (late heartbeats, slow applies): machine load.
    etcd_slow: u64,
}

/// One line per ledger run: what the ledger, the monitor and bgsched say.
fn write_runs_table(
    path: &Path,
    starts: &[Start],
    ends: &HashMap<String, End>,
    watches: &HashMap<String, Watch>,
    history: Option<&[Rec]>,
) {
    let recs: HashMap<&str, &Rec> = history
        .unwrap_or(&[])
        .iter()
        .map(|x| (x.run_id.as_str(), x))
        .collect();
    let opt = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
    let mut out = String::from(
        "job\ttick\trun_id\ttrigger\tinstance\ttoken\tpid\tstart_ns\tend_line_ns\texit\tlast_seen_alive_ns\tseen_dead_ns\toutcome\trecord_ended_ns\n",
    );
    for s in starts {
        let e = ends.get(&s.run_id);
        let w = watches.get(&s.run_id);
        let x = recs.get(s.run_id.as_str());
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            s.job,
            s.tick,
            s.run_id,
            s.trigger,
            s.instance,
            s.token,
            s.pid,
            s.at,
            opt(e.map(|e| e.at)),
            e.map_or("-", |e| e.exit.as_str()),
            opt(w.and_then(|w| w.last_alive)),
            opt(w.and_then(|w| w.dead_at)),
            x.map_or("-", |x| x.outcome.as_str()),
            opt(x.and_then(|x| x.ended_at)),
        );
    }
    let _ = fs::write(path, out);
}

impl Phase {
    fn instance_index(&self, instance: &str) -> Option<usize> {
        self.replicas.iter().position(|r| r.instance == instance)
    }

    /// The current bgsched leader's replica index, waiting up to `within`.
    fn wait_leader(&mut self, within: Duration) -> Option<usize> {
        self.wait_leader_term(within).map(|(i, _)| i)
    }

    /// The current bgsched leader's replica index and term.
    fn wait_leader_term(&mut self, within: Duration) -> Option<(usize, u64)> {
        let end = Instant::now() + within;
        loop {
            if let Some(found) = self
                .store
                .leader(&self.prefix)
                .and_then(|(l, term)| Some((self.instance_index(&l)?, term)))
            {
                return Some(found);
            }
            if Instant::now() > end {
                return None;
            }
            pause(Duration::from_millis(100));
        }
    }

    /// Restart replicas that exited although no fault stopped them.
    fn revive(&mut self, ctx: &Ctx) {
        for i in 0..self.replicas.len() {
            if let Some(status) = self.replicas[i].exited() {
                let msg = format!(
                    "{} exited on its own ({status}); restarted it (see {})",
                    self.replicas[i].instance,
                    self.replicas[i].log.display()
                );
                ctx.say(&format!("ANOMALY: {msg}"));
                self.anomalies.push(msg);
                self.replicas[i].spawn(ctx);
            }
        }
    }

    /// Pick and inject one fault, recover from it, and describe it.
    fn inject(&mut self, ctx: &mut Ctx) -> Option<Fault> {
        // Always five draws, so a seed replays the same choices.
        let draws = [
            ctx.rng.unit(),
            ctx.rng.unit(),
            ctx.rng.unit(),
            ctx.rng.unit(),
            ctx.rng.unit(),
        ];
        let category = ((draws[0] * 5.0) as usize).min(4);
        let leader_side = draws[1] < 0.6 || self.replicas.len() == 1;
        let pick = draws[2];
        let span = |lo: f64, hi: f64| Duration::from_secs_f64(lo + (hi - lo) * draws[3]);
        let mut f = Fault {
            id: ctx.next_fault,
            phase: self.name,
            kind: "",
            target: String::new(),
            instance: None,
            on_leader: false,
            cuts_etcd: false,
            on_etcd: false,
            leader_before: None,
            term_before: None,
            injected: 0,
            healed: 0,
            quorum_kept: false,
            elected: None,
            note: String::new(),
        };
        let leader_term = self.wait_leader_term(Duration::from_secs(10));
        let leader = leader_term.map(|(i, _)| i);
        f.leader_before = leader.map(|i| self.replicas[i].instance.clone());
        f.term_before = leader_term.map(|(_, t)| t);
        // The replica to hit, for replica faults.
        let replica = |leader_side: bool| -> Option<(usize, bool)> {
            if leader_side {
                return leader.map(|i| (i, true));
            }
            let others: Vec<usize> = (0..self.replicas.len())
                .filter(|&i| Some(i) != leader)
                .collect();
            let i = others[((pick * others.len() as f64) as usize).min(others.len() - 1)];
            Some((i, false))
        };
        match category {
            // kill -9, restart after 0.5-4 s.
            0 => {
                let (i, on_leader) = replica(leader_side)?;
                f.kind = if on_leader {
                    "kill -9 leader"
                } else {
                    "kill -9 follower"
                };
                f.on_leader = on_leader;
                f.target = self.replicas[i].instance.clone();
                f.instance = Some(f.target.clone());
                let down = span(0.5, 4.0);
                f.injected = now_ns();
                self.replicas[i].kill9();
                pause(down);
                self.replicas[i].spawn(ctx);
                f.healed = now_ns();
                f.note = format!("down {:.2}s", down.as_secs_f64());
            }
            // SIGTERM of the leader, restart once it exited.
            1 => {
                let (i, _) = replica(true)?;
                f.kind = "SIGTERM leader";
                f.on_leader = true;
                f.target = self.replicas[i].instance.clone();
                f.instance = Some(f.target.clone());
                f.injected = now_ns();
                self.replicas[i].signal(Signal::TERM);
                match self.replicas[i].wait_exit(Duration::from_secs(30)) {
                    Some(status) => {
                        f.note = format!(
                            "exited after {:.2}s ({status})",
                            secs(now_ns() - f.injected)
                        );
                        if !status.success() {
                            self.anomalies.push(format!(
                                "fault #{}: {} exited with {status} after SIGTERM",
                                f.id, f.target
                            ));
                        }
                    }
                    None => {
                        f.note = "did not exit within 30 s of SIGTERM; killed".into();
                        self.anomalies.push(format!(
                            "fault #{}: {} ignored SIGTERM for 30 s",
                            f.id, f.target
                        ));
                        self.replicas[i].kill9();
                    }
                }
                self.replicas[i].spawn(ctx);
                f.healed = now_ns();
            }
            // SIGSTOP of the leader for lease_ttl + 1-3 s.
            2 => {
                let (i, _) = replica(true)?;
                f.kind = "SIGSTOP leader";
                f.on_leader = true;
                f.target = self.replicas[i].instance.clone();
                f.instance = Some(f.target.clone());
                let stopped = TTL + span(1.0, 3.0);
                f.injected = now_ns();
                self.replicas[i].signal(Signal::STOP);
                pause(stopped);
                self.replicas[i].signal(Signal::CONT);
                f.healed = now_ns();
                f.note = format!("stopped {:.2}s", stopped.as_secs_f64());
            }
            // Cut one replica (and its supervisors) off etcd for 1-6 s.
            3 => {
                let (i, on_leader) = replica(leader_side)?;
                let reset = draws[4] < 0.5;
                f.kind = match (reset, on_leader) {
                    (false, true) => "blackhole leader",
                    (false, false) => "blackhole follower",
                    (true, true) => "reset leader",
                    (true, false) => "reset follower",
                };
                f.on_leader = on_leader;
                f.cuts_etcd = true;
                f.target = self.replicas[i].instance.clone();
                f.instance = Some(f.target.clone());
                let cut = span(1.0, 6.0);
                f.injected = now_ns();
                for p in &self.proxies[i] {
                    p.set(if reset { Mode::Reset } else { Mode::Blackhole });
                }
                pause(cut);
                for p in &self.proxies[i] {
                    p.set(Mode::Pass);
                }
                f.healed = now_ns();
                f.note = format!("cut {:.2}s", cut.as_secs_f64());
            }
            // etcd itself.
            _ => {
                let down = span(2.0, 6.0);
                f.on_etcd = true;
                f.cuts_etcd = true;
                match &mut self.store {
                    Store::Single(e) => {
                        f.kind = "etcd stop/restart";
                        f.target = e.name().to_string();
                        f.injected = now_ns();
                        e.stop();
                        pause_until(Instant::now() + down.saturating_sub(dur_since(f.injected)));
                        e.restart();
                    }
                    Store::Cluster(c) => {
                        let raft_leader = c.leader();
                        let n = c.members().len();
                        let (i, kind) = match raft_leader {
                            Some(l) if leader_side => (l, "etcd leader kill"),
                            Some(l) => {
                                let others: Vec<usize> = (0..n).filter(|&i| i != l).collect();
                                let i = others
                                    [((pick * others.len() as f64) as usize).min(others.len() - 1)];
                                (i, "etcd follower kill")
                            }
                            None => (((pick * n as f64) as usize).min(n - 1), "etcd member kill"),
                        };
                        // One member of three: the other two keep a quorum.
                        f.quorum_kept = raft_leader.is_some();
                        f.kind = kind;
                        f.target = c.members()[i].name().to_string();
                        f.injected = now_ns();
                        c.kill_member(i);
                        // How long the survivors take to have a raft leader.
                        let until = Instant::now() + down;
                        let mut elected = None;
                        while Instant::now() < until {
                            if c.leader().is_some() {
                                elected = Some(dur_since(f.injected));
                                if kind == "etcd leader kill" {
                                    f.elected = Some(now_ns());
                                }
                                break;
                            }
                            pause(Duration::from_millis(100));
                        }
                        f.note = match elected {
                            Some(d) => format!(
                                "raft leader among survivors after {:.2}s; ",
                                d.as_secs_f64()
                            ),
                            None => "NO raft leader among survivors while it was down; ".into(),
                        };
                        pause_until(until);
                        c.restart_member(i);
                    }
                }
                f.healed = now_ns();
                f.note = format!(
                    "{}down {:.2}s, healthy again after {:.2}s",
                    f.note,
                    down.as_secs_f64(),
                    secs(f.healed - f.injected)
                );
            }
        }
        ctx.next_fault += 1;
        Some(f)
    }
}

fn dur_since(ns: i64) -> Duration {
    Duration::from_nanos((now_ns() - ns).max(0) as u64)
}

fn run_phase(ctx: &mut Ctx, name: &'static str, cluster: bool, len: Duration) -> PhaseData {
    let began = Instant::now();
    let dir = ctx.root.join(name);
    fs::create_dir_all(&dir).expect("phase dir");
    let script = dir.join("job.sh");
    fs::write(&script, JOB_SCRIPT).expect("job script");
    let ledger = dir.join("ledger");
    let service_script = dir.join("service.sh");
    fs::write(&service_script, SERVICE_SCRIPT).expect("service script");
    let service_ledger = dir.join("service-ledger");
    let group_script = dir.join("group.sh");
    fs::write(&group_script, GROUP_SCRIPT).expect("group script");
    let group_ledger = dir.join("group-ledger");
    let prefix = format!("/soak/{}/{name}", ctx.run_tag);
    let tag = format!("{}/{name}", ctx.run_tag);
    ctx.say(&format!(
        "[{name}] starting {}",
        if cluster {
            "a 3-member etcd cluster"
        } else {
            "a single etcd"
        }
    ));
    let store = if cluster {
        Store::Cluster(etcd::EtcdCluster::start(3))
    } else {
        Store::Single(etcd::Etcd::start())
    };
    let upstream = store.ports();
    let proxies: Vec<Vec<Proxy>> = (0..ctx.replicas)
        .map(|_| upstream.iter().map(|&p| Proxy::start(&ctx.rt, p)).collect())
        .collect();
    let mut replicas = Vec::new();
    for (i, px) in proxies.iter().enumerate() {
        let instance = format!("r{}", i + 1);
        let config = dir.join(format!("{instance}.toml"));
        let ports: Vec<u16> = px.iter().map(|p| p.port).collect();
        fs::write(
            &config,
            config_text(
                &ports,
                &prefix,
                &script,
                &ledger,
                (&service_script, &service_ledger),
                (&group_script, &group_ledger),
            ),
        )
        .expect("config");
        replicas.push(Replica {
            log: dir.join(format!("{instance}.log")),
            state_dir: dir.join(format!("state-{instance}")),
            instance,
            config,
            tag: tag.clone(),
            child: None,
            fake_clock: (i + 1 == proxies.len()).then(|| ctx.skew.clone()).flatten(),
        });
    }
    let mut ph = Phase {
        name,
        dir: dir.clone(),
        prefix,
        tag,
        store,
        proxies,
        replicas,
        faults: Vec::new(),
        anomalies: Vec::new(),
    };
    let monitor = Monitor::start(ledger.clone());
    for r in ph.replicas.iter_mut().filter(|r| r.fake_clock.is_none()) {
        r.spawn(ctx);
    }
    let Some(first) = ph.wait_leader(Duration::from_secs(30)) else {
        panic!(
            "[{name}] no leader within 30 s; replica logs in {}",
            dir.display()
        );
    };
    // Started alone, the skewed replica would have no clock to compare
    // with and could lead; beside the others it must not.
    for r in ph.replicas.iter_mut().filter(|r| r.fake_clock.is_some()) {
        ctx.say(&format!(
            "[{name}] starting {} with its clock {} (libfaketime)",
            r.instance,
            r.fake_clock.as_deref().unwrap_or_default()
        ));
        r.spawn(ctx);
    }
    let ready = now_ns();
    ctx.say(&format!(
        "[{name}] {} replicas up, leader {} (etcd {:?}, prefix {})",
        ph.replicas.len(),
        ph.replicas[first].instance,
        ph.store.ports(),
        ph.prefix
    ));

    let settle_at = began + len.saturating_sub(SETTLE);
    pause_until((Instant::now() + ctx.rng.secs(2.0, 4.0)).min(settle_at));
    while Instant::now() + LONGEST_FAULT < settle_at {
        match ph.inject(ctx) {
            Some(f) => {
                let leader_after = ph
                    .wait_leader(Duration::from_secs(10))
                    .map(|i| ph.replicas[i].instance.clone());
                ctx.say(&format!(
                    "[{name}] fault #{} {} {} at +{:.2}s, healed +{:.2}s; {}; leader before {}, after {}",
                    f.id,
                    f.kind,
                    f.target,
                    ctx.rel(f.injected),
                    ctx.rel(f.healed),
                    f.note,
                    f.leader_before.as_deref().unwrap_or("none"),
                    leader_after.as_deref().unwrap_or("none")
                ));
                ph.faults.push(f);
            }
            None => ctx.say(&format!("[{name}] no leader to hit; fault skipped")),
        }
        ph.revive(ctx);
        pause_until((Instant::now() + ctx.rng.secs(1.0, 4.0)).min(settle_at));
    }

    // Settle: everything healed and running, then a quiet spell.
    for px in &ph.proxies {
        for p in px {
            p.set(Mode::Pass);
        }
    }
    for r in &ph.replicas {
        r.signal(Signal::CONT);
    }
    ph.revive(ctx);
    pause_until(settle_at.max(Instant::now()));
    pause(SETTLE);
    ph.revive(ctx);
    let stop = now_ns();
    ctx.say(&format!(
        "[{name}] settled; stopping the replicas (SIGTERM)"
    ));
    for r in &ph.replicas {
        r.signal(Signal::TERM);
    }
    for r in &mut ph.replicas {
        let t = Instant::now();
        match r.wait_exit(Duration::from_secs(30)) {
            Some(status) if status.success() => {}
            Some(status) => ph.anomalies.push(format!(
                "{} exited with {status} after the final SIGTERM",
                r.instance
            )),
            None => {
                ph.anomalies.push(format!(
                    "{} did not exit within 30 s of the final SIGTERM; killed",
                    r.instance
                ));
                r.kill9();
            }
        }
        let took = t.elapsed();
        if took > Duration::from_secs(12) {
            ph.anomalies.push(format!(
                "{} took {took:.1?} to stop after SIGTERM (shutdown_grace is 10s)",
                r.instance
            ));
        }
    }
    // Anything of this phase still alive 2 s after the replicas exited is an orphan.
    pause(Duration::from_secs(2));
    let mut orphans = Vec::new();
    for (pid, ppid, cmd) in tagged_processes(&ph.tag, &ph.dir) {
        let kind = if cmd.contains("__supervise") {
            "supervisor"
        } else if cmd.contains("job.sh") {
            "job"
        } else if cmd.contains(" run ") {
            "scheduler"
        } else {
            "job child"
        };
        orphans.push(format!("pid {pid} (ppid {ppid}, {kind}): {cmd}"));
        signal(pid, Signal::CONT);
        signal(pid, Signal::KILL);
    }
    let watches = monitor.finish();
    ctx.say(&format!("[{name}] reading bgsched's history from etcd"));
    let (history, history_error) = match ph.store.range(
        &format!("{}/history/", ph.prefix),
        true,
        Duration::from_secs(15),
    ) {
        Ok(kvs) => {
            let mut recs = Vec::new();
            for kv in kvs {
                match serde_json::from_slice::<serde_json::Value>(&kv.value)
                    .ok()
                    .as_ref()
                    .and_then(parse_rec)
                {
                    Some(r) => recs.push(r),
                    None => ph
                        .anomalies
                        .push(format!("unreadable history record {}", kv.key)),
                }
            }
            (Some(recs), String::new())
        }
        Err(e) => (None, e.to_string()),
    };
    // etcd's own logs go with its temp dirs: keep a copy next to the ledger.
    let members: Vec<(String, String)> = match &ph.store {
        Store::Single(e) => vec![(e.name().to_string(), e.log_text())],
        Store::Cluster(c) => c
            .members()
            .iter()
            .map(|m| (m.name().to_string(), m.log_text()))
            .collect(),
    };
    let mut etcd_slow = 0u64;
    for (member, log) in members {
        etcd_slow += log
            .lines()
            .filter(|l| {
                l.contains("failed to send out heartbeat on time")
                    || l.contains("took too long")
                    || l.contains("slow fdatasync")
            })
            .count() as u64;
        let _ = fs::write(ph.dir.join(format!("{member}.log")), log);
    }
    let skewed = ph
        .replicas
        .iter()
        .find(|r| r.fake_clock.is_some())
        .map(|r| r.instance.clone());
    let offset = ctx.skew.as_deref().and_then(faketime_offset);
    let history = history.map(|mut all| {
        if let (Some(skewed), Some(offset)) = (&skewed, offset) {
            for x in all.iter_mut().filter(|x| x.instance == *skewed) {
                unskew(x, offset);
            }
        }
        all
    });
    // The service and the group are checked on their own (by their own
    // ledgers).
    let (service_records, group_records, history) = match history {
        Some(all) => {
            let (group, rest): (Vec<Rec>, Vec<Rec>) = all
                .into_iter()
                .partition(|x| GROUP_JOBS.iter().any(|(g, _)| *g == x.job));
            let (svc, rest): (Vec<Rec>, Vec<Rec>) =
                rest.into_iter().partition(|x| x.job == SERVICE);
            (svc, group, Some(rest))
        }
        None => (Vec::new(), Vec::new(), None),
    };
    let mut malformed = Vec::new();
    let mut group_runs: Vec<GroupRun> = Vec::new();
    for line in fs::read_to_string(&group_ledger)
        .unwrap_or_default()
        .lines()
    {
        let f: Vec<&str> = line.split(' ').collect();
        match (f.as_slice(), f.get(4).and_then(|t| t.parse::<i64>().ok())) {
            (["gstart", job, run_id, instance, _], Some(at)) => group_runs.push(GroupRun {
                job: job.to_string(),
                run_id: run_id.to_string(),
                instance: instance.to_string(),
                start: at,
                end: None,
            }),
            (["gend", _, run_id, _, _], Some(at)) => {
                match group_runs.iter_mut().find(|g| g.run_id == *run_id) {
                    Some(g) => g.end = Some(g.end.map_or(at, |e: i64| e.min(at))),
                    None => malformed.push(format!("group ledger, an end without a start: {line}")),
                }
            }
            _ => malformed.push(format!("group ledger: {line}")),
        }
    }
    let mut beats = Vec::new();
    for line in fs::read_to_string(&service_ledger)
        .unwrap_or_default()
        .lines()
    {
        let f: Vec<&str> = line.split(' ').collect();
        match (
            f.as_slice(),
            f.get(1).and_then(|p| p.parse().ok()),
            f.get(4).and_then(|t| t.parse().ok()),
        ) {
            (["beat", _, run_id, instance, _], Some(pid), Some(at)) => {
                beats.push((pid, run_id.to_string(), instance.to_string(), at))
            }
            _ => malformed.push(format!("service ledger: {line}")),
        }
    }
    let text = fs::read_to_string(&ledger).unwrap_or_default();
    let mut starts = Vec::new();
    let mut ends = HashMap::new();
    for line in text.lines() {
        if let Some(s) = parse_start(line) {
            starts.push(s);
        } else if let Some((id, e)) = parse_end(line) {
            ends.insert(id, e);
        } else {
            malformed.push(line.to_string());
        }
    }
    ctx.say(&format!(
        "[{name}] {} runs in the ledger, {} history records; stopping etcd",
        starts.len(),
        history.as_ref().map_or(0, Vec::len)
    ));
    write_runs_table(
        &ph.dir.join("runs.tsv"),
        &starts,
        &ends,
        &watches,
        history.as_deref(),
    );
    let members = ph.replicas.iter().map(|r| r.instance.clone()).collect();
    let Phase {
        faults, anomalies, ..
    } = ph;
    PhaseData {
        etcd_slow,
        name,
        beats,
        service_records,
        group_runs,
        group_records,
        members,
        skewed,
        span: (ready, stop),
        window: (ready / NS + MARGIN_START_S, stop / NS - MARGIN_END_S),
        starts,
        ends,
        malformed,
        watches,
        history,
        history_error,
        faults,
        anomalies,
        orphans,
    }
}

// ---------------------------------------------------------------- verification

#[derive(Clone, Debug)]
enum Cell {
    Count(u64),
    Tuple(Vec<u64>),
    Text(String),
}

struct Row {
    label: String,
    must_be_zero: bool,
    cell: Cell,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    /// Per fault kind: gaps to the first start, gaps to the first new-term
    /// start, faults after which nothing started.
    gaps: BTreeMap<&'static str, (Vec<f64>, Vec<f64>, u64)>,
    /// The longest stretch of unfired ticks: (seconds, where).
    longest: (i64, String),
    violations: Vec<String>,
    details: Vec<String>,
    fired_any: bool,
    /// Runs of the `run_on = "any"` jobs, per executing member.
    placed_on: BTreeMap<String, u64>,
    /// ns with two or more members able to take placed runs, of the phase's.
    members_up: (i64, i64),
}

impl Report {
    fn count(&mut self, label: &str, n: u64) {
        self.rows.push(Row {
            label: label.to_string(),
            must_be_zero: false,
            cell: Cell::Count(n),
        });
    }

    fn must_be_zero(&mut self, label: &str, items: &[String]) {
        self.rows.push(Row {
            label: label.to_string(),
            must_be_zero: true,
            cell: Cell::Count(items.len() as u64),
        });
        for i in items {
            self.violations.push(format!("{label}: {i}"));
        }
    }

    fn listed(&mut self, label: &str, items: &[String]) {
        self.count(label, items.len() as u64);
        for i in items.iter().take(12) {
            self.details.push(format!("{label}: {i}"));
        }
        if items.len() > 12 {
            self.details
                .push(format!("{label}: ... and {} more", items.len() - 12));
        }
    }
}

/// A tick (unix seconds) as `HH:MM:SS (+rel)`.
fn fmt_tick(tick: i64, epoch: i64) -> String {
    let hms = chrono::DateTime::from_timestamp(tick, 0)
        .map_or_else(|| tick.to_string(), |d| d.format("%H:%M:%S").to_string());
    format!("{hms} (+{:.0}s)", secs(tick * NS - epoch))
}

fn fmt_rel(ns: i64, epoch: i64) -> String {
    format!("+{:.3}s", secs(ns - epoch))
}

/// A job whose runs stay with the leader (`run_on` not set, the service).
fn kept_on_leader(job: &str) -> bool {
    match job_def(job) {
        Some(def) => !def.placed,
        None => !GROUP_JOBS.iter().any(|(g, placed)| *g == job && *placed),
    }
}

/// Whether `s` was claimed after fault `f` was injected: by a later term,
/// or for a tick after the injection (a tick is claimed at its time, not
/// ahead of it). A run claimed before may start after: one placed on
/// another member starts when that member has taken it over, whatever
/// happened to the leader meanwhile.
fn claimed_after(s: &Start, f: &Fault) -> bool {
    s.tick * NS > f.injected || f.term_before.is_some_and(|term| s.token > term)
}

/// How long two or more members could take placed runs, of the phase
/// (ns, sampled every 0.1 s): a replica is out while killed, stopped,
/// restarting after SIGTERM or cut off from etcd; all are while etcd has
/// no quorum.
fn members_up(d: &PhaseData) -> (i64, i64) {
    let (from, to) = d.span;
    let step = NS / 10;
    let during = |f: &Fault, t: i64| f.injected <= t && t <= f.healed;
    let mut multi = 0;
    let mut t = from;
    while t < to {
        let up = if d
            .faults
            .iter()
            .any(|f| f.on_etcd && !f.quorum_kept && during(f, t))
        {
            0
        } else {
            d.members
                .iter()
                .filter(|m| {
                    !d.faults
                        .iter()
                        .any(|f| f.instance.as_deref() == Some(m.as_str()) && during(f, t))
                })
                .count()
        };
        if up >= 2 {
            multi += step;
        }
        t += step;
    }
    (multi, (to - from).max(0))
}

/// Over the whole soak: the `run_on = "any"` jobs ran on fewer than two
/// members although two or more were up most of the time.
fn placement_stuck(reports: &[(&str, Report)]) -> Option<String> {
    let mut on: BTreeMap<&str, u64> = BTreeMap::new();
    let (mut multi, mut total) = (0i64, 0i64);
    for (_, r) in reports {
        for (m, n) in &r.placed_on {
            *on.entry(m.as_str()).or_default() += n;
        }
        multi += r.members_up.0;
        total += r.members_up.1;
    }
    let used: Vec<String> = on
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(m, n)| format!("{m}: {n}"))
        .collect();
    (2 * multi > total && used.len() < 2).then(|| {
        format!(
            "the run_on = \"any\" jobs ran on {} member(s) ({}) while 2 or more members were up {:.0} s of {:.0} s",
            used.len(),
            if used.is_empty() { "no run".to_string() } else { used.join(", ") },
            secs(multi),
            secs(total)
        )
    })
}

fn verify(d: &PhaseData, epoch: i64) -> Report {
    let mut r = Report {
        fired_any: !d.starts.is_empty(),
        ..Report::default()
    };
    let (lo, hi) = d.window;
    let t = |ns: i64| fmt_rel(ns, epoch);
    let tk = |tick: i64| fmt_tick(tick, epoch);
    let history: &[Rec] = d.history.as_deref().unwrap_or(&[]);
    let recs: HashMap<&str, &Rec> = history.iter().map(|x| (x.run_id.as_str(), x)).collect();

    // Who led each term. A run's token is the term of the leader that
    // claimed it, but the instance of a placed run is the member that
    // executed it: only what runs on the leader (the runs and records of
    // the jobs kept there, the service) names the leader of its term, as
    // does etcd's leader key read at each fault.
    let mut led: BTreeMap<u64, BTreeSet<&str>> = BTreeMap::new();
    for s in d.starts.iter().filter(|s| kept_on_leader(&s.job)) {
        led.entry(s.token).or_default().insert(&s.instance);
    }
    for x in history
        .iter()
        .chain(&d.service_records)
        .chain(&d.group_records)
        .filter(|x| x.term > 0 && kept_on_leader(&x.job))
    {
        led.entry(x.term).or_default().insert(&x.instance);
    }
    for f in &d.faults {
        if let (Some(l), Some(term)) = (&f.leader_before, f.term_before) {
            led.entry(term).or_default().insert(l);
        }
    }

    // Where each run ends, as far as we know: (at least, at most).
    let end_bounds = |s: &Start| -> (i64, Option<i64>) {
        let end = d.ends.get(&s.run_id);
        let w = d.watches.get(&s.run_id);
        let lo = [Some(s.at), end.map(|e| e.at), w.and_then(|w| w.last_alive)]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(s.at);
        let hi = w
            .and_then(|w| w.dead_at)
            .or_else(|| recs.get(s.run_id.as_str()).and_then(|x| x.ended_at));
        (lo, hi)
    };

    r.count("faults injected", d.faults.len() as u64);

    // Ticks: due, fired, skipped, unfired (caught up or not).
    let mut by_tick: HashMap<(&str, i64), Vec<&Start>> = HashMap::new();
    for s in &d.starts {
        by_tick.entry((s.job.as_str(), s.tick)).or_default().push(s);
    }
    let mut skipped: HashMap<(&str, i64), &Rec> = HashMap::new();
    let mut unstarted: HashMap<(&str, i64), &Rec> = HashMap::new();
    let mut missed_cover: HashSet<(&str, i64)> = HashSet::new();
    // Every record that says a tick did not run: one per tick at most.
    let mut not_run: HashMap<(&str, i64), Vec<&Rec>> = HashMap::new();
    for x in history {
        let Some(def) = job_def(&x.job) else { continue };
        match x.outcome.as_str() {
            "skipped" => {
                skipped.insert((def.name, x.tick), x);
                if x.trigger != "manual" {
                    not_run.entry((def.name, x.tick)).or_default().push(x);
                }
            }
            "missed" => {
                for k in 0..x.missed_ticks.max(1) as i64 {
                    missed_cover.insert((def.name, x.tick - k * def.period));
                    not_run
                        .entry((def.name, x.tick - k * def.period))
                        .or_default()
                        .push(x);
                }
            }
            "lost" | "start_failed"
                if x.trigger != "manual" && !by_tick.contains_key(&(def.name, x.tick)) =>
            {
                unstarted.insert((def.name, x.tick), x);
            }
            _ => {}
        }
    }
    let (mut due_all, mut fired_all, mut caught_all, mut uncaught_all) = (0, 0, 0, 0);
    let mut uncovered = Vec::new();
    let mut lost_to_member_faults = Vec::new();
    let mut ran_but_missed = Vec::new();
    let mut not_caught = Vec::new();
    for def in &JOBS {
        let first = lo + (def.period - lo.rem_euclid(def.period)) % def.period;
        let ticks: Vec<i64> = (first..=hi).step_by(def.period as usize).collect();
        let status = |tick: i64| -> Option<&str> {
            // The trigger of whatever handled the tick, if anything did.
            if let Some(s) = by_tick.get(&(def.name, tick)) {
                return Some(s[0].trigger.as_str());
            }
            skipped.get(&(def.name, tick)).map(|x| x.trigger.as_str())
        };
        let fired = ticks
            .iter()
            .filter(|&&tk| by_tick.contains_key(&(def.name, tk)))
            .count() as u64;
        let skips = ticks
            .iter()
            .filter(|&&tk| {
                !by_tick.contains_key(&(def.name, tk)) && skipped.contains_key(&(def.name, tk))
            })
            .count() as u64;
        let (mut caught, mut uncaught) = (0u64, 0u64);
        let mut i = 0;
        while i < ticks.len() {
            if status(ticks[i]).is_some() {
                if missed_cover.contains(&(def.name, ticks[i]))
                    && by_tick.contains_key(&(def.name, ticks[i]))
                {
                    ran_but_missed.push(format!("{} tick {}", def.name, tk(ticks[i])));
                }
                i += 1;
                continue;
            }
            let from = i;
            while i < ticks.len() && status(ticks[i]).is_none() {
                i += 1;
            }
            let outage = &ticks[from..i];
            let last = *outage.last().expect("non-empty outage");
            let next = last + def.period;
            let caught_up = status(next) == Some("catchup");
            let n = outage.len() as u64;
            if caught_up {
                caught += n;
            } else {
                uncaught += n;
                not_caught.push(format!(
                    "{}: {} tick(s) {}..{} (next tick {} handled as {})",
                    def.name,
                    n,
                    tk(outage[0]),
                    tk(last),
                    tk(next),
                    status(next).unwrap_or("nothing")
                ));
            }
            let gap = last - outage[0] + def.period;
            if gap > r.longest.0 {
                r.longest = (
                    gap,
                    format!("{} ticks {}..{}", def.name, tk(outage[0]), tk(last)),
                );
            }
            for &tick in outage {
                // One etcd member down, quorum kept: no tick may be lost,
                // except the ones inside an etcd leader election, and those
                // only when the outage was caught up.
                let at = tick * NS;
                let slack = TTL.as_nanos() as i64;
                let within = |f: &&Fault| at >= f.injected - NS && at <= f.healed + slack;
                // A tick inside the tail of a member fault but also inside a
                // fault of another kind (the leader paused, killed, cut off)
                // is that other fault's: it need not survive it.
                let other_fault = d.faults.iter().any(|f| !f.quorum_kept && within(&f));
                if let Some(f) = d
                    .faults
                    .iter()
                    .filter(|_| !other_fault)
                    .find(|f| f.quorum_kept && within(f))
                {
                    let in_election =
                        f.kind == "etcd leader kill" && at <= f.elected.unwrap_or(f.healed) + slack;
                    if !(in_election && caught_up) {
                        lost_to_member_faults.push(format!(
                            "{} tick {} (fault #{} {} {}, {}; {})",
                            def.name,
                            tk(tick),
                            f.id,
                            f.kind,
                            f.target,
                            if in_election {
                                "inside the election, not caught up"
                            } else {
                                "outside any election"
                            },
                            f.note
                        ));
                    }
                }
                if !missed_cover.contains(&(def.name, tick))
                    && !unstarted.contains_key(&(def.name, tick))
                {
                    uncovered.push(format!("{} tick {}", def.name, tk(tick)));
                }
            }
        }
        due_all += ticks.len() as u64;
        fired_all += fired;
        caught_all += caught;
        uncaught_all += uncaught;
        r.rows.push(Row {
            label: format!(
                "`{}` ticks: due / fired / skipped / missed+caught up / missed, not caught up",
                def.name
            ),
            must_be_zero: false,
            cell: Cell::Tuple(vec![ticks.len() as u64, fired, skips, caught, uncaught]),
        });
    }
    let mut short_skips: Vec<&Rec> = skipped
        .values()
        .filter(|x| x.job != "long")
        .copied()
        .collect();
    short_skips.sort_by_key(|x| (x.tick, x.job.clone()));
    let short_skips: Vec<String> = short_skips
        .iter()
        .map(|x| {
            format!(
                "{} tick {} ({}, by {} term {}): {}",
                x.job,
                tk(x.tick),
                x.trigger,
                x.instance,
                x.term,
                x.reason
            )
        })
        .collect();
    r.count("ticks due (all jobs, in window)", due_all);
    r.count("ticks fired (in window)", fired_all);
    r.count("runs in the ledger (all)", d.starts.len() as u64);

    // Placement: which member executed the runs of the `run_on = "any"`
    // jobs (their ledgers name the executor).
    for m in &d.members {
        let n = d
            .starts
            .iter()
            .filter(|s| s.instance == *m && !kept_on_leader(&s.job))
            .count()
            + d.group_runs
                .iter()
                .filter(|g| g.instance == *m && !kept_on_leader(&g.job))
                .count();
        r.placed_on.insert(m.clone(), n as u64);
        r.count(
            &format!("runs of `run_on = \"any\"` jobs executed on {m}"),
            n as u64,
        );
    }
    r.members_up = members_up(d);
    r.count(
        "seconds with 2 or more members up (to place runs on)",
        (r.members_up.0 / NS) as u64,
    );

    // Fired twice.
    let mut twice = Vec::new();
    let mut keys: Vec<_> = by_tick.keys().copied().collect();
    keys.sort();
    for k in keys {
        let runs = &by_tick[&k];
        if runs.len() > 1 {
            let who: Vec<String> = runs
                .iter()
                .map(|s| {
                    format!(
                        "run {} by {} token {} trigger {} at {}",
                        s.run_id,
                        s.instance,
                        s.token,
                        s.trigger,
                        t(s.at)
                    )
                })
                .collect();
            twice.push(format!("{} tick {}: {}", k.0, tk(k.1), who.join("; ")));
        }
    }
    r.must_be_zero("**fired twice** (same job, tick)", &twice);

    // Overlaps (every job is overlap = "skip").
    let mut overlaps = Vec::new();
    let mut unknown_end = Vec::new();
    for def in &JOBS {
        let mut runs: Vec<&Start> = d.starts.iter().filter(|s| s.job == def.name).collect();
        runs.sort_by_key(|s| s.at);
        for (a, s) in runs.iter().enumerate() {
            let (end_lo, end_hi) = end_bounds(s);
            let w = d.watches.get(&s.run_id);
            if !d.ends.contains_key(&s.run_id)
                && w.is_none_or(|w| w.last_alive.is_none() && w.dead_at.is_none())
            {
                unknown_end.push(format!("{} run {} started {}", def.name, s.run_id, t(s.at)));
            }
            for later in &runs[a + 1..] {
                if later.at < end_lo {
                    overlaps.push(format!(
                        "{}: run {} (tick {}, {} token {}, started {}, still running at {}{}) and run {} (tick {}, {} token {} trigger {}, started {})",
                        def.name,
                        s.run_id,
                        tk(s.tick),
                        s.instance,
                        s.token,
                        t(s.at),
                        t(end_lo),
                        end_hi.map(|h| format!(", gone by {}", t(h))).unwrap_or_default(),
                        later.run_id,
                        tk(later.tick),
                        later.instance,
                        later.token,
                        later.trigger,
                        t(later.at)
                    ));
                }
            }
        }
    }
    r.must_be_zero("**overlapping runs** (overlap = skip)", &overlaps);
    r.listed(
        "runs with an unknown end (not checkable for overlap)",
        &unknown_end,
    );

    // Stale terms.
    let mut stale = Vec::new();
    for def in &JOBS {
        let mut runs: Vec<&Start> = d.starts.iter().filter(|s| s.job == def.name).collect();
        runs.sort_by_key(|s| (s.tick, s.at));
        for pair in runs.windows(2) {
            if pair[1].token < pair[0].token {
                stale.push(format!(
                    "{}: tick {} by {} token {} (started {}) after tick {} by {} token {} (started {})",
                    def.name,
                    tk(pair[1].tick),
                    pair[1].instance,
                    pair[1].token,
                    t(pair[1].at),
                    tk(pair[0].tick),
                    pair[0].instance,
                    pair[0].token,
                    t(pair[0].at)
                ));
            }
        }
    }
    r.must_be_zero("**stale-term runs** (token decreased)", &stale);
    let two_leaders: Vec<String> = led
        .iter()
        .filter(|(_, l)| l.len() > 1)
        .map(|(term, l)| {
            let l: Vec<&str> = l.iter().copied().collect();
            format!("term {term}: {}", l.join(", "))
        })
        .collect();
    r.must_be_zero(
        "**terms with two leaders** (runs kept on the leader, on two members)",
        &two_leaders,
    );
    let skewed_led: Vec<String> = match &d.skewed {
        Some(sk) => led
            .iter()
            .filter(|(_, l)| l.contains(sk.as_str()))
            .map(|(term, _)| format!("{sk} (clock skewed) led term {term}"))
            .collect(),
        None => Vec::new(),
    };
    r.must_be_zero("**terms led by the skewed replica**", &skewed_led);
    verify_service(d, &mut r, &t);
    verify_group(d, &mut r, &t);
    r.must_be_zero("**orphaned processes** after the run", &d.orphans);

    r.listed(
        "skipped ticks of the short jobs (beat, cron6, slowpoke)",
        &short_skips,
    );
    r.count("missed ticks, caught up", caught_all);
    r.listed("missed ticks, not caught up", &not_caught);
    r.count("  (ticks in those stretches)", uncaught_all);
    r.rows.push(Row {
        label: "longest stretch of unfired ticks".into(),
        must_be_zero: false,
        cell: Cell::Text(if r.longest.0 > 0 {
            format!("{} s ({})", r.longest.0, r.longest.1)
        } else {
            "0 s".into()
        }),
    });

    // Failover gaps.
    let mut no_recovery = Vec::new();
    for f in &d.faults {
        let entry = r.gaps.entry(f.kind).or_default();
        let first = d
            .starts
            .iter()
            .filter(|s| s.at > f.injected && claimed_after(s, f))
            .map(|s| s.at)
            .min();
        match first {
            Some(at) => entry.0.push(secs(at - f.injected)),
            None => {
                entry.2 += 1;
                no_recovery.push(format!("fault #{} {} {}", f.id, f.kind, f.target));
            }
        }
        if let (true, Some(term)) = (f.on_leader, f.term_before) {
            if let Some(at) = d
                .starts
                .iter()
                .filter(|s| s.at > f.injected && s.token > term)
                .map(|s| s.at)
                .min()
            {
                entry.1.push(secs(at - f.injected));
            }
        }
    }
    r.listed("faults after which nothing started", &no_recovery);

    // Cross-check against bgsched's history.
    if d.history.is_none() {
        r.details
            .push(format!("history could not be read: {}", d.history_error));
    }
    let mut consistent = 0u64;
    let mut explained = Vec::new();
    let mut unexplained = Vec::new();
    let mut no_record = Vec::new();
    let mut field_mismatch = Vec::new();
    for s in &d.starts {
        let Some(x) = recs.get(s.run_id.as_str()) else {
            no_record.push(format!(
                "{} tick {} run {} by {} started {}",
                s.job,
                tk(s.tick),
                s.run_id,
                s.instance,
                t(s.at)
            ));
            continue;
        };
        if x.job != s.job
            || x.tick != s.tick
            || x.term != s.token
            || x.instance != s.instance
            || x.trigger != s.trigger
        {
            field_mismatch.push(format!(
                "run {}: ledger {} tick {} {} token {} {}; record {} tick {} {} term {} {}",
                s.run_id,
                s.job,
                tk(s.tick),
                s.instance,
                s.token,
                s.trigger,
                x.job,
                tk(x.tick),
                x.instance,
                x.term,
                x.trigger
            ));
        }
        let expect = job_def(&s.job).map_or("success", |j| j.expect);
        if x.outcome == expect {
            consistent += 1;
            continue;
        }
        let (_, end_hi) = end_bounds(s);
        let to = end_hi.or(x.ended_at).unwrap_or(i64::MAX);
        let end = d
            .ends
            .get(&s.run_id)
            .map_or("no end line".to_string(), |e| {
                format!("end line {} exit {}", t(e.at), e.exit)
            });
        let what = format!(
            "{} tick {} run {} by {}: {} ({}), ledger start {}, {end}",
            s.job,
            tk(s.tick),
            s.run_id,
            s.instance,
            x.outcome,
            x.reason,
            t(s.at)
        );
        match d
            .faults
            .iter()
            .find(|f| f.cuts_etcd && f.affects(&s.instance) && f.overlaps(s.at, to))
        {
            Some(f) => explained.push(format!("{what}; fault #{} {}", f.id, f.kind)),
            None => unexplained.push(what),
        }
    }
    let ledger_ids: HashSet<&str> = d.starts.iter().map(|s| s.run_id.as_str()).collect();
    let mut phantom = Vec::new();
    let mut never_ran_explained = Vec::new();
    let mut never_ran_unexplained = Vec::new();
    for x in history {
        if ledger_ids.contains(x.run_id.as_str()) {
            continue;
        }
        let what = format!(
            "{} tick {} run {} by {} term {}: {} ({})",
            x.job,
            tk(x.tick),
            x.run_id,
            x.instance,
            x.term,
            x.outcome,
            x.reason
        );
        match x.outcome.as_str() {
            "success" => phantom.push(what),
            "skipped" | "missed" => {}
            _ => {
                let at = x.started_at.unwrap_or(x.tick * NS);
                let to = x.ended_at.unwrap_or(at);
                // The fault hit the member the run was placed on, or the
                // leader that claimed it (the same replica unless placed).
                let claimer = |f: &Fault| {
                    f.instance
                        .as_deref()
                        .is_some_and(|i| led.get(&x.term).is_some_and(|l| l.contains(i)))
                };
                match d
                    .faults
                    .iter()
                    .find(|f| (f.affects(&x.instance) || claimer(f)) && f.overlaps(at - 2 * NS, to))
                {
                    Some(f) => {
                        never_ran_explained.push(format!("{what}; fault #{} {}", f.id, f.kind))
                    }
                    None => never_ran_unexplained.push(what),
                }
            }
        }
    }
    r.count("history: ledger runs with a consistent record", consistent);
    r.listed("history: run lost/killed, explained by a fault", &explained);
    r.listed("history: unexpected outcome, unexplained", &unexplained);
    r.listed("history: ledger run without a record", &no_record);
    r.listed(
        "history: record disagrees with the ledger (tick/term/instance/trigger)",
        &field_mismatch,
    );
    r.listed("history: success record without a ledger start", &phantom);
    r.listed(
        "history: claimed, never ran (explained by a fault)",
        &never_ran_explained,
    );
    r.listed(
        "history: claimed, never ran (unexplained)",
        &never_ran_unexplained,
    );
    r.must_be_zero(
        "**unfired tick with no missed/skipped/lost record**",
        &uncovered,
    );
    r.must_be_zero(
        "**tick lost to an etcd member fault that kept quorum** (beyond a caught-up election)",
        &lost_to_member_faults,
    );
    let mut twice_recorded: Vec<String> = not_run
        .iter()
        .filter(|(_, recs)| recs.len() > 1)
        .map(|((job, tick), recs)| {
            let what: Vec<String> = recs
                .iter()
                .map(|x| {
                    format!(
                        "{} {} by {} term {}: {}",
                        x.outcome, x.run_id, x.instance, x.term, x.reason
                    )
                })
                .collect();
            format!("{job} tick {}: {}", tk(*tick), what.join("; "))
        })
        .collect();
    twice_recorded.sort();
    r.must_be_zero(
        "**tick recorded not run twice** (missed/skipped)",
        &twice_recorded,
    );
    r.must_be_zero("**tick recorded missed but it ran**", &ran_but_missed);
    r.listed(
        "replica anomalies (unexpected exits, slow or unclean stops)",
        &d.anomalies,
    );
    r.listed("malformed ledger lines", &d.malformed);
    r.count(
        "etcd overload warnings (late heartbeats, slow applies: machine load)",
        d.etcd_slow,
    );
    r
}

/// The `@continuous` service: its instances (by their heartbeats) never
/// overlap, it ran at all, and its longest outage is reported.
/// One instance of the service, named by (pid, run id): where it ran, its
/// first and last beat.
type Life<'a> = ((i32, &'a str), (&'a str, i64, i64));

fn verify_service(d: &PhaseData, r: &mut Report, t: &dyn Fn(i64) -> String) {
    let mut lives: Vec<Life> = Vec::new();
    for (pid, run_id, instance, at) in &d.beats {
        match lives
            .iter_mut()
            .find(|(k, _)| *k == (*pid, run_id.as_str()))
        {
            Some((_, v)) => {
                v.1 = v.1.min(*at);
                v.2 = v.2.max(*at);
            }
            None => lives.push(((*pid, run_id.as_str()), (instance.as_str(), *at, *at))),
        }
    }
    lives.sort_by_key(|(_, v)| v.1);
    let mut overlapping = Vec::new();
    let mut longest_down = 0i64;
    for pair in lives.windows(2) {
        let ((_, a_run), (a_inst, _, a_last)) = pair[0];
        let ((_, b_run), (b_inst, b_first, _)) = pair[1];
        if b_first <= a_last {
            overlapping.push(format!(
                "run {b_run} on {b_inst} beat from {} while run {a_run} on {a_inst} beat until {}",
                t(b_first),
                t(a_last)
            ));
        }
        longest_down = longest_down.max(b_first - a_last);
    }
    r.count("service instances (@continuous)", lives.len() as u64);
    r.must_be_zero(
        "**service instances alive at once** (@continuous)",
        &overlapping,
    );
    let never = if lives.is_empty() {
        vec!["no heartbeat in the whole phase".to_string()]
    } else {
        Vec::new()
    };
    r.must_be_zero("**service never ran** (@continuous)", &never);
    r.count(
        "service: longest stretch between instances (ms)",
        (longest_down.max(0) / 1_000_000) as u64,
    );
    let unrecorded: Vec<String> = lives
        .iter()
        .filter(|((_, run), _)| !d.service_records.iter().any(|x| x.run_id == *run))
        .map(|((pid, run), (inst, first, _))| {
            format!("run {run} pid {pid} on {inst} from {}", t(*first))
        })
        .collect();
    r.listed("service instances without a record", &unrecorded);
}

/// The concurrency group of one: each run starts after every earlier one
/// ended (by their end lines); a run without an end line cannot be judged
/// and is listed apart.
fn verify_group(d: &PhaseData, r: &mut Report, t: &dyn Fn(i64) -> String) {
    let mut runs = d.group_runs.clone();
    runs.sort_by_key(|g| g.start);
    let mut overlapping = Vec::new();
    let mut unknown = Vec::new();
    // The latest end so far, and whose.
    let mut busy_until: Option<(i64, &GroupRun)> = None;
    for g in &runs {
        if let Some((until, by)) = busy_until {
            if g.start < until {
                overlapping.push(format!(
                    "{} run {} on {} started {} while {} run {} on {} ran until {}",
                    g.job,
                    g.run_id,
                    g.instance,
                    t(g.start),
                    by.job,
                    by.run_id,
                    by.instance,
                    t(until)
                ));
            }
        }
        match g.end {
            Some(end) if busy_until.is_none_or(|(u, _)| end > u) => busy_until = Some((end, g)),
            Some(_) => {}
            None => unknown.push(format!(
                "{} run {} on {} from {}",
                g.job,
                g.run_id,
                g.instance,
                t(g.start)
            )),
        }
    }
    r.count("group runs (ga, gb in a group of 1)", runs.len() as u64);
    r.must_be_zero("**group runs alive at once** (limit 1)", &overlapping);
    let never = if runs.is_empty() {
        vec!["no run of the group in the whole phase".to_string()]
    } else {
        Vec::new()
    };
    r.must_be_zero("**group never ran**", &never);
    r.listed("group runs without an end line", &unknown);
}

// ---------------------------------------------------------------- output

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn gap_text(v: &[f64]) -> String {
    match median(v) {
        None => "-".into(),
        Some(m) => format!(
            "{} / {:.2}s / {:.2}s",
            v.len(),
            m,
            v.iter().copied().fold(f64::MIN, f64::max)
        ),
    }
}

fn print_table(reports: &[(&str, Report)]) {
    let mut header = "| figure |".to_string();
    let mut rule = "|---|".to_string();
    for (name, _) in reports {
        let _ = write!(header, " {name} |");
        rule.push_str("---:|");
    }
    let total = reports.len() > 1;
    if total {
        header.push_str(" total |");
        rule.push_str("---:|");
    }
    println!("{header}\n{rule}");
    let rows = reports[0].1.rows.len();
    for i in 0..rows {
        let label = &reports[0].1.rows[i].label;
        let must = reports[0].1.rows[i].must_be_zero;
        let mut line = format!("| {label}{} |", if must { " (must be 0)" } else { "" });
        let cells: Vec<&Cell> = reports.iter().map(|(_, r)| &r.rows[i].cell).collect();
        for c in &cells {
            let _ = write!(line, " {} |", cell_text(c));
        }
        if total {
            let sum = match cells[0] {
                Cell::Count(_) => Cell::Count(
                    cells
                        .iter()
                        .map(|c| if let Cell::Count(n) = c { *n } else { 0 })
                        .sum(),
                ),
                Cell::Tuple(v) => Cell::Tuple(
                    (0..v.len())
                        .map(|k| {
                            cells
                                .iter()
                                .map(|c| if let Cell::Tuple(t) = c { t[k] } else { 0 })
                                .sum()
                        })
                        .collect(),
                ),
                Cell::Text(_) => {
                    let best = reports.iter().max_by_key(|(_, r)| r.longest.0);
                    Cell::Text(
                        best.map_or(String::new(), |(n, r)| format!("{} s ({n})", r.longest.0)),
                    )
                }
            };
            let _ = write!(line, " {} |", cell_text(&sum));
        }
        println!("{line}");
    }
    let mut kinds: Vec<&'static str> = reports
        .iter()
        .flat_map(|(_, r)| r.gaps.keys().copied())
        .collect();
    kinds.sort();
    kinds.dedup();
    for kind in kinds {
        for (which, label) in [
            (0, "first start after"),
            (1, "first start of a new term after"),
        ] {
            if which == 1 && !kind.ends_with(" leader") {
                continue;
            }
            let mut line = format!("| gap: {label} `{kind}` (n / median / max) |");
            let mut all = Vec::new();
            for (_, r) in reports {
                let v = r
                    .gaps
                    .get(kind)
                    .map(|g| if which == 0 { g.0.clone() } else { g.1.clone() })
                    .unwrap_or_default();
                let _ = write!(line, " {} |", gap_text(&v));
                all.extend(v);
            }
            if total {
                let _ = write!(line, " {} |", gap_text(&all));
            }
            println!("{line}");
        }
    }
}

fn cell_text(c: &Cell) -> String {
    match c {
        Cell::Count(n) => n.to_string(),
        Cell::Tuple(v) => v.iter().map(u64::to_string).collect::<Vec<_>>().join(" / "),
        Cell::Text(s) => s.clone(),
    }
}

// ---------------------------------------------------------------- main

/// Keep the temp dir for inspection, minus the private copy of the binary.
fn keep_dir(tmp: tempfile::TempDir) -> PathBuf {
    let _ = fs::remove_dir_all(tmp.path().join("bin"));
    tmp.keep()
}

fn bgsched_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("BGSCHED_BIN").filter(|b| !b.is_empty()) {
        return PathBuf::from(bin);
    }
    // target/debug/examples/soak -> target/debug/bgsched
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("bgsched")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/debug/bgsched"))
        })
}

fn main() {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        let t = now_ns() as u64;
        Rng(t ^ (u64::from(std::process::id()) << 32)).next() % 1_000_000_000
    });
    println!("soak: seed {seed} (replay: scripts/soak --seed {seed} --duration {} --replicas {} --etcd {})",
        humantime::format_duration(args.duration),
        args.replicas,
        match args.etcd { EtcdMode::Single => "single", EtcdMode::Cluster => "cluster", EtcdMode::Both => "both" });
    assert!(args.replicas >= 1, "--replicas must be at least 1");
    let bin = bgsched_bin();
    assert!(
        bin.is_file(),
        "no bgsched binary at {} (build it: cargo build --bin bgsched, or use scripts/soak; or set BGSCHED_BIN)",
        bin.display()
    );
    if args.skew != "none" && args.replicas >= 3 && !Path::new(FAKETIME_LIB).exists() {
        eprintln!(
            "soak: --skew {} needs libfaketime at {FAKETIME_LIB} (apt-get install -y faketime), or pass --skew none",
            args.skew
        );
        std::process::exit(2);
    }
    let etcd_bin = etcd::etcd_bin();
    println!(
        "soak: bgsched {}, etcd {}",
        bin.display(),
        etcd_bin.display()
    );

    let tmp = tempfile::Builder::new()
        .prefix("bgsched-soak-")
        .tempdir()
        .expect("temp dir");
    let root = tmp.path().to_path_buf();
    // etcd's data dirs (tests/common/etcd.rs uses tempfile) land in ours too.
    // Set before any thread starts.
    std::env::set_var("TMPDIR", &root);
    // Run a private copy: a concurrent `cargo build` replacing the binary
    // would otherwise leave the replicas unable to re-execute themselves
    // for their supervisors (their /proc/self/exe is deleted).
    let private_bin = root.join("bin").join("bgsched");
    fs::create_dir_all(root.join("bin")).expect("bin dir");
    fs::copy(&bin, &private_bin)
        .unwrap_or_else(|e| panic!("cannot copy {} into the temp dir: {e}", bin.display()));
    let bin = private_bin;
    let run_tag = format!("{}-{seed}", std::process::id());
    let reaper = Reaper {
        tag: format!("{run_tag}/"),
        root: root.clone(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.spawn(async {
        let _ = tokio::signal::ctrl_c().await;
        INTERRUPTED.store(true, Ordering::SeqCst);
    });
    let mut ctx = Ctx {
        bin,
        root: root.clone(),
        run_tag,
        rng: Rng(seed),
        rt,
        replicas: args.replicas,
        log_level: args.log.clone(),
        skew: (args.replicas >= 3 && args.skew != "none").then(|| args.skew.clone()),
        epoch: now_ns(),
        next_fault: 1,
    };
    println!("soak: temp dir {}", root.display());
    let phases: Vec<(&'static str, bool, Duration)> = match args.etcd {
        EtcdMode::Single => vec![("single", false, args.duration)],
        EtcdMode::Cluster => vec![("cluster", true, args.duration)],
        EtcdMode::Both => vec![
            ("single", false, args.duration / 2),
            ("cluster", true, args.duration - args.duration / 2),
        ],
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        phases
            .into_iter()
            .map(|(name, cluster, len)| run_phase(&mut ctx, name, cluster, len))
            .collect::<Vec<_>>()
    }));
    let data = match outcome {
        Ok(data) => data,
        Err(_) => {
            drop(reaper);
            let (code, why) = if INTERRUPTED.load(Ordering::SeqCst) {
                (130, "interrupted")
            } else {
                (1, "aborted (see the panic above)")
            };
            println!("soak: {why}; temp dir kept: {}", keep_dir(tmp).display());
            std::process::exit(code);
        }
    };
    // Nothing of the soak may be left over once every phase ended.
    let leftovers = tagged_processes(&format!("{}/", ctx.run_tag), &root.join("single"))
        .into_iter()
        .chain(tagged_processes(
            &format!("{}/", ctx.run_tag),
            &root.join("cluster"),
        ))
        .map(|(pid, _, cmd)| format!("pid {pid}: {cmd}"))
        .collect::<HashSet<_>>();
    drop(reaper);

    println!("\n## Fault log (seed {seed})\n");
    for d in &data {
        for f in &d.faults {
            let after = |from: i64| {
                d.starts
                    .iter()
                    .filter(|s| s.at > from && claimed_after(s, f))
                    .min_by_key(|s| s.at)
                    .map_or("nothing".to_string(), |s| {
                        format!(
                            "{:.2}s ({} {} by {} token {})",
                            secs(s.at - from),
                            s.job,
                            s.trigger,
                            s.instance,
                            s.token
                        )
                    })
            };
            println!(
                "- #{} [{}] +{:.2}s {} {} ({}); healed +{:.2}s; leader before: {} (term {}); first start after injection: {}, after heal: {}",
                f.id,
                f.phase,
                ctx.rel(f.injected),
                f.kind,
                f.target,
                f.note,
                ctx.rel(f.healed),
                f.leader_before.as_deref().unwrap_or("none"),
                f.term_before.map_or("-".to_string(), |t| t.to_string()),
                after(f.injected),
                after(f.healed)
            );
        }
    }
    let reports: Vec<(&str, Report)> = data
        .iter()
        .map(|d| (d.name, verify(d, ctx.epoch)))
        .collect();
    println!(
        "\n## Figures (seed {seed}, lease_ttl {}s, {} replicas)\n",
        TTL.as_secs(),
        args.replicas
    );
    print_table(&reports);
    let mut failed = false;
    for (name, r) in &reports {
        if !r.details.is_empty() {
            println!("\n### Details: {name}\n");
            for line in &r.details {
                println!("- {line}");
            }
        }
        if !r.violations.is_empty() {
            failed = true;
            println!("\n### VIOLATIONS: {name}\n");
            for v in &r.violations {
                println!("- {v}");
            }
        }
    }
    if let Some(why) = placement_stuck(&reports) {
        failed = true;
        println!("\n### VIOLATION: placement\n\n- {why}");
    }
    if !leftovers.is_empty() {
        failed = true;
        println!("\n### VIOLATION: processes left after the soak\n");
        for l in &leftovers {
            println!("- {l}");
        }
    }
    if !reports.iter().any(|(_, r)| r.fired_any) {
        failed = true;
        println!("\nVIOLATION: nothing fired at all");
    }
    if failed || args.keep {
        println!(
            "\nsoak: ledgers, configs and replica logs kept in {}",
            keep_dir(tmp).display()
        );
    } else {
        drop(ctx);
        let _ = tmp.close();
    }
    println!(
        "\nsoak: seed {seed}: {}",
        if failed { "FAILED" } else { "ok" }
    );
    std::process::exit(i32::from(failed));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    /// A tick (unix seconds) divisible by 6, so every schedule fires on it.
    const T0: i64 = 1_800_000_000 - 1_800_000_000 % 6;

    fn start(job: &str, tick: i64, run: &str, instance: &str, token: u64, at_ms: i64) -> Start {
        Start {
            job: job.into(),
            tick,
            run_id: run.into(),
            trigger: "schedule".into(),
            instance: instance.into(),
            token,
            at: tick * NS + at_ms * 1_000_000,
            pid: 1,
        }
    }

    fn end_at(ms_after_tick: i64, tick: i64) -> End {
        End {
            at: tick * NS + ms_after_tick * 1_000_000,
            exit: "0".into(),
        }
    }

    /// A `missed` record of `n` ticks of `job` up to `newest`.
    fn missed(job: &str, newest: i64, n: u64) -> Rec {
        Rec {
            run_id: format!("missed-{job}-{newest}"),
            job: job.into(),
            tick: newest,
            trigger: "schedule".into(),
            instance: "r1".into(),
            term: 5,
            outcome: "missed".into(),
            started_at: None,
            ended_at: None,
            missed_ticks: n,
            reason: "test".into(),
        }
    }

    /// The ledger and ends given, and every tick in the window that the
    /// ledger does not run recorded missed.
    fn data(starts: Vec<Start>, ends: Vec<(&str, End)>) -> PhaseData {
        let mut history = Vec::new();
        for j in &JOBS {
            let first = T0 + (j.period - T0.rem_euclid(j.period)) % j.period;
            for tick in (first..=T0 + 5).step_by(j.period as usize) {
                if !starts.iter().any(|s| s.job == j.name && s.tick == tick) {
                    history.push(missed(j.name, tick, 1));
                }
            }
        }
        PhaseData {
            name: "test",
            // One service instance, beating over the whole window.
            beats: (0..50)
                .map(|i| {
                    (
                        7,
                        "svc-0".to_string(),
                        "r1".to_string(),
                        T0 * NS + i * 100_000_000,
                    )
                })
                .collect(),
            service_records: vec![],
            group_runs: vec![
                GroupRun {
                    job: "ga".into(),
                    run_id: "g1".into(),
                    instance: "r1".into(),
                    start: T0 * NS,
                    end: Some(T0 * NS + 400_000_000),
                },
                GroupRun {
                    job: "gb".into(),
                    run_id: "g2".into(),
                    instance: "r1".into(),
                    start: (T0 + 1) * NS,
                    end: Some((T0 + 1) * NS + 400_000_000),
                },
            ],
            group_records: vec![],
            members: vec!["r1".into(), "r2".into(), "r3".into()],
            skewed: Some("r3".into()),
            span: (T0 * NS, (T0 + 6) * NS),
            window: (T0, T0 + 5),
            starts,
            ends: ends.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            malformed: vec![],
            watches: HashMap::new(),
            history: Some(history),
            history_error: String::new(),
            faults: vec![],
            anomalies: vec![],
            orphans: vec![],
            etcd_slow: 0,
        }
    }

    /// Six beat runs, each ending 20 ms after it started.
    fn clean_beats() -> (Vec<Start>, Vec<(&'static str, End)>) {
        const IDS: [&str; 6] = ["b0", "b1", "b2", "b3", "b4", "b5"];
        let starts = (0..6)
            .map(|i| start("beat", T0 + i, IDS[i as usize], "r1", 5, 10))
            .collect();
        let ends = (0..6)
            .map(|i| (IDS[i as usize], end_at(30, T0 + i)))
            .collect();
        (starts, ends)
    }

    #[test]
    fn a_clean_ledger_has_no_violations() {
        let (starts, ends) = clean_beats();
        let r = verify(&data(starts, ends), T0 * NS);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert!(r.fired_any);
    }

    #[test]
    fn the_same_tick_twice_is_a_violation() {
        let (mut starts, ends) = clean_beats();
        starts.push(start("beat", T0 + 2, "dup", "r2", 5, 500));
        let r = verify(&data(starts, ends), T0 * NS);
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
        assert!(r.violations[0].contains("fired twice"));
    }

    #[test]
    fn a_start_before_the_previous_end_line_is_an_overlap() {
        let starts = vec![
            start("long", T0, "l0", "r1", 5, 10),
            start("long", T0 + 2, "l1", "r2", 7, 10),
        ];
        // l0 ends 3 s after its tick, l1 started 2 s after it.
        let ends = vec![("l0", end_at(3000, T0)), ("l1", end_at(3000, T0 + 2))];
        let r = verify(&data(starts, ends), T0 * NS);
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
        assert!(r.violations[0].contains("overlapping"));
    }

    #[test]
    fn a_killed_run_the_monitor_saw_alive_after_the_next_start_is_an_overlap() {
        let starts = vec![
            start("long", T0, "l0", "r1", 5, 10),
            start("long", T0 + 2, "l1", "r2", 7, 10),
        ];
        let mut d = data(starts, vec![("l1", end_at(3000, T0 + 2))]);
        // No end line for l0, but it was seen alive 2.5 s after its tick.
        d.watches.insert(
            "l0".into(),
            Watch {
                pid: 1,
                starttime: Some(1),
                last_alive: Some(T0 * NS + 2_500_000_000),
                dead_at: Some(T0 * NS + 2_520_000_000),
            },
        );
        let r = verify(&d, T0 * NS);
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
        assert!(r.violations[0].contains("overlapping"));
        // Seen dead before the next start: no overlap.
        d.watches.get_mut("l0").unwrap().last_alive = Some(T0 * NS + 1_900_000_000);
        let r = verify(&d, T0 * NS);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
    }

    #[test]
    fn two_service_instances_beating_at_once_are_a_violation_and_none_at_all_too() {
        let (starts, ends) = clean_beats();
        let mut d = data(starts, ends);
        // A second instance from 2 s on, while the first beats until 4.9 s.
        d.beats.extend((20..30).map(|i| {
            (
                8,
                "svc-1".to_string(),
                "r2".to_string(),
                T0 * NS + i * 100_000_000,
            )
        }));
        let r = verify(&d, T0 * NS);
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
        assert!(r.violations[0].contains("service instances alive at once"));
        // After the first one's last beat: fine.
        d.beats.retain(|b| b.0 == 7);
        d.beats
            .push((8, "svc-1".into(), "r2".into(), T0 * NS + 5_100_000_000));
        assert!(verify(&d, T0 * NS).violations.is_empty());
        d.beats.clear();
        let r = verify(&d, T0 * NS);
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
        assert!(r.violations[0].contains("service never ran"));
    }

    #[test]
    fn group_runs_alive_at_once_are_a_violation_and_none_at_all_too() {
        let (starts, ends) = clean_beats();
        let mut d = data(starts, ends);
        assert!(verify(&d, T0 * NS).violations.is_empty());
        // gb starts while ga still runs.
        d.group_runs[1].start = T0 * NS + 300_000_000;
        let r = verify(&d, T0 * NS);
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
        assert!(r.violations[0].contains("group runs alive at once"));
        // One without an end line is listed, not judged.
        d.group_runs[1].start = (T0 + 1) * NS;
        d.group_runs[0].end = None;
        assert!(verify(&d, T0 * NS).violations.is_empty());
        d.group_runs.clear();
        let r = verify(&d, T0 * NS);
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
        assert!(r.violations[0].contains("group never ran"));
    }

    #[test]
    fn a_decreasing_token_is_a_stale_term() {
        let (mut starts, ends) = clean_beats();
        starts[4].token = 4;
        let r = verify(&data(starts, ends), T0 * NS);
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
        assert!(r.violations[0].contains("stale-term"));
    }

    #[test]
    fn unfired_ticks_are_caught_up_only_if_a_catchup_follows() {
        let (mut starts, mut ends) = clean_beats();
        // Ticks 1 and 2 never ran; 3 ran as a catch-up.
        starts.retain(|s| s.tick != T0 + 1 && s.tick != T0 + 2);
        ends.retain(|(id, _)| *id != "b1" && *id != "b2");
        starts
            .iter_mut()
            .find(|s| s.tick == T0 + 3)
            .unwrap()
            .trigger = "catchup".into();
        // Of the unfired beat ticks, no record.
        let without_beat = |mut d: PhaseData| {
            d.history.as_mut().unwrap().retain(|x| x.job != "beat");
            d
        };
        let r = verify(&without_beat(data(starts.clone(), ends.clone())), T0 * NS);
        let row = |r: &Report, label: &str| match &r
            .rows
            .iter()
            .find(|x| x.label.starts_with(label))
            .unwrap()
            .cell
        {
            Cell::Count(n) => *n,
            c => panic!("{c:?}"),
        };
        assert_eq!(row(&r, "missed ticks, caught up"), 2);
        let unrecorded = r
            .violations
            .iter()
            .filter(|l| l.contains("unfired tick with no") && l.contains("beat tick"))
            .count();
        assert_eq!(unrecorded, 2, "{:#?}", r.violations);
        assert_eq!(r.violations.len(), 2, "{:#?}", r.violations);
        // Without the catch-up they are not caught up.
        starts
            .iter_mut()
            .find(|s| s.tick == T0 + 3)
            .unwrap()
            .trigger = "schedule".into();
        let r = verify(&without_beat(data(starts, ends)), T0 * NS);
        assert_eq!(row(&r, "missed ticks, caught up"), 0);
        // beat 2, and every tick of the other jobs: cron6 3, long 6, slowpoke 2.
        assert_eq!(row(&r, "  (ticks in those stretches)"), 2 + 3 + 6 + 2);
    }

    #[test]
    fn a_tick_recorded_missed_twice_is_a_violation() {
        let (mut starts, ends) = clean_beats();
        starts.retain(|s| s.tick != T0 + 2 && s.tick != T0 + 3);
        // One entry per unfired tick: each covered once.
        let mut d = data(starts, ends);
        let r = verify(&d, T0 * NS);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        // A second entry covering T0+2..T0+3 again.
        d.history.as_mut().unwrap().push(missed("beat", T0 + 3, 2));
        let r = verify(&d, T0 * NS);
        assert_eq!(r.violations.len(), 2, "{:?}", r.violations);
        assert!(
            r.violations.iter().any(|v| v.contains("not run twice")),
            "{:?}",
            r.violations
        );
    }

    /// A fault of `kind` on replica `instance` from `from_ms` to `to_ms`
    /// after T0, while r1 led term 5.
    fn fault(kind: &'static str, instance: &str, from_ms: i64, to_ms: i64) -> Fault {
        Fault {
            id: 1,
            phase: "test",
            kind,
            target: instance.into(),
            instance: Some(instance.into()),
            on_leader: instance == "r1",
            cuts_etcd: kind.starts_with("blackhole"),
            on_etcd: false,
            leader_before: Some("r1".into()),
            term_before: Some(5),
            injected: T0 * NS + from_ms * 1_000_000,
            healed: T0 * NS + to_ms * 1_000_000,
            quorum_kept: false,
            elected: None,
            note: String::new(),
        }
    }

    fn row(r: &Report, label: &str) -> u64 {
        match &r
            .rows
            .iter()
            .find(|x| x.label.starts_with(label))
            .unwrap_or_else(|| panic!("no row {label:?}"))
            .cell
        {
            Cell::Count(n) => *n,
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn placed_runs_on_other_members_carry_their_claimers_token() {
        // beat is placed: its runs go to r2 and r3 (the skewed replica)
        // under r1's term 5, while cron6 and slowpoke stay with r1.
        let (mut starts, ends) = clean_beats();
        for (i, s) in starts.iter_mut().enumerate() {
            s.instance = ["r2", "r3"][i % 2].into();
        }
        starts.push(start("cron6", T0, "c0", "r1", 5, 10));
        let mut ends = ends;
        ends.push(("c0", end_at(30, T0)));
        let r = verify(&data(starts, ends), T0 * NS);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        // r1: ga (placed; gb is kept on the leader).
        assert_eq!(row(&r, "runs of `run_on = \"any\"` jobs executed on r1"), 1);
        assert_eq!(row(&r, "runs of `run_on = \"any\"` jobs executed on r2"), 3);
        assert_eq!(row(&r, "runs of `run_on = \"any\"` jobs executed on r3"), 3);
    }

    #[test]
    fn a_leader_job_on_two_members_in_one_term_and_a_term_of_the_skewed_replica_are_violations() {
        let (mut starts, mut ends) = clean_beats();
        // r1 led term 5 (the missed records of cron6 say so): a cron6 run
        // of term 5 on r2 did not run on its leader.
        starts.push(start("cron6", T0, "c0", "r2", 5, 10));
        ends.push(("c0", end_at(30, T0)));
        let r = verify(&data(starts.clone(), ends.clone()), T0 * NS);
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
        assert!(r.violations[0].contains("terms with two leaders"));
        // The skewed replica ran a run kept on the leader: it led.
        starts.pop();
        starts.push(start("cron6", T0 + 4, "c1", "r3", 7, 10));
        ends.push(("c1", end_at(30, T0 + 4)));
        let r = verify(&data(starts, ends), T0 * NS);
        assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
        assert!(r.violations[0].contains("terms led by the skewed replica"));
    }

    #[test]
    fn a_placed_run_never_started_is_explained_by_a_fault_on_its_member_or_its_claimer() {
        let (mut starts, mut ends) = clean_beats();
        starts.retain(|s| s.tick != T0 + 2);
        ends.retain(|(id, _)| *id != "b2");
        let mut d = data(starts, ends);
        // Claimed by r1 (term 5), placed on r2, its marker expired.
        let history = d.history.as_mut().unwrap();
        history.retain(|x| !(x.job == "beat" && x.tick == T0 + 2));
        let mut lost = missed("beat", T0 + 2, 1);
        lost.run_id = "lost-b2".into();
        lost.outcome = "lost".into();
        lost.instance = "r2".into();
        lost.ended_at = Some((T0 + 4) * NS);
        history.push(lost);
        let explained = |d: &PhaseData| {
            let r = verify(d, T0 * NS);
            assert!(r.violations.is_empty(), "{:?}", r.violations);
            (
                row(&r, "history: claimed, never ran (explained"),
                row(&r, "history: claimed, never ran (unexplained"),
            )
        };
        assert_eq!(explained(&d), (0, 1));
        for (kind, on) in [("SIGSTOP leader", "r1"), ("blackhole follower", "r2")] {
            d.faults = vec![fault(kind, on, 1000, 3000)];
            assert_eq!(explained(&d), (1, 0), "{kind} {on}");
        }
        d.faults = vec![fault("blackhole follower", "r3", 1000, 3000)];
        assert_eq!(explained(&d), (0, 1));
    }

    #[test]
    fn a_run_claimed_before_a_leader_fault_is_no_start_after_it() {
        let (mut starts, ends) = clean_beats();
        // Tick 1, claimed by r1 at its time, placed on r2, starts there
        // after r1 was killed at 1.2 s; the next leader's first run
        // (term 7) starts at 2.01 s.
        starts[1].instance = "r2".into();
        starts[1].at = (T0 + 1) * NS + 500_000_000;
        for s in &mut starts[2..] {
            s.token = 7;
        }
        let mut d = data(starts, ends);
        d.faults = vec![fault("kill -9 leader", "r1", 1200, 1800)];
        let r = verify(&d, T0 * NS);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        let gaps = &r.gaps["kill -9 leader"];
        assert_eq!(gaps.0.len(), 1);
        assert!((gaps.0[0] - 0.81).abs() < 1e-6, "{gaps:?}");
        assert!((gaps.1[0] - 0.81).abs() < 1e-6, "{gaps:?}");
    }

    #[test]
    fn placed_runs_on_one_member_fail_the_soak_only_if_others_were_up() {
        let report = |on: &[(&str, u64)], up: (i64, i64)| Report {
            placed_on: on.iter().map(|(m, n)| (m.to_string(), *n)).collect(),
            members_up: up,
            ..Report::default()
        };
        let spread = [
            ("a", report(&[("r1", 9), ("r2", 0)], (60 * NS, 100 * NS))),
            ("b", report(&[("r1", 0), ("r2", 1)], (0, 20 * NS))),
        ];
        assert_eq!(placement_stuck(&spread), None);
        let stuck = [
            ("a", report(&[("r1", 9), ("r2", 0)], (60 * NS, 100 * NS))),
            ("b", report(&[("r1", 5), ("r2", 0)], (0, 10 * NS))),
        ];
        let why = placement_stuck(&stuck).expect("stuck on r1");
        assert!(why.contains("1 member(s) (r1: 14)"), "{why}");
        // Two or more members up for only half the soak: not judged.
        let alone = [("a", report(&[("r1", 9)], (50 * NS, 100 * NS)))];
        assert_eq!(placement_stuck(&alone), None);
        // Nothing placed at all, with members up: stuck too.
        let none = [("a", report(&[("r1", 0), ("r2", 0)], (90 * NS, 100 * NS)))];
        assert!(placement_stuck(&none).is_some());
    }

    #[test]
    fn members_are_up_unless_a_fault_holds_them_or_etcd_is_gone() {
        let (starts, ends) = clean_beats();
        let mut d = data(starts, ends);
        assert_eq!(members_up(&d), (6 * NS, 6 * NS));
        // r1 and r2 out at once for 1 s (overlapping faults), then
        // etcd gone for 1 s.
        let mut etcd = fault("etcd stop/restart", "etcd0", 4000, 4900);
        etcd.instance = None;
        etcd.on_etcd = true;
        d.faults = vec![
            fault("kill -9 leader", "r1", 1000, 1950),
            fault("SIGSTOP leader", "r2", 1000, 1950),
            etcd,
        ];
        assert_eq!(members_up(&d), (4 * NS, 6 * NS));
    }

    #[test]
    fn the_skewed_replicas_record_times_are_put_back_on_the_true_clock() {
        assert_eq!(faketime_offset("+1h"), Some(3600 * NS));
        assert_eq!(faketime_offset("-30m"), Some(-1800 * NS));
        assert_eq!(faketime_offset("+90"), Some(90 * NS));
        assert_eq!(faketime_offset("+1.5d"), Some(129_600 * NS));
        assert_eq!(faketime_offset("@2020-01-01 00:00:00"), None);
        assert_eq!(faketime_offset("1h"), None);
        // Written by the skewed replica: an hour ahead; by the leader: not.
        let mut x = missed("beat", T0, 1);
        x.started_at = Some(T0 * NS + 3600 * NS + 5);
        x.ended_at = Some(T0 * NS + 2 * NS);
        unskew(&mut x, 3600 * NS);
        assert_eq!(x.started_at, Some(T0 * NS + 5));
        assert_eq!(x.ended_at, Some(T0 * NS + 2 * NS));
    }

    #[test]
    fn the_proxy_passes_blackholes_resets_and_heals() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let echo_port = echo.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in echo.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut reader = conn.try_clone().unwrap();
                    let mut writer = conn;
                    let _ = io::copy(&mut reader, &mut writer);
                });
            }
        });
        let proxy = Proxy::start(&rt, echo_port);
        let connect = || {
            let c = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
            c.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            c
        };
        let read1 = |c: &mut TcpStream| {
            let mut b = [0u8; 1];
            c.read(&mut b).map(|n| (n, b[0]))
        };
        let mut a = connect();
        a.write_all(b"1").unwrap();
        assert_eq!(read1(&mut a).unwrap(), (1, b'1'));

        proxy.set(Mode::Blackhole);
        a.write_all(b"2").unwrap();
        assert!(
            read1(&mut a).is_err(),
            "nothing comes back while blackholed"
        );
        let mut b = connect();
        b.write_all(b"3").unwrap();
        assert!(
            read1(&mut b).is_err(),
            "a new connection is accepted but silent"
        );

        proxy.set(Mode::Pass);
        assert_eq!(
            read1(&mut a).unwrap(),
            (1, b'2'),
            "held data flows after healing"
        );
        assert_eq!(read1(&mut b).unwrap(), (1, b'3'));

        // Closed means EOF or a reset, not a read timeout.
        let closed = |r: io::Result<(usize, u8)>| match r {
            Ok((0, _)) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
        };
        proxy.set(Mode::Reset);
        let got = read1(&mut a);
        assert!(closed(got), "a current connection is reset");
        let mut c = connect();
        let _ = c.write_all(b"5");
        let got = read1(&mut c);
        assert!(closed(got), "a new connection is closed at once");

        proxy.set(Mode::Pass);
        let mut d = connect();
        d.write_all(b"6").unwrap();
        assert_eq!(read1(&mut d).unwrap(), (1, b'6'));
    }
}
