//! [`Link`]: a link opened in one call, consistent by construction — the
//! device opened or attached, its offloads set and read back, its virtio
//! header length, MTU and MAC taken from the device itself, and the
//! endpoint built from what the kernel really granted.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use fdlink_sys::netlink::LinkWatch;
use fdlink_sys::packet::{ETH_P_ALL, PacketSocket};
use fdlink_sys::tun::{OffloadFlags, TunConfig, TunKind, set_offload, tun_info};

use crate::caps::DeviceOffloads;
use crate::closure::CloseReason;
use crate::endpoint::Endpoint;
use crate::link::MacAddr;
use crate::options::{DispatchMode, Options, OptionsError};
use crate::packet_io::PacketIo;

/// How [`Link::open`] sets up a device's offloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Offload {
    /// Virtio-net headers on, and every offload the kernel grants
    /// (checksums, TCP and UDP segmentation); what it refuses is done in
    /// software by the layers above.
    #[default]
    Auto,
    /// As [`Offload::Auto`], but a refusal is an error
    /// ([`OpenError::OffloadRefused`]) naming what was refused.
    On,
    /// No virtio-net headers; a TUN/TAP's offloads are reset, so the kernel
    /// hands over finished, MTU-sized packets.
    Off,
}

/// Why [`Link::open`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum OpenError {
    /// Opening or configuring the device or socket failed.
    Io {
        /// What was being done, e.g. `open TUN "tun0"`.
        what: String,
        /// The kernel's error.
        source: io::Error,
    },
    /// [`Offload::On`] and the kernel refused part of the offloads.
    OffloadRefused {
        /// The device.
        device: String,
        /// What it refused, e.g. `USO4 | USO6` or `PACKET_VNET_HDR`.
        refused: String,
    },
    /// The endpoint refused the link it was given.
    Options(OptionsError),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Io { what, source } => write!(f, "{what}: {source}"),
            OpenError::OffloadRefused { device, refused } => {
                write!(f, "{device}: the kernel refused the offloads {refused}")
            }
            OpenError::Options(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for OpenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OpenError::Io { source, .. } => Some(source),
            OpenError::Options(e) => Some(e),
            OpenError::OffloadRefused { .. } => None,
        }
    }
}

impl From<OptionsError> for OpenError {
    fn from(e: OptionsError) -> Self {
        OpenError::Options(e)
    }
}

fn failed(what: impl Into<String>) -> impl FnOnce(io::Error) -> OpenError {
    let what = what.into();
    move |source| OpenError::Io { what, source }
}

/// What a [`Link`] opens.
enum Kind {
    Tun(String),
    Tap(String),
    AfPacket(String),
    Sockets(Vec<OwnedFd>),
    Objects(Vec<Arc<dyn PacketIo>>),
}

/// A link opened in one call: a TUN, a TAP, an `AF_PACKET` socket on an
/// interface, a socketpair end or a packet object, with its offloads and
/// queues, ready and consistent.
///
/// For a device, [`Link::open`] opens or creates it (TUN/TAP) or binds to it
/// (`AF_PACKET`), sets the offloads ([`Offload`]) and reads back what the
/// kernel accepted, takes the virtio-net header length, MTU and MAC from the
/// device itself, opens one queue per [`Link::queues`] (a multi-queue
/// TUN/TAP, or `AF_PACKET` sockets joined in a fanout group), maps the
/// rings of [`DispatchMode::Mmap`], and builds the [`Endpoint`]. Everything
/// the long form ([`Endpoint::new`] over [`Options`]) can set is here too.
///
/// ```no_run
/// use fdlink_core::{Link, Offload};
///
/// // A TUN with every offload the kernel grants, four queues.
/// let endpoint = Link::tun("tun0").queues(4).offload(Offload::Auto).open()?;
/// println!("{} queues, MTU {}", endpoint.channel_count(), endpoint.mtu());
/// # Ok::<(), fdlink_core::OpenError>(())
/// ```
///
/// A socketpair end needs no privileges:
///
/// ```
/// use fdlink_core::Link;
/// use fdlink_sys::fd::{socketpair, SocketType};
///
/// let (ours, _theirs) = socketpair(SocketType::SeqPacket)?;
/// let endpoint = Link::socket(ours).mtu(9000).open()?;
/// assert_eq!(endpoint.mtu(), 9000);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Link {
    kind: Kind,
    queues: usize,
    offload: Offload,
    mtu: Option<u32>,
    mac: Option<MacAddr>,
    ethernet: bool,
    vnet_header_len: usize,
    follow: bool,
    options: Options,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Tun(n) => format!("tun {n:?}"),
            Kind::Tap(n) => format!("tap {n:?}"),
            Kind::AfPacket(n) => format!("af_packet {n:?}"),
            Kind::Sockets(s) => format!("{} socket(s)", s.len()),
            Kind::Objects(o) => format!("{} packet object(s)", o.len()),
        };
        f.debug_struct("Link")
            .field("kind", &kind)
            .field("queues", &self.queues)
            .field("offload", &self.offload)
            .finish_non_exhaustive()
    }
}

