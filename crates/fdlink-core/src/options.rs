//! Endpoint options, and the typed errors for combinations that cannot work.

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use crate::caps::DeviceOffloads;
use crate::closure::CloseReason;
use crate::link::MacAddr;
use crate::packet_io::PacketIo;

/// How a channel's reader moves packets from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DispatchMode {
    /// One packet per system call: `read` on TUN/TAP, `recvmsg` on sockets
    /// (`read`/`recvmsg` with one buffer, not a vectored read).
    #[default]
    PerPacket,
    /// Up to the batch size per `recvmmsg` call (sockets only).
    Recvmmsg,
    /// An mmap receive ring (`PACKET_RX_RING`, `TPACKET_V2`) per channel,
    /// `AF_PACKET` sockets only: frames are copied out of the ring into the
    /// batch, no system call per frame.
    ///
    /// [`crate::Endpoint::new`] attaches and maps one ring per channel,
    /// with slots sized for the endpoint's largest frame
    /// ([`crate::Endpoint::max_frame_size`]) and enough of them for a few
    /// batches; the ring is unmapped when the endpoint is dropped. A frame
    /// larger than a slot is counted as [`crate::DropReason::Truncated`].
    /// With a virtio-net header (`PACKET_VNET_HDR`, set on the socket
    /// *before* the endpoint is built, and
    /// [`Options::vnet_header_len`]`(10)`), the kernel's header is put in
    /// front of each frame as in the other modes. Frames queued on the
    /// socket before the ring existed are still read, from the socket.
    Mmap,
}

impl fmt::Display for DispatchMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DispatchMode::PerPacket => "per-packet",
            DispatchMode::Recvmmsg => "recvmmsg",
            DispatchMode::Mmap => "mmap",
        })
    }
}

impl std::str::FromStr for DispatchMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "per-packet" => Ok(DispatchMode::PerPacket),
            "recvmmsg" => Ok(DispatchMode::Recvmmsg),
            "mmap" => Ok(DispatchMode::Mmap),
            other => Err(format!(
                "unknown dispatch mode {other:?} (per-packet|recvmmsg|mmap)"
            )),
        }
    }
}

/// Called once per endpoint when a channel closes, with the cause.
pub type ClosedCallback = Box<dyn FnOnce(CloseReason) + Send + 'static>;

/// Where one channel's packets come from.
pub(crate) enum ChannelSource {
    Fd(OwnedFd),
    Io(Arc<dyn PacketIo>),
}

/// The largest batch one call may move.
pub const MAX_BATCH_SIZE: usize = 1024;
/// The default batch size.
pub const DEFAULT_BATCH_SIZE: usize = fdlink_sys::mmsg::DEFAULT_BATCH;
/// The default MTU.
pub const DEFAULT_MTU: u32 = 1500;
/// The default [`Options::gso_max_size`]: the largest IP packet.
pub const DEFAULT_GSO_MAX_SIZE: u32 = 65535;
/// How long a send waits for room in a full send buffer before it counts the
/// rest of its batch as dropped.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_millis(100);

/// Everything an [`crate::Endpoint`] is built from.
///
/// Built with chained setters from [`Options::new`]; checked as a whole by
/// [`crate::Endpoint::new`], which returns an [`OptionsError`] for any
/// combination that cannot work.
pub struct Options {
    pub(crate) channels: Vec<ChannelSource>,
    pub(crate) mtu: u32,
    pub(crate) ethernet: bool,
    pub(crate) link_address: Option<MacAddr>,
    pub(crate) closed: Option<ClosedCallback>,
    pub(crate) gso_max_size: u32,
    pub(crate) device_offloads: Option<DeviceOffloads>,
    pub(crate) dispatch: DispatchMode,
    pub(crate) batch_size: usize,
    pub(crate) vnet_header_len: usize,
    pub(crate) send_timeout: Duration,
    pub(crate) receive_buffer_size: Option<usize>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            channels: Vec::new(),
            mtu: DEFAULT_MTU,
            ethernet: false,
            link_address: None,
            closed: None,
            gso_max_size: DEFAULT_GSO_MAX_SIZE,
            device_offloads: None,
            dispatch: DispatchMode::PerPacket,
            batch_size: DEFAULT_BATCH_SIZE,
            vnet_header_len: 0,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            receive_buffer_size: None,
        }
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("channels", &self.channels.len())
            .field("mtu", &self.mtu)
            .field("ethernet", &self.ethernet)
            .field("link_address", &self.link_address)
            .field("dispatch", &self.dispatch)
            .field("batch_size", &self.batch_size)
            .field("vnet_header_len", &self.vnet_header_len)
            .finish_non_exhaustive()
    }
}

impl Options {
    /// Default options with no channel yet: MTU 1500, IP framing, per-packet
    /// dispatch, batches of [`DEFAULT_BATCH_SIZE`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a descriptor channel: a TUN/TAP queue, an `AF_PACKET` socket or
    /// one end of a `SOCK_SEQPACKET`/`SOCK_DGRAM` socketpair. The endpoint
    /// owns it, makes it non-blocking and closes it when dropped.
    pub fn fd(mut self, fd: OwnedFd) -> Self {
        self.channels.push(ChannelSource::Fd(fd));
        self
    }

