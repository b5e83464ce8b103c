//! The offloading endpoint: a core [`Endpoint`] with virtio-net offloads in
//! both directions.
//!
//! Receive ([`OffloadEndpoint::recv`]): each frame's virtio header is
//! decoded and checked against the frame; `NEEDS_CSUM` packets get their
//! checksum completed (or are passed up as partial, for a stack told not to
//! verify), `DATA_VALID` is passed up as verified, and a segmentation
//! super-packet is handed up whole with its segment size or split into
//! MTU-sized packets. Without virtio headers, transport checksums are
//! verified here, per packet. A frame that fails is dropped and counted by
//! reason in the endpoint's statistics, as part of the receive itself: every
//! frame read is delivered or counted once.
//!
//! Send ([`OffloadEndpoint::flush`], [`OffloadEndpoint::send_coalesced`]):
//! where the descriptor carries virtio headers (host GSO), each
//! super-packet leaves whole with a header whose `csum_start` comes from the
//! real link and IP header lengths (IPv4 options and IPv6 extension headers
//! included); otherwise it is segmented in software and every checksum
//! filled in. Host GSO is used only for the kinds the kernel takes
//! ([`OffloadConfig::host_gso`]); when the kernel refuses a super-packet at
//! run time (`EINVAL` on the write), that kind switches to software for
//! good, counted once in [`fdlink_core::StatsSnapshot::offload_fallbacks`],
//! and the refused packet leaves segmented instead of being lost.
//!
//! State that a thread mutates lives in a [`Receiver`] or [`Sender`] the
//! caller owns, so one endpoint can serve one stack per queue.

mod receive;
mod send;

use std::sync::atomic::{AtomicU8, Ordering};

use fdlink_core::{DeviceOffloads, Endpoint, Link, OpenError, OutPacket};

use crate::complete::verify_l4_checksum;
use crate::segment::SegmentBuf;
use crate::virtio::{self, GsoKind, VirtioNetHdr};
use crate::wire::{PacketLayout, proto};

pub use receive::{ChecksumState, Receiver, RxPacket};
pub use send::{GroSender, Sender};

/// A set of segmentation-offload kinds: the ones the kernel takes whole on
/// send ([`OffloadConfig::host_gso`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct GsoKinds(u8);

impl GsoKinds {
    /// No kind.
    pub const NONE: GsoKinds = GsoKinds(0);
    /// TCP over IPv4 (TSO4).
    pub const TCPV4: GsoKinds = GsoKinds(1 << 0);
    /// TCP over IPv6 (TSO6).
    pub const TCPV6: GsoKinds = GsoKinds(1 << 1);
    /// UDP segmentation (USO), either IP version.
    pub const UDP_L4: GsoKinds = GsoKinds(1 << 2);
    /// Every kind this crate sends.
    pub const ALL: GsoKinds = GsoKinds(0b111);

    /// The set holding `kind` only (empty for kinds this crate never
    /// sends: none, legacy UFO).
    pub fn of(kind: GsoKind) -> GsoKinds {
        match kind {
            GsoKind::TcpV4 => Self::TCPV4,
            GsoKind::TcpV6 => Self::TCPV6,
            GsoKind::UdpL4 => Self::UDP_L4,
            GsoKind::None | GsoKind::Udp => Self::NONE,
        }
    }

    /// True when every kind of `other` is in the set.
    pub fn contains(self, other: GsoKinds) -> bool {
        self.0 & other.0 == other.0
    }

    /// True when the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The kinds a device that took `offloads` takes whole.
    pub fn granted_by(offloads: DeviceOffloads) -> GsoKinds {
        let mut kinds = GsoKinds::NONE;
        for (offload, kind) in [
            (DeviceOffloads::TSO4, GsoKinds::TCPV4),
            (DeviceOffloads::TSO6, GsoKinds::TCPV6),
            (DeviceOffloads::USO, GsoKinds::UDP_L4),
        ] {
            if offloads.contains(offload) {
                kinds = kinds | kind;
            }
        }
        kinds
    }
}

impl std::ops::BitOr for GsoKinds {
    type Output = GsoKinds;
    fn bitor(self, rhs: GsoKinds) -> GsoKinds {
        GsoKinds(self.0 | rhs.0)
    }
}

