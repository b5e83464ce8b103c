//! The push path: one reader thread per channel handing batches to a
//! [`Dispatcher`].

use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;

use fdlink_sys::wait::StopEvent;

use crate::batch::Batch;
use crate::channel::WaitResult;
use crate::closure::CloseReason;
use crate::shared::Shared;

/// Receives batches from an attached endpoint's reader threads.
///
/// Called on reader threads, one per channel, possibly at the same time.
/// A batch holds at least one packet; take what you need before returning,
/// since the reader reuses the buffers for the next batch.
pub trait Dispatcher: Send + Sync + 'static {
    /// Delivers the packets read from channel `queue`.
    fn deliver(&self, queue: usize, batch: &mut Batch);
}

impl<F> Dispatcher for F
where
    F: Fn(usize, &mut Batch) + Send + Sync + 'static,
{
    fn deliver(&self, queue: usize, batch: &mut Batch) {
        self(queue, batch)
    }
}

/// The running readers of one attach.
#[derive(Debug)]
pub(crate) struct Readers {
    stop: Arc<StopEvent>,
    handles: Vec<JoinHandle<()>>,
}

impl Readers {
    /// Starts one reader thread per channel of `shared`, each delivering
    /// batches to `dispatcher` until stopped or its channel closes.
    ///
    /// # Errors
    /// Creating the stop event or a thread failed; nothing is left running.
    pub(crate) fn start(
        shared: &Arc<Shared>,
        dispatcher: Arc<dyn Dispatcher>,
    ) -> io::Result<Readers> {
        let stop = Arc::new(StopEvent::new()?);
        let mut handles = Vec::with_capacity(shared.channel_count());
        for q in 0..shared.channel_count() {
            let shared = Arc::clone(shared);
            let dispatcher = Arc::clone(&dispatcher);
            let thread_stop = Arc::clone(&stop);
            let spawned = std::thread::Builder::new()
                .name(format!("fdlink-rx-{q}"))
                .spawn(move || read_loop(&shared, q, &thread_stop, &*dispatcher));
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    stop.signal()?;
                    handles.into_iter().for_each(join_quietly);
                    return Err(e);
                }
            }
        }
        Ok(Readers { stop, handles })
    }

    /// Stops the readers promptly (they wake on an eventfd) and joins them.
    pub(crate) fn stop(self) {
        // A failed signal can only mean the eventfd counter is saturated,
        // which leaves it signalled anyway.
        let _ = self.stop.signal();
        self.handles.into_iter().for_each(join_quietly);
    }

    /// Takes the thread handles to join them without holding a lock, and
    /// the stop event that tells these readers apart from later ones.
    pub(crate) fn take_handles(&mut self) -> (Arc<StopEvent>, Vec<JoinHandle<()>>) {
        (Arc::clone(&self.stop), std::mem::take(&mut self.handles))
    }

    /// True when these readers were started with `stop`.
    pub(crate) fn stopped_by(&self, stop: &Arc<StopEvent>) -> bool {
        Arc::ptr_eq(&self.stop, stop)
    }
}

/// Joins a reader thread. A panicking dispatcher ends its reader; the
/// panic was already reported on that thread.
pub(crate) fn join_quietly(handle: JoinHandle<()>) {
    let _ = handle.join();
}

/// One reader: wait for input or stop, read a batch, deliver it.
fn read_loop(shared: &Shared, q: usize, stop: &StopEvent, dispatcher: &dyn Dispatcher) {
    let mut batch = shared.new_batch();
    let channel = shared.channel(q);
    while shared.is_alive(q) {
        match channel.wait_readable(Some(stop), None) {
            Ok(WaitResult::Stopped) => return,
            Ok(WaitResult::TimedOut) => continue,
            Ok(WaitResult::Ready) => {}
            Err(e) => {
                shared.channel_closed(q, CloseReason::from_error(&e));
                return;
            }
        }
        batch.clear();
        batch.fit_buffers(shared.config().max_frame() + 1);
        let read = shared.fill(q, &mut batch, &mut |_, _| Ok(()));
        if !batch.is_empty() {
            dispatcher.deliver(q, &mut batch);
        } else if read == 0 && shared.is_alive(q) && channel.has_hung_up() {
            // Readable by poll, yet nothing to read and no closure seen by
            // the read: a hang-up or error state that would spin forever.
            shared.channel_closed(q, CloseReason::Hangup);
        }
    }
}
