//! Real etcd servers on loopback for integration tests.
//!
//! [`Etcd`] is one single-member etcd; [`EtcdCluster`] is a small loopback
//! cluster of them. Every instance gets its own free ports, its own
//! temporary data directory and its own log file, so tests can run alone or
//! in parallel. Everything that waits does so with a deadline.
//!
//! The binary is `$BGSCHED_ETCD_BIN`, else `etcd` on `PATH`, else
//! `/usr/bin/etcd`; without one the test panics (it never passes silently).
//! `scripts/test` installs Debian's `etcd-server` when it is missing.
//!
//! Flags are chosen for etcd 3.4 (Debian's) and also work with 3.5:
//! `--logger zap --log-outputs stderr --log-level warn` keeps the log short,
//! and `--heartbeat-interval 50 --election-timeout 500` makes elections (and
//! so start-up and recovery after a member dies) quick, unless a cluster is
//! started with etcd's default timing.
#![allow(dead_code)]

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::process::Signal;

/// `--heartbeat-interval` and `--election-timeout` (ms) unless a test asks
/// for etcd's defaults.
const QUICK_ELECTIONS: (u32, u32) = (50, 500);

/// How long etcd may take to become healthy, or to exit after SIGTERM.
pub const ETCD_PATIENCE: Duration = Duration::from_secs(30);

/// Fresh starts that may fail on a port taken between our probe and etcd's bind.
const START_ATTEMPTS: usize = 5;

const INSTALL_HINT: &str =
    "install etcd (apt-get install -y etcd-server, or set BGSCHED_ETCD_BIN to an etcd binary); \
     scripts/test does the former on Debian-like machines";

/// One etcd server process on loopback.
pub struct Etcd {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// `--initial-cluster` value (`name=peerurl,...`).
    initial_cluster: String,
    token: String,
    bin: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Length of the log file when the current process was spawned.
    log_offset: u64,
    /// `--heartbeat-interval` and `--election-timeout`, in ms.
    timing: (u32, u32),
}

impl Etcd {
    /// Start a single-member etcd and wait until it is healthy.
    pub fn start() -> Etcd {
        let bin = etcd_bin();
        let token = cluster_token();
        let mut last_log = String::new();
        for _ in 0..START_ATTEMPTS {
            let ports = free_ports(2);
            let name = "etcd0".to_string();
            let initial_cluster = format!("{name}={}", url(ports[1]));
            let mut etcd = Etcd::new(
                &bin,
                name,
                ports[0],
                ports[1],
                initial_cluster,
                token.clone(),
            );
            etcd.spawn();
            let deadline = Instant::now() + ETCD_PATIENCE;
            match etcd.poll_until_healthy(deadline) {
                Poll::Healthy => return etcd,
                Poll::Exited if etcd.bind_conflict() => {
                    // Someone took a port between our probe and etcd's bind:
                    // try again with new ports and a new data dir.
                    last_log = etcd.log_text();
                }
                other => etcd.fail(&format!("did not become healthy ({other:?})")),
            }
        }
        panic!("etcd failed to bind free ports {START_ATTEMPTS} times; last log:\n{last_log}");
    }

