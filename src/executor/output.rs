//! Turning a child's output pipe into log lines and a bounded tail.
//!
//! A run's stdout and stderr share one pipe (as cron's mail and container
//! runtimes' logs do): the kernel then keeps the order in which the job
//! wrote, which two pipes read by two readers cannot. A foreground
//! `trigger` too: it copies that one stream to its stdout.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Log lines longer than this are cut (and marked) so one runaway line
/// cannot flood the log pipeline; the tail keeps the bytes regardless.
pub const MAX_LINE: usize = 16 * 1024;
/// How much of the combined output is kept with the run record.
pub const TAIL_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
    /// stdout and stderr through one pipe, in the order they were written.
    Combined,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::Combined => "output",
        }
    }
}

/// The last [`TAIL_BYTES`] of what the job printed, whatever its line
/// lengths: exactly its bytes where they are UTF-8, with invalid sequences
/// replaced (before the cut, so the replacement cannot grow the tail past
/// its bound); shared by the readers of a run.
#[derive(Clone, Default)]
pub struct Tail(Arc<Mutex<TailBuf>>);

#[derive(Default)]
struct TailBuf {
    buf: VecDeque<u8>,
    /// Bytes pushed so far: the offset just after the newest one.
    total: u64,
    /// Where a follower reads the output while the run goes on
    /// (standalone: a file in the state directory), every byte of it.
    live: Option<std::fs::File>,
}

impl Tail {
    /// A tail that also copies everything to `live` as it comes, its
    /// offsets going on from `base` (what the run's earlier attempts
    /// printed), so a follower sees one stream across retries.
    pub fn with_live(live: Option<std::fs::File>, base: u64) -> Tail {
        Tail(Arc::new(Mutex::new(TailBuf {
            live,
            total: base,
            ..TailBuf::default()
        })))
    }

    fn push(&self, text: &str) {
        let all = text.as_bytes();
        let mut t = self.0.lock().expect("tail lock poisoned");
        if let Some(live) = &mut t.live {
            // A follower's copy; the record's tail does not depend on it.
            if std::io::Write::write_all(live, all).is_err() {
                t.live = None;
            }
        }
        t.total += all.len() as u64;
        let bytes = &all[all.len().saturating_sub(TAIL_BYTES)..];
        let excess = (t.buf.len() + bytes.len()).saturating_sub(TAIL_BYTES);
        t.buf.drain(..excess);
        t.buf.extend(bytes);
    }

    /// Bytes of output so far.
    pub fn total(&self) -> u64 {
        self.0.lock().expect("tail lock poisoned").total
    }

    /// What is kept from offset `from` on: (the offset it starts at, which
    /// is later than `from` when that part is no longer kept, the text).
    pub fn since(&self, from: u64) -> (u64, String) {
        let t = self.0.lock().expect("tail lock poisoned");
        let kept_from = t.total - t.buf.len() as u64;
        let start = from.clamp(kept_from, t.total);
        let skip = (start - kept_from) as usize;
        let (a, b) = t.buf.as_slices();
        let bytes: Vec<u8> = a.iter().chain(b).skip(skip).copied().collect();
        // Whole characters only: a cut one starts at the next.
        let lead = bytes
            .iter()
            .position(|b| (*b as i8) >= -0x40)
            .unwrap_or(bytes.len());
        (
            start + lead as u64,
            String::from_utf8_lossy(&bytes[lead..]).into_owned(),
        )
    }

    pub fn contents(&self) -> String {
        let t = self.0.lock().expect("tail lock poisoned");
        let (a, b) = t.buf.as_slices();
        let bytes = [a, b].concat();
        // The cut may have split a character: start at the next one.
        let start = bytes
            .iter()
            .position(|b| (*b as i8) >= -0x40)
            .unwrap_or(bytes.len());
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }
}

impl crate::coordination::LiveOutput for Tail {
    fn since(&self, from: u64) -> (u64, String) {
        Tail::since(self, from)
    }
}

/// Turns a byte stream into text for the tail: invalid sequences become
/// U+FFFD, and a character split between two reads is kept whole.
#[derive(Default)]
struct Decoder {
    pending: Vec<u8>,
}

