//! A webhook receiver on a free loopback port: it keeps every request it
//! gets and answers each with the next status it was told to give (200
//! once none is left), or never answers at all.

use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request as the receiver got it.
#[derive(Clone)]
pub struct Delivery {
    pub path: String,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub json: Value,
    /// The status it was answered with (None: not answered).
    pub answered: Option<u16>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {:?} answered {:?}: {}",
            self.path, self.headers, self.answered, self.json
        )
    }
}

impl Delivery {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map_or("", String::as_str)
    }

    pub fn event(&self) -> &str {
        self.json["event"].as_str().unwrap_or_default()
    }
}

#[derive(Default)]
struct Shared {
    got: Vec<Delivery>,
    answers: VecDeque<u16>,
}

pub struct Receiver {
    pub port: u16,
    shared: Arc<Mutex<Shared>>,
}

impl Receiver {
    /// Answers 200 unless told otherwise with [`Receiver::answer_next`].
    pub fn start() -> Self {
        Self::serve(false)
    }

    /// Reads each request and keeps the connection open without a word.
    pub fn silent() -> Self {
        Self::serve(true)
    }

    fn serve(silent: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a receiver");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let serving = shared.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = serving.clone();
                std::thread::spawn(move || {
                    let _ = handle(stream, &shared, silent);
                });
            }
        });
        Receiver { port, shared }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The next requests get these statuses, in order.
    pub fn answer_next(&self, statuses: &[u16]) {
        self.shared
            .lock()
            .unwrap()
            .answers
            .extend(statuses.iter().copied());
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.shared.lock().unwrap().got.clone()
    }

    /// Waits until `enough` holds for what was delivered, and returns it.
    #[track_caller]
    pub fn wait_for(
        &self,
        what: &str,
        mut enough: impl FnMut(&[Delivery]) -> bool,
    ) -> Vec<Delivery> {
        let mut got = Vec::new();
        super::wait_until(super::PATIENCE, what, || {
            got = self.deliveries();
            enough(&got)
        });
        got
    }
}

fn handle(stream: TcpStream, shared: &Mutex<Shared>, silent: bool) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    // Keep-alive: one connection may carry several requests.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let path = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let mut headers = HashMap::new();
        loop {
            let mut header = String::new();
            reader.read_line(&mut header)?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
            }
        }
        let len = headers
            .get("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let status = {
            let mut shared = shared.lock().unwrap();
            let status = (!silent).then(|| shared.answers.pop_front().unwrap_or(200));
            shared.got.push(Delivery {
                path,
                headers,
                body,
                json,
                answered: status,
            });
            status
        };
        let Some(status) = status else {
            std::thread::sleep(Duration::from_secs(60));
            return Ok(());
        };
        write!(
            &stream,
            "HTTP/1.1 {status} Whatever\r\nContent-Length: 0\r\n\r\n"
        )?;
        (&stream).flush()?;
    }
}
