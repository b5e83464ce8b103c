//! One packet channel — a descriptor or a [`PacketIo`] object — and the raw
//! frame I/O on it: reading into a batch's free buffers, writing a chunk of
//! outgoing frames.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fdlink_sys::fd::{Domain, FdKind, SocketType};
use fdlink_sys::io::RecvInfo;
use fdlink_sys::mmsg::{PacketParts, RecvMmsg, SendMmsg};
use fdlink_sys::ring::RxRing;
use fdlink_sys::wait::{self, Interest, PollFd, Readiness, StopEvent};

use crate::batch::Batch;
use crate::closure::CloseReason;
use crate::link::{VNET_HDR_LEN, ethernet};
use crate::options::DispatchMode;
use crate::packet_io::PacketIo;

/// Scratch space for writing, reused by every send on a channel.
#[derive(Debug)]
pub(crate) struct TxScratch {
    pub(crate) mmsg: SendMmsg,
    pub(crate) link_headers: Vec<[u8; ethernet::HEADER_LEN]>,
    pub(crate) picked: Vec<usize>,
}

pub(crate) enum Io {
    Fd { fd: OwnedFd, kind: FdKind },
    Object(Arc<dyn PacketIo>),
}

/// A channel: its I/O object and its reusable send state.
pub(crate) struct Channel {
    pub(crate) io: Io,
    pub(crate) tx: Mutex<TxScratch>,
    /// The mmap receive ring ([`DispatchMode::Mmap`]).
    pub(crate) ring: Option<RingRx>,
    /// Raised when the channel closes, whoever saw it: wakes a reader
    /// asleep on the descriptor (a closure seen by a send, say).
    pub(crate) closed_event: StopEvent,
    /// A send found the peer gone: later sends are refused at once, while
    /// reads go on until they see the end of what the peer queued.
    pub(crate) send_closed: AtomicBool,
}

/// An `AF_PACKET` channel's receive ring.
pub(crate) struct RingRx {
    ring: Mutex<RxRing>,
    /// Frames may still sit in the socket's ordinary receive queue, queued
    /// before the ring was attached. Once the ring exists the kernel queues
    /// nothing there, so after one read finds it empty it stays empty.
    backlog: AtomicBool,
    /// The endpoint's virtio-net header length (0 or 10).
    vnet_len: usize,
    /// Frames read from the ring without the virtio header the endpoint
    /// expects, since the last [`Channel::take_refused`].
    without_header: AtomicU64,
}

impl RingRx {
    pub(crate) fn new(ring: RxRing, vnet_len: usize) -> Self {
        RingRx {
            ring: Mutex::new(ring),
            backlog: AtomicBool::new(true),
            vnet_len,
            without_header: AtomicU64::new(0),
        }
    }
}

/// What one read attempt produced.
pub(crate) enum ReadResult {
    /// `n` frames were read into the first `n` free buffers; their infos
    /// are in the matching info slots.
    Frames(usize),
    /// Nothing is queued.
    Empty,
    /// The channel is finished.
    Closed(CloseReason),
}

/// What a wait for input produced.
pub(crate) enum WaitResult {
    Ready,
    Stopped,
    TimedOut,
}

impl Channel {
    pub(crate) fn new(io: Io, batch_size: usize) -> io::Result<Self> {
        Ok(Channel {
            io,
            tx: Mutex::new(TxScratch {
                mmsg: SendMmsg::new(batch_size),
                link_headers: vec![[0; ethernet::HEADER_LEN]; batch_size],
                picked: Vec::with_capacity(batch_size),
            }),
            ring: None,
            closed_event: StopEvent::new()?,
            send_closed: AtomicBool::new(false),
        })
    }

    /// After a send found the peer gone: may reads still find packets it
    /// queued before it closed? Then they report the closure once they reach
    /// its end, and nothing is lost. A socket is asked (a peek: 0 is end of
    /// file); a datagram socket's reads could never see the end (the kernel
    /// also discards its queue on that send); a packet object cannot be
    /// asked, so its reads must reach its end of file.
    pub(crate) fn has_input_left(&self) -> bool {
        match &self.io {
            Io::Fd {
                kind:
                    FdKind::Socket {
                        socket_type: SocketType::Datagram,
                        ..
                    },
                ..
            } => false,
            Io::Fd { fd, .. } => matches!(fdlink_sys::io::peek_len(fd.as_fd()), Ok(n) if n > 0),
            Io::Object(_) => true,
        }
    }

    fn is_seqpacket(&self) -> bool {
        matches!(
            self.io,
            Io::Fd {
                kind: FdKind::Socket {
                    socket_type: SocketType::SeqPacket,
                    ..
                },
                ..
            }
        )
    }

