//! The receive path: reading a channel into a batch, checking and
//! counting each frame, and waiting for input.

use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use fdlink_sys::wait::{Interest, PollFd};

use crate::batch::Batch;
use crate::channel::{ReadResult, WaitResult};
use crate::closure::{CloseReason, Closed};
use crate::link;
use crate::shared::Shared;
use crate::stats::DropReason;

/// A check run on each received frame that passed the link's checks,
/// before it counts as delivered: given the batch and the frame's index in
/// it, it keeps the frame (`Ok`) or names the inbound reason to drop it for.
pub(crate) type Check<'a> = dyn FnMut(&mut Batch, usize) -> Result<(), DropReason> + 'a;

/// Poll entries a wait keeps in a stack array, two per channel (more use a
/// vector).
const SMALL_POLL_SET: usize = 16;

impl Shared {
    /// Reads what channel `q` has queued into `batch`'s free slots, checks
    /// each frame (the link checks, then `check`), keeps the good ones and
    /// counts the rest. Returns how many frames were read, good or bad.
    pub(crate) fn fill(&self, q: usize, batch: &mut Batch, check: &mut Check<'_>) -> usize {
        let channel = self.channel(q);
        let mut read = 0;
        if !self.is_alive(q) {
            return read;
        }
        while batch.free_slots() > 0 {
            let asked = batch.free_slots();
            let result = channel.read(batch, asked, self.config().dispatch);
            let refused = channel.take_refused();
            if refused > 0 {
                self.stats().read(refused);
                self.stats().drop(DropReason::InvalidVirtioHeader, refused);
            }
            let n = match result {
                ReadResult::Frames(n) => n,
                ReadResult::Empty => return read,
                ReadResult::Closed(reason) => {
                    self.channel_closed(q, reason);
                    return read;
                }
            };
            self.accept(q, batch, n, check);
            read += n;
            if n < asked {
                // The queue ran dry (or an error waits for the next read).
                return read;
            }
        }
        read
    }

    /// Classifies `n` frames just read into the free slots; keeps the good
    /// ones in order. A frame counts as delivered only once every check
    /// passed, so each frame read is counted exactly once.
    fn accept(&self, q: usize, batch: &mut Batch, n: usize, check: &mut Check<'_>) {
        let config = self.config();
        let vnet_len = config.vnet_len;
        let max_frame = config.max_frame();
        let eth = config.ethernet.then(|| config.link_address());
        let mut kept_bytes = 0u64;
        let mut kept = 0u64;
        for i in 0..n {
            // Slot i of the frames read sits at free offset i - kept, since
            // each kept frame moved the free area forward by one.
            let offset = i - kept as usize;
            let (bufs, infos) = batch.free_buffers();
            let info = infos[offset];
            let verdict = if info.outgoing {
                Err(DropReason::Outgoing)
            } else if info.truncated || info.len > max_frame {
                Err(DropReason::Truncated)
            } else if info.len < vnet_len {
                Err(DropReason::ShortFrame)
            } else {
                link::classify(&bufs[offset][vnet_len..info.len], eth)
            };
            let verdict = verdict.and_then(|c| {
                batch.commit(
                    offset,
                    info.len,
                    q,
                    vnet_len,
                    c.link_len,
                    c.protocol,
                    info.checksum,
                );
                let index = batch.len() - 1;
                check(batch, index).inspect_err(|_| batch.uncommit_last())
            });
            match verdict {
                Ok(()) => {
                    kept += 1;
                    kept_bytes += (info.len - vnet_len) as u64;
                }
                Err(reason) => {
                    debug_assert!(reason.is_inbound(), "{reason} is not a receive drop");
                    self.stats().drop(reason, 1);
                }
            }
        }
        self.stats().read(n as u64);
        self.stats().delivered(kept, kept_bytes);
    }