    /// Adds several descriptor channels (multi-queue TUN, fanout sockets).
    ///
    /// # AF_PACKET fanout
    ///
    /// When an endpoint has two or more `AF_PACKET` sockets,
    /// [`crate::Endpoint::new`] makes them one fanout group in hash mode
    /// (`PACKET_FANOUT_HASH`): the first socket creates a group with a
    /// kernel-chosen unique id, the others join it. The kernel then hands
    /// each frame to exactly one socket, and keeps each flow on one socket
    /// (one channel, one queue). All sockets must be bound to the same
    /// interface and EtherType; a failure to join is an
    /// [`OptionsError::Descriptor`] naming the socket. When the first
    /// `AF_PACKET` socket is already a fanout member as the endpoint is
    /// built, the endpoint joins none: the caller set up its own group and
    /// mode.
    pub fn fds(mut self, fds: impl IntoIterator<Item = OwnedFd>) -> Self {
        self.channels.extend(fds.into_iter().map(ChannelSource::Fd));
        self
    }

    /// Adds a channel over a shared packet object.
    pub(crate) fn packet_io_shared(mut self, io: Arc<dyn PacketIo>) -> Self {
        self.channels.push(ChannelSource::Io(io));
        self
    }

    /// What the device took of the offloads asked for (for a TUN/TAP, what
    /// `TUNSETOFFLOAD` returned): the offload layer segments the kinds it
    /// lacks in software. [`crate::Link::open`] sets it; by default a link
    /// with virtio-net headers is taken to accept every kind.
    pub fn device_offloads(mut self, offloads: DeviceOffloads) -> Self {
        self.device_offloads = Some(offloads);
        self
    }

    /// Adds a channel over any boundary-preserving packet object (the
    /// Wintun case).
    pub fn packet_io(mut self, io: impl PacketIo) -> Self {
        self.channels.push(ChannelSource::Io(Arc::new(io)));
        self
    }

    /// The MTU: the largest network-layer packet, link header excluded.
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = mtu;
        self
    }

    /// Read and write Ethernet frames instead of bare IP packets.
    pub fn ethernet(mut self, on: bool) -> Self {
        self.ethernet = on;
        self
    }

    /// The endpoint's MAC address (Ethernet only): the default source of
    /// written frames and the unicast destination accepted on receive.
    /// Without one, every destination is accepted.
    pub fn link_address(mut self, mac: MacAddr) -> Self {
        self.link_address = Some(mac);
        self
    }

    /// Called exactly once, with the cause, when the first channel closes
    /// (peer closed, hang-up or fatal error).
    pub fn on_closed(mut self, f: impl FnOnce(CloseReason) + Send + 'static) -> Self {
        self.closed = Some(Box::new(f));
        self
    }

    /// The largest segmentation-offload super-packet (IP packet, link
    /// header excluded) written to the link; 0 turns super-packets off.
    /// The default, [`DEFAULT_GSO_MAX_SIZE`], is the largest IP packet.
    ///
    /// It bounds what a send takes on a link with virtio-net headers
    /// (larger packets are dropped as [`crate::DropReason::Oversized`]),
    /// what `fdlink-gso` segments in software, and the segments the smoltcp
    /// device lets smoltcp hand over. With virtio-net headers and a size
    /// above the MTU the endpoint advertises [`crate::Capabilities::GSO`].
    /// [`crate::Endpoint::new`] refuses a size between 0 and the MTU, or
    /// above 65535.
    pub fn gso_max_size(mut self, bytes: u32) -> Self {
        self.gso_max_size = bytes;
        self
    }

    /// How readers pull packets from the kernel.
    pub fn dispatch(mut self, mode: DispatchMode) -> Self {
        self.dispatch = mode;
        self
    }

    /// Packets per batch, 1 to [`MAX_BATCH_SIZE`].
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }

    /// Every frame starts with a virtio-net header of this many bytes
    /// (0, 10 or 12): a TUN/TAP opened with `IFF_VNET_HDR` or an
    /// `AF_PACKET` socket with `PACKET_VNET_HDR`. Receive buffers then grow
    /// to hold 64 KiB super-packets.
    pub fn vnet_header_len(mut self, len: usize) -> Self {
        self.vnet_header_len = len;
        self
    }

    /// The default [`Options::gso_max_size`]: the largest IP packet.
    pub const DEFAULT_GSO_MAX_SIZE: u32 = 65535;
    /// How long a send waits for a full send buffer to drain before the
    /// rest of the batch is counted as [`crate::DropReason::SendBufferFull`].
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.send_timeout = timeout;
        self
    }

    /// Size of each receive buffer (virtio and link headers included).
    /// Defaults to what the MTU, framing and virtio header need; a larger
    /// frame is counted as [`crate::DropReason::Truncated`].
    pub fn receive_buffer_size(mut self, bytes: usize) -> Self {
        self.receive_buffer_size = Some(bytes);
        self
    }
}