impl std::fmt::Debug for GsoKinds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = [
            (Self::TCPV4, "TCPV4"),
            (Self::TCPV6, "TCPV6"),
            (Self::UDP_L4, "UDP_L4"),
        ];
        let set: Vec<&str> = names
            .iter()
            .filter(|(k, _)| self.contains(*k) && !k.is_empty())
            .map(|(_, n)| *n)
            .collect();
        if set.is_empty() {
            f.write_str("(none)")
        } else {
            f.write_str(&set.join(" | "))
        }
    }
}

/// How the offloading endpoint treats checksums and super-packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct OffloadConfig {
    /// Hand received super-packets up whole (with their segment size)
    /// instead of splitting them.
    pub accept_large: bool,
    /// Complete `NEEDS_CSUM` checksums on receive. Off for a stack that is
    /// told not to verify checksums: the packet came from the local kernel
    /// and only carries the pseudo-header seed.
    pub complete_partial: bool,
    /// Verify TCP/UDP checksums of received packets that carry no virtio
    /// verdict (no header, or neither flag set).
    pub verify_rx: bool,
    /// The stack leaves outgoing TCP checksums to the link: fill them in
    /// (software) or ask the kernel to (host, `NEEDS_CSUM`).
    pub fill_tcp_checksums: bool,
    /// The segmentation kinds the kernel takes whole on send, where frames
    /// carry virtio headers; the others are segmented in software. Pass
    /// what the device accepted (for a TUN, the offloads
    /// `fdlink_sys::tun::set_offload` returned: a kernel that refuses
    /// `USO4|USO6` does not take UDP super-packets either). Default: all.
    pub host_gso: GsoKinds,
}

impl Default for OffloadConfig {
    fn default() -> Self {
        OffloadConfig {
            accept_large: false,
            complete_partial: true,
            verify_rx: true,
            fill_tcp_checksums: false,
            host_gso: GsoKinds::ALL,
        }
    }
}

impl OffloadConfig {
    /// Sets [`OffloadConfig::accept_large`].
    pub fn accept_large(mut self, on: bool) -> Self {
        self.accept_large = on;
        self
    }

    /// Sets [`OffloadConfig::complete_partial`].
    pub fn complete_partial(mut self, on: bool) -> Self {
        self.complete_partial = on;
        self
    }

    /// Sets [`OffloadConfig::verify_rx`].
    pub fn verify_rx(mut self, on: bool) -> Self {
        self.verify_rx = on;
        self
    }

    /// Sets [`OffloadConfig::fill_tcp_checksums`].
    pub fn fill_tcp_checksums(mut self, on: bool) -> Self {
        self.fill_tcp_checksums = on;
        self
    }

    /// Sets [`OffloadConfig::host_gso`].
    pub fn host_gso(mut self, kinds: GsoKinds) -> Self {
        self.host_gso = kinds;
        self
    }
}

/// A core endpoint with offloads.
#[derive(Debug)]
pub struct OffloadEndpoint {
    endpoint: Endpoint,
    config: OffloadConfig,
    link_len: usize,
    vnet_len: usize,
    /// The kinds still left to the kernel ([`GsoKinds`] bits): a kind the
    /// kernel refused at run time leaves the set for good.
    host_gso: AtomicU8,
}

impl OffloadEndpoint {
    /// Wraps `endpoint`. Host offloads are used when it carries virtio
    /// headers ([`Endpoint::vnet_header_len`] > 0), software otherwise;
    /// the segmentation kinds left to the kernel are those of
    /// [`OffloadConfig::host_gso`] the device took
    /// ([`Endpoint::device_offloads`]).
    pub fn new(endpoint: Endpoint, config: OffloadConfig) -> Self {
        let link_len = endpoint.max_header_length() - endpoint.vnet_header_len();
        let vnet_len = endpoint.vnet_header_len();
        let granted = GsoKinds::granted_by(endpoint.device_offloads());
        OffloadEndpoint {
            endpoint,
            config,
            link_len,
            vnet_len,
            host_gso: AtomicU8::new(config.host_gso.0 & granted.0),
        }
    }