    /// Reads up to `max` frames into the batch's free buffers without
    /// blocking.
    pub(crate) fn read(&self, batch: &mut Batch, max: usize, mode: DispatchMode) -> ReadResult {
        let max = max.min(batch.free_slots());
        if max == 0 {
            return ReadResult::Frames(0);
        }
        if let (Some(ring), Io::Fd { fd, .. }) = (&self.ring, &self.io) {
            return self.read_ring(ring, fd.as_fd(), batch, max);
        }
        if let (Io::Fd { fd, kind }, DispatchMode::Recvmmsg) = (&self.io, mode)
            && kind.is_socket()
        {
            let capacity = batch.capacity();
            let packet_meta = self.is_packet_socket();
            let mut mmsg = match batch.mmsg.take() {
                Some(m) if m.packet_meta() || !packet_meta => m,
                _ if packet_meta => RecvMmsg::with_packet_meta(capacity),
                _ => RecvMmsg::new(capacity),
            };
            let (bufs, infos) = batch.free_buffers();
            let mut result = mmsg.recv(fd.as_fd(), &mut bufs[..max], &mut infos[..max]);
            if matches!(&result, Err(e) if is_pending_socket_error(e)) {
                result = mmsg.recv(fd.as_fd(), &mut bufs[..max], &mut infos[..max]);
            }
            batch.mmsg = Some(mmsg);
            return match result {
                Ok(n) => self.cut_at_eof(batch, n),
                Err(e) => self.read_error(e),
            };
        }
        let mut n = 0;
        let mut retried = false;
        while n < max {
            let (bufs, infos) = batch.free_buffers();
            let buf = &mut bufs[n];
            let result = match &self.io {
                Io::Fd { fd, .. } if self.is_packet_socket() => {
                    fdlink_sys::io::recv_one_meta(fd.as_fd(), buf)
                }
                Io::Fd { fd, kind } if kind.is_socket() => {
                    fdlink_sys::io::recv_one(fd.as_fd(), buf)
                }
                // A character device (TUN/TAP) truncates silently: the buffer
                // has one byte of slack, so a full buffer means truncation.
                Io::Fd { fd, .. } => fdlink_sys::io::read(fd.as_fd(), buf)
                    .map(|len| RecvInfo::new(len, len == buf.len())),
                Io::Object(io) => io.recv(buf).map(|len| RecvInfo::new(len, len > buf.len())),
            };
            match result {
                Ok(info) if info.len == 0 && !self.zero_length_is_a_packet() => {
                    if n > 0 {
                        break;
                    }
                    return ReadResult::Closed(CloseReason::PeerClosed);
                }
                Ok(info) => {
                    infos[n] = info;
                    n += 1;
                }
                // Deliver what was read first; a lasting error recurs on the
                // next read.
                Err(_) if n > 0 => break,
                Err(e) if !retried && self.is_socket() && is_pending_socket_error(&e) => {
                    retried = true;
                }
                Err(e) => return self.read_error(e),
            }
        }
        ReadResult::Frames(n)
    }

    /// Frames the last reads took from the kernel but refused themselves
    /// (a ring slot without the virtio header the endpoint expects): read
    /// and dropped as [`crate::DropReason::InvalidVirtioHeader`].
    pub(crate) fn take_refused(&self) -> u64 {
        self.ring
            .as_ref()
            .map_or(0, |r| r.without_header.swap(0, Ordering::Relaxed))
    }

    /// A socket other than `AF_PACKET` (a socketpair's end, a datagram
    /// socket).
    pub(crate) fn is_plain_socket(&self) -> bool {
        matches!(
            self.io,
            Io::Fd {
                kind: FdKind::Socket { domain, .. },
                ..
            } if domain != Domain::Packet
        )
    }

    /// An `AF_PACKET` socket: its reads carry each frame's checksum state
    /// and packet type.
    pub(crate) fn is_packet_socket(&self) -> bool {
        matches!(
            self.io,
            Io::Fd {
                kind: FdKind::Socket {
                    domain: Domain::Packet,
                    ..
                },
                ..
            }
        )
    }

    fn is_socket(&self) -> bool {
        matches!(&self.io, Io::Fd { kind, .. } if kind.is_socket())
    }

    /// A zero-length read is a real (empty) datagram only on datagram
    /// sockets and packet objects; on a SEQPACKET socket or a device it is
    /// end of file.
    fn zero_length_is_a_packet(&self) -> bool {
        match &self.io {
            Io::Fd { kind, .. } => matches!(
                kind,
                FdKind::Socket {
                    socket_type: SocketType::Datagram | SocketType::Raw,
                    ..
                }
            ),
            Io::Object(_) => true,
        }
    }

