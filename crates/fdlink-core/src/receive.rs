//! The receive path: reading a channel into a batch, checking and
//! counting each frame, and waiting for input.

use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fdlink_sys::wait::{Interest, PollFd};

use crate::batch::Batch;
use crate::channel::ReadResult;
use crate::endpoint::Shared;
use crate::link;
use crate::stats::DropReason;

/// Channels a wait polls from a stack array (more use a vector).
const SMALL_POLL_SET: usize = 8;

impl Shared {
    /// Reads what channel `q` has queued into `batch`'s free slots, checks
    /// each frame, keeps the good ones and counts the rest. Returns how many
    /// frames were read, good or bad.
    pub(crate) fn fill(&self, q: usize, batch: &mut Batch) -> usize {
        let channel = &self.channels[q];
        let mut read = 0;
        if !self.alive[q].load(Ordering::Acquire) {
            return read;
        }
        while batch.free_slots() > 0 {
            let asked = batch.free_slots();
            let n = match channel.read(batch, asked, self.config.dispatch) {
                ReadResult::Frames(n) => n,
                ReadResult::Empty => return read,
                ReadResult::Closed(reason) => {
                    self.channel_closed(q, reason);
                    return read;
                }
            };
            self.accept(q, batch, n);
            read += n;
            if n < asked {
                // The queue ran dry (or an error waits for the next read).
                return read;
            }
        }
        read
    }

    /// Classifies `n` frames just read into the free slots; keeps the good
    /// ones in order.
    fn accept(&self, q: usize, batch: &mut Batch, n: usize) {
        let vnet_len = self.config.vnet_len;
        let eth = self.config.ethernet.then_some(self.config.link_address);
        let mut kept_bytes = 0u64;
        let mut kept = 0u64;
        for i in 0..n {
            // Slot i of the frames read sits at free offset i - kept, since
            // each kept frame moved the free area forward by one.
            let offset = i - kept as usize;
            let (bufs, infos) = batch.free_buffers();
            let info = infos[offset];
            let verdict = if info.truncated || info.len > self.config.max_frame {
                Err(DropReason::Truncated)
            } else if info.len < vnet_len {
                Err(DropReason::ShortFrame)
            } else {
                link::classify(&bufs[offset][vnet_len..info.len], eth)
            };
            match verdict {
                Ok(c) => {
                    batch.commit(offset, info.len, q, vnet_len, c.link_len, c.protocol);
                    kept += 1;
                    kept_bytes += (info.len - vnet_len) as u64;
                }
                Err(reason) => self.stats.drop(reason, 1),
            }
        }
        self.stats.read(n as u64);
        self.stats.delivered(kept, kept_bytes);
    }

    pub(crate) fn wait_readable(
        &self,
        queue: Option<usize>,
        timeout: Option<Duration>,
    ) -> io::Result<bool> {
        let live = |q: &usize| self.alive[*q].load(Ordering::Acquire);
        if let Some(fds) = self.poll_set_without_allocation(queue) {
            let (mut set, n) = fds;
            if n == 0 {
                return Ok(false);
            }
            return Ok(fdlink_sys::wait::poll(&mut set[..n], timeout)? > 0);
        }
        let all = 0..self.channels.len();
        let mut fds: Vec<PollFd<'_>> = Vec::new();
        let mut objects = Vec::new();
        for q in all
            .filter(|q| queue.is_none_or(|only| only == *q))
            .filter(live)
        {
            match self.channels[q].fd() {
                Some(fd) => fds.push(PollFd::new(fd, Interest::Read)),
                None => objects.push(q),
            }
        }
        if objects.is_empty() {
            if fds.is_empty() {
                return Ok(false);
            }
            return Ok(fdlink_sys::wait::poll(&mut fds, timeout)? > 0);
        }
        // Packet objects have no descriptor to poll: take turns in short
        // slices until one is ready or the time is up.
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if !fds.is_empty() && fdlink_sys::wait::poll(&mut fds, Some(Duration::ZERO))? > 0 {
                return Ok(true);
            }
            for &q in &objects {
                let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                if let Ok(crate::channel::WaitResult::Ready) =
                    self.channels[q].wait_readable(None, left)
                {
                    return Ok(true);
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
        }
    }

    /// The live descriptors to wait on, in a stack array, when there are
    /// few and no packet object among them: the common case of a poll loop
    /// waits without allocating.
    fn poll_set_without_allocation(
        &self,
        queue: Option<usize>,
    ) -> Option<([PollFd<'_>; SMALL_POLL_SET], usize)> {
        let first = self.channels.first()?.fd()?;
        let mut set = [PollFd::new(first, Interest::Read); SMALL_POLL_SET];
        let mut n = 0;
        for (q, channel) in self.channels.iter().enumerate() {
            if queue.is_some_and(|only| only != q) || !self.alive[q].load(Ordering::Acquire) {
                continue;
            }
            *set.get_mut(n)? = PollFd::new(channel.fd()?, Interest::Read);
            n += 1;
        }
        Some((set, n))
    }
}
