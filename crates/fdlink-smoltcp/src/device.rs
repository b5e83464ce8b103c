//! [`FdlinkDevice`]: a smoltcp `phy::Device` over an offloading endpoint.

use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use fdlink_core::link::ethernet;
use fdlink_core::{CloseReason, Closed, Endpoint, Link, OpenError, SendOutcome};
use fdlink_gso::offload::{GsoKinds, OffloadConfig, OffloadEndpoint, Receiver, Sender};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium, PacketMeta};
use smoltcp::time::Instant;

/// The default [`DeviceConfig::busy_poll`]. Measured on a 2-vCPU VM, a
/// kernel TCP stream into smoltcp over a TSO TUN went from 12.0 to 18.5
/// Gbit/s with unbounded busy polling; 50 µs covers the gap between
/// consecutive super-packets of a stream.
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(50);

/// How the device uses the link's offloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceConfig {
    /// Let smoltcp hand over TCP super-packets of up to 64 KiB, segmented
    /// by the kernel (virtio headers) or in software: fewer, larger packets.
    pub gso: bool,
    /// Hand received super-packets to smoltcp whole (it accepts them)
    /// instead of splitting them at the MTU.
    pub accept_large: bool,
    /// Verify TCP/UDP checksums of received packets the kernel did not
    /// vouch for. Turn off only for a link whose peer is trusted.
    pub verify_rx_checksums: bool,
    /// Packets per batch on the transmit side.
    pub tx_batch: usize,
    /// Before [`FdlinkDevice::wait`] sleeps, it checks for input this long
    /// without sleeping. In a stream the next packet is usually microseconds
    /// away, and a sleep and wake-up costs more than that; once the link is
    /// idle the device sleeps as usual, so the cost is at most this much
    /// CPU per idle period. Zero turns it off.
    pub busy_poll: Duration,
    /// The segmentation kinds the kernel takes whole on send, where the
    /// link carries virtio headers (see
    /// [`fdlink_gso::offload::OffloadConfig::host_gso`]); the others are
    /// segmented in software. Default: all.
    pub host_gso: GsoKinds,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            gso: true,
            accept_large: true,
            verify_rx_checksums: true,
            tx_batch: 64,
            busy_poll: DEFAULT_BUSY_POLL,
            host_gso: GsoKinds::ALL,
        }
    }
}

impl DeviceConfig {
    /// Sets [`DeviceConfig::gso`].
    pub fn gso(mut self, on: bool) -> Self {
        self.gso = on;
        self
    }

    /// Sets [`DeviceConfig::accept_large`].
    pub fn accept_large(mut self, on: bool) -> Self {
        self.accept_large = on;
        self
    }

    /// Sets [`DeviceConfig::verify_rx_checksums`].
    pub fn verify_rx_checksums(mut self, on: bool) -> Self {
        self.verify_rx_checksums = on;
        self
    }

    /// Sets [`DeviceConfig::busy_poll`].
    pub fn busy_poll(mut self, spin: Duration) -> Self {
        self.busy_poll = spin;
        self
    }

    /// Sets [`DeviceConfig::host_gso`].
    pub fn host_gso(mut self, kinds: GsoKinds) -> Self {
        self.host_gso = kinds;
        self
    }

    /// Sets [`DeviceConfig::tx_batch`].
    pub fn tx_batch(mut self, n: usize) -> Self {
        self.tx_batch = n.max(1);
        self
    }
}

