//! A TCP proxy in front of one etcd member that can lose answers: once
//! armed, it still forwards what the client sends next, drops whatever
//! comes back, and a moment later breaks every connection, as a network
//! cut just after a request went out does. The request reaches etcd and is
//! carried out; its client never hears how it went.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Pass,
    /// The next request arms the cut.
    Armed,
    /// Answers are dropped; connections break at the deadline.
    Losing(Instant),
}

#[derive(Default)]
struct Shared {
    mode: Option<Mode>,
    conns: Vec<(TcpStream, TcpStream)>,
    /// Requests forwarded while armed or losing.
    sent_blind: usize,
    /// Cuts still to come after the current one.
    more_cuts: usize,
}

pub struct LossyProxy {
    port: u16,
    shared: Arc<Mutex<Shared>>,
}

impl LossyProxy {
    /// Listen on a free loopback port, forwarding to `upstream`.
    pub fn start(upstream: u16) -> LossyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a proxy port");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Mutex::new(Shared {
            mode: Some(Mode::Pass),
            ..Shared::default()
        }));
        let accepting = shared.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let pair = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                accepting.lock().unwrap().conns.push(pair);
                let up = accepting.clone();
                let (c, s) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                thread::spawn(move || pump(c, s, &up, true));
                let down = accepting.clone();
                thread::spawn(move || pump(server, client, &down, false));
            }
        });
        let cutter = shared.clone();
        thread::spawn(move || loop {
            thread::sleep(Duration::from_millis(10));
            let mut s = cutter.lock().unwrap();
            if let Some(Mode::Losing(at)) = s.mode {
                if Instant::now() >= at {
                    for (c, sv) in s.conns.drain(..) {
                        let _ = c.shutdown(Shutdown::Both);
                        let _ = sv.shutdown(Shutdown::Both);
                    }
                    s.mode = Some(if s.more_cuts > 0 {
                        s.more_cuts -= 1;
                        Mode::Armed
                    } else {
                        Mode::Pass
                    });
                }
            }
        });
        LossyProxy { port, shared }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Lose the answers to whatever the client sends next.
    pub fn lose_next_answers(&self) {
        self.lose_answers_times(1);
    }

    /// Lose answers `cuts` times over: after each cut, the next request
    /// (the client asking how its request went, say) is sent blind too.
    pub fn lose_answers_times(&self, cuts: usize) {
        let mut s = self.shared.lock().unwrap();
        s.mode = Some(Mode::Armed);
        s.sent_blind = 0;
        s.more_cuts = cuts.saturating_sub(1);
    }

    /// Wait out a cut under way, then pass everything again: a cut armed
    /// for a request that never came (the client wrote it into a connection
    /// just cut, so it failed without reaching the proxy) is called off.
    /// How many requests went out blind since the arming.
    pub fn calm(&self) -> usize {
        loop {
            {
                let mut s = self.shared.lock().unwrap();
                if !matches!(s.mode, Some(Mode::Losing(_))) {
                    s.mode = Some(Mode::Pass);
                    s.more_cuts = 0;
                    return s.sent_blind;
                }
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the cut has happened since `lose_next_answers`, and how many
    /// reads from the client went out unanswered.
    pub fn cut_done(&self) -> Option<usize> {
        let s = self.shared.lock().unwrap();
        (s.mode == Some(Mode::Pass)).then_some(s.sent_blind)
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Mutex<Shared>, upstream: bool) {
    let mut buf = vec![0u8; 64 * 1024];
    let cut_after = Duration::from_millis(CUT_AFTER_MS);
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let forward = {
            let mut s = shared.lock().unwrap();
            match (s.mode, upstream) {
                (Some(Mode::Armed), true) => {
                    s.mode = Some(Mode::Losing(Instant::now() + cut_after));
                    s.sent_blind += 1;
                    true
                }
                (Some(Mode::Losing(_)), true) => {
                    s.sent_blind += 1;
                    true
                }
                (Some(Mode::Pass), _) | (Some(Mode::Armed), false) => true,
                (_, false) => false,
                (None, _) => false,
            }
        };
        if forward && to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// How long after the first request sent blind the connections break:
/// ample for a loopback etcd to carry the request out.
const CUT_AFTER_MS: u64 = 1000;
