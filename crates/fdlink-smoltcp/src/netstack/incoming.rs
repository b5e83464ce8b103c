//! The queue new connections and flows wait in for the application: the
//! engines push, `accept` pops — blocking, with a timeout, or as a future.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::task::Waker;
#[cfg(feature = "tokio")]
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// A queue of `T` with blocking and asynchronous takers.
#[derive(Debug)]
pub(crate) struct Incoming<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

#[derive(Debug)]
struct State<T> {
    queue: VecDeque<T>,
    /// No more will come (the netstack stopped or every link closed).
    closed: bool,
    wakers: Vec<Waker>,
}

/// What a take found.
pub(crate) enum Taken<T> {
    Item(T),
    TimedOut,
    Closed,
}

impl<T> Incoming<T> {
    pub(crate) fn new() -> Self {
        Incoming {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                closed: false,
                wakers: Vec::new(),
            }),
            ready: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn push(&self, item: T) {
        let wakers = {
            let mut state = self.lock();
            state.queue.push_back(item);
            std::mem::take(&mut state.wakers)
        };
        self.ready.notify_one();
        wakers.into_iter().for_each(Waker::wake);
    }

    /// No more items will come: takers get what is queued, then `Closed`.
    pub(crate) fn close(&self) {
        let wakers = {
            let mut state = self.lock();
            state.closed = true;
            std::mem::take(&mut state.wakers)
        };
        self.ready.notify_all();
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Takes the next item, waiting up to `timeout` (`None`: no limit).
    pub(crate) fn take(&self, timeout: Option<Duration>) -> Taken<T> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut state = self.lock();
        loop {
            if let Some(item) = state.queue.pop_front() {
                return Taken::Item(item);
            }
            if state.closed {
                return Taken::Closed;
            }
            state = match deadline {
                None => self.ready.wait(state).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Taken::TimedOut;
                    }
                    self.ready
                        .wait_timeout(state, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    /// The asynchronous take: ready with an item or `None` once closed.
    #[cfg(feature = "tokio")]
    pub(crate) fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = self.lock();
        if let Some(item) = state.queue.pop_front() {
            return Poll::Ready(Some(item));
        }
        if state.closed {
            return Poll::Ready(None);
        }
        if !state.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            state.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
