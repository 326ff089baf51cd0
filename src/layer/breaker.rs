//! A circuit breaker in front of the store: after repeated failures, requests stop paying the
//! check timeout until the store answers again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// The breaker's state, as reported by the `tower_budget_breaker_state` gauge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls go to the store (gauge 0).
    Closed,
    /// Calls are skipped until the cool-down ends (gauge 1).
    Open,
    /// One probe call is in flight; others are skipped (gauge 2).
    HalfOpen,
}

#[derive(Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cool_down: Duration,
    state: Mutex<State>,
    /// True while closed with no failure counted: the common case, served without the lock.
    healthy: AtomicBool,
}

/// Permission to call the store. A probe dropped without a verdict counts as a failure, so a
/// cancelled probe cannot leave the breaker half-open for ever.
pub(crate) struct Permit {
    breaker: Arc<Breaker>,
    probe: bool,
    done: bool,
}

impl Breaker {
    /// Opens after `threshold` consecutive failures (0 disables the breaker), for `cool_down`.
    pub(crate) fn new(threshold: u32, cool_down: Duration) -> Self {
        Breaker {
            threshold,
            cool_down,
            state: Mutex::new(State::Closed { failures: 0 }),
            healthy: AtomicBool::new(true),
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen => BreakerState::HalfOpen,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `None` while open (or while a probe is out): skip the store.
    pub(crate) fn permit(self: &Arc<Self>) -> Option<Permit> {
        if self.healthy.load(Ordering::Acquire) {
            return Some(Permit {
                breaker: self.clone(),
                probe: false,
                done: false,
            });
        }
        let mut state = self.lock();
        let probe = match *state {
            State::Closed { .. } => false,
            State::Open { until } if Instant::now() >= until => {
                *state = State::HalfOpen;
                gauge(BreakerState::HalfOpen);
                true
            }
            State::Open { .. } | State::HalfOpen => return None,
        };
        Some(Permit {
            breaker: self.clone(),
            probe,
            done: false,
        })
    }

    fn record(&self, ok: bool, probe: bool) {
        if self.threshold == 0 || (ok && self.healthy.load(Ordering::Acquire)) {
            return;
        }
        let mut state = self.lock();
        let next = match (&*state, ok) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < self.threshold => State::Closed {
                failures: failures + 1,
            },
            // A late failure from before the breaker opened must not extend or reset it.
            (State::Open { until }, false) if !probe => State::Open { until: *until },
            (_, false) => State::Open {
                until: Instant::now() + self.cool_down,
            },
        };
        let (before, after) = (kind(&state), kind(&next));
        self.healthy.store(
            matches!(next, State::Closed { failures: 0 }),
            Ordering::Release,
        );
        *state = next;
        if before != after {
            gauge(after);
            match after {
                BreakerState::Open => {
                    tracing::warn!(cool_down = ?self.cool_down, "budget store breaker opened: checks skipped")
                }
                BreakerState::Closed => {
                    tracing::info!("budget store breaker closed: store answering again")
                }
                BreakerState::HalfOpen => {}
            }
        }
    }
}

fn kind(s: &State) -> BreakerState {
    match s {
        State::Closed { .. } => BreakerState::Closed,
        State::Open { .. } => BreakerState::Open,
        State::HalfOpen => BreakerState::HalfOpen,
    }
}

fn gauge(state: BreakerState) {
    let value = match state {
        BreakerState::Closed => 0.0,
        BreakerState::Open => 1.0,
        BreakerState::HalfOpen => 2.0,
    };
    metrics::gauge!("tower_budget_breaker_state").set(value);
}

impl Permit {
    pub(crate) fn succeeded(mut self) {
        self.done = true;
        self.breaker.record(true, self.probe);
    }

    pub(crate) fn failed(mut self) {
        self.done = true;
        self.breaker.record(false, self.probe);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done && self.probe {
            self.breaker.record(false, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_probes_and_closes() {
        let b = Arc::new(Breaker::new(3, Duration::from_secs(5)));
        for _ in 0..2 {
            b.permit().unwrap().failed();
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.permit().unwrap().succeeded(); // a success resets the count
        for _ in 0..3 {
            b.permit().unwrap().failed();
        }
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.permit().is_none(), "open: no calls");
        tokio::time::advance(Duration::from_secs(5)).await;
        let probe = b.permit().expect("cool-down over: one probe");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.permit().is_none(), "only one probe at a time");
        probe.failed();
        assert_eq!(b.state(), BreakerState::Open, "failed probe reopens");
        tokio::time::advance(Duration::from_secs(5)).await;
        b.permit().unwrap().succeeded();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_reopens() {
        let b = Arc::new(Breaker::new(1, Duration::from_secs(1)));
        b.permit().unwrap().failed();
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(b.permit().unwrap());
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn threshold_zero_never_opens() {
        let b = Arc::new(Breaker::new(0, Duration::from_secs(1)));
        for _ in 0..100 {
            b.permit().unwrap().failed();
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
