//! Timers for the two timeouts every proxied request arms and almost never reaches: the HTTP/1
//! header read timeout (hyper's, through its `Timer` trait) and the wait for the agent's
//! response head (the proxy's). One timer per serving thread for each, with a coarse clock.
//!
//! On Tokio's timer each of those is a clock read, an entry registered in the runtime's timer
//! wheel, and its removal: ~700–800 instructions per request apiece (BENCHMARKS.md, "The
//! gateway against nginx"). Here a timer is a slot in a per-thread table, taken on its first
//! poll and given back on drop; a task of the thread's runtime looks at the table every
//! `resolution` and wakes what has expired, and `now` is the time of the last such look (as
//! nginx reads its clock once per turn of its event loop). A timeout of `d` therefore fires
//! between `d - resolution` and `d + resolution` after it was set.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A `hyper::rt::Timer` with `resolution` granularity. Cheap to clone (one table).
#[derive(Clone)]
pub struct CoarseTimer {
    table: Arc<Table>,
}

struct Table {
    state: Mutex<State>,
}

struct State {
    /// The time of the last tick: what `now` answers, and what a deadline is compared with.
    now: Instant,
    slots: Vec<Slot>,
    /// Slots no timer holds.
    free: Vec<usize>,
}

struct Slot {
    deadline: Instant,
    /// Whom to wake at the deadline: none for a free slot, or once the deadline was seen.
    waker: Option<Waker>,
}

impl Table {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves the clock to `now` and wakes every timer whose deadline it has reached.
    fn tick(&self, now: Instant) {
        let expired: Vec<Waker> = {
            let mut state = self.lock();
            state.now = now;
            state
                .slots
                .iter_mut()
                .filter(|s| s.deadline <= now)
                .filter_map(|s| s.waker.take())
                .collect()
        };
        for waker in expired {
            waker.wake();
        }
    }
}

impl CoarseTimer {
    /// A timer whose clock moves every `resolution`, by a task spawned on the current Tokio
    /// runtime (so: call it within one). The task ends once the timer and its sleeps are gone.
    pub fn new(resolution: Duration) -> CoarseTimer {
        let table = Arc::new(Table {
            state: Mutex::new(State {
                now: Instant::now(),
                slots: Vec::new(),
                free: Vec::new(),
            }),
        });
        let weak = Arc::downgrade(&table);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(resolution);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(table) = weak.upgrade() else { return };
                table.tick(Instant::now());
            }
        });
        CoarseTimer { table }
    }
}

impl CoarseTimer {
    /// A sleep of `duration` from the clock's last tick, unboxed.
    pub fn sleep_for(&self, duration: Duration) -> CoarseSleep {
        let now = self.table.lock().now;
        CoarseSleep {
            table: self.table.clone(),
            deadline: now + duration,
            slot: None,
        }
    }
}

impl hyper::rt::Timer for CoarseTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(CoarseSleep {
            table: self.table.clone(),
            deadline,
            slot: None,
        })
    }

    fn now(&self) -> Instant {
        self.table.lock().now
    }
}

/// One timer: its slot is taken on the first poll that finds the deadline ahead, and kept
/// until drop (so that an index is never reused while its timer lives).
pub struct CoarseSleep {
    table: Arc<Table>,
    deadline: Instant,
    slot: Option<usize>,
}

impl Future for CoarseSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let mut state = this.table.lock();
        if state.now >= this.deadline {
            return Poll::Ready(());
        }
        match this.slot {
            Some(i) => match &mut state.slots[i].waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                waker => *waker = Some(cx.waker().clone()),
            },
            None => {
                let slot = Slot {
                    deadline: this.deadline,
                    waker: Some(cx.waker().clone()),
                };
                let i = match state.free.pop() {
                    Some(i) => {
                        state.slots[i] = slot;
                        i
                    }
                    None => {
                        state.slots.push(slot);
                        state.slots.len() - 1
                    }
                };
                this.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl hyper::rt::Sleep for CoarseSleep {}

impl Drop for CoarseSleep {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            let mut state = self.table.lock();
            state.slots[i].waker = None;
            state.free.push(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer;

    /// Expired timers wake within a tick or two of their deadline, the others stay asleep,
    /// and dropped ones give their slots back.
    #[tokio::test]
    async fn timers_fire_at_the_tick_after_their_deadline() {
        let resolution = Duration::from_millis(20);
        let timer = CoarseTimer::new(resolution);
        let started = Instant::now();
        let short = timer.sleep(Duration::from_millis(60));
        let long = timer.sleep(Duration::from_secs(3600));
        let dropped = timer.sleep(Duration::from_millis(10));
        let mut long = long;
        let mut cx = Context::from_waker(Waker::noop());
        // Registered by a first poll, then dropped unexpired: its slot goes to `long`.
        {
            let mut dropped = dropped;
            assert!(dropped.as_mut().poll(&mut cx).is_pending());
        }
        assert!(long.as_mut().poll(&mut cx).is_pending());
        assert_eq!(timer.table.lock().slots.len(), 1, "the slot was reused");
        short.await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(60) - resolution,
            "fired after {waited:?}"
        );
        assert!(
            long.as_mut().poll(&mut cx).is_pending(),
            "a far deadline stays asleep"
        );
        let state = timer.table.lock();
        assert_eq!(state.slots.len(), 2);
        assert_eq!(state.free, [1], "the expired timer's slot was given back");
        assert!(state.now >= started + Duration::from_millis(60) - resolution);
    }
}