    /// Start a single-member etcd with authentication enabled: `user`
    /// (and `root`, which etcd requires before `auth enable`) has
    /// `password` and may read and write every key.
    pub fn start_with_auth(user: &str, password: &str) -> Etcd {
        let etcd = Etcd::start();
        let call =
            |path: &str, body: String| match http(etcd.client_port, "POST", path, Some(&body)) {
                Ok((200, _)) => {}
                other => etcd.fail(&format!("{path} {body}: {other:?}")),
            };
        let all = base64_encode(b"\0");
        call("/v3/auth/role/add", r#"{"name":"root"}"#.into());
        call(
            "/v3/auth/user/add",
            format!(r#"{{"name":"root","password":"{password}"}}"#),
        );
        call(
            "/v3/auth/user/grant",
            r#"{"user":"root","role":"root"}"#.into(),
        );
        if user != "root" {
            call("/v3/auth/role/add", r#"{"name":"readwrite"}"#.into());
            call(
                "/v3/auth/role/grant",
                format!(
                    r#"{{"name":"readwrite","perm":{{"permType":"READWRITE","key":"{all}","range_end":"{all}"}}}}"#
                ),
            );
            call(
                "/v3/auth/user/add",
                format!(r#"{{"name":"{user}","password":"{password}"}}"#),
            );
            call(
                "/v3/auth/user/grant",
                format!(r#"{{"user":"{user}","role":"readwrite"}}"#),
            );
        }
        call("/v3/auth/enable", "{}".into());
        etcd
    }

    /// POST `body` to the JSON gateway's `path` as `user` of an etcd started
    /// with [`Etcd::start_with_auth`]: the reply, failing the test unless 200.
    pub fn call_as(&self, user: &str, password: &str, path: &str, body: &str) -> String {
        let login = format!(r#"{{"name":"{user}","password":"{password}"}}"#);
        let token = match http(
            self.client_port,
            "POST",
            "/v3/auth/authenticate",
            Some(&login),
        ) {
            Ok((200, reply)) => serde_json::from_str::<serde_json::Value>(&reply)
                .ok()
                .and_then(|v| v["token"].as_str().map(str::to_string))
                .unwrap_or_else(|| self.fail(&format!("no token in {reply}"))),
            other => self.fail(&format!("authenticate: {other:?}")),
        };
        match http_request(
            self.client_port,
            "POST",
            path,
            Some(body),
            Duration::from_secs(15),
            &[("Authorization", &token)],
        ) {
            Ok((200, reply)) => reply,
            other => self.fail(&format!("{path} {body}: {other:?}")),
        }
    }

    /// Every key and value (lossy UTF-8), read as `user`, of an etcd started
    /// with [`Etcd::start_with_auth`].
    pub fn dump_as(&self, user: &str, password: &str) -> Vec<(String, String)> {
        let all = base64_encode(b"\0");
        let range = format!(r#"{{"key":"{all}","range_end":"{all}"}}"#);
        let reply = self.call_as(user, password, "/v3/kv/range", &range);
        let json: serde_json::Value = serde_json::from_str(&reply).expect("range reply is JSON");
        let text = |v: &serde_json::Value| {
            String::from_utf8_lossy(&base64_decode(v.as_str().unwrap_or("")).unwrap_or_default())
                .into_owned()
        };
        json["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .map(|kv| (text(&kv["key"]), text(&kv["value"])))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn new(
        bin: &Path,
        name: String,
        client_port: u16,
        peer_port: u16,
        initial_cluster: String,
        token: String,
    ) -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("bgsched-etcd-")
            .tempdir()
            .expect("tempdir for etcd");
        Etcd {
            name,
            client_port,
            peer_port,
            initial_cluster,
            token,
            bin: bin.to_path_buf(),
            dir,
            child: None,
            log_offset: 0,
            timing: QUICK_ELECTIONS,
        }
    }

    /// `http://127.0.0.1:PORT`, the client URL.
    pub fn endpoint(&self) -> String {
        url(self.client_port)
    }

    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    pub fn peer_port(&self) -> u16 {
        self.peer_port
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// Everything etcd logged, over all its restarts.
    pub fn log_text(&self) -> String {
        fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The process id while a process (possibly stopped, or a zombie) is held.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Whether the process is running (or paused), i.e. has not exited.
    pub fn running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// One `GET /health` probe: true when this member answers `"health":"true"`
    /// (it is up, sees a leader and has no alarm).
    pub fn healthy(&self) -> bool {
        health(self.client_port)
    }

    /// Wait until `GET /health` says true, failing the test after 30 s or if
    /// the process exits.
    pub fn wait_healthy(&mut self) {
        let deadline = Instant::now() + ETCD_PATIENCE;
        match self.poll_until_healthy(deadline) {
            Poll::Healthy => {}
            other => self.fail(&format!("did not become healthy ({other:?})")),
        }
    }

    /// SIGTERM, and wait (30 s at most) for it to exit. No-op if not running.
    pub fn stop(&mut self) {
        if !self.running() {
            self.reap();
            return;
        }
        self.signal(Signal::TERM);
        // A paused etcd only acts on SIGTERM once continued.
        self.signal(Signal::CONT);
        let deadline = Instant::now() + ETCD_PATIENCE;
        while self.running() {
            if Instant::now() > deadline {
                self.kill();
                self.fail("did not exit within 30 s of SIGTERM (killed it)");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.reap();
    }

    /// SIGKILL, and reap. No-op if not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL also ends a stopped process.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again with the same name, ports and data dir (stopping it first
    /// if it is still running), and wait until it is healthy. A port that
    /// something else briefly holds is retried until the deadline.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + ETCD_PATIENCE;
        loop {
            self.spawn();
            match self.poll_until_healthy(deadline) {
                Poll::Healthy => return,
                Poll::Exited if self.bind_conflict() && Instant::now() < deadline => {
                    self.reap();
                    std::thread::sleep(Duration::from_millis(200));
                }
                other => self.fail(&format!("did not become healthy after restart ({other:?})")),
            }
        }
    }

    /// Spawn etcd without waiting for it: for restarting several cluster
    /// members at once (follow with [`Etcd::wait_healthy`]).
    pub fn spawn_again(&mut self) {
        self.stop();
        self.spawn();
    }

    /// SIGSTOP: the process stays, but answers nothing (connections hang).
    pub fn pause(&self) {
        self.signal(Signal::STOP);
        // The signal is delivered asynchronously: wait until the kernel
        // reports the process stopped, so it cannot answer any more.
        if let Some(pid) = self.pid() {
            let deadline = Instant::now() + ETCD_PATIENCE;
            while Instant::now() < deadline {
                let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let state = stat
                    .rsplit(')')
                    .next()
                    .and_then(|s| s.split_whitespace().next());
                if matches!(state, Some("T") | Some("t") | None) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// SIGCONT after [`Etcd::pause`].
    pub fn resume(&self) {
        self.signal(Signal::CONT);
    }

    /// Put `key` = `value` through the v3 HTTP/JSON gateway; panics on error.
    pub fn put(&self, key: &str, value: &str) {
        if let Err(e) = kv_put(&self.endpoint(), key, value) {
            self.fail(&format!("put {key:?} failed: {e}"));
        }
    }

    /// Get `key` through the v3 HTTP/JSON gateway; panics on error.
    pub fn get(&self, key: &str) -> Option<String> {
        kv_get(&self.endpoint(), key)
            .unwrap_or_else(|e| self.fail(&format!("get {key:?} failed: {e}")))
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "etcd {} already spawned", self.name);
        let log_path = self.log_path();
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("etcd log file");
        self.log_offset = log.metadata().map(|m| m.len()).unwrap_or(0);
        let client = url(self.client_port);
        let peer = url(self.peer_port);
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            // Ignored when the data dir already holds a member (restarts).
            .args(["--initial-cluster-state", "new"])
            // Unique per cluster: members of two test clusters never join up.
            .args(["--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", &self.timing.0.to_string()])
            .args(["--election-timeout", &self.timing.1.to_string()])
            // 3.4 defaults to capnslog, which ignores --log-level.
            .args([
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
                "--log-level",
                "warn",
            ])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log file"))
            .stderr(log.try_clone().expect("etcd log file"));
        // etcd reads ETCD_<FLAG> variables too, and refuses to start when one
        // shadows a flag: keep the caller's out (bar the arch override).
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if key.starts_with("ETCD_") && key != "ETCD_UNSUPPORTED_ARCH" {
                cmd.env_remove(key);
            }
        }
        let _ = writeln!(
            log,
            "--- bgsched test harness: starting {} (client {client}, peer {peer}) ---",
            self.name
        );
        self.log_offset = log.metadata().map(|m| m.len()).unwrap_or(self.log_offset);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}; {INSTALL_HINT}", self.bin.display()));
        self.child = Some(child);
    }

    fn poll_until_healthy(&mut self, deadline: Instant) -> Poll {
        loop {
            if !self.running() {
                return Poll::Exited;
            }
            if self.healthy() {
                return Poll::Healthy;
            }
            if Instant::now() > deadline {
                return Poll::TimedOut;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Whether the current process's log says a port was taken.
    fn bind_conflict(&self) -> bool {
        let text = self.log_text();
        let start = (self.log_offset as usize).min(text.len());
        text.get(start..)
            .unwrap_or(&text)
            .contains("address already in use")
    }

    /// Forget an exited process (after reaping it).
    fn reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => {}
                Ok(None) => {
                    self.child = Some(child);
                }
            }
        }
    }

    fn signal(&self, sig: Signal) {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("etcd {} is not running", self.name));
        // The child is not reaped yet, so the pid cannot have been reused.
        let pid = rustix::process::Pid::from_raw(pid).expect("pid");
        let _ = rustix::process::kill_process(pid, sig);
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "etcd {} ({}, data {}): {what}\n--- etcd log ---\n{}",
            self.name,
            self.endpoint(),
            self.data_dir().display(),
            self.log_text()
        )
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            // The tempdir (and the log in it) goes away with us: show its end
            // in the failed test's output.
            let text = self.log_text();
            let mut from = text.len().saturating_sub(4000);
            while !text.is_char_boundary(from) {
                from += 1;
            }
            let tail = &text[from..];
            eprintln!(
                "--- end of etcd {} log ({}) ---\n{tail}",
                self.name,
                self.endpoint()
            );
        }
    }
}

#[derive(Debug)]
enum Poll {
    Healthy,
    Exited,
    TimedOut,
}

/// A loopback etcd cluster of `n` members, each its own process, ports and
/// data dir.
pub struct EtcdCluster {
    members: Vec<Etcd>,
}

impl EtcdCluster {
    /// Start `n` members at once and wait until every one is healthy (which
    /// needs a leader, so a quorum).
    pub fn start(n: usize) -> EtcdCluster {
        Self::start_with_timing(n, QUICK_ELECTIONS)
    }

    /// [`EtcdCluster::start`] with etcd's own defaults for heartbeats and
    /// elections (100 ms, 1 s), as a user runs it: leader elections then
    /// take about as long as in production.
    pub fn start_with_default_elections(n: usize) -> EtcdCluster {
        Self::start_with_timing(n, (100, 1000))
    }

    fn start_with_timing(n: usize, timing: (u32, u32)) -> EtcdCluster {
        assert!(n >= 1, "a cluster needs a member");
        let bin = etcd_bin();
        let mut last_log = String::new();
        for _ in 0..START_ATTEMPTS {
            let token = cluster_token();
            let ports = free_ports(2 * n);
            let names: Vec<String> = (0..n).map(|i| format!("etcd{i}")).collect();
            let initial_cluster = names
                .iter()
                .enumerate()
                .map(|(i, name)| format!("{name}={}", url(ports[2 * i + 1])))
                .collect::<Vec<_>>()
                .join(",");
            let mut members: Vec<Etcd> = names
                .into_iter()
                .enumerate()
                .map(|(i, name)| {
                    Etcd::new(
                        &bin,
                        name,
                        ports[2 * i],
                        ports[2 * i + 1],
                        initial_cluster.clone(),
                        token.clone(),
                    )
                })
                .collect();
            for m in &mut members {
                m.timing = timing;
                m.spawn();
            }
            let mut cluster = EtcdCluster { members };
            match cluster.poll_all_healthy(Instant::now() + ETCD_PATIENCE) {
                Ok(()) => return cluster,
                Err(i) if !cluster.members[i].running() && cluster.members[i].bind_conflict() => {
                    last_log = cluster.log_text();
                }
                Err(i) => panic!(
                    "etcd cluster: member {i} did not become healthy ({})\n{}",
                    if cluster.members[i].running() {
                        "timed out"
                    } else {
                        "exited"
                    },
                    cluster.log_text()
                ),
            }
        }
        panic!(
            "etcd cluster failed to bind free ports {START_ATTEMPTS} times; last logs:\n{last_log}"
        );
    }

    /// Ok when all are healthy; Err(i) when member i exited or the deadline passed.
    fn poll_all_healthy(&mut self, deadline: Instant) -> Result<(), usize> {
        let mut pending: Vec<usize> = (0..self.members.len()).collect();
        loop {
            for &i in &pending {
                if !self.members[i].running() {
                    return Err(i);
                }
            }
            pending.retain(|&i| !self.members[i].healthy());
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(pending[0]);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn members(&self) -> &[Etcd] {
        &self.members
    }

    pub fn member(&mut self, i: usize) -> &mut Etcd {
        &mut self.members[i]
    }

    /// Every member's client URL (dead ones included), in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Etcd::endpoint).collect()
    }

    /// SIGKILL member `i` and reap it.
    pub fn kill_member(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Start member `i` again on its ports and data dir and wait until it is
    /// healthy (back in the cluster and seeing a leader). A member cannot be
    /// healthy without a quorum: to bring back several dead members, use
    /// [`EtcdCluster::restart_members`].
    pub fn restart_member(&mut self, i: usize) {
        self.members[i].restart();
    }

    /// Start the members `which` again all at once, then wait until each is
    /// healthy.
    pub fn restart_members(&mut self, which: &[usize]) {
        for &i in which {
            self.members[i].spawn_again();
        }
        for &i in which {
            self.members[i].wait_healthy();
        }
    }

    /// The member that is leader by its own account (`/v3/maintenance/status`),
    /// if a live one is; None while an election is under way. Skips killed
    /// members; a paused one costs a 2 s timeout.
    pub fn leader(&self) -> Option<usize> {
        self.members.iter().position(|m| {
            m.child.is_some()
                && http_within(
                    m.client_port,
                    "POST",
                    "/v3/maintenance/status",
                    Some("{}"),
                    Duration::from_secs(2),
                )
                .ok()
                .filter(|(status, _)| *status == 200)
                .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
                .is_some_and(|j| j["leader"].is_string() && j["leader"] == j["header"]["member_id"])
        })
    }

    /// All members' logs, each under a heading.
    pub fn log_text(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("--- {} ({}) ---\n{}", m.name, m.endpoint(), m.log_text()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `$BGSCHED_ETCD_BIN`, else `etcd` on `PATH`, else `/usr/bin/etcd`.
pub fn etcd_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("BGSCHED_ETCD_BIN").filter(|b| !b.is_empty()) {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "BGSCHED_ETCD_BIN={} is not a file; {INSTALL_HINT}",
            bin.display()
        );
        return bin;
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("etcd"))
        .find(|p| is_executable(p));
    if let Some(bin) = on_path {
        return bin;
    }
    let fallback = PathBuf::from("/usr/bin/etcd");
    if is_executable(&fallback) {
        return fallback;
    }
    panic!(
        "no etcd binary (looked at $BGSCHED_ETCD_BIN, etcd on PATH, /usr/bin/etcd): {INSTALL_HINT}"
    );
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

fn cluster_token() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "bgsched-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `n` distinct loopback ports that were free a moment ago. The listeners
/// are all held until every port is picked, and no port is handed out twice
/// in this process, so parallel tests never race each other for one; another
/// process can still take one, which start() detects and retries.
fn free_ports(n: usize) -> Vec<u16> {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed = handed.get_or_insert_with(HashSet::new);
    let mut listeners = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < n {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local addr").port();
        if handed.insert(port) {
            ports.push(port);
        }
        listeners.push(l);
    }
    ports
}

/// Short timeout: a port taken by some other listener accepts and never
/// answers, and the caller polls again anyway.
fn health(port: u16) -> bool {
    match http_within(port, "GET", "/health", None, Duration::from_secs(2)) {
        Ok((200, body)) => body.contains(r#""health":"true""#),
        _ => false,
    }
}

fn port_of(endpoint: &str) -> u16 {
    endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("not an http://127.0.0.1:PORT endpoint: {endpoint}"))
}

/// A minimal HTTP/1.0 request to 127.0.0.1:`port`: (status, body).
/// HTTP/1.0 keeps Go's server from chunking the reply and makes it close the
/// connection when done, so reading to the end is the whole body.
/// Replies may take up to 15 s: a put waits for a quorum, and while a
/// cluster has no leader etcd holds it until its own request timeout (~6 s).
pub fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> io::Result<(u16, String)> {
    http_within(port, method, path, body, Duration::from_secs(15))
}

/// [`http`] with a reply timeout of the caller's choosing.
pub fn http_within(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> io::Result<(u16, String)> {
    http_request(port, method, path, body, timeout, &[])
}

/// [`http_within`] with extra request headers.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
    headers: &[(&str, &str)],
) -> io::Result<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let body = body.unwrap_or("");
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply)?;
    let reply = String::from_utf8_lossy(&reply);
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other(format!("malformed HTTP reply: {reply:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("no HTTP status in {head:?}")))?;
    Ok((status, body.to_string()))
}

/// `POST /v3/kv/put` on `endpoint` (v3 HTTP/JSON gateway; keys and values
/// travel base64-encoded).
pub fn kv_put(endpoint: &str, key: &str, value: &str) -> io::Result<()> {
    let body = format!(
        r#"{{"key":"{}","value":"{}"}}"#,
        base64_encode(key.as_bytes()),
        base64_encode(value.as_bytes())
    );
    match http(port_of(endpoint), "POST", "/v3/kv/put", Some(&body))? {
        (200, _) => Ok(()),
        (status, body) => Err(io::Error::other(format!("HTTP {status}: {body}"))),
    }
}

/// `POST /v3/kv/range` for one key on `endpoint`: its value, if any.
pub fn kv_get(endpoint: &str, key: &str) -> io::Result<Option<String>> {
    let body = format!(r#"{{"key":"{}"}}"#, base64_encode(key.as_bytes()));
    let (status, reply) = http(port_of(endpoint), "POST", "/v3/kv/range", Some(&body))?;
    if status != 200 {
        return Err(io::Error::other(format!("HTTP {status}: {reply}")));
    }
    let json: serde_json::Value = serde_json::from_str(&reply)
        .map_err(|e| io::Error::other(format!("range reply is not JSON ({e}): {reply}")))?;
    // An absent key has no "kvs" at all; an empty value has no "value".
    let Some(kv) = json["kvs"].as_array().and_then(|kvs| kvs.first()) else {
        return Ok(None);
    };
    let value = base64_decode(kv["value"].as_str().unwrap_or(""))
        .ok_or_else(|| io::Error::other(format!("bad base64 in {reply}")))?;
    Ok(Some(String::from_utf8_lossy(&value).into_owned()))
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = B64.iter().position(|&x| x == c)? as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// `POST /v3/kv/range` for every key under `prefix` on `endpoint`:
/// (key, value) pairs in key order.
pub fn kv_range_prefix(endpoint: &str, prefix: &str) -> io::Result<Vec<(String, String)>> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("non-empty prefix") += 1;
    let body = format!(
        r#"{{"key":"{}","range_end":"{}"}}"#,
        base64_encode(prefix.as_bytes()),
        base64_encode(&end)
    );
    let (status, reply) = http_within(
        port_of(endpoint),
        "POST",
        "/v3/kv/range",
        Some(&body),
        Duration::from_secs(60),
    )?;
    if status != 200 {
        return Err(io::Error::other(format!("HTTP {status}: {reply}")));
    }
    let json: serde_json::Value = serde_json::from_str(&reply)
        .map_err(|e| io::Error::other(format!("range reply is not JSON ({e})")))?;
    let decode = |v: &serde_json::Value| {
        base64_decode(v.as_str().unwrap_or(""))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .ok_or_else(|| io::Error::other("bad base64 in a range reply"))
    };
    json["kvs"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|kv| Ok((decode(&kv["key"])?, decode(&kv["value"])?)))
        .collect()
}