    /// recvmmsg on a SEQPACKET socket whose peer closed returns zero-length
    /// messages: keep what came before the first one, report closure when
    /// it is first.
    fn cut_at_eof(&self, batch: &mut Batch, n: usize) -> ReadResult {
        if !self.is_seqpacket() {
            return ReadResult::Frames(n);
        }
        let (_, infos) = batch.free_buffers();
        match infos[..n].iter().position(|i| i.len == 0) {
            Some(0) => ReadResult::Closed(CloseReason::PeerClosed),
            Some(k) => ReadResult::Frames(k),
            None => ReadResult::Frames(n),
        }
    }

    fn read_error(&self, e: io::Error) -> ReadResult {
        if let Io::Fd { fd, kind } = &self.io {
            match e.raw_os_error() {
                // An AF_PACKET socket hears ENETDOWN when its interface goes
                // down, and works again once it is up; only an interface
                // that is gone (the socket's index reset) ends it.
                Some(ENETDOWN) if self.is_packet_socket() => {
                    return match fdlink_sys::packet::bound_ifindex(fd.as_fd()) {
                        Ok(Some(_)) => ReadResult::Empty,
                        _ => ReadResult::Closed(CloseReason::DeviceRemoved),
                    };
                }
                // A TUN/TAP queue whose device was deleted (or detached).
                Some(EBADFD) if !kind.is_socket() => {
                    return ReadResult::Closed(CloseReason::DeviceRemoved);
                }
                _ => {}
            }
        }
        match e.kind() {
            // Descriptor reads retry EINTR in fdlink-sys; a packet object
            // may still report it: nothing was consumed, so try later.
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => ReadResult::Empty,
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::BrokenPipe => ReadResult::Closed(CloseReason::PeerClosed),
            _ => ReadResult::Closed(CloseReason::from_error(&e)),
        }
    }

    /// Waits until input may be ready, `stop` is raised, the channel
    /// closes, or `timeout` passes. A hang-up or error counts as ready: the
    /// next read reports it.
    pub(crate) fn wait_readable(
        &self,
        stop: Option<&StopEvent>,
        timeout: Option<Duration>,
    ) -> io::Result<WaitResult> {
        match &self.io {
            Io::Fd { fd, .. } => {
                let closed = self.closed_event.as_fd();
                let mut set = [
                    PollFd::new(fd.as_fd(), Interest::Read),
                    PollFd::new(closed, Interest::Read),
                    PollFd::new(stop.map_or(closed, |s| s.as_fd()), Interest::Read),
                ];
                let n = if stop.is_some() { 3 } else { 2 };
                if wait::poll(&mut set[..n], timeout)? == 0 {
                    return Ok(WaitResult::TimedOut);
                }
                Ok(if set[1..n].iter().any(PollFd::any) {
                    WaitResult::Stopped
                } else {
                    WaitResult::Ready
                })
            }
            Io::Object(io) => {
                if stop.map(|s| s.is_signalled()).transpose()?.unwrap_or(false) {
                    return Ok(WaitResult::Stopped);
                }
                let t = timeout.unwrap_or(OBJECT_WAIT_SLICE).min(OBJECT_WAIT_SLICE);
                match io.wait_readable(t) {
                    Ok(true) => Ok(WaitResult::Ready),
                    Ok(false) => Ok(WaitResult::TimedOut),
                    // An interrupted wait is a short one, not a failure.
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(WaitResult::TimedOut),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// A hang-up that the reader must treat as closure when no data came
    /// with it (POLLHUP on a socket whose reads return nothing).
    pub(crate) fn has_hung_up(&self) -> bool {
        match &self.io {
            Io::Fd { fd, .. } => matches!(
                wait::wait(fd.as_fd(), Interest::Read, None, Some(Duration::ZERO)),
                Ok(Readiness::Hangup) | Ok(Readiness::Error)
            ),
            Io::Object(_) => false,
        }
    }

    /// Writes frames; returns how many the kernel took (at least one unless
    /// an error is returned).
    pub(crate) fn write<'a>(
        &self,
        mmsg: &mut SendMmsg,
        frames: impl Iterator<Item = PacketParts<'a>>,
    ) -> io::Result<usize> {
        match &self.io {
            Io::Fd { fd, kind } if kind.is_socket() => mmsg.send(fd.as_fd(), frames),
            Io::Fd { fd, .. } => {
                let Some(parts) = frames.into_iter().next() else {
                    return Ok(0);
                };
                let slices = parts.map(IoSlice::new);
                fdlink_sys::io::writev(fd.as_fd(), &slices).map(|_| 1)
            }
            Io::Object(io) => {
                let Some(parts) = frames.into_iter().next() else {
                    return Ok(0);
                };
                io.send(&parts).map(|()| 1)
            }
        }
    }

    /// Waits up to `timeout` for room to write.
    pub(crate) fn wait_writable(&self, timeout: Duration) -> io::Result<bool> {
        match &self.io {
            Io::Fd { fd, .. } => Ok(matches!(
                wait::wait(fd.as_fd(), Interest::Write, None, Some(timeout))?,
                Readiness::Ready
            )),
            Io::Object(_) => {
                // Packet objects offer no write readiness: back off briefly.
                std::thread::sleep(timeout.min(Duration::from_millis(1)));
                Ok(true)
            }
        }
    }

    /// The descriptor, for callers that poll several channels at once.
    pub(crate) fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        match &self.io {
            Io::Fd { fd, .. } => Some(fd.as_fd()),
            Io::Object(_) => None,
        }
    }
}

/// An error a socket reports once and then forgets (the kernel's pending
/// `sk_err`): the reads after it return what is still queued. A SEQPACKET
/// peer that closes with our packets unread in its queue leaves
/// `ECONNRESET` on our socket although its own packets still wait for us;
/// an ICMP error leaves `ECONNREFUSED`. Taking either as closure would lose
/// those packets.
fn is_pending_socket_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused
    )
}

