//! Turning a child's output pipes into log lines and a bounded tail.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Lines longer than this are cut (and marked) so one runaway line cannot
/// flood the log pipeline.
pub const MAX_LINE: usize = 16 * 1024;
/// How much of the combined output is kept with the run record.
pub const TAIL_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// The last [`TAIL_BYTES`] of output, shared by the stdout and stderr readers.
#[derive(Clone, Default)]
pub struct Tail(Arc<Mutex<VecDeque<u8>>>);

impl Tail {
    fn push_line(&self, line: &str) {
        let mut buf = self.0.lock().expect("tail lock poisoned");
        buf.extend(line.as_bytes());
        buf.push_back(b'\n');
        let excess = buf.len().saturating_sub(TAIL_BYTES);
        buf.drain(..excess);
    }

    pub fn contents(&self) -> String {
        let buf = self.0.lock().expect("tail lock poisoned");
        let (a, b) = buf.as_slices();
        let bytes = [a, b].concat();
        // The cut may have split a UTF-8 sequence; lossy conversion keeps the rest.
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Read `pipe` to its end, handing each line (lossy UTF-8, cut at
/// [`MAX_LINE`]) to `sink` and to `tail`.
pub async fn pump<R, F>(mut pipe: R, stream: Stream, tail: Tail, mut sink: F)
where
    R: AsyncRead + Unpin,
    F: FnMut(Stream, &str),
{
    let mut pending: Vec<u8> = Vec::new();
    let mut truncated = false;
    let mut chunk = vec![0u8; 8192];
    let mut emit = |bytes: &[u8], truncated: bool| {
        let mut line = String::from_utf8_lossy(bytes).into_owned();
        if line.ends_with('\r') {
            line.pop();
        }
        if truncated {
            line.push_str(" [line truncated]");
        }
        tail.push_line(&line);
        sink(stream, &line);
    };
    loop {
        let n = match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut rest = &chunk[..n];
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
    }
    if !pending.is_empty() && !truncated {
        emit(&pending, false);
    }
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
        assert_eq!(tail, "one\ntwo\nthree\n");
    }

    #[tokio::test]
    async fn invalid_utf8_is_replaced_not_fatal() {
        let (lines, _) = collect(b"ok \xff\xfe end\n").await;
        assert_eq!(lines, ["ok \u{fffd}\u{fffd} end"]);
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
}