/// A smoltcp device over an fdlink endpoint.
///
/// `receive` serves packets from a batch filled by one burst of reads;
/// transmit tokens write into pooled buffers that [`FdlinkDevice::flush`]
/// (or [`crate::poll`]) sends as one batch. Nothing is allocated per packet.
#[derive(Debug)]
pub struct FdlinkDevice {
    link: Arc<OffloadEndpoint>,
    queue: Option<usize>,
    rx: Receiver,
    tx: Sender,
    /// Advertise smoltcp's TCP segmentation offload ([`DeviceConfig::gso`]).
    gso: bool,
    busy_poll: Duration,
    /// Set once the link (this device's queue) has closed and everything
    /// queued before the closure was handed to smoltcp.
    closed: Option<CloseReason>,
    /// The MTU the interface [`crate::poll`] drives was made with.
    interface_mtu: Option<u32>,
    /// Receives happen only through [`FdlinkDevice::fetch`], so whoever
    /// drives the device sees every packet before smoltcp does (the
    /// netstack).
    manual_receive: bool,
    /// Frames handed back to smoltcp ([`FdlinkDevice::inject`]), served
    /// before the received ones, and the buffers of served ones for reuse.
    injected: VecDeque<Vec<u8>>,
    /// Frames handed to smoltcp after the received ones
    /// ([`FdlinkDevice::inject_after`]).
    trailing: VecDeque<Vec<u8>>,
    spare: Vec<Vec<u8>>,
    /// The injected frame smoltcp is reading now.
    serving: Vec<u8>,
}

impl FdlinkDevice {
    /// Opens `link` ([`Link::open`]) and makes a device over all its
    /// queues: one call from a device's name to a smoltcp device.
    ///
    /// ```no_run
    /// use fdlink_core::{Link, Offload};
    /// use fdlink_smoltcp::{DeviceConfig, FdlinkDevice};
    ///
    /// let device = FdlinkDevice::open(
    ///     Link::tun("tun0").offload(Offload::Auto),
    ///     DeviceConfig::default(),
    /// )?;
    /// # Ok::<(), fdlink_core::OpenError>(())
    /// ```
    ///
    /// # Errors
    /// What [`Link::open`] returns.
    pub fn open(link: Link, config: DeviceConfig) -> Result<Self, OpenError> {
        Ok(Self::new(link.open()?, config))
    }

    /// Opens `link` and makes one device per queue
    /// ([`FdlinkDevice::per_queue`]).
    ///
    /// # Errors
    /// What [`Link::open`] returns.
    pub fn open_per_queue(link: Link, config: DeviceConfig) -> Result<Vec<Self>, OpenError> {
        Ok(Self::per_queue(link.open()?, config))
    }

    /// A device over every channel of `endpoint`.
    pub fn new(endpoint: Endpoint, config: DeviceConfig) -> Self {
        let link = Arc::new(Self::offload(endpoint, config));
        Self::build(link, None, config)
    }

    /// One device per channel, sharing the endpoint: run one smoltcp stack
    /// per queue, each on its own thread, with the same addresses. The
    /// kernel's flow hash (multi-queue TUN, AF_PACKET fanout) keeps each
    /// connection on one queue.
    pub fn per_queue(endpoint: Endpoint, config: DeviceConfig) -> Vec<Self> {
        let queues = endpoint.channel_count();
        let link = Arc::new(Self::offload(endpoint, config));
        (0..queues)
            .map(|q| Self::build(Arc::clone(&link), Some(q), config))
            .collect()
    }

    fn offload(endpoint: Endpoint, config: DeviceConfig) -> OffloadEndpoint {
        let offload = OffloadConfig::default()
            .accept_large(config.accept_large)
            // smoltcp is told not to verify TCP checksums: a partial
            // checksum from the local kernel need not be completed.
            .complete_partial(false)
            .verify_rx(config.verify_rx_checksums)
            .fill_tcp_checksums(true)
            .host_gso(config.host_gso);
        OffloadEndpoint::new(endpoint, offload)
    }

    fn build(link: Arc<OffloadEndpoint>, queue: Option<usize>, config: DeviceConfig) -> Self {
        let endpoint = link.endpoint();
        let mtu = endpoint.mtu() as usize;
        let gso_max = endpoint.gso_max_size() as usize;
        let max_packet = if config.gso && gso_max > mtu {
            gso_max
        } else {
            mtu
        };
        let rx = link.receiver();
        let tx = link.sender(config.tx_batch, max_packet);
        FdlinkDevice {
            link,
            queue,
            rx,
            tx,
            gso: config.gso,
            busy_poll: config.busy_poll,
            closed: None,
            interface_mtu: None,
            manual_receive: false,
            injected: VecDeque::new(),
            trailing: VecDeque::new(),
            spare: Vec::new(),
            serving: Vec::new(),
        }
    }