/// Why [`crate::Endpoint::new`] refused its options.
#[derive(Debug)]
#[non_exhaustive]
pub enum OptionsError {
    /// No channel was given.
    NoChannels,
    /// The MTU is 0 or above 65535.
    InvalidMtu(u32),
    /// A link address was given without Ethernet framing.
    LinkAddressWithoutEthernet,
    /// The link address is a group (multicast) address.
    MulticastLinkAddress(MacAddr),
    /// The batch size is 0 or above [`MAX_BATCH_SIZE`].
    InvalidBatchSize(usize),
    /// The virtio-net header length is not 0, 10 or 12.
    InvalidVnetHeaderLen(usize),
    /// [`Options::gso_max_size`] is neither 0 nor between the MTU and
    /// 65535.
    InvalidGsoMaxSize {
        /// The requested size.
        size: u32,
        /// The MTU it must not be below.
        mtu: u32,
    },
    /// A device's virtio-net header setting differs from the options'
    /// ([`Options::vnet_header_len`]): the device (a TUN/TAP with or
    /// without `IFF_VNET_HDR`, an `AF_PACKET` socket with or without
    /// `PACKET_VNET_HDR`) would put headers the endpoint does not expect,
    /// or none where it expects them.
    VnetHeaderMismatch {
        /// Index of the channel.
        channel: usize,
        /// The header length the device uses (0: none).
        device: usize,
        /// The header length the options give.
        options: usize,
    },
    /// An mmap ring with virtio-net headers on a kernel whose rings carry
    /// none (probed by [`fdlink_sys::ring::rings_carry_vnet_header`]).
    RingWithoutVirtioHeader {
        /// Index of the channel.
        channel: usize,
    },
    /// A TUN given with Ethernet framing, or a TAP without
    /// ([`Options::ethernet`]).
    FramingMismatch {
        /// Index of the channel.
        channel: usize,
        /// What the device is.
        device: &'static str,
    },
    /// The receive buffer cannot hold one MTU-sized frame.
    ReceiveBufferTooSmall {
        /// The requested size.
        size: usize,
        /// The least that fits one frame.
        needed: usize,
    },
    /// A channel does not preserve packet boundaries (a stream socket).
    NotPacketOriented {
        /// Index of the channel.
        channel: usize,
    },
    /// The dispatch mode does not apply to a channel (recvmmsg on a TUN,
    /// mmap on anything but an `AF_PACKET` socket).
    DispatchUnsupported {
        /// Index of the channel.
        channel: usize,
        /// The requested mode.
        mode: DispatchMode,
        /// What the channel is.
        kind: &'static str,
    },
    /// Inspecting or configuring a descriptor failed.
    Descriptor {
        /// Index of the channel.
        channel: usize,
        /// The error.
        source: io::Error,
    },
}

impl fmt::Display for OptionsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionsError::NoChannels => f.write_str("no channel: add a descriptor or PacketIo"),
            OptionsError::InvalidMtu(m) => write!(f, "MTU {m} is outside 1..=65535"),
            OptionsError::LinkAddressWithoutEthernet => {
                f.write_str("a link address needs Ethernet framing")
            }
            OptionsError::MulticastLinkAddress(mac) => {
                write!(f, "link address {mac} is a multicast address")
            }
            OptionsError::InvalidBatchSize(n) => {
                write!(f, "batch size {n} is outside 1..={MAX_BATCH_SIZE}")
            }
            OptionsError::InvalidVnetHeaderLen(n) => {
                write!(f, "virtio-net header length {n} is not 0, 10 or 12")
            }
            OptionsError::InvalidGsoMaxSize { size, mtu } => write!(
                f,
                "GSO size {size} is neither 0 (off) nor within {mtu}..=65535 (the MTU to the largest IP packet)"
            ),
            OptionsError::VnetHeaderMismatch {
                channel,
                device,
                options,
            } => write!(
                f,
                "channel {channel}: the device carries a {device}-byte virtio-net header, the options {options} (0: none)"
            ),
            OptionsError::RingWithoutVirtioHeader { channel } => write!(
                f,
                "channel {channel}: this kernel's mmap rings carry no virtio-net header; use another dispatch mode or no header"
            ),
            OptionsError::FramingMismatch { channel, device } => write!(
                f,
                "channel {channel} is {device}: Ethernet framing must be {}",
                if *device == "a TAP" { "on" } else { "off" }
            ),
            OptionsError::ReceiveBufferTooSmall { size, needed } => write!(
                f,
                "receive buffer of {size} bytes cannot hold a {needed}-byte frame"
            ),
            OptionsError::NotPacketOriented { channel } => write!(
                f,
                "channel {channel} is a stream socket, which does not keep packet boundaries"
            ),
            OptionsError::DispatchUnsupported {
                channel,
                mode,
                kind,
            } => write!(
                f,
                "channel {channel} is {kind}, which does not support {mode} dispatch"
            ),
            OptionsError::Descriptor { channel, source } => {
                write!(f, "channel {channel}: {source}")
            }
        }
    }
}

impl std::error::Error for OptionsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OptionsError::Descriptor { source, .. } => Some(source),
            _ => None,
        }
    }
}
