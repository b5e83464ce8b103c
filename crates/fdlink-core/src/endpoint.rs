//! The endpoint: the public API over the shared state. Construction lives
//! in `setup.rs`, the receive and send paths in `receive.rs` and
//! `send.rs`, the push readers in `dispatch.rs`.

use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;

use fdlink_sys::netlink::LinkWatch;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::batch::Batch;
use crate::caps::{Capabilities, DeviceOffloads};
use crate::closure::{CloseReason, Closed};
use crate::dispatch::{Dispatcher, Readers, join_quietly};
use crate::follow::Follower;
use crate::link::MacAddr;
use crate::options::{Options, OptionsError};
use crate::send::{OutPacket, SendOutcome};
use crate::setup;
use crate::shared::Shared;
use crate::stats::{DropReason, StatsSnapshot};

/// A link endpoint over one or more boundary-preserving packet channels.
///
/// Receive either by pulling ([`Endpoint::recv_batch`], non-blocking, for
/// single-threaded stacks that poll) or by pushing ([`Endpoint::attach`]:
/// one reader thread per channel hands batches to a [`crate::Dispatcher`]);
/// use one or the other. Send with [`Endpoint::send`] from any thread.
pub struct Endpoint {
    shared: Arc<Shared>,
    readers: Mutex<Option<Readers>>,
    /// Follows the device's own changes ([`crate::Link::follow_device`]).
    follower: Mutex<Option<Follower>>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("channels", &self.shared.channel_count())
            .field("config", self.shared.config())
            .field("caps", &self.shared.caps())
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Builds an endpoint from descriptors or packet objects you opened
    /// yourself, checking the options as a whole ([`crate::Link`] opens
    /// devices for you).
    ///
    /// Every descriptor is made non-blocking.
    ///
    /// ```
    /// use fdlink_core::{Endpoint, Options, OptionsError};
    /// use fdlink_sys::fd::{socketpair, SocketType};
    ///
    /// let (a, _b) = socketpair(SocketType::SeqPacket)?;
    /// let endpoint = Endpoint::new(Options::new().fd(a).mtu(9000).ethernet(true))?;
    /// assert_eq!((endpoint.mtu(), endpoint.max_header_length()), (9000, 14));
    ///
    /// // Options that cannot work are a typed error.
    /// let (c, _d) = socketpair(SocketType::SeqPacket)?;
    /// let err = Endpoint::new(Options::new().fd(c).mtu(0)).unwrap_err();
    /// assert!(matches!(err, OptionsError::InvalidMtu(0)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// An [`OptionsError`] naming the first problem: no channel, an MTU or
    /// batch size out of range, a link address without Ethernet or a
    /// multicast one, a virtio header length other than 0/10/12, a receive
    /// buffer too small, a stream socket, `recvmmsg` on a non-socket, `mmap`
    /// on anything but an `AF_PACKET` socket, a device whose virtio-net
    /// header or framing differs from the options (asked of the kernel, so a
    /// TUN opened with `IFF_VNET_HDR` under options without a header is
    /// refused here rather than every frame dropped), or a descriptor that
    /// cannot be inspected or configured (the mmap ring, the fanout group).
    ///
    /// Several `AF_PACKET` sockets are joined into one hash fanout group
    /// here (see [`Options::fds`]); with [`crate::DispatchMode::Mmap`] each socket
    /// gets its receive ring here.
    pub fn new(options: Options) -> Result<Self, OptionsError> {
        let parts = setup::build(options)?;
        Ok(Endpoint {
            shared: Arc::new(Shared::new(
                parts.channels,
                parts.config,
                parts.caps,
                parts.closed,
            )),
            readers: Mutex::new(None),
            follower: Mutex::new(None),
        })
    }

    /// Starts following `watch`'s device (see [`crate::Link::follow_device`]).
    pub(crate) fn follow(&self, watch: LinkWatch) -> io::Result<()> {
        let follow_mac = self.shared.channels().iter().any(|c| c.is_packet_socket());
        let follower = Follower::start(Arc::clone(&self.shared), watch, follow_mac)?;
        *self.follower.lock().unwrap_or_else(|e| e.into_inner()) = Some(follower);
        Ok(())
    }