    /// The capabilities for the link's MTU now: smoltcp's rule (an Ethernet
    /// MTU includes the 14-byte header), checksums left to the link, and
    /// TCP segmentation offload up to the endpoint's largest super-packet.
    fn capabilities_now(&self) -> DeviceCapabilities {
        let endpoint = self.endpoint();
        let ethernet = endpoint.is_ethernet();
        let link_len = if ethernet { ethernet::HEADER_LEN } else { 0 };
        let mut caps = DeviceCapabilities::default();
        caps.medium = if ethernet {
            Medium::Ethernet
        } else {
            Medium::Ip
        };
        let mtu = endpoint.mtu() as usize;
        caps.max_transmission_unit = mtu + link_len;
        caps.max_burst_size = None;
        caps.checksum = checksum_caps();
        let gso_max = endpoint.gso_max_size() as usize;
        if self.gso && gso_max > mtu {
            caps.segmentation.tcpv4 = NonZeroUsize::new(gso_max + link_len);
            // Not for IPv6: smoltcp 0.14 lets IPv6 TCP segments grow to the
            // offload size but then drops every IPv6 packet above the MTU
            // on send (it checks segmentation for IPv4 only). Received
            // IPv6 super-packets are still handed over whole.
        }
        caps
    }

    /// Whether the link's MTU changed since the interface polled through
    /// [`crate::poll`] was made: smoltcp reads a device's capabilities
    /// once, when an interface is made, so [`crate::poll`] then makes it
    /// again. The first call records the MTU the interface was made with.
    pub(crate) fn interface_mtu_stale(&mut self) -> bool {
        let now = self.endpoint().mtu();
        match self.interface_mtu {
            Some(mtu) if mtu != now => true,
            Some(_) => false,
            None => {
                self.interface_mtu = Some(now);
                false
            }
        }
    }

    /// Records that the interface was made again with the link's MTU now.
    pub(crate) fn interface_rebuilt(&mut self) {
        self.interface_mtu = Some(self.endpoint().mtu());
    }

    /// The offloading endpoint underneath, shared by every device of
    /// [`FdlinkDevice::per_queue`].
    pub(crate) fn shared_link(&self) -> Arc<OffloadEndpoint> {
        Arc::clone(&self.link)
    }

    /// The frames queued for the next flush (smoltcp's and
    /// [`FdlinkDevice::transmit_frame`]'s), offloads not applied yet.
    pub(crate) fn queued_frames(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.tx.frames()
    }

    /// The endpoint underneath.
    pub fn endpoint(&self) -> &Endpoint {
        self.link.endpoint()
    }

    /// The queue this device serves, when it serves one.
    pub fn queue(&self) -> Option<usize> {
        self.queue
    }

    /// Sends what transmit tokens queued, as one batch.
    pub fn flush(&mut self) -> SendOutcome {
        self.link.flush(&mut self.tx, self.queue)
    }

