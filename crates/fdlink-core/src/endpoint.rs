//! The endpoint: channels, framing, receive and send, closure and counters.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use fdlink_sys::fd::{Domain, FdKind, SocketType};
use fdlink_sys::packet::FanoutMode;
use fdlink_sys::ring::{RingConfig, RxRing};
use fdlink_sys::wait::{Interest, PollFd};

use crate::batch::Batch;
use crate::caps::Capabilities;
use crate::channel::{Channel, Io, ReadResult, RingRx};
use crate::dispatch::Readers;
use crate::link::{self, EtherType, MacAddr, ethernet};
use crate::options::{
    ChannelSource, ClosedCallback, DispatchMode, MAX_BATCH_SIZE, Options, OptionsError,
};
use crate::stats::{DropReason, Stats, StatsSnapshot};

/// Why a channel, and so the endpoint, closed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer closed: end of file, a zero-length SEQPACKET message, or a
    /// refused or broken write.
    PeerClosed,
    /// The descriptor reported a hang-up with nothing left to read.
    Hangup,
    /// A fatal error.
    Error {
        /// Its kind.
        kind: io::ErrorKind,
        /// The OS error number, when there is one.
        os_error: Option<i32>,
    },
}

impl CloseReason {
    pub(crate) fn from_error(e: &io::Error) -> Self {
        CloseReason::Error {
            kind: e.kind(),
            os_error: e.raw_os_error(),
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::PeerClosed => f.write_str("peer closed"),
            CloseReason::Hangup => f.write_str("hang-up"),
            CloseReason::Error {
                os_error: Some(code),
                ..
            } => write!(f, "error: {}", io::Error::from_raw_os_error(*code)),
            CloseReason::Error { kind, .. } => write!(f, "error: {kind}"),
        }
    }
}

/// Returned by [`Endpoint::recv_batch`] once every channel has closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed(pub CloseReason);

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "endpoint closed: {}", self.0)
    }
}

impl std::error::Error for Closed {}

/// One packet to send.
#[derive(Debug, Clone, Copy)]
pub struct OutPacket<'a> {
    /// The network-layer packet (IP, ARP, ...), or the whole link frame
    /// when [`OutPacket::framed`] is set.
    pub payload: &'a [u8],
    /// The payload already starts with its link header (a stack that builds
    /// Ethernet frames itself); the endpoint adds none.
    pub framed: bool,
    /// The EtherType written in the Ethernet header.
    pub protocol: EtherType,
    /// Ethernet destination.
    pub dst: MacAddr,
    /// Ethernet source; the endpoint's own address when `None`.
    pub src: Option<MacAddr>,
    /// The flow hash: the packet leaves on channel `hash % channels`
    /// (the first channel when `None`).
    pub hash: Option<u32>,
    /// The virtio-net header to put in front, when the endpoint uses one
    /// (all zeros when empty: no offload).
    pub vnet_header: &'a [u8],
}

impl<'a> OutPacket<'a> {
    /// An IP packet; the EtherType comes from its version nibble, the
    /// Ethernet destination is broadcast until [`OutPacket::to`] sets it.
    pub fn ip(payload: &'a [u8]) -> Self {
        OutPacket {
            payload,
            framed: false,
            protocol: EtherType::from_ip_version(payload).unwrap_or(EtherType::IPV4),
            dst: MacAddr::BROADCAST,
            src: None,
            hash: None,
            vnet_header: &[],
        }
    }

    /// Any payload with an explicit EtherType.
    pub fn new(protocol: EtherType, payload: &'a [u8]) -> Self {
        OutPacket {
            protocol,
            ..OutPacket::ip(payload)
        }
    }

    /// A complete link frame (Ethernet header included, in Ethernet mode),
    /// written as is.
    pub fn frame(frame: &'a [u8]) -> Self {
        OutPacket {
            framed: true,
            ..OutPacket::ip(frame)
        }
    }

    /// Sets the Ethernet destination.
    pub fn to(mut self, dst: MacAddr) -> Self {
        self.dst = dst;
        self
    }

    /// Sets an explicit Ethernet source.
    pub fn from(mut self, src: MacAddr) -> Self {
        self.src = Some(src);
        self
    }

    /// Sets the flow hash that picks the channel.
    pub fn with_hash(mut self, hash: u32) -> Self {
        self.hash = Some(hash);
        self
    }