impl Decoder {
    fn decode(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut text = String::new();
        let mut rest = &self.pending[..];
        loop {
            match std::str::from_utf8(rest) {
                Ok(valid) => {
                    text.push_str(valid);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, bad) = rest.split_at(e.valid_up_to());
                    text.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            text.push('\u{fffd}');
                            rest = &bad[n..];
                        }
                        // An incomplete character at the end: wait for the rest.
                        None => {
                            rest = bad;
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        text
    }

    fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

/// Read `pipe` to its end: every byte goes to `tail`, and each line (lossy
/// UTF-8, cut at [`MAX_LINE`]) to `sink`.
pub async fn pump<R, F>(pipe: R, stream: Stream, tail: Tail, mut sink: F)
where
    R: AsyncRead + Unpin,
    F: FnMut(Stream, &str),
{
    let mut pending: Vec<u8> = Vec::new();
    let mut truncated = false;
    let mut emit = |bytes: &[u8], truncated: bool| {
        let mut line = String::from_utf8_lossy(bytes).into_owned();
        if line.ends_with('\r') {
            line.pop();
        }
        if truncated {
            line.push_str(" [line truncated]");
        }
        sink(stream, &line);
    };
    copy(pipe, tail, |mut rest| {
        while let Some(pos) = rest.iter().position(|b| *b == b'\n') {
            // A truncated line was already emitted when it overflowed.
            if !truncated {
                pending.extend_from_slice(&rest[..pos]);
                emit(
                    &pending[..pending.len().min(MAX_LINE)],
                    pending.len() > MAX_LINE,
                );
            }
            pending.clear();
            truncated = false;
            rest = &rest[pos + 1..];
        }
        if !truncated {
            pending.extend_from_slice(rest);
            if pending.len() > MAX_LINE {
                // Emit the first MAX_LINE bytes now and drop the rest of this line.
                emit(&pending[..MAX_LINE], true);
                pending.clear();
                truncated = true;
            }
        }
    })
    .await;
    if !pending.is_empty() && !truncated {
        emit(&pending, false);
    }
}

/// Read `pipe` to its end: every byte goes to `tail`, and to `out` as it
/// came (a foreground `trigger` copies the job's output unchanged: carriage
/// returns, long lines, bytes that are not UTF-8 and a last line without a
/// newline included).
pub async fn copy<R, F>(mut pipe: R, tail: Tail, mut out: F)
where
    R: AsyncRead + Unpin,
    F: FnMut(&[u8]),
{
    let mut chunk = vec![0u8; 8192];
    let mut decoder = Decoder::default();
    loop {
        let n = match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        tail.push(&decoder.decode(&chunk[..n]));
        out(&chunk[..n]);
    }
    tail.push(&decoder.finish());
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(input: &[u8]) -> (Vec<String>, String) {
        let tail = Tail::default();
        let mut lines = Vec::new();
        pump(input, Stream::Stdout, tail.clone(), |_, l| {
            lines.push(l.to_string())
        })
        .await;
        (lines, tail.contents())
    }

    #[tokio::test]
    async fn splits_lines_and_keeps_an_unterminated_last_line() {
        let (lines, tail) = collect(b"one\r\ntwo\nthree").await;
        assert_eq!(lines, ["one", "two", "three"]);
        // The tail is what the job printed, byte for byte.
        assert_eq!(tail, "one\r\ntwo\nthree");
    }

    #[tokio::test]
    async fn invalid_utf8_is_replaced_not_fatal() {
        let (lines, tail) = collect(b"ok \xff\xfe end\n").await;
        assert_eq!(lines, ["ok \u{fffd}\u{fffd} end"]);
        assert_eq!(tail, "ok \u{fffd}\u{fffd} end\n");
    }

    #[tokio::test]
    async fn a_character_split_between_reads_stays_whole_and_replacement_keeps_the_bound() {
        let mut d = Decoder::default();
        let euro = "\u{20ac}".as_bytes();
        assert_eq!(d.decode(&euro[..1]), "");
        assert_eq!(d.decode(&euro[1..]), "\u{20ac}");
        assert_eq!(d.decode(b"\xe2"), "");
        assert_eq!(d.finish(), "\u{fffd}");
        // Invalid bytes triple in size when replaced; the tail stays bounded.
        let (_, tail) = collect(&vec![0xffu8; TAIL_BYTES * 2]).await;
        assert!(tail.len() <= TAIL_BYTES && tail.len() > TAIL_BYTES - 3);
        assert!(tail.chars().all(|c| c == '\u{fffd}'));
    }

    #[tokio::test]
    async fn overlong_lines_are_cut_once() {
        let mut input = vec![b'x'; MAX_LINE * 3];
        input.extend_from_slice(b"\nnext\n");
        let (lines, _) = collect(&input).await;
        assert_eq!(lines.len(), 2);
        assert!(lines[0].ends_with("[line truncated]"));
        assert_eq!(lines[0].len(), MAX_LINE + " [line truncated]".len());
        assert_eq!(lines[1], "next");
    }

    #[tokio::test]
    async fn tail_keeps_only_the_newest_bytes() {
        let input: Vec<u8> = (0..20_000)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        let (_, tail) = collect(&input).await;
        assert!(tail.len() <= TAIL_BYTES);
        assert!(tail.ends_with("line 19999\n"));
    }

    #[tokio::test]
    async fn tail_keeps_the_end_of_one_huge_line() {
        let mut input = vec![b'x'; 10 * 1024 * 1024];
        input.extend_from_slice(b"THE-END");
        let (lines, tail) = collect(&input).await;
        assert_eq!(lines.len(), 1);
        assert_eq!(tail.len(), TAIL_BYTES);
        assert_eq!(tail.as_bytes(), &input[input.len() - TAIL_BYTES..]);
    }
}