    /// The descriptor of queue `queue`, for an event loop to watch (a tokio
    /// `AsyncFd`, a mio registration): readable means [`Endpoint::recv_batch_from`]
    /// may find packets. `None` for a packet object, which has no descriptor.
    ///
    /// The descriptor stays the endpoint's: register it, never close it,
    /// and keep it non-blocking. Readiness is the kernel's, level-triggered:
    /// after a receive that left nothing (0 packets), clear the event loop's
    /// readiness and wait again.
    ///
    /// ```
    /// use std::os::fd::AsFd;
    /// use fdlink_core::Link;
    /// use fdlink_sys::fd::{socketpair, SocketType};
    /// use tokio::io::unix::AsyncFd;
    ///
    /// let (ours, peer) = socketpair(SocketType::SeqPacket)?;
    /// let endpoint = Link::socket(ours).open()?;
    /// let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    /// let received = runtime.block_on(async {
    ///     let fd = AsyncFd::new(endpoint.queue_fd(0).expect("a socket"))?;
    ///     // The peer sends later; the task sleeps until then.
    ///     let sender = std::thread::spawn(move || {
    ///         let mut packet = [0u8; 40];
    ///         packet[0] = 0x45;
    ///         fdlink_sys::io::write(peer.as_fd(), &packet).map(|_| peer)
    ///     });
    ///     let mut batch = endpoint.new_batch();
    ///     loop {
    ///         let mut ready = fd.readable().await?;
    ///         match endpoint.recv_batch_from(0, &mut batch)? {
    ///             0 => ready.clear_ready(),
    ///             n => {
    ///                 sender.join().expect("sender")?;
    ///                 return Ok::<usize, Box<dyn std::error::Error>>(n);
    ///             }
    ///         }
    ///     }
    /// })?;
    /// assert_eq!(received, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Panics
    /// When `queue` is not below [`Endpoint::channel_count`].
    pub fn queue_fd(&self, queue: usize) -> Option<BorrowedFd<'_>> {
        self.shared.channel(queue).fd()
    }

    /// What the device took of the offloads (see [`Options::device_offloads`]).
    pub fn device_offloads(&self) -> DeviceOffloads {
        self.shared.config().device_offloads
    }

    /// The MTU: the largest network-layer packet.
    pub fn mtu(&self) -> u32 {
        self.shared.config().mtu()
    }

    /// Bytes the endpoint puts in front of each network packet: the
    /// Ethernet header (14, or 0 for IP framing) plus the virtio-net header.
    pub fn max_header_length(&self) -> usize {
        let config = self.shared.config();
        config.link_len() + config.vnet_len
    }

    /// The largest super-packet (IP packet) written: see
    /// [`Options::gso_max_size`]. 0 when super-packets are off.
    pub fn gso_max_size(&self) -> u32 {
        self.shared.config().gso_max_size
    }

    /// Changes the MTU while the endpoint runs (gVisor's `SetMTU`): sends
    /// are bounded by the new value at once, and receive buffers follow a
    /// raise — a batch grows its buffers on its next receive — so a frame of
    /// the new size is taken whole, not counted as truncated. Frames the
    /// device queued before the change arrive as they are: after a lowering
    /// the buffers keep their size ([`Endpoint::max_frame_size`] never
    /// shrinks).
    ///
    /// Buffers the caller fixed ([`Options::receive_buffer_size`]) do not
    /// follow; on `AF_PACKET` channels and with virtio headers they hold a
    /// 64 KiB super-packet already.
    ///
    /// # Errors
    /// [`OptionsError::InvalidMtu`] outside 1..=65535;
    /// [`OptionsError::ReceiveBufferTooSmall`] when fixed receive buffers
    /// cannot hold a frame of the new MTU.
    pub fn set_mtu(&self, mtu: u32) -> Result<(), OptionsError> {
        setup::set_mtu(&self.shared, mtu)
    }

    /// Changes the endpoint's MAC address while it runs (gVisor's
    /// `SetLinkAddress`): the default source of frames sent from now on and
    /// the unicast destination accepted on receive.
    ///
    /// # Errors
    /// [`OptionsError::LinkAddressWithoutEthernet`] with IP framing;
    /// [`OptionsError::MulticastLinkAddress`] for a group address.
    pub fn set_link_address(&self, mac: MacAddr) -> Result<(), OptionsError> {
        let config = self.shared.config();
        if !config.ethernet {
            return Err(OptionsError::LinkAddressWithoutEthernet);
        }
        if mac.is_multicast() {
            return Err(OptionsError::MulticastLinkAddress(mac));
        }
        config.set_link_address(Some(mac));
        Ok(())
    }

    /// The endpoint's MAC address (Ethernet framing only).
    pub fn link_address(&self) -> Option<MacAddr> {
        self.shared.config().link_address()
    }

    /// True with Ethernet framing.
    pub fn is_ethernet(&self) -> bool {
        self.shared.config().ethernet
    }

    /// The virtio-net header length every frame carries (0: none).
    pub fn vnet_header_len(&self) -> usize {
        self.shared.config().vnet_len
    }

    /// The capabilities computed from the options.
    pub fn capabilities(&self) -> Capabilities {
        self.shared.caps()
    }

    /// Number of channels (queues).
    pub fn channel_count(&self) -> usize {
        self.shared.channel_count()
    }

    /// The largest frame a receive buffer takes (virtio and link headers
    /// included).
    pub fn max_frame_size(&self) -> usize {
        self.shared.config().max_frame()
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
        for channel in self
            .shared
            .channels()
            .iter()
            .filter(|c| c.is_packet_socket())
        {
            if let Some(fd) = channel.fd()
                && let Ok(kernel) = fdlink_sys::packet::packet_stats(fd)
            {
                self.shared.stats().kernel_dropped(u64::from(kernel.drops));
            }
        }
        self.shared.stats().snapshot()
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
            self.shared.stats().drop(reason, packets);
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
        batch.fit_buffers(self.shared.config().max_frame() + 1);
        match queue {
            Some(q) => {
                self.shared.fill(q, batch, &mut check);
            }
            None => {
                let n = self.shared.channel_count();
                let start = self.shared.next_rx_start();
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
    ///
    /// ```
    /// use fdlink_core::{DropReason, EtherType, Link, MacAddr, OutPacket};
    /// use fdlink_sys::fd::{socketpair, SocketType};
    ///
    /// let (ours, _peer) = socketpair(SocketType::SeqPacket)?;
    /// let own = MacAddr([2, 0, 0, 0, 0, 1]);
    /// let endpoint = Link::socket(ours).ethernet(true).mac(own).open()?;
    /// let ip = [0x45u8; 40];
    /// let peer_mac = MacAddr([2, 0, 0, 0, 0, 2]);
    /// let out = endpoint.send(&[
    ///     // An Ethernet header from `own` to `peer_mac` goes in front.
    ///     OutPacket::ip(&ip).to(peer_mac),
    ///     OutPacket::new(EtherType::ARP, &[0u8; 28]),
    ///     OutPacket::ip(&[0u8; 70_000]), // larger than the MTU
    /// ]);
    /// assert_eq!((out.sent, out.dropped), (2, 1));
    /// assert_eq!(endpoint.stats().drops.get(DropReason::Oversized), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
        let n = self.shared.channel_count();
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
        self.shared.stats().offload_fallback();
    }
}

impl Endpoint {
    /// Starts one reader thread per open channel, each delivering batches to
    /// `dispatcher` until [`Endpoint::detach`] or its channel closes.
    ///
    /// Attaching while attached does nothing; attaching after a detach
    /// starts fresh readers.
    ///
    /// ```
    /// use std::os::fd::AsFd;
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use fdlink_core::{Batch, Link};
    /// use fdlink_sys::fd::{socketpair, SocketType};
    ///
    /// let (ours, peer) = socketpair(SocketType::SeqPacket)?;
    /// let endpoint = Link::socket(ours).open()?;
    /// let seen = Arc::new(AtomicUsize::new(0));
    /// let counter = Arc::clone(&seen);
    /// endpoint.attach(Arc::new(move |_queue: usize, batch: &mut Batch| {
    ///     counter.fetch_add(batch.len(), Ordering::Relaxed);
    /// }))?;
    /// let mut packet = [0u8; 40];
    /// packet[0] = 0x45;
    /// for _ in 0..3 {
    ///     fdlink_sys::io::write(peer.as_fd(), &packet)?;
    /// }
    /// drop(peer); // the reader reads everything, then sees the closure
    /// endpoint.wait();
    /// assert_eq!(seen.load(Ordering::Relaxed), 3);
    /// assert!(endpoint.is_closed());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// Creating the stop event or a thread failed; nothing is left running.
    pub fn attach(&self, dispatcher: Arc<dyn Dispatcher>) -> std::io::Result<()> {
        let mut readers = self.readers.lock().expect("readers lock");
        if readers.is_some() {
            return Ok(());
        }
        *readers = Some(Readers::start(&self.shared, dispatcher)?);
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
            readers.stop();
        }
    }

    /// Blocks until every reader has ended (its channel closed, or a detach
    /// from another thread). Returns at once when not attached.
    pub fn wait(&self) {
        let (stop, handles) = {
            let mut readers = self.readers.lock().expect("readers lock");
            match readers.as_mut() {
                Some(r) => r.take_handles(),
                None => return,
            }
        };
        handles.into_iter().for_each(join_quietly);
        let mut readers = self.readers.lock().expect("readers lock");
        if readers.as_ref().is_some_and(|r| r.stopped_by(&stop)) {
            *readers = None;
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.detach();
    }
}