    /// Sets the virtio-net header.
    pub fn with_vnet_header(mut self, header: &'a [u8]) -> Self {
        self.vnet_header = header;
        self
    }
}

/// What a send did with its packets: each was sent or dropped (and the drop
/// counted by reason in the endpoint's statistics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct SendOutcome {
    /// Packets the kernel accepted.
    pub sent: usize,
    /// Packets dropped.
    pub dropped: usize,
}

/// Settings fixed at construction.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) mtu: u32,
    pub(crate) ethernet: bool,
    pub(crate) link_address: Option<MacAddr>,
    pub(crate) vnet_len: usize,
    pub(crate) max_frame: usize,
    pub(crate) batch_size: usize,
    pub(crate) dispatch: DispatchMode,
    pub(crate) send_timeout: Duration,
}

/// State shared by the endpoint and its reader threads.
pub(crate) struct Shared {
    pub(crate) channels: Vec<Channel>,
    pub(crate) alive: Vec<AtomicBool>,
    pub(crate) config: Config,
    pub(crate) caps: Capabilities,
    pub(crate) stats: Stats,
    closed_callback: Mutex<Option<ClosedCallback>>,
    close_reason: OnceLock<CloseReason>,
    next_rx: AtomicUsize,
}

/// A link endpoint over one or more boundary-preserving packet channels.
///
/// Receive either by pulling ([`Endpoint::recv_batch`], non-blocking, for
/// single-threaded stacks that poll) or by pushing ([`Endpoint::attach`]:
/// one reader thread per channel hands batches to a [`crate::Dispatcher`]);
/// use one or the other. Send with [`Endpoint::send`] from any thread.
pub struct Endpoint {
    pub(crate) shared: std::sync::Arc<Shared>,
    pub(crate) readers: Mutex<Option<Readers>>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("channels", &self.shared.channels.len())
            .field("config", &self.shared.config)
            .field("caps", &self.shared.caps)
            .finish_non_exhaustive()
    }
}

const VALID_VNET_LENS: [usize; 3] = [0, 10, 12];
/// Channels a wait polls from a stack array (more use a vector).
const SMALL_POLL_SET: usize = 8;

/// The largest IP packet, and so the largest super-packet with a virtio
/// header.
const MAX_IP_PACKET: usize = 65535;

