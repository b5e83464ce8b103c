//! How the application reaches an engine: a list of what changed and an
//! eventfd the engine's wait polls next to the link, signalled only when
//! the list goes from empty to not, so a busy stream costs no system call
//! per operation.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use fdlink_sys::wait::StopEvent;

/// Something the application did that the engine must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Work {
    /// A connection's handles wrote, read (freeing room), shut down or
    /// went away.
    Tcp(usize),
    /// A UDP flow has datagrams to send, or its handle went away.
    Udp(usize),
    /// The application decided on a held connection (accept or refuse).
    Decided(usize),
    /// Stop the engine.
    Stop,
}

/// An engine's wake-up: its work list and eventfd.
#[derive(Debug)]
pub(crate) struct Wake {
    event: StopEvent,
    work: Mutex<Vec<Work>>,
    pending: AtomicBool,
}

impl Wake {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Wake {
            event: StopEvent::new()?,
            work: Mutex::new(Vec::new()),
            pending: AtomicBool::new(false),
        })
    }

    /// Hands the engine `work` and wakes it if it may be asleep.
    pub(crate) fn notify(&self, work: Work) {
        self.work
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(work);
        if !self.pending.swap(true, Ordering::AcqRel) {
            // A failed signal can only mean the counter is saturated, which
            // leaves it signalled anyway.
            let _ = self.event.signal();
        }
    }

    /// Whether work is waiting.
    pub(crate) fn is_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// Moves the waiting work into `into` (the engine's reused list).
    pub(crate) fn take(&self, into: &mut Vec<Work>) {
        if !self.pending.swap(false, Ordering::AcqRel) {
            return;
        }
        let _ = self.event.reset();
        let mut work = self.work.lock().unwrap_or_else(|e| e.into_inner());
        into.append(&mut work);
    }
}

impl AsFd for Wake {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.event.as_fd()
    }
}