    /// Waits until a live channel (`queue`, or any) may have input, or
    /// `timeout` passes; returns whether input may be ready.
    ///
    /// A closed link is reported at once, never as idle or ready: a poll
    /// loop over a dead link must end, not spin. A wait that fails closes
    /// the channels it waited on, as it ends a push reader.
    pub(crate) fn wait_readable(
        &self,
        queue: Option<usize>,
        timeout: Option<Duration>,
    ) -> Result<bool, Closed> {
        self.check_open(queue)?;
        if let Some((mut set, n)) = self.poll_set_without_allocation(queue) {
            if n == 0 {
                // Every channel closed since the check above.
                self.check_open(queue)?;
                return Ok(false);
            }
            return match fdlink_sys::wait::poll(&mut set[..n], timeout) {
                Ok(ready) => self.woke(queue, ready),
                Err(e) => {
                    let polled: Vec<usize> = self.live_channels(queue).collect();
                    self.close_all(&polled, &e)
                }
            };
        }
        let mut fds: Vec<PollFd<'_>> = Vec::new();
        let mut polled = Vec::new();
        let mut objects = Vec::new();
        for q in self.live_channels(queue) {
            match self.channel(q).fd() {
                Some(fd) => {
                    fds.push(PollFd::new(fd, Interest::Read));
                    fds.push(self.closed_event(q));
                    polled.push(q);
                }
                None => objects.push(q),
            }
        }
        if objects.is_empty() {
            return match fdlink_sys::wait::poll(&mut fds, timeout) {
                Ok(ready) => self.woke(queue, ready),
                Err(e) => self.close_all(&polled, &e),
            };
        }
        // Packet objects have no descriptor to poll: take turns in short
        // slices until one is ready or the time is up.
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if !fds.is_empty() {
                match fdlink_sys::wait::poll(&mut fds, Some(Duration::ZERO)) {
                    Ok(0) => {}
                    Ok(ready) => return self.woke(queue, ready),
                    Err(e) => {
                        let _ = self.close_all(&polled, &e);
                        fds.clear();
                    }
                }
            }
            for &q in &objects {
                let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                match self.channel(q).wait_readable(None, left) {
                    Ok(WaitResult::Ready) => return Ok(true),
                    Ok(_) => {}
                    Err(e) => self.channel_closed(q, CloseReason::from_error(&e)),
                }
            }
            objects.retain(|&q| self.is_alive(q));
            self.check_open(queue)?;
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Ok(false);
            }
            if objects.is_empty() {
                // Only descriptors are left: sleep on them for the rest of
                // the time instead of polling them in a loop.
                return match fdlink_sys::wait::poll(&mut fds, left) {
                    Ok(ready) => self.woke(queue, ready),
                    Err(e) => self.close_all(&polled, &e),
                };
            }
        }
    }

    /// What a wait that saw `ready` descriptors returns: a channel that
    /// closed while we slept (its closed event woke us) ends the wait with
    /// [`Closed`] when nothing else is left open.
    fn woke(&self, queue: Option<usize>, ready: usize) -> Result<bool, Closed> {
        self.check_open(queue)?;
        Ok(ready > 0)
    }

    /// The poll entry of channel `q`'s closed event.
    fn closed_event(&self, q: usize) -> PollFd<'_> {
        PollFd::new(self.channel(q).closed_event.as_fd(), Interest::Read)
    }

    /// [`Closed`] when the channels a call is about (`queue`, or all) have
    /// closed.
    pub(crate) fn check_open(&self, queue: Option<usize>) -> Result<(), Closed> {
        let closed = match queue {
            Some(q) => !self.is_alive(q),
            None => self.all_closed(),
        };
        if closed {
            return Err(Closed(
                self.close_reason().unwrap_or(CloseReason::PeerClosed),
            ));
        }
        Ok(())
    }

    fn live_channels(&self, queue: Option<usize>) -> impl Iterator<Item = usize> + '_ {
        (0..self.channel_count())
            .filter(move |q| queue.is_none_or(|only| only == *q))
            .filter(|q| self.is_alive(*q))
    }

    /// Closes `channels` after a wait on them failed with `e`.
    fn close_all(&self, channels: &[usize], e: &io::Error) -> Result<bool, Closed> {
        for &q in channels {
            self.channel_closed(q, CloseReason::from_error(e));
        }
        Err(Closed(
            self.close_reason()
                .unwrap_or_else(|| CloseReason::from_error(e)),
        ))
    }

    /// The live descriptors to wait on, each with its channel's closed
    /// event, in a stack array, when there are few and no packet object
    /// among them: the common case of a poll loop waits without allocating.
    fn poll_set_without_allocation(
        &self,
        queue: Option<usize>,
    ) -> Option<([PollFd<'_>; SMALL_POLL_SET], usize)> {
        let first = self.channels().first()?.fd()?;
        let mut set = [PollFd::new(first, Interest::Read); SMALL_POLL_SET];
        let mut n = 0;
        for (q, channel) in self.channels().iter().enumerate() {
            if queue.is_some_and(|only| only != q) || !self.is_alive(q) {
                continue;
            }
            *set.get_mut(n)? = PollFd::new(channel.fd()?, Interest::Read);
            *set.get_mut(n + 1)? = self.closed_event(q);
            n += 2;
        }
        Some((set, n))
    }
}