impl Endpoint {
    /// Builds an endpoint, checking the options as a whole.
    ///
    /// Every descriptor is made non-blocking.
    ///
    /// # Errors
    /// An [`OptionsError`] naming the first problem: no channel, an MTU or
    /// batch size out of range, a link address without Ethernet or a
    /// multicast one, a virtio header length other than 0/10/12, a receive
    /// buffer too small, a stream socket, `recvmmsg` on a non-socket, `mmap`
    /// on anything but an `AF_PACKET` socket, or a descriptor that cannot
    /// be inspected or configured (the mmap ring, the fanout group).
    ///
    /// Several `AF_PACKET` sockets are joined into one hash fanout group
    /// here (see [`Options::fds`]); with [`DispatchMode::Mmap`] each socket
    /// gets its receive ring here.
    pub fn new(options: Options) -> Result<Self, OptionsError> {
        let o = options;
        if o.channels.is_empty() {
            return Err(OptionsError::NoChannels);
        }
        if o.mtu == 0 || o.mtu as usize > MAX_IP_PACKET {
            return Err(OptionsError::InvalidMtu(o.mtu));
        }
        if o.batch_size == 0 || o.batch_size > MAX_BATCH_SIZE {
            return Err(OptionsError::InvalidBatchSize(o.batch_size));
        }
        if let Some(mac) = o.link_address {
            if !o.ethernet {
                return Err(OptionsError::LinkAddressWithoutEthernet);
            }
            if mac.is_multicast() {
                return Err(OptionsError::MulticastLinkAddress(mac));
            }
        }
        if !VALID_VNET_LENS.contains(&o.vnet_header_len) {
            return Err(OptionsError::InvalidVnetHeaderLen(o.vnet_header_len));
        }
        let link_len = if o.ethernet { ethernet::HEADER_LEN } else { 0 };
        let largest_packet = if o.vnet_header_len > 0 {
            MAX_IP_PACKET
        } else {
            o.mtu as usize
        };
        let min_frame = o.vnet_header_len + link_len + o.mtu as usize;
        let max_frame = match o.receive_buffer_size {
            Some(size) if size < min_frame => {
                return Err(OptionsError::ReceiveBufferTooSmall {
                    size,
                    needed: min_frame,
                });
            }
            Some(size) => size,
            None => o.vnet_header_len + link_len + largest_packet,
        };

        let mut channels = Vec::with_capacity(o.channels.len());
        for (index, source) in o.channels.into_iter().enumerate() {
            let io = match source {
                ChannelSource::Io(_) if o.dispatch == DispatchMode::Mmap => {
                    return Err(OptionsError::DispatchUnsupported {
                        channel: index,
                        mode: o.dispatch,
                        kind: "a packet object (mmap needs an AF_PACKET socket)",
                    });
                }
                ChannelSource::Io(io) => Io::Object(io),
                ChannelSource::Fd(fd) => {
                    let described = |source| OptionsError::Descriptor {
                        channel: index,
                        source,
                    };
                    use std::os::fd::AsFd;
                    let kind = fdlink_sys::fd::fd_kind(fd.as_fd()).map_err(described)?;
                    check_kind(index, kind, o.dispatch)?;
                    fdlink_sys::fd::set_nonblocking(fd.as_fd()).map_err(described)?;
                    Io::Fd { fd, kind }
                }
            };
            let mut channel = Channel::new(io, o.batch_size);
            if o.dispatch == DispatchMode::Mmap
                && let Io::Fd { fd, .. } = &channel.io
            {
                use std::os::fd::AsFd;
                let ring = attach_ring(
                    fd.as_fd(),
                    o.vnet_header_len,
                    link_len,
                    max_frame,
                    o.batch_size,
                )
                .map_err(|source| OptionsError::Descriptor {
                    channel: index,
                    source,
                })?;
                channel.ring = Some(RingRx::new(ring, o.vnet_header_len));
            }
            channels.push(channel);
        }
        join_fanout_group(&channels)?;

        let caps = Capabilities::empty()
            .with(Capabilities::RESOLUTION_REQUIRED, o.ethernet)
            .with(Capabilities::SAVE_RESTORE, o.save_restore)
            .with(Capabilities::DISCONNECT_OK, o.disconnect_ok)
            .with(Capabilities::TX_CHECKSUM_OFFLOAD, o.tx_checksum_offload)
            .with(Capabilities::RX_CHECKSUM_OFFLOAD, o.rx_checksum_offload)
            .with(Capabilities::GSO, o.gso_max_size > 0);

        let alive = channels.iter().map(|_| AtomicBool::new(true)).collect();
        Ok(Endpoint {
            shared: std::sync::Arc::new(Shared {
                channels,
                alive,
                config: Config {
                    mtu: o.mtu,
                    ethernet: o.ethernet,
                    link_address: o.link_address,
                    vnet_len: o.vnet_header_len,
                    max_frame,
                    batch_size: o.batch_size,
                    dispatch: o.dispatch,
                    send_timeout: o.send_timeout,
                },
                caps,
                stats: Stats::default(),
                closed_callback: Mutex::new(o.closed),
                close_reason: OnceLock::new(),
                next_rx: AtomicUsize::new(0),
            }),
            readers: Mutex::new(None),
        })
    }

    /// The MTU: the largest network-layer packet.
    pub fn mtu(&self) -> u32 {
        self.shared.config.mtu
    }

    /// Bytes the endpoint puts in front of each network packet: the
    /// Ethernet header (14, or 0 for IP framing) plus the virtio-net header.
    pub fn max_header_length(&self) -> usize {
        let link = if self.shared.config.ethernet {
            ethernet::HEADER_LEN
        } else {
            0
        };
        link + self.shared.config.vnet_len
    }

    /// The endpoint's MAC address (Ethernet framing only).
    pub fn link_address(&self) -> Option<MacAddr> {
        self.shared.config.link_address
    }

    /// True with Ethernet framing.
    pub fn is_ethernet(&self) -> bool {
        self.shared.config.ethernet
    }

    /// The virtio-net header length every frame carries (0: none).
    pub fn vnet_header_len(&self) -> usize {
        self.shared.config.vnet_len
    }

    /// The capabilities computed from the options.
    pub fn capabilities(&self) -> Capabilities {
        self.shared.caps
    }

    /// Number of channels (queues).
    pub fn channel_count(&self) -> usize {
        self.shared.channels.len()
    }

    /// The largest frame a receive buffer takes (virtio and link headers
    /// included).
    pub fn max_frame_size(&self) -> usize {
        self.shared.config.max_frame
    }

