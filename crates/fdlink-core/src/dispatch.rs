//! The push path: one reader thread per channel handing batches to a
//! [`Dispatcher`].

use std::sync::Arc;
use std::thread::JoinHandle;

use fdlink_sys::wait::StopEvent;

use crate::batch::Batch;
use crate::channel::WaitResult;
use crate::endpoint::{CloseReason, Endpoint, Shared};

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

impl Endpoint {
    /// Starts one reader thread per open channel, each delivering batches to
    /// `dispatcher` until [`Endpoint::detach`] or its channel closes.
    ///
    /// Attaching while attached does nothing; attaching after a detach
    /// starts fresh readers.
    ///
    /// # Errors
    /// Creating the stop event or a thread failed; nothing is left running.
    pub fn attach(&self, dispatcher: Arc<dyn Dispatcher>) -> std::io::Result<()> {
        let mut readers = self.readers.lock().expect("readers lock");
        if readers.is_some() {
            return Ok(());
        }
        let stop = Arc::new(StopEvent::new()?);
        let mut handles = Vec::with_capacity(self.shared.channels.len());
        for q in 0..self.shared.channels.len() {
            let shared = Arc::clone(&self.shared);
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
        *readers = Some(Readers { stop, handles });
        Ok(())
    }

    /// True while readers are attached.
    pub fn is_attached(&self) -> bool {
        self.readers.lock().expect("readers lock").is_some()
    }

    /// Stops the readers promptly (they wake on an eventfd) and joins them.
    /// Does nothing when not attached.
    pub fn detach(&self) {
        let readers = self.readers.lock().expect("readers lock").take();
        if let Some(readers) = readers {
            // A failed signal can only mean the eventfd counter is saturated,
            // which leaves it signalled anyway.
            let _ = readers.stop.signal();
            readers.handles.into_iter().for_each(join_quietly);
        }
    }

    /// Blocks until every reader has ended (its channel closed, or a detach
    /// from another thread). Returns at once when not attached.
    pub fn wait(&self) {
        let (stop, handles) = {
            let mut readers = self.readers.lock().expect("readers lock");
            match readers.as_mut() {
                Some(r) => (Arc::clone(&r.stop), std::mem::take(&mut r.handles)),
                None => return,
            }
        };
        handles.into_iter().for_each(join_quietly);
        let mut readers = self.readers.lock().expect("readers lock");
        if readers
            .as_ref()
            .is_some_and(|r| Arc::ptr_eq(&r.stop, &stop))
        {
            *readers = None;
        }
    }
}

fn join_quietly(handle: JoinHandle<()>) {
    // A panicking dispatcher ends its reader; the panic was already
    // reported on that thread.
    let _ = handle.join();
}

/// One reader: wait for input or stop, read a batch, deliver it.
fn read_loop(shared: &Shared, q: usize, stop: &StopEvent, dispatcher: &dyn Dispatcher) {
    let mut batch = shared.new_batch();
    let channel = &shared.channels[q];
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
