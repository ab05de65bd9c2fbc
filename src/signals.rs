//! The one place OS signals become events: a process names the signals it
//! acts on and then reads them, in the order they came, as [`Sig`] values
//! (as watchexec's supervisor has one worker for them). `run` (stop and
//! reload), `trigger` (Ctrl-C) and the supervisor (stop, replace) all go
//! through it. Handling a signal replaces its default action (SIGHUP or
//! SIGTERM would end the process), so each asks for its signals first.

use std::future::Future;
use std::pin::Pin;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// A signal bgsched acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sig {
    /// Stop (a service manager, `kill`).
    Term,
    /// Stop (Ctrl-C); a second one stops at once.
    Int,
    /// Reload the config (`run`).
    Hup,
    /// A newer run replaces this one (`overlap = "replace"`, supervisor).
    Usr1,
    /// A caller cancels this run (`bgsched cancel`, the API; supervisor).
    Usr2,
}

impl Sig {
    pub fn name(self) -> &'static str {
        match self {
            Sig::Term => "SIGTERM",
            Sig::Int => "SIGINT",
            Sig::Hup => "SIGHUP",
            Sig::Usr1 => "SIGUSR1",
            Sig::Usr2 => "SIGUSR2",
        }
    }

    fn kind(self) -> SignalKind {
        match self {
            Sig::Term => SignalKind::terminate(),
            Sig::Int => SignalKind::interrupt(),
            Sig::Hup => SignalKind::hangup(),
            Sig::Usr1 => SignalKind::user_defined1(),
            Sig::Usr2 => SignalKind::user_defined2(),
        }
    }
}

/// The signals one process handles, from [`Signals::listen`] on.
#[derive(Default)]
pub struct Signals {
    streams: Vec<(Sig, Signal)>,
}

impl Signals {
    /// Handle `sigs` from now on.
    pub fn listen(sigs: &[Sig]) -> std::io::Result<Signals> {
        let mut streams = Vec::with_capacity(sigs.len());
        for &sig in sigs {
            let stream = signal(sig.kind()).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot handle {}: {e}", sig.name()))
            })?;
            streams.push((sig, stream));
        }
        Ok(Signals { streams })
    }

    /// The next signal; never, if none is handled.
    pub async fn next(&mut self) -> Sig {
        if self.streams.is_empty() {
            return std::future::pending().await;
        }
        type Recv<'a> = Pin<Box<dyn Future<Output = Option<Sig>> + Send + 'a>>;
        let waits: Vec<Recv<'_>> = self
            .streams
            .iter_mut()
            .map(|(sig, stream)| {
                let sig = *sig;
                Box::pin(async move { stream.recv().await.map(|()| sig) }) as Recv<'_>
            })
            .collect();
        match futures_util::future::select_all(waits).await.0 {
            Some(sig) => sig,
            // The signal driver is gone (the runtime is shutting down).
            None => std::future::pending().await,
        }
    }
}