    /// Why the link closed, once it has and everything it delivered before
    /// the closure went to smoltcp (see [`FdlinkDevice::check_open`]).
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.closed.clone()
    }

    /// `Err` once the link has closed and everything queued before the
    /// closure was handed to smoltcp: for a poll loop, which must end then
    /// (smoltcp's `receive` can only say "nothing", so the device keeps
    /// the closure for the loop to ask here; [`crate::poll`] does).
    ///
    /// # Errors
    /// [`Closed`] with the link's [`CloseReason`].
    pub fn check_open(&self) -> Result<(), Closed> {
        match &self.closed {
            Some(reason) => Err(Closed(reason.clone())),
            None => Ok(()),
        }
    }

    /// Blocks until the device may have input, or `timeout` passes
    /// (`None`: no limit). Checks without sleeping for up to
    /// [`DeviceConfig::busy_poll`] first.
    ///
    /// # Errors
    /// [`Closed`] at once, whatever the timeout, when the link has closed:
    /// a dead link never looks idle.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<bool, Closed> {
        if !self.rx.is_empty() || !self.injected.is_empty() || !self.trailing.is_empty() {
            return Ok(true);
        }
        self.check_open()?;
        let spin = timeout.map_or(self.busy_poll, |t| t.min(self.busy_poll));
        if !spin.is_zero() {
            let until = std::time::Instant::now() + spin;
            loop {
                if self.wait_link(Some(Duration::ZERO))? {
                    return Ok(true);
                }
                if std::time::Instant::now() >= until {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        self.wait_link(timeout.map(|t| t.saturating_sub(spin)))
    }

    fn wait_link(&mut self, timeout: Option<Duration>) -> Result<bool, Closed> {
        let waited = match self.queue {
            Some(q) => self.endpoint().wait_readable_on(q, timeout),
            None => self.endpoint().wait_readable(timeout),
        };
        waited.inspect_err(|Closed(reason)| self.closed = Some(reason.clone()))
    }
}

/// Driving the device by hand, for a layer that must see every packet
/// before smoltcp does (the netstack): receive, inspect, hand packets back.
impl FdlinkDevice {
    /// From now on the device receives only in [`FdlinkDevice::fetch`]:
    /// smoltcp's polls get the packets fetched (and not removed) and the
    /// injected ones, never new ones behind the driver's back.
    pub(crate) fn set_manual_receive(&mut self, on: bool) {
        self.manual_receive = on;
    }

    /// Receives what the link has queued, without blocking, when no
    /// received packet is pending; returns how many are pending.
    ///
    /// # Errors
    /// [`Closed`] once the link has closed and everything was received.
    pub(crate) fn fetch(&mut self) -> Result<usize, Closed> {
        if self.rx.is_empty()
            && self.closed.is_none()
            && let Err(Closed(reason)) = self.link.recv(&mut self.rx, self.queue)
        {
            self.closed = Some(reason);
        }
        if self.rx.is_empty() {
            self.check_open()?;
        }
        Ok(self.rx.len())
    }

    /// Keeps the pending received packets (link frames) for which `keep`
    /// returns true; the others were handled by the caller.
    pub(crate) fn retain_pending(&mut self, mut keep: impl FnMut(&[u8]) -> bool) {
        self.rx.retain(|p| keep(p.frame));
    }

    /// Hands `frame` to smoltcp's next poll, before any received packet (a
    /// packet held back and released).
    pub(crate) fn inject(&mut self, frame: &[u8]) {
        let buf = self.spare_copy(frame);
        self.injected.push_back(buf);
    }

    /// Hands `frame` to smoltcp's next poll after every received packet
    /// pending now (a packet replaced in place keeps its order behind
    /// the ones before it).
    pub(crate) fn inject_after(&mut self, frame: &[u8]) {
        let buf = self.spare_copy(frame);
        self.trailing.push_back(buf);
    }

    fn spare_copy(&mut self, frame: &[u8]) -> Vec<u8> {
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(frame);
        buf
    }

    /// Queues a frame the caller builds (`len` bytes, written by `fill`)
    /// for the next flush, as smoltcp's own frames are.
    pub(crate) fn transmit_frame(&mut self, len: usize, fill: impl FnOnce(&mut [u8])) {
        if self.tx.is_full() {
            self.link.flush(&mut self.tx, self.queue);
        }
        fill(self.tx.next_buffer(len));
        self.tx.commit(len, None, None);
    }
}

/// TCP checksums are the link's in both directions (filled on send,
/// verified or vouched for by the kernel on receive); UDP's are verified on
/// receive by the link and computed by smoltcp on send; ICMP and the IPv4
/// header stay with smoltcp.
fn checksum_caps() -> ChecksumCapabilities {
    let mut c = ChecksumCapabilities::default();
    c.ipv4 = Checksum::Both;
    c.tcp = Checksum::None;
    c.udp = Checksum::Tx;
    c.icmpv4 = Checksum::Both;
    c.icmpv6 = Checksum::Both;
    c
}

/// A received packet handed to smoltcp.
#[derive(Debug)]
pub struct RxToken<'a> {
    frame: &'a [u8],
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.frame)
    }
}

