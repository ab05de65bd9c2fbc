//! The loop's wake-up, on time to the microsecond. tokio's timer wheel
//! counts whole milliseconds and rounds a deadline up to the next one, so a
//! tick woke the loop on average about 1 ms late (1.1 ms of a 6 ms fire,
//! measured). A timerfd is a kernel hrtimer: its expiry makes the descriptor
//! readable, which wakes the runtime's epoll at the deadline itself.
//!
//! The clock is the monotonic one, as tokio's: the loop computes the wait
//! from the wall clock and notices a wall clock that stepped meanwhile
//! when it wakes.

use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
    Timespec,
};
use std::os::fd::OwnedFd;
use std::time::Duration;
use tokio::io::unix::AsyncFd;

/// A one-shot timer the loop re-arms before each sleep.
pub(super) struct Timer {
    /// `None` where no timerfd could be made: tokio's timer instead.
    fd: Option<AsyncFd<OwnedFd>>,
}

impl Timer {
    pub(super) fn new() -> Self {
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )
        .map_err(std::io::Error::from)
        .and_then(|fd| {
            // SAFETY: an OwnedFd stays open, the same descriptor, for as
            // long as the AsyncFd that owns it.
            unsafe { AsyncFd::register(fd) }.map_err(std::io::Error::from)
        });
        match fd {
            Ok(fd) => Timer { fd: Some(fd) },
            Err(e) => {
                tracing::warn!("no timerfd ({e}): ticks wake the scheduler up to 1 ms late");
                Timer { fd: None }
            }
        }
    }

    /// Sleep for `wait`. Cancel-safe: re-arming resets the timer and its
    /// count of expiries, so a sleep dropped part way leaves nothing behind
    /// for the next one.
    pub(super) async fn sleep(&mut self, wait: Duration) {
        let Some(fd) = &self.fd else {
            return tokio::time::sleep(wait).await;
        };
        if wait.is_zero() {
            // A zero value would disarm the timer instead.
            return tokio::task::yield_now().await;
        }
        let value = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: Timespec {
                tv_sec: wait.as_secs() as _,
                tv_nsec: wait.subsec_nanos() as _,
            },
        };
        if let Err(e) = timerfd_settime(fd.get_ref(), TimerfdTimerFlags::empty(), &value) {
            tracing::debug!("cannot arm the timerfd ({e}): tokio's timer instead");
            return tokio::time::sleep(wait).await;
        }
        loop {
            let Ok(mut ready) = fd.readable().await else {
                return tokio::time::sleep(wait).await;
            };
            let mut expiries = [0u8; 8];
            // A readiness left from an earlier expiry reads EAGAIN (the
            // re-arm reset the count): wait on.
            match ready.try_io(|fd| {
                rustix::io::read(fd.get_ref(), &mut expiries).map_err(std::io::Error::from)
            }) {
                Ok(Ok(_)) => return,
                Ok(Err(e)) => {
                    tracing::debug!("cannot read the timerfd ({e}): tokio's timer instead");
                    return tokio::time::sleep(wait).await;
                }
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// It never wakes before its deadline, and a sleep cancelled part way
    /// (its expiry then unread) does not cut the next one short. How close
    /// to the deadline it wakes is the benchmark's to measure.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_wakes_early_and_a_cancelled_sleep_leaves_nothing() {
        let mut timer = Timer::new();
        assert!(timer.fd.is_some(), "Linux has timerfd");
        for _ in 0..5 {
            // The 3 ms sleep is dropped after 1 ms and expires unobserved.
            let cut = Duration::from_millis(1);
            let _ = tokio::time::timeout(cut, timer.sleep(Duration::from_millis(3))).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
            let wait = Duration::from_micros(20_300);
            let began = Instant::now();
            timer.sleep(wait).await;
            let took = began.elapsed();
            assert!(took >= wait, "woke {:?} early", wait - took);
        }
    }
}
