//! Timers for the two timeouts every proxied request arms and almost never reaches: the HTTP/1
//! header read timeout (the gateway's own HTTP/1 server's, and hyper's through its `Timer`
//! trait) and the wait for the agent's response head (the proxy's). Each serving thread has one
//! timer for each.
//!
//! On Tokio's timer each of those is an entry registered in the runtime's timer wheel on its
//! first poll and removed on drop (BENCHMARKS.md, "The gateway against nginx", the instruction
//! table: 290 and 625 instructions per proxied request saved). Here a timer is a slot in a table,
//! taken on its first poll and given back on drop, and a task looks at the table every
//! `resolution` and wakes what has expired. The deadline is taken from the clock when the
//! timer is made, and a timer counts as expired only once a look at the clock has passed it:
//! it never fires early, and fires at most about one `resolution` late (more when the thread
//! is too busy to run the looking task on time). The task runs only while timers are waiting
//! (the header timer of an idle keep-alive connection is armed too, so a thread with one
//! ticks every second), on the runtime that polled the first of them.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A `hyper::rt::Timer` with `resolution` granularity. Cheap to clone (one table).
#[derive(Clone)]
pub struct CoarseTimer {
    table: Arc<Table>,
}

struct Table {
    resolution: Duration,
    state: Mutex<State>,
}

struct State {
    /// The time of the last look: a timer whose deadline it has reached has expired.
    now: Instant,
    slots: Vec<Slot>,
    /// Slots no timer holds.
    free: Vec<usize>,
    /// Slots timers hold (expired or not).
    held: usize,
    /// Whether the looking task runs (it ends when no slot is held).
    ticking: bool,
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

    /// Moves the clock to `now` and wakes every timer whose deadline it has reached; false
    /// (and the task stops) when no timer is left to look after.
    fn tick(&self, now: Instant) -> bool {
        let expired: Vec<Waker> = {
            let mut state = self.lock();
            state.now = now;
            if state.held == 0 {
                state.ticking = false;
                return false;
            }
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
        true
    }
}

/// Clears the table's `ticking` flag when its looking task is dropped without having ended
/// (its runtime shut down, even before the task first ran): the next waiting timer starts
/// another.
struct Ticking {
    table: Weak<Table>,
    ended: bool,
}

impl Drop for Ticking {
    fn drop(&mut self) {
        if !self.ended {
            if let Some(table) = self.table.upgrade() {
                table.lock().ticking = false;
            }
        }
    }
}

/// The task that looks at `table` every `resolution` while it holds timers.
fn ticking(table: Weak<Table>, resolution: Duration) -> impl Future<Output = ()> + Send {
    // Made here, not in the block: a task dropped before its first poll drops it too.
    let guard = Ticking {
        table: table.clone(),
        ended: false,
    };
    async move {
        let mut guard = guard; // moved in whole, not only the field set below
        let mut every = tokio::time::interval(resolution);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await; // the first tick is at once
        loop {
            every.tick().await;
            match table.upgrade() {
                Some(table) if table.tick(Instant::now()) => {}
                _ => break,
            }
        }
        guard.ended = true; // `ticking` was cleared by the last look, under the lock
    }
}

impl CoarseTimer {
    /// A timer whose expiries are seen every `resolution` (at least a millisecond). Its looking
    /// task is spawned on the Tokio runtime that polls its first waiting timer, and again after
    /// it stopped for lack of timers or with its runtime; polling a timer outside a Tokio
    /// runtime panics.
    pub fn new(resolution: Duration) -> CoarseTimer {
        CoarseTimer {
            table: Arc::new(Table {
                resolution: resolution.max(Duration::from_millis(1)),
                state: Mutex::new(State {
                    now: Instant::now(),
                    slots: Vec::new(),
                    free: Vec::new(),
                    held: 0,
                    ticking: false,
                }),
            }),
        }
    }

    /// A sleep of `duration` from now, unboxed.
    pub fn sleep_for(&self, duration: Duration) -> CoarseSleep {
        CoarseSleep {
            table: self.table.clone(),
            deadline: Instant::now() + duration,
            slot: None,
        }
    }
}

impl hyper::rt::Timer for CoarseTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.sleep_for(duration))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(CoarseSleep {
            table: self.table.clone(),
            deadline,
            slot: None,
        })
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
        let start = {
            let mut state = this.table.lock();
            match register(&mut this.slot, this.deadline, &mut state, cx) {
                Poll::Ready(()) => return Poll::Ready(()),
                Poll::Pending => !std::mem::replace(&mut state.ticking, true),
            }
        };
        if start {
            // Outside the lock, and with the flag set back if there is no runtime to tick on.
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(ticking(Arc::downgrade(&this.table), this.table.resolution));
                }
                Err(e) => {
                    this.table.lock().ticking = false;
                    panic!("a coarse timer polled outside a Tokio runtime: {e}");
                }
            }
        }
        Poll::Pending
    }
}