    /// A batch sized for this endpoint: the configured batch size, buffers
    /// one byte larger than the largest frame (so device truncation shows).
    pub fn new_batch(&self) -> Batch {
        self.shared.new_batch()
    }

    /// The counters now.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Counts drops decided above the endpoint (by an offload layer), so
    /// one set of counters tells every drop.
    pub fn count_drop(&self, reason: DropReason, packets: u64) {
        self.shared.stats.drop(reason, packets);
    }

    /// Why the endpoint closed, once a channel has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.close_reason.get().cloned()
    }

    /// True once every channel has closed.
    pub fn is_closed(&self) -> bool {
        self.shared.all_closed()
    }

    /// Receives what is queued on every channel, without blocking, into
    /// `batch` (cleared first) until it is full. Returns how many packets
    /// it holds; 0 means nothing was queued.
    ///
    /// Frames that fail a check are counted as drops and skipped. Channels
    /// are visited round-robin so one busy queue cannot starve the others.
    ///
    /// # Errors
    /// [`Closed`] once every channel has closed and nothing is left.
    pub fn recv_batch(&self, batch: &mut Batch) -> Result<usize, Closed> {
        batch.clear();
        let n = self.shared.channels.len();
        let start = if n > 1 {
            self.shared.next_rx.fetch_add(1, Ordering::Relaxed) % n
        } else {
            0
        };
        for k in 0..n {
            if batch.free_slots() == 0 {
                break;
            }
            self.shared.fill((start + k) % n, batch);
        }
        if batch.is_empty() && self.shared.all_closed() {
            return Err(Closed(
                self.close_reason().unwrap_or(CloseReason::PeerClosed),
            ));
        }
        Ok(batch.len())
    }

    /// [`Endpoint::recv_batch`] on one channel only: for one stack per
    /// queue.
    ///
    /// # Errors
    /// [`Closed`] once that channel has closed.
    ///
    /// # Panics
    /// When `queue` is not below [`Endpoint::channel_count`].
    pub fn recv_batch_from(&self, queue: usize, batch: &mut Batch) -> Result<usize, Closed> {
        batch.clear();
        self.shared.fill(queue, batch);
        if batch.is_empty() && !self.shared.alive[queue].load(Ordering::Acquire) {
            return Err(Closed(
                self.close_reason().unwrap_or(CloseReason::PeerClosed),
            ));
        }
        Ok(batch.len())
    }

    /// Blocks until some channel may have input, or `timeout` passes
    /// (`None`: no limit). Returns whether input may be ready.
    ///
    /// For a poll loop: wait here with the stack's next deadline, then
    /// [`Endpoint::recv_batch`].
    pub fn wait_readable(&self, timeout: Option<Duration>) -> io::Result<bool> {
        self.shared.wait_readable(None, timeout)
    }

    /// [`Endpoint::wait_readable`] on one channel.
    pub fn wait_readable_on(&self, queue: usize, timeout: Option<Duration>) -> io::Result<bool> {
        self.shared.wait_readable(Some(queue), timeout)
    }

    /// Sends packets, each on the channel its flow hash picks. Returns what
    /// was sent and dropped; drops are also counted by reason.
    ///
    /// Sockets take a batch per `sendmmsg`; TUN/TAP a `writev` per packet.
    /// When a send buffer is full the send waits for room up to the send
    /// timeout, then counts the rest as [`DropReason::SendBufferFull`].
    pub fn send(&self, packets: &[OutPacket<'_>]) -> SendOutcome {
        let n = self.shared.channels.len();
        if n == 1 {
            return self.shared.send_on(0, packets, |_| true);
        }
        let mut total = SendOutcome::default();
        for q in 0..n {
            let out = self
                .shared
                .send_on(q, packets, |p| p.hash.map_or(0, |h| h as usize % n) == q);
            total.sent += out.sent;
            total.dropped += out.dropped;
        }
        total
    }

    /// Sends every packet on channel `queue`, whatever its hash: for one
    /// stack per queue.
    ///
    /// # Panics
    /// When `queue` is not below [`Endpoint::channel_count`].
    pub fn send_on(&self, queue: usize, packets: &[OutPacket<'_>]) -> SendOutcome {
        self.shared.send_on(queue, packets, |_| true)
    }
}

/// Bytes of receive ring per channel the endpoint aims for when slots are
/// large (virtio-net header and 64 KiB super-frames); never fewer slots
/// than one batch.
const RING_BYTES_BUDGET: usize = 8 << 20;

/// Attaches and maps a receive ring to AF_PACKET socket `fd`: slots for the
/// endpoint's largest frame, four batches of them (fewer for large slots,
/// down to one batch).
fn attach_ring(
    fd: std::os::fd::BorrowedFd<'_>,
    vnet_len: usize,
    link_len: usize,
    max_frame: usize,
    batch_size: usize,
) -> io::Result<RxRing> {
    let vnet_on = fdlink_sys::packet::vnet_hdr_enabled(fd)?;
    if vnet_on != (vnet_len > 0) || vnet_len > fdlink_sys::ring::VNET_HDR_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the socket's PACKET_VNET_HDR is {} but the endpoint's virtio header length is {vnet_len} \
                 (an AF_PACKET ring carries a 10-byte header exactly when PACKET_VNET_HDR is on)",
                if vnet_on { "on" } else { "off" }
            ),
        ));
    }
    let max_ip = max_frame.saturating_sub(vnet_len + link_len);
    let probe = RingConfig::for_packet_len(max_ip, 1, vnet_len > 0);
    let count = (4 * batch_size)
        .min(RING_BYTES_BUDGET / probe.frame_size.max(1))
        .max(batch_size);
    RxRing::new(fd, RingConfig::for_packet_len(max_ip, count, vnet_len > 0))
}

