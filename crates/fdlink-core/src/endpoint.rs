//! The endpoint: construction and its checks, the public API, closure.
//! The receive and send paths live in `receive.rs` and `send.rs`.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::batch::Batch;
use crate::caps::Capabilities;
use crate::channel::{Channel, Io, RingRx};
use crate::channel_setup::{attach_ring, check_kind, configure_packet_socket, join_fanout_group};
use crate::dispatch::Readers;
use crate::link::{MAX_IP_PACKET, MacAddr, ethernet};
use crate::options::{
    ChannelSource, ClosedCallback, DispatchMode, MAX_BATCH_SIZE, Options, OptionsError,
};
use crate::send::{OutPacket, SendOutcome};
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
    /// The device is gone: the TUN/TAP was deleted (or its queue detached),
    /// or the interface an `AF_PACKET` socket was bound to.
    DeviceRemoved,
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
            CloseReason::DeviceRemoved => f.write_str("the device was removed"),
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
    pub(crate) gso_max_size: u32,
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
        if o.gso_max_size != 0 && !(o.mtu..=MAX_IP_PACKET as u32).contains(&o.gso_max_size) {
            return Err(OptionsError::InvalidGsoMaxSize {
                size: o.gso_max_size,
                mtu: o.mtu,
            });
        }
        let link_len = if o.ethernet { ethernet::HEADER_LEN } else { 0 };
        let min_frame = o.vnet_header_len + link_len + o.mtu as usize;
        if let Some(size) = o.receive_buffer_size
            && size < min_frame
        {
            return Err(OptionsError::ReceiveBufferTooSmall {
                size,
                needed: min_frame,
            });
        }

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
            let channel =
                Channel::new(io, o.batch_size).map_err(|source| OptionsError::Descriptor {
                    channel: index,
                    source,
                })?;
            channels.push(channel);
        }
        // Super-packets arrive where frames carry virtio headers, and on
        // AF_PACKET sockets even without: a tap sees the kernel's GSO and
        // GRO frames whole, which only a virtio header would describe.
        let largest_packet =
            if o.vnet_header_len > 0 || channels.iter().any(Channel::is_packet_socket) {
                MAX_IP_PACKET
            } else {
                o.mtu as usize
            };
        let max_frame = o
            .receive_buffer_size
            .unwrap_or(o.vnet_header_len + link_len + largest_packet);
        for (index, channel) in channels.iter_mut().enumerate() {
            if channel.is_packet_socket()
                && let Some(fd) = channel.fd()
            {
                configure_packet_socket(fd, o.vnet_header_len, o.batch_size * max_frame).map_err(
                    |source| OptionsError::Descriptor {
                        channel: index,
                        source,
                    },
                )?;
            }
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
        }
        join_fanout_group(&channels)?;

        let caps = Capabilities::empty()
            .with(Capabilities::RESOLUTION_REQUIRED, o.ethernet)
            .with(
                Capabilities::GSO,
                o.vnet_header_len > 0 && o.gso_max_size > o.mtu,
            );

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
                    gso_max_size: o.gso_max_size,
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

    /// The largest super-packet (IP packet) written: see
    /// [`Options::gso_max_size`]. 0 when super-packets are off.
    pub fn gso_max_size(&self) -> u32 {
        self.shared.config.gso_max_size
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
    ///
    /// On `AF_PACKET` channels this also collects the frames the kernel
    /// dropped before they could be read
    /// ([`StatsSnapshot::kernel_drops`], one `getsockopt` per channel).
    pub fn stats(&self) -> StatsSnapshot {
        for channel in self.shared.channels.iter().filter(|c| c.is_packet_socket()) {
            if let Some(fd) = channel.fd()
                && let Ok(kernel) = fdlink_sys::packet::packet_stats(fd)
            {
                self.shared.stats.kernel_dropped(u64::from(kernel.drops));
            }
        }
        self.shared.stats.snapshot()
    }

    /// Counts packets a layer above (offloads) dropped before they reached
    /// [`Endpoint::send`], so one set of counters tells every drop.
    ///
    /// Only outbound reasons are counted: a receive drop must come from the
    /// check of [`Endpoint::recv_batch_checked`], or `frames_read` and the
    /// drops would no longer add up. An inbound `reason` is ignored.
    pub fn count_send_drops(&self, reason: DropReason, packets: u64) {
        debug_assert!(!reason.is_inbound(), "{reason} is not a send drop");
        if !reason.is_inbound() {
            self.shared.stats.drop(reason, packets);
        }
    }

    /// Why the endpoint closed, once a channel has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.close_reason()
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
    /// [`Closed`] once every channel has closed and everything queued
    /// before the closure has been received.
    pub fn recv_batch(&self, batch: &mut Batch) -> Result<usize, Closed> {
        self.recv_batch_checked(None, batch, |_, _| Ok(()))
    }

    /// [`Endpoint::recv_batch`] on one channel only: for one stack per
    /// queue.
    ///
    /// # Errors
    /// [`Closed`] once that channel has closed and everything queued on it
    /// has been received.
    ///
    /// # Panics
    /// When `queue` is not below [`Endpoint::channel_count`].
    pub fn recv_batch_from(&self, queue: usize, batch: &mut Batch) -> Result<usize, Closed> {
        self.recv_batch_checked(Some(queue), batch, |_, _| Ok(()))
    }

    /// [`Endpoint::recv_batch`] (`queue` `None`) or
    /// [`Endpoint::recv_batch_from`] with a check of its own on each frame
    /// that passed the link's checks, before it counts as delivered: for a
    /// layer above (offloads) whose verdict must be part of the same
    /// statistics. `check(batch, i)` sees packet `i` (and may change its
    /// bytes through [`Batch::frame_mut`]); an `Err` names the inbound
    /// [`DropReason`] it is dropped for, and it leaves the batch. So
    /// `frames_read == rx_packets + inbound drops` holds with the check's
    /// drops included.
    ///
    /// # Errors
    /// [`Closed`] as for the two methods above.
    ///
    /// # Panics
    /// When `queue` is not below [`Endpoint::channel_count`].
    pub fn recv_batch_checked(
        &self,
        queue: Option<usize>,
        batch: &mut Batch,
        mut check: impl FnMut(&mut Batch, usize) -> Result<(), DropReason>,
    ) -> Result<usize, Closed> {
        batch.clear();
        match queue {
            Some(q) => {
                self.shared.fill(q, batch, &mut check);
            }
            None => {
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
                    self.shared.fill((start + k) % n, batch, &mut check);
                }
            }
        }
        if batch.is_empty() {
            self.shared.check_open(queue)?;
        }
        Ok(batch.len())
    }

    /// Blocks until some channel may have input, or `timeout` passes
    /// (`None`: no limit). Returns whether input may be ready.
    ///
    /// For a poll loop: wait here with the stack's next deadline, then
    /// [`Endpoint::recv_batch`]. A closed endpoint never looks idle or
    /// ready: the wait returns at once. Readiness is level-triggered: a
    /// wait after input was left unread returns at once.
    ///
    /// # Errors
    /// [`Closed`] once every channel has closed (at once, whatever the
    /// timeout). A wait that fails (the `ppoll` call, or a packet object's
    /// wait) closes the channels it waited on with that error.
    pub fn wait_readable(&self, timeout: Option<Duration>) -> Result<bool, Closed> {
        self.shared.wait_readable(None, timeout)
    }

    /// [`Endpoint::wait_readable`] on one channel.
    ///
    /// # Errors
    /// [`Closed`] once that channel has closed.
    ///
    /// # Panics
    /// When `queue` is not below [`Endpoint::channel_count`].
    pub fn wait_readable_on(
        &self,
        queue: usize,
        timeout: Option<Duration>,
    ) -> Result<bool, Closed> {
        assert!(queue < self.channel_count(), "no queue {queue}");
        self.shared.wait_readable(Some(queue), timeout)
    }

    /// Sends packets, each on the channel its flow hash picks. Returns what
    /// was sent and dropped; drops are also counted by reason.
    ///
    /// Sockets take a batch per `sendmmsg`; TUN/TAP a `writev` per packet.
    /// When a send buffer is full the send waits for room up to the send
    /// timeout, then counts the rest as [`DropReason::SendBufferFull`].
    pub fn send(&self, packets: &[OutPacket<'_>]) -> SendOutcome {
        self.send_with(None, packets, |_, _| false)
    }

    /// Sends every packet on channel `queue`, whatever its hash: for one
    /// stack per queue.
    ///
    /// # Panics
    /// When `queue` is not below [`Endpoint::channel_count`].
    pub fn send_on(&self, queue: usize, packets: &[OutPacket<'_>]) -> SendOutcome {
        self.send_with(Some(queue), packets, |_, _| false)
    }

    /// [`Endpoint::send`] (`queue` `None`) or [`Endpoint::send_on`], telling
    /// `refused(i, error)` of each packet the kernel refused (`packets[i]`,
    /// with the write's error). When it returns `true` the caller takes the
    /// packet back — it is in neither `sent` nor `dropped`, nor in the
    /// statistics, and the caller accounts for it (an offload layer that
    /// sends it again another way); otherwise it is counted as
    /// [`DropReason::SendError`] as usual.
    ///
    /// # Panics
    /// When `queue` is not below [`Endpoint::channel_count`].
    pub fn send_with(
        &self,
        queue: Option<usize>,
        packets: &[OutPacket<'_>],
        mut refused: impl FnMut(usize, &io::Error) -> bool,
    ) -> SendOutcome {
        let n = self.shared.channels.len();
        match queue {
            Some(q) => self.shared.send_on(q, packets, |_| true, &mut refused),
            None if n == 1 => self.shared.send_on(0, packets, |_| true, &mut refused),
            None => {
                let mut total = SendOutcome::default();
                for q in 0..n {
                    let out = self.shared.send_on(
                        q,
                        packets,
                        |p| p.hash.map_or(0, |h| h as usize % n) == q,
                        &mut refused,
                    );
                    total.sent += out.sent;
                    total.dropped += out.dropped;
                }
                total
            }
        }
    }

    /// Counts a switch from a kernel offload to software after the kernel
    /// refused it at run time ([`StatsSnapshot::offload_fallbacks`]), for
    /// an offload layer above.
    pub fn count_offload_fallback(&self) {
        self.shared.stats.offload_fallback();
    }
}

impl Shared {
    pub(crate) fn new_batch(&self) -> Batch {
        Batch::new(self.config.batch_size, self.config.max_frame + 1)
    }

    pub(crate) fn is_alive(&self, q: usize) -> bool {
        self.alive[q].load(Ordering::Acquire)
    }

    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        self.close_reason.get().cloned()
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
        // Wake whoever sleeps on the channel. A failed signal can only mean
        // the counter is saturated, which leaves it signalled anyway.
        let _ = self.channels[q].closed_event.signal();
        if self.close_reason.set(reason.clone()).is_ok() {
            let callback = self.closed_callback.lock().expect("callback lock").take();
            if let Some(callback) = callback {
                callback(reason);
            }
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.detach();
    }
}