/// `Ready` if `deadline` has passed by the last look; else the timer's `slot` (taken now if it
/// has none) holds `cx`'s waker.
fn register(
    slot: &mut Option<usize>,
    deadline: Instant,
    state: &mut State,
    cx: &Context<'_>,
) -> Poll<()> {
    if state.now >= deadline {
        return Poll::Ready(());
    }
    match *slot {
        Some(i) => match &mut state.slots[i].waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            waker => *waker = Some(cx.waker().clone()),
        },
        None => {
            let taken = Slot {
                deadline,
                waker: Some(cx.waker().clone()),
            };
            let i = match state.free.pop() {
                Some(i) => {
                    state.slots[i] = taken;
                    i
                }
                None => {
                    state.slots.push(taken);
                    state.slots.len() - 1
                }
            };
            *slot = Some(i);
            state.held += 1;
        }
    }
    Poll::Pending
}

impl hyper::rt::Sleep for CoarseSleep {}

impl Drop for CoarseSleep {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            let mut state = self.table.lock();
            state.slots[i].waker = None;
            state.free.push(i);
            state.held -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Timers fire after their deadline, never before, within a few ticks of it; the others
    /// stay asleep; dropped ones give their slots back; the looking task stops once no timer
    /// is left.
    #[tokio::test]
    async fn timers_fire_at_the_tick_after_their_deadline() {
        let resolution = Duration::from_millis(20);
        let timer = CoarseTimer::new(resolution);
        let started = Instant::now();
        let short = timer.sleep_for(Duration::from_millis(60));
        let mut long = timer.sleep_for(Duration::from_secs(3600));
        let dropped = timer.sleep_for(Duration::from_millis(10));
        let mut cx = Context::from_waker(Waker::noop());
        // Registered by a first poll, then dropped unexpired: its slot goes to `long`.
        {
            let mut dropped = dropped;
            assert!(Pin::new(&mut dropped).poll(&mut cx).is_pending());
        }
        assert!(Pin::new(&mut long).poll(&mut cx).is_pending());
        assert_eq!(timer.table.lock().slots.len(), 1, "the slot was reused");
        tokio::time::timeout(Duration::from_secs(10), short)
            .await
            .expect("the timer fired");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(60), "early: {waited:?}");
        // Generous for a loaded machine: a timer that never fires is what this catches.
        assert!(waited < Duration::from_secs(5), "late: {waited:?}");
        assert!(
            Pin::new(&mut long).poll(&mut cx).is_pending(),
            "a far deadline stays asleep"
        );
        {
            let state = timer.table.lock();
            assert_eq!(state.slots.len(), 2);
            assert_eq!(state.free, [1], "the expired timer's slot was given back");
            assert!(state.ticking);
        }
        drop(long);
        let deadline = Instant::now() + Duration::from_secs(10);
        while timer.table.lock().ticking {
            assert!(Instant::now() < deadline, "still ticking without timers");
            tokio::time::sleep(resolution).await;
        }
        // A new timer starts the task again.
        tokio::time::timeout(
            Duration::from_secs(10),
            timer.sleep_for(Duration::from_millis(1)),
        )
        .await
        .expect("fired after a restart");
    }

    /// A timer table outlives the runtime its looking task ran on, even one dropped before
    /// the task first ran: the next waiting timer starts a task on its own runtime.
    #[test]
    fn a_timer_outlives_the_runtime_that_ticked_it() {
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap()
        };
        let timer = CoarseTimer::new(Duration::from_millis(5));
        for yield_first in [true, false] {
            let first = runtime();
            let mut held = timer.sleep_for(Duration::from_secs(3600));
            first.block_on(async {
                let mut cx = Context::from_waker(Waker::noop());
                assert!(Pin::new(&mut held).poll(&mut cx).is_pending());
                if yield_first {
                    tokio::task::yield_now().await; // the task runs once
                }
            });
            assert!(timer.table.lock().ticking);
            drop(first);
            assert!(!timer.table.lock().ticking, "the dropped task cleared it");
            runtime().block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(10),
                    timer.sleep_for(Duration::from_millis(1)),
                )
                .await
                .expect("fired on the next runtime");
            });
        }
    }

    /// hyper's path: a deadline from the real clock, through `sleep_until`.
    #[tokio::test]
    async fn hyper_sleeps_fire_too() {
        use hyper::rt::Timer;
        let timer = CoarseTimer::new(Duration::from_millis(10));
        let started = Instant::now();
        let sleep = timer.sleep_until(started + Duration::from_millis(30));
        tokio::time::timeout(Duration::from_secs(10), sleep)
            .await
            .expect("the timer fired");
        assert!(started.elapsed() >= Duration::from_millis(30));
    }
}