impl Link {
    fn new(kind: Kind) -> Link {
        Link {
            kind,
            queues: 1,
            offload: Offload::Auto,
            mtu: None,
            mac: None,
            ethernet: false,
            vnet_header_len: 0,
            follow: false,
            options: Options::new(),
        }
    }

    /// A TUN device (IP packets), opened by name or created when missing
    /// (in the calling thread's network namespace; a created device goes
    /// away with the endpoint unless made persistent elsewhere).
    pub fn tun(name: &str) -> Link {
        Link::new(Kind::Tun(name.to_owned()))
    }

    /// A TAP device (Ethernet frames), opened or created like
    /// [`Link::tun`]. The endpoint's own MAC is [`Link::mac`], or a locally
    /// administered one made up here: the device's MAC is the kernel's.
    pub fn tap(name: &str) -> Link {
        Link::new(Kind::Tap(name.to_owned())).ethernet_framing()
    }

    /// `AF_PACKET` sockets bound to an existing interface (Ethernet frames
    /// of every EtherType). The endpoint's MAC is the interface's unless
    /// [`Link::mac`] says otherwise.
    pub fn af_packet(interface: &str) -> Link {
        Link::new(Kind::AfPacket(interface.to_owned())).ethernet_framing()
    }

    /// A packet socket you made: one end of a `SOCK_SEQPACKET` or
    /// `SOCK_DGRAM` socketpair (IP framing and no virtio header unless
    /// [`Link::ethernet`] and [`Link::vnet_header_len`] say so; both ends
    /// must agree), or any packet socket. More with [`Link::socket_queue`].
    pub fn socket(fd: OwnedFd) -> Link {
        Link::new(Kind::Sockets(vec![fd]))
    }

    /// A packet object (the Wintun case). More with
    /// [`Link::packet_io_queue`].
    pub fn packet_io(io: impl PacketIo) -> Link {
        Link::new(Kind::Objects(vec![Arc::new(io)]))
    }

    fn ethernet_framing(mut self) -> Link {
        self.ethernet = true;
        self
    }

    /// Another socket, as one more queue of a [`Link::socket`] link
    /// (ignored for other kinds).
    pub fn socket_queue(mut self, fd: OwnedFd) -> Link {
        if let Kind::Sockets(fds) = &mut self.kind {
            fds.push(fd);
        }
        self
    }

    /// Another packet object, as one more queue of a [`Link::packet_io`]
    /// link (ignored for other kinds).
    pub fn packet_io_queue(mut self, io: impl PacketIo) -> Link {
        if let Kind::Objects(ios) = &mut self.kind {
            ios.push(Arc::new(io));
        }
        self
    }

    /// Queues of a device: a multi-queue TUN/TAP, or as many `AF_PACKET`
    /// sockets in one fanout group; the kernel keeps each flow on one queue.
    /// Default 1.
    pub fn queues(mut self, n: usize) -> Link {
        self.queues = n;
        self
    }

    /// How the device's offloads are set up (devices only). Default
    /// [`Offload::Auto`].
    pub fn offload(mut self, offload: Offload) -> Link {
        self.offload = offload;
        self
    }

    /// The dispatch mode ([`Options::dispatch`]).
    pub fn mode(mut self, mode: DispatchMode) -> Link {
        self.options = self.options.dispatch(mode);
        self
    }

    /// The endpoint's MTU. A device's own MTU is used when not given.
    pub fn mtu(mut self, mtu: u32) -> Link {
        self.mtu = Some(mtu);
        self
    }

    /// The endpoint's MAC address (Ethernet framing).
    pub fn mac(mut self, mac: MacAddr) -> Link {
        self.mac = Some(mac);
        self
    }

    /// Ethernet framing for a socket or packet object link (devices know
    /// their own).
    pub fn ethernet(mut self, on: bool) -> Link {
        if matches!(self.kind, Kind::Sockets(_) | Kind::Objects(_)) {
            self.ethernet = on;
        }
        self
    }