impl Channel {
    /// Copies up to `max` frames out of the ring into the batch's free buffers
    /// (virtio header first, then the frame from its MAC header), handing each
    /// slot back to the kernel; then, while frames queued before the ring may
    /// remain, reads those from the socket.
    fn read_ring(
        &self,
        rx: &RingRx,
        fd: std::os::fd::BorrowedFd<'_>,
        batch: &mut Batch,
        max: usize,
    ) -> ReadResult {
        let vnet_len = rx.vnet_len;
        let (bufs, infos) = batch.free_buffers();
        let mut n = 0;
        {
            let mut ring = rx.ring.lock().unwrap_or_else(|e| e.into_inner());
            while n < max {
                let Some(frame) = ring.next_frame() else {
                    break;
                };
                let buf = &mut bufs[n];
                let data = frame.data();
                let fits = vnet_len + data.len() <= buf.len();
                if vnet_len > 0 && frame.vnet_hdr().is_none() && !frame.is_truncated() {
                    // The kernel wrote no virtio header for this frame:
                    // dropped and counted, never passed on with a made-up
                    // one.
                    rx.without_header.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if frame.is_truncated() || !fits {
                    // Counted as truncated by the caller; nothing to copy.
                    let len = vnet_len + frame.original_len().max(data.len());
                    infos[n] = RecvInfo::new(len, true).with_outgoing(frame.is_outgoing());
                } else {
                    if let Some(hdr) = frame.vnet_hdr() {
                        let k = vnet_len.min(VNET_HDR_LEN);
                        buf[..k].copy_from_slice(&hdr[..k]);
                        buf[k..vnet_len].fill(0);
                    }
                    buf[vnet_len..vnet_len + data.len()].copy_from_slice(data);
                    infos[n] = RecvInfo::new(vnet_len + data.len(), false)
                        .with_checksum(frame.checksum())
                        .with_outgoing(frame.is_outgoing());
                }
                n += 1;
            }
        }
        // The socket's own queue holds what came before the ring existed; and
        // while the ring is empty, a receive call is the one way to hear of a
        // pending error (the interface went down, or away), which poll keeps
        // reporting until a call takes it.
        while n < max && (rx.backlog.load(Ordering::Relaxed) || n == 0) {
            match fdlink_sys::io::recv_one_meta(fd, &mut bufs[n]) {
                Ok(info) => {
                    infos[n] = info;
                    n += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    rx.backlog.store(false, Ordering::Relaxed);
                    break;
                }
                Err(_) if n > 0 => break,
                Err(e) => return self.read_error(e),
            }
        }
        if n == 0 {
            ReadResult::Empty
        } else {
            ReadResult::Frames(n)
        }
    }
}

/// `ENETDOWN` (Linux, every architecture).
const ENETDOWN: i32 = 100;
/// `EBADFD` (Linux, every architecture).
const EBADFD: i32 = 77;

/// The longest a reader sleeps inside a packet object's wait before it
/// checks for a stop request: the bound on `detach` latency for objects.
pub(crate) const OBJECT_WAIT_SLICE: Duration = Duration::from_millis(20);