    /// Opens `link` ([`Link::open`]) and wraps its endpoint: one call from
    /// a device's name to an offloading endpoint that uses what the kernel
    /// granted and software for the rest.
    ///
    /// ```
    /// use fdlink_core::Link;
    /// use fdlink_gso::offload::{OffloadConfig, OffloadEndpoint};
    /// use fdlink_sys::fd::{socketpair, SocketType};
    ///
    /// let (ours, _theirs) = socketpair(SocketType::SeqPacket)?;
    /// let link = OffloadEndpoint::open(Link::socket(ours), OffloadConfig::default())?;
    /// assert!(!link.host_offload(), "no virtio headers: software offloads");
    /// let mut rx = link.receiver();
    /// assert_eq!(link.recv(&mut rx, None)?, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// What [`Link::open`] returns.
    pub fn open(link: Link, config: OffloadConfig) -> Result<Self, OpenError> {
        Ok(Self::new(link.open()?, config))
    }

    /// The wrapped endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The configuration.
    pub fn config(&self) -> OffloadConfig {
        self.config
    }

    /// True when frames carry virtio headers, so checksums and (the kinds
    /// of [`OffloadEndpoint::host_gso`]) segmentation are left to the
    /// kernel.
    pub fn host_offload(&self) -> bool {
        self.vnet_len > 0
    }

    /// The segmentation kinds left to the kernel now: none without virtio
    /// headers; the configured ones less any the kernel refused at run
    /// time.
    pub fn host_gso(&self) -> GsoKinds {
        if self.host_offload() {
            GsoKinds(self.host_gso.load(Ordering::Relaxed))
        } else {
            GsoKinds::NONE
        }
    }

    /// Takes `kind` away from the kernel after it refused a super-packet of
    /// that kind; counts the switch once.
    fn fall_back_to_software(&self, kind: GsoKind) {
        let bits = GsoKinds::of(kind).0;
        if self.host_gso.fetch_and(!bits, Ordering::Relaxed) & bits != 0 {
            self.endpoint.count_offload_fallback();
        }
    }

    /// The largest super-packet (IP packet) accepted for segmentation.
    fn gso_max_size(&self) -> usize {
        self.endpoint.gso_max_size() as usize
    }
}

fn with_hash(p: OutPacket<'_>, hash: Option<u32>) -> OutPacket<'_> {
    match hash {
        Some(h) => p.with_hash(h),
        None => p,
    }
}

/// Puts the pseudo-header seed in the transport checksum field and marks
/// the header `NEEDS_CSUM` with the real offsets.
fn write_seed(
    frame: &mut [u8],
    layout: &PacketLayout,
    header: &mut VirtioNetHdr,
) -> Result<(), ()> {
    let offset = layout.l4_checksum_offset().ok_or(())? as usize;
    let seed = layout
        .pseudo_header(frame, layout.l4_len())
        .ok_or(())?
        .fold();
    let at = layout.l4_offset + offset;
    frame
        .get_mut(at..at + 2)
        .ok_or(())?
        .copy_from_slice(&seed.to_be_bytes());
    header.flags |= virtio::flags::NEEDS_CSUM;
    header.csum_start = layout.l4_offset as u16;
    header.csum_offset = offset as u16;
    Ok(())
}

fn decode_header(bytes: &[u8]) -> Result<VirtioNetHdr, virtio::VirtioError> {
    if bytes.len() >= virtio::HDR_LEN_MRG {
        VirtioNetHdr::decode_mrg(bytes)
    } else {
        VirtioNetHdr::decode(bytes)
    }
}

/// What verifying a packet's transport checksum found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verified {
    /// A TCP or UDP checksum that verifies.
    Good,
    /// A TCP or UDP checksum that does not.
    Bad,
    /// Not TCP or UDP (or a fragment): left to the stack.
    NotTransport,
}

fn verify_transport(ip: &[u8]) -> Verified {
    match PacketLayout::parse(ip) {
        Ok(l) if !l.fragment && matches!(l.l4_protocol, proto::TCP | proto::UDP) => {
            if verify_l4_checksum(ip) {
                Verified::Good
            } else {
                Verified::Bad
            }
        }
        _ => Verified::NotTransport,
    }
}

/// Reuses a vector's allocation for borrows of another lifetime: it is
/// emptied first, and collecting an empty iterator of a same-layout type
/// keeps the allocation.
fn recycle<'a, 'b>(mut v: Vec<OutPacket<'a>>) -> Vec<OutPacket<'b>> {
    v.clear();
    v.into_iter()
        .map(|_| unreachable!("emptied above"))
        .collect()
}

/// An empty arena for the segments of one batch.
fn segment_arena() -> SegmentBuf {
    SegmentBuf::with_capacity(0, 0)
}