    /// The virtio-net header of a socket or packet object link (devices
    /// report their own): 0, 10 or 12.
    pub fn vnet_header_len(mut self, len: usize) -> Link {
        self.vnet_header_len = len;
        self
    }

    /// Packets per batch ([`Options::batch_size`]).
    pub fn batch_size(mut self, n: usize) -> Link {
        self.options = self.options.batch_size(n);
        self
    }

    /// The closed callback ([`Options::on_closed`]).
    pub fn on_closed(mut self, f: impl FnOnce(CloseReason) + Send + 'static) -> Link {
        self.options = self.options.on_closed(f);
        self
    }

    /// How long a send waits for room ([`Options::send_timeout`]).
    pub fn send_timeout(mut self, timeout: Duration) -> Link {
        self.options = self.options.send_timeout(timeout);
        self
    }

    /// The largest super-packet ([`Options::gso_max_size`]).
    pub fn gso_max_size(mut self, bytes: u32) -> Link {
        self.options = self.options.gso_max_size(bytes);
        self
    }

    /// Follow the device's own changes while the endpoint runs: when its MTU
    /// changes (`ip link set tun0 mtu 9000`), so does the endpoint's
    /// ([`Endpoint::set_mtu`]); when an `AF_PACKET` interface's MAC changes,
    /// so does the endpoint's. The kernel announces them on a netlink route
    /// socket, which a small thread watches. Devices only; default off.
    pub fn follow_device(mut self, on: bool) -> Link {
        self.follow = on;
        self
    }

    /// Opens the link and builds its endpoint.
    ///
    /// # Errors
    /// [`OpenError::Io`] when a device or socket cannot be opened or
    /// configured (no such interface, no privilege, a TUN whose flags differ
    /// from an existing device's); [`OpenError::OffloadRefused`] with
    /// [`Offload::On`] when the kernel refuses part of the offloads;
    /// [`OpenError::Options`] when the endpoint refuses what it was given
    /// (zero queues, an MTU out of range, ...).
    pub fn open(self) -> Result<Endpoint, OpenError> {
        let Link {
            kind,
            queues,
            offload,
            mtu,
            mac,
            ethernet,
            vnet_header_len,
            follow,
            options,
        } = self;
        let (options, watch) = match kind {
            Kind::Tun(name) => open_tun(&name, TunKind::Tun, queues, offload, follow, options)?,
            Kind::Tap(name) => {
                let (options, watch) =
                    open_tun(&name, TunKind::Tap, queues, offload, follow, options)?;
                let mac = mac.unwrap_or_else(|| made_up_mac(&name));
                (options.link_address(mac), watch)
            }
            Kind::AfPacket(interface) => {
                open_af_packet(&interface, queues, offload, mac, follow, options)?
            }
            Kind::Sockets(fds) => {
                let options = options.fds(fds);
                (framed(options, ethernet, vnet_header_len, mac), None)
            }
            Kind::Objects(ios) => {
                let options = ios
                    .into_iter()
                    .fold(options, |o, io| o.packet_io_shared(io));
                (framed(options, ethernet, vnet_header_len, mac), None)
            }
        };
        let options = match mtu {
            Some(mtu) => options.mtu(mtu),
            None => options,
        };
        let endpoint = Endpoint::new(options)?;
        if let Some(watch) = watch {
            endpoint
                .follow(watch)
                .map_err(failed("follow the device"))?;
        }
        Ok(endpoint)
    }
}

/// Framing, virtio header and MAC of a socket or packet object link.
fn framed(options: Options, ethernet: bool, vnet_len: usize, mac: Option<MacAddr>) -> Options {
    let options = options.ethernet(ethernet).vnet_header_len(vnet_len);
    match mac {
        Some(mac) => options.link_address(mac),
        None => options,
    }
}