/// Room for one packet in the device's transmit batch.
#[derive(Debug)]
pub struct TxToken<'a> {
    link: &'a OffloadEndpoint,
    tx: &'a mut Sender,
    queue: Option<usize>,
    gso_size: Option<u16>,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        if self.tx.is_full() {
            self.link.flush(self.tx, self.queue);
        }
        let result = f(self.tx.next_buffer(len));
        self.tx.commit(len, self.gso_size, None);
        result
    }

    fn set_meta(&mut self, meta: PacketMeta) {
        self.gso_size = meta.segmentation_offload_size.map(|n| n.get());
    }
}

impl phy::Device for FdlinkDevice {
    type RxToken<'a>
        = RxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a>
    where
        Self: 'a;

    fn receive(&mut self, _timestamp: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let mut handed = self.injected.pop_front();
        if handed.is_none() {
            if self.rx.is_empty() && self.closed.is_none() && !self.manual_receive {
                // smoltcp can only hear "nothing" here: keep the closure
                // for the poll loop (check_open).
                if let Err(Closed(reason)) = self.link.recv(&mut self.rx, self.queue) {
                    self.closed = Some(reason);
                    return None;
                }
            }
            if let Some(packet) = self.rx.pop() {
                return Some((
                    RxToken {
                        frame: packet.frame,
                    },
                    TxToken {
                        link: &self.link,
                        tx: &mut self.tx,
                        queue: self.queue,
                        gso_size: None,
                    },
                ));
            }
            handed = self.trailing.pop_front();
        }
        let served = std::mem::replace(&mut self.serving, handed?);
        self.spare.push(served);
        Some((
            RxToken {
                frame: &self.serving,
            },
            TxToken {
                link: &self.link,
                tx: &mut self.tx,
                queue: self.queue,
                gso_size: None,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<TxToken<'_>> {
        Some(TxToken {
            link: &self.link,
            tx: &mut self.tx,
            queue: self.queue,
            gso_size: None,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.capabilities_now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fdlink_core::Options;
    use fdlink_sys::fd::{SocketType, socketpair};
    use smoltcp::phy::Device;

    #[test]
    fn the_device_can_move_to_its_stack_thread() {
        fn send<T: Send>(_: &T) {}
        let (a, _b) = socketpair(SocketType::SeqPacket).unwrap();
        let device = FdlinkDevice::new(
            Endpoint::new(Options::new().fd(a)).unwrap(),
            DeviceConfig::default(),
        );
        send(&device);
        std::thread::spawn(move || device.capabilities().max_transmission_unit)
            .join()
            .unwrap();
    }

    #[test]
    fn capabilities_follow_smoltcp_rules() {
        let (a, _b) = socketpair(SocketType::SeqPacket).unwrap();
        let ip = FdlinkDevice::new(
            Endpoint::new(Options::new().fd(a).mtu(1400)).unwrap(),
            DeviceConfig::default(),
        );
        let caps = ip.capabilities();
        assert_eq!(
            (caps.medium, caps.max_transmission_unit),
            (Medium::Ip, 1400)
        );
        assert!(caps.segmentation.tcpv4.is_some(), "GSO advertised");
        assert!(
            caps.segmentation.tcpv6.is_none(),
            "not for IPv6 (smoltcp 0.14)"
        );
        assert!(
            !caps.checksum.tcp.tx(),
            "segmentation needs TCP checksum offload"
        );

        let (c, _d) = socketpair(SocketType::SeqPacket).unwrap();
        let eth = FdlinkDevice::new(
            Endpoint::new(Options::new().fd(c).mtu(1500).ethernet(true)).unwrap(),
            DeviceConfig::default().gso(false),
        );
        let caps = eth.capabilities();
        assert_eq!(
            (caps.medium, caps.max_transmission_unit),
            (Medium::Ethernet, 1514),
            "an Ethernet MTU includes the header"
        );
        assert!(caps.segmentation.tcpv4.is_none());
    }
}