/// Puts every AF_PACKET socket of the endpoint in one hash fanout group
/// when there are several, unless the first is in a group already.
fn join_fanout_group(channels: &[Channel]) -> Result<(), OptionsError> {
    use std::os::fd::AsFd;
    let sockets: Vec<(usize, std::os::fd::BorrowedFd<'_>)> = channels
        .iter()
        .enumerate()
        .filter_map(|(i, c)| match &c.io {
            Io::Fd {
                fd,
                kind:
                    FdKind::Socket {
                        domain: Domain::Packet,
                        ..
                    },
            } => Some((i, fd.as_fd())),
            _ => None,
        })
        .collect();
    if sockets.len() < 2 {
        return Ok(());
    }
    let mut group = None;
    for &(channel, fd) in &sockets {
        match fdlink_sys::packet::join_fanout(fd, FanoutMode::Hash, group) {
            Ok(id) => group = Some(id),
            // The first socket is in a group already: the caller set up
            // its own fanout; leave it.
            Err(e) if group.is_none() && fdlink_sys::packet::is_already_in_fanout_group(&e) => {
                return Ok(());
            }
            Err(source) => return Err(OptionsError::Descriptor { channel, source }),
        }
    }
    Ok(())
}

fn check_kind(channel: usize, kind: FdKind, mode: DispatchMode) -> Result<(), OptionsError> {
    match kind {
        FdKind::Socket {
            socket_type: SocketType::Stream,
            ..
        } => Err(OptionsError::NotPacketOriented { channel }),
        FdKind::Socket {
            domain: Domain::Packet,
            ..
        } => Ok(()),
        _ if mode == DispatchMode::Mmap => Err(OptionsError::DispatchUnsupported {
            channel,
            mode,
            kind: if kind.is_socket() {
                "not an AF_PACKET socket (the mmap ring is AF_PACKET's)"
            } else {
                "not a socket (a TUN/TAP device reads one packet per read)"
            },
        }),
        FdKind::Socket { .. } => Ok(()),
        _ if mode == DispatchMode::Recvmmsg => Err(OptionsError::DispatchUnsupported {
            channel,
            mode,
            kind: "not a socket (a TUN/TAP device reads one packet per read)",
        }),
        _ => Ok(()),
    }
}

impl Shared {
    pub(crate) fn new_batch(&self) -> Batch {
        Batch::new(self.config.batch_size, self.config.max_frame + 1)
    }

    pub(crate) fn is_alive(&self, q: usize) -> bool {
        self.alive[q].load(Ordering::Acquire)
    }

    pub(crate) fn all_closed(&self) -> bool {
        self.alive.iter().all(|a| !a.load(Ordering::Acquire))
    }

    /// Marks channel `q` closed; the first closure of the endpoint runs the
    /// closed callback, exactly once.
    pub(crate) fn channel_closed(&self, q: usize, reason: CloseReason) {
        if !self.alive[q].swap(false, Ordering::AcqRel) {
            return;
        }
        if self.close_reason.set(reason.clone()).is_ok() {
            let callback = self.closed_callback.lock().expect("callback lock").take();
            if let Some(callback) = callback {
                callback(reason);
            }
        }
    }

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

    /// Sends the packets `pick` selects on channel `q`, in order.
    pub(crate) fn send_on(
        &self,
        q: usize,
        packets: &[OutPacket<'_>],
        pick: impl Fn(&OutPacket<'_>) -> bool,
    ) -> SendOutcome {
        let channel = &self.channels[q];
        let mut scratch = channel.tx.lock().expect("tx lock");
        let scratch = &mut *scratch;
        scratch.picked.clear();
        let mut dropped = 0;
        for (i, p) in packets.iter().enumerate().filter(|(_, p)| pick(p)) {
            match self.check_outgoing(p) {
                Ok(()) => scratch.picked.push(i),
                Err(reason) => {
                    self.stats.drop(reason, 1);
                    dropped += 1;
                }
            }
        }
        let mut sent = 0;
        let mut next = 0;
        let mut deadline = None;
        let zero_vnet = [0u8; 12];
        while next < scratch.picked.len() {
            if !self.alive[q].load(Ordering::Acquire) {
                let rest = scratch.picked.len() - next;
                self.stats.drop(DropReason::LinkClosed, rest as u64);
                dropped += rest;
                break;
            }
            let chunk = &scratch.picked
                [next..(next + scratch.link_headers.len()).min(scratch.picked.len())];
            for (header, &i) in scratch.link_headers.iter_mut().zip(chunk) {
                let p = &packets[i];
                if self.config.ethernet && !p.framed {
                    let src = p.src.or(self.config.link_address).unwrap_or_default();
                    *header = ethernet::header(p.dst, src, p.protocol);
                }
            }
            let link_len = if self.config.ethernet {
                ethernet::HEADER_LEN
            } else {
                0
            };
            let vnet_len = self.config.vnet_len;
            let frames = chunk.iter().zip(&scratch.link_headers).map(|(&i, header)| {
                let p = &packets[i];
                let vnet = if p.vnet_header.is_empty() {
                    &zero_vnet[..vnet_len]
                } else {
                    p.vnet_header
                };
                let link = if p.framed { 0 } else { link_len };
                [vnet, &header[..link], p.payload]
            });
            match channel.write(&mut scratch.mmsg, frames) {
                Ok(k) => {
                    let bytes: usize = chunk[..k]
                        .iter()
                        .map(|&i| {
                            let p = &packets[i];
                            p.payload.len() + if p.framed { 0 } else { link_len }
                        })
                        .sum();
                    self.stats.sent(k as u64, bytes as u64);
                    sent += k;
                    next += k;
                }
                // Full, or interrupted before anything was taken (packet
                // objects may report EINTR): retry until the send timeout.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    let deadline =
                        *deadline.get_or_insert_with(|| Instant::now() + self.config.send_timeout);
                    let left = deadline.saturating_duration_since(Instant::now());
                    let room = !left.is_zero() && channel.wait_writable(left).unwrap_or(false);
                    if !room {
                        let rest = scratch.picked.len() - next;
                        self.stats.drop(DropReason::SendBufferFull, rest as u64);
                        dropped += rest;
                        break;
                    }
                }
                Err(e) if is_peer_gone(&e) => {
                    self.channel_closed(q, CloseReason::PeerClosed);
                }
                Err(_) => {
                    // This packet was refused (too big, device down, ...):
                    // count it and go on with the next.
                    self.stats.drop(DropReason::SendError, 1);
                    dropped += 1;
                    next += 1;
                }
            }
        }
        SendOutcome { sent, dropped }
    }

    fn check_outgoing(&self, p: &OutPacket<'_>) -> Result<(), DropReason> {
        let vnet_len = self.config.vnet_len;
        if !(p.vnet_header.is_empty() || p.vnet_header.len() == vnet_len) {
            return Err(DropReason::SendError);
        }
        let largest = if vnet_len > 0 {
            MAX_IP_PACKET
        } else {
            self.config.mtu as usize
        };
        let link_len = if self.config.ethernet && p.framed {
            ethernet::HEADER_LEN
        } else {
            0
        };
        if p.payload.len().saturating_sub(link_len) > largest {
            return Err(DropReason::Oversized);
        }
        Ok(())
    }
}

fn is_peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::NotConnected
            | io::ErrorKind::UnexpectedEof
    )
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.detach();
    }
}