/// Opens a TUN/TAP, sets its offloads and reads back what it carries.
fn open_tun(
    name: &str,
    kind: TunKind,
    queues: usize,
    offload: Offload,
    follow: bool,
    options: Options,
) -> Result<(Options, Option<LinkWatch>), OpenError> {
    let what = match kind {
        TunKind::Tun => "TUN",
        TunKind::Tap => "TAP",
    };
    let vnet = offload != Offload::Off;
    let dev = TunConfig::new(kind)
        .name(name)
        .vnet_hdr(vnet)
        .multi_queue(queues > 1)
        .queues(queues)
        .open()
        .map_err(failed(format!("open {what} {name:?}")))?;
    let name = dev.name().to_owned();
    let first = dev
        .fds()
        .first()
        .ok_or_else(|| failed(format!("open {what} {name:?}"))(io::ErrorKind::NotFound.into()))?;
    let wanted = if vnet {
        OffloadFlags::CSUM
            | OffloadFlags::TSO4
            | OffloadFlags::TSO6
            | OffloadFlags::USO4
            | OffloadFlags::USO6
    } else {
        OffloadFlags::empty()
    };
    // Offloads are the device's, not the queue's, and outlive us on a
    // persistent device: set them either way, to what was asked.
    let granted =
        set_offload(first.as_fd(), wanted).map_err(failed(format!("TUNSETOFFLOAD on {name:?}")))?;
    if offload == Offload::On && granted != wanted {
        return Err(OpenError::OffloadRefused {
            device: name,
            refused: format!("{:?}", wanted - granted),
        });
    }
    let info = tun_info(first.as_fd()).map_err(failed(format!("TUNGETIFF on {name:?}")))?;
    let mtu = fdlink_sys::netdev::if_mtu(&name).map_err(failed(format!("the MTU of {name:?}")))?;
    let watch = follow.then(|| watch(&name)).transpose()?;
    let options = options
        .fds(dev.into_fds())
        .ethernet(kind == TunKind::Tap)
        .mtu(mtu)
        .vnet_header_len(info.vnet_hdr_len)
        .device_offloads(if info.vnet_hdr_len > 0 {
            DeviceOffloads::from_tun(granted)
        } else {
            DeviceOffloads::NONE
        });
    Ok((options, watch))
}

/// Opens `queues` `AF_PACKET` sockets on `interface` with virtio headers
/// as `offload` asks and the kernel allows.
fn open_af_packet(
    interface: &str,
    queues: usize,
    offload: Offload,
    mac: Option<MacAddr>,
    follow: bool,
    options: Options,
) -> Result<(Options, Option<LinkWatch>), OpenError> {
    let index = fdlink_sys::netdev::if_index(interface)
        .map_err(failed(format!("interface {interface:?}")))?;
    let mut fds = Vec::with_capacity(queues);
    let mut vnet_len = 0;
    for _ in 0..queues {
        let fd = PacketSocket::open(index, ETH_P_ALL)
            .map_err(failed(format!("AF_PACKET socket on {interface:?}")))?
            .into_fd();
        if offload != Offload::Off {
            match fdlink_sys::packet::set_vnet_hdr(fd.as_fd(), true) {
                Ok(()) => {}
                Err(_) if offload == Offload::Auto => {}
                Err(_) => {
                    return Err(OpenError::OffloadRefused {
                        device: interface.to_owned(),
                        refused: "PACKET_VNET_HDR".to_owned(),
                    });
                }
            }
        }
        // Taken from the socket itself: what the kernel really does.
        vnet_len = match fdlink_sys::packet::vnet_hdr_enabled(fd.as_fd()) {
            Ok(true) => crate::link::VNET_HDR_LEN,
            _ => 0,
        };
        fds.push(fd);
    }
    let mtu = fdlink_sys::netdev::if_mtu(interface)
        .map_err(failed(format!("the MTU of {interface:?}")))?;
    let mac = match mac {
        Some(mac) => mac,
        None => fdlink_sys::netdev::if_hwaddr(interface)
            .map_err(failed(format!("the MAC of {interface:?}")))?
            .map(MacAddr)
            .ok_or_else(|| OpenError::Io {
                what: format!("the MAC of {interface:?}"),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the interface has no MAC address; give Link::mac",
                ),
            })?,
    };
    let watch = follow.then(|| watch(interface)).transpose()?;
    let options = options
        .fds(fds)
        .ethernet(true)
        .link_address(mac)
        .mtu(mtu)
        .vnet_header_len(vnet_len)
        .device_offloads(if vnet_len > 0 {
            DeviceOffloads::ALL
        } else {
            DeviceOffloads::NONE
        });
    Ok((options, watch))
}

/// A netlink watch of interface `name`, made in the calling thread's
/// namespace (where the device is).
fn watch(name: &str) -> Result<LinkWatch, OpenError> {
    fdlink_sys::netdev::if_index(name)
        .and_then(LinkWatch::new)
        .map_err(failed(format!("watch {name:?}")))
}

/// A locally administered unicast MAC for the stack behind a TAP, made
/// from the device name and the process id: stable for a run, distinct
/// between devices and processes.
fn made_up_mac(name: &str) -> MacAddr {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes().chain(std::process::id().to_le_bytes()) {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let b = h.to_be_bytes();
    MacAddr([0x02, 0xfd, b[0], b[1], b[2], b[3]])
}
